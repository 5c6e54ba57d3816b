#!/usr/bin/env bash
# testssl.sh (Debian package testssl.sh) against a tls = "terminate" listener
# with lb's defaults: fails when any finding is rated HIGH or CRITICAL.
#
#   bash test/testssl/run.sh [--lb build/lb/lb] [--keep]
#
# Not part of CI (a full testssl.sh run takes several minutes). Everything is
# on 127.0.0.1: a CA, an RSA-2048 and an ECDSA P-256 certificate made here
# (valid 365 days, with a CRL distribution point, as a public CA's would be),
# lb with both (RSA the default), a plain HTTP backend (python3 http.server),
# and testssl.sh trusting the CA (--add-ca) and naming site.test (--ip).
# Every process it starts is stopped by its pid on exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
lb="$root/build/lb/lb"
keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --lb) lb=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: $0 [--lb PATH] [--keep]" >&2; exit 2 ;;
  esac
done
for tool in testssl openssl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install testssl.sh openssl python3)" >&2; exit 2; }
done
[ -x "$lb" ] || { echo "no lb binary at $lb (build it, or pass --lb)" >&2; exit 2; }

dir=$(mktemp -d /tmp/lb-testssl.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$keep" ]; then echo "== kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- certificates ---------------------------------------------------------
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 730 -subj "/CN=lb testssl CA" \
  -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout ca.key -out ca.pem 2>/dev/null
leaf() {  # leaf NAME KEYARGS...
  local name=$1; shift
  openssl req -new -nodes -subj /CN=site.test -keyout "$name.key" -out "$name.csr" "$@" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:site.test" "basicConstraints=critical,CA:false" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
    "crlDistributionPoints=URI:http://127.0.0.1/lb-testssl.crl" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 -sha256 \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  cat "$name.crt" ca.pem >"$name.pem"   # leaf, then chain
}
leaf rsa -newkey rsa:2048
leaf ec -newkey ec -pkeyopt ec_paramgen_curve:P-256

# --- backend and lb -----------------------------------------------------------
mkdir www && echo ok >www/index.html
backend_port=$(free_port)
python3 -m http.server "$backend_port" --bind 127.0.0.1 --directory www >backend.log 2>&1 &
pids+=($!)
admin_port=$(free_port)
tls_port=$(free_port)
# Only what a terminate listener needs: every TLS setting at its default.
cat >lb.toml <<EOF
[global]
workers = 1
access_log = "off"

[admin]
listen = "127.0.0.1:$admin_port"

[[listener]]
name = "https"
bind = "127.0.0.1:$tls_port"
pool = "web"
tls = "terminate"
[[listener.certificate]]
cert = "$dir/rsa.pem"
key = "$dir/rsa.key"
[[listener.certificate]]
cert = "$dir/ec.pem"
key = "$dir/ec.key"

[[pool]]
name = "web"
[[pool.backend]]
address = "127.0.0.1:$backend_port"
EOF
"$lb" --check -c lb.toml
"$lb" -c lb.toml >lb.log 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q "started version" lb.log && break
  kill -0 "${pids[-1]}" 2>/dev/null || { cat lb.log; exit 1; }
  sleep 0.1
done
grep -q "started version" lb.log || { echo "lb did not start:"; cat lb.log; exit 1; }

# --- testssl.sh -----------------------------------------------------------------
echo "== testssl $(testssl --version 2>/dev/null | grep -o '[0-9][0-9.]*[0-9]' | head -1) against lb $("$lb" --version)"
set +e
testssl --quiet --color 0 --warnings off --openssl-timeout 10 --add-ca "$dir/ca.pem" --ip 127.0.0.1 \
  --jsonfile "$dir/testssl.json" "site.test:$tls_port" >testssl.log 2>&1
status=$?
set -e
if [ ! -s testssl.json ]; then
  echo "testssl.sh wrote no results (exit $status):"; tail -30 testssl.log; exit 1
fi
python3 - "$dir/testssl.json" <<'EOF'
import json, sys
findings = json.load(open(sys.argv[1]))
counts = {}
for f in findings:
    counts[f["severity"]] = counts.get(f["severity"], 0) + 1
print("== findings by severity: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
for f in findings:
    if f["severity"] in ("MEDIUM", "LOW"):
        print(f"   {f['severity']:6} {f['id']}: {f['finding']}")
bad = [f for f in findings if f["severity"] in ("HIGH", "CRITICAL")]
for f in bad:
    print(f"FAIL {f['severity']} {f['id']}: {f['finding']}")
sys.exit(1 if bad else 0)
EOF
echo "== no HIGH or CRITICAL finding"

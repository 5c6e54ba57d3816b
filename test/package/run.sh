#!/usr/bin/env bash
# The Debian package, built and used as an operator would: dpkg-buildpackage
# on a copy of the source tree, lintian (no error allowed), then install it
# on this (throw-away test) machine, check what it installed, and remove and
# purge it again. Needs root for dpkg -i; test/run.sh installs the packages.
#
#   bash test/package/run.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/lb-package.XXXXXX)
installed=0
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if ((installed)); then dpkg -P lb >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "package test: FAILED: $*" >&2; exit 1; }
step() { echo "-- $*"; }

if dpkg-query -W -f='${Status}' lb 2>/dev/null | grep -q "install ok installed"; then
  fail "a package named lb is already installed here; this test would replace it"
fi

step "build (dpkg-buildpackage -us -uc -b on a copy of the tree)"
mkdir "$work/src"
tar -C "$root" --exclude=./.git --exclude=./build --exclude='./build-*' --exclude=./obj-x86_64-linux-gnu \
  -cf - . | tar -C "$work/src" -xf -
(cd "$work/src" && dpkg-buildpackage -us -uc -b) > "$work/build.log" 2>&1 ||
  { tail -40 "$work/build.log"; fail "dpkg-buildpackage"; }
deb=$(ls "$work"/lb_*_amd64.deb 2>/dev/null | head -1)
[ -n "$deb" ] || fail "no lb_<version>_amd64.deb was built"
echo "   built $(basename "$deb")"

step "lintian (errors fail the test; warnings are listed)"
lintian_out=$(lintian --fail-on error "$work"/lb_*_amd64.changes 2>&1) || {
  echo "$lintian_out"; fail "lintian reported errors"; }
echo "$lintian_out" | grep -E '^[EW]:' | sed 's/^/   /' | sort | uniq -c | sort -rn | head -20 || true

step "contents"
contents=$(dpkg -c "$deb" | awk '{print $6}')
for f in ./usr/bin/lb ./lib/systemd/system/lb.service ./etc/logrotate.d/lb ./etc/lb/lb.toml \
         ./usr/lib/sysusers.d/lb.conf ./usr/share/man/man8/lb.8.gz ./usr/share/man/man5/lb.toml.5.gz \
         ./usr/share/lb/prometheus/lb.rules.yml ./usr/share/lb/grafana/lb.json; do
  grep -qxF "$f" <<<"$contents" || fail "the package lacks $f"
done

step "install (dpkg -i)"
dpkg -i "$deb" > "$work/install.log" 2>&1 || { cat "$work/install.log"; fail "dpkg -i"; }
installed=1
dpkg-query -W -f='${Conffiles}\n' lb | grep -q '/etc/lb/lb.toml' || fail "/etc/lb/lb.toml is not a conffile"
getent passwd lb >/dev/null || fail "the lb system user was not created"
[ "$(getent passwd lb | cut -d: -f7)" = /usr/sbin/nologin ] || fail "the lb user has a login shell"
/usr/bin/lb --version | grep -qx "lb [0-9]*\.[0-9]*\.[0-9]*" || fail "lb --version"
out=$(/usr/bin/lb --check -c /etc/lb/lb.toml) || fail "lb --check -c /etc/lb/lb.toml: $out"
[ "$out" = "/etc/lb/lb.toml: configuration OK" ] || fail "unexpected --check output: $out"
# The installed example must also start (as the lb user, as systemd would run it).
runuser -u lb -- /usr/bin/lb --check -c /etc/lb/lb.toml >/dev/null || fail "the lb user cannot read /etc/lb/lb.toml"

# The pages are rendered from the package itself: minimal images often tell
# dpkg not to install /usr/share/man (path-exclude), which is not lb's fault.
dpkg-deb -x "$deb" "$work/x"
for page in "$work"/x/usr/share/man/man8/lb.8.gz "$work"/x/usr/share/man/man5/lb.toml.5.gz; do
  text=$(MANWIDTH=80 man -l "$page" 2>/dev/null) || fail "man -l $page"
  grep -q "^NAME" <<<"$text" || fail "$page renders without a NAME section"
  [ "$(wc -l <<<"$text")" -gt 50 ] || fail "$page renders to almost nothing"
done
MANWIDTH=80 man -l "$work"/x/usr/share/man/man5/lb.toml.5.gz 2>/dev/null | grep -q "max_connections_per_source" ||
  fail "lb.toml(5) does not document the listener keys"

if systemd-analyze --help >/dev/null 2>&1; then
  systemd-analyze verify /lib/systemd/system/lb.service > "$work/verify.log" 2>&1 ||
    { cat "$work/verify.log"; fail "systemd-analyze verify lb.service"; }
else
  fail "systemd-analyze is not installed"
fi

step "serve, scrape, alert (docs/operations.md, \"From the package to alerts\")"
# The walk an operator follows after apt install: the installed lb serves the
# installed example (as the unit's user; this machine has no systemd as PID 1),
# one of its two backends runs, Prometheus scrapes lb with the block the docs
# give and evaluates the packaged rules, and LbBackendDown names the other.
deadline() { echo $((SECONDS + $1)); }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in 8080 8081 8082 9900; do port_free "$p" || fail "port $p (the example's) is in use on this machine"; done
mkdir -p "$work/www" && echo "backend 8081" > "$work/www/index.html"
python3 -m http.server 8081 --bind 127.0.0.1 --directory "$work/www" > "$work/backend.log" 2>&1 &
pids+=($!)
runuser -u lb -- /usr/bin/lb -c /etc/lb/lb.toml > "$work/lb.log" 2>&1 &
lb_pid=$!
pids+=($lb_pid)
until grep -q '^info started' "$work/lb.log"; do
  kill -0 "$lb_pid" 2>/dev/null || { cat "$work/lb.log"; fail "the installed lb did not start"; }
  ((SECONDS < ${until_started:=$(deadline 20)})) || { cat "$work/lb.log"; fail "lb did not start within 20 s"; }
  sleep 0.2
done
until [ "$(curl -s --max-time 5 http://127.0.0.1:8080/ 2>/dev/null)" = "backend 8081" ]; do
  ((SECONDS < ${until_served:=$(deadline 30)})) || fail "127.0.0.1:8080 never answered from backend 8081"
  sleep 0.2
done
# The docs' block, as written there, plus a short interval so the test is quick.
awk '/<!-- prometheus.yml:/ {grab=1; next} grab && /^```yaml/ {on=1; next} on && /^```/ {exit} on' \
  "$root/docs/operations.md" > "$work/docs-block.yml"
grep -q "lb.rules.yml" "$work/docs-block.yml" || fail "no prometheus.yml block in docs/operations.md"
prom_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
{ printf 'global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n'; cat "$work/docs-block.yml"; } > "$work/prometheus.yml"
promtool check config "$work/prometheus.yml" > "$work/promtool.log" 2>&1 || { cat "$work/promtool.log"; fail "promtool check config"; }
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" > "$work/prometheus.log" 2>&1 &
prom_pid=$!
pids+=($prom_pid)
alerts=""
until grep -q '"alertname":"LbBackendDown"' <<<"$alerts"; do
  kill -0 "$prom_pid" 2>/dev/null || { tail -20 "$work/prometheus.log"; fail "prometheus exited"; }
  ((SECONDS < ${until_alert:=$(deadline 60)})) ||
    { echo "$alerts"; tail -5 "$work/prometheus.log"; fail "LbBackendDown never became pending"; }
  sleep 0.5
  alerts=$(curl -s --max-time 5 "http://127.0.0.1:$prom_port/api/v1/alerts" 2>/dev/null || true)
done
python3 - "$alerts" <<'PY' || fail "the alerts are not the expected ones: $alerts"
import json, sys
alerts = json.loads(sys.argv[1])["data"]["alerts"]
down = [a["labels"] for a in alerts if a["labels"]["alertname"] == "LbBackendDown"]
assert [(l["pool"], l["backend"]) for l in down] == [("web", "127.0.0.1:8082")], down
assert not any(a["labels"]["alertname"] == "LbPoolNoHealthyBackend" for a in alerts), alerts
PY
echo "   LbBackendDown pending for web/127.0.0.1:8082 only; 127.0.0.1:8080 served by backend 8081"
for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
pids=()
grep -q '^error' "$work/lb.log" && { cat "$work/lb.log"; fail "lb logged an error"; }

step "remove (dpkg -r), then purge (dpkg -P)"
dpkg -r lb > "$work/remove.log" 2>&1 || { cat "$work/remove.log"; fail "dpkg -r"; }
[ ! -e /usr/bin/lb ] || fail "/usr/bin/lb is still there after dpkg -r"
[ ! -e /lib/systemd/system/lb.service ] || fail "lb.service is still there after dpkg -r"
[ -e /etc/lb/lb.toml ] || fail "dpkg -r removed the conffile (only a purge may)"
dpkg -P lb > "$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "dpkg -P"; }
installed=0
[ ! -e /etc/lb/lb.toml ] || fail "/etc/lb/lb.toml is still there after dpkg -P"
dpkg-query -W lb >/dev/null 2>&1 && ! dpkg-query -W -f='${Status}' lb | grep -q "not-installed" &&
  fail "dpkg still knows lb after the purge"
echo "package test: passed"

#!/usr/bin/env bash
# Installs what is missing, builds lb, starts three demo backends and lb in
# front of them (dist/examples/quickstart.toml), and shows connections being
# spread over the backends. Then lb keeps running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

packages=(build-essential cmake pkg-config libuv1-dev libssl-dev libtomlplusplus-dev catch2 libxxhash-dev libcap-ng-dev libsystemd-dev
          libfmt-dev nlohmann-json3-dev socat curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== building lb"
cmake -S "$root" -B "$root/build" -DLB_TESTS=OFF -DLB_BENCH=OFF >/dev/null
cmake --build "$root/build" --target lb -j"$(nproc)" >/dev/null

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "== starting demo backends on 127.0.0.1:9001-9003 (each says its name, then echoes)"
for i in 1 2 3; do
  socat TCP-LISTEN:900$i,bind=127.0.0.1,reuseaddr,fork SYSTEM:"echo hello from backend-$i; cat" &
  pids+=($!)
done
# lb probes every backend once before it serves: let them come up first.
for i in 1 2 3; do
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/900$i) 2>/dev/null && break
    sleep 0.05
  done
done

echo "== starting lb on 127.0.0.1:8080 (admin on 127.0.0.1:9900)"
"$root/build/lb/lb" --config "$root/dist/examples/quickstart.toml" &
pids+=($!)
for _ in $(seq 100); do
  curl -fs http://127.0.0.1:9900/healthz >/dev/null 2>&1 && break
  sleep 0.1
done

echo "== 8 connections through lb (weights 1:1:2, smooth weighted round robin):"
for _ in $(seq 8); do
  echo ping | socat -t1 - TCP:127.0.0.1:8080 | sed -n 1p
done

echo "== per-backend connection counts from /metrics:"
curl -fs http://127.0.0.1:9900/metrics | grep '^lb_backend_connections_total'

if [ -t 0 ]; then
  echo "== lb keeps running: try 'socat - TCP:127.0.0.1:8080' or 'curl -s 127.0.0.1:9900/api/v1/status'; Ctrl-C stops"
  wait "${pids[-1]}"
fi

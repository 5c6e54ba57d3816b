#!/usr/bin/env bash
# Bad-network test: the real lb between a client and three backends over
# impaired links, in network namespaces this script creates:
#
#   client ns ==[lb-netem]== lb ns ==[lb-netem]== backend ns
#   10.241.1.2   c0 <-> l0  10.241.1.1            b1 10.241.2.11
#                           10.241.2.1  l1 <-> b0 b2 10.241.2.12
#                                                 b3 10.241.2.13 (+ dnsmasq on b1)
#
# Both links: 2 % loss, 20 ms +- 10 ms delay, 1 % reordering, 0.5 %
# duplication (test/netem/lb-netem, a user-space netem: the kernels here have
# no netem qdisc). It fails unless:
#   1. concurrent transfers in both directions (upload with half-close,
#      download with and without an early half-close, echo) arrive complete,
#      every byte checked by SHA-256 on both ends, none stalls, and afterwards
#      lb has no active connection and no more descriptors than before;
#   2. DNS through lb loses about what the links lose (compared with the same
#      queries sent directly, over the same impaired links);
#   3. a backend that silently drops SYNs costs the clients connect_timeout,
#      never a failure (retries), and [pool.outlier] ejects it;
#   4. a backend that vanishes after the handshake (every packet dropped, no
#      reset) ends its clients' connections by TCP keepalive on the backend
#      socket, well before idle_timeout, while idle connections to the other
#      backends stay open;
#   5. backends that stop reading while their clients keep sending push back
#      on the clients (each gets no further than what the path's buffers
#      hold), lb's RSS stays flat meanwhile, and every byte arrives once the
#      backends read again;
#   6. clients that give up transfers half-way (closed with unread bytes, or
#      reset) leave nothing behind in lb: no connection, no descriptor (pipes
#      included), no memory beyond a small bound.
#
#   bash test/badnet/run.sh            CI size: 40 transfers of 1-4 MB
#   bash test/badnet/run.sh --full     200 transfers of 1-20 MB
#   LB_BINARY=path/to/lb  LB_NETEM=path/to/lb-netem  (default: build/...)
#   LB_BADNET_KEEP=1                   keep the temporary directory
#
# Needs root (namespaces, TAP devices). Everything stays inside the
# namespaces; on exit it ends what it started and deletes them.
set -euo pipefail
export PATH=/usr/sbin:/sbin:$PATH
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

# idle_timeout: phase 4 waits for it; in the full run it must also outlast
# TCP's retransmission back-off when the relays fall behind on a busy machine.
count=40 min_mb=1 max_mb=4 transfer_timeout=300 idle_timeout_s=30
if [ "${1:-}" = "--full" ]; then count=200 min_mb=1 max_mb=20 transfer_timeout=1800 idle_timeout_s=120; fi

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "badnet test: needs root (network namespaces)"; exit 1; }
  exec sudo --preserve-env=LB_BINARY,LB_NETEM,LB_BADNET_KEEP bash "$0" "$@"
fi
lb_bin=${LB_BINARY:-$root/build/lb/lb}
netem_bin=${LB_NETEM:-$(dirname "$(dirname "$lb_bin")")/test/netem/lb-netem}
[ -x "$lb_bin" ] || { echo "badnet test: no lb binary at $lb_bin (set LB_BINARY)"; exit 1; }
[ -x "$netem_bin" ] || { echo "badnet test: no lb-netem at $netem_bin (set LB_NETEM)"; exit 1; }
for p in dnsmasq-base iproute2 curl python3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && continue
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    dnsmasq-base iproute2 curl python3 >/dev/null
  break
done
py=/usr/bin/python3
traffic="$py $here/traffic.py"

tmp=$(mktemp -d /tmp/lb-badnet.XXXXXX)
pfx=lbn-${tmp##*.}
ns_c=$pfx-cl ns_l=$pfx-lb ns_b=$pfx-be
pids=()
now_ms() { date +%s%3N; }
say() { echo "== $*"; }
fail() { echo "FAIL: $*"; exit 1; }

cleanup() {
  local rc=$? p ns
  set +e
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ]; then
    for f in "$tmp"/*.log; do [ -s "$f" ] && { echo "--- ${f##*/}"; tail -n 15 "$f"; }; done
  fi
  exec 2>/dev/null
  for p in "${pids[@]}"; do kill -TERM "$p"; done
  for ns in "$ns_c" "$ns_l" "$ns_b"; do
    for p in $(ip netns pids "$ns"); do kill -KILL "$p"; done
    ip netns del "$ns"
  done
  wait
  [ -n "${LB_BADNET_KEEP:-}" ] && echo "== kept $tmp" || rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

run_in() {  # run_in NS LOG COMMAND...: in the background; pid in $last_pid
  local ns=$1 log=$2; shift 2
  ip netns exec "$ns" "$@" >"$tmp/$log.log" 2>&1 </dev/null &
  last_pid=$!
  pids+=("$last_pid")
}
wait_until() {  # wait_until SECONDS WHAT COMMAND...
  local end=$(( $(now_ms) + $1 * 1000 )) what=$2
  shift 2
  until "$@"; do
    (( $(now_ms) < end )) || { echo "timed out waiting for $what"; return 1; }
    sleep 0.05
  done
}

# --- topology -------------------------------------------------------------------
say "namespaces $pfx-*, links: 2 % loss, 20 +- 10 ms, 1 % reordering, 0.5 % duplication"
for ns in "$ns_c" "$ns_l" "$ns_b"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
impair=(--loss 2 --delay 20 --jitter 10 --reorder 1 --duplicate 0.5 --max-seconds 7200)
run_netem() {  # run_netem NAME PAIR SEED: a relay in the root namespace
  "$netem_bin" --pair "$2" "${impair[@]}" --seed "$3" --control "$tmp/$1.rules" >"$tmp/$1.log" 2>&1 </dev/null &
  last_pid=$!
  pids+=("$last_pid")
}
run_netem front "$ns_c:c0,$ns_l:l0" 1
front_pid=$last_pid
run_netem back "$ns_l:l1,$ns_b:b0" 2
back_pid=$last_pid
wait_until 10 "lb-netem" grep -q ready "$tmp/front.log"
wait_until 10 "lb-netem" grep -q ready "$tmp/back.log"
ip -n "$ns_c" addr add 10.241.1.2/24 dev c0
ip -n "$ns_l" addr add 10.241.1.1/24 dev l0
ip -n "$ns_l" addr add 10.241.2.1/24 dev l1
for n in 11 12 13; do ip -n "$ns_b" addr add "10.241.2.$n/24" dev b0; done
# A TAP device queues 1,000 frames for its reader by default; a relay that
# falls behind for a moment (a loaded machine) would drop bursts beyond that,
# loss the test did not ask for. The drops that remain are reported.
taps=("$ns_c c0" "$ns_l l0" "$ns_l l1" "$ns_b b0")
for t in "${taps[@]}"; do
  set -- $t
  ip -n "$1" link set "$2" txqueuelen 20000 up
done
tap_drops() {  # frames the kernel dropped because a relay was behind
  local t n=0 d
  for t in "${taps[@]}"; do
    set -- $t
    d=$(ip -n "$1" -s link show "$2" | awk '/TX:/ {getline; print $4}')
    n=$((n + d))
  done
  echo "$n"
}
# The direct path (DNS comparison): the lb namespace routes between the links.
ip netns exec "$ns_l" sysctl -qw net.ipv4.ip_forward=1
ip -n "$ns_c" route add 10.241.2.0/24 via 10.241.1.1
ip -n "$ns_b" route add 10.241.1.0/24 via 10.241.2.1

# --- backends and lb ----------------------------------------------------------------
run_in "$ns_b" backends $traffic serve b 10.241.2.11:7000 10.241.2.12:7000 10.241.2.13:7000
wait_until 20 "backends" grep -q ready "$tmp/backends.log"
run_in "$ns_b" dnsmasq dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
  --listen-address=10.241.2.11 --bind-interfaces --port=53 --address=/test.lb/10.9.9.9 --user=root \
  --pid-file= --cache-size=0

connect_timeout_s=2   # above the kernel's 1 s SYN retransmission: a lost SYN is no failure
cat >"$tmp/lb.toml" <<EOF
[global]
workers = 2
access_log = "$tmp/access.jsonl"
shutdown_timeout = "1s"

[admin]
listen = "127.0.0.1:9900"

[[listener]]
name = "tcp"
bind = "10.241.1.1:8080"
pool = "app"
connect_timeout = "${connect_timeout_s}s"
idle_timeout = "${idle_timeout_s}s"
retries = 2

[[listener]]
name = "dns"
protocol = "udp"
bind = "10.241.1.1:5353"
pool = "dns"
udp_responses = 1
session_timeout = "5s"

[[pool]]
name = "app"
selector = "round_robin"

# No active checks: passive health alone must notice the SYN-dropping backend.
[pool.health_check]
type = "none"

[pool.outlier]
consecutive_failures = 3
ejection_time = "5m"

[[pool.backend]]
address = "10.241.2.11:7000"
id = "b1"

[[pool.backend]]
address = "10.241.2.12:7000"
id = "b2"

[[pool.backend]]
address = "10.241.2.13:7000"
id = "b3"

[[pool]]
name = "dns"

[pool.health_check]
type = "none"

[[pool.backend]]
address = "10.241.2.11:53"
EOF
"$lb_bin" --check --config "$tmp/lb.toml" >/dev/null
run_in "$ns_l" lb "$lb_bin" --config "$tmp/lb.toml"
lb_pid=$last_pid
api() { ip netns exec "$ns_l" curl -s --max-time 5 "http://127.0.0.1:9900$1"; }
healthz_ok() { api /healthz | grep -q ok; }
wait_until 20 "lb's /healthz" healthz_ok
status() {  # status PYTHON-EXPRESSION-ON-s
  api /api/v1/status | "$py" -c "import json,sys; s=json.load(sys.stdin); print($1)"
}
fds() { ls "/proc/$lb_pid/fd" | wc -l; }
active() { status 's["listeners"][0]["active"]'; }
fds_before=$(fds)

# --- 1. transfers ---------------------------------------------------------------------
say "1. $count concurrent transfers of $min_mb-$max_mb MB (up + half-close, down with/without early half-close, echo)"
out=$(ip netns exec "$ns_c" $traffic transfers 10.241.1.1:8080 "$count" "$min_mb" "$max_mb" 7 "$transfer_timeout")
echo "   $out"
read -r failed bytes secs slowest median < <("$py" -c '
import json,sys; r=json.loads(sys.argv[1]); print(r["failed"], r["bytes"], r["seconds"], r["slowest"], r["median"])' "$out")
(( failed == 0 )) || fail "$failed transfers failed (frames dropped at the TAP queues, relays behind: $(tap_drops))"
wait_until 60 "lb to have no active connection" eval '[ "$(active)" = 0 ]' || fail "connections left open: $(active)"
wait_until 30 "lb's descriptors back to $fds_before" eval '(( $(fds) <= fds_before ))' \
  || fail "lb holds $(fds) descriptors, $fds_before before the transfers"
frames=$(kill -USR1 "$front_pid" "$back_pid"; sleep 0.2; grep -h '^stats' "$tmp/front.log" "$tmp/back.log" | tail -n 2 | tr '\n' ';')
frames="$frames frames dropped at the TAP queues (relays behind): $(tap_drops)"
say "all $count verified: $((bytes / 1048576)) MiB in ${secs} s (median ${median} s, slowest ${slowest} s); no connection or descriptor left"
echo "   link counters: $frames"

# --- 2. DNS -----------------------------------------------------------------------------
queries=600
say "2. DNS: $queries queries at 200/s, directly and through lb"
direct=$(ip netns exec "$ns_c" $traffic dns 10.241.2.11:53 "$queries" 200)
via_lb=$(ip netns exec "$ns_c" $traffic dns 10.241.1.1:5353 "$queries" 200)
echo "   direct: $direct"
echo "   via lb: $via_lb"
"$py" -c '
import json, sys
d, l = json.loads(sys.argv[1]), json.loads(sys.argv[2])
# A round trip crosses two impaired links each way: about 1-0.98**4 = 7.8 %
# is lost by the links. lb may add nothing beyond sampling noise (~1.5 % sd
# for each of the two figures at 600 queries).
sys.exit(0 if l["lost_pct"] <= d["lost_pct"] + 5.0 and max(l["lost_pct"], d["lost_pct"]) <= 15 else 1)' "$direct" "$via_lb" \
  || fail "DNS through lb lost more than the links do"

# --- 3. a backend that drops SYNs -----------------------------------------------------------
set_rules() {  # set_rules RELAY-NAME PID RULE...: replace the relay's rules and wait for them
  local n
  n=$(grep -c '^control' "$tmp/$1.log" || true)
  printf '%s\n' "${@:3}" >"$tmp/$1.rules"
  kill -HUP "$2"
  wait_until 5 "lb-netem $1 to take its rules" eval "(( \$(grep -c '^control' '$tmp/$1.log') > $n ))"
}
say "3. b1 silently drops SYNs: 12 connections, connect_timeout ${connect_timeout_s}s, retries 2, outlier ejection after 3"
set_rules back "$back_pid" "drop_syn 10.241.2.11"
out=$(ip netns exec "$ns_c" $traffic hold 10.241.1.1:8080 12 0.1 2>/dev/null)
"$py" -c '
import json, sys
r = json.loads(sys.argv[1])
bad = [c for c in r if c["backend"] not in ("b2", "b3")]
slow = sorted(c["connect_s"] for c in r if c["backend"])
served = sorted(c["backend"] for c in r if c["backend"])
print(f"   served by: {served}; connect times {slow}")
sys.exit(1 if bad else 0)' "$out" || fail "a client did not reach a healthy backend: $out"
b1_health() { status '[b["health"] for b in s["pools"][0]["backends"] if b["id"]=="b1"][0]'; }
wait_until 10 "b1 to be ejected" eval '[ "$(b1_health)" = down ]' || fail "b1 not ejected (health $(b1_health))"
failures=$(api /metrics | grep 'lb_backend_connect_failures_total{pool="app",backend="b1"}' | awk '{print $2}')
say "every client served by b2/b3; b1 ejected after $failures connect timeouts"
set_rules back "$back_pid"

# --- 4. a backend that vanishes after the handshake -------------------------------------
say "4. idle connections, then b2 vanishes (all its packets dropped, no reset); idle_timeout ${idle_timeout_s}s"
ip netns exec "$ns_c" $traffic hold 10.241.1.1:8080 6 $((idle_timeout_s + 15)) >"$tmp/hold.json" 2>"$tmp/hold.log" &
hold_pid=$!
pids+=("$hold_pid")
wait_until 30 "6 held connections" eval '(( $(grep -c ^open "$tmp/hold.log") == 6 ))'
grep -q "open b2" "$tmp/hold.log" || fail "no held connection reached b2"
t0=$(now_ms)
set_rules back "$back_pid" "drop_all 10.241.2.12"
wait "$hold_pid" || fail "hold client failed"
"$py" -c '
import json, sys
r, idle = json.load(open(sys.argv[1])), float(sys.argv[2])
b2 = [c for c in r if c["backend"] == "b2"]
others = [c for c in r if c["backend"] != "b2"]
closed = [c["closed_after_s"] for c in b2]
ends = [(c["ended"], c["closed_after_s"]) for c in others]
print(f"   b2 connections closed after {closed} s (idle_timeout {idle:.0f} s); the others: {ends}")
ok = all(c["ended"] and c["closed_after_s"] < idle * 0.75 for c in b2)
# The others are idle too, and must outlive the keepalive horizon: they end
# only by idle_timeout (within the hold window), never before it.
ok = ok and all(c["ended"] is None or c["closed_after_s"] >= idle - 1 for c in others)
sys.exit(0 if ok else 1)' "$tmp/hold.json" "$idle_timeout_s" \
  || fail "connections to the vanished backend did not end well before idle_timeout: $(cat "$tmp/hold.json")"
set_rules back "$back_pid"

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$lb_pid/status"; }

# --- 5. backends that stop reading, then resume -------------------------------------
# Socket buffers of at most 256 KiB in every namespace from here on (the
# host's allow 32 MiB), so that the path between a client and a backend that
# reads nothing fills within seconds over the lossy links: the client's
# send buffer, lb's receive and send buffers and the backend's receive buffer
# (4 x 256 KiB), plus what lb holds itself (at most 320 KiB a direction).
stalls=8 stall_mb=4 pause_s=16
for ns in "$ns_c" "$ns_l" "$ns_b"; do
  ip netns exec "$ns" sysctl -qw net.ipv4.tcp_rmem="4096 131072 262144" net.ipv4.tcp_wmem="4096 65536 262144"
done
say "5. $stalls uploads of $stall_mb MB to backends that read nothing for ${pause_s} s, then resume"
rss_start=$(rss_kb)
ip netns exec "$ns_c" $traffic stall 10.241.1.1:8080 "$stalls" $((stall_mb << 20)) "$pause_s" 300 \
  >"$tmp/stall.json" 2>"$tmp/stall.log" &
stall_pid=$!
pids+=("$stall_pid")
wait_until 60 "the pause's midpoint" grep -q '^half' "$tmp/stall.log" || fail "stall client: $(cat "$tmp/stall.log")"
rss_half=$(rss_kb)
wait_until 60 "the pause's last second" grep -q '^late' "$tmp/stall.log" || fail "stall client: $(cat "$tmp/stall.log")"
rss_late=$(rss_kb)
wait "$stall_pid" || fail "stall client failed: $(cat "$tmp/stall.log")"
"$py" -c '
import json, sys
r = json.load(open(sys.argv[1]))
start, half, late, n = (int(x) for x in sys.argv[2:6])
mib = 1 << 20
sent_half = [round(x / mib, 2) for x in r["half"]]
sent_late = [round(x / mib, 2) for x in r["late"]]
print(f"   sent by each client mid-pause: {sent_half} MiB; a second before its end: {sent_late} MiB")
print(f"   lb RSS {start} kB before, {half} kB mid-pause, {late} kB at the end")
if r["failed"]:
    print("   failures:", r["failures"])
else:
    print("   all", n, "uploads arrived whole after", r["seconds"], "s")
ok = not r["failed"]
# Pushed back: no client got further than what the path can hold (about
# 1.4 MiB, above) while nothing was read; without backpressure each would
# have handed over its whole payload at the links rate.
ok = ok and all(x <= 2 * mib for x in r["late"])
# lb holds at most its two directions high-water marks per connection, and
# nothing more once the path is full: flat from the midpoint on.
ok = ok and late - start <= n * 512 + 2048 and late - half <= 1024
sys.exit(0 if ok else 1)' "$tmp/stall.json" "$rss_start" "$rss_half" "$rss_late" "$stalls" \
  || fail "a stalled backend: no backpressure, memory growth or lost bytes (see above)"
wait_until 60 "lb to have no active connection" eval '[ "$(active)" = 0 ]' || fail "connections left open: $(active)"

# --- 6. clients that give up half-way -------------------------------------------------
abandons=30
say "6. $abandons transfers given up half-way (downloads, uploads, echoes; closed or reset)"
rss_start=$(rss_kb)
out=$(ip netns exec "$ns_c" $traffic abandon 10.241.1.1:8080 "$abandons" 11)
echo "   $out"
"$py" -c 'import json, sys; r = json.loads(sys.argv[1]); sys.exit(0 if not r["errors"] and len(r["kinds"]) == 6 else 1)' \
  "$out" || fail "the abandoning clients did not run as planned: $out"
wait_until 60 "lb to have no active connection" eval '[ "$(active)" = 0 ]' || fail "connections left open: $(active)"
wait_until 30 "lb's descriptors back to $fds_before" eval '(( $(fds) <= fds_before ))' \
  || fail "lb holds $(fds) descriptors (pipes: $(ls -l /proc/$lb_pid/fd | grep -c pipe:)), $fds_before before"
rss_end=$(rss_kb)
say "lb freed them all: no connection, $(fds) descriptors ($fds_before at the start), RSS $rss_start -> $rss_end kB"
(( rss_end - rss_start <= 4096 )) || fail "lb's RSS grew by $((rss_end - rss_start)) kB over abandoned transfers"

kill -0 "$lb_pid" || fail "lb died"
# A clean stop: exit status 0 (under sanitizers: no report at exit either).
kill -TERM "$lb_pid"
rc=0
wait "$lb_pid" || rc=$?
(( rc == 0 )) || fail "lb exited with status $rc on SIGTERM"
say "bad-network test passed"

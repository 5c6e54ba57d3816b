#!/usr/bin/env bash
# lb-nhg-sync's corner cases, without BIRD: this script writes the routes BIRD
# would export into table 200 of a scratch network namespace, runs
# `lb-nhg-sync once` (one pass, as the daemon does on every change) and checks
# what it left in the kernel. run.sh covers the daemon against real BIRD
# under traffic; this covers what that topology never shows: two VIPs,
# weights, a changed bucket count or metric, a VIP gone for good, a missing
# table, `remove`. A second pass on an unchanged table must cause no kernel
# event at all (`ip monitor`), which is what "idempotent" means here.
#
#   bash test/fleet/nhg-sync.sh     (root: network namespaces; about 4 s)
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "nhg-sync test: needs root (network namespaces)"; exit 1; }
export PATH=/usr/sbin:/sbin:$PATH
sync=$(cd "$(dirname "$0")/../.." && pwd)/dist/fleet/lb-nhg-sync
py=/usr/bin/python3
ns=lbnhg-$$
tmp=$(mktemp -d /tmp/lb-nhg.XXXXXX)
mon_pid=""
cleanup() {
  local rc=$?
  set +e    # everything below runs, whatever fails
  [ -n "$mon_pid" ] && kill "$mon_pid" 2>/dev/null && wait "$mon_pid" 2>/dev/null
  ip netns del "$ns" 2>/dev/null
  [ "$rc" -ne 0 ] && [ -s "$tmp/log" ] && { echo "--- lb-nhg-sync's log"; cat "$tmp/log"; }
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
say() { echo "== $*"; }
now_ms() { date +%s%3N; }

# Scratch namespace: gateways 10.9.0.2-.5 on one link (they need not answer).
ip netns add "$ns"
ip -n "$ns" link set lo up
# No IPv6: its link-local routes appear late and would show in the monitor.
ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n "$ns" link add v0 type veth peer name v1
ip -n "$ns" link set v0 up
ip -n "$ns" link set v1 up
ip -n "$ns" addr add 10.9.0.1/24 dev v0

once() {  # once [VAR=VALUE...]: one pass of lb-nhg-sync in the namespace
  ip netns exec "$ns" env LB_NHG_IDLE_TIMER=5 "$@" "$py" "$sync" once 2>>"$tmp/log" \
    || fail "lb-nhg-sync once failed"
}
bird() {  # bird VIP GW[,WEIGHT]...: what BIRD would export into table 200
  local vip=$1 hop args=()
  shift
  for hop in "$@"; do args+=(nexthop via "${hop%,*}" dev v0 weight "$([[ $hop == *,* ]] && echo "${hop#*,}" || echo 1)"); done
  ip -n "$ns" route replace "$vip/32" table 200 proto bird "${args[@]}"
}
group_of() { ip -n "$ns" -j route show "$1/32" proto 250 | "$py" -c 'import json,sys; r=json.load(sys.stdin); print(r[0].get("nhid","") if r else "")'; }
members() {  # members VIP: "GW,WEIGHT ..." of the VIP's group, sorted
  local g
  g=$(group_of "$1")
  [ -n "$g" ] || return 0
  ip -n "$ns" -j nexthop show id "$g" | "$py" -c '
import json, subprocess, sys
g = json.load(sys.stdin)[0]
out = []
for m in g["group"]:
    nh = json.loads(subprocess.run(["ip", "-n", sys.argv[1], "-j", "nexthop", "show", "id", str(m["id"])],
                                   capture_output=True, text=True, check=True).stdout)[0]
    out.append(nh["gateway"] + "," + str(m.get("weight", 1)))
print(" ".join(sorted(out)))' "$ns"
}
buckets() { ip -n "$ns" nexthop bucket show id "$(group_of "$1")" | awk '{print $4, $8}'; }
bucket_count() { ip -n "$ns" -j nexthop show id "$(group_of "$1")" | "$py" -c 'import json,sys; print(json.load(sys.stdin)[0]["resilient_args"]["buckets"])'; }
metric_of() { ip -n "$ns" -j route show "$1/32" proto 250 | "$py" -c 'import json,sys; print(json.load(sys.stdin)[0].get("metric", 0))'; }
ours() { ip -n "$ns" nexthop show proto 250; ip -n "$ns" route show table all proto 250; }
quiet_pass() {  # quiet_pass WHAT [VAR=VALUE...]: a pass that must change nothing in the kernel
  local what=$1
  shift
  ip -n "$ns" monitor route nexthop >"$tmp/mon" 2>&1 &
  mon_pid=$!
  # The monitor is listening once it shows in the namespace's netlink sockets;
  # an event of our own (a route into an unused table) proves it, then the pass.
  # Each try deletes and adds the route again: replacing it unchanged makes no
  # event, so a monitor that started after the first try would wait forever.
  local end=$(( $(now_ms) + 20000 ))
  until grep -q "10.88.0.1" "$tmp/mon"; do
    ip -n "$ns" route del 10.88.0.1/32 dev v0 table 201 2>/dev/null || true
    ip -n "$ns" route add 10.88.0.1/32 dev v0 table 201
    (( $(now_ms) < end )) || fail "ip monitor did not start"
    sleep 0.05
  done
  cp "$tmp/mon" "$tmp/mon.before"
  once "$@"
  ip -n "$ns" route add 10.88.0.2/32 dev v0 table 201          # the end marker
  end=$(( $(now_ms) + 20000 ))
  until grep -q "10.88.0.2" "$tmp/mon"; do
    (( $(now_ms) < end )) || fail "ip monitor did not see the end marker"
    sleep 0.05
  done
  kill "$mon_pid"; wait "$mon_pid" 2>/dev/null || true; mon_pid=""
  ip -n "$ns" route del 10.88.0.2/32 dev v0 table 201
  local changes
  changes=$(tail -n +"$(( $(wc -l <"$tmp/mon.before") + 1 ))" "$tmp/mon" | grep -v "10.88.0.[12]" || true)
  [ -z "$changes" ] || fail "$what: the pass changed the kernel: $changes"
}

say "no table 200 yet: a pass does nothing"
once
[ -z "$(ours)" ] || fail "lb-nhg-sync made something out of nothing"

say "two VIPs, one with weights: a resilient group each, routed at metric 16"
bird 10.99.0.1 10.9.0.2 10.9.0.3 10.9.0.4
bird 10.99.0.2 10.9.0.2,1 10.9.0.5,2
once
[ "$(members 10.99.0.1)" = "10.9.0.2,1 10.9.0.3,1 10.9.0.4,1" ] || fail "VIP 1's group: $(members 10.99.0.1)"
[ "$(members 10.99.0.2)" = "10.9.0.2,1 10.9.0.5,2" ] || fail "VIP 2's group: $(members 10.99.0.2)"
[ "$(bucket_count 10.99.0.1)" = 512 ] || fail "bucket count $(bucket_count 10.99.0.1)"
[ "$(metric_of 10.99.0.1)" = 16 ] || fail "metric $(metric_of 10.99.0.1)"
ip -n "$ns" route get fibmatch 10.99.0.1 | grep -q "nhid $(group_of 10.99.0.1)" || fail "VIP 1 is not routed by its group"
[ "$(ip -n "$ns" nexthop show proto 250 | grep -c ' via ')" -eq 4 ] || fail "one next-hop object per gateway expected"

say "an unchanged table: a second pass changes nothing"
quiet_pass "unchanged table"

say "a member leaves VIP 1: only its buckets move"
before=$(buckets 10.99.0.1)
gone=$(ip -n "$ns" nexthop show proto 250 | awk '$3 == "via" && $4 == "10.9.0.4" {print $2}')
bird 10.99.0.1 10.9.0.2 10.9.0.3
once
[ "$(members 10.99.0.1)" = "10.9.0.2,1 10.9.0.3,1" ] || fail "VIP 1's group after the leave: $(members 10.99.0.1)"
moved=$(join <(sort <<<"$before") <(sort <<<"$(buckets 10.99.0.1)") | awk -v gone="$gone" '$2 != $3 && $2 != gone' | wc -l)
[ "$moved" -eq 0 ] || fail "$moved buckets of the remaining members moved"
grep -q "members \[10.9.0.2 dev v0, 10.9.0.3 dev v0, 10.9.0.4 dev v0\] -> \[10.9.0.2 dev v0, 10.9.0.3 dev v0\]" "$tmp/log" \
  || fail "the leave was not logged with the members before and after"
[ "$(members 10.99.0.2)" = "10.9.0.2,1 10.9.0.5,2" ] || fail "VIP 2's group changed with VIP 1's"
ip -n "$ns" nexthop show proto 250 | grep -q "via 10.9.0.4 " && fail "the unused next hop 10.9.0.4 was not deleted"

say "a weight changes on VIP 2: the same group, new weights"
g2=$(group_of 10.99.0.2)
bird 10.99.0.2 10.9.0.2,3 10.9.0.5,2
once
[ "$(group_of 10.99.0.2)" = "$g2" ] || fail "a weight change replaced the group"
[ "$(members 10.99.0.2)" = "10.9.0.2,3 10.9.0.5,2" ] || fail "VIP 2's weights: $(members 10.99.0.2)"

say "another bucket count: a new group replaces the old one, which goes"
g1=$(group_of 10.99.0.1)
once LB_NHG_BUCKETS=256
[ "$(bucket_count 10.99.0.1)" = 256 ] || fail "bucket count after the change: $(bucket_count 10.99.0.1)"
[ "$(group_of 10.99.0.1)" != "$g1" ] || fail "the group was not replaced"
ip -n "$ns" nexthop show id "$g1" >/dev/null 2>&1 && fail "the old group $g1 was left behind"
grep -q "replacing group $g1" "$tmp/log" || fail "the replacement was not logged"
quiet_pass "the new bucket count, unchanged" LB_NHG_BUCKETS=256

say "another metric: the route moves, the group stays"
g1=$(group_of 10.99.0.1)
once LB_NHG_BUCKETS=256 LB_NHG_METRIC=20
[ "$(metric_of 10.99.0.1)" = 20 ] || fail "metric after the change: $(metric_of 10.99.0.1)"
[ "$(ip -n "$ns" route show 10.99.0.1/32 proto 250 | grep -c .)" -ge 1 ] || fail "no route left"
[ "$(ip -n "$ns" -j route show 10.99.0.1/32 proto 250 | "$py" -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 1 ] \
  || fail "the route at the old metric was left behind"
[ "$(group_of 10.99.0.1)" = "$g1" ] || fail "a metric change replaced the group"

say "VIP 2 gone from BIRD: unreachable and its group held; gone for good after LB_NHG_HOLD"
g2=$(group_of 10.99.0.2)
ip -n "$ns" route del 10.99.0.2/32 table 200
once LB_NHG_BUCKETS=256 LB_NHG_METRIC=20
ip -n "$ns" route show 10.99.0.2/32 proto 250 | grep -q "^unreachable" || fail "VIP 2 did not become unreachable"
ip -n "$ns" nexthop show id "$g2" >/dev/null 2>&1 || fail "VIP 2's group went at once"
# A single pass keeps no memory of the hold: the next one finds an
# unreachable route of ours with no group held, and removes it.
once LB_NHG_BUCKETS=256 LB_NHG_METRIC=20
[ -z "$(ip -n "$ns" route show 10.99.0.2/32 proto 250)" ] || fail "VIP 2's unreachable route stayed"
ip -n "$ns" nexthop show id "$g2" >/dev/null 2>&1 && fail "VIP 2's group stayed"
ip -n "$ns" nexthop show proto 250 | grep -q "via 10.9.0.5 " && fail "VIP 2's next hop 10.9.0.5 stayed"

say "remove: nothing of lb-nhg-sync's is left, BIRD's table is untouched"
ip netns exec "$ns" "$py" "$sync" remove 2>>"$tmp/log" || fail "remove failed"
[ -z "$(ours)" ] || fail "remove left: $(ours)"
ip -n "$ns" route show table 200 | grep -q "^10.99.0.1 " || fail "remove touched table 200"
say "lb-nhg-sync corner cases passed"

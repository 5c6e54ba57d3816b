#!/usr/bin/env bash
# Builds the libFuzzer targets with clang + ASan + UBSan and runs each for a
# while on a scratch copy of its seed corpus. Exits non-zero when a target
# crashes, leaks, hits undefined behaviour, times out or breaks an invariant,
# or when a saved reproducer under test/fuzz/crashes/ still fails.
#
#   bash test/fuzz/run.sh                      every target, 60 s each (CI)
#   LB_FUZZ_SECONDS=600 bash test/fuzz/run.sh  longer
#   LB_FUZZ_TARGETS="proxy http" bash test/fuzz/run.sh
#   LB_FUZZ_TARGETS=client_hello bash test/fuzz/run.sh
#
# The checked-in corpus is never written to: new inputs go to a temporary
# directory that is removed afterwards (kept, with the artifacts, when a
# target fails; its path is printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
fuzzdir=$root/test/fuzz
build=$root/build-fuzz
seconds=${LB_FUZZ_SECONDS:-60}
targets=(${LB_FUZZ_TARGETS:-conf http dns proxy client_hello records})
jobs=${LB_FUZZ_BUILD_JOBS:-2}

# --- packages ---------------------------------------------------------------
# clang and its compiler-rt (libclang_rt.fuzzer*.a and the sanitizer
# runtimes), plus what the project itself needs to configure.
need_pkgs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  echo "== installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}
need_pkgs clang cmake make pkg-config libuv1-dev libssl-dev libtomlplusplus-dev libfmt-dev \
  nlohmann-json3-dev
clang_major=$(clang --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -n1)
need_pkgs "libclang-rt-${clang_major}-dev"

# --- build --------------------------------------------------------------------
# Debug keeps assert() live; -O1 makes the runs several times faster than -O0
# without hiding anything from the sanitizers.
echo "== build $build (clang $clang_major, ASan+UBSan+libFuzzer)"
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G "Unix Makefiles" \
  -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS="-O1" \
  -DLB_FUZZ=ON -DLB_ASAN=ON -DLB_UBSAN=ON -DLB_TESTS=OFF -DLB_BENCH=OFF >/dev/null
cmake --build "$build" -j"$jobs" --target "${targets[@]/#/fuzz_}"

# --- run ----------------------------------------------------------------------
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1:symbolize=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1:symbolize=1

# Largest input per target: past what the code under test can still tell
# apart, so every limit is reachable, and no bigger (bigger = slower).
max_len() {
  case $1 in
    conf) echo 4096 ;;   # real configs are a few KB
    http) echo 4096 ;;   # limits are reached through the tight-limits mode
    dns) echo 1024 ;;    # past a 512-byte classic reply and the 255-byte name limit
    proxy) echo 2200 ;;  # kMaxHeader (2048) plus payload after it
    client_hello) echo 17000 ;;  # past kMaxClientHello (16384): the limit must be reachable
    records) echo 17000 ;;       # one full 16 KiB record and a few operations around it
  esac
}

failed=()
summary=()
scratch=$(mktemp -d "${TMPDIR:-/tmp}/lb-fuzz.XXXXXX")
keep_scratch=0
cleanup() { ((keep_scratch)) || rm -rf "$scratch"; }
trap cleanup EXIT

for t in "${targets[@]}"; do
  bin=$build/test/fuzz/fuzz_$t
  work=$scratch/$t
  mkdir -p "$work/corpus" "$work/artifacts"

  # Saved reproducers first: a bug found once must stay fixed.
  if compgen -G "$fuzzdir/crashes/$t/*" >/dev/null; then
    echo "== $t: replaying test/fuzz/crashes/$t"
    if ! "$bin" -runs=1 "$fuzzdir"/crashes/"$t"/* >"$work/replay.log" 2>&1; then
      tail -n 40 "$work/replay.log"
      failed+=("$t (saved reproducer)")
      summary+=("$(printf '%-6s FAILED: a reproducer under test/fuzz/crashes/%s still fails' "$t" "$t")")
      keep_scratch=1
      continue
    fi
  fi

  cp -R "$fuzzdir/corpus/$t/." "$work/corpus/"
  if [ "$t" = conf ] && [ -d "$root/test/data/conf" ]; then
    # The unit tests' configurations are good seeds too (copied, prefixed so
    # names cannot collide).
    while IFS= read -r -d '' f; do
      cp "$f" "$work/corpus/data_$(basename "$(dirname "$f")")_$(basename "$f")"
    done < <(find "$root/test/data/conf" -name '*.toml' -print0)
  fi
  seeds=$(find "$work/corpus" -type f | wc -l)

  dict=()
  [ -f "$fuzzdir/$t.dict" ] && dict=(-dict="$fuzzdir/$t.dict")

  echo "== $t: fuzzing ${seconds}s from $seeds seeds"
  set +e
  "$bin" "$work/corpus" "${dict[@]}" \
    -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$work/artifacts/" >"$work/fuzz.log" 2>&1
  rc=$?
  set -e

  # libFuzzer's last status line ("#N DONE cov: C ft: F corp: K/SIZE ...")
  # and its final stats.
  last=$(grep -E '^#[0-9]+' "$work/fuzz.log" | tail -n1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/fuzz.log" | tail -n1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
  line=$(printf '%-6s execs=%-9s cov=%-5s ft=%-6s corpus=%s (from %s seeds)' \
    "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$seeds")
  if [ "$rc" -ne 0 ]; then
    line+="  FAILED (exit $rc)"
    failed+=("$t")
    keep_scratch=1
    echo "-- $t failed; log tail:"
    grep -vE '^#[0-9]+' "$work/fuzz.log" | tail -n 60
    for a in "$work"/artifacts/*; do
      [ -f "$a" ] || continue
      echo "-- reproducer $a ($(stat -c %s "$a") bytes):"
      od -An -tx1 -v "$a" | head -n 16
      echo "   replay: $bin $a   (keep it under test/fuzz/crashes/$t/)"
    done
  fi
  summary+=("$line")
  echo "$line"
done

echo "== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "== FUZZ FAILED: ${failed[*]} (work dir kept: $scratch)"
  exit 1
fi
echo "== fuzz: no failures"

#!/usr/bin/env bash
# House style, checked in CI: every tracked C++ file is formatted as
# .clang-format says, and clang-tidy (.clang-tidy's short list of bug-finding
# checks) is clean over lb's own sources.
#
#   bash test/style/run.sh BUILD_DIR     (BUILD_DIR has compile_commands.json)
#   bash test/style/run.sh --fix         reformat in place instead of checking
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
mapfile -t files < <(git ls-files '*.cc' '*.h' 2>/dev/null || find conf core health lb test bench -name '*.cc' -o -name '*.h')
if [ "${1:-}" = "--fix" ]; then
  clang-format -i "${files[@]}"
  exit 0
fi
build=${1:?usage: test/style/run.sh BUILD_DIR | --fix}

failed=0
echo "-- clang-format ($(clang-format --version | head -1))"
if ! clang-format --dry-run --Werror "${files[@]}" 2> /tmp/lb-format.$$; then
  grep -E '^[^ ].*: (error|warning):' /tmp/lb-format.$$ | cut -d: -f1 | sort -u | sed 's/^/   not formatted: /'
  echo "   run: bash test/style/run.sh --fix"
  failed=1
fi
rm -f /tmp/lb-format.$$

echo "-- clang-tidy"
mapfile -t sources < <(printf '%s\n' "${files[@]}" | grep -E '^(conf|core|health|lb)/.*\.cc$')
# run-clang-tidy takes regexes over compile_commands.json's files.
if ! run-clang-tidy -quiet -p "$build" -j "$(nproc)" "^$root/(conf|core|health|lb)/.*\.cc$" > /tmp/lb-tidy.$$ 2>&1; then
  grep -E 'warning:|error:' /tmp/lb-tidy.$$ | sort -u | head -50
  failed=1
fi
rm -f /tmp/lb-tidy.$$
if ((failed)); then echo "style: FAILED"; exit 1; fi
echo "style: clean (${#files[@]} files formatted, ${#sources[@]} sources tidy)"

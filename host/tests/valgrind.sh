#!/bin/sh
# host/tests/valgrind.sh - the C unit tests and the headless specs under
# valgrind memcheck; exits non-zero on any memcheck report.
#
# Owns: the valgrind pass of the test suite (issue 6: "once under valgrind
# (memcheck) on the headless specs, with zero reports").
# Must not: build anything (run `make build` first: the RelWithDebInfo build
# is what it checks) or hide reports: a suppression file is used only if
# host/tests/valgrind.supp exists, and may only hold noise from outside this
# repository (dlopen, Lua C modules). None is needed today.
#
# Usage: host/tests/valgrind.sh [BUILD_DIR [SPEC...]]
#   BUILD_DIR       default build; SPEC default spec (every spec)
#   VALGRIND_FLAGS  extra valgrind flags, e.g. --track-origins=yes
# Exit status:
#   0  clean: every test passed, memcheck reported nothing
#   1  memcheck reported an error or a leak
#   2  a test or spec failed, and memcheck reported no memory error (leak
#      records after a failed spec are expected then: busted ends the process
#      with os.exit(1, true), which closes the Lua state without the host's
#      teardown, so they are listed but not counted)
#   3  valgrind or the binaries are missing
set -u

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT" || exit 3
BUILD=${1:-build}
[ $# -gt 0 ] && shift
SPECS=${*:-spec}

if ! command -v valgrind >/dev/null 2>&1; then
  echo "valgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2
  exit 3
fi
for b in "$BUILD/lr_tests" "$BUILD/lunaroom"; do
  [ -x "$b" ] || { echo "valgrind.sh: $b missing (make build)" >&2; exit 3; }
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
SUPP=""
[ -f "$ROOT/host/tests/valgrind.supp" ] && SUPP="--suppressions=$ROOT/host/tests/valgrind.supp"
VG="valgrind -q --tool=memcheck --error-exitcode=1 --leak-check=full \
  --errors-for-leak-kinds=definite,indirect,possible --show-leak-kinds=definite,indirect,possible \
  --num-callers=30 $SUPP ${VALGRIND_FLAGS:-}"
# Memcheck findings that are not leaks.
MEMERR='Invalid (read|write|free)|uninitialised|Conditional jump|Mismatched free|overlap|Syscall param|Use of uninitialised|Argument .* of function .* has a fishy'

status=0
run() { # name failed_regex command...
  name=$1 failed=$2
  shift 2
  echo "valgrind: $name"
  start=$(date +%s)
  # shellcheck disable=SC2086
  $VG --log-file="$TMP/vg.log" "$@" >"$TMP/out.log" 2>&1
  rc=$?
  cat "$TMP/out.log"
  secs=$(($(date +%s) - start))
  tests_failed=0
  grep -Eq "$failed" "$TMP/out.log" && tests_failed=1
  memerr=$(grep -Ec "$MEMERR" "$TMP/vg.log")
  leaks=$(grep -c "lost in loss record" "$TMP/vg.log")
  if [ -s "$TMP/vg.log" ]; then
    echo "---- memcheck ($name) ----" >&2
    cat "$TMP/vg.log" >&2
    echo "----" >&2
  fi
  echo "valgrind: $name: exit $rc in ${secs}s, memory errors $memerr, leak records $leaks"
  if [ "$memerr" -gt 0 ] || { [ "$leaks" -gt 0 ] && [ "$tests_failed" -eq 0 ]; } ||
    { [ "$rc" -ne 0 ] && [ "$tests_failed" -eq 0 ]; }; then
    echo "valgrind: $name: MEMCHECK REPORTED ERRORS" >&2
    status=1
  elif [ "$tests_failed" -ne 0 ]; then
    echo "valgrind: $name: tests failed (leak records after busted's forced exit not counted)" >&2
    [ "$status" -eq 0 ] && status=2
  fi
}

run "C unit tests" ' [1-9][0-9]* failed' "$BUILD/lr_tests"
# shellcheck disable=SC2086
run "specs ($SPECS)" ' [1-9][0-9]* failures? | [1-9][0-9]* errors? |^Error' "$BUILD/lunaroom" test $SPECS

[ "$status" -eq 0 ] && echo "valgrind: clean (0 memcheck reports)"
exit $status

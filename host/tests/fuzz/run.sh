#!/usr/bin/env bash
# host/tests/fuzz/run.sh - build the libFuzzer targets with clang into
# build-fuzz/ and run each for FUZZ_SECONDS (default 60) seconds.
#
# Owns: the fuzz build (every host/*.c but the command line: main.c, cli.c
# and serve.c, with
# -fsanitize=fuzzer-no-link,address,undefined) and the fuzz run.
# Must not: write into the committed seed corpora (new inputs go to
# build-fuzz/corpus/<target>/, crashes to build-fuzz/artifacts/<target>/).
#
# Environment:
#   FUZZ_SECONDS  seconds per target (default 60)
#   FUZZ_TARGETS  targets to run (default "json packet http jwt bounded ids url")
#   FUZZ_BUILD    build directory (default <repo>/build-fuzz)
#   CC            compiler (default clang)
#   FUZZ_JOBS     parallel compiles (default nproc)
# Exit status: 0 when every target ran its time without a finding, 1 when
# one crashed, leaked, timed out or failed an invariant (the reproducer is
# in build-fuzz/artifacts/<target>/; replay with build-fuzz/fuzz_<t> FILE).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
OUT=${FUZZ_BUILD:-$ROOT/build-fuzz}
SECS=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-"json packet http jwt bounded ids url"}
CC=${CC:-clang}
case "$CC" in cc | gcc | */gcc) CC=clang ;; esac
JOBS=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}
FUZZ=$ROOT/host/tests/fuzz

if ! command -v "$CC" >/dev/null 2>&1; then
  echo "run.sh: $CC not found (apt-get install clang libclang-rt-14-dev)" >&2
  exit 2
fi

PKGS=(lua5.4 libwebsockets sqlite3 libjwt openssl libpq)
read -r -a PKG_CFLAGS <<<"$(pkg-config --cflags "${PKGS[@]}")"
read -r -a LIBS <<<"$(pkg-config --libs "${PKGS[@]}") -lm -ldl -lpthread"
BASE=(-std=c11 -g -O1 -D_GNU_SOURCE "-fsanitize=address,undefined" -fno-sanitize-recover=undefined
  -fno-omit-frame-pointer "-DLR_SOURCE_DIR=\"$ROOT\"" "-I$ROOT/host" "-I$FUZZ" "${PKG_CFLAGS[@]}")

mkdir -p "$OUT/obj"
# Engine objects: warnings shown but not fatal here (the CMake build is the
# -Werror gate for host/; clang may warn where gcc does not).
compile() { # src obj flags...
  src=$1 obj=$2
  shift 2
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ -n "$(find "$ROOT/host" -maxdepth 1 -name '*.h' -newer "$obj" | head -1)" ]; then
    "$CC" "${BASE[@]}" "$@" -c "$src" -o "$obj"
  fi
}

echo "fuzz: building into $OUT"
pids=""
n=0
for src in "$ROOT"/host/*.c "$FUZZ"/fuzz_server.c; do
  case "$src" in */host/main.c | */host/cli.c | */host/serve.c) continue ;; esac
  obj=$OUT/obj/$(basename "$src" .c).o
  compile "$src" "$obj" -Wall -Wextra -fsanitize=fuzzer-no-link &
  pids="$pids $!"
  n=$((n + 1))
  if [ $((n % JOBS)) -eq 0 ]; then
    for p in $pids; do wait "$p"; done
    pids=""
  fi
done
for p in $pids; do wait "$p"; done
OBJS=("$OUT"/obj/*.o)

for t in $TARGETS; do
  "$CC" "${BASE[@]}" -Wall -Wextra -Werror -fsanitize=fuzzer "$FUZZ/fuzz_$t.c" "${OBJS[@]}" \
    "${LIBS[@]}" -o "$OUT/fuzz_$t"
done

# Symbolized stacks in reports (clang's llvm-symbolizer is not on PATH by
# default on Debian).
if [ -z "${ASAN_SYMBOLIZER_PATH:-}" ] && ! command -v llvm-symbolizer >/dev/null 2>&1; then
  for s in /usr/lib/llvm-*/bin/llvm-symbolizer; do
    [ -x "$s" ] && export ASAN_SYMBOLIZER_PATH="$s"
  done
fi

status=0
summary=""
for t in $TARGETS; do
  mkdir -p "$OUT/corpus/$t" "$OUT/artifacts/$t"
  log=$OUT/fuzz_$t.log
  echo "fuzz: $t for ${SECS}s"
  set +e
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1} \
    "$OUT/fuzz_$t" -max_total_time="$SECS" -timeout=20 -rss_limit_mb=2560 -max_len=16384 \
    -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$t/" \
    "$OUT/corpus/$t" "$FUZZ/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  if [ "$rc" -ne 0 ]; then
    status=1
    echo "fuzz: $t FAILED (exit $rc); log $log; artifacts:" >&2
    ls "$OUT/artifacts/$t" >&2 || true
    grep -E 'ERROR|SUMMARY|fuzz_[a-z]+:|runtime error' "$log" | head -20 >&2 || true
    summary="$summary
  $t: FAILED exit $rc after ${runs:-?} runs"
  else
    summary="$summary
  $t: ok, ${runs:-?} runs, ${eps:-?} exec/s, ${cov:-cov ?}"
  fi
done
echo "fuzz summary (${SECS}s per target):$summary"
exit $status

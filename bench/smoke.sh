#!/bin/sh
# bench/smoke.sh - keep the load generators working: build them, start
# build/lunaroom on a free loopback port with bench/rooms, run a few clients
# for about one second (join + moves) with loadgen, then with fastgen (a
# counter fan-out and moves), stop the server. Exits non-zero if a
# generator did not get every first packet and the patches back.
# Not a benchmark: it prints figures but asserts nothing about speed.
#   sh bench/smoke.sh            (LUNAROOM_BIN=... to test another binary)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${LUNAROOM_BIN:-build/lunaroom}
OUT=${BENCH_OUT:-build/bench}
[ -x "$BIN" ] || { echo "smoke: $BIN not built (make build)" >&2; exit 1; }
make -s -C bench/loadgen OUT="$ROOT/$OUT" >/dev/null
FASTGEN=${FASTGEN_BIN:-build/bench/fastgen}
[ -x "$FASTGEN" ] || { echo "smoke: $FASTGEN not built (make build)" >&2; exit 1; }
LOG=$(mktemp)
SRV=
cleanup() {
  if [ -n "$SRV" ]; then kill "$SRV" 2>/dev/null || true; wait "$SRV" 2>/dev/null || true; fi
  rm -f "$LOG"
}
trap cleanup EXIT INT TERM
"$BIN" serve bench/rooms --port 0 --host 127.0.0.1 --storage memory --no-watch 2>"$LOG" &
SRV=$!
PORT=
i=0
while [ $i -lt 100 ]; do
  PORT=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9][0-9]*\).*/\1/p' "$LOG" | head -n 1)
  [ -n "$PORT" ] && break
  kill -0 "$SRV" 2>/dev/null || break
  i=$((i + 1))
  sleep 0.1
done
if [ -z "$PORT" ]; then
  echo "smoke: the server did not start:" >&2
  cat "$LOG" >&2
  exit 1
fi
"$OUT/loadgen" --url "ws://127.0.0.1:$PORT" --scenario move,fanout --clients 5 --rate 5 \
  --writer-rate 20 --warmup 0.2 --duration 0.5 --min-samples 0 --drain 1 --timeout 10 --max-time 20 --pid "$SRV" --quiet
echo "smoke: loadgen ok"
"$FASTGEN" --url "ws://127.0.0.1:$PORT" --scenario fanout --action increment --clients 5 --room counter-smoke \
  --rate 20 --warmup 0.2 --duration 0.5 --drain 1 --min-samples 0 --timeout 10 --max-time 20 --pid "$SRV" --quiet
"$FASTGEN" --url "ws://127.0.0.1:$PORT" --scenario move --clients 5 --room bench-smoke-fast \
  --rate 20 --warmup 0.2 --duration 0.5 --drain 1 --min-samples 0 --timeout 10 --max-time 20 --pid "$SRV" --quiet
echo "smoke: fastgen ok"

#!/usr/bin/env bash
# bench/join_callgrind.sh - instructions per WebSocket join, counted by
# callgrind (independent of the machine's load).
#
# Owns: one run of BIN under valgrind --tool=callgrind with a join ramp of
# CLIENTS sockets (build/bench/fastgen --scenario ramp; each joins the
# counter room, then all close) and SIGTERM; prints the program's total and
# the inclusive instruction count of the functions on the join path, per
# join (callgrind_annotate --inclusive=yes; JOIN_FNS picks the functions).
# Must not: use anything but loopback (127.0.0.1), or leave the server behind.
#
# Usage: bench/join_callgrind.sh BIN [CLIENTS=300] [OUT=/tmp/join.callgrind]
# Needs: valgrind, build/bench/fastgen (make build).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:?usage: join_callgrind.sh BIN [CLIENTS] [OUT]}
N=${2:-300}
OUT=${3:-/tmp/join.callgrind}
GEN=$ROOT/build/bench/fastgen
FNS=${JOIN_FNS:-"net_callback net_ws_upgrade net_ws_open net_hdrs_collect net_hdr_custom net_query_collect net_path_encode net_peer lr_server_ws_open lr_log lr_log_parts emit timestamp __vfprintf_internal __strftime_l net_conn_finish"}
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
rm -f "$OUT"
timeout 600 valgrind --tool=callgrind --callgrind-out-file="$OUT" "$BIN" serve "$ROOT/bench/rooms" \
  --port 0 --host 127.0.0.1 --storage memory --no-watch --max-conns -1 --max-conns-per-ip -1 \
  --max-http-per-ip -1 --msgs-per-ip -1 2>"$LOG" &
VG=$!
PORT=
for _ in $(seq 1 600); do
  PORT=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$LOG" | head -1)
  [ -n "$PORT" ] && break
  sleep 0.1
done
if [ -z "$PORT" ]; then
  cat "$LOG" >&2
  kill "$VG"
  exit 1
fi
timeout 300 "$GEN" --url "ws://127.0.0.1:$PORT" --scenario ramp --clients "$N" --room counter-join \
  --timeout 200 --quiet >/dev/null || echo "fastgen failed" >&2
sleep 1
kill -TERM "$VG"
wait "$VG" || true
echo "joins: $N ($BIN; $(grep -c ': open from' "$LOG") open lines in its log)"
callgrind_annotate --inclusive=yes "$OUT" 2>/dev/null | awk -v n="$N" -v fns="$FNS" '
  BEGIN { split(fns, a, " "); for (i in a) want[a[i]] = 1 }
  /PROGRAM TOTALS/ { v = $1; gsub(",", "", v); printf "%-24s %13d Ir %9.0f per join\n", "program total", v, v / n; next }
  / \[/ { v = $1; gsub(",", "", v); f = $0; sub(/ \[.*$/, "", f); sub(/^.*:/, "", f)
          if ((f in want) && !(f in seen)) { seen[f] = 1; printf "%-24s %13d Ir %9.0f per join\n", f, v, v / n } }'

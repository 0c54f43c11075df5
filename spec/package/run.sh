#!/bin/sh
# spec/package/run.sh - the Debian package end to end (issue 20), as root:
# build it (make package), dpkg -i, check the user, the data directory and
# the unit (systemd-analyze verify where it works), run the installed binary
# as the lunaroom user on /etc/lunaroom/lunaroom.lua, connect a WebSocket
# client, add a room and SIGHUP (the rooms folder is re-read), SIGTERM (exit
# 0, the SQLite file in /var/lib/lunaroom), then dpkg --purge: nothing the
# package brought (every path dpkg -L listed that did not exist before)
# remains, nor the user or /var/lib/lunaroom.
# Not root: says it skipped and exits 0.
set -eu
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
if [ "$(id -u)" != 0 ]; then
  echo "package test SKIPPED: it installs a .deb (dpkg -i) and needs root (CI runs it as root)"
  exit 0
fi
if dpkg -s lunaroom >/dev/null 2>&1; then
  echo "FAIL: a lunaroom package is already installed; not touching it" >&2
  exit 1
fi
TMP=$(mktemp -d /tmp/lunaroom-package.XXXXXX)
PID=
INSTALLED=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  rm -f /etc/lunaroom/rooms/hello.lua
  [ -n "$INSTALLED" ] && dpkg --purge lunaroom >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$TMP/serve.log" ] && cat "$TMP/serve.log" >&2; exit 1; }
ok() { echo "ok - $*"; }

make package >"$TMP/build.log" 2>&1 || { cat "$TMP/build.log"; fail "make package"; }
DEB=$(ls -t build-deb/lunaroom_*.deb | head -1)
ok "built $DEB"

# What existed before, among the paths the package ships.
dpkg-deb -c "$DEB" | awk '{print $6}' | sed 's|^\./|/|; s|/$||' | grep -v '^$' >"$TMP/paths"
: >"$TMP/before"
while read -r p; do [ -e "$p" ] && echo "$p" >>"$TMP/before"; done <"$TMP/paths"

INSTALLED=1
dpkg -i "$DEB" >"$TMP/dpkg.log" 2>&1 || { cat "$TMP/dpkg.log"; fail "dpkg -i"; }
dpkg -L lunaroom >"$TMP/listed"
getent passwd lunaroom >/dev/null || fail "no lunaroom user"
[ "$(stat -c %U /var/lib/lunaroom)" = lunaroom ] || fail "/var/lib/lunaroom is not owned by lunaroom"
[ -f /etc/lunaroom/lunaroom.lua ] || fail "no /etc/lunaroom/lunaroom.lua"
dpkg-query -W -f='${Conffiles}\n' lunaroom | grep -q /etc/lunaroom/lunaroom.lua || fail "the config is not a conffile"
ok "installed: user, /var/lib/lunaroom, /etc/lunaroom/lunaroom.lua (conffile)"

U=/lib/systemd/system/lunaroom.service
for k in Restart=on-failure NoNewPrivileges=yes ProtectSystem=strict ReadWritePaths=/var/lib/lunaroom LimitNOFILE= \
  "ExecReload=/bin/kill -HUP"; do
  grep -q "^$k" "$U" || fail "unit lacks $k"
done
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify "$U" >"$TMP/verify.log" 2>&1 || { cat "$TMP/verify.log"; fail "systemd-analyze verify"; }
  ok "systemd-analyze verify $U"
else
  ok "systemd-analyze not available: unit checked for its settings only"
fi

# The unit's command line, as its user (setpriv execs: signals reach it), from its working directory (no
# systemd in CI); --port 0 --no-watch added (a free port; SIGHUP re-reads).
V=$(/usr/bin/lunaroom --version)
echo "$V" | grep -q "Lua runtime: /usr/share/lunaroom/lua" || fail "installed runtime: $V"
cd /var/lib/lunaroom
setpriv --reuid=lunaroom --regid=lunaroom --init-groups --no-new-privs /usr/bin/lunaroom serve --config /etc/lunaroom/lunaroom.lua --port 0 --no-watch \
  --log-format text >"$TMP/serve.log" 2>&1 &
PID=$!
cd "$ROOT"
PORT=
for _ in $(seq 1 100); do
  PORT=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$TMP/serve.log")
  [ -n "$PORT" ] && break
  kill -0 "$PID" 2>/dev/null || fail "serve exited"
  sleep 0.1
done
[ -n "$PORT" ] || fail "no listen line"
[ -d spec/integration/node_modules/ws ] ||
  (cd spec/integration && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
PORT=$PORT node --input-type=module -e '
  import WebSocket from "./spec/integration/node_modules/ws/index.js";
  const ws = new WebSocket(`ws://127.0.0.1:${process.env.PORT}/parties/main/demo?id=pkg`);
  const t = setTimeout(() => { console.error("no sync"); process.exit(1); }, 5000);
  let n = 0;
  ws.on("message", (d) => {
    const m = JSON.parse(d);
    if (m.type !== "sync") return;
    if (n++ === 0) { ws.send(JSON.stringify({ action: "increment", value: { amount: 2 } })); return; }
    if (m.value.count === 2) { clearTimeout(t); ws.close(); }
  });
  ws.on("error", (e) => { console.error(e.message); process.exit(1); });
' || fail "WebSocket client on the installed server"
[ "$(curl -sS "http://127.0.0.1:$PORT/parties/main/demo/count")" = '{"count":2}' ] || fail "count after increment"
ok "the installed server (as lunaroom, on the installed config) serves a WebSocket client"

cat >/etc/lunaroom/rooms/hello.lua <<'LUA'
local lr = require "lunaroom"
return lr.room { path = "hello", requests = { ["GET /"] = function() return { hi = true } end } }
LUA
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/parties/main/hello")" = 404 ] || fail "hello before SIGHUP"
kill -HUP "$PID"
for _ in $(seq 1 50); do grep -q "rooms folder .* re-read" "$TMP/serve.log" && break; sleep 0.1; done
[ "$(curl -sS "http://127.0.0.1:$PORT/parties/main/hello")" = '{"hi":true}' ] || fail "SIGHUP did not load the new room"
rm -f /etc/lunaroom/rooms/hello.lua
ok "SIGHUP (systemctl reload) re-reads the rooms folder"

kill -TERM "$PID"
wait "$PID" || fail "SIGTERM: exit status not 0"
PID=
[ -s /var/lib/lunaroom/lunaroom.sqlite ] || fail "no /var/lib/lunaroom/lunaroom.sqlite"
ok "SIGTERM: exit 0, state in /var/lib/lunaroom/lunaroom.sqlite"

dpkg --purge lunaroom >"$TMP/dpkg.log" 2>&1 || { cat "$TMP/dpkg.log"; fail "dpkg --purge"; }
INSTALLED=
left=0
while read -r p; do
  grep -qx "$p" "$TMP/before" && continue
  if [ -e "$p" ]; then echo "left after purge: $p" >&2; left=1; fi
done <"$TMP/listed"
[ $left = 0 ] || fail "files remain after purge"
[ ! -e /var/lib/lunaroom ] || fail "/var/lib/lunaroom remains"
[ ! -e /etc/lunaroom ] || fail "/etc/lunaroom remains"
! getent passwd lunaroom >/dev/null || fail "the lunaroom user remains"
ok "purged: nothing dpkg -L listed remains, nor the data, the config or the user"
echo "package test passed"

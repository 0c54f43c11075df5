#!/bin/sh
# spec/install/run.sh BUILD_DIR - the installed lunaroom, away from the source
# tree (issue 20): cmake --install into a temp prefix, move the prefix (the
# binary finds ../share/lunaroom/lua next to itself, not a build path),
# --version, `lunaroom init` then `lunaroom test`, `check` and `serve` in the
# new project, and --lua-modules with a LuaRocks-style tree.
set -eu
BUILD=$(cd "${1:-build}" && pwd)
TMP=$(mktemp -d /tmp/lunaroom-install.XXXXXX)
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$TMP/serve.log" ] && cat "$TMP/serve.log" >&2; exit 1; }
ok() { echo "ok - $*"; }

cmake --install "$BUILD" --prefix "$TMP/first" >/dev/null
mv "$TMP/first" "$TMP/prefix" # relocated: nothing may point at the old prefix
BIN="$TMP/prefix/bin/lunaroom"
[ -x "$BIN" ] || fail "no bin/lunaroom"
[ -f "$TMP/prefix/share/lunaroom/lua/lunaroom/init.lua" ] || fail "no share/lunaroom/lua"
head -1 "$TMP/prefix/share/lunaroom/meta/lunaroom.lua" | grep -q '^---@meta' || fail "no share/lunaroom/meta/lunaroom.lua"
ok "installed bin/lunaroom, share/lunaroom/lua and share/lunaroom/meta"

cd "$TMP"
V=$(env -u LUNAROOM_LUA_PATH "$BIN" --version)
echo "$V" | grep -q "^lunaroom [0-9]" || fail "--version: $V"
for lib in "Lua 5.4" "libwebsockets" "SQLite" "libjwt"; do
  echo "$V" | grep -q "$lib" || fail "--version lacks $lib: $V"
done
echo "$V" | grep -q "Lua runtime: $TMP/prefix/share/lunaroom/lua\$" || fail "runtime not found next to the binary: $V"
ok "--version names Lua, libwebsockets, SQLite, libjwt and the relocated runtime"

"$BIN" init proj >/dev/null || fail "init"
for f in rooms/counter.lua spec/counter_spec.lua lunaroom.lua README.md; do
  [ -s "proj/$f" ] || fail "init did not write $f"
done
if "$BIN" init proj >/dev/null 2>&1; then fail "init into a non-empty folder must refuse"; fi
ok "init wrote a project, and refuses a non-empty folder"

cd "$TMP/proj"
env -u LUNAROOM_LUA_PATH "$BIN" test >"$TMP/test.log" 2>&1 || { cat "$TMP/test.log"; fail "lunaroom test in the new project"; }
grep -q "4 successes / 0 failures" "$TMP/test.log" || { cat "$TMP/test.log"; fail "expected 4 passing specs"; }
env -u LUNAROOM_LUA_PATH "$BIN" check rooms >/dev/null || fail "lunaroom check rooms"
ok "lunaroom test and check pass in the new project"

# A pure-Lua module in a LuaRocks tree (what `luarocks --tree lua_modules
# install` lays out), and Debian's penlight, required by a room.
mkdir -p lua_modules/share/lua/5.4
cat > lua_modules/share/lua/5.4/greeting.lua <<'LUA'
return { hello = function(who) return "hello, " .. who end }
LUA
cat > rooms/hello.lua <<'LUA'
local lr = require "lunaroom"
local greeting = require "greeting"
local url = require "pl.url"
return lr.room {
  path = "hello",
  requests = { ["GET /"] = function() return { text = greeting.hello(url.quote("a b")) } end },
}
LUA
if env -u LUNAROOM_LUA_PATH "$BIN" check rooms >/dev/null 2>&1; then fail "check without --lua-modules must fail"; fi
env -u LUNAROOM_LUA_PATH "$BIN" check rooms --lua-modules lua_modules:/usr/share/lua/5.4 >/dev/null ||
  fail "check with --lua-modules"
cat > lunaroom.lua <<'LUA'
return { rooms = "rooms", port = 1999, storage = "sqlite:data/lunaroom.sqlite",
  lua_modules = "lua_modules:/usr/share/lua/5.4" }
LUA
ok "a room requiring modules: check fails without --lua-modules, passes with it"

# serve: reads ./lunaroom.lua (no --config; lua_modules from it); the --port
# flag wins over the config's.
env -u LUNAROOM_LUA_PATH "$BIN" serve --port 0 >"$TMP/serve.log" 2>&1 &
PID=$!
PORT=
for _ in $(seq 1 100); do
  PORT=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$TMP/serve.log")
  [ -n "$PORT" ] && break
  kill -0 "$PID" 2>/dev/null || fail "serve exited"
  sleep 0.1
done
[ -n "$PORT" ] || fail "no listen line"
R=$(curl -sS "http://127.0.0.1:$PORT/parties/main/counter-1/count")
[ "$R" = '{"count":0}' ] || fail "GET count: $R"
R=$(curl -sS "http://127.0.0.1:$PORT/parties/main/hello")
[ "$R" = '{"text":"hello, a%20b"}' ] || fail "GET hello (modules): $R"
kill -TERM "$PID"
wait "$PID" || fail "serve did not exit 0 on SIGTERM"
PID=
[ -s data/lunaroom.sqlite ] || fail "no data/lunaroom.sqlite"
ok "serve (config ./lunaroom.lua, --lua-modules tree) answers, stops with 0 on SIGTERM"
echo "install test passed"

-- RSS of a server holding N rooms with one client each, hibernating or not.
-- Run: build/lunaroom lua bench/hibernate_bench.lua [N]
-- (it runs itself twice, in fresh processes, and prints both figures).
-- Headless host: the figure is the engine's memory (rooms, state, Lua), with
-- no sockets; each client is a real engine connection.
local testing = require "lunaroom.testing"
local lr = require "lunaroom"

local function rss_kb()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmRSS:%s+(%d+)")
    if kb then return tonumber(kb) end
  end
end

local mode, n = arg[1], tonumber(arg[2] or arg[1]) or 10000
if mode ~= "on" and mode ~= "off" then
  local exe = io.popen("readlink /proc/$PPID/exe"):read("l") -- this process
  print(string.format("hibernate_bench: %d rooms, one client each, a small state per room", n))
  for _, m in ipairs { "off", "on" } do
    local p = io.popen(string.format("%q lua %q %s %d", exe, arg[0], m, n))
    io.write(p:read("a"))
    p:close()
  end
  return
end

local def = lr.room {
  path = "{name}", hibernate = mode == "on", hibernateAfter = 1000,
  state = { players = lr.users(lr.schema { x = 0, y = 0, name = "anon" }), entries = lr.sync(lr.array {}), count = 0 },
  actions = { inc = function(r) r.count = r.count + 1 end },
}
local base = rss_kb()
local t = testing.room(def, { id = "room-0" })
-- Rooms come and go as players do: 500 rooms get a player and a little
-- state, then a second passes (idle rooms hibernate when enabled), and so on.
local clients = {}
for i = 1, n do
  local c = t:client { room = "room-" .. i, id = "u" .. i, discard = true }
  c:send("inc")
  local r = t.srv.rooms["main/room-" .. i]
  for j = 1, 8 do r.entries[j] = { at = j, text = "entry " .. j .. " of room " .. i } end
  clients[i] = c
  if i % 500 == 0 then t:advance(1100) end
end
t:advance(1100)
collectgarbage("collect")
local after = rss_kb()
local live = 0
for _ in pairs(t.srv.rooms) do live = live + 1 end
print(string.format("  hibernate %-3s: RSS %7.1f MB for %d rooms with one open client each (%d in memory), %.0f bytes/room",
  mode, after / 1024, n, live, (after - base) * 1024 / n))
t:close()

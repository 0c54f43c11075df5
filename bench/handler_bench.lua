-- The cost of a room handler: one that never waits (the common case; must
-- cost what it cost before handlers could wait) and one that waits (memory
-- per waiting handler).
-- Run: build/lunaroom lua bench/handler_bench.lua [actions] [waiting]
-- Prints figures; asserts nothing. Headless host (virtual clock, memory
-- storage), so the figures are the engine + Lua path, not the network.
-- The "waiting" part needs a host with lunaroom.io in room handlers.
local testing = require "lunaroom.testing"
local lr = require "lunaroom"

local N = tonumber(arg and arg[1]) or 200000
local W = tonumber(arg and arg[2]) or 10000

local has_waits = pcall(require, "lunaroom.tasks")
local naps = 0
local def = lr.room {
  path = "bench", rateLimit = { rate = 0, burst = 0 },
  state = { players = lr.users(lr.schema { x = 0, y = 0 }), n = 0 },
  guards = { function() return true end },
  actions = {
    move = function(_, p, v) p.x = v end,
    nap = function(_, _, v)
      require("lunaroom.io").sleep(v)
      naps = naps + 1 -- no state write: a sync to W clients per resume would dominate
    end,
  },
  waits = has_waits and { max = 1000000 } or nil,
}

-- 1. Non-waiting actions: 10 clients, N actions in total, best of 3; a room
-- that may wait (the lr.room table above: runs in pooled coroutines) and the
-- same room from source that never mentions lunaroom.io (called directly).
local SRC = [[
local lr = require "lunaroom"
return lr.room {
  path = "bench", rateLimit = { rate = 0, burst = 0 },
  state = { players = lr.users(lr.schema { x = 0, y = 0 }), n = 0 },
  guards = { function() return true end },
  actions = { move = function(_, p, v) p.x = v end },
}
]]
local function bench(d, label)
  local t = testing.room(d)
  local clients = {}
  for i = 1, 10 do clients[i] = t:client { id = "u" .. i, discard = true } end
  local best = math.huge
  for _ = 1, 3 do
    collectgarbage("collect")
    local t0 = os.clock()
    for k = 1, N do clients[k % 10 + 1]:send("move", k) end
    t:advance(0)
    local dt = os.clock() - t0
    if dt < best then best = dt end
  end
  print(string.format("non-waiting action, %s (room guard + handler + sync to 10 clients): %.2f us/action "
    .. "(%d actions, best of 3)", label, best * 1e6 / N, N))
  t:close()
end
local which = os.getenv("BENCH_ROOM") or "both"
if which ~= "direct" then bench(def, "a room that may wait") end
if which ~= "tasks" then bench((require("lunaroom.sandbox").load_room_source(SRC, "=bench")), "a room that cannot wait") end

-- 2. Waiting handlers: W clients each start an action that sleeps.
if not has_waits then
  print("waiting handlers: not supported by this host")
  return
end
t = testing.room(def, { env = { LUNAROOM_MAX_WAITING = tostring(W * 2) } })
clients = {}
for i = 1, W do clients[i] = t:client { id = "w" .. i, discard = true } end
t:advance(0)
collectgarbage("collect")
collectgarbage("collect")
local before = collectgarbage("count") * 1024
for i = 1, W do clients[i]:send("nap", 1000) end
collectgarbage("collect")
collectgarbage("collect")
local during = collectgarbage("count") * 1024
local waiting = t:waiting()
local t0 = os.clock()
t:advance(1000)
local resume = os.clock() - t0
print(string.format("waiting handlers: %d waiting, %.0f bytes of Lua heap each (coroutine, its stack, the wait's "
  .. "record and timers); resuming all took %.2f us each", waiting, (during - before) / W, resume * 1e6 / W))
print(string.format("handlers finished: %d", naps))
t:close()

-- Persisted state writes per second: 100 users each change one field per
-- tick, with throttleStorage 0 (one transaction per action) and 1000 ms.
-- Run: build/lunaroom lua bench/persist_bench.lua [ticks]
-- Prints figures; asserts nothing. Uses SQLite (WAL) in a temp file and the
-- headless host (virtual clock, 50 ms per tick), so the figure is the cost of
-- the engine + storage path, not of the network.
local testing = require "lunaroom.testing"
local lr = require "lunaroom"

local ticks = tonumber(arg and arg[1]) or 200
local USERS = 100

local function run(throttle)
  local path = os.tmpname()
  os.remove(path)
  local def = lr.room {
    path = "bench", throttleStorage = throttle, rateLimit = { rate = 0, burst = 0 },
    state = { players = lr.users(lr.schema { x = 0, y = 0 }) },
    actions = { move = function(_, p, v) p.x = v end },
  }
  local t = testing.room(def, { storage = "sqlite:" .. path })
  local clients = {}
  for i = 1, USERS do clients[i] = t:client { id = "u" .. i, discard = true } end
  for _, c in ipairs(clients) do c:clear() end
  local t0 = os.clock()
  for tick = 1, ticks do
    for _, c in ipairs(clients) do c:send("move", tick) end
    t:advance(50)
  end
  t:close() -- flushes what is pending
  local cpu = os.clock() - t0
  local writes = ticks * USERS
  -- check what reached the disk
  local t2 = testing.room(def, { storage = "sqlite:" .. path })
  local ok = 0
  for i = 1, USERS do
    local pid = t2.storage:get("session:u" .. i).publicId
    if t2.room.players[pid].x == ticks then ok = ok + 1 end
  end
  t2:close()
  os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm")
  print(string.format("throttleStorage %5d ms: %7d state writes in %.2f s CPU = %9.0f writes/s (%d/%d users' last value on disk)",
    throttle, writes, cpu, writes / cpu, ok, USERS))
end

print(string.format("persist_bench: %d users x %d ticks (one field per user per tick)", USERS, ticks))
run(0)
run(1000)

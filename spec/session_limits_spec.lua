-- Sessions (issue 15, item 11): a cap on offline, unexpired sessions per
-- room (the oldest expires early), and a per-address rate of new sessions.
local testing = require "lunaroom.testing"
local lr = require "lunaroom"
local core = require "lunaroom.core"

local Player = lr.schema { x = lr.sync(0), bio = lr.sync(""), online = lr.connected() }

local function game(extra, opts)
  local def = { path = "g", state = { players = lr.users(Player) },
    actions = { move = function(_, p, v) p.x = v end, bio = function(_, p, v) p.bio = v end } }
  for k, v in pairs(extra or {}) do def[k] = v end
  return testing.room(lr.room(def), opts)
end

local function count(t)
  local n = 0
  for _ in pairs(t.room.players) do n = n + 1 end
  return n
end

local function metric(t, line)
  local body = core.http(t.srv.h, "GET", "/metrics", "", {}, nil).body
  return tonumber(body:match("\n" .. line:gsub("[%[%]%(%)%.%+%-%*%?%^%$]", "%%%0") .. " (%S+)"))
end

describe("offline sessions per room", function()
  it("1,200 sessions that come and go keep at most 1,000 users (the default); the oldest expire early", function()
    local t = game()
    local pids = {}
    for i = 1, 1200 do
      local c = t:client { id = "s" .. i, discard = true }
      pids[i] = c.publicId
      c:close()
    end
    assert.are.equal(1000, count(t))
    assert.is_nil(t.room.players[pids[200]]) -- the first 200 went first
    assert.is_nil(t.storage:get("session:s200"))
    assert.is_not_nil(t.room.players[pids[201]])
    assert.is_not_nil(t.storage:get("session:s1200"))
    assert.are.equal(1000, metric(t, 'lunaroom_users{state="offline"}'))
    -- the snapshot a joiner gets is bounded by the cap
    local w = t:client { id = "watcher" }
    local n = 0
    for _ in pairs(w.packets[1].value.players) do n = n + 1 end
    assert.are.equal(1001, n)
    assert.are.equal(1, metric(t, 'lunaroom_users{state="online"}'))
    t:close()
  end)

  it("maxOfflineSessions sets the cap; reconnecting takes a session off the offline list", function()
    local t = game { maxOfflineSessions = 3 }
    testing.logs()
    local pids = {}
    for i = 1, 3 do
      local c = t:client { id = "s" .. i }
      pids[i] = c.publicId
      c:send("move", i)
      c:close()
    end
    -- s1 comes back and leaves again: it is now the newest offline session
    local back = t:client { id = "s1" }
    assert.are.equal(pids[1], back.publicId)
    back:close()
    local c4 = t:client { id = "s4" }
    c4:close()
    assert.is_nil(t.room.players[pids[2]]) -- the oldest offline one
    assert.are.equal(1, t.room.players[pids[1]].x)
    assert.truthy(table.concat(testing.logs(), "\n"):find("session s2 expired early", 1, true))
    -- an expired-early session starts again as a new user
    local again = t:client { id = "s2" }
    assert.are_not.equal(pids[2], again.publicId)
    -- online users do not count
    local online = {}
    for i = 10, 20 do online[#online + 1] = t:client { id = "on" .. i } end
    assert.are.equal(3 + 1 + #online, count(t))
    t:close()
  end)

  it("the offline list survives hibernation and a restart", function()
    local path = os.tmpname()
    os.remove(path)
    local opts = { storage = "sqlite:" .. path }
    local t = game({ maxOfflineSessions = 2, hibernate = true, hibernateAfter = 1000 }, opts)
    local watcher = t:client { id = "w" }
    local pids = {}
    for i = 1, 2 do
      local c = t:client { id = "s" .. i }
      pids[i] = c.publicId
      c:close()
      t:advance(10)
    end
    t:advance(1000)
    assert.is_nil(t.room) -- hibernated: the instance with its offline list is gone
    assert.are.equal(0, metric(t, 'lunaroom_users{state="offline"}'))
    local c3 = t:client { id = "s3" } -- wakes the room, which rebuilt the list from storage
    assert.are.equal(2, metric(t, 'lunaroom_users{state="offline"}'))
    c3:close()
    assert.is_nil(t.room.players[pids[1]])
    assert.is_not_nil(t.room.players[pids[2]])
    watcher:close()
    t:close()
    -- after a restart the offline sessions are still capped and still expire
    local t2 = game({ maxOfflineSessions = 2 }, opts)
    assert.are.equal(2, metric(t2, 'lunaroom_users{state="offline"}'))
    t2:advance(300000)
    assert.are.equal(0, count(t2))
    assert.are.equal(0, metric(t2, 'lunaroom_users{state="offline"}'))
    t2:close()
    os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm")
  end)
end)

describe("new sessions per address", function()
  it("are rate limited (token bucket): past it the socket is closed with 4008", function()
    local t = game({}, { limits = { session_rate = 1, session_burst = 3 } })
    testing.logs()
    local cs = {}
    for i = 1, 3 do
      cs[i] = t:client { id = "n" .. i, ip = "203.0.113.5" }
      assert.is_nil(cs[i].closed)
    end
    local refused = t:client { id = "n4", ip = "203.0.113.5" }
    assert.are.same({ code = 4008, reason = "too many new sessions" }, refused.closed)
    assert.is_nil(t.storage:get("session:n4"))
    assert.are.equal(3, count(t))
    assert.truthy(table.concat(testing.logs(), "\n"):find("from 203.0.113.5 refused: new sessions", 1, true))
    -- a known session comes back without a token
    cs[1]:close()
    assert.is_nil(t:client({ id = "n1", ip = "203.0.113.5" }).closed)
    -- another address is not affected
    assert.is_nil(t:client({ id = "m1", ip = "203.0.113.6" }).closed)
    t:advance(1000)
    assert.is_nil(t:client({ id = "n5", ip = "203.0.113.5" }).closed)
    t:close()
  end)

  it("is on by default (10/s, burst 100)", function()
    local t = game()
    local ok = 0
    for i = 1, 120 do
      local c = t:client { id = "d" .. i, ip = "203.0.113.9" }
      if not c.closed then ok = ok + 1 end
    end
    assert.are.equal(100, ok)
    t:close()
  end)
end)

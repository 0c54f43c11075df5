-- Registry references (issue 21): every luaL_ref of the host goes through
-- one wrapper (lua_vm.h: lr_ref_take/lr_ref_release) that counts the live
-- ones; a room's whole life (created, joined, timers armed, fired and
-- cancelled, hibernated and woken, evicted or disposed with the server)
-- leaves the count where it was.
local testing = require "lunaroom.testing"
local lr = require "lunaroom"
local core = require "lunaroom.core"

-- Connections are retained by their headless handles until those are
-- collected; count once the garbage is gone.
local function live()
  collectgarbage()
  collectgarbage()
  return core.refs_live()
end

local function def(extra)
  local d = {
    path = "refs-{n}",
    state = { count = lr.sync(0) },
    actions = {
      inc = function(r) r.count = r.count + 1 end,
      later = function(r, _, ms) r:timer(ms, function(room) room.count = room.count + 100 end) end,
      cancelled = function(r) r:cancel(r:timer(120000, function() end)) end,
    },
    requests = { ["GET /count"] = function(r) return { count = r.count } end },
  }
  for k, v in pairs(extra or {}) do d[k] = v end
  return lr.room(d)
end

describe("registry references", function()
  it("counts the references the host takes and releases", function()
    local base = live()
    local t = testing.room(def(), { id = "refs-1" })
    assert.is_true(live() > base, "a server and a room hold references")
    local a = t:client {}
    local with_client = live()
    a:send("later", 5000) -- a timer holds its callback
    assert.are.equal(with_client + 1, live())
    t:advance(5000)
    assert.are.equal(with_client, live())
    a:send("cancelled")
    assert.are.equal(with_client, live())
    t:close() -- with the client still connected
    assert.are.equal(base + 1, live(), "the client's handle still holds its connection")
    a = nil -- luacheck: ignore
    assert.are.equal(base, live())
  end)

  it("an evicted room, its closed clients and its timers leak none", function()
    local base = live()
    local t = testing.room(def(), { create = false, limits = { evict_after = 5000 } })
    for i = 1, 3 do
      local c = t:client { room = "refs-" .. i }
      c:send("inc")
      c:send("later", 1000)
      c:close()
    end
    local res = t:http("GET", "/count", { room = "refs-9" })
    assert.are.equal(200, res.status)
    t:advance(1000) -- the timers fire
    t:advance(60000) -- every room idle past evict_after: disposed
    assert.is_nil(next(t.srv.rooms))
    t:close()
    assert.are.equal(base, live())
  end)

  it("a room that hibernates and wakes again holds one instance reference", function()
    local base = live()
    local t = testing.room(def { hibernate = true, hibernateAfter = 1000 }, { id = "refs-1" })
    local a = t:client {}
    a:send("inc")
    local awake = live()
    t:advance(1000)
    assert.is_nil(t.room, "hibernated")
    assert.is_true(live() < awake, "the instance reference is released")
    a:send("inc") -- wakes it (core.room_rebind)
    assert.are.equal(2, t.room.count)
    assert.are.equal(awake, live())
    t:close() -- disposes the room with a client still connected
    a = nil -- luacheck: ignore (the handle retains its connection)
    assert.are.equal(base, live())
  end)
end)

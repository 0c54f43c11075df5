-- Hibernation and snapshot helpers (issue "Hibernation, snapshot helpers").
local testing = require "lunaroom.testing"
local lr = require "lunaroom"
local core = require "lunaroom.core"

local Player = lr.schema { x = lr.sync(0), online = lr.connected(), bag = lr.sync { items = lr.array {} } }

local function def(hibernate)
  return lr.room { path = "h", hibernate = hibernate, hibernateAfter = 1000,
    state = { players = lr.users(Player), count = 0 },
    actions = {
      inc = function(r) r.count = r.count + 1 end,
      move = function(_, p, v) p.x = v end,
      later = function(r) r:timer(5000, function(room) room.count = room.count + 100 end) end,
    },
    requests = { ["GET /count"] = function(r) return { count = r.count } end } }
end

local function script(t)
  local a = t:client { id = "a" }
  local b = t:client { id = "b" }
  a:send("inc"); b:send("move", 3)
  t:advance(1500)
  a:send("inc")
  t:advance(1500)
  b:send("move", 4)
  b:close()
  t:advance(1500)
  a:send("inc")
  return a
end

describe("hibernation", function()
  it("evicts an idle room, keeps sockets, and rebuilds it on the next event", function()
    local t = testing.room(def(true))
    local a = t:client { id = "a" }
    a:send("inc")
    local weak = setmetatable({ instance = t.room, root = rawget(t.room, "root") }, { __mode = "v" })
    collectgarbage("collect")
    local nodes_awake = core.live_nodes()
    testing.logs()
    t:advance(1000)
    collectgarbage("collect")
    assert.truthy(table.concat(testing.logs(), "\n"):find("room main/h hibernated after 1000 ms idle", 1, true))
    assert.is_nil(t.room)
    -- /metrics tells rooms in memory from hibernated ones
    local metrics = core.http(t.srv.h, "GET", "/metrics", "", {}, nil).body
    assert.truthy(metrics:find('lunaroom_rooms{state="memory"} 0', 1, true), metrics)
    assert.truthy(metrics:find('lunaroom_rooms{state="hibernated"} 1', 1, true), metrics)
    -- C: the state tree is freed (node allocation counter); Lua: the room
    -- instance and its proxies are garbage
    assert.is_true(core.live_nodes() <= nodes_awake - 4, "C nodes freed")
    assert.is_nil(weak.instance)
    assert.is_nil(weak.root)
    assert.is_nil(a.closed)
    a:clear()
    a:send("inc")
    assert.are.same({ '{"type":"sync","value":{"count":2}}' }, a.raw)
    local room = t.srv.rooms["main/h"]
    assert.are.equal(2, room.count)
    assert.is_true(room.players[a.publicId].online)
    t:close()
  end)

  it("sends exactly the same packets as a room that does not hibernate", function()
    local t1, t2 = testing.room(def(false)), testing.room(def(true))
    local a1, a2 = script(t1), script(t2)
    assert.are.same(a1.raw, a2.raw)
    t1:close(); t2:close()
  end)

  it("keeps timers: a timer set before eviction wakes the room", function()
    local t = testing.room(def(true))
    local a = t:client { id = "a" }
    a:send("later")
    t:advance(2000)
    assert.is_nil(t.srv.rooms["main/h"])
    a:clear()
    t:advance(3000)
    assert.are.same({ '{"type":"sync","value":{"count":100}}' }, a.raw)
    t:close()
  end)

  it("expires sessions of a hibernated room", function()
    local t = testing.room(lr.room { path = "h", hibernate = true, hibernateAfter = 1000, sessionExpiryTime = 10000,
      state = { players = lr.users(Player) } })
    local w = t:client { id = "w" }
    local c = t:client { id = "c" }
    local pid = c.publicId
    c:close()
    t:advance(5000)
    assert.is_nil(t.srv.rooms["main/h"])
    w:clear()
    t:advance(5000)
    assert.are.same({ '{"type":"sync","value":{"players":{"' .. pid .. '":"$delete"}}}' }, w.raw)
    t:close()
  end)

  it("stays in memory when its storage cannot be written", function()
    local t = testing.room(def(true))
    local a = t:client { id = "a" }
    a:send("inc")
    t:fail_storage(1000)
    a:send("inc")
    t:advance(1000)
    assert.is_not_nil(t.srv.rooms["main/h"])
    t:fail_storage(0)
    t:advance(32000)
    assert.is_nil(t.srv.rooms["main/h"])
    assert.are.equal(2, t.storage:get("state:count"))
    t:close()
  end)

  it("a wake that fails half-way closes the sockets (1011), sleeps again, and the next client wakes it", function()
    local runtime = require "lunaroom.runtime"
    local t = testing.room(def(true))
    local a = t:client { id = "a" }
    a:send("inc")
    a:send("later") -- a timer that fires while the room cannot wake
    t:advance(1000)
    assert.is_nil(t.srv.rooms["main/h"])
    local wake = runtime.wake
    runtime.wake = function(srv, ns, id)
      runtime.create_room(srv, ns, id, true, srv.sleeping[ns .. "/" .. id]) -- a rebuilt instance...
      error("storage exploded") -- ...then the failure
    end
    testing.logs()
    local ok, err = pcall(function()
      a:send("inc")
      assert.are.equal(1011, a.closed.code)
      local logs = table.concat(testing.logs(), "\n")
      assert.truthy(logs:find("room main/h: could not be rebuilt from storage", 1, true), logs)
      assert.is_nil(t.srv.rooms["main/h"]) -- the half-built instance is forgotten
      -- still asleep: requests are answered 503, sockets refused, timers dropped with a log line
      assert.are.equal(503, t:http("GET", "/count").status)
      -- (a request for a route the room does not have does not even try to wake it)
      assert.are.equal(404, t:http("GET", "/nothing").status)
      t:advance(5000)
      assert.truthy(table.concat(testing.logs(), "\n"):find("a timer was dropped", 1, true))
      local b = t:client { id = "b" }
      assert.are.equal(503, b.status)
    end)
    runtime.wake = wake
    assert(ok, err)
    -- storage was never touched: the next client wakes the room with its state
    local c = t:client { id = "c" }
    assert.is_nil(c.closed)
    assert.are.equal(1, c.packets[1].value.count)
    c:send("inc")
    assert.are.equal(2, t.srv.rooms["main/h"].count)
    t:close()
  end)
end)

describe("snapshot helpers", function()
  it("round-trip a nested user between rooms", function()
    local t = testing.room(def(false))
    local a = t:client { id = "a" }
    local b = t:client { id = "b" }
    local pa, pb = t.room.players[a.publicId], t.room.players[b.publicId]
    pa.x = 7
    pa.bag.items[1] = { id = "sword", n = 1 }
    local snap = lr.snapshot(pa)
    assert.are.same({ x = 7, bag = { items = { { id = "sword", n = 1 } } } }, snap) -- online is not persisted
    b:clear()
    lr.load(pb, snap)
    t:advance(0)
    assert.are.equal(7, pb.x)
    assert.are.equal("sword", pb.bag.items[1].id)
    assert.are.same(core.copy(pa.bag), core.copy(pb.bag))
    assert.are.equal(1, #b.raw) -- one patch for the load
    local room_snap = lr.snapshot(t.room)
    assert.are.equal(0, room_snap.count)
    assert.is_not_nil(room_snap.players[a.publicId])
    t:close()
  end)
end)

describe("hibernation across hot reloads", function()
  local reload = require "lunaroom.reload"
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. dir)
  local file = dir .. "/h.lua"
  local function write(extra)
    local f = assert(io.open(file, "w"))
    f:write(([[
local lr = require "lunaroom"
return lr.room { path = "h", hibernate = true, hibernateAfter = 1000,
  state = { count = 0, %s },
  actions = { inc = function(r) r.count = r.count + 1 end } }
]]):format(extra))
    f:close()
  end

  it("a room that slept through a reload wakes on the new code; its clients get new and removed fields", function()
    write('title = "old"')
    local t = testing.room(file)
    local old = rawget(t.room, "src").version
    local c = t:client { id = "a" }
    c:send("inc")
    t:advance(1500)
    assert.is_nil(t.room)
    write("level = 3")
    reload.run(t.srv, { file })
    testing.logs()
    c:clear()
    c:send("inc")
    assert.are.same({ '{"type":"sync","value":{"count":2,"level":3,"title":"$delete"}}' }, c.raw)
    assert.are.equal(3, t.room.level)
    assert.is_nil(t.room.title)
    assert.are_not.equal(old, rawget(t.room, "src").version)
    assert.matches("room main/h woke on version " .. old .. " and took version", table.concat(testing.logs(), "\n"))
    -- the delete compacted the stored state into one row
    assert.are.same({ count = 2, level = 3 }, t.storage:get("state:."))
    t:close()
  end)

  it("a room that slept through the deletion of its file wakes on the code it ran", function()
    write('title = "old"')
    local t = testing.room(file)
    local c = t:client { id = "a" }
    c:send("inc")
    t:advance(1500)
    assert.is_nil(t.room)
    os.remove(file)
    reload.run(t.srv, { file })
    assert.are.equal(0, #t.srv.defs)
    c:clear()
    c:send("inc")
    assert.is_nil(c.closed)
    assert.are.same({ '{"type":"sync","value":{"count":2}}' }, c.raw)
    assert.are.equal("old", t.room.title)
    t:close()
  end)
end)

-- Room-table exhaustion (issue 15, item 4): rooms are created only for what
-- a room serves, idle rooms are evicted and restored from storage, one
-- address cannot fill the room table, /metrics costs the same whatever the
-- number of rooms.
local testing = require "lunaroom.testing"
local lr = require "lunaroom"
local core = require "lunaroom.core"

local function rooms_live(t) return core.stats(t.srv.h).rooms + core.stats(t.srv.h).rooms_hibernated end

local function count_room(extra)
  local def = {
    path = "count-{n}",
    state = { count = lr.sync(0) },
    actions = {
      inc = function(r) r.count = r.count + 1 end,
      later = function(r, _, ms) r:timer(ms, function(room) room.count = room.count + 100 end) end,
      soon_cancelled = function(r) r:cancel(r:timer(120000, function() end)) end,
    },
    requests = {
      ["GET /count"] = function(r) return { count = r.count } end,
      ["POST /later"] = function(r) r:timer(120000, function(room) room.count = room.count + 100 end) end,
    },
  }
  for k, v in pairs(extra or {}) do def[k] = v end
  return lr.room(def)
end

describe("rooms are created only for what they serve", function()
  it("10,000 GETs to routes chat-N does not have create no room and touch no storage", function()
    local t = testing.room("rooms/chat.lua", { create = false })
    testing.logs()
    for i = 1, 10000 do
      local res = t:http("GET", "/x", { room = "chat-" .. i, ip = "10.0.0.1" })
      assert(res.status == 404, res.status)
    end
    assert.are.equal(0, rooms_live(t))
    assert.is_nil(next(t.srv.rooms))
    for _, i in ipairs { 1, 5000, 10000 } do
      assert.are.equal(0, core.store_count({ server = t.srv.h, ns = "main", id = "chat-" .. i }))
    end
    assert.is_nil(table.concat(testing.logs(), "\n"):find("created", 1, true))
    -- a route the room has does create it
    local t2 = testing.room(count_room(), { create = false })
    assert.are.equal(404, t2:http("GET", "/nothing", { room = "count-1" }).status)
    assert.are.equal(404, t2:http("POST", "/count", { room = "count-1" }).status)
    assert.are.equal(0, rooms_live(t2))
    assert.are.same({ count = 0 }, t2:http("GET", "/count", { room = "count-1" }).json)
    assert.are.equal(1, rooms_live(t2))
    -- /session-transfer without the shard secret: 401, no room
    assert.are.equal(401, t2:http("POST", "/session-transfer", { room = "count-2", body = {} }).status)
    assert.are.equal(1, rooms_live(t2))
    t:close(); t2:close()
  end)
end)

describe("idle rooms are evicted", function()
  it("after 60 s with no connection and no timer, and the next client restores its state", function()
    local t = testing.room(count_room(), { create = false, id = "count-1" })
    local c = t:client {}
    for _ = 1, 3 do c:send("inc") end
    c:close()
    testing.logs()
    t:advance(59999)
    assert.are.equal(1, rooms_live(t))
    t:advance(1)
    assert.are.equal(0, rooms_live(t))
    assert.is_nil(t.room)
    assert.truthy(table.concat(testing.logs(), "\n"):find("room main/count-1 evicted after 60000 ms idle", 1, true))
    assert.are.equal(3, t.storage:get("state:count"))
    local c2 = t:client {}
    assert.are.equal(3, c2.packets[1].value.count)
    c2:send("inc")
    assert.are.equal(4, t.room.count)
    t:close()
  end)

  it("a room created by a request alone is evicted too; evictAfter and --evict-after set the time", function()
    local t = testing.room(count_room(), { create = false, limits = { evict_after = 5000 } })
    t:http("GET", "/count", { room = "count-1" })
    local t2 = testing.room(count_room { evictAfter = 1000 }, { create = false })
    t2:http("GET", "/count", { room = "count-1" })
    t:advance(1000); t2:advance(1000)
    assert.are.same({ 1, 0 }, { rooms_live(t), rooms_live(t2) })
    t:advance(4000)
    assert.are.equal(0, rooms_live(t))
    -- evictAfter = 0: never
    local t3 = testing.room(count_room { evictAfter = 0 }, { create = false })
    t3:http("GET", "/count", { room = "count-1" })
    t3:advance(3600 * 1000)
    assert.are.equal(1, rooms_live(t3))
    t:close(); t2:close(); t3:close()
  end)

  it("every request or message starts the idle time again", function()
    local t = testing.room(count_room(), { create = false })
    t:http("GET", "/count", { room = "count-1" })
    for _ = 1, 5 do
      t:advance(50000)
      t:http("GET", "/count", { room = "count-1" })
    end
    assert.are.equal(1, rooms_live(t))
    t:advance(60000)
    assert.are.equal(0, rooms_live(t))
    t:close()
  end)

  it("a room with a connection is not evicted", function()
    local t = testing.room(count_room(), { id = "count-1" })
    local c = t:client {}
    t:advance(600000)
    assert.are.equal(1, rooms_live(t))
    c:send("inc")
    assert.are.equal(1, t.room.count)
    c:close()
    t:advance(60000)
    assert.are.equal(0, rooms_live(t))
    t:close()
  end)

  it("a room with a timer is not evicted until 60 s after its last timer", function()
    local t = testing.room(count_room(), { create = false, id = "count-1" })
    t:http("POST", "/later")
    t:advance(119999)
    assert.are.equal(1, rooms_live(t))
    t:advance(1) -- the timer fires (count 100, written)
    assert.are.equal(100, t.room.count)
    t:advance(59999)
    assert.are.equal(1, rooms_live(t))
    t:advance(1)
    assert.are.equal(0, rooms_live(t))
    assert.are.equal(100, t.storage:get("state:count"))
    -- a cancelled timer does not hold the room
    local c = t:client {}
    c:send("soon_cancelled")
    c:close()
    t:advance(60000)
    assert.are.equal(0, rooms_live(t))
    t:close()
  end)

  it("offline sessions hold the room until they expire; then it goes, users restored from storage", function()
    local Player = lr.schema { x = lr.sync(0), online = lr.connected() }
    local def = lr.room { path = "g-{n}", state = { players = lr.users(Player) },
      actions = { move = function(_, p, x) p.x = x end } }
    local t = testing.room(def, { create = false, id = "g-1" })
    local a = t:client { id = "sa" }
    a:send("move", 7)
    local pid = a.publicId
    a:close()
    t:advance(299999)
    assert.are.equal(1, rooms_live(t)) -- the session's expiry timer
    local b = t:client { id = "sb" }
    b:send("move", 9)
    local pidb = b.publicId
    b:close()
    t:advance(1) -- a's session expires
    assert.is_nil(t.room.players[pid])
    t:advance(299999)
    assert.are.equal(1, rooms_live(t))
    t:advance(1 + 60000)
    assert.are.equal(0, rooms_live(t))
    -- b expired as well; a new client finds the state storage holds
    local c = t:client { id = "sc" }
    assert.is_nil(c.packets[1].value.players[pidb])
    c:send("move", 3)
    assert.are.equal(3, t.room.players[c.publicId].x)
    t:close()
  end)

  it("a room whose storage cannot be written is not evicted (and goes once it can)", function()
    local t = testing.room(count_room { throttleStorage = 100000 }, { create = false, id = "count-1" })
    local c = t:client {}
    c:send("inc")
    c:close()
    t:fail_storage(1000)
    t:advance(60000)
    assert.are.equal(1, rooms_live(t))
    t:fail_storage(0)
    t:advance(60000)
    assert.are.equal(0, rooms_live(t))
    assert.are.equal(1, t.storage:get("state:count"))
    t:close()
  end)

  it("hibernated rooms without connections are evicted too", function()
    local t = testing.room(count_room { hibernate = true, hibernateAfter = 1000 }, { create = false, id = "count-1" })
    t:client({}):send("inc")
    local c = t:client {}
    c:close()
    -- the first client is still connected: the room hibernates, is not evicted
    t:advance(120000)
    assert.are.same({ rooms = 0, rooms_hibernated = 1 },
      { rooms = core.stats(t.srv.h).rooms, rooms_hibernated = core.stats(t.srv.h).rooms_hibernated })
    t:close()
    local t2 = testing.room(count_room { hibernate = true, hibernateAfter = 1000 }, { create = false, id = "count-1" })
    local d = t2:client {}
    d:send("inc")
    d:close()
    t2:advance(1000)
    assert.are.equal(1, core.stats(t2.srv.h).rooms_hibernated)
    t2:advance(59000)
    assert.are.same({ 0, 0 }, { core.stats(t2.srv.h).rooms, core.stats(t2.srv.h).rooms_hibernated })
    assert.are.equal(1, t2:client({}).packets[1].value.count)
    t2:close()
  end)
end)

describe("one address cannot fill the room table", function()
  it("rooms created per address are rate limited (token bucket), other addresses are not", function()
    local t = testing.room(count_room(), { create = false, limits = { room_rate = 1, room_burst = 5 } })
    testing.logs()
    for i = 1, 5 do
      local c = t:client { room = "count-" .. i, ip = "192.0.2.1" }
      assert.is_nil(c.closed, "room " .. i)
    end
    local refused = t:client { room = "count-6", ip = "192.0.2.1" }
    assert.are.equal(429, refused.status)
    assert.are.equal(429, t:http("GET", "/count", { room = "count-7", ip = "192.0.2.1" }).status)
    assert.truthy(table.concat(testing.logs(), "\n"):find("192.0.2.1 creates rooms faster than 1/s", 1, true))
    assert.are.equal(5, rooms_live(t))
    -- joining a room that exists costs nothing
    assert.is_nil(t:client({ room = "count-1", ip = "192.0.2.1" }).closed)
    -- another address is not affected; an IPv6 address counts by its /64
    assert.is_nil(t:client({ room = "count-8", ip = "192.0.2.2" }).closed)
    for i = 1, 5 do
      assert.is_nil(t:client({ room = "count-v6-" .. i, ip = "2001:db8:1:2::" .. i }).closed)
    end
    assert.are.equal(429, t:client({ room = "count-v6", ip = "2001:db8:1:2:ffff::1" }).status)
    assert.is_nil(t:client({ room = "count-v6", ip = "2001:db8:1:3::1" }).closed)
    -- a second later the bucket holds one more
    t:advance(1000)
    assert.is_nil(t:client({ room = "count-9", ip = "192.0.2.1" }).closed)
    assert.are.equal(429, t:client({ room = "count-10", ip = "192.0.2.1" }).status)
    t:close()
  end)

  it("is on by default (2 rooms/s, burst 20); in-process requests are not counted", function()
    local t = testing.room(count_room(), { create = false })
    local ok = 0
    for i = 1, 30 do
      if t:http("GET", "/count", { room = "count-" .. i, ip = "198.51.100.7" }).status == 200 then ok = ok + 1 end
    end
    assert.are.equal(20, ok)
    for i = 31, 60 do assert.are.equal(200, t:http("GET", "/count", { room = "count-" .. i }).status) end
    t:close()
  end)
end)

describe("/metrics", function()
  local function scrape(n)
    local t = testing.room(count_room(), { create = false })
    for i = 1, n do t:client({ room = "count-" .. i }):send("inc") end
    local body = core.http(t.srv.h, "GET", "/metrics", "", {}, nil).body
    t:close()
    local lines = 0
    for _ in body:gmatch("\n") do lines = lines + 1 end
    return lines, body
  end

  it("has as many lines for 2,000 rooms as for 10 (aggregated by room type)", function()
    local l10, b10 = scrape(10)
    local l2000, b2000 = scrape(2000)
    assert.are.equal(l10, l2000)
    assert.truthy(b10:find('lunaroom_rooms{state="memory"} 10', 1, true), b10)
    assert.truthy(b2000:find('lunaroom_rooms{state="memory"} 2000', 1, true))
    assert.truthy(b2000:find('lunaroom_room_info{path="count-{n}",version=""} 2000', 1, true), b2000)
    assert.truthy(b2000:find('lunaroom_actions_total{room="count-{n}"} 2000', 1, true))
  end)
end)

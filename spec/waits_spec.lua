-- Handlers that wait (lunaroom.io.sleep / request in room handlers;
-- lunaroom.tasks), on the virtual clock with the fake HTTP service of
-- lunaroom.testing. README "Waiting for outside services".
local testing = require "lunaroom.testing"

local function last_error(c)
  local p = c:last("error")
  return p and p.value
end

-- A shop: buy checks the purchase with a payment service; the count before
-- the wait is committed when it waits.
local function shop(extra)
  local def = {
    path = "shop",
    state = { count = 0, bought = {}, trail = {} },
    actions = {
      buy = function(room, _, v)
        local io = require "lunaroom.io"
        room.count = room.count + 1 -- before the wait: committed when it waits
        local res = io.request("POST", "http://pay.test/check", { body = v.item })
        room.trail[#room.trail + 1] = "after " .. tostring(v.item)
        if res.status ~= 200 then error("payment refused: " .. res.status) end
        room.bought[v.item] = true
      end,
      nap = function(room, _, v)
        require("lunaroom.io").sleep(v.ms)
        room.trail[#room.trail + 1] = "nap " .. v.ms
      end,
      mark = function(room, _, v) room.trail[#room.trail + 1] = "mark " .. tostring(v) end,
      spin = function(room)
        require("lunaroom.io").sleep(1)
        room.count = room.count + 100
        while true do end
      end,
    },
  }
  for k, v in pairs(extra or {}) do def[k] = v end
  return def
end

local function log_of(t) return table.concat(t.room.trail, ",") end

describe("handlers that wait", function()
  it("a handler that never waits answers at once (nothing changes for it)", function()
    local t = testing.room(shop())
    local c = t:client { id = "a" }
    c:send("mark", 1)
    assert.are.equal("mark 1", log_of(t))
    assert.are.equal(0, t:waiting())
    t:close()
  end)

  it("an action waits for an HTTP answer on the virtual clock; writes before the wait are committed", function()
    local t = testing.room(shop())
    t:http_service(function(req)
      assert.are.equal("POST", req.method)
      return { status = 200, body = "ok" }, 500
    end)
    local c = t:client { id = "a" }
    local other = t:client { id = "b" }
    c:clear(); other:clear()
    c:send("buy", { item = "sword" })
    assert.are.equal(1, t:waiting())
    assert.are.equal(1, t.room.count) -- committed at the wait...
    assert.is_nil(t.room.bought.sword)
    assert.are.same({ count = 1 }, other:last("sync").value) -- ...and synced
    t:advance(499)
    assert.is_nil(t.room.bought.sword)
    t:advance(1)
    assert.is_true(t.room.bought.sword)
    assert.are.equal(0, t:waiting())
    assert.is_nil(last_error(c))
    assert.are.same("http://pay.test/check", t.http_requests[1].url)
    t:close()
  end)

  it("an error after a wait rolls back only the writes since the wait; the sender gets 'handler'", function()
    local t = testing.room(shop())
    t:http_service({ ["POST http://pay.test/check"] = { status = 402 } })
    local c = t:client { id = "a" }
    c:send("buy", { item = "sword" })
    t:advance(0)
    assert.are.equal(1, t.room.count) -- the first segment stays
    assert.are.equal("", log_of(t)) -- the second is rolled back
    local e = last_error(c)
    assert.are.equal("handler", e.code)
    assert.are.equal("buy", e.action)
    assert.truthy(e.message:find("payment refused: 402", 1, true), e.message)
    t:close()
  end)

  it("the budget applies per segment: an overrun after a wait rolls back that segment", function()
    local t = testing.room(shop { budget = 200000 })
    local c = t:client { id = "a" }
    c:send("spin")
    assert.is_nil(last_error(c))
    t:advance(1)
    assert.are.equal(0, t.room.count) -- +100 rolled back
    local e = last_error(c)
    assert.are.equal("handler", e.code)
    assert.truthy(e.message:find("budget", 1, true), e.message)
    t:close()
  end)

  it("other events of the room run while one waits; one connection's actions run in order", function()
    local t = testing.room(shop())
    local a = t:client { id = "a" }
    local b = t:client { id = "b" }
    a:send("nap", { ms = 100 })
    a:send("mark", "a2") -- queued behind the nap
    b:send("mark", "b1") -- another connection: runs now
    assert.are.equal("mark b1", log_of(t))
    t:advance(100)
    assert.are.equal("mark b1,nap 100,mark a2", log_of(t))
    -- a queued action that waits again holds the ones after it
    a:send("nap", { ms = 10 })
    a:send("nap", { ms = 5 })
    a:send("mark", "a3")
    t:advance(10)
    assert.are.equal("mark b1,nap 100,mark a2,nap 10", log_of(t))
    t:advance(5)
    assert.are.equal("mark b1,nap 100,mark a2,nap 10,nap 5,mark a3", log_of(t))
    t:close()
  end)

  it("a queued action's error reaches its sender", function()
    local t = testing.room(shop())
    local a = t:client { id = "a" }
    a:send("nap", { ms = 10 })
    a:send("nope")
    assert.is_nil(last_error(a))
    t:advance(10)
    assert.are.equal("unknown_action", last_error(a).code)
    t:close()
  end)

  it("a connection whose onJoin waits is not joined; its frames run in order after the join", function()
    local joins = 0
    local t = testing.room(shop {
      onJoin = function(room, user, conn)
        joins = joins + 1
        require("lunaroom.io").sleep(50)
        room.trail[#room.trail + 1] = "joined " .. conn.id
      end,
    })
    local c = t:client { id = "a" }
    c:send("mark", "early1")
    c:send("mark", "early2")
    assert.are.equal(1, joins)
    assert.is_nil(c:last("sync"))
    assert.are.equal("", log_of(t))
    t:advance(50)
    assert.truthy(c:last("sync"), "snapshot after onJoin")
    assert.are.equal("joined " .. c.conn.id .. ",mark early1,mark early2", log_of(t))
    t:close()
  end)

  it("a room guard that waits refuses or admits after its answer", function()
    local t = testing.room(shop {
      guards = { function(conn, ctx)
        if not ctx or not ctx.request then return true end -- on actions: admitted
        local tok = ctx.request.query.token
        local res = require("lunaroom.io").request("GET", "http://auth.test/" .. tostring(tok))
        return res.status == 200
      end },
    })
    t:http_service({ ["GET http://auth.test/good"] = 200, ["GET http://auth.test/bad"] = 403 })
    local ok = t:client { id = "a", query = { token = "good" } }
    local bad = t:client { id = "b", query = { token = "bad" } }
    ok:send("mark", "x")
    assert.is_nil(ok:last("sync"))
    assert.is_nil(bad.closed)
    t:advance(0)
    assert.truthy(ok:last("sync"))
    assert.are.equal("mark x", log_of(t))
    assert.are.equal(4001, bad.closed.code)
    t:close()
  end)

  it("a connection that closes while its onJoin waits is abandoned cleanly", function()
    local left = 0
    local t = testing.room(shop {
      onJoin = function() require("lunaroom.io").sleep(50) end,
      onLeave = function() left = left + 1 end,
    })
    local c = t:client { id = "a" }
    c:send("mark", "never")
    c:close()
    t:advance(50)
    assert.are.equal("", log_of(t))
    assert.are.equal(1, left) -- onLeave after onJoin finished, once
    assert.are.equal(0, t:waiting())
    assert.are.equal(0, #t.room:connections())
    t:close()
  end)

  it("a wait times out (waits.timeout) with an error in the handler", function()
    local t = testing.room(shop { waits = { timeout = 1000 } })
    t:http_service(function() return nil end) -- never answers
    local c = t:client { id = "a" }
    c:send("buy", { item = "x" })
    t:advance(999)
    assert.is_nil(last_error(c))
    t:advance(1)
    local e = last_error(c)
    assert.are.equal("handler", e.code)
    assert.truthy(e.message:find("no answer after 1000 ms (timeout)", 1, true), e.message)
    assert.are.equal(0, t:waiting())
    -- a late answer is ignored
    t:http_pending()[1]:respond(200)
    t:advance(1)
    assert.is_nil(t.room.bought.x)
    t:close()
  end)

  it("a handler has a total time limit (waits.handlerTimeout)", function()
    local t = testing.room(shop { waits = { handlerTimeout = 300 } })
    local c = t:client { id = "a" }
    for _ = 1, 1 do c:send("nap", { ms = 200 }) end
    c:send("nap", { ms = 200 })
    t:advance(200) -- the first finished; the second starts
    t:advance(100)
    assert.are.equal("nap 200", log_of(t))
    t:advance(100) -- the second finishes in time
    assert.are.equal("nap 200,nap 200", log_of(t))
    local t2 = testing.room(shop {
      waits = { handlerTimeout = 300 },
      actions = { long = function(room)
        local io = require "lunaroom.io"
        for i = 1, 10 do io.sleep(100); room.count = i end
      end },
    })
    local c2 = t2:client { id = "a" }
    c2:send("long")
    t2:advance(1000)
    assert.are.equal(2, t2.room.count) -- segments 1 and 2 committed; stopped at 300 ms
    local e = last_error(c2)
    assert.are.equal("handler", e.code)
    assert.truthy(e.message:find("time limit", 1, true), e.message)
    assert.are.equal(0, t2:waiting())
    t:close(); t2:close()
  end)

  it("a room caps its waiting handlers (waits.max): the others get 'busy'", function()
    local t = testing.room(shop { waits = { max = 3 } })
    local cs = {}
    for i = 1, 5 do
      cs[i] = t:client { id = "c" .. i }
      cs[i]:send("nap", { ms = 10 })
    end
    assert.are.equal(3, t:waiting())
    for i = 4, 5 do
      local e = last_error(cs[i])
      assert.are.equal("busy", e.code)
      assert.truthy(e.message:find("waits.max", 1, true), e.message)
    end
    t:advance(10)
    assert.are.equal("nap 10,nap 10,nap 10", log_of(t))
    assert.are.equal(0, t:waiting())
    t:close()
  end)

  it("the process caps its waiting handlers (LUNAROOM_MAX_WAITING)", function()
    local t = testing.room(shop(), { env = { LUNAROOM_MAX_WAITING = "2" } })
    local cs = {}
    for i = 1, 3 do
      cs[i] = t:client { id = "c" .. i }
      cs[i]:send("nap", { ms = 10 })
    end
    assert.are.equal(2, t:waiting(true))
    assert.are.equal("busy", last_error(cs[3]).code)
    t:close()
  end)

  it("a room does not hibernate while a handler waits", function()
    local t = testing.room(shop { hibernate = true, hibernateAfter = 100 })
    local c = t:client { id = "a" }
    c:send("nap", { ms = 1000 })
    t:advance(500)
    assert.truthy(t.room, "still in memory")
    t:advance(500)
    assert.are.equal("nap 1000", log_of(t))
    t:advance(200)
    assert.is_nil(t.room) -- hibernated once idle
    t:close()
  end)

  it("onReload may wait", function()
    local src = [[
      local lr = require "lunaroom"
      return lr.room{ path = "r", state = { trail = {} }, actions = { go = function() end },
        onReload = function(room) require("lunaroom.io").sleep(10); room.trail[#room.trail + 1] = "%s" end }
    ]]
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local function write(v)
      local f = assert(io.open(dir .. "/r.lua", "w"))
      f:write(src:format(v))
      f:close()
      return dir .. "/r.lua"
    end
    local t = testing.room(write("v1"))
    assert.is_true((t:reload(write("v2"))))
    assert.are.equal("", table.concat(t.room.trail, ","))
    t:advance(10)
    assert.are.equal("v2", table.concat(t.room.trail, ","))
    t:close()
  end)

  it("a reload lets a waiting handler finish on the old code", function()
    local src = [[
      local lr = require "lunaroom"
      return lr.room{ path = "r", state = { trail = {} }, actions = {
        go = function(room) require("lunaroom.io").sleep(100); room.trail[#room.trail + 1] = "%s" end,
      } }
    ]]
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local function write(v)
      local f = assert(io.open(dir .. "/r.lua", "w"))
      f:write(src:format(v))
      f:close()
      return dir .. "/r.lua"
    end
    local t = testing.room(write("old"))
    local c = t:client { id = "a" }
    c:send("go")
    assert.is_true((t:reload(write("new"))))
    t:advance(100)
    c:send("go")
    t:advance(100)
    assert.are.equal("old,new", table.concat(t.room.trail, ","))
    t:close()
  end)

  it("dispose cancels the room's waiting handlers", function()
    local t = testing.room(shop())
    local c = t:client { id = "a" }
    c:send("nap", { ms = 100 })
    assert.are.equal(1, t:waiting())
    testing.logs()
    t.room:dispose()
    assert.are.equal(0, t:waiting(true))
    assert.truthy(table.concat(testing.logs(), "\n"):find("handler(s) waited: cancelled", 1, true))
    t:advance(200) -- nothing resumes
    t:close()
  end)

  it("timers and onCreate may wait", function()
    local t = testing.room(shop {
      onCreate = function(room)
        require("lunaroom.io").sleep(10)
        room.trail[#room.trail + 1] = "created"
        room:timer(5, function(r)
          require("lunaroom.io").sleep(5)
          r.trail[#r.trail + 1] = "timer"
        end)
      end,
    })
    assert.are.equal("", log_of(t))
    t:advance(10)
    assert.are.equal("created", log_of(t))
    t:advance(10)
    assert.are.equal("created,timer", log_of(t))
    t:close()
  end)

  it("an HTTP route and its guard may wait; the answer follows, with the writes stored first", function()
    local t = testing.room(shop {
      requests = {
        ["GET /price"] = {
          guards = { function(_, req)
            local res = require("lunaroom.io").request("GET", "http://auth.test/" .. (req.query.key or ""))
            return res.status == 200
          end },
          run = function(room)
            local res = require("lunaroom.io").request("GET", "http://pay.test/price")
            room.count = room.count + 1
            return { price = tonumber(res.body), count = room.count }
          end,
        },
      },
    })
    t:http_service({ ["GET http://auth.test/ok"] = 200, ["GET http://auth.test/no"] = 401,
      ["GET http://pay.test/price"] = function() return { status = 200, body = "42" }, 20 end })
    local t0 = t:now()
    local res = t:http("GET", "/price?key=ok")
    assert.are.equal(200, res.status)
    assert.are.same({ price = 42, count = 1 }, res.json)
    assert.are.equal(20, t:now() - t0) -- the answer came with the service's 20 ms
    assert.are.equal(1, t.storage:get("state:count"))
    assert.are.equal(403, t:http("GET", "/price?key=no").status)
    t:close()
  end)

  it("room-to-room fetch waits for a target route that waits", function()
    local t = testing.room(shop {
      actions = { ask = function(room)
        local res = room.parties.main:get("bank"):fetch("/balance")
        room.trail[#room.trail + 1] = "balance " .. res.json().balance
      end },
    }, { rooms = { { path = "bank", requests = { ["GET /balance"] = function()
      require("lunaroom.io").sleep(30)
      return { balance = 7 }
    end } } } })
    local c = t:client { id = "a" }
    c:send("ask")
    assert.are.equal("", log_of(t))
    t:advance(40)
    assert.are.equal("balance 7", log_of(t))
    assert.is_nil(last_error(c))
    t:close()
  end)

  it("the README example: a profile loaded in onJoin, a purchase checked in an action", function()
    local t = testing.room("spec/fixtures/shop_waits.lua", { id = "shop-1" })
    t:http_service(function(req)
      if req.url:find("^https://profiles.example.com/v1/") then
        return { status = 200, body = { name = "ann", coins = 5 } }, 30
      end
      local receipt = testing.decode(req.body).receipt
      return receipt == "good" and 200 or 402, 100
    end)
    local c = t:client { id = "ann" }
    assert.is_nil(c:last("sync")) -- joining: the profile is loading
    t:advance(30)
    local pid = c.publicId
    assert.are.equal("ann", c:last("sync").value.players[pid].name)
    c:send("buy", { receipt = "good" })
    t:advance(100)
    assert.are.equal(1, t.room.players[pid].swords)
    c:send("buy", { receipt = "forged" })
    t:advance(100)
    assert.are.equal(1, t.room.players[pid].swords) -- rolled back after the wait
    assert.are.equal(2, t.room.sales) -- committed before it
    local e = c:last("error").value
    assert.are.same({ "handler", "buy" }, { e.code, e.action })
    assert.truthy(e.message:find("payment refused (402)", 1, true), e.message)
    t:close()
  end)

  it("a handler that yields bad wait arguments itself gets a clear error, the room goes on", function()
    local t = testing.room(shop {
      actions = {
        bad = function() -- the wait is refused: resumed with (lunaroom.io.ERROR, why)
          local _, why = coroutine.yield("lunaroom.request", 1, {}, nil)
          error(why, 0)
        end,
        inf = function(room) require("lunaroom.io").sleep(math.huge); room.count = 1 end,
        other = function() coroutine.yield("something") end,
        mark = function(room, _, v) room.trail[#room.trail + 1] = v end,
      },
      waits = { handlerTimeout = 100 },
    })
    local c = t:client { id = "a" }
    c:send("bad")
    assert.truthy(last_error(c).message:find("method and url are strings", 1, true))
    c:send("other")
    assert.truthy(last_error(c).message:find("yielded outside lunaroom.io", 1, true))
    c:send("inf")
    t:advance(100)
    assert.truthy(last_error(c).message:find("time limit", 1, true))
    c:send("mark", "ok")
    assert.are.equal("ok", log_of(t))
    t:close()
  end)

  it("a room file that never mentions lunaroom.io nor fetch calls its handlers directly (no coroutine)", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local function room(name, body)
      local f = assert(io.open(dir .. "/" .. name .. ".lua", "w"))
      f:write(([[
        local lr = require "lunaroom"
        return lr.room{ path = "%s", state = { n = 0 }, actions = { go = function(room) %s end } }
      ]]):format(name, body))
      f:close()
      return dir .. "/" .. name .. ".lua"
    end
    -- the module name built at run time: the file never says lunaroom.io
    local plain = testing.room(room("plain", [[
      room.n = 1
      local ok, err = pcall(function() return require("lunaroom." .. "i" .. "o").sleep(1) end)
      room.n = ok and 2 or (tostring(err):find("cannot wait here", 1, true) and 3 or 4)
    ]]))
    assert.is_true(plain.def.direct)
    local c = plain:client { id = "a" }
    c:send("go")
    assert.are.equal(3, plain.room.n)
    plain:close()
    local waits = testing.room(room("waits", [[require("lunaroom.io").sleep(5); room.n = 5]]))
    assert.is_false(waits.def.direct)
    c = waits:client { id = "a" }
    c:send("go")
    waits:advance(5)
    assert.are.equal(5, waits.room.n)
    waits:close()
  end)

  it("cannot wait where nothing can be suspended (outside a handler)", function()
    assert.has_error(function() require("lunaroom.io").sleep(1) end)
  end)
end)

-- Rejected input and failing handlers (protocol.md Part 1 row 5; design.md §4).
-- Documented rule: a handler that fails is rolled back completely; no write it
-- made before the error is kept or sent.
local testing = require "lunaroom.testing"
local lr = require "lunaroom"

local function room(def)
  def.path = def.path or "r"
  return testing.room(lr.room(def))
end

describe("rejected input", function()
  local t, c
  before_each(function()
    t = room {
      rateLimit = { rate = 0, burst = 0 },
      state = { n = 0, cfg = lr.sync { a = 1 } },
      guards = { function(conn, value) return value ~= "forbidden" end },
      actions = {
        inc = function(r) r.n = r.n + 1 end,
        admin = { guards = { function(conn) return conn.state.admin == true end }, run = function(r) r.n = 100 end },
        typed = { schema = lr.v.object { x = lr.v.number():max(1000) }, run = function(r, _, v) r.n = v.x end },
      },
    }
    c = t:client { id = "s" }
    c:clear()
    testing.logs()
  end)
  after_each(function() t:close() end)

  local function last_error() return c:last("error").value end

  it("answers invalid JSON with invalid_packet and changes nothing", function()
    c:send_raw("{not json")
    assert.are.equal("invalid_packet", last_error().code)
    assert.are.equal(0, t.room.n)
  end)

  it("answers a packet without a string action with invalid_packet", function()
    for _, raw in ipairs { "[1,2]", '"x"', "{}", '{"action":3}', "null" } do
      c:clear()
      c:send_raw(raw)
      assert.are.equal("invalid_packet", last_error().code, raw)
    end
  end)

  it("answers an unknown action with unknown_action", function()
    c:send("nope", 1)
    assert.are.same({ code = "unknown_action", action = "nope", message = "unknown action 'nope'" }, last_error())
  end)

  it("answers a room guard rejection with guard", function()
    c:send("inc", "forbidden")
    assert.are.equal("guard", last_error().code)
    assert.are.equal(0, t.room.n)
  end)

  it("answers an action guard rejection with guard", function()
    c:send("admin")
    assert.are.equal("guard", last_error().code)
    assert.are.equal(0, t.room.n)
  end)

  it("answers a schema failure with validation and the path", function()
    c:send("typed", { x = 5000 })
    assert.are.same({ code = "validation", action = "typed", message = "x: must be <= 1000" }, last_error())
    assert.are.equal(0, t.room.n)
  end)

  it("changes nothing after 1,000 malformed packets", function()
    local bad = { "{", "[]", '{"action":null}', '{"action":"typed","value":{"x":"a"}}', "\255\254", "1e999999" }
    for i = 1, 1000 do c:send_raw(bad[i % #bad + 1]) end
    assert.are.equal(0, t.room.n)
    assert.are.equal(1, t.room.cfg.a)
    c:send("inc")
    assert.are.equal(1, t.room.n)
  end)
end)

describe("failing handlers", function()
  it("roll back every write the handler made and answer 'handler'", function()
    local t = room {
      state = { n = 0, cfg = lr.sync { a = 1, list = lr.array { 1 } }, players = lr.users(lr.schema { x = 0 }) },
      actions = {
        boom = function(r, p)
          r.n = 5
          r.cfg.a = nil
          r.cfg.b = { deep = true }
          r.cfg.list[2] = 2
          p.x = 9
          error("boom")
        end,
      },
    }
    local c = t:client { id = "s" }
    local before = c.packets[1].value
    c:clear()
    testing.logs()
    c:send("boom")
    local e = c:last("error").value
    assert.are.equal("handler", e.code)
    assert.are.equal("boom", e.action)
    assert.truthy(e.message:find("boom", 1, true))
    assert.are.equal(0, t.room.n)
    assert.are.equal(1, t.room.cfg.a)
    assert.is_nil(t.room.cfg.b)
    assert.are.equal(1, #t.room.cfg.list)
    assert.are.equal(0, t.room.players[c.publicId].x)
    -- no sync packet carries a value the handler wrote
    for _, p in ipairs(c.packets) do
      if p.type == "sync" then
        assert.is_nil(p.value.n == 5 or nil)
        assert.is_nil(p.value.cfg and p.value.cfg.b)
      end
    end
    -- the log line names the room, the action and has a traceback
    local logs = table.concat(testing.logs(), "\n")
    assert.truthy(logs:find("room main/r: action boom failed", 1, true), logs)
    assert.truthy(logs:find("stack traceback", 1, true))
    -- a later write still works and is the only thing sent
    t:close()
  end)

  it("stop a runaway handler and keep serving", function()
    local t = room { budget = 2000000, state = { n = 0 },
      actions = {
        spin = function(r) r.n = 1; while true do end end,
        sneaky = function(r) while true do pcall(function() while true do end end) end end,
        inc = function(r) r.n = r.n + 1 end,
      } }
    local c = t:client()
    c:clear()
    c:send("spin")
    assert.are.same({ code = "handler", action = "spin", message = "instruction budget exceeded" }, c:last("error").value)
    c:send("sneaky")
    assert.are.equal("instruction budget exceeded", c:last("error").value.message)
    assert.are.equal(0, t.room.n)
    c:send("inc")
    assert.are.equal(1, t.room.n)
    t:close()
  end)

  it("a failing onJoin closes the socket with 1011 and the room keeps serving", function()
    local t = room { state = { players = lr.users(lr.schema { x = 0 }) },
      onJoin = function(_, _, conn) if conn.sessionId == "bad" then error("nope") end end }
    local bad = t:client { id = "bad" }
    assert.are.equal(1011, bad.closed.code)
    local good = t:client { id = "good" }
    assert.is_nil(good.closed)
    assert.is_string(good.packets[1].value.pId)
    t:close()
  end)

  it("a room guard refusing a connection closes it with 4001", function()
    local t = room { state = {}, guards = { function(conn, ctx)
      if ctx.request then return ctx.request.query.token == "ok" end
      return true
    end } }
    assert.are.equal(4001, t:client { query = { token = "no" } }.closed.code)
    assert.is_nil(t:client { query = { token = "ok" } }.closed)
    t:close()
  end)
end)

describe("unhandled actions", function()
  it("receive {action, value} when no action matches, behind their guards", function()
    local got = {}
    local t = room { state = {},
      actions = { known = function() got[#got + 1] = "known" end },
      unhandled = { guards = { function(_, msg) return msg.action ~= "blocked" end },
        run = function(_, _, msg) got[#got + 1] = msg.action .. "=" .. tostring(msg.value) end } }
    local c = t:client()
    c:send("known"); c:send("other", 5); c:send("blocked", 1)
    assert.are.same({ "known", "other=5" }, got)
    assert.are.equal("guard", c:last("error").value.code)
    t:close()
  end)
end)

describe("rate limit", function()
  it("drops messages over the bucket with rate_limit, refills with time, closes a flood with 4008", function()
    local t = room { rateLimit = { rate = 10, burst = 5 }, state = { n = 0 },
      actions = { inc = function(r) r.n = r.n + 1 end } }
    local c = t:client()
    for _ = 1, 8 do c:send("inc") end
    assert.are.equal(5, t.room.n)
    assert.are.equal("rate_limit", c:last("error").value.code)
    t:advance(500) -- 5 more tokens
    for _ = 1, 5 do c:send("inc") end
    assert.are.equal(10, t.room.n)
    local other = t:client()
    for _ = 1, 20 do if not c.closed then c:send("inc") end end
    assert.are.same({ code = 4008, reason = "rate limit" }, c.closed)
    other:send("inc") -- another connection is not affected
    assert.are.equal(11, t.room.n)
    t:close()
  end)

  it("closes a flood whose messages arrive spread out (one gets through per refill)", function()
    local t = room { rateLimit = { rate = 10, burst = 5 }, state = { n = 0 },
      actions = { inc = function(r) r.n = r.n + 1 end } }
    local c = t:client()
    for _ = 1, 5 do c:send("inc") end
    for _ = 1, 20 do
      if c.closed then break end
      t:advance(100) -- one token
      for _ = 1, 3 do if not c.closed then c:send("inc") end end
    end
    assert.are.same({ code = 4008, reason = "rate limit" }, c.closed)
    -- a client that slows down is forgiven
    local d = t:client()
    for _ = 1, 7 do d:send("inc") end -- 2 dropped
    t:advance(300)
    for _ = 1, 3 do d:send("inc") end
    t:advance(1000)
    for _ = 1, 5 do d:send("inc") end
    assert.is_nil(d.closed)
    t:close()
  end)
end)

describe("room-to-room fetch", function()
  it("reaches another room's route in the same process", function()
    local got
    local t = testing.room(lr.room { path = "caller", actions = {
      ask = function(r) local res = r.parties.main:get("demo"):fetch("/count"); got = { res.status, res.json().count } end,
    } }, { rooms = { "rooms/counter.lua" } })
    local c = t:client()
    c:send("ask")
    assert.are.same({ 200, 0 }, got)
    t:close()
  end)
end)

describe("Lua memory limit", function()
  it("a handler that allocates past the limit fails cleanly and the room goes on", function()
    local core = require "lunaroom.core"
    local t = room { state = { n = 0 }, actions = {
      hog = function(r)
        r.n = 1
        local t = {}
        for i = 1, 1e7 do t[i] = string.rep("x", 64) .. i end
      end,
      inc = function(r) r.n = r.n + 1 end,
    } }
    local c = t:client()
    c:clear()
    collectgarbage("collect")
    core.set_memory_limit(core.memory() + 8 * 1024 * 1024)
    c:send("hog")
    core.set_memory_limit(0)
    collectgarbage("collect")
    local e = c:last("error").value
    assert.are.equal("handler", e.code)
    assert.truthy(e.message:find("memory limit exceeded (the Lua heap is full)", 1, true), e.message)
    assert.are.equal(0, t.room.n)
    c:send("inc")
    assert.are.equal(1, t.room.n)
    t:close()
  end)
end)

describe("nested calls", function()
  it("a failing handler also rolls back what a nested hook (onLeave, routes) wrote", function()
    local t = room { state = { n = 0 },
      requests = { ["POST /bump"] = function(r) r.n = r.n + 10 end },
      actions = {
        both = function(r)
          local res = r.parties.main:get("r"):fetch("/bump", { method = "POST" })
          assert(res.status == 200)
          error("after the nested call")
        end,
      } }
    local c = t:client()
    c:send("both")
    assert.are.equal("handler", c:last("error").value.code)
    assert.are.equal(0, t.room.n)
    t:close()
  end)
end)

describe("per-room input limits", function()
  it("frame size, JSON depth and element count", function()
    local t = room { limits = { frame = 200, depth = 3, elements = 20 }, state = { n = 0 },
      actions = { inc = function(r) r.n = r.n + 1 end } }
    local a = t:client()
    a:send_raw('{"action":"inc","value":{"a":{"b":{"c":1}}}}')
    assert.truthy(a:last("error").value.message:find("deeper than 3", 1, true))
    a:send("inc", { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20 })
    assert.are.equal("invalid_packet", a:last("error").value.code)
    a:send("inc", { 1, 2 })
    assert.are.equal(1, t.room.n)
    a:send("inc", string.rep("x", 300))
    assert.are.same({ code = 1009, reason = "message too big" }, a.closed)
    assert.are.equal(1, t.room.n)
    t:close()
  end)
end)

-- The join path does no work a room does not ask for (issue 19: "no
-- per-join Lua garbage beyond the session itself"): a room without room
-- guards runs no guard task, and a room without guards or onJoin builds no
-- connection context (ctx.request: the URL string, the request table).
-- Garbage is measured with the collector stopped (collectgarbage("count")
-- before and after N joins, then what a full collection frees); headless
-- joins are deterministic, so the figures only move when the code does.
local testing = require "lunaroom.testing"
local tasks = require "lunaroom.tasks"
local lr = require "lunaroom"

local function counter(extra)
  local def = {
    path = "c-{id}",
    state = { count = lr.sync(0) },
    actions = { increment = function(room) room.count = room.count + 1 end },
  }
  for k, v in pairs(extra or {}) do def[k] = v end
  return lr.room(def)
end

-- Bytes of Lua garbage one join leaves (the session itself is not garbage).
local function garbage_per_join(def)
  local t = testing.room(def)
  local warm = {}
  for i = 1, 10 do warm[i] = t:client { id = "w" .. i } end
  local n = 100
  collectgarbage("collect")
  collectgarbage("collect")
  collectgarbage("stop")
  local c0 = collectgarbage("count")
  local cs = {}
  for i = 1, n do cs[i] = t:client { id = "s" .. i } end
  local c1 = collectgarbage("count")
  collectgarbage("restart")
  collectgarbage("collect")
  collectgarbage("collect")
  local c2 = collectgarbage("count")
  assert.is_true(c2 >= c0) -- the sessions stay
  for i = 1, n do assert.are.equal(0, cs[i].packets[1].value.count) end
  return (c1 - c2) * 1024 / n
end

describe("join hot path", function()
  it("a room without room guards runs no guard task per join", function()
    local real, whats = tasks.run, {}
    tasks.run = function(srv, room, what, ...)
      whats[#whats + 1] = what
      return real(srv, room, what, ...)
    end
    local ok, err = pcall(function()
      local t = testing.room(counter())
      for i = 1, 5 do t:client { id = "s" .. i } end
    end)
    tasks.run = real
    assert(ok, err)
    for _, w in ipairs(whats) do assert.are_not.equal("guard", w) end
  end)

  it("a room with a room guard still runs it, with the connection context", function()
    local seen
    local t = testing.room(counter {
      guards = { function(_conn, ctx) seen = ctx.request; return ctx.request.query.id ~= "bad" end },
    })
    local c = t:client { id = "good" }
    assert.are.equal(0, c.packets[1].value.count)
    assert.are.equal("good", seen.query.id)
    assert.truthy(seen.url:find("id=good", 1, true))
    local bad = t:client { id = "bad" }
    assert.are.equal(4001, bad.closed.code)
  end)

  it("a room given onJoin by a reload sees the request headers on the next join", function()
    -- Rooms without room guards or onJoin get no request headers from the
    -- host on a join (room config leanConnect); a reload that adds onJoin
    -- must turn them back on.
    local src = [[
      local lr = require "lunaroom"
      return lr.room {
        path = "c-{id}",
        state = { count = lr.sync(0), seen = lr.sync("") },
        %s
      }
    ]]
    local file = os.tmpname()
    local f = assert(io.open(file, "w"))
    f:write(src:format(""))
    f:close()
    local t = testing.room(file)
    os.remove(file)
    t:client { id = "a", headers = { ["x-test"] = "1" } }
    assert.is_true(t:reload(src:format([[onJoin = function(room, _user, _conn, ctx)
      room.seen = ctx.request.headers["x-test"] or "none"
    end,]])))
    local c = t:client { id = "b", headers = { ["x-test"] = "2" } }
    assert.are.equal("2", t.room.seen)
    assert.is_nil(c.closed)
  end)

  it("a live room keeps at most 8 raw fields (a ninth doubles its hash part)", function()
    local t = testing.room(lr.room {
      path = "p-{id}", state = { n = lr.sync(0) }, maxUsers = 4,
      actions = { noop = function() end },
    }, { id = "p-x" })
    local c = t:client { id = "s1" }
    assert.is_nil(c.closed)
    local n, keys = 0, {}
    for k in next, t.room do n = n + 1; keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    assert.is_true(n <= 8, table.concat(keys, ","))
    assert.are.equal("x", t.room.params.id)
    assert.are.equal(1, require("lunaroom.runtime").online_sessions(t.room))
  end)

  it("a room makes its params table on first read, from its id (mem19: a table less per room)", function()
    local t = testing.room(lr.room { path = "p-{id}", state = { n = lr.sync(0) } }, { id = "p-x" })
    assert.is_nil(rawget(t.room, "params"))
    local p = t.room.params
    assert.are.same({ id = "x" }, p)
    assert.are.equal(p, rawget(t.room, "params")) -- kept: the same table on the next read
    p.extra = 1
    assert.are.equal(1, t.room.params.extra)
  end)

  it("a connection's id is read through its handle, also once it closed (mem19: no id string per conn)", function()
    local seen
    local t = testing.room(lr.room {
      path = "q-{id}", state = { n = lr.sync(0) },
      onLeave = function(_room, _user, conn) seen = conn end,
    }, { id = "q-x" })
    local c = t:client { id = "s1" }
    local conn = t.room:connections()[1]
    assert.is_nil(rawget(conn, "id"))
    local id = conn.id
    assert.are.equal("string", type(id))
    assert.truthy(#id >= 8, id)
    assert.are.equal("function", type(conn.send)) -- methods still resolve
    c:close()
    assert.are.equal(conn, seen)
    assert.are.equal(id, seen.id) -- the handle is dead, the id is not
    assert.is_nil(seen.other)
  end)

  it("conn.state is made on first read, with the session's ids (mem19b: a table less per conn)", function()
    local t = testing.room(lr.room {
      path = "s-{id}", state = { players = lr.users(lr.schema { x = lr.sync(0) }) },
      actions = {
        role = function(_room, _user, value, conn) conn.state.role = value end,
        replace = function(_room, _user, _value, conn) conn.state = { role = "new" } end,
        who = function(room, user, _value, conn)
          room:send(conn, { pid = conn.state.publicId, priv = conn.state.privateId, role = conn.state.role,
            user = user ~= nil })
        end,
      },
    }, { id = "s-x" })
    local c = t:client { id = "sess1" }
    local conn = t.room:connections()[1]
    assert.is_nil(rawget(conn, "state"))
    local pid = c:last("sync") and rawget(conn, "_pid")
    assert.are.equal("string", type(pid))
    assert.are.equal("sess1", rawget(conn, "_priv"))
    c:clear()
    c:send("who")
    assert.are.same({ pid = pid, priv = "sess1", user = true }, c:take()[1])
    assert.truthy(rawget(conn, "state")) -- made by that read, and the raw ids dropped
    assert.is_nil(rawget(conn, "_pid"))
    assert.is_nil(rawget(conn, "_priv"))
    c:send("role", "admin")
    c:send("who")
    assert.are.same({ pid = pid, priv = "sess1", role = "admin", user = true }, c:take()[1])
    -- before the first read, an assignment replaces the ids as it always did
    local c2 = t:client { id = "sess2" }
    local conn2 = t.room:connections()[2]
    assert.truthy(rawget(conn2, "_pid"))
    c2:clear()
    c2:send("replace")
    assert.is_nil(rawget(conn2, "_pid"))
    c2:send("who")
    assert.are.same({ role = "new", user = false }, c2:take()[1])
  end)

  it("a room without guards or onJoin makes no connection context per join", function()
    local plain = garbage_per_join(counter())
    local with_onjoin = garbage_per_join(counter { onJoin = function() end })
    -- The context (a table, the request table, the URL string) is a few
    -- hundred bytes per join; before, both rooms made it.
    assert.is_true(plain + 200 < with_onjoin,
      string.format("garbage per join: %.0f B without onJoin, %.0f B with", plain, with_onjoin))
  end)
end)

-- An action's value is parsed in place (schema.lua v._parse_owned): the
-- handler gets the table decoded for this packet, its unknown keys cleared,
-- unless a guard saw it first (then the handler's value is the schema's copy).
describe("action hot path", function()
  it("the handler gets the schema's fields only; a guard's table is not the handler's", function()
    local seen, got = {}, {}
    local keep = function(_, value) seen[#seen + 1] = value; return true end
    local def = lr.room {
      path = "a-{id}",
      state = { n = lr.sync(0) },
      actions = {
        plain = { schema = lr.v.object { x = lr.v.number() },
          run = function(room, _, value) got[#got + 1] = value; room.n = value.x end },
        guarded = { schema = lr.v.object { x = lr.v.number() }, guards = { keep },
          run = function(room, _, value) got[#got + 1] = value; room.n = value.x end },
      },
    }
    local t = testing.room(def)
    local c = t:client { id = "a" }
    c:send("plain", { x = 1, extra = "dropped" })
    assert.are.same({ x = 1 }, { x = got[1].x, extra = got[1].extra })
    assert.is_nil(rawget(got[1], "extra"))
    c:send("guarded", { x = 2, extra = "kept by the guard's table" })
    assert.are.equal(2, t.room.n)
    assert.are_not.equal(seen[1], got[2])
    assert.are.equal("kept by the guard's table", seen[1].extra)
    assert.is_nil(rawget(got[2], "extra"))
    c:send("plain", { x = "not a number" })
    assert.are.equal("validation", c:last("error").value.code)
    assert.are.equal(2, t.room.n)
    t:close()
  end)
end)

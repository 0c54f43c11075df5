-- Patch encoding and sync scheduling (protocol.md Part 1 rows 2, 3, 4, 13, 18; §4.1-4.3).
local testing = require "lunaroom.testing"
local lr = require "lunaroom"

local function room(def)
  def.path = def.path or "r"
  return testing.room(lr.room(def))
end

describe("sync packets", function()
  it("sends one packet per handler, whatever the number of writes (row 2)", function()
    local t = room { state = { a = 0, b = 0, c = 0 },
      actions = { all = function(r) r.a = 1; r.b = 2; r.c = 3; r.a = 4 end } }
    local c = t:client(); c:clear()
    c:send("all")
    assert.are.same({ '{"type":"sync","value":{"a":4,"b":2,"c":3}}' }, c.raw)
    t:close()
  end)

  it("sends nothing when a write does not change the value", function()
    local t = room { state = { a = 1 }, actions = { same = function(r) r.a = 1 end } }
    local c = t:client(); c:clear()
    c:send("same")
    assert.are.same({}, c.raw)
    t:close()
  end)

  it("patches exactly the nested path that changed", function()
    local t = room { state = { config = lr.sync { maxPlayers = 4, mapSize = { width = 1000, height = 1000 } } },
      actions = { w = function(r) r.config.mapSize.width = 800 end } }
    local c = t:client(); c:clear()
    c:send("w")
    assert.are.same({ '{"type":"sync","value":{"config":{"mapSize":{"width":800}}}}' }, c.raw)
    assert.are.equal(800, t.room.config.mapSize.width)
    t:close()
  end)

  it("sends $delete for a deleted key", function()
    local t = room { state = { cfg = lr.sync { a = 1, b = 2 } }, actions = { d = function(r) r.cfg.a = nil end } }
    local c = t:client(); c:clear()
    c:send("d")
    assert.are.same({ '{"type":"sync","value":{"cfg":{"a":"$delete"}}}' }, c.raw)
    t:close()
  end)

  it("replacing an object sends the new keys and $delete for the removed ones (row 18)", function()
    local t = room { state = { cfg = lr.sync { a = 1, b = 2 } }, actions = { r = function(r) r.cfg = { b = 2, c = 3 } end } }
    local c = t:client(); c:clear()
    c:send("r")
    assert.are.same({ type = "sync", value = { cfg = { c = 3, a = "$delete" } } }, c.packets[1])
    t:close()
  end)

  it("a change inside an array sends the whole array, as a JSON array (row 3)", function()
    local t = room { state = { list = lr.sync(lr.array { 1, 2, 3 }), items = lr.sync(lr.array { { n = 1 } }) },
      actions = {
        set = function(r) r.list[2] = 9 end,
        push = function(r) r.list[#r.list + 1] = 4 end,
        pop = function(r) r.list[#r.list] = nil end,
        deep = function(r) r.items[1].n = 2 end,
        insert = function(r) table.insert(r.list, 1, 0) end,
      } }
    local c = t:client()
    assert.truthy(c.raw[1]:find('"list":[1,2,3]', 1, true)) -- snapshots hold real arrays
    c:clear()
    c:send("set"); c:send("push"); c:send("pop"); c:send("deep"); c:send("insert")
    assert.are.same({
      '{"type":"sync","value":{"list":[1,9,3]}}',
      '{"type":"sync","value":{"list":[1,9,3,4]}}',
      '{"type":"sync","value":{"list":[1,9,3]}}',
      '{"type":"sync","value":{"items":[{"n":2}]}}',
      '{"type":"sync","value":{"list":[0,1,9,3]}}',
    }, c.raw)
    t:close()
  end)

  it("numeric-looking keys stay objects (row 4)", function()
    local t = room { state = { byId = lr.sync {} }, actions = { add = function(r) r.byId["3"] = { x = 1 } end } }
    local c = t:client(); c:clear()
    c:send("add")
    assert.are.same({ '{"type":"sync","value":{"byId":{"3":{"x":1}}}}' }, c.raw)
    t:close()
  end)

  it("a bad scalar, a bad array item and a bad nested value name their paths in the error", function()
    local t = room { state = { cfg = lr.sync { a = 1, list = { 1, 2 } } }, actions = {
      nan = function(r) r.cfg.a = 0 / 0 end,
      item = function(r) r.cfg.list[2] = "\255" end,
      deep = function(r) r.cfg.a = { b = { c = math.huge } } end,
    } }
    local c = t:client(); c:clear()
    local want = {
      nan = "cannot store a non-finite number (JSON has no NaN/inf) at cfg.a",
      item = "cannot store a string that is not valid UTF-8 at cfg.list.1",
      deep = "cannot store a non-finite number (JSON has no NaN/inf) at cfg.a.b.c",
    }
    for action, msg in pairs(want) do
      c:send(action)
      local e = c:last()
      assert.are.equal("handler", e.value.code)
      assert.truthy(e.value.message:find(msg, 1, true), e.value.message)
    end
    assert.are.equal(1, t.room.cfg.a)
    t:close()
  end)

  it("writing a function names the path in the error", function()
    local t = room { state = { cfg = lr.sync { a = 1 } }, actions = { bad = function(r) r.cfg.a = print end } }
    local c = t:client(); c:clear()
    c:send("bad")
    local e = c:last()
    assert.are.equal("handler", e.value.code)
    assert.truthy(e.value.message:find("cannot store a function at cfg.a", 1, true))
    assert.are.equal(1, t.room.cfg.a)
    t:close()
  end)

  it("refuses cyclic tables", function()
    local t = room { state = { cfg = lr.sync {} }, actions = { bad = function(r) local x = {}; x.self = x; r.cfg.x = x end } }
    local c = t:client(); c:clear()
    c:send("bad")
    assert.truthy(c:last().value.message:find("cyclic", 1, true))
    t:close()
  end)

  describe("throttleSync", function()
    it("sends the first change at once and coalesces the rest into one packet after the window", function()
      local t = room { throttleSync = 100, state = { n = 0, other = 0 },
        actions = { inc = function(r) r.n = r.n + 1 end, o = function(r) r.other = 30 end } }
      local c = t:client(); c:clear()
      c:send("inc")
      assert.are.same({ '{"type":"sync","value":{"n":1}}' }, c.raw)
      c:clear()
      c:send("inc"); c:send("o"); c:send("inc")
      assert.are.same({}, c.raw)
      t:advance(99)
      assert.are.same({}, c.raw)
      t:advance(1)
      assert.are.same({ '{"type":"sync","value":{"n":3,"other":30}}' }, c.raw)
      t:close()
    end)

    it("N writes within 100 ms give one packet after advance(100)", function()
      local t = room { throttleSync = 100, state = { n = 0 }, actions = { inc = function(r) r.n = r.n + 1 end } }
      local c = t:client()
      t:advance(1000) -- leave any window
      c:send("inc"); c:clear()
      for _ = 1, 10 do c:send("inc") end
      assert.are.equal(0, #c.raw)
      t:advance(100)
      assert.are.same({ '{"type":"sync","value":{"n":11}}' }, c.raw)
      t:close()
    end)
  end)

  describe("autoSync = false", function()
    it("queues until applySync, then one packet", function()
      local t = room { autoSync = false, state = { count = 0, score = 0 },
        actions = {
          upd = function(r, _, v) r.count = v.count; r.score = v.score end,
          apply = function(r) r:applySync() end,
        } }
      local c1 = t:client()
      assert.are.same({}, c1.raw) -- parked: nothing at connect
      c1:send("upd", { count = 1, score = 2 })
      assert.are.same({}, c1.raw)
      c1:send("apply")
      -- row 13: the parked joiner gets pId + the full state
      local p = c1.packets[1]
      assert.are.equal(1, #c1.packets)
      assert.is_string(p.value.pId)
      assert.are.equal(1, p.value.count)
      assert.are.equal(2, p.value.score)
      local c2 = t:client()
      c1:clear()
      c2:send("upd", { count = 5, score = 2 })
      c2:send("apply")
      assert.are.same({ '{"type":"sync","value":{"count":5}}' }, c1.raw)
      t:close()
    end)

    it("applySync with nothing pending sends the full state", function()
      local t = room { state = { count = 3 }, actions = { apply = function(r) r:applySync() end } }
      local c = t:client(); c:clear()
      c:send("apply")
      assert.are.same({ '{"type":"sync","value":{"count":3}}' }, c.raw)
      t:close()
    end)

    it("can be toggled at runtime", function()
      local t = room { state = { n = 0 }, actions = {
        off = function(r) r.autoSync = false end,
        inc = function(r) r.n = r.n + 1 end,
        flush = function(r) r:applySync(); r.autoSync = true end,
      } }
      local c = t:client()
      c:send("off"); c:clear()
      c:send("inc"); c:send("inc")
      assert.are.same({}, c.raw)
      c:send("flush")
      assert.are.same({ '{"type":"sync","value":{"n":2}}' }, c.raw)
      t:close()
    end)
  end)

  it("sync = false fields are never sent, persist = false fields never stored", function()
    local t = room { state = {
      secret = lr.sync(0, { sync = false }), shown = lr.sync(0, { persist = false }), both = 0 },
      actions = { w = function(r) r.secret = 1; r.shown = 2; r.both = 3 end } }
    local c = t:client()
    assert.is_nil(c.packets[1].value.secret)
    c:clear()
    c:send("w")
    -- fields go out in declaration order; a plain default (both) after the declared ones
    assert.are.same({ '{"type":"sync","value":{"shown":2,"both":3}}' }, c.raw)
    assert.are.equal(1, t.storage:get("state:secret"))
    assert.is_nil(t.storage:get("state:shown"))
    assert.are.equal(3, t.storage:get("state:both"))
    t:close()
  end)
end)

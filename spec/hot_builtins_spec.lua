-- Base functions the host replaces with faster ones of the same behaviour
-- (host/lua_vm.c: type; host/lbounded.c: setmetatable) and the proxy check
-- that compares the metatable by address (host/lua_proxy.c): every result
-- and every error message is the stock one's.
local core = require "lunaroom.core"
local testing = require "lunaroom.testing"
local lr = require "lunaroom"

describe("type()", function()
  it("names every kind of value", function()
    local co = coroutine.create(function() end)
    local cases = {
      { nil, "nil" }, { false, "boolean" }, { 0, "number" }, { 1.5, "number" }, { "", "string" },
      { {}, "table" }, { print, "function" }, { function() end, "function" }, { co, "thread" },
      { io.stdout, "userdata" },
    }
    for _, c in ipairs(cases) do assert.are.equal(c[2], type(c[1])) end
    assert.are.equal("nil", type(nil))
  end)

  it("refuses a call without a value, as the stock one", function()
    local ok, err = pcall(type)
    assert.is_false(ok)
    assert.is_truthy(err:find("bad argument #1 to 'type' (value expected)", 1, true), err)
  end)

  it("is what room code and the schema library see", function()
    local def = lr.room {
      path = "tb",
      state = { seen = "" },
      actions = { t = function(room, _, v) room.seen = type(v) .. "," .. type(room.seen) end },
    }
    local t = testing.room(def)
    local c = t:client { id = "a" }
    c:send("t", { 1 })
    assert.are.equal("table,string", t.room.seen)
    local ok, res = lr.v.object({ x = lr.v.number() }):parse({ x = "1" })
    assert.is_false(ok)
    assert.is_truthy(res.message:find("number", 1, true))
    t:close()
  end)
end)

describe("setmetatable()", function()
  it("sets, replaces and removes a metatable and returns its table", function()
    local t, mt = {}, {}
    assert.are.equal(t, setmetatable(t, mt))
    assert.are.equal(mt, getmetatable(t))
    assert.are.equal(t, setmetatable(t, nil))
    assert.is_nil(getmetatable(t))
  end)

  it("gives the stock errors", function()
    local function err_of(...)
      local ok, e = pcall(setmetatable, ...)
      assert.is_false(ok)
      return e
    end
    assert.is_truthy(err_of(1, {}):find("bad argument #1 to 'setmetatable' (table expected, got number)", 1, true))
    assert.is_truthy(err_of({}, 1):find("bad argument #2 to 'setmetatable' (nil or table expected", 1, true))
    assert.is_truthy(err_of({}):find("bad argument #2 to 'setmetatable' (nil or table expected", 1, true))
    local locked = setmetatable({}, { __metatable = "locked" })
    assert.is_truthy(err_of(locked, {}):find("cannot change a protected metatable", 1, true))
    assert.is_truthy(err_of({}, { __gc = true }):find("__gc is not allowed", 1, true))
    local plain = {}
    pcall(setmetatable, plain, { __gc = function() end })
    assert.is_nil(getmetatable(plain))
  end)
end)

describe("the proxy check", function()
  it("tells a state proxy from other userdata and from tables", function()
    local def = lr.room { path = "pc", state = { o = { a = 1 } } }
    local t = testing.room(def)
    local o = t.room.o
    assert.is_true((core.is_proxy(o)))
    assert.are.equal("o", core.path(o))
    assert.is_false((core.is_proxy(io.stdout)))
    assert.is_false((core.is_proxy({})))
    assert.is_false((core.is_proxy("o")))
    local ok, err = pcall(core.path, io.stdout)
    assert.is_false(ok)
    assert.is_truthy(err:find("lunaroom.node expected", 1, true), err)
    ok, err = pcall(core.path, {})
    assert.is_false(ok)
    assert.is_truthy(err:find("lunaroom.node expected, got table", 1, true), err)
    t:close()
  end)
end)

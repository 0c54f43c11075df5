-- Room scripts run in their own sandboxed _ENV (issue "Core", design.md §4).
local sandbox = require "lunaroom.sandbox"

local function load(src) return sandbox.load_room_source(src, "@test_room.lua", "rooms") end

describe("sandbox", function()
  it("has no io, os.execute, load, dofile, loadfile, debug, package", function()
    local def, err = load [[
      local lr = require "lunaroom"
      assert(io == nil and load == nil and dofile == nil and loadfile == nil)
      assert(debug == nil and package == nil and collectgarbage == nil)
      assert(os.execute == nil and os.getenv == nil and os.exit == nil and os.remove == nil)
      assert(type(os.time()) == "number" and string.format and math.floor and table.concat)
      return lr.room { path = "x" }
    ]]
    assert.is_truthy(def, err)
  end)

  it("makes library tables read-only", function()
    local _, err = load [[ string.upper = nil ]]
    assert.truthy(err:find("read-only library string", 1, true))
    _, err = load [[ local lr = require "lunaroom"; lr.room = nil ]]
    assert.truthy(err:find("read-only library lunaroom", 1, true))
  end)

  it("rawset and the string metatable cannot reach what rooms share", function()
    local _, err = load [[ rawset(require "lunaroom", "jwt", {}) ]]
    assert.truthy(err:find("read-only library", 1, true), err)
    _, err = load [[ rawset(string, "rep", print) ]]
    assert.truthy(err:find("read-only library", 1, true), err)
    local def = load [[ assert(getmetatable("") == nil); local t = {}; rawset(t, "a", 1)
      local lr = require "lunaroom"; return lr.room { path = "x" } ]]
    assert.is_truthy(def)
    assert.are.equal("xx", ("x"):rep(2))
  end)

  it("keeps globals per room", function()
    local a = load [[ shared = "a"; local lr = require "lunaroom"; return lr.room { path = "a", actions = { get = function() return shared end } } ]]
    local b = load [[ local lr = require "lunaroom"; return lr.room { path = "b", actions = { get = function() return shared end } } ]]
    assert.are.equal("a", a.actions.get.run())
    assert.is_nil(b.actions.get.run())
    assert.is_nil(rawget(_G, "shared"))
  end)

  it("refuses C modules and unknown modules", function()
    local _, err = load [[ require "cjson" ]]
    assert.truthy(err:find("no module cjson", 1, true))
    _, err = load [[ require "../etc/passwd" ]]
    assert.truthy(err:find("bad module name", 1, true))
  end)

  it("loads plain modules from the rooms folder", function()
    local def, version = load [[ local g = require "guards"; local lr = require "lunaroom"
      return lr.room { path = "m", guards = { g.has_session } } ]]
    assert.is_truthy(def, version)
    assert.are.same({ "rooms/guards.lua" }, def.deps)
    assert.are.equal(12, #version)
  end)

  it("reports syntax errors and invalid definitions with file:line", function()
    local _, err = load "return lr.room {"
    assert.truthy(err:find("^test_room.lua:1:"), err)
    _, err = load [[ local lr = require "lunaroom"
      return lr.room { path = "x", acitons = {} } ]]
    assert.truthy(err:find("^test_room.lua:%d*:? ?unknown room option 'acitons'"), err)
    _, err = load [[ local lr = require "lunaroom"
      return lr.room { path = "x", state = { send = 1 } } ]]
    assert.truthy(err:find("state field 'send' is a reserved name", 1, true), err)
  end)
end)

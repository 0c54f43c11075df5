-- Room code's lr.json (the host's codec) and pure-Lua modules from
-- --lua-modules folders inside the sandbox (issue 20). The flag itself is
-- exercised end to end by spec/install/run.sh.
local sandbox = require "lunaroom.sandbox"
local testing = require "lunaroom.testing"

local function load(src) return sandbox.load_room_source(src, "@test_room.lua", "rooms") end

-- Debian's lua-penlight (make deps) installs pure-Lua modules here.
local PENLIGHT = "/usr/share/lua/5.4"

describe("lr.json", function()
  it("is the host's codec: integers past 2^53 and floats round-trip exactly", function()
    local def, err = load [[
      local lr = require "lunaroom"
      local s = lr.json.encode({ big = 9007199254740993, f = 0.1, n = lr.null, e = lr.array {} })
      local back = lr.json.decode(s)
      assert(back.big == 9007199254740993 and math.type(back.big) == "integer", s)
      assert(back.f == 0.1 and back.n == lr.null, s)
      assert(select(2, lr.json.decode("{bad")), "decode errors are returned")
      return lr.room { path = "j", state = { s = lr.sync(s) } }
    ]]
    assert.is_truthy(def, err)
    local t = testing.room(def)
    assert.are.equal('{"big":9007199254740993,"e":[],"f":0.1,"n":null}', t.room.s)
    t:close()
  end)

  it("is read-only for rooms: no field can be replaced, even with rawset", function()
    local _, err = load [[ local lr = require "lunaroom"; lr.json.encode = print ]]
    assert.truthy(err:find("read-only", 1, true), err)
    _, err = load [[ local lr = require "lunaroom"; rawset(lr.json, "encode", print) ]]
    assert.truthy(err:find("read-only", 1, true), err)
    local lr = require "lunaroom"
    assert.are.equal("[1]", lr.json.encode { 1 })
  end)
end)

describe("--lua-modules (pure-Lua rocks in the sandbox)", function()
  after_each(function() sandbox.set_module_dirs {} end)

  it("requires a Debian lua-penlight module from a module folder", function()
    local src = [[
      local url = require "pl.url"
      local lr = require "lunaroom"
      return lr.room { path = "pl", actions = { q = function(room, _, v) room.out = url.quote(v) end },
        state = { out = lr.sync("") } }
    ]]
    local _, err = load(src)
    assert.truthy(err:find("no module pl.url", 1, true), "not found without the flag")
    sandbox.set_module_dirs { PENLIGHT }
    local def, version, deps = load(src)
    assert.is_truthy(def, version)
    assert.are.same({ PENLIGHT .. "/pl/url.lua" }, deps)
    local t = testing.room(def)
    local c = t:client()
    c:send("q", "a b&c")
    assert.are.equal("a%20b%26c", t.room.out)
    t:close()
  end)

  it("gives the modules the room's sandbox: no io, no os.execute, no C modules", function()
    sandbox.set_module_dirs { PENLIGHT }
    -- pl.path needs lfs, a C module: not found (only *.lua files are loaded)
    local _, err = load [[ require "pl.path" ]]
    assert.truthy(err, "pl.path must not load")
    local _, err2 = load [[ require "lfs" ]]
    assert.truthy(err2:find("no module lfs", 1, true), err2)
    -- a module folder's code sees the same globals as the room
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local f = assert(io.open(dir .. "/escape.lua", "w"))
    f:write("return { io = io, exec = os.execute, pkg = package, dbg = debug, ld = load }\n")
    f:close()
    sandbox.set_module_dirs { dir }
    local def, e3 = load [[
      local m = require "escape"
      assert(next(m) == nil, "a module sees no io/os.execute/package/debug/load")
      local lr = require "lunaroom"; return lr.room { path = "e" } ]]
    os.remove(dir .. "/escape.lua")
    os.remove(dir)
    assert.is_truthy(def, e3)
  end)
end)

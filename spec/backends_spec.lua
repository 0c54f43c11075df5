-- The same storage behaviour through every backend: memory, SQLite and a
-- backend written in Lua (lua/lunaroom/backends/memory.lua).
local testing = require "lunaroom.testing"
local lr = require "lunaroom"
local core = require "lunaroom.core"

local def = lr.room { path = "{name}", rateLimit = { rate = 0, burst = 0 },
  state = { players = lr.users(lr.schema { x = 0 }), m = lr.sync {}, count = 0 },
  actions = {
    inc = function(r) r.count = r.count + 1 end,
    set = function(r, _, v) r.m[v.k] = v.v end,
    del = function(r, _, k) r.m[k] = nil end,
  } }

local db = os.tmpname()
os.remove(db)
local backends = {
  memory = "memory",
  sqlite = "sqlite:" .. db,
  lua = "lua:lua/lunaroom/backends/memory.lua",
}

for name, spec in pairs(backends) do
  describe("storage backend " .. name, function()
    it("stores incremental keys, compacts deletes, keeps numbers exact", function()
      local t = testing.room(def, { storage = spec, id = "b" })
      local c = t:client { id = "s1" }
      c:send("inc"); c:send("set", { k = "a", v = 2 ^ 53 }); c:send("set", { k = "f", v = 0.1 + 0.2 })
      assert.are.equal(1, t.storage:get("state:count"))
      assert.are.equal(2 ^ 53, t.storage:get("state:m.a"))
      assert.are.equal(0.1 + 0.2, t.storage:get("state:m.f"))
      assert.are.equal("integer", math.type(t.storage:get("state:count")))
      assert.are.equal(c.publicId, t.storage:get("session:s1").publicId)
      c:send("del", "a")
      local keys = {}
      for _, kv in ipairs(t.storage:entries("state:")) do keys[#keys + 1] = kv[1] end
      assert.are.same({ "state:." }, keys)
      for i = 1, 200 do c:send("set", { k = "k" .. i, v = i }); c:send("del", "k" .. i) end
      assert.is_true(t.storage:count() <= 6)
      t:close()
    end)

    it("applies a batch atomically in key order and lists by prefix", function()
      local t = testing.room(def, { storage = spec, id = "b2" })
      local target = { server = t.srv.h, ns = "main", id = "b2" }
      assert.is_true(core.store_apply(rawget(t.room, "h"), {
        { "put", "z:2", 2 }, { "put", "z:1", { n = 1 } }, { "put", "y", true }, { "del", "y" } }))
      local list = core.store_list(target, "z:")
      assert.are.same({ { "z:1", { n = 1 } }, { "z:2", 2 } }, list)
      assert.is_true(core.store_apply(rawget(t.room, "h"), { { "delprefix", "z:" } }))
      assert.are.same({}, core.store_list(target, "z:"))
      t:close()
    end)
  end)
end

describe("the Lua backend", function()
  it("keeps a room across a server restart in the same process", function()
    local spec = "lua:lua/lunaroom/backends/memory.lua"
    -- each server loads the file again: a fresh, empty store
    local t = testing.room(def, { storage = spec, id = "r" })
    t:client { id = "s" }:send("inc")
    t:close()
    local t2 = testing.room(def, { storage = spec, id = "r" })
    assert.are.equal(0, t2.room.count)
    t2:close()
  end)
end)

os.remove(db); os.remove(db .. "-wal"); os.remove(db .. "-shm")

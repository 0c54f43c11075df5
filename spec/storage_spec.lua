-- Persistence: key layout, throttling, compaction, restore hooks, failures
-- (protocol.md §4.4-4.6, issue "Persistence").
local testing = require "lunaroom.testing"
local lr = require "lunaroom"

local Player = lr.schema { x = lr.sync(0), hp = lr.sync(10), online = lr.connected(), secret = lr.persist("s") }

local function def(extra)
  local d = { path = "p", rateLimit = { rate = 0, burst = 0 }, state = { players = lr.users(Player), m = lr.sync {}, count = 0 },
    actions = {
      set = function(r, _, v) r.m[v.k] = v.v end,
      del = function(r, _, k) r.m[k] = nil end,
      hp = function(_, p, v) p.hp = v end,
      inc = function(r) r.count = r.count + 1 end,
    } }
  for k, v in pairs(extra or {}) do d[k] = v end
  return lr.room(d)
end

local function tmpdb()
  local p = os.tmpname()
  os.remove(p)
  return p
end

local function rm(p) os.remove(p); os.remove(p .. "-wal"); os.remove(p .. "-shm") end

describe("storage layout", function()
  it("writes incremental state:{path} keys", function()
    local t = testing.room(def())
    local c = t:client { id = "pa" }
    local pid = c.publicId
    c:send("hp", 5); c:send("set", { k = "a", v = 1 })
    assert.are.equal(5, t.storage:get("state:players." .. pid .. ".hp"))
    assert.are.equal(1, t.storage:get("state:m.a"))
    -- the user entry itself was written when it was created, without
    -- unstored fields (online is lr.connected(): synced, not stored)
    local u = t.storage:get("state:players." .. pid)
    assert.are.same({ x = 0, hp = 10, secret = "s" }, u)
    t:close()
  end)

  it("compacts every state: key into state:. after a delete", function()
    local t = testing.room(def())
    local c = t:client { id = "pa" }
    c:send("set", { k = "a", v = 1 }); c:send("set", { k = "b", v = 2 }); c:send("del", "a")
    local keys = {}
    for _, kv in ipairs(t.storage:entries("state:")) do keys[#keys + 1] = kv[1] end
    assert.are.same({ "state:." }, keys)
    local root = t.storage:get("state:.")
    assert.are.same({ b = 2 }, root.m)
    assert.are.equal(0, root.count)
    assert.is_nil(root.players[c.publicId].online)
    t:close()
  end)

  it("keeps the stored row count bounded across 10,000 create/delete cycles", function()
    local t = testing.room(def())
    local c = t:client { id = "pa" }
    local max = 0
    for i = 1, 10000 do
      c:send("set", { k = "k" .. i, v = i })
      c:send("del", "k" .. i)
      if i % 1000 == 0 then max = math.max(max, t.storage:count()) end
    end
    assert.is_true(max <= 6, "rows: " .. max)
    t:close()
  end)

  it("a value written at a path replaces what was stored below it", function()
    local path = tmpdb()
    local d = def()
    local t = testing.room(d, { storage = "sqlite:" .. path })
    local c = t:client { id = "pa" }
    c:send("set", { k = "a", v = { deep = 1 } })
    t.room.m = { a = 5 }
    require("lunaroom.core").tick(t.srv.h)
    t:close()
    local t2 = testing.room(d, { storage = "sqlite:" .. path })
    assert.are.equal(5, t2.room.m.a)
    t2:close()
    rm(path)
  end)
end)

describe("throttleStorage", function()
  it("writes at most once per window and never later than the window", function()
    local t = testing.room(def { throttleStorage = 1000 })
    local c = t:client { id = "pa" }
    t:advance(2000)
    c:send("inc"); c:send("inc")
    assert.is_nil(t.storage:get("state:count"))
    t:advance(999)
    c:send("inc") -- a busy room still writes at the end of the window
    t:advance(1)
    assert.are.equal(3, t.storage:get("state:count"))
    t:close()
  end)

  it("flushes pending writes on graceful shutdown", function()
    local path = tmpdb()
    local d = def { throttleStorage = 60000 }
    local t = testing.room(d, { storage = "sqlite:" .. path })
    local c = t:client { id = "pa" }
    c:send("inc"); c:send("inc")
    t:close()
    local t2 = testing.room(d, { storage = "sqlite:" .. path })
    assert.are.equal(2, t2.room.count)
    t2:close()
    rm(path)
  end)
end)

describe("storage failures", function()
  it("are logged, keep the data pending and retry until written", function()
    local t = testing.room(def())
    local c = t:client { id = "pa" }
    testing.logs()
    t:fail_storage(2)
    c:send("inc")
    assert.is_nil(t.storage:get("state:count"))
    local logs = table.concat(testing.logs(), "\n")
    assert.truthy(logs:find("room main/p: storage write", 1, true), logs)
    assert.are.equal(1, t.room.count) -- the room goes on
    t:advance(1000) -- first retry fails too
    assert.is_nil(t.storage:get("state:count"))
    t:advance(2000)
    assert.are.equal(1, t.storage:get("state:count"))
    t:close()
  end)
end)

describe("restore", function()
  local path
  before_each(function() path = tmpdb() end)
  after_each(function() rm(path) end)

  it("brings back state and users, and sessions keep their publicId", function()
    local d = def()
    local t = testing.room(d, { storage = "sqlite:" .. path })
    local c = t:client { id = "pa" }
    local pid = c.publicId
    c:send("hp", 3); c:send("set", { k = "a", v = { b = { 1, 2 } } }); c:send("inc")
    t:close()
    local t2 = testing.room(d, { storage = "sqlite:" .. path })
    assert.are.equal(3, t2.room.players[pid].hp)
    assert.are.equal(2, t2.room.m.a.b[2])
    assert.are.equal(1, t2.room.count)
    assert.are.equal(pid, t2:client { id = "pa" }.publicId)
    t2:close()
  end)

  it("runs onStorageRestore and onUserStorageRestore; a returned table replaces the snapshot", function()
    local t = testing.room(def(), { storage = "sqlite:" .. path })
    local c = t:client { id = "pa" }
    local pid = c.publicId
    c:send("hp", 3); c:send("inc")
    t:close()
    local seen = {}
    local d2 = def {
      onStorageRestore = function(ctx)
        seen.legacy = ctx.legacy
        seen.count = ctx.snapshot.count
        ctx.snapshot.count = 40
        return ctx.snapshot
      end,
      onUserStorageRestore = function(ctx)
        seen.pid = ctx.publicId
        seen.helper_hp = ctx.user.hp
        local s = ctx.userSnapshot
        s.hp = s.hp * 10
        return s
      end,
    }
    local t2 = testing.room(d2, { storage = "sqlite:" .. path })
    assert.are.same({ legacy = false, count = 1, pid = pid, helper_hp = 10 }, seen)
    assert.are.equal(40, t2.room.count)
    assert.are.equal(30, t2.room.players[pid].hp)
    t2:close()
  end)

  it("a hook returning nil keeps the snapshot", function()
    local t = testing.room(def(), { storage = "sqlite:" .. path })
    t:client { id = "pa" }:send("inc")
    t:close()
    local t2 = testing.room(def { onStorageRestore = function() end }, { storage = "sqlite:" .. path })
    assert.are.equal(1, t2.room.count)
    t2:close()
  end)

  it("migrates the legacy (pre-state:) layout", function()
    local t = testing.room(def(), { storage = "sqlite:" .. path })
    t:close()
    -- write a legacy layout by hand: "." root plus dotted keys
    local t0 = testing.room(lr.room { path = "other" }, { storage = "sqlite:" .. path, id = "other" })
    t0:close()
    local sqlite_cmd = string.format(
      [[sqlite3 %s "DELETE FROM signe_room_storage; INSERT INTO signe_room_storage VALUES('main','p','.','{\"count\":7,\"m\":{\"z\":1}}'),('main','p','m.y','2');"]], path)
    assert.is_true(os.execute(sqlite_cmd))
    local legacy
    local t2 = testing.room(def { onStorageRestore = function(ctx) legacy = ctx.legacy end }, { storage = "sqlite:" .. path })
    assert.is_true(legacy)
    assert.are.equal(7, t2.room.count)
    assert.are.same({ y = 2, z = 1 }, require("lunaroom.core").copy(t2.room.m))
    assert.is_nil(t2.storage:get("."))
    assert.is_not_nil(t2.storage:get("state:."))
    t2:close()
  end)

  it("compacts a persisted $delete on load", function()
    local t = testing.room(def(), { storage = "sqlite:" .. path })
    t:close()
    assert.is_true(os.execute(string.format(
      [[sqlite3 %s "INSERT INTO signe_room_storage VALUES('main','p','state:m.a','1'),('main','p','state:m.b','\"\$delete\"');"]], path)))
    local t2 = testing.room(def(), { storage = "sqlite:" .. path })
    assert.are.same({ a = 1 }, require("lunaroom.core").copy(t2.room.m))
    local keys = {}
    for _, kv in ipairs(t2.storage:entries("state:")) do keys[#keys + 1] = kv[1] end
    assert.are.same({ "state:." }, keys)
    t2:close()
  end)
end)

-- A scalar written again at a path the store holds nothing below is one PUT
-- (LR_F_STORED_FLAT, host/value.h): no prefix deletion. Every way a path can
-- get keys below it again (the value becomes an object, the key is deleted
-- and set again in one handler, a copy of another subtree lands there, a
-- failed write) still deletes them: what is stored always reloads as the state.
describe("scalar writes without a prefix deletion", function()
  local core = require "lunaroom.core"
  local backend = os.tmpname() .. ".lua"
  local f = assert(io.open(backend, "w"))
  f:write([[
local mem = dofile("lua/lunaroom/backends/memory.lua")
local M = {}
for k, fn in pairs(mem) do M[k] = fn end
function M.apply(ns, id, ops)
  for _, op in ipairs(ops) do
    local log = rawget(_G, "FLAT_SPEC_OPS")
    if log then log[#log + 1] = op[1] .. " " .. op[2] end
  end
  return mem.apply(ns, id, ops)
end
return M
]])
  f:close()
  local d = lr.room { path = "flat-{n}", rateLimit = { rate = 0, burst = 0 },
    state = { players = lr.users(lr.schema { x = 0 }), p = lr.sync(0), q = lr.sync {} },
    actions = {
      x = function(_, pl, v) pl.x = v end,
      p = function(r, _, v) r.p = v end,
      pa = function(r, _, v) r.p.a = v end,
      renew = function(r, _, v) r.p = nil; r.p = v end,
      copy2 = function(r) r.p.z = nil; r.p = r.q end,
      q = function(r, _, v) r.q = v end,
      qz = function(r, _, v) r.q.z = v end,
      pzd = function(r, _, v) r.p.z.deep = v end,
    } }
  local function ops_of(t, fn)
    _G.FLAT_SPEC_OPS = {}
    fn()
    t:advance(0)
    local ops = _G.FLAT_SPEC_OPS
    _G.FLAT_SPEC_OPS = nil
    return ops
  end
  local function reloaded(t)
    local out = {}
    for _, kv in ipairs(t.storage:entries("state:")) do out[#out + 1] = kv[1] end
    return out
  end

  it("writes a player's field again with one op", function()
    local t = testing.room(d, { storage = "lua:" .. backend, id = "flat-1" })
    local c = t:client { id = "a" }
    local pid = c.publicId
    assert.are.same({ "delprefix state:players." .. pid .. ".x.", "put state:players." .. pid .. ".x" },
      ops_of(t, function() c:send("x", 1) end))
    assert.are.same({ "put state:players." .. pid .. ".x" }, ops_of(t, function() c:send("x", 2) end))
    assert.are.same({ "put state:players." .. pid .. ".x" }, ops_of(t, function() c:send("x", 2.5) end))
    assert.are.equal(2.5, t.storage:get("state:players." .. pid .. ".x"))
    t:close()
  end)

  it("deletes below a path that became an object and then a scalar again", function()
    local t = testing.room(d, { storage = "lua:" .. backend, id = "flat-2" })
    local c = t:client { id = "a" }
    c:send("p", 5); c:send("p", 6)  -- flat now
    c:send("p", { a = 1 }); c:send("pa", 2) -- state:p.a is stored
    assert.are.equal(2, t.storage:get("state:p.a"))
    local ops = ops_of(t, function() c:send("p", 7) end)
    assert.are.same({ "delprefix state:p.", "put state:p" }, ops)
    assert.is_nil(t.storage:get("state:p.a"))
    -- deleted and set again in one handler (no compaction): the new node
    -- deletes below its path too
    c:send("p", { a = 1 }); c:send("pa", 3)
    assert.are.same({ "delprefix state:p.", "put state:p" }, ops_of(t, function() c:send("renew", 8) end))
    assert.is_nil(t.storage:get("state:p.a"))
    assert.are.equal(8, t.storage:get("state:p"))
    t:close()
  end)

  it("does not carry the mark with a copy", function()
    local path = tmpdb()
    local t = testing.room(d, { storage = "sqlite:" .. path, id = "flat-3" })
    local c = t:client { id = "a" }
    c:send("q", { z = 1 }); c:send("qz", 2)            -- state:q.z written: q.z is marked
    c:send("p", { z = { deep = 1 } }); c:send("pzd", 5) -- state:p.z.deep is stored
    assert.are.equal(5, t.storage:get("state:p.z.deep"))
    c:send("copy2")                                     -- p.z = nil, then p = q: z comes as a copy of q.z
    for _, k in ipairs(reloaded(t)) do assert.is_nil(k:find("^state:p%.z%."), k) end
    t:close()
    local t2 = testing.room(d, { storage = "sqlite:" .. path, id = "flat-3" })
    assert.are.equal(2, t2.room.p.z)
    t2:close()
    rm(path)
  end)

  it("marks a scalar only once its write is committed", function()
    local t = testing.room(d, { id = "flat-4" })
    local c = t:client { id = "a" }
    c:send("p", { a = 1 }); c:send("pa", 2)
    assert.are.equal(2, t.storage:get("state:p.a"))
    t:fail_storage(1)
    c:send("p", 7) -- fails: kept pending, retried with its prefix deletion
    t:advance(1000)
    c:send("p", 8)
    assert.are.equal(8, t.storage:get("state:p"))
    for _, k in ipairs(reloaded(t)) do assert.is_nil(k:find("^state:p%."), k) end
    t:close()
  end)
end)

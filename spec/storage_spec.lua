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

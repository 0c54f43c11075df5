-- A Lua storage backend that waits for I/O (lunaroom.io): rooms load before
-- they run, clients and requests wait meanwhile, writes go behind in order,
-- failures are retried, nothing is lost, a restart reads it all back.
local testing = require "lunaroom.testing"
local lr = require "lunaroom"
local core = require "lunaroom.core"

local BACKEND = "lua:spec/fixtures/slow_backend.lua"

local def = lr.room { path = "{name}", rateLimit = { rate = 0, burst = 0 },
  state = { players = lr.users(lr.schema { x = 0 }), count = 0 },
  actions = { inc = function(r) r.count = r.count + 1 end },
  requests = { ["GET /count"] = function(r) return { count = r.count } end } }

local function fresh(delay)
  _G.SLOW_BACKEND = { delay = delay or 50, calls = {}, fail_writes = 0, fail_loads = 0 }
  return _G.SLOW_BACKEND
end

-- What the backend holds for room main/a (JSON text), or nil.
local function stored(cfg, key)
  for _, kv in ipairs(cfg.store.list("main", "a", key)) do
    if kv[1] == key then return kv[2] end
  end
end

-- Room main/a on the slow backend, not created until a client or request comes.
local function open_room() return testing.room(def, { storage = BACKEND, id = "a", create = false }) end

local function seed(cfg, key, json)
  cfg.store = dofile("lua/lunaroom/backends/memory.lua")
  cfg.store.apply("main", "a", { { "put", key, json } })
end

describe("a Lua backend that waits for I/O", function()
  after_each(function() _G.SLOW_BACKEND = nil end)

  it("loads the room before it runs: the client waits, its early actions are kept", function()
    local cfg = fresh(50)
    seed(cfg, "state:count", "41")
    local t = open_room()
    local c = t:client { id = "s1" }
    c:send("inc") -- arrives while the room loads
    assert.are.same({}, c.packets)
    assert.is_nil(t.room)
    t:advance(49)
    assert.are.same({}, c.packets)
    t:advance(1)
    -- loaded; the join's session records go to the backend: its snapshot
    -- (and the early action's patch) wait for that commit
    assert.are.same({}, c.packets)
    t:advance(100)
    local first = c.packets[1]
    assert.are.equal("sync", first.type)
    assert.are.equal(41, first.value.count)
    assert.are.equal(42, c:last("sync").value.count)
    assert.are.same({ "list", "main", "a" }, cfg.calls[1])
    t:close()
  end)

  it("writes behind, in order, merged while one runs; packets wait for the backend's commit", function()
    local cfg = fresh(50)
    local t = open_room()
    local c = t:client { id = "s1" }
    t:advance(50)
    t:advance(100) -- the session records are on the backend (two calls): the snapshot goes out
    assert.are.equal(0, c:last("sync").value.count)
    local before = #cfg.calls
    for _ = 1, 3 do c:send("inc") end
    -- the room and its cache have it now; the backend does not yet, so the
    -- client is not shown it yet (write-before-sync, throttleStorage 0)
    assert.are.equal(3, t.storage:get("state:count"))
    assert.are.equal(0, c:last("sync").value.count)
    assert.is_nil(stored(cfg, "state:count"))
    t:advance(50)  -- first write done; the two behind it go in one call
    assert.are.equal("1", stored(cfg, "state:count"))
    assert.are.equal(1, c:last("sync").value.count)
    t:advance(50)
    assert.are.equal("3", stored(cfg, "state:count"))
    assert.are.equal(3, c:last("sync").value.count)
    local counts = {}
    for _, p in ipairs(c.packets) do if p.type == "sync" then counts[#counts + 1] = p.value.count end end
    assert.are.same({ 0, 1, 2, 3 }, counts) -- every patch, in order
    local applies = {}
    for i = before + 1, #cfg.calls do if cfg.calls[i][1] == "apply" then applies[#applies + 1] = cfg.calls[i] end end
    assert.are.equal(2, #applies, "writes behind a running call are merged")
    assert.are.equal(0, core.store_pending(t.srv.h))
    t:close()
  end)

  it("keeps a failed write queued and retries it with backoff: nothing is lost", function()
    local cfg = fresh(10)
    local t = open_room()
    local c = t:client { id = "s1" }
    t:advance(10)
    t:advance(10) -- the session records are written
    testing.logs()
    cfg.fail_writes = 2
    c:clear()
    c:send("inc")
    t:advance(10)
    assert.is_nil(stored(cfg, "state:count"))
    local logs = table.concat(testing.logs(), "\n")
    assert.matches("storage main/a: write to the Lua backend failed %(%d+ batch%(es%) kept, retry in 1000 ms%): .*write timed out", logs)
    assert.is_nil(c:last("sync")) -- not shown: not stored
    c:send("inc") -- refused while the room's writes fail
    assert.are.equal("storage", c:last("error").value.code)
    t:advance(1010) -- retry 1 fails too (backoff doubles)
    assert.matches("retry in 2000 ms", table.concat(testing.logs(), "\n"))
    assert.is_nil(c:last("sync"))
    t:advance(2010)
    assert.are.equal("1", stored(cfg, "state:count"))
    assert.are.equal(1, c:last("sync").value.count) -- shown once stored
    assert.matches("accepts writes again", table.concat(testing.logs(), "\n"))
    c:send("inc") -- taken again
    t:advance(10)
    assert.are.equal("2", stored(cfg, "state:count"))
    assert.are.equal(2, c:last("sync").value.count)
    assert.are.equal(0, core.store_pending(t.srv.h))
    t:close()
  end)

  it("reads it all back after a restart", function()
    local cfg = fresh(20)
    local t = open_room()
    local c = t:client { id = "s1" }
    t:advance(20)
    c:send("inc"); c:send("inc")
    t:advance(100)
    local pid = c.publicId
    t:close()
    local t2 = open_room()
    local c2 = t2:client { id = "s1" }
    t2:advance(20)
    t2:advance(40) -- its session records are written (two calls): the snapshot goes out
    assert.are.equal(2, c2.packets[1].value.count)
    assert.are.equal(pid, c2.publicId) -- the session came back from the backend
    assert.is_not_nil(stored(cfg, "session:s1"))
    t2:close()
  end)

  it("answers an HTTP request once the room loaded", function()
    local cfg = fresh(30)
    seed(cfg, "state:count", "7")
    local t = open_room()
    local t0 = t:now()
    local res = t:http("GET", "/count")
    assert.are.equal(200, res.status)
    assert.are.equal(7, res.json.count)
    assert.are.equal(30, t:now() - t0)
    t:close()
  end)

  it("closes a waiting client with 1011 when loading fails, and loads again on the next one", function()
    local cfg = fresh(10)
    cfg.fail_loads = 1
    local t = open_room()
    testing.logs()
    local c = t:client { id = "s1" }
    t:advance(10)
    assert.are.equal(1011, c.closed.code)
    assert.matches("loading from the Lua backend failed: .*database unreachable",
      table.concat(testing.logs(), "\n"))
    local c2 = t:client { id = "s2" }
    t:advance(10)
    t:advance(20) -- loaded, then its session records written (two calls)
    assert.are.equal("sync", c2.packets[1].type)
    t:close()
  end)

  it("a client that leaves while the room loads is forgotten", function()
    fresh(10)
    local t = open_room()
    local c = t:client { id = "s1" }
    c:close()
    t:advance(10)
    assert.are.same({}, c.packets)
    assert.are.same({}, t.room and core.room_conns(rawget(t.room, "h")) or {})
    t:close()
  end)

  it("a room disposed while its writes are in flight keeps them: they land, then the cache lets go", function()
    local cfg = fresh(20)
    local t = open_room()
    local c = t:client { id = "s1" }
    t:advance(20)
    c:send("inc"); c:send("inc")
    core.room_dispose(rawget(t.room, "h"))
    assert.is_true(core.store_pending(t.srv.h) > 0)
    t:advance(20); t:advance(20); t:advance(20)
    assert.are.equal(0, core.store_pending(t.srv.h))
    assert.are.equal("2", stored(cfg, "state:count"))
    -- a new client loads the room again from the backend
    local c2 = t:client { id = "s2" }
    t:advance(20)
    t:advance(40)
    assert.are.equal(2, c2.packets[1].value.count)
    local lists = 0
    for _, call in ipairs(cfg.calls) do if call[1] == "list" then lists = lists + 1 end end
    assert.are.equal(2, lists)
    t:close()
  end)

  it("refuses to wait outside a backend call, and a backend that yields anything else fails", function()
    local io = require "lunaroom.io"
    assert.has_error(function() io.sleep(1) end,
      "lunaroom.io.sleep: cannot wait here (only in a room handler or a storage backend call, not inside a "
      .. "protected call of the host or a coroutine of your own)")
    local f = os.tmpname()
    local fh = assert(_G.io.open(f, "w"))
    fh:write([[return { list = function() coroutine.yield("nope") return {} end,
      apply = function() end }]])
    fh:close()
    local t = testing.room(def, { storage = "lua:" .. f, id = "a", create = false })
    testing.logs()
    local c = t:client { id = "s1" } -- the load failed at once: closed with "try again later"
    assert.are.same({ code = 1013, reason = "try again later" }, c.closed)
    assert.matches("yielded outside lunaroom.io", table.concat(testing.logs(), "\n"))
    t:close()
    os.remove(f)
  end)
end)

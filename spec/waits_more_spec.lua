-- Handlers that wait, continued (issue 17): room-to-room fetch resumed by
-- the answer itself (no poll), restore hooks and the packet interceptor that
-- wait. On the virtual clock, README "Waiting for outside services".
local testing = require "lunaroom.testing"
local core = require "lunaroom.core"
local lr = require "lunaroom"
local runtime = require "lunaroom.runtime"

local function last_error(c)
  local p = c:last("error")
  return p and p.value
end

-- Counts the engine timers armed while fn runs (every wait, deadline, poll
-- or timeout of lunaroom.tasks is one).
local function count_timers(fn)
  local real, n = core.timer, 0
  core.timer = function(...)
    n = n + 1
    return real(...)
  end
  local ok, err = pcall(fn)
  core.timer = real
  assert(ok, err)
  return n
end

local function fetcher(extra_rooms)
  return testing.room({
    path = "shop",
    state = { trail = {} },
    actions = {
      ask = function(room, _, v)
        local res = room.parties.main:get("bank"):fetch("/balance", { timeout = v and v.timeout })
        room.trail[#room.trail + 1] = "balance " .. tostring(res.json().balance)
      end,
    },
  }, { rooms = extra_rooms or { { path = "bank", requests = { ["GET /balance"] = function()
    require("lunaroom.io").sleep(30)
    return { balance = 7 }
  end } } } })
end

describe("room-to-room fetch to a route that waits", function()
  it("is resumed by the answer, in the same turn, without a poll timer", function()
    local t = fetcher()
    local c = t:client { id = "a" }
    local armed = count_timers(function()
      c:send("ask")
      t:advance(29)
      assert.are.equal("", table.concat(t.room.trail, ","))
      t:advance(1) -- the target answers at 30 ms: the fetch returns in that turn
      assert.are.equal("balance 7", table.concat(t.room.trail, ","))
    end)
    -- fetcher: deadline + fetch timeout; target: deadline + sleep. A 1 ms
    -- poll armed 30 more.
    assert.are.equal(4, armed)
    assert.is_nil(last_error(c))
    assert.are.equal(0, t:waiting(true))
    t:close()
  end)

  it("times out (init.timeout); the late answer is dropped, the room goes on", function()
    local t = fetcher()
    local c = t:client { id = "a" }
    c:send("ask", { timeout = 10 })
    t:advance(10)
    local e = last_error(c)
    assert.are.equal("handler", e.code)
    assert.truthy(e.message:find("fetch: no answer after 10 ms (timeout)", 1, true), e.message)
    collectgarbage() -- the fetching coroutine is gone before the answer
    collectgarbage()
    t:advance(30) -- the target answers now: nobody waits for it
    assert.are.equal("", table.concat(t.room.trail, ","))
    assert.are.equal(0, t:waiting(true))
    local pend = debug.getregistry()["lunaroom.http_pending"]
    assert.is_nil(next(pend)) -- neither the answer nor the subscription is kept
    c:send("ask")
    t:advance(30)
    assert.are.equal("balance 7", table.concat(t.room.trail, ","))
    t:close()
  end)

  it("a fetch of a room whose route waits on another fetch chains answers without a poll", function()
    local t = fetcher({
      { path = "bank", requests = { ["GET /balance"] = function(room)
        local res = room.parties.main:get("vault"):fetch("/gold")
        return { balance = res.json().gold * 2 }
      end } },
      { path = "vault", requests = { ["GET /gold"] = function()
        require("lunaroom.io").sleep(20)
        return { gold = 21 }
      end } },
    })
    local c = t:client { id = "a" }
    local armed = count_timers(function()
      c:send("ask")
      t:advance(19)
      assert.are.equal("", table.concat(t.room.trail, ","))
      t:advance(1)
    end)
    assert.are.equal("balance 42", table.concat(t.room.trail, ","))
    assert.are.equal(6, armed) -- 3 deadlines, 2 fetch timeouts, 1 sleep
    t:close()
  end)
end)

local Player = lr.schema { hp = lr.sync(10), online = lr.connected() }

local function tmpdb()
  local p = os.tmpname()
  os.remove(p)
  return p
end
local function rm(p) os.remove(p); os.remove(p .. "-wal"); os.remove(p .. "-shm") end

-- A room whose restore hooks may wait (extra adds them), with a trail of
-- what ran, persisted.
local function rdef(extra)
  local d = { path = "p", rateLimit = { rate = 0, burst = 0 },
    state = { players = lr.users(Player), count = 0, trail = {} },
    actions = {
      inc = function(r) r.count = r.count + 1 end,
      mark = function(r, _, v) r.trail[#r.trail + 1] = tostring(v) end,
      hp = function(_, u, v) u.hp = v end,
    },
    requests = { ["GET /count"] = function(r) return { count = r.count, trail = #r.trail } end },
    onJoin = function(r, _, conn) r.trail[#r.trail + 1] = "join " .. tostring(conn.sessionId) end,
  }
  for k, v in pairs(extra or {}) do d[k] = v end
  return lr.room(d)
end

local function trail(t) return table.concat(t.room.trail, ",") end

-- Stored state: count 3, two players (hp 4 and 5), trail {"before"}.
local function stored(path)
  local t = testing.room(rdef(), { storage = "sqlite:" .. path })
  local a, b = t:client { id = "pa" }, t:client { id = "pb" }
  a:send("hp", 4); b:send("hp", 5)
  for _ = 1, 3 do a:send("inc") end
  a:send("mark", "before")
  local pids = { a.publicId, b.publicId }
  t:close()
  return pids
end

describe("restore hooks that wait", function()
  local path
  before_each(function() path = tmpdb() end)
  after_each(function() rm(path) end)

  it("onStorageRestore waits; joins, frames and requests meanwhile queue and run once, in order, after it", function()
    stored(path)
    local t = testing.room(rdef { onStorageRestore = function(ctx)
      require("lunaroom.io").sleep(50)
      ctx.snapshot.count = ctx.snapshot.count * 10
      return ctx.snapshot
    end }, { storage = "sqlite:" .. path })
    assert.are.equal(1, t:waiting())
    local c = t:client { id = "pc" }
    c:send("inc")
    c:send("mark", "early")
    assert.is_nil(c:last("sync"), "not joined while the room restores")
    assert.are.equal(0, t.room.count) -- nothing applied to a half-built room
    t:advance(49)
    assert.is_nil(c:last("sync"))
    t:advance(1)
    assert.are.equal(31, t.room.count) -- restored (30), then the queued inc, once
    assert.are.equal("join pa,join pb,before,join pc,early", trail(t))
    assert.truthy(c:last("sync"))
    t:close()
  end)

  it("an HTTP request during a waiting restore is answered after it, with the restored state", function()
    stored(path)
    local t = testing.room(rdef { onStorageRestore = function(ctx)
      require("lunaroom.io").sleep(20)
      return ctx.snapshot
    end }, { storage = "sqlite:" .. path })
    local t0 = t:now()
    local res = t:http("GET", "/count")
    assert.are.equal(20, t:now() - t0)
    assert.are.same({ count = 3, trail = 3 }, res.json)
    t:close()
  end)

  it("onUserStorageRestore waits per user, in a fixed order; the snapshot is applied once all finished", function()
    local pids = stored(path)
    table.sort(pids)
    local seen = {}
    local t = testing.room(rdef { onUserStorageRestore = function(ctx)
      seen[#seen + 1] = ctx.publicId
      local res = require("lunaroom.io").request("GET", "http://profiles.test/" .. ctx.publicId)
      ctx.userSnapshot.hp = tonumber(res.body)
      return ctx.userSnapshot
    end }, { storage = "sqlite:" .. path, create = false })
    t:http_service(function(req) return { status = 200, body = req.url:match("/(%w+)$") == pids[1] and "40" or "50" }, 10 end)
    runtime.create_room(t.srv, t.party, t.id)
    assert.are.same({ pids[1] }, seen) -- one at a time
    t:advance(10)
    assert.are.same(pids, seen)
    assert.is_nil(t.room.players[pids[1]]) -- not applied before the last one finished
    t:advance(10)
    assert.are.equal(40, t.room.players[pids[1]].hp)
    assert.are.equal(50, t.room.players[pids[2]].hp)
    assert.are.equal(0, t:waiting())
    t:close()
  end)

  it("a restore hook that fails or times out after a wait: logged, the stored snapshot is used, queued events run", function()
    local pids = stored(path)
    testing.logs()
    local t = testing.room(rdef {
      waits = { timeout = 100 },
      onStorageRestore = function(ctx)
        require("lunaroom.io").request("GET", "http://never.test/") -- never answered: times out
        ctx.snapshot.count = 1000
        return ctx.snapshot
      end,
      onUserStorageRestore = function(ctx)
        require("lunaroom.io").sleep(5)
        error("profile service down")
      end,
    }, { storage = "sqlite:" .. path, create = false })
    t:http_service(function() return nil end) -- keeps every request pending
    local c = t:client { id = "pc" }
    c:send("inc")
    t:advance(100)
    t:advance(10)
    assert.are.equal(4, t.room.count) -- stored 3 (the hook's 1000 is not used) + the queued inc
    assert.are.equal(4, t.room.players[pids[1]].hp) -- stored snapshots
    assert.are.equal(5, t.room.players[pids[2]].hp)
    local logs = table.concat(testing.logs(), "\n")
    assert.truthy(logs:find("onStorageRestore failed: the stored snapshot is used", 1, true), logs)
    assert.truthy(logs:find("no answer after 100 ms (timeout)", 1, true), logs)
    assert.truthy(logs:find("onUserStorageRestore failed", 1, true), logs)
    assert.truthy(c:last("sync"))
    assert.are.equal("join pa,join pb,before,join pc", trail(t))
    t:close()
  end)

  it("writes a hook made before its wait do not leave storage apart from the restored state", function()
    stored(path)
    local t = testing.room(rdef { onStorageRestore = function(ctx)
      ctx.room.count = 99 -- committed at the wait, then replaced by the snapshot
      require("lunaroom.io").sleep(10)
      return ctx.snapshot
    end }, { storage = "sqlite:" .. path })
    t:advance(10)
    t:advance(0)
    assert.are.equal(3, t.room.count)
    t:close()
    local t2 = testing.room(rdef(), { storage = "sqlite:" .. path })
    assert.are.equal(3, t2.room.count)
    t2:close()
  end)

  it("a room disposed while its restore waits: queued requests get 503, queued joins are closed", function()
    stored(path)
    local t = testing.room(rdef { onStorageRestore = function() require("lunaroom.io").sleep(1000) end },
      { storage = "sqlite:" .. path })
    local c = t:client { id = "pc" }
    local res, pending = core.http(t.srv.h, "GET", "/parties/main/p/count", "", {}, nil)
    assert.is_nil(res)
    t.room:dispose()
    t:advance(0)
    local answer = core.http_take(pending)
    assert.are.equal(503, answer.status)
    assert.truthy(answer.body:find("disposed", 1, true))
    assert.truthy(c.closed, "the queued join is closed")
    assert.is_nil(c:last("sync"))
    assert.are.equal(0, t:waiting(true))
    t:close()
  end)

  it("a room woken from hibernation whose restore waits: its clients' actions queue, nothing lost or applied twice", function()
    local t = testing.room(rdef {
      hibernate = true, hibernateAfter = 100,
      onStorageRestore = function(ctx)
        require("lunaroom.io").sleep(30)
        return ctx.snapshot
      end,
    })
    t:advance(30) -- the first restore (empty storage) waits too
    local a = t:client { id = "pa" }
    a:send("mark", "m1")
    t:advance(200)
    assert.is_nil(t.room, "hibernated")
    a:send("mark", "m2") -- wakes it: the restore waits
    a:send("inc")
    local b = t:client { id = "pb" }
    b:send("mark", "b1")
    assert.is_truthy(t.room)
    assert.are.equal("", trail(t))
    t:advance(30)
    assert.are.equal("join pa,m1,m2,join pb,b1", trail(t))
    assert.are.equal(1, t.room.count)
    assert.is_nil(last_error(a))
    t:close()
  end)
end)

describe("a hibernated room whose restore waits, woken by a timer or with a close meanwhile", function()
  local function hdef(extra)
    local d = { path = "h", hibernate = true, hibernateAfter = 100,
      state = { players = lr.users(Player), trail = {} },
      actions = {
        later = function(r, _, ms)
          r:timer(ms, function(room) room.trail[#room.trail + 1] = "timer" end)
        end,
        mark = function(r, _, v) r.trail[#r.trail + 1] = v end,
      },
      onLeave = function(r) r.trail[#r.trail + 1] = "leave" end,
      onStorageRestore = function(ctx)
        if ctx.snapshot.trail and next(ctx.snapshot.trail) then require("lunaroom.io").sleep(20) end
        return ctx.snapshot
      end }
    for k, v in pairs(extra or {}) do d[k] = v end
    return lr.room(d)
  end

  it("a timer that wakes it runs once the restore finished", function()
    local t = testing.room(hdef())
    local a = t:client { id = "a" }
    a:send("mark", "m")
    a:send("later", 300)
    t:advance(200)
    assert.is_nil(t.room, "hibernated")
    t:advance(100) -- the timer wakes it: the restore waits 20 ms, the timer waits for it
    assert.are.equal("", trail(t))
    t:advance(20)
    assert.are.equal("m,timer", trail(t))
    t:close()
  end)

  it("a connection that closes while the restore waits goes offline once, after it", function()
    local t = testing.room(hdef())
    local a = t:client { id = "a" }
    a:send("mark", "m")
    local pid = a.publicId
    t:advance(200)
    assert.is_nil(t.room, "hibernated")
    local b = t:client { id = "b" } -- wakes it
    a:close()
    assert.are.equal("", trail(t))
    t:advance(20)
    assert.are.equal("m,leave", trail(t))
    assert.is_false(t.room.players[pid].online)
    assert.truthy(b:last("sync"))
    assert.are.equal(1, require("lunaroom.runtime").online_sessions(t.room))
    t:close()
  end)
end)

describe("a join that waits on a room that is disposed", function()
  it("is closed (1001), not left open outside the room", function()
    local t = testing.room({ path = "j", state = { n = 0 },
      onJoin = function() require("lunaroom.io").sleep(100) end })
    local c = t:client { id = "a" }
    assert.are.equal(1, t:waiting())
    t.room:dispose()
    assert.truthy(c.closed, "closed")
    assert.are.equal(0, t:waiting(true))
    t:close()
  end)
end)

describe("onSessionRestore that waits", function()
  local function tdef(extra)
    local d = { path = "room-{n}", state = { players = lr.users(lr.schema { name = "anon", gold = 0 }) },
      actions = {
        rich = function(_, p) p.gold = 100 end,
        go = function(room, _, target, conn)
          local token, err = room:sessionTransfer(conn, target)
          room:send(conn, { type = "transfer", value = { token = token, err = err } })
        end,
      },
      onSessionRestore = function(ctx)
        require("lunaroom.io").sleep(25)
        ctx.userSnapshot.gold = ctx.userSnapshot.gold + 1
        return ctx.userSnapshot
      end }
    for k, v in pairs(extra or {}) do d[k] = v end
    return lr.room(d)
  end

  it("room:sessionTransfer waits for the target's onSessionRestore; the token then works", function()
    local t = testing.room(tdef(), { id = "room-a" })
    local c = t:client { id = "priv-1" }
    local pid = c.publicId
    c:send("rich")
    t:client { room = "room-b", id = "x" } -- the target is live
    c:send("go", "room-b")
    assert.is_nil(c:last("transfer"))
    t:advance(25)
    local got = c:last("transfer").value
    assert.is_nil(got.err)
    assert.are.equal(22, #got.token)
    local c2 = t:client { room = "room-b", id = "other-id", query = { transferToken = got.token } }
    assert.are.equal(pid, c2.publicId)
    assert.are.equal(101, c2:last("sync").value.players[pid].gold)
    t:close()
  end)

  it("room:sessionTransfer to a room whose restore waits waits for it, then for onSessionRestore", function()
    local t = testing.room(tdef { onStorageRestore = function(ctx)
      require("lunaroom.io").sleep(10)
      return ctx.snapshot
    end }, { id = "room-a" })
    t:advance(10)
    local c = t:client { id = "priv-1" }
    c:send("rich")
    c:send("go", "room-c") -- created now: restore 10 ms, then onSessionRestore 25 ms
    t:advance(34)
    assert.is_nil(c:last("transfer"))
    t:advance(1)
    local got = c:last("transfer").value
    assert.is_nil(got.err)
    local c2 = t:client { room = "room-c", id = "o", query = { transferToken = got.token } }
    assert.are.equal(101, c2:last("sync").value.players[c.publicId].gold)
    t:close()
  end)

  it("POST /session-transfer is answered once onSessionRestore finished", function()
    local t = testing.room(tdef(), { id = "room-a", env = { SHARD_SECRET = "s3" } })
    local t0 = t:now()
    local res = t:http("POST", "/session-transfer", { body = { privateId = "p1", publicId = "q1",
      userSnapshot = { gold = 5 } }, headers = { ["x-access-shard"] = "s3" } })
    assert.are.equal(200, res.status)
    assert.are.equal(25, t:now() - t0)
    assert.are.equal(6, t.room.players.q1.gold)
    local c = t:client { id = "o", query = { transferToken = res.json.transferToken } }
    assert.are.equal("q1", c.publicId)
    t:close()
  end)
end)

describe("interceptorPacket that waits", function()
  local function idef(extra)
    local d = { path = "i", state = { n = 0 },
      actions = {
        say = function(room, _, v) room:broadcast({ type = "msg", value = v }) end,
      },
      interceptorPacket = function(_, _, packet, conn)
        if packet.type == "msg" then
          if packet.value.slow and conn.sessionId == "a" then require("lunaroom.io").sleep(packet.value.slow) end
          if packet.value.fail and conn.sessionId == "a" then
            require("lunaroom.io").sleep(1)
            error("interceptor down")
          end
          packet.value.to = conn.sessionId
        end
        return packet
      end }
    for k, v in pairs(extra or {}) do d[k] = v end
    return d
  end
  local function msgs(c)
    local out = {}
    for _, p in ipairs(c:take()) do
      if p.type == "msg" then out[#out + 1] = p.value.n .. ">" .. p.value.to end
    end
    return table.concat(out, ",")
  end

  it("packets to a connection stay in order behind one its interceptor waits on; others are not held", function()
    local t = testing.room(idef())
    local a, b = t:client { id = "a" }, t:client { id = "b" }
    a:clear(); b:clear()
    b:send("say", { n = 1, slow = 20 })
    b:send("say", { n = 2 })
    b:send("say", { n = 3, slow = 5 })
    b:send("say", { n = 4 })
    assert.are.equal("1>b,2>b,3>b,4>b", msgs(b)) -- b's interceptor does not wait
    assert.are.equal("", msgs(a))
    t:advance(20)
    assert.are.equal("1>a,2>a", msgs(a)) -- 3 waits in turn, 4 behind it
    t:advance(5)
    assert.are.equal("3>a,4>a", msgs(a))
    b:send("say", { n = 5 })
    assert.are.equal("5>a", msgs(a)) -- nothing waits any more: sent at once
    assert.are.equal(0, t:waiting())
    t:close()
  end)

  it("an interceptor that fails after a wait drops that packet only", function()
    local t = testing.room(idef())
    local a, b = t:client { id = "a" }, t:client { id = "b" }
    a:clear()
    b:send("say", { n = 1, fail = true })
    b:send("say", { n = 2 })
    t:advance(1)
    assert.are.equal("2>a", msgs(a))
    t:close()
  end)

  it("a connection with too many packets behind its waiting interceptor is closed", function()
    local old = runtime.MAX_HELD_PACKETS
    runtime.MAX_HELD_PACKETS = 3
    local t = testing.room(idef())
    local a, b = t:client { id = "a" }, t:client { id = "b" }
    b:send("say", { n = 1, slow = 100 })
    for i = 2, 5 do b:send("say", { n = i }) end
    runtime.MAX_HELD_PACKETS = old
    assert.truthy(a.closed, "closed")
    assert.falsy(b.closed)
    t:advance(100)
    t:close()
  end)
end)

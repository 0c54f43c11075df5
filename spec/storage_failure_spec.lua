-- A failed storage write (issue "Hardening", item 7): with throttleStorage 0
-- nothing is shown that is not stored. While a room's writes fail it refuses
-- actions (error code "storage"), joins and requests, holds what it sends,
-- retries its writes from a timer, and sends the held packets in order once
-- they commit. /readyz answers 503 meanwhile. The memory store's injected
-- failures (t:fail_storage) stand in for a full disk.
local testing = require "lunaroom.testing"
local lr = require "lunaroom"
local core = require "lunaroom.core"

local function def(throttle)
  return lr.room {
    path = "{name}", throttleStorage = throttle or 0, rateLimit = { rate = 0, burst = 0 },
    state = { count = 0, note = lr.sync("", { persist = false }) },
    actions = {
      inc = function(r) r.count = r.count + 1 end,
      -- a write, then packets that show it
      shout = function(r, _, _, conn)
        r.count = r.count + 1
        r:broadcast({ type = "shout", value = r.count })
        r:send(conn, { type = "you", value = r.count })
      end,
      hello = function(r, _, _, conn) r:send(conn, { type = "hello" }) end,
    },
    requests = {
      ["GET /count"] = function(r) return { count = r.count } end,
      ["POST /inc"] = function(r) r.count = r.count + 1; return { count = r.count } end,
    },
  }
end

local function readyz(t) return core.http(t.srv.h, "GET", "/readyz", "", {}, nil) end

-- Packets of c as compact strings: "sync:3", "error:storage", "shout:2" ...
local function seen(c)
  local out = {}
  for _, p in ipairs(c:take()) do
    if p.type == "sync" then out[#out + 1] = "sync:" .. tostring(p.value.count)
    elseif p.type == "error" then out[#out + 1] = "error:" .. p.value.code
    else out[#out + 1] = p.type .. ":" .. tostring(p.value) end
  end
  return out
end

describe("a failed storage write", function()
  it("holds the packet, refuses actions with a storage error, retries, then sends in order", function()
    local t = testing.room(def(0), { id = "a" })
    local a, b = t:client { id = "a" }, t:client { id = "b" }
    a:send("inc")
    assert.are.equal(1, t.storage:get("state:count"))
    a:clear(); b:clear()
    testing.logs()
    t:fail_storage(2) -- the commit and the first retry fail
    a:send("inc")
    -- not stored: nobody is shown count = 2; the sender learns why
    assert.are.same({ "error:storage" }, seen(a))
    assert.are.same({}, seen(b))
    assert.are.equal(1, t.storage:get("state:count"))
    assert.matches("room main/a: its storage writes fail", table.concat(testing.logs(), "\n"))
    -- actions are refused while the writes fail, and change nothing
    b:send("inc")
    assert.are.same({ "error:storage" }, seen(b))
    assert.are.equal(2, t.room.count)
    -- /readyz says so, with the room and the reason
    local r = readyz(t)
    assert.are.equal(503, r.status)
    local body = core.decode(r.body)
    assert.are.equal(1, body.failingRooms)
    assert.are.equal("main/a", body.rooms[1].room)
    assert.matches("injected failure", body.rooms[1].error)
    -- HTTP requests and new clients are refused too
    assert.are.equal(503, t:http("GET", "/count").status)
    local c = t:client { id = "c" }
    assert.are.equal(1013, c.closed.code)
    t:advance(1000) -- retry 1 fails (backoff doubles)
    assert.are.same({}, seen(a))
    assert.are.equal(503, readyz(t).status)
    t:advance(2000) -- retry 2 commits
    assert.are.equal(2, t.storage:get("state:count"))
    assert.are.same({ "sync:2" }, seen(a))
    assert.are.same({ "sync:2" }, seen(b))
    assert.are.equal(200, readyz(t).status)
    -- and the room takes actions again
    b:send("inc")
    assert.are.same({ "sync:3" }, seen(b))
    assert.are.equal(3, t.storage:get("state:count"))
    t:close()
  end)

  it("holds what a handler sends after a write until it commits, in order", function()
    local t = testing.room(def(0), { id = "a" })
    local a, b = t:client { id = "a" }, t:client { id = "b" }
    a:clear(); b:clear()
    a:send("shout") -- stored at once: everything goes out, in the handler's order
    assert.are.same({ "shout:1", "you:1", "sync:1" }, seen(a))
    assert.are.same({ "shout:1", "sync:1" }, seen(b))
    t:fail_storage(1)
    a:send("shout")
    assert.are.same({ "error:storage" }, seen(a)) -- the error does not wait
    assert.are.same({}, seen(b))
    t:advance(1000)
    assert.are.same({ "shout:2", "you:2", "sync:2" }, seen(a))
    assert.are.same({ "shout:2", "sync:2" }, seen(b))
    assert.are.equal(2, t.storage:get("state:count"))
    -- a packet sent before any write shows nothing new: it is not held
    a:send("hello")
    assert.are.same({ "hello:nil" }, seen(a))
    t:close()
  end)

  it("packets of timers and leaving clients wait too; nothing stored is dropped", function()
    local t = testing.room(def(0), { id = "a" })
    local a, b = t:client { id = "a" }, t:client { id = "b" }
    a:clear(); b:clear()
    t:fail_storage(1000)
    a:send("inc")
    -- a change from outside an action (a timer, onLeave...) while failing
    t.room.count = 10
    core.advance(t.srv.h, 0)
    assert.are.same({}, seen(b))
    t:advance(1000); t:advance(2000); t:advance(4000)
    assert.are.same({}, seen(b))
    assert.are.equal(0, t.storage:get("state:count") or 0)
    t:fail_storage(0)
    t:advance(8000)
    assert.are.equal(10, t.storage:get("state:count"))
    assert.are.same({ "sync:1", "sync:10" }, seen(b))
    t:close()
  end)

  it("an HTTP request whose write fails answers 503 and its change waits for the retry", function()
    local t = testing.room(def(0), { id = "a" })
    local a = t:client { id = "a" }
    a:clear()
    t:fail_storage(1)
    local res = t:http("POST", "/inc")
    assert.are.equal(503, res.status)
    assert.are.equal("storage", res.json.code)
    assert.are.same({}, seen(a))
    t:advance(1000)
    assert.are.equal(1, t.storage:get("state:count"))
    assert.are.same({ "sync:1" }, seen(a))
    assert.are.equal(1, t:http("GET", "/count").json.count)
    t:close()
  end)

  it("throttleStorage > 0: sync goes first by design, but a failing room still refuses and retries", function()
    local t = testing.room(def(500), { id = "a" })
    local a = t:client { id = "a" }
    a:clear()
    a:send("inc")
    assert.are.same({ "sync:1" }, seen(a)) -- shown before the throttled write
    assert.is_nil(t.storage:get("state:count"))
    t:fail_storage(1)
    t:advance(500) -- the throttled write fails
    assert.is_nil(t.storage:get("state:count"))
    a:send("inc")
    assert.are.same({ "error:storage" }, seen(a))
    assert.are.equal(503, readyz(t).status)
    t:advance(1000)
    assert.are.equal(1, t.storage:get("state:count"))
    assert.are.equal(200, readyz(t).status)
    a:send("inc")
    assert.are.same({ "sync:2" }, seen(a))
    t:close()
  end)

  it("a client whose held packets pass 4 MiB is closed (1013) instead of holding more", function()
    local big = lr.room {
      path = "{name}", rateLimit = { rate = 0, burst = 0 }, state = { count = 0 },
      actions = { inc = function(r) r.count = r.count + 1 end },
    }
    local t = testing.room(big, { id = "a" })
    local a, b = t:client { id = "a" }, t:client { id = "b" }
    t:fail_storage(1000)
    a:send("inc")
    local blob = string.rep("x", 512 * 1024)
    for _ = 1, 9 do
      t.room:broadcast({ type = "blob", value = blob })
      t.room.count = t.room.count + 1
      core.advance(t.srv.h, 0)
    end
    assert.are.equal(1013, b.closed.code)
    t:close()
  end)
end)

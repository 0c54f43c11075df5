-- Handlers that wait, continued (issue 17): room-to-room fetch resumed by
-- the answer itself (no poll), restore hooks and the packet interceptor that
-- wait. On the virtual clock, README "Waiting for outside services".
local testing = require "lunaroom.testing"
local core = require "lunaroom.core"

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

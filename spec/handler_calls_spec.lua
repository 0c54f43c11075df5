-- Every call from the host into Lua goes through the rules' counted call
-- (host/bridge.c, issue 21): a fetch answer, a timer, a reload step are
-- counted in the handler-call metrics (core.stats calls, call_seconds,
-- histogram) like an action, and one that fails leaves the room's state as
-- it was and sends its clients nothing.
local testing = require "lunaroom.testing"
local core = require "lunaroom.core"

local function stats(t)
  local st = core.stats(t.srv.h)
  local hist = 0
  for _, b in ipairs(st.hist or {}) do hist = hist + (b[2] or 0) end
  return { calls = st.calls, seconds = st.call_seconds, hist = hist }
end

-- shop fetches /balance from bank, whose route waits 30 ms; what shop's
-- handler does with the answer is `after`.
local function fetcher(after)
  return testing.room({
    path = "shop",
    state = { trail = {}, n = 0 },
    actions = {
      ask = function(room)
        local res = room.parties.main:get("bank"):fetch("/balance")
        room.n = room.n + 1
        room.trail[#room.trail + 1] = "balance " .. tostring(res.json().balance)
        if after then after(room) end
      end,
    },
  }, { rooms = { { path = "bank", requests = { ["GET /balance"] = function()
    require("lunaroom.io").sleep(30)
    return { balance = 7 }
  end } } } })
end

describe("handler-call metrics", function()
  it("count the fetch answer that resumes a waiting handler", function()
    local t = fetcher()
    local c = t:client { id = "a" }
    c:send("ask")
    local before = stats(t)
    t:advance(30) -- bank's sleep timer; inside it, the answer delivered to shop
    local after = stats(t)
    -- two calls: bank's timer, and the fetch answer (core.http_take's
    -- subscriber), which resumed shop's handler
    assert.are.equal(2, after.calls - before.calls)
    assert.are.equal(2, after.hist - before.hist)
    assert.is_true(after.seconds >= before.seconds)
    assert.are.equal(1, t.room.n)
    t:close()
  end)

  it("a failing fetch answer is counted, changes nothing and sends no patch", function()
    local t = fetcher(function() error("boom after the fetch") end)
    local c = t:client { id = "a" }
    c:send("ask")
    c:clear()
    local before = stats(t)
    t:advance(30)
    local after = stats(t)
    assert.are.equal(2, after.calls - before.calls)
    assert.are.equal(0, t.room.n)
    assert.are.equal(0, #t.room.trail)
    local got = c.raw
    assert.are.equal(1, #got, table.concat(got, "\n")) -- the error, no sync patch
    local e = core.decode(got[1])
    assert.are.equal("error", e.type)
    assert.are.equal("handler", e.value.code)
    t:close()
  end)

  it("a failing timer is counted, changes nothing and sends no patch", function()
    local t = testing.room {
      path = "clock",
      state = { n = 0 },
      actions = {
        arm = function(room)
          room:timer(10, function(r)
            r.n = r.n + 1
            error("boom in the timer")
          end)
        end,
      },
    }
    local c = t:client { id = "a" }
    c:send("arm")
    c:clear()
    local before = stats(t)
    t:advance(10)
    local after = stats(t)
    assert.are.equal(1, after.calls - before.calls)
    assert.are.equal(0, t.room.n)
    assert.are.same({}, c.raw)
    t:close()
  end)

  it("count every step of a reload", function()
    local t = testing.room {
      path = "rl",
      state = { n = 0 },
      actions = { inc = function(r) r.n = r.n + 1 end },
    }
    local before = stats(t)
    local ok, err = t:reload([[
local lr = require "lunaroom"
return lr.room { path = "rl", state = { n = 0 }, actions = { inc = function(r) r.n = r.n + 2 end } }
]])
    assert.is_true(ok, err)
    local after = stats(t)
    -- require lunaroom.reload, plan, prepare, commit, after, done
    assert.are.equal(6, after.calls - before.calls)
    t:close()
  end)
end)

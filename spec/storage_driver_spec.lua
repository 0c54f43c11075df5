-- A Lua storage backend's calls run on the handlers' driver
-- (lunaroom.tasks.backend): its waits are armed as a handler's are, so the
-- fake HTTP service of lunaroom.testing answers its lunaroom.io.request on
-- the virtual clock, and every call is counted in the handler metrics.
local testing = require "lunaroom.testing"
local lr = require "lunaroom"
local core = require "lunaroom.core"

local def = lr.room { path = "{name}", rateLimit = { rate = 0, burst = 0 },
  state = { count = 0 },
  actions = { inc = function(r) r.count = r.count + 1 end } }

-- The KV service: rows[key] = json; GET lists, POST applies (after delay ms).
local function kv(t, delay, fail)
  local rows = {}
  t:http_service {
    ["GET http://kv.test/main/a"] = function()
      local list = {}
      for k, v in pairs(rows) do list[#list + 1] = { k, v } end
      table.sort(list, function(x, y) return x[1] < y[1] end)
      return { status = 200, body = core.encode(list) }, delay
    end,
    ["POST http://kv.test/main/a"] = function(req)
      if fail.n > 0 then
        fail.n = fail.n - 1
        return { status = 503, body = "down" }, delay
      end
      for _, o in ipairs(core.decode(req.body)) do
        if o[1] == "put" then
          rows[o[2]] = o[3]
        elseif o[1] == "del" then
          rows[o[2]] = nil
        else
          for k in pairs(rows) do if k:sub(1, #o[2]) == o[2] then rows[k] = nil end end
        end
      end
      return { status = 204, body = "" }, delay
    end,
  }
  return rows
end

describe("a Lua backend on the handlers' driver", function()
  it("waits for the fake HTTP service on the virtual clock, loads and writes behind", function()
    local t = testing.room(def, { storage = "lua:spec/fixtures/kv_backend.lua", id = "a", create = false })
    local rows = kv(t, 40, { n = 0 })
    rows["state:count"] = "41"
    local calls0 = core.stats(t.srv.h).calls
    local c = t:client { id = "s1" }
    assert.are.equal(1, #t.http_requests) -- the load: one GET, answered 40 ms later
    assert.are.equal("GET", t.http_requests[1].method)
    assert.is_nil(t.room)
    t:advance(39)
    assert.is_nil(t.room)
    t:advance(1)
    t:advance(200) -- the join's session records go behind; then the snapshot
    assert.are.equal(41, c:last("sync").value.count)
    local posts = #t.http_requests
    c:send("inc")
    assert.are.equal(posts + 1, #t.http_requests) -- the write went out at once...
    assert.are.equal(41, c:last("sync").value.count) -- ...and its patch waits for the answer
    t:advance(39)
    assert.are.equal(41, c:last("sync").value.count)
    t:advance(1)
    assert.are.equal("42", rows["state:count"])
    assert.are.equal(42, c:last("sync").value.count)
    -- the backend calls went through the rules' call helper: counted
    assert.is_true(core.stats(t.srv.h).calls > calls0 + 2)
    t:close()
  end)

  it("a failed write stays queued and is retried; the service's answer is not raised", function()
    local t = testing.room(def, { storage = "lua:spec/fixtures/kv_backend.lua", id = "a", create = false })
    local fail = { n = 0 }
    local rows = kv(t, 10, fail)
    local c = t:client { id = "s1" }
    t:advance(100)
    assert.are.equal(0, c:last("sync").value.count)
    fail.n = 1
    testing.logs()
    c:send("inc")
    t:advance(10) -- refused by the service: kept, retried after 1 s
    assert.is_nil(rows["state:count"])
    assert.matches("write to the Lua backend failed", table.concat(testing.logs(), "\n"))
    assert.are.equal(0, c:last("sync").value.count) -- not shown: not stored
    t:advance(1000)
    t:advance(10)
    assert.are.equal("1", rows["state:count"])
    assert.are.equal(1, c:last("sync").value.count)
    t:close()
  end)
end)

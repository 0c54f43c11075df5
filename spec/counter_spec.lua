-- The seed README's testing example, on rooms/counter.lua.
local testing = require "lunaroom.testing"

describe("rooms/counter.lua (seed README testing example)", function()
  local t
  before_each(function() t = testing.room("rooms/counter.lua") end)
  after_each(function() t:close() end)

  it("sends each client a pId snapshot first", function()
    local c = t:client()
    assert.are.equal(1, #c.packets)
    local p = c.packets[1]
    assert.are.equal("sync", p.type)
    assert.are.equal(0, p.value.count)
    assert.is_string(p.value.pId)
    assert.are.equal(8, #p.value.pId)
    assert.truthy(c.raw[1]:find('^{"type":"sync","value":{"pId":"'))
  end)

  it("gives both clients the exact same patch for one increment", function()
    local c1, c2 = t:client(), t:client()
    c1:clear(); c2:clear()
    c1:send("increment")
    assert.are.same({ '{"type":"sync","value":{"count":1}}' }, c1.raw)
    assert.are.same({ '{"type":"sync","value":{"count":1}}' }, c2.raw)
    assert.are.equal(1, t.room.count)
    -- what the room handed to storage (seed: state:count = 1)
    assert.are.equal(1, t.storage:get("state:count"))
  end)

  it("adds the optional amount", function()
    local c = t:client()
    c:send("increment", { amount = 5 })
    assert.are.equal(5, t.room.count)
    assert.are.equal(5, c:last().value.count)
  end)

  it("rejects an invalid amount with a validation error and changes nothing", function()
    local c = t:client()
    c:clear()
    c:send("increment", { amount = "lots" })
    assert.are.equal(0, t.room.count)
    local e = c:last()
    assert.are.equal("error", e.type)
    assert.are.equal("validation", e.value.code)
    assert.are.equal("increment", e.value.action)
    assert.are.equal("amount: must be a number", e.value.message)
  end)

  it("serves GET /count", function()
    t.room.count = 7
    local r = t:http("GET", "/count")
    assert.are.equal(200, r.status)
    assert.are.same({ count = 7 }, r.json)
    assert.are.equal("*", r.headers["access-control-allow-origin"])
  end)

  it("a second client joining gets the full state", function()
    local c1 = t:client()
    c1:send("increment", { amount = 2 })
    local c2 = t:client()
    assert.are.equal(2, c2.packets[1].value.count)
  end)
end)

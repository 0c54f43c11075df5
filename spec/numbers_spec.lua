-- Numbers stay exact on the wire and in storage (design.md §9).
local testing = require "lunaroom.testing"
local lr = require "lunaroom"

describe("numbers", function()
  it("0.1+0.2 and 2^53 round-trip; a wire 3 is a Lua integer", function()
    local seen
    local t = testing.room(lr.room { path = "n", state = { a = 0, b = 0, c = 0 },
      actions = {
        put = function(r) r.a = 0.1 + 0.2; r.b = 2 ^ 53; r.c = 9007199254740993 end,
        typ = function(_, _, v) seen = { math.type(v.i), math.type(v.f), v.i } end,
      } })
    local c = t:client(); c:clear()
    c:send("put")
    assert.are.same({ '{"type":"sync","value":{"a":0.30000000000000004,"b":9007199254740992,"c":9007199254740993}}' }, c.raw)
    assert.are.equal(0.1 + 0.2, t.storage:get("state:a"))
    assert.are.equal(2 ^ 53, t.storage:get("state:b"))
    assert.are.equal(9007199254740993, t.storage:get("state:c"))
    c:send_raw('{"action":"typ","value":{"i":3,"f":3.5}}')
    assert.are.same({ "integer", "float", 3 }, seen)
    t:close()
  end)
end)

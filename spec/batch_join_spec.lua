-- Joins batched by a pass of the network loop (room.c lr_room_join,
-- lr_server_batch_joins): the clients that join an unthrottled room during
-- one pass get their snapshot when the pass ends; the others get one patch
-- with every new user; anything sent to a joiner meanwhile follows its
-- snapshot, in order.
local testing = require "lunaroom.testing"
local lr = require "lunaroom"

local Player = lr.schema { x = lr.sync(0) }

local function game(extra)
  local def = {
    path = "g",
    state = { players = lr.users(Player), round = lr.sync(1) },
    onJoin = function(room, _player, conn)
      room:broadcast({ type = "joined", value = conn.state.publicId }, { conn.id })
    end,
    actions = {
      move = function(_room, player, x) player.x = x end,
      next = function(room) room.round = room.round + 1 end,
      shout = function(room, _p, text) room:broadcast { type = "shout", value = text } end,
      fail = function(room) room.round = 99; error("no") end,
    },
  }
  for k, v in pairs(extra or {}) do def[k] = v end
  return testing.room(lr.room(def))
end

local function keys(t)
  local out = {}
  for k in pairs(t or {}) do out[#out + 1] = k end
  table.sort(out)
  return out
end

describe("joins batched by a network pass", function()
  it("joiners get one snapshot each at the end of the pass, the others one patch", function()
    local t = game()
    local old = t:client(); old:clear()
    local a, b, c
    t:pass(function()
      a, b, c = t:client(), t:client(), t:client()
      assert.are.same({}, a.raw) -- nothing before the pass ends
      assert.is_nil(old:last("sync")) -- (the onJoin notices go out at once)
    end)
    local all = keys { [old.publicId] = 1, [a.publicId] = 1, [b.publicId] = 1, [c.publicId] = 1 }
    for _, cl in ipairs { a, b, c } do
      local first = cl.packets[1]
      assert.are.equal("sync", first.type)
      assert.are.equal(cl.publicId, first.value.pId)
      assert.are.same(all, keys(first.value.players))
    end
    -- old: the joined notices (sent during the pass), then one patch with the three players
    local syncs = {}
    for _, p in ipairs(old.packets) do
      if p.type == "sync" then syncs[#syncs + 1] = p end
    end
    assert.are.equal(1, #syncs)
    assert.are.same(keys { [a.publicId] = 1, [b.publicId] = 1, [c.publicId] = 1 }, keys(syncs[1].value.players))
    t:close()
  end)

  it("what is sent to a joiner during the pass follows its snapshot, in order", function()
    local t = game()
    local old = t:client(); old:clear()
    local a, b
    t:pass(function()
      a = t:client()
      b = t:client() -- its onJoin broadcasts "joined" to a, still waiting for its snapshot
      old:send("shout", "hi")
      a:send("nope") -- an error packet for a
    end)
    local types = {}
    for _, p in ipairs(a.packets) do types[#types + 1] = p.type end
    assert.are.same({ "sync", "joined", "shout", "error" }, types)
    assert.are.equal(b.publicId, a.packets[2].value)
    assert.are.equal(a.publicId, a.packets[1].value.pId)
    t:close()
  end)

  it("an action in the same pass: the joiner's snapshot has it, the others' patch too", function()
    local t = game()
    local old = t:client(); old:clear()
    local a
    t:pass(function()
      a = t:client()
      old:send("next")
      old:send("fail") -- rolled back: never seen
    end)
    assert.are.equal(2, a.packets[1].value.round)
    local last = old:last("sync")
    assert.are.equal(2, last.value.round)
    assert.is_not_nil(last.value.players[a.publicId])
    assert.are.equal(2, t.room.round)
    t:close()
  end)

  it("a joiner that leaves before the pass ends is forgotten; the others are not disturbed", function()
    local t = game()
    local a, b
    t:pass(function()
      a = t:client()
      b = t:client()
      a:close()
    end)
    assert.are.equal(b.publicId, b.packets[1].value.pId)
    assert.are.same({}, a.raw)
    t:close()
  end)

  it("a join that changes no state still gets its snapshot", function()
    local t = testing.room(lr.room { path = "plain", state = { n = lr.sync(5) } })
    local a
    t:pass(function() a = t:client() end)
    assert.are.same({ pId = a.publicId, n = 5 }, a.packets[1].value)
    t:close()
  end)

  it("throttled rooms are not batched: the snapshot goes out at once", function()
    local t = game { throttleSync = 50 }
    local a
    t:pass(function()
      a = t:client()
      assert.are.equal(a.publicId, a.packets[1].value.pId)
    end)
    t:close()
  end)

  it("the same packets reach a joiner with or without batching", function()
    local function script(batched)
      local t = game()
      local old = t:client { id = "old" }
      local a
      local function body()
        a = t:client { id = "a" }
        old:send("move", 7)
      end
      if batched then t:pass(body) else body() end
      a:send("move", 3)
      local snapshot = a.packets[1].value
      local state = { round = t.room.round }
      t:close()
      return snapshot.players, state
    end
    local p1, s1 = script(false)
    local p2, s2 = script(true)
    assert.are.same(s1, s2)
    local function xs(players)
      local out = {}
      for _, p in pairs(players) do out[#out + 1] = p.x end
      table.sort(out)
      return out
    end
    -- unbatched: a's snapshot was taken before old moved; batched: after
    assert.are.same({ 0, 0 }, xs(p1))
    assert.are.same({ 0, 7 }, xs(p2))
  end)
end)

-- Sessions and users (protocol.md §2.5, §3.1-3.5, Part 1 rows 1, 7, 12).
local testing = require "lunaroom.testing"
local lr = require "lunaroom"

local Player = lr.schema { x = lr.sync(0), name = lr.sync("anon"), online = lr.connected() }

local function game(extra)
  local def = { path = "g", state = { players = lr.users(Player) },
    actions = { move = function(_, p, v) p.x = v end } }
  for k, v in pairs(extra or {}) do def[k] = v end
  return testing.room(lr.room(def))
end

describe("sessions", function()
  it("creates a user keyed by publicId with the schema defaults", function()
    local t = game()
    local c = t:client { id = "sess-1" }
    local p = c.packets[1].value
    local pid = p.pId
    assert.is_truthy(pid:match("^[A-Za-z0-9]+$"))
    assert.are.same({ x = 0, name = "anon", online = true }, p.players[pid])
    assert.are.equal(pid, c.publicId)
    assert.are.equal(0, t.room.players[pid].x)
    t:close()
  end)

  it("join order: others see the new user in one packet, the joiner only its snapshot", function()
    local t = game()
    local a = t:client { id = "a" }
    a:clear()
    local b = t:client { id = "b" }
    assert.are.equal(1, #b.packets)
    assert.is_string(b.packets[1].value.pId)
    assert.are.equal(1, #a.packets)
    local bp = b.publicId
    assert.are.same({ type = "sync", value = { players = { [bp] = { x = 0, name = "anon", online = true } } } }, a.packets[1])
    t:close()
  end)

  it("reconnect with the same id keeps the publicId and the user's data", function()
    local t = game()
    local c = t:client { id = "sess-1" }
    local pid = c.publicId
    c:send("move", 42)
    c:close()
    local c2 = t:client { id = "sess-1" }
    assert.are.equal(pid, c2.publicId)
    assert.are.equal(42, c2.packets[1].value.players[pid].x)
    assert.is_true(c2.packets[1].value.players[pid].online)
    t:close()
  end)

  it("two sockets with one id share a user that goes offline only after both close", function()
    local t = game()
    local watcher = t:client { id = "w" }
    local a = t:client { id = "same" }
    local b = t:client { id = "same" }
    assert.are.equal(a.publicId, b.publicId)
    local pid = a.publicId
    watcher:clear()
    a:close()
    assert.is_true(t.room.players[pid].online)
    assert.are.same({}, watcher.raw)
    b:close()
    assert.is_false(t.room.players[pid].online)
    assert.are.same({ '{"type":"sync","value":{"players":{"' .. pid .. '":{"online":false}}}}' }, watcher.raw)
    t:close()
  end)

  it("gives different sessions different users", function()
    local t = game()
    local a, b = t:client { id = "a" }, t:client { id = "b" }
    assert.are_not.equal(a.publicId, b.publicId)
    assert.are.equal(2, #t.room.players)
    t:close()
  end)

  it("uses _pk when there is no id (row 1), else a random session", function()
    local t = game()
    local a = t:client { query = { _pk = "pk-1" } }
    local pid = a.publicId
    a:close()
    local b = t:client { query = { _pk = "pk-1" } }
    assert.are.equal(pid, b.publicId)
    local c = t:client()
    assert.are_not.equal(pid, c.publicId)
    t:close()
  end)

  it("stores session records in the reference's layout", function()
    local t = game()
    local c = t:client { id = "sess-1" }
    local s = t.storage:get("session:sess-1")
    assert.are.equal(c.publicId, s.publicId)
    assert.is_true(s.connected)
    assert.is_number(s.created)
    assert.are.same({ "sess-1" }, t.storage:get("session-public:" .. c.publicId))
    c:close()
    s = t.storage:get("session:sess-1")
    assert.is_false(s.connected)
    assert.are.equal(t:now(), s.disconnectedAt)
    t:close()
  end)

  it("expires a disconnected session after 5 minutes, deleting the user with $delete", function()
    local t = game()
    local watcher = t:client { id = "w" }
    local c = t:client { id = "gone" }
    local pid = c.publicId
    c:close()
    watcher:clear()
    t:advance(299999)
    assert.is_not_nil(t.room.players[pid])
    t:advance(1)
    assert.is_nil(t.room.players[pid])
    assert.are.same({ '{"type":"sync","value":{"players":{"' .. pid .. '":"$delete"}}}' }, watcher.raw)
    assert.is_nil(t.storage:get("session:gone"))
    -- the delete compacted storage: no tombstones, one state:. entry
    local st = t.storage:get("state:.")
    assert.is_nil(st.players[pid])
    t:close()
  end)

  it("a reconnect within the expiry window keeps the session", function()
    local t = game { sessionExpiryTime = 1000 }
    local c = t:client { id = "s" }
    local pid = c.publicId
    c:close()
    t:advance(500)
    local c2 = t:client { id = "s" }
    t:advance(5000)
    assert.are.equal(pid, c2.publicId)
    assert.is_not_nil(t.room.players[pid])
    t:close()
  end)

  it("without lr.connected() the others get user_disconnected", function()
    local t = testing.room(lr.room { path = "nc", state = { users = lr.users(lr.schema { x = 0 }) } })
    local w = t:client { id = "w" }
    local c = t:client { id = "c" }
    local pid = c.publicId
    w:clear()
    c:close()
    assert.are.same({ type = "user_disconnected", value = { publicId = pid } }, w.packets[1])
    t:close()
  end)

  it("without a users collection every connection gets a new publicId and no session", function()
    local t = testing.room("rooms/counter.lua")
    local a = t:client { id = "same" }
    local pa = a.publicId
    a:close()
    local b = t:client { id = "same" }
    assert.are_not.equal(pa, b.publicId)
    assert.is_nil(t.storage:get("session:same"))
    t:close()
  end)

  it("runs onJoin and onLeave with the user, the connection and the request", function()
    local seen = {}
    local t = game {
      onJoin = function(_, user, conn, ctx)
        seen[#seen + 1] = { "join", user.name, conn.sessionId, ctx.request.query.name }
        user.name = ctx.request.query.name
      end,
      onLeave = function(_, user, conn) seen[#seen + 1] = { "leave", user.name, conn.sessionId } end,
    }
    local c = t:client { id = "s1", query = { name = "ann" } }
    assert.are.equal("ann", c.packets[1].value.players[c.publicId].name)
    c:close()
    assert.are.same({ { "join", "anon", "s1", "ann" }, { "leave", "ann", "s1" } }, seen)
    t:close()
  end)

  it("enforces maxUsers with close code 4029 (row 7)", function()
    local t = game { maxUsers = 2 }
    local a, b = t:client { id = "a" }, t:client { id = "b" }
    local c = t:client { id = "c" }
    assert.are.same({ code = 4029, reason = "room full" }, c.closed)
    -- another socket of an existing session is not a new user
    local a2 = t:client { id = "a" }
    assert.is_nil(a2.closed)
    b:close()
    local d = t:client { id = "d" }
    assert.is_nil(d.closed)
    assert.is_nil(a.closed)
    t:close()
  end)

  it("marks every user offline when the room starts again (row 12)", function()
    local path = os.tmpname()
    os.remove(path)
    local def = lr.room { path = "g", state = { players = lr.users(Player) } }
    local t = testing.room(def, { storage = "sqlite:" .. path })
    local c = t:client { id = "s1" }
    local pid = c.publicId
    t.room.players[pid].x = 5
    -- simulate a crash: drop the server without closing sockets gracefully
    t:close()
    local t2 = testing.room(def, { storage = "sqlite:" .. path })
    assert.are.equal(5, t2.room.players[pid].x)
    assert.is_false(t2.room.players[pid].online)
    assert.is_false(t2.storage:get("session:s1").connected)
    local c2 = t2:client { id = "s1" }
    assert.are.equal(pid, c2.publicId)
    t2:close()
    os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm")
  end)
end)

describe("session transfer (same process)", function()
  it("moves a user to another room; the token reconnects with the same publicId", function()
    local tokens = {}
    local def = lr.room { path = "room-{n}", state = { players = lr.users(lr.schema { name = "anon", gold = 0 }) },
      actions = {
        rich = function(_, p) p.gold = 100 end,
        go = function(room, _, target, conn)
          tokens[#tokens + 1] = room:sessionTransfer(conn, target)
          room:send(conn, { type = "transfer", value = tokens[#tokens] })
        end,
      } }
    local t = testing.room(def, { id = "room-a" })
    local c = t:client { id = "priv-1" }
    local pid = c.publicId
    c:send("rich"); c:send("go", "room-b")
    assert.are.equal("transfer", c:last().type)
    local token = tokens[1]
    assert.are.equal(22, #token) -- a bearer secret: 131 bits (the reference: 8 characters)
    local c2 = t:client { room = "room-b", id = "other-id", query = { transferToken = token } }
    assert.are.equal(pid, c2.publicId)
    assert.are.equal(100, c2.packets[1].value.players[pid].gold)
    -- the token is single use
    local c3 = t:client { room = "room-b", id = "third", query = { transferToken = token } }
    assert.are_not.equal(pid, c3.publicId)
    t:close()
  end)
end)

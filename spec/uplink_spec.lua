-- Shard uplinks on the main server (host/uplink.c, protocol.md §7.6): a
-- fake shard is a headless client with the x-shard-id headers, sending the
-- uplink framing by hand and reading what the room sends back.
local testing = require "lunaroom.testing"
local lr = require "lunaroom"

local SECRET = "uplink-spec-secret"
local SHARD = "game:world-default:1767225600000-42"

local Player = lr.schema { x = lr.sync(0), online = lr.connected() }

local GAME = {
  path = "game",
  state = { players = lr.users(Player), phase = lr.sync("waiting") },
  guards = { function(_conn, ctx)
    if type(ctx) == "table" and ctx.request then return ctx.request.query.banned == nil end
    return true
  end },
  actions = {
    move = function(_room, player, value) player.x = value.x end,
    whoami = function(room, player, _value, conn)
      room:send(conn, { type = "me", value = { publicId = conn.state.publicId, x = player.x } })
    end,
    shout = function(room, _player, value, conn)
      room:broadcast({ type = "shout", value = value }, value.others and { conn.id } or nil)
    end,
  },
  requests = {
    ["GET /phase"] = function(room) return { phase = room.phase } end,
  },
}

local function new(def, env)
  return testing.room(def or GAME, { env = env or { SHARD_SECRET = SECRET } })
end

local function uplink(t, headers)
  local h = { ["x-shard-id"] = SHARD, ["x-shard-world-id"] = "world-default", ["x-access-shard"] = SECRET }
  for k, v in pairs(headers or {}) do h[k] = v end
  return t:client { headers = h }
end

local function frame(t) return testing.encode(t) end

local function connected(up, priv, query)
  up:send_raw(frame { type = "shard.clientConnected", privateId = priv, requestInfo = {
    headers = { ["x-test"] = "hello" }, method = "GET",
    url = "http://shard.local/parties/shard/" .. SHARD .. "?_pk=" .. priv .. (query or ""),
  } })
end

local function message(up, priv, action, value)
  up:send_raw(frame { type = "shard.clientMessage", privateId = priv, payload = { action = action, value = value } })
end

-- Frames received by the uplink, decoded; targetClientId data decoded too.
local function received(up)
  local out = {}
  for _, p in ipairs(up:take()) do
    if p.targetClientId then
      out[#out + 1] = { to = p.targetClientId, packet = testing.decode(p.data) }
    else
      out[#out + 1] = { all = p }
    end
  end
  return out
end

describe("shard uplinks", function()
  it("refuses an uplink without the right secret, and when none is configured", function()
    local t = new()
    local wrong = uplink(t, { ["x-access-shard"] = "nope" })
    assert.are.equal(401, wrong.status)
    local none = t:client { headers = { ["x-shard-id"] = SHARD } }
    assert.are.equal(401, none.status)
    assert.matches("refused", table.concat(testing.logs(), "\n"))
    t:close()
    local bare = new(GAME, {})
    assert.are.equal(401, uplink(bare, { ["x-access-shard"] = "" }).status)
    bare:close()
  end)

  it("relays a client: snapshot by targetClientId, broadcasts once on the uplink", function()
    local t = new()
    local direct = t:client { id = "direct" }
    local up = uplink(t)
    assert.is_nil(up.status)
    assert.are.same({}, up:take()) -- no user, no session, no snapshot for the uplink
    direct:clear()
    connected(up, "sess-s1")
    local got = received(up)
    -- its own user creation is a broadcast (the uplink gets it once), then its snapshot
    assert.are.equal(2, #got)
    local pid = got[2].packet.value.pId
    assert.is_string(pid)
    assert.are.same({ x = 0, online = true }, got[1].all.value.players[pid])
    assert.are.equal("sess-s1", got[2].to)
    assert.are.equal("waiting", got[2].packet.value.phase)
    assert.are.same(got[1].all, direct:last("sync"))
    -- the session is keyed by the shard's privateId
    assert.are.equal(pid, t.storage:get("session:sess-s1").publicId)
    -- an action through the uplink changes state for everybody, one frame for the shard
    message(up, "sess-s1", "move", { x = 7 })
    got = received(up)
    assert.are.same({ { all = { type = "sync", value = { players = { [pid] = { x = 7 } } } } } }, got)
    assert.are.equal(7, t.room.players[pid].x)
    -- room:send reaches that client only
    message(up, "sess-s1", "whoami")
    assert.are.same({ { to = "sess-s1", packet = { type = "me", value = { publicId = pid, x = 7 } } } }, received(up))
    -- the relayed client shows in room:connections() with its session
    local privs = {}
    for _, c in ipairs(t.room:connections()) do privs[#privs + 1] = c.state.privateId or (c.state.shard and "shard") end
    assert.are.same({ "direct", "shard", "sess-s1" }, privs)
    -- disconnect: offline for everybody
    direct:clear()
    up:send_raw(frame { type = "shard.clientDisconnected", privateId = "sess-s1" })
    assert.is_false(t.room.players[pid].online)
    assert.are.same({ type = "sync", value = { players = { [pid] = { online = false } } } }, direct:last("sync"))
    t:close()
  end)

  it("keeps request info for guards and ctx, and closes refused clients with shard.closeClient", function()
    local t = new()
    local up = uplink(t)
    connected(up, "bad", "&banned=1")
    local got = received(up)
    assert.are.same({ { all = { type = "shard.closeClient", privateId = "bad", code = 4001, reason = "unauthorized" } } }, got)
    t:advance(0)
    assert.are.equal(0, #t.room:connections() - 1)
    t:close()
  end)

  it("transfers a session into a relayed client with ?transferToken", function()
    local t = new()
    local direct = t:client { id = "mover" }
    direct:send("move", { x = 3 })
    local token = t.room:sessionTransfer(direct.conn, "game")
    assert.is_string(token)
    local up = uplink(t)
    connected(up, "new-socket", "&transferToken=" .. token)
    local got = received(up)
    local snap = got[#got].packet
    assert.are.equal(direct.publicId, snap.value.pId)
    t:close()
  end)

  it("interceptor rooms and broadcasts with exclusions fan out per client", function()
    local def = {}
    for k, v in pairs(GAME) do def[k] = v end
    def.interceptorPacket = function(_room, player, packet)
      if packet.type == "shout" and player and player.x == 99 then return nil end
      return packet
    end
    local t = new(def)
    local up = uplink(t)
    connected(up, "a")
    connected(up, "b")
    message(up, "b", "move", { x = 99 })
    up:clear()
    message(up, "a", "shout", { text = "hi" })
    -- b's interceptor drops it; a gets it by targetClientId, not as a shared frame
    assert.are.same({ { to = "a", packet = { type = "shout", value = { text = "hi" } } } }, received(up))
    t:close()
    local t2 = new()
    local up2 = uplink(t2)
    connected(up2, "a")
    connected(up2, "b")
    up2:clear()
    message(up2, "a", "shout", { text = "yo", others = true })
    assert.are.same({ { to = "b", packet = { type = "shout", value = { text = "yo", others = true } } } }, received(up2))
    t2:close()
  end)

  it("a lost uplink takes its clients offline; junk frames are ignored", function()
    local t = new()
    local up = uplink(t)
    connected(up, "c1")
    up:send_raw("not json")
    up:send_raw(frame { type = "shard.clientMessage" })
    up:send_raw(frame { type = "shard.other", privateId = "c1" })
    local pid = t.storage:get("session:c1").publicId
    assert.is_true(t.room.players[pid].online)
    up:close()
    assert.is_false(t.room.players[pid].online)
    assert.is_false(t.storage:get("session:c1").connected)
    assert.are.equal(0, #t.room:connections())
    t:close()
  end)

  it("HTTP claiming to come from a shard needs the secret and never reaches /session-transfer", function()
    local t = new()
    local ok = t:http("GET", "/phase", { headers = { ["x-forwarded-by-shard"] = "true", ["x-access-shard"] = SECRET } })
    assert.are.same({ 200, { phase = "waiting" } }, { ok.status, ok.json })
    local forged = t:http("GET", "/phase", { headers = { ["x-forwarded-by-shard"] = "true", ["x-access-shard"] = "x" } })
    assert.are.same({ 401, { error = "Invalid shard credentials" } }, { forged.status, forged.json })
    assert.are.equal(401, t:http("GET", "/phase", { headers = { ["x-shard-id"] = SHARD } }).status)
    local st = t:http("POST", "/session-transfer", { body = { privateId = "p", publicId = "q" },
      headers = { ["x-forwarded-by-shard"] = "true", ["x-access-shard"] = SECRET } })
    assert.are.equal(404, st.status)
    local direct = t:http("POST", "/session-transfer", { body = { privateId = "p", publicId = "q" },
      headers = { ["x-access-shard"] = SECRET } })
    assert.are.equal(200, direct.status)
    t:close()
  end)

  it("shard clients survive hibernation of their room", function()
    local def = {}
    for k, v in pairs(GAME) do def[k] = v end
    def.hibernate, def.hibernateAfter = true, 1000
    local t = new(def)
    local up = uplink(t)
    connected(up, "h1")
    local pid = t.storage:get("session:h1").publicId
    t:advance(5000)
    assert.is_nil(t.room) -- hibernated
    up:clear()
    message(up, "h1", "move", { x = 4 })
    assert.are.same({ { all = { type = "sync", value = { players = { [pid] = { x = 4 } } } } } }, received(up))
    assert.is_true(t.room.players[pid].online)
    t:close()
  end)
end)

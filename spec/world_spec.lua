-- The world service (lua/lunaroom/world.lua) headless: protocol.md §7.2-§7.4
-- endpoints, bodies, error strings, balancing, guard matrix, cleanup and
-- draining, and the admin-only WebSocket.
local testing = require "lunaroom.testing"
local jwt = require "lunaroom.jwt"

local JWT_SECRET, SHARD_SECRET = "jwt-secret-for-specs", "shard-secret-for-specs"
local ENV = { AUTH_JWT_SECRET = JWT_SECRET, SHARD_SECRET = SHARD_SECRET,
  WORLD_CLEANUP_INTERVAL_MS = "1000", WORLD_SHARD_TIMEOUT_MS = "5000" }

local function world(env)
  return testing.room("lua/lunaroom/world.lua", { id = "world-default", env = env or ENV })
end

local function bearer(claims, opts)
  return { Authorization = "Bearer " .. jwt.sign(claims, (opts and opts.secret) or JWT_SECRET, opts) }
end
local ADMIN = bearer { worlds = { "*" } }
local SHARD = { ["x-access-shard"] = SHARD_SECRET }

local function post(t, path, body, headers)
  return t:http("POST", path, { body = body, headers = headers })
end

local function register(t, cfg)
  local r = post(t, "/register-room", cfg, ADMIN)
  assert.are.equal(200, r.status, r.body)
  return r
end

local function shard_ids(t, room_id)
  local ids = {}
  for id, s in pairs(t.room.shards) do
    if s.roomId == room_id then ids[#ids + 1] = id end
  end
  table.sort(ids)
  return ids
end

local function connect(t, body)
  return post(t, "/connect", body)
end

describe("world", function()
  it("autoCreates a room with one shard on /connect, with the seed's ids and bodies", function()
    local t = world()
    local r = connect(t, { roomId = "demo" })
    assert.are.equal(200, r.status)
    assert.is_true(r.json.success)
    assert.matches("^demo:world%-default:%d+%-%d+$", r.json.shardId)
    assert.are.equal(r.json.shardId, r.json.url)
    local cfg = require("lunaroom.core").copy(t.room.rooms.demo)
    assert.are.same({ name = "demo", balancingStrategy = "round-robin", public = true,
      maxPlayersPerShard = 75, minShards = 1 }, cfg)
    local s = t.room.shards[r.json.shardId]
    assert.are.same({ "active", 0, 75, "demo", "world-default", t:now() },
      { s.status, s.currentConnections, s.maxConnections, s.roomId, s.worldId, s.lastHeartbeat })
    -- the same shard again (round-robin over one)
    assert.are.equal(r.json.shardId, connect(t, { roomId = "demo" }).json.shardId)
    t:close()
  end)

  it("answers /connect errors with the exact strings", function()
    local t = world()
    local function err(res) return { res.status, res.json.error } end
    assert.are.same({ 400, "Request body is empty" }, err(post(t, "/connect", "  ")))
    assert.are.same({ 400, "Invalid JSON in request body" },
      err(post(t, "/connect", "{", { ["content-type"] = "application/json" })))
    assert.are.same({ 400, "roomId parameter is required" }, err(connect(t, { autoCreate = true })))
    assert.are.same({ 404, "Room nope does not exist" }, err(connect(t, { roomId = "nope", autoCreate = false })))
    register(t, { name = "empty", balancingStrategy = "random", public = true, maxPlayersPerShard = 2, minShards = 0 })
    assert.are.same({ 404, "No shards available for room empty" },
      err(connect(t, { roomId = "empty", autoCreate = false })))
    t:close()
  end)

  it("round-robin cycles over the available shards (counter modulo the list)", function()
    local t = world()
    register(t, { name = "rr", balancingStrategy = "round-robin", public = true, maxPlayersPerShard = 10, minShards = 3 })
    local ids = shard_ids(t, "rr")
    assert.are.equal(3, #ids)
    local got = {}
    for i = 1, 4 do got[i] = connect(t, { roomId = "rr" }).json.shardId end
    assert.are.same({ ids[1], ids[2], ids[3], ids[1] }, got)
    -- the list shrinks below the stored counter: no 500, modulo the new length
    t.room.shards[ids[3]].status = "maintenance"
    t.room.shards[ids[2]].status = "maintenance"
    assert.are.equal(ids[1], connect(t, { roomId = "rr" }).json.shardId)
    t:close()
  end)

  it("least-connections picks the emptiest shard, first on ties", function()
    local t = world()
    register(t, { name = "lc", balancingStrategy = "least-connections", public = true, maxPlayersPerShard = 10, minShards = 3 })
    local ids = shard_ids(t, "lc")
    assert.are.equal(ids[1], connect(t, { roomId = "lc" }).json.shardId)
    post(t, "/update-shard", { shardId = ids[1], connections = 4 }, SHARD)
    post(t, "/update-shard", { shardId = ids[2], connections = 2 }, SHARD)
    post(t, "/update-shard", { shardId = ids[3], connections = 3 }, SHARD)
    assert.are.equal(ids[2], connect(t, { roomId = "lc" }).json.shardId)
    t:close()
  end)

  it("random picks among the available shards only", function()
    local t = world()
    register(t, { name = "rnd", balancingStrategy = "random", public = true, maxPlayersPerShard = 1, minShards = 3 })
    local ids = shard_ids(t, "rnd")
    post(t, "/update-shard", { shardId = ids[2], connections = 1 }, SHARD) -- full
    local seen = {}
    for _ = 1, 60 do seen[connect(t, { roomId = "rnd" }).json.shardId] = true end
    assert.is_true(seen[ids[1]] and seen[ids[3]])
    assert.is_nil(seen[ids[2]])
    t:close()
  end)

  it("autoCreates shards up to maxShards, then answers the capacity error", function()
    local t = world()
    register(t, { name = "cap", balancingStrategy = "round-robin", public = true, maxPlayersPerShard = 1, minShards = 1, maxShards = 2 })
    local first = connect(t, { roomId = "cap" }).json.shardId
    post(t, "/update-shard", { shardId = first, connections = 1 }, SHARD)
    local second = connect(t, { roomId = "cap" })
    assert.are.equal(200, second.status)
    assert.are_not.equal(first, second.json.shardId)
    assert.are.equal(2, #shard_ids(t, "cap"))
    post(t, "/update-shard", { shardId = second.json.shardId, connections = 1 }, SHARD)
    local full = connect(t, { roomId = "cap" })
    assert.are.same({ 404, "No shard capacity available for room cap" }, { full.status, full.json.error })
    -- without autoCreate no shard is created even below maxShards
    post(t, "/update-shard", { shardId = second.json.shardId, connections = 0, status = "maintenance" }, SHARD)
    post(t, "/update-shard", { shardId = first, connections = 1, status = "maintenance" }, SHARD)
    local none = connect(t, { roomId = "cap", autoCreate = false })
    assert.are.same({ 404, "No active shards available for room cap" }, { none.status, none.json.error })
    t:close()
  end)

  it("register-room validates, updates an existing room and ensures minShards", function()
    local t = world()
    local bad = post(t, "/register-room", { name = "x", balancingStrategy = "fastest", public = true,
      maxPlayersPerShard = 2, minShards = 1 }, ADMIN)
    assert.are.equal(400, bad.status)
    assert.are.equal("Invalid room configuration", bad.json.error)
    assert.are.equal("ZodError", bad.json.details.name)
    assert.are.same({ "balancingStrategy" }, bad.json.details.issues[1].path)
    local minmax = post(t, "/register-room", { name = "x", balancingStrategy = "random", public = true,
      maxPlayersPerShard = 2, minShards = 3, maxShards = 2 }, ADMIN)
    assert.are.same({ 400, "minShards cannot be greater than maxShards" }, { minmax.status, minmax.json.error })
    local malformed = post(t, "/register-room", "{", { Authorization = ADMIN.Authorization, ["content-type"] = "application/json" })
    assert.are.equal(500, malformed.status)
    local ok = register(t, { name = "r2", balancingStrategy = "random", public = false, maxPlayersPerShard = 2,
      minShards = 2, maxShards = 5 })
    assert.are.same({}, ok.json)
    assert.are.equal(2, #shard_ids(t, "r2"))
    register(t, { name = "r2", balancingStrategy = "least-connections", public = true, maxPlayersPerShard = 4,
      minShards = 3 })
    local cfg = require("lunaroom.core").copy(t.room.rooms.r2)
    assert.are.same({ name = "r2", balancingStrategy = "least-connections", public = true,
      maxPlayersPerShard = 4, minShards = 3 }, cfg)
    assert.are.equal(3, #shard_ids(t, "r2"))
    t:close()
  end)

  it("update-shard: stats, errors, world check, and draining removal", function()
    local t = world()
    register(t, { name = "u", balancingStrategy = "round-robin", public = true, maxPlayersPerShard = 5, minShards = 1 })
    local id = shard_ids(t, "u")[1]
    assert.are.same({ 400, "Invalid shard stats" },
      (function(r) return { r.status, r.json.error } end)(post(t, "/update-shard", { shardId = id, connections = -1 }, SHARD)))
    local nf = post(t, "/update-shard", { shardId = "u:x:1-1", worldId = "world-other", connections = 1 }, SHARD)
    assert.are.same({ 404, "Shard u:x:1-1 not found" }, { nf.status, nf.json.error })
    local ww = post(t, "/update-shard", { shardId = id, worldId = "world-other", connections = 1 }, SHARD)
    assert.are.same({ 400, "Shard " .. id .. " belongs to world world-default, not world-other" },
      { ww.status, ww.json.error })
    t:advance(1500)
    local ok = post(t, "/update-shard", { shardId = id, worldId = "world-default", connections = 3, status = "draining" }, SHARD)
    assert.are.same({ 200, {} }, { ok.status, ok.json })
    local s = t.room.shards[id]
    assert.are.same({ 3, "draining", t:now() }, { s.currentConnections, s.status, s.lastHeartbeat })
    -- a draining shard gets no new client
    local c = connect(t, { roomId = "u", autoCreate = false })
    assert.are.same({ 404, "No active shards available for room u" }, { c.status, c.json.error })
    post(t, "/update-shard", { shardId = id, connections = 0 }, SHARD)
    assert.is_nil(t.room.shards[id])
    t:close()
  end)

  it("scale-room scales up with a template and down, draining busy shards first", function()
    local t = world()
    register(t, { name = "s", balancingStrategy = "round-robin", public = true, maxPlayersPerShard = 5,
      minShards = 1, maxShards = 4 })
    local function err(r) return { r.status, r.json.error } end
    assert.are.same({ 400, "Invalid scale room request" }, err(post(t, "/scale-room", { roomId = "s" }, ADMIN)))
    assert.are.same({ 404, "Room zz does not exist" }, err(post(t, "/scale-room", { roomId = "zz", targetShardCount = 1 }, ADMIN)))
    local beyond = post(t, "/scale-room", { roomId = "s", targetShardCount = 5 }, ADMIN)
    assert.are.same({ error = "Cannot scale beyond maximum allowed shards (4)", roomId = "s", currentShardCount = 1 },
      beyond.json)
    assert.are.equal(400, beyond.status)
    local up = post(t, "/scale-room", { roomId = "s", targetShardCount = 3,
      shardTemplate = { urlTemplate = "wss://x/{roomId}/{shardId}", maxConnections = 9 } }, ADMIN)
    assert.are.same({ 200, {} }, { up.status, up.json })
    local ids = shard_ids(t, "s")
    assert.are.equal(3, #ids)
    -- ids sort by their random suffix: put the two templated (new) shards last
    table.sort(ids, function(a, b)
      local ta, tb = t.room.shards[a].maxConnections == 9, t.room.shards[b].maxConnections == 9
      if ta ~= tb then return tb end
      return a < b
    end)
    local templated = t.room.shards[ids[3]]
    assert.are.equal("wss://x/s/" .. ids[3], templated.url)
    assert.are.equal(9, templated.maxConnections)
    assert.are.equal(9, t.room.shards[ids[2]].maxConnections)
    assert.are.equal(5, t.room.shards[ids[1]].maxConnections)
    post(t, "/update-shard", { shardId = ids[1], connections = 2 }, SHARD)
    post(t, "/update-shard", { shardId = ids[2], connections = 1 }, SHARD)
    post(t, "/update-shard", { shardId = ids[3], connections = 0 }, SHARD)
    post(t, "/scale-room", { roomId = "s", targetShardCount = 1 }, ADMIN)
    assert.is_nil(t.room.shards[ids[3]])                   -- empty: removed at once
    assert.are.equal("draining", t.room.shards[ids[2]].status) -- busy: draining
    assert.are.equal("active", t.room.shards[ids[1]].status)
    t:close()
  end)

  it("removes shards that stop reporting after the configured timeout", function()
    local t = world()
    register(t, { name = "c", balancingStrategy = "round-robin", public = true, maxPlayersPerShard = 5, minShards = 2 })
    local ids = shard_ids(t, "c")
    for _ = 1, 6 do
      t:advance(1000)
      post(t, "/update-shard", { shardId = ids[2], connections = 1 }, SHARD)
    end
    assert.is_nil(t.room.shards[ids[1]])
    assert.is_not_nil(t.room.shards[ids[2]])
    assert.are.equal(ids[2], connect(t, { roomId = "c" }).json.shardId)
    t:close()
  end)

  it("uses the 60 s / 300 s defaults when nothing is configured", function()
    local t = world { AUTH_JWT_SECRET = JWT_SECRET, SHARD_SECRET = SHARD_SECRET }
    register(t, { name = "d", balancingStrategy = "round-robin", public = true, maxPlayersPerShard = 5, minShards = 1 })
    local id = shard_ids(t, "d")[1]
    t:advance(299000)
    assert.is_not_nil(t.room.shards[id])
    t:advance(61000) -- the cleanup at 360 s sees it 360 s old
    assert.is_nil(t.room.shards[id])
    t:close()
  end)

  it("guardManageWorld: the JWT and shard-secret matrix", function()
    local t = world()
    local cfg = { name = "g", balancingStrategy = "round-robin", public = true, maxPlayersPerShard = 5, minShards = 0 }
    local function status(headers, path) return post(t, path or "/register-room", cfg, headers).status end
    assert.are.equal(403, status({}))
    assert.are.same({ error = "Not permitted" }, post(t, "/register-room", cfg, {}).json)
    assert.are.equal(200, status(bearer { worlds = { "*" } }))
    assert.are.equal(200, status(bearer { worlds = { "world-default" } }))
    assert.are.equal(403, status(bearer { worlds = { "world-other" } }))
    assert.are.equal(403, status(bearer { worlds = "*" }))
    assert.are.equal(403, status(bearer { sub = "x" }))
    assert.are.equal(403, status(bearer({ worlds = { "*" } }, { secret = "wrong" })))
    assert.are.equal(403, status(bearer({ worlds = { "*" } }, { expiresIn = -60 })))
    local raw = jwt.sign({ worlds = { "*" } }, JWT_SECRET)
    assert.are.equal(200, status({ Authorization = raw }))
    assert.are.equal(200, t:http("POST", "/register-room?world-auth-token=" .. raw, { body = cfg }).status)
    assert.are.equal(403, status({ ["x-access-shard"] = "wrong" }))
    assert.are.equal(403, status({ ["x-access-shard"] = "wrong", Authorization = ADMIN.Authorization }))
    assert.are.equal(200, status(SHARD))
    -- /connect has no guard
    assert.are.equal(200, connect(t, { roomId = "g" }).status)
    -- without the secrets configured every admin request is refused
    local bare = world {}
    assert.are.equal(403, post(bare, "/register-room", cfg, ADMIN).status)
    assert.are.equal(403, post(bare, "/register-room", cfg, { ["x-access-shard"] = "" }).status)
    bare:close()
    t:close()
  end)

  it("world WebSocket: admins get the registry, others nothing at all", function()
    local t = world()
    local admin = t:client { headers = { authorization = ADMIN.Authorization } }
    local other = t:client {}
    local tokq = t:client { query = { ["world-auth-token"] = jwt.sign({ worlds = { "world-default" } }, JWT_SECRET) } }
    assert.are.equal(1, #admin.packets)
    assert.is_string(admin.packets[1].value.pId)
    assert.are.same({}, admin.packets[1].value.rooms)
    assert.are.equal(1, #tokq.packets)
    register(t, { name = "ws", balancingStrategy = "round-robin", public = true, maxPlayersPerShard = 5, minShards = 1 })
    t:advance(600)
    local last = admin:last("sync")
    assert.are.equal("ws", last.value.rooms.ws.name)
    assert.is_nil(last.value.rrCounters)
    assert.are.same({}, other.packets)
    assert.is_nil(other.closed)
    t:close()
  end)

  it("persists the registry: a restarted world has the same rooms and shards", function()
    local path = os.tmpname()
    os.remove(path)
    local t = testing.room("lua/lunaroom/world.lua", { id = "world-default", env = ENV, storage = "sqlite:" .. path })
    register(t, { name = "p", balancingStrategy = "round-robin", public = true, maxPlayersPerShard = 5, minShards = 2 })
    local ids = shard_ids(t, "p")
    assert.are.equal(ids[1], connect(t, { roomId = "p" }).json.shardId)
    t:advance(2500) -- throttleStorage 2000
    t:close()
    local t2 = testing.room("lua/lunaroom/world.lua", { id = "world-default", env = ENV, storage = "sqlite:" .. path })
    assert.are.same(ids, shard_ids(t2, "p"))
    assert.are.equal("round-robin", t2.room.rooms.p.balancingStrategy)
    -- the round-robin counter persisted too
    assert.are.equal(ids[2], connect(t2, { roomId = "p" }).json.shardId)
    t2:close()
    os.remove(path)
  end)
end)

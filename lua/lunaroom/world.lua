-- lunaroom/world.lua: the world service (protocol.md §7), a room like any
-- other: party "world", room id "world-{worldId}". `lunaroom serve --world`
-- serves it next to the rooms folder; specs load it with
-- testing.room("lua/lunaroom/world.lua", {id = "world-default", env = {...}}).
--
-- Owns: the registry of one world (rooms and their shards, synced to admins
-- only and persisted), shard assignment (/connect and its balancing
-- strategies), the admin endpoints (/register-room, /update-shard,
-- /scale-room) with their exact bodies and error strings, guardManageWorld
-- (SHARD_SECRET or a JWT whose `worlds` claim names this world or "*"), and
-- the cleanup of shards that stopped reporting.
-- Must not: talk to shards or sockets itself (shard processes report through
-- /update-shard, host/shard.c), or trust any header but x-access-shard and
-- the JWT.
--
-- Configuration (room.env, i.e. the process environment under `serve`):
--   AUTH_JWT_SECRET, SHARD_SECRET   required by the admin guard
--   WORLD_CLEANUP_INTERVAL_MS       how often stale shards are removed (60000)
--   WORLD_SHARD_TIMEOUT_MS          a shard silent this long is removed (300000)

local lr = require "lunaroom"
local v = lr.v

local MAX_PLAYERS_PER_SHARD = 75
local DEFAULT_URL_TEMPLATE = "{shardId}"

------------------------------------------------------------------ helpers

local function env_of(room)
  return room.env or {}
end

local function ms_setting(room, name, default)
  local n = tonumber(env_of(room)[name])
  if n and n > 0 then return math.floor(n) end
  return default
end

-- The JWT of a request or connect context: `Authorization: Bearer t`, else
-- the raw Authorization value, else ?world-auth-token (§7.3).
local function token_of(req)
  local auth = req.headers and req.headers.authorization
  if auth and auth ~= "" then
    return auth:match("^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(.-)%s*$") or auth
  end
  local q = req.query or {}
  local t = q["world-auth-token"]
  if t and t ~= "" then return t end
  return nil
end

--- guardManageWorld(_, reqOrCtxRequest, room) -> boolean (§7.3): a shard
--- with the secret, or a JWT (HS256, AUTH_JWT_SECRET) whose `worlds` claim
--- contains this room id or "*". An x-access-shard header never falls back
--- to the JWT.
local function guard_manage_world(_, req, room)
  local env = env_of(room)
  local headers = req.headers or {}
  local shard = headers["x-access-shard"]
  if shard ~= nil then
    local secret = env.SHARD_SECRET
    return secret ~= nil and secret ~= "" and shard == secret
  end
  local token = token_of(req)
  local secret = env.AUTH_JWT_SECRET
  if not token or not secret or secret == "" then return false end
  local claims = lr.jwt.verify(token, secret)
  if type(claims) ~= "table" or type(claims.worlds) ~= "table" then return false end
  for _, w in ipairs(claims.worlds) do
    if w == "*" or w == room.id then return true end
  end
  return false
end

-- The shards of one room, sorted by id (ids start with the creation time,
-- so this is creation order, and it does not depend on storage order).
local function shards_of(room, room_id)
  local out = {}
  for id, s in pairs(room.shards) do
    if s.roomId == room_id then out[#out + 1] = { id = id, s = s } end
  end
  table.sort(out, function(a, b) return a.id < b.id end)
  return out
end

-- Replace the first occurrence of `what` in s (plain text, like JS replace).
local function replace_first(s, what, with)
  local i, j = s:find(what, 1, true)
  if not i then return s end
  return s:sub(1, i - 1) .. with .. s:sub(j + 1)
end

-- Create a shard record: id {roomId}:{worldRoomId}:{now}-{0..9999} (§7.4).
local function create_shard(room, room_id, url_template, max_connections)
  local cfg = room.rooms[room_id]
  if not cfg then return nil end
  local id
  repeat
    id = string.format("%s:%s:%d-%d", room_id, room.id, room:now(), math.random(0, 9999))
  until room.shards[id] == nil
  local template = url_template or DEFAULT_URL_TEMPLATE
  local url = replace_first(replace_first(template, "{shardId}", id), "{roomId}", room_id)
  room.shards[id] = {
    roomId = room_id, worldId = room.id, url = url,
    currentConnections = 0, maxConnections = max_connections or cfg.maxPlayersPerShard,
    status = "active", lastHeartbeat = room:now(),
  }
  return id, room.shards[id]
end

local RoomConfig = v.object {
  name = v.string(),
  balancingStrategy = v.enum { "round-robin", "least-connections", "random" },
  public = v.boolean(),
  maxPlayersPerShard = v.integer():min(1),
  minShards = v.integer():min(0),
  maxShards = v.integer():min(1):optional(),
}

local ShardStats = v.object {
  shardId = v.string(),
  worldId = v.string():optional(),
  connections = v.integer():min(0),
  status = v.enum { "active", "maintenance", "draining" }:optional(),
}

local ScaleRequest = v.object {
  roomId = v.string(),
  targetShardCount = v.integer():min(1),
  shardTemplate = v.object {
    urlTemplate = v.string(),
    maxConnections = v.integer():min(1),
  }:optional(),
}

local function zod_details(err)
  return { issues = err.issues, name = "ZodError" }
end

-- Register a new room or update an existing one, then make sure it has at
-- least minShards shards (all statuses counted).
local function register(room, cfg)
  local name = cfg.name
  local existing = room.rooms[name]
  if existing == nil then
    room.rooms[name] = {
      name = name, balancingStrategy = cfg.balancingStrategy, public = cfg.public,
      maxPlayersPerShard = cfg.maxPlayersPerShard, minShards = cfg.minShards,
      maxShards = cfg.maxShards,
    }
  else
    existing.balancingStrategy = cfg.balancingStrategy
    existing.public = cfg.public
    existing.maxPlayersPerShard = cfg.maxPlayersPerShard
    existing.minShards = cfg.minShards
    existing.maxShards = cfg.maxShards
  end
  for _ = #shards_of(room, name) + 1, cfg.minShards do create_shard(room, name) end
end

-- findOptimalShard (§7.4): the shard id and url, or nil and the error.
local function find_shard(room, room_id, auto_create)
  local cfg = room.rooms[room_id]
  if cfg == nil then
    if not auto_create then return nil, "Room " .. room_id .. " does not exist" end
    register(room, { name = room_id, balancingStrategy = "round-robin", public = true,
      maxPlayersPerShard = MAX_PLAYERS_PER_SHARD, minShards = 1 })
    cfg = room.rooms[room_id]
    if cfg == nil then return nil, "Failed to create room " .. room_id end
  end
  local all = shards_of(room, room_id)
  if #all == 0 then
    if not auto_create then return nil, "No shards available for room " .. room_id end
    local id, s = create_shard(room, room_id)
    if not id then return nil, "Failed to create shard for room " .. room_id end
    return id, s.url
  end
  local available, active = {}, false
  for _, e in ipairs(all) do
    if e.s.status == "active" then
      active = true
      if e.s.currentConnections < e.s.maxConnections then available[#available + 1] = e end
    end
  end
  if #available == 0 then
    if auto_create and (cfg.maxShards == nil or #all < cfg.maxShards) then
      local id, s = create_shard(room, room_id)
      if not id then return nil, "Failed to create shard for room " .. room_id end
      return id, s.url
    end
    if active then return nil, "No shard capacity available for room " .. room_id end
    return nil, "No active shards available for room " .. room_id
  end
  local pick
  local strategy = cfg.balancingStrategy
  if strategy == "least-connections" then
    pick = available[1]
    for _, e in ipairs(available) do
      if e.s.currentConnections < pick.s.currentConnections then pick = e end
    end
  elseif strategy == "random" then
    pick = available[math.random(1, #available)]
  else
    -- round-robin; the counter is taken modulo the list (Part 1 row 14).
    local counter = (room.rrCounters[room_id] or 0) % #available
    room.rrCounters[room_id] = (counter + 1) % #available
    pick = available[counter + 1]
  end
  return pick.id, pick.s.url
end

local function cleanup(room)
  local timeout = ms_setting(room, "WORLD_SHARD_TIMEOUT_MS", 300000)
  local now = room:now()
  local stale = {}
  for id, s in pairs(room.shards) do
    if now - s.lastHeartbeat > timeout then stale[#stale + 1] = id end
  end
  for _, id in ipairs(stale) do
    room.shards[id] = nil
    room:log("shard " .. id .. " removed: no report for more than " .. timeout .. " ms")
  end
end

local function schedule_cleanup(room)
  room:timer(ms_setting(room, "WORLD_CLEANUP_INTERVAL_MS", 60000), function(r)
    cleanup(r)
    schedule_cleanup(r)
  end)
end

------------------------------------------------------------------ the room

return lr.room {
  path = "world-{worldId}",
  party = "world",
  throttleSync = 500,
  throttleStorage = 2000,

  state = {
    rooms = lr.sync({}),
    shards = lr.sync({}),
    rrCounters = lr.persist({}),
  },

  onCreate = function(room)
    local env = env_of(room)
    for _, k in ipairs { "AUTH_JWT_SECRET", "SHARD_SECRET" } do
      if not env[k] or env[k] == "" then
        room:log(k .. " env variable is not set: every admin request and shard report is refused")
      end
    end
    schedule_cleanup(room)
  end,

  -- WebSockets on the world: admins get the registry (throttled), everybody
  -- else stays connected and receives nothing, not even the pId snapshot.
  onJoin = function(room, _user, conn, ctx)
    conn.state.isAdmin = guard_manage_world(nil, ctx.request, room)
  end,

  interceptorPacket = function(_room, _user, packet, conn)
    if not conn.state.isAdmin then return nil end
    return packet
  end,

  requests = {
    ["POST /connect"] = function(room, req, res)
      local text = req.text()
      if text:match("^%s*$") then return res:badRequest("Request body is empty") end
      local data = req.json()
      if data == nil then return res:badRequest("Invalid JSON in request body") end
      if data == lr.null then return res:serverError() end
      local room_id = type(data) == "table" and data.roomId or nil
      if type(room_id) == "number" then room_id = tostring(room_id) end
      if type(room_id) ~= "string" or room_id == "" then
        return res:badRequest("roomId parameter is required")
      end
      local auto_create = true
      if data.autoCreate ~= nil and data.autoCreate ~= lr.null then auto_create = data.autoCreate and true end
      local shard_id, url_or_err = find_shard(room, room_id, auto_create)
      if not shard_id then return res:notFound(url_or_err) end
      return res:success { success = true, shardId = shard_id, url = url_or_err }
    end,

    ["POST /register-room"] = {
      guards = { guard_manage_world },
      run = function(room, req, res)
        local data = req.json()
        if data == nil then return res:serverError() end
        local ok, cfg = RoomConfig:parse(data)
        if not ok then
          return res:badRequest("Invalid room configuration", { details = zod_details(cfg) })
        end
        if cfg.maxShards ~= nil and cfg.minShards > cfg.maxShards then
          return res:badRequest("minShards cannot be greater than maxShards")
        end
        register(room, cfg)
        return {}
      end,
    },

    ["POST /update-shard"] = {
      guards = { guard_manage_world },
      run = function(room, req, res)
        local ok, stats = ShardStats:parse(req.json())
        if not ok then return res:badRequest("Invalid shard stats") end
        local shard = room.shards[stats.shardId]
        if shard == nil then return res:notFound("Shard " .. stats.shardId .. " not found") end
        if stats.worldId ~= nil and stats.worldId ~= shard.worldId then
          return res:badRequest("Shard " .. stats.shardId .. " belongs to world " .. shard.worldId
            .. ", not " .. stats.worldId)
        end
        shard.currentConnections = stats.connections
        if stats.status then shard.status = stats.status end
        shard.lastHeartbeat = room:now()
        if shard.status == "draining" and stats.connections == 0 then
          room.shards[stats.shardId] = nil
          room:log("shard " .. stats.shardId .. " drained and removed")
        end
        return {}
      end,
    },

    ["POST /scale-room"] = {
      guards = { guard_manage_world },
      run = function(room, req, res)
        local ok, data = ScaleRequest:parse(req.json())
        if not ok then return res:badRequest("Invalid scale room request") end
        local cfg = room.rooms[data.roomId]
        if cfg == nil then return res:notFound("Room " .. data.roomId .. " does not exist") end
        local shards = shards_of(room, data.roomId)
        local target = data.targetShardCount
        if cfg.maxShards ~= nil and target > cfg.maxShards then
          return res:badRequest("Cannot scale beyond maximum allowed shards (" .. cfg.maxShards .. ")",
            { roomId = data.roomId, currentShardCount = #shards })
        end
        if target < #shards then
          -- Draining ones first, then the emptiest; empty ones go at once.
          table.sort(shards, function(a, b)
            local da, db = a.s.status == "draining", b.s.status == "draining"
            if da ~= db then return da end
            if a.s.currentConnections ~= b.s.currentConnections then
              return a.s.currentConnections < b.s.currentConnections
            end
            return a.id < b.id
          end)
          for i = 1, #shards - target do
            local e = shards[i]
            if e.s.currentConnections == 0 then
              room.shards[e.id] = nil
            else
              e.s.status = "draining"
            end
          end
        else
          local tpl = data.shardTemplate
          for _ = #shards + 1, target do
            create_shard(room, data.roomId, tpl and tpl.urlTemplate, tpl and tpl.maxConnections)
          end
        end
        return {}
      end,
    },
  },
}

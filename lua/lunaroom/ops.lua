-- lunaroom.ops: the operations endpoints of a server.
--   GET /healthz   liveness: 200 while the loop answers
--   GET /readyz    readiness: storage answers, no room's writes fail (503 lists
--                  up to 10 failing rooms and why) and room definitions are loaded
--   GET /metrics   Prometheus text (Bearer METRICS_TOKEN when that is set)
--   GET /admin     JSON: rooms, users, code versions, memory (needs a JWT
--                  signed with AUTH_JWT_SECRET whose `worlds` claim has "*")
-- Owns: formatting those answers from core.stats() and the runtime's room
-- list. Must not: change any room (read-only) or log secrets.
local core = require "lunaroom.core"

local M = {}

local function bearer(req)
  local auth = req.headers.authorization or ""
  return auth:match("^[Bb]earer%s+(%S+)") or (auth ~= "" and auth) or nil
end

local function escape(v) return (tostring(v):gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"')) end

--- Prometheus text exposition of the engine's counters.
function M.metrics_text(srv, runtime)
  local st = core.stats(srv.h)
  local out = {}
  local function metric(name, kind, help, samples)
    out[#out + 1] = "# HELP " .. name .. " " .. help
    out[#out + 1] = "# TYPE " .. name .. " " .. kind
    for _, s in ipairs(samples) do
      local labels = ""
      if s[2] then
        local parts = {}
        for _, kv in ipairs(s[2]) do parts[#parts + 1] = kv[1] .. '="' .. escape(kv[2]) .. '"' end
        labels = "{" .. table.concat(parts, ",") .. "}"
      end
      out[#out + 1] = name .. labels .. " " .. string.format("%.17g", s[1])
    end
  end
  -- Everything below is kept as counters or per room type (definition
  -- path): a scrape costs the same whatever the number of rooms. Per-room
  -- detail is in /admin.
  local sess = srv.stat or { online = 0, offline = 0 }
  metric("lunaroom_connections", "gauge", "Open WebSocket connections.", { { st.conns_open } })
  metric("lunaroom_connections_total", "counter", "WebSocket connections accepted.", { { st.conns_total } })
  metric("lunaroom_rooms", "gauge", "Rooms by state.", {
    { st.rooms, { { "state", "memory" } } }, { st.rooms_hibernated, { { "state", "hibernated" } } } })
  metric("lunaroom_users", "gauge", "Sessions of rooms in memory (a user each): online, or offline and not expired.", {
    { sess.online, { { "state", "online" } } }, { sess.offline, { { "state", "offline" } } } })
  local actions = {}
  local types = {}
  for t in pairs(srv.actions or {}) do types[#types + 1] = t end
  table.sort(types)
  for _, t in ipairs(types) do actions[#actions + 1] = { srv.actions[t], { { "room", t } } } end
  metric("lunaroom_actions_total", "counter", "Action packets handled, by room type (path).", actions)
  local hist = {}
  local cum = 0
  for _, b in ipairs(st.hist) do
    cum = cum + b[2]
    hist[#hist + 1] = { cum, { { "le", type(b[1]) == "number" and string.format("%g", b[1]) or b[1] } } }
  end
  out[#out + 1] = "# HELP lunaroom_handler_seconds Time spent in Lua per call from the host."
  out[#out + 1] = "# TYPE lunaroom_handler_seconds histogram"
  for _, h in ipairs(hist) do
    out[#out + 1] = string.format('lunaroom_handler_seconds_bucket{le="%s"} %d', h[2][1][2], h[1])
  end
  out[#out + 1] = string.format("lunaroom_handler_seconds_sum %.9f", st.call_seconds)
  out[#out + 1] = string.format("lunaroom_handler_seconds_count %d", st.calls)
  metric("lunaroom_lua_memory_bytes", "gauge", "Bytes allocated by the Lua state.", { { st.lua_bytes } })
  metric("lunaroom_state_nodes", "gauge", "Values held in room state trees.", { { st.nodes } })
  metric("lunaroom_packets_out_total", "counter", "Packets queued to connections.", { { st.packets_out } })
  metric("lunaroom_bytes_out_total", "counter", "Payload bytes queued to connections.", { { st.bytes_out } })
  metric("lunaroom_messages_in_total", "counter", "Action packets received.", { { st.msgs_in } })
  metric("lunaroom_storage_flushes_total", "counter", "Storage batches written.", { { st.storage_flushes } })
  metric("lunaroom_storage_failures_total", "counter", "Storage batches that failed (kept pending).", { { st.storage_failures } })
  metric("lunaroom_storage_flush_seconds_total", "counter", "Time spent writing storage.", { { st.storage_seconds } })
  local rej = {}
  local reasons = {}
  for r in pairs(st.rejected) do reasons[#reasons + 1] = r end
  table.sort(reasons)
  for _, r in ipairs(reasons) do rej[#rej + 1] = { st.rejected[r], { { "reason", r } } } end
  metric("lunaroom_rejected_total", "counter", "Rejected inputs, by reason.", rej)
  local rl = srv.reloads or { ok = 0, failed = 0 }
  metric("lunaroom_reloads_total", "counter", "Hot reloads applied.", { { rl.ok or 0 } })
  metric("lunaroom_reload_failures_total", "counter", "Hot reloads refused (old code kept).", { { rl.failed or 0 } })
  local info = {}
  local paths = {}
  for path in pairs(srv.census or {}) do paths[#paths + 1] = path end
  table.sort(paths)
  for _, path in ipairs(paths) do
    local versions = {}
    for v in pairs(srv.census[path]) do versions[#versions + 1] = v end
    table.sort(versions)
    for _, v in ipairs(versions) do
      info[#info + 1] = { srv.census[path][v], { { "path", path }, { "version", v } } }
    end
  end
  metric("lunaroom_room_info", "gauge", "Live rooms (in memory or hibernated) by room type and the code version they run.", info)
  -- The storage backend's own figures (PostgreSQL: transactions, cluster leases).
  for _, m in ipairs(core.store_stats and core.store_stats(srv.h) or {}) do
    metric(m.name, m.kind, m.help, { { m.value } })
  end
  -- A cluster node's relaying (host/cluster.c).
  local has, cluster = pcall(require, "lunaroom.cluster")
  for _, m in ipairs(has and cluster.stats() or {}) do
    metric(m.name, m.kind, m.help, { { m.value } })
  end
  return table.concat(out, "\n") .. "\n"
end

--- Admin JSON: rooms (a page of them, sorted by key: ?offset=0&limit=100,
--- limit at most 1000), users, state size, code version, memory.
function M.admin_json(srv, runtime, q)
  q = q or {}
  local keys = {}
  for key in pairs(srv.rooms) do keys[#keys + 1] = key end
  table.sort(keys)
  local offset = math.max(0, math.floor(tonumber(q.offset) or 0))
  local limit = math.min(1000, math.max(0, math.floor(tonumber(q.limit) or 100)))
  local rooms = {}
  for i = offset + 1, math.min(#keys, offset + limit) do
    local room = srv.rooms[keys[i]]
    local r = runtime.room_info_of(keys[i], room)
    local d = rawget(room, "def")
    local users = {}
    if d.users_field then
      for pid in pairs(rawget(room, "root")[d.users_field]) do users[#users + 1] = pid end
      table.sort(users)
    end
    r.users = setmetatable(users, core.array_mt)
    r.stateBytes = #core.encode(rawget(room, "root"))
    rooms[#rooms + 1] = r
  end
  local st = core.stats(srv.h)
  return { rooms = setmetatable(rooms, core.array_mt), total = #keys, offset = offset, limit = limit,
    luaMemory = st.lua_bytes, connections = st.conns_open, hibernated = st.rooms_hibernated }
end

function M.handle(srv, req, runtime, json_response, response)
  local path = req.path
  if path == "/healthz" then return json_response(200, { status = "ok" }) end
  if path == "/readyz" then
    local failing, rooms = core.storage_failing(srv.h)
    if failing > 0 then
      return json_response(503, { status = "not ready", reason = "storage writes failing",
        failingRooms = failing, rooms = setmetatable(rooms, core.array_mt) })
    end
    local probe = core.store_count({ server = srv.h, ns = "$lunaroom", id = "readyz" })
    if probe < 0 then return json_response(503, { status = "not ready", reason = "storage" }) end
    if #srv.defs == 0 then return json_response(503, { status = "not ready", reason = "no rooms loaded" }) end
    return json_response(200, { status = "ready", definitions = #srv.defs })
  end
  if path == "/metrics" then
    local token = srv.env.METRICS_TOKEN
    if token and token ~= "" and bearer(req) ~= token then
      return json_response(401, { error = "Unauthorized" })
    end
    return response(200, M.metrics_text(srv, runtime), "text/plain; version=0.0.4")
  end
  if path == "/admin" or path:sub(1, 7) == "/admin/" then
    local secret = srv.env.AUTH_JWT_SECRET
    if not secret or secret == "" then
      return json_response(503, { error = "admin is disabled: set AUTH_JWT_SECRET" })
    end
    local ok, jwt = pcall(require, "lunaroom.jwt")
    if not ok then return json_response(503, { error = "admin needs lunaroom.jwt" }) end
    local q = runtime.parse_query(req.query)
    local claims = jwt.verify(bearer(req) or q.token or "", secret)
    local allowed = false
    for _, w in ipairs(type(claims) == "table" and type(claims.worlds) == "table" and claims.worlds or {}) do
      if w == "*" then allowed = true end
    end
    if not allowed then return json_response(403, { error = "Not permitted" }) end
    local action = path:match("^/admin/(.*)$")
    if req.method == "GET" and action == "cluster" then
      -- Every node's rooms, from the lease table (answered when the database did).
      local has, cluster = pcall(require, "lunaroom.cluster")
      if not has then return json_response(404, { error = "Not a cluster node" }) end
      local limit = math.min(10000, math.max(1, math.floor(tonumber(q.limit) or 1000)))
      return { _wait = function(responder)
        local wait_c = require "lunaroom.wait_c"
        local ok, err = cluster.rooms(limit, function(rows, why)
          if not rows then
            wait_c.respond(responder, json_response(503, { error = "cluster directory unavailable", details = why }))
          else
            wait_c.respond(responder, response(200, '{"node":' .. core.encode(cluster.node) .. ',"limit":' .. limit ..
              ',"rooms":' .. rows .. "}", "application/json"))
          end
        end)
        if not ok then
          wait_c.respond(responder, json_response(503, { error = "cluster directory unavailable", details = err }))
        end
      end }
    end
    if req.method == "POST" and action == "drain" then
      -- A cluster node hands its rooms to the other nodes (host/cluster.c).
      local has, cluster = pcall(require, "lunaroom.cluster")
      if not has then return json_response(404, { error = "Not a cluster node" }) end
      return json_response(200, { drained = cluster.drain() })
    end
    if req.method == "POST" and action == "undrain" then
      -- A drained node takes leases again (its rooms stay where they went).
      local has, cluster = pcall(require, "lunaroom.cluster")
      if not has then return json_response(404, { error = "Not a cluster node" }) end
      return json_response(200, { undrained = cluster.undrain() })
    end
    if req.method == "POST" and action then
      if action ~= "dispose" and action ~= "kick" then return json_response(404, { error = "Not found" }) end
      -- The body must be {"room": "<party>/<id>"} (kick: and "publicId"): anything else is
      -- the client's mistake (400), not a missing room (404).
      local body, err = core.decode(req.body or "")
      if type(body) ~= "table" or getmetatable(body) == core.array_mt then
        return json_response(400, { error = "Invalid body: expected a JSON object", details = err })
      end
      if type(body.room) ~= "string" or body.room == "" then
        return json_response(400, { error = "Invalid body: room must be a non-empty string" })
      end
      if action == "kick" and type(body.publicId) ~= "string" then
        return json_response(400, { error = "Invalid body: publicId must be a string" })
      end
      local room = srv.rooms[body.room]
      if not room then return json_response(404, { error = "Room not found" }) end
      if action == "dispose" then
        core.room_dispose(rawget(room, "h"))
        return json_response(200, { disposed = body.room })
      elseif action == "kick" then
        local n = 0
        for _, conn in ipairs(core.room_conns(rawget(room, "h"))) do
          if runtime.conn_pid(conn) == body.publicId then conn:close(4003, "kicked"); n = n + 1 end
        end
        return json_response(200, { kicked = n })
      end
      return json_response(404, { error = "Not found" })
    end
    return json_response(200, M.admin_json(srv, runtime, q))
  end
  return json_response(404, { error = "Not found" })
end

return M

-- lunaroom: the room DSL that room scripts `require "lunaroom"`.
--
-- Owns: the descriptors a room file is written with (room, schema, sync,
-- users, connected, array, null, v) and the validation of a room definition.
-- Must not: touch the host (no lunaroom.core calls except the null/array
-- sentinels and the JSON codec), keep state, or depend on anything a sandbox
-- does not offer.

local core = require "lunaroom.core"
local v = require "lunaroom.schema"

v.set_null(core.null)
v.set_fast(core.schema_fast) -- host/lua_schema.c

local lr = {}

lr.v = v
lr.jwt = require "lunaroom.jwt" -- verify/sign/bearer (host/lua_jwt.c), read-only
--- The JSON null value (a table field set to lr.null is sent as null).
lr.null = core.null

--- lr.json.encode(value) -> string and lr.json.decode(string) -> value | nil,
--- err: the host's own codec (the one state, packets and storage use):
--- integers stay integers up to 2^63, floats round-trip exactly, lr.null is
--- null, lr.array marks empty arrays. Read-only (shared by every room).
lr.json = setmetatable({}, {
  __index = {
    encode = function(x) return (core.encode(x)) end,
    decode = function(s) return core.decode(s) end,
  },
  __newindex = function() error("lr.json is read-only", 2) end,
  __metatable = false,
})

--- Mark a Lua table as a JSON array (needed for empty arrays).
function lr.array(t)
  return setmetatable(t or {}, core.array_mt)
end

local FIELD = {} -- metatable of field descriptors

-- Declaration order: Lua evaluates a table constructor in order, so the
-- lr.sync / lr.users / lr.connected calls of `state = { ... }` run in the
-- order the fields are written. Each descriptor takes the next number, and a
-- room's fields are created (and sent in its snapshot) in that order, as the
-- reference sends class fields in declaration order.
local declared = 0
local function stamp(f)
  declared = declared + 1
  f.order = declared
  return f
end

--- A synced field with a default value.
-- opts.persist (default true): stored in the room's storage.
-- opts.sync (default true): sent to clients.
function lr.sync(default, opts)
  opts = opts or {}
  return setmetatable(stamp {
    kind = "sync",
    default = default,
    persist = opts.persist ~= false,
    sync = opts.sync ~= false,
  }, FIELD)
end

--- A stored but never sent field (@persist() of the reference).
function lr.persist(default)
  return lr.sync(default, { sync = false, persist = true })
end

--- True while the user has a socket open (@connected()). Synced, not stored.
function lr.connected()
  return setmetatable(stamp { kind = "connected", default = false, persist = false, sync = true }, FIELD)
end

local SCHEMA = {}

--- What one entry of a users collection holds.
function lr.schema(fields)
  assert(type(fields) == "table", "lr.schema expects a table of fields")
  local s = { kind = "schema", fields = {}, connected = nil }
  for k, f in pairs(fields) do
    if type(k) ~= "string" then error("schema field names must be strings", 2) end
    if getmetatable(f) ~= FIELD then f = lr.sync(f) end
    if f.kind == "users" then error("a users collection cannot be nested in a schema", 2) end
    s.fields[k] = f
    if f.kind == "connected" then
      if s.connected then error("a schema has at most one lr.connected() field", 2) end
      s.connected = k
    end
  end
  return setmetatable(s, SCHEMA)
end

--- A users collection keyed by publicId (@users(Player)).
function lr.users(schema)
  if getmetatable(schema) ~= SCHEMA then schema = lr.schema(schema or {}) end
  return setmetatable(stamp { kind = "users", schema = schema, persist = true, sync = true }, FIELD)
end

function lr.is_field(x) return getmetatable(x) == FIELD end
function lr.is_schema(x) return getmetatable(x) == SCHEMA end

local ROOM = {}

local KNOWN = {
  path = "string", party = "string", maxUsers = "number", throttleSync = "number",
  throttleStorage = "number", sessionExpiryTime = "number", transferExpiryTime = "number",
  autoSync = "boolean", hibernate = "boolean", hibernateAfter = "number", budget = "number", memory = "number",
  evictAfter = "number", maxOfflineSessions = "number", waits = "table",
  rateLimit = "table", limits = "table", headers = "table",
  guards = "table", state = "table", actions = "table", requests = "table",
  unhandled = "function|table", onCreate = "function", onJoin = "function",
  onLeave = "function", onSessionRestore = "function", onStorageRestore = "function",
  onUserStorageRestore = "function", interceptorPacket = "function", onReload = "function",
}

-- State fields are read and written as room.<field>, in the same table as
-- the room's methods, its public properties and the fields the runtime keeps
-- on every instance, so those names cannot be state fields. Exactly these
-- (README "Reserved names"); names starting with "_" are the runtime's too.
local RESERVED = {
  -- methods
  send = true, broadcast = true, applySync = true, sessionTransfer = true, timer = true,
  cancel = true, dispose = true, connections = true, now = true, log = true,
  -- public properties
  autoSync = true, parties = true, id = true, params = true, storage = true, env = true,
  -- what the runtime keeps on each instance (lunaroom.runtime, create_room)
  def = true, srv = true, h = true, root = true, key = true, file = true, version = true,
  sockets = true, expiry = true,
}
lr.RESERVED = RESERVED

local function reserved(k) return RESERVED[k] or k:sub(1, 1) == "_" end

local function typeok(x, spec)
  for t in spec:gmatch("[^|]+") do
    if type(x) == t then return true end
  end
  return false
end

local function check_guards(g, where)
  if type(g) == "function" then return { g } end
  if g == nil then return {} end
  if type(g) ~= "table" then error(where .. ": guards must be a function or a list of functions", 3) end
  for i, f in ipairs(g) do
    if type(f) ~= "function" then error(where .. ": guard " .. i .. " is not a function", 3) end
  end
  return g
end

--- Normalise one action or route entry to {run, guards, schema}.
local function handler(entry, where)
  if type(entry) == "function" then return { run = entry, guards = {} } end
  if type(entry) ~= "table" or type(entry.run) ~= "function" then
    error(where .. " must be a function or a table with a run function", 3)
  end
  if entry.schema ~= nil and not v.is_schema(entry.schema) then
    error(where .. ": schema must be built with lr.v", 3)
  end
  return { run = entry.run, guards = check_guards(entry.guards, where), schema = entry.schema }
end

--- Parse "GET /players/:id" into {method, segments}.
local function parse_route(key)
  local method, path = key:match("^(%u+)%s+(/%S*)$")
  if not method then
    if key:sub(1, 1) == "/" then method, path = "GET", key else return nil end
  end
  local segs = {}
  for seg in path:gmatch("[^/]+") do
    segs[#segs + 1] = seg:sub(1, 1) == ":" and { param = seg:sub(2) } or seg
  end
  return { method = method, segs = segs, key = key }
end

--- Compile a path pattern like "game-{id}" into a matcher.
local function compile_path(p)
  local names = {}
  local pat = "^" .. p:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"):gsub("{(%w+)}", function(n)
    names[#names + 1] = n
    return "([%w_%-]+)"
  end) .. "$"
  return function(id)
    local caps = { id:match(pat) }
    if #caps == 0 then
      if id == p then return {} end
      return nil
    end
    local params = {}
    for i, n in ipairs(names) do params[n] = caps[i] end
    return params
  end
end

--- Declare a room. Validates the definition and returns it (frozen shape).
function lr.room(def)
  if type(def) ~= "table" then error("lr.room expects a table", 2) end
  for k, val in pairs(def) do
    if type(k) ~= "string" then error("room definition keys must be strings", 2) end
    local spec = KNOWN[k]
    if not spec then
      if k:sub(1, 1) ~= "_" then error("unknown room option '" .. k .. "'", 2) end
    elseif not typeok(val, spec) then
      error("room option '" .. k .. "' must be a " .. spec .. ", got " .. type(val), 2)
    end
  end
  if type(def.path) ~= "string" or def.path == "" then error("a room needs a path, e.g. path = \"game-{id}\"", 2) end
  local d = { path = def.path, party = def.party or "main", src = def }
  d.match = compile_path(def.path)
  d.guards = check_guards(def.guards, "guards")
  d.fields, d.users_field, d.field_order = {}, nil, {}
  for k, f in pairs(def.state or {}) do
    if type(k) ~= "string" then error("state field names must be strings", 2) end
    if reserved(k) then
      error("state field '" .. k .. "' is a reserved name (room." .. k
        .. " is taken by the room itself; see \"Reserved names\" in the README)", 2)
    end
    if getmetatable(f) ~= FIELD then
      f = lr.sync(f)
      f.order = nil -- a plain default has no declaration order: after the others, by name
    end
    if f.kind == "users" then
      if d.users_field then error("a room has at most one lr.users() collection", 2) end
      d.users_field = k
    end
    d.fields[k] = f
    d.field_order[#d.field_order + 1] = k
  end
  table.sort(d.field_order, function(a, b)
    local oa, ob = d.fields[a].order or math.huge, d.fields[b].order or math.huge
    if oa ~= ob then return oa < ob end
    return a < b
  end)
  d.actions = {}
  for name, a in pairs(def.actions or {}) do
    if type(name) ~= "string" then error("action names must be strings", 2) end
    d.actions[name] = handler(a, "action '" .. name .. "'")
  end
  if def.unhandled then d.unhandled = handler(def.unhandled, "unhandled") end
  d.routes = {}
  for key, h in pairs(def.requests or {}) do
    local r = type(key) == "string" and parse_route(key)
    if not r then error("request key '" .. tostring(key) .. "' must look like \"GET /path/:param\"", 2) end
    local hd = handler(h, "request '" .. key .. "'")
    r.run, r.guards, r.schema = hd.run, hd.guards, hd.schema
    d.routes[#d.routes + 1] = r
  end
  -- Whole-path routing: static segments before params, then by key.
  table.sort(d.routes, function(a, b)
    for i = 1, math.max(#a.segs, #b.segs) do
      local x, y = a.segs[i], b.segs[i]
      if x == nil or y == nil then return x == nil end
      local sx, sy = type(x) == "string", type(y) == "string"
      if sx ~= sy then return sx end
    end
    return a.key < b.key
  end)
  d.maxUsers = def.maxUsers
  d.throttleSync = def.throttleSync or 0
  d.throttleStorage = def.throttleStorage or 0
  d.sessionExpiryTime = def.sessionExpiryTime or 300000
  d.transferExpiryTime = def.transferExpiryTime or 300000
  d.autoSync = def.autoSync ~= false
  d.budget = def.budget
  d.memory = def.memory
  -- Handlers that wait (lunaroom.tasks): max waiting per room, the default
  -- timeout of one wait and the total time of one handler (ms).
  d.waits = {}
  for k, val in pairs(def.waits or {}) do
    if (k ~= "max" and k ~= "timeout" and k ~= "handlerTimeout") or math.type(val) ~= "integer" or val < 1 then
      error("waits = { max = n, timeout = ms, handlerTimeout = ms } (positive integers)", 2)
    end
    d.waits[k] = val
  end
  d.limits = def.limits or {}
  for k, val in pairs(d.limits) do
    if (k ~= "frame" and k ~= "depth" and k ~= "elements") or math.type(val) ~= "integer" or val < 1 then
      error("limits = { frame = bytes, depth = n, elements = n } (positive integers)", 2)
    end
  end
  -- Request headers the room reads beyond the standard ones (x-room-token):
  -- libwebsockets cannot list the others, so the host copies these by name.
  d.headers = {}
  for i, name in ipairs(def.headers or {}) do
    if type(name) ~= "string" or #name > 64 or not name:match("^[%w%-]+$") then
      error("headers = { \"x-name\", ... }: entry " .. i .. " must be a header name (a-z 0-9 -, at most 64)", 2)
    end
    d.headers[i] = name:lower()
  end
  d.hibernate = def.hibernate == true
  d.hibernateAfter = def.hibernateAfter or 30000
  -- Eviction of an idle room with no connection and no timer (ms; 0 =
  -- never; nil = the server's --evict-after, 60000 by default).
  d.evictAfter = def.evictAfter
  if d.evictAfter ~= nil and (math.type(d.evictAfter) ~= "integer" or d.evictAfter < 0) then
    error("evictAfter must be an integer number of ms (0 = never evict)", 2)
  end
  -- Offline, unexpired sessions kept per room; past it the oldest expires early.
  d.maxOfflineSessions = def.maxOfflineSessions or 1000
  if math.type(d.maxOfflineSessions) ~= "integer" or d.maxOfflineSessions < 0 then
    error("maxOfflineSessions must be an integer >= 0", 2)
  end
  d.rateLimit = def.rateLimit or { rate = 100, burst = 200 }
  if type(d.rateLimit.rate) ~= "number" or type(d.rateLimit.burst) ~= "number" then
    error("rateLimit must be { rate = messages per second, burst = n } (rate 0 = off)", 2)
  end
  for _, hook in ipairs { "onCreate", "onJoin", "onLeave", "onSessionRestore", "onStorageRestore",
    "onUserStorageRestore", "interceptorPacket", "onReload" } do
    d[hook] = def[hook]
  end
  return setmetatable(d, ROOM)
end

function lr.is_room(x) return getmetatable(x) == ROOM end

--- Deep snapshot of a room, a user or any synced object: a plain table of
--- its persisted fields (createStatesSnapshotDeep of the reference).
function lr.snapshot(obj)
  if type(obj) == "table" and rawget(obj, "root") and rawget(obj, "def") then obj = rawget(obj, "root") end
  if core.is_proxy(obj) then return core.copy(obj, core.NOPERSIST) end
  if type(obj) ~= "table" then return obj end
  local t = {}
  for k, val in pairs(obj) do t[k] = lr.snapshot(val) end
  return setmetatable(t, getmetatable(obj))
end

--- Hydrate obj (a room, a user or any synced object) from a snapshot: every
--- key of the snapshot is written (merged), so the clients get a patch.
function lr.load(obj, snapshot)
  if type(snapshot) ~= "table" then error("lr.load expects a snapshot table", 2) end
  for k, val in pairs(snapshot) do obj[k] = val end
  return obj
end

lr.FIELD, lr.SCHEMA, lr.ROOM = FIELD, SCHEMA, ROOM

return lr

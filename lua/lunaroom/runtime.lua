-- lunaroom.runtime: the room rules the C host calls into.
--
-- Owns: room instances (state initialisation, restore from storage),
-- sessions (privateId/publicId, reconnect, multi-socket, expiry, transfer,
-- the offline cap per room and the new-session rate per address),
-- message dispatch (room guards, action guards, schema, handler), HTTP
-- routing and responses, and the packet interceptor glue.
-- Must not: encode packets, schedule flushes or touch sockets (C does), or
-- be reachable from room scripts (they only see lunaroom / lunaroom.schema).
--
-- Every function named in M.entry is called by room.c through the one
-- protected-call helper, with the server table as first argument. A user
-- callback runs as a task (lunaroom.tasks): in a pooled coroutine, so it may
-- wait (lunaroom.io), and its writes are rolled back alone when it fails.
-- What happens after a callback that waited (an action's error packet, the
-- join after a guard or onJoin, the next action of the same connection)
-- runs when it finished.

local core = require "lunaroom.core"
local lr = require "lunaroom"
local sandbox = require "lunaroom.sandbox"
local tasks = require "lunaroom.tasks"
local wait_c = require "lunaroom.wait_c"
local parse_owned = require("lunaroom.schema")._parse_owned

local M = {}
local null = core.null
local NOSYNC, NOPERSIST = core.NOSYNC, core.NOPERSIST
local PID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
local SECRET_LEN = 22 -- secrets (made-up session ids, transfer tokens): 22 x log2(62) = 131 bits

-- Connection tables share this metatable: conn:send(v), conn:close(), and
-- conn.id, which the table does not hold (its handle does: core.conn_id, a
-- string less per connection until something reads it). conn.state is made
-- on first read: until then the session's ids are the raw fields _pid and
-- _priv (a table less per connection); read them with conn_pid/conn_priv.
-- _pid/_priv are raw only while conn.state is not (its first read, or an
-- assignment, drops them).
local Conn = {}
local conn_id = core.conn_id
Conn.__index = function(self, k)
  local m = Conn[k]
  if m == nil then
    if k == "id" then return conn_id(self) end
    if k == "state" then
      local st = { publicId = rawget(self, "_pid"), privateId = rawget(self, "_priv") }
      rawset(self, "_pid", nil)
      rawset(self, "_priv", nil)
      rawset(self, "state", st)
      return st
    end
  end
  return m
end
Conn.__newindex = function(self, k, v) -- a new raw field; conn.state = t replaces the ids
  if k == "state" then
    rawset(self, "_pid", nil)
    rawset(self, "_priv", nil)
  end
  rawset(self, k, v)
end
function Conn:send(v) core.send(self, v) end
function Conn:close(code, reason) core.conn_close(self, code or 1000, reason or "") end

-- conn.state.publicId / privateId without making conn.state.
local function conn_pid(conn)
  local pid = conn._pid -- raw, or nil through Conn.__index
  if pid ~= nil then return pid end
  local st = rawget(conn, "state")
  return st and st.publicId
end
local function conn_priv(conn)
  local priv = conn._priv
  if priv ~= nil then return priv end
  local st = rawget(conn, "state")
  return st and st.privateId
end
M.conn_pid = conn_pid

------------------------------------------------------------------ helpers

local function deepcopy(x)
  if type(x) ~= "table" then return x end
  local t = {}
  for k, val in pairs(x) do t[k] = deepcopy(val) end
  return setmetatable(t, getmetatable(x))
end

local function log(level, fmt, ...) core.log(level, string.format(fmt, ...)) end
-- A refusal a client can repeat at will: rate-limited per key (host/log.c).
local function log_refusal(key, fmt, ...) core.log("info", string.format(fmt, ...), key) end

local function flags_of(f)
  local fl = 0
  if not f.sync then fl = fl | NOSYNC end
  if not f.persist then fl = fl | NOPERSIST end
  return fl
end

M.deepcopy, M.flags_of = deepcopy, flags_of -- shared with lunaroom.reload

local function hexbyte(h) return string.char(tonumber(h, 16)) end

-- Plain finds first: most keys and values have neither '%' nor '+', and a
-- pattern with a class costs a matcher set-up per call (every connect).
local function urldecode(s)
  if not (s:find("%", 1, true) or s:find("+", 1, true)) then return s end
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", hexbyte))
end

-- "a=1&b=2" -> {a = "1", b = "2"}. A plain find loop: gmatch would allocate
-- its match state (over 500 bytes) on every call, i.e. on every connection.
-- Linear in #q (it runs before any guard): '=' is looked for inside the
-- current "k=v" piece only, never past its '&' ("a&a&...&a=1" scanned to
-- the end for every piece would be quadratic).
local function parse_query(q)
  local t = {}
  q = q or ""
  -- Nothing encoded (the usual "id=..."): no urldecode per key and value.
  local dec = (q:find("%", 1, true) or q:find("+", 1, true)) and urldecode or nil
  local pos, n = 1, #q
  while pos <= n do
    local amp = q:find("&", pos, true) or n + 1
    if amp > pos then
      local piece = q:sub(pos, amp - 1)
      local eq = piece:find("=", 1, true)
      local k, val
      if eq then
        k, val = piece:sub(1, eq - 1), piece:sub(eq + 1)
      else
        k, val = piece, ""
      end
      if k ~= "" then
        if dec then k, val = dec(k), dec(val) end
        t[k] = val
      end
    end
    pos = amp + 1
  end
  return t
end

-- s without leading and trailing whitespace (%s), in linear time: the
-- pattern "^%s*(.-)%s*$" is quadratic on "a   ...   b" (every position of
-- the lazy capture retries the whole run of spaces).
local function trim(s)
  local n = #s
  if n == 0 then return "" end
  local c1, cn = s:byte(1), s:byte(n) -- the common case, nothing to trim: no pattern
  if c1 ~= 32 and (c1 < 9 or c1 > 13) and cn ~= 32 and (cn < 9 or cn > 13) then return s end
  local b = s:find("%S")
  if not b then return "" end
  local e = #s
  while e > b do
    local c = s:byte(e)
    if c ~= 32 and (c < 9 or c > 13) then break end
    e = e - 1
  end
  return s:sub(b, e)
end
M.trim = trim

-- Longest ?id=, ?_pk= and ?transferToken= accepted (bytes, decoded): longer
-- ones are refused with 4008 before any guard or storage lookup runs.
M.MAX_ID_BYTES = 256
local BOUNDED_PARAMS = { "id", "_pk", "transferToken" }
-- The query parser the joins use is core.parse_query (host/lua_api.c), the
-- same rules in C; parse_query above is its reference (spec/parse_query_spec.lua).
M.parse_query_lua = parse_query
parse_query = core.parse_query
M.parse_query = parse_query

-- dset semantics for restore: write value at a dotted path (objects only).
local function dset(root, path, value)
  local cur = root
  local parts = {}
  for p in path:gmatch("[^.]+") do parts[#parts + 1] = p end
  for i = 1, #parts - 1 do
    local k = parts[i]
    if type(cur[k]) ~= "table" then cur[k] = {} end
    cur = cur[k]
  end
  if #parts > 0 then cur[parts[#parts]] = value end
end

local function has_delete(x)
  if x == "$delete" then return true end
  if type(x) == "table" then
    for k, val in pairs(x) do
      if val == "$delete" then x[k] = nil; return true end
      if has_delete(val) then return true end
    end
  end
  return false
end

local function strip_deletes(x)
  if type(x) ~= "table" then return end
  for k, val in pairs(x) do
    if val == "$delete" then x[k] = nil else strip_deletes(val) end
  end
end

------------------------------------------------------------------ the room object

local Room = {} -- methods seen by handlers as room:method(...)

-- The server of a room object or party stub. Kept out of the object itself:
-- room code sees the object (next/rawget), and the server table is shared
-- by every room of the process.
local SRV = setmetatable({}, { __mode = "k" })
-- Rooms whose restore hooks wait: room -> the events that reached it
-- meanwhile (M.defer). A table of its own, not a field of the room object:
-- M.message checks it on every action.
local RESTORING = setmetatable({}, { __mode = "k" })
-- Connections with an action that waits: conn -> queue of the actions they
-- sent meanwhile ({action, value}, handled in order once it finished), or
-- RESTORE_MARK while the room of a connection that stayed open through
-- hibernation is restored (its actions go to the room's queue then: M.message
-- pays nothing more for it).
local BUSY = setmetatable({}, { __mode = "k" })
local RESTORE_MARK = { restoring = true }
--- The server a room (or party stub) belongs to, for host modules (reload).
function M.server_of(room) return SRV[room] end

function Room:send(conn, value) core.send(conn, value) end
function Room:broadcast(value, except) core.broadcast(rawget(self, "h"), value, except) end
function Room:applySync() core.room_apply_sync(rawget(self, "h")) end
function Room:connections() return core.room_conns(rawget(self, "h")) end
function Room:now() return core.now(SRV[self].h) end
function Room:dispose() core.room_dispose(rawget(self, "h")) end
function Room:log(...) log("info", "room %s: %s", rawget(self, "key"), table.concat({ ... }, " ")) end

--- room:timer(ms, fn) -> id. fn(room) runs after ms (protected, budgeted).
function Room:timer(ms, fn)
  local srv, key = SRV[self], rawget(self, "key")
  return core.timer(srv.h, rawget(self, "h"), math.floor(ms), function()
    local room = srv.rooms[key] -- C woke it before calling us
    if not room then return end
    if M.defer(room, function()
      if srv.rooms[key] ~= room then return end
      local ok, err = tasks.run(srv, room, "timer", fn, room)
      if ok == false then log("warn", "room %s: timer failed: %s", key, err) end
    end) then return end
    local ok, err = tasks.run(srv, room, "timer", fn, room)
    if ok == false then log("warn", "room %s: timer failed: %s", key, err) end
  end)
end
function Room:cancel(id) core.cancel(SRV[self].h, id) end

--- room:sessionTransfer(conn, targetRoomId) -> token | nil, err
--- room:sessionTransfer(conn, targetRoomId, {url = "http://host:port", party = "main",
---   timeout = ms}, function(room, token, err) ... end) -> true | nil, err
--- The second form transfers to a room of another process (asynchronous;
--- both processes need the same SHARD_SECRET).
function Room:sessionTransfer(conn, target, opts, done)
  return M.session_transfer(SRV[self], self, conn, target, opts, done)
end

-- room.parties.main:get("other"):fetch("/count", {method, headers, body})
-- Room-to-room HTTP inside the process: the target room is created on first
-- use and its route runs to completion before fetch returns.
local Stub = {}
Stub.__index = Stub
-- What fetch returns: {status, ok, headers (lower-case names), body} plus
-- res.json() / res.text() (also res:json()). The methods live in the
-- metatable, so the result is plain data: a route may return it as is (it is
-- answered with the same status, content type and body).
local FETCHED = {}
FETCHED.__index = function(res, k)
  if k == "json" then return function() return core.decode(rawget(res, "body") or "") end end
  if k == "text" then return function() return rawget(res, "body") or "" end end
end
M.FETCHED = FETCHED
function Stub:fetch(path, init)
  init = init or {}
  local body = init.body
  local headers = {}
  for k, val in pairs(init.headers or {}) do headers[k:lower()] = tostring(val) end
  if type(body) == "table" then
    body = core.encode(body)
    headers["content-type"] = headers["content-type"] or "application/json"
  end
  local p, q = path:match("^([^?]*)%??(.*)$")
  if p ~= "" and p:sub(1, 1) ~= "/" then p = "/" .. p end
  local res, pending = core.http(SRV[self].h, init.method or "GET",
    "/parties/" .. self.ns .. "/" .. self.id .. (p == "/" and "" or p), q, headers, body)
  if not res then -- the target's route waits: so does this handler (lunaroom.tasks)
    if not coroutine.isyieldable() then error("fetch: the target room's route waits, and this call cannot", 2) end
    -- Resumed by the answer itself (core.http_take's callback), not a poll.
    local ok, got = coroutine.yield("lunaroom.await", function(done)
      local now_res = core.http_take(pending, done)
      if now_res then return done(now_res) end
      return function() core.http_take(pending, false) end
    end, init.timeout, "fetch")
    if ok == require("lunaroom.io").ERROR then error(got, 0) end
    res = ok
  end
  res.ok = res.status >= 200 and res.status < 300
  return setmetatable(res, FETCHED)
end

local function parties_of(room)
  local srv = SRV[room]
  return setmetatable({}, { __index = function(_, ns)
    return { get = function(_, id) local stub = setmetatable({ ns = ns, id = id }, Stub); SRV[stub] = srv; return stub end }
  end })
end

local Storage = {} -- room.storage (below); declared before RoomMT uses it
local RoomMT = {}
-- "def" and "root" are raw fields of every instance (create_room sets them
-- before any access), so self.def / self.root read them without running a
-- metamethod, and without rawget's C call on every state access.
RoomMT.__index = function(self, k)
  local d = self.def
  if d.fields[k] then return self.root[k] end
  if k == "autoSync" then -- raw _autoSync once room code or a reload set it, else the definition's
    local v = rawget(self, "_autoSync")
    if v == nil then v = d.autoSync end
    return v
  end
  if k == "params" then -- made on first use (the path's captures): most rooms never read them
    local params = d.match(rawget(self, "id")) or {}
    rawset(self, "params", params)
    return params
  end
  if k == "parties" then return parties_of(self) end
  if k == "storage" then -- made on first use: most rooms never touch it
    local st = rawget(self, "_storage")
    if not st then
      st = setmetatable({ h = rawget(self, "h") }, Storage)
      rawset(self, "_storage", st)
    end
    return st
  end
  if k == "env" then return SRV[self].env_view end
  return Room[k]
end
RoomMT.__newindex = function(self, k, value)
  local d = self.def
  if d.fields[k] then
    self.root[k] = value
  elseif k == "autoSync" then
    rawset(self, "_autoSync", value and true or false)
    core.room_config(rawget(self, "h"), { autoSync = value and true or false })
  else
    rawset(self, k, value)
  end
end
RoomMT.__tostring = function(self) return "room " .. rawget(self, "key") end

local function users_of(room) -- every action of a room with users: raw fields, no rawget calls
  local d = room.def
  return d.users_field and room.root[d.users_field] or nil
end

local function user_of(room, conn)
  local users = users_of(room)
  local pid = conn_pid(conn)
  if users and pid then return users[pid] end
  return nil
end

-- Storage facade for room code and specs: room.storage:get(key) ...
Storage.__index = Storage
function Storage:get(key) return core.store_get(self.h, key) end
function Storage:put(key, value) return core.store_apply(self.h, { { "put", key, value } }) end
function Storage:delete(key) return core.store_apply(self.h, { { "del", key } }) end
function Storage:list(prefix)
  local out = {}
  for _, kv in ipairs(core.store_list(self.h, prefix or "")) do out[kv[1]] = kv[2] end
  return out
end
function Storage:entries(prefix) return core.store_list(self.h, prefix or "") end
function Storage:count() return core.store_count(self.h) end

------------------------------------------------------------------ servers

--- Create the Lua side of a server around a C server handle.
function M.new_server(h, opts)
  local srv = { h = h, defs = {}, rooms = {}, opts = opts or {}, env = (opts or {}).env or {},
    sleeping = {}, -- key -> the definition a hibernated room ran (its clients have that state)
    -- /metrics, kept as counters so a scrape does not walk the rooms:
    -- sessions of rooms in memory, and path -> version -> live rooms.
    stat = { online = 0, offline = 0 }, census = {} }
  -- room.env: a read-only view of the process environment the host passed
  -- (SHARD_SECRET, AUTH_JWT_SECRET, WORLD_ID, ...), like the reference's room.env.
  srv.env_view = setmetatable({}, {
    __index = srv.env, __pairs = function(view)
      return function(_, k) return next(srv.env, k) end, view, nil -- never the table itself
    end,
    __newindex = function() error("room.env is read-only", 2) end, __metatable = false,
  })
  core.server_bind(h, srv)
  return srv
end

--- The host copies the request headers def declares (lr.room{headers}).
function M.want_headers(srv, def)
  for _, name in ipairs(def.headers or {}) do
    local ok, err = core.want_header(srv.h, name)
    if not ok then log("warn", "room %s: %s", def.path, err) end
  end
end

--- Add (or replace, by file) a room definition. Order of addition is the
--- resolution order, like the reference's rooms array.
function M.add_definition(srv, def, file, version)
  M.want_headers(srv, def)
  for i, e in ipairs(srv.defs) do
    if file and e.file == file then
      srv.defs[i] = { def = def, file = file, version = version }
      return
    end
  end
  srv.defs[#srv.defs + 1] = { def = def, file = file, version = version }
end

--- Load every *.lua file of dir that returns a room. Returns count, errors:
--- a file that does not load, and a file whose path (in its party) another
--- file already serves, is an error (`serve` refuses to start on any, unless
--- --dev; the duplicate is then not served).
function M.load_dir(srv, dir)
  local files, err = sandbox.list_rooms(dir)
  if not files then return nil, err end
  local errors = {}
  local owner = {} -- "party path" -> file
  for _, e in ipairs(srv.defs) do owner[e.def.party .. " " .. e.def.path] = e.file or "(built in)" end
  for _, f in ipairs(files) do
    local def, version_or_err = sandbox.load_room_file(f, dir)
    local other = def and owner[def.party .. " " .. def.path]
    if other then
      errors[#errors + 1] = string.format("%s: path '%s' (party %s) is already served by %s",
        f, def.path, def.party, other)
      log("error", "%s", errors[#errors])
    elseif def then
      owner[def.party .. " " .. def.path] = f
      M.add_definition(srv, def, f, version_or_err)
      log("info", "loaded %s (path %s, version %s)", f, def.path, version_or_err)
    elseif version_or_err ~= sandbox.NOT_A_ROOM then
      errors[#errors + 1] = version_or_err
      log("error", "%s", version_or_err)
      -- --dev: its clients get the error and wait for a good save
      if srv.dev then require("lunaroom.reload").dev_start_failure(srv, f, version_or_err) end
    end
  end
  return #srv.defs, errors
end

local function resolve(srv, ns, id)
  local party_has_defs = false
  for _, e in ipairs(srv.defs) do
    if e.def.party == ns then party_has_defs = true break end
  end
  local want = party_has_defs and ns or "main"
  for _, e in ipairs(srv.defs) do
    if e.def.party == want then
      local params = e.def.match(id)
      if params then return e, params end
    end
  end
  return nil
end

------------------------------------------------------------------ room creation and restore

local function user_defaults(schema)
  local t = {}
  for k, f in pairs(schema.fields) do t[k] = deepcopy(f.default) end
  return t
end

local function apply_user_flags(user_proxy, schema)
  for k, f in pairs(schema.fields) do
    if user_proxy[k] ~= nil then
      local fl = flags_of(f)
      if fl ~= 0 then core.set_flags(user_proxy, k, fl) end
    end
  end
end

local function is_internal(k)
  return k:sub(1, 6) == "state:" or k:sub(1, 8) == "session:" or k:sub(1, 15) == "session-public:"
    or k:sub(1, 9) == "transfer:" or k:sub(1, 6) == "$room:"
end

-- Read the persisted snapshot (§4.5), migrating the legacy layout.
local function read_snapshot(room)
  local h = rawget(room, "h")
  local entries = core.store_list(h, "state:")
  local legacy = false
  local root
  if #entries == 0 then
    local all = core.store_list(h, "")
    local ops, found = {}, false
    for _, kv in ipairs(all) do
      local k = kv[1]
      if not is_internal(k) then
        found = true
        if k == "." then root = kv[2] else entries[#entries + 1] = { "state:" .. k, kv[2] } end
        ops[#ops + 1] = { "put", "state:" .. k, kv[2] }
        ops[#ops + 1] = { "del", k }
      end
    end
    if found then
      legacy = true
      local ok, err = core.store_apply(h, ops)
      if not ok then log("error", "room %s: legacy migration failed: %s", rawget(room, "key"), err) end
      log("info", "room %s: migrated %d legacy keys to the state: layout", rawget(room, "key"), #ops // 2)
    end
  end
  local compact = false
  for _, kv in ipairs(entries) do
    if kv[1] == "state:." then root = kv[2] end
  end
  root = type(root) == "table" and root or {}
  for _, kv in ipairs(entries) do
    if kv[1] ~= "state:." then
      if kv[2] == "$delete" then compact = true end
      dset(root, kv[1]:sub(7), kv[2])
    end
  end
  if has_delete(root) then compact = true end
  strip_deletes(root)
  return root, legacy, compact
end

-- Restore hooks (onStorageRestore, then onUserStorageRestore for each
-- user) run one after another, each as a task: any of them may wait. Their
-- results are applied to the state only once the last one finished (a
-- snapshot is never half applied); a hook that fails (an error, a wait that
-- timed out, its time limit) is logged and the snapshot as stored is used
-- for its part, as for a hook that does not wait. done(needs_write, waited)
-- runs when the state is restored: at once when no hook waited.
local function restore(room, d, done)
  local snapshot, legacy, compact = read_snapshot(room)
  local key = rawget(room, "key")
  local srv = SRV[room]
  local root = rawget(room, "root")
  local waited = false
  local order = d.field_order
  -- users[i] = {field, pid, snap}: the user snapshots, in a fixed order
  local users, ui = nil, 0
  local step -- runs the next hook; false when one waits (resumed by its after)

  local function took(name, ok, res, code)
    if not ok then
      log("warn", "room %s: %s failed: the stored snapshot is used", key, name)
      return nil
    end
    return type(res) == "table" and res or nil
  end

  -- Run hook fn(ctx) as a task; k(result or nil). false when it waits.
  local function hook(name, fn, ctx, k)
    local st, a, b = tasks.run(srv, room, name, fn, ctx)
    if st == tasks.PENDING then
      waited = true
      a.after = function(ok, res, code)
        k(took(name, ok, res, code))
        return step()
      end
      return false
    end
    k(took(name, st, a, b))
    return true
  end

  local function apply()
    for _, k in ipairs(order) do
      local f = d.fields[k]
      local val = snapshot[k]
      if val ~= nil then
        if f.kind == "users" then
          local us = root[k]
          for _, e in ipairs(users) do
            if e[1] == k then
              local u = user_defaults(f.schema)
              for fk, fv in pairs(e[3]) do
                if f.schema.fields[fk] and fk ~= f.schema.connected then u[fk] = fv end
              end
              us[e[2]] = u
              apply_user_flags(us[e[2]], f.schema)
            end
          end
        elseif f.persist then
          root[k] = val
        end
      end
    end
    return done(compact or legacy, waited)
  end

  local function list_users()
    users = {}
    for _, k in ipairs(order) do
      local f = d.fields[k]
      local val = snapshot[k]
      if f.kind == "users" and type(val) == "table" then
        local pids = {}
        for pid, usnap in pairs(val) do
          if type(usnap) == "table" then pids[#pids + 1] = pid end
        end
        table.sort(pids, function(x, y) return tostring(x) < tostring(y) end)
        for _, pid in ipairs(pids) do users[#users + 1] = { k, pid, val[pid] } end
      end
    end
  end

  function step()
    if not users then list_users() end
    while ui < #users do
      ui = ui + 1
      local e = users[ui]
      if d.onUserStorageRestore then
        local f = d.fields[e[1]]
        local ctx = { userSnapshot = e[3], user = user_defaults(f.schema), publicId = e[2], room = room, legacy = legacy }
        if not hook("onUserStorageRestore", d.onUserStorageRestore, ctx, function(res)
          if res then e[3] = res end
        end) then return end
      end
    end
    return apply()
  end

  if d.onStorageRestore then
    if not hook("onStorageRestore", d.onStorageRestore, { snapshot = snapshot, room = room, legacy = legacy },
      function(res) if res then snapshot = res end end) then
      return
    end
  end
  return step()
end

--- The engine settings of a definition (core.room_config), also used when a
--- hot reload changes them; 0 restores a process default.
function M.config_of(d)
  return {
    throttleSync = d.throttleSync, throttleStorage = d.throttleStorage,
    interceptor = d.interceptorPacket ~= nil, budget = d.budget or 0, memory = d.memory or 0,
    rate = d.rateLimit.rate, burst = d.rateLimit.burst,
    maxFrame = d.limits.frame or 0, maxDepth = d.limits.depth or 0, maxElements = d.limits.elements or 0,
    hibernate = d.hibernate and d.hibernateAfter or 0,
    evict = d.evictAfter or -1, -- -1: the server's --evict-after
    -- A join builds a connect context (with the request headers) for room
    -- guards and onJoin only: without them the host passes the request as
    -- {query, ip}, all M.connect reads then.
    leanConnect = d.guards[1] == nil and not d.onJoin,
  }
end

-- Where a room's code comes from, {file, version, party}: one table shared
-- by the rooms of one definition (as room.def is) with the same file,
-- version and party (own fields would cost each room a bigger hash part).
-- Replaced, never changed: a reload points each room at its new one.
local SRCS = setmetatable({}, { __mode = "k" }) -- def -> "file\0version\0party" -> src
function M.src_of(def, file, version, party)
  local by = SRCS[def]
  if not by then
    by = {}
    SRCS[def] = by
  end
  local k = tostring(file) .. "\0" .. tostring(version) .. "\0" .. party
  local src = by[k]
  if not src then
    src = { file = file, version = version, party = party }
    by[k] = src
  end
  return src
end

--- Called by C when a client or request names a room that is not live yet.
--- With rebind, the C room exists (it hibernated) and keeps its connections.
--- entry ({def, file, version}) builds it with that definition instead of
--- the one that serves ns/id now.
function M.create_room(srv, ns, id, rebind, entry)
  local e = resolve(srv, ns, id)
  if entry then e = entry end
  if not e then return nil end
  local d = e.def
  -- At most 8 raw fields (def, id, key, src, sockets, h, root, and params
  -- once read): a ninth doubles the table's hash part, 192 bytes more on
  -- every room. params (the path's captures) is made by RoomMT.__index on
  -- first use: a table and a string less on every room that never reads it.
  local room = setmetatable({
    def = d, id = id, key = ns .. "/" .. id,
    src = M.src_of(d, e.file, e.version, ns),
    sockets = { 0 }, -- [1]: sessions with an open socket; privateId -> number of its open sockets
    -- expiry: privateId -> timer id, made by the first arm_expiry
  }, RoomMT)
  SRV[room] = srv
  local h = rebind and core.room_rebind(srv.h, ns, id, room) or core.room_new(srv.h, ns, id, room)
  rawset(room, "h", h)
  local root = core.room_root(h)
  rawset(room, "root", root)
  for _, k in ipairs(d.field_order) do
    local f = d.fields[k]
    root[k] = f.kind == "users" and {} or deepcopy(f.default)
    local fl = flags_of(f)
    if fl ~= 0 then core.set_flags(root, k, fl) end
  end
  core.room_clear_dirty(h) -- the defaults are not a change (written again by a hook that waits otherwise)
  local cfg = M.config_of(d)
  cfg.autoSync = d.autoSync
  srv.rooms[room.key] = room
  if not rebind then M.census(srv, d.path, e.version, 1) end
  -- While a restore hook waits, the events that reach the room (joins,
  -- actions, closes, HTTP requests, timers) queue here, in arrival order;
  -- they run once it is restored (M.defer).
  local queue, marked
  if not d.direct and (d.onStorageRestore or d.onUserStorageRestore) then -- else it cannot wait
    queue = {}
    RESTORING[room] = queue
    if rebind then -- its open connections: their actions queue until it is restored
      marked = core.room_conns(h)
      for _, conn in ipairs(marked) do
        if BUSY[conn] == nil then BUSY[conn] = RESTORE_MARK end
      end
    end
  end
  local function restored(needs_write, waited)
    if queue then RESTORING[room] = nil end
    for _, conn in ipairs(marked or {}) do
      if BUSY[conn] == RESTORE_MARK then BUSY[conn] = nil end
    end
    core.room_clear_dirty(h)
    -- A restore that waited may have committed writes of its hooks at their
    -- waits; the restored state is written once so that storage matches it.
    if needs_write or waited then core.room_mark_all(h) end
    core.room_config(h, cfg)
    local live = {}
    if rebind then
      -- Woken from hibernation: its sockets are still open; the clients have
      -- this state already, so nothing is sent.
      local sockets = rawget(room, "sockets")
      local users = users_of(room)
      local schema = users and d.fields[d.users_field].schema
      for _, conn in ipairs(core.room_conns(h)) do
        local priv, pid = conn_priv(conn), conn_pid(conn)
        if priv then
          if not sockets[priv] then M.online(room, 1) end
          sockets[priv] = (sockets[priv] or 0) + 1
          live[priv] = true
          if schema and schema.connected and users[pid] ~= nil then users[pid][schema.connected] = true end
        end
      end
      core.room_clear_dirty(h)
      if needs_write or waited then core.room_mark_all(h) end
    end
    M.restore_sessions(room, rebind, live)
    if d.onCreate and not rebind then tasks.run(srv, room, "onCreate", d.onCreate, room) end
    if waited and queue then
      for i = 1, #queue do
        local ok, err = pcall(queue[i].run)
        if not ok then log("error", "room %s: an event queued during its restore failed: %s", room.key, tostring(err)) end
      end
    end
  end
  restore(room, d, restored)
  return room
end

--- Run fn now, or, while room's restore hooks wait, once it is restored
--- (in arrival order). cancel runs instead when the room goes away first.
--- Returns true when it was queued.
function M.defer(room, fn, cancel)
  local q = RESTORING[room]
  if not q then return false end
  q[#q + 1] = { run = fn, cancel = cancel }
  return true
end

--- Whether a definition serves ns/id (the engine asks before it waits for
--- a room's storage to load).
function M.has_room(srv, ns, id) return resolve(srv, ns, id) ~= nil end

-- Development mode: the dev_error value for ns/id when no definition serves
-- it but a room file that does not load declares it (lunaroom.reload).
local function dev_failed(srv, ns, id)
  if not srv.dev then return nil end
  local reload = package.loaded["lunaroom.reload"]
  return reload and reload.dev_failed(srv, ns, id) or nil
end

--- Asked by the engine (host/router.c) for a WebSocket to ns/id that no
--- definition serves: the dev_error packet (JSON) when the room file that
--- declares ns/id does not load (--dev), else nil. The socket then waits
--- for a save that loads.
function M.dev_failed(srv, ns, id)
  local v = dev_failed(srv, ns, id)
  return v and core.encode { type = "dev_error", value = v } or nil
end

--- A room is evicted (C, hibernation): remember the code it ran.
function M.hibernate_room(srv, key)
  local room = srv.rooms[key]
  if room then
    M.unaccount(room)
    local src = rawget(room, "src")
    srv.sleeping[key] = { def = rawget(room, "def"), file = src.file, version = src.version }
  end
  srv.rooms[key] = nil
end

--- A hibernated room is needed again (C calls this before any event). It is
--- rebuilt on the code it ran, which its storage and its clients' state
--- match; if its file was reloaded meanwhile it then takes the new code as
--- a live room would (new fields, "$delete" for removed ones, onReload); if
--- its file was deleted it keeps its code, as live rooms do.
function M.wake(srv, ns, id)
  local key = ns .. "/" .. id
  local slept = srv.sleeping[key]
  local now = resolve(srv, ns, id)
  local room = M.create_room(srv, ns, id, true, slept)
  if not room then error("no definition serves " .. key .. " any more") end
  srv.sleeping[key] = nil -- forgotten only once the room is rebuilt
  if slept and now and now.def ~= slept.def then
    local function up() require("lunaroom.reload").upgrade(room, now) end
    if not M.defer(room, up) then up() end -- first in its queue when its restore waits
  end
end


------------------------------------------------------------------ sessions

local function now(room) return core.now(SRV[room].h) end

local function get_session(room, priv) return core.store_get(rawget(room, "h"), "session:" .. priv) end

local function put_session(room, priv, s, index_pid)
  local ops = { { "put", "session:" .. priv, s } }
  if index_pid then
    local h = rawget(room, "h")
    local idx = core.store_get(h, "session-public:" .. index_pid) or {}
    local present = false
    for _, p in ipairs(idx) do if p == priv then present = true end end
    if not present then idx[#idx + 1] = priv end
    ops[#ops + 1] = { "put", "session-public:" .. index_pid, lr.array(idx) }
  end
  local ok, err = core.store_apply(rawget(room, "h"), ops)
  if not ok then log("error", "room %s: session %s not saved: %s", rawget(room, "key"), priv, err) end
end

------------------------------------------------------------------ session bookkeeping

-- Each room instance counts its online sessions (sockets[1]: sessions with
-- an open socket; M.online_sessions) and keeps its offline, unexpired sessions in disconnection
-- order (room.offq: a FIFO with lazy deletion), so that
--   * past d.maxOfflineSessions the oldest offline session is expired early
--     (a room keeps accepting new players; the ones gone longest lose their
--     seat first), in O(1) amortised;
--   * srv.stat (online / offline totals for /metrics) stays exact without a
--     walk over the rooms.

local expire_session -- below

--- n sessions of room went online (+) or offline (-).
function M.online(room, n)
  local sockets = room.sockets
  sockets[1] = sockets[1] + n
  local st = SRV[room].stat
  st.online = st.online + n
end

local function offq(room)
  local q = rawget(room, "offq")
  if not q then
    q = { head = 1, tail = 0, pos = {}, n = 0 } -- [i] = privateId; pos[priv] = i
    rawset(room, "offq", q)
  end
  return q
end

local function offline_remove(room, priv)
  local q = rawget(room, "offq")
  local i = q and q.pos[priv]
  if not i then return end
  q.pos[priv], q[i] = nil, nil
  q.n = q.n - 1
  local st = SRV[room].stat
  st.offline = st.offline - 1
  if q.tail - q.head + 1 > 2 * q.n + 64 then -- mostly holes: compact, keeping the order
    local j = 0
    for k = q.head, q.tail do
      local p = q[k]
      q[k] = nil
      if p then
        j = j + 1
        q[j] = p
        q.pos[p] = j
      end
    end
    q.head, q.tail = 1, j
  end
end

-- The oldest offline session of room, or nil.
local function offline_oldest(q)
  while q.head <= q.tail do
    local p = q[q.head]
    if p then return p end
    q.head = q.head + 1
  end
end

-- priv went offline (not expired yet). Past the room's cap the oldest
-- offline sessions expire now.
local function offline_add(room, priv)
  local q = offq(room)
  if q.pos[priv] then return end
  q.tail = q.tail + 1
  q[q.tail], q.pos[priv] = priv, q.tail
  q.n = q.n + 1
  local st = SRV[room].stat
  st.offline = st.offline + 1
  local cap = rawget(room, "def").maxOfflineSessions
  while q.n > cap do
    local oldest = offline_oldest(q)
    local exp = rawget(room, "expiry")
    if exp and exp[oldest] then
      core.cancel(SRV[room].h, exp[oldest])
      exp[oldest] = nil
    end
    log("info", "room %s: %d offline sessions (maxOfflineSessions): session %s expired early",
      rawget(room, "key"), q.n, oldest)
    expire_session(room, oldest)
    offline_remove(room, oldest) -- even if it was not in storage any more
  end
end

--- room's instance goes away (hibernation, disposal): its sessions leave
--- the totals (a rebuilt instance counts them again).
function M.unaccount(room)
  local st = SRV[room].stat
  local sockets = rawget(room, "sockets")
  st.online = st.online - sockets[1]
  sockets[1] = 0
  local q = rawget(room, "offq")
  if q then
    st.offline = st.offline - q.n
    rawset(room, "offq", nil)
  end
end

--- A room instance was built (create_room): its offline sessions, from
--- storage. Sessions left "connected" by a crash are offline now (Part 1
--- row 12). In a fresh instance (not a wake from hibernation, whose expiry
--- timers still run) each offline session gets an expiry timer for the time
--- it has left, and one whose time is up expires now.
function M.restore_sessions(room, rebind, live)
  local d, h, srv = rawget(room, "def"), rawget(room, "h"), SRV[room]
  local t = core.now(srv.h)
  local offline = {}
  for _, kv in ipairs(core.store_list(h, "session:")) do
    local s, priv = kv[2], kv[1]:sub(9)
    if type(s) == "table" and not live[priv] then
      if s.connected then
        s.connected = false
        s.disconnectedAt = t
        core.store_apply(h, { { "put", kv[1], s } })
      end
      local at = math.type(s.disconnectedAt) and s.disconnectedAt or t
      offline[#offline + 1] = { priv = priv, at = at }
    end
  end
  table.sort(offline, function(a, b)
    if a.at ~= b.at then return a.at < b.at end
    return a.priv < b.priv
  end)
  local expiry = d.sessionExpiryTime
  for _, o in ipairs(offline) do
    if not rebind and type(expiry) == "number" and expiry >= 0 and expiry < math.huge then
      local left = math.min(expiry, expiry - (t - o.at))
      if left <= 0 then
        expire_session(room, o.priv)
      else
        M.arm_expiry(room, o.priv, left)
        offline_add(room, o.priv)
      end
    else
      offline_add(room, o.priv)
    end
  end
end

-- Delete a session; delete its user when no other session maps to it.
function expire_session(room, priv)
  local h = rawget(room, "h")
  local s = get_session(room, priv)
  if not s or s.connected or (rawget(room, "sockets")[priv] or 0) > 0 then return end
  offline_remove(room, priv)
  local pid = s.publicId
  local idx = core.store_get(h, "session-public:" .. pid) or {}
  local rest = {}
  for _, p in ipairs(idx) do if p ~= priv then rest[#rest + 1] = p end end
  local ops = { { "del", "session:" .. priv } }
  if #rest == 0 then ops[#ops + 1] = { "del", "session-public:" .. pid }
  else ops[#ops + 1] = { "put", "session-public:" .. pid, lr.array(rest) } end
  core.store_apply(h, ops)
  local exp = rawget(room, "expiry")
  if exp then exp[priv] = nil end
  local users = users_of(room)
  if #rest == 0 and users and users[pid] ~= nil then
    users[pid] = nil
    log("info", "room %s: session %s expired, user %s removed", rawget(room, "key"), priv, pid)
  end
end

function M.arm_expiry(room, priv, ms)
  if type(ms) ~= "number" or ms < 0 or ms ~= ms or ms == math.huge then return end
  local srv, key = SRV[room], rawget(room, "key")
  local exp = rawget(room, "expiry")
  if not exp then
    exp = {}
    rawset(room, "expiry", exp)
  end
  if exp[priv] then core.cancel(srv.h, exp[priv]) end
  exp[priv] = core.timer(srv.h, rawget(room, "h"), math.floor(ms), function()
    local cur = srv.rooms[key] -- the instance may have been rebuilt meanwhile
    if not cur then return end
    if M.defer(cur, function() if srv.rooms[key] == cur then expire_session(cur, priv) end end) then return end
    local cexp = rawget(cur, "expiry")
    if cexp then cexp[priv] = nil end
    expire_session(cur, priv)
  end)
end

local function run_guards(guards, a, b, room)
  -- ipairs' walk (up to the first nil) without its two C calls per guard:
  -- this runs twice for every action, most often on an empty list.
  local i, g = 1, guards[1]
  while g ~= nil do
    if not g(a, b, room) then return false end
    i = i + 1
    g = guards[i]
  end
  return true
end

-- Distinct online sessions (for maxUsers).
local function online_sessions(room) return rawget(room, "sockets")[1] end
M.online_sessions = online_sessions

local function redeem_transfer(room, token)
  local h = rawget(room, "h")
  local t = core.store_get(h, "transfer:" .. token)
  if t == nil then return nil end
  core.store_apply(h, { { "del", "transfer:" .. token } })
  local d = rawget(room, "def")
  if type(t) ~= "table" or type(t.created) ~= "number" or now(room) - t.created >= d.transferExpiryTime then
    return nil
  end
  return t
end

-- Connections whose connect waits (a room guard or onJoin): conn -> {closed,
-- session}. They are not joined yet: their frames wait in the host (early
-- frames) and run in order after the join; a close meanwhile abandons it.
local JOINING = setmetatable({}, { __mode = "k" })

-- A join that waited (room guard, onJoin, restore) on a room that was
-- disposed meanwhile: the connection, not in the room's list yet, is closed.
local function disposed_join(conn)
  JOINING[conn] = nil
  if wait_c.alive(conn) then conn:close(1001, "room disposed") end
end
local connect_guarded, connect_joined

--- A socket opened on room. Runs guards, restores or creates the session and
--- the user, runs onJoin and sends the pId snapshot (core.join). Guards and
--- onJoin may wait (the rest of the connect follows when they finished).
function M.connect(srv, room, conn, req, waited)
  if RESTORING[room] then -- its restore hooks wait: the join waits too
    local held = { closed = false }
    JOINING[conn] = held
    M.defer(room, function()
      if JOINING[conn] ~= held then return end
      JOINING[conn] = nil
      if held.closed then return end
      return M.connect(srv, room, conn, req, true)
    end, function() return disposed_join(conn) end)
    return
  end
  local d, key = room.def, room.key -- raw fields of every room: no rawget call
  local q = parse_query(req.query)
  for i = 1, #BOUNDED_PARAMS do
    local name = BOUNDED_PARAMS[i]
    if q[name] and #q[name] > M.MAX_ID_BYTES then
      log_refusal("id too long", "room %s: connection %s refused: ?%s= longer than %d bytes", key, conn.id, name,
        M.MAX_ID_BYTES)
      conn:close(4008, name .. " too long (max " .. M.MAX_ID_BYTES .. " bytes)")
      return
    end
  end
  local sid = q.id and trim(q.id) or nil
  if sid == "" then sid = nil end
  sid = sid or (q._pk ~= "" and q._pk) or nil
  -- No id given: the session id is a secret the client never learns, so it
  -- is 128+ bits from the CSPRNG, not conn.id (conn.id is logged and shown
  -- to room code; the reference uses conn.id here).
  rawset(conn, "sessionId", sid or core.random_id(srv.h, SECRET_LEN, PID_ALPHABET)) -- its own field: no __newindex call
  -- The connection context exists for room guards and onJoin only: a room
  -- with neither makes no garbage for it on every join.
  local ctx = nil
  if d.guards[1] ~= nil or d.onJoin then
    ctx = {
      request = {
        method = req.method, url = "http://" .. (req.headers.host or "localhost") .. req.path
          .. (req.query ~= "" and ("?" .. req.query) or ""),
        path = req.path, headers = req.headers, query = q, ip = req.ip,
      },
    }
  end
  -- No room guard and no onJoin: nothing can wait, so nothing can close the
  -- join half-way; it needs no pending record (pend nil).
  if not ctx and not waited then return connect_guarded(srv, room, conn, q, req, nil, nil, true, true) end
  local pend = { closed = false, waited = waited }
  JOINING[conn] = pend
  -- No room guard: they all passed (no task to run them in).
  if d.guards[1] == nil then return connect_guarded(srv, room, conn, q, req, ctx, pend, true, true) end
  local st, w = tasks.run(srv, room, "guard", run_guards, d.guards, conn, ctx, room)
  if st == tasks.PENDING then
    pend.waited = true
    w.after = function(ok, passed) return connect_guarded(srv, room, conn, q, req, ctx, pend, ok, passed) end
    w.cancel = function() return disposed_join(conn) end
    return
  end
  return connect_guarded(srv, room, conn, q, req, ctx, pend, st, w)
end

-- A connection whose guard or onJoin waited closed meanwhile: the join is
-- abandoned; a session it had taken goes offline as on any close.
local function abandon(srv, room, conn, pend)
  JOINING[conn] = nil
  if pend.session then M.close(srv, room, conn) end
end

-- The room guards of a connect answered (ok false: one failed). pend nil: a
-- join that cannot wait (M.connect).
function connect_guarded(srv, room, conn, q, req, ctx, pend, ok, passed)
  local d, key = room.def, room.key
  if pend and pend.closed then return abandon(srv, room, conn, pend) end
  if not ok then
    JOINING[conn] = nil
    conn:close(1011, "connect failed")
    return
  end
  if not passed then
    JOINING[conn] = nil
    log_refusal("room guard", "room %s: connection %s refused by a room guard", key, conn.id)
    conn:close(4001, "unauthorized")
    return
  end
  local priv = conn.sessionId
  local transfer = q.transferToken and redeem_transfer(room, q.transferToken)
  if transfer then priv = transfer.privateId end
  local users = users_of(room)
  local session = users and get_session(room, priv) or nil
  local sockets = room.sockets
  if d.maxUsers and (sockets[priv] or 0) == 0 and online_sessions(room) >= d.maxUsers then
    JOINING[conn] = nil
    log_refusal("room full", "room %s: connection %s refused, room full (maxUsers %d)", key, conn.id, d.maxUsers)
    conn:close(4029, "room full")
    return
  end
  -- A new session (a user record kept for sessionExpiryTime once offline):
  -- limited per client address (--session-rate), so one address cannot
  -- fill rooms with sessions.
  if users and not session and not core.addr_take(srv.h, "session", req.ip) then
    JOINING[conn] = nil
    log("warn", "room %s: connection %s from %s refused: new sessions from this address over the rate", key,
      conn.id, req.ip)
    conn:close(4008, "too many new sessions")
    return
  end
  local pid = session and session.publicId
  if not pid then
    repeat pid = core.random_id(srv.h, 8, PID_ALPHABET) until not (users and users[pid] ~= nil)
  end
  if not sockets[priv] then M.online(room, 1) end
  sockets[priv] = (sockets[priv] or 0) + 1
  local schema = users and d.fields[d.users_field].schema
  if users then
    if users[pid] == nil then
      users[pid] = user_defaults(schema)
      apply_user_flags(users[pid], schema)
    end
    local created = session and session.created or now(room)
    local s = { publicId = pid, created = created, connected = true }
    if session and session.state ~= nil then s.state = session.state end
    put_session(room, priv, s, pid)
    local exp = rawget(room, "expiry")
    if exp and exp[priv] then core.cancel(srv.h, exp[priv]); exp[priv] = nil end
    offline_remove(room, priv)
    if schema.connected then users[pid][schema.connected] = true end
  end
  local st = rawget(conn, "state")
  if st then
    st.publicId, st.privateId = pid, priv
  else
    rawset(conn, "_pid", pid)
    rawset(conn, "_priv", priv)
  end
  if pend then pend.session = true end
  if d.onJoin then
    local st, w = tasks.run(srv, room, "onJoin", d.onJoin, room, users and users[pid] or nil, conn, ctx)
    if st == tasks.PENDING then
      pend.waited = true
      w.after = function(okj) return connect_joined(srv, room, conn, pid, pend, okj) end
      w.cancel = function() return disposed_join(conn) end
      return
    end
    return connect_joined(srv, room, conn, pid, pend, st)
  end
  return connect_joined(srv, room, conn, pid, pend, true)
end

-- onJoin ran (ok false: it failed): the snapshot, then the frames the
-- client sent meanwhile (when it waited).
function connect_joined(srv, room, conn, pid, pend, ok)
  if pend then
    if pend.closed then return abandon(srv, room, conn, pend) end
    JOINING[conn] = nil
  end
  if not ok then
    conn:close(1011, "onJoin failed")
    return
  end
  core.join(room.h, conn, pid)
  if pend and pend.waited then wait_c.replay(conn) end
  if srv.dev then -- development mode: the room file's last failed save (reload.lua)
    local err = package.loaded["lunaroom.reload"] and package.loaded["lunaroom.reload"].dev_error(srv, room)
    if err then core.send(conn, { type = "dev_error", value = err }) end
  end
end

--- The last step of a socket: offline marking, expiry, onLeave.
function M.close(srv, room, conn)
  local pj = JOINING[conn]
  if pj then -- its connect waits: abandoned when it finishes
    pj.closed = true
    return
  end
  if M.defer(room, function() return M.close(srv, room, conn) end) then return end
  local d = rawget(room, "def")
  local priv = conn_priv(conn)
  if not priv then return end
  local sockets = rawget(room, "sockets")
  local open = sockets[priv]
  local n = (open or 1) - 1
  sockets[priv] = n > 0 and n or nil
  if n > 0 then return end -- another socket of this session is still open
  if open then M.online(room, -1) end
  local users = users_of(room)
  local pid = conn_pid(conn)
  local user = users and users[pid] or nil
  if users then
    local s = get_session(room, priv) or { publicId = pid, created = now(room) }
    s.connected = false
    s.disconnectedAt = now(room)
    put_session(room, priv, s)
    M.arm_expiry(room, priv, d.sessionExpiryTime)
    offline_add(room, priv)
    local schema = d.fields[d.users_field].schema
    if user and schema.connected then user[schema.connected] = false end
  end
  if d.onLeave then tasks.run(srv, room, "onLeave", d.onLeave, room, user, conn) end
  if not (users and d.fields[d.users_field].schema.connected) then
    core.broadcast(rawget(room, "h"), { type = "user_disconnected", value = { publicId = pid } })
  end
end

------------------------------------------------------------------ messages

-- Room guards, action guards, schema and handler of one action packet, as
-- one task. Returns nil, or an error code and message for the sender.
-- The hot path of every action: no call, table or C function that the
-- common case (no guards, no users field) does not need.
local function dispatch(srv, room, conn, action, value)
  local d = room.def -- a raw field (see RoomMT): no metamethod, no rawget call
  if value == null then value = nil end
  local guards = d.guards
  if guards[1] ~= nil and not run_guards(guards, conn, value, room) then return "guard", "rejected by a room guard" end
  local user = nil
  if d.users_field then user = user_of(room, conn) end
  local counts = srv.actions
  if not counts then
    counts = {}
    srv.actions = counts
  end
  local path = d.path
  counts[path] = (counts[path] or 0) + 1
  local a = d.actions[action]
  if a then
    local seen = guards[1] ~= nil -- a guard saw value: the schema's output is a copy
    guards = a.guards
    if guards[1] ~= nil then
      if not run_guards(guards, conn, value, room) then return "guard", "rejected by an action guard" end
      seen = true
    end
    if a.schema then
      local ok, res
      if seen then ok, res = a.schema:parse(value) else ok, res = parse_owned(a.schema, value) end
      if not ok then return "validation", res.message end
      value = res
    end
    a.run(room, user, value, conn)
    return nil
  end
  local u = d.unhandled
  if u then
    local msg = { action = action, value = value }
    if not run_guards(u.guards, conn, msg, room) then return "guard", "rejected by the unhandled-action guard" end
    u.run(room, user, msg, conn)
    return nil
  end
  return "unknown_action", "unknown action '" .. tostring(action) .. "'"
end

-- Connections with an action that waits: conn -> queue of the actions they
-- sent meanwhile ({action, value}, handled in order once it finished).
-- (BUSY is declared with RESTORING, above: a room whose restore waits marks
-- its open connections with RESTORE_MARK.)
M.MAX_QUEUED = 256 -- actions queued per connection behind one that waits
local PENDING = tasks.PENDING
local action_done

-- Start an action: PENDING when it waits, else nil, code, message.
local function start_action(srv, room, conn, action, value)
  local st, r1, r2 = tasks.run(srv, room, "action " .. action, dispatch, srv, room, conn, action, value)
  if st == true then return nil, r1, r2 end
  if st == false then return nil, r2, r1 end -- code ("handler" | "busy"), message
  r1.after = function(ok, a, b) return action_done(srv, room, conn, action, ok, a, b) end
  return PENDING
end

-- An action that waited finished: its error packet, if any, then the
-- actions its connection sent meanwhile.
function action_done(srv, room, conn, action, ok, a, b)
  if ok then
    if a then wait_c.send_error(conn, a, action, b or a) end
  else
    wait_c.send_error(conn, b, action, a)
  end
  local q = BUSY[conn]
  while q and q.head <= q.n do
    local item = q[q.head]
    q[q.head] = nil
    q.head = q.head + 1
    if not wait_c.alive(conn) or srv.rooms[rawget(room, "key")] ~= room then break end
    local st, code, msg = start_action(srv, room, conn, item[1], item[2])
    if st == PENDING then return end
    if code then wait_c.send_error(conn, code, item[1], msg or code) end
  end
  BUSY[conn] = nil
end

-- An action for a room woken from hibernation whose restore hooks wait:
-- handled once it is restored (a function of its own: the closure would
-- slow M.message down for every action).
local function defer_message(srv, room, conn, action, value)
  M.defer(room, function()
    if not wait_c.alive(conn) then return end
    local code, msg = M.message(srv, room, conn, action, value)
    if code then wait_c.send_error(conn, code, action, msg or code) end
  end)
  return nil
end

--- An action packet. Returns nil, or an error code and message for the
--- sender. While an action of the same connection waits, it is queued and
--- handled after that one (errors then go out when it ran).
function M.message(srv, room, conn, action, value)
  if room.def.direct then return dispatch(srv, room, conn, action, value) end -- cannot wait
  local q = BUSY[conn]
  if q then
    if q == RESTORE_MARK then return defer_message(srv, room, conn, action, value) end -- its restore waits
    if q.n - q.head + 1 >= M.MAX_QUEUED then
      return "busy", "too many actions of this connection wait for the one before (max " .. M.MAX_QUEUED .. ")"
    end
    q.n = q.n + 1
    q[q.n] = { action, value }
    return nil
  end
  local st, code, msg = start_action(srv, room, conn, action, value)
  if st == PENDING then
    BUSY[conn] = { head = 1, n = 0 }
    return nil
  end
  return code, msg
end

-- interceptorPacket on one packet for one connection: the JSON to send or nil.
local function intercept_one(room, conn, json)
  local packet = core.decode(json)
  local res = rawget(room, "def").interceptorPacket(room, user_of(room, conn), packet, conn)
  if res == nil or res == null then return nil end
  return core.encode(res)
end

-- Connections whose interceptor waits on a packet: conn -> the packets sent
-- to it meanwhile (JSON, in order), intercepted and sent once it finished.
local HELD = setmetatable({}, { __mode = "k" })
M.MAX_HELD_PACKETS = 1024 -- per connection; past it the connection is closed (1011)
local intercept_done

-- Intercept json for conn as a task: the JSON to send now, or nil (dropped,
-- or PENDING: sent by intercept_done).
local function intercept_start(srv, room, conn, json)
  local st, out = tasks.run(srv, room, "interceptorPacket", intercept_one, room, conn, json)
  if st == PENDING then
    out.after = function(ok, res) return intercept_done(srv, room, conn, ok, res) end
    return PENDING
  end
  if st == true then return out end
  return nil -- a failing interceptor drops the packet (logged)
end

-- The interceptor that waited finished: its packet, then the ones queued
-- behind it (each may wait in turn).
function intercept_done(srv, room, conn, ok, out)
  if ok and type(out) == "string" then wait_c.send_raw(conn, out) end
  local q = HELD[conn]
  while q and q.head <= q.n do
    local json = q[q.head]
    q[q.head] = nil
    q.head = q.head + 1
    if not wait_c.alive(conn) or srv.rooms[rawget(room, "key")] ~= room then break end
    local res = intercept_start(srv, room, conn, json)
    if res == PENDING then return end
    if res then wait_c.send_raw(conn, res) end
  end
  HELD[conn] = nil
end

--- Per-recipient packet filter. Returns the JSON to send, or nil to drop.
--- The interceptor may wait: the packets to that connection then wait
--- behind it, in order (sent by intercept_done; nil is returned for them).
function M.intercept(srv, room, conn, json)
  local d = rawget(room, "def")
  if d.direct then -- cannot wait: as before (inline, once per packet and recipient)
    local res = d.interceptorPacket(room, user_of(room, conn), core.decode(json), conn)
    if res == nil or res == null then return nil end
    return core.encode(res)
  end
  local q = HELD[conn]
  if q then
    if q.n - q.head + 1 >= M.MAX_HELD_PACKETS then
      HELD[conn] = nil
      log("warn", "room %s: connection %s closed: %d packets wait for its interceptor (max %d)",
        rawget(room, "key"), conn.id, q.n - q.head + 1, M.MAX_HELD_PACKETS)
      conn:close(1011, "too many packets wait for the interceptor")
      return nil
    end
    q.n = q.n + 1
    q[q.n] = json
    return nil
  end
  local res = intercept_start(srv, room, conn, json)
  if res == PENDING then
    HELD[conn] = { head = 1, n = 0 }
    return nil
  end
  return res
end

------------------------------------------------------------------ HTTP

local CORS = {
  { "Access-Control-Allow-Origin", "*" },
  { "Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, PATCH, OPTIONS" },
  { "Access-Control-Allow-Headers", "Content-Type, Authorization, X-Requested-With" },
  { "Access-Control-Max-Age", "86400" },
}

local RESPONSE = {}

local function response(status, body, ctype, extra)
  local headers = {}
  for _, h in ipairs(CORS) do headers[#headers + 1] = h end
  local set = {}
  for _, h in ipairs(extra or {}) do set[h[1]:lower()] = true; headers[#headers + 1] = h end
  if not set["content-type"] then headers[#headers + 1] = { "Content-Type", ctype or "application/json" } end
  return setmetatable({ status = status, headers = headers, body = body }, RESPONSE)
end

local function json_response(status, value, extra)
  if value == nil then value = {} end
  return response(status, core.encode(value), "application/json", extra)
end

-- res: the seed's ServerResponse helpers. Terminal helpers return a response.
local Res = {}
Res.__index = Res
local function new_res() return setmetatable({ _status = 200, _headers = {} }, Res) end
function Res:status(code) self._status = code; return self end
function Res:header(name, value) self._headers[#self._headers + 1] = { name, tostring(value) }; return self end
function Res:setHeaders(t) for k, val in pairs(t) do self:header(k, val) end; return self end
function Res:json(body) return json_response(self._status, body, self._headers) end
function Res:send(body) return json_response(self._status, body, self._headers) end
function Res:text(str) return response(self._status, tostring(str), "text/plain", self._headers) end
function Res:redirect(url, code)
  local h = { { "Location", url } }
  for _, x in ipairs(self._headers) do h[#h + 1] = x end
  return json_response(code or 302, {}, h)
end
function Res:success(body) return json_response(200, body, self._headers) end
function Res:badRequest(message, details)
  local b = { error = message }
  for k, val in pairs(details or {}) do b[k] = val end
  return json_response(400, b, self._headers)
end
function Res:unauthorized(m) return json_response(401, { error = m or "Unauthorized" }, self._headers) end
function Res:notPermitted(m) return json_response(403, { error = m or "Not permitted" }, self._headers) end
function Res:notFound(m) return json_response(404, { error = m or "Not found" }, self._headers) end
function Res:serverError(m) return json_response(500, { error = m or "Internal Server Error" }, self._headers) end

local function match_route(routes, method, path)
  local segs = {}
  for s in path:gmatch("[^/]+") do segs[#segs + 1] = s end
  for _, r in ipairs(routes) do
    if r.method == method and #r.segs == #segs then
      local params, ok = {}, true
      for i, s in ipairs(r.segs) do
        if type(s) == "table" then params[s.param] = urldecode(segs[i])
        elseif s ~= segs[i] then ok = false break end
      end
      if ok then return r, params end
    end
  end
  return nil
end

local route_failed, serve_route
local function to_response(res, result)
  if getmetatable(result) == RESPONSE then return result end
  if getmetatable(result) == FETCHED then -- a room-to-room fetch, passed on
    local ctype = result.headers and result.headers["content-type"] or "application/json"
    return response(result.status, result.body or "", ctype, res._headers)
  end
  if type(result) == "string" then return response(200, result, "text/plain", res._headers) end
  if result == nil then return json_response(200, {}, res._headers) end
  if result == null then return response(200, "null", "application/json", res._headers) end
  return json_response(200, result, res._headers)
end

function route_failed(code)
  if code == "busy" then return json_response(503, { error = "Service Unavailable", code = "busy" }) end
  return json_response(500, { error = "Internal Server Error" })
end

-- Guards, body schema and handler of a route, as one task (they may wait).
function serve_route(room, route, r, req)
  -- Guards first (Part 2 section 5.4): a client without rights gets 403
  -- before anything tells it what the body should look like.
  local res = new_res()
  for _, g in ipairs(route.guards) do
    local verdict = g(nil, r, room)
    if getmetatable(verdict) == RESPONSE then return verdict end
    if not verdict then return json_response(403, { error = "Not permitted" }) end
  end
  local m = req.method
  local ctype = req.headers["content-type"] or ""
  if route.schema and (m == "POST" or m == "PUT" or m == "PATCH") and ctype:find("application/json", 1, true) then
    local data, err = core.decode(req.body or "", true)
    if data == nil and err then
      return json_response(400, { error = "Failed to parse request body" })
    end
    local ok, vres = route.schema:parse(data ~= null and data or nil)
    if not ok then
      return json_response(400, { error = "Invalid request body", details = { issues = vres.issues, name = "ZodError" } })
    end
    if vres ~= null then r.data = vres end
  end
  return to_response(res, route.run(room, r, res))
end

--- An HTTP request for room, routed on path (the part after the room id).
--- Its guards and handler may wait (the answer follows when they finished).
function M.request(srv, room, req, path)
  if RESTORING[room] then -- answered once its restore hooks finished
    return { _wait = function(responder)
      M.defer(room, function()
        local resp = M.request(srv, room, req, path)
        if type(resp) == "table" and resp._wait then return resp._wait(responder) end
        wait_c.respond(responder, resp)
      end, function()
        wait_c.respond(responder, json_response(503, { error = "Service Unavailable", code = "disposed" }))
      end)
    end }
  end
  local d = rawget(room, "def")
  local key = rawget(room, "key")
  -- A request forwarded by a shard process (host/shard.c) must carry the
  -- secret; it reaches the room's routes only, never /session-transfer.
  local via_shard = req.headers["x-forwarded-by-shard"] ~= nil or req.headers["x-shard-id"] ~= nil
  if via_shard then
    local secret = srv.env.SHARD_SECRET
    if not (secret and secret ~= "" and req.headers["x-access-shard"] == secret) then
      log("warn", "room %s: %s %s claims to come from a shard without the secret: refused", key,
        req.method, path)
      return json_response(401, { error = "Invalid shard credentials" })
    end
  elseif req.method == "POST" and path:match("/session%-transfer$") then
    return M.transfer_request(srv, room, req)
  end
  local route, params = match_route(d.routes, req.method, path)
  if not route then return json_response(404, { error = "Not found" }) end
  local ctype = req.headers["content-type"] or ""
  -- req.data is the validated body, or nil (the reference's null): a route
  -- without a schema, or a request that is not a JSON POST/PUT/PATCH, gets
  -- nil. The raw body stays in req.body, decoded by req:json().
  local r = {
    method = req.method, path = path, query = parse_query(req.query), headers = req.headers,
    params = params, body = req.body, ip = req.ip, data = nil,
    url = "http://" .. (req.headers.host or "localhost") .. req.path .. (req.query ~= "" and ("?" .. req.query) or ""),
  }
  function r.json() return core.decode(r.body or "", true) end -- wire numbers (as JSON.parse)
  function r.text() return r.body or "" end
  local st, a, b = tasks.run(srv, room, "request " .. route.key, serve_route, room, route, r, req)
  if st == true then return a end
  if st == false then return route_failed(b) end
  -- A guard or the route waits: the host answers when it finished.
  return { _wait = function(responder)
    a.after = function(ok, resp, code)
      wait_c.respond(responder, ok and resp or route_failed(code))
    end
    a.cancel = function()
      wait_c.respond(responder, json_response(503, { error = "Service Unavailable", code = "disposed" }))
    end
  end }
end

--- Called by C before a request creates or wakes room ns/id: true when the
--- room would serve it (a route matches, or it goes to /session-transfer or
--- a route with the shard secret), false when no definition serves ns/id,
--- else the answer M.request would give (404 no such route, 401 bad shard
--- credentials), given without building the room or reading its storage.
function M.preroute(srv, ns, id, req, path)
  local e = resolve(srv, ns, id)
  if not e then
    local slept = srv.sleeping[ns .. "/" .. id] -- its file was removed; the room lives on
    if not slept then
      local v = dev_failed(srv, ns, id) -- --dev: its room file does not load
      if v then
        local where = v.file .. (v.line ~= core.null and (":" .. v.line) or "")
        return json_response(503, { error = "room file " .. where .. " does not load: " .. v.message,
          code = "dev_error", file = v.file, line = v.line, message = v.message })
      end
      return false
    end
    e = slept
  end
  local via_shard = req.headers["x-forwarded-by-shard"] ~= nil or req.headers["x-shard-id"] ~= nil
  local transfer = not via_shard and req.method == "POST" and path:match("/session%-transfer$")
  if via_shard or transfer then
    local secret = srv.env.SHARD_SECRET
    if not (secret and secret ~= "" and req.headers["x-access-shard"] == secret) then
      return json_response(401, { error = "Invalid shard credentials" })
    end
    if transfer then return true end
  end
  local routes = e.def.routes
  if match_route(routes, req.method, path) then return true end
  if req.method == "HEAD" and match_route(routes, "GET", path) then return true end
  return json_response(404, { error = "Not found" })
end

------------------------------------------------------------------ operations endpoints

--- /healthz, /readyz, /metrics, /admin (lunaroom.ops).
function M.operations(srv, req)
  return require("lunaroom.ops").handle(srv, req, M, json_response, response)
end

------------------------------------------------------------------ session transfer (same process)

function M.transfer_request(srv, room, req)
  -- Only the same process (room:sessionTransfer) or a shard with the secret.
  local secret = srv.env.SHARD_SECRET
  if not (secret and secret ~= "" and req.headers["x-access-shard"] == secret) then
    return json_response(401, { error = "Invalid shard credentials" })
  end
  local data = core.decode(req.body or "")
  local code, body = M.transfer_in(srv, room, data)
  if code == tasks.PENDING then -- onSessionRestore waits: answered when it finished
    return { _wait = function(responder)
      body.then_ = function(c2, b2) wait_c.respond(responder, json_response(c2, b2)) end
      body.cancel = function()
        wait_c.respond(responder, json_response(503, { error = "Service Unavailable", code = "disposed" }))
      end
    end }
  end
  return json_response(code, body)
end

--- A session moves into room: 200, {transferToken} | 400, {error}; or,
--- when onSessionRestore waits, tasks.PENDING, w: w.then_(code, body) runs
--- once it finished (w.cancel if the room goes away first).
function M.transfer_in(srv, room, data)
  if type(data) ~= "table" or type(data.privateId) ~= "string" or type(data.publicId) ~= "string" then
    return 400, { error = "Missing privateId or publicId in transfer data" }
  end
  local d = rawget(room, "def")
  local h = rawget(room, "h")
  local t = now(room)
  local s = { publicId = data.publicId, created = t, connected = false, disconnectedAt = t }
  if data.sessionState ~= nil then s.state = data.sessionState end
  put_session(room, data.privateId, s, data.publicId)
  M.arm_expiry(room, data.privateId, d.transferExpiryTime)
  offline_add(room, data.privateId)
  local users = users_of(room)
  local function finish(snap)
    if snap then
      local schema = d.fields[d.users_field].schema
      local u = user_defaults(schema)
      for k, val in pairs(snap) do if schema.fields[k] and k ~= schema.connected then u[k] = val end end
      users[data.publicId] = u
      apply_user_flags(users[data.publicId], schema)
    end
    local token = core.random_id(srv.h, SECRET_LEN, PID_ALPHABET) -- a bearer secret: 130 bits
    core.store_apply(h, { { "put", "transfer:" .. token,
      { privateId = data.privateId, publicId = data.publicId, restored = true, created = t } } })
    return 200, { transferToken = token }
  end
  if type(data.userSnapshot) == "table" and users then
    local snap = data.userSnapshot
    if d.onSessionRestore then
      local st, a = tasks.run(srv, room, "onSessionRestore", d.onSessionRestore, {
        userSnapshot = snap, user = user_defaults(d.fields[d.users_field].schema), publicId = data.publicId,
        privateId = data.privateId, sessionState = data.sessionState, room = room })
      if st == tasks.PENDING then
        a.after = function(ok, res)
          if ok and type(res) == "table" then snap = res end
          if not ok then
            log("warn", "room %s: onSessionRestore failed (%s): the transferred snapshot is used", rawget(room, "key"), tostring(res))
          end
          local code, body = finish(snap)
          if a.then_ then return a.then_(code, body) end
        end
        return tasks.PENDING, a
      end
      if st == true and type(a) == "table" then snap = a end
    end
    return finish(snap)
  end
  return finish(nil)
end

-- POST {url}/parties/{party}/{target}/session-transfer on another process
-- (host/fetch_lua.c: lunaroom.fetch); done(room, token, err) runs when it answered.
local function remote_transfer(srv, room, target_id, data, opts, done)
  local secret = srv.env.SHARD_SECRET
  if not secret or secret == "" then return nil, "a remote session transfer needs SHARD_SECRET" end
  local ok, fetch = pcall(require, "lunaroom.fetch")
  if not ok then return nil, "a remote session transfer needs a server (lunaroom serve)" end
  local key = rawget(room, "key")
  local url = tostring(opts.url):gsub("/+$", "") .. "/parties/" .. (opts.party or "main") .. "/"
    .. target_id .. "/session-transfer"
  local id, err = fetch.request("POST", url, { ["content-type"] = "application/json",
    ["x-access-shard"] = secret }, core.encode(data), opts.timeout or 10000, function(res)
    local token, why = nil, res.error
    if not why then
      local body = core.decode(res.body or "")
      token = res.status == 200 and type(body) == "table" and body.transferToken or nil
      if not token then
        why = "HTTP " .. res.status .. (type(body) == "table" and body.error and (": " .. body.error) or "")
      end
    end
    if why then log("warn", "room %s: session transfer to %s failed: %s", key, url, why) end
    local cur = srv.rooms[key]
    if done and cur then core.pcall(done, key, "sessionTransfer callback", cur, token, why) end
  end)
  if not id then return nil, err end
  return true
end

-- A cluster node creates a room only under its lease, taken when a request
-- for it arrives: a target not live here may be another node's. The
-- transfer goes as an in-process POST .../session-transfer with the node
-- secret (core.http), routed like a client's request: this node takes the
-- lease when it is free, else the request is forwarded to the owner
-- (host/cluster.c). The handler waits for the answer.
local function cluster_transfer(srv, room, target_id, data)
  local secret = srv.env.SHARD_SECRET
  if not secret or secret == "" then
    return nil, "Room not on this node, and without SHARD_SECRET nodes do not reach each other"
  end
  if not coroutine.isyieldable() then
    return nil, "Room not on this node, and this call cannot wait for its owner (the room's code " ..
      "cannot wait): in a cluster, pass { url = <any node's URL> } and a callback"
  end
  local res, pending = core.http(srv.h, "POST",
    "/parties/" .. rawget(room, "src").party .. "/" .. target_id .. "/session-transfer", "",
    { ["content-type"] = "application/json", ["x-access-shard"] = secret }, core.encode(data))
  if not res then -- resumed by the answer itself (core.http_take's callback)
    local got, why = coroutine.yield("lunaroom.await", function(resume)
      local now_res = core.http_take(pending, resume)
      if now_res then return resume(now_res) end
      return function() core.http_take(pending, false) end
    end, nil, "sessionTransfer")
    if got == require("lunaroom.io").ERROR then return nil, why end
    res = got
  end
  local body = core.decode(res.body or "")
  if res.status == 200 and type(body) == "table" and type(body.transferToken) == "string" then
    return body.transferToken
  end
  return nil, "HTTP " .. res.status .. (type(body) == "table" and type(body.error) == "string"
    and (": " .. body.error) or "")
end

function M.session_transfer(srv, room, conn, target_id, opts, done)
  local users = users_of(room)
  local pid = conn_pid(conn)
  if not users or not pid or users[pid] == nil then return nil, "no user for this connection" end
  if type(opts) == "table" and opts.url then
    return remote_transfer(srv, room, target_id, { privateId = conn_priv(conn), publicId = pid,
      userSnapshot = core.copy(users[pid], NOPERSIST) }, opts, done)
  end
  local target = srv.rooms[rawget(room, "src").party .. "/" .. target_id]
  if not target and srv.env.LUNAROOM_CLUSTER then
    return cluster_transfer(srv, room, target_id, { privateId = conn_priv(conn), publicId = pid,
      userSnapshot = core.copy(users[pid], NOPERSIST) })
  end
  if not target then
    target = M.create_room(srv, rawget(room, "src").party, target_id)
    if not target then return nil, "Room not available" end
  end
  local data = { privateId = conn_priv(conn), publicId = pid, userSnapshot = core.copy(users[pid], NOPERSIST) }
  local code, body
  if not RESTORING[target] then
    code, body = M.transfer_in(srv, target, data)
    if code ~= tasks.PENDING then
      if code ~= 200 then return nil, body.error end
      return body.transferToken
    end
  end
  -- The target's restore hooks or its onSessionRestore wait: so does this
  -- handler (resumed by their completion).
  if not coroutine.isyieldable() then
    local why = code and "its onSessionRestore waits" or "its restore hooks wait"
    if body then body.then_ = nil end -- it completes on its own; nobody gets the token
    return nil, "the target room is not ready (" .. why .. ") and this call cannot wait"
  end
  local gone = { 503, { error = "Room not available" } }
  local function start(done)
    local function hand(c2, b2) done({ c2, b2 }) end
    local function go()
      local c2, b2 = M.transfer_in(srv, target, data)
      if c2 ~= tasks.PENDING then return hand(c2, b2) end
      b2.then_, b2.cancel = hand, function() done(gone) end
    end
    if code == tasks.PENDING then
      body.then_, body.cancel = hand, function() done(gone) end
    elseif not M.defer(target, go, function() done(gone) end) then
      go()
    end
  end
  local res = coroutine.yield("lunaroom.await", start, nil, "sessionTransfer")
  if res == require("lunaroom.io").ERROR then return nil, "the target room did not answer in time" end
  if res[1] ~= 200 then return nil, res[2].error end
  return res[2].transferToken
end

------------------------------------------------------------------ registration

function M.forget_room(srv, key)
  local cancelled = tasks.cancel_room(srv, key)
  if cancelled > 0 then
    log("warn", "room %s: disposed while %d handler(s) waited: cancelled", key, cancelled)
  end
  local room, slept = srv.rooms[key], srv.sleeping[key]
  local q = room and RESTORING[room]
  if q then -- disposed while its restore hooks waited: what queued is refused
    RESTORING[room] = nil
    for _, e in ipairs(q) do
      if e.cancel then pcall(e.cancel) end
    end
  end
  if room then
    M.unaccount(room)
    M.census(srv, rawget(room, "def").path, rawget(room, "src").version, -1)
  elseif slept then
    M.census(srv, slept.def.path, slept.version, -1)
  end
  srv.rooms[key] = nil
  srv.sleeping[key] = nil
end

--- Live rooms by room type (path) and code version, for /metrics.
function M.census(srv, path, version, delta)
  version = version or ""
  local byv = srv.census[path]
  if not byv then
    byv = {}
    srv.census[path] = byv
  end
  local n = (byv[version] or 0) + delta
  byv[version] = n > 0 and n or nil
  if next(byv) == nil then srv.census[path] = nil end
end

------------------------------------------------------------------ code versions (hot reload)

--- The live rooms and the code each one runs, for logs and the admin /
--- metrics output: a list sorted by key of {key, party, id, path, file,
--- version, connections}. version is the content hash of the room file and
--- the modules it required (lunaroom.sandbox), updated by each hot reload.
function M.room_info_of(key, room)
  local ok, conns = pcall(core.room_conns, rawget(room, "h"))
  local src = rawget(room, "src")
  return {
    key = key, party = src.party, id = rawget(room, "id"),
    path = rawget(room, "def").path, file = src.file,
    version = src.version, connections = ok and #conns or 0,
  }
end

function M.room_info(srv)
  local out = {}
  for key, room in pairs(srv.rooms) do out[#out + 1] = M.room_info_of(key, room) end
  table.sort(out, function(a, b) return a.key < b.key end)
  return out
end

core.set_runtime(M, Conn)
return M

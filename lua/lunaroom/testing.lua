-- lunaroom.testing: headless rooms for busted specs.
--
-- Owns: a test server per room under test (virtual clock, memory storage by
-- default), fake clients that go through the same C engine as sockets do
-- (core.hl_*), decoded packets per client, HTTP calls, storage access.
-- Must not: reimplement engine behaviour; everything goes through the host.
--
--   local testing = require "lunaroom.testing"
--   local t = testing.room("rooms/game.lua")            -- or a lr.room{} table
--   local c = t:client{ id = "sess-1", query = { name = "ann" } }
--   c:send("move", { x = 1, y = 2 })
--   assert.are.same({ type = "sync", value = { ... } }, c.packets[#c.packets])
--   t:advance(100)                                      -- virtual clock
--   t.storage:get("state:count"); t:http("GET", "/status")

local core = require "lunaroom.core"
local runtime = require "lunaroom.runtime"
local sandbox = require "lunaroom.sandbox"
local lr = require "lunaroom"

local M = {}
M.null = core.null
M.decode = core.decode
M.encode = core.encode

--- Log lines written since the last call (when specs capture logs).
function M.logs() return core.log_lines() end

local Client = {}

local function drain(c)
  if not c._hl then return end
  -- Writes made outside a handler (t.room.x = 1, lr.load in the spec body)
  -- are flushed as the server's next loop turn would: reading what a client
  -- received runs that turn (no virtual time passes; throttles still wait).
  -- Not inside t:pass, whose turn ends when fn returns.
  local t = c._t
  if t and t.srv and not t._passing then core.tick(t.srv.h) end
  local raws, code, reason = core.hl_drain(c._hl)
  for _, r in ipairs(raws) do
    c._raw[#c._raw + 1] = r
    c._packets[#c._packets + 1] = core.decode(r)
  end
  if code and not c._closed then c._closed = { code = code, reason = reason } end
end

Client.__index = function(c, k)
  if k == "packets" then drain(c) return c._packets end
  if k == "raw" then drain(c) return c._raw end
  if k == "closed" then drain(c) return c._closed end
  if k == "conn" then return c._hl and core.hl_conn(c._hl) end
  if k == "publicId" then
    local conn = c._hl and core.hl_conn(c._hl)
    return conn and conn.state.publicId
  end
  return Client[k]
end

--- Send an action packet {action, value}.
function Client:send(action, value)
  self:send_raw(core.encode({ action = action, value = value == nil and core.null or value }))
end

--- Send any text frame as is.
function Client:send_raw(text)
  core.hl_send(self._hl, text)
end

--- Packets received since the last clear (decoded), and forget them.
function Client:take()
  drain(self)
  local p = self._packets
  self._packets, self._raw = {}, {}
  return p
end

function Client:clear() self:take() end

--- The last packet (or the last of a type).
function Client:last(type_)
  drain(self)
  for i = #self._packets, 1, -1 do
    local p = self._packets[i]
    if type_ == nil or (type(p) == "table" and p.type == type_) then return p end
  end
end

function Client:close()
  core.hl_close(self._hl)
  drain(self)
end

local T = {}
-- t.room is always the live instance (nil while the room hibernates).
T.__index = function(t, k)
  if k == "room" then return t.srv and t.srv.rooms[t.party .. "/" .. t.id] end
  return T[k]
end

local function query_string(q)
  local parts = {}
  local keys = {}
  for k in pairs(q) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local val = tostring(q[k]):gsub("[^%w%-_%.~]", function(ch) return string.format("%%%02X", ch:byte()) end)
    parts[#parts + 1] = k .. "=" .. val
  end
  return table.concat(parts, "&")
end

-- An upgrade the engine refuses (HTTP status) -> the close `serve` sends.
local REFUSED = {
  [404] = { 4004, "no such room" }, [503] = { 1013, "try again later" },
  [500] = { 1011, "room could not be created" },
}

--- A fake WebSocket client. opts: id (session id), query, headers, party,
--- room, discard (drop what it receives: for benchmarks), ip (the client
--- address per-address limits count; none by default: not counted).
function T:client(opts)
  opts = opts or {}
  local q = {}
  for k, val in pairs(opts.query or {}) do q[k] = val end
  if opts.id then q.id = opts.id end
  local path = "/parties/" .. (opts.party or self.party) .. "/" .. (opts.room or self.id)
  local hl, status = core.hl_connect(self.srv.h, path, query_string(q), opts.headers or {}, opts.ip)
  local c = setmetatable({ _hl = hl, _t = self, _packets = {}, _raw = {}, status = status }, Client)
  if hl and opts.discard then core.hl_discard(hl, true) end -- benchmarks: keep nothing
  if not hl then -- what `serve` does: accept, then close with a code (other statuses stay HTTP)
    local close = REFUSED[status]
    c._closed = close and { code = close[1], reason = close[2] } or { code = status, reason = "refused" }
  end
  return c
end

--- Run fn as one pass of `serve`'s network loop: sockets that join an
--- unthrottled room during it get their snapshot (and the others the join
--- patch) when the pass ends, as the server batches them.
function T:pass(fn)
  core.batch_joins(self.srv.h, true)
  self._passing = true
  local ok, err = pcall(fn)
  self._passing = nil
  core.batch_joins(self.srv.h, false)
  core.tick(self.srv.h)
  if not ok then error(err, 0) end
end

--- Advance the virtual clock by ms (throttles and timers fire in order).
function T:advance(ms) core.advance(self.srv.h, ms) end
function T:now() return core.now(self.srv.h) end

--- HTTP request to the room: t:http("POST", "/scores", {body = {...}, headers = {...}})
--- (opts.room, opts.party: another room; opts.ip: the client address)
function T:http(method, path, opts)
  opts = opts or {}
  local body = opts.body
  local headers = {}
  for k, val in pairs(opts.headers or {}) do headers[k:lower()] = val end
  if type(body) == "table" then
    body = core.encode(body)
    headers["content-type"] = headers["content-type"] or "application/json"
  end
  local p, q = path:match("^([^?]*)%??(.*)$")
  local full = "/parties/" .. (opts.party or self.party) .. "/" .. (opts.room or self.id) .. (p == "/" and "" or p)
  local res, pending = core.http(self.srv.h, method, full, q, headers, body, opts.ip)
  -- The room's storage is loading (a backend that waits for I/O): the
  -- answer comes once it loaded; let the virtual clock run until then.
  local waited = 0
  while not res and waited < 60000 do
    core.advance(self.srv.h, 1)
    waited = waited + 1
    res = core.http_take(pending)
  end
  if not res then error("t:http: no answer after 60 s of virtual time", 2) end
  if (res.headers["content-type"] or ""):find("json", 1, true) then res.json = core.decode(res.body) end
  return res
end

-- An answer of the fake HTTP service -> the table lunaroom.io.request returns.
local function to_res(res)
  if type(res) == "number" then res = { status = res } end
  if type(res) ~= "table" then error("t:http_service: an answer is a table {status, body} or a status", 3) end
  local body = res.body
  local ctype = res.contentType
  if type(body) == "table" then
    body = core.encode(body)
    ctype = ctype or "application/json"
  end
  return { status = res.status or 200, body = body or "", contentType = ctype, error = res.error }
end

--- A fake HTTP service answering lunaroom.io.request in the room's
--- handlers, on the virtual clock (no sockets). service is
---   function(req) -> answer [, delay_ms]   req = {method, url, headers, body, timeout}
--- or a routing table { ["GET http://h/path"] = answer | function(req) }
--- (an unknown route answers 404). answer = {status = 200, body = string |
--- table (sent as JSON), contentType = ...} or a status number. The answer
--- arrives after delay_ms of virtual time (default 0: at the next
--- t:advance). An answer of nil keeps the request pending:
--- t:http_pending() lists them, p:respond(answer) answers one. Every request
--- is recorded in t.http_requests.
function T:http_service(service)
  local t = self
  t.http_requests = {}
  t._http_pending = {}
  local handler = service
  if type(service) == "table" then
    handler = function(req)
      local route = service[req.method .. " " .. req.url]
      if type(route) == "function" then return route(req) end
      if route == nil then return { status = 404, body = "no route " .. req.method .. " " .. req.url } end
      return route
    end
  end
  t.srv.http_service = function(req, reply, room)
    t.http_requests[#t.http_requests + 1] = req
    local answer, delay = handler(req)
    local function deliver(res)
      core.timer(t.srv.h, rawget(room, "h"), math.floor(delay or 0), function() reply(res) end)
    end
    if answer == nil then
      local p = { request = req }
      function p.respond(_, a, d)
        delay = d
        for i, q in ipairs(t._http_pending) do
          if q == p then table.remove(t._http_pending, i) break end
        end
        deliver(to_res(a))
      end
      t._http_pending[#t._http_pending + 1] = p
      return
    end
    deliver(to_res(answer))
  end
  return self
end

--- Requests of the fake HTTP service that wait for p:respond(answer [, delay_ms]).
function T:http_pending() return self._http_pending or {} end

--- Handlers of the room (or the process: all = true) that wait now.
function T:waiting(all)
  return require("lunaroom.tasks").waiting(self.srv, not all and (self.party .. "/" .. self.id) or nil)
end

--- The live room instance (state proxies, plain fields, methods).
function T:instance(id)
  return self.srv.rooms[self.party .. "/" .. (id or self.id)]
end

--- Make the next n storage writes fail (memory storage only).
function T:fail_storage(n) core.store_fail_next(self.srv.h, n) end

function T:close()
  if self.srv then core.server_close(self.srv.h) end
  self.srv = nil
end

--- Storage of the room under test (state:..., session:... keys).
-- Reads go through the server, so they work while the room hibernates.
local StorageView = {}
StorageView.__index = StorageView
local function target(self)
  local t = self.t
  if not t._passing then core.tick(t.srv.h) end -- writes made in the spec body are stored first
  return { server = t.srv.h, ns = t.party, id = t.id }
end
function StorageView:get(key) return core.store_get(target(self), key) end
function StorageView:entries(prefix) return core.store_list(target(self), prefix or "") end
function StorageView:list(prefix)
  local out = {}
  for _, kv in ipairs(self:entries(prefix)) do out[kv[1]] = kv[2] end
  return out
end
function StorageView:count() return core.store_count(target(self)) end

local function load_def(src)
  if lr.is_room(src) then return src end
  if type(src) == "table" then return lr.room(src) end
  local def, err = sandbox.load_room_file(src)
  if not def then error("cannot load room " .. tostring(src) .. ": " .. tostring(err), 3) end
  return def, err -- err is the code version here
end

local function default_id(def)
  if not def.path:find("{", 1, true) then return def.path end
  return (def.path:gsub("{%w+}", "test"))
end

--- A headless server with one room definition (file path or lr.room table).
-- opts: id (room id, default from the path), storage ("memory",
-- "sqlite:PATH", "lua:FILE"), seed (random ids), env, rooms (more
-- definitions), create (false: the first client or request creates the
-- room, as under `serve`; needed when the storage waits for I/O), limits
-- (server settings: evict_after, room_rate, room_burst, session_rate,
-- session_burst; see core.server_limits).
function M.room(src, opts)
  opts = opts or {}
  local def, version = load_def(src)
  local cfg = { virtual = true, storage = opts.storage or "memory", seed = opts.seed or 42 }
  for k, val in pairs(opts.limits or {}) do cfg[k] = val end
  local h = core.server_new(cfg)
  local srv = runtime.new_server(h, { env = opts.env })
  runtime.add_definition(srv, def, type(src) == "string" and src or nil, version)
  for _, more in ipairs(opts.rooms or {}) do runtime.add_definition(srv, (load_def(more))) end
  local t = setmetatable({ srv = srv, def = def, id = opts.id or default_id(def), party = def.party }, T)
  t.storage = setmetatable({ t = t }, StorageView)
  t.storage_spec = opts.storage
  -- Create the room now (as the reference's testRoom does with onStart).
  local room = srv.rooms[t.party .. "/" .. t.id]
  if not room and opts.create ~= false then
    room = runtime.create_room(srv, t.party, t.id)
    if not room then error("no definition matches room id " .. t.id, 2) end
    core.tick(h)
  end
  return t
end

--- Hot-reload the room under test, as saving its file does under `serve`:
--- src is a file path (read now) or Lua source; nil re-reads the room's own
--- file. The live room keeps its state and clients. Returns true, version or
--- false, "file:line: message" (the old code keeps running). Flushes the
--- resulting patch (new fields, $delete) to the clients.
function T:reload(src)
  local reload = require "lunaroom.reload"
  local room = self.room
  local cur = room and rawget(room, "def") or self.def
  local file
  for _, e in ipairs(self.srv.defs) do
    if e.def == cur then file = e.file end
  end
  local job = { file = file, target = cur, force = true }
  if src == nil then
    if not file then error("t:reload(): this room was not loaded from a file; pass source", 2) end
  elseif not src:find("\n", 1, true) and src:sub(-4) == ".lua" then
    local text, err = core.readfile(src)
    if not text then error("t:reload(): " .. tostring(err), 2) end
    job.src, job.chunk = text, src
  else
    job.src, job.chunk = src, file or (self.id .. ".lua")
  end
  local jobs = reload.run(self.srv, { job })
  core.tick(self.srv.h)
  local r = jobs[1] or job
  if r.ok then
    if r.def then self.def = r.def end
    return true, r.version
  end
  return false, r.err
end

--- Restart: a new server on the same storage (sqlite path) to test restore.
function M.restart(t, src)
  local storage = t.storage_spec
  t:close()
  return M.room(src or t.def, { id = t.id, storage = storage })
end

return M

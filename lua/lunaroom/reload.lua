-- lunaroom.reload: hot reload of room definitions, the Lua half.
--
-- Owns: what a change in the rooms folder means (plan: which room files to
-- reload, which definitions to drop, which files are new room types), the
-- reload transaction of one room file (prepare: compile + validate in a
-- fresh sandbox; commit: migrate the state of every live room of that file,
-- then swap its definition; after: onReload hooks), the per-server reload
-- bookkeeping (srv.reload), development mode (dev_error packets; the room
-- types declared by room files that never loaded) and the log lines.
-- Must not: read inotify or schedule anything (host/reload.c does, and calls
-- the steps below each as an outermost protected call), touch sockets, or
-- be reachable from room scripts.
--
-- What a reload does to a live room (its state lives in C and stays):
--   * actions, guards, routes, hooks, options: the new definition's, at once
--     (handlers are looked up through rawget(room, "def") on every call);
--   * a new state field gets its default, written through the state proxy
--     so clients receive it as a patch and storage as a write;
--   * a removed state field is deleted (clients get "$delete");
--   * a field whose sync/persist options changed is re-written with the new
--     flags (a field that stops being synced keeps its last value on clients
--     that already had it);
--   * users: new schema fields get their default (lr.connected() fields the
--     user's online state), removed ones are deleted, flags follow the schema;
--   * a changed default of an existing field does not touch live values.
-- A deleted room file stops NEW rooms of that type; live ones keep running
-- the code they have (and are listed by runtime.room_info).

local core = require "lunaroom.core"
local lr = require "lunaroom"
local sandbox = require "lunaroom.sandbox"
local runtime = require "lunaroom.runtime"
local reload_c = require "lunaroom.reload_c"

local M = {}
local NOSYNC, NOPERSIST = core.NOSYNC, core.NOPERSIST

local function log(level, fmt, ...) core.log(level, string.format(fmt, ...)) end

--- "rooms//lib/./x.lua" -> "rooms/lib/x.lua" (paths from the watcher and
--- from load_dir are compared in this form).
local function norm(p)
  if p == nil then return nil end
  p = p:gsub("/+", "/"):gsub("/%./", "/"):gsub("^%./", "")
  return p
end
M.norm = norm

local function dirname(p) return p and p:match("^(.*)/[^/]*$") or "." end

local deepcopy, flags_of = runtime.deepcopy, runtime.flags_of

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

--- Per-server bookkeeping: dir (the watched rooms folder, normalised),
--- broken (room files whose last load failed: a module fix retries them),
--- removed (file -> the definition entry of a deleted file).
local function state(srv)
  local st = srv.reload
  if not st then
    st = { broken = {}, removed = {} }
    srv.reload = st
  end
  return st
end
M.state = state

local function find_entry(srv, file, def)
  for i, e in ipairs(srv.defs) do
    if (file and e.file and norm(e.file) == file) or (def and e.def == def) then return e, i end
  end
  return nil
end

local function in_rooms_dir(st, f)
  return st.dir ~= nil and dirname(f) == st.dir and f:sub(-4) == ".lua"
end

local function remove_definition(srv, file)
  local e, i = find_entry(srv, file)
  if not e then return end
  table.remove(srv.defs, i)
  local st = state(srv)
  st.removed[file] = e
  local live = 0
  for _, room in pairs(srv.rooms) do
    if rawget(room, "def") == e.def then live = live + 1 end
  end
  log("info", "removed %s: no new rooms of path %s; %d live room%s keep%s version %s", file,
    e.def.path, live, live == 1 and "" or "s", live == 1 and "s" or "", e.version or "?")
end

------------------------------------------------------------------ plan

--- Which room files a batch of changes affects. changes: list of paths
--- (from the watcher), "*" (rescan everything), or job tables (testing).
--- Deleted room files are dropped from srv.defs here. Returns a list of
--- jobs {file, new?} in a stable order, at most one per room file.
function M.plan(srv, changes)
  local st = state(srv)
  local jobs, seen = {}, {}
  local function add(job)
    local key = job.file or job
    if seen[key] then return end
    seen[key] = true
    jobs[#jobs + 1] = job
  end
  local function dependents(f)
    for _, e in ipairs(srv.defs) do
      for _, dep in ipairs(e.def.deps or {}) do
        if norm(dep) == f and e.file then add { file = norm(e.file) } end
      end
    end
  end
  local paths, explicit = {}, {}
  for _, c in ipairs(changes) do
    if type(c) == "table" then
      if c.file then c.file = norm(c.file) end
      add(c)
    elseif c == "*" then
      -- Rescan: every known room file, every module they use, every *.lua
      -- of the folder; unchanged versions are skipped by prepare.
      for _, e in ipairs(srv.defs) do
        if e.file then paths[#paths + 1] = norm(e.file) end
      end
      for f in pairs(st.removed) do paths[#paths + 1] = f end
      for f in pairs(st.broken) do paths[#paths + 1] = f end
      local files = st.dir and sandbox.list_rooms(st.dir) or {}
      for _, f in ipairs(files) do paths[#paths + 1] = norm(f) end
    else
      paths[#paths + 1] = norm(c)
      explicit[norm(c)] = true
    end
  end
  table.sort(paths)
  local last
  for _, f in ipairs(paths) do
    if f == last then goto continue end
    last = f
    local exists = reload_c.is_file(f)
    local e = find_entry(srv, f)
    -- retry: found by a rescan, not named by an event (same failure: quiet)
    if e then
      if exists then add { file = f, retry = not explicit[f] } else remove_definition(srv, f) end
    elseif exists and (st.removed[f] or st.broken[f] or in_rooms_dir(st, f)) then
      add { file = f, new = true, retry = not explicit[f] }
    elseif not exists then
      st.broken[f] = nil
      if st.failed and st.failed[f] ~= nil then -- a deleted file that never loaded: its clients go
        st.failed[f] = nil
        if st.dev_errors then st.dev_errors[f] = nil end
      end
    end
    -- A module: every room file that required it, and the files whose last
    -- load failed (the fix may be in this module).
    dependents(f)
    if not e then
      for _, bf in ipairs(sorted_keys(st.broken)) do
        if bf ~= f then
          if reload_c.is_file(bf) then add { file = bf, retry = true } else st.broken[bf] = nil end
        end
      end
    end
    ::continue::
  end
  return jobs
end

------------------------------------------------------------------ prepare

local function escape(s) return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")) end

--- Give a load error a line number when it has none. A definition error
--- raised by lr.room{} in `return lr.room { ... }` loses its line (the call
--- is a tail call), so the line is found in the source: the first line that
--- defines the key the message quotes ('bogus', action 'x', request
--- 'GET /a'), else the line of the lr.room call. Returns "file:line: msg".
function M.locate(msg, src, file)
  msg = tostring(msg)
  if not file or not src then return msg end
  local f = escape(file)
  if msg:find("^" .. f .. ":%d+:") then return msg end
  local body = msg:gsub("^" .. f .. ":%s*", "")
  local lines = {}
  for l in (src .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
  local function find(pats)
    for i, l in ipairs(lines) do
      for _, p in ipairs(pats) do
        if l:find(p) then return i end
      end
    end
  end
  local line
  for name in body:gmatch("'([^']+)'") do
    local n = escape(name)
    line = find { "%f[%w_]" .. n .. "%s*=", "%[%s*[\"']" .. n .. "[\"']%s*%]" }
    if line then break end
  end
  line = line or find { "%f[%w_]room%s*[{(]", "^%s*return%f[^%w_]" } or 1
  return string.format("%s:%d: %s", file, line, body)
end

--- Compile and validate a room file as a reload would, for `lunaroom check`:
--- def, version, or nil, "file:line: message" (sandbox.NOT_A_ROOM for a
--- module).
function M.check_file(path, dir)
  local src, err = core.readfile(path)
  if not src then return nil, err end
  local def, version = sandbox.load_room_source(src, "@" .. path, dir or dirname(path))
  if not def then
    if version == sandbox.NOT_A_ROOM then return nil, version end
    return nil, M.locate(version, src, path)
  end
  local ok, verr = M.validate(def, path, src)
  if not ok then return nil, verr end
  return def, version
end

-- Validation beyond lr.room: every state default must be representable in
-- the state tree (no functions, cycles, NaN...), or the commit would fail
-- half-way for the first live room.
local validate
function M.validate(def, file, src)
  local ok, err = validate(def, file)
  if not ok then return nil, M.locate(err, src, file) end
  return true
end
function validate(def, file)
  for _, k in ipairs(def.field_order) do
    local f = def.fields[k]
    if f.kind ~= "users" and f.default ~= nil then
      local ok, err = pcall(core.encode, f.default)
      if not ok then return nil, string.format("%s: state field '%s': %s", file, k, tostring(err)) end
    elseif f.kind == "users" then
      for _, sk in ipairs(sorted_keys(f.schema.fields)) do
        local sf = f.schema.fields[sk]
        if sf.default ~= nil then
          local ok, err = pcall(core.encode, sf.default)
          if not ok then
            return nil, string.format("%s: users field '%s.%s': %s", file, k, sk, tostring(err))
          end
        end
      end
    end
  end
  return true
end

--- Step 1 (under the load budget): compile and validate the new definition
--- into job.def / job.version without touching any live room. Returns true
--- if there is something to commit; otherwise job.err or job.skip says why.
function M.prepare(srv, job)
  local st = state(srv)
  local e = find_entry(srv, job.file, job.target)
  local removed = job.file and st.removed[job.file]
  job.old_version = (e and e.version) or (removed and removed.version) or nil
  job.exists = e ~= nil
  local src, err = job.src, nil
  if not src then
    src, err = core.readfile(job.file)
    if not src then
      job.err = err
      return false
    end
  end
  local name = job.chunk or job.file or "reload"
  local dir = job.dir or (job.chunk and dirname(job.chunk)) or (job.file and dirname(job.file)) or nil
  local def, version = sandbox.load_room_source(src, "@" .. name, dir)
  if not def then
    if version == sandbox.NOT_A_ROOM then
      if e or removed or job.src then
        job.err = name .. ": does not return a room (return lr.room { ... })"
        return false
      end
      job.skip = "module"
      return false
    end
    job.err = M.locate(version, src, name)
    return false
  end
  local ok, verr = M.validate(def, name, src)
  if not ok then
    job.err = verr
    return false
  end
  if e and e.version == version and not job.force then
    job.skip = "unchanged"
    return false
  end
  for _, other in ipairs(srv.defs) do -- two files serving one path: an error, as at start
    if other ~= e and other.def.party == def.party and other.def.path == def.path then
      job.err = string.format("%s: path '%s' (party %s) is already served by %s", name, def.path,
        def.party, tostring(other.file or "a definition"))
      return false
    end
  end
  job.def, job.version = def, version
  return true
end

------------------------------------------------------------------ commit

local function online_pids(room)
  local on = {}
  local ok, conns = pcall(core.room_conns, rawget(room, "h"))
  for _, c in ipairs(ok and conns or {}) do
    local st = rawget(c, "state") -- conn.state is made on first read (runtime.lua)
    local pid
    if st then pid = st.publicId else pid = rawget(c, "_pid") end
    if pid then on[pid] = true end
  end
  return on
end

-- Re-write parent[k] so that its new flags apply from now on (a node's flags
-- are set when it is created: delete it, put a copy back, set the flags).
local function reflag(parent, k, fl)
  local cur = parent[k]
  if cur == nil then return end
  local copy = core.is_proxy(cur) and core.copy(cur) or cur
  parent[k] = nil
  parent[k] = copy
  if fl ~= 0 then core.set_flags(parent, k, fl) end
end

local function set_new(parent, k, value, fl)
  parent[k] = value
  if fl ~= 0 and parent[k] ~= nil then core.set_flags(parent, k, fl) end
end

local function user_default(f, pid, online)
  if f.kind == "connected" then return online[pid] == true end
  return deepcopy(f.default)
end

local function migrate_users(users, os, ns, online)
  local pids = {}
  for pid in pairs(users) do pids[#pids + 1] = pid end
  table.sort(pids)
  local removed, added, changed = {}, {}, {}
  for _, k in ipairs(sorted_keys(os.fields)) do
    if not ns.fields[k] then removed[#removed + 1] = k end
  end
  for _, k in ipairs(sorted_keys(ns.fields)) do
    local of, nf = os.fields[k], ns.fields[k]
    if not of or of.kind ~= nf.kind then added[#added + 1] = k
    elseif flags_of(of) ~= flags_of(nf) then changed[#changed + 1] = k end
  end
  if #removed + #added + #changed == 0 then return end
  for _, pid in ipairs(pids) do
    local u = users[pid]
    if type(u) == "userdata" or type(u) == "table" then
      for _, k in ipairs(removed) do u[k] = nil end
      for _, k in ipairs(added) do
        local f = ns.fields[k]
        if os.fields[k] then u[k] = nil end
        set_new(u, k, user_default(f, pid, online), flags_of(f))
      end
      for _, k in ipairs(changed) do reflag(u, k, flags_of(ns.fields[k])) end
    end
  end
end

-- Bring one live room's state from definition od to nd (all writes go
-- through the state proxy: patches to clients, writes to storage, and the
-- undo log of the enclosing protected call).
local function migrate(room, od, nd)
  local root = rawget(room, "root")
  local online
  for _, k in ipairs(od.field_order) do
    if not nd.fields[k] then root[k] = nil end
  end
  for _, k in ipairs(nd.field_order) do
    local nf, of = nd.fields[k], od.fields[k]
    local fl = flags_of(nf)
    if not of or (of.kind ~= nf.kind and (of.kind == "users" or nf.kind == "users")) then
      if of then root[k] = nil end
      if nf.kind == "users" then
        online = online or online_pids(room)
        local users = {}
        for pid in pairs(online) do
          local u = {}
          for sk, sf in pairs(nf.schema.fields) do u[sk] = user_default(sf, pid, online) end
          users[pid] = u
        end
        set_new(root, k, users, fl)
        local up = root[k]
        for pid in pairs(users) do
          for sk, sf in pairs(nf.schema.fields) do
            local sfl = flags_of(sf)
            if sfl ~= 0 and up[pid][sk] ~= nil then core.set_flags(up[pid], sk, sfl) end
          end
        end
      else
        set_new(root, k, deepcopy(nf.default), fl)
      end
    else
      if flags_of(of) ~= fl then reflag(root, k, fl) end
      if nf.kind == "users" and root[k] ~= nil then
        online = online or online_pids(room)
        migrate_users(root[k], of.schema, nf.schema, online)
      end
    end
  end
end

-- Point a (migrated) live room at definition nd.
local function swap(room, nd, version, file)
  local od = rawget(room, "def")
  local srv = runtime.server_of(room)
  local src = rawget(room, "src")
  runtime.census(srv, od.path, src.version, -1) -- /metrics: rooms by type and version
  runtime.census(srv, nd.path, version, 1)
  rawset(room, "def", nd)
  rawset(room, "src", runtime.src_of(nd, file or src.file, version, src.party))
  local cfg = runtime.config_of(nd)
  if od.autoSync ~= nd.autoSync then
    cfg.autoSync = nd.autoSync
    rawset(room, "_autoSync", nd.autoSync)
  end
  core.room_config(rawget(room, "h"), cfg)
end

--- A room that hibernated on an older definition woke (runtime.wake): bring
--- it to entry e ({def, file, version}) as commit does for live rooms, then
--- run onReload. Runs inside the wake's protected call (an error rolls back).
function M.upgrade(room, e)
  local prev = rawget(room, "src").version
  migrate(room, rawget(room, "def"), e.def)
  swap(room, e.def, e.version, e.file)
  log("info", "room %s woke on version %s and took version %s", rawget(room, "key"), prev or "?", e.version or "?")
  if e.def.onReload then -- may wait (lunaroom.tasks)
    require("lunaroom.tasks").run(require("lunaroom.runtime").server_of(room), room, "onReload", e.def.onReload, room, prev)
  end
end

local function rooms_of(srv, job, old_def)
  local list = {}
  for _, room in pairs(srv.rooms) do
    local rd, rf = rawget(room, "def"), rawget(room, "src").file
    if (old_def and rd == old_def) or (job.file and rf and norm(rf) == job.file) then
      list[#list + 1] = room
    end
  end
  table.sort(list, function(a, b) return rawget(a, "key") < rawget(b, "key") end)
  return list
end

--- Step 2: migrate the state of every live room of the file, then swap the
--- definition (srv.defs entry and each room). An error before the swap
--- leaves every room on its old definition, and the caller's protected call
--- rolls back every state write made here.
function M.commit(srv, job)
  local st = state(srv)
  local e, idx = find_entry(srv, job.file, job.target)
  local nd = job.def
  local rooms = rooms_of(srv, job, e and e.def)
  for _, room in ipairs(rooms) do migrate(room, rawget(room, "def"), nd) end
  -- From here on nothing can fail.
  if e then
    srv.defs[idx] = { def = nd, file = e.file or job.file, version = job.version }
    runtime.want_headers(srv, nd)
  else
    runtime.add_definition(srv, nd, job.file, job.version)
  end
  if job.file then
    st.removed[job.file] = nil
    st.broken[job.file] = nil
  end
  job.previous = {}
  for i, room in ipairs(rooms) do
    job.previous[i] = rawget(room, "src").version
    swap(room, nd, job.version, job.file)
  end
  job.rooms = rooms
  job.committed = true
end

--- Step 3: onReload(room, oldVersion) for every room that was swapped, each
--- in its own protected call (a failing hook is logged, rolled back, and
--- does not stop the others).
function M.after(srv, job)
  local nd = job.def
  if not nd.onReload then return end
  for i, room in ipairs(job.rooms or {}) do
    require("lunaroom.tasks").run(srv, room, "onReload", nd.onReload, room, job.previous[i]) -- may wait
  end
end

--- Development mode (srv.dev: lunaroom serve --dev). A save of a room file
--- that fails to compile or validate is sent to every live room of that
--- file as {"type":"dev_error","value":{"file","line","message"}} (line is
--- null when the message has none), and to every socket that joins one of
--- them until the next save that loads (or goes back to the running
--- version), which sends {"type":"dev_error","value":null}. The npm
--- client ignores packet types it does not know; the demo page draws it.
--- Never sent without srv.dev.
---
--- A room file that has no definition (it failed at start, or a new file's
--- first save failed) has no room type yet, so its clients would be told
--- "no such room". Under srv.dev its room type is taken from its source
--- text instead: the first `path = "..."` and `party = "..."` string
--- literals, compiled by lr.room as a good file's are (st.failed[file] =
--- {path, party, match}). A WebSocket for it is kept open by the engine
--- (host/router.c, M.dev_failed) with the dev_error packet, and joins the
--- room once a save loads (after {"type":"dev_error","value":null}); an HTTP
--- request gets 503 with the error (runtime.preroute).
local DEV_MESSAGE_MAX = 2000
local function dev_send(srv, file, value)
  local e = find_entry(srv, file)
  for _, room in ipairs(rooms_of(srv, { file = file }, e and e.def)) do
    core.broadcast(rawget(room, "h"), { type = "dev_error", value = value })
  end
end

local function dev_value(f, msg)
  msg = tostring(msg)
  local file, line, text = msg:match("^(.-):(%d+): (.*)$")
  if not file then
    file, text = f, msg
    if text:sub(1, #f + 2) == f .. ": " then text = text:sub(#f + 3) end
  end
  if #text > DEV_MESSAGE_MAX then text = text:sub(1, DEV_MESSAGE_MAX) .. "..." end
  return { file = file, line = line and tonumber(line) or core.null, message = text }
end

--- The string value of `key = "..."` (or '...') first written in src.
local function declared(src, key)
  local at, val
  for _, q in ipairs { '"', "'" } do
    local i, _, v = src:find("%f[%w_]" .. key .. "%s*=%s*" .. q .. "([^" .. q .. "\n]*)" .. q)
    if i and (not at or i < at) then at, val = i, v end
  end
  return val
end

-- Register f (no definition, failed with value) as a failed room type.
local function dev_failed_type(srv, st, f, src)
  st.failed = st.failed or {}
  src = src or core.readfile(f)
  local path = type(src) == "string" and declared(src, "path")
  local ok, d = false, nil
  if path and path ~= "" then ok, d = pcall(lr.room, { path = path, party = declared(src, "party") }) end
  local before = st.failed[f]
  if not ok then
    if before ~= false then
      log("warn", "%s: no path = \"...\" in its text: its clients are told \"no such room\" until it loads", f)
    end
    st.failed[f] = false -- known, without a room type
    return
  end
  st.failed[f] = { path = d.path, party = d.party, match = d.match }
  if not (before and before.path == d.path and before.party == d.party) then
    log("info", "development mode: clients of %s/%s wait for a save of %s that loads", d.party, d.path, f)
  end
end

local function dev_report(srv, st, job)
  local f = job.file
  if not f then return end
  st.dev_errors = st.dev_errors or {}
  if not job.ok then
    local value = dev_value(f, job.err)
    st.dev_errors[f] = value
    dev_send(srv, f, value)
    if not find_entry(srv, f) then dev_failed_type(srv, st, f, job.src) end
  else
    if st.failed then st.failed[f] = nil end
    if st.dev_errors[f] then
      st.dev_errors[f] = nil
      dev_send(srv, f, core.null)
    end
  end
end

--- runtime.load_dir under srv.dev: room file f did not load at start (err:
--- its message). Its clients get the error and wait for a good save.
function M.dev_start_failure(srv, f, err)
  local st = state(srv)
  f = norm(f)
  local src = core.readfile(f)
  local msg = type(src) == "string" and M.locate(err, src, f) or tostring(err)
  st.broken[f] = tostring(err)
  st.dev_errors = st.dev_errors or {}
  st.dev_errors[f] = dev_value(f, msg)
  dev_failed_type(srv, st, f, src)
end

--- The dev_error value for a client of ns/id that no definition serves,
--- when a room file that does not load declares it (srv.dev only), or nil.
--- Parties resolve as runtime's resolve does: a party no room type names
--- is "main".
function M.dev_failed(srv, ns, id)
  local st = srv.reload
  if not (srv.dev and st and st.failed and next(st.failed)) then return nil end
  local files = sorted_keys(st.failed)
  local named = false
  for _, e in ipairs(srv.defs) do if e.def.party == ns then named = true end end
  for _, f in ipairs(files) do if st.failed[f] and st.failed[f].party == ns then named = true end end
  local want = named and ns or "main"
  for _, f in ipairs(files) do
    local ft = st.failed[f]
    if ft and ft.party == want and ft.match(id) then
      return (st.dev_errors and st.dev_errors[f]) or { file = f, line = core.null, message = "does not load" }
    end
  end
  return nil
end

--- The dev_error value a new socket of room gets on join (runtime.connect
--- asks in development mode only), or nil.
function M.dev_error(srv, room)
  local errs = srv.reload and srv.reload.dev_errors
  local f = rawget(room, "src").file
  return errs and f and errs[norm(f)] or nil
end

--- Step 4: the outcome and its log line. err: a failure of a step (from C).
function M.done(srv, job, err)
  local st = state(srv)
  local name = job.chunk or job.file or "room"
  if err and not job.committed then job.err = err end
  if job.committed then
    job.ok = true
    local n = #(job.rooms or {})
    if job.exists then
      log("info", "reloaded %s (version %s, %d room%s)", name, job.version, n, n == 1 and "" or "s")
    else
      log("info", "added %s (path %s, version %s%s)", name, job.def.path, job.version,
        n > 0 and string.format(", %d live room%s", n, n == 1 and "" or "s") or "")
    end
    if err then log("warn", "%s: onReload failed: %s", name, err) end
  elseif job.skip then
    job.ok = true
    if job.file then st.broken[job.file] = nil end
    job.version = job.old_version
    if job.skip == "unchanged" then log("debug", "%s unchanged (version %s)", name, tostring(job.version)) end
  else
    job.ok = false
    local msg = tostring(job.err or "reload failed")
    if job.file and not msg:find(job.file, 1, true) and not msg:find(name, 1, true) then
      msg = name .. ": " .. msg
    end
    job.err = msg
    -- Retried when a module changes (the fix may be there); a retry that
    -- fails the same way is not logged again.
    local again = job.retry and job.file and st.broken[job.file] == msg
    if job.file then st.broken[job.file] = msg end
    if again then
      log("debug", "%s (still failing)", msg)
    elseif job.old_version then
      log("error", "%s (keeping version %s)", msg, job.old_version)
    else
      log("error", "%s (not loaded)", msg)
    end
  end
  if srv.dev then dev_report(srv, st, job) end
end

------------------------------------------------------------------ entry points

--- Watch dir (the folder the server's rooms were loaded from) for changes;
--- host/reload.c polls the watcher on every engine tick. Returns true or
--- false, error.
function M.watch(srv, dir)
  local w, err = reload_c.watch(dir)
  if not w then return false, err end
  if srv._watcher then srv._watcher:close() end
  srv._watcher = w
  local st = state(srv)
  st.dir = norm(dir:gsub("/+$", ""))
  -- Files that failed at startup are retried when a module changes.
  local known = {}
  for _, e in ipairs(srv.defs) do if e.file then known[norm(e.file)] = true end end
  for _, f in ipairs(sandbox.list_rooms(dir) or {}) do
    f = norm(f)
    if not known[f] then
      local def, res = sandbox.load_room_file(f, dir)
      if not def and res ~= sandbox.NOT_A_ROOM then st.broken[f] = tostring(res) end
    end
  end
  log("info", "watching %s for changes (hot reload; --no-watch turns it off)", dir)
  return true
end

--- Stop watching (the watcher's fd is closed).
function M.unwatch(srv)
  if srv._watcher then srv._watcher:close() end
  srv._watcher = nil
end

--- Reload now, outside any handler: changes as for plan. Returns the jobs
--- with their outcome (ok, version, err, rooms). Writes are flushed by the
--- next engine tick (the watcher's caller is the tick itself).
function M.run(srv, changes)
  return reload_c.run(srv, changes)
end

return M

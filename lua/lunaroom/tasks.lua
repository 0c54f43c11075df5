-- lunaroom.tasks: room handlers that may wait (lunaroom.io.sleep / request).
--
-- Owns: the pooled coroutines every room entry point runs in, the waits they
-- make (armed on the engine's timers: the virtual clock in specs), the caps
-- on waiting handlers (per room and per process), the per-wait timeout and
-- the total time limit of a handler, and cancelling the waits of a room that
-- goes away. The writes of a handler are atomic between waits: each step
-- (start to first wait, wait to wait, wait to end) runs through
-- lr_vm_resume (lunaroom.wait_c), which rolls back that step alone on an
-- error; a step that reaches a wait is committed (its writes join the
-- pending sync and storage flush when the host call that ran it returns).
-- Must not: know what a handler is for (runtime.lua decides what happens
-- when it finishes), or touch sockets.
--
--   tasks.run(srv, room, what, fn, a, b, c, d, e)
--     runs fn(a..e) in a pooled coroutine (none is created in the common
--     case), or, for a room whose code never mentions lunaroom.io nor
--     fetch (def.direct, set by sandbox.lua), in a protected call as before. Finished without waiting: returns true, results (up to 4), or
--     false, message, code ("handler", or "busy" when a cap refused its
--     first wait). Waiting: returns tasks.PENDING, w; the caller sets
--     w.after = function(ok, ...) end, run with the same values once the
--     handler finished (from the timer or the HTTP answer that resumed it).
--
--   tasks.backend(srv, key, what, done, fn, a, b, c, d, e)
--     the same driver for one call of a storage backend written in Lua
--     (host/storage_lua.c): see the function.
local wait_c = require "lunaroom.wait_c"
local core = require "lunaroom.core"
local io = require "lunaroom.io"

local M = {}
local DONE = {}
local PENDING = setmetatable({}, { __tostring = function() return "PENDING" end })
M.PENDING = PENDING
local ERR = io.ERROR -- resumed with (ERR, message): the wait raises message

M.DEFAULT_MAX_PER_ROOM = 1000
M.DEFAULT_MAX_PER_PROCESS = 10000
M.DEFAULT_TIMEOUT = 30000 -- one wait (a request without opts.timeout)
M.DEFAULT_HANDLER_TIMEOUT = 60000 -- first wait to end
M.POOL_MAX = 64

local yield = coroutine.yield
local resume = wait_c.resume
local POOL_MAX = M.POOL_MAX
-- A pooled coroutine: runs one callback per resume. Its arguments are
-- dropped before it parks (a parked coroutine must not keep a room alive);
-- its results (at most 4) stay until the next callback.
local function worker(fn, a, b, c, d, e)
  local r1, r2, r3, r4
  while true do
    r1, r2, r3, r4 = fn(a, b, c, d, e)
    fn, a, b, c, d, e = nil, nil, nil, nil, nil, nil
    fn, a, b, c, d, e = yield(DONE, r1, r2, r3, r4)
  end
end

local pool, npool = {}, 0
local function take()
  if npool == 0 then return coroutine.create(worker) end
  local co = pool[npool]
  pool[npool] = nil
  npool = npool - 1
  return co
end

local function give(co)
  if npool < POOL_MAX then
    npool = npool + 1
    pool[npool] = co
  end
end

-- srv.tasks = { n = waiting in the process, rooms = { [key] = { [w] = true, n = count } } }
local function state(srv)
  local st = srv.tasks
  if not st then
    st = { n = 0, rooms = {} }
    srv.tasks = st
  end
  return st
end

local function max_process(srv)
  local v = srv.opts.max_waiting or tonumber(srv.env.LUNAROOM_MAX_WAITING or "")
  return v or M.DEFAULT_MAX_PER_PROCESS
end

local function limits(room)
  local d = rawget(room, "def")
  local w = d and d.waits or {}
  return w.max or M.DEFAULT_MAX_PER_ROOM, w.timeout or M.DEFAULT_TIMEOUT, w.handlerTimeout or M.DEFAULT_HANDLER_TIMEOUT
end

local finish, arm, step

local function cancel_timers(w)
  local h = w.srv.h
  if w.t then core.cancel(h, w.t); w.t = nil end
  if w.tt then core.cancel(h, w.tt); w.tt = nil end
end

-- w stopped waiting for good: counters, hold, timers.
local function unregister(w)
  if not w.registered then return end
  w.registered = false
  cancel_timers(w)
  if w.deadline then core.cancel(w.srv.h, w.deadline); w.deadline = nil end
  local st = state(w.srv)
  st.n = st.n - 1
  local rs = st.rooms[w.key]
  if rs then
    rs[w] = nil
    rs.n = rs.n - 1
    if rs.n == 0 then st.rooms[w.key] = nil end
  end
  local h = rawget(w.room, "h")
  if h then pcall(wait_c.hold, h, -1) end
end

function finish(w, ok, ...)
  unregister(w)
  if ok then give(w.co) end
  w.co = nil
  if w.after then return w.after(ok, ...) end
end

-- Resume w's coroutine with the values of its wait; then arm its next wait
-- or finish it.
function step(w, ...)
  if not w.co then return end
  w.seq = w.seq + 1
  cancel_timers(w)
  return arm(w, wait_c.resume(w.co, rawget(w.room, "h"), w.key, w.what, ...))
end

local function fail_wait(w, msg)
  return step(w, ERR, msg)
end

local function start_request(w, method, url, headers, body, timeout)
  local srv, seq = w.srv, w.seq
  local function reply(res)
    if w.seq ~= seq or not w.co then return end -- timed out or cancelled meanwhile
    return step(w, res)
  end
  local svc = srv.http_service -- lunaroom.testing: answered on the virtual clock
  if svc then
    svc({ method = method, url = url, headers = headers, body = body, timeout = timeout }, reply, w.room)
    return true
  end
  local okf, fetch = pcall(require, "lunaroom.fetch")
  if not okf then return nil, "lunaroom.io.request: no HTTP client in this host (in specs: t:http_service)" end
  local id, err = fetch.request(method, url, headers, body, timeout + 1000, reply)
  if not id then return nil, "lunaroom.io.request: " .. tostring(err) end
  return true
end

-- The result of a resume: finished, failed, or a new wait to arm.
function arm(w, status, tag, ...)
  if status == "error" then
    local code = tag and tag:find("busy:", 1, true) and "busy" or "handler"
    w.co = nil -- dead: not pooled
    return finish(w, false, tag, code)
  end
  if tag == DONE then return finish(w, true, ...) end
  -- A wait. The first one registers the task (caps, hold, deadline).
  local srv, room = w.srv, w.room
  local room_max, timeout, handler_timeout = limits(room)
  if w.backend and not srv then return finish(w, false, tostring(tag) .. ": no event loop to wait on") end
  if not w.registered and not w.backend then
    local st = state(srv)
    local rs = st.rooms[w.key]
    if rs and rs.n >= room_max then
      return fail_wait(w, ("busy: %d handlers of room %s are waiting already (waits.max)"):format(rs.n, w.key))
    end
    local pmax = max_process(srv)
    if st.n >= pmax then
      return fail_wait(w, ("busy: %d handlers are waiting in this process (the process cap)"):format(st.n))
    end
    if not rs then
      rs = { n = 0 }
      st.rooms[w.key] = rs
    end
    rs[w], rs.n, st.n = true, rs.n + 1, st.n + 1
    w.registered = true
    wait_c.hold(rawget(room, "h"), 1)
    w.deadline = core.timer(srv.h, rawget(room, "h"), handler_timeout, function()
      w.deadline = nil
      if not w.co then return end
      local co = w.co
      w.co = nil
      coroutine.close(co)
      core.log("error", ("room %s: %s stopped: it ran for more than %d ms (waits.handlerTimeout)"):format(
        w.key, w.what, handler_timeout))
      return finish(w, false, ("handler time limit exceeded (%d ms)"):format(handler_timeout), "handler")
    end)
  end
  local seq = w.seq
  if tag == "lunaroom.sleep" then
    local ms = ...
    if type(ms) ~= "number" or ms ~= ms then return fail_wait(w, "lunaroom.io.sleep: ms must be a number") end
    ms = math.max(0, math.min(ms, handler_timeout + 1)) -- the handler's time limit comes first
    w.t = core.timer(srv.h, rawget(room, "h"), math.floor(ms), function()
      w.t = nil
      if w.seq == seq then return step(w) end
    end)
    return PENDING
  elseif tag == "lunaroom.request" then
    local method, url, headers, body, t = ...
    if type(method) ~= "string" or type(url) ~= "string" or type(headers) ~= "table"
      or (body ~= nil and type(body) ~= "string") or (t ~= nil and (type(t) ~= "number" or not (t > 0))) then
      return fail_wait(w, "lunaroom.io.request: method and url are strings, opts.headers a table, "
        .. "opts.body a string, opts.timeout a number > 0")
    end
    t = math.floor(math.min(t or timeout, handler_timeout + 1))
    local ok, err = start_request(w, method, url, headers, body, t)
    if not ok then return fail_wait(w, err) end
    if w.seq ~= seq then return PENDING end -- answered at once (a test service)
    w.tt = core.timer(srv.h, rawget(room, "h"), t, function()
      w.tt = nil
      if w.seq ~= seq then return end
      local why = ("lunaroom.io.request %s %s: no answer after %d ms (timeout)"):format(method, url, t)
      if w.backend then return step(w, { status = 0, body = "", error = why }) end -- an answer, as fetch gives
      return fail_wait(w, why)
    end)
    return PENDING
  end
  if tag == "lunaroom.http_take" then -- room-to-room fetch whose target waits (in process)
    local id, t = ...
    if type(t) ~= "number" or not (t > 0) then t = timeout end
    t = math.floor(math.min(t, handler_timeout + 1))
    local waited = 0
    local function poll()
      w.t = nil
      if w.seq ~= seq then return end
      local res = core.http_take(id)
      if res then return step(w, res) end
      waited = waited + 1
      if waited >= t then return fail_wait(w, ("fetch: no answer after %d ms (timeout)"):format(t)) end
      w.t = core.timer(srv.h, rawget(room, "h"), 1, poll)
    end
    w.t = core.timer(srv.h, rawget(room, "h"), 1, poll)
    return PENDING
  end
  local co = w.co
  w.co = nil
  coroutine.close(co)
  if w.backend then return finish(w, false, "the backend yielded outside lunaroom.io (sleep, request)") end
  core.log("error", ("room %s: %s failed: it yielded outside lunaroom.io (sleep, request)"):format(w.key, w.what))
  return finish(w, false, "yielded outside lunaroom.io (sleep, request)", "handler")
end

-- core.pcall's answer as run's.
local function direct_result(ok, ...)
  if ok then return true, ... end
  return false, (...), "handler"
end

function M.run(srv, room, what, fn, a, b, c, d, e)
  if room.def.direct then -- its code cannot wait (sandbox.lua): no coroutine
    return direct_result(core.pcall(fn, room.key, what, a, b, c, d, e))
  end
  local co
  if npool > 0 then -- take() inlined: this runs for every handler call
    co = pool[npool]
    pool[npool] = nil
    npool = npool - 1
  else
    co = coroutine.create(worker)
  end
  local key = room.key -- raw fields of the instance (no metamethod runs)
  local status, tag, r1, r2, r3, r4 = resume(co, room.h, key, what, fn, a, b, c, d, e)
  if tag == DONE then -- the common case: finished, no wait
    if npool < POOL_MAX then
      npool = npool + 1
      pool[npool] = co
    end
    return true, r1, r2, r3, r4
  end
  if status == "error" then return false, tag, tag and tag:find("busy:", 1, true) and "busy" or "handler" end
  -- It waits (or yielded something else): arm the wait.
  local w = { srv = srv, room = room, key = key, what = what, co = co, seq = 0 }
  local early
  w.after = function(ok, ...) early = table.pack(ok, ...) end -- finished before it waited
  local res = arm(w, status, tag, r1, r2, r3, r4)
  if early then return table.unpack(early, 1, early.n) end
  w.after = nil -- the caller sets it: after(ok, results...) or after(false, message, code)
  return res, w
end

-- A storage backend's call waits as a handler does, without the caps, the
-- time limit or a room to hold; a request that gets no answer in time is
-- answered (status 0), never raised.
local BACKEND_ROOM = { def = { waits = { max = math.huge, timeout = M.DEFAULT_TIMEOUT, handlerTimeout = math.huge } } }

local function backend_first(srv, key, what, done, co, status, tag, ...)
  if tag == DONE then
    give(co)
    return "done", (...)
  end
  if status == "error" then return "error", tag end
  local w = { srv = srv, room = BACKEND_ROOM, key = key, what = what, co = co, seq = 0, backend = true }
  local early
  w.after = function(ok, res) early = { ok, res } end -- finished before it waited
  arm(w, status, tag, ...)
  if early then return early[1] and "done" or "error", early[2] end
  w.after = done
  return "wait"
end

--- One call of a storage backend written in Lua (host/storage_lua.c):
--- fn(a..e) in a pooled coroutine; its waits (lunaroom.io) are armed on
--- srv's timers and HTTP client as a handler's are (srv nil: no server yet,
--- a wait fails). Returns "done", result | "error", message when it
--- finished without waiting; "wait" when it waits: done(true, result) or
--- done(false, message) runs once it finished.
function M.backend(srv, key, what, done, fn, a, b, c, d, e)
  local co = take()
  return backend_first(srv, key, what, done, co, resume(co, nil, key, what, fn, a, b, c, d, e))
end

--- Handlers of room key that wait: cancelled (the room is disposed or
--- evicted). Their coroutines are closed; `after` does not run.
function M.cancel_room(srv, key)
  local st = srv.tasks
  local rs = st and st.rooms[key]
  if not rs then return 0 end
  local n = 0
  for w in pairs(rs) do
    if w ~= "n" and type(w) == "table" then
      local co = w.co
      w.co = nil
      if co then coroutine.close(co) end
      w.after = nil
      unregister(w)
      if w.cancel then pcall(w.cancel) end
      n = n + 1
    end
  end
  return n
end

--- Waiting handlers: of room key, or of the process.
function M.waiting(srv, key)
  local st = srv.tasks
  if not st then return 0 end
  if key then return st.rooms[key] and st.rooms[key].n or 0 end
  return st.n
end

return M

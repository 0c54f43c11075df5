-- lunaroom.io: waiting for I/O, from room handlers (actions, guards, hooks,
-- timers: lunaroom.tasks) and from storage backends written in Lua
-- (`--storage lua:FILE`, host/storage_lua.c).
--
-- Owns: the waits (sleep, request) and what one backend operation does
-- (run). A wait yields the coroutine the handler or the backend call runs
-- in (lunaroom.tasks drives both); it is resumed when the timer fires or
-- the HTTP answer arrives, and the event loop serves everything else
-- meanwhile.
-- Must not: be used where nothing can be suspended (inside core.pcall, a
-- coroutine of the room's own, module loading): the wait fails with
-- "cannot wait here".
--
--   local io = require "lunaroom.io"
--   io.sleep(50)                                   -- resume 50 ms later
--   local res = io.request("PUT", "http://127.0.0.1:7000/kv/k", {
--     headers = { ["content-type"] = "application/json" }, body = "1", timeout = 5000 })
--   -- res = { status = 200, body = "...", contentType = "...", error = nil|"..." }
--   -- In a room handler a timed-out wait raises an error; network errors
--   -- are answers with status 0 and res.error.
local M = {}
-- Resumed with (ERROR, message): the wait raises message (timeout, a full
-- cap, a cancelled handler). A storage backend's call is resumed with it
-- only for a malformed wait (its call fails, as before); a request that
-- times out is answered (status 0, res.error), never raised there.
local ERROR = setmetatable({}, { __tostring = function() return "lunaroom.io.ERROR" end })
M.ERROR = ERROR

local function must_yield(what)
  if not coroutine.isyieldable() then
    error("lunaroom.io." .. what .. ": cannot wait here (only in a room handler or a storage backend call, "
      .. "not inside a protected call of the host or a coroutine of your own)", 3)
  end
end

local function check(a, b, ...)
  if a == ERROR then error(b, 0) end
  return a, b, ...
end

--- Suspend the current handler or backend call for ms milliseconds
--- (virtual clock in specs).
function M.sleep(ms)
  assert(type(ms) == "number" and ms >= 0, "lunaroom.io.sleep: ms must be a number >= 0")
  must_yield("sleep")
  check(coroutine.yield("lunaroom.sleep", ms))
end

--- An HTTP request (http:// or https://); suspends until the answer or the
--- timeout (opts.timeout ms; in a room handler the room's waits.timeout,
--- default 30 s). Network errors are answers: res.status is 0 and res.error
--- says why.
function M.request(method, url, opts)
  opts = opts or {}
  assert(type(method) == "string" and type(url) == "string",
    "lunaroom.io.request: method and url must be strings")
  if opts.timeout ~= nil then
    assert(type(opts.timeout) == "number" and opts.timeout > 0, "lunaroom.io.request: timeout must be a number > 0")
  end
  must_yield("request")
  return (check(coroutine.yield("lunaroom.request", method, url, opts.headers or {}, opts.body, opts.timeout)))
end

--- One operation of backend b, run inside a coroutine (tasks.backend).
---   "load"  -> every {key, json} of the room, sorted by key
---   "apply" -> ops applied ({"put", k, json} | {"del", k} | {"delprefix", k}),
---              with b.apply when the backend has it, else one by one.
function M.run(b, op, ns, room, ops)
  if op == "load" then
    local list = b.list(ns, room, "")
    if type(list) ~= "table" then error("list(" .. ns .. ", " .. room .. ", \"\") did not return a table") end
    return list
  end
  if b.apply then return b.apply(ns, room, ops) end
  for _, o in ipairs(ops) do
    if o[1] == "put" then
      b.put(ns, room, o[2], o[3])
    elseif o[1] == "del" then
      b.delete(ns, room, o[2])
    else
      for _, kv in ipairs(b.list(ns, room, o[2]) or {}) do b.delete(ns, room, kv[1]) end
    end
  end
end

return M

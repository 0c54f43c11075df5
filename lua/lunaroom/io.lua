-- lunaroom.io: waiting for I/O from a storage backend written in Lua
-- (`--storage lua:FILE`, host/storage_lua.c).
--
-- Owns: the two waits a backend may do, and the driver that runs one backend
-- operation. Every backend call runs in its own coroutine; a wait yields it
-- to the host, which resumes it when the timer fires or the HTTP answer
-- arrives. The event loop keeps serving every room meanwhile.
-- Must not: be used by room scripts (their sandbox does not offer it; a room
-- handler is never suspended).
--
--   local io = require "lunaroom.io"
--   io.sleep(50)                                   -- resume 50 ms later
--   local res = io.request("PUT", "http://127.0.0.1:7000/kv/k", {
--     headers = { ["content-type"] = "application/json" }, body = "1", timeout = 5000 })
--   -- res = { status = 200, body = "...", contentType = "...", error = nil|"..." }
local M = {}

local function must_yield(what)
  if not coroutine.isyieldable() then
    error("lunaroom.io." .. what .. ": only inside a storage backend call (cannot wait here)", 3)
  end
end

--- Suspend the current backend call for ms milliseconds (virtual clock in specs).
function M.sleep(ms)
  assert(type(ms) == "number" and ms >= 0, "lunaroom.io.sleep: ms must be a number >= 0")
  must_yield("sleep")
  coroutine.yield("lunaroom.sleep", ms)
end

--- An HTTP request (plain http:// only); suspends until the answer or the
--- timeout. Never raises for network errors: res.status is 0 and res.error says why.
function M.request(method, url, opts)
  opts = opts or {}
  assert(type(method) == "string" and type(url) == "string",
    "lunaroom.io.request: method and url must be strings")
  must_yield("request")
  return coroutine.yield("lunaroom.request", method, url, opts.headers or {}, opts.body,
    opts.timeout or 30000)
end

--- The host's driver: one operation of backend b, run inside a coroutine.
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

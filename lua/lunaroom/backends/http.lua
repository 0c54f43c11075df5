-- A storage backend that keeps rooms in a remote key-value service over
-- HTTP, without blocking the server: every call waits with
-- lunaroom.io.request while the event loop serves everything else.
--
--   LUNAROOM_KV_URL=http://127.0.0.1:7000/kv \
--     lunaroom serve rooms --storage lua:lua/lunaroom/backends/http.lua
--
-- The service speaks a two-call protocol (spec/integration/kv_server.mjs is
-- a complete one in 60 lines):
--   GET  {url}/{ns}/{room}          -> 200 [[key, json], ...] sorted by key
--                                      (404 = nothing stored)
--   POST {url}/{ns}/{room}  body:      [["put", key, json] | ["del", key]
--                                      | ["delprefix", key], ...]
--                                   -> 2xx once applied, all or nothing
-- Values are JSON text carried as strings, so numbers stay exact. Keys and
-- room ids are percent-encoded in the URL.
local io = require "lunaroom.io"
local core = require "lunaroom.core"

local base = os.getenv("LUNAROOM_KV_URL")
if not base or base == "" then
  error("lunaroom/backends/http.lua: set LUNAROOM_KV_URL (e.g. http://127.0.0.1:7000/kv)")
end
base = base:gsub("/+$", "")
local timeout = tonumber(os.getenv("LUNAROOM_KV_TIMEOUT_MS") or "") or 5000

local function enc(s)
  return (s:gsub("[^%w%-_%.~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function url(ns, room) return base .. "/" .. enc(ns) .. "/" .. enc(room) end

local function check(res, what)
  if res.status >= 200 and res.status < 300 then return end
  error(string.format("%s: %s", what, res.error or ("HTTP " .. res.status .. " " .. res.body:sub(1, 200))), 0)
end

local M = {}

function M.list(ns, room, prefix)
  local res = io.request("GET", url(ns, room), { timeout = timeout })
  if res.status == 404 then return {} end
  check(res, "GET " .. url(ns, room))
  local all, out = core.decode(res.body), {}
  for _, kv in ipairs(all) do
    if kv[1]:sub(1, #prefix) == prefix then out[#out + 1] = kv end
  end
  return out
end

function M.apply(ns, room, ops)
  local res = io.request("POST", url(ns, room), {
    headers = { ["content-type"] = "application/json" },
    body = core.encode(ops),
    timeout = timeout,
  })
  check(res, "POST " .. url(ns, room))
end

return M

-- An example storage backend written in Lua: `--storage lua:lua/lunaroom/backends/memory.lua`.
-- It keeps everything in Lua tables (nothing survives a restart); copy it
-- and replace the functions with calls to your database (backends/http.lua
-- is one that waits for the network with lunaroom.io).
--
-- The host calls these with JSON text values (numbers stay exact) and
-- expects list() sorted by key. apply() is optional (put and delete are then
-- used one by one); when present it must be all or nothing; this one
-- validates nothing that can fail, so it is.
local rooms = {} -- "ns\0room" -> { key -> json }

local function room(ns, id)
  local k = ns .. "\0" .. id
  local r = rooms[k]
  if not r then r = {}; rooms[k] = r end
  return r
end

local M = {}

function M.put(ns, id, key, json) room(ns, id)[key] = json end
function M.delete(ns, id, key) room(ns, id)[key] = nil end

function M.list(ns, id, prefix)
  local out = {}
  for k, v in pairs(room(ns, id)) do
    if k:sub(1, #prefix) == prefix then out[#out + 1] = { k, v } end
  end
  table.sort(out, function(a, b) return a[1] < b[1] end)
  return out
end

function M.apply(ns, id, ops)
  local r = room(ns, id)
  for _, op in ipairs(ops) do
    if op[1] == "put" then r[op[2]] = op[3]
    elseif op[1] == "del" then r[op[2]] = nil
    else
      for k in pairs(r) do if k:sub(1, #op[2]) == op[2] then r[k] = nil end end
    end
  end
end

return M

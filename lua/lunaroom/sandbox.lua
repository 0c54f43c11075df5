-- lunaroom.sandbox: loads room scripts, each into its own _ENV.
--
-- Owns: the allow-list of globals a room script sees, read-only library
-- tables, `require` for room scripts (only "lunaroom", "lunaroom.schema" and
-- plain Lua modules from the rooms folder, then from the --lua-modules trees
-- (pure-Lua rocks: *.lua files only), each in its own sandbox), and the
-- code version (content hash of the file and the modules it required).
-- Must not: give room code io, os.execute, load/loadfile/dofile, debug,
-- package, collectgarbage, or any C module.

local core = require "lunaroom.core"
local lr = require "lunaroom"

local M = {}
M.NOT_A_ROOM = "not a room"

-- Read-only views of host tables. A view is an empty proxy: reads go to a
-- private copy whose table values are views too (made once per table and
-- cached, so lr.v and the like are read-only as well); writes, rawset,
-- setmetatable and getmetatable are refused; pairs/next never hand out the
-- real table (the iterator walks it and yields views).
local VIEW = setmetatable({}, { __mode = "k" }) -- host table -> its view
local IS_VIEW = setmetatable({}, { __mode = "k" }) -- view -> true
local ROOM_MT = setmetatable({}, { __mode = "k" }) -- metatables room code set

local ro
local function wrap(v, name)
  if type(v) ~= "table" or IS_VIEW[v] then return v end
  return VIEW[v] or ro(v, name)
end

function ro(t, name)
  local copy = {}
  local proxy = {}
  VIEW[t], IS_VIEW[proxy] = proxy, true
  local function iter(_, k)
    local nk, nv = next(t, k)
    while type(nk) == "table" do nk, nv = next(t, nk) end -- no host table as a key
    return nk, wrap(nv, name .. "." .. tostring(nk))
  end
  setmetatable(copy, { __index = function(_, k) return wrap(t[k], name .. "." .. tostring(k)) end })
  for k, v in next, t do
    if type(k) ~= "table" then copy[k] = wrap(v, name .. "." .. tostring(k)) end
  end
  return setmetatable(proxy, {
    __index = copy,
    __newindex = function(_, k) error("cannot modify the read-only library " .. name .. " (key " .. tostring(k) .. ")", 2) end,
    __metatable = false,
    __pairs = function(p) return iter, p, nil end,
    __len = function() return #t end,
  })
end
M.readonly = wrap

-- Room code gets no pattern/bytecode helpers that could reach host internals.
local ROOM_STRING = {}
for k, v in pairs(string) do if k ~= "dump" then ROOM_STRING[k] = v end end

-- Coroutines made by room code count every instruction from their first
-- (lua_vm.c: the watchdog of a call only hooks the call's own thread).
local ROOM_COROUTINE = {}
for k, v in pairs(coroutine) do ROOM_COROUTINE[k] = v end
ROOM_COROUTINE.create = core.counted(coroutine.create)
ROOM_COROUTINE.wrap = core.counted(coroutine.wrap)

local RO = {
  string = ro(ROOM_STRING, "string"), table = ro(table, "table"), math = ro(math, "math"),
  utf8 = ro(utf8, "utf8"), coroutine = ro(ROOM_COROUTINE, "coroutine"),
  os = ro({ time = os.time, clock = os.clock, date = os.date, difftime = os.difftime }, "os"),
  lunaroom = wrap(lr, "lunaroom"),
}
RO.schema = wrap(lr.v, "lunaroom.schema")
-- require "lunaroom.io" in a room: the waits of handlers (lunaroom.tasks).
local lio = require "lunaroom.io"
local ROOM_IO = ro({ sleep = lio.sleep, request = lio.request }, "lunaroom.io")

local SAFE = { "assert", "error", "ipairs", "pairs", "pcall", "select", "tonumber",
  "tostring", "type", "xpcall", "rawequal", "rawlen", "_VERSION" }

-- The views are shared by every room: rawset must not reach them. A view
-- is an empty table, so next/rawget on it find nothing. Nor may rawset go
-- around the __newindex of a host object (room.env, the room, connections):
-- only tables without a metatable or with one room code set take it.
local function safe_rawset(t, k, v)
  if IS_VIEW[t] then error("cannot modify a read-only library", 2) end
  local mt = getmetatable(t)
  if mt ~= nil and not (type(mt) == "table" and ROOM_MT[mt]) then
    error("rawset: not on a host object", 2)
  end
  return rawset(t, k, v)
end
-- Only metatables room code set itself are handed back; the metatables of
-- host objects (room, conn, state proxies, handles, arrays, schemas, the
-- string metatable) answer false (nil for strings, as before).
local function safe_getmetatable(x)
  local mt = getmetatable(x)
  if mt == nil or (type(mt) == "table" and ROOM_MT[mt]) then return mt end
  if type(x) == "string" then return nil end
  return false
end
local function safe_setmetatable(t, mt)
  if type(t) ~= "table" then error("bad argument #1 to 'setmetatable' (table expected, got " .. type(t) .. ")", 2) end
  if IS_VIEW[t] then error("cannot modify a read-only library", 2) end
  local cur = getmetatable(t)
  if cur ~= nil and not (type(cur) == "table" and ROOM_MT[cur]) then
    error("setmetatable: cannot change the metatable of a host object", 2)
  end
  if mt ~= nil then
    if type(mt) ~= "table" then error("bad argument #2 to 'setmetatable' (nil or table expected)", 2) end
    if rawget(mt, "__gc") ~= nil then
      error("setmetatable: __gc is not allowed in room code (finalizers run outside the instruction budget)", 2)
    end
    ROOM_MT[mt] = true
  end
  return setmetatable(t, mt)
end

local function new_env(file, ctx)
  local env = {}
  for _, k in ipairs(SAFE) do env[k] = _G[k] end
  env.next, env.rawget, env.rawset = next, rawget, safe_rawset
  env.getmetatable, env.setmetatable = safe_getmetatable, safe_setmetatable
  for k, t in pairs(RO) do if k ~= "lunaroom" and k ~= "schema" then env[k] = t end end
  env.print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    core.log("info", file .. ": " .. table.concat(parts, "\t"))
  end
  env.require = function(name) return M.require(name, ctx) end
  env._G = env
  return env
end

local function read(path)
  local src, err = core.readfile(path)
  if not src then return nil, err end
  return src
end

--- --lua-modules: folders searched after the rooms folder, in order (the
--- host passes a LuaRocks tree as its share/lua/5.4); only name.lua and
--- name/init.lua files are loaded (no C modules), into the room's sandbox.
M.module_dirs = {}
function M.set_module_dirs(dirs)
  M.module_dirs = {}
  for _, d in ipairs(dirs) do M.module_dirs[#M.module_dirs + 1] = (d:gsub("/+$", "")) end
end

-- The file of module name: the rooms folder, then the module folders.
local function find_module(name, ctx)
  local rel = name:gsub("%.", "/")
  local tried = {}
  local function try(path)
    local src = read(path)
    tried[#tried + 1] = path
    return src
  end
  if ctx.dir then
    local p = ctx.dir .. "/" .. rel .. ".lua"
    local src = try(p)
    if src then return p, src end
  end
  for _, d in ipairs(M.module_dirs) do
    for _, p in ipairs { d .. "/" .. rel .. ".lua", d .. "/" .. rel .. "/init.lua" } do
      local src = try(p)
      if src then return p, src end
    end
  end
  return nil, "not found in " .. (#tried > 0 and table.concat(tried, ", ") or "(no rooms folder)")
end

--- require for room scripts: lunaroom modules, or name.lua from the rooms
--- folder or the --lua-modules folders.
function M.require(name, ctx)
  if name == "lunaroom" then return RO.lunaroom end
  if name == "lunaroom.schema" then return RO.schema end
  if name == "lunaroom.io" then return ROOM_IO end
  if type(name) ~= "string" or not name:match("^[%w_][%w_%.%-]*$") then
    error("require: bad module name " .. tostring(name), 2)
  end
  local cached = ctx.loaded[name]
  if cached then
    if cached.loading then error("require: circular dependency on " .. name, 2) end
    return cached.value
  end
  if not ctx.dir and #M.module_dirs == 0 then error("require: no module " .. name .. " (no rooms folder)", 2) end
  local path, src = find_module(name, ctx)
  if not path then error("require: no module " .. name .. " (" .. src .. ")", 2) end
  local entry = { loading = true, file = path, src = src }
  ctx.loaded[name] = entry
  local chunk, cerr = load(src, "@" .. path, "t", new_env(path, ctx))
  if not chunk then error(cerr, 0) end
  local value = chunk(name)
  if value == nil then value = true end
  entry.value, entry.loading = value, nil
  return value
end

--- Compile and run room source in a fresh sandbox.
-- Returns def, version, deps (list of module files) or nil, "file:line: message".
function M.load_room_source(src, chunkname, dir)
  local ctx = { dir = dir, loaded = {} }
  local file = chunkname:gsub("^@", "")
  local chunk, err = load(src, chunkname, "t", new_env(file, ctx))
  if not chunk then return nil, err end
  local ok, res = pcall(chunk)
  if not ok then
    res = tostring(res)
    -- `return lr.room{...}` is a tail call: its errors carry no position.
    if res:sub(1, #file + 1) ~= file .. ":" then res = file .. ": " .. res end
    return nil, res
  end
  if not lr.is_room(res) then
    if type(res) == "table" and type(res.path) == "string" and (res.actions or res.state) then
      local ok2, def = pcall(lr.room, res)
      if not ok2 then return nil, file .. ": " .. tostring(def) end
      res = def
    else
      return nil, M.NOT_A_ROOM
    end
  end
  local parts, deps = { src }, {}
  local names = {}
  for name in pairs(ctx.loaded) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    parts[#parts + 1] = ctx.loaded[name].src
    deps[#deps + 1] = ctx.loaded[name].file
  end
  res.deps = deps
  local all = table.concat(parts, "\0")
  -- Room code that never mentions lunaroom.io nor fetch cannot wait: its
  -- handlers are called directly, without a coroutine (lunaroom.tasks).
  res.direct = not (all:find("lunaroom.io", 1, true) or all:find("fetch", 1, true))
  return res, core.hash(all), deps
end

--- Load a room file. Returns def, version or nil, error.
function M.load_room_file(path, dir)
  local src, err = read(path)
  if not src then return nil, err end
  return M.load_room_source(src, "@" .. path, dir or path:match("^(.*)/[^/]*$") or ".")
end

--- Sorted paths of the *.lua files directly in dir.
function M.list_rooms(dir)
  local names, err = core.listdir(dir)
  if not names then return nil, err end
  local out = {}
  for i, n in ipairs(names) do out[i] = dir .. "/" .. n end
  return out
end

return M

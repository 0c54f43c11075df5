--[[
include_cycles.lua - fails (exit 1) when the include graph of host/ has a
cycle among the stores, the engine, the rules, the transports and the
features, when an engine file includes a header of a layer above it, or when
a store includes a header above the base (engine, rules, transports,
features).

A cycle among the stores alone (storage.c parses a --storage spec and
opens the store it names, which includes storage.h) is one family, not
reported.

Owns: the layer map of host/ below (keep it true when a file is added) and
the check `make test-c` runs.
Must not: build or run anything; it reads the #include "..." lines only.

A module is x.c with its x.h and x_int.h (a header without a .c is a module
of its own).
Layers, lowest first; an include may go down or sideways, never up from the
engine, and no two modules of the checked layers may include each other
through any path:
  base       buf log value (value_dels, value_ext) json rand undo addr_rate lua_vm ...
  storage    storage storage_memory storage_sqlite storage_cache storage_lua
             storage_postgres(_conn, _lease): below the engine; includes base
             headers only (reports and waits through lr_store_host)
  engine     server.h rules.h engine.h engine_int.h room sync timer idle router
  rules      bridge lua_api lua_proxy lua_store lua_admin lua_core lua_wait
             (the runtime.lua side)
  transports net headless
  features   uplink shard reload fetch (_http, _ws, _lua, _url) lua_jwt relay_id
             cluster (cluster_link, cluster_lua)
  top        main cli serve
Usage: lua5.4 host/tests/include_cycles.lua [host-dir]
]]

local dir = arg[1] or "host"

local layer_of = {
  server = "engine", rules = "engine", engine = "engine", engine_int = "engine",
  room = "engine", sync = "engine", timer = "engine", idle = "engine", router = "engine",
  bridge = "rules", lua_api = "rules", lua_core = "rules", lua_wait = "rules",
  lua_proxy = "rules", lua_store = "rules", lua_admin = "rules",
  net = "transports", headless = "transports", net_ws = "transports", net_http = "transports",
  net_hdrs = "transports", net_addr = "transports", net_budget = "transports", net_fd = "transports",
  net_idle = "transports",
  net_int = "transports",
  uplink = "features", shard = "features", cluster = "features", cluster_link = "features", cluster_lua = "features",
  relay_id = "features", reload = "features", fetch = "features",
  fetch_http = "features", fetch_ws = "features", fetch_lua = "features", fetch_url = "features",
  lua_jwt = "features",
  main = "top", cli = "top", serve = "top",
  storage = "storage", storage_memory = "storage", storage_sqlite = "storage",
  storage_cache = "storage", storage_memtree = "storage",
}
-- The stores (storage*): below the engine, which calls them through
-- storage.h. The ones whose backend waits for I/O report back and wait
-- (timers, the loop's fd watches, calls into Lua) through the lr_store_host
-- the engine binds, so none of them includes a header above the base.
for _, m in ipairs { "storage_lua", "storage_postgres", "storage_postgres_conn", "storage_postgres_lease" } do
  layer_of[m] = "storage"
end
local rank = { base = 1, storage = 1, engine = 2, rules = 3, transports = 3, features = 4, top = 5 }
local checked = { storage = true, engine = true, rules = true, transports = true, features = true }

local function layer(m) return layer_of[m] or "base" end

-- Files of dir (not recursive).
local files = {}
local p = assert(io.popen('ls "' .. dir .. '"'))
for f in p:lines() do
  if f:match("%.[ch]$") then files[#files + 1] = f end
end
p:close()

local has_c = {}
for _, f in ipairs(files) do
  local base = f:match("^(.-)%.c$")
  if base then has_c[base] = true end
end
local function module_of(f) -- x_int.h (what x's files share) is x's too
  return (f:gsub("%.[ch]$", ""):gsub("_int$", ""))
end

-- Module graph: edges[a][b] = "file:line" of the first include that makes it.
local edges, problems = {}, {}
for _, f in ipairs(files) do
  local a = module_of(f)
  edges[a] = edges[a] or {}
  local n = 0
  for line in io.lines(dir .. "/" .. f) do
    n = n + 1
    local inc = line:match('^%s*#%s*include%s+"([^"]+)"')
    if inc and not inc:find("/") and inc:match("%.h$") then
      local b = module_of(inc)
      if b ~= a then
        edges[a][b] = edges[a][b] or (f .. ":" .. n)
        if layer(a) == "storage" and rank[layer(b)] > rank.storage then
          problems[#problems + 1] = string.format(
            "%s:%d: storage file includes %s (layer %s): a store reaches the engine and the loop through lr_store_host",
            f, n, inc, layer(b))
        end
        if layer(a) == "engine" and rank[layer(b)] > rank.engine then
          problems[#problems + 1] = string.format(
            "%s:%d: engine file includes %s (layer %s): the engine reaches up through rules.h/server.h only",
            f, n, inc, layer(b))
        end
      end
    end
  end
end

-- Cycles among the checked layers (iterative DFS, colors).
local color, stack = {}, {}
local function dfs(a)
  color[a] = 1
  stack[#stack + 1] = a
  for b in pairs(edges[a] or {}) do
    if checked[layer(b)] then
      if color[b] == 1 then
        local cyc, start = {}, nil
        for i, m in ipairs(stack) do
          if m == b then start = i end
          if start then cyc[#cyc + 1] = m .. " (" .. edges[m][stack[i + 1] or b] .. ")" end
        end
        local within = true -- storage.c opens the stores it parses specs for: one family
        for i = start, #stack do within = within and layer(stack[i]) == "storage" end
        if not within then
          problems[#problems + 1] = "include cycle: " .. table.concat(cyc, " -> ") .. " -> " .. b
        end
      elseif not color[b] then
        dfs(b)
      end
    end
  end
  stack[#stack] = nil
  color[a] = 2
end
local mods = {}
for m in pairs(edges) do mods[#mods + 1] = m end
table.sort(mods)
for _, m in ipairs(mods) do
  if checked[layer(m)] and not color[m] then dfs(m) end
end

local nedges = 0
for _, t in pairs(edges) do for _ in pairs(t) do nedges = nedges + 1 end end
if #problems > 0 then
  for _, s in ipairs(problems) do io.stderr:write(s, "\n") end
  os.exit(1)
end
print(string.format("include graph of %s: %d modules, %d edges, no cycle among storage, engine, rules, transports and features",
  dir, #mods, nedges))

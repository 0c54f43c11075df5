-- lunaroom.watch: `lunaroom test --watch [busted args] [paths]`, the specs
-- re-run on every save.
--
-- Owns: finding the spec files of the given paths (default spec/), which
-- files each spec uses (the room files and folders its source names, and the
-- modules those room files require), which folders to watch, one busted run
-- per save in a child process (`lunaroom test ... files`, so every run starts
-- from fresh modules and a fresh busted), and the one-line summary.
-- Must not: poll the file system (it sleeps in the watcher's wait: inotify),
-- run specs in this process, or be reachable from room scripts.
--
-- Which specs a save re-runs: a saved spec file runs alone; a saved room file
-- or module runs the specs that use it (a spec "uses" a file whose path,
-- relative to the working directory, appears in its source, and the modules
-- that file requires, transitively); anything else, or a file no spec is
-- known to use, runs all of them. Ctrl-C ends it (SIGINT: the default
-- action, for this process and the running child alike).

local reload_c = require "lunaroom.reload_c"
local lfs = require "lfs"

local M = {}

local function norm(p)
  p = p:gsub("/+", "/"):gsub("/%./", "/"):gsub("^%./", "")
  if #p > 1 then p = p:gsub("/$", "") end
  return p
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function isdir(p) return lfs.attributes(p, "mode") == "directory" end
local function isfile(p) return lfs.attributes(p, "mode") == "file" end
local function dirname(p) return p:match("^(.*)/[^/]*$") or "." end

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

--- Every *_spec.lua under path (a file is itself), sorted.
local function spec_files(path, out)
  if isfile(path) then
    out[#out + 1] = norm(path)
  elseif isdir(path) then
    local names = {}
    for name in lfs.dir(path) do
      if name:sub(1, 1) ~= "." then names[#names + 1] = name end
    end
    table.sort(names)
    for _, name in ipairs(names) do
      local p = path .. "/" .. name
      if isdir(p) then
        if name ~= "node_modules" then spec_files(p, out) end
      elseif name:match("_spec%.lua$") then
        out[#out + 1] = norm(p)
      end
    end
  end
  return out
end

--- The .lua files and folders a source names in string literals
--- ("rooms/counter.lua", dir .. "/x.lua" is missed: then all specs run).
local function named_paths(src)
  local out = {}
  for q, s in src:gmatch("([\"'])(.-)%1") do
    if s:match("%.lua$") and isfile(s) then out[#out + 1] = norm(s) end
  end
  for s in src:gmatch("%[%[(.-)%]%]") do
    if s:match("^[%w_%-./]+%.lua$") and isfile(s) then out[#out + 1] = norm(s) end
  end
  return out
end

--- The modules a room file requires that exist next to it ("lib.util" ->
--- dir/lib/util.lua, as the sandbox resolves them).
local function required(file)
  local src = read(file) or ""
  local out, dir = {}, dirname(file)
  for mod in src:gmatch("require%s*%(?%s*[\"']([%w_%.%-/]+)[\"']") do
    local p = norm(dir .. "/" .. mod:gsub("%.", "/") .. ".lua")
    if isfile(p) then out[#out + 1] = p end
  end
  return out
end

--- spec -> set of files it uses (named + their requires, transitively).
local function uses_of(specs)
  local uses = {}
  for _, spec in ipairs(specs) do
    local set, todo = {}, named_paths(read(spec) or "")
    while #todo > 0 do
      local f = table.remove(todo)
      if not set[f] then
        set[f] = true
        for _, m in ipairs(required(f)) do todo[#todo + 1] = m end
      end
    end
    uses[spec] = set
  end
  return uses
end

--- Which specs to run for the changed paths: a list, or nil for all.
function M.select(specs, uses, changed)
  local is_spec, pick, any = {}, {}, false
  for _, s in ipairs(specs) do is_spec[s] = true end
  for _, c in ipairs(changed) do
    if c == "*" then return nil end
    if is_spec[c] then
      pick[c], any = true, true
    else
      local hit = false
      for _, s in ipairs(specs) do
        if uses[s][c] then pick[s], hit, any = true, true, true end
      end
      if not hit then return nil end -- cannot tell who uses it
    end
  end
  if not any then return nil end
  local out = {}
  for _, s in ipairs(specs) do if pick[s] then out[#out + 1] = s end end
  return out
end

--- Run busted on files in a child; echo its output; return the summary.
local function run(exe, lua_dir, opts, files)
  local cmd = { shq(exe), "test", "--lua-path", shq(lua_dir) }
  for _, o in ipairs(opts) do cmd[#cmd + 1] = shq(o) end
  for _, f in ipairs(files) do cmd[#cmd + 1] = shq(f) end
  local t0 = reload_c.now_ms()
  local p = assert(io.popen(table.concat(cmd, " ") .. " 2>&1", "r"))
  local counts
  for line in p:lines() do
    io.write(line, "\n")
    io.flush()
    local a, b, c, d = line:match("(%d+) success%a* / (%d+) failures? / (%d+) errors? / (%d+) pending")
    if a then counts = { tonumber(a), tonumber(b), tonumber(c), tonumber(d) } end
  end
  local ok, _, code = p:close()
  return counts, ok, code, reload_c.now_ms() - t0
end

--- main(exe, lua_dir, args): args are `lunaroom test`'s without --watch.
function M.main(exe, lua_dir, args)
  local opts, paths = {}, {}
  local takes_value = { ["-o"] = true, ["--output"] = true, ["-t"] = true, ["--tags"] = true,
    ["--exclude-tags"] = true, ["-p"] = true, ["--pattern"] = true, ["-f"] = true,
    ["--filter"] = true, ["--filter-out"] = true, ["--seed"] = true, ["-r"] = true,
    ["--run"] = true, ["-m"] = true, ["--lpath"] = true, ["-e"] = true }
  local i = 1
  while i <= #args do
    local a = args[i]
    if a:sub(1, 1) == "-" then
      opts[#opts + 1] = a
      if takes_value[a] and args[i + 1] then
        opts[#opts + 1] = args[i + 1]
        i = i + 1
      end
    else
      paths[#paths + 1] = a
    end
    i = i + 1
  end
  if #paths == 0 then paths = { "spec" } end

  local specs, uses, roots
  local function scan()
    specs = {}
    for _, p in ipairs(paths) do spec_files(p, specs) end
    uses = uses_of(specs)
    -- Watch the given folders (a file: its folder), rooms/ if there is one,
    -- and the folders of every file a spec uses.
    local dirs, seen = {}, {}
    local function add(d)
      d = norm(d)
      if d ~= "" and not seen[d] and isdir(d) then
        seen[d] = true
        dirs[#dirs + 1] = d
      end
    end
    for _, p in ipairs(paths) do add(isdir(p) and p or dirname(p)) end
    add("rooms")
    for _, s in ipairs(specs) do
      for f in pairs(uses[s]) do add(dirname(f)) end
    end
    -- Drop folders inside another watched one (watches are recursive).
    table.sort(dirs)
    roots = {}
    for _, d in ipairs(dirs) do
      local inside = false
      for _, r in ipairs(roots) do
        if d:sub(1, #r + 1) == r .. "/" then inside = true end
      end
      if not inside then roots[#roots + 1] = d end
    end
  end
  scan()
  if #specs == 0 then
    io.stderr:write("lunaroom test --watch: no *_spec.lua under ", table.concat(paths, " "), "\n")
    return 2
  end
  -- Watch from "/" with absolute roots, so paths outside the working
  -- directory work too; events come back as "/abs/path/x.lua".
  local cwd = lfs.currentdir()
  local function abs(p) return p:sub(1, 1) == "/" and p or cwd .. "/" .. p end
  local function watcher()
    local rel = {}
    for k, r in ipairs(roots) do rel[k] = abs(r):sub(2) end
    return assert(reload_c.watch("/", rel))
  end
  local w = watcher()
  local function back(p) -- "/cwd/rooms/x.lua" -> "rooms/x.lua"
    p = norm(p)
    if p:sub(1, #cwd + 1) == cwd .. "/" then return p:sub(#cwd + 2) end
    return p
  end

  local function once(files, why)
    local counts, ok, code, ms = run(exe, lua_dir, opts, files or specs)
    local n = files and #files or #specs
    local what = (files and (n .. " of " .. #specs) or ("all " .. n)) .. " spec file"
      .. (#specs == 1 and "" or "s")
    local res
    if counts then
      res = string.format("%d passed, %d failed, %d errors, %d pending", counts[1], counts[2],
        counts[3], counts[4])
    else
      res = ok and "ok" or ("exit " .. tostring(code))
    end
    io.write(string.format("[watch %s] %s: %s, %s (%d ms)%s\n", os.date("%H:%M:%S"),
      (ok and "PASS" or "FAIL"), what, res, ms, why and ("; saved " .. why) or ""))
    io.flush()
  end

  once(nil, nil)
  io.write("[watch] watching ", table.concat(roots, ", "), " (Ctrl-C to stop)\n")
  io.flush()
  while true do
    local changed = w:wait(-1)
    local list = {}
    for _, c in ipairs(changed) do list[#list + 1] = c == "*" and "*" or back(c) end
    if #list > 0 then
      -- A new spec or room file may change the picture: rescan each time.
      local old = table.concat(roots, "\0")
      scan()
      if table.concat(roots, "\0") ~= old then
        w:close()
        w = watcher()
      end
      local live = {}
      for _, c in ipairs(list) do
        if c == "*" or isfile(c) or not c:match("_spec%.lua$") then live[#live + 1] = c end
      end
      if #live > 0 and #specs > 0 then
        local pick = M.select(specs, uses, live)
        local names = {}
        for _, c in ipairs(live) do names[#names + 1] = c end
        once(pick, table.concat(names, ", "))
      end
    end
  end
end

return M

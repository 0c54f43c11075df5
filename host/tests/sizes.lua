--[[
sizes.lua - fails (exit 1) when a host/*.c file is over MAX_FILE_LINES lines
or a function in one is over MAX_FUNCTION_LINES lines (issue 21: a newcomer
finds each concern by file name and reads a function on one screen), unless
the allow-list below names it with why. A stale entry (its file or function
is within the limits now, or gone) fails too: the list stays true.

Owns: the two limits, the allow-list and the check `make test-c` runs.
Must not: build or run anything; it reads the .c files as text.

A function is a brace block at file level whose declarator (what stands
since the previous top-level ';' or '}') ends with ')' and has
no '=' outside parentheses: static or not, the signature on one line or
several, the '{' on the signature's last line or on its own. Its length is
its lines from the first line of the signature to the closing '}'.
Comments, string and character literals and preprocessor lines are blanked
before braces are counted. The scanner checks itself on built-in cases
first, so a change that blinds it fails here too.
Usage: lua5.4 host/tests/sizes.lua [host-dir]
]]

local MAX_FILE_LINES = 900
local MAX_FUNCTION_LINES = 80

-- Over the limits on purpose, with why.
local allow_files = {}
local allow_functions = {
  ["lpattern.c:match"] = "the port of Lua's lstrlib.c match(): kept whole so it diffs against Lua's",
}

-- src with comments blanked (line breaks kept), string and character
-- literals emptied and preprocessor lines (with their continuations)
-- dropped, so line numbers stay.
local function strip(src)
  local out, i, n, bol = {}, 1, #src, true
  while i <= n do
    local c = src:sub(i, i)
    if bol and c == "#" then
      repeat
        local e = src:find("\n", i, true) or n + 1
        local cont = src:sub(i, e - 1):find("\\%s*$") ~= nil
        if e <= n then out[#out + 1] = "\n" end
        i = e + 1
      until not cont or i > n
    elseif c == "/" and src:sub(i + 1, i + 1) == "*" then
      local e = src:find("*/", i + 2, true) or n - 1
      out[#out + 1] = " " .. src:sub(i, e + 1):gsub("[^\n]", "")
      i = e + 2
    elseif c == "/" and src:sub(i + 1, i + 1) == "/" then
      i = src:find("\n", i, true) or n + 1
    elseif c == '"' or c == "'" then
      local j = i + 1
      while j <= n do
        local d = src:sub(j, j)
        if d == "\\" then
          j = j + 2
        elseif d == c or d == "\n" then
          break
        else
          j = j + 1
        end
      end
      out[#out + 1] = c .. c
      i = src:sub(j, j) == "\n" and j or j + 1 -- an unterminated one ends at the line's end
      bol = false
    else
      out[#out + 1] = c
      if c == "\n" then
        bol = true
      elseif not c:find("%s") then
        bol = false
      end
      i = i + 1
    end
  end
  return table.concat(out)
end

-- The declarator of a block that is a function definition: its name, or nil.
local function function_name(decl)
  decl = decl:gsub("%s+$", "")
  if decl:sub(-1) ~= ")" then return nil end
  local flat = decl:gsub("%b()", "()") -- what stands outside the parentheses
  if flat:find("=", 1, true) then return nil end
  return flat:match("([%a_][%w_]*)%s*%(%)")
end

-- The functions of C source src: { {name, first, last}, ... }.
local function functions(src)
  local text = strip(src)
  local fns, depth, line = {}, 0, 1
  local decl, decl_line, cur = {}, nil, nil
  for c in text:gmatch(".") do
    if depth == 0 then
      if c == "{" then
        local name = function_name(table.concat(decl))
        cur = name and { name = name, first = decl_line } or nil
        depth, decl, decl_line = 1, {}, nil
      elseif c == ";" or c == "}" then
        decl, decl_line = {}, nil
      else
        decl[#decl + 1] = c
        if not decl_line and not c:find("%s") then decl_line = line end
      end
    elseif c == "{" then
      depth = depth + 1
    elseif c == "}" then
      depth = depth - 1
      if depth == 0 and cur then
        cur.last = line
        fns[#fns + 1] = cur
        cur = nil
      end
    end
    if c == "\n" then line = line + 1 end
  end
  return fns
end

-- ---- the scanner checks itself

local function lines(n, s) return string.rep(s or "  x++;\n", n) end
local sample = table.concat {
  "/* a comment { with braces } */\n",
  "#define BLOCK(x) do { \\\n  x; } while (0)\n",
  "static const char *const names[] = {\n", lines(100, '  "a{",\n'), "};\n",
  "typedef struct big {\n", lines(90, "  int f;\n"), "} big;\n",
  "static int long_one(int a,\n                    int b) {\n", lines(77), "  return a;\n}\n",
  "int just_fits(void)\n{\n", lines(77), "}\n",
  "static void tricky(void) {\n  const char *s = \"{{\\\"{\"; char c = '}';\n",
  "  /* } */ // {\n#ifdef X\n  s++;\n#endif\n  (void)s, (void)c;\n}\n",
  "const char *\nlong_two(const char *s, int (*cb)(int))\n{\n", lines(81), "}\n",
}
do
  local want, got = { long_one = 81, just_fits = 80, tricky = 8, long_two = 85 }, {}
  for _, f in ipairs(functions(sample)) do got[f.name] = f.last - f.first + 1 end
  local ok = true
  for k, v in pairs(want) do ok = ok and got[k] == v end
  for k in pairs(got) do ok = ok and want[k] ~= nil end
  if not ok then
    local s = {}
    for k, v in pairs(got) do s[#s + 1] = k .. "=" .. v end
    table.sort(s)
    io.stderr:write("sizes.lua: the scanner fails its own cases (found ", table.concat(s, " "),
      "): fix it before trusting it\n")
    os.exit(1)
  end
end

-- ---- the check

local dir = arg[1] or "host"
local problems, seen = {}, {}
local p = assert(io.popen('ls "' .. dir .. '"'))
local names = {}
for f in p:lines() do
  if f:match("%.c$") then names[#names + 1] = f end
end
p:close()
local nfns = 0
for _, f in ipairs(names) do
  local fh = assert(io.open(dir .. "/" .. f, "rb"))
  local src = fh:read("a")
  fh:close()
  local _, n = src:gsub("\n", "")
  if n > MAX_FILE_LINES then
    if allow_files[f] then
      seen[f] = true
    else
      problems[#problems + 1] = string.format(
        "%s/%s: %d lines (limit %d): split it by concern, or allow it in host/tests/sizes.lua with why",
        dir, f, n, MAX_FILE_LINES)
    end
  end
  for _, fn in ipairs(functions(src)) do
    nfns = nfns + 1
    local len, key = fn.last - fn.first + 1, f .. ":" .. fn.name
    if len > MAX_FUNCTION_LINES then
      if allow_functions[key] then
        seen[key] = true
      else
        problems[#problems + 1] = string.format(
          "%s/%s:%d: %s() is %d lines (limit %d): split it in steps, or allow it in host/tests/sizes.lua with why",
          dir, f, fn.first, fn.name, len, MAX_FUNCTION_LINES)
      end
    end
  end
end
for _, list in ipairs { allow_files, allow_functions } do
  for k in pairs(list) do
    if not seen[k] then
      problems[#problems + 1] = string.format(
        "host/tests/sizes.lua: allow-list entry %s is within the limits now (or gone): remove it", k)
    end
  end
end

if #problems > 0 then
  table.sort(problems)
  for _, s in ipairs(problems) do io.stderr:write(s, "\n") end
  os.exit(1)
end
print(string.format("sizes of %s: %d files, %d functions, none over %d / %d lines but the allowed",
  dir, #names, nfns, MAX_FILE_LINES, MAX_FUNCTION_LINES))

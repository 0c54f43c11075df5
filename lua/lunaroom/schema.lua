-- lunaroom/schema.lua: the validation library exposed to room authors as `lr.v`
-- (Lunaroom's replacement for zod). It owns schema construction, parsing of
-- decoded JSON values into validated copies, and zod-shaped error issues.
-- It must not touch io, os, debug or load, nor require anything: it runs inside
-- the room sandbox and is pure Lua over plain values.
--
-- Conventions worth knowing:
-- * parse() never mutates its input. Objects and arrays come back as NEW tables
--   (unknown object keys stripped unless :strict()), marked with a metatable
--   whose `__jsontype` is "object" or "array", so an empty result still
--   re-encodes as `{}` or `[]`. Scalars and v.any() values come back as given,
--   except that integer schemas turn floats like 3.0 into the Lua integer 3.
-- * Array indices in issue paths are 0-BASED (`players.0.x`), because the wire
--   is JSON and clients read these paths as JavaScript.
-- * Object fields are checked in sorted key order (a Lua table constructor has
--   no declaration order), so the first issue, and hence err.message, is
--   deterministic.
-- * A Lua table is an array if its metatable says `__jsontype = "array"` or it
--   is a non-empty sequence (keys exactly 1..n); `__jsontype = "object"` or any
--   other key makes it an object; an unmarked empty table is both.

local type, next, ipairs, tostring, tonumber = type, next, ipairs, tostring, tonumber
local error, pcall, rawget, rawequal = error, pcall, rawget, rawequal
local getmetatable, setmetatable = getmetatable, setmetatable
local mtype, floor, huge, tointeger = math.type, math.floor, math.huge, math.tointeger
local sfind, sformat = string.find, string.format
local concat, sort = table.concat, table.sort
local utf8len = utf8 and utf8.len

local v = {}

local Schema = {}            -- methods shared by every schema (the metatable)
Schema.__index = Schema

local ARRAY_MT = { __jsontype = "array" }
local OBJECT_MT = { __jsontype = "object" }
local ERROR_MT = { __tostring = function(e) return e.message end }

local NULL = {}              -- the host's JSON null sentinel; see v.set_null

---------------------------------------------------------------------------
-- Helpers
---------------------------------------------------------------------------

-- "array", "object" or "empty" for a table (see the conventions above).
local function json_kind(t)
  local mt = getmetatable(t)
  if type(mt) == "table" then
    local j = rawget(mt, "__jsontype")
    if j == "array" or j == "object" then return j end
  end
  local n, max = 0, 0
  for k in next, t do
    if mtype(k) ~= "integer" or k < 1 then return "object" end
    n = n + 1
    if k > max then max = k end
  end
  if n == 0 then return "empty" end
  return max == n and "array" or "object"
end

-- The type name of a value as it appears in issues (`received`).
local function type_name(x)
  if x == nil then return "undefined" end
  if rawequal(x, NULL) then return "null" end
  local t = type(x)
  if t == "table" then
    return json_kind(x) == "array" and "array" or "object"
  end
  return t
end

-- Numbers the way JavaScript prints them (1000, 0.5, not 1000.0).
local function fmt_num(n)
  if mtype(n) == "integer" then return tostring(n) end
  if n ~= n then return "NaN" end
  if n == huge then return "Infinity" end
  if n == -huge then return "-Infinity" end
  if n == floor(n) and n > -2^53 and n < 2^53 then return sformat("%d", n) end
  for p = 1, 17 do
    local s = sformat("%." .. p .. "g", n)
    if tonumber(s) == n then return s end
  end
  return tostring(n)
end

local function fmt(x)
  if type(x) == "number" then return fmt_num(x) end
  if type(x) == "table" and not rawequal(x, NULL) then return "{...}" end
  if rawequal(x, NULL) then return "null" end
  return tostring(x)
end

local function is_finite(x)
  return x == x and x ~= huge and x ~= -huge
end

local function deep_copy(x, seen)
  if type(x) ~= "table" then return x end
  seen = seen or {}
  if seen[x] then return seen[x] end
  local c = {}
  seen[x] = c
  for k, val in next, x do c[deep_copy(k, seen)] = deep_copy(val, seen) end
  return setmetatable(c, getmetatable(x))
end

local function sorted_keys(t)
  local keys = {}
  for k in next, t do keys[#keys + 1] = k end
  sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "string" or type(a) == "number") then
      return a < b
    end
    return type(a) < type(b)
  end)
  return keys
end

-- A new schema of the given kind.
local function new(kind, fields)
  fields = fields or {}
  fields.kind = kind
  return setmetatable(fields, Schema)
end

-- A copy of s with one field changed: modifiers never mutate.
local function derive(s, key, value)
  local c = {}
  for k, val in next, s do c[k] = val end
  c[key] = value
  return setmetatable(c, Schema)
end

local function check_schema(x, what)
  if getmetatable(x) ~= Schema then
    error(what .. " must be a schema (got " .. type(x) .. ")", 3)
  end
end

---------------------------------------------------------------------------
-- Validation core. ctx = { path = {...}, depth = n, issues = {...} or nil
-- until the first issue }
---------------------------------------------------------------------------

local function add_issue(ctx, code, message, extra)
  local path = setmetatable({}, ARRAY_MT)
  for i = 1, ctx.depth do path[i] = ctx.path[i] end
  local issue = { code = code, message = message, path = path }
  if extra then
    for k, val in next, extra do issue[k] = val end
  end
  local issues = ctx.issues
  if not issues then
    issues = {}
    ctx.issues = issues
  end
  issues[#issues + 1] = issue
end

local function push(ctx, key)
  ctx.depth = ctx.depth + 1
  ctx.path[ctx.depth] = key
end

local function pop(ctx)
  ctx.path[ctx.depth] = nil
  ctx.depth = ctx.depth - 1
end

-- The `expected` type name of a schema, for invalid_type issues.
local function expected_of(s)
  local k = s.kind
  if k == "number" then return s.is_int and "integer" or "number" end
  if k == "enum" then
    local t = type_name(s.values[1])
    for i = 2, #s.values do
      if type_name(s.values[i]) ~= t then return "enum" end
    end
    return t
  end
  if k == "literal" then return type_name(s.value) end
  if k == "union" then
    local names = {}
    for i, o in ipairs(s.options) do names[i] = expected_of(o) end
    return concat(names, "|")
  end
  return k
end

local check                  -- forward declaration: check(s, x, ctx) -> output
local KIND = {}              -- kind -> function(s, x, ctx) -> output

local function bad_type(s, x, ctx, message)
  add_issue(ctx, "invalid_type", message,
    { expected = expected_of(s), received = type_name(x) })
end

-- Length bounds shared by strings and arrays.
local function check_length(s, len, ctx, what)
  if s.len and len ~= s.len then
    add_issue(ctx, len < s.len and "too_small" or "too_big",
      "must have length " .. fmt_num(s.len),
      { minimum = len < s.len and s.len or nil, maximum = len > s.len and s.len or nil,
        exact = true, inclusive = true, type = what })
  end
  if s.lo and len < s.lo then
    add_issue(ctx, "too_small", "must have length >= " .. fmt_num(s.lo),
      { minimum = s.lo, inclusive = true, exact = false, type = what })
  end
  if s.hi and len > s.hi then
    add_issue(ctx, "too_big", "must have length <= " .. fmt_num(s.hi),
      { maximum = s.hi, inclusive = true, exact = false, type = what })
  end
end

function KIND.number(s, x, ctx)
  if type(x) ~= "number" then
    return bad_type(s, x, ctx, s.is_int and "must be an integer" or "must be a number")
  end
  if x ~= x or x == huge or x == -huge then -- not is_finite(x), without the call
    return add_issue(ctx, "not_finite", "must be a finite number")
  end
  if s.is_int then
    if x ~= floor(x) then
      add_issue(ctx, "invalid_type", "must be an integer",
        { expected = "integer", received = "number" })
    else
      x = tointeger(x) or x
    end
  end
  if s.lo and x < s.lo then
    add_issue(ctx, "too_small", "must be >= " .. fmt_num(s.lo),
      { minimum = s.lo, inclusive = true, exact = false, type = "number" })
  end
  if s.hi and x > s.hi then
    add_issue(ctx, "too_big", "must be <= " .. fmt_num(s.hi),
      { maximum = s.hi, inclusive = true, exact = false, type = "number" })
  end
  return x
end

function KIND.string(s, x, ctx)
  if type(x) ~= "string" then return bad_type(s, x, ctx, "must be a string") end
  check_length(s, utf8len and utf8len(x) or #x, ctx, "string")
  if s.pat and not sfind(x, s.pat) then
    add_issue(ctx, "invalid_string", "must match pattern " .. s.pat,
      { validation = "regex", pattern = s.pat })
  end
  return x
end

function KIND.boolean(s, x, ctx)
  if type(x) ~= "boolean" then return bad_type(s, x, ctx, "must be a boolean") end
  return x
end

function KIND.any(_, x)
  return x
end

function KIND.enum(s, x, ctx)
  for i = 1, #s.values do
    if s.values[i] == x then return x end
  end
  local shown, shown_raw = {}, {}
  for i, val in ipairs(s.values) do shown[i], shown_raw[i] = fmt(val), val end
  add_issue(ctx, "invalid_enum_value", "must be one of: " .. concat(shown, ", "),
    { options = setmetatable(shown_raw, ARRAY_MT), received = x })
end

function KIND.literal(s, x, ctx)
  if x == s.value then return x end
  add_issue(ctx, "invalid_literal", "must equal " .. fmt(s.value),
    { expected = s.value, received = x })
end

function KIND.array(s, x, ctx)
  if type(x) ~= "table" or rawequal(x, NULL) or json_kind(x) == "object" then
    return bad_type(s, x, ctx, "must be an array")
  end
  local n = #x
  check_length(s, n, ctx, "array")
  local out = setmetatable({}, ARRAY_MT)
  for i = 1, n do
    push(ctx, i - 1)
    out[i] = check(s.item, x[i], ctx)
    pop(ctx)
  end
  return out
end

function KIND.object(s, x, ctx)
  if type(x) ~= "table" or rawequal(x, NULL) or json_kind(x) == "array" then
    return bad_type(s, x, ctx, "must be an object")
  end
  local out = setmetatable({}, OBJECT_MT)
  -- Every field of every action packet passes here: push/pop inlined, and
  -- s.keys walked as the sequence it is (sorted_keys), without ipairs.
  local keys, fields, path = s.keys, s.fields, ctx.path
  local depth = ctx.depth + 1
  for i = 1, #keys do
    local key = keys[i]
    ctx.depth = depth
    path[depth] = key
    out[key] = check(fields[key], x[key], ctx)
    path[depth] = nil
    ctx.depth = depth - 1
  end
  if s.is_strict then
    local unknown = {}
    for k in next, x do
      if type(k) ~= "string" or s.fields[k] == nil then unknown[k] = true end
    end
    for _, k in ipairs(sorted_keys(unknown)) do
      add_issue(ctx, "unrecognized_keys", "unknown key: " .. tostring(k),
        { keys = setmetatable({ k }, ARRAY_MT) })
    end
  end
  return out
end

-- A union option "matched the shape" unless it failed at the union's own path
-- with a type-level code; such failures are reported as they are (zod's
-- "dirty" result), otherwise one invalid_union issue is added.
local TYPE_LEVEL = {
  invalid_type = true, invalid_literal = true, invalid_enum_value = true, not_finite = true,
}

function KIND.union(s, x, ctx)
  local saved, errors, dirty = ctx.issues, {}, nil
  for i, option in ipairs(s.options) do
    ctx.issues = setmetatable({}, ARRAY_MT)
    local out = check(option, x, ctx)
    local issues = ctx.issues
    if #issues == 0 then
      ctx.issues = saved
      return out
    end
    errors[i] = issues
    if not dirty then
      local shape_ok = true
      for _, issue in ipairs(issues) do
        if #issue.path == ctx.depth and TYPE_LEVEL[issue.code] then shape_ok = false break end
      end
      if shape_ok then dirty = issues end
    end
  end
  ctx.issues = saved
  if dirty then
    if not saved then
      saved = {}
      ctx.issues = saved
    end
    for _, issue in ipairs(dirty) do saved[#saved + 1] = issue end
    return
  end
  local names = {}
  for i, option in ipairs(s.options) do names[i] = option:describe() end
  add_issue(ctx, "invalid_union", "must match one of: " .. concat(names, ", "),
    { received = type_name(x), unionErrors = errors })
end

function check(s, x, ctx)
  if x == nil then
    if s.has_def then
      x = deep_copy(s.def)
    elseif s.opt or s.kind == "any" then
      return nil
    else
      return bad_type(s, x, ctx, "is required")
    end
  end
  return KIND[s.kind](s, x, ctx)
end

-- The fast path of parse: the same checks as check() in the same order,
-- without the issue list and the path (no ctx), answering FAIL at the first
-- issue check() would add; parse then runs check() for the issues. Every
-- action packet with a schema passes here (a move's two bounded numbers
-- cost 15.5k instructions through check(): ctx, path and issue bookkeeping).
-- It must accept exactly what check() accepts and return the same value.
local FAIL = {}
local FAST = {}
local fast -- forward declaration: fast(s, x) -> output or FAIL

function FAST.number(s, x)
  if type(x) ~= "number" or x ~= x or x == huge or x == -huge then return FAIL end
  if s.is_int then
    if x ~= floor(x) then return FAIL end
    x = tointeger(x) or x
  end
  if (s.lo and x < s.lo) or (s.hi and x > s.hi) then return FAIL end
  return x
end

function FAST.string(s, x)
  if type(x) ~= "string" then return FAIL end
  if s.len or s.lo or s.hi then
    local len = utf8len and utf8len(x) or #x
    if (s.len and len ~= s.len) or (s.lo and len < s.lo) or (s.hi and len > s.hi) then return FAIL end
  end
  if s.pat and not sfind(x, s.pat) then return FAIL end
  return x
end

function FAST.boolean(_, x)
  if type(x) ~= "boolean" then return FAIL end
  return x
end

function FAST.any(_, x)
  return x
end

function FAST.enum(s, x)
  local values = s.values
  for i = 1, #values do
    if values[i] == x then return x end
  end
  return FAIL
end

function FAST.literal(s, x)
  if x == s.value then return x end
  return FAIL
end

function FAST.array(s, x)
  if type(x) ~= "table" or rawequal(x, NULL) or json_kind(x) == "object" then return FAIL end
  local n = #x
  if (s.len and n ~= s.len) or (s.lo and n < s.lo) or (s.hi and n > s.hi) then return FAIL end
  local out, item = setmetatable({}, ARRAY_MT), s.item
  for i = 1, n do
    local r = fast(item, x[i])
    if r == FAIL then return FAIL end
    out[i] = r
  end
  return out
end

function FAST.object(s, x)
  if type(x) ~= "table" or rawequal(x, NULL) or json_kind(x) == "array" then return FAIL end
  local out = setmetatable({}, OBJECT_MT)
  local keys, fields = s.keys, s.fields
  for i = 1, #keys do
    local key = keys[i]
    local r = fast(fields[key], x[key])
    if r == FAIL then return FAIL end
    out[key] = r
  end
  if s.is_strict then
    for k in next, x do
      if type(k) ~= "string" or fields[k] == nil then return FAIL end
    end
  end
  return out
end

function FAST.union(s, x)
  local options = s.options
  for i = 1, #options do
    local r = fast(options[i], x)
    if r ~= FAIL then return r end
  end
  return FAIL
end

function fast(s, x)
  if x == nil then
    if s.has_def then
      x = deep_copy(s.def)
    elseif s.opt or s.kind == "any" then
      return nil
    else
      return FAIL
    end
  end
  return FAST[s.kind](s, x)
end

---------------------------------------------------------------------------
-- Constructors
---------------------------------------------------------------------------

--- A number (Lua integer or float), finite: NaN and +-inf are rejected.
function v.number() return new("number") end

--- A number with an integer value (3 and 3.0 both pass; output is the integer 3).
function v.integer() return new("number", { is_int = true }) end

--- A string.
function v.string() return new("string") end

--- A boolean.
function v.boolean() return new("boolean") end

--- Anything, including nil; returned as given (not copied).
function v.any() return new("any") end

--- One of the listed values (strings or numbers): v.enum{"red", "blue"}.
function v.enum(values)
  if type(values) ~= "table" or #values == 0 then
    error("v.enum: expected a non-empty list of values", 2)
  end
  local copy = {}
  for i = 1, #values do
    local t = type(values[i])
    if t ~= "string" and t ~= "number" then
      error("v.enum: values must be strings or numbers (got " .. t .. ")", 2)
    end
    copy[i] = values[i]
  end
  return new("enum", { values = copy })
end

--- Exactly this value (string, number or boolean).
function v.literal(x)
  local t = type(x)
  if t ~= "string" and t ~= "number" and t ~= "boolean" then
    error("v.literal: expected a string, number or boolean (got " .. t .. ")", 2)
  end
  return new("literal", { value = x })
end

--- An array whose every item matches item.
function v.array(item)
  check_schema(item, "v.array: the item")
  return new("array", { item = item })
end

--- An object with these fields; unknown keys are stripped (see :strict()).
function v.object(shape)
  if type(shape) ~= "table" then error("v.object: expected a table of field schemas", 2) end
  local fields = {}
  for k, s in next, shape do
    if type(k) ~= "string" then error("v.object: field names must be strings", 2) end
    check_schema(s, "v.object: field '" .. k .. "'")
    fields[k] = s
  end
  return new("object", { fields = fields, keys = sorted_keys(fields) })
end

--- The first of these schemas that accepts the value: v.union{v.number(), v.string()}.
function v.union(options)
  if type(options) ~= "table" or #options == 0 then
    error("v.union: expected a non-empty list of schemas", 2)
  end
  local copy = {}
  for i = 1, #options do
    check_schema(options[i], "v.union: option " .. i)
    copy[i] = options[i]
  end
  return new("union", { options = copy })
end

--- True if x was made by this library.
function v.is_schema(x)
  return type(x) == "table" and getmetatable(x) == Schema
end

--- Tell the library which value stands for JSON null (the host calls this once;
-- it only changes the `received` type name, "null", in issues).
-- The fast path in C (host/lua_schema.c: FAST's checks over the same
-- tables, about a tenth of the cost), once the host gave it (v.set_fast):
-- cfast(s, x) -> true, out | false (refused) | nil (a schema it leaves to FAST).
local schema_fast, cfast

function v.set_null(sentinel)
  NULL = sentinel == nil and {} or sentinel
  cfast = schema_fast and schema_fast(ARRAY_MT, OBJECT_MT, NULL)
end

--- The host's fast path (core.schema_fast: factory(ARRAY_MT, OBJECT_MT,
--- NULL) -> cfast); nil goes back to the Lua one alone.
function v.set_fast(factory)
  schema_fast = factory
  cfast = schema_fast and schema_fast(ARRAY_MT, OBJECT_MT, NULL)
end

---------------------------------------------------------------------------
-- Modifiers: each returns a NEW schema.
---------------------------------------------------------------------------

local function need(s, kinds, method)
  if not kinds[s.kind] then
    error(method .. "() does not apply to " .. s.kind .. " schemas", 3)
  end
end

local function need_count(n, method)
  if type(n) ~= "number" or not is_finite(n) then
    error(method .. "() expects a finite number", 3)
  end
end

local BOUNDED = { number = true, string = true, array = true }
local SIZED = { string = true, array = true }

--- Lower bound: the value for numbers, the length for strings and arrays.
function Schema:min(n)
  need(self, BOUNDED, "min"); need_count(n, "min")
  return derive(self, "lo", n)
end

--- Upper bound: the value for numbers, the length for strings and arrays.
function Schema:max(n)
  need(self, BOUNDED, "max"); need_count(n, "max")
  return derive(self, "hi", n)
end

--- Exact length of a string (in UTF-8 characters) or an array.
function Schema:length(n)
  need(self, SIZED, "length"); need_count(n, "length")
  return derive(self, "len", n)
end

--- Numbers only: the value must be an integer.
function Schema:int()
  need(self, { number = true }, "int")
  return derive(self, "is_int", true)
end

--- Strings only: string.find(value, p) must succeed (Lua pattern, unanchored).
function Schema:pattern(p)
  need(self, { string = true }, "pattern")
  if type(p) ~= "string" or not pcall(sfind, "", p) then
    error("pattern() expects a valid Lua pattern", 2)
  end
  return derive(self, "pat", p)
end

--- Objects only: unknown keys are errors instead of being stripped.
function Schema:strict()
  need(self, { object = true }, "strict")
  return derive(self, "is_strict", true)
end

--- nil is accepted (and stays nil).
function Schema:optional()
  return derive(self, "opt", true)
end

--- nil is replaced by (a deep copy of) x, which is then validated.
function Schema:default(x)
  if x == nil then error("default() expects a value (use optional() for nil)", 2) end
  local s = derive(self, "def", deep_copy(x))
  s.has_def = true
  return s
end

---------------------------------------------------------------------------
-- Parsing and description
---------------------------------------------------------------------------

--- Validate value: returns true, parsed or false, err where err is
-- { message = "<dotted path>: <first issue message>", issues = {...} }.
-- check() with the issue list: true, out or false, err.
local function parse_slow(self, value)
  -- The issue list is made by the first issue and marked as an array when
  -- it is handed out.
  local ctx = { path = {}, depth = 0 }
  local out = check(self, value, ctx)
  local issues = ctx.issues
  local first = issues and issues[1]
  if not first then return true, out end
  local message = first.message
  if #first.path > 0 then message = concat(first.path, ".") .. ": " .. message end
  return false, setmetatable({ message = message, issues = setmetatable(issues, ARRAY_MT) }, ERROR_MT)
end

-- parse's body: owned is cfast's third argument (see v._parse_owned).
local function parse(s, value, owned)
  if cfast then
    local ok, out = cfast(s, value, owned)
    if ok then return true, out end
    if ok == false then return parse_slow(s, value) end -- invalid: again, for the issues
  end
  local out = fast(s, value)
  if out ~= FAIL then return true, out end
  return parse_slow(s, value) -- invalid: again, for the issues
end

function Schema:parse(value)
  if getmetatable(self) ~= Schema then
    error("parse must be called as schema:parse(value)", 2)
  end
  return parse(self, value, false)
end

--- parse for the runtime, of a value nobody else holds (an action's value,
--- fresh off the wire, that no guard saw): an object schema's C fast path
--- returns that table itself (unknown keys cleared) instead of a copy.
function v._parse_owned(s, value)
  if getmetatable(s) ~= Schema then return s:parse(value) end
  return parse(s, value, true)
end

--- parse without the fast path (specs compare the two).
function v._parse_slow(s, value)
  return parse_slow(s, value)
end

--- The fast paths alone (specs compare them): the Lua one (true, out |
--- false) and the C one (true, out | false | nil: left to the Lua one;
--- nil, "none" without the host).
function v._fast_lua(s, value)
  local out = fast(s, value)
  if out == FAIL then return false end
  return true, out
end
function v._fast_c(s, value)
  if not cfast then return nil, "none" end
  return cfast(s, value)
end

local function length_suffix(s)
  if s.len then return "[" .. fmt_num(s.len) .. "]" end
  if s.lo or s.hi then
    return "[" .. (s.lo and fmt_num(s.lo) or "") .. ".." .. (s.hi and fmt_num(s.hi) or "") .. "]"
  end
  return ""
end

--- A short one-line description for logs, e.g. object{x:number<=1000,y:number}.
function Schema:describe()
  local k, d = self.kind, nil
  if k == "number" then
    d = self.is_int and "integer" or "number"
    if self.lo then d = d .. ">=" .. fmt_num(self.lo) end
    if self.hi then d = d .. "<=" .. fmt_num(self.hi) end
  elseif k == "string" then
    d = "string" .. length_suffix(self)
    if self.pat then d = d .. "/" .. self.pat .. "/" end
  elseif k == "enum" or k == "literal" then
    local shown = {}
    for i, val in ipairs(self.values or { self.value }) do shown[i] = fmt(val) end
    d = k .. "(" .. concat(shown, "|") .. ")"
  elseif k == "array" then
    d = "array<" .. self.item:describe() .. ">" .. length_suffix(self)
  elseif k == "object" then
    local parts = {}
    for i, key in ipairs(self.keys) do parts[i] = key .. ":" .. self.fields[key]:describe() end
    d = "object{" .. concat(parts, ",") .. "}" .. (self.is_strict and ":strict" or "")
  elseif k == "union" then
    local parts = {}
    for i, o in ipairs(self.options) do parts[i] = o:describe() end
    d = concat(parts, "|")
    if self.has_def or self.opt then d = "(" .. d .. ")" end
  else
    d = k
  end
  if self.has_def then return d .. "=" .. fmt(self.def) end
  if self.opt then return d .. "?" end
  return d
end

Schema.__tostring = Schema.describe

return v

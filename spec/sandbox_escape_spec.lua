-- Room code cannot reach or change what the host or another room uses
-- (issue "Hardening", item 1): every room runs in the one lua_State, so a
-- writable host table is a way into every other room.
local sandbox = require "lunaroom.sandbox"
local testing = require "lunaroom.testing"

-- The walker runs inside a room handler: from its _ENV and the handler's
-- arguments it follows every value room code can reach (raw next, pairs and
-- the state pairs hands out, getmetatable, the string metatable) and, in
-- write mode, tries to write a probe key into every table it found.
local WALKER = [==[
local function walk(roots, probe, write)
  local seen, queue, writable, found = {}, {}, {}, {}
  local function push(v, path)
    if type(v) == "string" then
      v, path = getmetatable(v), "<string metatable>"
    end
    local tv = type(v)
    if (tv == "table" or tv == "userdata") and not seen[v] then
      seen[v] = path
      queue[#queue + 1] = v
    end
  end
  for name, v in pairs(roots) do push(v, name) end
  local i = 1
  while i <= #queue do
    local x = queue[i]
    i = i + 1
    local path = seen[x]
    local mt = getmetatable(x)
    if type(mt) == "table" then push(mt, path .. "<mt>") end
    if type(x) == "table" then
      for k, v in next, x do push(k, path .. "<key>"); push(v, path .. "." .. tostring(k)) end
      for j = 1, 4 do push(rawget(x, j), path .. "[" .. j .. "]") end
    end
    local ok, f, s, c = pcall(pairs, x)
    if ok then
      push(s, path .. "<pairs state>"); push(c, path .. "<pairs control>")
      pcall(function()
        local n = 0
        for k, v in f, s, c do
          push(k, path .. "<key>"); push(v, path .. "." .. tostring(k))
          n = n + 1
          if n > 5000 then break end
        end
      end)
    end
    if type(x) == "table" then
      if write then
        local w1 = pcall(function() x[probe] = true end)
        local w2 = pcall(rawset, x, probe, true)
        if w1 or w2 then writable[#writable + 1] = path end
      elseif rawget(x, probe) ~= nil or select(2, pcall(function() return x[probe] end)) == true then
        found[#found + 1] = path
      end
    end
  end
  return writable, found, #queue
end
]==]

local function room_src(path, extra)
  return WALKER .. [[
local lr = require "lunaroom"
local schema = require "lunaroom.schema"
local env = _ENV
return lr.room { path = "]] .. path .. [[", budget = 500000000, state = { n = 0, list = lr.sync { a = 1 } },
  actions = {
    walk = function(room, _, v, conn)
      local roots = { env = env, room = room, conn = conn, value = v, lr = lr, schema = schema,
        roomenv = room.env, storage = room.storage, parties = room.parties,
        stub = room.parties.main:get("other"), str = "" }
      local writable, found, n = walk(roots, v.probe, v.write)
      conn:send({ type = "walk", value = { writable = writable, found = found, n = n } })
    end,
    match = function(room, _, v, conn)
      conn:send({ type = "match", value = { string.match("key=val", "(%w+)=(%w+)") } })
    end,
]] .. (extra or "") .. [[
  } }
]]
end

local function load(path, extra)
  local def, err = sandbox.load_room_source(room_src(path, extra), "@" .. path .. ".lua", nil)
  assert(def, err)
  return def
end

local function walk(t, room, probe, write)
  local c = t:client { room = room, id = "walker-" .. room }
  c:clear()
  c:send("walk", { probe = probe, write = write })
  local p = c:last("walk")
  assert(p, "no walk result: " .. require("lunaroom.testing").encode(c.packets))
  c:close()
  return p.value
end

-- Host tables every room depends on (checked from the host side).
local function host_roots()
  local roots = { string = string, table = table, math = math, utf8 = utf8, coroutine = coroutine,
    os = os, strmt = getmetatable(""), _G = _G }
  for name, mod in pairs(package.loaded) do
    if name:find("^lunaroom") and name ~= "lunaroom.testing" then roots[name] = mod end
  end
  local reg = debug.getregistry()
  for k, v in pairs(reg) do
    if type(k) == "string" and k:find("^lunaroom") and k ~= "lunaroom.runtime" then roots[k] = v end
  end
  return roots
end

local function host_has(probe)
  local seen, queue, hits = {}, {}, {}
  local function push(v, path)
    if (type(v) == "table" or type(v) == "userdata") and not seen[v] then
      seen[v] = path; queue[#queue + 1] = v
    end
  end
  for k, v in pairs(host_roots()) do push(v, k) end
  local i = 1
  while i <= #queue do
    local x = queue[i]; i = i + 1
    local mt = debug.getmetatable(x)
    if mt then push(mt, seen[x] .. "<mt>") end
    if type(x) == "table" and seen[x] ~= "_G.package" and seen[x] ~= "_G" then
      if rawget(x, probe) ~= nil then hits[#hits + 1] = seen[x] end
      for k, v in next, x do push(k, seen[x]); push(v, seen[x] .. "." .. tostring(k)) end
    end
  end
  return hits
end

describe("sandbox escape", function()
  local real_match, real_find, real_mt
  before_each(function()
    real_match, real_find, real_mt = string.match, string.find, getmetatable("")
  end)

  it("pairs(string) hands out no writable table; string.match stays the host's", function()
    local attack = [[
    attack = function(room, _, v, conn)
      local got = {}
      local f, s, c = pairs(string)
      got.state_is_table = type(s) == "table"
      got.w1 = pcall(function() s.match = function() return "victim" end end)
      got.w2 = pcall(rawset, s, "match", function() return "victim" end)
      for k, fn in pairs(string) do
        if k == "match" then got.w3 = pcall(function() string[k] = function() return "victim" end end) end
      end
      got.w4 = pcall(function() local _, real = next(string); real.match = nil end)
      got.mt = getmetatable("")
      got.w5 = pcall(setmetatable, string, {})
      got.w6 = pcall(function() local mt = getmetatable(string); mt.__index.match = nil end)
      conn:send({ type = "attack", value = got })
    end,
    ]]
    local a, b = load("a", attack), load("b")
    local t = testing.room(a, { rooms = { b } })
    local c = t:client { id = "attacker" }
    c:send("attack")
    local got = c:last("attack").value
    assert.is_false(got.w1); assert.is_false(got.w2); assert.is_false(got.w3)
    assert.is_false(got.w4); assert.is_false(got.w5); assert.is_false(got.w6)
    assert.is_nil(got.mt)
    -- The host's functions and the string metatable are untouched ...
    assert.are.equal(real_match, string.match)
    assert.are.equal(real_find, string.find)
    assert.are.equal(real_mt, getmetatable(""))
    assert.are.equal(string, getmetatable("").__index)
    -- ... another room's string.match works ...
    local cb = t:client { room = "b", id = "other" }
    cb:send("match")
    assert.are.same({ "key", "val" }, cb:last("match").value)
    -- ... and ?id= sessions still resolve to their own players.
    local v1 = t:client { room = "b", id = "victim-session" }
    local v2 = t:client { room = "b", id = "someone-else" }
    assert.is_string(v1.publicId)
    assert.are_not.equal(v1.publicId, v2.publicId)
    assert.are.equal("victim-session", v1.conn.sessionId)
    assert.are.equal("someone-else", v2.conn.sessionId)
    t:close()
  end)

  it("getmetatable gives room code no host metatable, setmetatable cannot replace one", function()
    local probe = [[
    mts = function(room, _, v, conn)
      local r = {}
      r.room = getmetatable(room); r.conn = getmetatable(conn)
      r.state = getmetatable(room.list); r.array = getmetatable(v.arr)
      r.env = getmetatable(room.env); r.storage = getmetatable(room.storage)
      r.str = getmetatable("") == nil; r.lr = getmetatable(require "lunaroom")
      r.schema = getmetatable((require "lunaroom").v.string())
      r.set_room = pcall(setmetatable, room, {})
      r.set_conn = pcall(setmetatable, conn, {})
      r.set_arr = pcall(setmetatable, v.arr, nil)
      local mine = {}
      r.own = getmetatable(setmetatable({}, mine)) == mine
      for k, val in pairs(r) do if val == nil then r[k] = "nil" end end
      conn:send({ type = "mts", value = r })
    end,
    ]]
    local t = testing.room(load("a", probe))
    local c = t:client { id = "x" }
    c:send("mts", { arr = { 1, 2 } })
    local r = c:last("mts").value
    for _, k in ipairs { "room", "conn", "state", "array", "env", "storage", "lr", "schema" } do
      assert.are.equal(false, r[k], k)
    end
    assert.is_true(r.str)
    assert.is_false(r.set_room); assert.is_false(r.set_conn); assert.is_false(r.set_arr)
    assert.is_true(r.own)
    t:close()
  end)

  it("nothing reachable from a room is writable and shared with the host or another room", function()
    local a, b = load("a"), load("b")
    local t = testing.room(a, { rooms = { b } })
    local probe = "__probe_" .. tostring(os.time())
    local res = walk(t, "a", probe, true)
    -- The walk is real: it reached the room's own tables and wrote there.
    assert.is_true(res.n > 40, "walked " .. res.n)
    assert.is_true(#res.writable > 5, testing.encode(res.writable))
    -- Room b, walking everything it can reach, sees none of a's writes ...
    local seen = walk(t, "b", probe, false)
    assert.is_true(seen.n > 40)
    assert.are.same({}, seen.found)
    -- ... nor does the host in any library, lunaroom module or metatable.
    assert.are.same({}, host_has(probe))
    -- And the library views kept refusing writes.
    for _, path in ipairs(res.writable) do
      assert.is_nil(path:find("^lr"), path)
      assert.is_nil(path:find("^schema"), path)
      assert.is_nil(path:find("^env%.string"), path)
      assert.is_nil(path:find("^env%.table"), path)
    end
    t:close()
  end)
end)

-- C functions room code can call are bounded by the handler's instruction
-- budget and memory limit (issue "Hardening", item 6): the instruction hook
-- never fires inside a C function, so before, each of these held the one
-- event loop (and every room) for seconds or forever.
local sandbox = require "lunaroom.sandbox"
local testing = require "lunaroom.testing"

local function room(actions, opts)
  local src = [[
local lr = require "lunaroom"
local seen = {}
return lr.room { path = "r", budget = ]] .. ((opts or {}).budget or 5000000) ..
    ((opts or {}).memory and (", memory = " .. opts.memory) or "") .. [[,
  state = { n = 0 },
  actions = {
    seen = function(room, _, _, conn) conn:send({ type = "seen", value = seen }) end,
]] .. actions .. [[
  } }
]]
  local def, err = sandbox.load_room_source(src, "@r.lua", nil)
  assert(def, err)
  return testing.room(def)
end

-- Sends action; returns the error packet's message and the seconds it took.
local function attack(t, c, action)
  c:clear()
  local t0 = os.clock()
  c:send(action)
  local took = os.clock() - t0
  local e = c:last("error")
  return e and e.value.message, took
end

describe("bounded C functions", function()
  local t, c
  after_each(function() if t then t:close() end t = nil end)

  local function expect_stopped(action, want, max_s)
    local msg, took = attack(t, c, action)
    want = want or "instruction budget exceeded"
    assert.is_truthy(msg and msg:find(want, 1, true), action .. ": " .. tostring(msg))
    assert.are.equal(0, t.room.n, action .. " was not rolled back")
    assert.is_true(took < (max_s or 1) * testing.slowdown, action .. " took " .. took .. " s")
  end

  it("pattern matching is charged step by step (find, match, gmatch, gsub, methods)", function()
    t = room [[
    find = function(r) r.n = 1; return string.rep("a", 50000):find(".-b") end,
    method = function(r) r.n = 1; return ("a"):rep(50000):match(".-b") end,
    gsub = function(r) r.n = 1; return (("a"):rep(50000)):gsub("a-b", "") end,
    gmatch = function(r) r.n = 1; for _ in ("a"):rep(50000):gmatch("a*b") do end end,
    caught = function(r) r.n = 1; while true do pcall(string.find, ("a"):rep(50000), ".-b") end end,
    co = function(r) r.n = 1; return coroutine.wrap(function() return ("a"):rep(50000):find(".-b") end)() end,
    plain = function(r) r.n = 1; local s = ("a"):rep(1000000); for i = 1, 1000 do s:find(("a"):rep(999) .. "b", 1, true) end end,
    ok = function(r) r.n = select(2, ("a,b,c"):gsub(",", ";")) + #("k=v"):match("(%w+)=") end,
    ]]
    c = t:client { id = "s" }
    for _, a in ipairs { "find", "method", "gsub", "gmatch", "caught", "co", "plain" } do expect_stopped(a) end
    c:send("ok")
    assert.are.equal(3, t.room.n) -- ordinary patterns are unaffected
  end)

  it("table.move, string.rep and friends refuse work beyond the budget up front", function()
    t = room [[
    move = function(r) r.n = 1; table.move({}, 1, math.maxinteger - 1, 1) end,
    rep = function(r) r.n = 1; string.rep("", math.maxinteger) end,
    repsep = function(r) r.n = 1; string.rep("", math.maxinteger, "") end,
    concat = function(r) r.n = 1; table.concat(setmetatable({}, { __len = function() return math.maxinteger end, __index = function() return "" end })) end,
    unpack = function(r) r.n = 1; table.unpack({}, 1, 1e8) end,
    sort = function(r) r.n = 1; local t = {}; for i = 1, 200000 do t[i] = -i end; for i = 1, 100 do table.sort(t) end end,
    insert = function(r) r.n = 1; local t = {}; for i = 1, 100000 do t[i] = i end; for i = 1, 100000 do table.insert(t, 1, i) end end,
    utf8 = function(r) r.n = 1; local s = ("x"):rep(1000000); for i = 1, 1000 do utf8.len(s) end end,
    ok = function(r) r.n = #table.concat(table.move({ "a", "b" }, 1, 2, 2, { "c" })) + #("ab"):rep(3, ",") end,
    ]]
    c = t:client { id = "s" }
    for _, a in ipairs { "move", "rep", "repsep", "concat", "unpack", "sort", "insert", "utf8" } do expect_stopped(a) end
    c:send("ok")
    assert.are.equal(11, t.room.n)
  end)

  it("lr.json encode and decode, and values handed to the host, are charged by size", function()
    t = room [[
    encode = function(r) r.n = 1; local big = {}; for i = 1, 20000 do big[i] = { id = i, name = "p" .. i } end
      while true do lr.json.encode(big) end end,
    caught = function(r) r.n = 1; local big = {}; for i = 1, 20000 do big[i] = i end
      while true do pcall(lr.json.encode, big) end end,
    decode = function(r) r.n = 1; local s = lr.json.encode({ ("x"):rep(1000000) }); while true do lr.json.decode(s) end end,
    shared = function(r) r.n = 1; local t = { 1 }; for _ = 1, 40 do t = { t, t } end; return lr.json.encode(t) end,
    send = function(r, _, _, conn) r.n = 1; local t = { 1 }; for _ = 1, 40 do t = { t, t } end; conn:send({ type = "x", value = t }) end,
    state = function(r) r.n = 1; local t = { 1 }; for _ = 1, 40 do t = { t, t } end; r.n = t end,
    once = function(r) r.n = 1; local t = {}; for i = 1, 50000 do t[i] = i end; return lr.json.encode(t) end,
    write = function(r) local t = {}; for i = 1, 50000 do t[i] = i end; r.n = t; r.n = #r.n end,
    ok = function(r) local s = lr.json.encode({ a = { 1, 2, 3 }, b = "x" }); r.n = #s + #lr.json.decode(s).a end,
    ]]
    c = t:client { id = "s" }
    -- budget 5,000,000: one encode of 50,000 values (200 each) is over it
    for _, a in ipairs { "encode", "caught", "decode", "shared", "send", "state", "once" } do expect_stopped(a) end
    c:send("write") -- a table met once is paid by the loop that built it: writing it is not charged
    assert.are.equal(50000, t.room.n)
    c:send("ok")
    assert.are.equal(#'{"a":[1,2,3],"b":"x"}' + 3, t.room.n) -- the server goes on; small values as before
  end)

  it("__gc is refused, and a __gc added later is never run", function()
    t = room [[
    gc = function(r) r.n = 1; setmetatable({}, { __gc = function() while true do end end }) end,
    gc_true = function(r) r.n = 1; setmetatable({}, { __gc = true }) end,
    later = function(r)
      local mt = {}
      for i = 1, 100 do setmetatable({}, mt) end
      mt.__gc = function() seen.finalized = (seen.finalized or 0) + 1; while true do end end
    end,
    ]]
    c = t:client { id = "s" }
    expect_stopped("gc", "setmetatable: __gc is not allowed in room code (finalizers run outside the instruction budget)")
    expect_stopped("gc_true", "setmetatable: __gc is not allowed in room code (finalizers run outside the instruction budget)")
    c:send("later")
    collectgarbage("collect")
    collectgarbage("collect")
    c:send("seen")
    assert.is_nil(c:last("seen").value.finalized)
    -- Host code cannot be tricked into it either: the process-wide
    -- setmetatable refuses finalizers too.
    assert.has_error(function() setmetatable({}, { __gc = print }) end)
  end)

  it("a handler that allocates past its memory limit is stopped and rolled back quickly", function()
    t = room([[
    hog = function(r) r.n = 1; local keep = {}; for i = 1, 1e6 do keep[i] = ("x"):rep(1 << 20) .. i end end,
    caught = function(r) r.n = 1; local keep = {}; while true do pcall(function() for i = 1, 1e6 do keep[#keep + 1] = ("x"):rep(1 << 20) .. i end end) end end,
    big = function(r) r.n = 1; local s = ("x"):rep(64 << 20) end,
    ok = function(r) local keep = {}; for i = 1, 8 do keep[i] = ("x"):rep(1 << 20) .. i end; r.n = #keep end,
    ]], { budget = 500000000, memory = 32 << 20 })
    c = t:client { id = "s" }
    local want = "memory limit exceeded (32 MiB allocated in one call)"
    expect_stopped("hog", want)
    expect_stopped("caught", want)
    expect_stopped("big", want)
    c:send("ok")
    assert.are.equal(8, t.room.n) -- the next call starts with a fresh allowance
  end)

  it("near the heap limit a handler is stopped at the first refusal (no emergency-collection storm)", function()
    t = room([[
    fill = function(r) r.n = 1; local k = {}; while true do pcall(function() for i = 1, 1e6 do k[#k + 1] = ("x"):rep(1 << 20) .. #k end end) end end,
    small = function(r) r.n = 1; local k = {}; while true do pcall(function() while true do k[#k + 1] = {} end end) end end,
    ]], { budget = 500000000 })
    c = t:client { id = "s" }
    local core = require "lunaroom.core"
    -- A live heap of many objects makes each emergency collection costly
    -- (as a big room state does): before, every refused allocation caught
    -- by the pcall loop cost one.
    local ballast = {}
    for i = 1, 1000000 do ballast[i] = { i } end
    collectgarbage("collect")
    local t0 = os.clock()
    collectgarbage("collect")
    local one_gc = os.clock() - t0
    core.set_memory_limit(core.memory() + (16 << 20)) -- under the per-call limit (64 MiB)
    local ok, err = pcall(function()
      expect_stopped("fill", "memory limit exceeded (the Lua heap is full)", 1 + 5 * one_gc)
      expect_stopped("small", "memory limit exceeded (the Lua heap is full)", 1 + 5 * one_gc)
    end)
    core.set_memory_limit(0)
    ballast = nil
    assert(ok, err)
  end)
end)

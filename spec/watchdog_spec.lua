-- The default budget (50,000,000, over lua_vm.c's LR_EXACT_BUDGET) is not
-- counted by a hook on every instruction: a watchdog timer hooks a call
-- that is still running 10 ms in. These handlers run forever on every path
-- the watchdog has to find: the call's own thread, a coroutine the room
-- made (counted from its first instruction), a handler run as a task (it
-- can wait), a coroutine made inside such a task, and a loop that makes
-- coroutines (each restarts the hook's count). Each must be stopped with
-- the budget error, its writes rolled back, and the room keep working.
local sandbox = require "lunaroom.sandbox"
local testing = require "lunaroom.testing"

local function room(actions)
  local src = [[
local lr = require "lunaroom"
return lr.room { path = "r",
  state = { n = 0 },
  actions = {
    ok = function(r) r.n = r.n + 1 end,
]] .. actions .. [[
  } }
]]
  local def, err = sandbox.load_room_source(src, "@r.lua", nil)
  assert(def, err)
  return testing.room(def)
end

describe("the budget watchdog (default budget)", function()
  local t
  after_each(function() if t then t:close() end t = nil end)

  local function expect_stopped(c, action)
    c:clear()
    local t0 = os.time()
    c:send(action)
    local e = c:last("error")
    local msg = e and e.value.message
    assert.is_truthy(msg and msg:find("instruction budget exceeded", 1, true), action .. ": " .. tostring(msg))
    assert.are.equal(0, t.room.n, action .. " was not rolled back")
    assert.is_true(os.time() - t0 < 30 * testing.slowdown, action .. " ran too long")
    c:send("ok") -- the room goes on
    assert.are.equal(1, t.room.n)
    t.room.n = 0
  end

  it("stops a handler that never ends on its own thread and in coroutines it makes", function()
    t = room [[
    spin = function(r) r.n = 5; while true do end end,
    caught = function(r) r.n = 5; while true do pcall(function() while true do end end) end end,
    wrapped = function(r) r.n = 5; coroutine.wrap(function() while true do end end)() end,
    created = function(r)
      r.n = 5
      local co = coroutine.create(function() local x = 0; while true do x = x + 1 end end)
      coroutine.resume(co)
    end,
    late = function(r) -- a coroutine made before the call went long, run after
      r.n = 5
      local co = coroutine.create(function() while true do end end)
      for _ = 1, 3000000 do end
      coroutine.resume(co)
    end,
    creates = function(r) r.n = 5; local f = function() end; while true do coroutine.create(f) end end,
    ]]
    local c = t:client { id = "s" }
    for _, a in ipairs { "spin", "caught", "wrapped", "created", "late", "creates" } do expect_stopped(c, a) end
  end)

  it("stops a handler that can wait (run as a task), and a coroutine made in it", function()
    t = room [[
    task = function(r) local io = require "lunaroom.io"; r.n = 5; while true do end end,
    task_co = function(r)
      local io = require "lunaroom.io"
      r.n = 5
      coroutine.wrap(function() while true do end end)()
    end,
    ]]
    local c = t:client { id = "s" }
    for _, a in ipairs { "task", "task_co" } do expect_stopped(c, a) end
  end)
end)

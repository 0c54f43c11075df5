-- Hot reload of room scripts (issue 5): the transaction on the headless host,
-- and the inotify watcher driven by the virtual clock.
--
-- Owns: the behaviour a room author sees when a room file or a module it
-- requires is saved, broken, added or deleted while rooms are live.
-- Must not: sleep or depend on wall-clock timing (the watcher's debounce is
-- driven with t:advance; save-to-live latency is measured by
-- bench/reload_bench.mjs and spec/integration/reload.test.mjs against the
-- real binary).
local testing = require "lunaroom.testing"
local reload = require "lunaroom.reload"
local runtime = require "lunaroom.runtime"
local core = require "lunaroom.core"

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p '" .. p .. "/lib'"))
  return p
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- An editor's atomic save: write a temporary file, rename it over the target.
local function atomic_write(path, text)
  write(path .. ".tmp~", text)
  assert(os.rename(path .. ".tmp~", path))
end

local function has_line(lines, pat)
  for _, l in ipairs(lines) do
    if l:find(pat) then return l end
  end
  return nil
end

-- A counter room; `step` is what inc adds, `extra` more source in the table.
local function counter(step, extra)
  return ([[
local lr = require "lunaroom"
return lr.room {
  path = "game-{id}",
  state = { count = lr.sync(0), title = lr.sync("hello") },
  actions = {
    inc = function(room) room.count = room.count + STEP end,
  },
  EXTRA
}
]]):gsub("STEP", tostring(step)):gsub("EXTRA", extra or "")
end

describe("hot reload", function()
  local dir, t
  before_each(function()
    dir = tmpdir()
    testing.logs()
  end)
  after_each(function()
    if t then t:close() end
    t = nil
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("swaps the actions in place: state and connected clients are kept", function()
    write(dir .. "/game.lua", counter(1))
    t = testing.room(dir .. "/game.lua")
    local c = t:client { id = "s1" }
    c:send("inc"); c:send("inc")
    assert.are.equal(2, t.room.count)
    local before = t.room
    c:clear()
    local ok, version = t:reload(counter(10))
    assert.is_true(ok)
    assert.are.equal(version, rawget(t.room, "src").version)
    assert.are.equal(before, t.room) -- the same instance
    assert.is_nil(c.closed)
    assert.are.same({}, c.raw) -- nothing changed in the state: nothing sent
    c:send("inc")
    assert.are.equal(12, t.room.count)
    assert.are.same({ type = "sync", value = { count = 12 } }, c:last("sync"))
    assert.truthy(has_line(testing.logs(), "reloaded " .. dir .. "/game.lua %(version " .. version .. ", 1 room%)"))
    -- A client that connects after the reload gets the kept state.
    local c2 = t:client { id = "s2" }
    assert.are.equal(12, c2.packets[1].value.count)
  end)

  it("t:reload works for a room defined in the spec (no file) and from another file", function()
    local lr = require "lunaroom"
    t = testing.room(lr.room { path = "game-{id}", state = { count = 0 },
      actions = { inc = function(room) room.count = room.count + 1 end } })
    local c = t:client()
    c:send("inc")
    assert.is_true(t:reload(counter(50)))
    c:send("inc")
    assert.are.equal(51, t.room.count)
    write(dir .. "/v2.lua", counter(500))
    local ok, v = t:reload(dir .. "/v2.lua")
    assert.is_true(ok)
    assert.are.equal(v, rawget(t.room, "src").version)
    c:send("inc")
    assert.are.equal(551, t.room.count)
    assert.has_error(function() t:reload() end)
  end)

  it("a file that does not compile keeps the old code and names file:line", function()
    write(dir .. "/game.lua", counter(1))
    t = testing.room(dir .. "/game.lua")
    local old = rawget(t.room, "src").version
    local c = t:client()
    local bad = counter(5):gsub("room.count %+ 5", "room.count +* 5")
    local ok, err = t:reload(bad)
    assert.is_false(ok)
    assert.truthy(err:find("^" .. dir:gsub("%p", "%%%0") .. "/game%.lua:6: "), err)
    assert.truthy(has_line(testing.logs(), "game%.lua:6: .*%(keeping version " .. old .. "%)"))
    assert.are.equal(old, rawget(t.room, "src").version)
    c:send("inc")
    assert.are.equal(1, t.room.count)
    assert.is_nil(c.closed)
  end)

  it("a definition that does not validate keeps the old code, with file:line", function()
    write(dir .. "/game.lua", counter(1))
    t = testing.room(dir .. "/game.lua")
    local old = rawget(t.room, "src").version
    local ok, err = t:reload(counter(2, "maxUsres = 3,"))
    assert.is_false(ok)
    assert.truthy(err:find("game%.lua:8: unknown room option 'maxUsres'"), err)
    ok, err = t:reload(counter(2, "actions2 = 1, actions = { inc = 5 },"))
    assert.is_false(ok)
    assert.truthy(err:find("game%.lua:%d+: "), err)
    assert.are.equal(old, rawget(t.room, "src").version)
    local c = t:client()
    c:send("inc")
    assert.are.equal(1, t.room.count)
  end)

  it("a runaway top level is stopped by the load budget and changes nothing", function()
    write(dir .. "/game.lua", counter(1))
    t = testing.room(dir .. "/game.lua")
    local old = rawget(t.room, "src").version
    local ok, err = t:reload("local lr = require 'lunaroom'\nwhile true do end\n")
    assert.is_false(ok)
    assert.truthy(err:find("budget"), err)
    assert.truthy(has_line(testing.logs(), "keeping version " .. old))
    assert.are.equal(old, rawget(t.room, "src").version)
  end)

  it("a new synced field gets its default in live rooms, sent as a patch", function()
    write(dir .. "/game.lua", counter(1))
    t = testing.room(dir .. "/game.lua")
    local c = t:client()
    c:clear()
    assert.is_true(t:reload(counter(1):gsub('title = lr.sync%("hello"%)',
      'title = lr.sync("hello"), score = lr.sync({ best = 3 }), secret = lr.sync(7, { sync = false })')))
    assert.are.same({ '{"type":"sync","value":{"score":{"best":3}}}' }, c.raw)
    assert.are.equal(3, t.room.score.best)
    assert.are.equal(7, t.room.secret)
    assert.are.equal(3, t.storage:get("state:score").best)
  end)

  it("a removed field is deleted: clients get $delete, storage drops it", function()
    write(dir .. "/game.lua", counter(1))
    t = testing.room(dir .. "/game.lua")
    local c = t:client()
    c:clear()
    assert.is_true(t:reload(counter(1):gsub(', title = lr.sync%("hello"%)', "")))
    assert.are.same({ '{"type":"sync","value":{"title":"$delete"}}' }, c.raw)
    assert.is_nil(t.room.title)
    assert.is_nil(t.storage:get("state:title"))
    c:send("inc")
    assert.are.same({ type = "sync", value = { count = 1 } }, c:last("sync"))
  end)

  it("a changed users schema applies to existing users", function()
    local function users(fields)
      return ([[
local lr = require "lunaroom"
local Player = lr.schema { FIELDS }
return lr.room { path = "arena", state = { players = lr.users(Player) },
  actions = { hit = function(room, user) user.hp = (user.hp or 0) - 1 end } }
]]):gsub("FIELDS", fields)
    end
    write(dir .. "/arena.lua", users("hp = lr.sync(10), name = lr.sync('anon')"))
    t = testing.room(dir .. "/arena.lua")
    local c = t:client { id = "a" }
    local c2 = t:client { id = "b" }
    c2:close()
    local pa, pb = c.publicId, nil
    for pid in pairs(t.room.players) do if pid ~= pa then pb = pid end end
    c:clear()
    assert.is_true(t:reload(users("hp = lr.sync(10), level = lr.sync(1), online = lr.connected(), "
      .. "note = lr.sync('x', { sync = false })")))
    local p = c:last("sync").value.players
    assert.are.same({ level = 1, online = true, name = "$delete" }, p[pa])
    assert.are.same({ level = 1, online = false, name = "$delete" }, p[pb])
    assert.are.equal(1, t.room.players[pa].level)
    assert.are.equal("x", t.room.players[pa].note)
    assert.is_nil(t.room.players[pa].name)
    assert.are.equal(10, t.room.players[pa].hp) -- kept
    c:send("hit")
    assert.are.equal(9, t.room.players[pa].hp)
  end)

  it("a changed module from the rooms folder reloads every room that required it", function()
    write(dir .. "/lib/rules.lua", "return { step = 1 }\n")
    write(dir .. "/game.lua", [[
local lr = require "lunaroom"
local rules = require "lib.rules"
return lr.room { path = "game", state = { count = 0 },
  actions = { inc = function(room) room.count = room.count + rules.step end } }
]])
    t = testing.room(dir .. "/game.lua")
    local v1 = rawget(t.room, "src").version
    local c = t:client()
    c:send("inc")
    atomic_write(dir .. "/lib/rules.lua", "return { step = 100 }\n")
    local jobs = reload.run(t.srv, { dir .. "/lib/rules.lua" })
    core.tick(t.srv.h)
    assert.are.equal(1, #jobs)
    assert.is_true(jobs[1].ok)
    assert.are_not.equal(v1, rawget(t.room, "src").version)
    c:send("inc")
    assert.are.equal(101, t.room.count)
    assert.truthy(has_line(testing.logs(), "reloaded " .. dir .. "/game.lua"))
    -- A broken module keeps the room on its last good version.
    local v2 = rawget(t.room, "src").version
    write(dir .. "/lib/rules.lua", "return { step = }\n")
    jobs = reload.run(t.srv, { dir .. "/lib/rules.lua" })
    assert.is_false(jobs[1].ok)
    assert.truthy(jobs[1].err:find("lib/rules%.lua:1:"), jobs[1].err)
    assert.are.equal(v2, rawget(t.room, "src").version)
    -- ... and fixing the module brings it back.
    write(dir .. "/lib/rules.lua", "return { step = 1000 }\n")
    reload.run(t.srv, { dir .. "/lib/rules.lua" })
    c:send("inc")
    assert.are.equal(1101, t.room.count)
  end)

  it("onReload(room, oldVersion) runs after the swap, in every live room", function()
    local hook = [[
onReload = function(room, old) room.title = "from " .. old .. " to " .. tostring(room.count) end,]]
    write(dir .. "/game.lua", counter(1))
    t = testing.room(dir .. "/game.lua")
    local other = runtime.create_room(t.srv, "main", "game-2")
    local old = rawget(t.room, "src").version
    local c = t:client()
    c:clear()
    local ok, v = t:reload(counter(1, hook))
    assert.is_true(ok)
    assert.are.equal("from " .. old .. " to 0", t.room.title)
    assert.are.equal("from " .. old .. " to 0", other.title)
    assert.are.equal(v, rawget(other, "src").version)
    assert.are.same({ type = "sync", value = { title = "from " .. old .. " to 0" } }, c:last("sync"))
    -- A failing hook is logged and rolled back; the new code stays.
    local ok2, v2 = t:reload(counter(3, 'onReload = function(room) room.title = "x"; error("boom") end,'))
    assert.is_true(ok2)
    assert.are.equal(v2, rawget(t.room, "src").version)
    assert.are.equal("from " .. old .. " to 0", t.room.title)
    assert.truthy(has_line(testing.logs(), "onReload failed.*boom"))
  end)

  it("a deleted room file stops new rooms of that type; live ones keep serving", function()
    write(dir .. "/game.lua", counter(1))
    t = testing.room(dir .. "/game.lua")
    local v = rawget(t.room, "src").version
    local c = t:client()
    os.remove(dir .. "/game.lua")
    reload.run(t.srv, { dir .. "/game.lua" })
    assert.are.equal(0, #t.srv.defs)
    assert.truthy(has_line(testing.logs(), "removed .*game%.lua: no new rooms of path game%-{id}; 1 live room keeps version " .. v))
    c:send("inc")
    assert.are.equal(1, t.room.count)
    assert.is_nil(c.closed)
    local refused = t:client { room = "game-other" }
    assert.truthy(refused.closed)
    assert.are.equal(404, refused.status)
    -- The file comes back: new rooms again, and the live room takes the code.
    write(dir .. "/game.lua", counter(7))
    reload.run(t.srv, { dir .. "/game.lua" })
    assert.are.equal(1, #t.srv.defs)
    c:send("inc")
    assert.are.equal(8, t.room.count)
    assert.is_nil(t:client { room = "game-other" }.closed)
  end)

  it("room_info lists every live room with its code version", function()
    write(dir .. "/game.lua", counter(1))
    t = testing.room(dir .. "/game.lua")
    t:client()
    local info = runtime.room_info(t.srv)
    assert.are.equal(1, #info)
    assert.are.equal("main/game-test", info[1].key)
    assert.are.equal(rawget(t.room, "src").version, info[1].version)
    assert.are.equal(1, info[1].connections)
    local _, v = t:reload(counter(2))
    assert.are.equal(v, runtime.room_info(t.srv)[1].version)
  end)

  it("rebuilds the same file into the same version (no swap when nothing changed)", function()
    write(dir .. "/game.lua", counter(1))
    t = testing.room(dir .. "/game.lua")
    local jobs = reload.run(t.srv, { dir .. "/game.lua" })
    assert.are.equal("unchanged", jobs[1].skip)
    assert.is_nil(has_line(testing.logs(), "reloaded"))
  end)

  it("applies changed options (throttleSync) to live rooms", function()
    write(dir .. "/game.lua", counter(1))
    t = testing.room(dir .. "/game.lua")
    local c = t:client()
    assert.is_true(t:reload(counter(1, "throttleSync = 100,")))
    c:clear()
    c:send("inc"); c:send("inc"); c:send("inc")
    assert.are.equal(1, #c.raw) -- leading edge, then the window
    t:advance(100)
    assert.are.same({ type = "sync", value = { count = 3 } }, c:last("sync"))
  end)

  describe("development mode (srv.dev)", function()
    local function dev_packets(c)
      local out = {}
      for _, r in ipairs(c.raw) do if r:find('"type":"dev_error"', 1, true) then out[#out + 1] = r end end
      return out
    end

    it("sends a failed save to the file's rooms with file:line, and null on the next good save", function()
      write(dir .. "/game.lua", counter(1))
      write(dir .. "/other.lua", (counter(1):gsub("game%-{id}", "other")))
      t = testing.room(dir .. "/game.lua")
      runtime.add_definition(t.srv, assert(require("lunaroom.sandbox").load_room_file(dir .. "/other.lua", dir)),
        dir .. "/other.lua", "x")
      t.srv.dev = true
      local c1, c2 = t:client(), t:client()
      local co = t:client { room = "other" }
      c1:clear(); c2:clear(); co:clear()
      write(dir .. "/game.lua", "local lr = require 'lunaroom'\nreturn lr.room {\n  path = = 1,\n}\n")
      reload.run(t.srv, { dir .. "/game.lua" })
      for _, c in ipairs { c1, c2 } do
        local p = c:last("dev_error")
        assert.are.equal(dir .. "/game.lua", p.value.file)
        assert.are.equal(3, p.value.line)
        assert.truthy(p.value.message:find("unexpected symbol", 1, true))
      end
      assert.are.same({}, dev_packets(co)) -- another room type hears nothing
      local late = t:client() -- a joiner after the broken save gets it after its snapshot
      assert.are.equal("sync", late.packets[1].type)
      assert.are.equal(3, late:last("dev_error").value.line)
      -- a validation error (no line of its own is fine too): still reported
      write(dir .. "/game.lua", counter(2, "state = 5,"))
      reload.run(t.srv, { dir .. "/game.lua" })
      assert.are.equal(2, #dev_packets(c1))
      write(dir .. "/game.lua", counter(5))
      reload.run(t.srv, { dir .. "/game.lua" })
      assert.are.same('{"type":"dev_error","value":null}', dev_packets(c1)[3])
      assert.are.same('{"type":"dev_error","value":null}', dev_packets(c2)[3])
      assert.are.equal(0, #dev_packets(t:client())) -- fixed: a new joiner hears nothing
      write(dir .. "/game.lua", counter(6)) -- a good save with nothing to clear sends nothing
      reload.run(t.srv, { dir .. "/game.lua" })
      assert.are.equal(3, #dev_packets(c1))
    end)

    it("a save back to the running version clears it too", function()
      write(dir .. "/game.lua", counter(1))
      t = testing.room(dir .. "/game.lua")
      t.srv.dev = true
      local c = t:client()
      write(dir .. "/game.lua", "return lr.room {")
      reload.run(t.srv, { dir .. "/game.lua" })
      write(dir .. "/game.lua", counter(1)) -- unchanged version: nothing to swap
      reload.run(t.srv, { dir .. "/game.lua" })
      local d = dev_packets(c)
      assert.are.equal(2, #d)
      assert.are.equal('{"type":"dev_error","value":null}', d[2])
    end)

    it("a room file that failed at start: its clients wait with the error, a good save joins them", function()
      write(dir .. "/game.lua", counter(1))
      t = testing.room(dir .. "/game.lua")
      t.srv.dev = true
      write(dir .. "/lib/other.lua", (counter(1):gsub("game%-{id}", "other-{id}"):gsub("count = lr", "count = = lr")))
      local n, errors = runtime.load_dir(t.srv, dir .. "/lib")
      assert.are.equal(1, n)
      assert.are.equal(1, #errors)
      assert.truthy(has_line(testing.logs(), "clients of main/other%-{id} wait for a save of .*other%.lua"))
      local c = t:client { room = "other-1" }
      assert.is_nil(c.closed)
      assert.are.same({ file = dir .. "/lib/other.lua", line = 4, message = "unexpected symbol near '='" },
        c:last("dev_error").value)
      c:send("inc") -- kept until the room is there
      local res = t:http("GET", "/", { room = "other-1" })
      assert.are.equal(503, res.status)
      assert.are.equal("dev_error", res.json.code)
      assert.are.equal(4, res.json.line)
      local none = t:client { room = "nothing" } -- no file declares it
      assert.are.equal(4004, none.closed and none.closed.code)
      -- a broken save with another error: sent; the same again: not
      write(dir .. "/lib/other.lua", (counter(1):gsub("game%-{id}", "other-{id}"):gsub("EXTRA", ""):gsub("  },\n", "  }\n  x = = 1,\n")))
      reload.run(t.srv, { dir .. "/lib/other.lua" })
      t:advance(0)
      assert.are.equal(8, c:last("dev_error").value.line)
      reload.run(t.srv, { dir .. "/lib/other.lua" })
      t:advance(0)
      assert.are.equal(2, #dev_packets(c))
      assert.is_nil(t.srv.rooms["main/other-1"])
      -- the fix: null, then the usual join
      write(dir .. "/lib/other.lua", (counter(10):gsub("game%-{id}", "other-{id}")))
      reload.run(t.srv, { dir .. "/lib/other.lua" })
      t:advance(0)
      local d = dev_packets(c)
      assert.are.equal('{"type":"dev_error","value":null}', d[3])
      assert.are.equal("sync", c:last("sync").type)
      assert.are.equal(10, t.srv.rooms["main/other-1"].root.count) -- the early "inc" ran on the new code
      assert.is_nil(c.closed)
      assert.are.equal(404, t:http("GET", "/", { room = "other-1" }).status)
      assert.are.equal(0, #dev_packets(t:client { room = "other-2" }))
    end)

    it("a new room file whose first save fails: its clients wait too", function()
      write(dir .. "/game.lua", counter(1))
      t = testing.room(dir .. "/game.lua")
      t.srv.dev = true
      local f = dir .. "/lib/fresh.lua"
      write(f, (counter(1):gsub("game%-{id}", "fresh-{id}"):gsub("inc = function", "inc = = function")))
      reload.run(t.srv, { { file = f, new = true } })
      local c = t:client { room = "fresh-1" }
      assert.is_nil(c.closed)
      assert.are.equal(6, c:last("dev_error").value.line)
      write(f, (counter(3):gsub("game%-{id}", "fresh-{id}")))
      reload.run(t.srv, { { file = f, new = true } })
      t:advance(0)
      assert.are.equal("sync", c:last("sync").type)
      c:send("inc")
      assert.are.equal(3, t.srv.rooms["main/fresh-1"].root.count)
    end)

    it("sends nothing outside development mode", function()
      write(dir .. "/game.lua", counter(1))
      t = testing.room(dir .. "/game.lua")
      local c = t:client()
      write(dir .. "/game.lua", "return lr.room {")
      reload.run(t.srv, { dir .. "/game.lua" })
      write(dir .. "/game.lua", counter(2))
      reload.run(t.srv, { dir .. "/game.lua" })
      assert.are.same({}, dev_packets(c))
      assert.truthy(has_line(testing.logs(), "game%.lua:1: .*keeping version"))
    end)
  end)

  describe("watcher", function()
    it("a finished save (rename over, in-place write, several writes) is live at the next tick", function()
      write(dir .. "/game.lua", counter(1))
      t = testing.room(dir .. "/game.lua")
      assert.is_true(reload.watch(t.srv, dir))
      local c = t:client()
      testing.logs()
      atomic_write(dir .. "/game.lua", counter(20)) -- IN_MOVED_TO: no debounce
      core.tick(t.srv.h)
      c:send("inc")
      assert.are.equal(20, t.room.count)
      write(dir .. "/game.lua", counter(300)) -- in place: IN_CLOSE_WRITE
      core.tick(t.srv.h)
      c:send("inc")
      assert.are.equal(320, t.room.count)
      local f = assert(io.open(dir .. "/game.lua", "w")) -- several writes, one close
      local src = counter(4000)
      f:write(src:sub(1, 20)); f:flush()
      core.tick(t.srv.h) -- not closed yet: nothing to reload
      f:write(src:sub(21)); f:close()
      core.tick(t.srv.h)
      c:send("inc")
      assert.are.equal(4320, t.room.count)
      t:advance(1000); core.tick(t.srv.h)
      local n = 0
      for _, l in ipairs(testing.logs()) do if l:find("reloaded .*game%.lua") then n = n + 1 end end
      assert.are.equal(3, n) -- exactly one reload per save
      assert.is_nil(c.closed)
      reload.unwatch(t.srv)
    end)

    it("an editor's backup-rename save is one reload after the new file is closed", function()
      write(dir .. "/game.lua", counter(1))
      t = testing.room(dir .. "/game.lua")
      assert.is_true(reload.watch(t.srv, dir))
      local c = t:client()
      testing.logs()
      -- vim (backupcopy=no): rename the file away, write a new one, delete the backup
      assert(os.rename(dir .. "/game.lua", dir .. "/game.lua~"))
      core.tick(t.srv.h) -- IN_MOVED_FROM only: waits for the debounce, the room type stays
      assert.is_nil(has_line(testing.logs(), "game%.lua"))
      write(dir .. "/game.lua", counter(7))
      os.remove(dir .. "/game.lua~")
      core.tick(t.srv.h)
      c:send("inc")
      assert.are.equal(7, t.room.count)
      t:advance(1000); core.tick(t.srv.h)
      local lines = testing.logs()
      assert.truthy(has_line(lines, "reloaded .*game%.lua"))
      assert.is_nil(has_line(lines, "error"))
      assert.are.equal(1, #t.srv.defs)
      reload.unwatch(t.srv)
    end)

    it("a deletion waits for the debounce (the file may come back)", function()
      write(dir .. "/game.lua", counter(1))
      t = testing.room(dir .. "/game.lua")
      assert.is_true(reload.watch(t.srv, dir))
      os.remove(dir .. "/game.lua")
      core.tick(t.srv.h)
      t:advance(29); core.tick(t.srv.h)
      assert.are.equal(1, #t.srv.defs)
      t:advance(1); core.tick(t.srv.h)
      assert.are.equal(0, #t.srv.defs)
      reload.unwatch(t.srv)
    end)

    it("batches a burst, ignores editor droppings, adds new room files", function()
      write(dir .. "/game.lua", counter(1))
      t = testing.room(dir .. "/game.lua")
      assert.is_true(reload.watch(t.srv, dir))
      testing.logs()
      write(dir .. "/.game.lua.swp", "junk")
      write(dir .. "/game.lua~", "junk")
      write(dir .. "/4913", "")
      write(dir .. "/chat.lua", [[
local lr = require "lunaroom"
return lr.room { path = "chat", state = { n = 0 } }
]])
      write(dir .. "/lib/util.lua", "return {}\n")
      assert(os.execute("mkdir -p '" .. dir .. "/new'")) -- a new folder: rescan, debounced
      core.tick(t.srv.h)
      t:advance(10)
      atomic_write(dir .. "/game.lua", counter(2)) -- still inside the burst
      core.tick(t.srv.h)
      t:advance(29)
      core.tick(t.srv.h)
      assert.is_nil(has_line(testing.logs(), "reloaded"))
      t:advance(1)
      core.tick(t.srv.h)
      local logs = testing.logs()
      assert.truthy(has_line(logs, "reloaded .*game%.lua"))
      assert.truthy(has_line(logs, "added .*chat%.lua %(path chat"))
      assert.is_nil(has_line(logs, "swp"))
      assert.is_nil(has_line(logs, "error"))
      assert.are.equal(2, #t.srv.defs)
      local cc = t:client { room = "chat" }
      assert.is_nil(cc.closed)
      -- A module created in a new sub-folder is watched too.
      assert(os.execute("mkdir -p '" .. dir .. "/lib/deep'"))
      core.tick(t.srv.h)
      assert.are.equal(4, t.srv._watcher:folders())
      reload.unwatch(t.srv)
    end)

    it("a rescan (queue overflow, new folder) reloads what changed and nothing else", function()
      write(dir .. "/game.lua", counter(1))
      write(dir .. "/other.lua", counter(1):gsub("game%-{id}", "other"))
      t = testing.room(dir .. "/game.lua", { rooms = {} })
      reload.watch(t.srv, dir) -- other.lua is not a definition of this server: new
      write(dir .. "/game.lua", counter(9))
      local jobs = reload.run(t.srv, { "*" })
      local by = {}
      for _, j in ipairs(jobs) do by[j.file:match("[^/]+$")] = j end
      assert.is_true(by["game.lua"].committed)
      assert.is_true(by["other.lua"].committed) -- added as a new room type
      assert.are.equal(2, #t.srv.defs)
      jobs = reload.run(t.srv, { "*" })
      for _, j in ipairs(jobs) do assert.are.equal("unchanged", j.skip) end
      reload.unwatch(t.srv)
    end)

    it("a broken save logs file:line and the next good save recovers", function()
      write(dir .. "/game.lua", counter(1))
      t = testing.room(dir .. "/game.lua")
      reload.watch(t.srv, dir)
      local v = rawget(t.room, "src").version
      testing.logs()
      write(dir .. "/game.lua", "local x = \n")
      core.tick(t.srv.h); t:advance(30); core.tick(t.srv.h)
      assert.truthy(has_line(testing.logs(), "game%.lua:2: .*%(keeping version " .. v .. "%)"))
      write(dir .. "/game.lua", counter(4))
      core.tick(t.srv.h); t:advance(30); core.tick(t.srv.h)
      local c = t:client()
      c:send("inc")
      assert.are.equal(4, t.room.count)
      reload.unwatch(t.srv)
    end)
  end)
end)

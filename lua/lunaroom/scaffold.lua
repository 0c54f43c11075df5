--- lunaroom.scaffold - the files `lunaroom init DIR` writes: one example
--- room, its busted spec, a lunaroom.lua config and a short README.
---
--- Owns: the templates and writing them into a folder the host created.
--- Must not: overwrite a file (init refuses a non-empty folder first) or be
--- loaded by room code (it uses io, outside the sandbox).
local M = {}

M.files = {}

M.files["rooms/counter.lua"] = [[
-- A counter room: ws://localhost:1999/parties/main/counter-{id}
--   action "increment" {amount?}  ->  every client gets {"count": n}
--   GET /parties/main/counter-{id}/count  ->  {"count": n}
local lr = require "lunaroom"

return lr.room {
  path = "counter-{id}",

  state = {
    count = lr.sync(0), -- synced to every client and persisted
  },

  actions = {
    increment = {
      schema = lr.v.object { amount = lr.v.integer():min(1):max(100):optional() }:optional(),
      run = function(room, _user, value)
        room.count = room.count + ((value and value.amount) or 1)
      end,
    },
  },

  requests = {
    ["GET /count"] = function(room) return { count = room.count } end,
  },
}
]]

M.files["spec/counter_spec.lua"] = [[
-- Run with `lunaroom test` (busted inside the host, no server, no network).
local testing = require "lunaroom.testing"

describe("rooms/counter.lua", function()
  local t
  before_each(function() t = testing.room("rooms/counter.lua", { id = "counter-1" }) end)
  after_each(function() t:close() end)

  it("sends a new client the state first", function()
    local c = t:client()
    assert.are.equal("sync", c.packets[1].type)
    assert.are.equal(0, c.packets[1].value.count)
  end)

  it("increments for everyone", function()
    local a, b = t:client(), t:client()
    a:send("increment", { amount = 2 })
    assert.are.equal(2, t.room.count)
    assert.are.equal(2, b:last().value.count)
  end)

  it("refuses a bad amount and changes nothing", function()
    local c = t:client()
    c:send("increment", { amount = "lots" })
    assert.are.equal(0, t.room.count)
    assert.are.equal("validation", c:last().value.code)
  end)

  it("answers GET /count", function()
    t.room.count = 7
    assert.are.same({ count = 7 }, t:http("GET", "/count").json)
  end)
end)
]]

M.files["lunaroom.lua"] = [[
-- lunaroom's configuration: `lunaroom serve` reads ./lunaroom.lua when no
-- --config is given. Keys are the serve flags with '_' for '-'; flags on
-- the command line win. `lunaroom serve --help` lists them all.
return {
  rooms = "rooms",
  port = 1999,
  storage = "sqlite:data/lunaroom.sqlite",
  -- tls_cert = "/etc/letsencrypt/live/example.org/fullchain.pem",
  -- tls_key = "/etc/letsencrypt/live/example.org/privkey.pem",
  -- lua_modules = "lua_modules", -- pure-Lua rocks: luarocks --tree lua_modules install ...
}
]]

M.files["README.md"] = [[
# A Lunaroom project

    lunaroom serve          # serves rooms/ on http://localhost:1999 (config: lunaroom.lua)
    lunaroom test           # runs spec/ (busted, headless)
    lunaroom check rooms    # compiles and validates every room file

Connect with the npm client:

    import { connectionRoom } from "@signe/sync/client";
    const conn = await connectionRoom({ host: "localhost:1999", room: "counter-1" }, state);
    conn.emit("increment", { amount: 1 });

Room files are hot-reloaded when they change. Data lives in data/lunaroom.sqlite.
]]

--- The relative paths, sorted (folders before the files in them).
function M.list()
  local out = {}
  for k in pairs(M.files) do out[#out + 1] = k end
  table.sort(out)
  return out
end

--- Write every file under dir (its rooms/ and spec/ folders exist).
--- Returns true, or nil and an error.
function M.write(dir)
  for _, rel in ipairs(M.list()) do
    local path = dir .. "/" .. rel
    local f, err = io.open(path, "w")
    if not f then return nil, err end
    f:write(M.files[rel])
    f:close()
  end
  return true
end

return M

-- Compatibility with @signe/room ports (issue 16): request guards before
-- validation, req.data, reserved names and refused room files, the API a
-- porter needs (conn.state, room-to-room fetch results, writes made in a
-- spec body), validation only under application/json.
local testing = require "lunaroom.testing"
local runtime = require "lunaroom.runtime"
local core = require "lunaroom.core"
local lr = require "lunaroom"
local v = lr.v

-- The seed's ApiRoom as the outside check wrote it: a guarded, validated
-- POST and an echo route without a schema.
local function api_room()
  return lr.room {
    path = "api-{n}",
    state = { scores = lr.sync(lr.array {}) },
    requests = {
      ["POST /scores"] = {
        schema = v.object { playerId = v.string(), score = v.number():min(0) },
        guards = { function(_, req) return req.headers.authorization ~= nil end },
        run = function(room, req, res)
          room.scores[#room.scores + 1] = req.data
          return res:success { success = true }
        end,
      },
      ["PUT /echo/:a/:b"] = function(_, req)
        return { a = req.params.a, b = req.params.b, data = req.data, raw = req.body, parsed = req:json() }
      end,
      ["POST /typed"] = {
        schema = v.object { n = v.number() },
        run = function(_, req) return { data = req.data, raw = req.body } end,
      },
    },
  }
end

describe("HTTP routes as the reference runs them", function()
  local t
  before_each(function() t = testing.room(api_room(), { id = "api-r1" }) end)
  after_each(function() t:close() end)

  it("runs request guards before body validation: no rights, no schema in the answer", function()
    local r = t:http("POST", "/scores", { body = { playerId = 1 } }) -- invalid and no credentials
    assert.are.equal(403, r.status)
    assert.are.same({ error = "Not permitted" }, r.json)
    local unparsable = t:http("POST", "/scores", { body = "{", headers = { ["content-type"] = "application/json" } })
    assert.are.equal(403, unparsable.status)
    -- with credentials the body is still validated
    local bad = t:http("POST", "/scores", { body = { playerId = 1 }, headers = { authorization = "Bearer x" } })
    assert.are.equal(400, bad.status)
    assert.are.equal("Invalid request body", bad.json.error)
  end)

  it("gives req.data only to a route with a schema; the raw body stays in req.body / req:json()", function()
    local r = t:http("PUT", "/echo/one/two", { body = { z = 1 } })
    assert.are.equal(200, r.status)
    assert.are.same({ a = "one", b = "two", raw = '{"z":1}', parsed = { z = 1 } }, r.json)
    assert.is_nil(r.json.data)
    local typed = t:http("POST", "/typed", { body = '{"n":2,"extra":true}', headers = { ["content-type"] = "application/json" } })
    assert.are.same({ n = 2 }, typed.json.data) -- the validated value
    assert.are.equal('{"n":2,"extra":true}', typed.json.raw)
  end)

  it("validates only under Content-Type: application/json, as the reference (README rule)", function()
    local r = t:http("POST", "/typed", { body = "n=notanumber", headers = { ["content-type"] = "text/plain" } })
    assert.are.equal(200, r.status)
    assert.is_nil(r.json.data)
    assert.are.equal("n=notanumber", r.json.raw)
  end)
end)

describe("reserved names", function()
  it("lets a state field be called name (seed rooms do), synced and stored like any other", function()
    local t = testing.room(lr.room {
      path = "named",
      state = { name = lr.sync("lobby"), count = lr.sync(0) },
      actions = { rename = function(room, _, value) room.name = value end },
      requests = { ["GET /"] = function(room) return { name = room.name, id = room.id } end },
    })
    local c = t:client()
    local snap = c:last("sync").value
    assert.are.same({ "lobby", 0 }, { snap.name, snap.count })
    c:clear()
    c:send("rename", "hall")
    assert.are.same({ '{"type":"sync","value":{"name":"hall"}}' }, c.raw)
    assert.are.equal("hall", t.storage:get("state:name"))
    assert.are.same({ name = "hall", id = "named" }, t:http("GET", "/").json)
    t:close()
  end)

  it("refuses exactly the listed names, and names starting with _", function()
    for _, k in ipairs { "id", "params", "send", "timer", "storage", "version", "h", "_x" } do
      local ok, err = pcall(lr.room, { path = "x", state = { [k] = 1 } })
      assert.is_false(ok, k)
      assert.truthy(err:find("state field '" .. k .. "' is a reserved name", 1, true), err)
    end
    for _, k in ipairs { "name", "h1", "players", "score", "config" } do
      assert.is_true((pcall(lr.room, { path = "x", state = { [k] = 1 } })), k)
    end
    for k in pairs(lr.RESERVED) do
      assert.is_false((pcall(lr.room, { path = "x", state = { [k] = 1 } })), k)
    end
  end)
end)

describe("runtime.load_dir (what serve loads at start)", function()
  local dir
  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir)
  end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  local function write(name, text)
    local fh = assert(_G.io.open(dir .. "/" .. name, "w"))
    fh:write(text)
    fh:close()
  end

  it("reports a file that does not load and a second file serving the same path", function()
    write("a.lua", 'local lr = require "lunaroom"\nreturn lr.room { path = "game" }\n')
    write("b.lua", 'local lr = require "lunaroom"\nreturn lr.room { path = "game" }\n')
    write("c.lua", 'local lr = require "lunaroom"\nreturn lr.room { path = "c", state = { id = 1 } }\n')
    write("d.lua", 'local lr = require "lunaroom"\nreturn lr.room { path = "game", party = "other" }\n')
    write("util.lua", "return { x = 1 }\n") -- a module, not a room: fine
    local h = core.server_new { virtual = true, storage = "memory", seed = 1 }
    local srv = runtime.new_server(h, {})
    local n, errors = runtime.load_dir(srv, dir)
    core.server_close(h)
    assert.are.equal(2, n) -- a.lua and d.lua (another party)
    assert.are.equal(2, #errors)
    table.sort(errors)
    assert.truthy(errors[1]:find("b.lua: path 'game' (party main) is already served by " .. dir .. "/a.lua", 1, true), errors[1])
    assert.truthy(errors[2]:find(dir .. "/c.lua:", 1, true) and errors[2]:find("'id' is a reserved name", 1, true), errors[2])
  end)
end)

describe("the API a porter needs", function()
  it("conn.state is writable (the seed's conn.setState) and kept for that connection", function()
    local t = testing.room(lr.room {
      path = "roles",
      state = { last = lr.sync("") },
      onJoin = function(_, _, conn, ctx) conn.state.role = ctx.request.query.role or "player" end,
      actions = {
        wipe = {
          guards = { function(conn) return conn.state.role == "admin" end },
          run = function(room, _, _, conn) room.last = conn.state.role .. ":" .. conn.state.publicId end,
        },
        promote = function(_, _, _, conn) conn.state.role = "admin" end,
      },
    })
    local admin, player = t:client { query = { role = "admin" } }, t:client()
    player:send("wipe")
    assert.are.equal("guard", player:last("error").value.code)
    admin:send("wipe")
    assert.are.equal("admin:" .. admin.publicId, t.room.last)
    player:send("promote")
    player:send("wipe")
    assert.are.equal("admin:" .. player.publicId, t.room.last)
    t:close()
  end)

  it("a room-to-room fetch result is {status, ok, headers, body, json(), text()} and a route may return it", function()
    local target = lr.room {
      path = "target",
      requests = {
        ["GET /count"] = function() return { count = 7 } end,
        ["GET /teapot"] = function(_, _, res) return res:status(418):json { short = true } end,
      },
    }
    local t = testing.room(lr.room {
      path = "proxy",
      requests = {
        ["GET /shape"] = function(room)
          local res = room.parties.main:get("target"):fetch("/count")
          return { status = res.status, ok = res.ok, body = res.body, json = res.json(), json2 = res:json(),
                   text = res.text(), ctype = res.headers["content-type"] }
        end,
        ["GET /pass/:what"] = function(room, req) return room.parties.main:get("target"):fetch("/" .. req.params.what) end,
      },
    }, { rooms = { target } })
    local shape = t:http("GET", "/shape")
    assert.are.equal(200, shape.status)
    assert.are.same({ status = 200, ok = true, body = '{"count":7}', json = { count = 7 }, json2 = { count = 7 },
                      text = '{"count":7}', ctype = "application/json" }, shape.json)
    local pass = t:http("GET", "/pass/count")
    assert.are.equal(200, pass.status)
    assert.are.same({ count = 7 }, pass.json)
    local tea = t:http("GET", "/pass/teapot")
    assert.are.equal(418, tea.status)
    assert.are.same({ short = true }, tea.json)
    assert.are.equal("*", tea.headers["access-control-allow-origin"])
    t:close()
  end)

  it("writes made in the spec body reach clients without t:advance(0)", function()
    local t = testing.room(lr.room { path = "plain", state = { count = lr.sync(0), config = lr.sync { a = 1 } } })
    local c = t:client()
    c:clear()
    t.room.count = 5
    assert.are.equal(5, t.storage:get("state:count"))
    assert.are.same({ '{"type":"sync","value":{"count":5}}' }, c.raw)
    lr.load(t.room, { config = { a = 2 } })
    assert.are.same({ type = "sync", value = { config = { a = 2 } } }, c:last())
    t:close()
  end)
end)

describe("a WebSocket to a room that does not exist", function()
  it("is closed with 4004 'no such room' and creates no room", function()
    local t = testing.room(lr.room { path = "only" })
    local c = t:client { room = "nope" }
    assert.are.same({ code = 4004, reason = "no such room" }, c.closed)
    assert.is_nil(t.srv.rooms["main/nope"])
    t:close()
  end)
end)

describe("field order", function()
  it("sends state fields in declaration order (plain defaults after, by name), as the reference sends class fields", function()
    local t = testing.room(lr.room {
      path = "ordered",
      state = { zeta = lr.sync(1), players = lr.users { x = 0 }, alpha = lr.sync(2), online = lr.sync(false),
                mid = lr.persist(3), beta = 4, aaa = 5 },
    })
    local c = t:client()
    local raw = c.raw[1]
    local pos = function(k) return assert(raw:find('"' .. k .. '":', 1, true), k) end
    assert.is_true(pos("zeta") < pos("players") and pos("players") < pos("alpha") and pos("alpha") < pos("online"), raw)
    assert.is_true(pos("online") < pos("aaa") and pos("aaa") < pos("beta"), raw)
    t:close()
  end)
end)

describe("a hot reload that adds a file serving a path another file serves", function()
  it("is refused, as at start", function()
    local reload = require "lunaroom.reload"
    local t = testing.room(lr.room { path = "game" })
    local f = os.tmpname() .. ".lua"
    local fh = assert(_G.io.open(f, "w"))
    fh:write('local lr = require "lunaroom"\nreturn lr.room { path = "game" }\n')
    fh:close()
    testing.logs()
    local jobs = reload.run(t.srv, { { file = f } })
    os.remove(f)
    assert.is_false(jobs[1].ok)
    assert.truthy(jobs[1].err:find("path 'game' (party main) is already served by", 1, true), jobs[1].err)
    assert.are.equal(1, #t.srv.defs)
    t:close()
  end)
end)

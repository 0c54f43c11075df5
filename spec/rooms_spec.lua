-- The example rooms: api (HTTP routes), game, chat (broadcast, hooks, interceptor).
local testing = require "lunaroom.testing"

describe("rooms/api.lua (seed ApiRoom)", function()
  local t
  before_each(function() t = testing.room("rooms/api.lua") end)
  after_each(function() t:close() end)

  it("GET /status", function()
    t:client { id = "a" }
    local r = t:http("GET", "/status")
    assert.are.equal(200, r.status)
    assert.are.same({ status = "online", players = 1, gameState = "waiting" }, r.json)
  end)

  it("GET /players/:id finds a player, 404 with the helper's message otherwise", function()
    local c = t:client { id = "a", query = { name = "ann" } }
    local r = t:http("GET", "/players/" .. c.publicId)
    assert.are.same({ name = "ann", score = 0 }, r.json)
    local missing = t:http("GET", "/players/nobody")
    assert.are.equal(404, missing.status)
    assert.are.same({ error = "Player not found" }, missing.json)
  end)

  it("POST /scores validates the body and requires the guard", function()
    local ok = t:http("POST", "/scores", { body = { playerId = "p1", score = 3 }, headers = { Authorization = "Bearer x" } })
    assert.are.equal(200, ok.status)
    assert.are.same({ success = true }, ok.json)
    assert.are.same({ { playerId = "p1", score = 3 } }, require("lunaroom.core").copy(t.room.scores))
    local bad = t:http("POST", "/scores", { body = { playerId = "p1", score = -1 }, headers = { Authorization = "Bearer x" } })
    assert.are.equal(400, bad.status)
    assert.are.equal("Invalid request body", bad.json.error)
    assert.are.equal("ZodError", bad.json.details.name)
    assert.are.same({ "score" }, bad.json.details.issues[1].path)
    local noauth = t:http("POST", "/scores", { body = { playerId = "p1", score = 1 } })
    assert.are.equal(403, noauth.status)
    assert.are.same({ error = "Not permitted" }, noauth.json)
    local unparsable = t:http("POST", "/scores", { body = "{", headers = { ["content-type"] = "application/json", Authorization = "Bearer x" } })
    assert.are.same({ error = "Failed to parse request body" }, unparsable.json)
  end)

  it("matches whole paths only, and 404s unknown routes with CORS", function()
    assert.are.equal(404, t:http("GET", "/statusXYZ").status)
    assert.are.equal(404, t:http("GET", "/status/extra").status)
    assert.are.equal(404, t:http("POST", "/status").status)
    local r = t:http("GET", "/nope")
    assert.are.same({ error = "Not found" }, r.json)
    assert.are.equal("*", r.headers["access-control-allow-origin"])
  end)

  it("answers OPTIONS with 200 {} and 404s unknown rooms", function()
    local o = t:http("OPTIONS", "/anything")
    assert.are.equal(200, o.status)
    assert.are.equal("{}", o.body)
    -- control bytes, broken escapes and invalid UTF-8 never make a room name
    for _, bad in ipairs { "api%0Afake", "api%zz", "api%-1", "%ff%fe" } do
      assert.are.equal(404, t:http("GET", "/status", { room = bad }).status, bad)
    end
    local r = t:http("GET", "/status", { room = "no-such-room" })
    assert.are.equal(404, r.status)
    assert.are.same({ error = "Not found" }, r.json)
  end)
end)

describe("response helpers and return values", function()
  local lr = require "lunaroom"
  local t = testing.room(lr.room { path = "h", requests = {
    ["GET /text"] = function() return "hello" end,
    ["GET /num"] = function() return 42 end,
    ["GET /nil"] = function() end,
    ["GET /created"] = function(_, _, res) return res:status(201):header("X-A", "1"):json { ok = true } end,
    ["GET /redirect"] = function(_, _, res) return res:redirect("/x") end,
    ["GET /bad"] = function(_, _, res) return res:badRequest("nope", { field = "n" }) end,
    ["GET /unauth"] = function(_, _, res) return res:unauthorized() end,
    ["GET /err"] = function(_, _, res) return res:serverError() end,
    ["GET /throw"] = function() error("x") end,
    ["GET /p/:a/:b"] = function(_, req) return { a = req.params.a, b = req.params.b, q = req.query.q } end,
    ["GET /p/static/x"] = function() return "static" end,
    ["GET /guarded"] = { guards = { function(_, _, _) return false end }, run = function() return 1 end },
  } })

  it("follow the seed's helpers, with whole-path and static-first routing", function()
    local r = t:http("GET", "/text")
    assert.are.equal("hello", r.body)
    assert.are.equal("text/plain", r.headers["content-type"])
    assert.are.equal("42", t:http("GET", "/num").body)
    assert.are.equal("{}", t:http("GET", "/nil").body)
    r = t:http("GET", "/created")
    assert.are.equal(201, r.status); assert.are.equal("1", r.headers["x-a"])
    r = t:http("GET", "/redirect")
    assert.are.equal(302, r.status); assert.are.equal("/x", r.headers["location"])
    assert.are.same({ error = "nope", field = "n" }, t:http("GET", "/bad").json)
    assert.are.equal(401, t:http("GET", "/unauth").status)
    assert.are.equal(500, t:http("GET", "/err").status)
    r = t:http("GET", "/throw")
    assert.are.equal(500, r.status)
    assert.are.same({ error = "Internal Server Error" }, r.json)
    assert.are.same({ a = "x y", b = "2", q = "z" }, t:http("GET", "/p/x%20y/2?q=z").json)
    assert.are.equal("static", t:http("GET", "/p/static/x").body)
    assert.are.equal(403, t:http("GET", "/guarded").status)
    t:close()
  end)
end)

describe("rooms/game.lua (seed GameRoom)", function()
  it("moves the player within [0, 1000] and rejects the rest", function()
    local t = testing.room("rooms/game.lua")
    local a, b = t:client { id = "a" }, t:client { id = "b" }
    a:clear(); b:clear()
    a:send("move", { x = 10, y = 20 })
    local pid = a.publicId
    assert.are.same({ '{"type":"sync","value":{"players":{"' .. pid .. '":{"x":10,"y":20}}}}' }, b.raw)
    a:send("move", { x = 1001, y = 0 })
    assert.are.equal("validation", a:last("error").value.code)
    assert.are.equal(10, t.room.players[pid].x)
    t:close()
  end)
end)

describe("rooms/chat.lua", function()
  it("announces joins and leaves, broadcasts messages and filters muted members", function()
    local t = testing.room("rooms/chat.lua", { id = "chat-lobby" })
    assert.are.equal("lobby", t.room.params.name)
    local ann = t:client { id = "ann", query = { name = "Ann" } }
    local bob = t:client { id = "bob", query = { name = "Bob" } }
    assert.are.same({ type = "joined", value = { publicId = bob.publicId, name = "Bob" } }, ann:last("joined"))
    assert.is_nil(bob:last("joined")) -- not to itself
    bob:send("mute", ann.publicId)
    ann:clear(); bob:clear()
    ann:send("say", { text = "hi" })
    assert.are.same({ from = ann.publicId, name = "Ann", text = "hi" }, ann:last("message").value)
    assert.is_nil(bob:last("message"))
    bob:send("say", { text = "yo" })
    assert.are.equal("yo", ann:last("message").value.text)
    t:advance(50) -- throttled sync of the message counter
    assert.are.equal(2, t.room.messages)
    bob:close()
    assert.are.same({ type = "left", value = { publicId = bob.publicId, name = "Bob" } }, ann:last("left"))
    t:advance(50)
    assert.is_false(t.room.members[bob.publicId].online)
    t:close()
  end)
end)

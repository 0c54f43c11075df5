-- Operations endpoints (issue "Operations"): /healthz, /readyz, /metrics, /admin.
local testing = require "lunaroom.testing"
local core = require "lunaroom.core"

local function get(t, path, headers) return core.http(t.srv.h, "GET", path, "", headers or {}, nil) end

describe("operations endpoints", function()
  it("/healthz and /readyz", function()
    local t = testing.room("rooms/counter.lua")
    assert.are.same({ 200, { status = "ok" } }, { get(t, "/healthz").status, core.decode(get(t, "/healthz").body) })
    local r = get(t, "/readyz")
    assert.are.equal(200, r.status)
    assert.are.equal("ready", core.decode(r.body).status)
    t:close()
  end)

  it("/metrics counts connections, actions by room type, packets, rejections and versions", function()
    local t = testing.room("rooms/game.lua")
    local a, b = t:client { id = "a" }, t:client { id = "b" }
    a:send("move", { x = 1, y = 2 })
    a:send("move", { x = 5000, y = 2 })
    a:send("nope")
    b:close()
    local m = get(t, "/metrics")
    assert.are.equal(200, m.status)
    assert.truthy(m.headers["content-type"]:find("text/plain", 1, true))
    local body = m.body
    local function value(line) return tonumber(body:match("\n" .. line:gsub("[%[%]%(%)%.%+%-%*%?%^%$]", "%%%0") .. " (%S+)")) end
    assert.are.equal(1, value("lunaroom_connections"))
    assert.are.equal(2, value("lunaroom_connections_total"))
    assert.are.equal(3, value('lunaroom_actions_total{room="game"}'))
    assert.are.equal(1, value('lunaroom_rejected_total{reason="validation"}'))
    assert.are.equal(1, value('lunaroom_rejected_total{reason="unknown_action"}'))
    assert.is_true(value("lunaroom_packets_out_total") >= 4)
    assert.is_true(value("lunaroom_lua_memory_bytes") > 0)
    -- per room type, not per room (a scrape costs the same whatever the number of rooms)
    assert.truthy(body:find('lunaroom_room_info{path="game",version="%x+"} 1'))
    assert.are.equal(1, value('lunaroom_users{state="online"}'))
    assert.are.equal(1, value('lunaroom_users{state="offline"}'))
    assert.truthy(body:find('lunaroom_handler_seconds_bucket{le="+Inf"}', 1, true))
    t:close()
  end)

  it("/metrics needs the token when METRICS_TOKEN is set", function()
    local t = testing.room("rooms/counter.lua", { env = { METRICS_TOKEN = "s3cret" } })
    assert.are.equal(401, get(t, "/metrics").status)
    assert.are.equal(200, get(t, "/metrics", { authorization = "Bearer s3cret" }).status)
    t:close()
  end)

  it("/admin refuses without AUTH_JWT_SECRET or a valid token", function()
    local t = testing.room("rooms/counter.lua")
    assert.are.equal(503, get(t, "/admin").status)
    t:close()
    local t2 = testing.room("rooms/counter.lua", { env = { AUTH_JWT_SECRET = "k" } })
    local r = get(t2, "/admin", { authorization = "Bearer not-a-jwt" })
    assert.is_true(r.status == 403 or r.status == 503)
    t2:close()
  end)
end)

-- host/tests/fuzz/rooms/fuzz.lua: the room the packet and http fuzz targets
-- drive (with the example rooms of rooms/). It exercises what hostile input
-- can reach: schemas, guards (JWT included), arbitrary JSON written into
-- state, handlers that fail or run out of budget (rolled back), unhandled
-- actions, the per-recipient interceptor, and routes with params and bodies.
-- Must not: send packets of type "error" itself (fuzz_packet.c reads an
-- error packet as "this frame was rejected, state must be unchanged").
local lr = require "lunaroom"
local v = lr.v

local SECRET = "fuzz-secret"

local Player = lr.schema { x = lr.sync(0), y = lr.sync(0), name = lr.sync("anon"), online = lr.connected() }

return lr.room {
  path = "fz-{id}",
  maxUsers = 4,
  budget = 200000, -- instructions per call: the "spin" action hits it quickly
  throttleSync = 0,

  state = {
    count = lr.sync(0),
    data = lr.sync({}),
    list = lr.sync(lr.array {}),
    secret = lr.sync("hidden", { sync = false }),
    players = lr.users(Player),
  },

  guards = {
    function(_conn, ctxOrValue)
      if type(ctxOrValue) == "table" and ctxOrValue.request then
        local q = ctxOrValue.request.query
        if q.deny then return false end
        if q.auth then return lr.jwt.verify(lr.jwt.bearer(ctxOrValue), SECRET) ~= nil end
        return true
      end
      return ctxOrValue ~= "deny"
    end,
  },

  onJoin = function(_room, player, _conn, ctx)
    local name = ctx.request.query.name
    if name and #name > 0 then player.name = name:sub(1, 32) end
  end,

  actions = {
    inc = function(room, _p, value)
      if math.type(value) == "integer" and value > -1000 and value < 1000 then room.count = room.count + value end
    end,
    move = {
      schema = v.object { x = v.number():min(0):max(1000), y = v.number():min(0):max(1000) },
      run = function(_room, player, pos) player.x = pos.x; player.y = pos.y end,
    },
    set = {
      schema = v.object { key = v.string():min(1):max(16), value = v.any() },
      run = function(room, _p, kv) room.data[kv.key] = kv.value end,
    },
    del = {
      schema = v.string():max(16),
      run = function(room, _p, key) room.data[key] = nil end,
    },
    push = {
      schema = v.array(v.union { v.number(), v.string():max(8), v.boolean() }):max(8),
      run = function(room, _p, items)
        for _, it in ipairs(items) do room.list[#room.list + 1] = it end
        if #room.list > 64 then room.list = lr.array {} end
      end,
    },
    boom = function(room) room.count = room.count + 1; room.data.boom = true; error("boom") end,
    spin = function(room) room.count = room.count + 1; while true do end end,
    guarded = {
      guards = { function(_conn, value) return type(value) == "table" and value.ok == true end },
      run = function(room) room.count = room.count + 1 end,
    },
    token = function(room, _p, tok)
      local claims = lr.jwt.verify(type(tok) == "string" and tok or nil, SECRET)
      if claims and type(claims.sub) == "string" then room.data.sub = claims.sub:sub(1, 16) end
    end,
    shout = function(room, _p, value, conn)
      room:broadcast({ type = "shout", value = value }, { conn.id })
    end,
  },

  unhandled = function(room) room.count = room.count + 1 end,

  interceptorPacket = function(_room, _user, packet)
    if type(packet.value) == "table" and packet.value.drop then return nil end
    return packet
  end,

  requests = {
    ["GET /data/:key"] = function(room, req, res)
      local val = room.data[req.params.key]
      if val == nil then return res:notFound() end
      return { value = val }
    end,
    ["POST /data/:key"] = {
      schema = v.any(),
      run = function(room, req) room.data[req.params.key:sub(1, 16)] = req.data; return { ok = true } end,
    },
    ["DELETE /data/:key"] = function(room, req) room.data[req.params.key] = nil end,
    ["GET /me"] = {
      guards = { function(_conn, req) return lr.jwt.verify(lr.jwt.bearer(req), SECRET) ~= nil end },
      run = function(_room, req) return lr.jwt.verify(lr.jwt.bearer(req), SECRET) end,
    },
    ["GET /text"] = function() return "plain" end,
    ["PUT /count"] = {
      schema = v.object { count = v.integer() },
      run = function(room, req) room.count = req.data.count end,
    },
  },
}

-- An interceptor that waits (lunaroom.io.sleep) on the packets marked slow
-- for the connection whose session id is "slow" (waits.test.mjs).
local lr = require "lunaroom"
local io = require "lunaroom.io"
return lr.room {
  path = "icept-{id}",
  state = { n = 0 },
  rateLimit = { rate = 1000, burst = 1000 },
  actions = { say = function(room, _, v) room:broadcast({ type = "m", value = v }) end },
  interceptorPacket = function(_, _, packet, conn)
    if packet.type == "m" and packet.value.slow and conn.sessionId == "slow" then io.sleep(packet.value.slow) end
    return packet
  end,
}

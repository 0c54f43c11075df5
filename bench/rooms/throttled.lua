-- Benchmark room: the game room of bench.lua (rooms/game.lua: players
-- {x,y,score}, action move {x,y}) with throttleSync = 50 on the path
-- "throttled-{id}", for compare.mjs's fastgen row "game room, throttleSync
-- 50": moves within a 50 ms window go out as one patch (leading edge, then
-- at most one packet per window), so deliveries stay at about 20 packets/s
-- per client whatever the move rate. The per-connection rate limit is off:
-- the load generator decides the rate. The bare server (bench/limit) does
-- the same on any path holding "/throttled-".
-- ws://127.0.0.1:PORT/parties/main/throttled-<id>?id=<session>
local lr = require "lunaroom"
local v = lr.v

local Player = lr.schema {
  x = lr.sync(0),
  y = lr.sync(0),
  score = lr.sync(0),
}

return lr.room {
  path = "throttled-{id}",
  rateLimit = { rate = 0, burst = 0 },
  throttleSync = 50,

  state = {
    players = lr.users(Player),
    gameState = lr.sync("waiting"),
  },

  actions = {
    move = {
      schema = v.object { x = v.number():min(0):max(1000), y = v.number():min(0):max(1000) },
      run = function(_room, player, pos)
        player.x = pos.x
        player.y = pos.y
      end,
    },
  },
}

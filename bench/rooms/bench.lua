-- Benchmark room: rooms/game.lua (players {x,y,score}, action move {x,y} in
-- [0,1000]) on the path "bench-{id}", so a benchmark can open any number of
-- fresh rooms (one per scenario, 1,000 empty ones for the memory figure).
-- The per-connection rate limit is off: the load generator decides the rate,
-- and the reference (@signe/room) has no rate limit either.
-- ws://127.0.0.1:PORT/parties/main/bench-<id>?id=<session>
local lr = require "lunaroom"
local v = lr.v

local Player = lr.schema {
  x = lr.sync(0),
  y = lr.sync(0),
  score = lr.sync(0),
}

return lr.room {
  path = "bench-{id}",
  rateLimit = { rate = 0, burst = 0 },

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

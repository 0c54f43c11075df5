-- The seed README's GameRoom: players move on a 1000x1000 map.
-- ws://localhost:1999/parties/main/game?id=<session>
local lr = require "lunaroom"
local v = lr.v

local Player = lr.schema {
  x = lr.sync(0),
  y = lr.sync(0),
  score = lr.sync(0),
}

return lr.room {
  path = "game",

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

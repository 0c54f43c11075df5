-- The seed README's ApiRoom: HTTP routes next to synced state.
--   GET  /parties/main/api/status
--   GET  /parties/main/api/players/:id
--   POST /parties/main/api/scores   {playerId, score >= 0}, needs a Bearer token
local lr = require "lunaroom"
local guards = require "guards"
local v = lr.v

local Player = lr.schema { name = lr.sync("anon"), score = lr.sync(0) }

return lr.room {
  path = "api",

  state = {
    gameState = lr.sync("waiting"),
    players = lr.users(Player),
    scores = lr.sync(lr.array {}),
  },

  onJoin = function(_room, player, _conn, ctx)
    local name = ctx.request.query.name
    if name and #name > 0 then player.name = name:sub(1, 32) end
  end,

  requests = {
    ["GET /status"] = function(room)
      return { status = "online", players = #room.players, gameState = room.gameState }
    end,

    ["GET /players/:id"] = function(room, req, res)
      local player = room.players[req.params.id]
      if not player then return res:notFound("Player not found") end
      return player
    end,

    ["POST /scores"] = {
      schema = v.object { playerId = v.string(), score = v.number():min(0) },
      guards = { guards.bearer },
      run = function(room, req, res)
        room.scores[#room.scores + 1] = req.data
        return res:success { success = true }
      end,
    },
  },
}

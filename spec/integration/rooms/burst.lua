-- A room for the wire tests of joins batched by the network loop: unthrottled,
-- users, and an onJoin notice to everyone else (sent while later joiners of
-- the same loop turn still wait for their snapshot).
local lr = require "lunaroom"

return lr.room {
  path = "burst-{n}",
  state = { players = lr.users(lr.schema { x = lr.sync(0) }) },
  onJoin = function(room, _player, conn)
    room:broadcast({ type = "joined", value = conn.state.publicId }, { conn.id })
  end,
  actions = { move = function(_, p, v) p.x = v end },
}

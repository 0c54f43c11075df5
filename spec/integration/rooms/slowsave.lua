-- Storage written at most once a minute: only a graceful shutdown (or the
-- window) persists it. For the restart tests.
local lr = require "lunaroom"

return lr.room {
  path = "slowsave",
  throttleStorage = 60000,
  state = { players = lr.users(lr.schema { x = lr.sync(0) }), count = lr.sync(0) },
  actions = {
    inc = function(room) room.count = room.count + 1 end,
    move = function(_, p, v) p.x = v end,
  },
  requests = { ["GET /count"] = function(room) return { count = room.count } end },
}

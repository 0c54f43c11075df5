-- A room without a message rate limit (for tests that send bursts on purpose).
local lr = require "lunaroom"

return lr.room {
  path = "unlimited-{n}",
  rateLimit = { rate = 0, burst = 0 },
  state = { count = lr.sync(0) },
  actions = { inc = function(room) room.count = room.count + 1 end },
}

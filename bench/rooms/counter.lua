-- Benchmark counter room: rooms/counter.lua (one synced number, action
-- increment) on the path "counter-{id}" with the per-connection rate limit
-- off, for the fan-out rows of bench/fastgen: one client increments, every
-- client (itself included) gets each new count.
-- ws://127.0.0.1:PORT/parties/main/counter-<id>?id=<session>
local lr = require "lunaroom"

return lr.room {
  path = "counter-{id}",
  rateLimit = { rate = 0, burst = 0 },

  state = {
    count = lr.sync(0),
  },

  actions = {
    increment = {
      schema = lr.v.object { amount = lr.v.number():optional() }:optional(),
      run = function(room, _user, value)
        room.count = room.count + ((value and value.amount) or 1)
      end,
    },
  },
}

-- A room for the per-address budget wire test: each "work" message costs
-- some loop time (as a real action does) and is counted; the count is not
-- synced (no broadcast per message), GET /count reads it.
local lr = require "lunaroom"

return lr.room {
  path = "budget-{n}",
  state = { count = lr.persist(0) },
  actions = {
    work = function(room)
      local x = 0
      for i = 1, 10000 do x = x + i % 7 end
      room.count = room.count + 1 + x * 0
    end,
  },
  requests = {
    ["GET /count"] = function(room) return { count = room.count } end,
  },
}

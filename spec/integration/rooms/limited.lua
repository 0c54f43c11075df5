-- A room for the wire tests: maxUsers 2, users with lr.connected(), a slow
-- consumer trigger, packets of given sizes and an action that fails.
local lr = require "lunaroom"

return lr.room {
  path = "limited-{n}",
  maxUsers = 2,
  state = {
    players = lr.users(lr.schema { x = lr.sync(0), online = lr.connected() }),
    count = lr.sync(0),
  },
  actions = {
    inc = function(room) room.count = room.count + 1 end,
    move = function(_, p, v) p.x = v end,
    boom = function(room) room.count = 999; error("boom") end,
    -- Send n big packets to the caller (for the slow consumer test).
    flood = function(room, _, n, conn)
      local blob = string.rep("x", 60000)
      for i = 1, n do room:send(conn, { type = "blob", value = { i = i, data = blob } }) end
    end,
    -- Broadcast one packet per entry of sizes, its data that many bytes
    -- (frames of every header size, shared by every member's queue).
    sizes = function(room, _, sizes)
      for i, n in ipairs(sizes) do room:broadcast({ type = "sized", value = { i = i, data = string.rep(string.char(96 + i % 26), n) } }) end
    end,
  },
}

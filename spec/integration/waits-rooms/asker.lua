-- An action that fetches a route of another room (route.lua) that waits
-- for the service: an in-process room-to-room fetch resumed by the route's
-- answer (waits.test.mjs).
local lr = require "lunaroom"
return lr.room {
  path = "asker-{id}",
  state = { done = 0, status = 0, n = 0 },
  actions = {
    ask = function(room, _, v)
      local res = room.parties.main:get(v.room):fetch("/check?url=" .. v.url, { timeout = 10000 })
      room.status = res.status
      room.n = res.json().n
      room.done = room.done + 1
    end,
  },
}

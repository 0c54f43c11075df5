-- A room capped at 100 waiting handlers (waits.test.mjs): each action waits
-- for the service, then answers its sender alone. Counts over HTTP.
local lr = require "lunaroom"
local io = require "lunaroom.io"
return lr.room {
  path = "capped-{id}",
  state = { n = 0 },
  waits = { max = 100 },
  onCreate = function(room) room.counts = { done = 0 } end,
  actions = {
    buy = function(room, _, v, conn)
      local res = io.request("GET", v.url, { timeout = 10000 })
      if res.status ~= 200 then error("service answered " .. res.status) end
      room.counts.done = room.counts.done + 1
      room:send(conn, { type = "bought" })
    end,
  },
  requests = { ["GET /counts"] = function(room) return room.counts end },
}

-- An HTTP route that waits for the service (waits.test.mjs, shutdown).
local lr = require "lunaroom"
local io = require "lunaroom.io"
return lr.room {
  path = "route-{id}",
  state = { n = 0 },
  requests = {
    ["GET /check"] = function(room, req)
      local res = io.request("GET", req.query.url, { timeout = 10000 })
      room.n = room.n + 1
      return { status = res.status, n = room.n }
    end,
  },
}

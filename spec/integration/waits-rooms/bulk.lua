-- Many handlers waiting at once (waits.test.mjs): each action waits for the
-- service, then answers its sender alone (no state sync to every client, so
-- 1,000 actions cost 1,000 packets, not 1,000,000). Counts over HTTP.
local lr = require "lunaroom"
local io = require "lunaroom.io"
return lr.room {
  path = "bulk-{id}",
  state = { n = 0 },
  waits = { max = 2000 },
  onCreate = function(room) room.counts = { started = 0, done = 0 } end,
  actions = {
    buy = function(room, _, v, conn)
      room.counts.started = room.counts.started + 1
      local res = io.request("GET", v.url, { timeout = 20000 })
      if res.status ~= 200 then error("service answered " .. res.status .. " " .. tostring(res.error)) end
      room.counts.done = room.counts.done + 1
      room:send(conn, { type = "bought", value = v.i })
    end,
  },
  requests = {
    ["GET /counts"] = function(room) return room.counts end,
  },
}

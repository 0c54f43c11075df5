-- Rooms of waits.test.mjs: handlers that call a slow HTTP service.
local lr = require "lunaroom"
local io = require "lunaroom.io"

-- "slow-*": an action that waits for the service (its URL in the value).
-- (bulk.lua: 1,000 at once; capped.lua: waits.max = 100; fast.lua: a room
-- whose actions never wait.)
local function room(path, max)
  return lr.room {
    path = path,
    state = { done = 0, started = 0 },
    waits = max and { max = max } or nil,
    rateLimit = { rate = 1000, burst = 1000 },
    actions = {
      buy = function(r, _, v)
        r.started = r.started + 1
        local res = io.request("GET", v.url, { timeout = 10000 })
        if res.status ~= 200 then error("service answered " .. res.status .. " " .. tostring(res.error)) end
        r.done = r.done + 1
        return nil
      end,
      ping = function(r, _, v) r.done = v.n end,
    },
  }
end

return room("slow-{id}", 2000)

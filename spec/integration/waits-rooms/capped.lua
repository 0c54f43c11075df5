local lr = require "lunaroom"
local io = require "lunaroom.io"
return lr.room {
  path = "capped-{id}",
  state = { done = 0 },
  waits = { max = 100 },
  actions = {
    buy = function(r, _, v)
      local res = io.request("GET", v.url, { timeout = 10000 })
      if res.status ~= 200 then error("service answered " .. res.status) end
      r.done = r.done + 1
    end,
  },
}

local lr = require "lunaroom"
return lr.room {
  path = "fast-{id}",
  state = { n = 0 },
  rateLimit = { rate = 10000, burst = 10000 },
  actions = { ping = function(r, _, v) r.n = v end },
}

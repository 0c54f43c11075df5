-- The seed's ApiRoom as an outside check ported it (spec/integration/compat.test.mjs).
local lr = require "lunaroom"
local v = lr.v

return lr.room {
  path = "api-{n}",
  state = { scores = lr.sync(lr.array {}) },
  requests = {
    ["POST /scores"] = {
      schema = v.object { playerId = v.string(), score = v.number():min(0) },
      guards = { function(_, req) return (req.headers.authorization or ""):match("^Bearer%s+%S+") ~= nil end },
      run = function(room, req, res)
        room.scores[#room.scores + 1] = req.data
        return res:success { success = true }
      end,
    },
    ["PUT /echo/:a/:b"] = function(_, req)
      return { a = req.params.a, b = req.params.b, data = req.data, raw = req.body }
    end,
    ["PUT /echo/:a/:b/:c"] = function(_, req)
      return { a = req.params.a, b = req.params.b, c = req.params.c }
    end,
  },
}

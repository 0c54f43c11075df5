-- The seed README's Node adapter example (CounterRoom) in Lua.
-- ws://localhost:1999/parties/main/demo, action "increment" {amount?},
-- GET /parties/main/demo/count -> {"count": n}
local lr = require "lunaroom"

return lr.room {
  path = "demo",

  state = {
    count = lr.sync(0),
  },

  actions = {
    increment = {
      schema = lr.v.object { amount = lr.v.number():optional() }:optional(),
      run = function(room, _user, value)
        room.count = room.count + ((value and value.amount) or 1)
      end,
    },
  },

  requests = {
    ["GET /count"] = function(room) return { count = room.count } end,
  },
}

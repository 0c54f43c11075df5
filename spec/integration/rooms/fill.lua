-- A room whose persisted state can be made large on demand: fills a SQLite
-- file capped with ?max_page_count= (a full disk, storage_failure.test.mjs).
local lr = require "lunaroom"

return lr.room {
  path = "fill-{id}",
  state = { count = 0, blob = "" },
  actions = {
    inc = function(room) room.count = room.count + 1 end,
    fill = function(room, _, n) room.blob = string.rep("x", n) end,
  },
  requests = { ["GET /count"] = function(room) return { count = room.count, blob = #room.blob } end },
}

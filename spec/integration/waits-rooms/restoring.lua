-- A room that hibernates after 200 ms idle and whose onStorageRestore
-- waits for the service whose URL it stored (state svc) each time it is
-- rebuilt (waits.test.mjs).
local lr = require "lunaroom"
local io = require "lunaroom.io"
return lr.room {
  path = "restoring-{id}",
  hibernate = true, hibernateAfter = 200,
  state = { trail = {}, svc = "" },
  actions = {
    setup = function(r, _, url) r.svc = url end,
    mark = function(r, _, v) r.trail[#r.trail + 1] = v end,
  },
  onStorageRestore = function(ctx)
    local url = ctx.snapshot.svc
    if url and url ~= "" then io.request("GET", url, { timeout = 5000 }) end
    return ctx.snapshot
  end,
}

-- A room whose guards read an application header (x-room-token), declared
-- so the host copies it (libwebsockets cannot list custom headers).
local lr = require "lunaroom"

local TOKEN = "let-me-in"

return lr.room {
  path = "hdr",
  headers = { "x-room-token" },
  state = { name = lr.sync("hall") },
  guards = { function(_, ctx)
    if type(ctx) == "table" and ctx.request then return ctx.request.headers["x-room-token"] == TOKEN end
    return true
  end },
  requests = {
    ["GET /whoami"] = {
      guards = { function(_, req) return req.headers["x-room-token"] == TOKEN end },
      run = function(_, req) return { token = req.headers["x-room-token"], other = req.headers["x-other"] or lr.null } end,
    },
  },
}

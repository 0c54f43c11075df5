-- An HTTP route that calls an https:// service (waits.test.mjs: the
-- certificate is verified against --tls-ca).
local lr = require "lunaroom"
local io = require "lunaroom.io"
return lr.room {
  path = "tls-{id}",
  requests = {
    ["GET /call"] = function(_, req)
      local res = io.request("GET", req.query.url, { timeout = 5000 })
      return { status = res.status, body = res.body, error = res.error }
    end,
  },
}

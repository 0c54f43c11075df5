-- A room for the world/shard wire tests (world.test.mjs): users with a name
-- and a level, a route, and session transfer to a room of this process or of
-- another one (the test passes the other process's URL in the action).
local lr = require "lunaroom"

return lr.room {
  path = "xfer-{name}",
  state = {
    players = lr.users(lr.schema { name = lr.sync(""), level = lr.sync(1), online = lr.connected() }),
    count = lr.sync(0),
  },
  actions = {
    inc = function(room) room.count = room.count + 1 end,
    rename = function(_room, player, name) player.name = name end,
    -- {target = "xfer-b", url = "http://127.0.0.1:PORT"}: transfer the
    -- caller's session, then send it the token.
    go = function(room, _player, v, conn)
      if v.url then
        local ok, err = room:sessionTransfer(conn, v.target, { url = v.url }, function(_, token, why)
          conn:send { type = "transfer", value = { token = token or lr.null, error = why or lr.null } }
        end)
        if not ok then conn:send { type = "transfer", value = { error = err } } end
      else
        local token, err = room:sessionTransfer(conn, v.target)
        conn:send { type = "transfer", value = { token = token or lr.null, error = err or lr.null } }
      end
    end,
  },
  -- The target rewrites what it restores: level + 10, proof the hook ran.
  onSessionRestore = function(t)
    local snap = {}
    for k, val in pairs(t.userSnapshot) do snap[k] = val end
    snap.level = (snap.level or 0) + 10
    return snap
  end,
  requests = {
    ["GET /count"] = function(room, req)
      return { count = room.count, viaShard = req.headers["x-forwarded-by-shard"] == "true",
        shardId = req.headers["x-shard-id"] or lr.null, clientIp = req.headers["x-original-client-ip"] or lr.null }
    end,
  },
}

-- Guards shared by the example rooms (a plain module: `require "guards"`).
local M = {}

--- Room/action guard: the connection has a session (publicId) already.
function M.has_session(conn)
  return conn ~= nil and conn.state ~= nil and conn.state.publicId ~= nil
end

--- Request guard: an "Authorization: Bearer <anything>" header is present.
-- (Real rooms verify a JWT here; see the security section of the README.)
function M.bearer(_conn, req)
  local auth = req and req.headers and req.headers["authorization"] or ""
  return auth:match("^Bearer%s+%S+") ~= nil
end

return M

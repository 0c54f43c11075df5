-- A chat room: join/leave notices, messages broadcast to everyone, muted users
-- filtered per recipient by interceptorPacket.
--   ws://localhost:1999/parties/main/chat-<name>?id=<session>&name=<display name>
local lr = require "lunaroom"
local v = lr.v

local Member = lr.schema {
  name = lr.sync("anon"),
  online = lr.connected(),
  muted = lr.sync(lr.array {}), -- publicIds this member does not want to hear
}

return lr.room {
  path = "chat-{name}",
  throttleSync = 50,

  state = {
    members = lr.users(Member),
    topic = lr.sync(""),
    messages = lr.sync(0), -- how many messages were sent
  },

  onJoin = function(room, member, conn, ctx)
    local name = ctx.request.query.name
    if name and #name > 0 then member.name = name:sub(1, 32) end
    room:broadcast({ type = "joined", value = { publicId = conn.state.publicId, name = member.name } },
      { conn.id })
  end,

  onLeave = function(room, member, conn)
    room:broadcast { type = "left", value = { publicId = conn.state.publicId, name = member and member.name } }
  end,

  actions = {
    say = {
      schema = v.object { text = v.string():min(1):max(500) },
      run = function(room, member, msg, conn)
        room.messages = room.messages + 1
        room:broadcast { type = "message", value = { from = conn.state.publicId, name = member.name, text = msg.text } }
      end,
    },
    topic = {
      schema = v.string():max(100),
      run = function(room, _member, topic) room.topic = topic end,
    },
    mute = {
      schema = v.string(),
      run = function(_room, member, publicId) member.muted[#member.muted + 1] = publicId end,
    },
  },

  -- Drop chat messages from muted members, per recipient.
  interceptorPacket = function(_room, member, packet)
    if member and packet.type == "message" then
      for _, pid in pairs(member.muted) do
        if pid == packet.value.from then return nil end
      end
    end
    return packet
  end,
}

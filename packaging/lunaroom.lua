-- /etc/lunaroom/lunaroom.lua: the options of `lunaroom serve` for the
-- lunaroom service (keys are the flags with '_' for '-'; see
-- `lunaroom serve --help`). After a change: systemctl restart lunaroom.
-- Room files in /etc/lunaroom/rooms are hot-reloaded, and re-read on
-- `systemctl reload lunaroom`.
return {
  rooms = "/etc/lunaroom/rooms",
  port = 1999,
  -- host = "127.0.0.1",           -- behind a reverse proxy
  storage = "sqlite:/var/lib/lunaroom/lunaroom.sqlite",
  max_conns = 20000,               -- LimitNOFILE in the unit is 65536
  log_format = "json",             -- journalctl -u lunaroom -o cat | jq
  -- TLS (https:// and wss:// on the same port; re-read on systemctl reload).
  -- The files must be readable by the lunaroom user.
  -- tls_cert = "/etc/lunaroom/tls/fullchain.pem",
  -- tls_key = "/etc/lunaroom/tls/privkey.pem",
  -- tls_ca = "/etc/lunaroom/tls/ca.pem",   -- for outgoing https/wss links
}

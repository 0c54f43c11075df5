/*
 * uplink.c - the main-server side of shard processes (protocol.md §7.6): a
 * WebSocket opened with x-shard-id is a shard relaying its clients.
 *
 * Owns: accepting or refusing shard uplinks (SHARD_SECRET), and, once the
 * world/shard issue lands, the virtual connections of relayed clients.
 * Must not: run room rules itself (it opens connections through room.c).
 *
 * Today every uplink is refused with close code 4001 and a log line, so a
 * request that claims to come from a shard never reaches a room.
 */
#include "engine.h"
#include "log.h"

int lr_uplink_open(lr_room *r, const lr_request *req, const lr_transport_vt *vt, void *tp,
                   lr_conn **out) {
  (void)vt;
  (void)tp;
  *out = NULL;
  lr_warn("room %s: shard uplink from %s refused (shards are not enabled on this server)", r->key,
          req->remote_addr ? req->remote_addr : "-");
  return 403;
}

void lr_uplink_message(lr_conn *c, const char *data, size_t len) {
  (void)c;
  (void)data;
  (void)len;
}

void lr_uplink_closed(lr_conn *c) {
  (void)c;
}

/*
 * shard.h - shard mode of a server process (protocol.md §7.5, §7.6):
 * `lunaroom serve --shard MAIN_URL` relays the clients that connect to
 * /parties/shard/{shardId} to the main server that holds the room, and
 * reports its connection counts to the world.
 *
 * Owns: enabling shard mode on a server and its lifecycle (see shard.c).
 * Must not: be needed by a server that is not a shard (room.c only calls
 * the engine hooks of engine.h when lr_server.shard is set).
 */
#ifndef LR_SHARD_H
#define LR_SHARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server.h"

typedef struct lr_shard_opts {
  const char *main_url;      /* http://host:port of the main server (required) */
  const char *world_url;     /* where /update-shard reports go; NULL = main_url */
  const char *world_id;      /* first rule of the world id resolution (§7.5), or NULL */
  int64_t stats_interval_ms; /* forced report period; 0 = default 30000, < 0 = off */
  int64_t linger_ms;         /* a shard with no client is dropped after this; 0 = 60000 */
  bool forward_world;        /* relay HTTP /parties/world/... to world_url */
  size_t max_frame;          /* largest client frame the main server accepts (64 KiB) */
} lr_shard_opts;

/* Turn s into a shard process. Needs SHARD_SECRET in the server's env (the
 * Lua server table's env); returns 0, or -1 with a message in err. */
int lr_shard_enable(lr_server *s, const lr_shard_opts *o, char *err, size_t errlen);
/* Free the shard state (after the loop ended; sockets are already closed). */
void lr_shard_free(lr_server *s);

#endif

/*
 * uplink.h - the main-server side of shard processes (uplink.c).
 *
 * Owns: lr_uplink_install.
 * Must not: be included by the engine files (they call s->relay_open).
 */
#ifndef LR_UPLINK_H
#define LR_UPLINK_H

#include "server.h"

/* s accepts shard uplinks (x-shard-id WebSockets, checked with its
 * SHARD_SECRET): every server the host builds does. */
void lr_uplink_install(lr_server *s);

#endif

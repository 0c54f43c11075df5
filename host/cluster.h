/*
 * cluster.h - a cluster node's relaying of rooms that other nodes own
 * (cluster.c): any node serves any client.
 *
 * Owns: enabling relaying on a server (`serve --cluster ... --node-url`),
 * its figures and its teardown.
 * Must not: be needed by a server that is not a cluster node (the engine
 * only calls s->cluster when it is set).
 */
#ifndef LR_CLUSTER_H
#define LR_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "server.h"
#include "storage.h"

typedef struct lr_cluster_opts {
  const char *node_url; /* this node's URL, as in the lease rows (--node-url) */
  size_t max_frame;     /* largest client frame the owner accepts (64 KiB) */
} lr_cluster_opts;

/* Relay the clients of rooms other nodes own to them. Needs SHARD_SECRET in
 * the server's env (nodes authenticate to each other with it, as shards
 * do); returns 0, or -1 with a message in err. */
int lr_cluster_enable(lr_server *s, const lr_cluster_opts *o, char *err, size_t errlen);
/* Hand every room of this node to the others (POST /admin/drain): each is
 * written, its lease given back once committed, its sockets closed (1001;
 * other nodes' links follow the room); from now on this node takes no
 * lease. Returns the number of rooms, or -1 when s is not a cluster node. */
int lr_cluster_drain(lr_server *s);
/* Take leases again after a drain (POST /admin/undrain): rooms that moved
 * stay where they are; a room nobody holds asked for here is taken here
 * again. Returns 1 when the node was drained, 0 when it was not, -1 when s
 * is not a cluster node. */
int lr_cluster_undrain(lr_server *s);
/* The relay figures for /metrics (at most max; returns how many). */
size_t lr_cluster_stats(lr_server *s, lr_store_stat *out, size_t max);
/* Free the relay state (after the loop ended). */
void lr_cluster_free(lr_server *s);

#endif

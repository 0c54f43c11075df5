/*
 * cluster_int.h - what the three files of a cluster node's relaying share:
 * cluster.c (the directory cache, HTTP forwarding, enabling and freeing the
 * relay), cluster_link.c (the links to owners, the relayed clients on them,
 * following a room that moves), cluster_lua.c (require "lunaroom.cluster":
 * drain, the cluster-wide room list, the relay figures for ops.lua).
 *
 * Owns: the relay's types and the calls between those files.
 * Must not: be included by anything else (cluster.h is the face).
 */
#ifndef LR_CLUSTER_INT_H
#define LR_CLUSTER_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <lua.h>

#include "buf.h"
#include "engine.h"
#include "fetch.h"

#define DIR_BUCKETS 4096

typedef struct cluster cluster;
typedef struct rlink rlink;

typedef struct dentry {
  struct dentry *next;
  char *key, *owner;
  int64_t until; /* lr_now ms: the lease's expiry as the store saw it */
} dentry;

/* One relayed client socket (lr_conn.relay_client). */
typedef struct rclient {
  rlink *l; /* NULL once its link is gone */
  lr_conn *c;
  char *priv;
  lr_request req; /* deep copy (lr_request_copy): sent again when the room moves, or opened here */
} rclient;

/* A client frame held while the room's next owner is looked up. */
typedef struct held {
  struct held *next;
  rclient *rc; /* NULL once that client left */
  size_t len;
  char data[];
} held;

typedef struct resolve {
  rlink *l; /* NULL once the link is gone */
} resolve;

/* The WebSocket to the owner of one room, carrying its clients here. */
struct rlink {
  cluster *cl;
  char *key, *ns, *id, *owner;
  lr_wsc *w;      /* NULL once closed */
  bool open;      /* handshake done */
  bool dead;      /* closed or failed: no new clients; freed when empty */
  bool resolving; /* the owner went: looking up the next one, clients held */
  int64_t give_up_at;
  uint64_t retry_timer;
  resolve *res;      /* a lookup in flight (the store's ready callback) */
  held *hq, **htail; /* frames held while resolving, in arrival order */
  size_t hbytes;
  rclient **v; /* in connect order */
  uint32_t n, cap;
  rlink *next;
};

typedef struct fwd {
  cluster *cl;
  uint64_t id;
  char *key, *owner;
  lr_response_cb done;
  void *ud;
  struct fwd *next;
} fwd;

struct cluster {
  lr_server *s;
  char *node_url, *secret;
  size_t max_client_frame;
  dentry *dir[DIR_BUCKETS];
  uint32_t ndir;
  rlink *links;
  fwd *fwds;
  bool shutting_down;
  bool draining; /* POST /admin/drain: no more leases taken here */
  uint64_t n_drains;
  uint64_t n_relayed_total, n_links_total, n_link_losses, n_http_forwarded;
  uint64_t n_repointed, n_taken_over; /* rooms moved under relayed clients */
  uint32_t n_relayed_open;
  char learned[512]; /* learn()'s answer */
};

static inline char *xstrdup(const char *s) {
  return lr_xstrndup(s, strlen(s));
}

/* ---- cluster.c ---- */
/* Client headers only a node or shard may set: never passed on. */
bool cl_node_header(const char *name);
/* "ns/id"; the caller frees. */
char *cl_room_key(const char *ns, const char *id);
/* Forget key's owner if it is still owner (a link to it failed). */
void cl_dir_forget(cluster *cl, const char *key, const char *owner);
/* The owner's URL in holder ("NODE_URL VALID_MS", the store's answer),
 * cached until that lease's expiry; NULL when it is unusable or this node. */
const char *cl_learn(lr_server *s, const char *ns, const char *id, const char *holder);

/* ---- cluster_link.c ---- */
/* Relay client c of room ns/id to owner (the s->cluster vt's relay_ws). */
void cl_relay_ws(lr_server *s, lr_conn *c, const lr_request *req, const char *ns, const char *id,
                 const char *owner);
void cl_link_free(rlink *l);
/* Close the clients of l (all, or those of private id priv). */
void cl_close_clients(rlink *l, const char *priv, int code, const char *reason);

/* ---- cluster_lua.c ---- */
/* package.preload["lunaroom.cluster"] (upvalue 1: the server). */
int cl_luaopen(lua_State *L);

#endif

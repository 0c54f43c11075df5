/*
 * cluster.c - a cluster node's relaying (`serve --cluster ... --node-url`):
 * a client that reaches this node for a room another node owns is relayed
 * to the owner, WebSocket and HTTP, so any node serves any client.
 *
 * Owns: the directory cache (room -> owner's URL, from the lease row the
 * store read when it tried to take the room, kept until that lease's
 * expiry, dropped when a link to the owner fails); HTTP forwarding to the
 * owner (as a shard forwards, with x-forwarded-by-shard and the secret: the
 * owner's routes see the client's request; /session-transfer only with the
 * node secret); enabling, shutting down and freeing the relay (the
 * s->cluster vt) and the relay figures for /metrics.
 * The links and relayed clients are cluster_link.c's, the Lua face
 * (require "lunaroom.cluster": drain, /admin/cluster) cluster_lua.c's;
 * cluster_int.h holds what the three share.
 * Must not: run room code for relayed rooms, take or renew leases itself
 * (the store does: storage_postgres.c), look the owner up per message (the
 * lookup is on connect only), relay a request that came from another node
 * (router.c asks only about client requests: no relay loops), or block the
 * loop (links and requests go through fetch.c).
 */
#include "cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <lua.h>

#include "cluster_int.h"
#include "engine.h"
#include "relay_id.h"
#include "fetch.h"
#include "hash.h"
#include "log.h"

#define DIR_MAX 65536            /* rooms remembered at once; past it, not cached */
#define FRAME_OVERHEAD 1024      /* envelope bytes around a relayed client frame */
#define FORWARD_TIMEOUT_MS 30000 /* one forwarded HTTP exchange */
#define MAX_HEADERS 64

/* Client headers only a node or shard may set: never passed on. */
bool cl_node_header(const char *name) {
  return strcasecmp(name, "x-access-shard") == 0 || strcasecmp(name, "x-shard-id") == 0 ||
         strcasecmp(name, "x-lunaroom-node") == 0 || strcasecmp(name, "x-shard-world-id") == 0 ||
         strcasecmp(name, "x-forwarded-by-shard") == 0 ||
         strcasecmp(name, "x-original-client-ip") == 0;
}

char *cl_room_key(const char *ns, const char *id) {
  size_t a = strlen(ns), b = strlen(id);
  char *k = lr_xmalloc(a + b + 2);
  memcpy(k, ns, a);
  k[a] = '/';
  memcpy(k + a + 1, id, b + 1);
  return k;
}

/* ------------------------------------------------------------ directory */

static uint32_t dir_hash(const char *k) {
  return lr_fnv1a(LR_FNV1A_INIT, k, strlen(k)) % DIR_BUCKETS;
}

static dentry **dir_slot(cluster *cl, const char *key) {
  dentry **pp = &cl->dir[dir_hash(key)];
  while (*pp && strcmp((*pp)->key, key) != 0)
    pp = &(*pp)->next;
  return pp;
}

static void dir_drop(cluster *cl, dentry **pp) {
  dentry *e = *pp;
  *pp = e->next;
  free(e->key);
  free(e->owner);
  free(e);
  cl->ndir--;
}

/* Forget key's owner if it is still owner (a link to it failed). */
void cl_dir_forget(cluster *cl, const char *key, const char *owner) {
  dentry **pp = dir_slot(cl, key);
  if (*pp && (!owner || strcmp((*pp)->owner, owner) == 0)) dir_drop(cl, pp);
}

static const char *c_owner(lr_server *s, const char *ns, const char *id) {
  cluster *cl = s->cluster_state;
  char *key = cl_room_key(ns, id);
  dentry **pp = dir_slot(cl, key);
  free(key);
  if (!*pp) return NULL;
  if ((*pp)->until <= lr_now(s)) { /* the lease it saw has expired: ask the store again */
    dir_drop(cl, pp);
    return NULL;
  }
  return (*pp)->owner;
}

const char *cl_learn(lr_server *s, const char *ns, const char *id, const char *holder) {
  cluster *cl = s->cluster_state;
  const char *sp = strrchr(holder, ' ');
  size_t ulen = sp ? (size_t)(sp - holder) : strlen(holder);
  long long ms = sp ? atoll(sp + 1) : 0;
  if (ulen == 0 || ulen >= sizeof cl->learned ||
      (strncmp(holder, "http://", 7) != 0 && strncmp(holder, "https://", 8) != 0))
    return NULL;
  memcpy(cl->learned, holder, ulen);
  cl->learned[ulen] = 0;
  if (strcmp(cl->learned, cl->node_url) == 0) return NULL; /* never to itself */
  char *key = cl_room_key(ns, id);
  dentry **pp = dir_slot(cl, key);
  if (*pp) dir_drop(cl, pp);
  if (ms > 0 && cl->ndir < DIR_MAX) {
    dentry *e = lr_xcalloc(1, sizeof *e);
    e->key = key;
    e->owner = xstrdup(cl->learned);
    e->until = lr_now(s) + ms;
    e->next = cl->dir[dir_hash(key)];
    cl->dir[dir_hash(key)] = e;
    cl->ndir++;
  } else {
    free(key);
  }
  return cl->learned;
}

/* ------------------------------------------------------------ HTTP */

static void fwd_unlink(fwd *f) {
  for (fwd **pp = &f->cl->fwds; *pp; pp = &(*pp)->next) {
    if (*pp == f) {
      *pp = f->next;
      break;
    }
  }
}

static void fwd_free(fwd *f) {
  free(f->key);
  free(f->owner);
  free(f);
}

static void forward_done(void *ud, const lr_fetch_result *r) {
  fwd *f = ud;
  fwd_unlink(f);
  if (r->error || r->status == 409) /* unreachable, or no longer the owner: look again next time */
    cl_dir_forget(f->cl, f->key, f->owner);
  if (r->error) {
    lr_warn("cluster: forwarding a request for %s to %s failed: %s", f->key, f->owner, r->error);
    lr_respond_json(f->done, f->ud, 503, "{\"error\":\"Room owner unreachable, try again later\"}");
  } else {
    lr_relay_answer(f->done, f->ud, r);
  }
  fwd_free(f);
}

static void c_relay_http(lr_server *s, const lr_request *req, const char *ns, const char *id,
                         const char *owner, lr_response_cb done, void *ud) {
  cluster *cl = s->cluster_state;
  size_t pl = strlen(req->path);
  /* A session transfer (room:sessionTransfer with {url = a node}) carries
   * the node secret: it is forwarded with it, as a node's own request
   * (x-lunaroom-node: not relayed again); without the secret, refused. */
  bool transfer = pl >= 17 && strcmp(req->path + pl - 17, "/session-transfer") == 0;
  /* The world (party "world", lua/lunaroom/world.lua) takes the node secret
   * as an admin's credential: its requests go as a shard forwards them
   * (shard.c), with the client's own credentials only (its x-access-shard
   * included: a shard's report), marked as a node's (x-lunaroom-node: not
   * relayed again), never with the secret. */
  bool world = strcmp(ns, "world") == 0;
  if (transfer) {
    const char *given = lr_request_header(req, "x-access-shard");
    size_t a = given ? strlen(given) : 0, b = strlen(cl->secret);
    unsigned d = !given || a != b;
    for (size_t i = 0; i < b; i++) /* constant time in the secret's length */
      d |= (unsigned char)cl->secret[i] ^ (unsigned char)(i < a ? given[i] : 0);
    if (d) {
      lr_respond_json(done, ud, 401, "{\"error\":\"Invalid shard credentials\"}");
      return;
    }
  }
  lr_buf url, xf;
  lr_buf_init(&url);
  lr_buf_init(&xf);
  lr_buf_printf(&url, "%s%s", owner, req->path);
  if (req->query && *req->query) lr_buf_printf(&url, "?%s", req->query);
  lr_header hs[MAX_HEADERS + 4];
  size_t nh = 0;
  const char *xff = NULL;
  for (size_t i = 0; i < req->nheaders && nh < MAX_HEADERS; i++) {
    if (strcmp(req->headers[i].name, "x-forwarded-for") == 0) {
      xff = req->headers[i].value;
      continue;
    }
    if (cl_node_header(req->headers[i].name) &&
        !(world && strcasecmp(req->headers[i].name, "x-access-shard") == 0))
      continue;
    hs[nh++] = req->headers[i];
  }
  if (xff && *xff) lr_buf_printf(&xf, "%s, ", xff);
  lr_buf_puts(&xf, req->remote_addr ? req->remote_addr : "unknown");
  hs[nh++] = (lr_header){"x-forwarded-for", lr_buf_cstr(&xf)};
  if (world) {
    hs[nh++] = (lr_header){"x-lunaroom-node", cl->node_url};
  } else {
    hs[nh++] = transfer ? (lr_header){"x-lunaroom-node", cl->node_url}
                        : (lr_header){"x-forwarded-by-shard", "true"};
    hs[nh++] = (lr_header){"x-access-shard", cl->secret};
    hs[nh++] = (lr_header){"x-original-client-ip",
                           xff && *xff ? xff : (req->remote_addr ? req->remote_addr : "unknown")};
  }
  fwd *f = lr_xcalloc(1, sizeof *f);
  f->cl = cl;
  f->done = done;
  f->ud = ud;
  f->key = cl_room_key(ns, id);
  f->owner = xstrdup(owner);
  f->id = lr_fetch(s, req->method, lr_buf_cstr(&url), hs, nh, req->body ? req->body : "",
                   req->body ? req->bodylen : 0, FORWARD_TIMEOUT_MS, forward_done, f);
  lr_buf_free(&url);
  lr_buf_free(&xf);
  if (!f->id) {
    fwd_free(f);
    lr_respond_json(done, ud, 503, "{\"error\":\"Room owner unreachable, try again later\"}");
    return;
  }
  cl->n_http_forwarded++;
  f->next = cl->fwds;
  cl->fwds = f;
}

/* ------------------------------------------------------------ lifecycle */

static void c_shutdown(lr_server *s) {
  cluster *cl = s->cluster_state;
  if (!cl || cl->shutting_down) return;
  cl->shutting_down = true;
  for (rlink *l = cl->links; l; l = l->next)
    cl_close_clients(l, NULL, 1001, "server shutdown");
  while (cl->fwds) {
    fwd *f = cl->fwds;
    cl->fwds = f->next;
    lr_fetch_cancel(f->id);
    lr_respond_json(f->done, f->ud, 503, "{\"error\":\"Server is shutting down\"}");
    fwd_free(f);
  }
}

static const lr_cluster_vt cluster_vt = {c_owner, cl_learn, cl_relay_ws, c_relay_http, c_shutdown};

int lr_cluster_enable(lr_server *s, const lr_cluster_opts *o, char *err, size_t errlen) {
  char secret[512];
  lr_server_env(s, "SHARD_SECRET", secret, sizeof secret);
  if (!secret[0]) {
    snprintf(err, errlen, "SHARD_SECRET is not set: nodes authenticate to each other with it");
    return -1;
  }
  if (!o->node_url ||
      (strncmp(o->node_url, "http://", 7) != 0 && strncmp(o->node_url, "https://", 8) != 0)) {
    snprintf(err, errlen, "--node-url must be http://HOST:PORT (got %s)",
             o->node_url ? o->node_url : "nothing");
    return -1;
  }
  cluster *cl = lr_xcalloc(1, sizeof *cl);
  cl->s = s;
  cl->node_url = xstrdup(o->node_url);
  size_t n = strlen(cl->node_url);
  while (n && cl->node_url[n - 1] == '/')
    cl->node_url[--n] = 0;
  cl->secret = xstrdup(secret);
  size_t mf = o->max_frame ? o->max_frame : 64 * 1024;
  cl->max_client_frame = mf > 2 * FRAME_OVERHEAD ? mf - FRAME_OVERHEAD : mf / 2;
  s->cluster_state = cl;
  s->cluster = &cluster_vt;
  lua_State *L = s->L;
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushlightuserdata(L, s);
  lua_pushcclosure(L, cl_luaopen, 1);
  lua_setfield(L, -2, "lunaroom.cluster");
  lua_pop(L, 2);
  return 0;
}

size_t lr_cluster_stats(lr_server *s, lr_store_stat *out, size_t max) {
  cluster *cl = s->cluster_state;
  if (!cl) return 0;
  uint32_t links = 0;
  for (rlink *l = cl->links; l; l = l->next)
    links += !l->dead;
  lr_store_stat all[] = {
      {"lunaroom_cluster_relayed_connections", "gauge",
       "Client sockets on this node relayed to the room's owner.", (double)cl->n_relayed_open},
      {"lunaroom_cluster_relayed_connections_total", "counter",
       "Client sockets relayed to another node since start.", (double)cl->n_relayed_total},
      {"lunaroom_cluster_links", "gauge", "Open links to owners (one per relayed room).",
       (double)links},
      {"lunaroom_cluster_link_losses_total", "counter",
       "Links closed by their owner or failed (its clients here reconnect).",
       (double)cl->n_link_losses},
      {"lunaroom_cluster_http_forwarded_total", "counter",
       "HTTP requests forwarded to a room's owner.", (double)cl->n_http_forwarded},
      {"lunaroom_cluster_directory_entries", "gauge",
       "Rooms whose owner elsewhere is cached (until its lease's expiry).", (double)cl->ndir},
  };
  size_t n = sizeof all / sizeof *all;
  if (n > max) n = max;
  memcpy(out, all, n * sizeof *out);
  return n;
}

void lr_cluster_free(lr_server *s) {
  cluster *cl = s->cluster_state;
  if (!cl) return;
  c_shutdown(s);
  while (cl->links)
    cl_link_free(cl->links);
  for (uint32_t b = 0; b < DIR_BUCKETS; b++)
    while (cl->dir[b])
      dir_drop(cl, &cl->dir[b]);
  s->cluster = NULL;
  s->cluster_state = NULL;
  free(cl->node_url);
  free(cl->secret);
  free(cl);
}

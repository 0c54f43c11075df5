/*
 * cluster.c - a cluster node's relaying (`serve --cluster ... --node-url`):
 * a client that reaches this node for a room another node owns is relayed
 * to the owner, WebSocket and HTTP, so any node serves any client.
 *
 * Owns: the directory cache (room -> owner's URL, from the lease row the
 * store read when it tried to take the room, kept until that lease's
 * expiry, dropped when a link to the owner fails); the links (one
 * WebSocket to the owner per relayed room, carrying every client of that
 * room on this node: shard.c's framing, so the owner's side is uplink.c,
 * unchanged: shard.clientConnected / clientMessage / clientDisconnected up,
 * broadcasts, {"targetClientId","data"} and shard.closeClient down); the
 * relayed clients (lr_conn.relay_client); HTTP forwarding to the owner (as
 * a shard forwards, with x-forwarded-by-shard and the secret: the owner's
 * routes see the client's request, /session-transfer is not forwarded);
 * the relay figures for /metrics.
 * Must not: run room code for relayed rooms, take or renew leases itself
 * (the store does: storage_postgres.c), look the owner up per message (the
 * lookup is on connect only), relay a request that came from another node
 * (router.c asks only about client requests: no relay loops), or block the
 * loop (links and requests go through fetch.c).
 *
 * When the owner goes (its link closes: kill -9, lease lost, shutdown,
 * drain), the room's relayed clients here are closed with 1012, which the
 * npm client reconnects on; the reconnect finds the new owner (or takes the
 * lease here once the old one expired).
 */
#include "cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <lua.h>

#include "engine.h"
#include "relay_id.h"
#include "fetch.h"
#include "hash.h"
#include "json.h"
#include "log.h"
#include "lua_vm.h"
#include "storage_postgres.h"

#define DIR_BUCKETS 4096
#define DIR_MAX 65536            /* rooms remembered at once; past it, not cached */
#define MAX_PRIVATE_ID 256       /* uplink.c refuses longer client ids */
#define MAX_BACKLOG (8u << 20)   /* bytes waiting on a link before clients are refused */
#define FRAME_OVERHEAD 1024      /* envelope bytes around a relayed client frame */
#define FORWARD_TIMEOUT_MS 30000 /* one forwarded HTTP exchange */
#define MAX_HEADERS 64
#define MAX_HELD (1u << 20)  /* bytes held per room while its next owner is looked up */
#define REPOINT_RETRY_MS 100 /* the old owner still holds the lease: look again after */
#define REPOINT_MAX_MS 15000 /* ... and give up (clients reconnect) after this */

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
  lr_request req; /* deep copy: sent again when the room moves, or opened here */
  lr_header *headers;
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

static char *xstrdup(const char *s) {
  return lr_xstrndup(s, strlen(s));
}

/* Client headers only a node or shard may set: never passed on. */
static bool node_header(const char *name) {
  return strcasecmp(name, "x-access-shard") == 0 || strcasecmp(name, "x-shard-id") == 0 ||
         strcasecmp(name, "x-lunaroom-node") == 0 || strcasecmp(name, "x-shard-world-id") == 0 ||
         strcasecmp(name, "x-forwarded-by-shard") == 0 ||
         strcasecmp(name, "x-original-client-ip") == 0;
}

static char *room_key(const char *ns, const char *id) {
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
static void dir_forget(cluster *cl, const char *key, const char *owner) {
  dentry **pp = dir_slot(cl, key);
  if (*pp && (!owner || strcmp((*pp)->owner, owner) == 0)) dir_drop(cl, pp);
}

static const char *c_owner(lr_server *s, const char *ns, const char *id) {
  cluster *cl = s->cluster_state;
  char *key = room_key(ns, id);
  dentry **pp = dir_slot(cl, key);
  free(key);
  if (!*pp) return NULL;
  if ((*pp)->until <= lr_now(s)) { /* the lease it saw has expired: ask the store again */
    dir_drop(cl, pp);
    return NULL;
  }
  return (*pp)->owner;
}

static const char *c_learn(lr_server *s, const char *ns, const char *id, const char *holder) {
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
  char *key = room_key(ns, id);
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

/* ------------------------------------------------------------ links */

static void link_free(rlink *l) {
  cluster *cl = l->cl;
  for (rlink **pp = &cl->links; *pp; pp = &(*pp)->next) {
    if (*pp == l) {
      *pp = l->next;
      break;
    }
  }
  for (uint32_t i = 0; i < l->n; i++)
    l->v[i]->l = NULL;
  if (l->w) lr_wsc_close(l->w, 1000, "no more clients");
  if (l->retry_timer) lr_timer_cancel(cl->s, l->retry_timer);
  if (l->res) l->res->l = NULL;
  while (l->hq) {
    held *h = l->hq;
    l->hq = h->next;
    free(h);
  }
  free(l->v);
  free(l->key);
  free(l->ns);
  free(l->id);
  free(l->owner);
  free(l);
}

static void close_clients(rlink *l, const char *priv, int code, const char *reason) {
  uint32_t n = l->n;
  lr_conn **cs = lr_xmalloc((n ? n : 1) * sizeof *cs);
  uint32_t k = 0;
  for (uint32_t i = 0; i < n; i++)
    if (!priv || strcmp(l->v[i]->priv, priv) == 0) cs[k++] = l->v[i]->c;
  for (uint32_t i = 0; i < k; i++)
    lr_conn_close(cs[i], code, reason);
  free(cs);
}

static void link_send(rlink *l, const char *data, size_t len) {
  if (l->dead || !l->w || lr_wsc_send(l->w, data, len) != 0)
    lr_debug("cluster: frame for %s on %s dropped (link gone)", l->key, l->owner);
}

static void deliver(lr_conn *c, lr_msg *m) {
  if (c->phase == LR_C_JOINED && c->vt->send(c, m) != 0) lr_conn_close(c, 1008, "slow consumer");
}

static void l_open(void *ud) {
  rlink *l = ud;
  l->open = true;
  lr_info("cluster: link to %s for room %s open", l->owner, l->key);
}

static void link_lost(rlink *l, int code, const char *reason);

static void l_message(void *ud, const char *data, size_t len) {
  rlink *l = ud;
  /* Broadcasts are relayed verbatim; only the two envelope shapes (they
   * start with these keys, as uplink.c writes them) are parsed. */
  bool target = len > 18 && strncmp(data, "{\"targetClientId\":", 18) == 0;
  bool closing = len > 30 && strncmp(data, "{\"type\":\"shard.closeClient\"", 27) == 0;
  if (!target && !closing) {
    if (!l->n) return;
    lr_msg *m = lr_msg_new(data, len);
    for (uint32_t i = 0; i < l->n; i++)
      deliver(l->v[i]->c, m);
    lr_msg_release(m);
    return;
  }
  char err[120];
  lr_json_limits lim = {2, 8}; /* an envelope: one object of strings */
  lr_node *n = lr_json_decode(data, len, &lim, err, sizeof err);
  if (!n || n->type != LR_OBJECT) {
    lr_node_release(n);
    lr_warn("cluster: unreadable frame from %s for %s (%s); dropped", l->owner, l->key, err);
    return;
  }
  if (target) {
    const lr_node *to = lr_obj_get(n, "targetClientId", 14), *d = lr_obj_get(n, "data", 4);
    if (to && to->type == LR_STRING && d && d->type == LR_STRING) {
      lr_msg *m = lr_msg_new(d->u.str.s, d->u.str.len);
      for (uint32_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i]->priv, to->u.str.s) == 0) deliver(l->v[i]->c, m);
      lr_msg_release(m);
    }
  } else {
    const lr_node *p = lr_obj_get(n, "privateId", 9), *code = lr_obj_get(n, "code", 4),
                  *reason = lr_obj_get(n, "reason", 6);
    int cc = code && code->type == LR_INT ? (int)code->u.i : 1000;
    if (cc < 1000 || cc > 4999 || cc == 1004 || cc == 1005 || cc == 1006 || cc == 1015) cc = 1000;
    if (cc == 1001 || cc == 1012) {
      /* The owner is going away (shutdown, drain) or lost the room: every
       * client of the link goes with it; they stay here and follow the
       * room to its next owner (the link's own close would follow). */
      lr_node_release(n);
      link_lost(l, cc, "the owner let the room go");
      return;
    }
    if (p && p->type == LR_STRING)
      close_clients(l, p->u.str.s, cc, reason && reason->type == LR_STRING ? reason->u.str.s : "");
  }
  lr_node_release(n);
}

static void resolve_start(rlink *l);

/* The owner closed the link or could not be reached. Closes that mean the
 * room leaves that node (its shutdown or drain 1001, a lost lease 1012, not
 * the owner 4409, gone 1006) keep the clients here: the next owner is looked
 * up (resolve_start) and their frames wait meanwhile. Other closes (refused
 * credentials, errors) close the clients with 1012: they reconnect. */
static void link_lost(rlink *l, int code, const char *reason) {
  cluster *cl = l->cl;
  if (l->w) lr_wsc_close(l->w, 1000, "room moved"); /* no callback after this */
  l->w = NULL;
  l->open = false;
  dir_forget(cl, l->key, l->owner);
  if (cl->shutting_down || !l->n) {
    l->dead = true;
    if (!l->n) link_free(l);
    return;
  }
  cl->n_link_losses++;
  bool moved = code == 1001 || code == 1006 || code == 1012 || code == 4409;
  if (!moved) {
    l->dead = true;
    lr_warn("cluster: link to %s for room %s closed (%d %s); closing its %u relayed client(s) "
            "(1012, they reconnect)",
            l->owner, l->key, code, reason && *reason ? reason : "-", l->n);
    close_clients(l, NULL, 1012, "room moved to another node");
    return;
  }
  lr_info("cluster: link to %s for room %s closed (%d %s): looking up its next owner for %u "
          "relayed client(s)",
          l->owner, l->key, code, reason && *reason ? reason : "-", l->n);
  l->resolving = true;
  l->give_up_at = lr_now(cl->s) + REPOINT_MAX_MS;
  resolve_start(l);
}

static void l_closed(void *ud, int code, const char *reason) {
  rlink *l = ud;
  l->w = NULL; /* freed by fetch.c when this returns */
  link_lost(l, code, reason);
}

static const lr_wsc_cbs link_cbs = {l_open, l_message, l_closed};

static rlink *link_get(cluster *cl, const char *ns, const char *id, const char *owner) {
  char *key = room_key(ns, id);
  for (rlink *l = cl->links; l; l = l->next) {
    if (!l->dead && strcmp(l->key, key) == 0 && strcmp(l->owner, owner) == 0) { /* or resolving */
      free(key);
      return l;
    }
  }
  rlink *l = lr_xcalloc(1, sizeof *l);
  l->cl = cl;
  l->key = key;
  l->ns = xstrdup(ns);
  l->id = xstrdup(id);
  l->owner = xstrdup(owner);
  l->htail = &l->hq;
  l->next = cl->links;
  cl->links = l;
  lr_buf url;
  lr_buf_init(&url);
  lr_buf_printf(&url, "%s%s/", owner, cl->s->parties_prefix);
  lr_pct_encode(&url, ns);
  lr_buf_putc(&url, '/');
  lr_pct_encode(&url, id);
  lr_header h[3] = {
      {"x-shard-id", cl->node_url}, {"x-shard-world-id", ""}, {"x-access-shard", cl->secret}};
  l->w = lr_wsc_open(cl->s, lr_buf_cstr(&url), h, 3, &link_cbs, l);
  lr_buf_free(&url);
  cl->n_links_total++;
  if (!l->w) l->dead = true;
  lr_info("cluster: room %s is owned by %s: relaying its clients there", key, owner);
  return l;
}

/* ------------------------------------------------------------ relayed clients */

static void rc_message(lr_conn *c, const char *data, size_t len);
static void rc_closed(lr_conn *c);
static const lr_conn_ops relay_client_ops = {.message = rc_message, .closed = rc_closed};

static void close_later_cb(void *ud) {
  lr_conn *c = ud;
  lr_conn_close(c, 1013, "room owner unreachable, try again later");
  lr_conn_release(c);
}

static void req_copy(rclient *rc, const lr_request *req) {
  lr_request *q = &rc->req;
  q->method = xstrdup(req->method ? req->method : "GET");
  q->path = xstrdup(req->path ? req->path : "/");
  q->query = xstrdup(req->query ? req->query : "");
  q->remote_addr = req->remote_addr ? xstrdup(req->remote_addr) : NULL;
  rc->headers = lr_xcalloc(req->nheaders + 1, sizeof *rc->headers);
  for (size_t i = 0; i < req->nheaders; i++) {
    rc->headers[i].name = xstrdup(req->headers[i].name);
    rc->headers[i].value = xstrdup(req->headers[i].value ? req->headers[i].value : "");
  }
  q->headers = rc->headers;
  q->nheaders = req->nheaders;
}

static void rc_free(rclient *rc) {
  for (size_t i = 0; i < rc->req.nheaders; i++) {
    free((char *)rc->headers[i].name);
    free((char *)rc->headers[i].value);
  }
  free(rc->headers);
  free((char *)rc->req.method);
  free((char *)rc->req.path);
  free((char *)rc->req.query);
  free((char *)rc->req.remote_addr);
  free(rc->priv);
  free(rc);
}

/* shard.clientConnected for rc, with the request as the owner's room should see it. */
static void send_connected(rlink *l, rclient *rc) {
  lr_buf b;
  lr_buf_init(&b);
  lr_relay_client_connected(&b, rc->priv, &rc->req, node_header);
  link_send(l, b.data, b.len);
  lr_buf_free(&b);
}

static void send_message(rlink *l, rclient *rc, const char *data, size_t len) {
  lr_buf b;
  lr_buf_init(&b);
  lr_buf_puts(&b, "{\"type\":\"shard.clientMessage\",\"privateId\":");
  lr_json_put_string(&b, rc->priv, strlen(rc->priv));
  lr_buf_puts(&b, ",\"payload\":");
  lr_buf_put(&b, data, len);
  lr_buf_putc(&b, '}');
  link_send(l, b.data, b.len);
  lr_buf_free(&b);
}

static void link_add(rlink *l, rclient *rc) {
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 8;
    l->v = lr_xrealloc(l->v, l->cap * sizeof *l->v);
  }
  l->v[l->n++] = rc;
  rc->l = l;
}

static void c_relay_ws(lr_server *s, lr_conn *c, const lr_request *req, const char *ns,
                       const char *id, const char *owner) {
  cluster *cl = s->cluster_state;
  char *priv = lr_relay_private_id(s, req->query);
  rlink *l = strlen(priv) <= MAX_PRIVATE_ID ? link_get(cl, ns, id, owner) : NULL;
  rclient *rc = lr_xcalloc(1, sizeof *rc);
  rc->c = c;
  rc->priv = priv;
  req_copy(rc, req);
  c->relay_client = rc;
  c->ops = &relay_client_ops;
  c->phase = LR_C_JOINED;
  cl->n_relayed_open++;
  cl->n_relayed_total++;
  if (!l || l->dead) { /* closed on the next turn, never inside the caller's open */
    lr_warn("cluster: client for %s/%s not relayed to %s (%s)", ns, id, owner,
            l ? "the link could not be opened" : "its id is too long");
    lr_conn_retain(c);
    lr_timer_add_c(s, 0, close_later_cb, c);
    if (l && !l->n) link_free(l);
    return;
  }
  link_add(l, rc);
  if (!l->resolving) send_connected(l, rc); /* else: sent to the next owner */
  lr_info("cluster: conn %s (client %s) of %s relayed to %s", c->id, priv, l->key, owner);
  lr_conn_replay_early(c); /* what it sent while the lease was looked up, in order */
}

static void rc_message(lr_conn *c, const char *data, size_t len) {
  rclient *rc = c->relay_client;
  rlink *l = rc ? rc->l : NULL;
  if (!l || (l->dead && !l->resolving)) return;
  cluster *cl = l->cl;
  if (len > cl->max_client_frame) {
    lr_warn("cluster: client %s of %s sent %zu bytes (max %zu when relayed); closing", rc->priv,
            l->key, len, cl->max_client_frame);
    lr_conn_close(c, 1009, "frame too large");
    return;
  }
  /* Only JSON goes to the owner (the envelope embeds it as is). */
  lr_json_limits lim = LR_JSON_DEFAULT_LIMITS;
  lr_node *n = lr_json_decode(data, len, &lim, NULL, 0);
  if (!n) {
    lr_debug("cluster: non-JSON frame from client %s of %s dropped", rc->priv, l->key);
    return;
  }
  lr_node_release(n);
  if (l->resolving) { /* in order, after its clientConnected to the next owner */
    if (l->hbytes + len > MAX_HELD) {
      lr_warn("cluster: %zu bytes held for %s while its next owner is looked up; closing "
              "client %s",
              l->hbytes + len, l->key, rc->priv);
      lr_conn_close(c, 1013, "relay backlog");
      return;
    }
    held *h = lr_xmalloc(sizeof *h + len);
    h->next = NULL;
    h->rc = rc;
    h->len = len;
    memcpy(h->data, data, len);
    *l->htail = h;
    l->htail = &h->next;
    l->hbytes += len;
    return;
  }
  if (l->w && lr_wsc_queued(l->w) > MAX_BACKLOG) {
    lr_warn("cluster: %zu bytes wait for %s; closing client %s of %s", lr_wsc_queued(l->w),
            l->owner, rc->priv, l->key);
    lr_conn_close(c, 1013, "relay backlog");
    return;
  }
  send_message(l, rc, data, len);
}

static void rc_closed(lr_conn *c) {
  rclient *rc = c->relay_client;
  if (!rc) return;
  c->relay_client = NULL;
  cluster *cl = c->srv->cluster_state;
  if (cl && cl->n_relayed_open) cl->n_relayed_open--;
  rlink *l = rc->l;
  if (l) {
    for (uint32_t i = 0; i < l->n; i++) {
      if (l->v[i] == rc) {
        memmove(&l->v[i], &l->v[i + 1], (l->n - i - 1) * sizeof *l->v);
        l->n--;
        break;
      }
    }
    for (held *h = l->hq; h; h = h->next)
      if (h->rc == rc) h->rc = NULL;
    bool last = true;
    for (uint32_t i = 0; i < l->n && last; i++)
      last = strcmp(l->v[i]->priv, rc->priv) != 0;
    if (last && !l->dead && !l->resolving) {
      lr_buf b;
      lr_buf_init(&b);
      lr_buf_puts(&b, "{\"type\":\"shard.clientDisconnected\",\"privateId\":");
      lr_json_put_string(&b, rc->priv, strlen(rc->priv));
      lr_buf_putc(&b, '}');
      link_send(l, b.data, b.len);
      lr_buf_free(&b);
    }
    if (!l->n) link_free(l); /* the owner sees the link close: nothing of it is left there */
  }
  rc_free(rc);
}

/* ------------------------------------------------------------ the room moves */

/* The room's lease was taken here: its relayed clients become clients of the
 * local room, with the frames they sent meanwhile, in order; their sockets
 * stay open. */
static void make_local(rlink *l) {
  cluster *cl = l->cl;
  lr_server *s = cl->s;
  uint32_t n = l->n;
  rclient **v = l->v;
  l->v = NULL;
  l->n = l->cap = 0;
  held *hq = l->hq;
  l->hq = NULL;
  l->htail = &l->hq;
  l->dead = true;
  lr_info("cluster: room %s taken over here: its %u relayed client(s) join it locally", l->key, n);
  cl->n_taken_over++;
  link_free(l);
  for (uint32_t i = 0; i < n; i++) {
    rclient *rc = v[i];
    lr_conn *c = rc->c;
    c->relay_client = NULL;
    c->ops = NULL;
    c->phase = LR_C_JOINING;
    if (cl->n_relayed_open) cl->n_relayed_open--;
    lr_conn_retain(c);
    for (held *h = hq; h; h = h->next)
      if (h->rc == rc) lr_conn_message(c, h->data, h->len); /* to its early frames */
    lr_server_open_conn(s, c, &rc->req);
    lr_conn_release(c);
    rc_free(rc);
  }
  while (hq) {
    held *h = hq;
    hq = h->next;
    free(h);
  }
  free(v);
}

/* Another node owns the room now: the clients move to a link to it, each
 * announced again (the new owner sends each a snapshot), then the frames
 * they sent meanwhile, in order. */
static bool repoint(rlink *l, const char *owner) {
  cluster *cl = l->cl;
  rlink *nl = link_get(cl, l->ns, l->id, owner);
  if (nl == l || nl->dead) { /* no link to it could be opened: looked up again */
    if (!nl->n && nl != l) link_free(nl);
    return false;
  }
  lr_info("cluster: room %s moved to %s: its %u relayed client(s) follow it", l->key, owner, l->n);
  cl->n_repointed++;
  for (uint32_t i = 0; i < l->n; i++) {
    rclient *rc = l->v[i];
    link_add(nl, rc);
    if (!nl->resolving) send_connected(nl, rc);
  }
  l->n = 0;
  for (held *h = l->hq; h; h = h->next) {
    if (!h->rc || h->rc->l != nl) continue;
    if (nl->resolving) { /* (it lost its owner too: held there, in order) */
      held *c = lr_xmalloc(sizeof *c + h->len);
      memcpy(c, h, sizeof *c + h->len);
      c->next = NULL;
      *nl->htail = c;
      nl->htail = &c->next;
      nl->hbytes += h->len;
    } else {
      send_message(nl, h->rc, h->data, h->len);
    }
  }
  l->dead = true;
  link_free(l);
  return true;
}

static void give_up(rlink *l, const char *why) {
  lr_warn("cluster: no next owner for room %s (%s): closing its %u relayed client(s) (1012, they "
          "reconnect)",
          l->key, why, l->n);
  l->resolving = false;
  l->dead = true;
  close_clients(l, NULL, 1012, "room moved to another node");
}

static void retry_cb(void *ud) {
  rlink *l = ud;
  l->retry_timer = 0;
  resolve_start(l);
}

static void resolved(void *ud, int ok, const char *err) {
  resolve *res = ud;
  rlink *l = res->l;
  free(res);
  if (!l) return; /* its clients left meanwhile */
  l->res = NULL;
  cluster *cl = l->cl;
  if (cl->shutting_down) {
    give_up(l, "shutting down");
    return;
  }
  if (ok == 1) {
    make_local(l);
    return;
  }
  if (ok == LR_STORE_READY_ELSEWHERE && err) {
    const char *owner = c_learn(cl->s, l->ns, l->id, err);
    if (owner && strcmp(owner, l->owner) != 0 && repoint(l, owner)) return;
  }
  /* The old owner still holds the lease (it is handing off, or it died and
   * the lease has not expired yet), or the database failed: again shortly. */
  if (lr_now(cl->s) >= l->give_up_at) {
    give_up(l, ok == 0 && err ? err : "the old owner kept the lease");
    return;
  }
  l->retry_timer = lr_timer_add_c(cl->s, REPOINT_RETRY_MS, retry_cb, l);
}

/* Ask the store for the room: it takes the lease (the room is then ours)
 * or says who holds it. */
static void resolve_start(rlink *l) {
  cluster *cl = l->cl;
  resolve *res = lr_xcalloc(1, sizeof *res);
  res->l = l;
  l->res = res;
  char err[256] = "";
  int rc = lr_store_ready(cl->s->store, l->ns, l->id, resolved, res, err, sizeof err);
  if (rc != 0) resolved(res, rc > 0 ? 1 : 0, rc > 0 ? NULL : err);
}

/* ------------------------------------------------------------ HTTP */

static void respond_json(lr_response_cb done, void *ud, int status, const char *body) {
  lr_header h[5];
  memcpy(h, lr_cors_headers, sizeof lr_cors_headers);
  h[4] = (lr_header){"Content-Type", "application/json"};
  lr_response resp = {status, h, 5, body, strlen(body)};
  done(ud, &resp);
}

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
    dir_forget(f->cl, f->key, f->owner);
  if (r->error) {
    lr_warn("cluster: forwarding a request for %s to %s failed: %s", f->key, f->owner, r->error);
    respond_json(f->done, f->ud, 503, "{\"error\":\"Room owner unreachable, try again later\"}");
  } else {
    lr_header h[6];
    memcpy(h, lr_cors_headers, sizeof lr_cors_headers);
    size_t nh = LR_CORS_N;
    if (r->content_type) h[nh++] = (lr_header){"Content-Type", r->content_type};
    if (r->location) h[nh++] = (lr_header){"Location", r->location};
    lr_response resp = {r->status, h, nh, r->body, r->bodylen};
    f->done(f->ud, &resp);
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
  if (transfer) {
    const char *given = lr_request_header(req, "x-access-shard");
    size_t a = given ? strlen(given) : 0, b = strlen(cl->secret);
    unsigned d = !given || a != b;
    for (size_t i = 0; i < b; i++) /* constant time in the secret's length */
      d |= (unsigned char)cl->secret[i] ^ (unsigned char)(i < a ? given[i] : 0);
    if (d) {
      respond_json(done, ud, 401, "{\"error\":\"Invalid shard credentials\"}");
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
    if (node_header(req->headers[i].name)) continue;
    hs[nh++] = req->headers[i];
  }
  if (xff && *xff) lr_buf_printf(&xf, "%s, ", xff);
  lr_buf_puts(&xf, req->remote_addr ? req->remote_addr : "unknown");
  hs[nh++] = (lr_header){"x-forwarded-for", lr_buf_cstr(&xf)};
  hs[nh++] = transfer ? (lr_header){"x-lunaroom-node", cl->node_url}
                      : (lr_header){"x-forwarded-by-shard", "true"};
  hs[nh++] = (lr_header){"x-access-shard", cl->secret};
  hs[nh++] = (lr_header){"x-original-client-ip",
                         xff && *xff ? xff : (req->remote_addr ? req->remote_addr : "unknown")};
  fwd *f = lr_xcalloc(1, sizeof *f);
  f->cl = cl;
  f->done = done;
  f->ud = ud;
  f->key = room_key(ns, id);
  f->owner = xstrdup(owner);
  f->id = lr_fetch(s, req->method, lr_buf_cstr(&url), hs, nh, req->body ? req->body : "",
                   req->body ? req->bodylen : 0, FORWARD_TIMEOUT_MS, forward_done, f);
  lr_buf_free(&url);
  lr_buf_free(&xf);
  if (!f->id) {
    fwd_free(f);
    respond_json(done, ud, 503, "{\"error\":\"Room owner unreachable, try again later\"}");
    return;
  }
  cl->n_http_forwarded++;
  f->next = cl->fwds;
  cl->fwds = f;
}

/* ------------------------------------------------------------ drain */

int lr_cluster_drain(lr_server *s) {
  cluster *cl = s->cluster_state;
  if (!cl) return -1;
  if (!cl->draining) lr_info("cluster: draining: this node takes no more leases");
  cl->draining = true;
  lr_store_postgres_drain(s->store);
  uint32_t n = 0, cap = s->nrooms ? s->nrooms : 1;
  lr_room **rs = lr_xmalloc(cap * sizeof *rs);
  for (uint32_t b = 0; b < s->nbuckets; b++)
    for (lr_room *r = s->rooms[b]; r && n < cap; r = r->hash_next)
      if (!r->disposed) rs[n++] = lr_room_retain(r);
  /* Each room: written (its lease given back once committed), its sockets
   * closed with 1001: direct clients reconnect (elsewhere), other nodes'
   * links follow the room to whichever node takes it next. */
  for (uint32_t i = 0; i < n; i++) {
    if (!rs[i]->disposed) lr_room_dispose(rs[i]);
    lr_room_release(rs[i]);
  }
  free(rs);
  cl->n_drains++;
  lr_info("cluster: drained %u room(s)", n);
  return (int)n;
}

/* require("lunaroom.cluster").drain() -> rooms handed off (ops.lua, POST /admin/drain). */
static int l_drain(lua_State *L) {
  lr_server *s = lua_touserdata(L, lua_upvalueindex(1));
  lua_pushinteger(L, lr_cluster_drain(s));
  return 1;
}

typedef struct rooms_req {
  lr_server *s;
  int fn; /* registry ref of the Lua callback */
} rooms_req;

static void rooms_done(void *ud, const char *rows, size_t len, const char *err) {
  rooms_req *q = ud;
  lua_State *L = q->s->L;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, q->fn);
  lr_ref_release(L, q->fn);
  if (rows) {
    lr_buf b;
    lr_buf_init(&b);
    lr_buf_puts(&b, "[");
    lr_buf_put(&b, rows, len);
    lr_buf_puts(&b, "]");
    lua_pushlstring(L, b.data, b.len);
    lr_buf_free(&b);
    lua_pushnil(L);
  } else {
    lua_pushnil(L);
    lua_pushstring(L, err ? err : "failed");
  }
  /* Counted like every call into Lua; rules without call (never under
   * serve) drop the answer (the settop below). */
  if (q->s->rules->call) q->s->rules->call(q->s, "cluster rooms", 2, 0, NULL, 0);
  lua_settop(L, top);
  free(q);
}

/* require("lunaroom.cluster").rooms(limit, function(json_array | nil, err) end)
 * -> true, or nil, err: the rooms every node holds, from the lease table
 * (ops.lua, GET /admin/cluster). */
static int l_rooms(lua_State *L) {
  lr_server *s = lua_touserdata(L, lua_upvalueindex(1));
  lua_Integer limit = luaL_checkinteger(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  rooms_req *q = lr_xcalloc(1, sizeof *q);
  q->s = s;
  lua_pushvalue(L, 2);
  q->fn = lr_ref_take(L);
  if (lr_store_postgres_leases(s->store, (long)limit, rooms_done, q) != 0) {
    lr_ref_release(L, q->fn);
    free(q);
    lua_pushnil(L);
    lua_pushstring(L, "the database is not connected");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* require("lunaroom.cluster").stats() -> { {name, kind, help, value}, ... }
 * (ops.lua adds them to /metrics, after the store's). */
static int l_stats(lua_State *L) {
  lr_server *s = lua_touserdata(L, lua_upvalueindex(1));
  lr_store_stat v[16];
  size_t n = lr_cluster_stats(s, v, 16);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_createtable(L, 0, 4);
    lua_pushstring(L, v[i].name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, v[i].kind);
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, v[i].help);
    lua_setfield(L, -2, "help");
    lua_pushnumber(L, v[i].value);
    lua_setfield(L, -2, "value");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int luaopen_cluster(lua_State *L) {
  lua_createtable(L, 0, 4);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, l_stats, 1);
  lua_setfield(L, -2, "stats");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, l_drain, 1);
  lua_setfield(L, -2, "drain");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, l_rooms, 1);
  lua_setfield(L, -2, "rooms");
  lua_pushstring(
      L,
      ((cluster *)((lr_server *)lua_touserdata(L, lua_upvalueindex(1)))->cluster_state)->node_url);
  lua_setfield(L, -2, "node");
  return 1;
}

/* ------------------------------------------------------------ lifecycle */

static void c_shutdown(lr_server *s) {
  cluster *cl = s->cluster_state;
  if (!cl || cl->shutting_down) return;
  cl->shutting_down = true;
  for (rlink *l = cl->links; l; l = l->next)
    close_clients(l, NULL, 1001, "server shutdown");
  while (cl->fwds) {
    fwd *f = cl->fwds;
    cl->fwds = f->next;
    lr_fetch_cancel(f->id);
    respond_json(f->done, f->ud, 503, "{\"error\":\"Server is shutting down\"}");
    fwd_free(f);
  }
}

static const lr_cluster_vt cluster_vt = {c_owner, c_learn, c_relay_ws, c_relay_http, c_shutdown};

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
  lua_pushcclosure(L, luaopen_cluster, 1);
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
    link_free(cl->links);
  for (uint32_t b = 0; b < DIR_BUCKETS; b++)
    while (cl->dir[b])
      dir_drop(cl, &cl->dir[b]);
  s->cluster = NULL;
  s->cluster_state = NULL;
  free(cl->node_url);
  free(cl->secret);
  free(cl);
}

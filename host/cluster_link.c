/*
 * cluster_link.c - a cluster node's links to the owners of the rooms it
 * relays (cluster.c is the rest of the relay).
 *
 * Owns: the links (one WebSocket to the owner per relayed room, carrying
 * every client of that room on this node: shard.c's framing, so the owner's
 * side is uplink.c, unchanged: shard.clientConnected / clientMessage /
 * clientDisconnected up, broadcasts, {"targetClientId","data"} and
 * shard.closeClient down); the relayed clients (lr_conn.relay_client);
 * following a room that moves: when the owner goes (its link closes: kill
 * -9, lease lost, shutdown, drain) the room's relayed clients here keep
 * their sockets, their frames are held (in order, bounded) while the next
 * owner is looked up through the store (which takes the lease here when it
 * is free: the clients become local clients), and they are announced again
 * to the next owner; without one after REPOINT_MAX_MS they are closed with
 * 1012, which the npm client reconnects on.
 * Must not: run room code for relayed rooms, take leases itself (it asks
 * the store, lr_store_ready), look the owner up per message, or block the
 * loop (links go through fetch.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_int.h"
#include "engine.h"
#include "fetch.h"
#include "json.h"
#include "log.h"
#include "relay_id.h"

#define MAX_PRIVATE_ID 256     /* uplink.c refuses longer client ids */
#define MAX_BACKLOG (8u << 20) /* bytes waiting on a link before clients are refused */
#define MAX_HELD (1u << 20)    /* bytes held per room while its next owner is looked up */
#define REPOINT_RETRY_MS 100   /* the old owner still holds the lease: look again after */
#define REPOINT_MAX_MS 15000   /* ... and give up (clients reconnect) after this */

/* ------------------------------------------------------------ links */

void cl_link_free(rlink *l) {
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

void cl_close_clients(rlink *l, const char *priv, int code, const char *reason) {
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
      lr_msg *m = lr_msg_new(lr_str(d), lr_strlen(d));
      for (uint32_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i]->priv, lr_str(to)) == 0) deliver(l->v[i]->c, m);
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
      cl_close_clients(l, lr_str(p), cc, reason && reason->type == LR_STRING ? lr_str(reason) : "");
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
  cl_dir_forget(cl, l->key, l->owner);
  if (cl->shutting_down || !l->n) {
    l->dead = true;
    if (!l->n) cl_link_free(l);
    return;
  }
  cl->n_link_losses++;
  bool moved = code == 1001 || code == 1006 || code == 1012 || code == 4409;
  if (!moved) {
    l->dead = true;
    lr_warn("cluster: link to %s for room %s closed (%d %s); closing its %u relayed client(s) "
            "(1012, they reconnect)",
            l->owner, l->key, code, reason && *reason ? reason : "-", l->n);
    cl_close_clients(l, NULL, 1012, "room moved to another node");
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
  char *key = cl_room_key(ns, id);
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

/* A deep copy of the client's request, with what the owner's uplink needs
 * never missing (an in-process request may leave them NULL). */
static void req_copy(rclient *rc, const lr_request *req) {
  lr_request v = *req;
  if (!v.method) v.method = "GET";
  if (!v.path) v.path = "/";
  if (!v.query) v.query = "";
  v.body = NULL; /* a WebSocket upgrade: no body */
  v.bodylen = 0;
  lr_request_copy(&rc->req, &v);
}

static void rc_free(rclient *rc) {
  lr_request_free(&rc->req);
  free(rc->priv);
  free(rc);
}

/* shard.clientConnected for rc, with the request as the owner's room should see it. */
static void send_connected(rlink *l, rclient *rc) {
  lr_buf b;
  lr_buf_init(&b);
  lr_relay_client_connected(&b, rc->priv, &rc->req, cl_node_header);
  link_send(l, b.data, b.len);
  lr_buf_free(&b);
}

static void send_message(rlink *l, rclient *rc, const char *data, size_t len) {
  lr_buf b;
  lr_buf_init(&b);
  lr_relay_client_message(&b, rc->priv, data, len);
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

void cl_relay_ws(lr_server *s, lr_conn *c, const lr_request *req, const char *ns, const char *id,
                 const char *owner) {
  cluster *cl = s->cluster_state;
  char *priv = lr_relay_private_id(s, req->query);
  rlink *l = strlen(priv) <= MAX_PRIVATE_ID ? link_get(cl, ns, id, owner) : NULL;
  rclient *rc = lr_xcalloc(1, sizeof *rc);
  rc->c = c;
  rc->priv = priv;
  req_copy(rc, req);
  c->ext = rc;
  c->ops = &relay_client_ops;
  c->phase = LR_C_JOINED;
  cl->n_relayed_open++;
  cl->n_relayed_total++;
  if (!l || l->dead) { /* closed on the next turn, never inside the caller's open */
    lr_warn("cluster: client for %s/%s not relayed to %s (%s)", ns, id, owner,
            l ? "the link could not be opened" : "its id is too long");
    lr_conn_retain(c);
    lr_timer_add_c(s, 0, close_later_cb, c);
    if (l && !l->n) cl_link_free(l);
    return;
  }
  link_add(l, rc);
  if (!l->resolving) send_connected(l, rc); /* else: sent to the next owner */
  lr_info("cluster: conn %s (client %s) of %s relayed to %s", c->id, priv, l->key, owner);
  lr_conn_replay_early(c); /* what it sent while the lease was looked up, in order */
}

static void rc_message(lr_conn *c, const char *data, size_t len) {
  rclient *rc = c->ext;
  rlink *l = rc ? rc->l : NULL;
  if (!l || (l->dead && !l->resolving)) return;
  cluster *cl = l->cl;
  if (len > cl->max_client_frame) {
    lr_warn("cluster: client %s of %s sent %zu bytes (max %zu when relayed); closing", rc->priv,
            l->key, len, cl->max_client_frame);
    lr_conn_close(c, 1009, "frame too large");
    return;
  }
  if (!lr_relay_frame_is_json(data, len)) { /* only JSON goes to the owner */
    lr_debug("cluster: non-JSON frame from client %s of %s dropped", rc->priv, l->key);
    return;
  }
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
  rclient *rc = c->ext;
  if (!rc) return;
  c->ext = NULL;
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
      lr_relay_client_disconnected(&b, rc->priv);
      link_send(l, b.data, b.len);
      lr_buf_free(&b);
    }
    if (!l->n) cl_link_free(l); /* the owner sees the link close: nothing of it is left there */
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
  cl_link_free(l);
  for (uint32_t i = 0; i < n; i++) {
    rclient *rc = v[i];
    lr_conn *c = rc->c;
    c->ext = NULL;
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
    if (!nl->n && nl != l) cl_link_free(nl);
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
  cl_link_free(l);
  return true;
}

static void give_up(rlink *l, const char *why) {
  lr_warn("cluster: no next owner for room %s (%s): closing its %u relayed client(s) (1012, they "
          "reconnect)",
          l->key, why, l->n);
  l->resolving = false;
  l->dead = true;
  cl_close_clients(l, NULL, 1012, "room moved to another node");
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
    const char *owner = cl_learn(cl->s, l->ns, l->id, err);
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

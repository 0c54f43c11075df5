/*
 * uplink.c - the main-server side of shard processes (protocol.md §7.6): a
 * WebSocket opened on a room with an x-shard-id header is a shard relaying
 * its clients, and each of those clients becomes a virtual connection of the
 * room.
 *
 * Owns: accepting or refusing uplinks (x-access-shard must equal the
 * server's SHARD_SECRET, compared in constant time), the uplink framing
 * (shard.clientConnected / clientMessage / clientDisconnected in,
 * {"targetClientId","data"} and shard.closeClient out), and the lifecycle of
 * the virtual connections (one per clientConnected, closed on
 * clientDisconnected or when the uplink goes).
 * Must not: run room rules itself (virtual connections go through room.c's
 * whole connect path: guards, session, onJoin, snapshot), or talk to sockets
 * (the uplink's transport is whatever opened it: net.c, or the headless one
 * in specs).
 *
 * Delivery. The uplink is a raw member of the room's broadcast list, so one
 * shared frame per broadcast or sync patch reaches every client of the shard,
 * which re-broadcasts it. Virtual connections are flagged `relayed`: room.c
 * skips them in broadcasts and sends them only what is theirs (snapshot,
 * room:send, errors), which this file wraps as targetClientId frames. A room
 * with an interceptor, or a broadcast that excludes connections, fans out
 * per client instead (lr_uplink_fanout), so filtering stays per user.
 *
 * Lifetimes. A vclient (the transport state of one virtual connection) lives
 * from clientConnected until room.c reports the connection closed or frees
 * it (lr_uplink_forget). Closes the room asks for (vt->close: guard
 * refusal, kick, dispose) send shard.closeClient and are delivered on the
 * next tick through the server's pending-close list, never re-entering the
 * engine from inside a transport callback.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "uplink.h"

#include "engine.h"
#include "lua_api.h"
#include "json.h"
#include "log.h"
#include "net.h"

#define MAX_PRIVATE_ID 256 /* longer client ids are refused */
#define MAX_HEADERS 64

typedef struct uplink uplink;

/* One relayed client: the tp of its virtual connection. */
typedef struct vclient {
  uplink *up; /* NULL once the uplink is gone (close already queued) */
  lr_conn *c; /* the virtual connection (the transport's reference) */
  char *priv;
  char *addr;        /* the client's address, counted by lr_net_addr_acquire; NULL if not */
  bool close_queued; /* vt->close ran: lr_conn_closed comes from the pending list */
} vclient;

struct uplink {
  lr_conn *conn; /* the uplink itself */
  char *shard_id, *world_id, *addr;
  vclient **v; /* open virtual connections, in connect order */
  uint32_t nv, capv;
};

/* ------------------------------------------------------------ helpers */

static const char *header_of(const lr_request *req, const char *name) {
  for (size_t i = 0; i < req->nheaders; i++)
    if (strcmp(req->headers[i].name, name) == 0) return req->headers[i].value;
  return NULL;
}

/* Equal strings, in time that depends on the lengths only. */
static bool secret_equal(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  unsigned char diff = la != lb;
  for (size_t i = 0; i < la; i++)
    diff |= (unsigned char)a[i] ^ (unsigned char)b[i % (lb ? lb : 1)];
  return diff == 0;
}

static char *xstrdup(const char *s) {
  return lr_xstrndup(s, strlen(s));
}

static void up_send_text(uplink *u, const char *text, size_t len) {
  lr_conn *c = u->conn;
  if (c->phase == LR_C_GONE || c->phase == LR_C_CLOSING) return;
  lr_msg *m = lr_msg_new(text, len);
  if (c->vt->send(c, m) != 0) lr_conn_close(c, 1008, "outgoing queue full");
  lr_msg_release(m);
}

/* shard.closeClient for priv on the uplink. */
static void send_close_client(uplink *u, const char *priv, int code, const char *reason) {
  lr_buf b;
  lr_buf_init(&b);
  lr_buf_puts(&b, "{\"type\":\"shard.closeClient\",\"privateId\":");
  lr_json_put_string(&b, priv, strlen(priv));
  /* code and reason are Lunaroom extras; a reference shard ignores them. */
  lr_buf_printf(&b, ",\"code\":%d,\"reason\":", code);
  lr_json_put_string(&b, reason ? reason : "", reason ? strlen(reason) : 0);
  lr_buf_putc(&b, '}');
  up_send_text(u, b.data, b.len);
  lr_buf_free(&b);
}

static void list_remove(uplink *u, vclient *v) {
  for (uint32_t i = 0; i < u->nv; i++) {
    if (u->v[i] == v) {
      memmove(&u->v[i], &u->v[i + 1], (u->nv - i - 1) * sizeof *u->v);
      u->nv--;
      return;
    }
  }
}

/* ------------------------------------------------------------ virtual transport */

/* {"targetClientId":priv,"data":"<packet>"} on the uplink. */
static int v_send(lr_conn *c, lr_msg *m) {
  vclient *v = c->tp;
  if (!v || !v->up) return -1;
  lr_conn *upc = v->up->conn;
  if (upc->phase == LR_C_GONE || upc->phase == LR_C_CLOSING) return -1;
  lr_buf b;
  lr_buf_init(&b);
  lr_buf_puts(&b, "{\"targetClientId\":");
  lr_json_put_string(&b, v->priv, strlen(v->priv));
  lr_buf_puts(&b, ",\"data\":");
  lr_json_put_string(&b, lr_msg_payload(m), m->len);
  lr_buf_putc(&b, '}');
  lr_msg *w = lr_msg_new(b.data, b.len);
  lr_buf_free(&b);
  int rc = upc->vt->send(upc, w);
  lr_msg_release(w);
  if (rc != 0) lr_conn_close(upc, 1008, "outgoing queue full");
  return rc;
}

/* The room closes a relayed client: tell the shard, deliver the close later. */
static void v_close(lr_conn *c, int code, const char *reason) {
  vclient *v = c->tp;
  lr_server *s = c->srv;
  if (!v || v->close_queued) return;
  v->close_queued = true;
  if (v->up) send_close_client(v->up, v->priv, code, reason);
  if (s->npending_close == s->cappending_close) {
    s->cappending_close = s->cappending_close ? s->cappending_close * 2 : 8;
    s->pending_close =
        lr_xrealloc(s->pending_close, s->cappending_close * sizeof *s->pending_close);
  }
  s->pending_close[s->npending_close++] = c;
}

static const lr_transport_vt virtual_vt = {v_send, v_close};

/* The two kinds of connection this file gives the engine (lr_conn_ops). */
static void lr_uplink_message(lr_conn *c, const char *data, size_t len);
static void lr_uplink_closed(lr_conn *c);
static void lr_uplink_forget(lr_conn *c);
static void lr_uplink_fanout(lr_conn *c, lr_msg *m, const char *const *except, size_t nexcept);
/* A shard uplink: frames are envelopes for its clients; not a client itself. */
static const lr_conn_ops uplink_ops = {.message = lr_uplink_message,
                                       .closed = lr_uplink_closed,
                                       .forget = lr_uplink_forget,
                                       .fanout = lr_uplink_fanout,
                                       .uncounted = true,
                                       .relay = true};
/* A client relayed by an uplink: in the room list (connections(),
 * hibernation, shutdown) but broadcasts and sync patches reach it through
 * its uplink. */
static const lr_conn_ops relayed_ops = {
    .forget = lr_uplink_forget, .via_uplink = true, .forget_on_close = true};

static void uplink_free(uplink *u) {
  for (uint32_t i = 0; i < u->nv; i++)
    u->v[i]->up = NULL; /* each frees itself with its connection */
  u->conn->ext = NULL;
  free(u->v);
  free(u->shard_id);
  free(u->world_id);
  free(u->addr);
  free(u);
}

static void lr_uplink_forget(lr_conn *c) {
  if (c->ops == &uplink_ops && c->ext) uplink_free(c->ext);
  vclient *v = c->ops == &relayed_ops && c->vt == &virtual_vt ? c->tp : NULL;
  if (!v) return;
  if (v->up) list_remove(v->up, v);
  c->tp = NULL;
  if (v->addr) lr_net_addr_release(v->addr);
  free(v->addr);
  free(v->priv);
  free(v);
}

/* ------------------------------------------------------------ uplink transport side */

/* 0 when req carries the server's SHARD_SECRET, else the HTTP status. */
static int uplink_auth(lr_room *r, const lr_request *req) {
  lr_server *s = r->srv;
  char secret[512];
  const char *addr = req->remote_addr ? req->remote_addr : "-";
  const char *shard_id = header_of(req, "x-shard-id");
  const char *given = header_of(req, "x-access-shard");
  lr_server_env(s, "SHARD_SECRET", secret, sizeof secret);
  if (!secret[0]) {
    lr_warn("room %s: shard uplink %s from %s refused: SHARD_SECRET is not set on this server",
            r->key, shard_id ? shard_id : "-", addr);
    return 401;
  }
  if (!given || !secret_equal(given, secret)) {
    lr_warn("room %s: shard uplink %s from %s refused: %s x-access-shard", r->key,
            shard_id ? shard_id : "-", addr, given ? "wrong" : "no");
    return 401;
  }
  return 0;
}

/* c (attached to r) becomes the uplink of the shard or node req comes from. */
static void uplink_setup(lr_room *r, const lr_request *req, lr_conn *c) {
  lr_server *s = r->srv;
  const char *addr = req->remote_addr ? req->remote_addr : "-";
  const char *shard_id = header_of(req, "x-shard-id");
  const char *world_id = header_of(req, "x-shard-world-id");
  uplink *u = lr_xcalloc(1, sizeof *u);
  u->shard_id = xstrdup(shard_id ? shard_id : "");
  u->world_id = xstrdup(world_id ? world_id : "");
  u->addr = xstrdup(addr);
  c->ext = u;
  c->ops = &uplink_ops;
  u->conn = c;
  /* conn.state = {shard = true, shardId, worldId}, as the reference sets it. */
  lua_State *L = s->L;
  int top = lua_gettop(L);
  lr_lua_push_conn(L, c);
  lua_getfield(L, -1, "state");
  if (lua_istable(L, -1)) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "shard");
    lua_pushstring(L, u->shard_id);
    lua_setfield(L, -2, "shardId");
    lua_pushstring(L, u->world_id);
    lua_setfield(L, -2, "worldId");
  }
  lua_settop(L, top);
  lr_info("room %s: shard %s (world %s) attached from %s as conn %s", r->key, u->shard_id,
          u->world_id, addr, c->id);
}

static int lr_uplink_open(lr_room *r, const lr_request *req, const lr_transport_vt *vt, void *tp,
                          lr_conn **out) {
  *out = NULL;
  int st = uplink_auth(r, req);
  if (st) return st;
  lr_room_activity(r);
  lr_conn *c = lr_room_attach(r, vt, tp);
  uplink_setup(r, req, c);
  *out = c;
  return 0;
}

/* The same for a bare connection that waited for r's storage (a cluster
 * node's link: the room's lease was taken meanwhile); the frames it got
 * meanwhile are handled now, in order. */
static int lr_uplink_adopt(lr_room *r, const lr_request *req, lr_conn *c) {
  int st = uplink_auth(r, req);
  if (st) return st;
  lr_room_activity(r);
  if (r->srv->stats.conns_open)
    r->srv->stats.conns_open--; /* counted as a client while it waited */
  lr_room_attach_conn(r, c);
  uplink_setup(r, req, c);
  lr_conn_replay_early(c);
  return 0;
}

/* Path and query of requestInfo.url ("http://host/path?query"), with the
 * query's id parameter set to priv: the room then derives the same private
 * id as the shard (Part 1 row 1), and keeps every other parameter
 * (transferToken, ...). */
static void request_target(const char *url, const char *shard_id, const char *priv, lr_buf *path,
                           lr_buf *query) {
  const char *p = url ? strstr(url, "://") : NULL;
  if (p) p = strchr(p + 3, '/');
  if (!p && url && url[0] == '/') p = url;
  if (p) {
    const char *q = strchr(p, '?');
    lr_buf_put(path, p, q ? (size_t)(q - p) : strlen(p));
    p = q ? q + 1 : NULL;
  } else {
    lr_buf_puts(path, "/parties/shard/");
    lr_buf_puts(path, shard_id);
  }
  lr_buf_puts(query, "id=");
  for (const unsigned char *c = (const unsigned char *)priv; *c; c++) {
    if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
        *c == '-' || *c == '_' || *c == '.' || *c == '~')
      lr_buf_putc(query, (char)*c);
    else
      lr_buf_printf(query, "%%%02X", *c);
  }
  while (p && *p) {
    const char *end = strchr(p, '&');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    bool is_id = (n == 2 && strncmp(p, "id", 2) == 0) || (n >= 3 && strncmp(p, "id=", 3) == 0);
    if (n && !is_id) {
      lr_buf_putc(query, '&');
      lr_buf_put(query, p, n);
    }
    p = end ? end + 1 : NULL;
  }
  lr_buf_cstr(path);
  lr_buf_cstr(query);
}

/* The headers of requestInfo.headers (string values only, at most
 * MAX_HEADERS): names lower-cased into names (NUL-separated), values in
 * the message. Returns how many. */
static size_t relayed_headers(const lr_node *headers, lr_header *hs, lr_buf *names) {
  size_t nh = 0;
  size_t offs[MAX_HEADERS];
  if (headers && headers->type == LR_OBJECT) {
    for (uint32_t i = 0; i < headers->u.obj.len && nh < MAX_HEADERS; i++) {
      const lr_node *val = headers->u.obj.m[i].val;
      if (val->type != LR_STRING) continue;
      offs[nh] = names->len;
      for (uint32_t k = 0; k < lr_member_keylen(&headers->u.obj.m[i]); k++) {
        char ch = lr_member_key(&headers->u.obj.m[i])[k];
        lr_buf_putc(names, (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch));
      }
      lr_buf_putc(names, 0);
      hs[nh++].value = lr_str(val);
    }
  }
  for (size_t i = 0; i < nh; i++)
    hs[i].name = names->data + offs[i];
  return nh;
}

/* The client's address: the last x-forwarded-for entry, the one the
 * authenticated shard appended (what it saw, after its own trusted-proxy
 * rules); entries before it came from the client and are not believed.
 * Without one, the uplink's own address. */
static void client_ip(const uplink *u, const lr_header *hs, size_t nh, char *ip, size_t iplen) {
  const char *forwarded = NULL;
  for (size_t i = 0; i < nh; i++)
    if (strcmp(hs[i].name, "x-forwarded-for") == 0) forwarded = hs[i].value;
  snprintf(ip, iplen, "%s", u->addr);
  if (forwarded && *forwarded) {
    const char *last = strrchr(forwarded, ',');
    last = last ? last + 1 : forwarded;
    while (*last == ' ' || *last == '\t')
      last++;
    size_t n = strcspn(last, " \t");
    if (n > 0 && n < iplen) snprintf(ip, iplen, "%.*s", (int)n, last);
  }
}

static void client_connected(uplink *u, const char *priv, const lr_node *info) {
  lr_conn *upc = u->conn;
  lr_room *r = upc->room;
  const lr_node *headers = NULL, *url = NULL, *method = NULL;
  if (info && info->type == LR_OBJECT) {
    headers = lr_obj_get(info, "headers", 7);
    url = lr_obj_get(info, "url", 3);
    method = lr_obj_get(info, "method", 6);
  }
  lr_header hs[MAX_HEADERS];
  lr_buf names; /* lower-cased names, NUL-separated */
  lr_buf_init(&names);
  size_t nh = relayed_headers(headers, hs, &names);
  char ip[64];
  client_ip(u, hs, nh, ip, sizeof ip);
  /* It counts against its address's connection limit like a direct socket. */
  if (!lr_net_addr_acquire(ip)) {
    send_close_client(u, priv, 1013, "too many connections from this address");
    lr_buf_free(&names);
    return;
  }
  lr_buf path, query;
  lr_buf_init(&path);
  lr_buf_init(&query);
  request_target(url && url->type == LR_STRING ? lr_str(url) : NULL, u->shard_id, priv, &path,
                 &query);
  lr_request req = {method && method->type == LR_STRING ? lr_str(method) : "GET",
                    path.data,
                    query.data,
                    hs,
                    nh,
                    NULL,
                    0,
                    ip,
                    NULL,
                    NULL};
  vclient *v = lr_xcalloc(1, sizeof *v);
  v->up = u;
  v->priv = xstrdup(priv);
  v->addr = xstrdup(ip);
  if (u->nv == u->capv) {
    u->capv = u->capv ? u->capv * 2 : 8;
    u->v = lr_xrealloc(u->v, u->capv * sizeof *u->v);
  }
  u->v[u->nv++] = v;
  lr_room_activity(r);
  lr_info("room %s: shard %s relays client %s", r->key, u->shard_id, priv);
  /* A refused client is closed during its own connect: v->close_queued is
   * then set and v is freed when that close is delivered (next tick). */
  v->c = lr_room_open_kind(r, &req, &virtual_vt, v, &relayed_ops);
  lr_buf_free(&path);
  lr_buf_free(&query);
  lr_buf_free(&names);
}

/* Every open virtual connection of priv (a snapshot: closing one edits the list). */
static uint32_t find_clients(uplink *u, const char *priv, vclient ***out) {
  uint32_t n = 0;
  *out = NULL;
  for (uint32_t i = 0; i < u->nv; i++) {
    if (strcmp(u->v[i]->priv, priv) != 0 || u->v[i]->close_queued || !u->v[i]->c) continue;
    *out = lr_xrealloc(*out, (n + 1) * sizeof **out);
    (*out)[n++] = u->v[i];
  }
  return n;
}

static void lr_uplink_message(lr_conn *c, const char *data, size_t len) {
  uplink *u = c->ext;
  char err[200];
  lr_json_limits lim = {LR_JSON_DEFAULT_LIMITS.max_depth + 2, LR_JSON_DEFAULT_LIMITS.max_elements};
  lr_node *msg = lr_json_decode(data, len, &lim, err, sizeof err);
  if (!msg || msg->type != LR_OBJECT) {
    lr_warn("room %s: shard %s sent an invalid frame (%s); ignored", c->room->key, u->shard_id,
            msg ? "not an object" : err);
    lr_node_release(msg);
    return;
  }
  const lr_node *type = lr_obj_get(msg, "type", 4);
  const lr_node *priv = lr_obj_get(msg, "privateId", 9);
  if (!type || type->type != LR_STRING || !priv || priv->type != LR_STRING ||
      lr_strlen(priv) == 0 || lr_strlen(priv) > MAX_PRIVATE_ID ||
      memchr(lr_str(priv), 0, lr_strlen(priv))) {
    lr_warn("room %s: shard %s sent a frame without type or privateId; ignored", c->room->key,
            u->shard_id);
    lr_node_release(msg);
    return;
  }
  const char *t = lr_str(type), *p = lr_str(priv);
  lr_conn_retain(c);
  if (strcmp(t, "shard.clientConnected") == 0) {
    client_connected(u, p, lr_obj_get(msg, "requestInfo", 11));
  } else if (strcmp(t, "shard.clientMessage") == 0) {
    const lr_node *payload = lr_obj_get(msg, "payload", 7);
    vclient **vs;
    uint32_t n = find_clients(u, p, &vs);
    if (n && payload) {
      lr_buf b;
      lr_buf_init(&b);
      lr_json_encode(payload, 0, &b);
      lr_conn *vc = vs[0]->c; /* sockets of one session share it */
      lr_conn_retain(vc);
      lr_conn_message(vc, b.data, b.len);
      lr_conn_release(vc);
      lr_buf_free(&b);
    } else if (!n) {
      lr_debug("room %s: shard %s: message for unknown client %s dropped", c->room->key,
               u->shard_id, p);
    }
    free(vs);
  } else if (strcmp(t, "shard.clientDisconnected") == 0) {
    vclient **vs;
    uint32_t n = find_clients(u, p, &vs);
    for (uint32_t i = 0; i < n; i++)
      lr_conn_closed(vs[i]->c); /* frees vs[i] through lr_uplink_client_closed */
    free(vs);
  } else {
    lr_debug("room %s: shard %s: frame type %s ignored", c->room->key, u->shard_id, t);
  }
  lr_conn_release(c);
  lr_node_release(msg);
}

static void lr_uplink_fanout(lr_conn *c, lr_msg *m, const char *const *except, size_t nexcept) {
  uplink *u = c->ext;
  bool intercept = c->room && c->room->has_interceptor;
  bool hit = false;
  for (uint32_t i = 0; i < u->nv && !hit; i++)
    for (size_t k = 0; k < nexcept && !hit; k++)
      hit = u->v[i]->c && strcmp(u->v[i]->c->id, except[k]) == 0;
  if (!intercept && !hit) {
    lr_conn_send_msg(c, m, NULL, 0); /* no interceptor: straight through the storage gate */
    return;
  }
  uint32_t n = u->nv;
  lr_conn **vs = lr_xmalloc((n ? n : 1) * sizeof *vs);
  uint32_t k = 0;
  for (uint32_t i = 0; i < n; i++) {
    lr_conn *vc = u->v[i]->c;
    if (!vc || vc->phase != LR_C_JOINED || vc->parked) continue;
    bool skip = false;
    for (size_t e = 0; e < nexcept && !skip; e++)
      skip = strcmp(vc->id, except[e]) == 0;
    if (skip) continue;
    lr_conn_retain(vc);
    vs[k++] = vc;
  }
  for (uint32_t i = 0; i < k; i++) {
    lr_conn_send_msg(vs[i], m, NULL, 0);
    lr_conn_release(vs[i]);
  }
  free(vs);
}

static void lr_uplink_closed(lr_conn *c) {
  uplink *u = c->ext;
  if (!u) return;
  /* Nothing more goes out on it; its clients leave their rooms. */
  if (c->phase != LR_C_GONE) c->phase = LR_C_CLOSING;
  lr_info("room %s: shard %s detached (%u clients)", c->room ? c->room->key : "-", u->shard_id,
          u->nv);
  while (u->nv) {
    vclient *v = u->v[u->nv - 1];
    if (v->close_queued || !v->c) {
      v->up = NULL; /* its close is pending; it frees itself then */
      u->nv--;
      continue;
    }
    lr_conn_closed(v->c); /* removes v from the list */
  }
  uplink_free(u);
}

void lr_uplink_install(lr_server *s) {
  s->relay_open = lr_uplink_open;
  s->relay_adopt = lr_uplink_adopt;
}

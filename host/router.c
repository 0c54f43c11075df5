/*
 * router.c - what a request for /parties/... becomes: the party path, the
 * room it names (found, woken or created, within the room limit and the
 * per-address creation rate), WebSocket opens (lr_server_ws_open) and HTTP
 * requests (lr_server_http, CORS preflight, operations paths), and the
 * requests that wait for a room's storage to load.
 *
 * Owns: parse_party_path, lr_room_get, the lr_wait list (requests waiting for
 * a room's storage; under --dev also WebSockets of a room type whose file
 * does not load), lr_server_ws_open, lr_server_http.
 * Must not: run room rules itself (s->rules), send packets, or know what a
 * transport is beyond server.h.
 */
#include "engine_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"

/* Split "/parties/{ns}/{room}[/rest]" (percent-decoding ns and room). */
static int parse_party_path(const lr_server *s, const char *path, char *ns, size_t nsz, char *id,
                            size_t idsz, const char **rest) {
  size_t pl = strlen(s->parties_prefix);
  if (strncmp(path, s->parties_prefix, pl) != 0 || path[pl] != '/') return -1;
  const char *p = path + pl + 1;
  char *outs[2] = {ns, id};
  size_t sz[2] = {nsz, idsz};
  for (int part = 0; part < 2; part++) {
    size_t j = 0;
    while (*p && *p != '/') {
      int ch = (unsigned char)*p;
      if (ch == '%') {
        if (!isxdigit((unsigned char)p[1]) || !isxdigit((unsigned char)p[2])) return -1;
        char hex[3] = {p[1], p[2], 0};
        ch = (int)strtol(hex, NULL, 16);
        p += 3;
      } else {
        p++;
      }
      if (ch < 0x20 || ch == 0x7f) return -1; /* no control bytes in names (logs, storage) */
      if (j + 1 >= sz[part]) return -1;
      outs[part][j++] = (char)ch;
    }
    outs[part][j] = 0;
    if (j == 0 || !lr_utf8_valid(outs[part], j)) return -1;
    if (part == 0) {
      if (*p != '/') return -1;
      p++;
    }
  }
  if (rest) *rest = p;
  return 0;
}

/* Find or create the room for ns/id. NULL if no definition matches. */
/* The room ns/id, woken or created as needed. NULL with *status the HTTP
 * status to answer: 404 no definition serves it (nothing logged), 503 the
 * room limit is reached, the server is stopping or the room could not be
 * rebuilt from storage, 500 creating it failed (both logged). */
static lr_room *get_room(lr_server *s, const char *ns, const char *id, int *status) {
  lr_room *r = lr_room_find(s, ns, id);
  *status = 503;
  if (r) return lr_room_activity(r) ? r : NULL;
  if (s->shutting_down) return NULL;
  if (s->max_rooms > 0 && s->nrooms >= (uint32_t)s->max_rooms) {
    lr_warn_limited("room limit", "room %s/%s not created: %u rooms live (max %ld)", ns, id,
                    s->nrooms, s->max_rooms);
    return NULL;
  }
  char err[256];
  if (s->rules->create(s, ns, id, err, sizeof err) != 0) {
    lr_error("room %s/%s: could not be created: %s", ns, id, err);
    r = lr_room_find(s, ns, id);
    if (r) lr_room_dispose(r);
    *status = 500;
    return NULL;
  }
  lr_server_flush_touched(s);
  r = lr_room_find(s, ns, id);
  if (!r) *status = 404;
  return r;
}

static const char *header_of(const lr_request *req, const char *name) {
  for (size_t i = 0; i < req->nheaders; i++)
    if (strcmp(req->headers[i].name, name) == 0) return req->headers[i].value;
  return NULL;
}

/* ------------------------------------------------------------ waiting for storage */

/* A WebSocket or HTTP request for a room whose storage is still loading (a
 * Lua backend that waits for I/O, storage_lua.c): kept here until the store
 * is ready, then handled as if it had just arrived. The WebSocket is already
 * accepted: its frames wait in the connection's early buffer. */
typedef struct lr_wait {
  struct lr_wait *next, **pprev;
  lr_server *s;
  char *ns, *id;
  lr_request req;      /* deep copy (lr_request_copy) */
  lr_conn *conn;       /* WebSocket: joining, no room yet (one reference) */
  lr_response_cb done; /* HTTP */
  void *ud;
  char *dev; /* a dev wait (rules->dev_failed): the dev_error packet last sent */
} lr_wait;

static bool served(lr_server *s, const char *ns, const char *id);

static char *dup_str(const char *p) {
  return p ? lr_xstrndup(p, strlen(p)) : NULL;
}

void lr_request_copy(lr_request *dst, const lr_request *src) {
  lr_request full;
  src = lr_request_full(src, &full);
  dst->load_headers = NULL;
  dst->headers_ud = NULL;
  dst->method = dup_str(src->method);
  dst->path = dup_str(src->path);
  dst->query = dup_str(src->query);
  dst->remote_addr = dup_str(src->remote_addr);
  dst->body = src->body ? lr_xstrndup(src->body, src->bodylen) : NULL;
  dst->bodylen = src->bodylen;
  lr_header *h = lr_xcalloc(src->nheaders + 1, sizeof *h);
  for (size_t i = 0; i < src->nheaders; i++) {
    h[i].name = dup_str(src->headers[i].name);
    h[i].value = dup_str(src->headers[i].value ? src->headers[i].value : "");
  }
  dst->headers = h;
  dst->nheaders = src->nheaders;
}

void lr_request_free(lr_request *q) {
  for (size_t i = 0; i < q->nheaders; i++) {
    free((char *)q->headers[i].name);
    free((char *)q->headers[i].value);
  }
  free((lr_header *)q->headers);
  free((char *)q->method);
  free((char *)q->path);
  free((char *)q->query);
  free((char *)q->remote_addr);
  free((char *)q->body);
  memset(q, 0, sizeof *q);
}

static lr_wait *wait_new(lr_server *s, const char *ns, const char *id, const lr_request *req) {
  lr_wait *w = lr_xcalloc(1, sizeof *w);
  w->s = s;
  w->ns = dup_str(ns);
  w->id = dup_str(id);
  lr_request_copy(&w->req, req);
  return w;
}

static void wait_free(lr_wait *w) {
  if (w->pprev) {
    *w->pprev = w->next;
    if (w->next) w->next->pprev = w->pprev;
  }
  lr_request_free(&w->req);
  free(w->ns);
  free(w->id);
  free(w->dev);
  free(w);
}

/* The server goes away: drop what still waits, without answering. */
/* Shutdown: close the WebSockets that wait for a room's storage. */
void lr_waits_close(lr_server *s) {
  for (lr_wait *w = s->waits; w; w = w->next)
    if (w->conn) lr_conn_close(w->conn, 1001, "server shutdown");
}

void lr_waits_free(lr_server *s) {
  while (s->waits) {
    lr_wait *w = s->waits;
    if (w->conn) lr_conn_release(w->conn);
    wait_free(w);
  }
}

/* req came from another node of a cluster (or a shard): never relayed on. */
static bool from_node(const lr_request *req) {
  return header_of(req, "x-shard-id") || header_of(req, "x-forwarded-by-shard") ||
         header_of(req, "x-lunaroom-node");
}

static void wait_done(void *ud, int ok, const char *err) {
  lr_wait *w = ud;
  lr_server *s = w->s;
  if (ok == LR_STORE_READY_ELSEWHERE) {
    /* A cluster node holds it: relayed there, or refused here when this
     * node does not relay or the request came from another node. */
    const char *owner = s->cluster && err ? s->cluster->learn(s, w->ns, w->id, err) : NULL;
    if (from_node(&w->req)) owner = NULL;
    if (w->conn && w->conn->phase == LR_C_JOINING) {
      if (owner)
        s->cluster->relay_ws(s, w->conn, &w->req, w->ns, w->id, owner);
      else
        lr_conn_close(w->conn, 4409, "room owned by another node");
    } else if (!w->conn) {
      if (owner)
        s->cluster->relay_http(s, &w->req, w->ns, w->id, owner, w->done, w->ud);
      else
        lr_respond_json(w->done, w->ud, 409, "{\"error\":\"Room owned by another node\"}");
    }
    if (w->conn) lr_conn_release(w->conn);
    wait_free(w);
    return;
  }
  if (!ok) lr_warn("room %s/%s: storage not available (%s)", w->ns, w->id, err ? err : "-");
  if (w->conn) {
    lr_conn *c = w->conn;
    if (c->phase == LR_C_JOINING) {
      int status;
      lr_room *r = ok && !s->shutting_down ? get_room(s, w->ns, w->id, &status) : NULL;
      if (!r) {
        lr_conn_close(c, 1011, ok ? "room unavailable" : "storage unavailable");
      } else if (lr_room_store_failing(r)) {
        lr_conn_close(c, 1013, "storage unavailable");
      } else if (header_of(&w->req, "x-shard-id")) { /* a cluster node's link (uplink.c) */
        int st = s->relay_adopt ? s->relay_adopt(r, &w->req, c) : 404;
        if (st) lr_conn_close(c, st == 401 ? 4401 : 1011, "link refused");
      } else {
        c->room = lr_room_retain(r);
        lr_conn_connect(c, &w->req);
      }
    }
    lr_conn_release(c);
  } else if (ok) {
    lr_server_http(s, &w->req, w->done, w->ud);
  } else {
    lr_respond_json(w->done, w->ud, 503, "{\"error\":\"Storage unavailable\"}");
  }
  wait_free(w);
}

/* Before creating room ns/id: when its storage is still loading, park the
 * request (WebSocket: vt/tp, *out set; HTTP: done/ud) and return 1; 0 when
 * the room can be created now (or no definition serves it); -1 when the
 * storage failed (answer 503). */
static int wait_for_storage(lr_server *s, const char *ns, const char *id, const lr_request *req,
                            const lr_transport_vt *vt, void *tp, lr_response_cb done, void *ud,
                            lr_conn **out) {
  if (!s->store->vt->ready || s->shutting_down || lr_room_find(s, ns, id)) return 0;
  if (!served(s, ns, id)) return 0; /* get_room answers 404 */
  lr_wait *w = wait_new(s, ns, id, req);
  char err[256];
  int rc = lr_store_ready(s->store, ns, id, wait_done, w, err, sizeof err);
  if (rc != 0) {
    if (rc < 0) lr_error("room %s/%s: storage not available: %s", ns, id, err);
    wait_free(w);
    return rc > 0 ? 0 : -1;
  }
  w->next = s->waits;
  if (w->next) w->next->pprev = &w->next;
  w->pprev = &s->waits;
  s->waits = w;
  if (vt) {
    lr_conn *c = lr_conn_new(s, NULL, vt, tp);
    s->stats.conns_open++;
    s->stats.conns_total++;
    lr_conn_retain(c);
    w->conn = c;
    *out = c;
    lr_info("conn %s: waits for the storage of %s/%s", c->id, ns, id);
  } else {
    w->done = done;
    w->ud = ud;
  }
  return 1;
}

/* ------------------------------------------------------------ development mode */

/* Under --dev a room file that does not load (it failed at start, or a new
 * file's first save failed) still names its room type: rules->dev_failed
 * gives the dev_error packet for ns/id. A WebSocket for it is accepted,
 * gets that packet and waits here, joining (its frames wait in its early
 * buffer as for a storage wait), instead of closing with 4004. After each
 * reload (lr_server_dev_recheck_later, from a 0 ms timer: outside any Lua
 * call) every dev wait is looked at again: a room type that loads now sends
 * {"type":"dev_error","value":null} and the connection goes on as a new one
 * (storage wait, then the room's connect: session, onJoin, snapshot); a
 * still failing one gets the new packet if it changed; one nobody declares
 * any more closes with 4004. Bounded by the connection limits (each is an
 * open socket); waits whose socket is gone are dropped on each new one. */

static const char dev_cleared[] = "{\"type\":\"dev_error\",\"value\":null}";

static void dev_send(lr_conn *c, const char *pkt) {
  lr_conn_send_msg(c, NULL, pkt, strlen(pkt));
}

/* Drop the dev waits whose socket closed. */
static void dev_prune(lr_server *s) {
  for (lr_wait *w = s->waits, *next; w; w = next) {
    next = w->next;
    if (w->dev && w->conn->phase != LR_C_JOINING) {
      lr_conn_release(w->conn);
      wait_free(w);
    }
  }
}

/* ws_open for ns/id that no definition serves: park it when a room file
 * that does not load declares it (development mode). True: *out is set. */
static bool dev_park(lr_server *s, const char *ns, const char *id, const lr_request *req,
                     const lr_transport_vt *vt, void *tp, lr_conn **out) {
  char *pkt = s->rules->dev_failed ? s->rules->dev_failed(s, ns, id) : NULL;
  if (!pkt) return false;
  dev_prune(s);
  lr_wait *w = wait_new(s, ns, id, req);
  w->dev = pkt;
  w->next = s->waits;
  if (w->next) w->next->pprev = &w->next;
  w->pprev = &s->waits;
  s->waits = w;
  lr_conn *c = lr_conn_new(s, NULL, vt, tp);
  s->stats.conns_open++;
  s->stats.conns_total++;
  lr_conn_retain(c);
  w->conn = c;
  *out = c;
  lr_info("conn %s: %s/%s is declared by a room file that does not load (development mode): it "
          "waits for a good save",
          c->id, ns, id);
  dev_send(c, pkt);
  return true;
}

/* The room type of dev wait w loads now: clear the error, then go on as a
 * WebSocket that waits for the room's storage (wait_done connects it). */
static void dev_release(lr_server *s, lr_wait *w) {
  free(w->dev);
  w->dev = NULL;
  dev_send(w->conn, dev_cleared);
  char err[256] = "";
  int rc = 1;
  if (s->store->vt->ready && !lr_room_find(s, w->ns, w->id)) /* as wait_for_storage */
    rc = lr_store_ready(s->store, w->ns, w->id, wait_done, w, err, sizeof err);
  if (rc > 0)
    wait_done(w, 1, NULL);
  else if (rc < 0)
    wait_done(w, 0, err);
  /* rc == 0: wait_done runs when the storage is ready */
}

static void dev_recheck(void *ud) {
  lr_server *s = ud;
  if (s->shutting_down) return;
  /* First pass, no engine change: send changed errors, mark what moves on.
   * Second pass: one at a time from the head (a connect runs room code,
   * which may add waits). */
  for (lr_wait *w = s->waits; w; w = w->next) {
    if (!w->dev || w->conn->phase != LR_C_JOINING) continue;
    if (served(s, w->ns, w->id)) continue;
    char *pkt = s->rules->dev_failed ? s->rules->dev_failed(s, w->ns, w->id) : NULL;
    if (!pkt) {
      lr_info("conn %s: %s/%s: no room file declares it any more", w->conn->id, w->ns, w->id);
      lr_conn_close(w->conn, 4004, "no such room");
    } else if (strcmp(pkt, w->dev) != 0) {
      dev_send(w->conn, pkt);
      free(w->dev);
      w->dev = pkt;
    } else {
      free(pkt);
    }
  }
  for (;;) {
    lr_wait *w = s->waits;
    while (w && !(w->dev && (w->conn->phase != LR_C_JOINING || served(s, w->ns, w->id))))
      w = w->next;
    if (!w) break;
    if (w->conn->phase != LR_C_JOINING) {
      lr_conn_release(w->conn);
      wait_free(w);
    } else {
      lr_info("conn %s: %s/%s loads now: joining", w->conn->id, w->ns, w->id);
      dev_release(s, w);
    }
  }
}

void lr_server_dev_recheck_later(lr_server *s) {
  for (lr_wait *w = s->waits; w; w = w->next)
    if (w->dev) {
      lr_timer_add_c(s, 0, dev_recheck, s);
      return;
    }
}

/* ------------------------------------------------------------ who may create a room */

/* Whether a definition serves ns/id (runtime.has_room). */
static bool served(lr_server *s, const char *ns, const char *id) {
  return s->rules->serves(s, ns, id);
}

/* req carries the shard secret (a shard process relaying its clients). */
static bool from_shard(lr_server *s, const lr_request *req) {
  const char *given = header_of(req, "x-access-shard");
  if (!given || !(header_of(req, "x-shard-id") || header_of(req, "x-forwarded-by-shard")))
    return false;
  char secret[512];
  lr_server_env(s, "SHARD_SECRET", secret, sizeof secret);
  if (!secret[0]) return false;
  size_t a = strlen(given), b = strlen(secret);
  unsigned d = a != b;
  for (size_t i = 0; i < b; i++) /* constant time in the secret's length */
    d |= (unsigned char)secret[i] ^ (unsigned char)(i < a ? given[i] : 0);
  return d == 0;
}

/* A request is about to create room ns/id: take a token of its client
 * address's room-creation bucket (--room-create-rate), so that one address
 * cannot fill the room table. The address is the socket's; for a request
 * relayed by an authenticated shard, the client address it carries
 * (x-forwarded-for); a shard uplink and in-process requests (room to room,
 * no address) are not counted. false: refused (logged). */
static bool may_create(lr_server *s, const char *ns, const char *id, const lr_request *req) {
  char buf[64];
  const char *addr = req->remote_addr;
  if (from_shard(s, req)) {
    const char *xff = header_of(req, "x-forwarded-for");
    if (header_of(req, "x-shard-id") || !xff || !*xff) return true;
    size_t n = strcspn(xff, ", ");
    snprintf(buf, sizeof buf, "%.*s", (int)(n < sizeof buf ? n : sizeof buf - 1), xff);
    addr = buf;
  }
  if (lr_addr_rate_take(s->room_rate, addr, lr_now(s))) return true;
  lr_warn("room %s/%s not created: %s creates rooms faster than %g/s (burst %g)", ns, id, addr,
          lr_addr_rate_rate(s->room_rate), lr_addr_rate_burst(s->room_rate));
  return false;
}

int lr_server_ws_open(lr_server *s, const lr_request *req, const lr_transport_vt *vt, void *tp,
                      lr_conn **out) {
  *out = NULL;
  char ns[256], id[256];
  const char *rest;
  if (s->shutting_down) return 503;
  if (parse_party_path(s, req->path, ns, sizeof ns, id, sizeof id, &rest) != 0) {
    lr_warn_limited("websocket path", "websocket refused: path %s is not /parties/{party}/{room}",
                    req->path);
    return 404;
  }
  /* The routing below reads headers only for a room it has to find, wake,
   * create or relay, and on a shard or cluster server; a join on a loaded
   * room leaves them to the rules (b_connect loads them when the room
   * reads them). */
  lr_request full;
  lr_room *found = lr_room_find(s, ns, id);
  if (!found || s->mode || s->cluster) req = lr_request_full(req, &full);
  if (s->mode && strcmp(ns, "shard") == 0) return s->mode->ws_open(s, req, id, vt, tp, out);
  if (!found) {
    if (!served(s, ns, id)) {
      if (dev_park(s, ns, id, req, vt, tp, out)) return 0;
      lr_warn("websocket refused: no room definition matches %s/%s", ns, id);
      return 404;
    }
    if (!may_create(s, ns, id, req)) return 429;
  }
  if (s->cluster && !from_node(req) && !lr_room_find(s, ns, id)) {
    const char *owner = s->cluster->owner(s, ns, id);
    if (owner) { /* another node holds it (its lease, cached): relayed there */
      lr_conn *c = lr_conn_new(s, NULL, vt, tp);
      s->stats.conns_open++;
      s->stats.conns_total++;
      s->cluster->relay_ws(s, c, req, ns, id, owner);
      *out = c;
      return 0;
    }
  }
  /* A shard's uplink goes to the room at once; a cluster node's link
   * waits for the room's lease like a client, once its credentials are
   * checked (a request without them takes no lease, creates no room). */
  if (s->cluster && header_of(req, "x-shard-id") && !from_shard(s, req)) {
    lr_warn("websocket for %s/%s refused: x-shard-id without the node secret", ns, id);
    return 401;
  }
  if (!header_of(req, "x-shard-id") || s->cluster) {
    int w = wait_for_storage(s, ns, id, req, vt, tp, NULL, NULL, out);
    if (w > 0) return 0;
    if (w < 0) return 503;
  }
  int status = 503;
  lr_room *r = found; /* nothing above runs room code for a found room: no second lookup */
  if (!r)
    r = get_room(s, ns, id, &status);
  else if (!lr_room_activity(r))
    r = NULL;
  if (!r) {
    if (status == 404)
      lr_warn_limited("no such room", "websocket refused: no room definition matches %s/%s", ns,
                      id);
    return status;
  }
  if (header_of(req, "x-shard-id")) {
    /* A shard process relaying its clients (uplink.c). */
    return s->relay_open ? s->relay_open(r, req, vt, tp, out) : 404;
  }
  *out = lr_room_open_conn(r, req, vt, tp);
  return 0;
}

void lr_server_open_conn(lr_server *s, lr_conn *c, const lr_request *req) {
  char ns[256], id[256];
  int status = 404;
  lr_room *r = NULL;
  if (!s->shutting_down && parse_party_path(s, req->path, ns, sizeof ns, id, sizeof id, NULL) == 0)
    r = get_room(s, ns, id, &status);
  if (!r)
    lr_conn_close(c, 1011, "room unavailable");
  else if (lr_room_store_failing(r))
    lr_conn_close(c, 1013, "storage unavailable");
  else {
    c->room = lr_room_retain(r);
    lr_conn_connect(c, req);
  }
}

/* ------------------------------------------------------------ HTTP */

const lr_header lr_cors_headers[LR_CORS_N] = {
    {"Access-Control-Allow-Origin", "*"},
    {"Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, PATCH, OPTIONS"},
    {"Access-Control-Allow-Headers", "Content-Type, Authorization, X-Requested-With"},
    {"Access-Control-Max-Age", "86400"},
};

void lr_respond_json(lr_response_cb done, void *ud, int status, const char *body) {
  lr_header h[5];
  memcpy(h, lr_cors_headers, sizeof lr_cors_headers);
  h[4] = (lr_header){"Content-Type", "application/json"};
  lr_response resp = {status, h, 5, body, strlen(body)};
  done(ud, &resp);
}

/* /healthz, /readyz, /metrics, /admin...: answered by runtime.operations,
 * which returns {status, headers, body} like a room route. */
static void ops_request(lr_server *s, const lr_request *req, lr_response_cb done, void *ud) {
  if (s->rules->operations(s, req, done, ud) < 0)
    lr_respond_json(done, ud, 500, "{\"error\":\"Internal Server Error\"}");
}

static const char storage_503[] = "{\"error\":\"Storage unavailable\",\"code\":\"storage\"}";

/* A room's handler answered: write first (an answer must not show what
 * could not be stored); true when the engine answered 503 instead. */
static bool http_settle(lr_room *r, lr_response_cb done, void *ud) {
  lr_server_flush_touched(r->srv);
  if (!lr_room_store_failing(r)) return false;
  lr_respond_json(done, ud, 503, storage_503);
  return true;
}

void lr_server_http(lr_server *s, const lr_request *req, lr_response_cb done, void *ud) {
  char ns[256], id[256];
  const char *rest;
  if (strcmp(req->method, "OPTIONS") == 0) {
    lr_respond_json(done, ud, 200, "{}");
    return;
  }
  if (strncmp(req->path, "/parties/", 9) != 0) {
    ops_request(s, req, done, ud);
    return;
  }
  if (parse_party_path(s, req->path, ns, sizeof ns, id, sizeof id, &rest) != 0) {
    lr_header h[1] = {{"Content-Type", "text/plain"}};
    lr_response resp = {404, h, 1, "Not Found", 9};
    done(ud, &resp);
    return;
  }
  if (s->mode && s->mode->http(s, req, ns, id, rest, done, ud)) return;
  lr_room *live = lr_room_find(s, ns, id);
  if (s->cluster && !live && !from_node(req)) {
    const char *owner = s->cluster->owner(s, ns, id);
    if (owner) { /* another node holds it (its lease, cached): forwarded there */
      s->cluster->relay_http(s, req, ns, id, owner, done, ud);
      return;
    }
  }
  if (!live || live->hibernated) {
    /* Nothing is created, woken or read from storage for a request the
     * room does not serve. */
    /* 1 answered (no such route, bad shard credentials), 0 the room
     * serves it, -1 no definition serves ns/id. */
    int pr = s->rules->preroute(s, ns, id, req, rest, done, ud);
    if (pr > 0) return;
    if (pr == 0 && !live && !may_create(s, ns, id, req)) {
      lr_respond_json(done, ud, 429, "{\"error\":\"Too Many Requests\"}");
      return;
    }
  }
  int w = wait_for_storage(s, ns, id, req, NULL, NULL, done, ud, NULL);
  if (w > 0) return;
  if (w < 0) {
    lr_respond_json(done, ud, 503, "{\"error\":\"Storage unavailable\"}");
    return;
  }
  int status;
  lr_room *r = get_room(s, ns, id, &status);
  if (!r) {
    if (status == 404)
      lr_warn_limited("no such room", "http %s %s: no room definition matches %s/%s", req->method,
                      req->path, ns, id);
    lr_respond_json(done, ud, status,
                    status == 404   ? "{\"error\":\"Not found\"}"
                    : status == 500 ? "{\"error\":\"Internal Server Error\"}"
                                    : "{\"error\":\"Service Unavailable\"}");
    return;
  }
  if (lr_room_store_failing(r)) {
    lr_respond_json(done, ud, 503, storage_503);
    return;
  }
  lr_room_retain(r);
  if (s->rules->request(r, req, rest, http_settle, done, ud) < 0) {
    lr_server_flush_touched(s);
    lr_respond_json(done, ud, 500, "{\"error\":\"Internal Server Error\"}");
  }
  lr_room_release(r);
}

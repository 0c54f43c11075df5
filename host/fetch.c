/*
 * fetch.c - the machinery of outgoing HTTP requests and WebSocket client
 * connections on the server loop's own libwebsockets context (see fetch.h).
 * The other files of the client (fetch_int.h): fetch_http.c, the HTTP
 * exchange (lr_fetch); fetch_ws.c, WebSocket client links (lr_wsc_*);
 * fetch_lua.c, lunaroom.fetch; fetch_url.c, URL parsing.
 *
 * Owns: the client vhost in the server loop's context, the client-only
 * context used when no loop runs (created on first use, destroyed by
 * lr_fetch_shutdown; https:// and wss:// verified against the system CAs or
 * --tls-ca), the lws protocol callback (it hands each object's events to
 * fetch_http.c or fetch_ws.c), the list of live objects and when they are
 * freed, their handshake headers, connecting them, and the deferred event
 * queue that runs user callbacks.
 * Must not: know rooms, shards or JSON; run user code from inside an lws
 * callback; poll.
 *
 * One loop. While the server loop runs (net.h lr_net_context), requests and
 * WebSocket links (a shard's uplinks) are client connections of a
 * client-only vhost added to the loop's own context: their sockets are in
 * the loop's poll set, so an answer or a frame wakes the loop at once; their
 * events run from a 0 ms engine timer armed when one is queued, and each
 * request's deadline is an engine timer. The loop's shutdown drain waits
 * (bounded) for requests in flight and close handshakes (lr_net_set_drain);
 * what is still open when the loop ends is destroyed with its context
 * (requests fail with "connection closed", links close with 1006).
 * Work started while no loop runs (before it starts, or after it ended: a
 * shard's last reports, a Lua backend's last writes) waits for the next
 * engine timer: if a loop runs by then it goes there; if not, it connects on
 * a client-only context of our own, which only lr_fetch_flush services
 * (the shutdown after the loop calls it). Nothing polls while the loop runs.
 *
 * Events. lws callbacks only record what happened (open, one complete
 * message, closed, an HTTP result) in a FIFO; the FIFO is drained from an
 * engine timer (or lr_fetch_flush) and the user callbacks run then, so they
 * may freely open, send or close. Objects are freed once lws destroyed their
 * wsi and the user can no longer see them (closed callback returned, or
 * closed/cancelled by the user).
 */
#include "fetch.h"
#include "fetch_int.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <libwebsockets.h>

#include "buf.h"
#include "engine.h"
#include "fetch_url.h"
#include "log.h"
#include "net.h"

#define FETCH_RX 65536            /* lws receive buffer per connection */
#define FETCH_HANDSHAKE_BUF 32768 /* lws per-thread buffer (request header block) */

typedef struct event {
  struct event *next;
  ev_kind kind;
  conn_common *obj;
  lr_buf data; /* EV_MESSAGE */
  int code;    /* EV_CLOSED */
  char *reason;
} event;

static struct {
  struct lws_context *ctx;
  lr_server *srv;
  conn_common *all; /* every live object */
  event *ev_head, *ev_tail;
  uint64_t next_id;
  uint64_t connect_timer; /* armed 0 ms timer for pending objects (0 = none) */
  bool shutting_down;
  const char *tls_ca; /* --tls-ca, or NULL = the system's CAs */
  /* While the server loop runs: a client-only vhost in the loop's own
   * context (net.h lr_net_context), so an answer wakes the loop at once;
   * events go out from a 0 ms engine timer (never from inside an lws
   * callback). */
  struct lws_context *net; /* the loop's context the vhost belongs to */
  struct lws_vhost *vh;    /* the fetch vhost in it */
  uint64_t dispatch_timer; /* armed 0 ms timer for queued events */
} G;

void lr_fetch_set_tls_ca(const char *path) {
  G.tls_ca = path;
}

/* ------------------------------------------------------------ objects */

int fetch_parse_url(const char *url, conn_common *cc) {
  lr_url u;
  if (lr_url_parse(url, &u) != 0) return -1;
  cc->host = u.host;
  cc->path = u.path;
  cc->hostport = u.hostport;
  cc->port = u.port;
  cc->tls = u.tls;
  return 0;
}

/* Headers a proxy must not pass on (the client sets its own). */
static bool hop_by_hop(const char *name) {
  static const char *const skip[] = {"host",
                                     "connection",
                                     "content-length",
                                     "transfer-encoding",
                                     "upgrade",
                                     "keep-alive",
                                     "te",
                                     "trailer",
                                     "proxy-connection",
                                     "expect",
                                     "accept-encoding",
                                     "sec-websocket-key",
                                     "sec-websocket-version",
                                     "sec-websocket-extensions",
                                     "sec-websocket-protocol",
                                     "sec-websocket-accept"};
  for (size_t i = 0; i < sizeof skip / sizeof *skip; i++)
    if (strcasecmp(name, skip[i]) == 0) return true;
  return false;
}

void fetch_keep_headers(conn_common *cc, const lr_header *h, size_t n) {
  lr_buf_init(&cc->headers);
  for (size_t i = 0; i < n; i++) {
    if (!h[i].name || !h[i].value || hop_by_hop(h[i].name)) continue;
    lr_buf_puts(&cc->headers, h[i].name);
    lr_buf_puts(&cc->headers, ":");
    lr_buf_putc(&cc->headers, 0);
    lr_buf_puts(&cc->headers, h[i].value);
    lr_buf_putc(&cc->headers, 0);
  }
}

static void arm_dispatch(void);

void fetch_push_event(ev_kind kind, conn_common *obj, int code, const char *reason,
                      const void *data, size_t len) {
  event *e = lr_xcalloc(1, sizeof *e);
  e->kind = kind;
  e->obj = obj;
  obj->nev++;
  e->code = code;
  e->reason = reason ? lr_xstrndup(reason, strlen(reason)) : NULL;
  lr_buf_init(&e->data);
  if (data) lr_buf_put(&e->data, data, len);
  if (G.ev_tail)
    G.ev_tail->next = e;
  else
    G.ev_head = e;
  G.ev_tail = e;
  arm_dispatch();
}

static void free_common(conn_common *cc) {
  free(cc->host);
  free(cc->path);
  free(cc->hostport);
  lr_buf_free(&cc->headers);
}

void fetch_free_obj(conn_common *cc) {
  free_common(cc);
  if (cc->kind == OBJ_HTTP) {
    http_req *r = (http_req *)cc;
    if (!r->called && r->drop) r->drop(r->ud); /* e.g. a Lua request that never answered */
    if (r->deadline_timer && G.srv) lr_timer_cancel(G.srv, r->deadline_timer);
    free(r->method);
    free(r->body);
    lr_buf_free(&r->resp);
  } else {
    lr_wsc *w = (lr_wsc *)cc;
    while (w->out_head) {
      frame *f = w->out_head;
      w->out_head = f->next;
      free(f);
    }
    lr_buf_free(&w->rx);
  }
  free(cc);
}

/* May the object go? lws is done with it and the user cannot see it. */
static bool obj_done(conn_common *cc) {
  if (!cc->wsi_gone || cc->nev) return false;
  if (cc->kind == OBJ_HTTP) {
    http_req *r = (http_req *)cc;
    return r->cancelled || r->delivered;
  }
  lr_wsc *w = (lr_wsc *)cc;
  return w->user_closed || w->closed_done;
}

static void sweep(void) {
  for (conn_common **pp = &G.all; *pp;) {
    conn_common *cc = *pp;
    if (obj_done(cc)) {
      *pp = cc->next_all;
      fetch_free_obj(cc);
    } else {
      pp = &cc->next_all;
    }
  }
}

/* ------------------------------------------------------------ lws callback */

static int append_headers(conn_common *cc, struct lws *wsi, unsigned char **p, unsigned char *end) {
  const char *h = cc->headers.data;
  size_t off = 0;
  while (h && off < cc->headers.len) {
    const char *name = h + off;
    off += strlen(name) + 1;
    const char *val = h + off;
    off += strlen(val) + 1;
    if (lws_add_http_header_by_name(wsi, (const unsigned char *)name, (const unsigned char *)val,
                                    (int)strlen(val), p, end)) {
      lr_warn("fetch %s%s: header %s dropped (request headers too large)", cc->hostport, cc->path,
              name);
    }
  }
  return 0;
}

static int fetch_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                          size_t len) {
  (void)user;
  conn_common *cc = lws_get_opaque_user_data(wsi);
  http_req *r = cc && cc->kind == OBJ_HTTP ? (http_req *)cc : NULL;
  lr_wsc *w = cc && cc->kind == OBJ_WS ? (lr_wsc *)cc : NULL;

  switch (reason) {
  case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER: {
    if (!cc) return 0;
    unsigned char **p = (unsigned char **)in, *end = (*p) + len;
    append_headers(cc, wsi, p, end);
    if (r && r->body) {
      if (lws_add_http_header_content_length(wsi, r->bodylen, p, end)) return -1;
      lws_client_http_body_pending(wsi, 1);
      lws_callback_on_writable(wsi);
    }
    return 0;
  }
  case LWS_CALLBACK_CLIENT_CONNECTION_ERROR: {
    char why[200];
    snprintf(why, sizeof why, "connect failed: %s", in && len ? (const char *)in : "error");
    if (r) fetch_http_finish(r, why);
    if (w) fetch_ws_closed(w, 1006, why);
    return 0;
  }
  case LWS_CALLBACK_WSI_DESTROY:
    if (!cc) return 0;
    if (r) fetch_http_finish(r, "connection closed");
    if (w) fetch_ws_closed(w, 1006, "connection lost");
    cc->wsi = NULL;
    cc->wsi_gone = true;
    lws_set_opaque_user_data(wsi, NULL);
    arm_dispatch(); /* sweeps it if nothing else is queued for it */
    return 0;
  default: {
    int rc = fetch_http_event(wsi, reason, r, in, len);
    if (rc == FETCH_NOT_MINE) rc = fetch_ws_event(wsi, reason, w, in, len);
    return rc == FETCH_NOT_MINE ? 0 : rc;
  }
  }
}

static const struct lws_protocols fetch_protocols[] = {
    {"lunaroom-fetch", fetch_callback, 0, FETCH_RX, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* ------------------------------------------------------------ service */

static void dispatch(void) {
  while (G.ev_head) {
    event *e = G.ev_head;
    G.ev_head = e->next;
    if (!G.ev_head) G.ev_tail = NULL;
    conn_common *cc = e->obj;
    cc->nev--;
    if (cc->kind == OBJ_HTTP) {
      http_req *r = (http_req *)cc;
      r->delivered = true;
      if (!r->cancelled) {
        lr_fetch_result res = {e->reason ? 0 : r->status,     e->reason,
                               r->ctype[0] ? r->ctype : NULL, r->location[0] ? r->location : NULL,
                               lr_buf_cstr(&r->resp),         r->resp.len};
        r->cancelled = true; /* once */
        r->called = true;
        r->cb(r->ud, &res);
      }
    } else {
      lr_wsc *w = (lr_wsc *)cc;
      if (!w->user_closed && !w->closed_done) {
        if (e->kind == EV_OPEN && w->cbs->open)
          w->cbs->open(w->ud);
        else if (e->kind == EV_MESSAGE && w->cbs->message)
          w->cbs->message(w->ud, lr_buf_cstr(&e->data), e->data.len);
        else if (e->kind == EV_CLOSED) {
          w->closed_done = true;
          if (w->cbs->closed) w->cbs->closed(w->ud, e->code, e->reason ? e->reason : "");
        }
      }
    }
    lr_buf_free(&e->data);
    free(e->reason);
    free(e);
  }
}

static void dispatch_cb(void *ud) {
  (void)ud;
  G.dispatch_timer = 0;
  dispatch();
  sweep();
}

static void arm_dispatch(void) {
  if (G.dispatch_timer || !G.srv || G.shutting_down) return;
  G.dispatch_timer = lr_timer_add_c(G.srv, 0, dispatch_cb, NULL);
}

/* Client connections on the loop's context that its shutdown drain waits
 * for: requests in flight and links closing (lr_net_set_drain). Open links
 * nobody closed do not hold the drain. */
static size_t drain_busy(void) {
  size_t n = 0;
  for (conn_common *cc = G.all; cc; cc = cc->next_all) {
    if (!cc->shared || cc->wsi_gone || !cc->wsi) continue;
    if (cc->kind == OBJ_HTTP ? !((http_req *)cc)->finished : ((lr_wsc *)cc)->user_closed) n++;
  }
  return n;
}

/* The fetch vhost of the running server loop, or NULL (no loop runs). */
static struct lws_vhost *shared_vhost(lr_server *s) {
  struct lws_context *nc = lr_net_context();
  if (!nc || G.shutting_down) return NULL;
  if (G.net == nc && G.vh) return G.vh;
  struct lws_context_creation_info ci;
  memset(&ci, 0, sizeof ci);
  ci.port = CONTEXT_PORT_NO_LISTEN;
  ci.protocols = fetch_protocols;
  ci.vhost_name = "lunaroom-fetch";
  /* https:// and wss:// verify the peer (chain and host name) against
   * --tls-ca, else the system's CA store. */
  ci.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
  ci.client_ssl_ca_filepath = G.tls_ca;
  struct lws_vhost *vh = lws_create_vhost(nc, &ci);
  if (!vh) {
    lr_warn("fetch: cannot add a client vhost to the server loop");
    return NULL;
  }
  G.net = nc;
  G.vh = vh;
  if (!G.srv) G.srv = s;
  lr_net_set_drain(drain_busy);
  return vh;
}

/* The client-only context for work made while no loop runs (serviced by
 * lr_fetch_flush). */
static int ensure_context(void) {
  if (G.shutting_down) return -1;
  if (G.ctx) return 0;
  struct lws_context_creation_info ci;
  memset(&ci, 0, sizeof ci);
  ci.port = CONTEXT_PORT_NO_LISTEN;
  ci.protocols = fetch_protocols;
  ci.gid = -1;
  ci.uid = -1;
  ci.timeout_secs = 10;
  ci.pt_serv_buf_size = FETCH_HANDSHAKE_BUF;
  /* https:// and wss:// verify the peer (chain and host name) against
   * --tls-ca, else the system's CA store. */
  ci.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
  ci.client_ssl_ca_filepath = G.tls_ca;
  G.ctx = lws_create_context(&ci);
  if (!G.ctx) {
    lr_error("cannot create the client context for outgoing connections");
    return -1;
  }
  return 0;
}

/* Connect cc on the loop's context when one runs, else on ours. Its
 * connect failure is an event like any other. */
static void connect_obj(conn_common *cc) {
  bool ws = cc->kind == OBJ_WS;
  http_req *r = ws ? NULL : (http_req *)cc;
  cc->pending = false;
  cc->shared = shared_vhost(G.srv) != NULL;
  struct lws_client_connect_info i;
  memset(&i, 0, sizeof i);
  if (cc->shared) {
    i.context = G.net;
    i.vhost = G.vh;
  } else if (ensure_context() == 0) {
    i.context = G.ctx;
  }
  i.address = cc->host;
  i.port = cc->port;
  i.path = cc->path;
  i.host = cc->hostport;
  i.method = ws ? NULL : r->method;
  i.local_protocol_name = "lunaroom-fetch";
  i.ssl_connection = ws ? 0 : LCCSCF_HTTP_NO_FOLLOW_REDIRECT;
  if (cc->tls) i.ssl_connection |= LCCSCF_USE_SSL;
  i.opaque_user_data = cc;
  i.pwsi = &cc->wsi;
  struct lws *wsi = i.context ? lws_client_connect_via_info(&i) : NULL;
  if (wsi) return;
  cc->wsi = NULL;
  cc->wsi_gone = true;
  if (r)
    fetch_http_finish(r, "connect failed");
  else
    fetch_ws_closed((lr_wsc *)cc, 1006, "connect failed");
}

/* Objects made while no loop ran: connect them now (see the top). */
static void connect_pending(void) {
  for (conn_common *cc = G.all; cc; cc = cc->next_all) {
    if (!cc->pending) continue;
    http_req *r = cc->kind == OBJ_HTTP ? (http_req *)cc : NULL;
    bool gone = r ? r->cancelled || r->finished : ((lr_wsc *)cc)->user_closed;
    if (gone) {
      cc->pending = false;
      cc->wsi_gone = true; /* never had one */
    } else {
      connect_obj(cc);
    }
  }
  sweep();
}

static void connect_cb(void *ud) {
  (void)ud;
  G.connect_timer = 0;
  connect_pending();
}

int fetch_start(lr_server *s, conn_common *cc) {
  if (G.shutting_down) return -1;
  if (!G.srv) G.srv = s;
  cc->next_all = G.all;
  G.all = cc;
  if (shared_vhost(s)) {
    connect_obj(cc);
    return 0;
  }
  cc->pending = true;
  if (!G.connect_timer) G.connect_timer = lr_timer_add_c(G.srv, 0, connect_cb, NULL);
  return 0;
}

uint64_t fetch_next_id(void) {
  return G.shutting_down ? 0 : ++G.next_id;
}

http_req *fetch_find_http(uint64_t id) {
  for (conn_common *cc = G.all; cc; cc = cc->next_all)
    if (cc->kind == OBJ_HTTP && ((http_req *)cc)->id == id) return (http_req *)cc;
  return NULL;
}

/* ------------------------------------------------------------ flush, shutdown */

void lr_fetch_flush(int64_t max_ms) {
  if (!G.srv) return;
  connect_pending(); /* no loop runs now: on our own context */
  int64_t deadline = lr_now(G.srv) + max_ms;
  while ((G.all || G.ev_head) && lr_now(G.srv) < deadline) {
    if (G.ctx) lws_service(G.ctx, -1);
    int64_t now = lr_now(G.srv);
    for (conn_common *cc = G.all; cc; cc = cc->next_all) {
      http_req *r = cc->kind == OBJ_HTTP ? (http_req *)cc : NULL;
      if (r && !r->finished && now >= r->deadline) {
        if (r->deadline_timer) lr_timer_cancel(G.srv, r->deadline_timer);
        fetch_http_deadline(r);
      }
    }
    dispatch();
    sweep();
    if (G.all || G.ev_head) usleep(1000);
  }
}

void lr_fetch_shutdown(void) {
  if (!G.ctx && !G.all && !G.ev_head) return;
  G.shutting_down = true;
  if (G.dispatch_timer && G.srv) lr_timer_cancel(G.srv, G.dispatch_timer);
  if (G.connect_timer && G.srv) lr_timer_cancel(G.srv, G.connect_timer);
  G.dispatch_timer = G.connect_timer = 0;
  lr_net_set_drain(NULL);
  for (conn_common *cc = G.all; cc; cc = cc->next_all) {
    if (cc->kind == OBJ_HTTP)
      ((http_req *)cc)->cancelled = true;
    else
      ((lr_wsc *)cc)->user_closed = true;
  }
  if (G.ctx) lws_context_destroy(G.ctx); /* WSI_DESTROY for every connection */
  G.ctx = NULL;
  G.net = NULL;
  G.vh = NULL;
  while (G.ev_head) {
    event *e = G.ev_head;
    G.ev_head = e->next;
    lr_buf_free(&e->data);
    free(e->reason);
    free(e);
  }
  G.ev_tail = NULL;
  while (G.all) {
    conn_common *cc = G.all;
    G.all = cc->next_all;
    fetch_free_obj(cc);
  }
}

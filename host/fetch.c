/*
 * fetch.c - outgoing HTTP requests and WebSocket client connections on the
 * server loop's own libwebsockets context (see fetch.h).
 *
 * Owns: the client vhost in the server loop's context, the client-only
 * context used when no loop runs (created on first use, destroyed by
 * lr_fetch_shutdown), URL parsing (http://, ws://, and https://, wss://
 * verified against the system CAs or --tls-ca; no redirects followed), the
 * request and connection objects, their send queues and receive buffers, and
 * the deferred event queue that runs user callbacks.
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

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <lauxlib.h>
#include <libwebsockets.h>

#include "buf.h"
#include "engine.h"
#include "fetch_url.h"
#include "log.h"
#include "lua_vm.h"
#include "net.h"

#define FETCH_RX 65536                 /* lws receive buffer per connection */
#define FETCH_MAX_MESSAGE (16u << 20)  /* largest WebSocket message or HTTP body kept */
#define FETCH_DEFAULT_TIMEOUT_MS 30000 /* whole HTTP exchange */
#define FETCH_HANDSHAKE_BUF 32768      /* lws per-thread buffer (request header block) */

typedef enum { OBJ_HTTP = 1, OBJ_WS } obj_kind;

typedef struct frame {
  struct frame *next;
  size_t len;
  unsigned char data[]; /* LWS_PRE headroom, then len bytes */
} frame;

typedef struct conn_common {
  obj_kind kind;
  struct lws *wsi;
  bool wsi_gone; /* lws destroyed the wsi (or never made one) */
  int nev;       /* events queued for this object */
  char *host, *path, *hostport;
  int port;
  bool tls;       /* https:// or wss:// */
  bool shared;    /* on the server loop's context (the fetch vhost), not on ours */
  bool pending;   /* not connected yet: no loop ran when it was made (connect_pending) */
  lr_buf headers; /* "name:\0value\0" pairs for the handshake */
  struct conn_common *next_all;
} conn_common;

typedef struct http_req {
  conn_common cc;
  uint64_t id;
  lr_fetch_cb cb;
  void *ud;
  char *method;
  char *body;
  size_t bodylen;
  int status;
  char ctype[128], location[1024];
  lr_buf resp;
  bool finished;  /* the result event is queued (or the request cancelled) */
  bool delivered; /* the result event was taken off the queue */
  bool cancelled;
  int64_t deadline;        /* lr_now() past which the request fails */
  uint64_t deadline_timer; /* the engine timer at the deadline (0 = none) */
  bool called;             /* cb ran */
} http_req;

struct lr_wsc {
  conn_common cc;
  const lr_wsc_cbs *cbs;
  void *ud;
  frame *out_head, *out_tail;
  size_t out_bytes; /* queued payload bytes */
  lr_buf rx;
  bool opened;
  bool user_closed;   /* the user called lr_wsc_close: no more callbacks */
  bool closed_queued; /* the closed event is queued */
  bool closed_done;   /* the closed callback returned */
  int close_code;     /* ours (user close) */
  char close_reason[124];
  int peer_code; /* from the peer's close frame */
  char peer_reason[124];
};

typedef enum { EV_HTTP, EV_OPEN, EV_MESSAGE, EV_CLOSED } ev_kind;

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

/* ------------------------------------------------------------ helpers */

static char *xdup(const char *s, size_t n) {
  return lr_xstrndup(s, n);
}

/* Split http://host[:port]/path?query (or ws://, https://, wss://); the
 * rules are fetch_url.h's (host/tests/fuzz/fuzz_url.c checks them). Returns
 * 0 or -1 (nothing allocated). */
static int parse_url(const char *url, conn_common *cc) {
  for (const char *q = url; *q; q++) /* no spaces, controls or fragment: it goes on the wire */
    if ((unsigned char)*q < 0x21 || *q == 0x7f || *q == '#') return -1;
  const char *p;
  bool tls = false;
  if (strncmp(url, "http://", 7) == 0)
    p = url + 7;
  else if (strncmp(url, "ws://", 5) == 0)
    p = url + 5;
  else if (strncmp(url, "https://", 8) == 0)
    p = url + 8, tls = true;
  else if (strncmp(url, "wss://", 6) == 0)
    p = url + 6, tls = true;
  else
    return -1;
  const char *host = p, *host_end;
  bool v6 = *p == '[';
  if (v6) { /* [v6]:port */
    const char *close = strchr(p, ']');
    if (!close) return -1;
    host = p + 1;
    host_end = close;
    p = close + 1;
  } else {
    while (*p && *p != ':' && *p != '/' && *p != '?')
      p++;
    host_end = p;
  }
  if (host_end == host || host_end - host > LR_URL_HOST_MAX) return -1;
  for (const char *q = host; q < host_end; q++)
    if (strchr("/?@[]", *q) || (*q & 0x80)) return -1; /* no userinfo; names in ASCII */
  int port = tls ? 443 : 80;
  if (*p == ':') {
    long v = 0;
    const char *d = p + 1;
    while (*d >= '0' && *d <= '9' && v <= 65535)
      v = v * 10 + (*d++ - '0');
    if (d == p + 1 || v <= 0 || v > 65535) return -1;
    port = (int)v;
    p = d;
  }
  if (*p && *p != '/' && *p != '?') return -1;
  cc->tls = tls;
  cc->host = xdup(host, (size_t)(host_end - host));
  cc->port = port;
  if (*p == '/') {
    cc->path = xdup(p, strlen(p));
  } else {
    size_t n = strlen(p); /* "" or "?query" */
    cc->path = lr_xmalloc(n + 2);
    cc->path[0] = '/';
    memcpy(cc->path + 1, p, n + 1);
  }
  char hp[LR_URL_HOST_MAX + 16];
  snprintf(hp, sizeof hp, strchr(cc->host, ':') ? "[%s]" : "%s", cc->host); /* v6 */
  if (port != (tls ? 443 : 80)) snprintf(hp + strlen(hp), sizeof hp - strlen(hp), ":%d", port);
  cc->hostport = xdup(hp, strlen(hp));
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

static void keep_headers(conn_common *cc, const lr_header *h, size_t n) {
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

static void push_event(ev_kind kind, conn_common *obj, int code, const char *reason,
                       const void *data, size_t len) {
  event *e = lr_xcalloc(1, sizeof *e);
  e->kind = kind;
  e->obj = obj;
  obj->nev++;
  e->code = code;
  e->reason = reason ? xdup(reason, strlen(reason)) : NULL;
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

static void lua_done(void *ud, const lr_fetch_result *r);

static void free_obj(conn_common *cc) {
  free_common(cc);
  if (cc->kind == OBJ_HTTP) {
    http_req *r = (http_req *)cc;
    if (!r->called && r->cb == lua_done) free(r->ud); /* a Lua request that never answered */
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
      free_obj(cc);
    } else {
      pp = &cc->next_all;
    }
  }
}

/* ------------------------------------------------------------ lws callback */

static void http_finish(http_req *r, const char *error) {
  if (r->finished) return;
  r->finished = true;
  if (!r->cancelled) push_event(EV_HTTP, &r->cc, 0, error, NULL, 0);
}

static void ws_closed(lr_wsc *w, int code, const char *reason) {
  if (w->closed_queued) return;
  w->closed_queued = true;
  if (!w->user_closed) push_event(EV_CLOSED, &w->cc, code, reason, NULL, 0);
}

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

#define FETCH_NOT_MINE (-99) /* a reason the event handler below does not handle */

/* The HTTP client events of r (NULL: an object already gone). */
static int http_event(struct lws *wsi, enum lws_callback_reasons reason, http_req *r, void *in,
                      size_t len) {
  switch (reason) {
  case LWS_CALLBACK_CLIENT_HTTP_WRITEABLE: {
    if (!r || !r->body) return 0;
    unsigned char *buf = lr_xmalloc(LWS_PRE + r->bodylen + 1);
    memcpy(buf + LWS_PRE, r->body, r->bodylen);
    int n = lws_write(wsi, buf + LWS_PRE, r->bodylen, LWS_WRITE_HTTP_FINAL);
    free(buf);
    lws_client_http_body_pending(wsi, 0);
    return n < 0 ? -1 : 0;
  }
  case LWS_CALLBACK_ESTABLISHED_CLIENT_HTTP:
    if (!r) return 0;
    r->status = (int)lws_http_client_http_response(wsi);
    if (lws_hdr_copy(wsi, r->ctype, sizeof r->ctype, WSI_TOKEN_HTTP_CONTENT_TYPE) < 0)
      r->ctype[0] = 0;
    if (lws_hdr_copy(wsi, r->location, sizeof r->location, WSI_TOKEN_HTTP_LOCATION) < 0)
      r->location[0] = 0;
    return 0;
  case LWS_CALLBACK_RECEIVE_CLIENT_HTTP: {
    char buffer[4096 + LWS_PRE];
    char *px = buffer + LWS_PRE;
    int lenx = (int)sizeof buffer - LWS_PRE;
    if (lws_http_client_read(wsi, &px, &lenx) < 0) return -1;
    return 0;
  }
  case LWS_CALLBACK_RECEIVE_CLIENT_HTTP_READ:
    if (!r) return 0;
    if (r->resp.len + len > FETCH_MAX_MESSAGE) {
      http_finish(r, "response too large");
      return -1;
    }
    lr_buf_put(&r->resp, in, len);
    return 0;
  case LWS_CALLBACK_COMPLETED_CLIENT_HTTP:
    if (r) http_finish(r, NULL);
    return 0;
  case LWS_CALLBACK_CLOSED_CLIENT_HTTP:
    if (r) http_finish(r, "connection closed before the response ended");
    return 0;
  default:
    return FETCH_NOT_MINE;
  }
}

/* The WebSocket client events of w (NULL: an object already gone). */
static int ws_event(struct lws *wsi, enum lws_callback_reasons reason, lr_wsc *w, void *in,
                    size_t len) {
  conn_common *cc = w ? &w->cc : NULL;
  switch (reason) {
  case LWS_CALLBACK_CLIENT_ESTABLISHED:
    if (!w) return 0;
    w->opened = true;
    if (!w->user_closed) push_event(EV_OPEN, cc, 0, NULL, NULL, 0);
    if (w->out_head || w->user_closed) lws_callback_on_writable(wsi);
    return 0;
  case LWS_CALLBACK_CLIENT_RECEIVE:
    if (!w) return 0;
    if (lws_is_first_fragment(wsi)) lr_buf_reset(&w->rx);
    if (w->rx.len + len > FETCH_MAX_MESSAGE) {
      lr_warn("ws %s%s: message over %u bytes; closing", cc->hostport, cc->path, FETCH_MAX_MESSAGE);
      ws_closed(w, 1009, "message too large");
      return -1;
    }
    lr_buf_put(&w->rx, in, len);
    if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
      if (!w->user_closed)
        push_event(EV_MESSAGE, cc, 0, NULL, w->rx.data ? w->rx.data : "", w->rx.len);
      lr_buf_reset(&w->rx);
    }
    return 0;
  case LWS_CALLBACK_CLIENT_WRITEABLE:
    if (!w) return -1;
    if (w->out_head) {
      frame *f = w->out_head;
      w->out_head = f->next;
      if (!w->out_head) w->out_tail = NULL;
      w->out_bytes -= f->len;
      int n = lws_write(wsi, f->data + LWS_PRE, f->len, LWS_WRITE_TEXT);
      free(f);
      if (n < 0) return -1;
      if (w->out_head || w->user_closed) lws_callback_on_writable(wsi);
      return 0;
    }
    if (w->user_closed) {
      lws_close_reason(wsi, (enum lws_close_status)w->close_code, (unsigned char *)w->close_reason,
                       strlen(w->close_reason));
      return -1;
    }
    return 0;
  case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    if (w && len >= 2) {
      const unsigned char *b = in;
      w->peer_code = (b[0] << 8) | b[1];
      size_t n = len - 2 < sizeof w->peer_reason - 1 ? len - 2 : sizeof w->peer_reason - 1;
      memcpy(w->peer_reason, b + 2, n);
      w->peer_reason[n] = 0;
    }
    return 0;
  case LWS_CALLBACK_CLIENT_CLOSED:
    if (w) ws_closed(w, w->peer_code ? w->peer_code : 1006, w->peer_code ? w->peer_reason : "");
    return 0;
  default:
    return FETCH_NOT_MINE;
  }
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
    if (r) http_finish(r, why);
    if (w) ws_closed(w, 1006, why);
    return 0;
  }
  case LWS_CALLBACK_WSI_DESTROY:
    if (!cc) return 0;
    if (r) http_finish(r, "connection closed");
    if (w) ws_closed(w, 1006, "connection lost");
    cc->wsi = NULL;
    cc->wsi_gone = true;
    lws_set_opaque_user_data(wsi, NULL);
    arm_dispatch(); /* sweeps it if nothing else is queued for it */
    return 0;
  default: {
    int rc = http_event(wsi, reason, r, in, len);
    if (rc == FETCH_NOT_MINE) rc = ws_event(wsi, reason, w, in, len);
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

/* A request's deadline passed. */
static void deadline_cb(void *ud) {
  http_req *r = ud;
  r->deadline_timer = 0;
  if (r->finished) return;
  http_finish(r, "timeout");
  if (r->cc.wsi) lws_set_timeout(r->cc.wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
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
    http_finish(r, "connect failed");
  else
    ws_closed((lr_wsc *)cc, 1006, "connect failed");
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

/* A new object: connect it now on the loop's context, or, while no loop
 * runs, on the next engine timer (or lr_fetch_flush). Returns -1 when
 * shutting down (cc is not kept). */
static int start_obj(lr_server *s, conn_common *cc) {
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

/* ------------------------------------------------------------ HTTP API */

uint64_t lr_fetch(lr_server *s, const char *method, const char *url, const lr_header *headers,
                  size_t nheaders, const char *body, size_t bodylen, int64_t timeout_ms,
                  lr_fetch_cb cb, void *ud) {
  http_req *r = lr_xcalloc(1, sizeof *r);
  r->cc.kind = OBJ_HTTP;
  if (parse_url(url, &r->cc) != 0 ||
      (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)) {
    lr_warn("fetch %s %s: only http:// and https:// URLs are supported", method, url);
    free_obj(&r->cc);
    return 0;
  }
  if (G.shutting_down) {
    free_obj(&r->cc);
    return 0;
  }
  r->id = ++G.next_id;
  r->cb = cb;
  r->ud = ud;
  r->method = xdup(method, strlen(method));
  bool has_body = strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0;
  if (has_body) {
    r->body = lr_xmalloc(bodylen + 1);
    if (bodylen) memcpy(r->body, body, bodylen);
    r->bodylen = bodylen;
  }
  r->deadline = lr_now(s) + (timeout_ms > 0 ? timeout_ms : FETCH_DEFAULT_TIMEOUT_MS);
  keep_headers(&r->cc, headers, nheaders);
  lr_buf_init(&r->resp);
  r->deadline_timer = lr_timer_add_c(s, r->deadline - lr_now(s), deadline_cb, r);
  start_obj(s, &r->cc);
  return r->id;
}

void lr_fetch_cancel(uint64_t id) {
  for (conn_common *cc = G.all; cc; cc = cc->next_all) {
    if (cc->kind != OBJ_HTTP || ((http_req *)cc)->id != id) continue;
    http_req *r = (http_req *)cc;
    r->cancelled = true;
    if (cc->wsi) lws_set_timeout(cc->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    if (cc->pending) { /* never connected: nothing of lws to wait for */
      cc->pending = false;
      cc->wsi_gone = true;
    }
    return;
  }
}

/* ------------------------------------------------------------ WebSocket API */

lr_wsc *lr_wsc_open(lr_server *s, const char *url, const lr_header *headers, size_t nheaders,
                    const lr_wsc_cbs *cbs, void *ud) {
  lr_wsc *w = lr_xcalloc(1, sizeof *w);
  w->cc.kind = OBJ_WS;
  if (parse_url(url, &w->cc) != 0) {
    lr_warn("websocket %s: only ws://, wss:// (or http://, https://) URLs are supported", url);
    free_obj(&w->cc);
    return NULL;
  }
  w->cbs = cbs;
  w->ud = ud;
  lr_buf_init(&w->rx);
  keep_headers(&w->cc, headers, nheaders);
  if (start_obj(s, &w->cc) != 0) {
    free_obj(&w->cc);
    return NULL;
  }
  return w;
}

int lr_wsc_send(lr_wsc *w, const char *data, size_t len) {
  if (w->user_closed || w->closed_queued) return -1;
  frame *f = lr_xmalloc(sizeof *f + LWS_PRE + len);
  f->next = NULL;
  f->len = len;
  memcpy(f->data + LWS_PRE, data, len);
  if (w->out_tail)
    w->out_tail->next = f;
  else
    w->out_head = f;
  w->out_tail = f;
  w->out_bytes += len;
  if (w->opened && w->cc.wsi) lws_callback_on_writable(w->cc.wsi);
  return 0;
}

size_t lr_wsc_queued(const lr_wsc *w) {
  return w->out_bytes;
}

void lr_wsc_close(lr_wsc *w, int code, const char *reason) {
  if (w->user_closed) return;
  w->user_closed = true;
  w->close_code = code ? code : 1000;
  snprintf(w->close_reason, sizeof w->close_reason, "%s", reason ? reason : "");
  if (w->cc.wsi) {
    if (w->opened && !w->closed_queued)
      lws_callback_on_writable(w->cc.wsi);
    else
      lws_set_timeout(w->cc.wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
  } else if (w->cc.pending) { /* never connected */
    w->cc.pending = false;
    w->cc.wsi_gone = true;
  }
}

/* ------------------------------------------------------------ Lua */

typedef struct lua_req {
  lr_server *s;
  int fn; /* registry ref of the callback */
} lua_req;

void lr_fetch_push_result(lua_State *L, const lr_fetch_result *r) {
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, r->status);
  lua_setfield(L, -2, "status");
  lua_pushlstring(L, r->body, r->bodylen);
  lua_setfield(L, -2, "body");
  if (r->error) {
    lua_pushstring(L, r->error);
    lua_setfield(L, -2, "error");
  }
  if (r->content_type) {
    lua_pushstring(L, r->content_type);
    lua_setfield(L, -2, "contentType");
  }
}

static void lua_done(void *ud, const lr_fetch_result *r) {
  lua_req *q = ud;
  lua_State *L = q->s->L; /* the server's: the caller's thread may be gone */
  lua_rawgeti(L, LUA_REGISTRYINDEX, q->fn);
  lr_fetch_push_result(L, r);
  /* Counted and rolled back as the rules' own calls. No room here: the
   * runtime's callbacks run a room's code through wait_c.resume with it. */
  q->s->rules->call(q->s, "fetch callback", 1, 0, NULL, 0);
  lr_ref_release(L, q->fn);
  free(q);
}

/* fetch.request(method, url, headers, body, timeout_ms, fn) -> id | nil, err */
static int l_request(lua_State *L) {
  lr_server *s = lua_touserdata(L, lua_upvalueindex(1));
  const char *method = luaL_checkstring(L, 1);
  const char *url = luaL_checkstring(L, 2);
  lr_header hs[64];
  size_t nh = 0;
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3) && nh < 64) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING)
        hs[nh++] = (lr_header){lua_tostring(L, -2), lua_tostring(L, -1)};
      lua_pop(L, 1); /* the table keeps the strings alive */
    }
  }
  size_t blen = 0;
  const char *body = luaL_optlstring(L, 4, NULL, &blen);
  lua_Integer timeout = luaL_optinteger(L, 5, 10000);
  luaL_checktype(L, 6, LUA_TFUNCTION);
  lua_req *q = lr_xcalloc(1, sizeof *q);
  q->s = s;
  lua_pushvalue(L, 6);
  q->fn = lr_ref_take(L);
  uint64_t id = lr_fetch(s, method, url, hs, nh, body, blen, timeout, lua_done, q);
  if (!id) {
    lr_ref_release(L, q->fn);
    free(q);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot fetch %s (only http(s)://HOST:PORT/... URLs)", url);
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)id);
  return 1;
}

static int luaopen_fetch(lua_State *L) {
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, l_request, 1);
  lua_setfield(L, -2, "request");
  return 1;
}

void lr_fetch_lua_register(lua_State *L, lr_server *s) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushlightuserdata(L, s);
  lua_pushcclosure(L, luaopen_fetch, 1);
  lua_setfield(L, -2, "lunaroom.fetch");
  lua_pop(L, 2);
}

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
        deadline_cb(r);
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
    free_obj(cc);
  }
}

/* ------------------------------------------------------------ fetch_url.h */

int lr_url_parse(const char *url, lr_url *out) {
  conn_common cc = {0};
  *out = (lr_url){0};
  if (parse_url(url, &cc) != 0) return -1;
  *out = (lr_url){cc.host, cc.path, cc.hostport, cc.port, cc.tls};
  return 0;
}

void lr_url_free(lr_url *u) {
  free(u->host);
  free(u->path);
  free(u->hostport);
  *u = (lr_url){0};
}

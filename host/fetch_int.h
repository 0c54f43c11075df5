/*
 * fetch_int.h - what the files of the outgoing-connection client (fetch*.c)
 * share: the request and link objects, the event kinds, and the functions
 * one file of it calls in another.
 *
 * Owns: conn_common, http_req, struct lr_wsc, frame, event and the internal
 * prototypes (fetch.c: the one client machinery: contexts, the lws protocol
 * callback, the event queue, connecting, flush and shutdown; fetch_http.c:
 * the HTTP exchange and lr_fetch; fetch_ws.c: WebSocket client links and
 * lr_wsc_*; fetch_lua.c: lunaroom.fetch; fetch_url.c: URL parsing).
 * Must not: be included outside host/fetch*.c (the client's public face is
 * fetch.h, its URL parser's fetch_url.h), or declare anything that knows
 * rooms, shards or JSON.
 */
#ifndef LR_FETCH_INT_H
#define LR_FETCH_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libwebsockets.h>

#include "buf.h"
#include "fetch.h"

#define FETCH_MAX_MESSAGE (16u << 20) /* largest WebSocket message or HTTP body kept */
#define FETCH_NOT_MINE (-99) /* a reason fetch_http_event or fetch_ws_event does not handle */

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
  void (*drop)(void *ud); /* frees ud when the request goes before cb ran (or NULL) */
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

/* ---- fetch.c: the machinery ---- */

/* cc's URL (http://, https://, ws://, wss://: fetch_url.h's rules): 0, or
 * -1 with nothing allocated. */
int fetch_parse_url(const char *url, conn_common *cc);
/* Keep the handshake headers of h that a proxy may pass on. */
void fetch_keep_headers(conn_common *cc, const lr_header *h, size_t n);
/* Queue an event for obj; its callback runs later from the engine timer
 * (or lr_fetch_flush), never from inside an lws callback. */
void fetch_push_event(ev_kind kind, conn_common *obj, int code, const char *reason,
                      const void *data, size_t len);
/* A new object: connected now on the loop's context, or, while no loop
 * runs, on the next engine timer (or lr_fetch_flush). Returns -1 when
 * shutting down (cc is not kept). */
int fetch_start(lr_server *s, conn_common *cc);
/* Free an object that is not (or no longer) on the list of live ones. */
void fetch_free_obj(conn_common *cc);
/* The next request id, or 0 when shutting down (no new work). */
uint64_t fetch_next_id(void);
/* The live request of id, or NULL. */
http_req *fetch_find_http(uint64_t id);

/* ---- fetch_http.c: the HTTP exchange ---- */

/* lr_fetch, with drop(ud) run when the request is freed before cb ran
 * (cancelled, or the client shut down): for a ud that cb frees. */
uint64_t fetch_http_start(lr_server *s, const char *method, const char *url,
                          const lr_header *headers, size_t nheaders, const char *body,
                          size_t bodylen, int64_t timeout_ms, lr_fetch_cb cb, void *ud,
                          void (*drop)(void *ud));
/* The result event of r (error NULL: the response), queued once. */
void fetch_http_finish(http_req *r, const char *error);
/* The HTTP client events of r (NULL: an object already gone); FETCH_NOT_MINE
 * for other reasons. */
int fetch_http_event(struct lws *wsi, enum lws_callback_reasons reason, http_req *r, void *in,
                     size_t len);
/* r's deadline passed: it fails with "timeout". */
void fetch_http_deadline(void *ud);

/* ---- fetch_ws.c: WebSocket client links ---- */

/* The closed event of w, queued once. */
void fetch_ws_closed(lr_wsc *w, int code, const char *reason);
/* The WebSocket client events of w (NULL: an object already gone);
 * FETCH_NOT_MINE for other reasons. */
int fetch_ws_event(struct lws *wsi, enum lws_callback_reasons reason, lr_wsc *w, void *in,
                   size_t len);

#endif

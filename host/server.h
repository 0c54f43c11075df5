/*
 * server.h - the engine's face towards transports (net.c for real sockets,
 * headless.c for specs): open/message/close of WebSocket connections, HTTP
 * requests, and the clock/timer pass the event loop drives.
 *
 * Owns: the contract between a transport and the room engine.
 * Must not: contain socket code (net.c) or room logic (room.c, runtime.lua).
 *
 * Threading: everything here runs on the one loop thread.
 * Re-entrancy: the engine calls lr_transport_vt functions from inside the
 * lr_* calls below (e.g. a message triggers a broadcast). Transport callbacks
 * must only queue work (never call back into the engine synchronously).
 */
#ifndef LR_SERVER_H
#define LR_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

typedef struct lr_server lr_server;
typedef struct lr_conn lr_conn;

/* What a transport implements for one connection. */
typedef struct lr_transport_vt {
  /* Queue m for sending: the transport takes a reference (lr_msg_retain) and
   * releases it once written or dropped. Returns 0, or -1 if the connection
   * is gone or over its outgoing byte limit (the transport then closes it). */
  int (*send)(lr_conn *c, lr_msg *m);
  /* Close after queued data with a WebSocket close code (1000, 1001, 4001,
   * 4004, 4008, 4029, ...; 0 = no code) and a short reason. The transport
   * later calls lr_conn_closed() exactly once. */
  void (*close)(lr_conn *c, int code, const char *reason);
} lr_transport_vt;

/* A request as the transport saw it (WebSocket upgrade or HTTP). All strings
 * are borrowed for the duration of the call; the engine copies what it keeps. */
typedef struct lr_header {
  const char *name; /* lower-case */
  const char *value;
} lr_header;

/* The CORS headers of every HTTP answer the host writes itself (router.c
 * defines them; shard.c's forwarded answers and net.c's own answers use
 * them too). */
#define LR_CORS_N 4
extern const lr_header lr_cors_headers[LR_CORS_N];

typedef struct lr_request {
  const char *method; /* "GET", "POST", ... */
  const char *path;   /* URL path, still percent-encoded, e.g. /parties/main/game */
  const char *query;  /* raw query string without '?', or "" */
  const lr_header *headers;
  size_t nheaders;
  const char *body; /* HTTP only; may be NULL */
  size_t bodylen;
  const char *remote_addr; /* "127.0.0.1"; NULL: in-process (room to room, headless specs),
                              not counted by the per-address limits */
  /* Headers on demand (a WebSocket upgrade): when set, headers/nheaders are
   * empty and load_headers(headers_ud, &n) returns them (collected on the
   * first call, owned by the transport, valid until lr_server_ws_open
   * returns). The engine asks only when something may read them: a join on
   * a room that reads no request headers (lean_connect) never does. */
  const lr_header *(*load_headers)(void *ud, size_t *n);
  void *headers_ud;
} lr_request;

/* req with its headers: req itself, or tmp filled from req with the headers
 * load_headers gives. */
static inline const lr_request *lr_request_full(const lr_request *req, lr_request *tmp) {
  if (!req->load_headers) return req;
  *tmp = *req;
  tmp->headers = req->load_headers(req->headers_ud, &tmp->nheaders);
  tmp->load_headers = NULL;
  tmp->headers_ud = NULL;
  return tmp;
}

/* ---- WebSocket ---- */

/* A client asks to open a WebSocket. On success returns 0 and *out is the
 * engine's connection (the transport stores it and passes it back). On
 * refusal before the socket is accepted (path outside /parties, unknown room
 * or party) returns an HTTP status (404; 503 full, stopping or cannot wake;
 * 500 creation failed; 429 the address creates rooms too fast; 401 a node's
 * link without the node secret; 400 a bad shard request) and *out is NULL:
 * net.c then accepts the socket and closes it with 4004 / 1013 / 1011 (the
 * others are answered as HTTP), the headless host reports the same. Guard
 * rejections, maxUsers etc. happen after acceptance, through vt->close().
 * Never -1: every refusal is a status (engine.h's conventions). */
int lr_server_ws_open(lr_server *s, const lr_request *req, const lr_transport_vt *vt, void *tp,
                      lr_conn **out);
/* The transport's per-connection pointer given to lr_server_ws_open. */
void *lr_conn_transport(lr_conn *c);
/* The connection's id, as the engine's log lines show it. */
const char *lr_conn_id(const lr_conn *c);
/* Is c an authenticated shard uplink (it relays many clients, each counted
 * under its own address: see lr_net_addr_acquire)? */
bool lr_conn_is_relay(const lr_conn *c);
/* One complete text (or binary, treated as UTF-8) message from the client. */
void lr_conn_message(lr_conn *c, const char *data, size_t len);
/* The socket is gone (either side closed). After this call the engine never
 * calls the transport for c again; c is freed by the engine. */
void lr_conn_closed(lr_conn *c);

/* ---- HTTP ---- */

typedef struct lr_response {
  int status;
  lr_header *headers; /* owned by the engine until done() returns */
  size_t nheaders;
  const char *body;
  size_t bodylen;
} lr_response;

/* Handle an HTTP request. done is called exactly once, possibly before
 * lr_server_http returns or later (a handler that awaits); r and everything
 * in it are valid only during done. */
typedef void (*lr_response_cb)(void *ud, const lr_response *r);
void lr_server_http(lr_server *s, const lr_request *req, lr_response_cb done, void *ud);

/* ---- request headers beyond the standard ones ----
 *
 * libwebsockets 4.1 parses the standard headers into a table the transport
 * lists, but keeps any other ("x-room-token") only for a lookup by name. So
 * the transport copies the standard headers plus the names registered here:
 * those room definitions declare (lr.room{headers = {...}}), `serve
 * --headers`, and its own list. Names are lower-case [a-z0-9-], 1 to
 * LR_HEADER_NAME_MAX bytes; at most LR_WANTED_HEADERS of them. */
#define LR_WANTED_HEADERS 64
#define LR_HEADER_NAME_MAX 64
/* Register one name (lower-cased; a duplicate is a no-op). Returns 0, or -1
 * for a bad name or when the list is full. */
int lr_server_want_header(lr_server *s, const char *name);
/* The registered names (valid until the next lr_server_want_header). */
const char *const *lr_server_wanted_headers(const lr_server *s, size_t *n);

/* ---- clock and timers (driven by the loop) ---- */

/* Milliseconds until the next engine timer is due (0 = now), or -1 if none. */
int64_t lr_server_next_timeout(lr_server *s);
/* Run due timers and pending flushes. Call after each loop iteration. */
void lr_server_tick(lr_server *s);
/* The loop has seen no connection open or close for a while (net.c, before
 * it trims the heap): give back what join bursts left behind. */
void lr_server_quiet(lr_server *s);
/* On while the loop handles one pass of socket events: joins to an
 * unthrottled room wait for the room's flush in the lr_server_tick that
 * follows the pass, so a pass's joiners share one patch and one encoding
 * of the state. Off (the default, and the headless host): every join is
 * flushed at once. */
void lr_server_batch_joins(lr_server *s, bool on);

/* ---- descriptors of other libraries ---- */

/* The loop that drives the server watches another library's socket for the
 * engine (a store's database connection, storage.h lr_store_host.watch):
 * cb(ud, revents) on the loop thread when fd is readable (POLLIN), writable
 * (POLLOUT, once per write(w, 1)) or broken (POLLHUP). The transport that
 * runs the loop offers them (net.c, when it starts); without it nothing is
 * watched (the headless host). */
typedef struct lr_loop_fds {
  void *(*watch)(int fd, void (*cb)(void *ud, int revents), void *ud);
  void (*write)(void *w, int on);
  void (*unwatch)(void *w);
} lr_loop_fds;
void lr_server_set_loop_fds(lr_server *s, const lr_loop_fds *fds);

/* ---- shutdown ---- */

/* Flush pending syncs and storage writes, close every connection with code
 * 1001, and stop creating rooms. Safe to call more than once. */
void lr_server_shutdown(lr_server *s);
/* Room handlers waiting for I/O (lunaroom.io; lua_wait.c). At shutdown the
 * transport keeps its loop running (bounded by its drain time) while this
 * is non-zero, so they may finish. */
long lr_server_waiting(lr_server *s);

#endif

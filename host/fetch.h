/*
 * fetch.h - outgoing connections of a server process: HTTP requests and
 * WebSocket client connections (a shard's uplinks, heartbeats and forwarded
 * requests; remote session transfers), http:// and ws://, or https:// and
 * wss:// with the peer verified (lr_fetch_set_tls_ca).
 *
 * Owns: a client-only vhost in the server loop's libwebsockets context
 * (requests and WebSocket links while the loop runs: nothing polls) and a
 * client-only context for work made while no loop runs, serviced by
 * lr_fetch_flush; fetch.c says how;
 * the request and connection objects and their callbacks.
 * Must not: know rooms, shards or JSON; call a user callback from inside an
 * lws callback or from inside the call that started the work (callbacks
 * always run later, from an engine timer or lr_fetch_flush, so callers never
 * re-enter).
 *
 * Threading: loop thread only. Every callback runs on the loop thread.
 */
#ifndef LR_FETCH_H
#define LR_FETCH_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "server.h"

/* The CA bundle (PEM file) that https:// and wss:// peers are verified
 * against; NULL = the system's CAs. Call before the first connection (the
 * client context reads it once); path must stay valid. */
void lr_fetch_set_tls_ca(const char *path);

/* ---- HTTP ---- */

typedef struct lr_fetch_result {
  int status;               /* HTTP status, or 0 when no response arrived */
  const char *error;        /* NULL, or why there is no response ("connect failed: ...") */
  const char *content_type; /* of the response, or NULL */
  const char *location;     /* Location header of the response, or NULL */
  const char *body;         /* never NULL */
  size_t bodylen;
} lr_fetch_result;

/* r and its strings are valid during the call only. */
typedef void (*lr_fetch_cb)(void *ud, const lr_fetch_result *r);

/* Send `method url` with headers (lower-case names; host, content-length,
 * connection and other hop-by-hop headers are dropped and set by the
 * client), and body for methods other than GET/HEAD. url is
 * http://host[:port]/path[?query]. cb runs exactly once, later, unless the
 * request is cancelled first. timeout_ms bounds the whole exchange (<= 0:
 * 30 s). Returns a request id > 0, or 0 if url is not a plain http URL (cb
 * will not run; the reason is logged). */
uint64_t lr_fetch(lr_server *s, const char *method, const char *url, const lr_header *headers,
                  size_t nheaders, const char *body, size_t bodylen, int64_t timeout_ms,
                  lr_fetch_cb cb, void *ud);
/* Forget request id: its callback will not run. Unknown ids are ignored. */
void lr_fetch_cancel(uint64_t id);

/* ---- WebSocket client ---- */

typedef struct lr_wsc lr_wsc;

typedef struct lr_wsc_cbs {
  void (*open)(void *ud);
  void (*message)(void *ud, const char *data, size_t len);
  /* The connection failed or closed (code 1006 when there was no close
   * frame). The lr_wsc is freed when this returns. */
  void (*closed)(void *ud, int code, const char *reason);
} lr_wsc_cbs;

/* Connect to ws://host[:port]/path[?query] with extra handshake headers.
 * Returns the connection (open/closed follow later), or NULL if url is not a
 * plain ws:// or http:// URL (logged). cbs must outlive the connection. */
lr_wsc *lr_wsc_open(lr_server *s, const char *url, const lr_header *headers, size_t nheaders,
                    const lr_wsc_cbs *cbs, void *ud);
/* Queue one text frame (copied). Frames sent before `open` go out once the
 * connection is up. Returns 0, or -1 if the connection is closing. */
int lr_wsc_send(lr_wsc *w, const char *data, size_t len);
/* Bytes queued and not yet written (backpressure for the caller). */
size_t lr_wsc_queued(const lr_wsc *w);
/* Close after the queued frames (code 1000/1001/...); no callback runs for w
 * any more and w must not be used again. */
void lr_wsc_close(lr_wsc *w, int code, const char *reason);

/* ---- Lua ---- */

/* Make `require "lunaroom.fetch"` available (runtime.lua, not room
 * scripts): fetch.request(method, url, headers, body, timeout_ms,
 * function(res) end) -> id | nil, err, where res = {status, body, error,
 * contentType}. The callback runs later, protected, from an engine timer. */
void lr_fetch_lua_register(lua_State *L, lr_server *s);

/* Push r as the Lua table {status, body, error?, contentType?}. */
void lr_fetch_push_result(lua_State *L, const lr_fetch_result *r);

/* While no loop runs (after the server loop ended): connect the work made
 * meanwhile and service it (last reports, a Lua backend's writes, close
 * handshakes) until none is left or max_ms passed. Callbacks run. */
void lr_fetch_flush(int64_t max_ms);

/* Destroy the client context: every connection is dropped and no callback
 * runs any more. Safe to call when nothing was ever opened. */
void lr_fetch_shutdown(void);

#endif

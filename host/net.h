/*
 * net.h - the real-socket transport: one libwebsockets context, HTTP/1.1 and
 * WebSocket on one port, driving the engine through server.h.
 *
 * Owns: listening, frame assembly and size limits, per-connection outgoing
 * queues of lr_msg references written from WRITEABLE, HTTP request bodies and
 * responses, slowloris/idle timeouts, per-address limits, signals to stop the
 * loop, the one event loop other descriptors and client connections join
 * (fd watches, lr_net_context). Implemented by host/net*.c (net_int.h lists
 * which file owns what).
 * Must not: parse JSON, call Lua, or know about rooms beyond server.h.
 */
#ifndef LR_NET_H
#define LR_NET_H

#include <stdbool.h>
#include <stddef.h>

#include "server.h"

typedef struct lr_net_opts {
  const char *host;       /* bind address, default "127.0.0.1"? no: NULL = all interfaces */
  int port;               /* default 1999; 0 = pick a free port (printed in the listen log line) */
  size_t max_frame;       /* largest incoming WebSocket message, default 64 KiB */
  size_t max_queue_bytes; /* outgoing bytes queued per connection before it is dropped, default 4
                             MiB */
  size_t max_http_body;   /* default 1 MiB */
  const char *static_dir; /* optional folder served at "/" (GET only), NULL = none */
  long max_conns;         /* open WebSockets per process, default 20000; -1 = no limit */
  long max_conns_per_ip;  /* open WebSockets per client address (direct, or relayed by a
                             shard), default 1024; -1 = no limit */
  long max_http_per_ip;   /* accepted sockets not upgraded to WebSocket per peer address,
                             default 256; -1 = no limit (429 and close past it) */
  long body_timeout_ms;   /* a request body must be complete this long after its head,
                             default 10000 (not restarted by arriving bytes) */
  long msgs_per_ip;       /* WebSocket messages per second per client address over all its
                             sockets (burst 2x), default 2000; -1 = no budget */
  long ws_ping_ms;        /* a WebSocket silent this long (no message, no pong) is pinged, default
                            30000; -1 = never */
  long ws_hangup_ms;      /* one silent this long is hung up (no close frame), default 75000;
                             -1 = never (and no ping either) */
  const char *trusted_proxies; /* comma-separated addresses or CIDRs whose X-Forwarded-For is
                                  believed, NULL = none */
  /* TLS (https:// and wss:// on the same port; plain connections refused):
   * PEM certificate chain and private key, NULL = plain http. Both files are
   * re-read on SIGHUP (a bad pair is logged and the old one kept). */
  const char *tls_cert;
  const char *tls_key;
  /* Called on the loop thread after SIGHUP (outside any lws callback), NULL
   * = nothing more than the certificate reload. */
  void (*on_hup)(void *arg);
  void *on_hup_arg;
} lr_net_opts;

/* Fill opts with the defaults above. */
void lr_net_defaults(lr_net_opts *o);

/* Run the loop until SIGINT/SIGTERM (or lr_net_stop); SIGHUP reloads the
 * TLS certificate and calls on_hup. On a stop signal it
 * calls lr_server_shutdown(s) (which closes sockets with 1001), lets the
 * queued close frames go out (bounded, ~1 s), and returns 0. Returns -1
 * if it cannot listen or the loop fails (the error is logged). */
int lr_net_run(lr_server *s, const lr_net_opts *o);
void lr_net_stop(void);
/* The running loop's libwebsockets context, or NULL when no loop runs (before
 * lr_net_run, after it returned, and while the context is being destroyed).
 * Loop thread only. For outgoing client connections on the same event loop
 * (fetch.c adds a client-only vhost to it); they are destroyed with the
 * context when the loop ends. */
struct lws_context;
struct lws_context *lr_net_context(void);
/* Outgoing work on that context that the shutdown drain waits for (within
 * its ~1 s, like the server's own sockets): busy() returns how many client
 * connections are still finishing (a request in flight, a close handshake).
 * One hook per process; NULL removes it. */
void lr_net_set_drain(size_t (*busy)(void));

/* A client relayed by an authenticated shard uplink (uplink.c) counts under
 * its own address against max_conns_per_ip, like a direct WebSocket.
 * acquire returns false when that address is at its limit (nothing is
 * counted then); every true is matched by one release. Without a running
 * loop (the headless host) there is no limit. */
bool lr_net_addr_acquire(const char *addr);
void lr_net_addr_release(const char *addr);

/* ---- fd watches: another library's socket (libpq) on the one loop ----
 * cb(ud, revents) runs on the loop thread when fd is readable (POLLIN),
 * writable (POLLOUT, once per lr_net_watch_write(w, 1)), or broken
 * (POLLHUP: the watch is still registered; the owner unwatches it). The fd
 * stays the caller's: the loop polls a dup of it and never closes fd. A
 * watch made before the loop runs is attached when it starts; while no loop
 * runs (before lr_net_run, after it returned, headless tests) callbacks run
 * only from lr_net_poll_watched(). cb may unwatch any watch, its own too. */
typedef struct lr_net_watch lr_net_watch;
typedef void (*lr_net_fd_cb)(void *ud, int revents);
lr_net_watch *lr_net_watch_fd(int fd, lr_net_fd_cb cb, void *ud);
void lr_net_watch_write(lr_net_watch *w, int on);
void lr_net_unwatch_fd(lr_net_watch *w);
/* While no loop runs: poll the watched fds for at most timeout_ms and run
 * the callbacks of those ready. Returns how many fired (0 also when a loop
 * runs: it serves them itself). */
int lr_net_poll_watched(int timeout_ms);

#endif

/*
 * net_int.h - what the files of the real-socket transport (net*.c) share:
 * the limits that are not options, the loop, connection and request
 * objects, and the functions one file of it calls in another.
 *
 * Owns: struct net_loop, net_conn, net_req, net_addr and the internal
 * prototypes (net.c: the loop and the protocol callback; net_ws.c:
 * WebSocket sessions and send queues; net_http.c: HTTP requests and static
 * files; net_hdrs.c: request headers, path, query; net_addr.c: client
 * addresses, trusted proxies, per-address socket limits; net_budget.c: the
 * per-address message budget; net_fd.c: fd watches; net_idle.c: the ping
 * and hang-up of silent WebSockets).
 * Must not: be included outside host/net*.c (the transport's public face is
 * net.h), or declare anything that calls Lua or parses JSON.
 */
#ifndef LR_NET_INT_H
#define LR_NET_INT_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <libwebsockets.h>
#include <openssl/ssl.h>

#include "buf.h"
#include "net.h"

_Static_assert(LWS_PRE + 10 <= LR_MSG_PRE,
               "lr_msg headroom must hold a frame header and lws's LWS_PRE in front of it");

/* ---- limits that are not options ---- */

#define NET_MSG_OVERHEAD 16      /* bytes charged per queued message on top of its payload */
#define NET_HTTP_CHUNK 65536     /* body bytes per lws_write on HTTP */
#define NET_HEADER_DATA 8192     /* request header bytes per connection (lws ah) */
#define NET_RX_BUFFER 1024       /* lws keeps one per WebSocket for its life: small; */
                                 /* bigger messages arrive in pieces (net_ws_receive) */
#define NET_TX_PACKET 65536      /* largest single send(); lws keeps the rest of a write */
#define NET_SERV_BUF 32768       /* lws per-thread read buffer */
#define NET_TIMEOUT_SECS 10      /* lws network round trips: headers, body, handshake */
#define NET_HTTP_HANDLER_SECS 60 /* how long the engine may take to answer a request */
#define NET_HTTP_WRITE_SECS 30   /* progress timeout while writing a response */
#define NET_DROP_SECS 3          /* a dropped slow consumer that cannot take its close frame */
#define NET_DRAIN_MS 1000   /* shutdown: time given to close frames, answers and waiting handlers */
#define NET_MAX_HEADERS 128 /* request headers passed to the engine */
#define NET_DISCARD_MAX (16u << 20) /* a refused body up to this is read and dropped, not reset */
#define NET_TRIM_QUIET_MS 500       /* heap trim: this long after the last open/close */
#define NET_RING_INLINE 4           /* send ring slots inside net_conn (a power of two) */
_Static_assert((NET_RING_INLINE & (NET_RING_INLINE - 1)) == 0, "ring sizes are powers of two");
#define NET_FAIR_SHARE 16          /* messages one address hands the engine per loop pass */
#define NET_HOLD_EXTRA (64u << 10) /* held bytes a socket may keep past max_frame */
#ifndef NET_PING_SECS              /* silent WebSocket: ping after, hang up after (the */
#define NET_PING_SECS 30           /* defaults of --ws-ping and --ws-hangup) */
#endif
#ifndef NET_HANGUP_SECS
#define NET_HANGUP_SECS 75
#endif
#define NET_IDLE_GRAIN_MS                                                                          \
  1000 /* idle sweep: at most one wake-up per grain (less for short pings) */

enum { NET_IDLE_NONE = 0, NET_IDLE_ACTIVE = 1, NET_IDLE_PINGED = 2 }; /* net_conn.idle_list */

enum { NET_KIND_WS = 0x5753, NET_KIND_HTTP = 0x4854 };

struct net_conn;

/* One client address (an IPv4 address, or an IPv6 /64): what it holds
 * open and its message budget. */
struct net_addr {
  char key[64];
  uint32_t ws;       /* open WebSockets, direct or relayed by a shard (max_conns_per_ip) */
  uint32_t http;     /* accepted sockets not (yet) upgraded (max_http_per_ip) */
  double tokens;     /* message budget: token bucket shared by its sockets */
  int64_t tokens_at; /* last refill (0 = never: a full bucket) */
  /* Sockets holding messages over the budget, served round robin (one
   * message each in turn); the address is on the loop's waiting list while
   * this is not empty. */
  struct net_conn *held_head, *held_tail;
  struct net_addr *wait_next;
  bool waiting;
  uint64_t pass;   /* loop pass of pass_n */
  uint32_t pass_n; /* messages handed to the engine in that pass (NET_FAIR_SHARE) */
};

/* ---- the loop ---- */

typedef struct net_loop {
  lr_server *srv;
  lr_net_opts o;
  struct lws_context *ctx;
  lws_sorted_usec_list_t engine_sul;
  char *static_root; /* realpath of o.static_dir, or NULL */
  size_t nconns;     /* net_conn objects alive */
  size_t nreqs;      /* net_req objects attached to a wsi */
  bool stopping;     /* lr_server_shutdown was called: refuse new upgrades */
  size_t nws;        /* accepted WebSockets (for max_conns) */
  /* net_now_ms() at which engine_sul is armed to fire (0: not armed) */
  int64_t engine_due;
  /* Per-address accounting (see "Per-address limits" above): open
   * addressing of pointers, linear probing, tombstones; entries are freed
   * when nothing counts on them any more. */
  struct net_addr **addrs;
  size_t addrcap, addrused; /* slots, slots not NULL (live + tombstones) */
  struct net_cidr {
    int fam; /* AF_INET or AF_INET6 */
    int bits;
    unsigned char a[16];
  } * trusted; /* --trusted-proxy */
  size_t ntrusted;
  struct net_addr *waiting;          /* addresses with sockets paused over their budget */
  lws_sorted_usec_list_t budget_sul; /* wakes paused sockets when tokens are back */
  uint64_t pass;                     /* loop passes (lws_service calls) */
  /* Sockets that sent a message in this pass: their own answers are written
   * once the pass is over (net_ws_answer_flush), one send for all of them. */
  struct net_conn **answer;
  size_t nanswer, answer_cap;
  bool destroying;  /* inside lws_context_destroy: no more lws calls from vt */
  int64_t trim_at;  /* return free heap pages to the OS at this time (0 = not due) */
  SSL_CTX *tls_ctx; /* the vhost's server context (TLS only), for the SIGHUP reload */
  /* Silent WebSockets (net_idle.c): the lists [NET_IDLE_ACTIVE] (not pinged
   * since their last activity) and [NET_IDLE_PINGED], each oldest activity
   * first; the sweep timer, armed while a list is not empty. */
  struct net_conn *idle_head[3], *idle_tail[3];
  lws_sorted_usec_list_t idle_sul;
  bool idle_armed;
  uint32_t idle_grain;  /* ms: activity this close to the recorded one is not recorded */
  uint32_t idle_ping;   /* ms of silence before the ping (= idle_hangup: no ping) */
  uint32_t idle_hangup; /* ms of silence before the hang-up (0: the sweep is off) */
} net_loop;

/* ---- WebSocket connection ---- */

typedef struct net_conn {
  int kind;        /* NET_KIND_WS; kind, loop, wsi: the same offsets as net_req's */
  uint32_t held_n; /* (below) here: no padding hole after kind */
  net_loop *loop;
  struct lws *wsi;
  lr_conn *conn; /* the engine's; NULL once lr_conn_closed was called */
  /* outgoing ring of retained messages */
  lr_msg **q;                 /* qin, a heap ring, or NULL (qcap 0) */
  uint32_t qhead, qlen, qcap; /* qcap: 0 or a power of two */
  int close_code;
  size_t qbytes;
  lr_msg *qin[NET_RING_INLINE];
  /* incoming message being assembled */
  lr_buf rx;
  struct net_addr *ip; /* its address's entry (counted in ws) */
  char *close_reason;  /* NULL until closed with a reason (at most 123 bytes) */
  uint8_t close_reason_len;
  /* One bit each, and the idle sweep's small fields below in the same 8
   * bytes: the struct is 168 bytes, a 176-byte malloc chunk (not 192). */
  bool rx_in_msg : 1;
  bool established : 1; /* LWS_CALLBACK_ESTABLISHED seen: writes allowed */
  bool closing : 1;     /* vt->close called: drain, then close frame */
  bool counted : 1;     /* counted in nws and (with ip) the per-peer table */
  bool dropping : 1;    /* over max_queue_bytes: ring released, close 1008 */
  bool gone : 1;        /* socket closed; vt calls are refused */
  bool paused : 1;      /* rx flow off (lws_rx_flow_control), while it holds messages */
  bool ping_due : 1;    /* idle sweep: it asked for a ping, written by the next WRITEABLE */
  /* Idle sweep (net_idle.c): the list of the loop idle_list names (its
   * place: idle_prev, idle_next), the time of its last activity
   * (net_idle_now, ms, cut to 32 bits). */
  uint8_t idle_list; /* NET_IDLE_* */
  uint32_t idle_at;
  /* Messages held over its address's budget (net_budget.c): NULL until the
   * first one (most sockets never have one); held_n of them (held_n > 0: on
   * its address's held list). */
  struct net_held *held;
  struct net_conn *idle_prev, *idle_next;
} net_conn;
_Static_assert(sizeof(void *) != 8 || sizeof(net_conn) == 168, "net_conn is 168 bytes");

typedef struct net_held {
  lr_buf buf; /* oldest first: records of [uint32 len][len bytes][NUL] from off */
  size_t off;
  struct net_conn *next; /* its address's held list */
} net_held;

/* ---- HTTP request ---- */

typedef struct net_req {
  int kind; /* NET_KIND_HTTP */
  net_loop *loop;
  struct lws *wsi; /* NULL once gone */
  /* request */
  const char *method;
  char *path;    /* re-encoded for the engine */
  char *query;   /* re-encoded, "" if none */
  char *fs_path; /* decoded path as lws gave it (static files) */
  lr_header *hdrs;
  size_t nhdrs;
  char peer[64];
  lr_buf body;
  bool head;
  bool dispatched; /* handed to lr_server_http */
  bool answered;   /* done() was called (or the transport answered itself) */
  bool gone;       /* socket closed before done(): done() only frees */
  /* response */
  bool ready; /* a response is waiting for HTTP_WRITEABLE */
  bool hdrs_sent;
  bool close_after;  /* close the connection after the response */
  bool body_pending; /* a Content-Length body is still arriving */
  bool resp_done;    /* response written; waiting for the body to end */
  int status;
  char **rh; /* response headers: "name\0value\0" each */
  size_t nrh;
  unsigned char *out; /* LWS_PRE headroom + body (memory responses) */
  size_t outlen, sent;
  int fd;                          /* static file body source, or -1 */
  lws_sorted_usec_list_t body_sul; /* the body's deadline (body_timeout_ms after the head) */
} net_req;

/* ---- net.c: the loop ---- */
int64_t net_now_ms(void);
void net_churn(net_loop *L);
net_loop *net_loop_of(struct lws *wsi);

/* ---- net_hdrs.c: request headers, path, query, method ---- */
char *net_hdr_dup(struct lws *wsi, enum lws_token_indexes t);
lr_header *net_hdrs_collect(net_loop *L, struct lws *wsi, size_t *nout);
void net_hdrs_free(lr_header *h, size_t n);
/* Headers collected on the first net_hdrs_lazy_get (lr_request.load_headers);
 * the caller frees h with net_hdrs_free once the request is done. */
typedef struct net_hdrs_lazy {
  net_loop *L;
  struct lws *wsi;
  lr_header *h;
  size_t n;
  bool done;
} net_hdrs_lazy;
const lr_header *net_hdrs_lazy_get(void *ud, size_t *n);
char *net_path_encode(const char *decoded);
char *net_query_collect(struct lws *wsi);
const char *net_method(struct lws *wsi, bool *head);

/* ---- net_addr.c: client addresses, trusted proxies, sockets per address ---- */
extern net_loop *net_active; /* the running loop, for lr_net_addr_* */
void net_peer(struct lws *wsi, char *buf, size_t len);
int net_parse_trusted(net_loop *L, const char *list);
struct net_addr *net_addr_get(net_loop *L, const char *ip, bool add);
void net_addr_put(net_loop *L, struct net_addr *a);
void net_addr_free_all(net_loop *L);
int net_sock_filter(net_loop *L, int fd);
void net_sock_open(net_loop *L, struct lws *wsi);
void net_sock_release(struct lws *wsi);

/* ---- net_budget.c: the message budget of an address ---- */
bool net_budget_take(net_conn *nc);
int net_hold(net_conn *nc);
void net_unhold(net_conn *nc);
void net_resume(net_conn *nc);

/* ---- net_ws.c: WebSocket sessions ---- */
void net_conn_finish(net_conn *nc);
int net_ws_upgrade(net_loop *L, struct lws *wsi, const char *up);
int net_ws_established(net_conn *nc);
int net_ws_writeable(net_conn *nc);
int net_ws_receive(net_conn *nc, const char *in, size_t len);
void net_ws_answer_flush(net_loop *L);

/* ---- net_http.c: HTTP requests ---- */
void net_req_detach(net_req *nr);
void net_http_dispatch(net_req *nr);
int net_http_begin(net_loop *L, struct lws *wsi);
int net_http_body(net_req *nr, const char *in, size_t len);
int net_http_writeable(net_req *nr);

/* ---- net_idle.c: silent WebSockets ---- */
void net_idle_init(net_loop *L);
void net_idle_add(net_conn *nc);
void net_idle_remove(net_conn *nc);
void net_idle_move(net_conn *nc, uint32_t now);
void net_idle_stop(net_loop *L);

/* Milliseconds of the coarse monotonic clock (a few ns, ms-grained), cut to
 * 32 bits: differences of two readings less than 24 days apart are right. */
static inline uint32_t net_idle_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

/* A frame arrived on nc (a message piece, a pong): it is not silent. Costs
 * a clock read and a compare unless a grain has passed since the recorded
 * activity (or nc was pinged): then nc moves to the tail of the active list. */
static inline void net_idle_touch(net_conn *nc) {
  if (!nc->idle_list) return; /* the sweep is off, or nc is being hung up */
  uint32_t now = net_idle_now();
  if (nc->idle_list != NET_IDLE_ACTIVE || now - nc->idle_at >= nc->loop->idle_grain)
    net_idle_move(nc, now);
}

/* ---- net_fd.c: fd watches ---- */
extern const lr_loop_fds net_loop_fds; /* handed to the server by lr_net_run */
void net_fd_start(struct lws_context *ctx);
void net_fd_stop(void);

#endif

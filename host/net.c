/*
 * net.c - the real-socket transport: one libwebsockets (4.1) context with one
 * vhost and one protocol that serves HTTP/1.1 and WebSocket on one port and
 * drives the engine through server.h.
 *
 * Owns: the lws context and its callbacks; per-connection WebSocket state
 * (frame assembly, the outgoing FIFO of lr_msg references, close handshake);
 * per-request HTTP state (headers, bounded body, deferred response, static
 * files); per-address limits (sockets, WebSockets, message budget) and
 * client addresses behind trusted proxies; the engine timer; SIGINT/SIGTERM
 * and the bounded shutdown drain; SIGHUP (TLS certificate reload, then the
 * caller's on_hup); the TLS options of the vhost (https/wss only when a
 * certificate is given); giving freed heap pages back to the OS after
 * connection churn; fd watches (another library's socket, e.g. libpq's,
 * polled by this loop: lr_net_watch_fd).
 * Must not: parse JSON, call Lua, know rooms beyond server.h, call back into
 * the engine from inside an lr_transport_vt function (they only queue), or
 * write to a socket outside a WRITEABLE callback (the exceptions are the
 * refusal of a WebSocket upgrade, answered with lws_return_http_status from
 * HTTP_CONFIRM_UPGRADE as lws documents, and the 429 written to a fresh
 * socket refused at accept, before lws owns it: net_sock_filter).
 *
 * The loop. lws 4.1 ignores the timeout argument of lws_service(): it sleeps
 * until a socket event or its own earliest lws_sul timer. So the engine clock
 * is driven by one lws_sul ("engine_sul") re-armed before every
 * lws_service() with lr_server_next_timeout(); its callback does nothing but
 * end the poll. lr_server_tick() runs after every lws_service() return, so
 * timers fire on time and work queued by callbacks (a broadcast, a throttled
 * sync due "now") is flushed on the same iteration. Stop signals set a flag
 * and call lws_cancel_service(); poll also returns with EINTR. After
 * connection churn the loop also wakes once to trim the heap (net_churn).
 *
 * One wsi carries at most one of our objects at a time, in its opaque user
 * data (lws_set_opaque_user_data survives the HTTP -> ws protocol rebinding,
 * the per-session user_space does not): a net_conn (WebSocket) or a net_req
 * (the current HTTP transaction). Both start with a `kind` field.
 *
 * Send queue (net_conn). vt->send retains the lr_msg and appends it to a
 * growable ring of power-of-two size: the first NET_RING_INLINE references
 * live inside net_conn (no allocation per send on the usual fan-out path),
 * a bigger ring is allocated when that fills and freed again whenever it
 * drains (an idle connection holds no heap ring); queued bytes are counted as payload +
 * NET_MSG_OVERHEAD so that floods of tiny messages are bounded too. A
 * WRITEABLE is requested when the ring goes from empty to non-empty and again
 * after a WRITEABLE that left messages queued. SERVER_WRITEABLE with several
 * messages queued frames as many as fit in NET_BATCH into one static buffer
 * and writes them with one raw lws_write; a lone message (or one too big for
 * the batch) is written straight from its LR_MSG_PRE headroom (the shared
 * payload is never copied or modified; lws writes the frame header into the
 * headroom, which is the same for every server->client frame). Written
 * messages are released; another WRITEABLE is asked if more is queued. A partial
 * kernel write is kept by lws, which withholds WRITEABLE until it drains, so a
 * client that stops reading makes the ring grow: past max_queue_bytes the ring
 * is released at once, the connection is marked dropping and closed with 1008
 * "slow consumer" when possible (or killed by a short lws timeout). vt->close
 * marks the connection closing: the ring drains first, then the close frame
 * goes out (code 0 = an empty close frame, the peer sees 1005).
 *
 * Refused upgrades. The connection limits (and the h2c / non-GET cases)
 * answer the upgrade with an HTTP status. Past them, a socket for a room
 * that does not exist, or cannot be had now, is accepted and closed at once
 * (net_ws_refusal_close): 4004 "no such room", 1013 "try again later" (full,
 * stopping, cannot wake), 1011 (creation failed). It holds its limit slot
 * until it is gone.
 *
 * HTTP (net_req). LWS_CALLBACK_HTTP copies method, path, query, headers and
 * peer; a body is collected up to max_http_body (a larger Content-Length is
 * answered 413 at once, with "connection: close"; the refused body, up to
 * NET_DISCARD_MAX, is still read and dropped before closing so the client is
 * not reset before it reads the 413). The request is then dispatched with
 * lr_server_http(srv, req, net_http_done, nr). The engine may call done at
 * once or later. done copies the response into nr and asks for WRITEABLE;
 * HTTP_WRITEABLE writes the header block, then the body in bounded chunks,
 * one lws_write per callback, then completes the transaction (keep-alive).
 * If the socket closes while the engine still holds nr, nr is marked `gone`
 * and detached from the wsi; the later done() call sees `gone` and only frees
 * nr. So nr is freed by whichever of {response written or socket gone, done
 * called} happens last.
 *
 * Paths. lws 4.1 percent-decodes the URL and collapses "//", "/./", "/../"
 * while parsing and splits the query on '&' and ';' (decoding '+' and %XX).
 * The engine gets the path and query re-encoded from those pieces: equal to
 * the raw text for every ordinary URL; the known losses are "%2F" in a path
 * (it arrives as a '/'), a literal '+' in a path (lws reads it as a space),
 * ';' as a query separator (becomes '&') and an encoded '=' inside a query
 * parameter name (lws turns it into '_').
 *
 * Per-address limits. Client addresses are the TCP peer, or with
 * --trusted-proxy the X-Forwarded-For entry a listed proxy appended (the
 * PROXY protocol is not available in lws 4.1); IPv6 counts per /64. Each
 * address has one entry (struct net_addr) counting its accepted sockets
 * that are not WebSockets (max_http_per_ip: refused at accept with a 429
 * written to the fresh socket), its WebSockets, direct or relayed by a
 * shard (max_conns_per_ip: 429 on the upgrade; relayed clients through
 * lr_net_addr_acquire), and its message budget (msgs_per_ip, a token
 * bucket over all its sockets, plus NET_FAIR_SHARE messages per loop pass:
 * see net_budget_take). An authenticated shard uplink is not counted.
 * Refusals are logged through lr_warn_limited (log.c): a flood of them
 * cannot flood the log.
 * A request body must be complete body_timeout_ms after its head
 * (body_sul), however it trickles in; lws's own timeouts restart per read.
 *
 * lws 4.1 limits worth knowing: request headers are capped at NET_HEADER_DATA
 * bytes (a bigger header block drops the connection); custom (non-standard)
 * request headers cannot be enumerated, so only those in net_custom_headers
 * and the names registered with lr_server_want_header reach the engine; chunked request bodies are
 * not decoded (411).
 */
#include "net.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <libwebsockets.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "buf.h"
#include "log.h"

_Static_assert(LWS_PRE <= LR_MSG_PRE, "lr_msg headroom must hold the lws frame header");

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
#ifndef NET_PING_SECS              /* idle WebSocket: ping after, hang up after */
#define NET_PING_SECS 30
#endif
#ifndef NET_HANGUP_SECS
#define NET_HANGUP_SECS 75
#endif

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
  bool destroying;                   /* inside lws_context_destroy: no more lws calls from vt */
  int64_t trim_at;  /* return free heap pages to the OS at this time (0 = not due) */
  SSL_CTX *tls_ctx; /* the vhost's server context (TLS only), for the SIGHUP reload */
} net_loop;

static volatile sig_atomic_t net_stop_flag;
static volatile sig_atomic_t net_hup_flag;
static struct lws_context *volatile net_ctx; /* for lr_net_stop and the signal handler */

/* ---- WebSocket connection ---- */

typedef struct net_conn {
  int kind; /* NET_KIND_WS */
  net_loop *loop;
  struct lws *wsi;
  lr_conn *conn; /* the engine's; NULL once lr_conn_closed was called */
  /* outgoing ring of retained messages */
  lr_msg **q;                 /* qin, a heap ring, or NULL (qcap 0) */
  uint32_t qhead, qlen, qcap; /* qcap: 0 or a power of two */
  size_t qbytes;
  lr_msg *qin[NET_RING_INLINE];
  /* incoming message being assembled */
  lr_buf rx;
  struct net_addr *ip; /* its address's entry (counted in ws) */
  char *close_reason;  /* NULL until closed with a reason (at most 123 bytes) */
  int close_code;
  uint8_t close_reason_len;
  bool rx_in_msg;
  bool established; /* LWS_CALLBACK_ESTABLISHED seen: writes allowed */
  bool closing;     /* vt->close called: drain, then close frame */
  bool counted;     /* counted in nws and (with ip) the per-peer table */
  bool dropping;    /* over max_queue_bytes: ring released, close 1008 */
  bool gone;        /* socket closed; vt calls are refused */
  bool paused;      /* rx flow off (lws_rx_flow_control), while it holds messages */
  /* Messages held over its address's budget, oldest first: records of
   * [uint32 len][len bytes][NUL] in held from held_off; held_n of them
   * (held_n > 0: on its address's held list). */
  lr_buf held;
  size_t held_off;
  uint32_t held_n;
  struct net_conn *held_next;
} net_conn;

/* ---- HTTP request ---- */

typedef struct net_hdr {
  char *name; /* "name\0value\0" in one allocation; value = name + strlen(name) + 1 */
} net_hdr;

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

static void net_req_free(net_req *nr);
static void net_unhold(net_conn *nc);
static void net_resume(net_conn *nc);
static void net_budget_wake(lws_sorted_usec_list_t *sul);
static void net_sock_release(struct lws *wsi);

/* ---- small helpers ---- */

/* Monotonic milliseconds. */
static int64_t net_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A WebSocket opened or closed. A join burst leaves the heap full of freed
 * transient blocks (handshake header tables, snapshots of growing size,
 * Lua garbage, send rings) between the blocks that live on; glibc keeps those
 * pages. Once connections have stopped coming and going for
 * NET_TRIM_QUIET_MS, net_trim gives the wholly free pages back to the OS
 * (malloc_trim: a few ms for a heap of 30 MB, once per quiet period; under
 * steady churn the freed blocks are reused instead). */
static void net_churn(net_loop *L) {
  L->trim_at = net_now_ms() + NET_TRIM_QUIET_MS;
}

/* Run the heap trim when it is due (see net_churn). */
static void net_trim(net_loop *L) {
  if (!L->trim_at || net_now_ms() < L->trim_at) return;
  L->trim_at = 0;
  lr_server_quiet(L->srv);
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

/* The loop that owns wsi (the context user pointer). */
static net_loop *net_loop_of(struct lws *wsi) {
  return lws_context_user(lws_get_context(wsi));
}

/* lws log lines (errors and warnings only) go to our log, one line each. */
static void net_lws_log(int level, const char *line) {
  char buf[512];
  size_t n = strlen(line);
  if (n >= sizeof buf) n = sizeof buf - 1;
  memcpy(buf, line, n);
  while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
    n--;
  buf[n] = '\0';
  lr_log(level == LLL_ERR ? LR_LOG_ERROR : LR_LOG_WARN, "lws: %s", buf);
}

/* Append s[0..n) percent-encoding every byte outside `keep` and the RFC 3986
 * unreserved set. */
static void net_pct_encode(lr_buf *b, const char *s, size_t n, const char *keep) {
  static const char hex[] = "0123456789ABCDEF";
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~' || (c && strchr(keep, c))) {
      lr_buf_putc(b, (char)c);
    } else {
      lr_buf_putc(b, '%');
      lr_buf_putc(b, hex[c >> 4]);
      lr_buf_putc(b, hex[c & 15]);
    }
  }
}

/* Copy a whole header token into a new string, or NULL if absent. */
static char *net_hdr_dup(struct lws *wsi, enum lws_token_indexes t) {
  int len = lws_hdr_total_length(wsi, t);
  if (len <= 0) return NULL;
  char *s = lr_xmalloc((size_t)len + 1);
  if (lws_hdr_copy(wsi, s, len + 1, t) < 0) {
    free(s);
    return NULL;
  }
  return s;
}

/* Custom (non-lextable) headers we look up by name: lws 4.1 has no way to
 * enumerate them (lws_hdr_custom_name_foreach came later). These, plus the
 * names the server registered (lr_server_want_header: room files' `headers`,
 * serve --headers). Keep lower-case; lws stores custom names lower-cased. */
static const char *const net_custom_headers[] = {
    "x-access-shard",
    "x-shard-id",
    "x-shard-world-id",
    "x-forwarded-by-shard",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-original-client-ip",
    "x-requested-with",
    "x-request-id",
    "x-api-key",
    "x-world-id",
    "x-test",
    "sec-fetch-mode",
    "sec-fetch-site",
    "sec-fetch-dest",
    "dnt",
    "upgrade-insecure-requests",
    "priority",
};

/* Append the custom header `name` (lower-case) to h[*n] if the request has
 * it and there is room. */
static void net_hdr_custom(struct lws *wsi, const char *name, lr_header *h, size_t *n) {
  if (*n >= NET_MAX_HEADERS) return;
  char key[LR_HEADER_NAME_MAX + 2];
  int kl = snprintf(key, sizeof key, "%s:", name);
  if (kl <= 1 || (size_t)kl >= sizeof key) return;
  for (size_t i = 0; i < *n; i++) /* a registered name that is in the built-in list */
    if (strcmp(h[i].name, name) == 0) return;
  int vl = lws_hdr_custom_length(wsi, key, kl);
  if (vl < 0) return;
  size_t nl = (size_t)kl; /* name + NUL */
  char *s = lr_xmalloc(nl + (size_t)vl + 1);
  memcpy(s, name, nl - 1);
  s[nl - 1] = '\0';
  if (lws_hdr_custom_copy(wsi, s + nl, vl + 1, key, kl) < 0) {
    free(s);
    return;
  }
  h[*n].name = s;
  h[*n].value = s + nl;
  (*n)++;
}

/* Collect every request header lws kept, lower-cased, into a new array of
 * lr_header whose strings live in one allocation per header. The caller
 * frees with net_hdrs_free. */
static lr_header *net_hdrs_collect(net_loop *L, struct lws *wsi, size_t *nout) {
  lr_header *h = lr_xcalloc(NET_MAX_HEADERS, sizeof *h);
  size_t n = 0;
  for (int t = 0; t < (int)WSI_TOKEN_COUNT && n < NET_MAX_HEADERS; t++) {
    if (t == WSI_TOKEN_HTTP_URI_ARGS || t >= (int)_WSI_TOKEN_CLIENT_SENT_PROTOCOLS) continue;
    const char *nm = (const char *)lws_token_to_string((enum lws_token_indexes)t);
    if (!nm) continue;
    size_t nl = strlen(nm);
    /* Header tokens are "name:"; methods, "http/1.1 " and h2 pseudo-headers
     * (":path") are not headers. */
    if (nl < 2 || nm[nl - 1] != ':' || nm[0] == ':') continue;
    int vl = lws_hdr_total_length(wsi, (enum lws_token_indexes)t);
    if (vl <= 0) continue;
    char *s = lr_xmalloc(nl + (size_t)vl + 1);
    memcpy(s, nm, nl - 1);
    s[nl - 1] = '\0';
    for (size_t i = 0; i < nl - 1; i++)
      if (s[i] >= 'A' && s[i] <= 'Z') s[i] = (char)(s[i] + 32);
    if (lws_hdr_copy(wsi, s + nl, vl + 1, (enum lws_token_indexes)t) < 0) {
      free(s);
      continue;
    }
    h[n].name = s;
    h[n].value = s + nl;
    n++;
  }
  for (size_t i = 0; i < sizeof net_custom_headers / sizeof *net_custom_headers; i++)
    net_hdr_custom(wsi, net_custom_headers[i], h, &n);
  size_t nw;
  const char *const *wanted = lr_server_wanted_headers(L->srv, &nw);
  for (size_t i = 0; i < nw; i++)
    net_hdr_custom(wsi, wanted[i], h, &n);
  *nout = n;
  return h;
}

/* Free what net_hdrs_collect returned. NULL is ignored. */
static void net_hdrs_free(lr_header *h, size_t n) {
  if (!h) return;
  for (size_t i = 0; i < n; i++)
    free((char *)h[i].name);
  free(h);
}

/* The path as the engine wants it: lws's decoded path percent-encoded again
 * (pchar and '/' kept). Returns a new string. */
static char *net_path_encode(const char *decoded) {
  lr_buf b;
  lr_buf_init(&b);
  net_pct_encode(&b, decoded, strlen(decoded), "/!$&'()*+,;=:@");
  char *s = lr_xstrndup(lr_buf_cstr(&b), b.len);
  lr_buf_free(&b);
  return s;
}

/* The raw query without '?', rebuilt from lws's decoded "name=value"
 * fragments joined with '&'. Returns a new string ("" if none). */
static char *net_query_collect(struct lws *wsi) {
  int total = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_URI_ARGS);
  if (total <= 0) return lr_xstrndup("", 0);
  char *frag = lr_xmalloc((size_t)total + 1);
  lr_buf b;
  lr_buf_init(&b);
  for (int i = 0;; i++) {
    int fl = lws_hdr_copy_fragment(wsi, frag, total + 1, WSI_TOKEN_HTTP_URI_ARGS, i);
    if (fl < 0) break;
    if (fl == 0) continue;
    if (b.len) lr_buf_putc(&b, '&');
    const char *eq = memchr(frag, '=', (size_t)fl);
    if (eq) {
      net_pct_encode(&b, frag, (size_t)(eq - frag), "!$'()*,:@/?");
      lr_buf_putc(&b, '=');
      net_pct_encode(&b, eq + 1, (size_t)(fl - (eq + 1 - frag)), "!$'()*,:@/?=");
    } else {
      net_pct_encode(&b, frag, (size_t)fl, "!$'()*,:@/?");
    }
  }
  free(frag);
  char *s = lr_xstrndup(lr_buf_cstr(&b), b.len);
  lr_buf_free(&b);
  return s;
}

/* The TCP peer's numeric address into buf ("unknown" if lws cannot tell). */
static void net_peer_tcp(struct lws *wsi, char *buf, size_t len) {
  buf[0] = '\0';
  if (!lws_get_peer_simple(wsi, buf, len)) {
    snprintf(buf, len, "unknown");
    return;
  }
  /* An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d */
  if (!strncmp(buf, "::ffff:", 7) && strchr(buf + 7, '.'))
    memmove(buf, buf + 7, strlen(buf + 7) + 1);
}

/* Is the numeric address ip in the --trusted-proxy list? */
static bool net_trusted(const net_loop *L, const char *ip) {
  unsigned char a[16];
  int fam = strchr(ip, ':') ? AF_INET6 : AF_INET;
  if (!L->ntrusted || inet_pton(fam, ip, a) != 1) return false;
  for (size_t i = 0; i < L->ntrusted; i++) {
    const struct net_cidr *c = &L->trusted[i];
    if (c->fam != fam) continue;
    int bits = c->bits, k = 0;
    for (; bits >= 8 && a[k] == c->a[k]; k++, bits -= 8) {
    }
    if (bits <= 0 || (bits < 8 && ((a[k] ^ c->a[k]) & (0xff00 >> bits)) == 0)) return true;
  }
  return false;
}

/* The client's address into buf: the TCP peer, or, when the peer is a
 * trusted proxy (--trusted-proxy), the last X-Forwarded-For entry that is
 * not one (entries to its left were written by the client and are not
 * believed). A request through a trusted proxy without the header keeps the
 * proxy's address. */
static void net_peer(struct lws *wsi, char *buf, size_t len) {
  net_peer_tcp(wsi, buf, len);
  net_loop *L = lws_context_user(lws_get_context(wsi));
  if (!L || !L->ntrusted || !net_trusted(L, buf)) return;
  char *xff = net_hdr_dup(wsi, WSI_TOKEN_X_FORWARDED_FOR);
  if (!xff) return;
  char *end = xff + strlen(xff);
  while (end > xff) {
    char *comma = end;
    while (comma > xff && comma[-1] != ',')
      comma--;
    char *a = comma, *b = end;
    while (a < b && (*a == ' ' || *a == '\t'))
      a++;
    while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
      b--;
    *b = '\0';
    unsigned char tmp[16];
    bool numeric = inet_pton(strchr(a, ':') ? AF_INET6 : AF_INET, a, tmp) == 1;
    if (!numeric) break; /* garbage: keep the last trusted hop */
    if (!strncmp(a, "::ffff:", 7) && strchr(a + 7, '.')) a += 7;
    snprintf(buf, len, "%s", a);
    if (!net_trusted(L, a)) break;
    end = comma > xff ? comma - 1 : xff;
  }
  free(xff);
}

/* The request method as a static string, or NULL for one lws does not
 * parse; *head tells HEAD apart. Needs the header table (ah). */
static const char *net_method(struct lws *wsi, bool *head) {
  static const char *const names[] = {"GET",   "POST",   "OPTIONS", "PUT",
                                      "PATCH", "DELETE", "CONNECT", "HEAD"};
  char *uri;
  int ulen;
  int m = lws_http_get_uri_and_method(wsi, &uri, &ulen);
  *head = m == LWSHUMETH_HEAD;
  if (m < 0 || m >= (int)(sizeof names / sizeof *names)) return NULL;
  return names[m];
}

/* ======================= WebSocket ======================= */

/* Release every queued message reference and the ring itself. */
static void net_conn_release_queue(net_conn *nc) {
  while (nc->qlen) {
    lr_msg_release(nc->q[nc->qhead]);
    nc->qhead = (nc->qhead + 1) & (nc->qcap - 1);
    nc->qlen--;
  }
  nc->qbytes = 0;
  if (nc->q != nc->qin) free(nc->q);
  nc->q = NULL;
  nc->qhead = nc->qcap = 0;
}

/* A drained ring is freed: a join burst grows every member's ring (one join
 * patch per joiner before the next WRITEABLE), and an idle connection should
 * not keep that capacity. The next send starts on the inline slots again. */
static void net_conn_ring_trim(net_conn *nc) {
  if (nc->qlen || !nc->q) return;
  if (nc->q != nc->qin) free(nc->q);
  nc->q = NULL;
  nc->qhead = nc->qcap = 0;
}

/* "peer conn ID" for a log line (the engine's lines name the same id with
 * its room). Needs the wsi and the engine's conn, both still attached. */
static const char *net_conn_who(net_conn *nc, char *buf, size_t len) {
  char peer[64] = "unknown";
  if (nc->wsi) net_peer(nc->wsi, peer, sizeof peer);
  snprintf(buf, len, "%s conn %s", peer, nc->conn ? lr_conn_id(nc->conn) : "-");
  return buf;
}

/* The close frame's code and reason (cut to the 123 bytes a close frame
 * holds; NULL or "" = none). */
static void net_conn_set_close(net_conn *nc, int code, const char *reason) {
  size_t n = reason ? strlen(reason) : 0;
  if (n > 123) n = 123;
  free(nc->close_reason);
  nc->close_reason = n ? lr_xstrndup(reason, n) : NULL;
  nc->close_reason_len = (uint8_t)n;
  nc->close_code = code;
}

/* Mark c as a slow consumer: free what it holds and close it with 1008. */
static void net_conn_drop(net_conn *nc, size_t wanted) {
  char who[96];
  lr_warn("ws %s: slow consumer, %zu bytes queued (limit %zu), closing with 1008",
          net_conn_who(nc, who, sizeof who), wanted, nc->loop->o.max_queue_bytes);
  net_conn_release_queue(nc);
  net_resume(nc);
  nc->dropping = true;
  net_conn_set_close(nc, 1008, "slow consumer");
  if (nc->established && !nc->loop->destroying) {
    lws_set_timeout(nc->wsi, PENDING_TIMEOUT_USER_OK, NET_DROP_SECS);
    lws_callback_on_writable(nc->wsi);
  }
}

/* vt->send: queue a reference to m (retained here, released once written or
 * dropped). Returns -1 if the connection is closing or gone, or if m would
 * take it over max_queue_bytes (it is then dropped: see net_conn_drop).
 * Never calls the engine. */
static int net_ws_send(lr_conn *c, lr_msg *m) {
  net_conn *nc = lr_conn_transport(c);
  if (!nc || nc->gone || nc->closing || nc->dropping) return -1;
  size_t cost = (size_t)m->len + NET_MSG_OVERHEAD;
  if (nc->qbytes + cost > nc->loop->o.max_queue_bytes) {
    net_conn_drop(nc, nc->qbytes + cost);
    return -1;
  }
  if (nc->qlen == nc->qcap) {
    if (!nc->qcap) { /* empty: the inline slots, no allocation */
      nc->q = nc->qin;
      nc->qhead = 0;
      nc->qcap = NET_RING_INLINE;
    } else {
      uint32_t cap = nc->qcap * 2;
      lr_msg **q = lr_xmalloc(sizeof *q * cap);
      for (uint32_t i = 0; i < nc->qlen; i++)
        q[i] = nc->q[(nc->qhead + i) & (nc->qcap - 1)];
      if (nc->q != nc->qin) free(nc->q);
      nc->q = q;
      nc->qhead = 0;
      nc->qcap = cap;
    }
  }
  nc->q[(nc->qhead + nc->qlen) & (nc->qcap - 1)] = lr_msg_retain(m);
  nc->qlen++;
  nc->qbytes += cost;
  /* Empty -> non-empty only: while messages are queued a WRITEABLE is
   * already pending (asked here, at ESTABLISHED or by the last WRITEABLE). */
  if (nc->qlen == 1 && nc->established && !nc->loop->destroying) lws_callback_on_writable(nc->wsi);
  return 0;
}

/* vt->close: close after the queued data with code and reason (reason cut
 * to the 123 bytes a close frame holds; code 0 = a close frame without a
 * status). Later calls are ignored. Never calls the engine: lr_conn_closed
 * follows from LWS_CALLBACK_CLOSED. */
static void net_ws_close(lr_conn *c, int code, const char *reason) {
  net_conn *nc = lr_conn_transport(c);
  if (!nc || nc->gone || nc->closing || nc->dropping) return;
  nc->closing = true;
  net_resume(nc); /* a held message is dropped; the close handshake must be read */
  net_conn_set_close(nc, code > 0 ? code : 0, code > 0 ? reason : NULL);
  if (nc->established && !nc->loop->destroying) lws_callback_on_writable(nc->wsi);
}

static const lr_transport_vt net_vt = {net_ws_send, net_ws_close};

/* ---- per-address accounting ---- */

static struct net_addr net_tomb; /* a deleted slot */

/* The accounting key of a numeric address: IPv4 as it is, IPv6 cut to its
 * /64 (one subscriber's usual allocation), anything else as it is. */
static void net_addr_key(const char *ip, char out[64]) {
  unsigned char a6[16];
  if (strchr(ip, ':') && inet_pton(AF_INET6, ip, a6) == 1) {
    char txt[INET6_ADDRSTRLEN];
    memset(a6 + 8, 0, 8);
    if (inet_ntop(AF_INET6, a6, txt, sizeof txt)) {
      snprintf(out, 64, "%s/64", txt);
      return;
    }
  }
  snprintf(out, 64, "%s", ip);
}

static uint32_t net_addr_hash(const char *k) {
  uint32_t h = 2166136261u;
  for (const char *p = k; *p; p++)
    h = (h ^ (unsigned char)*p) * 16777619u;
  return h;
}

/* Rebuild the table with room for twice its live entries (no tombstones). */
static void net_addr_rehash(net_loop *L) {
  size_t live = 0;
  for (size_t i = 0; i < L->addrcap; i++)
    if (L->addrs[i] && L->addrs[i] != &net_tomb) live++;
  size_t cap = 1024;
  while (cap < 4 * (live + 1))
    cap *= 2;
  struct net_addr **t = lr_xcalloc(cap, sizeof *t);
  for (size_t i = 0; i < L->addrcap; i++) {
    struct net_addr *a = L->addrs[i];
    if (!a || a == &net_tomb) continue;
    size_t j = net_addr_hash(a->key) & (cap - 1);
    while (t[j])
      j = (j + 1) & (cap - 1);
    t[j] = a;
  }
  free(L->addrs);
  L->addrs = t;
  L->addrcap = cap;
  L->addrused = live;
}

/* The entry of the numeric address ip (created when add; NULL when absent).
 * Entries never move: connections keep pointers to theirs. */
static struct net_addr *net_addr_get(net_loop *L, const char *ip, bool add) {
  char key[64];
  net_addr_key(ip, key);
  if (!L->addrcap) {
    if (!add) return NULL;
    net_addr_rehash(L);
  }
  size_t mask = L->addrcap - 1, i = net_addr_hash(key) & mask;
  for (; L->addrs[i]; i = (i + 1) & mask)
    if (L->addrs[i] != &net_tomb && strcmp(L->addrs[i]->key, key) == 0) return L->addrs[i];
  if (!add) return NULL;
  struct net_addr *a = lr_xcalloc(1, sizeof *a);
  memcpy(a->key, key, sizeof key);
  L->addrs[i] = a;
  if (++L->addrused * 2 > L->addrcap) net_addr_rehash(L);
  return a;
}

/* Free a's entry if nothing counts on it any more. */
static void net_addr_put(net_loop *L, struct net_addr *a) {
  if (!a || a->ws || a->http || a->held_head || a->waiting) return;
  size_t mask = L->addrcap - 1, i = net_addr_hash(a->key) & mask;
  for (; L->addrs[i]; i = (i + 1) & mask) {
    if (L->addrs[i] == a) {
      L->addrs[i] = &net_tomb;
      free(a);
      return;
    }
  }
}

/* Free every entry (end of lr_net_run). */
static void net_addr_free_all(net_loop *L) {
  for (size_t i = 0; i < L->addrcap; i++)
    if (L->addrs[i] && L->addrs[i] != &net_tomb) free(L->addrs[i]);
  free(L->addrs);
  L->addrs = NULL;
  L->addrcap = L->addrused = 0;
}

/* ---- sockets per address (max_http_per_ip) ----
 *
 * Every accepted socket is counted under its TCP peer's address from accept
 * (FILTER_NETWORK_CONNECTION refuses, NEW_CLIENT_INSTANTIATED counts) until
 * it is destroyed or becomes a WebSocket (then counted in ws instead). The
 * entry rides on the wsi's opaque parent pointer (the opaque user pointer
 * holds our per-request object). Trusted proxies are not counted. */

/* FILTER_NETWORK_CONNECTION: a new socket fd, before lws reads from it.
 * Over the cap it gets a 429 written straight to the fresh socket (nothing
 * else is queued on it) and is closed. Returns the lws callback result. */
static int net_sock_filter(net_loop *L, int fd) {
  if (L->o.max_http_per_ip < 0 || fd < 0) return 0;
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  char ip[INET6_ADDRSTRLEN + 1] = "";
  if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0) return 0;
  if (ss.ss_family == AF_INET)
    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof ip);
  else if (ss.ss_family == AF_INET6)
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, ip, sizeof ip);
  if (!ip[0]) return 0;
  const char *p = !strncmp(ip, "::ffff:", 7) && strchr(ip + 7, '.') ? ip + 7 : ip;
  if (net_trusted(L, p)) return 0;
  struct net_addr *a = net_addr_get(L, p, false);
  if (!a || a->http < (uint32_t)L->o.max_http_per_ip) return 0;
  lr_warn_limited(
      "http address limit",
      "connection from %s refused: %u open HTTP connections from this address (max %ld)", p,
      a->http, L->o.max_http_per_ip);
  if (L->o.tls_cert) return 1; /* a TLS client would read plain text as a bad handshake */
  static const char resp[] = "HTTP/1.1 429 Too Many Requests\r\n"
                             "content-type: text/plain; charset=utf-8\r\n"
                             "content-length: 40\r\n"
                             "retry-after: 5\r\n"
                             "connection: close\r\n\r\n"
                             "too many connections from this address\r\n";
  /* Read what already arrived so that closing sends FIN rather than RST. */
  char sink[4096];
  (void)!recv(fd, sink, sizeof sink, MSG_DONTWAIT);
  (void)!send(fd, resp, sizeof resp - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  shutdown(fd, SHUT_WR);
  return 1;
}

/* NEW_CLIENT_INSTANTIATED: count the socket under its address. */
static void net_sock_open(net_loop *L, struct lws *wsi) {
  char peer[64];
  net_peer_tcp(wsi, peer, sizeof peer);
  if (net_trusted(L, peer)) return;
  struct net_addr *a = net_addr_get(L, peer, true);
  a->http++;
  lws_set_opaque_parent_data(wsi, a);
}

/* The socket is destroyed or became a WebSocket: uncount it. */
static void net_sock_release(struct lws *wsi) {
  struct net_addr *a = lws_get_opaque_parent_data(wsi);
  if (!a) return;
  lws_set_opaque_parent_data(wsi, NULL);
  if (a->http) a->http--;
  net_addr_put(net_loop_of(wsi), a);
}

/* The socket is gone (or the upgrade was refused): tell the engine exactly
 * once, release the queue and free nc. nc must not be used afterwards. */
static void net_conn_finish(net_conn *nc) {
  nc->gone = true;
  if (nc->wsi) lws_set_opaque_user_data(nc->wsi, NULL);
  nc->wsi = NULL;
  if (nc->conn) {
    lr_conn *c = nc->conn;
    nc->conn = NULL;
    lr_conn_closed(c);
  }
  net_conn_release_queue(nc);
  lr_buf_free(&nc->rx);
  if (nc->held_n) net_unhold(nc);
  lr_buf_free(&nc->held);
  if (nc->counted) {
    nc->loop->nws--;
    if (nc->ip && nc->ip->ws) nc->ip->ws--;
  }
  net_addr_put(nc->loop, nc->ip);
  free(nc->close_reason);
  nc->loop->nconns--;
  if (!nc->loop->destroying) net_churn(nc->loop);
  free(nc);
}

/* A new WebSocket connection object for wsi, counted against the limits
 * (nws and its peer's slot) and attached to wsi. */
static net_conn *net_ws_conn_new(net_loop *L, struct lws *wsi, const char *peer) {
  net_conn *nc = lr_xcalloc(1, sizeof *nc);
  nc->kind = NET_KIND_WS;
  nc->loop = L;
  nc->wsi = wsi;
  nc->ip = net_addr_get(L, peer, true);
  nc->ip->ws++;
  nc->counted = true;
  L->nws++;
  lr_buf_init(&nc->rx);
  L->nconns++;
  lws_set_opaque_user_data(wsi, nc);
  return nc;
}

/* A WebSocket the engine has no room for (HTTP status st: 404 no such room,
 * 503 full / stopping / cannot wake, 500 creation failed): the upgrade goes
 * on and the socket is closed at once with a WebSocket code, so browser code
 * can tell "wrong room" (4004) from "try again" (1013) and from a server that
 * is down. nc carries no engine connection; what the client sends is
 * dropped; it counts against the connection limits until it is gone. */
static void net_ws_refusal_close(net_conn *nc, int st) {
  nc->closing = true;
  if (st == 404)
    net_conn_set_close(nc, 4004, "no such room");
  else if (st == 503)
    net_conn_set_close(nc, 1013, "try again later");
  else
    net_conn_set_close(nc, 1011, "room could not be created");
}

/* The same for a refusal decided here (a path outside /parties/, or the
 * server is stopping), after the connection limits: a probe takes a slot
 * like any socket. Returns the HTTP_CONFIRM_UPGRADE result (0: go on). */
static int net_ws_refuse(net_loop *L, struct lws *wsi, const char *peer, int st) {
  net_ws_refusal_close(net_ws_conn_new(L, wsi, peer), st);
  return 0;
}

/* HTTP_CONFIRM_UPGRADE: the headers are parsed and we can still answer with
 * an HTTP status. Returns the lws callback result: 0 to go on with the
 * upgrade, 1 after answering, -1 to hang up. */
static int net_ws_upgrade(net_loop *L, struct lws *wsi, const char *up) {
  if (!strcasecmp(up, "h2c")) {
    /* lws 4.1 upgrades h1 -> h2c fine for body-less requests, but loses the
     * body of one that has one (curl --http2 -d ...): refuse those. */
    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 ||
        lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0) {
      lws_return_http_status(wsi, HTTP_STATUS_BAD_REQUEST, "h2c upgrade with a body: use HTTP/1.1");
      return 1;
    }
    return 0;
  }
  if (strcasecmp(up, "websocket")) return -1; /* lws answers other upgrades with 403 first */
  bool head;
  const char *method = net_method(wsi, &head);
  char *dpath = net_hdr_dup(wsi, WSI_TOKEN_GET_URI);
  if (!method || strcmp(method, "GET") || !dpath) {
    free(dpath);
    return -1;
  }
  char peer[64];
  net_peer(wsi, peer, sizeof peer);
  /* Connection limits, before the room sees anything. */
  if (L->o.max_conns >= 0 && L->nws >= (size_t)L->o.max_conns) {
    lr_warn_limited("connection limit", "websocket from %s refused: %zu connections open (max %ld)",
                    peer, L->nws, L->o.max_conns);
    free(dpath);
    lws_return_http_status(wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, NULL);
    return 1;
  }
  /* A shard's uplink (x-shard-id, authenticated by the engine) carries many
   * clients from one address: it is not counted against that address; its
   * clients are, each under its own address (lr_net_addr_acquire). */
  bool relay = lws_hdr_custom_length(wsi, "x-shard-id:", 11) >= 0;
  if (L->o.max_conns_per_ip >= 0 && !relay) {
    struct net_addr *a = net_addr_get(L, peer, false);
    if (a && a->ws >= (uint32_t)L->o.max_conns_per_ip) {
      lr_warn_limited("address limit",
                      "websocket from %s refused: %u connections from this address (max %ld)", peer,
                      a->ws, L->o.max_conns_per_ip);
      free(dpath);
      lws_return_http_status(wsi, 429, NULL);
      return 1;
    }
  }
  /* Past the limits, a socket is accepted even when there is no room for it
   * (net_ws_refuse): the page sees a close code, not a failed handshake. */
  if (strncmp(dpath, "/parties/", 9) || L->stopping) {
    free(dpath);
    return net_ws_refuse(L, wsi, peer, L->stopping ? 503 : 404);
  }
  lr_request req = {0};
  req.method = "GET";
  char *path = net_path_encode(dpath);
  free(dpath);
  char *query = net_query_collect(wsi);
  size_t nh = 0;
  lr_header *h = net_hdrs_collect(L, wsi, &nh);
  req.path = path;
  req.query = query;
  req.headers = h;
  req.nheaders = nh;
  req.remote_addr = peer;

  net_conn *nc = net_ws_conn_new(L, wsi, peer);
  lr_conn *conn = NULL;
  int st = lr_server_ws_open(L->srv, &req, &net_vt, nc, &conn);
  net_hdrs_free(h, nh);
  free(query);
  if (st != 0 || !conn) {
    lr_debug("ws upgrade %s refused with %d", path, st ? st : 404);
    free(path);
    if (!conn && (st == 0 || st == 404 || st == 503 || st == 500)) {
      /* No such room, or none now: accept, then close with a code. */
      net_ws_refusal_close(nc, st ? st : 404);
      return 0;
    }
    nc->conn = conn; /* NULL as the contract says; if not, finish closes it */
    nc->wsi = NULL;
    lws_set_opaque_user_data(wsi, NULL);
    net_conn_finish(nc);
    lws_return_http_status(wsi, st >= 400 && st < 600 ? (unsigned)st : HTTP_STATUS_NOT_FOUND, NULL);
    return 1;
  }
  free(path);
  nc->conn = conn;
  if (relay && lr_conn_is_relay(conn)) { /* exempt: see above */
    nc->ip->ws--;
    net_addr_put(L, nc->ip);
    nc->ip = NULL;
  }
  net_sock_release(wsi); /* a WebSocket now, counted as one */
  net_churn(L);
  return 0;
}

/* SERVER_WRITEABLE: one lws_write (a queued message, or the close frame).
 * Returns the lws callback result (-1 closes the connection). */
#define NET_BATCH 65536 /* bytes of frames written by one lws_write */

static int net_ws_writeable(net_conn *nc) {
  struct lws *wsi = nc->wsi;
  if (nc->dropping) {
    lws_close_reason(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, (unsigned char *)nc->close_reason,
                     nc->close_reason_len);
    return -1;
  }
  if (nc->qlen) {
    /* Frame the queued messages ourselves (server frames are not masked,
     * and no extension is negotiated) into one buffer and write it with one
     * raw lws_write: one send() for several messages, and for one message
     * ~280 instructions less than lws's own framing (LWS_WRITE_TEXT). A
     * message too big for the batch goes alone, below. */
    static unsigned char batch[LWS_PRE + NET_BATCH];
    size_t used = 0;
    while (nc->qlen) {
      lr_msg *m = nc->q[nc->qhead];
      size_t len = m->len, hdr = len < 126 ? 2 : len < 65536 ? 4 : 10;
      if (used + hdr + len > NET_BATCH) break;
      unsigned char *p = batch + LWS_PRE + used;
      p[0] = 0x81; /* FIN, text */
      if (len < 126) {
        p[1] = (unsigned char)len;
      } else if (len < 65536) {
        p[1] = 126;
        p[2] = (unsigned char)(len >> 8);
        p[3] = (unsigned char)len;
      } else {
        p[1] = 127;
        for (int i = 0; i < 8; i++)
          p[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
      }
      memcpy(p + hdr, lr_msg_payload(m), len);
      used += hdr + len;
      nc->qhead = (nc->qhead + 1) & (nc->qcap - 1);
      nc->qlen--;
      nc->qbytes -= len + NET_MSG_OVERHEAD;
      lr_msg_release(m);
    }
    if (used) {
      net_conn_ring_trim(nc);
      if (lws_write(wsi, batch + LWS_PRE, used, LWS_WRITE_RAW) < 0) return -1;
      if (nc->qlen || nc->closing) lws_callback_on_writable(wsi);
      return 0;
    }
  }
  if (nc->qlen) {
    lr_msg *m = nc->q[nc->qhead];
    nc->qhead = (nc->qhead + 1) & (nc->qcap - 1);
    nc->qlen--;
    nc->qbytes -= (size_t)m->len + NET_MSG_OVERHEAD;
    net_conn_ring_trim(nc);
    int n = lws_write(wsi, m->data + LR_MSG_PRE, m->len, LWS_WRITE_TEXT);
    lr_msg_release(m);
    if (n < 0) return -1;
    if (nc->qlen || nc->closing) lws_callback_on_writable(wsi);
    return 0;
  }
  if (nc->closing) {
    if (nc->close_code > 0) {
      lws_close_reason(wsi, (enum lws_close_status)nc->close_code,
                       (unsigned char *)nc->close_reason, nc->close_reason_len);
    } else {
      /* No status: an empty close frame (opcode 8), as the reference's
       * conn.close() sends. lws_close_reason() always writes a status, so
       * write the frame directly (4 = LWS_WRITE_CLOSE inside lws). */
      unsigned char buf[LWS_PRE + 1];
      lws_write(wsi, buf + LWS_PRE, 0, (enum lws_write_protocol)4);
    }
    return -1;
  }
  return 0;
}

/* ---- the message budget of an address (msgs_per_ip) ----
 *
 * One token bucket per address, shared by all its sockets (rate msgs_per_ip
 * per second, burst 2 x rate), and a fair share of NET_FAIR_SHARE messages
 * per loop pass. A complete message past either is held: the socket keeps
 * it, stops reading (lws rx flow control: the rest waits in the kernel, the
 * sender feels TCP backpressure) and queues behind the other held sockets of
 * its address. budget_sul hands held messages to the engine, one per socket
 * in turn, as tokens come back; the last one read again. Nothing is dropped;
 * the per-connection limit of the room (rate_limit, 4008) applies after
 * this.
 *
 * TLS: lws 4.1 must not be rx flow controlled while OpenSSL still holds
 * decrypted bytes of the socket (SSL_pending > 0: poll() cannot see them).
 * Its ws POLLIN handler then loops for them forever without reading
 * (re-stashing its buflist each turn: no syscall, the loop never returns,
 * SIGTERM is never seen). So a TLS socket is paused only at a message that
 * leaves nothing pending in OpenSSL; until then its further complete
 * messages are held too (in order). What OpenSSL can hold is at most one
 * TLS record (16 KiB of plaintext), so a socket keeps at most max_frame +
 * NET_HOLD_EXTRA held bytes (a socket past that is closed with 1008; it
 * cannot happen with lws reading as it does), an address at most that many
 * per socket (max_conns_per_ip). */

static void net_budget_arm(net_loop *L, int64_t ms) {
  if (L->destroying) return;
  lws_sul_schedule(L->ctx, 0, &L->budget_sul, net_budget_wake,
                   (lws_usec_t)(ms < 1 ? 1 : ms) * LWS_US_PER_MS);
}

/* Refill a's bucket to now. */
static void net_budget_refill(net_loop *L, struct net_addr *a) {
  double rate = (double)L->o.msgs_per_ip, burst = 2 * rate;
  int64_t now = net_now_ms();
  if (a->tokens_at == 0)
    a->tokens = burst;
  else
    a->tokens += (double)(now - a->tokens_at) * rate / 1000.0;
  if (a->tokens > burst) a->tokens = burst;
  a->tokens_at = now;
}

/* May nc's complete message go to the engine now? Takes a token if so. */
static bool net_budget_take(net_conn *nc) {
  net_loop *L = nc->loop;
  struct net_addr *a = nc->ip;
  if (!a || L->o.msgs_per_ip <= 0) return true;
  if (nc->held_n) return false;   /* behind its own held messages: keep the order */
  if (a->held_head) return false; /* others of this address wait: first come first served */
  if (a->pass != L->pass) {
    a->pass = L->pass;
    a->pass_n = 0;
  }
  if (a->pass_n >= NET_FAIR_SHARE) return false;
  net_budget_refill(L, a);
  if (a->tokens < 1) return false;
  a->tokens -= 1;
  a->pass_n++;
  return true;
}

/* Does OpenSSL hold decrypted bytes of nc's socket that lws has not read? */
static bool net_tls_pending(net_conn *nc) {
  if (!lws_is_ssl(nc->wsi)) return false;
  SSL *ssl = lws_get_ssl(nc->wsi);
  return ssl && SSL_pending(ssl) > 0;
}

/* Keep nc's complete message (in rx) behind its held ones and pause its
 * socket if lws can resume it (see above). -1: over what a socket may hold
 * (nothing kept; close it). */
static int net_hold(net_conn *nc) {
  net_loop *L = nc->loop;
  struct net_addr *a = nc->ip;
  uint32_t len = (uint32_t)nc->rx.len;
  if (nc->held_n &&
      nc->held.len - nc->held_off + sizeof len + len + 1 > L->o.max_frame + NET_HOLD_EXTRA)
    return -1;
  if (!nc->held_n) {
    lr_buf_reset(&nc->held);
    nc->held_off = 0;
  }
  lr_buf_put(&nc->held, &len, sizeof len);
  lr_buf_put(&nc->held, nc->rx.data, len);
  lr_buf_putc(&nc->held, '\0');
  lr_buf_reset(&nc->rx);
  if (nc->held_n++ == 0) {
    nc->held_next = NULL;
    if (a->held_tail)
      a->held_tail->held_next = nc;
    else
      a->held_head = nc;
    a->held_tail = nc;
  }
  if (!nc->paused && !net_tls_pending(nc)) {
    nc->paused = true;
    lws_rx_flow_control(nc->wsi, 0);
  }
  if (!a->waiting) {
    a->waiting = true;
    a->wait_next = L->waiting;
    L->waiting = a;
    lr_warn_limited("message budget",
                    "messages from %s held: over the address's budget (%ld/s) or its share of a "
                    "loop pass",
                    a->key, L->o.msgs_per_ip);
  }
  net_budget_arm(L, 1);
  return 0;
}

/* Take nc out of its address's held list (it is gone, or delivered). */
static void net_unhold(net_conn *nc) {
  struct net_addr *a = nc->ip;
  nc->held_n = 0;
  nc->held_off = nc->held.len;
  if (!a) return;
  net_conn **pp = &a->held_head, *prev = NULL;
  while (*pp && *pp != nc) {
    prev = *pp;
    pp = &(*pp)->held_next;
  }
  if (*pp) {
    *pp = nc->held_next;
    if (a->held_tail == nc) a->held_tail = prev;
  }
  nc->held_next = NULL;
}

/* Let nc's socket read again. Outside nc's own callbacks: applied now (lws
 * then services what it stashed while paused). */
static void net_read_again(net_conn *nc) {
  if (!nc->paused) return;
  nc->paused = false;
  if (nc->wsi && !nc->loop->destroying)
    lws_rx_flow_control(nc->wsi, LWS_RXFLOW_REASON_APPLIES_ENABLE | LWS_RXFLOW_REASON_USER_BOOL |
                                     LWS_RXFLOW_REASON_FLAG_PROCESS_NOW);
}

/* nc is closing: forget its held messages and read again (the peer's close
 * frame must get through). The buffer itself is kept (a held message may be
 * in the engine's hands right now) and freed with nc. */
static void net_resume(net_conn *nc) {
  if (nc->held_n) net_unhold(nc);
  net_read_again(nc);
}

/* budget_sul: hand held messages to the engine as their addresses' tokens
 * and fair shares allow, one per socket in turn, then sleep until the next
 * token is due. */
static void net_budget_wake(lws_sorted_usec_list_t *sul) {
  net_loop *L = lws_container_of(sul, net_loop, budget_sul);
  int64_t next = -1;
  struct net_addr **pp = &L->waiting;
  while (*pp) {
    struct net_addr *a = *pp;
    net_budget_refill(L, a);
    if (a->pass != L->pass) {
      a->pass = L->pass;
      a->pass_n = 0;
    }
    while (a->held_head && a->tokens >= 1 && a->pass_n < NET_FAIR_SHARE) {
      net_conn *nc = a->held_head;
      uint32_t len;
      memcpy(&len, nc->held.data + nc->held_off, sizeof len);
      size_t at = nc->held_off + sizeof len;
      nc->held_off = at + len + 1;
      a->tokens -= 1;
      a->pass_n++;
      if (--nc->held_n == 0) {
        net_unhold(nc);
        net_read_again(nc);
      } else if (nc->held_next) { /* round robin: to the back of the line */
        a->held_head = nc->held_next;
        a->held_tail->held_next = nc;
        a->held_tail = nc;
        nc->held_next = NULL;
      }
      if (nc->conn && !nc->closing && !nc->dropping)
        lr_conn_message(nc->conn, nc->held.data + at, len);
      if (!nc->held_n) { /* (a close in the engine may have emptied it) */
        if (nc->held.cap > 16384)
          lr_buf_free(&nc->held);
        else
          lr_buf_reset(&nc->held);
        nc->held_off = 0;
      }
    }
    if (!a->held_head) {
      *pp = a->wait_next;
      a->waiting = false;
      a->wait_next = NULL;
      net_addr_put(L, a);
      continue;
    }
    int64_t in = a->pass_n >= NET_FAIR_SHARE
                     ? 1
                     : (int64_t)((1 - a->tokens) * 1000.0 / (double)L->o.msgs_per_ip) + 1;
    if (next < 0 || in < next) next = in;
    pp = &a->wait_next;
  }
  if (next >= 0) net_budget_arm(L, next);
}

/* RECEIVE: a piece of a frame. Pieces and fragments are assembled; a
 * complete message goes to lr_conn_message (NUL-terminated, binary frames
 * as they are). Over max_frame: close with 1009, nothing reaches the engine.
 * Returns the lws callback result. */
static int net_ws_receive(net_conn *nc, const char *in, size_t len) {
  if (!nc->conn || nc->closing || nc->dropping) return 0; /* closing: drop input */
  struct lws *wsi = nc->wsi;
  if (!nc->rx_in_msg) {
    lr_buf_reset(&nc->rx);
    nc->rx_in_msg = true;
  }
  if (nc->rx.len + len > nc->loop->o.max_frame) {
    char who[96];
    lr_warn("ws %s: incoming message over %zu bytes, closing with 1009",
            net_conn_who(nc, who, sizeof who), nc->loop->o.max_frame);
    lr_buf_free(&nc->rx);
    static const char why[] = "message too big";
    lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, (unsigned char *)why, sizeof why - 1);
    return -1;
  }
  if (len) lr_buf_put(&nc->rx, in, len);
  if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
    nc->rx_in_msg = false;
    if (!net_budget_take(nc)) {
      if (net_hold(nc) == 0) return 0;
      char who[96];
      lr_warn("ws %s: over %zu bytes held over the message budget, closing with 1008",
              net_conn_who(nc, who, sizeof who), nc->loop->o.max_frame + NET_HOLD_EXTRA);
      lr_buf_free(&nc->rx);
      static const char why[] = "message budget";
      lws_close_reason(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, (unsigned char *)why,
                       sizeof why - 1);
      return -1;
    }
    lr_conn_message(nc->conn, lr_buf_cstr(&nc->rx), nc->rx.len);
    /* The sender's own answer (the patch of its action, an error) goes out
     * now, ahead of the room's other sockets, which wait for their POLLOUT
     * in the next pass: the acting client sees its effect first. Only when
     * lws buffers nothing for this socket (a write it could not finish
     * waits for WRITEABLE) and no close is pending. */
    if (nc->qlen && !nc->closing && !nc->dropping && !lws_partial_buffered(wsi) &&
        net_ws_writeable(nc) < 0)
      return -1;
    /* Do not keep a big buffer around for an idle connection. */
    if (nc->rx.cap > 16384)
      lr_buf_free(&nc->rx);
    else
      lr_buf_reset(&nc->rx);
  }
  return 0;
}

/* ======================= HTTP ======================= */

/* Free nr and everything it owns (request copy, response, file). */
static void net_req_free(net_req *nr) {
  free(nr->path);
  free(nr->query);
  free(nr->fs_path);
  net_hdrs_free(nr->hdrs, nr->nhdrs);
  lr_buf_free(&nr->body);
  for (size_t i = 0; i < nr->nrh; i++)
    free(nr->rh[i]);
  free(nr->rh);
  free(nr->out);
  if (nr->fd >= 0) close(nr->fd);
  free(nr);
}

/* Drop the request inputs once the engine has seen them. */
static void net_req_free_inputs(net_req *nr) {
  free(nr->path);
  free(nr->query);
  nr->path = nr->query = NULL;
  net_hdrs_free(nr->hdrs, nr->nhdrs);
  nr->hdrs = NULL;
  nr->nhdrs = 0;
  lr_buf_free(&nr->body);
}

/* The wsi is going away (or its transaction is over): detach nr. */
static void net_req_detach(net_req *nr) {
  lws_sul_cancel(&nr->body_sul);
  if (nr->wsi) {
    lws_set_opaque_user_data(nr->wsi, NULL);
    nr->wsi = NULL;
    nr->loop->nreqs--;
  }
  if (nr->dispatched && !nr->answered)
    nr->gone = true; /* done() will free */
  else
    net_req_free(nr);
}

/* Append a response header (copied). */
static void net_req_add_header(net_req *nr, const char *name, const char *value, size_t vlen) {
  size_t nl = strlen(name);
  char *s = lr_xmalloc(nl + vlen + 2);
  memcpy(s, name, nl + 1);
  memcpy(s + nl + 1, value, vlen);
  s[nl + 1 + vlen] = '\0';
  nr->rh = lr_xrealloc(nr->rh, sizeof *nr->rh * (nr->nrh + 1));
  nr->rh[nr->nrh++] = s;
}

/* Copy the response body behind LWS_PRE bytes of headroom. */
static void net_req_set_body(net_req *nr, const char *body, size_t len) {
  nr->out = lr_xmalloc(LWS_PRE + len + 1);
  if (len) memcpy(nr->out + LWS_PRE, body, len);
  nr->outlen = len;
}

/* Queue a response made by the transport itself (404, 411, 413, ...): nr
 * counts as answered and is never handed to the engine. */
static void net_http_simple(net_req *nr, int status, const char *ctype, const char *body, bool cors,
                            bool close_after) {
  nr->answered = true;
  nr->status = status;
  net_req_add_header(nr, "content-type", ctype, strlen(ctype));
  if (cors) {
    static const char *const c[][2] = {
        {"access-control-allow-origin", "*"},
        {"access-control-allow-methods", "GET, POST, PUT, DELETE, PATCH, OPTIONS"},
        {"access-control-allow-headers", "Content-Type, Authorization, X-Requested-With"},
        {"access-control-max-age", "86400"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++)
      net_req_add_header(nr, c[i][0], c[i][1], strlen(c[i][1]));
  }
  net_req_set_body(nr, body, strlen(body));
  nr->close_after = close_after;
  nr->ready = true;
  lws_callback_on_writable(nr->wsi);
}

/* The engine's answer (lr_response_cb). May run inside lr_server_http() or
 * any time later, even after lr_net_run returned. r is copied. If the client
 * went away meanwhile (nr->gone), it only frees nr. */
static void net_http_done(void *ud, const lr_response *r) {
  net_req *nr = ud;
  if (nr->answered) {
    lr_error("http: response callback called twice (ignored)");
    return;
  }
  nr->answered = true;
  if (nr->gone) {
    net_req_free(nr);
    return;
  }
  nr->status = r->status > 0 ? r->status : 500;
  for (size_t i = 0; i < r->nheaders; i++) {
    const char *n = r->headers[i].name, *v = r->headers[i].value;
    if (!n || !v || !*n) continue;
    if (!strcasecmp(n, "content-length") || !strcasecmp(n, "transfer-encoding") ||
        !strcasecmp(n, "connection"))
      continue;
    if (strpbrk(n, "\r\n: ") || strpbrk(v, "\r\n")) { /* no header injection */
      lr_warn("http: response header %.40s dropped (invalid characters)", n);
      continue;
    }
    net_req_add_header(nr, n, v, strlen(v));
  }
  net_req_set_body(nr, r->body ? r->body : "", r->body ? r->bodylen : 0);
  nr->ready = true;
  if (!nr->loop->destroying) lws_callback_on_writable(nr->wsi);
}

/* Hand a complete request to the engine (once). The engine's handler gets
 * NET_HTTP_HANDLER_SECS to answer before lws drops the connection. */
static void net_http_dispatch(net_req *nr) {
  if (nr->dispatched || nr->answered) return;
  nr->dispatched = true;
  lws_set_timeout(nr->wsi, PENDING_TIMEOUT_USER_OK, NET_HTTP_HANDLER_SECS);
  lr_request req = {0};
  req.method = nr->method;
  req.path = nr->path;
  req.query = nr->query;
  req.headers = nr->hdrs;
  req.nheaders = nr->nhdrs;
  req.body = nr->body.len ? nr->body.data : NULL;
  req.bodylen = nr->body.len;
  req.remote_addr = nr->peer;
  lr_server_http(nr->loop->srv, &req, net_http_done, nr);
  /* nr is still alive here: a synchronous done() never frees an attached
   * request. */
  net_req_free_inputs(nr);
}

/* Content-Type for a static file, by extension. */
static const char *net_mime(const char *path) {
  static const char *const map[][2] = {
      {".html", "text/html; charset=utf-8"},
      {".htm", "text/html; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".mjs", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".json", "application/json"},
      {".png", "image/png"},
      {".svg", "image/svg+xml"},
      {".ico", "image/x-icon"},
      {".txt", "text/plain; charset=utf-8"},
      {".wasm", "application/wasm"},
      {".jpg", "image/jpeg"},
      {".map", "application/json"},
  };
  const char *dot = strrchr(path, '.');
  const char *slash = strrchr(path, '/');
  if (dot && (!slash || dot > slash))
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
      if (!strcasecmp(dot, map[i][0])) return map[i][1];
  return "application/octet-stream";
}

/* Paths the engine answers: rooms, and the operations endpoints. */
static bool net_engine_path(const char *p) {
  return strncmp(p, "/parties/", 9) == 0 || strcmp(p, "/healthz") == 0 ||
         strcmp(p, "/readyz") == 0 || strcmp(p, "/metrics") == 0 || strcmp(p, "/admin") == 0 ||
         strncmp(p, "/admin/", 7) == 0;
}

/* Paths outside /parties/: serve nr->fs_path (already decoded and
 * dot-segment-collapsed by lws) from static_dir for GET/HEAD, "/" and
 * folders as their index.html; anything that resolves (symlinks included)
 * outside static_dir, or no static_dir at all, is 404 text/plain. The file
 * is streamed NET_HTTP_CHUNK bytes per WRITEABLE. */
static void net_http_static(net_req *nr) {
  net_loop *L = nr->loop;
  const char *p = nr->fs_path;
  bool ok = L->static_root && (!strcmp(nr->method, "GET") || nr->head) && p[0] == '/';
  /* lws already collapsed "..", but do not rely on it. */
  for (const char *s = p; ok && (s = strstr(s, "..")); s += 2)
    if ((s == p || s[-1] == '/') && (s[2] == '/' || s[2] == '\0')) ok = false;
  char full[PATH_MAX], real[PATH_MAX];
  int fd = -1;
  struct stat st;
  if (ok) {
    int n = snprintf(full, sizeof full, "%s%s%s", L->static_root, p,
                     p[strlen(p) - 1] == '/' ? "index.html" : "");
    ok = n > 0 && (size_t)n < sizeof full;
  }
  if (ok && stat(full, &st) == 0 && S_ISDIR(st.st_mode)) {
    size_t l = strlen(full);
    ok = l + sizeof "/index.html" <= sizeof full;
    if (ok) memcpy(full + l, "/index.html", sizeof "/index.html");
  }
  if (ok && realpath(full, real)) {
    size_t rl = strlen(L->static_root);
    ok = !strncmp(real, L->static_root, rl) && real[rl] == '/';
  } else {
    ok = false;
  }
  if (ok) fd = open(real, O_RDONLY | O_CLOEXEC);
  if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
    close(fd);
    fd = -1;
  }
  if (fd < 0) {
    net_http_simple(nr, 404, "text/plain; charset=utf-8", "Not Found", false, false);
    return;
  }
  nr->answered = true;
  nr->status = 200;
  const char *mime = net_mime(real);
  net_req_add_header(nr, "content-type", mime, strlen(mime));
  nr->fd = fd;
  nr->outlen = (size_t)st.st_size;
  nr->out = lr_xmalloc(LWS_PRE + NET_HTTP_CHUNK);
  nr->ready = true;
  lws_callback_on_writable(nr->wsi);
}

/* The body of nr did not arrive within body_timeout_ms of its head (a
 * slow sender, whatever its pace): drop the connection. */
static void net_http_body_late(lws_sorted_usec_list_t *sul) {
  net_req *nr = lws_container_of(sul, net_req, body_sul);
  if (!nr->wsi || !nr->body_pending) return;
  lr_warn_limited("body timeout",
                  "http %s %s from %s: body not complete after %ld ms (%zu bytes in), closing",
                  nr->method, nr->path ? nr->path : nr->fs_path, nr->peer,
                  nr->loop->o.body_timeout_ms, nr->body.len);
  lws_set_timeout(nr->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

/* LWS_CALLBACK_HTTP: a request's headers are in. */
static int net_http_begin(net_loop *L, struct lws *wsi) {
  void *old = lws_get_opaque_user_data(wsi);
  if (old) { /* should not happen: the previous transaction was completed */
    if (*(int *)old == NET_KIND_HTTP)
      net_req_detach(old);
    else
      return -1;
  }
  bool head = false;
  const char *method = net_method(wsi, &head);
  char *uri = NULL;
  int ulen = 0;
  if (!method || lws_http_get_uri_and_method(wsi, &uri, &ulen) < 0 || !uri) return -1;

  net_req *nr = lr_xcalloc(1, sizeof *nr);
  nr->kind = NET_KIND_HTTP;
  nr->loop = L;
  nr->wsi = wsi;
  nr->fd = -1;
  nr->method = method;
  nr->head = head;
  lr_buf_init(&nr->body);
  nr->fs_path = lr_xstrndup(uri, (size_t)ulen);
  lws_set_opaque_user_data(wsi, nr);
  L->nreqs++;

  if (!net_engine_path(nr->fs_path)) {
    net_http_static(nr);
    return 0;
  }
  /* HEAD on a room or operations path is answered as GET without a body:
   * the engine runs the GET route; the writer sends its status, headers and
   * Content-Length and no body (nr->head). The reference answers 404. */
  if (head) nr->method = "GET";
  nr->path = net_path_encode(nr->fs_path);
  nr->query = net_query_collect(wsi);
  nr->hdrs = net_hdrs_collect(nr->loop, wsi, &nr->nhdrs);
  net_peer(wsi, nr->peer, sizeof nr->peer);

  if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0) {
    /* lws 4.1 does not decode chunked request bodies. */
    net_http_simple(nr, 411, "application/json", "{\"error\":\"Length Required\"}", true, true);
    return 0;
  }
  char *cl = net_hdr_dup(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH);
  unsigned long long want = 0;
  if (cl) {
    char *end;
    errno = 0;
    want = strtoull(cl, &end, 10);
    bool bad = errno || end == cl || *end || cl[0] == '-';
    free(cl);
    if (bad) {
      net_http_simple(nr, 400, "application/json", "{\"error\":\"Bad Content-Length\"}", true,
                      true);
      return 0;
    }
  }
  nr->body_pending = want > 0 && want <= NET_DISCARD_MAX;
  /* lws restarts its own timeout on every piece of body; ours is fixed. */
  if (nr->body_pending)
    lws_sul_schedule(L->ctx, 0, &nr->body_sul, net_http_body_late,
                     (lws_usec_t)L->o.body_timeout_ms * LWS_US_PER_MS);
  if (want > L->o.max_http_body) {
    lr_warn_limited("body too large", "http %s %s: body of %llu bytes over the %zu limit, 413",
                    method, nr->path, want, L->o.max_http_body);
    net_http_simple(nr, 413, "application/json", "{\"error\":\"Request body too large\"}", true,
                    true);
    return 0;
  }
  if (want > 0) {
    /* No reservation up front: memory follows the bytes that arrive. */
    return 0; /* HTTP_BODY ... HTTP_BODY_COMPLETION */
  }
  net_http_dispatch(nr);
  return 0;
}

/* HTTP_BODY: append a piece of the body (bounded by max_http_body). */
static int net_http_body(net_req *nr, const char *in, size_t len) {
  if (nr->answered || nr->dispatched) return 0; /* answered early: discard */
  if (nr->body.len + len > nr->loop->o.max_http_body) {
    net_http_simple(nr, 413, "application/json", "{\"error\":\"Request body too large\"}", true,
                    true);
    return 0;
  }
  lr_buf_put(&nr->body, in, len);
  return 0;
}

/* Finish the transaction after the last byte of a response. A refused
 * request whose body is still arriving is closed only once the body has
 * been read (closing with unread input would reset the connection and the
 * client could lose the response). */
static int net_http_complete(net_req *nr) {
  struct lws *wsi = nr->wsi;
  bool close_after = nr->close_after;
  if (close_after && nr->body_pending) {
    nr->resp_done = true;
    return 0; /* HTTP_BODY_COMPLETION closes */
  }
  net_req_detach(nr); /* answered: frees */
  if (close_after) return -1;
  if (lws_http_transaction_completed(wsi)) return -1;
  return 0;
}

/* HTTP_WRITEABLE: one lws_write per call: first the header block (status,
 * the response headers, Content-Length), then the body in NET_HTTP_CHUNK
 * pieces, then the transaction is completed (keep-alive) or closed. */
static int net_http_writeable(net_req *nr) {
  struct lws *wsi = nr->wsi;
  if (!nr->ready || nr->resp_done) return 0;
  lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT, NET_HTTP_WRITE_SECS);
  if (!nr->hdrs_sent) {
    size_t need = LWS_PRE + 512;
    for (size_t i = 0; i < nr->nrh; i++) {
      size_t nl = strlen(nr->rh[i]);
      need += nl + strlen(nr->rh[i] + nl + 1) + 8;
    }
    unsigned char *buf = lr_xmalloc(need);
    unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + need - 1;
    int bad = lws_add_http_header_status(wsi, (unsigned)nr->status, &p, end);
    for (size_t i = 0; !bad && i < nr->nrh; i++) {
      char name[256];
      size_t nl = strlen(nr->rh[i]);
      if (nl + 2 > sizeof name) continue;
      memcpy(name, nr->rh[i], nl);
      name[nl] = ':';
      name[nl + 1] = '\0';
      const char *v = nr->rh[i] + nl + 1;
      bad = lws_add_http_header_by_name(wsi, (unsigned char *)name, (const unsigned char *)v,
                                        (int)strlen(v), &p, end);
    }
    if (!bad) {
      if (nr->head) {
        char len[24];
        int n = snprintf(len, sizeof len, "%zu", nr->outlen);
        bad = lws_add_http_header_by_name(
            wsi, (unsigned char *)"content-length:", (unsigned char *)len, n, &p, end);
      } else {
        bad = lws_add_http_header_content_length(wsi, nr->outlen, &p, end);
      }
    }
    if (!bad && nr->close_after)
      bad = lws_add_http_header_by_name(
          wsi, (unsigned char *)"connection:", (unsigned char *)"close", 5, &p, end);
    if (!bad) bad = lws_finalize_write_http_header(wsi, start, &p, end);
    free(buf);
    if (bad) {
      lr_error("http: cannot write the response header block");
      return -1;
    }
    nr->hdrs_sent = true;
    if (nr->head || nr->outlen == 0) return net_http_complete(nr);
    lws_callback_on_writable(wsi);
    return 0;
  }
  size_t left = nr->outlen - nr->sent;
  size_t n = left < NET_HTTP_CHUNK ? left : NET_HTTP_CHUNK;
  unsigned char *p;
  if (nr->fd >= 0) {
    p = nr->out + LWS_PRE;
    ssize_t r = read(nr->fd, p, n);
    if (r <= 0) {
      lr_error("http: static file read failed: %s", r < 0 ? strerror(errno) : "short file");
      return -1;
    }
    n = (size_t)r;
  } else {
    /* The bytes before this chunk were already written: lws may use them as
     * its LWS_PRE headroom. */
    p = nr->out + LWS_PRE + nr->sent;
  }
  bool last = nr->sent + n == nr->outlen;
  if (lws_write(wsi, p, n, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) < 0) return -1;
  nr->sent += n;
  if (last) return net_http_complete(nr);
  lws_callback_on_writable(wsi);
  return 0;
}

/* ======================= the protocol callback ======================= */

/* Whatever we hang on wsi is finished: the socket is closing or destroyed. */
static void net_detach(struct lws *wsi) {
  void *o = lws_get_opaque_user_data(wsi);
  if (!o) return;
  if (*(int *)o == NET_KIND_WS)
    net_conn_finish(o);
  else if (*(int *)o == NET_KIND_HTTP)
    net_req_detach(o);
}

static int net_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                        size_t len) {
  net_loop *L = wsi ? net_loop_of(wsi) : NULL;
  void *o = wsi ? lws_get_opaque_user_data(wsi) : NULL;
  net_conn *nc = o && *(int *)o == NET_KIND_WS ? o : NULL;
  net_req *nr = o && *(int *)o == NET_KIND_HTTP ? o : NULL;

  switch (reason) {
  case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
    if (o) net_detach(wsi);
    return net_ws_upgrade(L, wsi, in ? (const char *)in : "");

  case LWS_CALLBACK_ESTABLISHED:
    if (!nc) return -1;
    nc->established = true;
    if (nc->dropping) lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, NET_DROP_SECS);
    if (nc->qlen || nc->closing || nc->dropping) lws_callback_on_writable(wsi);
    return 0;

  case LWS_CALLBACK_RECEIVE:
    if (!nc) return -1;
    return net_ws_receive(nc, in, len);

  case LWS_CALLBACK_SERVER_WRITEABLE:
    if (!nc) return 0;
    return net_ws_writeable(nc);

  case LWS_CALLBACK_HTTP:
    return net_http_begin(L, wsi);

  case LWS_CALLBACK_HTTP_BODY:
    if (!nr) return 0;
    return net_http_body(nr, in, len);

  case LWS_CALLBACK_HTTP_BODY_COMPLETION:
    if (!nr) return 0;
    nr->body_pending = false;
    lws_sul_cancel(&nr->body_sul);
    if (nr->resp_done) { /* refused early, body now drained: close */
      net_req_detach(nr);
      return -1;
    }
    if (!nr->answered) net_http_dispatch(nr);
    return 0;

  case LWS_CALLBACK_HTTP_WRITEABLE:
    if (!nr) return 0;
    return net_http_writeable(nr);

  case LWS_CALLBACK_CLOSED:
  case LWS_CALLBACK_CLOSED_HTTP:
    if (o) net_detach(wsi);
    return 0;

  case LWS_CALLBACK_WSI_DESTROY:
    if (o) net_detach(wsi);
    net_sock_release(wsi);
    return 0;

  case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
    return net_sock_filter(L, (int)(intptr_t)in);

  case LWS_CALLBACK_SERVER_NEW_CLIENT_INSTANTIATED:
    net_sock_open(L, wsi);
    return 0;

  case LWS_CALLBACK_OPENSSL_LOAD_EXTRA_SERVER_VERIFY_CERTS:
    if (L) L->tls_ctx = user; /* kept for net_tls_reload */
    return 0;

  case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
  case LWS_CALLBACK_HTTP_BIND_PROTOCOL:
  case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
  case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    return 0;

  default:
    return lws_callback_http_dummy(wsi, reason, user, in, len);
  }
}

static const struct lws_protocols net_protocols[] = {
    /* tx_packet_size: without it lws 4.1 caps every send() at rx_buffer_size
     * (4 KiB) and drains a big message one poll iteration per 4 KiB. */
    {"lunaroom", net_callback, 0, NET_RX_BUFFER, 0, NULL, NET_TX_PACKET},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* Idle WebSocket connections get a ping, and are dropped if nothing valid
 * (pong or data) arrives for NET_HANGUP_SECS. */
static const lws_retry_bo_t net_idle_policy = {
    .secs_since_valid_ping = NET_PING_SECS,
    .secs_since_valid_hangup = NET_HANGUP_SECS,
};

/* ======================= fd watches (lr_net_watch_fd) ======================= */

/* Another library's socket on this loop: lws polls a dup of the fd as a raw
 * file on a vhost of its own that listens on nothing (so no HTTP request or
 * WebSocket subprotocol can ever reach net_fd_callback). The dup is what lws
 * closes; the caller's fd is never touched. */
struct lr_net_watch {
  lr_net_watch *next, **pprev; /* net_watches; pprev NULL once unwatched */
  int fd;
  struct lws *wsi; /* NULL while no loop runs */
  bool want_write;
  int busy;  /* inside its callback */
  bool dead; /* unwatched during its callback: freed when it returns */
  lr_net_fd_cb cb;
  void *ud;
};
static lr_net_watch *net_watches;
static struct lws_vhost *net_fd_vh; /* set while a loop runs */

/* Run w's callback; 1 when w was unwatched meanwhile (and is now freed). */
static int net_fd_fire(lr_net_watch *w, int ev) {
  w->busy++;
  w->cb(w->ud, ev);
  w->busy--;
  if (!w->dead || w->busy) return 0;
  if (w->wsi) lws_set_opaque_user_data(w->wsi, NULL);
  free(w);
  return 1;
}

static int net_fd_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                           size_t len) {
  (void)user, (void)in, (void)len;
  lr_net_watch *w = wsi ? lws_get_opaque_user_data(wsi) : NULL;
  switch (reason) {
  case LWS_CALLBACK_RAW_RX_FILE:
    if (!w) return -1; /* unwatched: close the dup */
    return net_fd_fire(w, POLLIN) ? -1 : 0;
  case LWS_CALLBACK_RAW_WRITEABLE_FILE:
    if (!w) return -1;
    if (!w->want_write) return 0;
    w->want_write = false;
    return net_fd_fire(w, POLLOUT) ? -1 : 0;
  case LWS_CALLBACK_RAW_CLOSE_FILE:
    if (!w) return 0;
    lws_set_opaque_user_data(wsi, NULL);
    w->wsi = NULL;
    if (net_fd_vh) net_fd_fire(w, POLLHUP); /* not while the context goes away */
    return 0;
  default:
    return 0;
  }
}

static const struct lws_protocols net_fd_protocols[] = {
    {"lunaroom-fd", net_fd_callback, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void net_fd_adopt(lr_net_watch *w) {
  int d = fcntl(w->fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) {
    lr_error("fd watch: dup(%d): %s", w->fd, strerror(errno));
    return;
  }
  lws_adopt_desc_t info;
  memset(&info, 0, sizeof info);
  info.vh = net_fd_vh;
  info.type = LWS_ADOPT_RAW_FILE_DESC;
  info.fd.filefd = d;
  info.vh_prot_name = "lunaroom-fd";
  info.opaque = w;
  w->wsi = lws_adopt_descriptor_vhost_via_info(&info); /* closes d on failure */
  if (!w->wsi) {
    lr_error("fd watch: libwebsockets refused fd %d", w->fd);
    return;
  }
  if (w->want_write) lws_callback_on_writable(w->wsi);
}

lr_net_watch *lr_net_watch_fd(int fd, lr_net_fd_cb cb, void *ud) {
  if (fd < 0 || !cb) return NULL;
  lr_net_watch *w = lr_xcalloc(1, sizeof *w);
  w->fd = fd;
  w->cb = cb;
  w->ud = ud;
  w->next = net_watches;
  if (w->next) w->next->pprev = &w->next;
  w->pprev = &net_watches;
  net_watches = w;
  if (net_fd_vh) net_fd_adopt(w);
  return w;
}

void lr_net_watch_write(lr_net_watch *w, int on) {
  if (!w || w->dead) return;
  w->want_write = on != 0;
  if (on && w->wsi) lws_callback_on_writable(w->wsi);
}

void lr_net_unwatch_fd(lr_net_watch *w) {
  if (!w || w->dead) return;
  *w->pprev = w->next;
  if (w->next) w->next->pprev = w->pprev;
  w->pprev = NULL;
  w->dead = true;
  if (w->busy) return; /* net_fd_fire frees it, and closes the dup */
  if (w->wsi) {
    lws_set_opaque_user_data(w->wsi, NULL);
    lws_set_timeout(w->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
  }
  free(w);
}

int lr_net_poll_watched(int timeout_ms) {
  if (net_fd_vh) return 0;
  struct pollfd fds[64];
  lr_net_watch *ws[64];
  int n = 0;
  for (lr_net_watch *w = net_watches; w && n < 64; w = w->next) {
    fds[n] =
        (struct pollfd){.fd = w->fd, .events = (short)(POLLIN | (w->want_write ? POLLOUT : 0))};
    ws[n++] = w;
  }
  if (n == 0) {
    if (timeout_ms > 0) usleep((useconds_t)timeout_ms * 1000);
    return 0;
  }
  if (poll(fds, (nfds_t)n, timeout_ms) <= 0) return 0;
  int fired = 0;
  for (int i = 0; i < n; i++)
    ws[i]->busy++; /* a callback may unwatch the others */
  for (int i = 0; i < n; i++) {
    lr_net_watch *w = ws[i];
    short re = fds[i].revents;
    if (w->dead || !re) continue;
    int ev = re & (POLLERR | POLLHUP | POLLNVAL) ? POLLHUP : (re & POLLIN ? POLLIN : 0);
    if (ev) {
      w->cb(w->ud, ev);
      fired++;
    }
    if (!w->dead && (re & POLLOUT) && w->want_write) {
      w->want_write = false;
      w->cb(w->ud, POLLOUT);
      fired++;
    }
  }
  for (int i = 0; i < n; i++)
    if (--ws[i]->busy == 0 && ws[i]->dead) free(ws[i]);
  return fired;
}

/* The same watches as the engine's lr_loop_fds (server.h): a store's
 * database socket reaches this loop through the engine, never through
 * net.h (lr_net_run hands them to the server it runs). */
static void *net_fds_watch(int fd, void (*cb)(void *ud, int revents), void *ud) {
  return lr_net_watch_fd(fd, cb, ud);
}
static void net_fds_write(void *w, int on) {
  lr_net_watch_write(w, on);
}
static void net_fds_unwatch(void *w) {
  lr_net_unwatch_fd(w);
}
static const lr_loop_fds net_loop_fds = {net_fds_watch, net_fds_write, net_fds_unwatch};

/* The loop starts: a vhost for the watches, and every watch made before. */
static void net_fd_start(struct lws_context *ctx) {
  struct lws_context_creation_info vi;
  memset(&vi, 0, sizeof vi);
  vi.port = CONTEXT_PORT_NO_LISTEN;
  vi.protocols = net_fd_protocols;
  vi.vhost_name = "lunaroom-fd";
  net_fd_vh = lws_create_vhost(ctx, &vi);
  if (!net_fd_vh) {
    lr_error("fd watch: cannot create its vhost");
    return;
  }
  for (lr_net_watch *w = net_watches; w; w = w->next)
    if (!w->wsi) net_fd_adopt(w);
}

/* The context is about to be destroyed (it closes the dups): the watches
 * stay, served by lr_net_poll_watched from now on. */
static void net_fd_stop(void) {
  net_fd_vh = NULL;
  for (lr_net_watch *w = net_watches; w; w = w->next) {
    if (w->wsi) lws_set_opaque_user_data(w->wsi, NULL);
    w->wsi = NULL;
  }
}

/* ======================= the loop ======================= */

static void net_engine_sul_cb(lws_sorted_usec_list_t *sul) {
  /* lws 4.1 runs due timers before it waits, then waits for its next one:
   * a wake-up that was already due would be spent before the wait, and the
   * loop would sleep until a socket event. Make the coming wait return. */
  net_loop *L = lws_container_of(sul, net_loop, engine_sul);
  L->engine_due = 0;
  lws_cancel_service(L->ctx);
}

/* Schedule the engine wake-up, at most max_ms away (-1 = no cap). */
static void net_arm(net_loop *L, int64_t max_ms) {
  int64_t t = lr_server_next_timeout(L->srv);
  if (max_ms >= 0 && (t < 0 || t > max_ms)) t = max_ms;
  if (t < 0) {
    lws_sul_cancel(&L->engine_sul);
    L->engine_due = 0;
    return;
  }
  /* Re-arming walks lws's sorted list of every timer (one or two per
   * connection): skip it when the wake-up is already set for that ms. */
  int64_t due = net_now_ms() + t;
  if (due == L->engine_due) return;
  lws_sul_schedule(L->ctx, 0, &L->engine_sul, net_engine_sul_cb, (lws_usec_t)t * LWS_US_PER_MS);
  L->engine_due = due;
}

static void net_on_signal(int sig) {
  if (sig == SIGHUP)
    net_hup_flag = 1;
  else
    net_stop_flag = 1;
  if (net_ctx) lws_cancel_service(net_ctx);
}

/* SIGHUP: re-read the certificate and key into the listening vhost's
 * SSL_CTX (new handshakes use them; open connections keep theirs). The pair
 * is first loaded into a scratch context, so a missing file or a key that
 * does not match the certificate is logged and changes nothing. */
static void net_tls_reload(net_loop *L) {
  if (!L->o.tls_cert) return;
  if (!L->tls_ctx) {
    lr_warn("tls: no server context to reload the certificate into");
    return;
  }
  SSL_CTX *probe = SSL_CTX_new(TLS_server_method());
  int ok = probe && SSL_CTX_use_certificate_chain_file(probe, L->o.tls_cert) == 1 &&
           SSL_CTX_use_PrivateKey_file(probe, L->o.tls_key, SSL_FILETYPE_PEM) == 1 &&
           SSL_CTX_check_private_key(probe) == 1;
  if (probe) SSL_CTX_free(probe);
  if (!ok || SSL_CTX_use_certificate_chain_file(L->tls_ctx, L->o.tls_cert) != 1 ||
      SSL_CTX_use_PrivateKey_file(L->tls_ctx, L->o.tls_key, SSL_FILETYPE_PEM) != 1) {
    unsigned long e = ERR_get_error();
    char why[256];
    ERR_error_string_n(e, why, sizeof why);
    ERR_clear_error();
    lr_error("tls: cannot reload %s / %s (%s); keeping the current certificate", L->o.tls_cert,
             L->o.tls_key, e ? why : "unknown error");
    return;
  }
  lr_info("tls: certificate reloaded from %s", L->o.tls_cert);
}

void lr_net_defaults(lr_net_opts *o) {
  memset(o, 0, sizeof *o);
  o->host = NULL;
  o->port = 1999;
  o->max_frame = 64 * 1024;
  o->max_queue_bytes = 4 * 1024 * 1024;
  o->max_http_body = 1024 * 1024;
  o->static_dir = NULL;
  o->max_conns = 20000;
  o->max_conns_per_ip = 1024;
  o->max_http_per_ip = 256;
  o->body_timeout_ms = 10000;
  o->msgs_per_ip = 2000;
  o->trusted_proxies = NULL;
}

/* Parse "a.b.c.d, x/24, ::1, 2001:db8::/32" into L->trusted. Returns false
 * (logged) on an entry that is not an address or CIDR. */
static bool net_parse_trusted(net_loop *L, const char *list) {
  if (!list || !*list) return true;
  const char *p = list;
  while (*p) {
    size_t n = strcspn(p, ", ");
    if (n) {
      char item[80], *slash;
      if (n >= sizeof item) {
        lr_error("--trusted-proxy: entry too long: %.*s", (int)n, p);
        return false;
      }
      memcpy(item, p, n);
      item[n] = '\0';
      struct net_cidr c = {0};
      c.fam = strchr(item, ':') ? AF_INET6 : AF_INET;
      c.bits = c.fam == AF_INET ? 32 : 128;
      if ((slash = strchr(item, '/'))) {
        *slash = '\0';
        char *end;
        long b = strtol(slash + 1, &end, 10);
        if (*end || end == slash + 1 || b < 0 || b > c.bits) {
          lr_error("--trusted-proxy: bad prefix length in %.*s", (int)n, p);
          return false;
        }
        c.bits = (int)b;
      }
      if (inet_pton(c.fam, item, c.a) != 1) {
        lr_error("--trusted-proxy: not a numeric address: %.*s", (int)n, p);
        return false;
      }
      L->trusted = lr_xrealloc(L->trusted, (L->ntrusted + 1) * sizeof *L->trusted);
      L->trusted[L->ntrusted++] = c;
    }
    p += n;
    while (*p == ',' || *p == ' ')
      p++;
  }
  return true;
}

static net_loop *net_active; /* the running loop, for lr_net_addr_* */

bool lr_net_addr_acquire(const char *addr) {
  net_loop *L = net_active;
  if (!L || !addr) return true;
  struct net_addr *a = net_addr_get(L, addr, true);
  if (L->o.max_conns_per_ip >= 0 && a->ws >= (uint32_t)L->o.max_conns_per_ip) {
    lr_warn_limited("address limit",
                    "relayed client from %s refused: %u connections from this address (max %ld)",
                    addr, a->ws, L->o.max_conns_per_ip);
    net_addr_put(L, a);
    return false;
  }
  a->ws++;
  return true;
}

void lr_net_addr_release(const char *addr) {
  net_loop *L = net_active;
  if (!L || !addr) return;
  struct net_addr *a = net_addr_get(L, addr, false);
  if (!a) return;
  if (a->ws) a->ws--;
  net_addr_put(L, a);
}

/* lr_net_wake may run on another thread: the
 * context it wakes is read and cleared under this lock. */
static pthread_mutex_t net_wake_mu = PTHREAD_MUTEX_INITIALIZER;

void lr_net_wake(void) {
  pthread_mutex_lock(&net_wake_mu);
  if (net_ctx) lws_cancel_service(net_ctx);
  pthread_mutex_unlock(&net_wake_mu);
}

struct lws_context *lr_net_context(void) {
  return net_ctx; /* loop thread only: set and cleared by lr_net_run on it */
}

void lr_net_stop(void) {
  net_stop_flag = 1;
  if (net_ctx) lws_cancel_service(net_ctx);
}

int lr_net_run(lr_server *s, const lr_net_opts *o) {
  net_loop L;
  memset(&L, 0, sizeof L);
  L.srv = s;
  lr_server_set_loop_fds(s, &net_loop_fds);
  lr_net_defaults(&L.o);
  if (o) {
    L.o.host = o->host;
    L.o.port = o->port;
    if (o->max_frame) L.o.max_frame = o->max_frame;
    if (o->max_queue_bytes) L.o.max_queue_bytes = o->max_queue_bytes;
    if (o->max_http_body) L.o.max_http_body = o->max_http_body;
    L.o.static_dir = o->static_dir;
    if (o->max_conns) L.o.max_conns = o->max_conns;
    if (o->max_conns_per_ip) L.o.max_conns_per_ip = o->max_conns_per_ip;
    L.o.tls_cert = o->tls_cert;
    L.o.tls_key = o->tls_key;
    L.o.on_hup = o->on_hup;
    L.o.on_hup_arg = o->on_hup_arg;
    if (o->max_http_per_ip) L.o.max_http_per_ip = o->max_http_per_ip;
    if (o->body_timeout_ms > 0) L.o.body_timeout_ms = o->body_timeout_ms;
    if (o->msgs_per_ip) L.o.msgs_per_ip = o->msgs_per_ip;
    L.o.trusted_proxies = o->trusted_proxies;
  }
  if (!L.o.tls_cert != !L.o.tls_key) {
    lr_error("tls: --tls-cert and --tls-key go together");
    return 1;
  }
  if (!net_parse_trusted(&L, L.o.trusted_proxies)) {
    free(L.trusted);
    return 1;
  }
  if (L.o.port < 0 || L.o.port > 65535) {
    lr_error("invalid port %d", L.o.port);
    return 1;
  }
  if (L.o.static_dir) {
    L.static_root = realpath(L.o.static_dir, NULL);
    if (!L.static_root) {
      lr_error("static folder %s: %s", L.o.static_dir, strerror(errno));
      return 1;
    }
  }

  lws_set_log_level(LLL_ERR | LLL_WARN, net_lws_log);
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.port = L.o.port;
  info.iface = L.o.host;
  info.protocols = net_protocols;
  info.vhost_name = "lunaroom";
  info.user = &L;
  info.options = 0; /* no UTF-8 validation: text and binary frames reach the engine as bytes */
  info.timeout_secs = NET_TIMEOUT_SECS;
  info.timeout_secs_ah_idle = NET_TIMEOUT_SECS;
  info.keepalive_timeout = 10; /* longer than the 5 s idle of Node's keep-alive agent */
  info.max_http_header_data = NET_HEADER_DATA;
  info.pt_serv_buf_size = NET_SERV_BUF;
  info.retry_and_idle_policy = &net_idle_policy;
  info.gid = -1;
  info.uid = -1;
  if (L.o.tls_cert) {
    /* https:// and wss:// only: without ALLOW_NON_SSL_ON_SSL_PORT a plain
     * request fails its handshake and is closed. */
    info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.ssl_cert_filepath = L.o.tls_cert;
    info.ssl_private_key_filepath = L.o.tls_key;
    info.alpn = "http/1.1";
  }

  net_stop_flag = 0;
  net_hup_flag = 0;
  L.ctx = lws_create_context(&info);
  struct lws_vhost *vh = L.ctx ? lws_get_vhost_by_name(L.ctx, "lunaroom") : NULL;
  int port = vh ? lws_get_vhost_listen_port(vh) : -1;
  if (!L.ctx || !vh || port <= 0) {
    lr_error("cannot listen on %s:%d", L.o.host ? L.o.host : "0.0.0.0", L.o.port);
    if (L.ctx) lws_context_destroy(L.ctx);
    free(L.static_root);
    net_addr_free_all(&L);
    free(L.trusted);
    return 1;
  }
  pthread_mutex_lock(&net_wake_mu);
  net_ctx = L.ctx;
  net_active = &L;
  pthread_mutex_unlock(&net_wake_mu);
  net_fd_start(L.ctx);

  struct sigaction sa, old_int, old_term, old_pipe, old_hup;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = net_on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  sigaction(SIGHUP, &sa, &old_hup);
  sa.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &sa, &old_pipe);

  lr_info("listening on %s://%s:%d", L.o.tls_cert ? "https" : "http",
          L.o.host ? L.o.host : "0.0.0.0", port);

  int rc = 0;
  while (!net_stop_flag) {
    int64_t trim_in = L.trim_at ? L.trim_at - net_now_ms() : -1;
    net_arm(&L, trim_in < 0 && L.trim_at ? 0 : trim_in);
    lr_server_batch_joins(s, true);
    L.pass++;
    int n = lws_service(L.ctx, 0);
    lr_server_batch_joins(s, false);
    if (n < 0) {
      lr_error("event loop failed");
      rc = 1;
      break;
    }
    if (net_hup_flag) {
      net_hup_flag = 0;
      lr_info("SIGHUP: reloading");
      net_tls_reload(&L);
      if (L.o.on_hup) L.o.on_hup(L.o.on_hup_arg);
    }
    lr_server_tick(s);
    net_trim(&L);
  }

  /* Shutdown: the engine closes every socket with 1001; give the close
   * frames and pending answers a bounded time to go out. */
  lr_log_flush_suppressed(); /* summaries of refusal lines still counted */
  lr_info("shutting down");
  L.stopping = true;
  lr_server_shutdown(s);
  int64_t deadline = net_now_ms() + NET_DRAIN_MS;
  while (rc == 0 && (L.nconns || L.nreqs || lr_server_waiting(s) > 0)) {
    int64_t left = deadline - net_now_ms();
    if (left <= 0) break;
    net_arm(&L, left);
    if (lws_service(L.ctx, 0) < 0) break;
    lr_server_tick(s);
  }
  if (L.nconns || L.nreqs)
    lr_warn("shutdown: %zu connections and %zu requests still open after %d ms, dropping them",
            L.nconns, L.nreqs, NET_DRAIN_MS);
  if (lr_server_waiting(s) > 0)
    lr_warn("shutdown: %ld room handler(s) still waiting after %d ms, cancelled",
            lr_server_waiting(s), NET_DRAIN_MS);
  lws_sul_cancel(&L.engine_sul);
  lws_sul_cancel(&L.budget_sul);
  pthread_mutex_lock(&net_wake_mu);
  net_ctx = NULL;
  pthread_mutex_unlock(&net_wake_mu);
  L.destroying = true;
  net_fd_stop();
  lws_context_destroy(L.ctx); /* remaining sockets: CLOSED -> lr_conn_closed */
  net_active = NULL;
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  sigaction(SIGHUP, &old_hup, NULL);
  sigaction(SIGPIPE, &old_pipe, NULL);
  free(L.static_root);
  net_addr_free_all(&L);
  free(L.trusted);
  return rc;
}

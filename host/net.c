/*
 * net.c - the real-socket transport: one libwebsockets (4.1) context with one
 * vhost and one protocol that serves HTTP/1.1 and WebSocket on one port and
 * drives the engine through server.h. This file is the loop and the protocol
 * callback; the rest of the transport is split by concern (net_int.h lists
 * the files).
 *
 * Owns: the lws context, its options and the protocol callback that hands
 * each event to net_ws.c / net_http.c / net_addr.c; the engine timer;
 * SIGINT/SIGTERM and the bounded shutdown drain; SIGHUP (TLS certificate
 * reload, then the caller's on_hup); the TLS options of the vhost (https/wss
 * only when a certificate is given); giving freed heap pages back to the OS
 * after connection churn; the lws retry policies (none on the listening
 * vhost: net_idle.c watches silent sockets); lr_net_run, lr_net_stop,
 * lr_net_defaults.
 * Must not: parse JSON, call Lua, know rooms beyond server.h, call back into
 * the engine from inside an lr_transport_vt function (they only queue), or
 * write to a socket outside a WRITEABLE callback (the exceptions, refused
 * upgrades and the 429 at accept, are in net_ws.c and net_addr.c).
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
 */
#include "net_int.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "log.h"

static volatile sig_atomic_t net_stop_flag;
static volatile sig_atomic_t net_hup_flag;
static struct lws_context *volatile net_ctx; /* for lr_net_stop and the signal handler */

/* ---- small helpers ---- */

/* Monotonic milliseconds. */
int64_t net_now_ms(void) {
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
void net_churn(net_loop *L) {
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
net_loop *net_loop_of(struct lws *wsi) {
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
    return nc ? net_ws_established(nc) : -1;

  case LWS_CALLBACK_RECEIVE:
    if (!nc) return -1;
    return net_ws_receive(nc, in, len);

  case LWS_CALLBACK_RECEIVE_PONG:
    if (nc) net_idle_touch(nc);
    return 0;

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

/* Outgoing WebSockets (fetch.c's client vhost in this context: shard
 * uplinks, cluster links, room fetches) keep lws's validity timer: a ping
 * after NET_PING_SECS without a pong, hung up after NET_HANGUP_SECS. */
static const lws_retry_bo_t net_client_policy = {
    .secs_since_valid_ping = NET_PING_SECS,
    .secs_since_valid_hangup = NET_HANGUP_SECS,
};

/* The listening vhost's sockets have none (no hang-up time: lws arms no
 * timer); net_idle.c pings and hangs up silent ones instead. */
static const lws_retry_bo_t net_server_policy = {0};

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
  /* Re-arming walks lws's sorted list of every timer (a socket has one
   * while its handshake or close is under way): skip it when the wake-up is
   * already set for that ms. */
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
  o->ws_ping_ms = NET_PING_SECS * 1000L;
  o->ws_hangup_ms = NET_HANGUP_SECS * 1000L;
  o->trusted_proxies = NULL;
}

static size_t (*net_drain_busy)(void); /* lr_net_set_drain */

void lr_net_set_drain(size_t (*busy)(void)) {
  net_drain_busy = busy;
}

struct lws_context *lr_net_context(void) {
  return net_ctx; /* loop thread only: set and cleared by lr_net_run on it */
}

void lr_net_stop(void) {
  net_stop_flag = 1;
  if (net_ctx) lws_cancel_service(net_ctx);
}

/* L->o: the defaults, with what o sets on top. */
static void net_opts(net_loop *L, const lr_net_opts *o) {
  lr_net_defaults(&L->o);
  if (!o) return;
  L->o.host = o->host;
  L->o.port = o->port;
  if (o->max_frame) L->o.max_frame = o->max_frame;
  if (o->max_queue_bytes) L->o.max_queue_bytes = o->max_queue_bytes;
  if (o->max_http_body) L->o.max_http_body = o->max_http_body;
  L->o.static_dir = o->static_dir;
  if (o->max_conns) L->o.max_conns = o->max_conns;
  if (o->max_conns_per_ip) L->o.max_conns_per_ip = o->max_conns_per_ip;
  L->o.tls_cert = o->tls_cert;
  L->o.tls_key = o->tls_key;
  L->o.on_hup = o->on_hup;
  L->o.on_hup_arg = o->on_hup_arg;
  if (o->max_http_per_ip) L->o.max_http_per_ip = o->max_http_per_ip;
  if (o->body_timeout_ms > 0) L->o.body_timeout_ms = o->body_timeout_ms;
  if (o->msgs_per_ip) L->o.msgs_per_ip = o->msgs_per_ip;
  if (o->ws_ping_ms) L->o.ws_ping_ms = o->ws_ping_ms;
  if (o->ws_hangup_ms) L->o.ws_hangup_ms = o->ws_hangup_ms;
  L->o.trusted_proxies = o->trusted_proxies;
}

/* Check the options and resolve what they name (trusted proxies, the
 * static folder). 0, or -1 (logged; what was made is freed by net_free). */
static int net_prepare(net_loop *L) {
  if (!L->o.tls_cert != !L->o.tls_key) {
    lr_error("tls: --tls-cert and --tls-key go together");
    return -1;
  }
  if (net_parse_trusted(L, L->o.trusted_proxies) != 0) return -1;
  if (L->o.port < 0 || L->o.port > 65535) {
    lr_error("invalid port %d", L->o.port);
    return -1;
  }
  if (L->o.static_dir) {
    L->static_root = realpath(L->o.static_dir, NULL);
    if (!L->static_root) {
      lr_error("static folder %s: %s", L->o.static_dir, strerror(errno));
      return -1;
    }
  }
  return 0;
}

/* Create the context and its listening vhost. Returns the port listened
 * on, or -1 (logged; no context left). */
static int net_listen(net_loop *L) {
  lws_set_log_level(LLL_ERR | LLL_WARN, net_lws_log);
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.port = L->o.port;
  info.iface = L->o.host;
  info.protocols = net_protocols;
  info.vhost_name = "lunaroom";
  info.user = L;
  /* No UTF-8 validation: text and binary frames reach the engine as bytes.
   * The vhost is made below, with its own retry policy. */
  info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
  info.timeout_secs = NET_TIMEOUT_SECS;
  info.timeout_secs_ah_idle = NET_TIMEOUT_SECS;
  info.keepalive_timeout = 10; /* longer than the 5 s idle of Node's keep-alive agent */
  info.max_http_header_data = NET_HEADER_DATA;
  info.pt_serv_buf_size = NET_SERV_BUF;
  info.retry_and_idle_policy = &net_client_policy; /* the context's default: client sockets */
  info.gid = -1;
  info.uid = -1;
  if (L->o.tls_cert) {
    /* https:// and wss:// only: without ALLOW_NON_SSL_ON_SSL_PORT a plain
     * request fails its handshake and is closed. */
    info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.ssl_cert_filepath = L->o.tls_cert;
    info.ssl_private_key_filepath = L->o.tls_key;
    info.alpn = "http/1.1";
  }
  L->ctx = lws_create_context(&info);
  info.retry_and_idle_policy = &net_server_policy;
  struct lws_vhost *vh = L->ctx ? lws_create_vhost(L->ctx, &info) : NULL;
  int port = vh ? lws_get_vhost_listen_port(vh) : -1;
  if (!L->ctx || !vh || port <= 0) {
    lr_error("cannot listen on %s:%d", L->o.host ? L->o.host : "0.0.0.0", L->o.port);
    if (L->ctx) lws_context_destroy(L->ctx);
    L->ctx = NULL;
    return -1;
  }
  return port;
}

/* What net_prepare and the loop made (not the context). */
static void net_free(net_loop *L) {
  free(L->static_root);
  free(L->answer);
  net_addr_free_all(L);
  free(L->trusted);
}

/* The loop proper, until a stop signal. Returns 0, or 1 if it failed. */
static int net_serve(net_loop *L) {
  lr_server *s = L->srv;
  while (!net_stop_flag) {
    int64_t trim_in = L->trim_at ? L->trim_at - net_now_ms() : -1;
    net_arm(L, trim_in < 0 && L->trim_at ? 0 : trim_in);
    lr_server_batch_joins(s, true);
    L->pass++;
    int n = lws_service(L->ctx, 0);
    lr_server_batch_joins(s, false);
    if (n < 0) {
      lr_error("event loop failed");
      return -1;
    }
    if (net_hup_flag) {
      net_hup_flag = 0;
      lr_info("SIGHUP: reloading");
      net_tls_reload(L);
      if (L->o.on_hup) L->o.on_hup(L->o.on_hup_arg);
    }
    lr_server_tick(s);
    net_ws_answer_flush(L);
    net_trim(L);
  }
  return 0;
}

/* Shutdown: the engine closes every socket with 1001; give the close
 * frames and pending answers a bounded time to go out. */
static void net_drain(net_loop *L, int rc) {
  lr_server *s = L->srv;
  lr_log_flush_suppressed(); /* summaries of refusal lines still counted */
  lr_info("shutting down");
  L->stopping = true;
  lr_server_shutdown(s);
  int64_t deadline = net_now_ms() + NET_DRAIN_MS;
  while (rc == 0 && (L->nconns || L->nreqs || lr_server_waiting(s) > 0 ||
                     (net_drain_busy && net_drain_busy() > 0))) {
    int64_t left = deadline - net_now_ms();
    if (left <= 0) break;
    net_arm(L, left);
    if (lws_service(L->ctx, 0) < 0) break;
    lr_server_tick(s);
    net_ws_answer_flush(L);
  }
  if (L->nconns || L->nreqs)
    lr_warn("shutdown: %zu connections and %zu requests still open after %d ms, dropping them",
            L->nconns, L->nreqs, NET_DRAIN_MS);
  if (lr_server_waiting(s) > 0)
    lr_warn("shutdown: %ld room handler(s) still waiting after %d ms, cancelled",
            lr_server_waiting(s), NET_DRAIN_MS);
}

int lr_net_run(lr_server *s, const lr_net_opts *o) {
  net_loop L;
  memset(&L, 0, sizeof L);
  L.srv = s;
  lr_server_set_loop_fds(s, &net_loop_fds);
  net_opts(&L, o);
  net_idle_init(&L);
  int port = net_prepare(&L) == 0 ? net_listen(&L) : -1;
  if (port < 0) {
    net_free(&L);
    return -1;
  }
  net_stop_flag = 0;
  net_hup_flag = 0;
  net_ctx = L.ctx;
  net_active = &L;
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
  int rc = net_serve(&L);
  net_drain(&L, rc);

  lws_sul_cancel(&L.engine_sul);
  lws_sul_cancel(&L.budget_sul);
  net_idle_stop(&L);
  net_ctx = NULL;
  L.destroying = true;
  net_fd_stop();
  lws_context_destroy(L.ctx); /* remaining sockets: CLOSED -> lr_conn_closed */
  net_active = NULL;
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  sigaction(SIGHUP, &old_hup, NULL);
  sigaction(SIGPIPE, &old_pipe, NULL);
  net_free(&L);
  return rc;
}

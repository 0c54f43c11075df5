/*
 * loadgen.c - the WebSocket load generator of the benchmarks.
 *
 * One process, one libwebsockets (4.1) client context, one event loop, many
 * connections; bounded in connection count (--clients <= LG_MAX_CLIENTS) and
 * in time (--max-time; every wait has a deadline); loopback targets only (the
 * URL's host must resolve to 127.0.0.0/8 or ::1, anything else is refused).
 * It speaks the Lunaroom / @signe/room wire protocol: it connects to
 * ws://HOST:PORT/parties/main/<room>?id=<session>, takes the first packet
 * that carries "pId" as the client's join (its publicId), and sends
 * {"action":"move","value":{"x":X,"y":Y}}.
 *
 * Matching a move with its patch. Every sender numbers its moves (seq
 * 1, 2, ...) and sends x = (seq mod 1e6) / 1000, so x stays inside the room's
 * [0, 1000] and is exact on the wire with 3 decimals (y stays 0, its
 * initial value, so a move changes x only). A receiver looks for
 * "<publicId of the sender>":{ ... "x":<number> in each packet and turns x
 * back into seq; all of that sender's moves up to seq it has not seen yet
 * count as delivered at that instant (a server that coalesces two moves of
 * one sender into one patch delivers the older one late, not never). The
 * send time is taken just before lws_write; latency = receive - send on the
 * same monotonic clock.
 *
 * Phases (--scenario, a comma list run in this order on ONE set of
 * connections, so a slow-joining server pays the join once):
 *   ramp    always: N clients connect (at most --inflight joins pending at
 *           once); the time until every client got its first packet,
 *           joins/s, p50/p99 of connect -> first packet. Then the join
 *           traffic is waited out (no packet for 300 ms).
 *   idle    server RSS per idle connection: RSS with client 0 alone in the
 *           room, then with all N, settled --settle s (needs --pid).
 *   move    every client sends moves; processed actions/s (own patches seen
 *           per second), delivered packets/s (all clients), p50/p99 latency
 *           send -> own patch, server CPU s per 100k actions (with --pid).
 *           Rates: --sweep FROM:FACTOR:MAX or --rates a,b (total moves/s),
 *           else one step at --rate moves/s per client. A sweep stops at
 *           saturation: p99 > 100 ms, throughput < 90% of the offered rate, a
 *           backlog that does not drain, or a plateau. A step that kept up
 *           but missed on latency only is run once more (shared machines
 *           have hiccups); the second result counts.
 *   fanout  client 0 writes, everyone (itself included) reads: delivered
 *           packets/s and p50/p99 from the write to each reader's receive.
 *           Rates: --fanout-sweep FROM:FACTOR:MAX, else --writer-rate.
 *   rooms   (alone) server RSS per room: N clients, each in its own room
 *           <room>-<i> (needs --pid; the server must accept that path).
 *   cpu     an alias of one move step at --rate (the CPU figure).
 *
 * Output: a human table on stdout, and one JSON object (--json FILE, or "-"
 * for stdout). Exit status: 0 = every client joined and every move/fanout
 * step got patches back; 1 = not (the smoke test uses this); 2 = usage error
 * or refused target.
 */
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <libwebsockets.h>

#define LG_MAX_CLIENTS 20000
#define LG_RING 1024         /* in-flight moves remembered per mover */
#define LG_WRITER_RING 65536 /* ... and for the fan-out writer */
#define LG_SEQ_MOD 1000000   /* x = (seq % LG_SEQ_MOD) / 1000 */
#define LG_MAX_STEPS 32
#define LG_RX_FREE 65536 /* a client's assembly buffer above this is freed after use */
#define LG_QUIET_MS 300  /* join traffic is over after this long without a packet */

/* ---------------------------------------------------------------- time */

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static double self_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

/* ---------------------------------------------------------------- histogram */

/* Log-linear histogram of microseconds: exact below 128, then 64 buckets per
 * power of two (under 1.6% error). */
#define H_SUB 64
#define H_BUCKETS (128 + 40 * H_SUB)
typedef struct {
  uint64_t n, max, sum;
  uint64_t b[H_BUCKETS];
} hist;

static int h_index(uint64_t v) {
  if (v < 128) return (int)v;
  int e = 63 - __builtin_clzll(v); /* >= 7 */
  int shift = e - 6;
  int i = 128 + (e - 7) * H_SUB + (int)((v >> shift) - H_SUB);
  return i < H_BUCKETS ? i : H_BUCKETS - 1;
}
static uint64_t h_value(int i) { /* middle of bucket i */
  if (i < 128) return (uint64_t)i;
  int e = (i - 128) / H_SUB + 7, m = (i - 128) % H_SUB + H_SUB, shift = e - 6;
  return ((uint64_t)m << shift) + ((1ull << shift) >> 1);
}
static void h_add(hist *h, uint64_t v) {
  h->b[h_index(v)]++;
  h->n++;
  h->sum += v;
  if (v > h->max) h->max = v;
}
static double h_pct_ms(const hist *h, double p) {
  if (!h->n) return -1;
  uint64_t want = (uint64_t)ceil(p * (double)h->n);
  if (want < 1) want = 1;
  uint64_t acc = 0;
  for (int i = 0; i < H_BUCKETS; i++) {
    acc += h->b[i];
    if (acc >= want) {
      uint64_t v = h_value(i);
      if (v > h->max) v = h->max;
      return (double)v / 1000.0;
    }
  }
  return (double)h->max / 1000.0;
}

/* ---------------------------------------------------------------- state */

enum { C_NONE, C_CONNECTING, C_OPEN, C_READY, C_CLOSED, C_FAILED };

typedef struct {
  uint32_t seq;
  uint64_t t;
} sent_rec;

typedef struct client {
  struct lws *wsi;
  int idx;
  int st;
  char pid[64];
  size_t pidlen;
  char *rx;
  size_t rxlen, rxcap;
  uint64_t t_start, t_ready;
  uint32_t want;  /* moves due and not yet written */
  uint32_t seq;   /* last seq written */
  uint32_t acked; /* highest seq of the tracked sender seen (own in move, the writer's in fanout) */
  sent_rec *ring; /* senders only */
  uint32_t ringsz;
} client;

enum { P_RAMP = 1, P_IDLE = 2, P_MOVE = 4, P_FANOUT = 8, P_ROOMS = 16, P_CPU = 32 };
enum { M_NONE, M_MOVE, M_FANOUT }; /* what the clients are doing now */

typedef struct {
  double offered;   /* moves/s scheduled */
  double sent;      /* moves/s written */
  double actions;   /* moves/s whose patch came back (to the mover; to the writer in fanout) */
  double delivered; /* packets/s received by all clients */
  double mbps;      /* MB/s received */
  double p50, p90, p99, max_ms, mean_ms;
  uint64_t samples;
  double cpu_s, cpu_per_100k, srv_cpu_pct, lg_cpu_pct;
  uint64_t backlog; /* moves (x readers in fanout) not seen back at the end of the drain */
  bool retried;     /* the first attempt missed only on latency; this is the second */
  bool ok;
  const char *why;
} step_t;

typedef struct {
  const char *name;
  double rates[LG_MAX_STEPS];
  int nrates;
  step_t steps[LG_MAX_STEPS];
  int nsteps, sat;
  const char *sat_why;
} phase_t;

static struct {
  /* options */
  char host[256], addr[INET6_ADDRSTRLEN];
  int port;
  char base[256]; /* "/parties/main" */
  char room[128];
  char label[300];
  int phases;
  int n;
  double rate, writer_rate;
  double warm_s, dur_s, drain_s, settle_s, timeout_s, max_time_s;
  double min_samples; /* per step: the window grows until it holds this many latencies */
  int inflight_cap;
  long pid;
  const char *json;
  bool quiet;

  /* runtime */
  struct lws_context *ctx;
  lws_sorted_usec_list_t wake;
  client *c;
  int started, inflight, ready, failed, closed_after_ready;
  char first_error[256];
  uint64_t t_begin, deadline_all, last_rx;
  bool interrupted;
  /* sending */
  int mode;
  bool sending;
  double total_rate;
  uint64_t send_t0, issued;
  uint32_t rr;
  client *writer;
  /* measuring */
  bool measuring;
  uint64_t m_t0;
  uint64_t m_msgs, m_bytes, m_echo, m_sent;
  hist lat, ready_h;
} G;

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("loadgen: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

static void note(const char *fmt, ...) {
  if (G.quiet) return;
  va_list ap;
  va_start(ap, fmt);
  fputs("loadgen: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* ---------------------------------------------------------------- server /proc */

static long proc_rss_kb(long pid) {
  if (pid <= 0) return -1;
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%ld/status", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, "VmRSS:", 6)) {
      kb = strtol(line + 6, NULL, 10);
      break;
    }
  fclose(f);
  return kb;
}

/* utime + stime of pid, in seconds (-1 if unknown). */
static double proc_cpu_s(long pid) {
  if (pid <= 0) return -1;
  char path[64], buf[2048];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* the command name may hold spaces */
  if (!p) return -1;
  unsigned long long ut = 0, st = 0;
  int field = 2;
  char *save = NULL;
  for (char *tok = strtok_r(p + 1, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
    field++;
    if (field == 14) ut = strtoull(tok, NULL, 10);
    if (field == 15) {
      st = strtoull(tok, NULL, 10);
      break;
    }
  }
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* ---------------------------------------------------------------- protocol */

static void give_ring(client *c, uint32_t size) {
  if (c->ring && c->ringsz >= size) return;
  free(c->ring);
  c->ring = calloc(size, sizeof(sent_rec));
  if (!c->ring) die("out of memory");
  c->ringsz = size;
}

/* Moves of sender s up to (wire) x are delivered to c now. */
static void deliver(client *c, client *s, double x, uint64_t now) {
  if (!s->ring) return;
  long long r = llround(x * 1000.0);
  if (r < 0 || r >= LG_SEQ_MOD) return;
  uint32_t cur = s->seq;
  uint32_t back = (uint32_t)(((long long)(cur % LG_SEQ_MOD) - r + LG_SEQ_MOD) % LG_SEQ_MOD);
  if (back > cur) return;
  uint32_t full = cur - back;
  if (full <= c->acked) return; /* old news (or a join patch with x = 0) */
  uint32_t from = c->acked + 1;
  if (full - from >= s->ringsz) from = full - s->ringsz + 1;
  for (uint32_t j = from; j <= full; j++) {
    sent_rec *e = &s->ring[j % s->ringsz];
    if (e->seq != j) continue;
    if (G.measuring && e->t >= G.m_t0) {
      h_add(&G.lat, now - e->t);
      if (c == s) G.m_echo++;
    }
  }
  c->acked = full;
}

/* The x of sender pid in a sync packet: "<pid>":{ ... "x":NUM ... } */
static bool find_x(const char *m, size_t len, const char *pid, size_t pidlen, double *x) {
  char key[80];
  if (pidlen + 4 > sizeof key) return false;
  key[0] = '"';
  memcpy(key + 1, pid, pidlen);
  memcpy(key + 1 + pidlen, "\":{", 3);
  const char *p = memmem(m, len, key, pidlen + 4);
  if (!p) return false;
  const char *end = m + len;
  p += pidlen + 4;
  const char *close = memchr(p, '}', (size_t)(end - p));
  if (!close) close = end;
  const char *q = memmem(p, (size_t)(close - p), "\"x\":", 4);
  if (!q) return false;
  char num[48];
  size_t k = 0;
  q += 4;
  while (q < close && k < sizeof num - 1 && strchr("0123456789.eE+-", *q))
    num[k++] = *q++;
  num[k] = 0;
  if (!k) return false;
  *x = strtod(num, NULL);
  return true;
}

static void on_message(client *c, const char *m, size_t len) {
  uint64_t now = now_us();
  G.last_rx = now;
  if (c->st == C_OPEN) {
    const char *p = memmem(m, len, "\"pId\":\"", 7);
    if (!p) return; /* not the join packet */
    p += 7;
    const char *q = memchr(p, '"', (size_t)(m + len - p));
    if (!q || (size_t)(q - p) >= sizeof c->pid) return;
    c->pidlen = (size_t)(q - p);
    memcpy(c->pid, p, c->pidlen);
    c->pid[c->pidlen] = 0;
    c->st = C_READY;
    c->t_ready = now;
    G.ready++;
    G.inflight--;
    h_add(&G.ready_h, now - c->t_start);
    return;
  }
  if (G.measuring) {
    G.m_msgs++;
    G.m_bytes += len;
  }
  if (G.mode != M_NONE) {
    client *s = G.mode == M_FANOUT ? G.writer : c;
    double x;
    if (s->pidlen && find_x(m, len, s->pid, s->pidlen, &x)) deliver(c, s, x, now);
  }
}

static void write_move(client *c) {
  unsigned char buf[LWS_PRE + 128];
  uint32_t seq = c->seq + 1;
  uint32_t r = seq % LG_SEQ_MOD;
  /* y stays 0 (its initial value): every move changes x only, so a server
   * that sends one packet per changed path (the reference) sends one too */
  int n = snprintf((char *)buf + LWS_PRE, 128,
                   "{\"action\":\"move\",\"value\":{\"x\":%u.%03u,\"y\":0}}", r / 1000, r % 1000);
  uint64_t t = now_us();
  if (lws_write(c->wsi, buf + LWS_PRE, (size_t)n, LWS_WRITE_TEXT) < n) {
    c->want = 0;
    return;
  }
  c->seq = seq;
  c->ring[seq % c->ringsz] = (sent_rec){seq, t};
  c->want--;
  if (G.measuring) G.m_sent++;
}

static int cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
  (void)user;
  client *c = (client *)lws_get_opaque_user_data(wsi);
  switch (reason) {
  case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
    if (c) {
      if (!G.first_error[0])
        snprintf(G.first_error, sizeof G.first_error, "%s", in ? (const char *)in : "unknown");
      if (c->st == C_CONNECTING || c->st == C_OPEN) G.inflight--;
      c->st = C_FAILED;
      G.failed++;
      c->wsi = NULL;
    }
    break;
  case LWS_CALLBACK_CLIENT_ESTABLISHED:
    if (c) c->st = C_OPEN;
    break;
  case LWS_CALLBACK_CLIENT_RECEIVE: {
    if (!c) break;
    bool final = lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi);
    if (final && c->rxlen == 0) {
      on_message(c, in, len);
      break;
    }
    if (c->rxlen + len + 1 > c->rxcap) {
      size_t cap = c->rxcap ? c->rxcap : 4096;
      while (cap < c->rxlen + len + 1)
        cap *= 2;
      char *nb = realloc(c->rx, cap);
      if (!nb) die("out of memory");
      c->rx = nb;
      c->rxcap = cap;
    }
    memcpy(c->rx + c->rxlen, in, len);
    c->rxlen += len;
    if (final) {
      on_message(c, c->rx, c->rxlen);
      c->rxlen = 0;
      if (c->rxcap > LG_RX_FREE) {
        free(c->rx);
        c->rx = NULL;
        c->rxcap = 0;
      }
    }
    break;
  }
  case LWS_CALLBACK_CLIENT_WRITEABLE:
    if (c && c->st == C_READY && c->want && c->ring) {
      /* a fast writer (fanout) must not be limited to one move per loop turn */
      for (int k = 0; k < 64 && c->want && !lws_send_pipe_choked(wsi); k++)
        write_move(c);
      if (c->want) lws_callback_on_writable(wsi);
    }
    break;
  case LWS_CALLBACK_CLIENT_CLOSED:
    if (c) {
      if (c->st == C_READY) G.closed_after_ready++;
      if (c->st == C_CONNECTING || c->st == C_OPEN) {
        G.inflight--;
        G.failed++;
        if (!G.first_error[0])
          snprintf(G.first_error, sizeof G.first_error, "closed before the first packet");
      }
      c->st = C_CLOSED;
      c->wsi = NULL;
    }
    break;
  case LWS_CALLBACK_WSI_DESTROY:
    if (c) c->wsi = NULL;
    break;
  default:
    break;
  }
  return 0;
}

static const struct lws_protocols protocols[] = {
    {"loadgen", cb, 0, 65536, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* ---------------------------------------------------------------- the loop */

/* lws_service() sleeps until a socket event or the earliest lws timer: the
 * one timer of ours (G.wake) is re-armed before every call for the next
 * instant we must act (a deadline, or the next move due, no more often than
 * once per ms: moves due together go out together). No periodic tick: an
 * idle load generator must not spin poll() over thousands of sockets. */
static void wake_cb(lws_sorted_usec_list_t *sul) {
  /* lws 4.1 runs the timers that are due before it waits, then waits for its
   * next timer: a wake-up spent before the wait would leave poll() sleeping
   * until a socket event. Make the coming wait return. */
  (void)sul;
  lws_cancel_service(G.ctx);
}

static void start_client(int i) {
  client *c = &G.c[i];
  char path[512];
  if (G.phases & P_ROOMS)
    snprintf(path, sizeof path, "%s/%s-%d?id=lg%ld-%d", G.base, G.room, i, (long)getpid(), i);
  else
    snprintf(path, sizeof path, "%s/%s?id=lg%ld-%d", G.base, G.room, (long)getpid(), i);
  char hosthdr[300];
  snprintf(hosthdr, sizeof hosthdr, "%s:%d", G.host, G.port);
  struct lws_client_connect_info ci;
  memset(&ci, 0, sizeof ci);
  ci.context = G.ctx;
  ci.address = G.addr;
  ci.port = G.port;
  ci.path = path;
  ci.host = hosthdr;
  ci.origin = hosthdr;
  ci.local_protocol_name = "loadgen";
  ci.opaque_user_data = c;
  ci.pwsi = &c->wsi;
  c->st = C_CONNECTING;
  c->t_start = now_us();
  G.inflight++;
  G.started++;
  if (!lws_client_connect_via_info(&ci) && c->st == C_CONNECTING) { /* failed without a callback */
    c->st = C_FAILED;
    G.inflight--;
    G.failed++;
    if (!G.first_error[0]) snprintf(G.first_error, sizeof G.first_error, "connect failed at once");
  }
}

/* The moves due now go to the senders (round robin over all clients in
 * move, client 0 in fanout). */
static void send_tick(void) {
  if (!G.sending || G.total_rate <= 0) return;
  uint64_t now = now_us();
  uint64_t due = (uint64_t)((double)(now - G.send_t0) * G.total_rate / 1e6);
  if (due <= G.issued) return;
  uint64_t k = due - G.issued;
  G.issued = due;
  for (uint64_t i = 0; i < k; i++) {
    client *c = G.mode == M_FANOUT ? G.writer : &G.c[G.rr++ % (uint32_t)G.n];
    if (c->st != C_READY || !c->wsi) continue;
    if (c->want++ == 0) lws_callback_on_writable(c->wsi);
  }
}

static void service_until(uint64_t t) {
  uint64_t now = now_us(), wake = t;
  if (G.sending && G.total_rate > 0) {
    uint64_t due = G.send_t0 + (uint64_t)((double)(G.issued + 1) * 1e6 / G.total_rate);
    if (due < now + 1000) due = now + 1000;
    if (due < wake) wake = due;
  }
  if (wake > G.deadline_all) wake = G.deadline_all;
  lws_sul_schedule(G.ctx, 0, &G.wake, wake_cb, wake > now ? (lws_usec_t)(wake - now) : 1);
  if (lws_service(G.ctx, 0) < 0) die("lws_service failed");
  send_tick();
  if (!G.interrupted && now_us() > G.deadline_all) {
    G.interrupted = true;
    note("--max-time reached: stopping with what was measured");
  }
}

static void run_for(double secs) {
  uint64_t end = now_us() + (uint64_t)(secs * 1e6);
  while (now_us() < end && !G.interrupted)
    service_until(end);
}

/* Connect clients [from, to) with at most inflight_cap joins pending; wait
 * until each joined or failed, or timeout. Returns the elapsed seconds. */
static double connect_range(int from, int to, double timeout_s) {
  uint64_t t0 = now_us(), end = t0 + (uint64_t)(timeout_s * 1e6);
  int next = from;
  while (!G.interrupted) {
    while (next < to && G.inflight < G.inflight_cap)
      start_client(next++);
    if (next >= to && G.inflight <= 0) break;
    if (now_us() > end) {
      note("timeout: %d of %d clients joined after %.1f s", G.ready, to, timeout_s);
      break;
    }
    service_until(end);
  }
  return (double)(now_us() - t0) / 1e6;
}

/* Wait until no packet arrived for LG_QUIET_MS (the join traffic is over),
 * at most max_s. Returns the seconds waited. */
static double wait_quiet(double max_s) {
  uint64_t t0 = now_us(), end = t0 + (uint64_t)(max_s * 1e6);
  while (!G.interrupted && now_us() < end && now_us() - G.last_rx < LG_QUIET_MS * 1000) {
    uint64_t q = G.last_rx + LG_QUIET_MS * 1000;
    service_until(q < end ? q : end);
  }
  return (double)(now_us() - t0) / 1e6;
}

static uint64_t backlog(void) {
  uint64_t b = 0;
  for (int i = 0; i < G.n; i++) {
    client *c = &G.c[i];
    if (c->st != C_READY) continue;
    if (G.mode == M_FANOUT)
      b += G.writer->seq - c->acked;
    else
      b += c->seq - c->acked;
  }
  return b;
}

/* One load step at total rate r: warm-up, measure, drain. */
static step_t run_step(double r) {
  step_t s;
  memset(&s, 0, sizeof s);
  s.offered = r;
  G.total_rate = r;
  G.send_t0 = now_us();
  G.issued = 0;
  G.sending = true;
  run_for(G.warm_s);
  memset(&G.lat, 0, sizeof G.lat);
  G.m_msgs = G.m_bytes = G.m_echo = G.m_sent = 0;
  double srv0 = proc_cpu_s(G.pid), lg0 = self_cpu_s();
  G.m_t0 = now_us();
  G.measuring = true;
  /* At least --min-samples latencies: at 5 moves/s a 2 s window holds 10,
   * and a "p99" of 10 is their maximum. Longer windows, up to 30 s. */
  double per_s = G.mode == M_FANOUT ? r * G.n : r, win = G.dur_s;
  if (G.min_samples > 0 && per_s > 0 && G.min_samples / per_s > win)
    win = fmin(G.min_samples / per_s, 30);
  run_for(win);
  double el = (double)(now_us() - G.m_t0) / 1e6;
  double srv1 = proc_cpu_s(G.pid), lg1 = self_cpu_s();
  G.sending = false;
  for (int i = 0; i < G.n; i++)
    G.c[i].want = 0; /* nothing more goes out */
  s.sent = (double)G.m_sent / el;
  s.actions = (double)G.m_echo / el;
  s.delivered = (double)G.m_msgs / el;
  s.mbps = (double)G.m_bytes / el / 1e6;
  uint64_t echoes = G.m_echo;
  /* drain: late patches of moves sent in the window still count for latency */
  uint64_t end = now_us() + (uint64_t)(G.drain_s * 1e6);
  while (now_us() < end && !G.interrupted && backlog())
    service_until(end);
  G.measuring = false;
  s.backlog = backlog();
  s.samples = G.lat.n;
  s.p50 = h_pct_ms(&G.lat, 0.50);
  s.p90 = h_pct_ms(&G.lat, 0.90);
  s.p99 = h_pct_ms(&G.lat, 0.99);
  s.max_ms = G.lat.n ? (double)G.lat.max / 1000.0 : -1;
  s.mean_ms = G.lat.n ? (double)G.lat.sum / (double)G.lat.n / 1000.0 : -1;
  if (srv0 >= 0 && srv1 >= 0) {
    s.cpu_s = srv1 - srv0;
    s.srv_cpu_pct = 100.0 * s.cpu_s / el;
    s.cpu_per_100k = echoes ? s.cpu_s * 100000.0 / (double)echoes : -1;
  } else {
    s.cpu_s = s.cpu_per_100k = s.srv_cpu_pct = -1;
  }
  s.lg_cpu_pct = 100.0 * (lg1 - lg0) / el;
  s.ok = true;
  s.why = "ok";
  if (s.samples == 0) {
    s.ok = false;
    s.why = "no patch came back";
  } else if (s.p99 > 100.0) {
    s.ok = false;
    s.why = "p99 > 100 ms";
  } else if (s.actions < 0.9 * r) {
    s.ok = false;
    s.why = "throughput < 90% of offered";
  } else if (s.backlog) {
    s.ok = false;
    s.why = "backlog did not drain";
  }
  return s;
}

/* Run the steps of a move/fanout phase until saturation. */
static void run_phase(phase_t *ph, int mode) {
  G.mode = mode;
  ph->sat = -1;
  /* start counting from where each sender is now */
  for (int i = 0; i < G.n; i++)
    G.c[i].acked = mode == M_FANOUT ? G.writer->seq : G.c[i].seq;
  for (int k = 0; k < ph->nrates && !G.interrupted; k++) {
    step_t s = run_step(ph->rates[k]);
    if (!s.ok && s.samples && s.actions >= 0.9 * s.offered && !G.interrupted) {
      /* Throughput kept up but the latency tail did not: on a shared
       * machine one scheduling hiccup does that. Run the step once more
       * and keep the second result. */
      note("%s %.0f moves/s: %s, running the step again", ph->name, s.offered, s.why);
      s = run_step(ph->rates[k]);
      s.retried = true;
    }
    ph->steps[ph->nsteps++] = s;
    note("%s %.0f moves/s: %.0f actions/s, %.0f packets/s, p50 %.2f ms, p99 %.2f ms, %s", ph->name,
         s.offered, s.actions, s.delivered, s.p50, s.p99, s.why);
    if (!s.ok) {
      ph->sat_why = s.why;
      break;
    }
    ph->sat = ph->nsteps - 1;
    if (k > 0 && s.actions < 1.05 * ph->steps[k - 1].actions &&
        ph->rates[k] > 1.2 * ph->rates[k - 1]) {
      ph->sat_why = "throughput plateau";
      break;
    }
  }
  if (!ph->sat_why && ph->nrates > 1) ph->sat_why = "not saturated at the largest rate";
  G.mode = M_NONE;
}

/* ---------------------------------------------------------------- output */

static FILE *jf;
static bool jfirst;
static void jkey(const char *k) {
  fprintf(jf, "%s\"%s\":", jfirst ? "" : ",", k);
  jfirst = false;
}
static void jnum(const char *k, double v) {
  jkey(k);
  if (v < 0 || isnan(v) || isinf(v))
    fputs("null", jf);
  else
    fprintf(jf, "%.6g", v);
}
static void jint(const char *k, long long v) {
  jkey(k);
  fprintf(jf, "%lld", v);
}
static void jstr(const char *k, const char *v) {
  jkey(k);
  fputc('"', jf);
  for (const char *p = v; *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(jf, "\\%c", *p);
    else if ((unsigned char)*p < 0x20)
      fprintf(jf, "\\u%04x", *p);
    else
      fputc(*p, jf);
  }
  fputc('"', jf);
}
static void jbool(const char *k, bool v) {
  jkey(k);
  fputs(v ? "true" : "false", jf);
}
static void jopen(const char *k) {
  if (k) jkey(k);
  fputc('{', jf);
  jfirst = true;
}
static void jclose(void) {
  fputc('}', jf);
  jfirst = false;
}

static void json_step(const char *k, const step_t *s) {
  jopen(k);
  jnum("offered", s->offered);
  jnum("sent", s->sent);
  jnum("actions_per_s", s->actions);
  jnum("delivered_per_s", s->delivered);
  jnum("mb_per_s", s->mbps);
  jnum("p50_ms", s->p50);
  jnum("p90_ms", s->p90);
  jnum("p99_ms", s->p99);
  jnum("max_ms", s->max_ms);
  jnum("mean_ms", s->mean_ms);
  jint("samples", (long long)s->samples);
  jnum("server_cpu_s", s->cpu_s);
  jnum("server_cpu_pct", s->srv_cpu_pct);
  jnum("cpu_s_per_100k_actions", s->cpu_per_100k);
  jnum("loadgen_cpu_pct", s->lg_cpu_pct);
  jint("backlog", (long long)s->backlog);
  jbool("retried", s->retried);
  jbool("ok", s->ok);
  jstr("verdict", s->why);
  jclose();
}

static void json_phase(const phase_t *ph) {
  jopen(ph->name);
  jkey("steps");
  fputc('[', jf);
  for (int k = 0; k < ph->nsteps; k++) {
    if (k) fputc(',', jf);
    jfirst = true;
    json_step(NULL, &ph->steps[k]);
  }
  fputc(']', jf);
  jfirst = false;
  if (ph->sat >= 0)
    json_step("saturation", &ph->steps[ph->sat]);
  else {
    jkey("saturation");
    fputs("null", jf);
  }
  jstr("saturation_reason", ph->sat_why ? ph->sat_why : "");
  jclose();
}

static void fmt_ms(char *b, size_t n, double v) {
  if (v < 0)
    snprintf(b, n, "-");
  else if (v < 10)
    snprintf(b, n, "%.2f", v);
  else
    snprintf(b, n, "%.1f", v);
}

static void print_phase(const phase_t *ph) {
  char a[32], b[32], c3[32];
  printf("%s:\n", ph->name);
  printf("| moves/s offered | sent/s | actions/s | delivered/s | MB/s | p50 ms | p99 ms | max ms | "
         "srv CPU%% | "
         "srv CPU s/100k | loadgen CPU%% | verdict |\n");
  printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
  for (int k = 0; k < ph->nsteps; k++) {
    const step_t *s = &ph->steps[k];
    fmt_ms(a, sizeof a, s->p50);
    fmt_ms(b, sizeof b, s->p99);
    fmt_ms(c3, sizeof c3, s->max_ms);
    printf("| %.0f | %.0f | %.0f | %.0f | %.2f | %s | %s | %s | %.0f | %.3f | %.0f | %s%s |\n",
           s->offered, s->sent, s->actions, s->delivered, s->mbps, a, b, c3, s->srv_cpu_pct,
           s->cpu_per_100k, s->lg_cpu_pct, s->why, k == ph->sat && ph->nrates > 1 ? " (best)" : "");
  }
  if (ph->nrates > 1) {
    if (ph->sat >= 0)
      printf("saturation: %.0f actions/s, %.0f delivered/s, p99 %.2f ms (then: %s)\n",
             ph->steps[ph->sat].actions, ph->steps[ph->sat].delivered, ph->steps[ph->sat].p99,
             ph->sat_why ? ph->sat_why : "-");
    else
      printf("saturation: below the first step (%s)\n", ph->sat_why ? ph->sat_why : "-");
  }
}

/* ---------------------------------------------------------------- main */

static void usage(void) {
  fputs("usage: loadgen --url ws://127.0.0.1:PORT --scenario LIST [options]\n"
        "  LIST: comma list of ramp, idle, move, fanout, cpu (run in that order on one set of\n"
        "        connections), or rooms alone\n"
        "  --clients N          connections (default 100, at most 20000)\n"
        "  --room NAME          room id (default bench-<pid>); rooms: prefix of <NAME>-<i>\n"
        "  --base PATH          party path (default /parties/main)\n"
        "  --rate R             move/cpu without a sweep: moves/s per client (default 1)\n"
        "  --sweep A:F:M        move: total moves/s A, A*F, ... up to M; stop at saturation\n"
        "  --rates a,b,c        move: explicit total moves/s steps\n"
        "  --writer-rate R      fanout without a sweep: the writer's moves/s (default 10)\n"
        "  --fanout-sweep A:F:M fanout: writer moves/s A, A*F, ... up to M\n"
        "  --warmup S (1)  --duration S (2)  --drain S (3)  per step\n"
        "  --min-samples K (100) a step measures until K latencies (at most 30 s)\n"
        "  --settle S (2)       idle/rooms: wait before reading RSS\n"
        "  --timeout S (30)     joining     --max-time S (300)  whole run\n"
        "  --inflight K (256)   joins pending at once\n"
        "  --pid PID            server process: RSS (/proc/PID/status) and CPU (/proc/PID/stat)\n"
        "  --label NAME         name of the target in the output\n"
        "  --json FILE|-        write the JSON result\n"
        "  --quiet              no progress notes on stderr\n",
        stderr);
  exit(2);
}

static void parse_url(const char *url) {
  const char *p = url;
  if (!strncmp(p, "ws://", 5))
    p += 5;
  else if (!strncmp(p, "http://", 7))
    p += 7;
  else
    die("--url must be ws://HOST:PORT (no TLS: loopback only)");
  const char *hs = p, *he;
  if (*p == '[') {
    hs = p + 1;
    he = strchr(hs, ']');
    if (!he) die("bad URL %s", url);
    p = he + 1;
  } else {
    he = p;
    while (*he && *he != ':' && *he != '/')
      he++;
    p = he;
  }
  if ((size_t)(he - hs) >= sizeof G.host || he == hs) die("bad host in %s", url);
  memcpy(G.host, hs, (size_t)(he - hs));
  G.host[he - hs] = 0;
  if (*p != ':') die("--url needs a port: %s", url);
  G.port = atoi(p + 1);
  if (G.port <= 0 || G.port > 65535) die("bad port in %s", url);
  /* Loopback only: every address the host resolves to must be loopback. */
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  int e = getaddrinfo(G.host, NULL, &hints, &res);
  if (e || !res) die("cannot resolve %s: %s", G.host, gai_strerror(e));
  G.addr[0] = 0;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    bool loop = false;
    char s[INET6_ADDRSTRLEN] = "";
    if (a->ai_family == AF_INET) {
      struct in_addr in = ((struct sockaddr_in *)a->ai_addr)->sin_addr;
      loop = (ntohl(in.s_addr) >> 24) == 127;
      inet_ntop(AF_INET, &in, s, sizeof s);
    } else if (a->ai_family == AF_INET6) {
      struct in6_addr in6 = ((struct sockaddr_in6 *)a->ai_addr)->sin6_addr;
      loop = IN6_IS_ADDR_LOOPBACK(&in6);
      inet_ntop(AF_INET6, &in6, s, sizeof s);
    }
    if (!loop) {
      freeaddrinfo(res);
      die("refusing %s (%s): the load generator only targets loopback addresses", G.host, s);
    }
    if (!G.addr[0] || a->ai_family == AF_INET) snprintf(G.addr, sizeof G.addr, "%s", s);
  }
  freeaddrinfo(res);
}

static void parse_sweep(phase_t *ph, const char *sweep, const char *list) {
  if (sweep) {
    double a = 0, f = 0, m = 0;
    if (sscanf(sweep, "%lf:%lf:%lf", &a, &f, &m) != 3 || a <= 0 || f <= 1 || m < a)
      die("a sweep is FROM:FACTOR:MAX with FACTOR > 1");
    for (double r = a; r <= m * 1.0001 && ph->nrates < LG_MAX_STEPS; r *= f)
      ph->rates[ph->nrates++] = r;
  } else if (list) {
    char *dup = strdup(list), *save = NULL;
    for (char *t = strtok_r(dup, ",", &save); t && ph->nrates < LG_MAX_STEPS;
         t = strtok_r(NULL, ",", &save))
      if (atof(t) > 0) ph->rates[ph->nrates++] = atof(t);
    free(dup);
  }
}

int main(int argc, char **argv) {
  const char *url = NULL, *sweep = NULL, *rates = NULL, *fsweep = NULL, *scen = NULL;
  G.n = 100;
  G.rate = 1;
  G.writer_rate = 10;
  G.warm_s = 1;
  G.dur_s = 2;
  G.min_samples = 100;
  G.drain_s = 3;
  G.settle_s = 2;
  G.timeout_s = 30;
  G.max_time_s = 300;
  G.inflight_cap = 256;
  snprintf(G.base, sizeof G.base, "/parties/main");
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (!strcmp(a, name) && v && (i++, 1))
    if (OPT("--url"))
      url = v;
    else if (OPT("--scenario"))
      scen = v;
    else if (OPT("--clients"))
      G.n = atoi(v);
    else if (OPT("--room"))
      snprintf(G.room, sizeof G.room, "%s", v);
    else if (OPT("--base"))
      snprintf(G.base, sizeof G.base, "%s", v);
    else if (OPT("--rate"))
      G.rate = atof(v);
    else if (OPT("--sweep"))
      sweep = v;
    else if (OPT("--rates"))
      rates = v;
    else if (OPT("--writer-rate"))
      G.writer_rate = atof(v);
    else if (OPT("--fanout-sweep"))
      fsweep = v;
    else if (OPT("--warmup"))
      G.warm_s = atof(v);
    else if (OPT("--duration"))
      G.dur_s = atof(v);
    else if (OPT("--min-samples"))
      G.min_samples = atof(v);
    else if (OPT("--drain"))
      G.drain_s = atof(v);
    else if (OPT("--settle"))
      G.settle_s = atof(v);
    else if (OPT("--timeout"))
      G.timeout_s = atof(v);
    else if (OPT("--max-time"))
      G.max_time_s = atof(v);
    else if (OPT("--inflight"))
      G.inflight_cap = atoi(v);
    else if (OPT("--pid"))
      G.pid = atol(v);
    else if (OPT("--label"))
      snprintf(G.label, sizeof G.label, "%s", v);
    else if (OPT("--json"))
      G.json = v;
    else if (!strcmp(a, "--quiet"))
      G.quiet = true;
    else
      usage();
#undef OPT
  }
  if (!url || !scen) usage();
  {
    char *dup = strdup(scen), *save = NULL;
    for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
      if (!strcmp(t, "ramp"))
        G.phases |= P_RAMP;
      else if (!strcmp(t, "idle"))
        G.phases |= P_IDLE;
      else if (!strcmp(t, "move"))
        G.phases |= P_MOVE;
      else if (!strcmp(t, "fanout"))
        G.phases |= P_FANOUT;
      else if (!strcmp(t, "cpu"))
        G.phases |= P_CPU;
      else if (!strcmp(t, "rooms"))
        G.phases |= P_ROOMS;
      else
        die("unknown scenario %s", t);
    }
    free(dup);
  }
  if ((G.phases & P_ROOMS) && G.phases != P_ROOMS) die("rooms runs alone");
  if (G.n < 1 || G.n > LG_MAX_CLIENTS) die("--clients must be 1..%d", LG_MAX_CLIENTS);
  if (G.dur_s <= 0 || G.dur_s > 600 || G.warm_s < 0 || G.warm_s > 600 || G.timeout_s <= 0 ||
      G.timeout_s > 600 || G.max_time_s <= 0 || G.max_time_s > 3600 || G.drain_s < 0 ||
      G.drain_s > 60 || G.settle_s < 0 || G.settle_s > 60)
    die("durations out of range (duration/warmup/timeout <= 600 s, max-time <= 3600 s)");
  if (G.inflight_cap < 1) G.inflight_cap = 1;
  if ((G.phases & (P_IDLE | P_ROOMS)) && G.pid <= 0) die("idle and rooms need --pid");
  parse_url(url);
  if (!G.room[0]) snprintf(G.room, sizeof G.room, "bench-%ld", (long)getpid());
  if (!G.label[0]) snprintf(G.label, sizeof G.label, "%s:%d", G.host, G.port);

  phase_t move = {.name = "move"}, fan = {.name = "fanout"}, cpu = {.name = "cpu"};
  parse_sweep(&move, sweep, rates);
  if (!move.nrates) move.rates[move.nrates++] = G.rate * G.n;
  parse_sweep(&fan, fsweep, NULL);
  if (!fan.nrates) fan.rates[fan.nrates++] = G.writer_rate;
  cpu.rates[cpu.nrates++] = G.rate * G.n;

  /* fds: one per connection plus slack */
  struct rlimit rl;
  if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < (rlim_t)G.n + 64)
    die("open-file limit %llu is too low for %d connections (ulimit -n)",
        (unsigned long long)rl.rlim_cur, G.n);
  signal(SIGPIPE, SIG_IGN);

  G.c = calloc((size_t)G.n, sizeof *G.c);
  if (!G.c) die("out of memory");
  for (int i = 0; i < G.n; i++)
    G.c[i].idx = i;
  G.writer = &G.c[0];
  if (G.phases & (P_MOVE | P_CPU))
    for (int i = 0; i < G.n; i++)
      give_ring(&G.c[i], LG_RING);
  if (G.phases & P_FANOUT) give_ring(G.writer, LG_WRITER_RING);

  lws_set_log_level(LLL_ERR, NULL);
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.port = CONTEXT_PORT_NO_LISTEN;
  info.protocols = protocols;
  info.gid = -1;
  info.uid = -1;
  info.timeout_secs = (unsigned)(G.timeout_s + 5);
  info.pt_serv_buf_size = 256 * 1024;
  info.fd_limit_per_thread = (unsigned)G.n + 64;
  /* No ping/pong validity timers: lws 4.1 re-inserts a connection's timer
   * into one sorted list on every frame it receives, an O(N) walk that
   * would make the load generator, not the server, the bottleneck. The
   * runs are bounded by --timeout and --duration instead. */
  static const lws_retry_bo_t no_validity = {0};
  info.retry_and_idle_policy = &no_validity;
  G.ctx = lws_create_context(&info);
  if (!G.ctx) die("lws_create_context failed");

  G.t_begin = now_us();
  G.deadline_all = G.t_begin + (uint64_t)(G.max_time_s * 1e6);

  double join_s = -1, join_rate = -1, quiet_s = -1;
  long rss0 = -1, rss1 = -1;
  double per_kb = -1;
  int measured = 0;

  if (G.phases & P_ROOMS) {
    run_for(G.settle_s / 2);
    rss0 = proc_rss_kb(G.pid);
    join_s = connect_range(0, G.n, G.timeout_s);
    wait_quiet(G.timeout_s);
    run_for(G.settle_s);
    rss1 = proc_rss_kb(G.pid);
    measured = G.ready;
  } else if (G.phases & P_IDLE) {
    connect_range(0, 1, G.timeout_s);
    wait_quiet(G.timeout_s);
    run_for(G.settle_s / 2);
    rss0 = proc_rss_kb(G.pid);
    join_s = connect_range(1, G.n, G.timeout_s);
    quiet_s = wait_quiet(G.timeout_s);
    run_for(G.settle_s);
    rss1 = proc_rss_kb(G.pid);
    measured = G.ready - 1;
  } else {
    join_s = connect_range(0, G.n, G.timeout_s);
    /* a plain ramp ends at the last first packet; load phases start once the
     * join patches stopped flowing */
    if ((G.phases & (P_MOVE | P_FANOUT | P_CPU)) && G.ready == G.n)
      quiet_s = wait_quiet(G.timeout_s);
  }
  if (measured > 0 && rss0 >= 0 && rss1 >= 0) per_kb = (double)(rss1 - rss0) / measured;
  if (join_s > 0 && G.ready > 0) join_rate = G.ready / join_s;
  note("%d/%d joined in %.2f s; join traffic over %.2f s later", G.ready, G.n, join_s, quiet_s);

  bool all_joined = G.ready == G.n;
  if (all_joined && (G.phases & P_MOVE)) run_phase(&move, M_MOVE);
  if (all_joined && (G.phases & P_FANOUT) && !G.interrupted) run_phase(&fan, M_FANOUT);
  if (all_joined && (G.phases & P_CPU) && !G.interrupted) run_phase(&cpu, M_MOVE);

  int rc = all_joined ? 0 : 1;
  if ((G.phases & P_MOVE) && (!move.nsteps || !move.steps[0].samples)) rc = 1;
  if ((G.phases & P_FANOUT) && (!fan.nsteps || !fan.steps[0].samples)) rc = 1;
  if ((G.phases & P_CPU) && (!cpu.nsteps || !cpu.steps[0].samples)) rc = 1;

  /* ---- human table ---- */
  char a[32], b[32];
  printf("\n%s  scenario %s  clients %d  room %s\n", G.label, scen, G.n, G.room);
  printf("joined %d/%d in %.3f s", G.ready, G.n, join_s);
  if (join_rate > 0) printf(" (%.0f joins/s)", join_rate);
  if (G.ready_h.n) {
    fmt_ms(a, sizeof a, h_pct_ms(&G.ready_h, 0.5));
    fmt_ms(b, sizeof b, h_pct_ms(&G.ready_h, 0.99));
    printf(", connect->first packet p50 %s ms p99 %s ms", a, b);
  }
  if (G.failed) printf(", %d failed (%s)", G.failed, G.first_error);
  if (G.closed_after_ready) printf(", %d closed by the server", G.closed_after_ready);
  if (quiet_s >= 0) printf("; join traffic over %.2f s later", quiet_s);
  printf("\n");
  if (G.phases & (P_IDLE | P_ROOMS))
    printf("server RSS %ld kB -> %ld kB: %.2f kB per %s (%d measured)\n", rss0, rss1, per_kb,
           (G.phases & P_IDLE) ? "idle connection" : "room (with its one connection)", measured);
  if (move.nsteps) print_phase(&move);
  if (fan.nsteps) print_phase(&fan);
  if (cpu.nsteps) print_phase(&cpu);
  if (G.interrupted) printf("(interrupted by --max-time)\n");
  fflush(stdout);

  /* ---- JSON ---- */
  if (G.json) {
    jf = strcmp(G.json, "-") ? fopen(G.json, "w") : stdout;
    if (!jf) die("cannot write %s: %s", G.json, strerror(errno));
    jopen(NULL);
    jstr("label", G.label);
    jstr("scenario", scen);
    jint("clients", G.n);
    jstr("room", G.room);
    jopen("ramp");
    jint("joined", G.ready);
    jint("failed", G.failed);
    jint("closed_by_server", G.closed_after_ready);
    jnum("join_s", join_s);
    jnum("joins_per_s", join_rate);
    jnum("first_packet_p50_ms", h_pct_ms(&G.ready_h, 0.5));
    jnum("first_packet_p99_ms", h_pct_ms(&G.ready_h, 0.99));
    jnum("join_traffic_s", quiet_s);
    jclose();
    if (G.phases & (P_IDLE | P_ROOMS)) {
      jopen((G.phases & P_IDLE) ? "idle" : "rooms");
      jint("rss_before_kb", rss0);
      jint("rss_after_kb", rss1);
      jint("measured", measured);
      jnum((G.phases & P_IDLE) ? "kb_per_connection" : "kb_per_room", per_kb);
      jclose();
    }
    if (move.nsteps) json_phase(&move);
    if (fan.nsteps) json_phase(&fan);
    if (cpu.nsteps) json_phase(&cpu);
    jbool("interrupted", G.interrupted);
    jint("exit", rc);
    jclose();
    fputc('\n', jf);
    if (jf != stdout) fclose(jf);
  }

  lws_sul_cancel(&G.wake);
  lws_context_destroy(G.ctx);
  for (int i = 0; i < G.n; i++) {
    free(G.c[i].rx);
    free(G.c[i].ring);
  }
  free(G.c);
  return rc;
}

/*
 * loadgen.c - the WebSocket load generator of the benchmarks.
 *
 * One process, one libwebsockets (4.1) client context, one event loop, many
 * connections; bounded in connection count (--clients <= LG_MAX_CLIENTS) and
 * in time (--max-time, every wait has a deadline); loopback targets only (the
 * URL's host must resolve to 127.0.0.0/8 or ::1, anything else is refused).
 * It speaks the Lunaroom / @signe/room wire protocol: it connects to
 * ws://HOST:PORT/parties/main/<room>?id=<session>, takes the first packet
 * that carries "pId" as the client's join (its publicId), and sends
 * {"action":"move","value":{"x":X,"y":Y}}.
 *
 * Matching a move with its patch. Every sender numbers its moves (seq
 * 1, 2, ...) and sends x = (seq mod 1e6) / 1000, so x stays inside the room's
 * [0, 1000] and is exact on the wire with 3 decimals. A receiver looks for
 * "<publicId of the sender>":{ ... "x":<number> in each packet and turns x
 * back into seq; all of that sender's moves up to seq it has not seen yet
 * count as delivered at that instant (a server that coalesces two moves of
 * one sender into one patch delivers the older one late, not never). The
 * send time is taken just before lws_write; latency = receive - send on the
 * same monotonic clock.
 *
 * Scenarios (--scenario):
 *   ramp    N clients connect (at most --inflight joins pending at once);
 *           the time until every client got its first packet, joins/s and
 *           the p50/p99 of connect -> first packet.
 *   move    N clients in one room, each sending moves; processed actions/s
 *           (own patches seen per second), delivered packets/s (all clients),
 *           p50/p99 latency send -> own patch. --rate R (moves/s per client)
 *           or a sweep of total rates (--sweep FROM:FACTOR:MAX or --rates
 *           a,b,c, total moves/s) that stops at saturation: p99 > 100 ms,
 *           throughput < 90% of the offered rate, or a backlog that does not
 *           drain.
 *   fanout  one writer (client 0) and N-1 readers; the writer sends moves at
 *           the rate(s) above; delivered packets/s and p50/p99 latency from
 *           the writer's send to every reader's receive.
 *   idle    server RSS per idle connection: RSS with one client in the room,
 *           then with N clients, settled (needs --pid).
 *   rooms   server RSS per room: N clients, each in its own room
 *           <room>-<i> (needs --pid; the room file must accept that path).
 *   cpu     one move step at --rate with N clients: server CPU seconds
 *           (utime+stime of --pid) per 100,000 processed actions.
 * move and fanout also report the server CPU per 100k actions of every step
 * when --pid is given.
 *
 * Output: a human table on stdout, and one JSON object (--json FILE, or "-"
 * for stdout after the table). Exit status: 0 = every client joined and (for
 * move/fanout/cpu) patches came back; 1 = it did not (the smoke test uses
 * this); 2 = usage error or refused target.
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
#define LG_RING 8192       /* in-flight moves remembered per sender */
#define LG_SEQ_MOD 1000000 /* x = (seq % LG_SEQ_MOD) / 1000 */
#define LG_MAX_STEPS 32
#define LG_RX_FREE 65536 /* a client's assembly buffer above this is freed after use */

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

/* ---------------------------------------------------------------- clients */

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
  uint32_t want;   /* moves due and not yet written */
  uint32_t seq;    /* last seq written */
  uint32_t acked;  /* highest seq of the tracked sender seen (own for move, the writer's for fanout) */
  sent_rec *ring;  /* senders only */
  uint64_t rx_msgs;
} client;

typedef enum { S_RAMP, S_MOVE, S_FANOUT, S_IDLE, S_ROOMS, S_CPU } scenario_t;
static const char *const scenario_names[] = {"ramp", "move", "fanout", "idle", "rooms", "cpu"};

typedef struct {
  double offered;   /* moves/s scheduled */
  double sent;      /* moves/s written */
  double actions;   /* moves/s whose patch came back (to the mover; to the writer in fanout) */
  double delivered; /* packets/s received by all clients */
  double mbps;      /* MB/s received */
  double p50, p90, p99, max_ms, mean_ms;
  uint64_t samples;
  double cpu_s, cpu_per_100k, srv_cpu_pct, lg_cpu_pct;
  uint64_t backlog; /* moves sent during the step and not seen back at the end of the drain */
  bool drained;
  bool ok;
  const char *why;
} step_t;

static struct {
  /* options */
  char host[256], addr[INET6_ADDRSTRLEN];
  int port;
  char base[256];   /* "/parties/main" */
  char room[128];
  char label[300];
  scenario_t sc;
  int n;
  double rate;
  double rates[LG_MAX_STEPS];
  int nrates;
  double warm_s, dur_s, drain_s, settle_s, timeout_s, max_time_s;
  int inflight_cap;
  long pid;
  const char *json;
  bool quiet;

  /* runtime */
  struct lws_context *ctx;
  lws_sorted_usec_list_t tick;
  client *c;
  int started, inflight, ready, failed, closed_after_ready;
  char first_error[256];
  uint64_t t_begin, deadline_all;
  /* sending */
  bool sending;
  double total_rate;
  uint64_t send_t0, issued;
  int rr;
  int nsenders;
  client *writer;
  /* measuring */
  bool measuring;
  uint64_t m_t0;
  uint64_t m_msgs, m_bytes, m_echo, m_sent;
  hist lat, ready_h;
  bool interrupted;
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

static double proc_cpu_s(long pid) {
  if (pid <= 0) return -1;
  char path[64], buf[2048];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  if (!p) return -1;
  p++;
  /* fields after ")": 3 state, 4 ppid, ... 14 utime, 15 stime */
  unsigned long long ut = 0, st = 0;
  int field = 2;
  char *save = NULL;
  for (char *tok = strtok_r(p, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
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

static client *sender_of(client *c) { return G.sc == S_FANOUT ? G.writer : c; }

/* Moves of sender s up to (wire) x are delivered to c now. */
static void deliver(client *c, client *s, double x, uint64_t now) {
  if (!s || !s->ring) return;
  long long r = llround(x * 1000.0);
  if (r < 0 || r >= LG_SEQ_MOD) return;
  uint32_t cur = s->seq;
  uint32_t back = (uint32_t)(((long long)(cur % LG_SEQ_MOD) - r + LG_SEQ_MOD) % LG_SEQ_MOD);
  if (back > cur) return;
  uint32_t full = cur - back;
  if (full <= c->acked) return; /* old news (or a join patch with x = 0) */
  uint32_t from = c->acked + 1;
  if (full - from >= LG_RING) from = full - LG_RING + 1;
  for (uint32_t j = from; j <= full; j++) {
    sent_rec *e = &s->ring[j % LG_RING];
    if (e->seq != j) continue;
    if (G.measuring && e->t >= G.m_t0) {
      h_add(&G.lat, now - e->t);
      if (c == s) G.m_echo++;
    }
  }
  c->acked = full;
}

/* Find the x of sender pid in a sync packet: "<pid>":{ ... "x":NUM */
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
  while (q < close && k < sizeof num - 1 && (strchr("0123456789.eE+-", *q))) num[k++] = *q++;
  num[k] = 0;
  if (!k) return false;
  *x = strtod(num, NULL);
  return true;
}

static void on_message(client *c, const char *m, size_t len) {
  uint64_t now = now_us();
  c->rx_msgs++;
  if (c->st == C_OPEN) {
    const char *p = memmem(m, len, "\"pId\":\"", 7);
    if (!p) return; /* not the join packet (yet) */
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
  if (G.sc == S_MOVE || G.sc == S_FANOUT || G.sc == S_CPU) {
    client *s = sender_of(c);
    double x;
    if (s && s->pidlen && find_x(m, len, s->pid, s->pidlen, &x)) deliver(c, s, x, now);
  }
}

static void write_move(client *c) {
  unsigned char buf[LWS_PRE + 128];
  uint32_t seq = c->seq + 1;
  uint32_t r = seq % LG_SEQ_MOD;
  int n = snprintf((char *)buf + LWS_PRE, 128, "{\"action\":\"move\",\"value\":{\"x\":%u.%03u,\"y\":%d}}",
                   r / 1000, r % 1000, 1 + c->idx % 999);
  uint64_t t = now_us();
  if (lws_write(c->wsi, buf + LWS_PRE, (size_t)n, LWS_WRITE_TEXT) < n) return;
  c->seq = seq;
  c->ring[seq % LG_RING] = (sent_rec){seq, t};
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
      while (cap < c->rxlen + len + 1) cap *= 2;
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
    if (c && c->st == C_READY && c->want) {
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
        if (!G.first_error[0]) snprintf(G.first_error, sizeof G.first_error, "closed before the first packet");
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

static void tick_cb(lws_sorted_usec_list_t *sul) {
  lws_sul_schedule(G.ctx, 0, sul, tick_cb, 1000); /* keep lws_service returning every ms */
}

static void start_client(int i) {
  client *c = &G.c[i];
  char path[512];
  if (G.sc == S_ROOMS)
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
  c->idx = i;
  c->st = C_CONNECTING;
  c->t_start = now_us();
  G.inflight++;
  G.started++;
  if (!lws_client_connect_via_info(&ci)) {
    if (c->st == C_CONNECTING) { /* no CONNECTION_ERROR callback came */
      c->st = C_FAILED;
      G.inflight--;
      G.failed++;
      if (!G.first_error[0]) snprintf(G.first_error, sizeof G.first_error, "connect failed at once");
    }
  }
}

/* The moves due now go to the senders, round robin. */
static void send_tick(void) {
  if (!G.sending || G.total_rate <= 0 || !G.nsenders) return;
  uint64_t now = now_us();
  uint64_t due = (uint64_t)((double)(now - G.send_t0) * G.total_rate / 1e6);
  if (due <= G.issued) return;
  uint64_t k = due - G.issued;
  G.issued = due;
  for (uint64_t i = 0; i < k; i++) {
    client *c = G.sc == S_FANOUT ? G.writer : &G.c[G.rr++ % G.n];
    if (c->st != C_READY || !c->wsi) continue;
    if (c->want++ == 0) lws_callback_on_writable(c->wsi);
  }
}

static void service(void) {
  if (lws_service(G.ctx, 0) < 0) die("lws_service failed");
  send_tick();
  if (G.max_time_s > 0 && now_us() > G.deadline_all && !G.interrupted) {
    G.interrupted = true;
    note("--max-time reached: stopping with what was measured");
  }
}

static void run_for(double secs) {
  uint64_t end = now_us() + (uint64_t)(secs * 1e6);
  while (now_us() < end && !G.interrupted) service();
}

/* Connect clients [from, to) with at most inflight_cap joins pending; wait
 * until all of them joined or failed, or timeout. Returns the elapsed s. */
static double connect_range(int from, int to, double timeout_s) {
  uint64_t t0 = now_us(), end = t0 + (uint64_t)(timeout_s * 1e6);
  int next = from;
  while (!G.interrupted) {
    while (next < to && G.inflight < G.inflight_cap) start_client(next++);
    int done = 0;
    for (int i = from; i < to; i++) /* cheap enough: N <= 20000, a few hundred loops */
      if (G.c[i].st != C_CONNECTING && G.c[i].st != C_OPEN && G.c[i].st != C_NONE) done++;
    if (next >= to && done == to - from) break;
    if (now_us() > end) {
      note("timeout: %d of %d clients joined after %.1f s", G.ready, to, timeout_s);
      break;
    }
    service();
  }
  return (double)(now_us() - t0) / 1e6;
}

static uint64_t backlog(void) {
  uint64_t b = 0;
  if (G.sc == S_FANOUT) {
    if (!G.writer) return 0;
    for (int i = 0; i < G.n; i++)
      if (G.c[i].st == C_READY) b += G.writer->seq - G.c[i].acked;
  } else {
    for (int i = 0; i < G.n; i++)
      if (G.c[i].st == C_READY) b += G.c[i].seq - G.c[i].acked;
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
  run_for(G.dur_s);
  double el = (double)(now_us() - G.m_t0) / 1e6;
  double srv1 = proc_cpu_s(G.pid), lg1 = self_cpu_s();
  G.sending = false;
  s.sent = (double)G.m_sent / el;
  s.actions = (double)G.m_echo / el;
  s.delivered = (double)G.m_msgs / el;
  s.mbps = (double)G.m_bytes / el / 1e6;
  uint64_t echoes = G.m_echo;
  /* drain: latencies of moves sent in the window keep counting */
  uint64_t end = now_us() + (uint64_t)(G.drain_s * 1e6);
  while (now_us() < end && !G.interrupted) {
    for (int i = 0; i < G.n; i++)
      if (G.c[i].want) G.c[i].want = 0; /* nothing more goes out */
    if (!backlog()) break;
    service();
  }
  G.measuring = false;
  s.backlog = backlog();
  s.drained = s.backlog == 0;
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
  } else if (!s.drained) {
    s.ok = false;
    s.why = "backlog did not drain";
  }
  return s;
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

static void json_step(const step_t *s) {
  fputc('{', jf);
  jfirst = true;
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
  jbool("ok", s->ok);
  jstr("verdict", s->why);
  fputc('}', jf);
  jfirst = false;
}

static void fmt_ms(char *b, size_t n, double v) {
  if (v < 0)
    snprintf(b, n, "-");
  else if (v < 10)
    snprintf(b, n, "%.2f", v);
  else
    snprintf(b, n, "%.1f", v);
}

/* ---------------------------------------------------------------- main */

static void usage(void) {
  fputs(
      "usage: loadgen --url ws://127.0.0.1:PORT --scenario ramp|move|fanout|idle|rooms|cpu [options]\n"
      "  --clients N        connections (default 100, at most 20000)\n"
      "  --room NAME        room id (default bench-<scenario>-<pid>); rooms: prefix of <NAME>-<i>\n"
      "  --base PATH        party path (default /parties/main)\n"
      "  --rate R           move: moves/s per client; fanout/cpu: writer / per-client moves/s\n"
      "  --sweep A:F:M      move/fanout: total moves/s A, A*F, ... up to M; stop at saturation\n"
      "  --rates a,b,c      move/fanout: explicit total moves/s steps\n"
      "  --warmup S         per step (default 1)     --duration S   measured per step (default 2)\n"
      "  --drain S          per step (default 3)     --settle S     idle/rooms (default 2)\n"
      "  --timeout S        joining (default 30)     --max-time S   whole run (default 300)\n"
      "  --inflight K       joins pending at once (default 256)\n"
      "  --pid PID          server process: RSS (/proc/PID/status) and CPU (/proc/PID/stat)\n"
      "  --label NAME       name of the target in the output\n"
      "  --json FILE|-      write the JSON result (default: none)\n"
      "  --quiet            no progress notes on stderr\n",
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
    while (*he && *he != ':' && *he != '/') he++;
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

int main(int argc, char **argv) {
  const char *url = NULL, *sweep = NULL, *rates = NULL;
  G.sc = S_MOVE;
  G.n = 100;
  G.rate = 1;
  G.warm_s = 1;
  G.dur_s = 2;
  G.drain_s = 3;
  G.settle_s = 2;
  G.timeout_s = 30;
  G.max_time_s = 300;
  G.inflight_cap = 256;
  snprintf(G.base, sizeof G.base, "/parties/main");
  bool have_sc = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (!strcmp(a, name) && v && (i++, 1))
    if (OPT("--url"))
      url = v;
    else if (OPT("--scenario")) {
      int k = -1;
      for (int j = 0; j < 6; j++)
        if (!strcmp(v, scenario_names[j])) k = j;
      if (k < 0) die("unknown scenario %s", v);
      G.sc = (scenario_t)k;
      have_sc = true;
    } else if (OPT("--clients"))
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
    else if (OPT("--warmup"))
      G.warm_s = atof(v);
    else if (OPT("--duration"))
      G.dur_s = atof(v);
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
  if (!url || !have_sc) usage();
  if (G.n < 1 || G.n > LG_MAX_CLIENTS) die("--clients must be 1..%d", LG_MAX_CLIENTS);
  if (G.sc == S_FANOUT && G.n < 2) die("fanout needs --clients >= 2 (one writer, readers)");
  if (G.dur_s <= 0 || G.dur_s > 600 || G.warm_s < 0 || G.warm_s > 600 || G.timeout_s <= 0 ||
      G.timeout_s > 600 || G.max_time_s <= 0 || G.max_time_s > 3600 || G.drain_s < 0 ||
      G.drain_s > 60 || G.settle_s < 0 || G.settle_s > 60)
    die("durations out of range (duration/warmup/timeout <= 600 s, max-time <= 3600 s)");
  if (G.inflight_cap < 1) G.inflight_cap = 1;
  if ((G.sc == S_IDLE || G.sc == S_ROOMS) && G.pid <= 0) die("%s needs --pid", scenario_names[G.sc]);
  parse_url(url);
  if (!G.room[0]) snprintf(G.room, sizeof G.room, "bench-%s-%ld", scenario_names[G.sc], (long)getpid());
  if (!G.label[0]) snprintf(G.label, sizeof G.label, "%s:%d", G.host, G.port);
  if (sweep) {
    double a = 0, f = 0, m = 0;
    if (sscanf(sweep, "%lf:%lf:%lf", &a, &f, &m) != 3 || a <= 0 || f <= 1 || m < a)
      die("--sweep FROM:FACTOR:MAX, FACTOR > 1");
    for (double r = a; r <= m * 1.0001 && G.nrates < LG_MAX_STEPS; r *= f) G.rates[G.nrates++] = r;
  } else if (rates) {
    char *dup = strdup(rates), *save = NULL;
    for (char *t = strtok_r(dup, ",", &save); t && G.nrates < LG_MAX_STEPS; t = strtok_r(NULL, ",", &save))
      if (atof(t) > 0) G.rates[G.nrates++] = atof(t);
    free(dup);
  }
  if (!G.nrates) {
    double per = G.rate;
    G.rates[G.nrates++] = G.sc == S_FANOUT ? per : per * G.n;
  }

  /* fds: one per connection plus slack */
  struct rlimit rl;
  if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < (rlim_t)G.n + 64)
    die("open-file limit %llu is too low for %d connections (ulimit -n)", (unsigned long long)rl.rlim_cur, G.n);
  signal(SIGPIPE, SIG_IGN);

  G.c = calloc((size_t)G.n, sizeof *G.c);
  if (!G.c) die("out of memory");
  for (int i = 0; i < G.n; i++) G.c[i].idx = i;
  bool moving = G.sc == S_MOVE || G.sc == S_FANOUT || G.sc == S_CPU;
  if (moving) {
    int ns = G.sc == S_FANOUT ? 1 : G.n;
    for (int i = 0; i < ns; i++) {
      G.c[i].ring = calloc(LG_RING, sizeof(sent_rec));
      if (!G.c[i].ring) die("out of memory");
    }
    G.nsenders = ns;
    G.writer = G.sc == S_FANOUT ? &G.c[0] : NULL;
  }

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
  G.ctx = lws_create_context(&info);
  if (!G.ctx) die("lws_create_context failed");
  lws_sul_schedule(G.ctx, 0, &G.tick, tick_cb, 1000);

  G.t_begin = now_us();
  G.deadline_all = G.t_begin + (uint64_t)(G.max_time_s * 1e6);
  int rc = 0;

  /* results */
  double join_s = -1, join_rate = -1;
  long rss0 = -1, rss1 = -1;
  double per_kb = -1;
  int measured_conns = 0;
  step_t steps[LG_MAX_STEPS];
  int nsteps = 0, sat = -1;
  const char *sat_why = NULL;

  if (G.sc == S_IDLE) {
    connect_range(0, 1, G.timeout_s);
    run_for(G.settle_s / 2);
    rss0 = proc_rss_kb(G.pid);
    int r0 = G.ready;
    join_s = connect_range(1, G.n, G.timeout_s);
    run_for(G.settle_s);
    rss1 = proc_rss_kb(G.pid);
    measured_conns = G.ready - r0;
    if (measured_conns > 0 && rss0 >= 0 && rss1 >= 0) per_kb = (double)(rss1 - rss0) / measured_conns;
  } else if (G.sc == S_ROOMS) {
    run_for(G.settle_s / 2);
    rss0 = proc_rss_kb(G.pid);
    join_s = connect_range(0, G.n, G.timeout_s);
    run_for(G.settle_s);
    rss1 = proc_rss_kb(G.pid);
    measured_conns = G.ready;
    if (measured_conns > 0 && rss0 >= 0 && rss1 >= 0) per_kb = (double)(rss1 - rss0) / measured_conns;
  } else {
    join_s = connect_range(0, G.n, G.timeout_s);
    if (moving && G.ready == G.n) {
      for (int k = 0; k < G.nrates && !G.interrupted; k++) {
        step_t s = run_step(G.rates[k]);
        steps[nsteps++] = s;
        note("step %.0f moves/s: %.0f actions/s, %.0f packets/s, p50 %.2f ms, p99 %.2f ms, %s", s.offered,
             s.actions, s.delivered, s.p50, s.p99, s.why);
        if (s.ok) {
          sat = nsteps - 1;
        } else {
          sat_why = s.why;
          break;
        }
        if (k > 0 && s.actions < 1.05 * steps[k - 1].actions && G.rates[k] > 1.2 * G.rates[k - 1]) {
          sat_why = "throughput plateau";
          break;
        }
      }
      if (!sat_why && G.nrates > 1) sat_why = "not saturated at the largest rate";
    }
  }
  if (join_s > 0 && G.ready > 0) join_rate = G.ready / join_s;
  int expected = G.n;
  if (G.ready < expected) rc = 1;
  if (moving && (nsteps == 0 || steps[0].samples == 0)) rc = 1;

  /* ---- human table ---- */
  char a[32], b[32], c3[32];
  printf("\n%s  scenario %s  clients %d  room %s\n", G.label, scenario_names[G.sc], G.n, G.room);
  printf("joined %d/%d in %.3f s (%.0f joins/s)", G.ready, G.n, join_s, join_rate);
  if (G.ready_h.n) {
    fmt_ms(a, sizeof a, h_pct_ms(&G.ready_h, 0.5));
    fmt_ms(b, sizeof b, h_pct_ms(&G.ready_h, 0.99));
    printf(", connect->first packet p50 %s ms p99 %s ms", a, b);
  }
  if (G.failed) printf(", %d failed (%s)", G.failed, G.first_error);
  if (G.closed_after_ready) printf(", %d closed by the server", G.closed_after_ready);
  printf("\n");
  if (G.sc == S_IDLE || G.sc == S_ROOMS)
    printf("server RSS %ld kB -> %ld kB: %.2f kB per %s (%d measured)\n", rss0, rss1, per_kb,
           G.sc == S_IDLE ? "idle connection" : "room (with its one connection)", measured_conns);
  if (nsteps) {
    printf("| offered/s | sent/s | actions/s | delivered/s | MB/s | p50 ms | p99 ms | max ms | srv CPU%% | "
           "CPU s/100k | lg CPU%% | verdict |\n");
    printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (int k = 0; k < nsteps; k++) {
      step_t *s = &steps[k];
      fmt_ms(a, sizeof a, s->p50);
      fmt_ms(b, sizeof b, s->p99);
      fmt_ms(c3, sizeof c3, s->max_ms);
      printf("| %.0f | %.0f | %.0f | %.0f | %.2f | %s | %s | %s | %.0f | %.3f | %.0f | %s%s |\n", s->offered, s->sent,
             s->actions, s->delivered, s->mbps, a, b, c3, s->srv_cpu_pct, s->cpu_per_100k, s->lg_cpu_pct, s->why,
             k == sat ? " (best)" : "");
    }
    if (G.nrates > 1) {
      if (sat >= 0)
        printf("saturation: %.0f actions/s, %.0f delivered/s with p99 %.2f ms (next: %s)\n", steps[sat].actions,
               steps[sat].delivered, steps[sat].p99, sat_why ? sat_why : "-");
      else
        printf("saturation: below the first step (%s)\n", sat_why ? sat_why : "-");
    }
  }
  fflush(stdout);

  /* ---- JSON ---- */
  if (G.json) {
    jf = strcmp(G.json, "-") ? fopen(G.json, "w") : stdout;
    if (!jf) die("cannot write %s: %s", G.json, strerror(errno));
    fputc('{', jf);
    jfirst = true;
    jstr("label", G.label);
    jstr("scenario", scenario_names[G.sc]);
    jint("clients", G.n);
    jstr("room", G.room);
    jint("joined", G.ready);
    jint("failed", G.failed);
    jint("closed_by_server", G.closed_after_ready);
    jnum("join_s", join_s);
    jnum("joins_per_s", join_rate);
    jnum("first_packet_p50_ms", h_pct_ms(&G.ready_h, 0.5));
    jnum("first_packet_p99_ms", h_pct_ms(&G.ready_h, 0.99));
    if (G.sc == S_IDLE || G.sc == S_ROOMS) {
      jint("rss_before_kb", rss0);
      jint("rss_after_kb", rss1);
      jnum(G.sc == S_IDLE ? "kb_per_connection" : "kb_per_room", per_kb);
    }
    if (nsteps) {
      jkey("steps");
      fputc('[', jf);
      for (int k = 0; k < nsteps; k++) {
        if (k) fputc(',', jf);
        json_step(&steps[k]);
      }
      fputc(']', jf);
      jfirst = false;
      jkey("saturation");
      if (sat >= 0) {
        json_step(&steps[sat]);
      } else
        fputs("null", jf);
      jstr("saturation_reason", sat_why ? sat_why : "");
    }
    jbool("interrupted", G.interrupted);
    jint("exit", rc);
    fputs("}\n", jf);
    if (jf != stdout) fclose(jf);
  }

  lws_sul_cancel(&G.tick);
  lws_context_destroy(G.ctx);
  for (int i = 0; i < G.n; i++) {
    free(G.c[i].rx);
    free(G.c[i].ring);
  }
  free(G.c);
  return rc;
}

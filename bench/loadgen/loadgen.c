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

#include "../common/genlib.h"

#define LG_MAX_CLIENTS 20000
#define LG_RING 1024         /* in-flight moves remembered per mover */
#define LG_WRITER_RING 65536 /* ... and for the fan-out writer */
#define LG_SEQ_MOD 1000000   /* x = (seq % LG_SEQ_MOD) / 1000 */
#define LG_RX_FREE 65536     /* a client's assembly buffer above this is freed after use */
#define LG_QUIET_MS 300      /* join traffic is over after this long without a packet */

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
  gen_hist lat, ready_h;
} G;

/* ---------------------------------------------------------------- protocol */

static void give_ring(client *c, uint32_t size) {
  if (c->ring && c->ringsz >= size) return;
  free(c->ring);
  c->ring = calloc(size, sizeof(sent_rec));
  if (!c->ring) gen_die("out of memory");
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
      gen_h_add(&G.lat, now - e->t, 1);
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
  uint64_t now = gen_now_us();
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
    gen_h_add(&G.ready_h, now - c->t_start, 1);
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
  uint64_t t = gen_now_us();
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
      if (!nb) gen_die("out of memory");
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
  c->t_start = gen_now_us();
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
  uint64_t now = gen_now_us();
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
  uint64_t now = gen_now_us(), wake = t;
  if (G.sending && G.total_rate > 0) {
    uint64_t due = G.send_t0 + (uint64_t)((double)(G.issued + 1) * 1e6 / G.total_rate);
    if (due < now + 1000) due = now + 1000;
    if (due < wake) wake = due;
  }
  if (wake > G.deadline_all) wake = G.deadline_all;
  lws_sul_schedule(G.ctx, 0, &G.wake, wake_cb, wake > now ? (lws_usec_t)(wake - now) : 1);
  if (lws_service(G.ctx, 0) < 0) gen_die("lws_service failed");
  send_tick();
  if (!G.interrupted && gen_now_us() > G.deadline_all) {
    G.interrupted = true;
    gen_note("--max-time reached: stopping with what was measured");
  }
}

static void run_for(double secs) {
  uint64_t end = gen_now_us() + (uint64_t)(secs * 1e6);
  while (gen_now_us() < end && !G.interrupted)
    service_until(end);
}

/* Connect clients [from, to) with at most inflight_cap joins pending; wait
 * until each joined or failed, or timeout. Returns the elapsed seconds. */
static double connect_range(int from, int to, double timeout_s) {
  uint64_t t0 = gen_now_us(), end = t0 + (uint64_t)(timeout_s * 1e6);
  int next = from;
  while (!G.interrupted) {
    while (next < to && G.inflight < G.inflight_cap)
      start_client(next++);
    if (next >= to && G.inflight <= 0) break;
    if (gen_now_us() > end) {
      gen_note("timeout: %d of %d clients joined after %.1f s", G.ready, to, timeout_s);
      break;
    }
    service_until(end);
  }
  return (double)(gen_now_us() - t0) / 1e6;
}

/* Wait until no packet arrived for LG_QUIET_MS (the join traffic is over),
 * at most max_s. Returns the seconds waited. */
static double wait_quiet(double max_s) {
  uint64_t t0 = gen_now_us(), end = t0 + (uint64_t)(max_s * 1e6);
  while (!G.interrupted && gen_now_us() < end && gen_now_us() - G.last_rx < LG_QUIET_MS * 1000) {
    uint64_t q = G.last_rx + LG_QUIET_MS * 1000;
    service_until(q < end ? q : end);
  }
  return (double)(gen_now_us() - t0) / 1e6;
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
static gen_step run_step(double r) {
  gen_step s;
  memset(&s, 0, sizeof s);
  s.offered = r;
  G.total_rate = r;
  G.send_t0 = gen_now_us();
  G.issued = 0;
  G.sending = true;
  run_for(G.warm_s);
  memset(&G.lat, 0, sizeof G.lat);
  G.m_msgs = G.m_bytes = G.m_echo = G.m_sent = 0;
  double srv0 = gen_proc_cpu_s(G.pid), lg0 = gen_self_cpu_s();
  G.m_t0 = gen_now_us();
  G.measuring = true;
  /* At least --min-samples latencies: at 5 moves/s a 2 s window holds 10,
   * and a "p99" of 10 is their maximum. Longer windows, up to 30 s. */
  double per_s = G.mode == M_FANOUT ? r * G.n : r, win = G.dur_s;
  if (G.min_samples > 0 && per_s > 0 && G.min_samples / per_s > win)
    win = fmin(G.min_samples / per_s, 30);
  run_for(win);
  double el = (double)(gen_now_us() - G.m_t0) / 1e6;
  double srv1 = gen_proc_cpu_s(G.pid), lg1 = gen_self_cpu_s();
  G.sending = false;
  for (int i = 0; i < G.n; i++)
    G.c[i].want = 0; /* nothing more goes out */
  s.sent = (double)G.m_sent / el;
  s.actions = (double)G.m_echo / el;
  s.delivered = (double)G.m_msgs / el;
  s.mbps = (double)G.m_bytes / el / 1e6;
  uint64_t echoes = G.m_echo;
  /* drain: late patches of moves sent in the window still count for latency */
  uint64_t end = gen_now_us() + (uint64_t)(G.drain_s * 1e6);
  while (gen_now_us() < end && !G.interrupted && backlog())
    service_until(end);
  G.measuring = false;
  s.backlog = backlog();
  gen_step_finish(&s, &G.lat, el, echoes, srv0, srv1, lg0, lg1);
  return s;
}

/* Run the steps of a move/fanout phase until saturation. */
static void run_phase(gen_phase *ph, int mode) {
  G.mode = mode;
  /* start counting from where each sender is now */
  for (int i = 0; i < G.n; i++)
    G.c[i].acked = mode == M_FANOUT ? G.writer->seq : G.c[i].seq;
  gen_run_phase(ph, run_step, &G.interrupted, true);
  G.mode = M_NONE;
}

/* ---------------------------------------------------------------- output */

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

int main(int argc, char **argv) {
  gen_prog = "loadgen";
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
      G.quiet = gen_quiet = true;
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
        gen_die("unknown scenario %s", t);
    }
    free(dup);
  }
  if ((G.phases & P_ROOMS) && G.phases != P_ROOMS) gen_die("rooms runs alone");
  if (G.n < 1 || G.n > LG_MAX_CLIENTS) gen_die("--clients must be 1..%d", LG_MAX_CLIENTS);
  if (G.dur_s <= 0 || G.dur_s > 600 || G.warm_s < 0 || G.warm_s > 600 || G.timeout_s <= 0 ||
      G.timeout_s > 600 || G.max_time_s <= 0 || G.max_time_s > 3600 || G.drain_s < 0 ||
      G.drain_s > 60 || G.settle_s < 0 || G.settle_s > 60)
    gen_die("durations out of range (duration/warmup/timeout <= 600 s, max-time <= 3600 s)");
  if (G.inflight_cap < 1) G.inflight_cap = 1;
  if ((G.phases & (P_IDLE | P_ROOMS)) && G.pid <= 0) gen_die("idle and rooms need --pid");
  {
    struct sockaddr_storage sa;
    socklen_t salen;
    gen_parse_url(url, G.host, sizeof G.host, &G.port, &sa, &salen, G.addr);
  }
  if (!G.room[0]) snprintf(G.room, sizeof G.room, "bench-%ld", (long)getpid());
  if (!G.label[0]) snprintf(G.label, sizeof G.label, "%s:%d", G.host, G.port);

  gen_phase move = {.name = "move"}, fan = {.name = "fanout"}, cpu = {.name = "cpu"};
  gen_parse_rates(&move, sweep, rates, G.rate * G.n);
  gen_parse_rates(&fan, fsweep, NULL, G.writer_rate);
  cpu.rates[cpu.nrates++] = G.rate * G.n;

  /* fds: one per connection plus slack */
  struct rlimit rl;
  if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < (rlim_t)G.n + 64)
    gen_die("open-file limit %llu is too low for %d connections (ulimit -n)",
            (unsigned long long)rl.rlim_cur, G.n);
  signal(SIGPIPE, SIG_IGN);

  G.c = calloc((size_t)G.n, sizeof *G.c);
  if (!G.c) gen_die("out of memory");
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
  if (!G.ctx) gen_die("lws_create_context failed");

  G.t_begin = gen_now_us();
  G.deadline_all = G.t_begin + (uint64_t)(G.max_time_s * 1e6);

  double join_s = -1, join_rate = -1, quiet_s = -1;
  long rss0 = -1, rss1 = -1;
  double per_kb = -1;
  int measured = 0;

  if (G.phases & P_ROOMS) {
    run_for(G.settle_s / 2);
    rss0 = gen_proc_rss_kb(G.pid);
    join_s = connect_range(0, G.n, G.timeout_s);
    wait_quiet(G.timeout_s);
    run_for(G.settle_s);
    rss1 = gen_proc_rss_kb(G.pid);
    measured = G.ready;
  } else if (G.phases & P_IDLE) {
    connect_range(0, 1, G.timeout_s);
    wait_quiet(G.timeout_s);
    run_for(G.settle_s / 2);
    rss0 = gen_proc_rss_kb(G.pid);
    join_s = connect_range(1, G.n, G.timeout_s);
    quiet_s = wait_quiet(G.timeout_s);
    run_for(G.settle_s);
    rss1 = gen_proc_rss_kb(G.pid);
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
  gen_note("%d/%d joined in %.2f s; join traffic over %.2f s later", G.ready, G.n, join_s, quiet_s);

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
    gen_fmt_ms(a, sizeof a, gen_h_pct_ms(&G.ready_h, 0.5));
    gen_fmt_ms(b, sizeof b, gen_h_pct_ms(&G.ready_h, 0.99));
    printf(", connect->first packet p50 %s ms p99 %s ms", a, b);
  }
  if (G.failed) printf(", %d failed (%s)", G.failed, G.first_error);
  if (G.closed_after_ready) printf(", %d closed by the server", G.closed_after_ready);
  if (quiet_s >= 0) printf("; join traffic over %.2f s later", quiet_s);
  printf("\n");
  if (G.phases & (P_IDLE | P_ROOMS))
    printf("server RSS %ld kB -> %ld kB: %.2f kB per %s (%d measured)\n", rss0, rss1, per_kb,
           (G.phases & P_IDLE) ? "idle connection" : "room (with its one connection)", measured);
  if (move.nsteps) gen_print_phase(&move);
  if (fan.nsteps) gen_print_phase(&fan);
  if (cpu.nsteps) gen_print_phase(&cpu);
  if (G.interrupted) printf("(interrupted by --max-time)\n");
  fflush(stdout);

  /* ---- JSON ---- */
  if (G.json) {
    gen_json_begin(G.json);
    gen_jstr("label", G.label);
    gen_jstr("scenario", scen);
    gen_jint("clients", G.n);
    gen_jstr("room", G.room);
    gen_jopen("ramp");
    gen_jint("joined", G.ready);
    gen_jint("failed", G.failed);
    gen_jint("closed_by_server", G.closed_after_ready);
    gen_jnum("join_s", join_s);
    gen_jnum("joins_per_s", join_rate);
    gen_jnum("first_packet_p50_ms", gen_h_pct_ms(&G.ready_h, 0.5));
    gen_jnum("first_packet_p99_ms", gen_h_pct_ms(&G.ready_h, 0.99));
    gen_jnum("join_traffic_s", quiet_s);
    gen_jclose();
    if (G.phases & (P_IDLE | P_ROOMS)) {
      gen_jopen((G.phases & P_IDLE) ? "idle" : "rooms");
      gen_jint("rss_before_kb", rss0);
      gen_jint("rss_after_kb", rss1);
      gen_jint("measured", measured);
      gen_jnum((G.phases & P_IDLE) ? "kb_per_connection" : "kb_per_room", per_kb);
      gen_jclose();
    }
    if (move.nsteps) gen_json_phase(&move);
    if (fan.nsteps) gen_json_phase(&fan);
    if (cpu.nsteps) gen_json_phase(&cpu);
    gen_jbool("interrupted", G.interrupted);
    gen_jint("exit", rc);
    gen_json_end();
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

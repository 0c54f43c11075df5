/*
 * fastgen.c - the fast WebSocket load generator of the benchmarks: one
 * thread, one epoll set, its own minimal client side of RFC 6455 (upgrade
 * request, masked frames, a streaming frame reader), no libwebsockets, no
 * allocation per message. Built so that the generator is not the limit
 * where bench/loadgen (libwebsockets client) is: run it pinned to one core
 * and the server to the other (taskset, or --cpu).
 *
 * Bounded: --clients <= FG_MAX_CLIENTS, every wait has a deadline
 * (--timeout, --max-time), a message over FG_MAX_MSG closes that client;
 * loopback targets only (the host must resolve to 127.0.0.0/8 or ::1).
 * It speaks the Lunaroom / @signe/room wire protocol: connects to
 * ws://HOST:PORT<base>/<room>?id=<session>; the first packet carrying
 * "pId" is the client's join.
 *
 * Scenarios (--scenario, run in this order on one set of connections):
 *   ramp    always: N clients connect, at most --inflight joins pending;
 *           joins/s and the time until every client got its first packet.
 *           Then the join traffic is waited out (no packet for 300 ms).
 *   fanout  client 0 writes, everyone (itself included) reads. --action
 *           increment: {"action":"increment"} to a counter room; a reader
 *           takes "count":N and all increments up to N - base are delivered
 *           (base = the count when the phase starts). --action move:
 *           {"action":"move","value":{"x":seq/1000,"y":0}}; a reader takes
 *           the first "x": (only the writer moves).
 *   move    every client sends moves (game room), each recognises the
 *           patch of its own move: "<own pId>":{ ... "x":seq/1000.
 *   idle    (instead of ramp's one burst; needs --pid) server RSS per idle
 *           connection: RSS with client 0 alone in the room, then with all
 *           N, each read --settle s after the join traffic stopped.
 *   rooms   (alone; needs --pid) server RSS per room: RSS before, then with
 *           N clients each alone in room <room>-<i>, --settle s later.
 * Many rooms, many servers (cluster benchmarks): --rooms R puts client i in
 * room "<room>-<i % R>"; --url may be given up to FG_MAX_URLS times (the
 * nodes of one cluster): --spread room sends every client of room r to url
 * r % U (the only node asked for the room takes its lease: every client is
 * on its room's owner), --spread client alternates the clients of a room
 * over the urls (a load balancer without affinity: with 2 nodes, half the
 * clients are relayed). --pid may be given up to FG_MAX_PIDS times: the
 * server CPU of a step is their sum (100% = one core).
 * A rate sweep (--sweep FROM:FACTOR:MAX, total actions/s) stops at the first
 * step that misses: p99 > 100 ms, < 90% of the offered actions processed,
 * or a backlog not drained after --drain s (a step that kept up but missed
 * only on latency is run once more). Saturation = the last step that held;
 * with --refine K, K more steps bisect between it and the first miss.
 * A server that folds several actions into one packet delivers the older
 * ones late, not never: every action up to the one a packet shows counts
 * as delivered when that packet arrives.
 *
 * Output: a table on stdout and one JSON object (--json FILE); every step
 * has the generator's own CPU% (loadgen_cpu_pct: >= 95 means it was the
 * limit) and, with --pid, the server's. Exit status 0 = every client joined
 * and every phase got its packets back, 1 = not, 2 = usage / refused target.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../common/genlib.h"

#define FG_MAX_CLIENTS 20000
#define FG_MAX_MSG (16u << 20) /* one message (a join snapshot may be big) */
#define FG_MAX_OUT (1u << 20)  /* bytes a client may have waiting to be written */
#define FG_WRING (1u << 20)    /* send times kept for the fan-out writer */
#define FG_CRING 1024          /* ... and per mover */
#define FG_SEQ_MOD 1000000     /* x = (seq % FG_SEQ_MOD) / 1000 */
#define FG_QUIET_MS 300
#define FG_RBUF (1u << 20)
#define FG_MAX_URLS 8
#define FG_MAX_PIDS 8

typedef struct target { /* one --url */
  char host[256];
  int port;
  struct sockaddr_storage sa;
  socklen_t salen;
} target;

/* ---------------------------------------------------------------- state */

enum { C_NONE, C_CONNECTING, C_HANDSHAKE, C_OPEN, C_READY, C_CLOSED };
enum { M_NONE, M_FANOUT, M_MOVE };
enum { A_INCREMENT, A_MOVE };

typedef struct client {
  int fd, st, idx;
  char pid[40];
  uint8_t pidlen;
  bool want_out; /* EPOLLOUT armed */
  /* frame reader */
  uint8_t hdr[14];
  uint8_t hlen;        /* header bytes collected (0 = at a frame boundary) */
  uint8_t opcode, fin; /* of the frame being read */
  uint64_t remain;     /* payload bytes of the current frame still to come */
  uint8_t *msg;        /* assembly of a message split over reads or frames */
  uint32_t mlen, mcap;
  bool in_msg;      /* a data message is being assembled */
  uint8_t ctl[125]; /* control frame payload */
  uint8_t ctllen;
  /* writer side */
  uint8_t *out;
  uint32_t olen, ocap;
  uint64_t t_start;
  uint64_t seq, acked;
  uint64_t *ring; /* send time of seq % ringsz (movers) */
  uint32_t due;   /* actions scheduled, not yet written */
} client;

static struct {
  char room[128], base[128], label[300];
  target t[FG_MAX_URLS];
  int nurl, rooms; /* rooms 0: every client in --room itself */
  bool spread_clients;
  int n, inflight_cap, action, cpu;
  double warm_s, dur_s, drain_s, timeout_s, max_time_s, min_samples;
  long pids[FG_MAX_PIDS];
  int npid;
  const char *json;
  bool quiet, do_fanout, do_move, do_idle, do_rooms;
  double settle_s;
  /* runtime */
  int ep;
  client *c;
  int started, inflight, ready, failed, closed_after_ready;
  char first_error[200];
  uint64_t t_begin, deadline, last_rx;
  bool interrupted;
  uint64_t rng;
  int mode;
  bool sending;
  double rate;
  uint64_t send_t0, issued;
  uint32_t rr;
  client *writer;
  uint64_t *wring;
  uint64_t cbase; /* counter value at the start of the fan-out phase */
  uint64_t maxcount;
  bool measuring;
  uint64_t m_t0, m_msgs, m_bytes, m_acts, m_sent;
  gen_hist lat, ready_h;
  uint8_t rbuf[FG_RBUF];
} G;

static void fail(const char *why) {
  if (!G.first_error[0]) snprintf(G.first_error, sizeof G.first_error, "%s", why);
}

static void *xrealloc(void *p, size_t n) {
  p = realloc(p, n);
  if (!p) gen_die("out of memory");
  return p;
}

static uint64_t rnd(void) { /* xorshift64*: mask keys */
  G.rng ^= G.rng >> 12;
  G.rng ^= G.rng << 25;
  G.rng ^= G.rng >> 27;
  return G.rng * 2685821657736338717ull;
}

/* ---------------------------------------------------------------- sockets */

static void set_out(client *c, bool on) {
  if (c->want_out == on || c->fd < 0) return;
  c->want_out = on;
  struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
  epoll_ctl(G.ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void client_close(client *c, const char *why) {
  if (c->fd < 0) return;
  if (c->st == C_CONNECTING || c->st == C_HANDSHAKE || c->st == C_OPEN) {
    G.inflight--;
    G.failed++;
    fail(why);
  } else if (c->st == C_READY) {
    G.closed_after_ready++;
    fail(why);
  }
  epoll_ctl(G.ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
  c->st = C_CLOSED;
  c->olen = 0;
  c->due = 0;
}

/* Write what is pending, then data (either may be empty); keep the rest. */
static void client_write(client *c, const void *data, size_t len) {
  if (c->fd < 0) return;
  if (c->olen) {
    ssize_t n = write(c->fd, c->out, c->olen);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      client_close(c, "write failed");
      return;
    }
    if (n > 0) {
      memmove(c->out, c->out + n, c->olen - (size_t)n);
      c->olen -= (uint32_t)n;
    }
  }
  if (len && !c->olen) {
    ssize_t n = write(c->fd, data, len);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      client_close(c, "write failed");
      return;
    }
    if (n > 0) {
      data = (const uint8_t *)data + n;
      len -= (size_t)n;
    }
  }
  if (len) {
    if (c->olen + len > FG_MAX_OUT) {
      client_close(c, "the server does not read (output over 1 MiB)");
      return;
    }
    if (c->olen + len > c->ocap) {
      c->ocap = (uint32_t)(c->olen + len) * 2;
      c->out = xrealloc(c->out, c->ocap);
    }
    memcpy(c->out + c->olen, data, len);
    c->olen += (uint32_t)len;
  }
  set_out(c, c->olen > 0);
}

/* A masked client frame of payload p into dst (which holds len + 14). */
static size_t frame(uint8_t *dst, int opcode, const uint8_t *p, size_t len) {
  size_t h = 0;
  dst[h++] = (uint8_t)(0x80 | opcode);
  if (len < 126) {
    dst[h++] = (uint8_t)(0x80 | len);
  } else if (len < 65536) {
    dst[h++] = 0x80 | 126;
    dst[h++] = (uint8_t)(len >> 8);
    dst[h++] = (uint8_t)len;
  } else {
    dst[h++] = 0x80 | 127;
    for (int i = 7; i >= 0; i--)
      dst[h++] = (uint8_t)((uint64_t)len >> (8 * i));
  }
  uint32_t key = (uint32_t)rnd();
  memcpy(dst + h, &key, 4);
  h += 4;
  /* mask 8 bytes at a time: the key repeated twice */
  uint64_t k8 = (uint64_t)key | ((uint64_t)key << 32);
  uint8_t *o = dst + h;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t v;
    memcpy(&v, p + i, 8);
    v ^= k8;
    memcpy(o + i, &v, 8);
  }
  const uint8_t *kb = (const uint8_t *)&key;
  for (; i < len; i++)
    o[i] = p[i] ^ kb[i & 3];
  return h + len;
}

/* Client i's room number and its rank in that room. */
static int room_of(int i) {
  return G.rooms ? i % G.rooms : 0;
}
static int rank_in_room(int i) {
  return G.rooms ? i / G.rooms : i;
}

/* The --url client i connects to (see --spread). */
static const target *target_of(int i) {
  int r = room_of(i), k = G.spread_clients ? r + rank_in_room(i) : r;
  return &G.t[k % G.nurl];
}

/* The servers' CPU seconds (the sum over --pid), -1 if any is unknown. */
static double servers_cpu_s(void) {
  double sum = 0;
  for (int i = 0; i < G.npid; i++) {
    double v = gen_proc_cpu_s(G.pids[i]);
    if (v < 0) return -1;
    sum += v;
  }
  return G.npid ? sum : -1;
}

static void client_start(int i) {
  client *c = &G.c[i];
  const target *t = target_of(i);
  c->fd = socket(t->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) gen_die("socket: %s", strerror(errno));
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->st = C_CONNECTING;
  c->t_start = gen_now_us();
  G.inflight++;
  G.started++;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
  c->want_out = true;
  if (epoll_ctl(G.ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) gen_die("epoll_ctl: %s", strerror(errno));
  if (connect(c->fd, (const struct sockaddr *)&t->sa, t->salen) < 0 && errno != EINPROGRESS)
    client_close(c, strerror(errno));
}

static void send_upgrade(client *c) {
  char req[1100];
  static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char key[25], room[160];
  const target *t = target_of(c->idx);
  if (G.rooms)
    snprintf(room, sizeof room, "%s-%d", G.room, room_of(c->idx));
  else
    snprintf(room, sizeof room, "%s", G.room);
  for (int i = 0; i < 21; i++)
    key[i] = b64[rnd() % 64];
  key[21] = b64[(rnd() % 4) * 16]; /* 16 random bytes: 22 chars, the last carrying 2 bits */
  key[22] = '=', key[23] = '=', key[24] = 0;
  char room_sfx[16] = ""; /* rooms: each client in <room>-<i> */
  if (G.do_rooms) snprintf(room_sfx, sizeof room_sfx, "-%d", c->idx);
  int n = snprintf(req, sizeof req,
                   "GET %s/%s%s?id=fg%ld-%d HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                   "Origin: http://%s:%d\r\n\r\n",
                   G.base, room, room_sfx, (long)getpid(), c->idx, t->host, t->port, key, t->host,
                   t->port);
  c->st = C_HANDSHAKE;
  client_write(c, req, (size_t)n);
}

/* ---------------------------------------------------------------- protocol */

/* The number after key in m (digits, '.', '-'), or false. */
static bool num_after(const uint8_t *m, size_t len, const char *key, size_t klen, double *out) {
  const uint8_t *p = memmem(m, len, key, klen);
  if (!p) return false;
  p += klen;
  const uint8_t *end = m + len;
  char num[40];
  size_t k = 0;
  while (p < end && k < sizeof num - 1 && ((*p >= '0' && *p <= '9') || *p == '.' || *p == '-'))
    num[k++] = (char)*p++;
  if (!k) return false;
  num[k] = 0;
  *out = strtod(num, NULL);
  return true;
}

/* Seqs of sender s (ring of send times) up to full reached reader c now. */
static void deliver(client *c, uint64_t full, const uint64_t *ring, uint64_t ringsz,
                    uint64_t last_sent, uint64_t now, bool own) {
  if (full <= c->acked || full > last_sent) return;
  uint64_t from = c->acked + 1;
  if (full - from >= ringsz) from = full - ringsz + 1;
  if (G.measuring)
    for (uint64_t j = from; j <= full; j++) {
      uint64_t t = ring[j % ringsz];
      if (t >= G.m_t0) {
        gen_h_add(&G.lat, now - t, 1);
        if (own) G.m_acts++;
      }
    }
  c->acked = full;
}

/* x (wire) -> the full seq of a sender whose last seq is cur */
static uint64_t x_to_seq(double x, uint64_t cur) {
  long long r = llround(x * 1000.0);
  if (r < 0 || r >= FG_SEQ_MOD) return 0;
  uint64_t back = (uint64_t)(((long long)(cur % FG_SEQ_MOD) - r + FG_SEQ_MOD) % FG_SEQ_MOD);
  return back > cur ? 0 : cur - back;
}

static void on_message(client *c, const uint8_t *m, size_t len) {
  uint64_t now = gen_now_us();
  G.last_rx = now;
  double v;
  if (c->st == C_OPEN) {
    const uint8_t *p = memmem(m, len, "\"pId\":\"", 7);
    if (!p) return;
    p += 7;
    const uint8_t *q = memchr(p, '"', (size_t)(m + len - p));
    if (!q || (size_t)(q - p) >= sizeof c->pid) return;
    c->pidlen = (uint8_t)(q - p);
    memcpy(c->pid, p, c->pidlen);
    c->pid[c->pidlen] = 0;
    c->st = C_READY;
    G.ready++;
    G.inflight--;
    gen_h_add(&G.ready_h, now - c->t_start, 1);
    if (num_after(m, len, "\"count\":", 8, &v) && v > (double)G.maxcount) G.maxcount = (uint64_t)v;
    return;
  }
  if (G.measuring) {
    G.m_msgs++;
    G.m_bytes += len;
  }
  if (G.mode == M_FANOUT) {
    client *w = G.writer;
    if (G.action == A_INCREMENT) {
      if (num_after(m, len, "\"count\":", 8, &v) && v >= (double)G.cbase)
        deliver(c, (uint64_t)v - G.cbase, G.wring, FG_WRING, w->seq, now, c == w);
    } else if (num_after(m, len, "\"x\":", 4, &v)) {
      deliver(c, x_to_seq(v, w->seq), G.wring, FG_WRING, w->seq, now, c == w);
    }
  } else if (G.mode == M_MOVE) {
    char key[48];
    key[0] = '"';
    memcpy(key + 1, c->pid, c->pidlen);
    memcpy(key + 1 + c->pidlen, "\":{", 3);
    const uint8_t *p = memmem(m, len, key, c->pidlen + 4u);
    if (!p) return;
    const uint8_t *end = m + len,
                  *close = memchr(p + c->pidlen + 4, '}', (size_t)(end - p - c->pidlen - 4));
    if (!close) close = end;
    if (num_after(p, (size_t)(close - p), "\"x\":", 4, &v))
      deliver(c, x_to_seq(v, c->seq), c->ring, FG_CRING, c->seq, now, true);
  } else if (num_after(m, len, "\"count\":", 8, &v) && v > (double)G.maxcount) {
    G.maxcount = (uint64_t)v;
  }
}

static void on_control(client *c, int opcode) {
  if (opcode == 9) { /* ping: pong with the same payload */
    uint8_t f[140];
    size_t n = frame(f, 10, c->ctl, c->ctllen);
    client_write(c, f, n);
  } else if (opcode == 8) {
    char why[64];
    int code = c->ctllen >= 2 ? (c->ctl[0] << 8 | c->ctl[1]) : 1005;
    snprintf(why, sizeof why, "closed by the server (%d)", code);
    client_close(c, why);
  }
}

/* Feed n received bytes to c's frame reader. Returns false once c closed. */
static bool feed(client *c, const uint8_t *p, size_t n) {
  while (n && c->fd >= 0) {
    if (c->remain == 0) {
      /* at a frame header: take it straight from p when whole */
      const uint8_t *h;
      if (c->hlen == 0 && n >= 2) {
        h = p;
      } else {
        while (c->hlen < 2 && n) {
          c->hdr[c->hlen++] = *p++;
          n--;
        }
        if (c->hlen < 2) return true;
        h = c->hdr;
      }
      uint8_t l7 = h[1] & 0x7f;
      size_t need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + ((h[1] & 0x80) ? 4 : 0);
      if (h == p) {
        if (n < need) { /* split header: collect it */
          memcpy(c->hdr, p, n);
          c->hlen = (uint8_t)n;
          return true;
        }
      } else {
        while (c->hlen < need && n) {
          c->hdr[c->hlen++] = *p++;
          n--;
        }
        if (c->hlen < need) return true;
      }
      if (h[1] & 0x80) {
        client_close(c, "masked frame from the server");
        return false;
      }
      uint64_t len = l7;
      if (l7 == 126)
        len = (uint64_t)h[2] << 8 | h[3];
      else if (l7 == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
          len = len << 8 | h[2 + i];
      }
      c->fin = h[0] >> 7;
      c->opcode = h[0] & 0x0f;
      if (h == p) {
        p += need;
        n -= need;
      }
      c->hlen = 0;
      if (c->opcode >= 8) {
        if (len > 125 || !c->fin) {
          client_close(c, "bad control frame");
          return false;
        }
        c->ctllen = 0;
      } else if (c->opcode != 0) {
        c->mlen = 0;
        c->in_msg = true;
      }
      if (c->opcode < 8 && (uint64_t)c->mlen + len > FG_MAX_MSG) {
        client_close(c, "message too big");
        return false;
      }
      c->remain = len;
      if (len == 0) {
        if (c->opcode >= 8)
          on_control(c, c->opcode);
        else if (c->fin) {
          c->in_msg = false;
          on_message(c, c->msg ? c->msg : (const uint8_t *)"", c->mlen);
        }
        continue;
      }
      /* the usual case: a whole unfragmented data frame in the buffer */
      if (c->opcode < 8 && c->fin && c->mlen == 0 && n >= len) {
        c->remain = 0;
        c->in_msg = false;
        on_message(c, p, (size_t)len);
        p += len;
        n -= (size_t)len;
        continue;
      }
    }
    size_t take = n < c->remain ? n : (size_t)c->remain;
    if (c->opcode >= 8) {
      memcpy(c->ctl + c->ctllen, p, take);
      c->ctllen = (uint8_t)(c->ctllen + take);
    } else {
      if (c->mlen + take > c->mcap) {
        c->mcap = (uint32_t)(c->mlen + take) * 2;
        c->msg = xrealloc(c->msg, c->mcap);
      }
      memcpy(c->msg + c->mlen, p, take);
      c->mlen += (uint32_t)take;
    }
    p += take;
    n -= take;
    c->remain -= take;
    if (c->remain == 0) {
      if (c->opcode >= 8) {
        on_control(c, c->opcode);
      } else if (c->fin) {
        c->in_msg = false;
        on_message(c, c->msg, c->mlen);
        c->mlen = 0;
        if (c->mcap > 65536) { /* do not keep a join snapshot's buffer */
          free(c->msg);
          c->msg = NULL;
          c->mcap = 0;
        }
      }
    }
  }
  return c->fd >= 0;
}

/* The upgrade answer, collected in c->msg until its blank line (at most
 * 16 KiB of headers); what follows it in the same read (a server may send
 * its first packets right behind the 101) goes to the frame reader. */
static void feed_handshake(client *c, const uint8_t *p, size_t n) {
  size_t take = n < 16384 - c->mlen ? n : 16384 - c->mlen;
  if (!c->mcap) {
    c->mcap = 16384;
    c->msg = xrealloc(c->msg, c->mcap);
  }
  memcpy(c->msg + c->mlen, p, take);
  c->mlen += (uint32_t)take;
  uint8_t *e = memmem(c->msg, c->mlen, "\r\n\r\n", 4);
  if (!e) {
    if (c->mlen >= 16384) client_close(c, "upgrade answer too long");
    return;
  }
  if (c->mlen < 12 || memcmp(c->msg + 9, "101", 3)) {
    char why[64];
    snprintf(why, sizeof why, "upgrade refused: %.12s", (const char *)c->msg);
    client_close(c, why);
    return;
  }
  size_t hl = (size_t)(e + 4 - c->msg), rest = c->mlen - hl;
  c->st = C_OPEN;
  uint8_t tmp[16384];
  memcpy(tmp, c->msg + hl, rest);
  c->mlen = 0;
  free(c->msg);
  c->msg = NULL;
  c->mcap = 0;
  if (rest && !feed(c, tmp, rest)) return;
  if (take < n) feed(c, p + take, n - take);
}

static void on_readable(client *c) {
  for (int k = 0; k < 4 && c->fd >= 0; k++) {
    ssize_t n = read(c->fd, G.rbuf, sizeof G.rbuf);
    if (n == 0) {
      client_close(c, "connection closed by the server");
      return;
    }
    if (n < 0) {
      if (errno != EAGAIN && errno != EINTR) client_close(c, strerror(errno));
      return;
    }
    if (c->st == C_HANDSHAKE)
      feed_handshake(c, G.rbuf, (size_t)n);
    else
      feed(c, G.rbuf, (size_t)n);
    if ((size_t)n < sizeof G.rbuf) return;
  }
}

static void on_writable(client *c) {
  if (c->st == C_CONNECTING) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
      client_close(c, strerror(err));
      return;
    }
    send_upgrade(c);
    return;
  }
  client_write(c, NULL, 0);
}

/* Write the actions c has due, all frames in one write(). */
static void flush_due(client *c) {
  if (c->st != C_READY || !c->due || c->olen) return;
  uint8_t buf[64 * 80];
  size_t used = 0;
  uint64_t t = gen_now_us();
  while (c->due && used + 80 <= sizeof buf) {
    char text[80];
    int n;
    uint64_t seq = c->seq + 1;
    if (G.action == A_INCREMENT && G.mode == M_FANOUT) {
      n = snprintf(text, sizeof text, "{\"action\":\"increment\"}");
    } else {
      uint32_t r = (uint32_t)(seq % FG_SEQ_MOD);
      n = snprintf(text, sizeof text, "{\"action\":\"move\",\"value\":{\"x\":%u.%03u,\"y\":0}}",
                   r / 1000, r % 1000);
    }
    used += frame(buf + used, 1, (const uint8_t *)text, (size_t)n);
    c->seq = seq;
    if (c == G.writer && G.mode == M_FANOUT)
      G.wring[seq % FG_WRING] = t;
    else
      c->ring[seq % FG_CRING] = t;
    c->due--;
    if (G.measuring) G.m_sent++;
  }
  client_write(c, buf, used);
}

/* ---------------------------------------------------------------- the loop */

static void send_tick(void) {
  if (!G.sending || G.rate <= 0) return;
  uint64_t due = (uint64_t)((double)(gen_now_us() - G.send_t0) * G.rate / 1e6);
  if (due <= G.issued) return;
  uint64_t k = due - G.issued;
  G.issued = due;
  if (G.mode == M_FANOUT) {
    if (G.writer->st == C_READY) G.writer->due += (uint32_t)k;
    flush_due(G.writer);
    return;
  }
  for (uint64_t i = 0; i < k; i++) {
    client *c = &G.c[G.rr++ % (uint32_t)G.n];
    if (c->st == C_READY) {
      c->due++;
      flush_due(c);
    }
  }
}

static void service_until(uint64_t t) {
  uint64_t now = gen_now_us(), wake = t;
  if (G.sending && G.rate > 0) {
    uint64_t due = G.send_t0 + (uint64_t)((double)(G.issued + 1) * 1e6 / G.rate);
    if (due < wake) wake = due;
  }
  if (wake > G.deadline) wake = G.deadline;
  int ms = wake > now ? (int)((wake - now + 999) / 1000) : 0;
  static struct epoll_event evs[1024];
  int n = epoll_wait(G.ep, evs, 1024, ms);
  for (int i = 0; i < n; i++) {
    client *c = evs[i].data.ptr;
    if (c->fd < 0) continue;
    if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
      if (c->st == C_CONNECTING || c->olen) on_writable(c);
      if (c->fd >= 0 && c->st >= C_READY && c->due) flush_due(c);
    }
    if (c->fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && c->st != C_CONNECTING)
      on_readable(c);
  }
  send_tick();
  if (!G.interrupted && gen_now_us() > G.deadline) {
    G.interrupted = true;
    gen_note("--max-time reached: stopping with what was measured");
  }
}

static void run_for(double s) {
  uint64_t end = gen_now_us() + (uint64_t)(s * 1e6);
  while (!G.interrupted && gen_now_us() < end)
    service_until(end);
}

/* Connect clients from..to-1, at most --inflight pending at once. */
static double connect_range(int from, int to, double timeout_s) {
  uint64_t t0 = gen_now_us(), end = t0 + (uint64_t)(timeout_s * 1e6);
  int next = from;
  while (!G.interrupted) {
    while (next < to && G.inflight < G.inflight_cap)
      client_start(next++);
    if (next >= to && G.inflight <= 0) break;
    if (gen_now_us() > end) {
      gen_note("timeout: %d of %d clients joined after %.1f s", G.ready, to, timeout_s);
      break;
    }
    service_until(end);
  }
  return (double)(gen_now_us() - t0) / 1e6;
}

static double wait_quiet(double max_s) {
  uint64_t t0 = gen_now_us(), end = t0 + (uint64_t)(max_s * 1e6);
  while (!G.interrupted && gen_now_us() < end && gen_now_us() - G.last_rx < FG_QUIET_MS * 1000u) {
    uint64_t q = G.last_rx + FG_QUIET_MS * 1000u;
    service_until(q < end ? q : end);
  }
  return (double)(gen_now_us() - t0) / 1e6;
}

static uint64_t backlog(void) {
  uint64_t b = 0;
  for (int i = 0; i < G.n; i++) {
    client *c = &G.c[i];
    if (c->st != C_READY) continue;
    b += (G.mode == M_FANOUT ? G.writer->seq : c->seq) - c->acked;
  }
  return b;
}

static gen_step run_step(double r) {
  gen_step s;
  memset(&s, 0, sizeof s);
  s.offered = r;
  G.rate = r;
  G.send_t0 = gen_now_us();
  G.issued = 0;
  G.sending = true;
  run_for(G.warm_s);
  memset(&G.lat, 0, sizeof G.lat);
  G.m_msgs = G.m_bytes = G.m_acts = G.m_sent = 0;
  double srv0 = servers_cpu_s(), lg0 = gen_self_cpu_s();
  G.m_t0 = gen_now_us();
  G.measuring = true;
  double win = G.dur_s;
  if (G.min_samples > 0 && G.min_samples / r > win) win = fmin(G.min_samples / r, 30);
  run_for(win);
  double el = (double)(gen_now_us() - G.m_t0) / 1e6;
  double srv1 = servers_cpu_s(), lg1 = gen_self_cpu_s();
  G.sending = false;
  for (int i = 0; i < G.n; i++)
    G.c[i].due = 0;
  s.sent = (double)G.m_sent / el;
  s.actions = (double)G.m_acts / el;
  s.delivered = (double)G.m_msgs / el;
  s.mbps = (double)G.m_bytes / el / 1e6;
  uint64_t end = gen_now_us() + (uint64_t)(G.drain_s * 1e6);
  while (!G.interrupted && gen_now_us() < end && backlog())
    service_until(end);
  G.measuring = false;
  s.backlog = backlog();
  gen_step_finish(&s, &G.lat, el, G.m_acts, srv0, srv1, lg0, lg1);
  return s;
}

static void run_phase(gen_phase *ph, int mode) {
  G.mode = mode;
  if (mode == M_FANOUT) {
    G.cbase = G.maxcount; /* every reader has seen it: the join traffic is over */
    G.writer->seq = 0;
    for (int i = 0; i < G.n; i++)
      G.c[i].acked = 0;
  } else {
    for (int i = 0; i < G.n; i++)
      G.c[i].acked = G.c[i].seq;
  }
  gen_run_phase(ph, run_step, &G.interrupted, false);
  if (mode == M_FANOUT) G.maxcount = G.cbase + G.writer->seq;
  G.mode = M_NONE;
}

/* ---------------------------------------------------------------- main */

static void usage(void) {
  fputs("usage: fastgen --url ws://127.0.0.1:PORT --scenario ramp|idle|fanout|move|rooms "
        "[options]\n"
        "  --url again (at most 8): several servers (cluster nodes), see --spread\n"
        "  --clients N (100, at most 20000)   --inflight K (256) joins pending at once\n"
        "  --room NAME (bench-<pid>)  --base PATH (/parties/main)\n"
        "  --rooms R   client i in room NAME-<i % R> (move: every client moves in its room)\n"
        "  --spread room|client   room (default): every client of room r on url r % U;\n"
        "            client: the clients of a room alternate over the urls\n"
        "  --action increment|move   fanout: what the writer sends (default increment)\n"
        "  --sweep FROM:FACTOR:MAX   total actions/s per step; --rate R: one step\n"
        "  --refine K (0)  after the first step that misses, K steps bisecting the rate\n"
        "            between it and the last one that held (the best: the highest that held)\n"
        "  --warmup S (1) --duration S (2) --drain S (2) --min-samples K (100)\n"
        "  --timeout S (30) joining   --max-time S (300) whole run\n"
        "  --pid PID   server CPU from /proc/PID/stat (again: the sum of several)\n"
        "  --cpu N  pin this process to CPU N\n"
        "  --settle S (2) idle/rooms: wait before reading the server's RSS\n"
        "  --label NAME  --json FILE|-  --quiet\n",
        stderr);
  exit(2);
}

int main(int argc, char **argv) {
  gen_prog = "fastgen";
  const char *urls[FG_MAX_URLS], *scen = NULL, *sweep = NULL;
  int nurl = 0;
  double rate = 100;
  int refine_steps = 0;
  G.n = 100;
  G.inflight_cap = 256;
  G.warm_s = 1;
  G.dur_s = 2;
  G.drain_s = 2;
  G.min_samples = 100;
  G.timeout_s = 30;
  G.max_time_s = 300;
  G.settle_s = 2;
  G.cpu = -1;
  snprintf(G.base, sizeof G.base, "/parties/main");
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (!strcmp(a, name) && v && (i++, 1))
    if (OPT("--url")) {
      if (nurl == FG_MAX_URLS) gen_die("at most %d --url", FG_MAX_URLS);
      urls[nurl++] = v;
    } else if (OPT("--rooms"))
      G.rooms = atoi(v);
    else if (OPT("--spread")) {
      if (!strcmp(v, "client"))
        G.spread_clients = true;
      else if (strcmp(v, "room"))
        gen_die("--spread is room or client");
    } else if (OPT("--scenario"))
      scen = v;
    else if (OPT("--clients"))
      G.n = atoi(v);
    else if (OPT("--inflight"))
      G.inflight_cap = atoi(v);
    else if (OPT("--room"))
      snprintf(G.room, sizeof G.room, "%s", v);
    else if (OPT("--base"))
      snprintf(G.base, sizeof G.base, "%s", v);
    else if (OPT("--action")) {
      if (!strcmp(v, "increment"))
        G.action = A_INCREMENT;
      else if (!strcmp(v, "move"))
        G.action = A_MOVE;
      else
        gen_die("--action is increment or move");
    } else if (OPT("--sweep"))
      sweep = v;
    else if (OPT("--refine"))
      refine_steps = atoi(v);
    else if (OPT("--rate"))
      rate = atof(v);
    else if (OPT("--warmup"))
      G.warm_s = atof(v);
    else if (OPT("--duration"))
      G.dur_s = atof(v);
    else if (OPT("--drain"))
      G.drain_s = atof(v);
    else if (OPT("--settle"))
      G.settle_s = atof(v);
    else if (OPT("--min-samples"))
      G.min_samples = atof(v);
    else if (OPT("--timeout"))
      G.timeout_s = atof(v);
    else if (OPT("--max-time"))
      G.max_time_s = atof(v);
    else if (OPT("--pid")) {
      if (G.npid == FG_MAX_PIDS) gen_die("at most %d --pid", FG_MAX_PIDS);
      G.pids[G.npid++] = atol(v);
    } else if (OPT("--cpu"))
      G.cpu = atoi(v);
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
  if (!nurl || !scen) usage();
  if (strstr(scen, "fanout")) G.do_fanout = true;
  if (strstr(scen, "move")) G.do_move = true;
  if (strstr(scen, "idle")) G.do_idle = true;
  if (strstr(scen, "rooms")) G.do_rooms = true;
  if (!G.do_fanout && !G.do_move && !G.do_idle && !G.do_rooms && !strstr(scen, "ramp"))
    gen_die("unknown scenario %s", scen);
  if (G.do_rooms && (G.do_fanout || G.do_move || G.do_idle)) gen_die("rooms runs alone");
  if ((G.do_idle || G.do_rooms) && G.npid != 1) gen_die("idle and rooms need one --pid");
  if (G.do_rooms && G.rooms)
    gen_die("the rooms scenario puts each client in its own room (no --rooms)");
  if (G.do_idle && G.n < 2) gen_die("idle needs --clients >= 2");
  if (G.settle_s < 0 || G.settle_s > 60) gen_die("--settle out of range");
  if (G.n < 1 || G.n > FG_MAX_CLIENTS) gen_die("--clients must be 1..%d", FG_MAX_CLIENTS);
  if (G.rooms < 0 || G.rooms > G.n) gen_die("--rooms must be 0..--clients");
  if (G.do_fanout && G.rooms > 1) gen_die("fanout has one writer: one room (no --rooms)");
  if (G.dur_s <= 0 || G.dur_s > 600 || G.warm_s < 0 || G.warm_s > 600 || G.drain_s < 0 ||
      G.drain_s > 60 || G.timeout_s <= 0 || G.timeout_s > 600 || G.max_time_s <= 0 ||
      G.max_time_s > 3600 || rate <= 0)
    gen_die("durations or rate out of range");
  if (G.inflight_cap < 1) G.inflight_cap = 1;
  G.nurl = nurl;
  for (int i = 0; i < nurl; i++) {
    target *t = &G.t[i];
    gen_parse_url(urls[i], t->host, sizeof t->host, &t->port, &t->sa, &t->salen, NULL);
  }
  if (!G.room[0]) snprintf(G.room, sizeof G.room, "bench-%ld", (long)getpid());
  if (!G.label[0]) {
    size_t used = 0;
    for (int i = 0; i < nurl && used < sizeof G.label; i++)
      used += (size_t)snprintf(G.label + used, sizeof G.label - used, "%s%s:%d", i ? "," : "",
                               G.t[i].host, G.t[i].port);
  }
  if (G.cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(G.cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0) gen_note("cannot pin to CPU %d", G.cpu);
  }
  gen_phase fan = {.name = "fanout"}, mv = {.name = "move"};
  gen_parse_rates(&fan, sweep, NULL, rate);
  gen_parse_rates(&mv, sweep, NULL, rate);
  if (refine_steps < 0 || refine_steps > 8) gen_die("--refine is 0..8");
  fan.refine = mv.refine = refine_steps;

  struct rlimit rl;
  if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < (rlim_t)G.n + 16) gen_die("open-file limit too low for %d connections", G.n);
  signal(SIGPIPE, SIG_IGN);
  G.rng = gen_now_us() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
  G.ep = epoll_create1(EPOLL_CLOEXEC);
  if (G.ep < 0) gen_die("epoll_create1: %s", strerror(errno));
  G.c = calloc((size_t)G.n, sizeof *G.c);
  if (!G.c) gen_die("out of memory");
  for (int i = 0; i < G.n; i++) {
    G.c[i].idx = i;
    G.c[i].fd = -1;
  }
  G.writer = &G.c[0];
  if (G.do_fanout) {
    G.wring = calloc(FG_WRING, sizeof *G.wring);
    if (!G.wring) gen_die("out of memory");
  }
  if (G.do_move)
    for (int i = 0; i < G.n; i++) {
      G.c[i].ring = calloc(FG_CRING, sizeof *G.c[i].ring);
      if (!G.c[i].ring) gen_die("out of memory");
    }
  G.t_begin = gen_now_us();
  G.deadline = G.t_begin + (uint64_t)(G.max_time_s * 1e6);

  double join_s, quiet_s = -1, per_kb = -1;
  long rss0 = -1, rss1 = -1;
  int measured = 0;
  if (G.do_rooms) {
    run_for(G.settle_s / 2);
    rss0 = gen_proc_rss_kb(G.pids[0]);
    join_s = connect_range(0, G.n, G.timeout_s);
    quiet_s = wait_quiet(G.timeout_s);
    run_for(G.settle_s);
    rss1 = gen_proc_rss_kb(G.pids[0]);
    measured = G.ready;
  } else if (G.do_idle) {
    connect_range(0, 1, G.timeout_s);
    wait_quiet(G.timeout_s);
    run_for(G.settle_s / 2);
    rss0 = gen_proc_rss_kb(G.pids[0]);
    join_s = connect_range(1, G.n, G.timeout_s);
    quiet_s = wait_quiet(G.timeout_s);
    run_for(G.settle_s);
    rss1 = gen_proc_rss_kb(G.pids[0]);
    measured = G.ready - 1;
  } else {
    join_s = connect_range(0, G.n, G.timeout_s);
  }
  if (measured > 0 && rss0 >= 0 && rss1 >= 0) per_kb = (double)(rss1 - rss0) / measured;
  bool all = G.ready == G.n;
  if (all && quiet_s < 0 && (G.do_fanout || G.do_move)) quiet_s = wait_quiet(G.timeout_s);
  gen_note("%d/%d joined in %.3f s (%.0f joins/s)", G.ready, G.n, join_s, G.ready / join_s);
  if (all && G.do_fanout) run_phase(&fan, M_FANOUT);
  if (all && G.do_move && !G.interrupted) run_phase(&mv, M_MOVE);
  int rc = all ? 0 : 1;
  if (G.do_fanout && (!fan.nsteps || !fan.steps[0].samples)) rc = 1;
  if (G.do_move && (!mv.nsteps || !mv.steps[0].samples)) rc = 1;

  printf("\n%s  scenario %s  clients %d  room %s", G.label, scen, G.n, G.room);
  if (G.rooms) printf("-0..%d (%d rooms)", G.rooms - 1, G.rooms);
  if (G.nurl > 1) printf("  spread %s over %d urls", G.spread_clients ? "client" : "room", G.nurl);
  printf("\n");
  printf("joined %d/%d in %.3f s (%.0f joins/s), connect->first packet p50 %.2f ms p99 %.2f ms",
         G.ready, G.n, join_s, G.ready / join_s, gen_h_pct_ms(&G.ready_h, 0.5),
         gen_h_pct_ms(&G.ready_h, 0.99));
  if (G.failed) printf(", %d failed (%s)", G.failed, G.first_error);
  if (G.closed_after_ready) printf(", %d closed (%s)", G.closed_after_ready, G.first_error);
  printf("\n");
  if (G.do_idle || G.do_rooms)
    printf("server RSS %ld kB -> %ld kB: %.2f kB per %s (%d measured)\n", rss0, rss1, per_kb,
           G.do_idle ? "idle connection" : "room (with its one connection)", measured);
  if (fan.nsteps) gen_print_phase(&fan);
  if (mv.nsteps) gen_print_phase(&mv);
  if (G.interrupted) printf("(interrupted by --max-time)\n");
  fflush(stdout);

  if (G.json) {
    gen_json_begin(G.json);
    gen_jstr("generator", "fastgen");
    gen_jstr("label", G.label);
    gen_jstr("scenario", scen);
    gen_jnum("clients", G.n);
    gen_jstr("room", G.room);
    gen_jnum("rooms", G.rooms);
    gen_jnum("urls", G.nurl);
    gen_jstr("spread", G.spread_clients ? "client" : "room");
    gen_jopen("ramp");
    gen_jnum("joined", G.ready);
    gen_jnum("failed", G.failed);
    gen_jnum("closed_by_server", G.closed_after_ready);
    gen_jnum("join_s", join_s);
    gen_jnum("joins_per_s", G.ready > 0 ? G.ready / join_s : -1);
    gen_jnum("first_packet_p50_ms", gen_h_pct_ms(&G.ready_h, 0.5));
    gen_jnum("first_packet_p99_ms", gen_h_pct_ms(&G.ready_h, 0.99));
    gen_jnum("join_traffic_s", quiet_s);
    gen_jclose();
    if (G.do_idle || G.do_rooms) { /* as loadgen's */
      gen_jopen(G.do_idle ? "idle" : "rooms");
      gen_jint("rss_before_kb", rss0);
      gen_jint("rss_after_kb", rss1);
      gen_jint("measured", measured);
      gen_jnum(G.do_idle ? "kb_per_connection" : "kb_per_room", per_kb);
      gen_jclose();
    }
    if (fan.nsteps) gen_json_phase(&fan);
    if (mv.nsteps) gen_json_phase(&mv);
    gen_jbool("interrupted", G.interrupted);
    gen_jint("exit", rc);
    gen_json_end();
  }
  for (int i = 0; i < G.n; i++) {
    if (G.c[i].fd >= 0) close(G.c[i].fd);
    free(G.c[i].msg);
    free(G.c[i].out);
    free(G.c[i].ring);
  }
  free(G.c);
  free(G.wring);
  close(G.ep);
  return rc;
}

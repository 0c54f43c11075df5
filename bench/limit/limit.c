/*
 * limit.c - the bare libwebsockets broadcast server of the benchmarks: the
 * practical ceiling of this machine for the load generator's scenarios.
 *
 * No JSON parsing, no Lua, no state: the URL path is the room; a joiner gets
 * a fixed first packet carrying its publicId
 *   {"type":"sync","value":{"pId":"p7","players":{}}}
 * and everyone already in the room gets a fixed join patch
 *   {"type":"sync","value":{"players":{"p7":{"x":0,"y":0,"score":0}}}}
 * Every incoming message is taken as a move: the bytes after the first
 * "value": up to the message's last '}' are pasted, unparsed, into
 *   {"type":"sync","value":{"players":{"<pid of the sender>":<those bytes>}}}
 * which goes to everyone in the room, the sender included (so the load
 * generator finds its own x). A room whose path holds "/counter-" is a
 * counter room instead (bench/rooms/counter.lua): the joiner's first packet
 * is {"type":"sync","value":{"pId":"p7","count":N}}, nobody else gets one,
 * and every incoming message is an increment: {"type":"sync","value":
 * {"count":N+1}} to everyone. One packet per move, built once and shared by
 * reference by every recipient.
 *
 * A room whose path holds "/throttled-" is the game room with throttleSync
 * 50 (bench/rooms/throttled.lua), as lunaroom throttles (host/sync.c:
 * leading edge + trailing window): a move or a join only records the
 * sender's latest value (its join patch's value for a joiner); when no
 * window is open the pending players go out at once and a 50 ms window
 * opens, otherwise they go out when it ends (which opens the next). One
 * packet carries every pending player, last value each:
 *   {"type":"sync","value":{"players":{"p7":{...},"p9":{...}}}}
 * built once and shared by every member. The joiner's first packet is sent
 * at once, as in the unthrottled room.
 *
 * Writes are batched: on WRITEABLE a connection frames as many queued
 * packets as fit in 64 KiB (server frames are unmasked: 0x81, length) into
 * one buffer and hands it to lws as one raw write (one send()). That is the
 * ceiling the engine's transport could reach with the same library. Like
 * the engine, a drained send ring is freed and the heap is trimmed once
 * connections stop coming and going, so RSS compares live memory.
 *
 * Usage: limit [--port N] [--host 127.0.0.1] [--rx-buffer BYTES]; prints
 * `listening on http://HOST:PORT` on stderr. SIGINT/SIGTERM stop it.
 * --rx-buffer: the receive buffer lws keeps per WebSocket (default
 * RX_BUFFER); compare.mjs passes lunaroom's (NET_RX_BUFFER in
 * host/net_int.h) so the memory rows compare the same buffers.
 */
#include <malloc.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libwebsockets.h>

#ifndef RX_BUFFER
#define RX_BUFFER 4096 /* lws receive buffer per WebSocket (-DRX_BUFFER=N to compare) */
#endif
#define BATCH 65536
#define THROTTLE_MS 50       /* the throttled room's sync window */
#define MAX_QUEUE (4u << 20) /* bytes queued per connection before it is dropped */

typedef struct msg {
  uint32_t refs;
  uint32_t len;
  char data[]; /* payload */
} msg;

static msg *msg_new(size_t len) {
  msg *m = malloc(sizeof *m + len);
  if (!m) abort();
  m->refs = 1;
  m->len = (uint32_t)len;
  return m;
}
static void msg_release(msg *m) {
  if (m && --m->refs == 0) free(m);
}

typedef struct room room;

typedef struct conn {
  struct lws *wsi;
  room *room;
  struct conn *prev, *next; /* room membership */
  char pid[16];
  uint8_t pidlen;
  msg **q; /* ring */
  uint32_t qhead, qlen, qcap;
  size_t qbytes;
  char *rx; /* fragment assembly (rare: moves are small) */
  size_t rxlen, rxcap;
  char *val; /* throttled room: the pending value (vlen > 0 = pending) */
  uint32_t vlen, vcap;
  bool dropping;
} conn;

struct room {
  char *name;
  conn *head;
  uint32_t n;
  bool counter; /* a counter room: messages are increments */
  uint64_t count;
  bool throttled;             /* the game room with throttleSync THROTTLE_MS */
  uint32_t pending;           /* throttled: members with a pending value */
  int64_t window_end;         /* throttled: ms; a window is open until then */
  bool timer;                 /* throttled: the window's end is scheduled */
  lws_sorted_usec_list_t sul; /* ... on this */
  room *next;                 /* hash chain */
};

#define ROOM_BUCKETS 4096
static room *rooms[ROOM_BUCKETS];
static uint64_t next_pid;
static volatile sig_atomic_t stop;
static struct lws_context *ctx;
static int64_t trim_at; /* ms: malloc_trim once connections are quiet */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
static unsigned char batch[LWS_PRE + BATCH + 16];

static uint32_t hash(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

static room *room_get(const char *name) {
  uint32_t b = hash(name) % ROOM_BUCKETS;
  for (room *r = rooms[b]; r; r = r->next)
    if (!strcmp(r->name, name)) return r;
  room *r = calloc(1, sizeof *r);
  if (!r) abort();
  r->name = strdup(name);
  r->counter = strstr(name, "/counter-") != NULL;
  r->throttled = strstr(name, "/throttled-") != NULL;
  r->next = rooms[b];
  rooms[b] = r;
  return r;
}

static void conn_push(conn *c, msg *m) {
  if (c->dropping) return;
  if (c->qbytes + m->len > MAX_QUEUE) {
    c->dropping = true; /* slow consumer: hang up at the next WRITEABLE */
    lws_callback_on_writable(c->wsi);
    return;
  }
  if (c->qlen == c->qcap) {
    uint32_t cap = c->qcap ? c->qcap * 2 : 8;
    msg **q = malloc(sizeof *q * cap);
    if (!q) abort();
    for (uint32_t i = 0; i < c->qlen; i++)
      q[i] = c->q[(c->qhead + i) % c->qcap];
    free(c->q);
    c->q = q;
    c->qhead = 0;
    c->qcap = cap;
  }
  m->refs++;
  c->q[(c->qhead + c->qlen) % c->qcap] = m;
  c->qlen++;
  c->qbytes += m->len;
  if (c->qlen == 1) lws_callback_on_writable(c->wsi);
}

static void broadcast(room *r, msg *m, conn *except) {
  for (conn *c = r->head; c; c = c->next)
    if (c != except) conn_push(c, m);
}

static msg *msg_printf(const char *fmt, const char *a, size_t alen, const char *b, size_t blen) {
  /* fmt has exactly two %.*s */
  int n = snprintf(NULL, 0, fmt, (int)alen, a, (int)blen, b);
  msg *m = msg_new((size_t)n + 1);
  snprintf(m->data, (size_t)n + 1, fmt, (int)alen, a, (int)blen, b);
  m->len = (uint32_t)n;
  return m;
}

/* Throttled room: one packet with every pending player's latest value. */
static void throttle_flush(room *r) {
  if (!r->pending) return;
  static const char head[] = "{\"type\":\"sync\",\"value\":{\"players\":{";
  size_t len = sizeof head - 1 + 3; /* "}}}" */
  for (conn *c = r->head; c; c = c->next)
    if (c->vlen) len += (size_t)c->pidlen + 4 + c->vlen; /* "pid": , */
  msg *m = msg_new(len);
  char *p = m->data;
  memcpy(p, head, sizeof head - 1);
  p += sizeof head - 1;
  bool first = true;
  for (conn *c = r->head; c; c = c->next) {
    if (!c->vlen) continue;
    if (!first) *p++ = ',';
    first = false;
    *p++ = '"';
    memcpy(p, c->pid, c->pidlen);
    p += c->pidlen;
    *p++ = '"';
    *p++ = ':';
    memcpy(p, c->val, c->vlen);
    p += c->vlen;
    c->vlen = 0;
  }
  memcpy(p, "}}}", 3);
  p += 3;
  m->len = (uint32_t)(p - m->data);
  r->pending = 0;
  broadcast(r, m, NULL);
  msg_release(m);
}

static void throttle_fire(lws_sorted_usec_list_t *sul) {
  room *r = lws_container_of(sul, room, sul);
  r->timer = false;
  if (!r->pending) return;
  throttle_flush(r);
  r->window_end = now_ms() + THROTTLE_MS;
}

/* Throttled room: c's latest value is v; send now (leading edge) or at
 * the end of the open window. */
static void throttle_set(conn *c, const char *v, size_t len) {
  room *r = c->room;
  if (len > c->vcap) {
    c->val = realloc(c->val, len);
    if (!c->val) abort();
    c->vcap = (uint32_t)len;
  }
  memcpy(c->val, v, len);
  if (!c->vlen) r->pending++;
  c->vlen = (uint32_t)len;
  int64_t now = now_ms();
  if (now >= r->window_end && !r->timer) {
    throttle_flush(r);
    r->window_end = now + THROTTLE_MS;
  } else if (!r->timer) {
    r->timer = true;
    lws_sul_schedule(ctx, 0, &r->sul, throttle_fire, (lws_usec_t)(r->window_end - now) * 1000);
  }
}

static void on_move(conn *c, const char *in, size_t len) {
  if (c->room->counter) {
    char num[24];
    int k = snprintf(num, sizeof num, "%llu", (unsigned long long)++c->room->count);
    msg *m =
        msg_printf("{\"type\":\"sync\",\"value\":{\"count\":%.*s%.*s}}", num, (size_t)k, "", 0);
    broadcast(c->room, m, NULL);
    msg_release(m);
    return;
  }
  const char *v = memmem(in, len, "\"value\":", 8);
  if (!v) return;
  v += 8;
  const char *end = in + len;
  while (end > v && end[-1] != '}')
    end--;
  if (end <= v) return;
  end--; /* the closing brace of the whole message */
  if (c->room->throttled) {
    throttle_set(c, v, (size_t)(end - v));
    return;
  }
  msg *m = msg_printf("{\"type\":\"sync\",\"value\":{\"players\":{\"%.*s\":%.*s}}}", c->pid,
                      c->pidlen, v, (size_t)(end - v));
  broadcast(c->room, m, NULL);
  msg_release(m);
}

/* Frame queued packets into batch[] and write them with one raw write. */
static int conn_writeable(conn *c) {
  if (c->dropping) return -1;
  unsigned char *p = batch + LWS_PRE, *start = p;
  while (c->qlen) {
    msg *m = c->q[c->qhead];
    size_t need = m->len + 4;
    if ((size_t)(p - start) + need > BATCH) {
      if (p != start) break;
      /* a single big packet: let lws frame it */
      unsigned char *buf = malloc(LWS_PRE + m->len);
      if (!buf) abort();
      memcpy(buf + LWS_PRE, m->data, m->len);
      int n = lws_write(c->wsi, buf + LWS_PRE, m->len, LWS_WRITE_TEXT);
      free(buf);
      c->qhead = (c->qhead + 1) % c->qcap;
      c->qlen--;
      c->qbytes -= m->len;
      msg_release(m);
      if (n < 0) return -1;
      if (c->qlen) lws_callback_on_writable(c->wsi);
      return 0;
    }
    *p++ = 0x81;
    if (m->len < 126) {
      *p++ = (unsigned char)m->len;
    } else {
      *p++ = 126;
      *p++ = (unsigned char)(m->len >> 8);
      *p++ = (unsigned char)m->len;
    }
    memcpy(p, m->data, m->len);
    p += m->len;
    c->qhead = (c->qhead + 1) % c->qcap;
    c->qlen--;
    c->qbytes -= m->len;
    msg_release(m);
  }
  if (p != start) {
    size_t n = (size_t)(p - start);
    if (lws_write(c->wsi, start, n, LWS_WRITE_RAW) < (int)n) return -1;
  }
  if (c->qlen) {
    lws_callback_on_writable(c->wsi);
  } else {
    /* drained: give the ring back (as lunaroom's net.c does) */
    free(c->q);
    c->q = NULL;
    c->qhead = c->qcap = 0;
  }
  return 0;
}

static int cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
  conn *c = (conn *)user;
  switch (reason) {
  case LWS_CALLBACK_ESTABLISHED: {
    trim_at = now_ms() + 500;
    char path[512];
    if (lws_hdr_copy(wsi, path, sizeof path, WSI_TOKEN_GET_URI) <= 0) return -1;
    memset(c, 0, sizeof *c);
    c->wsi = wsi;
    c->room = room_get(path);
    c->pidlen = (uint8_t)snprintf(c->pid, sizeof c->pid, "p%llu", (unsigned long long)++next_pid);
    if (c->room->counter) {
      char num[24];
      int k = snprintf(num, sizeof num, "%llu", (unsigned long long)c->room->count);
      msg *first = msg_printf("{\"type\":\"sync\",\"value\":{\"pId\":\"%.*s\",\"count\":%.*s}}",
                              c->pid, c->pidlen, num, (size_t)k);
      c->next = c->room->head;
      if (c->next) c->next->prev = c;
      c->room->head = c;
      c->room->n++;
      conn_push(c, first);
      msg_release(first);
      break;
    }
    if (c->room->throttled) {
      msg *first = msg_printf("{\"type\":\"sync\",\"value\":{\"pId\":\"%.*s\",\"players\":{}%.*s}}",
                              c->pid, c->pidlen, "", 0);
      c->next = c->room->head;
      if (c->next) c->next->prev = c;
      c->room->head = c;
      c->room->n++;
      conn_push(c, first);
      msg_release(first);
      static const char zero[] = "{\"x\":0,\"y\":0,\"score\":0}";
      throttle_set(c, zero, sizeof zero - 1);
      break;
    }
    msg *first = msg_printf("{\"type\":\"sync\",\"value\":{\"pId\":\"%.*s\",\"players\":{}%.*s}}",
                            c->pid, c->pidlen, "", 0);
    msg *join = msg_printf(
        "{\"type\":\"sync\",\"value\":{\"players\":{\"%.*s\":{\"x\":0,\"y\":0,\"score\":0}}}%.*s}",
        c->pid, c->pidlen, "", 0);
    broadcast(c->room, join, NULL);
    c->next = c->room->head;
    if (c->next) c->next->prev = c;
    c->room->head = c;
    c->room->n++;
    conn_push(c, first);
    msg_release(first);
    msg_release(join);
    break;
  }
  case LWS_CALLBACK_RECEIVE: {
    if (!c->room) break;
    bool final = lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi);
    if (final && !c->rxlen) {
      on_move(c, in, len);
      break;
    }
    if (c->rxlen + len > c->rxcap) {
      size_t cap = c->rxcap ? c->rxcap : 1024;
      while (cap < c->rxlen + len)
        cap *= 2;
      if (cap > (1u << 20)) return -1;
      c->rx = realloc(c->rx, cap);
      if (!c->rx) abort();
      c->rxcap = cap;
    }
    memcpy(c->rx + c->rxlen, in, len);
    c->rxlen += len;
    if (final) {
      on_move(c, c->rx, c->rxlen);
      c->rxlen = 0;
    }
    break;
  }
  case LWS_CALLBACK_SERVER_WRITEABLE:
    if (c->room) return conn_writeable(c);
    break;
  case LWS_CALLBACK_CLOSED:
    trim_at = now_ms() + 500;
    if (c->room) {
      if (c->prev)
        c->prev->next = c->next;
      else
        c->room->head = c->next;
      if (c->next) c->next->prev = c->prev;
      c->room->n--;
      if (c->vlen) c->room->pending--;
      free(c->val);
      while (c->qlen) {
        msg_release(c->q[c->qhead]);
        c->qhead = (c->qhead + 1) % c->qcap;
        c->qlen--;
      }
      free(c->q);
      free(c->rx);
      c->room = NULL;
    }
    break;
  default:
    break;
  }
  return 0;
}

static struct lws_protocols protocols[] = {
    /* rx_buffer_size: --rx-buffer */
    {"limit", cb, sizeof(conn), RX_BUFFER, 0, NULL, BATCH},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
  if (ctx) lws_cancel_service(ctx);
}

int main(int argc, char **argv) {
  int port = 0;
  const char *host = "127.0.0.1";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--port") && i + 1 < argc)
      port = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--host") && i + 1 < argc)
      host = argv[++i];
    else if (!strcmp(argv[i], "--rx-buffer") && i + 1 < argc && atoi(argv[i + 1]) >= 128)
      protocols[0].rx_buffer_size = (size_t)atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: limit [--port N] [--host ADDR] [--rx-buffer BYTES >= 128]\n");
      return 2;
    }
  }
  lws_set_log_level(LLL_ERR, NULL);
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.port = port;
  info.iface = host;
  info.protocols = protocols;
  info.vhost_name = "limit";
  info.gid = -1;
  info.uid = -1;
  info.pt_serv_buf_size = 32768;
  ctx = lws_create_context(&info);
  struct lws_vhost *vh = ctx ? lws_get_vhost_by_name(ctx, "limit") : NULL;
  int p = vh ? lws_get_vhost_listen_port(vh) : -1;
  if (!ctx || p <= 0) {
    fprintf(stderr, "limit: cannot listen on %s:%d\n", host, port);
    return 1;
  }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGPIPE, SIG_IGN);
  fprintf(stderr, "listening on http://%s:%d (rx buffer %zu)\n", host, p,
          protocols[0].rx_buffer_size);
  /* As lunaroom's net.c: once connections stopped coming and going for
   * 500 ms, give wholly free heap pages back (malloc_trim), so RSS figures
   * compare live memory, not what a join burst left behind. */
  while (!stop) {
    if (lws_service(ctx, 0) < 0) break;
    if (trim_at && now_ms() >= trim_at) {
      trim_at = 0;
      malloc_trim(0);
    }
  }
  lws_context_destroy(ctx);
  for (int b = 0; b < ROOM_BUCKETS; b++)
    for (room *r = rooms[b], *n; r; r = n) {
      n = r->next;
      free(r->name);
      free(r);
    }
  return 0;
}

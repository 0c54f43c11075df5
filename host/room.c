/*
 * room.c - the room engine's lifecycle: servers, room instances (the room
 * table), connections (open, messages in, close) and shutdown. Its
 * neighbours (engine_int.h): sync.c (the flush pass and the storage gate),
 * timer.c (clock and timers), idle.c (hibernation, eviction), router.c
 * (paths, room creation, WebSocket opens, HTTP).
 *
 * Owns: lifecycle of lr_server / lr_room / lr_conn, the per-connection
 * input checks (early frames, rate limit, frame size, packet shape) before
 * an action reaches the rules, error packets, the storage gate's rule
 * below (sync.c carries it out).
 *
 * The storage gate (one rule for every backend): with throttleStorage 0 a
 * packet a room sends while it has changes that are not committed waits in
 * the room's outbox, in order, until they are (a synchronous store commits
 * at the end of the handler, so a handler's packets wait microseconds; a
 * write-behind store commits when its backend answers). When a write fails
 * the room is "failing": it refuses actions (error code "storage"), joins
 * (1013) and HTTP requests (503) while its writes are retried from a timer
 * (1 s doubling to 30 s), and everything it sends waits; once the writes
 * commit, the outbox goes out in order. With throttleStorage > 0 packets do
 * not wait for the throttled write (by design), but a failing room waits
 * and refuses like any other. Error packets never wait.
 * Must not: implement room rules (sessions, guards, dispatch: runtime.lua),
 * talk to sockets (net.c), schedule flushes or timers itself (sync.c,
 * timer.c), or name Lua: the rules are reached through
 * s->rules (rules.h; bridge.c implements them over runtime.lua).
 */
#include "engine_int.h"
#include "hash.h"

#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "log.h"
#include "rand.h"

#define MAX_EARLY_FRAMES 256

void (*lr_server_init_hook)(lr_server *s);

const double lr_hist_bounds[LR_HIST_N - 1] = {0.0001, 0.0005, 0.001, 0.005, 0.01,
                                              0.05,   0.1,    0.5,   1.0};

/* ----------------------------------------------------------------- server */

lr_server *lr_server_new(lua_State *L, lr_store *store, bool own_store, bool virtual_clock,
                         uint64_t seed) {
  lr_server *s = lr_xcalloc(1, sizeof *s);
  s->L = L;
  s->ref = LR_NOREF;
  s->store = store;
  s->own_store = own_store;
  s->virtual_clock = virtual_clock;
  s->vnow = 1767225600000LL; /* 2026-01-01T00:00:00Z: a fixed, readable start */
  s->wall0 = lr_wall_ms();
  s->mono0 = lr_mono_ms();
  s->nbuckets = 64;
  s->rooms = lr_xcalloc(s->nbuckets, sizeof *s->rooms);
  /* A seed is honoured only by the headless test host (virtual clock), so
   * that specs are reproducible; `serve` runs on the real clock and its ids
   * always come from getrandom(2), whatever seed is passed. */
  s->rng_seeded = virtual_clock && seed != 0;
  if (s->rng_seeded) lr_test_rng_seed(&s->test_rng, seed);
  strcpy(s->parties_prefix, "/parties");
  s->max_rooms = 100000;
  s->evict_after = 60000;
  s->room_rate = lr_addr_rate_new(2, 20);
  s->session_rate = lr_addr_rate_new(10, 100);
  if (store && store->vt->bind) store->vt->bind(store, &lr_engine_store_host, s);
  if (lr_server_init_hook) lr_server_init_hook(s);
  return s;
}

void lr_server_free(lr_server *s) {
  if (!s) return;
  s->shutting_down = true;
  if (s->store && s->store->vt->bind) s->store->vt->bind(s->store, NULL, NULL);
  lr_waits_free(s);
  for (uint32_t i = 0; i < s->nheap; i++)
    lr_timer_free(s, s->heap[i]);
  free(s->heap);
  s->heap = NULL;
  s->nheap = 0;
  free(s->timer_map);
  s->timer_map = NULL;
  for (uint32_t b = 0; b < s->nbuckets; b++) {
    while (s->rooms[b])
      lr_room_dispose(s->rooms[b]);
  }
  for (uint32_t i = 0; i < s->npending_close; i++)
    lr_conn_release(s->pending_close[i]);
  free(s->pending_close);
  free(s->rooms);
  lr_addr_rate_free(s->room_rate);
  lr_addr_rate_free(s->session_rate);
  if (s->ref != LR_NOREF && s->rules) s->rules->unref(s->L, s->ref);
  if (s->own_store) lr_store_close(s->store);
  for (uint32_t i = 0; i < s->nwanted_headers; i++)
    free(s->wanted_headers[i]);
  free(s);
}

int lr_server_want_header(lr_server *s, const char *name) {
  size_t n = name ? strlen(name) : 0;
  if (n == 0 || n > LR_HEADER_NAME_MAX) return -1;
  char low[LR_HEADER_NAME_MAX + 1];
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    if (c >= 'A' && c <= 'Z') c = (char)(c + 32);
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return -1;
    low[i] = c;
  }
  low[n] = '\0';
  for (uint32_t i = 0; i < s->nwanted_headers; i++)
    if (strcmp(s->wanted_headers[i], low) == 0) return 0;
  if (s->nwanted_headers >= LR_WANTED_HEADERS) return -1;
  s->wanted_headers[s->nwanted_headers++] = lr_xstrndup(low, n);
  return 0;
}

const char *const *lr_server_wanted_headers(const lr_server *s, size_t *n) {
  *n = s->nwanted_headers;
  return (const char *const *)s->wanted_headers;
}

/* ------------------------------------------------------------------ rooms */

static uint32_t hash_str(const char *k) {
  return lr_fnv1a(LR_FNV1A_INIT, k, strlen(k));
}

lr_room *lr_room_find(lr_server *s, const char *ns, const char *id) {
  /* "ns/id" on the stack when it fits (every join looks its room up) */
  char buf[512];
  size_t a = strlen(ns), b = strlen(id);
  char *k = a + b + 2 <= sizeof buf ? buf : lr_xmalloc(a + b + 2);
  memcpy(k, ns, a);
  k[a] = '/';
  memcpy(k + a + 1, id, b + 1);
  lr_room *r = s->rooms[hash_str(k) % s->nbuckets];
  while (r && strcmp(r->key, k) != 0)
    r = r->hash_next;
  if (k != buf) free(k);
  return r;
}

static uint32_t room_bucket(const lr_room *r, uint32_t nb) {
  return hash_str(r->key) % nb;
}

static void rehash(lr_server *s) {
  uint32_t nb = s->nbuckets * 2;
  LR_CHAIN_REHASH(lr_room, s->rooms, s->nbuckets, nb, hash_next, room_bucket);
  s->nbuckets = nb;
}

lr_room *lr_room_new(lr_server *s, const char *ns, const char *id) {
  lr_room *r = lr_xcalloc(1, sizeof *r);
  r->srv = s;
  /* ns, id and key in one allocation: "ns\0id\0ns/id\0" (freed through ns) */
  size_t a = strlen(ns), b = strlen(id);
  r->ns = lr_xmalloc(2 * (a + b) + 4);
  memcpy(r->ns, ns, a + 1);
  r->id = r->ns + a + 1;
  memcpy(r->id, id, b + 1);
  r->key = r->id + b + 1;
  memcpy(r->key, ns, a);
  r->key[a] = '/';
  memcpy(r->key + a + 1, id, b + 1);
  r->refs = 1; /* the server's hash holds this one */
  r->root = lr_node_new(LR_OBJECT);
  r->ref = LR_NOREF;
  r->auto_sync = true;
  r->store_retry_ms = 1000;
  r->rate = 100;
  r->burst = 200;
  r->evict_ms = s->evict_after;
  r->last_active = lr_now(s);
  if (s->nrooms + 1 > s->nbuckets * 2) rehash(s);
  uint32_t h = hash_str(r->key) % s->nbuckets;
  r->hash_next = s->rooms[h];
  s->rooms[h] = r;
  s->nrooms++;
  return r;
}

void lr_room_release(lr_room *r) {
  if (--r->refs) return;
  if (r->box) *r->box = NULL;
  lr_room_outbox_free(r);
  free(r->store_err);
  lr_node_release(r->root);
  free(r->conns);
  free(r->ns); /* with id and key */
  free(r);
}

static void unlink_room(lr_room *r) {
  lr_server *s = r->srv;
  lr_room **pp = &s->rooms[hash_str(r->key) % s->nbuckets];
  while (*pp && *pp != r)
    pp = &(*pp)->hash_next;
  if (*pp) {
    *pp = r->hash_next;
    s->nrooms--;
  }
  for (lr_room **t = &s->touched; *t; t = &(*t)->touched_next) {
    if (*t == r) {
      *t = r->touched_next;
      r->touched = false;
      break;
    }
  }
}

/* Remove the room from its server: flush storage, close its sockets (1001),
 * drop the Lua instance. Proxies that still point into its tree keep the
 * nodes alive but writes to them no longer reach anybody. */
void lr_room_dispose(lr_room *r) {
  if (r->disposed) return;
  lr_server *s = r->srv;
  lr_room_retain(r);
  if (lr_state_dirty(r->root, LR_CH_PERSIST) && lr_room_flush_storage(r) != 0)
    lr_room_report_unwritten(r, "disposed");
  if (s->store) lr_store_forget(s->store, r->ns, r->id);
  r->disposed = true;
  lr_room_set_hibernated(r, false);
  lr_room_set_failing(r, true, false, NULL);
  lr_room_set_failing(r, false, false, NULL);
  lr_room_outbox_free(r);
  unlink_room(r);
  while (r->nconns) {
    lr_conn *c = r->conns[r->nconns - 1];
    r->nconns--;
    c->in_room_list = false;
    if (c->phase != LR_C_GONE) lr_conn_close(c, 1001, "room disposed");
  }
  r->nparked = 0;
  if (r->ref != LR_NOREF) {
    s->rules->unref(s->L, r->ref);
    r->ref = LR_NOREF;
  }
  if (s->ref != LR_NOREF && !s->shutting_down) s->rules->forget(r);
  lr_info("room %s disposed", r->key);
  r->refs--; /* the hash's reference (ours, taken above, keeps r alive) */
  lr_room_release(r);
}

/* ------------------------------------------------------------ connections */

void lr_conn_retain(lr_conn *c) {
  c->refs++;
}

static void early_free(lr_early *e) {
  if (!e) return;
  lr_buf_free(&e->buf);
  free(e->len);
  free(e);
}

void lr_conn_release(lr_conn *c) {
  if (--c->refs) return;
  if (c->ops && c->ops->forget) c->ops->forget(c);
  if (c->box) *c->box = NULL;
  if (c->ref != LR_NOREF && c->rules) c->rules->unref(c->L, c->ref);
  if (c->room) lr_room_release(c->room);
  early_free(c->early);
  for (lr_held *h = c->held, *next; h; h = next) {
    next = h->next;
    lr_msg_release(h->m);
    free(h);
  }
  free(c);
}

void *lr_conn_transport(lr_conn *c) {
  return c->tp;
}

bool lr_conn_is_relay(const lr_conn *c) {
  return c && c->ops && c->ops->relay;
}

const char *lr_conn_id(const lr_conn *c) {
  return c->id;
}

static void remove_from_room(lr_conn *c) {
  lr_room *r = c->room;
  if (!r || !c->in_room_list) return;
  for (uint32_t i = 0; i < r->nconns; i++) {
    if (r->conns[i] == c) {
      memmove(&r->conns[i], &r->conns[i + 1], (r->nconns - i - 1) * sizeof *r->conns);
      r->nconns--;
      if (c->parked) r->nparked--;
      break;
    }
  }
  c->in_room_list = false;
}

void lr_conn_close(lr_conn *c, int code, const char *reason) {
  if (c->phase == LR_C_CLOSING || c->phase == LR_C_GONE) return;
  c->phase = LR_C_CLOSING;
  lr_info("conn %s room %s: closing (%d %s)", c->id, c->room ? c->room->key : "-", code,
          reason ? reason : "");
  c->vt->close(c, code, reason ? reason : "");
}

static void room_list_add(lr_room *r, lr_conn *c) {
  if (r->nconns == r->capconns) {
    r->capconns = r->capconns ? r->capconns * 2 : 2; /* many rooms hold one or two */
    r->conns = lr_xrealloc(r->conns, r->capconns * sizeof *r->conns);
  }
  r->conns[r->nconns++] = c;
  c->in_room_list = true;
  if (r->nconns == 1) lr_room_idle_joined(r); /* no eviction timer while it has one */
}

void lr_room_join(lr_room *r, lr_conn *c, const char *public_id) {
  if (c->phase != LR_C_JOINING) return;
  if (r->srv->batch_joins && r->auto_sync && r->throttle_sync <= 0 && !c->ops) {
    /* A pass of the network loop often accepts dozens of sockets into one
     * room: they all join at the room's flush at the end of the pass (see
     * lr_server_flush_touched), where the others get one patch with every
     * new user and the joiners snapshots of one encoding, instead of one
     * patch to everyone and one full encoding per join. */
    c->parked = c->batched = true;
    r->nparked++;
    r->batched_joins = true;
    room_list_add(r, c);
    c->phase = LR_C_JOINED;
    lr_room_touch(r);
    return;
  }
  /* Changes made while this client joined reach the others first (it gets
   * them in its snapshot), as in the reference's join order. */
  if (r->auto_sync && r->throttle_sync <= 0) lr_room_flush_sync(r, false);
  if (r->auto_sync) {
    lr_buf b;
    lr_buf_init(&b);
    lr_room_encode_snapshot(r, public_id, &b);
    lr_conn_send_msg(c, NULL, b.data, b.len);
    lr_buf_free(&b);
  } else {
    c->parked = true;
    r->nparked++;
  }
  room_list_add(r, c);
  c->phase = LR_C_JOINED;
}

/* ------------------------------------------------------------ rules glue */

const char *lr_server_env(lr_server *s, const char *name, char *buf, size_t n) {
  return s->rules->env(s, name, buf, n);
}

const char *const lr_rej_names[LR_NREJ] = {"invalid_packet", "unknown_action", "guard",
                                           "validation",     "handler",        "rate_limit",
                                           "too_large",      "other"};

static void count_rejected(lr_server *s, const char *code) {
  int i = 0;
  while (i < LR_REJ_OTHER && strcmp(lr_rej_names[i], code) != 0)
    i++;
  s->stats.rejected[i]++;
}

static void send_error(lr_conn *c, const char *code, const char *action, const char *message) {
  count_rejected(c->srv, code);
  lr_buf b;
  lr_buf_init(&b);
  lr_buf_puts(&b, "{\"type\":\"error\",\"value\":{\"code\":");
  lr_json_put_string(&b, code, strlen(code));
  if (action) {
    lr_buf_puts(&b, ",\"action\":");
    lr_json_put_string(&b, action, strlen(action));
  }
  lr_buf_puts(&b, ",\"message\":");
  lr_json_put_string(&b, message, strlen(message));
  lr_buf_puts(&b, "}}");
  lr_msg *m = lr_msg_new(b.data, b.len);
  if (c->batched)
    lr_conn_send_raw(c, m); /* after its snapshot */
  else
    lr_conn_transport_send(
        c, m); /* errors bypass the interceptor and the storage gate: they are ours */
  lr_msg_release(m);
  lr_buf_free(&b);
}

lr_conn *lr_conn_new(lr_server *s, lr_room *r, const lr_transport_vt *vt, void *tp) {
  lr_conn *c = lr_xcalloc(1, sizeof *c);
  c->srv = s;
  c->L = s->L;
  c->rules = s->rules;
  c->room = r ? lr_room_retain(r) : NULL;
  c->vt = vt;
  c->tp = tp;
  c->refs = 1; /* the transport's */
  c->ref = LR_NOREF;
  lr_random_id(s, c->id, 10, "0123456789abcdefghijklmnopqrstuvwxyz");
  return c;
}

lr_conn *lr_room_attach(lr_room *r, const lr_transport_vt *vt, void *tp) {
  lr_conn *c = lr_conn_new(r->srv, r, vt, tp);
  lr_room_attach_conn(r, c);
  return c;
}

void lr_room_attach_conn(lr_room *r, lr_conn *c) {
  if (!c->room) c->room = lr_room_retain(r);
  r->srv->rules->attach(c);
  room_list_add(r, c);
  c->phase = LR_C_JOINED;
}

/* Open a connection on room r: run the room's connect (guards, session,
 * onJoin, snapshot) and then the frames that arrived meanwhile. Returns the
 * connection with one reference owned by the caller's transport. */
/* Run the room's connect for c (joining, c->room set): guards, session,
 * onJoin, snapshot; then the frames that arrived meanwhile. */
/* Handle the frames c sent before it joined, in order. */
void lr_conn_replay_early(lr_conn *c) {
  if (c->phase != LR_C_JOINED || !c->early) return;
  lr_early *e = c->early;
  c->early = NULL;
  size_t off = 0;
  for (uint32_t i = 0; i < e->n && c->phase == LR_C_JOINED; i++) {
    lr_conn_message(c, e->buf.data + off, e->len[i]);
    off += e->len[i];
  }
  early_free(e);
}

void lr_conn_connect(lr_conn *c, const lr_request *req) {
  lr_room *r = c->room;
  lr_server *s = r->srv;
  /* "conn %s room %s: open from %s", without printf: a line per join */
  const char *line[] = {"conn ", c->id,          " room ",
                        r->key,  ": open from ", req->remote_addr ? req->remote_addr : "-"};
  lr_log_parts(LR_LOG_INFO, line, sizeof line / sizeof *line);
  lr_conn_retain(c);
  char err[256];
  if (s->rules->connect(c, req, err, sizeof err) != 0) lr_conn_close(c, 1011, "connect failed");
  lr_server_flush_touched(s);
  lr_conn_replay_early(c); /* frames that arrived while the room handled the connect */
  lr_conn_release(c);
}

static void replay_cb(void *ud) {
  lr_conn *c = ud;
  lr_conn_replay_early(c);
  lr_conn_release(c);
}

void lr_conn_replay_early_later(lr_conn *c) {
  if (!c->early) return;
  lr_conn_retain(c);
  lr_timer_add_c(c->srv, 0, replay_cb, c);
}

void lr_conn_send_error(lr_conn *c, const char *code, const char *action, const char *message) {
  if (c->phase == LR_C_GONE || c->phase == LR_C_CLOSING) return;
  send_error(c, code, action, message);
}

static lr_conn *open_conn(lr_room *r, const lr_request *req, const lr_transport_vt *vt, void *tp,
                          const lr_conn_ops *ops) {
  lr_server *s = r->srv;
  s->stats.conns_open++;
  s->stats.conns_total++;
  lr_conn *c = lr_conn_new(s, r, vt, tp);
  c->ops = ops;
  if (lr_room_store_failing(r)) { /* a snapshot would show what is not stored */
    lr_conn_close(c, 1013, "storage unavailable");
    return c;
  }
  lr_conn_connect(c, req);
  return c;
}

lr_conn *lr_room_open_conn(lr_room *r, const lr_request *req, const lr_transport_vt *vt, void *tp) {
  return open_conn(r, req, vt, tp, NULL);
}

lr_conn *lr_room_open_kind(lr_room *r, const lr_request *req, const lr_transport_vt *vt, void *tp,
                           const lr_conn_ops *ops) {
  return open_conn(r, req, vt, tp, ops);
}

/* A frame that arrived while c joins: kept, in order, for after the join
 * (lr_conn_connect); too many close c with 4008. */
static void early_push(lr_conn *c, const char *data, size_t len) {
  lr_early *e = c->early;
  if (!e) {
    e = c->early = lr_xcalloc(1, sizeof *e);
    lr_buf_init(&e->buf);
  }
  if (e->n >= MAX_EARLY_FRAMES) {
    lr_conn_close(c, 4008, "too many frames before join");
    return;
  }
  if (e->n == e->cap) {
    e->cap = e->cap ? e->cap * 2 : 8;
    e->len = lr_xrealloc(e->len, e->cap * sizeof *e->len);
  }
  lr_buf_put(&e->buf, data, len);
  e->len[e->n++] = (uint32_t)len;
}

/* Take a token of c's bucket (the room's rate per second, its burst): false
 * when the message is dropped (an error packet now and then; a client that
 * keeps flooding is closed with 4008). */
static bool rate_take(lr_conn *c) {
  lr_server *s = c->srv;
  lr_room *rr = c->room;
  /* Token bucket per connection; a client that keeps flooding is closed. */
  if (rr->rate > 0) {
    int64_t now = lr_now(s);
    if (c->tokens_at == 0)
      c->tokens = rr->burst;
    else
      c->tokens += (double)(now - c->tokens_at) * rr->rate / 1000.0;
    if (c->tokens > rr->burst) c->tokens = rr->burst;
    c->tokens_at = now;
    if (c->tokens < 1) {
      if (++c->drops >= (uint32_t)(2 * rr->burst)) {
        lr_warn("conn %s room %s: closed after %u messages over the rate limit", c->id, rr->key,
                c->drops);
        lr_conn_close(c, 4008, "rate limit");
      } else if (c->drops == 1 || c->drops % 100 == 0) {
        send_error(c, "rate_limit", NULL, "too many messages: dropped");
      }
      return false;
    }
    c->tokens -= 1;
    /* Drops are forgiven once the client has slowed down (its bucket half
     * full again), not by one message that got through: a flood whose
     * messages reach the engine spread out (the per-address budget of
     * net.c hands them over a few per loop pass) is still closed. */
    if (c->tokens >= rr->burst / 2) c->drops = 0;
  }
  return true;
}

void lr_conn_message(lr_conn *c, const char *data, size_t len) {
  lr_server *s = c->srv;
  if (c->phase == LR_C_GONE || c->phase == LR_C_CLOSING) return;
  if (c->ops && c->ops->message) { /* a shard uplink, a client of this shard */
    c->ops->message(c, data, len);
    return;
  }
  if (c->phase == LR_C_JOINING || c->early) { /* early: joined, replay pending (in order) */
    early_push(c, data, len);
    return;
  }
  lr_room *rr = c->room;
  if (!rate_take(c)) return;
  char err[256];
  if (rr->max_frame && len > rr->max_frame) {
    lr_warn("conn %s room %s: frame of %zu bytes over the room's limit (%u)", c->id, rr->key, len,
            rr->max_frame);
    count_rejected(s, "too_large");
    lr_conn_close(c, 1009, "message too big");
    return;
  }
  lr_json_limits lim = LR_JSON_DEFAULT_LIMITS;
  if (rr->json_depth) lim.max_depth = rr->json_depth;
  if (rr->json_elements) lim.max_elements = rr->json_elements;
  lr_node *pkt = lr_json_decode(data, len, &lim, err, sizeof err);
  if (!pkt) {
    lr_warn("conn %s room %s: rejected frame: %s", c->id, c->room->key, err);
    send_error(c, "invalid_packet", NULL, err);
    return;
  }
  lr_node *action = pkt->type == LR_OBJECT ? lr_obj_get(pkt, "action", 6) : NULL;
  if (!action || action->type != LR_STRING) {
    lr_warn("conn %s room %s: rejected packet without a string action", c->id, c->room->key);
    send_error(c, "invalid_packet", NULL, "a packet is {\"action\": string, \"value\": any}");
    lr_node_release(pkt);
    return;
  }
  lr_node *value = lr_obj_get(pkt, "value", 5);
  s->stats.msgs_in++;
  if (lr_room_store_failing(rr)) {
    send_error(c, "storage", lr_str(action),
               "the room cannot write its storage: action refused, try again later");
    lr_node_release(pkt);
    return;
  }
  lr_room_activity(c->room);
  if (c->phase != LR_C_JOINED) { /* the room could not be rebuilt */
    lr_node_release(pkt);
    return;
  }
  lr_room *r = lr_room_retain(c->room);
  lr_conn_retain(c);
  if (s->rules->message(c, lr_str(action), lr_strlen(action), value, send_error, err, sizeof err) <
      0)
    send_error(c, "handler", lr_str(action), err);
  lr_server_flush_touched(s);
  if (lr_room_store_failing(r) && c->phase == LR_C_JOINED)
    send_error(c, "storage", lr_str(action),
               "the room cannot write its storage: this action's changes are kept and sent "
               "once written; other actions are refused until then");
  lr_node_release(pkt);
  lr_conn_release(c);
  lr_room_release(r);
}

void lr_conn_closed(lr_conn *c) {
  lr_server *s = c->srv;
  if (c->phase == LR_C_GONE) return;
  if (c->ops && c->ops->closed) c->ops->closed(c);
  if ((!c->ops || !c->ops->uncounted) && s->stats.conns_open) s->stats.conns_open--;
  bool was_member = c->in_room_list || c->phase == LR_C_JOINING || c->phase == LR_C_CLOSING;
  c->phase = LR_C_GONE;
  remove_from_room(c); /* before onLeave: the reference's adapters do the same */
  lr_room *r = c->room;
  if (was_member && r && !r->disposed && !s->shutting_down) {
    lr_room_activity(r);
  }
  if (was_member && r && !r->disposed && !s->shutting_down && r->ref != LR_NOREF) {
    s->rules->close(c);
    lr_server_flush_touched(s);
  }
  lr_info("conn %s room %s: closed", c->id, r ? r->key : "-");
  if (c->ops && c->ops->forget_on_close) c->ops->forget(c);
  lr_conn_release(c); /* the transport's reference */
}

void lr_server_deliver_closes(lr_server *s) {
  while (s->npending_close) {
    lr_conn *c = s->pending_close[0];
    memmove(s->pending_close, s->pending_close + 1, --s->npending_close * sizeof *s->pending_close);
    lr_conn_closed(c);
  }
}

/* ------------------------------------------------------------ shutdown */

void lr_server_shutdown(lr_server *s) {
  if (s->shutting_down) return;
  lr_info("shutting down: flushing rooms and closing connections");
  s->shutting_down = true;
  if (s->mode) s->mode->shutdown(s);
  if (s->cluster) s->cluster->shutdown(s);
  lr_waits_close(s);
  for (uint32_t b = 0; b < s->nbuckets; b++) {
    for (lr_room *r = s->rooms[b]; r; r = r->hash_next) {
      lr_room_retain(r);
      if (r->auto_sync) lr_room_flush_sync(r, false);
      lr_room_flush_storage(r);
      for (uint32_t i = r->nconns; i-- > 0;)
        lr_conn_close(r->conns[i], 1001, "server shutdown");
      lr_room_release(r);
    }
  }
}

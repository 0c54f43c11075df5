/*
 * room.c - the room engine: servers, room instances, connections, the timer
 * heap and virtual clock, and the flush pass that turns state writes into
 * sync packets (encoded once per flush) and storage batches.
 *
 * Owns: lifecycle of lr_server / lr_room / lr_conn, the server.h functions
 * transports call, sync throttling (leading edge + trailing window),
 * autoSync/applySync, storage throttling (max-delay, never a debounce that a
 * busy room could postpone forever), retries of failed storage writes, idle
 * rooms (hibernation; eviction of rooms nothing holds), who may create a
 * room (a route it serves, the per-address creation rate), and the storage
 * gate below.
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
 * talk to sockets (net.c), or name Lua: the rules are reached through
 * s->rules (rules.h; bridge.c implements them over runtime.lua).
 */
#include "engine.h"

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

const double lr_hist_bounds[LR_HIST_N - 1] = {0.0001, 0.0005, 0.001, 0.005, 0.01,
                                              0.05,   0.1,    0.5,   1.0};

/* ------------------------------------------------------------------ clock */

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t lr_now(const lr_server *s) {
  return s->virtual_clock ? s->vnow : s->wall0 + (mono_ms() - s->mono0);
}

/* Ids come from the kernel CSPRNG (rand.c); only the headless test host has
 * a seeded, reproducible generator (see lr_server_new). */
void lr_random_id(lr_server *s, char *out, size_t n, const char *alphabet) {
  lr_rand_id(s->rng_seeded ? &s->test_rng : NULL, out, n, alphabet);
}

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
  s->wall0 = wall_ms();
  s->mono0 = mono_ms();
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
  if (store && store->vt->bind) store->vt->bind(store, s);
  return s;
}

static void timer_unhold(lr_timer *t);

static void timer_free(lr_server *s, lr_timer *t) {
  timer_unhold(t);
  if (t->fn_ref != LR_NOREF && t->fn_ref != 0 && s->rules) s->rules->unref(s->L, t->fn_ref);
  if (t->room) lr_room_release(t->room);
  free(t);
}

static void waits_free(lr_server *s);

void lr_server_free(lr_server *s) {
  if (!s) return;
  s->shutting_down = true;
  if (s->store && s->store->vt->bind) s->store->vt->bind(s->store, NULL);
  waits_free(s);
  for (uint32_t i = 0; i < s->nheap; i++)
    timer_free(s, s->heap[i]);
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

/* ----------------------------------------------------------------- timers */

static bool timer_before(const lr_timer *a, const lr_timer *b) {
  return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static void heap_set(lr_server *s, uint32_t i, lr_timer *t) {
  s->heap[i] = t;
  t->hidx = i;
}

static void heap_up(lr_server *s, uint32_t i) {
  while (i > 0) {
    uint32_t p = (i - 1) / 2;
    if (!timer_before(s->heap[i], s->heap[p])) break;
    lr_timer *t = s->heap[i];
    heap_set(s, i, s->heap[p]);
    heap_set(s, p, t);
    i = p;
  }
}

static void heap_down(lr_server *s, uint32_t i) {
  for (;;) {
    uint32_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < s->nheap && timer_before(s->heap[l], s->heap[m])) m = l;
    if (r < s->nheap && timer_before(s->heap[r], s->heap[m])) m = r;
    if (m == i) break;
    lr_timer *t = s->heap[i];
    heap_set(s, i, s->heap[m]);
    heap_set(s, m, t);
    i = m;
  }
}

/* The id -> timer map (chained, power-of-two buckets, grown with the heap):
 * lr_timer_cancel finds a timer in O(1) and removes it in O(log n), so
 * cancelling (a reconnect cancels its session's expiry) does not scan every
 * pending timer of the process. A timer is in the map while it is in the
 * heap. */
static lr_timer **map_slot(lr_server *s, uint64_t id) {
  return &s->timer_map[(id * 0x9E3779B97F4A7C15ULL >> 20) & (s->timer_map_cap - 1)];
}

static void map_grow(lr_server *s) {
  uint32_t cap = s->timer_map_cap ? s->timer_map_cap * 2 : 64;
  lr_timer **old = s->timer_map;
  uint32_t oldcap = s->timer_map_cap;
  s->timer_map = lr_xcalloc(cap, sizeof *s->timer_map);
  s->timer_map_cap = cap;
  for (uint32_t b = 0; b < oldcap; b++) {
    for (lr_timer *t = old[b], *next; t; t = next) {
      next = t->map_next;
      lr_timer **sl = map_slot(s, t->seq);
      t->map_next = *sl;
      *sl = t;
    }
  }
  free(old);
}

static void map_remove(lr_server *s, lr_timer *t) {
  for (lr_timer **pp = map_slot(s, t->seq); *pp; pp = &(*pp)->map_next) {
    if (*pp == t) {
      *pp = t->map_next;
      t->map_next = NULL;
      return;
    }
  }
}

static void arm_idle(lr_room *r);

/* t no longer keeps its room from being evicted (it fired or was cancelled). */
static void timer_unhold(lr_timer *t) {
  if (!t->holds_room) return;
  t->holds_room = false;
  lr_room *r = t->room;
  if (r->ntimers) r->ntimers--;
  if (r->ntimers == 0) arm_idle(r);
}

lr_timer *lr_timer_add(lr_server *s, int64_t delay_ms, lr_timer_kind kind, lr_room *r, int fn_ref) {
  lr_timer *t = lr_xcalloc(1, sizeof *t);
  t->when = lr_now(s) + (delay_ms > 0 ? delay_ms : 0);
  t->seq = ++s->timer_seq;
  t->kind = kind;
  t->room = r ? lr_room_retain(r) : NULL;
  t->fn_ref = fn_ref;
  if (r && kind == LR_T_LUA) { /* the room's own timer: it is not idle */
    t->holds_room = true;
    r->ntimers++;
  }
  if (s->nheap == s->capheap) {
    s->capheap = s->capheap ? s->capheap * 2 : 64;
    s->heap = lr_xrealloc(s->heap, s->capheap * sizeof *s->heap);
  }
  if (s->nheap >= s->timer_map_cap) map_grow(s);
  lr_timer **sl = map_slot(s, t->seq);
  t->map_next = *sl;
  *sl = t;
  heap_set(s, s->nheap++, t);
  heap_up(s, s->nheap - 1);
  return t;
}

uint64_t lr_timer_add_c(lr_server *s, int64_t delay_ms, lr_timer_cb cb, void *ud) {
  lr_timer *t = lr_timer_add(s, delay_ms, LR_T_C, NULL, LR_NOREF);
  t->cb = cb;
  t->ud = ud;
  return t->seq;
}

/* Take t out of the heap (and the map). */
static void heap_remove(lr_server *s, lr_timer *t) {
  uint32_t i = t->hidx;
  map_remove(s, t);
  lr_timer *last = s->heap[--s->nheap];
  if (i < s->nheap) {
    heap_set(s, i, last);
    heap_down(s, i);
    if (s->heap[i] == last) heap_up(s, i);
  }
}

/* A timer that is pending is removed and freed (no-op for an id that fired
 * or is unknown). */
void lr_timer_cancel(lr_server *s, uint64_t id) {
  if (!s->timer_map_cap) return;
  lr_timer *t = *map_slot(s, id);
  while (t && t->seq != id)
    t = t->map_next;
  if (!t) return;
  t->cancelled = true;
  heap_remove(s, t);
  timer_free(s, t);
}

static lr_timer *heap_pop(lr_server *s) {
  lr_timer *t = s->heap[0];
  heap_remove(s, t);
  return t;
}

static void retry_storage(lr_room *r);
static void idle_check(lr_room *r);
static void outbox_free(lr_room *r);
static void set_failing(lr_room *r, bool engine, bool on, const char *err);
static void gate_settle(lr_room *r);
static void report_unwritten(lr_room *r, const char *what);

static void fire(lr_server *s, lr_timer *t) {
  lr_room *r = t->room;
  if (t->cancelled || (r && r->disposed)) return;
  switch (t->kind) {
  case LR_T_SYNC:
    r->sync_timer = false;
    if (r->auto_sync && lr_state_dirty(r->root, LR_CH_SYNC)) {
      lr_room_flush_sync(r, false);
      r->sync_window_end = lr_now(s) + r->throttle_sync;
    }
    break;
  case LR_T_STORE:
    r->store_timer = false;
    if (lr_room_flush_storage(r) != 0) retry_storage(r);
    gate_settle(r);
    break;
  case LR_T_IDLE:
    if (r->idle_at != t->when) break; /* superseded by an earlier one */
    r->idle_at = 0;
    idle_check(r);
    break;
  case LR_T_C:
    t->cb(t->ud);
    break;
  case LR_T_LUA: {
    if (r && !lr_room_activity(r)) {
      lr_warn("room %s: a timer was dropped, the room could not be rebuilt", r->key);
      break;
    }
    s->rules->timer(s, r, t->fn_ref);
    break;
  }
  }
}

static void run_due(lr_server *s, int64_t now) {
  while (s->nheap && s->heap[0]->when <= now) {
    lr_timer *t = heap_pop(s);
    timer_unhold(t);
    fire(s, t);
    timer_free(s, t);
    lr_server_flush_touched(s);
  }
}

int64_t lr_server_next_timeout(lr_server *s) {
  while (s->nheap && s->heap[0]->cancelled)
    timer_free(s, heap_pop(s));
  if (!s->nheap) return -1;
  int64_t d = s->heap[0]->when - lr_now(s);
  return d < 0 ? 0 : d;
}

static void deliver_pending_closes(lr_server *s);

void lr_server_tick(lr_server *s) {
  if (s->in_tick) return;
  s->in_tick = true;
  if (!s->virtual_clock) run_due(s, lr_now(s));
  if (s->rules && s->rules->tick) s->rules->tick(s); /* e.g. hot reload's poll */
  lr_server_flush_touched(s);
  deliver_pending_closes(s);
  s->in_tick = false;
}

/* The loop is idle: the rules may collect garbage (bridge.c). */
void lr_server_quiet(lr_server *s) {
  if (s->rules && s->rules->quiet) s->rules->quiet(s);
}

void lr_server_advance(lr_server *s, int64_t ms) {
  int64_t target = s->vnow + (ms > 0 ? ms : 0);
  while (s->nheap && s->heap[0]->when <= target) {
    if (s->heap[0]->when > s->vnow) s->vnow = s->heap[0]->when;
    run_due(s, s->vnow);
  }
  s->vnow = target;
  lr_server_flush_touched(s);
  deliver_pending_closes(s);
}

/* ------------------------------------------------------------------ rooms */

static uint32_t hash_str(const char *k) {
  uint32_t h = 2166136261u;
  for (; *k; k++)
    h = (h ^ (unsigned char)*k) * 16777619u;
  return h;
}

static char *room_key(const char *ns, const char *id) {
  size_t a = strlen(ns), b = strlen(id);
  char *k = lr_xmalloc(a + b + 2);
  memcpy(k, ns, a);
  k[a] = '/';
  memcpy(k + a + 1, id, b + 1);
  return k;
}

lr_room *lr_room_find(lr_server *s, const char *ns, const char *id) {
  char *k = room_key(ns, id);
  lr_room *r = s->rooms[hash_str(k) % s->nbuckets];
  while (r && strcmp(r->key, k) != 0)
    r = r->hash_next;
  free(k);
  return r;
}

static void rehash(lr_server *s) {
  uint32_t nb = s->nbuckets * 2;
  lr_room **b = lr_xcalloc(nb, sizeof *b);
  for (uint32_t i = 0; i < s->nbuckets; i++) {
    lr_room *r = s->rooms[i];
    while (r) {
      lr_room *next = r->hash_next;
      uint32_t h = hash_str(r->key) % nb;
      r->hash_next = b[h];
      b[h] = r;
      r = next;
    }
  }
  free(s->rooms);
  s->rooms = b;
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
  outbox_free(r);
  free(r->store_err);
  lr_node_release(r->root);
  free(r->conns);
  free(r->ns); /* with id and key */
  free(r);
}

static void set_hibernated(lr_room *r, bool on);

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
    report_unwritten(r, "disposed");
  if (s->store) lr_store_forget(s->store, r->ns, r->id);
  r->disposed = true;
  set_hibernated(r, false);
  set_failing(r, true, false, NULL);
  set_failing(r, false, false, NULL);
  outbox_free(r);
  unlink_room(r);
  while (r->nconns) {
    lr_conn *c = r->conns[r->nconns - 1];
    r->nconns--;
    c->in_room_list = false;
    if (c->phase != LR_C_GONE) lr_conn_close(c, 1001, "room disposed");
  }
  if (r->ref != LR_NOREF) {
    s->rules->unref(s->L, r->ref);
    r->ref = LR_NOREF;
  }
  if (s->ref != LR_NOREF && !s->shutting_down) s->rules->forget(r);
  lr_info("room %s disposed", r->key);
  r->refs--; /* the hash's reference (ours, taken above, keeps r alive) */
  lr_room_release(r);
}

void lr_room_touch(lr_room *r) {
  if (r->touched || r->disposed) return;
  r->touched = true;
  r->touched_next = r->srv->touched;
  r->srv->touched = r;
}

/* Arm the retry of a failed storage write: 1 s, doubling up to 30 s. A
 * server that is shutting down retries every 100 ms (main.c bounds it). */
static void retry_storage(lr_room *r) {
  if (r->srv->shutting_down) return; /* lr_server_drain_storage retries */
  if (r->store_timer) return;
  r->store_timer = true;
  lr_timer_add(r->srv, r->store_retry_ms, LR_T_STORE, r, LR_NOREF);
  if (r->store_retry_ms < 30000) r->store_retry_ms *= 2;
}

static void schedule_storage(lr_room *r) {
  lr_server *s = r->srv;
  if (!lr_state_dirty(r->root, LR_CH_PERSIST) || r->store_timer) return;
  if (r->throttle_storage <= 0 || s->shutting_down) {
    if (lr_room_flush_storage(r) != 0) retry_storage(r);
    return;
  }
  r->store_timer = true;
  lr_timer_add(s, r->throttle_storage, LR_T_STORE, r, LR_NOREF);
}

static void schedule_sync(lr_room *r) {
  lr_server *s = r->srv;
  if (!r->auto_sync) return;
  if (r->batched_joins) { /* end of the pass (unthrottled rooms only) */
    lr_room_flush_sync(r, false);
    return;
  }
  if (!lr_state_dirty(r->root, LR_CH_SYNC)) return;
  if (r->throttle_sync <= 0) {
    lr_room_flush_sync(r, false);
    return;
  }
  int64_t now = lr_now(s);
  if (now >= r->sync_window_end && !r->sync_timer) {
    /* Leading edge: send now and open a window. */
    lr_room_flush_sync(r, false);
    r->sync_window_end = now + r->throttle_sync;
    return;
  }
  if (!r->sync_timer) {
    r->sync_timer = true;
    lr_timer_add(s, r->sync_window_end - now, LR_T_SYNC, r, LR_NOREF);
  }
}

void lr_server_flush_touched(lr_server *s) {
  lr_room *later = NULL; /* rooms with batched joiners: flushed at the end of the pass */
  while (s->touched) {
    lr_room *r = s->touched;
    s->touched = r->touched_next;
    if (s->batch_joins && r->batched_joins) {
      r->touched_next = later;
      later = r;
      continue;
    }
    r->touched = false;
    lr_room_retain(r);
    /* Storage first: with throttleStorage 0, what a client is sent has
     * already been written. */
    schedule_storage(r);
    gate_settle(r);
    schedule_sync(r);
    lr_room_release(r);
  }
  s->touched = later;
}

void lr_server_batch_joins(lr_server *s, bool on) {
  s->batch_joins = on;
}

/* ------------------------------------------------------------ storage gate */

#define LR_GATED_MAX                                                                               \
  ((size_t)4 << 20)            /* bytes waiting per connection (the default --max-queue)           \
                                */
#define TAG_PENDING UINT64_MAX /* waits for the room's next write of its state */

/* Packets of r must wait: it has changes not committed, or older packets wait. */
static bool room_gated(const lr_room *r) {
  return r->outhead < r->nout || lr_room_store_failing(r) || r->st_committed < r->st_accepted ||
         (r->throttle_storage <= 0 && r->srv->store && lr_state_dirty(r->root, LR_CH_PERSIST));
}

static uint64_t gate_tag(const lr_room *r) {
  if (lr_state_dirty(r->root, LR_CH_PERSIST) &&
      (r->throttle_storage <= 0 || lr_room_store_failing(r)))
    return TAG_PENDING;
  return r->st_accepted;
}

static void transport_send(lr_conn *c, lr_msg *m) {
  if (c->phase == LR_C_GONE || c->phase == LR_C_CLOSING) return;
  c->srv->stats.packets_out++;
  c->srv->stats.bytes_out += m->len;
  if (c->vt->send(c, m) != 0) lr_conn_close(c, 1008, "outgoing queue full");
}

static void gate_hold(lr_room *r, lr_conn *c, lr_msg *m) {
  if (c->gated_bytes + m->len > LR_GATED_MAX) {
    lr_warn("conn %s room %s: %zu bytes wait for storage; closing it", c->id, r->key,
            c->gated_bytes + m->len);
    lr_conn_close(c, 1013, "storage unavailable");
    return;
  }
  if (r->nout == r->capout) {
    if (r->outhead > 0) {
      memmove(r->outbox, r->outbox + r->outhead, (r->nout - r->outhead) * sizeof *r->outbox);
      r->nout -= r->outhead;
      r->outhead = 0;
    } else {
      r->capout = r->capout ? r->capout * 2 : 16;
      r->outbox = lr_xrealloc(r->outbox, r->capout * sizeof *r->outbox);
    }
  }
  lr_conn_retain(c);
  r->outbox[r->nout++] = (lr_gated){c, lr_msg_retain(m), gate_tag(r)};
  c->gated_bytes += m->len;
  lr_room_touch(r);
}

/* Send, in order, what waited for writes that are now committed. */
static void outbox_release(lr_room *r) {
  if (r->outhead == r->nout) return;
  lr_room_retain(r);
  while (r->outhead < r->nout && r->outbox[r->outhead].tag <= r->st_committed) {
    lr_gated g = r->outbox[r->outhead++];
    g.c->gated_bytes -= g.m->len;
    transport_send(g.c, g.m);
    lr_msg_release(g.m);
    lr_conn_release(g.c);
  }
  if (r->outhead == r->nout) r->outhead = r->nout = 0;
  lr_room_release(r);
}

static void outbox_free(lr_room *r) {
  for (uint32_t i = r->outhead; i < r->nout; i++) {
    r->outbox[i].c->gated_bytes -= r->outbox[i].m->len;
    lr_msg_release(r->outbox[i].m);
    lr_conn_release(r->outbox[i].c);
  }
  free(r->outbox);
  r->outbox = NULL;
  r->outhead = r->nout = r->capout = 0;
}

/* The state of r is written (or was clean): what waited for that write now
 * waits for the batch that carried it; then release what is committed. */
static void gate_settle(lr_room *r) {
  if (r->outhead == r->nout) return;
  if (!lr_state_dirty(r->root, LR_CH_PERSIST)) {
    for (uint32_t i = r->nout; i > r->outhead && r->outbox[i - 1].tag == TAG_PENDING; i--)
      r->outbox[i - 1].tag = r->st_accepted;
  }
  outbox_release(r);
}

static void set_failing(lr_room *r, bool engine, bool on, const char *err) {
  lr_server *s = r->srv;
  bool was = lr_room_store_failing(r);
  if (engine)
    r->flush_failed = on;
  else
    r->backend_failed = on;
  bool now = lr_room_store_failing(r);
  if (now && err && *err) {
    free(r->store_err);
    r->store_err = lr_xstrndup(err, strlen(err));
  }
  if (was == now) return;
  if (now) {
    r->failing_next = s->failing;
    if (s->failing) s->failing->failing_pprev = &r->failing_next;
    r->failing_pprev = &s->failing;
    s->failing = r;
    s->nfailing++;
    lr_error("room %s: its storage writes fail (%s): it refuses actions, joins and requests, and "
             "holds what it sends, until they commit",
             r->key, r->store_err ? r->store_err : "-");
  } else {
    *r->failing_pprev = r->failing_next;
    if (r->failing_next) r->failing_next->failing_pprev = r->failing_pprev;
    r->failing_next = NULL;
    r->failing_pprev = NULL;
    s->nfailing--;
    free(r->store_err);
    r->store_err = NULL;
    if (!r->disposed)
      lr_info("room %s: its storage writes commit again; held packets go out", r->key);
  }
}

/* Ask a write-behind store how far r's writes got. */
static void refresh_progress(lr_room *r) {
  lr_store *st = r->srv->store;
  if (!st || !st->vt->progress) return; /* synchronous: committed when apply returns */
  char err[256] = "";
  uint64_t a = 0, c = 0;
  int rc = st->vt->progress(st, r->ns, r->id, &a, &c, err, sizeof err);
  r->st_accepted = a;
  r->st_committed = c;
  set_failing(r, false, rc < 0, err);
}

void lr_server_store_progress(lr_server *s, const char *ns, const char *id) {
  lr_room *r = lr_room_find(s, ns, id);
  if (!r || r->disposed) return;
  lr_room_retain(r);
  refresh_progress(r);
  gate_settle(r);
  lr_room_release(r);
}

void lr_room_store_written(lr_room *r, int rc, const char *err) {
  if (r->disposed) return;
  if (rc == 0) {
    refresh_progress(r);
  } else if (rc != LR_STORE_EARG) { /* bad arguments are the caller's error */
    set_failing(r, true, true, err);
    retry_storage(r);
  }
}

/* ------------------------------------------------------------ sending */

static void conn_send_raw(lr_conn *c, lr_msg *m) {
  if (c->phase == LR_C_GONE || c->phase == LR_C_CLOSING) return;
  if (c->batched) { /* its snapshot goes first (lr_room_flush_sync) */
    lr_held *h = lr_xmalloc(sizeof *h);
    h->m = lr_msg_retain(m);
    h->next = c->held; /* newest first; deliver_held reverses */
    c->held = h;
    return;
  }
  if (c->room && room_gated(c->room)) {
    gate_hold(c->room, c, m);
    return;
  }
  transport_send(c, m);
}

/* Send an already-encoded packet to c, through the room's interceptor when it
 * has one (the only per-connection Lua work on the send path). */
void lr_conn_send_msg(lr_conn *c, lr_msg *m, const char *json, size_t len) {
  lr_room *r = c->room;
  if (c->uplink && r && r->has_interceptor) {
    /* One interceptor call per relayed client, not one for the whole shard. */
    lr_msg *own = m ? lr_msg_retain(m) : lr_msg_new(json, len);
    lr_uplink_fanout(c, own, NULL, 0);
    lr_msg_release(own);
    return;
  }
  if (!r || !r->has_interceptor) {
    lr_msg *own = m ? m : lr_msg_new(json, len);
    conn_send_raw(c, own);
    if (!m) lr_msg_release(own);
    return;
  }
  lr_msg *own = m ? lr_msg_retain(m) : lr_msg_new(json, len);
  lr_msg *out = c->srv->rules->intercept(c, own); /* NULL: dropped (a failing interceptor) */
  lr_msg_release(own);
  if (out) {
    conn_send_raw(c, out);
    lr_msg_release(out);
  }
}

void lr_conn_send_value(lr_conn *c, const lr_node *v) {
  lr_buf b;
  lr_buf_init(&b);
  lr_json_encode(v, 0, &b);
  lr_conn_send_msg(c, NULL, b.data, b.len);
  lr_buf_free(&b);
}

static bool excluded(const lr_conn *c, const char *const *except, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(c->id, except[i]) == 0) return true;
  return false;
}

void lr_room_broadcast(lr_room *r, const lr_node *v, const char *const *except, size_t nexcept) {
  lr_buf b;
  lr_buf_init(&b);
  lr_json_encode(v, 0, &b);
  lr_msg *m = lr_msg_new(b.data, b.len);
  lr_buf_free(&b);
  lr_room_retain(r);
  for (uint32_t i = 0; i < r->nconns; i++) {
    lr_conn *c = r->conns[i];
    if ((c->parked && !c->batched) || c->relayed || excluded(c, except, nexcept)) continue;
    if (c->uplink && nexcept)
      lr_uplink_fanout(c, m, except, nexcept); /* some of its clients may be excluded */
    else
      lr_conn_send_msg(c, m, NULL, 0);
  }
  lr_room_release(r);
  lr_msg_release(m);
}

/* The full synced state, {...}, as a snapshot carries it. */
static void encode_state(lr_room *r, lr_buf *st) {
  lr_json_encode(r->root, LR_F_NOSYNC, st);
}

/* Full-state packet for one connection, {"type":"sync","value":{"pId":..,...}},
 * around st from encode_state. */
static void snapshot_packet(const lr_buf *st, const char *public_id, lr_buf *out) {
  lr_buf_puts(out, "{\"type\":\"sync\",\"value\":{");
  if (public_id) {
    lr_buf_puts(out, "\"pId\":");
    lr_json_put_string(out, public_id, strlen(public_id));
    if (st->len > 2) lr_buf_putc(out, ',');
  }
  if (st->len > 2)
    lr_buf_put(out, st->data + 1, st->len - 1);
  else
    lr_buf_putc(out, '}');
  lr_buf_putc(out, '}');
}

static void encode_snapshot(lr_room *r, const char *public_id, lr_buf *out) {
  lr_buf st;
  lr_buf_init(&st);
  encode_state(r, &st);
  snapshot_packet(&st, public_id, out);
  lr_buf_free(&st);
}

static const char *conn_public_id(lr_conn *c, char *buf, size_t n) {
  return c->srv->rules->public_id(c, buf, n);
}

/* A batched joiner got its snapshot: what was sent to it meanwhile follows,
 * in order. */
static void deliver_held(lr_conn *c) {
  lr_held *h = NULL;
  for (lr_held *x = c->held, *next; x; x = next) { /* oldest first */
    next = x->next;
    x->next = h;
    h = x;
  }
  c->held = NULL;
  while (h) {
    lr_held *next = h->next;
    conn_send_raw(c, h->m);
    lr_msg_release(h->m);
    free(h);
    h = next;
  }
}

void lr_room_flush_sync(lr_room *r, bool full_if_clean) {
  bool dirty = lr_state_dirty(r->root, LR_CH_SYNC);
  bool parked = false;
  for (uint32_t i = 0; i < r->nconns; i++)
    parked |= r->conns[i]->parked;
  r->batched_joins = false;
  if (!dirty && !full_if_clean && !parked) return;
  lr_room_retain(r);
  lr_msg *m = NULL;
  lr_buf b;
  lr_buf_init(&b);
  if (dirty) {
    lr_buf_puts(&b, "{\"type\":\"sync\",\"value\":");
    lr_json_encode_patch(r->root, LR_CH_SYNC, &b);
    lr_buf_putc(&b, '}');
    lr_state_clear_dirty(r->root, LR_CH_SYNC);
  } else if (full_if_clean) {
    encode_snapshot(r, NULL, &b);
  }
  if (b.len) m = lr_msg_new(b.data, b.len);
  lr_buf st; /* the state, encoded once for every parked connection */
  lr_buf_init(&st);
  if (parked) encode_state(r, &st);
  for (uint32_t i = 0; i < r->nconns; i++) {
    lr_conn *c = r->conns[i];
    if (c->parked) {
      char pid[64];
      lr_buf snap;
      lr_buf_init(&snap);
      snapshot_packet(&st, conn_public_id(c, pid, sizeof pid), &snap);
      c->parked = false;
      c->batched = false;
      lr_conn_send_msg(c, NULL, snap.data, snap.len);
      lr_buf_free(&snap);
      deliver_held(c);
    } else if (m && !c->relayed) {
      lr_conn_send_msg(c, m, NULL, 0);
    }
  }
  lr_buf_free(&st);
  lr_msg_release(m);
  lr_buf_free(&b);
  lr_room_release(r);
}

/* ------------------------------------------------------------ storage */

typedef struct {
  lr_store_op *ops;
  size_t n, cap;
  lr_buf keys;  /* all keys and values, NUL-separated; ops point into it */
  size_t *offs; /* (keyoff, valoff) pairs, fixed up before apply */
} opsbuf;

static void ops_push(opsbuf *o, lr_store_op_kind kind, const char *k1, const char *k2, size_t k2len,
                     const char *val, size_t vallen) {
  if (o->n == o->cap) {
    o->cap = o->cap ? o->cap * 2 : 16;
    o->ops = lr_xrealloc(o->ops, o->cap * sizeof *o->ops);
    o->offs = lr_xrealloc(o->offs, o->cap * 2 * sizeof *o->offs);
  }
  size_t koff = o->keys.len;
  lr_buf_puts(&o->keys, k1);
  lr_buf_put(&o->keys, k2, k2len);
  size_t klen = o->keys.len - koff;
  lr_buf_putc(&o->keys, 0);
  size_t voff = o->keys.len;
  if (val) {
    lr_buf_put(&o->keys, val, vallen);
    lr_buf_putc(&o->keys, 0);
  }
  o->ops[o->n] = (lr_store_op){kind, NULL, klen, NULL, vallen};
  o->offs[2 * o->n] = koff;
  o->offs[2 * o->n + 1] = val ? voff : (size_t)-1;
  o->n++;
}

static void on_put(void *ud, const char *path, size_t pathlen, const char *json, size_t jsonlen) {
  opsbuf *o = ud;
  if (pathlen == 0) { /* the whole state: compacted form */
    ops_push(o, LR_STORE_DEL_PREFIX, "state:", "", 0, NULL, 0);
    ops_push(o, LR_STORE_PUT, "state:", ".", 1, json, jsonlen);
    return;
  }
  /* A value replaces everything stored below its path. */
  lr_buf tmp;
  lr_buf_init(&tmp);
  lr_buf_put(&tmp, path, pathlen);
  lr_buf_putc(&tmp, '.');
  ops_push(o, LR_STORE_DEL_PREFIX, "state:", tmp.data, tmp.len, NULL, 0);
  lr_buf_free(&tmp);
  ops_push(o, LR_STORE_PUT, "state:", path, pathlen, json, jsonlen);
}

static void on_del(void *ud, const char *path, size_t pathlen) {
  (void)ud;
  (void)path;
  (void)pathlen; /* deletions compact the whole state (below) */
}

/* The batch that writes r's pending persisted changes. */
static void build_ops(lr_room *r, opsbuf *o) {
  lr_buf_init(&o->keys);
  if (lr_state_has_dels(r->root, LR_CH_PERSIST)) {
    /* Compaction, as the reference does after a delete: every state: key
     * goes, the whole persisted state is written at state:. */
    lr_buf full;
    lr_buf_init(&full);
    lr_json_encode(r->root, LR_F_NOPERSIST, &full);
    ops_push(o, LR_STORE_DEL_PREFIX, "state:", "", 0, NULL, 0);
    ops_push(o, LR_STORE_PUT, "state:", ".", 1, full.data, full.len);
    lr_buf_free(&full);
  } else {
    lr_persist_ops cb = {o, on_put, on_del};
    lr_json_walk_persist(r->root, &cb);
  }
  for (size_t i = 0; i < o->n; i++) {
    o->ops[i].key = o->keys.data + o->offs[2 * i];
    o->ops[i].val = o->offs[2 * i + 1] == (size_t)-1 ? NULL : o->keys.data + o->offs[2 * i + 1];
  }
}

static void ops_free(opsbuf *o) {
  free(o->ops);
  free(o->offs);
  lr_buf_free(&o->keys);
}

int lr_room_flush_storage(lr_room *r) {
  lr_server *s = r->srv;
  if (!lr_state_dirty(r->root, LR_CH_PERSIST)) {
    if (r->flush_failed) set_failing(r, true, false, NULL); /* a failed direct write, retried */
    return 0;
  }
  if (!s->store) {
    lr_state_clear_dirty(r->root, LR_CH_PERSIST);
    return 0;
  }
  opsbuf o = {0};
  build_ops(r, &o);
  char err[256] = "";
  double t0 = mono_s();
  int rc = o.n ? lr_store_apply(s->store, r->ns, r->id, o.ops, o.n, err, sizeof err) : 0;
  s->stats.storage_seconds += mono_s() - t0;
  s->stats.storage_flushes++;
  if (rc) s->stats.storage_failures++;
  if (rc == 0) {
    lr_state_clear_dirty(r->root, LR_CH_PERSIST);
    r->store_retry_ms = 1000;
    if (o.n) refresh_progress(r);
    set_failing(r, true, false, NULL);
    gate_settle(r);
  } else {
    lr_error("room %s: storage write of %zu ops failed (%s); kept pending, retry in %lld ms",
             r->key, o.n, err, (long long)(s->shutting_down ? 100 : r->store_retry_ms));
    set_failing(r, true, true, err);
  }
  ops_free(&o);
  return rc;
}

bool lr_room_has_unwritten(lr_room *r) {
  return r->srv->store && lr_state_dirty(r->root, LR_CH_PERSIST);
}

/* Log what r loses: its unwritten keys (the first 10) and their count. */
static void report_unwritten(lr_room *r, const char *what) {
  opsbuf o = {0};
  build_ops(r, &o);
  lr_buf keys;
  lr_buf_init(&keys);
  size_t nkeys = 0;
  for (size_t i = 0; i < o.n; i++) {
    if (o.ops[i].kind != LR_STORE_PUT) continue;
    if (nkeys++ < 10)
      lr_buf_printf(&keys, "%s%.*s", nkeys > 1 ? ", " : "", (int)o.ops[i].keylen, o.ops[i].key);
  }
  if (nkeys > 10) lr_buf_printf(&keys, ", ... %zu more", nkeys - 10);
  lr_error("room %s: %s with %zu unwritten key(s), LOST: %s (%s)", r->key, what, nkeys,
           keys.len ? lr_buf_cstr(&keys) : "-", r->store_err ? r->store_err : "storage failed");
  lr_buf_free(&keys);
  ops_free(&o);
}

long lr_server_retry_unwritten(lr_server *s) {
  long left = 0;
  for (uint32_t b = 0; b < s->nbuckets; b++)
    for (lr_room *r = s->rooms[b]; r; r = r->hash_next)
      if (lr_room_has_unwritten(r) && lr_room_flush_storage(r) != 0) left++;
  return left;
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
  if (c->uplink || c->relayed) lr_uplink_forget(c);
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
}

void lr_room_join(lr_room *r, lr_conn *c, const char *public_id) {
  if (c->phase != LR_C_JOINING) return;
  if (r->srv->batch_joins && r->auto_sync && r->throttle_sync <= 0 && !c->uplink && !c->relayed) {
    /* A pass of the network loop often accepts dozens of sockets into one
     * room: they all join at the room's flush at the end of the pass (see
     * lr_server_flush_touched), where the others get one patch with every
     * new user and the joiners snapshots of one encoding, instead of one
     * patch to everyone and one full encoding per join. */
    c->parked = c->batched = true;
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
    encode_snapshot(r, public_id, &b);
    lr_conn_send_msg(c, NULL, b.data, b.len);
    lr_buf_free(&b);
  } else {
    c->parked = true;
  }
  room_list_add(r, c);
  c->phase = LR_C_JOINED;
}

/* ------------------------------------------------------------ hibernation and eviction */

/* Nothing of r's own keeps it: no connection (clients, shard uplinks,
 * relayed clients), no pending timer (room:timer, session expiry). Its
 * unwritten state is flushed by the eviction itself. */
static bool evictable(const lr_room *r) {
  return r->evict_ms > 0 && r->nconns == 0 && r->ntimers == 0 && !r->disposed &&
         !r->srv->shutting_down;
}

/* When r's next idle step is due (hibernation or eviction), or -1. */
static int64_t idle_due(const lr_room *r) {
  int64_t due = -1;
  if (r->hibernate_ms > 0 && !r->hibernated) due = r->last_active + r->hibernate_ms;
  if (evictable(r)) {
    int64_t e = r->last_active + r->evict_ms;
    if (due < 0 || e < due) due = e;
  }
  return due;
}

/* Arm r's idle timer for its next idle step, unless one is armed that fires
 * no later (a later one is superseded: it fires and does nothing). */
static void arm_idle(lr_room *r) {
  lr_server *s = r->srv;
  if (r->disposed || s->shutting_down) return;
  int64_t due = idle_due(r);
  if (due < 0 || (r->idle_at && r->idle_at <= due)) return;
  int64_t now = lr_now(s);
  if (due < now) due = now;
  r->idle_at = due;
  lr_timer_add(s, due - now, LR_T_IDLE, r, LR_NOREF);
}

void lr_room_idle_config(lr_room *r) {
  r->last_active = lr_now(r->srv);
  r->idle_at = 0; /* a timer armed for the old settings does nothing */
  arm_idle(r);
}

static void set_hibernated(lr_room *r, bool on) {
  if (r->hibernated == on) return;
  r->hibernated = on;
  if (on)
    r->srv->nhibernated++;
  else if (r->srv->nhibernated)
    r->srv->nhibernated--;
}

/* Free r's state tree and Lua instance (hibernation, or a wake that failed
 * half-way): r keeps its sockets and waits, hibernated, for the next event. */
static void drop_instance(lr_room *r) {
  if (r->box) *r->box = NULL; /* the old instance's handle is dead */
  r->box = NULL;
  if (r->ref != LR_NOREF) r->srv->rules->unref(r->srv->L, r->ref);
  r->ref = LR_NOREF;
  lr_node_release(r->root);
  r->root = lr_node_new(LR_OBJECT);
  set_hibernated(r, true);
}

bool lr_room_activity(lr_room *r) {
  lr_server *s = r->srv;
  if (r->disposed) return false;
  if (r->hibernated) {
    if (s->shutting_down) return false;
    set_hibernated(r, false);
    if (s->rules->wake(r) != 0) {
      lr_error("room %s: could not be rebuilt from storage; closing its connections (the next "
               "client or request tries again)",
               r->key);
      lr_room_retain(r);
      s->rules->hibernate(r); /* forget whatever the failed wake built */
      drop_instance(r);
      for (uint32_t i = r->nconns; i-- > 0;)
        lr_conn_close(r->conns[i], 1011, "room failed");
      lr_room_release(r);
      return false;
    }
    lr_info("room %s woke up (%u connections)", r->key, r->nconns);
  }
  r->last_active = lr_now(s);
  arm_idle(r);
  return true;
}

/* Hibernate r: flush, then free the state tree and the Lua instance. A room
 * whose storage cannot be written stays (and tries again later). */
static void hibernate(lr_room *r, int64_t idle) {
  lr_server *s = r->srv;
  if (r->auto_sync) lr_room_flush_sync(r, false);
  if (lr_room_flush_storage(r) != 0 || lr_state_dirty(r->root, LR_CH_PERSIST)) {
    lr_warn("room %s: not hibernated, its storage could not be written", r->key);
    r->last_active = lr_now(s); /* the next try after another idle period */
    return;
  }
  s->rules->hibernate(r);
  drop_instance(r);
  lr_info("room %s hibernated after %lld ms idle (%u connections kept)", r->key, (long long)idle,
          r->nconns);
}

/* Dispose of r: its state is written first (a room whose storage cannot be
 * written stays and tries again later); the next client or request builds
 * it again from storage. Returns true when r is gone. */
static bool evict(lr_room *r, int64_t idle) {
  lr_server *s = r->srv;
  if (!r->hibernated && (lr_room_flush_storage(r) != 0 || lr_state_dirty(r->root, LR_CH_PERSIST))) {
    lr_warn("room %s: not evicted, its storage could not be written", r->key);
    r->last_active = lr_now(s);
    return false;
  }
  lr_info("room %s evicted after %lld ms idle (no connection, no timer)", r->key, (long long)idle);
  lr_room_dispose(r);
  return true;
}

/* r's idle timer fired: evict or hibernate it if it has been idle long
 * enough, then arm the timer for the next step. */
static void idle_check(lr_room *r) {
  lr_server *s = r->srv;
  if (r->disposed || s->shutting_down) return;
  int64_t idle = lr_now(s) - r->last_active;
  if (evictable(r) && idle >= r->evict_ms) {
    if (evict(r, idle)) return;
  } else if (r->hibernate_ms > 0 && !r->hibernated && idle >= r->hibernate_ms) {
    hibernate(r, idle);
  }
  arm_idle(r);
}

/* ------------------------------------------------------------ rules glue */

const char *lr_server_env(lr_server *s, const char *name, char *buf, size_t n) {
  return s->rules->env(s, name, buf, n);
}

static void count_rejected(lr_server *s, const char *code) {
  static const char *const names[LR_NREJ] = {"invalid_packet", "unknown_action", "guard",
                                             "validation",     "handler",        "rate_limit",
                                             "too_large",      "other"};
  int i = 0;
  while (i < LR_REJ_OTHER && strcmp(names[i], code) != 0)
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
    conn_send_raw(c, m); /* after its snapshot */
  else
    transport_send(c, m); /* errors bypass the interceptor and the storage gate: they are ours */
  lr_msg_release(m);
  lr_buf_free(&b);
}

/* Split "/parties/{ns}/{room}[/rest]" (percent-decoding ns and room). */
static int parse_party_path(const lr_server *s, const char *path, char *ns, size_t nsz, char *id,
                            size_t idsz, const char **rest) {
  size_t pl = strlen(s->parties_prefix);
  if (strncmp(path, s->parties_prefix, pl) != 0 || path[pl] != '/') return -1;
  const char *p = path + pl + 1;
  char *outs[2] = {ns, id};
  size_t sz[2] = {nsz, idsz};
  for (int part = 0; part < 2; part++) {
    size_t j = 0;
    while (*p && *p != '/') {
      int ch = (unsigned char)*p;
      if (ch == '%') {
        if (!isxdigit((unsigned char)p[1]) || !isxdigit((unsigned char)p[2])) return -1;
        char hex[3] = {p[1], p[2], 0};
        ch = (int)strtol(hex, NULL, 16);
        p += 3;
      } else {
        p++;
      }
      if (ch < 0x20 || ch == 0x7f) return -1; /* no control bytes in names (logs, storage) */
      if (j + 1 >= sz[part]) return -1;
      outs[part][j++] = (char)ch;
    }
    outs[part][j] = 0;
    if (j == 0 || !lr_utf8_valid(outs[part], j)) return -1;
    if (part == 0) {
      if (*p != '/') return -1;
      p++;
    }
  }
  if (rest) *rest = p;
  return 0;
}

/* Find or create the room for ns/id. NULL if no definition matches. */
/* The room ns/id, woken or created as needed. NULL with *status the HTTP
 * status to answer: 404 no definition serves it (nothing logged), 503 the
 * room limit is reached, the server is stopping or the room could not be
 * rebuilt from storage, 500 creating it failed (both logged). */
static lr_room *get_room(lr_server *s, const char *ns, const char *id, int *status) {
  lr_room *r = lr_room_find(s, ns, id);
  *status = 503;
  if (r) return lr_room_activity(r) ? r : NULL;
  if (s->shutting_down) return NULL;
  if (s->max_rooms > 0 && s->nrooms >= (uint32_t)s->max_rooms) {
    lr_warn_limited("room limit", "room %s/%s not created: %u rooms live (max %ld)", ns, id,
                    s->nrooms, s->max_rooms);
    return NULL;
  }
  char err[256];
  if (s->rules->create(s, ns, id, err, sizeof err) != 0) {
    lr_error("room %s/%s: could not be created: %s", ns, id, err);
    r = lr_room_find(s, ns, id);
    if (r) lr_room_dispose(r);
    *status = 500;
    return NULL;
  }
  lr_server_flush_touched(s);
  r = lr_room_find(s, ns, id);
  if (!r) *status = 404;
  return r;
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
  r->srv->rules->attach(c);
  room_list_add(r, c);
  c->phase = LR_C_JOINED;
  return c;
}

/* Open a connection on room r: run the room's connect (guards, session,
 * onJoin, snapshot) and then the frames that arrived meanwhile. Returns the
 * connection with one reference owned by the caller's transport. */
/* Run the room's connect for c (joining, c->room set): guards, session,
 * onJoin, snapshot; then the frames that arrived meanwhile. */
static void connect_conn(lr_conn *c, const lr_request *req) {
  lr_room *r = c->room;
  lr_server *s = r->srv;
  lr_info("conn %s room %s: open from %s", c->id, r->key,
          req->remote_addr ? req->remote_addr : "-");
  lr_conn_retain(c);
  char err[256];
  if (s->rules->connect(c, req, err, sizeof err) != 0) lr_conn_close(c, 1011, "connect failed");
  lr_server_flush_touched(s);
  /* Frames that arrived while the room handled the connect. */
  if (c->phase == LR_C_JOINED && c->early) {
    lr_early *e = c->early;
    c->early = NULL;
    size_t off = 0;
    for (uint32_t i = 0; i < e->n && c->phase == LR_C_JOINED; i++) {
      lr_conn_message(c, e->buf.data + off, e->len[i]);
      off += e->len[i];
    }
    early_free(e);
  }
  lr_conn_release(c);
}

static lr_conn *open_conn(lr_room *r, const lr_request *req, const lr_transport_vt *vt, void *tp,
                          bool relayed) {
  lr_server *s = r->srv;
  s->stats.conns_open++;
  s->stats.conns_total++;
  lr_conn *c = lr_conn_new(s, r, vt, tp);
  c->relayed = relayed;
  if (lr_room_store_failing(r)) { /* a snapshot would show what is not stored */
    lr_conn_close(c, 1013, "storage unavailable");
    return c;
  }
  connect_conn(c, req);
  return c;
}

lr_conn *lr_room_open_conn(lr_room *r, const lr_request *req, const lr_transport_vt *vt, void *tp) {
  return open_conn(r, req, vt, tp, false);
}

lr_conn *lr_room_open_relayed(lr_room *r, const lr_request *req, const lr_transport_vt *vt,
                              void *tp) {
  return open_conn(r, req, vt, tp, true);
}

static const char *header_of(const lr_request *req, const char *name) {
  for (size_t i = 0; i < req->nheaders; i++)
    if (strcmp(req->headers[i].name, name) == 0) return req->headers[i].value;
  return NULL;
}

/* ------------------------------------------------------------ waiting for storage */

/* A WebSocket or HTTP request for a room whose storage is still loading (a
 * Lua backend that waits for I/O, storage_lua.c): kept here until the store
 * is ready, then handled as if it had just arrived. The WebSocket is already
 * accepted: its frames wait in the connection's early buffer. */
typedef struct lr_wait {
  struct lr_wait *next, **pprev;
  lr_server *s;
  char *ns, *id;
  lr_request req; /* deep copy */
  lr_header *headers;
  lr_conn *conn;       /* WebSocket: joining, no room yet (one reference) */
  lr_response_cb done; /* HTTP */
  void *ud;
} lr_wait;

static void respond_simple(lr_response_cb done, void *ud, int status, const char *body);
static bool served(lr_server *s, const char *ns, const char *id);

static char *dup_str(const char *p) {
  return p ? lr_xstrndup(p, strlen(p)) : NULL;
}

static lr_wait *wait_new(lr_server *s, const char *ns, const char *id, const lr_request *req) {
  lr_wait *w = lr_xcalloc(1, sizeof *w);
  w->s = s;
  w->ns = dup_str(ns);
  w->id = dup_str(id);
  lr_request *q = &w->req;
  q->method = dup_str(req->method);
  q->path = dup_str(req->path);
  q->query = dup_str(req->query);
  q->remote_addr = dup_str(req->remote_addr);
  q->body = req->body ? lr_xstrndup(req->body, req->bodylen) : NULL;
  q->bodylen = req->bodylen;
  w->headers = lr_xcalloc(req->nheaders + 1, sizeof *w->headers);
  for (size_t i = 0; i < req->nheaders; i++) {
    w->headers[i].name = dup_str(req->headers[i].name);
    w->headers[i].value = dup_str(req->headers[i].value ? req->headers[i].value : "");
  }
  q->headers = w->headers;
  q->nheaders = req->nheaders;
  return w;
}

static void wait_free(lr_wait *w) {
  if (w->pprev) {
    *w->pprev = w->next;
    if (w->next) w->next->pprev = w->pprev;
  }
  for (size_t i = 0; i < w->req.nheaders; i++) {
    free((char *)w->headers[i].name);
    free((char *)w->headers[i].value);
  }
  free(w->headers);
  free((char *)w->req.method);
  free((char *)w->req.path);
  free((char *)w->req.query);
  free((char *)w->req.remote_addr);
  free((char *)w->req.body);
  free(w->ns);
  free(w->id);
  free(w);
}

/* The server goes away: drop what still waits, without answering. */
static void waits_free(lr_server *s) {
  while (s->waits) {
    lr_wait *w = s->waits;
    if (w->conn) lr_conn_release(w->conn);
    wait_free(w);
  }
}

static void wait_done(void *ud, int ok, const char *err) {
  lr_wait *w = ud;
  lr_server *s = w->s;
  if (!ok) lr_warn("room %s/%s: storage not available (%s)", w->ns, w->id, err ? err : "-");
  if (w->conn) {
    lr_conn *c = w->conn;
    if (c->phase == LR_C_JOINING) {
      int status;
      lr_room *r = ok && !s->shutting_down ? get_room(s, w->ns, w->id, &status) : NULL;
      if (!r) {
        lr_conn_close(c, 1011, ok ? "room unavailable" : "storage unavailable");
      } else if (lr_room_store_failing(r)) {
        lr_conn_close(c, 1013, "storage unavailable");
      } else {
        c->room = lr_room_retain(r);
        connect_conn(c, &w->req);
      }
    }
    lr_conn_release(c);
  } else if (ok) {
    lr_server_http(s, &w->req, w->done, w->ud);
  } else {
    respond_simple(w->done, w->ud, 503, "{\"error\":\"Storage unavailable\"}");
  }
  wait_free(w);
}

/* Before creating room ns/id: when its storage is still loading, park the
 * request (WebSocket: vt/tp, *out set; HTTP: done/ud) and return 1; 0 when
 * the room can be created now (or no definition serves it); -1 when the
 * storage failed (answer 503). */
static int wait_for_storage(lr_server *s, const char *ns, const char *id, const lr_request *req,
                            const lr_transport_vt *vt, void *tp, lr_response_cb done, void *ud,
                            lr_conn **out) {
  if (!s->store->vt->ready || s->shutting_down || lr_room_find(s, ns, id)) return 0;
  if (!served(s, ns, id)) return 0; /* get_room answers 404 */
  lr_wait *w = wait_new(s, ns, id, req);
  char err[256];
  int rc = lr_store_ready(s->store, ns, id, wait_done, w, err, sizeof err);
  if (rc != 0) {
    if (rc < 0) lr_error("room %s/%s: storage not available: %s", ns, id, err);
    wait_free(w);
    return rc > 0 ? 0 : -1;
  }
  w->next = s->waits;
  if (w->next) w->next->pprev = &w->next;
  w->pprev = &s->waits;
  s->waits = w;
  if (vt) {
    lr_conn *c = lr_conn_new(s, NULL, vt, tp);
    s->stats.conns_open++;
    s->stats.conns_total++;
    lr_conn_retain(c);
    w->conn = c;
    *out = c;
    lr_info("conn %s: waits for the storage of %s/%s", c->id, ns, id);
  } else {
    w->done = done;
    w->ud = ud;
  }
  return 1;
}

/* ------------------------------------------------------------ who may create a room */

/* Whether a definition serves ns/id (runtime.has_room). */
static bool served(lr_server *s, const char *ns, const char *id) {
  return s->rules->serves(s, ns, id);
}

/* req carries the shard secret (a shard process relaying its clients). */
static bool from_shard(lr_server *s, const lr_request *req) {
  const char *given = header_of(req, "x-access-shard");
  if (!given || !(header_of(req, "x-shard-id") || header_of(req, "x-forwarded-by-shard")))
    return false;
  char secret[512];
  lr_server_env(s, "SHARD_SECRET", secret, sizeof secret);
  if (!secret[0]) return false;
  size_t a = strlen(given), b = strlen(secret);
  unsigned d = a != b;
  for (size_t i = 0; i < b; i++) /* constant time in the secret's length */
    d |= (unsigned char)secret[i] ^ (unsigned char)(i < a ? given[i] : 0);
  return d == 0;
}

/* A request is about to create room ns/id: take a token of its client
 * address's room-creation bucket (--room-create-rate), so that one address
 * cannot fill the room table. The address is the socket's; for a request
 * relayed by an authenticated shard, the client address it carries
 * (x-forwarded-for); a shard uplink and in-process requests (room to room,
 * no address) are not counted. false: refused (logged). */
static bool may_create(lr_server *s, const char *ns, const char *id, const lr_request *req) {
  char buf[64];
  const char *addr = req->remote_addr;
  if (from_shard(s, req)) {
    const char *xff = header_of(req, "x-forwarded-for");
    if (header_of(req, "x-shard-id") || !xff || !*xff) return true;
    size_t n = strcspn(xff, ", ");
    snprintf(buf, sizeof buf, "%.*s", (int)(n < sizeof buf ? n : sizeof buf - 1), xff);
    addr = buf;
  }
  if (lr_addr_rate_take(s->room_rate, addr, lr_now(s))) return true;
  lr_warn("room %s/%s not created: %s creates rooms faster than %g/s (burst %g)", ns, id, addr,
          lr_addr_rate_rate(s->room_rate), lr_addr_rate_burst(s->room_rate));
  return false;
}

int lr_server_ws_open(lr_server *s, const lr_request *req, const lr_transport_vt *vt, void *tp,
                      lr_conn **out) {
  *out = NULL;
  char ns[256], id[256];
  const char *rest;
  if (s->shutting_down) return 503;
  if (parse_party_path(s, req->path, ns, sizeof ns, id, sizeof id, &rest) != 0) {
    lr_warn_limited("websocket path", "websocket refused: path %s is not /parties/{party}/{room}",
                    req->path);
    return 404;
  }
  if (s->shard && strcmp(ns, "shard") == 0) return lr_shard_ws_open(s, req, id, vt, tp, out);
  if (!lr_room_find(s, ns, id)) {
    if (!served(s, ns, id)) {
      lr_warn("websocket refused: no room definition matches %s/%s", ns, id);
      return 404;
    }
    if (!may_create(s, ns, id, req)) return 429;
  }
  if (!header_of(req, "x-shard-id")) {
    int w = wait_for_storage(s, ns, id, req, vt, tp, NULL, NULL, out);
    if (w > 0) return 0;
    if (w < 0) return 503;
  }
  int status;
  lr_room *r = get_room(s, ns, id, &status);
  if (!r) {
    if (status == 404)
      lr_warn_limited("no such room", "websocket refused: no room definition matches %s/%s", ns,
                      id);
    return status;
  }
  if (header_of(req, "x-shard-id")) {
    /* A shard process relaying its clients (uplink.c). */
    return lr_uplink_open(r, req, vt, tp, out);
  }
  *out = lr_room_open_conn(r, req, vt, tp);
  return 0;
}

void lr_conn_message(lr_conn *c, const char *data, size_t len) {
  lr_server *s = c->srv;
  if (c->phase == LR_C_GONE || c->phase == LR_C_CLOSING) return;
  if (c->uplink) {
    lr_uplink_message(c, data, len);
    return;
  }
  if (c->shard_client) {
    lr_shard_client_message(c, data, len);
    return;
  }
  if (c->phase == LR_C_JOINING) {
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
    return;
  }
  /* Token bucket per connection; a client that keeps flooding is closed. */
  lr_room *rr = c->room;
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
      return;
    }
    c->tokens -= 1;
    c->drops = 0;
  }
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
    send_error(c, "storage", action->u.str.s,
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
  if (s->rules->message(c, action->u.str.s, action->u.str.len, value, send_error, err, sizeof err) <
      0)
    send_error(c, "handler", action->u.str.s, err);
  lr_server_flush_touched(s);
  if (lr_room_store_failing(r) && c->phase == LR_C_JOINED)
    send_error(c, "storage", action->u.str.s,
               "the room cannot write its storage: this action's changes are kept and sent "
               "once written; other actions are refused until then");
  lr_node_release(pkt);
  lr_conn_release(c);
  lr_room_release(r);
}

void lr_conn_closed(lr_conn *c) {
  lr_server *s = c->srv;
  if (c->phase == LR_C_GONE) return;
  if (c->uplink)
    lr_uplink_closed(c);
  else if (s->stats.conns_open)
    s->stats.conns_open--;
  if (c->shard_client) lr_shard_client_closed(c);
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
  if (c->relayed) lr_uplink_forget(c);
  lr_conn_release(c); /* the transport's reference */
}

static void deliver_pending_closes(lr_server *s) {
  while (s->npending_close) {
    lr_conn *c = s->pending_close[0];
    memmove(s->pending_close, s->pending_close + 1, --s->npending_close * sizeof *s->pending_close);
    lr_conn_closed(c);
  }
}

/* ------------------------------------------------------------ HTTP */

static const lr_header cors_headers[] = {
    {"Access-Control-Allow-Origin", "*"},
    {"Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, PATCH, OPTIONS"},
    {"Access-Control-Allow-Headers", "Content-Type, Authorization, X-Requested-With"},
    {"Access-Control-Max-Age", "86400"},
};

static void respond_simple(lr_response_cb done, void *ud, int status, const char *body) {
  lr_header h[5];
  memcpy(h, cors_headers, sizeof cors_headers);
  h[4] = (lr_header){"Content-Type", "application/json"};
  lr_response resp = {status, h, 5, body, strlen(body)};
  done(ud, &resp);
}

/* /healthz, /readyz, /metrics, /admin...: answered by runtime.operations,
 * which returns {status, headers, body} like a room route. */
static void ops_request(lr_server *s, const lr_request *req, lr_response_cb done, void *ud) {
  if (s->rules->operations(s, req, done, ud) < 0)
    respond_simple(done, ud, 500, "{\"error\":\"Internal Server Error\"}");
}

static const char storage_503[] = "{\"error\":\"Storage unavailable\",\"code\":\"storage\"}";

/* A room's handler answered: write first (an answer must not show what
 * could not be stored); true when the engine answered 503 instead. */
static bool http_settle(lr_room *r, lr_response_cb done, void *ud) {
  lr_server_flush_touched(r->srv);
  if (!lr_room_store_failing(r)) return false;
  respond_simple(done, ud, 503, storage_503);
  return true;
}

void lr_server_http(lr_server *s, const lr_request *req, lr_response_cb done, void *ud) {
  char ns[256], id[256];
  const char *rest;
  if (strcmp(req->method, "OPTIONS") == 0) {
    respond_simple(done, ud, 200, "{}");
    return;
  }
  if (strncmp(req->path, "/parties/", 9) != 0) {
    ops_request(s, req, done, ud);
    return;
  }
  if (parse_party_path(s, req->path, ns, sizeof ns, id, sizeof id, &rest) != 0) {
    lr_header h[1] = {{"Content-Type", "text/plain"}};
    lr_response resp = {404, h, 1, "Not Found", 9};
    done(ud, &resp);
    return;
  }
  if (s->shard && lr_shard_http(s, req, ns, id, rest, done, ud)) return;
  lr_room *live = lr_room_find(s, ns, id);
  if (!live || live->hibernated) {
    /* Nothing is created, woken or read from storage for a request the
     * room does not serve. */
    /* 1 answered (no such route, bad shard credentials), 0 the room
     * serves it, -1 no definition serves ns/id. */
    int pr = s->rules->preroute(s, ns, id, req, rest, done, ud);
    if (pr > 0) return;
    if (pr == 0 && !live && !may_create(s, ns, id, req)) {
      respond_simple(done, ud, 429, "{\"error\":\"Too Many Requests\"}");
      return;
    }
  }
  int w = wait_for_storage(s, ns, id, req, NULL, NULL, done, ud, NULL);
  if (w > 0) return;
  if (w < 0) {
    respond_simple(done, ud, 503, "{\"error\":\"Storage unavailable\"}");
    return;
  }
  int status;
  lr_room *r = get_room(s, ns, id, &status);
  if (!r) {
    if (status == 404)
      lr_warn_limited("no such room", "http %s %s: no room definition matches %s/%s", req->method,
                      req->path, ns, id);
    respond_simple(done, ud, status,
                   status == 404   ? "{\"error\":\"Not found\"}"
                   : status == 500 ? "{\"error\":\"Internal Server Error\"}"
                                   : "{\"error\":\"Service Unavailable\"}");
    return;
  }
  if (lr_room_store_failing(r)) {
    respond_simple(done, ud, 503, storage_503);
    return;
  }
  lr_room_retain(r);
  if (s->rules->request(r, req, rest, http_settle, done, ud) < 0) {
    lr_server_flush_touched(s);
    respond_simple(done, ud, 500, "{\"error\":\"Internal Server Error\"}");
  }
  lr_room_release(r);
}

/* ------------------------------------------------------------ shutdown */

void lr_server_shutdown(lr_server *s) {
  if (s->shutting_down) return;
  lr_info("shutting down: flushing rooms and closing connections");
  s->shutting_down = true;
  if (s->shard) lr_shard_shutdown(s);
  for (lr_wait *w = s->waits; w; w = w->next)
    if (w->conn) lr_conn_close(w->conn, 1001, "server shutdown");
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

/*
 * timer.c - the engine's clock and timer heap: real or virtual time, the
 * one min-heap of every timer (sync and storage throttles, idle checks,
 * rules callbacks, C callbacks) with its id map for cancellation, and the
 * loop pass (lr_server_tick / lr_server_advance) that fires what is due.
 *
 * Owns: lr_now, lr_random_id, lr_timer_*, lr_server_next_timeout,
 * lr_server_tick, lr_server_quiet, lr_server_advance.
 * Must not: decide what a due timer does beyond dispatching it (sync.c,
 * idle.c and the rules do that), or name Lua.
 */
#include "engine_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "log.h"

/* ------------------------------------------------------------------ clock */

double lr_mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int64_t lr_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t lr_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t lr_now(const lr_server *s) {
  return s->virtual_clock ? s->vnow : s->wall0 + (lr_mono_ms() - s->mono0);
}

/* Ids come from the kernel CSPRNG (rand.c); only the headless test host has
 * a seeded, reproducible generator (see lr_server_new). */
void lr_random_id(lr_server *s, char *out, size_t n, const char *alphabet) {
  lr_rand_id(s->rng_seeded ? &s->test_rng : NULL, out, n, alphabet);
}

static void timer_unhold(lr_timer *t);

void lr_timer_free(lr_server *s, lr_timer *t) {
  timer_unhold(t);
  if (t->fn_ref != LR_NOREF && t->fn_ref != 0 && s->rules) s->rules->unref(s->L, t->fn_ref);
  if (t->room) lr_room_release(t->room);
  free(t);
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

/* t no longer keeps its room from being evicted (it fired or was cancelled). */
static void timer_unhold(lr_timer *t) {
  if (!t->holds_room) return;
  t->holds_room = false;
  lr_room *r = t->room;
  if (r->ntimers) r->ntimers--;
  if (r->ntimers == 0) lr_room_arm_idle(r);
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
lr_timer *lr_timer_find(lr_server *s, uint64_t id) {
  if (!s->timer_map_cap) return NULL;
  lr_timer *t = *map_slot(s, id);
  while (t && t->seq != id)
    t = t->map_next;
  return t;
}

void lr_timer_cancel(lr_server *s, uint64_t id) {
  lr_timer *t = lr_timer_find(s, id);
  if (!t) return;
  t->cancelled = true;
  heap_remove(s, t);
  lr_timer_free(s, t);
}

static lr_timer *heap_pop(lr_server *s) {
  lr_timer *t = s->heap[0];
  heap_remove(s, t);
  return t;
}

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
    if (lr_room_flush_storage(r) != 0) lr_room_retry_storage(r);
    lr_room_gate_settle(r);
    break;
  case LR_T_IDLE:
    if (r->idle_seq != t->seq) break; /* superseded (not left armed: defensive) */
    r->idle_seq = 0;
    lr_room_idle_check(r);
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
    lr_timer_free(s, t);
    lr_server_flush_touched(s);
  }
}

int64_t lr_server_next_timeout(lr_server *s) {
  while (s->nheap && s->heap[0]->cancelled)
    lr_timer_free(s, heap_pop(s));
  if (!s->nheap) return -1;
  int64_t d = s->heap[0]->when - lr_now(s);
  return d < 0 ? 0 : d;
}

void lr_server_tick(lr_server *s) {
  if (s->in_tick) return;
  s->in_tick = true;
  if (!s->virtual_clock) run_due(s, lr_now(s));
  if (s->rules && s->rules->tick) s->rules->tick(s); /* e.g. hot reload's poll */
  lr_server_flush_touched(s);
  lr_server_deliver_closes(s);
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
  lr_server_deliver_closes(s);
}

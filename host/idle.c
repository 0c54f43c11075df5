/*
 * idle.c - idle rooms: hibernation (state tree and rules instance freed,
 * sockets kept, rebuilt from storage on the next event) and eviction (a
 * room with no connection and no timer of its own is disposed).
 *
 * Owns: lr_room_activity, lr_room_idle_config, the LR_T_IDLE timer of a
 * room and the server's hibernated count.
 * Must not: write storage except through lr_room_flush_storage, or name Lua
 * (wake and hibernate are s->rules calls).
 */
#include "engine_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"

/* ------------------------------------------------------------ hibernation and eviction */

/* Nothing of r's own keeps it: no connection (clients, shard uplinks,
 * relayed clients), no pending timer (room:timer, session expiry). Its
 * unwritten state is flushed by the eviction itself. */
static bool evictable(const lr_room *r) {
  return r->evict_ms > 0 && r->nconns == 0 && r->ntimers == 0 && r->nwaits == 0 && !r->disposed &&
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
 * no later (one armed for later is cancelled). */
void lr_room_arm_idle(lr_room *r) {
  lr_server *s = r->srv;
  if (r->disposed || s->shutting_down) return;
  int64_t due = idle_due(r);
  if (due < 0) return;
  const lr_timer *cur = r->idle_seq ? lr_timer_find(s, r->idle_seq) : NULL;
  if (cur && cur->when <= due) return;
  /* An earlier step than the armed one: the armed one goes (not left in
   * the heap to fire for nothing). */
  if (cur) lr_timer_cancel(s, r->idle_seq);
  int64_t now = lr_now(s);
  if (due < now) due = now;
  r->idle_seq = lr_timer_add(s, due - now, LR_T_IDLE, r, LR_NOREF)->seq;
}

/* The armed idle timer goes: it holds a timer (and a room reference) that
 * would fire for nothing. */
static void idle_disarm(lr_room *r) {
  if (!r->idle_seq) return;
  uint64_t id = r->idle_seq;
  r->idle_seq = 0;
  lr_timer_cancel(r->srv, id);
}

void lr_room_idle_config(lr_room *r) {
  r->last_active = lr_now(r->srv);
  idle_disarm(r); /* armed for the old settings */
  lr_room_arm_idle(r);
}

void lr_room_idle_joined(lr_room *r) {
  if (r->idle_seq && idle_due(r) < 0) idle_disarm(r);
}

void lr_room_set_hibernated(lr_room *r, bool on) {
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
  lr_room_set_hibernated(r, true);
}

bool lr_room_activity(lr_room *r) {
  lr_server *s = r->srv;
  if (r->disposed) return false;
  if (r->hibernated) {
    if (s->shutting_down) return false;
    lr_room_set_hibernated(r, false);
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
  lr_room_arm_idle(r);
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
void lr_room_idle_check(lr_room *r) {
  lr_server *s = r->srv;
  if (r->disposed || s->shutting_down) return;
  if (r->nwaits) { /* a handler waits on this instance: it stays (lr_room_wait_hold) */
    r->last_active = lr_now(s);
    lr_room_arm_idle(r);
    return;
  }
  int64_t idle = lr_now(s) - r->last_active;
  if (evictable(r) && idle >= r->evict_ms) {
    if (evict(r, idle)) return;
  } else if (r->hibernate_ms > 0 && !r->hibernated && idle >= r->hibernate_ms) {
    hibernate(r, idle);
  }
  lr_room_arm_idle(r);
}

void lr_room_wait_hold(lr_room *r, int delta) {
  if (delta > 0) {
    r->nwaits++;
  } else if (r->nwaits) {
    r->nwaits--;
    if (r->nwaits == 0 && !r->disposed) {
      r->last_active = lr_now(r->srv);
      lr_room_arm_idle(r);
    }
  }
}

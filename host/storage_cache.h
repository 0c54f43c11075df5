/*
 * storage_cache.h - the write-behind cache of the stores whose backend waits
 * for I/O (storage_lua.c, storage_postgres.c).
 *
 * How such a store meets the engine's synchronous reads: a room's keys are
 * loaded once into a cache (a memory store) before the room is created
 * (the engine waits for ready()); reads are answered from it. A write batch
 * goes to the cache at once and is queued (a deep copy) for the backend;
 * the backend commits the batches of a room in order and says so here.
 *
 * Guarantees (host/tests/test_storage_cache.c):
 * - read your writes: a batch accepted is visible to get/list/count at once,
 *   whatever the backend does later;
 * - order: batches leave the queue from the head only (commit, or drop when
 *   the store gives them up), and accepted/committed only grow;
 * - a failed backend write keeps its batches queued for the retry (the
 *   backend decides when), and the room reads as failing in progress()
 *   until a commit;
 * - a forgotten room is dropped (cache keys and state) only once nothing of
 *   it is pending: no queued batch, no load, no waiter, nothing pinned, and
 *   the backend says it is not busy with it;
 * - the LOST report at close names the keys of the batches still queued.
 *
 * Owns: the per-room state (load state, ready waiters, the queue of batches,
 * progress counters, the last failure), the cache store, the room table.
 * Must not: talk to a backend, know the key layout of rooms, call the
 * engine or Lua, or arm timers (the backend schedules its own retries).
 */
#ifndef LR_STORAGE_CACHE_H
#define LR_STORAGE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage.h"

typedef struct lr_wb lr_wb;

/* One accepted write batch: a deep copy (keys and values NUL-terminated). */
typedef struct lr_wb_batch {
  struct lr_wb_batch *next;
  size_t n;
  lr_store_op *ops;
  char *mem;
} lr_wb_batch;

typedef struct lr_wb_waiter lr_wb_waiter;

enum { LR_WB_NONE = 0, LR_WB_LOADING, LR_WB_LOADED };

/* A backend's room starts with one of these (cfg.room_size is its size). */
typedef struct lr_wb_room {
  struct lr_wb_room *hnext; /* hash chain */
  char *ns, *id;
  int state; /* LR_WB_* */
  lr_wb_batch *qhead, **qtail;
  long nqueued;
  long inflight; /* batches from qhead the backend call in flight carries */
  uint64_t accepted, committed;
  char failed[200]; /* why the last backend write failed; "" when it did not */
  bool forget;      /* the engine let go of it: dropped once idle */
  int pin;          /* > 0 while a caller works on it: never dropped under its feet */
  lr_wb_waiter *waiters, **wtail;
} lr_wb_room;

typedef struct lr_wb_cfg {
  const char *name;  /* "lua storage": the start of its messages */
  const char *where; /* "on the backend": "N write batch(es) not <where>, LOST" */
  const char *peer;  /* "the backend": "shutdown before <peer> answered" */
  size_t room_size;  /* >= sizeof(lr_wb_room) */
  size_t nbuckets;   /* a power of two */
  /* The backend still needs r (a call in flight, a place on a work list):
   * not dropped. NULL: only the cache's own conditions count. */
  bool (*busy)(void *ud, lr_wb_room *r);
  /* r leaves (forgotten, nothing pending), just before it is freed. */
  void (*dropped)(void *ud, lr_wb_room *r);
  void *ud;
} lr_wb_cfg;

lr_wb *lr_wb_new(const lr_wb_cfg *cfg, char *err, size_t errlen);
/* Frees every room (their queued batches too: report them first). */
void lr_wb_free(lr_wb *c);

lr_wb_room *lr_wb_room_get(lr_wb *c, const char *ns, const char *id, bool create);
/* fn(ud, r) for every room; fn may drop r (and only r). */
void lr_wb_each(lr_wb *c, void (*fn)(void *ud, lr_wb_room *r), void *ud);

/* ---- reads: from the cache, for a loaded room (NULL or not loaded:
 * LR_STORE_EBUSY, "the engine waits for ready()") ---- */
int lr_wb_get(lr_wb *c, lr_wb_room *r, const char *ns, const char *id, const char *key, lr_buf *out,
              char *err, size_t errlen);
int lr_wb_list(lr_wb *c, lr_wb_room *r, const char *ns, const char *id, const char *prefix,
               lr_store_list_cb cb, void *ud, char *err, size_t errlen);
/* Keys of the loaded rooms (ns, id NULL: as lr_store_count). */
long lr_wb_count(lr_wb *c, const char *ns, const char *id);
int lr_wb_not_loaded(lr_wb *c, const char *ns, const char *id, char *err, size_t errlen);

/* ---- loading ---- */
/* The backend listed r's entries (PUT ops): they replace the cache's keys
 * of r and r is loaded; invalid entries change nothing (LR_STORE_EARG). */
int lr_wb_loaded(lr_wb *c, lr_wb_room *r, const lr_store_op *entries, size_t n, char *err,
                 size_t errlen);
/* Empty r's keys in the cache; r is not loaded. */
void lr_wb_unload(lr_wb *c, lr_wb_room *r);
void lr_wb_wait(lr_wb_room *r, lr_store_ready_cb cb, void *ud);
/* Run (and free) r's waiters with ok/why; then r is dropped if it may be
 * (do not touch r afterwards unless it is pinned). */
void lr_wb_wake(lr_wb *c, lr_wb_room *r, int ok, const char *why);

/* ---- writes ---- */
/* Apply ops to the cache and queue a copy for the backend (accepted + 1).
 * The ops must be checked already (lr__store_check_ops). */
int lr_wb_accept(lr_wb *c, lr_wb_room *r, const lr_store_op *ops, size_t n, char *err,
                 size_t errlen);
/* The backend stored ops without waiting: to the cache, accepted and
 * committed + 1, nothing queued. */
int lr_wb_apply_committed(lr_wb *c, lr_wb_room *r, const lr_store_op *ops, size_t n, char *err,
                          size_t errlen);
/* The r->inflight batches at the head are on the backend: dequeued,
 * committed += inflight, inflight = 0, failure cleared. */
void lr_wb_commit(lr_wb *c, lr_wb_room *r);
/* The r->inflight head batches will never be stored (fenced): dequeued
 * without counting them committed; inflight = 0. */
void lr_wb_drop_inflight(lr_wb *c, lr_wb_room *r);
/* Every batch behind the r->inflight ones is given up; returns how many. */
long lr_wb_drop_queued(lr_wb *c, lr_wb_room *r);
/* The backend write of r failed: the batches stay queued, r is failing. */
void lr_wb_fail(lr_wb_room *r, const char *why);

/* ---- the engine's view ---- */
int lr_wb_progress(lr_wb *c, const char *ns, const char *id, uint64_t *accepted,
                   uint64_t *committed, char *err, size_t errlen);
long lr_wb_pending(lr_wb *c);
/* The engine let go of (ns, id): dropped now or once idle. */
void lr_wb_forget(lr_wb *c, const char *ns, const char *id);
/* Drop r if it is forgotten and idle (see the top of this file). */
void lr_wb_maybe_drop(lr_wb *c, lr_wb_room *r);
/* Log what the queued batches of every room lose (at close). */
void lr_wb_report_lost(lr_wb *c);

#endif

/*
 * storage_cache.c - the write-behind cache shared by the stores whose
 * backend waits for I/O (storage_lua.c, storage_postgres.c).
 *
 * Owns: what storage_cache.h lists: the room table, per-room load state and
 * ready waiters, the queue of accepted batches (deep copies), progress
 * counters and the last failure, the cache (a memory store), dropping
 * forgotten rooms once idle, the LOST report.
 * Must not: talk to a backend, know the key layout of rooms, call the
 * engine or Lua, or arm timers.
 */
#include "storage_cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "log.h"

struct lr_wb_waiter {
  lr_wb_waiter *next;
  lr_store_ready_cb cb;
  void *ud;
};

struct lr_wb {
  lr_wb_cfg cfg;
  lr_store *cache;
  lr_wb_room **buckets;
  long pending; /* batches queued (in flight included), all rooms */
};

lr_wb *lr_wb_new(const lr_wb_cfg *cfg, char *err, size_t errlen) {
  lr_store *cache = lr_store_memory_open(NULL, err, errlen);
  if (!cache) return NULL;
  lr_wb *c = lr_xcalloc(1, sizeof *c);
  c->cfg = *cfg;
  if (c->cfg.room_size < sizeof(lr_wb_room)) c->cfg.room_size = sizeof(lr_wb_room);
  if (!c->cfg.nbuckets || (c->cfg.nbuckets & (c->cfg.nbuckets - 1))) c->cfg.nbuckets = 1024;
  c->cache = cache;
  c->buckets = lr_xcalloc(c->cfg.nbuckets, sizeof *c->buckets);
  return c;
}

static uint32_t bucket(lr_wb *c, const char *ns, const char *id) {
  uint32_t h = lr_fnv1a(LR_FNV1A_INIT, ns, strlen(ns));
  h = lr_fnv1a(h, "\xff", 1); /* 0xff never occurs in UTF-8 */
  h = lr_fnv1a(h, id, strlen(id));
  return h & (uint32_t)(c->cfg.nbuckets - 1);
}

lr_wb_room *lr_wb_room_get(lr_wb *c, const char *ns, const char *id, bool create) {
  uint32_t b = bucket(c, ns, id);
  for (lr_wb_room *r = c->buckets[b]; r; r = r->hnext)
    if (strcmp(r->ns, ns) == 0 && strcmp(r->id, id) == 0) return r;
  if (!create) return NULL;
  lr_wb_room *r = lr_xcalloc(1, c->cfg.room_size);
  r->ns = lr_xstrndup(ns, strlen(ns));
  r->id = lr_xstrndup(id, strlen(id));
  r->wtail = &r->waiters;
  r->qtail = &r->qhead;
  r->hnext = c->buckets[b];
  c->buckets[b] = r;
  return r;
}

static void batch_free(lr_wb_batch *q) {
  free(q->ops);
  free(q->mem);
  free(q);
}

/* Unlink r and free it with its waiters and batches. */
static void room_free(lr_wb *c, lr_wb_room *r) {
  for (lr_wb_room **p = &c->buckets[bucket(c, r->ns, r->id)]; *p; p = &(*p)->hnext)
    if (*p == r) {
      *p = r->hnext;
      break;
    }
  for (lr_wb_waiter *w = r->waiters, *n; w; w = n) {
    n = w->next;
    free(w);
  }
  for (lr_wb_batch *q = r->qhead, *n; q; q = n) {
    n = q->next;
    batch_free(q);
    c->pending--;
  }
  free(r->ns);
  free(r->id);
  free(r);
}

void lr_wb_free(lr_wb *c) {
  if (!c) return;
  for (size_t b = 0; b < c->cfg.nbuckets; b++)
    while (c->buckets[b])
      room_free(c, c->buckets[b]);
  lr_store_close(c->cache);
  free(c->buckets);
  free(c);
}

void lr_wb_each(lr_wb *c, void (*fn)(void *ud, lr_wb_room *r), void *ud) {
  for (size_t b = 0; b < c->cfg.nbuckets; b++)
    for (lr_wb_room *r = c->buckets[b], *nx; r; r = nx) {
      nx = r->hnext;
      fn(ud, r);
    }
}

/* ------------------------------------------------------------ reads */

int lr_wb_not_loaded(lr_wb *c, const char *ns, const char *id, char *err, size_t errlen) {
  lr__store_errf(err, errlen,
                 "%s: %s/%s is not loaded (the engine waits for ready() before reading)",
                 c->cfg.name, ns, id);
  return LR_STORE_EBUSY;
}

int lr_wb_get(lr_wb *c, lr_wb_room *r, const char *ns, const char *id, const char *key, lr_buf *out,
              char *err, size_t errlen) {
  lr_buf_reset(out);
  if (!r || r->state != LR_WB_LOADED) return lr_wb_not_loaded(c, ns, id, err, errlen);
  return lr_store_get(c->cache, ns, id, key, out, err, errlen);
}

int lr_wb_list(lr_wb *c, lr_wb_room *r, const char *ns, const char *id, const char *prefix,
               lr_store_list_cb cb, void *ud, char *err, size_t errlen) {
  if (!r || r->state != LR_WB_LOADED) return lr_wb_not_loaded(c, ns, id, err, errlen);
  return lr_store_list(c->cache, ns, id, prefix, cb, ud, err, errlen);
}

long lr_wb_count(lr_wb *c, const char *ns, const char *id) {
  return lr_store_count(c->cache, ns, id);
}

/* ------------------------------------------------------------ loading */

int lr_wb_loaded(lr_wb *c, lr_wb_room *r, const lr_store_op *entries, size_t n, char *err,
                 size_t errlen) {
  lr_store_op *ops = lr_xcalloc(n + 1, sizeof *ops);
  ops[0] = (lr_store_op){LR_STORE_DEL_PREFIX, "", 0, NULL, 0};
  if (n) memcpy(ops + 1, entries, n * sizeof *ops);
  int rc = lr_store_apply(c->cache, r->ns, r->id, ops, n + 1, err, errlen);
  free(ops);
  r->state = rc == 0 ? LR_WB_LOADED : LR_WB_NONE;
  return rc;
}

void lr_wb_unload(lr_wb *c, lr_wb_room *r) {
  lr_store_op all = {LR_STORE_DEL_PREFIX, "", 0, NULL, 0};
  lr_store_apply(c->cache, r->ns, r->id, &all, 1, NULL, 0);
  r->state = LR_WB_NONE;
}

void lr_wb_wait(lr_wb_room *r, lr_store_ready_cb cb, void *ud) {
  lr_wb_waiter *w = lr_xcalloc(1, sizeof *w);
  w->cb = cb;
  w->ud = ud;
  *r->wtail = w;
  r->wtail = &w->next;
}

void lr_wb_wake(lr_wb *c, lr_wb_room *r, int ok, const char *why) {
  r->pin++; /* a callback may reach forget */
  lr_wb_waiter *w = r->waiters;
  r->waiters = NULL;
  r->wtail = &r->waiters;
  while (w) {
    lr_wb_waiter *n = w->next;
    w->cb(w->ud, ok, why);
    free(w);
    w = n;
  }
  r->pin--;
  lr_wb_maybe_drop(c, r);
}

/* ------------------------------------------------------------ writes */

static lr_wb_batch *batch_copy(const lr_store_op *ops, size_t n) {
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++)
    bytes += ops[i].keylen + 1 + (ops[i].kind == LR_STORE_PUT ? ops[i].vallen + 1 : 0);
  lr_wb_batch *q = lr_xcalloc(1, sizeof *q);
  q->n = n;
  q->ops = lr_xcalloc(n ? n : 1, sizeof *q->ops);
  q->mem = lr_xmalloc(bytes ? bytes : 1);
  char *p = q->mem;
  for (size_t i = 0; i < n; i++) {
    q->ops[i] = ops[i];
    memcpy(p, ops[i].key ? ops[i].key : "", ops[i].keylen);
    p[ops[i].keylen] = 0;
    q->ops[i].key = p;
    p += ops[i].keylen + 1;
    if (ops[i].kind == LR_STORE_PUT) {
      memcpy(p, ops[i].val, ops[i].vallen);
      p[ops[i].vallen] = 0;
      q->ops[i].val = p;
      p += ops[i].vallen + 1;
    } else {
      q->ops[i].val = NULL;
      q->ops[i].vallen = 0;
    }
  }
  return q;
}

int lr_wb_accept(lr_wb *c, lr_wb_room *r, const lr_store_op *ops, size_t n, char *err,
                 size_t errlen) {
  int rc = lr_store_apply(c->cache, r->ns, r->id, ops, n, err, errlen);
  if (rc) return rc;
  lr_wb_batch *q = batch_copy(ops, n);
  *r->qtail = q;
  r->qtail = &q->next;
  r->nqueued++;
  r->accepted++;
  c->pending++;
  return 0;
}

int lr_wb_apply_committed(lr_wb *c, lr_wb_room *r, const lr_store_op *ops, size_t n, char *err,
                          size_t errlen) {
  r->accepted++;
  r->committed++;
  return lr_store_apply(c->cache, r->ns, r->id, ops, n, err, errlen);
}

static void pop_head(lr_wb *c, lr_wb_room *r, long n) {
  for (long k = 0; k < n && r->qhead; k++) {
    lr_wb_batch *q = r->qhead;
    r->qhead = q->next;
    if (!r->qhead) r->qtail = &r->qhead;
    batch_free(q);
    r->nqueued--;
    c->pending--;
  }
}

void lr_wb_commit(lr_wb *c, lr_wb_room *r) {
  pop_head(c, r, r->inflight);
  r->committed += (uint64_t)r->inflight;
  r->inflight = 0;
  r->failed[0] = 0;
}

void lr_wb_drop_inflight(lr_wb *c, lr_wb_room *r) {
  pop_head(c, r, r->inflight);
  r->inflight = 0;
}

long lr_wb_drop_queued(lr_wb *c, lr_wb_room *r) {
  lr_wb_batch **pp = &r->qhead;
  for (long k = 0; k < r->inflight && *pp; k++)
    pp = &(*pp)->next;
  long dropped = 0;
  while (*pp) {
    lr_wb_batch *q = *pp;
    *pp = q->next;
    batch_free(q);
    r->nqueued--;
    c->pending--;
    dropped++;
  }
  r->qtail = pp;
  return dropped;
}

void lr_wb_fail(lr_wb_room *r, const char *why) {
  snprintf(r->failed, sizeof r->failed, "%.190s", why && *why ? why : "backend write failed");
}

/* ------------------------------------------------------------ the engine's view */

int lr_wb_progress(lr_wb *c, const char *ns, const char *id, uint64_t *accepted,
                   uint64_t *committed, char *err, size_t errlen) {
  lr_wb_room *r = lr_wb_room_get(c, ns, id, false);
  *accepted = r ? r->accepted : 0;
  *committed = r ? r->committed : 0;
  if (!r || !r->failed[0]) return 0;
  lr__store_errf(err, errlen, "%s: %s", c->cfg.name, r->failed);
  return LR_STORE_EIO;
}

long lr_wb_pending(lr_wb *c) {
  return c->pending;
}

void lr_wb_maybe_drop(lr_wb *c, lr_wb_room *r) {
  if (!r->forget || r->pin || r->inflight || r->qhead || r->state == LR_WB_LOADING || r->waiters ||
      (c->cfg.busy && c->cfg.busy(c->cfg.ud, r)))
    return;
  if (c->cfg.dropped) c->cfg.dropped(c->cfg.ud, r);
  lr_store_op all = {LR_STORE_DEL_PREFIX, "", 0, NULL, 0};
  lr_store_apply(c->cache, r->ns, r->id, &all, 1, NULL, 0);
  room_free(c, r);
}

void lr_wb_forget(lr_wb *c, const char *ns, const char *id) {
  lr_wb_room *r = lr_wb_room_get(c, ns, id, false);
  if (!r) return;
  r->forget = true;
  lr_wb_maybe_drop(c, r);
}

/* Log what r's queued batches lose: their keys (the first 10). */
static void report_room(lr_wb *c, lr_wb_room *r) {
  lr_buf keys;
  lr_buf_init(&keys);
  long nk = 0;
  for (lr_wb_batch *q = r->qhead; q; q = q->next)
    for (size_t i = 0; i < q->n; i++)
      if (nk++ < 10) lr_buf_printf(&keys, "%s%s", nk > 1 ? ", " : "", q->ops[i].key);
  if (nk > 10) lr_buf_printf(&keys, ", ... %ld more", nk - 10);
  char shut[160];
  snprintf(shut, sizeof shut, "shutdown before %s answered", c->cfg.peer);
  lr_error("storage %s/%s: %ld write batch(es) not %s, LOST: %s (%s)", r->ns, r->id, r->nqueued,
           c->cfg.where, keys.len ? lr_buf_cstr(&keys) : "-", r->failed[0] ? r->failed : shut);
  lr_buf_free(&keys);
}

void lr_wb_report_lost(lr_wb *c) {
  if (!c->pending) return;
  lr_warn("%s: closing with %ld write batch(es) not %s", c->cfg.name, c->pending, c->cfg.where);
  for (size_t b = 0; b < c->cfg.nbuckets; b++)
    for (lr_wb_room *r = c->buckets[b]; r; r = r->hnext)
      if (r->qhead) report_room(c, r);
}

/*
 * storage_lua.c - a storage backend written in Lua (--storage lua:FILE).
 *
 * FILE returns a table of functions; values cross as JSON text, so numbers
 * stay exact whatever the backend does with them:
 *   list(ns, room, prefix)  -> { {key, json}, ... } in ascending key order
 *   put(ns, room, key, json)
 *   delete(ns, room, key)
 *   apply(ns, room, ops)    optional: ops = { {"put", k, json} | {"del", k}
 *                           | {"delprefix", k} }, all or nothing; without it
 *                           the ops run one by one
 * Any of them may wait for I/O with lunaroom.io (sleep, request): every call
 * runs in its own coroutine, and the host resumes it when the timer fires or
 * the HTTP answer arrives, while the loop serves everything else.
 *
 * How the engine's synchronous reads meet a backend that waits: a room's
 * keys are loaded once (list with prefix "") into a cache (a memory store)
 * before the room is created; the engine asks ready() and parks the
 * connection or request meanwhile. Reads are then answered from the cache.
 * A write batch goes to the cache at once and to the backend behind it, in
 * order, one backend call per room at a time (batches queued meanwhile are
 * merged into the next call). A failed backend write stays queued and is
 * retried with backoff (1 s doubling to 30 s), logged with the room; shutdown
 * waits for the queue (main.c) and logs what is lost. progress() counts each
 * room's accepted and committed batches and tells the engine of every change
 * (lr_server_store_progress), so packets wait for the backend's commit (the
 * engine's storage gate, room.c). When the backend answers without waiting,
 * a write behaves as before: its error is the caller's and nothing is
 * cached.
 *
 * Owns: the lr_store vtable over such a table, the per-room cache state,
 * the write queue and the coroutines of backend calls.
 * Must not: know the key layout of rooms, or call a room's Lua.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "engine.h"
#include "fetch.h"
#include "log.h"
#include "lua_vm.h"
#include "hash.h"
#include "storage.h"

#define NBUCKETS 1024
#define RETRY_MIN_MS 1000
#define RETRY_MAX_MS 30000

typedef struct lstore lstore;
typedef struct lroom lroom;

typedef struct waiter {
  struct waiter *next;
  lr_store_ready_cb cb;
  void *ud;
} waiter;

typedef struct batch {
  struct batch *next;
  int ref; /* the ops as a Lua array (push_ops), kept for retries */
} batch;

enum { J_LOAD = 1, J_APPLY };
enum { R_NONE = 0, R_LOADING, R_LOADED };

typedef struct job {
  lstore *s;
  lroom *r;
  int kind;
  lua_State *co;
  int coref;
  int nbatches;   /* J_APPLY: queued batches this call carries */
  uint64_t timer; /* waiting in lunaroom.io.sleep */
  uint64_t fetch; /* waiting in lunaroom.io.request */
  char err[256];  /* set when the call failed */
  int done, ok;   /* finished (synchronously or later) */
  bool sync;      /* the caller is still on the stack: no callbacks */
} job;

struct lroom {
  lroom *next;
  lstore *s;
  char *ns, *id;
  int state;
  waiter *waiters, **wtail;
  batch *qhead, **qtail;
  long nqueued;
  job *inflight;
  int64_t backoff;
  uint64_t retry_timer;
  bool forget;
  int pin;                      /* > 0 while job_end works on it: not dropped under its feet */
  uint64_t accepted, committed; /* write batches (progress(), the engine's storage gate) */
  char failed[200];             /* why the last backend write failed; "" when it did not */
};

struct lstore {
  lr_store base;
  lua_State *L;
  int ref; /* the backend table */
  int drv; /* lunaroom.io.run */
  lr_store *cache;
  lr_server *srv;
  lroom *rooms[NBUCKETS];
  long pending; /* batches queued or in flight, all rooms */
};

static uint32_t hash2(const char *a, const char *b) {
  uint32_t h = lr_fnv1a(LR_FNV1A_INIT, a, strlen(a));
  h = lr_fnv1a(h, "\xff", 1);
  return lr_fnv1a(h, b, strlen(b));
}

static lroom *room_get(lstore *s, const char *ns, const char *id, bool create) {
  uint32_t b = hash2(ns, id) & (NBUCKETS - 1);
  for (lroom *r = s->rooms[b]; r; r = r->next)
    if (strcmp(r->ns, ns) == 0 && strcmp(r->id, id) == 0) return r;
  if (!create) return NULL;
  lroom *r = lr_xcalloc(1, sizeof *r);
  r->s = s;
  r->ns = lr_xstrndup(ns, strlen(ns));
  r->id = lr_xstrndup(id, strlen(id));
  r->wtail = &r->waiters;
  r->qtail = &r->qhead;
  r->next = s->rooms[b];
  s->rooms[b] = r;
  return r;
}

static void room_free(lstore *s, lroom *r) {
  uint32_t b = hash2(r->ns, r->id) & (NBUCKETS - 1);
  for (lroom **p = &s->rooms[b]; *p; p = &(*p)->next) {
    if (*p == r) {
      *p = r->next;
      break;
    }
  }
  for (waiter *w = r->waiters, *n; w; w = n) {
    n = w->next;
    free(w);
  }
  for (batch *q = r->qhead, *n; q; q = n) {
    n = q->next;
    lr_ref_release(s->L, q->ref);
    free(q);
  }
  free(r->ns);
  free(r->id);
  free(r);
}

/* Drop a forgotten room from the cache once nothing of it is pending. */
static void maybe_drop(lstore *s, lroom *r) {
  if (!r->forget || r->pin || r->inflight || r->qhead || r->state == R_LOADING || r->waiters)
    return;
  lr_store_op all = {LR_STORE_DEL_PREFIX, "", 0, NULL, 0};
  lr_store_apply(s->cache, r->ns, r->id, &all, 1, NULL, 0);
  room_free(s, r);
}

/* ------------------------------------------------------------ backend calls */

static void push_ops(lua_State *L, const lr_store_op *ops, size_t n) {
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_createtable(L, 3, 0);
    const char *kind = ops[i].kind == LR_STORE_PUT   ? "put"
                       : ops[i].kind == LR_STORE_DEL ? "del"
                                                     : "delprefix";
    lua_pushstring(L, kind);
    lua_rawseti(L, -2, 1);
    lua_pushlstring(L, ops[i].key, ops[i].keylen);
    lua_rawseti(L, -2, 2);
    if (ops[i].kind == LR_STORE_PUT) {
      lua_pushlstring(L, ops[i].val, ops[i].vallen);
      lua_rawseti(L, -2, 3);
    }
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

static void job_step(job *j, int nargs);
static void job_end(job *j);

static void on_timer(void *ud) {
  job *j = ud;
  j->timer = 0;
  job_step(j, 0);
}

static void on_fetch(void *ud, const lr_fetch_result *res) {
  job *j = ud;
  j->fetch = 0;
  lr_fetch_push_result(j->co, res);
  job_step(j, 1);
}

/* The coroutine yielded nres values: a wait of lunaroom.io. Arms it, or
 * returns -1 with the reason in j->err. */
static int start_wait(job *j, int nres) {
  lua_State *co = j->co;
  int base = lua_gettop(co) - nres + 1;
  const char *what = nres > 0 ? lua_tostring(co, base) : NULL;
  lr_server *srv = j->s->srv;
  if (!what || (strcmp(what, "lunaroom.sleep") != 0 && strcmp(what, "lunaroom.request") != 0)) {
    snprintf(j->err, sizeof j->err, "the backend yielded outside lunaroom.io (sleep, request)");
    return -1;
  }
  if (!srv) {
    snprintf(j->err, sizeof j->err, "%s: no event loop to wait on", what);
    return -1;
  }
  if (strcmp(what, "lunaroom.sleep") == 0) {
    int64_t ms = (int64_t)lua_tonumber(co, base + 1);
    lua_settop(co, base - 1);
    j->timer = lr_timer_add_c(srv, ms, on_timer, j);
    return 0;
  }
  /* "lunaroom.request", method, url, headers, body, timeout */
  const char *method = lua_tostring(co, base + 1), *url = lua_tostring(co, base + 2);
  size_t bodylen = 0;
  const char *body = lua_tolstring(co, base + 4, &bodylen);
  int64_t timeout = (int64_t)lua_tonumber(co, base + 5);
  lr_header h[32];
  size_t nh = 0;
  if (lua_istable(co, base + 3)) {
    lua_pushnil(co);
    while (nh < 32 && lua_next(co, base + 3)) {
      if (lua_type(co, -2) == LUA_TSTRING && lua_type(co, -1) == LUA_TSTRING) {
        h[nh].name = lua_tostring(co, -2);
        h[nh].value = lua_tostring(co, -1);
        nh++;
      }
      lua_pop(co, 1);
    }
  }
  /* lr_fetch copies what it needs; the strings live on co until settop. */
  j->fetch = lr_fetch(srv, method ? method : "GET", url ? url : "", h, nh, body, bodylen, timeout,
                      on_fetch, j);
  lua_settop(co, base - 1);
  if (!j->fetch) {
    snprintf(j->err, sizeof j->err, "lunaroom.io.request: %s is not a plain http:// URL",
             url ? url : "(nil)");
    return -1;
  }
  return 0;
}

/* Resume j's coroutine with nargs values on its stack. */
static void job_step(job *j, int nargs) {
  char what[64];
  snprintf(what, sizeof what, "storage %s", j->kind == J_LOAD ? "load" : "write");
  char key[512];
  snprintf(key, sizeof key, "%s/%s", j->r->ns, j->r->id);
  lr_callinfo ci = {.room = key, .what = what};
  int nres = 0;
  int rc = lr_vm_resume(j->co, j->s->L, nargs, &nres, &ci);
  if (rc == LUA_YIELD) {
    if (start_wait(j, nres) == 0) return;
    j->ok = 0;
  } else if (rc == LUA_OK) {
    j->ok = 1;
  } else {
    snprintf(j->err, sizeof j->err, "%.*s", (int)sizeof j->err - 1, ci.err);
    j->ok = 0;
  }
  j->done = 1;
  if (!j->sync) job_end(j);
}

/* Start a backend call: lunaroom.io.run(backend, op, ns, room, ops) where
 * ops is at the top of L's stack for J_APPLY (popped). */
static job *job_start(lstore *s, lroom *r, int kind) {
  lua_State *L = s->L;
  job *j = lr_xcalloc(1, sizeof *j);
  j->s = s;
  j->r = r;
  j->kind = kind;
  j->co = lua_newthread(L);
  j->coref = lr_ref_take(L);
  lua_rawgeti(j->co, LUA_REGISTRYINDEX, s->drv);
  lua_rawgeti(j->co, LUA_REGISTRYINDEX, s->ref);
  lua_pushstring(j->co, kind == J_LOAD ? "load" : "apply");
  lua_pushstring(j->co, r->ns);
  lua_pushstring(j->co, r->id);
  if (kind == J_APPLY)
    lua_xmove(L, j->co, 1);
  else
    lua_pushnil(j->co);
  r->inflight = j;
  j->sync = true;
  job_step(j, 5);
  j->sync = false;
  return j; /* j->done: finished already, the caller ends it */
}

static void job_free(job *j) {
  if (j->timer && j->s->srv) lr_timer_cancel(j->s->srv, j->timer);
  if (j->fetch) lr_fetch_cancel(j->fetch);
  lr_ref_release(j->s->L, j->coref);
  free(j);
}

/* A load finished: put what the backend listed into the cache. */
static int load_into_cache(job *j) {
  lstore *s = j->s;
  lua_State *co = j->co;
  if (!lua_istable(co, -1)) {
    snprintf(j->err, sizeof j->err, "list did not return a table");
    return -1;
  }
  lua_Integer n = (lua_Integer)lua_rawlen(co, -1);
  lr_store_op *ops = lr_xcalloc((size_t)n + 1, sizeof *ops);
  ops[0] = (lr_store_op){LR_STORE_DEL_PREFIX, "", 0, NULL, 0};
  size_t k = 1;
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(co, -1, i);
    if (lua_istable(co, -1)) {
      lua_rawgeti(co, -1, 1);
      lua_rawgeti(co, -2, 2);
      size_t kl, vl;
      const char *kk = lua_tolstring(co, -2, &kl), *vv = lua_tolstring(co, -1, &vl);
      if (kk && vv) ops[k++] = (lr_store_op){LR_STORE_PUT, kk, kl, vv, vl};
      lua_pop(co, 2); /* the strings stay alive in the entry table, on the list */
    }
    lua_pop(co, 1);
  }
  char err[200];
  int rc = lr_store_apply(s->cache, j->r->ns, j->r->id, ops, k, err, sizeof err);
  free(ops);
  if (rc) snprintf(j->err, sizeof j->err, "listed entries are not valid: %.200s", err);
  return rc ? -1 : 0;
}

static void start_queue(lstore *s, lroom *r);

static void on_retry(void *ud) {
  lroom *r = ud;
  r->retry_timer = 0;
  start_queue(r->s, r);
}

/* Called once per finished job that outlived its starting call. */
static void job_end(job *j) {
  lstore *s = j->s;
  lroom *r = j->r;
  r->inflight = NULL;
  /* The callbacks below may reach l_forget, and start_queue may finish a
   * call at once (a nested job_end): r stays until the end of this one. */
  r->pin++;
  if (j->kind == J_LOAD) {
    if (j->ok && load_into_cache(j) == 0) {
      r->state = R_LOADED;
    } else {
      r->state = R_NONE;
      j->ok = 0;
      lr_error("storage %s/%s: loading from the Lua backend failed: %s", r->ns, r->id, j->err);
    }
    waiter *w = r->waiters;
    r->waiters = NULL;
    r->wtail = &r->waiters;
    job_free(j);
    int loaded = r->state == R_LOADED;
    while (w) {
      waiter *n = w->next;
      w->cb(w->ud, loaded, loaded ? NULL : "storage load failed");
      free(w);
      w = n;
    }
  } else if (j->ok) {
    int nb = j->nbatches;
    for (int i = 0; i < nb && r->qhead; i++) {
      batch *q = r->qhead;
      r->qhead = q->next;
      if (!r->qhead) r->qtail = &r->qhead;
      lr_ref_release(s->L, q->ref);
      free(q);
      r->nqueued--;
      s->pending--;
    }
    r->committed += (uint64_t)nb;
    r->failed[0] = 0;
    if (r->backoff) lr_info("storage %s/%s: the Lua backend accepts writes again", r->ns, r->id);
    r->backoff = 0;
    job_free(j);
    if (s->srv) lr_server_store_progress(s->srv, r->ns, r->id);
    start_queue(s, r);
  } else {
    r->backoff = r->backoff ? r->backoff * 2 : RETRY_MIN_MS;
    if (r->backoff > RETRY_MAX_MS) r->backoff = RETRY_MAX_MS;
    lr_error("storage %s/%s: write to the Lua backend failed (%ld batch(es) kept, retry in %lld "
             "ms): %s",
             r->ns, r->id, r->nqueued, (long long)r->backoff, j->err);
    snprintf(r->failed, sizeof r->failed, "%.190s", j->err[0] ? j->err : "backend write failed");
    job_free(j);
    if (s->srv) {
      r->retry_timer = lr_timer_add_c(s->srv, r->backoff, on_retry, r);
      lr_server_store_progress(s->srv, r->ns, r->id);
    }
  }
  r->pin--;
  maybe_drop(s, r); /* forgotten meanwhile, and nothing left pending */
}

/* Send every queued batch of r to the backend in one call, unless a call is
 * running or a retry is pending. */
static void start_queue(lstore *s, lroom *r) {
  if (r->inflight || !r->qhead || r->retry_timer) return;
  lua_State *L = s->L;
  int nb = 0;
  if (!r->qhead->next) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->qhead->ref);
    nb = 1;
  } else {
    lua_newtable(L);
    lua_Integer k = 0;
    for (batch *q = r->qhead; q; q = q->next, nb++) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, q->ref);
      lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
      for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        lua_rawseti(L, -3, ++k);
      }
      lua_pop(L, 1);
    }
  }
  job *j = job_start(s, r, J_APPLY);
  j->nbatches = nb;
  if (j->done) job_end(j);
}

/* Load r into the cache now if the backend answers without waiting.
 * 0 when loaded; LR_STORE_EBUSY when it is loading (a call waits for I/O);
 * LR_STORE_EIO when the backend failed. */
static int ensure_loaded(lstore *s, lroom *r, char *err, size_t errlen) {
  if (r->state == R_LOADED) return 0;
  if (r->state == R_NONE) {
    job *j = job_start(s, r, J_LOAD);
    if (!j->done) {
      r->state = R_LOADING;
    } else {
      r->inflight = NULL;
      int ok = j->ok && load_into_cache(j) == 0;
      if (!ok)
        lr__store_errf(err, errlen, "lua storage: loading %s/%s failed: %s", r->ns, r->id, j->err);
      job_free(j);
      if (!ok) return LR_STORE_EIO;
      r->state = R_LOADED;
      return 0;
    }
  }
  lr__store_errf(err, errlen,
                 "lua storage: %s/%s is still loading (the backend waits for I/O); the engine "
                 "waits for ready() before reading",
                 r->ns, r->id);
  return LR_STORE_EBUSY;
}

static int l_get(lr_store *st, const char *ns, const char *room, const char *key, lr_buf *out,
                 char *err, size_t errlen) {
  lstore *s = (lstore *)st;
  lr_buf_reset(out);
  int rc = ensure_loaded(s, room_get(s, ns, room, true), err, errlen);
  return rc ? rc : lr_store_get(s->cache, ns, room, key, out, err, errlen);
}

static int l_list(lr_store *st, const char *ns, const char *room, const char *prefix,
                  lr_store_list_cb cb, void *ud, char *err, size_t errlen) {
  lstore *s = (lstore *)st;
  int rc = ensure_loaded(s, room_get(s, ns, room, true), err, errlen);
  return rc ? rc : lr_store_list(s->cache, ns, room, prefix, cb, ud, err, errlen);
}

static long l_count(lr_store *st, const char *ns, const char *room) {
  lstore *s = (lstore *)st;
  if (ns && room && ensure_loaded(s, room_get(s, ns, room, true), NULL, 0) != 0) return -1;
  return lr_store_count(s->cache, ns, room); /* ns or room NULL: the loaded rooms */
}

static void enqueue(lstore *s, lroom *r, int ref) {
  batch *q = lr_xcalloc(1, sizeof *q);
  q->ref = ref;
  *r->qtail = q;
  r->qtail = &q->next;
  r->nqueued++;
  s->pending++;
}

static int l_apply(lr_store *st, const char *ns, const char *room, const lr_store_op *ops, size_t n,
                   char *err, size_t errlen) {
  lstore *s = (lstore *)st;
  lua_State *L = s->L;
  int rc = lr__store_check_ops(ns, room, ops, n, err, errlen);
  if (rc) return rc;
  lroom *r = room_get(s, ns, room, true);
  if ((rc = ensure_loaded(s, r, err, errlen)) != 0) return rc;
  push_ops(L, ops, n);
  int ref = lr_ref_take(L);
  if (!r->inflight && !r->qhead && !r->retry_timer) {
    /* Nothing ahead of it: try it now; a backend that answers at once
     * reports its error to the caller, as a synchronous store does. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    job *j = job_start(s, r, J_APPLY);
    j->nbatches = 1;
    if (j->done) {
      r->inflight = NULL;
      lr_ref_release(L, ref);
      int ok = j->ok;
      if (!ok) lr__store_errf(err, errlen, "lua storage apply: %s", j->err);
      job_free(j);
      if (!ok) return LR_STORE_EIO;
      r->accepted++;
      r->committed++;
      return lr_store_apply(s->cache, ns, room, ops, n, err, errlen);
    }
  }
  /* Behind a running call, or this one waits for I/O: queued (it is the
   * head if it is the running call). */
  enqueue(s, r, ref);
  r->accepted++;
  return lr_store_apply(s->cache, ns, room, ops, n, err, errlen);
}

static int l_ready(lr_store *st, const char *ns, const char *room, lr_store_ready_cb cb, void *ud,
                   char *err, size_t errlen) {
  lstore *s = (lstore *)st;
  lroom *r = room_get(s, ns, room, true);
  r->forget = false;
  int rc = ensure_loaded(s, r, err, errlen);
  if (rc == 0) return 1;
  if (rc != LR_STORE_EBUSY) return -1;
  waiter *w = lr_xcalloc(1, sizeof *w);
  w->cb = cb;
  w->ud = ud;
  *r->wtail = w;
  r->wtail = &w->next;
  return 0;
}

static void l_forget(lr_store *st, const char *ns, const char *room) {
  lstore *s = (lstore *)st;
  lroom *r = room_get(s, ns, room, false);
  if (!r) return;
  r->forget = true;
  maybe_drop(s, r);
}

static long l_pending(lr_store *st) {
  return ((lstore *)st)->pending;
}

static int l_progress(lr_store *st, const char *ns, const char *room, uint64_t *accepted,
                      uint64_t *committed, char *err, size_t errlen) {
  lroom *r = room_get((lstore *)st, ns, room, false);
  *accepted = r ? r->accepted : 0;
  *committed = r ? r->committed : 0;
  if (!r || !r->failed[0]) return 0;
  lr__store_errf(err, errlen, "lua storage: %s", r->failed);
  return LR_STORE_EIO;
}

static void l_bind(lr_store *st, lr_server *srv) {
  lstore *s = (lstore *)st;
  s->srv = srv;
  if (srv) return;
  /* The engine's timers are about to be freed without firing. */
  for (int b = 0; b < NBUCKETS; b++)
    for (lroom *r = s->rooms[b]; r; r = r->next) {
      r->retry_timer = 0;
      if (r->inflight) r->inflight->timer = 0;
    }
}

/* Log what a room's queued batches lose: their keys (the first 10). */
static void report_lost(lstore *s, lroom *r) {
  lua_State *L = s->L;
  lr_buf keys;
  lr_buf_init(&keys);
  long nkeys = 0;
  for (batch *q = r->qhead; q; q = q->next) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, q->ref);
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, i);
      lua_rawgeti(L, -1, 2);
      if (nkeys++ < 10) lr_buf_printf(&keys, "%s%s", nkeys > 1 ? ", " : "", lua_tostring(L, -1));
      lua_pop(L, 2);
    }
    lua_pop(L, 1);
  }
  if (nkeys > 10) lr_buf_printf(&keys, ", ... %ld more", nkeys - 10);
  lr_error("storage %s/%s: %ld write batch(es) not on the backend, LOST: %s (%s)", r->ns, r->id,
           r->nqueued, keys.len ? lr_buf_cstr(&keys) : "-",
           r->failed[0] ? r->failed : "shutdown before the backend answered");
  lr_buf_free(&keys);
}

static void l_close(lr_store *st) {
  lstore *s = (lstore *)st;
  if (s->pending) {
    lr_warn("lua storage: closing with %ld write batch(es) not on the backend", s->pending);
    for (int b = 0; b < NBUCKETS; b++)
      for (lroom *r = s->rooms[b]; r; r = r->next)
        if (r->qhead) report_lost(s, r);
  }
  for (int b = 0; b < NBUCKETS; b++)
    while (s->rooms[b]) {
      lroom *r = s->rooms[b];
      if (r->inflight) job_free(r->inflight);
      room_free(s, r);
    }
  lr_store_close(s->cache);
  lr_ref_release(s->L, s->drv);
  lr_ref_release(s->L, s->ref);
  free(s);
}

static const lr_store_vt lua_vt = {
    .name = "lua",
    .get = l_get,
    .list = l_list,
    .apply = l_apply,
    .count = l_count,
    .close = l_close,
    .bind = l_bind,
    .ready = l_ready,
    .forget = l_forget,
    .pending = l_pending,
    .progress = l_progress,
};

lr_store *lr_store_lua_open(lua_State *L, const char *path, char *err, size_t errlen) {
  lr_callinfo ci = {.what = "storage backend"};
  lua_getglobal(L, "require");
  lua_pushstring(L, "lunaroom.io");
  if (lr_vm_pcall(L, 1, 1, &ci) != 0) {
    lr__store_errf(err, errlen, "%s", ci.err);
    return NULL;
  }
  lua_getfield(L, -1, "run");
  lua_remove(L, -2);
  if (luaL_loadfile(L, path) != LUA_OK) {
    lr__store_errf(err, errlen, "%s", lua_tostring(L, -1));
    lua_pop(L, 2);
    return NULL;
  }
  if (lr_vm_pcall(L, 0, 1, &ci) != 0) {
    lr__store_errf(err, errlen, "%s", ci.err);
    lua_pop(L, 1);
    return NULL;
  }
  const char *missing = NULL;
  if (!lua_istable(L, -1)) {
    missing = "a table";
  } else {
    lua_getfield(L, -1, "list");
    if (!lua_isfunction(L, -1)) missing = "list";
    lua_pop(L, 1);
    lua_getfield(L, -1, "apply");
    int has_apply = lua_isfunction(L, -1);
    lua_pop(L, 1);
    if (!has_apply && !missing) {
      lua_getfield(L, -1, "put");
      lua_getfield(L, -2, "delete");
      if (!lua_isfunction(L, -2) || !lua_isfunction(L, -1)) missing = "put and delete (or apply)";
      lua_pop(L, 2);
    }
  }
  if (missing) {
    lua_pop(L, 2);
    lr__store_errf(err, errlen,
                   "%s must return a table with list and apply (or put and delete): "
                   "no %s",
                   path, missing);
    return NULL;
  }
  lr_store *cache = lr_store_memory_open(NULL, err, errlen);
  if (!cache) {
    lua_pop(L, 2);
    return NULL;
  }
  lstore *s = lr_xcalloc(1, sizeof *s);
  s->base.vt = &lua_vt;
  s->L = L;
  s->cache = cache;
  s->ref = lr_ref_take(L);
  s->drv = lr_ref_take(L);
  return &s->base;
}

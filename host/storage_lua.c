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
 * runs through lunaroom.tasks (tasks.backend), the one driver of coroutines
 * that wait, which room handlers use too; the host resumes it when the
 * timer fires or the HTTP answer arrives, while the loop serves everything
 * else. Each call goes through the engine's host call (the rules' call
 * helper: counted and rolled back as every call into Lua).
 *
 * How the engine's synchronous reads meet a backend that waits: the
 * write-behind cache (storage_cache.c, shared with storage_postgres.c). A
 * room's keys are loaded once (list with prefix "") before the room is
 * created; the engine asks ready() and parks the connection or request
 * meanwhile. Reads are then answered from the cache. A write batch goes to
 * the cache at once and to the backend behind it, in order, one backend
 * call per room at a time (batches queued meanwhile are merged into the
 * next call). A failed backend write stays queued and is retried with
 * backoff (1 s doubling to 30 s), logged with the room; shutdown waits for
 * the queue (main.c) and logs what is lost. progress() counts each room's
 * accepted and committed batches and the engine is told of every change
 * (its host's progress function), so packets wait for the backend's commit
 * (the engine's storage gate). When the backend answers without waiting, a
 * write behaves as before: its error is the caller's and nothing is cached.
 *
 * Owns: the lr_store vtable over such a table, the backend calls in flight
 * (one per room) and the retry backoff.
 * Must not: know the key layout of rooms, call a room's Lua, call the
 * engine (it reports through the lr_store_host it is bound with), or drive
 * coroutines itself (lunaroom.tasks does).
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "log.h"
#include "lua_vm.h"
#include "storage.h"
#include "storage_cache.h"

#define NBUCKETS 1024
#define RETRY_MIN_MS 1000
#define RETRY_MAX_MS 30000

typedef struct lstore lstore;
typedef struct job job;

typedef struct lroom {
  lr_wb_room b; /* first: the cache's room */
  lstore *s;
  job *job; /* the backend call in flight */
  int64_t backoff;
  uint64_t retry_timer;
} lroom;

enum { J_LOAD = 1, J_APPLY };

/* What the done callback tasks.backend runs later holds: NULL once the job
 * is gone (finished, or the store closed). */
typedef struct jhandle {
  job *j;
} jhandle;

struct job {
  lstore *s;
  lroom *r;
  int kind;
  jhandle *h;         /* while it waits */
  uint64_t end_timer; /* finished while waiting: ended from a 0 ms timer */
  bool loaded;        /* J_LOAD: the listed entries are in the cache */
  char err[256];      /* set when the call failed */
  int done, ok;       /* finished (synchronously or later) */
};

struct lstore {
  lr_store base;
  lua_State *L;
  int ref;     /* the backend table */
  int run;     /* lunaroom.io.run: one operation of a backend */
  int backend; /* lunaroom.tasks.backend: the driver */
  lr_wb *wb;
  const lr_store_host *host; /* the engine's, while bound */
  void *hud;
};

static bool room_busy(void *ud, lr_wb_room *b) {
  (void)ud;
  return ((lroom *)b)->job != NULL;
}

static void maybe_drop(lstore *s, lroom *r) {
  lr_wb_maybe_drop(s->wb, &r->b);
}

static void notify(lstore *s, lroom *r) {
  if (s->host) s->host->progress(s->hud, r->b.ns, r->b.id);
}

/* ------------------------------------------------------------ backend calls */

static void push_ops(lua_State *L, const lr_store_op *ops, size_t n, lua_Integer *k) {
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
    lua_rawseti(L, -2, ++*k);
  }
}

/* The entries a load listed (the table at idx of L) into the cache. */
static int load_into_cache(job *j, lua_State *L, int idx) {
  if (!lua_istable(L, idx)) {
    snprintf(j->err, sizeof j->err, "list did not return a table");
    return -1;
  }
  idx = lua_absindex(L, idx);
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  lr_store_op *ops = lr_xcalloc((size_t)n + 1, sizeof *ops);
  size_t k = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, i);
    if (lua_istable(L, -1)) {
      lua_rawgeti(L, -1, 1);
      lua_rawgeti(L, -2, 2);
      size_t kl, vl;
      const char *kk = lua_tolstring(L, -2, &kl), *vv = lua_tolstring(L, -1, &vl);
      if (kk && vv) ops[k++] = (lr_store_op){LR_STORE_PUT, kk, kl, vv, vl};
      lua_pop(L, 2); /* the strings stay alive in the entry table, on the list */
    }
    lua_pop(L, 1);
  }
  char err[200];
  int rc = lr_wb_loaded(j->s->wb, &j->r->b, ops, k, err, sizeof err);
  free(ops);
  if (rc) snprintf(j->err, sizeof j->err, "listed entries are not valid: %.200s", err);
  return rc ? -1 : 0;
}

/* The call's outcome, ok and a result or message at idx of L. */
static void job_result(job *j, lua_State *L, int ok, int idx) {
  j->ok = ok;
  if (!ok) {
    const char *m = lua_tostring(L, idx);
    snprintf(j->err, sizeof j->err, "%s", m ? m : "backend call failed");
  } else if (j->kind == J_LOAD) {
    j->ok = load_into_cache(j, L, idx) == 0;
    j->loaded = j->ok;
  }
  j->done = 1;
}

static void job_end(job *j);

static void on_job_end(void *ud) {
  job *j = ud;
  j->end_timer = 0;
  job_end(j);
}

/* done(ok, result | message): tasks.backend finished a call that waited. */
static int job_done_cb(lua_State *L) {
  jhandle *h = lua_touserdata(L, lua_upvalueindex(1));
  job *j = h->j;
  if (!j) return 0; /* the store let go of it */
  h->j = NULL;
  j->h = NULL;
  job_result(j, L, lua_toboolean(L, 1), 2);
  if (j->kind == J_LOAD) j->r->b.state = LR_WB_LOADING; /* until its waiters are told */
  /* Ended from the engine's timer, not from inside this Lua call: the
   * engine's ready callbacks and progress run as they do for any timer. */
  lstore *s = j->s;
  if (s->host)
    j->end_timer = s->host->timer(s->hud, 0, on_job_end, j);
  else
    job_end(j);
  return 0;
}

/* Call tasks.backend(srv, key, what, done, io.run, backend, op, ns, room,
 * ops) where ops is at the top of L's stack for J_APPLY (popped). */
static job *job_start(lstore *s, lroom *r, int kind) {
  lua_State *L = s->L;
  if (kind == J_LOAD) lua_pushnil(L);
  int top = lua_gettop(L); /* the ops */
  job *j = lr_xcalloc(1, sizeof *j);
  j->s = s;
  j->r = r;
  j->kind = kind;
  r->job = j;
  const char *what = kind == J_LOAD ? "storage load" : "storage write";
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->backend);
  int srv = s->host ? s->host->lua_server(s->hud) : LUA_NOREF;
  if (srv != LUA_NOREF)
    lua_rawgeti(L, LUA_REGISTRYINDEX, srv);
  else
    lua_pushnil(L);
  lua_pushfstring(L, "%s/%s", r->b.ns, r->b.id);
  lua_pushstring(L, what);
  j->h = lua_newuserdatauv(L, sizeof *j->h, 0);
  j->h->j = j;
  lua_pushcclosure(L, job_done_cb, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->run);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref);
  lua_pushstring(L, kind == J_LOAD ? "load" : "apply");
  lua_pushstring(L, r->b.ns);
  lua_pushstring(L, r->b.id);
  lua_pushvalue(L, top);
  lr_callinfo ci = {.room = NULL, .what = what};
  int rc = s->host ? s->host->call(s->hud, what, 10, 2, j->err, sizeof j->err)
                   : lr_vm_pcall(L, 10, 2, &ci); /* not bound: no engine to count it */
  if (rc != 0) {
    if (!s->host) snprintf(j->err, sizeof j->err, "%.*s", (int)sizeof j->err - 1, ci.err);
    j->ok = 0;
    j->done = 1;
  } else {
    const char *st = lua_tostring(L, -2);
    if (st && strcmp(st, "wait") != 0) job_result(j, L, strcmp(st, "done") == 0, -1);
    lua_pop(L, 2);
  }
  if (j->done && j->h) {
    j->h->j = NULL; /* finished without waiting: done never runs */
    j->h = NULL;
  }
  lua_settop(L, top - 1);
  return j; /* j->done: finished already, the caller ends it */
}

static void job_free(job *j) {
  if (j->h) j->h->j = NULL;
  if (j->end_timer && j->s->host) j->s->host->cancel(j->s->hud, j->end_timer);
  if (j->r->job == j) j->r->job = NULL;
  free(j);
}

static void start_queue(lstore *s, lroom *r);

static void on_retry(void *ud) {
  lroom *r = ud;
  r->retry_timer = 0;
  start_queue(r->s, r);
}

/* A load that waited finished: the room is loaded (or not) and its
 * waiters are told. */
static void load_end(lstore *s, lroom *r, job *j) {
  int loaded = j->ok && j->loaded;
  r->b.state = loaded ? LR_WB_LOADED : LR_WB_NONE;
  if (!loaded)
    lr_error("storage %s/%s: loading from the Lua backend failed: %s", r->b.ns, r->b.id, j->err);
  job_free(j);
  lr_wb_wake(s->wb, &r->b, loaded, loaded ? NULL : "storage load failed");
}

/* A write call that waited finished: committed, or kept for a retry. */
static void apply_end(lstore *s, lroom *r, job *j) {
  if (j->ok) {
    lr_wb_commit(s->wb, &r->b);
    if (r->backoff)
      lr_info("storage %s/%s: the Lua backend accepts writes again", r->b.ns, r->b.id);
    r->backoff = 0;
    job_free(j);
    notify(s, r);
    start_queue(s, r);
    return;
  }
  r->b.inflight = 0;
  r->backoff = r->backoff ? r->backoff * 2 : RETRY_MIN_MS;
  if (r->backoff > RETRY_MAX_MS) r->backoff = RETRY_MAX_MS;
  lr_error("storage %s/%s: write to the Lua backend failed (%ld batch(es) kept, retry in %lld "
           "ms): %s",
           r->b.ns, r->b.id, r->b.nqueued, (long long)r->backoff, j->err);
  lr_wb_fail(&r->b, j->err);
  job_free(j);
  if (s->host) {
    r->retry_timer = s->host->timer(s->hud, r->backoff, on_retry, r);
    notify(s, r);
  }
}

/* Called once per finished job that outlived its starting call. */
static void job_end(job *j) {
  lstore *s = j->s;
  lroom *r = j->r;
  /* The callbacks below may reach l_forget, and start_queue may finish a
   * call at once (a nested job_end): r stays until the end of this one. */
  r->b.pin++;
  if (j->kind == J_LOAD)
    load_end(s, r, j);
  else
    apply_end(s, r, j);
  r->b.pin--;
  maybe_drop(s, r); /* forgotten meanwhile, and nothing left pending */
}

/* Send every queued batch of r to the backend in one call, unless a call is
 * running or a retry is pending. */
static void start_queue(lstore *s, lroom *r) {
  if (r->job || !r->b.qhead || r->retry_timer) return;
  lua_State *L = s->L;
  lua_createtable(L, 0, 0);
  lua_Integer k = 0;
  long nb = 0;
  for (lr_wb_batch *q = r->b.qhead; q; q = q->next, nb++)
    push_ops(L, q->ops, q->n, &k);
  r->b.inflight = nb;
  job *j = job_start(s, r, J_APPLY);
  if (j->done) job_end(j);
}

static lroom *room_get(lstore *s, const char *ns, const char *id) {
  lroom *r = (lroom *)lr_wb_room_get(s->wb, ns, id, true);
  r->s = s;
  return r;
}

/* Load r into the cache now if the backend answers without waiting.
 * 0 when loaded; LR_STORE_EBUSY when it is loading (a call waits for I/O);
 * LR_STORE_EIO when the backend failed. */
static int ensure_loaded(lstore *s, lroom *r, char *err, size_t errlen) {
  if (r->b.state == LR_WB_LOADED) return 0;
  if (r->b.state == LR_WB_NONE) {
    job *j = job_start(s, r, J_LOAD);
    if (!j->done) {
      r->b.state = LR_WB_LOADING;
    } else {
      int ok = j->ok && j->loaded;
      if (!ok)
        lr__store_errf(err, errlen, "lua storage: loading %s/%s failed: %s", r->b.ns, r->b.id,
                       j->err);
      job_free(j);
      if (!ok) return LR_STORE_EIO;
      return 0;
    }
  }
  lr__store_errf(err, errlen,
                 "lua storage: %s/%s is still loading (the backend waits for I/O); the engine "
                 "waits for ready() before reading",
                 r->b.ns, r->b.id);
  return LR_STORE_EBUSY;
}

static int l_get(lr_store *st, const char *ns, const char *room, const char *key, lr_buf *out,
                 char *err, size_t errlen) {
  lstore *s = (lstore *)st;
  lr_buf_reset(out);
  lroom *r = room_get(s, ns, room);
  int rc = ensure_loaded(s, r, err, errlen);
  return rc ? rc : lr_wb_get(s->wb, &r->b, ns, room, key, out, err, errlen);
}

static int l_list(lr_store *st, const char *ns, const char *room, const char *prefix,
                  lr_store_list_cb cb, void *ud, char *err, size_t errlen) {
  lstore *s = (lstore *)st;
  lroom *r = room_get(s, ns, room);
  int rc = ensure_loaded(s, r, err, errlen);
  return rc ? rc : lr_wb_list(s->wb, &r->b, ns, room, prefix, cb, ud, err, errlen);
}

static long l_count(lr_store *st, const char *ns, const char *room) {
  lstore *s = (lstore *)st;
  if (ns && room && ensure_loaded(s, room_get(s, ns, room), NULL, 0) != 0) return -1;
  return lr_wb_count(s->wb, ns, room); /* ns or room NULL: the loaded rooms */
}

static int l_apply(lr_store *st, const char *ns, const char *room, const lr_store_op *ops, size_t n,
                   char *err, size_t errlen) {
  lstore *s = (lstore *)st;
  int rc = lr__store_check_ops(ns, room, ops, n, err, errlen);
  if (rc) return rc;
  lroom *r = room_get(s, ns, room);
  if ((rc = ensure_loaded(s, r, err, errlen)) != 0) return rc;
  if (!r->job && !r->b.qhead && !r->retry_timer) {
    /* Nothing ahead of it: try it now; a backend that answers at once
     * reports its error to the caller, as a synchronous store does. */
    lua_createtable(s->L, (int)n, 0);
    lua_Integer k = 0;
    push_ops(s->L, ops, n, &k);
    job *j = job_start(s, r, J_APPLY);
    if (j->done) {
      int ok = j->ok;
      if (!ok) lr__store_errf(err, errlen, "lua storage apply: %s", j->err);
      job_free(j);
      if (!ok) return LR_STORE_EIO;
      return lr_wb_apply_committed(s->wb, &r->b, ops, n, err, errlen);
    }
    r->b.inflight = 1; /* this batch: the head of the queue, below */
  }
  /* Behind a running call, or this one waits for I/O: queued. */
  return lr_wb_accept(s->wb, &r->b, ops, n, err, errlen);
}

static int l_ready(lr_store *st, const char *ns, const char *room, lr_store_ready_cb cb, void *ud,
                   char *err, size_t errlen) {
  lstore *s = (lstore *)st;
  lroom *r = room_get(s, ns, room);
  r->b.forget = false;
  int rc = ensure_loaded(s, r, err, errlen);
  if (rc == 0) return 1;
  if (rc != LR_STORE_EBUSY) return -1;
  lr_wb_wait(&r->b, cb, ud);
  return 0;
}

static void l_forget(lr_store *st, const char *ns, const char *room) {
  lr_wb_forget(((lstore *)st)->wb, ns, room);
}

static long l_pending(lr_store *st) {
  return lr_wb_pending(((lstore *)st)->wb);
}

static int l_progress(lr_store *st, const char *ns, const char *room, uint64_t *accepted,
                      uint64_t *committed, char *err, size_t errlen) {
  return lr_wb_progress(((lstore *)st)->wb, ns, room, accepted, committed, err, errlen);
}

/* The engine's timers are about to be freed without firing. */
static void timers_gone(void *ud, lr_wb_room *b) {
  (void)ud;
  lroom *r = (lroom *)b;
  r->retry_timer = 0;
  if (r->job) r->job->end_timer = 0;
}

static void l_bind(lr_store *st, const lr_store_host *host, void *ud) {
  lstore *s = (lstore *)st;
  s->host = host;
  s->hud = ud;
  if (!host) lr_wb_each(s->wb, timers_gone, NULL);
}

static void free_job(void *ud, lr_wb_room *b) {
  (void)ud;
  lroom *r = (lroom *)b;
  if (r->job) job_free(r->job);
}

static void l_close(lr_store *st) {
  lstore *s = (lstore *)st;
  lr_wb_report_lost(s->wb);
  lr_wb_each(s->wb, free_job, NULL);
  lr_wb_free(s->wb);
  lr_ref_release(s->L, s->backend);
  lr_ref_release(s->L, s->run);
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

/* require(name)[field] pushed, or NULL with the error in err. Runs while
 * the store is opened, before any server exists: a direct protected call
 * (nothing to count it against), as the host's own module loading. */
static int push_required(lua_State *L, const char *name, const char *field, char *err,
                         size_t errlen) {
  lr_callinfo ci = {.what = "storage backend"};
  lua_getglobal(L, "require");
  lua_pushstring(L, name);
  if (lr_vm_pcall(L, 1, 1, &ci) != 0) {
    lr__store_errf(err, errlen, "%s", ci.err);
    return -1;
  }
  lua_getfield(L, -1, field);
  lua_remove(L, -2);
  return 0;
}

/* The backend table FILE returns, on the stack; NULL-like -1 on error. */
static int load_backend(lua_State *L, const char *path, char *err, size_t errlen) {
  lr_callinfo ci = {.what = "storage backend"};
  if (luaL_loadfile(L, path) != LUA_OK) {
    lr__store_errf(err, errlen, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  /* At open, before any server exists: no rules call to count it in. */
  if (lr_vm_pcall(L, 0, 1, &ci) != 0) {
    lr__store_errf(err, errlen, "%s", ci.err);
    return -1;
  }
  const char *missing = NULL;
  if (!lua_istable(L, -1)) {
    missing = "a table";
  } else {
    lua_getfield(L, -1, "list");
    if (!lua_isfunction(L, -1)) missing = "list";
    lua_getfield(L, -2, "apply");
    int has_apply = lua_isfunction(L, -1);
    lua_getfield(L, -3, "put");
    lua_getfield(L, -4, "delete");
    if (!has_apply && !missing && (!lua_isfunction(L, -2) || !lua_isfunction(L, -1)))
      missing = "put and delete (or apply)";
    lua_pop(L, 4);
  }
  if (!missing) return 0;
  lua_pop(L, 1);
  lr__store_errf(err, errlen,
                 "%s must return a table with list and apply (or put and delete): no %s", path,
                 missing);
  return -1;
}

lr_store *lr_store_lua_open(lua_State *L, const char *path, char *err, size_t errlen) {
  int top = lua_gettop(L);
  if (push_required(L, "lunaroom.io", "run", err, errlen) != 0 ||
      push_required(L, "lunaroom.tasks", "backend", err, errlen) != 0 ||
      load_backend(L, path, err, errlen) != 0) {
    lua_settop(L, top);
    return NULL;
  }
  lstore *s = lr_xcalloc(1, sizeof *s);
  lr_wb_cfg cfg = {.name = "lua storage",
                   .where = "on the backend",
                   .peer = "the backend",
                   .room_size = sizeof(lroom),
                   .nbuckets = NBUCKETS,
                   .busy = room_busy,
                   .ud = s};
  s->wb = lr_wb_new(&cfg, err, errlen);
  if (!s->wb) {
    free(s);
    lua_settop(L, top);
    return NULL;
  }
  s->base.vt = &lua_vt;
  s->L = L;
  s->ref = lr_ref_take(L);
  s->backend = lr_ref_take(L);
  s->run = lr_ref_take(L);
  return &s->base;
}

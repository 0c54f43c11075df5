/*
 * storage.h - the storage interface rooms persist through, and its backends.
 *
 * Owns: the backend-neutral API (get / list / atomic batch of puts and
 * deletes, per namespace and room id). Values are JSON text, exactly what
 * @signe/room stores (protocol.md §9.3), so a database written by either
 * side opens in the other.
 * Must not: know the key layout of rooms (state:, session:, ...; that is
 * room logic), encode JSON, or call Lua.
 *
 * Errors: functions return 0 on success, LR_STORE_NOTFOUND (get only), or a
 * negative LR_STORE_E* code with a human-readable message in err (err may be
 * NULL or errlen 0). A failed lr_store_apply() changes nothing (all or
 * nothing).
 *
 * Validation (both backends, before anything is written): ns and room must
 * be non-NULL valid UTF-8; every op key valid UTF-8 without NUL bytes; every
 * PUT value non-NULL, valid UTF-8 and exactly one JSON value (RFC 8259
 * grammar, surrounding whitespace allowed). Anything else is LR_STORE_EARG
 * naming the op. This keeps every row JSON.parse-able by the reference and
 * every memory snapshot valid JSON.
 *
 * Reentrancy: a list callback may call get and list on the same store, but
 * lr_store_apply() from inside a list callback is refused (LR_STORE_EARG).
 * A callback must return normally (never longjmp, e.g. lua_error, out of it).
 * A store is used by one thread at a time.
 */
#ifndef LR_STORAGE_H
#define LR_STORAGE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define LR_STORE_NOTFOUND 1
#define LR_STORE_EIO (-1)   /* backend failure (disk full, corrupt file, ...) */
#define LR_STORE_EBUSY (-2) /* locked past the busy timeout */
#define LR_STORE_EARG (-3)  /* bad arguments (e.g. invalid table name) */

typedef enum lr_store_op_kind {
  LR_STORE_PUT = 1,        /* key = val */
  LR_STORE_DEL = 2,        /* delete key */
  LR_STORE_DEL_PREFIX = 3, /* delete every key that starts with key (bytewise) */
} lr_store_op_kind;

typedef struct lr_store_op {
  lr_store_op_kind kind;
  const char *key;
  size_t keylen;
  const char *val; /* PUT only: JSON text */
  size_t vallen;
} lr_store_op;

/* list callback: key/val are only valid during the call; return non-zero to stop. */
typedef int (*lr_store_list_cb)(void *ud, const char *key, size_t keylen, const char *val,
                                size_t vallen);

/* ready callback: ok 1 when (ns, room) can be read, 0 when loading failed
 * (err says why), LR_STORE_READY_ELSEWHERE when another node of a cluster
 * holds the room (err names it; storage_postgres.h). */
#define LR_STORE_READY_ELSEWHERE (-1)
typedef void (*lr_store_ready_cb)(void *ud, int ok, const char *err);

typedef struct lr_store lr_store;

/* What the engine gives a store whose backend waits for I/O when it binds
 * it (vt->bind): every way such a store reports back or waits, so that the
 * store never calls the engine itself. Each function gets the ud given
 * with it at bind. */
typedef void (*lr_store_timer_cb)(void *arg);
typedef struct lr_store_host {
  /* (ns, room)'s write progress changed: progress() answers anew. From the
   * store's own callbacks (timers, I/O), never from inside a vtable call. */
  void (*progress)(void *ud, const char *ns, const char *room);
  /* A cluster store lost the lease of (ns, room): the engine closes its
   * sockets with code and drops it without writing. Same rule as progress. */
  void (*lost)(void *ud, const char *ns, const char *room, int code, const char *why);
  /* Whether the engine holds a live room (ns, room). */
  int (*holds)(void *ud, const char *ns, const char *room);
  /* A one-shot timer on the engine's clock (the virtual one in specs):
   * cb(arg) after ms; returns its id for cancel. */
  uint64_t (*timer)(void *ud, int64_t ms, lr_store_timer_cb cb, void *arg);
  void (*cancel)(void *ud, uint64_t id);
  /* The loop's watch of another library's socket (a database connection):
   * cb(arg, revents) when fd is readable (POLLIN), writable (POLLOUT, once
   * per watch_write(w, 1)) or broken (POLLHUP). NULL when the loop offers
   * none (yet). The fd stays the caller's. */
  void *(*watch)(void *ud, int fd, void (*cb)(void *arg, int revents), void *arg);
  void (*watch_write)(void *ud, void *w, int on);
  void (*unwatch)(void *ud, void *w);
  /* Stores written in Lua (storage_lua.c, on the engine's Lua state): call
   * the function below nargs values through the rules' call helper (counted
   * in the handler metrics, rolled back on failure, as every call into
   * Lua); what names it in the log. [-(nargs+1), +nres] on success,
   * [-(nargs+1), +0] on failure (non-zero, the message in err). */
  int (*call)(void *ud, const char *what, int nargs, int nres, char *err, size_t errlen);
  /* The registry reference of the server's Lua object (the runtime's
   * `srv`), or LUA_NOREF before the runtime made it. */
  int (*lua_server)(void *ud);
} lr_store_host;

/* One figure of a backend for /metrics (Prometheus text). */
typedef struct lr_store_stat {
  const char *name, *kind, *help; /* static strings; kind "counter" or "gauge" */
  double value;
} lr_store_stat;
typedef struct lr_store_vt {
  const char *name; /* "sqlite", "memory" */
  /* out is reset, then receives the stored JSON text (NUL-terminated). */
  int (*get)(lr_store *s, const char *ns, const char *room, const char *key, lr_buf *out, char *err,
             size_t errlen);
  /* Keys starting with prefix ("" = all), ascending bytewise order. */
  int (*list)(lr_store *s, const char *ns, const char *room, const char *prefix,
              lr_store_list_cb cb, void *ud, char *err, size_t errlen);
  /* Apply ops in order, atomically (one transaction). */
  int (*apply)(lr_store *s, const char *ns, const char *room, const lr_store_op *ops, size_t n,
               char *err, size_t errlen);
  /* Number of stored keys for (ns, room); for every room of ns when room is
   * NULL; for the whole store when ns is NULL too. -1 on backend failure. */
  long (*count)(lr_store *s, const char *ns, const char *room);
  void (*close)(lr_store *s); /* frees s */
  /* ---- optional: stores whose backend waits for I/O (storage_lua.c).
   * NULL means synchronous and always ready. ---- */
  /* The engine's host functions (above) and their ud; called with NULL
   * before the engine goes away (its timers are then freed unfired). */
  void (*bind)(lr_store *s, const lr_store_host *host, void *ud);
  /* 1: (ns, room) can be read now. 0: it is loading; cb runs later (never
   * from inside this call), exactly once, unless the store is closed first.
   * < 0: loading failed (message in err). */
  int (*ready)(lr_store *s, const char *ns, const char *room, lr_store_ready_cb cb, void *ud,
               char *err, size_t errlen);
  /* The engine no longer holds (ns, room): a cache may drop it once its
   * writes reached the backend. */
  void (*forget)(lr_store *s, const char *ns, const char *room);
  /* Write batches accepted but not yet on the backend (shutdown waits). */
  long (*pending)(lr_store *s);
  /* Write progress of (ns, room): *accepted = apply() calls it accepted,
   * *committed = how many of them are on the backend (both only grow while
   * the store holds the room). Returns 0, or < 0 while its last backend
   * write failed (it is retried; why in err). NULL: every accepted write is
   * committed when apply() returns. */
  int (*progress)(lr_store *s, const char *ns, const char *room, uint64_t *accepted,
                  uint64_t *committed, char *err, size_t errlen);
  /* Optional: the backend's own figures for /metrics, at most max of them;
   * returns how many. Constant cost (no walk over rooms). */
  size_t (*stats)(lr_store *s, lr_store_stat *out, size_t max);
} lr_store_vt;

struct lr_store {
  const lr_store_vt *vt;
};

static inline int lr_store_get(lr_store *s, const char *ns, const char *room, const char *key,
                               lr_buf *out, char *err, size_t errlen) {
  return s->vt->get(s, ns, room, key, out, err, errlen);
}
static inline int lr_store_list(lr_store *s, const char *ns, const char *room, const char *prefix,
                                lr_store_list_cb cb, void *ud, char *err, size_t errlen) {
  return s->vt->list(s, ns, room, prefix, cb, ud, err, errlen);
}
static inline int lr_store_apply(lr_store *s, const char *ns, const char *room,
                                 const lr_store_op *ops, size_t n, char *err, size_t errlen) {
  return s->vt->apply(s, ns, room, ops, n, err, errlen);
}
static inline long lr_store_count(lr_store *s, const char *ns, const char *room) {
  return s->vt->count(s, ns, room);
}
static inline int lr_store_ready(lr_store *s, const char *ns, const char *room,
                                 lr_store_ready_cb cb, void *ud, char *err, size_t errlen) {
  return s->vt->ready ? s->vt->ready(s, ns, room, cb, ud, err, errlen) : 1;
}
static inline void lr_store_forget(lr_store *s, const char *ns, const char *room) {
  if (s->vt->forget) s->vt->forget(s, ns, room);
}
static inline long lr_store_pending(lr_store *s) {
  return s->vt->pending ? s->vt->pending(s) : 0;
}
static inline void lr_store_close(lr_store *s) {
  if (s) s->vt->close(s);
}

/* In-memory backend. snapshot_path may be NULL; when set and the file
 * exists it is loaded at open (format below), and lr_store_memory_save()
 * writes it. Snapshot format (the reference's storage.snapshot()):
 *   {"main:demo":[["state:count",1],["session:s1",{...}]], ...}
 * i.e. "namespace:roomId" (each part encodeURIComponent-ed) -> [[key, value]].
 * Values are embedded as raw JSON text and loaded back byte for byte. A
 * missing snapshot file is an empty store; an unreadable or malformed one
 * makes open fail (NULL, message in err). */
lr_store *lr_store_memory_open(const char *snapshot_path, char *err, size_t errlen);
/* Write the snapshot of memory store s to path (NULL: the snapshot_path given
 * at open) atomically: temp file in the same directory, fsync, rename, fsync
 * of the directory. On failure the previous file is untouched. */
int lr_store_memory_fail_next(lr_store *s, int n);
int lr_store_memory_save(lr_store *s, const char *path, char *err, size_t errlen);

typedef struct lr_sqlite_opts {
  const char *path;  /* database file; parent directory is created */
  const char *table; /* default "signe_room_storage"; [A-Za-z_][A-Za-z0-9_]* */
  /* The longest one storage call (get, list, apply, count: the whole call,
   * not each statement) waits for a lock another connection holds, in ms.
   * 0 selects LR_SQLITE_BUSY_DEFAULT; < 0 or more than LR_SQLITE_BUSY_MAX
   * is an error: the loop must not stall. After a
   * call gave up on a lock, the next calls do not wait at all until one
   * succeeds (the engine retries failed writes from a timer). */
  int busy_timeout_ms;
  const char *journal_mode; /* default "WAL"; DELETE|TRUNCATE|PERSIST|MEMORY|WAL|OFF */
  long max_page_count;      /* > 0: PRAGMA max_page_count (caps the file: tests of a full disk) */
} lr_sqlite_opts;
#define LR_SQLITE_BUSY_DEFAULT 20
#define LR_SQLITE_BUSY_MAX 50
lr_store *lr_store_sqlite_open(const lr_sqlite_opts *o, char *err, size_t errlen);

/* A backend written in Lua (storage_lua.c): FILE returns a table of
 * list/put/delete(/apply) functions over JSON text that may wait for I/O
 * (lunaroom.io). Reads are served from a cache loaded per room (ready);
 * writes go to the cache at once and to the backend in order, behind. */
struct lua_State;
lr_store *lr_store_lua_open(struct lua_State *L, const char *path, char *err, size_t errlen);

/* Open the store a --storage spec names: "memory", "memory:SNAPSHOT",
 * "sqlite:PATH[?...]", "postgres://..." / "postgresql://..."
 * (storage_postgres.h), or "lua:FILE" (a backend written in Lua, run in L).
 * The host's one parser of storage specs (serve, core.server_new, tests).
 * NULL with err on failure; "lua:" without a Lua state (L NULL) is one. */
lr_store *lr_store_open_spec_L(struct lua_State *L, const char *spec, char *err, size_t errlen);
/* lr_store_open_spec_L with no Lua state (every spec but "lua:"). */
lr_store *lr_store_open_spec(const char *spec, char *err, size_t errlen);

/* ---- for the backends only (defined in storage.c) ---- */

/* printf into err (no-op when err is NULL or errlen is 0). */
void lr__store_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Scan one JSON value in s[*pos..len) (leading whitespace skipped) without
 * allocating a tree; on success *pos is just past the value and 0 is
 * returned, else -1 with "... at offset N" in err. Depth is unbounded. */
int lr__store_json_scan(const char *s, size_t len, size_t *pos, char *err, size_t errlen);
/* Create the parent directory of path (and its parents) if missing.
 * 0, or LR_STORE_EIO with the failing directory and strerror in err. */
int lr__store_mkdir_parent(const char *path, char *err, size_t errlen);
/* The validation described at the top of this file; LR_STORE_EARG or 0. */
int lr__store_check_ops(const char *ns, const char *room, const lr_store_op *ops, size_t n,
                        char *err, size_t errlen);

#endif

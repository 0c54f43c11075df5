/*
 * storage_sqlite.c - the SQLite storage backend, on the reference's table
 * (createSqliteNodeRoomStorage, protocol.md §9.3), so a database written by
 * @signe/room opens here and the other way round.
 *
 * Owns: one sqlite3 connection, its pragmas (journal_mode, synchronous=NORMAL
 * under WAL, max_page_count when asked), the busy handler, the table, and
 * the prepared statements (created once at open, reset after every use).
 * Every lr_store_apply() is one BEGIN IMMEDIATE ... COMMIT transaction,
 * rolled back on any failure.
 * Must not: parse or rewrite values (they are stored as the JSON TEXT they
 * arrive as), know the key layout of rooms, or wait for a lock longer than
 * busy_timeout per call: the caller runs on the event loop. A call that gives
 * up returns LR_STORE_EBUSY and the engine retries later from a timer.
 *
 * Locks (busy handler): each vtable call sets a deadline of busy_timeout ms
 * (default 20, at most 50) for all its statements together, not per
 * statement as PRAGMA busy_timeout would. Once a call has given up, the
 * next calls do not wait at all (they try the lock once) until one of them
 * succeeds: a file locked by another process costs the loop one wait, not
 * one per room.
 *
 * Prefix ranges: a prefix p selects key >= p AND key < succ(p), where succ(p)
 * is p with trailing 0xFF bytes dropped and its last byte incremented (no
 * upper bound when nothing is left, e.g. p = ""). With BINARY collation this
 * is exact for any bytes, unlike the reference's p||U+FFFF bound, which
 * misses keys continuing with a character above U+FFFF.
 */
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"
#include "storage.h"

enum {
  ST_GET,
  ST_PUT,
  ST_DEL,
  ST_DEL_FROM,  /* key >= ?3 */
  ST_DEL_RANGE, /* key >= ?3 AND key < ?4 */
  ST_LIST_FROM,
  ST_LIST_RANGE,
  ST_COUNT_ROOM,
  ST_COUNT_NS,
  ST_COUNT_ALL,
  ST_BEGIN,
  ST_COMMIT,
  ST_ROLLBACK,
  ST_N
};

typedef struct sqstore {
  lr_store base;
  sqlite3 *db;
  char *path;
  sqlite3_stmt *st[ST_N];
  char *sql[ST_N];  /* kept to prepare a second copy for nested listings */
  int listing;      /* > 0 while a list callback runs */
  int busy_ms;      /* the wait allowed per call */
  int64_t deadline; /* monotonic ms: the current call stops waiting for locks here */
  int gave_up;      /* a call gave up on a lock and none succeeded since: do not wait */
  int depth;        /* nesting of vtable calls (a list callback may get or list) */
} sqstore;

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* SQLite's busy handler: sleep 1 ms and try again until the deadline. */
static int on_busy(void *ud, int count) {
  sqstore *q = ud;
  (void)count;
  if (q->gave_up || mono_ms() >= q->deadline) return 0;
  sqlite3_sleep(1);
  return 1;
}

/* Around every vtable call: the deadline of the outermost one, and whether
 * a lock stopped it (rc is the call's return value). */
static void call_begin(sqstore *q) {
  if (q->depth++ == 0) q->deadline = mono_ms() + q->busy_ms;
}
static int call_end(sqstore *q, int rc) {
  if (--q->depth == 0) {
    if (rc == LR_STORE_EBUSY)
      q->gave_up = 1;
    else if (rc >= 0)
      q->gave_up = 0;
  }
  return rc;
}

static const lr_store_vt sqlite_vt;

static int map_rc(int rc) {
  int prim = rc & 0xFF;
  return prim == SQLITE_BUSY || prim == SQLITE_LOCKED ? LR_STORE_EBUSY : LR_STORE_EIO;
}

/* Report the connection's current error for what (call before any reset). */
static int fail(sqstore *q, int rc, const char *what, char *err, size_t errlen) {
  lr__store_errf(err, errlen, "sqlite %s: %s: %s", q->path, what, sqlite3_errmsg(q->db));
  return map_rc(rc);
}

static void done(sqlite3_stmt *st) {
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
}

/* Bind ?1 ?2 (namespace, room id). Strings are the caller's and outlive the
 * statement's use (it is reset before we return). */
static void bind_room(sqlite3_stmt *st, const char *ns, const char *room) {
  sqlite3_bind_text(st, 1, ns, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 2, room, -1, SQLITE_STATIC);
}

/* The exclusive upper bound of the prefix range (see the top of the file).
 * Returns its length in *n, or NULL (no upper bound). The caller frees. */
static char *prefix_succ(const char *p, size_t plen, size_t *n) {
  while (plen && (unsigned char)p[plen - 1] == 0xFF)
    plen--;
  if (!plen) return NULL;
  char *s = lr_xstrndup(p, plen);
  s[plen - 1] = (char)((unsigned char)s[plen - 1] + 1);
  *n = plen;
  return s;
}

/* Bind ?3 (and ?4) of a FROM/RANGE statement pair; returns the chosen one. */
static sqlite3_stmt *bind_prefix(sqlite3_stmt *from, sqlite3_stmt *range, const char *ns,
                                 const char *room, const char *p, size_t plen) {
  size_t un = 0;
  char *upper = prefix_succ(p, plen, &un);
  sqlite3_stmt *st = upper ? range : from;
  bind_room(st, ns, room);
  sqlite3_bind_text(st, 3, p, (int)plen, SQLITE_STATIC);
  if (upper) {
    sqlite3_bind_text(st, 4, upper, (int)un, SQLITE_TRANSIENT);
    free(upper);
  }
  return st;
}

/* ---- vtable (the contracts are in storage.h) ---- */

static int sq_get_(lr_store *s, const char *ns, const char *room, const char *key, lr_buf *out,
                   char *err, size_t errlen) {
  sqstore *q = (sqstore *)s;
  if (!ns || !room || !key || !out) {
    lr__store_errf(err, errlen, "storage: get needs a namespace, room id, key and buffer");
    return LR_STORE_EARG;
  }
  lr_buf_reset(out);
  sqlite3_stmt *st = q->st[ST_GET];
  bind_room(st, ns, room);
  sqlite3_bind_text(st, 3, key, -1, SQLITE_STATIC);
  int rc = sqlite3_step(st), ret;
  if (rc == SQLITE_ROW) {
    const unsigned char *v = sqlite3_column_text(st, 0);
    int vn = sqlite3_column_bytes(st, 0);
    if (v) lr_buf_put(out, v, (size_t)vn);
    lr_buf_cstr(out);
    ret = 0;
  } else if (rc == SQLITE_DONE) {
    ret = LR_STORE_NOTFOUND;
  } else {
    ret = fail(q, rc, "get", err, errlen);
  }
  done(st);
  return ret;
}

static int sq_list_(lr_store *s, const char *ns, const char *room, const char *prefix,
                    lr_store_list_cb cb, void *ud, char *err, size_t errlen) {
  sqstore *q = (sqstore *)s;
  if (!ns || !room || !cb) {
    lr__store_errf(err, errlen, "storage: list needs a namespace, room id and callback");
    return LR_STORE_EARG;
  }
  if (!prefix) prefix = "";
  size_t plen = strlen(prefix);
  /* A list from inside a list callback cannot reuse the statements the outer
   * one is stepping: give it its own pair. */
  sqlite3_stmt *own[2] = {NULL, NULL}, *from = q->st[ST_LIST_FROM], *range = q->st[ST_LIST_RANGE];
  if (q->listing) {
    int rc = sqlite3_prepare_v2(q->db, q->sql[ST_LIST_FROM], -1, &own[0], NULL);
    if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(q->db, q->sql[ST_LIST_RANGE], -1, &own[1], NULL);
    if (rc != SQLITE_OK) {
      int ret = fail(q, rc, "list", err, errlen);
      sqlite3_finalize(own[0]);
      sqlite3_finalize(own[1]);
      return ret;
    }
    from = own[0];
    range = own[1];
  }
  sqlite3_stmt *st = bind_prefix(from, range, ns, room, prefix, plen);
  int rc, ret = 0;
  q->listing++;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const char *k = (const char *)sqlite3_column_text(st, 0);
    size_t kn = (size_t)sqlite3_column_bytes(st, 0);
    const char *v = (const char *)sqlite3_column_text(st, 1);
    size_t vn = (size_t)sqlite3_column_bytes(st, 1);
    if (cb(ud, k ? k : "", kn, v ? v : "", vn)) {
      rc = SQLITE_DONE;
      break;
    }
  }
  q->listing--;
  if (rc != SQLITE_DONE) ret = fail(q, rc, "list", err, errlen);
  done(st);
  sqlite3_finalize(own[0]);
  sqlite3_finalize(own[1]);
  return ret;
}

/* Step a statement that returns no rows; 0 or the SQLite error code. */
static int run(sqlite3_stmt *st) {
  int rc = sqlite3_step(st);
  return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : rc;
}

static int sq_apply_(lr_store *s, const char *ns, const char *room, const lr_store_op *ops,
                     size_t n, char *err, size_t errlen) {
  sqstore *q = (sqstore *)s;
  int rc = lr__store_check_ops(ns, room, ops, n, err, errlen);
  if (rc) return rc;
  if (q->listing) {
    lr__store_errf(err, errlen, "storage: apply called from inside a list callback");
    return LR_STORE_EARG;
  }
  for (size_t i = 0; i < n; i++) {
    if (ops[i].keylen > INT_MAX || (ops[i].kind == LR_STORE_PUT && ops[i].vallen > INT_MAX)) {
      lr__store_errf(err, errlen, "sqlite %s: op %zu: key or value longer than %d bytes", q->path,
                     i, INT_MAX);
      return LR_STORE_EARG;
    }
  }
  if (n == 0) return 0;
  if ((rc = run(q->st[ST_BEGIN])) != 0) {
    int ret = fail(q, rc, "begin transaction", err, errlen);
    done(q->st[ST_BEGIN]);
    return ret;
  }
  done(q->st[ST_BEGIN]);
  int ret = 0;
  for (size_t i = 0; i < n && !ret; i++) {
    const lr_store_op *o = &ops[i];
    const char *key = o->key ? o->key : "";
    sqlite3_stmt *st;
    const char *what;
    if (o->kind == LR_STORE_PUT) {
      st = q->st[ST_PUT];
      bind_room(st, ns, room);
      sqlite3_bind_text(st, 3, key, (int)o->keylen, SQLITE_STATIC);
      sqlite3_bind_text(st, 4, o->val, (int)o->vallen, SQLITE_STATIC);
      what = "put";
    } else if (o->kind == LR_STORE_DEL) {
      st = q->st[ST_DEL];
      bind_room(st, ns, room);
      sqlite3_bind_text(st, 3, key, (int)o->keylen, SQLITE_STATIC);
      what = "delete";
    } else {
      st = bind_prefix(q->st[ST_DEL_FROM], q->st[ST_DEL_RANGE], ns, room, key, o->keylen);
      what = "delete prefix";
    }
    if ((rc = run(st)) != 0) {
      char w[64];
      snprintf(w, sizeof w, "op %zu (%s)", i, what);
      ret = fail(q, rc, w, err, errlen);
    }
    done(st);
  }
  if (!ret && (rc = run(q->st[ST_COMMIT])) != 0) ret = fail(q, rc, "commit", err, errlen);
  done(q->st[ST_COMMIT]);
  if (ret && !sqlite3_get_autocommit(q->db)) { /* SQLite may have rolled back already */
    run(q->st[ST_ROLLBACK]);
    done(q->st[ST_ROLLBACK]);
  }
  return ret;
}

static long sq_count_(lr_store *s, const char *ns, const char *room) {
  sqstore *q = (sqstore *)s;
  sqlite3_stmt *st;
  if (ns && room) {
    st = q->st[ST_COUNT_ROOM];
    bind_room(st, ns, room);
  } else if (ns) {
    st = q->st[ST_COUNT_NS];
    sqlite3_bind_text(st, 1, ns, -1, SQLITE_STATIC);
  } else {
    st = q->st[ST_COUNT_ALL];
  }
  long n = sqlite3_step(st) == SQLITE_ROW ? (long)sqlite3_column_int64(st, 0) : -1;
  done(st);
  return n;
}

static int sq_get(lr_store *s, const char *ns, const char *room, const char *key, lr_buf *out,
                  char *err, size_t errlen) {
  call_begin((sqstore *)s);
  return call_end((sqstore *)s, sq_get_(s, ns, room, key, out, err, errlen));
}

static int sq_list(lr_store *s, const char *ns, const char *room, const char *prefix,
                   lr_store_list_cb cb, void *ud, char *err, size_t errlen) {
  call_begin((sqstore *)s);
  return call_end((sqstore *)s, sq_list_(s, ns, room, prefix, cb, ud, err, errlen));
}

static int sq_apply(lr_store *s, const char *ns, const char *room, const lr_store_op *ops, size_t n,
                    char *err, size_t errlen) {
  call_begin((sqstore *)s);
  return call_end((sqstore *)s, sq_apply_(s, ns, room, ops, n, err, errlen));
}

static long sq_count(lr_store *s, const char *ns, const char *room) {
  sqstore *q = (sqstore *)s;
  call_begin(q);
  long n = sq_count_(s, ns, room);
  int busy = n < 0 && (sqlite3_extended_errcode(q->db) & 0xFF) == SQLITE_BUSY;
  call_end(q, n >= 0 ? 0 : busy ? LR_STORE_EBUSY : LR_STORE_EIO);
  return n;
}

static void sq_close(lr_store *s) {
  sqstore *q = (sqstore *)s;
  for (int i = 0; i < ST_N; i++) {
    sqlite3_finalize(q->st[i]);
    free(q->sql[i]);
  }
  sqlite3_close(q->db);
  free(q->path);
  free(q);
}

static const lr_store_vt sqlite_vt = {
    .name = "sqlite",
    .get = sq_get,
    .list = sq_list,
    .apply = sq_apply,
    .count = sq_count,
    .close = sq_close,
};

/* ---- open ---- */

static int valid_table(const char *t) {
  if (!t || !((*t >= 'A' && *t <= 'Z') || (*t >= 'a' && *t <= 'z') || *t == '_')) return 0;
  for (const char *p = t + 1; *p; p++)
    if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
          *p == '_'))
      return 0;
  return 1;
}

static const char *journal_mode(const char *m) {
  static const char *const modes[] = {"DELETE", "TRUNCATE", "PERSIST", "MEMORY", "WAL", "OFF"};
  for (size_t i = 0; i < sizeof modes / sizeof *modes; i++)
    if (strcasecmp(m, modes[i]) == 0) return modes[i];
  return NULL;
}

static char *fmt_sql(const char *fmt, const char *table) {
  lr_buf b;
  lr_buf_init(&b);
  lr_buf_printf(&b, fmt, table);
  return b.data;
}

/* o checked: the table, the journal mode and the busy deadline (ms) it
 * asks for, or -1 with the reason in err. */
static int open_opts(const lr_sqlite_opts *o, const char **table, const char **jm, int *busy,
                     char *err, size_t errlen) {
  if (!o || !o->path || !*o->path) {
    lr__store_errf(err, errlen, "sqlite: a database path is required");
    return -1;
  }
  *table = o->table ? o->table : "signe_room_storage";
  if (!valid_table(*table)) {
    lr__store_errf(err, errlen,
                   "sqlite: invalid table name '%s' (must match [A-Za-z_][A-Za-z0-9_]*)", *table);
    return -1;
  }
  *jm = journal_mode(o->journal_mode ? o->journal_mode : "WAL");
  if (!*jm) {
    lr__store_errf(err, errlen,
                   "sqlite: invalid journal mode '%s' (DELETE, TRUNCATE, PERSIST, MEMORY, WAL or "
                   "OFF)",
                   o->journal_mode);
    return -1;
  }
  if (o->busy_timeout_ms < 0) {
    lr__store_errf(err, errlen, "sqlite: busy_timeout must be 1 to %d ms, not %d",
                   LR_SQLITE_BUSY_MAX, o->busy_timeout_ms);
    return -1;
  }
  *busy = o->busy_timeout_ms ? o->busy_timeout_ms : LR_SQLITE_BUSY_DEFAULT;
  if (*busy > LR_SQLITE_BUSY_MAX) { /* a config written for the old 5 s wait still starts */
    lr_warn("sqlite: busy_timeout=%d ms lowered to %d ms (the event loop waits that long at "
            "most; a write that finds the file locked is retried later)",
            *busy, LR_SQLITE_BUSY_MAX);
    *busy = LR_SQLITE_BUSY_MAX;
  }
  if (o->max_page_count < 0) {
    lr__store_errf(err, errlen, "sqlite: max_page_count must be > 0, not %ld", o->max_page_count);
    return -1;
  }
  return 0;
}

/* err = "sqlite PATH: WHAT: why" (rc's text when there is no connection);
 * returns -1. */
static int open_failed(sqstore *q, const char *what, int rc, char *err, size_t errlen) {
  if (q->db)
    lr__store_errf(err, errlen, "sqlite %s: %s: %s", q->path, what, sqlite3_errmsg(q->db));
  else
    lr__store_errf(err, errlen, "sqlite %s: %s: %s", q->path, what, sqlite3_errstr(rc));
  return -1;
}

/* journal_mode first: the first statement that reads the file, so a file
 * that is not a database fails here ("file is not a database"); then
 * max_page_count when asked, and synchronous = NORMAL under WAL. */
static int set_pragmas(sqstore *q, const char *jm, long max_page_count, char *err, size_t errlen) {
  char sql[128];
  sqlite3_stmt *pst = NULL;
  snprintf(sql, sizeof sql, "PRAGMA journal_mode = %s", jm);
  int rc = sqlite3_prepare_v2(q->db, sql, -1, &pst, NULL);
  if (rc != SQLITE_OK) return open_failed(q, "set journal_mode", rc, err, errlen);
  rc = sqlite3_step(pst);
  if (rc != SQLITE_ROW) {
    open_failed(q, "set journal_mode", rc, err, errlen);
    sqlite3_finalize(pst);
    return -1;
  }
  const char *mode = (const char *)sqlite3_column_text(pst, 0);
  int wal = mode && strcasecmp(mode, "wal") == 0;
  sqlite3_finalize(pst);
  if (max_page_count > 0) {
    snprintf(sql, sizeof sql, "PRAGMA max_page_count = %ld", max_page_count);
    if ((rc = sqlite3_exec(q->db, sql, NULL, NULL, NULL)) != SQLITE_OK)
      return open_failed(q, "set max_page_count", rc, err, errlen);
  }
  if (wal &&
      (rc = sqlite3_exec(q->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL)) != SQLITE_OK)
    return open_failed(q, "set synchronous", rc, err, errlen);
  return 0;
}

/* The reference's table, if it is not there yet. */
static int create_table(sqstore *q, const char *table, char *err, size_t errlen) {
  char *create = fmt_sql("CREATE TABLE IF NOT EXISTS %s (namespace TEXT NOT NULL, room_id TEXT "
                         "NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY "
                         "(namespace, room_id, key))",
                         table);
  int rc = sqlite3_exec(q->db, create, NULL, NULL, NULL);
  free(create);
  return rc == SQLITE_OK ? 0 : open_failed(q, "create table", rc, err, errlen);
}

/* Every statement of the store, prepared once (persistent) on table. */
static int prepare_statements(sqstore *q, const char *table, char *err, size_t errlen) {
  static const char *const fmts[ST_N] = {
      [ST_GET] = "SELECT value FROM %s WHERE namespace = ?1 AND room_id = ?2 AND key = ?3",
      [ST_PUT] = "INSERT INTO %s (namespace, room_id, key, value) VALUES (?1, ?2, ?3, ?4) "
                 "ON CONFLICT(namespace, room_id, key) DO UPDATE SET value = excluded.value",
      [ST_DEL] = "DELETE FROM %s WHERE namespace = ?1 AND room_id = ?2 AND key = ?3",
      [ST_DEL_FROM] = "DELETE FROM %s WHERE namespace = ?1 AND room_id = ?2 AND key >= ?3",
      [ST_DEL_RANGE] =
          "DELETE FROM %s WHERE namespace = ?1 AND room_id = ?2 AND key >= ?3 AND key < ?4",
      [ST_LIST_FROM] = "SELECT key, value FROM %s WHERE namespace = ?1 AND room_id = ?2 AND "
                       "key >= ?3 ORDER BY key",
      [ST_LIST_RANGE] = "SELECT key, value FROM %s WHERE namespace = ?1 AND room_id = ?2 AND "
                        "key >= ?3 AND key < ?4 ORDER BY key",
      [ST_COUNT_ROOM] = "SELECT COUNT(*) FROM %s WHERE namespace = ?1 AND room_id = ?2",
      [ST_COUNT_NS] = "SELECT COUNT(*) FROM %s WHERE namespace = ?1",
      [ST_COUNT_ALL] = "SELECT COUNT(*) FROM %s",
      [ST_BEGIN] = "BEGIN IMMEDIATE",
      [ST_COMMIT] = "COMMIT",
      [ST_ROLLBACK] = "ROLLBACK",
  };
  for (int i = 0; i < ST_N; i++) {
    q->sql[i] = fmt_sql(fmts[i], table);
    int rc = sqlite3_prepare_v3(q->db, q->sql[i], -1, SQLITE_PREPARE_PERSISTENT, &q->st[i], NULL);
    if (rc != SQLITE_OK) return open_failed(q, "prepare statements", rc, err, errlen);
  }
  return 0;
}

lr_store *lr_store_sqlite_open(const lr_sqlite_opts *o, char *err, size_t errlen) {
  const char *table, *jm;
  int busy;
  if (open_opts(o, &table, &jm, &busy, err, errlen) != 0) return NULL;
  if (lr__store_mkdir_parent(o->path, err, errlen)) return NULL;

  sqstore *q = lr_xcalloc(1, sizeof *q);
  q->base.vt = &sqlite_vt;
  q->path = lr_xstrndup(o->path, strlen(o->path));
  int rc = sqlite3_open_v2(o->path, &q->db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    open_failed(q, "open", rc, err, errlen);
    sq_close(&q->base);
    return NULL;
  }
  sqlite3_extended_result_codes(q->db, 1);

  /* The busy handler (top of the file) before the first statement that
   * reads the file. Opening waits for locks up to 1 s: it runs before the
   * loop. */
  q->busy_ms = busy;
  q->deadline = mono_ms() + 1000;
  q->depth = 1;
  sqlite3_busy_handler(q->db, on_busy, q);
  if (set_pragmas(q, jm, o->max_page_count, err, errlen) != 0 ||
      create_table(q, table, err, errlen) != 0 || prepare_statements(q, table, err, errlen) != 0) {
    sq_close(&q->base);
    return NULL;
  }
  q->depth = 0;
  return &q->base;
}

/*
 * storage_postgres.c - storage on a PostgreSQL server (--storage
 * postgres://... or postgresql://...), through libpq's asynchronous API only.
 *
 * The table is SQLite's: signe_room_storage(namespace, room_id, key, value)
 * with PRIMARY KEY (namespace, room_id, key), values as JSON text (TEXT, not
 * jsonb: numbers and key order stay byte for byte). Created if missing.
 *
 * The loop never waits for the database. One connection, non-blocking, in
 * pipeline mode; its socket is watched by the server's event loop (the
 * host's watch, lr_store_host). No PQexec, no thread, no timer that polls: timers are
 * only "run this at the end of the current loop turn" (0 ms) and the
 * reconnect and retry backoffs.
 *
 * Reads meet the engine's synchronous API through the write-behind cache
 * (storage_cache.c, shared with storage_lua.c): a room's keys are loaded
 * once (ready(): one SELECT) before the room is created; get/list/count
 * answer from the cache. A write batch goes to the cache at once and is
 * queued; every room's batches queued during one loop turn go to the server
 * in ONE transaction (the statements of a pipeline between two syncs: an
 * implicit transaction, all or nothing), one transaction in flight at a
 * time, so a room's batches commit in order. progress() counts each room's
 * accepted and committed batches and the engine is told of every change
 * (its host's progress function): packets wait for the commit (the storage
 * gate, sync.c).
 *
 * Failures: a failed transaction keeps every batch it carried queued and
 * marks those rooms failed (progress() < 0: the rooms refuse actions and hold
 * packets). When it carried several rooms, each is retried at once in a
 * transaction of its own (a row the database refuses, e.g. a key too long
 * for its index, then fails its own room only); a room that fails alone is
 * retried after a backoff (100 ms doubling to 5 s). A broken connection
 * fails what was in flight (a load in flight fails its waiters) and is
 * reopened with the same backoff; queued writes go out once it is back.
 *
 * Cluster mode (lr_pg_opts.node_id, --cluster): a load first takes the
 * room's lease (lunaroom_leases, the database's clock) in the same implicit
 * transaction, or reports the room held elsewhere; one UPDATE per period
 * renews every lease of the node; each room's writes in a transaction are
 * preceded by a check of its lease (FOR UPDATE) and each carries the same
 * condition, so a node without the lease writes nothing; a lost lease
 * (fence, renewal, or no renewal for lease - period) drops the room
 * (the host's lost function); a room that leaves with its writes committed
 * gives its lease back.
 *
 * The connection lives in storage_postgres_conn.c, cluster mode (leases,
 * renewals, fencing) in storage_postgres_lease.c; storage_postgres_int.h
 * holds what the three share.
 *
 * Owns: the vtable, loads, the write transactions and which batches each
 * carries, the table's SQL. Must not: know the key layout of rooms, call
 * Lua or the engine (it reports through the lr_store_host it is bound
 * with), block on the database.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "log.h"
#include "storage_postgres_int.h"

static size_t p_stats(lr_store *st, lr_store_stat *out, size_t max);

char *pg_sql_fmt(const char *fmt, const char *table) {
  size_t n = strlen(fmt) + 4 * strlen(table) + 1;
  char *out = lr_xmalloc(n);
  snprintf(out, n, fmt, table, table, table, table);
  return out;
}

proom *pg_room_get(pstore *s, const char *ns, const char *id, bool create) {
  return (proom *)lr_wb_room_get(s->wb, ns, id, create);
}

void pg_work_add(pstore *s, proom *r) {
  if (r->in_work) return;
  r->in_work = true;
  r->wnext = NULL;
  *s->wtail = r;
  s->wtail = &r->wnext;
}

/* The cache asks before it drops a forgotten room: on the work list. */
bool pg_room_busy(void *ud, lr_wb_room *b) {
  (void)ud;
  return ((proom *)b)->in_work;
}

void pg_maybe_drop(pstore *s, proom *r) {
  lr_wb_maybe_drop(s->wb, &r->b);
}

uint64_t pg_timer_add(pstore *s, int64_t ms, lr_store_timer_cb cb) {
  return s->host ? s->host->timer(s->hud, ms, cb, s) : 0;
}

void pg_notify(pstore *s, proom *r) {
  if (s->host) s->host->progress(s->hud, r->b.ns, r->b.id);
}

int64_t pg_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ jobs */

static void on_retry(void *ud) {
  pstore *s = ud;
  s->retry_timer = 0;
  pg_kick(s);
}

/* A load (in cluster mode: take, holder, select) finished. */
static void load_done(pstore *s, pjob *j) {
  proom *r = j->room;
  r->load_sent = false;
  int ok = !j->failed;
  char why[300];
  snprintf(why, sizeof why, "storage load failed");
  if (ok && s->node_id && j->epoch <= 0) {
    ok = LR_STORE_READY_ELSEWHERE;
    s->n_refused++;
    snprintf(why, sizeof why, "%s", j->owner[0] ? j->owner : "another node");
    lr_info("storage %s/%s: owned by %s (its lease is valid): refused here", r->b.ns, r->b.id, why);
  }
  if (ok == 1) {
    r->b.state = R_LOADED;
    if (s->node_id) {
      r->epoch = j->epoch;
      r->lost = false;
      s->n_owned++;
      /* A take is a renewal too: the self-drop clock starts here even if
       * no renewal ever reaches the database afterwards. */
      if (j->sent_at > s->renewed_at) {
        s->renewed_at = j->sent_at;
        pg_arm_deadline(s);
      }
      r->b.failed[0] = 0;
      s->n_taken++;
      if (j->from_other) s->n_takeovers++;
      lr_info("storage %s/%s: lease taken (epoch %lld)", r->b.ns, r->b.id, r->epoch);
    }
  } else {
    r->b.state = R_NONE;
    if (ok == 0)
      lr_error("storage %s/%s: loading from postgres failed: %s", r->b.ns, r->b.id, j->err);
  }
  lr_wb_wake(s->wb, &r->b, ok, ok == 1 ? NULL : why);
}

/* Room i of a write transaction that ended (txn_failed: the database
 * refused it, not a lost connection). */
static void flush_room_done(pstore *s, pjob *j, size_t i, bool txn_failed) {
  proom *r = j->rooms[i];
  if (r->lost || (!j->failed && j->lost && j->lost[i])) {
    /* Fenced: nothing of it was written. Its batches go with the room. */
    lr_wb_drop_inflight(s->wb, &r->b);
    if (!r->lost) pg_room_lost(s, r, "the database has another holder or the lease expired");
  } else {
    if (!j->failed) {
      lr_wb_commit(s->wb, &r->b);
      r->solo = false;
      r->backoff = r->retry_at = 0;
    } else {
      snprintf(r->b.failed, sizeof r->b.failed, "%.190s", j->err);
      if (txn_failed) r->solo = true; /* alone; at once when it shared the transaction */
      if (txn_failed && j->nrooms == 1) {
        r->backoff = r->backoff ? r->backoff * 2 : BACKOFF_MIN_MS;
        if (r->backoff > BACKOFF_MAX_MS) r->backoff = BACKOFF_MAX_MS;
        r->retry_at = pg_mono_ms() + r->backoff;
      }
    }
    r->b.inflight = 0;
    if (r->b.qhead) pg_work_add(s, r); /* failed, or more came meanwhile */
    pg_notify(s, r);
  }
  r->b.pin--;
  pg_maybe_drop(s, r);
}

static void flush_done(pstore *s, pjob *j) {
  s->flushing = false;
  s->n_txn++;
  bool txn_failed = j->failed && s->ready; /* not a lost connection (pg_conn_fail) */
  if (txn_failed) {
    s->n_fail++;
    if (j->nrooms > 1)
      lr_error("postgres storage: a write transaction of %zu rooms failed (kept; each room is "
               "retried in its own transaction): %s",
               j->nrooms, j->err);
    else
      lr_error("storage %s/%s: its write transaction failed (kept, retried with a backoff): %s",
               j->rooms[0]->b.ns, j->rooms[0]->b.id, j->err);
  }
  for (size_t i = 0; i < j->nrooms; i++)
    flush_room_done(s, j, i, txn_failed);
  free(j->rooms);
  free(j->check_at);
  free(j->lost);
  pg_kick(s);
}

void pg_job_done(pstore *s, pjob *j) {
  if (j->kind == J_SCHEMA && j->failed && s->ready) {
    /* e.g. two nodes creating the tables at the same instant: the next
     * connection tries again (what came after it in the pipeline failed
     * with it and is retried the same way). */
    char why[300];
    snprintf(why, sizeof why, "creating the tables failed: %s", j->err);
    free(j);
    pg_conn_fail(s, why);
    return;
  }
  if (j->kind == J_LOAD) load_done(s, j);
  if (j->kind == J_LEASES) {
    if (j->leases_cb)
      j->leases_cb(j->leases_ud, j->failed ? NULL : lr_buf_cstr(&j->rows), j->rows.len,
                   j->failed ? (j->err[0] ? j->err : "the database connection was lost") : NULL);
    lr_buf_free(&j->rows);
  }
  if (j->kind == J_RELEASE && j->failed)
    lr_warn("postgres storage: giving leases back failed (they expire): %s", j->err);
  if (j->kind == J_RENEW) pg_renew_done(s, j);
  if (j->kind == J_FLUSH) flush_done(s, j);
  free(j);
}

static int send_load(pstore *s, proom *r) {
  const char *v[5] = {r->b.ns, r->b.id, s->node_id, NULL, s->draining ? "t" : "f"};
  char ttl[32];
  snprintf(ttl, sizeof ttl, "%lld", (long long)s->lease_ms);
  v[3] = ttl;
  /* Cluster: take the lease (one statement: free, expired or ours), see who
   * holds it, then read; one implicit transaction. */
  if (s->node_id &&
      (pg_send_q(
           s,
           "WITH prev AS (SELECT node_id FROM lunaroom_leases WHERE namespace = $1 AND "
           "room_id = $2) "
           "INSERT INTO lunaroom_leases AS l (namespace, room_id, node_id, epoch, expires_at) "
           "SELECT $1::text, $2::text, $3::text, 1, now() + $4::bigint * interval '1 "
           "millisecond' WHERE NOT $5::boolean ON CONFLICT "
           "(namespace, room_id) DO UPDATE SET node_id = EXCLUDED.node_id, epoch = l.epoch + 1, "
           "expires_at = EXCLUDED.expires_at WHERE l.expires_at <= now() OR l.node_id = "
           "EXCLUDED.node_id RETURNING epoch, COALESCE((SELECT node_id FROM prev), '')",
           5, v, NULL) != 0 ||
       pg_send_q(
           s,
           "SELECT node_id || ' ' || GREATEST(0, floor(extract(epoch FROM expires_at - "
           "now()) * 1000))::bigint FROM lunaroom_leases WHERE namespace = $1 AND room_id = $2",
           2, v, NULL) != 0))
    return -1;
  if (pg_send_q(s, s->sql_load, 2, v, NULL) != 0 || !PQpipelineSync(s->conn)) return -1;
  pjob *j = lr_xcalloc(1, sizeof *j);
  j->kind = J_LOAD;
  j->room = r;
  j->sent_at = pg_mono_ms();
  r->load_sent = true;
  pg_job_push(s, j);
  return 0;
}

/* The statements of r's queued batches (after its fence in cluster mode)
 * into the current transaction, while it has room; returns how many
 * batches they carry, or -1 when the connection broke. */
static long send_room(pstore *s, proom *r, size_t *nstmt) {
  long nb = 0;
  char ep[32];
  snprintf(ep, sizeof ep, "%lld", r->epoch);
  if (s->node_id) { /* the fence: the lease row is ours, locked until the commit */
    const char *v[4] = {r->b.ns, r->b.id, s->node_id, ep};
    if (pg_send_q(s,
                  "SELECT 1 FROM lunaroom_leases WHERE namespace = $1 AND room_id = $2 AND "
                  "node_id = $3 AND epoch = $4::bigint AND expires_at > now() FOR UPDATE",
                  4, v, NULL) != 0)
      return -1;
    (*nstmt)++;
  }
  for (pbatch *q = r->b.qhead; q && *nstmt < MAX_TXN_STATEMENTS && !(s->txn_rooms > 0 && nb > 0);
       q = q->next, nb++) {
    for (size_t i = 0; i < q->n; i++) {
      const lr_store_op *o = &q->ops[i];
      bool put = o->kind == LR_STORE_PUT;
      const char *v[6] = {
          r->b.ns, r->b.id, o->key, put ? o->val : s->node_id, put ? s->node_id : ep, ep};
      int len[6] = {0, 0, (int)o->keylen, put ? (int)o->vallen : 0, 0, 0};
      const char *sql = put ? s->sql_put : o->kind == LR_STORE_DEL ? s->sql_del : s->sql_delp;
      int np = (put ? 4 : 3) + (s->node_id ? 2 : 0);
      if (pg_send_q(s, sql, np, v, len) != 0) return -1;
      (*nstmt)++;
    }
  }
  return nb;
}

/* One transaction with the queued batches of the rooms in list (nothing
 * is in flight); the rooms that did not fit go back on s->work. */
static int send_flush(pstore *s, proom *list) {
  size_t cap = 16, n = 0, nstmt = 0;
  proom **rooms = lr_xmalloc(cap * sizeof *rooms);
  int *check_at = s->node_id ? lr_xmalloc(cap * sizeof *check_at) : NULL;
  bool full = false;
  int64_t now = pg_mono_ms(), wait = -1;
  proom *r, *nx;
  for (r = list; r; r = nx) {
    nx = r->wnext;
    r->in_work = false;
    if (!r->b.qhead || r->lost) continue;
    if (r->retry_at > now) { /* failed alone: waits for its backoff */
      if (wait < 0 || r->retry_at - now < wait) wait = r->retry_at - now;
      pg_work_add(s, r);
      continue;
    }
    if (full || nstmt >= MAX_TXN_STATEMENTS || (r->solo && n > 0)) {
      full = full || nstmt >= MAX_TXN_STATEMENTS;
      pg_work_add(s, r);
      continue;
    }
    int at = (int)nstmt;
    long nb = send_room(s, r, &nstmt);
    if (nb < 0) goto fail;
    if (n == cap) {
      cap *= 2;
      rooms = lr_xrealloc(rooms, cap * sizeof *rooms);
      if (check_at) check_at = lr_xrealloc(check_at, cap * sizeof *check_at);
    }
    if (check_at) check_at[n] = at;
    rooms[n++] = r;
    r->b.inflight = nb;
    r->b.pin++;
    if (s->txn_rooms > 0 && (long)n >= s->txn_rooms) full = true;
    if (r->b.qhead && nb < r->b.nqueued) full = true; /* the rest waits for the next one */
    if (r->solo) full = true;                         /* alone in its transaction */
  }
  if (wait >= 0 && !s->retry_timer && s->host) s->retry_timer = pg_timer_add(s, wait, on_retry);
  if (n == 0) {
    free(rooms);
    free(check_at);
    return 0;
  }
  pjob *j = lr_xcalloc(1, sizeof *j);
  j->kind = J_FLUSH;
  j->rooms = rooms;
  j->nrooms = n;
  j->check_at = check_at;
  j->lost = check_at ? lr_xcalloc(n, sizeof *j->lost) : NULL;
  pg_job_push(s, j); /* before the sync can fail: conn_fail then releases the rooms */
  s->flushing = true;
  if (!PQpipelineSync(s->conn)) return -1;
  return 0;
fail: /* the connection broke while sending: nothing is in flight */
  for (size_t k = 0; k < n; k++) {
    rooms[k]->b.inflight = 0;
    rooms[k]->b.pin--;
    pg_work_add(s, rooms[k]);
  }
  for (; r; r = nx) {
    nx = r->wnext;
    r->in_work = false;
    pg_work_add(s, r);
  }
  free(rooms);
  free(check_at);
  return -1;
}

/* End of the loop turn: send the loads asked for and the writes queued. */
static void on_kick(void *ud) {
  pstore *s = ud;
  s->kick_timer = 0;
  if (!s->ready || !s->conn) return;
  /* Loads first; the rooms with batches stay on the list for the flush. */
  for (proom **pp = &s->work; *pp;) {
    proom *r = *pp;
    if (r->b.state == R_LOADING && !r->load_sent && send_load(s, r) != 0) {
      pg_conn_fail(s, PQerrorMessage(s->conn));
      return;
    }
    if (r->b.qhead && !r->lost) {
      pp = &r->wnext;
      continue;
    }
    *pp = r->wnext; /* nothing (more) to write */
    r->in_work = false;
    if (!*pp) s->wtail = pp;
    pg_maybe_drop(s, r);
  }
  if (s->rel && pg_send_release(s) != 0) {
    pg_conn_fail(s, PQerrorMessage(s->conn));
    return;
  }
  if (!s->flushing && s->work) {
    proom *list = s->work;
    s->work = NULL;
    s->wtail = &s->work;
    if (send_flush(s, list) != 0) {
      pg_conn_fail(s, PQerrorMessage(s->conn));
      return;
    }
  }
  if (pg_pump_out(s) != 0) pg_conn_fail(s, PQerrorMessage(s->conn));
}

void pg_kick(pstore *s) {
  if (s->host && !s->kick_timer && s->ready) s->kick_timer = pg_timer_add(s, 0, on_kick);
}

/* ------------------------------------------------------------ vtable */

static int p_get(lr_store *st, const char *ns, const char *room, const char *key, lr_buf *out,
                 char *err, size_t errlen) {
  pstore *s = (pstore *)st;
  lr_wb_room *r = lr_wb_room_get(s->wb, ns, room, false);
  return lr_wb_get(s->wb, r, ns, room, key, out, err, errlen);
}

static int p_list(lr_store *st, const char *ns, const char *room, const char *prefix,
                  lr_store_list_cb cb, void *ud, char *err, size_t errlen) {
  pstore *s = (pstore *)st;
  lr_wb_room *r = lr_wb_room_get(s->wb, ns, room, false);
  return lr_wb_list(s->wb, r, ns, room, prefix, cb, ud, err, errlen);
}

static long p_count(lr_store *st, const char *ns, const char *room) {
  pstore *s = (pstore *)st;
  /* Only loaded rooms are counted (ns or room NULL: the loaded rooms); a
   * room not loaded counts 0 while the connection is up (the /readyz probe
   * asks for one) and every count is -1 while it is down. */
  if (!s->ready) return -1;
  return lr_wb_count(s->wb, ns, room);
}

static int p_apply(lr_store *st, const char *ns, const char *room, const lr_store_op *ops, size_t n,
                   char *err, size_t errlen) {
  pstore *s = (pstore *)st;
  int rc = lr__store_check_ops(ns, room, ops, n, err, errlen);
  if (rc) return rc;
  proom *r = pg_room_get(s, ns, room, false);
  if (r && r->lost) {
    lr__store_errf(err, errlen, "postgres storage: %s/%s: %s", ns, room, r->b.failed);
    return LR_STORE_EIO;
  }
  if (!r || r->b.state != R_LOADED) return lr_wb_not_loaded(s->wb, ns, room, err, errlen);
  if ((rc = lr_wb_accept(s->wb, &r->b, ops, n, err, errlen)) != 0) return rc;
  pg_work_add(s, r);
  if (!s->ready && !r->b.failed[0] && s->conn_err[0]) {
    /* No connection: the room is failing until it is back. */
    snprintf(r->b.failed, sizeof r->b.failed, "%s", s->conn_err);
  }
  pg_kick(s);
  return 0;
}

static int p_ready(lr_store *st, const char *ns, const char *room, lr_store_ready_cb cb, void *ud,
                   char *err, size_t errlen) {
  pstore *s = (pstore *)st;
  if (!s->host) {
    lr__store_errf(err, errlen, "postgres storage needs the server's event loop");
    return LR_STORE_EIO;
  }
  proom *r = pg_room_get(s, ns, room, true);
  r->b.forget = false;
  if (r->b.state == R_LOADED) return 1;
  if (r->lost && r->b.qhead) { /* a fenced write of the dropped room is still in flight */
    lr__store_errf(err, errlen, "postgres storage: %s/%s is being dropped here; try again", ns,
                   room);
    return LR_STORE_EIO;
  }
  if (r->lost) {
    r->lost = false; /* dropped earlier: take it again if the lease is free */
    r->b.failed[0] = 0;
  }
  if (!s->ready && !s->connecting && s->conn_err[0]) {
    lr__store_errf(err, errlen, "postgres storage: %s", s->conn_err);
    pg_maybe_drop(s, r);
    return LR_STORE_EIO;
  }
  r->b.state = R_LOADING;
  pg_work_add(s, r);
  lr_wb_wait(&r->b, cb, ud);
  pg_kick(s);
  return 0;
}

static void p_forget(lr_store *st, const char *ns, const char *room) {
  lr_wb_forget(((pstore *)st)->wb, ns, room);
}

static long p_pending(lr_store *st) {
  return lr_wb_pending(((pstore *)st)->wb);
}

static int p_progress(lr_store *st, const char *ns, const char *room, uint64_t *accepted,
                      uint64_t *committed, char *err, size_t errlen) {
  return lr_wb_progress(((pstore *)st)->wb, ns, room, accepted, committed, err, errlen);
}

/* The lease lists still asked for (J_LEASES in flight) are answered now
 * with why, and not again: their callers go with the engine. */
static void fail_leases(pstore *s, const char *why) {
  for (pjob *j = s->jobs; j; j = j->next) {
    if (j->kind != J_LEASES || !j->leases_cb) continue;
    lr_pg_leases_cb cb = j->leases_cb;
    j->leases_cb = NULL;
    cb(j->leases_ud, NULL, 0, why);
  }
}

static void p_bind(lr_store *st, const lr_store_host *host, void *ud) {
  pstore *s = (pstore *)st;
  if (!host) { /* the loop goes with the engine */
    pg_unwatch(s);
    fail_leases(s, "the server is stopping");
  }
  s->host = host;
  s->hud = ud;
  if (host) { /* from a timer: the transport offers its watches by then */
    pg_conn_soon(s);
    return;
  }
  /* The engine's timers are about to be freed without firing. */
  s->reconnect_timer = s->kick_timer = s->retry_timer = s->renew_timer = s->deadline_timer = 0;
}

static void p_close(lr_store *st) {
  pstore *s = (pstore *)st;
  lr_wb_report_lost(s->wb);
  /* The leases of the rooms that left with everything committed: given
   * back without waiting (the server runs what it received before the
   * connection's end), so that another node takes them at once. */
  if (s->node_id) lr_wb_each(s->wb, pg_release_held, s);
  if (s->rel && s->ready && s->conn && pg_send_release(s) == 0) PQflush(s->conn);
  pg_rel_free(s);
  pg_drop_conn(s);
  for (pjob *j = s->jobs, *n; j; j = n) {
    n = j->next;
    if (j->kind == J_LEASES) lr_buf_free(&j->rows); /* answered at the unbind */
    free(j->rooms);
    free(j->check_at);
    free(j->lost);
    free(j);
  }
  lr_wb_free(s->wb);
  free(s->sql_load);
  free(s->sql_put);
  free(s->sql_del);
  free(s->sql_delp);
  free(s->sql_create);
  free(s->node_id);
  free(s->conninfo);
  free(s->table);
  free(s);
}

static const lr_store_vt pg_vt = {
    .name = "postgres",
    .get = p_get,
    .list = p_list,
    .apply = p_apply,
    .count = p_count,
    .close = p_close,
    .bind = p_bind,
    .ready = p_ready,
    .forget = p_forget,
    .pending = p_pending,
    .progress = p_progress,
    .stats = p_stats,
};

static bool valid_table(const char *t) {
  if (!t || !*t || strlen(t) > 63) return false;
  if (!((*t >= 'a' && *t <= 'z') || (*t >= 'A' && *t <= 'Z') || *t == '_')) return false;
  for (const char *p = t; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '_'))
      return false;
  return true;
}

lr_store *lr_store_postgres_open(const lr_pg_opts *o, char *err, size_t errlen) {
  const char *table = o->table ? o->table : "signe_room_storage";
  if (!valid_table(table)) {
    lr__store_errf(err, errlen,
                   "postgres storage: invalid table name '%s' ([A-Za-z_][A-Za-z0-9_]*)", table);
    return NULL;
  }
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(o->conninfo, &perr);
  if (!opts) {
    lr__store_errf(err, errlen, "postgres storage: %s", perr ? perr : "invalid connection URL");
    PQfreemem(perr);
    return NULL;
  }
  PQconninfoFree(opts);
  pstore *s = lr_xcalloc(1, sizeof *s);
  lr_wb_cfg cfg = {.name = "postgres storage",
                   .where = "in postgres",
                   .peer = "the server",
                   .room_size = sizeof(proom),
                   .nbuckets = NBUCKETS,
                   .busy = pg_room_busy,
                   .dropped = pg_room_dropped,
                   .ud = s};
  s->wb = lr_wb_new(&cfg, err, errlen);
  if (!s->wb) {
    free(s);
    return NULL;
  }
  s->base.vt = &pg_vt;
  s->conninfo = lr_xstrndup(o->conninfo, strlen(o->conninfo));
  s->table = lr_xstrndup(table, strlen(table));
  s->watched_fd = -1;
  s->jtail = &s->jobs;
  s->wtail = &s->work;
  const char *tr = getenv("LUNAROOM_PG_TXN_ROOMS");
  s->txn_rooms = tr ? atol(tr) : 0;
  s->sql_load =
      pg_sql_fmt("SELECT key, value FROM %s WHERE namespace = $1 AND room_id = $2", table);
  if (o->node_id) {
    pg_lease_sql(s, table, o);
  } else {
    s->sql_put =
        pg_sql_fmt("INSERT INTO %s (namespace, room_id, key, value) VALUES ($1, $2, $3, $4) "
                   "ON CONFLICT (namespace, room_id, key) DO UPDATE SET value = EXCLUDED.value",
                   table);
    s->sql_del =
        pg_sql_fmt("DELETE FROM %s WHERE namespace = $1 AND room_id = $2 AND key = $3", table);
    s->sql_delp = pg_sql_fmt("DELETE FROM %s WHERE namespace = $1 AND room_id = $2 AND "
                             "substr(key, 1, length($3)) = $3",
                             table);
  }
  s->sql_create = pg_sql_fmt("CREATE TABLE IF NOT EXISTS %s (namespace TEXT NOT NULL, room_id TEXT "
                             "NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY "
                             "(namespace, room_id, key))",
                             table);
  return &s->base;
}

void lr_store_postgres_stats(lr_store *st, uint64_t *txns, uint64_t *stmts, uint64_t *fails) {
  pstore *s = (pstore *)st;
  *txns = s->n_txn;
  *stmts = s->n_stmt;
  *fails = s->n_fail;
}

static size_t p_stats(lr_store *st, lr_store_stat *out, size_t max) {
  pstore *s = (pstore *)st;
  lr_store_stat all[] = {
      {"lunaroom_pg_connected", "gauge", "1 while the PostgreSQL connection is open.",
       s->ready ? 1 : 0},
      {"lunaroom_pg_transactions_total", "counter", "Write transactions sent to PostgreSQL.",
       (double)s->n_txn},
      {"lunaroom_pg_transaction_failures_total", "counter",
       "Write transactions PostgreSQL refused (their rooms retried).", (double)s->n_fail},
      {"lunaroom_pg_statements_total", "counter", "Statements sent to PostgreSQL.",
       (double)s->n_stmt},
      {"lunaroom_pg_pending_batches", "gauge", "Write batches not committed yet.",
       (double)lr_wb_pending(s->wb)},
      {"lunaroom_cluster_rooms_owned", "gauge", "Rooms whose lease this node holds.",
       (double)s->n_owned},
      {"lunaroom_cluster_leases_taken_total", "counter", "Room leases this node took.",
       (double)s->n_taken},
      {"lunaroom_cluster_rooms_refused_total", "counter",
       "Rooms refused here because another node holds their lease.", (double)s->n_refused},
      {"lunaroom_cluster_leases_lost_total", "counter",
       "Leases lost (fenced, not renewed in time): rooms dropped here.", (double)s->n_lost},
      {"lunaroom_cluster_lease_renewals_total", "counter",
       "Renewal statements sent (one per period for all rooms).", (double)s->n_renewals},
      {"lunaroom_cluster_failovers_total", "counter",
       "Rooms taken here from another node (its lease expired or was given back).",
       (double)s->n_takeovers},
  };
  size_t n = s->node_id ? sizeof all / sizeof *all : 5;
  if (n > max) n = max;
  memcpy(out, all, n * sizeof *out);
  return n;
}

/*
 * storage_postgres.c - storage on a PostgreSQL server (--storage
 * postgres://... or postgresql://...), through libpq's asynchronous API only.
 *
 * The table is SQLite's: signe_room_storage(namespace, room_id, key, value)
 * with PRIMARY KEY (namespace, room_id, key), values as JSON text (TEXT, not
 * jsonb: numbers and key order stay byte for byte). Created if missing.
 *
 * The loop never waits for the database. One connection, non-blocking, in
 * pipeline mode; its socket is watched by the server's event loop
 * (lr_net_watch_fd). No PQexec, no thread, no timer that polls: timers are
 * only "run this at the end of the current loop turn" (0 ms) and the
 * reconnect and retry backoffs.
 *
 * Reads meet the engine's synchronous API as storage_lua.c does: a room's
 * keys are loaded once (ready(): one SELECT) into a cache (a memory store)
 * before the room is created; get/list/count answer from the cache. A write
 * batch goes to the cache at once and is queued; every room's batches queued
 * during one loop turn go to the server in ONE transaction (the statements
 * of a pipeline between two syncs: an implicit transaction, all or nothing),
 * one transaction in flight at a time, so a room's batches commit in order.
 * progress() counts each room's accepted and committed batches and the
 * engine is told of every change (lr_server_store_progress): packets wait
 * for the commit (the storage gate, room.c).
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
 * (lr_server_store_lost); a room that leaves with its writes committed
 * gives its lease back.
 *
 * Owns: the connection, the per-room cache state, the write queues, the SQL.
 * Must not: know the key layout of rooms, call Lua, block on the database.
 */
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "engine.h"
#include "json.h"
#include "log.h"
#include "net.h"
#include "storage.h"
#include "storage_postgres.h"

#define NBUCKETS 16384
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define MAX_TXN_STATEMENTS 20000 /* one transaction carries at most this many writes */

typedef struct pstore pstore;
typedef struct proom proom;

typedef struct waiter {
  struct waiter *next;
  lr_store_ready_cb cb;
  void *ud;
} waiter;

typedef struct pbatch {
  struct pbatch *next;
  size_t n;
  lr_store_op *ops; /* keys and values point into mem */
  char *mem;
} pbatch;

enum { R_NONE = 0, R_LOADING, R_LOADED };
enum { J_SCHEMA = 1, J_LOAD, J_FLUSH, J_RENEW, J_RELEASE, J_LEASES };

struct proom {
  proom *next;  /* hash bucket */
  proom *wnext; /* s->work */
  bool in_work; /* on s->work: a load to send, or batches to write */
  pstore *s;
  char *ns, *id;
  int state;
  bool load_sent;
  waiter *waiters, **wtail;
  pbatch *qhead, **qtail;
  long nqueued;
  long inflight; /* batches (from qhead) carried by the transaction in flight */
  bool forget;
  int pin;
  uint64_t accepted, committed;
  char failed[200];
  /* cluster mode: the lease this node holds on the room (epoch 0: none) */
  long long epoch;
  bool lost;            /* the lease is gone: nothing more is written */
  uint64_t renew_gen;   /* the renewal that carried it */
  uint64_t renewed_gen; /* the last renewal that found it */
  /* After a failed transaction: written alone (a row the database rejects
   * fails its own room only), retried with a backoff once alone. */
  bool solo;
  int64_t backoff, retry_at; /* ms; retry_at monotonic */
};

/* A lease given back: the room left this node with its writes committed. */
typedef struct prel {
  struct prel *next;
  char *ns, *id;
  long long epoch;
} prel;

typedef struct pjob {
  struct pjob *next;
  int kind;
  proom *room;   /* J_LOAD */
  proom **rooms; /* J_FLUSH: the rooms it carries (pinned) */
  size_t nrooms;
  long nbatches;
  bool failed;
  char err[256];
  int nres;        /* results seen (statements answered) */
  int *check_at;   /* J_FLUSH, cluster: the result index of each room's lease check */
  size_t ck;       /* the next of them to come */
  bool *lost;      /* J_FLUSH, cluster: the check found no lease */
  long long epoch; /* J_LOAD, cluster: the lease taken (0: refused) */
  char owner[256]; /* J_LOAD, cluster: who holds it when refused: "NODE_URL VALID_MS" */
  uint64_t gen;    /* J_RENEW */
  bool from_other; /* J_LOAD, cluster: the lease was another node's before */
  lr_pg_leases_cb leases_cb; /* J_LEASES: the valid leases as JSON rows */
  void *leases_ud;
  lr_buf rows;
  int64_t sent_at; /* J_RENEW, J_LOAD: monotonic ms */
} pjob;

struct pstore {
  lr_store base;
  char *conninfo, *table;
  char *sql_load, *sql_put, *sql_del, *sql_delp, *sql_create;
  /* cluster mode (node_id set): leases and fencing */
  char *node_id;
  int64_t lease_ms, renew_ms;
  uint64_t renew_timer, renew_gen;
  uint64_t deadline_timer; /* fires when the rooms must be dropped unless renewed */
  bool renewing;
  int64_t renewed_at; /* monotonic ms when the last successful renewal was sent */
  uint64_t n_taken, n_refused, n_lost, n_renewals;
  uint64_t n_takeovers; /* taken from another node (fail-over or hand-off) */
  bool draining; /* takes no lease (lr_store_postgres_drain): rooms go to other nodes */
  long n_owned; /* rooms whose lease this node holds */
  prel *rel;    /* leases to give back (sent with the next kick, or at close) */
  /* The rooms the next kick looks at (never a walk over every room on the
   * write path): a load asked for, batches queued. */
  proom *work, **wtail;
  lr_store *cache;
  lr_server *srv;
  PGconn *conn;
  lr_net_watch *watch;
  int watched_fd;
  bool connecting, ready;
  int64_t backoff;
  uint64_t reconnect_timer, kick_timer, retry_timer;
  pjob *jobs, **jtail; /* sent, each ends with a sync; answered in order */
  bool flushing;       /* a J_FLUSH is among jobs */
  proom *rooms[NBUCKETS];
  long pending; /* batches queued (in flight included), all rooms */
  char conn_err[200];
  /* figures (lr_store_postgres_stats) */
  uint64_t n_txn, n_stmt, n_fail;
  /* Rooms per transaction, 0 = no limit; LUNAROOM_PG_TXN_ROOMS=1 gives one
   * transaction per write batch (bench/pg_writes.mjs compares the two). */
  long txn_rooms;
};

static void conn_start(pstore *s);
static void conn_fail(pstore *s, const char *why);
static void kick(pstore *s);
static void on_renew(void *ud);
static size_t p_stats(lr_store *st, lr_store_stat *out, size_t max);
static int send_q(pstore *s, const char *sql, int n, const char *const *v, const int *len);
static void job_push(pstore *s, pjob *j);
static int pump_out(pstore *s);

/* libpq's messages span lines: one line, without the trailing newline. */
static void one_line(char *dst, size_t n, const char *src) {
  size_t j = 0;
  bool space = false;
  for (; src && *src && j + 1 < n; src++) {
    char c = *src == '\n' || *src == '\t' || *src == '\r' ? ' ' : *src;
    if (c == ' ' && (space || j == 0)) continue;
    space = c == ' ';
    dst[j++] = c;
  }
  while (j && dst[j - 1] == ' ')
    j--;
  dst[j] = 0;
}

static void no_notices(void *arg, const char *msg) {
  (void)arg, (void)msg; /* "relation already exists, skipping" and the like */
}

static char *sql_fmt(const char *fmt, const char *table) {
  size_t n = strlen(fmt) + 4 * strlen(table) + 1;
  char *out = lr_xmalloc(n);
  snprintf(out, n, fmt, table, table, table, table);
  return out;
}

static uint32_t hash2(const char *a, const char *b) {
  uint32_t h = 2166136261u;
  for (; *a; a++)
    h = (h ^ (unsigned char)*a) * 16777619u;
  h = (h ^ 0xff) * 16777619u;
  for (; *b; b++)
    h = (h ^ (unsigned char)*b) * 16777619u;
  return h;
}

static proom *room_get(pstore *s, const char *ns, const char *id, bool create) {
  uint32_t b = hash2(ns, id) & (NBUCKETS - 1);
  for (proom *r = s->rooms[b]; r; r = r->next)
    if (strcmp(r->ns, ns) == 0 && strcmp(r->id, id) == 0) return r;
  if (!create) return NULL;
  proom *r = lr_xcalloc(1, sizeof *r);
  r->s = s;
  r->ns = lr_xstrndup(ns, strlen(ns));
  r->id = lr_xstrndup(id, strlen(id));
  r->wtail = &r->waiters;
  r->qtail = &r->qhead;
  r->next = s->rooms[b];
  s->rooms[b] = r;
  return r;
}

static void batch_free(pbatch *q) {
  free(q->ops);
  free(q->mem);
  free(q);
}

static void room_free(pstore *s, proom *r) {
  uint32_t b = hash2(r->ns, r->id) & (NBUCKETS - 1);
  for (proom **p = &s->rooms[b]; *p; p = &(*p)->next)
    if (*p == r) {
      *p = r->next;
      break;
    }
  for (waiter *w = r->waiters, *n; w; w = n) {
    n = w->next;
    free(w);
  }
  for (pbatch *q = r->qhead, *n; q; q = n) {
    n = q->next;
    batch_free(q);
  }
  free(r->ns);
  free(r->id);
  free(r);
}

static void work_add(pstore *s, proom *r) {
  if (r->in_work) return;
  r->in_work = true;
  r->wnext = NULL;
  *s->wtail = r;
  s->wtail = &r->wnext;
}

/* Drop a forgotten room from the cache once nothing of it is pending. */
static void maybe_drop(pstore *s, proom *r) {
  if (!r->forget || r->pin || r->in_work || r->qhead || r->state == R_LOADING || r->waiters) return;
  if (s->node_id && r->epoch > 0 && !r->lost) {
    /* Evicted (or the server stops) with everything committed: give the
     * lease back so that another node can take the room at once. */
    prel *l = lr_xcalloc(1, sizeof *l);
    l->ns = lr_xstrndup(r->ns, strlen(r->ns));
    l->id = lr_xstrndup(r->id, strlen(r->id));
    l->epoch = r->epoch;
    s->n_owned--;
    l->next = s->rel;
    s->rel = l;
    kick(s);
  }
  lr_store_op all = {LR_STORE_DEL_PREFIX, "", 0, NULL, 0};
  lr_store_apply(s->cache, r->ns, r->id, &all, 1, NULL, 0);
  room_free(s, r);
}

static void rel_free(pstore *s) {
  while (s->rel) {
    prel *l = s->rel;
    s->rel = l->next;
    free(l->ns);
    free(l->id);
    free(l);
  }
}

static void notify(pstore *s, proom *r) {
  if (s->srv) lr_server_store_progress(s->srv, r->ns, r->id);
}

/* ------------------------------------------------------------ the socket */

static void want_write(pstore *s, bool on) {
  if (s->watch) lr_net_watch_write(s->watch, on);
}

/* Send what libpq buffered; 0, or -1 when the connection broke. */
static int pump_out(pstore *s) {
  int rc = PQflush(s->conn);
  if (rc < 0) return -1;
  want_write(s, rc == 1);
  return 0;
}

static void job_done(pstore *s, pjob *j);

static void on_result(pstore *s, PGresult *res) {
  pjob *j = s->jobs;
  ExecStatusType st = PQresultStatus(res);
  if (!j) return;
  if (st == PGRES_PIPELINE_SYNC) {
    s->jobs = j->next;
    if (!s->jobs) s->jtail = &s->jobs;
    job_done(s, j);
    return;
  }
  int idx = j->nres++;
  if (st == PGRES_FATAL_ERROR || st == PGRES_PIPELINE_ABORTED || st == PGRES_BAD_RESPONSE) {
    if (!j->failed) {
      j->failed = true;
      const char *m = PQresultErrorMessage(res);
      one_line(j->err, sizeof j->err, m && *m ? m : "statement aborted");
    }
    return;
  }
  if (st != PGRES_TUPLES_OK || j->failed) return;
  if (s->node_id && j->kind == J_LOAD && idx == 0) { /* the take */
    if (PQntuples(res) == 1) {
      j->epoch = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
      const char *prev = PQgetvalue(res, 0, 1);
      j->from_other = prev[0] && strcmp(prev, s->node_id) != 0;
    }
    return;
  }
  if (s->node_id && j->kind == J_LOAD && idx == 1) { /* the holder after the take */
    if (PQntuples(res) == 1) snprintf(j->owner, sizeof j->owner, "%s", PQgetvalue(res, 0, 0));
    return;
  }
  if (j->kind == J_LEASES) {
    for (int i = 0; i < PQntuples(res); i++) {
      lr_buf_puts(&j->rows, j->rows.len ? ",{\"room\":" : "{\"room\":");
      lr_buf key;
      lr_buf_init(&key);
      lr_buf_printf(&key, "%s/%s", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
      lr_json_put_string(&j->rows, key.data, key.len);
      lr_buf_free(&key);
      lr_buf_puts(&j->rows, ",\"node\":");
      lr_json_put_string(&j->rows, PQgetvalue(res, i, 2), (size_t)PQgetlength(res, i, 2));
      lr_buf_printf(&j->rows, ",\"epoch\":%lld,\"validMs\":%lld}",
                    strtoll(PQgetvalue(res, i, 3), NULL, 10), strtoll(PQgetvalue(res, i, 4), NULL, 10));
    }
    return;
  }
  if (j->kind == J_RENEW) {
    for (int i = 0; i < PQntuples(res); i++) {
      proom *r = room_get(s, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), false);
      if (r && r->epoch == strtoll(PQgetvalue(res, i, 2), NULL, 10)) r->renewed_gen = j->gen;
    }
    return;
  }
  if (j->kind == J_FLUSH && j->check_at) {
    if (j->ck < j->nrooms && j->check_at[j->ck] == idx) j->lost[j->ck++] = PQntuples(res) == 0;
    return;
  }
  if (j->kind == J_LOAD && (!s->node_id || j->epoch > 0)) {
    int n = PQntuples(res);
    lr_store_op *ops = lr_xcalloc((size_t)n + 1, sizeof *ops);
    ops[0] = (lr_store_op){LR_STORE_DEL_PREFIX, "", 0, NULL, 0};
    for (int i = 0; i < n; i++)
      ops[i + 1] =
          (lr_store_op){LR_STORE_PUT, PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0),
                        PQgetvalue(res, i, 1), (size_t)PQgetlength(res, i, 1)};
    char err[200];
    if (lr_store_apply(s->cache, j->room->ns, j->room->id, ops, (size_t)n + 1, err, sizeof err)) {
      j->failed = true;
      snprintf(j->err, sizeof j->err, "stored entries are not valid: %.200s", err);
    }
    free(ops);
  }
}

static void on_fd(void *ud, int revents) {
  pstore *s = ud;
  if (!s->conn) return;
  if (s->connecting) {
    conn_start(s); /* PQconnectPoll again */
    return;
  }
  if (revents & POLLOUT) {
    if (pump_out(s) != 0) {
      conn_fail(s, PQerrorMessage(s->conn));
      return;
    }
  }
  if (revents & (POLLIN | POLLHUP)) {
    if (!PQconsumeInput(s->conn)) {
      conn_fail(s, PQerrorMessage(s->conn));
      return;
    }
    int nulls = 0;
    while (s->conn && s->jobs && !PQisBusy(s->conn)) {
      PGresult *res = PQgetResult(s->conn);
      if (!res) {
        if (++nulls > 1) break; /* nothing more for now */
        continue;
      }
      nulls = 0;
      on_result(s, res);
      PQclear(res);
    }
    if (s->conn && PQstatus(s->conn) == CONNECTION_BAD) {
      conn_fail(s, PQerrorMessage(s->conn));
      return;
    }
    if (s->conn && pump_out(s) != 0) conn_fail(s, PQerrorMessage(s->conn));
  }
}

static void watch_socket(pstore *s) {
  int fd = PQsocket(s->conn);
  if (s->watch && fd == s->watched_fd) return;
  lr_net_unwatch_fd(s->watch);
  s->watch = fd >= 0 ? lr_net_watch_fd(fd, on_fd, s) : NULL;
  s->watched_fd = fd;
}

static void drop_conn(pstore *s) {
  lr_net_unwatch_fd(s->watch);
  s->watch = NULL;
  s->watched_fd = -1;
  if (s->conn) PQfinish(s->conn);
  s->conn = NULL;
  s->connecting = s->ready = false;
}

static void on_reconnect(void *ud) {
  pstore *s = ud;
  s->reconnect_timer = 0;
  conn_start(s);
}

/* Everything in flight failed; the rooms that wait for a load get a
 * failure, the writes stay queued. Reconnect after the backoff. */
static void conn_fail(pstore *s, const char *why) {
  char msg[200];
  one_line(msg, sizeof msg, why && *why ? why : "connection lost");
  if (s->ready || !s->backoff) lr_error("postgres storage: %s (reconnecting)", msg);
  snprintf(s->conn_err, sizeof s->conn_err, "%s", msg);
  drop_conn(s);
  pjob *j = s->jobs;
  s->jobs = NULL;
  s->jtail = &s->jobs;
  while (j) {
    pjob *nx = j->next;
    j->failed = true;
    if (!j->err[0]) snprintf(j->err, sizeof j->err, "%s", msg);
    job_done(s, j);
    j = nx;
  }
  /* Rooms still waiting to be loaded (not sent yet) fail too. */
  for (int b = 0; b < NBUCKETS; b++)
    for (proom *r = s->rooms[b], *nx; r; r = nx) {
      nx = r->next;
      if (r->state == R_LOADING && !r->load_sent) {
        r->pin++;
        r->state = R_NONE;
        waiter *w = r->waiters;
        r->waiters = NULL;
        r->wtail = &r->waiters;
        while (w) {
          waiter *wn = w->next;
          w->cb(w->ud, 0, "storage unavailable");
          free(w);
          w = wn;
        }
        r->pin--;
        maybe_drop(s, r);
      } else if (r->qhead) {
        work_add(s, r); /* written once the connection is back */
        if (strcmp(r->failed, msg) != 0) {
          snprintf(r->failed, sizeof r->failed, "%s", msg);
          notify(s, r);
        }
      }
    }
  s->backoff = s->backoff ? s->backoff * 2 : BACKOFF_MIN_MS;
  if (s->backoff > BACKOFF_MAX_MS) s->backoff = BACKOFF_MAX_MS;
  if (s->srv && !s->reconnect_timer)
    s->reconnect_timer = lr_timer_add_c(s->srv, s->backoff, on_reconnect, s);
}

static void job_push(pstore *s, pjob *j) {
  *s->jtail = j;
  s->jtail = &j->next;
}

/* Send sql with params as one statement of the current pipeline. */
static int send_q(pstore *s, const char *sql, int n, const char *const *v, const int *len) {
  static const int fmt[6] = {0, 0, 0, 0, 0, 0};
  s->n_stmt++;
  return PQsendQueryParams(s->conn, sql, n, NULL, v, len, fmt, 0) ? 0 : -1;
}

/* Connected: pipeline mode, the table, then whatever waited. */
static void conn_ready(pstore *s) {
  s->connecting = false;
  if (!PQenterPipelineMode(s->conn) || PQsetnonblocking(s->conn, 1) != 0) {
    conn_fail(s, "cannot enter pipeline mode");
    return;
  }
  pjob *j = lr_xcalloc(1, sizeof *j);
  j->kind = J_SCHEMA;
  if (send_q(s, s->sql_create, 0, NULL, NULL) != 0 ||
      (s->node_id &&
       send_q(s,
              "CREATE TABLE IF NOT EXISTS lunaroom_leases (namespace TEXT NOT NULL, room_id TEXT "
              "NOT NULL, node_id TEXT NOT NULL, epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT "
              "NULL, PRIMARY KEY (namespace, room_id))",
              0, NULL, NULL) != 0) ||
      !PQpipelineSync(s->conn)) {
    free(j);
    conn_fail(s, PQerrorMessage(s->conn));
    return;
  }
  job_push(s, j);
  s->ready = true;
  if (s->backoff) lr_info("postgres storage: connected again");
  s->backoff = 0;
  s->conn_err[0] = 0;
  if (s->node_id && !s->renew_timer && s->srv)
    s->renew_timer = lr_timer_add_c(s->srv, s->renew_ms, on_renew, s);
  if (pump_out(s) != 0) {
    conn_fail(s, PQerrorMessage(s->conn));
    return;
  }
  kick(s);
}

static void conn_start(pstore *s) {
  if (!s->conn) {
    s->conn = PQconnectStart(s->conninfo);
    s->connecting = true;
    s->ready = false;
    if (s->conn) PQsetNoticeProcessor(s->conn, no_notices, NULL);
    if (!s->conn || PQstatus(s->conn) == CONNECTION_BAD) {
      conn_fail(s, s->conn ? PQerrorMessage(s->conn) : "out of memory");
      return;
    }
  }
  PostgresPollingStatusType st = PQconnectPoll(s->conn);
  if (st == PGRES_POLLING_FAILED) {
    conn_fail(s, PQerrorMessage(s->conn));
    return;
  }
  watch_socket(s);
  if (st == PGRES_POLLING_OK) {
    want_write(s, false);
    conn_ready(s);
  } else {
    want_write(s, st == PGRES_POLLING_WRITING);
  }
}

/* ------------------------------------------------------------ leases */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* r's lease is gone: nothing more of it is written; its queued batches are
 * dropped (the ones in flight are fenced by the database), and the engine
 * closes its sockets and disposes of it. */
static void room_lost(pstore *s, proom *r, const char *why) {
  if (r->lost || r->epoch == 0) return;
  r->pin++;
  r->lost = true;
  s->n_lost++;
  long dropped = 0;
  pbatch **pp = &r->qhead;
  for (long k = 0; k < r->inflight && *pp; k++)
    pp = &(*pp)->next;
  while (*pp) {
    pbatch *q = *pp;
    *pp = q->next;
    batch_free(q);
    r->nqueued--;
    s->pending--;
    dropped++;
  }
  r->qtail = pp;
  lr_warn("storage %s/%s: the lease (epoch %lld) is lost: %s; %ld write batch(es) dropped, the "
          "room is closed on this node",
          r->ns, r->id, r->epoch, why, dropped);
  snprintf(r->failed, sizeof r->failed, "lease lost: %.180s", why);
  r->epoch = 0;
  s->n_owned--;
  r->state = R_NONE;
  lr_store_op all = {LR_STORE_DEL_PREFIX, "", 0, NULL, 0};
  lr_store_apply(s->cache, r->ns, r->id, &all, 1, NULL, 0);
  if (s->srv) lr_server_store_lost(s->srv, r->ns, r->id, 1012, "room moved to another node");
  r->pin--;
  maybe_drop(s, r);
}

/* Every held room is lost (no renewal reached the database in time). */
static void all_lost(pstore *s, const char *why) {
  for (int b = 0; b < NBUCKETS; b++)
    for (proom *r = s->rooms[b], *nx; r; r = nx) {
      nx = r->next;
      if (r->epoch > 0 && !r->lost) room_lost(s, r, why);
    }
}

/* A PostgreSQL array literal element: "..." with \ and \" escaped. */
static void arr_add(lr_buf *b, const char *v) {
  lr_buf_put(b, b->len > 1 ? ",\"" : "\"", b->len > 1 ? 2 : 1);
  for (; *v; v++) {
    if (*v == '"' || *v == '\\') lr_buf_put(b, "\\", 1);
    lr_buf_put(b, v, 1);
  }
  lr_buf_put(b, "\"", 1);
}

/* Give back every lease of s->rel (best effort: a lease that is not given
 * back expires on its own). */
static int send_release(pstore *s) {
  lr_buf ns, ids, eps;
  lr_buf_init(&ns);
  lr_buf_init(&ids);
  lr_buf_init(&eps);
  lr_buf_put(&ns, "{", 1);
  lr_buf_put(&ids, "{", 1);
  lr_buf_put(&eps, "{", 1);
  for (prel *l = s->rel; l; l = l->next) {
    arr_add(&ns, l->ns);
    arr_add(&ids, l->id);
    lr_buf_printf(&eps, "%s%lld", eps.len > 1 ? "," : "", l->epoch);
  }
  lr_buf_put(&ns, "}", 1);
  lr_buf_put(&ids, "}", 1);
  lr_buf_put(&eps, "}", 1);
  rel_free(s);
  const char *v[4] = {s->node_id, lr_buf_cstr(&ns), lr_buf_cstr(&ids), lr_buf_cstr(&eps)};
  int rc = send_q(s,
                  "UPDATE lunaroom_leases AS l SET expires_at = now() FROM unnest($2::text[], "
                  "$3::text[], $4::bigint[]) AS h(ns, id, ep) WHERE l.namespace = h.ns AND "
                  "l.room_id = h.id AND l.epoch = h.ep AND l.node_id = $1 AND l.expires_at > now()",
                  4, v, NULL);
  lr_buf_free(&ns);
  lr_buf_free(&ids);
  lr_buf_free(&eps);
  if (rc != 0 || !PQpipelineSync(s->conn)) return -1;
  pjob *j = lr_xcalloc(1, sizeof *j);
  j->kind = J_RELEASE;
  job_push(s, j);
  return 0;
}

static int send_renew(pstore *s) {
  lr_buf ns, ids, eps;
  lr_buf_init(&ns);
  lr_buf_init(&ids);
  lr_buf_init(&eps);
  lr_buf_put(&ns, "{", 1);
  lr_buf_put(&ids, "{", 1);
  lr_buf_put(&eps, "{", 1);
  uint64_t gen = ++s->renew_gen;
  for (int b = 0; b < NBUCKETS; b++)
    for (proom *r = s->rooms[b], *nx; r; r = nx) {
      nx = r->next;
      if (r->epoch <= 0 || r->lost) continue;
      if (s->srv && !r->forget && !r->qhead && !r->waiters && r->state == R_LOADED &&
          !lr_room_find(s->srv, r->ns, r->id)) {
        /* Loaded, but the engine never made the room (its client left while
         * it loaded): not kept (nor its lease) for nobody. */
        r->forget = true;
        maybe_drop(s, r);
        continue;
      }
      arr_add(&ns, r->ns);
      arr_add(&ids, r->id);
      lr_buf_printf(&eps, "%s%lld", eps.len > 1 ? "," : "", r->epoch);
      r->renew_gen = gen;
    }
  lr_buf_put(&ns, "}", 1);
  lr_buf_put(&ids, "}", 1);
  lr_buf_put(&eps, "}", 1);
  char ttl[32];
  snprintf(ttl, sizeof ttl, "%lld", (long long)s->lease_ms);
  const char *v[5] = {s->node_id, ttl, lr_buf_cstr(&ns), lr_buf_cstr(&ids), lr_buf_cstr(&eps)};
  int rc = send_q(s,
                  "UPDATE lunaroom_leases AS l SET expires_at = now() + $2::bigint * interval '1 "
                  "millisecond' FROM unnest($3::text[], $4::text[], $5::bigint[]) AS h(ns, id, ep) "
                  "WHERE l.namespace = h.ns AND l.room_id = h.id AND l.epoch = h.ep AND l.node_id "
                  "= $1 AND l.expires_at > now() RETURNING l.namespace, l.room_id, l.epoch",
                  5, v, NULL);
  lr_buf_free(&ns);
  lr_buf_free(&ids);
  lr_buf_free(&eps);
  if (rc != 0 || !PQpipelineSync(s->conn)) return -1;
  pjob *j = lr_xcalloc(1, sizeof *j);
  j->kind = J_RENEW;
  j->gen = gen;
  j->sent_at = mono_ms();
  job_push(s, j);
  s->renewing = true;
  s->n_renewals++;
  return 0;
}

static void on_deadline(void *ud);

/* (Re)arm the self-drop deadline: renewed_at + lease - one renewal period. */
static void arm_deadline(pstore *s) {
  if (!s->srv || !s->renewed_at) return;
  if (s->deadline_timer) lr_timer_cancel(s->srv, s->deadline_timer);
  int64_t left = s->renewed_at + s->lease_ms - s->renew_ms - mono_ms();
  s->deadline_timer = lr_timer_add_c(s->srv, left > 0 ? left : 0, on_deadline, s);
}

static void on_deadline(void *ud) {
  pstore *s = ud;
  s->deadline_timer = 0;
  int64_t age = mono_ms() - s->renewed_at;
  if (age < s->lease_ms - s->renew_ms) {
    arm_deadline(s);
    return;
  }
  char why[96];
  snprintf(why, sizeof why, "no renewal reached the database for %lld ms", (long long)age);
  all_lost(s, why);
}

static void on_renew(void *ud) {
  pstore *s = ud;
  s->renew_timer = lr_timer_add_c(s->srv, s->renew_ms, on_renew, s);
  /* Without a renewal for ttl - one period, the lease may be gone already:
   * stop serving before another node can have taken the rooms. */
  int64_t age = mono_ms() - s->renewed_at;
  if (s->renewed_at && age > s->lease_ms - s->renew_ms) {
    char why[96];
    snprintf(why, sizeof why, "no renewal reached the database for %lld ms", (long long)age);
    all_lost(s, why);
  }
  if (!s->ready || !s->conn || s->renewing) return;
  if (send_renew(s) != 0 || pump_out(s) != 0) conn_fail(s, PQerrorMessage(s->conn));
}

/* ------------------------------------------------------------ jobs */

static void on_retry(void *ud) {
  pstore *s = ud;
  s->retry_timer = 0;
  kick(s);
}

static void job_done(pstore *s, pjob *j) {
  if (j->kind == J_SCHEMA) {
    if (j->failed && s->ready) {
      /* e.g. two nodes creating the tables at the same instant: the next
       * connection tries again (what came after it in the pipeline failed
       * with it and is retried the same way). */
      char why[300];
      snprintf(why, sizeof why, "creating the tables failed: %s", j->err);
      free(j);
      conn_fail(s, why);
      return;
    }
  } else if (j->kind == J_LOAD) {
    proom *r = j->room;
    r->pin++;
    r->load_sent = false;
    int ok = !j->failed;
    char why[300];
    snprintf(why, sizeof why, "storage load failed");
    if (ok && s->node_id && j->epoch <= 0) {
      ok = LR_STORE_READY_ELSEWHERE;
      s->n_refused++;
      snprintf(why, sizeof why, "%s", j->owner[0] ? j->owner : "another node");
      lr_info("storage %s/%s: owned by %s (its lease is valid): refused here", r->ns, r->id, why);
    }
    if (ok == 1) {
      r->state = R_LOADED;
      if (s->node_id) {
        r->epoch = j->epoch;
        r->lost = false;
        s->n_owned++;
        /* A take is a renewal too: the self-drop clock starts here even if
         * no renewal ever reaches the database afterwards. */
        if (j->sent_at > s->renewed_at) {
          s->renewed_at = j->sent_at;
          arm_deadline(s);
        }
        r->failed[0] = 0;
        s->n_taken++;
        if (j->from_other) s->n_takeovers++;
        lr_info("storage %s/%s: lease taken (epoch %lld)", r->ns, r->id, r->epoch);
      }
    } else {
      r->state = R_NONE;
      if (ok == 0)
        lr_error("storage %s/%s: loading from postgres failed: %s", r->ns, r->id, j->err);
    }
    waiter *w = r->waiters;
    r->waiters = NULL;
    r->wtail = &r->waiters;
    while (w) {
      waiter *n = w->next;
      w->cb(w->ud, ok, ok == 1 ? NULL : why);
      free(w);
      w = n;
    }
    r->pin--;
    maybe_drop(s, r);
  } else if (j->kind == J_LEASES) {
    j->leases_cb(j->leases_ud, j->failed ? NULL : lr_buf_cstr(&j->rows), j->rows.len,
                 j->failed ? (j->err[0] ? j->err : "the database connection was lost") : NULL);
    lr_buf_free(&j->rows);
  } else if (j->kind == J_RELEASE) {
    if (j->failed) lr_warn("postgres storage: giving leases back failed (they expire): %s", j->err);
  } else if (j->kind == J_RENEW) {
    s->renewing = false;
    if (!j->failed) {
      s->renewed_at = j->sent_at;
      arm_deadline(s);
      for (int b = 0; b < NBUCKETS; b++)
        for (proom *r = s->rooms[b], *nx; r; r = nx) {
          nx = r->next;
          if (r->epoch > 0 && !r->lost && r->renew_gen == j->gen && r->renewed_gen != j->gen)
            room_lost(s, r, "the renewal did not find it");
        }
    } else {
      lr_warn("postgres storage: lease renewal failed: %s", j->err);
    }
  } else { /* J_FLUSH */
    s->flushing = false;
    s->n_txn++;
    bool txn_failed = j->failed && s->ready; /* not a lost connection (conn_fail) */
    if (txn_failed) {
      s->n_fail++;
      if (j->nrooms > 1)
        lr_error("postgres storage: a write transaction of %zu rooms failed (kept; each room is "
                 "retried in its own transaction): %s",
                 j->nrooms, j->err);
      else
        lr_error("storage %s/%s: its write transaction failed (kept, retried with a backoff): %s",
                 j->rooms[0]->ns, j->rooms[0]->id, j->err);
    }
    for (size_t i = 0; i < j->nrooms; i++) {
      proom *r = j->rooms[i];
      if (r->lost || (!j->failed && j->lost && j->lost[i])) {
        /* Fenced: nothing of it was written. Its batches go with the room. */
        for (long k = 0; k < r->inflight && r->qhead; k++) {
          pbatch *q = r->qhead;
          r->qhead = q->next;
          if (!r->qhead) r->qtail = &r->qhead;
          batch_free(q);
          r->nqueued--;
          s->pending--;
        }
        r->inflight = 0;
        if (!r->lost) room_lost(s, r, "the database has another holder or the lease expired");
        r->pin--;
        maybe_drop(s, r);
        continue;
      }
      if (!j->failed) {
        for (long k = 0; k < r->inflight && r->qhead; k++) {
          pbatch *q = r->qhead;
          r->qhead = q->next;
          if (!r->qhead) r->qtail = &r->qhead;
          batch_free(q);
          r->nqueued--;
          s->pending--;
        }
        r->committed += (uint64_t)r->inflight;
        r->failed[0] = 0;
        r->solo = false;
        r->backoff = r->retry_at = 0;
      } else {
        snprintf(r->failed, sizeof r->failed, "%.190s", j->err);
        if (txn_failed && j->nrooms > 1) {
          r->solo = true; /* at once, alone */
        } else if (txn_failed) {
          r->solo = true;
          r->backoff = r->backoff ? r->backoff * 2 : BACKOFF_MIN_MS;
          if (r->backoff > BACKOFF_MAX_MS) r->backoff = BACKOFF_MAX_MS;
          r->retry_at = mono_ms() + r->backoff;
        }
      }
      r->inflight = 0;
      if (r->qhead) work_add(s, r); /* failed, or more came meanwhile */
      notify(s, r);
      r->pin--;
      maybe_drop(s, r);
    }
    free(j->rooms);
    free(j->check_at);
    free(j->lost);
    kick(s);
  }
  free(j);
}

static int send_load(pstore *s, proom *r) {
  const char *v[5] = {r->ns, r->id, s->node_id, NULL, s->draining ? "t" : "f"};
  char ttl[32];
  snprintf(ttl, sizeof ttl, "%lld", (long long)s->lease_ms);
  v[3] = ttl;
  /* Cluster: take the lease (one statement: free, expired or ours), see who
   * holds it, then read; one implicit transaction. */
  if (s->node_id &&
      (send_q(s,
              "WITH prev AS (SELECT node_id FROM lunaroom_leases WHERE namespace = $1 AND "
              "room_id = $2) "
              "INSERT INTO lunaroom_leases AS l (namespace, room_id, node_id, epoch, expires_at) "
              "SELECT $1::text, $2::text, $3::text, 1, now() + $4::bigint * interval '1 "
              "millisecond' WHERE NOT $5::boolean ON CONFLICT "
              "(namespace, room_id) DO UPDATE SET node_id = EXCLUDED.node_id, epoch = l.epoch + 1, "
              "expires_at = EXCLUDED.expires_at WHERE l.expires_at <= now() OR l.node_id = "
              "EXCLUDED.node_id RETURNING epoch, COALESCE((SELECT node_id FROM prev), '')",
              5, v, NULL) != 0 ||
       send_q(s,
              "SELECT node_id || ' ' || GREATEST(0, floor(extract(epoch FROM expires_at - now()) * "
              "1000))::bigint FROM lunaroom_leases WHERE namespace = $1 AND room_id = $2",
              2, v, NULL) != 0))
    return -1;
  if (send_q(s, s->sql_load, 2, v, NULL) != 0 || !PQpipelineSync(s->conn)) return -1;
  pjob *j = lr_xcalloc(1, sizeof *j);
  j->kind = J_LOAD;
  j->room = r;
  j->sent_at = mono_ms();
  r->load_sent = true;
  job_push(s, j);
  return 0;
}

/* One transaction with the queued batches of the rooms in list (nothing
 * is in flight); the rooms that did not fit go back on s->work. */
static int send_flush(pstore *s, proom *list) {
  size_t cap = 16, n = 0, nstmt = 0;
  proom **rooms = lr_xmalloc(cap * sizeof *rooms);
  int *check_at = s->node_id ? lr_xmalloc(cap * sizeof *check_at) : NULL;
  bool full = false;
  int64_t now = mono_ms(), wait = -1;
  proom *r, *nx;
  for (r = list; r; r = nx) {
    nx = r->wnext;
    r->in_work = false;
    {
      if (!r->qhead || r->lost) continue;
      if (r->retry_at > now) { /* failed alone: waits for its backoff */
        if (wait < 0 || r->retry_at - now < wait) wait = r->retry_at - now;
        work_add(s, r);
        continue;
      }
      if (full || nstmt >= MAX_TXN_STATEMENTS || (r->solo && n > 0)) {
        full = full || nstmt >= MAX_TXN_STATEMENTS;
        work_add(s, r);
        continue;
      }
      long nb = 0;
      char ep[32];
      snprintf(ep, sizeof ep, "%lld", r->epoch);
      int at = (int)nstmt;
      if (s->node_id) { /* the fence: the lease row is ours, locked until the commit */
        const char *v[4] = {r->ns, r->id, s->node_id, ep};
        if (send_q(s,
                   "SELECT 1 FROM lunaroom_leases WHERE namespace = $1 AND room_id = $2 AND "
                   "node_id = $3 AND epoch = $4::bigint AND expires_at > now() FOR UPDATE",
                   4, v, NULL) != 0)
          goto fail;
        nstmt++;
      }
      for (pbatch *q = r->qhead; q && nstmt < MAX_TXN_STATEMENTS && !(s->txn_rooms > 0 && nb > 0);
           q = q->next, nb++) {
        for (size_t i = 0; i < q->n; i++) {
          const lr_store_op *o = &q->ops[i];
          bool put = o->kind == LR_STORE_PUT;
          const char *v[6] = {
              r->ns, r->id, o->key, put ? o->val : s->node_id, put ? s->node_id : ep, ep};
          int len[6] = {0, 0, (int)o->keylen, put ? (int)o->vallen : 0, 0, 0};
          const char *sql = put ? s->sql_put : o->kind == LR_STORE_DEL ? s->sql_del : s->sql_delp;
          int np = (put ? 4 : 3) + (s->node_id ? 2 : 0);
          if (send_q(s, sql, np, v, len) != 0) goto fail;
          nstmt++;
        }
      }
      if (n == cap) {
        cap *= 2;
        rooms = realloc(rooms, cap * sizeof *rooms);
        if (check_at) check_at = realloc(check_at, cap * sizeof *check_at);
        if (!rooms || (s->node_id && !check_at)) abort();
      }
      if (check_at) check_at[n] = at;
      rooms[n++] = r;
      r->inflight = nb;
      r->pin++;
      if (s->txn_rooms > 0 && (long)n >= s->txn_rooms) full = true;
      if (r->qhead && nb < r->nqueued) full = true; /* the rest waits for the next one */
      if (r->solo) full = true;                     /* alone in its transaction */
    }
  }
  if (wait >= 0 && !s->retry_timer && s->srv)
    s->retry_timer = lr_timer_add_c(s->srv, wait, on_retry, s);
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
  job_push(s, j); /* before the sync can fail: conn_fail then releases the rooms */
  s->flushing = true;
  if (!PQpipelineSync(s->conn)) return -1;
  return 0;
fail: /* the connection broke while sending: nothing is in flight */
  for (size_t k = 0; k < n; k++) {
    rooms[k]->inflight = 0;
    rooms[k]->pin--;
    work_add(s, rooms[k]);
  }
  for (; r; r = nx) {
    nx = r->wnext;
    r->in_work = false;
    work_add(s, r);
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
    if (r->state == R_LOADING && !r->load_sent && send_load(s, r) != 0) {
      conn_fail(s, PQerrorMessage(s->conn));
      return;
    }
    if (r->qhead && !r->lost) {
      pp = &r->wnext;
      continue;
    }
    *pp = r->wnext; /* nothing (more) to write */
    r->in_work = false;
    if (!*pp) s->wtail = pp;
    maybe_drop(s, r);
  }
  if (s->rel && send_release(s) != 0) {
    conn_fail(s, PQerrorMessage(s->conn));
    return;
  }
  if (!s->flushing && s->work) {
    proom *list = s->work;
    s->work = NULL;
    s->wtail = &s->work;
    if (send_flush(s, list) != 0) {
      conn_fail(s, PQerrorMessage(s->conn));
      return;
    }
  }
  if (pump_out(s) != 0) conn_fail(s, PQerrorMessage(s->conn));
}

static void kick(pstore *s) {
  if (s->srv && !s->kick_timer && s->ready) s->kick_timer = lr_timer_add_c(s->srv, 0, on_kick, s);
}

/* ------------------------------------------------------------ vtable */

static int ensure_loaded(pstore *s, proom *r, char *err, size_t errlen) {
  (void)s;
  if (r->state == R_LOADED) return 0;
  lr__store_errf(err, errlen,
                 "postgres storage: %s/%s is not loaded (the engine waits for ready() before "
                 "reading)",
                 r->ns, r->id);
  return LR_STORE_EBUSY;
}

static int p_get(lr_store *st, const char *ns, const char *room, const char *key, lr_buf *out,
                 char *err, size_t errlen) {
  pstore *s = (pstore *)st;
  lr_buf_reset(out);
  proom *r = room_get(s, ns, room, false);
  if (!r) return ensure_loaded(s, &(proom){.ns = (char *)ns, .id = (char *)room}, err, errlen);
  int rc = ensure_loaded(s, r, err, errlen);
  return rc ? rc : lr_store_get(s->cache, ns, room, key, out, err, errlen);
}

static int p_list(lr_store *st, const char *ns, const char *room, const char *prefix,
                  lr_store_list_cb cb, void *ud, char *err, size_t errlen) {
  pstore *s = (pstore *)st;
  proom *r = room_get(s, ns, room, false);
  if (!r) return ensure_loaded(s, &(proom){.ns = (char *)ns, .id = (char *)room}, err, errlen);
  int rc = ensure_loaded(s, r, err, errlen);
  return rc ? rc : lr_store_list(s->cache, ns, room, prefix, cb, ud, err, errlen);
}

static long p_count(lr_store *st, const char *ns, const char *room) {
  pstore *s = (pstore *)st;
  /* Only loaded rooms are counted (ns or room NULL: the loaded rooms); a
   * room not loaded counts 0 while the connection is up (the /readyz probe
   * asks for one) and every count is -1 while it is down. */
  if (!s->ready) return -1;
  return lr_store_count(s->cache, ns, room);
}

static int p_apply(lr_store *st, const char *ns, const char *room, const lr_store_op *ops, size_t n,
                   char *err, size_t errlen) {
  pstore *s = (pstore *)st;
  int rc = lr__store_check_ops(ns, room, ops, n, err, errlen);
  if (rc) return rc;
  proom *r = room_get(s, ns, room, false);
  if (r && r->lost) {
    lr__store_errf(err, errlen, "postgres storage: %s/%s: %s", ns, room, r->failed);
    return LR_STORE_EIO;
  }
  if (!r || r->state != R_LOADED)
    return ensure_loaded(s, r ? r : &(proom){.ns = (char *)ns, .id = (char *)room}, err, errlen);
  if ((rc = lr_store_apply(s->cache, ns, room, ops, n, err, errlen)) != 0) return rc;
  /* A deep copy: the caller's strings are gone when the transaction goes. */
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++)
    bytes += ops[i].keylen + 1 + (ops[i].kind == LR_STORE_PUT ? ops[i].vallen + 1 : 0);
  pbatch *q = lr_xcalloc(1, sizeof *q);
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
    }
  }
  *r->qtail = q;
  r->qtail = &q->next;
  r->nqueued++;
  r->accepted++;
  s->pending++;
  work_add(s, r);
  if (!s->ready && !r->failed[0] && s->conn_err[0]) {
    /* No connection: the room is failing until it is back. */
    snprintf(r->failed, sizeof r->failed, "%s", s->conn_err);
  }
  kick(s);
  return 0;
}

static int p_ready(lr_store *st, const char *ns, const char *room, lr_store_ready_cb cb, void *ud,
                   char *err, size_t errlen) {
  pstore *s = (pstore *)st;
  if (!s->srv) {
    lr__store_errf(err, errlen, "postgres storage needs the server's event loop");
    return LR_STORE_EIO;
  }
  proom *r = room_get(s, ns, room, true);
  r->forget = false;
  if (r->state == R_LOADED) return 1;
  if (r->lost && r->qhead) { /* a fenced write of the dropped room is still in flight */
    lr__store_errf(err, errlen, "postgres storage: %s/%s is being dropped here; try again", ns,
                   room);
    return LR_STORE_EIO;
  }
  if (r->lost) {
    r->lost = false; /* dropped earlier: take it again if the lease is free */
    r->failed[0] = 0;
  }
  if (!s->ready && !s->connecting && s->conn_err[0]) {
    lr__store_errf(err, errlen, "postgres storage: %s", s->conn_err);
    maybe_drop(s, r);
    return LR_STORE_EIO;
  }
  r->state = R_LOADING;
  work_add(s, r);
  waiter *w = lr_xcalloc(1, sizeof *w);
  w->cb = cb;
  w->ud = ud;
  *r->wtail = w;
  r->wtail = &w->next;
  kick(s);
  return 0;
}

static void p_forget(lr_store *st, const char *ns, const char *room) {
  pstore *s = (pstore *)st;
  proom *r = room_get(s, ns, room, false);
  if (!r) return;
  r->forget = true;
  maybe_drop(s, r);
}

static long p_pending(lr_store *st) {
  return ((pstore *)st)->pending;
}

static int p_progress(lr_store *st, const char *ns, const char *room, uint64_t *accepted,
                      uint64_t *committed, char *err, size_t errlen) {
  proom *r = room_get((pstore *)st, ns, room, false);
  *accepted = r ? r->accepted : 0;
  *committed = r ? r->committed : 0;
  if (!r || !r->failed[0]) return 0;
  lr__store_errf(err, errlen, "postgres storage: %s", r->failed);
  return LR_STORE_EIO;
}

static void p_bind(lr_store *st, lr_server *srv) {
  pstore *s = (pstore *)st;
  s->srv = srv;
  if (srv) {
    if (!s->conn) conn_start(s);
    return;
  }
  /* The engine's timers are about to be freed without firing. */
  s->reconnect_timer = s->kick_timer = s->retry_timer = s->renew_timer = s->deadline_timer = 0;
}

static void p_close(lr_store *st) {
  pstore *s = (pstore *)st;
  if (s->pending) {
    lr_warn("postgres storage: closing with %ld write batch(es) not committed", s->pending);
    for (int b = 0; b < NBUCKETS; b++)
      for (proom *r = s->rooms[b]; r; r = r->next) {
        if (!r->qhead) continue;
        lr_buf keys;
        lr_buf_init(&keys);
        long nk = 0;
        for (pbatch *q = r->qhead; q; q = q->next)
          for (size_t i = 0; i < q->n; i++)
            if (nk++ < 10) lr_buf_printf(&keys, "%s%s", nk > 1 ? ", " : "", q->ops[i].key);
        if (nk > 10) lr_buf_printf(&keys, ", ... %ld more", nk - 10);
        lr_error("storage %s/%s: %ld write batch(es) not in postgres, LOST: %s (%s)", r->ns, r->id,
                 r->nqueued, keys.len ? lr_buf_cstr(&keys) : "-",
                 r->failed[0] ? r->failed : "shutdown before the server answered");
        lr_buf_free(&keys);
      }
  }
  /* The leases of the rooms that left with everything committed: given
   * back without waiting (the server runs what it received before the
   * connection's end), so that another node takes them at once. */
  if (s->node_id)
    for (int b = 0; b < NBUCKETS; b++)
      for (proom *r = s->rooms[b]; r; r = r->next)
        if (r->epoch > 0 && !r->lost && !r->qhead) { /* held, never made into a room */
          prel *l = lr_xcalloc(1, sizeof *l);
          l->ns = lr_xstrndup(r->ns, strlen(r->ns));
          l->id = lr_xstrndup(r->id, strlen(r->id));
          l->epoch = r->epoch;
          l->next = s->rel;
          s->rel = l;
        }
  if (s->rel && s->ready && s->conn && send_release(s) == 0) PQflush(s->conn);
  rel_free(s);
  drop_conn(s);
  for (pjob *j = s->jobs, *n; j; j = n) {
    n = j->next;
    free(j->rooms);
    free(j);
  }
  for (int b = 0; b < NBUCKETS; b++)
    while (s->rooms[b])
      room_free(s, s->rooms[b]);
  lr_store_close(s->cache);
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
  lr_store *cache = lr_store_memory_open(NULL, err, errlen);
  if (!cache) return NULL;
  pstore *s = lr_xcalloc(1, sizeof *s);
  s->base.vt = &pg_vt;
  s->cache = cache;
  s->conninfo = lr_xstrndup(o->conninfo, strlen(o->conninfo));
  s->table = lr_xstrndup(table, strlen(table));
  s->watched_fd = -1;
  s->jtail = &s->jobs;
  s->wtail = &s->work;
  const char *tr = getenv("LUNAROOM_PG_TXN_ROOMS");
  s->txn_rooms = tr ? atol(tr) : 0;
  s->sql_load = sql_fmt("SELECT key, value FROM %s WHERE namespace = $1 AND room_id = $2", table);
  if (o->node_id) {
    const char *fence = "EXISTS (SELECT 1 FROM lunaroom_leases l WHERE l.namespace = $1 AND "
                        "l.room_id = $2 AND l.node_id = $%d AND l.epoch = $%d::bigint AND "
                        "l.expires_at > now())";
    char f5[300], f4[300];
    snprintf(f5, sizeof f5, fence, 5, 6);
    snprintf(f4, sizeof f4, fence, 4, 5);
    char q[1024];
    snprintf(q, sizeof q,
             "INSERT INTO %%s (namespace, room_id, key, value) SELECT $1::text, $2::text, "
             "$3::text, $4::text WHERE %s ON CONFLICT (namespace, room_id, key) DO UPDATE SET "
             "value = EXCLUDED.value",
             f5);
    s->sql_put = sql_fmt(q, table);
    snprintf(q, sizeof q,
             "DELETE FROM %%s WHERE namespace = $1 AND room_id = $2 AND key = $3 AND %s", f4);
    s->sql_del = sql_fmt(q, table);
    snprintf(q, sizeof q,
             "DELETE FROM %%s WHERE namespace = $1 AND room_id = $2 AND substr(key, 1, "
             "length($3)) = $3 AND %s",
             f4);
    s->sql_delp = sql_fmt(q, table);
    s->node_id = lr_xstrndup(o->node_id, strlen(o->node_id));
    s->lease_ms = o->lease_ms > 0 ? o->lease_ms : LR_PG_LEASE_DEFAULT;
    s->renew_ms = o->renew_ms > 0 ? o->renew_ms : s->lease_ms / 4;
  } else {
    s->sql_put =
        sql_fmt("INSERT INTO %s (namespace, room_id, key, value) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (namespace, room_id, key) DO UPDATE SET value = EXCLUDED.value",
                table);
    s->sql_del =
        sql_fmt("DELETE FROM %s WHERE namespace = $1 AND room_id = $2 AND key = $3", table);
    s->sql_delp = sql_fmt("DELETE FROM %s WHERE namespace = $1 AND room_id = $2 AND "
                          "substr(key, 1, length($3)) = $3",
                          table);
  }
  s->sql_create = sql_fmt("CREATE TABLE IF NOT EXISTS %s (namespace TEXT NOT NULL, room_id TEXT "
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

int lr_store_postgres_leases(lr_store *st, long limit, lr_pg_leases_cb cb, void *ud) {
  pstore *s = (pstore *)st;
  if (!s->node_id || !s->ready || !s->conn) return -1;
  char lim[32];
  snprintf(lim, sizeof lim, "%ld", limit > 0 ? limit : 1000);
  const char *v[1] = {lim};
  if (send_q(s,
             "SELECT namespace, room_id, node_id, epoch, GREATEST(0, floor(extract(epoch FROM "
             "expires_at - now()) * 1000))::bigint FROM lunaroom_leases WHERE expires_at > now() "
             "ORDER BY namespace, room_id LIMIT $1::bigint",
             1, v, NULL) != 0 ||
      !PQpipelineSync(s->conn)) {
    conn_fail(s, PQerrorMessage(s->conn));
    return -1;
  }
  pjob *j = lr_xcalloc(1, sizeof *j);
  j->kind = J_LEASES;
  j->leases_cb = cb;
  j->leases_ud = ud;
  lr_buf_init(&j->rows);
  job_push(s, j);
  if (pump_out(s) != 0) conn_fail(s, PQerrorMessage(s->conn)); /* fails the job: cb runs */
  return 0;
}

void lr_store_postgres_drain(lr_store *st) {
  ((pstore *)st)->draining = true;
}

void lr_store_postgres_cluster_stats(lr_store *st, uint64_t *taken, uint64_t *refused,
                                     uint64_t *lost, uint64_t *renewals) {
  pstore *s = (pstore *)st;
  *taken = s->n_taken;
  *refused = s->n_refused;
  *lost = s->n_lost;
  *renewals = s->n_renewals;
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
       (double)s->pending},
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

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
 * Owns: the connection, the SQL, the transactions and which batches each
 * carries, leases. Must not: know the key layout of rooms, call Lua or the
 * engine (it reports through the lr_store_host it is bound with), block on
 * the database.
 */
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "log.h"
#include "net.h"
#include "storage.h"
#include "storage_cache.h"
#include "storage_postgres.h"

#define NBUCKETS 16384
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define MAX_TXN_STATEMENTS 20000 /* one transaction carries at most this many writes */

typedef struct pstore pstore;
typedef struct proom proom;

typedef lr_wb_batch pbatch;

enum { R_NONE = LR_WB_NONE, R_LOADING = LR_WB_LOADING, R_LOADED = LR_WB_LOADED };
enum { J_SCHEMA = 1, J_LOAD, J_FLUSH, J_RENEW, J_RELEASE };

struct proom {
  lr_wb_room
      b; /* first: the cache's room (b.inflight: batches the transaction in flight carries) */
  proom *wnext; /* s->work */
  bool in_work; /* on s->work: a load to send, or batches to write */
  bool load_sent;
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
  char owner[256]; /* J_LOAD, cluster: who holds it when refused */
  uint64_t gen;    /* J_RENEW */
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
  long n_owned; /* rooms whose lease this node holds */
  prel *rel;    /* leases to give back (sent with the next kick, or at close) */
  /* The rooms the next kick looks at (never a walk over every room on the
   * write path): a load asked for, batches queued. */
  proom *work, **wtail;
  lr_wb *wb;                 /* the rooms, their cache and write queues */
  const lr_store_host *host; /* the engine's, while bound */
  void *hud;
  PGconn *conn;
  lr_net_watch *watch;
  int watched_fd;
  bool connecting, ready;
  int64_t backoff;
  uint64_t reconnect_timer, kick_timer, retry_timer;
  pjob *jobs, **jtail; /* sent, each ends with a sync; answered in order */
  bool flushing;       /* a J_FLUSH is among jobs */
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

static proom *room_get(pstore *s, const char *ns, const char *id, bool create) {
  return (proom *)lr_wb_room_get(s->wb, ns, id, create);
}

static void work_add(pstore *s, proom *r) {
  if (r->in_work) return;
  r->in_work = true;
  r->wnext = NULL;
  *s->wtail = r;
  s->wtail = &r->wnext;
}

/* The cache asks before it drops a forgotten room: on the work list. */
static bool room_busy(void *ud, lr_wb_room *b) {
  (void)ud;
  return ((proom *)b)->in_work;
}

/* A forgotten room leaves with everything committed (evicted, or the
 * server stops): give the lease back so that another node can take the
 * room at once. */
static void room_dropped(void *ud, lr_wb_room *b) {
  pstore *s = ud;
  proom *r = (proom *)b;
  if (!s->node_id || r->epoch <= 0 || r->lost) return;
  prel *l = lr_xcalloc(1, sizeof *l);
  l->ns = lr_xstrndup(r->b.ns, strlen(r->b.ns));
  l->id = lr_xstrndup(r->b.id, strlen(r->b.id));
  l->epoch = r->epoch;
  s->n_owned--;
  l->next = s->rel;
  s->rel = l;
  kick(s);
}

static void maybe_drop(pstore *s, proom *r) {
  lr_wb_maybe_drop(s->wb, &r->b);
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

static uint64_t timer_add(pstore *s, int64_t ms, lr_store_timer_cb cb) {
  return s->host ? s->host->timer(s->hud, ms, cb, s) : 0;
}

static void notify(pstore *s, proom *r) {
  if (s->host) s->host->progress(s->hud, r->b.ns, r->b.id);
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
    if (PQntuples(res) == 1) j->epoch = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    return;
  }
  if (s->node_id && j->kind == J_LOAD && idx == 1) { /* the holder after the take */
    if (PQntuples(res) == 1) snprintf(j->owner, sizeof j->owner, "%s", PQgetvalue(res, 0, 0));
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
    for (int i = 0; i < n; i++)
      ops[i] = (lr_store_op){LR_STORE_PUT, PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0),
                             PQgetvalue(res, i, 1), (size_t)PQgetlength(res, i, 1)};
    char err[200];
    int rc = lr_wb_loaded(s->wb, &j->room->b, ops, (size_t)n, err, sizeof err);
    j->room->b.state = R_LOADING; /* loaded for good when the transaction ends (job_done) */
    if (rc) {
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

typedef struct conn_failure {
  pstore *s;
  const char *msg;
} conn_failure;

/* The connection broke: a load not sent yet fails; queued writes wait. */
static void room_conn_failed(void *ud, lr_wb_room *b) {
  conn_failure *f = ud;
  proom *r = (proom *)b;
  if (r->b.state == R_LOADING && !r->load_sent) {
    r->b.state = R_NONE;
    lr_wb_wake(f->s->wb, &r->b, 0, "storage unavailable");
  } else if (r->b.qhead) {
    work_add(f->s, r); /* written once the connection is back */
    if (strcmp(r->b.failed, f->msg) != 0) {
      snprintf(r->b.failed, sizeof r->b.failed, "%s", f->msg);
      notify(f->s, r);
    }
  }
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
  lr_wb_each(s->wb, room_conn_failed, &(conn_failure){s, msg});
  s->backoff = s->backoff ? s->backoff * 2 : BACKOFF_MIN_MS;
  if (s->backoff > BACKOFF_MAX_MS) s->backoff = BACKOFF_MAX_MS;
  if (s->host && !s->reconnect_timer) s->reconnect_timer = timer_add(s, s->backoff, on_reconnect);
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
  if (s->node_id && !s->renew_timer && s->host)
    s->renew_timer = timer_add(s, s->renew_ms, on_renew);
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
  r->b.pin++;
  r->lost = true;
  s->n_lost++;
  long dropped = lr_wb_drop_queued(s->wb, &r->b); /* those in flight are fenced */
  lr_warn("storage %s/%s: the lease (epoch %lld) is lost: %s; %ld write batch(es) dropped, the "
          "room is closed on this node",
          r->b.ns, r->b.id, r->epoch, why, dropped);
  snprintf(r->b.failed, sizeof r->b.failed, "lease lost: %.180s", why);
  r->epoch = 0;
  s->n_owned--;
  lr_wb_unload(s->wb, &r->b);
  if (s->host) s->host->lost(s->hud, r->b.ns, r->b.id, 1012, "room moved to another node");
  r->b.pin--;
  maybe_drop(s, r);
}

/* Every held room is lost (no renewal reached the database in time). */
typedef struct loss {
  pstore *s;
  const char *why;
} loss;

static void room_lost_each(void *ud, lr_wb_room *b) {
  loss *l = ud;
  proom *r = (proom *)b;
  if (r->epoch > 0 && !r->lost) room_lost(l->s, r, l->why);
}

static void all_lost(pstore *s, const char *why) {
  lr_wb_each(s->wb, room_lost_each, &(loss){s, why});
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

/* Three PostgreSQL array literals: namespaces, room ids, epochs. */
typedef struct leases {
  pstore *s;
  uint64_t gen; /* send_renew */
  lr_buf ns, ids, eps;
} leases;

static void leases_init(leases *a, pstore *s) {
  memset(a, 0, sizeof *a);
  a->s = s;
  lr_buf_init(&a->ns);
  lr_buf_init(&a->ids);
  lr_buf_init(&a->eps);
  lr_buf_put(&a->ns, "{", 1);
  lr_buf_put(&a->ids, "{", 1);
  lr_buf_put(&a->eps, "{", 1);
}

static void leases_add(leases *a, const char *ns, const char *id, long long epoch) {
  arr_add(&a->ns, ns);
  arr_add(&a->ids, id);
  lr_buf_printf(&a->eps, "%s%lld", a->eps.len > 1 ? "," : "", epoch);
}

static void leases_end(leases *a) {
  lr_buf_put(&a->ns, "}", 1);
  lr_buf_put(&a->ids, "}", 1);
  lr_buf_put(&a->eps, "}", 1);
}

static void leases_free(leases *a) {
  lr_buf_free(&a->ns);
  lr_buf_free(&a->ids);
  lr_buf_free(&a->eps);
}

/* Give back every lease of s->rel (best effort: a lease that is not given
 * back expires on its own). */
static int send_release(pstore *s) {
  leases a;
  leases_init(&a, s);
  for (prel *l = s->rel; l; l = l->next)
    leases_add(&a, l->ns, l->id, l->epoch);
  leases_end(&a);
  rel_free(s);
  const char *v[4] = {s->node_id, lr_buf_cstr(&a.ns), lr_buf_cstr(&a.ids), lr_buf_cstr(&a.eps)};
  int rc = send_q(s,
                  "UPDATE lunaroom_leases AS l SET expires_at = now() FROM unnest($2::text[], "
                  "$3::text[], $4::bigint[]) AS h(ns, id, ep) WHERE l.namespace = h.ns AND "
                  "l.room_id = h.id AND l.epoch = h.ep AND l.node_id = $1 AND l.expires_at > now()",
                  4, v, NULL);
  leases_free(&a);
  if (rc != 0 || !PQpipelineSync(s->conn)) return -1;
  pjob *j = lr_xcalloc(1, sizeof *j);
  j->kind = J_RELEASE;
  job_push(s, j);
  return 0;
}

/* A held room goes into the renewal, unless the engine never made it. */
static void renew_add(void *ud, lr_wb_room *b) {
  leases *a = ud;
  pstore *s = a->s;
  proom *r = (proom *)b;
  if (r->epoch <= 0 || r->lost) return;
  if (s->host && !r->b.forget && !r->b.qhead && !r->b.waiters && r->b.state == R_LOADED &&
      !s->host->holds(s->hud, r->b.ns, r->b.id)) {
    /* Loaded, but the engine never made the room (its client left while
     * it loaded): not kept (nor its lease) for nobody. */
    r->b.forget = true;
    maybe_drop(s, r);
    return;
  }
  leases_add(a, r->b.ns, r->b.id, r->epoch);
  r->renew_gen = a->gen;
}

static int send_renew(pstore *s) {
  leases a;
  leases_init(&a, s);
  a.gen = ++s->renew_gen;
  lr_wb_each(s->wb, renew_add, &a);
  leases_end(&a);
  char ttl[32];
  snprintf(ttl, sizeof ttl, "%lld", (long long)s->lease_ms);
  const char *v[5] = {s->node_id, ttl, lr_buf_cstr(&a.ns), lr_buf_cstr(&a.ids),
                      lr_buf_cstr(&a.eps)};
  int rc = send_q(s,
                  "UPDATE lunaroom_leases AS l SET expires_at = now() + $2::bigint * interval '1 "
                  "millisecond' FROM unnest($3::text[], $4::text[], $5::bigint[]) AS h(ns, id, ep) "
                  "WHERE l.namespace = h.ns AND l.room_id = h.id AND l.epoch = h.ep AND l.node_id "
                  "= $1 AND l.expires_at > now() RETURNING l.namespace, l.room_id, l.epoch",
                  5, v, NULL);
  leases_free(&a);
  if (rc != 0 || !PQpipelineSync(s->conn)) return -1;
  pjob *j = lr_xcalloc(1, sizeof *j);
  j->kind = J_RENEW;
  j->gen = a.gen;
  j->sent_at = mono_ms();
  job_push(s, j);
  s->renewing = true;
  s->n_renewals++;
  return 0;
}

static void on_deadline(void *ud);

/* (Re)arm the self-drop deadline: renewed_at + lease - one renewal period. */
static void arm_deadline(pstore *s) {
  if (!s->host || !s->renewed_at) return;
  if (s->deadline_timer) s->host->cancel(s->hud, s->deadline_timer);
  int64_t left = s->renewed_at + s->lease_ms - s->renew_ms - mono_ms();
  s->deadline_timer = timer_add(s, left > 0 ? left : 0, on_deadline);
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
  s->renew_timer = timer_add(s, s->renew_ms, on_renew);
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
        arm_deadline(s);
      }
      r->b.failed[0] = 0;
      s->n_taken++;
      lr_info("storage %s/%s: lease taken (epoch %lld)", r->b.ns, r->b.id, r->epoch);
    }
  } else {
    r->b.state = R_NONE;
    if (ok == 0)
      lr_error("storage %s/%s: loading from postgres failed: %s", r->b.ns, r->b.id, j->err);
  }
  lr_wb_wake(s->wb, &r->b, ok, ok == 1 ? NULL : why);
}

/* A held room the renewal carried but did not find is lost. */
static void renewal_check(void *ud, lr_wb_room *b) {
  pjob *j = ((void **)ud)[1];
  proom *r = (proom *)b;
  if (r->epoch > 0 && !r->lost && r->renew_gen == j->gen && r->renewed_gen != j->gen)
    room_lost(((void **)ud)[0], r, "the renewal did not find it");
}

static void renew_done(pstore *s, pjob *j) {
  s->renewing = false;
  if (j->failed) {
    lr_warn("postgres storage: lease renewal failed: %s", j->err);
    return;
  }
  s->renewed_at = j->sent_at;
  arm_deadline(s);
  lr_wb_each(s->wb, renewal_check, (void *[]){s, j});
}

/* Room i of a write transaction that ended (txn_failed: the database
 * refused it, not a lost connection). */
static void flush_room_done(pstore *s, pjob *j, size_t i, bool txn_failed) {
  proom *r = j->rooms[i];
  if (r->lost || (!j->failed && j->lost && j->lost[i])) {
    /* Fenced: nothing of it was written. Its batches go with the room. */
    lr_wb_drop_inflight(s->wb, &r->b);
    if (!r->lost) room_lost(s, r, "the database has another holder or the lease expired");
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
        r->retry_at = mono_ms() + r->backoff;
      }
    }
    r->b.inflight = 0;
    if (r->b.qhead) work_add(s, r); /* failed, or more came meanwhile */
    notify(s, r);
  }
  r->b.pin--;
  maybe_drop(s, r);
}

static void flush_done(pstore *s, pjob *j) {
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
               j->rooms[0]->b.ns, j->rooms[0]->b.id, j->err);
  }
  for (size_t i = 0; i < j->nrooms; i++)
    flush_room_done(s, j, i, txn_failed);
  free(j->rooms);
  free(j->check_at);
  free(j->lost);
  kick(s);
}

static void job_done(pstore *s, pjob *j) {
  if (j->kind == J_SCHEMA && j->failed && s->ready) {
    /* e.g. two nodes creating the tables at the same instant: the next
     * connection tries again (what came after it in the pipeline failed
     * with it and is retried the same way). */
    char why[300];
    snprintf(why, sizeof why, "creating the tables failed: %s", j->err);
    free(j);
    conn_fail(s, why);
    return;
  }
  if (j->kind == J_LOAD) load_done(s, j);
  if (j->kind == J_RELEASE && j->failed)
    lr_warn("postgres storage: giving leases back failed (they expire): %s", j->err);
  if (j->kind == J_RENEW) renew_done(s, j);
  if (j->kind == J_FLUSH) flush_done(s, j);
  free(j);
}

static int send_load(pstore *s, proom *r) {
  const char *v[4] = {r->b.ns, r->b.id, s->node_id, NULL};
  char ttl[32];
  snprintf(ttl, sizeof ttl, "%lld", (long long)s->lease_ms);
  v[3] = ttl;
  /* Cluster: take the lease (one statement: free, expired or ours), see who
   * holds it, then read; one implicit transaction. */
  if (s->node_id &&
      (send_q(s,
              "INSERT INTO lunaroom_leases AS l (namespace, room_id, node_id, epoch, expires_at) "
              "VALUES ($1, $2, $3, 1, now() + $4::bigint * interval '1 millisecond') ON CONFLICT "
              "(namespace, room_id) DO UPDATE SET node_id = EXCLUDED.node_id, epoch = l.epoch + 1, "
              "expires_at = EXCLUDED.expires_at WHERE l.expires_at <= now() OR l.node_id = "
              "EXCLUDED.node_id RETURNING epoch",
              4, v, NULL) != 0 ||
       send_q(s, "SELECT node_id FROM lunaroom_leases WHERE namespace = $1 AND room_id = $2", 2, v,
              NULL) != 0))
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

/* The statements of r's queued batches (after its fence in cluster mode)
 * into the current transaction, while it has room; returns how many
 * batches they carry, or -1 when the connection broke. */
static long send_room(pstore *s, proom *r, size_t *nstmt) {
  long nb = 0;
  char ep[32];
  snprintf(ep, sizeof ep, "%lld", r->epoch);
  if (s->node_id) { /* the fence: the lease row is ours, locked until the commit */
    const char *v[4] = {r->b.ns, r->b.id, s->node_id, ep};
    if (send_q(s,
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
      if (send_q(s, sql, np, v, len) != 0) return -1;
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
  int64_t now = mono_ms(), wait = -1;
  proom *r, *nx;
  for (r = list; r; r = nx) {
    nx = r->wnext;
    r->in_work = false;
    if (!r->b.qhead || r->lost) continue;
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
  if (wait >= 0 && !s->retry_timer && s->host) s->retry_timer = timer_add(s, wait, on_retry);
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
    rooms[k]->b.inflight = 0;
    rooms[k]->b.pin--;
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
    if (r->b.state == R_LOADING && !r->load_sent && send_load(s, r) != 0) {
      conn_fail(s, PQerrorMessage(s->conn));
      return;
    }
    if (r->b.qhead && !r->lost) {
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
  if (s->host && !s->kick_timer && s->ready) s->kick_timer = timer_add(s, 0, on_kick);
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
  proom *r = room_get(s, ns, room, false);
  if (r && r->lost) {
    lr__store_errf(err, errlen, "postgres storage: %s/%s: %s", ns, room, r->b.failed);
    return LR_STORE_EIO;
  }
  if (!r || r->b.state != R_LOADED) return lr_wb_not_loaded(s->wb, ns, room, err, errlen);
  if ((rc = lr_wb_accept(s->wb, &r->b, ops, n, err, errlen)) != 0) return rc;
  work_add(s, r);
  if (!s->ready && !r->b.failed[0] && s->conn_err[0]) {
    /* No connection: the room is failing until it is back. */
    snprintf(r->b.failed, sizeof r->b.failed, "%s", s->conn_err);
  }
  kick(s);
  return 0;
}

static int p_ready(lr_store *st, const char *ns, const char *room, lr_store_ready_cb cb, void *ud,
                   char *err, size_t errlen) {
  pstore *s = (pstore *)st;
  if (!s->host) {
    lr__store_errf(err, errlen, "postgres storage needs the server's event loop");
    return LR_STORE_EIO;
  }
  proom *r = room_get(s, ns, room, true);
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
    maybe_drop(s, r);
    return LR_STORE_EIO;
  }
  r->b.state = R_LOADING;
  work_add(s, r);
  lr_wb_wait(&r->b, cb, ud);
  kick(s);
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

static void p_bind(lr_store *st, const lr_store_host *host, void *ud) {
  pstore *s = (pstore *)st;
  s->host = host;
  s->hud = ud;
  if (host) {
    if (!s->conn) conn_start(s);
    return;
  }
  /* The engine's timers are about to be freed without firing. */
  s->reconnect_timer = s->kick_timer = s->retry_timer = s->renew_timer = s->deadline_timer = 0;
}

/* A room held, never made into a room, with nothing queued: its lease is
 * given back at close. */
static void release_held(void *ud, lr_wb_room *b) {
  pstore *s = ud;
  proom *r = (proom *)b;
  if (r->epoch <= 0 || r->lost || r->b.qhead) return;
  prel *l = lr_xcalloc(1, sizeof *l);
  l->ns = lr_xstrndup(r->b.ns, strlen(r->b.ns));
  l->id = lr_xstrndup(r->b.id, strlen(r->b.id));
  l->epoch = r->epoch;
  l->next = s->rel;
  s->rel = l;
}

static void p_close(lr_store *st) {
  pstore *s = (pstore *)st;
  lr_wb_report_lost(s->wb);
  /* The leases of the rooms that left with everything committed: given
   * back without waiting (the server runs what it received before the
   * connection's end), so that another node takes them at once. */
  if (s->node_id) lr_wb_each(s->wb, release_held, s);
  if (s->rel && s->ready && s->conn && send_release(s) == 0) PQflush(s->conn);
  rel_free(s);
  drop_conn(s);
  for (pjob *j = s->jobs, *n; j; j = n) {
    n = j->next;
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
                   .busy = room_busy,
                   .dropped = room_dropped,
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
  };
  size_t n = s->node_id ? sizeof all / sizeof *all : 5;
  if (n > max) n = max;
  memcpy(out, all, n * sizeof *out);
  return n;
}

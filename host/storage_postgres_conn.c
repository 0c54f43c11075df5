/*
 * storage_postgres_conn.c - the PostgreSQL store's one connection: opened
 * with PQconnectStart/PQconnectPoll, in pipeline mode, non-blocking, its
 * socket watched by the server's loop (its host's watch); statements sent,
 * results read in order and handed to the job they belong to; a broken
 * connection fails what was in flight and is reopened with a backoff.
 *
 * Owns: the PGconn, the socket watch, the job list in flight, reconnects.
 * Must not: decide what a job does with its results beyond reading them
 * (storage_postgres.c, storage_postgres_lease.c), block on the database.
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "storage_postgres_int.h"

/* libpq's messages span lines: one line, without the trailing newline. */
void pg_one_line(char *dst, size_t n, const char *src) {
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

static void want_write(pstore *s, bool on) {
  if (s->watch && s->host) s->host->watch_write(s->hud, s->watch, on);
}

/* Send what libpq buffered; 0, or -1 when the connection broke. */
int pg_pump_out(pstore *s) {
  int rc = PQflush(s->conn);
  if (rc < 0) return -1;
  want_write(s, rc == 1);
  return 0;
}

static void on_result(pstore *s, PGresult *res) {
  pjob *j = s->jobs;
  ExecStatusType st = PQresultStatus(res);
  if (!j) return;
  if (st == PGRES_PIPELINE_SYNC) {
    s->jobs = j->next;
    if (!s->jobs) s->jtail = &s->jobs;
    pg_job_done(s, j);
    return;
  }
  int idx = j->nres++;
  if (st == PGRES_FATAL_ERROR || st == PGRES_PIPELINE_ABORTED || st == PGRES_BAD_RESPONSE) {
    if (!j->failed) {
      j->failed = true;
      const char *m = PQresultErrorMessage(res);
      pg_one_line(j->err, sizeof j->err, m && *m ? m : "statement aborted");
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
                    strtoll(PQgetvalue(res, i, 3), NULL, 10),
                    strtoll(PQgetvalue(res, i, 4), NULL, 10));
    }
    return;
  }
  if (j->kind == J_RENEW) {
    for (int i = 0; i < PQntuples(res); i++) {
      proom *r = pg_room_get(s, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), false);
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
    j->room->b.state = R_LOADING; /* loaded for good when the transaction ends (pg_job_done) */
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
    pg_conn_start(s); /* PQconnectPoll again */
    return;
  }
  if (revents & POLLOUT) {
    if (pg_pump_out(s) != 0) {
      pg_conn_fail(s, PQerrorMessage(s->conn));
      return;
    }
  }
  if (revents & (POLLIN | POLLHUP)) {
    if (!PQconsumeInput(s->conn)) {
      pg_conn_fail(s, PQerrorMessage(s->conn));
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
      pg_conn_fail(s, PQerrorMessage(s->conn));
      return;
    }
    if (s->conn && pg_pump_out(s) != 0) pg_conn_fail(s, PQerrorMessage(s->conn));
  }
}

void pg_unwatch(pstore *s) {
  if (s->watch && s->host) s->host->unwatch(s->hud, s->watch);
  s->watch = NULL;
  s->watched_fd = -1;
}

static void watch_socket(pstore *s) {
  int fd = PQsocket(s->conn);
  if (s->watch && fd == s->watched_fd) return;
  pg_unwatch(s);
  s->watch = fd >= 0 && s->host ? s->host->watch(s->hud, fd, on_fd, s) : NULL;
  s->watched_fd = s->watch ? fd : -1;
}

void pg_drop_conn(pstore *s) {
  pg_unwatch(s);
  if (s->conn) PQfinish(s->conn);
  s->conn = NULL;
  s->connecting = s->ready = false;
}

static void on_reconnect(void *ud) {
  pstore *s = ud;
  s->reconnect_timer = 0;
  pg_conn_start(s);
}

void pg_conn_soon(pstore *s) {
  if (!s->conn && !s->reconnect_timer) s->reconnect_timer = pg_timer_add(s, 0, on_reconnect);
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
    pg_work_add(f->s, r); /* written once the connection is back */
    if (strcmp(r->b.failed, f->msg) != 0) {
      snprintf(r->b.failed, sizeof r->b.failed, "%s", f->msg);
      pg_notify(f->s, r);
    }
  }
}

/* Everything in flight failed; the rooms that wait for a load get a
 * failure, the writes stay queued. Reconnect after the backoff. */
void pg_conn_fail(pstore *s, const char *why) {
  char msg[200];
  pg_one_line(msg, sizeof msg, why && *why ? why : "connection lost");
  if (s->ready || !s->backoff) lr_error("postgres storage: %s (reconnecting)", msg);
  snprintf(s->conn_err, sizeof s->conn_err, "%s", msg);
  pg_drop_conn(s);
  pjob *j = s->jobs;
  s->jobs = NULL;
  s->jtail = &s->jobs;
  while (j) {
    pjob *nx = j->next;
    j->failed = true;
    if (!j->err[0]) snprintf(j->err, sizeof j->err, "%s", msg);
    pg_job_done(s, j);
    j = nx;
  }
  /* Rooms still waiting to be loaded (not sent yet) fail too. */
  lr_wb_each(s->wb, room_conn_failed, &(conn_failure){s, msg});
  s->backoff = s->backoff ? s->backoff * 2 : BACKOFF_MIN_MS;
  if (s->backoff > BACKOFF_MAX_MS) s->backoff = BACKOFF_MAX_MS;
  if (s->host && !s->reconnect_timer)
    s->reconnect_timer = pg_timer_add(s, s->backoff, on_reconnect);
}

void pg_job_push(pstore *s, pjob *j) {
  *s->jtail = j;
  s->jtail = &j->next;
}

/* Send sql with params as one statement of the current pipeline. */
int pg_send_q(pstore *s, const char *sql, int n, const char *const *v, const int *len) {
  static const int fmt[6] = {0, 0, 0, 0, 0, 0};
  s->n_stmt++;
  return PQsendQueryParams(s->conn, sql, n, NULL, v, len, fmt, 0) ? 0 : -1;
}

/* Connected: pipeline mode, the table, then whatever waited. */
static void conn_ready(pstore *s) {
  s->connecting = false;
  if (!PQenterPipelineMode(s->conn) || PQsetnonblocking(s->conn, 1) != 0) {
    pg_conn_fail(s, "cannot enter pipeline mode");
    return;
  }
  pjob *j = lr_xcalloc(1, sizeof *j);
  j->kind = J_SCHEMA;
  if (pg_send_q(s, s->sql_create, 0, NULL, NULL) != 0 ||
      (s->node_id &&
       pg_send_q(
           s,
           "CREATE TABLE IF NOT EXISTS lunaroom_leases (namespace TEXT NOT NULL, room_id TEXT "
           "NOT NULL, node_id TEXT NOT NULL, epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT "
           "NULL, PRIMARY KEY (namespace, room_id))",
           0, NULL, NULL) != 0) ||
      !PQpipelineSync(s->conn)) {
    free(j);
    pg_conn_fail(s, PQerrorMessage(s->conn));
    return;
  }
  pg_job_push(s, j);
  s->ready = true;
  if (s->backoff) lr_info("postgres storage: connected again");
  s->backoff = 0;
  s->conn_err[0] = 0;
  if (s->node_id && !s->renew_timer && s->host)
    s->renew_timer = pg_timer_add(s, s->renew_ms, pg_on_renew);
  if (pg_pump_out(s) != 0) {
    pg_conn_fail(s, PQerrorMessage(s->conn));
    return;
  }
  pg_kick(s);
}

void pg_conn_start(pstore *s) {
  if (!s->conn) {
    s->conn = PQconnectStart(s->conninfo);
    s->connecting = true;
    s->ready = false;
    if (s->conn) PQsetNoticeProcessor(s->conn, no_notices, NULL);
    if (!s->conn || PQstatus(s->conn) == CONNECTION_BAD) {
      pg_conn_fail(s, s->conn ? PQerrorMessage(s->conn) : "out of memory");
      return;
    }
  }
  PostgresPollingStatusType st = PQconnectPoll(s->conn);
  if (st == PGRES_POLLING_FAILED) {
    pg_conn_fail(s, PQerrorMessage(s->conn));
    return;
  }
  watch_socket(s);
  if (!s->watch) {
    pg_conn_fail(s, "no event loop watches the connection");
    return;
  }
  if (st == PGRES_POLLING_OK) {
    want_write(s, false);
    conn_ready(s);
  } else {
    want_write(s, st == PGRES_POLLING_WRITING);
  }
}

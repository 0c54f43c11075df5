/*
 * storage_postgres_int.h - what the three files of the PostgreSQL store
 * share: storage_postgres.c (the vtable, loads, write transactions),
 * storage_postgres_conn.c (the connection and its results),
 * storage_postgres_lease.c (cluster mode: leases, renewals, fencing).
 *
 * Owns: the store's types and the calls between those files.
 * Must not: be included by anything else (storage_postgres.h is the face).
 */
#ifndef LR_STORAGE_POSTGRES_INT_H
#define LR_STORAGE_POSTGRES_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

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
enum { J_SCHEMA = 1, J_LOAD, J_FLUSH, J_RENEW, J_RELEASE, J_LEASES };

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
  int nres;                  /* results seen (statements answered) */
  int *check_at;             /* J_FLUSH, cluster: the result index of each room's lease check */
  size_t ck;                 /* the next of them to come */
  bool *lost;                /* J_FLUSH, cluster: the check found no lease */
  long long epoch;           /* J_LOAD, cluster: the lease taken (0: refused) */
  char owner[256];           /* J_LOAD, cluster: who holds it when refused: "NODE_URL VALID_MS" */
  uint64_t gen;              /* J_RENEW */
  bool from_other;           /* J_LOAD, cluster: the lease was another node's before */
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
  bool draining;        /* takes no lease (lr_store_postgres_drain): rooms go to other nodes */
  long n_owned;         /* rooms whose lease this node holds */
  prel *rel;            /* leases to give back (sent with the next kick, or at close) */
  /* The rooms the next kick looks at (never a walk over every room on the
   * write path): a load asked for, batches queued. */
  proom *work, **wtail;
  lr_wb *wb;                 /* the rooms, their cache and write queues */
  const lr_store_host *host; /* the engine's, while bound */
  void *hud;
  PGconn *conn;
  void *watch; /* the loop's watch of the socket (host->watch) */
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

/* ---- storage_postgres.c ---- */
proom *pg_room_get(pstore *s, const char *ns, const char *id, bool create);
void pg_work_add(pstore *s, proom *r);
bool pg_room_busy(void *ud, lr_wb_room *b);
void pg_maybe_drop(pstore *s, proom *r);
uint64_t pg_timer_add(pstore *s, int64_t ms, lr_store_timer_cb cb);
void pg_notify(pstore *s, proom *r);
int64_t pg_mono_ms(void);
void pg_kick(pstore *s);
void pg_job_done(pstore *s, pjob *j);
/* fmt with every %s replaced by table (at most 4). */
char *pg_sql_fmt(const char *fmt, const char *table);

/* ---- storage_postgres_conn.c ---- */
void pg_one_line(char *dst, size_t n, const char *src);
void pg_conn_start(pstore *s);
/* Everything in flight failed; reconnect after the backoff. */
void pg_conn_fail(pstore *s, const char *why);
void pg_drop_conn(pstore *s);
/* Stop watching the socket (the engine's loop goes away, or it changed). */
void pg_unwatch(pstore *s);
/* Open the connection from a 0 ms timer (the loop's watches exist then). */
void pg_conn_soon(pstore *s);
int pg_pump_out(pstore *s);
int pg_send_q(pstore *s, const char *sql, int n, const char *const *v, const int *len);
void pg_job_push(pstore *s, pjob *j);

/* ---- storage_postgres_lease.c ---- */
void pg_room_dropped(void *ud, lr_wb_room *b);
void pg_release_held(void *ud, lr_wb_room *b);
void pg_rel_free(pstore *s);
void pg_room_lost(pstore *s, proom *r, const char *why);
void pg_all_lost(pstore *s, const char *why);
int pg_send_release(pstore *s);
void pg_on_renew(void *ud);
void pg_arm_deadline(pstore *s);
void pg_renew_done(pstore *s, pjob *j);
/* Cluster mode: node id, lease times and the fenced write statements. */
void pg_lease_sql(pstore *s, const char *table, const lr_pg_opts *o);

#endif

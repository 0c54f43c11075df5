/*
 * storage_postgres_lease.c - cluster mode of the PostgreSQL store
 * (lr_pg_opts.node_id, --cluster): leases in lunaroom_leases, in the
 * database's clock.
 *
 * A load takes the room's lease in its own transaction (storage_postgres.c
 * sends it); one UPDATE per period renews every lease of the node; a room
 * the renewal does not find, or whose write transaction finds no lease (the
 * fence), is lost: its queued batches are dropped and the engine is told
 * (the host's lost function) to close its sockets; without a renewal for
 * lease - period the node drops every room itself; a room that leaves with
 * its writes committed gives its lease back.
 *
 * Owns: the lease statements, renewals, the self-drop deadline, giving
 * leases back, losing rooms, the cluster figures.
 * Must not: write rooms' keys (storage_postgres.c does, fenced).
 */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "storage_postgres_int.h"

/* A forgotten room leaves with everything committed (evicted, or the
 * server stops): give the lease back so that another node can take the
 * room at once. */
void pg_room_dropped(void *ud, lr_wb_room *b) {
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
  pg_kick(s);
}

void pg_rel_free(pstore *s) {
  while (s->rel) {
    prel *l = s->rel;
    s->rel = l->next;
    free(l->ns);
    free(l->id);
    free(l);
  }
}

/* r's lease is gone: nothing more of it is written; its queued batches are
 * dropped (the ones in flight are fenced by the database), and the engine
 * closes its sockets and disposes of it. */
void pg_room_lost(pstore *s, proom *r, const char *why) {
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
  pg_maybe_drop(s, r);
}

/* Every held room is lost (no renewal reached the database in time). */
typedef struct loss {
  pstore *s;
  const char *why;
} loss;

static void room_lost_each(void *ud, lr_wb_room *b) {
  loss *l = ud;
  proom *r = (proom *)b;
  if (r->epoch > 0 && !r->lost) pg_room_lost(l->s, r, l->why);
}

void pg_all_lost(pstore *s, const char *why) {
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
int pg_send_release(pstore *s) {
  leases a;
  leases_init(&a, s);
  for (prel *l = s->rel; l; l = l->next)
    leases_add(&a, l->ns, l->id, l->epoch);
  leases_end(&a);
  pg_rel_free(s);
  const char *v[4] = {s->node_id, lr_buf_cstr(&a.ns), lr_buf_cstr(&a.ids), lr_buf_cstr(&a.eps)};
  int rc =
      pg_send_q(s,
                "UPDATE lunaroom_leases AS l SET expires_at = now() FROM unnest($2::text[], "
                "$3::text[], $4::bigint[]) AS h(ns, id, ep) WHERE l.namespace = h.ns AND "
                "l.room_id = h.id AND l.epoch = h.ep AND l.node_id = $1 AND l.expires_at > now()",
                4, v, NULL);
  leases_free(&a);
  if (rc != 0 || !PQpipelineSync(s->conn)) return -1;
  pjob *j = lr_xcalloc(1, sizeof *j);
  j->kind = J_RELEASE;
  pg_job_push(s, j);
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
    pg_maybe_drop(s, r);
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
  int rc =
      pg_send_q(s,
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
  j->sent_at = pg_mono_ms();
  pg_job_push(s, j);
  s->renewing = true;
  s->n_renewals++;
  return 0;
}

static void on_deadline(void *ud);

/* (Re)arm the self-drop deadline: renewed_at + lease - one renewal period. */
void pg_arm_deadline(pstore *s) {
  if (!s->host || !s->renewed_at) return;
  if (s->deadline_timer) s->host->cancel(s->hud, s->deadline_timer);
  int64_t left = s->renewed_at + s->lease_ms - s->renew_ms - pg_mono_ms();
  s->deadline_timer = pg_timer_add(s, left > 0 ? left : 0, on_deadline);
}

static void on_deadline(void *ud) {
  pstore *s = ud;
  s->deadline_timer = 0;
  int64_t age = pg_mono_ms() - s->renewed_at;
  if (age < s->lease_ms - s->renew_ms) {
    pg_arm_deadline(s);
    return;
  }
  char why[96];
  snprintf(why, sizeof why, "no renewal reached the database for %lld ms", (long long)age);
  pg_all_lost(s, why);
}

void pg_on_renew(void *ud) {
  pstore *s = ud;
  s->renew_timer = pg_timer_add(s, s->renew_ms, pg_on_renew);
  /* Without a renewal for ttl - one period, the lease may be gone already:
   * stop serving before another node can have taken the rooms. */
  int64_t age = pg_mono_ms() - s->renewed_at;
  if (s->renewed_at && age > s->lease_ms - s->renew_ms) {
    char why[96];
    snprintf(why, sizeof why, "no renewal reached the database for %lld ms", (long long)age);
    pg_all_lost(s, why);
  }
  if (!s->ready || !s->conn || s->renewing) return;
  if (send_renew(s) != 0 || pg_pump_out(s) != 0) pg_conn_fail(s, PQerrorMessage(s->conn));
}

/* A held room the renewal carried but did not find is lost. */
static void renewal_check(void *ud, lr_wb_room *b) {
  pjob *j = ((void **)ud)[1];
  proom *r = (proom *)b;
  if (r->epoch > 0 && !r->lost && r->renew_gen == j->gen && r->renewed_gen != j->gen)
    pg_room_lost(((void **)ud)[0], r, "the renewal did not find it");
}

void pg_renew_done(pstore *s, pjob *j) {
  s->renewing = false;
  if (j->failed) {
    lr_warn("postgres storage: lease renewal failed: %s", j->err);
    return;
  }
  s->renewed_at = j->sent_at;
  pg_arm_deadline(s);
  lr_wb_each(s->wb, renewal_check, (void *[]){s, j});
}

/* A room held, never made into a room, with nothing queued: its lease is
 * given back at close. */
void pg_release_held(void *ud, lr_wb_room *b) {
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

int lr_store_postgres_leases(lr_store *st, long limit, lr_pg_leases_cb cb, void *ud) {
  pstore *s = (pstore *)st;
  if (!s->node_id || !s->ready || !s->conn) return -1;
  char lim[32];
  snprintf(lim, sizeof lim, "%ld", limit > 0 ? limit : 1000);
  const char *v[1] = {lim};
  if (pg_send_q(s,
                "SELECT namespace, room_id, node_id, epoch, GREATEST(0, floor(extract(epoch FROM "
                "expires_at - now()) * 1000))::bigint FROM lunaroom_leases WHERE expires_at > "
                "now() ORDER BY namespace, room_id LIMIT $1::bigint",
                1, v, NULL) != 0 ||
      !PQpipelineSync(s->conn)) {
    pg_conn_fail(s, PQerrorMessage(s->conn));
    return -1;
  }
  pjob *j = lr_xcalloc(1, sizeof *j);
  j->kind = J_LEASES;
  j->leases_cb = cb;
  j->leases_ud = ud;
  lr_buf_init(&j->rows);
  pg_job_push(s, j);
  if (pg_pump_out(s) != 0) pg_conn_fail(s, PQerrorMessage(s->conn)); /* fails the job: cb runs */
  return 0;
}

void lr_store_postgres_drain(lr_store *st) {
  ((pstore *)st)->draining = true;
}

void lr_store_postgres_undrain(lr_store *st) {
  ((pstore *)st)->draining = false;
}

void lr_store_postgres_cluster_stats(lr_store *st, uint64_t *taken, uint64_t *refused,
                                     uint64_t *lost, uint64_t *renewals) {
  pstore *s = (pstore *)st;
  *taken = s->n_taken;
  *refused = s->n_refused;
  *lost = s->n_lost;
  *renewals = s->n_renewals;
}

/* The fenced write statements: a write of a room whose lease this node
 * does not hold (any more) changes nothing. */
void pg_lease_sql(pstore *s, const char *table, const lr_pg_opts *o) {
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
  s->sql_put = pg_sql_fmt(q, table);
  snprintf(q, sizeof q, "DELETE FROM %%s WHERE namespace = $1 AND room_id = $2 AND key = $3 AND %s",
           f4);
  s->sql_del = pg_sql_fmt(q, table);
  snprintf(q, sizeof q,
           "DELETE FROM %%s WHERE namespace = $1 AND room_id = $2 AND substr(key, 1, "
           "length($3)) = $3 AND %s",
           f4);
  s->sql_delp = pg_sql_fmt(q, table);
  s->node_id = lr_xstrndup(o->node_id, strlen(o->node_id));
  s->lease_ms = o->lease_ms > 0 ? o->lease_ms : LR_PG_LEASE_DEFAULT;
  s->renew_ms = o->renew_ms > 0 ? o->renew_ms : s->lease_ms / 4;
}

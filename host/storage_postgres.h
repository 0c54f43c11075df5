/*
 * storage_postgres.h - storage on PostgreSQL (storage_postgres.c).
 *
 * Owns: the options of the PostgreSQL backend and its figures.
 * Must not: expose libpq types.
 */
#ifndef LR_STORAGE_POSTGRES_H
#define LR_STORAGE_POSTGRES_H

#include <stdint.h>

#include "storage.h"

typedef struct lr_pg_opts {
  const char *conninfo; /* postgres://... or postgresql://... (libpq URI) */
  const char *table;    /* default "signe_room_storage" */
  /* Cluster mode (node_id set): a room is served only under a lease, a row
   * of lunaroom_leases (namespace, room_id, node_id, epoch, expires_at in
   * the database's clock) taken when the room is loaded, renewed for all
   * rooms of the node in one statement every renew_ms, and every write is
   * fenced by it in the same transaction. A room whose lease is held by
   * another node is refused (ready() callback ok = LR_STORE_READY_ELSEWHERE,
   * err = "NODE_URL VALID_MS": the holder's node id and how long its lease
   * is valid by the database's clock); a room whose lease is lost is dropped
   * (lr_server_store_lost). */
  const char *node_id; /* this node's URL (--node-url) */
  long long lease_ms;  /* default LR_PG_LEASE_DEFAULT */
  long long renew_ms;  /* default lease_ms / 4 */
} lr_pg_opts;
#define LR_PG_LEASE_DEFAULT 4000

/* The connection opens once the store is bound to a server (its event loop
 * watches the socket); a URL libpq cannot parse fails here. */
lr_store *lr_store_postgres_open(const lr_pg_opts *o, char *err, size_t errlen);
/* Transactions sent, statements sent, transactions failed. */
void lr_store_postgres_stats(lr_store *s, uint64_t *txns, uint64_t *stmts, uint64_t *fails);
/* Cluster: take no lease from now on (a drained node: its rooms go to the
 * other nodes; a room nobody holds is refused here). */
void lr_store_postgres_drain(lr_store *s);
/* Cluster: take leases again (after lr_store_postgres_drain). */
void lr_store_postgres_undrain(lr_store *s);
/* Cluster: the valid leases (at most limit, by room), asynchronously: cb
 * gets JSON objects {"room","node","epoch","validMs"} separated by commas
 * (no brackets), or NULL and why (also when the server stops first: cb
 * runs once in every case). Returns -1 (cb not called) when the database
 * is not connected. */
typedef void (*lr_pg_leases_cb)(void *ud, const char *rows, size_t len, const char *err);
int lr_store_postgres_leases(lr_store *s, long limit, lr_pg_leases_cb cb, void *ud);
/* Cluster figures: leases taken, rooms refused (held elsewhere), leases
 * lost, renewal statements sent. */
void lr_store_postgres_cluster_stats(lr_store *s, uint64_t *taken, uint64_t *refused,
                                     uint64_t *lost, uint64_t *renewals);

#endif

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
} lr_pg_opts;

/* The connection opens once the store is bound to a server (its event loop
 * watches the socket); a URL libpq cannot parse fails here. */
lr_store *lr_store_postgres_open(const lr_pg_opts *o, char *err, size_t errlen);
/* Transactions sent, statements sent, transactions failed. */
void lr_store_postgres_stats(lr_store *s, uint64_t *txns, uint64_t *stmts, uint64_t *fails);

#endif

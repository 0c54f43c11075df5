/*
 * storage_bench.c - write throughput of the storage backends through
 * lr_store_apply(): SQLite (WAL, the defaults of lr_store_sqlite_open) with
 * one op per transaction and with 100 ops per transaction (100 users each
 * changing one field per tick: state:players.<id>.x), and the memory backend
 * as a baseline.
 *
 * Usage: storage_bench [seconds per scenario, default 2]
 * Owns: a temporary directory under /tmp, removed at exit.
 * Must not: print anything but the figures.
 */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "storage.h"

#define USERS 100

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(p);
}

/* Apply ticks of `batch` ops each for about `seconds`; prints one line. */
static int run(lr_store *s, const char *label, int batch, double seconds) {
  char keys[USERS][48], vals[USERS][24];
  lr_store_op ops[USERS];
  char err[512];
  for (int u = 0; u < USERS; u++)
    snprintf(keys[u], sizeof keys[u], "state:players.u%07d.x", u);
  long tx = 0, nops = 0;
  double t0 = now(), t = t0;
  for (long tick = 0; t - t0 < seconds; tick++) {
    /* batch 1: one user per transaction, round robin; batch 100: all users. */
    for (int i = 0; i < batch; i++) {
      int u = batch == 1 ? (int)(tick % USERS) : i;
      int n = snprintf(vals[i], sizeof vals[i], "%ld.5", tick);
      ops[i] = (lr_store_op){LR_STORE_PUT, keys[u], strlen(keys[u]), vals[i], (size_t)n};
    }
    int rc = lr_store_apply(s, "main", "bench", ops, (size_t)batch, err, sizeof err);
    if (rc) {
      fprintf(stderr, "storage_bench: %s\n", err);
      return -1;
    }
    tx++;
    nops += batch;
    if ((tx & 63) == 0 || batch > 1) t = now();
  }
  t = now() - t0;
  printf("%-28s ops/s %10.0f  transactions/s %9.0f\n", label, (double)nops / t, (double)tx / t);
  return 0;
}

int main(int argc, char **argv) {
  double seconds = argc > 1 ? atof(argv[1]) : 2.0;
  if (seconds <= 0) seconds = 2.0;
  char dir[] = "/tmp/lr_storage_bench_XXXXXX", path[128], err[512];
  if (!mkdtemp(dir)) {
    perror("storage_bench: mkdtemp");
    return 1;
  }
  snprintf(path, sizeof path, "%s/bench.sqlite", dir);
  int rc = 0;
  lr_sqlite_opts o = {.path = path};
  lr_store *s = lr_store_sqlite_open(&o, err, sizeof err);
  if (!s) {
    fprintf(stderr, "storage_bench: %s\n", err);
    rc = 1;
  } else {
    if (run(s, "sqlite WAL, batch 1", 1, seconds) ||
        run(s, "sqlite WAL, batch 100", USERS, seconds))
      rc = 1;
    lr_store_close(s);
  }
  s = lr_store_memory_open(NULL, err, sizeof err);
  if (!rc && s) {
    if (run(s, "memory, batch 1", 1, seconds) || run(s, "memory, batch 100", USERS, seconds))
      rc = 1;
  }
  lr_store_close(s);
  nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
  return rc;
}

/*
 * test_storage_cache.c - the write-behind cache the Lua and PostgreSQL
 * stores share (storage_cache.c), driven as a backend drives it, without a
 * backend: load, read your writes, prefix deletes, commits in order, a
 * failure that keeps the batches for the retry, forget and drop, LOST.
 *
 * Owns: those tests. Must not: open a real backend.
 */
#include <stdlib.h>
#include <string.h>

#include "../log.h"
#include "../storage_cache.h"
#include "test.h"

typedef struct troom {
  lr_wb_room b;
  bool busy; /* the fake backend still needs it */
} troom;

static int ndropped;

static bool t_busy(void *ud, lr_wb_room *r) {
  (void)ud;
  return ((troom *)r)->busy;
}

static void t_dropped(void *ud, lr_wb_room *r) {
  (void)ud, (void)r;
  ndropped++;
}

static lr_wb *open_cache(void) {
  lr_wb_cfg cfg = {.name = "test storage",
                   .where = "on the test backend",
                   .peer = "the test backend",
                   .room_size = sizeof(troom),
                   .nbuckets = 8,
                   .busy = t_busy,
                   .dropped = t_dropped};
  char err[200];
  ndropped = 0;
  return lr_wb_new(&cfg, err, sizeof err);
}

static lr_store_op put(const char *k, const char *v) {
  return (lr_store_op){LR_STORE_PUT, k, strlen(k), v, strlen(v)};
}

/* A room loaded with entries, as a backend's list answer would give it. */
static troom *loaded(lr_wb *c, const char *id, const lr_store_op *entries, size_t n) {
  troom *r = (troom *)lr_wb_room_get(c, "main", id, true);
  r->b.state = LR_WB_LOADING;
  char err[200];
  if (lr_wb_loaded(c, &r->b, entries, n, err, sizeof err) != 0) return NULL;
  return r;
}

static const char *get(lr_wb *c, troom *r, const char *key, lr_buf *b) {
  char err[200];
  int rc = lr_wb_get(c, &r->b, "main", r->b.id, key, b, err, sizeof err);
  return rc == 0 ? lr_buf_cstr(b) : rc == LR_STORE_NOTFOUND ? "(none)" : "(error)";
}

static int count_cb(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
  (void)k, (void)kl, (void)v, (void)vl;
  ++*(int *)ud;
  return 0;
}

TEST(storage_cache_reads_wait_for_the_load) {
  lr_wb *c = open_cache();
  lr_buf b;
  lr_buf_init(&b);
  char err[200];
  troom *r = (troom *)lr_wb_room_get(c, "main", "a", true);
  ASSERT_EQ_INT(LR_STORE_EBUSY, lr_wb_get(c, &r->b, "main", "a", "k", &b, err, sizeof err));
  ASSERT(strstr(err, "main/a is not loaded"));
  ASSERT_EQ_INT(LR_STORE_EBUSY, lr_wb_get(c, NULL, "main", "b", "k", &b, err, sizeof err));
  lr_store_op e[] = {put("state:count", "41"), put("session:s1", "{\"x\":1}")};
  ASSERT(loaded(c, "a", e, 2) == r);
  ASSERT_EQ_INT(LR_WB_LOADED, r->b.state);
  ASSERT_EQ_STR("41", get(c, r, "state:count", &b));
  ASSERT_EQ_INT(2, lr_wb_count(c, "main", "a"));
  /* invalid entries change nothing and leave the room unloaded */
  lr_store_op bad[] = {put("state:count", "{nope")};
  ASSERT_EQ_INT(LR_STORE_EARG, lr_wb_loaded(c, &r->b, bad, 1, err, sizeof err));
  ASSERT_EQ_INT(LR_WB_NONE, r->b.state);
  r->b.state = LR_WB_LOADED;
  ASSERT_EQ_STR("41", get(c, r, "state:count", &b));
  lr_buf_free(&b);
  lr_wb_free(c);
}

TEST(storage_cache_read_your_writes_and_prefix_delete) {
  lr_wb *c = open_cache();
  lr_buf b;
  lr_buf_init(&b);
  char err[200];
  lr_store_op e[] = {put("state:a", "1"), put("state:a.b", "2"), put("state:c", "3")};
  troom *r = loaded(c, "a", e, 3);
  ASSERT(r);
  lr_store_op w1[] = {put("state:c", "30"), put("state:d", "\"x\"")};
  ASSERT_EQ_INT(0, lr_wb_accept(c, &r->b, w1, 2, err, sizeof err));
  ASSERT_EQ_STR("30", get(c, r, "state:c", &b));
  ASSERT_EQ_STR("\"x\"", get(c, r, "state:d", &b));
  lr_store_op w2[] = {{LR_STORE_DEL_PREFIX, "state:a", 7, NULL, 0}, put("state:a", "5")};
  ASSERT_EQ_INT(0, lr_wb_accept(c, &r->b, w2, 2, err, sizeof err));
  ASSERT_EQ_STR("5", get(c, r, "state:a", &b));
  ASSERT_EQ_STR("(none)", get(c, r, "state:a.b", &b));
  int n = 0;
  ASSERT_EQ_INT(0, lr_wb_list(c, &r->b, "main", "a", "state:", count_cb, &n, err, sizeof err));
  ASSERT_EQ_INT(3, n); /* state:a, state:c, state:d */
  /* the queue holds deep copies, in order */
  ASSERT_EQ_INT(2, r->b.nqueued);
  ASSERT_EQ_INT(2, lr_wb_pending(c));
  ASSERT_EQ_STR("state:c", r->b.qhead->ops[0].key);
  ASSERT_EQ_INT(LR_STORE_DEL_PREFIX, r->b.qhead->next->ops[0].kind);
  ASSERT_EQ_STR("state:a", r->b.qhead->next->ops[0].key);
  uint64_t a = 0, cm = 0;
  ASSERT_EQ_INT(0, lr_wb_progress(c, "main", "a", &a, &cm, err, sizeof err));
  ASSERT_EQ_INT(2, a);
  ASSERT_EQ_INT(0, cm);
  lr_buf_free(&b);
  lr_wb_free(c);
}

TEST(storage_cache_commits_in_order_and_keeps_failed_batches) {
  lr_wb *c = open_cache();
  lr_buf b;
  lr_buf_init(&b);
  char err[200];
  troom *r = loaded(c, "a", NULL, 0);
  lr_store_op w[3][1] = {{put("state:n", "1")}, {put("state:n", "2")}, {put("state:n", "3")}};
  for (int i = 0; i < 3; i++)
    ASSERT_EQ_INT(0, lr_wb_accept(c, &r->b, w[i], 1, err, sizeof err));
  /* the backend takes the first two; its write fails */
  r->b.inflight = 2;
  lr_wb_fail(&r->b, "connection refused");
  r->b.inflight = 0;
  uint64_t a = 0, cm = 0;
  ASSERT_EQ_INT(LR_STORE_EIO, lr_wb_progress(c, "main", "a", &a, &cm, err, sizeof err));
  ASSERT(strstr(err, "connection refused"));
  ASSERT_EQ_INT(3, a);
  ASSERT_EQ_INT(0, cm);
  ASSERT_EQ_INT(3, r->b.nqueued); /* kept for the retry */
  ASSERT_EQ_STR("3", get(c, r, "state:n", &b));
  /* the retry carries all three; committed from the head */
  r->b.inflight = 2;
  lr_wb_commit(c, &r->b);
  ASSERT_EQ_INT(0, lr_wb_progress(c, "main", "a", &a, &cm, err, sizeof err));
  ASSERT_EQ_INT(2, cm);
  ASSERT_EQ_INT(1, r->b.nqueued);
  ASSERT_EQ_STR("3", r->b.qhead->ops[0].val);
  r->b.inflight = 1;
  lr_wb_commit(c, &r->b);
  ASSERT_EQ_INT(0, lr_wb_pending(c));
  ASSERT_EQ_INT(0, lr_wb_progress(c, "main", "a", &a, &cm, err, sizeof err));
  ASSERT_EQ_INT(3, cm);
  ASSERT(r->b.qhead == NULL);
  /* a batch the backend stored at once: committed, not queued */
  ASSERT_EQ_INT(0, lr_wb_apply_committed(c, &r->b, w[0], 1, err, sizeof err));
  ASSERT_EQ_INT(0, lr_wb_progress(c, "main", "a", &a, &cm, err, sizeof err));
  ASSERT_EQ_INT(4, a);
  ASSERT_EQ_INT(4, cm);
  ASSERT_EQ_STR("1", get(c, r, "state:n", &b));
  lr_buf_free(&b);
  lr_wb_free(c);
}

TEST(storage_cache_drops_only_what_is_given_up) {
  lr_wb *c = open_cache();
  char err[200];
  troom *r = loaded(c, "a", NULL, 0);
  lr_store_op w[3][1] = {{put("k1", "1")}, {put("k2", "2")}, {put("k3", "3")}};
  for (int i = 0; i < 3; i++)
    ASSERT_EQ_INT(0, lr_wb_accept(c, &r->b, w[i], 1, err, sizeof err));
  r->b.inflight = 1;
  ASSERT_EQ_INT(2, lr_wb_drop_queued(c, &r->b)); /* the lease is lost: those behind go */
  ASSERT_EQ_INT(1, r->b.nqueued);
  ASSERT_EQ_STR("k1", r->b.qhead->ops[0].key);
  lr_wb_drop_inflight(c, &r->b); /* fenced: never stored */
  ASSERT_EQ_INT(0, r->b.nqueued);
  ASSERT_EQ_INT(0, lr_wb_pending(c));
  uint64_t a = 0, cm = 0;
  lr_wb_progress(c, "main", "a", &a, &cm, err, sizeof err);
  ASSERT_EQ_INT(3, a);
  ASSERT_EQ_INT(0, cm);
  lr_wb_free(c);
}

static int woke, woke_ok;
static void on_ready(void *ud, int ok, const char *why) {
  (void)why;
  woke++;
  woke_ok = ok;
  lr_wb *c = ud;
  lr_wb_forget(c, "main", "a"); /* a waiter may let go of the room at once */
}

TEST(storage_cache_forgets_a_room_once_idle) {
  lr_wb *c = open_cache();
  char err[200];
  troom *r = (troom *)lr_wb_room_get(c, "main", "a", true);
  r->b.state = LR_WB_LOADING;
  lr_wb_wait(&r->b, on_ready, c);
  lr_wb_wait(&r->b, on_ready, c);
  lr_store_op e[] = {put("k", "1")};
  lr_wb_loaded(c, &r->b, e, 1, err, sizeof err);
  woke = 0;
  lr_wb_wake(c, &r->b, 1, NULL); /* both run; r is dropped after them, not during */
  ASSERT_EQ_INT(2, woke);
  ASSERT_EQ_INT(1, woke_ok);
  ASSERT_EQ_INT(1, ndropped);
  ASSERT(lr_wb_room_get(c, "main", "a", false) == NULL);
  ASSERT_EQ_INT(0, lr_wb_count(c, "main", "a"));
  /* with a batch queued, or busy in the backend, it stays */
  r = loaded(c, "b", NULL, 0);
  ASSERT_EQ_INT(0, lr_wb_accept(c, &r->b, e, 1, err, sizeof err));
  lr_wb_forget(c, "main", "b");
  ASSERT(lr_wb_room_get(c, "main", "b", false) == &r->b);
  r->b.inflight = 1;
  lr_wb_commit(c, &r->b);
  r->busy = true;
  lr_wb_maybe_drop(c, &r->b);
  ASSERT(lr_wb_room_get(c, "main", "b", false) == &r->b);
  r->busy = false;
  lr_wb_maybe_drop(c, &r->b);
  ASSERT(lr_wb_room_get(c, "main", "b", false) == NULL);
  ASSERT_EQ_INT(2, ndropped);
  lr_wb_free(c);
}

TEST(storage_cache_many_rooms_and_lost_report) {
  lr_wb *c = open_cache();
  char err[200];
  char id[32];
  for (int i = 0; i < 200; i++) { /* 8 buckets: long chains */
    snprintf(id, sizeof id, "r%d", i);
    troom *r = loaded(c, id, NULL, 0);
    lr_store_op w[] = {put("state:v", "1")};
    ASSERT_EQ_INT(0, lr_wb_accept(c, &r->b, w, 1, err, sizeof err));
  }
  for (int i = 0; i < 200; i++) {
    snprintf(id, sizeof id, "r%d", i);
    troom *r = (troom *)lr_wb_room_get(c, "main", id, false);
    ASSERT(r && strcmp(r->b.id, id) == 0);
    if (i >= 2) {
      r->b.inflight = 1;
      lr_wb_commit(c, &r->b);
    }
  }
  ASSERT_EQ_INT(2, lr_wb_pending(c));
  ASSERT_EQ_INT(200, lr_wb_count(c, "main", NULL));
  lr_wb_report_lost(c); /* logs 2 LOST lines: checked for not crashing (wire tests read them) */
  lr_wb_free(c);
}

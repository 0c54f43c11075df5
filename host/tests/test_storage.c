/*
 * test_storage.c - the storage contract (storage.h), run against both
 * backends, plus what only one backend has (memory snapshots; SQLite files,
 * the reference's schema, pragmas, locking and rollback).
 *
 * Owns: a temporary directory per test under /tmp (removed afterwards).
 * Must not: depend on test order, leave files behind, or use any host module
 * but storage and buf.
 */
#include <dirent.h>
#include <ftw.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "storage.h"
#include "test.h"

/* ---- fixture ---- */

typedef struct fixture {
  char dir[64];   /* fresh temp dir */
  char path[160]; /* dir/store.sqlite or dir/snap.json */
  int sqlite;
  lr_store *s;
  lr_buf out; /* scratch for get() */
  lr_buf acc; /* scratch for list dumps */
  char err[512];
} fixture;

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(p);
}

static lr_store *fx_open(fixture *fx) {
  fx->err[0] = '\0';
  if (fx->sqlite) {
    lr_sqlite_opts o = {.path = fx->path};
    return lr_store_sqlite_open(&o, fx->err, sizeof fx->err);
  }
  return lr_store_memory_open(NULL, fx->err, sizeof fx->err);
}

static void fx_init(fixture *fx, int sqlite) {
  memset(fx, 0, sizeof *fx);
  strcpy(fx->dir, "/tmp/lr_storage_XXXXXX");
  if (!mkdtemp(fx->dir)) {
    perror("mkdtemp");
    abort();
  }
  fx->sqlite = sqlite;
  snprintf(fx->path, sizeof fx->path, "%s/%s", fx->dir, sqlite ? "store.sqlite" : "snap.json");
  lr_buf_init(&fx->out);
  lr_buf_init(&fx->acc);
}

static void fx_fini(fixture *fx) {
  lr_store_close(fx->s);
  lr_buf_free(&fx->out);
  lr_buf_free(&fx->acc);
  nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

typedef void (*body_fn)(fixture *fx, lr_store *s);

static void run_body(int sqlite, body_fn body) {
  fixture fx;
  fx_init(&fx, sqlite);
  fx.s = fx_open(&fx);
  if (!fx.s) {
    fprintf(stderr, "    open failed: %s\n", fx.err);
    lr_test_failed = 1;
  } else {
    body(&fx, fx.s);
  }
  fx_fini(&fx);
}

/* One suite, both backends: BOTH(x) defines storage_memory_x and storage_sqlite_x. */
#define BOTH(name)                                                                                 \
  static void body_##name(fixture *fx, lr_store *s);                                               \
  TEST(storage_memory_##name) {                                                                    \
    run_body(0, body_##name);                                                                      \
  }                                                                                                \
  TEST(storage_sqlite_##name) {                                                                    \
    run_body(1, body_##name);                                                                      \
  }                                                                                                \
  static void body_##name(fixture *fx, lr_store *s)

/* Run a test body with a fixture of one kind (no store opened). */
#define ONE(name, sqlite)                                                                          \
  static void body_##name(fixture *fx);                                                            \
  TEST(name) {                                                                                     \
    fixture fx;                                                                                    \
    fx_init(&fx, sqlite);                                                                          \
    body_##name(&fx);                                                                              \
    fx_fini(&fx);                                                                                  \
  }                                                                                                \
  static void body_##name(fixture *fx)

/* ---- helpers ---- */

static int put(lr_store *s, const char *ns, const char *room, const char *k, const char *v) {
  lr_store_op op = {LR_STORE_PUT, k, strlen(k), v, v ? strlen(v) : 0};
  return lr_store_apply(s, ns, room, &op, 1, NULL, 0);
}
static int del(lr_store *s, const char *ns, const char *room, const char *k) {
  lr_store_op op = {LR_STORE_DEL, k, strlen(k), NULL, 0};
  return lr_store_apply(s, ns, room, &op, 1, NULL, 0);
}
static int delp(lr_store *s, const char *ns, const char *room, const char *k) {
  lr_store_op op = {LR_STORE_DEL_PREFIX, k, strlen(k), NULL, 0};
  return lr_store_apply(s, ns, room, &op, 1, NULL, 0);
}
/* The stored value, or "<missing>" / "<error>". Valid until the next call. */
static const char *get(fixture *fx, const char *ns, const char *room, const char *k) {
  int rc = lr_store_get(fx->s, ns, room, k, &fx->out, fx->err, sizeof fx->err);
  if (rc == LR_STORE_NOTFOUND) return "<missing>";
  if (rc) return "<error>";
  return lr_buf_cstr(&fx->out);
}

typedef struct collect {
  lr_buf *acc;
  int limit; /* stop after this many (0 = all) */
  int n;
} collect;

static int collect_cb(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
  collect *c = ud;
  lr_buf_put(c->acc, k, kl);
  lr_buf_putc(c->acc, '=');
  lr_buf_put(c->acc, v, vl);
  lr_buf_putc(c->acc, ';');
  return c->limit && ++c->n >= c->limit;
}

/* "k=v;k=v;" for the keys under prefix, in list order. */
static const char *dump(fixture *fx, lr_store *s, const char *ns, const char *room,
                        const char *prefix, int limit) {
  lr_buf_reset(&fx->acc);
  collect c = {&fx->acc, limit, 0};
  if (lr_store_list(s, ns, room, prefix, collect_cb, &c, fx->err, sizeof fx->err)) return "<error>";
  return lr_buf_cstr(&fx->acc);
}

static int write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t w = fwrite(data, 1, n, f);
  return (fclose(f) == 0 && w == n) ? 0 : -1;
}

static char *read_all(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  lr_buf b;
  lr_buf_init(&b);
  char chunk[4096];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    lr_buf_put(&b, chunk, n);
  fclose(f);
  lr_buf_cstr(&b);
  return b.data;
}

/* ---- the shared suite ---- */

BOTH(get_missing_is_notfound) {
  lr_buf_puts(&fx->out, "stale");
  ASSERT_EQ_INT(lr_store_get(s, "main", "demo", "state:count", &fx->out, NULL, 0),
                LR_STORE_NOTFOUND);
  ASSERT_EQ_INT(fx->out.len, 0);
  ASSERT_EQ_INT(put(s, "main", "demo", "state:other", "1"), 0);
  ASSERT_EQ_INT(lr_store_get(s, "main", "demo", "state:count", &fx->out, NULL, 0),
                LR_STORE_NOTFOUND);
  ASSERT_EQ_INT(lr_store_get(s, "main", "nope", "state:other", &fx->out, NULL, 0),
                LR_STORE_NOTFOUND);
}

BOTH(put_get_overwrite_delete) {
  ASSERT_EQ_INT(put(s, "main", "demo", "state:count", "1"), 0);
  ASSERT_EQ_STR(get(fx, "main", "demo", "state:count"), "1");
  const char *sess = "{\"publicId\":\"HY9rlXdz\",\"created\":1,\"connected\":true}";
  ASSERT_EQ_INT(put(s, "main", "demo", "session:s1", sess), 0);
  ASSERT_EQ_STR(get(fx, "main", "demo", "session:s1"), sess);
  ASSERT_EQ_INT(put(s, "main", "demo", "state:count", "2"), 0);
  ASSERT_EQ_STR(get(fx, "main", "demo", "state:count"), "2");
  ASSERT_EQ_INT(lr_store_count(s, "main", "demo"), 2);
  /* Non-ASCII keys and values come back byte for byte. */
  ASSERT_EQ_INT(put(s, "main", "demo", "state:caf\xc3\xa9", "\"\xe2\x82\xac \\u00e9\""), 0);
  ASSERT_EQ_STR(get(fx, "main", "demo", "state:caf\xc3\xa9"), "\"\xe2\x82\xac \\u00e9\"");
  ASSERT_EQ_INT(del(s, "main", "demo", "state:count"), 0);
  ASSERT_EQ_STR(get(fx, "main", "demo", "state:count"), "<missing>");
  ASSERT_EQ_INT(del(s, "main", "demo", "state:count"), 0); /* deleting a missing key is fine */
  ASSERT_EQ_INT(lr_store_count(s, "main", "demo"), 2);
  ASSERT_EQ_STR(get(fx, "main", "demo", "session:s1"), sess);
}

BOTH(del_prefix_only_that_prefix_and_room) {
  const char *keys[] = {"state:a", "state:a.b", "state:ab", "state:b", "state", "session:x"};
  for (size_t i = 0; i < 6; i++) {
    ASSERT_EQ_INT(put(s, "main", "A", keys[i], "1"), 0);
    ASSERT_EQ_INT(put(s, "main", "B", keys[i], "2"), 0);
    ASSERT_EQ_INT(put(s, "other", "A", keys[i], "3"), 0);
  }
  ASSERT_EQ_INT(delp(s, "main", "A", "state:a"), 0);
  ASSERT_EQ_STR(dump(fx, s, "main", "A", "", 0), "session:x=1;state=1;state:b=1;");
  ASSERT_EQ_INT(lr_store_count(s, "main", "B"), 6);
  ASSERT_EQ_INT(lr_store_count(s, "other", "A"), 6);
  ASSERT_EQ_INT(delp(s, "main", "A", "nothing:"), 0);
  ASSERT_EQ_INT(lr_store_count(s, "main", "A"), 3);
  /* The empty prefix clears the room, and only the room. */
  ASSERT_EQ_INT(delp(s, "main", "A", ""), 0);
  ASSERT_EQ_INT(lr_store_count(s, "main", "A"), 0);
  ASSERT_EQ_STR(dump(fx, s, "main", "A", "", 0), "");
  ASSERT_EQ_INT(lr_store_count(s, "main", "B"), 6);
  ASSERT_EQ_INT(lr_store_count(s, "other", "A"), 6);
}

BOTH(list_is_bytewise_with_prefix) {
  /* Inserted out of order; includes the empty key, a 0x7F byte, 2- and
   * 4-byte UTF-8 (the reference's p||U+FFFF bound would miss "a😀"). */
  const char *keys[] = {"b", "a\xf0\x9f\x98\x80", "a", "ab", "A", "a\xc3\xa9", "a.b", "", "a\x7f"};
  for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
    ASSERT_EQ_INT(put(s, "main", "demo", keys[i], "0"), 0);
  ASSERT_EQ_STR(dump(fx, s, "main", "demo", "", 0),
                "=0;A=0;a=0;a.b=0;ab=0;a\x7f=0;a\xc3\xa9=0;a\xf0\x9f\x98\x80=0;b=0;");
  ASSERT_EQ_STR(dump(fx, s, "main", "demo", NULL, 0),
                "=0;A=0;a=0;a.b=0;ab=0;a\x7f=0;a\xc3\xa9=0;a\xf0\x9f\x98\x80=0;b=0;");
  ASSERT_EQ_STR(dump(fx, s, "main", "demo", "a", 0),
                "a=0;a.b=0;ab=0;a\x7f=0;a\xc3\xa9=0;a\xf0\x9f\x98\x80=0;");
  ASSERT_EQ_STR(dump(fx, s, "main", "demo", "a\xc3", 0), "a\xc3\xa9=0;"); /* partial char */
  ASSERT_EQ_STR(dump(fx, s, "main", "demo", "a\xf0\x9f", 0), "a\xf0\x9f\x98\x80=0;");
  ASSERT_EQ_STR(dump(fx, s, "main", "demo", "ab", 0), "ab=0;");
  ASSERT_EQ_STR(dump(fx, s, "main", "demo", "zz", 0), "");
  ASSERT_EQ_STR(dump(fx, s, "main", "demo", "a", 2), "a=0;a.b=0;"); /* callback stops early */
  ASSERT_EQ_STR(dump(fx, s, "main", "other", "", 0), "");
  /* state: / state; / state9 around the ':' boundary */
  ASSERT_EQ_INT(put(s, "main", "r", "state;", "1"), 0);
  ASSERT_EQ_INT(put(s, "main", "r", "state:", "2"), 0);
  ASSERT_EQ_INT(put(s, "main", "r", "state9", "3"), 0);
  ASSERT_EQ_INT(put(s, "main", "r", "state:x", "4"), 0);
  ASSERT_EQ_STR(dump(fx, s, "main", "r", "state:", 0), "state:=2;state:x=4;");
}

BOTH(rooms_and_namespaces_isolated) {
  ASSERT_EQ_INT(put(s, "main", "r1", "k", "1"), 0);
  ASSERT_EQ_INT(put(s, "main", "r2", "k", "2"), 0);
  ASSERT_EQ_INT(put(s, "other", "r1", "k", "3"), 0);
  /* "a:b" + "c" must not collide with "a" + "b:c" */
  ASSERT_EQ_INT(put(s, "a:b", "c", "k", "4"), 0);
  ASSERT_EQ_INT(put(s, "a", "b:c", "k", "5"), 0);
  ASSERT_EQ_STR(get(fx, "main", "r1", "k"), "1");
  ASSERT_EQ_STR(get(fx, "main", "r2", "k"), "2");
  ASSERT_EQ_STR(get(fx, "other", "r1", "k"), "3");
  ASSERT_EQ_STR(get(fx, "a:b", "c", "k"), "4");
  ASSERT_EQ_STR(get(fx, "a", "b:c", "k"), "5");
  ASSERT_EQ_STR(dump(fx, s, "main", "r1", "", 0), "k=1;");
  ASSERT_EQ_INT(del(s, "main", "r1", "k"), 0);
  ASSERT_EQ_STR(get(fx, "main", "r2", "k"), "2");
  ASSERT_EQ_STR(get(fx, "other", "r1", "k"), "3");
}

BOTH(count_per_room_namespace_and_all) {
  (void)fx;
  ASSERT_EQ_INT(lr_store_count(s, NULL, NULL), 0);
  ASSERT_EQ_INT(put(s, "main", "r1", "a", "1"), 0);
  ASSERT_EQ_INT(put(s, "main", "r1", "b", "1"), 0);
  ASSERT_EQ_INT(put(s, "main", "r2", "a", "1"), 0);
  ASSERT_EQ_INT(put(s, "world", "w", "a", "1"), 0);
  ASSERT_EQ_INT(lr_store_count(s, "main", "r1"), 2);
  ASSERT_EQ_INT(lr_store_count(s, "main", "r2"), 1);
  ASSERT_EQ_INT(lr_store_count(s, "main", "r3"), 0);
  ASSERT_EQ_INT(lr_store_count(s, "main", NULL), 3);
  ASSERT_EQ_INT(lr_store_count(s, "world", NULL), 1);
  ASSERT_EQ_INT(lr_store_count(s, NULL, NULL), 4);
}

BOTH(apply_is_all_or_nothing) {
  ASSERT_EQ_INT(put(s, "main", "demo", "keep", "1"), 0);
  lr_store_op ops[] = {
      {LR_STORE_PUT, "x", 1, "1", 1},
      {LR_STORE_DEL, "keep", 4, NULL, 0},
      {LR_STORE_PUT, "y", 1, NULL, 0}, /* refused */
  };
  char err[256] = "";
  ASSERT_EQ_INT(lr_store_apply(s, "main", "demo", ops, 3, err, sizeof err), LR_STORE_EARG);
  ASSERT(strstr(err, "op 2") && strstr(err, "NULL"));
  ASSERT_EQ_STR(get(fx, "main", "demo", "x"), "<missing>");
  ASSERT_EQ_STR(get(fx, "main", "demo", "keep"), "1");
  /* Invalid JSON, bad kind, bad key: refused, nothing written. */
  ops[2] = (lr_store_op){LR_STORE_PUT, "y", 1, "{bad", 4};
  ASSERT_EQ_INT(lr_store_apply(s, "main", "demo", ops, 3, err, sizeof err), LR_STORE_EARG);
  ASSERT(strstr(err, "not valid JSON"));
  ops[2] = (lr_store_op){(lr_store_op_kind)9, "y", 1, NULL, 0};
  ASSERT_EQ_INT(lr_store_apply(s, "main", "demo", ops, 3, err, sizeof err), LR_STORE_EARG);
  ops[2] = (lr_store_op){LR_STORE_DEL, "\xff", 1, NULL, 0};
  ASSERT_EQ_INT(lr_store_apply(s, "main", "demo", ops, 3, err, sizeof err), LR_STORE_EARG);
  ops[2] = (lr_store_op){LR_STORE_DEL, "a\0b", 3, NULL, 0};
  ASSERT_EQ_INT(lr_store_apply(s, "main", "demo", ops, 3, err, sizeof err), LR_STORE_EARG);
  ASSERT_EQ_INT(lr_store_apply(s, "main", NULL, ops, 1, err, sizeof err), LR_STORE_EARG);
  ASSERT_EQ_INT(lr_store_apply(s, "main", "\xc3", ops, 1, err, sizeof err), LR_STORE_EARG);
  ASSERT_EQ_STR(get(fx, "main", "demo", "x"), "<missing>");
  ASSERT_EQ_STR(get(fx, "main", "demo", "keep"), "1");
  ASSERT_EQ_INT(lr_store_count(s, NULL, NULL), 1);
  /* A good batch applies in order. */
  lr_store_op seq[] = {
      {LR_STORE_PUT, "a", 1, "1", 1},         {LR_STORE_PUT, "a.b", 3, "2", 1},
      {LR_STORE_DEL_PREFIX, "a", 1, NULL, 0}, {LR_STORE_PUT, "a", 1, "3", 1},
      {LR_STORE_DEL, "keep", 4, NULL, 0},
  };
  ASSERT_EQ_INT(lr_store_apply(s, "main", "demo", seq, 5, err, sizeof err), 0);
  ASSERT_EQ_STR(dump(fx, s, "main", "demo", "", 0), "a=3;");
  ASSERT_EQ_INT(lr_store_apply(s, "main", "demo", NULL, 0, err, sizeof err), 0);
}

BOTH(put_values_must_be_json) {
  const char *good[] = {"null",
                        "true",
                        "false",
                        "0",
                        "-0.5e+3",
                        "1E9",
                        " 1 ",
                        "\"\"",
                        "\"s\\u00e9\\n\\\"\"",
                        "[]",
                        "{}",
                        "[1,[2,{\"a\":[null]}]]",
                        "{\"a\":{\"b\":\"\xf0\x9f\x98\x80\"},\"c\":[]}",
                        "\"\\ud800\""};
  for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
    if (put(s, "main", "demo", "k", good[i]) != 0) LR_TEST_FAIL("refused %s", good[i]);
    ASSERT_EQ_STR(get(fx, "main", "demo", "k"), good[i]);
  }
  const char *bad[] = {"",          " ",        "01",         "1.",  "-",       ".5",
                       "[1,]",      "{\"a\"}",  "tru",        "nul", "\"\\x\"", "1 2",
                       "\"a\x01\"", "\"\xff\"", "{\"a\":1,}", "[",   "{",       "\"abc",
                       "\"\\u12\"", "{1:2}",    "'a'",        "NaN", "[1]]"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    if (put(s, "main", "demo", "k", bad[i]) != LR_STORE_EARG) LR_TEST_FAIL("accepted '%s'", bad[i]);
  /* Deep nesting is fine (no recursion limit in the scanner). */
  lr_buf deep;
  lr_buf_init(&deep);
  for (int i = 0; i < 1000; i++)
    lr_buf_putc(&deep, '[');
  for (int i = 0; i < 1000; i++)
    lr_buf_putc(&deep, ']');
  int rc = put(s, "main", "demo", "deep", lr_buf_cstr(&deep));
  lr_buf_free(&deep);
  ASSERT_EQ_INT(rc, 0);
}

typedef struct reenter {
  fixture *fx;
  lr_store *s;
  int apply_rc, inner_ok, n;
} reenter;

static int reenter_cb(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
  (void)k, (void)kl, (void)v, (void)vl;
  reenter *r = ud;
  r->n++;
  r->apply_rc = put(r->s, "main", "demo", "z", "1");
  lr_buf inner;
  lr_buf_init(&inner);
  collect c = {&inner, 0, 0};
  int rc = lr_store_list(r->s, "main", "demo", "b", collect_cb, &c, NULL, 0);
  if (rc == 0 && strcmp(lr_buf_cstr(&inner), "b=2;") == 0) r->inner_ok++;
  lr_buf_free(&inner);
  lr_buf out;
  lr_buf_init(&out);
  if (lr_store_get(r->s, "main", "demo", "a", &out, NULL, 0) == 0) r->inner_ok++;
  lr_buf_free(&out);
  return 0;
}

BOTH(list_callback_may_read_but_not_write) {
  ASSERT_EQ_INT(put(s, "main", "demo", "a", "1"), 0);
  ASSERT_EQ_INT(put(s, "main", "demo", "b", "2"), 0);
  reenter r = {fx, s, 0, 0, 0};
  ASSERT_EQ_INT(lr_store_list(s, "main", "demo", "", reenter_cb, &r, NULL, 0), 0);
  ASSERT_EQ_INT(r.n, 2);
  ASSERT_EQ_INT(r.apply_rc, LR_STORE_EARG);
  ASSERT_EQ_INT(r.inner_ok, 4);
  ASSERT_EQ_STR(get(fx, "main", "demo", "z"), "<missing>");
  ASSERT_EQ_INT(put(s, "main", "demo", "z", "1"), 0); /* fine again afterwards */
}

BOTH(churn_keeps_count_bounded) {
  char key[32], val[32];
  for (int i = 0; i < 10000; i++) {
    snprintf(key, sizeof key, "state:players.p%d.x", i);
    snprintf(val, sizeof val, "%d", i);
    ASSERT_EQ_INT(put(s, "main", "demo", key, val), 0);
    if (i >= 3) {
      snprintf(key, sizeof key, "state:players.p%d.x", i - 3);
      ASSERT_EQ_INT(del(s, "main", "demo", key), 0);
    }
    if (i % 1000 == 999) ASSERT(lr_store_count(s, "main", "demo") <= 3);
  }
  ASSERT_EQ_INT(lr_store_count(s, NULL, NULL), 3);
  ASSERT_EQ_STR(
      dump(fx, s, "main", "demo", "state:players.", 0),
      "state:players.p9997.x=9997;state:players.p9998.x=9998;state:players.p9999.x=9999;");
}

/* A large room stays ordered (exercises AVL rebalancing / the SQLite index). */
BOTH(many_keys_ordered) {
  char key[32];
  lr_store_op ops[500];
  char keys[500][32];
  for (int batch = 0; batch < 10; batch++) {
    for (int i = 0; i < 500; i++) {
      int n = (batch * 500 + i) * 7919 % 5000; /* a permutation of 0..4999 */
      snprintf(keys[i], sizeof keys[i], "k%05d", n);
      ops[i] = (lr_store_op){LR_STORE_PUT, keys[i], strlen(keys[i]), "1", 1};
    }
    ASSERT_EQ_INT(lr_store_apply(s, "main", "big", ops, 500, NULL, 0), 0);
  }
  ASSERT_EQ_INT(lr_store_count(s, "main", "big"), 5000);
  for (int i = 0; i < 5000; i += 2) { /* delete evens */
    snprintf(key, sizeof key, "k%05d", i);
    ASSERT_EQ_INT(del(s, "main", "big", key), 0);
  }
  ASSERT_EQ_INT(lr_store_count(s, "main", "big"), 2500);
  ASSERT_EQ_STR(dump(fx, s, "main", "big", "k0000", 0),
                "k00001=1;k00003=1;k00005=1;k00007=1;k00009=1;");
  ASSERT_EQ_INT(delp(s, "main", "big", "k00"), 0);
  ASSERT_EQ_INT(lr_store_count(s, "main", "big"), 2000);
  ASSERT_EQ_STR(dump(fx, s, "main", "big", "", 3), "k01001=1;k01003=1;k01005=1;");
}

/* Overwriting keys anywhere in a big room (inner nodes and leaves) with
 * values that grow and shrink keeps every key, its value and the order. */
BOTH(overwrite_resizes_values_in_a_big_room) {
  char key[32], val[64];
  for (int i = 0; i < 300; i++) {
    snprintf(key, sizeof key, "k%03d", i * 7 % 300);
    ASSERT_EQ_INT(put(s, "main", "ow", key, "1"), 0);
  }
  for (int round = 0; round < 3; round++)
    for (int i = 0; i < 300; i++) {
      snprintf(key, sizeof key, "k%03d", i);
      snprintf(val, sizeof val, "\"%.*s\"", (i + round * 17) % 40,
               "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
      ASSERT_EQ_INT(put(s, "main", "ow", key, val), 0);
    }
  ASSERT_EQ_INT(lr_store_count(s, "main", "ow"), 300);
  for (int i = 0; i < 300; i++) {
    snprintf(key, sizeof key, "k%03d", i);
    snprintf(val, sizeof val, "\"%.*s\"", (i + 34) % 40,
             "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    ASSERT_EQ_STR(get(fx, "main", "ow", key), val);
  }
  lr_buf want;
  lr_buf_init(&want);
  for (int i = 290; i < 300; i++) /* the last round's values, in key order */
    lr_buf_printf(&want, "k%d=\"%.*s\";", i, (i + 34) % 40,
                  "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
  ASSERT_EQ_STR(dump(fx, s, "main", "ow", "k29", 0), lr_buf_cstr(&want));
  lr_buf_free(&want);
}

/* ---- spec ---- */

ONE(storage_open_spec, 0) {
  char spec[256], err[512] = "";
  lr_store *s = lr_store_open_spec("memory", err, sizeof err);
  ASSERT(s);
  ASSERT_EQ_STR(s->vt->name, "memory");
  lr_store_close(s);
  snprintf(spec, sizeof spec, "memory:%s/snap/s.json", fx->dir);
  s = lr_store_open_spec(spec, err, sizeof err);
  ASSERT(s);
  ASSERT_EQ_STR(s->vt->name, "memory");
  ASSERT_EQ_INT(put(s, "main", "demo", "k", "1"), 0);
  ASSERT_EQ_INT(lr_store_memory_save(s, NULL, err, sizeof err), 0); /* saves to its own path */
  lr_store_close(s);
  snprintf(spec, sizeof spec, "sqlite:%s/db/x.sqlite", fx->dir);
  s = lr_store_open_spec(spec, err, sizeof err);
  ASSERT(s);
  ASSERT_EQ_STR(s->vt->name, "sqlite");
  lr_store_close(s);
  ASSERT(!lr_store_open_spec("redis://localhost", err, sizeof err));
  ASSERT(strstr(err, "unknown storage spec 'redis://localhost'"));
  ASSERT(!lr_store_open_spec("sqlite:", err, sizeof err));
  ASSERT(strstr(err, "'sqlite:'"));
  ASSERT(!lr_store_open_spec("", err, sizeof err));
  ASSERT(!lr_store_open_spec("Memory", err, sizeof err));
  /* busy_timeout and max_page_count are whole numbers (atoi took "5s" as 5) */
  snprintf(spec, sizeof spec, "sqlite:%s/db/y.sqlite?busy_timeout=5s", fx->dir);
  ASSERT(!lr_store_open_spec(spec, err, sizeof err));
  ASSERT(strstr(err, "busy_timeout=5s is not a whole number"));
  snprintf(spec, sizeof spec, "sqlite:%s/db/y.sqlite?busy_timeout=5000", fx->dir);
  s = lr_store_open_spec(spec, err, sizeof err); /* lowered to 50 ms, with a log line */
  ASSERT(s);
  lr_store_close(s);
  snprintf(spec, sizeof spec, "sqlite:%s/db/y.sqlite?busy_timeout=30&max_page_count=64", fx->dir);
  s = lr_store_open_spec(spec, err, sizeof err);
  ASSERT(s);
  lr_store_close(s);
  ASSERT(!lr_store_open_spec(NULL, NULL, 0));
  /* lua:FILE is the same parser's, and needs the Lua state it runs in */
  ASSERT(!lr_store_open_spec("lua:backend.lua", err, sizeof err));
  ASSERT(strstr(err, "'lua:backend.lua' needs a Lua state"));
  s = lr_store_open_spec_L(NULL, "memory", err, sizeof err);
  ASSERT(s);
  lr_store_close(s);
}

/* ---- memory snapshots ---- */

ONE(storage_memory_snapshot_exact_format, 0) {
  char err[512] = "";
  fx->s = lr_store_memory_open(fx->path, err, sizeof err); /* missing file: empty store */
  ASSERT(fx->s);
  ASSERT_EQ_INT(lr_store_count(fx->s, NULL, NULL), 0);
  ASSERT_EQ_INT(put(fx->s, "main", "demo", "state:count", "1"), 0);
  ASSERT_EQ_INT(put(fx->s, "main", "demo", "session:s1", "{\"publicId\":\"HY9rlXdz\"}"), 0);
  ASSERT_EQ_INT(put(fx->s, "my ns", "r:1/\xc3\xa9", "k\"\\\n\x01", "[1, 2.50]"), 0);
  ASSERT_EQ_INT(put(fx->s, "main", "gone", "k", "1"), 0);
  ASSERT_EQ_INT(del(fx->s, "main", "gone", "k"), 0); /* empty rooms are omitted */
  ASSERT_EQ_INT(lr_store_memory_save(fx->s, NULL, err, sizeof err), 0);
  char *text = read_all(fx->path);
  ASSERT_EQ_STR(text, "{\"main:demo\":[[\"session:s1\",{\"publicId\":\"HY9rlXdz\"}],"
                      "[\"state:count\",1]],"
                      "\"my%20ns:r%3A1%2F%C3%A9\":[[\"k\\\"\\\\\\n\\u0001\",[1, 2.50]]]}");
  free(text);
  /* No temp file left next to it. */
  int n = 0;
  DIR *d = opendir(fx->dir);
  for (struct dirent *e; d && (e = readdir(d));)
    if (e->d_name[0] != '.') n++;
  if (d) closedir(d);
  ASSERT_EQ_INT(n, 1);
}

ONE(storage_memory_snapshot_roundtrip, 0) {
  char err[512] = "";
  fx->s = lr_store_memory_open(NULL, err, sizeof err);
  ASSERT(fx->s);
  const char *names[][2] = {
      {"main", "demo"}, {"my ns", "r:1"}, {"a%b", "\xe2\x82\xac!*'()~"}, {"", ""}};
  const char *keys[] = {"state:.", "k\"\\\n\t\x1f", "caf\xc3\xa9", "", "\xf0\x9f\x98\x80"};
  const char *vals[] = {"{\"users\":{\"a\":{\"hp\":5}},\"m\":{\"b\":2}}", "\"\\u2028\"",
                        "0.30000000000000004", "9007199254740993", "[ 1 ,\n 2 ]"};
  for (size_t r = 0; r < 4; r++)
    for (size_t k = 0; k < 5; k++)
      ASSERT_EQ_INT(put(fx->s, names[r][0], names[r][1], keys[k], vals[(k + r) % 5]), 0);
  char path2[200];
  snprintf(path2, sizeof path2, "%s/deeper/dir/snap2.json", fx->dir);
  ASSERT_EQ_INT(lr_store_memory_save(fx->s, path2, err, sizeof err), 0);
  lr_store *t = lr_store_memory_open(path2, err, sizeof err);
  if (!t) LR_TEST_FAIL("reopen: %s", err);
  ASSERT_EQ_INT(lr_store_count(t, NULL, NULL), 20);
  for (size_t r = 0; r < 4; r++) {
    const char *d = dump(fx, fx->s, names[r][0], names[r][1], "", 0);
    char *a = lr_xstrndup(d, fx->acc.len);
    const char *b = dump(fx, t, names[r][0], names[r][1], "", 0);
    int same = strcmp(a, b) == 0;
    free(a);
    if (!same) {
      lr_store_close(t);
      LR_TEST_FAIL("room %zu differs after reload", r);
    }
  }
  /* Saving the reloaded store gives the same bytes. */
  char path3[200];
  snprintf(path3, sizeof path3, "%s/snap3.json", fx->dir);
  ASSERT_EQ_INT(lr_store_memory_save(t, path3, err, sizeof err), 0);
  lr_store_close(t);
  char *x = read_all(path2), *y = read_all(path3);
  int same = x && y && strcmp(x, y) == 0;
  free(x);
  free(y);
  ASSERT(same);
}

ONE(storage_memory_snapshot_reference_text, 0) {
  const char *text =
      " {\n  \"main:demo\" : [ [\"state:count\", 1],\n"
      "    [\"session:s1\",{\"publicId\":\"HY9rlXdz\",\"created\":1,\"connected\":true}] ],\n"
      "  \"my%20ns:r%3a1\": [[\"k\\u00e9\\n\\ud83d\\ude00\", [1, 2.50, \"x\"]]],\n"
      "  \"empty:room\": [],\n"
      "  \"main:demo\": [[\"state:count\", 2]]\n} \n";
  ASSERT_EQ_INT(write_file(fx->path, text, strlen(text)), 0);
  char err[512] = "";
  fx->s = lr_store_memory_open(fx->path, err, sizeof err);
  if (!fx->s) LR_TEST_FAIL("open: %s", err);
  ASSERT_EQ_INT(lr_store_count(fx->s, NULL, NULL), 3);
  ASSERT_EQ_STR(get(fx, "main", "demo", "state:count"), "2"); /* later duplicate wins */
  ASSERT_EQ_STR(get(fx, "main", "demo", "session:s1"),
                "{\"publicId\":\"HY9rlXdz\",\"created\":1,\"connected\":true}");
  ASSERT_EQ_STR(get(fx, "my ns", "r:1", "k\xc3\xa9\n\xf0\x9f\x98\x80"), "[1, 2.50, \"x\"]");
  ASSERT_EQ_INT(lr_store_count(fx->s, "empty", NULL), 0);
}

ONE(storage_memory_snapshot_malformed_fails, 0) {
  const char *bad[] = {
      "",
      "[]",
      "{\"main:demo\":[[\"k\",]]}",
      "{\"main:demo\":[[\"k\",1]}",
      "{\"nocolon\":[]}",
      "{\"a:%ZZ\":[]}",
      "{\"a:%C3\":[]}",
      "{\"a:b\":[[\"k\\u0000\",1]]}",
      "{\"a:b\":[[\"k\\udc00\",1]]}",
      "{\"a:b\":[[1,1]]}",
      "{\"a:b\":[[\"k\",1,2]]}",
      "{\"a:b\":[[\"k\",1]]} x",
      "{\"a:b\":[[\"k\",1]]",
      "{\"a:b\":[[\"k\",{\"x\":}]]}",
      "{\"a:b\":[[\"\xff\",1]]}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    ASSERT_EQ_INT(write_file(fx->path, bad[i], strlen(bad[i])), 0);
    char err[512] = "";
    lr_store *s = lr_store_memory_open(fx->path, err, sizeof err);
    if (s) {
      lr_store_close(s);
      LR_TEST_FAIL("accepted snapshot %zu: %s", i, bad[i]);
    }
    if (!strstr(err, fx->path) || !strstr(err, "malformed")) LR_TEST_FAIL("message: %s", err);
  }
  /* A directory where the file should be: a clear error too. */
  char err[512] = "";
  ASSERT(!lr_store_memory_open(fx->dir, err, sizeof err));
  ASSERT(strstr(err, fx->dir));
}

ONE(storage_memory_save_failure_keeps_old_file, 0) {
  char err[512] = "";
  fx->s = lr_store_memory_open(fx->path, err, sizeof err);
  ASSERT(fx->s);
  ASSERT_EQ_INT(put(fx->s, "main", "demo", "k", "1"), 0);
  ASSERT_EQ_INT(lr_store_memory_save(fx->s, NULL, err, sizeof err), 0);
  /* A path under a regular file cannot be written. */
  char bad[200];
  snprintf(bad, sizeof bad, "%s/sub/x.json", fx->path);
  ASSERT_EQ_INT(lr_store_memory_save(fx->s, bad, err, sizeof err), LR_STORE_EIO);
  ASSERT(strstr(err, "not a directory"));
  /* The target is a directory: rename fails, the temp file is removed. */
  char dirpath[200];
  snprintf(dirpath, sizeof dirpath, "%s/adir", fx->dir);
  ASSERT_EQ_INT(mkdir(dirpath, 0755), 0);
  ASSERT_EQ_INT(lr_store_memory_save(fx->s, dirpath, err, sizeof err), LR_STORE_EIO);
  ASSERT(strstr(err, "rename"));
  int n = 0;
  DIR *d = opendir(fx->dir);
  for (struct dirent *e; d && (e = readdir(d));)
    if (e->d_name[0] != '.') n++;
  if (d) closedir(d);
  ASSERT_EQ_INT(n, 2); /* snap.json and adir */
  char *text = read_all(fx->path);
  ASSERT_EQ_STR(text, "{\"main:demo\":[[\"k\",1]]}");
  free(text);
  /* Saving a non-memory store is refused. */
  char spath[200];
  snprintf(spath, sizeof spath, "%s/s.sqlite", fx->dir);
  lr_sqlite_opts o = {.path = spath};
  lr_store *sq = lr_store_sqlite_open(&o, err, sizeof err);
  ASSERT(sq);
  int rc = lr_store_memory_save(sq, fx->path, err, sizeof err);
  lr_store_close(sq);
  ASSERT_EQ_INT(rc, LR_STORE_EARG);
}

/* ---- SQLite ---- */

static sqlite3 *raw_open(const char *path) {
  sqlite3 *db = NULL;
  if (sqlite3_open(path, &db) != SQLITE_OK) {
    sqlite3_close(db);
    return NULL;
  }
  return db;
}

/* First column of the first row of sql, as text, into buf. */
static const char *raw_text(sqlite3 *db, const char *sql, char *buf, size_t n) {
  sqlite3_stmt *st = NULL;
  snprintf(buf, n, "<none>");
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
    snprintf(buf, n, "%s", (const char *)sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  return buf;
}

ONE(storage_sqlite_reopen_persists, 1) {
  fx->s = fx_open(fx);
  ASSERT(fx->s);
  ASSERT_EQ_INT(put(fx->s, "main", "demo", "state:count", "1"), 0);
  ASSERT_EQ_INT(put(fx->s, "main", "demo", "state:x", "[1,2]"), 0);
  lr_store_close(fx->s);
  fx->s = fx_open(fx);
  ASSERT(fx->s);
  ASSERT_EQ_STR(dump(fx, fx->s, "main", "demo", "", 0), "state:count=1;state:x=[1,2];");
}

ONE(storage_sqlite_reads_reference_table, 1) {
  sqlite3 *db = raw_open(fx->path);
  ASSERT(db);
  /* What @signe/room's createSqliteNodeRoomStorage leaves on disk (§9.3). */
  int rc = sqlite3_exec(
      db,
      "PRAGMA journal_mode = WAL;"
      "CREATE TABLE signe_room_storage (namespace TEXT NOT NULL, room_id TEXT NOT NULL, key TEXT "
      "NOT NULL, value TEXT NOT NULL, PRIMARY KEY (namespace, room_id, key));"
      "INSERT INTO signe_room_storage VALUES ('main','demo','state:count','1');"
      "INSERT INTO signe_room_storage VALUES ('main','demo','session:s1',"
      "'{\"publicId\":\"HY9rlXdz\",\"created\":1,\"connected\":true}');"
      "INSERT INTO signe_room_storage VALUES ('main','demo','session-public:HY9rlXdz','[\"s1\"]');"
      "INSERT INTO signe_room_storage VALUES ('main','demo','$room:session-gc:last-run',"
      "'1795903581494');",
      NULL, NULL, NULL);
  sqlite3_close(db);
  ASSERT_EQ_INT(rc, SQLITE_OK);
  fx->s = fx_open(fx);
  if (!fx->s) LR_TEST_FAIL("open: %s", fx->err);
  ASSERT_EQ_STR(get(fx, "main", "demo", "state:count"), "1");
  ASSERT_EQ_STR(get(fx, "main", "demo", "session:s1"),
                "{\"publicId\":\"HY9rlXdz\",\"created\":1,\"connected\":true}");
  ASSERT_EQ_STR(dump(fx, fx->s, "main", "demo", "session", 0),
                "session-public:HY9rlXdz=[\"s1\"];"
                "session:s1={\"publicId\":\"HY9rlXdz\",\"created\":1,\"connected\":true};");
  ASSERT_EQ_INT(lr_store_count(fx->s, "main", "demo"), 4);
  /* What we write is what the reference reads: TEXT JSON in the same table. */
  ASSERT_EQ_INT(put(fx->s, "main", "demo", "state:count", "2"), 0);
  lr_store_close(fx->s);
  fx->s = NULL;
  db = raw_open(fx->path);
  ASSERT(db);
  char buf[256];
  raw_text(db,
           "SELECT typeof(value) || ':' || value FROM signe_room_storage WHERE namespace='main' "
           "AND room_id='demo' AND key='state:count'",
           buf, sizeof buf);
  char schema[512];
  raw_text(db, "SELECT sql FROM sqlite_master WHERE name='signe_room_storage'", schema,
           sizeof schema);
  sqlite3_close(db);
  ASSERT_EQ_STR(buf, "text:2");
  ASSERT(strstr(schema, "PRIMARY KEY (namespace, room_id, key)"));
}

ONE(storage_sqlite_schema_and_pragmas, 1) {
  lr_sqlite_opts o = {.path = fx->path, .table = "my_rooms"};
  char err[512] = "";
  fx->s = lr_store_sqlite_open(&o, err, sizeof err);
  ASSERT(fx->s);
  ASSERT_EQ_INT(put(fx->s, "main", "demo", "k", "1"), 0);
  sqlite3 *db = raw_open(fx->path);
  ASSERT(db);
  char mode[64], schema[512];
  raw_text(db, "PRAGMA journal_mode", mode, sizeof mode);
  raw_text(db, "SELECT sql FROM sqlite_master WHERE name='my_rooms'", schema, sizeof schema);
  sqlite3_close(db);
  ASSERT_EQ_STR(mode, "wal");
  ASSERT_EQ_STR(schema, "CREATE TABLE my_rooms (namespace TEXT NOT NULL, room_id TEXT NOT NULL, "
                        "key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (namespace, room_id, "
                        "key))");
  lr_store_close(fx->s);
  /* journal_mode is validated case-insensitively and applied. */
  char p2[200];
  snprintf(p2, sizeof p2, "%s/nested/dirs/d.sqlite", fx->dir); /* parents are created */
  o = (lr_sqlite_opts){.path = p2, .journal_mode = "delete", .busy_timeout_ms = 40};
  fx->s = lr_store_sqlite_open(&o, err, sizeof err);
  if (!fx->s) LR_TEST_FAIL("open: %s", err);
  ASSERT_EQ_INT(put(fx->s, "main", "demo", "k", "1"), 0);
  db = raw_open(p2);
  ASSERT(db);
  raw_text(db, "PRAGMA journal_mode", mode, sizeof mode);
  sqlite3_close(db);
  ASSERT_EQ_STR(mode, "delete");
}

ONE(storage_sqlite_bad_options_fail, 1) {
  char err[512];
  const char *tables[] = {"1abc", "a-b", "x; DROP TABLE y", "", "t\xc3\xa9"};
  for (size_t i = 0; i < sizeof tables / sizeof *tables; i++) {
    lr_sqlite_opts o = {.path = fx->path, .table = tables[i]};
    err[0] = '\0';
    lr_store *s = lr_store_sqlite_open(&o, err, sizeof err);
    if (s) {
      lr_store_close(s);
      LR_TEST_FAIL("accepted table '%s'", tables[i]);
    }
    ASSERT(strstr(err, "invalid table name"));
  }
  lr_sqlite_opts o = {.path = fx->path, .journal_mode = "fast"};
  ASSERT(!lr_store_sqlite_open(&o, err, sizeof err));
  ASSERT(strstr(err, "journal mode 'fast'"));
  o = (lr_sqlite_opts){.path = fx->path, .busy_timeout_ms = -1};
  ASSERT(!lr_store_sqlite_open(&o, err, sizeof err));
  ASSERT(strstr(err, "busy_timeout must be 1 to 50 ms"));
  o = (lr_sqlite_opts){.path = NULL};
  ASSERT(!lr_store_sqlite_open(&o, err, sizeof err));
  ASSERT(!lr_store_sqlite_open(NULL, err, sizeof err));
  /* Nothing was created by the refused opens. */
  ASSERT(access(fx->path, F_OK) != 0);
}

ONE(storage_sqlite_corrupt_file_fails_cleanly, 1) {
  unsigned char junk[4096];
  uint32_t x = 2463534242u;
  for (size_t i = 0; i < sizeof junk; i++) { /* xorshift: deterministic garbage */
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    junk[i] = (unsigned char)x;
  }
  ASSERT_EQ_INT(write_file(fx->path, junk, sizeof junk), 0);
  char err[512] = "";
  lr_sqlite_opts o = {.path = fx->path};
  lr_store *s = lr_store_sqlite_open(&o, err, sizeof err);
  if (s) {
    lr_store_close(s);
    LR_TEST_FAIL("opened a corrupt file");
  }
  ASSERT(strstr(err, fx->path));
  ASSERT(strstr(err, "not a database"));
  /* The file is left as it was. */
  char *back = read_all(fx->path);
  ASSERT(back);
  int same = memcmp(back, junk, sizeof junk) == 0;
  free(back);
  ASSERT(same);
  /* A directory is not a database either. */
  o.path = fx->dir;
  ASSERT(!lr_store_sqlite_open(&o, err, sizeof err));
  ASSERT(strstr(err, fx->dir));
}

ONE(storage_sqlite_sql_failure_rolls_back, 1) {
  fx->s = fx_open(fx);
  ASSERT(fx->s);
  ASSERT_EQ_INT(put(fx->s, "main", "demo", "keep", "1"), 0);
  /* Make a later statement fail inside the transaction. */
  sqlite3 *db = raw_open(fx->path);
  ASSERT(db);
  int rc = sqlite3_exec(db,
                        "CREATE TRIGGER boom BEFORE INSERT ON signe_room_storage "
                        "WHEN NEW.key = 'boom' BEGIN SELECT RAISE(ABORT, 'boom refused'); END",
                        NULL, NULL, NULL);
  sqlite3_close(db);
  ASSERT_EQ_INT(rc, SQLITE_OK);
  lr_store_op ops[] = {
      {LR_STORE_PUT, "x", 1, "1", 1},
      {LR_STORE_DEL, "keep", 4, NULL, 0},
      {LR_STORE_DEL_PREFIX, "", 0, NULL, 0},
      {LR_STORE_PUT, "boom", 4, "1", 1},
  };
  char err[512] = "";
  ASSERT_EQ_INT(lr_store_apply(fx->s, "main", "demo", ops, 4, err, sizeof err), LR_STORE_EIO);
  ASSERT(strstr(err, "op 3") && strstr(err, "boom refused"));
  ASSERT_EQ_STR(get(fx, "main", "demo", "x"), "<missing>");
  ASSERT_EQ_STR(get(fx, "main", "demo", "keep"), "1");
  /* The connection is usable afterwards (no transaction left open). */
  ASSERT_EQ_INT(lr_store_apply(fx->s, "main", "demo", ops, 2, err, sizeof err), 0);
  ASSERT_EQ_STR(dump(fx, fx->s, "main", "demo", "", 0), "x=1;");
}

ONE(storage_sqlite_locked_is_ebusy, 1) {
  lr_sqlite_opts o = {.path = fx->path, .busy_timeout_ms = 50};
  char err[512] = "";
  fx->s = lr_store_sqlite_open(&o, err, sizeof err);
  ASSERT(fx->s);
  ASSERT_EQ_INT(put(fx->s, "main", "demo", "k", "1"), 0);
  sqlite3 *db = raw_open(fx->path);
  ASSERT(db);
  ASSERT_EQ_INT(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
  lr_store_op op = {LR_STORE_PUT, "k", 1, "2", 1};
  int rc = lr_store_apply(fx->s, "main", "demo", &op, 1, err, sizeof err);
  const char *v = get(fx, "main", "demo", "k"); /* WAL: readers are not blocked */
  int read_ok = strcmp(v, "1") == 0;
  sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
  sqlite3_close(db);
  ASSERT_EQ_INT(rc, LR_STORE_EBUSY);
  ASSERT(strstr(err, "locked"));
  ASSERT(read_ok);
  ASSERT_EQ_INT(lr_store_apply(fx->s, "main", "demo", &op, 1, err, sizeof err), 0);
  ASSERT_EQ_STR(get(fx, "main", "demo", "k"), "2");
}

/* A file locked by another connection: no storage call holds the caller
 * longer than busy_timeout (50 ms is the cap the event loop can afford), the
 * calls after one gave up do not wait at all, and once the lock is gone the
 * same write commits (the engine retries it from a timer). */
static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

ONE(storage_sqlite_lock_bounded_wait, 1) {
  const char *modes[2] = {"wal", "delete"};
  for (int m = 0; m < 2; m++) {
    char path[200], err[512] = "";
    snprintf(path, sizeof path, "%s/lock-%s.sqlite", fx->dir, modes[m]);
    lr_sqlite_opts o = {.path = path, .journal_mode = modes[m]};
    lr_store *s = lr_store_sqlite_open(&o, err, sizeof err);
    if (!s) LR_TEST_FAIL("open: %s", err);
    ASSERT_EQ_INT(put(s, "main", "demo", "k", "1"), 0);
    sqlite3 *db = raw_open(path);
    ASSERT(db);
    ASSERT_EQ_INT(sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
    lr_store_op op = {LR_STORE_PUT, "k", 1, "2", 1};
    double worst = 0;
    int busy = 0;
    for (int i = 0; i < 5; i++) {
      double t0 = now_ms();
      int rc = lr_store_apply(s, "main", "demo", &op, 1, err, sizeof err);
      double dt = now_ms() - t0;
      if (dt > worst) worst = dt;
      busy += rc == LR_STORE_EBUSY;
      if (i > 0 && dt > 5)
        LR_TEST_FAIL("%s: call %d after a give-up waited %.1f ms", modes[m], i, dt);
    }
    double t0 = now_ms();
    lr_buf out;
    lr_buf_init(&out);
    lr_store_get(s, "main", "demo", "k", &out, err, sizeof err); /* blocked in delete mode */
    lr_store_count(s, "main", "demo");
    double rd = now_ms() - t0;
    lr_buf_free(&out);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(db);
    if (worst > 50) LR_TEST_FAIL("%s: a locked write held the caller %.1f ms", modes[m], worst);
    if (rd > 100) LR_TEST_FAIL("%s: reads held the caller %.1f ms", modes[m], rd);
    ASSERT_EQ_INT(busy, 5);
    /* lock released: the write commits */
    ASSERT_EQ_INT(lr_store_apply(s, "main", "demo", &op, 1, err, sizeof err), 0);
    lr_buf_init(&out);
    ASSERT_EQ_INT(lr_store_get(s, "main", "demo", "k", &out, err, sizeof err), 0);
    ASSERT_EQ_STR(lr_buf_cstr(&out), "2");
    lr_buf_free(&out);
    lr_store_close(s);
  }
}

/* max_page_count caps the file: a full database fails the write (all or
 * nothing), and the store keeps working for what fits. */
ONE(storage_sqlite_full_is_eio, 1) {
  char err[512] = "";
  lr_sqlite_opts o = {.path = fx->path, .max_page_count = 8};
  fx->s = lr_store_sqlite_open(&o, err, sizeof err);
  if (!fx->s) LR_TEST_FAIL("open: %s", err);
  ASSERT_EQ_INT(put(fx->s, "main", "demo", "k", "1"), 0);
  size_t n = 100000;
  char *big = malloc(n + 1);
  memset(big, 'x', n);
  big[0] = big[n - 1] = '"';
  big[n] = 0;
  lr_store_op ops[2] = {{LR_STORE_PUT, "k", 1, "2", 1}, {LR_STORE_PUT, "big", 3, big, n}};
  int rc = lr_store_apply(fx->s, "main", "demo", ops, 2, err, sizeof err);
  free(big);
  ASSERT_EQ_INT(rc, LR_STORE_EIO);
  ASSERT(strstr(err, "full"));
  ASSERT_EQ_STR(get(fx, "main", "demo", "k"), "1");
  ASSERT_EQ_INT(lr_store_apply(fx->s, "main", "demo", ops, 1, err, sizeof err), 0);
  ASSERT_EQ_STR(get(fx, "main", "demo", "k"), "2");
}

/* Random puts (values of changing length: in place, or moved), deletes and
 * prefix deletes on a room of up to 300 keys, checked after every step
 * against a plain model: the memory store's exact-key index (built past 64
 * keys, grown, emptied by a whole-room prefix delete and built again) must
 * never keep a moved or freed node (the sanitizer build checks every
 * access), and both backends must agree with the model. */
BOTH(random_writes_match_a_model) {
  enum { NK = 300 };
  static char model[NK][48]; /* "" = absent */
  memset(model, 0, sizeof model);
  uint64_t seed = 7;
  char key[32], val[48];
  long count = 0;
  for (int step = 0; step < 6000; step++) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    unsigned r = (unsigned)(seed >> 33);
    int k = (int)(r % NK), what = (int)((r >> 9) % 100);
    snprintf(key, sizeof key, "state:p.%03d", k);
    if (what < 80) {
      int len = 1 + (int)((r >> 16) % 40);
      snprintf(val, sizeof val, "\"%.*s\"", len, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN");
      ASSERT_EQ_INT(put(s, "main", "rw", key, val), 0);
      if (!model[k][0]) count++;
      strcpy(model[k], val);
    } else if (what < 97) {
      ASSERT_EQ_INT(del(s, "main", "rw", key), 0);
      if (model[k][0]) count--;
      model[k][0] = '\0';
    } else {
      /* "state:p.0" (a tenth of the keys), or every key (rarely) */
      const char *p = what == 99 && (r >> 20) % 4 == 0 ? "" : "state:p.0";
      ASSERT_EQ_INT(delp(s, "main", "rw", p), 0);
      for (int i = 0; i < NK; i++)
        if (model[i][0] && (!*p || i < 100)) {
          model[i][0] = '\0';
          count--;
        }
    }
    if (step % 50 == 0 || step == 5999) {
      for (int i = 0; i < NK; i++) {
        snprintf(key, sizeof key, "state:p.%03d", i);
        ASSERT_EQ_STR(get(fx, "main", "rw", key), model[i][0] ? model[i] : "<missing>");
      }
      ASSERT_EQ_INT(lr_store_count(s, "main", "rw"), count);
    }
  }
}

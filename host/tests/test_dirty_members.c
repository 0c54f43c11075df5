/*
 * test_dirty_members.c - unit tests of the marked-member lists of large
 * objects (value.h, lr_obj_dirty_members): after every set, delete, re-add,
 * replace, undo rollback, clear and free they hold exactly the members marked
 * on each channel, in member order, and the patches and persist walks that
 * read them give the same bytes as a scan of every member would.
 * Must not: test the marks themselves (test_value.c does).
 */
#include <stdlib.h>

#include "json.h"
#include "test.h"
#include "undo.h"
#include "value.h"

typedef struct {
  char s[4096];
} text;

static lr_node *J(const char *s) {
  char err[128];
  lr_node *n = lr_json_decode(s, strlen(s), NULL, err, sizeof err);
  if (!n) {
    fprintf(stderr, "bad test JSON %s: %s\n", s, err);
    abort();
  }
  return n;
}

static text patch(const lr_node *root, int ch) {
  text t;
  lr_buf b;
  lr_buf_init(&b);
  lr_json_encode_patch(root, ch, &b);
  snprintf(t.s, sizeof t.s, "%s", lr_buf_cstr(&b));
  lr_buf_free(&b);
  return t;
}
#define SYNC(root) patch(root, LR_CH_SYNC).s
#define PERSIST(root) patch(root, LR_CH_PERSIST).s

/* The persist walk's puts and deletes, "path=json" / "-path", joined by ' '. */
static void on_put(void *ud, const char *path, size_t pathlen, const char *json, size_t jsonlen,
                   const lr_node *node) {
  (void)node;
  size_t n = strlen(ud);
  snprintf((char *)ud + n, 4096 - n, "%s%.*s=%.*s", n ? " " : "", (int)pathlen, path, (int)jsonlen,
           json);
}
static void on_del(void *ud, const char *path, size_t pathlen) {
  size_t n = strlen(ud);
  snprintf((char *)ud + n, 4096 - n, "%s-%.*s", n ? " " : "", (int)pathlen, path);
}
static text walk(const lr_node *root) {
  text t = {{0}};
  lr_persist_ops ops = {t.s, on_put, on_del};
  lr_json_walk_persist(root, &ops);
  return t;
}

/* Keys of o's listed members on ch in the order given, "a,b"; "-" when o
 * keeps no list. */
static text listed_keys(const lr_node *o, int ch) {
  text t = {{0}};
  lr_node *const *l;
  uint32_t n;
  if (!lr_obj_dirty_members(o, ch, &l, &n)) return (text){"-"};
  for (uint32_t i = 0; i < n; i++) {
    uint32_t kl;
    const char *k = lr_node_key_in_parent(l[i], &kl);
    size_t len = strlen(t.s);
    snprintf(t.s + len, sizeof t.s - len, "%s%.*s", i ? "," : "", k ? (int)kl : 1, k ? k : "?");
  }
  return t;
}
#define LISTED(o, ch) listed_keys(o, ch).s

/* NULL when every list below n holds exactly the marked members (each once,
 * each a member of the object, in member order); else what is wrong. */
static const char *lists_exact(const lr_node *n) {
  if (n->type == LR_ARRAY) {
    for (uint32_t i = 0; i < n->u.arr.len; i++) {
      const char *e = lists_exact(n->u.arr.items[i]);
      if (e) return e;
    }
    return NULL;
  }
  if (n->type != LR_OBJECT) return NULL;
  for (int ch = 0; ch < LR_NCH; ch++) {
    lr_node *const *l;
    uint32_t len, marked = 0;
    if (!lr_obj_dirty_members(n, ch, &l, &len)) continue;
    for (uint32_t i = 0; i < n->u.obj.len; i++)
      marked += n->u.obj.m[i].val->dirty[ch] != 0;
    if (len != marked) return "list length != marked members";
    for (uint32_t i = 0; i < len; i++) {
      if (l[i]->parent != n) return "a listed node is not a member";
      if (lr_node_index_in_parent(l[i]) < 0) return "a listed node's position is wrong";
      if (!l[i]->dirty[ch]) return "a listed member is not marked";
      if (i && l[i - 1]->pos >= l[i]->pos) return "not in member order (or twice)";
    }
  }
  for (uint32_t i = 0; i < n->u.obj.len; i++) {
    const char *e = lists_exact(n->u.obj.m[i].val);
    if (e) return e;
  }
  return NULL;
}
#define EXACT(root)                                                                                \
  do {                                                                                             \
    const char *e_ = lists_exact(root);                                                            \
    if (e_) LR_TEST_FAIL("lists not exact: %s", e_);                                               \
  } while (0)

static lr_node *set_int(lr_node *obj, const char *key, int64_t v) {
  lr_node tmp = {.type = LR_INT, .refs = 1, .u.i = v};
  return lr_state_set(obj, key, strlen(key), &tmp, 0);
}
static void clear(lr_node *root) {
  lr_state_clear_dirty(root, LR_CH_SYNC);
  lr_state_clear_dirty(root, LR_CH_PERSIST);
}

/* {"u":{"k0":{"x":0},...,"k11":{"x":11}},"n":0}, nothing marked. */
static lr_node *room(void) {
  char js[1024] = "{\"u\":{";
  for (int i = 0; i < 12; i++) {
    size_t len = strlen(js);
    snprintf(js + len, sizeof js - len, "%s\"k%d\":{\"x\":%d}", i ? "," : "", i, i);
  }
  strcat(js, "},\"n\":0}");
  lr_node *r = J(js);
  clear(r);
  return r;
}
static lr_node *U(lr_node *r) {
  return lr_obj_get(r, "u", 1);
}
static lr_node *K(lr_node *r, const char *k) {
  return lr_obj_get(U(r), k, strlen(k));
}

TEST(dirty_members_set_in_any_order_emit_in_member_order) {
  lr_node *r = room();
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_SYNC), "");
  ASSERT_EQ_STR(LISTED(r, LR_CH_SYNC), "-"); /* small: no list, scanned */
  set_int(K(r, "k7"), "x", 70);
  set_int(K(r, "k2"), "x", 20);
  set_int(K(r, "k7"), "x", 71); /* marked already: listed once */
  set_int(K(r, "k9"), "x", 90);
  EXACT(r);
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_SYNC), "k2,k7,k9");
  ASSERT_EQ_STR(SYNC(r), "{\"u\":{\"k2\":{\"x\":20},\"k7\":{\"x\":71},\"k9\":{\"x\":90}}}");
  ASSERT_EQ_STR(walk(r).s, "u.k2.x=20 u.k7.x=71 u.k9.x=90");
  /* a whole member (SELF) and a member marked CHILD side by side */
  lr_node *v = J("{\"x\":5}");
  lr_state_assign(K(r, "k4"), v);
  lr_node_release(v);
  v = J("[1]");
  lr_state_set(U(r), "k3", 2, v, 0);
  lr_node_release(v);
  EXACT(r);
  ASSERT_EQ_STR(SYNC(r), "{\"u\":{\"k2\":{\"x\":20},\"k3\":[1],\"k4\":{\"x\":5},\"k7\":{\"x\":71},"
                         "\"k9\":{\"x\":90}}}");
  lr_node_release(r);
}

TEST(dirty_members_clear_per_channel) {
  lr_node *r = room();
  set_int(K(r, "k5"), "x", 50);
  set_int(K(r, "k1"), "x", 10);
  lr_state_clear_dirty(r, LR_CH_SYNC);
  EXACT(r);
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_SYNC), "");
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_PERSIST), "k1,k5");
  ASSERT_EQ_INT(K(r, "k5")->u.obj.m[0].val->dirty[LR_CH_SYNC], 0);
  ASSERT_EQ_STR(SYNC(r), "{}");
  ASSERT_EQ_STR(PERSIST(r), "{\"u\":{\"k1\":{\"x\":10},\"k5\":{\"x\":50}}}");
  /* the next window lists only its own writes */
  set_int(K(r, "k3"), "x", 30);
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_SYNC), "k3");
  ASSERT_EQ_STR(SYNC(r), "{\"u\":{\"k3\":{\"x\":30}}}");
  /* clearing a member alone takes it off its parent's list */
  lr_state_clear_dirty(K(r, "k5"), LR_CH_PERSIST);
  EXACT(r);
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_PERSIST), "k1,k3");
  clear(r);
  EXACT(r);
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_PERSIST), "");
  lr_node_release(r);
}

TEST(dirty_members_delete_and_readd) {
  lr_node *r = room();
  set_int(K(r, "k8"), "x", 80);
  set_int(K(r, "k10"), "x", 100);
  ASSERT(lr_state_delete(U(r), "k8", 2)); /* a marked member leaves */
  EXACT(r);
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_SYNC), "k10");
  ASSERT(lr_state_delete(U(r), "k1", 2)); /* the members after it move down */
  EXACT(r);
  ASSERT_EQ_STR(SYNC(r), "{\"u\":{\"k10\":{\"x\":100},\"k8\":\"$delete\",\"k1\":\"$delete\"}}");
  ASSERT_EQ_STR(walk(r).s, "u.k10.x=100 -u.k8 -u.k1");
  set_int(U(r), "k8", 8); /* re-added: a new member, last */
  set_int(K(r, "k0"), "x", 1);
  EXACT(r);
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_PERSIST), "k0,k10,k8");
  ASSERT_EQ_STR(SYNC(r),
                "{\"u\":{\"k0\":{\"x\":1},\"k10\":{\"x\":100},\"k8\":8,\"k1\":\"$delete\"}}");
  clear(r);
  ASSERT(lr_state_delete(U(r), "k8", 2)); /* deleted again while unmarked */
  set_int(K(r, "k11"), "x", 0);
  EXACT(r);
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_SYNC), "k11");
  ASSERT_EQ_STR(SYNC(r), "{\"u\":{\"k11\":{\"x\":0},\"k8\":\"$delete\"}}");
  clear(r);
  ASSERT(lr_state_delete(K(r, "k3"), "x", 1)); /* a deletion below an unmarked member */
  EXACT(r);
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_PERSIST), "k3");
  ASSERT_EQ_STR(walk(r).s, "-u.k3.x");
  lr_node_release(r); /* freed with lists and deletions pending */
}

TEST(dirty_members_replace_and_put) {
  lr_node *r = room();
  set_int(K(r, "k6"), "x", 60);
  lr_node *old = lr_node_retain(K(r, "k6"));
  lr_obj_put(U(r), "k6", 2, J("{\"y\":1}")); /* a marked member replaced */
  EXACT(r);
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_SYNC), "");
  set_int(old, "x", 61); /* the detached node's writes reach no list of u */
  EXACT(r);
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_SYNC), "");
  lr_node_release(old);
  /* a type change of a member with marked children below it */
  set_int(K(r, "k2"), "x", 21);
  lr_node tmp = {.type = LR_INT, .refs = 1, .u.i = 7};
  lr_state_assign(K(r, "k2"), &tmp);
  EXACT(r);
  ASSERT_EQ_STR(SYNC(r), "{\"u\":{\"k2\":7}}");
  /* the whole object assigned: merge deletes, re-adds and updates */
  lr_node *src = J("{\"k2\":7,\"k5\":{\"x\":55},\"z\":{\"x\":0}}");
  lr_state_assign(U(r), src);
  lr_node_release(src);
  EXACT(r);
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_SYNC), "k2,k5,z");
  clear(r);
  EXACT(r);
  lr_node_release(r);
}

TEST(dirty_members_list_built_when_object_grows) {
  lr_node *r = J("{\"u\":{}}");
  clear(r);
  set_int(U(r), "a", 1);
  set_int(U(r), "b", 2); /* marked while u is small (scanned, no list) */
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_SYNC), "-");
  lr_state_clear_dirty(r, LR_CH_SYNC);
  for (int i = 0; i < 10; i++) { /* u grows past LR_OBJ_INDEX_MIN */
    char k[8];
    snprintf(k, sizeof k, "m%d", i);
    lr_obj_put(U(r), k, strlen(k), lr_node_int(i)); /* not marked */
  }
  EXACT(r);
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_SYNC), "");
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_PERSIST), "a,b"); /* marked before the list existed */
  ASSERT_EQ_STR(PERSIST(r), "{\"u\":{\"a\":1,\"b\":2}}");
  lr_node *c = lr_node_clone(r); /* a clone has no marks and empty lists */
  ASSERT_EQ_STR(LISTED(lr_obj_get(c, "u", 1), LR_CH_PERSIST), "");
  lr_node_release(c);
  lr_node_release(r);
}

static void undo_set(lr_undo *u, lr_node *obj, const char *k, const char *json) {
  lr_undo_record_key(u, obj, k, strlen(k));
  lr_node *v = J(json);
  lr_state_set(obj, k, strlen(k), v, 0);
  lr_node_release(v);
}

TEST(dirty_members_undo_rollback) {
  lr_node *r = room();
  lr_undo *u = lr_undo_new();
  set_int(K(r, "k9"), "x", 99); /* before the transaction: stays */
  size_t mark = lr_undo_mark(u);
  undo_set(u, K(r, "k4"), "x", "40");
  lr_undo_record_key(u, U(r), "k9", 2);
  ASSERT(lr_state_delete(U(r), "k9", 2)); /* the marked member deleted, then back */
  undo_set(u, U(r), "new", "{\"x\":1}");
  lr_undo_record_key(u, U(r), "k0", 2);
  ASSERT(lr_state_delete(U(r), "k0", 2));
  EXACT(r);
  lr_undo_rollback(u, mark);
  EXACT(r);
  ASSERT(lr_obj_get(U(r), "new", 3) == NULL);
  ASSERT_EQ_INT(lr_obj_get(K(r, "k9"), "x", 1)->u.i, 99);
  ASSERT_EQ_INT(lr_obj_get(K(r, "k4"), "x", 1)->u.i, 4);
  /* the restored members are re-sent (clients treat them as no-ops) */
  ASSERT(lr_state_dirty(K(r, "k0"), LR_CH_SYNC) && lr_state_dirty(K(r, "k9"), LR_CH_SYNC));
  clear(r);
  EXACT(r);
  ASSERT_EQ_STR(LISTED(U(r), LR_CH_SYNC), "");
  lr_undo_free(u);
  lr_node_release(r);
}

/* Marks below a member that became SELF are stale; the clear reaches them
 * through the list and the next window does not see them. */
TEST(dirty_members_stale_marks_below_self) {
  lr_node *r = J("{\"a\":{\"u\":{}}}");
  for (int i = 0; i < 10; i++) {
    char k[8];
    snprintf(k, sizeof k, "p%d", i);
    lr_obj_put(lr_obj_get(lr_obj_get(r, "a", 1), "u", 1), k, strlen(k), J("{\"x\":0}"));
  }
  clear(r);
  lr_node *u = lr_obj_get(lr_obj_get(r, "a", 1), "u", 1);
  set_int(lr_obj_get(u, "p3", 2), "x", 3);
  lr_state_mark(lr_obj_get(r, "a", 1)); /* a SELF over u's listed member */
  EXACT(r);
  clear(r);
  EXACT(r);
  ASSERT_EQ_INT(lr_obj_get(u, "p3", 2)->dirty[LR_CH_SYNC], 0);
  set_int(lr_obj_get(u, "p5", 2), "x", 5);
  ASSERT_EQ_STR(SYNC(r), "{\"a\":{\"u\":{\"p5\":{\"x\":5}}}}");
  lr_node_release(r);
}

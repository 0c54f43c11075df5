/*
 * test_value.c - unit tests of value.c: containers, the object hash index,
 * clone/equal, refcounts and detaching, in-place assignment, and the dirty
 * marks as seen through lr_json_encode_patch / lr_json_walk_persist.
 * Must not: test parsing or number formatting (test_json.c does).
 */
#include <stdlib.h>

#include "json.h"
#include "test.h"

typedef struct {
  char s[4096];
} text;

/* Parse a JSON literal the test itself wrote (aborts if it is invalid). */
static lr_node *J(const char *s) {
  char err[128];
  lr_node *n = lr_json_decode(s, strlen(s), NULL, err, sizeof err);
  if (!n) {
    fprintf(stderr, "bad test JSON %s: %s\n", s, err);
    abort();
  }
  return n;
}

static text enc(const lr_node *n, uint8_t skip) {
  text t;
  lr_buf b;
  lr_buf_init(&b);
  lr_json_encode(n, skip, &b);
  snprintf(t.s, sizeof t.s, "%s", lr_buf_cstr(&b));
  lr_buf_free(&b);
  return t;
}
#define ENC(n) enc(n, 0).s

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

/* Node at a dotted path ("a.b.0.c"; digits index arrays), or NULL. */
static lr_node *at(lr_node *n, const char *path) {
  while (n && *path) {
    const char *dot = strchr(path, '.');
    size_t len = dot ? (size_t)(dot - path) : strlen(path);
    if (n->type == LR_ARRAY)
      n = lr_arr_get(n, (uint32_t)strtoul(path, NULL, 10));
    else
      n = lr_obj_get(n, path, len);
    path += len + (dot ? 1 : 0);
  }
  return n;
}

/* obj[key] = integer / JSON value, through the state API. */
static lr_node *set_int(lr_node *obj, const char *key, int64_t v) {
  lr_node tmp = {.type = LR_INT, .refs = 1, .u.i = v};
  return lr_state_set(obj, key, strlen(key), &tmp, 0);
}
static lr_node *set_json(lr_node *obj, const char *key, const char *json, uint8_t flags) {
  lr_node *v = J(json);
  lr_node *c = lr_state_set(obj, key, strlen(key), v, flags);
  lr_node_release(v);
  return c;
}
static void clear(lr_node *root) {
  lr_state_clear_dirty(root, LR_CH_SYNC);
  lr_state_clear_dirty(root, LR_CH_PERSIST);
}

/* ---- containers ---- */

TEST(value_set_get_remove) {
  lr_node *o = lr_node_new(LR_OBJECT);
  lr_obj_put(o, "a", 1, lr_node_int(1));
  lr_obj_put(o, "b", 1, lr_node_string("hi", 2));
  lr_obj_put(o, "a", 1, lr_node_bool(true)); /* replace keeps position */
  ASSERT_EQ_STR(ENC(o), "{\"a\":true,\"b\":\"hi\"}");
  ASSERT(lr_obj_get(o, "b", 1)->parent == o);
  ASSERT(lr_obj_get(o, "c", 1) == NULL);
  ASSERT(lr_obj_get(o, "ab", 1) != NULL); /* keylen, not strlen */
  ASSERT(!lr_obj_remove(o, "zz", 2));
  ASSERT(lr_obj_remove(o, "a", 1));
  ASSERT(lr_obj_get(o, "a", 1) == NULL);
  ASSERT_EQ_STR(ENC(o), "{\"b\":\"hi\"}");
  lr_node *arr = lr_node_new(LR_ARRAY);
  lr_arr_push(arr, lr_node_float(1.5));
  lr_arr_push(arr, lr_node_null());
  lr_obj_put(o, "l", 1, arr);
  ASSERT(lr_arr_get(arr, 1)->type == LR_NULL && lr_arr_get(arr, 2) == NULL);
  ASSERT_EQ_STR(ENC(o), "{\"b\":\"hi\",\"l\":[1.5,null]}");
  lr_node *s = lr_node_new(LR_STRING);
  ASSERT(lr_str(s) && lr_strlen(s) == 0 && s->refs == 1);
  lr_node_release(s);
  ASSERT(!lr_state_dirty(o, LR_CH_SYNC) && !lr_state_dirty(o, LR_CH_PERSIST));
  lr_node_release(o);
}

/* Objects keep their hash index and deletions in the side table of
 * value_ext.c: a node is 40 bytes on 64-bit, and freed handles are reused. */
TEST(value_node_size_and_side_handles) {
  if (sizeof(void *) == 8) ASSERT_EQ_INT(sizeof(lr_node), 40);
  lr_node *o[3];
  char k[16];
  for (int j = 0; j < 3; j++) {
    o[j] = lr_node_new(LR_OBJECT);
    ASSERT_EQ_INT(o[j]->xh, 0);
    for (int i = 0; i < 9; i++) {
      snprintf(k, sizeof k, "k%d", i);
      lr_obj_put(o[j], k, strlen(k), lr_node_int(i));
    }
    ASSERT(o[j]->xh != 0 && lr_obj_x(o[j])->idx != NULL);
  }
  ASSERT(o[0]->xh != o[1]->xh && o[1]->xh != o[2]->xh && o[0]->xh != o[2]->xh);
  uint32_t h1 = o[1]->xh;
  lr_node_release(o[1]);
  lr_node *d = lr_node_new(LR_OBJECT); /* a deletion alone takes a handle too */
  lr_obj_put(d, "a", 1, lr_node_int(1));
  ASSERT(lr_state_delete(d, "a", 1));
  ASSERT_EQ_INT(d->xh, h1);
  ASSERT_EQ_INT(lr_obj_dels(d, LR_CH_SYNC).len, 1);
  ASSERT(lr_obj_x(d)->idx == NULL);
  ASSERT(lr_obj_get(o[2], "k8", 2)->u.i == 8 && lr_obj_get(o[0], "k3", 2)->u.i == 3);
  lr_node_release(d);
  lr_node_release(o[0]);
  lr_node_release(o[2]);
}

/* Strings up to 14 bytes live in their node, longer ones outside: every
 * write between the two forms (and other types) reads back the same. */
TEST(value_strings_inline_and_long) {
  static const char *v[] = {
      "",   "abcdefghijklmn", "abcdefghijklmno", "x", "a string well past the inline limit",
      "yy", "abcdefghijklmn"};
  lr_node *t = lr_node_string("start", 5);
  ASSERT_EQ_INT(t->u.str.in.len, 5);
  for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
    lr_node *s = lr_node_string(v[i], strlen(v[i]));
    ASSERT_EQ_INT(s->u.str.in.len == LR_STR_LONG, strlen(v[i]) >= LR_STR_INLINE);
    lr_state_assign(t, s);
    ASSERT_EQ_INT(lr_strlen(t), strlen(v[i]));
    ASSERT_EQ_STR(lr_str(t), v[i]);
    ASSERT(lr_node_equal(t, s));
    lr_node *c = lr_node_clone(t);
    ASSERT(lr_node_equal(c, s) && lr_strlen(c) == strlen(v[i]));
    lr_node_release(c);
    lr_node_release(s);
  }
  lr_node *n = lr_node_int(7); /* string -> int -> string */
  lr_state_assign(t, n);
  ASSERT(t->type == LR_INT && t->u.i == 7);
  lr_node *s = lr_node_string("a\0b", 3);
  lr_state_assign(t, s);
  ASSERT(t->type == LR_STRING && lr_strlen(t) == 3 && memcmp(lr_str(t), "a\0b", 3) == 0);
  lr_node_release(s);
  lr_node_release(n);
  lr_node_release(t);
  lr_node *e = lr_node_new(LR_STRING);
  ASSERT(lr_strlen(e) == 0 && lr_str(e)[0] == '\0');
  lr_node_release(e);
}

/* Keys up to 14 bytes live in the 24-byte member, longer ones outside: both
 * read back (key and length), compare, rename and free alike. */
TEST(value_member_keys_inline_and_long) {
  if (sizeof(void *) == 8) ASSERT_EQ_INT(sizeof(lr_member), 24);
  static const char *keys[] = {"", "a", "abcdefghijklmn", "abcdefghijklmno",
                               "a much longer key than any inline one, 255 is not special"};
  lr_node *o = lr_node_new(LR_OBJECT);
  for (int i = 0; i < 5; i++)
    lr_obj_put(o, keys[i], strlen(keys[i]), lr_node_int(i));
  ASSERT_EQ_INT(o->u.obj.len, 5);
  for (int i = 0; i < 5; i++) {
    const lr_member *m = &o->u.obj.m[i];
    ASSERT_EQ_INT(lr_member_keylen(m), strlen(keys[i]));
    ASSERT_EQ_STR(lr_member_key(m), keys[i]);
    ASSERT_EQ_INT(m->k.s.len == LR_KEY_LONG, strlen(keys[i]) >= LR_KEY_INLINE);
    ASSERT(lr_obj_get(o, keys[i], strlen(keys[i]))->u.i == i);
  }
  ASSERT(lr_obj_get(o, "abcdefghijklm", 13) == NULL);
  ASSERT(lr_obj_get(o, "abcdefghijklmnop", 16) == NULL);
  ASSERT_EQ_STR(ENC(o), "{\"\":0,\"a\":1,\"abcdefghijklmn\":2,\"abcdefghijklmno\":3,"
                        "\"a much longer key than any inline one, 255 is not special\":4}");
  ASSERT(lr_obj_remove(o, keys[3], strlen(keys[3])));
  ASSERT(lr_obj_remove(o, keys[2], strlen(keys[2])));
  ASSERT_EQ_STR(lr_member_key(&o->u.obj.m[2]), keys[4]);
  lr_node *c = lr_node_clone(o);
  ASSERT(lr_node_equal(o, c));
  lr_node_release(c);
  lr_node_release(o);
}

TEST(value_hash_index_1000_keys) {
  lr_node *o = lr_node_new(LR_OBJECT);
  char k[16];
  for (int i = 0; i < 1000; i++) {
    snprintf(k, sizeof k, "k%d", i);
    lr_obj_put(o, k, strlen(k), lr_node_int(i));
    if (i == 7) ASSERT(lr_obj_x(o) == NULL);
    if (i == 8) ASSERT(lr_obj_x(o) != NULL && lr_obj_x(o)->idx != NULL);
  }
  ASSERT_EQ_INT(o->u.obj.len, 1000);
  ASSERT(lr_obj_x(o)->idxcap >= 2000);
  for (int i = 0; i < 1000; i++) {
    snprintf(k, sizeof k, "k%d", i);
    lr_node *v = lr_obj_get(o, k, strlen(k));
    ASSERT(v && v->u.i == i);
  }
  ASSERT(lr_obj_get(o, "k1000", 5) == NULL);
  for (int i = 0; i < 1000; i += 2) {
    snprintf(k, sizeof k, "k%d", i);
    ASSERT(lr_obj_remove(o, k, strlen(k)));
  }
  ASSERT_EQ_INT(o->u.obj.len, 500);
  for (int i = 0; i < 1000; i++) {
    snprintf(k, sizeof k, "k%d", i);
    lr_node *v = lr_obj_get(o, k, strlen(k));
    if (i % 2)
      ASSERT(v && v->u.i == i);
    else
      ASSERT(v == NULL);
  }
  for (uint32_t i = 0; i < o->u.obj.len; i++) /* insertion order kept */
    ASSERT_EQ_INT(o->u.obj.m[i].val->u.i, 2 * i + 1);
  /* clones of indexed objects are indexed too */
  lr_node *c = lr_node_clone(o);
  ASSERT(lr_obj_x(c) && lr_obj_x(c)->idx != NULL && lr_obj_get(c, "k999", 4)->u.i == 999);
  ASSERT(lr_node_equal(o, c));
  lr_node_release(c);
  lr_node_release(o);
}

/* Random puts/removes checked against a plain shadow table, to exercise
 * probe chains across backward-shift deletions and index growth. */
TEST(value_hash_index_random_ops) {
  enum { NK = 300 };
  int shadow[NK];
  for (int i = 0; i < NK; i++)
    shadow[i] = -1;
  lr_node *o = lr_node_new(LR_OBJECT);
  uint32_t seed = 12345;
  char k[16];
  for (int step = 0; step < 20000; step++) {
    seed = seed * 1103515245u + 12345u;
    int key = (int)((seed >> 8) % NK);
    snprintf(k, sizeof k, "key-%d", key);
    if ((seed >> 4) % 3) {
      lr_obj_put(o, k, strlen(k), lr_node_int(step));
      shadow[key] = step;
    } else {
      ASSERT_EQ_INT(lr_obj_remove(o, k, strlen(k)), shadow[key] >= 0);
      shadow[key] = -1;
    }
    if (step % 1000 == 0 || step == 19999) {
      uint32_t live = 0;
      for (int i = 0; i < NK; i++) {
        snprintf(k, sizeof k, "key-%d", i);
        lr_node *v = lr_obj_get(o, k, strlen(k));
        if (shadow[i] < 0) {
          ASSERT(v == NULL);
        } else {
          ASSERT(v && v->u.i == shadow[i]);
          live++;
        }
      }
      ASSERT_EQ_INT(o->u.obj.len, live);
    }
  }
  lr_node_release(o);
}

TEST(value_clone_equal) {
  lr_node *a = J("{\"x\":1,\"s\":\"str\",\"l\":[1,{\"y\":null}],\"o\":{\"t\":true,\"f\":2.5}}");
  lr_obj_get(a, "o", 1)->flags = LR_F_NOSYNC;
  lr_state_mark(lr_obj_get(a, "x", 1));
  lr_node *c = lr_node_clone(a);
  ASSERT(c != a && c->refs == 1 && c->parent == NULL);
  ASSERT(lr_node_equal(a, c));
  ASSERT_EQ_STR(ENC(c), ENC(a));
  ASSERT_EQ_INT(lr_obj_get(c, "o", 1)->flags, LR_F_NOSYNC); /* flags copied */
  ASSERT(!lr_state_dirty(c, LR_CH_SYNC));                   /* marks not */
  ASSERT_EQ_INT(lr_obj_get(c, "x", 1)->dirty[LR_CH_SYNC], 0);
  ASSERT(at(c, "l.1.y")->parent == at(c, "l.1"));
  at(c, "l.1.y")->type = LR_BOOL; /* null -> false */
  ASSERT(!lr_node_equal(a, c));
  lr_node_release(c);

  lr_node *p = J("{\"a\":1,\"b\":2}"), *q = J("{\"b\":2,\"a\":1}"), *r = J("{\"a\":1,\"c\":2}");
  ASSERT(lr_node_equal(p, q)); /* key order does not matter */
  ASSERT(!lr_node_equal(p, r));
  lr_node *l1 = J("[1,2]"), *l2 = J("[2,1]"), *l3 = J("[1,2,3]");
  ASSERT(!lr_node_equal(l1, l2) && !lr_node_equal(l1, l3));
  lr_node *i3 = lr_node_int(3), *f3 = lr_node_float(3.0), *f35 = lr_node_float(3.5);
  lr_node *big = lr_node_int(9007199254740993), *fbig = lr_node_float(9007199254740992.0);
  lr_node *s1 = lr_node_string("a\0b", 3), *s2 = lr_node_string("a\0c", 3);
  ASSERT(lr_node_equal(i3, f3) && lr_node_equal(f3, i3));
  ASSERT(!lr_node_equal(i3, f35) && !lr_node_equal(big, fbig));
  ASSERT(!lr_node_equal(s1, s2) && !lr_node_equal(i3, s1));
  lr_node *t = lr_node_bool(true), *one = lr_node_int(1);
  ASSERT(!lr_node_equal(t, one));
  lr_node *all[] = {a, p, q, r, l1, l2, l3, i3, f3, f35, big, fbig, s1, s2, t, one};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++)
    lr_node_release(all[i]);
}

TEST(value_refcount_and_detach) {
  lr_node *root = J("{\"users\":{\"u1\":{\"x\":1},\"u2\":{\"x\":2}},\"list\":[{\"k\":1}]}");
  lr_node *u1 = lr_node_retain(at(root, "users.u1")); /* a proxy's reference */
  lr_node *item = lr_node_retain(at(root, "list.0"));
  ASSERT_EQ_INT(u1->refs, 2);
  ASSERT(lr_state_delete(at(root, "users"), "u1", 2));
  ASSERT(u1->parent == NULL && u1->refs == 1);
  ASSERT_EQ_INT(lr_obj_get(u1, "x", 1)->u.i, 1); /* still intact */
  ASSERT(at(root, "users.u1") == NULL);
  lr_state_arr_remove(at(root, "list"), 0);
  ASSERT(item->parent == NULL && item->refs == 1);
  clear(root);
  /* writes through a detached node mark nothing in the tree */
  set_int(u1, "x", 7);
  ASSERT(!lr_state_dirty(root, LR_CH_SYNC));
  ASSERT_EQ_STR(ENC(u1), "{\"x\":7}");
  /* replacing a container by a scalar detaches its old children */
  lr_node *u2 = lr_node_retain(at(root, "users.u2"));
  lr_node *x2 = lr_node_retain(lr_obj_get(u2, "x", 1));
  set_int(at(root, "users"), "u2", 5);
  ASSERT(u2->parent == at(root, "users") && u2->type == LR_INT); /* in place */
  ASSERT(x2->parent == NULL && x2->u.i == 2);
  /* a detached node with marks is clean once it is put back */
  ASSERT(u1->dirty[LR_CH_SYNC] != 0);
  lr_obj_put(root, "back", 4, u1); /* takes the proxy's reference */
  ASSERT(u1->parent == root && u1->dirty[LR_CH_SYNC] == 0 &&
         lr_obj_get(u1, "x", 1)->dirty[LR_CH_SYNC] == 0);
  lr_node_release(item);
  lr_node_release(u2);
  lr_node_release(x2);
  lr_node_release(root);
}

TEST(value_paths_and_positions) {
  lr_node *root = J("{\"users\":{\"AbC\":{\"x\":1}},\"list\":[0,{\"y\":[5,6]}],\"3\":{}}");
  lr_buf b;
  lr_buf_init(&b);
  lr_node_path(at(root, "users.AbC.x"), &b);
  ASSERT_EQ_STR(b.data, "users.AbC.x");
  lr_node_path(at(root, "list.1.y.1"), &b);
  ASSERT_EQ_STR(b.data, "list.1.y.1");
  lr_node_path(at(root, "3"), &b);
  ASSERT_EQ_STR(b.data, "3");
  lr_node_path(root, &b);
  ASSERT_EQ_STR(b.data, "");
  lr_buf_free(&b);
  ASSERT_EQ_INT(lr_node_index_in_parent(at(root, "list")), 1);
  ASSERT_EQ_INT(lr_node_index_in_parent(at(root, "list.1")), 1);
  ASSERT_EQ_INT(lr_node_index_in_parent(root), -1);
  uint32_t kl = 0;
  ASSERT_EQ_STR(lr_node_key_in_parent(at(root, "users.AbC"), &kl), "AbC");
  ASSERT_EQ_INT(kl, 3);
  ASSERT(lr_node_key_in_parent(at(root, "list.1"), &kl) == NULL);
  ASSERT(lr_node_key_in_parent(root, &kl) == NULL);
  lr_node_release(root);
}

TEST(value_assign_in_place_type_change) {
  lr_node *root = J("{\"v\":1}");
  lr_node *v = at(root, "v");
  v->flags = LR_F_NOPERSIST;
  lr_node *held = lr_node_retain(v);
  const char *vals[] = {
      "\"text\"", "{\"a\":{\"b\":[1]}}", "[1,[2]]", "null", "2.5", "true", "\"\"", "{}", "[]",
      "-7"};
  for (size_t i = 0; i < sizeof vals / sizeof *vals; i++) {
    set_json(root, "v", vals[i], 0);
    ASSERT(at(root, "v") == v);              /* same node */
    ASSERT_EQ_INT(v->flags, LR_F_NOPERSIST); /* keeps its flags */
    ASSERT_EQ_STR(ENC(v), vals[i]);
    ASSERT(v->dirty[LR_CH_SYNC] & LR_D_SELF);
    char want[64];
    snprintf(want, sizeof want, "{\"v\":%s}", vals[i]);
    ASSERT_EQ_STR(SYNC(root), want);
    clear(root);
  }
  /* children of a taken-over container point at the target */
  set_json(root, "v", "{\"c\":{\"d\":1}}", 0);
  ASSERT(at(root, "v.c")->parent == v && at(root, "v.c.d")->parent == at(root, "v.c"));
  /* a string shrinking in place */
  set_json(root, "s", "\"a longer string\"", 0);
  set_json(root, "s", "\"short\"", 0);
  ASSERT_EQ_STR(lr_str(at(root, "s")), "short");
  ASSERT_EQ_INT(lr_strlen(at(root, "s")), 5);
  lr_node_release(held);
  lr_node_release(root);
}

/* ---- dirty marks and patches ---- */

TEST(patch_nested_write) {
  lr_node *root = J("{\"a\":{\"b\":0,\"c\":5},\"z\":1}");
  ASSERT_EQ_STR(SYNC(root), "{}");
  ASSERT(!lr_state_dirty(root, LR_CH_SYNC));
  set_int(at(root, "a"), "b", 1);
  ASSERT(lr_state_dirty(root, LR_CH_SYNC) && lr_state_dirty(root, LR_CH_PERSIST));
  ASSERT_EQ_STR(SYNC(root), "{\"a\":{\"b\":1}}");
  ASSERT_EQ_STR(PERSIST(root), "{\"a\":{\"b\":1}}");
  ASSERT_EQ_INT(root->dirty[LR_CH_SYNC], LR_D_CHILD);
  ASSERT_EQ_INT(at(root, "a.b")->dirty[LR_CH_SYNC], LR_D_SELF);
  ASSERT_EQ_INT(at(root, "a.c")->dirty[LR_CH_SYNC], 0);
  lr_node_release(root);
}

TEST(patch_equal_write_marks_nothing) {
  lr_node *root = J("{\"a\":{\"b\":0,\"s\":\"x\",\"l\":[1,2],\"o\":{\"k\":1}},\"f\":5}");
  set_int(at(root, "a"), "b", 0);
  set_json(at(root, "a"), "s", "\"x\"", 0);
  set_json(at(root, "a"), "l", "[1,2]", 0);
  set_json(at(root, "a"), "o", "{\"k\":1}", 0);
  set_json(root, "f", "5.0", 0); /* int 5 == float 5.0 */
  ASSERT_EQ_STR(SYNC(root), "{}");
  ASSERT(!lr_state_dirty(root, LR_CH_SYNC) && !lr_state_dirty(root, LR_CH_PERSIST));
  ASSERT_EQ_INT(at(root, "f")->type, LR_INT);
  lr_node_release(root);
}

TEST(patch_two_writes_one_patch) {
  lr_node *root = J("{\"a\":{\"b\":0},\"m\":\"x\",\"z\":1}");
  set_int(root, "z", 2);
  set_int(at(root, "a"), "b", 1);
  ASSERT_EQ_STR(SYNC(root), "{\"a\":{\"b\":1},\"z\":2}"); /* member order */
  lr_node_release(root);
}

TEST(patch_later_write_wins) {
  lr_node *root = J("{\"a\":{\"b\":0}}");
  set_int(at(root, "a"), "b", 1);
  set_int(at(root, "a"), "b", 2);
  ASSERT_EQ_STR(SYNC(root), "{\"a\":{\"b\":2}}");
  set_json(at(root, "a"), "b", "\"s\"", 0);
  ASSERT_EQ_STR(SYNC(root), "{\"a\":{\"b\":\"s\"}}");
  lr_node_release(root);
}

TEST(patch_parent_assign_after_child_write) {
  lr_node *root = J("{\"cfg\":{\"x\":1,\"y\":2,\"w\":{\"q\":1}}}");
  set_int(at(root, "cfg"), "x", 5);
  set_int(at(root, "cfg.w"), "q", 9);
  set_json(root, "cfg", "{\"x\":6,\"z\":1,\"w\":{\"q\":1}}", 0);
  ASSERT_EQ_STR(SYNC(root), "{\"cfg\":{\"x\":6,\"w\":{\"q\":1},\"z\":1,\"y\":\"$delete\"}}");
  ASSERT_EQ_STR(ENC(root), "{\"cfg\":{\"x\":6,\"w\":{\"q\":1},\"z\":1}}");
  /* a parent written as a new whole value replaces earlier child writes */
  clear(root);
  set_int(at(root, "cfg"), "x", 7);
  set_json(root, "cfg", "3", 0);
  ASSERT_EQ_STR(SYNC(root), "{\"cfg\":3}");
  lr_node_release(root);
}

TEST(patch_delete_key) {
  lr_node *root = J("{\"users\":{\"WiBgHo50\":{\"x\":1},\"other\":{\"x\":2}}}");
  ASSERT(lr_state_delete(at(root, "users"), "WiBgHo50", 8));
  ASSERT(!lr_state_delete(at(root, "users"), "WiBgHo50", 8));
  ASSERT_EQ_STR(SYNC(root), "{\"users\":{\"WiBgHo50\":\"$delete\"}}");
  ASSERT_EQ_STR(PERSIST(root), "{\"users\":{\"WiBgHo50\":\"$delete\"}}");
  ASSERT(lr_state_has_dels(root, LR_CH_SYNC));
  /* members first, deletions after */
  set_int(at(root, "users.other"), "x", 3);
  ASSERT_EQ_STR(SYNC(root), "{\"users\":{\"other\":{\"x\":3},\"WiBgHo50\":\"$delete\"}}");
  lr_node_release(root);
}

TEST(patch_replace_object_keys) {
  lr_node *root = J("{\"cfg\":{\"a\":1,\"b\":2}}");
  set_json(root, "cfg", "{\"b\":2,\"c\":3}", 0);
  ASSERT_EQ_STR(SYNC(root), "{\"cfg\":{\"c\":3,\"a\":\"$delete\"}}");
  lr_node_release(root);
  root = J("{\"cfg\":{\"a\":1,\"b\":2}}");
  set_json(root, "cfg", "{\"b\":5,\"c\":3}", 0);
  ASSERT_EQ_STR(SYNC(root), "{\"cfg\":{\"b\":5,\"c\":3,\"a\":\"$delete\"}}");
  ASSERT_EQ_STR(ENC(root), "{\"cfg\":{\"b\":5,\"c\":3}}");
  lr_node_release(root);
}

TEST(patch_numeric_keys_stay_objects) {
  lr_node *root = J("{\"users\":{\"3\":{\"x\":0},\"0\":{\"x\":0}}}");
  set_int(at(root, "users.3"), "x", 1);
  ASSERT_EQ_STR(SYNC(root), "{\"users\":{\"3\":{\"x\":1}}}");
  set_json(at(root, "users"), "1", "{\"x\":2}", 0);
  ASSERT(lr_state_delete(at(root, "users"), "0", 1));
  ASSERT_EQ_STR(SYNC(root), "{\"users\":{\"3\":{\"x\":1},\"1\":{\"x\":2},\"0\":\"$delete\"}}");
  lr_node_release(root);
}

TEST(patch_array_sent_whole) {
  lr_node *root = J("{\"list\":[1,2,3],\"o\":{\"arr\":[{\"p\":{\"q\":1}},[1,[2]]],\"n\":0}}");
  lr_node *v = lr_node_int(9);
  lr_state_arr_set(at(root, "list"), 1, v);
  ASSERT_EQ_STR(SYNC(root), "{\"list\":[1,9,3]}");
  clear(root);
  lr_state_arr_set(at(root, "list"), 3, v); /* append */
  lr_state_arr_insert(at(root, "list"), 0, v);
  lr_state_arr_remove(at(root, "list"), 2);
  ASSERT_EQ_STR(SYNC(root), "{\"list\":[9,1,3,9]}");
  clear(root);
  /* deep inside an object inside the array: the outermost array, whole */
  set_int(at(root, "o.arr.0.p"), "q", 2);
  ASSERT_EQ_STR(SYNC(root), "{\"o\":{\"arr\":[{\"p\":{\"q\":2}},[1,[2]]]}}");
  ASSERT_EQ_STR(PERSIST(root), "{\"o\":{\"arr\":[{\"p\":{\"q\":2}},[1,[2]]]}}");
  ASSERT_EQ_INT(at(root, "o.arr.0.p.q")->dirty[LR_CH_SYNC], 0);
  ASSERT_EQ_INT(at(root, "o.arr")->dirty[LR_CH_SYNC], LR_D_SELF);
  clear(root);
  lr_state_arr_set(at(root, "o.arr.1.1"), 1, v); /* array in array in array */
  ASSERT_EQ_STR(SYNC(root), "{\"o\":{\"arr\":[{\"p\":{\"q\":2}},[1,[2,9]]]}}");
  clear(root);
  /* a new key and a deletion inside an array's object: no "$delete" */
  set_int(at(root, "o.arr.0"), "new", 1);
  ASSERT(lr_state_delete(at(root, "o.arr.0"), "p", 1));
  ASSERT_EQ_STR(SYNC(root), "{\"o\":{\"arr\":[{\"new\":1},[1,[2,9]]]}}");
  ASSERT(!lr_state_has_dels(root, LR_CH_SYNC));
  /* an array replaced by a different array */
  clear(root);
  set_json(root, "list", "[]", 0);
  set_int(at(root, "o"), "n", 4);
  ASSERT_EQ_STR(SYNC(root), "{\"list\":[],\"o\":{\"n\":4}}");
  lr_node_release(v);
  lr_node_release(root);
}

TEST(patch_nosync_child) {
  lr_node *root = J("{\"pub\":1}");
  set_int(root, "pub", 2);
  set_json(root, "secret", "{\"k\":1}", LR_F_NOSYNC);
  ASSERT_EQ_STR(SYNC(root), "{\"pub\":2}");
  ASSERT_EQ_STR(PERSIST(root), "{\"pub\":2,\"secret\":{\"k\":1}}");
  ASSERT_EQ_STR(enc(root, LR_F_NOSYNC).s, "{\"pub\":2}");
  ASSERT_EQ_STR(enc(root, LR_F_NOPERSIST).s, "{\"pub\":2,\"secret\":{\"k\":1}}");
  clear(root);
  /* writes below it are invisible on sync, visible on persist */
  set_int(at(root, "secret"), "k", 2);
  ASSERT(!lr_state_dirty(root, LR_CH_SYNC));
  ASSERT_EQ_STR(PERSIST(root), "{\"secret\":{\"k\":2}}");
  clear(root);
  /* so are its deletion, and deletions below it */
  ASSERT(lr_state_delete(at(root, "secret"), "k", 1));
  ASSERT(!lr_state_dirty(root, LR_CH_SYNC));
  ASSERT_EQ_STR(PERSIST(root), "{\"secret\":{\"k\":\"$delete\"}}");
  clear(root);
  ASSERT(lr_state_delete(root, "secret", 6));
  ASSERT(!lr_state_dirty(root, LR_CH_SYNC));
  ASSERT_EQ_STR(PERSIST(root), "{\"secret\":\"$delete\"}");
  clear(root);
  /* a hidden member inside a whole value sent SELF */
  lr_node *u = J("{\"x\":1,\"hp\":3,\"pw\":\"h\"}");
  lr_obj_get(u, "pw", 2)->flags = LR_F_NOSYNC;
  lr_obj_get(u, "hp", 2)->flags = LR_F_NOPERSIST;
  lr_state_set(root, "u", 1, u, 0);
  lr_node_release(u);
  ASSERT_EQ_STR(SYNC(root), "{\"u\":{\"x\":1,\"hp\":3}}");
  ASSERT_EQ_STR(PERSIST(root), "{\"u\":{\"x\":1,\"pw\":\"h\"}}");
  lr_node_release(root);
}

TEST(patch_nopersist_child) {
  lr_node *root = J("{\"a\":0}");
  set_json(root, "online", "true", LR_F_NOPERSIST);
  set_int(root, "a", 1);
  ASSERT_EQ_STR(SYNC(root), "{\"a\":1,\"online\":true}");
  ASSERT_EQ_STR(PERSIST(root), "{\"a\":1}");
  clear(root);
  set_json(root, "online", "false", 0);
  ASSERT_EQ_STR(SYNC(root), "{\"online\":false}");
  ASSERT(!lr_state_dirty(root, LR_CH_PERSIST));
  ASSERT_EQ_STR(enc(root, LR_F_NOPERSIST).s, "{\"a\":1}");
  lr_node_release(root);
}

TEST(patch_delete_then_readd) {
  lr_node *root = J("{\"u\":{\"a\":1,\"b\":2}}");
  ASSERT(lr_state_delete(at(root, "u"), "a", 1));
  set_int(at(root, "u"), "a", 3);
  ASSERT_EQ_STR(SYNC(root), "{\"u\":{\"a\":3}}");
  ASSERT(!lr_state_has_dels(root, LR_CH_SYNC) && !lr_state_has_dels(root, LR_CH_PERSIST));
  /* same value as before the delete: still sent, the client dropped nothing */
  ASSERT(lr_state_delete(at(root, "u"), "b", 1));
  set_int(at(root, "u"), "b", 2);
  ASSERT_EQ_STR(SYNC(root), "{\"u\":{\"a\":3,\"b\":2}}");
  /* and deleted again */
  ASSERT(lr_state_delete(at(root, "u"), "b", 1));
  ASSERT_EQ_STR(SYNC(root), "{\"u\":{\"a\":3,\"b\":\"$delete\"}}");
  lr_node_release(root);
}

TEST(patch_clear_dirty_resets) {
  lr_node *root = J("{\"a\":{\"b\":0},\"l\":[1],\"d\":{\"x\":1}}");
  set_int(at(root, "a"), "b", 1);
  lr_state_arr_remove(at(root, "l"), 0);
  ASSERT(lr_state_delete(at(root, "d"), "x", 1));
  lr_state_clear_dirty(root, LR_CH_SYNC);
  ASSERT_EQ_STR(SYNC(root), "{}");
  ASSERT(!lr_state_dirty(root, LR_CH_SYNC) && !lr_state_has_dels(root, LR_CH_SYNC));
  ASSERT_EQ_INT(at(root, "a.b")->dirty[LR_CH_SYNC], 0);
  ASSERT_EQ_INT(lr_obj_dels(at(root, "d"), LR_CH_SYNC).len, 0);
  /* the other channel is untouched */
  ASSERT_EQ_STR(PERSIST(root), "{\"a\":{\"b\":1},\"l\":[],\"d\":{\"x\":\"$delete\"}}");
  lr_state_clear_dirty(root, LR_CH_PERSIST);
  ASSERT_EQ_STR(PERSIST(root), "{}");
  /* the next window holds only the new writes */
  set_int(at(root, "a"), "b", 2);
  ASSERT_EQ_STR(SYNC(root), "{\"a\":{\"b\":2}}");
  lr_node_release(root);
}

/* lr_state_has_dels answers from a process-wide count of pending deleted
 * keys when it is 0: every way a key leaves a list must lower it. */
TEST(has_dels_count) {
  lr_node *a = J("{\"users\":{\"p1\":{\"x\":1},\"p2\":{\"x\":2}}}");
  lr_node *b = J("{\"n\":1}");
  clear(a);
  clear(b);
  ASSERT(lr_state_delete(at(a, "users"), "p1", 2));
  ASSERT(lr_state_has_dels(a, LR_CH_SYNC) && lr_state_has_dels(a, LR_CH_PERSIST));
  set_int(b, "n", 2); /* a change in another tree, no deletion there */
  ASSERT(!lr_state_has_dels(b, LR_CH_SYNC));
  set_int(at(a, "users"), "p1", 5); /* re-added before the flush */
  ASSERT(!lr_state_has_dels(a, LR_CH_SYNC) && !lr_state_has_dels(a, LR_CH_PERSIST));
  ASSERT(lr_state_delete(at(a, "users"), "p2", 2));
  clear(a); /* flushed */
  ASSERT(!lr_state_has_dels(a, LR_CH_SYNC) && !lr_state_has_dels(a, LR_CH_PERSIST));
  ASSERT(lr_state_delete(at(a, "users"), "p1", 2));
  ASSERT(lr_state_has_dels(a, LR_CH_SYNC));
  lr_node_release(a); /* freed with a deletion pending */
  lr_node *c = J("{\"users\":{\"p3\":{\"x\":1}}}");
  clear(c);
  set_int(at(c, "users.p3"), "x", 4);
  ASSERT(!lr_state_has_dels(c, LR_CH_SYNC) && !lr_state_has_dels(c, LR_CH_PERSIST));
  ASSERT(lr_state_delete(at(c, "users"), "p3", 2));
  ASSERT(lr_state_has_dels(c, LR_CH_PERSIST));
  lr_node_release(c);
  lr_node_release(b);
}

TEST(patch_self_covers_later_writes) {
  lr_node *root = J("{\"n\":1}");
  lr_node *cfg = set_json(root, "cfg", "{\"x\":{\"y\":1},\"d\":1}", 0);
  set_int(at(root, "cfg.x"), "y", 2);
  ASSERT(lr_state_delete(cfg, "d", 1));
  ASSERT_EQ_INT(at(root, "cfg.x.y")->dirty[LR_CH_SYNC], 0);
  ASSERT(!lr_state_has_dels(root, LR_CH_SYNC));
  ASSERT_EQ_STR(SYNC(root), "{\"cfg\":{\"x\":{\"y\":2}}}");
  /* explicit mark of the root: the whole state */
  lr_state_mark(root);
  ASSERT_EQ_STR(SYNC(root), "{\"n\":1,\"cfg\":{\"x\":{\"y\":2}}}");
  lr_node_release(root);
}

TEST(patch_stale_marks_below_self_are_cleared) {
  lr_node *root = J("{\"o\":{\"p\":{\"q\":1}},\"z\":0}");
  set_int(at(root, "o.p"), "q", 2); /* marks q SELF, p and o CHILD */
  lr_state_mark(at(root, "o"));     /* then o SELF over them */
  ASSERT_EQ_STR(SYNC(root), "{\"o\":{\"p\":{\"q\":2}}}");
  clear(root);
  ASSERT_EQ_INT(at(root, "o.p.q")->dirty[LR_CH_SYNC], 0);
  set_int(root, "z", 1);
  set_int(at(root, "o"), "r", 1);
  ASSERT_EQ_STR(SYNC(root), "{\"o\":{\"r\":1},\"z\":1}");
  lr_node_release(root);
}

TEST(patch_assign_aliasing) {
  lr_node *root = J("{\"a\":{\"b\":{\"c\":1},\"d\":2}}");
  lr_state_set(root, "a", 1, at(root, "a.b"), 0); /* a = a.b */
  ASSERT_EQ_STR(ENC(root), "{\"a\":{\"c\":1}}");
  ASSERT_EQ_STR(SYNC(root), "{\"a\":{\"c\":1,\"b\":\"$delete\",\"d\":\"$delete\"}}");
  lr_node_release(root);
  root = J("{\"a\":{\"b\":{\"c\":1},\"d\":2}}");
  lr_state_set(at(root, "a"), "b", 1, at(root, "a"), 0); /* a.b = a */
  ASSERT_EQ_STR(ENC(root), "{\"a\":{\"b\":{\"b\":{\"c\":1},\"d\":2},\"d\":2}}");
  lr_node_release(root);
}

/* ---- persist walk ---- */

typedef struct {
  lr_buf log;
} plog;

static void on_put(void *ud, const char *path, size_t pathlen, const char *json, size_t jsonlen,
                   const lr_node *n) {
  (void)n;
  plog *l = ud;
  ASSERT(path[pathlen] == '\0');
  lr_buf_printf(&l->log, "put %.*s=%.*s;", (int)pathlen, path, (int)jsonlen, json);
}
static void on_del(void *ud, const char *path, size_t pathlen) {
  plog *l = ud;
  lr_buf_printf(&l->log, "del %.*s;", (int)pathlen, path);
}

static text walk(const lr_node *root) {
  plog l;
  lr_buf_init(&l.log);
  lr_persist_ops ops = {.ud = &l, .put = on_put, .del = on_del};
  lr_json_walk_persist(root, &ops);
  text t;
  snprintf(t.s, sizeof t.s, "%s", lr_buf_cstr(&l.log));
  lr_buf_free(&l.log);
  return t;
}

TEST(persist_walk_paths) {
  lr_node *root = J("{\"users\":{\"u1\":{\"x\":1,\"hp\":2},\"u2\":{\"x\":0}},\"list\":[1],"
                    "\"m\":{\"a\":1},\"c\":0}");
  ASSERT_EQ_STR(walk(root).s, "");
  set_int(at(root, "users.u1"), "x", 5);
  ASSERT(lr_state_delete(at(root, "users"), "u2", 2));
  lr_state_arr_remove(at(root, "list"), 0);
  set_json(at(root, "m"), "b", "{\"k\":[true]}", 0);
  ASSERT(lr_state_delete(at(root, "m"), "a", 1));
  set_json(root, "sess", "\"hidden\"", LR_F_NOPERSIST);
  set_int(root, "c", 3);
  ASSERT_EQ_STR(walk(root).s, "put users.u1.x=5;del users.u2;put list=[];put m.b={\"k\":[true]};"
                              "del m.a;put c=3;");
  lr_state_clear_dirty(root, LR_CH_PERSIST);
  ASSERT_EQ_STR(walk(root).s, "");
  /* an empty key is still a path level, as in lr_node_path */
  lr_node *e = set_json(root, "", "{\"x\":1}", 0);
  lr_state_clear_dirty(root, LR_CH_PERSIST);
  set_int(e, "x", 2);
  lr_buf path;
  lr_buf_init(&path);
  lr_node_path(lr_obj_get(e, "x", 1), &path);
  ASSERT_EQ_STR(path.data, ".x");
  lr_buf_free(&path);
  ASSERT_EQ_STR(walk(root).s, "put .x=2;");
  ASSERT(lr_state_delete(root, "", 0));
  lr_state_clear_dirty(root, LR_CH_PERSIST);
  lr_state_mark(root);
  ASSERT_EQ_STR(walk(root).s, "put ={\"users\":{\"u1\":{\"x\":5,\"hp\":2}},\"list\":[],"
                              "\"m\":{\"b\":{\"k\":[true]}},\"c\":3};");
  lr_node_release(root);
}

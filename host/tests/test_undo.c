/*
 * test_undo.c - unit tests of undo.c: a log per Lua state. Writes recorded
 * in one log are rolled back by it alone; a log with no open transaction
 * records nothing, whatever another log has open; nested marks hand their
 * records to the enclosing transaction; the two records of an existing key
 * share one copy of the key; a set of a scalar is one record.
 * Must not: depend on Lua (the logs are driven directly).
 */
#include "test.h"
#include "undo.h"
#include "value.h"

static int64_t get_int(lr_node *obj, const char *k) {
  lr_node *n = lr_obj_get(obj, k, strlen(k));
  return n && n->type == LR_INT ? n->u.i : -1;
}

static void set_int(lr_undo *u, lr_node *obj, const char *k, int64_t v) {
  lr_node *n = lr_node_int(v);
  lr_undo_record_key(u, obj, k, strlen(k));
  lr_state_set(obj, k, strlen(k), n, 0);
  lr_node_release(n);
}

TEST(undo_logs_are_per_state) {
  lr_undo *a = lr_undo_new(), *b = lr_undo_new();
  lr_node *root = lr_node_new(LR_OBJECT);
  set_int(a, root, "x", 1); /* no transaction open anywhere: not recorded */
  ASSERT_EQ_INT(lr_undo_records(a), 0);
  size_t ma = lr_undo_mark(a);
  set_int(b, root, "y", 2); /* b has no transaction, even though a has one */
  ASSERT_EQ_INT(lr_undo_records(b), 0);
  set_int(a, root, "x", 5);
  ASSERT(lr_undo_records(a) > 0);
  lr_undo_rollback(a, ma);
  ASSERT_EQ_INT(get_int(root, "x"), 1);
  ASSERT_EQ_INT(get_int(root, "y"), 2);
  ASSERT_EQ_INT(lr_undo_records(a), 0);
  lr_node_release(root);
  lr_undo_free(a);
  lr_undo_free(b);
}

TEST(undo_nested_success_is_rolled_back_with_the_outer_call) {
  lr_undo *u = lr_undo_new();
  lr_node *root = lr_node_new(LR_OBJECT);
  set_int(u, root, "x", 1);
  size_t outer = lr_undo_mark(u);
  size_t inner = lr_undo_mark(u);
  set_int(u, root, "x", 2);
  lr_undo_release(u, inner); /* the inner call succeeded: its records stay */
  ASSERT(lr_undo_records(u) > 0);
  set_int(u, root, "z", 3);
  lr_undo_rollback(u, outer);
  ASSERT_EQ_INT(get_int(root, "x"), 1);
  ASSERT(lr_obj_get(root, "z", 1) == NULL);
  /* A successful outermost call drops its records. */
  size_t m = lr_undo_mark(u);
  set_int(u, root, "x", 4);
  lr_undo_release(u, m);
  ASSERT_EQ_INT(lr_undo_records(u), 0);
  ASSERT_EQ_INT(get_int(root, "x"), 4);
  /* Records left in a log (a mark never closed) are freed with it. */
  lr_undo_mark(u);
  set_int(u, root, "x", 5);
  lr_node_release(root);
  lr_undo_free(u);
}

/* A recorded write of an existing key keeps two records (the node to
 * reattach, its contents) that share one copy of the key: rolled back or
 * released, each key is restored from and freed once (the sanitizer build
 * checks the frees). */
TEST(undo_existing_key_records_share_their_key) {
  lr_undo *u = lr_undo_new();
  lr_node *root = lr_node_new(LR_OBJECT);
  set_int(u, root, "player", 1);
  lr_node *orig = lr_obj_get(root, "player", 6);
  size_t m = lr_undo_mark(u);
  set_int(u, root, "player", 2); /* assigned in place */
  lr_undo_record_key(u, root, "player", 6);
  lr_state_delete(root, "player", 6); /* then deleted */
  ASSERT(lr_obj_get(root, "player", 6) == NULL);
  lr_undo_rollback(u, m);
  ASSERT(lr_obj_get(root, "player", 6) == orig); /* the same node, its old value */
  ASSERT_EQ_INT(get_int(root, "player"), 1);
  ASSERT_EQ_INT(lr_undo_records(u), 0);
  m = lr_undo_mark(u);
  set_int(u, root, "player", 3);
  set_int(u, root, "player", 4);
  lr_undo_release(u, m);
  ASSERT_EQ_INT(get_int(root, "player"), 4);
  lr_node_release(root);
  lr_undo_free(u);
}

/* lr_undo_record_set: a set of a key holding null, a boolean or a number is
 * one record (the node, its old value); rolled back after the key was also
 * deleted and re-added, or set to an object, the same node comes back with
 * its old type and value. Strings, containers and keys under an array take
 * lr_undo_record_key's records. */
TEST(undo_scalar_set_is_one_record) {
  lr_undo *u = lr_undo_new();
  lr_node *root = lr_node_new(LR_OBJECT);
  lr_node *f = lr_node_float(2.5), *b = lr_node_bool(true), *nul = lr_node_null();
  lr_node *obj = lr_node_new(LR_OBJECT), *s = lr_node_string("long enough to be stored apart", 30);
  lr_state_set(root, "f", 1, f, 0);
  lr_state_set(root, "b", 1, b, 0);
  lr_state_set(root, "n", 1, nul, 0);
  lr_state_set(root, "s", 1, s, 0);
  lr_node *fnode = lr_obj_get(root, "f", 1);
  size_t m = lr_undo_mark(u);
  lr_undo_record_set(u, root, "f", 1);
  ASSERT_EQ_INT(lr_undo_records(u), 1);
  lr_state_set(root, "f", 1, obj, 0); /* a float becomes an object, in place */
  lr_undo_record_key(u, root, "f", 1);
  lr_state_delete(root, "f", 1); /* then the key goes */
  set_int(u, root, "f", 9);      /* and comes back as another node */
  lr_undo_record_set(u, root, "b", 1);
  lr_state_set(root, "b", 1, nul, 0);
  lr_undo_record_set(u, root, "n", 1);
  lr_state_set(root, "n", 1, b, 0);
  size_t before = lr_undo_records(u);
  lr_undo_record_set(u, root, "s", 1); /* a string: the two records of record_key */
  ASSERT_EQ_INT(lr_undo_records(u), before + 2);
  lr_state_set(root, "s", 1, f, 0);
  lr_undo_rollback(u, m);
  ASSERT(lr_obj_get(root, "f", 1) == fnode);
  ASSERT_EQ_INT(fnode->type, LR_FLOAT);
  ASSERT(fnode->u.f == 2.5);
  ASSERT_EQ_INT(lr_obj_get(root, "b", 1)->type, LR_BOOL);
  ASSERT(lr_obj_get(root, "b", 1)->u.b);
  ASSERT_EQ_INT(lr_obj_get(root, "n", 1)->type, LR_NULL);
  ASSERT_EQ_INT(lr_obj_get(root, "s", 1)->type, LR_STRING);
  ASSERT_EQ_INT(lr_strlen(lr_obj_get(root, "s", 1)), 30);
  ASSERT_EQ_INT(lr_undo_records(u), 0);
  /* under an array: the outermost array's copy */
  lr_node *arr = lr_node_new(LR_ARRAY);
  lr_state_set(root, "a", 1, arr, 0);
  lr_node *inner = lr_node_new(LR_OBJECT);
  lr_state_arr_set(lr_obj_get(root, "a", 1), 0, inner);
  lr_node *in = lr_obj_get(root, "a", 1)->u.arr.items[0];
  set_int(u, in, "x", 1); /* no transaction open: not recorded */
  m = lr_undo_mark(u);
  lr_undo_record_set(u, in, "x", 1);
  lr_state_set(in, "x", 1, f, 0);
  lr_undo_rollback(u, m);
  ASSERT_EQ_INT(get_int(lr_obj_get(root, "a", 1)->u.arr.items[0], "x"), 1);
  lr_node_release(arr);
  lr_node_release(inner);
  lr_node_release(f);
  lr_node_release(b);
  lr_node_release(nul);
  lr_node_release(obj);
  lr_node_release(s);
  lr_node_release(root);
  lr_undo_free(u);
}

/*
 * test_undo.c - unit tests of undo.c: a log per Lua state. Writes recorded
 * in one log are rolled back by it alone; a log with no open transaction
 * records nothing, whatever another log has open; nested marks hand their
 * records to the enclosing transaction; the two records of an existing key
 * share one copy of the key.
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

/*
 * undo.c - the transaction log of state writes (see undo.h).
 *
 * Records are restored newest first. A write under an array is recorded as a
 * copy of the OUTERMOST array (array nodes keep their identity, so restoring
 * the whole array in place undoes any change below it). A deleted key keeps
 * the detached node itself, so later records that refer to that node still
 * restore into the tree. The two records of a write to an existing key
 * (reattach, assign) share one copy of the key: the newer borrows it, and
 * records are always restored and freed newest first. A set of a key that
 * holds null, a boolean or a number is one record: the node and its old
 * value (lr_undo_record_set).
 * Must not: call Lua, encode, or touch storage.
 */
#include "undo.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

enum { U_ASSIGN, U_REATTACH, U_ABSENT, U_ARRAY, U_SCALAR };

typedef struct {
  int kind;
  lr_node *container; /* retained; SCALAR: the node that was set */
  char *key;          /* objects only: owned, or borrowed from the record before it */
  size_t keylen;
  lr_node *old;  /* retained: a clone (ASSIGN, ARRAY) or the detached node (REATTACH) */
  bool borrowed; /* key belongs to the record before it (freed after this one) */
  uint8_t stype; /* SCALAR: the node's old type (LR_NULL, LR_BOOL, LR_INT, LR_FLOAT) ... */
  int64_t sv;    /* ... and the 8 bytes of its value (u.b, u.i or u.f) */
} urec;

struct lr_undo {
  urec *log;
  size_t nlog, caplog;
  int depth; /* open transactions; writes outside any are not recorded */
};

lr_undo *lr_undo_new(void) {
  return lr_xcalloc(1, sizeof(lr_undo));
}

static void free_rec(urec *r);

void lr_undo_free(lr_undo *u) {
  if (!u) return;
  while (u->nlog > 0)
    free_rec(&u->log[--u->nlog]);
  free(u->log);
  free(u);
}

size_t lr_undo_records(const lr_undo *u) {
  return u->nlog;
}

size_t lr_undo_mark(lr_undo *u) {
  u->depth++;
  return u->nlog;
}

static void push(lr_undo *u, urec r) {
  if (u->nlog == u->caplog) {
    u->caplog = u->caplog ? u->caplog * 2 : 64;
    u->log = lr_xrealloc(u->log, u->caplog * sizeof *u->log);
  }
  u->log[u->nlog++] = r;
}

static lr_node *outermost_array(lr_node *n) {
  lr_node *found = NULL;
  for (lr_node *p = n; p; p = p->parent)
    if (p->type == LR_ARRAY) found = p;
  return found;
}

void lr_undo_record_array(lr_undo *u, lr_node *arr) {
  if (!u->depth) return;
  lr_node *outer = outermost_array(arr);
  if (!outer) outer = arr;
  push(u, (urec){U_ARRAY, lr_node_retain(outer), NULL, 0, lr_node_clone(outer), false, 0, 0});
}

void lr_undo_record_key(lr_undo *u, lr_node *obj, const char *key, size_t keylen) {
  if (!u->depth) return;
  lr_node *arr = outermost_array(obj);
  if (arr) {
    push(u, (urec){U_ARRAY, lr_node_retain(arr), NULL, 0, lr_node_clone(arr), false, 0, 0});
    return;
  }
  lr_node *cur = lr_obj_get(obj, key, keylen);
  urec r = {U_ABSENT, lr_node_retain(obj), lr_xstrndup(key, keylen), keylen, NULL, false, 0, 0};
  if (cur) {
    /* The node may be detached by this write (delete) or changed in place
     * (assign). Keep both: the node itself to reattach, and its contents.
     * Records are restored and freed newest first, so the second one can
     * borrow the first one's key. */
    r.kind = U_REATTACH;
    r.old = lr_node_retain(cur);
    push(u, r);
    urec a = {U_ASSIGN, lr_node_retain(obj), r.key, keylen, lr_node_clone(cur), true, 0, 0};
    push(u, a);
    return;
  }
  push(u, r);
}

void lr_undo_record_set(lr_undo *u, lr_node *obj, const char *key, size_t keylen) {
  if (!u->depth) return;
  lr_node *cur = outermost_array(obj) ? NULL : lr_obj_get(obj, key, keylen);
  if (!cur || cur->type == LR_STRING || cur->type == LR_ARRAY || cur->type == LR_OBJECT) {
    lr_undo_record_key(u, obj, key, keylen);
    return;
  }
  /* A set keeps the node where it is (lr_state_assign changes it in place):
   * restoring its old value into it undoes the write, once the newer records
   * (a later delete of the key among them) put it back where it was. */
  urec r = {U_SCALAR, lr_node_retain(cur), NULL, 0, NULL, false, cur->type, 0};
  _Static_assert(sizeof r.sv == sizeof cur->u.i && sizeof cur->u.f == sizeof r.sv,
                 "a scalar's value is 8 bytes");
  memcpy(&r.sv, &cur->u, sizeof r.sv);
  push(u, r);
}

/* Remove key from obj's pending deletions (it is about to exist again). */
static void forget_deletion(lr_node *obj, const char *key, size_t keylen) {
  for (int ch = 0; ch < LR_NCH && obj->xh; ch++) {
    lr_keylist *kl = &lr_obj_x(obj)->dels[ch];
    for (uint32_t i = 0; i < kl->len; i++) {
      if (strlen(kl->keys[i]) == keylen && memcmp(kl->keys[i], key, keylen) == 0) {
        free(kl->keys[i]);
        kl->keys[i] = kl->keys[--kl->len];
        lr_state_dels_dropped(ch, 1);
        i--;
      }
    }
  }
}

static void free_rec(urec *r) {
  if (r->container) lr_node_release(r->container);
  if (r->old) lr_node_release(r->old);
  if (!r->borrowed) free(r->key);
}

void lr_undo_rollback(lr_undo *u, size_t mark) {
  u->depth--;
  while (u->nlog > mark) {
    urec *r = &u->log[--u->nlog];
    switch (r->kind) {
    case U_ARRAY:
      lr_state_assign(r->container, r->old);
      break;
    case U_ABSENT:
      lr_state_delete(r->container, r->key, r->keylen);
      break;
    case U_REATTACH: {
      lr_node *cur = lr_obj_get(r->container, r->key, r->keylen);
      if (cur != r->old) {
        /* Put the original node back (it was deleted or replaced). */
        if (r->old->parent) {
          /* Still attached elsewhere: nothing sensible to do but copy. */
          lr_state_set(r->container, r->key, r->keylen, r->old, r->old->flags);
        } else {
          forget_deletion(r->container, r->key, r->keylen);
          lr_obj_put(r->container, r->key, r->keylen, lr_node_retain(r->old));
          lr_state_mark(r->old);
        }
      }
      break;
    }
    case U_ASSIGN: {
      lr_node *cur = lr_obj_get(r->container, r->key, r->keylen);
      if (cur) lr_state_assign(cur, r->old);
      break;
    }
    case U_SCALAR: {
      lr_node old = {.type = r->stype, .refs = 1}; /* lr_state_assign copies it */
      memcpy(&old.u, &r->sv, sizeof r->sv);
      lr_state_assign(r->container, &old);
      break;
    }
    }
    free_rec(r);
  }
}

void lr_undo_release(lr_undo *u, size_t mark) {
  /* A nested call that succeeded hands its records to the enclosing one: if
   * that fails later, these writes are rolled back with it. */
  if (--u->depth > 0) return;
  while (u->nlog > mark)
    free_rec(&u->log[--u->nlog]);
  if (u->nlog == 0 && u->caplog > 1024) {
    free(u->log);
    u->log = NULL;
    u->caplog = 0;
  }
}

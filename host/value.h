/*
 * value.h - the C-owned JSON value tree that holds room state, and its dirty
 * tracking for the two output channels (sync to clients, persist to storage).
 *
 * Owns: lr_node allocation, refcounts, object/array containers, in-place
 * assignment with dirty marking, and per-channel pending deletions.
 * Must not: encode JSON (json.c), know about Lua, rooms, sockets or storage.
 *
 * Ownership model
 * - Every node is refcounted. A container holds one reference on each child.
 *   A Lua proxy (lua_api.c) holds one reference on the node it points to.
 * - A node has at most one parent. When it is removed from its parent (key
 *   deleted, array element popped), parent becomes NULL ("detached") and the
 *   parent's reference is dropped; it is freed when the last reference goes.
 * - Assignment through lr_state_assign() mutates the target node IN PLACE
 *   (its identity, flags and outstanding proxies stay valid), even when the
 *   type changes.
 *
 * Dirty tracking (per channel ch in {LR_CH_SYNC, LR_CH_PERSIST})
 * - LR_D_SELF on a node: its whole current value must be emitted at its path.
 * - LR_D_CHILD on a node: descend into it; some child is dirty or it has
 *   pending deletions (lr_obj_x(obj)->dels[ch]).
 * - A change under an array marks the OUTERMOST array ancestor LR_D_SELF
 *   (arrays are always re-sent whole, protocol.md Part 1 row 3).
 * - A node whose own flags or any ancestor's flags exclude the channel
 *   (LR_F_NOSYNC for sync, LR_F_NOPERSIST for persist) is never marked on it.
 * - Marking propagates LR_D_CHILD up to the root, stopping early when an
 *   ancestor already has it (or has LR_D_SELF: then nothing more is needed).
 * - Deleting key k from object o records k in lr_obj_x(o)->dels[ch] (unless o or
 *   an ancestor is already SELF on ch, or o is under an array: then the array
 *   is marked SELF instead). Re-adding k before the flush removes it from dels
 *   and marks the new child SELF.
 * - lr_state_clear_dirty(root, ch) clears every mark and deletion of ch.
 * - An object with a hash index (more than LR_OBJ_INDEX_MIN members once)
 *   also keeps, per channel, the list of its members marked on it
 *   (lr_obj_dirty_members), so the walks over a large object (the players of
 *   a room) visit what changed, not every member. It is exact under every
 *   mark, clear, delete, replace, re-add and free.
 */
#ifndef LR_VALUE_H
#define LR_VALUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum lr_type {
  LR_NULL = 0,
  LR_BOOL,
  LR_INT,   /* int64 */
  LR_FLOAT, /* double */
  LR_STRING,
  LR_OBJECT, /* ordered: insertion order */
  LR_ARRAY
} lr_type;

enum { LR_CH_SYNC = 0, LR_CH_PERSIST = 1, LR_NCH = 2 };

/* node->flags */
#define LR_F_NOSYNC 0x01    /* subtree never sent to clients */
#define LR_F_NOPERSIST 0x02 /* subtree never written to storage */
/* The store holds nothing below this scalar's path: its last write there
 * deleted the path's prefix and was committed (sync.c sets it then). A node
 * that becomes an object or an array loses it (replace_contents), and no
 * copy carries it (lr_node_clone, insert_new): a copy goes where the store
 * may hold anything. Its next write of a scalar needs no prefix deletion. */
#define LR_F_STORED_FLAT 0x04

/* node->dirty[ch] */
#define LR_D_SELF 0x01
#define LR_D_CHILD 0x02

typedef struct lr_node lr_node;

/* A member's key is NUL-terminated and may contain any bytes except NUL. Keys
 * shorter than LR_KEY_INLINE bytes are stored in the member itself (moving
 * with it when the member array grows or shifts), longer ones in an owned
 * allocation: read it with lr_member_key and lr_member_keylen, and do not
 * keep the pointer across a change of the object. A member is 24 bytes: an
 * inline key's length is the last byte of the 16 the key takes (a long key
 * has LR_KEY_LONG there, its pointer and length before it). */
#define LR_KEY_INLINE 15
#define LR_KEY_LONG 0xFF
typedef struct lr_member {
  lr_node *val; /* owned reference */
  union {
    struct {
      char in[LR_KEY_INLINE]; /* NUL-terminated */
      uint8_t len;            /* < LR_KEY_INLINE, or LR_KEY_LONG */
    } s;
    struct {
      char *p;
      uint32_t len;
      uint8_t pad_[3];
      uint8_t tag; /* LR_KEY_LONG, the same byte as s.len */
    } l;
  } k;
} lr_member;

static inline const char *lr_member_key(const lr_member *m) {
  return m->k.s.len != LR_KEY_LONG ? m->k.s.in : m->k.l.p;
}

static inline uint32_t lr_member_keylen(const lr_member *m) {
  return m->k.s.len != LR_KEY_LONG ? m->k.s.len : m->k.l.len;
}

typedef struct lr_keylist { /* pending deleted keys of one channel */
  char **keys;              /* owned NUL-terminated strings */
  uint32_t len, cap;
} lr_keylist;

typedef struct lr_nodelist { /* members of an object marked on one channel */
  lr_node **v;               /* borrowed: the object holds the references */
  uint32_t len, cap;
} lr_nodelist;

/* Objects with more members than this get an open-addressing hash index and
 * the per-channel lists of marked members. */
#define LR_OBJ_INDEX_MIN 8

/* An object's side data, allocated on first use (value_ext.c) and reached
 * through the node's 32-bit handle xh: most objects never need it, and a
 * node (mostly scalars) stays 40 bytes. */
typedef struct lr_objx {
  uint32_t *idx;   /* open-addressing hash index (member position + 1, 0 = empty); NULL while the
                      object is small */
  uint32_t idxcap; /* slots of idx */
  lr_keylist dels[LR_NCH];
  lr_nodelist dirty[LR_NCH]; /* kept only while idx is set */
} lr_objx;

/* A string value shorter than LR_STR_INLINE bytes is stored in its node
 * (no allocation of its own), a longer one in an owned allocation. */
#define LR_STR_INLINE 15
#define LR_STR_LONG 0xFF

struct lr_node {
  uint8_t type;  /* lr_type */
  uint8_t flags; /* LR_F_* */
  uint8_t dirty[LR_NCH];
  uint32_t refs;
  lr_node *parent; /* NULL for a root or a detached node */
  uint32_t pos;    /* member index in parent, when parent is an object */
  uint32_t xh;     /* LR_OBJECT: handle of its lr_objx (value_ext.c), 0 = none */
  union {
    bool b;
    int64_t i;
    double f;
    union { /* valid UTF-8, NUL-terminated: read with lr_str and lr_strlen */
      struct {
        char b[LR_STR_INLINE]; /* a string shorter than LR_STR_INLINE bytes */
        uint8_t len;           /* < LR_STR_INLINE, or LR_STR_LONG */
      } in;
      struct {
        char *p; /* owned */
        uint32_t len;
        uint8_t pad_[3];
        uint8_t tag; /* LR_STR_LONG, the same byte as in.len */
      } ext;
    } str;
    struct {
      lr_node **items; /* owned references */
      uint32_t len, cap;
    } arr;
    struct {
      lr_member *m; /* members in insertion order */
      uint32_t len, cap;
    } obj;
  } u;
};

/* The bytes and length of LR_STRING node n (the pointer is valid until n
 * changes). */
static inline const char *lr_str(const lr_node *n) {
  return n->u.str.in.len != LR_STR_LONG ? n->u.str.in.b : n->u.str.ext.p;
}

static inline size_t lr_strlen(const lr_node *n) {
  return n->u.str.in.len != LR_STR_LONG ? n->u.str.in.len : n->u.str.ext.len;
}

/* The side table of value_ext.c: handle h is lr_objx_tab[h - 1]. */
extern lr_objx **lr_objx_tab;

/* Object o's side data, or NULL while it has none. */
static inline lr_objx *lr_obj_x(const lr_node *o) {
  return o->xh ? lr_objx_tab[o->xh - 1] : NULL;
}

/* The pending deletions of object o on channel ch (empty when it has none). */
static inline lr_keylist lr_obj_dels(const lr_node *o, int ch) {
  lr_keylist none = {0};
  const lr_objx *x = lr_obj_x(o);
  return x ? x->dels[ch] : none;
}

/* When o keeps marked-member lists (it has a hash index): sets *list to its
 * members marked on ch, in member order (o's private list is sorted in place
 * for it), *n to their count, and returns true. Otherwise returns false: the
 * caller scans every member (o is small). */
bool lr_obj_dirty_members(const lr_node *o, int ch, lr_node *const **list, uint32_t *n);

/* ---- construction and lifetime (no dirty marking) ---- */
lr_node *lr_node_new(lr_type t); /* empty container / zero scalar, refs == 1 */
lr_node *lr_node_null(void);
lr_node *lr_node_bool(bool b);
lr_node *lr_node_int(int64_t i);
lr_node *lr_node_float(double f);
lr_node *lr_node_string(const char *s, size_t len); /* copies; caller validated UTF-8 */
static inline lr_node *lr_node_retain(lr_node *n) {
  n->refs++;
  return n;
}
/* Drop one reference; at zero frees the node and releases its children. */
void lr_node_release(lr_node *n);
/* Number of nodes alive in the process (an allocation counter for tests). */
size_t lr_node_live(void);
/* Deep copy (flags copied, dirty marks not, parent NULL, refs == 1). */
lr_node *lr_node_clone(const lr_node *n);
/* Deep structural equality (int 3 == float 3.0 is true; flags ignored). */
bool lr_node_equal(const lr_node *a, const lr_node *b);

/* ---- plain container access (no dirty marking; for building values) ---- */
lr_node *lr_obj_get(const lr_node *obj, const char *key, size_t keylen); /* borrowed or NULL */
/* Insert or replace key; takes ownership of child's reference. The child must
 * be detached (parent NULL). A replaced child is detached and released. */
void lr_obj_put(lr_node *obj, const char *key, size_t keylen, lr_node *child);
/* Remove key; returns true if it existed (child detached and released). */
bool lr_obj_remove(lr_node *obj, const char *key, size_t keylen);
void lr_arr_push(lr_node *arr, lr_node *child); /* takes ownership */
static inline lr_node *lr_arr_get(const lr_node *arr, uint32_t i) {
  return i < arr->u.arr.len ? arr->u.arr.items[i] : NULL;
}
/* Position of child in its parent (array index or member index), or -1. */
int64_t lr_node_index_in_parent(const lr_node *child);
/* Key of child in its parent object (borrowed), or NULL if parent is not an object. */
/* Points into the parent's member array: valid until the parent changes. */
const char *lr_node_key_in_parent(const lr_node *child, uint32_t *keylen);
/* Dot-joined path from the root ("users.AbC.x"; array indices as decimal,
 * 0-based; "" for the root). Written into out (reset first). */
struct lr_buf;
void lr_node_path(const lr_node *n, struct lr_buf *out);

/* ---- state writes (mutate in place, mark dirty) ---- */

/* Make target's value equal to src (src is not consumed, it is read/copied).
 * - scalar -> scalar: if equal (lr_node_equal) nothing is marked; otherwise
 *   the value is replaced and target is marked SELF.
 * - object -> object: merge: keys of target absent from src are deleted
 *   (lr_state_delete semantics, recorded in dels); each key of src is
 *   assigned recursively (existing child nodes are reused in place, new ones
 *   are cloned from src and marked SELF).
 * - array -> array: items replaced by clones of src's items; marked SELF if
 *   anything differs.
 * - type change: the node's old contents are freed (old children detached),
 *   it takes a clone of src's contents, and is marked SELF.
 * Target keeps its flags. Marking follows the rules at the top of this file. */
void lr_state_assign(lr_node *target, const lr_node *src);

/* obj[key] = src. If key exists, lr_state_assign on the existing child.
 * Otherwise a clone of src is inserted and marked SELF (with child_flags).
 * Returns the child node (borrowed). obj must be an object. */
lr_node *lr_state_set(lr_node *obj, const char *key, size_t keylen, const lr_node *src,
                      uint8_t child_flags);
/* Delete obj[key]: records the deletion (see top). Returns false if absent. */
bool lr_state_delete(lr_node *obj, const char *key, size_t keylen);
/* arr[i] = src, 0 <= i <= len (i == len appends). Marks the array SELF. */
void lr_state_arr_set(lr_node *arr, uint32_t i, const lr_node *src);
/* Remove arr[i], shifting later items down. Marks the array SELF. */
void lr_state_arr_remove(lr_node *arr, uint32_t i);
/* Insert a clone of src at i (0 <= i <= len), shifting. Marks SELF. */
void lr_state_arr_insert(lr_node *arr, uint32_t i, const lr_node *src);

/* Mark n changed on every channel its flags allow (used after direct edits). */
void lr_state_mark(lr_node *n);
/* True if the tree under root has anything pending on ch. */
static inline bool lr_state_dirty(const lr_node *root, int ch) {
  return root->dirty[ch] != 0;
}
/* Clear all marks and pending deletions of channel ch below root. */
void lr_state_clear_dirty(lr_node *root, int ch);
/* True if any pending deletion of channel ch exists below root. */
bool lr_state_has_dels(const lr_node *root, int ch);
/* n pending deleted keys of channel ch were dropped outside value.c (the
 * undo log's forget_deletion): keeps lr_state_has_dels's count exact. */
void lr_state_dels_dropped(int ch, uint32_t n);

#endif

/*
 * storage_memtree.h - the ordered keys of one room of the memory store
 * (storage_memtree.c): an AVL tree of key -> JSON text in bytewise order.
 *
 * Owns: the node layout and the tree operations. Must not: know rooms,
 * namespaces, snapshots or the exact-key index (storage_memory.c).
 */
#ifndef LR_STORAGE_MEMTREE_H
#define LR_STORAGE_MEMTREE_H

#include <stddef.h>
#include <stdint.h>

/* One allocation per key: the key and its JSON text follow the header
 * right after h (MNODE_SIZE: no padding up to the struct's alignment, 7
 * bytes less per key, often one malloc size class less: a session record).
 * An overwrite whose value does not fit the node reallocates it (the walk
 * relinks it to its parent and room_put updates the room's index), so no
 * other node pointer is kept across a write (listings refuse writes). */
typedef struct mnode {
  struct mnode *l, *r;
  uint32_t klen, vlen;
  uint8_t h;  /* AVL height: at most 1.45 log2(n + 2) */
  char key[]; /* klen bytes + NUL, then the value: vlen bytes + NUL (MVAL) */
} mnode;

#define MNODE_SIZE(klen, vlen) (offsetof(mnode, key) + (klen) + 1 + (vlen) + 1)

#define MVAL(n) ((n)->key + (n)->klen + 1)

/* In-order iterator from the first key >= a bound. The stack holds at most
 * the tree height (< 1.45 log2(n + 2)), so 96 covers any addressable tree. */
typedef struct mt_iter {
  mnode *st[96];
  int n;
} mt_iter;

/* < 0, 0 or > 0 as a is before, equal to or after b, bytewise (a prefix first). */
int mt_key_cmp(const char *a, size_t alen, const char *b, size_t blen);
/* Store val as n's value (n has room for it: MNODE_SIZE). */
void mt_set_val(mnode *n, const char *val, size_t vlen);
/* Insert or overwrite key (copies key and val); *added is the new node
 * when the key was new. Returns the new subtree root. */
mnode *mt_put(mnode *t, const char *key, size_t klen, const char *val, size_t vlen, mnode **added);
/* Unlink key from t into *out (NULL if absent; the caller frees it with
 * mt_node_free). Returns the new subtree root. */
mnode *mt_unlink(mnode *t, const char *key, size_t klen, mnode **out);
mnode *mt_find(mnode *t, const char *key, size_t klen);
void mt_node_free(mnode *n);
void mt_free(mnode *t);
/* Position it at the first key >= key; mt_next gives the keys in order. */
void mt_seek(mt_iter *it, mnode *t, const char *key, size_t klen);
mnode *mt_next(mt_iter *it);
int mt_has_prefix(const mnode *n, const char *p, size_t plen);

#endif

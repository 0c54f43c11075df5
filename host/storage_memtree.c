/*
 * storage_memtree.c - the AVL tree of one memory-store room's keys (see
 * storage_memtree.h): insert, overwrite, unlink, find, in-order iteration.
 *
 * Owns: the tree's nodes and their balance. Must not: know rooms,
 * namespaces, snapshots or the exact-key index (storage_memory.c).
 */
#include "storage_memtree.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

int mt_key_cmp(const char *a, size_t alen, const char *b, size_t blen) {
  int c = memcmp(a, b, alen < blen ? alen : blen);
  if (c) return c;
  return alen < blen ? -1 : alen > blen;
}

static int height(const mnode *n) {
  return n ? n->h : 0;
}
static void fix_height(mnode *n) {
  int hl = height(n->l), hr = height(n->r);
  n->h = (uint8_t)((hl > hr ? hl : hr) + 1);
}
static mnode *rot_right(mnode *n) {
  mnode *l = n->l;
  n->l = l->r;
  l->r = n;
  fix_height(n);
  fix_height(l);
  return l;
}
static mnode *rot_left(mnode *n) {
  mnode *r = n->r;
  n->r = r->l;
  r->l = n;
  fix_height(n);
  fix_height(r);
  return r;
}
/* Restore the AVL invariant at n (children already balanced). */
static mnode *rebalance(mnode *n) {
  fix_height(n);
  int bf = height(n->l) - height(n->r);
  if (bf > 1) {
    if (height(n->l->l) < height(n->l->r)) n->l = rot_left(n->l);
    return rot_right(n);
  }
  if (bf < -1) {
    if (height(n->r->r) < height(n->r->l)) n->r = rot_right(n->r);
    return rot_left(n);
  }
  return n;
}

/* Store val as n's value (n is sized for it). */
void mt_set_val(mnode *n, const char *val, size_t vlen) {
  n->vlen = (uint32_t)vlen;
  memcpy(MVAL(n), val, vlen);
  MVAL(n)[vlen] = '\0';
}

/* Insert or overwrite key. Copies key and val. *added is set to the new
 * node when the key was new. Returns the new subtree root. */
mnode *mt_put(mnode *t, const char *key, size_t klen, const char *val, size_t vlen, mnode **added) {
  if (klen >= UINT32_MAX || vlen >= UINT32_MAX) {
    fprintf(stderr, "lunaroom: memory storage: key or value of 4 GiB or more\n");
    abort();
  }
  if (!t) {
    mnode *n = lr_xmalloc(MNODE_SIZE(klen, vlen));
    n->l = n->r = NULL;
    n->h = 1;
    n->klen = (uint32_t)klen;
    memcpy(n->key, key, klen);
    n->key[klen] = '\0';
    mt_set_val(n, val, vlen);
    *added = n;
    return n;
  }
  int c = mt_key_cmp(key, klen, t->key, t->klen);
  if (c == 0) {
    if (vlen != t->vlen) t = lr_xrealloc(t, MNODE_SIZE(t->klen, vlen));
    mt_set_val(t, val, vlen);
    return t;
  }
  if (c < 0)
    t->l = mt_put(t->l, key, klen, val, vlen, added);
  else
    t->r = mt_put(t->r, key, klen, val, vlen, added);
  return rebalance(t);
}

/* Unlink the smallest node of t into *min; returns the new subtree root. */
static mnode *mt_unlink_min(mnode *t, mnode **min) {
  if (!t->l) {
    *min = t;
    return t->r;
  }
  t->l = mt_unlink_min(t->l, min);
  return rebalance(t);
}

/* Unlink key from t into *out (NULL if absent; the caller frees it). key may
 * point into the node being removed: it is not read after the match. */
mnode *mt_unlink(mnode *t, const char *key, size_t klen, mnode **out) {
  if (!t) return NULL;
  int c = mt_key_cmp(key, klen, t->key, t->klen);
  if (c < 0) {
    t->l = mt_unlink(t->l, key, klen, out);
  } else if (c > 0) {
    t->r = mt_unlink(t->r, key, klen, out);
  } else {
    *out = t;
    if (!t->l) return t->r;
    if (!t->r) return t->l;
    mnode *m;
    mnode *r = mt_unlink_min(t->r, &m);
    m->l = t->l;
    m->r = r;
    return rebalance(m);
  }
  return rebalance(t);
}

mnode *mt_find(mnode *t, const char *key, size_t klen) {
  while (t) {
    int c = mt_key_cmp(key, klen, t->key, t->klen);
    if (c == 0) return t;
    t = c < 0 ? t->l : t->r;
  }
  return NULL;
}

void mt_node_free(mnode *n) {
  free(n);
}

void mt_free(mnode *t) {
  if (!t) return;
  mt_free(t->l);
  mt_free(t->r);
  mt_node_free(t);
}

void mt_seek(mt_iter *it, mnode *t, const char *key, size_t klen) {
  it->n = 0;
  while (t) {
    if (mt_key_cmp(t->key, t->klen, key, klen) >= 0) {
      it->st[it->n++] = t;
      t = t->l;
    } else {
      t = t->r;
    }
  }
}

mnode *mt_next(mt_iter *it) {
  if (it->n == 0) return NULL;
  mnode *x = it->st[--it->n];
  for (mnode *t = x->r; t; t = t->l)
    it->st[it->n++] = t;
  return x;
}

int mt_has_prefix(const mnode *n, const char *p, size_t plen) {
  return n->klen >= plen && memcmp(n->key, p, plen) == 0;
}

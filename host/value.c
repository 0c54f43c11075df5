/*
 * value.c - the C-owned JSON value tree of room state: node lifetime,
 * object/array containers (with a hash index for large objects) and the
 * per-channel dirty marks and pending deletions described in value.h.
 *
 * Owns: every lr_node allocation, member keys, the object hash index, the
 * marked-member lists of large objects, and where deletions are recorded
 * (the key lists themselves: value_dels.c).
 * Must not: encode or parse JSON (json.c), know about Lua, rooms, sockets or
 * storage. The write path (lr_state_set of a scalar on an existing key) must
 * not allocate (beyond growing a large object's marked-member list to the
 * size of its busiest window once) and must only walk the node's ancestors.
 */
#include "value.h"
#include "value_int.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "hash.h"

/* 40-byte nodes and 24-byte members (value.h), and the byte that tells an
 * inline key's length from a long key's tag is the same in both layouts. */
_Static_assert(sizeof(void *) != 8 || sizeof(lr_node) == 40, "lr_node is 40 bytes");
_Static_assert(sizeof(void *) != 8 || sizeof(lr_member) == 24, "lr_member is 24 bytes");
_Static_assert(offsetof(lr_member, k.s.len) == offsetof(lr_member, k.l.tag), "key tag");
_Static_assert(offsetof(lr_node, u.str.in.len) == offsetof(lr_node, u.str.ext.tag), "string tag");

/* The node flag that hides a subtree from each channel. */
static const uint8_t ch_excl[LR_NCH] = {LR_F_NOSYNC, LR_F_NOPERSIST};

static void fatal(const char *msg) {
  fprintf(stderr, "lunaroom: value: %s\n", msg);
  abort();
}

static bool is_container(uint8_t t) {
  return t == LR_OBJECT || t == LR_ARRAY;
}

/* ---------------------------------------------------------------------------
 * Object hash index
 *
 * idx[] holds member position + 1 (0 = empty slot), linear probing, capacity
 * a power of two kept at least twice the member count. It is built the first
 * time an object grows past LR_OBJ_INDEX_MIN members and kept afterwards.
 */

/* FNV-1a with a final avalanche so the low bits used as slot are well mixed. */
static uint32_t key_hash(const char *k, size_t n) {
  uint32_t h = lr_fnv1a(LR_FNV1A_INIT, k, n);
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  return h;
}

static bool key_eq(const lr_member *m, const char *key, size_t keylen) {
  if (keylen < LR_KEY_INLINE) return m->k.s.len == keylen && memcmp(m->k.s.in, key, keylen) == 0;
  return m->k.s.len == LR_KEY_LONG && m->k.l.len == keylen && memcmp(m->k.l.p, key, keylen) == 0;
}

/* Store key in member e (inline when short). */
static void member_set_key(lr_member *e, const char *key, size_t keylen) {
  if (keylen < LR_KEY_INLINE) {
    memcpy(e->k.s.in, key, keylen);
    e->k.s.in[keylen] = '\0';
    e->k.s.len = (uint8_t)keylen;
  } else {
    e->k.l.p = lr_xstrndup(key, keylen);
    e->k.l.len = (uint32_t)keylen;
    e->k.l.tag = LR_KEY_LONG;
  }
}

static void member_free_key(lr_member *e) {
  if (e->k.s.len == LR_KEY_LONG) free(e->k.l.p);
}

/* Position of key in o's members, or -1. O(1) expected with the index. */
static int64_t obj_find(const lr_node *o, const char *key, size_t keylen) {
  const lr_member *m = o->u.obj.m;
  const lr_objx *x = lr_obj_x(o);
  if (x && x->idx) {
    uint32_t mask = x->idxcap - 1;
    for (uint32_t i = key_hash(key, keylen) & mask;; i = (i + 1) & mask) {
      uint32_t slot = x->idx[i];
      if (!slot) return -1;
      if (key_eq(&m[slot - 1], key, keylen)) return slot - 1;
    }
  }
  for (uint32_t i = 0; i < o->u.obj.len; i++)
    if (key_eq(&m[i], key, keylen)) return i;
  return -1;
}

static lr_objx *objx(lr_node *o);

static void idx_insert(lr_objx *x, const lr_node *o, uint32_t pos) {
  uint32_t mask = x->idxcap - 1;
  const lr_member *e = &o->u.obj.m[pos];
  uint32_t i = key_hash(lr_member_key(e), lr_member_keylen(e)) & mask;
  while (x->idx[i])
    i = (i + 1) & mask;
  x->idx[i] = pos + 1;
}

static void idx_rebuild(lr_node *o, uint32_t cap) {
  lr_objx *x = objx(o);
  free(x->idx);
  x->idx = lr_xcalloc(cap, sizeof(uint32_t));
  x->idxcap = cap;
  for (uint32_t i = 0; i < o->u.obj.len; i++)
    idx_insert(x, o, i);
}

static void list_build(lr_node *o);

static uint32_t idx_cap_for(uint32_t len) {
  uint32_t cap = 32;
  while (cap < len * 2u)
    cap *= 2;
  return cap;
}

/* Index the member just appended at position len - 1. */
static void idx_added(lr_node *o) {
  uint32_t len = o->u.obj.len;
  lr_objx *x = lr_obj_x(o);
  if (x && x->idx) {
    if ((uint64_t)len * 2 > x->idxcap)
      idx_rebuild(o, x->idxcap * 2);
    else
      idx_insert(x, o, len - 1);
  } else if (len > LR_OBJ_INDEX_MIN) {
    idx_rebuild(o, idx_cap_for(len));
    list_build(o);
  }
}

/* Unindex member pos, which is about to be removed (members after it shift
 * down by one). Backward-shift deletion keeps probe chains intact without
 * tombstones; then every stored position above pos is decremented. */
static void idx_removed(lr_node *o, uint32_t pos) {
  lr_objx *x = lr_obj_x(o);
  uint32_t *idx = x->idx, mask = x->idxcap - 1;
  const lr_member *m = o->u.obj.m;
  uint32_t i = key_hash(lr_member_key(&m[pos]), lr_member_keylen(&m[pos])) & mask;
  while (idx[i] != pos + 1)
    i = (i + 1) & mask;
  for (uint32_t j = (i + 1) & mask; idx[j]; j = (j + 1) & mask) {
    const lr_member *e = &m[idx[j] - 1];
    uint32_t home = key_hash(lr_member_key(e), lr_member_keylen(e)) & mask;
    bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (!stays) {
      idx[i] = idx[j];
      i = j;
    }
  }
  idx[i] = 0;
  for (uint32_t k = 0; k <= mask; k++)
    if (idx[k] > pos + 1) idx[k]--;
}

/* ---------------------------------------------------------------------------
 * Marked-member lists (objects with a hash index, see value.h)
 *
 * Invariant, per channel ch: for an object o with a hash index, the members
 * c with c->dirty[ch] != 0 are exactly those in lr_obj_x(o)->dirty[ch], once
 * each. A mark goes from none to set only in mark_set; it goes back to none
 * only in lr_state_clear_dirty; a member leaves in obj_remove_at and
 * lr_obj_put (unlist_all); the lists go with the object's contents.
 */

static bool listed(const lr_node *o) {
  return o && o->type == LR_OBJECT && o->xh && lr_objx_tab[o->xh - 1]->idx;
}

static lr_objx *objx(lr_node *o) {
  if (!o->xh) o->xh = lr_objx_new();
  return lr_objx_tab[o->xh - 1];
}

static void list_add(lr_nodelist *l, lr_node *c) {
  if (l->len == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 8;
    l->v = lr_xrealloc(l->v, l->cap * sizeof *l->v);
  }
  l->v[l->len++] = c;
}

/* O(marked members); order is restored by lr_obj_dirty_members. */
static void list_del(lr_nodelist *l, const lr_node *c) {
  for (uint32_t i = 0; i < l->len; i++)
    if (l->v[i] == c) {
      l->v[i] = l->v[--l->len];
      return;
    }
}

/* Mark n with bits on ch, entering its parent's list when it had no mark. */
static void mark_set(lr_node *n, int ch, uint8_t bits) {
  if (!n->dirty[ch] && listed(n->parent)) list_add(&objx(n->parent)->dirty[ch], n);
  n->dirty[ch] |= bits;
}

/* n's marks on ch are about to be cleared, or n leaves its parent. */
static void unlist(lr_node *n, int ch) {
  if (n->dirty[ch] && listed(n->parent)) list_del(&lr_obj_x(n->parent)->dirty[ch], n);
}

static void unlist_all(lr_node *n) {
  for (int ch = 0; ch < LR_NCH; ch++)
    unlist(n, ch);
}

/* o just got its hash index: list the members already marked. */
static void list_build(lr_node *o) {
  for (uint32_t i = 0; i < o->u.obj.len; i++)
    for (int ch = 0; ch < LR_NCH; ch++)
      if (o->u.obj.m[i].val->dirty[ch]) list_add(&objx(o)->dirty[ch], o->u.obj.m[i].val);
}

static int by_pos(const void *a, const void *b) {
  uint32_t x = (*(lr_node *const *)a)->pos, y = (*(lr_node *const *)b)->pos;
  return (x > y) - (x < y);
}

bool lr_obj_dirty_members(const lr_node *o, int ch, lr_node *const **list, uint32_t *n) {
  if (!listed(o)) return false;
  static lr_nodelist none;
  lr_objx *x = lr_obj_x(o);
  lr_nodelist *l = x ? &x->dirty[ch] : &none;
  for (uint32_t i = 1; i < l->len; i++)
    if (l->v[i - 1]->pos > l->v[i]->pos) {
      qsort(l->v, l->len, sizeof *l->v, by_pos); /* the list's order is private */
      break;
    }
  *list = l->v;
  *n = l->len;
  return true;
}

/* ---------------------------------------------------------------------------
 * Construction and lifetime
 */

/* Store len bytes of str as n's string (n holds none): in the node when short. */
static void str_set(lr_node *n, const char *str, size_t len) {
  if (len < LR_STR_INLINE) {
    memcpy(n->u.str.in.b, str, len);
    n->u.str.in.b[len] = '\0';
    n->u.str.in.len = (uint8_t)len;
    return;
  }
  if (len > UINT32_MAX) fatal("string too long");
  n->u.str.ext.p = lr_xstrndup(str, len);
  n->u.str.ext.len = (uint32_t)len;
  n->u.str.ext.tag = LR_STR_LONG;
}

static void str_free(lr_node *n) {
  if (n->u.str.in.len == LR_STR_LONG) free(n->u.str.ext.p);
}

static size_t live_nodes; /* allocation counter: nodes alive in the process */

size_t lr_node_live(void) {
  return live_nodes;
}

static lr_node *node_alloc(lr_type t) {
  lr_node *n = lr_xcalloc(1, sizeof *n);
  live_nodes++;
  n->type = (uint8_t)t;
  n->refs = 1;
  return n;
}

lr_node *lr_node_new(lr_type t) {
  lr_node *n = node_alloc(t);
  /* a string: "" inline (zeroed) */
  return n;
}

lr_node *lr_node_null(void) {
  return node_alloc(LR_NULL);
}

lr_node *lr_node_bool(bool b) {
  lr_node *n = node_alloc(LR_BOOL);
  n->u.b = b;
  return n;
}

lr_node *lr_node_int(int64_t i) {
  lr_node *n = node_alloc(LR_INT);
  n->u.i = i;
  return n;
}

lr_node *lr_node_float(double f) {
  lr_node *n = node_alloc(LR_FLOAT);
  n->u.f = f;
  return n;
}

lr_node *lr_node_string(const char *s, size_t len) {
  lr_node *n = node_alloc(LR_STRING);
  str_set(n, s, len);
  return n;
}

/* Drop the parent's reference on child; a child kept alive by another
 * reference (a Lua proxy) survives detached, with parent NULL. */
static void detach_release(lr_node *child) {
  child->parent = NULL;
  lr_node_release(child);
}

/* Free what the union owns (string bytes, children, keys, index, deletion
 * lists) and zero it. The node's type is left unchanged. */
static void free_contents(lr_node *n) {
  switch (n->type) {
  case LR_STRING:
    str_free(n);
    break;
  case LR_ARRAY:
    for (uint32_t i = 0; i < n->u.arr.len; i++)
      detach_release(n->u.arr.items[i]);
    free(n->u.arr.items);
    break;
  case LR_OBJECT:
    for (uint32_t i = 0; i < n->u.obj.len; i++) {
      member_free_key(&n->u.obj.m[i]);
      detach_release(n->u.obj.m[i].val);
    }
    free(n->u.obj.m);
    if (n->xh) {
      lr_objx *x = lr_obj_x(n);
      free(x->idx);
      for (int ch = 0; ch < LR_NCH; ch++) {
        lr_dels_free(&x->dels[ch], ch);
        free(x->dirty[ch].v);
      }
      lr_objx_free(n->xh);
      n->xh = 0;
    }
    break;
  default:
    break;
  }
  memset(&n->u, 0, sizeof n->u);
}

void lr_node_release(lr_node *n) {
  if (!n) return;
  assert(n->refs > 0);
  if (--n->refs) return;
  free_contents(n);
  free(n);
  live_nodes--;
}

/* Deep copy: flags copied, dirty marks and deletions not, parent NULL. */
lr_node *lr_node_clone(const lr_node *n) {
  lr_node *c = node_alloc((lr_type)n->type);
  c->flags = n->flags & ~LR_F_STORED_FLAT;
  switch (n->type) {
  case LR_NULL:
    break;
  case LR_BOOL:
    c->u.b = n->u.b;
    break;
  case LR_INT:
    c->u.i = n->u.i;
    break;
  case LR_FLOAT:
    c->u.f = n->u.f;
    break;
  case LR_STRING:
    str_set(c, lr_str(n), lr_strlen(n));
    break;
  case LR_ARRAY: {
    uint32_t len = n->u.arr.len;
    if (!len) break;
    c->u.arr.items = lr_xmalloc(len * sizeof(lr_node *));
    for (uint32_t i = 0; i < len; i++) {
      c->u.arr.items[i] = lr_node_clone(n->u.arr.items[i]);
      c->u.arr.items[i]->parent = c;
    }
    c->u.arr.len = c->u.arr.cap = len;
    break;
  }
  case LR_OBJECT: {
    uint32_t len = n->u.obj.len;
    if (!len) break;
    c->u.obj.m = lr_xmalloc(len * sizeof(lr_member));
    for (uint32_t i = 0; i < len; i++) {
      const lr_member *s = &n->u.obj.m[i];
      lr_member *d = &c->u.obj.m[i];
      member_set_key(d, lr_member_key(s), lr_member_keylen(s));
      d->val = lr_node_clone(s->val);
      d->val->parent = c;
      d->val->pos = i;
    }
    c->u.obj.len = c->u.obj.cap = len;
    if (len > LR_OBJ_INDEX_MIN) idx_rebuild(c, idx_cap_for(len));
    break;
  }
  }
  return c;
}

/* An integer and a float are equal when the float is exactly that integer. */
static bool int_float_eq(int64_t i, double f) {
  if (!(f >= -9223372036854775808.0 && f < 9223372036854775808.0)) return false;
  return (double)(int64_t)f == f && (int64_t)f == i;
}

bool lr_node_equal(const lr_node *a, const lr_node *b) {
  if (a == b) return true;
  if (a->type != b->type) {
    if (a->type == LR_INT && b->type == LR_FLOAT) return int_float_eq(a->u.i, b->u.f);
    if (a->type == LR_FLOAT && b->type == LR_INT) return int_float_eq(b->u.i, a->u.f);
    return false;
  }
  switch (a->type) {
  case LR_NULL:
    return true;
  case LR_BOOL:
    return a->u.b == b->u.b;
  case LR_INT:
    return a->u.i == b->u.i;
  case LR_FLOAT:
    return a->u.f == b->u.f;
  case LR_STRING:
    return lr_strlen(a) == lr_strlen(b) && memcmp(lr_str(a), lr_str(b), lr_strlen(a)) == 0;
  case LR_ARRAY:
    if (a->u.arr.len != b->u.arr.len) return false;
    for (uint32_t i = 0; i < a->u.arr.len; i++)
      if (!lr_node_equal(a->u.arr.items[i], b->u.arr.items[i])) return false;
    return true;
  case LR_OBJECT:
    if (a->u.obj.len != b->u.obj.len) return false;
    for (uint32_t i = 0; i < a->u.obj.len; i++) {
      const lr_member *m = &a->u.obj.m[i];
      const lr_node *o = lr_obj_get(b, lr_member_key(m), lr_member_keylen(m));
      if (!o || !lr_node_equal(m->val, o)) return false;
    }
    return true;
  }
  return false;
}

/* ---------------------------------------------------------------------------
 * Plain container access
 */

lr_node *lr_obj_get(const lr_node *obj, const char *key, size_t keylen) {
  if (obj->type != LR_OBJECT) return NULL;
  int64_t p = obj_find(obj, key, keylen);
  return p < 0 ? NULL : obj->u.obj.m[p].val;
}

/* A node entering a container must not carry marks from an earlier life
 * (it may have been written through a proxy while detached). */
static void adopt(lr_node *parent, lr_node *child) {
  assert(child->parent == NULL && child != parent);
  for (int ch = 0; ch < LR_NCH; ch++)
    if (child->dirty[ch]) lr_state_clear_dirty(child, ch);
  child->parent = parent;
}

/* Append a member (key copied); the caller has checked key is absent. */
static void obj_append(lr_node *o, const char *key, size_t keylen, lr_node *child) {
  if (keylen > UINT32_MAX) fatal("object key too long");
  if (o->u.obj.len == o->u.obj.cap) {
    if (o->u.obj.cap >= UINT32_MAX / 2) fatal("object too large");
    o->u.obj.cap = o->u.obj.cap ? o->u.obj.cap * 2 : 2; /* most objects are small */
    o->u.obj.m = lr_xrealloc(o->u.obj.m, o->u.obj.cap * sizeof(lr_member));
  }
  lr_member *e = &o->u.obj.m[o->u.obj.len];
  member_set_key(e, key, keylen);
  e->val = child;
  child->pos = o->u.obj.len++;
  idx_added(o);
}

void lr_obj_put(lr_node *obj, const char *key, size_t keylen, lr_node *child) {
  assert(obj->type == LR_OBJECT);
  adopt(obj, child);
  int64_t p = obj_find(obj, key, keylen);
  if (p >= 0) {
    lr_node *old = obj->u.obj.m[p].val;
    unlist_all(old);
    obj->u.obj.m[p].val = child;
    child->pos = (uint32_t)p;
    detach_release(old);
  } else {
    obj_append(obj, key, keylen, child);
  }
}

/* Remove member pos: unindex, unlist, shift the later members down, release. */
static void obj_remove_at(lr_node *o, uint32_t pos) {
  lr_member *m = o->u.obj.m;
  lr_node *child = m[pos].val;
  if (listed(o)) idx_removed(o, pos);
  unlist_all(child);
  member_free_key(&m[pos]);
  memmove(&m[pos], &m[pos + 1], (o->u.obj.len - pos - 1) * sizeof(lr_member));
  o->u.obj.len--;
  for (uint32_t i = pos; i < o->u.obj.len; i++)
    m[i].val->pos = i;
  detach_release(child);
}

bool lr_obj_remove(lr_node *obj, const char *key, size_t keylen) {
  if (obj->type != LR_OBJECT) return false;
  int64_t p = obj_find(obj, key, keylen);
  if (p < 0) return false;
  obj_remove_at(obj, (uint32_t)p);
  return true;
}

static void arr_grow(lr_node *a) {
  if (a->u.arr.len < a->u.arr.cap) return;
  if (a->u.arr.cap >= UINT32_MAX / 2) fatal("array too large");
  a->u.arr.cap = a->u.arr.cap ? a->u.arr.cap * 2 : 4;
  a->u.arr.items = lr_xrealloc(a->u.arr.items, a->u.arr.cap * sizeof(lr_node *));
}

void lr_arr_push(lr_node *arr, lr_node *child) {
  assert(arr->type == LR_ARRAY);
  adopt(arr, child);
  arr_grow(arr);
  arr->u.arr.items[arr->u.arr.len++] = child;
}

int64_t lr_node_index_in_parent(const lr_node *child) {
  const lr_node *p = child->parent;
  if (!p) return -1;
  if (p->type == LR_ARRAY) {
    for (uint32_t i = 0; i < p->u.arr.len; i++)
      if (p->u.arr.items[i] == child) return i;
  } else if (p->type == LR_OBJECT) {
    if (child->pos < p->u.obj.len && p->u.obj.m[child->pos].val == child) return child->pos;
  }
  return -1;
}

const char *lr_node_key_in_parent(const lr_node *child, uint32_t *keylen) {
  const lr_node *p = child->parent;
  if (!p || p->type != LR_OBJECT) return NULL;
  int64_t i = lr_node_index_in_parent(child);
  if (i < 0) return NULL;
  if (keylen) *keylen = lr_member_keylen(&p->u.obj.m[i]);
  return lr_member_key(&p->u.obj.m[i]);
}

static void path_append(const lr_node *n, lr_buf *out) {
  const lr_node *p = n->parent;
  if (!p) return;
  path_append(p, out);
  if (p->parent) lr_buf_putc(out, '.');
  int64_t i = lr_node_index_in_parent(n);
  if (p->type == LR_ARRAY)
    lr_buf_printf(out, "%lld", (long long)i);
  else if (i >= 0)
    lr_buf_put(out, lr_member_key(&p->u.obj.m[i]), lr_member_keylen(&p->u.obj.m[i]));
}

/* Written root first; O(depth * siblings), meant for messages and tests, not
 * for the flush path (the encoders build paths top-down instead). */
void lr_node_path(const lr_node *n, lr_buf *out) {
  lr_buf_reset(out);
  path_append(n, out);
  lr_buf_cstr(out);
}

/* ---------------------------------------------------------------------------
 * Dirty marking
 */

/* Where a change at n must be recorded on ch. NULL when nothing is to be
 * marked: n or an ancestor excludes ch, or n or an ancestor is already SELF
 * (its whole value will be sent). Otherwise the outermost array among n and
 * its ancestors, or n itself when there is none. O(depth), no allocation. */
static lr_node *mark_target(lr_node *n, int ch) {
  uint8_t ex = ch_excl[ch];
  lr_node *t = n;
  for (lr_node *p = n; p; p = p->parent) {
    if ((p->flags & ex) || (p->dirty[ch] & LR_D_SELF)) return NULL;
    if (p->type == LR_ARRAY) t = p;
  }
  return t;
}

/* Set CHILD from p upwards, stopping at the first ancestor already marked. */
static void mark_child_up(lr_node *p, int ch) {
  for (; p && !p->dirty[ch]; p = p->parent)
    mark_set(p, ch, LR_D_CHILD);
}

static void mark_ch(lr_node *n, int ch) {
  lr_node *t = mark_target(n, ch);
  if (!t) return;
  mark_set(t, ch, LR_D_SELF);
  mark_child_up(t->parent, ch);
}

void lr_state_mark(lr_node *n) {
  for (int ch = 0; ch < LR_NCH; ch++)
    mark_ch(n, ch);
}

/* Every marked node is visited, SELF ones included: marks set below a node
 * before it became SELF are stale and must not leak into the next window.
 * Unmarked children are skipped with one byte test (nothing below an
 * unmarked node is marked, see mark_child_up). Deletion arrays keep their
 * capacity for the next window. */
static void clear_below(lr_node *n, int ch) {
  n->dirty[ch] = 0;
  if (n->type == LR_OBJECT) {
    lr_objx *x = lr_obj_x(n);
    if (x) {
      lr_dels_clear(&x->dels[ch], ch);
    }
    if (listed(n)) { /* the marked members only (a room's players: those that moved) */
      if (!x) return;
      for (uint32_t i = 0; i < x->dirty[ch].len; i++)
        clear_below(x->dirty[ch].v[i], ch);
      x->dirty[ch].len = 0;
      return;
    }
    for (uint32_t i = 0; i < n->u.obj.len; i++) {
      lr_node *c = n->u.obj.m[i].val;
      if (c->dirty[ch]) clear_below(c, ch);
    }
  } else if (n->type == LR_ARRAY) {
    for (uint32_t i = 0; i < n->u.arr.len; i++) {
      lr_node *c = n->u.arr.items[i];
      if (c->dirty[ch]) clear_below(c, ch);
    }
  }
}

void lr_state_clear_dirty(lr_node *root, int ch) {
  if (!root->dirty[ch]) return;
  unlist(root, ch);
  clear_below(root, ch);
}

/* Only deletions the encoders would emit count: those under a SELF node are
 * superseded by the node's whole value. */
bool lr_state_has_dels(const lr_node *root, int ch) {
  if (!lr_dels_pending(ch)) return false; /* none in any tree */
  if (root->dirty[ch] != LR_D_CHILD || root->type != LR_OBJECT) return false;
  if (lr_obj_dels(root, ch).len) return true;
  lr_node *const *dl;
  uint32_t nd;
  if (lr_obj_dirty_members(root, ch, &dl, &nd)) {
    for (uint32_t i = 0; i < nd; i++)
      if (lr_state_has_dels(dl[i], ch)) return true;
    return false;
  }
  for (uint32_t i = 0; i < root->u.obj.len; i++)
    if (lr_state_has_dels(root->u.obj.m[i].val, ch)) return true;
  return false;
}

/* ---------------------------------------------------------------------------
 * State writes
 */

/* Delete member pos of o, recording the deletion per channel: nothing when
 * the child is hidden from the channel or o is covered/excluded, the array
 * marked SELF when o is under one, else the key added to o's dels. */
static void state_delete_at(lr_node *o, uint32_t pos) {
  const lr_member *e = &o->u.obj.m[pos];
  for (int ch = 0; ch < LR_NCH; ch++) {
    if (e->val->flags & ch_excl[ch]) continue;
    lr_node *t = mark_target(o, ch);
    if (!t) continue;
    if (t != o) {
      mark_set(t, ch, LR_D_SELF);
      mark_child_up(t->parent, ch);
    } else {
      lr_dels_add(&objx(o)->dels[ch], ch, lr_member_key(e), lr_member_keylen(e));
      mark_set(o, ch, LR_D_CHILD);
      mark_child_up(o->parent, ch);
    }
  }
  obj_remove_at(o, pos);
}

bool lr_state_delete(lr_node *obj, const char *key, size_t keylen) {
  if (obj->type != LR_OBJECT) return false;
  int64_t p = obj_find(obj, key, keylen);
  if (p < 0) return false;
  state_delete_at(obj, (uint32_t)p);
  return true;
}

/* Insert a clone of src under a key absent from obj, with the given flags on
 * the new child; it cancels a pending deletion of the key and is marked SELF. */
static lr_node *insert_new(lr_node *obj, const char *key, size_t keylen, const lr_node *src,
                           uint8_t flags) {
  lr_node *c = lr_node_clone(src);
  c->flags = flags & ~LR_F_STORED_FLAT;
  c->parent = obj;
  obj_append(obj, key, keylen, c);
  for (int ch = 0; ch < LR_NCH && obj->xh; ch++)
    lr_dels_remove(&lr_obj_x(obj)->dels[ch], ch, key, keylen);
  lr_state_mark(c);
  return c;
}

/* Give t (a scalar) the scalar value of s. Numbers and booleans are plain
 * stores; a string reuses t's buffer when the new one fits, so shrinking or
 * same-length writes do not allocate. */
static void set_scalar(lr_node *t, const lr_node *s) {
  if (t->type == LR_STRING && s->type == LR_STRING) {
    size_t n = lr_strlen(s);
    bool ext = t->u.str.in.len == LR_STR_LONG;
    if (ext ? n <= t->u.str.ext.len : n < LR_STR_INLINE) { /* fits where t's bytes are */
      char *d = ext ? t->u.str.ext.p : t->u.str.in.b;
      memmove(d, lr_str(s), n);
      d[n] = '\0';
      if (ext)
        t->u.str.ext.len = (uint32_t)n;
      else
        t->u.str.in.len = (uint8_t)n;
      return;
    }
  }
  if (t->type == LR_STRING) str_free(t);
  t->type = s->type;
  switch (s->type) {
  case LR_NULL:
    memset(&t->u, 0, sizeof t->u);
    break;
  case LR_BOOL:
    t->u.b = s->u.b;
    break;
  case LR_INT:
    t->u.i = s->u.i;
    break;
  case LR_FLOAT:
    t->u.f = s->u.f;
    break;
  case LR_STRING:
    memset(&t->u, 0, sizeof t->u);
    str_set(t, lr_str(s), lr_strlen(s));
    break;
  default:
    break;
  }
}

/* Replace t's contents (any type) by a deep copy of s's. The copy is taken
 * before the old contents go, so s may live inside t. */
static void replace_contents(lr_node *t, const lr_node *s) {
  lr_node *c = lr_node_clone(s);
  free_contents(t);
  t->flags &= ~LR_F_STORED_FLAT; /* may become a container: the store may get keys below it */
  t->type = c->type;
  t->u = c->u;
  t->xh = c->xh; /* free_contents(t) released t's own */
  if (t->type == LR_ARRAY)
    for (uint32_t i = 0; i < t->u.arr.len; i++)
      t->u.arr.items[i]->parent = t;
  else if (t->type == LR_OBJECT)
    for (uint32_t i = 0; i < t->u.obj.len; i++)
      t->u.obj.m[i].val->parent = t;
  free(c); /* its contents now belong to t */
}

static void assign(lr_node *t, const lr_node *s);

/* Object onto object: delete t's keys absent from s, then assign s's keys in
 * order (existing children in place, new ones cloned and marked SELF). s must
 * not share nodes with t (lr_state_assign guarantees it). */
static void merge(lr_node *t, const lr_node *s) {
  for (uint32_t i = 0; i < t->u.obj.len;) {
    const lr_member *e = &t->u.obj.m[i];
    if (obj_find(s, lr_member_key(e), lr_member_keylen(e)) < 0)
      state_delete_at(t, i);
    else
      i++;
  }
  for (uint32_t i = 0; i < s->u.obj.len; i++) {
    const lr_member *e = &s->u.obj.m[i];
    int64_t p = obj_find(t, lr_member_key(e), lr_member_keylen(e));
    if (p >= 0)
      assign(t->u.obj.m[p].val, e->val);
    else
      insert_new(t, lr_member_key(e), lr_member_keylen(e), e->val, e->val->flags);
  }
}

static void assign(lr_node *t, const lr_node *s) {
  if (!is_container(t->type) && !is_container(s->type)) {
    if (lr_node_equal(t, s)) return;
    set_scalar(t, s);
  } else if (t->type == LR_OBJECT && s->type == LR_OBJECT) {
    merge(t, s);
    return;
  } else if (t->type == LR_ARRAY && s->type == LR_ARRAY) {
    if (lr_node_equal(t, s)) return;
    replace_contents(t, s);
  } else {
    replace_contents(t, s);
  }
  lr_state_mark(t);
}

static bool is_ancestor(const lr_node *a, const lr_node *n) {
  for (const lr_node *p = n->parent; p; p = p->parent)
    if (p == a) return true;
  return false;
}

/* See value.h. When both are objects and one lies inside the other
 * (room.a = room.a.b), the merge would read nodes it is deleting, so it reads
 * a private copy of src instead. The scalar path allocates nothing. */
void lr_state_assign(lr_node *target, const lr_node *src) {
  if (target == src) return;
  if (target->type == LR_OBJECT && src->type == LR_OBJECT &&
      (is_ancestor(target, src) || is_ancestor(src, target))) {
    lr_node *copy = lr_node_clone(src);
    assign(target, copy);
    lr_node_release(copy);
    return;
  }
  assign(target, src);
}

/* The new child's own flags are child_flags (src's flags on the child itself
 * are not inherited; its descendants keep theirs). */
lr_node *lr_state_set(lr_node *obj, const char *key, size_t keylen, const lr_node *src,
                      uint8_t child_flags) {
  assert(obj->type == LR_OBJECT);
  int64_t p = obj_find(obj, key, keylen);
  if (p >= 0) {
    lr_node *c = obj->u.obj.m[p].val;
    lr_state_assign(c, src);
    return c;
  }
  return insert_new(obj, key, keylen, src, child_flags);
}

void lr_state_arr_set(lr_node *arr, uint32_t i, const lr_node *src) {
  assert(arr->type == LR_ARRAY && i <= arr->u.arr.len);
  if (i == arr->u.arr.len) {
    lr_state_arr_insert(arr, i, src);
    return;
  }
  lr_node *c = lr_node_clone(src);
  lr_node *old = arr->u.arr.items[i];
  c->parent = arr;
  arr->u.arr.items[i] = c;
  detach_release(old);
  lr_state_mark(arr);
}

void lr_state_arr_remove(lr_node *arr, uint32_t i) {
  assert(arr->type == LR_ARRAY && i < arr->u.arr.len);
  lr_node *old = arr->u.arr.items[i];
  memmove(&arr->u.arr.items[i], &arr->u.arr.items[i + 1],
          (arr->u.arr.len - i - 1) * sizeof(lr_node *));
  arr->u.arr.len--;
  detach_release(old);
  lr_state_mark(arr);
}

void lr_state_arr_insert(lr_node *arr, uint32_t i, const lr_node *src) {
  assert(arr->type == LR_ARRAY && i <= arr->u.arr.len);
  lr_node *c = lr_node_clone(src);
  c->parent = arr;
  arr_grow(arr);
  memmove(&arr->u.arr.items[i + 1], &arr->u.arr.items[i], (arr->u.arr.len - i) * sizeof(lr_node *));
  arr->u.arr.items[i] = c;
  arr->u.arr.len++;
  lr_state_mark(arr);
}

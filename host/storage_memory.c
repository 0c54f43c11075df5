/*
 * storage_memory.c - the in-memory storage backend and its JSON snapshot file
 * (the reference's createMemoryNodeRoomStorage, protocol.md §9.2).
 *
 * Owns: the rooms, one per (namespace, room) found through a hash table,
 * each an AVL tree of its keys (storage_memtree.c: key -> JSON text,
 * bytewise order), so get/put/delete are O(log n) and a listing only walks
 * the keys of its room; the exact-key index of a room with many keys (an
 * overwrite in place without a walk); snapshot load and atomic save in the
 * reference's format {"ns:room":[[key,value],...]} with encodeURIComponent
 * names and values embedded as raw JSON text (byte for byte).
 * Must not: parse values into trees, know the key layout of rooms, or leave a
 * half-applied batch or a half-written snapshot behind.
 *
 * Atomicity: lr_store_apply() validates every op (lr__store_check_ops) before
 * touching a tree; after that nothing can fail (allocation failure aborts), so
 * a batch is applied entirely or not at all.
 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hash.h"
#include "json.h"
#include "storage.h"
#include "storage_memtree.h"
#include "utf8.h"

/* ---- rooms ---- */

typedef struct mroom {
  struct mroom *next; /* hash chain */
  uint64_t hash;
  char *ns, *room; /* NUL-terminated, in names[] */
  size_t nslen, roomlen;
  mnode *root;
  size_t count;
  /* Exact-key index of a room with IDX_MIN keys or more (open addressing,
   * linear probing, at most half full; NULL below that): a write of an
   * existing key (a state row written again) finds its node in one probe
   * instead of a walk down the tree, a cache miss per level. */
  mnode **idx;
  size_t idxcap, idxn;
  char names[]; /* ns NUL room NUL */
} mroom;

typedef struct mstore {
  lr_store base;
  mroom **buckets;
  size_t nbuckets, nrooms;
  char *path;    /* snapshot path given at open, or NULL */
  int listing;   /* > 0 while a list callback runs */
  int fail_next; /* test hook: fail this many applies (lr_store_memory_fail_next) */
} mstore;

static const lr_store_vt memory_vt;

static uint64_t room_hash(const char *ns, size_t nslen, const char *room, size_t roomlen) {
  uint64_t h = lr_fnv1a64(LR_FNV1A64_INIT, ns, nslen);
  h = lr_fnv1a64(h, "\xff", 1); /* 0xFF never occurs in UTF-8 */
  return lr_fnv1a64(h, room, roomlen);
}

static size_t mroom_bucket(const mroom *x, size_t nb) {
  return x->hash & (nb - 1);
}

static mroom *room_find(mstore *m, const char *ns, size_t nslen, const char *room, size_t roomlen) {
  uint64_t h = room_hash(ns, nslen, room, roomlen);
  for (mroom *r = m->buckets[h & (m->nbuckets - 1)]; r; r = r->next)
    if (r->hash == h && r->nslen == nslen && r->roomlen == roomlen &&
        memcmp(r->ns, ns, nslen) == 0 && memcmp(r->room, room, roomlen) == 0)
      return r;
  return NULL;
}

static mroom *room_get_or_add(mstore *m, const char *ns, size_t nslen, const char *room,
                              size_t roomlen) {
  mroom *r = room_find(m, ns, nslen, room, roomlen);
  if (r) return r;
  if (m->nrooms >= m->nbuckets) { /* grow at load factor 1 */
    size_t nb = m->nbuckets * 2;
    LR_CHAIN_REHASH(mroom, m->buckets, m->nbuckets, nb, next, mroom_bucket);
    m->nbuckets = nb;
  }
  r = lr_xcalloc(1, sizeof *r + nslen + roomlen + 2);
  r->hash = room_hash(ns, nslen, room, roomlen);
  r->ns = r->names;
  memcpy(r->ns, ns, nslen);
  r->nslen = nslen;
  r->room = r->names + nslen + 1;
  memcpy(r->room, room, roomlen);
  r->roomlen = roomlen;
  r->next = m->buckets[r->hash & (m->nbuckets - 1)];
  m->buckets[r->hash & (m->nbuckets - 1)] = r;
  m->nrooms++;
  return r;
}

static void room_free(mroom *r) {
  mt_free(r->root);
  free(r->idx);
  free(r);
}

/* Unlink and free r (rooms with no keys are dropped, as in the reference's
 * snapshot). */
static void room_remove(mstore *m, mroom *r) {
  mroom **pp = &m->buckets[r->hash & (m->nbuckets - 1)];
  while (*pp != r)
    pp = &(*pp)->next;
  *pp = r->next;
  m->nrooms--;
  room_free(r);
}

/* ---- the exact-key index of a room (mroom.idx) ---- */

#define IDX_MIN 64 /* keys of a room before it gets an index */

static size_t idx_home(const mroom *r, const char *key, size_t klen) {
  return (size_t)lr_fnv1a64(LR_FNV1A64_INIT, key, klen) & (r->idxcap - 1);
}

/* The slot of key in r's index, or of the empty slot where it would go. */
static size_t idx_slot(const mroom *r, const char *key, size_t klen) {
  size_t mask = r->idxcap - 1;
  for (size_t i = idx_home(r, key, klen);; i = (i + 1) & mask) {
    const mnode *n = r->idx[i];
    if (!n || (n->klen == klen && memcmp(n->key, key, klen) == 0)) return i;
  }
}

static void idx_add(mroom *r, mnode *n);

/* Build r's index of capacity cap from its tree. */
static void idx_build(mroom *r, size_t cap) {
  free(r->idx);
  r->idx = lr_xcalloc(cap, sizeof *r->idx);
  r->idxcap = cap;
  r->idxn = 0;
  mt_iter it;
  mt_seek(&it, r->root, "", 0);
  for (mnode *x; (x = mt_next(&it));)
    idx_add(r, x);
}

static void idx_add(mroom *r, mnode *n) {
  if ((r->idxn + 1) * 2 > r->idxcap) {
    idx_build(r, r->idxcap * 2); /* n is in the tree already: indexed by the build */
    return;
  }
  r->idx[idx_slot(r, n->key, n->klen)] = n;
  r->idxn++;
}

/* Drop n (about to be freed) from r's index: backward-shift deletion keeps
 * every probe chain whole without tombstones. */
static void idx_del(mroom *r, const mnode *n) {
  if (!r->idx) return;
  size_t mask = r->idxcap - 1, i = idx_slot(r, n->key, n->klen);
  if (r->idx[i] != n) return;
  r->idx[i] = NULL;
  r->idxn--;
  for (size_t j = (i + 1) & mask; r->idx[j]; j = (j + 1) & mask) {
    size_t home = idx_home(r, r->idx[j]->key, r->idx[j]->klen);
    bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (!stays) {
      r->idx[i] = r->idx[j];
      r->idx[j] = NULL;
      i = j;
    }
  }
}

static void idx_drop(mroom *r) {
  free(r->idx);
  r->idx = NULL;
  r->idxcap = r->idxn = 0;
}

/* ---- room writes ---- */

static void room_put(mroom *r, const char *key, size_t klen, const char *val, size_t vlen) {
  size_t slot = 0;
  if (r->idx) {
    slot = idx_slot(r, key, klen);
    mnode *t = r->idx[slot];
    if (!t) goto insert; /* the index holds every key: a new one */
    if (vlen < UINT32_MAX && MNODE_SIZE(t->klen, vlen) <= malloc_usable_size(t)) {
      mt_set_val(t, val, vlen); /* fits where it is: no walk, no reallocation */
      return;
    }
  }
  /* Overwriting a key (the usual write: a room's state rows) changes no
   * shape: find its link and replace the value there, without the
   * recursion's rebalance of every node on the path. */
  for (mnode **link = &r->root; *link;) {
    mnode *t = *link;
    int c = mt_key_cmp(key, klen, t->key, t->klen);
    if (c == 0) {
      if (vlen >= UINT32_MAX) break; /* mt_put aborts */
      if (vlen != t->vlen) *link = t = lr_xrealloc(t, MNODE_SIZE(t->klen, vlen));
      mt_set_val(t, val, vlen);
      if (r->idx) r->idx[slot] = t; /* it may have moved */
      return;
    }
    link = c < 0 ? &t->l : &t->r;
  }
insert:;
  mnode *added = NULL;
  r->root = mt_put(r->root, key, klen, val, vlen, &added);
  if (!added) return;
  r->count++;
  if (r->idx)
    idx_add(r, added);
  else if (r->count >= IDX_MIN)
    idx_build(r, 4 * IDX_MIN);
}

static void room_del(mroom *r, const char *key, size_t klen) {
  mnode *out = NULL;
  r->root = mt_unlink(r->root, key, klen, &out);
  if (out) {
    idx_del(r, out);
    mt_node_free(out);
    r->count--;
  }
}

static void room_del_prefix(mroom *r, const char *p, size_t plen) {
  if (plen == 0) {
    mt_free(r->root);
    r->root = NULL;
    r->count = 0;
    idx_drop(r);
    return;
  }
  /* The matching keys are contiguous in order: collect, then unlink each. */
  mnode **v = NULL;
  size_t n = 0, cap = 0;
  mt_iter it;
  mt_seek(&it, r->root, p, plen);
  for (mnode *x; (x = mt_next(&it)) && mt_has_prefix(x, p, plen);) {
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      v = lr_xrealloc(v, cap * sizeof *v);
    }
    v[n++] = x;
  }
  for (size_t i = 0; i < n; i++) {
    mnode *out = NULL;
    idx_del(r, v[i]);
    r->root = mt_unlink(r->root, v[i]->key, v[i]->klen, &out);
    mt_node_free(out);
  }
  r->count -= n;
  free(v);
}

/* ---- vtable (the contracts are in storage.h) ---- */

static int mem_get(lr_store *s, const char *ns, const char *room, const char *key, lr_buf *out,
                   char *err, size_t errlen) {
  mstore *m = (mstore *)s;
  if (!ns || !room || !key || !out) {
    lr__store_errf(err, errlen, "storage: get needs a namespace, room id, key and buffer");
    return LR_STORE_EARG;
  }
  lr_buf_reset(out);
  mroom *r = room_find(m, ns, strlen(ns), room, strlen(room));
  mnode *n = r ? mt_find(r->root, key, strlen(key)) : NULL;
  if (!n) return LR_STORE_NOTFOUND;
  lr_buf_put(out, MVAL(n), n->vlen);
  lr_buf_cstr(out);
  return 0;
}

static int mem_list(lr_store *s, const char *ns, const char *room, const char *prefix,
                    lr_store_list_cb cb, void *ud, char *err, size_t errlen) {
  mstore *m = (mstore *)s;
  if (!ns || !room || !cb) {
    lr__store_errf(err, errlen, "storage: list needs a namespace, room id and callback");
    return LR_STORE_EARG;
  }
  if (!prefix) prefix = "";
  size_t plen = strlen(prefix);
  mroom *r = room_find(m, ns, strlen(ns), room, strlen(room));
  if (!r) return 0;
  mt_iter it;
  mt_seek(&it, r->root, prefix, plen);
  m->listing++;
  for (mnode *x; (x = mt_next(&it)) && mt_has_prefix(x, prefix, plen);)
    if (cb(ud, x->key, x->klen, MVAL(x), x->vlen)) break;
  m->listing--;
  return 0;
}

static int mem_apply(lr_store *s, const char *ns, const char *room, const lr_store_op *ops,
                     size_t n, char *err, size_t errlen) {
  mstore *m = (mstore *)s;
  int rc = lr__store_check_ops(ns, room, ops, n, err, errlen);
  if (rc) return rc;
  if (m->listing) {
    lr__store_errf(err, errlen, "storage: apply called from inside a list callback");
    return LR_STORE_EARG;
  }
  if (m->fail_next > 0) {
    m->fail_next--;
    lr__store_errf(err, errlen, "storage: injected failure (test)");
    return LR_STORE_EIO;
  }
  size_t nslen = strlen(ns), roomlen = strlen(room);
  mroom *r = room_find(m, ns, nslen, room, roomlen);
  for (size_t i = 0; i < n; i++) {
    const lr_store_op *o = &ops[i];
    const char *key = o->key ? o->key : "";
    if (o->kind == LR_STORE_PUT) {
      if (!r) r = room_get_or_add(m, ns, nslen, room, roomlen);
      room_put(r, key, o->keylen, o->val, o->vallen);
    } else if (!r) {
      continue;
    } else if (o->kind == LR_STORE_DEL) {
      room_del(r, key, o->keylen);
    } else {
      room_del_prefix(r, key, o->keylen);
    }
  }
  if (r && r->count == 0) room_remove(m, r);
  return 0;
}

static long mem_count(lr_store *s, const char *ns, const char *room) {
  mstore *m = (mstore *)s;
  if (ns && room) {
    mroom *r = room_find(m, ns, strlen(ns), room, strlen(room));
    return r ? (long)r->count : 0;
  }
  size_t nslen = ns ? strlen(ns) : 0, total = 0;
  for (size_t i = 0; i < m->nbuckets; i++)
    for (mroom *r = m->buckets[i]; r; r = r->next)
      if (!ns || (r->nslen == nslen && memcmp(r->ns, ns, nslen) == 0)) total += r->count;
  return (long)total;
}

static void mem_close(lr_store *s) {
  mstore *m = (mstore *)s;
  for (size_t i = 0; i < m->nbuckets; i++) {
    mroom *r = m->buckets[i];
    while (r) {
      mroom *next = r->next;
      room_free(r);
      r = next;
    }
  }
  free(m->buckets);
  free(m->path);
  free(m);
}

static const lr_store_vt memory_vt = {
    .name = "memory",
    .get = mem_get,
    .list = mem_list,
    .apply = mem_apply,
    .count = mem_count,
    .close = mem_close,
};

/* ---- snapshot text helpers ---- */

/* encodeURIComponent: everything but A-Z a-z 0-9 - _ . ! ~ * ' ( ) as %XX. */
static void uri_encode(lr_buf *out, const char *s, size_t n) {
  static const char hex[] = "0123456789ABCDEF";
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
        (c && strchr("-_.!~*'()", c))) {
      lr_buf_putc(out, (char)c);
      continue;
    }
    char e[3] = {'%', hex[c >> 4], hex[c & 15]};
    lr_buf_put(out, e, 3);
  }
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* decodeURIComponent into out (reset first). The result must be valid UTF-8
 * without NUL (it becomes a C string). Returns 0 or -1. */
static int uri_decode(lr_buf *out, const char *s, size_t n) {
  lr_buf_reset(out);
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '%') {
      lr_buf_putc(out, s[i]);
      continue;
    }
    int hi = i + 2 < n ? hexval(s[i + 1]) : -1, lo = i + 2 < n ? hexval(s[i + 2]) : -1;
    if (hi < 0 || lo < 0) return -1;
    lr_buf_putc(out, (char)(hi << 4 | lo));
    i += 2;
  }
  lr_buf_cstr(out);
  if (memchr(out->data, '\0', out->len)) return -1;
  return lr_utf8_valid(out->data, out->len) ? 0 : -1;
}

/* ---- snapshot load ---- */

typedef struct snap {
  const char *s;
  size_t len, p;
  const char *why; /* set on error */
} snap;

static void sws(snap *x) {
  while (x->p < x->len &&
         (x->s[x->p] == ' ' || x->s[x->p] == '\t' || x->s[x->p] == '\n' || x->s[x->p] == '\r'))
    x->p++;
}

/* Skip whitespace and consume c. */
static int expect(snap *x, char c, const char *why) {
  sws(x);
  if (x->p < x->len && x->s[x->p] == c) {
    x->p++;
    return 0;
  }
  x->why = why;
  return -1;
}

/* Next non-whitespace byte (not consumed), or -1 at the end. */
static int peek(snap *x) {
  sws(x);
  return x->p < x->len ? (unsigned char)x->s[x->p] : -1;
}

/* Decode the JSON string at x->p into out (json.c's scanner). Keys and
 * names become C strings, so "\u0000" is refused. */
static int parse_string(snap *x, lr_buf *out) {
  lr_buf_reset(out);
  sws(x);
  if (x->p >= x->len || x->s[x->p] != '"') {
    x->why = "expected a string";
    return -1;
  }
  size_t start = x->p, n, at;
  const char *str;
  if (lr_json_scan_string(x->s, x->len, &x->p, 0, out, &str, &n, &x->why, &at) != 0) {
    x->p = at;
    return -1;
  }
  if (str != out->data) lr_buf_put(out, str, n); /* no escape: str is in the text */
  if (n && memchr(out->data, '\0', n)) {
    x->p = start;
    x->why = "NUL character in string";
    return -1;
  }
  lr_buf_cstr(out);
  return 0;
}

/* Parse the snapshot text into m. On error returns -1 with x->why set and
 * x->p at the offending offset. */
static int parse_snapshot(mstore *m, snap *x) {
  lr_buf name, ns, room, key;
  lr_buf_init(&name);
  lr_buf_init(&ns);
  lr_buf_init(&room);
  lr_buf_init(&key);
  int rc = -1;
  if (expect(x, '{', "expected '{'")) goto done;
  if (peek(x) == '}') {
    x->p++;
  } else {
    for (;;) {
      size_t name_at = x->p;
      if (parse_string(x, &name)) goto done;
      const char *colon = memchr(name.data, ':', name.len);
      if (!colon || uri_decode(&ns, name.data, (size_t)(colon - name.data)) ||
          uri_decode(&room, colon + 1, name.len - (size_t)(colon - name.data) - 1)) {
        x->p = name_at;
        x->why = "room name is not \"encodeURIComponent(ns):encodeURIComponent(room)\"";
        goto done;
      }
      if (expect(x, ':', "expected ':'") || expect(x, '[', "expected '[' (list of pairs)"))
        goto done;
      if (peek(x) == ']') {
        x->p++;
      } else {
        mroom *r = room_get_or_add(m, ns.data, ns.len, room.data, room.len);
        for (;;) {
          if (expect(x, '[', "expected '[' (a [key, value] pair)")) goto done;
          if (parse_string(x, &key)) goto done;
          if (expect(x, ',', "expected ','")) goto done;
          sws(x);
          size_t vstart = x->p;
          if (lr__store_json_scan(x->s, x->len, &x->p, NULL, 0)) {
            x->why = "invalid JSON value";
            goto done;
          }
          room_put(r, key.data, key.len, x->s + vstart, x->p - vstart);
          if (expect(x, ']', "expected ']' after a [key, value] pair")) goto done;
          int c = peek(x);
          x->p++;
          if (c == ']') break;
          if (c != ',') {
            x->p--;
            x->why = "expected ',' or ']'";
            goto done;
          }
        }
      }
      int c = peek(x);
      x->p++;
      if (c == '}') break;
      if (c != ',') {
        x->p--;
        x->why = "expected ',' or '}'";
        goto done;
      }
    }
  }
  sws(x);
  if (x->p != x->len) {
    x->why = "trailing characters";
    goto done;
  }
  rc = 0;
done:
  lr_buf_free(&name);
  lr_buf_free(&ns);
  lr_buf_free(&room);
  lr_buf_free(&key);
  return rc;
}

/* Read the whole file into a new buffer. Returns 0, 1 if it does not exist,
 * or -1 with a message. */
static int read_file(const char *path, char **data, size_t *len, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    if (errno == ENOENT) return 1;
    lr__store_errf(err, errlen, "storage: cannot open snapshot %s: %s", path, strerror(errno));
    return -1;
  }
  lr_buf b;
  lr_buf_init(&b);
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
    lr_buf_put(&b, chunk, n);
  if (ferror(f)) {
    lr__store_errf(err, errlen, "storage: cannot read snapshot %s: %s", path, strerror(errno));
    fclose(f);
    lr_buf_free(&b);
    return -1;
  }
  fclose(f);
  lr_buf_cstr(&b);
  *data = b.data;
  *len = b.len;
  return 0;
}

lr_store *lr_store_memory_open(const char *snapshot_path, char *err, size_t errlen) {
  mstore *m = lr_xcalloc(1, sizeof *m);
  m->base.vt = &memory_vt;
  m->nbuckets = 16;
  m->buckets = lr_xcalloc(m->nbuckets, sizeof *m->buckets);
  if (!snapshot_path) return &m->base;
  m->path = lr_xstrndup(snapshot_path, strlen(snapshot_path));
  char *data = NULL;
  size_t len = 0;
  int rc = read_file(snapshot_path, &data, &len, err, errlen);
  if (rc == 1) return &m->base; /* no snapshot yet: start empty */
  if (rc == 0) {
    snap x = {data, len, 0, NULL};
    if (parse_snapshot(m, &x) == 0) {
      free(data);
      return &m->base;
    }
    lr__store_errf(err, errlen, "storage: snapshot %s is malformed: %s at offset %zu",
                   snapshot_path, x.why, x.p);
  }
  free(data);
  mem_close(&m->base);
  return NULL;
}

/* ---- snapshot save ---- */

typedef struct named_room {
  char *name; /* "enc(ns):enc(room)", owned */
  size_t len;
  const mroom *r;
} named_room;

static int by_name(const void *a, const void *b) {
  const named_room *x = a, *y = b;
  return mt_key_cmp(x->name, x->len, y->name, y->len);
}

/* Write one room's pairs; flushes the buffer to f when it grows. */
static int write_room(FILE *f, lr_buf *b, const named_room *nr) {
  lr_json_put_string(b, nr->name, nr->len);
  lr_buf_puts(b, ":[");
  mt_iter it;
  mt_seek(&it, nr->r->root, "", 0);
  int first = 1;
  for (mnode *x; (x = mt_next(&it));) {
    if (!first) lr_buf_putc(b, ',');
    first = 0;
    lr_buf_putc(b, '[');
    lr_json_put_string(b, x->key, x->klen);
    lr_buf_putc(b, ',');
    lr_buf_put(b, MVAL(x), x->vlen);
    lr_buf_putc(b, ']');
    if (b->len >= 65536) {
      if (fwrite(b->data, 1, b->len, f) != b->len) return -1;
      lr_buf_reset(b);
    }
  }
  lr_buf_putc(b, ']');
  return 0;
}

static int fsync_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir =
      slash ? lr_xstrndup(path, slash == path ? 1 : (size_t)(slash - path)) : lr_xstrndup(".", 1);
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  free(dir);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

/* m's rooms in a stable order: by encoded name (the caller frees the names
 * and the array; *nr is how many). */
static named_room *sorted_rooms(mstore *m, size_t *nr) {
  named_room *rooms = lr_xcalloc(m->nrooms ? m->nrooms : 1, sizeof *rooms);
  size_t n = 0;
  lr_buf b;
  lr_buf_init(&b);
  for (size_t i = 0; i < m->nbuckets; i++) {
    for (mroom *r = m->buckets[i]; r; r = r->next) {
      lr_buf_reset(&b);
      uri_encode(&b, r->ns, r->nslen);
      lr_buf_putc(&b, ':');
      uri_encode(&b, r->room, r->roomlen);
      rooms[n++] = (named_room){lr_xstrndup(b.data, b.len), b.len, r};
    }
  }
  lr_buf_free(&b);
  qsort(rooms, n, sizeof *rooms, by_name);
  *nr = n;
  return rooms;
}

int lr_store_memory_save(lr_store *s, const char *path, char *err, size_t errlen) {
  if (!s || s->vt != &memory_vt) {
    lr__store_errf(err, errlen, "storage: snapshot save needs a memory store");
    return LR_STORE_EARG;
  }
  mstore *m = (mstore *)s;
  if (!path) path = m->path;
  if (!path || !*path) {
    lr__store_errf(err, errlen, "storage: no snapshot path to save to");
    return LR_STORE_EARG;
  }
  int rc = lr__store_mkdir_parent(path, err, errlen);
  if (rc) return rc;

  size_t nr;
  named_room *rooms = sorted_rooms(m, &nr);
  lr_buf b;
  lr_buf_init(&b);

  size_t plen = strlen(path);
  char *tmp = lr_xmalloc(plen + 16);
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, ".tmp-XXXXXX", 12);
  const char *step = "create";
  FILE *f = NULL, *cf;
  int fd = mkstemp(tmp);
  if (fd < 0) goto fail;
  step = "write";
  if (fchmod(fd, 0644) != 0 || !(f = fdopen(fd, "wb"))) {
    close(fd);
    goto fail_unlink;
  }
  lr_buf_reset(&b);
  lr_buf_putc(&b, '{');
  for (size_t i = 0; i < nr; i++) {
    if (i) lr_buf_putc(&b, ',');
    if (write_room(f, &b, &rooms[i])) goto fail_unlink;
  }
  lr_buf_putc(&b, '}');
  if (fwrite(b.data, 1, b.len, f) != b.len || fflush(f) != 0) goto fail_unlink;
  step = "fsync";
  if (fsync(fileno(f)) != 0) goto fail_unlink;
  step = "close";
  cf = f;
  f = NULL;
  if (fclose(cf) != 0) goto fail_unlink;
  step = "rename";
  if (rename(tmp, path) != 0) goto fail_unlink;
  fsync_dir(path); /* best effort: the data itself is already durable */
  rc = 0;
  goto done;

fail_unlink : {
  int e = errno;
  if (f) fclose(f);
  unlink(tmp);
  errno = e;
}
fail:
  lr__store_errf(err, errlen, "storage: cannot save snapshot %s (%s %s): %s", path, step, tmp,
                 strerror(errno));
  rc = LR_STORE_EIO;
done:
  for (size_t i = 0; i < nr; i++)
    free(rooms[i].name);
  free(rooms);
  free(tmp);
  lr_buf_free(&b);
  return rc;
}

/* Test hook: make the next n lr_store_apply() calls fail with LR_STORE_EIO
 * (nothing written). Returns -1 if s is not a memory store. */
int lr_store_memory_fail_next(lr_store *s, int n) {
  if (!s || strcmp(s->vt->name, "memory") != 0) return -1;
  ((mstore *)s)->fail_next = n;
  return 0;
}

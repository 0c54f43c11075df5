/*
 * value_dels.c - the pending deletion key lists of objects (value.h: a key
 * deleted from an object waits there for the next flush of each channel),
 * and their process-wide count per channel.
 *
 * Owns: the key strings of the lists and the count lr_state_has_dels reads.
 * Must not: touch nodes, marks or the marked-member lists (value.c).
 */
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "value_int.h"

/* Deleted keys pending in every state tree of the process, per channel
 * (+1 per key recorded, -1 per key dropped: flushed, re-added, rolled back,
 * freed). 0 lets lr_state_has_dels answer without walking a tree. One engine
 * thread owns the trees. */
static uint64_t pending_dels[LR_NCH];

void lr_state_dels_dropped(int ch, uint32_t n) {
  pending_dels[ch] -= n;
}

bool lr_dels_pending(int ch) {
  return pending_dels[ch] != 0;
}

static bool keylist_has(const lr_keylist *l, const char *key, size_t keylen, uint32_t *at) {
  for (uint32_t i = 0; i < l->len; i++) {
    if (strlen(l->keys[i]) == keylen && memcmp(l->keys[i], key, keylen) == 0) {
      if (at) *at = i;
      return true;
    }
  }
  return false;
}

void lr_dels_add(lr_keylist *l, int ch, const char *key, size_t keylen) {
  if (keylist_has(l, key, keylen, NULL)) return;
  if (l->len == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 4;
    l->keys = lr_xrealloc(l->keys, l->cap * sizeof(char *));
  }
  l->keys[l->len++] = lr_xstrndup(key, keylen);
  pending_dels[ch]++;
}

void lr_dels_remove(lr_keylist *l, int ch, const char *key, size_t keylen) {
  uint32_t at;
  if (!l->len || !keylist_has(l, key, keylen, &at)) return;
  free(l->keys[at]);
  memmove(&l->keys[at], &l->keys[at + 1], (l->len - at - 1) * sizeof(char *));
  l->len--;
  pending_dels[ch]--;
}

void lr_dels_clear(lr_keylist *l, int ch) {
  for (uint32_t i = 0; i < l->len; i++)
    free(l->keys[i]);
  pending_dels[ch] -= l->len;
  l->len = 0;
}

void lr_dels_free(lr_keylist *l, int ch) {
  lr_dels_clear(l, ch);
  free(l->keys);
  l->keys = NULL;
  l->cap = 0;
}

/*
 * value_ext.c - the side table of objects' extra data (lr_objx, value.h: the
 * hash index of a large object, its pending deletions and marked-member
 * lists). A node reaches its lr_objx through a 32-bit handle (lr_node.xh)
 * instead of holding pointers to it, so every node, scalars included, is 40
 * bytes (a 48-byte malloc chunk, not 64): most objects never need one.
 *
 * Owns: the lr_objx allocations, the handle table and its free handles
 * (reused, lowest cost first: the last freed). The table goes when its last
 * handle does.
 * Must not: free or read what an lr_objx points to (value.c and
 * value_dels.c), touch nodes. One engine thread owns the trees.
 */
#include <stdint.h>
#include <stdlib.h>

#include "buf.h"
#include "value_int.h"

lr_objx **lr_objx_tab; /* handle h -> lr_objx_tab[h - 1]; NULL entries are free */
static uint32_t tab_len, tab_cap;
static uint32_t *free_h; /* freed handles, reused last in first out */
static uint32_t free_len, free_cap;

uint32_t lr_objx_new(void) {
  lr_objx *x = lr_xcalloc(1, sizeof *x);
  if (free_len) {
    uint32_t h = free_h[--free_len];
    lr_objx_tab[h - 1] = x;
    return h;
  }
  if (tab_len == tab_cap) {
    tab_cap = tab_cap ? tab_cap * 2 : 64;
    lr_objx_tab = lr_xrealloc(lr_objx_tab, tab_cap * sizeof *lr_objx_tab);
  }
  lr_objx_tab[tab_len++] = x;
  return tab_len;
}

void lr_objx_free(uint32_t h) {
  free(lr_objx_tab[h - 1]);
  lr_objx_tab[h - 1] = NULL;
  if (free_len + 1 == tab_len) { /* the last one: nothing stays allocated */
    free(lr_objx_tab);
    free(free_h);
    lr_objx_tab = NULL;
    free_h = NULL;
    tab_len = tab_cap = free_len = free_cap = 0;
    return;
  }
  if (free_len == free_cap) {
    free_cap = free_cap ? free_cap * 2 : 64;
    free_h = lr_xrealloc(free_h, free_cap * sizeof *free_h);
  }
  free_h[free_len++] = h;
}

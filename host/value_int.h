/*
 * value_int.h - what value.c, value_dels.c and value_ext.c share: the
 * pending deletion key lists of an object, counted per channel across the
 * process, and the handles of objects' side data.
 *
 * Owns: the declarations of value_dels.c's list operations and of
 * value_ext.c's handle table.
 * Must not: be included outside value*.c.
 */
#ifndef LR_VALUE_INT_H
#define LR_VALUE_INT_H

#include <stdbool.h>
#include <stddef.h>

#include "value.h"

/* A new lr_objx (zeroed) and its handle (>= 1). */
uint32_t lr_objx_new(void);
/* Free handle h's lr_objx (not what it points to) and recycle h. */
void lr_objx_free(uint32_t h);

/* Record key in l (channel ch's list); nothing if it is there already. */
void lr_dels_add(lr_keylist *l, int ch, const char *key, size_t keylen);
/* Drop key from l, keeping the order of the others (absent: nothing). */
void lr_dels_remove(lr_keylist *l, int ch, const char *key, size_t keylen);
/* Drop every key; the array keeps its capacity for the next flush window. */
void lr_dels_clear(lr_keylist *l, int ch);
/* Drop every key and the array. */
void lr_dels_free(lr_keylist *l, int ch);
/* True if some tree of the process has a pending deletion on ch. */
bool lr_dels_pending(int ch);

#endif

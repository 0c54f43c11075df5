/*
 * undo.h - the transaction log of state writes made by one call into Lua, so
 * that a handler that fails leaves the state exactly as it found it.
 *
 * Owns: recording the previous value of every container slot a proxy write
 * changes, and restoring them in reverse order.
 * Must not: call Lua or encode anything.
 *
 * Semantics: lr_vm_pcall takes a mark before the call; on failure it calls
 * lr_undo_rollback(mark) (restores and marks the restored paths dirty, so the
 * next flush re-sends the unchanged values, which clients treat as no-ops);
 * on success lr_undo_release(mark) drops the entries, unless the call was
 * nested in another one: then they stay, so a failure of the outer call
 * rolls back what the inner one wrote too.
 */
#ifndef LR_UNDO_H
#define LR_UNDO_H

#include <stddef.h>
#include <stdint.h>

#include "value.h"

/* Open a transaction and return its mark. Every mark must be closed by
 * exactly one lr_undo_rollback or lr_undo_release. Writes made while no
 * transaction is open (spec code, room creation) are not recorded. */
size_t lr_undo_mark(void);
/* Before obj[key] is set or deleted (obj is an object). */
void lr_undo_record_key(lr_node *obj, const char *key, size_t keylen);
/* Before any change to array arr (records the whole array once per mark). */
void lr_undo_record_array(lr_node *arr);
void lr_undo_rollback(size_t mark);
void lr_undo_release(size_t mark);

#endif

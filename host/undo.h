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
 *
 * One log per Lua state (lua_vm.c creates it with the state and hands it
 * out with lr_vm_undo): its records and its count of open transactions
 * live together, so two states never mix their writes.
 */
#ifndef LR_UNDO_H
#define LR_UNDO_H

#include <stddef.h>
#include <stdint.h>

#include "value.h"

typedef struct lr_undo lr_undo;

/* A new, empty log. */
lr_undo *lr_undo_new(void);
/* Free u and drop the records still in it (none once every mark is
 * closed). NULL is ignored. */
void lr_undo_free(lr_undo *u);
/* Open a transaction and return its mark. Every mark must be closed by
 * exactly one lr_undo_rollback or lr_undo_release. Writes made while no
 * transaction is open (spec code, room creation) are not recorded. */
size_t lr_undo_mark(lr_undo *u);
/* Before obj[key] is set or deleted (obj is an object). */
void lr_undo_record_key(lr_undo *u, lr_node *obj, const char *key, size_t keylen);
/* Before obj[key] is set (lr_state_set: never a delete). When the key holds
 * null, a boolean or a number (the common write: a field of a player), one
 * record keeps the node and its old value, no copy; otherwise as
 * lr_undo_record_key. */
void lr_undo_record_set(lr_undo *u, lr_node *obj, const char *key, size_t keylen);
/* Before any change to array arr (records the whole array once per mark). */
void lr_undo_record_array(lr_undo *u, lr_node *arr);
void lr_undo_rollback(lr_undo *u, size_t mark);
void lr_undo_release(lr_undo *u, size_t mark);
/* Records held (tests). */
size_t lr_undo_records(const lr_undo *u);

#endif

/*
 * bridge.h - the room rules over the Lua runtime (bridge.c).
 *
 * Owns: lr_bridge_rules, the rules.h implementation the server and the
 * headless host give their lr_server; the one counted call into Lua
 * (lr_bridge_pcall) and the rollback policy of a room around a call
 * (lr_call_guard), for the host code of the rules' side that calls Lua
 * with its own call info (reload.c's budgeted steps, lua_wait.c's resumes).
 * Must not: be included by the engine files (they see rules.h only).
 */
#ifndef LR_BRIDGE_H
#define LR_BRIDGE_H

#include <stdbool.h>

#include <lua.h>

#include "engine.h"
#include "lua_vm.h"
#include "rules.h"

extern const lr_rules_vt lr_bridge_rules;

/* core.set_runtime(runtime): reference runtime's hot functions (connect,
 * message, close, intercept, request) of the table at idx. */
void lr_bridge_bind(lua_State *L, int idx);

/* What runs on every rules tick (once per loop pass, before the flush):
 * hot reload's poll, set by reload.c when a watcher opens (bridge.c knows
 * no feature). NULL: nothing. */
void lr_bridge_set_tick(void (*fn)(lr_server *s));

/* The policy around a call into Lua that may write room r's state (r NULL:
 * none): begin before the call (retains r, notes which channels had
 * changes pending), end after it. After a failed call (rolled back by
 * lr_vm_pcall/lr_vm_resume) the dirty marks the rollback left on a channel
 * that had nothing pending are cleared: a failed call sends and writes
 * nothing. */
typedef struct lr_call_guard {
  lr_room *r;
  bool was_dirty[LR_NCH];
} lr_call_guard;
void lr_call_guard_begin(lr_call_guard *g, lr_room *r);
void lr_call_guard_end(lr_call_guard *g, bool failed);

/* The function below nargs values on L (a thread of s's state) called with
 * lr_vm_pcall and ci, inside r's guard (r may be NULL), counted in s's
 * handler metrics (calls, seconds, histogram). The host's calls into Lua
 * made for a server go through here: the rules' own calls and rules->call
 * (bridge.c), and the rules-side callers that need their own ci (reload's
 * budgeted steps, a deferred HTTP answer). Returns lr_vm_pcall's status.
 * [-(nargs+1), +nres|0] */
int lr_bridge_pcall(lr_server *s, lua_State *L, lr_room *r, lr_callinfo *ci, int nargs, int nres);

#endif

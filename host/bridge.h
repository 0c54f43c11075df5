/*
 * bridge.h - the room rules over the Lua runtime (bridge.c).
 *
 * Owns: lr_bridge_rules, the rules.h implementation the server and the
 * headless host give their lr_server.
 * Must not: be included by the engine files (they see rules.h only).
 */
#ifndef LR_BRIDGE_H
#define LR_BRIDGE_H

#include <lua.h>

#include "rules.h"

extern const lr_rules_vt lr_bridge_rules;

/* core.set_runtime(runtime): reference runtime's hot functions (connect,
 * message, close, intercept, request) of the table at idx. */
void lr_bridge_bind(lua_State *L, int idx);

#endif

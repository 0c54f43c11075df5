/*
 * lua_api.h - what the host shares of lua_api.c with the files that build
 * Lua values of engine objects (bridge.c, headless.c, uplink.c, lua_jwt.c)
 * and with lua_core.c, which assembles the module.
 *
 * Owns: the conversion and conn-table functions below.
 * Must not: be included by the engine files (room.c and its neighbours go
 * through rules.h).
 */
#ifndef LR_LUA_API_H
#define LR_LUA_API_H

#include <lua.h>

#include "engine.h"

/* Push the Lua value of n (scalars as Lua values, containers as live proxies
 * bound to room r; r may be NULL for plain copies). [-0,+1] */
void lr_lua_push_node(lua_State *L, lr_node *n, lr_room *r);
/* Push a plain Lua copy of n (tables; arrays marked). [-0,+1] */
void lr_lua_push_copy(lua_State *L, const lr_node *n);
/* Convert the Lua value at idx to a new node tree; NULL with err on failure
 * (function, cycle, NaN, invalid UTF-8, ...). where names the path for errors. */
lr_node *lr_lua_to_node(lua_State *L, int idx, const char *where, char *err, size_t errlen);
/* Push the Lua conn table of c. [-0,+1] */
void lr_lua_push_conn(lua_State *L, lr_conn *c);
/* Create a conn's Lua table (id, sessionId, state, handle). [-0,+0] */
void lr_lua_new_conn(lua_State *L, lr_conn *c, const char *session_id);

/* The server of the handle at idx (raises "server is closed"). */
lr_server *lr_lua_check_server(lua_State *L, int idx);
/* The function core.set_runtime(runtime) calls with the runtime table's
 * index (lua_core.c: lr_bridge_bind). */
void lr_lua_api_set_bind(void (*bind)(lua_State *L, int idx));
/* Build the lunaroom.core module table (metatables, functions). [-0,+1] */
int lr_lua_api_open(lua_State *L);

#endif

/*
 * lua_api.h - what the host shares of lua_api.c with the files that build
 * Lua values of engine objects (bridge.c, headless.c, uplink.c, lua_jwt.c,
 * lua_store.c, lua_admin.c) and with lua_core.c, which assembles the module
 * from lua_api.c, lua_proxy.c, lua_store.c, lua_admin.c and headless.c.
 *
 * Owns: the handle and conn-table functions below (the conversion ones are
 * lua_proxy.h's, included here).
 * Must not: be included by the engine files (room.c and its neighbours go
 * through rules.h).
 */
#ifndef LR_LUA_API_H
#define LR_LUA_API_H

#include <lua.h>

#include "engine.h"
#include "lua_proxy.h"

/* Push the Lua conn table of c. [-0,+1] */
void lr_lua_push_conn(lua_State *L, lr_conn *c);
/* Create a conn's Lua table (id, sessionId, state, handle). [-0,+0] */
void lr_lua_new_conn(lua_State *L, lr_conn *c, const char *session_id);

/* The server of the handle at idx (raises "server is closed"). */
lr_server *lr_lua_check_server(lua_State *L, int idx);
/* Wrap an existing server (serve mode: main.c owns it unless owned). [-0,+1] */
void lr_lua_push_server(lua_State *L, lr_server *s, bool owned);
/* The room of the handle at idx (raises "room disposed"). */
lr_room *lr_lua_check_room(lua_State *L, int idx);
/* The function core.set_runtime(runtime) calls with the runtime table's
 * index (lua_core.c: lr_bridge_bind). */
void lr_lua_api_set_bind(void (*bind)(lua_State *L, int idx));
/* Build the lunaroom.core module table with the handle metatables and the
 * functions of lua_api.c. [-0,+1] */
int lr_lua_api_open(lua_State *L);
/* Push s[0..n) URL-decoded ('+' a space, "%XX" the byte, any other '%'
 * kept): the one decoder of query strings (core.parse_query, jwt.bearer).
 * [-0,+1] */
void lr_lua_push_urldecoded(lua_State *L, const char *s, size_t n);
/* Add lua_schema.c's core.schema_fast to the module table on top. [-0,+0] */
void lr_lua_schema_register(lua_State *L);
/* Add lua_store.c's storage functions to the module table on top. [-0,+0] */
void lr_lua_store_register(lua_State *L);
/* Push n figures as an array of {name, kind, help, value} (/metrics: the
 * store's, lua_store.c, and a cluster node's relay, cluster_lua.c). [-0,+1] */
void lr_lua_push_stats(lua_State *L, const lr_store_stat *v, size_t n);
/* Add lua_admin.c's admin and ops functions to the module table on top. [-0,+0] */
void lr_lua_admin_register(lua_State *L);

#endif

/*
 * lua_proxy.h - conversion between Lua values and lr_node trees, and the
 * state proxies (lua_proxy.c). Included through lua_api.h by the files that
 * build Lua values of engine objects.
 *
 * Owns: the declarations below.
 * Must not: be included by the engine files (they go through rules.h).
 */
#ifndef LR_LUA_PROXY_H
#define LR_LUA_PROXY_H

#include <stddef.h>

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

/* Create the node and array metatables and the proxy cache, and add the
 * value functions (encode, decode, copy, is_proxy, set_flags, path) and
 * null, array_mt, NOSYNC, NOPERSIST to the module table on top. [-0,+0] */
void lr_lua_proxy_register(lua_State *L);

#endif

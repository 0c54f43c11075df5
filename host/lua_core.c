/*
 * lua_core.c - the "lunaroom.core" module as Lua requires it: the one place
 * that puts its pieces together (lua_api.c's functions and handles,
 * lua_proxy.c's values, lua_store.c's storage, lua_admin.c's ops,
 * headless.c's transport, bridge.c's rules for the servers it creates).
 *
 * Owns: luaopen_lunaroom_core (lua_vm.c preloads it).
 * Must not: define core functions itself (they live with what they touch).
 */
#include <lua.h>

#include "bridge.h"
#include "headless.h"
#include "lua_api.h"
#include "uplink.h"

int luaopen_lunaroom_core(lua_State *L);

/* Every server built once the module is loaded (core.server_new, main.c's
 * serve, the fuzz harness): the rules over runtime.lua, shard uplinks
 * accepted (lr_server_init_hook). */
static void server_init(lr_server *s) {
  s->rules = &lr_bridge_rules;
  lr_uplink_install(s);
}

int luaopen_lunaroom_core(lua_State *L) {
  lr_server_init_hook = server_init;
  lr_lua_api_set_bind(lr_bridge_bind);
  lr_lua_api_open(L);
  lr_lua_proxy_register(L);
  lr_lua_schema_register(L);
  lr_lua_store_register(L);
  lr_lua_admin_register(L);
  lr_headless_register(L);
  return 1;
}

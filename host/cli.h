/*
 * cli.h - what the lunaroom command's files share: main.c dispatches to the
 * drivers of cli.c (test, lua, check, init, version) and serve.c (serve),
 * which use the helpers below.
 *
 * Owns: the declarations below.
 * Must not: be included by the engine, the rules, the transports or the
 * features (the command line is the top layer).
 */
#ifndef LR_CLI_H
#define LR_CLI_H

#include <stddef.h>

#include <lua.h>

/* The help text (lunaroom --help). */
extern const char *const lr_cli_usage;
/* --lua-modules DIR[:DIR...] (a LuaRocks tree: its share/lua/5.4; else the
 * folder itself): where room code's require looks after the rooms folder.
 * NULL when not given. */
extern const char *lr_cli_lua_modules;

/* Where the Lua half of the runtime is: $LUNAROOM_LUA_PATH, else
 * ../share/lunaroom/lua next to the binary, else ./lua and the source
 * tree's lua/. */
const char *lr_cli_default_lua_dir(void);
/* A Lua state with the host's modules and the --lua-modules folders. */
lua_State *lr_cli_open_vm(const char *lua_dir, size_t mem_limit);
/* require(mod) through lr_vm_pcall, leaving the module on the stack:
 * 0, or the lr_vm_pcall status (logged). */
int lr_cli_require(lua_State *L, const char *mod);
/* A message handler for lua_pcall: the error with a traceback. */
int lr_cli_traceback(lua_State *L);

/* The subcommands: each returns the process exit status. */
int lr_cmd_serve(int argc, char **argv, const char *lua_dir);
int lr_cmd_test(int argc, char **argv, const char *lua_dir);
int lr_cmd_lua(int argc, char **argv, const char *lua_dir);
int lr_cmd_check(const char *dir, const char *lua_dir);
int lr_cmd_init(int argc, char **argv, const char *lua_dir);
int lr_cmd_version(void);

#endif

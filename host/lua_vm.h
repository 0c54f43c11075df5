/*
 * lua_vm.h - the process's Lua 5.4 state: allocator with a memory limit, the
 * one protected-call helper every C->Lua call goes through (traceback,
 * instruction budget, state-write transaction), and room-script sandboxes.
 *
 * Owns: lua_State creation and teardown, budgets, error reporting of Lua
 * calls. Must not: know rooms, sockets or JSON.
 */
#ifndef LR_LUA_VM_H
#define LR_LUA_VM_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

/* Default instruction budget of one call from the host into Lua. */
#define LR_DEFAULT_BUDGET 50000000LL
/* Default memory limit of one call from the host into Lua: bytes the call
 * may allocate (freed or not) before it is stopped. */
#define LR_DEFAULT_CALL_MEMORY (64LL << 20)

/* Create the state: all standard libraries (specs and the runtime need them;
 * room scripts only see their sandbox, built by lunaroom/sandbox.lua),
 * package.path with lua_dir/?.lua and lua_dir/?/init.lua first, and
 * "lunaroom.core" in package.preload. mem_limit 0 = unlimited. */
lua_State *lr_vm_open(const char *lua_dir, size_t mem_limit);
void lr_vm_close(lua_State *L);
/* Bytes currently allocated by the state, and the limit (0 = none). */
size_t lr_vm_memory(lua_State *L);
void lr_vm_set_memory_limit(lua_State *L, size_t limit);

typedef struct lr_callinfo {
  const char *room; /* room id for the log line, or NULL */
  const char *what; /* "action move", "onJoin", "timer", ... */
  int64_t budget;   /* instructions; 0 = LR_DEFAULT_BUDGET */
  int64_t memory;   /* bytes the call may allocate; 0 = LR_DEFAULT_CALL_MEMORY */
  char err[512];    /* out: first line of the error message on failure */
  int budget_hit;   /* out: 1 if the call was stopped by the budget */
} lr_callinfo;

/* Call the function below nargs arguments on the stack in protected mode.
 * Stack: [-(nargs+1), +nres] on success (LUA_MULTRET allowed), [-(nargs+1), +0]
 * on failure. On failure every state write the call made is rolled back
 * (undo.h), the error is logged with room, what and the traceback, and a
 * non-zero status is returned. Nested calls share the outer budget. */
int lr_vm_pcall(lua_State *L, int nargs, int nres, lr_callinfo *ci);

/* lua_resume(co, from, nargs, nres) with the same budget, undo mark and
 * error logging as lr_vm_pcall. Returns LUA_OK (results on co, *nres of
 * them), LUA_YIELD (yielded values on co, *nres of them) or an error status
 * (logged with the traceback of co, first line in ci->err; co is dead). */
int lr_vm_resume(lua_State *co, lua_State *from, int nargs, int *nres, lr_callinfo *ci);

/* Charge cost instructions to the budget of the running call: C functions
 * that room code can make work long call this before (or while) doing the
 * work. Raises the budget error when the budget is spent (or the call was
 * already stopped). A no-op outside lr_vm_pcall/lr_vm_resume. */
void lr_vm_charge(lua_State *L, int64_t cost);
/* The same charge for C code that must clean up before an error: never
 * raises; when the budget is spent, the call is stopped at its next Lua
 * instruction (as by the budget: a pcall in the script cannot catch it). */
void lr_vm_spend(lua_State *L, int64_t cost);
/* Instructions left in the running call's budget; INT64_MAX outside a
 * call (nothing is limited there), 0 once the call is stopped. */
int64_t lr_vm_budget_left(lua_State *L);

/* A C closure over upvalue 1 (coroutine.create or coroutine.wrap, for the
 * room sandbox): calls it with the count hook on the calling thread, so the
 * coroutine it makes counts every instruction (the watchdog of a call with
 * a big budget only hooks the call's own thread). */
int lr_vm_counted(lua_State *L);

/* The lua_dir the state was opened with. */
const char *lr_vm_lua_dir(lua_State *L);

/* What the hot C functions of a state keep so they need no registry lookup
 * by name: set by the module that owns each field (lua_proxy.c: the node
 * metatable and the proxy cache; lua_api.c: the handle metatables and the
 * conn tables' metatable). NULL for a state not opened by lr_vm_open (the
 * callers take their slow path). */
enum { LR_HOT_NODE, LR_HOT_SERVER, LR_HOT_ROOM, LR_HOT_CONN, LR_HOT_NMT };
typedef struct lr_vm_hot {
  const void *mt[LR_HOT_NMT]; /* lua_topointer of each kind's metatable, NULL until registered */
  int proxies;                /* registry reference of the proxy cache, 0 until registered */
  int conn_mt;                /* registry reference of the conn tables' metatable, 0 until set */
  int connh_mt;               /* registry reference of LR_HOT_CONN's metatable, 0 until set */
} lr_vm_hot;
lr_vm_hot *lr_vm_hot_of(lua_State *L);
/* luaL_testudata / luaL_checkudata for a userdata of kind k (LR_HOT_*,
 * registered under tname): its metatable compared by address (the registry
 * keeps it: the address is its own), by name while k is not registered. */
void *lr_vm_testudata(lua_State *L, int idx, int k, const char *tname);
void *lr_vm_checkudata(lua_State *L, int idx, int k, const char *tname);

/* The undo log of the state (undo.h): lr_vm_pcall and lr_vm_resume open
 * and close its transactions; proxy writes record into it. */
struct lr_undo;
struct lr_undo *lr_vm_undo(lua_State *L);

/* Registry references: the one wrapper every luaL_ref/luaL_unref of the
 * host goes through. lr_ref_take pops the value on top and returns its
 * reference (LUA_REFNIL for nil); lr_ref_release frees one (references
 * <= 0 are not references and are ignored); lr_ref_live counts the live
 * references the state's host code holds, so a test can assert that
 * creating and disposing a room leaks none. Counted in every build: one
 * addition per reference, the price of running the leak test in the build
 * `make test` uses. */
int lr_ref_take(lua_State *L);
void lr_ref_release(lua_State *L, int ref);
long lr_ref_live(lua_State *L);

#endif

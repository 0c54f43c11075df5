/*
 * lua_wait.c - the host half of handlers that wait (runtime.lua's tasks):
 * `require "lunaroom.wait_c"` for the runtime (never for room scripts).
 *
 *   resume(co, roomh|nil, roomkey, what, ...) -> "done", results... | "wait", yielded...
 *                                   | "error", message, budget_hit
 *     lua_resume through lr_vm_resume: inside a host call the budget and the
 *     per-call memory cap are the caller's (one segment), the writes of the
 *     step are rolled back when it fails, and the failure is logged with
 *     the coroutine's traceback.
 *   hold(roomh, delta)   the room does not hibernate or get evicted while a
 *                        handler of it waits (lr_room_wait_hold)
 *   replay(conn)         a connection whose connect waited has joined: the
 *                        frames it sent meanwhile run, in order, from a 0 ms
 *                        timer
 *   send_error(conn, code, action|nil, message)   the error packet of an
 *                        action whose handler finished after a wait
 *   alive(conn)          whether the connection is still open
 *
 * Owns: those four bindings. Must not: decide when a handler waits or
 * resumes (runtime.lua does), or keep any state of its own.
 */
#include <stdbool.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "engine.h"
#include "lua_vm.h"

/* The userdata names of lua_api.c (the handles it gives the runtime). */
#define ROOM_MT "lunaroom.roomh"
#define CONN_MT "lunaroom.connh"

static lr_conn *opt_conn(lua_State *L, int idx) {
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_getfield(L, idx, "_h");
  lr_conn **b = luaL_testudata(L, -1, CONN_MT);
  lua_pop(L, 1);
  return b ? *b : NULL; /* NULL: the connection is gone */
}

static int w_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argcheck(L, co != NULL, 1, "coroutine expected");
  lr_room **rb = lua_isnil(L, 2) ? NULL : luaL_checkudata(L, 2, ROOM_MT);
  lr_room *r = rb && *rb && !(*rb)->disposed ? *rb : NULL;
  int nargs = lua_gettop(L) - 4;
  if (!lua_checkstack(co, nargs + LUA_MINSTACK)) return luaL_error(L, "resume: stack overflow");
  lr_callinfo ci = {.room = lua_tostring(L, 3), .what = lua_tostring(L, 4)};
  bool was_dirty[LR_NCH] = {false, false};
  if (r) {
    lr_room_retain(r);
    for (int ch = 0; ch < LR_NCH; ch++)
      was_dirty[ch] = lr_state_dirty(r->root, ch);
  }
  lua_xmove(L, co, nargs);
  int nres = 0;
  int rc = lr_vm_resume(co, L, nargs, &nres, &ci);
  if (r) {
    /* A failed step was rolled back: if nothing was pending before it, its
     * marks describe no change (as lr_runtime_call does for a call). */
    if (rc != LUA_OK && rc != LUA_YIELD && !r->disposed)
      for (int ch = 0; ch < LR_NCH; ch++)
        if (!was_dirty[ch]) lr_state_clear_dirty(r->root, ch);
    lr_room_release(r);
  }
  if (rc == LUA_OK || rc == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      return luaL_error(L, "resume: too many results");
    }
    lua_pushstring(L, rc == LUA_OK ? "done" : "wait");
    lua_xmove(co, L, nres);
    return nres + 1;
  }
  lua_settop(co, 0);
  lua_pushstring(L, "error");
  lua_pushstring(L, ci.budget_hit ? "instruction budget exceeded" : ci.err);
  lua_pushboolean(L, ci.budget_hit);
  return 3;
}

static int w_hold(lua_State *L) {
  lr_room **b = luaL_checkudata(L, 1, ROOM_MT);
  int delta = (int)luaL_checkinteger(L, 2);
  if (*b) lr_room_wait_hold(*b, delta);
  return 0;
}

static int w_replay(lua_State *L) {
  lr_conn *c = opt_conn(L, 1);
  if (c) lr_conn_replay_early_later(c);
  return 0;
}

static int w_alive(lua_State *L) {
  lr_conn *c = opt_conn(L, 1);
  lua_pushboolean(L, c && c->phase != LR_C_GONE && c->phase != LR_C_CLOSING);
  return 1;
}

static int w_send_error(lua_State *L) {
  lr_conn *c = opt_conn(L, 1);
  const char *code = luaL_checkstring(L, 2);
  const char *action = luaL_optstring(L, 3, NULL);
  const char *msg = luaL_checkstring(L, 4);
  if (c) lr_conn_send_error(c, code, action, msg);
  return 0;
}

int luaopen_lunaroom_wait_c(lua_State *L) {
  static const luaL_Reg fns[] = {{"resume", w_resume}, {"hold", w_hold},
                                 {"replay", w_replay}, {"send_error", w_send_error},
                                 {"alive", w_alive},   {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}

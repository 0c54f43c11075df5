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
 *   send_raw(conn, json) a packet whose interceptor waited, to the connection
 *                        as it is (the storage gate applies; the interceptor
 *                        ran already)
 *   respond(responder, response)   answers an HTTP request whose guard or
 *                        route waited (lr_wait_http_defer made the responder;
 *                        one nobody answers is answered 503 when collected)
 *
 * Owns: those bindings and the responder of a deferred HTTP answer. Must not: decide when a handler
 * waits or resumes (runtime.lua does), or keep any state of its own.
 */
#include <stdbool.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "bridge.h"
#include "engine.h"
#include "lua_vm.h"

/* The userdata names of lua_api.c (the handles it gives the runtime). */
#define ROOM_MT "lunaroom.roomh"
#define CONN_MT "lunaroom.connh"

static lr_conn *opt_conn(lua_State *L, int idx) {
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_getfield(L, idx, "_h");
  lr_conn **b = lr_vm_testudata(L, -1, LR_HOT_CONN, CONN_MT);
  lua_pop(L, 1);
  return b ? *b : NULL; /* NULL: the connection is gone */
}

static int w_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argcheck(L, co != NULL, 1, "coroutine expected");
  /* The runtime passes the room's own handle (or nil): not checked against
   * its metatable on this hot path (every handler call goes through here). */
  lr_room **rb = lua_touserdata(L, 2);
  lr_room *r = rb && *rb && !(*rb)->disposed ? *rb : NULL;
  int nargs = lua_gettop(L) - 4;
  if (!lua_checkstack(co, nargs + LUA_MINSTACK)) return luaL_error(L, "resume: stack overflow");
  lr_callinfo ci = {.room = lua_tostring(L, 3), .what = lua_tostring(L, 4)};
  /* Not counted: a resume runs inside a call (lr_bridge_pcall) that is.
   * A failed step was rolled back; the room's marks as after a call. */
  lr_call_guard g;
  lr_call_guard_begin(&g, r);
  lua_xmove(L, co, nargs);
  int nres = 0;
  int rc = lr_vm_resume(co, L, nargs, &nres, &ci);
  lr_call_guard_end(&g, rc != LUA_OK && rc != LUA_YIELD);
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

/* Handlers waiting in the process (one server per process under serve; the
 * headless host does not ask). */
static long waiting;

long lr_server_waiting(lr_server *s) {
  (void)s;
  return waiting;
}

static int w_hold(lua_State *L) {
  lr_room **b = lr_vm_checkudata(L, 1, LR_HOT_ROOM, ROOM_MT);
  int delta = (int)luaL_checkinteger(L, 2);
  waiting += delta > 0 ? 1 : (waiting > 0 ? -1 : 0);
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

static int w_send_raw(lua_State *L) {
  lr_conn *c = opt_conn(L, 1);
  size_t n;
  const char *json = luaL_checklstring(L, 2, &n);
  if (c && c->phase != LR_C_GONE && c->phase != LR_C_CLOSING) {
    lr_msg *m = lr_msg_new(json, n);
    lr_conn_send_raw(c, m);
    lr_msg_release(m);
  }
  return 0;
}

static int w_send_error(lua_State *L) {
  lr_conn *c = opt_conn(L, 1);
  const char *code = luaL_checkstring(L, 2);
  const char *action = luaL_optstring(L, 3, NULL);
  const char *msg = luaL_checkstring(L, 4);
  if (c) lr_conn_send_error(c, code, action, msg);
  return 0;
}

/* ---- HTTP requests whose guard or route waits ---- */

#define RESPONDER_MT "lunaroom.responder"

typedef struct responder {
  lr_server *s;
  lr_response_cb done; /* NULL once answered */
  void *ud;
} responder;

static void answer_simple(responder *p, int status, const char *body) {
  lr_response_cb done = p->done;
  p->done = NULL;
  lr_respond_json(done, p->ud, status, body); /* router.c: the CORS headers too */
}

/* respond(responder, response) -> answered now (false: it was already) */
static int w_respond(lua_State *L) {
  responder *p = luaL_checkudata(L, 1, RESPONDER_MT);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!p->done) {
    lua_pushboolean(L, 0);
    return 1;
  }
  /* Write first: an answer must not show what could not be stored. */
  lr_server_flush_touched(p->s);
  lua_settop(L, 2);
  lr_response_cb done = p->done;
  p->done = NULL;
  lr_respond_table(L, done, p->ud);
  lua_pushboolean(L, 1);
  return 1;
}

/* A responder nobody answered (its handler was cancelled, the server is
 * going away): 503, so the client is not left hanging. */
static int responder_gc(lua_State *L) {
  responder *p = luaL_checkudata(L, 1, RESPONDER_MT);
  if (p->done) answer_simple(p, 503, "{\"error\":\"Service Unavailable\"}");
  return 0;
}

bool lr_wait_http_defer(lr_server *s, lr_room *r, lua_State *L, lr_response_cb done, void *ud) {
  if (!lua_istable(L, -1)) return false;
  lua_getfield(L, -1, "_wait");
  if (!lua_isfunction(L, -1)) {
    lua_pop(L, 1);
    return false;
  }
  responder *p = lua_newuserdatauv(L, sizeof *p, 0);
  p->s = s;
  p->done = done;
  p->ud = ud;
  if (luaL_newmetatable(L, RESPONDER_MT)) {
    lua_pushcfunction(L, responder_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_insert(L, -3); /* responder, fn, responder */
  lr_callinfo ci = {.room = r ? r->key : NULL, .what = "request (waiting)"};
  if (lr_bridge_pcall(s, L, r, &ci, 1, 0) != 0 && p->done)
    answer_simple(p, 500, "{\"error\":\"Internal Server Error\"}");
  lua_pop(L, 1);
  return true;
}

int luaopen_lunaroom_wait_c(lua_State *L) {
  static const luaL_Reg fns[] = {{"resume", w_resume},     {"hold", w_hold},
                                 {"replay", w_replay},     {"send_error", w_send_error},
                                 {"alive", w_alive},       {"respond", w_respond},
                                 {"send_raw", w_send_raw}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}

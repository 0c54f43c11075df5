/*
 * fetch_lua.c - `require "lunaroom.fetch"` (runtime.lua, not room scripts):
 * fetch.request(method, url, headers, body, timeout_ms, fn) over lr_fetch,
 * and the {status, body, error?, contentType?} table of a result.
 *
 * Owns: the Lua side of a request: the lua_req holding its callback's
 * registry reference (freed after the callback ran, or by the request's
 * drop function when no answer comes: cancelled, shut down).
 * Must not: call the callback other than through the rules' counted call
 * (rules->call, engine.h says why), or talk to lws: the request is
 * fetch_http.c's.
 */
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>

#include "engine.h"
#include "fetch_int.h"
#include "lua_vm.h"

typedef struct lua_req {
  lr_server *s;
  int fn; /* registry ref of the callback */
} lua_req;

void lr_fetch_push_result(lua_State *L, const lr_fetch_result *r) {
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, r->status);
  lua_setfield(L, -2, "status");
  lua_pushlstring(L, r->body, r->bodylen);
  lua_setfield(L, -2, "body");
  if (r->error) {
    lua_pushstring(L, r->error);
    lua_setfield(L, -2, "error");
  }
  if (r->content_type) {
    lua_pushstring(L, r->content_type);
    lua_setfield(L, -2, "contentType");
  }
}

static void lua_done(void *ud, const lr_fetch_result *r) {
  lua_req *q = ud;
  lua_State *L = q->s->L; /* the server's: the caller's thread may be gone */
  lua_rawgeti(L, LUA_REGISTRYINDEX, q->fn);
  lr_fetch_push_result(L, r);
  /* Counted and rolled back as the rules' own calls. No room here: the
   * runtime's callbacks run a room's code through wait_c.resume with it. */
  q->s->rules->call(q->s, "fetch callback", 1, 0, NULL, 0);
  lr_ref_release(L, q->fn);
  free(q);
}

/* fetch.request(method, url, headers, body, timeout_ms, fn) -> id | nil, err */
static int l_request(lua_State *L) {
  lr_server *s = lua_touserdata(L, lua_upvalueindex(1));
  const char *method = luaL_checkstring(L, 1);
  const char *url = luaL_checkstring(L, 2);
  lr_header hs[64];
  size_t nh = 0;
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3) && nh < 64) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING)
        hs[nh++] = (lr_header){lua_tostring(L, -2), lua_tostring(L, -1)};
      lua_pop(L, 1); /* the table keeps the strings alive */
    }
  }
  size_t blen = 0;
  const char *body = luaL_optlstring(L, 4, NULL, &blen);
  lua_Integer timeout = luaL_optinteger(L, 5, 10000);
  luaL_checktype(L, 6, LUA_TFUNCTION);
  lua_req *q = lr_xcalloc(1, sizeof *q);
  q->s = s;
  lua_pushvalue(L, 6);
  q->fn = lr_ref_take(L);
  /* free: a request that goes unanswered (cancelled, shut down) frees q. */
  uint64_t id = fetch_http_start(s, method, url, hs, nh, body, blen, timeout, lua_done, q, free);
  if (!id) {
    lr_ref_release(L, q->fn);
    free(q);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot fetch %s (only http(s)://HOST:PORT/... URLs)", url);
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)id);
  return 1;
}

static int luaopen_fetch(lua_State *L) {
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, l_request, 1);
  lua_setfield(L, -2, "request");
  return 1;
}

void lr_fetch_lua_register(lua_State *L, lr_server *s) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushlightuserdata(L, s);
  lua_pushcclosure(L, luaopen_fetch, 1);
  lua_setfield(L, -2, "lunaroom.fetch");
  lua_pop(L, 2);
}

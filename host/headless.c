/*
 * headless.c - the in-process transport of the test host: connections and
 * HTTP requests that specs drive from Lua (core.hl_*, core.http), on the
 * engine's virtual clock, with no socket.
 *
 * Owns: the "lunaroom.headless" handles (a queue of the packets the engine
 * sent to one connection, its close code), the lr_transport_vt they give
 * the engine, and the answers of in-process HTTP requests.
 * Must not: reach into the engine beyond server.h and the conn/room fields
 * specs inspect, run room rules, or call Lua other than through the rules'
 * counted call (s->rules->call).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "engine.h"
#include "headless.h"
#include "log.h"
#include "lua_api.h"
#include "lua_vm.h"

#define HL_MT "lunaroom.headless"

typedef struct hl {
  lr_conn *c; /* retained */
  lr_msg **q;
  uint32_t nq, capq;
  bool discard;   /* drop what is sent (benchmarks) */
  int close_code; /* -1 while open */
  char reason[124];
  bool closed; /* lr_conn_closed has been delivered */
} hl;

static int hl_send(lr_conn *c, lr_msg *m) {
  hl *h = c->tp;
  if (!h || h->closed) return -1;
  if (h->discard) return 0;
  if (h->nq == h->capq) {
    h->capq = h->capq ? h->capq * 2 : 16;
    h->q = lr_xrealloc(h->q, h->capq * sizeof *h->q);
  }
  h->q[h->nq++] = lr_msg_retain(m);
  return 0;
}

static void hl_close(lr_conn *c, int code, const char *reason) {
  hl *h = c->tp;
  lr_server *s = c->srv;
  if (h && h->close_code < 0) {
    h->close_code = code;
    snprintf(h->reason, sizeof h->reason, "%s", reason ? reason : "");
  }
  /* Deliver the close on the next tick (never re-enter the engine). */
  if (s->npending_close == s->cappending_close) {
    s->cappending_close = s->cappending_close ? s->cappending_close * 2 : 8;
    s->pending_close =
        lr_xrealloc(s->pending_close, s->cappending_close * sizeof *s->pending_close);
  }
  s->pending_close[s->npending_close++] = c;
  if (h) h->closed = true;
}

static const lr_transport_vt hl_vt = {hl_send, hl_close};

static int hl_gc(lua_State *L) {
  hl *h = luaL_checkudata(L, 1, HL_MT);
  for (uint32_t i = 0; i < h->nq; i++)
    lr_msg_release(h->q[i]);
  free(h->q);
  h->q = NULL;
  h->nq = 0;
  if (h->c) {
    h->c->tp = NULL;
    lr_conn_release(h->c);
    h->c = NULL;
  }
  return 0;
}

/* Parse "a=1&b=x%20y" into headers-free request and call ws_open.
 * core.hl_connect(srv, path, query, headers[, ip]) -> hl | nil, status */
static int l_hl_connect(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  const char *path = luaL_checkstring(L, 2);
  const char *query = luaL_optstring(L, 3, "");
  lr_header hs[64];
  size_t nh = 0;
  if (lua_istable(L, 4)) {
    lua_pushnil(L);
    while (lua_next(L, 4) && nh < 64) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING)
        hs[nh++] = (lr_header){lua_tostring(L, -2), lua_tostring(L, -1)};
      lua_pop(L, 1);
    }
  }
  /* ip: the client address per-address limits count; none (in-process) by
   * default. Read before the userdata below lands at index 5. */
  const char *ip = luaL_optstring(L, 5, NULL);
  lua_settop(L, 5);
  hl *h = lua_newuserdatauv(L, sizeof *h, 0);
  memset(h, 0, sizeof *h);
  h->close_code = -1;
  luaL_setmetatable(L, HL_MT);
  lr_request req = {"GET", path, query, hs, nh, NULL, 0, ip && *ip ? ip : NULL, NULL, NULL};
  lr_conn *c = NULL;
  int status = lr_server_ws_open(s, &req, &hl_vt, h, &c);
  if (status) {
    lua_pushnil(L);
    lua_pushinteger(L, status);
    return 2;
  }
  lr_conn_retain(c);
  h->c = c;
  lr_server_tick(s);
  return 1;
}

static int l_hl_send(lua_State *L) {
  hl *h = luaL_checkudata(L, 1, HL_MT);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (!h->c || h->closed) return luaL_error(L, "client is closed");
  lr_server *srv = h->c->srv;
  lr_conn_message(h->c, s, n);
  lr_server_tick(srv);
  return 0;
}

static int l_hl_close(lua_State *L) {
  hl *h = luaL_checkudata(L, 1, HL_MT);
  if (!h->c || h->closed) return 0;
  h->closed = true;
  if (h->close_code < 0) h->close_code = 1000;
  lr_server *s = h->c->srv;
  lr_conn_closed(h->c);
  lr_server_tick(s);
  return 0;
}

/* core.hl_drain(hl) -> {raw strings...}, close_code|nil, reason */
static int l_hl_drain(lua_State *L) {
  hl *h = luaL_checkudata(L, 1, HL_MT);
  lua_createtable(L, (int)h->nq, 0);
  for (uint32_t i = 0; i < h->nq; i++) {
    lua_pushlstring(L, lr_msg_payload(h->q[i]), h->q[i]->len);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
    lr_msg_release(h->q[i]);
  }
  h->nq = 0;
  if (h->close_code >= 0) {
    lua_pushinteger(L, h->close_code);
    lua_pushstring(L, h->reason);
    return 3;
  }
  return 1;
}

static int l_hl_discard(lua_State *L) {
  hl *h = luaL_checkudata(L, 1, HL_MT);
  h->discard = lua_toboolean(L, 2);
  return 0;
}

static int l_hl_id(lua_State *L) {
  hl *h = luaL_checkudata(L, 1, HL_MT);
  if (!h->c) return 0;
  lr_lua_push_conn(L, h->c);
  return 1;
}

/* A headless request's answer. When it did not come synchronously (the
 * room's storage is loading, or the route waits), o is handed over to the
 * pending table "lunaroom.http_pending" of the registry: the answer is kept
 * there under its id for core.http_take(id), or, when the caller subscribed
 * with core.http_take(id, fn), fn(answer) is called as soon as the answer
 * is there (a room-to-room fetch whose target waits resumes the fetching
 * handler this way: no timer, no poll). A pending answer is built on the
 * main thread: the thread that made the request may be a coroutine that is
 * suspended, dead or collected by then. */
typedef struct http_out {
  lr_server *s;
  lua_State *L; /* the caller's thread while it waits on the stack; the main thread once pending */
  int done;
  int ref;
  lua_Integer pending_id; /* 0 while the caller waits on the stack */
} http_out;

static void push_answer(lua_State *L, const lr_response *r) {
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, r->status);
  lua_setfield(L, -2, "status");
  lua_pushlstring(L, r->body ? r->body : "", r->bodylen);
  lua_setfield(L, -2, "body");
  lua_createtable(L, 0, (int)r->nheaders);
  for (size_t i = 0; i < r->nheaders; i++) {
    char lower[128];
    size_t j = 0;
    for (; r->headers[i].name[j] && j < sizeof lower - 1; j++)
      lower[j] = (char)((r->headers[i].name[j] >= 'A' && r->headers[i].name[j] <= 'Z')
                            ? r->headers[i].name[j] + 32
                            : r->headers[i].name[j]);
    lower[j] = 0;
    lua_pushstring(L, r->headers[i].value);
    lua_setfield(L, -2, lower);
  }
  lua_setfield(L, -2, "headers");
}

static void http_done(void *ud, const lr_response *r) {
  http_out *o = ud;
  lua_State *L = o->L;
  if (o->pending_id) {
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "lunaroom.http_pending");
    int t = lua_gettop(L);
    int kind = lua_rawgeti(L, t, o->pending_id);
    if (kind == LUA_TFUNCTION) { /* subscribed: called now */
      lua_pushnil(L);
      lua_rawseti(L, t, o->pending_id);
      push_answer(L, r);
      if (L != o->s->L) lua_xmove(L, o->s->L, 2); /* the rules call on the server's thread */
      /* Counted and rolled back as the rules' own calls. No room: runtime.lua's
       * subscriber resumes the waiting handler through wait_c.resume with it. */
      o->s->rules->call(o->s, "fetch answer", 1, 0, NULL, 0);
    } else if (kind == LUA_TBOOLEAN) { /* given up (timed out, cancelled): dropped */
      lua_pushnil(L);
      lua_rawseti(L, t, o->pending_id);
    } else {
      push_answer(L, r);
      lua_rawseti(L, t, o->pending_id);
    }
    lua_settop(L, top);
    free(o);
    return;
  }
  push_answer(L, r);
  o->ref = lr_ref_take(L); /* the caller's stack is not ours */
  o->done = 1;
}

/* core.http_take(id[, fn | false]) -> the answer of a request that was
 * pending, or nil. With fn and no answer yet: fn(answer) is called when it
 * comes. With false: the answer is dropped when it comes. */
static int l_http_take(lua_State *L) {
  lua_Integer id = luaL_checkinteger(L, 1);
  int sub = lua_type(L, 2);
  luaL_argcheck(L,
                sub == LUA_TNONE || sub == LUA_TNIL || sub == LUA_TFUNCTION ||
                    (sub == LUA_TBOOLEAN && !lua_toboolean(L, 2)),
                2, "a function or false expected");
  lua_getfield(L, LUA_REGISTRYINDEX, "lunaroom.http_pending");
  luaL_checktype(L, -1, LUA_TTABLE);
  int t = lua_gettop(L);
  if (lua_rawgeti(L, t, id) == LUA_TTABLE) { /* the answer is there */
    lua_pushnil(L);
    lua_rawseti(L, t, id);
    return 1;
  }
  lua_pop(L, 1);
  if (sub == LUA_TFUNCTION || sub == LUA_TBOOLEAN) {
    lua_pushvalue(L, 2);
    lua_rawseti(L, t, id);
  }
  lua_pushnil(L);
  return 1;
}

/* core.http(srv, method, path, query, headers, body[, ip]) -> {status, headers, body},
 * or nil, id when the answer comes later (core.http_take(id)). */
static int l_http(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  lr_header hs[64];
  size_t nh = 0;
  if (lua_istable(L, 5)) {
    lua_pushnil(L);
    while (lua_next(L, 5) && nh < 64) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING)
        hs[nh++] = (lr_header){lua_tostring(L, -2), lua_tostring(L, -1)};
      lua_pop(L, 1);
    }
  }
  size_t bl = 0;
  const char *body = luaL_optlstring(L, 6, NULL, &bl);
  const char *ip = luaL_optstring(L, 7, NULL); /* none: in-process (room to room) */
  lr_request req = {luaL_checkstring(L, 2),
                    luaL_checkstring(L, 3),
                    luaL_optstring(L, 4, ""),
                    hs,
                    nh,
                    body,
                    bl,
                    ip && *ip ? ip : NULL,
                    NULL,
                    NULL};
  http_out *o = lr_xcalloc(1, sizeof *o);
  *o = (http_out){s, L, 0, LUA_NOREF, 0};
  lr_server_http(s, &req, http_done, o);
  lr_server_tick(s);
  if (!o->done) {
    static lua_Integer next_id;
    o->pending_id = ++next_id;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    o->L = lua_tothread(L, -1); /* the answer comes later: not on this thread */
    lua_pop(L, 1);
    if (lua_getfield(L, LUA_REGISTRYINDEX, "lunaroom.http_pending") != LUA_TTABLE) {
      lua_newtable(L);
      lua_setfield(L, LUA_REGISTRYINDEX, "lunaroom.http_pending");
    }
    lua_pushnil(L);
    lua_pushinteger(L, o->pending_id);
    return 2;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, o->ref);
  lr_ref_release(L, o->ref);
  free(o);
  return 1;
}

static const luaL_Reg headless_fns[] = {
    {"http_take", l_http_take},
    {"hl_connect", l_hl_connect},
    {"hl_send", l_hl_send},
    {"hl_close", l_hl_close},
    {"hl_drain", l_hl_drain},
    {"hl_conn", l_hl_id},
    {"hl_discard", l_hl_discard},
    {"http", l_http},
    {NULL, NULL},
};

void lr_headless_register(lua_State *L) {
  luaL_newmetatable(L, HL_MT);
  lua_pushcfunction(L, hl_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
  luaL_setfuncs(L, headless_fns, 0);
}

/*
 * lua_api.c - the host functions of the "lunaroom.core" module that work on
 * servers, rooms and connections, and the handles Lua holds of them.
 *
 * Owns: the handles ("lunaroom.server", "lunaroom.roomh", "lunaroom.connh"),
 * the conn tables, core.set_runtime, the server, clock, timer, room and
 * send functions, core.parse_query (a join's URL query; runtime.lua keeps
 * the Lua reference), and the module table that lua_core.c completes with the
 * pieces of lua_proxy.c (values), lua_store.c (storage), lua_admin.c
 * (counters, logs, files) and headless.c (the headless transport).
 * Must not: decide room rules (runtime.lua), schedule flushes (room.c) or
 * convert values itself (lua_proxy.c).
 *
 * Handles are weak: a room or connection handle whose C object is gone
 * raises "room disposed" / "connection closed" instead of touching freed
 * memory.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "engine.h"
#include "lua_api.h"
#include "log.h"
#include "lua_vm.h"

#define SERVER_MT "lunaroom.server"
#define ROOM_MT "lunaroom.roomh"
#define CONN_MT "lunaroom.connh"

/* ------------------------------------------------------------ handles */

typedef struct srv_box {
  lr_server *s;
  bool owned;
} srv_box;

lr_server *lr_lua_check_server(lua_State *L, int idx) {
  srv_box *b = lr_vm_checkudata(L, idx, LR_HOT_SERVER, SERVER_MT);
  if (!b->s) luaL_error(L, "server is closed");
  return b->s;
}

static int server_gc(lua_State *L) {
  srv_box *b = lr_vm_checkudata(L, 1, LR_HOT_SERVER, SERVER_MT);
  if (b->s && b->owned) lr_server_free(b->s);
  b->s = NULL;
  return 0;
}

/* Wrap an existing server (serve mode: main.c owns it). [-0,+1] */
void lr_lua_push_server(lua_State *L, lr_server *s, bool owned) {
  srv_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->s = s;
  b->owned = owned;
  luaL_setmetatable(L, SERVER_MT);
}

lr_room *lr_lua_check_room(lua_State *L, int idx) {
  lr_room **b = lr_vm_checkudata(L, idx, LR_HOT_ROOM, ROOM_MT);
  if (!*b || (*b)->disposed) luaL_error(L, "room disposed");
  return *b;
}

static int room_gc(lua_State *L) {
  lr_room **b = lr_vm_checkudata(L, 1, LR_HOT_ROOM, ROOM_MT);
  if (*b && (*b)->box == b) (*b)->box = NULL;
  *b = NULL;
  return 0;
}

static lr_conn *check_conn(lua_State *L, int idx) {
  if (lua_istable(L, idx)) {
    lua_getfield(L, idx, "_h");
    lr_conn **b = lr_vm_testudata(L, -1, LR_HOT_CONN, CONN_MT);
    lua_pop(L, 1);
    if (!b) luaL_error(L, "not a connection");
    if (!*b) luaL_error(L, "connection closed");
    return *b;
  }
  lr_conn **b = lr_vm_checkudata(L, idx, LR_HOT_CONN, CONN_MT);
  if (!*b) luaL_error(L, "connection closed");
  return *b;
}

static int conn_gc(lua_State *L) {
  lr_conn **b = lr_vm_checkudata(L, 1, LR_HOT_CONN, CONN_MT);
  if (*b) (*b)->box = NULL;
  *b = NULL;
  return 0;
}

/* A conn table's handle: the weak slot first (lr_conn.box points at it, the
 * other handle readers see an lr_conn **), then a copy of the conn's id,
 * which conn.id reads (core.conn_id) even once the connection is gone: the
 * id costs no string per connection until something reads it. */
typedef struct conn_box {
  lr_conn *c;
  char id[sizeof((lr_conn *)0)->id];
} conn_box;

void lr_lua_new_conn(lua_State *L, lr_conn *c, const char *session_id) {
  /* sessionId, _h, then _pid and _priv (runtime.lua); id and state (made on
   * first read): the metatable's __index */
  lua_createtable(L, 0, 4);
  if (session_id) {
    lua_pushstring(L, session_id);
    lua_setfield(L, -2, "sessionId");
  }
  conn_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->c = c;
  memcpy(b->id, c->id, sizeof b->id);
  c->box = &b->c;
  const lr_vm_hot *hot = lr_vm_hot_of(L); /* metatables by reference, not by name */
  if (hot && hot->connh_mt)
    lua_rawgeti(L, LUA_REGISTRYINDEX, hot->connh_mt);
  else
    luaL_getmetatable(L, CONN_MT);
  lua_setmetatable(L, -2);
  lua_setfield(L, -2, "_h");
  if (hot && hot->conn_mt)
    lua_rawgeti(L, LUA_REGISTRYINDEX, hot->conn_mt);
  else
    lua_getfield(L, LUA_REGISTRYINDEX, "lunaroom.conn_mt");
  lua_setmetatable(L, -2);
  c->ref = lr_ref_take(L);
}

/* core.conn_id(conn) -> the id of a conn table (nil for anything else), also
 * after its connection closed. */
static int l_conn_id(lua_State *L) {
  if (lua_istable(L, 1)) {
    lua_pushliteral(L, "_h");
    lua_rawget(L, 1);
    const conn_box *b = lr_vm_testudata(L, -1, LR_HOT_CONN, CONN_MT);
    if (b) {
      lua_pushstring(L, b->id);
      return 1;
    }
  }
  lua_pushnil(L);
  return 1;
}

/* The conn tables' __index before the runtime's: conn.id. */
static int l_conn_index(lua_State *L) {
  if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "id") == 0) return l_conn_id(L);
  lua_pushnil(L);
  return 1;
}

void lr_lua_push_conn(lua_State *L, lr_conn *c) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
}

/* ------------------------------------------------------------ core functions */

/* The hook core.set_runtime calls (lua_core.c sets it: bridge.c's). */
static void (*api_bind)(lua_State *L, int idx);

void lr_lua_api_set_bind(void (*bind)(lua_State *L, int idx)) {
  api_bind = bind;
}

/* Pop the conn tables' metatable into the registry ("lunaroom.conn_mt",
 * and lr_vm_hot's conn_mt reference). */
static void set_conn_mt(lua_State *L) {
  lr_vm_hot *hot = lr_vm_hot_of(L);
  if (hot) {
    lua_pushvalue(L, -1);
    if (hot->conn_mt)
      lua_rawseti(L, LUA_REGISTRYINDEX, hot->conn_mt);
    else
      hot->conn_mt = lr_ref_take(L);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, "lunaroom.conn_mt");
}

static int l_set_runtime(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushvalue(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, "lunaroom.runtime");
  if (api_bind) api_bind(L, 1);
  if (lua_istable(L, 2)) {
    lua_pushvalue(L, 2);
    set_conn_mt(L);
  }
  return 0;
}

/* Optional numbers of table idx: the idle and per-address settings of s
 * (evict_after ms, room_rate/room_burst, session_rate/session_burst). */
static void server_limits(lua_State *L, int idx, lr_server *s) {
  lua_getfield(L, idx, "evict_after");
  if (!lua_isnil(L, -1)) s->evict_after = luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  lr_addr_rate *ars[2] = {s->room_rate, s->session_rate};
  const char *names[2][2] = {{"room_rate", "room_burst"}, {"session_rate", "session_burst"}};
  for (int i = 0; i < 2; i++) {
    lua_getfield(L, idx, names[i][0]);
    lua_getfield(L, idx, names[i][1]);
    double rate = luaL_optnumber(L, -2, lr_addr_rate_rate(ars[i]));
    double burst = luaL_optnumber(L, -1, lr_addr_rate_burst(ars[i]));
    lr_addr_rate_set(ars[i], rate, burst);
    lua_pop(L, 2);
  }
}

/* core.server_limits(srv, {evict_after=, room_rate=, room_burst=,
 * session_rate=, session_burst=}): change them on a running server. */
static int l_server_limits(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  server_limits(L, 2, s);
  return 0;
}

/* core.addr_take(srv, "room"|"session", ip) -> bool: a token of ip's
 * bucket (true without an ip: in-process callers are not counted). */
static int l_addr_take(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  const char *kind = luaL_checkstring(L, 2);
  const char *ip = luaL_optstring(L, 3, NULL);
  lr_addr_rate *ar = strcmp(kind, "room") == 0 ? s->room_rate : s->session_rate;
  lua_pushboolean(L, lr_addr_rate_take(ar, ip, lr_now(s)));
  return 1;
}

/* core.server_new{storage = "memory"|"sqlite:PATH", virtual = bool, seed = n,
 * evict_after = ms, room_rate = n, ...(server_limits)} */
static int l_server_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "storage");
  const char *spec = luaL_optstring(L, -1, "memory");
  lua_getfield(L, 1, "virtual");
  bool virt = lua_toboolean(L, -1);
  lua_getfield(L, 1, "seed");
  uint64_t seed = (uint64_t)luaL_optinteger(L, -1, 0);
  lua_pop(L, 3);
  char err[256];
  lr_store *st = lr_store_open_spec_L(L, spec, err, sizeof err);
  if (!st) return luaL_error(L, "cannot open storage %s: %s", spec, err);
  lr_server *s = lr_server_new(L, st, true, virt, seed);
  server_limits(L, 1, s);
  lr_lua_push_server(L, s, true);
  return 1;
}

static int l_server_close(lua_State *L) {
  srv_box *b = lr_vm_checkudata(L, 1, LR_HOT_SERVER, SERVER_MT);
  if (b->s && b->owned) {
    lr_server_shutdown(b->s);
    lr_server_free(b->s);
  }
  b->s = NULL;
  return 0;
}

/* core.want_header(srv, name) -> true | nil, err: the transport copies this
 * request header too (server.h, lr_server_want_header). */
static int l_want_header(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  const char *name = luaL_checkstring(L, 2);
  if (lr_server_want_header(s, name) != 0) {
    lua_pushnil(L);
    lua_pushfstring(L,
                    "header name '%s' refused: 1 to %d characters of a-z 0-9 -, at most %d names "
                    "per process",
                    name, LR_HEADER_NAME_MAX, LR_WANTED_HEADERS);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_server_bind(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (s->ref != LUA_NOREF) lr_ref_release(L, s->ref);
  lua_pushvalue(L, 2);
  s->ref = lr_ref_take(L);
  return 0;
}

static int l_now(lua_State *L) {
  lua_pushinteger(L, lr_now(lr_lua_check_server(L, 1)));
  return 1;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Push s[0..n) URL-decoded as runtime.lua's urldecode does it: '+' is a
 * space, then "%XX" (two hex digits) the byte; any other '%' stays. dec
 * false: pushed as it is (the caller knows there is nothing to decode). */
static void push_urldecoded(lua_State *L, const char *s, size_t n, bool dec) {
  if (!dec || (!memchr(s, '%', n) && !memchr(s, '+', n))) {
    lua_pushlstring(L, s, n);
    return;
  }
  luaL_Buffer b;
  char *o = luaL_buffinitsize(L, &b, n);
  size_t j = 0;
  for (size_t i = 0; i < n; i++) {
    int hi, lo;
    if (s[i] == '+') {
      o[j++] = ' ';
    } else if (s[i] == '%' && i + 2 < n && (hi = hexval(s[i + 1])) >= 0 &&
               (lo = hexval(s[i + 2])) >= 0) {
      o[j++] = (char)(hi << 4 | lo);
      i += 2;
    } else {
      o[j++] = s[i];
    }
  }
  luaL_pushresultsize(&b, j);
}

void lr_lua_push_urldecoded(lua_State *L, const char *s, size_t n) {
  push_urldecoded(L, s, n, true);
}

/* core.parse_query(q) -> {name = value}: runtime.lua's parse_query (its
 * reference, runtime.parse_query_lua; spec/parse_query_spec.lua compares
 * them) without a Lua string per piece. "a=1&b=2": pieces split on '&'
 * (empty ones skipped), the name before the piece's first '=' and the value
 * after it ("" without '='); an empty name is skipped; a repeated name keeps
 * its last value; names and values are URL-decoded when q holds a '%' or a
 * '+'. nil is "". One pass over q: linear, as anything from the network. */
static int l_parse_query(lua_State *L) {
  size_t n = 0;
  const char *q = "";
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TSTRING);
    q = lua_tolstring(L, 1, &n);
  }
  bool dec = memchr(q, '%', n) || memchr(q, '+', n);
  lua_createtable(L, 0, 1);
  for (size_t pos = 0; pos < n;) {
    const char *amp = memchr(q + pos, '&', n - pos);
    size_t end = amp ? (size_t)(amp - q) : n;
    const char *eq = memchr(q + pos, '=', end - pos);
    size_t kend = eq ? (size_t)(eq - q) : end;
    if (kend > pos) {
      push_urldecoded(L, q + pos, kend - pos, dec);
      if (eq)
        push_urldecoded(L, eq + 1, end - kend - 1, dec);
      else
        lua_pushliteral(L, "");
      lua_rawset(L, -3);
    }
    pos = end + 1;
  }
  return 1;
}

static int l_random_id(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  lua_Integer n = luaL_optinteger(L, 2, 8);
  const char *alpha =
      luaL_optstring(L, 3, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789");
  if (n < 1 || n > 64) return luaL_error(L, "bad id length");
  char buf[65];
  lr_random_id(s, buf, (size_t)n, alpha);
  lua_pushstring(L, buf);
  return 1;
}

/* core.timer(srv, roomh|nil, ms, fn) -> id */
static int l_timer(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  lr_room *r = lua_isnil(L, 2) ? NULL : lr_lua_check_room(L, 2);
  lua_Integer ms = luaL_checkinteger(L, 3);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  lua_pushvalue(L, 4);
  int ref = lr_ref_take(L);
  lr_timer *t = lr_timer_add(s, ms, LR_T_LUA, r, ref);
  lua_pushinteger(L, (lua_Integer)t->seq);
  return 1;
}

static int l_cancel(lua_State *L) {
  lr_timer_cancel(lr_lua_check_server(L, 1), (uint64_t)luaL_checkinteger(L, 2));
  return 0;
}

static int l_advance(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  if (!s->virtual_clock) return luaL_error(L, "advance() needs a virtual clock");
  lr_server_advance(s, luaL_checkinteger(L, 2));
  return 0;
}

static int l_tick(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  lr_server_tick(s);
  return 0;
}

/* core.batch_joins(srv, on): as the network loop does around a pass. */
static int l_batch_joins(lua_State *L) {
  lr_server_batch_joins(lr_lua_check_server(L, 1), lua_toboolean(L, 2));
  return 0;
}

/* core.room_new(srv, ns, id, instance) -> roomh */
static int l_room_new(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  const char *ns = luaL_checkstring(L, 2), *id = luaL_checkstring(L, 3);
  luaL_checktype(L, 4, LUA_TTABLE);
  if (lr_room_find(s, ns, id)) return luaL_error(L, "room %s/%s exists", ns, id);
  lr_room *r = lr_room_new(s, ns, id);
  lua_pushvalue(L, 4);
  r->ref = lr_ref_take(L);
  lr_room **b = lua_newuserdatauv(L, sizeof *b, 0);
  *b = r;
  r->box = b;
  luaL_setmetatable(L, ROOM_MT);
  lr_info("room %s created", r->key);
  return 1;
}

/* core.room_rebind(srv, ns, id, instance) -> roomh: a hibernated room gets
 * its new Lua instance (runtime.wake). */
static int l_room_rebind(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  const char *ns = luaL_checkstring(L, 2), *id = luaL_checkstring(L, 3);
  luaL_checktype(L, 4, LUA_TTABLE);
  lr_room *r = lr_room_find(s, ns, id);
  if (!r) return luaL_error(L, "no room %s/%s", ns, id);
  if (r->ref != LUA_NOREF) lr_ref_release(L, r->ref);
  lua_pushvalue(L, 4);
  r->ref = lr_ref_take(L);
  lr_room **b = lua_newuserdatauv(L, sizeof *b, 0);
  *b = r;
  r->box = b;
  luaL_setmetatable(L, ROOM_MT);
  return 1;
}

/* core.stats(srv) -> table of the engine's counters (see lr_stats). */
static int l_room_root(lua_State *L) {
  lr_room *r = lr_lua_check_room(L, 1);
  lr_lua_push_node(L, r->root, r);
  return 1;
}

static int l_room_config(lua_State *L) {
  lr_room *r = lr_lua_check_room(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_getfield(L, 2, "throttleSync");
  if (!lua_isnil(L, -1)) r->throttle_sync = luaL_checkinteger(L, -1);
  lua_getfield(L, 2, "throttleStorage");
  if (!lua_isnil(L, -1)) r->throttle_storage = luaL_checkinteger(L, -1);
  lua_getfield(L, 2, "autoSync");
  if (!lua_isnil(L, -1)) r->auto_sync = lua_toboolean(L, -1);
  lua_getfield(L, 2, "interceptor");
  if (!lua_isnil(L, -1)) r->has_interceptor = lua_toboolean(L, -1);
  lua_getfield(L, 2, "leanConnect");
  if (!lua_isnil(L, -1)) r->lean_connect = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 2, "budget");
  if (!lua_isnil(L, -1)) r->budget = luaL_checkinteger(L, -1);
  lua_getfield(L, 2, "memory");
  if (!lua_isnil(L, -1)) r->memory = luaL_checkinteger(L, -1);
  bool idle = false;
  lua_getfield(L, 2, "hibernate");
  if (!lua_isnil(L, -1)) {
    r->hibernate_ms = luaL_checkinteger(L, -1);
    idle = true;
  }
  lua_getfield(L, 2, "evict"); /* ms, 0 = never, < 0 = the server's --evict-after */
  if (!lua_isnil(L, -1)) {
    lua_Integer ms = luaL_checkinteger(L, -1);
    r->evict_ms = ms < 0 ? r->srv->evict_after : ms;
    idle = true;
  }
  if (idle) lr_room_idle_config(r);
  lua_pop(L, 2);
  lua_getfield(L, 2, "maxFrame");
  if (!lua_isnil(L, -1)) r->max_frame = (uint32_t)luaL_checkinteger(L, -1);
  lua_getfield(L, 2, "maxDepth");
  if (!lua_isnil(L, -1)) r->json_depth = (uint32_t)luaL_checkinteger(L, -1);
  lua_getfield(L, 2, "maxElements");
  if (!lua_isnil(L, -1)) r->json_elements = (uint32_t)luaL_checkinteger(L, -1);
  lua_pop(L, 3);
  lua_getfield(L, 2, "rate");
  if (!lua_isnil(L, -1)) r->rate = luaL_checknumber(L, -1);
  lua_getfield(L, 2, "burst");
  if (!lua_isnil(L, -1)) r->burst = luaL_checknumber(L, -1);
  lua_pop(L, 7);
  return 0;
}

static int l_room_apply_sync(lua_State *L) {
  lr_room *r = lr_lua_check_room(L, 1);
  lr_room_flush_sync(r, true);
  return 0;
}

static int l_room_flush(lua_State *L) {
  lr_room *r = lr_lua_check_room(L, 1);
  if (r->auto_sync) lr_room_flush_sync(r, false);
  lua_pushboolean(L, lr_room_flush_storage(r) == 0);
  return 1;
}

static int l_room_clear_dirty(lua_State *L) {
  lr_room *r = lr_lua_check_room(L, 1);
  lr_state_clear_dirty(r->root, LR_CH_SYNC);
  lr_state_clear_dirty(r->root, LR_CH_PERSIST);
  return 0;
}

static int l_room_mark_all(lua_State *L) {
  lr_room *r = lr_lua_check_room(L, 1);
  lr_state_mark(r->root);
  lr_room_touch(r);
  return 0;
}

/* core.send(connTable, value) */
static int l_send(lua_State *L) {
  lr_conn *c = check_conn(L, 1);
  char err[300];
  lr_node *v = lr_lua_to_node(L, 2, "packet", err, sizeof err);
  if (!v) return luaL_error(L, "%s", err);
  lr_conn_send_value(c, v);
  lr_node_release(v);
  return 0;
}

/* core.broadcast(roomh, value, except) */
static int l_broadcast(lua_State *L) {
  lr_room *r = lr_lua_check_room(L, 1);
  char err[300];
  lr_node *v = lr_lua_to_node(L, 2, "packet", err, sizeof err);
  if (!v) return luaL_error(L, "%s", err);
  const char *except[64];
  size_t n = 0;
  if (lua_istable(L, 3)) {
    lua_Integer len = (lua_Integer)lua_rawlen(L, 3);
    for (lua_Integer i = 1; i <= len && n < 64; i++) {
      lua_rawgeti(L, 3, i);
      if (lua_type(L, -1) == LUA_TSTRING) except[n++] = lua_tostring(L, -1);
      lua_pop(L, 1); /* the table keeps the string alive */
    }
  } else if (lua_type(L, 3) == LUA_TSTRING) {
    except[n++] = lua_tostring(L, 3);
  }
  lr_room_broadcast(r, v, except, n);
  lr_node_release(v);
  return 0;
}

static int l_join(lua_State *L) {
  lr_room *r = lr_lua_check_room(L, 1);
  lr_conn *c = check_conn(L, 2);
  const char *pid = luaL_optstring(L, 3, NULL);
  lr_room_join(r, c, pid);
  return 0;
}

static int l_conn_close(lua_State *L) {
  lr_conn *c = check_conn(L, 1);
  lr_conn_close(c, (int)luaL_optinteger(L, 2, 1000), luaL_optstring(L, 3, ""));
  return 0;
}

static int l_room_conns(lua_State *L) {
  lr_room *r = lr_lua_check_room(L, 1);
  lua_createtable(L, (int)r->nconns, 0);
  for (uint32_t i = 0; i < r->nconns; i++) {
    lr_lua_push_conn(L, r->conns[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int l_room_dispose(lua_State *L) {
  lr_room **b = lr_vm_checkudata(L, 1, LR_HOT_ROOM, ROOM_MT);
  if (*b && !(*b)->disposed) lr_room_dispose(*b);
  return 0;
}

/* ------------------------------------------------------------ module */

static const luaL_Reg core_fns[] = {
    {"set_runtime", l_set_runtime},
    {"conn_id", l_conn_id},
    {"server_new", l_server_new},
    {"server_limits", l_server_limits},
    {"addr_take", l_addr_take},
    {"server_close", l_server_close},
    {"server_bind", l_server_bind},
    {"want_header", l_want_header},
    {"now", l_now},
    {"random_id", l_random_id},
    {"parse_query", l_parse_query},
    {"timer", l_timer},
    {"cancel", l_cancel},
    {"advance", l_advance},
    {"tick", l_tick},
    {"batch_joins", l_batch_joins},
    {"room_new", l_room_new},
    {"room_root", l_room_root},
    {"room_rebind", l_room_rebind},
    {"room_config", l_room_config},
    {"room_apply_sync", l_room_apply_sync},
    {"room_flush", l_room_flush},
    {"room_clear_dirty", l_room_clear_dirty},
    {"room_mark_all", l_room_mark_all},
    {"room_conns", l_room_conns},
    {"room_dispose", l_room_dispose},
    {"send", l_send},
    {"broadcast", l_broadcast},
    {"join", l_join},
    {"conn_close", l_conn_close},
    {NULL, NULL},
};

int lr_lua_api_open(lua_State *L) {
  /* Handles: a metatable each, with only a finalizer. */
  static const luaL_Reg handles[] = {
      {SERVER_MT, server_gc}, {ROOM_MT, room_gc}, {CONN_MT, conn_gc}};
  static const int kinds[] = {LR_HOT_SERVER, LR_HOT_ROOM, LR_HOT_CONN};
  lr_vm_hot *hot = lr_vm_hot_of(L);
  for (size_t i = 0; i < sizeof handles / sizeof *handles; i++) {
    luaL_newmetatable(L, handles[i].name);
    lua_pushcfunction(L, handles[i].func);
    lua_setfield(L, -2, "__gc");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    if (hot) {
      hot->mt[kinds[i]] = lua_topointer(L, -1);
      if (kinds[i] == LR_HOT_CONN && !hot->connh_mt) {
        lua_pushvalue(L, -1);
        hot->connh_mt = lr_ref_take(L);
      }
    }
    lua_pop(L, 1);
  }
  lua_newtable(L); /* until core.set_runtime gives the runtime's: conn.id only */
  lua_pushcfunction(L, l_conn_index);
  lua_setfield(L, -2, "__index");
  set_conn_mt(L);
  luaL_newlib(L, core_fns);
  return 1;
}

/*
 * lua_api.c - what Lua sees of the host: the "lunaroom.core" module.
 *
 * Owns: state proxies (userdata "lunaroom.node": reads and writes of the C
 * state tree, with undo records and path-naming errors), Lua <-> lr_node
 * conversion, handles for servers, rooms and connections, and JSON
 * encode/decode that keep numbers exact. The headless transport used by
 * specs is headless.c (registered into the same module).
 * Must not: decide room rules (runtime.lua) or schedule flushes (room.c).
 *
 * Handles are weak: a room or connection handle whose C object is gone
 * raises "room disposed" / "connection closed" instead of touching freed
 * memory. Proxies retain the node and the room they write to.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "engine.h"
#include "lua_api.h"
#include "json.h"
#include "log.h"
#include "lua_vm.h"
#include "undo.h"

#define NODE_MT "lunaroom.node"
#define SERVER_MT "lunaroom.server"
#define ROOM_MT "lunaroom.roomh"
#define CONN_MT "lunaroom.connh"
#define ARRAY_MT_KEY "lunaroom.array_mt"
#define CACHE_KEY "lunaroom.proxies"
#define MAX_DEPTH 64

/* The JSON null sentinel seen by Lua (lr.null). */
static char null_sentinel;
#define PUSH_NULL(L) lua_pushlightuserdata(L, &null_sentinel)

typedef struct proxy {
  lr_node *n;
  lr_room *r; /* retained, may be NULL (detached copies) */
} proxy;

/* ------------------------------------------------------------ conversion */

static void push_array_mt(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, ARRAY_MT_KEY);
}

void lr_lua_push_copy(lua_State *L, const lr_node *n) {
  luaL_checkstack(L, 4, "value too deep");
  switch (n->type) {
  case LR_NULL:
    PUSH_NULL(L);
    break;
  case LR_BOOL:
    lua_pushboolean(L, n->u.b);
    break;
  case LR_INT:
    lua_pushinteger(L, (lua_Integer)n->u.i);
    break;
  case LR_FLOAT:
    lua_pushnumber(L, n->u.f);
    break;
  case LR_STRING:
    lua_pushlstring(L, n->u.str.s, n->u.str.len);
    break;
  case LR_ARRAY:
    lua_createtable(L, (int)n->u.arr.len, 0);
    for (uint32_t i = 0; i < n->u.arr.len; i++) {
      lr_lua_push_copy(L, n->u.arr.items[i]);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    push_array_mt(L);
    lua_setmetatable(L, -2);
    break;
  case LR_OBJECT:
    lua_createtable(L, 0, (int)n->u.obj.len);
    for (uint32_t i = 0; i < n->u.obj.len; i++) {
      lua_pushlstring(L, lr_member_key(&n->u.obj.m[i]), n->u.obj.m[i].keylen);
      lr_lua_push_copy(L, n->u.obj.m[i].val);
      lua_rawset(L, -3);
    }
    break;
  }
}

static proxy *test_proxy(lua_State *L, int idx) {
  return luaL_testudata(L, idx, NODE_MT);
}

/* Converting a Lua value to a tree is work the running call's budget pays
 * for, at LR_VALUE_COST instructions per value (about what one array
 * element takes to encode, measured: 370 ns; an object member costs more):
 *   - lr.json.encode (core.encode): every value, then its text (l_encode);
 *   - any other conversion (state writes, packets, storage): the values
 *     under a table met a second time. A table's first conversion is paid
 *     by the instructions that built it; a shared one ({t, t} nested n deep
 *     is 2^n values) is cut while it is converted, like any loop.
 * decode pays for its input before it starts. */
#define LR_VALUE_COST 200
#define LR_JSON_DECODE_COST 2 /* instructions per byte decoded (measured 1-6 ns a byte) */
#define LR_JSON_ENCODE_DIV 2  /* bytes encoded per instruction (strings: 1.2 ns a byte) */

typedef struct conv {
  lua_State *L;
  char *err;
  size_t errlen;
  lr_buf path;
  int depth;
  int64_t left; /* values the budget still pays for */
  bool all;     /* count every value (encode), not only those of shared tables */
  int shared;   /* inside a table met before in this conversion */
} conv;

static lr_node *conv_fail(conv *cv, const char *what) {
  snprintf(cv->err, cv->errlen, "%s at %s", what, cv->path.len ? lr_buf_cstr(&cv->path) : "(root)");
  return NULL;
}

static int cmp_keys(const void *a, const void *b) {
  const char *const *x = a, *const *y = b;
  return strcmp(*x, *y);
}

/* Is the table at idx an array? Marked arrays, or non-empty sequences. */
static int table_is_array(lua_State *L, int idx, lua_Integer *len) {
  if (lua_getmetatable(L, idx)) {
    lua_getfield(L, -1, "__jsontype");
    const char *t = lua_tostring(L, -1);
    int marked = t && strcmp(t, "array") == 0;
    int obj = t && strcmp(t, "object") == 0;
    lua_pop(L, 2);
    if (marked) {
      *len = (lua_Integer)lua_rawlen(L, idx);
      return 1;
    }
    if (obj) return 0;
  }
  lua_Integer n = 0, count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    count++;
    if (!lua_isinteger(L, -1)) {
      lua_pop(L, 1);
      return 0;
    }
    lua_Integer k = lua_tointeger(L, -1);
    if (k < 1) {
      lua_pop(L, 1);
      return 0;
    }
    if (k > n) n = k;
  }
  if (count == 0 || n != count) return 0;
  *len = n;
  return 1;
}

static lr_node *to_node(conv *cv, int idx) {
  lua_State *L = cv->L;
  idx = lua_absindex(L, idx);
  if ((cv->all || cv->shared) && --cv->left < 0)
    return conv_fail(cv, "instruction budget exceeded (value too large)");
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    return lr_node_null();
  case LUA_TBOOLEAN:
    return lr_node_bool(lua_toboolean(L, idx));
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) return lr_node_int((int64_t)lua_tointeger(L, idx));
    {
      double d = lua_tonumber(L, idx);
      if (!isfinite(d))
        return conv_fail(cv, "cannot store a non-finite number (JSON has no NaN/inf)");
      return lr_node_float(d);
    }
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (!lr_utf8_valid(s, n)) return conv_fail(cv, "cannot store a string that is not valid UTF-8");
    return lr_node_string(s, n);
  }
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == &null_sentinel) return lr_node_null();
    return conv_fail(cv, "cannot store a light userdata");
  case LUA_TUSERDATA: {
    proxy *p = test_proxy(L, idx);
    if (p) return lr_node_clone(p->n);
    return conv_fail(cv, "cannot store a userdata");
  }
  case LUA_TTABLE:
    break;
  default: {
    char what[64];
    snprintf(what, sizeof what, "cannot store a %s", luaL_typename(L, idx));
    return conv_fail(cv, what);
  }
  }
  if (cv->depth >= MAX_DEPTH) return conv_fail(cv, "table nested too deep (or cyclic)");
  luaL_checkstack(L, 8, "table too deep");
  /* Cycle detection: a set keyed by the table, true while it is visited,
   * false once converted (met again: a shared table, see LR_VALUE_COST). */
  lua_pushvalue(L, idx);
  lua_rawget(L, lua_upvalueindex(1));
  if (lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    return conv_fail(cv, "cannot store a cyclic table");
  }
  int again = lua_isboolean(L, -1);
  lua_pop(L, 1);
  cv->shared += again;
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, lua_upvalueindex(1));
  cv->depth++;
  size_t mark = cv->path.len;
  lr_node *out = NULL;
  lua_Integer len;
  if (table_is_array(L, idx, &len)) {
    out = lr_node_new(LR_ARRAY);
    for (lua_Integer i = 1; i <= len; i++) {
      if (mark) lr_buf_putc(&cv->path, '.');
      lr_buf_printf(&cv->path, "%lld", (long long)(i - 1));
      lua_rawgeti(L, idx, i);
      lr_node *c = to_node(cv, -1);
      lua_pop(L, 1);
      cv->path.len = mark;
      if (!c) {
        lr_node_release(out);
        out = NULL;
        break;
      }
      lr_arr_push(out, c);
    }
  } else {
    /* Objects: keys sorted, so packets and storage are deterministic. */
    size_t nkeys = 0, cap = 16;
    char **keys = lr_xmalloc(cap * sizeof *keys);
    int bad = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      lua_pop(L, 1);
      char kb[64];
      const char *k;
      if (lua_type(L, -1) == LUA_TSTRING) {
        k = lua_tostring(L, -1);
      } else if (lua_isinteger(L, -1)) {
        snprintf(kb, sizeof kb, "%lld", (long long)lua_tointeger(L, -1));
        k = kb;
      } else {
        bad = 1;
        lua_pop(L, 1);
        break;
      }
      if (nkeys == cap) keys = lr_xrealloc(keys, (cap *= 2) * sizeof *keys);
      keys[nkeys++] = lr_xstrndup(k, strlen(k));
    }
    if (bad) {
      out = conv_fail(cv, "cannot store a table key that is not a string or integer");
    } else {
      qsort(keys, nkeys, sizeof *keys, cmp_keys);
      out = lr_node_new(LR_OBJECT);
      for (size_t i = 0; i < nkeys; i++) {
        if (mark) lr_buf_putc(&cv->path, '.');
        lr_buf_puts(&cv->path, keys[i]);
        lua_getfield(L, idx, keys[i]);
        if (lua_isnil(L, -1)) { /* integer key */
          lua_pop(L, 1);
          lua_rawgeti(L, idx, strtoll(keys[i], NULL, 10));
        }
        lr_node *c = to_node(cv, -1);
        lua_pop(L, 1);
        cv->path.len = mark;
        if (!c) {
          lr_node_release(out);
          out = NULL;
          break;
        }
        size_t kl = strlen(keys[i]);
        if (!lr_utf8_valid(keys[i], kl)) {
          lr_node_release(c);
          lr_node_release(out);
          out = conv_fail(cv, "cannot store a key that is not valid UTF-8");
          break;
        }
        lr_obj_put(out, keys[i], kl, c);
      }
    }
    for (size_t i = 0; i < nkeys; i++)
      free(keys[i]);
    free(keys);
  }
  cv->depth--;
  cv->shared -= again;
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 0);
  lua_rawset(L, lua_upvalueindex(1));
  return out;
}

static int to_node_tramp(lua_State *L) {
  conv *cv = lua_touserdata(L, 1);
  lua_remove(L, 1);
  lr_node *n = to_node(cv, 1);
  lua_pushlightuserdata(L, n);
  return 1;
}

static lr_node *convert(lua_State *L, int idx, const char *where, char *err, size_t errlen,
                        bool all) {
  /* Scalars need no cycle set; tables go through a closure that owns one. */
  idx = lua_absindex(L, idx);
  int64_t budget = lr_vm_budget_left(L) / LR_VALUE_COST;
  conv cv = {L, err, errlen, {0}, 0, budget, all, 0};
  lr_buf_init(&cv.path);
  if (where) lr_buf_puts(&cv.path, where);
  lr_node *n;
  if (lua_type(L, idx) != LUA_TTABLE) {
    lua_pushnil(L); /* placeholder upvalue slot is not needed for scalars */
    lua_pop(L, 1);
    n = to_node(&cv, idx);
  } else {
    lua_newtable(L);
    lua_pushcclosure(L, to_node_tramp, 1);
    lua_pushlightuserdata(L, &cv);
    lua_pushvalue(L, idx);
    lua_call(L, 2, 1); /* errors here are memory errors only */
    n = lua_touserdata(L, -1);
    lua_pop(L, 1);
  }
  lr_buf_free(&cv.path);
  if (budget < INT64_MAX / LR_VALUE_COST) /* inside a budgeted call */
    lr_vm_spend(L, cv.left < 0 ? INT64_MAX : (budget - cv.left) * LR_VALUE_COST);
  return n;
}

lr_node *lr_lua_to_node(lua_State *L, int idx, const char *where, char *err, size_t errlen) {
  return convert(L, idx, where, err, errlen, false);
}

/* ------------------------------------------------------------ proxies */

void lr_lua_push_node(lua_State *L, lr_node *n, lr_room *r) {
  if (n->type != LR_OBJECT && n->type != LR_ARRAY) {
    lr_lua_push_copy(L, n);
    return;
  }
  lua_getfield(L, LUA_REGISTRYINDEX, CACHE_KEY);
  lua_rawgetp(L, -1, n);
  if (!lua_isnil(L, -1)) {
    lua_remove(L, -2);
    return;
  }
  lua_pop(L, 1);
  proxy *p = lua_newuserdatauv(L, sizeof *p, 0);
  p->n = lr_node_retain(n);
  p->r = r ? lr_room_retain(r) : NULL;
  luaL_setmetatable(L, NODE_MT);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, -3, n);
  lua_remove(L, -2);
}

static proxy *check_proxy(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, NODE_MT);
}

static int node_gc(lua_State *L) {
  proxy *p = check_proxy(L, 1);
  if (p->n) lr_node_release(p->n);
  if (p->r) lr_room_release(p->r);
  p->n = NULL;
  p->r = NULL;
  return 0;
}

/* Key argument as a string (integers become their decimal text). */
static const char *key_arg(lua_State *L, int idx, size_t *len, char *buf, size_t bufsz) {
  if (lua_type(L, idx) == LUA_TSTRING) return lua_tolstring(L, idx, len);
  if (lua_isinteger(L, idx)) {
    *len = (size_t)snprintf(buf, bufsz, "%lld", (long long)lua_tointeger(L, idx));
    return buf;
  }
  return NULL;
}

static int node_index(lua_State *L) {
  proxy *p = check_proxy(L, 1);
  lr_node *n = p->n, *c = NULL;
  if (n->type == LR_OBJECT) {
    char kb[32];
    size_t kl;
    const char *k = key_arg(L, 2, &kl, kb, sizeof kb);
    if (k) c = lr_obj_get(n, k, kl);
  } else if (n->type == LR_ARRAY && lua_isinteger(L, 2)) {
    lua_Integer i = lua_tointeger(L, 2);
    if (i >= 1 && i <= (lua_Integer)n->u.arr.len) c = n->u.arr.items[i - 1];
  }
  if (!c) return 0;
  lr_lua_push_node(L, c, p->r);
  return 1;
}

static void path_of(lr_node *n, lr_buf *b) {
  lr_node_path(n, b);
}

/* Raise a Lua error naming the path of n plus key. MAY_LJMP */
static int write_error(lua_State *L, lr_node *n, const char *key, const char *msg) {
  lr_buf b;
  lr_buf_init(&b);
  path_of(n, &b);
  if (key) {
    if (b.len) lr_buf_putc(&b, '.');
    lr_buf_puts(&b, key);
  }
  lua_pushfstring(L, "%s (at %s)", msg, b.len ? lr_buf_cstr(&b) : "(root)");
  lr_buf_free(&b);
  return lua_error(L);
}

/* The proxy must point into the live tree of its room. MAY_LJMP */
static void check_writable(lua_State *L, proxy *p) {
  if (!p->r) return; /* a detached copy: free to edit */
  if (p->r->disposed) luaL_error(L, "cannot write: the room was disposed");
  lr_node *top = p->n;
  while (top->parent)
    top = top->parent;
  if (top != p->r->root)
    write_error(L, p->n, NULL, "cannot write to a value that was removed from the state");
}

static int node_newindex(lua_State *L) {
  proxy *p = check_proxy(L, 1);
  lr_node *n = p->n;
  check_writable(L, p);
  char err[300];
  if (n->type == LR_OBJECT) {
    char kb[32];
    size_t kl;
    const char *k = key_arg(L, 2, &kl, kb, sizeof kb);
    if (!k)
      return luaL_error(L, "state keys must be strings or integers, got %s", luaL_typename(L, 2));
    if (!lr_utf8_valid(k, kl)) return write_error(L, n, NULL, "key is not valid UTF-8");
    if (lua_isnil(L, 3)) {
      if (lr_obj_get(n, k, kl)) {
        if (p->r) lr_undo_record_key(n, k, kl);
        lr_state_delete(n, k, kl);
      }
    } else {
      lr_buf where;
      lr_buf_init(&where);
      path_of(n, &where);
      if (where.len) lr_buf_putc(&where, '.');
      lr_buf_put(&where, k, kl);
      lr_node *v = lr_lua_to_node(L, 3, lr_buf_cstr(&where), err, sizeof err);
      lr_buf_free(&where);
      if (!v) return luaL_error(L, "%s", err);
      if (p->r) lr_undo_record_key(n, k, kl);
      lr_state_set(n, k, kl, v, 0);
      lr_node_release(v);
    }
  } else {
    if (!lua_isinteger(L, 2)) return write_error(L, n, NULL, "array index must be an integer");
    lua_Integer i = lua_tointeger(L, 2);
    lua_Integer len = (lua_Integer)n->u.arr.len;
    if (i < 1 || i > len + 1)
      return write_error(L, n, NULL, "array index out of range (arrays have no holes)");
    if (p->r) lr_undo_record_array(n);
    if (lua_isnil(L, 3)) {
      if (i == len)
        lr_state_arr_remove(n, (uint32_t)(i - 1));
      else if (i < len) {
        lr_node *nul = lr_node_null();
        lr_state_arr_set(n, (uint32_t)(i - 1), nul);
        lr_node_release(nul);
      }
    } else {
      lr_buf where;
      lr_buf_init(&where);
      path_of(n, &where);
      if (where.len) lr_buf_putc(&where, '.');
      lr_buf_printf(&where, "%lld", (long long)(i - 1));
      lr_node *v = lr_lua_to_node(L, 3, lr_buf_cstr(&where), err, sizeof err);
      lr_buf_free(&where);
      if (!v) return luaL_error(L, "%s", err);
      lr_state_arr_set(n, (uint32_t)(i - 1), v);
      lr_node_release(v);
    }
  }
  if (p->r) lr_room_touch(p->r);
  return 0;
}

static int node_len(lua_State *L) {
  proxy *p = check_proxy(L, 1);
  lua_pushinteger(L, p->n->type == LR_ARRAY ? p->n->u.arr.len : p->n->u.obj.len);
  return 1;
}

/* Iterator state is the proxy; the control value is the 0-based position. */
static int node_next(lua_State *L) {
  proxy *p = check_proxy(L, 1);
  lr_node *n = p->n;
  lua_Integer pos = lua_isnil(L, 2) ? 0 : -1;
  if (pos < 0) {
    if (n->type == LR_ARRAY) {
      pos = lua_tointeger(L, 2);
    } else {
      /* Find the member after key. */
      size_t kl;
      const char *k = lua_tolstring(L, 2, &kl);
      lr_node *c = k ? lr_obj_get(n, k, kl) : NULL;
      pos = c ? lr_node_index_in_parent(c) + 1 : (lua_Integer)n->u.obj.len;
    }
  }
  if (n->type == LR_ARRAY) {
    if (pos >= (lua_Integer)n->u.arr.len) return 0;
    lua_pushinteger(L, pos + 1);
    lr_lua_push_node(L, n->u.arr.items[pos], p->r);
    return 2;
  }
  if (pos >= (lua_Integer)n->u.obj.len) return 0;
  lua_pushlstring(L, lr_member_key(&n->u.obj.m[pos]), n->u.obj.m[pos].keylen);
  lr_lua_push_node(L, n->u.obj.m[pos].val, p->r);
  return 2;
}

static int node_pairs(lua_State *L) {
  check_proxy(L, 1);
  lua_pushcfunction(L, node_next);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

static int node_tostring(lua_State *L) {
  proxy *p = check_proxy(L, 1);
  lr_buf b;
  lr_buf_init(&b);
  lr_json_encode(p->n, 0, &b);
  lua_pushlstring(L, b.data ? b.data : "", b.len);
  lr_buf_free(&b);
  return 1;
}

/* ------------------------------------------------------------ handles */

typedef struct srv_box {
  lr_server *s;
  bool owned;
} srv_box;

lr_server *lr_lua_check_server(lua_State *L, int idx) {
  srv_box *b = luaL_checkudata(L, idx, SERVER_MT);
  if (!b->s) luaL_error(L, "server is closed");
  return b->s;
}

static int server_gc(lua_State *L) {
  srv_box *b = luaL_checkudata(L, 1, SERVER_MT);
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

static lr_room *check_room(lua_State *L, int idx) {
  lr_room **b = luaL_checkudata(L, idx, ROOM_MT);
  if (!*b || (*b)->disposed) luaL_error(L, "room disposed");
  return *b;
}

static int room_gc(lua_State *L) {
  lr_room **b = luaL_checkudata(L, 1, ROOM_MT);
  if (*b && (*b)->box == b) (*b)->box = NULL;
  *b = NULL;
  return 0;
}

static lr_conn *check_conn(lua_State *L, int idx) {
  if (lua_istable(L, idx)) {
    lua_getfield(L, idx, "_h");
    lr_conn **b = luaL_testudata(L, -1, CONN_MT);
    lua_pop(L, 1);
    if (!b) luaL_error(L, "not a connection");
    if (!*b) luaL_error(L, "connection closed");
    return *b;
  }
  lr_conn **b = luaL_checkudata(L, idx, CONN_MT);
  if (!*b) luaL_error(L, "connection closed");
  return *b;
}

static int conn_gc(lua_State *L) {
  lr_conn **b = luaL_checkudata(L, 1, CONN_MT);
  if (*b) (*b)->box = NULL;
  *b = NULL;
  return 0;
}

void lr_lua_new_conn(lua_State *L, lr_conn *c, const char *session_id) {
  lua_createtable(L, 0, 4); /* id, sessionId, state, _h */
  lua_pushstring(L, c->id);
  lua_setfield(L, -2, "id");
  if (session_id) {
    lua_pushstring(L, session_id);
    lua_setfield(L, -2, "sessionId");
  }
  lua_createtable(L, 0, 2); /* publicId, privateId */
  lua_setfield(L, -2, "state");
  lr_conn **b = lua_newuserdatauv(L, sizeof *b, 0);
  *b = c;
  c->box = b;
  luaL_setmetatable(L, CONN_MT);
  lua_setfield(L, -2, "_h");
  lua_getfield(L, LUA_REGISTRYINDEX, "lunaroom.conn_mt");
  lua_setmetatable(L, -2);
  c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
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

static int l_set_runtime(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushvalue(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, "lunaroom.runtime");
  if (api_bind) api_bind(L, 1);
  if (lua_istable(L, 2)) {
    lua_pushvalue(L, 2);
    lua_setfield(L, LUA_REGISTRYINDEX, "lunaroom.conn_mt");
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
  lr_store *st = strncmp(spec, "lua:", 4) == 0 ? lr_store_lua_open(L, spec + 4, err, sizeof err)
                                               : lr_store_open_spec(spec, err, sizeof err);
  if (!st) return luaL_error(L, "cannot open storage %s: %s", spec, err);
  lr_server *s = lr_server_new(L, st, true, virt, seed);
  server_limits(L, 1, s);
  lr_lua_push_server(L, s, true);
  return 1;
}

static int l_server_close(lua_State *L) {
  srv_box *b = luaL_checkudata(L, 1, SERVER_MT);
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
  if (s->ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, s->ref);
  lua_pushvalue(L, 2);
  s->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

static int l_now(lua_State *L) {
  lua_pushinteger(L, lr_now(lr_lua_check_server(L, 1)));
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
  lr_room *r = lua_isnil(L, 2) ? NULL : check_room(L, 2);
  lua_Integer ms = luaL_checkinteger(L, 3);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  lua_pushvalue(L, 4);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
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
  r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
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
  if (r->ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
  lua_pushvalue(L, 4);
  r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lr_room **b = lua_newuserdatauv(L, sizeof *b, 0);
  *b = r;
  r->box = b;
  luaL_setmetatable(L, ROOM_MT);
  return 1;
}

/* core.stats(srv) -> table of the engine's counters (see lr_stats). */
static int l_stats(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  const lr_stats *st = &s->stats;
  lua_createtable(L, 0, 16);
#define F(name, v)                                                                                 \
  lua_pushnumber(L, (lua_Number)(v));                                                              \
  lua_setfield(L, -2, name)
  F("conns_open", st->conns_open);
  F("conns_total", st->conns_total);
  F("msgs_in", st->msgs_in);
  F("packets_out", st->packets_out);
  F("bytes_out", st->bytes_out);
  F("storage_flushes", st->storage_flushes);
  F("storage_failures", st->storage_failures);
  F("storage_seconds", st->storage_seconds);
  F("calls", st->calls);
  F("call_seconds", st->call_seconds);
  F("lua_bytes", lr_vm_memory(L));
  F("nodes", lr_node_live());
#undef F
  /* Counters, not a walk over the rooms: a /metrics scrape costs the same
   * whatever their number. */
  lua_pushinteger(L, (lua_Integer)(s->nrooms - s->nhibernated));
  lua_setfield(L, -2, "rooms");
  lua_pushinteger(L, (lua_Integer)s->nhibernated);
  lua_setfield(L, -2, "rooms_hibernated");
  lua_createtable(L, 0, LR_NREJ);
  for (int i = 0; i < LR_NREJ; i++) {
    lua_pushinteger(L, (lua_Integer)st->rejected[i]);
    lua_setfield(L, -2, lr_rej_names[i]);
  }
  lua_setfield(L, -2, "rejected");
  lua_createtable(L, LR_HIST_N, 0);
  for (int i = 0; i < LR_HIST_N; i++) {
    lua_createtable(L, 2, 0);
    if (i < LR_HIST_N - 1)
      lua_pushnumber(L, lr_hist_bounds[i]);
    else
      lua_pushstring(L, "+Inf");
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, (lua_Integer)st->hist[i]);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "hist");
  return 1;
}

static int l_live_nodes(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)lr_node_live());
  return 1;
}

static int l_room_root(lua_State *L) {
  lr_room *r = check_room(L, 1);
  lr_lua_push_node(L, r->root, r);
  return 1;
}

static int l_room_config(lua_State *L) {
  lr_room *r = check_room(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_getfield(L, 2, "throttleSync");
  if (!lua_isnil(L, -1)) r->throttle_sync = luaL_checkinteger(L, -1);
  lua_getfield(L, 2, "throttleStorage");
  if (!lua_isnil(L, -1)) r->throttle_storage = luaL_checkinteger(L, -1);
  lua_getfield(L, 2, "autoSync");
  if (!lua_isnil(L, -1)) r->auto_sync = lua_toboolean(L, -1);
  lua_getfield(L, 2, "interceptor");
  if (!lua_isnil(L, -1)) r->has_interceptor = lua_toboolean(L, -1);
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
  lr_room *r = check_room(L, 1);
  lr_room_flush_sync(r, true);
  return 0;
}

static int l_room_flush(lua_State *L) {
  lr_room *r = check_room(L, 1);
  if (r->auto_sync) lr_room_flush_sync(r, false);
  lua_pushboolean(L, lr_room_flush_storage(r) == 0);
  return 1;
}

static int l_room_clear_dirty(lua_State *L) {
  lr_room *r = check_room(L, 1);
  lr_state_clear_dirty(r->root, LR_CH_SYNC);
  lr_state_clear_dirty(r->root, LR_CH_PERSIST);
  return 0;
}

static int l_room_mark_all(lua_State *L) {
  lr_room *r = check_room(L, 1);
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
  lr_room *r = check_room(L, 1);
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
  lr_room *r = check_room(L, 1);
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
  lr_room *r = check_room(L, 1);
  lua_createtable(L, (int)r->nconns, 0);
  for (uint32_t i = 0; i < r->nconns; i++) {
    lr_lua_push_conn(L, r->conns[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int l_room_dispose(lua_State *L) {
  lr_room **b = luaL_checkudata(L, 1, ROOM_MT);
  if (*b && !(*b)->disposed) lr_room_dispose(*b);
  return 0;
}

/* ---- storage ---- */

static lr_store *room_store(lua_State *L, lr_room *r) {
  if (!r->srv || !r->srv->store) luaL_error(L, "no storage configured");
  return r->srv->store;
}

/* Storage functions take a room handle, or {server = srvh, ns = .., id = ..}
 * (specs read the storage of a room that is hibernated or gone). */
typedef struct store_target {
  lr_store *st;
  const char *ns, *id, *key;
} store_target;

static store_target check_target(lua_State *L, int idx) {
  store_target t;
  if (lua_istable(L, idx)) {
    lua_getfield(L, idx, "server");
    lr_server *s = lr_lua_check_server(L, -1);
    lua_getfield(L, idx, "ns");
    lua_getfield(L, idx, "id");
    t.ns = luaL_checkstring(L, -2);
    t.id = luaL_checkstring(L, -1);
    lua_pop(L, 3); /* the table keeps the strings alive */
    if (!s->store) luaL_error(L, "no storage configured");
    t.st = s->store;
  } else {
    lr_room *r = check_room(L, idx);
    t.st = room_store(L, r);
    t.ns = r->ns;
    t.id = r->id;
  }
  return t;
}

static int l_store_get(lua_State *L) {
  store_target tg = check_target(L, 1);
  const char *key = luaL_checkstring(L, 2);
  lr_buf out;
  lr_buf_init(&out);
  char err[256];
  int rc = lr_store_get(tg.st, tg.ns, tg.id, key, &out, err, sizeof err);
  if (rc == LR_STORE_NOTFOUND) {
    lr_buf_free(&out);
    return 0;
  }
  if (rc != 0) {
    lr_buf_free(&out);
    return luaL_error(L, "storage get %s failed: %s", key, err);
  }
  lr_node *n = lr_json_decode_exact(out.data, out.len, NULL, err, sizeof err);
  lr_buf_free(&out);
  if (!n) return luaL_error(L, "stored value of %s is not JSON: %s", key, err);
  lr_lua_push_copy(L, n);
  lr_node_release(n);
  return 1;
}

/* core.store_apply(roomh, { {"put", key, value} | {"del", key} | {"delprefix", key} ... }) */
static int l_store_apply(lua_State *L) {
  lr_room *r = check_room(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
  lr_store_op *ops = lr_xcalloc((size_t)n + 1, sizeof *ops);
  lr_buf *vals = lr_xcalloc((size_t)n + 1, sizeof *vals);
  char err[300];
  int fail = 0;
  for (lua_Integer i = 1; i <= n && !fail; i++) {
    lua_rawgeti(L, 2, i);
    lua_rawgeti(L, -1, 1);
    const char *kind = lua_tostring(L, -1);
    lua_rawgeti(L, -2, 2);
    size_t kl;
    const char *key = lua_tolstring(L, -1, &kl);
    lr_store_op *op = &ops[i - 1];
    if (!kind || !key) {
      snprintf(err, sizeof err, "bad storage op %lld", (long long)i);
      fail = 1;
    } else {
      op->key = key; /* kept alive by the ops table */
      op->keylen = kl;
      if (strcmp(kind, "put") == 0) {
        lua_rawgeti(L, -3, 3);
        lr_node *v = lr_lua_to_node(L, -1, key, err, sizeof err);
        lua_pop(L, 1);
        if (!v) {
          fail = 1;
        } else {
          lr_buf_init(&vals[i - 1]);
          lr_json_encode(v, 0, &vals[i - 1]);
          lr_node_release(v);
          op->kind = LR_STORE_PUT;
          op->val = vals[i - 1].data;
          op->vallen = vals[i - 1].len;
        }
      } else if (strcmp(kind, "del") == 0) {
        op->kind = LR_STORE_DEL;
      } else if (strcmp(kind, "delprefix") == 0) {
        op->kind = LR_STORE_DEL_PREFIX;
      } else {
        snprintf(err, sizeof err, "unknown storage op %s", kind);
        fail = 1;
      }
    }
    lua_pop(L, 3);
  }
  int rc =
      fail ? -1 : lr_store_apply(room_store(L, r), r->ns, r->id, ops, (size_t)n, err, sizeof err);
  if (!fail) lr_room_store_written(r, rc, err); /* the storage gate's view of r */
  for (lua_Integer i = 0; i < n; i++)
    lr_buf_free(&vals[i]);
  free(vals);
  free(ops);
  if (rc != 0) {
    lr_error("room %s: storage write failed: %s", r->key, err);
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

typedef struct list_ud {
  lua_State *L;
  int tbl; /* absolute index of the result table (a Lua backend pushes above it) */
  lua_Integer i;
  int bad;
  char err[200];
} list_ud;

static int list_cb(void *ud, const char *key, size_t keylen, const char *val, size_t vallen) {
  list_ud *u = ud;
  lr_node *n = lr_json_decode_exact(val, vallen, NULL, u->err, sizeof u->err);
  if (!n) {
    lr_warn("stored value of %.*s is not JSON (%s): skipped", (int)keylen, key, u->err);
    return 0;
  }
  lua_createtable(u->L, 2, 0);
  lua_pushlstring(u->L, key, keylen);
  lua_rawseti(u->L, -2, 1);
  lr_lua_push_copy(u->L, n);
  lua_rawseti(u->L, -2, 2);
  lua_rawseti(u->L, u->tbl, ++u->i);
  lr_node_release(n);
  return 0;
}

/* core.store_list(roomh, prefix) -> { {key, value}, ... } in key order */
static int l_store_list(lua_State *L) {
  store_target tg = check_target(L, 1);
  const char *prefix = luaL_optstring(L, 2, "");
  lua_newtable(L);
  list_ud u = {L, lua_gettop(L), 0, 0, ""};
  char err[256];
  if (lr_store_list(tg.st, tg.ns, tg.id, prefix, list_cb, &u, err, sizeof err) != 0)
    return luaL_error(L, "storage list failed: %s", err);
  return 1;
}

/* core.store_fail_next(srv, n): test hook of the memory store. */
static int l_store_fail_next(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  if (lr_store_memory_fail_next(s->store, (int)luaL_checkinteger(L, 2)) != 0)
    return luaL_error(L, "store_fail_next needs memory storage");
  return 0;
}

/* core.storage_failing(srv) -> n, { {room = key, error = why}, ... } (the
 * first 10 rooms whose storage writes fail; /readyz). */
static int l_storage_failing(lua_State *L) {
  lr_server *s = lr_lua_check_server(L, 1);
  lua_pushinteger(L, s->nfailing);
  lua_createtable(L, 0, 0);
  int i = 0;
  for (lr_room *r = s->failing; r && i < 10; r = r->failing_next) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, r->key);
    lua_setfield(L, -2, "room");
    lua_pushstring(L, r->store_err ? r->store_err : "");
    lua_setfield(L, -2, "error");
    lua_rawseti(L, -2, ++i);
  }
  return 2;
}

/* core.store_pending(srv): write batches not yet on the backend. */
static int l_store_pending(lua_State *L) {
  lua_pushinteger(L, lr_store_pending(lr_lua_check_server(L, 1)->store));
  return 1;
}

/* core.store_stats(srv): { {name, kind, help, value}, ... } of the storage
 * backend (/metrics; storage_postgres.c), {} when it has none. */
static int l_store_stats(lua_State *L) {
  lr_store *st = lr_lua_check_server(L, 1)->store;
  lr_store_stat v[32];
  size_t n = st && st->vt->stats ? st->vt->stats(st, v, 32) : 0;
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_createtable(L, 0, 4);
    lua_pushstring(L, v[i].name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, v[i].kind);
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, v[i].help);
    lua_setfield(L, -2, "help");
    lua_pushnumber(L, v[i].value);
    lua_setfield(L, -2, "value");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int l_store_count(lua_State *L) {
  store_target tg = check_target(L, 1);
  lua_pushinteger(L, tg.st->vt->count(tg.st, tg.ns, tg.id));
  return 1;
}

/* ---- values ---- */

static int l_encode(lua_State *L) {
  char err[300];
  lr_node *v = convert(L, 1, NULL, err, sizeof err, true);
  if (!v) return luaL_error(L, "%s", err);
  lr_buf b;
  lr_buf_init(&b);
  lr_json_encode(v, (uint8_t)luaL_optinteger(L, 2, 0), &b);
  lua_pushlstring(L, b.data ? b.data : "", b.len);
  size_t len = b.len;
  lr_buf_free(&b);
  lr_node_release(v);
  lr_vm_charge(L, (int64_t)(len / LR_JSON_ENCODE_DIV)); /* the text (the values: above) */
  return 1;
}

/* core.decode(text [, wire]): text the server or room code wrote keeps its
 * int64 integers exact; with wire (client input: HTTP request bodies)
 * integers beyond +-2^53 are doubles, as in JavaScript (json.h). Action
 * packets are decoded in C with the wire rule. */
static int l_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lr_vm_charge(L, (int64_t)n * LR_JSON_DECODE_COST); /* before the work */
  char err[256];
  lr_node *v = lua_toboolean(L, 2) ? lr_json_decode(s, n, NULL, err, sizeof err)
                                   : lr_json_decode_exact(s, n, NULL, err, sizeof err);
  if (!v) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lr_lua_push_copy(L, v);
  lr_node_release(v);
  return 1;
}

/* core.copy(x, skipflags): a plain Lua copy of a proxy (or of a plain value). */
static int l_copy(lua_State *L) {
  proxy *p = test_proxy(L, 1);
  if (!p) {
    lua_settop(L, 1);
    return 1;
  }
  uint8_t skip = (uint8_t)luaL_optinteger(L, 2, 0);
  if (!skip) {
    lr_lua_push_copy(L, p->n);
    return 1;
  }
  /* Filter by encoding and decoding (rare path: snapshots). */
  lr_buf b;
  lr_buf_init(&b);
  lr_json_encode(p->n, skip, &b);
  lr_node *v = lr_json_decode_exact(b.data, b.len, NULL, NULL, 0); /* the room's own values */
  lr_buf_free(&b);
  lr_lua_push_copy(L, v);
  lr_node_release(v);
  return 1;
}

static int l_is_proxy(lua_State *L) {
  proxy *p = test_proxy(L, 1);
  lua_pushboolean(L, p != NULL);
  if (p) lua_pushstring(L, p->n->type == LR_ARRAY ? "array" : "object");
  return p ? 2 : 1;
}

/* core.set_flags(proxy, key, flags): flags of the child at key. */
static int l_set_flags(lua_State *L) {
  proxy *p = check_proxy(L, 1);
  size_t kl;
  const char *k = luaL_checklstring(L, 2, &kl);
  lr_node *c = p->n->type == LR_OBJECT ? lr_obj_get(p->n, k, kl) : NULL;
  if (!c) return luaL_error(L, "no key %s", k);
  c->flags = (uint8_t)luaL_checkinteger(L, 3);
  return 0;
}

/* core.path(proxy) -> "players.abc" */
static int l_path(lua_State *L) {
  proxy *p = check_proxy(L, 1);
  lr_buf b;
  lr_buf_init(&b);
  lr_node_path(p->n, &b);
  lua_pushlstring(L, b.data ? b.data : "", b.len);
  lr_buf_free(&b);
  return 1;
}

static int l_memory(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)lr_vm_memory(L));
  return 1;
}

static int l_set_memory_limit(lua_State *L) {
  lr_vm_set_memory_limit(L, (size_t)luaL_checkinteger(L, 1));
  return 0;
}

/* core.log_capture(on) / core.log_lines() -> {lines...} (and clears) */
static int l_log_capture(lua_State *L) {
  lr_log_capture(lua_toboolean(L, 1));
  return 0;
}

/* core.log_limit(burst, window_ms): the refusal-log limiter (tests). */
static int l_log_limit(lua_State *L) {
  lr_log_set_limit((unsigned)luaL_checkinteger(L, 1), (long)luaL_checkinteger(L, 2));
  return 0;
}

static int l_log_lines(lua_State *L) {
  lua_newtable(L);
  const char *line;
  lua_Integer i = 0;
  while ((line = lr_log_captured(i)) != NULL) {
    lua_pushstring(L, line);
    lua_rawseti(L, -2, ++i);
  }
  lr_log_capture_clear();
  return 1;
}

static int l_log(lua_State *L) {
  const char *lvl = luaL_checkstring(L, 1);
  const char *msg = luaL_checkstring(L, 2);
  int level = strcmp(lvl, "error") == 0   ? LR_LOG_ERROR
              : strcmp(lvl, "warn") == 0  ? LR_LOG_WARN
              : strcmp(lvl, "debug") == 0 ? LR_LOG_DEBUG
                                          : LR_LOG_INFO;
  const char *key = lua_tostring(L, 3); /* a refusal: rate-limited per key (log.h) */
  if (key)
    lr_log_limited(level, key, "%s", msg);
  else
    lr_log(level, "%s", msg);
  return 0;
}

/* core.pcall(fn, roomid, what, ...) -> ok, results... through lr_vm_pcall
 * (for runtime code that must isolate a user callback, e.g. onLeave). */
static int l_pcall(lua_State *L) {
  int nargs = lua_gettop(L) - 3;
  const char *room = lua_tostring(L, 2), *what = lua_tostring(L, 3);
  lua_pushvalue(L, 1);
  lua_rotate(L, 4, 1); /* fn after what */
  lr_callinfo ci = {.room = room, .what = what};
  int base = 3;
  if (lr_vm_pcall(L, nargs, LUA_MULTRET, &ci) != 0) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, ci.budget_hit ? "instruction budget exceeded" : ci.err);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_rotate(L, base + 1, 1);
  return lua_gettop(L) - base;
}

/* core.listdir(dir) -> sorted list of regular *.lua file names (not paths) */
static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int l_listdir(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  DIR *d = opendir(dir);
  if (!d) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot open %s: %s", dir, strerror(errno));
    return 2;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t l = strlen(e->d_name);
    if (l < 5 || strcmp(e->d_name + l - 4, ".lua") != 0 || e->d_name[0] == '.') continue;
    if (n == cap) names = lr_xrealloc(names, (cap = cap ? cap * 2 : 16) * sizeof *names);
    names[n++] = lr_xstrndup(e->d_name, l);
  }
  closedir(d);
  if (n) qsort(names, n, sizeof *names, cmp_str);
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(L, names[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
    free(names[i]);
  }
  free(names);
  return 1;
}

/* core.readfile(path) -> contents | nil, err (bounded to 8 MiB) */
static int l_readfile(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  FILE *f = fopen(path, "rb");
  if (!f) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot open %s: %s", path, strerror(errno));
    return 2;
  }
  lr_buf b;
  lr_buf_init(&b);
  char chunk[8192];
  size_t k;
  while ((k = fread(chunk, 1, sizeof chunk, f)) > 0 && b.len < (8u << 20))
    lr_buf_put(&b, chunk, k);
  fclose(f);
  if (b.len >= (8u << 20)) {
    lr_buf_free(&b);
    lua_pushnil(L);
    lua_pushfstring(L, "%s is larger than 8 MiB", path);
    return 2;
  }
  lua_pushlstring(L, b.data ? b.data : "", b.len);
  lr_buf_free(&b);
  return 1;
}

/* core.hash(s) -> 12 hex digits (FNV-1a 64, for code versions) */
static int l_hash(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++)
    h = (h ^ s[i]) * 1099511628211ULL;
  char out[17];
  snprintf(out, sizeof out, "%016llx", (unsigned long long)h);
  lua_pushlstring(L, out, 12);
  return 1;
}

/* ------------------------------------------------------------ module */

static const luaL_Reg core_fns[] = {
    {"set_runtime", l_set_runtime},
    {"server_new", l_server_new},
    {"server_limits", l_server_limits},
    {"addr_take", l_addr_take},
    {"server_close", l_server_close},
    {"server_bind", l_server_bind},
    {"want_header", l_want_header},
    {"now", l_now},
    {"random_id", l_random_id},
    {"timer", l_timer},
    {"cancel", l_cancel},
    {"advance", l_advance},
    {"tick", l_tick},
    {"batch_joins", l_batch_joins},
    {"room_new", l_room_new},
    {"room_root", l_room_root},
    {"room_rebind", l_room_rebind},
    {"live_nodes", l_live_nodes},
    {"stats", l_stats},
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
    {"store_get", l_store_get},
    {"store_apply", l_store_apply},
    {"store_list", l_store_list},
    {"store_count", l_store_count},
    {"store_pending", l_store_pending},
    {"store_stats", l_store_stats},
    {"storage_failing", l_storage_failing},
    {"store_fail_next", l_store_fail_next},
    {"encode", l_encode},
    {"decode", l_decode},
    {"copy", l_copy},
    {"is_proxy", l_is_proxy},
    {"set_flags", l_set_flags},
    {"path", l_path},
    {"memory", l_memory},
    {"set_memory_limit", l_set_memory_limit},
    {"log", l_log},
    {"log_capture", l_log_capture},
    {"log_lines", l_log_lines},
    {"log_limit", l_log_limit},
    {"pcall", l_pcall},
    {"listdir", l_listdir},
    {"readfile", l_readfile},
    {"hash", l_hash},
    {NULL, NULL},
};

int lr_lua_api_open(lua_State *L) {
  if (luaL_newmetatable(L, NODE_MT)) {
    const luaL_Reg m[] = {{"__index", node_index},
                          {"__newindex", node_newindex},
                          {"__len", node_len},
                          {"__pairs", node_pairs},
                          {"__tostring", node_tostring},
                          {"__gc", node_gc},
                          {NULL, NULL}};
    luaL_setfuncs(L, m, 0);
    lua_pushliteral(L, "lunaroom.node");
    lua_setfield(L, -2, "__name");
    lua_pushboolean(L, 0); /* getmetatable from Lua: false (room code shares it) */
    lua_setfield(L, -2, "__metatable");
  }
  lua_pop(L, 1);
  /* Handles: a metatable each, with only a finalizer. */
  static const luaL_Reg handles[] = {
      {SERVER_MT, server_gc}, {ROOM_MT, room_gc}, {CONN_MT, conn_gc}};
  for (size_t i = 0; i < sizeof handles / sizeof *handles; i++) {
    luaL_newmetatable(L, handles[i].name);
    lua_pushcfunction(L, handles[i].func);
    lua_setfield(L, -2, "__gc");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
  }
  /* Proxy cache: weak values, keyed by node address. */
  lua_newtable(L);
  lua_newtable(L);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, CACHE_KEY);
  /* The array marker metatable shared with lua/lunaroom (lr.array). */
  lua_newtable(L);
  lua_pushliteral(L, "array");
  lua_setfield(L, -2, "__jsontype");
  lua_setfield(L, LUA_REGISTRYINDEX, ARRAY_MT_KEY);
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, "lunaroom.conn_mt");

  luaL_newlib(L, core_fns);
  PUSH_NULL(L);
  lua_setfield(L, -2, "null");
  lua_getfield(L, LUA_REGISTRYINDEX, ARRAY_MT_KEY);
  lua_setfield(L, -2, "array_mt");
  lua_pushinteger(L, LR_F_NOSYNC);
  lua_setfield(L, -2, "NOSYNC");
  lua_pushinteger(L, LR_F_NOPERSIST);
  lua_setfield(L, -2, "NOPERSIST");
  return 1;
}

/*
 * lua_proxy.c - the values Lua sees of the state tree: conversion between
 * Lua values and lr_node trees, the state proxies (userdata
 * "lunaroom.node": reads and writes of the C state tree, with undo records
 * and path-naming errors) and the value functions of lunaroom.core
 * (encode, decode, copy, is_proxy, set_flags, path, null, array_mt).
 *
 * Owns: the node metatable, the proxy cache, the array marker metatable,
 * the JSON null sentinel, JSON encode/decode that keep numbers exact.
 * Must not: decide room rules (runtime.lua), schedule flushes (room.c) or
 * know servers, rooms or connections beyond the room a proxy writes to.
 *
 * Proxies retain the node and the room they write to.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "engine.h"
#include "json.h"
#include "lua_proxy.h"
#include "lua_vm.h"
#include "undo.h"

#define NODE_MT "lunaroom.node"
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
    lua_pushlstring(L, lr_str(n), lr_strlen(n));
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
      lua_pushlstring(L, lr_member_key(&n->u.obj.m[i]), lr_member_keylen(&n->u.obj.m[i]));
      lr_lua_push_copy(L, n->u.obj.m[i].val);
      lua_rawset(L, -3);
    }
    break;
  }
}

/* The proxy at idx, or NULL: luaL_testudata, with the metatable compared
 * by the address lr_lua_proxy_register kept (no registry lookup by name:
 * every field read and write of room code checks its proxy). */
static proxy *test_proxy(lua_State *L, int idx) {
  return lr_vm_testudata(L, idx, LR_HOT_NODE, NODE_MT);
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

static lr_node *to_node(conv *cv, int idx);

/* The array table at idx (len items) as an LR_ARRAY; NULL with cv->err. */
static lr_node *array_to_node(conv *cv, int idx, lua_Integer len, size_t mark) {
  lua_State *L = cv->L;
  lr_node *out = lr_node_new(LR_ARRAY);
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
  return out;
}

/* The table at idx as an LR_OBJECT; NULL with cv->err. Objects: keys
 * sorted, so packets and storage are deterministic. */
static lr_node *object_to_node(conv *cv, int idx, size_t mark) {
  lua_State *L = cv->L;
  lr_node *out = NULL;
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
  return out;
}

/* The table at idx: depth and cycle checks around the array or object
 * conversion. */
static lr_node *table_to_node(conv *cv, int idx) {
  lua_State *L = cv->L;
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
  lua_Integer len;
  lr_node *out = table_is_array(L, idx, &len) ? array_to_node(cv, idx, len, mark)
                                              : object_to_node(cv, idx, mark);
  cv->depth--;
  cv->shared -= again;
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 0);
  lua_rawset(L, lua_upvalueindex(1));
  return out;
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
    return table_to_node(cv, idx);
  default: {
    char what[64];
    snprintf(what, sizeof what, "cannot store a %s", luaL_typename(L, idx));
    return conv_fail(cv, what);
  }
  }
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
  const lr_vm_hot *hot = lr_vm_hot_of(L);
  if (hot && hot->proxies)
    lua_rawgeti(L, LUA_REGISTRYINDEX, hot->proxies);
  else
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
  return lr_vm_checkudata(L, idx, LR_HOT_NODE, NODE_MT);
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

/* The value being written (stack index 3) as a node for key k of n. The
 * path that names it in an error is built only when it fails (then the
 * conversion runs again with it): a write costs no path string. */
static lr_node *value_at(lua_State *L, lr_node *n, const char *k, size_t kl, char *err,
                         size_t errlen) {
  lr_node *v = lr_lua_to_node(L, 3, NULL, err, errlen);
  if (v) return v;
  lr_buf where;
  lr_buf_init(&where);
  path_of(n, &where);
  if (where.len) lr_buf_putc(&where, '.');
  lr_buf_put(&where, k, kl);
  v = lr_lua_to_node(L, 3, lr_buf_cstr(&where), err, errlen);
  lr_buf_free(&where);
  return v;
}

/* The number (finite) or boolean at idx as *tmp, a node that lives on the
 * caller's stack: what to_node makes of it, without an allocation. false:
 * any other value (to_node converts it, or says why it cannot). */
static bool scalar_at(lua_State *L, int idx, lr_node *tmp) {
  memset(tmp, 0, sizeof *tmp);
  tmp->refs = 1;
  switch (lua_type(L, idx)) {
  case LUA_TBOOLEAN:
    tmp->type = LR_BOOL;
    tmp->u.b = lua_toboolean(L, idx);
    return true;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      tmp->type = LR_INT;
      tmp->u.i = (int64_t)lua_tointeger(L, idx);
      return true;
    }
    tmp->type = LR_FLOAT;
    tmp->u.f = lua_tonumber(L, idx);
    return isfinite(tmp->u.f);
  default:
    return false;
  }
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
        if (p->r) lr_undo_record_key(lr_vm_undo(L), n, k, kl);
        lr_state_delete(n, k, kl);
      }
    } else {
      lr_node tmp; /* a number or a boolean: a node on the C stack (lr_state_set copies it) */
      lr_node *v = scalar_at(L, 3, &tmp) ? &tmp : value_at(L, n, k, kl, err, sizeof err);
      if (!v) return luaL_error(L, "%s", err);
      if (p->r) lr_undo_record_set(lr_vm_undo(L), n, k, kl);
      lr_state_set(n, k, kl, v, 0);
      if (v != &tmp) lr_node_release(v);
    }
  } else {
    if (!lua_isinteger(L, 2)) return write_error(L, n, NULL, "array index must be an integer");
    lua_Integer i = lua_tointeger(L, 2);
    lua_Integer len = (lua_Integer)n->u.arr.len;
    if (i < 1 || i > len + 1)
      return write_error(L, n, NULL, "array index out of range (arrays have no holes)");
    if (p->r) lr_undo_record_array(lr_vm_undo(L), n);
    if (lua_isnil(L, 3)) {
      if (i == len)
        lr_state_arr_remove(n, (uint32_t)(i - 1));
      else if (i < len) {
        lr_node *nul = lr_node_null();
        lr_state_arr_set(n, (uint32_t)(i - 1), nul);
        lr_node_release(nul);
      }
    } else {
      char ib[24];
      int il = snprintf(ib, sizeof ib, "%lld", (long long)(i - 1));
      lr_node *v = value_at(L, n, ib, (size_t)il, err, sizeof err);
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
  lua_pushlstring(L, lr_member_key(&n->u.obj.m[pos]), lr_member_keylen(&n->u.obj.m[pos]));
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
/* ------------------------------------------------------------ module */

static const luaL_Reg value_fns[] = {
    {"encode", l_encode},       {"decode", l_decode}, {"copy", l_copy}, {"is_proxy", l_is_proxy},
    {"set_flags", l_set_flags}, {"path", l_path},     {NULL, NULL},
};

void lr_lua_proxy_register(lua_State *L) {
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
  lr_vm_hot *hot = lr_vm_hot_of(L);
  if (hot) hot->mt[LR_HOT_NODE] = lua_topointer(L, -1);
  lua_pop(L, 1);
  /* Proxy cache: weak values, keyed by node address. */
  lua_newtable(L);
  lua_newtable(L);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  if (hot) { /* the same table at a number too: lr_lua_push_node's lookup */
    lua_pushvalue(L, -1);
    if (hot->proxies)
      lua_rawseti(L, LUA_REGISTRYINDEX, hot->proxies);
    else
      hot->proxies = lr_ref_take(L);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, CACHE_KEY);
  /* The array marker metatable shared with lua/lunaroom (lr.array). */
  lua_newtable(L);
  lua_pushliteral(L, "array");
  lua_setfield(L, -2, "__jsontype");
  lua_setfield(L, LUA_REGISTRYINDEX, ARRAY_MT_KEY);

  luaL_setfuncs(L, value_fns, 0);
  PUSH_NULL(L);
  lua_setfield(L, -2, "null");
  lua_getfield(L, LUA_REGISTRYINDEX, ARRAY_MT_KEY);
  lua_setfield(L, -2, "array_mt");
  lua_pushinteger(L, LR_F_NOSYNC);
  lua_setfield(L, -2, "NOSYNC");
  lua_pushinteger(L, LR_F_NOPERSIST);
  lua_setfield(L, -2, "NOPERSIST");
}

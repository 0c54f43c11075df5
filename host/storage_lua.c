/*
 * storage_lua.c - a storage backend written in Lua (--storage lua:FILE).
 *
 * FILE returns a table of functions; values cross as JSON text, so numbers
 * stay exact whatever the backend does with them:
 *   get(ns, room, key)          -> json | nil
 *   put(ns, room, key, json)
 *   delete(ns, room, key)
 *   list(ns, room, prefix)      -> { {key, json}, ... } in ascending key order
 *   apply(ns, room, ops)        optional: ops = { {"put", k, json} | {"del", k}
 *                               | {"delprefix", k} }, all or nothing; without
 *                               it the ops run one by one (not atomic)
 *   count(ns, room)             optional
 * Calls are synchronous: a backend may block on I/O (it runs on the loop).
 *
 * Owns: the lr_store vtable over such a table. Must not: keep Lua values
 * across calls other than the backend table's registry reference.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "log.h"
#include "lua_vm.h"
#include "storage.h"

typedef struct lstore {
  lr_store base;
  lua_State *L;
  int ref; /* the backend table */
} lstore;

/* Push backend[name]; returns 0, or -1 (nothing pushed) if it is missing. */
static int push_fn(lstore *s, const char *name) {
  lua_rawgeti(s->L, LUA_REGISTRYINDEX, s->ref);
  lua_getfield(s->L, -1, name);
  lua_remove(s->L, -2);
  if (lua_isfunction(s->L, -1)) return 0;
  lua_pop(s->L, 1);
  return -1;
}

static int call(lstore *s, const char *name, int nargs, int nres, char *err, size_t errlen) {
  lr_callinfo ci = {.what = name};
  if (lr_vm_pcall(s->L, nargs, nres, &ci) != 0) {
    lr__store_errf(err, errlen, "lua storage %s: %s", name, ci.err);
    return LR_STORE_EIO;
  }
  return 0;
}

static int l_get(lr_store *st, const char *ns, const char *room, const char *key, lr_buf *out,
                 char *err, size_t errlen) {
  lstore *s = (lstore *)st;
  lua_State *L = s->L;
  lr_buf_reset(out);
  if (push_fn(s, "get")) return lr__store_errf(err, errlen, "lua storage has no get"), LR_STORE_EIO;
  lua_pushstring(L, ns);
  lua_pushstring(L, room);
  lua_pushstring(L, key);
  int rc = call(s, "get", 3, 1, err, errlen);
  if (rc) return rc;
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return LR_STORE_NOTFOUND;
  }
  size_t n;
  const char *v = lua_tolstring(L, -1, &n);
  if (!v) {
    lua_pop(L, 1);
    lr__store_errf(err, errlen, "lua storage get(%s) did not return JSON text", key);
    return LR_STORE_EIO;
  }
  lr_buf_put(out, v, n);
  lua_pop(L, 1);
  return 0;
}

static int l_list(lr_store *st, const char *ns, const char *room, const char *prefix,
                  lr_store_list_cb cb, void *ud, char *err, size_t errlen) {
  lstore *s = (lstore *)st;
  lua_State *L = s->L;
  if (push_fn(s, "list"))
    return lr__store_errf(err, errlen, "lua storage has no list"), LR_STORE_EIO;
  lua_pushstring(L, ns);
  lua_pushstring(L, room);
  lua_pushstring(L, prefix ? prefix : "");
  int rc = call(s, "list", 3, 1, err, errlen);
  if (rc) return rc;
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lr__store_errf(err, errlen, "lua storage list did not return a table");
    return LR_STORE_EIO;
  }
  lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    size_t kl, vl;
    const char *k = lua_tolstring(L, -2, &kl), *v = lua_tolstring(L, -1, &vl);
    int stop = (k && v) ? cb(ud, k, kl, v, vl) : 0;
    lua_pop(L, 3);
    if (stop) break;
  }
  lua_pop(L, 1);
  return 0;
}

static void push_ops(lua_State *L, const lr_store_op *ops, size_t n) {
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_createtable(L, 3, 0);
    const char *kind = ops[i].kind == LR_STORE_PUT   ? "put"
                       : ops[i].kind == LR_STORE_DEL ? "del"
                                                     : "delprefix";
    lua_pushstring(L, kind);
    lua_rawseti(L, -2, 1);
    lua_pushlstring(L, ops[i].key, ops[i].keylen);
    lua_rawseti(L, -2, 2);
    if (ops[i].kind == LR_STORE_PUT) {
      lua_pushlstring(L, ops[i].val, ops[i].vallen);
      lua_rawseti(L, -2, 3);
    }
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

typedef struct keys {
  char **k;
  size_t n, cap;
} keys;

static int collect(void *ud, const char *key, size_t keylen, const char *val, size_t vallen) {
  (void)val;
  (void)vallen;
  keys *ks = ud;
  if (ks->n == ks->cap)
    ks->k = lr_xrealloc(ks->k, (ks->cap = ks->cap ? ks->cap * 2 : 16) * sizeof *ks->k);
  ks->k[ks->n++] = lr_xstrndup(key, keylen);
  return 0;
}

static int l_apply(lr_store *st, const char *ns, const char *room, const lr_store_op *ops, size_t n,
                   char *err, size_t errlen) {
  lstore *s = (lstore *)st;
  lua_State *L = s->L;
  int rc = lr__store_check_ops(ns, room, ops, n, err, errlen);
  if (rc) return rc;
  if (push_fn(s, "apply") == 0) {
    lua_pushstring(L, ns);
    lua_pushstring(L, room);
    push_ops(L, ops, n);
    return call(s, "apply", 3, 0, err, errlen);
  }
  for (size_t i = 0; i < n && rc == 0; i++) {
    const lr_store_op *o = &ops[i];
    if (o->kind == LR_STORE_DEL_PREFIX) {
      keys ks = {0};
      char prefix[1024];
      snprintf(prefix, sizeof prefix, "%.*s", (int)o->keylen, o->key);
      rc = l_list(st, ns, room, prefix, collect, &ks, err, errlen);
      for (size_t j = 0; j < ks.n; j++) {
        if (rc == 0 && push_fn(s, "delete") == 0) {
          lua_pushstring(L, ns);
          lua_pushstring(L, room);
          lua_pushstring(L, ks.k[j]);
          rc = call(s, "delete", 3, 0, err, errlen);
        }
        free(ks.k[j]);
      }
      free(ks.k);
      continue;
    }
    const char *fn = o->kind == LR_STORE_PUT ? "put" : "delete";
    if (push_fn(s, fn)) {
      lr__store_errf(err, errlen, "lua storage has no %s", fn);
      return LR_STORE_EIO;
    }
    lua_pushstring(L, ns);
    lua_pushstring(L, room);
    lua_pushlstring(L, o->key, o->keylen);
    if (o->kind == LR_STORE_PUT) lua_pushlstring(L, o->val, o->vallen);
    rc = call(s, fn, o->kind == LR_STORE_PUT ? 4 : 3, 0, err, errlen);
  }
  return rc;
}

static int count_cb(void *ud, const char *k, size_t kl, const char *v, size_t vl) {
  (void)k, (void)kl, (void)v, (void)vl;
  (*(long *)ud)++;
  return 0;
}

static long l_count(lr_store *st, const char *ns, const char *room) {
  lstore *s = (lstore *)st;
  if (push_fn(s, "count") == 0) {
    lua_pushstring(s->L, ns ? ns : "");
    if (room)
      lua_pushstring(s->L, room);
    else
      lua_pushnil(s->L);
    char err[128];
    if (call(s, "count", 2, 1, err, sizeof err)) return -1;
    long n = (long)lua_tointeger(s->L, -1);
    lua_pop(s->L, 1);
    return n;
  }
  if (!ns || !room) return -1;
  long n = 0;
  char err[128];
  if (l_list(st, ns, room, "", count_cb, &n, err, sizeof err)) return -1;
  return n;
}

static void l_close(lr_store *st) {
  lstore *s = (lstore *)st;
  luaL_unref(s->L, LUA_REGISTRYINDEX, s->ref);
  free(s);
}

static const lr_store_vt lua_vt = {"lua", l_get, l_list, l_apply, l_count, l_close};

lr_store *lr_store_lua_open(lua_State *L, const char *path, char *err, size_t errlen) {
  if (luaL_loadfile(L, path) != LUA_OK) {
    lr__store_errf(err, errlen, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return NULL;
  }
  lr_callinfo ci = {.what = "storage backend"};
  if (lr_vm_pcall(L, 0, 1, &ci) != 0) {
    lr__store_errf(err, errlen, "%s", ci.err);
    return NULL;
  }
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lr__store_errf(err, errlen, "%s must return a table with get, put, delete, list", path);
    return NULL;
  }
  lstore *s = lr_xcalloc(1, sizeof *s);
  s->base.vt = &lua_vt;
  s->L = L;
  s->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return &s->base;
}

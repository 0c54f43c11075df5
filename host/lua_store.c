/*
 * lua_store.c - the storage functions of lunaroom.core: what runtime.lua
 * and specs read and write through the server's lr_store (store_get,
 * store_apply, store_list, store_count) and the storage figures of ops
 * (store_pending, store_stats, storage_failing, store_fail_next), and
 * lr_lua_push_stats (figures as Lua tables, also for cluster_lua.c).
 *
 * Owns: the Lua <-> storage glue (values stored as JSON text, decoded with
 * exact numbers).
 * Must not: talk to a backend other than through storage.h, or decide
 * when a room is written (sync.c's storage gate).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "engine.h"
#include "json.h"
#include "log.h"
#include "lua_api.h"

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
    lr_room *r = lr_lua_check_room(L, idx);
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
  lr_room *r = lr_lua_check_room(L, 1);
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
  lr_lua_push_stats(L, v, n);
  return 1;
}

void lr_lua_push_stats(lua_State *L, const lr_store_stat *v, size_t n) {
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
}

static int l_store_count(lua_State *L) {
  store_target tg = check_target(L, 1);
  lua_pushinteger(L, tg.st->vt->count(tg.st, tg.ns, tg.id));
  return 1;
}

static const luaL_Reg store_fns[] = {
    {"store_get", l_store_get},
    {"store_apply", l_store_apply},
    {"store_list", l_store_list},
    {"store_count", l_store_count},
    {"store_pending", l_store_pending},
    {"store_stats", l_store_stats},
    {"storage_failing", l_storage_failing},
    {"store_fail_next", l_store_fail_next},
    {NULL, NULL},
};

void lr_lua_store_register(lua_State *L) {
  luaL_setfuncs(L, store_fns, 0);
}

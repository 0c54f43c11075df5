/*
 * cluster_lua.c - the Lua face of a cluster node (require
 * "lunaroom.cluster", bound by lr_cluster_enable): ops.lua's POST
 * /admin/drain and /admin/undrain, GET /admin/cluster and the relay
 * figures in /metrics.
 *
 * Owns: lr_cluster_drain (hand every room of this node to the others),
 * lr_cluster_undrain (take leases again) and the bindings drain(),
 * undrain(), rooms(limit, fn), stats(), node.
 * Must not: decide who may call them (ops.lua checks the admin JWT), or
 * read the lease table itself (the store answers:
 * lr_store_postgres_leases).
 */
#include "cluster.h"

#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>

#include "buf.h"
#include "cluster_int.h"
#include "engine.h"
#include "log.h"
#include "lua_api.h"
#include "lua_vm.h"
#include "storage_postgres.h"

/* ------------------------------------------------------------ drain */

int lr_cluster_drain(lr_server *s) {
  cluster *cl = s->cluster_state;
  if (!cl) return -1;
  if (!cl->draining) lr_info("cluster: draining: this node takes no more leases");
  cl->draining = true;
  lr_store_postgres_drain(s->store);
  uint32_t n = 0, cap = s->nrooms ? s->nrooms : 1;
  lr_room **rs = lr_xmalloc(cap * sizeof *rs);
  for (uint32_t b = 0; b < s->nbuckets; b++)
    for (lr_room *r = s->rooms[b]; r && n < cap; r = r->hash_next)
      if (!r->disposed) rs[n++] = lr_room_retain(r);
  /* Each room: written (its lease given back once committed), its sockets
   * closed with 1001: direct clients reconnect (elsewhere), other nodes'
   * links follow the room to whichever node takes it next. */
  for (uint32_t i = 0; i < n; i++) {
    if (!rs[i]->disposed) lr_room_dispose(rs[i]);
    lr_room_release(rs[i]);
  }
  free(rs);
  cl->n_drains++;
  lr_info("cluster: drained %u room(s)", n);
  return (int)n;
}

int lr_cluster_undrain(lr_server *s) {
  cluster *cl = s->cluster_state;
  if (!cl) return -1;
  bool was = cl->draining;
  cl->draining = false;
  lr_store_postgres_undrain(s->store);
  if (was) lr_info("cluster: undrained: this node takes leases again");
  return was ? 1 : 0;
}

/* require("lunaroom.cluster").drain() -> rooms handed off (ops.lua, POST /admin/drain). */
static int l_drain(lua_State *L) {
  lr_server *s = lua_touserdata(L, lua_upvalueindex(1));
  lua_pushinteger(L, lr_cluster_drain(s));
  return 1;
}

/* require("lunaroom.cluster").undrain() -> whether it was drained (POST /admin/undrain). */
static int l_undrain(lua_State *L) {
  lr_server *s = lua_touserdata(L, lua_upvalueindex(1));
  lua_pushboolean(L, lr_cluster_undrain(s) == 1);
  return 1;
}

typedef struct rooms_req {
  lr_server *s;
  int fn; /* registry ref of the Lua callback */
} rooms_req;

static void rooms_done(void *ud, const char *rows, size_t len, const char *err) {
  rooms_req *q = ud;
  lua_State *L = q->s->L;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, q->fn);
  lr_ref_release(L, q->fn);
  if (rows) {
    lr_buf b;
    lr_buf_init(&b);
    lr_buf_puts(&b, "[");
    lr_buf_put(&b, rows, len);
    lr_buf_puts(&b, "]");
    lua_pushlstring(L, b.data, b.len);
    lr_buf_free(&b);
    lua_pushnil(L);
  } else {
    lua_pushnil(L);
    lua_pushstring(L, err ? err : "failed");
  }
  /* Counted like every call into Lua; rules without call (never under
   * serve) drop the answer (the settop below). */
  if (q->s->rules->call) q->s->rules->call(q->s, "cluster rooms", 2, 0, NULL, 0);
  lua_settop(L, top);
  free(q);
}

/* require("lunaroom.cluster").rooms(limit, function(json_array | nil, err) end)
 * -> true, or nil, err: the rooms every node holds, from the lease table
 * (ops.lua, GET /admin/cluster). */
static int l_rooms(lua_State *L) {
  lr_server *s = lua_touserdata(L, lua_upvalueindex(1));
  lua_Integer limit = luaL_checkinteger(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  rooms_req *q = lr_xcalloc(1, sizeof *q);
  q->s = s;
  lua_pushvalue(L, 2);
  q->fn = lr_ref_take(L);
  if (lr_store_postgres_leases(s->store, (long)limit, rooms_done, q) != 0) {
    lr_ref_release(L, q->fn);
    free(q);
    lua_pushnil(L);
    lua_pushstring(L, "the database is not connected");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* require("lunaroom.cluster").stats() -> { {name, kind, help, value}, ... }
 * (ops.lua adds them to /metrics, after the store's). */
static int l_stats(lua_State *L) {
  lr_server *s = lua_touserdata(L, lua_upvalueindex(1));
  lr_store_stat v[16];
  lr_lua_push_stats(L, v, lr_cluster_stats(s, v, 16));
  return 1;
}

int cl_luaopen(lua_State *L) {
  lua_createtable(L, 0, 5);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, l_stats, 1);
  lua_setfield(L, -2, "stats");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, l_drain, 1);
  lua_setfield(L, -2, "drain");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, l_undrain, 1);
  lua_setfield(L, -2, "undrain");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, l_rooms, 1);
  lua_setfield(L, -2, "rooms");
  lua_pushstring(
      L,
      ((cluster *)((lr_server *)lua_touserdata(L, lua_upvalueindex(1)))->cluster_state)->node_url);
  lua_setfield(L, -2, "node");
  return 1;
}

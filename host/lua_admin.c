/*
 * lua_admin.c - the admin and ops functions of lunaroom.core: the engine's
 * counters (stats, live_nodes), the Lua memory figures and limit, logging
 * and its capture for specs, the isolated pcall for runtime code, counted
 * coroutine constructors for the sandbox (lua_vm.c's watchdog), and the
 * file helpers the runtime loads rooms with (listdir, readfile, hash).
 *
 * Owns: those functions; they read the server and the process, and change
 * nothing of a room.
 * Must not: touch rooms, connections or storage (lua_api.c, lua_store.c).
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "engine.h"
#include "hash.h"
#include "log.h"
#include "lua_api.h"
#include "lua_vm.h"

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

/* core.refs_live() -> the registry references the host holds (lua_vm.h:
 * lr_ref_live; specs assert that a room's life leaks none). */
static int l_refs_live(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)lr_ref_live(L));
  return 1;
}

static int l_live_nodes(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)lr_node_live());
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
  uint64_t h = lr_fnv1a64(LR_FNV1A64_INIT, s, n);
  char out[17];
  snprintf(out, sizeof out, "%016llx", (unsigned long long)h);
  lua_pushlstring(L, out, 12);
  return 1;
}

/* core.counted(f): f (coroutine.create or wrap) as lr_vm_counted calls it. */
static int l_counted(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_pushcclosure(L, lr_vm_counted, 1);
  return 1;
}

static const luaL_Reg admin_fns[] = {
    {"stats", l_stats},
    {"live_nodes", l_live_nodes},
    {"refs_live", l_refs_live},
    {"memory", l_memory},
    {"set_memory_limit", l_set_memory_limit},
    {"log", l_log},
    {"log_capture", l_log_capture},
    {"log_lines", l_log_lines},
    {"log_limit", l_log_limit},
    {"pcall", l_pcall},
    {"counted", l_counted},
    {"listdir", l_listdir},
    {"readfile", l_readfile},
    {"hash", l_hash},
    {NULL, NULL},
};

void lr_lua_admin_register(lua_State *L) {
  luaL_setfuncs(L, admin_fns, 0);
}

/*
 * fuzz_bounded.c - libFuzzer target: the C functions room code can make work
 * long (lpattern.c, lbounded.c), called with hostile arguments under a small
 * instruction budget through lr_vm_pcall, as a handler would.
 *
 * The first byte picks the function; the rest is split at the first two
 * 0xFF bytes into a subject, a pattern (or a number) and a replacement.
 * Checked for every input:
 *   - the call returns within TIME_BOUND seconds (the budget must stop it);
 *   - a pattern call that finished within the budget gives the same results
 *     (or the same error) as stock Lua 5.4's lstrlib in a second, plain
 *     lua_State (the matcher is a rewrite: this is its oracle);
 *   - string.rep/table.move/concat/unpack with hostile counts are refused
 *     or done, never left running.
 * Must not: run the stock functions on inputs the budget stopped (they may
 * run for hours: that is what is being fixed).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "log.h"
#include "lua_vm.h"

#define BUDGET 200000
#define TIME_BOUND 2.0

static lua_State *L;     /* the host's state: bounded functions */
static lua_State *stock; /* plain Lua: the oracle */

static void fail(const char *what) {
  fprintf(stderr, "fuzz_bounded: %s\n", what);
  abort();
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Push lib.name and the arguments; returns the argument count. */
static int push_call(lua_State *S, int op, const char *a, size_t la, const char *b, size_t lb,
                     const char *c, size_t lc) {
  static const char *const names[][2] = {
      {"string", "find"},  {"string", "match"}, {"string", "gmatch"}, {"string", "gsub"},
      {"string", "find"},  {"string", "rep"},   {"table", "move"},    {"table", "concat"},
      {"table", "unpack"}, {"string", "gsub"},
  };
  lua_getglobal(S, names[op][0]);
  lua_getfield(S, -1, names[op][1]);
  lua_remove(S, -2);
  lua_Integer n = 0;
  for (size_t i = 0; i < lb && i < 8; i++)
    n = (lua_Integer)((uint64_t)n << 8 | (unsigned char)b[i]);
  switch (op) {
  case 0:
  case 1:
  case 2:
  case 3:
    lua_pushlstring(S, a, la);
    lua_pushlstring(S, b, lb);
    if (op == 3) {
      lua_pushlstring(S, c, lc);
      return 3;
    }
    return 2;
  case 4: /* plain find */
    lua_pushlstring(S, a, la);
    lua_pushlstring(S, b, lb);
    lua_pushinteger(S, 1);
    lua_pushboolean(S, 1);
    return 4;
  case 5: /* rep(s, n, sep) */
    lua_pushlstring(S, a, la);
    lua_pushinteger(S, n);
    lua_pushlstring(S, c, lc);
    return 3;
  case 6: /* move({}, f, e, t) */
    lua_newtable(S);
    lua_pushinteger(S, n);
    lua_pushinteger(S, (lua_Integer)(la ? (uint64_t)n ^ ((uint64_t)(unsigned char)a[0] << 56) : 0));
    lua_pushinteger(S, 1);
    return 4;
  case 7: /* concat(t, sep, i, j) */
  case 8: /* unpack(t, i, j) */
    lua_newtable(S);
    for (size_t i = 0; i < la && i < 16; i++) {
      lua_pushlstring(S, a + i, 1);
      lua_rawseti(S, -2, (lua_Integer)i + 1);
    }
    if (op == 7) lua_pushliteral(S, ",");
    lua_pushinteger(S, la ? -(lua_Integer)(unsigned char)a[0] : 1);
    lua_pushinteger(S, n);
    return op == 7 ? 4 : 3;
  default: /* gsub with a function replacement: the budget spans it */
    lua_pushlstring(S, a, la);
    lua_pushlstring(S, b, lb);
    luaL_loadstring(S, "return (...) .. ''");
    return 3;
  }
}

/* gmatch: collect every match into one table (results as a flat list). */
static int collect_gmatch(lua_State *S) {
  int top = lua_gettop(S);
  lua_newtable(S);
  int out = lua_gettop(S);
  lua_Integer k = 0;
  for (int guard = 0; guard < 100000; guard++) {
    lua_pushvalue(S, 1);
    lua_call(S, 0, LUA_MULTRET);
    int n = lua_gettop(S) - out;
    if (n == 0 || lua_isnil(S, out + 1)) {
      lua_settop(S, out);
      break;
    }
    for (int i = 1; i <= n; i++) {
      lua_pushvalue(S, out + i);
      lua_rawseti(S, out, ++k);
    }
    lua_settop(S, out);
  }
  lua_remove(S, top);
  return 1;
}

static void add_value(lua_State *S, luaL_Buffer *b, int idx) {
  lua_pushstring(S, luaL_typename(S, idx));
  luaL_addvalue(b);
  luaL_tolstring(S, idx, NULL);
  luaL_addvalue(b);
  luaL_addchar(b, '|');
}

/* Pushes the results base..top (or "E:" on error) as one comparable string;
 * a table result (gmatch) is listed element by element. */
static void describe(lua_State *S, int rc, int base, int top) {
  luaL_Buffer b;
  luaL_buffinit(S, &b);
  if (rc != LUA_OK) {
    luaL_addstring(&b, "E:");
  } else {
    for (int i = base; i <= top; i++) {
      if (!lua_istable(S, i)) {
        add_value(S, &b, i);
        continue;
      }
      lua_Integer n = (lua_Integer)lua_rawlen(S, i);
      for (lua_Integer j = 1; j <= n; j++) {
        lua_rawgeti(S, i, j);
        int at = lua_gettop(S);
        lua_pushstring(S, luaL_typename(S, at));
        lua_pushvalue(S, at);
        lua_remove(S, at); /* [typename, value] */
        luaL_tolstring(S, -1, NULL);
        lua_remove(S, -2); /* [typename, text] */
        lua_concat(S, 2);
        luaL_addvalue(&b);
        luaL_addchar(&b, '|');
      }
    }
  }
  luaL_pushresult(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!L) {
    lr_log_capture(1);
    L = lr_vm_open(LR_SOURCE_DIR "/lua", (size_t)256 << 20);
    stock = luaL_newstate();
    luaL_openlibs(stock);
  }
  lr_log_capture_clear();
  if (size < 1) return 0;
  int op = data[0] % 10;
  const char *rest = (const char *)data + 1;
  size_t n = size - 1;
  const char *sep1 = memchr(rest, 0xFF, n);
  size_t la = sep1 ? (size_t)(sep1 - rest) : n;
  const char *b = sep1 ? sep1 + 1 : rest + n;
  size_t left = sep1 ? n - la - 1 : 0;
  const char *sep2 = memchr(b, 0xFF, left);
  size_t lb = sep2 ? (size_t)(sep2 - b) : left;
  const char *c = sep2 ? sep2 + 1 : b + lb;
  size_t lc = sep2 ? left - lb - 1 : 0;

  /* Ours, under the budget. gmatch is collected inside the same call. */
  int base = lua_gettop(L);
  if (op == 2) lua_pushcfunction(L, collect_gmatch);
  int nargs = push_call(L, op, rest, la, b, lb, c, lc);
  if (op == 2) {
    lua_call(L, nargs, 1); /* gmatch itself only makes the iterator */
    nargs = 1;
  }
  lr_callinfo ci = {.what = "fuzz", .budget = BUDGET};
  double t0 = now();
  int rc = lr_vm_pcall(L, nargs, LUA_MULTRET, &ci);
  double took = now() - t0;
  if (took > TIME_BOUND) fail("a bounded call ran past the time bound");

  /* The oracle, when ours finished within the budget (a pattern op). */
  int pattern_op = op <= 4 || op == 9;
  if (pattern_op && !ci.budget_hit && rc != LUA_ERRMEM && !strstr(ci.err, "memory limit")) {
    int sbase = lua_gettop(stock);
    if (op == 2) lua_pushcfunction(stock, collect_gmatch);
    int sn = push_call(stock, op, rest, la, b, lb, c, lc);
    if (op == 2) {
      lua_call(stock, sn, 1);
      sn = 1;
    }
    int src = lua_pcall(stock, sn, LUA_MULTRET, 0);
    describe(stock, src, sbase + 1, lua_gettop(stock));
    describe(L, rc, base + 1, lua_gettop(L));
    size_t l1, l2;
    const char *s1 = lua_tolstring(L, -1, &l1);
    const char *s2 = lua_tolstring(stock, -1, &l2);
    if (l1 != l2 || memcmp(s1, s2, l1) != 0) {
      fprintf(stderr, "op %d\nours:  %.*s (%s)\nstock: %.*s (%s)\n", op, (int)(l1 > 300 ? 300 : l1),
              s1, ci.err, (int)(l2 > 300 ? 300 : l2), s2, src ? lua_tostring(stock, -2) : "");
      fail("the bounded matcher differs from stock Lua");
    }
    lua_settop(stock, sbase);
  }
  lua_settop(L, base);
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}

/*
 * lbounded.c - bounded versions of the standard-library C functions whose
 * work grows with their arguments. Lua's instruction hook never fires inside
 * a C function, so string.rep("", math.maxinteger) or
 * table.move({}, 1, math.maxinteger - 1, 1) would hold the loop forever
 * whatever the budget. Each wrapper estimates the work from its arguments
 * (elements moved, bytes made, comparisons), charges it to the running
 * handler's instruction budget (lr_vm_charge: the budget error when it does
 * not fit, before any work is done) and then calls the stock function.
 * setmetatable refuses a metatable with a __gc field: finalizers run with
 * hooks off, outside any budget, at a time no handler chose.
 *
 * Costs (instructions, one is ~4 ns): string.rep n/4 + bytes/16 (n when
 * empty); upper/lower/reverse
 * bytes/16; table.move/concat/unpack one per element; table.insert/remove
 * one per element shifted; table.sort 5n*(log2 n + 1); utf8.len/codepoint/
 * offset bytes/8. Pattern functions: lpattern.c.
 *
 * Owns: the wrappers and their cost estimates. Must not: know rooms, change
 * what the wrapped functions return, or limit anything without a budget.
 */
#include "lbounded.h"

#include <stdint.h>

#include <lauxlib.h>

#include "lpattern.h"
#include "lua_vm.h"

static int64_t sat_add(int64_t a, int64_t b) {
  return a > INT64_MAX - b ? INT64_MAX : a + b;
}
static int64_t sat_mul(int64_t a, int64_t b) {
  if (a <= 0 || b <= 0) return 0;
  return a > INT64_MAX / b ? INT64_MAX : a * b;
}
/* Elements in i..j (0 when empty), saturated. */
static int64_t span(lua_Integer i, lua_Integer j) {
  if (j < i) return 0;
  uint64_t n = (uint64_t)j - (uint64_t)i + 1;
  return n == 0 || n > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)n;
}
static lua_Integer int_arg(lua_State *L, int idx, lua_Integer dflt) {
  int ok;
  lua_Integer v = lua_tointegerx(L, idx, &ok);
  return ok ? v : dflt;
}
static int64_t str_len(lua_State *L, int idx) {
  int t = lua_type(L, idx);
  return t == LUA_TSTRING ? (int64_t)lua_rawlen(L, idx) : 0;
}
/* #t as the stock function computes it (__len included); 0 for a non-table. */
static lua_Integer len_of(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TTABLE) return 0;
  lua_len(L, idx);
  int ok;
  lua_Integer n = lua_tointegerx(L, -1, &ok);
  lua_pop(L, 1);
  return ok ? n : 0;
}

static int64_t cost_rep(lua_State *L) {
  lua_Integer n = int_arg(L, 2, 0);
  if (n <= 0) return 0;
  int64_t piece = str_len(L, 1) + str_len(L, 3);
  if (piece == 0) return n; /* an empty loop n times */
  return sat_add(n / 4, sat_mul(n, piece) / 16);
}
static int64_t cost_bytes16(lua_State *L) {
  return str_len(L, 1) / 16;
}
static int64_t cost_bytes8(lua_State *L) {
  return str_len(L, 1) / 8;
}
static int64_t cost_move(lua_State *L) {
  return span(int_arg(L, 2, 0), int_arg(L, 3, -1));
}
static int64_t cost_concat(lua_State *L) {
  lua_Integer i = int_arg(L, 3, 1);
  lua_Integer j = lua_isnoneornil(L, 4) ? len_of(L, 1) : int_arg(L, 4, 0);
  return span(i, j);
}
static int64_t cost_unpack(lua_State *L) {
  lua_Integer i = int_arg(L, 2, 1);
  lua_Integer j = lua_isnoneornil(L, 3) ? len_of(L, 1) : int_arg(L, 3, 0);
  return span(i, j);
}
static int64_t cost_insert(lua_State *L) {
  if (lua_gettop(L) != 3) return 1;
  return span(int_arg(L, 2, 0), len_of(L, 1) + 1);
}
static int64_t cost_remove(lua_State *L) {
  if (lua_gettop(L) < 2) return 1;
  return span(int_arg(L, 2, 0), len_of(L, 1));
}
static int64_t cost_sort(lua_State *L) {
  lua_Integer n = len_of(L, 1);
  if (n <= 1) return 1;
  int64_t lg = 1;
  for (lua_Integer m = n; m > 1; m >>= 1)
    lg++;
  return sat_mul(sat_mul(n, lg), 5); /* measured: ~5 instructions' time per comparison */
}

typedef int64_t (*cost_fn)(lua_State *L);
static const struct {
  const char *lib, *name;
  cost_fn cost;
} wrapped[] = {
    {"string", "rep", cost_rep},       {"string", "upper", cost_bytes16},
    {"string", "lower", cost_bytes16}, {"string", "reverse", cost_bytes16},
    {"table", "move", cost_move},      {"table", "concat", cost_concat},
    {"table", "unpack", cost_unpack},  {"table", "insert", cost_insert},
    {"table", "remove", cost_remove},  {"table", "sort", cost_sort},
    {"utf8", "len", cost_bytes8},      {"utf8", "codepoint", cost_bytes8},
    {"utf8", "offset", cost_bytes8},
};

/* upvalue 1: the stock function; upvalue 2: index in wrapped[]. */
static int bounded_call(lua_State *L) {
  size_t i = (size_t)lua_tointeger(L, lua_upvalueindex(2));
  int64_t cost = wrapped[i].cost(L);
  if (cost > 0) lr_vm_charge(L, cost);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* setmetatable(t, mt) without finalizers: the base library's, with a
 * metatable holding __gc refused (done here, not by calling the stock
 * function: every schema object and room table goes through it). */
static int guarded_setmetatable(lua_State *L) {
  int t = lua_type(L, 2);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
  if (t == LUA_TTABLE) {
    lua_pushliteral(L, "__gc");
    if (lua_rawget(L, 2) != LUA_TNIL)
      return luaL_error(L, "setmetatable: a metatable with __gc is not allowed (finalizers "
                           "would run outside the instruction budget)");
    lua_pop(L, 1);
  }
  if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
    return luaL_error(L, "cannot change a protected metatable");
  lua_settop(L, 2);
  lua_setmetatable(L, 1);
  return 1;
}

void lr_bounded_install(lua_State *L) {
  for (size_t i = 0; i < sizeof wrapped / sizeof *wrapped; i++) {
    lua_getglobal(L, wrapped[i].lib);
    lua_getfield(L, -1, wrapped[i].name);
    lua_pushinteger(L, (lua_Integer)i);
    lua_pushcclosure(L, bounded_call, 2);
    lua_setfield(L, -2, wrapped[i].name);
    lua_pop(L, 1);
  }
  lua_getglobal(L, "string");
  lr_pattern_install(L, -1);
  lua_pop(L, 1);
  lua_pushcfunction(L, guarded_setmetatable);
  lua_setglobal(L, "setmetatable");
}

/*
 * lua_schema.c - the fast path of schema:parse in C (core.schema_fast).
 *
 * lua/lunaroom/schema.lua checks an action's value twice at most: a fast
 * path that answers accepted (with the parsed value) or refused, then, only
 * when refused, check() for the issue list. Its fast path in Lua costs about
 * 12k instructions for a move's {x, y} of two bounded numbers: a Lua call
 * per schema node and a metatable walk for every modifier the schema does
 * not have. This is the same fast path over the same schema tables, read
 * with raw lookups: the checks of FAST in schema.lua, in the same order,
 * with the same results.
 *
 * core.schema_fast(ARRAY_MT, OBJECT_MT, NULL) returns fast(s, x) -> true,
 * out (accepted: out is what the Lua fast path returns, a fresh table for an
 * array or an object, marked with ARRAY_MT / OBJECT_MT) | false (refused)
 * | nil (left to the Lua fast path: a string with a pattern, a default to
 * copy, a schema nested deeper than MAX_DEPTH). Values are read as Lua
 * reads them (x[k] and #x through metamethods, getmetatable's __metatable);
 * work proportional to the value is charged to the running call's budget
 * (lr_vm_charge), as the Lua path's instructions would be.
 * spec/schema_spec.lua compares the three paths on random schemas and
 * values.
 *
 * Owns: nothing between calls. Must not: build issues or messages, change
 * the value it checks, or know rooms.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lua_api.h"
#include "lua_vm.h"
#include "utf8.h"

#define MAX_DEPTH 100 /* schema nesting handled here; deeper: the Lua path */
#define NODE_COST 10  /* budget per schema node and per element met */

#define UP_ARRAY_MT lua_upvalueindex(1)
#define UP_OBJECT_MT lua_upvalueindex(2)
#define UP_NULL lua_upvalueindex(3)

enum { R_FAIL, R_OK, R_PUNT };
enum { K_EMPTY, K_ARRAY, K_OBJECT };

/* The strings fast reads by: upvalues 4.. of the closure (pushing a C
 * string costs a hash-cache lookup, an upvalue a copy; a kind compares as
 * one pointer). */
enum {
  N_KIND,
  N_IS_INT,
  N_LO,
  N_HI,
  N_LEN,
  N_PAT,
  N_OPT,
  N_HAS_DEF,
  N_KEYS,
  N_FIELDS,
  N_IS_STRICT,
  N_VALUES,
  N_VALUE,
  N_ITEM,
  N_OPTIONS,
  N_METATABLE,
  N_JSONTYPE,
  N_NUMBER,
  N_STRING,
  N_OBJECT,
  N_BOOLEAN,
  N_ANY,
  N_ARRAY,
  N_ENUM,
  N_LITERAL,
  N_UNION,
  N_COUNT
};
static const char *const names[N_COUNT] = {
    "kind",    "is_int",      "lo",         "hi",        "len",    "pat",    "opt",
    "has_def", "keys",        "fields",     "is_strict", "values", "value",  "item",
    "options", "__metatable", "__jsontype", "number",    "string", "object", "boolean",
    "any",     "array",       "enum",       "literal",   "union"};
#define UP_NAME(n) lua_upvalueindex(4 + (n))

/* Push s[name] (raw: a schema's fields are its own, its metatable holds
 * methods) and return its type. */
static int field(lua_State *L, int s, int name) {
  lua_pushvalue(L, UP_NAME(name));
  return lua_rawget(L, s);
}

/* s[k] is set (truthy); nothing stays pushed. */
static bool has(lua_State *L, int s, int name) {
  field(L, s, name);
  bool b = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return b;
}

/* schema.lua's json_kind(t) for the table at t. */
static int json_kind(lua_State *L, int t) {
  if (lua_getmetatable(L, t)) { /* getmetatable(t): its __metatable when set */
    lua_pushvalue(L, UP_NAME(N_METATABLE));
    if (lua_rawget(L, -2) != LUA_TNIL)
      lua_remove(L, -2);
    else
      lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_pushvalue(L, UP_NAME(N_JSONTYPE));
      lua_rawget(L, -2);
      int kind = lua_rawequal(L, -1, UP_NAME(N_ARRAY))    ? K_ARRAY
                 : lua_rawequal(L, -1, UP_NAME(N_OBJECT)) ? K_OBJECT
                                                          : -1;
      lua_pop(L, 1);
      if (kind >= 0) {
        lua_pop(L, 1);
        return kind;
      }
    }
    lua_pop(L, 1);
  }
  lua_Integer n = 0, max = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lr_vm_charge(L, 2);
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
      lua_pop(L, 1);
      return K_OBJECT;
    }
    lua_Integer k = lua_tointeger(L, -1);
    n++;
    if (k > max) max = k;
  }
  if (n == 0) return K_EMPTY;
  return max == n ? K_ARRAY : K_OBJECT;
}

/* A table that may be checked as an array or an object: a table, not the
 * JSON null sentinel, not of the other kind. */
static bool table_of(lua_State *L, int x, int other) {
  return lua_type(L, x) == LUA_TTABLE && !lua_rawequal(L, x, UP_NULL) && json_kind(L, x) != other;
}

/* `n ~= s.len`, `n < s.lo`, `n > s.hi` for the length n: any true refuses. */
static bool length_refused(lua_State *L, int s, lua_Integer n) {
  lua_pushinteger(L, n);
  int ni = lua_gettop(L);
  bool bad =
      field(L, s, N_LEN) != LUA_TNIL && lua_toboolean(L, -1) && !lua_compare(L, ni, -1, LUA_OPEQ);
  bad = bad ||
        (field(L, s, N_LO) != LUA_TNIL && lua_toboolean(L, -1) && lua_compare(L, ni, -1, LUA_OPLT));
  bad = bad ||
        (field(L, s, N_HI) != LUA_TNIL && lua_toboolean(L, -1) && lua_compare(L, -1, ni, LUA_OPLT));
  lua_settop(L, ni - 1);
  return bad;
}

static int fast(lua_State *L, int s, int x, int depth);

/* The budget n elements take (#x may be anything a __len answers): saturated. */
static int64_t per_element(lua_Integer n) {
  if (n <= 0) return 0;
  return n > INT64_MAX / NODE_COST ? INT64_MAX : (int64_t)n * NODE_COST;
}

static int k_number(lua_State *L, int s, int x) {
  if (lua_type(L, x) != LUA_TNUMBER) return R_FAIL;
  if (!lua_isinteger(L, x) && !isfinite(lua_tonumber(L, x))) return R_FAIL;
  lua_pushvalue(L, x);
  int out = lua_gettop(L);
  if (has(L, s, N_IS_INT) && !lua_isinteger(L, out)) {
    lua_Number d = lua_tonumber(L, out);
    lua_Integer i;
    if (d != floor(d)) goto fail;
    if (lua_numbertointeger(d, &i)) { /* math.tointeger(x) or x */
      lua_pop(L, 1);
      lua_pushinteger(L, i);
    }
  }
  if (field(L, s, N_LO) != LUA_TNIL && lua_toboolean(L, -1) && lua_compare(L, out, -1, LUA_OPLT))
    goto fail1;
  lua_pop(L, 1);
  if (field(L, s, N_HI) != LUA_TNIL && lua_toboolean(L, -1) && lua_compare(L, -1, out, LUA_OPLT))
    goto fail1;
  lua_pop(L, 1);
  return R_OK;
fail1:
  lua_pop(L, 1);
fail:
  lua_pop(L, 1);
  return R_FAIL;
}

static int k_string(lua_State *L, int s, int x) {
  if (lua_type(L, x) != LUA_TSTRING) return R_FAIL;
  if (has(L, s, N_PAT)) return R_PUNT;
  if (has(L, s, N_LEN) || has(L, s, N_LO) || has(L, s, N_HI)) {
    size_t n;
    const char *p = lua_tolstring(L, x, &n);
    lr_vm_charge(L, (int64_t)(n / 8)); /* what the bounded utf8.len charges */
    lua_Integer len = (lua_Integer)n;  /* utf8.len(x) or #x */
    if (lr_utf8_valid(p, n)) {
      len = 0;
      for (size_t i = 0; i < n; i++)
        len += ((unsigned char)p[i] & 0xC0) != 0x80;
    }
    if (length_refused(L, s, len)) return R_FAIL;
  }
  lua_pushvalue(L, x);
  return R_OK;
}

/* enum (the values list) and literal (the value): x == one of them. */
static int k_enum(lua_State *L, int s, int x) {
  field(L, s, N_VALUES);
  int vals = lua_gettop(L);
  lua_Integer n = (lua_Integer)lua_rawlen(L, vals);
  lr_vm_charge(L, n);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, vals, i);
    bool eq = lua_rawequal(L, -1, x); /* strings and numbers: == is raw */
    lua_pop(L, 1);
    if (eq) {
      lua_pop(L, 1);
      lua_pushvalue(L, x);
      return R_OK;
    }
  }
  lua_pop(L, 1);
  return R_FAIL;
}

static int k_literal(lua_State *L, int s, int x) {
  field(L, s, N_VALUE);
  bool eq = lua_rawequal(L, -1, x); /* a string, number or boolean */
  lua_pop(L, 1);
  if (!eq) return R_FAIL;
  lua_pushvalue(L, x);
  return R_OK;
}

static int k_array(lua_State *L, int s, int x, int depth) {
  if (!table_of(L, x, K_OBJECT)) return R_FAIL;
  lua_Integer n = luaL_len(L, x); /* #x */
  if (length_refused(L, s, n)) return R_FAIL;
  lr_vm_charge(L, per_element(n));
  field(L, s, N_ITEM);
  int item = lua_gettop(L);
  lua_createtable(L, n > 0 && n < 1024 ? (int)n : 0, 0);
  lua_pushvalue(L, UP_ARRAY_MT);
  lua_setmetatable(L, -2);
  int out = lua_gettop(L);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, x, i); /* x[i] */
    int r = fast(L, item, lua_gettop(L), depth + 1);
    if (r != R_OK) {
      lua_settop(L, item - 1);
      return r;
    }
    lua_rawseti(L, out, i); /* out[i] = r (nil: nothing) */
    lua_pop(L, 1);
  }
  lua_remove(L, item);
  return R_OK;
}

static int k_object(lua_State *L, int s, int x, int depth) {
  if (!table_of(L, x, K_ARRAY)) return R_FAIL;
  int base = lua_gettop(L);
  field(L, s, N_KEYS);
  field(L, s, N_FIELDS);
  int keys = base + 1, fields = base + 2;
  lua_Integer n = (lua_Integer)lua_rawlen(L, keys);
  lr_vm_charge(L, per_element(n));
  lua_createtable(L, 0, n < 1024 ? (int)n : 0);
  lua_pushvalue(L, UP_OBJECT_MT);
  lua_setmetatable(L, -2);
  int out = base + 3;
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, keys, i); /* key (base + 4) */
    lua_pushvalue(L, -1);
    lua_rawget(L, fields); /* fields[key] (base + 5) */
    lua_pushvalue(L, base + 4);
    lua_gettable(L, x); /* x[key] (base + 6) */
    int r = fast(L, base + 5, base + 6, depth + 1);
    if (r != R_OK) {
      lua_settop(L, base);
      return r;
    }
    lua_pushvalue(L, base + 4);
    lua_insert(L, -2);
    lua_rawset(L, out); /* out[key] = r (nil: nothing) */
    lua_settop(L, out);
  }
  if (has(L, s, N_IS_STRICT)) {
    lua_pushnil(L);
    while (lua_next(L, x)) {
      lr_vm_charge(L, 2);
      lua_pop(L, 1);
      bool known = false;
      if (lua_type(L, -1) == LUA_TSTRING) {
        lua_pushvalue(L, -1);
        known = lua_rawget(L, fields) != LUA_TNIL;
        lua_pop(L, 1);
      }
      if (!known) {
        lua_settop(L, base);
        return R_FAIL;
      }
    }
  }
  lua_replace(L, base + 1); /* out where keys was */
  lua_settop(L, base + 1);
  return R_OK;
}

static int k_union(lua_State *L, int s, int x, int depth) {
  field(L, s, N_OPTIONS);
  int opts = lua_gettop(L);
  lua_Integer n = (lua_Integer)lua_rawlen(L, opts);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, opts, i);
    int r = fast(L, lua_gettop(L), x, depth + 1);
    if (r == R_OK) { /* [opts, option, out] */
      lua_replace(L, opts);
      lua_settop(L, opts);
      return R_OK;
    }
    lua_settop(L, opts);
    if (r == R_PUNT) break; /* a later option's answer depends on this one */
    if (i == n) {
      lua_pop(L, 1);
      return R_FAIL;
    }
  }
  lua_pop(L, 1);
  return n == 0 ? R_FAIL : R_PUNT;
}

/* schema.lua's fast(s, x) for the schema at s and the value at x: R_OK
 * with the output pushed, otherwise nothing pushed. */
static int fast(lua_State *L, int s, int x, int depth) {
  if (depth > MAX_DEPTH || lua_type(L, s) != LUA_TTABLE) return R_PUNT;
  luaL_checkstack(L, 12, "schema nesting");
  lr_vm_charge(L, NODE_COST);
  if (field(L, s, N_KIND) != LUA_TSTRING) {
    lua_pop(L, 1);
    return R_PUNT;
  }
  int k = N_NUMBER; /* the kind: the name it is (its string is one of the upvalues) */
  while (k < N_COUNT && !lua_rawequal(L, -1, UP_NAME(k)))
    k++;
  lua_pop(L, 1);
  if (lua_isnil(L, x)) {
    if (has(L, s, N_HAS_DEF)) return R_PUNT; /* a copy of the default: Lua */
    if (has(L, s, N_OPT) || k == N_ANY) {
      lua_pushnil(L);
      return R_OK;
    }
    return R_FAIL;
  }
  switch (k) {
  case N_NUMBER:
    return k_number(L, s, x);
  case N_STRING:
    return k_string(L, s, x);
  case N_OBJECT:
    return k_object(L, s, x, depth);
  case N_BOOLEAN:
    if (!lua_isboolean(L, x)) return R_FAIL;
    lua_pushvalue(L, x);
    return R_OK;
  case N_ANY:
    lua_pushvalue(L, x);
    return R_OK;
  case N_ARRAY:
    return k_array(L, s, x, depth);
  case N_ENUM:
    return k_enum(L, s, x);
  case N_LITERAL:
    return k_literal(L, s, x);
  case N_UNION:
    return k_union(L, s, x, depth);
  default:
    return R_PUNT;
  }
}

/* fast(s, x) -> true, out | false | nil (upvalues: ARRAY_MT, OBJECT_MT, NULL) */
static int l_fast(lua_State *L) {
  lua_settop(L, 2);
  int r = fast(L, 1, 2, 0);
  if (r == R_OK) {
    lua_pushboolean(L, 1);
    lua_insert(L, -2);
    return 2;
  }
  if (r == R_FAIL)
    lua_pushboolean(L, 0);
  else
    lua_pushnil(L);
  return 1;
}

/* core.schema_fast(ARRAY_MT, OBJECT_MT, NULL) -> fast */
static int l_schema_fast(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 3);
  for (int i = 0; i < N_COUNT; i++)
    lua_pushstring(L, names[i]);
  lua_pushcclosure(L, l_fast, 3 + N_COUNT);
  return 1;
}

void lr_lua_schema_register(lua_State *L) {
  lua_pushcfunction(L, l_schema_fast);
  lua_setfield(L, -2, "schema_fast");
}

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
 * core.schema_fast(ARRAY_MT, OBJECT_MT, NULL) returns fast(s, x [, owned])
 * -> true, out (accepted: out is what the Lua fast path returns, a fresh
 * table for an array or an object, marked with ARRAY_MT / OBJECT_MT; with
 * owned, for an object schema and a plain table nobody else holds, x itself
 * made into that output, see k_object) | false (refused)
 * | nil (left to the Lua fast path: a string with a pattern, a default to
 * copy, a schema nested deeper than MAX_DEPTH). Values are read as Lua
 * reads them (x[k] and #x through metamethods, getmetatable's __metatable);
 * work proportional to the value is charged to the running call's budget
 * (lr_vm_charge), as the Lua path's instructions would be.
 * spec/schema_spec.lua compares the three paths on random schemas and
 * values.
 *
 * Compiled schemas: the first check of a schema table reads its fields once
 * into a cnode (a userdata: kind, flags, bounds as C numbers, the children's
 * cnodes), kept in a weak-keyed cache (an upvalue) for as long as the schema
 * lives; later checks read the cnode, not the table. Schemas are values (every
 * modifier returns a new one), so a cnode stays true to its table. A field it
 * cannot read as FAST would (a bound that is not a number, a kind that is not
 * a string, nesting past MAX_DEPTH from the schema compiled first) makes its
 * node answer nil: the Lua fast path reads the table itself.
 *
 * Owns: the cache of cnodes. Must not: build issues or messages, change the
 * value it checks (but an owned one it accepted), or know rooms.
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
#define UP_CACHE lua_upvalueindex(4) /* schema table -> its cnode (weak keys) */

enum { R_FAIL, R_OK, R_PUNT };
enum { K_EMPTY, K_ARRAY, K_OBJECT };

/* The strings fast reads by: upvalues 5.. of the closure (an upvalue is a
 * copy, pushing a C string a hash-cache lookup). */
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
#define UP_NAME(n) lua_upvalueindex(5 + (n))
#define N_OTHER N_COUNT        /* a kind string FAST does not know */
#define N_NOKIND (N_COUNT + 1) /* no kind string, or a field it cannot read: nil */

/* A bound (lo, hi, len) as FAST compares it: set when truthy. */
typedef struct {
  bool set, isint;
  lua_Integer i;
  lua_Number d;
} cbound;

typedef struct cnode cnode;
struct cnode {
  uint8_t kind; /* N_NUMBER .. N_UNION, N_OTHER, N_NOKIND */
  bool is_int, opt, has_def, strict, pat;
  bool deep;  /* compiled past MAX_DEPTH: no children, answers nil */
  bool ready; /* compiled to the end: an error mid-compile (memory, stack)
                 leaves the cached node answering nil, not half read */
  cbound lo, hi, len;
  lua_Integer n;  /* object: keys; union: options; array: 1 (the item) */
  cnode *child[]; /* per key / option / the item; NULL: not a schema table */
};

/* The uservalue of a cnode holds what its checks push: an object's keys at
 * 1..n, the children's cnodes (anchored: child[] points into them) at
 * n+1..2n and the fields table at 2n+1; an array's item cnode at 2; a
 * union's option cnodes at n+1..2n; an enum's values table and a literal's
 * value at 1. */
#define UV_CHILD(c, i) ((c)->n + 1 + (i))

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

/* Read bound `name` of s into *b; false: truthy but not a number. */
static bool read_bound(lua_State *L, int s, int name, cbound *b) {
  field(L, s, name);
  b->set = lua_toboolean(L, -1);
  bool ok = !b->set || lua_type(L, -1) == LUA_TNUMBER;
  if (b->set && ok) {
    b->isint = lua_isinteger(L, -1);
    b->i = b->isint ? lua_tointeger(L, -1) : 0;
    b->d = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return ok;
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

/* The budget n elements take (#x may be anything a __len answers): saturated. */
static int64_t per_element(lua_Integer n) {
  if (n <= 0) return 0;
  return n > INT64_MAX / NODE_COST ? INT64_MAX : (int64_t)n * NODE_COST;
}

static int compile(lua_State *L, int s, int depth);

/* The cnode of the schema at s (compiled on first use) pushed; its
 * address, or NULL (s is not a table: nil pushed). */
static cnode *cnode_of(lua_State *L, int s, int depth) {
  if (lua_type(L, s) != LUA_TTABLE) {
    lua_pushnil(L);
    return NULL;
  }
  lua_pushvalue(L, s);
  if (lua_rawget(L, UP_CACHE) == LUA_TUSERDATA) return lua_touserdata(L, -1);
  lua_pop(L, 1);
  compile(L, s, depth);
  return lua_touserdata(L, -1);
}

/* The kind of s (its string is one of the upvalues) and the count of
 * children its node holds. */
static int kind_of(lua_State *L, int s, lua_Integer *n) {
  *n = 0;
  if (field(L, s, N_KIND) != LUA_TSTRING) {
    lua_pop(L, 1);
    return N_NOKIND;
  }
  int k = N_NUMBER;
  while (k < N_COUNT && !lua_rawequal(L, -1, UP_NAME(k)))
    k++;
  lua_pop(L, 1);
  if (k == N_OBJECT || k == N_UNION) {
    field(L, s, k == N_OBJECT ? N_KEYS : N_OPTIONS);
    if (lua_type(L, -1) == LUA_TTABLE)
      *n = (lua_Integer)lua_rawlen(L, -1);
    else
      k = N_NOKIND; /* FAST would index a non-table: its error, from Lua */
    lua_pop(L, 1);
  } else if (k == N_ARRAY) {
    *n = 1;
  }
  return k == N_COUNT ? N_OTHER : k;
}

/* Children of an object (fields[keys[i]]), an array (item) or a union
 * (options[i]): compiled, anchored in the uservalue at uv. */
static void compile_children(lua_State *L, int s, cnode *c, int uv, int depth) {
  int list = 0, fields = 0;
  if (c->kind == N_OBJECT) {
    field(L, s, N_KEYS);
    list = lua_gettop(L);
    field(L, s, N_FIELDS);
    fields = lua_gettop(L);
    lua_pushvalue(L, fields);
    lua_rawseti(L, uv, 2 * c->n + 1);
  } else if (c->kind == N_UNION) {
    field(L, s, N_OPTIONS);
    list = lua_gettop(L);
  }
  for (lua_Integer i = 0; i < c->n; i++) {
    if (c->kind == N_ARRAY) {
      field(L, s, N_ITEM);
    } else {
      lua_rawgeti(L, list, i + 1);
      if (c->kind == N_OBJECT) { /* the key, then fields[key] */
        lua_pushvalue(L, -1);
        lua_rawseti(L, uv, i + 1);
        if (lua_type(L, fields) == LUA_TTABLE) {
          lua_rawget(L, fields);
        } else { /* FAST indexes it: its error, from Lua */
          lua_pop(L, 1);
          lua_pushnil(L);
          c->kind = N_NOKIND;
        }
      }
    }
    c->child[i] = cnode_of(L, lua_gettop(L), depth + 1);
    lua_rawseti(L, uv, UV_CHILD(c, i));
    lua_pop(L, 1);
  }
  if (list) lua_settop(L, list - 1);
}

/* Compile the schema table at s: its cnode pushed, and cached. The node is
 * cached before its children are compiled: a schema that holds itself
 * gets its own node. */
static int compile(lua_State *L, int s, int depth) {
  luaL_checkstack(L, 16, "schema nesting");
  lr_vm_charge(L, NODE_COST); /* once per schema node, like a check of it */
  lua_Integer n;
  int k = kind_of(L, s, &n);
  bool deep = depth > MAX_DEPTH;
  if (deep) n = 0;
  cnode *c = lua_newuserdatauv(L, sizeof *c + (size_t)n * sizeof c->child[0], 1);
  int cu = lua_gettop(L);
  memset(c, 0, sizeof *c);
  c->kind = (uint8_t)k;
  c->n = n;
  c->deep = deep;
  lua_createtable(L, (int)(n < 512 ? 2 * n + 1 : 0), 0);
  int uv = cu + 1;
  lua_pushvalue(L, s);
  lua_pushvalue(L, cu);
  lua_rawset(L, UP_CACHE);
  c->is_int = has(L, s, N_IS_INT);
  c->opt = has(L, s, N_OPT);
  c->has_def = has(L, s, N_HAS_DEF);
  c->strict = has(L, s, N_IS_STRICT);
  c->pat = has(L, s, N_PAT);
  if (!read_bound(L, s, N_LO, &c->lo) || !read_bound(L, s, N_HI, &c->hi) ||
      !read_bound(L, s, N_LEN, &c->len))
    c->kind = N_NOKIND; /* compared as FAST would: an error, from Lua */
  if (c->kind == N_ENUM || c->kind == N_LITERAL) {
    field(L, s, c->kind == N_ENUM ? N_VALUES : N_VALUE);
    lua_rawseti(L, uv, 1);
  }
  if (!deep) compile_children(L, s, c, uv, depth);
  lua_setiuservalue(L, cu, 1);
  c->ready = true;
  return 1;
}

/* Lua's order of a (an integer, or the float d when !ai) and bound b,
 * exactly, as lua_compare would (no NaN reaches here: checked values are
 * finite, and a NaN bound is unordered: -2). */
static int cmp_int_flt(lua_Integer a, lua_Number f) {
  if (f != f) return -2;
  if (f >= 9223372036854775808.0) return -1;
  if (f < -9223372036854775808.0) return 1;
  lua_Number fl = floor(f);
  lua_Integer fi = (lua_Integer)fl;
  if (a < fi) return -1;
  if (a > fi) return 1;
  return fl == f ? 0 : -1;
}

static int cmp(bool ai, lua_Integer a, lua_Number d, const cbound *b) {
  if (ai && b->isint) return a < b->i ? -1 : a > b->i;
  if (ai) return cmp_int_flt(a, b->d);
  if (b->isint) return -cmp_int_flt(b->i, d);
  if (d < b->d) return -1;
  if (d > b->d) return 1;
  return d == b->d ? 0 : -2;
}

/* `n ~= s.len`, `n < s.lo`, `n > s.hi` for the length n: any true refuses. */
static bool length_refused(const cnode *c, lua_Integer n) {
  return (c->len.set && cmp(true, n, 0, &c->len) != 0) ||
         (c->lo.set && cmp(true, n, 0, &c->lo) == -1) ||
         (c->hi.set && cmp(true, n, 0, &c->hi) == 1);
}

static int check(lua_State *L, const cnode *c, int cu, int x, int depth);

static int k_number(lua_State *L, const cnode *c, int x) {
  if (lua_type(L, x) != LUA_TNUMBER) return R_FAIL;
  bool isint = lua_isinteger(L, x);
  lua_Integer i = isint ? lua_tointeger(L, x) : 0;
  lua_Number d = lua_tonumber(L, x);
  if (!isint && !isfinite(d)) return R_FAIL;
  if (c->is_int && !isint) {
    if (d != floor(d)) return R_FAIL;
    isint = lua_numbertointeger(d, &i); /* math.tointeger(x) or x */
  }
  if (c->lo.set && cmp(isint, i, d, &c->lo) == -1) return R_FAIL;
  if (c->hi.set && cmp(isint, i, d, &c->hi) == 1) return R_FAIL;
  if (isint)
    lua_pushinteger(L, i);
  else
    lua_pushnumber(L, d);
  return R_OK;
}

static int k_string(lua_State *L, const cnode *c, int x) {
  if (lua_type(L, x) != LUA_TSTRING) return R_FAIL;
  if (c->pat) return R_PUNT;
  if (c->len.set || c->lo.set || c->hi.set) {
    size_t n;
    const char *p = lua_tolstring(L, x, &n);
    lr_vm_charge(L, (int64_t)(n / 8)); /* what the bounded utf8.len charges */
    lua_Integer len = (lua_Integer)n;  /* utf8.len(x) or #x */
    if (lr_utf8_valid(p, n)) {
      len = 0;
      for (size_t i = 0; i < n; i++)
        len += ((unsigned char)p[i] & 0xC0) != 0x80;
    }
    if (length_refused(c, len)) return R_FAIL;
  }
  lua_pushvalue(L, x);
  return R_OK;
}

/* enum (the values list) and literal (the value): x == one of them. */
static int k_enum(lua_State *L, int cu, int x) {
  lua_getiuservalue(L, cu, 1);
  lua_rawgeti(L, -1, 1);
  int vals = lua_gettop(L);
  if (lua_type(L, vals) != LUA_TTABLE) { /* FAST indexes it: its error, from Lua */
    lua_pop(L, 2);
    return R_PUNT;
  }
  lua_Integer n = (lua_Integer)lua_rawlen(L, vals);
  lr_vm_charge(L, n);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, vals, i);
    bool eq = lua_rawequal(L, -1, x); /* strings and numbers: == is raw */
    lua_pop(L, 1);
    if (eq) {
      lua_pop(L, 2);
      lua_pushvalue(L, x);
      return R_OK;
    }
  }
  lua_pop(L, 2);
  return R_FAIL;
}

static int k_literal(lua_State *L, int cu, int x) {
  lua_getiuservalue(L, cu, 1);
  lua_rawgeti(L, -1, 1);
  bool eq = lua_rawequal(L, -1, x); /* a string, number or boolean */
  lua_pop(L, 2);
  if (!eq) return R_FAIL;
  lua_pushvalue(L, x);
  return R_OK;
}

/* Check child i of c (its cnode anchored in the uservalue at uv) against
 * the value at x: the output pushed on R_OK. */
static int check_child(lua_State *L, const cnode *c, int uv, lua_Integer i, int x, int depth) {
  const cnode *ch = c->child[i];
  if (!ch) return R_PUNT; /* not a schema table: FAST's error, from Lua */
  if (ch->kind <= N_ANY && ch->kind != N_OBJECT) return check(L, ch, 0, x, depth); /* a leaf */
  lua_rawgeti(L, uv, UV_CHILD(c, i));
  int r = check(L, ch, lua_gettop(L), x, depth);
  if (r == R_OK)
    lua_remove(L, -2);
  else
    lua_pop(L, 1);
  return r;
}

static int k_array(lua_State *L, const cnode *c, int cu, int x, int depth) {
  if (!table_of(L, x, K_OBJECT)) return R_FAIL;
  lua_Integer n = luaL_len(L, x); /* #x */
  if (length_refused(c, n)) return R_FAIL;
  lr_vm_charge(L, per_element(n));
  lua_getiuservalue(L, cu, 1);
  int uv = lua_gettop(L);
  lua_createtable(L, n > 0 && n < 1024 ? (int)n : 0, 0);
  lua_pushvalue(L, UP_ARRAY_MT);
  lua_setmetatable(L, -2);
  int out = uv + 1;
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, x, i); /* x[i] */
    int r = check_child(L, c, uv, 0, lua_gettop(L), depth + 1);
    if (r != R_OK) {
      lua_settop(L, uv - 1);
      return r;
    }
    lua_rawseti(L, out, i); /* out[i] = r (nil: nothing) */
    lua_pop(L, 1);
  }
  lua_remove(L, uv);
  return R_OK;
}

/* The keys of x that name no field (not a string, or not in fields):
 * strict (clear false), the first one refuses, false; clear, each is
 * removed from x (clearing a key is allowed mid-traversal), true. */
static bool unknown_keys(lua_State *L, int uv, lua_Integer n, int x, bool clear) {
  lua_rawgeti(L, uv, 2 * n + 1);
  int fields = lua_gettop(L);
  bool ok = true;
  lua_pushnil(L);
  while (ok && lua_next(L, x)) {
    lr_vm_charge(L, 2);
    lua_pop(L, 1);
    bool known = lua_type(L, -1) == LUA_TSTRING && lua_type(L, fields) == LUA_TTABLE;
    if (known) {
      lua_pushvalue(L, -1);
      known = lua_rawget(L, fields) != LUA_TNIL;
      lua_pop(L, 1);
    }
    if (known) continue;
    if (!clear) {
      ok = false;
    } else {
      lua_pushvalue(L, -1);
      lua_pushnil(L);
      lua_rawset(L, x);
    }
  }
  lua_settop(L, fields - 1);
  return ok;
}

/* owned: x is a table made for this call and held by nobody else (an
 * action's value off the wire): x itself becomes the output, its unknown
 * keys cleared, instead of a copy. Nothing of x changes unless it is
 * accepted: the fields' outputs wait on the stack, [key, output] pairs,
 * until every check passed. */
#define OWNED_MAX 32 /* fields checked in place at most: more take the copy */

static int k_object(lua_State *L, const cnode *c, int cu, int x, int depth, bool owned) {
  if (!table_of(L, x, K_ARRAY)) return R_FAIL;
  lua_Integer n = c->n;
  lr_vm_charge(L, per_element(n));
  if (owned) luaL_checkstack(L, 2 * OWNED_MAX + 8, "schema fields");
  lua_getiuservalue(L, cu, 1);
  int uv = lua_gettop(L), out = 0;
  if (!owned) {
    lua_createtable(L, 0, n < 1024 ? (int)n : 0);
    lua_pushvalue(L, UP_OBJECT_MT);
    lua_setmetatable(L, -2);
    out = uv + 1;
  }
  for (lua_Integer i = 0; i < n; i++) {
    lua_rawgeti(L, uv, i + 1); /* key */
    lua_pushvalue(L, -1);
    lua_gettable(L, x); /* x[key] */
    int xv = lua_gettop(L);
    int r = check_child(L, c, uv, i, xv, depth + 1);
    if (r != R_OK) {
      lua_settop(L, uv - 1);
      return r;
    }
    lua_replace(L, xv);          /* [key, output] */
    if (out) lua_rawset(L, out); /* out[key] = output (nil: nothing) */
  }
  if (c->strict && !unknown_keys(L, uv, n, x, false)) {
    lua_settop(L, uv - 1);
    return R_FAIL;
  }
  if (owned) { /* accepted: now x becomes the output */
    if (!c->strict) unknown_keys(L, uv, n, x, true);
    while (lua_gettop(L) > uv)
      lua_rawset(L, x); /* x[key] = output (nil: cleared) */
    lua_pushvalue(L, UP_OBJECT_MT);
    lua_setmetatable(L, x);
    lua_pushvalue(L, x);
  }
  lua_remove(L, uv);
  return R_OK;
}

static int k_union(lua_State *L, const cnode *c, int cu, int x, int depth) {
  lua_getiuservalue(L, cu, 1);
  int uv = lua_gettop(L);
  lua_Integer n = c->n;
  for (lua_Integer i = 0; i < n; i++) {
    int r = check_child(L, c, uv, i, x, depth + 1);
    if (r == R_OK) {
      lua_remove(L, uv);
      return R_OK;
    }
    if (r == R_PUNT) break; /* a later option's answer depends on this one */
    if (i == n - 1) {
      lua_pop(L, 1);
      return R_FAIL;
    }
  }
  lua_pop(L, 1);
  return n == 0 ? R_FAIL : R_PUNT;
}

/* schema.lua's fast(s, x) for the schema compiled in c (its userdata at cu;
 * 0 for a leaf) and the value at x: R_OK with the output pushed, otherwise
 * nothing pushed. */
static int check(lua_State *L, const cnode *c, int cu, int x, int depth) {
  if (depth > MAX_DEPTH || !c->ready || c->deep || c->kind == N_NOKIND) return R_PUNT;
  luaL_checkstack(L, 12, "schema nesting");
  lr_vm_charge(L, NODE_COST);
  if (lua_isnil(L, x)) {
    if (c->has_def) return R_PUNT; /* a copy of the default: Lua */
    if (c->opt || c->kind == N_ANY) {
      lua_pushnil(L);
      return R_OK;
    }
    return R_FAIL;
  }
  switch (c->kind) {
  case N_NUMBER:
    return k_number(L, c, x);
  case N_STRING:
    return k_string(L, c, x);
  case N_OBJECT:
    return k_object(L, c, cu, x, depth, false);
  case N_BOOLEAN:
    if (!lua_isboolean(L, x)) return R_FAIL;
    lua_pushvalue(L, x);
    return R_OK;
  case N_ANY:
    lua_pushvalue(L, x);
    return R_OK;
  case N_ARRAY:
    return k_array(L, c, cu, x, depth);
  case N_ENUM:
    return k_enum(L, cu, x);
  case N_LITERAL:
    return k_literal(L, cu, x);
  case N_UNION:
    return k_union(L, c, cu, x, depth);
  default:
    return R_PUNT;
  }
}

/* fast(s, x [, owned]) -> true, out | false | nil (upvalues: ARRAY_MT,
 * OBJECT_MT, NULL, the cache, the names). owned: x is a plain table nobody
 * else holds (an action's value): an object schema may return x itself. */
static int l_fast(lua_State *L) {
  lua_settop(L, 3);
  bool owned = lua_toboolean(L, 3);
  lua_settop(L, 2);
  cnode *c = cnode_of(L, 1, 0);
  int r;
  bool plain = false; /* a table without a metatable (what an action's value is) */
  if (owned && lua_type(L, 2) == LUA_TTABLE) {
    plain = !lua_getmetatable(L, 2);
    lua_settop(L, 3);
  }
  if (!c)
    r = R_PUNT;
  else if (plain && c->ready && c->kind == N_OBJECT && !c->deep && c->n <= OWNED_MAX) {
    lr_vm_charge(L, NODE_COST); /* check()'s charge for the node */
    r = k_object(L, c, 3, 2, 0, true);
  } else
    r = check(L, c, 3, 2, 0);
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
  lua_newtable(L); /* the cache: weak keys (a cnode lives as long as its schema) */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  for (int i = 0; i < N_COUNT; i++)
    lua_pushstring(L, names[i]);
  lua_pushcclosure(L, l_fast, 4 + N_COUNT);
  return 1;
}

void lr_lua_schema_register(lua_State *L) {
  lua_pushcfunction(L, l_schema_fast);
  lua_setfield(L, -2, "schema_fast");
}

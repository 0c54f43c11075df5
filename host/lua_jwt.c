/*
 * lua_jwt.c - the Lua module "lunaroom.jwt" (package.preload, lua_vm.c),
 * reachable by room scripts as lr.jwt:
 *
 *   jwt.verify(token [, secret [, {requireExp = true}]]) -> claims | nil, reason
 *   jwt.sign(claims, secret [, {expiresIn = seconds | "10m" | false}]) -> token
 *   jwt.bearer(ctxOrReq) -> token | nil
 *
 * Owns: the Lua face of lr_jwt.h, reading AUTH_JWT_SECRET and
 * AUTH_JWT_REQUIRE_EXP ("1": refuse tokens without exp; `serve
 * --jwt-require-exp` sets it) at call time, the
 * read-only module object (a userdata: rawset cannot change it), and the test-only
 * "lunaroom.jwt_testing" module (setenv) that room scripts cannot reach. Must not: log or return
 * the secret; keep state between calls; verify tokens itself (jwt.c decides).
 *
 * Errors: bad arguments and a missing secret raise Lua errors (a deployment
 * mistake must not look like a refused token); a refused token returns nil
 * and the reason string of lr_jwt.h ("expired", "bad signature", ...).
 * C allocations that are alive while Lua may raise (memory errors) are
 * handed to Lua inside a protected call, so nothing leaks.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include "buf.h"
#include "engine.h"
#include "lua_api.h"
#include "json.h"
#include "lr_jwt.h"

#define SECRET_ENV "AUTH_JWT_SECRET"

int luaopen_lunaroom_jwt(lua_State *L);

/* The secret argument at idx, or AUTH_JWT_SECRET when it is none/nil.
 * Raises when neither gives a non-empty string. [-0,+0] */
static const char *get_secret(lua_State *L, int idx, const char *fn, size_t *len) {
  if (lua_isnoneornil(L, idx)) {
    const char *e = getenv(SECRET_ENV);
    if (!e || !*e)
      luaL_error(L,
                 "lr.jwt.%s: " SECRET_ENV " is not set (set the environment variable, or "
                 "pass the secret)",
                 fn);
    *len = strlen(e);
    return e;
  }
  if (lua_type(L, idx) != LUA_TSTRING) luaL_typeerror(L, idx, "string (the secret)");
  const char *s = lua_tolstring(L, idx, len);
  if (*len == 0) luaL_argerror(L, idx, "the secret is empty");
  return s;
}

/* Protected push of a claims tree: the caller releases the tree either way. */
static int push_claims_unprotected(lua_State *L) {
  lr_lua_push_copy(L, lua_touserdata(L, 1));
  return 1;
}

/* Whether tokens without exp are refused: opts.requireExp when given, else
 * the process setting AUTH_JWT_REQUIRE_EXP=1|true. */
static unsigned verify_flags(lua_State *L, int opts) {
  if (lua_istable(L, opts)) {
    int t = lua_getfield(L, opts, "requireExp");
    int on = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (t != LUA_TNIL) return on ? LR_JWT_REQUIRE_EXP : 0;
  } else if (!lua_isnoneornil(L, opts)) {
    luaL_typeerror(L, opts, "table ({requireExp = true})");
  }
  const char *e = getenv("AUTH_JWT_REQUIRE_EXP");
  return e && (!strcmp(e, "1") || !strcasecmp(e, "true")) ? LR_JWT_REQUIRE_EXP : 0;
}

/* jwt.verify(token [, secret [, opts]]) -> claims | nil, reason */
static int l_verify(lua_State *L) {
  size_t slen, tlen = 0;
  const char *secret = get_secret(L, 2, "verify", &slen);
  unsigned flags = verify_flags(L, 3);
  const char *token = NULL;
  int t = lua_type(L, 1);
  if (t == LUA_TSTRING)
    token = lua_tolstring(L, 1, &tlen);
  else if (t != LUA_TNIL && t != LUA_TNONE) {
    lua_pushnil(L);
    lua_pushstring(L, lr_jwt_reason(LR_JWT_MALFORMED));
    return 2;
  }
  lr_node *claims = NULL;
  lr_jwt_status st =
      lr_jwt_verify_flags(token, tlen, secret, slen, (int64_t)time(NULL), flags, NULL, &claims);
  if (st != LR_JWT_OK) {
    lua_pushnil(L);
    lua_pushstring(L, lr_jwt_reason(st));
    return 2;
  }
  lua_pushcfunction(L, push_claims_unprotected);
  lua_pushlightuserdata(L, claims);
  int rc = lua_pcall(L, 1, 1, 0);
  lr_node_release(claims);
  if (rc != LUA_OK) return lua_error(L);
  return 1;
}

/* expiresIn: a number of seconds, or "<digits>[smhd]" (as the reference's
 * JWTAuth.sign). Returns 0 and *secs, or -1. */
static int parse_expires(lua_State *L, int idx, int64_t *secs) {
  if (lua_isinteger(L, idx)) {
    *secs = (int64_t)lua_tointeger(L, idx);
    return 0;
  }
  if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_Number n = lua_tonumber(L, idx);
    if (!(n > -1e15 && n < 1e15)) return -1;
    *secs = (int64_t)n;
    return 0;
  }
  if (lua_type(L, idx) != LUA_TSTRING) return -1;
  size_t n;
  const char *s = lua_tolstring(L, idx, &n);
  if (n < 2 || n > 12) return -1;
  int64_t v = 0;
  for (size_t i = 0; i + 1 < n; i++) {
    if (!isdigit((unsigned char)s[i])) return -1;
    v = v * 10 + (s[i] - '0');
  }
  switch (s[n - 1]) {
  case 's':
    break;
  case 'm':
    v *= 60;
    break;
  case 'h':
    v *= 3600;
    break;
  case 'd':
    v *= 86400;
    break;
  default:
    return -1;
  }
  *secs = v;
  return 0;
}

/* |expiresIn| beyond this (about 3000 years) is refused: no overflow. */
#define MAX_EXPIRES 100000000000LL

/* Protected part of sign: build the claims JSON text into the lr_buf at
 * upvalue-free argument 1 from the table at 2, adding iat/exp. Raises with
 * a message on a bad claims table. */
typedef struct sign_job {
  lr_buf json;
  int64_t now, expires;
  int with_exp;
} sign_job;

static int build_claims(lua_State *L) {
  sign_job *job = lua_touserdata(L, 1);
  char err[300];
  lr_node *n = lr_lua_to_node(L, 2, "claims", err, sizeof err);
  if (!n) return luaL_error(L, "lr.jwt.sign: %s", err);
  if (n->type != LR_OBJECT) {
    lr_node_release(n);
    return luaL_error(L, "lr.jwt.sign: the claims must be a table with string keys");
  }
  /* As JWTAuth.sign: {...claims, iat, exp}. */
  lr_obj_put(n, "iat", 3, lr_node_int(job->now));
  if (job->with_exp) lr_obj_put(n, "exp", 3, lr_node_int(job->now + job->expires));
  lr_json_encode(n, 0, &job->json);
  lr_node_release(n);
  return 0;
}

static int push_token_unprotected(lua_State *L) {
  lua_pushstring(L, lua_touserdata(L, 1));
  return 1;
}

/* jwt.sign(claims, secret [, opts]) -> token. The secret is never taken
 * from the environment: a room script must not be able to mint tokens that
 * AUTH_JWT_SECRET verifies. */
static int l_sign(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  size_t slen;
  if (lua_isnoneornil(L, 2)) luaL_argerror(L, 2, "the secret is required");
  const char *secret = get_secret(L, 2, "sign", &slen);
  sign_job job = {.now = (int64_t)time(NULL), .expires = 3600, .with_exp = 1};
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_getfield(L, 3, "expiresIn");
    if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1))
      job.with_exp = 0;
    else if (!lua_isnil(L, -1) && (parse_expires(L, -1, &job.expires) != 0 ||
                                   job.expires > MAX_EXPIRES || job.expires < -MAX_EXPIRES))
      return luaL_error(L, "lr.jwt.sign: expiresIn must be a number of seconds, a string like "
                           "\"30m\" (s, m, h, d), or false");
    lua_pop(L, 1);
  }
  lr_buf_init(&job.json);
  lua_pushcfunction(L, build_claims);
  lua_pushlightuserdata(L, &job);
  lua_pushvalue(L, 1);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    lr_buf_free(&job.json);
    return lua_error(L);
  }
  char err[128];
  char *token = lr_jwt_sign(lr_buf_cstr(&job.json), secret, slen, err, sizeof err);
  lr_buf_free(&job.json);
  if (!token) return luaL_error(L, "lr.jwt.sign: %s", err);
  lua_pushcfunction(L, push_token_unprotected);
  lua_pushlightuserdata(L, token);
  int rc = lua_pcall(L, 1, 1, 0);
  free(token);
  if (rc != LUA_OK) return lua_error(L);
  return 1;
}

/* ---- bearer ---- */

static int is_space(char c) {
  return c == ' ' || c == '\t';
}

/* Push the token of an Authorization header value: "Bearer <t>" (scheme
 * case-insensitive) gives t, anything else the whole trimmed value. Returns
 * 1 if something was pushed. */
static int push_from_authorization(lua_State *L, const char *v, size_t n) {
  while (n && is_space(*v))
    v++, n--;
  while (n && is_space(v[n - 1]))
    n--;
  if (n >= 6 && strncasecmp(v, "bearer", 6) == 0 && (n == 6 || is_space(v[6]))) {
    size_t i = 6;
    while (i < n && is_space(v[i]))
      i++;
    size_t j = i;
    while (j < n && !is_space(v[j]))
      j++;
    if (j == i) return 0;
    lua_pushlstring(L, v + i, j - i);
    return 1;
  }
  if (n == 0) return 0;
  lua_pushlstring(L, v, n);
  return 1;
}

/* Push the decoded value of parameter name in the raw query string q, if it
 * is there and not empty. Returns 1 if pushed. */
static int push_from_raw_query(lua_State *L, const char *q, size_t n, const char *name) {
  size_t i = 0;
  while (i < n) {
    size_t end = i;
    while (end < n && q[end] != '&')
      end++;
    size_t eq = i;
    while (eq < end && q[eq] != '=')
      eq++;
    lr_lua_push_urldecoded(L, q + i, eq - i);
    int match = strcmp(lua_tostring(L, -1), name) == 0;
    lua_pop(L, 1);
    if (match && eq < end && end - eq > 1) {
      lr_lua_push_urldecoded(L, q + eq + 1, end - eq - 1);
      return 1;
    }
    i = end + 1;
  }
  return 0;
}

static const char *const query_names[] = {"token", "world-auth-token"};

/* jwt.bearer(ctxOrReq) -> token | nil: from `Authorization: Bearer t`, else
 * a raw Authorization value, else the `token` or `world-auth-token` query
 * parameter (query as a table, or the raw query string). Accepts a connect
 * context ({request = {headers, query}}) or a request ({headers, query}). */
static int l_bearer(lua_State *L) {
  if (!lua_istable(L, 1)) {
    lua_pushnil(L);
    return 1;
  }
  lua_settop(L, 1);
  lua_getfield(L, 1, "request"); /* 2 */
  int req = lua_istable(L, 2) ? 2 : 1;
  lua_getfield(L, req, "headers"); /* 3 */
  if (lua_istable(L, 3)) {
    lua_getfield(L, 3, "authorization"); /* 4 */
    size_t n;
    const char *v = lua_type(L, 4) == LUA_TSTRING ? lua_tolstring(L, 4, &n) : NULL;
    if (v && push_from_authorization(L, v, n)) return 1;
    lua_settop(L, 3);
  }
  lua_getfield(L, req, "query"); /* 4 */
  for (size_t k = 0; k < sizeof query_names / sizeof *query_names; k++) {
    if (lua_istable(L, 4)) {
      lua_getfield(L, 4, query_names[k]);
      if (lua_type(L, -1) == LUA_TSTRING && lua_rawlen(L, -1) > 0) return 1;
      lua_pop(L, 1);
    } else if (lua_type(L, 4) == LUA_TSTRING) {
      size_t n;
      const char *q = lua_tolstring(L, 4, &n);
      if (push_from_raw_query(L, q, n, query_names[k])) return 1;
    }
  }
  lua_pushnil(L);
  return 1;
}

/* ---- module ---- */

static int ro_newindex(lua_State *L) {
  return luaL_error(L, "lr.jwt is read-only (cannot set %s)", luaL_tolstring(L, 2, NULL));
}

/* The state is the userdata itself: the function table behind it is never
 * handed out (room code could write into it). */
static int ro_next(lua_State *L) {
  luaL_checktype(L, 1, LUA_TUSERDATA);
  lua_settop(L, 2);
  if (!lua_getmetatable(L, 1)) return 0; /* the C API ignores __metatable */
  lua_getfield(L, -1, "__index");
  lua_pushvalue(L, 2);
  if (lua_next(L, -2)) return 2;
  lua_pushnil(L);
  return 1;
}

/* pairs(lr.jwt) lists the functions. */
static int ro_pairs(lua_State *L) {
  lua_pushcfunction(L, ro_next);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

/* lunaroom.jwt_testing.setenv(name, value|nil): for specs only (the room
 * sandbox cannot require this module). */
static int l_setenv(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  if (lua_isnoneornil(L, 2))
    unsetenv(name);
  else
    setenv(name, luaL_checkstring(L, 2), 1);
  return 0;
}

static int luaopen_lunaroom_jwt_testing(lua_State *L) {
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, l_setenv);
  lua_setfield(L, -2, "setenv");
  return 1;
}

static const luaL_Reg jwt_fns[] = {
    {"verify", l_verify},
    {"sign", l_sign},
    {"bearer", l_bearer},
    {NULL, NULL},
};

/* require "lunaroom.jwt": the functions behind a userdata (room scripts
 * share it through lr.jwt, so none of them may replace verify; a table proxy
 * would still take rawset, which the sandbox allows). Also makes
 * "lunaroom.jwt_testing" requirable by specs. [-0,+1] */
int luaopen_lunaroom_jwt(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_lunaroom_jwt_testing);
  lua_setfield(L, -2, "lunaroom.jwt_testing");
  lua_pop(L, 1);

  lua_newuserdatauv(L, 0, 0);
  lua_createtable(L, 0, 5);
  luaL_newlib(L, jwt_fns);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, ro_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pushcfunction(L, ro_pairs);
  lua_setfield(L, -2, "__pairs");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pushstring(L, "lunaroom.jwt");
  lua_setfield(L, -2, "__name");
  lua_setmetatable(L, -2);
  return 1;
}

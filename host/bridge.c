/*
 * bridge.c - the room rules over the Lua runtime (runtime.lua): the one
 * implementation of rules.h the server uses.
 *
 * Owns: the calls from the engine into runtime.lua (lr_bridge_rules); the
 * references to the runtime's hot functions (resolved once when
 * core.set_runtime runs, not looked up by name per call); the policy around
 * every such call: handler metrics (calls, seconds, histogram) and, after a
 * failed call, clearing the dirty marks the rollback left (a failed handler
 * sends and writes nothing); the Lua values the engine hands to the rules
 * (requests, packets, conn tables) and reading their answers (HTTP response
 * tables, rejections, interceptor output); the same call helper for a
 * feature's own calls into Lua (rules->call: the Lua storage backends, the
 * Lua callbacks of HTTP answers) and for the rules-side code with its own
 * call info (lr_bridge_pcall: reload's steps, a deferred HTTP answer); the
 * room policy around a call (lr_call_guard, also around wait_c.resume).
 * Must not: schedule flushes or send packets itself (the engine does, after
 * each call), know transports or features, or implement room rules.
 */
#include "bridge.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>

#include "log.h"
#include "lua_api.h"
#include "lua_vm.h"

_Static_assert(LR_NOREF == LUA_NOREF, "rules.h's LR_NOREF is Lua's LUA_NOREF");

#define respond_table lr_respond_table

/* The runtime's functions the engine calls for every connection or packet,
 * referenced once (lr_bridge_bind). The others (room lifecycle, routing,
 * operations) are looked up by name when called: they are rare, and specs
 * replace some of them (runtime.wake) to simulate failures. */
enum { F_CONNECT, F_MESSAGE, F_CLOSE, F_INTERCEPT, F_REQUEST, F_N };
static const char *const hot_names[F_N] = {"connect", "message", "close", "intercept", "request"};
static int hot_refs[F_N] = {LUA_NOREF, LUA_NOREF, LUA_NOREF, LUA_NOREF, LUA_NOREF};
static lua_State *hot_L;

void lr_bridge_bind(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  for (int i = 0; i < F_N; i++) {
    if (hot_L && hot_refs[i] != LUA_NOREF) lr_ref_release(hot_L, hot_refs[i]);
    lua_getfield(L, idx, hot_names[i]);
    hot_refs[i] = lr_ref_take(L);
  }
  hot_L = L;
}

static void push_fn(lua_State *L, int hot, const char *name) {
  if (hot >= 0 && hot_L == L && hot_refs[hot] != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, hot_refs[hot]);
    return;
  }
  lua_getfield(L, LUA_REGISTRYINDEX, "lunaroom.runtime");
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
}

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void lr_call_guard_begin(lr_call_guard *g, lr_room *r) {
  g->r = r;
  for (int ch = 0; ch < LR_NCH; ch++)
    g->was_dirty[ch] = r && lr_state_dirty(r->root, ch);
  if (r) lr_room_retain(r);
}

void lr_call_guard_end(lr_call_guard *g, bool failed) {
  lr_room *r = g->r;
  if (!r) return;
  /* The failed call was rolled back. If nothing was pending before it, the
   * marks the rollback left describe no change: drop them, so a failed
   * handler sends nothing and writes nothing. */
  if (failed && !r->disposed)
    for (int ch = 0; ch < LR_NCH; ch++)
      if (!g->was_dirty[ch]) lr_state_clear_dirty(r->root, ch);
  lr_room_release(r);
  g->r = NULL;
}

int lr_bridge_pcall(lr_server *s, lua_State *L, lr_room *r, lr_callinfo *ci, int nargs, int nres) {
  lr_call_guard g;
  lr_call_guard_begin(&g, r);
  double t0 = mono_s();
  int rc = lr_vm_pcall(L, nargs, nres, ci);
  double dt = mono_s() - t0;
  s->stats.calls++;
  s->stats.call_seconds += dt;
  int b = 0;
  while (b < LR_HIST_N - 1 && dt > lr_hist_bounds[b])
    b++;
  s->stats.hist[b]++;
  lr_call_guard_end(&g, rc != 0);
  return rc;
}

/* lr_bridge_pcall for room r (NULL: none) with the room's budget and memory
 * cap; on failure the message (or the budget's) in err when given.
 * [-(nargs+1), +nres|0] */
static int call(lr_server *s, lr_room *r, const char *what, int nargs, int nres, char *err,
                size_t errlen) {
  lr_callinfo ci = {.room = r ? r->key : NULL,
                    .what = what,
                    .budget = r ? r->budget : 0,
                    .memory = r ? r->memory : 0};
  int rc = lr_bridge_pcall(s, s->L, r, &ci, nargs, nres);
  if (rc && err)
    snprintf(err, errlen, "%s", ci.budget_hit ? "instruction budget exceeded" : ci.err);
  return rc;
}

/* runtime[name](srv, args...) with the nargs arguments already pushed. */
static int runtime_call(lr_server *s, lr_room *r, int hot, const char *name, const char *what,
                        int nargs, int nres, char *err, size_t errlen) {
  lua_State *L = s->L;
  push_fn(L, hot, name);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref);
  lua_rotate(L, -(nargs + 2), 2); /* fn, srv, args... */
  return call(s, r, what, nargs + 1, nres, err, errlen);
}

/* Push the request as a Lua table {method, path, query, headers, body, ip};
 * lean (a join that builds no connect context: runtime.connect reads the
 * query and the address only): {query, ip}, a smaller table, no headers. */
static void push_request(lua_State *L, const lr_request *req, bool lean) {
  lua_createtable(L, 0, lean ? 2 : 8);
  if (!lean) {
    lua_pushstring(L, req->method ? req->method : "GET");
    lua_setfield(L, -2, "method");
    lua_pushstring(L, req->path ? req->path : "/");
    lua_setfield(L, -2, "path");
  }
  lua_pushstring(L, req->query ? req->query : "");
  lua_setfield(L, -2, "query");
  if (!lean) {
    lua_createtable(L, 0, (int)req->nheaders);
    for (size_t i = 0; i < req->nheaders; i++) {
      lua_pushstring(L, req->headers[i].value ? req->headers[i].value : "");
      lua_setfield(L, -2, req->headers[i].name);
    }
    lua_setfield(L, -2, "headers");
  }
  if (req->body) {
    lua_pushlstring(L, req->body, req->bodylen);
    lua_setfield(L, -2, "body");
  }
  lua_pushstring(L, req->remote_addr ? req->remote_addr : "");
  lua_setfield(L, -2, "ip");
}

/* Answer with the response table on top of the stack:
 * {status=, headers={{name,value},...}, body=string}. [-0,+0] */
void lr_respond_table(lua_State *L, lr_response_cb done, void *ud) {
  lua_getfield(L, -1, "status");
  int status = (int)luaL_optinteger(L, -1, 200);
  lua_pop(L, 1);
  lua_getfield(L, -1, "body");
  size_t blen = 0;
  const char *body = lua_tolstring(L, -1, &blen);
  lua_getfield(L, -2, "headers");
  size_t nh = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
  lr_header *h = lr_xcalloc(nh + 1, sizeof *h);
  size_t k = 0;
  for (size_t i = 1; i <= nh; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING)
      h[k++] = (lr_header){lua_tostring(L, -2), lua_tostring(L, -1)};
    lua_pop(L, 3); /* the strings stay alive: the header table holds them */
  }
  lr_response resp = {status, h, k, body ? body : "", body ? blen : 0};
  done(ud, &resp);
  free(h);
  lua_pop(L, 2);
}

/* ------------------------------------------------------------ rooms */

static bool b_serves(lr_server *s, const char *ns, const char *id) {
  lua_State *L = s->L;
  int top = lua_gettop(L);
  lua_pushstring(L, ns);
  lua_pushstring(L, id);
  bool ok =
      runtime_call(s, NULL, -1, "has_room", "route", 2, 1, NULL, 0) == 0 && lua_toboolean(L, -1);
  lua_settop(L, top);
  return ok;
}

static char *b_dev_failed(lr_server *s, const char *ns, const char *id) {
  lua_State *L = s->L;
  int top = lua_gettop(L);
  lua_pushstring(L, ns);
  lua_pushstring(L, id);
  char *pkt = NULL;
  if (runtime_call(s, NULL, -1, "dev_failed", "route", 2, 1, NULL, 0) == 0 &&
      lua_type(L, -1) == LUA_TSTRING) {
    size_t n;
    const char *p = lua_tolstring(L, -1, &n);
    pkt = lr_xstrndup(p, n);
  }
  lua_settop(L, top);
  return pkt;
}

static int b_preroute(lr_server *s, const char *ns, const char *id, const lr_request *req,
                      const char *rest, lr_response_cb done, void *ud) {
  lua_State *L = s->L;
  int top = lua_gettop(L);
  lua_pushstring(L, ns);
  lua_pushstring(L, id);
  push_request(L, req, false);
  lua_pushstring(L, *rest ? rest : "/");
  int rc = 0;
  if (runtime_call(s, NULL, -1, "preroute", "route", 4, 1, NULL, 0) == 0) {
    if (lua_istable(L, -1)) {
      respond_table(L, done, ud);
      rc = 1;
    } else if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
      rc = -1;
    }
  }
  lua_settop(L, top);
  return rc;
}

/* runtime[fn](ns, id): 0, or -1 (logged; err filled when given). */
static int call_ns_id(lr_server *s, const char *fn, const char *what, const char *ns,
                      const char *id, char *err, size_t errlen) {
  lua_State *L = s->L;
  int top = lua_gettop(L);
  lua_pushstring(L, ns);
  lua_pushstring(L, id);
  int rc = runtime_call(s, NULL, -1, fn, what, 2, 0, err, errlen);
  lua_settop(L, top);
  return rc ? -1 : 0;
}

static int b_create(lr_server *s, const char *ns, const char *id, char *err, size_t errlen) {
  return call_ns_id(s, "create_room", "create room", ns, id, err, errlen);
}

static int b_wake(lr_room *r) {
  return call_ns_id(r->srv, "wake", "wake", r->ns, r->id, NULL, 0);
}

static void b_hibernate(lr_room *r) {
  lr_server *s = r->srv;
  lua_State *L = s->L;
  int top = lua_gettop(L);
  lua_pushstring(L, r->key);
  runtime_call(s, NULL, -1, "hibernate_room", "hibernate", 1, 0, NULL, 0);
  lua_settop(L, top);
}

static void b_forget(lr_room *r) {
  lr_server *s = r->srv;
  if (s->ref == LUA_NOREF) return;
  lua_State *L = s->L;
  int top = lua_gettop(L);
  lua_pushstring(L, r->key);
  runtime_call(s, NULL, -1, "forget_room", "dispose", 1, 0, NULL, 0);
  lua_settop(L, top);
}

/* ------------------------------------------------------------ connections */

static void b_attach(lr_conn *c) {
  lr_lua_new_conn(c->srv->L, c, NULL);
}

static int b_connect(lr_conn *c, const lr_request *req, char *err, size_t errlen) {
  lr_room *r = c->room;
  lr_server *s = r->srv;
  lua_State *L = s->L;
  int top = lua_gettop(L);
  lr_lua_new_conn(L, c, NULL);
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
  lr_lua_push_conn(L, c);
  lr_request full; /* headers on demand: only a room that reads them loads them */
  push_request(L, r->lean_connect ? req : lr_request_full(req, &full), r->lean_connect);
  int rc = runtime_call(s, r, F_CONNECT, "connect", "connect", 3, 0, err, errlen);
  lua_settop(L, top);
  return rc ? -1 : 0;
}

static int b_message(lr_conn *c, const char *action, size_t alen, const lr_node *value,
                     lr_reject_cb reject, char *err, size_t errlen) {
  lr_server *s = c->srv;
  lr_room *r = c->room;
  lua_State *L = s->L;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
  lr_lua_push_conn(L, c);
  lua_pushlstring(L, action, alen);
  if (value)
    lr_lua_push_copy(L, value);
  else
    lua_pushnil(L);
  char what[160]; /* "action %.120s", without snprintf's cost on every action */
  size_t wl = strnlen(action, 120);
  memcpy(what, "action ", 7);
  memcpy(what + 7, action, wl);
  what[7 + wl] = '\0';
  int rc = 0;
  if (runtime_call(s, r, F_MESSAGE, "message", what, 4, 2, err, errlen) != 0) {
    rc = -1;
  } else if (lua_type(L, -2) == LUA_TSTRING) {
    const char *code = lua_tostring(L, -2);
    const char *msg = lua_tostring(L, -1);
    lr_info("conn %s room %s: action %s rejected (%s: %s)", c->id, r->key, action, code,
            msg ? msg : "");
    reject(c, code, action, msg ? msg : code);
    rc = 1;
  }
  lua_settop(L, top);
  return rc;
}

static void b_close(lr_conn *c) {
  lr_server *s = c->srv;
  lr_room *r = c->room;
  lua_State *L = s->L;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
  lr_lua_push_conn(L, c);
  runtime_call(s, r, F_CLOSE, "close", "close", 2, 0, NULL, 0);
  lua_settop(L, top);
}

static lr_msg *b_intercept(lr_conn *c, lr_msg *m) {
  lr_room *r = c->room;
  lua_State *L = c->srv->L;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
  lr_lua_push_conn(L, c);
  lua_pushlstring(L, lr_msg_payload(m), m->len);
  char err[256];
  lr_msg *out = NULL;
  if (runtime_call(c->srv, r, F_INTERCEPT, "intercept", "interceptorPacket", 3, 1, err,
                   sizeof err) == 0 &&
      lua_type(L, -1) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    out = n == m->len && memcmp(s, lr_msg_payload(m), n) == 0 ? lr_msg_retain(m) : lr_msg_new(s, n);
  } /* else a failing interceptor drops the packet (logged) */
  lua_settop(L, top);
  return out;
}

static const char *b_public_id(lr_conn *c, char *buf, size_t n) {
  lua_State *L = c->srv->L;
  lr_lua_push_conn(L, c);
  const char *res = NULL;
  if (lua_istable(L, -1)) { /* conn.state, or _pid until it is made (runtime.lua) */
    lua_pushliteral(L, "state");
    if (lua_rawget(L, -2) == LUA_TTABLE)
      lua_getfield(L, -1, "publicId");
    else {
      lua_pushliteral(L, "_pid");
      lua_rawget(L, -3);
    }
    if (lua_type(L, -1) == LUA_TSTRING && n > 0) { /* snprintf "%s" without its cost */
      size_t l;
      const char *p = lua_tolstring(L, -1, &l);
      l = strnlen(p, l < n - 1 ? l : n - 1);
      memcpy(buf, p, l);
      buf[l] = '\0';
      res = buf;
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  return res;
}

/* ------------------------------------------------------------ HTTP */

static int b_request(lr_room *r, const lr_request *req, const char *rest, lr_settle_cb settle,
                     lr_response_cb done, void *ud) {
  lr_server *s = r->srv;
  lua_State *L = s->L;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->ref);
  push_request(L, req, false);
  lua_pushstring(L, *rest ? rest : "/"); /* routed path, leading '/' */
  char err[256];
  int rc = -1;
  if (runtime_call(s, r, F_REQUEST, "request", "request", 3, 1, err, sizeof err) == 0 &&
      lua_istable(L, -1)) {
    if (lr_wait_http_defer(s, r, L, done, ud)) {
      /* a guard or the route waits: answered when it finished (lua_wait.c) */
    } else if (!settle(r, done, ud)) {
      respond_table(L, done, ud);
    }
    rc = 1;
  }
  lua_settop(L, top);
  return rc;
}

static int b_operations(lr_server *s, const lr_request *req, lr_response_cb done, void *ud) {
  lua_State *L = s->L;
  int top = lua_gettop(L);
  push_request(L, req, false);
  char err[256];
  int rc = -1;
  if (runtime_call(s, NULL, -1, "operations", "operations", 1, 1, err, sizeof err) == 0 &&
      lua_istable(L, -1)) {
    if (!lr_wait_http_defer(s, NULL, L, done, ud)) /* answered later: GET /admin/cluster */
      respond_table(L, done, ud);
    rc = 1;
  }
  lua_settop(L, top);
  return rc;
}

/* ------------------------------------------------------------ timers, loop */

static void b_timer(lr_server *s, lr_room *r, int ref) {
  lua_State *L = s->L;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  call(s, r, "timer", 0, 0, NULL, 0);
  lua_settop(L, top);
}

static void (*tick_hook)(lr_server *s);

void lr_bridge_set_tick(void (*fn)(lr_server *s)) {
  tick_hook = fn;
}

static void b_tick(lr_server *s) {
  if (tick_hook) tick_hook(s); /* hot reload: read the watcher, reload after the debounce */
}

/* A join burst leaves its Lua garbage (handshake tables, query strings,
 * snapshot pieces) uncollected until the incremental collector's next cycle,
 * which may never come on an idle server: finish a cycle now, while nothing
 * is happening. Bounded: a full collection of a heap past LR_QUIET_GC_MAX
 * would stall the loop, so larger heaps are left to the incremental GC. */
#define LR_QUIET_GC_MAX ((size_t)16 << 20) /* about 10 ms of collection */
static void b_quiet(lr_server *s) {
  if (lr_vm_memory(s->L) <= LR_QUIET_GC_MAX) lua_gc(s->L, LUA_GCCOLLECT);
}

static void b_unref(lua_State *L, int ref) {
  if (L) lr_ref_release(L, ref); /* ignores LR_NOREF and 0 */
}

static const char *b_env(lr_server *s, const char *name, char *buf, size_t n) {
  lua_State *L = s->L;
  int top = lua_gettop(L);
  buf[0] = 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref);
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "env");
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, name);
      if (lua_type(L, -1) == LUA_TSTRING) snprintf(buf, n, "%s", lua_tostring(L, -1));
    }
  }
  lua_settop(L, top);
  return buf;
}

static int b_call(lr_server *s, const char *what, int nargs, int nres, char *err, size_t errlen) {
  return call(s, NULL, what, nargs, nres, err, errlen);
}

const lr_rules_vt lr_bridge_rules = {
    .serves = b_serves,
    .preroute = b_preroute,
    .dev_failed = b_dev_failed,
    .create = b_create,
    .wake = b_wake,
    .hibernate = b_hibernate,
    .forget = b_forget,
    .attach = b_attach,
    .connect = b_connect,
    .message = b_message,
    .close = b_close,
    .intercept = b_intercept,
    .public_id = b_public_id,
    .request = b_request,
    .operations = b_operations,
    .timer = b_timer,
    .tick = b_tick,
    .quiet = b_quiet,
    .unref = b_unref,
    .env = b_env,
    .call = b_call,
};

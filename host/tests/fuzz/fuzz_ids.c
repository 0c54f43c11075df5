/*
 * fuzz_ids.c - libFuzzer target: the id handling every WebSocket upgrade
 * runs before any guard, with a time bound, so that a superlinear path (the
 * old "^%s*(.-)%s*$" trim took ~0.3 s for 8 KB) is a finding, not just a
 * slow input. Also the id generator's contract.
 *
 * Each input (up to -max_len bytes, NUL bytes end strings as in a C
 * transport) is used as:
 *   1. the raw query of an upgrade to main/fz-ids, and as the value of
 *      ?id=, ?_pk= and ?transferToken= (runtime.lua: parse_query, urldecode,
 *      the length bound, the trim, session lookup): an upgrade must finish
 *      within IDS_BUDGET_MS; a decoded id over 256 bytes must be refused
 *      with 4008, a shorter one must not be;
 *   2. the argument of runtime.parse_query and runtime.trim called directly
 *      (through lr_vm_pcall), also within IDS_BUDGET_MS, and trim's result
 *      must have no whitespace at either end; parse_query (core.parse_query,
 *      C) must give the table its Lua reference runtime.parse_query_lua does;
 *   3. an alphabet (its distinct bytes) for lr_rand_id from the CSPRNG and
 *      from the test generator: every character drawn is in the alphabet.
 * Must not: keep state across inputs (a new server per input).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include "fuzz_server.h"
#include "lua_vm.h"
#include "rand.h"

/* Generous: linear work on 16 KB takes well under 5 ms even with ASan; the
 * quadratic trim took seconds. */
#define IDS_BUDGET_MS 250.0

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void over(const char *what, double ms) {
  if (ms > IDS_BUDGET_MS) {
    fprintf(stderr, "fuzz_ids: %s took %.1f ms (budget %.0f ms)\n", what, ms, IDS_BUDGET_MS);
    abort();
  }
}

/* Percent-decoded length of v as runtime.lua's urldecode computes it. */
static size_t decoded_len(const char *v) {
  size_t n = 0;
  for (const char *p = v; *p; n++) {
    if (p[0] == '%' && p[1] && p[2] && strchr("0123456789abcdefABCDEF", p[1]) &&
        strchr("0123456789abcdefABCDEF", p[2]))
      p += 3;
    else
      p++;
  }
  return n;
}

static void upgrade(lr_server *s, const char *query, const char *name, const char *value) {
  fz_conn c;
  double t0 = now_ms();
  int st = fz_conn_open(s, &c, "/parties/main/fz-ids", query, NULL, 0);
  over("upgrade", now_ms() - t0);
  if (st == 0 && name && !strpbrk(value, "&")) {
    /* value is the whole parameter: the bound is exact */
    bool too_long = decoded_len(value) > 256;
    if (too_long != (c.close_code == 4008)) {
      fprintf(stderr, "fuzz_ids: ?%s= of %zu decoded bytes: close code %d\n", name,
              decoded_len(value), c.close_code);
      abort();
    }
  }
  fz_conn_close(s, &c);
}

/* runtime[fn](arg) through the protected-call helper; the result (a string
 * or table) is left on the stack. */
static void call_runtime(lua_State *L, const char *fn, const char *arg) {
  lua_getglobal(L, "require");
  lua_pushstring(L, "lunaroom.runtime");
  lr_callinfo ci = {.what = "fuzz require"};
  if (lr_vm_pcall(L, 1, 1, &ci) != 0) abort();
  lua_getfield(L, -1, fn);
  lua_remove(L, -2);
  lua_pushstring(L, arg);
  lr_callinfo ci2 = {.what = fn};
  double t0 = now_ms();
  if (lr_vm_pcall(L, 1, 1, &ci2) != 0) {
    fprintf(stderr, "fuzz_ids: runtime.%s failed: %s\n", fn, ci2.err);
    abort();
  }
  over(fn, now_ms() - t0);
}

/* Every key of table a is in table b with the same string value. */
static bool same_table(lua_State *L, int a, int b) {
  a = lua_absindex(L, a);
  b = lua_absindex(L, b);
  lua_pushnil(L);
  while (lua_next(L, a)) {
    lua_pushvalue(L, -2);
    lua_rawget(L, b);
    bool eq = lua_type(L, -1) == LUA_TSTRING && lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!eq) {
      lua_pop(L, 1);
      return false;
    }
  }
  return true;
}

static bool is_space(unsigned char c) {
  return c == ' ' || (c >= 9 && c <= 13);
}

static void check_ids(const char *in) {
  char alpha[257];
  bool seen[256] = {0};
  size_t k = 0;
  for (const unsigned char *p = (const unsigned char *)in; *p && k < 256; p++)
    if (!seen[*p]) {
      seen[*p] = true;
      alpha[k++] = (char)*p;
    }
  alpha[k] = 0;
  if (!k) return;
  char out[65];
  lr_test_rng g;
  lr_test_rng_seed(&g, (uint64_t)k * 0x9E3779B97F4A7C15ULL);
  for (int round = 0; round < 2; round++) {
    lr_rand_id(round ? &g : NULL, out, 64, alpha);
    if (out[64] != 0 || strlen(out) != 64) abort();
    for (int i = 0; i < 64; i++)
      if (!seen[(unsigned char)out[i]]) {
        fprintf(stderr, "fuzz_ids: character %d not in the alphabet\n", (unsigned char)out[i]);
        abort();
      }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *in = malloc(size + 1);
  memcpy(in, data, size);
  in[size] = 0;
  size_t n = strlen(in);
  char *q = malloc(n + 32);

  lr_server *s = fz_server_new();
  upgrade(s, in, NULL, NULL);
  static const char *const names[] = {"id", "_pk", "transferToken"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    snprintf(q, n + 32, "%s=%s", names[i], in);
    upgrade(s, q, names[i], in);
  }

  lua_State *L = s->L;
  int top = lua_gettop(L);
  call_runtime(L, "parse_query", in);
  if (!lua_istable(L, -1)) abort();
  call_runtime(L, "parse_query_lua", in);
  if (!same_table(L, -2, -1) || !same_table(L, -1, -2)) {
    fprintf(stderr, "fuzz_ids: core.parse_query and runtime.parse_query_lua differ\n");
    abort();
  }
  lua_pop(L, 1);
  call_runtime(L, "trim", in);
  size_t tl;
  const char *t = lua_tolstring(L, -1, &tl);
  if (!t || (tl && (is_space((unsigned char)t[0]) || is_space((unsigned char)t[tl - 1])))) {
    fprintf(stderr, "fuzz_ids: trim left whitespace\n");
    abort();
  }
  lua_settop(L, top);
  fz_server_free(s);

  check_ids(in);
  free(q);
  free(in);
  return 0;
}

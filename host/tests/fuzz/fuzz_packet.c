/*
 * fuzz_packet.c - libFuzzer target: the action packet path of the engine, as
 * a WebSocket client reaches it (lr_conn_message: rate limit, JSON decode
 * with the wire limits, {action, value} shape, guards, schema validation,
 * handlers with budget and rollback, sync encoding, interceptor).
 *
 * Input: up to 16 frames separated by the byte 0x1E (a byte no JSON text
 * can hold outside a string, where it is invalid anyway). The first byte
 * picks the room: fuzz room "fz-a" (host/tests/fuzz/rooms/fuzz.lua) by
 * default, 'g' the example game room, 'c' the chat room. A second client is
 * in the room so broadcasts and the interceptor run.
 *
 * Invariant: a frame answered with an error packet (invalid_packet,
 * unknown_action, guard, validation, handler, rate_limit) leaves the room's
 * state exactly as it was (README: "Rejected input ... changes nothing").
 * Invariant: schema:parse's fast path in C (host/lua_schema.c) answers as
 * the Lua one does: each frame that is JSON, and its "value", checked
 * against a set of schemas of every kind (SCHEMA_DIFF below) by both.
 * Must not: keep state across inputs (a new server per input).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "fuzz_server.h"
#include "lua_vm.h"

#define MAX_FRAMES 16

/* (json) -> true | false, what: the C and the Lua fast path of every schema
 * below agree on the decoded frame and on its "value". */
static const char SCHEMA_DIFF[] =
    "local json = ...\n"
    "local core, v = require 'lunaroom.core', require('lunaroom').v\n"
    "local S = rawget(_G, 'FUZZ_SCHEMAS')\n"
    "if not S then\n"
    "  local item = v.union { v.number(), v.string():max(8), v.boolean() }\n"
    "  S = { v.number():min(0):max(1000), v.integer(), v.integer():min(-3):max(2 ^ 62),\n"
    "    v.string(), v.string():min(1):max(16), v.string():length(2), v.boolean(), v.any(),\n"
    "    v.enum { 'a', 'b', 3 }, v.literal('x'), v.literal(2), v.array(item):max(8),\n"
    "    v.array(v.array(v.number())), v.object { x = v.number():min(0):max(1000), y = "
    "v.number():min(0):max(1000) },\n"
    "    v.object { x = v.integer():max(10), y = v.number():optional() }, "
    "v.array(v.number():min(1):max(9)),\n"
    "    v.object { key = v.string():min(1), value = v.any() }:strict(), v.number():optional(),\n"
    "    v.object { a = v.object { b = v.array(v.integer()):min(1) } }, v.union { v.object {}, "
    "v.array(v.any()) } }\n"
    "  rawset(_G, 'FUZZ_SCHEMAS', S)\n"
    "end\n"
    "local function same(a, b)\n"
    "  if type(a) ~= type(b) then return false end\n"
    "  if type(a) ~= 'table' then return a == b or (a ~= a and b ~= b) end\n"
    "  if getmetatable(a) ~= getmetatable(b) then return false end\n"
    "  for k, x in next, a do if not same(x, b[k]) then return false end end\n"
    "  for k in next, b do if a[k] == nil then return false end end\n"
    "  return true\n"
    "end\n"
    "local ok, x = pcall(core.decode, json)\n"
    "if not ok then return true end\n"
    "local vals = { x }\n"
    "if type(x) == 'table' then vals[2] = x.value end\n"
    "for i = 1, #S do\n"
    "  for j = 1, 2 do\n"
    "    local c1, o1 = v._fast_c(S[i], vals[j])\n"
    "    if c1 ~= nil then\n"
    "      local c2, o2 = v._fast_lua(S[i], vals[j])\n"
    "      if c1 ~= c2 or (c1 and not same(o1, o2)) then return false, S[i]:describe() end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return true\n";

static void schema_diff(lr_server *s, const char *json, size_t len) {
  lua_State *L = s->L;
  int top = lua_gettop(L);
  if (lua_getfield(L, LUA_REGISTRYINDEX, "fuzz_packet.schema_diff") != LUA_TFUNCTION) {
    lua_pop(L, 1);
    if (luaL_loadbuffer(L, SCHEMA_DIFF, sizeof SCHEMA_DIFF - 1, "=schema_diff") != LUA_OK) abort();
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "fuzz_packet.schema_diff");
  }
  lua_pushlstring(L, json, len);
  lr_callinfo ci = {.what = "schema_diff"};
  if (lr_vm_pcall(L, 1, 2, &ci) != 0) {
    fprintf(stderr, "fuzz_packet: schema_diff failed: %s\n", ci.err);
    abort();
  }
  if (!lua_toboolean(L, -2)) {
    fprintf(stderr, "fuzz_packet: the C and Lua fast paths of %s differ on %.*s\n",
            lua_tostring(L, -1), (int)len, json);
    abort();
  }
  lua_settop(L, top);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = (const char *)data, *end = p + size;
  const char *path = "/parties/main/fz-a", *id = "fz-a";
  if (size > 0 && (*p == 'g' || *p == 'c')) {
    path = *p == 'g' ? "/parties/main/game" : "/parties/main/chat-fuzz";
    id = *p == 'g' ? "game" : "chat-fuzz";
    p++;
  }
  lr_server *s = fz_server_new();
  fz_conn a, b;
  lr_header h[1] = {{"host", "fuzz"}};
  if (fz_conn_open(s, &a, path, "id=alice&name=alice", h, 1) != 0) abort();
  if (fz_conn_open(s, &b, path, "id=bob", h, 1) != 0) abort();
  if (a.close_code >= 0 || b.close_code >= 0) abort(); /* both must be admitted */

  lr_buf before, after;
  lr_buf_init(&before);
  lr_buf_init(&after);
  for (int f = 0; f < MAX_FRAMES && p <= end && a.close_code < 0; f++) {
    const char *sep = memchr(p, 0x1E, (size_t)(end - p));
    const char *fe = sep ? sep : end;
    schema_diff(s, p, (size_t)(fe - p));
    bool had = fz_room_state(s, "main", id, &before);
    unsigned errs = a.errors;
    fz_conn_send(s, &a, p, (size_t)(fe - p));
    if (a.errors != errs && had) {
      if (!fz_room_state(s, "main", id, &after) || before.len != after.len ||
          memcmp(before.data, after.data, before.len) != 0) {
        fprintf(stderr,
                "fuzz_packet: frame %d was rejected but changed the state\n"
                "before: %.*s\nafter:  %.*s\n",
                f, (int)before.len, before.data, (int)after.len, after.data);
        abort();
      }
    }
    if (!sep) break;
    p = sep + 1;
  }
  lr_buf_free(&before);
  lr_buf_free(&after);
  fz_conn_close(s, &a);
  fz_conn_close(s, &b);
  fz_server_free(s);
  return 0;
}

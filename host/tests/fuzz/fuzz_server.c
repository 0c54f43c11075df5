/*
 * fuzz_server.c - the headless engine of the fuzz targets (fuzz_server.h).
 *
 * Owns: the process's Lua state for fuzzing and the recording transport.
 * Must not: keep anything of one input alive into the next (each input gets
 * a new server and new storage, so a crash reproduces from its input alone).
 */
#include "fuzz_server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "json.h"
#include "log.h"
#include "lua_vm.h"
#include "storage.h"

void lr_lua_push_server(lua_State *L, lr_server *s, bool owned); /* lua_api.c */

/* Lua heap growth allowed across inputs, after a full collection. */
#define LUA_GROWTH_SLACK ((size_t)4 << 20)

static lua_State *L;
static int factory_ref = LUA_NOREF;

/* M.new(h) builds the Lua server table; the definitions are loaded by the
 * first call and shared by the next ones (they are immutable). */
static const char *factory_src =
    "local runtime = require 'lunaroom.runtime'\n"
    "local rooms_dir, fuzz_dir = ...\n"
    "local defs\n"
    "return function(h)\n"
    "  local srv = runtime.new_server(h, { env = { AUTH_JWT_SECRET = 'fuzz-secret',\n"
    "    SHARD_SECRET = 'fuzz-shard', METRICS_TOKEN = 'fuzz-metrics' } })\n"
    "  if defs then srv.defs = defs return end\n"
    "  for _, dir in ipairs({ rooms_dir, fuzz_dir }) do\n"
    "    local n, errs = runtime.load_dir(srv, dir)\n"
    "    assert(n and #errs == 0, 'cannot load rooms from ' .. dir)\n"
    "  end\n"
    "  defs = srv.defs\n"
    "end\n";

static void die(const char *what) {
  fprintf(stderr, "fuzz setup: %s: %s\n", what,
          L && lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
  abort();
}

static void setup(void) {
  if (L) return;
  /* Log lines cost time and say nothing here; FUZZ_LOG=1 shows them. */
  lr_log_set_level(getenv("FUZZ_LOG") ? LR_LOG_DEBUG : LR_LOG_ERROR + 1);
  setenv("AUTH_JWT_SECRET", "fuzz-secret", 1);
  L = lr_vm_open(LR_SOURCE_DIR "/lua", (size_t)512 << 20);
  if (!L) die("lr_vm_open");
  if (luaL_loadbuffer(L, factory_src, strlen(factory_src), "=fuzz_factory") != LUA_OK)
    die("factory");
  lua_pushstring(L, LR_SOURCE_DIR "/rooms");
  lua_pushstring(L, LR_SOURCE_DIR "/host/tests/fuzz/rooms");
  lr_callinfo ci = {.what = "fuzz factory"};
  if (lr_vm_pcall(L, 2, 1, &ci) != 0) die("factory run");
  factory_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

lr_server *fz_server_new(void) {
  setup();
  char err[256];
  lr_store *st = lr_store_open_spec("memory", err, sizeof err);
  if (!st) die(err);
  lr_server *s = lr_server_new(L, st, true, true, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, factory_ref);
  lr_lua_push_server(L, s, false);
  lr_callinfo ci = {.what = "fuzz server"};
  if (lr_vm_pcall(L, 1, 0, &ci) != 0) die("new server");
  return s;
}

void fz_server_free(lr_server *s) {
  lr_server_shutdown(s);
  lr_server_tick(s);
  lr_server_free(s);
  lua_settop(L, 0);
  /* A full collection after every input: the heap of one input does not
   * reach the next, and libFuzzer's leak check (which runs LeakSanitizer
   * whenever an input ends with more mallocs than frees) stays cheap. */
  lua_gc(L, LUA_GCCOLLECT);
  /* Invariant: nothing of an input stays reachable from Lua (registry refs
   * of rooms, conns, timers...). LeakSanitizer cannot see those: they are
   * not leaked, only kept. One-time growth (a module loaded on first use)
   * stays far below the slack. */
  static size_t base;
  size_t mem = lr_vm_memory(L);
  if (!base) base = mem;
  if (getenv("FUZZ_MEM")) fprintf(stderr, "lua memory %zu\n", mem);
  if (mem > base + LUA_GROWTH_SLACK) {
    fprintf(stderr, "fuzz: Lua heap grew from %zu to %zu bytes across inputs\n", base, mem);
    abort();
  }
}

/* ---- the transport ---- */

static int fz_send(lr_conn *c, lr_msg *m) {
  fz_conn *fc = lr_conn_transport(c);
  if (!fc || fc->close_code >= 0) return -1;
  fc->received++;
  static const char err_prefix[] = "{\"type\":\"error\"";
  if (m->len >= sizeof err_prefix - 1 &&
      memcmp(lr_msg_payload(m), err_prefix, sizeof err_prefix - 1) == 0)
    fc->errors++;
  return 0; /* "written" at once: no reference kept */
}

static void fz_close(lr_conn *c, int code, const char *reason) {
  (void)reason;
  fz_conn *fc = lr_conn_transport(c);
  if (fc && fc->close_code < 0) fc->close_code = code;
}

static const lr_transport_vt fz_vt = {fz_send, fz_close};

int fz_conn_open(lr_server *s, fz_conn *fc, const char *path, const char *query,
                 const lr_header *headers, size_t nheaders) {
  memset(fc, 0, sizeof *fc);
  fc->close_code = -1;
  lr_request req = {"GET", path, query ? query : "", headers, nheaders,
                    NULL,  0,    "127.0.0.1",        NULL,    NULL};
  lr_conn *c = NULL;
  int status = lr_server_ws_open(s, &req, &fz_vt, fc, &c);
  if (status != 0) return status;
  fc->c = c;
  lr_server_tick(s);
  return 0;
}

void fz_conn_send(lr_server *s, fz_conn *fc, const char *data, size_t len) {
  if (!fc->c || fc->close_code >= 0) return;
  lr_conn_message(fc->c, data, len);
  lr_server_tick(s);
}

void fz_conn_close(lr_server *s, fz_conn *fc) {
  if (!fc->c) return;
  if (fc->close_code < 0) fc->close_code = 1000;
  lr_conn *c = fc->c;
  fc->c = NULL;
  lr_conn_closed(c); /* exactly once, as server.h asks of a transport */
  lr_server_tick(s);
}

bool fz_room_state(lr_server *s, const char *ns, const char *id, lr_buf *out) {
  lr_buf_reset(out);
  lr_room *r = lr_room_find(s, ns, id);
  if (!r || !r->root) return false;
  lr_json_encode(r->root, 0, out);
  return true;
}

/*
 * serve.c - `lunaroom serve`: its options (flags, --config file, a
 * project's ./lunaroom.lua), and the wiring of the Lua state, the storage,
 * the engine, the rooms folder, the world and shard features and the
 * network loop, then the bounded shutdown that retries unwritten state.
 *
 * Owns: the serve options and their checks, the order things start and
 * stop in, SIGHUP's rescan of the rooms folder.
 * Must not: contain engine, transport or room logic (it calls their
 * public functions in order).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lauxlib.h>

#include "bridge.h"
#include "cli.h"
#include "engine.h"
#include "fetch.h"
#include "log.h"
#include "lua_api.h"
#include "lua_vm.h"
#include "net.h"
#include "storage_postgres.h"
#include "reload.h"
#include "shard.h"
#include "cluster.h"
#include "uplink.h"

/* --config FILE: a Lua file returning a table of the serve options, e.g.
 *   return { port = 2000, storage = "memory", rooms = "rooms", max_conns = 5000 }
 * Keys are the flag names with '_' for '-' ("rooms" is the folder). The
 * options become flags placed BEFORE the command line's, so flags win.
 * Returns a new argv (strings owned by the caller: free with free_config)
 * or NULL after printing the error. */
static char **config_args(const char *file, int argc, char **argv, int *out_argc) {
  lua_State *L = luaL_newstate();
  if (luaL_loadfile(L, file) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "lunaroom: config %s: %s\n", file, lua_tostring(L, -1));
    lua_close(L);
    return NULL;
  }
  if (!lua_istable(L, -1)) {
    fprintf(stderr, "lunaroom: config %s must return a table\n", file);
    lua_close(L);
    return NULL;
  }
  char **out = calloc((size_t)argc + 128, sizeof *out);
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, -2) && n < 120) {
    const char *k = lua_tostring(L, -2);
    if (lua_type(L, -2) != LUA_TSTRING) {
      lua_pop(L, 1);
      continue;
    }
    if (strcmp(k, "rooms") == 0) {
      out[n++] = strdup(lua_tostring(L, -1) ? lua_tostring(L, -1) : "rooms");
    } else if (lua_type(L, -1) == LUA_TBOOLEAN) {
      if (strcmp(k, "watch") == 0 && !lua_toboolean(L, -1))
        out[n++] = strdup("--no-watch");
      else if (lua_toboolean(L, -1)) {
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", k);
        for (char *p = flag; *p; p++)
          if (*p == '_') *p = '-';
        out[n++] = strdup(flag);
      }
    } else {
      char flag[64];
      snprintf(flag, sizeof flag, "--%s", k);
      for (char *p = flag; *p; p++)
        if (*p == '_') *p = '-';
      out[n++] = strdup(flag);
      lua_pushvalue(L, -1);
      out[n++] = strdup(lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  lua_close(L);
  for (int i = 0; i < argc; i++)
    out[n++] = strdup(argv[i]);
  *out_argc = n;
  return out;
}

static int cmd_serve_args(int argc, char **argv, const char *lua_dir);

int lr_cmd_serve(int argc, char **argv, const char *lua_dir) {
  for (int i = 0; i + 1 < argc; i++) {
    if (strcmp(argv[i], "--config") != 0) continue;
    const char *file = argv[i + 1];
    char **rest = malloc(sizeof *rest * (size_t)(argc + 1));
    int m = 0;
    for (int j = 0; j < argc; j++)
      if (j != i && j != i + 1) rest[m++] = argv[j];
    int n = 0;
    char **all = config_args(file, m, rest, &n);
    free(rest);
    if (!all) return 2;
    int rc = cmd_serve_args(n, all, lua_dir);
    for (int j = 0; j < n; j++)
      free(all[j]);
    free(all);
    return rc;
  }
  /* No --config: ./lunaroom.lua if there is one (a `lunaroom init` project). */
  struct stat st;
  if (stat("lunaroom.lua", &st) == 0 && S_ISREG(st.st_mode)) {
    char **with = malloc(sizeof *with * (size_t)(argc + 3));
    with[0] = "--config";
    with[1] = "lunaroom.lua";
    for (int j = 0; j < argc; j++)
      with[j + 2] = argv[j];
    int rc = lr_cmd_serve(argc + 2, with, lua_dir);
    free(with);
    return rc;
  }
  return cmd_serve_args(argc, argv, lua_dir);
}

/* Load lua/lunaroom/world.lua (the world room) into srv (at stack index
 * srv). Returns 0 or -1 (logged). */
static int add_world(lua_State *L, int rt, int srv, const char *lua_dir) {
  char file[4096];
  snprintf(file, sizeof file, "%s/lunaroom/world.lua", lua_dir);
  if (lr_cli_require(L, "lunaroom.sandbox") != 0) return -1;
  lua_getfield(L, -1, "load_room_file");
  lua_pushstring(L, file);
  lr_callinfo ci = {.what = "world"};
  if (lr_vm_pcall(L, 1, 2, &ci) != 0 || lua_isnil(L, -2)) {
    lr_error("cannot load the world room %s: %s", file, lua_tostring(L, -1));
    return -1;
  }
  int def = lua_gettop(L) - 1;
  lua_getfield(L, rt, "add_definition");
  lua_pushvalue(L, srv);
  lua_pushvalue(L, def);
  lua_pushstring(L, file);
  lua_pushvalue(L, def + 1);
  if (lr_vm_pcall(L, 4, 0, &ci) != 0) return -1;
  lr_info("world room enabled: /parties/world/world-{worldId} (version %s)",
          lua_tostring(L, def + 1));
  return 0;
}

/* The hot reload watcher's inotify fd, watched by the one event loop. */
static void *reload_watch_fd(int fd, void (*cb)(void *ud, int revents), void *ud) {
  return lr_net_watch_fd(fd, cb, ud);
}
static void reload_unwatch_fd(void *nw) {
  lr_net_unwatch_fd(nw);
}

/* "R" or "R,B": a per-address rate (per second) and burst. */
static void set_rate(lr_addr_rate *ar, const char *spec) {
  char *end;
  double rate = strtod(spec, &end);
  double burst = *end == ',' ? strtod(end + 1, NULL) : lr_addr_rate_burst(ar);
  lr_addr_rate_set(ar, rate, burst);
}

/* SIGHUP (systemctl reload): re-read the rooms folder, as the watcher's
 * rescan does: new, changed and deleted room files (unchanged versions are
 * skipped). Works with --no-watch too. */
typedef struct hup_ctx {
  lr_server *s;
  const char *dir;
  bool rooms;
} hup_ctx;

static void on_hup(void *arg) {
  hup_ctx *h = arg;
  if (!h->rooms || h->s->shutting_down) return;
  lua_State *L = h->s->L;
  int top = lua_gettop(L);
  static const char prep[] = "local reload, srv, dir = ...\n"
                             "local st = reload.state(srv)\n"
                             "st.dir = st.dir or reload.norm((dir:gsub('/+$', '')))\n"
                             "return require('lunaroom.reload_c').run, srv, {'*'}\n";
  lr_callinfo ci = {.what = "SIGHUP reload"};
  if (lr_cli_require(L, "lunaroom.reload") == 0 &&
      luaL_loadbuffer(L, prep, sizeof prep - 1, "=sighup") == LUA_OK) {
    lua_insert(L, -2);
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->s->ref);
    lua_pushstring(L, h->dir);
    /* reload_c.run is called outside any protected call, as the watcher's
     * tick does: each step of the reload is then an outermost call with
     * its own budget and undo mark. */
    if (lr_vm_pcall(L, 3, 3, &ci) == 0) {
      lua_call(L, 2, 1);
      lr_info("SIGHUP: rooms folder %s re-read (%lld file(s) checked)", h->dir,
              (long long)lua_rawlen(L, -1));
    }
  } else {
    lr_error("SIGHUP: cannot reload %s: %s", h->dir, lua_tostring(L, -1));
  }
  lua_settop(L, top);
}

/* The serve options (flags, after the --config file's). */
typedef struct serve_cfg {
  const char *dir, *storage, *snapshot;
  char storage_buf[4096];
  int watch, world, dir_given, dev;
  const char *headers; /* --headers a,b: request headers to copy (server.h) */
  const char *shard_main, *world_url, *world_id;
  const char *cleanup_ms, *timeout_ms;
  long long stats_ms;
  long max_rooms;
  long long evict_after;
  const char *room_rate, *session_rate;
  const char *tls_ca;
  long long shutdown_ms;
  /* --cluster: rooms spread over nodes on one PostgreSQL (storage_postgres.h) */
  const char *cluster, *node_url;
  long long lease_ms;
  size_t lua_memory;
  /* handlers waiting at once (lunaroom.tasks); the environment is the
   * fallback it was before the flag (0: the runtime's default) */
  const char *max_waiting;
  long long max_waiting_n;
  lr_net_opts no;
} serve_cfg;

static void cfg_defaults(serve_cfg *c) {
  memset(c, 0, sizeof *c);
  c->dir = "rooms";
  c->storage = "sqlite:data/lunaroom.sqlite";
  c->watch = 1;
  c->cleanup_ms = getenv("WORLD_CLEANUP_INTERVAL_MS");
  c->timeout_ms = getenv("WORLD_SHARD_TIMEOUT_MS");
  c->evict_after = -1;
  c->shutdown_ms = 5000;
  c->lua_memory = (size_t)1 << 30;
  c->max_waiting = getenv("LUNAROOM_MAX_WAITING");
  lr_net_defaults(&c->no);
}

/* A time in ms where 0 means never (lr_net_opts says -1 for that). */
static long ms_or_never(const char *v) {
  long ms = atol(v);
  return ms > 0 ? ms : -1;
}

/* The flags of the network loop (net.h): 1 if argv[*i] was one. */
static int net_flag(lr_net_opts *no, int argc, char **argv, int *i) {
  const char *a = argv[*i];
  const char *v = *i + 1 < argc ? argv[*i + 1] : NULL;
  if (strcmp(a, "--port") == 0 && v)
    no->port = atoi(argv[++*i]);
  else if (strcmp(a, "--host") == 0 && v)
    no->host = argv[++*i];
  else if (strcmp(a, "--max-frame") == 0 && v)
    no->max_frame = (size_t)atoll(argv[++*i]);
  else if (strcmp(a, "--max-queue") == 0 && v)
    no->max_queue_bytes = (size_t)atoll(argv[++*i]);
  else if (strcmp(a, "--static") == 0 && v)
    no->static_dir = argv[++*i];
  else if (strcmp(a, "--max-conns") == 0 && v)
    no->max_conns = atol(argv[++*i]);
  else if (strcmp(a, "--max-conns-per-ip") == 0 && v)
    no->max_conns_per_ip = atol(argv[++*i]);
  else if (strcmp(a, "--max-http-per-ip") == 0 && v)
    no->max_http_per_ip = atol(argv[++*i]);
  else if (strcmp(a, "--body-timeout") == 0 && v)
    no->body_timeout_ms = atol(argv[++*i]);
  else if (strcmp(a, "--msgs-per-ip") == 0 && v)
    no->msgs_per_ip = atol(argv[++*i]);
  else if (strcmp(a, "--ws-ping") == 0 && v)
    no->ws_ping_ms = ms_or_never(argv[++*i]);
  else if (strcmp(a, "--ws-hangup") == 0 && v)
    no->ws_hangup_ms = ms_or_never(argv[++*i]);
  else if (strcmp(a, "--trusted-proxy") == 0 && v)
    no->trusted_proxies = argv[++*i];
  else if (strcmp(a, "--tls-cert") == 0 && v)
    no->tls_cert = argv[++*i];
  else if (strcmp(a, "--tls-key") == 0 && v)
    no->tls_key = argv[++*i];
  else
    return 0;
  return 1;
}

/* The command line into c: 0, or 2 after printing the error. A flat list
 * of flags, one branch each (the network loop's are net_flag's). */
static int parse_args(serve_cfg *c, int argc, char **argv) {
  for (int i = 0; i < argc; i++) {
    if (net_flag(&c->no, argc, argv, &i)) continue;
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--storage") == 0 && v)
      c->storage = argv[++i];
    else if (strcmp(a, "--snapshot") == 0 && v)
      c->snapshot = argv[++i];
    else if (strcmp(a, "--cluster") == 0 && v)
      c->cluster = argv[++i];
    else if (strcmp(a, "--node-url") == 0 && v)
      c->node_url = argv[++i];
    else if (strcmp(a, "--lease-ms") == 0 && v)
      c->lease_ms = atoll(argv[++i]);
    else if (strcmp(a, "--max-rooms") == 0 && v)
      c->max_rooms = atol(argv[++i]);
    else if (strcmp(a, "--evict-after") == 0 && v)
      c->evict_after = atoll(argv[++i]);
    else if (strcmp(a, "--room-create-rate") == 0 && v)
      c->room_rate = argv[++i];
    else if (strcmp(a, "--session-rate") == 0 && v)
      c->session_rate = argv[++i];
    else if (strcmp(a, "--shutdown-timeout") == 0 && v)
      c->shutdown_ms = atoll(argv[++i]);
    else if (strcmp(a, "--lua-memory") == 0 && v)
      c->lua_memory = (size_t)atoll(argv[++i]);
    else if (strcmp(a, "--max-waiting") == 0 && v)
      c->max_waiting = argv[++i];
    else if (strcmp(a, "--log-format") == 0 && v)
      lr_log_set_json(strcmp(argv[++i], "json") == 0);
    else if (strcmp(a, "--no-watch") == 0)
      c->watch = 0;
    else if (strcmp(a, "--dev") == 0)
      c->dev = 1;
    else if (strcmp(a, "--headers") == 0 && v)
      c->headers = argv[++i];
    else if (strcmp(a, "--jwt-require-exp") == 0)
      setenv("AUTH_JWT_REQUIRE_EXP", "1", 1); /* read by lr.jwt.verify (lua_jwt.c) */
    else if (strcmp(a, "--world") == 0)
      c->world = 1;
    else if (strcmp(a, "--world-cleanup-interval") == 0 && v)
      c->cleanup_ms = argv[++i];
    else if (strcmp(a, "--world-shard-timeout") == 0 && v)
      c->timeout_ms = argv[++i];
    else if (strcmp(a, "--shard") == 0 && v)
      c->shard_main = argv[++i];
    else if (strcmp(a, "--world-url") == 0 && v)
      c->world_url = argv[++i];
    else if (strcmp(a, "--world-id") == 0 && v)
      c->world_id = argv[++i];
    else if (strcmp(a, "--tls-ca") == 0 && v)
      c->tls_ca = argv[++i];
    else if (strcmp(a, "--lua-modules") == 0 && v)
      lr_cli_lua_modules = argv[++i];
    else if (strcmp(a, "--stats-interval") == 0 && v) {
      c->stats_ms = atoll(argv[++i]);
      if (c->stats_ms <= 0) c->stats_ms = -1; /* only reports on changes */
    } else if (a[0] != '-') {
      c->dir = a;
      c->dir_given = 1;
    } else {
      fprintf(stderr, "lunaroom serve: unknown option %s\n\n%s", a, lr_cli_usage);
      return 2;
    }
  }
  return 0;
}

/* Options that go together or need a secret: 0, or 2 after printing the
 * error. */
static int check_cfg(serve_cfg *c) {
  if (c->snapshot) {
    if (strcmp(c->storage, "memory") != 0) {
      fprintf(stderr, "lunaroom serve: --snapshot %s needs --storage memory (storage is %s)\n",
              c->snapshot, c->storage);
      return 2;
    }
    snprintf(c->storage_buf, sizeof c->storage_buf, "memory:%s", c->snapshot);
    c->storage = c->storage_buf;
  }
  if (c->cluster || c->node_url || c->lease_ms) {
    if (!c->cluster || !c->node_url ||
        (strncmp(c->cluster, "postgres://", 11) != 0 &&
         strncmp(c->cluster, "postgresql://", 13) != 0)) {
      fprintf(stderr, "lunaroom serve: --cluster postgres://... and --node-url http://HOST:PORT go "
                      "together\n");
      return 2;
    }
    if (c->lease_ms < 0 || (c->lease_ms > 0 && c->lease_ms < 400)) {
      fprintf(stderr, "lunaroom serve: --lease-ms must be at least 400\n");
      return 2;
    }
  }
  /* World and shards refuse to run unauthenticated (design.md §8). */
  const char *need[2] = {c->world ? "AUTH_JWT_SECRET" : NULL,
                         c->world || c->shard_main ? "SHARD_SECRET" : NULL};
  for (int k = 0; k < 2; k++) {
    const char *e = need[k] ? getenv(need[k]) : NULL;
    if (need[k] && (!e || !*e)) {
      fprintf(stderr,
              "lunaroom serve: %s is not set; %s needs it (export %s=<a long random secret>, "
              "the same on every process of the world)\n",
              need[k], c->world ? "--world" : "--shard", need[k]);
      return 2;
    }
  }
  if (c->max_waiting && *c->max_waiting) {
    char *end;
    c->max_waiting_n = strtoll(c->max_waiting, &end, 10);
    if (*end || c->max_waiting_n < 1 || c->max_waiting_n > 100000000) {
      fprintf(stderr,
              "lunaroom serve: --max-waiting (or LUNAROOM_MAX_WAITING) must be a whole "
              "number from 1 to 100000000, got '%s'\n",
              c->max_waiting);
      return 2;
    }
  }
  if (!c->no.tls_cert != !c->no.tls_key) {
    fprintf(stderr, "lunaroom serve: --tls-cert and --tls-key go together\n");
    return 2;
  }
  return 0;
}

/* The storage of c (--cluster's PostgreSQL, or the --storage spec); NULL
 * with err. */
static lr_store *open_store(serve_cfg *c, lua_State *L, char *err, size_t errlen) {
  if (!c->cluster) return lr_store_open_spec_L(L, c->storage, err, errlen);
  lr_pg_opts po = {.conninfo = c->cluster, .node_id = c->node_url, .lease_ms = c->lease_ms};
  c->storage = c->cluster;
  lr_store *st = lr_store_postgres_open(&po, err, errlen);
  if (st)
    lr_info("cluster node %s: lease %lld ms, renewed every %lld ms", c->node_url,
            c->lease_ms > 0 ? c->lease_ms : (long long)LR_PG_LEASE_DEFAULT,
            (c->lease_ms > 0 ? c->lease_ms : (long long)LR_PG_LEASE_DEFAULT) / 4);
  return st;
}

/* The server's limits and copied headers from c: 0, or 2 after printing
 * the error. */
static int server_setup(serve_cfg *c, lr_server *s) {
  if (c->max_rooms) s->max_rooms = c->max_rooms;
  for (const char *p = c->headers; p && *p;) {
    size_t n = strcspn(p, ", ");
    char name[LR_HEADER_NAME_MAX + 1];
    snprintf(name, sizeof name, "%.*s", (int)n, p);
    if (n > 0 && (n > LR_HEADER_NAME_MAX || lr_server_want_header(s, name) != 0)) {
      fprintf(stderr,
              "lunaroom serve: --headers: '%.*s' is not a header name (a-z 0-9 -, at most %d)\n",
              (int)n, p, LR_HEADER_NAME_MAX);
      return 2;
    }
    p += n;
    p += strspn(p, ", ");
  }
  if (c->evict_after >= 0) s->evict_after = c->evict_after;
  if (c->room_rate) set_rate(s->room_rate, c->room_rate);
  if (c->session_rate) set_rate(s->session_rate, c->session_rate);
  return 0;
}

/* Push runtime.new_server's options: {env = {...}}. [-0,+1] */
static void push_server_opts(lua_State *L, const serve_cfg *c) {
  lua_createtable(L, 0, 1);
  lua_createtable(L, 0, 2);
  const char *envs[] = {"SHARD_SECRET", "AUTH_JWT_SECRET", "WORLD_ID", "SIGNE_WORLD_ID"};
  for (size_t i = 0; i < sizeof envs / sizeof *envs; i++) {
    const char *e = getenv(envs[i]);
    if (e) {
      lua_pushstring(L, e);
      lua_setfield(L, -2, envs[i]);
    }
  }
  if (c->cluster) { /* runtime.lua: rooms are created under a lease only (cluster.c) */
    lua_pushstring(L, c->node_url);
    lua_setfield(L, -2, "LUNAROOM_CLUSTER");
  }
  /* The world's cleanup timings (lua/lunaroom/world.lua reads room.env). */
  if (c->cleanup_ms) {
    lua_pushstring(L, c->cleanup_ms);
    lua_setfield(L, -2, "WORLD_CLEANUP_INTERVAL_MS");
  }
  if (c->timeout_ms) {
    lua_pushstring(L, c->timeout_ms);
    lua_setfield(L, -2, "WORLD_SHARD_TIMEOUT_MS");
  }
  lua_setfield(L, -2, "env");
  if (c->max_waiting_n > 0) {
    lua_pushinteger(L, (lua_Integer)c->max_waiting_n);
    lua_setfield(L, -2, "max_waiting");
  }
}

/* runtime.load_dir(srv, dir) and the hot reload watcher: 0 or 1 (logged). */
static int load_rooms(serve_cfg *c, lua_State *L, lr_server *s, int rt, int srv) {
  lr_callinfo ci = {.what = "startup"};
  lua_getfield(L, rt, "load_dir");
  lua_pushvalue(L, srv);
  lua_pushstring(L, c->dir);
  if (lr_vm_pcall(L, 2, 2, &ci) != 0) return 1;
  if (lua_isnil(L, -2)) {
    lr_error("cannot load rooms from %s: %s", c->dir, lua_tostring(L, -1));
    return 1;
  }
  /* A room file that does not load (or serves a path another file
   * serves) stops a production start; --dev serves the others. */
  lua_Integer nerr = lua_istable(L, -1) ? (lua_Integer)lua_rawlen(L, -1) : 0;
  if (nerr > 0 && !c->dev) {
    lr_error("not starting: %lld room file(s) in %s did not load (see above; --dev serves the "
             "others)",
             (long long)nerr, c->dir);
    return 1;
  }
  lr_info("%lld room definition(s) from %s, storage %s", (long long)lua_tointeger(L, -2), c->dir,
          c->storage);
  lr_reload_set_fd_watch(reload_watch_fd, reload_unwatch_fd); /* a save wakes the loop */
  if (c->watch) lr_reload_watch(s, srv, c->dir); /* hot reload; logs and goes on if it cannot */
  return 0;
}

/* The Lua side: runtime.new_server, the world room, the rooms folder, shard
 * mode. 0, or 1 (logged). Leaves the stack empty on success. */
static int start_runtime(serve_cfg *c, lua_State *L, lr_server *s, const char *lua_dir) {
  lr_fetch_lua_register(L, s); /* remote session transfers (runtime.lua) */
  if (lr_cli_require(L, "lunaroom.runtime") != 0) return 1;
  int rt = lua_gettop(L);
  /* srv = runtime.new_server(handle, {env = {...}}) */
  lua_getfield(L, rt, "new_server");
  lr_lua_push_server(L, s, false);
  push_server_opts(L, c);
  lr_callinfo ci = {.what = "startup"};
  if (lr_vm_pcall(L, 2, 1, &ci) != 0) return 1;
  int srv = lua_gettop(L);
  if (c->dev) { /* development mode: reload.lua sends failed saves to clients */
    lua_pushboolean(L, 1);
    lua_setfield(L, srv, "dev");
    lr_info("development mode: a save that fails to load is shown to the room's clients");
  }
  if (c->world && add_world(L, rt, srv, lua_dir) != 0) return 1;
  lua_settop(L, srv);
  if ((!c->shard_main || c->dir_given) && load_rooms(c, L, s, rt, srv) != 0) return 1;
  if (c->shard_main) {
    char err[256];
    lr_shard_opts so = {.main_url = c->shard_main,
                        .world_url = c->world_url,
                        .world_id = c->world_id,
                        .stats_interval_ms = c->stats_ms,
                        .forward_world = !c->world,
                        .max_frame = c->no.max_frame};
    if (lr_shard_enable(s, &so, err, sizeof err) != 0) {
      lr_error("%s", err);
      return 1;
    }
  }
  if (c->cluster) { /* any node serves any client: relay rooms owned elsewhere (cluster.c) */
    char err[256];
    const char *sec = getenv("SHARD_SECRET");
    lr_cluster_opts co = {.node_url = c->node_url, .max_frame = c->no.max_frame};
    if (!sec || !*sec)
      lr_warn("cluster: SHARD_SECRET is not set: clients of rooms other nodes own are refused "
              "(4409, 409) instead of relayed");
    else if (lr_cluster_enable(s, &co, err, sizeof err) != 0) {
      lr_error("%s", err);
      return 1;
    }
  }
  lua_settop(L, 0);
  return 0;
}

/* Writes that failed (a full disk, a locked file) and a Lua backend's
 * writes behind its cache: retry them for a bounded time (timers and HTTP
 * keep running). What is left is lost: 1, and each room is logged with
 * its unwritten keys when it is disposed (lr_server_free) or when the Lua
 * store closes. 0 when everything is stored. */
static int retry_unwritten(serve_cfg *c, lr_server *s, lr_store *st) {
  long left = lr_server_retry_unwritten(s);
  if (left <= 0 && lr_store_pending(st) <= 0) return 0;
  lr_warn("shutdown: %ld room(s) with unwritten changes and %ld write batch(es) behind the "
          "storage; retrying for up to %lld ms",
          left, lr_store_pending(st), c->shutdown_ms);
  int64_t end = lr_now(s) + c->shutdown_ms, next_try = lr_now(s) + 100;
  while ((left > 0 || lr_store_pending(st) > 0) && lr_now(s) < end) {
    lr_server_tick(s);
    lr_fetch_flush(5);
    lr_net_poll_watched(1); /* the loop is gone: a database socket (postgres storage) */
    if (left > 0 && lr_now(s) >= next_try) {
      left = lr_server_retry_unwritten(s);
      next_try = lr_now(s) + 100;
    }
  }
  if (left > 0 || lr_store_pending(st) > 0) {
    lr_error("shutdown: storage still failing after %lld ms: %ld room(s) lose unwritten changes "
             "and %ld write batch(es) are not on the backend (listed below); exit status 1",
             c->shutdown_ms, left, lr_store_pending(st));
    return 1;
  }
  lr_info("shutdown: every pending write is stored");
  return 0;
}

/* After the loop: unwritten state, the features, the memory snapshot, the
 * server and the Lua state. Returns the exit status. */
static int serve_stop(serve_cfg *c, lua_State *L, lr_server *s, lr_store *st, int rc) {
  char err[256];
  lr_server_shutdown(s);
  if (retry_unwritten(c, s, st) != 0) rc = 1;
  lr_fetch_flush(1000); /* a shard's last reports and uplink closes */
  lr_shard_free(s);
  lr_cluster_free(s);
  lr_fetch_shutdown();
  if (strncmp(c->storage, "memory:", 7) == 0) {
    /* A memory store seeded from a snapshot file is saved back on shutdown. */
    if (lr_store_memory_save(st, NULL, err, sizeof err) != 0) {
      lr_error("cannot save the memory snapshot: %s", err);
      rc = 1;
    } else {
      lr_info("memory snapshot saved to %s", c->storage + 7);
    }
  }
  lr_server_free(s);
  lr_vm_close(L);
  if (rc)
    lr_error("stopped with errors (exit status %d)", rc);
  else
    lr_info("stopped");
  return rc;
}

static int cmd_serve_args(int argc, char **argv, const char *lua_dir) {
  serve_cfg cfg, *c = &cfg;
  cfg_defaults(c);
  int rc = parse_args(c, argc, argv);
  if (rc == 0) rc = check_cfg(c);
  if (rc != 0) return rc;
  lr_fetch_set_tls_ca(c->tls_ca);
  char err[256];
  lua_State *L = lr_cli_open_vm(lua_dir, c->lua_memory);
  lr_store *st = open_store(c, L, err, sizeof err);
  if (!st) {
    lr_error("cannot open storage %s: %s", c->storage, err);
    lr_vm_close(L);
    return 1;
  }
  lr_server *s = lr_server_new(L, st, true, false, 0);
  s->rules = &lr_bridge_rules;
  lr_uplink_install(s);
  if (server_setup(c, s) != 0) return 2;
  if (start_runtime(c, L, s, lua_dir) != 0) return 1;
  hup_ctx hup = {.s = s, .dir = c->dir, .rooms = !c->shard_main || c->dir_given};
  c->no.on_hup = on_hup;
  c->no.on_hup_arg = &hup;
  rc = lr_net_run(s, &c->no) == 0 ? 0 : 1; /* the exit status */
  return serve_stop(c, L, s, st, rc);
}

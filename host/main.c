/*
 * main.c - the lunaroom command line: `serve`, `test`, `check`.
 *
 * Owns: argument parsing, defaults, wiring the Lua state, the storage, the
 * engine and the transport together, and the exit status.
 * Must not: contain engine or transport logic.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <libwebsockets.h>
#include <lualib.h>
#include <sqlite3.h>

#include "bridge.h"
#include "engine.h"
#include "fetch.h"
#include "log.h"
#include "lua_vm.h"
#include "net.h"
#include "storage_postgres.h"
#include "reload.h"
#include "shard.h"
#include "cluster.h"
#include "uplink.h"

void lr_lua_push_server(lua_State *L, lr_server *s, bool owned);

static const char *usage =
    "usage: lunaroom <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve [ROOMS_DIR]     serve the rooms in ROOMS_DIR (default rooms/) over HTTP and "
    "WebSocket\n"
    "  test [busted args]    run busted specs (default spec/) inside the host, headless;\n"
    "                        --watch: run them again on every save of a room file, module\n"
    "                        or spec (only the specs that use it, when that can be told)\n"
    "  check [ROOMS_DIR]     compile and validate every room file; non-zero exit on the first "
    "error\n"
    "  lua FILE [args]       run a Lua script with the host's modules (benchmarks, tools)\n"
    "  init DIR              write a new project in DIR: a room, its spec, lunaroom.lua, README\n"
    "  --version             print the versions of lunaroom, Lua, libwebsockets, SQLite, libjwt\n"
    "\n"
    "serve options:\n"
    "  --port N              listen port (default 1999; 0 = any free port)\n"
    "  --host ADDR           bind address (default: all interfaces)\n"
    "  --storage SPEC        sqlite:PATH[?busy_timeout=20&journal_mode=WAL&max_page_count=N]\n"
    "                        (default sqlite:data/lunaroom.sqlite; busy_timeout: ms one call may\n"
    "                        wait for a lock, 1-50), memory, or memory:SNAPSHOT.json\n"
    "                        (loaded at start if present, saved on graceful shutdown), or\n"
    "                        lua:BACKEND.lua (a storage backend written in Lua)\n"
    "                        postgres://USER@HOST:PORT/DB (PostgreSQL; libpq URL)\n"
    "  --cluster URL         postgres://...: storage there, and each room served by one node\n"
    "                        at a time under a lease (needs --node-url; SHARD_SECRET relays\n"
    "                        clients of rooms other nodes own to them)\n"
    "  --node-url URL        this node's address for the other nodes (http://HOST:PORT)\n"
    "  --lease-ms MS         cluster lease length (default 4000; renewed every MS/4)\n"
    "  --snapshot FILE       with --storage memory: the same as memory:FILE\n"
    "  --max-frame BYTES     largest incoming WebSocket message (default 65536)\n"
    "  --max-queue BYTES     outgoing bytes queued per connection before it is dropped (default "
    "4194304)\n"
    "  --static DIR          serve static files from DIR at /\n"
    "  --max-conns N         open WebSockets per process (default 20000; -1 = no limit)\n"
    "  --max-conns-per-ip N  open WebSockets per client address, direct or relayed by a shard\n"
    "                        (default 1024; -1 = no limit)\n"
    "  --max-http-per-ip N   open sockets not upgraded to WebSocket per address (default 256;\n"
    "                        -1 = no limit); past it: 429 and close\n"
    "  --body-timeout MS     a request body must be complete this long after its head\n"
    "                        (default 10000; not restarted by arriving bytes)\n"
    "  --msgs-per-ip N       WebSocket messages per second per client address over all its\n"
    "                        sockets, burst 2N; more are held back (default 2000; -1 = off)\n"
    "  --trusted-proxy LIST  comma-separated addresses/CIDRs of proxies whose X-Forwarded-For\n"
    "                        gives the client address (default: none, the TCP peer counts)\n"
    "  --max-rooms N         live rooms per process (default 100000)\n"
    "  --evict-after MS      dispose of a room idle this long with no connection and no\n"
    "                        timer (default 60000; 0 = never; room option evictAfter)\n"
    "  --room-create-rate R[,B]  rooms one client address may create per second, burst B\n"
    "                        (default 2,20; 0 = no limit)\n"
    "  --session-rate R[,B]  new sessions per client address per second, burst B (default\n"
    "                        10,100; 0 = no limit)\n"
    "  --lua-memory BYTES    Lua heap limit; handlers past it fail cleanly (default 1 GiB)\n"
    "  --shutdown-timeout MS on SIGTERM, how long failed storage writes are retried before\n"
    "                        the server exits with status 1 and logs what is lost (default 5000)\n"
    "  --no-watch            do not hot-reload room files when they change\n"
    "  --headers A,B         also pass these request headers to rooms (rooms declare theirs\n"
    "                        with headers = {...}; for a --shard process without room files)\n"
    "  --dev                 development mode: start even if a room file does not load (log\n"
    "                        it, serve the others); a save that fails to load is sent to\n"
    "                        that room type's clients ({\"type\":\"dev_error\",...}); never\n"
    "                        use in production\n"
    "  --jwt-require-exp     refuse JWTs without an exp claim (default: accepted, as the "
    "reference)\n"
    "  --log-format FMT      text (default) or json\n"
    "  --config FILE         a Lua file returning a table of these options (port = 2000,\n"
    "                        storage = \"memory\", rooms = \"rooms\", ...); flags win\n"
    "  --lua-path DIR        where the lunaroom Lua modules live (default: ../share/lunaroom/lua\n"
    "                        next to the binary, else the source tree's lua/)\n"
    "  --tls-cert FILE       serve https:// and wss:// with this PEM certificate (chain)\n"
    "  --tls-key FILE        the certificate's PEM private key (both re-read on SIGHUP)\n"
    "  --lua-modules DIR[:DIR...]  pure-Lua modules room code may require (a LuaRocks\n"
    "                        tree: luarocks --tree DIR install ...); also for test and check\n"
    "  --tls-ca FILE         CA bundle that outgoing https:// and wss:// links (shards, world,\n"
    "                        fetch) verify their peer against (default: the system's CAs)\n"
    "\n"
    "world and shards (README \"World and shards\"):\n"
    "  --world               also serve the world room (party world, world-{id}); needs\n"
    "                        AUTH_JWT_SECRET and SHARD_SECRET in the environment\n"
    "  --world-cleanup-interval MS  how often the world drops silent shards (default 60000)\n"
    "  --world-shard-timeout MS     a shard silent this long is dropped (default 300000)\n"
    "  --shard MAIN_URL      run as a shard process relaying /parties/shard/{id} to the main\n"
    "                        server at MAIN_URL (http://host:port); needs SHARD_SECRET; serves\n"
    "                        no rooms unless ROOMS_DIR is given\n"
    "  --world-url URL       where a shard reports (/update-shard) and forwards /parties/world\n"
    "                        (default: MAIN_URL)\n"
    "  --world-id ID         the world a shard reports to (default: from the shard id, else\n"
    "                        WORLD_ID, else world-default)\n"
    "  --stats-interval MS   a shard's periodic report (default 30000; 0 = only on changes)\n"
    "  --help                this text\n";

/* Where the Lua half of the runtime is: $LUNAROOM_LUA_PATH, else
 * ../share/lunaroom/lua next to the binary (an installed lunaroom, found
 * through /proc/self/exe so no build-machine path matters), else ./lua and
 * the source tree's lua/ (a build tree). */
static int lua_dir_ok(const char *dir) {
  char f[4200];
  struct stat st;
  snprintf(f, sizeof f, "%s/lunaroom/init.lua", dir);
  return stat(f, &st) == 0;
}

static const char *default_lua_dir(void) {
  static char buf[4096];
  const char *env = getenv("LUNAROOM_LUA_PATH");
  if (env && *env) return env;
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) {
      *slash = 0;
      char share[4200];
      snprintf(share, sizeof share, "%s/../share/lunaroom/lua", exe);
      char *real = lua_dir_ok(share) ? realpath(share, NULL) : NULL;
      if (real) {
        snprintf(buf, sizeof buf, "%s", real);
        free(real);
        return buf;
      }
    }
  }
  if (lua_dir_ok("lua")) return "lua";
  snprintf(buf, sizeof buf, "%s/lua", LR_SOURCE_DIR);
  return buf;
}

/* Call require(mod) and leave the module on the stack; 0 on success. */
static int require_mod(lua_State *L, const char *mod) {
  lua_getglobal(L, "require");
  lua_pushstring(L, mod);
  lr_callinfo ci = {.what = mod};
  return lr_vm_pcall(L, 1, 1, &ci);
}

/* --lua-modules DIR[:DIR...] (a LuaRocks tree: its share/lua/5.4; else the
 * folder itself): where room code's require looks after the rooms folder. */
static const char *lua_modules;

static lua_State *open_vm(const char *lua_dir, size_t mem_limit) {
  lua_State *L = lr_vm_open(lua_dir, mem_limit);
  if (!L || !lua_modules) return L;
  if (require_mod(L, "lunaroom.sandbox") != 0) return L;
  lua_getfield(L, -1, "set_module_dirs");
  lua_newtable(L);
  int n = 0;
  for (const char *p = lua_modules; *p;) { /* DIR[:DIR...] */
    size_t len = strcspn(p, ":");
    char dir[4096], tree[4200];
    struct stat st;
    snprintf(dir, sizeof dir, "%.*s", (int)len, p);
    snprintf(tree, sizeof tree, "%s/share/lua/5.4", dir);
    if (len) {
      lua_pushstring(L, stat(tree, &st) == 0 && S_ISDIR(st.st_mode) ? tree : dir);
      lua_rawseti(L, -2, ++n);
    }
    p += len + (p[len] == ':');
  }
  lr_callinfo ci = {.what = "--lua-modules"};
  lr_vm_pcall(L, 1, 0, &ci);
  lua_pop(L, 1);
  return L;
}

static int traceback(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

/* lunaroom test --watch [args]: lua/lunaroom/watch.lua re-runs the specs
 * (each run a child `lunaroom test`) on every save. */
static int cmd_test_watch(int argc, char **argv, const char *lua_dir) {
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) {
    fprintf(stderr, "lunaroom test --watch: cannot find the lunaroom binary\n");
    return 2;
  }
  exe[n] = 0;
  signal(SIGINT, SIG_DFL); /* Ctrl-C ends it, even if started with SIGINT ignored */
  lua_State *L = lr_vm_open(lua_dir, 0);
  /* Not room code, and it runs until Ctrl-C: a plain pcall, no budget. */
  lua_pushcfunction(L, traceback);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "lunaroom.watch");
  int rc = lua_pcall(L, 1, 1, 1);
  if (rc == LUA_OK) {
    lua_getfield(L, -1, "main");
    lua_pushstring(L, exe);
    lua_pushstring(L, lua_dir);
    lua_createtable(L, argc, 0);
    for (int i = 0, k = 0; i < argc; i++) {
      if (strcmp(argv[i], "--watch") == 0) continue;
      lua_pushstring(L, argv[i]);
      lua_rawseti(L, -2, ++k);
    }
    rc = lua_pcall(L, 3, 1, 1);
  }
  if (rc != LUA_OK) fprintf(stderr, "lunaroom test --watch: %s\n", lua_tostring(L, -1));
  int status = rc != LUA_OK ? 2 : (int)lua_tointeger(L, -1);
  lr_vm_close(L);
  return status;
}

static int cmd_test(int argc, char **argv, const char *lua_dir) {
  for (int i = 0; i < argc; i++)
    if (strcmp(argv[i], "--watch") == 0) return cmd_test_watch(argc, argv, lua_dir);
  /* Line by line even into a pipe (test --watch reads it): busted ends a
   * failing run with os.exit, and an exit that skips stdio (LeakSanitizer's)
   * must not lose the summary. */
  setvbuf(stdout, NULL, _IOLBF, 0);
  lua_State *L = open_vm(lua_dir, 0);
  if (!L) {
    fprintf(stderr, "lunaroom: cannot create a Lua state\n");
    return 2;
  }
  /* Specs read log lines through lunaroom.testing (capture); set
   * LUNAROOM_LOG=1 to see them on stderr instead. */
  if (getenv("LUNAROOM_LOG"))
    lr_log_set_level(LR_LOG_DEBUG);
  else
    lr_log_capture(1);
  /* busted reads its command line from the global `arg`. */
  lua_createtable(L, argc, 1);
  lua_pushstring(L, "lunaroom test");
  lua_rawseti(L, -2, 0);
  int n = 0;
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, ++n);
  }
  if (n == 0) {
    lua_pushstring(L, "spec");
    lua_rawseti(L, -2, ++n);
  }
  lua_setglobal(L, "arg");
  const char *boot = "require('busted.runner')({ standalone = false })";
  int rc = luaL_loadbuffer(L, boot, strlen(boot), "@lunaroom-test");
  if (rc == LUA_OK) {
    /* The runner itself is not room code: no budget and no undo log, so
     * every room call a spec makes is an outermost call with its own
     * budget, exactly as under the event loop. */
    lua_pushcfunction(L, traceback);
    lua_insert(L, -2);
    rc = lua_pcall(L, 0, 0, -2);
    if (rc != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  } else {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
  }
  lr_vm_close(L);
  return rc == LUA_OK ? 0 : 1;
}

/* lunaroom lua FILE [args]: run a Lua script with the host's modules (for
 * benchmarks and tools). */
static int cmd_lua(int argc, char **argv, const char *lua_dir) {
  if (argc < 1) {
    fprintf(stderr, "usage: lunaroom lua FILE [args]\n");
    return 2;
  }
  lua_State *L = open_vm(lua_dir, 0);
  lua_createtable(L, argc, 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setglobal(L, "arg");
  lr_log_set_level(getenv("LUNAROOM_LOG") ? LR_LOG_DEBUG : LR_LOG_WARN);
  int rc = luaL_loadfile(L, argv[0]);
  if (rc == LUA_OK) {
    lua_pushcfunction(L, traceback);
    lua_insert(L, -2);
    rc = lua_pcall(L, 0, 0, -2);
  }
  if (rc != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  lr_vm_close(L);
  return rc == LUA_OK ? 0 : 1;
}

static int cmd_check(const char *dir, const char *lua_dir) {
  lua_State *L = open_vm(lua_dir, 0);
  if (require_mod(L, "lunaroom.sandbox") != 0) return 2;
  int sandbox = lua_gettop(L);
  /* reload.check_file: the load a hot reload does, errors with file:line. */
  if (require_mod(L, "lunaroom.reload") != 0) return 2;
  int reload = lua_gettop(L);
  lua_getfield(L, sandbox, "list_rooms");
  lua_pushstring(L, dir);
  lr_callinfo ci = {.what = "check"};
  if (lr_vm_pcall(L, 1, 2, &ci) != 0 || !lua_istable(L, -2)) {
    fprintf(stderr, "lunaroom check: %s\n", lua_tostring(L, -1));
    lr_vm_close(L);
    return 2;
  }
  lua_pop(L, 1);
  int files = lua_gettop(L);
  lua_newtable(L); /* "party path" -> the file that serves it */
  int owners = lua_gettop(L);
  int status = 0, rooms = 0;
  lua_Integer nfiles = (lua_Integer)lua_rawlen(L, files);
  for (lua_Integer i = 1; i <= nfiles && status == 0; i++) {
    lua_rawgeti(L, files, i);
    const char *path = lua_tostring(L, -1);
    lua_getfield(L, reload, "check_file");
    lua_pushvalue(L, -2);
    lua_pushstring(L, dir);
    lr_callinfo c2 = {.what = "check"};
    if (lr_vm_pcall(L, 2, 2, &c2) != 0) {
      fprintf(stderr, "%s\n", c2.err);
      status = 1;
    } else if (lua_isnil(L, -2)) {
      const char *err = lua_tostring(L, -1);
      if (err && strcmp(err, "not a room") == 0) {
        printf("%s: module (not a room)\n", path);
      } else {
        fprintf(stderr, "%s\n", err ? err : "unknown error");
        status = 1;
      }
    } else {
      lua_getfield(L, -2, "path");
      lua_getfield(L, -3, "party");
      lua_pushfstring(L, "%s %s", lua_tostring(L, -1), lua_tostring(L, -2));
      lua_pushvalue(L, -1);
      lua_rawget(L, owners);
      if (lua_isstring(L, -1)) {
        fprintf(stderr, "%s: path '%s' (party %s) is already served by %s\n", path,
                lua_tostring(L, -4), lua_tostring(L, -3), lua_tostring(L, -1));
        status = 1;
      } else {
        lua_pushvalue(L, -2);
        lua_pushstring(L, path);
        lua_rawset(L, owners);
        printf("%s: ok (path %s, version %s)\n", path, lua_tostring(L, -4), lua_tostring(L, -5));
        rooms++;
      }
      lua_pop(L, 4);
    }
    lua_pop(L, 3);
  }
  if (status == 0) printf("%d room(s) ok\n", rooms);
  lr_vm_close(L);
  return status;
}

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

static int cmd_serve(int argc, char **argv, const char *lua_dir) {
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
    int rc = cmd_serve(argc + 2, with, lua_dir);
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
  if (require_mod(L, "lunaroom.sandbox") != 0) return -1;
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
  if (require_mod(L, "lunaroom.reload") == 0 &&
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

static int cmd_serve_args(int argc, char **argv, const char *lua_dir) {
  const char *dir = "rooms", *storage = "sqlite:data/lunaroom.sqlite", *snapshot = NULL;
  char storage_buf[4096];
  int watch = 1, world = 0, dir_given = 0, dev = 0;
  const char *headers = NULL; /* --headers a,b: request headers to copy (server.h) */
  const char *shard_main = NULL, *world_url = NULL, *world_id = NULL;
  const char *cleanup_ms = getenv("WORLD_CLEANUP_INTERVAL_MS");
  const char *timeout_ms = getenv("WORLD_SHARD_TIMEOUT_MS");
  long long stats_ms = 0;
  long max_rooms = 0;
  long long evict_after = -1;
  const char *room_rate = NULL, *session_rate = NULL;
  const char *tls_ca = NULL;
  long long shutdown_ms = 5000;
  /* --cluster: rooms spread over nodes on one PostgreSQL (storage_postgres.h) */
  const char *cluster = NULL, *node_url = NULL;
  long long lease_ms = 0;
  size_t lua_memory = (size_t)1 << 30;
  lr_net_opts no;
  lr_net_defaults(&no);
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--port") == 0 && v)
      no.port = atoi(argv[++i]);
    else if (strcmp(a, "--host") == 0 && v)
      no.host = argv[++i];
    else if (strcmp(a, "--storage") == 0 && v)
      storage = argv[++i];
    else if (strcmp(a, "--snapshot") == 0 && v)
      snapshot = argv[++i];
    else if (strcmp(a, "--cluster") == 0 && v)
      cluster = argv[++i];
    else if (strcmp(a, "--node-url") == 0 && v)
      node_url = argv[++i];
    else if (strcmp(a, "--lease-ms") == 0 && v)
      lease_ms = atoll(argv[++i]);
    else if (strcmp(a, "--max-frame") == 0 && v)
      no.max_frame = (size_t)atoll(argv[++i]);
    else if (strcmp(a, "--max-queue") == 0 && v)
      no.max_queue_bytes = (size_t)atoll(argv[++i]);
    else if (strcmp(a, "--static") == 0 && v)
      no.static_dir = argv[++i];
    else if (strcmp(a, "--max-conns") == 0 && v)
      no.max_conns = atol(argv[++i]);
    else if (strcmp(a, "--max-conns-per-ip") == 0 && v)
      no.max_conns_per_ip = atol(argv[++i]);
    else if (strcmp(a, "--max-http-per-ip") == 0 && v)
      no.max_http_per_ip = atol(argv[++i]);
    else if (strcmp(a, "--body-timeout") == 0 && v)
      no.body_timeout_ms = atol(argv[++i]);
    else if (strcmp(a, "--msgs-per-ip") == 0 && v)
      no.msgs_per_ip = atol(argv[++i]);
    else if (strcmp(a, "--trusted-proxy") == 0 && v)
      no.trusted_proxies = argv[++i];
    else if (strcmp(a, "--max-rooms") == 0 && v)
      max_rooms = atol(argv[++i]);
    else if (strcmp(a, "--evict-after") == 0 && v)
      evict_after = atoll(argv[++i]);
    else if (strcmp(a, "--room-create-rate") == 0 && v)
      room_rate = argv[++i];
    else if (strcmp(a, "--session-rate") == 0 && v)
      session_rate = argv[++i];
    else if (strcmp(a, "--shutdown-timeout") == 0 && v)
      shutdown_ms = atoll(argv[++i]);
    else if (strcmp(a, "--lua-memory") == 0 && v)
      lua_memory = (size_t)atoll(argv[++i]);
    else if (strcmp(a, "--log-format") == 0 && v)
      lr_log_set_json(strcmp(argv[++i], "json") == 0);
    else if (strcmp(a, "--no-watch") == 0)
      watch = 0;
    else if (strcmp(a, "--dev") == 0)
      dev = 1;
    else if (strcmp(a, "--headers") == 0 && v)
      headers = argv[++i];
    else if (strcmp(a, "--jwt-require-exp") == 0)
      setenv("AUTH_JWT_REQUIRE_EXP", "1", 1); /* read by lr.jwt.verify (lua_jwt.c) */
    else if (strcmp(a, "--world") == 0)
      world = 1;
    else if (strcmp(a, "--world-cleanup-interval") == 0 && v)
      cleanup_ms = argv[++i];
    else if (strcmp(a, "--world-shard-timeout") == 0 && v)
      timeout_ms = argv[++i];
    else if (strcmp(a, "--shard") == 0 && v)
      shard_main = argv[++i];
    else if (strcmp(a, "--world-url") == 0 && v)
      world_url = argv[++i];
    else if (strcmp(a, "--world-id") == 0 && v)
      world_id = argv[++i];
    else if (strcmp(a, "--tls-cert") == 0 && v)
      no.tls_cert = argv[++i];
    else if (strcmp(a, "--tls-key") == 0 && v)
      no.tls_key = argv[++i];
    else if (strcmp(a, "--tls-ca") == 0 && v)
      tls_ca = argv[++i];
    else if (strcmp(a, "--lua-modules") == 0 && v)
      lua_modules = argv[++i];
    else if (strcmp(a, "--stats-interval") == 0 && v) {
      stats_ms = atoll(argv[++i]);
      if (stats_ms <= 0) stats_ms = -1; /* only reports on changes */
    } else if (a[0] != '-') {
      dir = a;
      dir_given = 1;
    } else {
      fprintf(stderr, "lunaroom serve: unknown option %s\n\n%s", a, usage);
      return 2;
    }
  }
  if (snapshot) {
    if (strcmp(storage, "memory") != 0) {
      fprintf(stderr, "lunaroom serve: --snapshot %s needs --storage memory (storage is %s)\n",
              snapshot, storage);
      return 2;
    }
    snprintf(storage_buf, sizeof storage_buf, "memory:%s", snapshot);
    storage = storage_buf;
  }
  if (cluster || node_url || lease_ms) {
    if (!cluster || !node_url ||
        (strncmp(cluster, "postgres://", 11) != 0 && strncmp(cluster, "postgresql://", 13) != 0)) {
      fprintf(stderr, "lunaroom serve: --cluster postgres://... and --node-url http://HOST:PORT go "
                      "together\n");
      return 2;
    }
    if (lease_ms < 0 || (lease_ms > 0 && lease_ms < 400)) {
      fprintf(stderr, "lunaroom serve: --lease-ms must be at least 400\n");
      return 2;
    }
  }
  /* World and shards refuse to run unauthenticated (design.md §8). */
  const char *need[2] = {world ? "AUTH_JWT_SECRET" : NULL,
                         world || shard_main ? "SHARD_SECRET" : NULL};
  for (int k = 0; k < 2; k++) {
    const char *e = need[k] ? getenv(need[k]) : NULL;
    if (need[k] && (!e || !*e)) {
      fprintf(stderr,
              "lunaroom serve: %s is not set; %s needs it (export %s=<a long random secret>, "
              "the same on every process of the world)\n",
              need[k], world ? "--world" : "--shard", need[k]);
      return 2;
    }
  }
  if (!no.tls_cert != !no.tls_key) {
    fprintf(stderr, "lunaroom serve: --tls-cert and --tls-key go together\n");
    return 2;
  }
  lr_fetch_set_tls_ca(tls_ca);
  char err[256];
  lua_State *L = open_vm(lua_dir, lua_memory);
  lr_store *st = NULL;
  if (cluster) {
    lr_pg_opts po = {.conninfo = cluster, .node_id = node_url, .lease_ms = lease_ms};
    storage = cluster;
    st = lr_store_postgres_open(&po, err, sizeof err);
    if (st)
      lr_info("cluster node %s: lease %lld ms, renewed every %lld ms", node_url,
              lease_ms > 0 ? lease_ms : (long long)LR_PG_LEASE_DEFAULT,
              (lease_ms > 0 ? lease_ms : (long long)LR_PG_LEASE_DEFAULT) / 4);
  } else {
    st = strncmp(storage, "lua:", 4) == 0 ? lr_store_lua_open(L, storage + 4, err, sizeof err)
                                          : lr_store_open_spec(storage, err, sizeof err);
  }
  if (!st) {
    lr_error("cannot open storage %s: %s", storage, err);
    lr_vm_close(L);
    return 1;
  }
  lr_server *s = lr_server_new(L, st, true, false, 0);
  s->rules = &lr_bridge_rules;
  lr_uplink_install(s);
  if (max_rooms) s->max_rooms = max_rooms;
  for (const char *p = headers; p && *p;) {
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
  if (evict_after >= 0) s->evict_after = evict_after;
  if (room_rate) set_rate(s->room_rate, room_rate);
  if (session_rate) set_rate(s->session_rate, session_rate);
  lr_fetch_lua_register(L, s); /* remote session transfers (runtime.lua) */
  if (require_mod(L, "lunaroom.runtime") != 0) return 1;
  int rt = lua_gettop(L);
  /* srv = runtime.new_server(handle, {env = {...}}) */
  lua_getfield(L, rt, "new_server");
  lr_lua_push_server(L, s, false);
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
  if (cluster) { /* runtime.lua: rooms are created under a lease only (cluster.c) */
    lua_pushstring(L, node_url);
    lua_setfield(L, -2, "LUNAROOM_CLUSTER");
  }
  /* The world's cleanup timings (lua/lunaroom/world.lua reads room.env). */
  if (cleanup_ms) {
    lua_pushstring(L, cleanup_ms);
    lua_setfield(L, -2, "WORLD_CLEANUP_INTERVAL_MS");
  }
  if (timeout_ms) {
    lua_pushstring(L, timeout_ms);
    lua_setfield(L, -2, "WORLD_SHARD_TIMEOUT_MS");
  }
  lua_setfield(L, -2, "env");
  lr_callinfo ci = {.what = "startup"};
  if (lr_vm_pcall(L, 2, 1, &ci) != 0) return 1;
  int srv = lua_gettop(L);
  if (dev) { /* development mode: reload.lua sends failed saves to clients */
    lua_pushboolean(L, 1);
    lua_setfield(L, srv, "dev");
    lr_info("development mode: a save that fails to load is shown to the room's clients");
  }
  if (world && add_world(L, rt, srv, lua_dir) != 0) return 1;
  lua_settop(L, srv);
  if (!shard_main || dir_given) {
    lua_getfield(L, rt, "load_dir");
    lua_pushvalue(L, srv);
    lua_pushstring(L, dir);
    if (lr_vm_pcall(L, 2, 2, &ci) != 0) return 1;
    if (lua_isnil(L, -2)) {
      lr_error("cannot load rooms from %s: %s", dir, lua_tostring(L, -1));
      return 1;
    }
    /* A room file that does not load (or serves a path another file
     * serves) stops a production start; --dev serves the others. */
    lua_Integer nerr = lua_istable(L, -1) ? (lua_Integer)lua_rawlen(L, -1) : 0;
    if (nerr > 0 && !dev) {
      lr_error("not starting: %lld room file(s) in %s did not load (see above; --dev serves the "
               "others)",
               (long long)nerr, dir);
      return 1;
    }
    lr_info("%lld room definition(s) from %s, storage %s", (long long)lua_tointeger(L, -2), dir,
            storage);
    lr_reload_set_fd_watch(reload_watch_fd, reload_unwatch_fd); /* a save wakes the loop */
    if (watch) lr_reload_watch(s, srv, dir); /* hot reload; logs and goes on if it cannot */
  }
  if (shard_main) {
    lr_shard_opts so = {.main_url = shard_main,
                        .world_url = world_url,
                        .world_id = world_id,
                        .stats_interval_ms = stats_ms,
                        .forward_world = !world,
                        .max_frame = no.max_frame};
    if (lr_shard_enable(s, &so, err, sizeof err) != 0) {
      lr_error("%s", err);
      return 1;
    }
  }
  if (cluster) { /* any node serves any client: relay rooms owned elsewhere (cluster.c) */
    const char *sec = getenv("SHARD_SECRET");
    lr_cluster_opts co = {.node_url = node_url, .max_frame = no.max_frame};
    if (!sec || !*sec)
      lr_warn("cluster: SHARD_SECRET is not set: clients of rooms other nodes own are refused "
              "(4409, 409) instead of relayed");
    else if (lr_cluster_enable(s, &co, err, sizeof err) != 0) {
      lr_error("%s", err);
      return 1;
    }
  }
  lua_settop(L, 0);
  hup_ctx hup = {.s = s, .dir = dir, .rooms = !shard_main || dir_given};
  no.on_hup = on_hup;
  no.on_hup_arg = &hup;
  int rc = lr_net_run(s, &no);
  lr_server_shutdown(s);
  /* Writes that failed (a full disk, a locked file) and a Lua backend's
   * writes behind its cache: retry them for a bounded time (timers and HTTP
   * keep running). What is left is lost: exit 1, and each room is logged with
   * its unwritten keys when it is disposed (lr_server_free) or when the Lua
   * store closes. */
  long left = lr_server_retry_unwritten(s);
  if (left > 0 || lr_store_pending(st) > 0) {
    lr_warn("shutdown: %ld room(s) with unwritten changes and %ld write batch(es) behind the "
            "storage; retrying for up to %lld ms",
            left, lr_store_pending(st), shutdown_ms);
    int64_t end = lr_now(s) + shutdown_ms, next_try = lr_now(s) + 100;
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
               shutdown_ms, left, lr_store_pending(st));
      rc = 1;
    } else {
      lr_info("shutdown: every pending write is stored");
    }
  }
  lr_fetch_flush(1000); /* a shard's last reports and uplink closes */
  lr_shard_free(s);
  lr_cluster_free(s);
  lr_fetch_shutdown();
  if (strncmp(storage, "memory:", 7) == 0) {
    /* A memory store seeded from a snapshot file is saved back on shutdown. */
    if (lr_store_memory_save(st, NULL, err, sizeof err) != 0) {
      lr_error("cannot save the memory snapshot: %s", err);
      rc = 1;
    } else {
      lr_info("memory snapshot saved to %s", storage + 7);
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

/* lunaroom init DIR: a new project (lua/lunaroom/scaffold.lua has the
 * files). DIR must not exist or be empty: nothing is overwritten. */
static int cmd_init(int argc, char **argv, const char *lua_dir) {
  if (argc != 1 || argv[0][0] == '-') {
    fprintf(stderr, "usage: lunaroom init DIR\n");
    return 2;
  }
  const char *dir = argv[0];
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    int used = 0;
    while ((e = readdir(d)))
      if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) used = 1;
    closedir(d);
    if (used) {
      fprintf(stderr, "lunaroom init: %s is not empty; nothing written\n", dir);
      return 1;
    }
  } else if (mkdir(dir, 0777) != 0) {
    fprintf(stderr, "lunaroom init: cannot create %s: %s\n", dir, strerror(errno));
    return 1;
  }
  const char *sub[] = {"rooms", "spec"};
  for (size_t i = 0; i < 2; i++) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, sub[i]);
    if (mkdir(p, 0777) != 0) {
      fprintf(stderr, "lunaroom init: cannot create %s: %s\n", p, strerror(errno));
      return 1;
    }
  }
  lua_State *L = open_vm(lua_dir, 0);
  int rc = 1;
  if (require_mod(L, "lunaroom.scaffold") == 0) {
    lua_getfield(L, -1, "write");
    lua_pushstring(L, dir);
    lr_callinfo ci = {.what = "init"};
    if (lr_vm_pcall(L, 1, 2, &ci) == 0) {
      if (lua_toboolean(L, -2)) {
        printf("wrote a new project in %s:\n  rooms/counter.lua  spec/counter_spec.lua  "
               "lunaroom.lua  README.md\nnext: cd %s && lunaroom test && lunaroom serve\n",
               dir, dir);
        rc = 0;
      } else {
        fprintf(stderr, "lunaroom init: %s\n", lua_tostring(L, -1));
      }
    }
  }
  lr_vm_close(L);
  return rc;
}

/* lunaroom --version */
static int cmd_version(void) {
  printf("lunaroom %s\n", LR_VERSION);
  printf("  %s\n", LUA_RELEASE);
  printf("  libwebsockets %s\n", lws_get_library_version());
  printf("  SQLite %s\n", sqlite3_libversion());
  printf("  libjwt %s (built against)\n", LR_JWT_VERSION);
  char *real = realpath(default_lua_dir(), NULL);
  printf("  Lua runtime: %s\n", real ? real : default_lua_dir());
  free(real);
  return 0;
}

int main(int argc, char **argv) {
  const char *lua_dir = default_lua_dir();
  if (argc >= 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0))
    return cmd_version();
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  /* --lua-path anywhere after the command; --lua-modules too, except for
   * serve, which reads it with its other options (it may come from
   * --config). */
  for (int i = 2; i + 1 < argc; i++) {
    if (strcmp(argv[i], "--lua-path") == 0) {
      lua_dir = argv[i + 1];
      memmove(&argv[i], &argv[i + 2], (size_t)(argc - i - 2) * sizeof *argv);
      argc -= 2;
      break;
    }
  }
  for (int i = 2; i + 1 < argc && strcmp(argv[1], "serve") != 0; i++) {
    if (strcmp(argv[i], "--lua-modules") == 0) {
      lua_modules = argv[i + 1];
      memmove(&argv[i], &argv[i + 2], (size_t)(argc - i - 2) * sizeof *argv);
      argc -= 2;
      break;
    }
  }
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0) {
      fputs(usage, stdout);
      return 0;
    }
  }
  if (strcmp(argv[1], "serve") == 0) return cmd_serve(argc - 2, argv + 2, lua_dir);
  if (strcmp(argv[1], "test") == 0) return cmd_test(argc - 2, argv + 2, lua_dir);
  if (strcmp(argv[1], "lua") == 0) return cmd_lua(argc - 2, argv + 2, lua_dir);
  if (strcmp(argv[1], "check") == 0) return cmd_check(argc > 2 ? argv[2] : "rooms", lua_dir);
  if (strcmp(argv[1], "init") == 0) return cmd_init(argc - 2, argv + 2, lua_dir);
  fprintf(stderr, "lunaroom: unknown command %s\n\n%s", argv[1], usage);
  return 2;
}

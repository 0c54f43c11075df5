/*
 * cli.c - the lunaroom command's drivers other than serve (serve.c): test
 * (and test --watch), lua, check, init, version; the help text; and what
 * every driver shares: where the Lua runtime is, opening a Lua state with
 * the --lua-modules folders, require through the protected call.
 *
 * Owns: those drivers and helpers (cli.h).
 * Must not: contain engine, transport or room logic, or parse serve's
 * options (serve.c).
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

#include "cli.h"
#include "log.h"
#include "lua_vm.h"

const char *lr_cli_lua_modules;

const char *const lr_cli_usage =
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
    "  --ws-ping MS          ping a WebSocket nothing arrived on (no message, no pong) for\n"
    "                        this long (default 30000; 0 = never)\n"
    "  --ws-hangup MS        hang up a WebSocket nothing arrived on for this long, without a\n"
    "                        close frame (default 75000; 0 = never, and no ping)\n"
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
    "  --max-waiting N       handlers waiting for I/O at once in the process (lunaroom.io,\n"
    "                        fetch); past it a wait fails with code busy (default 10000,\n"
    "                        else $LUNAROOM_MAX_WAITING; per room: waits.max)\n"
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
  char f[4400]; /* dir is at most 4200 (the share path below) */
  struct stat st;
  snprintf(f, sizeof f, "%s/lunaroom/init.lua", dir);
  return stat(f, &st) == 0;
}

const char *lr_cli_default_lua_dir(void) {
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
int lr_cli_require(lua_State *L, const char *mod) {
  lua_getglobal(L, "require");
  lua_pushstring(L, mod);
  lr_callinfo ci = {.what = mod};
  return lr_vm_pcall(L, 1, 1, &ci);
}

/* A Lua state whose room code's require also looks in the --lua-modules
 * folders (lr_cli_lua_modules). */
lua_State *lr_cli_open_vm(const char *lua_dir, size_t mem_limit) {
  lua_State *L = lr_vm_open(lua_dir, mem_limit);
  if (!L || !lr_cli_lua_modules) return L;
  if (lr_cli_require(L, "lunaroom.sandbox") != 0) return L;
  lua_getfield(L, -1, "set_module_dirs");
  lua_newtable(L);
  int n = 0;
  for (const char *p = lr_cli_lua_modules; *p;) { /* DIR[:DIR...] */
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

int lr_cli_traceback(lua_State *L) {
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
  lua_pushcfunction(L, lr_cli_traceback);
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

int lr_cmd_test(int argc, char **argv, const char *lua_dir) {
  for (int i = 0; i < argc; i++)
    if (strcmp(argv[i], "--watch") == 0) return cmd_test_watch(argc, argv, lua_dir);
  /* Line by line even into a pipe (test --watch reads it): busted ends a
   * failing run with os.exit, and an exit that skips stdio (LeakSanitizer's)
   * must not lose the summary. */
  setvbuf(stdout, NULL, _IOLBF, 0);
  lua_State *L = lr_cli_open_vm(lua_dir, 0);
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
    lua_pushcfunction(L, lr_cli_traceback);
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
int lr_cmd_lua(int argc, char **argv, const char *lua_dir) {
  if (argc < 1) {
    fprintf(stderr, "usage: lunaroom lua FILE [args]\n");
    return 2;
  }
  lua_State *L = lr_cli_open_vm(lua_dir, 0);
  lua_createtable(L, argc, 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setglobal(L, "arg");
  lr_log_set_level(getenv("LUNAROOM_LOG") ? LR_LOG_DEBUG : LR_LOG_WARN);
  int rc = luaL_loadfile(L, argv[0]);
  if (rc == LUA_OK) {
    lua_pushcfunction(L, lr_cli_traceback);
    lua_insert(L, -2);
    rc = lua_pcall(L, 0, 0, -2);
  }
  if (rc != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  lr_vm_close(L);
  return rc == LUA_OK ? 0 : 1;
}

int lr_cmd_check(const char *dir, const char *lua_dir) {
  lua_State *L = lr_cli_open_vm(lua_dir, 0);
  if (lr_cli_require(L, "lunaroom.sandbox") != 0) return 2;
  int sandbox = lua_gettop(L);
  /* reload.check_file: the load a hot reload does, errors with file:line. */
  if (lr_cli_require(L, "lunaroom.reload") != 0) return 2;
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

/* lunaroom init DIR: a new project (lua/lunaroom/scaffold.lua has the
 * files). DIR must not exist or be empty: nothing is overwritten. */
int lr_cmd_init(int argc, char **argv, const char *lua_dir) {
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
  lua_State *L = lr_cli_open_vm(lua_dir, 0);
  int rc = 1;
  if (lr_cli_require(L, "lunaroom.scaffold") == 0) {
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
int lr_cmd_version(void) {
  printf("lunaroom %s\n", LR_VERSION);
  printf("  %s\n", LUA_RELEASE);
  printf("  libwebsockets %s\n", lws_get_library_version());
  printf("  SQLite %s\n", sqlite3_libversion());
  printf("  libjwt %s (built against)\n", LR_JWT_VERSION);
  char *real = realpath(lr_cli_default_lua_dir(), NULL);
  printf("  Lua runtime: %s\n", real ? real : lr_cli_default_lua_dir());
  free(real);
  return 0;
}

/*
 * reload.c - hot reload of room scripts: the inotify watcher of the rooms
 * folder and the C driver of reload transactions (see reload.h; the Lua half
 * is lua/lunaroom/reload.lua).
 *
 * Owns: the watcher userdata ("lunaroom.watcher": an inotify fd with one
 * watch per folder under the rooms folder, the changed *.lua paths of the
 * current burst, the debounce, its watch on the event loop), the engine
 * wake-up timer
 * while watching, and the order of the protected calls that make up one
 * reload.
 * Must not: interpret a change (which rooms a module affects, what a new
 * field means: reload.lua), write room state, call Lua other than through
 * the rules' counted call (lr_bridge_pcall; lr_vm_pcall only for a srv
 * table without a server), or block (the fd is non-blocking and read only by the loop
 * thread).
 *
 * Events. The watch mask is IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE |
 * IN_DELETE | IN_MOVED_FROM, which covers in-place writes (the event comes
 * when the writer closes the file), editors' atomic saves (write a temporary
 * file, rename it over the target: IN_MOVED_TO on the target's name),
 * creation and deletion. Only names ending in ".lua" and not starting with
 * '.' count, so swap files, backups ("game.lua~") and vim's "4913" probe are
 * ignored. A new sub-folder gets its own watch (modules may live in
 * rooms/lib/), and IN_Q_OVERFLOW asks reload.lua for a full rescan ("*").
 *
 * Timing. lr_reload_poll() runs on every lr_server_tick(). A real-clock
 * server with an fd watcher (lr_reload_set_fd_watch: the transport's
 * lr_net_watch_fd) has the inotify fd watched by the event loop itself:
 * when an event is queued the loop wakes, and the tick that follows reads
 * the fd. No thread, no periodic wake-up. A batch whose every path got a finished save (its last
 * event was IN_CLOSE_WRITE or IN_MOVED_TO) is reloaded on that very tick:
 * a save is live after the read, the load, the swap and the flush
 * (bench/reload_bench.mjs: p50 0.5 ms, p99 9 ms with 3 clients on a busy
 * 2-core machine; it was 41/74 ms with a 30 ms debounce and a 25 ms
 * periodic wake-up). Several writes before one close give one
 * IN_CLOSE_WRITE, so one reload. A batch with an unfinished path (created
 * but not yet closed, deleted, renamed away: an editor's backup step) or a
 * rescan waits until no event came for LR_RELOAD_DEBOUNCE_MS (at most
 * LR_RELOAD_MAX_DELAY_MS after its first event); one engine timer is armed
 * for that deadline, never closer than LR_RELOAD_MARGIN_MS (see rearm() for
 * the lws 4.1 pitfall this avoids). Without an fd watcher (or if the
 * watch cannot be made) the timer instead wakes the loop every
 * LR_RELOAD_WAKE_MS to read the fd. Under load the fd is read at most once
 * per millisecond unless the loop saw it readable. With a virtual clock
 * (specs) there is no watch, no timer and no margin: the spec drives time with advance() and calls
 * tick().
 *
 * Transaction. run_jobs() makes every step an outermost protected call
 * (lr_bridge_pcall: counted in the handler metrics like every call): plan
 * (which room files a batch of paths affects, deletions), then per room
 * file: prepare (compile + validate in a fresh _ENV, under
 * LR_RELOAD_LOAD_BUDGET: a runaway top level is stopped without touching
 * anything), commit (state migration of every live room of that file, then
 * the handler swap; a failure rolls back every state write of the commit
 * and nothing was swapped), after (the onReload hooks, each isolated), done
 * (the log line). Separate outermost calls give each step its own budget,
 * so a budget kill in one step cannot leave another half done.
 */
#include "reload.h"

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>

#include "bridge.h"
#include "buf.h"
#include "log.h"
#include "lua_api.h"
#include "lua_vm.h"

#define WATCH_MT "lunaroom.watcher"
#define WATCH_MASK (IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM)
#define WATCH_MAX_DEPTH 8
#define WATCH_MAX_PENDING 4096

typedef struct wdir {
  int wd;
  int depth; /* 0 for a root */
  char *rel; /* "" for the rooms folder, else "lib/" (always ends in '/') */
} wdir;

typedef struct lr_watch {
  int fd; /* -1 once closed */
  char *dir;
  wdir *wds;
  size_t nwds, capwds;
  char **pending; /* changed paths of the current burst, "dir/rel/name.lua" */
  bool *settled;  /* per pending path: its last event was a close or a rename onto it */
  size_t npending, cappending;
  bool rescan;               /* overflow or a new folder: reload.lua rescans */
  int64_t first_ms, last_ms; /* first and last event of the burst */
  int64_t wake_at;           /* when our wake-up timer is due (0 = none) */
  uint64_t wake_seq;         /* its engine timer id */
  int64_t drained_ms;        /* last read of the fd: at most one per ms under load */
  /* The loop's watch of fd (real clock only, see "Timing" above). */
  void *nw;   /* the transport's watch handle, NULL = none */
  bool ready; /* the loop saw fd readable since the last read */
} lr_watch;

/* How the transport watches a descriptor (lr_reload_set_fd_watch). */
static void *(*g_watch)(int fd, void (*cb)(void *ud, int revents), void *ud);
static void (*g_unwatch)(void *nw);

/* Open watchers in the process: lr_reload_poll's fast path when 0. */
static int g_open;

/* ------------------------------------------------------------- watcher */

static wdir *find_wd(lr_watch *w, int wd) {
  for (size_t i = 0; i < w->nwds; i++)
    if (w->wds[i].wd == wd) return &w->wds[i];
  return NULL;
}

static void forget_wd(lr_watch *w, int wd) {
  for (size_t i = 0; i < w->nwds; i++) {
    if (w->wds[i].wd != wd) continue;
    free(w->wds[i].rel);
    w->wds[i] = w->wds[--w->nwds];
    return;
  }
}

/* Watch dir/rel and, recursively, its sub-folders (not hidden ones, not
 * through symlinks, at most WATCH_MAX_DEPTH deep). rel is "" or ends in
 * '/'. Returns 0, or -1 with errno if dir/rel itself cannot be watched. */
static int add_dir(lr_watch *w, const char *rel, int depth) {
  lr_buf path;
  lr_buf_init(&path);
  lr_buf_printf(&path, "%s/%s", w->dir, rel);
  uint32_t mask = WATCH_MASK | IN_ONLYDIR | (depth > 0 ? IN_DONT_FOLLOW : 0);
  int wd = inotify_add_watch(w->fd, lr_buf_cstr(&path), mask);
  if (wd < 0) {
    int e = errno;
    lr_buf_free(&path);
    errno = e;
    return -1;
  }
  wdir *d = find_wd(w, wd);
  if (d) {
    free(d->rel);
  } else {
    if (w->nwds == w->capwds) {
      w->capwds = w->capwds ? w->capwds * 2 : 8;
      w->wds = lr_xrealloc(w->wds, w->capwds * sizeof *w->wds);
    }
    d = &w->wds[w->nwds++];
    d->wd = wd;
  }
  d->rel = lr_xstrndup(rel, strlen(rel));
  d->depth = depth;
  if (depth < WATCH_MAX_DEPTH) {
    DIR *dh = opendir(lr_buf_cstr(&path));
    struct dirent *e;
    while (dh && (e = readdir(dh))) {
      if (e->d_name[0] == '.') continue;
      bool isdir = e->d_type == DT_DIR;
      if (e->d_type == DT_UNKNOWN) {
        struct stat st;
        lr_buf sub;
        lr_buf_init(&sub);
        lr_buf_printf(&sub, "%s%s", lr_buf_cstr(&path), e->d_name);
        isdir = lstat(lr_buf_cstr(&sub), &st) == 0 && S_ISDIR(st.st_mode);
        lr_buf_free(&sub);
      }
      if (!isdir) continue;
      lr_buf sub;
      lr_buf_init(&sub);
      lr_buf_printf(&sub, "%s%s/", rel, e->d_name);
      if (add_dir(w, lr_buf_cstr(&sub), depth + 1) != 0)
        lr_warn("hot reload: cannot watch %s/%s: %s", w->dir, lr_buf_cstr(&sub), strerror(errno));
      lr_buf_free(&sub);
    }
    if (dh) closedir(dh);
  }
  lr_buf_free(&path);
  return 0;
}

/* Remove the watches of rel (ends in '/') and everything below it: a folder
 * moved out of the rooms folder keeps its inotify watch otherwise. */
static void drop_dir(lr_watch *w, const char *rel) {
  size_t n = strlen(rel);
  for (size_t i = w->nwds; i-- > 0;) {
    if (strncmp(w->wds[i].rel, rel, n) != 0) continue;
    inotify_rm_watch(w->fd, w->wds[i].wd);
    free(w->wds[i].rel);
    w->wds[i] = w->wds[--w->nwds];
  }
}

static void burst(lr_watch *w, int64_t now) {
  if (!w->npending && !w->rescan) w->first_ms = now;
  w->last_ms = now;
}

static void add_pending(lr_watch *w, const char *rel, const char *name, bool settled, int64_t now) {
  lr_buf p;
  lr_buf_init(&p);
  lr_buf_printf(&p, "%s/%s%s", w->dir, rel, name);
  const char *s = lr_buf_cstr(&p);
  burst(w, now);
  for (size_t i = 0; i < w->npending; i++) {
    if (strcmp(w->pending[i], s) == 0) {
      w->settled[i] = settled; /* the path's latest event decides */
      lr_buf_free(&p);
      return;
    }
  }
  if (w->npending >= WATCH_MAX_PENDING) { /* a mass change: rescan everything */
    w->rescan = true;
    lr_buf_free(&p);
    return;
  }
  if (w->npending == w->cappending) {
    w->cappending = w->cappending ? w->cappending * 2 : 8;
    w->pending = lr_xrealloc(w->pending, w->cappending * sizeof *w->pending);
    w->settled = lr_xrealloc(w->settled, w->cappending * sizeof *w->settled);
  }
  w->settled[w->npending] = settled;
  w->pending[w->npending++] = lr_xstrndup(s, p.len);
  lr_buf_free(&p);
}

static void on_event(lr_watch *w, const struct inotify_event *ev, int64_t now) {
  if (ev->mask & IN_Q_OVERFLOW) {
    burst(w, now);
    w->rescan = true;
    return;
  }
  wdir *d = find_wd(w, ev->wd);
  if (!d) return;
  if (ev->mask & IN_IGNORED) { /* the folder was deleted (or unmounted) */
    if (d->rel[0] == 0) lr_warn("hot reload: %s is gone, no longer watching it", w->dir);
    forget_wd(w, ev->wd);
    return;
  }
  if (!ev->len || ev->name[0] == '.') return;
  /* d may move when add_dir grows the array: copy rel first. */
  char *rel = lr_xstrndup(d->rel, strlen(d->rel));
  int depth = d->depth + 1;
  if (ev->mask & IN_ISDIR) {
    lr_buf sub;
    lr_buf_init(&sub);
    lr_buf_printf(&sub, "%s%s/", rel, ev->name);
    if ((ev->mask & (IN_CREATE | IN_MOVED_TO)) && depth <= WATCH_MAX_DEPTH) {
      if (add_dir(w, lr_buf_cstr(&sub), depth) != 0)
        lr_warn("hot reload: cannot watch %s/%s: %s", w->dir, lr_buf_cstr(&sub), strerror(errno));
    } else if (ev->mask & IN_MOVED_FROM) {
      drop_dir(w, lr_buf_cstr(&sub));
    }
    /* Modules may have appeared or disappeared with the folder. */
    burst(w, now);
    w->rescan = true;
    lr_buf_free(&sub);
  } else {
    size_t l = strlen(ev->name);
    /* A close after writing or a rename onto the name is a finished save;
     * a creation (the write is still to come), a deletion or a rename away
     * (an editor's backup step, often followed by a new file) waits for
     * the debounce. */
    bool settled = (ev->mask & (IN_CLOSE_WRITE | IN_MOVED_TO)) != 0;
    if (l > 4 && strcmp(ev->name + l - 4, ".lua") == 0) add_pending(w, rel, ev->name, settled, now);
  }
  free(rel);
}

/* Read every queued event without blocking. */
static void drain(lr_watch *w, int64_t now) {
  _Alignas(struct inotify_event) char buf[16384];
  for (;;) {
    ssize_t n = read(w->fd, buf, sizeof buf);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return; /* EAGAIN: nothing more queued */
    }
    for (char *p = buf; p < buf + n;) {
      const struct inotify_event *ev = (const struct inotify_event *)p;
      on_event(w, ev, now);
      p += sizeof *ev + ev->len;
    }
  }
}

static void watch_free(lr_watch *w) {
  if (w->nw && g_unwatch) g_unwatch(w->nw);
  w->nw = NULL;
  if (w->fd >= 0) {
    close(w->fd);
    w->fd = -1;
    g_open--;
  }
  for (size_t i = 0; i < w->nwds; i++)
    free(w->wds[i].rel);
  free(w->wds);
  w->wds = NULL;
  w->nwds = w->capwds = 0;
  for (size_t i = 0; i < w->npending; i++)
    free(w->pending[i]);
  free(w->pending);
  free(w->settled);
  w->pending = NULL;
  w->settled = NULL;
  w->npending = w->cappending = 0;
  free(w->dir);
  w->dir = NULL;
}

/* __gc, __close and w:close(). [-0,+0] */
static int l_watch_close(lua_State *L) {
  lr_watch *w = luaL_checkudata(L, 1, WATCH_MT);
  watch_free(w);
  return 0;
}

/* reload_c.watch(dir [, roots]) -> watcher | nil, err. The userdata is created closed
 * (fd -1) before the fd is opened, so an allocation error leaves nothing
 * behind. [-1,+1|2] */
static int l_watch(lua_State *L) {
  size_t n;
  const char *dir = luaL_checklstring(L, 1, &n);
  while (n > 1 && dir[n - 1] == '/')
    n--; /* "rooms/" -> "rooms": paths are dir "/" rel name */
  lr_watch *w = lua_newuserdatauv(L, sizeof *w, 0);
  memset(w, 0, sizeof *w);
  w->fd = -1;
  luaL_setmetatable(L, WATCH_MT);
  w->dir = lr_xstrndup(dir, n);
  w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (w->fd < 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "inotify: %s", strerror(errno));
    watch_free(w);
    return 2;
  }
  g_open++;
  lr_bridge_set_tick(lr_reload_poll); /* the rules' tick polls the watchers */
  /* roots: watch these folders under dir (each "sub/dir", recursively)
   * instead of dir itself. */
  int nroots = lua_istable(L, 2) ? (int)lua_rawlen(L, 2) : 0;
  for (int i = 0; i <= nroots; i++) {
    if (i == 0 && nroots > 0) continue;
    lr_buf rel;
    lr_buf_init(&rel);
    if (i > 0) {
      lua_rawgeti(L, 2, i);
      const char *r = lua_tostring(L, -1);
      lr_buf_printf(&rel, "%s/", r ? r : "");
      lua_pop(L, 1);
    }
    if (add_dir(w, lr_buf_cstr(&rel), 0) != 0) {
      int e = errno;
      lua_pushnil(L);
      lua_pushfstring(L, "cannot watch %s/%s: %s", w->dir, lr_buf_cstr(&rel), strerror(e));
      lr_buf_free(&rel);
      watch_free(w);
      return 2;
    }
    lr_buf_free(&rel);
  }
  return 1;
}

/* w:folders() -> number of watched folders (for specs). [-1,+1] */
static int l_watch_folders(lua_State *L) {
  lr_watch *w = luaL_checkudata(L, 1, WATCH_MT);
  lua_pushinteger(L, (lua_Integer)w->nwds);
  return 1;
}

/* Push the burst's changed paths as a list ("*" last after an overflow or
 * a new folder) and empty it. [-0,+1] */
static void take_batch(lua_State *L, lr_watch *w) {
  lua_createtable(L, (int)w->npending + 1, 0);
  lua_Integer k = 0;
  for (size_t i = 0; i < w->npending; i++) {
    lua_pushstring(L, w->pending[i]);
    lua_rawseti(L, -2, ++k);
    free(w->pending[i]);
  }
  if (w->rescan) {
    lua_pushliteral(L, "*");
    lua_rawseti(L, -2, ++k);
  }
  w->npending = 0;
  w->rescan = false;
}

/* Milliseconds on the monotonic clock (w:wait's deadlines). */
static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* w:wait(timeout_ms) -> list of changed paths ({} on timeout; "*" in it
 * after an overflow or a new folder). Blocks in poll() up to timeout_ms
 * (-1: forever) for the first event, then gathers the rest of the burst:
 * returns as soon as every path got a finished save and the fd stayed
 * quiet for 5 ms, else after LR_RELOAD_DEBOUNCE_MS of quiet. For a process
 * that does nothing else (lunaroom test --watch); a server uses
 * lr_reload_poll. Not for a watcher the server's loop watches. [-2,+1] */
static int l_watch_wait(lua_State *L) {
  lr_watch *w = luaL_checkudata(L, 1, WATCH_MT);
  lua_Integer timeout = luaL_optinteger(L, 2, -1);
  luaL_argcheck(L, w->fd >= 0 && !w->nw, 1, "watcher is closed or owned by a server");
  int64_t end = timeout < 0 ? -1 : mono_ms() + timeout;
  for (;;) {
    bool any = w->npending || w->rescan;
    bool settled = !w->rescan;
    for (size_t i = 0; i < w->npending && settled; i++)
      settled = w->settled[i];
    int wait_ms = !any ? -1 : settled ? 5 : LR_RELOAD_DEBOUNCE_MS;
    if (!any && end >= 0) {
      int64_t left = end - mono_ms();
      if (left <= 0) break;
      wait_ms = (int)(left > 60000 ? 60000 : left);
    }
    struct pollfd p = {.fd = w->fd, .events = POLLIN};
    int n = poll(&p, 1, wait_ms);
    if (n < 0 && errno != EINTR) return luaL_error(L, "poll: %s", strerror(errno));
    if (n > 0) {
      drain(w, mono_ms());
    } else if (n == 0 && any) {
      break; /* the burst went quiet */
    }
  }
  take_batch(L, w);
  return 1;
}

/* ------------------------------------------------------------- fd watch */

void lr_reload_set_fd_watch(void *(*watch)(int fd, void (*cb)(void *ud, int revents), void *ud),
                            void (*unwatch)(void *nw)) {
  g_watch = watch;
  g_unwatch = unwatch;
}

/* The loop saw the inotify fd readable: the tick that follows this pass of
 * the loop reads it (lr_reload_poll). Runs on the loop thread. */
static void on_ready(void *ud, int revents) {
  (void)revents;
  ((lr_watch *)ud)->ready = true;
}

/* ------------------------------------------------------------- driver */

/* A protected call of the reload: through the rules' counted call for
 * server s; s NULL (reload_c.run with a srv table of no server: tools) has
 * no metrics to count it in, so a plain lr_vm_pcall. No room guard: a
 * commit migrates every live room of a file; a failed one is rolled back
 * (lr_vm_pcall) and its marks re-send unchanged values, no-ops for
 * clients. [-(nargs+1), +nres|0] */
static int pcall(lr_server *s, lua_State *L, int nargs, int nres, lr_callinfo *ci) {
  return s ? lr_bridge_pcall(s, L, NULL, ci, nargs, nres) : lr_vm_pcall(L, nargs, nres, ci);
}

/* Push the lunaroom.reload module. Returns 0, or -1 (logged, nothing
 * pushed). [-0,+1|0] */
static int push_module(lr_server *s, lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "lunaroom.reload");
  lr_callinfo ci = {.what = "require lunaroom.reload"};
  return pcall(s, L, 1, 1, &ci) == 0 ? 0 : -1;
}

/* Call mod[name](srv, job, extra?) as an outermost protected call with the
 * given budget. On success leaves nres results; on failure returns non-zero
 * with the first line of the error in err. [-0,+nres|0] */
static int step(lr_server *s, lua_State *L, int mod, const char *name, int srv, int job,
                const char *extra, int nres, int64_t budget, char *err, size_t errlen) {
  lua_getfield(L, mod, name);
  lua_pushvalue(L, srv);
  lua_pushvalue(L, job);
  int nargs = 2;
  if (extra) {
    lua_pushstring(L, extra);
    nargs++;
  }
  char what[64];
  snprintf(what, sizeof what, "reload %s", name);
  lr_callinfo ci = {.what = what, .budget = budget};
  int rc = pcall(s, L, nargs, nres, &ci);
  if (rc != 0 && err)
    snprintf(err, errlen, "%s%s", ci.err,
             ci.budget_hit && !strstr(ci.err, "budget") ? " (instruction budget exceeded)" : "");
  return rc;
}

/* Run the reload of a batch: input (at index input) is a list of changed
 * paths, "*" (rescan), or job tables (lunaroom.testing). Pushes the list of
 * jobs, each with its outcome (ok, version, err, rooms). Every step is its
 * own outermost protected call (see the top of this file). [-0,+1] */
static void run_jobs(lr_server *s, lua_State *L, int srv, int input) {
  srv = lua_absindex(L, srv);
  input = lua_absindex(L, input);
  int base = lua_gettop(L);
  if (push_module(s, L) != 0) {
    lua_newtable(L);
    return;
  }
  int mod = base + 1;
  lua_getfield(L, mod, "plan");
  lua_pushvalue(L, srv);
  lua_pushvalue(L, input);
  lr_callinfo ci = {.what = "reload plan"};
  if (pcall(s, L, 2, 1, &ci) != 0 || !lua_istable(L, -1)) {
    lua_settop(L, base);
    lua_newtable(L);
    return;
  }
  int jobs = mod + 1;
  lua_Integer n = (lua_Integer)lua_rawlen(L, jobs);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, jobs, i);
    int job = lua_gettop(L);
    char err[600];
    err[0] = 0;
    if (step(s, L, mod, "prepare", srv, job, NULL, 1, LR_RELOAD_LOAD_BUDGET, err, sizeof err) ==
        0) {
      int go = lua_toboolean(L, -1);
      lua_pop(L, 1);
      if (go && step(s, L, mod, "commit", srv, job, NULL, 0, 0, err, sizeof err) == 0)
        step(s, L, mod, "after", srv, job, NULL, 0, 0, NULL, 0);
    }
    step(s, L, mod, "done", srv, job, err[0] ? err : NULL, 0, 0, NULL, 0);
    lua_settop(L, job - 1);
  }
  lua_replace(L, mod); /* leave only the jobs */
  lua_settop(L, base + 1);
}

/* reload_c.run(srv, changes) -> jobs: the same sequence the watcher runs, for
 * lunaroom.testing and tools. Call it outside any handler (each step must be
 * an outermost call to get its own budget). [-2,+1] */
static int l_run(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_getfield(L, 1, "h");
  lr_server *s = lua_isnil(L, -1) ? NULL : lr_lua_check_server(L, -1);
  lua_pop(L, 1);
  run_jobs(s, L, 1, 2);
  if (s) lr_server_dev_recheck_later(s); /* --dev: sockets waiting for a room file */
  return 1;
}

/* reload_c.now_ms() -> milliseconds on the monotonic clock. [-0,+1] */
static int l_now_ms(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)mono_ms());
  return 1;
}

/* reload_c.is_file(path) -> true if path is a regular file. [-1,+1] */
static int l_is_file(lua_State *L) {
  struct stat st;
  lua_pushboolean(L, stat(luaL_checkstring(L, 1), &st) == 0 && S_ISREG(st.st_mode));
  return 1;
}

/* The wake-up timer's callback: the poll returning is all it is for. */
static int wake_noop(lua_State *L) {
  (void)L;
  return 0;
}

/* Keep exactly one wake-up timer, due at `when` (real clock only), and
 * never closer than LR_RELOAD_MARGIN_MS once the poll returns.
 *
 * Why the margin: lws 4.1 services ripe lws_sul timers *before* poll() and
 * then sleeps until the next one. If the transport arms its engine sul for
 * a timer that is already due (0 ms), the sul is consumed before poll() and
 * the loop sleeps until the next socket event. A timer that is never due
 * within the margin when the tick ends keeps the watcher out of that
 * window. (The transport-side fix is to end the wait from the sul callback
 * with lws_cancel_service().) */
#define LR_RELOAD_MARGIN_MS 2
static void rearm(lr_server *s, lr_watch *w, int64_t now, int64_t when) {
  if (s->virtual_clock) return;
  if (when < now + LR_RELOAD_MARGIN_MS) when = now + LR_RELOAD_MARGIN_MS;
  bool live = w->wake_at > now + LR_RELOAD_MARGIN_MS - 1;
  if (live && w->wake_at <= when) return;           /* the armed one comes first and is safe */
  if (w->wake_seq) lr_timer_cancel(s, w->wake_seq); /* no-op if it already fired */
  lua_pushcfunction(s->L, wake_noop);
  int ref = lr_ref_take(s->L); /* the timer owns (and unrefs) it */
  w->wake_seq = lr_timer_add(s, when - lr_now(s), LR_T_LUA, NULL, ref)->seq;
  w->wake_at = when;
}

void lr_reload_poll(lr_server *s) {
  if (g_open == 0 || s->shutting_down || s->ref == LUA_NOREF) return;
  lua_State *L = s->L;
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref);
  int srv = top + 1;
  if (lua_istable(L, srv)) {
    lua_pushliteral(L, "_watcher");
    lua_rawget(L, srv);
  } else {
    lua_pushnil(L);
  }
  lr_watch *w = luaL_testudata(L, -1, WATCH_MT);
  if (!w || w->fd < 0) {
    lua_settop(L, top);
    return;
  }
  if (!w->nw && !s->virtual_clock && g_watch) {
    w->nw = g_watch(w->fd, on_ready, w);
    if (!w->nw)
      lr_warn("hot reload: the loop cannot watch the folder, changes are read every %d ms",
              LR_RELOAD_WAKE_MS);
  }
  int64_t now = lr_now(s);
  if (now != w->drained_ms || s->virtual_clock || w->ready) {
    w->ready = false;
    drain(w, now);
    w->drained_ms = now;
  }
  /* Without the loop's watch the loop comes back every LR_RELOAD_WAKE_MS to
   * read the fd; with it, only for a debounce deadline. */
  int64_t next = w->nw ? -1 : now + LR_RELOAD_WAKE_MS;
  if (w->npending || w->rescan) {
    bool settled = !w->rescan;
    for (size_t i = 0; i < w->npending && settled; i++)
      settled = w->settled[i];
    int64_t due = settled ? now : w->last_ms + LR_RELOAD_DEBOUNCE_MS;
    if (w->first_ms + LR_RELOAD_MAX_DELAY_MS < due) due = w->first_ms + LR_RELOAD_MAX_DELAY_MS;
    /* Real clock: a batch due within the margin is run now (see rearm). */
    if (now + (s->virtual_clock ? 0 : LR_RELOAD_MARGIN_MS) >= due) {
      /* Take the batch first: events during the reload form the next one. */
      take_batch(L, w);
      run_jobs(s, L, srv, -1);
      lr_server_dev_recheck_later(s); /* --dev: sockets waiting for a room file */
      now = lr_now(s);
      next = w->nw ? -1 : now + LR_RELOAD_WAKE_MS;
    } else if (next < 0 || due < next) {
      next = due;
    }
  }
  if (next >= 0) rearm(s, w, now, next);
  lua_settop(L, top);
}

int lr_reload_watch(lr_server *s, int srv, const char *dir) {
  lua_State *L = s->L;
  srv = lua_absindex(L, srv);
  int top = lua_gettop(L);
  if (push_module(s, L) != 0) return -1;
  lua_getfield(L, -1, "watch");
  lua_pushvalue(L, srv);
  lua_pushstring(L, dir);
  lr_callinfo ci = {.what = "reload watch"};
  int ok = pcall(s, L, 2, 2, &ci) == 0 && lua_toboolean(L, -2);
  if (!ok && lua_gettop(L) > top + 1)
    lr_warn("hot reload is off: %s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "watch failed");
  lua_settop(L, top);
  /* Arm the first wake-up now: the loop may otherwise sleep until the first
   * socket event. */
  if (ok) lr_reload_poll(s);
  return ok ? 0 : -1;
}

int luaopen_lunaroom_reload_c(lua_State *L) {
  if (luaL_newmetatable(L, WATCH_MT)) {
    const luaL_Reg m[] = {{"__gc", l_watch_close}, {"__close", l_watch_close}, {NULL, NULL}};
    luaL_setfuncs(L, m, 0);
    const luaL_Reg methods[] = {{"close", l_watch_close},
                                {"folders", l_watch_folders},
                                {"wait", l_watch_wait},
                                {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  const luaL_Reg fns[] = {{"watch", l_watch},
                          {"run", l_run},
                          {"is_file", l_is_file},
                          {"now_ms", l_now_ms},
                          {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}

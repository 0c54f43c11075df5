/*
 * reload.h - hot reload of room scripts: the inotify watcher of the rooms
 * folder and the C driver of reload transactions (the Lua half is
 * lua/lunaroom/reload.lua).
 *
 * Owns: the watcher (inotify fd, one watch per folder under the rooms folder,
 * pending changed paths, the debounce, its watch on the event loop), the engine wake-up
 * that keeps a change from waiting for the next socket event, and the
 * sequence of protected calls of one reload (plan, then per room file: load
 * under the load budget, swap, onReload hooks, log).
 * Must not: decide what a change means for a room definition or touch room
 * state (reload.lua does), or talk to sockets.
 */
#ifndef LR_RELOAD_H
#define LR_RELOAD_H

#include <lua.h>

#include "engine.h"
#include "lua_vm.h"

/* A batch whose every path was last closed after writing or renamed onto
 * (a finished save) is reloaded at once. Otherwise (a creation still being
 * written, a deletion, an editor's rename-away backup step, a new folder)
 * it waits for this much quiet time after its last event. */
#define LR_RELOAD_DEBOUNCE_MS 30
/* A burst that never goes quiet is reloaded after this long anyway. */
#define LR_RELOAD_MAX_DELAY_MS 250
/* Without an fd watch (lr_reload_set_fd_watch) the engine wakes this often to
 * read events. */
#define LR_RELOAD_WAKE_MS 25
/* Instruction budget of compiling and running one room file (and the
 * modules it requires); the same as a handler's default budget, so a file
 * that loads at startup also loads on reload. */
#define LR_RELOAD_LOAD_BUDGET LR_DEFAULT_BUDGET

/* Start watching dir for server s, whose Lua table (runtime.new_server) is
 * at index srv of s->L: calls reload.watch(srv, dir) through the
 * protected-call helper and arms the first wake-up. Returns 0, or -1 if the
 * watcher could not start (logged; the server still runs, without hot
 * reload). Stack: [-0,+0]. */
int lr_reload_watch(lr_server *s, int srv, const char *dir);

/* Called by lr_server_tick() on every loop iteration (the rules' tick, once a
 * watcher opened: lr_bridge_set_tick): reads the watcher's
 * pending events without blocking and runs the reload of the changed files
 * as outermost protected calls, at once for finished saves, after the
 * debounce otherwise. Has the event loop watch the inotify fd on a
 * real-clock server when an fd watch is set, else keeps an engine timer
 * armed (LR_RELOAD_WAKE_MS). Does
 * nothing (one branch) when no watcher is open or the server is shutting
 * down. Never raises. */
void lr_reload_poll(lr_server *s);

/* Set how a real-clock server's watcher has its inotify fd watched by the
 * transport's event loop (e.g. lr_net_watch_fd / lr_net_unwatch_fd): watch
 * returns a handle (NULL if it cannot), and cb(ud, revents) runs on the loop
 * thread when the fd is readable; the next lr_reload_poll reads it. A save
 * is then read as soon as it happens instead of on the next periodic
 * wake-up. Call before lr_reload_watch. */
void lr_reload_set_fd_watch(void *(*watch)(int fd, void (*cb)(void *ud, int revents), void *ud),
                            void (*unwatch)(void *nw));

/* package.preload["lunaroom.reload_c"]: watch(dir), run(srv, changes),
 * is_file(path). [-0,+1] */
int luaopen_lunaroom_reload_c(lua_State *L);

#endif

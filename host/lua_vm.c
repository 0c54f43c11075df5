/*
 * lua_vm.c - the Lua state of the process (see lua_vm.h).
 *
 * The protected-call helper is the only way the host enters Lua. It pushes a
 * traceback message handler, arms an instruction-count hook for the budget,
 * takes an undo mark for state writes, and logs failures with the room, what
 * was running and the traceback. Once a budget is exceeded the hook switches
 * to firing on every line, so a pcall inside the script cannot swallow the
 * stop (the technique of Redis' script_lua.c). lr_vm_resume is the same
 * helper for coroutines (storage backends that wait for I/O).
 * C functions that room code can make work long (pattern matching,
 * string.rep, table.move, ...) charge their work with lr_vm_charge
 * (lbounded.c, lpattern.c). The allocator counts the bytes allocated during
 * the outermost call; past the call's memory limit the call is stopped like
 * a budget overrun (a little slack lets the error unwind without emergency
 * collections), so no handler can grow the heap by more than that.
 * The watchdog. A count hook makes Lua 5.4 call luaG_traceexec on every
 * instruction (13% of the server on a simple action), so a call with a big
 * budget (over LR_EXACT_BUDGET: the default one) runs without it: a
 * one-shot POSIX timer signals when a call that started before it was
 * armed still runs WATCH_MS later, and the signal handler sets the count
 * hook on the thread the call runs on (lua_sethook may be called from a
 * signal handler; lua.c does it on SIGINT). Such a call is bounded by
 * WATCH_MS plus its budget. A call arms the timer only when it is not
 * armed (one timer_settime per WATCH_MS under load, none while idle).
 * Coroutines that room code makes count from their first instruction
 * (lr_vm_counted wraps coroutine.create and wrap: the handler only hooks
 * the call's own thread); the host's own coroutines (waiting handlers) are
 * resumed by lr_vm_resume, which points the watchdog at them.
 * The state's type() is fast_type (the stock one's results from upvalues),
 * and lr_vm_hot_of gives the per-state addresses the hot C functions keep.
 * Must not: know rooms, sockets or JSON.
 */
#include "lua_vm.h"

#include <errno.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "buf.h"
#include "lbounded.h"
#include "log.h"
#include "undo.h"

int luaopen_lunaroom_core(lua_State *L);
int luaopen_lunaroom_reload_c(lua_State *L); /* reload.c */
int luaopen_lunaroom_jwt(lua_State *L);      /* lua_jwt.c */
int luaopen_lunaroom_wait_c(lua_State *L);   /* lua_wait.c */

#define HOOK_EVERY 10000
/* Allocation past the call's memory limit that is still granted while the
 * stopped call unwinds (error messages, tracebacks). */
#define MEM_SLACK (1 << 20)
/* Instructions the host code that resumed a nested coroutine still gets
 * after that coroutine was stopped by the budget (lr_vm_resume). */
#define RESUME_GRACE 1000000

/* Budgets up to this many instructions are counted from the first
 * instruction; bigger ones from WATCH_MS into the call (the watchdog). */
#define LR_EXACT_BUDGET 20000000LL
#define WATCH_MS 10

typedef struct vm {
  size_t used, limit;
  char *lua_dir;
  int depth;         /* nesting of lr_vm_pcall */
  int64_t remaining; /* instructions left in the outermost call */
  int killed;        /* budget exceeded in the current outermost call */
  size_t call_used;  /* bytes allocated in the current outermost call */
  size_t call_limit; /* its memory limit */
  int mem_hit;       /* the call went over call_limit */
  int heap_hit;      /* the call was refused memory at the heap limit */
  lua_State *main;   /* the main thread (its hook is switched on mem_hit) */
  lr_undo *undo;     /* the state's undo log (undo.h) */
  long refs;         /* live registry references (lr_ref_take) */
  int watch;         /* the current outermost call is watched, not counted */
  lr_vm_hot hot;     /* lua_vm.h */
} vm;

/* The watchdog: one per process (calls into Lua do not overlap). Fields the
 * signal handler reads or writes are volatile sig_atomic_t or a pointer. */
static struct {
  int state; /* 0 not set up, 1 ready, -1 unavailable */
  timer_t timer;
  volatile sig_atomic_t armed;     /* the timer runs */
  volatile sig_atomic_t gen;       /* bumped by each watched outermost call */
  volatile sig_atomic_t armed_for; /* the gen the timer was armed for */
  volatile sig_atomic_t counting;  /* the running call went long: hooked */
  lua_State *volatile watched;     /* the thread the watched call runs on */
} wd;

static vm *get_vm(lua_State *L) {
  void *ud;
  lua_getallocf(L, &ud);
  return ud;
}

static void budget_hook(lua_State *L, lua_Debug *ar);

/* Over the memory limit of the running call: stop it as soon as the running
 * thread executes (every line of the main thread from now on; a coroutine
 * at its next count event). Only sets hook fields: safe in an allocator. */
static int call_over_limit(vm *v, size_t grow) {
  if (!v->mem_hit) {
    v->mem_hit = 1;
    v->killed = 1;
    if (v->main) lua_sethook(v->main, budget_hook, LUA_MASKCOUNT | LUA_MASKLINE, 1);
  }
  return v->call_used + grow > v->call_limit + MEM_SLACK;
}

static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  vm *v = ud;
  if (!ptr) osize = 0;
  if (nsize == 0) {
    free(ptr);
    v->used -= osize;
    return NULL;
  }
  size_t grow = nsize > osize ? nsize - osize : 0;
  if (v->limit && grow && v->used + grow > v->limit) {
    /* Each refusal costs an emergency full collection: stop the call at
     * once rather than let it retry (a pcall loop) near the limit. */
    if (v->depth > 0 && !v->mem_hit) {
      v->heap_hit = 1;
      call_over_limit(v, 0);
    }
    return NULL;
  }
  if (grow && v->depth > 0 && v->call_used + grow > v->call_limit && call_over_limit(v, grow))
    return NULL;
  void *p = realloc(ptr, nsize);
  if (!p) return NULL;
  v->used = v->used - osize + nsize;
  if (v->depth > 0) v->call_used += grow;
  return p;
}

/* type(v), as the base library's, with the nine names held as upvalues:
 * the stock one pushes its result with lua_pushstring, a hash lookup on
 * every call (about 300 instructions; schema checks call it per field). */
static int fast_type(lua_State *L) {
  int t = lua_type(L, 1);
  luaL_argcheck(L, t != LUA_TNONE, 1, "value expected");
  lua_pushvalue(L, lua_upvalueindex(t + 1));
  return 1;
}

static void install_fast_type(lua_State *L) {
  for (int t = 0; t < LUA_NUMTYPES; t++)
    lua_pushstring(L, lua_typename(L, t));
  lua_pushcclosure(L, fast_type, LUA_NUMTYPES);
  lua_setglobal(L, "type");
}

static int vm_panic(lua_State *L) {
  lr_error("lua panic: %s", lua_tostring(L, -1));
  abort();
  return 0;
}

lua_State *lr_vm_open(const char *lua_dir, size_t mem_limit) {
  vm *v = lr_xcalloc(1, sizeof *v);
  v->limit = mem_limit;
  v->lua_dir = lr_xstrndup(lua_dir, strlen(lua_dir));
  v->undo = lr_undo_new();
  lua_State *L = lua_newstate(vm_alloc, v);
  if (!L) {
    lr_undo_free(v->undo);
    free(v->lua_dir);
    free(v);
    return NULL;
  }
  v->main = L;
  lua_atpanic(L, vm_panic);
  luaL_openlibs(L);
  install_fast_type(L);
  lr_bounded_install(L);
  /* package.path: our Lua half first. */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", lua_dir, lua_dir, lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 1);
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_lunaroom_core);
  lua_setfield(L, -2, "lunaroom.core");
  lua_pushcfunction(L, luaopen_lunaroom_reload_c);
  lua_setfield(L, -2, "lunaroom.reload_c");
  lua_pushcfunction(L, luaopen_lunaroom_jwt);
  lua_setfield(L, -2, "lunaroom.jwt");
  lua_pushcfunction(L, luaopen_lunaroom_wait_c);
  lua_setfield(L, -2, "lunaroom.wait_c");
  lua_pop(L, 2);
  return L;
}

void lr_vm_close(lua_State *L) {
  if (!L) return;
  vm *v = get_vm(L);
  lua_close(L);
  lr_undo_free(v->undo);
  free(v->lua_dir);
  free(v);
}

size_t lr_vm_memory(lua_State *L) {
  return get_vm(L)->used;
}
void lr_vm_set_memory_limit(lua_State *L, size_t limit) {
  get_vm(L)->limit = limit;
}
lr_vm_hot *lr_vm_hot_of(lua_State *L) {
  void *ud;
  return lua_getallocf(L, &ud) == vm_alloc ? &((vm *)ud)->hot : NULL;
}

void *lr_vm_testudata(lua_State *L, int idx, int k, const char *tname) {
  const lr_vm_hot *hot = lr_vm_hot_of(L);
  if (!hot || !hot->mt[k]) return luaL_testudata(L, idx, tname);
  void *p = lua_touserdata(L, idx);
  if (!p || !lua_getmetatable(L, idx)) return NULL;
  bool ok = lua_topointer(L, -1) == hot->mt[k];
  lua_pop(L, 1);
  return ok ? p : NULL;
}

void *lr_vm_checkudata(lua_State *L, int idx, int k, const char *tname) {
  void *p = lr_vm_testudata(L, idx, k, tname);
  if (!p) luaL_typeerror(L, idx, tname);
  return p;
}

const char *lr_vm_lua_dir(lua_State *L) {
  return get_vm(L)->lua_dir;
}
lr_undo *lr_vm_undo(lua_State *L) {
  return get_vm(L)->undo;
}

int lr_ref_take(lua_State *L) {
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (ref > 0) get_vm(L)->refs++;
  return ref;
}
void lr_ref_release(lua_State *L, int ref) {
  if (ref <= 0) return;
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  get_vm(L)->refs--;
}
long lr_ref_live(lua_State *L) {
  return get_vm(L)->refs;
}

static const char *stopped_message(const vm *v) {
  if (v->mem_hit) return "memory limit exceeded (script stopped)";
  return "instruction budget exceeded (script stopped)";
}

/* Stop the running call: from now on the hook fires on every line too, so
 * a pcall in the script that catches the error cannot keep running. */
static int stop(lua_State *L, vm *v) {
  v->killed = 1;
  lua_sethook(L, budget_hook, LUA_MASKCOUNT | LUA_MASKLINE, 1);
  if (v->heap_hit)
    return luaL_error(L, "memory limit exceeded (the Lua heap is full; script stopped)");
  if (v->mem_hit)
    return luaL_error(L, "memory limit exceeded (%d MiB allocated in one call; script stopped)",
                      (int)(v->call_limit >> 20));
  return luaL_error(L, "instruction budget exceeded (script stopped)");
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  vm *v = get_vm(L);
  if (!v->killed && lua_gethookcount(L) == 1) {
    /* A coroutine stopped in an earlier call keeps its hook: back to
     * counting, or each of its instructions would cost HOOK_EVERY. */
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
    return;
  }
  if (ar->event == LUA_HOOKCOUNT) v->remaining -= HOOK_EVERY;
  if (v->killed || v->remaining <= 0) stop(L, v);
}

static void wd_arm(void) {
  struct itimerspec its = {.it_value = {.tv_sec = 0, .tv_nsec = WATCH_MS * 1000000L}};
  timer_settime(wd.timer, 0, &its, NULL);
}

/* The timer fired: the call it was armed for still runs (count it from
 * now), another call runs (give it its WATCH_MS), or none (stay unarmed). */
static void wd_signal(int sig) {
  (void)sig;
  int saved = errno;
  lua_State *L = wd.watched;
  if (L && wd.gen == wd.armed_for) {
    wd.counting = 1;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
    wd.armed = 0;
  } else if (L) {
    wd.armed_for = wd.gen;
    wd_arm();
  } else {
    wd.armed = 0;
  }
  errno = saved;
}

/* Set up once; -1 (calls are then counted exactly) when the timer or the
 * signal cannot be had. */
static int wd_ready(void) {
  if (wd.state) return wd.state;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = wd_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_SIGNAL;
  sev.sigev_signo = SIGVTALRM;
  if (sigaction(SIGVTALRM, &sa, NULL) != 0 || timer_create(CLOCK_MONOTONIC, &sev, &wd.timer) != 0) {
    lr_warn("lua: no watchdog timer (%s): every Lua instruction is counted", strerror(errno));
    wd.state = -1;
  } else {
    wd.state = 1;
  }
  return wd.state;
}

/* Start watching the outermost call that runs on L. */
static void wd_enter(vm *v, lua_State *L) {
  v->watch = 1;
  wd.counting = 0;
  wd.gen++;
  wd.watched = L;
  if (!wd.armed) {
    wd.armed = 1;
    wd.armed_for = wd.gen;
    wd_arm();
  }
}

/* The outermost call is over: nothing to hook any more (the caller clears
 * the hooks the handler may have set, after this). */
static void wd_leave(vm *v) {
  wd.watched = NULL;
  wd.counting = 0;
  v->watch = 0;
}

/* A big budget goes to the watchdog, a small one is counted from here. */
static void budget_arm(vm *v, lua_State *L, const lr_callinfo *ci) {
  int64_t b = ci && ci->budget > 0 ? ci->budget : LR_DEFAULT_BUDGET;
  if (b > LR_EXACT_BUDGET && wd_ready() > 0)
    wd_enter(v, L);
  else
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

int lr_vm_counted(lua_State *L) {
  lua_Hook h = lua_gethook(L);
  int mask = lua_gethookmask(L), count = lua_gethookcount(L);
  /* The new thread copies this one's hook (lua_newthread). */
  if (mask & LUA_MASKLINE)
    lua_sethook(L, budget_hook, LUA_MASKCOUNT | LUA_MASKLINE, 1);
  else
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  int rc = lua_pcall(L, lua_gettop(L) - 1, 1, 0);
  /* Back to this thread's own hook, unless the watchdog set one meanwhile. */
  if (!(wd.counting && L == wd.watched)) lua_sethook(L, h, mask, count);
  if (rc != LUA_OK) return lua_error(L);
  /* Setting a count hook restarts its count: charge what that may forget,
   * or a loop of creates would never reach the hook. */
  if (lua_gethookmask(L) & LUA_MASKCOUNT) lr_vm_charge(L, HOOK_EVERY);
  return 1;
}

void lr_vm_charge(lua_State *L, int64_t cost) {
  vm *v = get_vm(L);
  if (v->depth == 0) return; /* no budget armed: host code */
  v->remaining = cost >= v->remaining ? 0 : v->remaining - cost;
  if (v->killed || v->remaining <= 0) stop(L, v);
}

void lr_vm_spend(lua_State *L, int64_t cost) {
  vm *v = get_vm(L);
  if (v->depth == 0 || cost <= 0) return;
  v->remaining = cost >= v->remaining ? 0 : v->remaining - cost;
  if (v->remaining <= 0 && !v->killed) { /* stop() without raising here */
    v->killed = 1;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT | LUA_MASKLINE, 1);
  }
}

int64_t lr_vm_budget_left(lua_State *L) {
  vm *v = get_vm(L);
  if (v->depth == 0) return INT64_MAX;
  return v->killed || v->remaining < 0 ? 0 : v->remaining;
}

static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) {
      msg = lua_tostring(L, -1);
    } else {
      msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* A failed call: first line of msg into ci, the whole message (with its
 * traceback) to the log with the room and what was running. */
static void report(vm *v, lr_callinfo *ci, const char *dflt, int rc, int killed, const char *msg) {
  char buf[128];
  const char *first = msg; /* for ci->err: the client sees it */
  if (v->mem_hit) {        /* wherever it was raised, and "not enough memory" */
    if (v->heap_hit)
      snprintf(buf, sizeof buf, "memory limit exceeded (the Lua heap is full)");
    else
      snprintf(buf, sizeof buf, "memory limit exceeded (%d MiB allocated in one call)",
               (int)(v->call_limit >> 20));
    first = buf;
    if (rc == LUA_ERRMEM) msg = buf;
    killed = 0;
  }
  if (ci) {
    const char *nl = strchr(first, '\n');
    size_t n = nl ? (size_t)(nl - first) : strlen(first);
    if (n >= sizeof ci->err) n = sizeof ci->err - 1;
    memcpy(ci->err, first, n);
    ci->err[n] = 0;
    ci->budget_hit = killed;
  }
  lr_error("room %s: %s failed%s: %s", ci && ci->room ? ci->room : "-",
           ci && ci->what ? ci->what : dflt, rc == LUA_ERRMEM ? " (out of memory)" : "", msg);
}

/* The outermost call (pcall or resume) starts a fresh budget; nested ones
 * share it. Returns whether this call is the outermost. */
static int budget_enter(vm *v, const lr_callinfo *ci) {
  if (v->depth > 0) return 0;
  v->remaining = ci && ci->budget > 0 ? ci->budget : LR_DEFAULT_BUDGET;
  v->killed = 0;
  v->mem_hit = 0;
  v->heap_hit = 0;
  v->call_used = 0;
  v->call_limit = ci && ci->memory > 0 ? (size_t)ci->memory : LR_DEFAULT_CALL_MEMORY;
  return 1;
}

int lr_vm_pcall(lua_State *L, int nargs, int nres, lr_callinfo *ci) {
  vm *v = get_vm(L);
  int outer = budget_enter(v, ci);
  if (outer) budget_arm(v, L, ci);
  v->depth++;
  size_t mark = lr_undo_mark(v->undo);
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msgh);
  lua_insert(L, base);
  int rc = lua_pcall(L, nargs, nres, base);
  lua_remove(L, base);
  v->depth--;
  int killed = v->killed;
  if (rc == LUA_OK && outer && (killed || v->mem_hit)) {
    /* Stopped in a coroutine whose error the script caught (resume
     * returns false) and returned before its own thread was stopped: the
     * call failed all the same. */
    lua_settop(L, base - 1);
    lua_pushstring(L, stopped_message(v));
    rc = LUA_ERRRUN;
  }
  if (outer) {
    if (v->watch) wd_leave(v);
    lua_sethook(L, NULL, 0, 0);
    if (L != v->main) lua_sethook(v->main, NULL, 0, 0);
    v->killed = 0;
  }
  if (rc == LUA_OK) {
    lr_undo_release(v->undo, mark);
    return 0;
  }
  lr_undo_rollback(v->undo, mark);
  const char *msg = lua_tostring(L, -1);
  report(v, ci, "call", rc, killed, msg ? msg : "(no message)");
  lua_pop(L, 1);
  return rc;
}

int lr_vm_resume(lua_State *co, lua_State *from, int nargs, int *nres, lr_callinfo *ci) {
  vm *v = get_vm(co);
  int outer = budget_enter(v, ci);
  lua_State *prev = wd.watched; /* the thread the watchdog hooks, restored after */
  if (outer)
    budget_arm(v, co, ci);
  else if (v->watch) /* a nested resume in a watched call: watch co */
    wd.watched = co;
  if (!v->watch || wd.counting || v->killed)
    lua_sethook(co, budget_hook, v->killed ? (LUA_MASKCOUNT | LUA_MASKLINE) : LUA_MASKCOUNT,
                v->killed ? 1 : HOOK_EVERY);
  v->depth++;
  size_t mark = lr_undo_mark(v->undo);
  *nres = 0;
  int rc = lua_resume(co, from, nargs, nres);
  v->depth--;
  int killed = v->killed;
  if ((rc == LUA_OK || rc == LUA_YIELD) && outer && (killed || v->mem_hit)) {
    lua_pop(co, *nres); /* as in lr_vm_pcall: the call failed all the same */
    lua_pushstring(co, stopped_message(v));
    rc = LUA_ERRRUN;
  }
  if (!outer && v->watch) { /* back on prev: count there too if co went long */
    wd.watched = prev;
    if (wd.counting && prev && !v->killed)
      lua_sethook(prev, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
  }
  if (outer && v->watch) wd_leave(v);
  lua_sethook(co, NULL, 0, 0);
  if (outer) {
    if (v->mem_hit) lua_sethook(v->main, NULL, 0, 0); /* set by the allocator */
    v->killed = 0;
  }
  if (rc == LUA_OK || rc == LUA_YIELD) {
    lr_undo_release(v->undo, mark);
    return rc;
  }
  lr_undo_rollback(v->undo, mark);
  const char *msg = lua_tostring(co, -1);
  luaL_traceback(co, co, msg ? msg : "(error object is not a string)", 0);
  report(v, ci, "coroutine", rc, killed, lua_tostring(co, -1));
  *nres = 0;
  if (!outer && (killed || v->mem_hit)) {
    /* A nested coroutine (a room handler run as a task) was stopped: it is
     * dead and its step rolled back. The host code that resumed it goes on
     * (it reports the failure, runs what was queued behind it) with a grace
     * budget, instead of being stopped in turn. */
    v->killed = 0;
    v->mem_hit = 0;
    v->heap_hit = 0;
    if (v->remaining < RESUME_GRACE) v->remaining = RESUME_GRACE;
    if (v->call_used + MEM_SLACK > v->call_limit) v->call_limit = v->call_used + MEM_SLACK;
    lua_sethook(from, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
    if (from != v->main) lua_sethook(v->main, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
  }
  return rc;
}

/*
 * rules.h - the engine's face towards the room rules: what the engine asks
 * of whoever decides what a room does (runtime.lua through bridge.c in the
 * server; a fake in host/tests/test_engine.c).
 *
 * Owns: the lr_rules_vt contract (who calls what, when, and what the engine
 * may assume afterwards).
 * Must not: name Lua (lua_State is an opaque pointer here), or know a
 * transport or a feature (shard, uplink, reload).
 *
 * Conventions: every function runs on the loop thread, from the engine,
 * never re-entered by the engine for the same connection. A failed call has
 * changed nothing that the engine would send or write (the implementation
 * rolls its state writes back and clears the dirty marks it left). After
 * each call that may write state the engine runs its flush pass
 * (lr_server_flush_touched); the rules never flush.
 */
#ifndef LR_RULES_H
#define LR_RULES_H

#include <stdbool.h>
#include <stddef.h>

#include "server.h"

typedef struct lua_State lua_State;
typedef struct lr_room lr_room;
typedef struct lr_node lr_node;

/* A reference the rules hold for an engine object (room instance, conn
 * table, timer callback): LR_NOREF when none. */
#define LR_NOREF (-2)

/* The engine's answer to an HTTP handler's response before it is sent
 * (write first: an answer must not show what could not be stored). Returns
 * true when the engine answered instead (the rules then drop their answer). */
typedef bool (*lr_settle_cb)(lr_room *r, lr_response_cb done, void *ud);
/* A rejected action: code ("guard", "validation", ...) and message. */
typedef void (*lr_reject_cb)(lr_conn *c, const char *code, const char *action, const char *msg);

typedef struct lr_rules_vt {
  /* ---- rooms ---- */
  /* Does a definition serve ns/id (nothing is created)? */
  bool (*serves)(lr_server *s, const char *ns, const char *id);
  /* Before a request creates or wakes ns/id: 1 answered (no such route,
   * bad credentials), 0 the room serves it, -1 no definition serves ns/id. */
  int (*preroute)(lr_server *s, const char *ns, const char *id, const lr_request *req,
                  const char *rest, lr_response_cb done, void *ud);
  /* Build the instance of ns/id (it registers itself with lr_room_new).
   * 0, or -1 with err. */
  int (*create)(lr_server *s, const char *ns, const char *id, char *err, size_t errlen);
  /* Rebuild hibernated r from storage: 0, or -1 (what it built is left for
   * hibernate() to forget). */
  int (*wake)(lr_room *r);
  /* Development mode, for ns/id that no definition serves: the dev_error
   * packet when a room file that does not load declares ns/id (malloc'd,
   * the caller frees it), else NULL. Optional (NULL: never). */
  char *(*dev_failed)(lr_server *s, const char *ns, const char *id);
  /* Forget r's instance (hibernation; a failed wake). */
  void (*hibernate)(lr_room *r);
  /* r is disposed: forget everything about it. */
  void (*forget)(lr_room *r);

  /* ---- connections ---- */
  /* Give c its rules-side object (a raw member: no connect). */
  void (*attach)(lr_conn *c);
  /* Run r's connect for c (guards, session, onJoin, snapshot). attach() is
   * done here. 0, or -1 with err (the engine closes c with 1011). */
  int (*connect)(lr_conn *c, const lr_request *req, char *err, size_t errlen);
  /* One action. 0 handled; 1 refused by the rules (reject was called);
   * -1 the handler failed (err). */
  int (*message)(lr_conn *c, const char *action, size_t alen, const lr_node *value,
                 lr_reject_cb reject, char *err, size_t errlen);
  /* c left r (after it was removed from the room list). */
  void (*close)(lr_conn *c);
  /* The packet m for c through r's interceptor: a new reference to send
   * (m itself when unchanged), or NULL to drop it. */
  lr_msg *(*intercept)(lr_conn *c, lr_msg *m);
  /* c's public id (conn.state.publicId), copied into buf; NULL if none. */
  const char *(*public_id)(lr_conn *c, char *buf, size_t n);

  /* ---- HTTP ---- */
  /* A request routed to r (rest = routed path, "/..."). Returns 1 when it
   * answered (through settle and done), -1 when the handler failed (the
   * engine flushes and answers 500). */
  int (*request)(lr_room *r, const lr_request *req, const char *rest, lr_settle_cb settle,
                 lr_response_cb done, void *ud);
  /* Operations paths (/healthz, /metrics, ...): 1 answered, -1 failed. */
  int (*operations)(lr_server *s, const lr_request *req, lr_response_cb done, void *ud);

  /* ---- timers, loop, references ---- */
  /* A room timer (or a server timer when r is NULL) fires: run callback ref. */
  void (*timer)(lr_server *s, lr_room *r, int ref);
  /* Once per loop pass, before the flush (hot reload polls here). */
  void (*tick)(lr_server *s);
  /* The loop is idle: a cheap moment for garbage collection. */
  void (*quiet)(lr_server *s);
  /* Release a reference (a room, conn or timer object) of state L; may run
   * after the server is freed. */
  void (*unref)(lua_State *L, int ref);
  /* The server's environment variable name ("" when unset), into buf. */
  const char *(*env)(lr_server *s, const char *name, char *buf, size_t n);
  /* A feature's or transport's own call into the rules' runtime (a storage
   * backend written in Lua: storage.h lr_store_host.call; an HTTP answer's
   * Lua callback: fetch.c, cluster.c, headless.c): the function below nargs
   * values on the server's Lua state, counted and rolled back as the rules'
   * own calls (no room: a callback that runs a room's code does it through
   * the rules' room-bound calls). 0, or non-zero with the message in err
   * (err may be NULL). NULL: refused. */
  int (*call)(lr_server *s, const char *what, int nargs, int nres, char *err, size_t errlen);
} lr_rules_vt;

#endif

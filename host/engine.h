/*
 * engine.h - the room engine's own types, shared by the engine files
 * (room.c and its neighbours), the rules bridge (bridge.c), what Lua sees
 * of them (lua_api.c) and the features that hang off the engine (uplink.c,
 * shard.c).
 *
 * Owns: lr_server, lr_room, lr_conn and timer structures.
 * Must not: be included by transports (they use server.h only), name Lua
 * (lua_State is opaque here; rules.h is the engine's only way to the rules).
 *
 * Conventions of the host's functions (style):
 * - int results: 0 success, a negative value failure (-1, or a negative
 *   code such as LR_STORE_E*), with the reason written into a caller's
 *   err/errlen buffer when the function takes one; a positive value only
 *   where documented (an HTTP status towards transports, server.h; "handled
 *   / answered" in rules.h).
 * - bool results answer a question (served?, failing?), never report an error.
 * - Pointers: NULL = not found / refused; the caller owns what a *_new or
 *   *_open returns, and references are counted (retain/release) where noted.
 * - Lua: the engine reaches it only through s->rules (bridge.c). Every
 *   other outermost call from the host into Lua for a server is the rules'
 *   counted call too (handler metrics; a room's rollback with its dirty
 *   marks cleared): a feature's or transport's callback (fetch_lua.c,
 *   cluster.c, headless.c) and a Lua store (its host's call) through
 *   rules->call; rules-side code that needs its own call info (reload.c's
 *   budgeted steps, lua_wait.c) through lr_bridge_pcall (bridge.h).
 *   lr_vm_pcall directly only where no server is there to count it (a
 *   store opening, the command's drivers setting up: cli.c, serve.c) or
 *   nested inside a counted call (core.pcall, wait_c.resume's
 *   lr_vm_resume). The engine releases the references it
 *   holds (room, conn, timer callbacks) through rules->unref. Every registry
 *   reference is taken and released through lr_ref_take/lr_ref_release
 *   (lua_vm.h), never luaL_ref/luaL_unref directly.
 * - Stores never call the engine: they report through the lr_store_host
 *   (storage.h) the engine binds them with (sync.c).
 * - Failures without an err buffer name themselves with a static message
 *   (const char **why) and, for text, the offset (size_t *at).
 * - Lua status codes stay Lua's: lr_vm_pcall and lr_vm_resume return 0 or
 *   a positive LUA_ERR* (callers test != 0), as lua_pcall does.
 * - Functions Lua calls (core.*, lua_*.c): a caller's mistake (a bad
 *   argument, a closed handle) raises; a failure of the world (storage,
 *   files, a refused name) returns nil, message; success returns the value,
 *   or true when there is none.
 * - The command's drivers (cli.c, serve.c) return the process exit status:
 *   0, 1 a failure, 2 a usage error.
 */
#ifndef LR_ENGINE_H
#define LR_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "addr_rate.h"
#include "buf.h"
#include "rand.h"
#include "rules.h"
#include "server.h"
#include "storage.h"
#include "value.h"

/* ---- timers ---- */
typedef enum { LR_T_SYNC = 1, LR_T_STORE, LR_T_LUA, LR_T_IDLE, LR_T_C } lr_timer_kind;
typedef void (*lr_timer_cb)(void *ud);
typedef struct lr_timer {
  int64_t when;
  uint64_t seq; /* tie-break: FIFO for equal times; also the public id */
  lr_timer_kind kind;
  lr_room *room;  /* retained, or NULL */
  int fn_ref;     /* LR_T_LUA: registry ref of the callback */
  lr_timer_cb cb; /* LR_T_C: called with ud (not called if the server is freed first) */
  void *ud;
  bool cancelled;
  bool holds_room;           /* an LR_T_LUA timer of room: counted in room->ntimers */
  uint32_t hidx;             /* position in the server's heap */
  struct lr_timer *map_next; /* the server's id -> timer map (while in the heap) */
} lr_timer;

/* ---- connections ---- */

/* What a connection is, when it is not a plain client of a room (a direct
 * socket or a headless one: ops NULL). Features give their connections
 * their own operations (uplink.c: a shard uplink, a client relayed through
 * one; shard.c: a client of this shard process), so the engine never asks
 * what a connection is. Each function may be NULL: the engine's own path. */
typedef struct lr_conn_ops {
  /* A frame from the socket, instead of the room's action path. */
  void (*message)(lr_conn *c, const char *data, size_t len);
  /* The socket is gone: called first in lr_conn_closed. */
  void (*closed)(lr_conn *c);
  /* Free the kind's state (idempotent): when c is freed, and at the end of
   * lr_conn_closed when forget_on_close. */
  void (*forget)(lr_conn *c);
  /* Deliver m to what c stands for (through the interceptor, skipping the
   * conn ids in except), instead of one send of m to c: used when the room
   * has an interceptor or a broadcast excludes connections. */
  void (*fanout)(lr_conn *c, lr_msg *m, const char *const *except, size_t nexcept);
  bool via_uplink;      /* in the room list but skipped by broadcasts and sync patches */
  bool uncounted;       /* not in stats.conns_open */
  bool relay;           /* carries many clients (lr_conn_is_relay) */
  bool forget_on_close; /* forget() once closed, not only when freed */
} lr_conn_ops;
typedef enum { LR_C_JOINING = 0, LR_C_JOINED, LR_C_CLOSING, LR_C_GONE } lr_conn_phase;

typedef struct lr_early {
  lr_buf buf;    /* concatenated frames */
  uint32_t *len; /* length of each */
  uint32_t n, cap;
} lr_early;

typedef struct lr_held { /* a packet waiting for a batched joiner's snapshot */
  lr_msg *m;
  struct lr_held *next;
} lr_held;

struct lr_conn {
  lr_server *srv;
  lr_room *room; /* retained */
  /* The id and the small fields share 16 bytes: the struct is 136 bytes, a
   * 144-byte malloc chunk (not 160). */
  char id[12];     /* random base36, 10 characters */
  uint8_t phase;   /* lr_conn_phase */
  bool parked : 1; /* autoSync off: waiting for applySync to get its snapshot */
  /* Joined during a pass of the network loop (lr_server_batch_joins): parked
   * until the room's flush at the end of the pass; what is sent to it
   * meanwhile waits in `held` and follows its snapshot. */
  bool batched : 1;
  bool in_room_list : 1;
  const lr_transport_vt *vt;
  void *tp;
  int ref; /* registry ref of the Lua conn table */
  uint32_t refs;
  uint32_t drops;       /* consecutive dropped messages */
  uint32_t gated_bytes; /* bytes of its packets waiting in the room's outbox (at most 4 MiB) */
  /* What c is beyond a plain client (see lr_conn_ops), NULL for that. */
  const lr_conn_ops *ops;
  /* Frames received while joining (handled in order once joined); NULL
   * until the first one (most clients wait for their first packet). */
  lr_early *early;
  lr_held *held;            /* batched: packets waiting for the snapshot, newest first */
  lua_State *L;             /* for releasing ref even after the server is gone */
  const lr_rules_vt *rules; /* the server's, kept for the same reason */
  double tokens;            /* rate limit: token bucket, refilled at room->rate per second */
  int64_t tokens_at;
  lr_conn **box; /* the Lua handle's weak slot, cleared when c is freed */
  /* The state of the feature that made c, which c->ops names (the engine
   * never reads it): uplink.c's uplink, shard.c's client, cluster.c's
   * relayed client. One field for the three: a conn is at most one of them. */
  void *ext;
};
_Static_assert(sizeof(void *) != 8 || sizeof(struct lr_conn) == 136, "lr_conn is 136 bytes");

/* A packet waiting in a room's outbox until the writes before it commit. */
typedef struct lr_gated {
  lr_conn *c;   /* retained */
  lr_msg *m;    /* retained */
  uint64_t tag; /* released once the room's committed count reaches it */
} lr_gated;

/* ---- rooms ---- */
struct lr_room {
  /* Fields grouped by size (8-byte, then 4-byte, then the flags): no
   * padding holes, one malloc size class less on every room. */
  lr_server *srv;
  char *ns, *id, *key; /* key = ns "/" id; one allocation, owned through ns */
  lr_node *root;       /* the state tree */
  lr_conn **conns;     /* joined connections, in join order */
  /* sync */
  int64_t throttle_sync, throttle_storage;
  int64_t sync_window_end; /* leading edge allowed again at this time */
  int64_t store_retry_ms;  /* backoff after a storage failure */
  int64_t budget;          /* instructions per call, 0 = default */
  int64_t memory;          /* bytes allocated per call, 0 = default */
  /* Hibernation: after hibernate_ms without activity the state tree and the
   * Lua instance are freed (storage flushed first); connections stay.
   * Eviction: after evict_ms without activity, a room with no connection
   * and no timer of its own is flushed and disposed (0 = never). idle_seq
   * is the id of the armed LR_T_IDLE timer (0: none armed); a room that
   * gains a connection and does not hibernate has none (idle.c). */
  int64_t hibernate_ms, evict_ms, last_active;
  uint64_t idle_seq;
  double rate, burst; /* messages per second and bucket size per connection */
  /* the "touched" list of the server (rooms written since the last pass) */
  lr_room *touched_next;
  lr_room *hash_next;
  lr_room **box; /* the Lua handle's weak slot, cleared when r is freed */
  /* Storage gate (room.c, "a failed storage write"): packets sent while the
   * room has writes that are not committed wait here, in order. */
  lr_gated *outbox;
  uint64_t st_accepted, st_committed;     /* write batches handed to / committed by the store */
  char *store_err;                        /* why, while failing */
  lr_room *failing_next, **failing_pprev; /* the server's list of failing rooms */
  uint32_t refs;
  int ref; /* registry ref of the Lua room instance */
  uint32_t nconns, capconns;
  uint32_t nparked; /* members with parked set: a join's flush visits only the last ones */
  uint32_t ntimers; /* pending LR_T_LUA timers of this room (room:timer, session expiry) */
  uint32_t nwaits;  /* handlers of this room waiting for I/O (lua_wait.c): no hibernation */
  /* Per-room input limits (0 = the process defaults): largest action frame
   * in bytes, JSON nesting depth and values per packet. */
  uint32_t max_frame, json_depth, json_elements;
  uint32_t outhead, nout, capout; /* outbox entries [outhead, nout) are live */
  bool disposed;
  bool auto_sync;
  bool has_interceptor;
  bool lean_connect;  /* joins build no connect context (no room guard, no onJoin): the request as
                         {query, ip} */
  bool batched_joins; /* has batched joiners (lr_conn.batched) waiting for its flush */
  bool sync_timer, store_timer;
  bool hibernated;
  bool touched;        /* in the touched list */
  bool flush_failed;   /* the engine's last write of its state failed (retry armed) */
  bool backend_failed; /* a write-behind store reports failing writes for this room */
};

/* Counters for /metrics (monotonic since start unless noted). */
enum {
  LR_REJ_INVALID,
  LR_REJ_UNKNOWN,
  LR_REJ_GUARD,
  LR_REJ_VALIDATION,
  LR_REJ_HANDLER,
  LR_REJ_RATE,
  LR_REJ_TOO_LARGE,
  LR_REJ_OTHER,
  LR_NREJ
};
#define LR_HIST_N 10
typedef struct lr_stats {
  uint64_t conns_open; /* gauge */
  uint64_t conns_total, msgs_in, packets_out, bytes_out;
  uint64_t rejected[LR_NREJ];
  uint64_t storage_flushes, storage_failures;
  double storage_seconds;
  uint64_t calls, hist[LR_HIST_N]; /* handler time, buckets of lr_hist_bounds */
  double call_seconds;
} lr_stats;
extern const double lr_hist_bounds[LR_HIST_N - 1];
/* The error codes of the LR_REJ_* counters, in order (room.c). */
extern const char *const lr_rej_names[LR_NREJ];
/* The host's one responder of its own JSON answers: status, body, the CORS
 * headers and Content-Type: application/json (router.c). */
void lr_respond_json(lr_response_cb done, void *ud, int status, const char *body);
/* A deep copy of src into *dst (strings, headers, body; NULL stays NULL),
 * owned by the caller and freed with lr_request_free (router.c). */
void lr_request_copy(lr_request *dst, const lr_request *src);
void lr_request_free(lr_request *q);

/* A process mode that takes over some requests before the engine routes
 * them (shard.c sets s->mode in lr_shard_enable). */
typedef struct lr_mode_vt {
  /* A WebSocket on /parties/shard/{shard_id}: lr_server_ws_open's contract. */
  int (*ws_open)(lr_server *s, const lr_request *req, const char *shard_id,
                 const lr_transport_vt *vt, void *tp, lr_conn **out);
  /* HTTP on /parties/{ns}/{id}{rest}: true when taken (answered later),
   * false to route it as usual. */
  bool (*http)(lr_server *s, const lr_request *req, const char *ns, const char *id,
               const char *rest, lr_response_cb done, void *ud);
  /* Server shutdown: close its sockets (1001), final reports. */
  void (*shutdown)(lr_server *s);
} lr_mode_vt;

/* A WebSocket with an x-shard-id header opened on room r (a shard process
 * relaying its clients): 0 with *out set, or an HTTP status. */
typedef int (*lr_relay_open_fn)(lr_room *r, const lr_request *req, const lr_transport_vt *vt,
                                void *tp, lr_conn **out);

/* The same for a bare connection (lr_conn_new, no room) whose request
 * waited for r's storage: 0, or an HTTP status (c is left to the caller). */
typedef int (*lr_relay_adopt_fn)(lr_room *r, const lr_request *req, lr_conn *c);

/* A cluster node's relaying of rooms other nodes own (cluster.c sets
 * s->cluster in lr_cluster_enable). The engine asks it only about requests
 * that did not come from another node (router.c). */
typedef struct lr_cluster_vt {
  /* The owner of ns/id by the directory cache (a lease seen valid, not
   * expired since), or NULL: then the room is loaded here, which takes its
   * lease or learns who holds it. */
  const char *(*owner)(lr_server *s, const char *ns, const char *id);
  /* The store said holder ("NODE_URL VALID_MS") has ns/id: remember it;
   * returns the owner's URL (valid until the next call), or NULL when the
   * room cannot be relayed there (e.g. holder is this node). */
  const char *(*learn)(lr_server *s, const char *ns, const char *id, const char *holder);
  /* Relay c (a bare joining connection, frames in c->early, no room) to
   * owner; a failure closes c later (never from inside this call). */
  void (*relay_ws)(lr_server *s, lr_conn *c, const lr_request *req, const char *ns, const char *id,
                   const char *owner);
  /* Forward an HTTP request for ns/id to the owner (answered later). */
  void (*relay_http)(lr_server *s, const lr_request *req, const char *ns, const char *id,
                     const char *owner, lr_response_cb done, void *ud);
  /* Server shutdown: close relayed sockets (1001) and links. */
  void (*shutdown)(lr_server *s);
} lr_cluster_vt;

struct lr_server {
  lr_stats stats;
  const lr_rules_vt *rules; /* what the rooms do (bridge.c over runtime.lua); NULL = none */
  lua_State *L;
  int ref; /* registry ref of the Lua server table (runtime.lua) */
  lr_store *store;
  bool own_store;
  bool virtual_clock;
  int64_t vnow;         /* virtual: current ms */
  int64_t wall0, mono0; /* real: wall ms at start and monotonic ms at start */
  lr_timer **heap;
  uint32_t nheap, capheap;
  uint64_t timer_seq;
  lr_room **rooms; /* hash buckets */
  uint32_t nbuckets, nrooms;
  uint32_t nhibernated;       /* rooms with hibernated set (gauge for /metrics) */
  lr_timer **timer_map;       /* id (seq) -> timer, for lr_timer_cancel */
  uint32_t timer_map_cap;     /* power of two */
  int64_t evict_after;        /* default evict_ms of new rooms (60000; 0 = never) */
  lr_addr_rate *room_rate;    /* rooms created per client address */
  lr_addr_rate *session_rate; /* new sessions per client address (runtime.lua) */
  lr_room *touched;
  lr_test_rng test_rng; /* headless test host only (rng_seeded) */
  bool rng_seeded;      /* false: ids from getrandom(2) (always under `serve`) */
  bool shutting_down;
  bool in_tick;
  bool batch_joins; /* inside a network pass: joins share the room's end-of-pass flush */
  /* headless: connections whose close is pending delivery */
  struct lr_wait *waits; /* requests waiting for a room's storage (room.c) */
  lr_conn **pending_close;
  uint32_t npending_close, cappending_close;
  char parties_prefix[32];       /* "/parties" */
  long max_rooms;                /* refuse to create rooms past this (default 100000) */
  void *shard;                   /* shard mode state (shard.c), NULL unless `serve --shard` */
  const lr_mode_vt *mode;        /* shard.c's, with shard; NULL otherwise */
  lr_relay_open_fn relay_open;   /* uplink.c's (lr_uplink_install); NULL = refused (404) */
  const lr_loop_fds *loop_fds;   /* the transport's (lr_server_set_loop_fds); NULL = none */
  lr_relay_adopt_fn relay_adopt; /* uplink.c's too */
  const lr_cluster_vt *cluster;  /* cluster.c's (lr_cluster_enable), NULL = not relaying */
  void *cluster_state;
  char *wanted_headers[LR_WANTED_HEADERS]; /* lr_server_want_header (room.c) */
  uint32_t nwanted_headers;
  lr_room *failing; /* rooms whose writes fail (/readyz), newest first */
  uint32_t nfailing;
};

/* ---- room.c ---- */
lr_server *lr_server_new(lua_State *L, lr_store *store, bool own_store, bool virtual_clock,
                         uint64_t seed);
void lr_server_free(lr_server *s);
/* Called at the end of every lr_server_new when set: the composition root
 * (lua_core.c, once lunaroom.core is loaded) gives new servers their rules
 * and the features they serve. NULL: servers start without rules (the
 * caller sets s->rules, as the C tests do). */
extern void (*lr_server_init_hook)(lr_server *s);
int64_t lr_now(const lr_server *s);
void lr_random_id(lr_server *s, char *out, size_t n, const char *alphabet);

lr_room *lr_room_new(lr_server *s, const char *ns, const char *id);
lr_room *lr_room_find(lr_server *s, const char *ns, const char *id);
static inline lr_room *lr_room_retain(lr_room *r) {
  r->refs++;
  return r;
}
void lr_room_release(lr_room *r);
void lr_room_dispose(lr_room *r);
/* A state write happened in r: schedule the end-of-call flush pass. */
void lr_room_touch(lr_room *r);
/* Run the flush pass for every touched room (sync per throttle/autoSync,
 * storage per throttle). Called after every entry into Lua. */
void lr_server_flush_touched(lr_server *s);
/* m to c as it is (sync.c): through the storage gate, not the interceptor.
 * lua_wait.c sends with it a packet whose interceptor waited. */
void lr_conn_send_raw(lr_conn *c, lr_msg *m);
/* Handlers that wait (lua_wait.c, runtime.lua): r does not hibernate or get
 * evicted while r->nwaits > 0 (delta +1 when a handler of r starts waiting,
 * -1 when it finished). */
void lr_room_wait_hold(lr_room *r, int delta);
/* c joined after its connect waited (a guard or onJoin): the frames it sent
 * meanwhile are handled in order, from a 0 ms timer (not inside the caller's
 * Lua call). */
void lr_conn_replay_early_later(lr_conn *c);
/* The error packet {type:"error", value:{code, action?, message}} to c
 * (counted in the rejected stats; bypasses the interceptor and the gate). */
void lr_conn_send_error(lr_conn *c, const char *code, const char *action, const char *message);
/* Development mode: after a reload, look again at the WebSockets that wait
 * for a room file that did not load (router.c), from a 0 ms timer. A no-op
 * when none waits. */
void lr_server_dev_recheck_later(lr_server *s);
/* Answer with the response table on top of L's stack: {status=,
 * headers={{name,value},...}, body=string}. [-0,+0] */
void lr_respond_table(lua_State *L, lr_response_cb done, void *ud);
/* lua_wait.c: the response table on top of L is runtime.lua's "pending"
 * answer (a guard or route handler of room r, NULL for an operations path,
 * waits): the request is answered with done/ud when it finished. Returns
 * false for an ordinary response. */
bool lr_wait_http_defer(lr_server *s, lr_room *r, lua_State *L, lr_response_cb done, void *ud);
/* Send the pending sync patch now (applySync / throttle end). If nothing is
 * pending and full_if_clean, every connection gets the full state. Parked
 * connections get pId + full state. */
void lr_room_flush_sync(lr_room *r, bool full_if_clean);
/* Write pending persisted changes now; returns 0 or a storage error. */
int lr_room_flush_storage(lr_room *r);
/* A write of r's storage outside the flush (core.store_apply) returned rc:
 * keeps the gate's counters and the failing state up to date. */
void lr_room_store_written(lr_room *r, int rc, const char *err);
/* True while r's writes fail (it refuses actions, joins and requests). */
static inline bool lr_room_store_failing(const lr_room *r) {
  return r->flush_failed || r->backend_failed;
}
/* Changes of r not yet written (dirty persisted state), 0 when clean. */
bool lr_room_has_unwritten(lr_room *r);
/* r must not be disposed yet: unwritten or uncommitted changes, failing
 * writes, or packets waiting for them (idle eviction checks this). */
static inline bool lr_room_storage_busy(lr_room *r) {
  return lr_room_has_unwritten(r) || lr_room_store_failing(r) || r->outhead < r->nout ||
         r->st_committed < r->st_accepted;
}
/* Shutdown: try once more to write every room with unwritten changes;
 * returns how many still have some (main.c retries for a bounded time; what
 * is left is logged with its keys when the rooms are disposed). */
long lr_server_retry_unwritten(lr_server *s);
/* Encode and send one packet to one connection (through the interceptor). */
void lr_conn_send_value(lr_conn *c, const lr_node *v);
void lr_conn_send_msg(lr_conn *c, lr_msg *m, const char *json, size_t len);
/* Broadcast a packet to every joined connection except the listed conn ids. */
void lr_room_broadcast(lr_room *r, const lr_node *v, const char *const *except, size_t nexcept);
/* Add c to the broadcast list after sending it its pId snapshot. */
void lr_room_join(lr_room *r, lr_conn *c, const char *public_id);
void lr_conn_close(lr_conn *c, int code, const char *reason);
void lr_conn_retain(lr_conn *c);
void lr_conn_release(lr_conn *c);
/* Timers. */
lr_timer *lr_timer_add(lr_server *s, int64_t delay_ms, lr_timer_kind kind, lr_room *r, int fn_ref);
void lr_timer_cancel(lr_server *s, uint64_t id);
/* A C callback after delay_ms (virtual clock in headless servers). Returns
 * the timer id for lr_timer_cancel. */
uint64_t lr_timer_add_c(lr_server *s, int64_t delay_ms, lr_timer_cb cb, void *ud);
/* Virtual clock: advance by ms, firing timers in order. */
void lr_server_advance(lr_server *s, int64_t ms);
/* srv.env[name] of the server (the environment the host passed), copied
 * into buf; "" when unset. */
const char *lr_server_env(lr_server *s, const char *name, char *buf, size_t n);

/* Open a client connection on r (connect, guards, snapshot). The returned
 * conn holds one reference for the caller's transport (see server.h). */
lr_conn *lr_room_open_conn(lr_room *r, const lr_request *req, const lr_transport_vt *vt, void *tp);
/* The same for a connection of another kind (ops set before its connect
 * runs: a client relayed by a shard). */
lr_conn *lr_room_open_kind(lr_room *r, const lr_request *req, const lr_transport_vt *vt, void *tp,
                           const lr_conn_ops *ops);
/* Add a raw member to r's broadcast list: joined at once, no connect, no
 * session, no snapshot (a shard uplink). One reference for the transport. */
lr_conn *lr_room_attach(lr_room *r, const lr_transport_vt *vt, void *tp);
/* The same for an existing bare connection c (lr_conn_new, no room yet:
 * a cluster node's link that waited for the room's lease). */
void lr_room_attach_conn(lr_room *r, lr_conn *c);
/* c (a bare joining connection, no room, frames in c->early) opens on the
 * room req names as if it had just arrived, whose storage is ready (a
 * cluster node takes over the clients it relayed, the room's lease taken). */
void lr_server_open_conn(lr_server *s, lr_conn *c, const lr_request *req);
/* Handle the frames c received before it joined, in order, now (c joined,
 * or its ops->message set: they go there). */
void lr_conn_replay_early(lr_conn *c);
/* A bare connection object (no Lua table, no room list); r may be NULL.
 * One reference for the transport. */
lr_conn *lr_conn_new(lr_server *s, lr_room *r, const lr_transport_vt *vt, void *tp);

/* The room's idle settings changed (hibernate_ms, evict_ms): arm its idle
 * timer from now. */
void lr_room_idle_config(lr_room *r);

/* Wake a hibernated room (rebuild it from storage) and note activity. */
bool lr_room_activity(lr_room *r); /* false: r could not wake (its sockets are closed) */

#endif

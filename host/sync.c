/*
 * sync.c - the flush pass: the rooms touched since the last pass, sync
 * throttling (leading edge + trailing window), autoSync/applySync, packets
 * encoded once and sent to every member (through the interceptor when the
 * room has one), snapshots for joiners, and the storage side of the flush:
 * throttled batches, retries of failed writes, and the storage gate (see
 * room.c's header for the rule).
 *
 * Owns: lr_room_touch, lr_server_flush_touched, lr_server_batch_joins,
 * lr_room_flush_sync, lr_room_flush_storage, the outbox of a gated room,
 * the failing state (lr_room.flush_failed/backend_failed) and the
 * lr_conn_send_* / lr_room_broadcast send path.
 * Must not: open, close or route connections (room.c, router.c), or name
 * Lua (the interceptor and public ids come from s->rules).
 */
#include "engine_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "log.h"

void lr_room_touch(lr_room *r) {
  if (r->touched || r->disposed) return;
  r->touched = true;
  r->touched_next = r->srv->touched;
  r->srv->touched = r;
}

/* Arm the retry of a failed storage write: 1 s, doubling up to 30 s. A
 * server that is shutting down retries every 100 ms (main.c bounds it). */
void lr_room_retry_storage(lr_room *r) {
  if (r->srv->shutting_down) return; /* lr_server_drain_storage retries */
  if (r->store_timer) return;
  r->store_timer = true;
  lr_timer_add(r->srv, r->store_retry_ms, LR_T_STORE, r, LR_NOREF);
  if (r->store_retry_ms < 30000) r->store_retry_ms *= 2;
}

static void schedule_storage(lr_room *r) {
  lr_server *s = r->srv;
  if (!lr_state_dirty(r->root, LR_CH_PERSIST) || r->store_timer) return;
  if (r->throttle_storage <= 0 || s->shutting_down) {
    if (lr_room_flush_storage(r) != 0) lr_room_retry_storage(r);
    return;
  }
  r->store_timer = true;
  lr_timer_add(s, r->throttle_storage, LR_T_STORE, r, LR_NOREF);
}

static void schedule_sync(lr_room *r) {
  lr_server *s = r->srv;
  if (!r->auto_sync) return;
  if (r->batched_joins) { /* end of the pass (unthrottled rooms only) */
    lr_room_flush_sync(r, false);
    return;
  }
  if (!lr_state_dirty(r->root, LR_CH_SYNC)) return;
  if (r->throttle_sync <= 0) {
    lr_room_flush_sync(r, false);
    return;
  }
  int64_t now = lr_now(s);
  if (now >= r->sync_window_end && !r->sync_timer) {
    /* Leading edge: send now and open a window. */
    lr_room_flush_sync(r, false);
    r->sync_window_end = now + r->throttle_sync;
    return;
  }
  if (!r->sync_timer) {
    r->sync_timer = true;
    lr_timer_add(s, r->sync_window_end - now, LR_T_SYNC, r, LR_NOREF);
  }
}

void lr_server_flush_touched(lr_server *s) {
  lr_room *later = NULL; /* rooms with batched joiners: flushed at the end of the pass */
  while (s->touched) {
    lr_room *r = s->touched;
    s->touched = r->touched_next;
    if (s->batch_joins && r->batched_joins) {
      r->touched_next = later;
      later = r;
      continue;
    }
    r->touched = false;
    lr_room_retain(r);
    /* Storage first: with throttleStorage 0, what a client is sent has
     * already been written. */
    schedule_storage(r);
    lr_room_gate_settle(r);
    schedule_sync(r);
    lr_room_release(r);
  }
  s->touched = later;
}

void lr_server_batch_joins(lr_server *s, bool on) {
  s->batch_joins = on;
}

/* ------------------------------------------------------------ storage gate */

#define LR_GATED_MAX                                                                               \
  ((size_t)4 << 20)            /* bytes waiting per connection (the default --max-queue)           \
                                */
#define TAG_PENDING UINT64_MAX /* waits for the room's next write of its state */

/* Packets of r must wait: it has changes not committed, or older packets wait. */
static bool room_gated(const lr_room *r) {
  return r->outhead < r->nout || lr_room_store_failing(r) || r->st_committed < r->st_accepted ||
         (r->throttle_storage <= 0 && r->srv->store && lr_state_dirty(r->root, LR_CH_PERSIST));
}

static uint64_t gate_tag(const lr_room *r) {
  if (lr_state_dirty(r->root, LR_CH_PERSIST) &&
      (r->throttle_storage <= 0 || lr_room_store_failing(r)))
    return TAG_PENDING;
  return r->st_accepted;
}

void lr_conn_transport_send(lr_conn *c, lr_msg *m) {
  if (c->phase == LR_C_GONE || c->phase == LR_C_CLOSING) return;
  c->srv->stats.packets_out++;
  c->srv->stats.bytes_out += m->len;
  if (c->vt->send(c, m) != 0) lr_conn_close(c, 1008, "outgoing queue full");
}

static void gate_hold(lr_room *r, lr_conn *c, lr_msg *m) {
  if ((size_t)c->gated_bytes + m->len > LR_GATED_MAX) {
    lr_warn("conn %s room %s: %zu bytes wait for storage; closing it", c->id, r->key,
            (size_t)c->gated_bytes + m->len);
    lr_conn_close(c, 1013, "storage unavailable");
    return;
  }
  if (r->nout == r->capout) {
    if (r->outhead > 0) {
      memmove(r->outbox, r->outbox + r->outhead, (r->nout - r->outhead) * sizeof *r->outbox);
      r->nout -= r->outhead;
      r->outhead = 0;
    } else {
      r->capout = r->capout ? r->capout * 2 : 16;
      r->outbox = lr_xrealloc(r->outbox, r->capout * sizeof *r->outbox);
    }
  }
  lr_conn_retain(c);
  r->outbox[r->nout++] = (lr_gated){c, lr_msg_retain(m), gate_tag(r)};
  c->gated_bytes += m->len;
  lr_room_touch(r);
}

/* Send, in order, what waited for writes that are now committed. */
static void outbox_release(lr_room *r) {
  if (r->outhead == r->nout) return;
  lr_room_retain(r);
  while (r->outhead < r->nout && r->outbox[r->outhead].tag <= r->st_committed) {
    lr_gated g = r->outbox[r->outhead++];
    g.c->gated_bytes -= g.m->len;
    lr_conn_transport_send(g.c, g.m);
    lr_msg_release(g.m);
    lr_conn_release(g.c);
  }
  if (r->outhead == r->nout) r->outhead = r->nout = 0;
  lr_room_release(r);
}

void lr_room_outbox_free(lr_room *r) {
  for (uint32_t i = r->outhead; i < r->nout; i++) {
    r->outbox[i].c->gated_bytes -= r->outbox[i].m->len;
    lr_msg_release(r->outbox[i].m);
    lr_conn_release(r->outbox[i].c);
  }
  free(r->outbox);
  r->outbox = NULL;
  r->outhead = r->nout = r->capout = 0;
}

/* The state of r is written (or was clean): what waited for that write now
 * waits for the batch that carried it; then release what is committed. */
void lr_room_gate_settle(lr_room *r) {
  if (r->outhead == r->nout) return;
  if (!lr_state_dirty(r->root, LR_CH_PERSIST)) {
    for (uint32_t i = r->nout; i > r->outhead && r->outbox[i - 1].tag == TAG_PENDING; i--)
      r->outbox[i - 1].tag = r->st_accepted;
  }
  outbox_release(r);
}

void lr_room_set_failing(lr_room *r, bool engine, bool on, const char *err) {
  lr_server *s = r->srv;
  bool was = lr_room_store_failing(r);
  if (engine)
    r->flush_failed = on;
  else
    r->backend_failed = on;
  bool now = lr_room_store_failing(r);
  if (now && err && *err) {
    free(r->store_err);
    r->store_err = lr_xstrndup(err, strlen(err));
  }
  if (was == now) return;
  if (now) {
    r->failing_next = s->failing;
    if (s->failing) s->failing->failing_pprev = &r->failing_next;
    r->failing_pprev = &s->failing;
    s->failing = r;
    s->nfailing++;
    lr_error("room %s: its storage writes fail (%s): it refuses actions, joins and requests, and "
             "holds what it sends, until they commit",
             r->key, r->store_err ? r->store_err : "-");
  } else {
    *r->failing_pprev = r->failing_next;
    if (r->failing_next) r->failing_next->failing_pprev = r->failing_pprev;
    r->failing_next = NULL;
    r->failing_pprev = NULL;
    s->nfailing--;
    free(r->store_err);
    r->store_err = NULL;
    if (!r->disposed)
      lr_info("room %s: its storage writes commit again; held packets go out", r->key);
  }
}

/* Ask a write-behind store how far r's writes got. */
static void refresh_progress(lr_room *r) {
  lr_store *st = r->srv->store;
  if (!st || !st->vt->progress) return; /* synchronous: committed when apply returns */
  char err[256] = "";
  uint64_t a = 0, c = 0;
  int rc = st->vt->progress(st, r->ns, r->id, &a, &c, err, sizeof err);
  r->st_accepted = a;
  r->st_committed = c;
  lr_room_set_failing(r, false, rc < 0, err);
}

/* A write-behind store committed or failed writes of (ns, id): the room, if
 * live, releases what waited for them. */
static void store_progress(void *ud, const char *ns, const char *id) {
  lr_server *s = ud;
  lr_room *r = lr_room_find(s, ns, id);
  if (!r || r->disposed) return;
  lr_room_retain(r);
  refresh_progress(r);
  lr_room_gate_settle(r);
  lr_room_release(r);
}

/* A cluster store lost the lease of (ns, id): the room, if live, closes its
 * sockets with code (held packets are dropped: never stored) and is
 * disposed without writing. */
static void store_lost(void *ud, const char *ns, const char *id, int code, const char *why) {
  lr_server *s = ud;
  lr_room *r = lr_room_find(s, ns, id);
  if (!r || r->disposed) return;
  lr_warn("room %s: %s; its connections are closed (%d) and it is dropped here", r->key, why, code);
  lr_room_retain(r);
  lr_room_outbox_free(r); /* held packets show writes that were never stored */
  for (uint32_t i = r->nconns; i-- > 0;)
    lr_conn_close(r->conns[i], code, why);
  lr_room_dispose(r);
  lr_room_release(r);
}

static int store_holds(void *ud, const char *ns, const char *id) {
  lr_room *r = lr_room_find(ud, ns, id);
  return r && !r->disposed;
}

static uint64_t store_timer(void *ud, int64_t ms, lr_store_timer_cb cb, void *arg) {
  return lr_timer_add_c(ud, ms, cb, arg);
}

static void store_cancel(void *ud, uint64_t id) {
  lr_timer_cancel(ud, id);
}

static void *store_watch(void *ud, int fd, void (*cb)(void *arg, int revents), void *arg) {
  lr_server *s = ud;
  return s->loop_fds ? s->loop_fds->watch(fd, cb, arg) : NULL;
}

static void store_watch_write(void *ud, void *w, int on) {
  lr_server *s = ud;
  if (s->loop_fds && w) s->loop_fds->write(w, on);
}

static void store_unwatch(void *ud, void *w) {
  lr_server *s = ud;
  if (s->loop_fds && w) s->loop_fds->unwatch(w);
}

void lr_server_set_loop_fds(lr_server *s, const lr_loop_fds *fds) {
  s->loop_fds = fds;
}

static int store_call(void *ud, const char *what, int nargs, int nres, char *err, size_t errlen) {
  lr_server *s = ud;
  if (!s->rules || !s->rules->call) {
    snprintf(err, errlen, "%s: no runtime to call", what);
    return -1;
  }
  return s->rules->call(s, what, nargs, nres, err, errlen);
}

static int store_lua_server(void *ud) {
  return ((lr_server *)ud)->ref;
}

/* What a store that waits for I/O reports through and waits on (storage.h):
 * bound with the server as ud (lr_server_new). */
const lr_store_host lr_engine_store_host = {
    .progress = store_progress,
    .lost = store_lost,
    .holds = store_holds,
    .timer = store_timer,
    .cancel = store_cancel,
    .watch = store_watch,
    .watch_write = store_watch_write,
    .unwatch = store_unwatch,
    .call = store_call,
    .lua_server = store_lua_server,
};

void lr_room_store_written(lr_room *r, int rc, const char *err) {
  if (r->disposed) return;
  if (rc == 0) {
    refresh_progress(r);
  } else if (rc != LR_STORE_EARG) { /* bad arguments are the caller's error */
    lr_room_set_failing(r, true, true, err);
    lr_room_retry_storage(r);
  }
}

/* ------------------------------------------------------------ sending */

void lr_conn_send_raw(lr_conn *c, lr_msg *m) {
  if (c->phase == LR_C_GONE || c->phase == LR_C_CLOSING) return;
  if (c->batched) { /* its snapshot goes first (lr_room_flush_sync) */
    lr_held *h = lr_xmalloc(sizeof *h);
    h->m = lr_msg_retain(m);
    h->next = c->held; /* newest first; deliver_held reverses */
    c->held = h;
    return;
  }
  if (c->room && room_gated(c->room)) {
    gate_hold(c->room, c, m);
    return;
  }
  lr_conn_transport_send(c, m);
}

/* Send an already-encoded packet to c, through the room's interceptor when it
 * has one (the only per-connection Lua work on the send path). */
void lr_conn_send_msg(lr_conn *c, lr_msg *m, const char *json, size_t len) {
  lr_room *r = c->room;
  if (c->ops && c->ops->fanout && r && r->has_interceptor) {
    /* One interceptor call per relayed client, not one for the whole shard. */
    lr_msg *own = m ? lr_msg_retain(m) : lr_msg_new(json, len);
    c->ops->fanout(c, own, NULL, 0);
    lr_msg_release(own);
    return;
  }
  if (!r || !r->has_interceptor) {
    lr_msg *own = m ? m : lr_msg_new(json, len);
    lr_conn_send_raw(c, own);
    if (!m) lr_msg_release(own);
    return;
  }
  lr_msg *own = m ? lr_msg_retain(m) : lr_msg_new(json, len);
  lr_msg *out = c->srv->rules->intercept(c, own); /* NULL: dropped (a failing interceptor) */
  lr_msg_release(own);
  if (out) {
    lr_conn_send_raw(c, out);
    lr_msg_release(out);
  }
}

void lr_conn_send_value(lr_conn *c, const lr_node *v) {
  lr_buf b;
  lr_buf_init(&b);
  lr_json_encode(v, 0, &b);
  lr_conn_send_msg(c, NULL, b.data, b.len);
  lr_buf_free(&b);
}

static bool excluded(const lr_conn *c, const char *const *except, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(c->id, except[i]) == 0) return true;
  return false;
}

void lr_room_broadcast(lr_room *r, const lr_node *v, const char *const *except, size_t nexcept) {
  lr_buf b;
  lr_buf_init(&b);
  lr_json_encode(v, 0, &b);
  lr_msg *m = lr_msg_new(b.data, b.len);
  lr_buf_free(&b);
  lr_room_retain(r);
  for (uint32_t i = 0; i < r->nconns; i++) {
    lr_conn *c = r->conns[i];
    if ((c->parked && !c->batched) || (c->ops && c->ops->via_uplink) ||
        excluded(c, except, nexcept))
      continue;
    if (c->ops && c->ops->fanout && nexcept)
      c->ops->fanout(c, m, except, nexcept); /* some of its clients may be excluded */
    else
      lr_conn_send_msg(c, m, NULL, 0);
  }
  lr_room_release(r);
  lr_msg_release(m);
}

/* The full synced state, {...}, as a snapshot carries it. */
static void encode_state(lr_room *r, lr_buf *st) {
  lr_json_encode(r->root, LR_F_NOSYNC, st);
}

/* Full-state packet for one connection, {"type":"sync","value":{"pId":..,...}},
 * around st from encode_state. */
static void snapshot_packet(const lr_buf *st, const char *public_id, lr_buf *out) {
  lr_buf_puts(out, "{\"type\":\"sync\",\"value\":{");
  if (public_id) {
    lr_buf_puts(out, "\"pId\":");
    lr_json_put_string(out, public_id, strlen(public_id));
    if (st->len > 2) lr_buf_putc(out, ',');
  }
  if (st->len > 2)
    lr_buf_put(out, st->data + 1, st->len - 1);
  else
    lr_buf_putc(out, '}');
  lr_buf_putc(out, '}');
}

void lr_room_encode_snapshot(lr_room *r, const char *public_id, lr_buf *out) {
  lr_buf st;
  lr_buf_init(&st);
  encode_state(r, &st);
  snapshot_packet(&st, public_id, out);
  lr_buf_free(&st);
}

static const char *conn_public_id(lr_conn *c, char *buf, size_t n) {
  return c->srv->rules->public_id(c, buf, n);
}

/* A batched joiner got its snapshot: what was sent to it meanwhile follows,
 * in order. */
static void deliver_held(lr_conn *c) {
  lr_held *h = NULL;
  for (lr_held *x = c->held, *next; x; x = next) { /* oldest first */
    next = x->next;
    x->next = h;
    h = x;
  }
  c->held = NULL;
  while (h) {
    lr_held *next = h->next;
    lr_conn_send_raw(c, h->m);
    lr_msg_release(h->m);
    free(h);
    h = next;
  }
}

void lr_room_flush_sync(lr_room *r, bool full_if_clean) {
  bool dirty = lr_state_dirty(r->root, LR_CH_SYNC);
  bool parked = r->nparked > 0;
  r->batched_joins = false;
  if (!dirty && !full_if_clean && !parked) return;
  lr_room_retain(r);
  lr_msg *m = NULL;
  lr_buf b;
  lr_buf_init(&b);
  if (dirty) {
    lr_buf_puts(&b, "{\"type\":\"sync\",\"value\":");
    lr_json_encode_patch(r->root, LR_CH_SYNC, &b);
    lr_buf_putc(&b, '}');
    lr_state_clear_dirty(r->root, LR_CH_SYNC);
  } else if (full_if_clean) {
    lr_room_encode_snapshot(r, NULL, &b);
  }
  if (b.len) m = lr_msg_new(b.data, b.len);
  lr_buf st; /* the state, encoded once for every parked connection */
  lr_buf_init(&st);
  if (parked) encode_state(r, &st);
  /* The common case, decided once for the whole fan-out instead of per
   * recipient: no interceptor and nothing held by the storage gate, so the
   * patch goes straight to each member's transport. Sending cannot change
   * either (a transport never calls the engine; only gate_hold makes a room
   * gated, and it runs only when the room already is). */
  bool direct = m && !r->has_interceptor && !room_gated(r);
  /* Without a packet for everyone (a join's flush) only the parked get
   * anything: start at the first of them. Joiners are appended, so a join
   * does not visit the room's other members. */
  uint32_t from = 0;
  if (!m) {
    from = r->nconns;
    for (uint32_t left = r->nparked; left && from > 0;)
      if (r->conns[--from]->parked) left--;
  }
  for (uint32_t i = from; i < r->nconns; i++) {
    lr_conn *c = r->conns[i];
    if (direct && !c->parked && !c->batched && !c->ops) {
      lr_conn_transport_send(c, m); /* = lr_conn_send_msg's path for this case */
    } else if (c->parked) {
      char pid[64];
      lr_buf snap;
      lr_buf_init(&snap);
      snapshot_packet(&st, conn_public_id(c, pid, sizeof pid), &snap);
      c->parked = false;
      c->batched = false;
      r->nparked--;
      lr_conn_send_msg(c, NULL, snap.data, snap.len);
      lr_buf_free(&snap);
      deliver_held(c);
    } else if (m && !(c->ops && c->ops->via_uplink)) {
      lr_conn_send_msg(c, m, NULL, 0);
    }
  }
  lr_buf_free(&st);
  lr_msg_release(m);
  lr_buf_free(&b);
  lr_room_release(r);
}

/* ------------------------------------------------------------ storage */

#define OPS_INLINE 4 /* a flush of one or two changed keys allocates no op arrays */

typedef struct {
  lr_store_op *ops; /* ops_in, or the heap past OPS_INLINE */
  size_t n, cap;
  lr_buf keys;  /* all keys and values, NUL-separated; ops point into it */
  size_t *offs; /* (keyoff, valoff) pairs, fixed up before apply */
  lr_store_op ops_in[OPS_INLINE];
  size_t offs_in[2 * OPS_INLINE];
  /* Scalars written with their prefix deletion: LR_F_STORED_FLAT once the
   * batch is committed (flat_in, or the heap past OPS_INLINE). */
  lr_node **flat;
  size_t nflat, capflat;
  lr_node *flat_in[OPS_INLINE];
} opsbuf; /* zero-initialised in place; not copied once used */

/* Append an op whose key is k1 k2 (and then tail, when not 0). */
static void ops_push(opsbuf *o, lr_store_op_kind kind, const char *k1, const char *k2, size_t k2len,
                     char tail, const char *val, size_t vallen) {
  if (o->n == o->cap) {
    if (!o->cap) {
      o->ops = o->ops_in;
      o->offs = o->offs_in;
      o->cap = OPS_INLINE;
    } else if (o->ops == o->ops_in) {
      o->cap *= 2;
      o->ops = lr_xmalloc(o->cap * sizeof *o->ops);
      o->offs = lr_xmalloc(o->cap * 2 * sizeof *o->offs);
      memcpy(o->ops, o->ops_in, sizeof o->ops_in);
      memcpy(o->offs, o->offs_in, sizeof o->offs_in);
    } else {
      o->cap *= 2;
      o->ops = lr_xrealloc(o->ops, o->cap * sizeof *o->ops);
      o->offs = lr_xrealloc(o->offs, o->cap * 2 * sizeof *o->offs);
    }
  }
  size_t koff = o->keys.len;
  lr_buf_puts(&o->keys, k1);
  lr_buf_put(&o->keys, k2, k2len);
  if (tail) lr_buf_putc(&o->keys, tail);
  size_t klen = o->keys.len - koff;
  lr_buf_putc(&o->keys, 0);
  size_t voff = o->keys.len;
  if (val) {
    lr_buf_put(&o->keys, val, vallen);
    lr_buf_putc(&o->keys, 0);
  }
  o->ops[o->n] = (lr_store_op){kind, NULL, klen, NULL, vallen};
  o->offs[2 * o->n] = koff;
  o->offs[2 * o->n + 1] = val ? voff : (size_t)-1;
  o->n++;
}

static bool is_scalar(const lr_node *n) {
  return n->type != LR_OBJECT && n->type != LR_ARRAY;
}

static void on_put(void *ud, const char *path, size_t pathlen, const char *json, size_t jsonlen,
                   const lr_node *n) {
  opsbuf *o = ud;
  if (pathlen == 0) { /* the whole state: compacted form */
    ops_push(o, LR_STORE_DEL_PREFIX, "state:", "", 0, 0, NULL, 0);
    ops_push(o, LR_STORE_PUT, "state:", ".", 1, 0, json, jsonlen);
    return;
  }
  /* A value replaces everything stored below its path: "state:<path>." --
   * unless it is a scalar the store already holds nothing below (a player's
   * x written again: one op, not two). */
  if (!(is_scalar(n) && (n->flags & LR_F_STORED_FLAT))) {
    ops_push(o, LR_STORE_DEL_PREFIX, "state:", path, pathlen, '.', NULL, 0);
    if (is_scalar(n)) {
      if (o->nflat == o->capflat) {
        if (!o->capflat) {
          o->flat = o->flat_in;
          o->capflat = OPS_INLINE;
        } else {
          o->capflat *= 2;
          lr_node **f = lr_xmalloc(o->capflat * sizeof *f);
          memcpy(f, o->flat, o->nflat * sizeof *f);
          if (o->flat != o->flat_in) free(o->flat);
          o->flat = f;
        }
      }
      o->flat[o->nflat++] = (lr_node *)n; /* the room's own tree: flagged once committed */
    }
  }
  ops_push(o, LR_STORE_PUT, "state:", path, pathlen, 0, json, jsonlen);
}

/* The batch that writes r's pending persisted changes. */
static void build_ops(lr_room *r, opsbuf *o) {
  lr_buf_init(&o->keys);
  lr_buf_reserve(&o->keys, 500); /* a flush of a few keys: one allocation, no regrowth */
  if (lr_state_has_dels(r->root, LR_CH_PERSIST)) {
    /* Compaction, as the reference does after a delete: every state: key
     * goes, the whole persisted state is written at state:. */
    lr_buf full;
    lr_buf_init(&full);
    lr_json_encode(r->root, LR_F_NOPERSIST, &full);
    ops_push(o, LR_STORE_DEL_PREFIX, "state:", "", 0, 0, NULL, 0);
    ops_push(o, LR_STORE_PUT, "state:", ".", 1, 0, full.data, full.len);
    lr_buf_free(&full);
  } else {
    /* No deletion is pending here (they compact, above): no del callback. */
    lr_persist_ops cb = {o, on_put, NULL};
    lr_json_walk_persist(r->root, &cb);
  }
  for (size_t i = 0; i < o->n; i++) {
    o->ops[i].key = o->keys.data + o->offs[2 * i];
    o->ops[i].val = o->offs[2 * i + 1] == (size_t)-1 ? NULL : o->keys.data + o->offs[2 * i + 1];
  }
}

static void ops_free(opsbuf *o) {
  if (o->ops != o->ops_in) {
    free(o->ops);
    free(o->offs);
  }
  if (o->flat != o->flat_in) free(o->flat);
  lr_buf_free(&o->keys);
}

int lr_room_flush_storage(lr_room *r) {
  lr_server *s = r->srv;
  if (!lr_state_dirty(r->root, LR_CH_PERSIST)) {
    if (r->flush_failed)
      lr_room_set_failing(r, true, false, NULL); /* a failed direct write, retried */
    return 0;
  }
  if (!s->store) {
    lr_state_clear_dirty(r->root, LR_CH_PERSIST);
    return 0;
  }
  opsbuf o = {0};
  build_ops(r, &o);
  char err[256] = "";
  double t0 = lr_mono_s();
  int rc = o.n ? lr_store_apply(s->store, r->ns, r->id, o.ops, o.n, err, sizeof err) : 0;
  s->stats.storage_seconds += lr_mono_s() - t0;
  s->stats.storage_flushes++;
  if (rc) s->stats.storage_failures++;
  if (rc == 0) {
    for (size_t i = 0; i < o.nflat; i++)
      o.flat[i]->flags |= LR_F_STORED_FLAT; /* committed: nothing below their paths */
    lr_state_clear_dirty(r->root, LR_CH_PERSIST);
    r->store_retry_ms = 1000;
    if (o.n) refresh_progress(r);
    lr_room_set_failing(r, true, false, NULL);
    lr_room_gate_settle(r);
  } else {
    lr_error("room %s: storage write of %zu ops failed (%s); kept pending, retry in %lld ms",
             r->key, o.n, err, (long long)(s->shutting_down ? 100 : r->store_retry_ms));
    lr_room_set_failing(r, true, true, err);
  }
  ops_free(&o);
  return rc;
}

bool lr_room_has_unwritten(lr_room *r) {
  return r->srv->store && lr_state_dirty(r->root, LR_CH_PERSIST);
}

/* Log what r loses: its unwritten keys (the first 10) and their count. */
void lr_room_report_unwritten(lr_room *r, const char *what) {
  opsbuf o = {0};
  build_ops(r, &o);
  lr_buf keys;
  lr_buf_init(&keys);
  size_t nkeys = 0;
  for (size_t i = 0; i < o.n; i++) {
    if (o.ops[i].kind != LR_STORE_PUT) continue;
    if (nkeys++ < 10)
      lr_buf_printf(&keys, "%s%.*s", nkeys > 1 ? ", " : "", (int)o.ops[i].keylen, o.ops[i].key);
  }
  if (nkeys > 10) lr_buf_printf(&keys, ", ... %zu more", nkeys - 10);
  lr_error("room %s: %s with %zu unwritten key(s), LOST: %s (%s)", r->key, what, nkeys,
           keys.len ? lr_buf_cstr(&keys) : "-", r->store_err ? r->store_err : "storage failed");
  lr_buf_free(&keys);
  ops_free(&o);
}

long lr_server_retry_unwritten(lr_server *s) {
  long left = 0;
  for (uint32_t b = 0; b < s->nbuckets; b++)
    for (lr_room *r = s->rooms[b]; r; r = r->hash_next)
      if (lr_room_has_unwritten(r) && lr_room_flush_storage(r) != 0) left++;
  return left;
}

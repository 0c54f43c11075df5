/*
 * net_idle.c - silent WebSockets: one silent for ws_ping_ms (nothing
 * received: no message, no pong) is sent a ping; one silent for
 * ws_hangup_ms is hung up (no close frame: the peer sees 1006). Any frame
 * that reaches us counts: a message (or a piece of one) or a pong; the
 * peer's own pings are answered by lws and do not.
 *
 * Owns: the loop's two idle lists, the sweep timer (idle_sul) and the
 * net_conn fields idle_prev, idle_next, idle_at, idle_list and ping_due.
 * Must not: call the engine, or write to a socket (the ping is written by
 * the next WRITEABLE, net_ws_writeable).
 *
 * This replaces lws's validity timer (retry_and_idle_policy on the vhost),
 * which gave every socket its own timer in lws's one sorted list of all
 * timers: a new socket's timer is due after all the others, so each join
 * walked the whole list (O(n), ~10k instructions per join at 1,000
 * sockets).
 *
 * Two lists, each in order of last activity (idle_at): ACTIVE (not pinged
 * since it) and PINGED. Activity moves a socket to the tail of ACTIVE:
 * O(1), and skipped while the recorded activity is less than a grain old
 * (a busy socket costs a clock read and a compare per frame; a ping may
 * then come up to one grain early). The sweep takes sockets off the head of
 * ACTIVE while they are due their ping (to the tail of PINGED, which keeps
 * its order) and off the head of PINGED while they are due the hang-up. One
 * lws timer, armed for the earliest due time rounded up to a grain (so at
 * most one wake-up per grain), and only while a list is not empty: an idle
 * server with no socket never wakes for it.
 */
#include "net_int.h"

#include "log.h"

/* Unlink nc from its list (it is on one). */
static void idle_unlink(net_conn *nc) {
  net_loop *L = nc->loop;
  int k = nc->idle_list;
  if (nc->idle_prev)
    nc->idle_prev->idle_next = nc->idle_next;
  else
    L->idle_head[k] = nc->idle_next;
  if (nc->idle_next)
    nc->idle_next->idle_prev = nc->idle_prev;
  else
    L->idle_tail[k] = nc->idle_prev;
  nc->idle_prev = nc->idle_next = NULL;
  nc->idle_list = NET_IDLE_NONE;
}

/* Append nc (on no list) to list k. */
static void idle_append(net_conn *nc, int k) {
  net_loop *L = nc->loop;
  nc->idle_list = (uint8_t)k;
  nc->idle_next = NULL;
  nc->idle_prev = L->idle_tail[k];
  if (L->idle_tail[k])
    L->idle_tail[k]->idle_next = nc;
  else
    L->idle_head[k] = nc;
  L->idle_tail[k] = nc;
}

static void idle_sweep(lws_sorted_usec_list_t *sul);

/* Arm the sweep for the earliest due time after now (rounded up to a
 * grain), or leave it unarmed when no socket is listed. */
static void idle_arm(net_loop *L, uint32_t now) {
  net_conn *a = L->idle_head[NET_IDLE_ACTIVE], *p = L->idle_head[NET_IDLE_PINGED];
  if (!a && !p) return;
  int64_t wait = INT64_MAX;
  if (a) wait = (int64_t)L->idle_ping - (int32_t)(now - a->idle_at);
  if (p) {
    int64_t w = (int64_t)L->idle_hangup - (int32_t)(now - p->idle_at);
    if (w < wait) wait = w;
  }
  if (wait < 1) wait = 1;
  wait = (wait + L->idle_grain - 1) / L->idle_grain * L->idle_grain;
  lws_sul_schedule(L->ctx, 0, &L->idle_sul, idle_sweep, (lws_usec_t)wait * LWS_US_PER_MS);
  L->idle_armed = true;
}

static void idle_sweep(lws_sorted_usec_list_t *sul) {
  net_loop *L = lws_container_of(sul, net_loop, idle_sul);
  L->idle_armed = false;
  if (L->destroying) return;
  uint32_t now = net_idle_now();
  net_conn *nc;
  while ((nc = L->idle_head[NET_IDLE_ACTIVE]) && (now - nc->idle_at) >= L->idle_ping) {
    idle_unlink(nc);
    idle_append(nc, NET_IDLE_PINGED);
    if (L->idle_ping < L->idle_hangup && nc->established && !nc->closing && !nc->dropping) {
      nc->ping_due = true;
      lws_callback_on_writable(nc->wsi);
    }
  }
  while ((nc = L->idle_head[NET_IDLE_PINGED]) && (now - nc->idle_at) >= L->idle_hangup) {
    idle_unlink(nc);
    lr_debug("ws conn %s: nothing received for %u ms, hanging up",
             nc->conn ? lr_conn_id(nc->conn) : "-", (unsigned)(now - nc->idle_at));
    lws_set_timeout(nc->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
  }
  idle_arm(L, now);
}

/* The settings from L->o (lr_net_opts: -1 = never). */
void net_idle_init(net_loop *L) {
  long hang = L->o.ws_hangup_ms, ping = L->o.ws_ping_ms;
  if (hang > 86400000L) hang = 86400000L; /* a day: ages stay far below 2^31 ms */
  L->idle_hangup = hang > 0 ? (uint32_t)hang : 0;
  L->idle_ping = ping > 0 && ping < hang ? (uint32_t)ping : L->idle_hangup; /* = hangup: no ping */
  L->idle_grain = L->idle_ping / 16;
  if (L->idle_grain > NET_IDLE_GRAIN_MS) L->idle_grain = NET_IDLE_GRAIN_MS;
  if (L->idle_grain < 1) L->idle_grain = 1;
}

/* nc is established: it is watched from now on. */
void net_idle_add(net_conn *nc) {
  net_loop *L = nc->loop;
  if (!L->idle_hangup || nc->idle_list || L->destroying) return;
  nc->idle_at = net_idle_now();
  idle_append(nc, NET_IDLE_ACTIVE);
  if (!L->idle_armed) idle_arm(L, nc->idle_at);
}

/* nc is finished: off its list; the sweep stops with the last socket. */
void net_idle_remove(net_conn *nc) {
  net_loop *L = nc->loop;
  nc->ping_due = false;
  if (!nc->idle_list) return;
  idle_unlink(nc);
  if (L->idle_armed && !L->idle_head[NET_IDLE_ACTIVE] && !L->idle_head[NET_IDLE_PINGED]) {
    L->idle_armed = false;
    if (!L->destroying) lws_sul_cancel(&L->idle_sul);
  }
}

/* Activity on nc at now (net_idle_touch): to the tail of the active list. */
void net_idle_move(net_conn *nc, uint32_t now) {
  idle_unlink(nc);
  nc->idle_at = now;
  idle_append(nc, NET_IDLE_ACTIVE);
}

/* The loop ends: no more sweeps. */
void net_idle_stop(net_loop *L) {
  if (L->idle_armed) lws_sul_cancel(&L->idle_sul);
  L->idle_armed = false;
}

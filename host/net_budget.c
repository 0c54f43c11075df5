/*
 * net_budget.c - the message budget of a client address (msgs_per_ip):
 * complete WebSocket messages over it are held, in order, and handed to the
 * engine as tokens come back.
 *
 * Owns: the token buckets and fair shares of struct net_addr, a socket's
 * held messages (net_conn.held), rx flow control of held sockets, the
 * budget timer (net_loop.budget_sul).
 * Must not: drop a message that was read (it is held or delivered), pause a
 * TLS socket while OpenSSL still holds its bytes (see below), or write to a
 * socket.
 */
#include "net_int.h"

#include <string.h>

#include "log.h"

static void net_budget_wake(lws_sorted_usec_list_t *sul);

/* ---- the message budget of an address (msgs_per_ip) ----
 *
 * One token bucket per address, shared by all its sockets (rate msgs_per_ip
 * per second, burst 2 x rate), and a fair share of NET_FAIR_SHARE messages
 * per loop pass. A complete message past either is held: the socket keeps
 * it, stops reading (lws rx flow control: the rest waits in the kernel, the
 * sender feels TCP backpressure) and queues behind the other held sockets of
 * its address. budget_sul hands held messages to the engine, one per socket
 * in turn, as tokens come back; the last one read again. Nothing is dropped;
 * the per-connection limit of the room (rate_limit, 4008) applies after
 * this.
 *
 * TLS: lws 4.1 must not be rx flow controlled while OpenSSL still holds
 * decrypted bytes of the socket (SSL_pending > 0: poll() cannot see them).
 * Its ws POLLIN handler then loops for them forever without reading
 * (re-stashing its buflist each turn: no syscall, the loop never returns,
 * SIGTERM is never seen). So a TLS socket is paused only at a message that
 * leaves nothing pending in OpenSSL; until then its further complete
 * messages are held too (in order). What OpenSSL can hold is at most one
 * TLS record (16 KiB of plaintext), so a socket keeps at most max_frame +
 * NET_HOLD_EXTRA held bytes (a socket past that is closed with 1008; it
 * cannot happen with lws reading as it does), an address at most that many
 * per socket (max_conns_per_ip). */

static void net_budget_arm(net_loop *L, int64_t ms) {
  if (L->destroying) return;
  lws_sul_schedule(L->ctx, 0, &L->budget_sul, net_budget_wake,
                   (lws_usec_t)(ms < 1 ? 1 : ms) * LWS_US_PER_MS);
}

/* Refill a's bucket to now. */
static void net_budget_refill(net_loop *L, struct net_addr *a) {
  double rate = (double)L->o.msgs_per_ip, burst = 2 * rate;
  int64_t now = net_now_ms();
  if (a->tokens_at == 0)
    a->tokens = burst;
  else
    a->tokens += (double)(now - a->tokens_at) * rate / 1000.0;
  if (a->tokens > burst) a->tokens = burst;
  a->tokens_at = now;
}

/* May nc's complete message go to the engine now? Takes a token if so. */
bool net_budget_take(net_conn *nc) {
  net_loop *L = nc->loop;
  struct net_addr *a = nc->ip;
  if (!a || L->o.msgs_per_ip <= 0) return true;
  if (nc->held_n) return false;   /* behind its own held messages: keep the order */
  if (a->held_head) return false; /* others of this address wait: first come first served */
  if (a->pass != L->pass) {
    a->pass = L->pass;
    a->pass_n = 0;
  }
  if (a->pass_n >= NET_FAIR_SHARE) return false;
  net_budget_refill(L, a);
  if (a->tokens < 1) return false;
  a->tokens -= 1;
  a->pass_n++;
  return true;
}

/* Does OpenSSL hold decrypted bytes of nc's socket that lws has not read? */
static bool net_tls_pending(net_conn *nc) {
  if (!lws_is_ssl(nc->wsi)) return false;
  SSL *ssl = lws_get_ssl(nc->wsi);
  return ssl && SSL_pending(ssl) > 0;
}

/* Keep nc's complete message (in rx) behind its held ones and pause its
 * socket if lws can resume it (see above). -1: over what a socket may hold
 * (nothing kept; close it). */
int net_hold(net_conn *nc) {
  net_loop *L = nc->loop;
  struct net_addr *a = nc->ip;
  uint32_t len = (uint32_t)nc->rx.len;
  if (nc->held_n &&
      nc->held->buf.len - nc->held->off + sizeof len + len + 1 > L->o.max_frame + NET_HOLD_EXTRA)
    return -1;
  if (!nc->held) nc->held = lr_xcalloc(1, sizeof *nc->held); /* its first */
  if (!nc->held_n) {
    lr_buf_reset(&nc->held->buf);
    nc->held->off = 0;
  }
  lr_buf_put(&nc->held->buf, &len, sizeof len);
  lr_buf_put(&nc->held->buf, nc->rx.data, len);
  lr_buf_putc(&nc->held->buf, '\0');
  lr_buf_reset(&nc->rx);
  if (nc->held_n++ == 0) {
    nc->held->next = NULL;
    if (a->held_tail)
      a->held_tail->held->next = nc;
    else
      a->held_head = nc;
    a->held_tail = nc;
  }
  if (!nc->paused && !net_tls_pending(nc)) {
    nc->paused = true;
    lws_rx_flow_control(nc->wsi, 0);
  }
  if (!a->waiting) {
    a->waiting = true;
    a->wait_next = L->waiting;
    L->waiting = a;
    lr_warn_limited("message budget",
                    "messages from %s held: over the address's budget (%ld/s) or its share of a "
                    "loop pass",
                    a->key, L->o.msgs_per_ip);
  }
  net_budget_arm(L, 1);
  return 0;
}

/* Take nc out of its address's held list (it is gone, or delivered). */
void net_unhold(net_conn *nc) {
  struct net_addr *a = nc->ip;
  nc->held_n = 0;
  nc->held->off = nc->held->buf.len;
  if (!a) return;
  net_conn **pp = &a->held_head, *prev = NULL;
  while (*pp && *pp != nc) {
    prev = *pp;
    pp = &(*pp)->held->next;
  }
  if (*pp) {
    *pp = nc->held->next;
    if (a->held_tail == nc) a->held_tail = prev;
  }
  nc->held->next = NULL;
}

/* Let nc's socket read again. Outside nc's own callbacks: applied now (lws
 * then services what it stashed while paused). */
static void net_read_again(net_conn *nc) {
  if (!nc->paused) return;
  nc->paused = false;
  if (nc->wsi && !nc->loop->destroying)
    lws_rx_flow_control(nc->wsi, LWS_RXFLOW_REASON_APPLIES_ENABLE | LWS_RXFLOW_REASON_USER_BOOL |
                                     LWS_RXFLOW_REASON_FLAG_PROCESS_NOW);
}

/* nc is closing: forget its held messages and read again (the peer's close
 * frame must get through). The buffer itself is kept (a held message may be
 * in the engine's hands right now) and freed with nc. */
void net_resume(net_conn *nc) {
  if (nc->held_n) net_unhold(nc);
  net_read_again(nc);
}

/* budget_sul: hand held messages to the engine as their addresses' tokens
 * and fair shares allow, one per socket in turn, then sleep until the next
 * token is due. */
static void net_budget_wake(lws_sorted_usec_list_t *sul) {
  net_loop *L = lws_container_of(sul, net_loop, budget_sul);
  int64_t next = -1;
  struct net_addr **pp = &L->waiting;
  while (*pp) {
    struct net_addr *a = *pp;
    net_budget_refill(L, a);
    if (a->pass != L->pass) {
      a->pass = L->pass;
      a->pass_n = 0;
    }
    while (a->held_head && a->tokens >= 1 && a->pass_n < NET_FAIR_SHARE) {
      net_conn *nc = a->held_head;
      uint32_t len;
      memcpy(&len, nc->held->buf.data + nc->held->off, sizeof len);
      size_t at = nc->held->off + sizeof len;
      nc->held->off = at + len + 1;
      a->tokens -= 1;
      a->pass_n++;
      if (--nc->held_n == 0) {
        net_unhold(nc);
        net_read_again(nc);
      } else if (nc->held->next) { /* round robin: to the back of the line */
        a->held_head = nc->held->next;
        a->held_tail->held->next = nc;
        a->held_tail = nc;
        nc->held->next = NULL;
      }
      if (nc->conn && !nc->closing && !nc->dropping)
        lr_conn_message(nc->conn, nc->held->buf.data + at, len);
      if (!nc->held_n) { /* (a close in the engine may have emptied it) */
        if (nc->held->buf.cap > 16384)
          lr_buf_free(&nc->held->buf);
        else
          lr_buf_reset(&nc->held->buf);
        nc->held->off = 0;
      }
    }
    if (!a->held_head) {
      *pp = a->wait_next;
      a->waiting = false;
      a->wait_next = NULL;
      net_addr_put(L, a);
      continue;
    }
    int64_t in = a->pass_n >= NET_FAIR_SHARE
                     ? 1
                     : (int64_t)((1 - a->tokens) * 1000.0 / (double)L->o.msgs_per_ip) + 1;
    if (next < 0 || in < next) next = in;
    pp = &a->wait_next;
  }
  if (next >= 0) net_budget_arm(L, next);
}

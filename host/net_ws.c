/*
 * net_ws.c - WebSocket sessions of the real-socket transport: the upgrade
 * (limits, refusals), frame assembly, and the send queue written from
 * WRITEABLE (the engine's lr_transport_vt).
 *
 * Owns: net_conn (per-connection WebSocket state: frame assembly, the
 * outgoing FIFO of lr_msg references, close handshake; its idle_* fields
 * are net_idle.c's), the transport vt (net_ws_send, net_ws_close), writing
 * the idle sweep's ping.
 * Must not: call back into the engine from inside net_ws_send/net_ws_close
 * (they only queue), or write to a socket outside a WRITEABLE callback (the
 * exceptions: the refusal of an upgrade, answered with
 * lws_return_http_status from HTTP_CONFIRM_UPGRADE as lws documents, and the
 * senders' own answers, written at the end of the loop pass in which their
 * messages arrived (net_ws_answer_flush) when lws buffers nothing for them).
 *
 * Send queue (net_conn). vt->send retains the lr_msg and appends it to a
 * growable ring of power-of-two size: the first NET_RING_INLINE references
 * live inside net_conn (no allocation per send on the usual fan-out path),
 * a bigger ring is allocated when that fills and freed again whenever it
 * drains (an idle connection holds no heap ring); queued bytes are counted as payload +
 * NET_MSG_OVERHEAD so that floods of tiny messages are bounded too. A
 * WRITEABLE is requested when the ring goes from empty to non-empty and again
 * after a WRITEABLE that left messages queued. SERVER_WRITEABLE with several
 * messages queued frames as many as fit in NET_BATCH into one static buffer
 * and writes them with one raw lws_write; a lone message, one of at least
 * NET_ZEROCOPY_MIN bytes at the head of the ring, or one too big for the
 * batch is written alone straight from the shared lr_msg (the payload is
 * never copied or modified; its frame header goes into the LR_MSG_PRE
 * headroom, the same bytes for every server->client frame). Written
 * messages are released; another WRITEABLE is asked if more is queued. A partial
 * kernel write is kept by lws, which withholds WRITEABLE until it drains, so a
 * client that stops reading makes the ring grow: past max_queue_bytes the ring
 * is released at once, the connection is marked dropping and closed with 1008
 * "slow consumer" when possible (or killed by a short lws timeout). vt->close
 * marks the connection closing: the ring drains first, then the close frame
 * goes out (code 0 = an empty close frame, the peer sees 1005).
 *
 * Refused upgrades. The connection limits (and the h2c / non-GET cases)
 * answer the upgrade with an HTTP status. Past them, a socket for a room
 * that does not exist, or cannot be had now, is accepted and closed at once
 * (net_ws_refusal_close): 4004 "no such room", 1013 "try again later" (full,
 * stopping, cannot wake), 1011 (creation failed). It holds its limit slot
 * until it is gone.
 */
#include "net_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

/* ======================= WebSocket ======================= */

/* Release every queued message reference and the ring itself. */
static void net_conn_release_queue(net_conn *nc) {
  while (nc->qlen) {
    lr_msg_release(nc->q[nc->qhead]);
    nc->qhead = (nc->qhead + 1) & (nc->qcap - 1);
    nc->qlen--;
  }
  nc->qbytes = 0;
  if (nc->q != nc->qin) free(nc->q);
  nc->q = NULL;
  nc->qhead = nc->qcap = 0;
}

/* A drained ring is freed: a join burst grows every member's ring (one join
 * patch per joiner before the next WRITEABLE), and an idle connection should
 * not keep that capacity. The next send starts on the inline slots again. */
static void net_conn_ring_trim(net_conn *nc) {
  if (nc->qlen || !nc->q) return;
  if (nc->q != nc->qin) free(nc->q);
  nc->q = NULL;
  nc->qhead = nc->qcap = 0;
}

/* "peer conn ID" for a log line (the engine's lines name the same id with
 * its room). Needs the wsi and the engine's conn, both still attached. */
static const char *net_conn_who(net_conn *nc, char *buf, size_t len) {
  char peer[64] = "unknown";
  if (nc->wsi) net_peer(nc->wsi, peer, sizeof peer);
  snprintf(buf, len, "%s conn %s", peer, nc->conn ? lr_conn_id(nc->conn) : "-");
  return buf;
}

/* The close frame's code and reason (cut to the 123 bytes a close frame
 * holds; NULL or "" = none). */
static void net_conn_set_close(net_conn *nc, int code, const char *reason) {
  size_t n = reason ? strlen(reason) : 0;
  if (n > 123) n = 123;
  free(nc->close_reason);
  nc->close_reason = n ? lr_xstrndup(reason, n) : NULL;
  nc->close_reason_len = (uint8_t)n;
  nc->close_code = code;
}

/* Mark c as a slow consumer: free what it holds and close it with 1008. */
static void net_conn_drop(net_conn *nc, size_t wanted) {
  char who[96];
  lr_warn("ws %s: slow consumer, %zu bytes queued (limit %zu), closing with 1008",
          net_conn_who(nc, who, sizeof who), wanted, nc->loop->o.max_queue_bytes);
  net_conn_release_queue(nc);
  net_resume(nc);
  nc->dropping = true;
  net_conn_set_close(nc, 1008, "slow consumer");
  if (nc->established && !nc->loop->destroying) {
    lws_set_timeout(nc->wsi, PENDING_TIMEOUT_USER_OK, NET_DROP_SECS);
    lws_callback_on_writable(nc->wsi);
  }
}

/* vt->send: queue a reference to m (retained here, released once written or
 * dropped). Returns -1 if the connection is closing or gone, or if m would
 * take it over max_queue_bytes (it is then dropped: see net_conn_drop).
 * Never calls the engine. */
static int net_ws_send(lr_conn *c, lr_msg *m) {
  net_conn *nc = lr_conn_transport(c);
  if (!nc || nc->gone || nc->closing || nc->dropping) return -1;
  size_t cost = (size_t)m->len + NET_MSG_OVERHEAD;
  if (nc->qbytes + cost > nc->loop->o.max_queue_bytes) {
    net_conn_drop(nc, nc->qbytes + cost);
    return -1;
  }
  if (nc->qlen == nc->qcap) {
    if (!nc->qcap) { /* empty: the inline slots, no allocation */
      nc->q = nc->qin;
      nc->qhead = 0;
      nc->qcap = NET_RING_INLINE;
    } else {
      uint32_t cap = nc->qcap * 2;
      lr_msg **q = lr_xmalloc(sizeof *q * cap);
      for (uint32_t i = 0; i < nc->qlen; i++)
        q[i] = nc->q[(nc->qhead + i) & (nc->qcap - 1)];
      if (nc->q != nc->qin) free(nc->q);
      nc->q = q;
      nc->qhead = 0;
      nc->qcap = cap;
    }
  }
  nc->q[(nc->qhead + nc->qlen) & (nc->qcap - 1)] = lr_msg_retain(m);
  nc->qlen++;
  nc->qbytes += cost;
  /* Empty -> non-empty only: while messages are queued a WRITEABLE is
   * already pending (asked here, at ESTABLISHED or by the last WRITEABLE). */
  if (nc->qlen == 1 && nc->established && !nc->loop->destroying) lws_callback_on_writable(nc->wsi);
  return 0;
}

/* vt->close: close after the queued data with code and reason (reason cut
 * to the 123 bytes a close frame holds; code 0 = a close frame without a
 * status). Later calls are ignored. Never calls the engine: lr_conn_closed
 * follows from LWS_CALLBACK_CLOSED. */
static void net_ws_close(lr_conn *c, int code, const char *reason) {
  net_conn *nc = lr_conn_transport(c);
  if (!nc || nc->gone || nc->closing || nc->dropping) return;
  nc->closing = true;
  net_resume(nc); /* a held message is dropped; the close handshake must be read */
  net_conn_set_close(nc, code > 0 ? code : 0, code > 0 ? reason : NULL);
  if (nc->established && !nc->loop->destroying) lws_callback_on_writable(nc->wsi);
}

static const lr_transport_vt net_vt = {net_ws_send, net_ws_close};

/* The socket is gone (or the upgrade was refused): tell the engine exactly
 * once, release the queue and free nc. nc must not be used afterwards. */
void net_conn_finish(net_conn *nc) {
  nc->gone = true;
  for (size_t i = 0; i < nc->loop->nanswer; i++) /* short: this pass's senders */
    if (nc->loop->answer[i] == nc) nc->loop->answer[i] = NULL;
  if (nc->wsi) lws_set_opaque_user_data(nc->wsi, NULL);
  nc->wsi = NULL;
  if (nc->conn) {
    lr_conn *c = nc->conn;
    nc->conn = NULL;
    lr_conn_closed(c);
  }
  net_idle_remove(nc);
  net_conn_release_queue(nc);
  lr_buf_free(&nc->rx);
  if (nc->held_n) net_unhold(nc);
  if (nc->held) {
    lr_buf_free(&nc->held->buf);
    free(nc->held);
  }
  if (nc->counted) {
    nc->loop->nws--;
    if (nc->ip && nc->ip->ws) nc->ip->ws--;
  }
  net_addr_put(nc->loop, nc->ip);
  free(nc->close_reason);
  nc->loop->nconns--;
  if (!nc->loop->destroying) net_churn(nc->loop);
  free(nc);
}

/* A new WebSocket connection object for wsi, counted against the limits
 * (nws and its peer's slot) and attached to wsi. */
static net_conn *net_ws_conn_new(net_loop *L, struct lws *wsi, const char *peer) {
  net_conn *nc = lr_xcalloc(1, sizeof *nc);
  nc->kind = NET_KIND_WS;
  nc->loop = L;
  nc->wsi = wsi;
  nc->ip = net_addr_get(L, peer, true);
  nc->ip->ws++;
  nc->counted = true;
  L->nws++;
  lr_buf_init(&nc->rx);
  L->nconns++;
  lws_set_opaque_user_data(wsi, nc);
  return nc;
}

/* A WebSocket the engine has no room for (HTTP status st: 404 no such room,
 * 503 full / stopping / cannot wake, 500 creation failed): the upgrade goes
 * on and the socket is closed at once with a WebSocket code, so browser code
 * can tell "wrong room" (4004) from "try again" (1013) and from a server that
 * is down. nc carries no engine connection; what the client sends is
 * dropped; it counts against the connection limits until it is gone. */
static void net_ws_refusal_close(net_conn *nc, int st) {
  nc->closing = true;
  if (st == 404)
    net_conn_set_close(nc, 4004, "no such room");
  else if (st == 503)
    net_conn_set_close(nc, 1013, "try again later");
  else
    net_conn_set_close(nc, 1011, "room could not be created");
}

/* The same for a refusal decided here (a path outside /parties/, or the
 * server is stopping), after the connection limits: a probe takes a slot
 * like any socket. Returns the HTTP_CONFIRM_UPGRADE result (0: go on). */
static int net_ws_refuse(net_loop *L, struct lws *wsi, const char *peer, int st) {
  net_ws_refusal_close(net_ws_conn_new(L, wsi, peer), st);
  return 0;
}

/* The connection limits, before the room sees anything: 0 when the socket
 * may go on, else the HTTP status it was refused with (answered here). A
 * shard's uplink (relay: x-shard-id, authenticated by the engine) carries
 * many clients from one address: it is not counted against that address;
 * its clients are, each under its own address (lr_net_addr_acquire). */
static int net_ws_limits(net_loop *L, struct lws *wsi, const char *peer, bool relay) {
  if (L->o.max_conns >= 0 && L->nws >= (size_t)L->o.max_conns) {
    lr_warn_limited("connection limit", "websocket from %s refused: %zu connections open (max %ld)",
                    peer, L->nws, L->o.max_conns);
    lws_return_http_status(wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, NULL);
    return HTTP_STATUS_SERVICE_UNAVAILABLE;
  }
  if (L->o.max_conns_per_ip >= 0 && !relay) {
    struct net_addr *a = net_addr_get(L, peer, false);
    if (a && a->ws >= (uint32_t)L->o.max_conns_per_ip) {
      lr_warn_limited("address limit",
                      "websocket from %s refused: %u connections from this address (max %ld)", peer,
                      a->ws, L->o.max_conns_per_ip);
      lws_return_http_status(wsi, 429, NULL);
      return 429;
    }
  }
  return 0;
}

/* Hand the upgrade of dpath (lws's decoded path, under /parties/) to the
 * engine. Returns the HTTP_CONFIRM_UPGRADE result. */
static int net_ws_open(net_loop *L, struct lws *wsi, const char *peer, const char *dpath,
                       bool relay) {
  lr_request req = {0};
  req.method = "GET";
  char *path = net_path_encode(dpath);
  char *query = net_query_collect(wsi);
  /* Headers on demand (the engine asks when something reads them); a
   * shard's uplink is routed by its headers: collected at once. */
  net_hdrs_lazy hl = {L, wsi, NULL, 0, false};
  if (relay) {
    req.headers = net_hdrs_lazy_get(&hl, &req.nheaders);
  } else {
    req.load_headers = net_hdrs_lazy_get;
    req.headers_ud = &hl;
  }
  req.path = path;
  req.query = query;
  req.remote_addr = peer;

  net_conn *nc = net_ws_conn_new(L, wsi, peer);
  lr_conn *conn = NULL;
  int st = lr_server_ws_open(L->srv, &req, &net_vt, nc, &conn);
  net_hdrs_free(hl.h, hl.n);
  free(query);
  if (st != 0 || !conn) {
    lr_debug("ws upgrade %s refused with %d", path, st ? st : 404);
    free(path);
    if (!conn && (st == 0 || st == 404 || st == 503 || st == 500)) {
      /* No such room, or none now: accept, then close with a code. */
      net_ws_refusal_close(nc, st ? st : 404);
      return 0;
    }
    nc->conn = conn; /* NULL as the contract says; if not, finish closes it */
    nc->wsi = NULL;
    lws_set_opaque_user_data(wsi, NULL);
    net_conn_finish(nc);
    lws_return_http_status(wsi, st >= 400 && st < 600 ? (unsigned)st : HTTP_STATUS_NOT_FOUND, NULL);
    return 1;
  }
  free(path);
  nc->conn = conn;
  if (relay && lr_conn_is_relay(conn)) { /* exempt: see net_ws_limits */
    nc->ip->ws--;
    net_addr_put(L, nc->ip);
    nc->ip = NULL;
  }
  net_sock_release(wsi); /* a WebSocket now, counted as one */
  net_churn(L);
  return 0;
}

/* HTTP_CONFIRM_UPGRADE: the headers are parsed and we can still answer with
 * an HTTP status. Returns the lws callback result: 0 to go on with the
 * upgrade, 1 after answering, -1 to hang up. */
int net_ws_upgrade(net_loop *L, struct lws *wsi, const char *up) {
  if (!strcasecmp(up, "h2c")) {
    /* lws 4.1 upgrades h1 -> h2c fine for body-less requests, but loses the
     * body of one that has one (curl --http2 -d ...): refuse those. */
    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 ||
        lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0) {
      lws_return_http_status(wsi, HTTP_STATUS_BAD_REQUEST, "h2c upgrade with a body: use HTTP/1.1");
      return 1;
    }
    return 0;
  }
  if (strcasecmp(up, "websocket")) return -1; /* lws answers other upgrades with 403 first */
  bool head;
  const char *method = net_method(wsi, &head);
  char *dpath = net_hdr_dup(wsi, WSI_TOKEN_GET_URI);
  if (!method || strcmp(method, "GET") || !dpath) {
    free(dpath);
    return -1;
  }
  char peer[64];
  net_peer(wsi, peer, sizeof peer);
  bool relay = lws_hdr_custom_length(wsi, "x-shard-id:", 11) >= 0;
  int rc;
  if (net_ws_limits(L, wsi, peer, relay))
    rc = 1;
  else if (strncmp(dpath, "/parties/", 9) || L->stopping)
    /* Past the limits, a socket is accepted even when there is no room for
     * it (net_ws_refuse): the page sees a close code, not a failed
     * handshake. */
    rc = net_ws_refuse(L, wsi, peer, L->stopping ? 503 : 404);
  else
    rc = net_ws_open(L, wsi, peer, dpath, relay);
  free(dpath);
  return rc;
}

/* ESTABLISHED: writes are allowed from now on; the idle sweep watches nc.
 * Returns the lws callback result. */
int net_ws_established(net_conn *nc) {
  nc->established = true;
  net_idle_add(nc);
  if (nc->dropping) lws_set_timeout(nc->wsi, PENDING_TIMEOUT_USER_OK, NET_DROP_SECS);
  if (nc->qlen || nc->closing || nc->dropping) lws_callback_on_writable(nc->wsi);
  return 0;
}

#define NET_BATCH 65536       /* bytes of frames written by one lws_write */
#define NET_ZEROCOPY_MIN 8192 /* a message at least this big at the head is written alone */

/* Write the header of an unmasked text frame of len bytes that ends at
 * end (the payload follows it); returns its size (2, 4 or 10 bytes). */
static size_t net_ws_frame_hdr(unsigned char *end, size_t len) {
  size_t hdr = len < 126 ? 2 : len < 65536 ? 4 : 10;
  unsigned char *p = end - hdr;
  p[0] = 0x81; /* FIN, text */
  if (len < 126) {
    p[1] = (unsigned char)len;
  } else if (len < 65536) {
    p[1] = 126;
    p[2] = (unsigned char)(len >> 8);
    p[3] = (unsigned char)len;
  } else {
    p[1] = 127;
    for (int i = 0; i < 8; i++)
      p[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
  }
  return hdr;
}

/* Frame the queued messages ourselves (server frames are not masked, and
 * no extension is negotiated) into out, after the used bytes already there,
 * as many as fit in NET_BATCH; they leave the ring. Returns the bytes used
 * now. One raw lws_write of them: one send() for several messages, and for
 * one message ~280 instructions less than lws's own framing
 * (LWS_WRITE_TEXT). */
static size_t net_ws_batch(net_conn *nc, unsigned char *out, size_t used) {
  while (nc->qlen) {
    lr_msg *m = nc->q[nc->qhead];
    size_t len = m->len, hdr = len < 126 ? 2 : len < 65536 ? 4 : 10;
    if (used + hdr + len > NET_BATCH) break;
    net_ws_frame_hdr(out + used + hdr, len);
    memcpy(out + used + hdr, lr_msg_payload(m), len);
    used += hdr + len;
    nc->qhead = (nc->qhead + 1) & (nc->qcap - 1);
    nc->qlen--;
    nc->qbytes -= len + NET_MSG_OVERHEAD;
    lr_msg_release(m);
  }
  return used;
}

/* Write the message at the head of the ring alone, straight from the shared
 * lr_msg: its frame header goes into the headroom in front of the payload
 * (the same bytes for every connection it is queued on: server frames are
 * not masked) and lws gets header + payload with LWS_PRE bytes still in
 * front (buf.h, net_int.h). No copy; a partial kernel write is copied by
 * lws into its own buffer (it withholds WRITEABLE until that drains), so
 * the message can be released at once. Returns the lws_write result. */
static int net_ws_write_head(net_conn *nc) {
  lr_msg *m = nc->q[nc->qhead];
  nc->qhead = (nc->qhead + 1) & (nc->qcap - 1);
  nc->qlen--;
  nc->qbytes -= (size_t)m->len + NET_MSG_OVERHEAD;
  net_conn_ring_trim(nc);
  size_t hdr = net_ws_frame_hdr(m->data + LR_MSG_PRE, m->len);
  int n = lws_write(nc->wsi, m->data + LR_MSG_PRE - hdr, hdr + m->len, LWS_WRITE_RAW);
  lr_msg_release(m);
  return n;
}

/* SERVER_WRITEABLE: one lws_write (queued messages, or the close frame).
 * The idle sweep's ping (net_idle.c), a ping frame of 2 bytes, goes first in
 * the batch: WRITEABLE comes only once lws holds nothing unwritten, so this
 * starts on a frame boundary. A message too big for the batch goes alone.
 * Returns the lws callback result (-1 closes the connection). */
int net_ws_writeable(net_conn *nc) {
  struct lws *wsi = nc->wsi;
  if (nc->dropping) {
    lws_close_reason(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, (unsigned char *)nc->close_reason,
                     nc->close_reason_len);
    return -1;
  }
  static unsigned char batch[LWS_PRE + NET_BATCH];
  size_t used = 0;
  if (nc->ping_due) {
    nc->ping_due = false;
    if (!nc->closing) { /* FIN, ping, 2 bytes: lws drops an empty pong before our callback */
      memcpy(batch + LWS_PRE, "\x89\x02lr", 4);
      used = 4;
    }
  }
  /* A lone message, or a big one at the head (a full patch of a big room:
   * copying it costs more than the send of the messages after it on the
   * next WRITEABLE), goes out without a copy; the rest is batched. */
  if (!used && nc->qlen && (nc->qlen == 1 || nc->q[nc->qhead]->len >= NET_ZEROCOPY_MIN)) {
    if (net_ws_write_head(nc) < 0) return -1;
    if (nc->qlen || nc->closing) lws_callback_on_writable(wsi);
    return 0;
  }
  used = net_ws_batch(nc, batch + LWS_PRE, used);
  if (used) {
    net_conn_ring_trim(nc);
    if (lws_write(wsi, batch + LWS_PRE, used, LWS_WRITE_RAW) < 0) return -1;
    if (nc->qlen || nc->closing) lws_callback_on_writable(wsi);
    return 0;
  }
  if (nc->qlen) { /* too big for the batch */
    if (net_ws_write_head(nc) < 0) return -1;
    if (nc->qlen || nc->closing) lws_callback_on_writable(wsi);
    return 0;
  }
  if (nc->closing) {
    if (nc->close_code > 0) {
      lws_close_reason(wsi, (enum lws_close_status)nc->close_code,
                       (unsigned char *)nc->close_reason, nc->close_reason_len);
    } else {
      /* No status: an empty close frame (opcode 8), as the reference's
       * conn.close() sends. lws_close_reason() always writes a status, so
       * write the frame directly (4 = LWS_WRITE_CLOSE inside lws). */
      unsigned char buf[LWS_PRE + 1];
      lws_write(wsi, buf + LWS_PRE, 0, (enum lws_write_protocol)4);
    }
    return -1;
  }
  return 0;
}

/* Remember nc for net_ws_answer_flush (once: the messages of one read come
 * one after the other, so a repeat is the last entry; any other repeat is
 * harmless, the second flush finds nothing queued). */
static void net_ws_answer_later(net_conn *nc) {
  net_loop *L = nc->loop;
  if (L->nanswer && L->answer[L->nanswer - 1] == nc) return;
  if (L->nanswer == L->answer_cap) {
    L->answer_cap = L->answer_cap ? 2 * L->answer_cap : 64;
    L->answer = lr_xrealloc(L->answer, L->answer_cap * sizeof *L->answer);
  }
  L->answer[L->nanswer++] = nc;
}

/* End of a loop pass: write the queued answers of the sockets that sent
 * messages in it, outside any callback. Only when lws buffers nothing for
 * the socket (a write it could not finish waits for WRITEABLE) and no close
 * is pending; the rest goes out at its POLLOUT as usual. A socket whose
 * write fails is closed by lws at its next event (lws_write marks it). */
void net_ws_answer_flush(net_loop *L) {
  for (size_t i = 0; i < L->nanswer; i++) {
    net_conn *nc = L->answer[i];
    if (!nc || !nc->wsi || !nc->qlen || nc->closing || nc->dropping ||
        lws_partial_buffered(nc->wsi))
      continue;
    if (net_ws_writeable(nc) < 0)
      lws_set_timeout(nc->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
  }
  L->nanswer = 0;
}

/* RECEIVE: a piece of a frame. Pieces and fragments are assembled; a
 * complete message goes to lr_conn_message (NUL-terminated, binary frames
 * as they are). Over max_frame: close with 1009, nothing reaches the engine.
 * Returns the lws callback result. */
int net_ws_receive(net_conn *nc, const char *in, size_t len) {
  net_idle_touch(nc);                                     /* not silent */
  if (!nc->conn || nc->closing || nc->dropping) return 0; /* closing: drop input */
  struct lws *wsi = nc->wsi;
  if (!nc->rx_in_msg) {
    lr_buf_reset(&nc->rx);
    nc->rx_in_msg = true;
  }
  if (nc->rx.len + len > nc->loop->o.max_frame) {
    char who[96];
    lr_warn("ws %s: incoming message over %zu bytes, closing with 1009",
            net_conn_who(nc, who, sizeof who), nc->loop->o.max_frame);
    lr_buf_free(&nc->rx);
    static const char why[] = "message too big";
    lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, (unsigned char *)why, sizeof why - 1);
    return -1;
  }
  if (len) lr_buf_put(&nc->rx, in, len);
  if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
    nc->rx_in_msg = false;
    if (!net_budget_take(nc)) {
      if (net_hold(nc) == 0) return 0;
      char who[96];
      lr_warn("ws %s: over %zu bytes held over the message budget, closing with 1008",
              net_conn_who(nc, who, sizeof who), nc->loop->o.max_frame + NET_HOLD_EXTRA);
      lr_buf_free(&nc->rx);
      static const char why[] = "message budget";
      lws_close_reason(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, (unsigned char *)why,
                       sizeof why - 1);
      return -1;
    }
    lr_conn_message(nc->conn, lr_buf_cstr(&nc->rx), nc->rx.len);
    /* The sender's own answer (the patch of its action, an error) goes out
     * at the end of this pass (net_ws_answer_flush), ahead of the room's
     * other sockets, which wait for their POLLOUT in the next pass: the
     * acting client sees its effect first, and the answers to every message
     * of this read go out in one send, not one each. */
    if (nc->qlen) net_ws_answer_later(nc);
    /* Do not keep a big buffer around for an idle connection. */
    if (nc->rx.cap > 16384)
      lr_buf_free(&nc->rx);
    else
      lr_buf_reset(&nc->rx);
  }
  return 0;
}

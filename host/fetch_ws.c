/*
 * fetch_ws.c - WebSocket client links (a shard's uplinks, a cluster node's
 * links): lr_wsc_open, lr_wsc_send, lr_wsc_queued and lr_wsc_close
 * (fetch.h) and the link's lws client events.
 *
 * Owns: a link's send queue (text frames, LWS_PRE headroom), its receive
 * buffer (one message up to FETCH_MAX_MESSAGE), its close handshake (ours:
 * code and reason; the peer's: kept for the closed callback) and its one
 * closed event.
 * Must not: run a callback from here (open, message and closed are events:
 * fetch.c runs them later from an engine timer or lr_fetch_flush), own a
 * context or the list of live objects (fetch.c), know rooms, shards or
 * JSON.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

#include "fetch_int.h"
#include "log.h"

void fetch_ws_closed(lr_wsc *w, int code, const char *reason) {
  if (w->closed_queued) return;
  w->closed_queued = true;
  if (!w->user_closed) fetch_push_event(EV_CLOSED, &w->cc, code, reason, NULL, 0);
}

int fetch_ws_event(struct lws *wsi, enum lws_callback_reasons reason, lr_wsc *w, void *in,
                   size_t len) {
  conn_common *cc = w ? &w->cc : NULL;
  switch (reason) {
  case LWS_CALLBACK_CLIENT_ESTABLISHED:
    if (!w) return 0;
    w->opened = true;
    if (!w->user_closed) fetch_push_event(EV_OPEN, cc, 0, NULL, NULL, 0);
    if (w->out_head || w->user_closed) lws_callback_on_writable(wsi);
    return 0;
  case LWS_CALLBACK_CLIENT_RECEIVE:
    if (!w) return 0;
    if (lws_is_first_fragment(wsi)) lr_buf_reset(&w->rx);
    if (w->rx.len + len > FETCH_MAX_MESSAGE) {
      lr_warn("ws %s%s: message over %u bytes; closing", cc->hostport, cc->path, FETCH_MAX_MESSAGE);
      fetch_ws_closed(w, 1009, "message too large");
      return -1;
    }
    lr_buf_put(&w->rx, in, len);
    if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
      if (!w->user_closed)
        fetch_push_event(EV_MESSAGE, cc, 0, NULL, w->rx.data ? w->rx.data : "", w->rx.len);
      lr_buf_reset(&w->rx);
    }
    return 0;
  case LWS_CALLBACK_CLIENT_WRITEABLE:
    if (!w) return -1;
    if (w->out_head) {
      frame *f = w->out_head;
      w->out_head = f->next;
      if (!w->out_head) w->out_tail = NULL;
      w->out_bytes -= f->len;
      int n = lws_write(wsi, f->data + LWS_PRE, f->len, LWS_WRITE_TEXT);
      free(f);
      if (n < 0) return -1;
      if (w->out_head || w->user_closed) lws_callback_on_writable(wsi);
      return 0;
    }
    if (w->user_closed) {
      lws_close_reason(wsi, (enum lws_close_status)w->close_code, (unsigned char *)w->close_reason,
                       strlen(w->close_reason));
      return -1;
    }
    return 0;
  case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    if (w && len >= 2) {
      const unsigned char *b = in;
      w->peer_code = (b[0] << 8) | b[1];
      size_t n = len - 2 < sizeof w->peer_reason - 1 ? len - 2 : sizeof w->peer_reason - 1;
      memcpy(w->peer_reason, b + 2, n);
      w->peer_reason[n] = 0;
    }
    return 0;
  case LWS_CALLBACK_CLIENT_CLOSED:
    if (w)
      fetch_ws_closed(w, w->peer_code ? w->peer_code : 1006, w->peer_code ? w->peer_reason : "");
    return 0;
  default:
    return FETCH_NOT_MINE;
  }
}

lr_wsc *lr_wsc_open(lr_server *s, const char *url, const lr_header *headers, size_t nheaders,
                    const lr_wsc_cbs *cbs, void *ud) {
  lr_wsc *w = lr_xcalloc(1, sizeof *w);
  w->cc.kind = OBJ_WS;
  if (fetch_parse_url(url, &w->cc) != 0) {
    lr_warn("websocket %s: only ws://, wss:// (or http://, https://) URLs are supported", url);
    fetch_free_obj(&w->cc);
    return NULL;
  }
  w->cbs = cbs;
  w->ud = ud;
  lr_buf_init(&w->rx);
  fetch_keep_headers(&w->cc, headers, nheaders);
  if (fetch_start(s, &w->cc) != 0) {
    fetch_free_obj(&w->cc);
    return NULL;
  }
  return w;
}

int lr_wsc_send(lr_wsc *w, const char *data, size_t len) {
  if (w->user_closed || w->closed_queued) return -1;
  frame *f = lr_xmalloc(sizeof *f + LWS_PRE + len);
  f->next = NULL;
  f->len = len;
  memcpy(f->data + LWS_PRE, data, len);
  if (w->out_tail)
    w->out_tail->next = f;
  else
    w->out_head = f;
  w->out_tail = f;
  w->out_bytes += len;
  if (w->opened && w->cc.wsi) lws_callback_on_writable(w->cc.wsi);
  return 0;
}

size_t lr_wsc_queued(const lr_wsc *w) {
  return w->out_bytes;
}

void lr_wsc_close(lr_wsc *w, int code, const char *reason) {
  if (w->user_closed) return;
  w->user_closed = true;
  w->close_code = code ? code : 1000;
  snprintf(w->close_reason, sizeof w->close_reason, "%s", reason ? reason : "");
  if (w->cc.wsi) {
    if (w->opened && !w->closed_queued)
      lws_callback_on_writable(w->cc.wsi);
    else
      lws_set_timeout(w->cc.wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
  } else if (w->cc.pending) { /* never connected */
    w->cc.pending = false;
    w->cc.wsi_gone = true;
  }
}

/*
 * fetch_http.c - the HTTP exchange of an outgoing request: lr_fetch and
 * lr_fetch_cancel (fetch.h), the request's lws client events (body out,
 * status and headers, response body in), its deadline and its one result.
 *
 * Owns: what an http_req holds between lr_fetch and its result (method,
 * body, status, content type, Location, the response up to
 * FETCH_MAX_MESSAGE), the request ids and deadlines; no redirects followed.
 * Must not: run the callback from here (the result is an event: fetch.c
 * runs it later from an engine timer or lr_fetch_flush), own a context or
 * the list of live objects (fetch.c), know rooms, shards or JSON.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

#include "engine.h"
#include "fetch_int.h"
#include "log.h"

#define FETCH_DEFAULT_TIMEOUT_MS 30000 /* whole HTTP exchange */

void fetch_http_finish(http_req *r, const char *error) {
  if (r->finished) return;
  r->finished = true;
  if (!r->cancelled) fetch_push_event(EV_HTTP, &r->cc, 0, error, NULL, 0);
}

int fetch_http_event(struct lws *wsi, enum lws_callback_reasons reason, http_req *r, void *in,
                     size_t len) {
  switch (reason) {
  case LWS_CALLBACK_CLIENT_HTTP_WRITEABLE: {
    if (!r || !r->body) return 0;
    unsigned char *buf = lr_xmalloc(LWS_PRE + r->bodylen + 1);
    memcpy(buf + LWS_PRE, r->body, r->bodylen);
    int n = lws_write(wsi, buf + LWS_PRE, r->bodylen, LWS_WRITE_HTTP_FINAL);
    free(buf);
    lws_client_http_body_pending(wsi, 0);
    return n < 0 ? -1 : 0;
  }
  case LWS_CALLBACK_ESTABLISHED_CLIENT_HTTP:
    if (!r) return 0;
    r->status = (int)lws_http_client_http_response(wsi);
    if (lws_hdr_copy(wsi, r->ctype, sizeof r->ctype, WSI_TOKEN_HTTP_CONTENT_TYPE) < 0)
      r->ctype[0] = 0;
    if (lws_hdr_copy(wsi, r->location, sizeof r->location, WSI_TOKEN_HTTP_LOCATION) < 0)
      r->location[0] = 0;
    return 0;
  case LWS_CALLBACK_RECEIVE_CLIENT_HTTP: {
    char buffer[4096 + LWS_PRE];
    char *px = buffer + LWS_PRE;
    int lenx = (int)sizeof buffer - LWS_PRE;
    if (lws_http_client_read(wsi, &px, &lenx) < 0) return -1;
    return 0;
  }
  case LWS_CALLBACK_RECEIVE_CLIENT_HTTP_READ:
    if (!r) return 0;
    if (r->resp.len + len > FETCH_MAX_MESSAGE) {
      fetch_http_finish(r, "response too large");
      return -1;
    }
    lr_buf_put(&r->resp, in, len);
    return 0;
  case LWS_CALLBACK_COMPLETED_CLIENT_HTTP:
    if (r) fetch_http_finish(r, NULL);
    return 0;
  case LWS_CALLBACK_CLOSED_CLIENT_HTTP:
    if (r) fetch_http_finish(r, "connection closed before the response ended");
    return 0;
  default:
    return FETCH_NOT_MINE;
  }
}

void fetch_http_deadline(void *ud) {
  http_req *r = ud;
  r->deadline_timer = 0;
  if (r->finished) return;
  fetch_http_finish(r, "timeout");
  if (r->cc.wsi) lws_set_timeout(r->cc.wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

uint64_t fetch_http_start(lr_server *s, const char *method, const char *url,
                          const lr_header *headers, size_t nheaders, const char *body,
                          size_t bodylen, int64_t timeout_ms, lr_fetch_cb cb, void *ud,
                          void (*drop)(void *ud)) {
  http_req *r = lr_xcalloc(1, sizeof *r);
  r->cc.kind = OBJ_HTTP;
  if (fetch_parse_url(url, &r->cc) != 0 ||
      (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)) {
    lr_warn("fetch %s %s: only http:// and https:// URLs are supported", method, url);
    fetch_free_obj(&r->cc);
    return 0;
  }
  r->id = fetch_next_id();
  if (!r->id) { /* shutting down */
    fetch_free_obj(&r->cc);
    return 0;
  }
  r->cb = cb;
  r->ud = ud;
  r->drop = drop;
  r->method = lr_xstrndup(method, strlen(method));
  bool has_body = strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0;
  if (has_body) {
    r->body = lr_xmalloc(bodylen + 1);
    if (bodylen) memcpy(r->body, body, bodylen);
    r->bodylen = bodylen;
  }
  r->deadline = lr_now(s) + (timeout_ms > 0 ? timeout_ms : FETCH_DEFAULT_TIMEOUT_MS);
  fetch_keep_headers(&r->cc, headers, nheaders);
  lr_buf_init(&r->resp);
  r->deadline_timer = lr_timer_add_c(s, r->deadline - lr_now(s), fetch_http_deadline, r);
  fetch_start(s, &r->cc);
  return r->id;
}

uint64_t lr_fetch(lr_server *s, const char *method, const char *url, const lr_header *headers,
                  size_t nheaders, const char *body, size_t bodylen, int64_t timeout_ms,
                  lr_fetch_cb cb, void *ud) {
  return fetch_http_start(s, method, url, headers, nheaders, body, bodylen, timeout_ms, cb, ud,
                          NULL);
}

void lr_fetch_cancel(uint64_t id) {
  http_req *r = fetch_find_http(id);
  if (!r) return;
  conn_common *cc = &r->cc;
  r->cancelled = true;
  if (cc->wsi) lws_set_timeout(cc->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
  if (cc->pending) { /* never connected: nothing of lws to wait for */
    cc->pending = false;
    cc->wsi_gone = true;
  }
}

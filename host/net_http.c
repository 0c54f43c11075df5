/*
 * net_http.c - HTTP requests of the real-socket transport: the request copy
 * handed to the engine, bounded bodies, deferred responses, static files.
 *
 * Owns: net_req (per-request HTTP state: headers, bounded body, deferred
 * response, static file), the body deadline (body_sul), the responses the
 * transport makes itself (404, 411, 413, ...).
 * Must not: call Lua, parse JSON, or write to a socket outside
 * HTTP_WRITEABLE.
 *
 * HTTP (net_req). LWS_CALLBACK_HTTP copies method, path, query, headers and
 * peer; a body is collected up to max_http_body (a larger Content-Length is
 * answered 413 at once, with "connection: close"; the refused body, up to
 * NET_DISCARD_MAX, is still read and dropped before closing so the client is
 * not reset before it reads the 413). The request is then dispatched with
 * lr_server_http(srv, req, net_http_done, nr). The engine may call done at
 * once or later. done copies the response into nr and asks for WRITEABLE;
 * HTTP_WRITEABLE writes the header block, then the body in bounded chunks,
 * one lws_write per callback, then completes the transaction (keep-alive).
 * If the socket closes while the engine still holds nr, nr is marked `gone`
 * and detached from the wsi; the later done() call sees `gone` and only frees
 * nr. So nr is freed by whichever of {response written or socket gone, done
 * called} happens last.
 *
 * A request body must be complete body_timeout_ms after its head
 * (body_sul), however it trickles in; lws's own timeouts restart per read.
 */
#include "net_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

/* ======================= HTTP ======================= */

/* Free nr and everything it owns (request copy, response, file). */
static void net_req_free(net_req *nr) {
  free(nr->path);
  free(nr->query);
  free(nr->fs_path);
  net_hdrs_free(nr->hdrs, nr->nhdrs);
  lr_buf_free(&nr->body);
  for (size_t i = 0; i < nr->nrh; i++)
    free(nr->rh[i]);
  free(nr->rh);
  free(nr->out);
  if (nr->fd >= 0) close(nr->fd);
  free(nr);
}

/* Drop the request inputs once the engine has seen them. */
static void net_req_free_inputs(net_req *nr) {
  free(nr->path);
  free(nr->query);
  nr->path = nr->query = NULL;
  net_hdrs_free(nr->hdrs, nr->nhdrs);
  nr->hdrs = NULL;
  nr->nhdrs = 0;
  lr_buf_free(&nr->body);
}

/* The wsi is going away (or its transaction is over): detach nr. */
void net_req_detach(net_req *nr) {
  lws_sul_cancel(&nr->body_sul);
  if (nr->wsi) {
    lws_set_opaque_user_data(nr->wsi, NULL);
    nr->wsi = NULL;
    nr->loop->nreqs--;
  }
  if (nr->dispatched && !nr->answered)
    nr->gone = true; /* done() will free */
  else
    net_req_free(nr);
}

/* Append a response header (copied). */
static void net_req_add_header(net_req *nr, const char *name, const char *value, size_t vlen) {
  size_t nl = strlen(name);
  char *s = lr_xmalloc(nl + vlen + 2);
  memcpy(s, name, nl + 1);
  memcpy(s + nl + 1, value, vlen);
  s[nl + 1 + vlen] = '\0';
  nr->rh = lr_xrealloc(nr->rh, sizeof *nr->rh * (nr->nrh + 1));
  nr->rh[nr->nrh++] = s;
}

/* Copy the response body behind LWS_PRE bytes of headroom. */
static void net_req_set_body(net_req *nr, const char *body, size_t len) {
  nr->out = lr_xmalloc(LWS_PRE + len + 1);
  if (len) memcpy(nr->out + LWS_PRE, body, len);
  nr->outlen = len;
}

/* Queue a response made by the transport itself (404, 411, 413, ...): nr
 * counts as answered and is never handed to the engine. */
static void net_http_simple(net_req *nr, int status, const char *ctype, const char *body, bool cors,
                            bool close_after) {
  nr->answered = true;
  nr->status = status;
  net_req_add_header(nr, "content-type", ctype, strlen(ctype));
  if (cors) /* the engine's own answers' headers (router.c) */
    for (size_t i = 0; i < LR_CORS_N; i++)
      net_req_add_header(nr, lr_cors_headers[i].name, lr_cors_headers[i].value,
                         strlen(lr_cors_headers[i].value));
  net_req_set_body(nr, body, strlen(body));
  nr->close_after = close_after;
  nr->ready = true;
  lws_callback_on_writable(nr->wsi);
}

/* The engine's answer (lr_response_cb). May run inside lr_server_http() or
 * any time later, even after lr_net_run returned. r is copied. If the client
 * went away meanwhile (nr->gone), it only frees nr. */
static void net_http_done(void *ud, const lr_response *r) {
  net_req *nr = ud;
  if (nr->answered) {
    lr_error("http: response callback called twice (ignored)");
    return;
  }
  nr->answered = true;
  if (nr->gone) {
    net_req_free(nr);
    return;
  }
  nr->status = r->status > 0 ? r->status : 500;
  for (size_t i = 0; i < r->nheaders; i++) {
    const char *n = r->headers[i].name, *v = r->headers[i].value;
    if (!n || !v || !*n) continue;
    if (!strcasecmp(n, "content-length") || !strcasecmp(n, "transfer-encoding") ||
        !strcasecmp(n, "connection"))
      continue;
    if (strpbrk(n, "\r\n: ") || strpbrk(v, "\r\n")) { /* no header injection */
      lr_warn("http: response header %.40s dropped (invalid characters)", n);
      continue;
    }
    net_req_add_header(nr, n, v, strlen(v));
  }
  net_req_set_body(nr, r->body ? r->body : "", r->body ? r->bodylen : 0);
  nr->ready = true;
  if (!nr->loop->destroying) lws_callback_on_writable(nr->wsi);
}

/* Hand a complete request to the engine (once). The engine's handler gets
 * NET_HTTP_HANDLER_SECS to answer before lws drops the connection. */
void net_http_dispatch(net_req *nr) {
  if (nr->dispatched || nr->answered) return;
  nr->dispatched = true;
  lws_set_timeout(nr->wsi, PENDING_TIMEOUT_USER_OK, NET_HTTP_HANDLER_SECS);
  lr_request req = {0};
  req.method = nr->method;
  req.path = nr->path;
  req.query = nr->query;
  req.headers = nr->hdrs;
  req.nheaders = nr->nhdrs;
  req.body = nr->body.len ? nr->body.data : NULL;
  req.bodylen = nr->body.len;
  req.remote_addr = nr->peer;
  lr_server_http(nr->loop->srv, &req, net_http_done, nr);
  /* nr is still alive here: a synchronous done() never frees an attached
   * request. */
  net_req_free_inputs(nr);
}

/* Content-Type for a static file, by extension. */
static const char *net_mime(const char *path) {
  static const char *const map[][2] = {
      {".html", "text/html; charset=utf-8"},
      {".htm", "text/html; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".mjs", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".json", "application/json"},
      {".png", "image/png"},
      {".svg", "image/svg+xml"},
      {".ico", "image/x-icon"},
      {".txt", "text/plain; charset=utf-8"},
      {".wasm", "application/wasm"},
      {".jpg", "image/jpeg"},
      {".map", "application/json"},
  };
  const char *dot = strrchr(path, '.');
  const char *slash = strrchr(path, '/');
  if (dot && (!slash || dot > slash))
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
      if (!strcasecmp(dot, map[i][0])) return map[i][1];
  return "application/octet-stream";
}

/* Paths the engine answers: rooms, and the operations endpoints. */
static bool net_engine_path(const char *p) {
  return strncmp(p, "/parties/", 9) == 0 || strcmp(p, "/healthz") == 0 ||
         strcmp(p, "/readyz") == 0 || strcmp(p, "/metrics") == 0 || strcmp(p, "/admin") == 0 ||
         strncmp(p, "/admin/", 7) == 0;
}

/* Paths outside /parties/: serve nr->fs_path (already decoded and
 * dot-segment-collapsed by lws) from static_dir for GET/HEAD, "/" and
 * folders as their index.html; anything that resolves (symlinks included)
 * outside static_dir, or no static_dir at all, is 404 text/plain. The file
 * is streamed NET_HTTP_CHUNK bytes per WRITEABLE. */
static void net_http_static(net_req *nr) {
  net_loop *L = nr->loop;
  const char *p = nr->fs_path;
  bool ok = L->static_root && (!strcmp(nr->method, "GET") || nr->head) && p[0] == '/';
  /* lws already collapsed "..", but do not rely on it. */
  for (const char *s = p; ok && (s = strstr(s, "..")); s += 2)
    if ((s == p || s[-1] == '/') && (s[2] == '/' || s[2] == '\0')) ok = false;
  char full[PATH_MAX], real[PATH_MAX];
  int fd = -1;
  struct stat st;
  if (ok) {
    int n = snprintf(full, sizeof full, "%s%s%s", L->static_root, p,
                     p[strlen(p) - 1] == '/' ? "index.html" : "");
    ok = n > 0 && (size_t)n < sizeof full;
  }
  if (ok && stat(full, &st) == 0 && S_ISDIR(st.st_mode)) {
    size_t l = strlen(full);
    ok = l + sizeof "/index.html" <= sizeof full;
    if (ok) memcpy(full + l, "/index.html", sizeof "/index.html");
  }
  if (ok && realpath(full, real)) {
    size_t rl = strlen(L->static_root);
    ok = !strncmp(real, L->static_root, rl) && real[rl] == '/';
  } else {
    ok = false;
  }
  if (ok) fd = open(real, O_RDONLY | O_CLOEXEC);
  if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
    close(fd);
    fd = -1;
  }
  if (fd < 0) {
    net_http_simple(nr, 404, "text/plain; charset=utf-8", "Not Found", false, false);
    return;
  }
  nr->answered = true;
  nr->status = 200;
  const char *mime = net_mime(real);
  net_req_add_header(nr, "content-type", mime, strlen(mime));
  nr->fd = fd;
  nr->outlen = (size_t)st.st_size;
  nr->out = lr_xmalloc(LWS_PRE + NET_HTTP_CHUNK);
  nr->ready = true;
  lws_callback_on_writable(nr->wsi);
}

/* The body of nr did not arrive within body_timeout_ms of its head (a
 * slow sender, whatever its pace): drop the connection. */
static void net_http_body_late(lws_sorted_usec_list_t *sul) {
  net_req *nr = lws_container_of(sul, net_req, body_sul);
  if (!nr->wsi || !nr->body_pending) return;
  lr_warn_limited("body timeout",
                  "http %s %s from %s: body not complete after %ld ms (%zu bytes in), closing",
                  nr->method, nr->path ? nr->path : nr->fs_path, nr->peer,
                  nr->loop->o.body_timeout_ms, nr->body.len);
  lws_set_timeout(nr->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

/* LWS_CALLBACK_HTTP: a request's headers are in. */
int net_http_begin(net_loop *L, struct lws *wsi) {
  void *old = lws_get_opaque_user_data(wsi);
  if (old) { /* should not happen: the previous transaction was completed */
    if (*(int *)old == NET_KIND_HTTP)
      net_req_detach(old);
    else
      return -1;
  }
  bool head = false;
  const char *method = net_method(wsi, &head);
  char *uri = NULL;
  int ulen = 0;
  if (!method || lws_http_get_uri_and_method(wsi, &uri, &ulen) < 0 || !uri) return -1;

  net_req *nr = lr_xcalloc(1, sizeof *nr);
  nr->kind = NET_KIND_HTTP;
  nr->loop = L;
  nr->wsi = wsi;
  nr->fd = -1;
  nr->method = method;
  nr->head = head;
  lr_buf_init(&nr->body);
  nr->fs_path = lr_xstrndup(uri, (size_t)ulen);
  lws_set_opaque_user_data(wsi, nr);
  L->nreqs++;

  if (!net_engine_path(nr->fs_path)) {
    net_http_static(nr);
    return 0;
  }
  /* HEAD on a room or operations path is answered as GET without a body:
   * the engine runs the GET route; the writer sends its status, headers and
   * Content-Length and no body (nr->head). The reference answers 404. */
  if (head) nr->method = "GET";
  nr->path = net_path_encode(nr->fs_path);
  nr->query = net_query_collect(wsi);
  nr->hdrs = net_hdrs_collect(nr->loop, wsi, &nr->nhdrs);
  net_peer(wsi, nr->peer, sizeof nr->peer);

  if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0) {
    /* lws 4.1 does not decode chunked request bodies. */
    net_http_simple(nr, 411, "application/json", "{\"error\":\"Length Required\"}", true, true);
    return 0;
  }
  char *cl = net_hdr_dup(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH);
  unsigned long long want = 0;
  if (cl) {
    char *end;
    errno = 0;
    want = strtoull(cl, &end, 10);
    bool bad = errno || end == cl || *end || cl[0] == '-';
    free(cl);
    if (bad) {
      net_http_simple(nr, 400, "application/json", "{\"error\":\"Bad Content-Length\"}", true,
                      true);
      return 0;
    }
  }
  nr->body_pending = want > 0 && want <= NET_DISCARD_MAX;
  /* lws restarts its own timeout on every piece of body; ours is fixed. */
  if (nr->body_pending)
    lws_sul_schedule(L->ctx, 0, &nr->body_sul, net_http_body_late,
                     (lws_usec_t)L->o.body_timeout_ms * LWS_US_PER_MS);
  if (want > L->o.max_http_body) {
    lr_warn_limited("body too large", "http %s %s: body of %llu bytes over the %zu limit, 413",
                    method, nr->path, want, L->o.max_http_body);
    net_http_simple(nr, 413, "application/json", "{\"error\":\"Request body too large\"}", true,
                    true);
    return 0;
  }
  if (want > 0) {
    /* No reservation up front: memory follows the bytes that arrive. */
    return 0; /* HTTP_BODY ... HTTP_BODY_COMPLETION */
  }
  net_http_dispatch(nr);
  return 0;
}

/* HTTP_BODY: append a piece of the body (bounded by max_http_body). */
int net_http_body(net_req *nr, const char *in, size_t len) {
  if (nr->answered || nr->dispatched) return 0; /* answered early: discard */
  if (nr->body.len + len > nr->loop->o.max_http_body) {
    net_http_simple(nr, 413, "application/json", "{\"error\":\"Request body too large\"}", true,
                    true);
    return 0;
  }
  lr_buf_put(&nr->body, in, len);
  return 0;
}

/* Finish the transaction after the last byte of a response. A refused
 * request whose body is still arriving is closed only once the body has
 * been read (closing with unread input would reset the connection and the
 * client could lose the response). */
static int net_http_complete(net_req *nr) {
  struct lws *wsi = nr->wsi;
  bool close_after = nr->close_after;
  if (close_after && nr->body_pending) {
    nr->resp_done = true;
    return 0; /* HTTP_BODY_COMPLETION closes */
  }
  net_req_detach(nr); /* answered: frees */
  if (close_after) return -1;
  if (lws_http_transaction_completed(wsi)) return -1;
  return 0;
}

/* HTTP_WRITEABLE: one lws_write per call: first the header block (status,
 * the response headers, Content-Length), then the body in NET_HTTP_CHUNK
 * pieces, then the transaction is completed (keep-alive) or closed. */
int net_http_writeable(net_req *nr) {
  struct lws *wsi = nr->wsi;
  if (!nr->ready || nr->resp_done) return 0;
  lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT, NET_HTTP_WRITE_SECS);
  if (!nr->hdrs_sent) {
    size_t need = LWS_PRE + 512;
    for (size_t i = 0; i < nr->nrh; i++) {
      size_t nl = strlen(nr->rh[i]);
      need += nl + strlen(nr->rh[i] + nl + 1) + 8;
    }
    unsigned char *buf = lr_xmalloc(need);
    unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + need - 1;
    int bad = lws_add_http_header_status(wsi, (unsigned)nr->status, &p, end);
    for (size_t i = 0; !bad && i < nr->nrh; i++) {
      char name[256];
      size_t nl = strlen(nr->rh[i]);
      if (nl + 2 > sizeof name) continue;
      memcpy(name, nr->rh[i], nl);
      name[nl] = ':';
      name[nl + 1] = '\0';
      const char *v = nr->rh[i] + nl + 1;
      bad = lws_add_http_header_by_name(wsi, (unsigned char *)name, (const unsigned char *)v,
                                        (int)strlen(v), &p, end);
    }
    if (!bad) {
      if (nr->head) {
        char len[24];
        int n = snprintf(len, sizeof len, "%zu", nr->outlen);
        bad = lws_add_http_header_by_name(
            wsi, (unsigned char *)"content-length:", (unsigned char *)len, n, &p, end);
      } else {
        bad = lws_add_http_header_content_length(wsi, nr->outlen, &p, end);
      }
    }
    if (!bad && nr->close_after)
      bad = lws_add_http_header_by_name(
          wsi, (unsigned char *)"connection:", (unsigned char *)"close", 5, &p, end);
    if (!bad) bad = lws_finalize_write_http_header(wsi, start, &p, end);
    free(buf);
    if (bad) {
      lr_error("http: cannot write the response header block");
      return -1;
    }
    nr->hdrs_sent = true;
    if (nr->head || nr->outlen == 0) return net_http_complete(nr);
    lws_callback_on_writable(wsi);
    return 0;
  }
  size_t left = nr->outlen - nr->sent;
  size_t n = left < NET_HTTP_CHUNK ? left : NET_HTTP_CHUNK;
  unsigned char *p;
  if (nr->fd >= 0) {
    p = nr->out + LWS_PRE;
    ssize_t r = read(nr->fd, p, n);
    if (r <= 0) {
      lr_error("http: static file read failed: %s", r < 0 ? strerror(errno) : "short file");
      return -1;
    }
    n = (size_t)r;
  } else {
    /* The bytes before this chunk were already written: lws may use them as
     * its LWS_PRE headroom. */
    p = nr->out + LWS_PRE + nr->sent;
  }
  bool last = nr->sent + n == nr->outlen;
  if (lws_write(wsi, p, n, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) < 0) return -1;
  nr->sent += n;
  if (last) return net_http_complete(nr);
  lws_callback_on_writable(wsi);
  return 0;
}

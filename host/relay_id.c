/*
 * relay_id.c - the text helpers both relays (shard.c, cluster.c) use to speak
 * for a client, and the owner's answer to a request they forwarded (see
 * relay_id.h). Owns: one copy of them. Must not: keep
 * state or know about links, rooms or the engine's internals.
 */
#include "relay_id.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "rand.h"

/* The value of query parameter name (raw, still percent-encoded), or NULL. */
const char *lr_query_param(const char *q, const char *name, size_t *len) {
  size_t nl = strlen(name);
  while (q && *q) {
    const char *end = strchr(q, '&');
    size_t n = end ? (size_t)(end - q) : strlen(q);
    if (n > nl && strncmp(q, name, nl) == 0 && q[nl] == '=') {
      *len = n - nl - 1;
      return q + nl + 1;
    }
    q = end ? end + 1 : NULL;
  }
  return NULL;
}

char *lr_pct_decode(const char *s, size_t n) {
  char *out = lr_xmalloc(n + 1);
  size_t j = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '%' && i + 2 < n) {
      char hex[3] = {s[i + 1], s[i + 2], 0};
      char *end;
      long v = strtol(hex, &end, 16);
      if (*end == 0 && v > 0) {
        out[j++] = (char)v;
        i += 2;
        continue;
      }
    }
    out[j++] = s[i] == '+' ? ' ' : s[i];
  }
  out[j] = 0;
  return out;
}

void lr_pct_encode(lr_buf *b, const char *s) {
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
        *c == '-' || *c == '_' || *c == '.' || *c == '~')
      lr_buf_putc(b, (char)*c);
    else
      lr_buf_printf(b, "%%%02X", *c);
  }
}

/* The client's private id (as the room computes its session id, Part 1 row
 * 1): ?id= trimmed, else ?_pk=, else a random id. */
char *lr_relay_private_id(lr_server *s, const char *query) {
  size_t n;
  const char *v = lr_query_param(query, "id", &n);
  if (v) {
    char *id = lr_pct_decode(v, n);
    char *b = id, *e = id + strlen(id);
    while (*b == ' ' || *b == '\t' || *b == '\n' || *b == '\r')
      b++;
    while (e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
      e--;
    if (e > b) {
      char *out = lr_xstrndup(b, (size_t)(e - b));
      free(id);
      return out;
    }
    free(id);
  }
  v = lr_query_param(query, "_pk", &n);
  if (v && n) return lr_pct_decode(v, n);
  char rnd[LR_SECRET_ID_LEN + 1]; /* a secret: 131 bits (rand.h) */
  lr_random_id(s, rnd, LR_SECRET_ID_LEN, LR_ALPHA62);
  return lr_xstrndup(rnd, strlen(rnd));
}

const char *lr_request_header(const lr_request *req, const char *name) {
  for (size_t i = 0; i < req->nheaders; i++)
    if (strcmp(req->headers[i].name, name) == 0) return req->headers[i].value;
  return NULL;
}

void lr_relay_client_connected(lr_buf *b, const char *priv, const lr_request *req,
                               bool (*skip)(const char *name)) {
  const char *host = lr_request_header(req, "host");
  const char *xff = lr_request_header(req, "x-forwarded-for");
  lr_buf_puts(b, "{\"type\":\"shard.clientConnected\",\"privateId\":");
  lr_json_put_string(b, priv, strlen(priv));
  lr_buf_puts(b, ",\"requestInfo\":{\"headers\":{");
  bool first = true;
  for (size_t i = 0; i < req->nheaders; i++) {
    const lr_header *h = &req->headers[i];
    if (skip(h->name) || strcmp(h->name, "x-forwarded-for") == 0) continue;
    if (!first) lr_buf_putc(b, ',');
    first = false;
    lr_json_put_string(b, h->name, strlen(h->name));
    lr_buf_putc(b, ':');
    lr_json_put_string(b, h->value ? h->value : "", h->value ? strlen(h->value) : 0);
  }
  /* The client's address reaches the room as x-forwarded-for. */
  lr_buf xf;
  lr_buf_init(&xf);
  if (xff && *xff) lr_buf_printf(&xf, "%s, ", xff);
  lr_buf_puts(&xf, req->remote_addr ? req->remote_addr : "unknown");
  if (!first) lr_buf_putc(b, ',');
  lr_buf_puts(b, "\"x-forwarded-for\":");
  lr_json_put_string(b, xf.data, xf.len);
  lr_buf_free(&xf);
  lr_buf_puts(b, "},\"url\":");
  lr_buf url;
  lr_buf_init(&url);
  lr_buf_printf(&url, "http://%s%s", host ? host : "localhost", req->path);
  if (req->query && *req->query) lr_buf_printf(&url, "?%s", req->query);
  lr_json_put_string(b, url.data, url.len);
  lr_buf_free(&url);
  lr_buf_puts(b, ",\"method\":\"GET\"}}");
}

void lr_relay_client_message(lr_buf *b, const char *priv, const char *data, size_t len) {
  lr_buf_puts(b, "{\"type\":\"shard.clientMessage\",\"privateId\":");
  lr_json_put_string(b, priv, strlen(priv));
  lr_buf_puts(b, ",\"payload\":");
  lr_buf_put(b, data, len);
  lr_buf_putc(b, '}');
}

void lr_relay_client_disconnected(lr_buf *b, const char *priv) {
  lr_buf_puts(b, "{\"type\":\"shard.clientDisconnected\",\"privateId\":");
  lr_json_put_string(b, priv, strlen(priv));
  lr_buf_putc(b, '}');
}

bool lr_relay_frame_is_json(const char *data, size_t len) {
  lr_json_limits lim = LR_JSON_DEFAULT_LIMITS;
  lr_node *n = lr_json_decode(data, len, &lim, NULL, 0);
  if (!n) return false;
  lr_node_release(n);
  return true;
}

void lr_relay_answer(lr_response_cb done, void *ud, const lr_fetch_result *r) {
  lr_header h[LR_CORS_N + 2];
  memcpy(h, lr_cors_headers, sizeof lr_cors_headers);
  size_t nh = LR_CORS_N;
  if (r->content_type) h[nh++] = (lr_header){"Content-Type", r->content_type};
  if (r->location) h[nh++] = (lr_header){"Location", r->location};
  lr_response resp = {r->status, h, nh, r->body, r->bodylen};
  done(ud, &resp);
}

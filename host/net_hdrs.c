/*
 * net_hdrs.c - what the transport reads from a request's head: headers
 * (lower-cased, for lr_request), the path and query re-encoded for the
 * engine, the method.
 *
 * Owns: the list of custom headers looked up by name; header copies (at
 * once, or on demand: net_hdrs_lazy); path and query re-encoding.
 * Must not: keep state between requests, call the engine, or write to a
 * socket.
 *
 * Paths. lws 4.1 percent-decodes the URL and collapses "//", "/./", "/../"
 * while parsing and splits the query on '&' and ';' (decoding '+' and %XX).
 * The engine gets the path and query re-encoded from those pieces: equal to
 * the raw text for every ordinary URL; the known losses are "%2F" in a path
 * (it arrives as a '/'), a literal '+' in a path (lws reads it as a space),
 * ';' as a query separator (becomes '&') and an encoded '=' inside a query
 * parameter name (lws turns it into '_').
 *
 * lws 4.1 limits worth knowing: request headers are capped at NET_HEADER_DATA
 * bytes (a bigger header block drops the connection); custom (non-standard)
 * request headers cannot be enumerated, so only those in net_custom_headers
 * and the names registered with lr_server_want_header reach the engine; chunked request bodies are
 * not decoded (411).
 */
#include "net_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The bytes net_pct_encode keeps as they are: the RFC 3986 unreserved set
 * plus `extra`, as a table (filled on first use, then one load per byte). */
typedef struct net_pct_set {
  const char *extra;
  bool ready;
  bool keep[256];
} net_pct_set;
static net_pct_set net_pct_path = {"/!$&'()*+,;=:@", false, {0}};
static net_pct_set net_pct_qkey = {"!$'()*,:@/?", false, {0}};
static net_pct_set net_pct_qval = {"!$'()*,:@/?=", false, {0}};

static const bool *net_pct_table(net_pct_set *t) {
  if (!t->ready) {
    for (int c = 0; c < 256; c++)
      t->keep[c] = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '-' || c == '.' || c == '_' || c == '~' || (c && strchr(t->extra, c));
    t->ready = true;
  }
  return t->keep;
}

/* Write s[0..n) into out (room for 3n bytes) percent-encoding every byte the
 * set does not keep; returns the bytes written. */
static size_t net_pct_put(char *out, const char *s, size_t n, net_pct_set *set) {
  static const char hex[] = "0123456789ABCDEF";
  const bool *keep = net_pct_table(set);
  char *o = out;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (keep[c]) {
      *o++ = (char)c;
    } else {
      o[0] = '%';
      o[1] = hex[c >> 4];
      o[2] = hex[c & 15];
      o += 3;
    }
  }
  return (size_t)(o - out);
}

/* Append s[0..n) to b, percent-encoded (net_pct_put). */
static void net_pct_encode(lr_buf *b, const char *s, size_t n, net_pct_set *set) {
  lr_buf_reserve(b, 3 * n); /* n is within lws's header data (NET_HEADER_DATA) */
  b->len += net_pct_put(b->data + b->len, s, n, set);
  b->data[b->len] = '\0';
}

/* Copy a whole header token into a new string, or NULL if absent. */
char *net_hdr_dup(struct lws *wsi, enum lws_token_indexes t) {
  int len = lws_hdr_total_length(wsi, t);
  if (len <= 0) return NULL;
  char *s = lr_xmalloc((size_t)len + 1);
  if (lws_hdr_copy(wsi, s, len + 1, t) < 0) {
    free(s);
    return NULL;
  }
  return s;
}

/* Custom (non-lextable) headers we look up by name: lws 4.1 has no way to
 * enumerate them (lws_hdr_custom_name_foreach came later). These, plus the
 * names the server registered (lr_server_want_header: room files' `headers`,
 * serve --headers). Keep lower-case; lws stores custom names lower-cased. */
static const char *const net_custom_headers[] = {
    "x-access-shard",
    "x-shard-id",
    "x-shard-world-id",
    "x-forwarded-by-shard",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-original-client-ip",
    "x-requested-with",
    "x-request-id",
    "x-api-key",
    "x-world-id",
    "x-test",
    "sec-fetch-mode",
    "sec-fetch-site",
    "sec-fetch-dest",
    "dnt",
    "upgrade-insecure-requests",
    "priority",
};

/* The request headers lws parses into its token table, as they reach the
 * engine: lower-cased "name" without the colon. Built once (first request):
 * lws_token_to_string and the name checks are not per request. */
typedef struct net_tok {
  uint8_t tok;
  uint8_t nl;
  char name[64];
} net_tok;
static net_tok net_toks[WSI_TOKEN_COUNT];
static int net_ntoks = -1;

static void net_toks_init(void) {
  net_ntoks = 0;
  for (int t = 0; t < (int)WSI_TOKEN_COUNT; t++) {
    if (t == WSI_TOKEN_HTTP_URI_ARGS || t >= (int)_WSI_TOKEN_CLIENT_SENT_PROTOCOLS) continue;
    const char *nm = (const char *)lws_token_to_string((enum lws_token_indexes)t);
    if (!nm) continue;
    size_t nl = strlen(nm);
    /* Header tokens are "name:"; methods, "http/1.1 " and h2 pseudo-headers
     * (":path") are not headers. */
    if (nl < 2 || nm[nl - 1] != ':' || nm[0] == ':' || nl > sizeof net_toks[0].name) continue;
    net_tok *k = &net_toks[net_ntoks++];
    k->tok = (uint8_t)t;
    k->nl = (uint8_t)(nl - 1);
    for (size_t i = 0; i < nl - 1; i++)
      k->name[i] = (char)(nm[i] >= 'A' && nm[i] <= 'Z' ? nm[i] + 32 : nm[i]);
    k->name[nl - 1] = '\0';
  }
}

/* A header the request has: a token, or (tok -1) a custom header looked up
 * by "name:"; and the length of its value. */
typedef struct net_found {
  const char *name;
  size_t nl;
  int vl;
  int tok;
} net_found;

/* Look up the custom header `name` (lower-case; key is "name:" of kl
 * bytes) and add it to f[*n] if the request has it, it is not there yet
 * (a registered name that is in the built-in list) and there is room.
 * Returns the bytes its copy takes. */
static size_t net_hdr_custom(struct lws *wsi, const char *name, const char *key, int kl,
                             net_found *f, size_t *n) {
  if (*n >= NET_MAX_HEADERS) return 0;
  int vl = lws_hdr_custom_length(wsi, key, kl);
  if (vl < 0) return 0;
  size_t nl = (size_t)kl - 1;
  for (size_t i = 0; i < *n; i++)
    if (f[i].nl == nl && memcmp(f[i].name, name, nl) == 0) return 0;
  f[(*n)++] = (net_found){name, nl, vl, -1};
  return nl + (size_t)vl + 2;
}

/* Collect every request header lws kept, lower-cased, into a new array of
 * lr_header whose strings live in the same allocation (one per request: the
 * lengths are looked up first, then the values copied). The caller frees
 * with net_hdrs_free. */
lr_header *net_hdrs_collect(net_loop *L, struct lws *wsi, size_t *nout) {
  if (net_ntoks < 0) net_toks_init();
  net_found f[NET_MAX_HEADERS];
  size_t n = 0, bytes = 0;
  for (int i = 0; i < net_ntoks && n < NET_MAX_HEADERS; i++) {
    int vl = lws_hdr_total_length(wsi, (enum lws_token_indexes)net_toks[i].tok);
    if (vl <= 0) continue;
    f[n++] = (net_found){net_toks[i].name, net_toks[i].nl, vl, net_toks[i].tok};
    bytes += net_toks[i].nl + (size_t)vl + 2;
  }
  char key[LR_HEADER_NAME_MAX + 2];
  for (size_t i = 0; i < sizeof net_custom_headers / sizeof *net_custom_headers; i++) {
    size_t nl = strlen(net_custom_headers[i]);
    memcpy(key, net_custom_headers[i], nl);
    key[nl] = ':';
    bytes += net_hdr_custom(wsi, net_custom_headers[i], key, (int)nl + 1, f, &n);
  }
  size_t nw;
  const char *const *wanted = lr_server_wanted_headers(L->srv, &nw);
  for (size_t i = 0; i < nw; i++) {
    size_t nl = strlen(wanted[i]);
    if (nl == 0 || nl + 1 >= sizeof key) continue;
    memcpy(key, wanted[i], nl);
    key[nl] = ':';
    bytes += net_hdr_custom(wsi, wanted[i], key, (int)nl + 1, f, &n);
  }
  lr_header *h = lr_xmalloc(sizeof *h * (n ? n : 1) + bytes);
  char *s = (char *)(h + (n ? n : 1));
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    memcpy(s, f[i].name, f[i].nl);
    s[f[i].nl] = '\0';
    char *v = s + f[i].nl + 1;
    int r;
    if (f[i].tok < 0) {
      memcpy(key, f[i].name, f[i].nl);
      key[f[i].nl] = ':';
      r = lws_hdr_custom_copy(wsi, v, f[i].vl + 1, key, (int)f[i].nl + 1);
    } else {
      r = lws_hdr_copy(wsi, v, f[i].vl + 1, (enum lws_token_indexes)f[i].tok);
    }
    if (r < 0) continue; /* as if absent */
    h[m].name = s;
    h[m].value = v;
    m++;
    s = v + f[i].vl + 1;
  }
  *nout = m;
  return h;
}

/* lr_request.load_headers of a WebSocket upgrade: net_hdrs_collect once,
 * the same headers on every later call. ud is a net_hdrs_lazy. */
const lr_header *net_hdrs_lazy_get(void *ud, size_t *n) {
  net_hdrs_lazy *z = ud;
  if (!z->done) {
    z->h = net_hdrs_collect(z->L, z->wsi, &z->n);
    z->done = true;
  }
  *n = z->n;
  return z->h;
}

/* Free what net_hdrs_collect returned (one allocation). NULL is ignored. */
void net_hdrs_free(lr_header *h, size_t n) {
  (void)n;
  free(h);
}

/* The path as the engine wants it: lws's decoded path percent-encoded again
 * (pchar and '/' kept). Returns a new string. */
char *net_path_encode(const char *decoded) {
  size_t n = strlen(decoded); /* within lws's header data (NET_HEADER_DATA) */
  char *s = lr_xmalloc(3 * n + 1);
  s[net_pct_put(s, decoded, n, &net_pct_path)] = '\0';
  return s;
}

/* The raw query without '?', rebuilt from lws's decoded "name=value"
 * fragments joined with '&'. Returns a new string ("" if none). */
char *net_query_collect(struct lws *wsi) {
  int total = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_URI_ARGS);
  if (total <= 0) return lr_xstrndup("", 0);
  char *frag = lr_xmalloc((size_t)total + 1);
  lr_buf b;
  lr_buf_init(&b);
  for (int i = 0;; i++) {
    int fl = lws_hdr_copy_fragment(wsi, frag, total + 1, WSI_TOKEN_HTTP_URI_ARGS, i);
    if (fl < 0) break;
    if (fl == 0) continue;
    if (b.len) lr_buf_putc(&b, '&');
    const char *eq = memchr(frag, '=', (size_t)fl);
    if (eq) {
      net_pct_encode(&b, frag, (size_t)(eq - frag), &net_pct_qkey);
      lr_buf_putc(&b, '=');
      net_pct_encode(&b, eq + 1, (size_t)(fl - (eq + 1 - frag)), &net_pct_qval);
    } else {
      net_pct_encode(&b, frag, (size_t)fl, &net_pct_qkey);
    }
  }
  free(frag);
  if (!b.data) return lr_xstrndup("", 0);
  return b.data; /* NUL-terminated: net_pct_encode / lr_buf_putc end it */
}

/* The request method as a static string, or NULL for one lws does not
 * parse; *head tells HEAD apart. Needs the header table (ah). */
const char *net_method(struct lws *wsi, bool *head) {
  static const char *const names[] = {"GET",   "POST",   "OPTIONS", "PUT",
                                      "PATCH", "DELETE", "CONNECT", "HEAD"};
  char *uri;
  int ulen;
  int m = lws_http_get_uri_and_method(wsi, &uri, &ulen);
  *head = m == LWSHUMETH_HEAD;
  if (m < 0 || m >= (int)(sizeof names / sizeof *names)) return NULL;
  return names[m];
}

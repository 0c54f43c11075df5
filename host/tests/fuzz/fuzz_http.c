/*
 * fuzz_http.c - libFuzzer target: URL and route matching and everything an
 * HTTP request or a WebSocket upgrade reaches before a room handler runs:
 * the /parties/{party}/{room} parser (room.c parse_party_path), room
 * resolution by path template, query parsing, whole-path route matching with
 * URL-decoded :params, JSON bodies and schemas, route guards (JWT), the
 * operations endpoints (/healthz, /readyz, /metrics, /admin with a JWT), and
 * connect guards on upgrades.
 *
 * Input, HTTP-like:
 *   METHOD SP TARGET LF          TARGET = path[?query]; METHOD "WS" = upgrade
 *   (name: value LF)*            header names are lower-cased here
 *   LF
 *   body                         WS: frames separated by 0x1E
 * An input without a LF is a GET of that target.
 * Must not: keep state across inputs (a new server per input).
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_server.h"

#define MAX_HEADERS 32

static void done(void *ud, const lr_response *r) {
  int *calls = ud;
  (*calls)++;
  if (r->status < 100 || r->status > 599) {
    fprintf(stderr, "fuzz_http: status %d\n", r->status);
    abort();
  }
  if (r->bodylen && !r->body) abort();
  for (size_t i = 0; i < r->nheaders; i++)
    if (!r->headers[i].name || !r->headers[i].value) abort();
}

/* Copy s[0..n) as a NUL-terminated string (NUL bytes end it early, as they
 * would in a C transport). */
static char *cstr(const char *s, size_t n) {
  char *out = malloc(n + 1);
  memcpy(out, s, n);
  out[n] = 0;
  return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = (const char *)data, *end = p + size;
  const char *nl = memchr(p, '\n', size);
  const char *line_end = nl ? nl : end;
  /* Request line. */
  const char *sp = memchr(p, ' ', (size_t)(line_end - p));
  char *method = sp ? cstr(p, (size_t)(sp - p)) : cstr("GET", 3);
  const char *target = sp ? sp + 1 : p;
  char *tgt = cstr(target, (size_t)(line_end - target));
  char *q = strchr(tgt, '?');
  const char *query = "";
  if (q) {
    *q = 0;
    query = q + 1;
  }
  /* Headers. */
  lr_header hs[MAX_HEADERS];
  char *hbuf[MAX_HEADERS * 2];
  size_t nh = 0;
  const char *cur = nl ? nl + 1 : end;
  while (cur < end) {
    const char *le = memchr(cur, '\n', (size_t)(end - cur));
    if (!le) le = end;
    if (le == cur) { /* blank line: the body follows */
      cur++;
      break;
    }
    const char *colon = memchr(cur, ':', (size_t)(le - cur));
    if (colon && nh < MAX_HEADERS) {
      char *name = cstr(cur, (size_t)(colon - cur));
      for (char *c = name; *c; c++)
        *c = (char)tolower((unsigned char)*c);
      const char *v = colon + 1;
      while (v < le && *v == ' ')
        v++;
      char *value = cstr(v, (size_t)(le - v));
      hbuf[2 * nh] = name;
      hbuf[2 * nh + 1] = value;
      hs[nh] = (lr_header){name, value};
      nh++;
    }
    cur = le < end ? le + 1 : end;
  }
  const char *body = cur < end ? cur : NULL;
  size_t bodylen = cur < end ? (size_t)(end - cur) : 0;

  lr_server *s = fz_server_new();
  if (strcmp(method, "WS") == 0) {
    fz_conn c;
    if (fz_conn_open(s, &c, tgt, query, hs, nh) == 0) {
      const char *f = body;
      for (int i = 0; f && i < 8 && c.close_code < 0; i++) {
        const char *sep = memchr(f, 0x1E, (size_t)(end - f));
        fz_conn_send(s, &c, f, (size_t)((sep ? sep : end) - f));
        f = sep ? sep + 1 : NULL;
      }
      fz_conn_close(s, &c);
    }
  } else {
    lr_request req = {method, tgt, query, hs, nh, body, bodylen, "127.0.0.1", NULL, NULL};
    int calls = 0;
    lr_server_http(s, &req, done, &calls);
    lr_server_tick(s);
    if (calls != 1) {
      fprintf(stderr, "fuzz_http: done called %d times\n", calls);
      abort();
    }
  }
  fz_server_free(s);
  for (size_t i = 0; i < 2 * nh; i++)
    free(hbuf[i]);
  free(tgt);
  free(method);
  return 0;
}

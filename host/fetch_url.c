/*
 * fetch_url.c - the URL parser of outgoing links (fetch_url.h): the one
 * parser of lunaroom.io.request, lunaroom.fetch, shard and world uplinks;
 * host/tests/fuzz/fuzz_url.c and host/tests/test_url.c check it.
 *
 * Owns: splitting http://, https://, ws://, wss:// URLs into host, port,
 * path and the Host header, and what is refused (fetch_url.h says what).
 * Must not: resolve or connect, or allocate anything on a refused URL.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "fetch_url.h"

/* Split http://host[:port]/path?query (or ws://, https://, wss://). */
int lr_url_parse(const char *url, lr_url *out) {
  *out = (lr_url){0};
  for (const char *q = url; *q; q++) /* no spaces, controls or fragment: it goes on the wire */
    if ((unsigned char)*q < 0x21 || *q == 0x7f || *q == '#') return -1;
  const char *p;
  bool tls = false;
  if (strncmp(url, "http://", 7) == 0)
    p = url + 7;
  else if (strncmp(url, "ws://", 5) == 0)
    p = url + 5;
  else if (strncmp(url, "https://", 8) == 0)
    p = url + 8, tls = true;
  else if (strncmp(url, "wss://", 6) == 0)
    p = url + 6, tls = true;
  else
    return -1;
  const char *host = p, *host_end;
  bool v6 = *p == '[';
  if (v6) { /* [v6]:port */
    const char *close = strchr(p, ']');
    if (!close) return -1;
    host = p + 1;
    host_end = close;
    p = close + 1;
  } else {
    while (*p && *p != ':' && *p != '/' && *p != '?')
      p++;
    host_end = p;
  }
  if (host_end == host || host_end - host > LR_URL_HOST_MAX) return -1;
  for (const char *q = host; q < host_end; q++)
    if (strchr("/?@[]", *q) || (*q & 0x80)) return -1; /* no userinfo; names in ASCII */
  int port = tls ? 443 : 80;
  if (*p == ':') {
    long v = 0;
    const char *d = p + 1;
    while (*d >= '0' && *d <= '9' && v <= 65535)
      v = v * 10 + (*d++ - '0');
    if (d == p + 1 || v <= 0 || v > 65535) return -1;
    port = (int)v;
    p = d;
  }
  if (*p && *p != '/' && *p != '?') return -1;
  out->tls = tls;
  out->host = lr_xstrndup(host, (size_t)(host_end - host));
  out->port = port;
  if (*p == '/') {
    out->path = lr_xstrndup(p, strlen(p));
  } else {
    size_t n = strlen(p); /* "" or "?query" */
    out->path = lr_xmalloc(n + 2);
    out->path[0] = '/';
    memcpy(out->path + 1, p, n + 1);
  }
  char hp[LR_URL_HOST_MAX + 16];
  snprintf(hp, sizeof hp, strchr(out->host, ':') ? "[%s]" : "%s", out->host); /* v6 */
  if (port != (tls ? 443 : 80)) snprintf(hp + strlen(hp), sizeof hp - strlen(hp), ":%d", port);
  out->hostport = lr_xstrndup(hp, strlen(hp));
  return 0;
}

void lr_url_free(lr_url *u) {
  free(u->host);
  free(u->path);
  free(u->hostport);
  *u = (lr_url){0};
}

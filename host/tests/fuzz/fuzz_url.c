/*
 * fuzz_url.c - libFuzzer target: the URL parser of outgoing links
 * (fetch_url.c lr_url_parse through fetch_url.h: lunaroom.io.request,
 * lunaroom.fetch, shard and world uplinks).
 *
 * Each input (up to the first NUL byte, as a C caller passes it) is parsed
 * as it is and with "http://" in front. A URL that parses must give:
 *   - tls exactly for https:// and wss://;
 *   - a host of 1..LR_URL_HOST_MAX bytes, each 0x21..0x7e and none of
 *     / ? # @ [ ] (a ':' only in a bracketed v6 address);
 *   - a port in 1..65535;
 *   - a path that starts with '/', with no byte below 0x21, no 0x7f and no
 *     '#' (it goes into the request line as it is);
 *   - hostport (the Host header) = host, or [host] for a v6 address, with
 *     ":port" when the port is not the scheme's;
 *   - the same parts again when the URL is rebuilt from them
 *     (scheme://host:port/path) and parsed.
 * ASan reports leaks of either outcome (a refused URL allocates nothing).
 * Must not: keep state across inputs.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fetch_url.h"

static void fail(const char *url, const char *what) {
  fprintf(stderr, "fuzz_url: %s\n  url: ", what);
  for (const char *p = url; *p; p++)
    fprintf(stderr, (unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e ? "\\x%02x" : "%c",
            (unsigned char)*p);
  fprintf(stderr, "\n");
  abort();
}

static bool has_prefix(const char *s, const char *p) {
  return strncmp(s, p, strlen(p)) == 0;
}

static void check(const char *url, const lr_url *u, int depth) {
  bool tls = has_prefix(url, "https://") || has_prefix(url, "wss://");
  const char *scheme = has_prefix(url, "https://")  ? "https"
                       : has_prefix(url, "http://") ? "http"
                       : has_prefix(url, "wss://")  ? "wss"
                       : has_prefix(url, "ws://")   ? "ws"
                                                    : NULL;
  if (!scheme) fail(url, "parsed a URL without a known scheme");
  if (u->tls != tls) fail(url, "tls does not follow the scheme");
  size_t hl = strlen(u->host);
  if (hl == 0 || hl > LR_URL_HOST_MAX) fail(url, "host length out of bounds");
  bool v6 = strchr(u->host, ':') != NULL;
  for (const char *p = u->host; *p; p++) {
    unsigned char ch = (unsigned char)*p;
    if (ch < 0x21 || ch > 0x7e || strchr("/?#@[]", ch)) fail(url, "bad byte in host");
  }
  if (u->port < 1 || u->port > 65535) fail(url, "port out of range");
  if (u->path[0] != '/') fail(url, "path does not start with /");
  for (const char *p = u->path; *p; p++) {
    unsigned char ch = (unsigned char)*p;
    if (ch < 0x21 || ch == 0x7f || ch == '#') fail(url, "bad byte in path");
  }
  int dflt = tls ? 443 : 80;
  char want[LR_URL_HOST_MAX + 16];
  snprintf(want, sizeof want, v6 ? "[%s]" : "%s", u->host);
  if (u->port != dflt) snprintf(want + strlen(want), sizeof want - strlen(want), ":%d", u->port);
  if (strcmp(want, u->hostport) != 0) fail(url, "hostport is not host[:port]");
  if (depth > 0) return;
  size_t n = strlen(scheme) + hl + strlen(u->path) + 32;
  char *again = malloc(n);
  snprintf(again, n, v6 ? "%s://[%s]:%d%s" : "%s://%s:%d%s", scheme, u->host, u->port, u->path);
  lr_url v;
  if (lr_url_parse(again, &v) != 0) fail(url, "the rebuilt URL does not parse");
  check(again, &v, 1);
  if (strcmp(v.host, u->host) || strcmp(v.path, u->path) || v.port != u->port || v.tls != u->tls)
    fail(url, "the rebuilt URL parses differently");
  lr_url_free(&v);
  free(again);
}

static void one(const char *url) {
  lr_url u;
  if (lr_url_parse(url, &u) != 0) return;
  check(url, &u, 0);
  lr_url_free(&u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *s = malloc(size + 8);
  memcpy(s, "http://", 7);
  memcpy(s + 7, data, size);
  s[7 + size] = 0;
  one(s + 7);
  one(s);
  free(s);
  return 0;
}

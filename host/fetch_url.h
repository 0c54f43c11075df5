/*
 * fetch_url.h - the URL parser of outgoing links (fetch_url.c:
 * lunaroom.io.request, lunaroom.fetch, shard and world uplinks), reachable
 * for its fuzz target (host/tests/fuzz/fuzz_url.c).
 *
 * Owns: the contract of a parsed URL.
 * Must not: grow a second parser: fetch_url.c parses, fetch.c and the
 * tests call it.
 *
 * A URL is http://, https://, ws:// or wss:// then a host (a name or an
 * address, or [v6]), an optional :port (1-65535) and an optional path and
 * query. Refused (-1): no host, a host over LR_URL_HOST_MAX bytes, userinfo
 * (user@), a fragment (#), any byte below 0x21 or 0x7f anywhere, anything
 * but /, ? or the end after the host or port. On success host, path (always
 * starting with '/') and hostport (the Host header: host, or host:port
 * when the port is not the scheme's; a v6 address in brackets) are
 * malloc'd; lr_url_free frees them.
 */
#ifndef LR_FETCH_URL_H
#define LR_FETCH_URL_H

#include <stdbool.h>

#define LR_URL_HOST_MAX 255

typedef struct lr_url {
  char *host, *path, *hostport;
  int port;
  bool tls; /* https:// or wss:// */
} lr_url;

/* 0 and *out filled, or -1 (nothing allocated). */
int lr_url_parse(const char *url, lr_url *out);
void lr_url_free(lr_url *u);

#endif

/*
 * net_addr.c - client addresses and what each may hold open.
 *
 * Owns: the client address of a connection (TCP peer, or X-Forwarded-For
 * behind --trusted-proxy), the per-address table (struct net_addr), the
 * accepted-socket count per address (max_http_per_ip, refused at accept),
 * relayed clients' slots (lr_net_addr_acquire/release).
 * Must not: call the engine, or write to a socket other than the fresh one
 * refused at accept (net_sock_filter, before lws owns it).
 *
 * Per-address limits. Client addresses are the TCP peer, or with
 * --trusted-proxy the X-Forwarded-For entry a listed proxy appended (the
 * PROXY protocol is not available in lws 4.1); IPv6 counts per /64. Each
 * address has one entry (struct net_addr) counting its accepted sockets
 * that are not WebSockets (max_http_per_ip: refused at accept with a 429
 * written to the fresh socket), its WebSockets, direct or relayed by a
 * shard (max_conns_per_ip: 429 on the upgrade, net_ws.c; relayed clients
 * through lr_net_addr_acquire), and its message budget (msgs_per_ip,
 * net_budget.c). An authenticated shard uplink is not counted.
 * Refusals are logged through lr_warn_limited (log.c): a flood of them
 * cannot flood the log.
 */
#include "hash.h"
#include "net_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "log.h"

/* An IPv4 peer (or one mapped into IPv6 by a dual-stack socket) as
 * "a.b.c.d" into buf, formatted by hand: lws_get_peer_simple formats it with
 * three snprintf calls, and every join asks twice (accept, upgrade). false:
 * not IPv4 (the caller asks lws). */
static bool net_peer_v4(struct lws *wsi, char *buf, size_t len) {
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  int fd = lws_get_socket_fd(wsi);
  if (len < 16 || fd < 0 || getpeername(fd, (struct sockaddr *)&ss, &sl) != 0) return false;
  const unsigned char *b;
  if (ss.ss_family == AF_INET) {
    b = (const unsigned char *)&((struct sockaddr_in *)&ss)->sin_addr;
  } else if (ss.ss_family == AF_INET6 &&
             IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)&ss)->sin6_addr)) {
    b = (const unsigned char *)&((struct sockaddr_in6 *)&ss)->sin6_addr + 12;
  } else {
    return false;
  }
  char *p = buf;
  for (int i = 0; i < 4; i++) {
    unsigned v = b[i];
    if (v >= 100) *p++ = (char)('0' + v / 100);
    if (v >= 10) *p++ = (char)('0' + v / 10 % 10);
    *p++ = (char)('0' + v % 10);
    if (i < 3) *p++ = '.';
  }
  *p = '\0';
  return true;
}

/* The TCP peer's numeric address into buf ("unknown" if lws cannot tell). */
static void net_peer_tcp(struct lws *wsi, char *buf, size_t len) {
  buf[0] = '\0';
  if (net_peer_v4(wsi, buf, len)) return;
  if (!lws_get_peer_simple(wsi, buf, len)) {
    snprintf(buf, len, "unknown");
    return;
  }
  /* An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d */
  if (!strncmp(buf, "::ffff:", 7) && strchr(buf + 7, '.'))
    memmove(buf, buf + 7, strlen(buf + 7) + 1);
}

/* Is the numeric address ip in the --trusted-proxy list? */
static bool net_trusted(const net_loop *L, const char *ip) {
  unsigned char a[16];
  int fam = strchr(ip, ':') ? AF_INET6 : AF_INET;
  if (!L->ntrusted || inet_pton(fam, ip, a) != 1) return false;
  for (size_t i = 0; i < L->ntrusted; i++) {
    const struct net_cidr *c = &L->trusted[i];
    if (c->fam != fam) continue;
    int bits = c->bits, k = 0;
    for (; bits >= 8 && a[k] == c->a[k]; k++, bits -= 8) {
    }
    if (bits <= 0 || (bits < 8 && ((a[k] ^ c->a[k]) & (0xff00 >> bits)) == 0)) return true;
  }
  return false;
}

/* The client's address into buf: the TCP peer, or, when the peer is a
 * trusted proxy (--trusted-proxy), the last X-Forwarded-For entry that is
 * not one (entries to its left were written by the client and are not
 * believed). A request through a trusted proxy without the header keeps the
 * proxy's address. */
void net_peer(struct lws *wsi, char *buf, size_t len) {
  net_peer_tcp(wsi, buf, len);
  net_loop *L = lws_context_user(lws_get_context(wsi));
  if (!L || !L->ntrusted || !net_trusted(L, buf)) return;
  char *xff = net_hdr_dup(wsi, WSI_TOKEN_X_FORWARDED_FOR);
  if (!xff) return;
  char *end = xff + strlen(xff);
  while (end > xff) {
    char *comma = end;
    while (comma > xff && comma[-1] != ',')
      comma--;
    char *a = comma, *b = end;
    while (a < b && (*a == ' ' || *a == '\t'))
      a++;
    while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
      b--;
    *b = '\0';
    unsigned char tmp[16];
    bool numeric = inet_pton(strchr(a, ':') ? AF_INET6 : AF_INET, a, tmp) == 1;
    if (!numeric) break; /* garbage: keep the last trusted hop */
    if (!strncmp(a, "::ffff:", 7) && strchr(a + 7, '.')) a += 7;
    snprintf(buf, len, "%s", a);
    if (!net_trusted(L, a)) break;
    end = comma > xff ? comma - 1 : xff;
  }
  free(xff);
}

/* ---- per-address accounting ---- */

static struct net_addr net_tomb; /* a deleted slot */

/* The accounting key of a numeric address: IPv4 as it is, IPv6 cut to its
 * /64 (one subscriber's usual allocation), anything else as it is. */
static void net_addr_key(const char *ip, char out[64]) {
  unsigned char a6[16];
  if (strchr(ip, ':') && inet_pton(AF_INET6, ip, a6) == 1) {
    char txt[INET6_ADDRSTRLEN];
    memset(a6 + 8, 0, 8);
    if (inet_ntop(AF_INET6, a6, txt, sizeof txt)) {
      snprintf(out, 64, "%s/64", txt);
      return;
    }
  }
  size_t n = strnlen(ip, 63);
  memcpy(out, ip, n);
  out[n] = '\0';
}

static uint32_t net_addr_hash(const char *k) {
  return lr_fnv1a(LR_FNV1A_INIT, k, strlen(k));
}

/* Rebuild the table with room for twice its live entries (no tombstones). */
static void net_addr_rehash(net_loop *L) {
  size_t live = 0;
  for (size_t i = 0; i < L->addrcap; i++)
    if (L->addrs[i] && L->addrs[i] != &net_tomb) live++;
  size_t cap = 1024;
  while (cap < 4 * (live + 1))
    cap *= 2;
  struct net_addr **t = lr_xcalloc(cap, sizeof *t);
  for (size_t i = 0; i < L->addrcap; i++) {
    struct net_addr *a = L->addrs[i];
    if (!a || a == &net_tomb) continue;
    size_t j = net_addr_hash(a->key) & (cap - 1);
    while (t[j])
      j = (j + 1) & (cap - 1);
    t[j] = a;
  }
  free(L->addrs);
  L->addrs = t;
  L->addrcap = cap;
  L->addrused = live;
}

/* The entry of the numeric address ip (created when add; NULL when absent).
 * Entries never move: connections keep pointers to theirs. */
struct net_addr *net_addr_get(net_loop *L, const char *ip, bool add) {
  char key[64];
  net_addr_key(ip, key);
  if (!L->addrcap) {
    if (!add) return NULL;
    net_addr_rehash(L);
  }
  size_t mask = L->addrcap - 1, i = net_addr_hash(key) & mask;
  for (; L->addrs[i]; i = (i + 1) & mask)
    if (L->addrs[i] != &net_tomb && strcmp(L->addrs[i]->key, key) == 0) return L->addrs[i];
  if (!add) return NULL;
  struct net_addr *a = lr_xcalloc(1, sizeof *a);
  memcpy(a->key, key, sizeof key);
  L->addrs[i] = a;
  if (++L->addrused * 2 > L->addrcap) net_addr_rehash(L);
  return a;
}

/* Free a's entry if nothing counts on it any more. */
void net_addr_put(net_loop *L, struct net_addr *a) {
  if (!a || a->ws || a->http || a->held_head || a->waiting) return;
  size_t mask = L->addrcap - 1, i = net_addr_hash(a->key) & mask;
  for (; L->addrs[i]; i = (i + 1) & mask) {
    if (L->addrs[i] == a) {
      L->addrs[i] = &net_tomb;
      free(a);
      return;
    }
  }
}

/* Free every entry (end of lr_net_run). */
void net_addr_free_all(net_loop *L) {
  for (size_t i = 0; i < L->addrcap; i++)
    if (L->addrs[i] && L->addrs[i] != &net_tomb) free(L->addrs[i]);
  free(L->addrs);
  L->addrs = NULL;
  L->addrcap = L->addrused = 0;
}

/* ---- sockets per address (max_http_per_ip) ----
 *
 * Every accepted socket is counted under its TCP peer's address from accept
 * (FILTER_NETWORK_CONNECTION refuses, NEW_CLIENT_INSTANTIATED counts) until
 * it is destroyed or becomes a WebSocket (then counted in ws instead). The
 * entry rides on the wsi's opaque parent pointer (the opaque user pointer
 * holds our per-request object). Trusted proxies are not counted. */

/* FILTER_NETWORK_CONNECTION: a new socket fd, before lws reads from it.
 * Over the cap it gets a 429 written straight to the fresh socket (nothing
 * else is queued on it) and is closed. Returns the lws callback result. */
int net_sock_filter(net_loop *L, int fd) {
  if (L->o.max_http_per_ip < 0 || fd < 0) return 0;
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  char ip[INET6_ADDRSTRLEN + 1] = "";
  if (getpeername(fd, (struct sockaddr *)&ss, &sl) != 0) return 0;
  if (ss.ss_family == AF_INET)
    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof ip);
  else if (ss.ss_family == AF_INET6)
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, ip, sizeof ip);
  if (!ip[0]) return 0;
  const char *p = !strncmp(ip, "::ffff:", 7) && strchr(ip + 7, '.') ? ip + 7 : ip;
  if (net_trusted(L, p)) return 0;
  struct net_addr *a = net_addr_get(L, p, false);
  if (!a || a->http < (uint32_t)L->o.max_http_per_ip) return 0;
  lr_warn_limited(
      "http address limit",
      "connection from %s refused: %u open HTTP connections from this address (max %ld)", p,
      a->http, L->o.max_http_per_ip);
  if (L->o.tls_cert) return 1; /* a TLS client would read plain text as a bad handshake */
  static const char resp[] = "HTTP/1.1 429 Too Many Requests\r\n"
                             "content-type: text/plain; charset=utf-8\r\n"
                             "content-length: 40\r\n"
                             "retry-after: 5\r\n"
                             "connection: close\r\n\r\n"
                             "too many connections from this address\r\n";
  /* Read what already arrived so that closing sends FIN rather than RST. */
  char sink[4096];
  (void)!recv(fd, sink, sizeof sink, MSG_DONTWAIT);
  (void)!send(fd, resp, sizeof resp - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  shutdown(fd, SHUT_WR);
  return 1;
}

/* NEW_CLIENT_INSTANTIATED: count the socket under its address. */
void net_sock_open(net_loop *L, struct lws *wsi) {
  char peer[64];
  net_peer_tcp(wsi, peer, sizeof peer);
  if (net_trusted(L, peer)) return;
  struct net_addr *a = net_addr_get(L, peer, true);
  a->http++;
  lws_set_opaque_parent_data(wsi, a);
}

/* The socket is destroyed or became a WebSocket: uncount it. */
void net_sock_release(struct lws *wsi) {
  struct net_addr *a = lws_get_opaque_parent_data(wsi);
  if (!a) return;
  lws_set_opaque_parent_data(wsi, NULL);
  if (a->http) a->http--;
  net_addr_put(net_loop_of(wsi), a);
}

/* Parse "a.b.c.d, x/24, ::1, 2001:db8::/32" into L->trusted. Returns 0, or
 * -1 (logged) on an entry that is not an address or CIDR. */
int net_parse_trusted(net_loop *L, const char *list) {
  if (!list || !*list) return 0;
  const char *p = list;
  while (*p) {
    size_t n = strcspn(p, ", ");
    if (n) {
      char item[80], *slash;
      if (n >= sizeof item) {
        lr_error("--trusted-proxy: entry too long: %.*s", (int)n, p);
        return -1;
      }
      memcpy(item, p, n);
      item[n] = '\0';
      struct net_cidr c = {0};
      c.fam = strchr(item, ':') ? AF_INET6 : AF_INET;
      c.bits = c.fam == AF_INET ? 32 : 128;
      if ((slash = strchr(item, '/'))) {
        *slash = '\0';
        char *end;
        long b = strtol(slash + 1, &end, 10);
        if (*end || end == slash + 1 || b < 0 || b > c.bits) {
          lr_error("--trusted-proxy: bad prefix length in %.*s", (int)n, p);
          return -1;
        }
        c.bits = (int)b;
      }
      if (inet_pton(c.fam, item, c.a) != 1) {
        lr_error("--trusted-proxy: not a numeric address: %.*s", (int)n, p);
        return -1;
      }
      L->trusted = lr_xrealloc(L->trusted, (L->ntrusted + 1) * sizeof *L->trusted);
      L->trusted[L->ntrusted++] = c;
    }
    p += n;
    while (*p == ',' || *p == ' ')
      p++;
  }
  return 0;
}

net_loop *net_active; /* the running loop, for lr_net_addr_* */

bool lr_net_addr_acquire(const char *addr) {
  net_loop *L = net_active;
  if (!L || !addr) return true;
  struct net_addr *a = net_addr_get(L, addr, true);
  if (L->o.max_conns_per_ip >= 0 && a->ws >= (uint32_t)L->o.max_conns_per_ip) {
    lr_warn_limited("address limit",
                    "relayed client from %s refused: %u connections from this address (max %ld)",
                    addr, a->ws, L->o.max_conns_per_ip);
    net_addr_put(L, a);
    return false;
  }
  a->ws++;
  return true;
}

void lr_net_addr_release(const char *addr) {
  net_loop *L = net_active;
  if (!L || !addr) return;
  struct net_addr *a = net_addr_get(L, addr, false);
  if (!a) return;
  if (a->ws) a->ws--;
  net_addr_put(L, a);
}

/*
 * test_url.c - unit tests of the URL parser of outgoing links (fetch_url.c
 * through fetch_url.h): what must be refused because it would reach the
 * wire as it is (spaces, CR/LF, a fragment, userinfo), ports and garbage
 * after them, long hosts, and the Host header of a v6 address. The fuzz
 * target host/tests/fuzz/fuzz_url.c checks the same rules on any input.
 * Must not: open connections.
 */
#include <stdlib.h>

#include "fetch_url.h"
#include "test.h"

static int parses(const char *url) {
  lr_url u;
  int rc = lr_url_parse(url, &u);
  if (rc == 0) lr_url_free(&u);
  return rc == 0;
}

TEST(url_parts) {
  lr_url u;
  ASSERT(lr_url_parse("https://example.com:8443/a/b?x=1", &u) == 0);
  ASSERT_EQ_STR("example.com", u.host);
  ASSERT_EQ_INT(8443, u.port);
  ASSERT_EQ_STR("/a/b?x=1", u.path);
  ASSERT_EQ_STR("example.com:8443", u.hostport);
  ASSERT(u.tls);
  lr_url_free(&u);
  ASSERT(lr_url_parse("http://h?q=1", &u) == 0);
  ASSERT_EQ_STR("/?q=1", u.path);
  ASSERT_EQ_STR("h", u.hostport);
  ASSERT_EQ_INT(80, u.port);
  lr_url_free(&u);
}

TEST(url_v6_host_header_in_brackets) {
  lr_url u;
  ASSERT(lr_url_parse("ws://[::1]:9000/x", &u) == 0);
  ASSERT_EQ_STR("::1", u.host);
  ASSERT_EQ_STR("[::1]:9000", u.hostport);
  lr_url_free(&u);
  ASSERT(lr_url_parse("wss://[fe80::1]/", &u) == 0);
  ASSERT_EQ_STR("[fe80::1]", u.hostport);
  lr_url_free(&u);
}

TEST(url_refused) {
  ASSERT(!parses("ftp://h/"));
  ASSERT(!parses("http://"));
  ASSERT(!parses("http:///x"));
  ASSERT(!parses("http://h\r\nX-Injected: 1/")); /* CR/LF: header injection */
  ASSERT(!parses("http://h/a b"));               /* a space breaks the request line */
  ASSERT(!parses("http://h/a\tb"));
  ASSERT(!parses("http://h/p#frag")); /* fragments are not sent */
  ASSERT(!parses("http://user@h/"));  /* userinfo */
  ASSERT(!parses("http://user:pw@h/"));
  ASSERT(!parses("http://h:80abc")); /* garbage after the port */
  ASSERT(!parses("http://h: 80/"));  /* strtol took spaces and signs */
  ASSERT(!parses("http://h:+80/"));
  ASSERT(!parses("http://h:0/"));
  ASSERT(!parses("http://h:65536/"));
  ASSERT(!parses("http://h:99999999999999999999/"));
  ASSERT(!parses("http://[::1]x/")); /* garbage after ] */
  ASSERT(!parses("http://[::1/"));
  ASSERT(!parses("http://a]b/"));
  ASSERT(!parses("http://h\x7f/"));
  ASSERT(!parses("http://h\xc3\xa9.example/")); /* names in ASCII (punycode) */
  char big[400] = "http://";
  memset(big + 7, 'a', 256);
  ASSERT(!parses(big)); /* 256-byte host */
  big[7 + 255] = 0;
  ASSERT(parses(big)); /* 255 is the bound */
}

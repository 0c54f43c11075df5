/*
 * utf8.c - the host's one UTF-8 validator and encoder (utf8.h).
 *
 * Owns: lr_utf8_valid (with its ASCII fast path) and lr_utf8_put.
 * Must not: know about JSON, Lua or storage; allocate beyond growing the
 * caller's buffer.
 */
#include "utf8.h"

#include <string.h>

bool lr_utf8_valid(const char *s, size_t len) {
  const unsigned char *p = (const unsigned char *)s, *end = p + len;
  while (p < end) {
    while (end - p >= 8) { /* ASCII fast path, 8 bytes at a time */
      uint64_t w;
      memcpy(&w, p, 8);
      if (w & 0x8080808080808080ull) break;
      p += 8;
    }
    if (p == end) break;
    if (*p < 0x80) {
      p++;
      continue;
    }
    size_t k = lr_utf8_seq(p, (size_t)(end - p));
    if (!k) return false;
    p += k;
  }
  return true;
}

void lr_utf8_put(lr_buf *b, uint32_t cp) {
  char t[4];
  size_t n;
  if (cp < 0x80) {
    t[0] = (char)cp;
    n = 1;
  } else if (cp < 0x800) {
    t[0] = (char)(0xC0 | (cp >> 6));
    t[1] = (char)(0x80 | (cp & 0x3F));
    n = 2;
  } else if (cp < 0x10000) {
    t[0] = (char)(0xE0 | (cp >> 12));
    t[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    t[2] = (char)(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    t[0] = (char)(0xF0 | (cp >> 18));
    t[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    t[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    t[3] = (char)(0x80 | (cp & 0x3F));
    n = 4;
  }
  lr_buf_put(b, t, n);
}

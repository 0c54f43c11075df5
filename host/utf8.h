/*
 * utf8.h - the host's one UTF-8 validator and encoder (utf8.c).
 *
 * Owns: what well-formed UTF-8 is for the host (no overlong forms, no
 * surrogates U+D800..DFFF, nothing above U+10FFFF, no truncated sequence):
 * lr_utf8_seq, lr_utf8_valid, lr_utf8_put. JSON parsing (json.c), state
 * writes from Lua, party paths (router.c) and the storage checks and
 * snapshot loader (storage.c, storage_memory.c) all use these.
 * Must not: know about JSON, Lua or storage.
 */
#ifndef LR_UTF8_H
#define LR_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* Length of the well-formed UTF-8 sequence at s (n bytes available): 1 for
 * an ASCII byte, 2 to 4, or 0 if it is invalid (stray continuation byte,
 * overlong form, surrogate, above U+10FFFF, truncated, n == 0). Inline: the
 * JSON scanner calls it for every non-ASCII character. */
static inline size_t lr_utf8_seq(const unsigned char *s, size_t n) {
  if (n == 0) return 0;
  unsigned c = s[0], lo = 0x80, hi = 0xBF;
  if (c < 0x80) return 1;
  if (c < 0xC2) return 0;
  if (c < 0xE0) return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
  if (c < 0xF0) {
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
    return n >= 3 && s[1] >= lo && s[1] <= hi && (s[2] & 0xC0) == 0x80 ? 3 : 0;
  }
  if (c < 0xF5) {
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
    if (n < 4 || s[1] < lo || s[1] > hi) return 0;
    return (s[2] & 0xC0) == 0x80 && (s[3] & 0xC0) == 0x80 ? 4 : 0;
  }
  return 0;
}

/* True if s[0..len) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
bool lr_utf8_valid(const char *s, size_t len);

/* Append the UTF-8 encoding of code point cp (< 0x110000, not a surrogate:
 * the caller checks). */
void lr_utf8_put(lr_buf *b, uint32_t cp);

#endif

/*
 * test_utf8.c - unit tests of utf8.c: lr_utf8_seq against a reference
 * decoder written from the Unicode definition (every 1-3 byte sequence, the
 * 4-byte ones around each boundary), truncation, and lr_utf8_put round trips.
 * Must not: depend on any host module but utf8 and buf.
 */
#include <stdint.h>

#include "test.h"
#include "utf8.h"

/* The definition: the length from the lead byte's bits, continuation bytes
 * 10xxxxxx, then no overlong form, no surrogate, nothing above U+10FFFF. */
static size_t ref_seq(const unsigned char *s, size_t n) {
  if (n == 0) return 0;
  unsigned c = s[0];
  size_t len = c < 0x80             ? 1
               : (c & 0xE0) == 0xC0 ? 2
               : (c & 0xF0) == 0xE0 ? 3
               : (c & 0xF8) == 0xF0 ? 4
                                    : 0;
  if (len <= 1) return len;
  if (n < len) return 0;
  uint32_t cp = c & (0x7F >> len);
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = cp << 6 | (s[i] & 0x3F);
  }
  static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min[len] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return 0;
  return len;
}

TEST(utf8_seq_matches_the_definition) {
  unsigned char s[4];
  for (unsigned a = 0; a < 256; a++)
    for (unsigned b = 0; b < 256; b++)
      for (unsigned c = 0; c < 256; c++) {
        s[0] = (unsigned char)a, s[1] = (unsigned char)b, s[2] = (unsigned char)c;
        for (size_t n = 1; n <= 3; n++)
          if (lr_utf8_seq(s, n) != ref_seq(s, n))
            LR_TEST_FAIL("%02x %02x %02x (n=%zu): %zu, the definition says %zu", a, b, c, n,
                         lr_utf8_seq(s, n), ref_seq(s, n));
      }
  static const unsigned char edge[] = {0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF};
  for (unsigned a = 0xF0; a < 0x100; a++)
    for (unsigned b = 0; b < 256; b++)
      for (size_t i = 0; i < sizeof edge; i++)
        for (size_t j = 0; j < sizeof edge; j++) {
          s[0] = (unsigned char)a, s[1] = (unsigned char)b, s[2] = edge[i], s[3] = edge[j];
          ASSERT_EQ_INT(lr_utf8_seq(s, 4), ref_seq(s, 4));
          ASSERT_EQ_INT(lr_utf8_seq(s, 3), 0); /* a 4-byte lead never fits in 3 */
        }
  ASSERT_EQ_INT(lr_utf8_seq(s, 0), 0);
}

TEST(utf8_put_round_trips) {
  static const uint32_t cps[] = {0,      0x41,   0x7F,   0x80,    0x7FF,   0x800,
                                 0xD7FF, 0xE000, 0xFFFF, 0x10000, 0x1F600, 0x10FFFF};
  for (size_t i = 0; i < sizeof cps / sizeof *cps; i++) {
    lr_buf b;
    lr_buf_init(&b);
    lr_utf8_put(&b, cps[i]);
    size_t want = cps[i] < 0x80 ? 1 : cps[i] < 0x800 ? 2 : cps[i] < 0x10000 ? 3 : 4;
    ASSERT_EQ_INT(b.len, want);
    ASSERT_EQ_INT(lr_utf8_seq((const unsigned char *)b.data, b.len), want);
    ASSERT(lr_utf8_valid(b.data, b.len));
    lr_buf_free(&b);
  }
}

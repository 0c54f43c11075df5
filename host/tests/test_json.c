/*
 * test_json.c - unit tests of json.c (parser limits and errors, UTF-8,
 * number formatting, string escapes, skip flags) and of buf.c.
 * Must not: test dirty tracking and patches (test_value.c does).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#include "json.h"
#include "test.h"

typedef struct {
  char s[2048];
} text;

/* Decode then re-encode; "ERR <message>" when decoding fails. */
static text rt_lim(const char *in, size_t len, const lr_json_limits *lim) {
  text t;
  char err[256];
  lr_node *n = lr_json_decode(in, len, lim, err, sizeof err);
  if (!n) {
    snprintf(t.s, sizeof t.s, "ERR %s", err);
    return t;
  }
  lr_buf b;
  lr_buf_init(&b);
  lr_json_encode(n, 0, &b);
  snprintf(t.s, sizeof t.s, "%s", lr_buf_cstr(&b));
  lr_buf_free(&b);
  lr_node_release(n);
  return t;
}
static text rt(const char *in) {
  return rt_lim(in, strlen(in), NULL);
}
#define RT(in) rt(in).s

static text dbl(double f) {
  text t;
  lr_buf b;
  lr_buf_init(&b);
  lr_json_put_double(&b, f);
  snprintf(t.s, sizeof t.s, "%s", lr_buf_cstr(&b));
  lr_buf_free(&b);
  return t;
}
#define DBL(f) dbl(f).s

static lr_node *dec(const char *s) {
  return lr_json_decode(s, strlen(s), NULL, NULL, 0);
}

/* True if decoding fails and the message starts with prefix. */
static bool fails_with(const char *in, size_t len, const char *prefix) {
  char err[256] = "unset";
  lr_node *n = lr_json_decode(in, len, NULL, err, sizeof err);
  if (n) {
    lr_node_release(n);
    fprintf(stderr, "    decoded unexpectedly: %.*s\n", (int)len, in);
    return false;
  }
  if (strncmp(err, prefix, strlen(prefix)) != 0) {
    fprintf(stderr, "    error was: %s\n", err);
    return false;
  }
  return true;
}
#define FAILS(in, prefix) fails_with(in, sizeof(in) - 1, prefix)

/* ---- numbers ---- */

TEST(json_int_decodes_as_int) {
  lr_node *n = dec("3");
  ASSERT(n);
  ASSERT_EQ_INT(n->type, LR_INT);
  ASSERT_EQ_INT(n->u.i, 3);
  lr_node_release(n);
  n = dec("-42");
  ASSERT(n && n->type == LR_INT && n->u.i == -42);
  lr_node_release(n);
  n = dec("3.0");
  ASSERT(n && n->type == LR_FLOAT && n->u.f == 3.0);
  lr_node_release(n);
  n = dec("3e0");
  ASSERT(n && n->type == LR_FLOAT);
  lr_node_release(n);
  ASSERT_EQ_STR(RT("3.0"), "3");
  ASSERT_EQ_STR(RT("-0"), "0");
  ASSERT_EQ_STR(RT("-0.0"), "0");
}

static lr_node *dec_exact(const char *s) {
  return lr_json_decode_exact(s, strlen(s), NULL, NULL, 0);
}
static text rt_exact(const char *in) {
  text t;
  lr_node *n = dec_exact(in);
  lr_buf b;
  lr_buf_init(&b);
  if (n) lr_json_encode(n, 0, &b);
  snprintf(t.s, sizeof t.s, "%s", n ? lr_buf_cstr(&b) : "ERR");
  lr_buf_free(&b);
  lr_node_release(n);
  return t;
}

/* Storage text (lr_json_decode_exact): every int64 stays an integer. */
TEST(json_int64_limits) {
  lr_node *n = dec_exact("9223372036854775807");
  ASSERT(n && n->type == LR_INT && n->u.i == INT64_MAX);
  lr_node_release(n);
  n = dec_exact("-9223372036854775808");
  ASSERT(n && n->type == LR_INT && n->u.i == INT64_MIN);
  lr_node_release(n);
  n = dec_exact("9007199254740993");
  ASSERT(n && n->type == LR_INT && n->u.i == 9007199254740993LL);
  lr_node_release(n);
  ASSERT_EQ_STR(rt_exact("9223372036854775807").s, "9223372036854775807");
  ASSERT_EQ_STR(rt_exact("-9223372036854775808").s, "-9223372036854775808");
  n = dec_exact("9223372036854775808");
  ASSERT(n && n->type == LR_FLOAT && n->u.f == 9223372036854775808.0);
  lr_node_release(n);
}

/* The wire (default): integers beyond +-2^53 are doubles, as JSON.parse
 * makes them, so 2^63-1 is 2^63 and adding 1 cannot wrap it negative. */
TEST(json_wire_integers_like_javascript) {
  lr_node *n = dec("9007199254740992");
  ASSERT(n && n->type == LR_INT && n->u.i == 9007199254740992LL);
  lr_node_release(n);
  n = dec("-9007199254740992");
  ASSERT(n && n->type == LR_INT && n->u.i == -9007199254740992LL);
  lr_node_release(n);
  n = dec("9007199254740993");
  ASSERT(n && n->type == LR_FLOAT && n->u.f == 9007199254740992.0);
  lr_node_release(n);
  n = dec("-9007199254740993");
  ASSERT(n && n->type == LR_FLOAT && n->u.f == -9007199254740992.0);
  lr_node_release(n);
  n = dec("9223372036854775807");
  ASSERT(n && n->type == LR_FLOAT && n->u.f == 9223372036854775808.0);
  lr_node_release(n);
  n = dec("-9223372036854775808");
  ASSERT(n && n->type == LR_FLOAT && n->u.f == -9223372036854775808.0);
  lr_node_release(n);
  ASSERT_EQ_STR(RT("9223372036854775807"), "9223372036854776000");
  ASSERT_EQ_STR(RT("-9223372036854775808"), "-9223372036854776000");
  ASSERT_EQ_STR(RT("9007199254740993"), "9007199254740992");
  /* one past either end: float, printed like JavaScript would */
  n = dec("9223372036854775808");
  ASSERT(n && n->type == LR_FLOAT && n->u.f == 9223372036854775808.0);
  lr_node_release(n);
  n = dec("-9223372036854775809");
  ASSERT(n && n->type == LR_FLOAT && n->u.f == -9223372036854775808.0);
  lr_node_release(n);
  n = dec("123456789012345678901234567890");
  ASSERT(n && n->type == LR_FLOAT);
  lr_node_release(n);
  ASSERT_EQ_STR(RT("9223372036854775808"), "9223372036854776000");
  ASSERT_EQ_STR(RT("123456789012345678901234567890"), "1.2345678901234568e+29");
}

TEST(json_double_format_like_javascript) {
  ASSERT_EQ_STR(DBL(0.1 + 0.2), "0.30000000000000004");
  ASSERT_EQ_STR(DBL(0.1), "0.1");
  ASSERT_EQ_STR(DBL(9007199254740992.0), "9007199254740992");
  ASSERT_EQ_STR(DBL(-9007199254740992.0), "-9007199254740992");
  ASSERT_EQ_STR(DBL(9007199254740994.0), "9007199254740994");
  ASSERT_EQ_STR(DBL(18446744073709551616.0), "18446744073709552000");
  ASSERT_EQ_STR(DBL(1e20), "100000000000000000000");
  ASSERT_EQ_STR(DBL(1e21), "1e+21");
  ASSERT_EQ_STR(DBL(1.5e21), "1.5e+21");
  ASSERT_EQ_STR(DBL(1e300), "1e+300");
  ASSERT_EQ_STR(DBL(1e-7), "1e-7");
  ASSERT_EQ_STR(DBL(1.5e-7), "1.5e-7");
  ASSERT_EQ_STR(DBL(0.000001), "0.000001");
  ASSERT_EQ_STR(DBL(0.00000123), "0.00000123");
  ASSERT_EQ_STR(DBL(123.456), "123.456");
  ASSERT_EQ_STR(DBL(-1.5), "-1.5");
  ASSERT_EQ_STR(DBL(3.0), "3");
  ASSERT_EQ_STR(DBL(-0.0), "0");
  ASSERT_EQ_STR(DBL(5e-324), "5e-324");
  ASSERT_EQ_STR(DBL(1.7976931348623157e308), "1.7976931348623157e+308");
  ASSERT_EQ_STR(DBL(2.2250738585072014e-308), "2.2250738585072014e-308");
  ASSERT_EQ_STR(DBL(1.0 / 3.0), "0.3333333333333333");
  ASSERT_EQ_STR(DBL(100.0 / 3.0), "33.333333333333336");
  ASSERT_EQ_STR(DBL(NAN), "null");
  ASSERT_EQ_STR(DBL(INFINITY), "null");
  ASSERT_EQ_STR(DBL(-INFINITY), "null");
}

TEST(json_double_decode_roundtrip) {
  ASSERT_EQ_STR(RT("1e300"), "1e+300");
  ASSERT_EQ_STR(RT("0.30000000000000004"), "0.30000000000000004");
  ASSERT_EQ_STR(RT("9007199254740992.0"), "9007199254740992");
  ASSERT_EQ_STR(RT("1E-7"), "1e-7");
  ASSERT_EQ_STR(RT("2.5e+3"), "2500");
  ASSERT_EQ_STR(RT("[1e400,-1e400]"), "[null,null]");
  lr_node *n = dec("1e300");
  ASSERT(n && n->type == LR_FLOAT && n->u.f == 1e300);
  lr_node_release(n);
  /* a long mantissa goes through the heap copy */
  char big[400];
  memset(big, '1', 300);
  strcpy(big + 300, ".5");
  n = dec(big);
  ASSERT(n && n->type == LR_FLOAT && n->u.f > 1.1e299 && n->u.f < 1.12e299);
  lr_node_release(n);
}

/* The printf search json.c falls back on, as the reference for its fast
 * paths: the shortest "%.*e" that strtod reads back as x. */
static void ref_digits(double x, char *out, size_t n) {
  for (int prec = 1;; prec++) {
    snprintf(out, n, "%.*e", prec - 1, x);
    if (prec >= 17 || strtod(out, NULL) == x) return;
  }
}

/* The fast paths (few decimals: no printf to encode, no strtod to decode)
 * give what the slow ones give: the same shortest digits, and the same
 * double as strtod, over values near the decimal ones rooms send and random
 * bit patterns. */
TEST(json_double_fast_paths_match_printf_and_strtod) {
  uint64_t seed = 88172645463325252ull;
  for (int i = 0; i < 200000; i++) {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    double x;
    int kind = i % 4;
    if (kind == 0) { /* a decimal with up to 9 places */
      int p = (int)(seed % 10);
      double m = (double)(seed >> 20 & ((1ull << (10 + 4 * (i % 8))) - 1));
      x = m / pow(10, p);
    } else if (kind == 1) { /* one ulp off such a decimal */
      x = nextafter((double)(seed >> 30) / 1000.0, (seed & 1) ? 1e300 : 0);
    } else if (kind == 2) { /* any finite positive double */
      uint64_t b = seed & 0x7fefffffffffffffull;
      memcpy(&x, &b, sizeof x);
    } else {
      x = (double)(seed >> 11) / (double)(1ull << 53) * pow(10, (int)(seed % 20) - 8);
    }
    if (!(x > 0) || !isfinite(x)) continue;
    /* encode: the digits and exponent json.c prints match the reference */
    lr_node *n = lr_node_float(x);
    lr_buf b;
    lr_buf_init(&b);
    lr_json_encode(n, 0, &b);
    lr_node_release(n);
    const char *t = lr_buf_cstr(&b);
    if (strtod(t, NULL) != x) {
      fprintf(stderr, "encode %.17g -> %s does not read back\n", x, t);
      ASSERT(0);
    }
    /* the same significant digits as the reference's (so the same text) */
    char ref[48], dref[24], dgot[24];
    ref_digits(x, ref, sizeof ref);
    size_t nr = 0, ng = 0;
    for (const char *q = ref; *q && *q != 'e'; q++)
      if (*q >= '0' && *q <= '9') dref[nr++] = *q;
    while (nr > 1 && dref[nr - 1] == '0')
      nr--;
    for (const char *q = t; *q && *q != 'e' && ng < sizeof dgot; q++)
      if ((*q >= '1' && *q <= '9') || (*q == '0' && ng)) dgot[ng++] = *q;
    while (ng > 1 && dgot[ng - 1] == '0')
      ng--;
    if (nr != ng || memcmp(dref, dgot, nr)) {
      fprintf(stderr, "encode %.17g -> %s, reference %s\n", x, t, ref);
      ASSERT(0);
    }
    /* decode: the text reads as strtod reads it */
    char err[128];
    lr_node *d = lr_json_decode(t, strlen(t), NULL, err, sizeof err);
    ASSERT(d);
    double dv = d->type == LR_FLOAT ? d->u.f : (double)d->u.i;
    lr_node_release(d);
    ASSERT(dv == strtod(t, NULL));
    lr_buf_free(&b);
  }
  /* decode of texts the fast path takes and the ones it must not */
  const char *texts[] = {"0.1",
                         "123.456",
                         "-0.5",
                         "1.7976931348623157",
                         "9007199254740993.5",
                         "0.30000000000000004",
                         "1e22",
                         "1e23",
                         "12345678901234567.5e-3",
                         "4.35e-7",
                         "1E+5",
                         "2.2250738585072011e-308",
                         "999999999999999.9"};
  for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
    char err[128];
    lr_node *d = lr_json_decode(texts[i], strlen(texts[i]), NULL, err, sizeof err);
    ASSERT(d);
    double dv = d->type == LR_FLOAT ? d->u.f : (double)d->u.i;
    lr_node_release(d);
    if (dv != strtod(texts[i], NULL)) fprintf(stderr, "decode %s: %.17g\n", texts[i], dv);
    ASSERT(dv == strtod(texts[i], NULL));
  }
}

TEST(json_int_encode) {
  lr_buf b;
  lr_buf_init(&b);
  lr_node *n = lr_node_int(INT64_MIN);
  lr_json_encode(n, 0, &b);
  lr_node_release(n);
  ASSERT_EQ_STR(lr_buf_cstr(&b), "-9223372036854775808");
  lr_buf_reset(&b);
  n = lr_node_int(0);
  lr_json_encode(n, 0, &b);
  lr_node_release(n);
  ASSERT_EQ_STR(lr_buf_cstr(&b), "0");
  lr_buf_free(&b);
}

TEST(json_invalid_numbers) {
  ASSERT(FAILS("01", "invalid JSON at offset 1: trailing characters"));
  ASSERT(FAILS("-", "invalid JSON at offset 0: invalid number"));
  ASSERT(FAILS("1.", "invalid JSON at offset 0: invalid number"));
  ASSERT(FAILS(".5", "invalid JSON at offset 0: unexpected character"));
  ASSERT(FAILS("+1", "invalid JSON at offset 0: unexpected character"));
  ASSERT(FAILS("1e", "invalid JSON at offset 0: invalid number"));
  ASSERT(FAILS("1e+", "invalid JSON at offset 0: invalid number"));
  ASSERT(FAILS("-01", "invalid JSON at offset 2: trailing characters"));
  ASSERT(FAILS("0x10", "invalid JSON at offset 1: trailing characters"));
  ASSERT(FAILS("NaN", "invalid JSON at offset 0: unexpected character"));
  ASSERT(FAILS("Infinity", "invalid JSON at offset 0"));
  ASSERT(FAILS("-Infinity", "invalid JSON at offset 0: invalid number"));
}

/* ---- strings ---- */

TEST(json_string_escapes) {
  ASSERT_EQ_STR(RT("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\""), "\"a\\\"b\\\\c/d\\b\\f\\n\\r\\t\"");
  ASSERT_EQ_STR(RT("\"\\u00e9\\u20AC\""), "\"\xc3\xa9\xe2\x82\xac\"");
  ASSERT_EQ_STR(RT("\"\\u0001\\u001F\\u007f\""), "\"\\u0001\\u001f\x7f\"");
  ASSERT_EQ_STR(RT("\"\xc3\xa9\xf0\x9f\x98\x80\""), "\"\xc3\xa9\xf0\x9f\x98\x80\"");
  ASSERT_EQ_STR(RT("\"\""), "\"\"");
  /* escapes after plain text and plain text after escapes */
  ASSERT_EQ_STR(RT("\"abc\\ndef\\tg\xc3\xa9h\""), "\"abc\\ndef\\tg\xc3\xa9h\"");
  lr_node *n = dec("\"x\\u0000y\"");
  ASSERT(n && n->type == LR_STRING);
  ASSERT_EQ_INT(lr_strlen(n), 3);
  ASSERT(memcmp(lr_str(n), "x\0y", 3) == 0);
  lr_buf b;
  lr_buf_init(&b);
  lr_json_encode(n, 0, &b);
  lr_node_release(n);
  ASSERT_EQ_STR(lr_buf_cstr(&b), "\"x\\u0000y\"");
  lr_buf_free(&b);
}

TEST(json_surrogate_pairs) {
  ASSERT_EQ_STR(RT("\"\\ud83d\\ude00\""), "\"\xf0\x9f\x98\x80\"");
  ASSERT_EQ_STR(RT("\"\\uD834\\uDD1E!\""), "\"\xf0\x9d\x84\x9e!\"");
  ASSERT_EQ_STR(RT("\"\\udbff\\udfff\""), "\"\xf4\x8f\xbf\xbf\"");
  ASSERT(FAILS("\"\\ud800\"", "invalid JSON at offset 1: lone surrogate"));
  ASSERT(FAILS("\"\\ud800x\"", "invalid JSON at offset 1: lone surrogate"));
  ASSERT(FAILS("\"\\ud800\\u0041\"", "invalid JSON at offset 1: lone surrogate"));
  ASSERT(FAILS("\"\\ud800\\ud800\"", "invalid JSON at offset 1: lone surrogate"));
  ASSERT(FAILS("\"\\udc00\"", "invalid JSON at offset 1: lone surrogate"));
  ASSERT(FAILS("\"\\ud800\\u", "invalid JSON at offset 1: lone surrogate"));
}

TEST(json_invalid_strings) {
  ASSERT(FAILS("\"abc", "invalid JSON at offset 0: unterminated string"));
  ASSERT(FAILS("\"ab\\", "invalid JSON at offset 0: unterminated string"));
  ASSERT(FAILS("\"a\\nb", "invalid JSON at offset 0: unterminated string"));
  ASSERT(FAILS("\"a\x01\"", "invalid JSON at offset 2: control character in string"));
  ASSERT(FAILS("\"a\nb\"", "invalid JSON at offset 2: control character in string"));
  ASSERT(FAILS("\"\\x\"", "invalid JSON at offset 1: invalid escape"));
  ASSERT(FAILS("\"\\u12\"", "invalid JSON at offset 1: invalid \\u escape"));
  ASSERT(FAILS("\"\\u12g4\"", "invalid JSON at offset 1: invalid \\u escape"));
  ASSERT(FAILS("\"\\u12", "invalid JSON at offset 1: invalid \\u escape"));
  ASSERT(FAILS("'a'", "invalid JSON at offset 0: unexpected character"));
}

TEST(json_invalid_utf8) {
  ASSERT(FAILS("\"ab\xff\"", "invalid UTF-8 at offset 3"));
  ASSERT(FAILS("\"\xc0\xaf\"", "invalid UTF-8 at offset 1"));         /* overlong '/' */
  ASSERT(FAILS("\"\xc1\xbf\"", "invalid UTF-8 at offset 1"));         /* overlong */
  ASSERT(FAILS("\"\xe0\x80\xaf\"", "invalid UTF-8 at offset 1"));     /* overlong 3 */
  ASSERT(FAILS("\"\xf0\x80\x80\xaf\"", "invalid UTF-8 at offset 1")); /* overlong 4 */
  ASSERT(FAILS("\"\xed\xa0\x80\"", "invalid UTF-8 at offset 1"));     /* raw U+D800 */
  ASSERT(FAILS("\"\xed\xbf\xbf\"", "invalid UTF-8 at offset 1"));     /* raw U+DFFF */
  ASSERT(FAILS("\"\xf4\x90\x80\x80\"", "invalid UTF-8 at offset 1")); /* > U+10FFFF */
  ASSERT(FAILS("\"\xf5\x80\x80\x80\"", "invalid UTF-8 at offset 1")); /* bad lead */
  ASSERT(FAILS("\"a\x80\"", "invalid UTF-8 at offset 2"));            /* stray continuation */
  ASSERT(FAILS("\"\xe2\x82\"", "invalid UTF-8 at offset 1"));         /* truncated 3 */
  ASSERT(FAILS("\"\xf0\x9f\x98\"", "invalid UTF-8 at offset 1"));     /* truncated 4 */
  ASSERT(FAILS("\"\xe2\x82", "invalid UTF-8 at offset 1"));           /* truncated at end */
  ASSERT(FAILS("\"\\n\xe2\x28\xa1\"", "invalid UTF-8 at offset 3"));  /* after an escape */
  ASSERT(FAILS("{\"k\xff\":1}", "invalid UTF-8 at offset 3"));        /* in a key */
  /* boundaries that are valid */
  ASSERT_EQ_STR(RT("\"\xed\x9f\xbf\xee\x80\x80\xf4\x8f\xbf\xbf\xc2\x80\""),
                "\"\xed\x9f\xbf\xee\x80\x80\xf4\x8f\xbf\xbf\xc2\x80\"");
}

TEST(json_utf8_valid) {
  ASSERT(lr_utf8_valid("", 0));
  ASSERT(lr_utf8_valid("plain ascii text, longer than eight", 35));
  ASSERT(lr_utf8_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9));
  ASSERT(lr_utf8_valid("a\0b", 3));
  ASSERT(!lr_utf8_valid("\xc0\x80", 2));
  ASSERT(!lr_utf8_valid("\xed\xa0\x80", 3));
  ASSERT(!lr_utf8_valid("\xf4\x90\x80\x80", 4));
  ASSERT(!lr_utf8_valid("0123456789abcdef\xe2\x82", 18)); /* truncated after the fast path */
  ASSERT(!lr_utf8_valid("0123456789abcdef\x80", 17));
  ASSERT(!lr_utf8_valid("\xff", 1));
}

/* ---- structure, limits, errors ---- */

TEST(json_structures) {
  ASSERT_EQ_STR(RT(" \t\r\n{ \"b\" : [ 1 , true , false , null , {} , [] ] , \"a\" : \"x\" } \n"),
                "{\"b\":[1,true,false,null,{},[]],\"a\":\"x\"}");
  ASSERT_EQ_STR(RT("{\"a\":1,\"b\":2,\"a\":3}"), "{\"a\":3,\"b\":2}"); /* last value wins */
  ASSERT_EQ_STR(RT("[[],[[]],{\"\":{}}]"), "[[],[[]],{\"\":{}}]");
  ASSERT_EQ_STR(RT("{\"a\\u0062\":1}"), "{\"ab\":1}");
  ASSERT_EQ_STR(RT("\"str\""), "\"str\"");
  ASSERT_EQ_STR(RT("null"), "null");
  lr_node *n = dec("{\"z\":1,\"y\":{\"x\":[1,2]}}");
  ASSERT(n && n->type == LR_OBJECT && n->refs == 1 && n->parent == NULL);
  lr_node *y = lr_obj_get(n, "y", 1);
  ASSERT(y && y->parent == n && lr_obj_get(y, "x", 1)->u.arr.len == 2);
  lr_node_release(n);
}

TEST(json_syntax_errors) {
  ASSERT(FAILS("{\"a\" 1}", "invalid JSON at offset 5: expected ':'"));
  ASSERT(FAILS("[1,]", "invalid JSON at offset 3: unexpected character"));
  ASSERT(FAILS("{\"a\":1,}", "invalid JSON at offset 7: expected string key"));
  ASSERT(FAILS("{1:2}", "invalid JSON at offset 1: expected string key"));
  ASSERT(FAILS("[1 2]", "invalid JSON at offset 3: expected ',' or ']'"));
  ASSERT(FAILS("{\"a\":1 \"b\":2}", "invalid JSON at offset 7: expected ',' or '}'"));
  ASSERT(FAILS("[1", "invalid JSON at offset 2: unexpected end of input"));
  ASSERT(FAILS("{\"a\":", "invalid JSON at offset 5: unexpected end of input"));
  ASSERT(FAILS("[1}", "invalid JSON at offset 2: expected ',' or ']'"));
  ASSERT(FAILS("tru", "invalid JSON at offset 0: unexpected character"));
  ASSERT(FAILS("nul", "invalid JSON at offset 0: unexpected character"));
  ASSERT(FAILS("{\"a\\u0000\":1}", "invalid JSON at offset 1: NUL character in object key"));
}

TEST(json_empty_and_trailing) {
  ASSERT(FAILS("", "invalid JSON at offset 0: unexpected end of input"));
  ASSERT(FAILS("   \n", "invalid JSON at offset 4: unexpected end of input"));
  ASSERT(lr_json_decode(NULL, 0, NULL, NULL, 0) == NULL);
  ASSERT(FAILS("1 2", "invalid JSON at offset 2: trailing characters"));
  ASSERT(FAILS("{} x", "invalid JSON at offset 3: trailing characters"));
  ASSERT(FAILS("[1]]", "invalid JSON at offset 3: trailing characters"));
  ASSERT(FAILS("nullx", "invalid JSON at offset 4: trailing characters"));
  ASSERT(FAILS("{}\0", "invalid JSON at offset 2: trailing characters"));
  /* only len bytes are read: a valid prefix of a longer buffer */
  ASSERT_EQ_STR(rt_lim("[1,2]garbage", 5, NULL).s, "[1,2]");
}

static char *nested(int levels, const char *open, const char *close) {
  size_t ol = strlen(open), cl = strlen(close);
  char *s = malloc((size_t)levels * (ol + cl) + 2), *p = s;
  for (int i = 0; i < levels; i++, p += ol)
    memcpy(p, open, ol);
  *p++ = '1';
  for (int i = 0; i < levels; i++, p += cl)
    memcpy(p, close, cl);
  *p = '\0';
  return s;
}

TEST(json_depth_limit) {
  char *ok = nested(64, "[", "]"), *bad = nested(65, "[", "]");
  char *okobj = nested(64, "{\"a\":", "}"), *badobj = nested(65, "{\"a\":", "}");
  text a = rt(ok), b = rt(bad), c = rt(okobj), d = rt(badobj);
  ASSERT_EQ_STR(a.s, ok);
  ASSERT_EQ_STR(b.s, "ERR JSON nested deeper than 64");
  ASSERT_EQ_STR(c.s, okobj);
  ASSERT_EQ_STR(d.s, "ERR JSON nested deeper than 64");
  free(ok);
  free(bad);
  free(okobj);
  free(badobj);
  lr_json_limits lim = {2, 100};
  ASSERT_EQ_STR(rt_lim("[[1]]", 5, &lim).s, "[[1]]");
  ASSERT_EQ_STR(rt_lim("[[[1]]]", 7, &lim).s, "ERR JSON nested deeper than 2");
  /* a raised limit is honoured (the parser itself keeps no C stack per level) */
  char *deep = nested(5000, "[", "]");
  lr_json_limits big = {5000, 10000};
  lr_node *n = lr_json_decode(deep, strlen(deep), &big, NULL, 0);
  free(deep);
  ASSERT(n && n->type == LR_ARRAY);
  lr_node_release(n);
}

TEST(json_element_limit) {
  lr_json_limits lim = {64, 3};
  ASSERT_EQ_STR(rt_lim("[1,2]", 5, &lim).s, "[1,2]");
  ASSERT_EQ_STR(rt_lim("[1,2,3]", 7, &lim).s, "ERR JSON has more than 3 elements");
  ASSERT_EQ_STR(rt_lim("{\"a\":{\"b\":1}}", 13, &lim).s, "{\"a\":{\"b\":1}}");
  ASSERT_EQ_STR(rt_lim("{\"a\":{\"b\":[]}}", 14, &lim).s, "{\"a\":{\"b\":[]}}");
  ASSERT_EQ_STR(rt_lim("{\"a\":{\"b\":[1]}}", 15, &lim).s, "ERR JSON has more than 3 elements");
  /* default: 100000 values */
  size_t n = 99999;
  char *s = malloc(n * 2 + 2);
  s[0] = '[';
  for (size_t i = 0; i < n; i++) {
    s[1 + 2 * i] = '0';
    s[2 + 2 * i] = ',';
  }
  s[n * 2] = ']';
  s[n * 2 + 1] = '\0';
  lr_node *v = dec(s); /* 1 array + 99999 zeros */
  ASSERT(v && v->u.arr.len == 99999);
  lr_node_release(v);
  s = realloc(s, n * 2 + 4);
  memcpy(s + n * 2, ",0]", 4); /* one more */
  bool refused = fails_with(s, strlen(s), "JSON has more than 100000 elements");
  free(s);
  ASSERT(refused);
}

/* ---- encoding ---- */

TEST(json_encode_skip_flags) {
  lr_node *n = dec("{\"pub\":1,\"sec\":2,\"deep\":{\"a\":1,\"hid\":{\"x\":1}},\"arr\":[{\"h\":1}],"
                   "\"nop\":3}");
  ASSERT(n);
  lr_obj_get(n, "sec", 3)->flags = LR_F_NOSYNC;
  lr_obj_get(lr_obj_get(n, "deep", 4), "hid", 3)->flags = LR_F_NOSYNC;
  lr_obj_get(lr_obj_get(n, "arr", 3)->u.arr.items[0], "h", 1)->flags = LR_F_NOSYNC;
  lr_obj_get(n, "nop", 3)->flags = LR_F_NOPERSIST;
  lr_buf b;
  lr_buf_init(&b);
  lr_json_encode(n, 0, &b);
  ASSERT_EQ_STR(lr_buf_cstr(&b), "{\"pub\":1,\"sec\":2,\"deep\":{\"a\":1,\"hid\":{\"x\":1}},"
                                 "\"arr\":[{\"h\":1}],\"nop\":3}");
  lr_buf_reset(&b);
  lr_json_encode(n, LR_F_NOSYNC, &b);
  ASSERT_EQ_STR(lr_buf_cstr(&b), "{\"pub\":1,\"deep\":{\"a\":1},\"arr\":[{}],\"nop\":3}");
  lr_buf_reset(&b);
  lr_json_encode(n, LR_F_NOPERSIST, &b);
  ASSERT_EQ_STR(lr_buf_cstr(&b), "{\"pub\":1,\"sec\":2,\"deep\":{\"a\":1,\"hid\":{\"x\":1}},"
                                 "\"arr\":[{\"h\":1}]}");
  /* the node itself is always written */
  lr_buf_reset(&b);
  lr_json_encode(lr_obj_get(n, "sec", 3), LR_F_NOSYNC, &b);
  ASSERT_EQ_STR(lr_buf_cstr(&b), "2");
  lr_buf_free(&b);
  lr_node_release(n);
}

TEST(json_put_string_escapes_and_appends) {
  lr_buf b;
  lr_buf_init(&b);
  lr_buf_puts(&b, "x=");
  lr_json_put_string(&b, "q\"b\\s\x1f\x7f\xc3\xa9", 9);
  ASSERT_EQ_STR(lr_buf_cstr(&b), "x=\"q\\\"b\\\\s\\u001f\x7f\xc3\xa9\"");
  lr_buf_free(&b);
}

/* ---- buf.c ---- */

TEST(buf_grow_printf_cstr) {
  lr_buf b;
  lr_buf_init(&b);
  ASSERT_EQ_STR(lr_buf_cstr(&b), "");
  for (int i = 0; i < 1000; i++)
    lr_buf_printf(&b, "%d,", i % 10);
  ASSERT_EQ_INT(b.len, 2000);
  ASSERT(b.data[b.len] == '\0');
  ASSERT(memcmp(b.data + 1990, "5,6,7,8,9,", 10) == 0);
  lr_buf_reset(&b);
  lr_buf_putc(&b, 'a');
  lr_buf_put(&b, "bc", 2);
  lr_buf_printf(&b, "%s-%05d", "long enough to need more than the spare room", 42);
  ASSERT_EQ_STR(lr_buf_cstr(&b), "abclong enough to need more than the spare room-00042");
  lr_buf_free(&b);
  ASSERT(b.data == NULL && b.len == 0 && b.cap == 0);
}

TEST(buf_msg_refcount) {
  lr_msg *m = lr_msg_new("{\"type\":\"sync\"}", 15);
  ASSERT_EQ_INT(m->refs, 1);
  ASSERT_EQ_INT(m->len, 15);
  ASSERT_EQ_STR(lr_msg_payload(m), "{\"type\":\"sync\"}");
  ASSERT(lr_msg_payload(m) == (const char *)m->data + LR_MSG_PRE);
  ASSERT(lr_msg_retain(m) == m);
  ASSERT_EQ_INT(m->refs, 2);
  lr_msg_release(m);
  ASSERT_EQ_INT(m->refs, 1);
  lr_msg_release(m);
  lr_msg_release(NULL);
  lr_msg *e = lr_msg_new(NULL, 0);
  ASSERT_EQ_STR(lr_msg_payload(e), "");
  lr_msg_release(e);
}

/* The one string scanner: the parser, storage.c's value check and the memory
 * snapshot loader call it in its three modes. */
TEST(json_scan_string_modes) {
  const char *why = NULL, *out = NULL;
  size_t at = 0, n = 0, pos;
  lr_buf scratch;
  lr_buf_init(&scratch);
  const char *plain = "x\"abc\"y";
  pos = 1; /* no escape: *out points into the text */
  ASSERT_EQ_INT(lr_json_scan_string(plain, 7, &pos, 0, &scratch, &out, &n, &why, &at), 0);
  ASSERT_EQ_INT(pos, 6);
  ASSERT(out == plain + 2 && n == 3);
  const char *esc = "\"a\\n\\u00e9\\ud83d\\ude00b\"";
  size_t len = strlen(esc);
  pos = 0; /* escapes: the unescaped text in scratch */
  ASSERT_EQ_INT(lr_json_scan_string(esc, len, &pos, 0, &scratch, &out, &n, &why, &at), 0);
  ASSERT_EQ_INT(pos, len);
  ASSERT(out == scratch.data && n == 9 &&
         memcmp(out,
                "a\n\xc3\xa9\xf0\x9f\x98\x80"
                "b",
                9) == 0);
  pos = 0; /* validate only */
  ASSERT_EQ_INT(lr_json_scan_string(esc, len, &pos, 0, NULL, NULL, NULL, &why, &at), 0);
  ASSERT_EQ_INT(pos, len);
  /* Faults: the message and the offset. */
  pos = 0;
  ASSERT_EQ_INT(lr_json_scan_string("\"ab", 3, &pos, 0, NULL, NULL, NULL, &why, &at), -1);
  ASSERT_EQ_STR(why, "unterminated string");
  ASSERT_EQ_INT(at, 0);
  pos = 0;
  ASSERT_EQ_INT(lr_json_scan_string("\"a\xff\"", 4, &pos, 0, NULL, NULL, NULL, &why, &at), -1);
  ASSERT(why == lr_json_bad_utf8);
  ASSERT_EQ_INT(at, 2);
  pos = 0;
  ASSERT_EQ_INT(lr_json_scan_string("\"a\\q\"", 5, &pos, 0, &scratch, &out, &n, &why, &at), -1);
  ASSERT_EQ_STR(why, "invalid escape");
  ASSERT_EQ_INT(at, 2);
  /* A lone surrogate escape: refused, unless the caller stores what
   * JavaScript's JSON.stringify writes (storage values). */
  const char *lone = "\"\\ud800\"";
  pos = 0;
  ASSERT_EQ_INT(lr_json_scan_string(lone, 8, &pos, 0, NULL, NULL, NULL, &why, &at), -1);
  ASSERT_EQ_STR(why, "lone surrogate in \\u escape");
  pos = 0;
  ASSERT_EQ_INT(
      lr_json_scan_string(lone, 8, &pos, LR_JSON_SCAN_SURROGATES, NULL, NULL, NULL, &why, &at), 0);
  ASSERT_EQ_INT(pos, 8);
  lr_buf_free(&scratch);
}

/*
 * json.c - the host's JSON codec: a strict, bounded, UTF-8 validating parser
 * to lr_node; an encoder whose numbers match JavaScript's Number#toString; the
 * patch encoder and the persist walk over the dirty marks of value.h.
 *
 * Owns: JSON text <-> lr_node, number formatting, "$delete" emission.
 * Must not: know about Lua, rooms, sockets or storage backends; allocate on
 * the patch path beyond growing the caller's buffer; depend on the process
 * locale (numbers always use '.').
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strtod_l, newlocale */
#endif
#include "json.h"

#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The node flag that hides a subtree from each channel. */
static const uint8_t ch_excl[LR_NCH] = {LR_F_NOSYNC, LR_F_NOPERSIST};

/* ---------------------------------------------------------------------------
 * Output helpers
 *
 * The encoders append through these instead of the lr_buf_* calls: capacity
 * is checked inline and the NUL terminator is written once, by the public
 * entry points (w_end), not after every byte.
 */

static inline void w_reserve(lr_buf *b, size_t n) {
  if (b->cap - b->len <= n) lr_buf_reserve(b, n); /* leaves room for n + NUL */
}

static inline void w1(lr_buf *b, char c) {
  w_reserve(b, 1);
  b->data[b->len++] = c;
}

static inline void wn(lr_buf *b, const char *p, size_t n) {
  w_reserve(b, n);
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

static inline void w_end(lr_buf *b) {
  if (b->data) b->data[b->len] = '\0';
}

/* ---------------------------------------------------------------------------
 * Numbers
 */

/* strtod in the "C" locale whatever LC_NUMERIC the process runs with. */
static double c_strtod(const char *s) {
#ifdef __GLIBC__
  static locale_t c_locale;
  if (!c_locale) c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
  if (c_locale) return strtod_l(s, NULL, c_locale);
#endif
  return strtod(s, NULL);
}

/* Decimal digits two at a time, written backwards straight into the buffer. */
static void put_u64(lr_buf *out, bool neg, uint64_t v) {
  static const char pairs[201] = /* "00" .. "99" */
      "00010203040506070809101112131415161718192021222324"
      "25262728293031323334353637383940414243444546474849"
      "50515253545556575859606162636465666768697071727374"
      "75767778798081828384858687888990919293949596979899";
  size_t n = 1;
  for (uint64_t p = 10; n < 20 && v >= p; p *= 10)
    n++;
  n += neg;
  w_reserve(out, n);
  char *start = out->data + out->len, *d = start + n;
  out->len += n;
  while (v >= 100) {
    const char *two = pairs + 2 * (v % 100);
    v /= 100;
    *--d = two[1];
    *--d = two[0];
  }
  if (v >= 10) {
    *--d = pairs[2 * v + 1];
    *--d = pairs[2 * v];
  } else {
    *--d = (char)('0' + v);
  }
  if (neg) *start = '-';
}

static void put_int(lr_buf *out, int64_t i) {
  if (i < 0)
    put_u64(out, true, (uint64_t)0 - (uint64_t)i);
  else
    put_u64(out, false, (uint64_t)i);
}

/* Shortest decimal digits d[0..*nd) and exponent *k (value = 0.d * 10^k) that
 * read back as a (a finite, > 0). printf/strtod are correctly rounded, and
 * for a normal double any decimal of <= 15 significant digits that round-trips
 * is the 15-digit rounding itself, so trying 15, 16, 17 digits suffices;
 * subnormals have less precision and start at 1 digit. (Just above a power of
 * two the rounding interval is lopsided and a 16-digit form can be missed:
 * then 17 digits are printed, which is still exact.) Both calls use the
 * current locale, so the round trip is consistent; only digits are read back. */
/* Exact powers of ten as doubles (10^22 is the largest). */
static const double pow10_exact[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* The usual non-integral number, one with at most 9 decimals and under
 * 10^14 (12.345, 0.1), without printf: the smallest p for which
 * m = round(a * 10^p) gives back a as m / 10^p (one correctly rounded
 * division, as strtod of "m e-p" would) has the shortest digits. Below 10^15
 * the decimals of that size are more than 4 ulps of a apart, so at most one
 * of them reads back as a, and the rounded product (off by at most 0.22)
 * finds it. false: use the printf search. */
static bool shortest_digits_fast(double a, char d[20], int *nd, int *k) {
  if (!(a >= 1e-7 && a < 1e14)) return false;
  for (int p = 1; p <= 9; p++) {
    double s = a * pow10_exact[p];
    if (s >= 1e15) return false;
    double m = (double)(uint64_t)(s + 0.5);
    if (m / pow10_exact[p] != a) continue;
    char r[20];
    int n = 0;
    for (uint64_t v = (uint64_t)m; v; v /= 10)
      r[n++] = (char)('0' + v % 10);
    int z = 0; /* trailing zeros (none when p is the smallest; kept safe) */
    while (z < n - 1 && r[z] == '0')
      z++;
    for (int i = 0; i < n - z; i++)
      d[i] = r[n - 1 - i];
    *nd = n - z;
    *k = n - p;
    return true;
  }
  return false;
}

static void shortest_digits(double a, char d[20], int *nd, int *k) {
  if (shortest_digits_fast(a, d, nd, k)) return;
  char t[48];
  for (int prec = a < 2.2250738585072014e-308 ? 1 : 15;; prec++) {
    snprintf(t, sizeof t, "%.*e", prec - 1, a);
    if (prec >= 17 || strtod(t, NULL) == a) break;
  }
  int n = 0;
  const char *p = t;
  for (; *p && *p != 'e'; p++)
    if (*p >= '0' && *p <= '9') d[n++] = *p;
  int e = *p ? atoi(p + 1) : 0;
  while (n > 1 && d[n - 1] == '0')
    n--;
  *nd = n;
  *k = e + 1;
}

/* JavaScript Number#toString (ECMA-262 Number::toString, radix 10). Integral
 * values up to 2^53 take the integer path: their exact decimal is also the
 * shortest one, so no round-trip search is needed. Larger integral values
 * print their shortest digits padded with zeros, as JavaScript does
 * (2^64 -> 18446744073709552000), so they do take the search. */
static void enc_double(lr_buf *out, double f) {
  if (!isfinite(f)) {
    wn(out, "null", 4);
    return;
  }
  double a = f < 0 ? -f : f;
  if (a == 0) {
    w1(out, '0'); /* -0 too, like JavaScript */
    return;
  }
  if (a <= 9007199254740992.0 && a == (double)(int64_t)a) {
    put_u64(out, f < 0, (uint64_t)a);
    return;
  }
  char d[20], t[64];
  int nd, k;
  size_t o = 0;
  shortest_digits(a, d, &nd, &k);
  if (f < 0) t[o++] = '-';
  if (nd <= k && k <= 21) { /* integer: digits then zeros */
    memcpy(t + o, d, (size_t)nd);
    o += (size_t)nd;
    for (int i = nd; i < k; i++)
      t[o++] = '0';
  } else if (0 < k && k <= 21) { /* point inside the digits */
    memcpy(t + o, d, (size_t)k);
    o += (size_t)k;
    t[o++] = '.';
    memcpy(t + o, d + k, (size_t)(nd - k));
    o += (size_t)(nd - k);
  } else if (-6 < k && k <= 0) { /* 0.000ddd */
    t[o++] = '0';
    t[o++] = '.';
    for (int i = 0; i < -k; i++)
      t[o++] = '0';
    memcpy(t + o, d, (size_t)nd);
    o += (size_t)nd;
  } else { /* d.ddde+-x */
    t[o++] = d[0];
    if (nd > 1) {
      t[o++] = '.';
      memcpy(t + o, d + 1, (size_t)(nd - 1));
      o += (size_t)(nd - 1);
    }
    o += (size_t)snprintf(t + o, sizeof t - o, "e%c%d", k - 1 >= 0 ? '+' : '-',
                          k - 1 >= 0 ? k - 1 : 1 - k);
  }
  wn(out, t, o);
}

void lr_json_put_double(lr_buf *out, double f) {
  enc_double(out, f);
  w_end(out);
}

/* ---------------------------------------------------------------------------
 * Encoding
 */

static bool needs_escape(unsigned char c) {
  return c < 0x20 || c == '"' || c == '\\';
}

/* Escaping part of enc_string, from the first byte that needs it. */
static void enc_string_escaped(lr_buf *out, const char *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  size_t run = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!needs_escape(c)) continue;
    wn(out, s + run, i - run);
    run = i + 1;
    switch (c) {
    case '"':
      wn(out, "\\\"", 2);
      break;
    case '\\':
      wn(out, "\\\\", 2);
      break;
    case '\n':
      wn(out, "\\n", 2);
      break;
    case '\r':
      wn(out, "\\r", 2);
      break;
    case '\t':
      wn(out, "\\t", 2);
      break;
    case '\b':
      wn(out, "\\b", 2);
      break;
    case '\f':
      wn(out, "\\f", 2);
      break;
    default: {
      char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      wn(out, u, 6);
    }
    }
  }
  wn(out, s + run, len - run);
}

/* One pass: bytes are copied while scanned into space reserved for the
 * unescaped case; the first byte needing an escape hands over to the slow
 * path. */
static void enc_string(lr_buf *out, const char *s, size_t len) {
  w_reserve(out, len + 2);
  char *d = out->data + out->len;
  *d++ = '"';
  size_t i = 0;
  for (; i < len && !needs_escape((unsigned char)s[i]); i++)
    d[i] = s[i];
  out->len += 1 + i;
  if (i < len) enc_string_escaped(out, s + i, len - i);
  w1(out, '"');
}

void lr_json_put_string(lr_buf *out, const char *s, size_t len) {
  enc_string(out, s, len);
  w_end(out);
}

static void enc(const lr_node *n, uint8_t skip_flags, lr_buf *out) {
  switch (n->type) {
  case LR_NULL:
    wn(out, "null", 4);
    break;
  case LR_BOOL:
    if (n->u.b)
      wn(out, "true", 4);
    else
      wn(out, "false", 5);
    break;
  case LR_INT:
    put_int(out, n->u.i);
    break;
  case LR_FLOAT:
    enc_double(out, n->u.f);
    break;
  case LR_STRING:
    enc_string(out, lr_str(n), lr_strlen(n));
    break;
  case LR_ARRAY:
    w1(out, '[');
    for (uint32_t i = 0; i < n->u.arr.len; i++) {
      if (i) w1(out, ',');
      enc(n->u.arr.items[i], skip_flags, out);
    }
    w1(out, ']');
    break;
  case LR_OBJECT: {
    bool first = true;
    w1(out, '{');
    for (uint32_t i = 0; i < n->u.obj.len; i++) {
      const lr_member *m = &n->u.obj.m[i];
      if (m->val->flags & skip_flags) continue;
      if (!first) w1(out, ',');
      first = false;
      enc_string(out, lr_member_key(m), lr_member_keylen(m));
      w1(out, ':');
      enc(m->val, skip_flags, out);
    }
    w1(out, '}');
    break;
  }
  }
}

void lr_json_encode(const lr_node *n, uint8_t skip_flags, lr_buf *out) {
  enc(n, skip_flags, out);
  w_end(out);
}

/* The members of o a walk on ch visits, in member order: its marked members
 * when o keeps their list (a large object), else every member (the walk
 * skips the unmarked ones with one byte test). */
typedef struct {
  lr_node *const *list; /* NULL: every member */
  uint32_t n;
} visit;

static visit visit_of(const lr_node *o, int ch) {
  visit v = {NULL, o->u.obj.len};
  if (!lr_obj_dirty_members(o, ch, &v.list, &v.n)) v.list = NULL;
  return v;
}

static inline const lr_member *visit_at(const lr_node *o, const visit *v, uint32_t i) {
  return &o->u.obj.m[v->list ? v->list[i]->pos : i];
}

/* Patch of an object marked CHILD only: its marked members (whole value when
 * SELF, recursively otherwise) in member order, then its pending deletions.
 * Unmarked members are not visited when o is large (visit_of), else cost one
 * byte test each; their subtrees are never visited. */
static void patch_obj(const lr_node *o, int ch, lr_buf *out) {
  uint8_t ex = ch_excl[ch];
  bool first = true;
  w1(out, '{');
  visit v = visit_of(o, ch);
  for (uint32_t i = 0; i < v.n; i++) {
    const lr_member *m = visit_at(o, &v, i);
    uint8_t d = m->val->dirty[ch];
    if (!d || (m->val->flags & ex)) continue;
    if (!first) w1(out, ',');
    first = false;
    enc_string(out, lr_member_key(m), lr_member_keylen(m));
    w1(out, ':');
    if ((d & LR_D_SELF) || m->val->type != LR_OBJECT)
      enc(m->val, ex, out);
    else
      patch_obj(m->val, ch, out);
  }
  lr_keylist dl = lr_obj_dels(o, ch);
  for (uint32_t i = 0; i < dl.len; i++) {
    if (!first) w1(out, ',');
    first = false;
    enc_string(out, dl.keys[i], strlen(dl.keys[i]));
    wn(out, ":\"$delete\"", 10);
  }
  w1(out, '}');
}

void lr_json_encode_patch(const lr_node *root, int ch, lr_buf *out) {
  uint8_t d = root->dirty[ch];
  if (!d)
    wn(out, "{}", 2);
  else if ((d & LR_D_SELF) || root->type != LR_OBJECT)
    enc(root, ch_excl[ch], out);
  else
    patch_obj(root, ch, out);
  w_end(out);
}

typedef struct persist_walk {
  const lr_persist_ops *ops;
  lr_buf path, json;
} persist_walk;

static void persist_put(persist_walk *w, const lr_node *n) {
  lr_buf_reset(&w->json);
  lr_json_encode(n, LR_F_NOPERSIST, &w->json);
  if (w->ops->put)
    w->ops->put(w->ops->ud, lr_buf_cstr(&w->path), w->path.len, w->json.data, w->json.len, n);
}

/* Same traversal as patch_obj; the path of o is w->path[0..len), and top is
 * true for the root (whose children get no leading '.', even if a key is ""). */
static void persist_obj(persist_walk *w, const lr_node *o, bool top) {
  size_t base = w->path.len;
  visit v = visit_of(o, LR_CH_PERSIST);
  for (uint32_t i = 0; i < v.n; i++) {
    const lr_member *m = visit_at(o, &v, i);
    uint8_t d = m->val->dirty[LR_CH_PERSIST];
    if (!d || (m->val->flags & LR_F_NOPERSIST)) continue;
    if (!top) lr_buf_putc(&w->path, '.');
    lr_buf_put(&w->path, lr_member_key(m), lr_member_keylen(m));
    if ((d & LR_D_SELF) || m->val->type != LR_OBJECT)
      persist_put(w, m->val);
    else
      persist_obj(w, m->val, false);
    w->path.len = base;
  }
  lr_keylist dl = lr_obj_dels(o, LR_CH_PERSIST);
  for (uint32_t i = 0; i < dl.len; i++) {
    if (!top) lr_buf_putc(&w->path, '.');
    lr_buf_puts(&w->path, dl.keys[i]);
    if (w->ops->del) w->ops->del(w->ops->ud, w->path.data, w->path.len);
    w->path.len = base;
  }
}

void lr_json_walk_persist(const lr_node *root, const lr_persist_ops *ops) {
  uint8_t d = root->dirty[LR_CH_PERSIST];
  if (!d) return;
  persist_walk w = {.ops = ops};
  lr_buf_init(&w.path);
  lr_buf_init(&w.json);
  lr_buf_reserve(&w.path, 100); /* one allocation each for the usual paths and values */
  lr_buf_reserve(&w.json, 200);
  if ((d & LR_D_SELF) || root->type != LR_OBJECT)
    persist_put(&w, root);
  else
    persist_obj(&w, root, true);
  lr_buf_free(&w.path);
  lr_buf_free(&w.json);
}

/* ---------------------------------------------------------------------------
 * Parsing
 *
 * Iterative: containers are attached to their parent as soon as they open
 * and kept on an explicit stack, so depth costs no C stack and an error
 * frees everything by releasing the root.
 */

typedef struct parser {
  const char *s;
  size_t len, pos;
  lr_json_limits lim;
  bool exact_ints; /* storage: int64 integers stay LR_INT */
  uint32_t elements;
  char *err;
  size_t errlen;
  lr_buf keybuf, strbuf; /* unescaped key / string value scratch */
  const char *key;       /* pending object key (into s or keybuf) */
  size_t keylen;
} parser;

static bool failf(parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool failf(parser *p, const char *fmt, ...) {
  if (p->err && p->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, p->errlen, fmt, ap);
    va_end(ap);
  }
  return false;
}

static bool fail_at(parser *p, size_t at, const char *what) {
  return failf(p, "invalid JSON at offset %zu: %s", at, what);
}

static void skip_ws(parser *p) {
  while (p->pos < p->len) {
    char c = p->s[p->pos];
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t') break;
    p->pos++;
  }
}

static int hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* The 4 hex digits at s[at..at+4) as a code unit, or -1. */
static int32_t hex4(const char *s, size_t len, size_t at) {
  if (at > len || len - at < 4) return -1;
  int32_t v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hexval((unsigned char)s[at + i]);
    if (h < 0) return -1;
    v = v * 16 + h;
  }
  return v;
}

const char lr_json_bad_utf8[] = "invalid UTF-8";

/* Skip a run of plain string bytes from i (validating UTF-8); returns the
 * index of the first '"', '\\' or control byte, or (size_t)-1 on invalid
 * UTF-8 (its offset in *at). */
static size_t scan_plain(const char *str, size_t len, size_t i, size_t *at) {
  const unsigned char *s = (const unsigned char *)str;
  while (i < len) {
    unsigned c = s[i];
    if (c == '"' || c == '\\' || c < 0x20) return i;
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t k = lr_utf8_seq(s + i, len - i);
    if (!k) {
      *at = i;
      return (size_t)-1;
    }
    i += k;
  }
  return i;
}

#define STR_FAIL(where, what)                                                                      \
  do {                                                                                             \
    *at = (where);                                                                                 \
    *why = (what);                                                                                 \
    return -1;                                                                                     \
  } while (0)

/* The code point of the \u escape at s[i] (a surrogate pair joined, *i
 * moved past what it used); -1 with *why on a bad escape. */
static int32_t scan_u_escape(const char *s, size_t len, size_t *i, int flags, const char **why) {
  int32_t cp = hex4(s, len, *i + 2);
  if (cp < 0) return *why = "invalid \\u escape", -1;
  if (flags & LR_JSON_SCAN_SURROGATES) return *i += 6, cp;
  if (cp >= 0xDC00 && cp <= 0xDFFF) return *why = "lone surrogate in \\u escape", -1;
  if (cp >= 0xD800 && cp <= 0xDBFF) {
    int32_t lo = *i + 7 < len && s[*i + 6] == '\\' && s[*i + 7] == 'u' ? hex4(s, len, *i + 8) : -1;
    if (lo < 0xDC00 || lo > 0xDFFF) return *why = "lone surrogate in \\u escape", -1;
    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    *i += 6;
  }
  *i += 6;
  return cp;
}

int lr_json_scan_string(const char *s, size_t len, size_t *pos, int flags, lr_buf *scratch,
                        const char **out, size_t *outlen, const char **why, size_t *at) {
  size_t start = *pos + 1;
  size_t i = scan_plain(s, len, start, at);
  if (i == (size_t)-1) return *why = lr_json_bad_utf8, -1;
  if (i < len && s[i] == '"') {
    if (out) *out = s + start, *outlen = i - start;
    *pos = i + 1;
    return 0;
  }
  if (scratch) {
    lr_buf_reset(scratch);
    lr_buf_put(scratch, s + start, i - start);
  }
  for (;;) {
    if (i >= len) STR_FAIL(start - 1, "unterminated string");
    unsigned char c = (unsigned char)s[i];
    if (c == '"') break;
    if (c < 0x20) STR_FAIL(i, "control character in string");
    /* c == '\\' */
    if (i + 1 >= len) STR_FAIL(start - 1, "unterminated string");
    static const char esc[] = "\"\\/bfnrt", lit[] = "\"\\/\b\f\n\r\t";
    char e = s[i + 1];
    const char *k = e ? strchr(esc, e) : NULL;
    if (k) {
      if (scratch) lr_buf_putc(scratch, lit[k - esc]);
      i += 2;
    } else if (e == 'u') {
      size_t u = i;
      int32_t cp = scan_u_escape(s, len, &i, flags, why);
      if (cp < 0) {
        *at = u;
        return -1;
      }
      if (scratch) lr_utf8_put(scratch, (uint32_t)cp);
    } else {
      STR_FAIL(i, "invalid escape");
    }
    size_t j = scan_plain(s, len, i, at);
    if (j == (size_t)-1) return *why = lr_json_bad_utf8, -1;
    if (scratch) lr_buf_put(scratch, s + i, j - i);
    i = j;
  }
  *pos = i + 1;
  if (out)
    *out = scratch && scratch->data ? scratch->data : "", *outlen = scratch ? scratch->len : 0;
  return 0;
}

/* Parse the string literal at p->pos (which is '"'). On success *out points
 * into the input when there were no escapes, else into scratch. */
static bool parse_string(parser *p, lr_buf *scratch, const char **out, size_t *outlen) {
  const char *why;
  size_t at;
  if (lr_json_scan_string(p->s, p->len, &p->pos, 0, scratch, out, outlen, &why, &at) == 0)
    return true;
  if (why == lr_json_bad_utf8) return failf(p, "invalid UTF-8 at offset %zu", at);
  return fail_at(p, at, why);
}

static lr_node *bad_number(parser *p, size_t at) {
  fail_at(p, at, "invalid number");
  return NULL;
}

static bool is_digit(const parser *p, size_t i) {
  return i < p->len && p->s[i] >= '0' && p->s[i] <= '9';
}

/* The value of the validated unsigned number [s, end) when it is exact the
 * fast way (Clinger): at most 2^53 as an integer of all its digits, times or
 * divided by an exact power of ten up to 10^22, is one correctly rounded
 * IEEE operation, the same double strtod gives. false: use strtod. */
static bool fast_decimal(const char *s, const char *end, double *out) {
  uint64_t m = 0;
  int e10 = 0;
  bool frac = false;
  for (; s < end && *s != 'e' && *s != 'E'; s++) {
    if (*s == '.') {
      frac = true;
      continue;
    }
    if (m >= (uint64_t)1 << 49) return false; /* keeps m * 10 + 9 <= 2^53 */
    m = m * 10 + (uint64_t)(*s - '0');
    if (frac) e10--;
  }
  if (s < end) { /* exponent: small ones only */
    s++;
    bool eneg = *s == '-';
    if (*s == '+' || *s == '-') s++;
    int e = 0;
    for (; s < end; s++) {
      if (e > 400) return false;
      e = e * 10 + (*s - '0');
    }
    e10 += eneg ? -e : e;
  }
  if (e10 < -22 || e10 > 22) return false;
  *out = e10 < 0 ? (double)m / pow10_exact[-e10] : (double)m * pow10_exact[e10];
  return true;
}

/* Strict RFC 8259 number. Integers (no fraction, no exponent) within +-2^53
 * (lr_json_decode_exact: that fit int64) become LR_INT; everything else LR_FLOAT
 * via a correctly rounded strtod (json.h). */
static lr_node *parse_number(parser *p) {
  size_t start = p->pos, i = start;
  bool neg = false, integral = true;
  if (p->s[i] == '-') {
    neg = true;
    i++;
  }
  if (!is_digit(p, i)) return bad_number(p, start);
  if (p->s[i] == '0')
    i++;
  else
    while (is_digit(p, i))
      i++;
  if (i < p->len && p->s[i] == '.') {
    integral = false;
    if (!is_digit(p, ++i)) return bad_number(p, start);
    while (is_digit(p, i))
      i++;
  }
  if (i < p->len && (p->s[i] == 'e' || p->s[i] == 'E')) {
    integral = false;
    i++;
    if (i < p->len && (p->s[i] == '+' || p->s[i] == '-')) i++;
    if (!is_digit(p, i)) return bad_number(p, start);
    while (is_digit(p, i))
      i++;
  }
  p->pos = i;
  if (integral) {
    uint64_t v = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    size_t j = start + (neg ? 1 : 0);
    for (; j < i; j++) {
      unsigned dgt = (unsigned)(p->s[j] - '0');
      if (v > (lim - dgt) / 10) break;
      v = v * 10 + dgt;
    }
    if (j == i && (p->exact_ints || v <= (uint64_t)1 << 53)) {
      if (!neg) return lr_node_int((int64_t)v);
      return lr_node_int(v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v);
    }
  }
  double f;
  if (fast_decimal(p->s + start + (neg ? 1 : 0), p->s + i, &f)) return lr_node_float(neg ? -f : f);
  char small[64], *t = small;
  size_t n = i - start;
  if (n >= sizeof small) t = lr_xmalloc(n + 1);
  memcpy(t, p->s + start, n);
  t[n] = '\0';
  f = c_strtod(t);
  if (t != small) free(t);
  return lr_node_float(f);
}

/* Object key, ':' included. Sets p->key/p->keylen. */
static bool parse_key(parser *p) {
  skip_ws(p);
  if (p->pos >= p->len || p->s[p->pos] != '"') return fail_at(p, p->pos, "expected string key");
  size_t at = p->pos;
  if (!parse_string(p, &p->keybuf, &p->key, &p->keylen)) return false;
  if (memchr(p->key, '\0', p->keylen)) return fail_at(p, at, "NUL character in object key");
  if (p->keylen > UINT32_MAX) return fail_at(p, at, "object key too long");
  skip_ws(p);
  if (p->pos >= p->len || p->s[p->pos] != ':') return fail_at(p, p->pos, "expected ':'");
  p->pos++;
  return true;
}

static bool literal(parser *p, const char *w, size_t n) {
  if (p->len - p->pos < n || memcmp(p->s + p->pos, w, n) != 0) return false;
  p->pos += n;
  return true;
}

/* Parse one scalar value at p->pos (not '{' or '['). */
static lr_node *parse_scalar(parser *p) {
  char c = p->s[p->pos];
  if (c == '"') {
    const char *s;
    size_t n;
    if (!parse_string(p, &p->strbuf, &s, &n)) return NULL;
    return lr_node_string(s, n);
  }
  if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p);
  if (literal(p, "true", 4)) return lr_node_bool(true);
  if (literal(p, "false", 5)) return lr_node_bool(false);
  if (literal(p, "null", 4)) return lr_node_null();
  fail_at(p, p->pos, "unexpected character");
  return NULL;
}

static lr_node *decode(const char *text, size_t len, const lr_json_limits *limits, bool exact,
                       char *err, size_t errlen);

lr_node *lr_json_decode(const char *text, size_t len, const lr_json_limits *limits, char *err,
                        size_t errlen) {
  return decode(text, len, limits, false, err, errlen);
}

lr_node *lr_json_decode_exact(const char *text, size_t len, const lr_json_limits *limits, char *err,
                              size_t errlen) {
  return decode(text, len, limits, true, err, errlen);
}

/* The open-container stack of decode, twice as deep: moved off the C stack
 * (stack0, 16 deep) on its first growth. */
static lr_node **grow_stack(lr_node **stack, lr_node **stack0, uint32_t *cap) {
  *cap *= 2;
  if (stack != stack0) return lr_xrealloc(stack, *cap * sizeof *stack);
  lr_node **s = lr_xmalloc(*cap * sizeof *s);
  memcpy(s, stack0, *cap / 2 * sizeof *s);
  return s;
}

/* After a value of decode: close the finished containers, stop after the
 * next ',' (and the key after it in an object). 1: a value follows; 0: the
 * document ended there; -1: failed (p says why). */
static int after_value(parser *p, lr_node **stack, uint32_t *depth) {
  for (;;) {
    skip_ws(p);
    if (!*depth) {
      if (p->pos == p->len) return 0;
      fail_at(p, p->pos, "trailing characters");
      return -1;
    }
    if (p->pos >= p->len) {
      fail_at(p, p->pos, "unexpected end of input");
      return -1;
    }
    bool obj = stack[*depth - 1]->type == LR_OBJECT;
    char c = p->s[p->pos];
    if (c == ',') {
      p->pos++;
      return obj && !parse_key(p) ? -1 : 1;
    }
    if (c != (obj ? '}' : ']')) {
      fail_at(p, p->pos, obj ? "expected ',' or '}'" : "expected ',' or ']'");
      return -1;
    }
    p->pos++;
    (*depth)--;
  }
}

static lr_node *decode(const char *text, size_t len, const lr_json_limits *limits, bool exact,
                       char *err, size_t errlen) {
  parser P = {.s = text, .len = len, .exact_ints = exact, .err = err, .errlen = errlen};
  parser *p = &P;
  p->lim = limits ? *limits : LR_JSON_DEFAULT_LIMITS;
  lr_buf_init(&p->keybuf);
  lr_buf_init(&p->strbuf);
  if (err && errlen) err[0] = '\0';

  /* The open containers: on the C stack up to 16 deep (every packet a
   * client sends), on the heap past that. */
  lr_node *root = NULL, *stack0[16], **stack = stack0;
  uint32_t depth = 0, stackcap = 16;
  bool ok = false;

  for (;;) {
    /* A value is expected here. */
    skip_ws(p);
    if (p->pos >= p->len) {
      fail_at(p, p->pos, "unexpected end of input");
      goto done;
    }
    if (++p->elements > p->lim.max_elements) {
      failf(p, "JSON has more than %u elements", p->lim.max_elements);
      goto done;
    }
    char c = p->s[p->pos];
    bool open = c == '{' || c == '[';
    lr_node *v;
    if (open) {
      if (depth >= p->lim.max_depth) {
        failf(p, "JSON nested deeper than %u", p->lim.max_depth);
        goto done;
      }
      p->pos++;
      v = lr_node_new(c == '{' ? LR_OBJECT : LR_ARRAY);
    } else if (!(v = parse_scalar(p))) {
      goto done;
    }
    if (!depth)
      root = v;
    else if (stack[depth - 1]->type == LR_ARRAY)
      lr_arr_push(stack[depth - 1], v);
    else
      lr_obj_put(stack[depth - 1], p->key, p->keylen, v);
    if (open) {
      if (depth == stackcap) stack = grow_stack(stack, stack0, &stackcap);
      stack[depth++] = v;
      skip_ws(p);
      if (p->pos < p->len && p->s[p->pos] == (c == '{' ? '}' : ']')) {
        p->pos++;
        depth--;
      } else {
        if (c == '{' && !parse_key(p)) goto done;
        continue;
      }
    }
    int next = after_value(p, stack, &depth);
    if (next <= 0) {
      ok = next == 0;
      goto done;
    }
  }

done:
  if (stack != stack0) free(stack);
  lr_buf_free(&p->keybuf);
  lr_buf_free(&p->strbuf);
  if (!ok) {
    lr_node_release(root);
    return NULL;
  }
  return root;
}

/*
 * fuzz_json.c - libFuzzer target: the JSON decoder (lr_json_decode) and the
 * encoder's round trip.
 *
 * Invariants checked on every input that decodes:
 *   - the input was valid UTF-8 (the decoder validates all of it);
 *   - encode(decode(x)) decodes again, to a tree equal as a JavaScript
 *     client sees it (js_equal below: the two known differences);
 *   - encoding is a fixed point: encode(decode(encode(v))) == encode(v), byte
 *     for byte (numbers print the same after a round trip);
 *   - no node outlives the call (lr_node_live()).
 * With the wire limits (depth 64, 100000 values) and tight ones taken from
 * the first byte, so the limit paths are fuzzed too.
 * Must not: print on success (libFuzzer speed).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <math.h>

#include "json.h"

static void fail(const char *what, const uint8_t *data, size_t size) {
  fprintf(stderr, "fuzz_json: %s (input of %zu bytes)\n", what, size);
  (void)data;
  abort();
}

/* Equality as a JavaScript client sees it: numbers compare as doubles, and
 * a non-finite float equals null. Two known, reported differences of json.c
 * make the strict lr_node_equal too strong here:
 *   - a literal overflowing to +-Inf (1e400) decodes to Inf (as JSON.parse)
 *     and encodes as null (as JSON.stringify);
 *   - an integral float above 2^53 whose shortest digits end in zeros
 *     (922337203685477580.6 -> "922337203685477600") decodes back as a
 *     different int64 (922337203685477600 vs ...632): the same double, a
 *     different Lua value. */
static bool js_equal(const lr_node *a, const lr_node *b) {
  bool an = a->type == LR_INT || a->type == LR_FLOAT, bn = b->type == LR_INT || b->type == LR_FLOAT;
  if (an && bn) {
    if (a->type == LR_INT && b->type == LR_INT) return a->u.i == b->u.i;
    double x = a->type == LR_INT ? (double)a->u.i : a->u.f;
    double y = b->type == LR_INT ? (double)b->u.i : b->u.f;
    return x == y;
  }
  if (a->type == LR_FLOAT && !isfinite(a->u.f)) return b->type == LR_NULL;
  if (b->type == LR_FLOAT && !isfinite(b->u.f)) return a->type == LR_NULL;
  if (a->type != b->type) return false;
  switch (a->type) {
  case LR_ARRAY:
    if (a->u.arr.len != b->u.arr.len) return false;
    for (uint32_t i = 0; i < a->u.arr.len; i++)
      if (!js_equal(a->u.arr.items[i], b->u.arr.items[i])) return false;
    return true;
  case LR_OBJECT:
    if (a->u.obj.len != b->u.obj.len) return false;
    for (uint32_t i = 0; i < a->u.obj.len; i++) {
      const lr_member *m = &a->u.obj.m[i];
      const lr_node *o = lr_obj_get(b, lr_member_key(m), lr_member_keylen(m));
      if (!o || !js_equal(m->val, o)) return false;
    }
    return true;
  default:
    return lr_node_equal(a, b);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *text = (const char *)data;
  size_t live0 = lr_node_live();
  lr_json_limits lim = LR_JSON_DEFAULT_LIMITS;
  if (size > 0 && data[0] == '#') { /* "#<depth byte><elements byte>json": tight limits */
    if (size < 3) return 0;
    lim.max_depth = data[1] % 16;
    lim.max_elements = data[2];
    text += 3;
    size -= 3;
  }
  char err[256];
  lr_node *n = lr_json_decode(text, size, &lim, err, sizeof err);
  if (!n) {
    if (err[0] == '\0') fail("decode failed without a message", data, size);
    if (lr_node_live() != live0) fail("a failed decode leaked nodes", data, size);
    return 0;
  }
  if (!lr_utf8_valid(text, size)) fail("accepted invalid UTF-8", data, size);

  lr_buf a, b;
  lr_buf_init(&a);
  lr_buf_init(&b);
  lr_json_encode(n, 0, &a);
  lr_node *m = lr_json_decode(a.data, a.len, NULL, err, sizeof err);
  if (!m) {
    fprintf(stderr, "re-decode error: %s\ntext: %.*s\n", err, (int)(a.len > 400 ? 400 : a.len),
            a.data);
    fail("encoder output does not decode", data, size);
  }
  if (!js_equal(n, m)) fail("round trip changed the value", data, size);
  lr_json_encode(m, 0, &b);
  if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0)
    fail("encoding is not a fixed point", data, size);
  lr_node_release(m);
  lr_node_release(n);
  lr_buf_free(&a);
  lr_buf_free(&b);
  if (lr_node_live() != live0) fail("nodes leaked", data, size);
  return 0;
}

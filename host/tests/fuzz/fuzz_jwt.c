/*
 * fuzz_jwt.c - libFuzzer target: the JWT path (lr_jwt_verify on libjwt).
 *
 * The first byte picks a mode:
 *   's' rest = claims JSON. If it decodes to an object, set exp in the
 *       future, sign it, and verify: must be accepted (unless the token is
 *       over the length bound or libjwt's JSON refuses the claims) and give
 *       back claims equal to what was signed.
 *   'm' rest = edits (position, byte pairs) applied to a valid token: if the
 *       result differs from the token, it must be refused.
 *   other: the whole input is a token, verified with the fuzz secret; an
 *       accepted token must have an object of claims with exp > now when it
 *       has an exp, and the
 *       JSON text must decode to the same claims.
 * Must not: depend on the wall clock beyond "now" (tokens use now +- hours).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "lr_jwt.h"

static const char SECRET[] = "fuzz-secret";
#define SLEN (sizeof SECRET - 1)

static void fail(const char *what) {
  fprintf(stderr, "fuzz_jwt: %s\n", what);
  abort();
}

static void check_accepted(const char *json, lr_node *claims, int64_t now) {
  if (!claims || claims->type != LR_OBJECT) fail("accepted claims are not an object");
  lr_node *exp = lr_obj_get(claims, "exp", 3); /* optional (as the reference) */
  if (exp) {
    if (exp->type != LR_INT && exp->type != LR_FLOAT) fail("accepted a non-numeric exp");
    double e = exp->type == LR_INT ? (double)exp->u.i : exp->u.f;
    if (!(e > (double)now)) fail("accepted an expired token");
  }
  lr_node *again = lr_json_decode_exact(json, strlen(json), NULL, NULL, 0);
  if (!again || !lr_node_equal(again, claims)) fail("claims text and tree differ");
  lr_node_release(again);
}

static void mode_sign(const char *text, size_t len, int64_t now) {
  lr_node *c = lr_json_decode_exact(text, len, NULL, NULL, 0);
  if (!c) return;
  if (c->type != LR_OBJECT) {
    lr_node_release(c);
    return;
  }
  lr_obj_put(c, "exp", 3, lr_node_int(now + 3600));
  lr_obj_remove(c, "nbf", 3);
  lr_buf b;
  lr_buf_init(&b);
  lr_json_encode(c, 0, &b);
  char err[128];
  char *tok = lr_jwt_sign(lr_buf_cstr(&b), SECRET, SLEN, err, sizeof err);
  if (tok) {
    char *json = NULL;
    lr_node *got = NULL;
    size_t tl = strlen(tok);
    lr_jwt_status st = lr_jwt_verify(tok, tl, SECRET, SLEN, now, &json, &got);
    if (st == LR_JWT_OK) {
      check_accepted(json, got, now);
      /* Compared with what the signed text decodes to: a literal that
       * overflowed to Inf was written as null (see fuzz_json.c). */
      lr_node *sent = lr_json_decode_exact(b.data, b.len, NULL, NULL, 0);
      if (!sent || !lr_node_equal(sent, got)) fail("signed and verified claims differ");
      lr_node_release(sent);
      free(json);
      lr_node_release(got);
    } else if (!(st == LR_JWT_MALFORMED && tl > LR_JWT_MAX_TOKEN)) {
      fprintf(stderr, "status %s for a token we signed (%zu bytes)\n", lr_jwt_reason(st), tl);
      fail("own token refused");
    }
    /* Any other secret must refuse it. */
    if (lr_jwt_verify(tok, tl, "fuzz-secreT", SLEN, now, NULL, NULL) == LR_JWT_OK)
      fail("accepted with the wrong secret");
    free(tok);
  }
  lr_buf_free(&b);
  lr_node_release(c);
}

static void mode_mutate(const uint8_t *edits, size_t n, int64_t now) {
  char err[128];
  char claims[96];
  snprintf(claims, sizeof claims, "{\"sub\":\"ann\",\"exp\":%lld}", (long long)(now + 3600));
  char *tok = lr_jwt_sign(claims, SECRET, SLEN, err, sizeof err);
  if (!tok) fail("cannot sign");
  size_t tl = strlen(tok);
  char *m = malloc(tl + 1);
  memcpy(m, tok, tl + 1);
  size_t ml = tl;
  for (size_t i = 0; i + 1 < n; i += 2) {
    if (edits[i] == 0xFF) { /* truncate */
      ml = edits[i + 1] % (tl + 1);
      continue;
    }
    m[edits[i] % tl] = (char)edits[i + 1];
  }
  bool same = ml == tl && memcmp(m, tok, tl) == 0;
  lr_jwt_status st = lr_jwt_verify(m, ml, SECRET, SLEN, now, NULL, NULL);
  if (!same && st == LR_JWT_OK) fail("a modified token was accepted");
  if (same && st != LR_JWT_OK) fail("the valid token was refused");
  free(m);
  free(tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int64_t now = (int64_t)time(NULL);
  if (size > 0 && data[0] == 's') {
    mode_sign((const char *)data + 1, size - 1, now);
    return 0;
  }
  if (size > 0 && data[0] == 'm') {
    mode_mutate(data + 1, size - 1, now);
    return 0;
  }
  char *json = NULL;
  lr_node *claims = NULL;
  lr_jwt_status st = lr_jwt_verify((const char *)data, size, SECRET, SLEN, now, &json, &claims);
  if (st == LR_JWT_OK) {
    check_accepted(json, claims, now);
    free(json);
    lr_node_release(claims);
  } else if (json || claims) {
    fail("outputs set on a refusal");
  }
  (void)lr_jwt_reason(st);
  return 0;
}

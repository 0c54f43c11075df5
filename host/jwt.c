/*
 * jwt.c - HS256 JSON Web Tokens on libjwt 1.10 (see lr_jwt.h).
 *
 * Owns: token shape checks, the algorithm allow-list (HS256 only), the time
 * claims (exp and nbf checked when present; exp required only with
 * LR_JWT_REQUIRE_EXP), the reason strings, and the signer.
 * Must not: know about Lua, rooms or sockets; read the environment; log; let
 * the secret or the token reach an error message.
 *
 * Why the checks before libjwt: libjwt 1.10's jwt_decode() accepts
 * alg "none" when no key is given, decodes without any signature check when
 * the key is empty (alg then reads as none), verifies whatever HMAC/RSA
 * algorithm the header names, and its base64 decoder skips characters it
 * does not know. So this file (1) refuses empty secrets, (2) requires exactly
 * three segments of base64url characters, (3) reads the header itself and
 * refuses anything but "HS256" before libjwt runs, and (4) checks again that
 * libjwt verified with HS256. The signature comparison is libjwt's, which
 * Debian's 1.10.2-1+deb12u1 makes constant-time (CVE-2024-25189).
 */
#include "lr_jwt.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jwt.h>

#include "buf.h"
#include "json.h"

const char *lr_jwt_reason(lr_jwt_status st) {
  switch (st) {
  case LR_JWT_OK:
    return "ok";
  case LR_JWT_NO_TOKEN:
    return "no token";
  case LR_JWT_MALFORMED:
    return "malformed";
  case LR_JWT_ALG:
    return "algorithm not allowed";
  case LR_JWT_BAD_SIGNATURE:
    return "bad signature";
  case LR_JWT_EXPIRED:
    return "expired";
  case LR_JWT_NOT_YET:
    return "not yet valid";
  case LR_JWT_NO_EXP:
    return "missing exp";
  case LR_JWT_NO_SECRET:
    return "no secret";
  }
  return "malformed";
}

/* Value of a base64url character, or -1. */
static int b64url_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

/* Decode base64url without padding: s[0..n) (already checked to hold only
 * base64url characters) into out (at least n * 3 / 4 + 1 bytes). Returns the
 * decoded length, or -1 when n % 4 == 1 (no byte string encodes to that). */
static long b64url_decode(const char *s, size_t n, unsigned char *out) {
  if (n % 4 == 1) return -1;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    acc = (acc << 6) | (uint32_t)b64url_value((unsigned char)s[i]);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (unsigned char)(acc >> bits);
      acc &= (1u << bits) - 1;
    }
  }
  return (long)o;
}

/* The header's "alg" is exactly "HS256"? Returns LR_JWT_OK, LR_JWT_ALG, or
 * LR_JWT_MALFORMED when the header is not a base64url JSON object with a
 * string alg. */
static lr_jwt_status check_header(const char *seg, size_t n) {
  unsigned char *raw = lr_xmalloc(n * 3 / 4 + 1);
  long rn = b64url_decode(seg, n, raw);
  lr_jwt_status st = LR_JWT_MALFORMED;
  lr_json_limits lim = {8, 256};
  lr_node *h = rn > 0 ? lr_json_decode((const char *)raw, (size_t)rn, &lim, NULL, 0) : NULL;
  free(raw);
  if (!h) return LR_JWT_MALFORMED;
  lr_node *alg = h->type == LR_OBJECT ? lr_obj_get(h, "alg", 3) : NULL;
  if (alg && alg->type == LR_STRING)
    st = (lr_strlen(alg) == 5 && memcmp(lr_str(alg), "HS256", 5) == 0) ? LR_JWT_OK : LR_JWT_ALG;
  lr_node_release(h);
  return st;
}

/* A numeric claim compared with now: -1 below, 0 equal, 1 above; 2 when the
 * claim is not a number. */
static int cmp_time(const lr_node *v, int64_t now) {
  if (v->type == LR_INT) return v->u.i < now ? -1 : v->u.i > now;
  if (v->type == LR_FLOAT) {
    double d = (double)now;
    return v->u.f < d ? -1 : v->u.f > d;
  }
  return 2;
}

/* The exp and nbf claims of object c against now. */
static lr_jwt_status check_times(const lr_node *c, int64_t now, unsigned flags) {
  const lr_node *exp = lr_obj_get(c, "exp", 3), *nbf = lr_obj_get(c, "nbf", 3);
  if (!exp && (flags & LR_JWT_REQUIRE_EXP)) return LR_JWT_NO_EXP;
  int e = exp ? cmp_time(exp, now) : 1; /* no exp: does not expire */
  int b = nbf ? cmp_time(nbf, now) : -1;
  if (e == 2 || b == 2) return LR_JWT_MALFORMED;
  if (e <= 0) return LR_JWT_EXPIRED;
  if (b > 0) return LR_JWT_NOT_YET;
  return LR_JWT_OK;
}

lr_jwt_status lr_jwt_verify(const char *token, size_t len, const char *secret, size_t secret_len,
                            int64_t now, char **claims_json, lr_node **claims) {
  return lr_jwt_verify_flags(token, len, secret, secret_len, now, 0, claims_json, claims);
}

lr_jwt_status lr_jwt_verify_flags(const char *token, size_t len, const char *secret,
                                  size_t secret_len, int64_t now, unsigned flags,
                                  char **claims_json, lr_node **claims) {
  if (!token || len == 0) return LR_JWT_NO_TOKEN;
  if (!secret || secret_len == 0 || secret_len > INT_MAX) return LR_JWT_NO_SECRET;
  if (len > LR_JWT_MAX_TOKEN) return LR_JWT_MALFORMED;

  /* Shape: header "." payload "." signature, base64url characters only. */
  size_t dots[2] = {0, 0}, nd = 0;
  for (size_t i = 0; i < len; i++) {
    if (token[i] == '.') {
      if (nd == 2) return LR_JWT_MALFORMED;
      dots[nd++] = i;
    } else if (b64url_value((unsigned char)token[i]) < 0) {
      return LR_JWT_MALFORMED;
    }
  }
  if (nd != 2 || dots[0] == 0 || dots[1] == dots[0] + 1) return LR_JWT_MALFORMED;

  /* The algorithm, read by us, before libjwt sees the token. */
  lr_jwt_status st = check_header(token, dots[0]);
  if (st != LR_JWT_OK) return st;
  if (dots[1] + 1 == len) return LR_JWT_BAD_SIGNATURE; /* HS256 with no signature */

  char *tok = lr_xstrndup(token, len);
  jwt_t *j = NULL;
  int rc = jwt_decode(&j, tok, (const unsigned char *)secret, (int)secret_len);
  if (rc != 0 || !j) {
    if (j) jwt_free(j);
    /* Wrong MAC, or a token libjwt cannot read at all? Decoding without a
     * key (no signature check) tells them apart; the result is dropped. */
    j = NULL;
    rc = jwt_decode(&j, tok, NULL, 0);
    if (j) jwt_free(j);
    free(tok);
    return rc == 0 ? LR_JWT_BAD_SIGNATURE : LR_JWT_MALFORMED;
  }
  free(tok);
  if (jwt_get_alg(j) != JWT_ALG_HS256) { /* the header lied to one of us */
    jwt_free(j);
    return LR_JWT_ALG;
  }
  char *json = jwt_get_grants_json(j, NULL);
  jwt_free(j);
  if (!json) return LR_JWT_MALFORMED;

  /* claims are signed with our own secret: their integers are kept exact */
  lr_json_limits lim = {LR_JWT_CLAIMS_DEPTH, LR_JWT_CLAIMS_ELEMENTS};
  lr_node *c = lr_json_decode_exact(json, strlen(json), &lim, NULL, 0);
  st = c && c->type == LR_OBJECT ? check_times(c, now, flags) : LR_JWT_MALFORMED;
  if (st != LR_JWT_OK) goto fail;
  if (claims_json)
    *claims_json = json;
  else
    free(json);
  if (claims)
    *claims = c;
  else
    lr_node_release(c);
  return LR_JWT_OK;

fail:
  if (c) lr_node_release(c);
  free(json);
  return st;
}

char *lr_jwt_sign(const char *claims_json, const char *secret, size_t secret_len, char *err,
                  size_t errlen) {
  const char *msg = NULL;
  char *out = NULL;
  jwt_t *j = NULL;
  if (!secret || secret_len == 0 || secret_len > INT_MAX) {
    msg = "the secret must be a non-empty string";
    goto done;
  }
  if (jwt_new(&j) != 0 || !j) {
    msg = "out of memory";
    goto done;
  }
  if (!claims_json || jwt_add_grants_json(j, claims_json) != 0) {
    msg = "the claims must be a JSON object";
    goto done;
  }
  if (jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)secret, (int)secret_len) != 0) {
    msg = "cannot set HS256";
    goto done;
  }
  out = jwt_encode_str(j);
  if (!out) msg = "cannot encode the token";
done:
  if (j) jwt_free(j);
  if (msg && err && errlen) snprintf(err, errlen, "%s", msg);
  return out;
}

/*
 * test_jwt.c - unit tests of jwt.c (lr_jwt.h): the accept/refuse matrix
 * with a fixed clock, tokens whose header lies, and single-byte tampering.
 * Must not: depend on the wall clock or the environment.
 */
#include <stdlib.h>
#include <string.h>

#include <jwt.h> /* libjwt, to mint tokens jwt.c would never sign */

#include "lr_jwt.h"
#include "test.h"

#define NOW 1700000000LL

static lr_jwt_status verify(const char *tok, const char *secret) {
  return lr_jwt_verify(tok, strlen(tok), secret, strlen(secret), NOW, NULL, NULL);
}

static char *sign(const char *claims, const char *secret) {
  char err[128];
  return lr_jwt_sign(claims, secret, strlen(secret), err, sizeof err);
}

/* A token signed by libjwt with any algorithm (HS384, HS512, ...). */
static char *sign_alg(jwt_alg_t alg, const char *claims, const char *secret) {
  jwt_t *j = NULL;
  if (jwt_new(&j) != 0) return NULL;
  jwt_add_grants_json(j, claims);
  jwt_set_alg(j, alg, (const unsigned char *)secret, (int)strlen(secret));
  char *t = jwt_encode_str(j);
  jwt_free(j);
  return t;
}

/* tok with its first segment replaced by the base64url of header. */
static char *with_header(const char *tok, const char *b64header) {
  const char *dot = strchr(tok, '.');
  size_t n = strlen(b64header) + strlen(dot) + 1;
  char *out = malloc(n);
  snprintf(out, n, "%s%s", b64header, dot);
  return out;
}

#define CLAIMS "{\"sub\":\"ann\",\"exp\":1700000100,\"worlds\":[\"*\",1,{\"n\":9007199254740993}]}"
/* {"alg":"HS256","typ":"JWT"} {"alg":"none"} {"alg":"HS512","typ":"JWT"} */
#define H_HS256 "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
#define H_NONE "eyJhbGciOiJub25lIn0"
#define H_HS512 "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9"

TEST(jwt_valid_token_returns_exact_claims) {
  char *tok = sign(CLAIMS, "s3cret");
  ASSERT(tok != NULL);
  char *json = NULL;
  lr_node *c = NULL;
  ASSERT_EQ_INT(LR_JWT_OK, lr_jwt_verify(tok, strlen(tok), "s3cret", 6, NOW, &json, &c));
  ASSERT(json != NULL && c != NULL);
  lr_node *w = lr_obj_get(c, "worlds", 6);
  ASSERT(w && w->type == LR_ARRAY && w->u.arr.len == 3);
  lr_node *n = lr_obj_get(w->u.arr.items[2], "n", 1);
  ASSERT(n && n->type == LR_INT && n->u.i == 9007199254740993LL);
  ASSERT(strstr(json, "\"sub\":\"ann\"") != NULL);
  free(json);
  lr_node_release(c);
  free(tok);
}

TEST(jwt_refusals) {
  char *tok = sign(CLAIMS, "s3cret");
  ASSERT_EQ_INT(LR_JWT_BAD_SIGNATURE, verify(tok, "s3creT"));
  ASSERT_EQ_INT(LR_JWT_BAD_SIGNATURE, verify(tok, "s3cret "));
  ASSERT_EQ_INT(LR_JWT_NO_SECRET, lr_jwt_verify(tok, strlen(tok), "", 0, NOW, NULL, NULL));
  ASSERT_EQ_INT(LR_JWT_NO_TOKEN, lr_jwt_verify("", 0, "s3cret", 6, NOW, NULL, NULL));
  ASSERT_EQ_INT(LR_JWT_NO_TOKEN, lr_jwt_verify(NULL, 0, "s3cret", 6, NOW, NULL, NULL));
  /* exp is exclusive, nbf inclusive. */
  ASSERT_EQ_INT(LR_JWT_OK, lr_jwt_verify(tok, strlen(tok), "s3cret", 6, 1700000099, NULL, NULL));
  ASSERT_EQ_INT(LR_JWT_EXPIRED,
                lr_jwt_verify(tok, strlen(tok), "s3cret", 6, 1700000100, NULL, NULL));
  free(tok);
  tok = sign("{\"exp\":1700000100,\"nbf\":1700000050}", "k");
  ASSERT_EQ_INT(LR_JWT_NOT_YET, lr_jwt_verify(tok, strlen(tok), "k", 1, 1700000049, NULL, NULL));
  ASSERT_EQ_INT(LR_JWT_OK, lr_jwt_verify(tok, strlen(tok), "k", 1, 1700000050, NULL, NULL));
  free(tok);
  tok = sign("{\"sub\":\"x\"}", "k"); /* no exp: accepted, as the reference; refused on demand */
  ASSERT_EQ_INT(LR_JWT_OK, verify(tok, "k"));
  ASSERT_EQ_INT(LR_JWT_NO_EXP,
                lr_jwt_verify_flags(tok, strlen(tok), "k", 1, NOW, LR_JWT_REQUIRE_EXP, NULL, NULL));
  free(tok);
  tok = sign("{\"nbf\":1700000050}", "k"); /* nbf still checked without exp */
  ASSERT_EQ_INT(LR_JWT_NOT_YET, lr_jwt_verify(tok, strlen(tok), "k", 1, 1700000049, NULL, NULL));
  ASSERT_EQ_INT(LR_JWT_OK, lr_jwt_verify(tok, strlen(tok), "k", 1, 1700000050, NULL, NULL));
  free(tok);
  tok = sign("{\"exp\":\"tomorrow\"}", "k");
  ASSERT_EQ_INT(LR_JWT_MALFORMED, verify(tok, "k"));
  free(tok);
  tok = sign("{\"exp\":1700000000.5}", "k"); /* fractional NumericDate */
  ASSERT_EQ_INT(LR_JWT_OK, verify(tok, "k"));
  free(tok);
  const char *garbage[] = {"x",
                           "a.b",
                           "a.b.c",
                           "..",
                           "a..c",
                           ".b.c",
                           "a.b.c.d",
                           "abc==.def.ghi",
                           "eyJ!.eyJ.x",
                           H_HS256 ".eyJleHAiOjF9",
                           H_HS256 "..sig"};
  for (size_t i = 0; i < sizeof garbage / sizeof *garbage; i++)
    ASSERT_EQ_INT(LR_JWT_MALFORMED, verify(garbage[i], "k"));
  ASSERT_EQ_INT(LR_JWT_BAD_SIGNATURE, verify(H_HS256 ".eyJleHAiOjF9.", "k"));
}

TEST(jwt_algorithms_other_than_hs256_are_refused) {
  /* alg none, with and without a signature; libjwt alone accepts it. */
  ASSERT_EQ_INT(LR_JWT_ALG, verify(H_NONE ".eyJleHAiOjk5OTk5OTk5OTk5fQ.", "k"));
  char *tok = sign(CLAIMS, "k");
  char *lie = with_header(tok, H_NONE);
  ASSERT_EQ_INT(LR_JWT_ALG, verify(lie, "k"));
  free(lie);
  /* The header says HS512 but the MAC is HS256: refused on the header. */
  lie = with_header(tok, H_HS512);
  ASSERT_EQ_INT(LR_JWT_ALG, verify(lie, "k"));
  free(lie);
  free(tok);
  const jwt_alg_t algs[] = {JWT_ALG_HS384, JWT_ALG_HS512};
  for (size_t i = 0; i < 2; i++) {
    tok = sign_alg(algs[i], CLAIMS, "k");
    ASSERT(tok != NULL);
    ASSERT_EQ_INT(LR_JWT_ALG, verify(tok, "k"));
    /* The header lies the other way: says HS256, MAC is HS384/512. */
    lie = with_header(tok, H_HS256);
    ASSERT_EQ_INT(LR_JWT_BAD_SIGNATURE, verify(lie, "k"));
    free(lie);
    free(tok);
  }
  /* RS256 / ES256 headers (no key material needed to refuse them). */
  ASSERT_EQ_INT(LR_JWT_ALG, verify("eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2ln", "k"));
  ASSERT_EQ_INT(LR_JWT_ALG, verify("eyJhbGciOiJFUzI1NiJ9.eyJleHAiOjF9.c2ln", "k"));
  /* Header without alg, or not an object. */
  ASSERT_EQ_INT(LR_JWT_MALFORMED, verify("e30.eyJleHAiOjF9.c2ln", "k"));
  ASSERT_EQ_INT(LR_JWT_MALFORMED, verify("WzFd.eyJleHAiOjF9.c2ln", "k"));
}

TEST(jwt_any_single_byte_change_is_refused) {
  char *tok = sign(CLAIMS, "k");
  size_t n = strlen(tok);
  const char repl[] = {'A', 'b', '0', '-', '_', '.', '=', '%'};
  for (size_t i = 0; i < n; i++) {
    for (size_t r = 0; r < sizeof repl; r++) {
      char saved = tok[i];
      if (repl[r] == saved) continue;
      tok[i] = repl[r];
      lr_jwt_status st = verify(tok, "k");
      tok[i] = saved;
      if (st == LR_JWT_OK) LR_TEST_FAIL("byte %zu changed to %c still verifies", i, repl[r]);
    }
  }
  ASSERT_EQ_INT(LR_JWT_OK, verify(tok, "k"));
  free(tok);
}

TEST(jwt_length_bound_and_claims_shape) {
  size_t n = LR_JWT_MAX_TOKEN + 1;
  char *big = malloc(n + 1);
  memset(big, 'A', n);
  big[10] = '.';
  big[20] = '.';
  big[n] = 0;
  ASSERT_EQ_INT(LR_JWT_MALFORMED, verify(big, "k"));
  free(big);
  char err[128];
  ASSERT(lr_jwt_sign("[1,2]", "k", 1, err, sizeof err) == NULL);
  ASSERT(lr_jwt_sign("{}", "", 0, err, sizeof err) == NULL);
  ASSERT(strstr(err, "secret") != NULL);
}

TEST(jwt_reasons) {
  ASSERT_EQ_STR("expired", lr_jwt_reason(LR_JWT_EXPIRED));
  ASSERT_EQ_STR("not yet valid", lr_jwt_reason(LR_JWT_NOT_YET));
  ASSERT_EQ_STR("bad signature", lr_jwt_reason(LR_JWT_BAD_SIGNATURE));
  ASSERT_EQ_STR("algorithm not allowed", lr_jwt_reason(LR_JWT_ALG));
  ASSERT_EQ_STR("malformed", lr_jwt_reason(LR_JWT_MALFORMED));
}

/*
 * lr_jwt.h - JSON Web Token verification (HS256 only) and a small HS256 signer,
 * on top of libjwt 1.10 (the 1.x API: jwt_decode, jwt_get_alg,
 * jwt_get_grants_json).
 *
 * Owns: the accept/refuse rules for tokens (protocol.md Part 1 row 16 and
 * Part 2 section 7.3): HMAC-SHA256 with key = the bytes of the secret,
 * header alg exactly "HS256" (none, HS384/512, RS*, ES*, ... are refused),
 * `exp` > now and `nbf` <= now when present (a token without `exp` is
 * accepted, as by the reference, unless the caller requires it), claims an
 * object.
 * Must not: know about Lua, rooms or sockets; read the environment (the
 * caller passes the secret); log or copy the secret anywhere (error texts
 * never contain it, nor the token).
 *
 * Threading: no global state; safe from any thread.
 * Name: not "jwt.h", which would shadow libjwt's <jwt.h> (host/ is on the
 * include path).
 */
#ifndef LR_LR_JWT_H
#define LR_LR_JWT_H

#include <stddef.h>
#include <stdint.h>

#include "value.h"

/* Longest token accepted (bytes). Longer ones are refused as malformed
 * before any decoding. */
#define LR_JWT_MAX_TOKEN 8192

/* Limits for the claims document (nesting, values). */
#define LR_JWT_CLAIMS_DEPTH 32
#define LR_JWT_CLAIMS_ELEMENTS 10000

typedef enum lr_jwt_status {
  LR_JWT_OK = 0,
  LR_JWT_NO_TOKEN,      /* "no token": NULL or empty */
  LR_JWT_MALFORMED,     /* "malformed": not three base64url parts, bad JSON, too long, ... */
  LR_JWT_ALG,           /* "algorithm not allowed": header alg is not HS256 */
  LR_JWT_BAD_SIGNATURE, /* "bad signature": well-formed HS256 token, wrong MAC */
  LR_JWT_EXPIRED,       /* "expired": exp <= now */
  LR_JWT_NOT_YET,       /* "not yet valid": nbf > now */
  LR_JWT_NO_EXP,        /* "missing exp": no exp claim, and LR_JWT_REQUIRE_EXP */
  LR_JWT_NO_SECRET,     /* "no secret": the caller passed an empty secret */
} lr_jwt_status;

/* The reason string of a status ("expired", "bad signature", ...). Static. */
const char *lr_jwt_reason(lr_jwt_status st);

/* Verify token[0..len) with secret[0..secret_len) at time now (Unix
 * seconds). The token needs no NUL terminator. Checks, in order: length
 * (<= LR_JWT_MAX_TOKEN), shape (three base64url segments), header alg ==
 * "HS256", signature, claims an object, exp (when present), nbf (when present).
 * On LR_JWT_OK, and only then, the outputs that are non-NULL are set:
 *   *claims_json  the claims as JSON text (jwt_get_grants_json; free() it),
 *   *claims       the claims decoded by lr_json_decode (refs == 1; release it).
 * Numbers: integers stay int64; fractions are the same double as sent.
 * Never logs. An empty secret is refused (LR_JWT_NO_SECRET): libjwt would
 * otherwise decode without checking any signature. */
lr_jwt_status lr_jwt_verify(const char *token, size_t len, const char *secret, size_t secret_len,
                            int64_t now, char **claims_json, lr_node **claims);

/* lr_jwt_verify with flags: LR_JWT_REQUIRE_EXP refuses a token without an
 * exp claim (LR_JWT_NO_EXP). lr_jwt_verify is this with flags 0. */
#define LR_JWT_REQUIRE_EXP 1u
lr_jwt_status lr_jwt_verify_flags(const char *token, size_t len, const char *secret,
                                  size_t secret_len, int64_t now, unsigned flags,
                                  char **claims_json, lr_node **claims);

/* Sign claims_json (a JSON object; NUL-terminated) with HS256 and secret.
 * The header is {"alg":"HS256","typ":"JWT"}; the claims are written as given
 * (the caller adds iat/exp). Returns a new token (free() it), or NULL with a
 * message in err (never containing the secret). */
char *lr_jwt_sign(const char *claims_json, const char *secret, size_t secret_len, char *err,
                  size_t errlen);

#endif

/*
 * json.h - the JSON codec of the host: wire and storage text <-> lr_node, and
 * the patch encoder that turns the dirty marks of value.h into one packet.
 *
 * Owns: parsing (bounded, strict, UTF-8 validating), number formatting that
 * keeps values exact, patch and persist-op emission.
 * Must not: know about Lua, rooms, sockets or storage backends.
 *
 * Numbers
 * - Decoding (the wire: client frames, HTTP bodies; the default): a number
 *   with no fraction and no exponent within +-2^53 is LR_INT; anything else
 *   is LR_FLOAT (strtod, correctly rounded), which is what JavaScript's
 *   JSON.parse gives: 9223372036854775807 arrives as 2^63 (a double), never
 *   as an integer that room arithmetic could wrap to a negative number.
 *   lr_json_decode_exact (storage: values the room itself wrote): an integer
 *   that fits int64 stays LR_INT, so room integers round-trip exactly.
 * - Encoding: LR_INT as decimal. LR_FLOAT like JavaScript's Number#toString:
 *   integral values with |x| < 1e21 print without fraction or exponent
 *   (2^53 -> 9007199254740992); otherwise the SHORTEST representation that
 *   round-trips through strtod (0.1+0.2 -> 0.30000000000000004, 0.1 -> 0.1,
 *   1e-7 -> 1e-7, 1e21 -> 1e+21). NaN and +-Inf encode as null.
 * Strings: output escapes '"', '\\', and control characters < 0x20 (\n \r \t
 *   \b \f, others as \u00XX); everything else (valid UTF-8) is copied as is.
 *   Input: all JSON escapes including surrogate pairs; invalid UTF-8, lone
 *   surrogates, raw control characters are errors.
 */
#ifndef LR_JSON_H
#define LR_JSON_H

#include "buf.h"
#include "utf8.h"
#include "value.h"

typedef struct lr_json_limits {
  uint32_t max_depth;    /* nesting of arrays/objects; default 64 */
  uint32_t max_elements; /* total values in the document; default 100000 */
} lr_json_limits;

#define LR_JSON_DEFAULT_LIMITS ((lr_json_limits){64, 100000})

/* Parse exactly one JSON document (surrounding whitespace allowed).
 * Returns a new tree (refs == 1) or NULL with a message in err (e.g.
 * "invalid JSON at offset 12: expected ':'", "JSON nested deeper than 64",
 * "invalid UTF-8 at offset 3"). err may be NULL. limits may be NULL (default). */
lr_node *lr_json_decode(const char *text, size_t len, const lr_json_limits *limits, char *err,
                        size_t errlen);

/* The same for storage text: integers that fit int64 stay LR_INT. */
lr_node *lr_json_decode_exact(const char *text, size_t len, const lr_json_limits *limits, char *err,
                              size_t errlen);

/* lr_utf8_valid (utf8.h) is included for the callers that validate text
 * they hand to the codec. */

/* The host's one JSON string scanner (the parser here, storage.c's value
 * check, storage_memory.c's snapshot loader): the string literal at s[*pos]
 * (which must be '"') with every escape (surrogate pairs joined), raw UTF-8
 * checked (utf8.h), no raw control character. A NULL scratch validates only.
 * Otherwise *out and *outlen give the unescaped text: into s when it had no
 * escape, else into scratch (reset first). Returns 0 with *pos just past
 * the closing quote, or -1 with *why (a static message; lr_json_bad_utf8
 * for invalid UTF-8) and *at (the offending offset; the opening quote for
 * an unterminated string). out/outlen may be NULL.
 * flags LR_JSON_SCAN_SURROGATES (validate only, scratch NULL): a \u escape
 * of a lone surrogate is accepted, as JavaScript's JSON.stringify writes it
 * (storage values written by the reference server). */
#define LR_JSON_SCAN_SURROGATES 1
int lr_json_scan_string(const char *s, size_t len, size_t *pos, int flags, lr_buf *scratch,
                        const char **out, size_t *outlen, const char **why, size_t *at);
extern const char lr_json_bad_utf8[]; /* "invalid UTF-8" */

/* Append a JSON string literal for s (quotes included). */
void lr_json_put_string(lr_buf *out, const char *s, size_t len);
/* Append a number exactly as described above. */
void lr_json_put_double(lr_buf *out, double f);

/* Append the JSON text of n. skip_flags: children (object members, at any
 * depth) whose node flags intersect skip_flags are omitted; pass 0 for all,
 * LR_F_NOSYNC for what clients may see, LR_F_NOPERSIST for storage. The node
 * itself is always written. */
void lr_json_encode(const lr_node *n, uint8_t skip_flags, lr_buf *out);

/* Append the sync patch of root for channel ch: a JSON object containing,
 * for every node marked SELF on ch, its full value (encoded with
 * skip_flags = the channel's exclusion flag) nested at its path, and for every
 * pending deletion the string "$delete" at the deleted key. Objects on the way
 * are written as objects even if their keys look numeric (Part 1 row 4).
 * Keys appear in the container's member order, deletions after members.
 * Writes "{}" when nothing is dirty. Does not clear the marks. */
void lr_json_encode_patch(const lr_node *root, int ch, lr_buf *out);

/* Persist operations for channel LR_CH_PERSIST, in tree order: one call of
 * put(path, json) for every SELF node (path dot-joined, array indices
 * decimal; json is the value encoded with skip LR_F_NOPERSIST) and one call of
 * del(path) for every pending deletion. Buffers passed to the callbacks are
 * only valid during the call. Does not clear the marks. */
typedef struct lr_persist_ops {
  void *ud;
  /* n: the node written (valid during the call) */
  void (*put)(void *ud, const char *path, size_t pathlen, const char *json, size_t jsonlen,
              const lr_node *n);
  void (*del)(void *ud, const char *path, size_t pathlen);
} lr_persist_ops;
void lr_json_walk_persist(const lr_node *root, const lr_persist_ops *ops);

#endif

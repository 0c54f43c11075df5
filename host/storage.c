/*
 * storage.c - the backend-neutral part of storage: the --storage spec parser
 * and the checks every backend runs before it writes anything.
 *
 * Owns: lr_store_open_spec_L() (the one parser of storage specs), error
 * formatting, the allocation-free JSON grammar scanner (strings: json.c's
 * lr_json_scan_string) used to validate PUT values and to
 * find raw value spans in memory snapshots, and lr__store_check_ops().
 * Must not: hold state, know about SQLite or the memory maps, build JSON
 * trees, or know the key layout of rooms.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "json.h"
#include "storage.h"
#include "storage_postgres.h"
#include "utf8.h"

void lr__store_errf(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* ---- JSON grammar scanner ---- */

static int is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
static int is_digit(char c) {
  return c >= '0' && c <= '9';
}

static size_t skip_ws(const char *s, size_t len, size_t p) {
  while (p < len && is_ws(s[p]))
    p++;
  return p;
}

/* s[*p] == '"'. Validates the string (json.c's scanner: escapes, raw
 * UTF-8, no control characters; a lone surrogate escape is stored as the
 * reference stores it) and leaves *p past the closing quote, or at the
 * fault. Returns 0 or -1. */
static int scan_string(const char *s, size_t len, size_t *p, const char **why) {
  size_t at;
  if (lr_json_scan_string(s, len, p, LR_JSON_SCAN_SURROGATES, NULL, NULL, NULL, why, &at) == 0)
    return 0;
  *p = at;
  return -1;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int scan_number(const char *s, size_t len, size_t *p, const char **why) {
  size_t i = *p;
  if (i < len && s[i] == '-') i++;
  if (i < len && s[i] == '0') {
    i++;
  } else if (i < len && is_digit(s[i])) {
    while (i < len && is_digit(s[i]))
      i++;
  } else {
    goto bad;
  }
  if (i < len && s[i] == '.') {
    i++;
    if (i >= len || !is_digit(s[i])) goto bad;
    while (i < len && is_digit(s[i]))
      i++;
  }
  if (i < len && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < len && (s[i] == '+' || s[i] == '-')) i++;
    if (i >= len || !is_digit(s[i])) goto bad;
    while (i < len && is_digit(s[i]))
      i++;
  }
  *p = i;
  return 0;
bad:
  *why = "invalid number";
  *p = i;
  return -1;
}

/* A string, number or literal at s[*p] (not whitespace). 0 or -1. */
static int scan_scalar(const char *s, size_t len, size_t *p, const char **why) {
  char c = s[*p];
  if (c == '"') return scan_string(s, len, p, why);
  if (c == '-' || is_digit(c)) return scan_number(s, len, p, why);
  static const char *const lits[] = {"true", "false", "null"};
  for (size_t i = 0; i < 3; i++) {
    size_t l = strlen(lits[i]);
    if (len - *p >= l && memcmp(s + *p, lits[i], l) == 0) {
      *p += l;
      return 0;
    }
  }
  *why = "unexpected character";
  return -1;
}

/* Push c on the container stack, moving it onto the heap when full. */
static void stack_push(char **stack, size_t *depth, size_t *cap, const char *small, char c) {
  if (*depth == *cap) {
    size_t ncap = *cap * 2;
    char *ns = lr_xmalloc(ncap);
    memcpy(ns, *stack, *depth);
    if (*stack != small) free(*stack);
    *stack = ns;
    *cap = ncap;
  }
  (*stack)[(*depth)++] = c;
}

enum { SC_VALUE, SC_KEY, SC_AFTER };

int lr__store_json_scan(const char *s, size_t len, size_t *pos, char *err, size_t errlen) {
  /* Open containers as '{' / '['; grows onto the heap past 64 levels. */
  char small[64], *stack = small;
  size_t depth = 0, cap = sizeof small;
  size_t p = *pos;
  const char *why = NULL;
  int state = SC_VALUE;

  for (;;) {
    if (state == SC_VALUE) {
      p = skip_ws(s, len, p);
      if (p >= len) {
        why = "unexpected end of input";
        goto fail;
      }
      char c = s[p];
      if (c == '{' || c == '[') {
        size_t q = skip_ws(s, len, p + 1);
        if (q < len && s[q] == (c == '{' ? '}' : ']')) {
          p = q + 1;
          state = SC_AFTER;
          continue;
        }
        stack_push(&stack, &depth, &cap, small, c);
        p++;
        state = c == '{' ? SC_KEY : SC_VALUE;
        continue;
      }
      if (scan_scalar(s, len, &p, &why)) goto fail;
      state = SC_AFTER;
    } else if (state == SC_KEY) {
      p = skip_ws(s, len, p);
      if (p >= len || s[p] != '"') {
        why = "expected a string key";
        goto fail;
      }
      if (scan_string(s, len, &p, &why)) goto fail;
      p = skip_ws(s, len, p);
      if (p >= len || s[p] != ':') {
        why = "expected ':'";
        goto fail;
      }
      p++;
      state = SC_VALUE;
    } else { /* SC_AFTER */
      if (depth == 0) break;
      p = skip_ws(s, len, p);
      char open = stack[depth - 1];
      if (p < len && s[p] == ',') {
        p++;
        state = open == '{' ? SC_KEY : SC_VALUE;
      } else if (p < len && s[p] == (open == '{' ? '}' : ']')) {
        p++;
        depth--;
      } else {
        why = open == '{' ? "expected ',' or '}'" : "expected ',' or ']'";
        goto fail;
      }
    }
  }
  if (stack != small) free(stack);
  *pos = p;
  return 0;
fail:
  if (stack != small) free(stack);
  lr__store_errf(err, errlen, "%s at offset %zu", why, p);
  return -1;
}

/* ---- op validation ---- */

static const char *kind_name(lr_store_op_kind k) {
  switch (k) {
  case LR_STORE_PUT:
    return "PUT";
  case LR_STORE_DEL:
    return "DEL";
  case LR_STORE_DEL_PREFIX:
    return "DEL_PREFIX";
  }
  return "?";
}

/* Keys in messages: at most 48 bytes, non-printable bytes as '?'. */
static void key_preview(const char *k, size_t n, char *out, size_t outlen) {
  size_t j = 0;
  for (size_t i = 0; i < n && j + 4 < outlen; i++) {
    unsigned char c = (unsigned char)k[i];
    if (i == 48) {
      memcpy(out + j, "...", 3);
      j += 3;
      break;
    }
    out[j++] = (c >= 0x20 && c != 0x7F) ? (char)c : '?';
  }
  out[j] = '\0';
}

int lr__store_check_ops(const char *ns, const char *room, const lr_store_op *ops, size_t n,
                        char *err, size_t errlen) {
  if (!ns || !room) {
    lr__store_errf(err, errlen, "storage: namespace and room id are required");
    return LR_STORE_EARG;
  }
  if (!lr_utf8_valid(ns, strlen(ns)) || !lr_utf8_valid(room, strlen(room))) {
    lr__store_errf(err, errlen, "storage: namespace or room id is not valid UTF-8");
    return LR_STORE_EARG;
  }
  if (n && !ops) {
    lr__store_errf(err, errlen, "storage: %zu ops given but ops is NULL", n);
    return LR_STORE_EARG;
  }
  for (size_t i = 0; i < n; i++) {
    const lr_store_op *o = &ops[i];
    char kp[64], why[96];
    if (o->kind != LR_STORE_PUT && o->kind != LR_STORE_DEL && o->kind != LR_STORE_DEL_PREFIX) {
      lr__store_errf(err, errlen, "storage: op %zu has unknown kind %d", i, (int)o->kind);
      return LR_STORE_EARG;
    }
    if (!o->key && o->keylen) {
      lr__store_errf(err, errlen, "storage: op %zu (%s) has a NULL key", i, kind_name(o->kind));
      return LR_STORE_EARG;
    }
    const char *key = o->key ? o->key : "";
    if (memchr(key, '\0', o->keylen) || !lr_utf8_valid(key, o->keylen)) {
      key_preview(key, o->keylen, kp, sizeof kp);
      lr__store_errf(err, errlen, "storage: op %zu (%s \"%s\"): key is not valid UTF-8 text", i,
                     kind_name(o->kind), kp);
      return LR_STORE_EARG;
    }
    if (o->kind != LR_STORE_PUT) continue;
    if (!o->val) {
      key_preview(key, o->keylen, kp, sizeof kp);
      lr__store_errf(err, errlen, "storage: op %zu (PUT \"%s\"): value is NULL", i, kp);
      return LR_STORE_EARG;
    }
    size_t p = 0;
    if (lr__store_json_scan(o->val, o->vallen, &p, why, sizeof why) == 0) {
      p = skip_ws(o->val, o->vallen, p);
      if (p == o->vallen) continue;
      snprintf(why, sizeof why, "trailing characters at offset %zu", p);
    }
    key_preview(key, o->keylen, kp, sizeof kp);
    lr__store_errf(err, errlen, "storage: op %zu (PUT \"%s\"): value is not valid JSON: %s", i, kp,
                   why);
    return LR_STORE_EARG;
  }
  return 0;
}

/* ---- files ---- */

int lr__store_mkdir_parent(const char *path, char *err, size_t errlen) {
  const char *slash = strrchr(path, '/');
  if (!slash || slash == path) return 0; /* relative to cwd, or in "/" */
  char *dir = lr_xstrndup(path, (size_t)(slash - path));
  int rc = 0;
  for (char *p = dir + 1;; p++) {
    if (*p != '/' && *p != '\0') continue;
    char saved = *p;
    *p = '\0';
    struct stat st;
    if (stat(dir, &st) != 0) {
      if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        lr__store_errf(err, errlen, "storage: cannot create directory %s: %s", dir,
                       strerror(errno));
        rc = LR_STORE_EIO;
        break;
      }
    } else if (!S_ISDIR(st.st_mode)) {
      lr__store_errf(err, errlen, "storage: %s exists and is not a directory", dir);
      rc = LR_STORE_EIO;
      break;
    }
    *p = saved;
    if (!saved) break;
  }
  free(dir);
  return rc;
}

/* ---- spec ---- */

lr_store *lr_store_open_spec(const char *spec, char *err, size_t errlen) {
  return lr_store_open_spec_L(NULL, spec, err, errlen);
}

lr_store *lr_store_open_spec_L(struct lua_State *L, const char *spec, char *err, size_t errlen) {
  if (!spec) {
    lr__store_errf(err, errlen, "storage: no storage spec given");
    return NULL;
  }
  if (strncmp(spec, "lua:", 4) == 0) {
    if (L) return lr_store_lua_open(L, spec + 4, err, errlen);
    lr__store_errf(err, errlen, "storage spec '%s' needs a Lua state", spec);
    return NULL;
  }
  if (strcmp(spec, "memory") == 0) return lr_store_memory_open(NULL, err, errlen);
  if (strncmp(spec, "postgres://", 11) == 0 || strncmp(spec, "postgresql://", 13) == 0) {
    lr_pg_opts po = {.conninfo = spec};
    return lr_store_postgres_open(&po, err, errlen);
  }
  const char *path = NULL;
  int sqlite = 0;
  if (strncmp(spec, "memory:", 7) == 0) {
    path = spec + 7;
  } else if (strncmp(spec, "sqlite:", 7) == 0) {
    path = spec + 7;
    sqlite = 1;
  } else {
    lr__store_errf(err, errlen,
                   "unknown storage spec '%s' (expected memory, memory:SNAPSHOT, sqlite:PATH or "
                   "postgres://...)",
                   spec);
    return NULL;
  }
  if (!*path) {
    lr__store_errf(err, errlen, "storage spec '%s' has an empty path", spec);
    return NULL;
  }
  if (!sqlite) return lr_store_memory_open(path, err, errlen);
  /* sqlite:PATH[?busy_timeout=MS&journal_mode=MODE&table=NAME&max_page_count=N] */
  char buf[1024];
  if (strlen(path) >= sizeof buf) {
    lr__store_errf(err, errlen, "storage spec is too long");
    return NULL;
  }
  strcpy(buf, path);
  lr_sqlite_opts o = {.path = buf};
  char *q = strchr(buf, '?');
  if (q) {
    *q++ = 0;
    for (char *save = NULL, *kv = strtok_r(q, "&", &save); kv; kv = strtok_r(NULL, "&", &save)) {
      char *v = strchr(kv, '=');
      if (!v) goto bad;
      *v++ = 0;
      if (strcmp(kv, "busy_timeout") == 0 || strcmp(kv, "max_page_count") == 0) {
        char *end = NULL;
        errno = 0;
        long n = strtol(v, &end, 10);
        if (!*v || *end || errno || n < 0 || n > 2147483647L) {
          lr__store_errf(err, errlen, "storage spec '%s': %s=%s is not a whole number", spec, kv,
                         v);
          return NULL;
        }
        if (kv[0] == 'b')
          o.busy_timeout_ms = (int)n;
        else
          o.max_page_count = n;
      } else if (strcmp(kv, "journal_mode") == 0)
        o.journal_mode = v;
      else if (strcmp(kv, "table") == 0)
        o.table = v;
      else
        goto bad;
      continue;
    bad:
      lr__store_errf(err, errlen,
                     "storage spec '%s': unknown option '%s' (busy_timeout, journal_mode, table, "
                     "max_page_count)",
                     spec, kv);
      return NULL;
    }
  }
  return lr_store_sqlite_open(&o, err, errlen);
}

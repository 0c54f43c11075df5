/*
 * buf.c - growable byte buffers, refcounted outgoing messages and the
 * abort-on-OOM allocation helpers every other host module uses.
 *
 * Owns: the storage behind lr_buf and lr_msg.
 * Must not: know about JSON, Lua, rooms or sockets; return NULL from an
 * allocation (out of memory is fatal for the host: it aborts with a message).
 */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void lr_oom(size_t n) {
  fprintf(stderr, "lunaroom: out of memory (allocating %zu bytes)\n", n);
  abort();
}

void *lr_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) lr_oom(n);
  return p;
}

/* Small blocks (nodes, members, records: most of the host's) come from
 * malloc and are zeroed here: glibc's calloc bypasses the per-thread cache
 * that malloc and free use, so every small calloc took malloc's slow path.
 * Large blocks keep calloc (it skips zeroing pages fresh from the kernel). */
#define LR_SMALL_ZEROED 512

void *lr_xcalloc(size_t n, size_t sz) {
  if (n && sz && n <= LR_SMALL_ZEROED / sz) {
    void *p = malloc(n * sz);
    if (!p) lr_oom(n * sz);
    __asm__ volatile("" : : "r"(p) : "memory"); /* or the compiler makes it calloc again */
    return memset(p, 0, n * sz);
  }
  void *p = calloc(n ? n : 1, sz ? sz : 1);
  if (!p) lr_oom(n * sz);
  return p;
}

void *lr_xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) lr_oom(n);
  return q;
}

char *lr_xstrndup(const char *s, size_t n) {
  char *d = lr_xmalloc(n + 1);
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

void lr_buf_init(lr_buf *b) {
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

void lr_buf_free(lr_buf *b) {
  free(b->data);
  lr_buf_init(b);
}

/* Grow so that len + n bytes plus a terminator fit. Capacity at least
 * doubles so a sequence of appends is amortised O(1). */
void lr_buf_reserve(lr_buf *b, size_t n) {
  if (n > (size_t)-1 - b->len - 1) lr_oom((size_t)-1);
  size_t need = b->len + n + 1;
  if (need <= b->cap) return;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < need)
    cap = cap > (size_t)-1 / 2 ? need : cap * 2;
  b->data = lr_xrealloc(b->data, cap);
  b->cap = cap;
}

void lr_buf_put(lr_buf *b, const void *p, size_t n) {
  lr_buf_reserve(b, n);
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
}

void lr_buf_putc(lr_buf *b, char c) {
  if (b->len + 2 > b->cap) lr_buf_reserve(b, 1);
  b->data[b->len++] = c;
  b->data[b->len] = '\0';
}

void lr_buf_puts(lr_buf *b, const char *s) {
  lr_buf_put(b, s, strlen(s));
}

void lr_buf_printf(lr_buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  size_t room = b->cap > b->len ? b->cap - b->len : 0;
  int n = vsnprintf(room ? b->data + b->len : NULL, room, fmt, ap);
  va_end(ap);
  if (n < 0) { /* encoding error: append nothing */
    if (b->data) b->data[b->len] = '\0';
    return;
  }
  if ((size_t)n >= room) {
    lr_buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  b->len += (size_t)n;
}

const char *lr_buf_cstr(lr_buf *b) {
  if (!b->data) lr_buf_reserve(b, 0);
  b->data[b->len] = '\0';
  return b->data;
}

lr_msg *lr_msg_new(const void *payload, size_t len) {
  if (len > UINT32_MAX) lr_oom(len);
  lr_msg *m = lr_xmalloc(sizeof(lr_msg) + LR_MSG_PRE + len + 1);
  m->refs = 1;
  m->len = (uint32_t)len;
  if (len) memcpy(m->data + LR_MSG_PRE, payload, len);
  m->data[LR_MSG_PRE + len] = '\0';
  return m;
}

void lr_msg_release(lr_msg *m) {
  if (m && --m->refs == 0) free(m);
}

/*
 * buf.h - growable byte buffers and refcounted, encode-once outgoing messages.
 *
 * Owns: lr_buf (a plain growable byte string) and lr_msg (an immutable encoded
 * packet shared by every connection it is queued on).
 * Must not: know about JSON, Lua, rooms or sockets.
 */
#ifndef LR_BUF_H
#define LR_BUF_H

#include <stddef.h>
#include <stdint.h>

/* Bytes of headroom in front of every lr_msg payload: the transport writes
 * a frame header (at most 10 bytes) into it and hands libwebsockets the
 * header + payload, which needs LWS_PRE (16 on 4.1) more bytes in front of
 * what it writes; net_int.h asserts that both fit. */
#define LR_MSG_PRE 32

typedef struct lr_buf {
  char *data; /* NUL-terminated when len > 0 or after lr_buf_cstr() */
  size_t len;
  size_t cap;
} lr_buf;

/* Initialise an empty buffer (no allocation). */
void lr_buf_init(lr_buf *b);
/* Free the storage; the buffer is empty and reusable afterwards. */
void lr_buf_free(lr_buf *b);
/* Drop contents but keep capacity. */
static inline void lr_buf_reset(lr_buf *b) {
  b->len = 0;
}
/* Ensure room for n more bytes (+1 for a terminator). Aborts on OOM. */
void lr_buf_reserve(lr_buf *b, size_t n);
void lr_buf_put(lr_buf *b, const void *p, size_t n);
void lr_buf_putc(lr_buf *b, char c);
void lr_buf_puts(lr_buf *b, const char *s);
void lr_buf_printf(lr_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Returns data NUL-terminated (never NULL). */
const char *lr_buf_cstr(lr_buf *b);

/* An encoded packet. Created with refs == 1; every queue that holds it owns
 * one reference. The payload starts at data + LR_MSG_PRE and is len bytes. */
typedef struct lr_msg {
  uint32_t refs;
  uint32_t len;
  unsigned char data[]; /* LR_MSG_PRE headroom, then len bytes, then NUL */
} lr_msg;

/* Copy len bytes into a new message (refs == 1). Aborts on OOM. */
lr_msg *lr_msg_new(const void *payload, size_t len);
static inline const char *lr_msg_payload(const lr_msg *m) {
  return (const char *)m->data + LR_MSG_PRE;
}
static inline lr_msg *lr_msg_retain(lr_msg *m) {
  m->refs++;
  return m;
}
/* Drop one reference; frees at zero. NULL is ignored. */
void lr_msg_release(lr_msg *m);

/* Allocation helpers that abort with a message on OOM. */
void *lr_xmalloc(size_t n);
void *lr_xcalloc(size_t n, size_t sz);
void *lr_xrealloc(void *p, size_t n);
char *lr_xstrndup(const char *s, size_t n);

#endif

/*
 * fuzz_server.h - a headless engine for the fuzz targets: one Lua state for
 * the process, a fresh server (memory storage, virtual clock) per input with
 * the room definitions of rooms/ and host/tests/fuzz/rooms/ loaded once, and
 * a recording transport for WebSocket connections.
 *
 * Owns: setup and teardown of that engine, the fake transport.
 * Must not: reach into static functions of the engine (everything goes
 * through server.h / engine.h, as net.c and the headless client do).
 */
#ifndef LR_FUZZ_SERVER_H
#define LR_FUZZ_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include "engine.h"
#include "server.h"

/* One fake WebSocket client. */
typedef struct fz_conn {
  lr_conn *c;        /* NULL until opened, and after fz_conn_close */
  int close_code;    /* -1 while the server has not closed it */
  unsigned received; /* packets sent to it */
  unsigned errors;   /* of which {"type":"error",...} packets */
} fz_conn;

/* Create (once) the Lua state and load the room definitions; then a fresh
 * server. Aborts on any setup failure. The previous server, if any, must
 * have been released with fz_server_free. */
lr_server *fz_server_new(void);
/* Shut down and free s (every fz_conn must be closed first), then collect
 * garbage; aborts if the Lua heap keeps growing across inputs (more than
 * 4 MiB above what it was after the first input). */
void fz_server_free(lr_server *s);

/* Open a WebSocket on path/query with headers (name: value pairs, names
 * lower-case). Returns the upgrade's HTTP status (0 = accepted). */
int fz_conn_open(lr_server *s, fz_conn *fc, const char *path, const char *query,
                 const lr_header *headers, size_t nheaders);
/* One frame from the client; then the server's tick. */
void fz_conn_send(lr_server *s, fz_conn *fc, const char *data, size_t len);
/* The socket goes away (client side, or after the server's close). */
void fz_conn_close(lr_server *s, fz_conn *fc);

/* JSON text of room ns/id's whole state into out (reset first); false if the
 * room does not exist or has no state. */
bool fz_room_state(lr_server *s, const char *ns, const char *id, lr_buf *out);

#endif

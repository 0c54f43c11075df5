/*
 * fuzz_packet.c - libFuzzer target: the action packet path of the engine, as
 * a WebSocket client reaches it (lr_conn_message: rate limit, JSON decode
 * with the wire limits, {action, value} shape, guards, schema validation,
 * handlers with budget and rollback, sync encoding, interceptor).
 *
 * Input: up to 16 frames separated by the byte 0x1E (a byte no JSON text
 * can hold outside a string, where it is invalid anyway). The first byte
 * picks the room: fuzz room "fz-a" (host/tests/fuzz/rooms/fuzz.lua) by
 * default, 'g' the example game room, 'c' the chat room. A second client is
 * in the room so broadcasts and the interceptor run.
 *
 * Invariant: a frame answered with an error packet (invalid_packet,
 * unknown_action, guard, validation, handler, rate_limit) leaves the room's
 * state exactly as it was (README: "Rejected input ... changes nothing").
 * Must not: keep state across inputs (a new server per input).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_server.h"

#define MAX_FRAMES 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p = (const char *)data, *end = p + size;
  const char *path = "/parties/main/fz-a", *id = "fz-a";
  if (size > 0 && (*p == 'g' || *p == 'c')) {
    path = *p == 'g' ? "/parties/main/game" : "/parties/main/chat-fuzz";
    id = *p == 'g' ? "game" : "chat-fuzz";
    p++;
  }
  lr_server *s = fz_server_new();
  fz_conn a, b;
  lr_header h[1] = {{"host", "fuzz"}};
  if (fz_conn_open(s, &a, path, "id=alice&name=alice", h, 1) != 0) abort();
  if (fz_conn_open(s, &b, path, "id=bob", h, 1) != 0) abort();
  if (a.close_code >= 0 || b.close_code >= 0) abort(); /* both must be admitted */

  lr_buf before, after;
  lr_buf_init(&before);
  lr_buf_init(&after);
  for (int f = 0; f < MAX_FRAMES && p <= end && a.close_code < 0; f++) {
    const char *sep = memchr(p, 0x1E, (size_t)(end - p));
    const char *fe = sep ? sep : end;
    bool had = fz_room_state(s, "main", id, &before);
    unsigned errs = a.errors;
    fz_conn_send(s, &a, p, (size_t)(fe - p));
    if (a.errors != errs && had) {
      if (!fz_room_state(s, "main", id, &after) || before.len != after.len ||
          memcmp(before.data, after.data, before.len) != 0) {
        fprintf(stderr,
                "fuzz_packet: frame %d was rejected but changed the state\n"
                "before: %.*s\nafter:  %.*s\n",
                f, (int)before.len, before.data, (int)after.len, after.data);
        abort();
      }
    }
    if (!sep) break;
    p = sep + 1;
  }
  lr_buf_free(&before);
  lr_buf_free(&after);
  fz_conn_close(s, &a);
  fz_conn_close(s, &b);
  fz_server_free(s);
  return 0;
}

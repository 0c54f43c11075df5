/*
 * engine_int.h - declarations the engine files share among themselves
 * (room.c, sync.c, timer.c, idle.c, router.c) and nobody else.
 *
 * Owns: the engine's internal calls between its files.
 * Must not: be included outside those files (features use engine.h).
 */
#ifndef LR_ENGINE_INT_H
#define LR_ENGINE_INT_H

#include "engine.h"

/* ---- room.c ---- */
void lr_server_deliver_closes(lr_server *s);
/* Run the room's connect for c (joining, c->room set), then its early frames. */
void lr_conn_connect(lr_conn *c, const lr_request *req);

/* ---- sync.c ---- */
void lr_room_outbox_free(lr_room *r);
void lr_room_report_unwritten(lr_room *r, const char *what);
void lr_room_set_failing(lr_room *r, bool engine, bool on, const char *err);
void lr_room_encode_snapshot(lr_room *r, const char *public_id, lr_buf *out);
void lr_conn_send_raw(lr_conn *c, lr_msg *m);
void lr_conn_transport_send(lr_conn *c, lr_msg *m);
void lr_room_retry_storage(lr_room *r);
void lr_room_gate_settle(lr_room *r);
/* Bound to the server's store with the server as ud (lr_server_new). */
extern const lr_store_host lr_engine_store_host;

/* ---- timer.c ---- */
int64_t lr_wall_ms(void);
int64_t lr_mono_ms(void);
double lr_mono_s(void);
void lr_timer_free(lr_server *s, lr_timer *t);

/* ---- idle.c ---- */
void lr_room_set_hibernated(lr_room *r, bool on);
void lr_room_idle_check(lr_room *r);
void lr_room_arm_idle(lr_room *r);
/* r gained a connection: an idle timer armed for its eviction only is
 * cancelled (the close of its last connection arms it again). */
void lr_room_idle_joined(lr_room *r);
/* The pending timer with this id, or NULL (it fired, was cancelled, or is
 * unknown). */
lr_timer *lr_timer_find(lr_server *s, uint64_t id);

/* ---- router.c ---- */
void lr_waits_free(lr_server *s);
void lr_waits_close(lr_server *s);

#endif

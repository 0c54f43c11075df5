/*
 * relay_id.h - what a process that relays a client to the room's owner
 * (shard.c: a shard process; cluster.c: a cluster node that does not own the
 * room) needs to speak for that client: its private id as the room derives
 * its session id, query parameters, percent coding, a request header, the
 * uplink protocol's client messages, the owner's answer to a forwarded
 * request.
 * Owns: these text helpers, one copy for both relays. Must not: keep state,
 * know about links, rooms or the engine.
 */
#ifndef LR_RELAY_ID_H
#define LR_RELAY_ID_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "engine.h"
#include "fetch.h"

/* The value of query parameter name (raw, still percent-encoded; *len is its
 * length), or NULL. q is the query without '?'. */
const char *lr_query_param(const char *q, const char *name, size_t *len);
/* s[0..n) percent-decoded ('+' is a space), NUL-terminated; the caller frees. */
char *lr_pct_decode(const char *s, size_t n);
/* Append s percent-encoding every byte outside the RFC 3986 unreserved set. */
void lr_pct_encode(lr_buf *b, const char *s);
/* The client's private id as the room computes its session id (Part 1 row
 * 1): ?id= trimmed, else ?_pk=, else a secret random id. The caller frees. */
char *lr_relay_private_id(lr_server *s, const char *query);
/* The value of request header name (lower case), or NULL. */
const char *lr_request_header(const lr_request *req, const char *name);

/* Append the shard.clientConnected message of the uplink protocol
 * (protocol.md 7.5) for a client of private id priv: its request as the
 * owner's room should see it (the headers but those skip() names, its
 * address in x-forwarded-for after any the request carried, its URL). */
void lr_relay_client_connected(lr_buf *b, const char *priv, const lr_request *req,
                               bool (*skip)(const char *name));
/* Append shard.clientMessage: client priv's frame data[0..len), embedded
 * as is (it must be JSON: lr_relay_frame_is_json). */
void lr_relay_client_message(lr_buf *b, const char *priv, const char *data, size_t len);
/* Append shard.clientDisconnected: the last socket of client priv left. */
void lr_relay_client_disconnected(lr_buf *b, const char *priv);
/* Whether a client frame may go to the owner: only JSON does (the
 * envelope embeds it as is). */
bool lr_relay_frame_is_json(const char *data, size_t len);
/* Answer a forwarded request with the owner's answer r (not an error):
 * its status and body, its Content-Type and Location, the CORS headers. */
void lr_relay_answer(lr_response_cb done, void *ud, const lr_fetch_result *r);

#endif

/*
 * test_engine.c - the room engine without Lua: a fake rules vtable
 * (rules.h) and a fake transport (server.h) drive connect, message, flush
 * and close through the same entry points net.c and headless.c use.
 *
 * Owns: these tests and their fakes.
 * Must not: load Lua (no bridge, no runtime.lua).
 */
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "json.h"
#include "log.h"
#include "storage.h"
#include "test.h"

/* ---- fake rules: a counter room, ns "main" only ---- */

static struct {
  int creates, connects, messages, closes, unrefs, rejects;
  char last_action[32];
} fr;

static bool f_serves(lr_server *s, const char *ns, const char *id) {
  (void)s, (void)id;
  return strcmp(ns, "main") == 0;
}
static int f_preroute(lr_server *s, const char *ns, const char *id, const lr_request *req,
                      const char *rest, lr_response_cb done, void *ud) {
  (void)req, (void)rest, (void)done, (void)ud;
  return f_serves(s, ns, id) ? 0 : -1;
}
static int f_create(lr_server *s, const char *ns, const char *id, char *err, size_t n) {
  (void)err, (void)n;
  fr.creates++;
  lr_room *r = lr_room_new(s, ns, id);
  r->ref = 1; /* a live instance (the engine only compares it with LR_NOREF) */
  return 0;
}
static int f_wake(lr_room *r) {
  r->ref = 1;
  return 0;
}
static void f_hibernate(lr_room *r) {
  (void)r;
}
static void f_forget(lr_room *r) {
  (void)r;
}
static void f_attach(lr_conn *c) {
  (void)c;
}
static int f_connect(lr_conn *c, const lr_request *req, char *err, size_t n) {
  (void)req;
  fr.connects++;
  if (strstr(req->query ? req->query : "", "deny")) {
    snprintf(err, n, "denied");
    return -1;
  }
  lr_room_join(c->room, c, c->id);
  return 0;
}
static int f_message(lr_conn *c, const char *action, size_t alen, const lr_node *value,
                     lr_reject_cb reject, char *err, size_t n) {
  fr.messages++;
  snprintf(fr.last_action, sizeof fr.last_action, "%.*s", (int)alen, action);
  if (strcmp(fr.last_action, "inc") == 0) {
    lr_room *r = c->room;
    lr_node *cur = lr_obj_get(r->root, "count", 5);
    lr_node *next = lr_node_int((cur ? cur->u.i : 0) + (value ? value->u.i : 1));
    lr_state_set(r->root, "count", 5, next, 0);
    lr_node_release(next);
    lr_room_touch(r);
    return 0;
  }
  if (strcmp(fr.last_action, "boom") == 0) {
    snprintf(err, n, "boom failed");
    return -1;
  }
  fr.rejects++;
  reject(c, "unknown_action", fr.last_action, "no such action");
  return 1;
}
static void f_close(lr_conn *c) {
  (void)c;
  fr.closes++;
}
static lr_msg *f_intercept(lr_conn *c, lr_msg *m) {
  (void)c;
  return lr_msg_retain(m);
}
static const char *f_public_id(lr_conn *c, char *buf, size_t n) {
  snprintf(buf, n, "%s", c->id);
  return buf;
}
static int f_request(lr_room *r, const lr_request *req, const char *rest, lr_settle_cb settle,
                     lr_response_cb done, void *ud) {
  (void)req, (void)rest;
  if (settle(r, done, ud)) return 1;
  lr_response resp = {200, NULL, 0, "{}", 2};
  done(ud, &resp);
  return 1;
}
static int f_operations(lr_server *s, const lr_request *req, lr_response_cb done, void *ud) {
  (void)s, (void)req, (void)done, (void)ud;
  return -1;
}
static void f_timer(lr_server *s, lr_room *r, int ref) {
  (void)s, (void)r, (void)ref;
}
static void f_unref(lua_State *L, int ref) {
  (void)L, (void)ref;
  fr.unrefs++;
}
static const char *f_env(lr_server *s, const char *name, char *buf, size_t n) {
  (void)s, (void)name;
  if (n) buf[0] = 0;
  return buf;
}

static const lr_rules_vt fake_rules = {
    .serves = f_serves,
    .preroute = f_preroute,
    .create = f_create,
    .wake = f_wake,
    .hibernate = f_hibernate,
    .forget = f_forget,
    .attach = f_attach,
    .connect = f_connect,
    .message = f_message,
    .close = f_close,
    .intercept = f_intercept,
    .public_id = f_public_id,
    .request = f_request,
    .operations = f_operations,
    .timer = f_timer,
    .unref = f_unref,
    .env = f_env,
};

/* ---- fake transport: keeps what it is sent ---- */

typedef struct ft {
  char *out[16];
  int nout;
  int close_code;
  lr_conn *c;
} ft;

static int ft_send(lr_conn *c, lr_msg *m) {
  ft *t = lr_conn_transport(c);
  if (t->nout < 16) t->out[t->nout++] = lr_xstrndup(lr_msg_payload(m), m->len);
  return 0;
}
static void ft_close(lr_conn *c, int code, const char *reason) {
  (void)reason;
  ft *t = lr_conn_transport(c);
  t->close_code = code;
}
static const lr_transport_vt ft_vt = {ft_send, ft_close};

static void ft_free(ft *t) {
  for (int i = 0; i < t->nout; i++)
    free(t->out[i]);
  t->nout = 0;
}

static lr_server *engine_new(void) {
  memset(&fr, 0, sizeof fr);
  char err[128];
  lr_store *st = lr_store_open_spec("memory", err, sizeof err);
  lr_server *s = lr_server_new(NULL, st, true, true, 7);
  s->rules = &fake_rules;
  lr_log_capture(1); /* the engine's info lines stay out of the test output */
  return s;
}

static void engine_free(lr_server *s) {
  lr_server_free(s);
  lr_log_capture_clear();
  lr_log_capture(0);
}

static int ft_open(lr_server *s, ft *t, const char *path, const char *query) {
  memset(t, 0, sizeof *t);
  t->close_code = -1;
  lr_request req = {.method = "GET", .path = path, .query = query};
  return lr_server_ws_open(s, &req, &ft_vt, t, &t->c);
}

TEST(engine_connect_joins_with_a_snapshot) {
  lr_server *s = engine_new();
  ft a;
  ASSERT_EQ_INT(0, ft_open(s, &a, "/parties/main/r1", ""));
  ASSERT(a.c != NULL);
  ASSERT_EQ_INT(1, fr.creates);
  ASSERT_EQ_INT(1, fr.connects);
  ASSERT_EQ_INT(1, a.nout);
  char want[64];
  snprintf(want, sizeof want, "{\"type\":\"sync\",\"value\":{\"pId\":\"%s\"}}", lr_conn_id(a.c));
  ASSERT_EQ_STR(a.out[0], want);
  ASSERT_EQ_INT(1, s->stats.conns_open);
  lr_conn_closed(a.c);
  ASSERT_EQ_INT(1, fr.closes);
  ft_free(&a);
  engine_free(s);
}

TEST(engine_unserved_party_is_refused_before_the_rules_connect) {
  lr_server *s = engine_new();
  ft a;
  ASSERT_EQ_INT(404, ft_open(s, &a, "/parties/other/r1", ""));
  ASSERT(a.c == NULL);
  ASSERT_EQ_INT(0, fr.creates);
  ASSERT_EQ_INT(0, fr.connects);
  engine_free(s);
}

TEST(engine_message_flush_sends_one_patch_to_every_member) {
  lr_server *s = engine_new();
  ft a, b;
  ft_open(s, &a, "/parties/main/r1", "");
  ft_open(s, &b, "/parties/main/r1", "");
  ASSERT_EQ_INT(1, fr.creates); /* the second finds the room */
  ft_free(&a);
  ft_free(&b);
  const char pkt[] = "{\"action\":\"inc\",\"value\":2}";
  lr_conn_message(a.c, pkt, sizeof pkt - 1);
  ASSERT_EQ_INT(1, fr.messages);
  ASSERT_EQ_INT(1, a.nout);
  ASSERT_EQ_INT(1, b.nout);
  ASSERT_EQ_STR(a.out[0], "{\"type\":\"sync\",\"value\":{\"count\":2}}");
  ASSERT_EQ_STR(b.out[0], a.out[0]);
  ASSERT_EQ_INT(1, s->stats.msgs_in);
  lr_conn_closed(a.c);
  lr_conn_closed(b.c);
  ASSERT_EQ_INT(2, fr.closes);
  ft_free(&a);
  ft_free(&b);
  engine_free(s);
}

TEST(engine_rejections_and_failures_answer_only_the_sender) {
  lr_server *s = engine_new();
  ft a, b;
  ft_open(s, &a, "/parties/main/r1", "");
  ft_open(s, &b, "/parties/main/r1", "");
  ft_free(&a);
  ft_free(&b);
  const char nope[] = "{\"action\":\"nope\"}";
  lr_conn_message(a.c, nope, sizeof nope - 1);
  ASSERT_EQ_INT(1, fr.rejects);
  ASSERT_EQ_INT(1, a.nout);
  ASSERT(strstr(a.out[0], "\"unknown_action\"") != NULL);
  const char boom[] = "{\"action\":\"boom\"}";
  lr_conn_message(a.c, boom, sizeof boom - 1);
  ASSERT_EQ_INT(2, a.nout);
  ASSERT(strstr(a.out[1], "boom failed") != NULL);
  const char bad[] = "{\"value\":1}"; /* no action: never reaches the rules */
  lr_conn_message(a.c, bad, sizeof bad - 1);
  ASSERT_EQ_INT(2, fr.messages);
  ASSERT_EQ_INT(3, a.nout);
  ASSERT(strstr(a.out[2], "invalid_packet") != NULL);
  ASSERT_EQ_INT(0, b.nout);
  lr_conn_closed(a.c);
  lr_conn_closed(b.c);
  ft_free(&a);
  ft_free(&b);
  engine_free(s);
}

TEST(engine_failed_connect_closes_1011_and_close_reaches_the_rules) {
  lr_server *s = engine_new();
  ft a;
  ASSERT_EQ_INT(0, ft_open(s, &a, "/parties/main/r1", "deny=1"));
  ASSERT_EQ_INT(1011, a.close_code);
  ASSERT_EQ_INT(0, a.nout);
  lr_conn_closed(a.c); /* the transport reports the socket gone */
  ASSERT_EQ_INT(1, fr.closes);
  ASSERT_EQ_INT(0, s->stats.conns_open);
  engine_free(s);
}

TEST(engine_dispose_closes_members_1001_and_releases_rule_refs) {
  lr_server *s = engine_new();
  ft a;
  ft_open(s, &a, "/parties/main/r1", "");
  lr_room *r = lr_room_find(s, "main", "r1");
  ASSERT(r != NULL);
  lr_room_dispose(r);
  ASSERT_EQ_INT(1001, a.close_code);
  ASSERT(fr.unrefs >= 1); /* the room instance's reference */
  lr_conn_closed(a.c);
  ft_free(&a);
  engine_free(s);
}

/* A room with a connection holds no eviction timer (mem19: a timer and a
 * room reference less per room); the close of its last connection arms it
 * again, and the room is evicted after evict_after. */
TEST(engine_joined_room_holds_no_eviction_timer_until_its_last_close) {
  lr_server *s = engine_new();
  ft a, b;
  ft_open(s, &a, "/parties/main/r1", "");
  lr_room *r = lr_room_find(s, "main", "r1");
  ASSERT(r != NULL);
  lr_conn_closed(a.c); /* no connection: its eviction timer is armed */
  ASSERT(r->idle_seq != 0);
  uint32_t armed = s->nheap;
  ASSERT_EQ_INT(0, ft_open(s, &b, "/parties/main/r1", ""));
  ASSERT(lr_room_find(s, "main", "r1") == r);
  ASSERT(r->idle_seq == 0);
  ASSERT_EQ_INT((int)armed - 1, (int)s->nheap);
  lr_server_advance(s, s->evict_after * 2); /* nothing to evict while b is in */
  ASSERT(lr_room_find(s, "main", "r1") == r);
  lr_conn_closed(b.c);
  ASSERT(r->idle_seq != 0);
  lr_server_advance(s, s->evict_after + 1);
  ASSERT(lr_room_find(s, "main", "r1") == NULL);
  ft_free(&a);
  ft_free(&b);
  engine_free(s);
}

/* ---- a lease store without a database: the memory store whose bind is
 * kept, so the test can report a lost lease as storage_postgres_lease.c
 * does (the fencing itself, the epoch in each write's transaction, is
 * PostgreSQL's: spec/integration/postgres.test.mjs, cluster*.test.mjs) ---- */

static struct {
  const lr_store_host *host;
  void *ud;
  void (*bind)(lr_store *s, const lr_store_host *host, void *ud);
} fl;

static void fl_bind(lr_store *st, const lr_store_host *host, void *ud) {
  fl.host = host;
  fl.ud = ud;
  if (fl.bind) fl.bind(st, host, ud);
}

TEST(engine_lost_lease_closes_the_room_and_drops_it_without_writing) {
  memset(&fl, 0, sizeof fl);
  memset(&fr, 0, sizeof fr);
  char err[128];
  lr_store *st = lr_store_open_spec("memory", err, sizeof err);
  static lr_store_vt vt;
  vt = *st->vt;
  fl.bind = vt.bind;
  vt.bind = fl_bind;
  st->vt = &vt;
  lr_server *s = lr_server_new(NULL, st, true, true, 7);
  s->rules = &fake_rules;
  lr_log_capture(1);
  ASSERT(fl.host != NULL && fl.host->lost != NULL && fl.host->holds != NULL);
  ft a, b;
  ft_open(s, &a, "/parties/main/r1", "");
  ft_open(s, &b, "/parties/main/r1", "");
  ft_free(&a);
  ft_free(&b);
  ASSERT_EQ_INT(1, fl.host->holds(fl.ud, "main", "r1"));
  const char pkt[] = "{\"action\":\"inc\",\"value\":2}";
  lr_conn_message(a.c, pkt, sizeof pkt - 1);
  ASSERT_EQ_INT(1, b.nout);
  ft_free(&a);
  ft_free(&b);
  uint64_t flushes = s->stats.storage_flushes;
  /* Another node took the room: this one must show and write nothing more. */
  fl.host->lost(fl.ud, "main", "r1", 1012, "lease lost");
  ASSERT_EQ_INT(1012, a.close_code);
  ASSERT_EQ_INT(1012, b.close_code);
  ASSERT_EQ_INT(0, a.nout);
  ASSERT_EQ_INT(0, b.nout);
  ASSERT_EQ_INT(0, fl.host->holds(fl.ud, "main", "r1"));
  ASSERT(flushes == s->stats.storage_flushes); /* dropped without writing */
  ASSERT(fr.unrefs >= 1);                      /* the room instance is released */
  /* A late frame of a closed socket reaches no room. */
  lr_conn_message(a.c, pkt, sizeof pkt - 1);
  ASSERT_EQ_INT(1, fr.messages);
  ASSERT_EQ_INT(0, b.nout);
  /* A report for a room this node does not hold changes nothing. */
  fl.host->lost(fl.ud, "main", "other", 1012, "lease lost");
  lr_conn_closed(a.c);
  lr_conn_closed(b.c);
  /* The next client finds the room anew (taken again when this node wins the lease). */
  ft c;
  ASSERT_EQ_INT(0, ft_open(s, &c, "/parties/main/r1", ""));
  ASSERT_EQ_INT(2, fr.creates);
  ASSERT_EQ_INT(1, fl.host->holds(fl.ud, "main", "r1"));
  lr_conn_closed(c.c);
  ft_free(&c);
  engine_free(s);
}

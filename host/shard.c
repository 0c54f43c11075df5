/*
 * shard.c - shard mode (`lunaroom serve --shard MAIN_URL`, protocol.md §7.5
 * and §7.6): a process that relays the clients of /parties/shard/{shardId}
 * to the main server holding the room, forwards their HTTP requests, and
 * reports each shard's connection count to the world.
 *
 * Owns: shard instances (one per shard id with clients on this process: an
 * uplink WebSocket to the main room with x-shard-id, x-shard-world-id and
 * x-access-shard, its client sockets keyed by private id, its reports);
 * world id resolution; the uplink framing on the shard side; HTTP
 * forwarding to the main server (the path after the shard id, Part 1 row 15,
 * with the §7.6 headers) and, optionally, of /parties/world/... to the world.
 * Must not: run room code (the room lives on the main server), trust client
 * headers that claim shard credentials (they are stripped), forward
 * /session-transfer (no session transfer through a shard), or block the loop
 * (every outgoing request and socket goes through fetch.c).
 *
 * Model. Like the reference's `shard` party, a shard id is served by
 * whichever shard process its clients reach: the first client socket for
 * shard X on this process starts instance X (uplink + reports), the last one
 * leaving starts a linger period after which the instance stops. Put several
 * shard processes behind a load balancer with affinity on the path
 * /parties/shard/{shardId}, or point each client at one shard process (the
 * shard process also forwards /parties/world/... so connectionWorld({host})
 * can use it as its only host).
 *
 * Made-up shard ids. An instance opens no uplink until the world accepts
 * its first report (the forced one at start): until then its clients'
 * frames wait (bounded, MAX_PENDING); a shard id the world does not know
 * closes its clients with 4004, and for UNKNOWN_MS its new clients get 404
 * at once; at most MAX_VERIFYING ids are checked at a time.
 *
 * Reports (POST {world}/parties/world/{worldId}/update-shard): forced when an
 * instance starts and every stats interval; on every client connect and
 * close when the count differs from the last count the world accepted. One
 * report per instance is in flight at a time; a newer one waits for it.
 * Shutdown reports 0 with status "draining", so the world drops this
 * process's shards at once instead of after its timeout.
 */
#include "shard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>

#include "engine.h"
#include "relay_id.h"
#include "fetch.h"
#include "json.h"
#include "log.h"
#include "lua_vm.h"

#define SHARD_TICK_MS 250       /* resolution of reports and lingering */
#define REPORT_TIMEOUT_MS 10000 /* one /update-shard exchange */
#define FORWARD_TIMEOUT_MS 30000
#define FRAME_OVERHEAD 1024 /* envelope bytes around a relayed client frame */
#define MAX_HEADERS 64
#define MAX_PRIVATE_ID 256       /* uplink.c refuses longer client ids */
#define MAX_BACKLOG (8u << 20)   /* bytes waiting on an uplink before clients are refused */
#define MAX_PENDING (256u << 10) /* frames held while the world checks the shard id */
#define MAX_VERIFYING 64         /* shard ids being checked with the world at once */
#define UNKNOWN_CACHE 64         /* shard ids the world did not know, remembered ... */
#define UNKNOWN_MS 10000         /* ... this long: their clients get 404 at once */

typedef struct shard_proc shard_proc;
typedef struct shard_inst shard_inst;

/* One client socket (lr_conn.shard_client). */
typedef struct sclient {
  shard_inst *si; /* NULL once its instance is gone */
  lr_conn *c;
  char *priv;
} sclient;

struct shard_inst {
  shard_proc *sp;
  char *id, *room_id, *world_id;
  lr_wsc *up;   /* NULL once closed or lost */
  bool up_open; /* the uplink handshake completed */
  bool dead;    /* the uplink is gone: no new clients, freed when empty */
  sclient **cl;
  uint32_t ncl, capcl;
  int64_t next_report; /* forced report due at (0 = none) */
  int64_t empty_since; /* linger start, 0 while it has clients */
  int reported;        /* last count the world accepted (-1 = none yet) */
  bool inflight, again, again_forced;
  bool report_failing; /* the last report failed (logged once) */
  /* The world knows this shard id: its first report was accepted. Until
   * then there is no uplink; what clients send waits in pend. */
  bool verified;
  lr_msg **pend;
  uint32_t npend, cappend;
  size_t pend_bytes;
  shard_inst *next;
};

/* A forwarded HTTP request waiting for the upstream. */
typedef struct forward {
  shard_proc *sp;
  uint64_t id;
  lr_response_cb done;
  void *ud;
  bool to_world;
  struct forward *next;
} forward;

struct shard_proc {
  lr_server *s;
  char *main_url, *world_url, *world_id_opt, *secret;
  int64_t stats_interval, linger;
  bool forward_world;
  size_t max_client_frame;
  shard_inst *insts;
  forward *forwards;
  struct report *reports; /* in flight */
  uint64_t tick_timer;    /* engine timer id, 0 = none */
  bool shutting_down;
  uint32_t nverifying; /* instances waiting for the world's answer */
  struct {
    char id[160];
    int64_t at;
  } unknown[UNKNOWN_CACHE]; /* shard ids the world refused, round robin */
  uint32_t unknown_next;
};

/* Client headers that only a shard may set: never passed on from a client. */
static bool shard_header(const char *name) {
  return strcasecmp(name, "x-access-shard") == 0 || strcasecmp(name, "x-shard-id") == 0 ||
         strcasecmp(name, "x-shard-world-id") == 0 ||
         strcasecmp(name, "x-forwarded-by-shard") == 0 ||
         strcasecmp(name, "x-original-client-ip") == 0;
}

static char *xstrdup(const char *s) {
  return lr_xstrndup(s, strlen(s));
}

/* ------------------------------------------------------------ timers */

static int tick_cb(lua_State *L);

static void arm_tick(shard_proc *sp, int64_t delay) {
  if (sp->tick_timer || sp->shutting_down) return;
  lua_State *L = sp->s->L;
  lua_pushlightuserdata(L, sp);
  lua_pushcclosure(L, tick_cb, 1);
  int ref = lr_ref_take(L);
  sp->tick_timer = lr_timer_add(sp->s, delay, LR_T_LUA, NULL, ref)->seq;
}

/* ------------------------------------------------------------ reports */

typedef struct report {
  shard_proc *sp;
  char *shard_id;
  int count;
  uint64_t fetch_id;
  struct report *next; /* in sp->reports */
} report;

static void report_forget(report *rp) {
  for (report **pp = &rp->sp->reports; *pp; pp = &(*pp)->next) {
    if (*pp == rp) {
      *pp = rp->next;
      break;
    }
  }
  free(rp->shard_id);
  free(rp);
}

static shard_inst *find_inst(shard_proc *sp, const char *id, bool live_only) {
  for (shard_inst *si = sp->insts; si; si = si->next)
    if (strcmp(si->id, id) == 0 && !(live_only && si->dead)) return si;
  return NULL;
}

static void send_report(shard_inst *si, bool forced, const char *status, int count);
static void inst_checked(shard_inst *si, const lr_fetch_result *r);

static void report_done(void *ud, const lr_fetch_result *r) {
  report *rp = ud;
  shard_inst *si = find_inst(rp->sp, rp->shard_id, false);
  bool ok = r->status >= 200 && r->status < 300;
  if (si) {
    si->inflight = false;
    if (!si->verified && !si->dead) inst_checked(si, r);
    if (ok) {
      si->reported = rp->count;
      if (si->report_failing) lr_info("shard %s: reports to the world work again", si->id);
      si->report_failing = false;
    } else if (!si->report_failing) {
      si->report_failing = true;
      if (r->error)
        lr_warn("shard %s: report to the world failed: %s", si->id, r->error);
      else
        lr_warn("shard %s: report to the world refused: HTTP %d %.*s", si->id, r->status,
                (int)(r->bodylen > 200 ? 200 : r->bodylen), r->body);
    }
    if (si->again) {
      bool forced = si->again_forced;
      si->again = si->again_forced = false;
      send_report(si, forced, NULL, -1);
    }
  }
  report_forget(rp);
}

/* POST /update-shard with this instance's count (forced, or only when it
 * changed since the last accepted report); count < 0 means the live count. */
static void send_report(shard_inst *si, bool forced, const char *status, int count) {
  shard_proc *sp = si->sp;
  if (count < 0) count = (int)si->ncl;
  if (!forced && !status && count == si->reported) return;
  if (si->inflight) {
    si->again = true;
    si->again_forced |= forced;
    return;
  }
  lr_buf url, body;
  lr_buf_init(&url);
  lr_buf_init(&body);
  lr_buf_printf(&url, "%s/parties/world/", sp->world_url);
  lr_pct_encode(&url, si->world_id);
  lr_buf_puts(&url, "/update-shard");
  lr_buf_puts(&body, "{\"shardId\":");
  lr_json_put_string(&body, si->id, strlen(si->id));
  lr_buf_puts(&body, ",\"worldId\":");
  lr_json_put_string(&body, si->world_id, strlen(si->world_id));
  lr_buf_printf(&body, ",\"connections\":%d", count);
  if (status) lr_buf_printf(&body, ",\"status\":\"%s\"", status);
  lr_buf_putc(&body, '}');
  lr_header h[2] = {{"content-type", "application/json"}, {"x-access-shard", sp->secret}};
  report *rp = lr_xcalloc(1, sizeof *rp);
  rp->sp = sp;
  rp->shard_id = xstrdup(si->id);
  rp->count = count;
  rp->next = sp->reports;
  sp->reports = rp;
  rp->fetch_id = lr_fetch(sp->s, "POST", lr_buf_cstr(&url), h, 2, body.data, body.len,
                          REPORT_TIMEOUT_MS, report_done, rp);
  if (rp->fetch_id) {
    si->inflight = true;
  } else {
    report_forget(rp);
    if (!si->verified && !si->dead) {
      lr_fetch_result fail = {0};
      fail.error = "the report could not be sent";
      inst_checked(si, &fail);
    }
  }
  lr_buf_free(&url);
  lr_buf_free(&body);
}

/* ------------------------------------------------------------ instances */

static void inst_free(shard_inst *si) {
  shard_proc *sp = si->sp;
  for (shard_inst **pp = &sp->insts; *pp; pp = &(*pp)->next) {
    if (*pp == si) {
      *pp = si->next;
      break;
    }
  }
  for (uint32_t i = 0; i < si->ncl; i++)
    si->cl[i]->si = NULL;
  if (si->up) lr_wsc_close(si->up, 1000, "shard stopped");
  if (!si->verified && !si->dead && sp->nverifying) sp->nverifying--;
  for (uint32_t i = 0; i < si->npend; i++)
    lr_msg_release(si->pend[i]);
  free(si->pend);
  free(si->cl);
  free(si->id);
  free(si->room_id);
  free(si->world_id);
  free(si);
}

/* Send one text frame on the uplink (queued until it is open). */
static void up_send(shard_inst *si, const char *data, size_t len) {
  if (!si->verified && !si->dead) {
    if (si->npend == si->cappend) {
      si->cappend = si->cappend ? si->cappend * 2 : 8;
      si->pend = lr_xrealloc(si->pend, si->cappend * sizeof *si->pend);
    }
    si->pend[si->npend++] = lr_msg_new(data, len);
    si->pend_bytes += len;
    return;
  }
  if (!si->up || lr_wsc_send(si->up, data, len) != 0)
    lr_debug("shard %s: frame for the main server dropped (uplink gone)", si->id);
}

static void close_clients(shard_inst *si, const char *priv, int code, const char *reason) {
  for (uint32_t i = 0; i < si->ncl; i++) {
    sclient *sc = si->cl[i];
    if (!priv || strcmp(sc->priv, priv) == 0) lr_conn_close(sc->c, code, reason);
  }
}

/* The uplink is lost: clients go (they reconnect, which starts a new
 * instance and a new uplink), the world hears 0. */
static void inst_lost(shard_inst *si, const char *why) {
  if (si->dead) return;
  si->dead = true;
  lr_warn("shard %s: uplink to the main server lost (%s); closing %u clients", si->id, why,
          si->ncl);
  close_clients(si, NULL, 1012, "shard lost the main server");
}

static void up_open(void *ud) {
  shard_inst *si = ud;
  si->up_open = true;
  lr_info("shard %s: uplink to room %s open", si->id, si->room_id);
}

static void broadcast_raw(shard_inst *si, const char *data, size_t len) {
  if (!si->ncl) return;
  lr_msg *m = lr_msg_new(data, len);
  for (uint32_t i = 0; i < si->ncl; i++) {
    lr_conn *c = si->cl[i]->c;
    if (c->phase == LR_C_JOINED && c->vt->send(c, m) != 0) lr_conn_close(c, 1008, "slow consumer");
  }
  lr_msg_release(m);
}

static void up_message(void *ud, const char *data, size_t len) {
  shard_inst *si = ud;
  char err[120];
  /* Most frames are broadcasts, relayed verbatim; only the two envelope
   * shapes are parsed (they start with these keys, as main servers send them). */
  bool target = len > 18 && strncmp(data, "{\"targetClientId\":", 18) == 0;
  bool closing = len > 30 && strncmp(data, "{\"type\":\"shard.closeClient\"", 27) == 0;
  if (!target && !closing) {
    broadcast_raw(si, data, len);
    return;
  }
  lr_json_limits lim = {2, 8}; /* an envelope: one object of strings */
  lr_node *n = lr_json_decode(data, len, &lim, err, sizeof err);
  if (!n || n->type != LR_OBJECT) {
    /* A targetClientId envelope whose data is big is still tiny in depth
     * and elements; anything else is not ours to interpret. */
    lr_node_release(n);
    lr_warn("shard %s: unreadable frame from the main server (%s); dropped", si->id, err);
    return;
  }
  if (target) {
    const lr_node *to = lr_obj_get(n, "targetClientId", 14), *d = lr_obj_get(n, "data", 4);
    if (to && to->type == LR_STRING && d && d->type == LR_STRING) {
      lr_msg *m = lr_msg_new(lr_str(d), lr_strlen(d));
      for (uint32_t i = 0; i < si->ncl; i++) {
        lr_conn *c = si->cl[i]->c;
        if (strcmp(si->cl[i]->priv, lr_str(to)) == 0 && c->phase == LR_C_JOINED &&
            c->vt->send(c, m) != 0)
          lr_conn_close(c, 1008, "slow consumer");
      }
      lr_msg_release(m);
    }
  } else {
    const lr_node *p = lr_obj_get(n, "privateId", 9), *code = lr_obj_get(n, "code", 4),
                  *reason = lr_obj_get(n, "reason", 6);
    /* A code the room chose (4001 guard, 4029 full, ...), if one may be sent. */
    int cc = code && code->type == LR_INT ? (int)code->u.i : 1000;
    if (cc < 1000 || cc > 4999 || cc == 1004 || cc == 1005 || cc == 1006 || cc == 1015) cc = 1000;
    if (p && p->type == LR_STRING)
      close_clients(si, lr_str(p), cc, reason && reason->type == LR_STRING ? lr_str(reason) : "");
  }
  lr_node_release(n);
}

static void up_closed(void *ud, int code, const char *reason) {
  shard_inst *si = ud;
  si->up = NULL; /* freed by fetch.c when this returns */
  char why[160];
  snprintf(why, sizeof why, "%d %s", code, reason && *reason ? reason : "closed");
  if (!si->sp->shutting_down) inst_lost(si, why);
  if (!si->ncl) inst_free(si);
}

static const lr_wsc_cbs uplink_cbs = {up_open, up_message, up_closed};

/* World id (§7.5): the option, else the 2nd ':'-part of a 3-part shard id,
 * else WORLD_ID, else SIGNE_WORLD_ID, else world-default. */
static char *world_id_of(shard_proc *sp, const char *shard_id) {
  if (sp->world_id_opt && *sp->world_id_opt) return xstrdup(sp->world_id_opt);
  const char *a = strchr(shard_id, ':');
  const char *b = a ? strchr(a + 1, ':') : NULL;
  if (a && b && b > a + 1) return lr_xstrndup(a + 1, (size_t)(b - a - 1));
  char buf[256];
  if (*lr_server_env(sp->s, "WORLD_ID", buf, sizeof buf)) return xstrdup(buf);
  if (*lr_server_env(sp->s, "SIGNE_WORLD_ID", buf, sizeof buf)) return xstrdup(buf);
  return xstrdup("world-default");
}

static shard_inst *inst_start(shard_proc *sp, const char *shard_id) {
  shard_inst *si = lr_xcalloc(1, sizeof *si);
  si->sp = sp;
  si->id = xstrdup(shard_id);
  const char *colon = strchr(shard_id, ':');
  si->room_id = colon ? lr_xstrndup(shard_id, (size_t)(colon - shard_id)) : xstrdup(shard_id);
  si->world_id = world_id_of(sp, shard_id);
  si->reported = -1;
  si->empty_since = lr_now(sp->s); /* until its first client arrives */
  si->next = sp->insts;
  sp->insts = si;
  sp->nverifying++;
  lr_info("shard %s: started (room %s, world %s), asking the world whether it knows it", si->id,
          si->room_id, si->world_id);
  /* The first (forced) report doubles as the check: inst_checked. */
  send_report(si, true, NULL, -1);
  if (sp->stats_interval > 0) si->next_report = lr_now(sp->s) + sp->stats_interval;
  arm_tick(sp, SHARD_TICK_MS);
  return si;
}

/* The world answered the first report of si (made-up shard ids must not
 * open uplinks: each would be a socket to the main server and a member of
 * the room's broadcasts). Accepted: open the uplink and send what waited.
 * 404 or 400 (unknown shard, or another world's): its clients are closed
 * with 4004 and the id is remembered for UNKNOWN_MS. Anything else (the
 * world unreachable, 5xx): closed with 1013, try again later. */
static void inst_checked(shard_inst *si, const lr_fetch_result *r) {
  shard_proc *sp = si->sp;
  if (sp->nverifying) sp->nverifying--;
  bool ok = !r->error && r->status >= 200 && r->status < 300;
  if (!ok) {
    bool unknown = !r->error && (r->status == 404 || r->status == 400);
    si->dead = true;
    lr_warn("shard %s: refused: %s (HTTP %d); closing %u clients", si->id,
            unknown ? "the world does not know this shard id" : "the world could not confirm it",
            r->status, si->ncl);
    if (unknown && strlen(si->id) < sizeof sp->unknown[0].id) {
      uint32_t k = sp->unknown_next++ % UNKNOWN_CACHE;
      snprintf(sp->unknown[k].id, sizeof sp->unknown[k].id, "%s", si->id);
      sp->unknown[k].at = lr_now(sp->s);
    }
    for (uint32_t i = 0; i < si->npend; i++)
      lr_msg_release(si->pend[i]);
    si->npend = 0;
    si->pend_bytes = 0;
    close_clients(si, NULL, unknown ? 4004 : 1013,
                  unknown ? "unknown shard" : "world unavailable, try again later");
    return;
  }
  si->verified = true;
  lr_buf url;
  lr_buf_init(&url);
  lr_buf_printf(&url, "%s/parties/main/", sp->main_url);
  lr_pct_encode(&url, si->room_id);
  lr_header h[3] = {
      {"x-shard-id", si->id}, {"x-shard-world-id", si->world_id}, {"x-access-shard", sp->secret}};
  si->up = lr_wsc_open(sp->s, lr_buf_cstr(&url), h, 3, &uplink_cbs, si);
  lr_info("shard %s: confirmed by the world, uplink %s", si->id, url.data);
  lr_buf_free(&url);
  if (!si->up) {
    inst_lost(si, "cannot open the uplink");
  } else {
    for (uint32_t i = 0; i < si->npend; i++)
      up_send(si, lr_msg_payload(si->pend[i]), si->pend[i]->len);
  }
  for (uint32_t i = 0; i < si->npend; i++)
    lr_msg_release(si->pend[i]);
  free(si->pend);
  si->pend = NULL;
  si->npend = si->cappend = 0;
  si->pend_bytes = 0;
}

/* Did the world refuse shard_id less than UNKNOWN_MS ago? */
static bool known_unknown(shard_proc *sp, const char *shard_id) {
  int64_t now = lr_now(sp->s);
  for (uint32_t k = 0; k < UNKNOWN_CACHE; k++)
    if (sp->unknown[k].at && now - sp->unknown[k].at < UNKNOWN_MS &&
        strcmp(sp->unknown[k].id, shard_id) == 0)
      return true;
  return false;
}

/* The periodic pass: forced reports, lingering instances. */
static int tick_cb(lua_State *L) {
  shard_proc *sp = lua_touserdata(L, lua_upvalueindex(1));
  sp->tick_timer = 0;
  int64_t now = lr_now(sp->s);
  for (shard_inst *si = sp->insts, *next; si; si = next) {
    next = si->next;
    if (!si->ncl && si->empty_since && now - si->empty_since >= sp->linger) {
      lr_info("shard %s: no client for %lld ms, stopped", si->id, (long long)sp->linger);
      inst_free(si);
      continue;
    }
    if (!si->dead && si->next_report && now >= si->next_report) {
      si->next_report = now + sp->stats_interval;
      send_report(si, true, NULL, -1);
    }
  }
  if (sp->insts) arm_tick(sp, SHARD_TICK_MS);
  return 0;
}

/* ------------------------------------------------------------ client sockets */

static int lr_shard_ws_open(lr_server *s, const lr_request *req, const char *shard_id,
                            const lr_transport_vt *vt, void *tp, lr_conn **out);
static bool lr_shard_http(lr_server *s, const lr_request *req, const char *ns, const char *id,
                          const char *rest, lr_response_cb done, void *ud);
static void lr_shard_shutdown(lr_server *s);
/* What a shard process takes over from the engine (lr_server.mode). */
static const lr_mode_vt shard_mode = {lr_shard_ws_open, lr_shard_http, lr_shard_shutdown};

/* A client of this shard process: its frames go up the instance's uplink. */
static void lr_shard_client_message(lr_conn *c, const char *data, size_t len);
static void lr_shard_client_closed(lr_conn *c);
static const lr_conn_ops shard_client_ops = {.message = lr_shard_client_message,
                                             .closed = lr_shard_client_closed};

static int lr_shard_ws_open(lr_server *s, const lr_request *req, const char *shard_id,
                            const lr_transport_vt *vt, void *tp, lr_conn **out) {
  shard_proc *sp = s->shard;
  *out = NULL;
  if (sp->shutting_down) return 503;
  shard_inst *si = find_inst(sp, shard_id, true);
  if (!si && known_unknown(sp, shard_id)) {
    lr_debug("shard %s: client refused, the world does not know this shard id", shard_id);
    return 404;
  }
  if (!si && sp->nverifying >= MAX_VERIFYING) {
    lr_warn("shard %s: client refused, %u shard ids are already being checked with the world",
            shard_id, sp->nverifying);
    return 503;
  }
  if (!si) si = inst_start(sp, shard_id);
  if (si->dead) { /* only a new instance can be: live_only above */
    lr_warn("shard %s: client refused, no uplink to the main server", shard_id);
    if (!si->ncl && !si->up) inst_free(si);
    return 503;
  }
  char *priv = lr_relay_private_id(s, req->query);
  if (strlen(priv) > MAX_PRIVATE_ID) { /* the main server would not take it */
    lr_warn("shard %s: client refused, its id is longer than %d bytes", shard_id, MAX_PRIVATE_ID);
    free(priv);
    return 400;
  }
  sclient *sc = lr_xcalloc(1, sizeof *sc);
  sc->si = si;
  sc->priv = priv;
  lr_conn *c = lr_conn_new(s, NULL, vt, tp);
  c->phase = LR_C_JOINED;
  c->ext = sc;
  c->ops = &shard_client_ops;
  sc->c = c;
  s->stats.conns_open++;
  s->stats.conns_total++;
  if (si->ncl == si->capcl) {
    si->capcl = si->capcl ? si->capcl * 2 : 8;
    si->cl = lr_xrealloc(si->cl, si->capcl * sizeof *si->cl);
  }
  si->cl[si->ncl++] = sc;
  si->empty_since = 0;
  /* shard.clientConnected with the request as the room should see it. */
  lr_buf b;
  lr_buf_init(&b);
  lr_relay_client_connected(&b, sc->priv, req, shard_header);
  up_send(si, b.data, b.len);
  lr_buf_free(&b);
  lr_info("shard %s: client %s (conn %s) from %s", si->id, sc->priv, c->id,
          req->remote_addr ? req->remote_addr : "-");
  send_report(si, false, NULL, -1);
  *out = c;
  return 0;
}

static void lr_shard_client_message(lr_conn *c, const char *data, size_t len) {
  sclient *sc = c->ext;
  shard_inst *si = sc->si;
  if (!si || si->dead) return;
  if (len > si->sp->max_client_frame) {
    lr_warn("shard %s: client %s sent %zu bytes (max %zu through a shard); closing", si->id,
            sc->priv, len, si->sp->max_client_frame);
    lr_conn_close(c, 1009, "frame too large");
    return;
  }
  if (!lr_relay_frame_is_json(data, len)) { /* only JSON goes to the main server */
    lr_debug("shard %s: non-JSON frame from client %s dropped", si->id, sc->priv);
    return;
  }
  if (!si->verified && si->pend_bytes + len > MAX_PENDING) {
    lr_warn("shard %s: client %s sent %zu bytes before the world confirmed the shard; closing",
            si->id, sc->priv, si->pend_bytes + len);
    lr_conn_close(c, 1013, "shard backlog");
    return;
  }
  if (si->up && lr_wsc_queued(si->up) > MAX_BACKLOG) {
    lr_warn("shard %s: %zu bytes wait for the main server; closing client %s", si->id,
            lr_wsc_queued(si->up), sc->priv);
    lr_conn_close(c, 1013, "shard backlog");
    return;
  }
  lr_buf b;
  lr_buf_init(&b);
  lr_relay_client_message(&b, sc->priv, data, len);
  up_send(si, b.data, b.len);
  lr_buf_free(&b);
}

static void lr_shard_client_closed(lr_conn *c) {
  sclient *sc = c->ext;
  c->ext = NULL;
  shard_inst *si = sc->si;
  if (si) {
    for (uint32_t i = 0; i < si->ncl; i++) {
      if (si->cl[i] == sc) {
        memmove(&si->cl[i], &si->cl[i + 1], (si->ncl - i - 1) * sizeof *si->cl);
        si->ncl--;
        break;
      }
    }
    bool last = true;
    for (uint32_t i = 0; i < si->ncl && last; i++)
      last = strcmp(si->cl[i]->priv, sc->priv) != 0;
    if (last && !si->dead) {
      lr_buf b;
      lr_buf_init(&b);
      lr_relay_client_disconnected(&b, sc->priv);
      up_send(si, b.data, b.len);
      lr_buf_free(&b);
    }
    if (!si->sp->shutting_down) send_report(si, false, NULL, -1);
    if (!si->ncl) {
      if (si->dead && !si->up)
        inst_free(si);
      else
        si->empty_since = lr_now(si->sp->s);
    }
  }
  free(sc->priv);
  free(sc);
}

/* ------------------------------------------------------------ HTTP */

static void forward_done(void *ud, const lr_fetch_result *r) {
  forward *f = ud;
  shard_proc *sp = f->sp;
  for (forward **pp = &sp->forwards; *pp; pp = &(*pp)->next) {
    if (*pp == f) {
      *pp = f->next;
      break;
    }
  }
  if (r->error) {
    lr_warn("shard: forwarding to the %s failed: %s", f->to_world ? "world" : "main server",
            r->error);
    bool no_connection = strncmp(r->error, "connect failed", 14) == 0;
    if (f->to_world)
      lr_respond_json(f->done, f->ud, 502, "{\"error\":\"World service unreachable\"}");
    else if (no_connection)
      lr_respond_json(f->done, f->ud, 503, "{\"error\":\"Shard not connected to main server\"}");
    else
      lr_respond_json(f->done, f->ud, 500, "{\"error\":\"Error forwarding request\"}");
  } else {
    lr_relay_answer(f->done, f->ud, r);
  }
  free(f);
}

/* The main server's URL of shard id's room (its name before any ':',
 * then rest) into url, and the shard's world id into world. */
static void room_target(shard_proc *sp, const char *id, const char *rest, lr_buf *url, char *world,
                        size_t wlen) {
  const char *colon = strchr(id, ':');
  lr_buf_printf(url, "%s/parties/main/", sp->main_url);
  lr_buf room;
  lr_buf_init(&room);
  lr_buf_put(&room, id, colon ? (size_t)(colon - id) : strlen(id));
  lr_pct_encode(url, lr_buf_cstr(&room));
  lr_buf_free(&room);
  lr_buf_puts(url, rest);
  shard_inst *si = find_inst(sp, id, false);
  if (si) {
    snprintf(world, wlen, "%s", si->world_id);
  } else {
    char *w = world_id_of(sp, id);
    snprintf(world, wlen, "%s", w);
    free(w);
  }
}

static bool lr_shard_http(lr_server *s, const lr_request *req, const char *ns, const char *id,
                          const char *rest, lr_response_cb done, void *ud) {
  shard_proc *sp = s->shard;
  bool to_world = strcmp(ns, "world") == 0;
  if (!to_world && strcmp(ns, "shard") != 0) return false;
  if (to_world && !sp->forward_world) return false;
  if (sp->shutting_down) {
    lr_respond_json(done, ud, 503, "{\"error\":\"Shard is shutting down\"}");
    return true;
  }
  lr_buf url;
  lr_buf_init(&url);
  lr_header hs[MAX_HEADERS + 6];
  size_t nh = 0;
  char shard_world[256] = "";
  if (to_world) {
    lr_buf_printf(&url, "%s%s", sp->world_url, req->path);
  } else {
    size_t rl = strlen(rest);
    if (rl >= 17 && strcmp(rest + rl - 17, "/session-transfer") == 0) {
      lr_buf_free(&url);
      lr_respond_json(done, ud, 404, "{\"error\":\"Not found\"}");
      return true;
    }
    room_target(sp, id, rest, &url, shard_world, sizeof shard_world);
  }
  if (req->query && *req->query) lr_buf_printf(&url, "?%s", req->query);
  const char *xff = NULL;
  for (size_t i = 0; i < req->nheaders && nh < MAX_HEADERS; i++) {
    if (strcmp(req->headers[i].name, "x-forwarded-for") == 0) {
      xff = req->headers[i].value;
      continue;
    }
    if (!to_world && shard_header(req->headers[i].name)) continue;
    hs[nh++] = req->headers[i];
  }
  /* As a proxy does: the address this process saw goes last, so a main
   * server that lists this shard in --trusted-proxy counts the client. */
  lr_buf xf;
  lr_buf_init(&xf);
  if (xff && *xff) lr_buf_printf(&xf, "%s, ", xff);
  lr_buf_puts(&xf, req->remote_addr ? req->remote_addr : "unknown");
  hs[nh++] = (lr_header){"x-forwarded-for", lr_buf_cstr(&xf)};
  if (!to_world) {
    hs[nh++] = (lr_header){"x-shard-id", id};
    hs[nh++] = (lr_header){"x-shard-world-id", shard_world};
    hs[nh++] = (lr_header){"x-forwarded-by-shard", "true"};
    hs[nh++] = (lr_header){"x-access-shard", sp->secret};
    hs[nh++] = (lr_header){"x-original-client-ip",
                           xff && *xff ? xff : (req->remote_addr ? req->remote_addr : "unknown")};
  }
  forward *f = lr_xcalloc(1, sizeof *f);
  f->sp = sp;
  f->done = done;
  f->ud = ud;
  f->to_world = to_world;
  f->id = lr_fetch(s, req->method, lr_buf_cstr(&url), hs, nh, req->body ? req->body : "",
                   req->body ? req->bodylen : 0, FORWARD_TIMEOUT_MS, forward_done, f);
  lr_buf_free(&url);
  lr_buf_free(&xf);
  if (!f->id) {
    free(f);
    lr_respond_json(done, ud, 500, "{\"error\":\"Error forwarding request\"}");
    return true;
  }
  f->next = sp->forwards;
  sp->forwards = f;
  return true;
}

/* ------------------------------------------------------------ lifecycle */

int lr_shard_enable(lr_server *s, const lr_shard_opts *o, char *err, size_t errlen) {
  char secret[512];
  lr_server_env(s, "SHARD_SECRET", secret, sizeof secret);
  if (!secret[0]) {
    snprintf(err, errlen,
             "SHARD_SECRET is not set: a shard authenticates to the main server "
             "and the world with it");
    return -1;
  }
  if (!o->main_url ||
      (strncmp(o->main_url, "http://", 7) != 0 && strncmp(o->main_url, "https://", 8) != 0)) {
    snprintf(err, errlen, "--shard needs the main server's URL, http://HOST:PORT (got %s)",
             o->main_url ? o->main_url : "nothing");
    return -1;
  }
  const char *world = o->world_url ? o->world_url : o->main_url;
  if (strncmp(world, "http://", 7) != 0 && strncmp(world, "https://", 8) != 0) {
    snprintf(err, errlen, "--world-url must be http://HOST:PORT (got %s)", world);
    return -1;
  }
  shard_proc *sp = lr_xcalloc(1, sizeof *sp);
  sp->s = s;
  sp->main_url = xstrdup(o->main_url);
  sp->world_url = xstrdup(world);
  for (char **u = &sp->main_url; u; u = u == &sp->main_url ? &sp->world_url : NULL) {
    size_t n = strlen(*u);
    while (n && (*u)[n - 1] == '/')
      (*u)[--n] = 0;
  }
  sp->world_id_opt = o->world_id ? xstrdup(o->world_id) : NULL;
  sp->secret = xstrdup(secret);
  sp->stats_interval = o->stats_interval_ms ? o->stats_interval_ms : 30000;
  sp->linger = o->linger_ms > 0 ? o->linger_ms : 60000;
  sp->forward_world = o->forward_world;
  size_t mf = o->max_frame ? o->max_frame : 64 * 1024;
  sp->max_client_frame = mf > 2 * FRAME_OVERHEAD ? mf - FRAME_OVERHEAD : mf / 2;
  s->shard = sp;
  s->mode = &shard_mode;
  lr_info("shard mode: main server %s, world %s, reports every %lld ms", sp->main_url,
          sp->world_url, (long long)sp->stats_interval);
  return 0;
}

static void lr_shard_shutdown(lr_server *s) {
  shard_proc *sp = s->shard;
  if (!sp || sp->shutting_down) return;
  sp->shutting_down = true;
  if (sp->tick_timer) lr_timer_cancel(s, sp->tick_timer);
  sp->tick_timer = 0;
  for (shard_inst *si = sp->insts; si; si = si->next) {
    close_clients(si, NULL, 1001, "server shutdown");
    /* The world drops a draining shard that reports 0 at once. */
    si->inflight = false; /* this one goes now, whatever is in flight */
    send_report(si, true, "draining", 0);
    if (si->up) {
      lr_wsc_close(si->up, 1001, "server shutdown");
      si->up = NULL;
    }
  }
  while (sp->forwards) {
    forward *f = sp->forwards;
    sp->forwards = f->next;
    lr_fetch_cancel(f->id);
    lr_respond_json(f->done, f->ud, 503, "{\"error\":\"Shard is shutting down\"}");
    free(f);
  }
}

void lr_shard_free(lr_server *s) {
  shard_proc *sp = s->shard;
  if (!sp) return;
  lr_shard_shutdown(s);
  while (sp->insts)
    inst_free(sp->insts);
  while (sp->reports) {
    lr_fetch_cancel(sp->reports->fetch_id);
    report_forget(sp->reports);
  }
  s->shard = NULL;
  s->mode = NULL;
  free(sp->main_url);
  free(sp->world_url);
  free(sp->world_id_opt);
  free(sp->secret);
  free(sp);
}

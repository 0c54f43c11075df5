/*
 * cluster_rooms.test.mjs - what else a room does keeps working across the
 * nodes of a cluster (`--cluster`, SHARD_SECRET set: the nodes relay).
 *
 * Owns: the world registry in a cluster (it is a room: one owner, its
 * requests on other nodes forwarded there, its writes fenced by its lease);
 * hibernation (a hibernated room keeps its lease: it keeps its sockets and
 * timers on its node, so no other node may serve it meanwhile); a
 * room-to-room fetch whose target another node owns (forwarded to it); the
 * local form of room:sessionTransfer to a room not on this node (from a room
 * that may wait: it reaches the target's owner, or takes the lease when the
 * target is free); POST /admin/undrain (a drained node takes leases
 * again); a node stopped while GET /admin/cluster waits for the
 * database frees what that request holds (with the ASan build, make asan:
 * no leak at exit).
 * Skipped (with the reason) when PostgreSQL is not installed.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import fs from "node:fs";
import path from "node:path";
import { ROOT, http, sleep, tempDir } from "./lib.mjs";
import { clusterNode, join, metric, sign, until } from "./cluster_lib.mjs";
import { pgMissing, startPg } from "./pg.mjs";

const LEASE = 1000;
const SECRET = "cluster-rooms-test-secret-012345";
const JWT_SECRET = "cluster-rooms-admin-secret-01234";
const ADMIN = { authorization: `Bearer ${sign({ worlds: ["*"] }, JWT_SECRET)}` };
const ENV = { SHARD_SECRET: SECRET, AUTH_JWT_SECRET: JWT_SECRET };
const skip = pgMissing();
if (skip) console.log(`# skipped: ${skip}`);
const ASAN_BIN = process.env.LUNAROOM_ASAN_BIN || path.join(ROOT, "build-asan", "lunaroom");
const noAsan = fs.existsSync(ASAN_BIN) ? false : `no ASan build at ${ASAN_BIN} (make asan)`;

let pg;

function roomsDir() {
  const dir = tempDir("lunaroom-cluster-rooms-");
  fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/xfer.lua"), path.join(dir, "xfer.lua"));
  // Hibernates after 200 ms without an event (its sockets stay open).
  fs.writeFileSync(
    path.join(dir, "hib.lua"),
    `local lr = require "lunaroom"
return lr.room {
  path = "hib-{id}",
  hibernate = true,
  hibernateAfter = 200,
  state = { count = lr.sync(0) },
  actions = { inc = function(room) room.count = room.count + 1 end },
}
`,
  );
  // A room whose code may wait (it mentions fetch): room-to-room fetch and
  // the local form of sessionTransfer, which wait for another node's answer.
  fs.writeFileSync(
    path.join(dir, "hop.lua"),
    `local lr = require "lunaroom"
return lr.room {
  path = "hop-{name}",
  state = {
    players = lr.users(lr.schema { name = lr.sync(""), level = lr.sync(1) }),
    count = lr.sync(0),
  },
  actions = {
    inc = function(room) room.count = room.count + 1 end,
    rename = function(_, player, name) player.name = name end,
    go = function(room, _, target, conn)
      local token, err = room:sessionTransfer(conn, target)
      conn:send { type = "transfer", value = { token = token or lr.null, error = err or lr.null } }
    end,
  },
  onSessionRestore = function(t)
    local snap = {}
    for k, v in pairs(t.userSnapshot) do snap[k] = v end
    snap.level = (snap.level or 0) + 10
    return snap
  end,
  requests = {
    ["GET /count"] = function(room) return { count = room.count } end,
    ["GET /peek/:target"] = function(room, req)
      local res = room.parties.main:get(req.params.target):fetch("/count")
      return { status = res.status, count = res.ok and res.json().count or lr.null }
    end,
  },
}
`,
  );
  return dir;
}

const node = (rooms, { leaseMs = LEASE, extra = [] } = {}) => clusterNode(pg, rooms, { leaseMs, env: ENV, extra });
const leaseRow = (ns, room) => pg.sql(`SELECT node_id || ' ' || epoch FROM lunaroom_leases WHERE namespace = '${ns}' AND room_id = '${room}'`);
const leaseValid = (ns, room) => pg.sql(`SELECT expires_at > now() FROM lunaroom_leases WHERE namespace = '${ns}' AND room_id = '${room}'`) === "t";
const storedText = (ns, room) => pg.sql(`SELECT coalesce(string_agg(key || '=' || value, ' '), '') FROM signe_room_storage WHERE namespace = '${ns}' AND room_id = '${room}'`);
const metrics = async (srv) => (await http("GET", `${srv.url}/metrics`)).body;

describe("rooms across the nodes of a cluster", { skip: skip ?? false }, () => {
  before(() => {
    pg = startPg();
  });
  after(() => pg?.stop());

  test("the world registry is a room: one owner, requests on other nodes forwarded to it, its writes fenced by its lease", async () => {
    const rooms = roomsDir();
    const world = ["--world", "--world-cleanup-interval", "60000"];
    const a = await node(rooms, { extra: world });
    const b = await node(rooms, { extra: world });
    const W = "world-default";
    const wurl = (srv, p) => `${srv.url}/parties/world/${W}${p}`;
    const register = (srv, name) =>
      http("POST", wurl(srv, "/register-room"), { name, balancingStrategy: "round-robin", public: true, maxPlayersPerShard: 10, minShards: 1 }, ADMIN);
    const known = (srv, name) => http("POST", wurl(srv, "/connect"), { roomId: name, autoCreate: false });
    try {
      let r = await register(a, "room-one");
      assert.equal(r.status, 200, r.body);
      assert.equal(leaseRow("world", W), `${a.nodeUrl} 1`, "the world was not taken under a lease");
      // On B: forwarded to A, the owner; B does not load the world.
      r = await known(b, "room-one");
      assert.equal(r.status, 200, r.body);
      assert.equal(typeof r.json.shardId, "string");
      r = await register(b, "room-two");
      assert.equal(r.status, 200, r.body);
      assert.equal((await known(a, "room-two")).status, 200, "a registration through B did not reach the owner");
      // Forwarded with the client's own credentials, never the node secret
      // (the world takes the secret as an admin's): none, refused; a shard's
      // report (x-access-shard) passes the guard (404: no such shard).
      const anon = { name: "room-anon", balancingStrategy: "round-robin", public: true, maxPlayersPerShard: 10, minShards: 1 };
      r = await http("POST", wurl(b, "/register-room"), anon);
      assert.equal(r.status, 403, `a registration without credentials through another node: ${r.status} ${r.body}`);
      assert.equal((await known(a, "room-anon")).status, 404);
      r = await http("POST", wurl(b, "/update-shard"), { shardId: "no-such-shard", connections: 0 }, { "x-access-shard": SECRET });
      assert.equal(r.status, 404, r.body);
      r = await http("POST", wurl(b, "/update-shard"), { shardId: "no-such-shard", connections: 0 }, { "x-access-shard": "wrong" });
      assert.equal(r.status, 403, r.body);
      const mb = await metrics(b);
      assert.equal(metric(mb, "lunaroom_cluster_http_forwarded_total"), 5, mb);
      assert.equal(metric(mb, "lunaroom_cluster_rooms_owned"), 0, mb);
      assert.equal(leaseRow("world", W), `${a.nodeUrl} 1`);
      await until(() => /room-two/.test(storedText("world", W)), 5000, "the registry written (throttleStorage 2 s)");

      // A registration on A not written yet (throttleStorage), then A stops
      // past its lease: B takes the world from storage; A, woken, writes nothing.
      r = await register(a, "room-three");
      assert.equal(r.status, 200, r.body);
      a.proc.kill("SIGSTOP");
      await sleep(LEASE + 300);
      r = await known(b, "room-one"); // B takes the expired lease and restores the registry
      assert.equal(r.status, 200, r.body);
      assert.equal(leaseRow("world", W), `${b.nodeUrl} 2`);
      assert.equal((await register(b, "room-four")).status, 200);
      a.proc.kill("SIGCONT");
      await until(() => /room world\/world-default: .*dropped here|lease \(epoch 1\) is lost/.test(a.logs()), 5000,
        "the woken node drops the world");
      await sleep(2500); // past A's throttleStorage: its queued write of room-three would have gone out
      const stored = storedText("world", W);
      assert.match(stored, /room-four/, stored);
      assert.doesNotMatch(stored, /room-three/, "the node that lost the world's lease wrote its registry");
      assert.equal(leaseRow("world", W), `${b.nodeUrl} 2`);
      assert.equal((await known(b, "room-three")).status, 404, "room-three was never stored, and B does not have it");
      // A forwards to B now.
      assert.equal((await known(a, "room-four")).status, 200);
      assert.equal(await b.stop(), 0, b.logs());
    } finally {
      a.proc.kill("SIGCONT");
      await a.stop();
      await b.stop();
    }
  });

  test("a hibernated room keeps its lease: renewed while it sleeps, woken on its node by a client relayed from another", async () => {
    const rooms = roomsDir();
    const a = await node(rooms);
    const b = await node(rooms);
    try {
      const ca = await join(a, "hib-x", "h1");
      ca.send({ action: "inc" });
      await ca.next((m) => m?.type === "sync" && m.value.count === 1);
      const cb = await join(b, "hib-x", "h2"); // relayed to A
      assert.ok(!cb.refused, JSON.stringify(cb.refused));
      await until(() => /room main\/hib-x hibernated/.test(a.logs()), 3000, "the room hibernates");
      await sleep(2.5 * LEASE); // several renewal periods while it sleeps
      assert.doesNotMatch(a.logs(), /room main\/hib-x woke up/);
      assert.equal(leaseRow("main", "hib-x"), `${a.nodeUrl} 1`, "the lease changed while the room slept");
      assert.ok(leaseValid("main", "hib-x"), "the lease of the hibernated room was not renewed");
      assert.equal(metric(await metrics(a), "lunaroom_cluster_rooms_owned"), 1);
      // Another node's client reaches it through its owner, which wakes it.
      const cb2 = await join(b, "hib-x", "h3");
      assert.ok(!cb2.refused, JSON.stringify(cb2.refused));
      cb.send({ action: "inc" });
      await ca.next((m) => m?.type === "sync" && m.value.count === 2);
      await cb.next((m) => m?.type === "sync" && m.value.count === 2);
      await cb2.next((m) => m?.type === "sync" && m.value.count === 2);
      assert.match(a.logs(), /room main\/hib-x woke up/);
      assert.equal(leaseRow("main", "hib-x"), `${a.nodeUrl} 1`);
      assert.equal(pg.sql("SELECT value FROM signe_room_storage WHERE namespace = 'main' AND room_id = 'hib-x' AND key = 'state:count'"), "2");
      for (const c of [ca, cb, cb2]) await c.close();
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  test("room-to-room fetch of a room another node owns: forwarded to the owner, its answer returned", async () => {
    const rooms = roomsDir();
    const a = await node(rooms);
    const b = await node(rooms);
    try {
      const cb = await join(b, "hop-far", "f1"); // B owns hop-far
      for (let i = 0; i < 3; i++) cb.send({ action: "inc" });
      await cb.next((m) => m?.type === "sync" && m.value.count === 3);
      const m0 = await metrics(a);
      // hop-near's route (on A, which takes its lease) fetches hop-far's /count.
      let r = await http("GET", `${a.url}/parties/main/hop-near/peek/hop-far`);
      assert.equal(r.status, 200, r.body);
      assert.deepEqual(r.json, { status: 200, count: 3 });
      assert.equal(leaseRow("main", "hop-near"), `${a.nodeUrl} 1`);
      assert.equal(leaseRow("main", "hop-far"), `${b.nodeUrl} 1`, "the fetch moved the target's lease");
      const m1 = await metrics(a);
      assert.equal(metric(m1, "lunaroom_cluster_http_forwarded_total") - metric(m0, "lunaroom_cluster_http_forwarded_total"), 1, m1);
      // Again (the owner is cached now), after a change on B.
      cb.send({ action: "inc" });
      await cb.next((m) => m?.type === "sync" && m.value.count === 4);
      r = await http("GET", `${a.url}/parties/main/hop-near/peek/hop-far`);
      assert.deepEqual(r.json, { status: 200, count: 4 });
      // A target nobody holds: taken by the fetching node, as a client's request would.
      r = await http("GET", `${b.url}/parties/main/hop-far/peek/hop-free`);
      assert.deepEqual(r.json, { status: 200, count: 0 });
      assert.equal(leaseRow("main", "hop-free"), `${b.nodeUrl} 1`);
      await cb.close();
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  test("session transfer in its local form to a room on another node: the session arrives at the owner", async () => {
    const rooms = roomsDir();
    const a = await node(rooms);
    const b = await node(rooms);
    try {
      const dst = await join(b, "hop-dst", "d0"); // B owns the target
      const src = await join(a, "hop-src", "mover"); // A owns the source
      src.send({ action: "rename", value: "zed" });
      await src.next((m) => m?.type === "sync" && JSON.stringify(m.value).includes("zed"));
      src.send({ action: "go", value: "hop-dst" });
      const t = await src.next((m) => m?.type === "transfer", 5000);
      assert.equal(t.value.error, null, JSON.stringify(t));
      assert.match(t.value.token, /^[A-Za-z0-9]{22}$/);
      assert.equal(leaseRow("main", "hop-dst"), `${b.nodeUrl} 1`);
      const moved = await join(a, "hop-dst", `mover2&transferToken=${t.value.token}`); // relayed to B
      assert.ok(!moved.refused, JSON.stringify(moved.refused));
      const snap = moved.messages.find((m) => m?.type === "sync" && m.value.pId);
      const me = snap.value.players?.[snap.value.pId];
      assert.equal(me?.name, "zed", JSON.stringify(snap));
      assert.equal(me?.level, 11, "onSessionRestore ran on the owner");
      // To a room nobody holds: this node takes its lease, as for a client.
      src.send({ action: "go", value: "hop-new" });
      const t2 = await src.next((m) => m?.type === "transfer", 5000);
      assert.equal(t2.value.error, null, JSON.stringify(t2));
      assert.equal(leaseRow("main", "hop-new"), `${a.nodeUrl} 1`);
      const there = await join(a, "hop-new", `mover3&transferToken=${t2.value.token}`);
      const snap2 = there.messages.find((m) => m?.type === "sync" && m.value.pId);
      assert.equal(snap2.value.players?.[snap2.value.pId]?.name, "zed", JSON.stringify(snap2));
      for (const c of [dst, src, moved, there]) await c.close();
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  test("a node stopped while GET /admin/cluster waits for the database: the request's state is freed (ASan: no leak)", { skip: noAsan }, async () => {
    const rooms = roomsDir();
    const a = await clusterNode(pg, rooms, { env: { ...ENV, ASAN_OPTIONS: "detect_leaks=1" }, bin: ASAN_BIN });
    const lock = pg.session();
    try {
      lock.send("BEGIN; LOCK TABLE lunaroom_leases IN ACCESS EXCLUSIVE MODE; SELECT 'locked';");
      await until(() => lock.output().includes("locked"), 5000, "the lock");
      let answered = false;
      const pending = http("GET", `${a.url}/admin/cluster`, undefined, ADMIN).then(
        (r) => { answered = true; return r; }, (e) => { answered = true; return { error: e.message }; });
      await sleep(500);
      assert.equal(answered, false, "the lease table is locked: the list cannot be read");
      const code = await a.stop("SIGTERM", 20000);
      assert.doesNotMatch(a.logs(), /LeakSanitizer|AddressSanitizer/, a.logs());
      assert.equal(code, 0, a.logs());
      await pending;
    } finally {
      lock.send("ROLLBACK;");
      await lock.close();
      await a.stop();
    }
  });
  test("POST /admin/undrain: a drained node takes leases again", async () => {
    const rooms = roomsDir();
    const a = await node(rooms);
    try {
      const c1 = await join(a, "hop-d1", "u1");
      assert.ok(!c1.refused);
      let r = await http("POST", `${a.url}/admin/drain`, undefined, ADMIN);
      assert.deepEqual(r.json, { drained: 1 });
      assert.equal((await c1.closed).code, 1001);
      await until(() => !leaseValid("main", "hop-d1"), 3000, "the drained room's lease given back");
      // Drained: a room nobody holds is refused here, no lease taken.
      const refused = await join(a, "hop-d2", "u2");
      assert.equal(refused.refused?.code, 4409, JSON.stringify(refused.refused));
      assert.equal(pg.sql("SELECT count(*) FROM lunaroom_leases WHERE room_id = 'hop-d2' AND expires_at > now()"), "0");
      assert.equal((await http("POST", `${a.url}/admin/undrain`)).status, 403, "undrain without a token");
      r = await http("POST", `${a.url}/admin/undrain`, undefined, ADMIN);
      assert.equal(r.status, 200, r.body);
      assert.deepEqual(r.json, { undrained: true });
      const c2 = await join(a, "hop-d2", "u3");
      assert.ok(!c2.refused, JSON.stringify(c2.refused));
      assert.equal(leaseRow("main", "hop-d2"), `${a.nodeUrl} 1`);
      assert.equal(metric(await metrics(a), "lunaroom_cluster_rooms_owned"), 1);
      assert.deepEqual((await http("POST", `${a.url}/admin/undrain`, undefined, ADMIN)).json, { undrained: false });
      await c2.close();
    } finally {
      await a.stop();
    }
  });
});

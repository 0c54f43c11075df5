/*
 * cluster.test.mjs - `--cluster postgres://... --node-url ...`: two nodes on
 * one throwaway PostgreSQL (pg.mjs), leases and fencing.
 *
 * Owns: one owner per room (the other node refuses it with close code 4409
 * and HTTP 409 while the owner's lease is valid); fail-over after kill -9
 * (the survivor takes the room once the lease expired and restores its
 * state; the time is printed); fencing after SIGSTOP past the lease (the
 * paused node, woken up, writes nothing, shows nothing, and closes its
 * clients with 1012). These nodes have no SHARD_SECRET, so they refuse
 * (4409/409) instead of relaying; relaying is cluster3.test.mjs.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import fs from "node:fs";
import path from "node:path";
import { ROOT, http, sleep, tempDir, wsClient } from "./lib.mjs";
import { clusterNode, join } from "./cluster_lib.mjs";
import { pgMissing, startPg } from "./pg.mjs";

const skip = pgMissing();
if (skip) console.log(`# skipped: ${skip}`);

const LEASE = 1000;
let pg;
before(() => {
  if (!skip) pg = startPg();
});
after(() => pg?.stop());

function roomsDir() {
  const dir = tempDir("lunaroom-cluster-");
  fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/fill.lua"), path.join(dir, "fill.lua"));
  return dir;
}

const node = (rooms, leaseMs = LEASE, extra = []) => clusterNode(pg, rooms, { leaseMs, extra });

const maxCount = (c) =>
  Math.max(0, ...c.messages.filter((m) => m?.type === "sync" && typeof m.value.count === "number").map((m) => m.value.count));
const lease = (room) => pg.sql(`SELECT node_id || ' ' || epoch FROM lunaroom_leases WHERE namespace = 'main' AND room_id = '${room}'`);
const released = (room) => pg.sql(`SELECT expires_at <= now() FROM lunaroom_leases WHERE room_id = '${room}'`) === "t";
const stored = (room) => pg.sql(`SELECT value FROM signe_room_storage WHERE namespace = 'main' AND room_id = '${room}' AND key = 'state:count'`);

describe("a cluster of two nodes on one PostgreSQL", { skip: skip ?? false }, () => {
  test("one owner: the other node refuses while the lease is valid; kill -9 -> the survivor takes over", async () => {
    const rooms = roomsDir();
    const a = await node(rooms);
    const b = await node(rooms);
    try {
      const ca = await join(a, "fill-own", "u1");
      for (let i = 0; i < 5; i++) ca.send({ action: "inc" });
      await ca.next((m) => m?.type === "sync" && m.value.count === 5);
      assert.equal(lease("fill-own"), `${a.nodeUrl} 1`);
      assert.equal(stored("fill-own"), "5");

      const refused = await join(b, "fill-own", "u2");
      assert.ok(refused.refused, "node B served a room node A owns");
      assert.equal(refused.refused.code, 4409);
      assert.equal((await http("GET", `${b.url}/parties/main/fill-own/count`)).status, 409);
      assert.equal(lease("fill-own"), `${a.nodeUrl} 1`, "a refused take changed the lease");

      a.proc.kill("SIGKILL");
      const t0 = performance.now();
      let cb;
      for (;;) {
        const r = await join(b, "fill-own", "u3");
        if (!r.refused) {
          cb = r;
          break;
        }
        assert.ok(performance.now() - t0 < LEASE + 3000, "node B never took the room");
        await sleep(50);
      }
      const failover = performance.now() - t0;
      console.log(`# fail-over (kill -9 -> snapshot from the survivor), lease ${LEASE} ms: ${failover.toFixed(0)} ms`);
      assert.equal(maxCount(cb), 5, "state not restored");
      assert.equal(lease("fill-own"), `${b.nodeUrl} 2`);
      cb.send({ action: "inc" });
      await cb.next((m) => m?.type === "sync" && m.value.count === 6);
      assert.equal(stored("fill-own"), "6");
      const metrics = (await http("GET", `${b.url}/metrics`)).body;
      const metric = (name) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(metrics)?.[1]);
      assert.equal(metric("lunaroom_cluster_rooms_owned"), 1);
      assert.equal(metric("lunaroom_cluster_leases_taken_total"), 1);
      assert.ok(metric("lunaroom_cluster_rooms_refused_total") >= 2, metrics);
      assert.equal(metric("lunaroom_cluster_leases_lost_total"), 0);
      assert.ok(metric("lunaroom_cluster_lease_renewals_total") >= 1);
      assert.ok(metric("lunaroom_pg_transactions_total") >= 1);
      assert.equal(metric("lunaroom_pg_connected"), 1);
      assert.equal(await b.stop(), 0, b.logs());
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  test("two nodes racing for the same free rooms: exactly one wins each", async () => {
    const rooms = roomsDir();
    const a = await node(rooms);
    const b = await node(rooms);
    try {
      const n = 20;
      const pairs = await Promise.all(
        Array.from({ length: n }, (_, i) =>
          i % 2 // who asks first alternates
            ? Promise.all([join(a, `fill-race-${i}`, `ra${i}`), join(b, `fill-race-${i}`, `rb${i}`)])
            : Promise.all([join(b, `fill-race-${i}`, `rb${i}`), join(a, `fill-race-${i}`, `ra${i}`)]).then(([y, x]) => [x, y]),
        ),
      );
      for (let i = 0; i < n; i++) {
        const [ra, rb] = pairs[i];
        assert.ok(!!ra.refused !== !!rb.refused, `room ${i}: ${ra.refused ? "both refused" : "both served"}`);
        const loser = ra.refused ? ra : rb;
        assert.equal(loser.refused.code, 4409);
        const winner = ra.refused ? b : a;
        assert.equal(lease(`fill-race-${i}`), `${winner.nodeUrl} 1`);
      }
      console.log(`# race: node A won ${pairs.filter(([ra]) => !ra.refused).length} of ${n} rooms, node B the others`);
      for (const [ra, rb] of pairs) {
        (ra.c ?? ra).close();
        (rb.c ?? rb).close();
      }
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  test("a node that stops (SIGTERM) or evicts a room gives its lease back: another node takes it at once", async () => {
    const rooms = roomsDir();
    const long = 60000; // no lease expires during this test
    const a = await node(rooms, long, ["--evict-after", "300"]);
    const b = await node(rooms, long);
    try {
      const ca = await join(a, "fill-evict", "e1");
      ca.send({ action: "inc" });
      await ca.next((m) => m?.type === "sync" && m.value.count === 1);
      ca.close();
      for (let t = 0; t < 100 && !released("fill-evict"); t++) await sleep(100);
      for (let t = 0; t < 20 && !/room main\/fill-evict evicted/.test(a.logs()); t++) await sleep(50); // the log arrives through the event loop
      assert.match(a.logs(), /room main\/fill-evict evicted/);
      const cb = await join(b, "fill-evict", "e2");
      assert.ok(!cb.refused, "the evicted room's lease was not given back");
      assert.equal(maxCount(cb), 1);
      cb.close();

      const ca2 = await join(a, "fill-term", "t1");
      for (let i = 0; i < 4; i++) ca2.send({ action: "inc" });
      await ca2.next((m) => m?.type === "sync" && m.value.count === 4);
      assert.equal(await a.stop(), 0, a.logs());
      const t0 = performance.now();
      for (let t = 0; t < 50 && !released("fill-term"); t++) await sleep(20);
      const cb2 = await join(b, "fill-term", "t2");
      assert.ok(!cb2.refused, "the stopped node's lease was not given back");
      assert.equal(maxCount(cb2), 4);
      assert.equal(lease("fill-term"), `${b.nodeUrl} 2`);
      console.log(`# hand-off after SIGTERM (lease ${long} ms): ${(performance.now() - t0).toFixed(0)} ms`);
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  test("a room whose client left while it loaded is not kept (nor its lease)", async () => {
    const rooms = roomsDir();
    const a = await node(rooms, 8000); // renewed every 2 s; expires by itself only after 8 s
    const lock = pg.session();
    try {
      lock.send("BEGIN; LOCK TABLE signe_room_storage IN ACCESS EXCLUSIVE MODE; SELECT 'locked';");
      for (let t = 0; t < 50 && !lock.output().includes("locked"); t++) await sleep(50);
      const c = wsClient(`${a.wsUrl}/parties/main/fill-orphan?id=o1`);
      await c.opened;
      await sleep(200); // the take and the read wait for the lock (one transaction)
      c.close();
      await sleep(200);
      lock.send("COMMIT;");
      for (let t = 0; t < 50 && lease("fill-orphan") === ""; t++) await sleep(20);
      assert.equal(lease("fill-orphan"), `${a.nodeUrl} 1`);
      const t0 = performance.now();
      for (let t = 0; t < 100 && !released("fill-orphan"); t++) await sleep(50);
      assert.ok(released("fill-orphan"), "the lease of a room nobody uses is still held");
      assert.ok(performance.now() - t0 < 4000, "released by expiry, not given back");
    } finally {
      await lock.close();
      await a.stop();
    }
  });

  test("the database unreachable: a node stops serving its rooms before their leases can expire", async () => {
    const rooms = roomsDir();
    const a = await node(rooms);
    try {
      const ca = await join(a, "fill-partition", "q1");
      ca.send({ action: "inc" });
      await ca.next((m) => m?.type === "sync" && m.value.count === 1);
      pg.stop();
      const t0 = performance.now();
      const closed = await Promise.race([ca.closed, sleep(5000).then(() => null)]);
      const ms = performance.now() - t0;
      assert.ok(closed, "the node kept serving without renewing its lease");
      assert.equal(closed.code, 1012);
      assert.ok(ms <= LEASE, `dropped after ${ms.toFixed(0)} ms, the lease is ${LEASE} ms`);
      assert.match(a.logs(), /no renewal reached the database/);
    } finally {
      pg.start();
      await a.stop();
    }
  });

  test("fencing in the database: a write after the lease moved is not stored, not shown, and drops the room", async () => {
    const rooms = roomsDir();
    const a = await node(rooms, 60000); // renewals every 15 s: only the write's own fence can notice
    try {
      const ca = await join(a, "fill-steal", "s1");
      for (let i = 0; i < 2; i++) ca.send({ action: "inc" });
      await ca.next((m) => m?.type === "sync" && m.value.count === 2);
      assert.equal(stored("fill-steal"), "2");
      // Another node takes the lease behind A's back (as after an expiry).
      pg.sql("UPDATE lunaroom_leases SET node_id = 'http://elsewhere', epoch = epoch + 1 WHERE room_id = 'fill-steal'");
      ca.send({ action: "inc" });
      const closed = await Promise.race([ca.closed, sleep(3000).then(() => null)]);
      assert.ok(closed, "the room kept running without its lease");
      assert.equal(closed.code, 1012);
      assert.equal(maxCount(ca), 2, "a count that is not stored was shown");
      assert.equal(stored("fill-steal"), "2", "a write went through without the lease");
      assert.match(a.logs(), /another holder or the lease expired/);
      const metrics = (await http("GET", `${a.url}/metrics`)).body;
      assert.match(metrics, /^lunaroom_cluster_leases_lost_total 1$/m);
      assert.match(metrics, /^lunaroom_cluster_rooms_owned 0$/m);
      // Reconnecting to A: refused, the lease is someone else's (and valid).
      const again = await join(a, "fill-steal", "s2");
      assert.equal(again.refused?.code, 4409);
      assert.equal(await a.stop(), 0, a.logs());
    } finally {
      await a.stop();
    }
  });

  test("fencing: a node paused past its lease writes nothing and shows nothing once it wakes, and drops the room", async () => {
    const rooms = roomsDir();
    const a = await node(rooms);
    const b = await node(rooms);
    try {
      const ca = await join(a, "fill-fence", "f1");
      for (let i = 0; i < 3; i++) ca.send({ action: "inc" });
      await ca.next((m) => m?.type === "sync" && m.value.count === 3);
      a.proc.kill("SIGSTOP");
      await sleep(LEASE + 300);
      const cb = await join(b, "fill-fence", "f2");
      assert.ok(!cb.refused, "node B could not take an expired lease");
      assert.equal(maxCount(cb), 3);
      cb.send({ action: "inc" });
      await cb.next((m) => m?.type === "sync" && m.value.count === 4);
      assert.equal(lease("fill-fence"), `${b.nodeUrl} 2`);
      // Queued in A's socket while it sleeps: handled the moment it wakes.
      for (let i = 0; i < 3; i++) ca.send({ action: "inc" });
      a.proc.kill("SIGCONT");
      const closed = await Promise.race([ca.closed, sleep(5000).then(() => null)]);
      assert.ok(closed, "the paused node kept serving the room");
      assert.equal(closed.code, 1012);
      assert.equal(maxCount(ca), 3, "the paused node showed a count it never stored");
      await sleep(300);
      assert.equal(stored("fill-fence"), "4", "the paused node wrote with a stale lease");
      assert.equal(lease("fill-fence"), `${b.nodeUrl} 2`);
      assert.match(a.logs(), /lease \(epoch 1\) is lost/);
      // B still serves it.
      cb.send({ action: "inc" });
      await cb.next((m) => m?.type === "sync" && m.value.count === 5);
      assert.equal(await a.stop(), 0, a.logs());
      assert.equal(await b.stop(), 0, b.logs());
    } finally {
      a.proc.kill("SIGCONT");
      await a.stop();
      await b.stop();
    }
  });
});

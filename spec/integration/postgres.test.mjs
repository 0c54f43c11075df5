/*
 * postgres.test.mjs - --storage postgres://... with the real binary and a
 * throwaway PostgreSQL (pg.mjs -> spec/cluster/pg.sh).
 *
 * Owns: state persists across a restart; kill -9 with throttleStorage = 0
 * loses nothing a client saw; PostgreSQL stopped mid-run gives storage error
 * packets and /readyz 503 and everything commits once it is back; a table
 * locked by another session holds packets but never the loop (/healthz
 * stays fast); writes of many rooms in one loop turn share a transaction.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import fs from "node:fs";
import path from "node:path";
import { ROOT, http, sleep, startServer, tempDir, wsClient } from "./lib.mjs";
import { pgMissing, startPg } from "./pg.mjs";

const skip = pgMissing();
if (skip) console.log(`# skipped: ${skip}`);

let pg;
before(() => {
  if (!skip) pg = startPg();
});
after(() => pg?.stop());

function roomsDir() {
  const dir = tempDir("lunaroom-pgrooms-");
  fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/fill.lua"), path.join(dir, "fill.lua"));
  return dir;
}

const serve = (rooms, args = []) =>
  startServer({ rooms, args: ["--storage", pg.url, "--no-watch", ...args] });

async function join(srv, room, id) {
  const c = wsClient(`${srv.wsUrl}/parties/main/${room}?id=${id}`);
  await c.opened;
  await c.next((m) => m?.type === "sync" && m.value.pId !== undefined, 5000);
  return c;
}

const maxCount = (c) =>
  Math.max(0, ...c.messages.filter((m) => m?.type === "sync" && typeof m.value.count === "number").map((m) => m.value.count));

const stored = (room) => pg.sql(`SELECT value FROM signe_room_storage WHERE namespace = 'main' AND room_id = '${room}' AND key = 'state:count'`);

async function timed(fn) {
  const t0 = performance.now();
  const r = await fn();
  return { r, ms: performance.now() - t0 };
}

// The room of spec/backends_spec.lua, with a request to read it back.
const KV_ROOM = `local lr = require "lunaroom"
return lr.room { path = "kv-{name}", rateLimit = { rate = 0, burst = 0 },
  state = { players = lr.users(lr.schema { x = 0 }), m = lr.sync {}, count = 0 },
  actions = {
    inc = function(r) r.count = r.count + 1 end,
    set = function(r, _, v) r.m[v.k] = v.v end,
    del = function(r, _, k) r.m[k] = nil end,
  },
  requests = { ["GET /m"] = function(r) return { count = r.count, m = r.m } end },
}`;

describe("storage on PostgreSQL, on the wire", { skip: skip ?? false }, () => {
  test("the checks of backends_spec.lua: exact numbers, compacted deletes (prefix), sessions, odd keys, restart", async () => {
    const rooms = roomsDir();
    fs.writeFileSync(path.join(rooms, "kv.lua"), KV_ROOM);
    let srv = await serve(rooms);
    const row = (key) => pg.sql(`SELECT value FROM signe_room_storage WHERE namespace = 'main' AND room_id = 'kv-b' AND key = '${key}'`);
    try {
      const c = await join(srv, "kv-b", "s1");
      c.send({ action: "inc" });
      c.send({ action: "set", value: { k: "a", v: 2 ** 53 } });
      c.send({ action: "set", value: { k: "f", v: 0.1 + 0.2 } });
      c.send({ action: "set", value: { k: "x%_y'\\", v: "é\u2028" } }); // LIKE wildcards, quote, backslash
      await c.next((m) => m?.type === "sync" && m.value.m?.["x%_y'\\"] !== undefined);
      assert.equal(row("state:count"), "1");
      assert.equal(row("state:m.a"), "9007199254740992");
      assert.equal(row("state:m.f"), "0.30000000000000004");
      assert.equal(JSON.parse(pg.sql("SELECT value FROM signe_room_storage WHERE room_id = 'kv-b' AND key LIKE 'state:m.x%'")), "é\u2028");
      assert.equal(pg.sql("SELECT key FROM signe_room_storage WHERE room_id = 'kv-b' AND key LIKE 'state:m.x%'"), "state:m.x%_y'\\");
      assert.ok(JSON.parse(row("session:s1")).publicId);
      c.send({ action: "del", value: "a" });
      await c.next((m) => m?.type === "sync" && m.value.m?.a === "$delete");
      const keys = pg.sql("SELECT key FROM signe_room_storage WHERE room_id = 'kv-b' AND key LIKE 'state:%' ORDER BY key");
      assert.equal(keys, "state:.", "a delete compacts the state into one row (prefix delete)");
      const compact = JSON.parse(row("state:."));
      assert.deepEqual([compact.m, compact.count], [{ f: 0.30000000000000004, "x%_y'\\": "é\u2028" }, 1]);
      for (let i = 1; i <= 200; i++) {
        c.send({ action: "set", value: { k: "k" + i, v: i } });
        c.send({ action: "del", value: "k" + i });
      }
      c.send({ action: "inc" });
      await c.next((m) => m?.type === "sync" && m.value.count === 2, 10000);
      assert.ok(Number(pg.sql("SELECT count(*) FROM signe_room_storage WHERE room_id = 'kv-b'")) <= 6);
      c.close();
      assert.equal(await srv.stop(), 0, srv.logs());
      srv = await serve(rooms);
      const res = await http("GET", `${srv.url}/parties/main/kv-b/m`);
      assert.equal(res.status, 200);
      const body = JSON.parse(res.body);
      assert.equal(body.count, 2);
      assert.deepEqual(body.m, { f: 0.30000000000000004, "x%_y'\\": "é\u2028" });
    } finally {
      await srv.stop();
    }
  });

  test("state persists across a restart (same table and keys as SQLite)", async () => {
    const rooms = roomsDir();
    let srv = await serve(rooms);
    try {
      const a = await join(srv, "fill-persist", "a1");
      for (let i = 0; i < 7; i++) a.send({ action: "inc" });
      await a.next((m) => m?.type === "sync" && m.value.count === 7);
      assert.equal(stored("fill-persist"), "7");
      a.close();
      assert.equal(await srv.stop(), 0, srv.logs());
      srv = await serve(rooms);
      const res = await http("GET", `${srv.url}/parties/main/fill-persist/count`);
      assert.equal(res.status, 200);
      assert.equal(JSON.parse(res.body).count, 7);
    } finally {
      await srv.stop();
    }
  });

  test("kill -9 with throttleStorage = 0 loses nothing a client saw", async () => {
    const rooms = roomsDir();
    let srv = await serve(rooms);
    let seen = 0;
    try {
      const a = await join(srv, "fill-kill", "k1");
      // A steady stream of actions; kill the server while they flow.
      for (let i = 0; i < 300; i++) a.send({ action: "inc" });
      await a.next((m) => m?.type === "sync" && m.value.count >= 50, 5000);
      srv.proc.kill("SIGKILL");
      await srv.stop();
      await sleep(100);
      seen = maxCount(a);
      assert.ok(seen >= 50);
      srv = await serve(rooms);
      const res = await http("GET", `${srv.url}/parties/main/fill-kill/count`);
      const count = JSON.parse(res.body).count;
      assert.ok(count >= seen, `client saw ${seen}, stored ${count}`);
    } finally {
      await srv.stop();
    }
  });

  test("PostgreSQL stopped: storage errors, /readyz 503, everything commits once it is back", async () => {
    const rooms = roomsDir();
    const srv = await serve(rooms);
    try {
      const a = await join(srv, "fill-down", "d1");
      for (let i = 0; i < 3; i++) a.send({ action: "inc" });
      await a.next((m) => m?.type === "sync" && m.value.count === 3);
      pg.stop();
      a.send({ action: "inc" }); // the write fails: the sync waits, the room is failing
      const e = await a.next((m) => m?.type === "error", 5000);
      assert.equal(e.value.code, "storage");
      await sleep(300);
      assert.equal(maxCount(a), 3, "a count that is not stored was shown");
      const ready = await http("GET", `${srv.url}/readyz`);
      assert.equal(ready.status, 503);
      const { ms } = await timed(() => http("GET", `${srv.url}/healthz`));
      assert.ok(ms < 50, `/healthz took ${ms} ms while the database is down`);
      pg.start();
      await a.next((m) => m?.type === "sync" && m.value.count === 4, 10000);
      assert.equal(stored("fill-down"), "4");
      for (let t = 0; t < 50 && (await http("GET", `${srv.url}/readyz`)).status !== 200; t++) await sleep(100);
      assert.equal((await http("GET", `${srv.url}/readyz`)).status, 200);
      assert.match(srv.logs(), /postgres storage: .*\(reconnecting\)/);
    } finally {
      if (!fs.existsSync(path.join(pg.dir, "data", "postmaster.pid"))) pg.start();
      await srv.stop();
    }
  });

  test("SIGTERM while PostgreSQL is down: the writes are retried and commit once it is back (exit 0)", async () => {
    const rooms = roomsDir();
    const srv = await serve(rooms, ["--shutdown-timeout", "8000"]);
    try {
      const a = await join(srv, "fill-term", "t1");
      a.send({ action: "inc" });
      await a.next((m) => m?.type === "sync" && m.value.count === 1);
      pg.stop();
      a.send({ action: "inc" });
      assert.equal((await a.next((m) => m?.type === "error", 5000)).value.code, "storage");
      const exited = srv.stop("SIGTERM", 15000);
      await sleep(1000); // the event loop is gone by now: the database socket is polled by the shutdown retry
      pg.start();
      assert.equal(await exited, 0, srv.logs());
      assert.equal(stored("fill-term"), "2");
      assert.match(srv.logs(), /every pending write is stored/);
    } finally {
      if (!fs.existsSync(path.join(pg.dir, "data", "postmaster.pid"))) pg.start();
      await srv.stop();
    }
  });

  test("a row the database rejects fails its own room only, not the others written in the same transaction", async () => {
    const rooms = roomsDir();
    fs.writeFileSync(path.join(rooms, "kv.lua"), KV_ROOM);
    const srv = await serve(rooms);
    try {
      const n = 8;
      const cs = [];
      for (let i = 0; i < n; i++) cs.push(await join(srv, `kv-poison${i}`, `p${i}`));
      // A value PostgreSQL refuses (as it would refuse e.g. a key too long for its index).
      pg.sql("ALTER TABLE signe_room_storage ADD CONSTRAINT no_bad CHECK (key <> 'state:m.bad')");
      try {
        const lock = pg.session(); // everything below lands in the same loop turns, in one transaction
        lock.send("BEGIN; LOCK TABLE signe_room_storage IN ACCESS EXCLUSIVE MODE; SELECT 'locked';");
        for (let t = 0; t < 50 && !lock.output().includes("locked"); t++) await sleep(50);
        cs[0].send({ action: "set", value: { k: "bad", v: 1 } });
        for (const c of cs) c.send({ action: "inc" });
        await sleep(100);
        lock.send("COMMIT;");
        await lock.close();
        for (let i = 1; i < n; i++) await cs[i].next((m) => m?.type === "sync" && m.value.count === 1, 5000);
        assert.equal(pg.sql("SELECT count(*) FROM signe_room_storage WHERE room_id LIKE 'kv-poison%' AND key = 'state:count' AND value = '1'"), String(n - 1));
        assert.equal(maxCount(cs[0]), 0, "the poisoned room showed what it could not store");
        const ready = await http("GET", `${srv.url}/readyz`);
        assert.equal(ready.status, 503);
        assert.deepEqual(JSON.parse(ready.body).failingRooms, 1);
      } finally {
        pg.sql("ALTER TABLE signe_room_storage DROP CONSTRAINT no_bad");
      }
      // Accepted again: its writes commit on the next retry, in order.
      await cs[0].next((m) => m?.type === "sync" && m.value.count === 1, 10000);
      assert.equal(pg.sql("SELECT value FROM signe_room_storage WHERE room_id = 'kv-poison0' AND key = 'state:m.bad'"), "1");
    } finally {
      await srv.stop();
    }
  });

  test("creating the table fails (a user without CREATE): rooms are refused, and served once it is granted", async () => {
    const rooms = roomsDir();
    pg.sql("CREATE DATABASE schemafail");
    pg.sql("CREATE ROLE lr_user LOGIN");
    const admin = pg.url.replace(/\/lunaroom$/, "/schemafail");
    const url = admin.replace("postgres@", "lr_user@"); // PostgreSQL 15: no CREATE on public for other roles
    const srv = await startServer({ rooms, args: ["--storage", url, "--no-watch"] });
    try {
      const c = wsClient(`${srv.wsUrl}/parties/main/fill-schema?id=x1`);
      const closed = await c.closed;
      assert.ok(closed.code === 1011 || closed.code === 1013, `closed with ${closed.code}`);
      assert.match(srv.logs(), /creating the tables failed/);
      pg.sqlOn(admin, "GRANT CREATE ON SCHEMA public TO lr_user");
      let served = null;
      for (let t = 0; t < 60 && !served; t++) {
        await sleep(100);
        const r = await http("GET", `${srv.url}/parties/main/fill-schema/count`);
        if (r.status === 200) served = r;
      }
      assert.ok(served, "never served after CREATE was granted");
      assert.equal(JSON.parse(served.body).count, 0);
    } finally {
      await srv.stop();
    }
  });

  test("a table locked by another session holds packets, never the loop", async () => {
    const rooms = roomsDir();
    const srv = await serve(rooms);
    const lock = pg.session();
    try {
      const a = await join(srv, "fill-lock", "l1");
      a.send({ action: "inc" });
      await a.next((m) => m?.type === "sync" && m.value.count === 1);
      lock.send("BEGIN; LOCK TABLE signe_room_storage IN ACCESS EXCLUSIVE MODE; SELECT 'locked';");
      for (let t = 0; t < 50 && !lock.output().includes("locked"); t++) await sleep(50);
      assert.match(lock.output(), /locked/);
      a.send({ action: "inc" });
      await sleep(300);
      assert.equal(maxCount(a), 1, "the sync went out before its write committed");
      const times = [];
      for (let i = 0; i < 10; i++) times.push((await timed(() => http("GET", `${srv.url}/healthz`))).ms);
      assert.ok(Math.max(...times) < 50, `/healthz took ${Math.max(...times)} ms while the table is locked`);
      lock.send("COMMIT;");
      await a.next((m) => m?.type === "sync" && m.value.count === 2, 5000);
      assert.equal(stored("fill-lock"), "2");
    } finally {
      await lock.close();
      await srv.stop();
    }
  });

  test("writes of many rooms in one loop turn go in one transaction", async () => {
    const rooms = roomsDir();
    const srv = await serve(rooms);
    try {
      const n = 20;
      const cs = [];
      for (let i = 0; i < n; i++) cs.push(await join(srv, `fill-many-${i}`, `m${i}`));
      const before = Number(pg.sql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'lunaroom'"));
      const lock = pg.session();
      lock.send("BEGIN; LOCK TABLE signe_room_storage IN ACCESS EXCLUSIVE MODE; SELECT 'locked';");
      for (let t = 0; t < 50 && !lock.output().includes("locked"); t++) await sleep(50);
      // While the table is locked, one write is in flight; the others queue
      // and go in one transaction once it commits.
      for (const c of cs) c.send({ action: "inc" });
      await sleep(200);
      lock.send("COMMIT;");
      await lock.close();
      for (const c of cs) await c.next((m) => m?.type === "sync" && m.value.count === 1, 5000);
      await sleep(1100); // pg_stat is updated at most every 500 ms (PGSTAT_MIN_INTERVAL)
      const commits = Number(pg.sql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'lunaroom'")) - before;
      // ours: at most 2 (the one in flight + everything queued behind it);
      // psql's own statements: a few. One transaction per room would be >= 20.
      assert.ok(commits < 10, `${commits} transactions for ${n} rooms`);
      assert.equal(pg.sql("SELECT count(*) FROM signe_room_storage WHERE room_id LIKE 'fill-many-%' AND value = '1'"), String(n));
    } finally {
      await srv.stop();
    }
  });
});

/*
 * storage_failure.test.mjs - a failed storage write with the real binary
 * (issue "Hardening", items 7 and 8): a full SQLite file (capped with
 * ?max_page_count=) and a file locked by another process (the sqlite3 CLI
 * holding BEGIN EXCLUSIVE).
 *
 * Owns: nothing shown that is not stored (the packet waits, the sender gets
 * error code "storage", actions are refused), /readyz 503 while writes fail,
 * SIGTERM with unwritten data exits 1 naming the room and its keys, a locked
 * file never stalls the loop (/healthz within 50 ms) and the writes commit
 * once it is unlocked.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, test } from "node:test";
import fs from "node:fs";
import path from "node:path";
import { ROOT, http, sleep, startServer, tempDir, wsClient } from "./lib.mjs";

function setup() {
  const dir = tempDir("lunaroom-storefail-");
  const rooms = path.join(dir, "rooms");
  fs.mkdirSync(rooms);
  fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/fill.lua"), path.join(rooms, "fill.lua"));
  return { rooms, db: path.join(dir, "db.sqlite") };
}

const serve = (s, opts = "", args = []) =>
  startServer({ rooms: s.rooms, args: ["--storage", `sqlite:${s.db}${opts}`, "--no-watch", ...args] });

async function join(srv, room, id) {
  const c = wsClient(`${srv.wsUrl}/parties/main/${room}?id=${id}`);
  await c.opened;
  await c.next((m) => m?.type === "sync" && m.value.pId !== undefined);
  return c;
}

const maxCount = (c) =>
  Math.max(0, ...c.messages.filter((m) => m?.type === "sync" && typeof m.value.count === "number").map((m) => m.value.count));

describe("a failed storage write, on the wire", () => {
  test("a full disk: nothing shown that is not stored, readyz 503, SIGTERM exits 1 naming what is lost", async () => {
    const s = setup();
    let srv = await serve(s, "?max_page_count=40", ["--shutdown-timeout", "1000"]);
    try {
      const a = await join(srv, "fill-x", "a1");
      for (let i = 0; i < 5; i++) a.send({ action: "inc" });
      await a.next((m) => m?.type === "sync" && m.value.count === 5);
      assert.equal((await http("GET", `${srv.url}/readyz`)).status, 200);
      a.send({ action: "fill", value: 400000 }); // more than 40 pages: the commit fails
      assert.equal((await a.next((m) => m?.type === "error")).value.code, "storage");
      a.send({ action: "inc" });
      const refused = await a.next((m) => m?.type === "error");
      assert.equal(refused.value.code, "storage");
      assert.equal(refused.value.action, "inc");
      await sleep(200);
      // the client was never shown the blob, nor a count past what is stored
      assert.ok(!a.messages.some((m) => m?.type === "sync" && m.value.blob?.length > 0), "blob shown");
      assert.equal(maxCount(a), 5);
      const ready = await http("GET", `${srv.url}/readyz`);
      assert.equal(ready.status, 503);
      assert.equal(ready.json.rooms[0].room, "main/fill-x");
      assert.match(ready.json.rooms[0].error, /full/);
      assert.equal((await http("GET", `${srv.url}/healthz`)).status, 200);
      const t0 = Date.now();
      const code = await srv.stop("SIGTERM", 8000);
      assert.equal(code, 1, srv.logs());
      assert.ok(Date.now() - t0 < 5000, "bounded shutdown");
      assert.match(srv.logs(), /room main\/fill-x: disposed with 1 unwritten key\(s\), LOST: state:blob/);
      assert.match(srv.logs(), /stopped with errors \(exit status 1\)/);
      // what the client saw is what the database holds
      srv = await serve(s);
      const res = await http("GET", `${srv.url}/parties/main/fill-x/count`);
      assert.deepEqual(res.json, { count: 5, blob: 0 });
      assert.equal(await srv.stop("SIGTERM"), 0);
    } finally {
      await srv.stop("SIGKILL").catch(() => {});
    }
  });

  test("a file locked by another process: /healthz within 50 ms, writes commit once unlocked", async () => {
    const s = setup();
    const srv = await serve(s);
    let srv2;
    try {
      const clients = [];
      for (let i = 0; i < 6; i++) clients.push(await join(srv, `fill-r${i}`, `c${i}`));
      // another process takes the write lock and keeps it
      const cli = spawn("sqlite3", [s.db], { stdio: ["pipe", "pipe", "inherit"] });
      let out = "";
      cli.stdout.on("data", (d) => (out += d));
      cli.stdin.write("BEGIN EXCLUSIVE;\nSELECT 'locked';\n");
      for (let i = 0; i < 100 && !out.includes("locked"); i++) await sleep(20);
      assert.ok(out.includes("locked"), "sqlite3 took the lock");
      try {
        // every room writes: each commit finds the file locked
        const worst = [];
        for (let round = 0; round < 3; round++) {
          for (const c of clients) c.send({ action: "inc" });
          for (let k = 0; k < 5; k++) {
            const t0 = process.hrtime.bigint();
            const h = await http("GET", `${srv.url}/healthz`);
            worst.push(Number(process.hrtime.bigint() - t0) / 1e6);
            assert.equal(h.status, 200);
          }
        }
        assert.ok(Math.max(...worst) < 50, `healthz took ${Math.max(...worst).toFixed(1)} ms`);
        for (const c of clients) assert.equal((await c.next((m) => m?.type === "error")).value.code, "storage");
        assert.equal(maxCount(clients[0]), 0); // not stored, not shown
        assert.equal((await http("GET", `${srv.url}/readyz`)).status, 503);
    } finally {
      cli.stdin.end("ROLLBACK;\n.quit\n");
    }
    await new Promise((r) => cli.on("exit", r));
    // retried from a timer: every first inc commits and is shown, nothing lost
    for (const c of clients) await c.next((m) => m?.type === "sync" && m.value.count === 1, 4000);
    assert.equal((await http("GET", `${srv.url}/readyz`)).status, 200);
    assert.equal(await srv.stop("SIGTERM"), 0, srv.logs());
    srv2 = await serve(s);
    for (let i = 0; i < 6; i++)
      assert.equal((await http("GET", `${srv2.url}/parties/main/fill-r${i}/count`)).json.count, 1);
    assert.equal(await srv2.stop("SIGTERM"), 0);
    } finally {
      await srv.stop("SIGKILL").catch(() => {});
      await srv2?.stop("SIGKILL").catch(() => {});
    }
  });
});

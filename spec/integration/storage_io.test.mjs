/*
 * storage_io.test.mjs - a Lua storage backend that waits for I/O, with the
 * real binary: lua/lunaroom/backends/http.lua over kv_server.mjs. A room
 * whose storage is slow to load does not hold up the others; writes reach
 * the service; SIGTERM waits for them; a restart reads them back.
 *
 * Owns: the async Lua backend checks (issue "Hibernation, snapshots and
 * custom storage backends").
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { http, sleep, startServer, wsClient } from "./lib.mjs";
import { startKv } from "./kv_server.mjs";

const serve = (kv, args = []) =>
  startServer({
    args: ["--storage", "lua:lua/lunaroom/backends/http.lua", "--no-watch", ...args],
    env: { LUNAROOM_KV_URL: kv.url },
  });

async function join(srv, room, query = "") {
  const c = wsClient(`${srv.wsUrl}/parties/main/${room}${query}`);
  await c.opened;
  const first = await c.next((m) => m?.type === "sync" && m.value.pId !== undefined, 5000);
  return { c, first };
}

describe("a Lua backend over HTTP (lunaroom.io.request)", () => {
  test("a slow load does not block other rooms; writes land; SIGTERM drains; restart restores", async () => {
    // Loading "demo" takes 800 ms; everything else answers at once.
    const kv = await startKv({ delay: (ns, room, m) => (room === "demo" && m === "GET" ? 800 : 0) });
    let srv = await serve(kv);
    try {
      const g = await join(srv, "game", "?id=g1");
      const t0 = Date.now();
      const demo = wsClient(`${srv.wsUrl}/parties/main/demo?id=d1`);
      await demo.opened; // accepted at once, joins once loaded
      // Meanwhile the game room answers without waiting for the load.
      const times = [];
      for (let i = 0; i < 5; i++) {
        const s = Date.now();
        g.c.send({ action: "move", value: { x: 10 + i, y: 20 } });
        await g.c.next((m) => m?.type === "sync" && JSON.stringify(m.value).includes(`"x":${10 + i}`));
        times.push(Date.now() - s);
      }
      assert.ok(Date.now() - t0 < 700, `the game room was served while demo loaded (${times})`);
      assert.ok(Math.max(...times) < 200, `move round trips ${times} ms`);
      demo.send({ action: "increment", value: { amount: 5 } }); // before it joined: kept
      const first = await demo.next((m) => m?.type === "sync" && m.value.pId !== undefined, 5000);
      assert.ok(Date.now() - t0 >= 750, "demo joined after its storage loaded");
      assert.equal(first.value.count, 0);
      await demo.next((m) => m?.type === "sync" && m.value.count === 5);
      const res = await http("GET", `${srv.url}/parties/main/demo/count`);
      assert.deepEqual(JSON.parse(res.body), { count: 5 });
      for (let i = 0; i < 3; i++) demo.send({ action: "increment" });
      await demo.next((m) => m?.type === "sync" && m.value.count === 8);
      assert.equal(await srv.stop("SIGTERM"), 0);
      assert.equal(kv.data.get("main/demo").get("state:count"), "8");
      assert.ok(kv.data.get("main/game").has("session:g1"), "the session record reached the service");
      assert.ok(srv.logs().includes("storage lua"), "the server named its storage");

      srv = await serve(kv);
      const again = await join(srv, "demo", "?id=d1");
      assert.equal(again.first.value.count, 8);
      const back = await join(srv, "game", "?id=g1");
      assert.equal(back.first.value.pId, g.first.value.pId, "the session came back");
      assert.equal(back.first.value.players[g.first.value.pId].x, 14);
      assert.equal(await srv.stop("SIGTERM"), 0);
    } finally {
      await srv.stop("SIGKILL").catch(() => {});
      await kv.close();
    }
  });

  test("the service down: writes wait in order, nothing is shown before it is stored", async () => {
    let down = false;
    const kv = await startKv({ fail: (ns, room, m) => (down && m === "POST" ? 503 : 0) });
    const srv = await serve(kv);
    try {
      const a = await join(srv, "demo", "?id=a1");
      await sleep(100); // the session records land
      down = true;
      a.c.send({ action: "increment" });
      await sleep(300);
      assert.match(srv.logs(), /write to the Lua backend failed .*retry in 1000 ms/);
      assert.notEqual(kv.data.get("main/demo")?.get("state:count"), "1");
      // not stored, so not shown (throttleStorage 0); the room refuses actions meanwhile
      assert.ok(!a.c.messages.some((m) => m?.type === "sync" && m.value.count === 1), a.c.raw.join("\n"));
      a.c.send({ action: "increment" });
      assert.equal((await a.c.next((m) => m?.type === "error")).value.code, "storage");
      const ready = await http("GET", `${srv.url}/readyz`);
      assert.equal(ready.status, 503);
      assert.equal(ready.json.rooms?.[0]?.room, "main/demo", JSON.stringify(ready.json));
      down = false;
      await a.c.next((m) => m?.type === "sync" && m.value.count === 1, 3000); // shown once stored
      assert.equal(kv.data.get("main/demo").get("state:count"), "1");
      assert.match(srv.logs(), /accepts writes again/);
      // ready again (the first probe of a Lua backend loads its probe room: poll)
      let status = 0;
      for (let i = 0; i < 20 && status !== 200; i++, await sleep(50))
        status = (await http("GET", `${srv.url}/readyz`)).status;
      assert.equal(status, 200);
      assert.equal(await srv.stop("SIGTERM"), 0);
    } finally {
      await srv.stop("SIGKILL").catch(() => {});
      await kv.close();
    }
  });

  test("SIGTERM while the service is down: bounded retries, exit 1, the lost keys logged", async () => {
    let down = false;
    const kv = await startKv({ fail: (ns, room, m) => (down && m === "POST" ? 503 : 0) });
    const srv = await serve(kv, ["--shutdown-timeout", "600"]);
    try {
      const a = await join(srv, "demo", "?id=a1");
      await sleep(100);
      down = true;
      a.c.send({ action: "increment" });
      await sleep(200);
      const t0 = Date.now();
      assert.equal(await srv.stop("SIGTERM", 8000), 1, srv.logs());
      assert.ok(Date.now() - t0 < 4000, "bounded");
      assert.match(srv.logs(), /storage main\/demo: 1 write batch\(es\) not on the backend, LOST: state:count/);
    } finally {
      await srv.stop("SIGKILL").catch(() => {});
      await kv.close();
    }
  });
});

/*
 * persistence.test.mjs - restart the real binary on the same SQLite file:
 * after SIGTERM everything pending is flushed; after kill -9 the database
 * opens, passes PRAGMA integrity_check, and holds at least everything a
 * client was shown (storage is written before the sync packet goes out).
 *
 * Owns: crash-safety and restart checks (issue "Persistence").
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { ROOT, http, sleep, startServer, wsClient, tempDir } from "./lib.mjs";

function setup() {
  const dir = tempDir("lunaroom-persist-");
  const rooms = path.join(dir, "rooms");
  fs.mkdirSync(rooms);
  for (const f of ["counter.lua", "game.lua"]) fs.copyFileSync(path.join(ROOT, "rooms", f), path.join(rooms, f));
  fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/slowsave.lua"), path.join(rooms, "slowsave.lua"));
  return { rooms, db: path.join(dir, "db.sqlite") };
}

const serve = (s) => startServer({ rooms: s.rooms, args: ["--storage", `sqlite:${s.db}`] });

async function open(srv, room, query) {
  const c = wsClient(`${srv.wsUrl}/parties/main/${room}${query}`);
  await c.opened;
  const first = await c.next((m) => m?.type === "sync" && m.value.pId !== undefined);
  return { c, first, pid: first.value.pId };
}

describe("persistence across restarts", () => {
  test("SIGTERM flushes pending writes; users and sessions come back", async () => {
    const s = setup();
    let srv = await serve(s);
    const a = await open(srv, "slowsave", "?id=p1");
    for (let i = 0; i < 5; i++) a.c.send({ action: "inc" });
    a.c.send({ action: "move", value: 42 });
    await a.c.next((m) => m?.value?.players?.[a.pid]?.x === 42);
    assert.equal(await srv.stop("SIGTERM"), 0);
    srv = await serve(s);
    assert.equal((await http("GET", `${srv.url}/parties/main/slowsave/count`)).json.count, 5);
    const again = await open(srv, "slowsave", "?id=p1");
    assert.equal(again.pid, a.pid);
    assert.equal(again.first.value.players[a.pid].x, 42);
    assert.equal(await srv.stop("SIGTERM"), 0);
  });

  test("kill -9 while clients write: integrity ok, nothing a client saw is lost", async () => {
    const s = setup();
    let srv = await serve(s);
    const clients = await Promise.all([1, 2, 3].map((i) => open(srv, "demo", `?id=k${i}`)));
    let seen = 0;
    for (const { c } of clients) {
      c.ws.on("message", (d) => {
        const m = JSON.parse(d.toString());
        if (m.type === "sync" && typeof m.value.count === "number") seen = Math.max(seen, m.value.count);
      });
    }
    const writers = clients.map(({ c }) => setInterval(() => c.send({ action: "increment" }), 2));
    await sleep(700);
    assert.equal(await srv.stop("SIGKILL"), 128 + 9);
    writers.forEach(clearInterval);
    assert.ok(seen > 50, `only ${seen} increments went through`);
    const check = execFileSync("sqlite3", [s.db, "PRAGMA integrity_check"]).toString().trim();
    assert.equal(check, "ok");
    srv = await serve(s);
    const count = (await http("GET", `${srv.url}/parties/main/demo/count`)).json.count;
    assert.ok(count >= seen, `stored ${count} < last seen ${seen}`);
    assert.ok(count <= seen + 3 * 10, `stored ${count} is far above last seen ${seen}`);
    assert.equal(await srv.stop("SIGTERM"), 0);
  });
});

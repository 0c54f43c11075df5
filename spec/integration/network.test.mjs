/*
 * network.test.mjs - the real binary on the example rooms, driven by raw
 * WebSockets (ws) and the unchanged npm client: exact packets, sessions,
 * HTTP routes, limits and shutdown (issue "Network").
 *
 * Owns: wire-level checks of protocol.md facts. Must not: rely on timing
 * beyond generous timeouts.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import fs from "node:fs";
import path from "node:path";
import WebSocket from "ws";
import { connectionRoom } from "@signe/sync/client";
import { ROOT, http, sleep, startServer, wsClient, tempDir } from "./lib.mjs";

// rooms/ plus the test rooms, in a temp folder.
function roomsDir() {
  const dir = tempDir("lunaroom-net-");
  for (const f of fs.readdirSync(path.join(ROOT, "rooms")).filter((f) => f.endsWith(".lua")))
    fs.copyFileSync(path.join(ROOT, "rooms", f), path.join(dir, f));
  fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/limited.lua"), path.join(dir, "limited.lua"));
  fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/burst.lua"), path.join(dir, "burst.lua"));
  return dir;
}

async function open(srv, room, query = "") {
  const c = wsClient(`${srv.wsUrl}/parties/main/${room}${query}`);
  await c.opened;
  const first = await c.next((m) => m && m.type === "sync" && m.value.pId !== undefined);
  return { c, first, pid: first.value.pId };
}

describe("network", () => {
  let srv;
  before(async () => {
    srv = await startServer({ rooms: roomsDir(), args: ["--max-queue", "1000000"] });
  });
  after(async () => {
    assert.equal(await srv.stop("SIGTERM"), 0, srv.logs());
  });

  test("initial state, and one action's exact patch seen by two clients", async () => {
    const a = await open(srv, "demo", "?id=net-a");
    const b = await open(srv, "demo", "?id=net-b");
    assert.deepEqual(Object.keys(a.first.value), ["pId", "count"]);
    const expected = `{"type":"sync","value":{"count":${b.first.value.count + 2}}}`;
    a.c.send({ action: "increment", value: { amount: 2 } });
    const ra = await a.c.next((m) => m?.type === "sync");
    const rb = await b.c.next((m) => m?.type === "sync" && m.value.pId === undefined);
    assert.equal(a.c.raw[a.c.messages.indexOf(ra)], expected);
    assert.equal(b.c.raw[b.c.messages.indexOf(rb)], expected);
    await a.c.close();
    await b.c.close();
  });

  test("reconnect with the same id keeps the publicId; two tabs share one user", async () => {
    const w = await open(srv, "game", "?id=net-watch");
    const a = await open(srv, "game", "?id=net-s1");
    const pid = a.pid;
    a.c.send({ action: "move", value: { x: 5, y: 6 } });
    await a.c.next((m) => m?.value?.players?.[pid]?.x === 5);
    await a.c.close();
    const a2 = await open(srv, "game", "?id=net-s1");
    assert.equal(a2.pid, pid);
    assert.equal(a2.first.value.players[pid].x, 5);
    const tab2 = await open(srv, "game", "?id=net-s1");
    assert.equal(tab2.pid, pid);
    await a2.c.close();
    await sleep(100);
    assert.ok(srv.logs().includes("closed"));
    await tab2.c.close();
    // game.lua has no lr.connected(): the others get user_disconnected, once
    const m = await w.c.next((m) => m?.type === "user_disconnected");
    assert.deepEqual(m, { type: "user_disconnected", value: { publicId: pid } });
    await w.c.close();
  });

  test("offline marking with lr.connected()", async () => {
    const w = await open(srv, "limited-1", "?id=w");
    const a = await open(srv, "limited-1", "?id=a");
    await w.c.next((m) => m?.value?.players?.[a.pid]?.online === true);
    await a.c.close();
    const m = await w.c.next((m) => m?.value?.players?.[a.pid]?.online === false);
    assert.deepEqual(m, { type: "sync", value: { players: { [a.pid]: { online: false } } } });
    await w.c.close();
  });

  test("maxUsers: the third user is closed with 4029", async () => {
    const a = await open(srv, "limited-2", "?id=a");
    const b = await open(srv, "limited-2", "?id=b");
    const c = wsClient(`${srv.wsUrl}/parties/main/limited-2?id=c`);
    assert.equal((await c.closed).code, 4029);
    const a2 = await open(srv, "limited-2", "?id=a"); // another tab of a is fine
    await Promise.all([a.c.close(), b.c.close(), a2.c.close()]);
  });

  test("invalid JSON, bad packets, unknown actions, failing handlers: error packets, nothing changes", async () => {
    const a = await open(srv, "limited-3", "?id=a");
    a.c.send("{nope");
    assert.equal((await a.c.next((m) => m?.type === "error")).value.code, "invalid_packet");
    a.c.send({ nope: 1 });
    assert.equal((await a.c.next((m) => m?.type === "error")).value.code, "invalid_packet");
    a.c.send({ action: "what" });
    assert.equal((await a.c.next((m) => m?.type === "error")).value.code, "unknown_action");
    a.c.send({ action: "boom" });
    const e = await a.c.next((m) => m?.type === "error");
    assert.equal(e.value.code, "handler");
    a.c.send({ action: "inc" });
    const p = await a.c.next((m) => m?.type === "sync");
    assert.deepEqual(p, { type: "sync", value: { count: 1 } }); // the failed 999 was never kept
    await a.c.close();
  });

  test("sixty sockets opened at once: each gets its snapshot first, and all end with the same players", async () => {
    const N = 60;
    const cs = [];
    for (let i = 0; i < N; i++) cs.push(wsClient(`${srv.wsUrl}/parties/main/burst-1?id=b${i}`));
    await Promise.all(cs.map((c) => c.opened));
    const firsts = await Promise.all(cs.map((c) => c.next((m) => m?.type === "sync" && m.value.pId !== undefined)));
    const pids = firsts.map((f) => f.value.pId).sort();
    assert.equal(new Set(pids).size, N);
    cs[0].send({ action: "move", value: 7 }); // after every join: everyone sees it last
    await Promise.all(cs.map((c) => c.next((m) => m?.type === "sync" && m.value.players?.[firsts[0].value.pId]?.x === 7)));
    let notices = 0;
    for (const c of cs) {
      // the snapshot is the first packet, whatever was sent to the socket while it joined
      assert.ok(c.messages[0]?.type === "sync" && c.messages[0].value.pId !== undefined, c.raw[0]);
      const players = {};
      for (const m of c.messages) {
        if (m?.type === "sync" && m.value.players)
          for (const [k, v] of Object.entries(m.value.players)) players[k] = { ...players[k], ...v };
        if (m?.type === "joined") notices++;
      }
      assert.deepEqual(Object.keys(players).sort(), pids);
      assert.equal(players[firsts[0].value.pId].x, 7);
    }
    assert.equal(notices, (N * (N - 1)) / 2); // each socket hears of every later one, once
    await Promise.all(cs.map((c) => c.close()));
  });

  test("a message many times the socket's receive buffer arrives whole", async () => {
    // 40 kB of JSON whitespace: lws hands it over in 1 kB pieces.
    const a = await open(srv, "chat-bigframe", "?id=a");
    a.c.send('{"action":"say",' + " ".repeat(40000) + '"value":{"text":"' + "y".repeat(400) + '"}}');
    const m = await a.c.next((m) => m?.type === "message");
    assert.equal(m.value.text, "y".repeat(400));
    await a.c.close();
  });

  test("an oversized frame is refused with 1009 and changes nothing", async () => {
    const a = await open(srv, "limited-4", "?id=a");
    a.c.send(JSON.stringify({ action: "inc", value: "x".repeat(70000) }));
    assert.equal((await a.c.closed).code, 1009);
    const r = await http("GET", `${srv.url}/parties/main/demo/count`);
    assert.equal(r.status, 200);
  });

  test("a slow consumer is disconnected instead of growing memory", async () => {
    const a = wsClient(`${srv.wsUrl}/parties/main/limited-5?id=slow`);
    await a.opened;
    a.ws._socket.pause(); // stop reading
    a.send({ action: "flood", value: 200 }); // 12 MB for a 1 MB queue
    const { code } = await Promise.race([
      (async () => { await sleep(500); a.ws._socket.resume(); return a.closed; })(),
    ]);
    assert.equal(code, 1008);
    assert.match(srv.logs(), /slow consumer|outgoing queue/);
  });

  test("shared packets of every frame size arrive whole and in order, to a reader and a paused one", async () => {
    // Each packet is queued on both connections: written alone from the
    // shared message (lone, or big at the head), batched behind others, or
    // bigger than a batch; 2-, 4- and 10-byte frame headers.
    const a = await open(srv, "limited-6", "?id=a");
    const b = await open(srv, "limited-6", "?id=b");
    b.c.ws._socket.pause(); // b's packets pile up in its queue meanwhile
    const sizes = [10, 200, 9000, 70000, 30000, 5, 100000, 125, 126, 65535, 65536, 8192, 8191, 3];
    for (let k = 0; k < 2; k++) a.c.send({ action: "sizes", value: sizes });
    const want = [];
    for (let k = 0; k < 2; k++) // ~0.7 MB: under this server's --max-queue even if the kernel takes none
      sizes.forEach((n, j) => want.push([j + 1, String.fromCharCode(96 + ((j + 1) % 26)).repeat(n)]));
    const got = async (c) => {
      const out = [];
      while (out.length < want.length) {
        const m = await c.next((m) => m?.type === "sized");
        out.push([m.value.i, m.value.data]);
      }
      return out;
    };
    const ra = got(a.c);
    await sleep(300);
    b.c.ws._socket.resume();
    const rb = got(b.c);
    for (const r of [await ra, await rb]) {
      assert.equal(r.length, want.length);
      r.forEach((x, k) => assert.ok(x[0] === want[k][0] && x[1] === want[k][1], `packet ${k}`));
    }
    await a.c.close();
    await b.c.close();
  });

  test("HTTP routes: GET, params, POST with validation and guard, 404", async () => {
    const u = `${srv.url}/parties/main/api`;
    const s = await http("GET", `${u}/status`);
    assert.equal(s.status, 200);
    assert.equal(s.json.status, "online");
    assert.deepEqual((await http("GET", `${u}/players/nobody`)).json, { error: "Player not found" });
    const ok = await http("POST", `${u}/scores`, { playerId: "p", score: 1 }, { authorization: "Bearer t" });
    assert.deepEqual([ok.status, ok.json], [200, { success: true }]);
    const bad = await http("POST", `${u}/scores`, { playerId: "p", score: -1 }, { authorization: "Bearer t" });
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error, "Invalid request body");
    assert.equal((await http("POST", `${u}/scores`, { playerId: "p", score: 1 })).status, 403);
    assert.equal((await http("GET", `${u}/nope`)).status, 404);
    assert.deepEqual((await http("GET", `${srv.url}/parties/main/demo/count`)).json.count >= 0, true);
  });

  test("the npm client stays in sync with a game room", async () => {
    const room = {};
    const conn = await connectionRoom(
      { host: `127.0.0.1:${srv.port}`, party: "main", room: "game", id: "npm-1", WebSocket, maxRetries: 0 },
      room,
    );
    try {
      const until = async (f) => {
        for (let i = 0; i < 100 && !f(); i++) await sleep(20);
        assert.ok(f());
      };
      await until(() => room.pId && room.players?.[room.pId]);
      conn.emit("move", { x: 100, y: 200 });
      await until(() => room.players[room.pId].x === 100 && room.players[room.pId].y === 200);
      const other = await open(srv, "game", "?id=npm-2");
      await until(() => room.players[other.pid] !== undefined);
      other.c.send({ action: "move", value: { x: 7, y: 8 } });
      await until(() => room.players[other.pid].x === 7);
      await other.c.close();
    } finally {
      conn.close();
    }
  });
});

describe("the README's run command", () => {
  test("make run serves rooms/ and stops on SIGTERM", async () => {
    const dataDir = tempDir("lunaroom-run-");
    // `make run` is `build/lunaroom serve rooms --port $(PORT)` with SQLite
    // storage: start exactly that (with a free port and a temp database).
    const srv = await startServer({
      rooms: "rooms",
      args: ["--storage", `sqlite:${dataDir}/lunaroom.sqlite`],
    });
    const a = await open(srv, "demo", "?id=readme");
    a.c.send({ action: "increment" });
    await a.c.next((m) => m?.type === "sync" && m.value.pId === undefined);
    assert.equal((await http("GET", `${srv.url}/parties/main/demo/count`)).json.count, 1);
    assert.equal(await srv.stop("SIGTERM"), 0);
    assert.ok(fs.statSync(`${dataDir}/lunaroom.sqlite`).size > 0);
  });
});

/*
 * transport.test.mjs - the real server on the example rooms/, seen from the
 * wire: HTTP errors and CORS, the first WebSocket packet, the unchanged npm
 * client (partysocket + @signe/sync connectionRoom), and a clean shutdown.
 *
 * Owns: transport-level expectations that hold for any room folder.
 * Must not: depend on a particular example room beyond "main/demo exists".
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { connectionRoom } from "@signe/sync/client";
import { http, startServer, wsClient } from "./lib.mjs";

const CORS = {
  "access-control-allow-origin": "*",
  "access-control-allow-methods": "GET, POST, PUT, DELETE, PATCH, OPTIONS",
  "access-control-allow-headers": "Content-Type, Authorization, X-Requested-With",
  "access-control-max-age": "86400",
};

describe("transport", () => {
  let srv;
  before(async () => {
    srv = await startServer({ rooms: "rooms" });
  });
  after(async () => {
    if (!srv) return;
    const exit = await srv.stop("SIGTERM");
    assert.equal(exit, 0, srv.logs());
  });

  test("HTTP to an unknown room: 404 JSON with CORS (Part 2 §1.4, §5.6)", async () => {
    // '~' is outside [A-Za-z0-9_-], so no "{id}" room pattern can match it.
    const r = await http("GET", `${srv.url}/parties/main/no~such~room/status`);
    assert.equal(r.status, 404);
    assert.match(r.headers["content-type"], /^application\/json/);
    assert.deepEqual(r.json, { error: "Not found" });
    for (const [k, v] of Object.entries(CORS)) assert.equal(r.headers[k], v, k);
  });

  test("OPTIONS on any party path: 200 {} with CORS (Part 2 §5.1)", async () => {
    const r = await http("OPTIONS", `${srv.url}/parties/main/no~such~room/anything`);
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, {});
    assert.equal(r.headers["access-control-allow-origin"], "*");
  });

  test("paths outside /parties/ are 404", async () => {
    const r = await http("GET", `${srv.url}/definitely/not/here.txt`);
    assert.equal(r.status, 404);
  });

  test("WebSocket /parties/main/demo: first packet is a sync carrying pId", async () => {
    const c = wsClient(`${srv.wsUrl}/parties/main/demo?id=spec-transport-1`);
    await c.opened;
    const first = await c.next();
    assert.equal(first.type, "sync");
    assert.equal(typeof first.value, "object");
    assert.equal(typeof first.value.pId, "string");
    assert.ok(first.value.pId.length > 0);
    const { code } = await c.close(1000);
    assert.equal(code, 1000);
  });

  test("the unchanged npm client (partysocket + connectionRoom) gets its pId", async () => {
    const room = {};
    const conn = await connectionRoom(
      {
        host: `127.0.0.1:${srv.port}`,
        party: "main",
        room: "demo",
        id: "spec-transport-2",
        WebSocket,
        maxRetries: 0,
      },
      room,
    );
    try {
      const deadline = Date.now() + 3000;
      while (room.pId === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(typeof room.pId, "string", "load() applied the first sync packet");
    } finally {
      conn.close();
    }
  });
});

describe("shutdown", () => {
  test("SIGTERM: open sockets get close code 1001 and the process exits 0", async () => {
    const srv = await startServer({ rooms: "rooms" });
    const clients = [0, 1, 2].map((i) => wsClient(`${srv.wsUrl}/parties/main/demo?id=spec-bye-${i}`));
    await Promise.all(clients.map((c) => c.opened));
    await Promise.all(clients.map((c) => c.next()));
    const exit = await srv.stop("SIGTERM");
    const closes = await Promise.all(clients.map((c) => c.closed));
    assert.deepEqual(
      closes.map((c) => c.code),
      [1001, 1001, 1001],
    );
    assert.equal(exit, 0, srv.logs());
  });
});

// Silent sockets (host/net_idle.c), with short times: --ws-ping 400 --ws-hangup 1600.
describe("silent sockets", () => {
  const PING = 400, HANGUP = 1600;
  let srv;
  before(async () => {
    srv = await startServer({ rooms: "rooms", args: ["--ws-ping", String(PING), "--ws-hangup", String(HANGUP)] });
  });
  after(async () => {
    if (!srv) return;
    assert.equal(await srv.stop("SIGTERM"), 0, srv.logs());
  });

  // A socket to main/demo that records the pings it gets; autoPong: whether
  // ws answers them (it does by default, as browsers do).
  async function socket(id, autoPong) {
    const ws = new WebSocket(`${srv.wsUrl}/parties/main/demo?id=${id}`, { autoPong });
    const s = { ws, pings: [], t0: 0 };
    ws.on("ping", () => s.pings.push(Date.now() - s.t0));
    s.closed = new Promise((res) => ws.once("close", (code) => res({ code, at: Date.now() - s.t0 })));
    const snapshot = new Promise((res) => ws.once("message", res));
    await new Promise((res, rej) => {
      ws.once("open", res);
      ws.once("error", rej);
    });
    s.t0 = Date.now();
    await snapshot;
    return s;
  }
  const within = (p, ms) => Promise.race([p, new Promise((res) => setTimeout(() => res(null), ms))]);

  test("a socket that does not answer pings is pinged, then hung up", async () => {
    const s = await socket("idle-silent", false);
    const closed = await within(s.closed, HANGUP + 5000);
    assert.ok(closed, `still open ${HANGUP + 5000} ms after its snapshot (pings at ${s.pings})`);
    assert.ok(s.pings.length >= 1, `hung up at ${closed.at} ms without a ping`);
    assert.ok(s.pings[0] >= PING - 100, `pinged after ${s.pings[0]} ms of silence (--ws-ping ${PING})`);
    assert.ok(closed.at >= HANGUP - 100, `hung up after ${closed.at} ms (--ws-hangup ${HANGUP})`);
    assert.ok(s.pings[0] < closed.at);
  });

  test("a socket that answers pings stays open", async () => {
    const s = await socket("idle-pong", true);
    const closed = await within(s.closed, 2.5 * HANGUP);
    assert.equal(closed, null, `closed after ${closed?.at} ms (pings at ${s.pings})`);
    assert.ok(s.pings.length >= 2, `pings: ${s.pings}`);
    s.ws.close();
  });

  test("a socket that sends messages stays open without answering pings", async () => {
    const s = await socket("idle-talk", false);
    const t = setInterval(() => s.ws.send(JSON.stringify({ action: "increment" })), PING / 2);
    const closed = await within(s.closed, 2.5 * HANGUP);
    clearInterval(t);
    assert.equal(closed, null, `closed after ${closed?.at} ms`);
    s.ws.close();
  });
});

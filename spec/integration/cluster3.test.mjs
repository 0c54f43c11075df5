/*
 * cluster3.test.mjs - any node serves any client: `--cluster` nodes relay
 * the clients (WebSocket and HTTP) of rooms another node owns to the owner
 * (host/cluster.c, one link per relayed room carrying all its clients).
 *
 * Owns: relaying (a node that does not own a room relays instead of
 * refusing; the owner's lease row is untouched; the directory is cached
 * with the lease: no lease query per message or per connect while cached);
 * the unchanged npm client through a relay (sync, actions, reconnect with
 * its session); three nodes with 30 rooms and npm clients spread over them
 * (one owner per room, every action reaches every client on every node);
 * kill -9 of a busy room's owner (clients reconnect through the other
 * nodes, the room is re-homed with its state, the fail-over time printed).
 * Skipped (with the reason) when PostgreSQL is not installed.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import WebSocket from "ws";
import { connectionRoom } from "@signe/sync/client";
import { ROOT, http, sleep, startServer, tempDir, wsClient } from "./lib.mjs";
import { pgMissing, startPg } from "./pg.mjs";

const LEASE = 1000;
const SECRET = "cluster3-test-secret-0123456789";
const skip = pgMissing();
if (skip) console.log(`# skipped: ${skip}`);

let pg;

function freePort() {
  return new Promise((res) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

function roomsDir() {
  const dir = tempDir("lunaroom-cluster3-");
  fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/fill.lua"), path.join(dir, "fill.lua"));
  // A room with users: sessions survive a reconnect (same public id).
  fs.writeFileSync(
    path.join(dir, "clu.lua"),
    `local lr = require "lunaroom"
local Player = lr.schema { score = lr.sync(0) }
return lr.room {
  path = "clu-{id}",
  state = { count = 0, players = lr.users(Player) },
  actions = {
    inc = function(room, player)
      room.count = room.count + 1
      player.score = player.score + 1
    end,
  },
  requests = { ["GET /count"] = function(room) return { count = room.count } end },
}
`,
  );
  return dir;
}

async function node(rooms, { leaseMs = LEASE, port, extra = [] } = {}) {
  port ??= await freePort();
  const url = `http://127.0.0.1:${port}`;
  const srv = await startServer({
    rooms,
    env: { SHARD_SECRET: SECRET },
    args: ["--port", String(port), "--host", "127.0.0.1", "--cluster", pg.url, "--node-url", url,
      "--lease-ms", String(leaseMs), "--no-watch", ...extra],
  });
  srv.nodeUrl = url;
  srv.port = port;
  await sleep(150); // its tables exist before the next node starts
  return srv;
}

async function join(srv, room, id) {
  const c = wsClient(`${srv.wsUrl}/parties/main/${room}?id=${id}`);
  await c.opened;
  const closedEarly = c.closed.then((e) => ({ closed: e }));
  const r = await Promise.race([c.next((m) => m?.type === "sync" && m.value.pId !== undefined, 5000), closedEarly]);
  if (r?.closed) return { refused: r.closed, c };
  return c;
}

const owner = (room) => pg.sql(`SELECT node_id FROM lunaroom_leases WHERE namespace = 'main' AND room_id = '${room}' AND expires_at > now()`);
const leaseRow = (room) => pg.sql(`SELECT node_id || ' ' || epoch FROM lunaroom_leases WHERE namespace = 'main' AND room_id = '${room}'`);
const stored = (room) => pg.sql(`SELECT value FROM signe_room_storage WHERE namespace = 'main' AND room_id = '${room}' AND key = 'state:count'`);
const metric = (text, name) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);
const until = async (f, ms = 5000, what = "condition") => {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
};

function npmClient(srv, room, id, opts = {}) {
  const state = {};
  const p = connectionRoom(
    { host: `127.0.0.1:${srv.port}`, party: "main", room, id, WebSocket, ...opts },
    state,
  );
  return p.then((conn) => ({ conn, state }));
}

/**
 * A plain TCP load balancer with no affinity (round robin over the nodes
 * that accept a connection): what the npm client reconnects through when a
 * node dies.
 */
function balancer(nodes) {
  let next = 0;
  const socks = new Set();
  const server = net.createServer((client) => {
    socks.add(client);
    client.on("close", () => socks.delete(client));
    client.on("error", () => {});
    client.pause();
    const tryFrom = (k) => {
      if (k >= nodes.length) return client.destroy();
      const n = nodes[(next + k) % nodes.length];
      const up = net.connect(n.port, "127.0.0.1");
      up.once("connect", () => {
        next = (next + k + 1) % nodes.length;
        socks.add(up);
        up.on("close", () => socks.delete(up));
        client.pipe(up).pipe(client);
        client.resume();
        up.on("close", () => client.destroy());
        client.on("close", () => up.destroy());
      });
      up.once("error", () => {
        up.destroy();
        tryFrom(k + 1);
      });
    };
    tryFrom(0);
  });
  return new Promise((res) =>
    server.listen(0, "127.0.0.1", () =>
      res({
        port: server.address().port,
        close: () => {
          for (const x of socks) x.destroy();
          server.close();
        },
      }),
    ),
  );
}

const FAST = { minReconnectionDelay: 50, maxReconnectionDelay: 300, reconnectionDelayGrowFactor: 1.3, connectionTimeout: 2000 };

describe("cluster relaying: any node serves any client", { skip: skip ?? false }, () => {
  before(() => {
    pg = startPg();
  });
  after(() => pg?.stop());

  test("a node that does not own the room relays WebSocket and HTTP to the owner", async () => {
    const rooms = roomsDir();
    const a = await node(rooms);
    const b = await node(rooms);
    try {
      const ca = await join(a, "fill-rel", "u1");
      ca.send({ action: "inc" });
      await ca.next((m) => m?.type === "sync" && m.value.count === 1);
      assert.equal(leaseRow("fill-rel"), `${a.nodeUrl} 1`);

      const cb = await join(b, "fill-rel", "u2");
      assert.ok(!cb.refused, `node B refused instead of relaying: ${JSON.stringify(cb.refused)}\n${b.logs()}`);
      assert.equal(cb.messages.find((m) => m?.type === "sync" && m.value.pId)?.value.count, 1, "snapshot from the owner");
      cb.send({ action: "inc" });
      await cb.next((m) => m?.type === "sync" && m.value.count === 2);
      await ca.next((m) => m?.type === "sync" && m.value.count === 2);
      ca.send({ action: "inc" });
      await cb.next((m) => m?.type === "sync" && m.value.count === 3);
      assert.equal(stored("fill-rel"), "3");
      assert.equal(leaseRow("fill-rel"), `${a.nodeUrl} 1`, "relaying changed the lease");

      const r = await http("GET", `${b.url}/parties/main/fill-rel/count`);
      assert.equal(r.status, 200, r.body);
      assert.equal(r.json.count, 3);

      // The room is not loaded on B, and B's directory holds the owner.
      const mb = (await http("GET", `${b.url}/metrics`)).body;
      assert.equal(metric(mb, "lunaroom_cluster_rooms_owned"), 0);
      assert.equal(metric(mb, "lunaroom_cluster_relayed_connections"), 1, mb);
      assert.equal(metric(mb, "lunaroom_cluster_links"), 1, mb);
      assert.ok(metric(mb, "lunaroom_cluster_http_forwarded_total") >= 1, mb);
      await cb.close();
      await ca.close();
      assert.equal(await b.stop(), 0, b.logs());
      assert.equal(await a.stop(), 0, a.logs());
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  test("the unchanged npm client through a relay: sync, actions, reconnect with its session; the owner is looked up on connect only", async () => {
    const rooms = roomsDir();
    const a = await node(rooms, { leaseMs: 4000 });
    const b = await node(rooms, { leaseMs: 4000 });
    try {
      const ca = await join(a, "clu-npm", "own1");
      const { conn, state } = await npmClient(b, "clu-npm", "npm-relayed", FAST);
      await until(() => state.pId && state.count === 0, 5000, "the first sync through the relay");
      const pid = state.pId;
      const m0 = (await http("GET", `${b.url}/metrics`)).body;
      for (let i = 0; i < 40; i++) conn.emit("inc");
      await until(() => state.count === 40, 5000, "40 actions through the relay");
      await ca.next((m) => m?.type === "sync" && m.value.count === 40);
      // More clients of the room on B within the lease: no new lease query.
      const more = await Promise.all([1, 2, 3].map((i) => join(b, "clu-npm", `more${i}`)));
      for (const m of more) assert.ok(!m.refused, JSON.stringify(m.refused));
      const m1 = (await http("GET", `${b.url}/metrics`)).body;
      assert.equal(metric(m1, "lunaroom_cluster_rooms_refused_total"), metric(m0, "lunaroom_cluster_rooms_refused_total"),
        "a connect within the cached lease asked the database again");
      assert.ok(metric(m1, "lunaroom_pg_statements_total") - metric(m0, "lunaroom_pg_statements_total") <= 3,
        `40 relayed actions cost database statements on the relay:\n${m0}\n${m1}`);
      assert.equal(metric(m1, "lunaroom_cluster_links"), 1, "one link carries the room's clients");
      // Reconnect (the socket drops): same session, same public id, state kept.
      conn.conn.reconnect();
      await sleep(100);
      conn.emit("inc");
      await until(() => state.count === 41, 5000, "an action after the reconnect");
      assert.equal(state.pId, pid, "the session was not found after the reconnect");
      await until(() => state.players?.[pid]?.score === 41, 3000, "the user's own record");
      conn.close();
      for (const m of more) await m.close();
      await ca.close();
      assert.equal(stored("clu-npm"), "41");
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  test("a request that claims to come from a node is never relayed on (no relay loops)", async () => {
    const rooms = roomsDir();
    const a = await node(rooms);
    const b = await node(rooms);
    try {
      const ca = await join(a, "fill-loop", "l1");
      const fake = wsClient(`${b.wsUrl}/parties/main/fill-loop?id=x`, { headers: { "x-shard-id": "http://127.0.0.1:1" } });
      const closed = await fake.closed;
      assert.equal(closed.code, 4409);
      const r = await http("GET", `${b.url}/parties/main/fill-loop/count`, undefined, { "x-forwarded-by-shard": "true" });
      assert.ok(r.status === 409 || r.status === 401, `status ${r.status}`);
      assert.equal(metric((await http("GET", `${b.url}/metrics`)).body, "lunaroom_cluster_relayed_connections_total"), 0);
      await ca.close();
    } finally {
      await a.stop();
      await b.stop();
    }
  });
});

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
import { ROOT, http, sleep, tempDir, wsClient } from "./lib.mjs";
import { clusterNode, join, metric, sign, until } from "./cluster_lib.mjs";
import { pgMissing, startPg } from "./pg.mjs";

const LEASE = 1000;
const SECRET = "cluster3-test-secret-0123456789";
const JWT_SECRET = "cluster3-admin-secret-0123456789";

const ADMIN = { authorization: `Bearer ${sign({ worlds: ["*"] }, JWT_SECRET)}` }; // an admin (worlds ["*"])
const skip = pgMissing();
if (skip) console.log(`# skipped: ${skip}`);

let pg;

function roomsDir() {
  const dir = tempDir("lunaroom-cluster3-");
  fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/fill.lua"), path.join(dir, "fill.lua"));
  fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/xfer.lua"), path.join(dir, "xfer.lua"));
  // A room with users: sessions survive a reconnect (same public id).
  fs.writeFileSync(
    path.join(dir, "clu.lua"),
    `local lr = require "lunaroom"
local Player = lr.schema { score = lr.sync(0), list = lr.sync("") }
return lr.room {
  path = "clu-{id}",
  state = { count = 0, players = lr.users(Player) },
  actions = {
    inc = function(room, player)
      room.count = room.count + 1
      player.score = player.score + 1
    end,
    -- The client's k-th action: its list says which arrived, in which order, how often.
    add = function(room, player, k) player.list = player.list .. tostring(k) .. "," end,
  },
  requests = { ["GET /count"] = function(room) return { count = room.count } end },
}
`,
  );
  return dir;
}

const node = (rooms, { leaseMs = LEASE, port, extra = [] } = {}) =>
  clusterNode(pg, rooms, { leaseMs, port, env: { SHARD_SECRET: SECRET, AUTH_JWT_SECRET: JWT_SECRET },
    extra: ["--room-create-rate", "1000,1000", ...extra] });

const owner = (room) => pg.sql(`SELECT node_id FROM lunaroom_leases WHERE namespace = 'main' AND room_id = '${room}' AND expires_at > now()`);
const leaseRow = (room) => pg.sql(`SELECT node_id || ' ' || epoch FROM lunaroom_leases WHERE namespace = 'main' AND room_id = '${room}'`);
const stored = (room) => pg.sql(`SELECT value FROM signe_room_storage WHERE namespace = 'main' AND room_id = '${room}' AND key = 'state:count'`);

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
function balancer(nodes, start = 0) {
  let next = start;
  const socks = new Set();
  const lb = { current: null }; // the index of the node the live connection reached
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
        const idx = (next + k) % nodes.length;
        next = (next + k + 1) % nodes.length;
        lb.current = idx;
        up.on("close", () => {
          if (lb.current === idx) lb.current = null;
        });
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
      res(Object.assign(lb, {
        port: server.address().port,
        close: () => {
          for (const x of socks) x.destroy();
          server.close();
        },
      })),
    ),
  );
}

const FAST = { minReconnectionDelay: 50, maxReconnectionDelay: 300, reconnectionDelayGrowFactor: 1.3, connectionTimeout: 2000 };

/** Client i of room through its own balancer (first node i % 3), sending add(k) for k = 1, 2, ... */
async function listClients(nodes, room, n, lbs) {
  const clients = [];
  for (let i = 0; i < n; i++) {
    const lb = await balancer(nodes, i % 3);
    lbs.push(lb);
    const c = await npmClient({ port: lb.port }, room, `${room}-${i}`, FAST);
    Object.assign(c, { i, lb, k: 0, closes: [], seen: "", bad: [], snaps: [] });
    c.conn.conn.addEventListener("close", () => c.closes.push(performance.now()));
    c.conn.conn.addEventListener("message", (e) => {
      if (e.data.includes('"pId"')) c.snaps.push(performance.now()); // a snapshot: (re)joined the room
      // What this client sees of its own list: each view extends the previous one.
      const l = c.state.players?.[c.state.pId]?.list;
      if (typeof l !== "string" || l === c.seen) return;
      if (!l.startsWith(c.seen)) c.bad.push(`${c.seen} -> ${l}`);
      if (l.length > c.seen.length) c.seen = l;
    });
    clients.push(c);
    await until(() => c.state.pId, 5000, `client ${i}`);
  }
  return clients;
}

function write(clients, everyMs = 40) {
  const w = { on: true };
  w.done = Promise.all(
    clients.map(async (c) => {
      while (w.on) {
        c.conn.emit("add", ++c.k);
        await sleep(everyMs);
      }
    }),
  );
  w.stop = async () => {
    w.on = false;
    await w.done;
  };
  return w;
}

/** Every acknowledged action in the final state, none twice, in order: {sent, kept}. */
async function checkLists(clients) {
  await sleep(300);
  const lists = (c) => clients.map((o) => c.state.players?.[o.state.pId]?.list);
  await until(() => clients.every((c) => JSON.stringify(lists(c)) === JSON.stringify(lists(clients[0]))), 5000, "clients agree");
  const final = lists(clients[0]);
  let kept = 0, sent = 0;
  for (const c of clients) {
    assert.deepEqual(c.bad, [], `client ${c.i} saw its list go back`);
    const mine = final[c.i];
    assert.ok(mine.startsWith(c.seen), `client ${c.i}: an acknowledged action is missing\nseen  ${c.seen}\nfinal ${mine}`);
    const ks = mine.split(",").filter(Boolean).map(Number);
    assert.equal(new Set(ks).size, ks.length, `client ${c.i}: an action applied twice: ${mine}`);
    assert.deepEqual(ks, [...ks].sort((a, b) => a - b), `client ${c.i}: out of order: ${mine}`);
    kept += ks.length;
    sent += c.k;
  }
  return { sent, kept };
}

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

  test("three nodes, 30 rooms, npm clients on every node: one owner per room, every action reaches every client", async () => {
    const rooms = roomsDir();
    const nodes = [await node(rooms), await node(rooms), await node(rooms)];
    const clients = [];
    try {
      const T = performance.now();
      const N = 30;
      const per = [];
      for (let i = 0; i < N; i++) {
        const room = `clu-t${i}`;
        // The first client (on node i % 3) makes that node the owner.
        const first = await npmClient(nodes[i % 3], room, `t${i}-n${i % 3}`, FAST);
        clients.push(first);
        await until(() => first.state.pId, 5000, `room ${i}'s first sync`);
        per[i] = [first];
      }
      await Promise.all(
        per.map(async (list, i) => {
          for (const k of [1, 2]) {
            const n = (i + k) % 3;
            const c = await npmClient(nodes[n], `clu-t${i}`, `t${i}-n${n}`, FAST);
            clients.push(c);
            list.push(c);
          }
          await until(() => list.every((c) => c.state.pId), 5000, `room ${i}'s clients`);
        }),
      );
      console.log(`# joined in ${(performance.now() - T).toFixed(0)} ms`);
      // An action on any node reaches the room's clients on every node.
      for (let i = 0; i < N; i++) per[i][1 + (i % 2)].conn.emit("inc");
      for (let i = 0; i < N; i++) per[i][0].conn.emit("inc");
      await until(() => per.every((list) => list.every((c) => c.state.count === 2)), 8000, "every client of every room sees both actions");
      // Exactly one owner per room: the node its first client reached.
      const rows = pg.sql("SELECT l.room_id || ' ' || l.node_id || ' ' || s.value FROM lunaroom_leases l LEFT JOIN signe_room_storage s " +
        "ON s.namespace = l.namespace AND s.room_id = l.room_id AND s.key = 'state:count' WHERE l.namespace = 'main' AND l.room_id LIKE 'clu-t%' " +
        "AND l.expires_at > now()").split("\n");
      assert.equal(rows.length, N, rows.join("\n"));
      const want = Array.from({ length: N }, (_, i) => `clu-t${i} ${nodes[i % 3].nodeUrl} 2`).sort();
      assert.deepEqual(rows.sort(), want, "each room owned by the node its first client reached, its count stored");
      let owned = 0, relayed = 0;
      for (const n of nodes) {
        const m = (await http("GET", `${n.url}/metrics`)).body;
        assert.equal(metric(m, "lunaroom_cluster_rooms_owned"), N / 3, m);
        owned += metric(m, "lunaroom_cluster_rooms_owned");
        relayed += metric(m, "lunaroom_cluster_relayed_connections");
      }
      assert.equal(owned, N);
      assert.equal(relayed, 2 * N, "two of each room's three clients are relayed");
      // /admin/cluster lists every node's rooms, from the lease table, on any node.
      assert.equal((await http("GET", `${nodes[1].url}/admin/cluster`)).status, 403);
      const adm = await http("GET", `${nodes[1].url}/admin/cluster`, undefined, ADMIN);
      assert.equal(adm.status, 200, adm.body);
      assert.equal(adm.json.node, nodes[1].nodeUrl);
      const listed = adm.json.rooms.filter((r) => r.room.startsWith("main/clu-t")).map((r) => `${r.room.slice(5)} ${r.node}`).sort();
      assert.deepEqual(listed, Array.from({ length: N }, (_, i) => `clu-t${i} ${nodes[i % 3].nodeUrl}`).sort());
      assert.ok(adm.json.rooms.every((r) => r.epoch >= 1 && r.validMs > 0), adm.body);
      console.log(`# checked at ${(performance.now() - T).toFixed(0)} ms`);
      console.log(`# ${N} rooms on 3 nodes: ${clients.length} npm clients, ${relayed} relayed, each room owned once`);
    } finally {
      for (const c of clients) c.conn.close();
      for (const n of nodes) await n.stop();
    }
  });

  test("kill -9 of a busy room's owner: clients reconnect through the other nodes, the room is re-homed with its state", async () => {
    const rooms = roomsDir();
    const nodes = [await node(rooms), await node(rooms), await node(rooms)];
    const clients = [];
    const lbs = [];
    let writing = true;
    let t0 = 0;
    try {
      const room = "clu-busy";
      for (let i = 0; i < 6; i++) {
        // Client i first reaches node i % 3 (node 0 owns the room), then the next one alive.
        const lb = await balancer(nodes, i % 3);
        lbs.push(lb);
        const c = await npmClient({ port: lb.port }, room, `busy${i}`, FAST);
        c.max = 0;
        c.closes = 0;
        c.conn.conn.addEventListener("close", () => c.closes++);
        c.conn.conn.addEventListener("message", (e) => {
          const m = JSON.parse(e.data);
          if (m.type === "sync" && typeof m.value.count === "number") c.max = Math.max(c.max, m.value.count);
          // A snapshot (sync with pId) after the kill: served again, by the new owner.
          if (m.type === "sync" && m.value.pId !== undefined && t0 && !c.back) c.back = performance.now();
        });
        clients.push(c);
        await until(() => c.state.pId, 5000, `client ${i}`);
      }
      const victim = nodes[0];
      assert.equal(owner(room), victim.nodeUrl);
      const writers = clients.map(async (c) => {
        while (writing) {
          c.conn.emit("inc");
          await sleep(25);
        }
      });
      await sleep(600);
      const seenBefore = Math.max(...clients.map((c) => c.max));
      assert.ok(seenBefore > 20, `only ${seenBefore} actions before the kill`);
      t0 = performance.now();
      victim.proc.kill("SIGKILL");
      // Re-homed: every client gets a snapshot again (from a survivor: the only ones left).
      await until(() => clients.every((c) => c.back), 10000, "every client served again");
      const first = Math.min(...clients.map((c) => c.back)) - t0;
      const all = Math.max(...clients.map((c) => c.back)) - t0;
      const newOwner = owner(room);
      assert.ok(newOwner && newOwner !== victim.nodeUrl, `owner after the kill: ${newOwner}`);
      await until(() => clients.every((c) => c.max > seenBefore), 5000, "actions applied after the fail-over");
      writing = false;
      await Promise.all(writers);
      await sleep(200); // the last actions land
      await until(() => clients.every((c) => c.state.count === clients[0].state.count) && stored(room) === String(clients[0].state.count),
        5000, "clients agree with each other and with the database").catch((e) => {
        throw new Error(`${e.message}: stored ${stored(room)}, shown ${clients.map((c) => c.state.count)}`);
      });
      const count = clients[0].state.count;
      assert.ok(count >= seenBefore, `state lost: ${count} < ${seenBefore} seen before the kill`);
      const survivor = nodes.find((n) => n.nodeUrl === newOwner);
      const ms = (await http("GET", `${survivor.url}/metrics`)).body;
      assert.equal(metric(ms, "lunaroom_cluster_failovers_total"), 1, ms);
      assert.equal(metric(ms, "lunaroom_cluster_rooms_owned"), 1, ms);
      // Clients relayed by the survivors kept their sockets; the victim's own reconnected.
      assert.deepEqual(clients.map((c) => c.closes > 0), [true, false, false, true, false, false],
        `closes per client: ${clients.map((c) => c.closes)}`);
      console.log(`# fail-over (kill -9 of the owner, lease ${LEASE} ms): first client served again by ${newOwner} after ` +
        `${first.toFixed(0)} ms, all 6 after ${all.toFixed(0)} ms; the 4 relayed clients kept their sockets; ` +
        `count ${seenBefore} seen before the kill, ${count} at the end`);
    } finally {
      writing = false;
      for (const c of clients) c.conn.close();
      for (const lb of lbs) lb.close();
      for (const n of nodes) await n.stop();
    }
  });

  test("rolling restart of 3 nodes under steady load: every acknowledged action is in the final state, none twice; relayed clients keep their sockets", async () => {
    const rooms = roomsDir();
    const nodes = [await node(rooms), await node(rooms), await node(rooms)];
    const lbs = [];
    let clients = [], w;
    try {
      clients = await listClients(nodes, "clu-roll", 6, lbs);
      w = write(clients);
      await sleep(500);
      const restarts = [];
      for (let k = 0; k < 3; k++) {
        const direct = clients.filter((c) => c.lb.current === k).map((c) => c.i);
        const t = performance.now();
        assert.equal(await nodes[k].stop("SIGTERM"), 0, nodes[k].logs());
        nodes[k] = await node(rooms, { port: nodes[k].port });
        await sleep(800);
        const closed = clients.filter((c) => c.closes.some((x) => x >= t)).map((c) => c.i);
        assert.deepEqual(closed, direct, `restart of node ${k}: clients closed ${closed}, directly on it ${direct}`);
        const kept = clients.filter((c) => !direct.includes(c.i));
        const back = kept.map((c) => c.snaps.find((x) => x >= t)).filter(Boolean);
        const gap = back.length ? `, served again ${(Math.max(...back) - t).toFixed(0)} ms after the SIGTERM` : "";
        restarts.push(`node ${k}: ${direct.length} direct client(s) reconnected, ${kept.length} kept their sockets${gap}`);
      }
      await w.stop();
      const { sent, kept } = await checkLists(clients);
      console.log(`# rolling restart of 3 nodes under load (6 clients, 25 actions/s each): ${sent} actions sent, ` +
        `${kept} in the final state, none twice; ${restarts.join("; ")}`);
    } finally {
      await w?.stop();
      for (const c of clients) c.conn.close();
      for (const lb of lbs) lb.close();
      for (const n of nodes) await n.stop();
    }
  });

  test("POST /admin/drain hands the node's rooms to the others without stopping it", async () => {
    const rooms = roomsDir();
    const nodes = [await node(rooms), await node(rooms), await node(rooms)];
    const lbs = [];
    let clients = [], w;
    try {
      clients = await listClients(nodes, "clu-drain", 6, lbs); // client 0 first: node 0 owns it
      assert.equal(owner("clu-drain"), nodes[0].nodeUrl);
      w = write(clients);
      await sleep(400);
      assert.equal((await http("POST", `${nodes[0].url}/admin/drain`)).status, 403, "drain without a token");
      const direct = clients.filter((c) => c.lb.current === 0).map((c) => c.i);
      const t = performance.now();
      const r = await http("POST", `${nodes[0].url}/admin/drain`, undefined, ADMIN);
      assert.equal(r.status, 200, r.body);
      assert.equal(r.json.drained, 1);
      await until(() => { const o = owner("clu-drain"); return o && o !== nodes[0].nodeUrl; }, 5000, "another node takes the room");
      await sleep(600);
      const closed = clients.filter((c) => c.closes.some((x) => x >= t)).map((c) => c.i);
      assert.deepEqual(closed, direct, `clients closed ${closed}, directly on the drained node ${direct}`);
      await w.stop();
      const { sent, kept } = await checkLists(clients);
      const m = (await http("GET", `${nodes[0].url}/metrics`)).body;
      assert.equal(metric(m, "lunaroom_cluster_rooms_owned"), 0, "the drained node took the room back");
      const back = clients.filter((c) => !direct.includes(c.i)).map((c) => c.snaps.find((x) => x >= t)).filter(Boolean);
      console.log(`# drain: room moved to ${owner("clu-drain")}, the ${6 - direct.length} relayed clients kept their sockets ` +
        `(served again ${(Math.max(...back) - t).toFixed(0)} ms after the drain), ${direct.length} direct reconnected; ` +
        `${sent} actions sent, ${kept} in the final state, none twice`);
    } finally {
      await w?.stop();
      for (const c of clients) c.conn.close();
      for (const lb of lbs) lb.close();
      for (const n of nodes) await n.stop();
    }
  });

  test("session transfer to a room another node owns ({url = a node}): the session arrives there", async () => {
    const rooms = roomsDir();
    const a = await node(rooms);
    const b = await node(rooms);
    try {
      const dst = await join(b, "xfer-dst", "d0"); // B owns the target room
      const src = await join(a, "xfer-src", "mover"); // A owns the source room
      src.send({ action: "rename", value: "zed" });
      await src.next((m) => m?.type === "sync" && JSON.stringify(m.value).includes("zed"));
      // The local form from a room whose code cannot wait (xfer.lua never
      // mentions fetch: its handlers are called directly) cannot wait for the
      // target's owner: an error that says to pass the URL (cluster_rooms.test.mjs:
      // the local form from a room that may wait).
      src.send({ action: "go", value: { target: "xfer-elsewhere" } });
      const local = await src.next((m) => m?.type === "transfer" || m?.type === "error");
      assert.equal(local.value?.token, null, JSON.stringify(local));
      assert.match(local.value.error, /cannot wait for its owner.*pass \{ url = /, JSON.stringify(local));
      // Through A's own URL: A forwards it to B, the owner.
      src.send({ action: "go", value: { target: "xfer-dst", url: a.nodeUrl } });
      const t = await src.next((m) => m?.type === "transfer" && (m.value.token || m.value.error), 5000);
      assert.equal(typeof t.value.token, "string", JSON.stringify(t));
      const moved = await join(a, "xfer-dst", `mover2&transferToken=${t.value.token}`); // relayed to B
      assert.ok(!moved.refused, JSON.stringify(moved.refused));
      const snap = moved.messages.find((m) => m?.type === "sync" && m.value.pId);
      const me = snap.value.players?.[snap.value.pId];
      assert.equal(me?.name, "zed", JSON.stringify(snap));
      assert.equal(me?.level, 11, "onSessionRestore ran on the owner");
      // A transfer request without the secret is not forwarded.
      const r = await http("POST", `${a.url}/parties/main/xfer-dst/session-transfer`, { privateId: "p", publicId: "q" });
      assert.equal(r.status, 401);
      await dst.close();
      await src.close();
      await moved.close();
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  test("limits of a relay: a frame too large for the owner, and what a client may send while its room has no owner", async () => {
    const rooms = roomsDir();
    const a = await node(rooms, { leaseMs: 4000 });
    const b = await node(rooms, { leaseMs: 4000 });
    try {
      const ca = await join(a, "fill-lim", "own");
      // Larger than the owner takes once wrapped (64 KiB - 1 KiB envelope): 1009 from the relay.
      const big = await join(b, "fill-lim", "big");
      assert.ok(!big.refused);
      big.send({ action: "fill", value: "x".repeat(65000) }); // under the node's own 64 KiB frame limit
      assert.equal((await big.closed).code, 1009);
      // The owner dies; its lease holds for up to 4 s, during which a relayed
      // client's frames wait on B, at most 1 MiB per room: past it, 1013.
      const c = await join(b, "fill-lim", "flood");
      const calm = await join(b, "fill-lim", "calm");
      a.proc.kill("SIGKILL");
      await sleep(100);
      const t = performance.now();
      const frame = JSON.stringify({ action: "fill", value: "y".repeat(30000) });
      for (let i = 0; i < 40 && c.ws.readyState === 1; i++) c.ws.send(frame);
      // 1013; or 1006 when the client's own flood makes the close frame race a reset.
      const closed = await Promise.race([c.closed, sleep(3000).then(() => ({ code: "still open after 3 s" }))]);
      assert.ok([1013, 1006].includes(closed.code), `flood client: ${closed.code}`);
      assert.match(b.logs(), /bytes held for main\/fill-lim while its next owner is looked up; closing client flood/);
      assert.ok(performance.now() - t < 3000, "not closed while the room had no owner");
      assert.equal((await http("GET", `${b.url}/healthz`)).status, 200);
      // The calm client kept its socket and is served by B once A's lease expired.
      calm.send({ action: "inc" });
      await calm.next((m) => m?.type === "sync" && m.value.count === 1, 8000); // (in its new snapshot)
      assert.equal(owner("fill-lim"), b.nodeUrl);
      await ca.close().catch(() => {});
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
      // A link from a node (right secret) that reached a node that is not the owner: refused, not relayed on.
      const link = wsClient(`${b.wsUrl}/parties/main/fill-loop?id=x`, { headers: { "x-shard-id": "http://127.0.0.1:1", "x-access-shard": SECRET } });
      assert.equal((await link.closed).code, 4409);
      const r = await http("GET", `${b.url}/parties/main/fill-loop/count`, undefined, { "x-forwarded-by-shard": "true", "x-access-shard": SECRET });
      assert.equal(r.status, 409);
      // Without the secret: refused before anything is loaded or any lease taken.
      const fake = wsClient(`${b.wsUrl}/parties/main/fill-nolease?id=x`, { headers: { "x-shard-id": "http://127.0.0.1:1" } });
      const refused = await fake.opened.then(() => fake.closed, (e) => ({ status: e.status }));
      assert.ok(refused.status === 401 || refused.code === 4401 || refused.code === 1008, JSON.stringify(refused));
      assert.equal(pg.sql("SELECT count(*) FROM lunaroom_leases WHERE room_id = 'fill-nolease'"), "0");
      const r2 = await http("GET", `${b.url}/parties/main/fill-loop/count`, undefined, { "x-forwarded-by-shard": "true" });
      assert.equal(r2.status, 401);
      assert.equal(metric((await http("GET", `${b.url}/metrics`)).body, "lunaroom_cluster_relayed_connections_total"), 0);
      await ca.close();
    } finally {
      await a.stop();
      await b.stop();
    }
  });
});

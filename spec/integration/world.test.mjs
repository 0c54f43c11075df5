/*
 * world.test.mjs - the world service and shard processes on loopback
 * (issue 7, protocol.md §7): one main process with --world, two shard
 * processes, and more where a test needs them (a shard to kill, a second
 * main server for session transfer).
 *
 * Owns: wire-level checks of assignment by strategy, autoCreate and the
 * capacity error, removal of a killed shard, draining, the JWT admin matrix,
 * refusal of forged shard traffic, the npm connectionWorld client through a
 * shard, and session transfer between two processes.
 * Must not: depend on default timings (the world and the shards run with
 * short ones given on the command line) or on the order of other files.
 */
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { connectionWorld } from "@signe/sync/client";
import { ROOT, http, sleep, startServer, wsClient, tempDir } from "./lib.mjs";

const JWT_SECRET = "world-test-jwt-secret";
const SHARD_SECRET = "world-test-shard-secret";
const WORLD = "world-default";
const TIMEOUT_MS = 3000; // --world-shard-timeout
const CLEANUP_MS = 250; // --world-cleanup-interval
const STATS_MS = 300; // shards' --stats-interval

function roomsDir(withExamples) {
  const dir = tempDir("lunaroom-world-");
  if (withExamples)
    for (const f of fs.readdirSync(path.join(ROOT, "rooms")).filter((f) => f.endsWith(".lua")))
      fs.copyFileSync(path.join(ROOT, "rooms", f), path.join(dir, f));
  fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/xfer.lua"), path.join(dir, "xfer.lua"));
  return dir;
}
const emptyDir = () => tempDir("lunaroom-shard-");

/** An HS256 JWT as JWTAuth.sign makes it. */
function sign(claims, { secret = JWT_SECRET, expiresIn = 3600 } = {}) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const data = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ ...claims, iat: now, exp: now + expiresIn })}`;
  return `${data}.${crypto.createHmac("sha256", secret).update(data).digest("base64url")}`;
}
const ADMIN = { authorization: `Bearer ${sign({ worlds: ["*"] })}` };

async function until(f, what, timeoutMs = 5000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

describe("world and shards", () => {
  let main, shardA, shardB;
  const worldUrl = (p) => `${main.url}/parties/world/${WORLD}${p}`;
  const connect = (roomId, extra = {}) => http("POST", worldUrl("/connect"), { roomId, ...extra });
  const register = async (cfg) => {
    const r = await http("POST", worldUrl("/register-room"), cfg, ADMIN);
    assert.equal(r.status, 200, r.body);
  };
  /** The registry as an admin sees it: the first (pId) packet of a world socket. */
  const registry = async () => {
    const c = wsClient(`${main.wsUrl}/parties/world/${WORLD}?world-auth-token=${sign({ worlds: [WORLD] })}`);
    await c.opened;
    const first = await c.next((m) => m?.type === "sync");
    await c.close();
    return first.value;
  };
  const shardsOf = async (roomId) =>
    Object.entries((await registry()).shards ?? {})
      .filter(([, s]) => s.roomId === roomId)
      .map(([id, s]) => ({ id, ...s }))
      .sort((a, b) => (a.id < b.id ? -1 : 1));
  /** A client of shard id through a shard process, after its pId snapshot. */
  const viaShard = async (proc, shardId, id) => {
    const c = wsClient(`${proc.wsUrl}/parties/shard/${shardId}?id=${id}`);
    await c.opened;
    const first = await c.next((m) => m?.type === "sync" && m.value.pId !== undefined);
    return { c, pid: first.value.pId, first };
  };
  const startShard = (args = []) =>
    startServer({
      rooms: emptyDir(),
      args: ["--shard", main.url, "--stats-interval", String(STATS_MS), "--no-watch", ...args],
      env: { SHARD_SECRET, AUTH_JWT_SECRET: "" },
    });

  before(async () => {
    main = await startServer({
      rooms: roomsDir(true),
      args: ["--world", "--world-cleanup-interval", String(CLEANUP_MS), "--world-shard-timeout",
        String(TIMEOUT_MS), "--no-watch"],
      env: { AUTH_JWT_SECRET: JWT_SECRET, SHARD_SECRET },
    });
    [shardA, shardB] = await Promise.all([startShard(), startShard()]);
  });
  after(async () => {
    for (const p of [shardA, shardB]) if (p) assert.equal(await p.stop("SIGTERM"), 0, p.logs());
    if (main) assert.equal(await main.stop("SIGTERM"), 0, main.logs());
  });

  test("--world and --shard refuse to start without their secrets", async () => {
    await assert.rejects(
      startServer({ rooms: emptyDir(), args: ["--world"], env: { AUTH_JWT_SECRET: "", SHARD_SECRET } }),
      /AUTH_JWT_SECRET is not set/,
    );
    await assert.rejects(
      startServer({ rooms: emptyDir(), args: ["--world"], env: { AUTH_JWT_SECRET: JWT_SECRET, SHARD_SECRET: "" } }),
      /SHARD_SECRET is not set/,
    );
    await assert.rejects(
      startServer({ rooms: emptyDir(), args: ["--shard", main.url], env: { SHARD_SECRET: "" } }),
      /SHARD_SECRET is not set/,
    );
  });

  test("the npm connectionWorld client syncs through a shard; HTTP goes through it too", async () => {
    const room = {};
    const conn = await connectionWorld(
      { host: shardA.url, room: "xfer-cw", worldId: WORLD, id: "cw-1", WebSocket, maxRetries: 0, retryCount: 1 },
      room,
    );
    try {
      assert.match(conn.shardInfo.shardId, /^xfer-cw:world-default:\d+-\d+$/);
      assert.equal(conn.shardInfo.url, conn.shardInfo.shardId);
      await until(() => room.pId && room.players?.[room.pId], "the pId snapshot");
      const direct = wsClient(`${main.wsUrl}/parties/main/xfer-cw?id=direct-1`);
      await direct.opened;
      conn.emit("inc");
      conn.emit("rename", "Zed");
      await until(() => room.count === 1 && room.players[room.pId].name === "Zed", "the shard client's own changes");
      await direct.next((m) => m?.value?.players?.[room.pId]?.name === "Zed");
      // a change made by a direct client reaches the shard client
      direct.send({ action: "inc" });
      await until(() => room.count === 2, "a direct client's change");
      // HTTP through the shard: the path after the shard id reaches the route
      const r = await http("GET", `${shardA.url}/parties/shard/${conn.shardInfo.shardId}/count`, undefined, {
        "x-access-shard": "forged", "x-forwarded-for": "203.0.113.7",
      });
      assert.equal(r.status, 200, r.body);
      assert.deepEqual(r.json, { count: 2, viaShard: true, shardId: conn.shardInfo.shardId, clientIp: "203.0.113.7" });
      assert.equal(r.headers["access-control-allow-origin"], "*");
      // the main room counts the shard's report
      const s = await until(async () => {
        const sh = (await shardsOf("xfer-cw"))[0];
        return sh?.currentConnections === 1 && sh;
      }, "the shard's report");
      assert.equal(s.status, "active");
      await direct.close();
    } finally {
      conn.close();
    }
  });

  test("assignment by each balancing strategy", async () => {
    await register({ name: "xfer-rr", balancingStrategy: "round-robin", public: true, maxPlayersPerShard: 10, minShards: 2 });
    const rr = (await shardsOf("xfer-rr")).map((s) => s.id);
    assert.equal(rr.length, 2);
    const got = [];
    for (let i = 0; i < 3; i++) got.push((await connect("xfer-rr")).json.shardId);
    assert.deepEqual(got, [rr[0], rr[1], rr[0]]);

    await register({ name: "xfer-lc", balancingStrategy: "least-connections", public: true, maxPlayersPerShard: 10, minShards: 2 });
    const lc = (await shardsOf("xfer-lc")).map((s) => s.id);
    const first = (await connect("xfer-lc")).json.shardId;
    assert.equal(first, lc[0]);
    const a = await viaShard(shardA, first, "lc-1");
    // once shard A reported its client, the emptier shard wins
    await until(async () => (await connect("xfer-lc")).json.shardId === lc[1], "least-connections to switch");
    await a.c.close();

    await register({ name: "xfer-rnd", balancingStrategy: "random", public: true, maxPlayersPerShard: 10, minShards: 2 });
    const rnd = (await shardsOf("xfer-rnd")).map((s) => s.id);
    const seen = new Set();
    for (let i = 0; i < 40 && seen.size < 2; i++) seen.add((await connect("xfer-rnd")).json.shardId);
    assert.deepEqual([...seen].sort(), rnd);
  });

  test("autoCreate up to maxShards, then the capacity error", async () => {
    await register({ name: "xfer-cap", balancingStrategy: "round-robin", public: true, maxPlayersPerShard: 1, minShards: 1, maxShards: 2 });
    const s1 = (await connect("xfer-cap")).json.shardId;
    const a = await viaShard(shardA, s1, "cap-1");
    const s2 = await until(async () => {
      const id = (await connect("xfer-cap")).json.shardId;
      return id !== s1 && id;
    }, "a second shard");
    assert.equal((await shardsOf("xfer-cap")).length, 2);
    const b = await viaShard(shardB, s2, "cap-2");
    const full = await until(async () => {
      const r = await connect("xfer-cap");
      return r.status === 404 && r;
    }, "the capacity error");
    assert.deepEqual(full.json, { error: "No shard capacity available for room xfer-cap" });
    assert.equal((await shardsOf("xfer-cap")).length, 2);
    // both clients are in the same room on the main server
    a.c.send({ action: "inc" });
    await b.c.next((m) => m?.type === "sync" && m.value.count === 1);
    await a.c.close();
    await b.c.close();
  });

  test("a killed shard is removed after the timeout; new clients go to the other", async () => {
    const shardK = await startShard();
    try {
      await register({ name: "xfer-k", balancingStrategy: "round-robin", public: true, maxPlayersPerShard: 10, minShards: 2 });
      const [k1, k2] = (await shardsOf("xfer-k")).map((s) => s.id);
      const doomed = await viaShard(shardK, k1, "k-1");
      const safe = await viaShard(shardA, k2, "k-2");
      assert.equal(safe.first.value.players[doomed.pid].online, true);
      assert.equal(await shardK.stop("SIGKILL"), 137);
      // the main room sees the uplink go: the relayed user is offline
      await safe.c.next((m) => m?.value?.players?.[doomed.pid]?.online === false);
      await until(async () => (await shardsOf("xfer-k")).length === 1, "the silent shard's removal", TIMEOUT_MS + 3000);
      assert.deepEqual((await shardsOf("xfer-k")).map((s) => s.id), [k2]);
      for (let i = 0; i < 3; i++) assert.equal((await connect("xfer-k")).json.shardId, k2);
      await until(() => main.logs().includes(`shard ${k1} removed`), "the removal's log line");
      await safe.c.close();
    } finally {
      await shardK.stop("SIGKILL");
    }
  });

  test("a shard process stopped gracefully drains its shards at once", async () => {
    const shardG = await startShard();
    let code;
    try {
      await register({ name: "xfer-g", balancingStrategy: "round-robin", public: true, maxPlayersPerShard: 10, minShards: 1 });
      const [g1] = (await shardsOf("xfer-g")).map((s) => s.id);
      const c = await viaShard(shardG, g1, "g-1");
      await until(async () => (await shardsOf("xfer-g"))[0]?.currentConnections === 1, "the report");
      const t0 = Date.now();
      code = await shardG.stop("SIGTERM");
      assert.equal((await c.c.closed).code, 1001);
      await until(async () => (await shardsOf("xfer-g")).length === 0, "the drained shard's removal", 1500);
      assert.ok(Date.now() - t0 < TIMEOUT_MS, "removed by its last report, not by the timeout");
    } finally {
      if (code === undefined) await shardG.stop("SIGKILL");
    }
    assert.equal(code, 0, shardG.logs());
  });

  test("draining: no new assignments, removed when it reports 0", async () => {
    await register({ name: "xfer-dr", balancingStrategy: "round-robin", public: true, maxPlayersPerShard: 10, minShards: 2 });
    const [d1, d2] = (await shardsOf("xfer-dr")).map((s) => s.id);
    const a1 = await viaShard(shardA, d1, "dr-1");
    const a2 = await viaShard(shardA, d1, "dr-2");
    const b1 = await viaShard(shardB, d2, "dr-3");
    await until(async () => {
      const s = await shardsOf("xfer-dr");
      return s[0]?.currentConnections === 2 && s[1]?.currentConnections === 1;
    }, "both shards' reports");
    const r = await http("POST", worldUrl("/scale-room"), { roomId: "xfer-dr", targetShardCount: 1 }, ADMIN);
    assert.equal(r.status, 200, r.body);
    const after = await shardsOf("xfer-dr");
    assert.deepEqual(after.map((s) => [s.id, s.status]), [[d1, "active"], [d2, "draining"]]);
    for (let i = 0; i < 3; i++) assert.equal((await connect("xfer-dr")).json.shardId, d1);
    // its clients stay connected until they leave
    a1.c.send({ action: "inc" });
    await b1.c.next((m) => m?.type === "sync" && m.value.count === 1);
    await b1.c.close();
    await until(async () => (await shardsOf("xfer-dr")).length === 1, "the drained shard's removal");
    await Promise.all([a1.c.close(), a2.c.close()]);
  });

  test("JWT admin matrix and the admin-only world socket", async () => {
    const cfg = { name: "xfer-jwt", balancingStrategy: "round-robin", public: true, maxPlayersPerShard: 5, minShards: 0 };
    const status = async (headers, query = "") =>
      (await http("POST", worldUrl(`/register-room${query}`), cfg, headers)).status;
    assert.equal(await status({}), 403);
    assert.equal(await status({ authorization: `Bearer ${sign({ worlds: ["*"] })}` }), 200);
    assert.equal(await status({ authorization: `Bearer ${sign({ worlds: [WORLD] })}` }), 200);
    assert.equal(await status({ authorization: sign({ worlds: [WORLD] }) }), 200); // raw header
    assert.equal(await status({}, `?world-auth-token=${sign({ worlds: ["*"] })}`), 200);
    assert.equal(await status({ authorization: `Bearer ${sign({ worlds: ["world-other"] })}` }), 403);
    assert.equal(await status({ authorization: `Bearer ${sign({ worlds: ["*"] }, { secret: "nope" })}` }), 403);
    assert.equal(await status({ authorization: `Bearer ${sign({ worlds: ["*"] }, { expiresIn: -60 })}` }), 403);
    assert.equal(await status({ authorization: "Bearer not.a.jwt" }), 403);
    assert.equal(await status({ "x-access-shard": SHARD_SECRET }), 200);
    assert.equal(await status({ "x-access-shard": "nope", ...ADMIN }), 403);
    const denied = await http("POST", worldUrl("/scale-room"), { roomId: "xfer-jwt", targetShardCount: 1 }, {});
    assert.deepEqual([denied.status, denied.json], [403, { error: "Not permitted" }]);
    // /connect has no guard
    assert.equal((await connect("xfer-jwt")).status, 200);
    // world sockets: admins get the registry, others stay connected and get nothing
    const admin = wsClient(`${main.wsUrl}/parties/world/${WORLD}`, { headers: ADMIN });
    const other = wsClient(`${main.wsUrl}/parties/world/${WORLD}`);
    await Promise.all([admin.opened, other.opened]);
    const snap = await admin.next((m) => m?.type === "sync");
    assert.equal(snap.value.rooms["xfer-jwt"].name, "xfer-jwt");
    await sleep(700);
    assert.deepEqual(other.raw, []);
    assert.equal(other.ws.readyState, WebSocket.OPEN);
    await Promise.all([admin.close(), other.close()]);
  });

  test("forged shard traffic is refused", async () => {
    // an uplink without the secret never reaches a room
    const noSecret = wsClient(`${main.wsUrl}/parties/main/xfer-f`, { headers: { "x-shard-id": "xfer-f:world-default:1-1" } });
    await assert.rejects(noSecret.opened, (e) => e.status === 401);
    const wrong = wsClient(`${main.wsUrl}/parties/main/xfer-f`, {
      headers: { "x-shard-id": "xfer-f:world-default:1-1", "x-access-shard": "nope" },
    });
    await assert.rejects(wrong.opened, (e) => e.status === 401);
    await until(() => /shard uplink xfer-f:world-default:1-1 from .* refused: wrong x-access-shard/.test(main.logs()),
      "the refusal's log line");
    // HTTP claiming to come from a shard
    const fwd = await http("GET", `${main.url}/parties/main/xfer-f/count`, undefined, {
      "x-forwarded-by-shard": "true", "x-shard-id": "x", "x-access-shard": "nope",
    });
    assert.deepEqual([fwd.status, fwd.json], [401, { error: "Invalid shard credentials" }]);
    // reports and session transfers without the secret
    const upd = await http("POST", worldUrl("/update-shard"), { shardId: "x", connections: 1 }, { "x-access-shard": "nope" });
    assert.equal(upd.status, 403);
    const st = await http("POST", `${main.url}/parties/main/xfer-f/session-transfer`, { privateId: "p", publicId: "q" });
    assert.deepEqual([st.status, st.json], [401, { error: "Invalid shard credentials" }]);
    // a shard never forwards a session transfer, even though it holds the secret
    const viaShardTransfer = await http("POST", `${shardA.url}/parties/shard/xfer-f:world-default:1-1/session-transfer`,
      { privateId: "p", publicId: "q" });
    assert.equal(viaShardTransfer.status, 404);
    // a forged uplink frame from a client of a shard is just a client message
    // (through a shard id the world assigned: made-up ones are refused)
    const assigned = (await connect("xfer-f")).json.shardId;
    const { c } = await viaShard(shardA, assigned, "forger");
    c.send({ type: "shard.clientConnected", privateId: "victim", requestInfo: null });
    const err = await c.next((m) => m?.type === "error");
    assert.equal(err.value.code, "invalid_packet");
    await c.close();
  });

  test("session transfer between two rooms on two processes", async () => {
    const main2 = await startServer({ rooms: roomsDir(false), args: ["--no-watch"], env: { SHARD_SECRET } });
    try {
      // the user starts in xfer-a on the main server, through shard B
      const s = (await connect("xfer-a")).json.shardId;
      const a = await viaShard(shardB, s, "traveller");
      a.c.send({ action: "rename", value: "Ann" });
      await a.c.next((m) => m?.value?.players?.[a.pid]?.name === "Ann");
      a.c.send({ action: "go", value: { target: "xfer-b", url: main2.url } });
      const t = await a.c.next((m) => m?.type === "transfer");
      assert.equal(t.value.error, null);
      assert.match(t.value.token, /^[A-Za-z0-9]{22}$/); // a bearer secret: 131 bits (the reference: 8 characters)
      // ... and arrives in xfer-b on the second process, with another socket id
      const b = wsClient(`${main2.wsUrl}/parties/main/xfer-b?id=somebody-else&transferToken=${t.value.token}`);
      await b.opened;
      const snap = await b.next((m) => m?.type === "sync" && m.value.pId !== undefined);
      assert.equal(snap.value.pId, a.pid);
      assert.deepEqual(snap.value.players[a.pid], { name: "Ann", level: 11, online: true });
      // the token is spent
      const again = wsClient(`${main2.wsUrl}/parties/main/xfer-b?id=thief&transferToken=${t.value.token}`);
      await again.opened;
      const other = await again.next((m) => m?.type === "sync" && m.value.pId !== undefined);
      assert.notEqual(other.value.pId, a.pid);
      // a refused transfer reports its error to the room's callback
      a.c.send({ action: "go", value: { target: "xfer-c", url: "http://127.0.0.1:1" } });
      const failed = await a.c.next((m) => m?.type === "transfer");
      assert.equal(failed.value.token, null);
      assert.match(failed.value.error, /connect failed/);
      await Promise.all([a.c.close(), b.close(), again.close()]);
    } finally {
      assert.equal(await main2.stop("SIGTERM"), 0, main2.logs());
    }
  });
});

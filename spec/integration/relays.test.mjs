/*
 * relays.test.mjs - client addresses behind relays (issue 15, item 5 and
 * "Addresses behind relays"): a shard process opens no uplink for a shard id
 * the world does not know, per-address limits on the main server count the
 * address a shard relays (its uplink is exempt), and X-Forwarded-For is
 * believed only from a --trusted-proxy.
 *
 * Owns: these checks with real main and shard processes, on loopback
 * (127.0.0.1, .2, .3: all of 127/8 is loopback).
 */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import fs from "node:fs";
import nodeHttp from "node:http";
import path from "node:path";
import WebSocket from "ws";
import { ROOT, http, sleep, startServer, tempDir } from "./lib.mjs";

const SHARD_SECRET = "relays-test-shard-secret";
const JWT_SECRET = "relays-test-jwt-secret";

function rooms() {
  const dir = tempDir("lunaroom-relays-");
  fs.copyFileSync(path.join(ROOT, "rooms", "counter.lua"), path.join(dir, "counter.lua"));
  fs.writeFileSync(path.join(dir, "whoami.lua"), `local lr = require "lunaroom"
return lr.room {
  path = "whoami",
  state = {},
  requests = {
    ["GET /ip"] = function(_, req)
      return { ip = req.ip, xff = req.headers["x-forwarded-for"] or lr.null }
    end,
  },
}
`);
  return dir;
}

/* GET from a chosen local address with headers: the parsed JSON body. */
function getJson(url, localAddress, headers = {}) {
  return new Promise((resolve, reject) => {
    nodeHttp.get(url, { agent: false, localAddress, headers }, (r) => {
      let b = "";
      r.on("data", (d) => (b += d));
      r.on("end", () => resolve({ status: r.statusCode, json: JSON.parse(b) }));
    }).on("error", reject);
  });
}

const sockets = []; // terminated after the tests, so a failed test cannot hang the run
after(() => sockets.forEach((ws) => ws.terminate()));

/* A WebSocket from a chosen local address that records what arrives. */
function client(url, { localAddress = "127.0.0.1", headers } = {}) {
  const ws = new WebSocket(url, { localAddress, headers });
  sockets.push(ws);
  const c = { ws, messages: [] };
  c.opened = new Promise((res, rej) => {
    ws.once("open", res);
    ws.once("unexpected-response", (_q, r) => {
      const e = new Error(`HTTP ${r.statusCode}`);
      e.status = r.statusCode;
      rej(e);
      r.resume();
    });
    ws.once("error", rej);
  });
  c.opened.catch(() => {});
  ws.on("error", () => {});
  c.closed = new Promise((r) => ws.once("close", (code, why) => r({ code, reason: why.toString() })));
  ws.on("message", (d) => c.messages.push(JSON.parse(d.toString())));
  c.snapshot = async (ms = 3000) => {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      const m = c.messages.find((x) => x?.type === "sync" && x.value?.pId !== undefined);
      if (m) return m;
      await sleep(20);
    }
    throw new Error(`no snapshot; got ${JSON.stringify(c.messages)}`);
  };
  return c;
}

async function until(f, what, ms = 5000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(30);
  }
}

async function world(mainArgs = []) {
  const main = await startServer({
    rooms: rooms(),
    args: ["--world", "--no-watch", ...mainArgs],
    env: { AUTH_JWT_SECRET: JWT_SECRET, SHARD_SECRET },
  });
  const shard = await startServer({
    rooms: tempDir("lunaroom-relays-shard-"),
    args: ["--shard", main.url, "--no-watch"],
    env: { SHARD_SECRET, AUTH_JWT_SECRET: "" },
  });
  const assign = async () => {
    const r = await http("POST", `${main.url}/parties/world/world-default/connect`, { roomId: "demo" });
    assert.equal(r.status, 200, r.body);
    return r.json.shardId;
  };
  const stop = async () => {
    assert.equal(await shard.stop(), 0, shard.logs());
    assert.equal(await main.stop(), 0, main.logs());
  };
  return { main, shard, assign, stop };
}

describe("addresses behind relays", () => {
  test("a made-up shard id opens no uplink and its clients get nothing", async () => {
    const w = await world();
    // a direct client of the room, making traffic
    const direct = client(`${w.main.wsUrl}/parties/main/demo?id=direct`);
    await direct.opened;
    await direct.snapshot();
    const fakes = [];
    for (let i = 0; i < 40; i++)
      fakes.push(client(`${w.shard.wsUrl}/parties/shard/demo:world-default:fake${i % 20}?id=f${i}`));
    direct.ws.send(JSON.stringify({ action: "increment" }));
    const ends = await Promise.all(fakes.map(async (f) => {
      try {
        await f.opened;
      } catch (e) {
        return `http ${e.status}`;
      }
      const end = await Promise.race([f.closed, sleep(3000).then(() => null)]);
      return end ? `close ${end.code}` : "still open";
    }));
    for (const e of ends) assert.match(e, /^(close 4004|http 404)$/, ends.join(", "));
    assert.ok(ends.filter((e) => e === "close 4004").length >= 20, ends.join(", "));
    for (const f of fakes) assert.deepEqual(f.messages, [], "a fake client received room traffic");
    for (const f of fakes) f.ws.terminate();
    assert.doesNotMatch(w.main.logs(), /shard demo:world-default:fake\d+ \(world .*\) attached/);
    assert.match(w.shard.logs(), /refused: the world does not know this shard id/);
    // a shard id the world assigned still works, through the same process
    const real = client(`${w.shard.wsUrl}/parties/shard/${await w.assign()}?id=real`);
    await real.opened;
    await real.snapshot();
    direct.ws.send(JSON.stringify({ action: "increment" }));
    await until(() => real.messages.some((m) => m?.type === "sync" && m.value?.count === 2), "the real client's sync");
    real.ws.close();
    direct.ws.close();
    await w.stop();
  });

  test("relayed clients count under their own address; the uplink is exempt", async () => {
    const w = await world(["--max-conns-per-ip", "3"]);
    const sid = await w.assign();
    // 127.0.0.1 (the shard's own address) is full on the main server ...
    const direct = [1, 2, 3].map((i) => client(`${w.main.wsUrl}/parties/main/demo?id=d${i}`));
    await Promise.all(direct.map((c) => c.opened));
    // ... yet the shard's uplink opens, and a client from 127.0.0.2 gets in
    const a = client(`${w.shard.wsUrl}/parties/shard/${sid}?id=a`, { localAddress: "127.0.0.2" });
    await a.opened;
    await a.snapshot();
    // three clients of 127.0.0.3 through the shard fill that address; a fourth is closed
    const three = [1, 2, 3].map((i) => client(`${w.shard.wsUrl}/parties/shard/${sid}?id=t${i}`, { localAddress: "127.0.0.3" }));
    await Promise.all(three.map((c) => c.snapshot()));
    const fourth = client(`${w.shard.wsUrl}/parties/shard/${sid}?id=t4`, { localAddress: "127.0.0.3" });
    await fourth.opened;
    const end = await Promise.race([fourth.closed, sleep(3000).then(() => null)]);
    assert.deepEqual(end, { code: 1013, reason: "too many connections from this address" });
    assert.equal(fourth.messages.filter((m) => m?.value?.pId !== undefined).length, 0);
    assert.match(w.main.logs(), /relayed client from 127\.0\.0\.3 refused/);
    // a direct socket from 127.0.0.3 is refused too: relayed and direct share the count
    const d3 = client(`${w.main.wsUrl}/parties/main/demo?id=d3x`, { localAddress: "127.0.0.3" });
    await assert.rejects(d3.opened, (e) => e.status === 429);
    // one leaves: its address gets a place again
    three[0].ws.close();
    await sleep(300);
    const again = client(`${w.shard.wsUrl}/parties/shard/${sid}?id=t5`, { localAddress: "127.0.0.3" });
    await again.snapshot();
    for (const c of [...direct, a, ...three, again]) c.ws.close();
    await w.stop();
  });

  test("X-Forwarded-For counts only from a --trusted-proxy", async () => {
    const srv = await startServer({ rooms: rooms(), args: ["--max-conns-per-ip", "1", "--trusted-proxy", "127.0.0.1, 10.0.0.0/8"] });
    const url = `${srv.wsUrl}/parties/main/demo`;
    const via = (ip, id, from = "127.0.0.1") =>
      client(`${url}?id=${id}`, { localAddress: from, headers: { "x-forwarded-for": ip } });
    // through the trusted proxy: one socket per forwarded client address
    const p1 = via("198.51.100.7", "p1");
    const p2 = via("203.0.113.9, 198.51.100.8", "p2"); // the last entry is what the proxy saw
    await Promise.all([p1.opened, p2.opened]);
    const p3 = via("198.51.100.7", "p3");
    await assert.rejects(p3.opened, (e) => e.status === 429);
    const p4 = via("198.51.100.8, 10.1.2.3", "p4"); // a chain of trusted proxies is walked back
    await assert.rejects(p4.opened, (e) => e.status === 429);
    assert.match(srv.logs(), /websocket from 198\.51\.100\.7 refused/);
    // from an address that is not a trusted proxy the header means nothing
    const u1 = via("192.0.2.1", "u1", "127.0.0.2");
    await u1.opened;
    const u2 = via("192.0.2.2", "u2", "127.0.0.2");
    await assert.rejects(u2.opened, (e) => e.status === 429);
    for (const c of [p1, p2, u1]) c.ws.close();
    assert.equal(await srv.stop(), 0);
  });

  test("a shard appends the address it saw to X-Forwarded-For; a main server trusting it counts that", async () => {
    const w = await world(["--trusted-proxy", "127.0.0.1"]);
    const r0 = await http("POST", `${w.main.url}/parties/world/world-default/connect`, { roomId: "whoami" });
    const sid = r0.json.shardId;
    const r = await getJson(`${w.shard.url}/parties/shard/${sid}/ip`, "127.0.0.2", { "x-forwarded-for": "6.6.6.6" });
    assert.equal(r.status, 200, JSON.stringify(r));
    assert.deepEqual(r.json, { ip: "127.0.0.2", xff: "6.6.6.6, 127.0.0.2" });
    // straight to the main server from a trusted address: the forwarded entry counts ...
    const d = await getJson(`${w.main.url}/parties/main/whoami/ip`, "127.0.0.1", { "x-forwarded-for": "198.51.100.1" });
    assert.equal(d.json.ip, "198.51.100.1");
    // ... from any other address it does not
    const u = await getJson(`${w.main.url}/parties/main/whoami/ip`, "127.0.0.5", { "x-forwarded-for": "198.51.100.1" });
    assert.equal(u.json.ip, "127.0.0.5");
    await w.stop();
  });

  test("--trusted-proxy refuses an entry that is not an address", async () => {
    await assert.rejects(startServer({ rooms: rooms(), args: ["--trusted-proxy", "proxy.example"] }),
      /not a numeric address/);
  });
});

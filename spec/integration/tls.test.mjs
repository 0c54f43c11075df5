/*
 * tls.test.mjs - https:// and wss:// served by lunaroom itself (--tls-cert,
 * --tls-key), outgoing wss:// links verified against --tls-ca, and the
 * certificate reload on SIGHUP.
 *
 * Owns: a throwaway PKI made with the openssl CLI (two CAs, server
 * certificates for 127.0.0.1/localhost, a key that matches nothing), and the
 * wire checks: curl --cacert, the npm client over wss:// trusting the CA
 * (the ws `ca` option), refusals (another CA, plain http on the TLS port),
 * a shard's uplink to a TLS main server, SIGHUP swapping the certificate.
 * Must not: disable verification anywhere (no NODE_TLS_REJECT_UNAUTHORIZED,
 * no rejectUnauthorized: false, no curl -k).
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import https from "node:https";
import nodeHttp from "node:http";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { connectionRoom } from "@signe/sync/client";
import { sleep, startServer, tempDir, wsClient } from "./lib.mjs";

const dir = tempDir("lunaroom-tls-");
const f = (name) => path.join(dir, name);
const ossl = (...args) => execFileSync("openssl", args, { stdio: ["ignore", "pipe", "pipe"] });

/** A CA (name.pem, name.key). */
function makeCa(name) {
  ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f(`${name}.key`), "-out", f(`${name}.pem`),
    "-days", "2", "-subj", `/CN=lunaroom test ${name}`);
}
/** A server certificate (default: for 127.0.0.1 and localhost) signed by ca (out.pem, out.key). */
function makeCert(ca, out, san = "DNS:localhost,IP:127.0.0.1") {
  ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f(`${out}.key`), "-out", f(`${out}.csr`),
    "-subj", "/CN=localhost");
  fs.writeFileSync(f(`${out}.ext`), `subjectAltName=${san}\n`);
  ossl("x509", "-req", "-in", f(`${out}.csr`), "-CA", f(`${ca}.pem`), "-CAkey", f(`${ca}.key`),
    "-CAcreateserial", "-out", f(`${out}.pem`), "-days", "2", "-extfile", f(`${out}.ext`));
}

/** GET url trusting only the CA file ca; resolves {status, body} or {error}. */
function get(url, ca) {
  return new Promise((resolve) => {
    const req = https.get(url, { ca: fs.readFileSync(ca), timeout: 3000, agent: false }, (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (e) => resolve({ error: e }));
  });
}

/** A shard id assigned by the world of the TLS server on port (POST .../connect for roomId), over
 * https:// trusting the CA file ca for the certificate name `name`. Shard processes serve only ids
 * the world assigned. */
function assignShard(port, roomId, ca, name = "localhost") {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ roomId });
    const req = https.request({
      host: "127.0.0.1", port, servername: name, method: "POST", path: "/parties/world/world-default/connect",
      headers: { host: `${name}:${port}`, "content-type": "application/json", "content-length": Buffer.byteLength(body) },
      ca: fs.readFileSync(ca), timeout: 3000, agent: false,
    }, (res) => {
      let data = "";
      res.on("data", (d) => (data += d));
      res.on("end", () => {
        const id = res.statusCode === 200 && JSON.parse(data).shardId;
        if (id) resolve(id);
        else reject(new Error(`connect: ${res.statusCode} ${data}`));
      });
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    req.end(body);
  });
}

/** curl --cacert ca url: {code (curl's exit status), out}. */
function curl(url, ca) {
  const r = spawnSync("curl", ["-sS", "--max-time", "5", "--cacert", ca, url], { encoding: "utf8" });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** A ws WebSocket class that trusts only the CA file ca (for partysocket). */
const trusting = (ca) =>
  class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { ca: fs.readFileSync(ca) });
    }
  };

describe("TLS: https:// and wss:// on one port", () => {
  let srv;
  before(async () => {
    makeCa("ca");
    makeCa("other");
    makeCert("ca", "srv");
    makeCert("other", "srv2");
    makeCert("ca", "elsewhere", "DNS:elsewhere.example"); // trusted CA, wrong name
    fs.copyFileSync(f("srv.pem"), f("live.pem"));
    fs.copyFileSync(f("srv.key"), f("live.key"));
    srv = await startServer({ args: ["--tls-cert", f("live.pem"), "--tls-key", f("live.key"), "--no-watch"] });
  });
  after(async () => {
    if (srv) assert.equal(await srv.stop("SIGTERM"), 0, srv.logs());
  });

  test("the listen line and curl --cacert over https://", async () => {
    assert.match(srv.url, /^https:\/\//);
    const r = curl(`${srv.url}/parties/main/demo/count`, f("ca.pem"));
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(JSON.parse(r.out), { count: 0 });
    // by name too: the certificate is for localhost as well
    assert.equal(curl(`https://localhost:${srv.port}/parties/main/demo/count`, f("ca.pem")).code, 0);
  });

  test("the npm client (partysocket + connectionRoom) syncs over wss:// trusting the CA", async () => {
    const room = {};
    const conn = await connectionRoom(
      { host: `127.0.0.1:${srv.port}`, protocol: "wss", party: "main", room: "demo", id: "tls-1",
        WebSocket: trusting(f("ca.pem")), maxRetries: 0 },
      room,
    );
    try {
      for (let i = 0; i < 100 && !room.pId; i++) await sleep(20);
      assert.ok(room.pId, "a pId over wss://");
      conn.emit("increment", { amount: 3 });
      for (let i = 0; i < 100 && room.count !== 3; i++) await sleep(20);
      assert.equal(room.count, 3);
    } finally {
      conn.close();
    }
    const c = wsClient(`${srv.wsUrl}/parties/main/demo`);
    await assert.rejects(c.opened, "ws without the CA: the handshake fails (self-made CA is not trusted)");
  });

  test("a client trusting another CA refuses the server", async () => {
    const r = curl(`${srv.url}/parties/main/demo/count`, f("other.pem"));
    assert.equal(r.code, 60, `curl exit 60 (peer certificate cannot be authenticated): ${r.err}`);
    const g = await get(`${srv.url}/parties/main/demo/count`, f("other.pem"));
    assert.equal(g.error?.code, "UNABLE_TO_VERIFY_LEAF_SIGNATURE");
  });

  test("plain http:// to the TLS port gets no HTTP answer, and the server goes on", async () => {
    const r = await new Promise((resolve) => {
      const req = nodeHttp.get(`http://127.0.0.1:${srv.port}/parties/main/demo/count`, { timeout: 3000 }, (res) =>
        resolve({ status: res.statusCode }),
      );
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", (e) => resolve({ error: e }));
    });
    assert.ok(r.error, `no HTTP response expected, got ${JSON.stringify(r)}`);
    assert.notEqual(r.error.message, "timeout", "refused at once, not left hanging");
    assert.equal((await get(`${srv.url}/parties/main/demo/count`, f("ca.pem"))).status, 200);
  });

  test("SIGHUP reloads the certificate without a restart; a bad pair keeps the old one", async () => {
    // a key that does not match the certificate: logged, the old pair stays
    fs.copyFileSync(f("srv2.pem"), f("live.pem")); // live.key is still srv.key
    srv.proc.kill("SIGHUP");
    for (let i = 0; i < 100 && !/cannot reload/.test(srv.logs()); i++) await sleep(20);
    assert.match(srv.logs(), /tls: cannot reload .*keeping the current certificate/);
    assert.equal((await get(`${srv.url}/parties/main/demo/count`, f("ca.pem"))).status, 200);
    // the new pair, signed by the other CA
    fs.copyFileSync(f("srv2.key"), f("live.key"));
    srv.proc.kill("SIGHUP");
    for (let i = 0; i < 100 && !/certificate reloaded/.test(srv.logs()); i++) await sleep(20);
    const now = await get(`${srv.url}/parties/main/demo/count`, f("other.pem"));
    assert.equal(now.status, 200, String(now.error));
    assert.deepEqual(JSON.parse(now.body), { count: 3 }, "same process, same room state");
    assert.ok((await get(`${srv.url}/parties/main/demo/count`, f("ca.pem"))).error);
    // put the first one back for the next tests
    fs.copyFileSync(f("srv.pem"), f("live.pem"));
    fs.copyFileSync(f("srv.key"), f("live.key"));
    const n = srv.logs().match(/certificate reloaded/g).length;
    srv.proc.kill("SIGHUP");
    for (let i = 0; i < 100 && srv.logs().match(/certificate reloaded/g).length === n; i++) await sleep(20);
    assert.equal((await get(`${srv.url}/parties/main/demo/count`, f("ca.pem"))).status, 200);
  });

  test("wss:// carries big and many frames intact (partial TLS writes, batched sends)", async () => {
    const rooms = tempDir("lunaroom-tls-rooms-");
    fs.writeFileSync(path.join(rooms, "big.lua"), `local lr = require "lunaroom"
return lr.room { path = "big", rateLimit = { rate = 100000, burst = 100000 }, state = { blob = lr.sync(""), n = lr.sync(0) },
  actions = { big = function(r, _, v) r.blob = string.rep("x", v) end,
              inc = function(r) r.n = r.n + 1 end } }\n`);
    const big = await startServer({ rooms, args: ["--tls-cert", f("srv.pem"), "--tls-key", f("srv.key"), "--no-watch"] });
    try {
      const ws = new (trusting(f("ca.pem")))(`${big.wsUrl}/parties/main/big`);
      const got = [];
      await new Promise((res, rej) => { ws.on("open", res); ws.on("error", rej); });
      ws.on("message", (d) => got.push(JSON.parse(d)));
      ws.send(JSON.stringify({ action: "big", value: 3_000_000 }));
      for (let i = 0; i < 500; i++) ws.send(JSON.stringify({ action: "inc" }));
      for (let i = 0; i < 300 && !got.some((m) => m.value?.n === 500); i++) await sleep(20);
      const blob = got.find((m) => typeof m.value?.blob === "string" && m.value.blob.length > 0);
      assert.equal(blob?.value.blob.length, 3_000_000);
      const ns = got.map((m) => m.value?.n).filter((n) => n !== undefined && n > 0);
      assert.equal(ns.at(-1), 500);
      assert.deepEqual(ns, [...ns].sort((a, b) => a - b), "in order");
      ws.close();
    } finally {
      assert.equal(await big.stop("SIGTERM"), 0, big.logs());
    }
  });

  test("the per-address message budget holds over wss:// too: held messages all arrive, at its rate", async () => {
    // 10 sockets of one address send 200 actions each in a burst: past the budget (--msgs-per-ip
    // 500, burst 1000) and the fair share of a loop pass, messages are held on TLS sockets whose
    // decrypted bytes wait inside OpenSSL; every one must still reach the room, and SIGTERM must
    // still stop the server.
    const rooms = tempDir("lunaroom-tls-rooms-");
    fs.writeFileSync(path.join(rooms, "tally.lua"), `local lr = require "lunaroom"
return lr.room { path = "tally", rateLimit = { rate = 100000, burst = 100000 }, state = { n = lr.sync(0) },
  actions = { inc = function(r, _, v) r.n = r.n + 1; return v end } }\n`);
    const RATE = 500, S = 10, K = 200;
    const srv2 = await startServer({ rooms, args: ["--tls-cert", f("srv.pem"), "--tls-key", f("srv.key"), "--no-watch", "--msgs-per-ip", String(RATE)] });
    try {
      const socks = [];
      for (let i = 0; i < S; i++) {
        const ws = new (trusting(f("ca.pem")))(`${srv2.wsUrl}/parties/main/tally?id=t${i}`);
        await new Promise((res, rej) => { ws.on("open", res); ws.on("error", rej); });
        socks.push(ws);
      }
      let last = 0;
      socks[0].on("message", (d) => { const n = JSON.parse(d).value?.n; if (n > last) last = n; });
      const t0 = Date.now();
      for (const ws of socks) for (let j = 0; j < K; j++) ws.send(JSON.stringify({ action: "inc", value: j }));
      for (let i = 0; i < 500 && last < S * K; i++) await sleep(20);
      const ms = Date.now() - t0;
      console.log(`# ${S * K} actions over wss:// from one address at --msgs-per-ip ${RATE}: all in after ${ms} ms`);
      assert.equal(last, S * K, `the room counted ${last} of ${S * K}`);
      // burst 2 x RATE, then RATE a second: the budget was applied over TLS
      assert.ok(ms >= ((S * K - 2 * RATE) / RATE) * 1000 * 0.8, `all in after ${ms} ms: the budget did not hold`);
      assert.match(srv2.logs(), /messages from 127\.0\.0\.1 held/);
      for (const ws of socks) ws.close();
    } finally {
      assert.equal(await srv2.stop("SIGTERM"), 0, srv2.logs());
    }
  });

  test("tls_cert and tls_key from the --config file", async () => {
    fs.writeFileSync(f("conf.lua"), `return { tls_cert = ${JSON.stringify(f("srv.pem"))}, tls_key = ${JSON.stringify(f("srv.key"))}, watch = false }\n`);
    const c = await startServer({ args: ["--config", f("conf.lua")] });
    try {
      assert.match(c.url, /^https:/);
      assert.equal((await get(`${c.url}/parties/main/demo/count`, f("ca.pem"))).status, 200);
    } finally {
      assert.equal(await c.stop("SIGTERM"), 0, c.logs());
    }
  });

  test("--tls-cert without --tls-key is refused at start", async () => {
    await assert.rejects(startServer({ args: ["--tls-cert", f("srv.pem")] }), /--tls-cert and --tls-key go together/);
  });

  test("a shard's wss:// uplink verifies the main server against --tls-ca (chain and name)", async () => {
    const SHARD_SECRET = "tls-test-shard-secret";
    // Both main servers run the world: a shard process opens its uplink only for a shard id the
    // world assigned, so each client below uses a real id and only the TLS check can refuse it.
    const worldEnv = { SHARD_SECRET, AUTH_JWT_SECRET: "tls-test-jwt-secret" };
    const main = await startServer({
      args: ["--tls-cert", f("srv.pem"), "--tls-key", f("srv.key"), "--world", "--no-watch"],
      env: worldEnv,
    });
    const misnamed = await startServer({
      args: ["--tls-cert", f("elsewhere.pem"), "--tls-key", f("elsewhere.key"), "--world", "--no-watch"],
      env: worldEnv,
    });
    const shard = (ca, port = main.port) =>
      startServer({
        rooms: tempDir("lunaroom-tls-shard-"),
        args: ["--shard", `https://localhost:${port}`, "--tls-ca", f(ca), "--no-watch"],
        env: { SHARD_SECRET, AUTH_JWT_SECRET: "" },
      });
    const good = await shard("ca.pem");
    const bad = await shard("other.pem");
    const wrongName = await shard("ca.pem", misnamed.port);
    try {
      const c = wsClient(`${good.wsUrl}/parties/shard/${await assignShard(main.port, "demo", f("ca.pem"))}?id=tls-up`);
      await c.opened;
      const first = await c.next((m) => m?.type === "sync" && m.value.pId !== undefined, 5000);
      assert.equal(first.value.count, 0);
      await c.close();
      // trusting the other CA: the uplink's handshake fails, the client is closed
      const b = wsClient(`${bad.wsUrl}/parties/shard/${await assignShard(main.port, "demo", f("ca.pem"))}?id=tls-bad`);
      await b.opened;
      const closed = await Promise.race([b.closed, sleep(5000).then(() => "still open")]);
      assert.notEqual(closed, "still open", bad.logs());
      assert.equal(b.messages.filter((m) => m?.type === "sync").length, 0);
      // a certificate from the trusted CA for another name: refused too
      const wid = await assignShard(misnamed.port, "demo", f("ca.pem"), "elsewhere.example");
      const w = wsClient(`${wrongName.wsUrl}/parties/shard/${wid}?id=tls-name`);
      await w.opened;
      const wclosed = await Promise.race([w.closed, sleep(5000).then(() => "still open")]);
      assert.notEqual(wclosed, "still open", wrongName.logs());
      assert.equal(w.messages.filter((m) => m?.type === "sync").length, 0);
      // the control: that certificate is good for its own name (so the name made the difference)
      const byName = spawnSync("curl", ["-sS", "--max-time", "5", "--cacert", f("ca.pem"), "--resolve",
        `elsewhere.example:${misnamed.port}:127.0.0.1`, `https://elsewhere.example:${misnamed.port}/parties/main/demo/count`],
      { encoding: "utf8" });
      assert.equal(byName.status, 0, byName.stderr);
      assert.equal(curl(`https://localhost:${misnamed.port}/parties/main/demo/count`, f("ca.pem")).code, 60);
    } finally {
      for (const p of [good, bad, wrongName, main, misnamed]) assert.equal(await p.stop("SIGTERM"), 0, p.logs());
    }
  });
});


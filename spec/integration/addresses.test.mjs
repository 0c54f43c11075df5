/*
 * addresses.test.mjs - per-address limits seen from the wire (issue 15,
 * items 9 and 10): a request body has a fixed deadline however slowly it
 * drips, one address cannot hold more than --max-http-per-ip sockets, and
 * one address's many sockets share one message budget while a client from
 * another address (127.0.0.2: all of 127/8 is loopback) keeps its latency.
 *
 * Owns: these attacks, bounded in count and time, on loopback only.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fs from "node:fs";
import net from "node:net";
import nodeHttp from "node:http";
import path from "node:path";
import { spawn } from "node:child_process";
import WebSocket from "ws";
import { ROOT, assertLimitedLines, sleep, startServer, tempDir } from "./lib.mjs";

function rooms() {
  const dir = tempDir("lunaroom-addr-");
  fs.copyFileSync(path.join(ROOT, "rooms", "counter.lua"), path.join(dir, "counter.lua"));
  for (const f of ["unlimited.lua", "budget.lua"])
    fs.copyFileSync(path.join(ROOT, "spec/integration/rooms", f), path.join(dir, f));
  return dir;
}

/* GET on a fresh connection from a chosen local address: {status, ms} or {error, ms}. */
function get(url, localAddress) {
  const t0 = process.hrtime.bigint();
  const ms = () => Number(process.hrtime.bigint() - t0) / 1e6;
  return new Promise((resolve) => {
    const req = nodeHttp.request(url, { agent: false, localAddress }, (res) => {
      res.resume();
      res.on("end", () => resolve({ status: res.statusCode, ms: ms() }));
    });
    req.on("error", (e) => resolve({ error: e.code || String(e), ms: ms() }));
    req.end();
  });
}

/* A raw TCP socket from 127.0.0.1 that records what it receives. */
function rawSocket(port) {
  const s = net.connect({ port, host: "127.0.0.1", localAddress: "127.0.0.1" });
  s.data = "";
  s.on("data", (d) => (s.data += d));
  s.on("error", () => {});
  s.closedP = new Promise((r) => s.once("close", r));
  s.connectedP = new Promise((r) => {
    s.once("connect", r);
    s.once("close", r);
  });
  return s;
}

describe("per-address limits", () => {
  test("a request body that drips a byte every 500 ms is cut at its deadline", async () => {
    const srv = await startServer({ rooms: rooms(), args: ["--body-timeout", "2000"] });
    // a body that arrives in time is served as before
    const ok = await new Promise((resolve) => {
      const req = nodeHttp.request(`${srv.url}/parties/main/demo/count`, { method: "POST", agent: false,
        headers: { "content-type": "text/plain", "content-length": 5 } }, (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode));
      });
      req.on("error", (e) => resolve(e.code));
      req.end("hello");
    });
    assert.equal(typeof ok, "number");
    const s = rawSocket(srv.port);
    await s.connectedP;
    s.write("POST /parties/main/demo/count HTTP/1.1\r\nHost: x\r\ncontent-type: text/plain\r\n" +
      "content-length: 100\r\n\r\n");
    const t0 = Date.now();
    const drip = setInterval(() => s.write("x"), 500);
    const cut = await Promise.race([s.closedP.then(() => true), sleep(8000).then(() => false)]);
    clearInterval(drip);
    s.destroy();
    const waited = Date.now() - t0;
    assert.ok(cut, "the dripping body was never cut (lws restarts its timeout on every byte)");
    assert.ok(waited >= 1500 && waited < 4000, `cut after ${waited} ms (deadline 2000 ms)`);
    assert.match(srv.logs(), /body not complete after 2000 ms/);
    assert.equal(await srv.stop(), 0);
  });

  test("one address gets --max-http-per-ip sockets; the rest get 429; /healthz stays fast", async () => {
    const CAP = 100, N = 300;
    const srv = await startServer({ rooms: rooms(), args: ["--max-http-per-ip", String(CAP)] });
    const socks = [];
    for (let i = 0; i < N; i++) socks.push(rawSocket(srv.port));
    await Promise.all(socks.map((s) => s.connectedP));
    // Whoever is refused gets the 429 at once; the others stay open, idle.
    await sleep(500);
    const refused = socks.filter((s) => s.data.startsWith("HTTP/1.1 429"));
    assert.equal(refused.length, N - CAP, `refused ${refused.length} of ${N}`);
    assert.equal(socks.filter((s) => s.destroyed || s.readyState !== "open").length >= N - CAP, true);
    // Another address is not affected, and the loop is not slowed.
    const times = [];
    for (let i = 0; i < 20; i++) {
      const r = await get(`${srv.url}/healthz`, "127.0.0.2");
      assert.equal(r.status, 200, JSON.stringify(r));
      times.push(r.ms);
    }
    const worst = Math.max(...times);
    const median = [...times].sort((x, y) => x - y)[times.length >> 1];
    console.log(`# /healthz from 127.0.0.2 during the attack: median ${median.toFixed(1)} ms, max ${worst.toFixed(1)} ms over 20`);
    // The median, not the max: one scheduling hiccup of a loaded machine (2 cores shared by many
    // jobs here) is not the server being slowed; a loop busy with the attack slows every request.
    assert.ok(median < 100, `healthz took ${median.toFixed(1)} ms (median of 20; max ${worst.toFixed(1)} ms)`);
    // The attacking address itself is refused cleanly.
    const mine = await get(`${srv.url}/healthz`, "127.0.0.1");
    assert.equal(mine.status, 429, JSON.stringify(mine));
    // Closed sockets are uncounted: the address gets in again.
    for (const s of socks) s.destroy();
    await sleep(300);
    const again = await get(`${srv.url}/healthz`, "127.0.0.1");
    assert.equal(again.status, 200, JSON.stringify(again));
    assert.equal(await srv.stop(), 0);
    // Refusals are logged through lr_warn_limited, not once per socket: at most 10 lines per
    // window of 1000 ms (a window starts at its first line), the rest counted in "suppressed K
    // similar lines (http address limit)" summaries (the last one written at shutdown), so lines
    // plus suppressed make every refusal: N - CAP sockets and the one /healthz.
    const log = srv.logs().split("\n");
    const lines = log.filter((l) => /open HTTP connections from this address/.test(l));
    assert.ok(lines.length >= 1, "refusals are logged");
    assertLimitedLines(lines);
    const suppressed = log
      .map((l) => /suppressed (\d+) similar lines \(http address limit\)/.exec(l))
      .filter(Boolean)
      .reduce((n, m) => n + Number(m[1]), 0);
    assert.equal(lines.length + suppressed, N - CAP + 1, `${lines.length} lines + ${suppressed} suppressed`);
  });

  test("many sockets of one address share one message budget; another address keeps its latency", async () => {
    const BUDGET = 300, SOCKETS = 200, PER_SOCKET = 50, ATTACK_MS = 3000;
    const srv = await startServer({ rooms: rooms(), args: ["--msgs-per-ip", String(BUDGET)] });
    // The victim: another room, another address.
    const ws = new WebSocket(`${srv.wsUrl}/parties/main/unlimited-v?id=v`, { localAddress: "127.0.0.2" });
    const inbox = [];
    let wake = null;
    ws.on("message", (d) => {
      inbox.push(JSON.parse(d.toString()));
      if (wake) wake();
    });
    await new Promise((r, j) => { ws.once("open", r); ws.once("error", j); });
    const nextSync = async () => {
      for (;;) {
        const i = inbox.findIndex((m) => m?.type === "sync" && m.value?.count !== undefined);
        if (i >= 0) return inbox.splice(i, 1)[0];
        await new Promise((r) => (wake = r));
      }
    };
    const rtt = async (n) => {
      const t = [];
      for (let i = 0; i < n; i++) {
        inbox.length = 0;
        const t0 = process.hrtime.bigint();
        ws.send(JSON.stringify({ action: "inc" }));
        await nextSync();
        t.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
      t.sort((a, b) => a - b);
      return { p50: t[Math.floor(n / 2)], p99: t[Math.ceil(n * 0.99) - 1], max: t[n - 1] };
    };
    await sleep(100);
    const base = await rtt(50);
    const flood = spawn(process.execPath, [path.join(ROOT, "spec/integration/addr_flood.mjs"),
      `${srv.wsUrl}/parties/main/budget-a`, String(SOCKETS), String(PER_SOCKET), String(ATTACK_MS)],
    { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    flood.stdout.on("data", (d) => (out += d));
    const done = new Promise((r) => flood.on("exit", r));
    await sleep(1000); // sockets open and sending
    const loaded = await rtt(100);
    await done;
    const res = JSON.parse(out.trim().split("\n").at(-1));
    const count = await new Promise((resolve) => {
      nodeHttp.get(`${srv.url}/parties/main/budget-a/count`, { agent: false, localAddress: "127.0.0.3" }, (r) => {
        let b = "";
        r.on("data", (d) => (b += d));
        r.on("end", () => resolve(JSON.parse(b).count));
      });
    });
    console.log(`# victim rtt unloaded p50 ${base.p50.toFixed(2)} p99 ${base.p99.toFixed(2)} ms; ` +
      `under attack p50 ${loaded.p50.toFixed(2)} p99 ${loaded.p99.toFixed(2)} max ${loaded.max.toFixed(2)} ms; ` +
      `attack: ${res.opened} sockets sent ${res.sent} messages, the room handled ${count}`);
    assert.equal(res.opened, SOCKETS, out);
    // Within the budget (burst 2x + rate x time, with slack for the open phase).
    const bound = 2 * BUDGET + BUDGET * (ATTACK_MS / 1000 + 1);
    assert.ok(count <= bound, `${count} messages handled, budget allows ${bound}`);
    assert.ok(res.sent > 3 * bound, `the attack only sent ${res.sent}`);
    assert.ok(count > 0);
    assert.match(srv.logs(), /messages from 127\.0\.0\.1 held/);
    assert.ok(loaded.p99 < 50, `victim p99 ${loaded.p99.toFixed(2)} ms under attack`);
    ws.close();
    assert.equal(await srv.stop(), 0);
  });
});

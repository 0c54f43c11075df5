/*
 * waits.test.mjs - handlers that wait for an outside service (lunaroom.io
 * in room handlers; README "Waiting for outside services"), with the real
 * binary and a slow HTTP service (500 ms): another room's round trips are
 * not delayed; 1,000 actions waiting at once all complete; a room capped at
 * 100 waiting handlers refuses the 900 others with the "busy" error; the
 * process cap (--max-waiting, the config key max_waiting, the environment
 * LUNAROOM_MAX_WAITING as a fallback) refuses the waits past it.
 *
 * Owns: the wire checks of issue 17 (handlers that wait).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import nodeHttp from "node:http";
import https from "node:https";
import path from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { BIN, ROOT, http, sleep, startServer, tempDir, wsClient } from "./lib.mjs";

const ROOMS = path.join(path.dirname(fileURLToPath(import.meta.url)), "waits-rooms");

// A service answering every request after delayMs; counts what it saw.
// barrier: hold every answer until that many requests are open at once
// (then each is answered delayMs later), or until s.release().
function slowService(delayMs, barrier = 0) {
  const s = { hits: 0, open: 0, maxOpen: 0 };
  const held = [];
  const answer = (res) =>
    setTimeout(() => {
      s.open--;
      res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
    }, delayMs);
  const server = nodeHttp.createServer((req, res) => {
    s.hits++;
    s.open++;
    s.maxOpen = Math.max(s.maxOpen, s.open);
    if (!barrier) return answer(res);
    held.push(res);
    if (s.open >= barrier) held.splice(0).forEach(answer);
  });
  s.release = () => {
    barrier = 0;
    held.splice(0).forEach(answer);
  };
  server.maxConnections = 5000;
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => {
      s.url = `http://127.0.0.1:${server.address().port}/check`;
      s.close = () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); });
      resolve(s);
    }),
  );
}

const serve = (env = {}) =>
  startServer({ rooms: ROOMS, args: ["--no-watch", "--max-conns-per-ip", "-1", "--session-rate", "0"], env });

async function join(srv, room) {
  const c = wsClient(`${srv.wsUrl}/parties/main/${room}`);
  await c.opened;
  await c.next((m) => m?.type === "sync" && m.value.pId !== undefined, 10000);
  return c;
}

async function joinMany(srv, room, n) {
  const out = [];
  for (let i = 0; i < n; i += 100) {
    const batch = [];
    for (let k = i; k < Math.min(n, i + 100); k++) batch.push(join(srv, room));
    out.push(...(await Promise.all(batch)));
  }
  return out;
}

const p99 = (xs) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.99))];

describe("handlers that wait, over the wire", () => {
  test("a 500 ms service call in one room does not delay another room's round trips", async () => {
    const svc = await slowService(500);
    const srv = await serve();
    try {
      const slow = await join(srv, "slow-a");
      const fast = await join(srv, "fast-a");
      const t0 = Date.now();
      slow.send({ action: "buy", value: { url: svc.url } });
      await sleep(20); // the request is out
      const rtts = [];
      for (let i = 1; Date.now() - t0 < 450; i++) {
        const s = Date.now();
        fast.send({ action: "ping", value: i });
        await fast.next((m) => m?.type === "sync" && m.value.n === i);
        rtts.push(Date.now() - s);
      }
      assert.ok(rtts.length >= 20, `round trips while the slow action waited: ${rtts.length}`);
      assert.ok(p99(rtts) < 50, `p99 ${p99(rtts)} ms (${rtts.join(",")})`);
      const done = await slow.next((m) => m?.type === "sync" && m.value.done === 1, 3000);
      assert.ok(done);
      const took = Date.now() - t0;
      assert.ok(took >= 480 && took < 1500, `the slow action finished after ${took} ms`);
      assert.equal(svc.hits, 1);
      assert.equal(await srv.stop("SIGTERM"), 0);
    } finally {
      await srv.stop("SIGKILL").catch(() => {});
      await svc.close();
    }
  });

  test("a hostile service's endless answer is cut at 16 MiB: the handler fails, the server goes on", async () => {
    // io.request input path: the response body is bounded (fetch_int.h FETCH_MAX_MESSAGE).
    let sent = 0;
    const chunk = Buffer.alloc(1 << 20, 120);
    const evil = nodeHttp.createServer((req, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      const pump = () => {
        while (sent < (64 << 20) && res.write(chunk)) sent += chunk.length;
        if (sent < (64 << 20)) res.once("drain", () => { sent += chunk.length; pump(); });
        else res.end();
      };
      res.on("error", () => {});
      pump();
    });
    await new Promise((r) => evil.listen(0, "127.0.0.1", r));
    const srv = await serve();
    try {
      const c = await join(srv, "slow-evil");
      c.send({ action: "buy", value: { url: `http://127.0.0.1:${evil.address().port}/big` } });
      const err = await c.next((m) => m?.type === "error", 20000);
      assert.equal(err.value.code, "handler");
      assert.match(err.value.message, /too large/);
      assert.ok(sent < (40 << 20), `the server read on after the bound: ${sent} bytes sent`);
      c.send({ action: "ping", value: { n: 7 } });
      assert.ok(await c.next((m) => m?.type === "sync" && m.value.done === 7, 5000));
      assert.equal(await srv.stop("SIGTERM"), 0);
    } finally {
      await srv.stop("SIGKILL").catch(() => {});
      evil.closeAllConnections?.();
      await new Promise((r) => evil.close(r));
    }
  });

  test("1,000 actions waiting at once on one process all complete", { timeout: 120000 }, async () => {
    const svc = await slowService(500, 1000); // nobody is answered before all 1,000 wait
    const srv = await serve({ LUNAROOM_MAX_WAITING: "5000" });
    try {
      const cs = await joinMany(srv, "bulk-a", 1000);
      const t0 = Date.now();
      cs.forEach((c, i) => c.send({ action: "buy", value: { url: svc.url, i } }));
      const got = await Promise.all(cs.map((c) => c.next((m) => m?.type === "bought" || m?.type === "error", 60000)));
      const took = Date.now() - t0;
      assert.deepEqual(got.map((m) => m.type === "bought" && m.value), cs.map((_, i) => i));
      assert.equal(svc.hits, 1000);
      assert.equal(svc.maxOpen, 1000, "1,000 handlers waited at once");
      const counts = await http("GET", `${srv.url}/parties/main/bulk-a/counts`);
      assert.deepEqual(counts.json, { started: 1000, done: 1000 });
      assert.ok(took < 30000, `1,000 waits took ${took} ms`);
      console.log(`# 1,000 waiting actions: all done in ${took} ms, ${svc.maxOpen} open at once`);
      assert.equal(await srv.stop("SIGTERM"), 0);
    } finally {
      await srv.stop("SIGKILL").catch(() => {});
      await svc.close();
    }
  });

  test("a room capped at 100 waiting handlers answers the 900 others 'busy'", { timeout: 120000 }, async () => {
    const svc = await slowService(0, Infinity); // held until released: the 100 wait for sure
    const srv = await serve();
    try {
      const cs = await joinMany(srv, "capped-a", 1000);
      for (const c of cs) c.send({ action: "buy", value: { url: svc.url } });
      const refused = [];
      for (let i = 0; i < 600 && refused.length < 900; i++) {
        await sleep(50);
        refused.length = 0;
        cs.forEach((c, k) => c.messages.some((m) => m?.type === "error") && refused.push(k));
      }
      assert.equal(refused.length, 900);
      assert.equal(svc.open, 100, "100 handlers wait");
      svc.release();
      const outcomes = await Promise.all(
        cs.map((c, k) => c.next((m) => m?.type === (refused.includes(k) ? "error" : "bought"), 30000)),
      );
      const busy = outcomes.filter((m) => m.type === "error");
      assert.equal(busy.length, 900);
      for (const e of busy) {
        assert.equal(e.value.code, "busy");
        assert.equal(e.value.action, "buy");
        assert.match(e.value.message, /100 handlers of room main\/capped-a are waiting already \(waits\.max\)/);
      }
      assert.equal(outcomes.filter((m) => m.type === "bought").length, 100);
      assert.deepEqual((await http("GET", `${srv.url}/parties/main/capped-a/counts`)).json, { done: 100 });
      assert.equal(svc.hits, 100);
      assert.equal(await srv.stop("SIGTERM"), 0);
    } finally {
      await srv.stop("SIGKILL").catch(() => {});
      await svc.close();
    }
  });

  test("an action's fetch of a room whose route waits gets the route's answer (no poll)", async () => {
    const svc = await slowService(300);
    const srv = await serve();
    try {
      const c = await join(srv, "asker-1");
      const t0 = Date.now();
      c.send({ action: "ask", value: { room: "route-f1", url: svc.url } });
      const m = await c.next((p) => p?.type === "sync" && p.value.done === 1, 10000);
      assert.ok(Date.now() - t0 >= 290, "answered after the service");
      assert.equal(m.value.status, 200);
      assert.equal(m.value.n, 1);
      assert.equal(svc.hits, 1);
    } finally {
      await srv.stop();
      await svc.close();
    }
  });

  test("a room woken from hibernation whose restore hook waits: frames sent meanwhile apply once, in order", async () => {
    const svc = await slowService(300);
    const srv = await serve();
    try {
      const c = await join(srv, "restoring-1");
      const trail = {}; // the client's view of room.trail, from the sync patches
      const upTo = (n) => (p) => {
        if (p?.type === "sync" && p.value.trail) Object.assign(trail, p.value.trail);
        return trail[n] !== undefined;
      };
      c.send({ action: "setup", value: svc.url }); // the restore hook waits on it from now on
      c.send({ action: "mark", value: "a" });
      await c.next(upTo("1"), 5000);
      for (let i = 0; i < 50 && !/hibernated/.test(srv.logs()); i++) await sleep(50);
      assert.match(srv.logs(), /room main\/restoring-1 hibernated/);
      const t0 = Date.now();
      c.send({ action: "mark", value: "b" }); // wakes it: the restore waits 300 ms
      c.send({ action: "mark", value: "c" });
      await c.next(upTo("3"), 5000);
      assert.ok(Date.now() - t0 >= 290, "applied after the restore");
      await sleep(100); // nothing more comes (no frame applied twice)
      const all = {};
      for (const p of c.messages) if (p?.type === "sync" && p.value.trail) Object.assign(all, p.value.trail);
      assert.deepEqual(all, { 1: "a", 2: "b", 3: "c" });
      assert.equal(svc.hits, 1);
    } finally {
      await srv.stop();
      await svc.close();
    }
  });

  test("an interceptor that waits on a packet for one connection: its packets stay in order, others are not held", async () => {
    const srv = await serve();
    try {
      const slow = wsClient(`${srv.wsUrl}/parties/main/icept-1?id=slow`);
      await slow.opened;
      await slow.next((m) => m?.type === "sync" && m.value.pId !== undefined, 5000);
      const fast = await join(srv, "icept-1");
      const t0 = Date.now();
      fast.send({ action: "say", value: { n: 1, slow: 300 } });
      for (let n = 2; n <= 20; n++) fast.send({ action: "say", value: { n } });
      await fast.next((m) => m?.type === "m" && m.value.n === 20, 5000);
      const fastDone = Date.now() - t0;
      await slow.next((m) => m?.type === "m" && m.value.n === 20, 5000);
      const slowDone = Date.now() - t0;
      assert.ok(fastDone < 250, `the other connection was held: ${fastDone} ms`);
      assert.ok(slowDone >= 290, `answered before the interceptor's wait: ${slowDone} ms`);
      const order = slow.messages.filter((m) => m?.type === "m").map((m) => m.value.n);
      assert.deepEqual(order, Array.from({ length: 20 }, (_, i) => i + 1));
    } finally {
      await srv.stop();
    }
  });

  test("SIGTERM: a waiting route still answers; handlers still waiting after the drain are cancelled", async () => {
    const svc = await slowService(300);
    const stuck = await slowService(8000);
    const srv = await serve();
    try {
      const slow = await join(srv, "slow-s");
      slow.send({ action: "buy", value: { url: stuck.url } }); // will not finish in time
      const answer = http("GET", `${srv.url}/parties/main/route-a/check?url=${encodeURIComponent(svc.url)}`);
      for (let i = 0; i < 200 && (svc.hits < 1 || stuck.hits < 1); i++) await sleep(10); // both wait now
      const t0 = Date.now();
      const code = srv.stop("SIGTERM");
      const res = await answer;
      assert.equal(res.status, 200, res.body);
      assert.deepEqual(res.json, { status: 200, n: 1 });
      assert.equal(await code, 0);
      const took = Date.now() - t0;
      assert.ok(took < 3000, `exit after ${took} ms`);
      assert.match(srv.logs(), /1 room handler\(s\) still waiting after 1000 ms, cancelled/);
    } finally {
      await srv.stop("SIGKILL").catch(() => {});
      await svc.close();
      await stuck.close();
    }
  });

  test("https:// from a handler: verified against --tls-ca; another CA is refused", async () => {
    const dir = tempDir("lunaroom-waits-tls-");
    const f = (n) => path.join(dir, n);
    const ossl = (...a) => execFileSync("openssl", a, { stdio: ["ignore", "pipe", "pipe"] });
    for (const ca of ["ca", "other"])
      ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f(`${ca}.key`), "-out", f(`${ca}.pem`),
        "-days", "2", "-subj", `/CN=lunaroom waits ${ca}`);
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f("srv.key"), "-out", f("srv.csr"), "-subj", "/CN=localhost");
    fs.writeFileSync(f("srv.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
    ossl("x509", "-req", "-in", f("srv.csr"), "-CA", f("ca.pem"), "-CAkey", f("ca.key"), "-CAcreateserial",
      "-out", f("srv.pem"), "-days", "2", "-extfile", f("srv.ext"));
    const svc = https.createServer({ key: fs.readFileSync(f("srv.key")), cert: fs.readFileSync(f("srv.pem")) },
      (req, res) => setTimeout(() => res.end("secret"), 50));
    await new Promise((r) => svc.listen(0, "127.0.0.1", r));
    const target = encodeURIComponent(`https://localhost:${svc.address().port}/x`);
    const run = async (ca) => {
      const srv = await startServer({ rooms: ROOMS, args: ["--no-watch", "--tls-ca", f(ca)] });
      try {
        return (await http("GET", `${srv.url}/parties/main/tls-a/call?url=${target}`)).json;
      } finally {
        await srv.stop("SIGKILL").catch(() => {});
      }
    };
    try {
      assert.deepEqual(await run("ca.pem"), { status: 200, body: "secret" });
      const refused = await run("other.pem");
      assert.equal(refused.status, 0);
      assert.ok(refused.error, JSON.stringify(refused));
    } finally {
      svc.close();
    }
  });
});

describe("the process cap on waiting handlers (--max-waiting)", () => {
  // n clients of one room each start a waiting action (the service holds
  // every answer): returns the messages of the refused ones once `expect`
  // refusals are in and the others are waiting, then lets them finish.
  async function waitsPast(srv, n, expect) {
    const svc = await slowService(0, Infinity);
    try {
      const cs = await joinMany(srv, "bulk-cap", n);
      cs.forEach((c, i) => c.send({ action: "buy", value: { url: svc.url, i } }));
      let refused = [];
      for (let i = 0; i < 200; i++) {
        refused = cs.flatMap((c) => c.messages.filter((m) => m?.type === "error"));
        if (refused.length >= expect && svc.open >= n - expect) break;
        await sleep(25);
      }
      await sleep(50); // nothing more is refused
      refused = cs.flatMap((c) => c.messages.filter((m) => m?.type === "error"));
      const open = svc.open;
      svc.release();
      const done = await Promise.all(
        cs.filter((c) => !c.messages.some((m) => m?.type === "error")).map((c) => c.next((m) => m?.type === "bought", 10000)),
      );
      cs.forEach((c) => c.ws.terminate());
      return { refused, open, done: done.length };
    } finally {
      await svc.close();
    }
  }

  test("--max-waiting N: the wait past N fails with 'busy'; the others complete", async () => {
    const srv = await startServer({
      rooms: ROOMS,
      args: ["--no-watch", "--max-conns-per-ip", "-1", "--session-rate", "0", "--max-waiting", "3"],
      env: { LUNAROOM_MAX_WAITING: "100" }, // the flag wins
    });
    try {
      const r = await waitsPast(srv, 5, 2);
      assert.equal(r.refused.length, 2);
      assert.equal(r.open, 3);
      assert.equal(r.done, 3);
      for (const e of r.refused) {
        assert.equal(e.value.code, "busy");
        assert.match(e.value.message, /3 handlers are waiting in this process \(the process cap\)/);
      }
      assert.equal(await srv.stop("SIGTERM"), 0);
    } finally {
      await srv.stop("SIGKILL").catch(() => {});
    }
  });

  test("the config file key max_waiting, and LUNAROOM_MAX_WAITING as a fallback", async () => {
    const dir = tempDir("lr-maxwait-");
    const conf = path.join(dir, "lunaroom.lua");
    fs.writeFileSync(conf, "return { max_waiting = 2, watch = false, session_rate = 0 }\n");
    try {
      const viaConf = await startServer({ rooms: ROOMS, args: ["--config", conf] });
      try {
        const r = await waitsPast(viaConf, 4, 2);
        assert.deepEqual([r.refused.length, r.open, r.done], [2, 2, 2]);
      } finally {
        assert.equal(await viaConf.stop("SIGTERM"), 0);
      }
      const viaEnv = await startServer({ rooms: ROOMS, args: ["--no-watch"], env: { LUNAROOM_MAX_WAITING: "1" } });
      try {
        const r = await waitsPast(viaEnv, 3, 2);
        assert.deepEqual([r.refused.length, r.open, r.done], [2, 1, 1]);
        assert.match(r.refused[0].value.message, /1 handlers are waiting in this process/);
      } finally {
        assert.equal(await viaEnv.stop("SIGTERM"), 0);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("serve --help shows it; a bad value is refused", () => {
    const help = execFileSync(BIN, ["serve", "--help"], { cwd: ROOT, encoding: "utf8" });
    assert.match(help, /--max-waiting N +handlers waiting for I\/O at once/);
    for (const bad of ["0", "-5", "12x"]) {
      assert.throws(
        () => execFileSync(BIN, ["serve", ROOMS, "--storage", "memory", "--port", "0", "--max-waiting", bad], { cwd: ROOT, stdio: "pipe" }),
        (e) => e.status === 2 && /--max-waiting .* must be a whole number/.test(e.stderr.toString()),
      );
    }
  });
});

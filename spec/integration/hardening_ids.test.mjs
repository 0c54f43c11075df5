/*
 * hardening_ids.test.mjs - issue 15 items 3 and 12 on the wire: HEAD on GET
 * routes (raw HTTP), refusal log lines rate-limited on the real server, and
 * a hostile 7 KB ?id= refused at once while /healthz stays fast.
 *
 * Owns: these expectations for rooms/ (main/api has GET /status).
 * Must not: send anything but to the server it started on 127.0.0.1.
 */
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import { assertLimitedLines, http, sleep, startServer, wsClient } from "./lib.mjs";

/* One raw HTTP/1.1 exchange on a fresh socket; resolves with every byte the
 * server sent until it closed (Connection: close). */
function raw(port, text) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1");
    const chunks = [];
    s.on("data", (d) => chunks.push(d));
    s.on("end", () => resolve(Buffer.concat(chunks).toString("latin1")));
    s.on("error", reject);
    s.setTimeout(5000, () => {
      s.destroy();
      reject(new Error("raw HTTP: no answer in 5 s"));
    });
    s.write(text);
  });
}

function parse(resp) {
  const end = resp.indexOf("\r\n\r\n");
  const head = resp.slice(0, end).split("\r\n");
  const headers = {};
  for (const l of head.slice(1)) {
    const i = l.indexOf(":");
    headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { status: Number(head[0].split(" ")[1]), headers, body: resp.slice(end + 4) };
}

describe("issue 15 items 3 and 12 on the wire", () => {
  let srv;
  before(async () => {
    srv = await startServer({ rooms: "rooms" });
  });
  after(async () => {
    if (srv) assert.equal(await srv.stop("SIGTERM"), 0, srv.logs());
  });

  test("HEAD on a GET route answers as GET without a body (the reference: 404)", async () => {
    for (const path of ["/parties/main/api/status", "/healthz"]) {
      const get = parse(await raw(srv.port, `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
      const head = parse(await raw(srv.port, `HEAD ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
      assert.equal(get.status, 200, path);
      assert.equal(head.status, 200, path);
      assert.equal(head.body, "", path);
      assert.ok(get.body.length > 0, path);
      assert.equal(head.headers["content-length"], String(Buffer.byteLength(get.body)), path);
      assert.equal(head.headers["content-type"], get.headers["content-type"], path);
    }
    // a route that does not exist stays 404, without a body
    const miss = parse(await raw(srv.port, "HEAD /parties/main/api/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    assert.equal(miss.status, 404);
    assert.equal(miss.body, "");
  });

  test("requests to rooms that do not exist: at most 10 log lines a second, then a summary", async () => {
    const lines = () => srv.logs().split("\n").filter((l) => l.includes("no room definition matches main/no~room"));
    const before = lines().length;
    for (let i = 0; i < 60; i++) {
      const r = await http("GET", `${srv.url}/parties/main/no~room~${i}/x`);
      assert.equal(r.status, 404);
    }
    // lr_warn_limited's bound: at most 10 lines per 1000 ms window (60 requests may take longer
    // than one window on a loaded machine), and fewer lines than requests.
    const got = lines().slice(before);
    assertLimitedLines(got);
    assert.ok(got.length >= 1 && got.length < 60, `${got.length} lines`);
    await sleep(1100);
    assert.equal((await http("GET", `${srv.url}/parties/main/no~room~last/x`)).status, 404);
    await sleep(100);
    assert.match(srv.logs(), /suppressed \d+ similar lines \(no such room\)/);
    assert.ok(lines().some((l) => l.includes("no~room~last")));
  });

  test("ten 7 KB ?id=a+++...+b upgrades are refused with 4008 and /healthz stays fast", async () => {
    const id = "a" + "+".repeat(7000) + "b";
    const socks = [];
    for (let i = 0; i < 10; i++) socks.push(wsClient(`${srv.wsUrl}/parties/main/demo?id=${id}`));
    const t0 = Date.now();
    const h = await http("GET", `${srv.url}/healthz`);
    assert.equal(h.status, 200);
    const closes = await Promise.all(
      socks.map((s) => Promise.race([s.closed, sleep(5000).then(() => ({ code: "still open after 5 s" }))])),
    );
    const elapsed = Date.now() - t0;
    for (const s of socks) s.ws.terminate();
    for (const c of closes) {
      assert.equal(c.code, 4008);
      assert.equal(c.reason, "id too long (max 256 bytes)");
    }
    // before: ~0.3 s of loop time per upgrade (3 s for ten)
    assert.ok(elapsed < 1500, `${elapsed} ms`);
  });
});

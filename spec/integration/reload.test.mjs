/*
 * reload.test.mjs - hot reload with the real binary: `lunaroom serve <tmp>`
 * watching a temporary rooms folder while a WebSocket client stays
 * connected; the room file is rewritten (editor-style atomic rename and
 * in-place write) and the client must see the new action behaviour on the
 * same socket. Measures save-to-live latency over 20 reloads and prints the
 * median and p95.
 *
 * Owns: the wire-level expectations of issue 5 (socket kept, state kept,
 * new code live, a broken save keeps the old code, latency).
 * Must not: depend on the example rooms/ folder or on timing beyond the
 * issue's 100 ms budget (LUNAROOM_RELOAD_MAX_MS overrides the bound on a
 * slow machine).
 *
 * "Save-to-live" is measured from just before the file is written to the
 * first reply of the new code to a probe action the client sends in a
 * loop (one in flight at a time), so it includes the watcher,
 * the load, the swap and one localhost round trip.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { performance } from "node:perf_hooks";
import { sleep, startServer, wsClient, tempDir } from "./lib.mjs";

const MAX_MS = Number(process.env.LUNAROOM_RELOAD_MAX_MS || 100);

/* Version n of the room: inc adds `step`, ver answers n; `extra` is more
 * Lua inside `actions`. The rate limit is off because the latency probe
 * sends back-to-back. */
function roomSource(n, step, extra = "") {
  return `local lr = require "lunaroom"
return lr.room {
  path = "game",
  rateLimit = { rate = 0, burst = 0 },
  state = { count = lr.sync(0) },
  actions = {
    inc = function(room) room.count = room.count + ${step} end,
    ver = function(room, _user, _value, conn) room:send(conn, { type = "ver", value = ${n} }) end,
    ${extra}
  },
}
`;
}

function writeAtomic(file, text) {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}

function writeInPlace(file, text) {
  fs.writeFileSync(file, text); /* O_TRUNC + write + close: IN_CLOSE_WRITE */
}

const count = (s, re) => (s.match(new RegExp(re.source, "g")) || []).length;

async function waitFor(fn, timeoutMs = 3000, what = "condition") {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

function report(what, samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const q = (p) => sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)];
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  console.log(
    `# save-to-live latency (${what}) over ${samples.length} reloads: median ${median.toFixed(1)} ms, ` +
      `p95 ${q(0.95).toFixed(1)} ms, min ${sorted[0].toFixed(1)} ms, max ${sorted.at(-1).toFixed(1)} ms`,
  );
  return median;
}

describe("hot reload (real binary)", () => {
  let dir, file, srv, c;
  let closes = 0;

  before(async () => {
    dir = tempDir("lunaroom-reload-");
    file = path.join(dir, "game.lua");
    fs.writeFileSync(file, roomSource(0, 1));
    srv = await startServer({ rooms: dir });
    c = wsClient(`${srv.wsUrl}/parties/main/game?id=reload-spec-1`);
    c.ws.on("close", () => closes++);
    await c.opened;
    const first = await c.next((m) => m && m.type === "sync");
    assert.equal(first.value.count, 0);
  });

  after(async () => {
    console.log(`# dropped connections: ${closes}`);
    if (c) c.ws.terminate();
    if (srv) await srv.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  /* Send `ver` until the reply is `want` (one probe in flight). */
  async function untilVersion(want, timeoutMs = 3000) {
    const end = Date.now() + timeoutMs;
    for (;;) {
      c.send({ action: "ver", value: null });
      const m = await c.next((x) => x && x.type === "ver", timeoutMs);
      if (m.value === want) return;
      if (Date.now() > end) throw new Error(`version ${want} not live after ${timeoutMs} ms`);
    }
  }

  async function inc(expectCount) {
    c.send({ action: "inc", value: null });
    const m = await c.next((x) => x && x.type === "sync" && x.value && "count" in x.value);
    assert.equal(m.value.count, expectCount);
  }

  test("three rewrites on one socket: new behaviour each time, state and socket kept", async () => {
    await inc(1);
    const reloaded = /reloaded \S*game\.lua \(version [0-9a-f]{12}, 1 room\)/;

    writeAtomic(file, roomSource(1, 10)); // 1: editor-style atomic save
    await untilVersion(1);
    await inc(11);

    writeInPlace(file, roomSource(2, 100)); // 2: in-place write
    await untilVersion(2);
    await inc(111);

    // 3: a new action appears
    writeAtomic(
      file,
      roomSource(3, 1000, `hello = function(room, _u, v) room:broadcast({ type = "hello", value = v }) end,`),
    );
    await untilVersion(3);
    await inc(1111);
    c.send({ action: "hello", value: "world" });
    assert.deepEqual(await c.next((x) => x && x.type === "hello"), { type: "hello", value: "world" });

    await waitFor(() => count(srv.logs(), reloaded) >= 3, 2000, "three reload log lines");
    assert.equal(c.ws.readyState, c.ws.OPEN);
    assert.equal(closes, 0);
  });

  test("a broken save keeps the old code running and logs file:line", async () => {
    const before = count(srv.logs(), /keeping version/);
    writeInPlace(file, roomSource(4, 5).replace("room.count + 5", "room.count +* 5"));
    await waitFor(() => count(srv.logs(), /keeping version/) > before, 2000, "the error line");
    assert.match(srv.logs(), /game\.lua:7: .*\(keeping version [0-9a-f]{12}\)/);
    await untilVersion(3);
    await inc(2111);
    assert.equal(closes, 0);
  });

  test("save-to-live latency over 20 reloads", async () => {
    const samples = [];
    for (let i = 0; i < 20; i++) {
      const n = 100 + i;
      const text = roomSource(n, 1);
      await sleep(5); // let the previous burst end
      const t0 = performance.now();
      if (i % 2 === 0) writeAtomic(file, text);
      else writeInPlace(file, text);
      await untilVersion(n);
      samples.push(performance.now() - t0);
    }
    const median = report("client-observed, probing", samples);
    assert.equal(closes, 0);
    assert.equal(c.ws.readyState, c.ws.OPEN);
    assert.ok(median < MAX_MS, `median ${median.toFixed(1)} ms >= ${MAX_MS} ms`);
  });

  /* With no traffic the loop only wakes for the watcher's engine timer, so
   * this is the slower path: latency from the write to the timestamp of the
   * server's "reloaded" line (same machine clock, 1 ms resolution), then
   * the new code is checked over the socket. */
  test("save-to-live latency over 20 reloads, idle server", async () => {
    const samples = [];
    const re = /^(\S+) info  reloaded \S*game\.lua \(version/gm;
    for (let i = 0; i < 20; i++) {
      const n = 200 + i;
      const text = roomSource(n, 1);
      const seen = [...srv.logs().matchAll(re)].length;
      await sleep(20 + ((i * 7) % 25)); // idle, and at varying phases of the wake-up timer
      const t0 = Date.now();
      if (i % 2 === 0) writeAtomic(file, text);
      else writeInPlace(file, text);
      const m = await waitFor(() => {
        const all = [...srv.logs().matchAll(re)];
        return all.length > seen ? all[seen] : null;
      }, 3000, `reload ${n}`);
      samples.push(Date.parse(m[1]) - t0);
      await untilVersion(n);
    }
    const median = report("server log, idle", samples);
    assert.equal(closes, 0);
    assert.ok(median < MAX_MS, `median ${median.toFixed(1)} ms >= ${MAX_MS} ms`);
  });
});

/*
 * bench/pg_failover.mjs - fail-over time of a cluster room (a benchmark, not
 * a test): two nodes on a throwaway PostgreSQL; TRIES times: a client
 * writes to a fresh room on node A, A is killed with SIGKILL, and a client
 * retries node B every RETRY_MS until B serves the room (after the lease
 * expired): the time from the kill to B's first snapshot is one sample.
 * A is started again (same --node-url) for the next try.
 * MODE=relayed: the nodes share SHARD_SECRET and a second client joins the
 * room through node B (relayed to A) before the kill; it keeps its socket:
 * one sample is the time from the kill to the first state packet (a sync)
 * that client gets after it (B took the room once A's lease expired and sent
 * it a fresh snapshot). That client also sends an action 100 ms after the
 * kill (B holds it while the room has no owner): the time until its effect
 * (count 2) arrives is printed too.
 *   node bench/pg_failover.mjs          (default lease 4000 ms)
 *   MODE=relayed node bench/pg_failover.mjs
 * Env: TRIES (20), LEASE_MS (default: the server's, 4000), RETRY_MS (50),
 * MODE (direct | relayed).
 */
import fs from "node:fs";
import path from "node:path";
import { ROOT, sleep, startServer, tempDir, wsClient } from "../spec/integration/lib.mjs";
import { startPg } from "../spec/integration/pg.mjs";
import { freePort } from "../spec/integration/cluster_lib.mjs";

const TRIES = Number(process.env.TRIES || 20);
const RETRY_MS = Number(process.env.RETRY_MS || 50);
const lease = process.env.LEASE_MS ? ["--lease-ms", process.env.LEASE_MS] : [];
const MODE = process.env.MODE || "direct";
if (!["direct", "relayed"].includes(MODE)) throw new Error(`MODE is direct or relayed, not ${MODE}`);
const pg = startPg();
const rooms = tempDir("lunaroom-failover-");
fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/fill.lua"), path.join(rooms, "fill.lua"));
const portA = await freePort();
const portB = await freePort();
const node = (port) =>
  startServer({
    rooms,
    env: MODE === "relayed" ? { SHARD_SECRET: "bench-secret-0123456789abcdef" } : {},
    args: ["--port", String(port), "--host", "127.0.0.1", "--cluster", pg.url, "--node-url",
      `http://127.0.0.1:${port}`, "--no-watch", "--room-create-rate", "0", "--session-rate", "0", ...lease],
  });

async function snapshot(srv, room, id) {
  const c = wsClient(`${srv.wsUrl}/parties/main/${room}?id=${id}`);
  const r = await Promise.race([
    c.next((m) => m?.type === "sync" && m.value.pId !== undefined, 5000).then((m) => ({ c, m })),
    c.closed.then(() => null),
  ]);
  if (!r) return null;
  return r;
}

const q = (xs, p) => xs[Math.min(xs.length - 1, Math.ceil(p * xs.length) - 1)];
const summary = (xs) => {
  const s = [...xs].sort((x, y) => x - y);
  return `p50 ${q(s, 0.5).toFixed(0)} ms, p99 ${q(s, 0.99).toFixed(0)} ms, max ${s[s.length - 1].toFixed(0)} ms`;
};

const b = await node(portB);
const leaseText = `lease ${process.env.LEASE_MS || "4000 (default)"} ms`;
if (MODE === "relayed") {
  const first = [];
  const held = [];
  for (let i = 0; i < TRIES; i++) {
    const a = await node(portA);
    const room = `fill-fr-${process.pid}-${i}`;
    const ca = await snapshot(a, room, `a${i}`);
    if (!ca) throw new Error(`node A did not serve ${room}:\n${a.logs()}`);
    ca.c.send({ action: "inc" });
    await ca.c.next((m) => m?.type === "sync" && m.value.count === 1);
    const cb = await snapshot(b, room, `r${i}`); // B relays it to A, the owner
    if (!cb) throw new Error(`node B did not relay ${room}:\n${b.logs()}`);
    if (cb.m.value.count !== 1) throw new Error(`relayed snapshot of ${room}: count ${cb.m.value.count}`);
    let t0 = 0, tFirst = 0, tHeld = 0, firstCount;
    cb.c.ws.on("message", (data) => {
      if (!t0) return;
      let m;
      try {
        m = JSON.parse(data.toString());
      } catch {
        return;
      }
      if (m?.type !== "sync") return;
      const t = performance.now();
      if (!tFirst) [tFirst, firstCount] = [t, m.value.count];
      if (!tHeld && m.value.count === 2) tHeld = t;
    });
    let closed = null;
    cb.c.closed.then((c) => (closed = c));
    t0 = performance.now();
    a.proc.kill("SIGKILL");
    await a.stop();
    await sleep(Math.max(0, 100 - (performance.now() - t0)));
    cb.c.send({ action: "inc" });
    const limit = t0 + 20000;
    while ((!tFirst || !tHeld) && !closed && performance.now() < limit) await sleep(5);
    if (closed) throw new Error(`relayed client of ${room} lost its socket (${closed.code}) after the kill:\n${b.logs()}`);
    if (!tFirst) throw new Error(`relayed client of ${room}: no state packet within 20 s of the kill:\n${b.logs()}`);
    if (firstCount !== 1 && firstCount !== 2) throw new Error(`room ${room}: count ${firstCount} after fail-over`);
    if (!tHeld) throw new Error(`room ${room}: the action held during the fail-over was not applied within 20 s`);
    first.push(tFirst - t0);
    held.push(tHeld - t0);
    cb.c.ws.terminate();
    console.log(`try ${i + 1}: first state packet at the relayed client ${(tFirst - t0).toFixed(0)} ms ` +
      `(count ${firstCount}), the held action's effect ${(tHeld - t0).toFixed(0)} ms`);
  }
  console.log(`fail-over over ${TRIES} tries, client relayed by the survivor (kept its socket; ${leaseText}):\n` +
    `  kill -9 -> first state packet at the relayed client: ${summary(first)}\n` +
    `  kill -9 -> effect of an action it sent 100 ms after the kill: ${summary(held)}`);
  await b.stop();
  pg.stop();
  process.exit(0);
}
const samples = [];
for (let i = 0; i < TRIES; i++) {
  const a = await node(portA);
  const room = `fill-fo-${i}`;
  const ca = await snapshot(a, room, `a${i}`);
  if (!ca) throw new Error(`node A did not serve ${room}:\n${a.logs()}`);
  ca.c.send({ action: "inc" });
  await ca.c.next((m) => m?.type === "sync" && m.value.count === 1);
  a.proc.kill("SIGKILL");
  const t0 = performance.now();
  await a.stop();
  let got = null;
  while (!got) {
    got = await snapshot(b, room, `b${i}`);
    if (!got) await sleep(RETRY_MS);
  }
  const ms = performance.now() - t0;
  if (got.m.value.count !== 1) throw new Error(`room ${room}: count ${got.m.value.count} after fail-over`);
  got.c.ws.terminate();
  samples.push(ms);
  console.log(`try ${i + 1}: ${ms.toFixed(0)} ms`);
}
console.log(`fail-over over ${TRIES} tries (${leaseText}, retry every ${RETRY_MS} ms): ${summary(samples)}`);
await b.stop();
pg.stop();
process.exit(0);

/*
 * bench/pg_failover.mjs - fail-over time of a cluster room (a benchmark, not
 * a test): two nodes on a throwaway PostgreSQL; TRIES times: a client
 * writes to a fresh room on node A, A is killed with SIGKILL, and a client
 * retries node B every RETRY_MS until B serves the room (after the lease
 * expired): the time from the kill to B's first snapshot is one sample.
 * A is started again (same --node-url) for the next try.
 *   node bench/pg_failover.mjs          (default lease 4000 ms)
 * Env: TRIES (20), LEASE_MS (default: the server's, 4000), RETRY_MS (50).
 */
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { ROOT, sleep, startServer, tempDir, wsClient } from "../spec/integration/lib.mjs";
import { startPg } from "../spec/integration/pg.mjs";

const TRIES = Number(process.env.TRIES || 20);
const RETRY_MS = Number(process.env.RETRY_MS || 50);
const lease = process.env.LEASE_MS ? ["--lease-ms", process.env.LEASE_MS] : [];
const pg = startPg();
const rooms = tempDir("lunaroom-failover-");
fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/fill.lua"), path.join(rooms, "fill.lua"));
const freePort = () =>
  new Promise((res) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
const portA = await freePort();
const portB = await freePort();
const node = (port) =>
  startServer({
    rooms,
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

const b = await node(portB);
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
samples.sort((x, y) => x - y);
const q = (p) => samples[Math.min(samples.length - 1, Math.ceil(p * samples.length) - 1)];
console.log(
  `fail-over over ${TRIES} tries (lease ${process.env.LEASE_MS || "4000 (default)"} ms, retry every ${RETRY_MS} ms): ` +
    `p50 ${q(0.5).toFixed(0)} ms, p99 ${q(0.99).toFixed(0)} ms, max ${samples[samples.length - 1].toFixed(0)} ms`,
);
await b.stop();
pg.stop();
process.exit(0);

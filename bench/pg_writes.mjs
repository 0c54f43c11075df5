/*
 * bench/pg_writes.mjs - write throughput of --storage postgres:// (a
 * benchmark, not a test): ROOMS rooms, one client each, every client sends
 * its next action when the sync of the previous one arrived (with
 * throttleStorage = 0 a sync leaves only after its write committed), for
 * SECONDS. Prints committed actions/s and the database's transactions/s.
 * Run twice to compare grouped flushes with one transaction per write:
 *   node bench/pg_writes.mjs                       (every room of a loop turn in one transaction)
 *   LUNAROOM_PG_TXN_ROOMS=1 node bench/pg_writes.mjs  (one transaction per write batch)
 *   CLUSTER=1 node bench/pg_writes.mjs   (--cluster: every room fenced by its lease)
 * Env: ROOMS (default 50), SECONDS (default 5), PG_FSYNC (on), LUNAROOM_BIN.
 * Also prints the statements sent per committed action (from /metrics).
 */
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { ROOT, sleep, startServer, tempDir, wsClient } from "../spec/integration/lib.mjs";
import { startPg } from "../spec/integration/pg.mjs";

const ROOMS = Number(process.env.ROOMS || 50);
const SECONDS = Number(process.env.SECONDS || 5);
const pg = startPg({ fsync: process.env.PG_FSYNC || "on" });
const rooms = tempDir("lunaroom-pgbench-");
fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/fill.lua"), path.join(rooms, "fill.lua"));
const port = await new Promise((res) => {
  const s = net.createServer();
  s.listen(0, "127.0.0.1", () => {
    const { port } = s.address();
    s.close(() => res(port));
  });
});
const store = process.env.CLUSTER ? ["--cluster", pg.url, "--node-url", `http://127.0.0.1:${port}`] : ["--storage", pg.url];
const srv = await startServer({
  rooms,
  args: [...store, "--port", String(port), "--no-watch", "--host", "127.0.0.1", "--room-create-rate", "0", "--session-rate", "0"],
});
const statements = async () =>
  Number(/^lunaroom_pg_statements_total (\S+)$/m.exec(await (await fetch(`${srv.url}/metrics`)).text())[1]);
const clients = [];
for (let i = 0; i < ROOMS; i++) {
  const c = wsClient(`${srv.wsUrl}/parties/main/fill-b${i}?id=b${i}`);
  await c.opened;
  clients.push(c);
}
await sleep(500);
let done = 0;
let running = true;
for (const c of clients) {
  c.ws.on("message", () => {
    if (!running) return;
    done++;
    c.send({ action: "inc" });
  });
}
const xact = () => Number(pg.sql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'lunaroom'"));
const x0 = xact();
const s0 = await statements();
const t0 = performance.now();
for (const c of clients) c.send({ action: "inc" });
await sleep(SECONDS * 1000);
running = false;
const secs = (performance.now() - t0) / 1000;
const s1 = await statements();
await sleep(700);
const x1 = xact();
console.log(
  `rooms ${ROOMS}, ${secs.toFixed(1)} s, LUNAROOM_PG_TXN_ROOMS=${process.env.LUNAROOM_PG_TXN_ROOMS || "0 (no limit)"}, fsync ${process.env.PG_FSYNC || "on"}: ` +
    `${(done / secs).toFixed(0)} committed actions/s, ~${((x1 - x0) / secs).toFixed(0)} transactions/s, ` +
    `${((s1 - s0) / done).toFixed(2)} statements per action${process.env.CLUSTER ? " (--cluster)" : ""}`,
);
for (const c of clients) c.ws.terminate();
await srv.stop();
pg.stop();
process.exit(0);

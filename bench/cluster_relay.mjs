/*
 * bench/cluster_relay.mjs - a client on the room's owner vs a client relayed
 * through another node (a benchmark, not a test): two cluster nodes on a
 * throwaway PostgreSQL (fsync on); node A owns room bench-1; one client
 * on A and one on B each do N sequential round trips (send inc, wait for the
 * sync that carries its count; a persisted counter, no rate limit). Prints round-trip p50/p99, server CPU per
 * action (utime+stime of both node processes over the run, /proc), and
 * database statements per action on each node (/metrics).
 *   node bench/cluster_relay.mjs        (N=2000)
 * Env: N (round trips per client), PIN=1 (taskset: node A on CPU 0, node B
 * on CPU 1, this script on either), THROTTLE=MS (the room's throttleStorage:
 * 0 = every reply waits for its commit; 1000 = writes batched per second,
 * replies at once: the relay's own cost shows).
 * The per-address message budget is off (--msgs-per-ip -1): with its default
 * (2000/s, burst 4000) every client past N = 4000 would be held to 2000/s.
 * Round trips wait for their count with a listener of their own (not
 * wsClient.next(), which rescans every packet kept: O(N) per round trip).
 */
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { http, startServer, tempDir, wsClient } from "../spec/integration/lib.mjs";
import { startPg } from "../spec/integration/pg.mjs";
import { freePort } from "../spec/integration/cluster_lib.mjs";

const N = Number(process.env.N || 2000);
const THROTTLE = Number(process.env.THROTTLE || 0);
const pg = startPg({ fsync: "on" });
const rooms = tempDir("lunaroom-relay-bench-");
fs.writeFileSync(
  path.join(rooms, "bench.lua"),
  `local lr = require "lunaroom"
return lr.room {
  path = "bench-{id}",
  rateLimit = { rate = 0, burst = 0 }, -- sequential round trips, as fast as they go
  throttleStorage = ${THROTTLE}, -- 0: each reply waits for its commit (fsync)
  state = { count = 0 },
  actions = { inc = function(room) room.count = room.count + 1 end },
}
`,
);
const node = async (cpu) => {
  const port = await freePort();
  const srv = await startServer({
    rooms,
    env: { SHARD_SECRET: "bench-secret-0123456789abcdef" },
    args: ["--port", String(port), "--host", "127.0.0.1", "--cluster", pg.url, "--node-url",
      `http://127.0.0.1:${port}`, "--no-watch", "--msgs-per-ip", "-1"],
  });
  if (process.env.PIN) execFileSync("taskset", ["-p", "-c", String(cpu), String(srv.proc.pid)], { stdio: "ignore" });
  return srv;
};
const cpuMs = (pid) => {
  const f = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // utime + stime, clock ticks of 10 ms
};
const metric = async (srv, name) =>
  Number(new RegExp(`^${name} (\\S+)$`, "m").exec((await http("GET", `${srv.url}/metrics`)).body)?.[1] ?? 0);
const pct = (xs, p) => xs[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];

const a = await node(0);
const b = await node(1);
try {
  const join = async (srv, id) => {
    const c = wsClient(`${srv.wsUrl}/parties/main/bench-1?id=${id}`);
    await c.next((m) => m?.type === "sync" && m.value.pId !== undefined, 5000);
    return c;
  };
  const owner = await join(a, "owner");
  const relayed = await join(b, "relayed");
  let count = Math.max(...owner.messages.filter((m) => m?.type === "sync" && typeof m.value.count === "number").map((m) => m.value.count), 0);
  // Wait for a count with a listener of our own: wsClient.next() scans every
  // packet kept so far, O(N) per round trip, which would be the bench's cost.
  const waitCount = (c, want) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        c.ws.off("message", on);
        reject(new Error(`no count ${want} within 5 s`));
      }, 5000);
      const on = (data) => {
        const m = JSON.parse(data.toString());
        if (m?.type !== "sync" || m.value.count !== want) return;
        clearTimeout(timer);
        c.ws.off("message", on);
        resolve();
      };
      c.ws.on("message", on);
    });
  for (const [label, c] of [["on the owner", owner], ["relayed by another node", relayed]]) {
    const rtts = [];
    const cpu0 = cpuMs(a.proc.pid) + cpuMs(b.proc.pid);
    const st0 = [await metric(a, "lunaroom_pg_statements_total"), await metric(b, "lunaroom_pg_statements_total")];
    const t0 = performance.now();
    for (let i = 0; i < N; i++) {
      const want = ++count;
      const t = performance.now();
      const got = waitCount(c, want);
      c.send({ action: "inc" });
      await got;
      rtts.push(performance.now() - t);
    }
    const wall = performance.now() - t0;
    const cpu = cpuMs(a.proc.pid) + cpuMs(b.proc.pid) - cpu0;
    const st1 = [await metric(a, "lunaroom_pg_statements_total"), await metric(b, "lunaroom_pg_statements_total")];
    rtts.sort((x, y) => x - y);
    console.log(
      `client ${label}: ${N} round trips in ${(wall / 1000).toFixed(1)} s: p50 ${pct(rtts, 50).toFixed(2)} ms, ` +
        `p99 ${pct(rtts, 99).toFixed(2)} ms, max ${rtts[rtts.length - 1].toFixed(1)} ms, mean ${(rtts.reduce((x, y) => x + y, 0) / N).toFixed(2)} ms, wall/N ${(wall / N).toFixed(2)} ms; server CPU ${((cpu * 1000) / N).toFixed(0)} us/action (both nodes); ` +
        `statements/action: owner ${((st1[0] - st0[0]) / N).toFixed(2)}, relay ${((st1[1] - st0[1]) / N).toFixed(3)}`,
    );
  }
  console.log(`(${os.cpus().length} CPUs, ${process.env.PIN ? "node A pinned to CPU 0, node B to CPU 1" : "not pinned"}; PostgreSQL fsync on; throttleStorage ${THROTTLE})`);
} finally {
  await a.stop();
  await b.stop();
  pg.stop();
}

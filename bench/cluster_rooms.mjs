/*
 * bench/cluster_rooms.mjs - a many-room workload on one cluster node vs two
 * (a benchmark, not a test): ROOMS game rooms (bench/rooms/bench.lua with
 * throttleStorage = THROTTLE), PER_ROOM clients in each, every client sends
 * moves and waits for the patch of its own (build/bench/fastgen --scenario
 * move --rooms ROOMS), the total rate swept until saturation (p99 > 100 ms,
 * < 90% of the offered moves processed, or a backlog). Every layout starts
 * fresh nodes on one throwaway PostgreSQL (fsync on) and fresh rooms:
 *   1         one node (--cluster), every client on it
 *   2-owner   two nodes, every client of room r on node r % 2 (the node
 *             asked first owns the room: no relaying)
 *   2-spread  two nodes, the clients of each room alternate over the nodes
 *             (a load balancer without affinity: with an even PER_ROOM, half
 *             the clients relayed)
 * Prints, per layout: saturation actions/s with its p50/p99, the figures at
 * the last rate every layout held, server CPU (both nodes summed; 100% = one
 * core) and fastgen's CPU, rooms owned, relayed connections and links per
 * node (/metrics, polled once a second during the run: the highest), and
 * /proc/loadavg before and after.
 *   node bench/cluster_rooms.mjs
 * Pinning (2 cores): node k on CPU k (taskset; one node: CPU 0); fastgen and
 * PostgreSQL not pinned, at normal priority (the scheduler puts fastgen on
 * whichever core has room; with two nodes it shares both with them).
 * GEN_CPU=N pins fastgen to CPU N instead; GEN_NICE=K runs it at nice K.
 * Env: ROOMS (250), PER_ROOM (4), THROTTLE (1000: writes batched per second;
 * 0: every patch waits for its commit), SWEEP (1000:1.25:200000, total
 * moves/s), DURATION (2 s per step), LAYOUTS (1,2-owner,2-spread), PG_FSYNC
 * (on), NO_PIN=1 (nothing pinned), JSON=FILE (every fastgen result).
 * Needs build/lunaroom and build/bench/fastgen (make build).
 */
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { http, ROOT, startServer, tempDir } from "../spec/integration/lib.mjs";
import { startPg } from "../spec/integration/pg.mjs";
import { freePort } from "../spec/integration/cluster_lib.mjs";

const ROOMS = Number(process.env.ROOMS || 250);
const PER_ROOM = Number(process.env.PER_ROOM || 4);
const THROTTLE = Number(process.env.THROTTLE ?? 1000);
const SWEEP = process.env.SWEEP || "1000:1.25:200000";
const DURATION = process.env.DURATION || "2";
const LAYOUTS = (process.env.LAYOUTS || "1,2-owner,2-spread").split(",");
const PIN = !process.env.NO_PIN;
const FASTGEN = path.join(ROOT, "build", "bench", "fastgen");
if (!fs.existsSync(FASTGEN)) throw new Error(`${FASTGEN} not found: make build`);
for (const l of LAYOUTS) if (!["1", "2-owner", "2-spread"].includes(l)) throw new Error(`unknown layout ${l}`);

const pg = startPg({ fsync: process.env.PG_FSYNC || "on" });
const rooms = tempDir("lunaroom-rooms-bench-");
const src = fs.readFileSync(path.join(ROOT, "bench/rooms/bench.lua"), "utf8");
const room = src.replace(/^(\s*path = "bench-\{id\}",)$/m, `$1\n  throttleStorage = ${THROTTLE},`);
if (room === src) throw new Error("bench/rooms/bench.lua: no path line to add throttleStorage after");
fs.writeFileSync(path.join(rooms, "bench.lua"), room);

const loadavg = () => fs.readFileSync("/proc/loadavg", "utf8").trim().split(" ").slice(0, 3).join(" ");
const metric = async (srv, name) =>
  Number(new RegExp(`^${name} (\\S+)$`, "m").exec((await http("GET", `${srv.url}/metrics`)).body)?.[1] ?? NaN);

async function node(cpu) {
  const port = await freePort();
  const srv = await startServer({
    rooms,
    env: { SHARD_SECRET: "bench-secret-0123456789abcdef" },
    args: ["--port", String(port), "--host", "127.0.0.1", "--cluster", pg.url, "--node-url",
      `http://127.0.0.1:${port}`, "--no-watch", "--max-conns", "-1", "--max-conns-per-ip", "-1",
      "--max-http-per-ip", "-1", "--msgs-per-ip", "-1", "--room-create-rate", "0", "--session-rate", "0"],
  });
  if (PIN) execFileSync("taskset", ["-a", "-p", "-c", String(cpu), String(srv.proc.pid)], { stdio: "ignore" });
  return srv;
}

function fastgen(args) {
  return new Promise((resolve, reject) => {
    const pre = process.env.GEN_NICE ? ["nice", "-n", process.env.GEN_NICE] : [];
    const argv = [...pre, FASTGEN, ...args];
    const p = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => {
      err += d;
      process.stderr.write(d);
    });
    p.on("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`fastgen exited ${code}:\n${err}\n${out}`))));
  });
}

const results = [];
for (const [li, layout] of LAYOUTS.entries()) {
  const n = layout === "1" ? 1 : 2;
  const nodes = [];
  for (let k = 0; k < n; k++) nodes.push(await node(k));
  const jsonFile = path.join(rooms, `fastgen-${li}.json`);
  const load0 = loadavg();
  try {
    const args = ["--scenario", "move", "--clients", String(ROOMS * PER_ROOM), "--rooms", String(ROOMS),
      "--room", `bench-${layout}-${process.pid}`, "--spread", layout === "2-spread" ? "client" : "room",
      "--sweep", SWEEP, "--duration", DURATION, "--max-time", "900", "--json", jsonFile, "--quiet",
      "--label", `layout ${layout}`];
    for (const s of nodes) args.push("--url", s.wsUrl, "--pid", String(s.proc.pid));
    if (process.env.GEN_CPU) args.push("--cpu", process.env.GEN_CPU);
    // the gauges while the clients are connected (highest seen, one poll a second)
    const per = nodes.map(() => ({ owned: 0, relayed: 0, links: 0 }));
    let running = true;
    const poll = (async () => {
      while (running) {
        await new Promise((r) => setTimeout(r, 1000));
        for (const [k, s] of nodes.entries()) {
          if (!running) break;
          const p = per[k];
          p.owned = Math.max(p.owned, await metric(s, "lunaroom_cluster_rooms_owned"));
          p.relayed = Math.max(p.relayed, await metric(s, "lunaroom_cluster_relayed_connections"));
          p.links = Math.max(p.links, await metric(s, "lunaroom_cluster_links"));
        }
      }
    })();
    const table = await fastgen(args).finally(() => (running = false));
    await poll;
    const j = JSON.parse(fs.readFileSync(jsonFile, "utf8"));
    results.push({ layout, n, j, per, load0, load1: loadavg(), table });
    console.log(`\n## layout ${layout}  (loadavg before ${load0}, after ${loadavg()})`);
    console.log(table.trim());
    console.log(per.map((p, k) => `node ${k}: ${p.owned} rooms owned, ${p.relayed} relayed connections, ${p.links} links`).join("; "));
  } finally {
    for (const s of nodes) await s.stop();
  }
}

// the last rate every layout held: compare latency at the same load
const held = (r) => r.j.move.steps.filter((s) => s.ok).map((s) => s.offered);
const common = Math.max(0, ...held(results[0]).filter((o) => results.every((r) => held(r).includes(o))));
const f = (v, d = 0) => (v == null || v < 0 ? "-" : v.toFixed(d));
console.log(
  `\n${ROOMS} rooms x ${PER_ROOM} clients = ${ROOMS * PER_ROOM} clients, moves (every client waits for its own patch), ` +
    `throttleStorage ${THROTTLE}, PostgreSQL fsync ${process.env.PG_FSYNC || "on"}; ${os.cpus().length} CPUs; ` +
    (PIN ? "node k pinned to CPU k (taskset)" : "nodes not pinned") +
    `, fastgen ${process.env.GEN_CPU ? `pinned to CPU ${process.env.GEN_CPU}` : "not pinned"}` +
    `${process.env.GEN_NICE ? ` at nice ${process.env.GEN_NICE}` : " at normal priority"}, PostgreSQL not pinned\n`,
);
console.log(
  `| layout | saturation actions/s | p50 ms | p99 ms | server CPU % (all nodes) | fastgen CPU % | at ${common}/s: p50 / p99 ms | rooms owned per node | relayed conns per node | loadavg before -> after |`,
);
console.log("|---|---:|---:|---:|---:|---:|---:|---|---|---|");
for (const r of results) {
  const s = r.j.move.saturation;
  const c = r.j.move.steps.find((x) => x.offered === common && x.ok);
  console.log(
    `| ${r.layout} | ${s ? f(s.actions_per_s) : "-"} | ${s ? f(s.p50_ms, 2) : "-"} | ${s ? f(s.p99_ms, 1) : "-"} | ` +
      `${s ? f(s.server_cpu_pct) : "-"} | ${s ? f(s.loadgen_cpu_pct) : "-"} | ${c ? `${f(c.p50_ms, 2)} / ${f(c.p99_ms, 1)}` : "-"} | ` +
      `${r.per.map((p) => p.owned).join(" / ")} | ${r.per.map((p) => p.relayed).join(" / ")} | ${r.load0} -> ${r.load1} |`,
  );
}
if (process.env.JSON) fs.writeFileSync(process.env.JSON, JSON.stringify(results.map(({ table, ...r }) => r), null, 1));
pg.stop();
process.exit(0);

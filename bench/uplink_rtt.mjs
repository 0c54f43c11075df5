/*
 * bench/uplink_rtt.mjs - what an outgoing client connection costs its
 * process: one main server (--world) and one shard process on loopback, a
 * client of the counter room through the shard.
 *
 * Owns: two figures for the shard process, printed as one JSON line:
 *  - rtt: N sequential round trips client -> shard -> uplink -> main ->
 *    uplink -> shard -> client (an increment and its patch), p50/p99/max ms;
 *  - idle: the shard's context switches (voluntary, /proc/PID/status) and
 *    CPU ticks over IDLE_MS with the uplink open and nothing moving: a loop
 *    that polls its client connections wakes hundreds of times a second, one
 *    that waits on them does not.
 * Must not: leave a server running (lib.mjs kills them on exit), use
 * anything but 127.0.0.1.
 *
 * Usage: node bench/uplink_rtt.mjs [N=300] [IDLE_MS=2000]
 *        LUNAROOM_BIN=path/to/lunaroom to measure another binary.
 * Needs: spec/integration/node_modules (npm ci there).
 */
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { ROOT, http, sleep, startServer, tempDir } from "../spec/integration/lib.mjs";

const require = createRequire(path.join(ROOT, "spec", "integration", "package.json"));
const WebSocket = require("ws");
const N = Number(process.argv[2] || 300);
const IDLE_MS = Number(process.argv[3] || 2000);
const SHARD_SECRET = "uplink-rtt-secret";

const proc = (pid) => {
  const st = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  const s = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  return { vcsw: Number(/voluntary_ctxt_switches:\s+(\d+)/.exec(s)[1]), ticks: Number(st[11]) + Number(st[12]) };
};

const rooms = tempDir("lunaroom-rtt-");
fs.copyFileSync(path.join(ROOT, "rooms", "counter.lua"), path.join(rooms, "counter.lua"));
const main = await startServer({
  rooms,
  args: ["--world", "--no-watch"],
  env: { AUTH_JWT_SECRET: "uplink-rtt-jwt", SHARD_SECRET },
});
const shard = await startServer({
  rooms: tempDir("lunaroom-rtt-shard-"),
  args: ["--shard", main.url, "--no-watch"],
  env: { SHARD_SECRET, AUTH_JWT_SECRET: "" },
});
try {
  const r = await http("POST", `${main.url}/parties/world/world-default/connect`, { roomId: "demo" });
  if (r.status !== 200) throw new Error(`connect: ${r.status} ${r.body}`);
  const ws = new WebSocket(`${shard.wsUrl}/parties/shard/${r.json.shardId}?id=rtt-1`);
  const waiting = [];
  ws.on("message", (d) => {
    const m = JSON.parse(d.toString());
    if (m?.type === "sync" && m.value?.count !== undefined) waiting.splice(0).forEach((f) => f(m));
  });
  const patch = () => new Promise((res) => waiting.push(res));
  await new Promise((res, rej) => (ws.once("open", res), ws.once("error", rej)));
  await patch(); // the snapshot
  for (let i = 0; i < 20; i++) { // warm up
    const p = patch();
    ws.send(JSON.stringify({ action: "increment" }));
    await p;
    await sleep(12);
  }
  const t = [];
  for (let i = 0; i < N; i++) {
    const p = patch();
    const t0 = process.hrtime.bigint();
    ws.send(JSON.stringify({ action: "increment" }));
    await p;
    t.push(Number(process.hrtime.bigint() - t0) / 1e6);
    await sleep(12); // under the room's per-connection message rate (100/s)
  }
  t.sort((a, b) => a - b);
  const q = (f) => t[Math.min(t.length - 1, Math.floor(f * t.length))];
  await sleep(500); // let the last reports settle
  const a = proc(shard.proc.pid);
  await sleep(IDLE_MS);
  const b = proc(shard.proc.pid);
  const out = {
    bin: process.env.LUNAROOM_BIN || "build/lunaroom",
    rtt_ms: { n: N, p50: +q(0.5).toFixed(3), p99: +q(0.99).toFixed(3), max: +t[t.length - 1].toFixed(3) },
    idle: { ms: IDLE_MS, wakeups: b.vcsw - a.vcsw, wakeups_per_s: Math.round(((b.vcsw - a.vcsw) * 1000) / IDLE_MS), cpu_ticks: b.ticks - a.ticks },
  };
  console.log(JSON.stringify(out));
  ws.close();
} finally {
  const s1 = await shard.stop();
  const s2 = await main.stop();
  if (s1 !== 0 || s2 !== 0) {
    console.error(`exit codes shard ${s1} main ${s2}\n--- shard\n${shard.logs()}\n--- main\n${main.logs()}`);
    process.exitCode = 1;
  }
}

// memory.mjs - malloc's bytes in use per idle WebSocket and per room, the
// repeatable form of compare.mjs's RSS rows (RSS moves with what the OS
// takes back; malloc's own counter does not).
//
//   node bench/memory.mjs [--bin build/lunaroom [--lua-path DIR] | --limit] [--mode idle|rooms]
//                         [--clients 1000]
//
// Starts the server as compare.mjs does (bench/rooms, memory storage, limits
// off; --limit: build/bench/limit with lunaroom's NET_RX_BUFFER) with
// bench/memprobe/memprobe.so preloaded (built on first use into
// build/bench/), connects one client, reads malloc's in-use bytes (after
// 1.5 s), connects the other clients (idle: all in room bench-mi; rooms:
// client i alone in room bench-mr<i>), waits 2.5 s (lunaroom's quiet-time
// Lua collection and heap trim run meanwhile) and reads again. Prints one
// JSON line: in-use bytes per client ((after - before) / (N - 1)), the Lua
// heap's share of it (lunaroom's /metrics lunaroom_lua_memory_bytes) and
// the server's RSS. Loopback only; every wait bounded. Needs ws
// (spec/integration/node_modules), cc, glibc >= 2.33.
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(ROOT, "spec/integration/package.json"));
const WebSocket = require("ws");

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};
const LIMIT = args.includes("--limit");
const MODE = opt("--mode", "idle");
const N = Number(opt("--clients", 1000));
if (!["idle", "rooms"].includes(MODE) || !(N >= 2)) {
  console.error("usage: node bench/memory.mjs [--bin BIN | --limit] [--mode idle|rooms] [--clients N>=2]");
  process.exit(2);
}
const BIN = path.resolve(ROOT, opt("--bin", LIMIT ? "build/bench/limit" : "build/lunaroom"));
const LUA_PATH = opt("--lua-path", null); // another checkout's lua/ (the server runs in this one)

const so = path.join(ROOT, "build", "bench", "memprobe.so");
const src = path.join(ROOT, "bench", "memprobe", "memprobe.c");
if (!fs.existsSync(so) || fs.statSync(so).mtimeMs < fs.statSync(src).mtimeMs) {
  fs.mkdirSync(path.dirname(so), { recursive: true });
  const cc = spawnSync("cc", ["-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", so, src, "-lpthread"],
    { stdio: "inherit" });
  if (cc.status !== 0) process.exit(1);
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lr-memory-"));
const fifo = path.join(dir, "fifo"), out = path.join(dir, "out"), log = path.join(dir, "server.log");
if (spawnSync("mkfifo", [fifo]).status !== 0) throw new Error("mkfifo failed");
const rx = /#define\s+NET_RX_BUFFER\s+(\d+)/.exec(fs.readFileSync(path.join(ROOT, "host", "net_int.h"), "utf8"))[1];
const sargs = LIMIT ? ["--port", "0", "--host", "127.0.0.1", "--rx-buffer", rx] :
  ["serve", "bench/rooms", "--port", "0", "--host", "127.0.0.1", "--storage", "memory", "--no-watch",
    "--max-conns", "-1", "--max-conns-per-ip", "-1", "--room-create-rate", "0", "--session-rate", "0",
    "--max-http-per-ip", "-1", "--msgs-per-ip", "-1", ...(LUA_PATH ? ["--lua-path", path.resolve(LUA_PATH)] : [])];
const fd = fs.openSync(log, "w");
const proc = spawn(BIN, sargs, { cwd: ROOT, stdio: ["ignore", fd, fd],
  env: { ...process.env, LD_PRELOAD: so, MEMPROBE_FIFO: fifo, MEMPROBE_OUT: out } });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const socks = [];
function finish(code, msg) {
  if (msg) console.error(msg);
  for (const s of socks) s.terminate();
  proc.kill("SIGTERM");
  setTimeout(() => { fs.rmSync(dir, { recursive: true, force: true }); process.exit(code); }, 300);
}
setTimeout(() => finish(1, "memory.mjs: over 120 s"), 120000).unref();

let port = null;
for (let i = 0; i < 150 && !port; i++) {
  await sleep(100);
  const m = /listening on[^\n]*?:(\d+)/.exec(fs.readFileSync(log, "utf8"));
  if (m) port = Number(m[1]);
}
if (!port) finish(1, `no "listening on" line in 15 s (log: ${log})`);

let lines = 0;
async function inUse() {
  const w = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK); // the probe holds it open for reading
  fs.writeSync(w, "x\n");
  fs.closeSync(w);
  for (let i = 0; i < 250; i++) {
    await sleep(20);
    const l = fs.existsSync(out) ? fs.readFileSync(out, "utf8").trim().split("\n") : [];
    if (l.length > lines) {
      lines = l.length;
      return Number(l[l.length - 1].split(" ")[0]);
    }
  }
  throw new Error("no answer from memprobe");
}
async function luaBytes() {
  if (LIMIT) return null;
  const r = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(5000) });
  const m = /lunaroom_lua_memory_bytes\s+(\d+)/.exec(await r.text());
  return m ? Number(m[1]) : null;
}
function open(i) {
  const room = MODE === "rooms" ? `bench-mr${i}` : "bench-mi";
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/parties/main/${room}?id=mem${i}`);
    const t = setTimeout(() => reject(new Error(`client ${i}: no first packet in 10 s`)), 10000);
    ws.once("message", () => { clearTimeout(t); resolve(); });
    ws.once("error", reject);
    socks.push(ws);
  });
}

try {
  await open(0);
  await sleep(1500);
  const a = await inUse(), la = await luaBytes();
  for (let i = 1; i < N; i += 50) {
    const batch = [];
    for (let j = i; j < Math.min(N, i + 50); j++) batch.push(open(j));
    await Promise.all(batch);
  }
  await sleep(2500);
  const b = await inUse(), lb = await luaBytes();
  const rss = Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${proc.pid}/status`, "utf8"))[1]);
  console.log(JSON.stringify({
    server: LIMIT ? "limit" : path.relative(ROOT, BIN), mode: MODE, clients: N,
    in_use_bytes_1: a, in_use_bytes_n: b, in_use_bytes_per_client: Math.round((b - a) / (N - 1)),
    lua_bytes_per_client: la === null || lb === null ? null : Math.round((lb - la) / (N - 1)),
    rss_kb: rss,
  }));
  finish(0);
} catch (e) {
  finish(1, `memory.mjs: ${e.message} (log: ${log})`);
}

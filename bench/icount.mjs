// icount.mjs - instruction counts of the server per action, per delivered
// packet and per join, under callgrind (not wall time: on a shared machine
// only instruction counts compare between runs).
//
//   node bench/icount.mjs [--bin build/lunaroom] [--clients 100] [--actions 200]
//                         [--room counter|bench|throttled] [--burst 50] [--joins-only] [--limit]
//                         [--lua-path DIR]
//
// Starts `valgrind --tool=callgrind BIN serve bench/rooms ...` on a free
// loopback port, then, in lockstep (deterministic: one action in flight, the
// next one sent once every client got the packet of the previous one):
//   1. joins: N clients connect one after the other (each waits for its
//      snapshot) -> dump "join"
//   2. actions: K actions (counter room: client 0 increments; bench room:
//      client i%N moves) -> dump "action"
//      throttled room (throttleSync 50, bench/rooms/throttled.lua): lockstep
//      per move would measure one 1-player patch to every client per move,
//      not the batching the fastgen row drives; so moves go in bursts of
//      --burst, each from another client, and the next burst is sent once
//      every client got the packet holding the burst's last move (its x is
//      a marker), after the 50 ms window closed. Ir per action is then per
//      move, with the window batching.
// callgrind_control --zero / --dump around each phase, so each dump holds
// that phase only. Prints Ir per join, per action and per delivered packet
// (program totals of the phase's dump, from callgrind_annotate), and leaves
// the dumps in --out DIR (default /tmp/icount) for callgrind_annotate.
// Needs `ws` (spec/integration/node_modules). Loopback only, every wait
// bounded (--timeout s per phase).
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(ROOT, "spec/integration/package.json"));
const WebSocket = require("ws");

const args = process.argv.slice(2);
function opt(name, def) {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
}
const BIN = path.resolve(ROOT, opt("--bin", "build/lunaroom"));
const N = Number(opt("--clients", "100"));
const K = Number(opt("--actions", "200"));
const KIND = opt("--room", "counter");
const BURST = Number(opt("--burst", "50"));
const OUT = opt("--out", "/tmp/icount");
const TIMEOUT = Number(opt("--timeout", "120")) * 1000;
const JOINS_ONLY = args.includes("--joins-only");
const LIMIT = args.includes("--limit");
// The Lua half to serve with. Without it the server runs from this checkout
// (cwd) and takes ./lua whatever binary it is: pass the binary's own lua/ when
// comparing builds.
const LUA_PATH = opt("--lua-path", null); // the bare server (build/bench/limit) instead
if (!(N >= 1 && N <= 2000) || !(K >= 0 && K <= 100000)) throw new Error("bad --clients/--actions");
if (!["counter", "bench", "throttled"].includes(KIND)) throw new Error("--room counter|bench|throttled");
if (!(BURST >= 1 && BURST <= N)) throw new Error("--burst between 1 and --clients");

function rxBuffer() {
  const m = /#define\s+NET_RX_BUFFER\s+(\d+)/.exec(fs.readFileSync(path.join(ROOT, "host", "net_int.h"), "utf8"));
  if (!m) throw new Error("NET_RX_BUFFER not found in host/net_int.h");
  return m[1];
}

fs.mkdirSync(OUT, { recursive: true });
for (const f of fs.readdirSync(OUT)) if (f.startsWith("cg.")) fs.unlinkSync(path.join(OUT, f));
const log = path.join(OUT, "server.log");
const fd = fs.openSync(log, "w");
const srv = spawn(
  "valgrind",
  [
    "--tool=callgrind",
    `--callgrind-out-file=${OUT}/cg.%p`,
    "--dump-instr=no",
    "--compress-strings=no", // each dump names its functions: callgrind_annotate reads one alone
    // the bare server with lunaroom's receive buffer per WebSocket, as compare.mjs runs it
    ...(LIMIT ? [path.join(ROOT, "build/bench/limit"), "--port", "0", "--host", "127.0.0.1", "--rx-buffer", rxBuffer()] : [BIN, "serve"]),
  ].concat(LIMIT ? [] : [
    "bench/rooms",
    "--port",
    "0",
    "--host",
    "127.0.0.1",
    "--storage",
    "memory",
    "--no-watch",
    "--max-conns",
    "-1",
    "--max-conns-per-ip",
    "-1",
    "--max-http-per-ip",
    "-1",
    "--msgs-per-ip",
    "-1",
    // as compare.mjs: a game room gives every client a new session
    "--room-create-rate",
    "0",
    "--session-rate",
    "0",
  ], LUA_PATH ? ["--lua-path", path.resolve(LUA_PATH)] : []),
  { cwd: ROOT, stdio: ["ignore", fd, fd] },
);
const killAll = () => {
  try {
    srv.kill("SIGKILL");
  } catch {}
};
process.on("exit", killAll);
const guard = setTimeout(() => {
  console.error("icount: overall timeout");
  process.exit(2);
}, 20 * TIMEOUT);
guard.unref();

async function waitFor(pred, what, ms = TIMEOUT) {
  const t0 = Date.now();
  while (!pred()) {
    if (Date.now() - t0 > ms) throw new Error(`timeout: ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function ctl(flag) {
  const r = spawnSync("callgrind_control", [flag, String(srv.pid)], { encoding: "utf8", timeout: 60000 });
  if (r.status !== 0) throw new Error(`callgrind_control ${flag}: ${r.stderr}`);
}

function total(file) {
  const r = spawnSync("callgrind_annotate", [file], { encoding: "utf8", maxBuffer: 64 << 20 });
  const m = /([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS/.exec(r.stdout);
  if (!m) throw new Error(`no total in ${file}`);
  return Number(m[1].replace(/,/g, ""));
}

// The dump written after `n` dumps so far (callgrind names them cg.PID.N).
function dumpFile(n) {
  return `${OUT}/cg.${srv.pid}.${n}`;
}

async function main() {
  let port;
  await waitFor(() => {
    const m = /listening on http:\/\/[^\s:/]+:(\d+)/.exec(fs.readFileSync(log, "utf8"));
    if (m) port = Number(m[1]);
    return port;
  }, "server listening", 60000);
  const room = `${KIND}-ic${process.pid}`;
  const clients = [];
  // warm-up: one connection opens and closes the room (code paths loaded)
  {
    const w = new WebSocket(`ws://127.0.0.1:${port}/parties/main/${KIND}-warm?id=warm`);
    let got = false;
    w.on("message", () => (got = true));
    await waitFor(() => got, "warm-up join");
    w.close();
    await new Promise((r) => setTimeout(r, 500));
  }
  ctl("--zero");
  for (let i = 0; i < N; i++) {
    const c = { n: 0, ws: new WebSocket(`ws://127.0.0.1:${port}/parties/main/${room}?id=c${i}`) };
    c.ws.on("message", (data) => {
      c.n++;
      if (c.marker && String(data).includes(c.marker)) c.seen = true;
    });
    clients.push(c);
    await waitFor(() => c.n > 0, `join ${i}`);
  }
  await new Promise((r) => setTimeout(r, 300));
  ctl("--dump");
  await waitFor(() => fs.existsSync(dumpFile(1)), "join dump");
  const joinIr = total(dumpFile(1));
  let actionIr = 0;
  let packets = 0;
  if (!JOINS_ONLY && K > 0) {
    ctl("--zero");
    const before = clients.map((c) => c.n);
    for (let k = 0; KIND === "throttled" && k < K; k += BURST) {
      const last = Math.min(K, k + BURST) - 1;
      const mx = ((k / BURST) % 1000) + 0.5; // no other move writes a .5
      const marker = `"x":${mx}`;
      for (const c of clients) {
        c.marker = marker;
        c.seen = false;
      }
      for (let j = k; j <= last; j++) {
        const x = j === last ? mx : (j % 997) + 1;
        clients[j % N].ws.send(JSON.stringify({ action: "move", value: { x, y: (j % 13) + 1 } }));
      }
      await waitFor(() => clients.every((c) => c.seen), `burst at move ${k}`);
      await new Promise((r) => setTimeout(r, 60)); // the window closes: each burst opens its own
    }
    for (let k = 0; KIND !== "throttled" && k < K; k++) {
      const base = clients.map((c) => c.n);
      const sender = KIND === "counter" ? clients[0] : clients[k % N];
      const msg =
        KIND === "counter"
          ? { action: "increment", value: {} }
          : { action: "move", value: { x: (k % 997) + 1, y: (k % 13) + 1 } };
      sender.ws.send(JSON.stringify(msg));
      await waitFor(() => clients.every((c, i) => c.n > base[i]), `action ${k}`);
    }
    await new Promise((r) => setTimeout(r, 300));
    ctl("--dump");
    await waitFor(() => fs.existsSync(dumpFile(2)), "action dump");
    actionIr = total(dumpFile(2));
    packets = clients.reduce((a, c, i) => a + c.n - before[i], 0);
  }
  for (const c of clients) c.ws.close();
  await new Promise((r) => setTimeout(r, 500));
  const res = {
    bin: BIN,
    room: KIND,
    ...(KIND === "throttled" ? { burst: BURST } : {}),
    clients: N,
    actions: K,
    join_ir: joinIr,
    ir_per_join: Math.round(joinIr / N),
    action_ir: actionIr,
    packets,
    ir_per_action: K ? Math.round(actionIr / K) : 0,
    ir_per_packet: packets ? Math.round(actionIr / packets) : 0,
    dumps: [dumpFile(1), dumpFile(2)],
  };
  console.log(JSON.stringify(res, null, 1));
  srv.kill("SIGTERM");
  await new Promise((r) => setTimeout(r, 300));
  process.exit(0);
}
main().catch((e) => {
  console.error("icount:", e.message);
  process.exit(1);
});

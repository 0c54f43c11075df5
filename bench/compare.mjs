#!/usr/bin/env node
/*
 * compare.mjs - run the same load-generator scenarios against lunaroom, the
 * bare libwebsockets server (bench/limit) and the reference @signe/room on
 * Node (bench/reference), print ONE markdown table with ratios and write
 * bench/results.json.
 *
 *   node bench/compare.mjs [options]          (make bench runs it)
 *
 * Every run starts a fresh server on a free loopback port (--port 0, the
 * port read from its "listening on http://HOST:PORT" line), runs one
 * loadgen invocation with --pid (RSS and CPU come from /proc) and stops the
 * server. Runs go scenario by scenario, each against the three targets in
 * turn, so if the time budget runs out every target has the same rows.
 *
 * Options:
 *   --targets a,b,c     subset of lunaroom,limit,reference (default all three)
 *   --quick             small sizes: ramp 100,500; 50/300 clients; 300 rooms
 *   --ramp LIST         ramp sizes (default 100,1000,5000)
 *   --small N           clients of the first game room (default 100)
 *   --large N           clients of the second game room and fan-out readers (default 1000)
 *   --rooms N           empty rooms for the memory figure (default 1000)
 *   --ramp-timeout S    per ramp (default 30)
 *   --join-timeout S    joining the game rooms (default 90: the reference needs ~40 s for 1,000)
 *   --budget S          whole run, servers included (default 540, + 600 for the fastgen rows)
 *   --out FILE          JSON output (default bench/results.json)
 *   --no-build          do not run make / npm ci
 *   --logs DIR          server logs (default build/bench/logs)
 *   --lunaroom-bin PATH another lunaroom binary (default build/lunaroom)
 *   --lua-path DIR      passed to it as --lua-path (its Lua half)
 *   --lunaroom-rev REV  recorded in results.json for such a binary (what it was built from)
 *   --no-fast           skip the fastgen rows
 *   --fast-only         only the fastgen rows
 *
 * The fastgen rows (bench/fastgen: one thread, epoll, its own RFC 6455
 * client) measure lunaroom and the bare server (not the reference) where
 * the libwebsockets loadgen is the limit: counter fan-out (one client
 * increments, everyone gets every count) with --small and --large clients,
 * moves with --small and --large clients, moves in the game room with
 * throttleSync 50 (bench/rooms/throttled.lua; the bare server batches the
 * same way on "/throttled-" paths) with --large clients, the --large join
 * ramp, and RSS per idle connection (--large in one room) and per room
 * (--rooms rooms). The server is pinned to CPU 0 (taskset), fastgen to CPU
 * 1. A figure is marked † when fastgen was at >= 95% CPU; when only the
 * bare server's is, its figure is a lower bound and the ratio is shown as
 * "≤".
 *
 * The bare server always runs with lunaroom's receive buffer per WebSocket
 * (--rx-buffer NET_RX_BUFFER, read from host/net_int.h), so the memory rows
 * compare the same lws buffers.
 */
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "..");
const BUILD = path.join(ROOT, process.env.BUILD || "build");
const LOADGEN = path.join(BUILD, "bench", "loadgen");
const FASTGEN = path.join(BUILD, "bench", "fastgen");
const TASKSET = ["/usr/bin/taskset", "/bin/taskset"].find((p) => fs.existsSync(p)) || null;
const t0 = Date.now();
const loadAtStart = (() => {
  try {
    return fs.readFileSync("/proc/loadavg", "utf8").trim();
  } catch {
    return null;
  }
})();

/* ---- options ---- */
const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
};
const flag = (name) => argv.includes(name);
const quick = flag("--quick");
const list = (s) => String(s).split(",").map((x) => x.trim()).filter(Boolean);
const O = {
  targets: list(opt("--targets", "lunaroom,limit,reference")),
  ramp: list(opt("--ramp", quick ? "100,500" : "100,1000,5000")).map(Number),
  small: Number(opt("--small", quick ? 50 : 100)),
  large: Number(opt("--large", quick ? 300 : 1000)),
  rooms: Number(opt("--rooms", quick ? 300 : 1000)),
  rampTimeout: Number(opt("--ramp-timeout", 30)),
  joinTimeout: Number(opt("--join-timeout", quick ? 30 : 90)),
  // the fastgen rows take about 8 minutes more (6 with --quick)
  budget: Number(opt("--budget", (flag("--fast-only") ? 0 : quick ? 240 : 540) + (flag("--no-fast") ? 0 : quick ? 360 : 600))),
  out: path.resolve(opt("--out", path.join(HERE, "results.json"))),
  build: !flag("--no-build"),
  logs: path.resolve(opt("--logs", path.join(BUILD, "bench", "logs"))),
  lunaroomBin: path.resolve(opt("--lunaroom-bin", path.join(BUILD, "lunaroom"))),
  luaPath: opt("--lua-path", null),
  fast: !flag("--no-fast"),
  fastOnly: flag("--fast-only"),
};
for (const t of O.targets)
  if (!["lunaroom", "limit", "reference"].includes(t)) throw new Error(`unknown target ${t}`);

const log = (...a) => process.stderr.write(`[compare ${((Date.now() - t0) / 1000).toFixed(0)}s] ${a.join(" ")}\n`);
const left = () => O.budget - (Date.now() - t0) / 1000;

/* ---- build ---- */
function run(cmd, args, opts = {}) {
  log("$", cmd, args.join(" "));
  const r = spawnSync(cmd, args, { stdio: ["ignore", "inherit", "inherit"], cwd: ROOT, ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status})`);
}
if (O.build) {
  if (O.targets.includes("lunaroom") && !argv.includes("--lunaroom-bin")) run("make", ["build"]);
  run("make", ["-s", "-C", "bench/loadgen"]);
  if (O.fast && argv.includes("--lunaroom-bin")) run("make", ["build"]); // fastgen is a CMake target
  if (O.targets.includes("limit")) run("make", ["-s", "-C", "bench/limit"]);
  if (O.targets.includes("reference"))
    run("npm", ["ci", "--no-audit", "--no-fund", "--loglevel=error"], { cwd: path.join(HERE, "reference") });
}
fs.mkdirSync(O.logs, { recursive: true });

/* ---- targets ---- */
// lunaroom's lws receive buffer per WebSocket: the bare server gets the same
const RX_BUFFER = (() => {
  const m = /#define\s+NET_RX_BUFFER\s+(\d+)/.exec(fs.readFileSync(path.join(ROOT, "host", "net_int.h"), "utf8"));
  if (!m) throw new Error("NET_RX_BUFFER not found in host/net_int.h");
  return Number(m[1]);
})();
const TARGETS = {
  lunaroom: {
    cmd: O.lunaroomBin,
    args: ["serve", "bench/rooms", "--port", "0", "--host", "127.0.0.1", "--storage", "memory", "--no-watch",
      "--max-conns", "-1", "--max-conns-per-ip", "-1", "--room-create-rate", "0", "--session-rate", "0",
      "--max-http-per-ip", "-1", "--msgs-per-ip", "-1", ...(O.luaPath ? ["--lua-path", O.luaPath] : [])],
  },
  limit: { cmd: path.join(BUILD, "bench", "limit"), args: ["--port", "0", "--host", "127.0.0.1", "--rx-buffer", String(RX_BUFFER)] },
  reference: { cmd: process.execPath, args: [path.join(HERE, "reference", "server.mjs"), "--port", "0", "--host", "127.0.0.1"] },
};

function startServer(name, tag, pin = false) {
  const t0 = TARGETS[name];
  // fastgen rows: the server on CPU 0 (taskset execs it: same pid)
  const t = pin && TASKSET ? { cmd: TASKSET, args: ["-c", "0", t0.cmd, ...t0.args] } : t0;
  const logFile = path.join(O.logs, `${name}-${tag}.log`);
  const fd = fs.openSync(logFile, "w");
  // stdout and stderr go straight to the log file: a pipe read by this
  // process would cost a wake-up of node per log line, CPU taken from the
  // server being measured (lunaroom logs every connection, the bare server
  // nothing). The "listening on" line is found by reading the file.
  const proc = spawn(t.cmd, t.args, { cwd: ROOT, stdio: ["ignore", fd, fd] });
  return new Promise((resolve, reject) => {
    let poll = null;
    const timer = setTimeout(() => {
      clearInterval(poll);
      proc.kill("SIGKILL");
      reject(new Error(`${name}: no "listening on" line in 15 s (log: ${logFile})`));
    }, 15000);
    proc.on("exit", (code) => {
      clearTimeout(timer);
      clearInterval(poll);
      reject(new Error(`${name} exited with ${code} before listening (log: ${logFile})`));
    });
    poll = setInterval(() => {
      const m = /listening on http:\/\/(\[[^\]]+\]|[^\s:/]+):(\d+)/.exec(fs.readFileSync(logFile, "utf8"));
      if (!m) return;
      clearInterval(poll);
      clearTimeout(timer);
      proc.removeAllListeners("exit");
      resolve({
        proc,
        port: Number(m[2]),
        stop: () =>
          new Promise((res) => {
            const done = () => {
              try {
                fs.closeSync(fd);
              } catch {}
              res();
            };
            if (proc.exitCode !== null || proc.signalCode) return done();
            const k = setTimeout(() => proc.kill("SIGKILL"), 3000);
            proc.on("exit", () => {
              clearTimeout(k);
              done();
            });
            proc.kill("SIGTERM");
          }),
      });
    }, 20);
  });
}

function loadgen(args, maxTime, bin = LOADGEN) {
  return new Promise((resolve) => {
    const jf = path.join(os.tmpdir(), `lunaroom-bench-${process.pid}-${Math.random().toString(36).slice(2)}.json`);
    const full = [...args, "--json", jf, "--quiet", "--max-time", String(Math.max(5, Math.floor(maxTime)))];
    const p = spawn(bin, full, { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.on("exit", (code) => {
      let json = null;
      try {
        json = JSON.parse(fs.readFileSync(jf, "utf8"));
        fs.unlinkSync(jf);
      } catch {}
      resolve({ code, out, json });
    });
  });
}

/* ---- the runs ---- */
const sweepSmall = "50:2:25600"; // total moves/s, N = small
const sweepLarge = "5:2:2560"; //  total moves/s, N = large
const cpuRate = 2; // moves/s per client in the CPU step: 200 moves/s with 100 clients
const RUNS = [];
for (const n of O.ramp)
  RUNS.push({
    tag: `ramp-${n}`,
    args: ["--scenario", "ramp", "--clients", n, "--timeout", O.rampTimeout],
    est: O.rampTimeout + 3,
    skipIf: (name, res) => {
      // a bigger ramp is pointless when a smaller one did not finish
      const prev = O.ramp.filter((m) => m < n).map((m) => res[name][`ramp-${m}`]);
      return prev.some((r) => r && r.json && r.json.ramp.joined < r.json.clients) ? "a smaller ramp did not finish" : null;
    },
  });
RUNS.push({
  tag: `game-${O.small}`,
  args: ["--scenario", "idle,move,cpu", "--clients", O.small, "--sweep", sweepSmall, "--rate", cpuRate,
    "--timeout", O.joinTimeout],
  est: 60,
});
RUNS.push({
  tag: `game-${O.large}`,
  args: ["--scenario", "idle,move,fanout", "--clients", O.large, "--sweep", sweepLarge, "--fanout-sweep", sweepLarge,
    "--timeout", O.joinTimeout],
  est: 130, // the low steps measure until 100 samples (20 s at 5 moves/s)
});
RUNS.push({ tag: `rooms-${O.rooms}`, args: ["--scenario", "rooms", "--clients", O.rooms, "--timeout", 60], est: 20 });
if (O.fastOnly) RUNS.length = 0;
/* fastgen rows: lunaroom and the bare server only, pinned (server CPU 0, fastgen CPU 1) */
const FAST = [
  // memory first: short, and no figure of theirs depends on the machine's load
  { tag: `fg-idle-${O.large}`, args: ["--scenario", "idle", "--clients", O.large, "--room", "bench-fi"] },
  { tag: `fg-rooms-${O.rooms}`, args: ["--scenario", "rooms", "--clients", O.rooms, "--room", "bench-fr"] },
  { tag: `fg-ramp-${O.large}`, args: ["--scenario", "ramp", "--clients", O.large, "--room", "counter-r"] },
  { tag: `fg-counter-${O.small}`, args: ["--scenario", "fanout", "--action", "increment", "--clients", O.small,
    "--room", "counter-s", "--sweep", "1000:1.5:200000"] },
  { tag: `fg-counter-${O.large}`, args: ["--scenario", "fanout", "--action", "increment", "--clients", O.large,
    "--room", "counter-l", "--sweep", "100:1.5:40000"] },
  { tag: `fg-move-${O.small}`, args: ["--scenario", "move", "--clients", O.small, "--room", "bench-fs",
    "--sweep", "500:1.5:200000"] },
  { tag: `fg-move-${O.large}`, args: ["--scenario", "move", "--clients", O.large, "--room", "bench-fl",
    "--sweep", "100:1.5:40000"] },
  // batched: the servers' cost per move is small, so the sweep goes further
  { tag: `fg-throttled-${O.large}`, args: ["--scenario", "move", "--clients", O.large, "--room", "throttled-fl",
    "--sweep", "500:1.5:200000"] },
];
if (O.fast)
  for (const f of FAST)
    RUNS.push({ ...f, fast: true, only: ["lunaroom", "limit"], args: [...f.args, "--cpu", "1", "--warmup", "0.5",
      "--duration", "2", "--drain", "2", "--timeout", O.joinTimeout,
      // sweeps step by 1.5: two bisection steps after the first miss bring a
      // server's figure within a factor 1.11 of the rate it holds (fastgen --refine)
      ...(f.args.includes("--sweep") ? ["--refine", "2"] : [])], est: 50 });

const results = Object.fromEntries(O.targets.map((t) => [t, {}]));
for (const r of RUNS) {
  for (const name of O.targets) {
    if (r.only && !r.only.includes(name)) continue;
    const skip = r.skipIf && r.skipIf(name, results);
    if (skip || left() < 10) {
      results[name][r.tag] = { skipped: skip || "time budget used up" };
      log(name, r.tag, "skipped:", results[name][r.tag].skipped);
      continue;
    }
    let srv;
    try {
      srv = await startServer(name, r.tag, !!r.fast);
    } catch (e) {
      results[name][r.tag] = { error: String(e.message || e) };
      log(name, r.tag, "error:", e.message);
      continue;
    }
    log(name, r.tag, `port ${srv.port} pid ${srv.proc.pid}`);
    const res = await loadgen(
      ["--url", `ws://127.0.0.1:${srv.port}`, "--pid", srv.proc.pid, "--label", name, ...r.args].map(String),
      Math.min(left() - 5, 300),
      r.fast ? FASTGEN : LOADGEN,
    );
    await srv.stop();
    process.stderr.write(res.out);
    results[name][r.tag] = { exit: res.code, json: res.json };
  }
}

/* ---- the table ---- */
const J = (t, tag) => results[t]?.[tag]?.json;
const phase = (t, tag, ph) => J(t, tag)?.[ph];
const stepAt = (t, tag, ph, rate) => phase(t, tag, ph)?.steps?.find((s) => Math.abs(s.offered - rate) < 1e-6);
const bestOk = (t, tag, ph) => {
  const s = phase(t, tag, ph)?.steps?.filter((x) => x.ok) ?? [];
  return s.length ? s[s.length - 1] : null;
};
const lgBound = (s) => s && s.loadgen_cpu_pct != null && s.loadgen_cpu_pct >= 95;

const rows = [];
function row(metric, unit, better, get, note = "") {
  const v = {};
  const shown = {};
  let bound = null;
  for (const t of ["lunaroom", "limit", "reference"]) {
    if (!O.targets.includes(t)) continue;
    const r = get(t);
    if (r && typeof r === "object") {
      v[t] = r.value;
      shown[t] = r.text;
      if (r.bound) (bound ??= {})[t] = true;
    } else {
      v[t] = r;
      shown[t] = r == null ? "-" : fmt(r);
    }
  }
  const ratio = (a, b) => (v[a] != null && v[b] != null && v[b] !== 0 ? v[a] / v[b] : null);
  rows.push({ metric, unit, better, values: v, shown, vs_limit: ratio("lunaroom", "limit"),
    vs_reference: ratio("lunaroom", "reference"), note, generator_bound: bound });
}
function fmt(x) {
  if (x == null) return "-";
  const a = Math.abs(x);
  if (a >= 1e6) return (x / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return Math.round(x).toLocaleString("en-US");
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

for (const n of O.ramp) {
  row(`ramp ${n} connections: all first packets`, "s", "lower", (t) => {
    const j = J(t, `ramp-${n}`);
    if (!j) return null;
    if (j.ramp.joined < j.clients) return { value: null, text: `>${O.rampTimeout} (${j.ramp.joined}/${j.clients})` };
    return j.ramp.join_s;
  });
}
for (const [n, tag] of [[O.small, `game-${O.small}`], [O.large, `game-${O.large}`]]) {
  row(`move, ${n} clients: saturated actions/s`, "actions/s", "higher", (t) => {
    const ph = phase(t, tag, "move");
    if (!ph) return null;
    const s = ph.saturation;
    if (!s) return { value: null, text: `<${ph.steps?.[0]?.offered ?? "?"}` };
    return { value: s.actions_per_s, text: fmt(s.actions_per_s) + (lgBound(s) ? "†" : "") };
  });
  row(`move, ${n} clients: delivered packets/s at saturation`, "packets/s", "higher", (t) => {
    const s = phase(t, tag, "move")?.saturation;
    return s ? { value: s.delivered_per_s, text: fmt(s.delivered_per_s) + (lgBound(s) ? "†" : "") } : null;
  });
  // p99 at the highest load the reference sustained (same offered rate for everyone)
  const ref = O.targets.includes("reference") ? bestOk("reference", tag, "move") : null;
  const level = ref ? ref.offered : phase("lunaroom", tag, "move")?.steps?.[0]?.offered;
  if (level != null)
    row(`move, ${n} clients: p99 send→own patch at ${fmt(level)} moves/s`, "ms", "lower", (t) => stepAt(t, tag, "move", level)?.p99_ms ?? null,
      ref ? "the reference's highest sustained step" : "first step");
}
{
  const tag = `game-${O.large}`;
  row(`fan-out 1→${O.large}: saturated delivered packets/s`, "packets/s", "higher", (t) => {
    const ph = phase(t, tag, "fanout");
    if (!ph) return null;
    const s = ph.saturation;
    if (!s) return { value: null, text: `<${fmt((ph.steps?.[0]?.offered ?? 0) * O.large)}` };
    return { value: s.delivered_per_s, text: fmt(s.delivered_per_s) + (lgBound(s) ? "†" : "") };
  });
  const ref = O.targets.includes("reference") ? bestOk("reference", tag, "fanout") : null;
  const level = ref ? ref.offered : phase("lunaroom", tag, "fanout")?.steps?.[0]?.offered;
  if (level != null)
    row(`fan-out 1→${O.large}: p99 write→reader at ${fmt(level)} moves/s`, "ms", "lower", (t) => stepAt(t, tag, "fanout", level)?.p99_ms ?? null,
      ref ? "the reference's highest sustained step" : "first step");
}
if (O.fast) {
  // † = fastgen at >= 95% CPU; a lunaroom figure with † does not count, a
  // bare-server one is a lower bound (ratio shown as "≤")
  const fastRow = (metric, unit, tag, ph, pick) =>
    row(metric, unit, "higher", (t) => {
      const j = J(t, tag);
      if (!j) return null;
      if (ph === "ramp") {
        if (j.ramp.joined < j.clients) return { value: null, text: `(${j.ramp.joined}/${j.clients} joined)` };
        return { value: j.ramp.joins_per_s, text: fmt(j.ramp.joins_per_s) };
      }
      const p = j[ph];
      if (!p) return null;
      const s = p.saturation;
      if (!s) return { value: null, text: `<${fmt(p.steps?.[0]?.offered ?? 0)}` };
      const b = lgBound(s);
      return { value: pick(s), text: fmt(pick(s)) + (b ? "†" : ""), bound: b,
        extra: `srv ${fmt(s.server_cpu_pct)}% gen ${fmt(s.loadgen_cpu_pct)}%` };
    }, "fastgen");
  fastRow(`fastgen: ${O.large} sockets joining a counter room`, "joins/s", `fg-ramp-${O.large}`, "ramp");
  for (const n of [O.small, O.large]) {
    fastRow(`fastgen: counter fan-out, ${n} clients, every increment to all`, "increments/s", `fg-counter-${n}`, "fanout",
      (s) => s.actions_per_s);
    fastRow(`fastgen: counter fan-out, ${n} clients: deliveries at saturation`, "packets/s", `fg-counter-${n}`, "fanout",
      (s) => s.delivered_per_s);
  }
  for (const n of [O.small, O.large])
    fastRow(`fastgen: moves, ${n} clients`, "actions/s", `fg-move-${n}`, "move", (s) => s.actions_per_s);
  fastRow(`fastgen: game room with throttleSync 50, ${O.large} clients moving`, "actions/s", `fg-throttled-${O.large}`, "move",
    (s) => s.actions_per_s);
  fastRow(`fastgen: game room with throttleSync 50, ${O.large} clients: deliveries at saturation`, "MB/s",
    `fg-throttled-${O.large}`, "move", (s) => s.mb_per_s);
  // memory: no generator limit to mark (nothing is timed)
  row(`fastgen: server RSS per idle connection (${O.large} in one room)`, "kB", "lower",
    (t) => J(t, `fg-idle-${O.large}`)?.idle?.kb_per_connection ?? null, "fastgen");
  row(`fastgen: server RSS per room (${O.rooms} rooms, one connection each)`, "kB", "lower",
    (t) => J(t, `fg-rooms-${O.rooms}`)?.rooms?.kb_per_room ?? null, "fastgen");
}
row(`server RSS per idle connection (${O.large} in one room)`, "kB", "lower", (t) => phase(t, `game-${O.large}`, "idle")?.kb_per_connection ?? null);
row(`server RSS per room (${O.rooms} rooms, one connection each)`, "kB", "lower", (t) => phase(t, `rooms-${O.rooms}`, "rooms")?.kb_per_room ?? null);
row(`server CPU per 100k actions (${O.small} clients, ${cpuRate * O.small} moves/s)`, "CPU s", "lower",
  (t) => phase(t, `game-${O.small}`, "cpu")?.steps?.[0]?.cpu_s_per_100k_actions ?? null);

const cols = O.targets;
const rfmt = (x) => (x == null ? "-" : x >= 100 ? x.toFixed(0) + "×" : x >= 10 ? x.toFixed(1) + "×" : x.toFixed(2) + "×");
let md = `| metric | better | ${cols.join(" | ")} |${cols.includes("limit") ? " lunaroom ÷ limit |" : ""}${cols.includes("reference") ? " lunaroom ÷ reference |" : ""}\n`;
md += `|---|---|${cols.map(() => "---:").join("|")}|${cols.includes("limit") ? "---:|" : ""}${cols.includes("reference") ? "---:|" : ""}\n`;
for (const r of rows) {
  if (O.fastOnly && Object.values(r.shown).every((x) => x === "-")) continue; // rows of runs not made
  md += `| ${r.metric} (${r.unit}) | ${r.better} | ${cols.map((c) => r.shown[c] ?? "-").join(" | ")} |`;
  if (cols.includes("limit")) {
    const b = r.generator_bound || {};
    // lunaroom †: the ratio does not count; only the bare server †: its figure is a lower bound
    md += ` ${r.vs_limit == null ? "-" : b.lunaroom ? "(" + rfmt(r.vs_limit) + "†)" : (b.limit ? "≤" : "") + rfmt(r.vs_limit)} |`;
  }
  if (cols.includes("reference")) md += ` ${rfmt(r.vs_reference)} |`;
  md += "\n";
}
const cpuModel = (() => {
  try {
    return /model name\s*:\s*(.*)/.exec(fs.readFileSync("/proc/cpuinfo", "utf8"))[1];
  } catch {
    return "?";
  }
})();
const elapsed = (Date.now() - t0) / 1000;
md += `\n${os.cpus().length} CPUs (${cpuModel}), node ${process.version}, load average at start ${loadAtStart}, ${elapsed.toFixed(0)} s. ` +
  `Ratios are lunaroom's value divided by the other's (for "lower" rows < 1× is better). ` +
  `† = the load generator was at ≥95% CPU: the figure is the load generator's limit, not the server's. ` +
  `Saturation = the last sweep step with p99 ≤ 100 ms, ≥ 90% of the offered rate processed and a drained backlog.` +
  (O.fast ? ` fastgen rows: server pinned to CPU 0 and bench/fastgen to CPU 1 (${TASKSET ? "taskset" : "no taskset found: server not pinned"}); ` +
    `a lunaroom figure marked † does not count, "≤" = only the bare server's figure is the generator's limit (a lower bound); ` +
    `their sweeps (×1.5 per step) are refined by two bisection steps after the first miss (fastgen --refine 2), and the best is the highest rate that held. ` +
    `throttleSync 50 rows: lunaroom runs bench/rooms/throttled.lua; the bare server's equivalent on its "/throttled-" paths keeps each ` +
    `player's latest move (a joiner's first position too) and sends one packet with every pending player, shared by all members, ` +
    `at once when no 50 ms window is open and else when the window ends (leading edge + trailing window, as host/sync.c); ` +
    `the move sweep counts a move delivered when a packet shows it or a later one of the same player.` : "") +
  ` The bare server runs with lunaroom's receive buffer per WebSocket (--rx-buffer ${RX_BUFFER}, NET_RX_BUFFER in host/net_int.h), ` +
  `so the RSS rows compare the same lws buffers.\n`;

const git = (...a) => {
  const r = spawnSync("git", a, { cwd: ROOT, encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : null;
};
const out = {
  command: `node bench/compare.mjs ${argv.join(" ")}`.trim(),
  lunaroom: argv.includes("--lunaroom-bin")
    ? { binary: O.lunaroomBin, revision: opt("--lunaroom-rev", "unknown (external binary: pass --lunaroom-rev)") }
    : {
        binary: path.relative(ROOT, O.lunaroomBin),
        git_head: git("rev-parse", "HEAD"),
        tree_dirty: !!git("status", "--porcelain", "--", "host", "lua", "CMakeLists.txt"),
      },
  load_average_at_start: loadAtStart,
  started: new Date(t0).toISOString(),
  elapsed_s: elapsed,
  machine: { cpus: os.cpus().length, cpu: cpuModel, kernel: os.release(), node: process.version },
  options: { ...O, out: path.relative(ROOT, O.out), logs: path.relative(ROOT, O.logs) },
  table: rows,
  markdown: md,
  runs: results,
};
fs.writeFileSync(O.out, JSON.stringify(out, null, 2) + "\n");
process.stdout.write("\n" + md);
log(`wrote ${path.relative(ROOT, O.out)}`);

/*
 * reload_bench.mjs - save -> live latency of hot reload with clients
 * connected: starts build/lunaroom on a temporary rooms folder, connects
 * CLIENTS WebSockets to one room, then saves the room file N times, cycling
 * through three save styles (write in place; write a temporary file and
 * rename it over; several writes on one descriptor, then close), and prints
 * p50/p99/max per style and overall.
 *
 * Owns: the measurement only (no assertion on time; a missed or doubled
 * reload is reported and makes the exit status non-zero).
 * Must not: touch the repository's rooms/ folder.
 *
 * What is measured: from the moment the save is complete (the close(2) of
 * an in-place write returned, or the rename(2) returned) to the arrival, on
 * the LAST of the connected clients, of the first packet produced by the
 * new code: version n's onReload broadcasts {"type":"ver","value":n}. It
 * includes the watcher, the load, the swap, the flush and one loopback hop
 * (and node's own event-loop delay). "first" is the same to the first
 * client. Saves are spaced by GAP ms (default 60) so that each one is its
 * own reload.
 *
 * Usage (from the repository root, after `make build` and `npm ci` in
 * spec/integration, whose ws package it uses):
 *   node bench/reload_bench.mjs [N=60] [CLIENTS=3]
 *   LUNAROOM_BIN=path/to/lunaroom GAP=60 node bench/reload_bench.mjs
 */
import fs from "node:fs";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { sleep, startServer, tempDir, wsClient } from "../spec/integration/lib.mjs";

const N = Number(process.argv[2] || 60);
const CLIENTS = Number(process.argv[3] || 3);
const GAP = Number(process.env.GAP || 60);

function source(n) {
  return `local lr = require "lunaroom"
return lr.room {
  path = "bench",
  state = { count = lr.sync(0) },
  actions = { inc = function(room) room.count = room.count + ${n} end },
  onReload = function(room) room:broadcast({ type = "ver", value = ${n} }) end,
}
`;
}

const styles = {
  inplace(file, text) {
    fs.writeFileSync(file, text);
  },
  rename(file, text) {
    const tmp = path.join(path.dirname(file), `.${path.basename(file)}.swp-${process.pid}`);
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
  },
  chunks(file, text) {
    const fd = fs.openSync(file, "w");
    const third = Math.ceil(text.length / 3);
    for (let i = 0; i < text.length; i += third) fs.writeSync(fd, text.slice(i, i + third));
    fs.closeSync(fd);
  },
};

function q(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))];
}
function line(what, xs) {
  const s = [...xs].sort((a, b) => a - b);
  return `${what.padEnd(8)} n=${String(s.length).padStart(3)}  p50 ${q(s, 0.5).toFixed(2)} ms  p99 ${q(s, 0.99).toFixed(2)} ms  max ${s.at(-1).toFixed(2)} ms`;
}

const dir = tempDir("lunaroom-reload-bench-");
const file = path.join(dir, "bench.lua");
fs.writeFileSync(file, source(0));
const srv = await startServer({ rooms: dir });
const clients = [];
for (let i = 0; i < CLIENTS; i++) {
  const c = wsClient(`${srv.wsUrl}/parties/main/bench?id=bench-${i}`);
  await c.opened;
  await c.next((m) => m && m.type === "sync");
  clients.push(c);
}

const lastAll = { all: [] }, firstAll = { all: [] };
const names = Object.keys(styles);
let failed = 0;
for (let n = 1; n <= N; n++) {
  const style = names[(n - 1) % names.length];
  const arrivals = clients.map(
    (c) =>
      new Promise((res) => {
        const on = (data) => {
          const s = data.toString();
          if (s.includes('"type":"ver"') && JSON.parse(s).value === n) {
            c.ws.off("message", on);
            res(performance.now());
          }
        };
        c.ws.on("message", on);
      }),
  );
  styles[style](file, source(n));
  const t0 = performance.now();
  const timeout = sleep(2000).then(() => null);
  const got = await Promise.race([Promise.all(arrivals), timeout]);
  if (!got) {
    console.error(`save ${n} (${style}): not live on every client after 2 s`);
    failed++;
  } else {
    const last = Math.max(...got) - t0, first = Math.min(...got) - t0;
    (lastAll[style] ||= []).push(last);
    (firstAll[style] ||= []).push(first);
    lastAll.all.push(last);
    firstAll.all.push(first);
  }
  await sleep(GAP);
}

const reloads = (srv.logs().match(/reloaded .*bench\.lua/g) || []).length;
await srv.stop();
fs.rmSync(dir, { recursive: true, force: true });

console.log(`save -> live on all ${CLIENTS} clients (${N} saves, ${GAP} ms apart, ${process.env.LUNAROOM_BIN || "build/lunaroom"}):`);
for (const k of [...names, "all"]) if (lastAll[k]) console.log("  " + line(k, lastAll[k]));
console.log(`save -> live on the first client:`);
console.log("  " + line("all", firstAll.all));
console.log(`reloads logged: ${reloads} for ${N} saves`);
if (reloads !== N) {
  console.error(`expected exactly ${N} reloads`);
  failed++;
}
process.exit(failed ? 1 : 0);

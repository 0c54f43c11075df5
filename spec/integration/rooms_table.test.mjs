/*
 * rooms_table.test.mjs - the room table under attack, seen from the wire
 * (issue 15, item 4): GETs to routes a room does not have create nothing,
 * upgrades from one address cannot fill the table, idle rooms go away, and
 * /metrics does not grow with the rooms.
 *
 * Owns: the bounded attack (5,000 GETs, 60 upgrades, loopback only) against
 * the real binary.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fs from "node:fs";
import nodeHttp from "node:http";
import path from "node:path";
import { ROOT, http, sleep, startServer, wsClient, tempDir } from "./lib.mjs";

function rooms() {
  const dir = tempDir("lunaroom-rooms-table-");
  for (const f of ["counter.lua", "chat.lua"]) fs.copyFileSync(path.join(ROOT, "rooms", f), path.join(dir, f));
  fs.copyFileSync(path.join(ROOT, "spec/integration/rooms/unlimited.lua"), path.join(dir, "unlimited.lua"));
  return dir;
}

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m[1]);
}

function metric(body, line) {
  const i = body.indexOf(`\n${line} `);
  return i < 0 ? undefined : Number(body.slice(i + line.length + 2).split("\n")[0]);
}

/** n GETs over a few keep-alive sockets; resolves with a count per status. */
async function getMany(base, n, pathOf, sockets = 16) {
  const agent = new nodeHttp.Agent({ keepAlive: true, maxSockets: sockets });
  const statuses = {};
  let next = 0;
  const one = () =>
    new Promise((resolve, reject) => {
      const req = nodeHttp.get(`${base}${pathOf(next++)}`, { agent }, (res) => {
        res.resume();
        res.on("end", () => {
          statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1;
          resolve();
        });
      });
      req.on("error", reject);
    });
  const worker = async () => {
    while (next < n) await one();
  };
  await Promise.all(Array.from({ length: sockets }, worker));
  agent.destroy();
  return statuses;
}

describe("room table", () => {
  test("5,000 GETs to a route chat-N does not have: 404, no room, bounded RSS, demo answers", async () => {
    const srv = await startServer({ rooms: rooms() });
    assert.equal((await http("GET", `${srv.url}/parties/main/demo/count`)).status, 200);
    const before = await http("GET", `${srv.url}/metrics`);
    const rss0 = rssKiB(srv.proc.pid);
    const t0 = Date.now();
    const statuses = await getMany(srv.url, 5000, (i) => `/parties/main/chat-${i}/x`);
    const secs = (Date.now() - t0) / 1000;
    assert.deepEqual(statuses, { 404: 5000 });
    const after = await http("GET", `${srv.url}/metrics`);
    assert.equal(metric(after.body, 'lunaroom_rooms{state="memory"}'), 1); // demo only
    assert.equal(after.body.split("\n").length, before.body.split("\n").length);
    const grown = rssKiB(srv.proc.pid) - rss0;
    assert.ok(grown < 16 * 1024, `RSS grew by ${grown} KiB`);
    assert.deepEqual((await http("GET", `${srv.url}/parties/main/demo/count`)).json, { count: 0 });
    assert.doesNotMatch(srv.logs(), /room main\/chat-\d+ created/);
    console.log(`# 5000 GETs in ${secs.toFixed(2)} s, RSS +${grown} KiB`);
    assert.equal(await srv.stop(), 0);
  });

  test("upgrades from one address cannot fill the table; idle rooms are evicted", async () => {
    const srv = await startServer({ rooms: rooms(), args: ["--evict-after", "1000"] });
    const cs = [];
    for (let i = 0; i < 60; i++) cs.push(wsClient(`${srv.wsUrl}/parties/main/unlimited-${i}`));
    const results = await Promise.allSettled(cs.map((c) => c.opened));
    const accepted = results.filter((r) => r.status === "fulfilled").length;
    const refused = results.filter((r) => r.status === "rejected" && r.reason.status === 429).length;
    assert.equal(accepted + refused, 60);
    assert.ok(accepted >= 20 && accepted <= 26, `accepted ${accepted}`); // burst 20 + 2/s
    assert.match(srv.logs(), /127\.0\.0\.1 creates rooms faster than 2\/s \(burst 20\)/);
    // joining a room that exists is not a creation
    const again = wsClient(`${srv.wsUrl}/parties/main/unlimited-0`);
    await again.opened;
    await Promise.all([...cs.filter((_, i) => results[i].status === "fulfilled"), again].map((c) => c.close()));
    let live;
    for (let i = 0; i < 60; i++) {
      live = metric((await http("GET", `${srv.url}/metrics`)).body, 'lunaroom_rooms{state="memory"}');
      if (live === 0) break;
      await sleep(100);
    }
    assert.equal(live, 0, "every idle room was evicted");
    assert.match(srv.logs(), /room main\/unlimited-0 evicted after \d+ ms idle/);
    // the bucket refilled meanwhile: demo can be created and answers
    assert.equal((await http("GET", `${srv.url}/parties/main/demo/count`)).status, 200);
    assert.equal(await srv.stop(), 0);
  });
});

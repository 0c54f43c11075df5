/*
 * oneloop.test.mjs - outgoing client connections ride the server's own event
 * loop (issue 21, "one event loop"): a shard process with an open uplink and
 * nothing moving sleeps in its loop instead of polling the uplink's socket
 * from a 1-8 ms timer, and a frame from the main server wakes it at once.
 *
 * Owns: these checks with real main and shard processes on loopback.
 * Must not: depend on the machine's speed beyond generous bounds (a polling
 * loop wakes ~125-1000 times a second; the bound is 40).
 */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import fs from "node:fs";
import path from "node:path";
import { ROOT, http, sleep, startServer, tempDir, wsClient } from "./lib.mjs";

const SHARD_SECRET = "oneloop-test-shard-secret";

/* Voluntary context switches of pid so far (each sleep of its loop that
 * ended counts one). */
const wakeups = (pid) =>
  Number(/voluntary_ctxt_switches:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))[1]);

describe("one event loop", () => {
  let main, shard;
  after(async () => {
    if (shard) assert.equal(await shard.stop(), 0, shard.logs());
    if (main) assert.equal(await main.stop(), 0, main.logs());
  });

  test("an idle shard with an open uplink does not poll; frames still flow both ways", async () => {
    const rooms = tempDir("lunaroom-oneloop-");
    fs.copyFileSync(path.join(ROOT, "rooms", "counter.lua"), path.join(rooms, "counter.lua"));
    main = await startServer({
      rooms,
      args: ["--world", "--no-watch"],
      env: { AUTH_JWT_SECRET: "oneloop-test-jwt", SHARD_SECRET },
    });
    shard = await startServer({
      rooms: tempDir("lunaroom-oneloop-shard-"),
      args: ["--shard", main.url, "--no-watch", "--stats-interval", "60000"],
      env: { SHARD_SECRET, AUTH_JWT_SECRET: "" },
    });
    const r = await http("POST", `${main.url}/parties/world/world-default/connect`, { roomId: "demo" });
    assert.equal(r.status, 200, r.body);
    const c = wsClient(`${shard.wsUrl}/parties/shard/${r.json.shardId}?id=one-1`);
    await c.opened;
    await c.next((m) => m?.type === "sync" && m.value?.pId !== undefined);
    c.send({ action: "increment" });
    await c.next((m) => m?.type === "sync" && m.value?.count === 1);

    await sleep(300); // the join's reports and patches settle
    const pid = shard.proc.pid;
    const before = wakeups(pid);
    await sleep(2000);
    const perSecond = (wakeups(pid) - before) / 2;
    console.log(`# idle shard with an open uplink: ${perSecond} wakeups/s`);
    assert.ok(perSecond < 40, `the shard's loop woke ${perSecond} times a second while idle`);

    // the uplink still carries frames at once, both ways
    c.send({ action: "increment" });
    await c.next((m) => m?.type === "sync" && m.value?.count === 2);
    await c.close();
  });
});

/*
 * sighup.test.mjs - `systemctl reload` (SIGHUP) re-reads the rooms folder
 * without a restart, also with --no-watch (issue 20): a new room file is
 * served, a changed one swaps its code with the rooms' state kept, a deleted
 * one stops new rooms; the process and its sockets live on.
 *
 * Owns: the SIGHUP checks on a plain (non-TLS) server; tls.test.mjs has the
 * certificate reload.
 * Must not: rely on the inotify watcher (the server runs with --no-watch).
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { http, sleep, startServer, tempDir, wsClient } from "./lib.mjs";

const dir = tempDir("lunaroom-hup-");
const room = (file, body) =>
  fs.writeFileSync(path.join(dir, file), `local lr = require "lunaroom"\nreturn lr.room ${body}\n`);

describe("SIGHUP re-reads the rooms folder", () => {
  let srv;
  const hups = () => (srv.logs().match(/rooms folder .* re-read/g) || []).length;
  const hup = async () => {
    const n = hups();
    srv.proc.kill("SIGHUP");
    for (let i = 0; i < 200 && hups() === n; i++) await sleep(10);
    assert.equal(hups(), n + 1, srv.logs());
  };
  before(async () => {
    room("a.lua", `{ path = "a", state = { n = lr.sync(0) },
      actions = { inc = function(r) r.n = r.n + 1 end },
      requests = { ["GET /"] = function(r) return { v = 1, n = r.n } end } }`);
    srv = await startServer({ rooms: dir, args: ["--no-watch"] });
  });
  after(async () => {
    if (srv) assert.equal(await srv.stop("SIGTERM"), 0, srv.logs());
  });

  test("new, changed and deleted room files; the process and its sockets stay", async () => {
    const c = wsClient(`${srv.wsUrl}/parties/main/a`);
    await c.opened;
    await c.next((m) => m?.type === "sync");
    c.send({ action: "inc" });
    await c.next((m) => m?.type === "sync" && m.value.n === 1);
    assert.equal((await http("GET", `${srv.url}/parties/main/b-1`)).status, 404);

    room("b.lua", `{ path = "b-{id}", requests = { ["GET /"] = function() return { b = true } end } }`);
    room("a.lua", `{ path = "a", state = { n = lr.sync(0) },
      actions = { inc = function(r) r.n = r.n + 1 end },
      requests = { ["GET /"] = function(r) return { v = 2, n = r.n } end } }`);
    await hup();
    assert.deepEqual((await http("GET", `${srv.url}/parties/main/b-1`)).json, { b: true });
    assert.deepEqual((await http("GET", `${srv.url}/parties/main/a`)).json, { v: 2, n: 1 }, "new code, same state");
    c.send({ action: "inc" });
    await c.next((m) => m?.type === "sync" && m.value.n === 2);

    fs.unlinkSync(path.join(dir, "b.lua"));
    await hup();
    // no new rooms of a deleted file (b-1, already live, keeps its code)
    assert.equal((await http("GET", `${srv.url}/parties/main/b-2`)).status, 404);
    assert.equal(srv.proc.exitCode, null, "still running");
    await c.close();
  });
});

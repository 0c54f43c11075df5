/*
 * watch.test.mjs - `lunaroom test --watch` with the real binary on a
 * temporary project (rooms/x.lua requiring rooms/lib/step.lua, a spec of x,
 * an unrelated spec): the first run covers both specs; a save of the module
 * re-runs only x's spec (and a breaking save shows the failure), a save of
 * the unrelated spec re-runs only that one, an in-place save and a rename
 * save each give exactly one run; SIGINT ends it.
 *
 * Owns: the wire-level expectations of watch mode (issue 22).
 * Must not: depend on timing beyond bounded waits (10 s per step), or touch
 * the repository's rooms/ or spec/.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { after, test } from "node:test";
import { BIN, ROOT, sleep, tempDir } from "./lib.mjs";

const dir = tempDir("lunaroom-watch-");
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function write(rel, text) {
  fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
  fs.writeFileSync(path.join(dir, rel), text);
}
function writeRename(rel, text) {
  const f = path.join(dir, rel);
  fs.writeFileSync(`${f}.tmp~`, text);
  fs.renameSync(`${f}.tmp~`, f);
}

write("rooms/lib/step.lua", "return { step = 1 }\n");
write(
  "rooms/x.lua",
  `local lr = require "lunaroom"
local lib = require "lib.step"
return lr.room { path = "x", state = { n = lr.sync(0) },
  actions = { inc = function(room) room.n = room.n + lib.step end } }
`,
);
write(
  "spec/x_spec.lua",
  `local testing = require "lunaroom.testing"
describe("x", function()
  it("inc adds one", function()
    local t = testing.room("rooms/x.lua")
    t:client():send("inc")
    assert.are.equal(1, t.room.n)
    t:close()
  end)
end)
`,
);
write("spec/y_spec.lua", `describe("y", function() it("holds", function() assert.is_true(true) end) end)\n`);

test("test --watch re-runs the specs that use a saved file, one run per save, until SIGINT", async () => {
  const proc = spawn(BIN, ["test", "--watch", "spec", "--lua-path", path.join(ROOT, "lua")], {
    cwd: dir,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  proc.stdout.on("data", (d) => (out += d));
  proc.stderr.on("data", (d) => (out += d));
  const exited = new Promise((res) => proc.on("exit", (code, signal) => res({ code, signal })));
  const summaries = () => out.split("\n").filter((l) => /^\[watch \d/.test(l));
  async function nextSummary(n, what) {
    const end = Date.now() + 10000;
    while (summaries().length < n) {
      if (Date.now() > end) throw new Error(`no summary for ${what} after 10 s:\n${out}`);
      await sleep(10);
    }
    return summaries()[n - 1];
  }
  try {
    let s = await nextSummary(1, "the first run");
    assert.match(s, /PASS: all 2 spec files, 2 passed, 0 failed/);
    await nextWatching();

    write("rooms/lib/step.lua", "return { step = 2 }\n"); // in place: x_spec breaks
    s = await nextSummary(2, "a module save");
    assert.match(s, /FAIL: 1 of 2 spec files, 0 passed, 1 failed.*saved rooms\/lib\/step\.lua/);
    assert.match(out, /x_spec\.lua/);

    writeRename("rooms/lib/step.lua", "return { step = 1 }\n"); // rename over: fixed
    s = await nextSummary(3, "a rename save");
    assert.match(s, /PASS: 1 of 2 spec files, 1 passed, 0 failed.*saved rooms\/lib\/step\.lua/);

    write("spec/y_spec.lua", `describe("y", function() it("holds", function() assert.is_true(1 == 1) end) end)\n`);
    s = await nextSummary(4, "a spec save");
    assert.match(s, /PASS: 1 of 2 spec files, 1 passed.*saved spec\/y_spec\.lua/);

    await sleep(300); // no extra run for any of the saves
    assert.equal(summaries().length, 4, out);

    proc.kill("SIGINT");
    let timer;
    const r = await Promise.race([exited, new Promise((res) => (timer = setTimeout(res, 5000, null)))]);
    clearTimeout(timer);
    assert.ok(r, "still running 5 s after SIGINT");
  } finally {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
  }

  async function nextWatching() {
    const end = Date.now() + 10000;
    while (!/\[watch\] watching/.test(out)) {
      if (Date.now() > end) throw new Error(`not watching after 10 s:\n${out}`);
      await sleep(10);
    }
  }
});

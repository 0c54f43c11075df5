/*
 * devmode.test.mjs - `lunaroom serve --dev` with the real binary: a save of
 * a room file that fails to compile reaches the connected clients of that
 * room type as {"type":"dev_error","value":{file,line,message}}, the next
 * good save sends {"type":"dev_error","value":null}, clients of another room
 * type hear nothing; the same saves on a server without --dev send nothing.
 *
 * Owns: the wire-level expectations of development mode (issue 22).
 * Must not: touch the repository's rooms/ (a temporary folder is served);
 * waits are bounded (3 s per packet).
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { sleep, startServer, tempDir, wsClient } from "./lib.mjs";

function room(pathName, n) {
  return `local lr = require "lunaroom"
return lr.room {
  path = "${pathName}",
  state = { count = lr.sync(0) },
  actions = {
    ver = function(room, _user, _value, conn) room:send(conn, { type = "ver", value = ${n} }) end,
  },
}
`;
}
const BROKEN = `local lr = require "lunaroom"
return lr.room {
  path = = "game",
}
`;

const dirs = [];
after(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

async function setup(args) {
  const dir = tempDir("lunaroom-dev-");
  dirs.push(dir);
  fs.writeFileSync(path.join(dir, "game.lua"), room("game", 0));
  fs.writeFileSync(path.join(dir, "chat.lua"), room("chat", 0));
  const srv = await startServer({ rooms: dir, args });
  const game = wsClient(`${srv.wsUrl}/parties/main/game?id=dev-1`);
  const chat = wsClient(`${srv.wsUrl}/parties/main/chat?id=dev-2`);
  await Promise.all([game.opened, chat.opened]);
  await game.next((m) => m && m.type === "sync");
  await chat.next((m) => m && m.type === "sync");
  return { dir, srv, game, chat };
}

async function untilLog(srv, re, what) {
  const end = Date.now() + 3000;
  while (!re.test(srv.logs())) {
    if (Date.now() > end) throw new Error(`no log line for ${what}:\n${srv.logs()}`);
    await sleep(5);
  }
}

const devPackets = (c) => c.raw.filter((r) => r.includes('"type":"dev_error"'));

describe("serve --dev", () => {
  test("a broken save reaches the room type's clients; the next good save clears it", async () => {
    const { dir, srv, game, chat } = await setup(["--dev"]);
    try {
      const file = path.join(dir, "game.lua");
      fs.writeFileSync(file, BROKEN);
      const err = await game.next((m) => m && m.type === "dev_error");
      assert.equal(err.value.file, file);
      assert.equal(err.value.line, 3);
      assert.match(err.value.message, /unexpected symbol/);
      // the old code still runs
      game.send({ action: "ver", value: null });
      assert.equal((await game.next((m) => m && m.type === "ver")).value, 0);

      fs.writeFileSync(file, room("game", 1));
      const cleared = await game.next((m) => m && m.type === "dev_error");
      assert.equal(cleared.value, null);
      assert.ok(game.raw.includes('{"type":"dev_error","value":null}'));
      game.send({ action: "ver", value: null });
      assert.equal((await game.next((m) => m && m.type === "ver")).value, 1);

      chat.send({ action: "ver", value: null }); // a round trip: anything sent to chat is in
      await chat.next((m) => m && m.type === "ver");
      assert.deepEqual(devPackets(chat), []);
    } finally {
      game.ws.terminate();
      chat.ws.terminate();
      await srv.stop();
    }
  });

  test("without --dev the same saves send nothing", async () => {
    const { dir, srv, game, chat } = await setup([]);
    try {
      const file = path.join(dir, "game.lua");
      fs.writeFileSync(file, BROKEN);
      await untilLog(srv, /game\.lua:3: .*keeping version/, "the broken save");
      fs.writeFileSync(file, room("game", 1));
      await untilLog(srv, /reloaded .*game\.lua/, "the good save");
      game.send({ action: "ver", value: null });
      assert.equal((await game.next((m) => m && m.type === "ver")).value, 1);
      assert.deepEqual(devPackets(game), []);
      assert.deepEqual(devPackets(chat), []);
    } finally {
      game.ws.terminate();
      chat.ws.terminate();
      await srv.stop();
    }
  });
});

/*
 * devmode.test.mjs - `lunaroom serve --dev` with the real binary: a save of
 * a room file that fails to compile reaches the connected clients of that
 * room type as {"type":"dev_error","value":{file,line,message}}, the next
 * good save sends {"type":"dev_error","value":null}, clients of another room
 * type hear nothing; the same saves on a server without --dev send nothing.
 * A room file that fails at start: without --dev the server does not start;
 * with --dev its clients get the error on an open socket (HTTP: 503 with
 * it), a new broken save updates it, a good save clears it and they join
 * the new room with the usual sync.
 *
 * Owns: the wire-level expectations of development mode (issue 22).
 * Must not: touch the repository's rooms/ (a temporary folder is served);
 * waits are bounded (3 s per packet).
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, describe, test } from "node:test";
import { http, sleep, startServer, tempDir, wsClient } from "./lib.mjs";

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

// A syntax error on line 4; the room type (path = "game") is still readable.
const BROKEN_AT_START = `local lr = require "lunaroom"
return lr.room {
  path = "game",
  state = = { count = lr.sync(0) },
}
`;

describe("serve --dev: a room file that fails at start", () => {
  test("without --dev the server does not start", async () => {
    const dir = tempDir("lunaroom-dev-start-");
    dirs.push(dir);
    fs.writeFileSync(path.join(dir, "game.lua"), BROKEN_AT_START);
    fs.writeFileSync(path.join(dir, "chat.lua"), room("chat", 0));
    await assert.rejects(startServer({ rooms: dir }), (e) =>
      /game\.lua:4: unexpected symbol/.test(e.message) && /not starting/.test(e.message) && /exited with 1/.test(e.message));
  });

  test("its clients get the error on an open socket, HTTP gets 503; a good save joins them to the room", async () => {
    const dir = tempDir("lunaroom-dev-start-");
    dirs.push(dir);
    const file = path.join(dir, "game.lua");
    fs.writeFileSync(file, BROKEN_AT_START);
    fs.writeFileSync(path.join(dir, "chat.lua"), room("chat", 0));
    const srv = await startServer({ rooms: dir, args: ["--dev"] });
    const clients = [];
    try {
      await untilLog(srv, /clients of main\/game wait for a save of .*game\.lua/, "the failed room type");
      // the other room serves
      const chat = wsClient(`${srv.wsUrl}/parties/main/chat?id=s-0`);
      clients.push(chat);
      await chat.next((m) => m && m.type === "sync");

      const a = wsClient(`${srv.wsUrl}/parties/main/game?id=s-1`);
      clients.push(a);
      await a.opened;
      const err = await a.next((m) => m && m.type === "dev_error");
      assert.equal(err.value.file, file);
      assert.equal(err.value.line, 4);
      assert.match(err.value.message, /unexpected symbol/);
      a.send({ action: "ver", value: null }); // kept until the room is there

      const res = await http("GET", `${srv.url}/parties/main/game`);
      assert.equal(res.status, 503);
      assert.equal(res.json.code, "dev_error");
      assert.equal(res.json.file, file);
      assert.equal(res.json.line, 4);
      assert.match(res.json.error, /game\.lua:4 does not load: .*unexpected symbol/);
      // an unknown room is still unknown
      const none = wsClient(`${srv.wsUrl}/parties/main/nothing?id=s-9`);
      clients.push(none);
      assert.equal((await none.closed).code, 4004);

      // another broken save: the waiting clients get the new error
      fs.writeFileSync(file, BROKEN_AT_START.replace("state = = {", "state = {").replace("},\n}", "},\n  actions = { ver = },\n}"));
      const err2 = await a.next((m) => m && m.type === "dev_error");
      assert.equal(err2.value.line, 5);
      assert.match(err2.value.message, /unexpected symbol near '}'/);
      const b = wsClient(`${srv.wsUrl}/parties/main/game?id=s-2`);
      clients.push(b);
      assert.equal((await b.next((m) => m && m.type === "dev_error")).value.message, err2.value.message);
      await sleep(100);
      assert.equal(a.ws.readyState, 1, "still open");
      assert.ok(!a.messages.some((m) => m && m.type === "sync"), "no room yet");

      // the fix: the error is cleared, then the usual sync of the new room
      fs.writeFileSync(file, room("game", 1));
      for (const c of [a, b]) {
        const cleared = await c.next((m) => m && m.type === "dev_error");
        assert.equal(cleared.value, null);
        const sync = await c.next((m) => m && m.type === "sync");
        assert.equal(sync.value.count, 0);
        assert.ok(c.raw.indexOf('{"type":"dev_error","value":null}') < c.messages.indexOf(sync));
      }
      // the action sent while waiting ran on the new room, and so does a new one
      assert.equal((await a.next((m) => m && m.type === "ver")).value, 1);
      b.send({ action: "ver", value: null });
      assert.equal((await b.next((m) => m && m.type === "ver")).value, 1);
      assert.notEqual((await http("GET", `${srv.url}/parties/main/game`)).status, 503);
      const late = wsClient(`${srv.wsUrl}/parties/main/game?id=s-3`);
      clients.push(late);
      await late.next((m) => m && m.type === "sync");
      assert.deepEqual(devPackets(late), []);
      assert.deepEqual(devPackets(chat), []);
    } finally {
      clients.forEach((c) => c.ws.terminate());
      assert.equal(await srv.stop(), 0, srv.logs());
    }
  });

  test("a waiting client is closed with 4004 when the broken file is deleted", async () => {
    const dir = tempDir("lunaroom-dev-start-");
    dirs.push(dir);
    const file = path.join(dir, "game.lua");
    fs.writeFileSync(file, BROKEN_AT_START);
    fs.writeFileSync(path.join(dir, "chat.lua"), room("chat", 0));
    const srv = await startServer({ rooms: dir, args: ["--dev"] });
    const a = wsClient(`${srv.wsUrl}/parties/main/game?id=d-1`);
    try {
      await a.next((m) => m && m.type === "dev_error");
      fs.rmSync(file);
      assert.deepEqual(await a.closed, { code: 4004, reason: "no such room" });
    } finally {
      a.ws.terminate();
      assert.equal(await srv.stop(), 0, srv.logs());
    }
  });
});

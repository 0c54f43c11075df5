/*
 * headers.test.mjs - the request headers a room sees, over HTTP and on a
 * WebSocket join: standard headers (lws's token table), the custom ones the
 * transport always looks up (x-request-id, ...), the names a room file asks
 * for (lr.room{headers}), and nothing else (lws 4.1 cannot enumerate other
 * custom headers). Guards net_hdrs.c's one-allocation collection.
 *
 * Owns: these checks against one server on loopback.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import fs from "node:fs";
import nodeHttp from "node:http";
import path from "node:path";
import { startServer, tempDir, wsClient } from "./lib.mjs";

const ROOM = `local lr = require "lunaroom"
local joined = {}
return lr.room {
  path = "hdrs",
  headers = { "x-wanted-one", "x-test", "x-wanted-two" },
  state = {},
  onJoin = function(room, _user, _conn, ctx) joined[room.id] = ctx.request.headers end,
  requests = {
    ["GET /echo"] = function(_, req) return { headers = req.headers } end,
    ["GET /joined"] = function(room) return { headers = joined[room.id] or lr.null } end,
  },
}
`;

// Headers are collected on demand (lr_request.load_headers): a room guard
// sees them on the join that creates its room and on a join to the loaded
// room alike.
const GATE = `local lr = require "lunaroom"
local seen = {}
return lr.room {
  path = "gate-{id}",
  headers = { "x-wanted-one", "x-test", "x-wanted-two" },
  state = {},
  guards = { function(_conn, ctx, room)
    local l = seen[room.id] or {}
    seen[room.id] = l
    l[#l + 1] = ctx.request.headers
    return true
  end },
  requests = { ["GET /seen"] = function(room) return { seen = seen[room.id] or lr.null } end },
}
`;

/* GET url with exactly these headers: the parsed JSON body. */
function get(url, headers) {
  return new Promise((resolve, reject) => {
    nodeHttp
      .get(url, { agent: false, headers }, (r) => {
        let b = "";
        r.on("data", (d) => (b += d));
        r.on("end", () => resolve({ status: r.statusCode, json: JSON.parse(b) }));
      })
      .on("error", reject);
  });
}

const SENT = {
  authorization: "Bearer abc.def",
  "user-agent": "headers-test/1.0",
  origin: "http://example.test",
  "accept-language": "en;q=0.9, de",
  cookie: "a=1; b=two",
  "x-request-id": "req-42",
  "x-test": "both lists",
  "x-wanted-one": "one",
  "x-wanted-two": "",
  "x-not-asked-for": "dropped",
  "x-long": "y".repeat(3000),
};

function check(h) {
  for (const k of ["authorization", "user-agent", "origin", "accept-language", "cookie", "x-request-id", "x-test", "x-wanted-one"])
    assert.equal(h[k], SENT[k], k);
  assert.equal(h["x-wanted-two"], "", "an asked-for header with an empty value");
  assert.equal(h["x-not-asked-for"], undefined);
  assert.equal(h["x-long"], undefined);
  for (const k of Object.keys(h)) assert.equal(k, k.toLowerCase(), "names are lower-case");
}

describe("request headers", () => {
  let srv;
  before(async () => {
    const dir = tempDir("lunaroom-hdrs-");
    fs.writeFileSync(path.join(dir, "hdrs.lua"), ROOM);
    fs.writeFileSync(path.join(dir, "gate.lua"), GATE);
    srv = await startServer({ rooms: dir, args: ["--no-watch"] });
  });
  after(async () => {
    if (srv) assert.equal(await srv.stop(), 0, srv.logs());
  });

  test("an HTTP request's headers reach the room", async () => {
    const r = await get(`${srv.url}/parties/main/hdrs/echo`, SENT);
    assert.equal(r.status, 200);
    check(r.json.headers);
    assert.match(r.json.headers.host, /^127\.0\.0\.1:\d+$/);
  });

  test("a WebSocket join's headers reach onJoin", async () => {
    const c = wsClient(`${srv.wsUrl}/parties/main/hdrs?id=h1`, { headers: SENT });
    await c.opened;
    await c.next((m) => m?.type === "sync");
    const r = await get(`${srv.url}/parties/main/hdrs/joined`, {});
    check(r.json.headers);
    assert.equal(r.json.headers.upgrade.toLowerCase(), "websocket");
    assert.ok(r.json.headers["sec-websocket-key"], "sec-websocket-key");
    await c.close();
  });

  test("a room guard sees the headers on the join that creates the room and on the next", async () => {
    for (const id of ["g1", "g2"]) {
      const c = wsClient(`${srv.wsUrl}/parties/main/gate-a?id=${id}`, { headers: SENT });
      await c.opened;
      await c.next((m) => m?.type === "sync");
      await c.close();
    }
    const r = await get(`${srv.url}/parties/main/gate-a/seen`, {});
    assert.equal(r.json.seen.length, 2);
    for (const h of r.json.seen) {
      check(h);
      assert.equal(h.upgrade.toLowerCase(), "websocket");
    }
  });
});

/*
 * server.mjs - the reference for the benchmarks: the same rooms as
 * rooms/game.lua, rooms/counter.lua and bench/rooms/bench.lua, written on
 * the npm @signe/room (Node adapter, `@signe/room/node` + `ws`), the way the
 * package's own example (examples/node/server.ts) hosts them.
 *
 * Plain JavaScript: the TypeScript decorators (@Room, @Action, @Request,
 * @sync, @users) are applied by hand with the same arguments, in the order
 * tsc emits them (property/method decorators first, then the class one).
 * Synced fields are assigned in the constructor, not as class fields: with
 * `useDefineForClassFields: false` (what the reference's tsconfig implies)
 * an initialiser is an assignment that goes through the accessor @sync
 * installed on the prototype; a JS class field would shadow it.
 *
 * Usage: node server.mjs [--port N] [--host 127.0.0.1]
 * Prints `listening on http://HOST:PORT` on stderr (same line as lunaroom).
 * Storage: memory (createMemoryNodeRoomStorage). Session ids come from ?id=.
 */
import http from "node:http";
import { WebSocketServer } from "ws";
import { Action, Request, Room, Server } from "@signe/room";
import { createMemoryNodeRoomStorage, createNodeRoomTransport } from "@signe/room/node";
import { signal } from "@signe/reactive";
import { sync, users } from "@signe/sync";
import { z } from "zod";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
};
const port = Number(arg("--port", "0"));
const host = arg("--host", "127.0.0.1");

/* ---- Player: lr.schema { x = lr.sync(0), y = lr.sync(0), score = lr.sync(0) } ---- */
class Player {
  constructor() {
    this.x = signal(0);
    this.y = signal(0);
    this.score = signal(0);
  }
}
sync()(Player.prototype, "x");
sync()(Player.prototype, "y");
sync()(Player.prototype, "score");

const moveSchema = z.object({ x: z.number().min(0).max(1000), y: z.number().min(0).max(1000) });

/* ---- rooms/game.lua (path "game") and bench/rooms/bench.lua (path "bench-{id}") ---- */
function gameRoom(path) {
  class GameRoom {
    constructor() {
      this.players = signal({});
      this.gameState = signal("waiting");
    }
    move(player, pos) {
      player.x.set(pos.x);
      player.y.set(pos.y);
    }
  }
  users(Player)(GameRoom.prototype, "players");
  sync()(GameRoom.prototype, "gameState");
  Action("move", moveSchema)(GameRoom.prototype, "move");
  Room({ path })(GameRoom);
  return GameRoom;
}

/* ---- rooms/counter.lua (path "demo") ---- */
class CounterRoom {
  constructor() {
    this.count = signal(0);
  }
  increment(_user, value) {
    this.count.update((c) => c + ((value && value.amount) ?? 1));
  }
  getCount() {
    return { count: this.count() };
  }
}
sync()(CounterRoom.prototype, "count");
Action("increment", z.object({ amount: z.number().optional() }).optional())(
  CounterRoom.prototype,
  "increment",
);
Request({ path: "/count" })(CounterRoom.prototype, "getCount");
Room({ path: "demo" })(CounterRoom);

class BenchServer extends Server {
  rooms = [gameRoom("game"), gameRoom("bench-{id}"), CounterRoom];
}

const transport = createNodeRoomTransport(BenchServer, {
  partiesPath: "/parties/main",
  storage: createMemoryNodeRoomStorage(),
});

const server = http.createServer(async (req, res) => {
  if (req.url?.startsWith("/parties/main/")) {
    await transport.handleNodeRequest(req, res);
    return;
  }
  res.writeHead(404, { "Content-Type": "text/plain; charset=utf-8" });
  res.end("Not Found");
});

const wss = new WebSocketServer({ noServer: true });
server.on("upgrade", (request, socket, head) => {
  if (request.url?.startsWith("/parties/main/")) {
    transport.handleUpgrade(wss, request, socket, head);
    return;
  }
  socket.destroy();
});

server.listen(port, host, () => {
  const a = server.address();
  process.stderr.write(`listening on http://${a.address}:${a.port}\n`);
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}

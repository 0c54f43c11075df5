/*
 * kv_server.mjs - the key-value service of lua/lunaroom/backends/http.lua,
 * in memory, for the integration tests (and as a reference for writing one).
 *
 *   GET  /kv/{ns}/{room}  -> 200 [[key, json], ...] sorted by key, 404 if empty
 *   POST /kv/{ns}/{room}  [["put", k, json] | ["del", k] | ["delprefix", k], ...]
 *                         -> 204, all or nothing
 *
 * Owns: startKv({ delay(ns, room, method) -> ms, fail(ns, room, method) ->
 * HTTP status to answer instead, or 0 }) resolving to
 * { url, data, log, close() }: data is Map("ns/room" -> Map(key -> json)),
 * log lists every request as "METHOD ns/room". Must not: know rooms.
 */
import http from "node:http";

export function startKv({ delay = () => 0, fail = () => 0 } = {}) {
  const data = new Map();
  const log = [];
  const server = http.createServer((req, res) => {
    const m = req.url.match(/^\/kv\/([^/]+)\/([^/?]+)$/);
    if (!m) {
      res.writeHead(404).end();
      return;
    }
    const ns = decodeURIComponent(m[1]);
    const room = decodeURIComponent(m[2]);
    const id = `${ns}/${room}`;
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      log.push(`${req.method} ${id}`);
      setTimeout(() => {
        const status = fail(ns, room, req.method);
        if (status) return res.writeHead(status).end("unavailable");
        const kv = data.get(id) ?? new Map();
        if (req.method === "GET") {
          if (kv.size === 0) return res.writeHead(404).end();
          const all = [...kv.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
          res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(all));
          return;
        }
        if (req.method !== "POST") return res.writeHead(405).end();
        let ops;
        try {
          ops = JSON.parse(body);
          for (const o of ops) if (o[0] === "put") JSON.parse(o[2]); // every value is JSON text
        } catch (e) {
          return res.writeHead(400).end(String(e));
        }
        const next = new Map(kv);
        for (const [op, k, v] of ops) {
          if (op === "put") next.set(k, v);
          else if (op === "del") next.delete(k);
          else for (const key of [...next.keys()]) if (key.startsWith(k)) next.delete(key);
        }
        data.set(id, next);
        res.writeHead(204).end();
      }, delay(ns, room, req.method));
    });
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        url: `http://127.0.0.1:${server.address().port}/kv`,
        data,
        log,
        close: () => new Promise((r) => server.close(r)),
      }),
    ),
  );
}

/*
 * cluster_lib.mjs - what the cluster wire tests (cluster.test.mjs,
 * cluster3.test.mjs, cluster_rooms.test.mjs) share: a free port (a node's
 * URL is known before it starts), starting a `--cluster` node on a
 * throwaway PostgreSQL (pg.mjs), joining a room and reading the answer or
 * the close, /metrics figures, waiting for a condition, an admin JWT.
 *
 * Owns: those helpers. Must not: start PostgreSQL (pg.mjs does) or assert
 * anything itself.
 */
import crypto from "node:crypto";
import net from "node:net";
import { sleep, startServer, wsClient } from "./lib.mjs";

/** A TCP port nothing listens on now (127.0.0.1). */
export function freePort() {
  return new Promise((res) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/**
 * `serve ROOMS --cluster pg.url --node-url http://127.0.0.1:PORT`; resolves with
 * the server of lib.mjs plus nodeUrl and port. env is added to the process
 * environment (e.g. SHARD_SECRET: the nodes relay; without it they refuse);
 * bin, the binary (default: lib.mjs's BIN).
 */
export async function clusterNode(pg, rooms, { leaseMs = 1000, port, extra = [], env = {}, bin } = {}) {
  port ??= await freePort();
  const url = `http://127.0.0.1:${port}`;
  const srv = await startServer({
    rooms,
    env,
    bin,
    args: ["--port", String(port), "--host", "127.0.0.1", "--cluster", pg.url, "--node-url", url,
      "--lease-ms", String(leaseMs), "--no-watch", ...extra],
  });
  srv.nodeUrl = url;
  srv.port = port;
  await sleep(150); // its tables exist before the next node starts
  return srv;
}

/**
 * A client of main/room (session id): resolves with the client once its
 * first sync with a pId arrived, or { refused: {code, reason}, c } when the
 * socket closed first.
 */
export async function join(srv, room, id) {
  const c = wsClient(`${srv.wsUrl}/parties/main/${room}?id=${id}`);
  await c.opened;
  const closedEarly = c.closed.then((e) => ({ closed: e }));
  const r = await Promise.race([c.next((m) => m?.type === "sync" && m.value.pId !== undefined, 5000), closedEarly]);
  if (r?.closed) return { refused: r.closed, c };
  return c;
}

/** The value of one metric line in a /metrics text (NaN when absent). */
export const metric = (text, name) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);

/** Resolves once f() is true (checked every 10 ms); throws after ms. */
export const until = async (f, ms = 5000, what = "condition") => {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
};

/** An HS256 JWT as JWTAuth.sign makes it, signed with secret (one hour). */
export function sign(claims, secret) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const data = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ ...claims, iat: now, exp: now + 3600 })}`;
  return `${data}.${crypto.createHmac("sha256", secret).update(data).digest("base64url")}`;
}

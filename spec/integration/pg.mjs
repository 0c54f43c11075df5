/*
 * pg.mjs - a throwaway PostgreSQL for wire tests (spec/cluster/pg.sh:
 * initdb in a temp dir as an unprivileged user, unix socket in that dir and
 * 127.0.0.1 on a free port).
 *
 * Owns: starting, stopping and restarting one server per call of startPg(),
 * and running SQL through psql (sync, or held open in a session that keeps
 * a lock). Must not: touch the system cluster, or outlive the test process
 * (the exit hook stops every server it started).
 */
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { ROOT, tempDir } from "./lib.mjs";

const PG_SH = path.join(ROOT, "spec/cluster/pg.sh");
const started = new Set();
process.on("exit", () => {
  for (const d of started) {
    try {
      execFileSync(PG_SH, ["stop", d], { stdio: "ignore" });
    } catch {}
  }
});

function psqlBin() {
  for (const v of ["17", "16", "15", "14"]) {
    const p = `/usr/lib/postgresql/${v}/bin/psql`;
    if (fs.existsSync(p)) return p;
  }
  return "psql";
}

/**
 * Why PostgreSQL tests cannot run here (no initdb: `make deps` installs the
 * postgresql package), or null when they can.
 */
export function pgMissing() {
  if (process.env.PG_BIN && fs.existsSync(path.join(process.env.PG_BIN, "initdb"))) return null;
  for (const v of ["17", "16", "15", "14", "13"])
    if (fs.existsSync(`/usr/lib/postgresql/${v}/bin/initdb`)) return null;
  return "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or $PG_BIN; `make deps` installs it)";
}

/**
 * Start a fresh PostgreSQL. Resolves with { url, dir, stop(), start(),
 * sql(text) -> stdout (psql -At), sqlOn(url, text), session() -> { send(sql), close() } }.
 */
export function startPg({ fsync = "off" } = {}) {
  const dir = tempDir("lunaroom-pg-");
  const run = (cmd) =>
    execFileSync(PG_SH, [cmd, dir], { env: { ...process.env, PG_FSYNC: fsync }, encoding: "utf8" }).trim();
  const url = run("start");
  started.add(dir);
  const psql = psqlBin();
  return {
    url,
    dir,
    stop: () => {
      run("stop");
    },
    start: () => {
      const port = fs.readFileSync(path.join(dir, "port"), "utf8").trim();
      execFileSync(PG_SH, ["start", dir, port], { env: { ...process.env, PG_FSYNC: fsync } });
    },
    sql: (text) => execFileSync(psql, [url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", text], { encoding: "utf8" }).trim(),
    /** The same on another database of this server (its URL). */
    sqlOn: (dbUrl, text) =>
      execFileSync(psql, [dbUrl, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", text], { encoding: "utf8" }).trim(),
    /** A psql session kept open (e.g. holding a lock inside BEGIN). */
    session() {
      const p = spawn(psql, [url, "-qAtX"], { stdio: ["pipe", "pipe", "pipe"] });
      let out = "";
      p.stdout.on("data", (d) => (out += d));
      p.stderr.on("data", (d) => (out += d));
      return {
        send: (text) => p.stdin.write(text.endsWith("\n") ? text : text + "\n"),
        output: () => out,
        close: () =>
          new Promise((res) => {
            p.on("exit", res);
            p.stdin.end();
            setTimeout(() => p.kill("SIGKILL"), 2000).unref();
          }),
      };
    },
  };
}

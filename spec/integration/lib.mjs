/*
 * lib.mjs - helpers for the wire-level integration tests: start the real
 * build/lunaroom binary, talk to it over WebSocket (ws) and HTTP (node:http).
 *
 * Owns: process start/stop with port discovery from the log, a small
 * WebSocket client that records every packet, a one-shot HTTP helper.
 * Must not: depend on anything but node built-ins and `ws`; know room
 * semantics (tests do); leave a server process running after the test
 * process exits.
 */
import { spawn } from "node:child_process";
import fs from "node:fs";
import nodeHttp from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

/** Repository root (spec/integration/../..). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
/** The server binary: $LUNAROOM_BIN, else build/lunaroom. */
export const BIN = process.env.LUNAROOM_BIN || path.join(ROOT, "build", "lunaroom");

const running = new Set();
const temps = new Set();
process.on("exit", () => {
  for (const d of temps) fs.rmSync(d, { recursive: true, force: true });
  for (const p of running) {
    try {
      p.kill("SIGKILL");
    } catch {}
  }
});

/** A fresh directory under the system temp dir, removed when the test process exits. */
export function tempDir(prefix) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  temps.add(d);
  return d;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Assert that log lines of one lr_warn_limited key keep its bound: at most `burst` lines per window
 * of `windowMs` (a window starts at the first line after the previous one ended). Lines start with
 * the log's ISO timestamp. 999 of 1000: the log's wall-clock milliseconds against the limiter's
 * monotonic ones.
 */
export function assertLimitedLines(lines, { burst = 10, windowMs = 1000 } = {}) {
  let start = -Infinity, n = 0;
  for (const l of lines) {
    const t = Date.parse(l.slice(0, 24));
    if (Number.isNaN(t)) throw new Error(`no timestamp: ${l}`);
    if (t - start >= windowMs - 1) [start, n] = [t, 0];
    if (++n > burst)
      throw new Error(`more than ${burst} lines within ${windowMs} ms of ${new Date(start).toISOString()}:\n${lines.join("\n")}`);
  }
}

/**
 * Start `lunaroom serve <rooms> --port 0 --storage memory ...args`.
 *
 * options: rooms (folder, relative to the repo root; default "rooms"),
 * args (extra command-line arguments), env (added to process.env),
 * timeoutMs (to see the listen line, default 10000), bin (the binary,
 * default BIN: e.g. the ASan build's).
 *
 * Resolves when the server logged `listening on http://HOST:PORT`, with
 * { url, wsUrl, port, proc, logs(), stop(signal = "SIGTERM", timeoutMs) }.
 * stop() resolves with the exit code (a number; a signal death is reported
 * as 128 + signal number; SIGKILL after timeoutMs).
 * Rejects (and kills the process) if it exits or stays silent first.
 */
export function startServer({ rooms = "rooms", args = [], env = {}, timeoutMs = 10000, bin = BIN } = {}) {
  if (!fs.existsSync(bin)) {
    return Promise.reject(
      new Error(`server binary not found: ${bin} (build it: cmake -B build && cmake --build build)`),
    );
  }
  const argv = ["serve", rooms, "--port", "0", "--storage", "memory", ...args];
  const proc = spawn(bin, argv, {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(proc);
  // Never let a server (or its pipes) keep the test process alive: a test
  // that fails before stop() would otherwise hang forever; the exit hook
  // above kills what is left.
  proc.unref();
  proc.stdout.unref?.();
  proc.stderr.unref?.();
  let out = "";
  const exited = new Promise((res) =>
    proc.on("exit", (code, signal) => {
      running.delete(proc);
      res(code ?? 128 + (signal ? osSignal(signal) : 0));
    }),
  );
  proc.stdout.on("data", (d) => (out += d));
  proc.stderr.on("data", (d) => (out += d));
  const logs = () => out;

  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`no "listening on" line after ${timeoutMs} ms:\n${out}`));
    }, timeoutMs);
    const onData = () => {
      const m = /listening on (https?):\/\/(\[[^\]]+\]|[^\s:/]+):(\d+)/.exec(out);
      if (!m) return;
      clearTimeout(timer);
      proc.stderr.off("data", onData);
      proc.stdout.off("data", onData);
      let host = m[2];
      if (host === "0.0.0.0" || host === "[::]" || host === "::") host = "127.0.0.1";
      const port = Number(m[3]);
      const tls = m[1] === "https"; // --tls-cert: https:// and wss://
      resolve({
        url: `${tls ? "https" : "http"}://${host}:${port}`,
        wsUrl: `${tls ? "wss" : "ws"}://${host}:${port}`,
        port,
        proc,
        logs,
        stop(signal = "SIGTERM", stopTimeoutMs = 5000) {
          if (proc.exitCode !== null || proc.signalCode !== null) return exited;
          const kill = setTimeout(() => proc.kill("SIGKILL"), stopTimeoutMs);
          proc.kill(signal);
          return exited.finally(() => clearTimeout(kill));
        },
      });
    };
    proc.stderr.on("data", onData);
    proc.stdout.on("data", onData);
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${out}`));
    });
  });
}

function osSignal(name) {
  return { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGABRT: 6, SIGKILL: 9, SIGSEGV: 11, SIGTERM: 15 }[name] ?? 0;
}

/**
 * Open a WebSocket and record what arrives.
 *
 * Returns { ws, messages, raw, opened, closed, next(pred, timeoutMs), send(v), close(code, reason) }:
 * - raw: every text frame as a string; messages: the same parsed as JSON
 *   (undefined when a frame is not JSON);
 * - opened: resolves on open, rejects if the handshake fails
 *   (error.status holds the HTTP status of a refused upgrade);
 * - closed: resolves with { code, reason } when the socket closes (also
 *   after a failed handshake, with code 1006);
 * - next(pred, timeoutMs = 3000): resolves with the first message, in
 *   arrival order, for which pred(message, raw) is true and that no earlier
 *   next() returned; pred defaults to "any message";
 * - send(v): strings and Buffers as they are, anything else as JSON.
 */
export function wsClient(url, { headers, protocols } = {}) {
  const ws = new WebSocket(url, protocols, { headers });
  const c = { ws, messages: [], raw: [] };
  const taken = new Set();
  let waiters = [];
  c.opened = new Promise((res, rej) => {
    ws.once("open", res);
    ws.once("unexpected-response", (_req, resp) => {
      const e = new Error(`upgrade refused: HTTP ${resp.statusCode}`);
      e.status = resp.statusCode;
      rej(e);
      resp.resume();
      ws.terminate();
    });
    ws.once("error", rej);
  });
  c.opened.catch(() => {});
  ws.on("error", () => {});
  c.closed = new Promise((res) =>
    ws.once("close", (code, reason) => res({ code, reason: reason.toString() })),
  );
  ws.on("message", (data) => {
    const s = data.toString();
    let m;
    try {
      m = JSON.parse(s);
    } catch {
      m = undefined;
    }
    c.raw.push(s);
    c.messages.push(m);
    waiters = waiters.filter((w) => !w());
  });
  c.next = (pred = () => true, timeoutMs = 3000) =>
    new Promise((resolve, reject) => {
      const find = () => {
        for (let i = 0; i < c.raw.length; i++) {
          if (taken.has(i) || !pred(c.messages[i], c.raw[i])) continue;
          taken.add(i);
          resolve(c.messages[i] === undefined ? c.raw[i] : c.messages[i]);
          return true;
        }
        return false;
      };
      if (find()) return;
      const timer = setTimeout(() => {
        waiters = waiters.filter((w) => w !== waiter);
        reject(new Error(`no matching message within ${timeoutMs} ms; got:\n${c.raw.join("\n")}`));
      }, timeoutMs);
      const waiter = () => {
        if (!find()) return false;
        clearTimeout(timer);
        return true;
      };
      waiters.push(waiter);
    });
  c.send = (v) => ws.send(typeof v === "string" || Buffer.isBuffer(v) ? v : JSON.stringify(v));
  c.close = (code, reason) => {
    ws.close(code, reason);
    return c.closed;
  };
  return c;
}

/**
 * One HTTP request on a fresh connection (no keep-alive races).
 * body: undefined, a string, a Buffer, or anything else (sent as JSON with
 * content-type application/json unless headers say otherwise).
 * Resolves with { status, headers, body, json } (json undefined if the body
 * is not JSON).
 */
export function http(method, url, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const h = { ...headers };
    let payload;
    if (body !== undefined) {
      if (typeof body === "string" || Buffer.isBuffer(body)) {
        payload = body;
      } else {
        payload = JSON.stringify(body);
        if (!Object.keys(h).some((k) => k.toLowerCase() === "content-type"))
          h["content-type"] = "application/json";
      }
      h["content-length"] = Buffer.byteLength(payload);
    }
    const req = nodeHttp.request(url, { method, headers: h, agent: false }, (res) => {
      const chunks = [];
      res.on("data", (d) => chunks.push(d));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString();
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode, headers: res.headers, body: text, json });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

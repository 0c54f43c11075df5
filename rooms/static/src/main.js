/*
 * main.js - the browser demo (built into rooms/static/demo.js by esbuild,
 * see package.json): every tab is a coloured dot in the room "game"
 * (rooms/game.lua); arrow keys or a click move it, the other tabs' dots move
 * live.
 *
 * Owns: the connection through the unchanged npm client (@signe/sync
 * connectionRoom over partysocket), the session id (sessionStorage, so two
 * tabs are two players and a reload keeps its player), drawing, input, and
 * the status line.
 * Must not: keep its own copy of the game state: the dots are drawn only
 * from `room`, which load() fills from the server's sync packets.
 *
 * Development mode (lunaroom serve --dev, `make run`): when a save of the
 * room's file fails to load, the server sends
 * {"type":"dev_error","value":{file,line,message}} (the npm client ignores
 * it); the page draws it as an overlay (#dev-error) until a packet with
 * value null says the next save loaded.
 *
 * For tests and curious readers: window.__room is that state object,
 * window.__demo = { id, status, publicId, placed, conn, devError }, and each
 * player's <li> carries data-public-id / data-x / data-y; <body
 * data-status=...>.
 */
import { connectionRoom } from "@signe/sync/client";

const MAP = 1000; /* rooms/game.lua: x and y in [0, 1000] */
const STEP = 25; /* one arrow key press */
const SESSION_KEY = "lunaroom-demo-session";

const $ = (id) => document.getElementById(id);
const canvas = $("map");
const ctx = canvas.getContext("2d");

function sessionId() {
  let id = sessionStorage.getItem(SESSION_KEY);
  if (!id) {
    id = crypto.randomUUID ? crypto.randomUUID() : `s-${Date.now()}-${Math.random().toString(36).slice(2)}`;
    sessionStorage.setItem(SESSION_KEY, id);
  }
  return id;
}

/** A stable colour per publicId (FNV-1a, spread around the hue circle). */
function colorOf(pid) {
  let h = 0x811c9dc5;
  for (let i = 0; i < pid.length; i++) h = Math.imul(h ^ pid.charCodeAt(i), 0x01000193) >>> 0;
  return `hsl(${Math.round((h * 0.618033988749895 * 360) % 360)} 75% 48%)`;
}

const room = {}; /* filled by @signe/sync's load() from each sync packet */
const demo = {
  id: sessionId(),
  status: "connecting",
  publicId: undefined,
  placed: false,
  conn: undefined,
  devError: null,
};
window.__room = room;
window.__demo = demo;

function setStatus(s) {
  demo.status = s;
  document.body.dataset.status = s;
  $("status").textContent = s;
}

function players() {
  const p = room.players || {};
  return Object.keys(p)
    .sort()
    .map((pid) => ({ pid, x: Number(p[pid]?.x) || 0, y: Number(p[pid]?.y) || 0, score: p[pid]?.score ?? 0 }));
}

function render() {
  const scale = canvas.width / MAP;
  ctx.fillStyle = "#f4f5f7";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#e2e4e9";
  ctx.lineWidth = 1;
  for (let g = 100; g < MAP; g += 100) {
    ctx.beginPath();
    ctx.moveTo(g * scale + 0.5, 0);
    ctx.lineTo(g * scale + 0.5, canvas.height);
    ctx.moveTo(0, g * scale + 0.5);
    ctx.lineTo(canvas.width, g * scale + 0.5);
    ctx.stroke();
  }
  const list = $("players");
  list.replaceChildren();
  for (const p of players()) {
    const me = p.pid === demo.publicId;
    ctx.beginPath();
    ctx.arc(p.x * scale, p.y * scale, me ? 11 : 9, 0, Math.PI * 2);
    ctx.fillStyle = colorOf(p.pid);
    ctx.fill();
    if (me) {
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#111";
      ctx.stroke();
    }
    ctx.fillStyle = "#1d2330";
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText(me ? "you" : p.pid.slice(0, 4), p.x * scale + 14, p.y * scale + 4);
    const li = document.createElement("li");
    li.dataset.publicId = p.pid;
    li.dataset.x = String(p.x);
    li.dataset.y = String(p.y);
    li.style.setProperty("--c", colorOf(p.pid));
    li.textContent = `${p.pid}${me ? " (you)" : ""}: ${p.x}, ${p.y}`;
    list.append(li);
  }
  $("count").textContent = String(players().length);
  $("pid").textContent = demo.publicId ?? "-";
}

/** The development-mode overlay: shown for a dev_error value, removed for null. */
function showDevError(err) {
  demo.devError = err;
  let box = $("dev-error");
  if (!err) {
    box?.remove();
    return;
  }
  if (!box) {
    box = document.createElement("div");
    box.id = "dev-error";
    box.setAttribute("role", "alert");
    box.style.cssText =
      "position:fixed;inset:auto 16px 16px 16px;max-height:50vh;overflow:auto;padding:14px 18px;" +
      "background:#2b0b0b;color:#ffd7d7;border:2px solid #e5484d;border-radius:8px;" +
      "font:13px/1.5 ui-monospace,monospace;white-space:pre-wrap;box-shadow:0 6px 24px #0006;z-index:10";
    document.body.append(box);
  }
  const where = `${err.file ?? "?"}${err.line != null ? `:${err.line}` : ""}`;
  box.replaceChildren();
  /* No sync yet: the room file did not load at start, so no code of this
   * room runs; the server keeps the socket and joins it after a good save. */
  const running = demo.publicId != null;
  const head = document.createElement("strong");
  head.textContent = `${running ? "The room failed to reload" : "The room file does not load"}: ${where}`;
  const msg = document.createElement("div");
  msg.textContent = String(err.message ?? "");
  const note = document.createElement("div");
  note.style.opacity = "0.7";
  note.textContent = running
    ? "The previous code is still running. Save a fixed file to clear this."
    : "The room is not running yet. Save a fixed file: this page joins it then.";
  box.append(head, msg, note);
}

const clamp = (v) => Math.max(0, Math.min(MAP, Math.round(v)));

function moveTo(x, y) {
  if (!demo.conn) return;
  demo.conn.emit("move", { x: clamp(x), y: clamp(y) });
}

function me() {
  return demo.publicId && room.players ? room.players[demo.publicId] : undefined;
}

window.addEventListener("keydown", (e) => {
  const d = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[e.key];
  const p = me();
  if (!d || !p) return;
  e.preventDefault();
  moveTo(p.x + d[0] * STEP, p.y + d[1] * STEP);
});

canvas.addEventListener("click", (e) => {
  /* offsetX/Y: from the padding edge, so the border does not skew the map */
  moveTo((e.offsetX / canvas.clientWidth) * MAP, (e.offsetY / canvas.clientHeight) * MAP);
});

async function main() {
  setStatus("connecting");
  render();
  const conn = await connectionRoom(
    {
      host: location.host,
      protocol: location.protocol === "https:" ? "wss" : "ws",
      party: "main",
      room: "game",
      id: demo.id,
      query: { id: demo.id },
    },
    room,
  );
  demo.conn = conn;
  const ws = conn.conn; /* the PartySocket: reconnects by itself */
  ws.addEventListener("open", () => setStatus("connected"));
  ws.addEventListener("close", (e) => {
    if (e.code === 4003) {
      /* POST /admin/kick closes with 4003: stay out (partysocket would reconnect). */
      ws.close();
      setStatus("kicked by an admin: reload to rejoin");
    } else {
      setStatus(`disconnected (code ${e.code}), reconnecting`);
    }
  });
  /* Registered after connectionRoom's own listener, so `room` is up to date. */
  ws.addEventListener("message", (e) => {
    if (typeof e.data === "string" && e.data.includes('"dev_error"')) {
      try {
        const p = JSON.parse(e.data);
        if (p && p.type === "dev_error") showDevError(p.value ?? null);
      } catch {
        /* not ours */
      }
    }
    if (room.pId) demo.publicId = room.pId;
    const p = me();
    if (p && !demo.placed) {
      demo.placed = true;
      /* A new player starts at (0, 0): put it somewhere visible. */
      if (p.x === 0 && p.y === 0) moveTo(100 + Math.random() * 800, 100 + Math.random() * 800);
    }
    render();
  });
  if (ws.readyState === 1) setStatus("connected");
}

main().catch((err) => {
  setStatus(`error: ${err && err.message ? err.message : err}`);
  console.error(err);
});

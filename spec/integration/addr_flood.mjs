// Many WebSockets from one address, each within the room's own rate limit
// (its own process, so it does not slow the test's event loop).
// Usage: node addr_flood.mjs URL SOCKETS PER_SOCKET_PER_SEC DURATION_MS
// Prints {"opened":n,"sent":n,"closes":{code:count}} and exits.
import WebSocket from "ws";
const [url, nS, rateS, durS] = process.argv.slice(2);
const n = Number(nS), rate = Number(rateS), dur = Number(durS);
let opened = 0, sent = 0;
const closes = {};
const frame = JSON.stringify({ action: "work" });
const socks = [];
for (let i = 0; i < n; i++) {
  const ws = new WebSocket(`${url}?id=flood${i}`, { localAddress: "127.0.0.1" });
  ws.on("open", () => opened++);
  ws.on("error", () => {});
  ws.on("close", (code) => (closes[code] = (closes[code] || 0) + 1));
  socks.push(ws);
}
// every 100 ms each open socket sends rate/10 frames
const per = Math.max(1, Math.round(rate / 10));
const t0 = Date.now();
const timer = setInterval(() => {
  for (const ws of socks) {
    if (ws.readyState !== 1) continue;
    for (let k = 0; k < per; k++) ws.send(frame);
    sent += per;
  }
  if (Date.now() - t0 >= dur) {
    clearInterval(timer);
    for (const ws of socks) ws.terminate();
    setTimeout(() => {
      console.log(JSON.stringify({ opened, sent, closes }));
      process.exit(0);
    }, 100);
  }
}, 100);

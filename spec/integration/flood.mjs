// A flooding client in its own process (so it does not slow the test's own
// event loop): sends as fast as it can until the server closes it, then
// prints {"code":..,"rateLimited":bool} and exits. Usage: node flood.mjs URL
import WebSocket from "ws";
const ws = new WebSocket(process.argv[2]);
let rateLimited = false;
ws.on("message", (d) => {
  try {
    const m = JSON.parse(d.toString());
    if (m.type === "error" && m.value.code === "rate_limit") rateLimited = true;
  } catch {}
});
ws.on("open", async () => {
  const frame = JSON.stringify({ action: "inc" });
  while (ws.readyState === 1) {
    for (let i = 0; i < 200; i++) ws.send(frame);
    await new Promise((r) => setTimeout(r, 1));
  }
});
ws.on("close", (code) => {
  console.log(JSON.stringify({ code, rateLimited }));
  process.exit(0);
});
setTimeout(() => { console.log(JSON.stringify({ code: null, rateLimited })); process.exit(1); }, 10000);

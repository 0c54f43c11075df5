/*
 * demo.test.mjs - end-to-end: the browser demo (rooms/static, built on the
 * npm @signe/sync client) and the admin page, served by the real
 * build/lunaroom, in Debian's headless chromium driven by playwright-core.
 *
 * Owns: the browser (a fresh user-data-dir per run), the two player pages,
 * the admin page, the development-mode overlay (a second server, --dev, on a
 * temporary copy of rooms/), and the artifacts in spec/e2e/artifacts/
 * (demo.png, admin.png, dev-error.png, metrics.txt).
 * Must not: download a browser (CHROMIUM, default /usr/bin/chromium, must
 * exist: CI installs Debian's chromium), or leave the server or the browser
 * running (after() closes both; lib.mjs kills the server on exit).
 *
 * Run: spec/e2e/run.sh (npm ci, then node --test this file).
 */
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { ROOT, startServer, tempDir } from "../integration/lib.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = path.join(HERE, "artifacts");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SECRET = "e2e-" + crypto.randomBytes(8).toString("hex");
const WAIT = { timeout: 10000 };

/** An HS256 JWT for the admin endpoints: worlds ["*"], 10 minutes. */
function adminToken() {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub: "e2e", worlds: ["*"], exp: Math.floor(Date.now() / 1000) + 600 });
  const sig = crypto.createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

let srv;
let context;
let userDataDir;
const pageErrors = [];

before(async () => {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium, or make deps)`);
  }
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  srv = await startServer({
    rooms: "rooms",
    args: ["--static", "rooms/static", "--no-watch"],
    env: { AUTH_JWT_SECRET: SECRET },
  });
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "lunaroom-e2e-chromium-"));
  // Playwright refuses --user-data-dir in args: a persistent context is the
  // same thing (a fresh, empty profile folder). Tabs still get their own
  // sessionStorage, so two pages are two players.
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 900, height: 620 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await context?.close().catch(() => {});
  const code = await srv?.stop();
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  if (code !== undefined && code !== 0) console.error(`server exited with ${code}:\n${srv.logs()}`);
});

async function openPlayer() {
  const page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(`${page.url()}: ${e.message}`));
  await page.goto(`${srv.url}/`);
  await page.waitForSelector('body[data-status="connected"]', WAIT);
  // Connected, knows its publicId, and has been put somewhere visible.
  await page.waitForFunction(() => {
    const d = window.__demo;
    const p = d.publicId && window.__room.players?.[d.publicId];
    return d.placed && p && (p.x !== 0 || p.y !== 0);
  }, null, WAIT);
  const publicId = await page.evaluate(() => window.__demo.publicId);
  assert.match(await page.textContent("#pid"), new RegExp(`^${publicId}$`));
  return { page, publicId };
}

/** Resolves when `page` shows player `pid` at (x, y), in the state and in the DOM. */
async function seesAt(page, pid, x, y) {
  const seen = () => page.evaluate((pid) => JSON.stringify(window.__room.players?.[pid]), pid).catch((e) => e.message);
  await page.waitForFunction(
    ([pid, x, y]) => {
      const p = window.__room.players?.[pid];
      const li = document.querySelector(`li[data-public-id="${pid}"]`);
      return p && p.x === x && p.y === y && li && li.dataset.x === String(x) && li.dataset.y === String(y);
    },
    [pid, x, y],
    WAIT,
  ).catch(async (e) => {
    throw new Error(`${page.url()} never showed ${pid} at (${x}, ${y}); it shows ${await seen()}: ${e.message}`);
  });
}

const position = (page, pid) => page.evaluate((pid) => ({ ...window.__room.players[pid] }), pid);

describe("browser demo", () => {
  let a;
  let b;

  test("two tabs are two players and see each other move", async () => {
    a = await openPlayer();
    b = await openPlayer();
    assert.notEqual(a.publicId, b.publicId, "each tab has its own session");
    const idA = await a.page.evaluate(() => sessionStorage.getItem("lunaroom-demo-session"));
    assert.ok(idA, "session id kept in sessionStorage");

    // Both know both, at the same place.
    const startA = await position(a.page, a.publicId);
    await seesAt(b.page, a.publicId, startA.x, startA.y);
    const startB = await position(b.page, b.publicId);
    await seesAt(a.page, b.publicId, startB.x, startB.y);

    // A click on A's map (500 px canvas for a 1000 unit map) moves A's dot in B.
    const target = startA.x === 600 && startA.y === 300 ? { px: 100, py: 50 } : { px: 300, py: 150 };
    await a.page.click("#map", { position: { x: target.px, y: target.py } });
    await seesAt(b.page, a.publicId, target.px * 2, target.py * 2);

    // Arrow keys: 25 units per press.
    await a.page.keyboard.press("ArrowLeft");
    await seesAt(b.page, a.publicId, target.px * 2 - 25, target.py * 2);

    // And the other way round.
    const down = Math.min(1000, startB.y + 25);
    await b.page.keyboard.press("ArrowDown");
    await seesAt(a.page, b.publicId, startB.x, down);

    await b.page.screenshot({ path: path.join(ARTIFACTS, "demo.png") });
    assert.ok(fs.statSync(path.join(ARTIFACTS, "demo.png")).size > 1000);

    // What Prometheus would scrape now (kept as an artifact next to the screenshot).
    const metrics = await (await fetch(`${srv.url}/metrics`)).text();
    fs.writeFileSync(path.join(ARTIFACTS, "metrics.txt"), metrics);
    const moves = Number(/^lunaroom_actions_total\{room="game"\} (\S+)$/m.exec(metrics)?.[1]);
    assert.ok(moves >= 5, `3 moves + 2 placements counted, got ${moves}`);
    assert.match(metrics, /^lunaroom_connections 2$/m);
  });

  test("a reload keeps the player (same session id, same publicId)", async () => {
    await a.page.reload();
    await a.page.waitForSelector('body[data-status="connected"]', WAIT);
    await a.page.waitForFunction((pid) => window.__demo.publicId === pid, a.publicId, WAIT);
  });

  test("admin page: lists rooms and users, kicks a user, disposes a room", async () => {
    const admin = await context.newPage();
    admin.on("pageerror", (e) => pageErrors.push(`${admin.url()}: ${e.message}`));
    admin.on("dialog", (d) => d.accept());
    await admin.goto(`${srv.url}/admin.html`);
    await admin.fill("#token", adminToken());
    await admin.click("#save");
    const row = 'tr[data-room="main/game"]';
    await admin.waitForSelector(`${row} [data-public-id="${a.publicId}"]`, WAIT);
    await admin.waitForSelector(`${row} [data-public-id="${b.publicId}"]`, WAIT);
    const cells = await admin.$$eval(`${row} td`, (tds) => tds.map((td) => td.textContent));
    assert.equal(cells[1], "game", "path");
    assert.match(cells[2], /^[0-9a-f]+$/, "code version");
    assert.match(cells[4], /\d+(\.\d)? (B|KiB)/, "state size");
    assert.notEqual(await admin.textContent("#s-mem"), "-", "Lua memory");
    assert.equal(
      await admin.evaluate(() => localStorage.getItem("lunaroom-admin-token")),
      await admin.inputValue("#token"),
      "token kept in localStorage",
    );
    await admin.screenshot({ path: path.join(ARTIFACTS, "admin.png") });

    // Kick B: its socket is closed with 4003 and the demo stays out (it
    // stops partysocket's reconnect) until the page is reloaded.
    await admin.click(`${row} [data-public-id="${b.publicId}"] button`);
    await admin.waitForFunction(() => /kicked .* 1 connection\(s\)/.test(document.getElementById("msg").textContent), null, WAIT);
    await b.page.waitForFunction(() => /^kicked/.test(document.body.dataset.status), null, WAIT);
    await admin.waitForFunction(
      (sel) => document.querySelector(sel)?.children[3].textContent === "1",
      row,
      WAIT,
    );
    await b.page.reload();
    await b.page.waitForSelector('body[data-status="connected"]', WAIT);
    await b.page.waitForFunction((pid) => window.__demo.publicId === pid, b.publicId, WAIT);

    // Dispose the room: both tabs are disconnected, reconnect, and are still two players.
    await admin.click(`${row} button:text("dispose room")`);
    await admin.waitForFunction(() => /disposed main\/game/.test(document.getElementById("msg").textContent), null, WAIT);
    for (const p of [a, b]) {
      await p.page.waitForSelector('body[data-status="connected"]', WAIT);
      await p.page.waitForFunction((pid) => window.__room.players?.[pid] !== undefined, p.publicId, WAIT);
    }
    await admin.close();
  });

  test("development mode: a broken save shows an overlay, the next good save removes it", async () => {
    // A copy of the rooms folder: the test saves game.lua there.
    const dir = tempDir("lunaroom-e2e-dev-");
    fs.cpSync(path.join(ROOT, "rooms"), dir, { recursive: true, filter: (src) => !src.includes(`${path.sep}static`) });
    const dev = await startServer({ rooms: dir, args: ["--dev", "--static", "rooms/static"] });
    const page = await context.newPage();
    page.on("pageerror", (e) => pageErrors.push(`${page.url()}: ${e.message}`));
    try {
      await page.goto(`${dev.url}/`);
      await page.waitForSelector('body[data-status="connected"]', WAIT);
      await page.waitForFunction(() => window.__demo.placed, null, WAIT);
      assert.equal(await page.$("#dev-error"), null, "no overlay before a bad save");

      const file = path.join(dir, "game.lua");
      const good = fs.readFileSync(file, "utf8");
      fs.writeFileSync(file, good.replace("return lr.room {", "return lr.room {\n  broken = = 1,"));
      await page.waitForSelector("#dev-error", { ...WAIT, state: "visible" });
      const text = await page.textContent("#dev-error");
      assert.match(text, /game\.lua:\d+/, "file:line in the overlay");
      assert.match(text, /unexpected symbol/);
      assert.match(text, /The room failed to reload: .*The previous code is still running/s);
      await page.screenshot({ path: path.join(ARTIFACTS, "dev-error.png") });
      // A page opened (or reloaded) while the file is broken shows it too.
      await page.reload();
      await page.waitForSelector('body[data-status="connected"]', WAIT);
      await page.waitForSelector("#dev-error", { ...WAIT, state: "visible" });

      fs.writeFileSync(file, good + "\n-- saved again\n");
      await page.waitForSelector("#dev-error", { ...WAIT, state: "detached" });
      assert.equal(await page.evaluate(() => window.__demo.devError), null);
      assert.equal(await page.evaluate(() => document.body.dataset.status), "connected");
    } finally {
      await page.close();
      await dev.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("development mode: a room file that fails at start shows the overlay; a good save joins the page", async () => {
    const dir = tempDir("lunaroom-e2e-dev-start-");
    fs.cpSync(path.join(ROOT, "rooms"), dir, { recursive: true, filter: (src) => !src.includes(`${path.sep}static`) });
    const file = path.join(dir, "game.lua");
    const good = fs.readFileSync(file, "utf8");
    fs.writeFileSync(file, good.replace("return lr.room {", "return lr.room {\n  broken = = 1,"));
    const dev = await startServer({ rooms: dir, args: ["--dev", "--static", "rooms/static"] });
    const page = await context.newPage();
    page.on("pageerror", (e) => pageErrors.push(`${page.url()}: ${e.message}`));
    try {
      await page.goto(`${dev.url}/`);
      await page.waitForSelector("#dev-error", { ...WAIT, state: "visible" });
      const text = await page.textContent("#dev-error");
      assert.match(text, /game\.lua:\d+/, "file:line in the overlay");
      assert.match(text, /unexpected symbol/);
      assert.match(text, /The room file does not load: .*The room is not running yet/s);
      assert.notEqual(await page.evaluate(() => window.__demo.placed), true, "no room yet");
      await page.screenshot({ path: path.join(ARTIFACTS, "dev-error-at-start.png") });

      fs.writeFileSync(file, good + "\n-- fixed\n");
      await page.waitForSelector("#dev-error", { ...WAIT, state: "detached" });
      await page.waitForFunction(() => window.__demo.placed, null, WAIT);
      assert.equal(await page.evaluate(() => window.__demo.devError), null);
      assert.equal(await page.evaluate(() => document.body.dataset.status), "connected");
    } finally {
      await page.close();
      await dev.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("no script errors in any page", () => {
    assert.deepEqual(pageErrors, []);
  });
});

/*
 * run.mjs - runs every spec/integration/*.test.mjs with node's built-in test
 * runner, one file after the other (each file starts its own servers).
 *
 * Owns: test discovery and the exit status (non-zero if any file failed).
 * Must not: install anything or build the server (see package.json and the
 * README's test command).
 *
 * Usage: node spec/integration/run.mjs [substring ...]   (filters file names)
 */
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const dir = path.dirname(fileURLToPath(import.meta.url));
if (!fs.existsSync(path.join(dir, "node_modules", "ws"))) {
  console.error(`missing node_modules: run \`npm ci\` in ${dir}`);
  process.exit(2);
}
const filters = process.argv.slice(2);
const files = fs
  .readdirSync(dir)
  .filter((f) => f.endsWith(".test.mjs"))
  .filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)))
  .sort();
if (files.length === 0) {
  console.error("no test files matched");
  process.exit(2);
}

const failed = [];
for (const f of files) {
  console.log(`\n# ${f}`);
  const r = spawnSync(process.execPath, ["--test", "--test-reporter=spec", path.join(dir, f)], {
    cwd: dir,
    stdio: "inherit",
  });
  if (r.status !== 0) failed.push(f);
}
console.log(
  failed.length
    ? `\n${failed.length} of ${files.length} test files failed: ${failed.join(", ")}`
    : `\nall ${files.length} test files passed`,
);
process.exit(failed.length ? 1 : 0);

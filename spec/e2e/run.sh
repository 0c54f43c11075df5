#!/usr/bin/env bash
# run.sh - the end-to-end browser test (demo.test.mjs): installs the pinned
# playwright-core with `npm ci` (no browser download: it drives Debian's
# chromium), checks that the committed rooms/static/demo.js matches its
# source, and runs the test. Exits non-zero on any failure.
# Needs: build/lunaroom (make build), node + npm, /usr/bin/chromium (or
# $CHROMIUM). Screenshots land in spec/e2e/artifacts/.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
export CHROMIUM
NPM_FLAGS=(--no-audit --no-fund --loglevel=error)

if [ ! -x "$CHROMIUM" ]; then
  echo "e2e: FAILED: $CHROMIUM not found. Install Debian's chromium: apt-get install -y chromium (make deps does)." >&2
  exit 1
fi
if [ ! -x "${LUNAROOM_BIN:-$ROOT/build/lunaroom}" ]; then
  echo "e2e: FAILED: ${LUNAROOM_BIN:-$ROOT/build/lunaroom} not found: run make build first." >&2
  exit 1
fi

npm ci "${NPM_FLAGS[@]}"
# The test reuses spec/integration/lib.mjs, which imports `ws` from there.
if [ ! -d ../integration/node_modules/ws ]; then
  (cd ../integration && npm ci "${NPM_FLAGS[@]}")
fi
# The committed bundle must be what its source builds to (esbuild, pinned).
(cd "$ROOT/rooms/static/src" && npm ci "${NPM_FLAGS[@]}" && npm run --silent check)

mkdir -p artifacts
rm -f artifacts/*.png artifacts/metrics.txt
node --test --test-reporter=spec demo.test.mjs
echo "e2e: artifacts in spec/e2e/artifacts/: $(cd artifacts && ls | tr "\n" " ")"

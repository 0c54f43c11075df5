# Thin wrapper around CMake. The two commands of the README:
#   make run    build and serve rooms/ on port 1999 with SQLite storage
#   make test   build everything (release + ASan/UBSan) and run every test
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
PORT       ?= 1999
FUZZ_SECONDS ?= 60
PREFIX     ?= /usr/local
DEB_BUILD  ?= build-deb

.PHONY: install package test-install test-tls test-package ensure-deps ensure-test-deps test-bench-smoke all build asan run test test-c test-spec test-asan test-integration test-e2e test-fuzz test-valgrind bench clean format deps

all: build

# On a fresh machine the Debian packages are installed on first use (as root;
# otherwise it says to run 'sudo make deps'). A no-op once they are there.
ensure-deps:
	@if ! pkg-config --exists lua5.4 libwebsockets sqlite3 libjwt libpq 2>/dev/null || \
	    ! command -v cmake >/dev/null || ! [ -f /usr/share/lua/5.4/busted/runner.lua ]; then \
	  if [ "$$(id -u)" = 0 ]; then $(MAKE) deps; else echo "missing packages: run 'sudo make deps'"; exit 1; fi; \
	fi

ensure-test-deps: ensure-deps
	@if ! command -v chromium >/dev/null || ! command -v clang >/dev/null || ! command -v valgrind >/dev/null || \
	    ! command -v openssl >/dev/null || ! command -v curl >/dev/null || ! command -v dpkg-shlibdeps >/dev/null || \
	    ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then $(MAKE) deps; else echo "missing packages: run 'sudo make deps'"; exit 1; fi; \
	fi

build: ensure-deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

asan:
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DLR_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j$(JOBS)

run: build
	./$(BUILD)/lunaroom serve rooms --dev --port $(PORT) --static rooms/static

test: ensure-test-deps build asan test-c test-spec test-asan test-valgrind test-integration test-e2e test-bench-smoke test-fuzz test-install test-package
	@echo "all test suites passed"

test-c: build
	lua5.4 host/tests/include_cycles.lua host
	lua5.4 host/tests/sizes.lua host
	./$(BUILD)/lr_tests

test-spec: build
	./$(BUILD)/lunaroom test spec

# The same C tests and specs under AddressSanitizer + UndefinedBehaviorSanitizer.
test-asan: asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  ./$(ASAN_BUILD)/lr_tests
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  ./$(ASAN_BUILD)/lunaroom test spec

# Wire-level tests: the real binary driven by the npm @signe/sync client and ws.
test-integration: build
	@if [ -f spec/integration/run.mjs ]; then \
	  cd spec/integration && npm ci --no-audit --no-fund --loglevel=error && node run.mjs; \
	else echo "no integration tests"; fi

# C unit tests and headless specs under valgrind memcheck: zero reports.
test-valgrind: build
	host/tests/valgrind.sh $(BUILD)

# libFuzzer targets (clang, ASan+UBSan): JSON decoder, action packets,
# URL/routes, JWT, bounded C functions of rooms, pre-auth ids (time-bounded), the URL parser of
# outgoing requests (fetch_url.c); FUZZ_SECONDS each (corpora in host/tests/fuzz/corpus).
test-fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) host/tests/fuzz/run.sh

# Browser end-to-end: the demo (rooms/static) and admin page in Debian's headless
# chromium, driven by playwright-core; screenshots in spec/e2e/artifacts/.
test-e2e: build
	spec/e2e/run.sh

# Keeps the load generator working (a few clients for a second; no figures asserted).
test-bench-smoke: build
	sh bench/smoke.sh

bench: build
	./$(BUILD)/bench/patch_bench
	./$(BUILD)/bench/storage_bench 1
	./$(BUILD)/lunaroom lua bench/persist_bench.lua
	./$(BUILD)/lunaroom lua bench/hibernate_bench.lua
	./$(BUILD)/lunaroom lua bench/schema_bench.lua
	node bench/compare.mjs $(BENCH_ARGS)

format:
	clang-format -i host/*.c host/*.h host/tests/*.c host/tests/*.h host/tests/fuzz/*.c host/tests/fuzz/*.h bench/*.c

# bin/lunaroom and share/lunaroom/lua under PREFIX (DESTDIR=... for staging).
install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

# build-deb/lunaroom_VERSION_ARCH.deb (CPack): /usr/bin/lunaroom, the Lua
# runtime, /etc/lunaroom/lunaroom.lua, the systemd unit (packaging/).
package: ensure-deps
	@cmake -S . -B $(DEB_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr \
	  -DLR_DEB=ON -DCMAKE_SKIP_INSTALL_ALL_DEPENDENCY=ON >/dev/null
	@cmake --build $(DEB_BUILD) -j$(JOBS) --target lunaroom
	cd $(DEB_BUILD) && cpack -G DEB
	@ls $(DEB_BUILD)/*.deb

# make install into a temp prefix; the installed binary (no source tree) runs
# `lunaroom init`, its spec and serves it; --version; --lua-modules.
test-install: build
	spec/install/run.sh $(BUILD)

# https:// and wss:// with a CA and certificates made by the test.
test-tls: build
	cd spec/integration && npm ci --no-audit --no-fund --loglevel=error && node run.mjs tls

# As root: build the .deb, dpkg -i, serve the installed config, connect,
# purge; nothing dpkg -L listed remains. Skipped (said so) when not root.
test-package:
	spec/package/run.sh

# Debian 12 packages the build and the tests need (used by .ci/run).
deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  build-essential cmake pkg-config liblua5.4-dev lua5.4 libwebsockets-dev lua-cjson \
	  libsqlite3-dev libjwt-dev lua-busted sqlite3 chromium libpq-dev postgresql \
	  clang libclang-rt-14-dev llvm valgrind >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  libssl-dev openssl curl ca-certificates dpkg-dev file fakeroot adduser lua-penlight >/dev/null
	command -v node >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-fuzz $(DEB_BUILD)

# qryptchatd: a self-hosted QryptChat WebSocket chat server.
#
#   make                      build build/qryptchatd and build/libqryptchat.a
#   make test                 unit, integration, web and browser tests (what CI runs)
#   make test-web             the web client library's tests (Node)
#   make test-browser         the chat page in headless Chromium (make deps-browser)
#   make run                  start a development server and print tokens
#   make install              PREFIX=/usr/local, DESTDIR for staging
#   make dist                 build/qryptchatd-VERSION.tar.gz from git HEAD
#   make SANITIZE=address,undefined test
#   make soak                 the soak test alone for SOAK_SECONDS (600) s
#   make fuzz                 run each libFuzzer target FUZZ_SECONDS (60) s
#   make bench                build the benchmark tools (bench/README.md)
#   make CROSS=aarch64-linux-gnu   arm64 build in build/arm64 (Raspberry Pi)
#   make test-arm64           arm64 unit and integration tests under qemu
#   make test-arm64-unit      arm64 unit tests only under qemu
#   make bench-peers          install the Node + ws comparison server
#   make lint                 mandoc -Tlint on the man pages
#   make clean

PREFIX     ?= /usr/local
SBINDIR    ?= $(PREFIX)/sbin
MANDIR     ?= $(PREFIX)/share/man
DATADIR    ?= $(PREFIX)/share
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
DESTDIR    ?=

CXX      ?= g++
CXXFLAGS ?= -O2 -g
LDFLAGS  ?=
SANITIZE ?=

PKG_CONFIG ?= pkg-config
DEPS := scripts/deps

# Sanitized objects live apart so that both builds can coexist.  FUZZ=1
# is the libFuzzer build (clang, ASan and UBSan), used by `make fuzz`.
# CROSS=aarch64-linux-gnu is the arm64 build (build/arm64) with Debian's
# cross compiler and Debian's arm64 libraries (multiarch, installed by
# scripts/deps --arm64); its tests run under qemu-aarch64-static.
ifneq ($(CROSS),)
ifneq ($(CROSS),aarch64-linux-gnu)
$(error CROSS=$(CROSS): only CROSS=aarch64-linux-gnu is supported)
endif
ifneq ($(SANITIZE)$(FUZZ),)
$(error CROSS does not combine with SANITIZE or FUZZ)
endif
BUILD := build/arm64
CXX := $(CROSS)-g++
AR := $(CROSS)-ar
PKG_CONFIG := PKG_CONFIG_PATH= PKG_CONFIG_LIBDIR=/usr/lib/$(CROSS)/pkgconfig:/usr/share/pkgconfig \
	pkg-config
DEPS := scripts/deps --arm64
# Runs arm64 programs here: the test binaries, and the servers that the
# integration tests start (QRYPTCHATD_WRAPPER, tests/support/spawn.cpp).
# The arm64 loader and libraries are where multiarch puts them
# (/lib/ld-linux-aarch64.so.1, /usr/lib/aarch64-linux-gnu), so qemu needs
# no -L prefix and no binfmt_misc registration.
EMULATOR ?= qemu-aarch64-static
TEST_ENV = QRYPTCHATD_WRAPPER="$(EMULATOR)"
else ifneq ($(FUZZ),)
BUILD := build/fuzz
CXX := clang++
SANFLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer \
	-fno-sanitize-recover=all
else ifeq ($(SANITIZE),)
BUILD := build
else
BUILD := build/sanitize
SANFLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
endif

# Dependencies first: scripts/deps installs missing Debian packages (as
# root) or says exactly what to install.  Not needed to clean.
NODEPS_GOALS := clean help uninstall bench-peers deps-browser
ifneq ($(filter-out $(NODEPS_GOALS),$(or $(MAKECMDGOALS),all)),)
DEPS_STATUS := $(shell $(DEPS) >&2; echo $$?)
ifneq ($(DEPS_STATUS),0)
$(error build dependencies are missing, see above)
endif
endif

PKGS       := libwebsockets libcjson openssl sqlite3 libpq hiredis
# Debian 12's libwebsockets-dev is not co-installable for two architectures
# (lws_config.h differs in LWS_INSTALL_LIBDIR only), so without its arm64
# .pc file the arm64 build uses the native headers (on the cross compiler's
# include path) and links the arm64 library by its file name.
# libpq-dev is not co-installable either; its headers are the same for
# both architectures, and libpq5:arm64 provides the library.
ifneq ($(CROSS),)
ifeq ($(shell $(PKG_CONFIG) --exists libwebsockets && echo yes),)
PKGS       := libcjson openssl sqlite3 hiredis
LWS_LIBS   := -l:libwebsockets.so.17 -l:libpq.so.5
PKG_XFLAGS := -I/usr/include/postgresql
endif
endif
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null) $(PKG_XFLAGS)
PKG_LIBS   := $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null) $(LWS_LIBS) -lev
CMOCKA     := $(shell $(PKG_CONFIG) --libs cmocka 2>/dev/null)

WARN := -Wall -Wextra -Wpedantic -Wshadow -Wformat=2 -Wnon-virtual-dtor \
	-Wnull-dereference -Wimplicit-fallthrough -Wundef -Wcast-qual -Wmissing-declarations
QC_CXXFLAGS := -std=c++17 $(WARN) -Iinclude -I$(BUILD)/gen $(PKG_CFLAGS) $(SANFLAGS) \
	-DQC_DEFAULT_CONFIG='"$(SYSCONFDIR)/qryptchatd/qryptchatd.conf"' \
	-DQC_DEFAULT_WEB_ROOT='"$(DATADIR)/qryptchatd/web"' \
	$(CXXFLAGS) -MMD -MP
QC_LDFLAGS := $(SANFLAGS) $(LDFLAGS)

LIB_SRCS := $(wildcard src/*.cpp src/handlers/*.cpp)
LIB_SRCS := $(filter-out src/main.cpp,$(LIB_SRCS))
LIB_OBJS := $(LIB_SRCS:%.cpp=$(BUILD)/%.o) $(BUILD)/gen/schema_sql.o \
	$(BUILD)/gen/schema_postgres_sql.o
MAIN_OBJ := $(BUILD)/src/main.o

UNIT_SRCS := $(wildcard tests/unit/test_*.cpp)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.cpp=$(BUILD)/tests/unit/%)
FAKE_OBJS := $(patsubst %.cpp,$(BUILD)/%.o,$(wildcard tests/unit/fakes/*.cpp))
SUPPORT_OBJS := $(patsubst %.cpp,$(BUILD)/%.o,$(filter-out tests/support/selftest.cpp,$(wildcard tests/support/*.cpp)))
# Private PostgreSQL and Redis servers for the tests that need them
# (tests/engines/engines.hpp); linked into unit and integration tests.
ENGINE_OBJS := $(patsubst %.cpp,$(BUILD)/%.o,$(wildcard tests/engines/*.cpp))
INTEG_SRCS := $(wildcard tests/integration/test_*.cpp)
INTEG_BINS := $(INTEG_SRCS:tests/integration/%.cpp=$(BUILD)/tests/integration/%)

# A release tarball (make dist) carries its version in VERSION.
VERSION := $(shell cat VERSION 2>/dev/null || git describe --tags --always --dirty 2>/dev/null || \
	echo 0.1.0)

BENCH_BINS := $(BUILD)/bench/qryptchat-bench $(BUILD)/bench/loop-cost

# examples/embed.cpp: an appliance hosting the server in its own process;
# `make test` runs it (it starts, checks /health, stops).
EXAMPLE_BINS := $(BUILD)/examples/embed

# Fuzz targets (tests/fuzz/fuzz_<name>.cpp).  `make test` replays their
# seed corpus and regression inputs with the ordinary build; `make fuzz`
# builds them with libFuzzer and runs each for FUZZ_SECONDS.
FUZZ_TARGETS := request jwt config
FUZZ_SECONDS ?= 60
REPLAY_BINS := $(FUZZ_TARGETS:%=$(BUILD)/tests/fuzz/replay_%)
FUZZ_BINS := $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)

.PHONY: all test unit integration soak run install uninstall clean lint help bench bench-peers \
	fuzz fuzzers dist test-web test-browser deps-browser test-arm64 test-arm64-unit FORCE

all: $(BUILD)/qryptchatd $(BUILD)/libqryptchat.a

help:
	@sed -n '3,19p' Makefile

$(BUILD)/qryptchatd: $(MAIN_OBJ) $(BUILD)/libqryptchat.a
	$(CXX) $(QC_LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BUILD)/libqryptchat.a: $(LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(QC_CXXFLAGS) -c -o $@ $<

# The schema is compiled in, so the binary is all an install needs.
$(BUILD)/gen/schema_sql.cpp: schema.sql
	@mkdir -p $(dir $@)
	{ printf 'extern "C" const char kSchemaSql[];\nextern "C" const char kSchemaSql[] = R"QCSQL('; \
	  cat schema.sql; printf ')QCSQL";\n'; } > $@

$(BUILD)/gen/schema_sql.o: $(BUILD)/gen/schema_sql.cpp
	$(CXX) $(QC_CXXFLAGS) -c -o $@ $<

$(BUILD)/gen/schema_postgres_sql.cpp: schema-postgres.sql
	@mkdir -p $(dir $@)
	{ printf 'extern "C" const char kSchemaPostgresSql[];\nextern "C" const char kSchemaPostgresSql[] = R"QCSQL('; \
	  cat schema-postgres.sql; printf ')QCSQL";\n'; } > $@

$(BUILD)/gen/schema_postgres_sql.o: $(BUILD)/gen/schema_postgres_sql.cpp
	$(CXX) $(QC_CXXFLAGS) -c -o $@ $<

# The version is rewritten only when it changes, so main.o rebuilds then.
$(BUILD)/gen/version.h: FORCE
	@mkdir -p $(dir $@)
	@echo '#define QC_VERSION "$(VERSION)"' > $@.tmp
	@cmp -s $@.tmp $@ && rm -f $@.tmp || mv $@.tmp $@

$(MAIN_OBJ): $(BUILD)/gen/version.h
$(MAIN_OBJ): QC_CXXFLAGS += -include $(BUILD)/gen/version.h

$(BUILD)/tests/unit/%: $(BUILD)/tests/unit/%.o $(FAKE_OBJS) $(ENGINE_OBJS) $(BUILD)/libqryptchat.a
	$(CXX) $(QC_LDFLAGS) -o $@ $^ $(PKG_LIBS) $(CMOCKA)

$(BUILD)/tests/integration/%: $(BUILD)/tests/integration/%.o $(SUPPORT_OBJS) $(ENGINE_OBJS)
	$(CXX) $(QC_LDFLAGS) -o $@ $^ $(PKG_LIBS) $(CMOCKA)

# The fault injector that test_store_faults preloads into the server; not
# instrumented under SANITIZE (it runs ahead of the sanitizer runtime).
FAULTFS := $(BUILD)/tests/faultfs/libqcfault.so
$(FAULTFS): tests/faultfs/faultfs.cpp
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 -O2 -g $(WARN) -fPIC -shared -o $@ $< -ldl

$(BUILD)/examples/%: $(BUILD)/examples/%.o $(BUILD)/libqryptchat.a
	$(CXX) $(QC_LDFLAGS) -o $@ $^ $(PKG_LIBS) -pthread

$(BUILD)/tests/fuzz/replay_%: $(BUILD)/tests/fuzz/fuzz_%.o $(BUILD)/tests/fuzz/replay.o \
		$(BUILD)/libqryptchat.a
	$(CXX) $(QC_LDFLAGS) -o $@ $^ $(PKG_LIBS) $(CMOCKA)

build/fuzz/fuzz_%: build/fuzz/tests/fuzz/fuzz_%.o build/fuzz/libqryptchat.a
	$(CXX) -fsanitize=fuzzer,address,undefined $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

# Tests run from the repository root; integration tests start the binary
# named by QRYPTCHATD on 127.0.0.1 port 0.
# Under SANITIZE, every process (tests and the servers they start) writes
# its sanitizer reports under $(BUILD)/sanitizer-reports; any report fails
# the run, even one from a server a test stopped.
ifneq ($(SANITIZE),)
TEST_ENV = SANITIZER_REPORTS=$(BUILD)/sanitizer-reports \
	ASAN_OPTIONS=log_path=$(BUILD)/sanitizer-reports/asan:detect_leaks=1 \
	UBSAN_OPTIONS=log_path=$(BUILD)/sanitizer-reports/ubsan:print_stacktrace=1
endif

test: all $(UNIT_BINS) $(REPLAY_BINS) $(INTEG_BINS) $(FAULTFS) $(EXAMPLE_BINS) lint
	@QRYPTCHATD=$(BUILD)/qryptchatd QC_MAKE_FLAGS="SANITIZE=$(SANITIZE)" $(TEST_ENV) \
		scripts/run-tests $(UNIT_BINS) $(REPLAY_BINS) $(INTEG_BINS) $(EXAMPLE_BINS) \
		scripts/test-install scripts/test-web scripts/test-browser

unit: $(UNIT_BINS) $(REPLAY_BINS)
	@$(TEST_ENV) scripts/run-tests $(UNIT_BINS) $(REPLAY_BINS)

# The browser library's tests (Node's test runner against the real server).
test-web: all
	@QRYPTCHATD=$(BUILD)/qryptchatd scripts/test-web

# The chat page in headless Chromium (skipped when Chromium is absent;
# `make deps-browser` installs it).
test-browser: all
	@QRYPTCHATD=$(BUILD)/qryptchatd scripts/test-browser

deps-browser:
	@scripts/deps-browser

# Fuzzing: scripts/run-fuzz says what it found and where.
fuzz:
	@$(MAKE) --no-print-directory FUZZ=1 fuzzers
	@scripts/run-fuzz $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzzers: $(FUZZ_BINS)

integration: all $(INTEG_BINS) $(FAULTFS)
	@QRYPTCHATD=$(BUILD)/qryptchatd $(TEST_ENV) scripts/run-tests $(INTEG_BINS)

# The soak test alone, for longer than in `make test` (which runs it for
# its default of 20 s); with SANITIZE, a leak report fails it as there.
SOAK_SECONDS ?= 600
soak: all $(BUILD)/tests/integration/test_soak
	@QRYPTCHATD=$(BUILD)/qryptchatd SOAK_SECONDS=$(SOAK_SECONDS) $(TEST_ENV) \
		scripts/run-tests $(BUILD)/tests/integration/test_soak

# The arm64 build's tests, each binary and each server it starts run by
# qemu-aarch64-static on this machine (make test-arm64 is the same as
# make CROSS=aarch64-linux-gnu test-arm64): the unit tests, the fuzz
# corpus replays, every integration test (the fault injector is built for
# arm64 and preloaded into the emulated server; test_disk_full's mount
# namespace works as root) and examples/embed.  Not run: lint, the fuzzers,
# scripts/test-install (make install of the native build), scripts/test-web
# and scripts/test-browser (Node starts the server itself, without the
# emulator).
# test_soak runs too: its protocol and descriptor checks hold as natively;
# its RSS bound (10 % over the warm-up plateau) is not asserted there,
# since the RSS is then mostly qemu's translation cache (+5 to +6 % over a
# run, against +0.5 % natively).
# Integration tests that cannot run under emulation are listed here, each
# with its reason; none is now.
ARM64_SKIP :=
ifneq ($(CROSS),)
ARM64_INTEG_BINS := $(filter-out $(ARM64_SKIP:%=$(BUILD)/tests/integration/%),$(INTEG_BINS))

test-arm64: all $(UNIT_BINS) $(REPLAY_BINS) $(ARM64_INTEG_BINS) $(FAULTFS) $(EXAMPLE_BINS)
	@QRYPTCHATD=$(BUILD)/qryptchatd $(TEST_ENV) \
		scripts/run-tests $(UNIT_BINS) $(REPLAY_BINS) $(ARM64_INTEG_BINS) $(EXAMPLE_BINS)

test-arm64-unit: $(UNIT_BINS) $(REPLAY_BINS)
	@$(TEST_ENV) scripts/run-tests $(UNIT_BINS) $(REPLAY_BINS)

# `make test` also installs and runs the web tests, which are the native
# build's; the arm64 build has test-arm64.
ifneq ($(filter test,$(MAKECMDGOALS)),)
$(error make CROSS=$(CROSS) test: run make test-arm64)
endif
else
test-arm64 test-arm64-unit:
	@$(MAKE) --no-print-directory CROSS=aarch64-linux-gnu $@
endif

# Benchmark tools (never part of `make test`); bench/README.md says how to
# run them.
bench: all $(BENCH_BINS)
	@echo "built: $(BENCH_BINS)"

# The Node + ws comparison server (bench/peers/node), from the npm registry;
# better-sqlite3 compiles against the system's Node headers.
bench-peers:
	cd bench/peers/node && npm_config_nodedir=/usr npm ci --no-audit --no-fund

$(BUILD)/bench/qryptchat-bench: $(BUILD)/bench/qryptchat-bench.o $(BUILD)/libqryptchat.a
	$(CXX) $(QC_LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BUILD)/bench/loop-cost: $(BUILD)/bench/loop-cost.o $(BUILD)/tests/support/wsclient.o
	$(CXX) $(QC_LDFLAGS) -o $@ $^ $(PKG_LIBS)

lint:
	@for m in man/*.[0-9]; do mandoc -Tlint -Wwarning $$m || exit 1; done
	@echo "man pages: mandoc -Tlint clean"

run: all
	@scripts/run-dev $(BUILD)/qryptchatd

WEB_FILES := $(wildcard web/*.html web/*.js web/*.css web/*.svg web/*.png web/*.ico \
	web/*.webmanifest)

install: all
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5 \
		$(DESTDIR)$(SYSCONFDIR)/qryptchatd $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(DATADIR)/qryptchatd/web
	install -m 755 $(BUILD)/qryptchatd $(DESTDIR)$(SBINDIR)/qryptchatd
	install -m 644 man/qryptchatd.8 $(DESTDIR)$(MANDIR)/man8/qryptchatd.8
	install -m 644 man/qryptchatd.conf.5 $(DESTDIR)$(MANDIR)/man5/qryptchatd.conf.5
	install -m 644 etc/qryptchatd.service $(DESTDIR)$(UNITDIR)/qryptchatd.service
	$(if $(WEB_FILES),install -m 644 $(WEB_FILES) $(DESTDIR)$(DATADIR)/qryptchatd/web/)
	@# An existing configuration is the operator's: never overwritten.
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/qryptchatd/qryptchatd.conf ]; then \
		echo "keeping existing $(DESTDIR)$(SYSCONFDIR)/qryptchatd/qryptchatd.conf"; \
	else \
		sed 's|^# web_root .*|# web_root $(DATADIR)/qryptchatd/web|' etc/qryptchatd.conf \
			> $(DESTDIR)$(SYSCONFDIR)/qryptchatd/qryptchatd.conf; \
		chmod 644 $(DESTDIR)$(SYSCONFDIR)/qryptchatd/qryptchatd.conf; \
	fi

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/qryptchatd $(DESTDIR)$(MANDIR)/man8/qryptchatd.8 \
		$(DESTDIR)$(MANDIR)/man5/qryptchatd.conf.5 $(DESTDIR)$(UNITDIR)/qryptchatd.service
	rm -rf $(DESTDIR)$(DATADIR)/qryptchatd/web
	-rmdir $(DESTDIR)$(DATADIR)/qryptchatd 2>/dev/null

# A source tarball of HEAD, named and stamped with the version.
dist:
	@mkdir -p build/dist/qryptchatd-$(VERSION)
	git archive --format=tar --prefix=qryptchatd-$(VERSION)/ -o build/qryptchatd-$(VERSION).tar HEAD
	echo $(VERSION) > build/dist/qryptchatd-$(VERSION)/VERSION
	tar --append -f build/qryptchatd-$(VERSION).tar -C build/dist qryptchatd-$(VERSION)/VERSION
	gzip -9f build/qryptchatd-$(VERSION).tar
	@rm -rf build/dist
	@echo "built build/qryptchatd-$(VERSION).tar.gz"

clean:
	rm -rf build

FORCE:

# Objects are kept between runs, not removed as intermediates.
.SECONDARY:

-include $(shell find build -name '*.d' 2>/dev/null)

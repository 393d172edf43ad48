# ember — build, dependencies, run, test, bench.
# Plain GNU make; every library through pkg-config. `make V=1` shows commands.

# The executable's libraries; each broker's client goes only into its
# connector's module (modules/ember-<name>.so, loaded on first use).
PKGS      := zlib libmicrohttpd
MOD_PKGS  := rdkafka librabbitmq hiredis
CC        ?= cc
CFLAGS    ?= -O2 -g

# LuaJIT: Debian's luajit2 source package built static with
# LUAJIT_ENABLE_CHECKHOOK (tools/luajit-checkhook.sh, cached in build/luajit),
# so a batch past its deadline stops even inside a compiled loop.
# `make LUAJIT=shared` links Debian's shared libluajit instead: no deadline
# inside compiled loops (the bench compares the two).
LUAJIT    ?= checkhook
ifeq ($(LUAJIT),shared)
LUAJIT_CFLAGS := $(shell pkg-config --cflags luajit)
LUAJIT_LIBS   := $(shell pkg-config --libs luajit)
LUAJIT_DEP    :=
else
LUAJIT_CFLAGS := -Ibuild/luajit/include
# lj_init.o goes in as an object, before the archive: nothing refers to it,
# and its constructor picks the SSE4.2 string hash (tools/luajit-checkhook.sh).
LUAJIT_LIBS   := build/luajit/lj_init.o build/luajit/libluajit.a -ldl
LUAJIT_DEP    := build/luajit/libluajit.a build/luajit/lj_init.o
endif

CFLAGS    += -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread -MMD -MP \
             $(LUAJIT_CFLAGS) $(shell pkg-config --cflags $(PKGS) $(MOD_PKGS)) \
             -DEMBER_LUA_DIR='"$(CURDIR)/lua"' -DEMBER_MODULE_DIR='"$(CURDIR)/$(OBJDIR)/modules"'
# SAN: sanitizer flags for the build/asan and build/tsan binaries.
CFLAGS    += $(SAN)
LDFLAGS   += -pthread -rdynamic $(SAN)
LDLIBS    += $(LUAJIT_LIBS) $(shell pkg-config --libs $(PKGS)) -lm

# Where objects go: build/, or build/asan and build/tsan for the sanitizer builds.
OBJDIR    ?= build
# The executable: the core and the built-in connectors.
SRCS      := $(wildcard core/*.c) $(addprefix connectors/,file.c generator.c socket.c linebuf.c)
OBJS      := $(SRCS:%.c=$(OBJDIR)/%.o)
# One module per broker: its sources, and the client library it links.
MODULES   := kafka redis rabbitmq
MOD_SRCS  := $(foreach m,$(MODULES),$(wildcard connectors/$(m)*.c))
MOD_OBJS  := $(MOD_SRCS:%.c=$(OBJDIR)/%.o)
$(foreach m,$(MODULES),$(eval obj_$(m) := $(filter $(OBJDIR)/connectors/$(m)%,$(MOD_OBJS))))
MOD_LIBS  := $(MODULES:%=$(OBJDIR)/modules/ember-%.so)
lib_kafka := rdkafka
lib_redis := hiredis
lib_rabbitmq := librabbitmq

# Debian packages: to build, to run the specs, and the servers they start.
DEB_BUILD := gcc make pkg-config dpkg-dev xz-utils zlib1g-dev libluajit2-5.1-dev librdkafka-dev \
             librabbitmq-dev libhiredis-dev libmicrohttpd-dev
DEB_TEST  := clang libclang-rt-dev luajit2 lua-busted lua-cjson lua-posix lua-socket procps \
             redis-server rabbitmq-server kcat amqp-tools prometheus chromium curl
DEB_ALL   := $(DEB_BUILD) $(DEB_TEST)

ifeq ($(V),1)
Q :=
else
Q := @
endif

.PHONY: all deps run test bench clean distclean docker-base docker-test test-sanitize test-asan \
        test-tsan fuzz fuzz-smoke

all: ember tools/kafka-mock build/libember-json.so

ember: $(OBJS) $(LUAJIT_DEP) | $(MOD_LIBS)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(OBJS) $(LDLIBS)

# A module's objects are position-independent; what they call in the core
# resolves against the executable (-rdynamic) when it is loaded.
$(MOD_OBJS): CFLAGS += -fPIC
.SECONDEXPANSION:
$(OBJDIR)/modules/ember-%.so: $$(obj_$$*)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -shared -o $@ $^ $(shell pkg-config --libs $(lib_$*))

build/luajit/libluajit.a build/luajit/lj_init.o &: tools/luajit-checkhook.sh
	@echo "  LUAJIT $@ (Debian's luajit2 source, LUAJIT_ENABLE_CHECKHOOK)"
	$(Q)tools/luajit-checkhook.sh build/luajit

# The test helper around librdkafka's own mock cluster (rdkafka_mock.h).
tools/kafka-mock: tools/kafka_mock.c
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(shell pkg-config --libs rdkafka)

# The JSON tokenizer for a plain luajit (the unit specs); ember links its own.
build/libember-json.so: core/json.c core/json.h
	@mkdir -p build
	@echo "  LD    $@"
	$(Q)$(CC) $(CFLAGS) -fPIC -shared -o $@ core/json.c

# The web page is built into the binary (core/ui.c, .incbin).
$(OBJDIR)/core/ui.o build/fuzz/core/ui.o: ui/index.html

$(OBJDIR)/%.o: %.c | $(LUAJIT_DEP)
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

# Installs only what is missing, so a second run is a quick no-op.
deps:
	@missing=$$(for p in $(DEB_ALL); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing:" $$missing; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

run: deps
	$(Q)$(MAKE) --no-print-directory ember
	./ember run jobs/

test: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)$(MAKE) --no-print-directory fuzz-smoke
	$(Q)spec/run

# The C core under AddressSanitizer + UndefinedBehaviorSanitizer, then
# under ThreadSanitizer, each running the unit, end-to-end and isolation
# specs (EMBER_BIN points the specs at the instrumented binary). Any report
# fails the run: halt_on_error, and UBSan aborts.
SAN_SPECS ?= spec/unit spec/e2e spec/isolation
ASAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
TSAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=thread

build/asan/ember: FORCE
	$(Q)$(MAKE) --no-print-directory OBJDIR=build/asan SAN="$(ASAN_FLAGS)" build/asan/ember.bin
	$(Q)cp build/asan/ember.bin build/asan/ember

build/tsan/ember: FORCE
	$(Q)$(MAKE) --no-print-directory OBJDIR=build/tsan SAN="$(TSAN_FLAGS)" build/tsan/ember.bin
	$(Q)cp build/tsan/ember.bin build/tsan/ember

$(OBJDIR)/ember.bin: $(OBJS) $(LUAJIT_DEP) | $(MOD_LIBS)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(OBJS) $(LDLIBS)

test-sanitize: test-asan
	$(Q)$(MAKE) --no-print-directory test-tsan

test-asan: deps
	$(Q)$(MAKE) --no-print-directory all build/asan/ember
	$(Q)ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:abort_on_error=1 \
	    LSAN_OPTIONS=suppressions=$(CURDIR)/tools/sanitize/lsan.supp \
	    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    EMBER_SANITIZER=address EMBER_BIN=$(CURDIR)/build/asan/ember spec/run $(SAN_SPECS)

# Not under TSan: the specs with a Kafka source. librdkafka starts its threads
# with C11 thrd_create, which GCC 12's ThreadSanitizer does not intercept,
# and its first allocation on such a thread crashes inside TSan itself.
TSAN_SPECS ?= spec/unit spec/isolation \
    $(filter-out spec/e2e/sensor_pipeline_spec.lua,$(wildcard spec/e2e/*_spec.lua))

test-tsan: deps
	$(Q)$(MAKE) --no-print-directory all build/tsan/ember
	$(Q)TSAN_OPTIONS=halt_on_error=1:suppressions=$(CURDIR)/tools/sanitize/tsan.supp \
	    EMBER_SANITIZER=thread EMBER_BIN=$(CURDIR)/build/tsan/ember spec/run $(TSAN_SPECS)

# libFuzzer targets (Debian's clang): fuzz/<name>.c against the C core built
# with -fsanitize=fuzzer-no-link,address,undefined in build/fuzz; corpora in
# fuzz/corpus/<name> (seeds kept in the repo; new finds land in
# build/fuzz/corpus). `make fuzz` runs each for FUZZ_SECONDS (600);
# `make fuzz-smoke` (part of `make test`) for FUZZ_SMOKE_SECONDS (10).
FUZZ_TARGETS := json config wal checkpoint linebuf
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_SAN  := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
FUZZ_LIB_SRCS := $(filter-out core/main.c,$(SRCS))
FUZZ_OBJS := $(FUZZ_LIB_SRCS:%.c=build/fuzz/%.o)
FUZZ_BINS := $(FUZZ_TARGETS:%=build/fuzz/fuzz-%)

build/fuzz/%.o: %.c | $(LUAJIT_DEP)
	@mkdir -p $(dir $@)
	@echo "  CC    $< (fuzz)"
	$(Q)clang -O1 -g -std=c11 -D_GNU_SOURCE -pthread $(FUZZ_SAN) $(LUAJIT_CFLAGS) \
	    $(shell pkg-config --cflags $(PKGS) $(MOD_PKGS)) -DEMBER_LUA_DIR='"$(CURDIR)/lua"' \
	    -DEMBER_MODULE_DIR='"$(CURDIR)/build/modules"' -c -o $@ $<

build/fuzz/fuzz-%: fuzz/%.c fuzz/files.h $(FUZZ_OBJS)
	@echo "  LD    $@"
	$(Q)clang -O1 -g -std=c11 -D_GNU_SOURCE -pthread -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=all $(LUAJIT_CFLAGS) -o $@ $< $(FUZZ_OBJS) $(LDLIBS)

# Runs every target for $(1) seconds; any crash fails (its input is left in
# build/fuzz/crashes/).
define run_fuzz
	@mkdir -p build/fuzz/crashes
	$(Q)for t in $(FUZZ_TARGETS); do \
	    mkdir -p build/fuzz/corpus/$$t; \
	    echo "fuzz $$t: $(1) s"; \
	    build/fuzz/fuzz-$$t -max_total_time=$(1) -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
	        -artifact_prefix=build/fuzz/crashes/$$t- -print_final_stats=1 \
	        build/fuzz/corpus/$$t fuzz/corpus/$$t 2>build/fuzz/$$t.log \
	        || { tail -40 build/fuzz/$$t.log; exit 1; }; \
	    grep -E "stat::number_of_executed_units|stat::new_units_added" build/fuzz/$$t.log \
	        | sed "s/^/  /"; \
	done
endef

fuzz: deps $(FUZZ_BINS)
	$(call run_fuzz,$(FUZZ_SECONDS))

fuzz-smoke: $(FUZZ_BINS)
	$(call run_fuzz,$(FUZZ_SMOKE_SECONDS))

FORCE:

bench: deps
	$(Q)$(MAKE) --no-print-directory ember build/libember-json.so
	$(Q)bench/run

# Keeps build/luajit (Debian's source built once); `make distclean` drops it too.
clean:
	find build -mindepth 1 -maxdepth 1 ! -name luajit -exec rm -rf {} + 2>/dev/null || true
	rm -f ember tools/kafka-mock

distclean: clean
	rm -rf build

# Docker (docker/README.md): the Debian base image of the offline compose
# setup; the test of that setup. Each installs docker.io, docker-compose and
# debootstrap from Debian where their commands are missing.
docker-base:
	$(Q)docker/make-base.sh
docker-test:
	$(Q)docker/test.sh

-include $(OBJS:.o=.d) $(MOD_OBJS:.o=.d)

# ember — build, dependencies, run, test, bench.
# Plain GNU make; every library through pkg-config. `make V=1` shows commands.

PKGS      := rdkafka librabbitmq hiredis zlib
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
LUAJIT_LIBS   := build/luajit/libluajit.a -ldl
LUAJIT_DEP    := build/luajit/libluajit.a
endif

CFLAGS    += -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread -MMD -MP \
             $(LUAJIT_CFLAGS) $(shell pkg-config --cflags $(PKGS)) -DEMBER_LUA_DIR='"$(CURDIR)/lua"'
LDFLAGS   += -pthread -rdynamic
LDLIBS    += $(LUAJIT_LIBS) $(shell pkg-config --libs $(PKGS)) -lm

SRCS      := $(wildcard core/*.c) $(wildcard connectors/*.c)
OBJS      := $(SRCS:%.c=build/%.o)

# Debian packages: to build, to run the specs, and the servers they start.
DEB_BUILD := gcc make pkg-config dpkg-dev xz-utils zlib1g-dev libluajit2-5.1-dev librdkafka-dev librabbitmq-dev libhiredis-dev
DEB_TEST  := luajit2 lua-busted lua-cjson lua-posix lua-socket procps \
             redis-server rabbitmq-server kcat amqp-tools
DEB_ALL   := $(DEB_BUILD) $(DEB_TEST)

ifeq ($(V),1)
Q :=
else
Q := @
endif

.PHONY: all deps run test bench clean distclean

all: ember tools/kafka-mock build/libember-json.so

ember: $(OBJS) $(LUAJIT_DEP)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(OBJS) $(LDLIBS)

build/luajit/libluajit.a: tools/luajit-checkhook.sh
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

build/%.o: %.c | $(LUAJIT_DEP)
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
	$(Q)spec/run

bench: deps
	$(Q)$(MAKE) --no-print-directory ember
	$(Q)bench/run

# Keeps build/luajit (Debian's source built once); `make distclean` drops it too.
clean:
	find build -mindepth 1 -maxdepth 1 ! -name luajit -exec rm -rf {} + 2>/dev/null || true
	rm -f ember tools/kafka-mock

distclean: clean
	rm -rf build

-include $(OBJS:.o=.d)

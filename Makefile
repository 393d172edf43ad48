# ember — build, dependencies, run, test, bench.
# Plain GNU make; every library through pkg-config. `make V=1` shows commands.

PKGS      := luajit rdkafka librabbitmq hiredis zlib libmicrohttpd
CC        ?= cc
CFLAGS    ?= -O2 -g
CFLAGS    += -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread -MMD -MP \
             $(shell pkg-config --cflags $(PKGS)) -DEMBER_LUA_DIR='"$(CURDIR)/lua"'
LDFLAGS   += -pthread -rdynamic
LDLIBS    += $(shell pkg-config --libs $(PKGS)) -lm

SRCS      := $(wildcard core/*.c) $(wildcard connectors/*.c)
OBJS      := $(SRCS:%.c=build/%.o)

# Debian packages: to build, to run the specs, and the servers they start.
DEB_BUILD := gcc make pkg-config zlib1g-dev libluajit2-5.1-dev librdkafka-dev librabbitmq-dev libhiredis-dev \
             libmicrohttpd-dev
DEB_TEST  := luajit2 lua-busted lua-cjson lua-posix lua-socket procps \
             redis-server rabbitmq-server kcat amqp-tools prometheus chromium curl
DEB_ALL   := $(DEB_BUILD) $(DEB_TEST)

ifeq ($(V),1)
Q :=
else
Q := @
endif

.PHONY: all deps run test bench clean docker-base docker-test

all: ember tools/kafka-mock build/libember-json.so

ember: $(OBJS)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

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
build/core/ui.o: ui/index.html

build/%.o: %.c
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
	$(Q)$(MAKE) --no-print-directory ember build/libember-json.so
	$(Q)bench/run

clean:
	rm -rf build ember tools/kafka-mock

# Docker (docker/README.md): the Debian base image of the offline compose
# setup; the test of that setup. Each installs docker.io, docker-compose and
# debootstrap from Debian where their commands are missing.
docker-base:
	$(Q)docker/make-base.sh
docker-test:
	$(Q)docker/test.sh

-include $(OBJS:.o=.d)

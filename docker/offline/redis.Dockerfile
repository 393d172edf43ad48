# The Redis of the offline setup: Debian's redis-server (and redis-cli).
ARG BASE=ember-base:bookworm
FROM ${BASE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        redis-server && rm -rf /var/lib/apt/lists/*
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=5s --start-period=5s --retries=5 \
    CMD ["sh", "-c", "redis-cli ping | grep -qx PONG"]
# As the official image: every interface, no protected mode (the network
# is the compose project's own), no snapshots.
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--dir", "/var/lib/redis"]

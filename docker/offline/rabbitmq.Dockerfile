# The RabbitMQ of the offline setup: Debian's rabbitmq-server, with
# amqp-tools (amqp-publish, amqp-consume, amqp-get) as clients.
ARG BASE=ember-base:bookworm
FROM ${BASE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        rabbitmq-server amqp-tools && rm -rf /var/lib/apt/lists/* \
 && printf '%s\n' 'loopback_users.guest = false' 'listeners.tcp.default = 5672' \
        > /etc/rabbitmq/rabbitmq.conf
# As the official image: guest may connect from other containers (the
# network is the compose project's own). The node name follows the
# container's host name: compose sets `hostname: rabbitmq`.
USER rabbitmq
# The server script itself, not Debian's wrapper, which sends the log to a
# file: the log goes to stdout, and SIGTERM stops the node cleanly.
ENV HOME=/var/lib/rabbitmq RABBITMQ_LOGS=- PATH=/usr/lib/rabbitmq/bin:$PATH
WORKDIR /var/lib/rabbitmq
EXPOSE 5672
STOPSIGNAL SIGTERM
# Healthy once the node listens for AMQP (port 5672, 0x1628), at the end of
# its boot; as docker-compose.yml's check. `rabbitmq-diagnostics -q
# check_port_connectivity` tells more, at half a second of CPU a run.
HEALTHCHECK --interval=2s --timeout=10s --start-period=30s --retries=15 \
    CMD grep -qs '^ *[0-9]*: [0-9A-F]*:1628 [0-9A-F]*:0000 0A ' /proc/net/tcp6 /proc/net/tcp
CMD ["rabbitmq-server"]

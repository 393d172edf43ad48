# The Kafka of the offline setup: librdkafka's mock cluster (tools/kafka-mock,
# a real Kafka protocol peer with topics, partitions and consumer groups) on
# the container's address, with kcat beside it as a client.
# Build from the repository root (docker/docker-compose.offline.yml does).
ARG BASE=ember-base:bookworm
FROM ${BASE} AS build
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc libc6-dev pkg-config librdkafka-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY tools/kafka_mock.c docker/offline/mock_bind.c ./
RUN gcc -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -O2 -o kafka-mock kafka_mock.c $(pkg-config --cflags --libs rdkafka) \
 && gcc -std=c11 -Wall -Wextra -Werror -O2 -shared -fPIC -o mock_bind.so mock_bind.c -ldl

FROM ${BASE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        librdkafka1 kcat && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --shell /usr/sbin/nologin kafka
COPY --from=build /src/kafka-mock /src/mock_bind.so /opt/kafka-mock/
COPY docker/offline/kafka-mock-run docker/offline/kafka-mock-health /opt/kafka-mock/
USER kafka
EXPOSE 9092
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=10s --start-period=10s --retries=5 CMD ["/opt/kafka-mock/kafka-mock-health"]
CMD ["/opt/kafka-mock/kafka-mock-run"]

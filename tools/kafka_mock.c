/* kafka_mock.c — librdkafka's own mock cluster as a test server.
 *
 *   tools/kafka-mock [--brokers N] [--topic name:partitions]...
 *
 * Starts a mock Kafka cluster (rdkafka_mock.h: a real Kafka protocol peer
 * with topics, partitions and consumer groups, listening on 127.0.0.1 on
 * ephemeral ports), creates the topics — the 2.0.2 mock cannot create them
 * on request — prints one line `BOOTSTRAP=127.0.0.1:port,...` on stdout and
 * serves until stdin closes or SIGTERM/SIGINT arrives.
 *
 * stdin takes one command per line, each answered by one line, `ok` or
 * `error: why`, so a test can fail a broker and wait for the answer:
 *   down <broker_id>   refuse and drop connections to that broker
 *   up <broker_id>     accept them again
 *   leader <topic> <partition> <broker_id>   move a partition's leader
 *   topic <name>:<partitions>                create another topic
 *   errors <api_key> <error_code> [count]    fail the next count (1) requests
 *                                            of that API (Produce is 0)
 *   topic-error <topic> <error_code>         metadata answers the topic with
 *                                            that error (0: none again)
 * Broker ids are 1..N.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void usage(void)
{
    fprintf(stderr, "usage: kafka-mock [--brokers N] [--topic name:partitions]...\n");
    exit(2);
}

/* "name:partitions" → the topic in the mock; 0 or -1 with a message. */
static int create_topic(rd_kafka_mock_cluster_t *mc, const char *spec, char *why, size_t len)
{
    char name[256];
    const char *colon = strrchr(spec, ':');
    int parts = 1;
    size_t n = colon ? (size_t)(colon - spec) : strlen(spec);
    if (n == 0 || n >= sizeof name) {
        snprintf(why, len, "bad topic '%s' (name:partitions expected)", spec);
        return -1;
    }
    if (colon && ((parts = atoi(colon + 1)) < 1 || parts > 10000)) {
        snprintf(why, len, "bad partition count in '%s'", spec);
        return -1;
    }
    memcpy(name, spec, n);
    name[n] = '\0';
    /* replication 1: a broker taken down stalls its partitions instead of
     * electing another leader, which is what the outage tests want. */
    rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mc, name, parts, 1);
    if (err) {
        snprintf(why, len, "cannot create topic %s: %s", name, rd_kafka_err2str(err));
        return -1;
    }
    return 0;
}

/* One stdin command; writes the answer line into out. */
static void command(rd_kafka_mock_cluster_t *mc, int brokers, char *line, char *out, size_t len)
{
    char word[32] = "", arg[256] = "";
    int id = 0, part = 0;
    line[strcspn(line, "\r\n")] = '\0';
    if (sscanf(line, "%31s", word) != 1) {
        snprintf(out, len, "error: empty command");
        return;
    }
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (strcmp(word, "down") == 0 || strcmp(word, "up") == 0) {
        if (sscanf(line, "%*s %d", &id) != 1 || id < 1 || id > brokers) {
            snprintf(out, len, "error: broker id 1..%d expected", brokers);
            return;
        }
        err = word[0] == 'd' ? rd_kafka_mock_broker_set_down(mc, id)
                             : rd_kafka_mock_broker_set_up(mc, id);
    } else if (strcmp(word, "leader") == 0) {
        if (sscanf(line, "%*s %255s %d %d", arg, &part, &id) != 3) {
            snprintf(out, len, "error: leader <topic> <partition> <broker_id>");
            return;
        }
        err = rd_kafka_mock_partition_set_leader(mc, arg, part, id);
    } else if (strcmp(word, "topic") == 0) {
        if (sscanf(line, "%*s %255s", arg) != 1) {
            snprintf(out, len, "error: topic <name>:<partitions>");
            return;
        }
        char why[300];
        if (create_topic(mc, arg, why, sizeof why) != 0) {
            snprintf(out, len, "error: %s", why);
            return;
        }
    } else if (strcmp(word, "errors") == 0) {
        int api = -1, code = 0, count = 1;
        if (sscanf(line, "%*s %d %d %d", &api, &code, &count) < 2 || api < 0 || count < 1 ||
            count > 1000) {
            snprintf(out, len, "error: errors <api_key> <error_code> [count]");
            return;
        }
        rd_kafka_resp_err_t errs[1000];
        for (int i = 0; i < count; i++)
            errs[i] = (rd_kafka_resp_err_t)code;
        rd_kafka_mock_push_request_errors_array(mc, (int16_t)api, (size_t)count, errs);
    } else if (strcmp(word, "topic-error") == 0) {
        int code = 0;
        if (sscanf(line, "%*s %255s %d", arg, &code) != 2 || code < 0) {
            snprintf(out, len, "error: topic-error <topic> <error_code>");
            return;
        }
        rd_kafka_mock_topic_set_error(mc, arg, (rd_kafka_resp_err_t)code);
    } else {
        snprintf(out, len, "error: unknown command '%s' (down, up, leader, topic, errors, "
                 "topic-error)", word);
        return;
    }
    if (err)
        snprintf(out, len, "error: %s", rd_kafka_err2str(err));
    else
        snprintf(out, len, "ok");
}

int main(int argc, char **argv)
{
    int brokers = 1;
    const char **topics = calloc((size_t)argc, sizeof *topics);
    int ntopics = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc) {
            brokers = atoi(argv[++i]);
            if (brokers < 1 || brokers > 64)
                usage();
        } else if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc) {
            topics[ntopics++] = argv[++i];
        } else {
            usage();
        }
    }

    struct sigaction sa = {0};
    sa.sa_handler = on_signal; /* no SA_RESTART: poll(2) returns on the signal */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* The handle only hosts the cluster; keep its own logging quiet. */
    rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "kafka-mock: %s\n", errstr);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) {
        fprintf(stderr, "kafka-mock: cannot create the mock cluster\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    for (int i = 0; i < ntopics; i++)
        if (create_topic(mc, topics[i], errstr, sizeof errstr) != 0) {
            fprintf(stderr, "kafka-mock: %s\n", errstr);
            rd_kafka_mock_cluster_destroy(mc);
            rd_kafka_destroy(rk);
            return 1;
        }
    printf("BOOTSTRAP=%s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);

    char line[512], answer[512];
    size_t have = 0;
    while (!stop) {
        struct pollfd p = {.fd = 0, .events = POLLIN};
        int rc = poll(&p, 1, 500);
        if (rc < 0 && errno != EINTR)
            break;
        if (rc <= 0)
            continue;
        ssize_t n = read(0, line + have, sizeof line - 1 - have);
        if (n <= 0)
            break; /* stdin closed: the test that started us is gone */
        have += (size_t)n;
        line[have] = '\0';
        char *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = '\0';
            command(mc, brokers, line, answer, sizeof answer);
            printf("%s\n", answer);
            fflush(stdout);
            size_t used = (size_t)(nl - line) + 1;
            memmove(line, nl + 1, have - used + 1);
            have -= used;
        }
        if (have == sizeof line - 1) /* an over-long line: drop it */
            have = 0;
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    free(topics);
    return 0;
}

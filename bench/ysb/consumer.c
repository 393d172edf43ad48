/* bench/ysb/consumer.c — the baseline bench/kafka_ysb.sh measures ember
 * against: a naive single-threaded C consumer of the Yahoo benchmark's
 * events with librdkafka's defaults. It reads the topic from the start in
 * its own group, keeps the views (memmem, no JSON parser), maps each ad to
 * its campaign (the campaigns file bench/ysb/gen.lua writes) and counts
 * views per campaign, until it has counted the views it was told to
 * expect. Prints "views N" and "campaigns N".
 *
 *   consumer BROKERS TOPIC CAMPAIGNS_LUA EXPECTED_VIEWS
 */
#define _GNU_SOURCE
#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UUID_LEN 36
#define SLOTS 4096 /* a power of two, over 1,000 ads */

typedef struct {
    char ad[UUID_LEN];
    int campaign; /* index into counts; -1: empty slot */
} slot;

static slot table[SLOTS];
static uint64_t counts[SLOTS];

static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < UUID_LEN; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static slot *find(const char *ad)
{
    for (uint32_t i = hash(ad) & (SLOTS - 1);; i = (i + 1) & (SLOTS - 1))
        if (table[i].campaign < 0 || memcmp(table[i].ad, ad, UUID_LEN) == 0)
            return &table[i];
}

/* Reads the lines ["<ad>"] = "<campaign>", of the campaigns file. */
static int load_campaigns(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[256], names[SLOTS][UUID_LEN];
    int ncampaigns = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] != '[' || strlen(line) < 2 * UUID_LEN + 10)
            continue;
        const char *ad = line + 2, *campaign = line + 2 + UUID_LEN + 6;
        int c = 0;
        while (c < ncampaigns && memcmp(names[c], campaign, UUID_LEN) != 0)
            c++;
        if (c == ncampaigns)
            memcpy(names[ncampaigns++], campaign, UUID_LEN);
        slot *s = find(ad);
        memcpy(s->ad, ad, UUID_LEN);
        s->campaign = c;
    }
    fclose(f);
    return ncampaigns;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s BROKERS TOPIC CAMPAIGNS_LUA EXPECTED_VIEWS\n", argv[0]);
        return 2;
    }
    for (int i = 0; i < SLOTS; i++)
        table[i].campaign = -1;
    int ncampaigns = load_campaigns(argv[3]);
    if (ncampaigns <= 0) {
        fprintf(stderr, "consumer: no campaigns in %s\n", argv[3]);
        return 1;
    }
    uint64_t expected = strtoull(argv[4], NULL, 10);
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", argv[1], err, sizeof err) ||
        rd_kafka_conf_set(conf, "group.id", "ysb-c-consumer", err, sizeof err) ||
        rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof err) ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err)) {
        fprintf(stderr, "consumer: %s\n", err);
        return 1;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "consumer: %s\n", err);
        return 1;
    }
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, argv[2], RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);

    static const char view[] = "\"event_type\":\"view\"", ad_key[] = "\"ad_id\":\"";
    uint64_t views = 0;
    while (views < expected) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m)
            continue;
        if (!m->err && m->payload) {
            const char *p = m->payload;
            const char *a = memmem(p, m->len, ad_key, sizeof ad_key - 1);
            if (memmem(p, m->len, view, sizeof view - 1) && a &&
                (size_t)(a - p) + sizeof ad_key - 1 + UUID_LEN <= m->len) {
                slot *s = find(a + sizeof ad_key - 1);
                if (s->campaign >= 0) {
                    counts[s->campaign]++;
                    views++;
                }
            }
        }
        rd_kafka_message_destroy(m);
    }
    int seen = 0;
    for (int c = 0; c < ncampaigns; c++)
        seen += counts[c] > 0;
    printf("views %llu\ncampaigns %d\n", (unsigned long long)views, seen);
    fflush(stdout);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return 0;
}

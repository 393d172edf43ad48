/* kafka.c — the Kafka source (a consumer-group member): its options,
 * consumer, poll, pause and free.
 *
 * One librdkafka high-level consumer per receiver, subscribed on the
 * first poll(). Offsets are never committed by librdkafka
 * (enable.auto.commit and enable.auto.offset.store are off): batch_done(ok)
 * commits, per partition, the highest offset the finished batch processed,
 * plus one. Everything that touches the consumer's fetch state — consuming,
 * seeking, pausing, rebalancing — runs on the receiver thread, in sequence,
 * because librdkafka's batch consume API is not safe against those
 * operations run in parallel (2.0.2 changelog, "Known issues"). Worker
 * threads only commit, and leave seeks to the receiver thread.
 *
 * Epochs. Each assigned partition carries an epoch number, bumped when it is
 * assigned, revoked or sought back. Every record's meta carries the epoch it
 * was read in, and only records of the partition's live epoch are committed.
 * Within one epoch the records pushed are a gap-free run of the log from
 * where the epoch began, so "highest processed + 1" never skips a record.
 * Records left in memory from an older epoch (a revoked partition, a
 * failed batch that was sought back) are still processed — ember cannot
 * take records out of a sealed block — but never committed: the new owner,
 * or this consumer after its seek, reads them again. Duplicates, no loss.
 *
 * Rebalances cost at most the batches in flight (on_revoke): no new batch
 * is cut from a revoked partition, the batches already running are waited
 * for (em_receiver_wait_done) and commit while the generation is valid,
 * what was processed but refused a commit is committed in the callback,
 * and only what still runs after the wait is left for the new owner. Each
 * partition's life is begin_partition() / end_partition() (in
 * kafka_rebalance.c); a partition's state, when there is some, is restored
 * in the first.
 *
 * Record meta, shared by a run of records of one partition (core/block.h):
 * the topic, then NUL `#epoch`. With format = "record" each record also
 * carries its headers as extra bytes, NUL `name=value` per header (a null
 * value is empty); otherwise headers are not read at all. Lua's
 * lua/ember/records.lua reads the topic and the headers. See
 * docs/connectors/kafka.md.
 *
 * Rate cap. max_rate_per_partition is a token bucket per assigned partition;
 * a partition out of tokens is paused with rd_kafka_pause_partitions(), so
 * librdkafka stops fetching it (and drops what it prefetched) and the lag
 * stays in Kafka. It is resumed when its tokens come back. A pause of the
 * core (its own rate cap, a hold) that lasts pauses every assigned
 * partition the same way (see kafka_pause).
 *
 * The partition table and rebalances are kafka_rebalance.c; commits, seeks,
 * positions and lag kafka_commit.c; what the three share kafka_source.h.
 * The sink is kafka_sink.c; the changelog of keyed state kafka_changelog.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "../core/block.h"
#include "../core/clock.h"
#include "../core/connector.h"
#include "../core/identity.h"
#include "../core/log.h"
#include "../core/receiver.h"
#include "kafka_changelog.h"
#include "kafka_errors.h"
#include "kafka_source.h"

#define CLOSE_NOTE_MS 2000    /* consumer_close slower than this is logged */
#define CORE_PAUSE_GRACE_MS 1000 /* a core pause this long reaches the partitions */

static const em_option kafka_options[] = {
    {"brokers", EM_OPT_STRING, NULL, "bootstrap servers, host:port[,host:port...] (required)"},
    {"topic", EM_OPT_STRING, NULL,
     "topic to read, or several comma-separated; a name starting with ^ is a regex (required)"},
    {"group", EM_OPT_STRING, NULL, "consumer group id; offsets are committed for it (required)"},
    {"start", EM_OPT_STRING, "latest",
     "where a group without a committed offset starts: earliest or latest"},
    {"max_rate_per_partition", EM_OPT_DOUBLE, "0",
     "records/s cap per assigned partition, enforced by pausing it (0: unlimited)"},
    {"static_membership", EM_OPT_BOOL, "false",
     "join as a static member (group.instance.id <ember.id>-<job>): a restart within "
     "session.timeout.ms moves no partition, but a stop leaves them unread until it passes"},
    {"changelog", EM_OPT_STRING, NULL,
     "compacted topic that keeps the job's keyed state per partition (set for stateful jobs; "
     "false: local state files; docs/scaling.md)"},
    {NULL, 0, NULL, NULL},
};

static const char *const kafka_prefixes[] = {"kafka.", NULL};

/* librdkafka properties ember sets itself: the option to use instead, or
 * NULL when they must not change at all. */
static const struct {
    const char *prop, *use;
} reserved[] = {
    {"bootstrap.servers", "brokers"},
    {"metadata.broker.list", "brokers"},
    {"group.id", "group"},
    {"auto.offset.reset", "start"},
    {"enable.auto.commit", NULL},
    {"enable.auto.offset.store", NULL},
};

/* ------------------------------------------------------------------ */
/* Pausing                                                             */
/* ------------------------------------------------------------------ */

/* Brings librdkafka's pause state of every assigned part in line with
 * what ember wants: paused while the core waits for tokens or while the
 * part's own bucket is empty. Receiver thread. */
void em_kafka_sync_pauses(kafka_src *k)
{
    rd_kafka_topic_partition_list_t *pause = NULL, *resume = NULL;
    EACH_ASSIGNED(k, p)
    {
        int want = k->core_pause_applied || p->rate_paused;
        if (want == p->kpaused)
            continue;
        rd_kafka_topic_partition_list_t **l = want ? &pause : &resume;
        if (!*l)
            *l = rd_kafka_topic_partition_list_new(8);
        rd_kafka_topic_partition_list_add(*l, p->topic->name, p->partition);
        p->kpaused = want;
    }
    if (pause) {
        rd_kafka_pause_partitions(k->rk, pause);
        rd_kafka_topic_partition_list_destroy(pause);
    }
    if (resume) {
        rd_kafka_resume_partitions(k->rk, resume);
        rd_kafka_topic_partition_list_destroy(resume);
    }
}

/* Adds the tokens earned since the last call to every assigned part and
 * un-pauses those back at the resume level. When every part is paused,
 * lowers *wait_ms to the time until the first one may resume. */
static void refill(kafka_src *k, int *wait_ms)
{
    int64_t now = em_clock_mono_ms();
    double dt = (double)(now - k->refilled_ms) / 1000.0;
    k->refilled_ms = now;
    double lowest_gap = -1;
    int any_open = 0;
    EACH_ASSIGNED(k, p)
    {
        p->tokens += dt * k->rate;
        if (p->tokens > k->burst)
            p->tokens = k->burst;
        if (p->rate_paused && p->tokens >= k->resume_at)
            p->rate_paused = 0;
        if (!p->rate_paused)
            any_open = 1;
        else if (lowest_gap < 0 || k->resume_at - p->tokens < lowest_gap)
            lowest_gap = k->resume_at - p->tokens;
    }
    if (!any_open && lowest_gap > 0) {
        double ms = lowest_gap / k->rate * 1000 + 1;
        if (ms < *wait_ms)
            *wait_ms = (int)ms;
    }
}

/* How many records one consume call may return without taking any
 * unpaused part below zero tokens, whichever partitions they come from:
 * the fewest tokens an unpaused part holds. 0 when every part is paused.
 * 1 when nothing is assigned: the assignment happens inside the consume
 * call, and records fetched right after it would come back in the same
 * call, past any cap. */
static uint32_t rate_step(kafka_src *k)
{
    double least = -1;
    int any = 0;
    EACH_ASSIGNED(k, p)
    {
        any = 1;
        if (!p->rate_paused && (least < 0 || p->tokens < least))
            least = p->tokens;
    }
    if (!any)
        return 1;
    if (least < 1)
        return 0;
    return least > CONSUME_BATCH ? CONSUME_BATCH : (uint32_t)least;
}

/* ------------------------------------------------------------------ */
/* Errors and logs                                                     */
/* ------------------------------------------------------------------ */

/* librdkafka's error events: a broker outage is logged once until data
 * flows again (librdkafka retries on its own); other errors each time
 * their code changes. */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    kafka_src *k = opaque;
    if (rd_kafka_fatal_error(rk, NULL, 0)) {
        em_log(EM_LOG_ERROR, k->job, "%s: fatal error: %s", k->name, reason);
        return;
    }
    int before = atomic_exchange(&k->outage, err);
    if (before == err || (em_kafka_is_outage(before) && em_kafka_is_outage(err)))
        return; /* one line per outage, however librdkafka words it */
    if (em_kafka_is_outage(err))
        em_log(EM_LOG_WARN, k->job, "%s: cannot reach the brokers (%s); retrying until they answer",
               k->name, reason);
    else
        em_log(EM_LOG_WARN, k->job, "%s: %s", k->name, reason);
}

/* librdkafka's own log lines go to the debug log: the ones a user needs
 * arrive through on_error, once. */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    const kafka_src *k = rd_kafka_opaque(rk);
    em_log(level <= 2 ? EM_LOG_ERROR : EM_LOG_DEBUG, k ? k->job : "kafka", "librdkafka %s: %s",
           fac, buf);
}

/* A message that carries an error instead of a record. */
static void consumer_error(kafka_src *k, const rd_kafka_message_t *m)
{
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
        return;
    if (atomic_exchange(&k->last_consumer_err, m->err) == m->err)
        return;
    em_log(EM_LOG_WARN, k->job, "%s: %s%s%s", k->name,
           m->rkt ? rd_kafka_topic_name(m->rkt) : "", m->rkt ? ": " : "",
           rd_kafka_message_errstr(m));
}

/* ------------------------------------------------------------------ */
/* create                                                              */
/* ------------------------------------------------------------------ */

static int conf_set(rd_kafka_conf_t *conf, const char *key, const char *value, const char *shown,
                    char *err, size_t errlen)
{
    char why[512];
    if (rd_kafka_conf_set(conf, key, value, why, sizeof why) == RD_KAFKA_CONF_OK)
        return 0;
    snprintf(err, errlen, "kafka source: option '%s' = '%s': %s", shown, value, why);
    return -1;
}

static void kafka_free(void *self);

/* Checks the options, builds the consumer and its configuration. The
 * consumer connects in the background but joins the group only on the
 * first poll(), so a job version that never starts does not disturb it. */
static void *kafka_create(const em_props *props, em_receiver *r, char *err, size_t errlen)
{
    static const char *const required[] = {"brokers", "topic", "group"};
    for (size_t i = 0; i < 3; i++) {
        const char *v = em_props_get(props, required[i]);
        if (!v || !*v) {
            snprintf(err, errlen, "kafka source: option '%s' is required", required[i]);
            return NULL;
        }
    }
    const char *start = em_props_str(props, "start", "latest");
    if (strcmp(start, "earliest") != 0 && strcmp(start, "latest") != 0) {
        snprintf(err, errlen, "kafka source: option 'start' = '%s' is not earliest or latest",
                 start);
        return NULL;
    }
    for (size_t i = 0; i < props->n; i++) {
        const char *key = props->items[i].key;
        if (strncmp(key, "kafka.", 6) != 0)
            continue;
        for (size_t j = 0; j < sizeof reserved / sizeof reserved[0]; j++)
            if (strcmp(key + 6, reserved[j].prop) == 0) {
                if (reserved[j].use)
                    snprintf(err, errlen, "kafka source: option '%s' is set by ember; use '%s'",
                             key, reserved[j].use);
                else
                    snprintf(err, errlen,
                             "kafka source: option '%s' cannot be set: ember commits offsets "
                             "itself, after each batch's outputs succeeded",
                             key);
                return NULL;
            }
    }

    kafka_src *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, errlen, "kafka source: out of memory");
        return NULL;
    }
    pthread_mutex_init(&k->lock, NULL);
    pthread_mutex_init(&k->commit_lock, NULL);
    k->r = r;
    k->headers = strcmp(em_props_str(props, "format", "value"), "record") == 0;
    k->job = strdup(em_receiver_job(r));
    k->brokers = strdup(em_props_get(props, "brokers"));
    k->topics_opt = strdup(em_props_get(props, "topic"));
    k->group = strdup(em_props_get(props, "group"));
    if (!k->job || !k->brokers || !k->topics_opt || !k->group ||
        asprintf(&k->name, "kafka %s topic=%s group=%s", k->brokers, k->topics_opt, k->group) < 0) {
        k->name = NULL;
        snprintf(err, errlen, "kafka source: out of memory");
        kafka_free(k);
        return NULL;
    }
    const char *cl = em_props_get(props, "changelog");
    if (cl && *cl && strcmp(cl, "false") != 0 &&
        !(k->cl = em_changelog_open(k->job, k->brokers, k->topics_opt, cl, err, errlen))) {
        kafka_free(k);
        return NULL;
    }
    if (k->cl)
        em_changelog_set_rewind(k->cl, em_kafka_changelog_rewind, k);
    k->rate = em_props_double(props, "max_rate_per_partition", 0);
    /* A paused partition resumes once it has a quarter second of tokens,
     * and may save up to two seconds' worth. librdkafka 2.0.2 notices a
     * resume only when its broker thread next wakes, up to a second later
     * when nothing else is being fetched; a bucket of two seconds keeps
     * those tokens instead of losing them, so the rate holds on average
     * (records then come in bursts of up to a second per partition, as
     * Spark's maxRatePerPartition gives rate x batch interval per batch).
     * Resuming at the first token would thrash: each pause drops what
     * librdkafka prefetched and each resume fetches it again. */
    k->burst = k->rate * 2 > 1 ? k->rate * 2 : 1;
    k->resume_at = k->rate / 4 > 1 ? k->rate / 4 : 1;
    k->refilled_ms = em_clock_mono_ms();

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* The member's name in broker logs and in the group: this driver's
     * ember.id and the job, in the characters a group.instance.id takes. */
    char client[160];
    snprintf(client, sizeof client, "%s-%s", em_identity_id(), k->job);
    for (char *c = client; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '_' || *c == '.'))
            *c = '_';
    /* The prefetch counts under memory.max: 32 MiB, or a quarter of the cap
     * when that is less, so the blocks keep most of it. */
    size_t cap_kb = em_receiver_memory_max(r) / 4 / 1024;
    char queue_kb[24];
    snprintf(queue_kb, sizeof queue_kb, "%zu",
             cap_kb && cap_kb < 32768 ? (cap_kb < 1024 ? 1024 : cap_kb) : (size_t)32768);
    /* ember's defaults, which kafka.<property> may override: a deeper
     * prefetch than librdkafka's 100000 messages, which stalls for about
     * a second at a time under load; memory stays bounded by
     * queued.max.messages.kbytes. Fetch responses of at most 16 MiB stay
     * under malloc's mmap threshold (main.c), so their buffers are reused
     * instead of being fresh pages every time (librdkafka's 50 MiB). */
    if (conf_set(conf, "client.id", client, "kafka.client.id", err, errlen) ||
        conf_set(conf, "queued.min.messages", "1000000", "kafka.queued.min.messages", err,
                 errlen) ||
        conf_set(conf, "queued.max.messages.kbytes", queue_kb, "kafka.queued.max.messages.kbytes",
                 err, errlen) ||
        conf_set(conf, "fetch.max.bytes", "16777216", "kafka.fetch.max.bytes", err, errlen) ||
        conf_set(conf, "log.connection.close", "false", "kafka.log.connection.close", err,
                 errlen))
        goto fail;
    /* Failover in seconds instead of librdkafka's 45 s session: a dead
     * member is noticed after session.timeout.ms (6 s, the least a broker
     * accepts by default, group.min.session.timeout.ms), and the others
     * hear of a rebalance at their next heartbeat. max.poll.interval.ms is
     * also how long a broker waits for every member to rejoin; ember's
     * receiver thread polls every 50 ms even while held, so 30 s only
     * bounds a member that hangs. See docs/scaling.md. */
    if (conf_set(conf, "session.timeout.ms", "6000", "kafka.session.timeout.ms", err, errlen) ||
        conf_set(conf, "heartbeat.interval.ms", "1000", "kafka.heartbeat.interval.ms", err,
                 errlen) ||
        conf_set(conf, "max.poll.interval.ms", "30000", "kafka.max.poll.interval.ms", err,
                 errlen))
        goto fail;
    if (em_props_bool(props, "static_membership", 0) &&
        conf_set(conf, "group.instance.id", client, "static_membership", err, errlen))
        goto fail;
    if (k->rate > 0) {
        /* A capped partition takes half a second of records at a time, and
         * a pause drops whatever else was fetched: fetch about that much
         * (assuming records near 1 KiB), not librdkafka's 1 MiB. */
        double bytes = k->rate * 512;
        char fetch[32];
        if (bytes < 65536)
            bytes = 65536;
        if (bytes > 1048576)
            bytes = 1048576;
        snprintf(fetch, sizeof fetch, "%.0f", bytes);
        if (conf_set(conf, "max.partition.fetch.bytes", fetch, "kafka.max.partition.fetch.bytes",
                     err, errlen))
            goto fail;
    }
    for (size_t i = 0; i < props->n; i++)
        if (strncmp(props->items[i].key, "kafka.", 6) == 0 &&
            conf_set(conf, props->items[i].key + 6, props->items[i].value, props->items[i].key,
                     err, errlen))
            goto fail;
    if (conf_set(conf, "bootstrap.servers", k->brokers, "brokers", err, errlen) ||
        conf_set(conf, "group.id", k->group, "group", err, errlen) ||
        conf_set(conf, "auto.offset.reset", start, "start", err, errlen) ||
        conf_set(conf, "enable.auto.commit", "false", "enable.auto.commit", err, errlen) ||
        conf_set(conf, "enable.auto.offset.store", "false", "enable.auto.offset.store", err,
                 errlen))
        goto fail;
    /* A revoke waits for the batches in flight about as long as three
     * batches take, and well within the time the broker gives members to
     * rejoin (max.poll.interval.ms). */
    char mpi[32];
    size_t mpi_len = sizeof mpi;
    int64_t max_poll = 30000;
    if (rd_kafka_conf_get(conf, "max.poll.interval.ms", mpi, &mpi_len) == RD_KAFKA_CONF_OK)
        max_poll = strtoll(mpi, NULL, 10);
    k->revoke_wait_ms = 3 * em_receiver_batch_interval_ms(r) + 2000;
    if (k->revoke_wait_ms > max_poll / 2)
        k->revoke_wait_ms = max_poll / 2;
    rd_kafka_conf_set_opaque(conf, k);
    rd_kafka_conf_set_rebalance_cb(conf, em_kafka_on_rebalance);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);

    /* librdkafka's prefetch holds records too: memory.max counts its bound,
     * up to half the cap (a larger kafka.queued.max.messages.kbytes set by
     * hand must not stop every receiver for good) */
    char kb[32];
    size_t kbn = sizeof kb;
    size_t queued = rd_kafka_conf_get(conf, "queued.max.messages.kbytes", kb, &kbn) ==
                            RD_KAFKA_CONF_OK ? (size_t)strtoull(kb, NULL, 10) * 1024 : 0;
    if (em_receiver_memory_max(r) && queued > em_receiver_memory_max(r) / 2)
        queued = em_receiver_memory_max(r) / 2;
    char why[512];
    k->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof why);
    if (!k->rk) {
        snprintf(err, errlen, "kafka source: %s", why);
        goto fail; /* rd_kafka_new frees conf only on success */
    }
    k->queued_bytes = queued;
    em_block_reserve((ptrdiff_t)queued);
    rd_kafka_poll_set_consumer(k->rk);
    k->queue = rd_kafka_queue_get_consumer(k->rk);
    return k;
fail:
    if (!k->rk)
        rd_kafka_conf_destroy(conf);
    kafka_free(k);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* poll                                                                */
/* ------------------------------------------------------------------ */

static int subscribe(kafka_src *k)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    char *copy = strdup(k->topics_opt), *save = NULL;
    if (!copy) {
        rd_kafka_topic_partition_list_destroy(l);
        return -1;
    }
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ')
            t++;
        size_t n = strlen(t);
        while (n && t[n - 1] == ' ')
            t[--n] = '\0';
        if (n)
            rd_kafka_topic_partition_list_add(l, t, RD_KAFKA_PARTITION_UA);
    }
    free(copy);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(k->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err) { /* a bad topic regex, say: logged once, tried again at each poll */
        if (!k->subscribe_failed)
            em_log(EM_LOG_ERROR, k->job, "%s: cannot subscribe to topic '%s': %s", k->name,
                   k->topics_opt, rd_kafka_err2str(err));
        k->subscribe_failed = 1;
        return -1;
    }
    em_log(EM_LOG_INFO, k->job, "%s: joining the group", k->name);
    k->subscribed = 1;
    return 0;
}

static int put(kafka_src *k, size_t *w, const void *src, size_t n)
{
    if (*w + n > k->meta_cap) {
        size_t cap = k->meta_cap ? k->meta_cap : 256;
        while (cap < *w + n)
            cap *= 2;
        char *m = realloc(k->meta, cap);
        if (!m)
            return -1;
        k->meta = m;
        k->meta_cap = cap;
    }
    memcpy(k->meta + *w, src, n);
    *w += n;
    return 0;
}

/* The meta of one record (see the top of this file), then its headers
 * when the job reads records whole (format = "record"); the meta's length
 * (the headers' in *hlen), or -1. A header that this layout cannot hold (a
 * NUL anywhere, '=' in its name) is left out, and that is logged once. */
static ssize_t build_meta(kafka_src *k, const rd_kafka_message_t *m, const part *p,
                          uint32_t epoch, size_t *hlen)
{
    const char *name = p ? p->topic->name : rd_kafka_topic_name(m->rkt);
    size_t w = 0;
    if (put(k, &w, name, p ? p->topic->len : strlen(name)))
        return -1;
    /* NUL '#' digits, written backwards: no printf per record */
    char tag[16], *t = tag + sizeof tag;
    do
        *--t = (char)('0' + epoch % 10);
    while (epoch /= 10);
    *--t = '#';
    *--t = '\0';
    if (put(k, &w, t, (size_t)(tag + sizeof tag - t)))
        return -1;
    size_t mlen = w;
    *hlen = 0;
    rd_kafka_headers_t *hdrs;
    if (k->headers && rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char *hname;
        const void *val;
        size_t size;
        for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &hname, &val, &size) == 0; i++) {
            if (strchr(hname, '=') || (val && memchr(val, '\0', size))) {
                if (!k->header_warned) {
                    em_log(EM_LOG_WARN, k->job, "%s: header '%s' of %s[%" PRId32 "] offset %"
                           PRId64 " has a NUL byte or '=' in its name; such headers are left "
                           "out of records", k->name, hname, name, m->partition, m->offset);
                    k->header_warned = 1;
                }
                continue;
            }
            if (put(k, &w, "", 1) || put(k, &w, hname, strlen(hname)) || put(k, &w, "=", 1) ||
                (val && put(k, &w, val, size)))
                return -1;
        }
        *hlen = w - mlen;
    }
    return (ssize_t)mlen;
}

/* Pushes one message. Returns 1 when pushed, 0 when not (it will be read
 * again: its part is rewound). since: k->rebalances when the consume call
 * that returned it began; a part assigned after that may have had the
 * message fetched under a previous assignment, so it gets no epoch. */
static int push_message(kafka_src *k, em_receiver *r, const rd_kafka_message_t *m,
                        unsigned long since)
{
    part *p = em_kafka_message_part(k, m);
    if (p && p->rewinding)
        return 0; /* an earlier record of its part was refused: all of it comes again */
    if (p && !p->assigned)
        return 0; /* fetched before its partition was revoked: the new owner reads it */
    uint32_t epoch = p && p->assigned && p->assigned_at <= since ? p->epoch : 0;
    size_t hlen = 0;
    ssize_t mlen = build_meta(k, m, p, epoch, &hlen);
    int64_t ts = rd_kafka_message_timestamp(m, NULL);
    if (ts < 0)
        ts = em_clock_now_ms();
    em_push rec = {.value = m->payload ? m->payload : "", /* a null value (tombstone) reads as "" */
                   .value_len = m->payload ? m->len : 0, .key = m->key,
                   .key_len = m->key ? m->key_len : 0, .ts_ms = ts, .partition = m->partition,
                   .offset = m->offset, .meta = k->meta, .meta_len = mlen > 0 ? (size_t)mlen : 0,
                   .extra = k->headers ? k->meta + (mlen > 0 ? mlen : 0) : NULL,
                   .extra_len = hlen};
    if (mlen >= 0 && em_receiver_push(r, &rec) == 0) {
        if (p && k->rate > 0 && (p->tokens -= 1) < 1)
            p->rate_paused = 1;
        return 1;
    }
    em_log(EM_LOG_ERROR, k->job, "%s: receiver refused %s[%" PRId32 "] offset %" PRId64
           " (out of memory); reading it again", k->name, rd_kafka_topic_name(m->rkt),
           m->partition, m->offset);
    if (p) {
        pthread_mutex_lock(&k->lock);
        if (p->assigned)
            em_kafka_rewind_locked(k, p, m->offset);
        pthread_mutex_unlock(&k->lock);
        p->rewinding = p->assigned;
    }
    return 0;
}

/* Reads at most max records, waiting at most timeout_ms. Rebalances are
 * served inside the consume call, on this thread. */
static int kafka_poll(void *self, em_receiver *r, uint32_t max, int timeout_ms)
{
    kafka_src *k = self;
    if (k->subscribed)
        em_kafka_report_lag(k, r);
    if (!k->subscribed && subscribe(k) != 0)
        return -1;
    if (atomic_load(&k->seeks_pending))
        em_kafka_apply_seeks(k);
    if (max == 0) { /* the core's pause: read nothing; past the grace, pause the partitions */
        if (k->core_paused && !k->core_pause_applied &&
            em_clock_mono_ms() - k->core_paused_at >= CORE_PAUSE_GRACE_MS) {
            k->core_pause_applied = 1;
            em_kafka_sync_pauses(k);
        }
        if (!k->core_pause_applied)
            return 0;
        /* Every partition is paused, so nothing is fetched: a consume call
         * only serves rebalances and keeps max.poll.interval.ms from
         * expiring while the core holds this receiver. A record fetched
         * before the pause may still come out; it is pushed as usual. */
        unsigned long since = k->rebalances;
        ssize_t n = rd_kafka_consume_batch_queue(k->queue, 0, k->msgs, 1);
        int pushed = 0;
        for (ssize_t i = 0; i < n; i++) {
            if (k->msgs[i]->err)
                consumer_error(k, k->msgs[i]);
            else
                pushed += push_message(k, r, k->msgs[i], since);
            rd_kafka_message_destroy(k->msgs[i]);
        }
        return pushed;
    }
    int wait = timeout_ms;
    uint32_t step = CONSUME_BATCH;
    if (k->rate > 0) {
        refill(k, &wait);
        em_kafka_sync_pauses(k);
        step = rate_step(k);
    }
    uint32_t pushed = 0;
    for (int first = 1; pushed < max; first = 0) {
        size_t want = max - pushed < step ? max - pushed : step;
        if (want == 0) {
            if (!first)
                break;
            want = 1; /* everything is paused: still serve rebalances and errors, and wait */
        }
        unsigned long rebalances = k->rebalances;
        ssize_t n = rd_kafka_consume_batch_queue(k->queue, first ? wait : 0, k->msgs, want);
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++) {
            rd_kafka_message_t *m = k->msgs[i];
            if (m->err)
                consumer_error(k, m);
            else
                pushed += (uint32_t)push_message(k, r, m, rebalances);
            rd_kafka_message_destroy(m);
        }
        if (k->rate > 0) {
            em_kafka_sync_pauses(k);
            step = rate_step(k);
        }
        if ((size_t)n < want)
            break;
    }
    if (pushed) {
        if (em_kafka_is_outage(atomic_exchange(&k->outage, 0)))
            em_log(EM_LOG_INFO, k->job, "%s: the brokers answer again; records flow", k->name);
        atomic_store(&k->last_consumer_err, 0);
    }
    return (int)pushed;
}

/* ------------------------------------------------------------------ */
/* pause, resume, free                                                 */
/* ------------------------------------------------------------------ */

/* The core stops calling poll() with records to read: its token bucket is
 * empty, or it holds the receiver (too many waiting batches, memory.max).
 * Token waits last a block interval at most, shorter than librdkafka 2.0.2
 * takes to notice a resume (up to a second), and a pause drops what it
 * prefetched: so the partitions are paused only once the core's pause
 * outlasts CORE_PAUSE_GRACE_MS (seen by the max = 0 polls the core makes
 * meanwhile). Until then the prefetch, bounded by
 * queued.max.messages.kbytes, simply waits. Receiver thread. */
static void kafka_pause(void *self)
{
    kafka_src *k = self;
    if (!k->core_paused)
        k->core_paused_at = em_clock_mono_ms();
    k->core_paused = 1;
}

static void kafka_resume(void *self)
{
    kafka_src *k = self;
    k->core_paused = 0;
    if (k->core_pause_applied) {
        k->core_pause_applied = 0;
        em_kafka_sync_pauses(k);
    }
}

/* Leaves the group (the revoke runs here, through em_kafka_on_rebalance) and frees
 * everything. Runs once every block of the receiver is gone, so no
 * batch_done can come later. Accepts NULL. */
static void kafka_free(void *self)
{
    kafka_src *k = self;
    if (!k)
        return;
    if (k->rk) {
        int64_t t0 = em_clock_mono_ms();
        k->closing = 1;
        if (k->subscribed)
            rd_kafka_consumer_close(k->rk);
        if (k->queue)
            rd_kafka_queue_destroy(k->queue);
        rd_kafka_destroy(k->rk);
        em_block_reserve(-(ptrdiff_t)k->queued_bytes);
        if (em_clock_mono_ms() - t0 > CLOSE_NOTE_MS)
            em_log(EM_LOG_INFO, k->job, "%s: leaving the group took %lldms", k->name,
                   (long long)(em_clock_mono_ms() - t0));
    }
    for (size_t i = 0; i < k->ntopics; i++) {
        for (int32_t p = 0; p < k->topics[i]->nparts; p++)
            free(k->topics[i]->parts[p]);
        free(k->topics[i]->parts);
        free(k->topics[i]->name);
        free(k->topics[i]);
    }
    free(k->topics);
    free(k->touched);
    free(k->meta);
    for (size_t i = 0; i < k->nresume; i++)
        free(k->resume[i].topic);
    free(k->resume);
    if (k->cl)
        em_changelog_unset_rewind(k->cl, k);
    em_changelog_close(k->cl);
    pthread_mutex_destroy(&k->lock);
    pthread_mutex_destroy(&k->commit_lock);
    free(k->job);
    free(k->name);
    free(k->brokers);
    free(k->topics_opt);
    free(k->group);
    free(k);
}

/* Kafka keeps what was not committed: no write-ahead log needed. */
static int kafka_acknowledges(void *self)
{
    (void)self;
    return 1;
}

/* The commit of a stateful job's batch: its changelog, if it keeps one. */
static int kafka_commit_state(const char *job, const char *positions, uint64_t batch_id,
                              char *err, size_t errlen)
{
    em_changelog *cl = em_changelog_find(job);
    return cl ? em_changelog_commit(cl, positions, batch_id, err, errlen) : 0;
}

const em_connector em_kafka_connector = {
    .name = "kafka",
    .options = kafka_options,
    .prefixes = kafka_prefixes,
    .create = kafka_create,
    .poll = kafka_poll,
    .batch_done = em_kafka_batch_done,
    .positions = em_kafka_positions,
    .resume_from = em_kafka_resume_from,
    .pause = kafka_pause,
    .resume = kafka_resume,
    .free = kafka_free,
    .acknowledges = kafka_acknowledges,
    .commit_state = kafka_commit_state,
};

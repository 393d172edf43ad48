/* kafka_changelog.c — see kafka_changelog.h and docs/scaling.md.
 *
 * Exactness without Kafka transactions. A batch's commit writes, per input
 * partition, the keys it changed and then a marker with the input offset
 * the state now covers, waits until the cluster acknowledged all of them
 * (acks=all, one request in flight, so the partition's order is the order
 * written), and only then do the checkpoint and the group commit follow. A
 * crash before the marker leaves a tail of records no marker covers: a
 * restore ignores it, and the input is read again from the last marker's
 * offset, whatever the group committed. The marker, not the group's offset,
 * is the position of a stateful job's partition.
 *
 * A tail must also never outlive compaction as the newest value of a key
 * (compaction keeps the last record per key, covered or not): a restore
 * that finds one writes again, after it, the covered value of every key the
 * tail touched (a tombstone where none is covered) and a copy of the last
 * marker, and waits for the cluster to have them, before the partition is
 * read (repair_tail). Whatever compaction keeps then is the covered state.
 *
 * Markers carry the job's state_version ("<offset> <batch id> v=<version>";
 * one without "v=" predates versions and counts as any): a load event tells
 * Lua the version of the state it holds, and Lua migrates or discards
 * state of another version (lua/ember/state_changelog.lua).
 */
#include "kafka_changelog.h"
#include "kafka_changelog_int.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "../core/clock.h"
#include "../core/failpoint.h"
#include "../core/log.h"

#define MAX_PARTITIONS 65536

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static em_changelog *registry;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    em_changelog *cl = opaque;
    if (m->err && !cl->dr_err)
        cl->dr_err = m->err;
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    if (level <= 4)
        em_log(EM_LOG_DEBUG, NULL, "kafka changelog: %s: %s", fac, buf);
}

rd_kafka_t *em_changelog_client(em_changelog *cl, rd_kafka_type_t type, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char group[600];
    snprintf(group, sizeof group, "ember-changelog-%s", cl->job);
    const char *const producer[][2] = {
        {"acks", "all"},
        {"max.in.flight.requests.per.connection", "1"}, /* order per partition, retries too */
        {"linger.ms", "1"},
        {"compression.type", "lz4"},
        {"message.timeout.ms", "30000"},
        {"reconnect.backoff.max.ms", "1000"},
        {"log.connection.close", "false"},
    };
    const char *const consumer[][2] = {
        {"group.id", group}, /* never joined nor committed: partitions are assigned */
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"enable.partition.eof", "true"},
        {"fetch.wait.max.ms", "10"},
        {"reconnect.backoff.max.ms", "1000"},
        {"log.connection.close", "false"},
    };
    int ok = rd_kafka_conf_set(conf, "bootstrap.servers", cl->brokers, err, errlen) ==
             RD_KAFKA_CONF_OK;
    const char *const (*set)[2] = type == RD_KAFKA_PRODUCER ? producer : consumer;
    size_t n = type == RD_KAFKA_PRODUCER ? sizeof producer / sizeof producer[0]
                                         : sizeof consumer / sizeof consumer[0];
    for (size_t i = 0; ok && i < n; i++)
        ok = rd_kafka_conf_set(conf, set[i][0], set[i][1], err, errlen) == RD_KAFKA_CONF_OK;
    rd_kafka_t *rk = NULL;
    if (ok) {
        rd_kafka_conf_set_opaque(conf, cl);
        rd_kafka_conf_set_log_cb(conf, on_log);
        if (type == RD_KAFKA_PRODUCER)
            rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
        rk = rd_kafka_new(type, conf, err, errlen);
    }
    if (!rk)
        rd_kafka_conf_destroy(conf);
    return rk;
}

/* The partition count of topic, or -1 (absent) / -2 (no answer, err). */
static int topic_partitions(rd_kafka_t *rk, const char *name, char *err, size_t errlen)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, name, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, META_TIMEOUT_MS);
    int n = -2;
    if (e) {
        snprintf(err, errlen, "no metadata for topic '%s': %s", name, rd_kafka_err2str(e));
    } else if (md->topic_cnt < 1 || md->topics[0].err) {
        n = -1;
        snprintf(err, errlen, "topic '%s': %s", name,
                 md->topic_cnt ? rd_kafka_err2str(md->topics[0].err) : "not in the metadata");
    } else {
        n = md->topics[0].partition_cnt;
    }
    if (md)
        rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    return n;
}

/* Creates the changelog topic, compacted, with nparts partitions. 0, or -1
 * and err (the cluster refused; a mock cluster cannot create topics). */
static int create_topic(em_changelog *cl, int nparts, char *err, size_t errlen)
{
    char why[256];
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(cl->topic, nparts, -1, why, sizeof why);
    if (!nt) {
        snprintf(err, errlen, "%s", why);
        return -1;
    }
    rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
    /* a tail no marker covers is only ever superseded after this long: a
     * restore within it sees the values the last marker covers */
    rd_kafka_NewTopic_set_config(nt, "min.compaction.lag.ms", "86400000");
    rd_kafka_queue_t *q = rd_kafka_queue_new(cl->producer);
    rd_kafka_AdminOptions_t *o = rd_kafka_AdminOptions_new(cl->producer, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(o, META_TIMEOUT_MS, NULL, 0);
    rd_kafka_CreateTopics(cl->producer, &nt, 1, o, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, META_TIMEOUT_MS + 2000);
    int rc = -1;
    if (!ev) {
        snprintf(err, errlen, "no answer to CreateTopics");
    } else if (rd_kafka_event_error(ev)) {
        snprintf(err, errlen, "%s", rd_kafka_event_error_string(ev));
    } else {
        size_t n = 0;
        const rd_kafka_topic_result_t **r =
            rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
        rd_kafka_resp_err_t e = n ? rd_kafka_topic_result_error(r[0]) : 0;
        if (e && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
            snprintf(err, errlen, "%s", rd_kafka_topic_result_error_string(r[0]));
        else
            rc = 0;
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(o);
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
    return rc;
}

static void free_changelog(em_changelog *cl)
{
    if (!cl)
        return;
    if (cl->producer) {
        rd_kafka_flush(cl->producer, FLUSH_TIMEOUT_MS);
        rd_kafka_destroy(cl->producer);
    }
    if (cl->reader) {
        rd_kafka_consumer_close(cl->reader);
        rd_kafka_destroy(cl->reader);
    }
    for (event *e = cl->head, *n; e; e = n) {
        n = e->next;
        free(e->data);
        free(e);
    }
    em_changelog_begin(cl);
    free(cl->staged);
    free(cl->parts);
    free(cl->job);
    free(cl->brokers);
    free(cl->input);
    free(cl->topic);
    free(cl->version);
    pthread_mutex_destroy(&cl->lock);
    pthread_mutex_destroy(&cl->read_lock);
    free(cl);
}

/* Makes the changelog, its producer and its topic. */
static em_changelog *make(const char *job, const char *brokers, const char *input,
                          const char *topic, char *err, size_t errlen)
{
    if (strchr(input, ',') || input[0] == '^') {
        snprintf(err, errlen, "the state changelog needs one input topic, not '%s' (or set "
                 "changelog = false: local state files)", input);
        return NULL;
    }
    em_changelog *cl = calloc(1, sizeof *cl);
    if (!cl) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&cl->lock, NULL);
    pthread_mutex_init(&cl->read_lock, NULL);
    cl->refs = 1;
    cl->job = strdup(job);
    cl->brokers = strdup(brokers);
    cl->input = strdup(input);
    cl->topic = strdup(topic);
    char why[512] = "";
    if (!cl->job || !cl->brokers || !cl->input || !cl->topic ||
        !(cl->producer = em_changelog_client(cl, RD_KAFKA_PRODUCER, why, sizeof why))) {
        snprintf(err, errlen, "state changelog '%s': %s", topic, why[0] ? why : "out of memory");
        free_changelog(cl);
        return NULL;
    }
    int in = topic_partitions(cl->producer, input, why, sizeof why);
    if (in < 1) {
        snprintf(err, errlen, "state changelog '%s': the input %s", topic, why);
        free_changelog(cl);
        return NULL;
    }
    int have = topic_partitions(cl->producer, topic, why, sizeof why);
    if (have == -1) {
        if (create_topic(cl, in, why, sizeof why) != 0) {
            snprintf(err, errlen, "state changelog: topic '%s' is absent and cannot be created "
                     "(%s); create it compacted with %d partitions", topic, why, in);
            free_changelog(cl);
            return NULL;
        }
        em_log(EM_LOG_INFO, job, "state changelog: created topic '%s' (%d partitions, "
               "cleanup.policy=compact)", topic, in);
        have = in;
    }
    if (have < in) {
        snprintf(err, errlen, "state changelog: topic '%s' has %d partitions, the input '%s' "
                 "%d; it needs one per input partition", topic, have, input, in);
        free_changelog(cl);
        return NULL;
    }
    return cl;
}

em_changelog *em_changelog_open(const char *job, const char *brokers, const char *input,
                                const char *topic, char *err, size_t errlen)
{
    pthread_mutex_lock(&registry_lock);
    for (em_changelog *c = registry; c; c = c->next)
        if (strcmp(c->job, job) == 0) {
            if (strcmp(c->topic, topic) != 0 || strcmp(c->input, input) != 0 ||
                strcmp(c->brokers, brokers) != 0) {
                snprintf(err, errlen, "state changelog: the job's changelog is '%s' (input '%s'); "
                         "a reload cannot change it, restart the driver", c->topic, c->input);
                pthread_mutex_unlock(&registry_lock);
                return NULL;
            }
            c->refs++;
            pthread_mutex_unlock(&registry_lock);
            return c;
        }
    em_changelog *cl = make(job, brokers, input, topic, err, errlen);
    if (cl) {
        cl->next = registry;
        registry = cl;
    }
    pthread_mutex_unlock(&registry_lock);
    return cl;
}

void em_changelog_close(em_changelog *cl)
{
    if (!cl)
        return;
    pthread_mutex_lock(&registry_lock);
    int last = --cl->refs == 0;
    if (last)
        for (em_changelog **pp = &registry; *pp; pp = &(*pp)->next)
            if (*pp == cl) {
                *pp = cl->next;
                break;
            }
    pthread_mutex_unlock(&registry_lock);
    if (last)
        free_changelog(cl);
}

em_changelog *em_changelog_find(const char *job)
{
    pthread_mutex_lock(&registry_lock);
    em_changelog *c = registry;
    while (c && strcmp(c->job, job) != 0)
        c = c->next;
    pthread_mutex_unlock(&registry_lock);
    return c;
}

/* The info of partition p, grown on demand. Caller holds lock. */
pinfo *em_changelog_part_of(em_changelog *cl, int32_t p)
{
    if (p < 0 || p >= MAX_PARTITIONS)
        return NULL;
    if (p >= cl->nparts) {
        int32_t n = p + 16;
        pinfo *np = realloc(cl->parts, (size_t)n * sizeof *np);
        if (!np)
            return NULL;
        for (int32_t i = cl->nparts; i < n; i++)
            np[i] = (pinfo){.offset = -1, .pos = -1};
        cl->parts = np;
        cl->nparts = n;
    }
    return &cl->parts[p];
}

/* Queues an event; data is taken. Caller holds lock. */
void em_changelog_queue(em_changelog *cl, int kind, int32_t p, char *data, size_t len)
{
    event *e = calloc(1, sizeof *e);
    if (!e) {
        free(data);
        return;
    }
    *e = (event){.kind = kind, .partition = p, .data = data, .len = len};
    if (cl->tail)
        cl->tail->next = e;
    else
        cl->head = e;
    cl->tail = e;
}

void em_changelog_set_version(em_changelog *cl, const char *version)
{
    if (cl->version && strcmp(cl->version, version) == 0)
        return;
    char *v = strdup(version);
    if (v) {
        free(cl->version);
        cl->version = v;
    }
}

void em_changelog_revoked(em_changelog *cl, int32_t partition)
{
    pthread_mutex_lock(&cl->lock);
    pinfo *pi = em_changelog_part_of(cl, partition);
    if (pi)
        pi->owned = 0;
    em_changelog_queue(cl, 2, partition, NULL, 0);
    pthread_mutex_unlock(&cl->lock);
}

void em_changelog_stale(em_changelog *cl, int32_t partition)
{
    pthread_mutex_lock(&cl->lock);
    pinfo *pi = em_changelog_part_of(cl, partition);
    if (pi)
        pi->stale = 1;
    pthread_mutex_unlock(&cl->lock);
}

void em_changelog_set_rewind(em_changelog *cl, em_changelog_rewind_fn fn, void *arg)
{
    pthread_mutex_lock(&cl->lock);
    cl->rewind = fn;
    cl->rewind_arg = arg;
    pthread_mutex_unlock(&cl->lock);
}

void em_changelog_unset_rewind(em_changelog *cl, void *arg)
{
    pthread_mutex_lock(&cl->lock);
    if (cl->rewind_arg == arg) {
        cl->rewind = NULL;
        cl->rewind_arg = NULL;
    }
    pthread_mutex_unlock(&cl->lock);
}

void em_changelog_begin(em_changelog *cl)
{
    for (size_t i = 0; i < cl->nstaged; i++) {
        free(cl->staged[i].k);
        free(cl->staged[i].v);
    }
    cl->nstaged = 0;
}

int em_changelog_put(em_changelog *cl, int32_t partition, const char *k, size_t klen,
                     const char *v, size_t vlen)
{
    if (cl->nstaged == cl->cap) {
        size_t c = cl->cap ? cl->cap * 2 : 1024;
        staged *n = realloc(cl->staged, c * sizeof *n);
        if (!n)
            return -1;
        cl->staged = n;
        cl->cap = c;
    }
    staged *s = &cl->staged[cl->nstaged];
    s->partition = partition;
    s->klen = klen + 1;
    s->vlen = vlen;
    s->k = malloc(klen + 1);
    s->v = v ? malloc(vlen ? vlen : 1) : NULL;
    if (!s->k || (v && !s->v)) {
        free(s->k);
        free(s->v);
        return -1;
    }
    s->k[0] = 's';
    memcpy(s->k + 1, k, klen);
    if (v)
        memcpy(s->v, v, vlen);
    cl->nstaged++;
    return 0;
}

int em_changelog_produce(em_changelog *cl, int32_t p, const void *k, size_t klen, const void *v,
                   size_t vlen, char *err, size_t errlen)
{
    rd_kafka_resp_err_t e;
    for (int tries = 0;; tries++) {
        e = rd_kafka_producev(cl->producer, RD_KAFKA_V_TOPIC(cl->topic), RD_KAFKA_V_PARTITION(p),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                              RD_KAFKA_V_KEY(k, klen), RD_KAFKA_V_VALUE((void *)v, vlen),
                              RD_KAFKA_V_END);
        if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL || tries > 100)
            break;
        rd_kafka_poll(cl->producer, 100);
    }
    if (e) {
        snprintf(err, errlen, "state changelog: cannot write to %s[%" PRId32 "]: %s", cl->topic,
                 p, rd_kafka_err2str(e));
        return -1;
    }
    return 0;
}

/* Positions lines "<src> <topic> <partition> <offset>" of the input topic:
 * each partition's pos. Caller holds lock. */
static void read_positions(em_changelog *cl, const char *positions)
{
    size_t tl = strlen(cl->input);
    for (const char *s = positions; s && *s;) {
        size_t l = strcspn(s, "\n");
        const char *t = memchr(s, ' ', l);
        if (t && (size_t)(s + l - t) > tl + 1 && strncmp(t + 1, cl->input, tl) == 0 &&
            t[1 + tl] == ' ') {
            long p = -1;
            long long off = -1;
            if (sscanf(t + 2 + tl, "%ld %lld", &p, &off) == 2 && p >= 0) {
                pinfo *pi = em_changelog_part_of(cl, (int32_t)p);
                if (pi) {
                    pi->touched = 1;
                    pi->pos = off;
                }
            }
        }
        s += l + (s[l] == '\n');
    }
}

int em_changelog_commit(em_changelog *cl, const char *positions, uint64_t batch_id, char *err,
                        size_t errlen)
{
    int rc = 0;
    pthread_mutex_lock(&cl->lock);
    read_positions(cl, positions);
    for (size_t i = 0; i < cl->nstaged; i++) {
        pinfo *pi = em_changelog_part_of(cl, cl->staged[i].partition);
        if (pi)
            pi->touched = 1;
    }
    /* which partitions this commit writes: owned, and read in this assignment */
    int32_t n = cl->nparts;
    char *skip = calloc((size_t)n + 1, 1);
    if (!skip) {
        pthread_mutex_unlock(&cl->lock);
        snprintf(err, errlen, "state changelog: out of memory");
        return -1;
    }
    for (int32_t p = 0; p < n; p++)
        skip[p] = cl->parts[p].touched && (!cl->parts[p].owned || cl->parts[p].stale);
    pthread_mutex_unlock(&cl->lock);

    cl->dr_err = 0;
    for (size_t i = 0; rc == 0 && i < cl->nstaged; i++) {
        staged *s = &cl->staged[i];
        if (s->partition >= 0 && s->partition < n && !skip[s->partition])
            rc = em_changelog_produce(cl, s->partition, s->k, s->klen, s->v, s->v ? s->vlen : 0, err, errlen);
        else if (s->partition < 0 || s->partition >= n) {
            snprintf(err, errlen, "state changelog: a key with no Kafka partition (%" PRId32 ")",
                     s->partition);
            rc = -1;
        }
    }
    /* a spec's crash between the values and the marker: the values landed */
    if (rc == 0 && cl->nstaged > 0 && em_failpoint_armed("changelog_before_marker")) {
        rd_kafka_flush(cl->producer, FLUSH_TIMEOUT_MS);
        em_failpoint("changelog_before_marker");
    }
    int64_t *marks = calloc((size_t)n + 1, sizeof *marks);
    for (int32_t p = 0; rc == 0 && marks && p < n; p++) {
        pthread_mutex_lock(&cl->lock);
        pinfo pi = cl->parts[p];
        pthread_mutex_unlock(&cl->lock);
        marks[p] = -2;
        if (!pi.touched || skip[p])
            continue;
        marks[p] = pi.pos >= 0 ? pi.pos : pi.offset;
        char text[128];
        int tl = snprintf(text, sizeof text, "%lld %llu v=%.60s", (long long)marks[p],
                          (unsigned long long)batch_id, cl->version ? cl->version : "");
        rc = em_changelog_produce(cl, p, "m", 1, text, (size_t)tl, err, errlen);
    }
    if (!marks && rc == 0) {
        snprintf(err, errlen, "state changelog: out of memory");
        rc = -1;
    }
    if (rc == 0) {
        rd_kafka_resp_err_t e = rd_kafka_flush(cl->producer, FLUSH_TIMEOUT_MS);
        if (e || cl->dr_err) {
            snprintf(err, errlen, "state changelog: %s did not take the batch's state: %s",
                     cl->topic, rd_kafka_err2str(e ? e : cl->dr_err));
            rc = -1;
        }
    } else {
        rd_kafka_flush(cl->producer, FLUSH_TIMEOUT_MS); /* what went out is a tail: ignored */
    }
    em_changelog_begin(cl);

    /* the bookkeeping; partitions skipped get their state again */
    int32_t reload[64];
    int nreload = 0;
    pthread_mutex_lock(&cl->lock);
    for (int32_t p = 0; p < n; p++) {
        pinfo *pi = &cl->parts[p];
        if (rc == 0 && marks && marks[p] != -2)
            pi->offset = marks[p];
        if (rc == 0 && skip[p]) {
            em_changelog_queue(cl, 2, p, NULL, 0);
            if (pi->owned && nreload < 64)
                reload[nreload++] = p;
            else if (pi->owned)
                em_changelog_queue(cl, 3, p, strdup("state changelog: too many partitions to reload "
                                             "at once"), 0);
        }
        if (rc == 0)
            pi->stale = 0;
        pi->touched = 0;
        pi->pos = -1;
    }
    pthread_mutex_unlock(&cl->lock);
    free(marks);
    free(skip);
    /* The batch mixed records of an ended assignment with (maybe) newer
     * ones: none of them count. The state is read again, and the partition
     * too, from the marker that state covers. */
    for (int i = 0; i < nreload; i++) {
        int64_t at = -1;
        pthread_mutex_lock(&cl->read_lock);
        int rrc = em_changelog_restore(cl, reload[i], &at, 0);
        pthread_mutex_unlock(&cl->read_lock);
        pthread_mutex_lock(&cl->lock);
        em_changelog_rewind_fn fn = cl->rewind;
        void *arg = cl->rewind_arg;
        pthread_mutex_unlock(&cl->lock);
        em_log(EM_LOG_INFO, cl->job, "state changelog: the batch held records of partition %"
               PRId32 " from an ended assignment; its state is read again%s", reload[i],
               rrc == 0 && at >= 0 && fn ? ", and its input from the marker's offset" : "");
        if (rrc == 0 && at >= 0 && fn)
            fn(arg, reload[i], at);
    }
    return rc;
}

int em_changelog_take(em_changelog *cl, int32_t *partition, const char **data, size_t *len)
{
    pthread_mutex_lock(&cl->lock);
    event *e = cl->head;
    pthread_mutex_unlock(&cl->lock);
    if (!e)
        return 0;
    *partition = e->partition;
    *data = e->data ? e->data : "";
    *len = e->kind == 3 && e->data ? strlen(e->data) : e->len;
    return e->kind;
}

void em_changelog_taken(em_changelog *cl)
{
    pthread_mutex_lock(&cl->lock);
    event *e = cl->head;
    if (e) {
        cl->head = e->next;
        if (!cl->head)
            cl->tail = NULL;
        pinfo *pi = e->kind == 1 ? em_changelog_part_of(cl, e->partition) : NULL;
        if (pi && pi->loads > 0)
            pi->loads--;
    }
    pthread_mutex_unlock(&cl->lock);
    if (e) {
        free(e->data);
        free(e);
    }
}

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

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "../core/clock.h"
#include "../core/failpoint.h"
#include "../core/log.h"

#define META_TIMEOUT_MS 10000
#define FLUSH_TIMEOUT_MS 30000
#define READ_TIMEOUT_MS 60000 /* a restore that reads nothing for this long fails */
#define MAX_PARTITIONS 65536

typedef struct event {
    int kind; /* 1 load, 2 drop, 3 failure */
    int32_t partition;
    char *data;
    size_t len;
    struct event *next;
} event;

typedef struct staged {
    int32_t partition;
    char *k, *v; /* v NULL: removed */
    size_t klen, vlen;
} staged;

typedef struct pinfo {
    int owned;
    int stale;      /* the batch being committed holds records of an older assignment */
    int touched;    /* commit scratch */
    int64_t offset; /* the input offset of the last marker; -1: none */
    int64_t pos;    /* commit scratch: the batch's position, -1: none */
    int loads;      /* load events queued and not yet taken */
} pinfo;

struct em_changelog {
    struct em_changelog *next; /* registry */
    int refs;
    char *job, *brokers, *input, *topic;
    rd_kafka_t *producer;
    rd_kafka_t *reader;            /* made on first restore */
    pthread_mutex_t read_lock;     /* one restore at a time */
    pthread_mutex_t lock;          /* parts, events */
    pinfo *parts;
    int32_t nparts;
    event *head, *tail;
    staged *staged;                /* worker of the commit only */
    size_t nstaged, cap;
    rd_kafka_resp_err_t dr_err;    /* first delivery error of the commit */
    em_changelog_rewind_fn rewind; /* under lock */
    void *rewind_arg;
    char *version;                 /* the state_version commits write; worker of the commit */
};

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

static rd_kafka_t *new_client(em_changelog *cl, rd_kafka_type_t type, char *err, size_t errlen)
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
        !(cl->producer = new_client(cl, RD_KAFKA_PRODUCER, why, sizeof why))) {
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
static pinfo *part_of(em_changelog *cl, int32_t p)
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
static void queue_event(em_changelog *cl, int kind, int32_t p, char *data, size_t len)
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

typedef struct grow {
    char *p;
    size_t len, cap;
} grow;

static int put_bytes(grow *g, const void *src, size_t n)
{
    if (g->len + n > g->cap) {
        size_t c = g->cap ? g->cap * 2 : 65536;
        while (c < g->len + n)
            c *= 2;
        char *np = realloc(g->p, c);
        if (!np)
            return -1;
        g->p = np;
        g->cap = c;
    }
    memcpy(g->p + g->len, src, n);
    g->len += n;
    return 0;
}

static int produce(em_changelog *cl, int32_t p, const void *k, size_t klen, const void *v,
                   size_t vlen, char *err, size_t errlen);

/* What a read of a changelog partition found. */
typedef struct readout {
    grow g;          /* every record "u32 klen, key, i32 vlen (-1: removed), value" */
    size_t covered;  /* g's bytes up to the last marker */
    size_t tail;     /* records after it */
    int64_t marker;  /* the last marker's input offset; -1: none */
    char mark[128];  /* the last marker's value ("" none), written again by repair_tail */
    size_t mark_len;
} readout;

/* The state_version in a marker's value, into out (NUL-terminated); 0, or
 * -1 when the marker names none (written before markers carried one). */
static int marker_version(const char *v, size_t n, char *out, size_t outlen)
{
    for (size_t i = 0; i + 1 < n; i++)
        if (v[i] == ' ' && v[i + 1] == 'v' && i + 2 < n && v[i + 2] == '=') {
            size_t l = n - i - 3 < outlen - 1 ? n - i - 3 : outlen - 1;
            memcpy(out, v + i + 3, l);
            out[l] = '\0';
            return 0;
        }
    out[0] = '\0';
    return -1;
}

/* Reads changelog partition p from its start to the high watermark into
 * o. 0, or -1 and err. Caller holds read_lock. */
static int read_partition(em_changelog *cl, int32_t p, readout *o, char *err, size_t errlen)
{
    o->marker = -1;
    o->tail = o->covered = o->mark_len = 0;
    o->mark[0] = '\0';
    if (!cl->reader && !(cl->reader = new_client(cl, RD_KAFKA_CONSUMER, err, errlen)))
        return -1;
    int64_t lo = 0, hi = 0;
    rd_kafka_resp_err_t e =
        rd_kafka_query_watermark_offsets(cl->reader, cl->topic, p, &lo, &hi, META_TIMEOUT_MS);
    if (e) {
        snprintf(err, errlen, "the watermarks of %s[%" PRId32 "]: %s", cl->topic, p,
                 rd_kafka_err2str(e));
        return -1;
    }
    if (hi <= lo)
        return 0;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, cl->topic, p)->offset = lo;
    e = rd_kafka_assign(cl->reader, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
        snprintf(err, errlen, "cannot read %s[%" PRId32 "]: %s", cl->topic, p, rd_kafka_err2str(e));
        return -1;
    }
    grow *out = &o->g;
    int64_t next = lo;
    int64_t idle_since = em_clock_mono_ms();
    int rc = 0;
    while (next < hi) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(cl->reader, 200);
        if (!m) {
            if (em_clock_mono_ms() - idle_since > READ_TIMEOUT_MS) {
                snprintf(err, errlen, "reading %s[%" PRId32 "]: nothing for %d s at offset %"
                         PRId64 " of %" PRId64, cl->topic, p, READ_TIMEOUT_MS / 1000, next, hi);
                rc = -1;
                break;
            }
            continue;
        }
        idle_since = em_clock_mono_ms();
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            int64_t at = m->offset;
            rd_kafka_message_destroy(m);
            if (at >= hi)
                break;
            continue;
        }
        if (m->err) {
            snprintf(err, errlen, "reading %s[%" PRId32 "]: %s", cl->topic, p,
                     rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            rc = -1;
            break;
        }
        if (m->partition != p) {
            rd_kafka_message_destroy(m);
            continue;
        }
        next = m->offset + 1;
        const char *k = m->key;
        if (m->key_len == 1 && k[0] == 'm') {
            char text[64];
            size_t n = m->len < sizeof text - 1 ? m->len : sizeof text - 1;
            memcpy(text, m->payload ? m->payload : "", n);
            text[n] = 0;
            long long off = -1;
            if (sscanf(text, "%lld", &off) == 1 && off >= 0)
                o->marker = off;
            o->mark_len = m->len < sizeof o->mark ? m->len : sizeof o->mark - 1;
            memcpy(o->mark, m->payload ? m->payload : "", o->mark_len);
            o->mark[o->mark_len] = '\0';
            o->covered = out->len;
            o->tail = 0;
        } else if (m->key_len > 1 && k[0] == 's') {
            uint32_t kl = (uint32_t)(m->key_len - 1);
            int32_t vl = m->payload ? (int32_t)m->len : -1;
            if (put_bytes(out, &kl, 4) || put_bytes(out, k + 1, kl) || put_bytes(out, &vl, 4) ||
                (vl > 0 && put_bytes(out, m->payload, (size_t)vl))) {
                snprintf(err, errlen, "out of memory reading %s[%" PRId32 "]", cl->topic, p);
                rd_kafka_message_destroy(m);
                rc = -1;
                break;
            }
            o->tail++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_assign(cl->reader, NULL);
    return rc;
}

/* One record of a readout's buffer at *at: its key and value (v NULL:
 * removed); *at moves past it. 0, or -1 past the end. */
static int next_record(const grow *g, size_t end, size_t *at, const char **k, uint32_t *kl,
                       const char **v, int32_t *vl)
{
    if (*at + 8 > end)
        return -1;
    memcpy(kl, g->p + *at, 4);
    *k = g->p + *at + 4;
    memcpy(vl, g->p + *at + 4 + *kl, 4);
    *v = *vl >= 0 ? g->p + *at + 8 + *kl : NULL;
    *at += 8 + *kl + (*vl > 0 ? (size_t)*vl : 0);
    return 0;
}

static uint64_t hash_key(const char *k, uint32_t kl)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (uint32_t i = 0; i < kl; i++)
        h = (h ^ (unsigned char)k[i]) * 1099511628211ULL;
    return h;
}

/* A key a tail touched, and where its last covered record is. */
typedef struct tailkey {
    const char *k;
    uint32_t kl;
    const char *v; /* the covered value; NULL: none (or removed) */
    int32_t vl;
} tailkey;

/* The tail of o (records after its last marker, a commit cut short): for
 * each key it touched, the value the last marker covers is written again
 * (a tombstone when none is), then a copy of that marker, and the cluster
 * must have them all before the partition is read. Compaction keeps the
 * last record of each key, and these are now the last: a covered value can
 * no longer be compacted away under an uncovered one, however old the
 * records grow (no reliance on min.compaction.lag.ms). 0, or -1 and err
 * (the restore fails: running on would leave the tail exposed). Caller
 * holds read_lock. */
static int repair_tail(em_changelog *cl, int32_t p, const readout *o, size_t *keys, char *err,
                       size_t errlen)
{
    size_t cap = 16;
    while (cap < o->tail * 2)
        cap *= 2;
    tailkey *set = calloc(cap, sizeof *set);
    char *kbuf = NULL;
    size_t kcap = 0;
    int rc = 0;
    *keys = 0;
    if (!set) {
        snprintf(err, errlen, "out of memory repairing the tail of %s[%" PRId32 "]", cl->topic, p);
        return -1;
    }
    const char *k, *v;
    uint32_t kl;
    int32_t vl;
    for (size_t at = o->covered; next_record(&o->g, o->g.len, &at, &k, &kl, &v, &vl) == 0;) {
        size_t i = hash_key(k, kl) & (cap - 1);
        while (set[i].k && !(set[i].kl == kl && memcmp(set[i].k, k, kl) == 0))
            i = (i + 1) & (cap - 1);
        if (!set[i].k) {
            set[i] = (tailkey){.k = k, .kl = kl, .v = NULL, .vl = -1};
            (*keys)++;
        }
    }
    for (size_t at = 0; next_record(&o->g, o->covered, &at, &k, &kl, &v, &vl) == 0;) {
        size_t i = hash_key(k, kl) & (cap - 1);
        while (set[i].k && !(set[i].kl == kl && memcmp(set[i].k, k, kl) == 0))
            i = (i + 1) & (cap - 1);
        if (set[i].k) {
            set[i].v = v;
            set[i].vl = vl;
        }
    }
    cl->dr_err = 0;
    for (size_t i = 0; rc == 0 && i < cap; i++) {
        if (!set[i].k)
            continue;
        if (set[i].kl + 1 > kcap) {
            kcap = set[i].kl + 64;
            char *nk = realloc(kbuf, kcap);
            if (!nk) {
                snprintf(err, errlen, "out of memory repairing %s[%" PRId32 "]", cl->topic, p);
                rc = -1;
                break;
            }
            kbuf = nk;
        }
        kbuf[0] = 's';
        memcpy(kbuf + 1, set[i].k, set[i].kl);
        rc = produce(cl, p, kbuf, set[i].kl + 1, set[i].v,
                     set[i].v ? (size_t)set[i].vl : 0, err, errlen);
    }
    /* a tail before any marker: the marker says "no offset", covering the
     * tombstones just written */
    if (rc == 0)
        rc = produce(cl, p, "m", 1, o->mark_len ? o->mark : "-1 0", o->mark_len ? o->mark_len : 4,
                     err, errlen);
    rd_kafka_resp_err_t e = rd_kafka_flush(cl->producer, FLUSH_TIMEOUT_MS);
    if (rc == 0 && (e || cl->dr_err)) {
        snprintf(err, errlen, "writing the covered values over the tail of %s[%" PRId32 "]: %s",
                 cl->topic, p, rd_kafka_err2str(e ? e : cl->dr_err));
        rc = -1;
    }
    free(kbuf);
    free(set);
    return rc;
}

/* A load event's data from what a read found: the state_version of the
 * last marker ("u32 length, bytes"; length 0xffffffff: none named), then
 * the records up to that marker. 0, or -1 (out of memory). */
static int load_data(const readout *o, grow *g)
{
    char ver[64];
    int named = o->mark_len && marker_version(o->mark, o->mark_len, ver, sizeof ver) == 0;
    uint32_t vlen = named ? (uint32_t)strlen(ver) : 0xffffffffu;
    if (put_bytes(g, &vlen, 4) || (named && put_bytes(g, ver, vlen)) ||
        (o->covered && put_bytes(g, o->g.p, o->covered)))
        return -1;
    return 0;
}

/* Reads partition p and queues its load; the partition is this member's
 * from now on (reload: only if it still is, and it is not taken). The load
 * event's data starts with the state_version of the last marker ("u32
 * length, bytes"; length 0xffffffff: none named). *offset: the marker's
 * input offset, if any. Caller holds read_lock. */
static int restore_partition(em_changelog *cl, int32_t p, int64_t *offset, int reload)
{
    int64_t t0 = em_clock_mono_ms();
    readout o = {0};
    char err[512];
    int rc = read_partition(cl, p, &o, err, sizeof err);
    size_t repaired = 0;
    int64_t t_read = em_clock_mono_ms();
    if (rc == 0 && o.tail)
        rc = repair_tail(cl, p, &o, &repaired, err, sizeof err);
    grow g = {0};
    if (rc == 0 && load_data(&o, &g) != 0) {
        snprintf(err, sizeof err, "out of memory");
        rc = -1;
    }
    free(o.g.p);
    pthread_mutex_lock(&cl->lock);
    pinfo *pi = part_of(cl, p);
    if (reload && pi && (!pi->owned || pi->loads)) {
        pthread_mutex_unlock(&cl->lock); /* revoked meanwhile, or a load already queued */
        free(g.p);
        return 0;
    }
    if (rc != 0 || !pi) {
        char *msg = NULL;
        if (asprintf(&msg, "state changelog: cannot restore the state of partition %" PRId32
                     " from %s: %s", p, cl->topic, rc ? err : "out of memory") < 0)
            msg = NULL;
        em_log(EM_LOG_ERROR, cl->job, "%s", msg ? msg : "state changelog: restore failed");
        queue_event(cl, 3, p, msg, msg ? strlen(msg) : 0);
        pthread_mutex_unlock(&cl->lock);
        free(g.p);
        return -1;
    }
    pi->owned = 1;
    pi->stale = 0;
    pi->offset = o.marker;
    pi->loads++;
    size_t bytes = g.len;
    queue_event(cl, 1, p, g.p, g.len);
    pthread_mutex_unlock(&cl->lock);
    if (o.marker >= 0 && offset)
        *offset = o.marker;
    em_log(EM_LOG_INFO, cl->job, "state changelog: partition %" PRId32 " restored from %s in "
           "%lld ms (%zu bytes%s), input resumes at %s%lld", p, cl->topic,
           (long long)(em_clock_mono_ms() - t0), bytes,
           o.tail ? ", a tail no marker covers repaired" : "", o.marker >= 0 ? "offset " : "",
           (long long)o.marker);
    if (o.tail)
        em_log(EM_LOG_WARN, cl->job, "state changelog: %s[%" PRId32 "] ended with %zu records "
               "after its last marker (a commit cut short); they are ignored, and the covered "
               "values of the %zu keys they touched were written again after them (%lld ms)",
               cl->topic, p, o.tail, repaired, (long long)(em_clock_mono_ms() - t_read));
    return 0;
}

int em_changelog_assigned(em_changelog *cl, int32_t partition, int64_t *offset)
{
    pthread_mutex_lock(&cl->read_lock);
    int rc = restore_partition(cl, partition, offset, 0);
    pthread_mutex_unlock(&cl->read_lock);
    return rc;
}

int em_changelog_reload(em_changelog *cl)
{
    pthread_mutex_lock(&cl->lock);
    int32_t n = cl->nparts;
    char *want = calloc((size_t)n + 1, 1);
    for (int32_t p = 0; want && p < n; p++)
        want[p] = cl->parts[p].owned && cl->parts[p].loads == 0;
    pthread_mutex_unlock(&cl->lock);
    if (!want)
        return -1;
    int rc = 0, count = 0;
    for (int32_t p = 0; p < n; p++) {
        if (!want[p])
            continue;
        pthread_mutex_lock(&cl->read_lock);
        if (restore_partition(cl, p, NULL, 1) != 0)
            rc = -1;
        pthread_mutex_unlock(&cl->read_lock);
        count++;
    }
    free(want);
    if (count)
        em_log(EM_LOG_INFO, cl->job, "state changelog: the state of %d partition%s read again "
               "for the job's new version", count, count > 1 ? "s" : "");
    return rc;
}

int em_changelog_owned(em_changelog *cl, int32_t *out, int max)
{
    int n = 0;
    pthread_mutex_lock(&cl->lock);
    for (int32_t p = 0; p < cl->nparts && n < max; p++)
        if (cl->parts[p].owned)
            out[n++] = p;
    pthread_mutex_unlock(&cl->lock);
    return n;
}

int em_changelog_peek(em_changelog *cl, int32_t partition, char **data, size_t *len, char *err,
                      size_t errlen)
{
    readout o = {0};
    grow g = {0};
    *data = NULL;
    *len = 0;
    pthread_mutex_lock(&cl->read_lock);
    int rc = read_partition(cl, partition, &o, err, errlen);
    pthread_mutex_unlock(&cl->read_lock);
    if (rc == 0 && load_data(&o, &g) != 0) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    free(o.g.p);
    if (rc != 0) {
        free(g.p);
        return -1;
    }
    *data = g.p;
    *len = g.len;
    return 0;
}

void em_changelog_free(char *data)
{
    free(data);
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
    pinfo *pi = part_of(cl, partition);
    if (pi)
        pi->owned = 0;
    queue_event(cl, 2, partition, NULL, 0);
    pthread_mutex_unlock(&cl->lock);
}

void em_changelog_stale(em_changelog *cl, int32_t partition)
{
    pthread_mutex_lock(&cl->lock);
    pinfo *pi = part_of(cl, partition);
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

static int produce(em_changelog *cl, int32_t p, const void *k, size_t klen, const void *v,
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
                pinfo *pi = part_of(cl, (int32_t)p);
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
        pinfo *pi = part_of(cl, cl->staged[i].partition);
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
            rc = produce(cl, s->partition, s->k, s->klen, s->v, s->v ? s->vlen : 0, err, errlen);
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
        rc = produce(cl, p, "m", 1, text, (size_t)tl, err, errlen);
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
            queue_event(cl, 2, p, NULL, 0);
            if (pi->owned && nreload < 64)
                reload[nreload++] = p;
            else if (pi->owned)
                queue_event(cl, 3, p, strdup("state changelog: too many partitions to reload "
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
        int rrc = restore_partition(cl, reload[i], &at, 0);
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
        pinfo *pi = e->kind == 1 ? part_of(cl, e->partition) : NULL;
        if (pi && pi->loads > 0)
            pi->loads--;
    }
    pthread_mutex_unlock(&cl->lock);
    if (e) {
        free(e->data);
        free(e);
    }
}

/* kafka_changelog_restore.c — reading a changelog partition back: the
 * restore of an assigned partition (the records up to its last marker,
 * queued as a load for Lua), the repair of a tail after that marker, the
 * reads a reload and its dry run of migrate make. See kafka_changelog.h
 * and the top of kafka_changelog.c.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "../core/clock.h"
#include "../core/log.h"
#include "kafka_changelog.h"
#include "kafka_changelog_int.h"

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
    if (!cl->reader && !(cl->reader = em_changelog_client(cl, RD_KAFKA_CONSUMER, err, errlen)))
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
        rc = em_changelog_produce(cl, p, kbuf, set[i].kl + 1, set[i].v,
                     set[i].v ? (size_t)set[i].vl : 0, err, errlen);
    }
    /* a tail before any marker: the marker says "no offset", covering the
     * tombstones just written */
    if (rc == 0)
        rc = em_changelog_produce(cl, p, "m", 1, o->mark_len ? o->mark : "-1 0", o->mark_len ? o->mark_len : 4,
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
int em_changelog_restore(em_changelog *cl, int32_t p, int64_t *offset, int reload)
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
    pinfo *pi = em_changelog_part_of(cl, p);
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
        em_changelog_queue(cl, 3, p, msg, msg ? strlen(msg) : 0);
        pthread_mutex_unlock(&cl->lock);
        free(g.p);
        return -1;
    }
    pi->owned = 1;
    pi->stale = 0;
    pi->offset = o.marker;
    pi->loads++;
    size_t bytes = g.len;
    em_changelog_queue(cl, 1, p, g.p, g.len);
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
    int rc = em_changelog_restore(cl, partition, offset, 0);
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
        if (em_changelog_restore(cl, p, NULL, 1) != 0)
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

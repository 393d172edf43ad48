/* kafka_commit.c — the Kafka source's offsets: what a finished batch
 * commits (per partition, the highest offset of the live epoch it
 * processed, plus one), what a failed one seeks back, the positions a
 * job's checkpoint keeps and resumes from, and the seeks the receiver
 * thread applies, and the consumer lag it reports. See the top of kafka.c for epochs and threads.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "../core/block.h"
#include "../core/clock.h"
#include "../core/log.h"
#include "../core/receiver.h"
#include "kafka_changelog.h"
#include "kafka_source.h"

#define SEEK_TIMEOUT_MS 5000  /* a seek waits this long for the fetcher to take it */
#define LAG_PERIOD_MS 1000    /* how often the consumer lag is told to the receiver */

/* ------------------------------------------------------------------ */
/* Commits                                                             */
/* ------------------------------------------------------------------ */

/* Commits the offsets in l (from em_kafka_build_pending) and notes what took.
 * Caller holds commit_lock, not lock. Returns how many partitions were
 * refused; one line says which and why, for the whole list. */
int em_kafka_commit_list(kafka_src *k, rd_kafka_topic_partition_list_t *l, const char *when)
{
    if (l->cnt == 0)
        return 0;
    rd_kafka_resp_err_t err = rd_kafka_commit(k->rk, l, 0);
    int refused = 0;
    rd_kafka_resp_err_t why = err;
    char text[256] = "";
    pthread_mutex_lock(&k->lock);
    for (int i = 0; i < l->cnt; i++) {
        rd_kafka_topic_partition_t *el = &l->elems[i];
        part *p = em_kafka_find_part(k, el->topic, strlen(el->topic), el->partition);
        if (!err && !el->err) {
            if (p && el->offset > p->committed)
                p->committed = el->offset;
            continue;
        }
        if (!refused++) {
            why = err ? err : el->err;
            snprintf(text, sizeof text, "%s[%" PRId32 "] at offset %" PRId64, el->topic,
                     el->partition, el->offset);
        }
    }
    pthread_mutex_unlock(&k->lock);
    /* Not a loss: a partition still ours is committed with its next batch;
     * one that moves is read again from its last commit by its next owner. */
    if (refused)
        em_log(EM_LOG_WARN, k->job, "%s: cannot commit %s%s%s (%d partition%s): %s", k->name, text,
               refused > 1 ? " and others" : "", when, refused, refused > 1 ? "s" : "",
               rd_kafka_err2str(why));
    return refused;
}

/* A list of every part that processed past its last commit, among the
 * assigned ones (only = NULL) or those in only. Caller holds lock. */
rd_kafka_topic_partition_list_t *em_kafka_build_pending(kafka_src *k,
                                                     const rd_kafka_topic_partition_list_t *only)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
    if (only) {
        for (int i = 0; i < only->cnt; i++) {
            const char *name = only->elems[i].topic;
            part *p = em_kafka_find_part(k, name, strlen(name), only->elems[i].partition);
            if (p && p->assigned && p->done > p->committed)
                rd_kafka_topic_partition_list_add(l, name, p->partition)->offset = p->done;
        }
        return l;
    }
    EACH_ASSIGNED(k, p)
    {
        if (p->done > p->committed)
            rd_kafka_topic_partition_list_add(l, p->topic->name, p->partition)->offset = p->done;
    }
    return l;
}

/* ------------------------------------------------------------------ */
/* Seeks                                                               */
/* ------------------------------------------------------------------ */

/* Seeks the parts a failed batch (or a refused push) left to read again.
 * Only after the seek took does the part get a new live epoch; until then
 * nothing of it is committed, and a seek that failed is tried again on the
 * next poll. */
void em_kafka_apply_seeks(kafka_src *k)
{
    atomic_store(&k->seeks_pending, 0);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    pthread_mutex_lock(&k->lock);
    for (size_t ti = 0; ti < k->ntopics; ti++)
        for (int32_t pi = 0; pi < k->topics[ti]->nparts; pi++) {
            part *p = k->topics[ti]->parts[pi];
            if (!p || p->seek_to < 0)
                continue;
            if (!p->assigned) {
                p->seek_to = -1;
                continue;
            }
            rd_kafka_topic_partition_list_add(l, p->topic->name, p->partition)->offset = p->seek_to;
        }
    pthread_mutex_unlock(&k->lock);
    if (l->cnt == 0) {
        rd_kafka_topic_partition_list_destroy(l);
        return;
    }
    rd_kafka_error_t *e = rd_kafka_seek_partitions(k->rk, l, SEEK_TIMEOUT_MS);
    pthread_mutex_lock(&k->lock);
    for (int i = 0; i < l->cnt; i++) {
        rd_kafka_topic_partition_t *el = &l->elems[i];
        part *p = em_kafka_find_part(k, el->topic, strlen(el->topic), el->partition);
        if (!p)
            continue;
        if (e || el->err) {
            em_log(EM_LOG_WARN, k->job, "%s: cannot seek %s[%" PRId32 "] to offset %" PRId64
                   ": %s; trying again", k->name, el->topic, el->partition, el->offset,
                   e ? rd_kafka_error_string(e) : rd_kafka_err2str(el->err));
            atomic_store(&k->seeks_pending, 1);
            continue;
        }
        if (p->seek_to != el->offset) { /* another failure came meanwhile: seek again */
            atomic_store(&k->seeks_pending, 1);
            continue;
        }
        p->epoch++;
        if (p->epoch == 0)
            p->epoch = 1;
        p->live = p->epoch;
        p->seek_to = -1;
        p->rewinding = 0;
        em_log(EM_LOG_INFO, k->job, "%s: reading %s[%" PRId32 "] again from offset %" PRId64,
               k->name, el->topic, el->partition, el->offset);
    }
    pthread_mutex_unlock(&k->lock);
    rd_kafka_error_destroy(e);
    rd_kafka_topic_partition_list_destroy(l);
}

/* Marks part p to be read again from offset: nothing of it is committed
 * until the receiver thread has sought there. Caller holds k->lock. */
void em_kafka_rewind_locked(kafka_src *k, part *p, int64_t offset)
{
    p->live = 0;
    if (p->seek_to < 0 || offset < p->seek_to)
        p->seek_to = offset;
    atomic_store(&k->seeks_pending, 1);
}

/* The changelog's request (kafka_changelog.h): partition is read again
 * from offset, and its records not yet in a batch are dropped. */
void em_kafka_changelog_rewind(void *arg, int32_t partition, int64_t offset)
{
    kafka_src *k = arg;
    pthread_mutex_lock(&k->lock);
    part *p = em_kafka_find_part(k, k->topics_opt, strlen(k->topics_opt), partition);
    if (p && p->assigned) {
        em_kafka_rewind_locked(k, p, offset);
        if (!k->closing)
            em_receiver_discard(k->r, partition);
    }
    pthread_mutex_unlock(&k->lock);
}

/* ------------------------------------------------------------------ */
/* batch_done, positions                                               */
/* ------------------------------------------------------------------ */

/* Notes, per partition, the highest offset of the live epoch these blocks
 * hold, plus one, as processed; then commits every assigned partition
 * processed past its last commit — these, and any whose earlier commit was
 * refused (during a rebalance, say). */
static void commit_blocks(kafka_src *k, em_block *const *blocks, size_t n)
{
    pthread_mutex_lock(&k->commit_lock);
    pthread_mutex_lock(&k->lock);
    topic *cache = NULL;
    for (size_t b = 0; b < n; b++)
        for (uint32_t i = 0, run = 0; i < blocks[b]->count; i++) {
            em_push one, *rec = &one;
            em_block_read(blocks[b], i, &run, rec);
            uint32_t epoch;
            part *p = em_kafka_record_part(k, rec, &epoch, &cache);
            if (!p || !p->assigned || epoch == 0 || epoch != p->live)
                continue;
            if (rec->offset + 1 > p->done) /* never move a committed offset back */
                p->done = rec->offset + 1;
        }
    rd_kafka_topic_partition_list_t *l = em_kafka_build_pending(k, NULL);
    pthread_mutex_unlock(&k->lock);
    em_kafka_commit_list(k, l, "");
    rd_kafka_topic_partition_list_destroy(l);
    pthread_mutex_unlock(&k->commit_lock);
}

/* A failed batch: nothing is committed, and each partition it held records
 * of is read again from the lowest of them. Records of an older epoch are
 * left out (a newer epoch began at or before them); records tagged 0 may be
 * of the current run, so they count — reading back too far only repeats. */
static void rewind_blocks(kafka_src *k, em_block *const *blocks, size_t n)
{
    pthread_mutex_lock(&k->commit_lock);
    pthread_mutex_lock(&k->lock);
    topic *cache = NULL;
    k->ntouched = 0;
    for (size_t b = 0; b < n; b++)
        for (uint32_t i = 0, run = 0; i < blocks[b]->count; i++) {
            em_push one, *rec = &one;
            em_block_read(blocks[b], i, &run, rec);
            uint32_t epoch;
            part *p = em_kafka_record_part(k, rec, &epoch, &cache);
            if (!p || !p->assigned || (epoch != 0 && epoch != p->epoch))
                continue;
            if (!p->touched) {
                p->touched = 1;
                p->upto = rec->offset;
                k->touched[k->ntouched++] = p;
            }
            if (rec->offset < p->upto)
                p->upto = rec->offset;
        }
    for (size_t i = 0; i < k->ntouched; i++) {
        part *p = k->touched[i];
        p->touched = 0;
        em_kafka_rewind_locked(k, p, p->upto);
        em_log(EM_LOG_WARN, k->job, "%s: batch failed; %s[%" PRId32 "] will be read again from "
               "offset %" PRId64, k->name, p->topic->name, p->partition, p->seek_to);
    }
    pthread_mutex_unlock(&k->lock);
    pthread_mutex_unlock(&k->commit_lock);
}

/* Per partition, the offset after the highest record these blocks hold,
 * whatever its epoch: what the batch's state has taken in. Worker thread. */
void em_kafka_positions(void *self, em_block *const *blocks, size_t n, FILE *out)
{
    kafka_src *k = self;
    pthread_mutex_lock(&k->commit_lock); /* the touched scratch */
    pthread_mutex_lock(&k->lock);
    topic *cache = NULL;
    k->ntouched = 0;
    for (size_t b = 0; b < n; b++)
        for (uint32_t i = 0, run = 0; i < blocks[b]->count; i++) {
            em_push one, *rec = &one;
            em_block_read(blocks[b], i, &run, rec);
            uint32_t epoch;
            part *p = em_kafka_record_part(k, rec, &epoch, &cache);
            if (!p)
                continue;
            if (k->cl && (!p->assigned || epoch == 0 || epoch != p->live))
                em_changelog_stale(k->cl, p->partition);
            if (!p->touched) {
                p->touched = 1;
                p->upto = -1;
                k->touched[k->ntouched++] = p;
            }
            if (rec->offset + 1 > p->upto)
                p->upto = rec->offset + 1;
        }
    for (size_t i = 0; i < k->ntouched; i++) {
        part *p = k->touched[i];
        p->touched = 0;
        fprintf(out, "%s %" PRId32 " %" PRId64 "\n", p->topic->name, p->partition, p->upto);
    }
    pthread_mutex_unlock(&k->lock);
    pthread_mutex_unlock(&k->commit_lock);
}

/* Lines "<topic> <partition> <offset>", as em_kafka_positions wrote them. */
void em_kafka_resume_from(void *self, const char *positions)
{
    kafka_src *k = self;
    if (k->cl) /* the changelog's markers hold the positions */
        return;
    for (const char *p = positions; p && *p;) {
        size_t l = strcspn(p, "\n");
        char topic_name[512];
        int32_t partition;
        int64_t offset;
        char line[600];
        snprintf(line, sizeof line, "%.*s", (int)(l < sizeof line ? l : sizeof line - 1), p);
        struct resume_pos *r = realloc(k->resume, (k->nresume + 1) * sizeof *r);
        if (sscanf(line, "%511s %" SCNd32 " %" SCNd64, topic_name, &partition, &offset) == 3 && r) {
            k->resume = r;
            r[k->nresume].topic = strdup(topic_name);
            r[k->nresume].partition = partition;
            r[k->nresume].offset = offset;
            k->nresume++;
        } else if (r) {
            k->resume = r;
            em_log(EM_LOG_WARN, k->job, "%s: checkpoint position '%s' is not "
                   "'<topic> <partition> <offset>'; ignored", k->name, line);
        }
        p += l + (p[l] == '\n');
    }
}

/* Runs on a worker thread. */
void em_kafka_batch_done(void *self, em_block *const *blocks, size_t n, int ok)
{
    kafka_src *k = self;
    if (!k->rk)
        return;
    if (ok)
        commit_blocks(k, blocks, n);
    else
        rewind_blocks(k, blocks, n);
}

/* ------------------------------------------------------------------ */
/* Lag                                                                 */
/* ------------------------------------------------------------------ */

/* Tells the receiver the consumer lag of every assigned partition, once a
 * LAG_PERIOD_MS: the high watermark librdkafka last saw in a fetch (no
 * request of its own) minus the offset committed in this assignment, or
 * minus the fetch position before anything was committed. Receiver thread. */
void em_kafka_report_lag(kafka_src *k, em_receiver *r)
{
    int64_t now = em_clock_mono_ms();
    if (now - k->lag_at < LAG_PERIOD_MS)
        return;
    k->lag_at = now;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(16);
    if (!l)
        return;
    pthread_mutex_lock(&k->lock);
    EACH_ASSIGNED(k, p) {
        rd_kafka_topic_partition_t *el = rd_kafka_topic_partition_list_add(l, p->topic->name,
                                                                           p->partition);
        el->offset = p->committed; /* replaced by the position below when -1 */
        el->opaque = (void *)(intptr_t)(p->committed >= 0);
    }
    pthread_mutex_unlock(&k->lock);
    rd_kafka_topic_partition_list_t *pos = rd_kafka_topic_partition_list_copy(l);
    if (pos && rd_kafka_position(k->rk, pos) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_topic_partition_list_destroy(pos);
        pos = NULL;
    }
    char json[1024];
    size_t w = (size_t)snprintf(json, sizeof json, "[");
    int64_t total = 0;
    int known = 0;
    for (int i = 0; i < l->cnt; i++) {
        rd_kafka_topic_partition_t *el = &l->elems[i];
        int64_t lo, hi, base = el->offset;
        if (rd_kafka_get_watermark_offsets(k->rk, el->topic, el->partition, &lo, &hi) !=
                RD_KAFKA_RESP_ERR_NO_ERROR || hi < 0)
            continue;
        if (base < 0 && pos && pos->elems[i].offset >= 0)
            base = pos->elems[i].offset;
        if (base < 0)
            base = lo;
        int64_t lag = hi > base ? hi - base : 0;
        total += lag;
        known = 1;
        if (w < sizeof json - 160)
            w += (size_t)snprintf(json + w, sizeof json - w, "%s{\"topic\":\"%.60s\",\"partition\":%d,"
                                  "\"highWatermark\":%lld,\"committed\":%lld,\"lag\":%lld}",
                                  w > 1 ? "," : "", el->topic, (int)el->partition, (long long)hi,
                                  el->opaque ? (long long)el->offset : -1LL, (long long)lag);
    }
    if (w < sizeof json - 1)
        snprintf(json + w, sizeof json - w, "]");
    else
        json[0] = '\0'; /* too many partitions for the detail: the total only */
    em_receiver_set_lag(r, known ? total : -1, json);
    if (pos)
        rd_kafka_topic_partition_list_destroy(pos);
    rd_kafka_topic_partition_list_destroy(l);
}

/* kafka_rebalance.c — the Kafka source's partitions: the table of parts
 * (one per partition ever assigned, by topic and number) and their life
 * through rebalances, begin_partition() on assign and end_partition() on
 * revoke, including the revoke's wait for the batches in flight and its
 * commit, both eager and incremental (cooperative-sticky) protocols, and
 * the changelog's restore of a partition's keyed state before it is
 * fetched. See the top of kafka.c for epochs and threads.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "../core/clock.h"
#include "../core/log.h"
#include "../core/receiver.h"
#include "kafka_changelog.h"
#include "kafka_errors.h"
#include "kafka_source.h"

/* ------------------------------------------------------------------ */
/* Partition table                                                     */
/* ------------------------------------------------------------------ */

static topic *find_topic(kafka_src *k, const char *name, size_t len)
{
    for (size_t i = 0; i < k->ntopics; i++)
        if (k->topics[i]->len == len && memcmp(k->topics[i]->name, name, len) == 0)
            return k->topics[i];
    return NULL;
}

part *em_kafka_find_part(kafka_src *k, const char *name, size_t len, int32_t partition)
{
    topic *t = find_topic(k, name, len);
    return t && partition >= 0 && partition < t->nparts ? t->parts[partition] : NULL;
}

/* The part for (name, partition), made if new. Receiver thread, with
 * k->lock held (the tables grow). NULL when out of memory. */
static part *make_part(kafka_src *k, const char *name, int32_t partition)
{
    size_t len = strlen(name);
    topic *t = find_topic(k, name, len);
    if (!t) {
        topic **ts = realloc(k->topics, (k->ntopics + 1) * sizeof *ts);
        if (!ts)
            return NULL;
        k->topics = ts;
        t = calloc(1, sizeof *t);
        if (!t || !(t->name = strdup(name))) {
            free(t);
            return NULL;
        }
        t->len = len;
        k->topics[k->ntopics++] = t;
    }
    if (partition < 0)
        return NULL;
    if (partition >= t->nparts) {
        int32_t n = partition + 1;
        part **ps = realloc(t->parts, (size_t)n * sizeof *ps);
        if (!ps)
            return NULL;
        memset(ps + t->nparts, 0, (size_t)(n - t->nparts) * sizeof *ps);
        t->parts = ps;
        t->nparts = n;
    }
    if (!t->parts[partition]) {
        if (k->nparts_total == k->cap_touched) {
            size_t cap = k->cap_touched ? k->cap_touched * 2 : 16;
            part **tp = realloc(k->touched, cap * sizeof *tp);
            if (!tp)
                return NULL;
            k->touched = tp;
            k->cap_touched = cap;
        }
        part *p = calloc(1, sizeof *p);
        if (!p)
            return NULL;
        p->topic = t;
        p->partition = partition;
        p->committed = p->done = p->seek_to = -1;
        t->parts[partition] = p;
        k->nparts_total++;
    }
    return t->parts[partition];
}

/* The part a message came from, through a one-entry cache of its topic
 * handle (a consume batch is mostly runs of one partition). */
part *em_kafka_message_part(kafka_src *k, const rd_kafka_message_t *m)
{
    if (m->rkt != k->last_rkt) {
        const char *name = rd_kafka_topic_name(m->rkt);
        k->last_topic = find_topic(k, name, strlen(name));
        k->last_rkt = m->rkt;
    }
    topic *t = k->last_topic;
    return t && m->partition >= 0 && m->partition < t->nparts ? t->parts[m->partition] : NULL;
}

/* Reads a record's meta (topic, headers, epoch tag last; see the top of
 * this file). Returns its part or NULL; *epoch 0 when untagged. */
part *em_kafka_record_part(kafka_src *k, const em_push *rec, uint32_t *epoch, topic **cache)
{
    const char *meta = rec->meta;
    const char *nul = rec->meta_len ? memchr(meta, '\0', rec->meta_len) : NULL;
    const char *tag = rec->meta_len ? memrchr(meta, '\0', rec->meta_len) : NULL;
    *epoch = 0;
    if (!nul)
        return NULL;
    if (tag + 1 < meta + rec->meta_len && tag[1] == '#')
        for (const char *d = tag + 2; d < meta + rec->meta_len && *d >= '0' && *d <= '9'; d++)
            *epoch = *epoch * 10 + (uint32_t)(*d - '0');
    size_t tlen = (size_t)(nul - meta);
    topic *t = *cache;
    if (!t || t->len != tlen || memcmp(t->name, meta, tlen) != 0)
        *cache = t = find_topic(k, meta, tlen);
    if (!t || rec->partition < 0 || rec->partition >= t->nparts)
        return NULL;
    return t->parts[rec->partition];
}

/* ------------------------------------------------------------------ */
/* Rebalance                                                           */
/* ------------------------------------------------------------------ */

static void list_text(const rd_kafka_topic_partition_list_t *l, char *out, size_t len)
{
    size_t w = 0;
    out[0] = '\0';
    for (int i = 0; i < l->cnt && w + 1 < len; i++) {
        int more = i + 1 < l->cnt && strcmp(l->elems[i + 1].topic, l->elems[i].topic) == 0;
        int first = i == 0 || strcmp(l->elems[i - 1].topic, l->elems[i].topic) != 0;
        int n = snprintf(out + w, len - w, "%s%s%s%" PRId32 "%s", first && i ? " " : "",
                         first ? l->elems[i].topic : "", first ? "[" : "",
                         l->elems[i].partition, more ? "," : "]");
        if (n < 0)
            break;
        w += (size_t)n;
    }
    if (w >= len && len > 4)
        strcpy(out + len - 4, "...");
}

/* A partition the job's checkpoint has a position for starts there, the
 * first time it is assigned: its records up to that offset are in the
 * committed state already, whatever the group's committed offset says
 * (the checkpoint is written before the commit to Kafka). */
static void apply_resume(kafka_src *k, rd_kafka_topic_partition_t *el)
{
    for (size_t i = 0; i < k->nresume; i++) {
        struct resume_pos *rp = &k->resume[i];
        if (rp->topic && rp->partition == el->partition && strcmp(rp->topic, el->topic) == 0) {
            el->offset = rp->offset;
            em_log(EM_LOG_INFO, k->job, "%s: %s[%" PRId32 "] resumes at offset %" PRId64
                   " from the job's checkpoint", k->name, el->topic, el->partition, rp->offset);
            free(rp->topic);
            rp->topic = NULL;
            return;
        }
    }
}

/* One partition handed to this member. It starts a new epoch: records of
 * earlier assignments still in memory are processed but never committed.
 * Here, before librdkafka fetches from it, el->offset is set to the
 * position the job's checkpoint holds, if any (apply_resume; otherwise
 * RD_KAFKA_OFFSET_INVALID: the group's committed offset), and here a
 * partition's keyed state would be restored. Caller holds lock. */
static void begin_partition(kafka_src *k, part *p, rd_kafka_topic_partition_t *el)
{
    p->epoch++;
    if (p->epoch == 0) /* 0 means "no epoch": skip it when the counter wraps */
        p->epoch = 1;
    p->live = p->epoch;
    if (!p->assigned) /* for the watermark, before any record of it */
        em_receiver_assign(k->r, p->partition, 1);
    p->assigned = 1;
    p->revoking = 0;
    p->assigned_at = k->rebalances;
    p->committed = p->done = p->seek_to = -1;
    p->tokens = k->rate > 2 ? k->rate / 2 : 1; /* half a second to start with */
    p->rate_paused = p->rewinding = 0;
    p->kpaused = -1; /* unknown after an earlier assignment: em_kafka_sync_pauses sets it */
    apply_resume(k, el);
}

/* Offsets this member processed but could not commit before it gave the
 * partitions up (a coordinator that refuses commits once a rebalance
 * started, as librdkafka's mock does), for partitions that came straight
 * back to it: committed now, in the new generation, before fetching, so
 * they are not read twice. A partition that went elsewhere is not
 * touched: its new owner may already read it. Caller holds commit_lock. */
static void commit_returning(kafka_src *k, const rd_kafka_topic_partition_list_t *parts)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
    pthread_mutex_lock(&k->lock);
    for (int i = 0; i < parts->cnt; i++) {
        const char *name = parts->elems[i].topic;
        part *p = em_kafka_find_part(k, name, strlen(name), parts->elems[i].partition);
        if (p && !p->assigned && p->revoked_at + 1 == k->rebalances && p->done > p->committed)
            rd_kafka_topic_partition_list_add(l, name, p->partition)->offset = p->done;
    }
    pthread_mutex_unlock(&k->lock);
    if (l->cnt > 0 && em_kafka_commit_list(k, l, " for a partition that came back") == 0)
        em_log(EM_LOG_INFO, k->job, "%s: committed %d partition%s processed before the "
               "rebalance", k->name, l->cnt, l->cnt > 1 ? "s" : "");
    rd_kafka_topic_partition_list_destroy(l);
}

static void on_assign(kafka_src *k, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts,
                      int coop)
{
    for (int i = 0; k->cl && i < parts->cnt; i++) /* keyed state first: kafka_changelog_restore.c */
        em_changelog_assigned(k->cl, parts->elems[i].partition, &parts->elems[i].offset);
    pthread_mutex_lock(&k->commit_lock);
    commit_returning(k, parts);
    pthread_mutex_lock(&k->lock);
    for (int i = 0; i < parts->cnt; i++) {
        part *p = make_part(k, parts->elems[i].topic, parts->elems[i].partition);
        if (p) /* out of memory: its records carry epoch 0, never committed */
            begin_partition(k, p, &parts->elems[i]);
    }
    pthread_mutex_unlock(&k->lock);
    pthread_mutex_unlock(&k->commit_lock);
    k->last_rkt = NULL;
    rd_kafka_error_t *e = NULL;
    rd_kafka_resp_err_t err = 0;
    if (coop)
        e = rd_kafka_incremental_assign(rk, parts);
    else
        err = rd_kafka_assign(rk, parts);
    if (e || err) {
        em_log(EM_LOG_ERROR, k->job, "%s: cannot take the assigned partitions: %s", k->name,
               e ? rd_kafka_error_string(e) : rd_kafka_err2str(err));
        rd_kafka_error_destroy(e);
    }
    em_kafka_sync_pauses(k);
    char text[512];
    list_text(parts, text, sizeof text);
    em_log(EM_LOG_INFO, k->job, "%s: assigned %s%s", k->name, parts->cnt ? text : "nothing",
           coop && parts->cnt ? " (incremental)" : "");
    if (em_kafka_is_outage(atomic_exchange(&k->outage, 0)))
        em_log(EM_LOG_INFO, k->job, "%s: the brokers answer again", k->name);
}

/* Drops the records of revoked partitions that no batch holds yet, so no
 * new batch is cut from them and the new owner is the one to process
 * them. The receiver discards by partition number only, so a number still
 * assigned under another topic is kept (those records are processed here
 * too, and never committed). Caller holds lock. */
static void discard_revoked(kafka_src *k, const rd_kafka_topic_partition_list_t *parts)
{
    if (k->closing)
        return;
    size_t dropped = 0;
    for (int i = 0; i < parts->cnt; i++) {
        int32_t n = parts->elems[i].partition, seen = 0, kept = 0;
        for (int j = 0; j < i; j++)
            seen |= parts->elems[j].partition == n;
        for (size_t t = 0; !seen && t < k->ntopics; t++)
            kept |= n < k->topics[t]->nparts && k->topics[t]->parts[n] &&
                    k->topics[t]->parts[n]->assigned && !k->topics[t]->parts[n]->revoking;
        if (!seen && !kept)
            dropped += em_receiver_discard(k->r, n);
    }
    if (dropped)
        em_log(EM_LOG_INFO, k->job, "%s: dropped %zu records of revoked partitions not yet in a "
               "batch", k->name, dropped);
}

/* The partition is no longer this member's: every record of it still in
 * memory becomes uncommittable. Caller holds lock. */
static void end_partition(kafka_src *k, part *p)
{
    p->epoch++;
    if (p->epoch == 0)
        p->epoch = 1;
    if (p->assigned)
        em_receiver_assign(k->r, p->partition, 0);
    p->live = 0;
    p->assigned = 0;
    p->revoking = 0;
    p->revoked_at = k->rebalances;
    p->seek_to = -1;
    p->rewinding = 0;
}

/* Revoked (or lost). The cost of a rebalance is what happens here:
 * 1. no new batch is cut from these partitions (their records not yet in
 *    a batch are dropped: the next owner reads them);
 * 2. the batches already in flight are waited for, up to revoke_wait_ms;
 *    their batch_done commits as usual, while the generation is valid;
 * 3. whatever was processed and is not committed yet (a commit refused
 *    earlier) is committed now, before librdkafka lets the partitions go;
 * 4. what is still in flight after the wait is abandoned: processed, never
 *    committed, read again by the next owner.
 * A lost assignment (this member was thrown out of the group) skips 2 and
 * 3: its commits would be refused. When closing, every batch is already
 * done (kafka_free runs after the last block is gone). */
static void on_revoke(kafka_src *k, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts,
                      int coop)
{
    int lost = rd_kafka_assignment_lost(rk);
    int64_t t0 = em_clock_mono_ms();
    pthread_mutex_lock(&k->lock);
    for (int i = 0; i < parts->cnt; i++) {
        const char *name = parts->elems[i].topic;
        part *p = em_kafka_find_part(k, name, strlen(name), parts->elems[i].partition);
        if (p && p->assigned)
            p->revoking = 1;
    }
    discard_revoked(k, parts);
    pthread_mutex_unlock(&k->lock);
    int settled = 1;
    if (!lost && !k->closing && parts->cnt > 0)
        settled = em_receiver_wait_done(k->r, k->revoke_wait_ms) == 0;
    pthread_mutex_lock(&k->commit_lock);
    if (!lost && parts->cnt > 0) {
        pthread_mutex_lock(&k->lock);
        rd_kafka_topic_partition_list_t *l = em_kafka_build_pending(k, parts);
        pthread_mutex_unlock(&k->lock);
        em_kafka_commit_list(k, l, " before giving it up");
        rd_kafka_topic_partition_list_destroy(l);
    }
    pthread_mutex_lock(&k->lock);
    for (int i = 0; i < parts->cnt; i++) {
        const char *name = parts->elems[i].topic;
        part *p = em_kafka_find_part(k, name, strlen(name), parts->elems[i].partition);
        if (p)
            end_partition(k, p);
    }
    pthread_mutex_unlock(&k->lock);
    pthread_mutex_unlock(&k->commit_lock);
    for (int i = 0; k->cl && i < parts->cnt; i++)
        em_changelog_revoked(k->cl, parts->elems[i].partition);
    k->last_rkt = NULL;
    if (coop) {
        rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
        rd_kafka_error_destroy(e);
    } else {
        rd_kafka_assign(rk, NULL);
    }
    char text[512];
    list_text(parts, text, sizeof text);
    if (!settled)
        em_log(EM_LOG_WARN, k->job, "%s: batches still running after %lldms; their records of "
               "the revoked partitions are read again by the next owner", k->name,
               (long long)k->revoke_wait_ms);
    em_log(EM_LOG_INFO, k->job, "%s: %s %s%s after %lldms", k->name, lost ? "lost" : "revoked",
           parts->cnt ? text : "nothing", coop && parts->cnt ? " (incremental)" : "",
           (long long)(em_clock_mono_ms() - t0));
}

void em_kafka_on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    kafka_src *k = opaque;
    int coop = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    k->rebalances++;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        on_assign(k, rk, parts, coop);
    } else {
        if (err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
            em_log(EM_LOG_WARN, k->job, "%s: rebalance failed: %s", k->name,
                   rd_kafka_err2str(err));
        on_revoke(k, rk, parts, coop);
    }
}

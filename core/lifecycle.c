/* lifecycle.c — see lifecycle.h. */
#include "lifecycle.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "clock.h"
#include "failpoint.h"
#include "log.h"
#include "pool.h"

#define RETRY_BACKOFF_MS 500 /* the first retry's wait; it doubles up to maxBackoff */

/* ------------------------------------------------------------------ */
/* commit                                                              */
/* ------------------------------------------------------------------ */

/* The key of a position line: all before its last space (the value). */
static size_t position_key_len(const char *line, size_t len)
{
    for (size_t i = len; i > 0; i--)
        if (line[i - 1] == ' ')
            return i - 1;
    return len;
}

/* 1 when text (lines) has a line whose key is key. */
static int has_key(const char *text, const char *key, size_t klen)
{
    for (const char *p = text; p && *p;) {
        size_t l = strcspn(p, "\n");
        if (position_key_len(p, l) == klen && strncmp(p, key, klen) == 0)
            return 1;
        p += l + (p[l] == '\n');
    }
    return 0;
}

/* What the batch ended at for each (source, partition) it held records
 * of: "<source> <the receiver's position line>" lines. malloc'd; NULL
 * with nothing to say. */
static char *batch_positions(em_batch *b)
{
    char *now = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&now, &len);
    if (!f)
        return NULL;
    em_version *v = b->version;
    for (size_t s = 0; s < v->nreceivers; s++) {
        em_block *mine[b->nblocks ? b->nblocks : 1];
        size_t n = 0;
        for (uint32_t i = 0; i < b->nblocks; i++)
            if (b->sources[i] == (int32_t)s + 1 && b->blocks[i]->receiver)
                mine[n++] = b->blocks[i];
        if (!n)
            continue;
        char *lines = NULL;
        size_t ll = 0;
        FILE *g = open_memstream(&lines, &ll);
        if (!g)
            continue;
        em_receiver_positions(v->receivers[s], mine, n, g);
        fclose(g);
        for (const char *p = lines; p && *p;) {
            size_t l = strcspn(p, "\n");
            fprintf(f, "%zu %.*s\n", s + 1, (int)l, p);
            p += l + (p[l] == '\n');
        }
        free(lines);
    }
    fclose(f);
    if (now && !*now) {
        free(now);
        now = NULL;
    }
    return now;
}

/* The checkpoint's positions after this batch: the batch's own (mine,
 * taken), and the older positions of those it did not read, so a
 * partition quiet in one batch keeps its place. malloc'd; NULL with
 * nothing to say. */
static char *merged_positions(em_batch *b, char *mine)
{
    char *now = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&now, &len);
    if (!f) {
        free(mine);
        return NULL;
    }
    if (mine)
        fputs(mine, f);
    free(mine);
    fflush(f);
    for (const char *p = b->job->cp.positions; p && *p;) {
        size_t l = strcspn(p, "\n");
        if (!has_key(now, p, position_key_len(p, l)))
            fprintf(f, "%.*s\n", (int)l, p);
        p += l + (p[l] == '\n');
    }
    fclose(f);
    if (now && !*now) {
        free(now);
        now = NULL;
    }
    return now;
}

/* The write-ahead log segments of the batch, one name per line. */
static char *covered_segments(const em_batch *b)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    if (!f)
        return NULL;
    for (uint32_t i = 0; i < b->nblocks; i++)
        if (b->blocks[i]->wal_path)
            fprintf(f, "%s\n", em_checkpoint_wal_name(b->blocks[i]->wal_path));
    fclose(f);
    if (out && !*out) {
        free(out);
        out = NULL;
    }
    return out;
}

/* Each connector of the job's sources that keeps state in its broker
 * commits the batch's there, once per connector. */
static int commit_in_brokers(em_batch *b, const char *positions, char *err, size_t errlen)
{
    const em_job_desc *d = b->version->desc;
    for (size_t i = 0; i < d->nsources; i++) {
        const em_connector *c = d->sources[i].conn;
        int seen = 0;
        for (size_t k = 0; k < i; k++)
            seen |= d->sources[k].conn == c;
        if (!seen && c->commit_state &&
            c->commit_state(b->job->name, positions, b->id, err, errlen) != 0)
            return -1;
    }
    return 0;
}

/* Writes the checkpoint of a finished batch: its id, time and positions,
 * and for a stateful job its staged state first. The checkpoint's rename is
 * the commit point; only then does the staged state become visible.
 * A checkpoint that protects no state or input (a stateless job's, an
 * empty batch that changed nothing) is not fsynced: it survives a crash of
 * the process, and what it records (ids, times) is cheap to lose to a
 * power cut, while two fsyncs per batch are not cheap. 0, or -1 and err:
 * the batch is not committed and runs again. */
static int commit(em_batch *b, uint64_t *written, char *err, size_t errlen)
{
    em_job *j = b->job;
    em_luahost *host = b->version->host;
    int stateful = b->version->desc->stateful;
    uint64_t bytes = 0;
    char *mine = stateful ? batch_positions(b) : NULL;
    if (stateful && em_luahost_prepare(host, b->id, &bytes, err, errlen) != 0) {
        free(mine);
        return -1;
    }
    /* keyed state kept in a broker (Kafka's changelog): written before the
     * checkpoint and the acks */
    if (stateful && commit_in_brokers(b, mine, err, errlen) != 0) {
        free(mine);
        return -1;
    }
    const char *sv = b->version->desc->state_version;
    em_checkpoint next = j->cp;
    if (j->cp.batches > 0 && strcmp(j->cp.state_version, sv) != 0) {
        /* A new state_version starts a new history; the old one is kept
         * aside. Batch ids and positions go on: they describe the input. */
        char moved[1400];
        if (em_checkpoint_archive(j->dir, moved, sizeof moved) == 0)
            em_log(EM_LOG_INFO, j->name, "state_version '%s' -> '%s': previous checkpoint "
                   "archived in %s", j->cp.state_version, sv, moved);
        next.batches = 0;
    }
    snprintf(next.state_version, sizeof next.state_version, "%s", sv);
    next.last_batch_ms = b->time_ms;
    next.batches++;
    next.batch_id = b->id;
    next.positions = stateful ? merged_positions(b, mine) : NULL;
    next.wal_covered = stateful ? covered_segments(b) : NULL;
    if (!stateful && j->cp.positions) /* a job that had state once keeps its place */
        next.positions = strdup(j->cp.positions);
    /* fsync when it protects something: state written, or input taken in.
     * An empty batch that changed no state only moves the id on. */
    int durable = stateful && (bytes > 0 || b->records > 0);
    if (em_checkpoint_write(j->dir, &next, durable, err, errlen) != 0) {
        em_checkpoint_clear(&next);
        if (stateful)
            return -1;
        /* A stateless job's records are safe at the broker or in its WAL
         * whatever this file says: go on, and say so. */
        em_log(EM_LOG_ERROR, j->name, "%s", err);
        return 0;
    }
    em_checkpoint_clear(&j->cp);
    j->cp = next;
    if (stateful)
        em_luahost_apply(host, b->id);
    *written = bytes;
    if (b->records)
        em_failpoint("after_commit");
    return 0;
}

/* ------------------------------------------------------------------ */
/* record                                                              */
/* ------------------------------------------------------------------ */

/* Feeds the batch to the job's PID estimator and splits the new rate
 * across the receivers of the version that ran it. */
static void adapt_rate(em_batch *b, const em_batch_info *info)
{
    em_job *j = b->job;
    double rate = em_pid_compute(&j->pid, b->time_ms + info->total_delay_ms, b->records,
                                 info->processing_ms, info->scheduling_delay_ms);
    size_t n = b->version->nreceivers;
    if (rate <= 0 || n == 0)
        return;
    for (size_t i = 0; i < n; i++)
        em_receiver_set_rate(b->version->receivers[i], rate / (double)n);
    em_log(EM_LOG_DEBUG, j->name, "backpressure: rate %.0f records/s over %zu receivers", rate, n);
}

/* end: when the last run finished its outputs (Spark's processing time
 * ends there; the commit after it is the driver's, not the job's). */
static void record(em_batch *b, const em_batch_result *res, int ok, int64_t end,
                   int64_t commit_ms, uint64_t written, uint64_t state_bytes)
{
    em_job *j = b->job;
    em_batch_info info = {.time_ms = b->time_ms, .records = b->records, .blocks = b->nblocks,
                          .interval_ms = b->version->batch_interval_ms,
                          .retries = (uint32_t)b->attempts};
    info.scheduling_delay_ms = b->started_ms - b->time_ms;
    info.processing_ms = end - b->started_ms;
    info.total_delay_ms = end - b->time_ms;
    info.failed = res->failed;
    info.ok = ok;
    info.commit_ms = commit_ms;
    info.state_written = written;
    info.state_bytes = state_bytes;
    if (ok && j->rt->cfg->backpressure)
        adapt_rate(b, &info);
    for (size_t i = 0; i < b->version->nreceivers; i++)
        info.rate += em_receiver_rate(b->version->receivers[i]);
    em_pool_usage pools;
    em_pool_usage_take(&pools);
    info.pool_borrows = pools.borrows;
    info.pool_waits = pools.waits;
    info.pool_wait_ms = pools.wait_ms;
    em_history_add(j->history, &info);
    em_history_set_error(j->history, end, res->err);
    if (b->version->desc->stateful) /* this worker holds the job's Lua state now */
        em_history_set_state(j->history, em_luahost_late_records(b->version->host),
                             (int64_t)em_luahost_state_bytes(b->version->host));
    if (b->first_of_reload)
        em_log(EM_LOG_INFO, j->name, "first batch of the new version done %lld ms after the reload",
               (long long)(end - b->version->reload_ms));
    em_log(EM_LOG_DEBUG, j->name,
           "batch %lld: %llu records in %u blocks, scheduling delay %lld ms, "
           "processing %lld ms, total delay %lld ms, %lld failed, rate %.0f/s, "
           "pool %llu borrowed %llu waited %lld ms, commit %lld ms (%llu bytes of state), id %llu",
           (long long)b->time_ms, (unsigned long long)b->records, b->nblocks,
           (long long)info.scheduling_delay_ms, (long long)info.processing_ms,
           (long long)info.total_delay_ms, (long long)info.failed, info.rate,
           (unsigned long long)info.pool_borrows, (unsigned long long)info.pool_waits,
           (long long)info.pool_wait_ms, (long long)commit_ms, (unsigned long long)written,
           (unsigned long long)b->id);
}

/* ------------------------------------------------------------------ */
/* retry                                                               */
/* ------------------------------------------------------------------ */

/* Queues a failed batch again after its backoff. Its blocks stay held,
 * later batches of the job wait behind it (the job's receivers pause once
 * streaming.maxWaitingBatches are waiting), and nothing is acknowledged: a
 * failed batch never becomes a hole while the driver runs. */
static void retry_later(em_batch *b, const char *why)
{
    em_job *j = b->job;
    const em_config *cfg = j->rt->cfg;
    b->attempts++;
    em_history_set_error(j->history, em_clock_now_ms(), why);
    int64_t backoff = cfg->batch_max_backoff_ms;
    if (b->attempts < 40 && ((int64_t)RETRY_BACKOFF_MS << (b->attempts - 1)) < backoff)
        backoff = (int64_t)RETRY_BACKOFF_MS << (b->attempts - 1);
    if (b->attempts <= cfg->batch_max_retries) {
        em_log(EM_LOG_WARN, j->name, "batch %lld failed (%s); retry %d of %d in %lld ms",
               (long long)b->time_ms, why, b->attempts, cfg->batch_max_retries,
               (long long)backoff);
    } else if (!atomic_exchange(&j->blocked, 1)) {
        em_log(EM_LOG_ERROR, j->name, "batch %lld failed %d times (%s); the job is blocked: it "
               "retries every %lld ms at most, its records stay unacknowledged and later "
               "batches wait", (long long)b->time_ms, b->attempts, why, (long long)backoff);
    } else {
        em_log(EM_LOG_DEBUG, j->name, "batch %lld failed again (%s); retry in %lld ms",
               (long long)b->time_ms, why, (long long)backoff);
    }
    b->task.not_before_ms = em_clock_now_ms() + backoff;
    em_scheduler_retry(j->rt->sched, &b->task);
}

/* ------------------------------------------------------------------ */
/* run                                                                 */
/* ------------------------------------------------------------------ */

/* Loads the committed state into a version before its first batch: at
 * start, and after a reload's swap, which comes after the old version's
 * last batch committed (a job's batches run in order). */
static int restore(em_batch *b, char *err, size_t errlen)
{
    em_version *v = b->version;
    if (v->restored)
        return 0;
    em_job *j = b->job;
    if (!v->desc->stateful) {
        /* No stateful operator: the state an older version left is archived
         * (the store logs it), never kept live nor dropped. A failure to move
         * it is no reason to stop a job that keeps no state: it stays put. */
        v->restored = 1;
        if (em_luahost_restore(v->host, j->cp.batch_id, j->cp.state_version, err, errlen) != 0)
            em_log(EM_LOG_ERROR, j->name, "the old state could not be archived: %s", err);
        return 0;
    }
    int64_t t0 = em_clock_now_ms();
    if (em_luahost_restore(v->host, j->cp.batch_id, j->cp.state_version, err, errlen) != 0)
        return -1;
    v->restored = 1;
    em_log(EM_LOG_INFO, j->name, "state restored up to batch %llu in %lld ms (%llu bytes)",
           (unsigned long long)j->cp.batch_id, (long long)(em_clock_now_ms() - t0),
           (unsigned long long)em_luahost_state_bytes(v->host));
    return 0;
}

/* After each run of a batch, one that failed too (a table not loaded yet
 * makes it wait): what the job's reference tables hold, for the API. This
 * worker holds the job's Lua state now; the HTTP thread never enters it. */
static void keep_tables(em_batch *b)
{
    if (!b->version->desc->ntables) { /* a reload may have dropped them */
        em_history_set_tables(b->job->history, NULL, 0);
        return;
    }
    em_table_status t[EM_TABLES_MAX];
    size_t n = em_luahost_tables(b->version->host, t, EM_TABLES_MAX);
    em_history_set_tables(b->job->history, t, n);
}

void em_lifecycle_run(em_task *t)
{
    em_batch *b = (em_batch *)t;
    em_job *j = b->job;
    if (atomic_load(&j->failed)) { /* the job stopped on an error: leave these unacked */
        em_batch_drop(b);
        return;
    }
    if (!b->attempts) {
        em_pool_usage stale;
        em_pool_usage_take(&stale); /* start this batch's count from zero */
        b->started_ms = em_clock_now_ms();
    }
    em_batch_result res;
    char err[1024];
    if (restore(b, err, sizeof err) != 0) {
        memset(&res, 0, sizeof res);
        res.fatal = 1;
        snprintf(res.err, sizeof res.err, "cannot restore its state: %.990s", err);
    } else {
        em_batch_view view = {b->time_ms, b->nblocks, b->blocks, b->sources, b->nassigned,
                              b->assigned};
        em_luahost_run_batch(b->version->host, &view, b->id, &res);
    }
    int64_t ran_ms = em_clock_now_ms();
    keep_tables(b);
    if (!res.ok && !res.fatal) { /* an output could not deliver: the same batch again */
        em_luahost_abort(b->version->host);
        retry_later(b, res.err);
        return;
    }
    int ok = res.ok && !res.fatal;
    uint64_t written = 0;
    if (ok && commit(b, &written, err, sizeof err) != 0) { /* from ran_ms: its time is the commit's */
        em_luahost_abort(b->version->host);
        retry_later(b, err);
        return;
    }
    if (!ok)
        em_luahost_abort(b->version->host);
    if (ok && atomic_exchange(&j->blocked, 0)) {
        em_log(EM_LOG_INFO, j->name, "batch %lld went through after %d attempts; the job runs "
               "again", (long long)b->time_ms, b->attempts + 1);
    }
    int64_t committed_ms = em_clock_now_ms();
    em_batch_release(b, ok);
    uint64_t state_bytes = 0;
    if (ok && b->version->desc->stateful) {
        /* Snapshot slices: after the acks, before the job's next batch
         * (a job's batches run one at a time), never inside a commit. */
        int64_t m0 = em_clock_now_ms();
        uint64_t mbytes = em_luahost_maintain(b->version->host);
        if (mbytes)
            em_log(EM_LOG_DEBUG, j->name, "state snapshot slice after batch %lld: %llu bytes "
                   "in %lld ms", (long long)b->time_ms, (unsigned long long)mbytes,
                   (long long)(em_clock_now_ms() - m0));
        state_bytes = em_luahost_state_bytes(b->version->host); /* merged: the batch's */
    }
    record(b, &res, ok, ran_ms, committed_ms - ran_ms, written, state_bytes);
    if (res.fatal) {
        em_log(EM_LOG_ERROR, j->name, "job stopped (%s): %s",
               res.stopped_by[0] ? res.stopped_by : "on_error = fail", res.err);
        atomic_store(&j->failed, 1);
    }
    em_batch_free(b);
    if (j->rt->batch_ended)
        j->rt->batch_ended(j, j->rt->batch_ended_arg);
}

/* batch.c — see batch.h. */
#include "batch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "pool.h"

static void run(em_task *t);

static int max_retries = 3;
static int backpressure;

void em_batch_set_max_retries(int n) { max_retries = n; }
void em_batch_set_backpressure(int on) { backpressure = on; }

static em_batch *new_batch(em_job *j, int64_t time_ms)
{
    em_batch *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    em_version *v = j->version;
    b->job = j;
    b->version = em_version_ref(v);
    b->time_ms = time_ms;
    b->task.owner = j;
    b->task.run = run;
    b->first_of_reload = v->reload_ms && v->batches_cut == 0;
    v->batches_cut++;
    return b;
}

em_batch *em_batch_cut_recovered(em_job *j, int64_t time_ms, uint64_t max_records)
{
    size_t from = j->recovered_pos, to = from;
    uint64_t records = 0;
    /* Whole blocks while under the limit: at most the limit plus one block,
     * the same bound live batches keep. */
    while (to < j->nrecovered && (!max_records || records < max_records))
        records += j->recovered[to++]->count;
    if (to == from)
        return NULL;
    em_batch *b = new_batch(j, time_ms);
    if (!b)
        return NULL;
    b->blocks = malloc((to - from) * sizeof *b->blocks);
    b->sources = malloc((to - from) * sizeof *b->sources);
    if (!b->blocks || !b->sources) {
        em_batch_drop(b);
        return NULL;
    }
    memcpy(b->blocks, j->recovered + from, (to - from) * sizeof *b->blocks);
    memcpy(b->sources, j->recovered_src + from, (to - from) * sizeof *b->sources);
    b->nblocks = (uint32_t)(to - from);
    b->records = records;
    j->recovered_pos = to;
    if (to == j->nrecovered) { /* all handed over: the batches own the blocks now */
        free(j->recovered);
        free(j->recovered_src);
        j->recovered = NULL;
        j->recovered_src = NULL;
        j->nrecovered = j->recovered_pos = 0;
    }
    return b;
}

em_batch *em_batch_cut(em_job *j, int64_t time_ms)
{
    em_version *v = j->version;
    em_batch *b = new_batch(j, time_ms);
    if (!b)
        return NULL;
    size_t cap = 0;
    for (size_t i = 0; i < v->nreceivers; i++) {
        em_block **got;
        size_t n = em_receiver_take(v->receivers[i], &got);
        if (!n)
            continue;
        em_block **blocks = realloc(b->blocks, (cap + n) * sizeof *blocks);
        int32_t *sources = realloc(b->sources, (cap + n) * sizeof *sources);
        if (blocks)
            b->blocks = blocks;
        if (sources)
            b->sources = sources;
        if (!blocks || !sources) { /* out of memory: report the blocks failed */
            em_receiver_batch_done(v->receivers[i], got, n, 0);
            for (size_t k = 0; k < n; k++)
                em_block_unref(got[k]);
            free(got);
            em_log(EM_LOG_ERROR, j->name, "out of memory cutting batch %lld", (long long)time_ms);
            continue;
        }
        for (size_t k = 0; k < n; k++) {
            b->blocks[cap + k] = got[k];
            b->sources[cap + k] = (int32_t)i + 1;
            b->records += got[k]->count;
        }
        cap += n;
        free(got);
    }
    b->nblocks = (uint32_t)cap;
    return b;
}

/* Tells each receiver which of its blocks are done, grouped by receiver,
 * and deletes the write-ahead log segments of a batch that succeeded. */
static void release(em_batch *b, int ok)
{
    for (uint32_t i = 0; ok && i < b->nblocks; i++)
        if (b->blocks[i]->wal_path && unlink(b->blocks[i]->wal_path) != 0 && errno != ENOENT)
            em_log(EM_LOG_WARN, b->job->name, "write-ahead log %s: cannot delete: %s",
                   b->blocks[i]->wal_path, strerror(errno));
    for (uint32_t i = 0; i < b->nblocks; i++) {
        em_receiver *r = b->blocks[i]->receiver;
        if (!r) /* recovered from the write-ahead log */
            continue;
        int first = 1;
        for (uint32_t k = 0; k < i; k++)
            first &= b->blocks[k]->receiver != r;
        if (!first)
            continue;
        em_block *mine[b->nblocks];
        size_t n = 0;
        for (uint32_t k = i; k < b->nblocks; k++)
            if (b->blocks[k]->receiver == r)
                mine[n++] = b->blocks[k];
        em_receiver_batch_done(r, mine, n, ok);
    }
}

static void free_batch(em_batch *b)
{
    for (uint32_t i = 0; i < b->nblocks; i++)
        em_block_unref(b->blocks[i]);
    free(b->blocks);
    free(b->sources);
    em_version_unref(b->version);
    free(b);
}

void em_batch_drop(em_batch *b)
{
    release(b, 0);
    free_batch(b);
}

/* Records the completed batch in the job's checkpoint. A new state_version
 * archives the old checkpoint first (its state no longer fits the job). */
static void checkpoint(em_batch *b)
{
    em_job *j = b->job;
    const char *sv = b->version->desc->state_version;
    if (j->cp.batches > 0 && strcmp(j->cp.state_version, sv) != 0) {
        char moved[1400];
        if (em_checkpoint_archive(j->dir, moved, sizeof moved) == 0)
            em_log(EM_LOG_INFO, j->name, "state_version '%s' -> '%s': previous checkpoint archived "
                   "in %s", j->cp.state_version, sv, moved);
        j->cp.batches = 0;
    }
    snprintf(j->cp.state_version, sizeof j->cp.state_version, "%s", sv);
    j->cp.last_batch_ms = b->time_ms;
    j->cp.batches++;
    char err[1400];
    if (em_checkpoint_write(j->dir, &j->cp, err, sizeof err) != 0)
        em_log(EM_LOG_ERROR, j->name, "%s", err);
}

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

static void run(em_task *t)
{
    em_batch *b = (em_batch *)t;
    em_job *j = b->job;
    em_batch_info info = {.time_ms = b->time_ms, .records = b->records, .blocks = b->nblocks,
                          .interval_ms = b->version->batch_interval_ms};
    if (atomic_load(&j->failed)) { /* the job stopped on an error: leave these unacked */
        em_batch_drop(b);
        return;
    }
    em_pool_usage stale;
    em_pool_usage_take(&stale); /* start this batch's count from zero */
    int64_t start = em_clock_now_ms();
    em_batch_view view = {b->time_ms, b->nblocks, b->blocks, b->sources};
    em_batch_result res;
    em_luahost_run_batch(b->version->host, &view, &res);
    /* An output that could not deliver (a sink's server refused or went
     * away) fails the batch: try again, with backoff, before giving up and
     * leaving the records unacknowledged. Later batches of the job wait, so
     * order holds. */
    for (int attempt = 1; !res.ok && !res.fatal && attempt <= max_retries; attempt++) {
        int64_t backoff = 500LL << (attempt - 1);
        em_log(EM_LOG_WARN, j->name, "batch %lld failed (%s); retry %d of %d in %lld ms",
               (long long)b->time_ms, res.err, attempt, max_retries, (long long)backoff);
        em_clock_sleep_ms(backoff);
        em_luahost_run_batch(b->version->host, &view, &res);
        info.retries = (uint32_t)attempt;
    }
    if (!res.ok && !res.fatal)
        em_log(EM_LOG_ERROR, j->name, "batch %lld failed after %d retries: %s; its records are "
               "not acknowledged", (long long)b->time_ms, max_retries, res.err);
    int64_t end = em_clock_now_ms();
    info.scheduling_delay_ms = start - b->time_ms;
    info.processing_ms = end - start;
    info.total_delay_ms = end - b->time_ms;
    info.failed = res.failed;
    info.ok = res.ok && !res.fatal;
    release(b, info.ok);
    if (info.ok)
        checkpoint(b);
    if (info.ok && backpressure)
        adapt_rate(b, &info);
    for (size_t i = 0; i < b->version->nreceivers; i++)
        info.rate += em_receiver_rate(b->version->receivers[i]);
    em_pool_usage pools;
    em_pool_usage_take(&pools);
    info.pool_borrows = pools.borrows;
    info.pool_waits = pools.waits;
    info.pool_wait_ms = pools.wait_ms;
    em_history_add(j->history, &info);
    em_history_set_error(j->history, end, res.err);
    if (b->first_of_reload)
        em_log(EM_LOG_INFO, j->name, "first batch of the new version done %lld ms after the reload",
               (long long)(end - b->version->reload_ms));
    em_log(EM_LOG_DEBUG, j->name,
           "batch %lld: %llu records in %u blocks, scheduling delay %lld ms, processing %lld ms, "
           "total delay %lld ms, %lld failed, rate %.0f/s, pool %llu borrowed %llu waited %lld ms",
           (long long)b->time_ms, (unsigned long long)b->records, b->nblocks,
           (long long)info.scheduling_delay_ms, (long long)info.processing_ms,
           (long long)info.total_delay_ms, (long long)info.failed, info.rate,
           (unsigned long long)info.pool_borrows, (unsigned long long)info.pool_waits,
           (long long)info.pool_wait_ms);
    if (res.fatal) {
        em_log(EM_LOG_ERROR, j->name, "job stopped (on_error = fail): %s", res.err);
        atomic_store(&j->failed, 1);
    }
    free_batch(b);
}

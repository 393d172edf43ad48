/* read_ahead.c — see read_ahead.h. */
#include "read_ahead.h"

#include "clock.h"
#include "history.h"
#include "receiver.h"

/* The read-ahead bound (docs/internals.md, "Read-ahead"): a job's
 * receivers hold at most what its workers process in READ_AHEAD_BATCHES
 * batch intervals, measured on its last batches (records / processing
 * time), so a source read faster than the job processes it keeps its
 * backlog at the source. Until a batch with records is measured, a
 * receiver may hold READ_AHEAD_MIN records per block interval of the batch
 * interval (the first batch of a job with hour-long batches needs an
 * hour's records); a batch cut under the bound measures the rate again,
 * so the bound follows the job up as well as down. Never below
 * READ_AHEAD_MIN. */
#define READ_AHEAD_BATCHES 2
#define READ_AHEAD_MIN 65536
#define READ_AHEAD_HISTORY 4

/* Splits a job's bound over its receivers, none below READ_AHEAD_MIN. */
static void set_read_ahead(em_version *v, double bound)
{
    size_t nr = v->nreceivers;
    double each = nr ? bound / (double)nr : bound;
    if (each < READ_AHEAD_MIN)
        each = READ_AHEAD_MIN;
    for (size_t i = 0; i < nr; i++)
        em_receiver_set_read_ahead(v->receivers[i], (uint64_t)each);
}

static uint64_t unmeasured_bound(const em_version *v)
{
    int64_t block = em_clock_block_interval_ms();
    int64_t blocks = block > 0 ? v->batch_interval_ms / block : 1;
    return (uint64_t)READ_AHEAD_MIN * (uint64_t)(blocks > 1 ? blocks : 1);
}

/* The first bound of a version's receivers, before any batch of it is
 * measured. */
void em_read_ahead_start(const em_config *cfg, em_version *v)
{
    set_read_ahead(v, cfg->catch_up && v->desc->catch_up ? READ_AHEAD_MIN
                                                        : (double)unmeasured_bound(v));
}

/* Whether a job may cut batches between its intervals (catch-up). */
static int catches_up(const em_config *cfg, const em_job *j)
{
    return cfg->catch_up && j->version->desc->catch_up;
}

/* The most a job that catches up holds in blocks: an eighth of memory.max
 * (32 MiB with the defaults), so a job whose batches cost next to nothing
 * (a measured rate of millions a second) does not read ahead without end. */
static double catch_up_records_max(const em_config *cfg, em_job *j)
{
    uint64_t records = 0, bytes = 0;
    for (size_t i = 0; i < j->version->nreceivers; i++) {
        em_receiver_stats st;
        em_receiver_get_stats(j->version->receivers[i], &st);
        records += st.records;
        bytes += st.bytes;
    }
    double per = records ? (double)bytes / (double)records + (double)sizeof(em_record) : 64.0;
    double budget = cfg->memory_max > 0 ? (double)cfg->memory_max / 8 : 32.0 * (1 << 20);
    return budget / per;
}

void em_read_ahead_bound(const em_config *cfg, em_job *j)
{
    em_batch_info recent[READ_AHEAD_HISTORY];
    size_t n = em_history_recent(j->history, recent, READ_AHEAD_HISTORY);
    uint64_t records = 0;
    int64_t ms = 0;
    for (size_t i = 0; i < n; i++)
        if (recent[i].records > 0) {
            records += recent[i].records;
            ms += recent[i].processing_ms > 0 ? recent[i].processing_ms : 1;
        }
    int catch_up = catches_up(cfg, j);
    /* Until a batch is measured a job that catches up holds the floor: its
     * first batch is cut as soon as half of that is read, and measures. */
    double bound = catch_up ? READ_AHEAD_MIN : (double)unmeasured_bound(j->version);
    if (records > 0) {
        /* A job that catches up cuts its next batch as soon as a slice of
         * work is ready, so two slices keep its worker busy; the others
         * need a batch interval's worth. */
        int64_t span = j->version->batch_interval_ms;
        if (catch_up && cfg->catch_up_slice_ms < span)
            span = cfg->catch_up_slice_ms;
        double rate = (double)records * 1000.0 / (double)ms;
        bound = rate * (double)span / 1000.0 * READ_AHEAD_BATCHES;
        if (catch_up) {
            double most = catch_up_records_max(cfg, j);
            if (bound > most)
                bound = most;
        }
    }
    set_read_ahead(j->version, bound);
}

/* A catch-up batch is due when a job that may catch up has a batch's
 * worth ready (em_receiver_ready: a receiver met its bound, or holds half
 * of it not yet in a batch) and none of its batches waits or runs but the
 * caller's own (own: 1 from the end of a batch). Driver lock held. */
int em_catch_up_due(const em_config *cfg, em_scheduler *sched, em_job *j, size_t own)
{
    if (j->state != EM_JOB_RUNNING || !catches_up(cfg, j) || j->next || j->nrecovered ||
        j->held || atomic_load(&j->blocked) || atomic_load(&j->failed))
        return 0;
    int ready = 0;
    for (size_t i = 0; !ready && i < j->version->nreceivers; i++)
        ready = em_receiver_ready(j->version->receivers[i]);
    return ready && em_scheduler_pending(sched, j) <= own;
}

/* api.c — see api.h. */
#include "api.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"

/* Averages over a job's retained batches, as Spark's statistics. */
typedef struct averages {
    size_t n;
    uint64_t records;
    double input_rate, scheduling, processing, total;
} averages;

static size_t recent(const em_snap_job *j, em_batch_info **out)
{
    *out = NULL;
    if (!j->history)
        return 0;
    size_t cap = em_history_capacity(j->history);
    *out = malloc(cap * sizeof **out);
    return *out ? em_history_recent(j->history, *out, cap) : 0;
}

static void average(const em_batch_info *b, size_t n, averages *a)
{
    memset(a, 0, sizeof *a);
    int64_t span = 0;
    for (size_t i = 0; i < n; i++) {
        a->records += b[i].records;
        a->scheduling += (double)b[i].scheduling_delay_ms;
        a->processing += (double)b[i].processing_ms;
        a->total += (double)b[i].total_delay_ms;
        span += b[i].interval_ms;
    }
    a->n = n;
    if (n) {
        a->scheduling /= (double)n;
        a->processing /= (double)n;
        a->total /= (double)n;
    }
    a->input_rate = span > 0 ? (double)a->records * 1000.0 / (double)span : 0;
}

static void json_averages(em_buf *o, const averages *a)
{
    em_buf_printf(o, "\"avgInputRate\":");
    em_buf_json_num(o, a->input_rate);
    if (!a->n) {
        em_buf_printf(o, ",\"avgSchedulingDelay\":null,\"avgProcessingTime\":null,"
                         "\"avgTotalDelay\":null");
        return;
    }
    em_buf_printf(o, ",\"avgSchedulingDelay\":");
    em_buf_json_num(o, a->scheduling);
    em_buf_printf(o, ",\"avgProcessingTime\":");
    em_buf_json_num(o, a->processing);
    em_buf_printf(o, ",\"avgTotalDelay\":");
    em_buf_json_num(o, a->total);
}

static uint64_t received(const em_snap_job *j)
{
    uint64_t n = 0;
    for (size_t i = 0; i < j->nreceivers; i++)
        n += j->receivers[i].st.records;
    return n;
}

static void json_rate(em_buf *o, double rate)
{
    if (rate > 0)
        em_buf_json_num(o, rate);
    else
        em_buf_add(o, "null", 4);
}

static const char *paused_reason(const em_snap_job *j, const em_snap_receiver *r,
                                 int max_waiting)
{
    if (j->paused)
        return "paused through the API";
    if (r->st.over_memory)
        return "memory.max";
    if (r->st.held && j->nrecovered)
        return "write-ahead log recovery";
    if (r->st.held && (int)j->waiting > max_waiting)
        return "waiting batches";
    if (r->st.held)
        return "held";
    if (r->st.throttled)
        return "rate";
    return NULL;
}

static void json_receiver(em_buf *o, const em_snapshot *s, const em_snap_job *j,
                          const em_snap_receiver *r)
{
    double up = (double)(s->taken_ms - s->start_ms) / 1000.0;
    em_buf_printf(o, "{\"streamId\":%d,\"streamName\":", r->id);
    char name[200];
    snprintf(name, sizeof name, "%s/%d %s", j->name, r->id, r->kind);
    em_buf_json_str(o, name);
    em_buf_printf(o, ",\"job\":");
    em_buf_json_str(o, j->name);
    em_buf_printf(o, ",\"kind\":");
    em_buf_json_str(o, r->kind);
    em_buf_printf(o, ",\"description\":");
    em_buf_json_str(o, r->describe);
    em_buf_printf(o, ",\"where\":");
    em_buf_json_str(o, r->where);
    em_buf_printf(o, ",\"isActive\":%s,\"executorId\":\"driver\",\"executorHost\":\"localhost\"",
                  r->st.active ? "true" : "false");
    em_buf_printf(o, ",\"lastErrorTime\":");
    em_buf_json_time(o, r->st.last_error_ms);
    em_buf_printf(o, ",\"lastErrorMessage\":");
    if (r->st.last_error_ms)
        em_buf_json_str(o, r->st.last_error);
    else
        em_buf_add(o, "null", 4);
    em_buf_printf(o, ",\"failing\":%s,\"failingSince\":", r->st.failing_since_ms ? "true" : "false");
    em_buf_json_time(o, r->st.failing_since_ms);
    em_buf_printf(o, ",\"numRecords\":%llu,\"numBytes\":%llu,\"avgEventRate\":",
                  (unsigned long long)r->st.records, (unsigned long long)r->st.bytes);
    em_buf_json_num(o, up > 0 ? (double)r->st.records / up : 0);
    em_buf_printf(o, ",\"rateLimit\":");
    json_rate(o, r->st.rate);
    em_buf_printf(o, ",\"maxRate\":");
    json_rate(o, r->st.max_rate);
    const char *why = paused_reason(j, r, s->max_waiting_batches);
    em_buf_printf(o, ",\"paused\":%s,\"pausedReason\":", why ? "true" : "false");
    if (why)
        em_buf_json_str(o, why);
    else
        em_buf_add(o, "null", 4);
    em_buf_printf(o, ",\"acknowledges\":%s,\"lag\":", r->acknowledges ? "true" : "false");
    if (r->st.lag >= 0)
        em_buf_printf(o, "%lld", (long long)r->st.lag);
    else
        em_buf_add(o, "null", 4);
    em_buf_printf(o, ",\"lagDetail\":");
    if (r->st.lag_detail[0]) /* JSON the connector wrote */
        em_buf_add(o, r->st.lag_detail, strlen(r->st.lag_detail));
    else
        em_buf_add(o, "null", 4);
    em_buf_add(o, "}", 1);
}

/* The job's reference tables as its worker last read them (history.h);
 * malloc'd, *n of them (NULL and 0 without any). */
static em_table_status *tables_of(const em_snap_job *j, size_t *n)
{
    *n = 0;
    em_table_status *t = j->history ? malloc(EM_TABLES_MAX * sizeof *t) : NULL;
    if (t)
        *n = em_history_tables(j->history, t, EM_TABLES_MAX);
    return t;
}

static void json_tables(em_buf *o, const em_snap_job *j)
{
    size_t n;
    em_table_status *t = tables_of(j, &n);
    em_buf_printf(o, ",\"tables\":[");
    for (size_t i = 0; i < n; i++) {
        em_buf_printf(o, "%s{\"name\":", i ? "," : "");
        em_buf_json_str(o, t[i].name);
        em_buf_printf(o, ",\"kind\":");
        em_buf_json_str(o, t[i].kind);
        em_buf_printf(o, ",\"source\":");
        em_buf_json_str(o, t[i].source);
        em_buf_printf(o, ",\"where\":");
        em_buf_json_str(o, t[i].where);
        em_buf_printf(o, ",\"loaded\":%s,\"stale\":%s,\"entries\":%lld,\"lastLoadTime\":",
                      t[i].loaded ? "true" : "false", t[i].stale ? "true" : "false",
                      (long long)t[i].entries);
        em_buf_json_time(o, t[i].last_load_ms);
        em_buf_printf(o, ",\"loadErrors\":%lld,\"lastError\":", (long long)t[i].load_errors);
        if (t[i].last_error[0])
            em_buf_json_str(o, t[i].last_error);
        else
            em_buf_add(o, "null", 4);
        em_buf_add(o, "}", 1);
    }
    em_buf_add(o, "]", 1);
    free(t);
}

static void json_job(em_buf *o, const em_snap_job *j)
{
    em_buf_printf(o, "{\"name\":");
    em_buf_json_str(o, j->name);
    em_buf_printf(o, ",\"state\":\"%s\",\"script\":", j->state);
    em_buf_json_str(o, j->path);
    em_buf_printf(o, ",\"version\":\"%s\",\"loadedTime\":", j->version);
    em_buf_json_time(o, j->loaded_ms);
    em_buf_printf(o, ",\"batchDuration\":%lld,\"onError\":", (long long)j->batch_interval_ms);
    em_buf_json_str(o, j->on_error);
    em_buf_printf(o, ",\"stateVersion\":");
    em_buf_json_str(o, j->state_version);
    em_buf_printf(o, ",\"sources\":[");
    for (size_t i = 0; i < j->nreceivers; i++) {
        em_buf_printf(o, "%s{\"streamId\":%d,\"kind\":", i ? "," : "", j->receivers[i].id);
        em_buf_json_str(o, j->receivers[i].kind);
        em_buf_printf(o, ",\"description\":");
        em_buf_json_str(o, j->receivers[i].describe);
        em_buf_printf(o, ",\"where\":");
        em_buf_json_str(o, j->receivers[i].where);
        em_buf_printf(o, "}");
    }
    em_buf_printf(o, "],\"outputs\":[");
    for (size_t i = 0; i < j->noutputs; i++) {
        em_buf_printf(o, "%s{\"kind\":", i ? "," : "");
        em_buf_json_str(o, j->outputs[i].kind);
        em_buf_printf(o, ",\"where\":");
        em_buf_json_str(o, j->outputs[i].where);
        em_buf_printf(o, "}");
    }
    em_buf_add(o, "]", 1);
    json_tables(o, j);
    const em_history_sum *t = &j->sum;
    em_buf_printf(o, ",\"numReceivedRecords\":%llu,\"numProcessedRecords\":%llu,"
                  "\"numFailedRecords\":%llu,\"numTotalCompletedBatches\":%llu,"
                  "\"numFailedBatches\":%llu,\"waitingBatches\":%zu,\"lateBatchesInARow\":%u,"
                  "\"paused\":%s,\"held\":%s,\"blocked\":%s,\"reloadPending\":%s,\"rate\":",
                  (unsigned long long)received(j), (unsigned long long)t->records,
                  (unsigned long long)t->failed, (unsigned long long)t->batches,
                  (unsigned long long)t->failed_batches, j->waiting, t->late_in_a_row,
                  j->paused ? "true" : "false", j->held ? "true" : "false",
                  j->blocked ? "true" : "false", j->reload_pending ? "true" : "false");
    json_rate(o, j->rate);
    em_buf_printf(o, ",\"maxRate\":");
    json_rate(o, j->max_rate);
    em_buf_printf(o, ",\"lateRecords\":");
    if (t->late_records >= 0)
        em_buf_printf(o, "%lld", (long long)t->late_records);
    else
        em_buf_add(o, "null", 4);
    em_buf_printf(o, ",\"stateSize\":");
    if (t->state_bytes >= 0)
        em_buf_printf(o, "%lld", (long long)t->state_bytes);
    else
        em_buf_add(o, "null", 4);
    em_buf_printf(o, ",\"lastError\":");
    if (t->last_error_ms)
        em_buf_json_str(o, t->last_error);
    else
        em_buf_add(o, "null", 4);
    em_buf_printf(o, ",\"lastErrorTime\":");
    em_buf_json_time(o, t->last_error_ms);
    em_batch_info *b;
    size_t n = recent(j, &b);
    averages a;
    average(b, n, &a);
    free(b);
    em_buf_printf(o, ",\"statistics\":{\"numRetainedCompletedBatches\":%zu,", n);
    json_averages(o, &a);
    em_buf_printf(o, "}}");
}

/* A script that is not running, listed beside the jobs: named after its
 * file, with the load error (file:line) or the reason it is disabled. */
static void json_broken(em_buf *o, const em_snap_broken *b)
{
    const char *base = strrchr(b->path, '/');
    base = base ? base + 1 : b->path;
    char name[256];
    snprintf(name, sizeof name, "%.200s", base);
    char *dot = strrchr(name, '.');
    if (dot && strcmp(dot, ".lua") == 0)
        *dot = '\0';
    em_buf_printf(o, "{\"name\":");
    em_buf_json_str(o, name);
    em_buf_printf(o, ",\"state\":\"%s\",\"script\":", b->disabled ? "disabled" : "load_error");
    em_buf_json_str(o, b->path);
    em_buf_printf(o, ",\"lastError\":");
    em_buf_json_str(o, b->error);
    em_buf_printf(o, "}");
}

void em_api_jobs(const em_snapshot *s, em_buf *out)
{
    em_buf_add(out, "[", 1);
    for (size_t i = 0; i < s->njobs; i++) {
        if (i)
            em_buf_add(out, ",", 1);
        json_job(out, &s->jobs[i]);
    }
    for (size_t i = 0; i < s->nbroken; i++) {
        if (i || s->njobs)
            em_buf_add(out, ",", 1);
        json_broken(out, &s->broken[i]);
    }
    em_buf_add(out, "]", 1);
}

int em_api_job(const em_snapshot *s, const char *name, em_buf *out)
{
    const em_snap_job *j = em_snapshot_job(s, name);
    if (!j)
        return -1;
    json_job(out, j);
    return 0;
}

static void json_batch(em_buf *o, const em_snap_job *j, const em_batch_info *b)
{
    em_buf_printf(o, "{\"batchId\":%lld,\"batchTime\":", (long long)b->time_ms);
    em_buf_json_time(o, b->time_ms);
    em_buf_printf(o, ",\"status\":\"%s\",\"batchDuration\":%lld,\"inputSize\":%llu,"
                  "\"numBlocks\":%u,\"schedulingDelay\":%lld,\"processingTime\":%lld,"
                  "\"totalDelay\":%lld,\"numTotalOutputOps\":%zu,\"numFailedRecords\":%lld,"
                  "\"retries\":%u,\"rate\":",
                  b->ok ? "COMPLETED" : "FAILED", (long long)b->interval_ms,
                  (unsigned long long)b->records, b->blocks, (long long)b->scheduling_delay_ms,
                  (long long)b->processing_ms, (long long)b->total_delay_ms, j->noutputs,
                  (long long)b->failed, b->retries);
    json_rate(o, b->rate);
    em_buf_printf(o, ",\"poolBorrows\":%llu,\"poolWaits\":%llu,\"poolWaitTime\":%lld,"
                  "\"commitTime\":%lld,\"stateWritten\":%llu,\"stateBytes\":%llu}",
                  (unsigned long long)b->pool_borrows, (unsigned long long)b->pool_waits,
                  (long long)b->pool_wait_ms, (long long)b->commit_ms,
                  (unsigned long long)b->state_written, (unsigned long long)b->state_bytes);
}

int em_api_batches(const em_snapshot *s, const char *name, int64_t time_ms, em_buf *out)
{
    const em_snap_job *j = em_snapshot_job(s, name);
    if (!j)
        return -1;
    em_batch_info *b;
    size_t n = recent(j, &b);
    int rc = time_ms >= 0 ? -1 : 0;
    if (time_ms < 0)
        em_buf_add(out, "[", 1);
    for (size_t i = 0; i < n; i++) {
        if (time_ms >= 0) {
            if (b[i].time_ms != time_ms)
                continue;
            json_batch(out, j, &b[i]);
            rc = 0;
            break;
        }
        if (i)
            em_buf_add(out, ",", 1);
        json_batch(out, j, &b[i]);
    }
    if (time_ms < 0)
        em_buf_add(out, "]", 1);
    free(b);
    return rc;
}

void em_api_receivers(const em_snapshot *s, em_buf *out)
{
    em_buf_add(out, "[", 1);
    int first = 1;
    for (size_t i = 0; i < s->njobs; i++)
        for (size_t k = 0; k < s->jobs[i].nreceivers; k++) {
            if (!first)
                em_buf_add(out, ",", 1);
            first = 0;
            json_receiver(out, s, &s->jobs[i], &s->jobs[i].receivers[k]);
        }
    em_buf_add(out, "]", 1);
}

void em_api_statistics(const em_snapshot *s, em_buf *out)
{
    size_t nrec = 0, active = 0, retained = 0, waiting = 0;
    uint64_t batches = 0, processed = 0, got = 0;
    averages all = {0};
    double rate = 0;
    for (size_t i = 0; i < s->njobs; i++) {
        const em_snap_job *j = &s->jobs[i];
        for (size_t k = 0; k < j->nreceivers; k++)
            active += j->receivers[k].st.active;
        nrec += j->nreceivers;
        batches += j->sum.batches;
        processed += j->sum.records;
        got += received(j);
        waiting += j->waiting;
        em_batch_info *b;
        size_t n = recent(j, &b);
        averages a;
        average(b, n, &a);
        free(b);
        retained += n;
        rate += a.input_rate;
        all.scheduling += a.scheduling * (double)n;
        all.processing += a.processing * (double)n;
        all.total += a.total * (double)n;
    }
    all.n = retained;
    if (retained) {
        all.scheduling /= (double)retained;
        all.processing /= (double)retained;
        all.total /= (double)retained;
    }
    all.input_rate = rate;
    em_buf_printf(out, "{\"startTime\":");
    em_buf_json_time(out, s->start_ms);
    em_buf_printf(out, ",\"batchDuration\":%lld,\"numJobs\":%zu,\"numReceivers\":%zu,"
                  "\"numActiveReceivers\":%zu,\"numInactiveReceivers\":%zu,"
                  "\"numTotalCompletedBatches\":%llu,\"numRetainedCompletedBatches\":%zu,"
                  "\"numActiveBatches\":%zu,\"numProcessedRecords\":%llu,"
                  "\"numReceivedRecords\":%llu,",
                  (long long)s->batch_interval_ms, s->njobs, nrec, active, nrec - active,
                  (unsigned long long)batches, retained, waiting, (unsigned long long)processed,
                  (unsigned long long)got);
    json_averages(out, &all);
    em_buf_printf(out, ",\"memoryUsed\":%zu,\"memoryMax\":%zu,\"state\":\"%s\",\"lastError\":",
                  s->memory_used, s->memory_max, s->state);
    if (s->last_error_ms)
        em_buf_json_str(out, s->last_error);
    else
        em_buf_add(out, "null", 4);
    em_buf_printf(out, ",\"lastErrorTime\":");
    em_buf_json_time(out, s->last_error_ms);
    em_buf_add(out, "}", 1);
}

static void reason(em_buf *o, int *n, const char *check, const char *job, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void reason(em_buf *o, int *n, const char *check, const char *job, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    em_buf_printf(o, "%s{\"check\":\"%s\",\"job\":", (*n)++ ? "," : "", check);
    if (job)
        em_buf_json_str(o, job);
    else
        em_buf_add(o, "null", 4);
    em_buf_printf(o, ",\"message\":");
    em_buf_json_str(o, msg);
    em_buf_add(o, "}", 1);
}

int em_api_health(const em_snapshot *s, const em_health_limits *lim, int ready, int64_t now_ms,
                  em_buf *out)
{
    em_buf reasons;
    em_buf_init(&reasons);
    int n = 0;
    if (!s) {
        reason(&reasons, &n, "starting", NULL, "the driver has not published its state yet");
    } else {
        int64_t stale = 20 * s->block_interval_ms > 5000 ? 20 * s->block_interval_ms : 5000;
        int stopping = strcmp(s->state, "stopping") == 0;
        if (stopping && ready) /* alive while it drains, but not taking work */
            reason(&reasons, &n, "stopping", NULL, "the driver is stopping");
        if (!stopping && now_ms - s->taken_ms > stale)
            reason(&reasons, &n, "clock", NULL, "the driver's clock last ticked %lld ms ago",
                   (long long)(now_ms - s->taken_ms));
        for (size_t i = 0; i < s->njobs; i++) {
            const em_snap_job *j = &s->jobs[i];
            if (strcmp(j->state, "failed") == 0)
                reason(&reasons, &n, "job_failed", j->name, "stopped by on_error = \"fail\": %s",
                       j->sum.last_error);
            if (!ready)
                continue;
            for (size_t k = 0; k < j->nreceivers; k++) {
                const em_snap_receiver *r = &j->receivers[k];
                int64_t since = r->st.failing_since_ms;
                if (since && now_ms - since >= lim->receiver_failing_ms)
                    reason(&reasons, &n, "receiver_failing", j->name,
                           "source %d (%s) failing for %lld s: %s", r->id, r->kind,
                           (long long)((now_ms - since) / 1000), r->st.last_error);
            }
            if (j->blocked)
                reason(&reasons, &n, "job_blocked", j->name, "a batch keeps failing "
                       "(streaming.batch.maxRetries exceeded): %s", j->sum.last_error);
            if ((int)j->waiting > s->max_waiting_batches)
                reason(&reasons, &n, "waiting_batches", j->name,
                       "%zu batches waiting (streaming.maxWaitingBatches = %d)", j->waiting,
                       s->max_waiting_batches);
            if ((int)j->sum.late_in_a_row >= lim->late_batches)
                reason(&reasons, &n, "late_batches", j->name,
                       "the last %u batches took longer than their interval (%lld ms)",
                       j->sum.late_in_a_row, (long long)j->batch_interval_ms);
        }
    }
    em_buf_printf(out, "{\"status\":\"%s\",\"reasons\":[", n ? "fail" : "ok");
    if (reasons.len)
        em_buf_add(out, reasons.data, reasons.len);
    em_buf_add(out, "]}", 2);
    em_buf_free(&reasons);
    return n == 0;
}

static void fmt_ms(char *out, size_t len, double ms)
{
    if (ms < 0)
        snprintf(out, len, "-");
    else if (ms < 10000)
        snprintf(out, len, "%.0fms", ms);
    else
        snprintf(out, len, "%.1fs", ms / 1000);
}

void em_api_status_text(const em_snapshot *s, em_buf *o)
{
    char started[32];
    time_t t = (time_t)(s->start_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(started, sizeof started, "%Y-%m-%d %H:%M:%SZ", &tm);
    em_buf_printf(o, "ember: %zu jobs, up since %s, %d workers, memory %.1f of %.0f MiB\n\n",
                  s->njobs, started, s->workers, (double)s->memory_used / 1048576.0,
                  (double)s->memory_max / 1048576.0);
    em_buf_printf(o, "%-20s %-9s %10s %12s %9s %9s %9s %8s %7s\n", "JOB", "STATE", "RATE/s",
                  "RECORDS", "SCHED", "PROC", "TOTAL", "FAILED", "WAITING");
    for (size_t i = 0; i < s->njobs; i++) {
        const em_snap_job *j = &s->jobs[i];
        em_batch_info *b;
        size_t n = recent(j, &b);
        averages a;
        average(b, n < 10 ? n : 10, &a);
        char sd[16], pt[16], td[16];
        fmt_ms(sd, sizeof sd, n ? b[0].scheduling_delay_ms : -1);
        fmt_ms(pt, sizeof pt, n ? b[0].processing_ms : -1);
        fmt_ms(td, sizeof td, n ? b[0].total_delay_ms : -1);
        free(b);
        em_buf_printf(o, "%-20.20s %-9s %10.0f %12llu %9s %9s %9s %8llu %7zu\n", j->name,
                      j->state, a.input_rate, (unsigned long long)j->sum.records, sd, pt, td,
                      (unsigned long long)j->sum.failed, j->waiting);
        if (j->sum.state_bytes >= 0 || j->sum.late_records >= 0) {
            em_buf_printf(o, "  state:");
            if (j->sum.state_bytes >= 0)
                em_buf_printf(o, " %lld bytes", (long long)j->sum.state_bytes);
            if (j->sum.late_records >= 0)
                em_buf_printf(o, "%s %lld late records", j->sum.state_bytes >= 0 ? "," : "",
                              (long long)j->sum.late_records);
            em_buf_printf(o, "\n");
        }
        size_t nt;
        em_table_status *tb = tables_of(j, &nt);
        for (size_t k = 0; k < nt; k++)
            em_buf_printf(o, "  table %.60s: %lld entries%s, %lld load errors%s%.200s\n",
                          tb[k].name, (long long)tb[k].entries,
                          !tb[k].loaded ? ", not loaded yet" : tb[k].stale ? ", stale" : "",
                          (long long)tb[k].load_errors, tb[k].last_error[0] ? "; last: " : "",
                          tb[k].last_error);
        free(tb);
        if (j->sum.last_error_ms)
            em_buf_printf(o, "  last error: %.200s\n", j->sum.last_error);
    }
    for (size_t i = 0; i < s->nbroken; i++)
        em_buf_printf(o, "%-20.20s %-9s %.200s\n", s->broken[i].path,
                      s->broken[i].disabled ? "disabled" : "error", s->broken[i].error);
    em_buf_printf(o, "\n%-28s %-8s %12s %10s %10s %-10s %s\n", "SOURCE", "ACTIVE", "RECORDS",
                  "LIMIT/s", "LAG", "PAUSED", "LAST ERROR");
    for (size_t i = 0; i < s->njobs; i++)
        for (size_t k = 0; k < s->jobs[i].nreceivers; k++) {
            const em_snap_job *j = &s->jobs[i];
            const em_snap_receiver *r = &j->receivers[k];
            char id[96];
            snprintf(id, sizeof id, "%.40s/%d %s", j->name, r->id, r->kind);
            const char *why = paused_reason(j, r, s->max_waiting_batches);
            char lim[24];
            if (r->st.rate > 0)
                snprintf(lim, sizeof lim, "%.0f", r->st.rate);
            else
                snprintf(lim, sizeof lim, "-");
            char lag[24];
            if (r->st.lag >= 0)
                snprintf(lag, sizeof lag, "%lld", (long long)r->st.lag);
            else
                snprintf(lag, sizeof lag, "-");
            em_buf_printf(o, "%-28.28s %-8s %12llu %10s %10s %-10.10s %.120s\n", id,
                          r->st.active ? (r->st.failing_since_ms ? "failing" : "yes") : "no",
                          (unsigned long long)r->st.records, lim, lag, why ? why : "-",
                          r->st.last_error_ms ? r->st.last_error : "-");
        }
    if (s->npools)
        em_buf_printf(o, "\n%-40s %5s %5s %10s %9s %s\n", "SINK POOL", "OPEN", "IDLE", "BORROWS",
                      "IO ERRORS", "LAST I/O ERROR");
    for (size_t i = 0; i < s->npools; i++) {
        const em_pool_stats *p = &s->pools[i];
        char name[128];
        snprintf(name, sizeof name, "%.31s %.80s", p->kind, p->endpoint);
        em_buf_printf(o, "%-40.40s %5d %5d %10llu %9llu %.160s\n", name, p->open, p->idle,
                      (unsigned long long)p->borrows, (unsigned long long)p->io_errors,
                      p->last_io_error_ms ? p->last_io_error : "-");
    }
}

void em_api_pools(const em_snapshot *s, em_buf *out)
{
    em_buf_add(out, "[", 1);
    for (size_t i = 0; i < s->npools; i++) {
        const em_pool_stats *p = &s->pools[i];
        em_buf_printf(out, "%s{\"kind\":", i ? "," : "");
        em_buf_json_str(out, p->kind);
        em_buf_printf(out, ",\"endpoint\":");
        em_buf_json_str(out, p->endpoint);
        em_buf_printf(out, ",\"open\":%d,\"idle\":%d,\"max\":%d,\"borrows\":%llu,"
                      "\"waits\":%llu,\"connectFailures\":%llu,\"broken\":%llu,"
                      "\"ioErrors\":%llu,\"lastError\":", p->open, p->idle, p->max,
                      (unsigned long long)p->borrows, (unsigned long long)p->waits,
                      (unsigned long long)p->connect_failures, (unsigned long long)p->broken,
                      (unsigned long long)p->io_errors);
        if (p->last_error_ms)
            em_buf_json_str(out, p->last_error);
        else
            em_buf_add(out, "null", 4);
        em_buf_printf(out, ",\"lastErrorTime\":");
        em_buf_json_time(out, p->last_error_ms);
        em_buf_printf(out, ",\"lastIoError\":");
        if (p->last_io_error_ms)
            em_buf_json_str(out, p->last_io_error);
        else
            em_buf_add(out, "null", 4);
        em_buf_printf(out, ",\"lastIoErrorTime\":");
        em_buf_json_time(out, p->last_io_error_ms);
        em_buf_add(out, "}", 1);
    }
    em_buf_add(out, "]", 1);
}

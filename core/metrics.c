/* metrics.c — see metrics.h. */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* A label value: backslash, quote and newline escaped. */
static void label(em_buf *o, const char *v)
{
    em_buf_add(o, "\"", 1);
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            em_buf_add(o, "\\", 1);
        if (*v == '\n')
            em_buf_add(o, "\\n", 2);
        else
            em_buf_add(o, v, 1);
    }
    em_buf_add(o, "\"", 1);
}

static void family(em_buf *o, const char *name, const char *type, const char *help)
{
    em_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void job_sample(em_buf *o, const char *name, const em_snap_job *j, double v)
{
    em_buf_printf(o, "%s{job=", name);
    label(o, j->name);
    em_buf_printf(o, "} %.17g\n", v);
}

typedef double (*job_value)(const em_snap_job *j);

static double v_batches(const em_snap_job *j) { return (double)j->sum.batches; }
static double v_failed_batches(const em_snap_job *j) { return (double)j->sum.failed_batches; }
static double v_records(const em_snap_job *j) { return (double)j->sum.records; }
static double v_failed(const em_snap_job *j) { return (double)j->sum.failed; }
static double v_waiting(const em_snap_job *j) { return (double)j->waiting; }
static double v_late(const em_snap_job *j) { return (double)j->sum.late_in_a_row; }
static double v_rate(const em_snap_job *j) { return j->rate; }
static double v_interval(const em_snap_job *j) { return (double)j->batch_interval_ms / 1000.0; }
static double v_up(const em_snap_job *j)
{
    return strcmp(j->state, "running") == 0 || strcmp(j->state, "paused") == 0;
}

static double v_late_records(const em_snap_job *j) { return (double)j->sum.late_records; }
static double v_state_bytes(const em_snap_job *j) { return (double)j->sum.state_bytes; }

static void per_job(em_buf *o, const em_snapshot *s, const char *name, const char *type,
                    const char *help, job_value fn)
{
    family(o, name, type, help);
    for (size_t i = 0; i < s->njobs; i++) {
        double v = fn(&s->jobs[i]);
        /* late records and state size: -1 for a job without event time or state */
        if (v < 0 && (fn == v_late_records || fn == v_state_bytes))
            continue;
        job_sample(o, name, &s->jobs[i], v);
    }
}

static void histogram(em_buf *o, const em_snapshot *s, const char *name, const char *help,
                      int total_delay)
{
    family(o, name, "histogram", help);
    for (size_t i = 0; i < s->njobs; i++) {
        const em_snap_job *j = &s->jobs[i];
        const uint64_t *b = total_delay ? j->sum.total_delay : j->sum.processing;
        for (int k = 0; k <= EM_HISTORY_BUCKETS; k++) {
            em_buf_printf(o, "%s_bucket{job=", name);
            label(o, j->name);
            if (k < EM_HISTORY_BUCKETS)
                em_buf_printf(o, ",le=\"%g\"} %llu\n", em_history_bucket_le[k],
                              (unsigned long long)b[k]);
            else
                em_buf_printf(o, ",le=\"+Inf\"} %llu\n", (unsigned long long)b[k]);
        }
        em_buf_printf(o, "%s_sum{job=", name);
        label(o, j->name);
        em_buf_printf(o, "} %.6f\n%s_count{job=", total_delay ? j->sum.total_delay_sum_s
                                                               : j->sum.processing_sum_s, name);
        label(o, j->name);
        em_buf_printf(o, "} %llu\n", (unsigned long long)j->sum.batches);
    }
}

/* The jobs' reference tables, one family each, labelled {job, table}:
 * which 0 entries, 1 load errors, 2 last load time, 3 stale, 4 loaded. A
 * table not loaded yet has no last-load sample. */
static void table_family(em_buf *o, const em_snapshot *s, const char *name, const char *type,
                         const char *help, int which)
{
    em_table_status *t = malloc(EM_TABLES_MAX * sizeof *t);
    if (!t)
        return;
    family(o, name, type, help);
    for (size_t i = 0; i < s->njobs; i++) {
        size_t n = s->jobs[i].history ? em_history_tables(s->jobs[i].history, t, EM_TABLES_MAX)
                                      : 0;
        for (size_t k = 0; k < n; k++) {
            double v = which == 0 ? (double)t[k].entries : which == 1 ? (double)t[k].load_errors
                     : which == 2 ? (double)t[k].last_load_ms / 1000.0
                     : which == 3 ? t[k].stale : t[k].loaded;
            if (which == 2 && t[k].last_load_ms <= 0)
                continue;
            em_buf_printf(o, "%s{job=", name);
            label(o, s->jobs[i].name);
            em_buf_printf(o, ",table=");
            label(o, t[k].name);
            em_buf_printf(o, "} %.17g\n", v);
        }
    }
    free(t);
}

typedef double (*rx_value)(const em_snap_receiver *r);

static double r_records(const em_snap_receiver *r) { return (double)r->st.records; }
static double r_bytes(const em_snap_receiver *r) { return (double)r->st.bytes; }
static double r_active(const em_snap_receiver *r) { return r->st.active; }
static double r_failing(const em_snap_receiver *r) { return r->st.failing_since_ms != 0; }
static double r_paused(const em_snap_receiver *r)
{
    return r->st.held || r->st.throttled || r->st.over_memory;
}
static double r_limit(const em_snap_receiver *r) { return r->st.rate; }
static double r_lag(const em_snap_receiver *r) { return (double)r->st.lag; }

static void per_receiver(em_buf *o, const em_snapshot *s, const char *name, const char *type,
                         const char *help, rx_value fn)
{
    family(o, name, type, help);
    for (size_t i = 0; i < s->njobs; i++)
        for (size_t k = 0; k < s->jobs[i].nreceivers; k++) {
            const em_snap_receiver *r = &s->jobs[i].receivers[k];
            if (fn == r_lag && r->st.lag < 0) /* the broker does not tell */
                continue;
            em_buf_printf(o, "%s{job=", name);
            label(o, s->jobs[i].name);
            em_buf_printf(o, ",source=\"%d\",kind=", r->id);
            label(o, r->kind);
            em_buf_printf(o, "} %.17g\n", fn(r));
        }
}

static void pool_family(em_buf *o, const em_snapshot *s, const char *name, const char *type,
                        const char *help, int which)
{
    family(o, name, type, help);
    for (size_t i = 0; i < s->npools; i++) {
        const em_pool_stats *p = &s->pools[i];
        double v = which == 0 ? p->open : which == 1 ? p->idle : which == 2 ? (double)p->borrows
                 : which == 3 ? (double)p->waits : which == 4 ? (double)p->connect_failures
                 : (double)p->io_errors;
        em_buf_printf(o, "%s{kind=", name);
        label(o, p->kind);
        em_buf_printf(o, ",endpoint=");
        label(o, p->endpoint);
        em_buf_printf(o, "} %.17g\n", v);
    }
}

static double resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return (double)rss * (double)sysconf(_SC_PAGESIZE);
}

void em_metrics_write(const em_snapshot *s, em_buf *o)
{
    family(o, "ember_start_time_seconds", "gauge", "When the driver started, in seconds since the epoch.");
    em_buf_printf(o, "ember_start_time_seconds %.3f\n", (double)s->start_ms / 1000.0);
    family(o, "ember_memory_used_bytes", "gauge", "Bytes held by blocks not yet processed (bounded by memory.max).");
    em_buf_printf(o, "ember_memory_used_bytes %zu\n", s->memory_used);
    family(o, "ember_memory_max_bytes", "gauge", "memory.max (0: no cap).");
    em_buf_printf(o, "ember_memory_max_bytes %zu\n", s->memory_max);
    family(o, "ember_process_resident_memory_bytes", "gauge", "Resident memory of the driver process.");
    em_buf_printf(o, "ember_process_resident_memory_bytes %.0f\n", resident_bytes());
    family(o, "ember_workers", "gauge", "Worker threads (streaming.concurrentJobs).");
    em_buf_printf(o, "ember_workers %d\n", s->workers);
    family(o, "ember_job_scripts_not_running", "gauge", "Job scripts that failed to load or are disabled.");
    em_buf_printf(o, "ember_job_scripts_not_running %zu\n", s->nbroken);

    family(o, "ember_job_state", "gauge", "1 for the state each job is in.");
    for (size_t i = 0; i < s->njobs; i++) {
        em_buf_printf(o, "ember_job_state{job=");
        label(o, s->jobs[i].name);
        em_buf_printf(o, ",state=\"%s\"} 1\n", s->jobs[i].state);
    }
    per_job(o, s, "ember_job_up", "gauge", "1 while the job runs (or is paused), 0 when it stopped or failed.", v_up);
    per_job(o, s, "ember_job_batches_total", "counter", "Batches completed.", v_batches);
    per_job(o, s, "ember_job_failed_batches_total", "counter", "Batches that did not complete (on_error = \"fail\" stopped the job).", v_failed_batches);
    per_job(o, s, "ember_job_records_total", "counter", "Records in completed batches.", v_records);
    per_job(o, s, "ember_job_failed_records_total", "counter", "Records (or output runs) that raised.", v_failed);
    per_job(o, s, "ember_job_waiting_batches", "gauge", "Batches queued or running.", v_waiting);
    per_job(o, s, "ember_job_late_batches", "gauge", "Latest batches in a row that took longer than their interval.", v_late);
    per_job(o, s, "ember_job_rate_limit_records_per_second", "gauge", "Sum of the receivers' rates in force (0: unlimited).", v_rate);
    per_job(o, s, "ember_job_batch_interval_seconds", "gauge", "The job's batch interval.", v_interval);
    per_job(o, s, "ember_job_late_records_total", "counter", "Records event-time windows found late, since the job's state began (jobs with event time).", v_late_records);
    per_job(o, s, "ember_job_state_bytes", "gauge", "Bytes of keyed state the job's operators hold, after its latest batch (stateful jobs).", v_state_bytes);
    table_family(o, s, "ember_table_entries", "gauge", "Entries a reference table holds.", 0);
    table_family(o, s, "ember_table_load_errors_total", "counter", "Reads of a reference table's source that failed, since the job's Lua state began.", 1);
    table_family(o, s, "ember_table_last_load_timestamp_seconds", "gauge", "When a reference table's source was last read successfully, in seconds since the epoch.", 2);
    table_family(o, s, "ember_table_stale", "gauge", "1 while the last read of a reference table's source failed (joins use what it held).", 3);
    table_family(o, s, "ember_table_loaded", "gauge", "1 once a reference table's first load is done (the job's batches wait for it).", 4);
    histogram(o, s, "ember_batch_processing_seconds", "Time from a worker starting a batch to every output finishing.", 0);
    histogram(o, s, "ember_batch_total_delay_seconds", "Time from a batch's time to every output finishing.", 1);

    pool_family(o, s, "ember_pool_connections", "gauge", "Open connections of a sink pool.", 0);
    pool_family(o, s, "ember_pool_idle_connections", "gauge", "Idle connections of a sink pool.", 1);
    pool_family(o, s, "ember_pool_borrows_total", "counter", "Connections borrowed from a sink pool.", 2);
    pool_family(o, s, "ember_pool_waits_total", "counter", "Borrows that waited for a free connection.", 3);
    pool_family(o, s, "ember_pool_connect_failures_total", "counter", "Connections a sink pool failed to open.", 4);
    pool_family(o, s, "ember_pool_io_errors_total", "counter", "I/O errors on connections of a sink pool in use (a broken socket, a failed delivery).", 5);
    per_receiver(o, s, "ember_receiver_records_total", "counter", "Records a receiver took in.", r_records);
    per_receiver(o, s, "ember_receiver_bytes_total", "counter", "Bytes (values, keys, metadata) a receiver took in.", r_bytes);
    per_receiver(o, s, "ember_receiver_active", "gauge", "1 while the receiver's thread reads.", r_active);
    per_receiver(o, s, "ember_receiver_paused", "gauge", "1 while the receiver does not read (rate, waiting batches, memory.max, a paused job).", r_paused);
    per_receiver(o, s, "ember_receiver_failing", "gauge", "1 while the receiver's source keeps failing (connection lost).", r_failing);
    per_receiver(o, s, "ember_receiver_lag_records", "gauge", "Records the broker holds beyond what was acknowledged (Kafka: high watermark minus committed offset, summed over partitions; Redis: list and processing list lengths, or a stream group's pending entries plus its lag; RabbitMQ: ready messages plus this consumer's unacked deliveries).", r_lag);
    per_receiver(o, s, "ember_receiver_rate_limit_records_per_second", "gauge", "The rate in force (0: unlimited).", r_limit);
}

typedef struct seen {
    char name[128];
    uint64_t batches, records, failed;
    double processing_s;
} seen;

struct em_summary {
    seen *jobs;
    size_t n;
};

em_summary *em_summary_create(void) { return calloc(1, sizeof(em_summary)); }

static seen *find_seen(em_summary *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->jobs[i].name, name) == 0)
            return &m->jobs[i];
    seen *g = realloc(m->jobs, (m->n + 1) * sizeof *g);
    if (!g)
        return NULL;
    m->jobs = g;
    memset(&g[m->n], 0, sizeof *g);
    snprintf(g[m->n].name, sizeof g[m->n].name, "%s", name);
    return &g[m->n++];
}

/* One line per job: what its batches did since the last line, so an info
 * log shows the figures without a line per batch. */
void em_summary_log(em_summary *m, const em_snapshot *s)
{
    for (size_t i = 0; i < s->njobs; i++) {
        const em_snap_job *j = &s->jobs[i];
        seen *g = find_seen(m, j->name);
        if (!g || j->sum.batches == g->batches)
            continue;
        uint64_t batches = j->sum.batches - g->batches;
        uint64_t records = j->sum.records - g->records;
        uint64_t failed = j->sum.failed - g->failed;
        double proc = (j->sum.processing_sum_s - g->processing_s) / (double)batches * 1000.0;
        em_batch_info last = {0};
        if (j->history)
            em_history_recent(j->history, &last, 1);
        em_log(EM_LOG_INFO, j->name, "%llu batches, %llu records, %llu failed; processing avg "
               "%.0f ms; last batch: scheduling delay %lld ms, total delay %lld ms; %zu waiting",
               (unsigned long long)batches, (unsigned long long)records,
               (unsigned long long)failed, proc, (long long)last.scheduling_delay_ms,
               (long long)last.total_delay_ms, j->waiting);
        g->batches = j->sum.batches;
        g->records = j->sum.records;
        g->failed = j->sum.failed;
        g->processing_s = j->sum.processing_sum_s;
    }
}

void em_summary_free(em_summary *m)
{
    if (!m)
        return;
    free(m->jobs);
    free(m);
}

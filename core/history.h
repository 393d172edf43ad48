/* history.h — the last N completed batches of one job, for metrics and the API.
 *
 * A fixed ring (streaming.ui.retainedBatches) so memory does not grow with
 * uptime. Written by the worker that finished a batch, read by anyone: the
 * lock is held for a copy only. Totals and the histograms /metrics serves
 * count every batch since start, not only the retained ones. Reference
 * counted, so a published snapshot (snapshot.h) can outlive its job.
 */
#ifndef EMBER_HISTORY_H
#define EMBER_HISTORY_H

#include <stddef.h>
#include <stdint.h>

#include "table_status.h"

typedef struct em_batch_info {
    int64_t time_ms;             /* the batch time (its interval's end) */
    uint64_t records;
    uint32_t blocks;
    int64_t scheduling_delay_ms; /* batch time → a worker started it */
    int64_t processing_ms;       /* start → every output finished */
    int64_t total_delay_ms;      /* batch time → finished */
    int64_t failed;              /* records or output runs that raised */
    double rate;                 /* the job's receivers' rate after it (records/s, 0: none) */
    uint64_t pool_borrows;       /* pooled connections its outputs borrowed */
    uint64_t pool_waits;         /* borrows that waited for a free connection */
    int64_t pool_wait_ms;        /* time those waits took */
    int64_t commit_ms;           /* the commit: state files, checkpoint, apply */
    uint64_t state_written;      /* bytes of state the commit wrote */
    uint64_t state_bytes;        /* the job's keyed state after it (about its snapshot size) */
    int64_t interval_ms;         /* the batch interval of the version that ran it */
    uint32_t retries;            /* runs after the first (an output failed) */
    int ok;
} em_batch_info;

/* Upper bounds (seconds) of the histogram buckets, then +Inf. */
#define EM_HISTORY_BUCKETS 14
extern const double em_history_bucket_le[EM_HISTORY_BUCKETS];

typedef struct em_history_sum {
    uint64_t batches, records, failed, failed_batches;
    /* cumulative counts per bucket (le), the last one +Inf */
    uint64_t processing[EM_HISTORY_BUCKETS + 1], total_delay[EM_HISTORY_BUCKETS + 1];
    double processing_sum_s, total_delay_sum_s;
    uint32_t late_in_a_row; /* latest batches in a row whose processing took over their interval */
    char last_error[512];   /* "" when no batch failed yet */
    int64_t last_error_ms;
    int64_t late_records;   /* records event-time windows found late, in the job's state; -1: no event time */
    int64_t state_bytes;    /* bytes of keyed state its operators hold; -1: a job without state */
} em_history_sum;

typedef struct em_history em_history;

em_history *em_history_create(size_t capacity);
em_history *em_history_ref(em_history *h);
void em_history_add(em_history *h, const em_batch_info *info);
/* The first error of a batch that had one (a failed record, an output that
 * could not deliver): kept as the job's last error. */
void em_history_set_error(em_history *h, int64_t when_ms, const char *err);
/* What the job's state holds after a batch, as the worker that ran it read
 * it from the job's Lua state (the API never enters it): late records and
 * state bytes, -1 each when the job has no event time, no state. */
void em_history_set_state(em_history *h, int64_t late_records, int64_t state_bytes);
/* The job's reference tables as the worker that ran its latest batch (or
 * attempt) read them; set_tables copies n of them (n 0: none). tables
 * copies up to max into out and returns the count. */
void em_history_set_tables(em_history *h, const em_table_status *t, size_t n);
size_t em_history_tables(em_history *h, em_table_status *out, size_t max);
/* Copies up to max of the newest entries, newest first; returns the count. */
size_t em_history_recent(em_history *h, em_batch_info *out, size_t max);
size_t em_history_capacity(const em_history *h);
/* Totals since start. */
void em_history_totals(em_history *h, uint64_t *batches, uint64_t *records, uint64_t *failed);
void em_history_summary(em_history *h, em_history_sum *out);
void em_history_free(em_history *h); /* drops a reference; accepts NULL */

#endif

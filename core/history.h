/* history.h — the last N completed batches of one job, for metrics and the API.
 *
 * A fixed ring (streaming.ui.retainedBatches) so memory does not grow with
 * uptime. Written by the worker that finished a batch, read by anyone.
 */
#ifndef EMBER_HISTORY_H
#define EMBER_HISTORY_H

#include <stddef.h>
#include <stdint.h>

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
    int ok;
} em_batch_info;

typedef struct em_history em_history;

em_history *em_history_create(size_t capacity);
void em_history_add(em_history *h, const em_batch_info *info);
/* Copies up to max of the newest entries, newest first; returns the count. */
size_t em_history_recent(em_history *h, em_batch_info *out, size_t max);
/* Totals since start. */
void em_history_totals(em_history *h, uint64_t *batches, uint64_t *records, uint64_t *failed);
void em_history_free(em_history *h); /* accepts NULL */

#endif

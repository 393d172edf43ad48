/* batch.h — one batch of one job: the blocks sealed since the last one.
 *
 * A batch holds a reference to each block and to the job version it was cut
 * with; it runs as a scheduler task, then tells each receiver its blocks are
 * done (where acks and offsets are released) and records its metrics.
 */
#ifndef EMBER_BATCH_H
#define EMBER_BATCH_H

#include <stdint.h>

#include "job.h"
#include "scheduler.h"

typedef struct em_batch {
    em_task task; /* first: the scheduler hands this pointer back */
    em_job *job;
    em_version *version;
    int64_t time_ms;
    em_block **blocks;
    int32_t *sources;
    uint32_t nblocks;
    uint64_t records;
    int first_of_reload; /* the first batch of a version a reload brought */
} em_batch;

/* Takes every sealed block of the job's current version into a new batch.
 * NULL only when out of memory (the blocks then stay with the receivers). */
em_batch *em_batch_cut(em_job *j, int64_t time_ms);
/* The next batch of blocks recovered from the write-ahead log: whole
 * blocks until it holds max_records (0: all), so at most max_records plus
 * one block. NULL when none are left. */
em_batch *em_batch_cut_recovered(em_job *j, int64_t time_ms, uint64_t max_records);
/* Releases a batch that will not run: its blocks are reported as failed so
 * ackable sources redeliver them. */
void em_batch_drop(em_batch *b);
/* How often a batch whose output failed is run again (streaming.batch.maxRetries). */
void em_batch_set_max_retries(int n);
/* Backpressure: after each batch the job's PID estimator sets its receivers' rate. */
void em_batch_set_backpressure(int on);

#endif

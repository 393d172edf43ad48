/* batch.h — one batch of one job: the blocks sealed since the last one.
 *
 * A batch holds a reference to each block and to the job version it was cut
 * with, and an id: monotonic per job, kept by the checkpoint, the same on a
 * retry and for the first batch after a crash. It runs as a scheduler task
 * through the stages of lifecycle.h.
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
    int32_t *assigned; /* (source, partition) pairs at the cut; see em_batch_view */
    uint32_t nassigned;
    uint64_t records;
    uint64_t id;
    int first_of_reload; /* the first batch of a version a reload brought */
    int attempts;        /* runs that failed so far */
    int64_t started_ms;  /* the first run's start: processing time counts retries */
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
/* The release stage: tells each receiver which of its blocks are done
 * (acks, offsets; ok = 0: redeliver) and, when ok, deletes their
 * write-ahead log segments. */
void em_batch_release(em_batch *b, int ok);
/* Drops the references a batch holds and frees it. */
void em_batch_free(em_batch *b);

#endif

/* scheduler.h — the worker pool (streaming.concurrentJobs threads).
 *
 * Tasks run in submission order, except that two tasks of the same owner
 * (a job) never run at once: a worker takes the oldest task whose owner is
 * idle. So one job's batches run one at a time and in order, while tasks of
 * different jobs run in parallel. A task waiting for its retry time holds
 * back the later tasks of its owner, not the workers.
 */
#ifndef EMBER_SCHEDULER_H
#define EMBER_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

typedef struct em_task {
    struct em_task *next;
    void *owner;
    int64_t not_before_ms; /* a retry waits until then (em_clock_now_ms); 0: now */
    void (*run)(struct em_task *t); /* runs on a worker; owns and frees t */
} em_task;

typedef struct em_scheduler em_scheduler;

em_scheduler *em_scheduler_create(int workers);
void em_scheduler_submit(em_scheduler *s, em_task *t);
/* Queues t again, ahead of every other task of its owner, to run no
 * earlier than t->not_before_ms: a retry with backoff that keeps the
 * owner's order and never holds a worker while it waits. From a task's
 * run(), which then no longer owns t. */
void em_scheduler_retry(em_scheduler *s, em_task *t);
/* Tasks queued or running for this owner. */
size_t em_scheduler_pending(em_scheduler *s, const void *owner);
/* Blocks until no task is queued or running. */
void em_scheduler_wait_idle(em_scheduler *s);
/* Runs what is queued, then joins the workers. Accepts NULL. */
void em_scheduler_free(em_scheduler *s);

#endif

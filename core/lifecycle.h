/* lifecycle.h — the life of a batch after it is cut, in stages.
 *
 *   run      the job's Lua task: every output over the batch; stateful
 *            operators stage their changes, visible to no one yet
 *   retry    a failed run is queued again with a not-before time (backoff);
 *            a worker never sleeps, later batches of the job wait their turn
 *   commit   state changes, input positions and the batch id in one atomic
 *            checkpoint (state files by batch id, then the checkpoint's
 *            rename), then the staged state becomes visible
 *   release  acks and offsets to the brokers, write-ahead log segments
 *            deleted: only after the commit, so a crash in between replays
 *            nothing into the state twice
 *   record   metrics, history, backpressure, log lines
 *
 * docs/internals.md tells the whole story.
 */
#ifndef EMBER_LIFECYCLE_H
#define EMBER_LIFECYCLE_H

#include "scheduler.h"

/* The scheduler task of every batch (em_batch.task.run). */
void em_lifecycle_run(em_task *t);

#endif

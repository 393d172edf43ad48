/* read_ahead.h — how much a job's receivers read ahead of its batches, and
 * when a job behind its sources cuts a catch-up batch (docs/internals.md,
 * "Read-ahead").
 *
 * A receiver holds at most what the job's workers process in two batch
 * intervals (two catch-up slices for a job that catches up), measured on
 * its last batches, so a source read faster than the job keeps its backlog
 * at the source. A job that catches up cuts its next batch as soon as a
 * receiver holds half its bound and none of its batches waits or runs.
 * Called with the driver's lock held.
 */
#ifndef EMBER_READ_AHEAD_H
#define EMBER_READ_AHEAD_H

#include <stddef.h>

#include "config.h"
#include "job.h"
#include "scheduler.h"

/* Sets the bound of a version's receivers before any batch is measured. */
void em_read_ahead_start(const em_config *cfg, em_version *v);
/* Sets the bound of a job's receivers from its last batches. */
void em_read_ahead_bound(const em_config *cfg, em_job *j);
/* Whether a catch-up batch of j is due now; own: batches of j the caller
 * itself runs (1 from the end of a batch, else 0). */
int em_catch_up_due(const em_config *cfg, em_scheduler *sched, em_job *j, size_t own);

#endif

/* runtime.h — what the parts of a running driver share.
 *
 * One context, made by the driver and handed to every job (and through it
 * to its batches), instead of settings pushed into module globals: the
 * configuration in force and the worker pool batches run and retry on.
 */
#ifndef EMBER_RUNTIME_H
#define EMBER_RUNTIME_H

#include "config.h"
#include "scheduler.h"

struct em_job;

typedef struct em_runtime {
    const em_config *cfg;
    em_scheduler *sched;
    /* Called on the worker when one of job's batches is done (the batch's
     * task still counts as running): the driver may cut the job's next
     * batch at once when the job is catching up. NULL: nothing. */
    void (*batch_ended)(struct em_job *job, void *arg);
    void *batch_ended_arg;
} em_runtime;

#endif

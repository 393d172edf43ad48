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

typedef struct em_runtime {
    const em_config *cfg;
    em_scheduler *sched;
} em_runtime;

#endif

/* snapshot.h — what the driver publishes for the HTTP API: an immutable copy.
 *
 * The clock builds one under the driver's lock every SNAPSHOT_PERIOD_MS (and
 * the main thread after a reload or a control command) and swaps it in; the
 * HTTP thread takes a reference to the current one and reads it at leisure.
 * So a request never takes a lock a receiver or a worker waits on, and never
 * enters a Lua state. The batch history is shared (history.h, a lock held
 * for a copy only), everything else is copied.
 */
#ifndef EMBER_SNAPSHOT_H
#define EMBER_SNAPSHOT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "history.h"
#include "job.h"
#include "pool.h"
#include "receiver.h"
#include "scheduler.h"

#define EM_SNAPSHOT_PERIOD_MS 250

typedef struct em_snap_receiver {
    int id;                 /* 1-based source number in its job */
    char kind[32];          /* connector name */
    char describe[512];     /* connector and options, secrets masked */
    char where[512];        /* script:line of the declaration */
    int acknowledges;       /* the broker redelivers (no WAL needed) */
    em_receiver_stats st;
} em_snap_receiver;

typedef struct em_snap_output {
    char kind[64];
    char where[512];
} em_snap_output;

typedef struct em_snap_job {
    char name[128];
    char path[1024];
    const char *state;      /* running, paused, stopping, stopped, failed, removing */
    char version[17];       /* a hash of the script text loaded */
    int64_t loaded_ms;      /* when that version took over (0: at start-up) */
    int64_t batch_interval_ms;
    char on_error[16];
    char state_version[64];
    size_t waiting;         /* batches queued or running */
    int held, paused, reload_pending;
    int blocked;            /* a batch failed streaming.batch.maxRetries times and keeps retrying */
    size_t nrecovered;      /* recovered blocks still to be cut */
    double rate;            /* sum of the receivers' rates in force; 0: unlimited */
    double max_rate;        /* sum of their configured max_rate; 0: one is unlimited */
    em_snap_receiver *receivers;
    size_t nreceivers;
    em_snap_output *outputs;
    size_t noutputs;
    em_history *history;    /* a reference */
    em_history_sum sum;     /* taken when the snapshot was built */
} em_snap_job;

/* A script that is not running: it failed to load, or it is disabled. */
typedef struct em_snap_broken {
    char path[1024];
    char error[1024];       /* "file:line: why", or the reason it is disabled */
    int disabled;
} em_snap_broken;

typedef struct em_snapshot {
    atomic_int refs;
    int64_t taken_ms, start_ms;
    int64_t block_interval_ms, batch_interval_ms;
    int workers, max_waiting_batches;
    size_t memory_used, memory_max;
    em_snap_job *jobs;
    size_t njobs;
    em_snap_broken *broken;
    size_t nbroken;
    em_pool_stats *pools;   /* sink connection pools, shared by every job */
    size_t npools;
    const char *state;      /* the driver: running, stopping */
    char last_error[512];   /* the driver's last error (the jobs folder unreadable, ...) */
    int64_t last_error_ms;
} em_snapshot;

em_snapshot *em_snapshot_new(size_t njobs, size_t nbroken);
em_snapshot *em_snapshot_ref(em_snapshot *s);
void em_snapshot_unref(em_snapshot *s); /* accepts NULL */
const em_snap_job *em_snapshot_job(const em_snapshot *s, const char *name);

/* Copies the jobs (driver lock held; retired ones are left out) and leaves
 * room for nbroken entries the caller fills. NULL when out of memory. */
em_snapshot *em_snapshot_build(em_job *const *jobs, size_t njobs, em_scheduler *sched,
                               size_t nbroken);

/* The current snapshot of a driver, as a slot with its own small lock. */
typedef struct em_snapshot_slot em_snapshot_slot;
em_snapshot_slot *em_snapshot_slot_create(void);
void em_snapshot_slot_put(em_snapshot_slot *slot, em_snapshot *s); /* takes s */
em_snapshot *em_snapshot_slot_get(em_snapshot_slot *slot);         /* a reference, or NULL */
void em_snapshot_slot_free(em_snapshot_slot *slot);

#endif

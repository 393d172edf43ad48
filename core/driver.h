/* driver.h — the set of running jobs: start, reload, stop.
 *
 * The driver owns the worker pool and the clock. Every blockInterval the
 * clock seals each receiver's block and, for each job whose batch time has
 * come, cuts a batch and queues it. Reload and stop run on the main thread;
 * they and the clock take the driver's lock, so a swap or a removal always
 * falls between two batches.
 */
#ifndef EMBER_DRIVER_H
#define EMBER_DRIVER_H

#include "config.h"

typedef struct em_driver em_driver;

em_driver *em_driver_create(const em_config *cfg, const char *jobs_dir);
/* Loads every job in the folder (a broken script is logged, not fatal),
 * starts the workers, the receivers and the clock. -1 if the folder cannot
 * be read. */
int em_driver_start(em_driver *d);
/* Rescans the folder: new files start, removed ones stop gracefully,
 * changed ones are swapped at a batch boundary, unchanged ones are not
 * touched. */
void em_driver_reload(em_driver *d);
/* Stops the receivers; graceful: every record already received goes
 * through every output before it returns. */
void em_driver_stop(em_driver *d, int graceful);
void em_driver_free(em_driver *d); /* accepts NULL */
/* ember.id: this driver's name among the drivers sharing its groups (for
 * the HTTP API and status output). */
const char *em_driver_id(const em_driver *d);

/* The snapshot the clock last published (snapshot.h), a reference; NULL
 * before the first. Any thread. */
struct em_snapshot *em_driver_snapshot(em_driver *d);

typedef enum em_driver_command {
    EM_DRIVER_RELOAD,
    EM_DRIVER_STOP_JOB,   /* receivers stop, a last batch runs, the job stays listed */
    EM_DRIVER_START_JOB,  /* a stopped or failed job, from its file */
    EM_DRIVER_PAUSE_JOB,  /* receivers hold; batches go on, empty */
    EM_DRIVER_RESUME_JOB,
} em_driver_command;

/* Runs one command on the main thread (control.h). Returns 0 when done, -1
 * when there is no such job, 1 when the job is not in a state that allows
 * it; msg says what happened. */
int em_driver_control(em_driver *d, em_driver_command cmd, const char *name, char *msg,
                      size_t len);

#endif

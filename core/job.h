/* job.h — a job and its versions.
 *
 * A job is one script in jobs/. Each load of the script is a version: a Lua
 * state plus one receiver per declared source. A reload builds the next
 * version beside the running one and the clock swaps them at a batch
 * boundary; receivers whose configuration did not change move to the new
 * version untouched, so nothing is lost or read twice.
 */
#ifndef EMBER_JOB_H
#define EMBER_JOB_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "history.h"
#include "luahost.h"
#include "pid.h"
#include "receiver.h"
#include "runtime.h"

typedef struct em_version {
    atomic_int refs;
    em_luahost *host;
    em_job_desc *desc;        /* owned by host */
    em_receiver **receivers;  /* receivers[i] runs desc->sources[i] */
    size_t nreceivers;
    int64_t batch_interval_ms;
    int64_t reload_ms;        /* when the reload that loaded it began; 0 at start-up */
    uint64_t batches_cut;     /* clock thread only */
    int restored;             /* its state was loaded (workers only) */
} em_version;

typedef enum em_job_state {
    EM_JOB_RUNNING,
    EM_JOB_REMOVING, /* file removed: cut a last batch, then retire */
    EM_JOB_RETIRED,  /* no more batches; freed once its last one finished */
    EM_JOB_FAILED,   /* on_error = fail met an error; waits for a changed file */
    EM_JOB_STOPPING, /* stopped through the API: cut a last batch, then STOPPED */
    EM_JOB_STOPPED,  /* stopped through the API; kept until started again */
} em_job_state;

typedef struct em_job {
    const em_runtime *rt;
    char name[128];
    char path[1024];
    char *script;            /* the text loaded, to tell a changed file */
    em_version *version;     /* the one batches are cut with */
    em_version *next;        /* loaded by a reload, swapped in at the next batch */
    em_job_state state;
    atomic_int failed;       /* set by a worker when on_error = fail fired */
    int64_t next_batch_ms;
    int64_t last_cut_ms;     /* time of the last batch cut: a catch-up cut comes after it */
    em_history *history;
    char dir[1100];          /* <checkpoint.dir>/<job> */
    em_checkpoint cp;        /* workers only (one batch of a job at a time) */
    uint64_t next_batch_id;  /* clock thread: the id the next batch cut gets */
    atomic_int blocked;      /* a batch failed maxRetries times and still retries
                                (set by workers, read by the clock) */
    em_pid pid;              /* workers only */
    int held;                /* receivers held: too many batches waiting (clock only) */
    int paused;              /* paused through the API: receivers held (driver lock) */
    int64_t held_logged_ms;  /* last pause/resume logged at info (clock only) */
    /* Blocks recovered from the write-ahead log, cut into batches before
     * new input (clock only). */
    em_block **recovered;
    int32_t *recovered_src;
    size_t nrecovered, recovered_pos;
} em_job;

/* Loads a script into a new version with unstarted receivers. NULL + err;
 * *disabled is set when the script returned ember.disabled(reason) (err is
 * then the reason). */
em_version *em_version_load(const char *path, const em_config *cfg, int *disabled, char *err,
                            size_t errlen);
void em_version_start(em_version *v);
em_version *em_version_ref(em_version *v);
void em_version_unref(em_version *v); /* accepts NULL */

em_job *em_job_create(const char *path, char *script, em_version *v, const em_runtime *rt);
/* Reads the job's checkpoint and the write-ahead logs of its sources into
 * j->recovered, leaving out segments the checkpoint says are committed,
 * and hands the receivers their checkpointed positions. Before its
 * receivers start. */
void em_job_recover(em_job *j);
/* Seals every receiver's current block. */
void em_job_seal(em_job *j, int64_t now_ms);
/* A batch time for a cut at t: batch times of a job only go up, also when a
 * catch-up cut and the interval's fall in the same millisecond. */
int64_t em_job_cut_time(em_job *j, int64_t t);
/* Swaps in j->next: reuses receivers of the same signature, stops the
 * others (their last records are sealed for the batch cut before this). */
void em_job_stop_unmatched(em_job *j);
void em_job_swap(em_job *j);
void em_job_stop_receivers(em_job *j);
void em_job_free(em_job *j); /* accepts NULL */

/* The most a job file may hold. */
#define EM_JOB_FILE_MAX ((size_t)4 << 20)
/* Reads a whole regular file of at most max bytes (symlinks followed);
 * NULL and err ("path: why") for anything else: a FIFO, a device, a
 * folder, a larger file. Never blocks on a FIFO. */
char *em_read_file(const char *path, size_t max, char *err, size_t errlen);

#endif

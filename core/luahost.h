/* luahost.h — one Lua state holding one version of one job.
 *
 * Loading runs the script through lua/ember/runtime.lua (docs/internals.md)
 * and reads back the job's description: name, interval, error policy,
 * sources and outputs. A host is used by one thread at a time: the task
 * running the job holds the job's lock.
 */
#ifndef EMBER_LUAHOST_H
#define EMBER_LUAHOST_H

#include <stddef.h>
#include <stdint.h>

#include "block.h"
#include "config.h"
#include "connector.h"
#include "props.h"
#include "table_status.h"

typedef struct em_source_desc {
    const em_connector *conn;
    em_props props;
    char where[512]; /* script:line of the declaration */
} em_source_desc;

typedef struct em_output_desc {
    char kind[64];
    char where[512];
} em_output_desc;

typedef struct em_table_desc {
    char name[128];
    char kind[16];    /* redis_hash, redis_pattern, file, kafka */
    char source[512]; /* what it reads, passwords left out */
    char where[256];  /* script:line of the declaration */
} em_table_desc;

typedef struct em_job_desc {
    char name[128];
    int64_t batch_interval_ms; /* 0: the driver's streaming.batchInterval */
    char on_error[16];
    char disabled[512]; /* the script returned ember.disabled(reason): the reason */
    char state_version[64]; /* "" when the job declares none */
    int stateful;           /* operators keep state across batches (docs/state.md) */
    int catch_up;           /* may cut batches between intervals when behind (internals.md) */
    int64_t memory;           /* the `memory` option in bytes; -1: not set (0: no cap) */
    int64_t batch_timeout_ms; /* the `batch_timeout` option; -1: not set (0: none) */
    size_t nsources, noutputs, ntables;
    em_source_desc *sources;
    em_output_desc *outputs;
    em_table_desc *tables; /* its reference tables (docs/tables.md) */
} em_job_desc;

typedef struct em_batch_result {
    int ok;          /* every output ran */
    int fatal;       /* on_error = fail met an error: stop the job */
    int64_t failed;  /* records (or output runs) that raised */
    char err[1024];  /* first error of the batch, or "" */
    /* Why a fatal batch stopped the job: "" for on_error = fail, else the
     * budget it broke ("batch_timeout", "memory cap") or "dead letters
     * unwritable"; err then names the job, its usage or the source line. */
    char stopped_by[32];
} em_batch_result;

typedef struct em_luahost em_luahost;

/* Where lua/ lives: next to the binary, or EMBER_LUA_DIR. */
void em_luahost_set_lua_dir(const char *dir);
const char *em_luahost_lua_dir(void);

/* Loads a job script into a fresh state. NULL and err ("file:line: why") on
 * any error: syntax, a bad graph, an unknown source type. cfg gives
 * checkpoint.dir and the state.* defaults. */
em_luahost *em_luahost_load(const char *path, const em_config *cfg, char *err, size_t errlen);
em_job_desc *em_luahost_desc(em_luahost *h); /* owned by the host */
/* Runs one batch through every output; outputs see batch_id as
 * info.batch_id. Stateful operators stage their changes: see prepare,
 * apply and abort. A Lua error never escapes. A batch past the job's
 * batch_timeout, or a state that reaches its memory cap, is aborted and
 * comes back fatal with stopped_by set (core/budget.h). */
void em_luahost_run_batch(em_luahost *h, const em_batch_view *view, uint64_t batch_id,
                          em_batch_result *res);

/* The commit of a stateful job (docs/state.md), in this order:
 * prepare writes the staged changes of batch_id durably under
 * <checkpoint.dir>/<job>/state, in files named by the batch id and not
 * yet in force; the caller then writes the checkpoint naming batch_id;
 * apply makes the staged changes visible. abort drops them instead (a
 * failed run, prepare or checkpoint): the batch runs again later. Jobs
 * without state do nothing here. 0, or -1 and err. *bytes: bytes written. */
int em_luahost_prepare(em_luahost *h, uint64_t batch_id, uint64_t *bytes, char *err,
                       size_t errlen);
void em_luahost_apply(em_luahost *h, uint64_t batch_id);
void em_luahost_abort(em_luahost *h);
/* After a batch's acks, outside its commit: writes the next slice of any
 * snapshot being written (docs/state.md, "On disk") and drops the files a
 * finished one covers. Returns the bytes written (0 for none, or for a
 * job without state); a failure is logged, the deltas still hold the state. */
uint64_t em_luahost_maintain(em_luahost *h);
/* Loads the state committed up to batch committed_id (0: none), before the
 * first batch of a version runs; old_state_version is the checkpoint's:
 * when it differs the job's migrate runs, or the old state is archived.
 * 0, or -1 and err ("file:line: why" when migrate raised). */
int em_luahost_restore(em_luahost *h, uint64_t committed_id, const char *old_state_version,
                       char *err, size_t errlen);
/* restore's migrate, as a dry run on the state on disk: at reload time, so
 * a migrate that raises keeps the running version. 0, or -1 and err. */
int em_luahost_check_migrate(em_luahost *h, uint64_t committed_id,
                             const char *old_state_version, char *err, size_t errlen);
/* Bytes of state the job's operators hold, in all. */
uint64_t em_luahost_state_bytes(em_luahost *h);
/* Records its event-time windows found late since its state began; -1 for
 * a job without event time. */
int64_t em_luahost_late_records(em_luahost *h);
/* What the job's reference tables hold now and how their reads went, up
 * to max of them into out; returns the count (0 for a job without tables). */
size_t em_luahost_tables(em_luahost *h, em_table_status *out, size_t max);
/* Bytes the job's Lua state holds now, and its cap (0: none). */
size_t em_luahost_memory_used(const em_luahost *h);
int64_t em_luahost_memory_cap(const em_luahost *h);
void em_luahost_free(em_luahost *h); /* accepts NULL */

#endif

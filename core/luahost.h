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
#include "connector.h"
#include "props.h"

typedef struct em_source_desc {
    const em_connector *conn;
    em_props props;
    char where[512]; /* script:line of the declaration */
} em_source_desc;

typedef struct em_output_desc {
    char kind[64];
    char where[512];
} em_output_desc;

typedef struct em_job_desc {
    char name[128];
    int64_t batch_interval_ms; /* 0: the driver's streaming.batchInterval */
    char on_error[16];
    char disabled[512]; /* the script returned ember.disabled(reason): the reason */
    char state_version[64]; /* "" when the job declares none */
    int64_t memory;           /* the `memory` option in bytes; -1: not set (0: no cap) */
    int64_t batch_timeout_ms; /* the `batch_timeout` option; -1: not set (0: none) */
    size_t nsources, noutputs;
    em_source_desc *sources;
    em_output_desc *outputs;
} em_job_desc;

typedef struct em_batch_result {
    int ok;          /* every output ran */
    int fatal;       /* on_error = fail met an error: stop the job */
    int64_t failed;  /* records (or output runs) that raised */
    char err[1024];  /* first error of the batch, or "" */
    /* Why a fatal batch stopped the job: "" for on_error = fail, else the
     * budget it broke ("batch_timeout", "memory"); err then names the job,
     * its usage or the source line. */
    char stopped_by[32];
} em_batch_result;

typedef struct em_luahost em_luahost;

/* Where lua/ lives: next to the binary, or EMBER_LUA_DIR. */
void em_luahost_set_lua_dir(const char *dir);
const char *em_luahost_lua_dir(void);

/* Loads a job script into a fresh state. NULL and err ("file:line: why") on
 * any error: syntax, a bad graph, an unknown source type. */
em_luahost *em_luahost_load(const char *path, const char *checkpoint_dir, char *err,
                            size_t errlen);
em_job_desc *em_luahost_desc(em_luahost *h); /* owned by the host */
/* Runs one batch through every output. A Lua error never escapes. A batch
 * past the job's batch_timeout, or a state that reaches its memory cap, is
 * aborted and comes back fatal (core/budget.h). */
void em_luahost_run_batch(em_luahost *h, const em_batch_view *view, em_batch_result *res);
/* Bytes the job's Lua state holds now, and its cap (0: none). */
size_t em_luahost_memory_used(const em_luahost *h);
int64_t em_luahost_memory_cap(const em_luahost *h);
void em_luahost_free(em_luahost *h); /* accepts NULL */

#endif

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
    size_t nsources, noutputs;
    em_source_desc *sources;
    em_output_desc *outputs;
} em_job_desc;

typedef struct em_batch_result {
    int ok;          /* every output ran */
    int fatal;       /* on_error = fail met an error: stop the job */
    int64_t failed;  /* records (or output runs) that raised */
    char err[1024];  /* first error of the batch, or "" */
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
/* Runs one batch through every output. A Lua error never escapes. */
void em_luahost_run_batch(em_luahost *h, const em_batch_view *view, em_batch_result *res);
void em_luahost_free(em_luahost *h); /* accepts NULL */

#endif

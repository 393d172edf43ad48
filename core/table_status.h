/* table_status.h — what the driver shows of a job's reference tables.
 *
 * A table (lua/ember/table.lua, docs/tables.md) lives in the job's Lua
 * state. The worker that ran a batch reads each table's status from it
 * (em_luahost_tables) and keeps it with the job's history (history.h), so
 * the HTTP API and /metrics show it without entering the Lua state.
 */
#ifndef EMBER_TABLE_STATUS_H
#define EMBER_TABLE_STATUS_H

#include <stdint.h>

#define EM_TABLES_MAX 32 /* tables shown per job; a job may declare more */

typedef struct em_table_status {
    char name[128];
    char kind[16];        /* redis_hash, redis_pattern, file, kafka */
    char source[512];     /* what it reads, passwords left out */
    char where[256];      /* script:line of the declaration */
    int loaded;           /* its first load is done */
    int stale;            /* the last read of its source failed */
    int64_t entries;
    int64_t last_load_ms; /* the last read that worked (0: none yet) */
    int64_t load_errors;  /* reads of its source that failed, since the job's Lua state began */
    char last_error[512]; /* the last failed read's error, "" for none */
} em_table_status;

#endif

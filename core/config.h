/* config.h — the driver's configuration: ember.conf, then --conf flags.
 *
 * Keys follow Spark's names (a leading "spark." is accepted and dropped) so a
 * spark-submit script translates line by line. docs/configuration.md lists
 * them; the table in config.c is the single source of truth.
 */
#ifndef EMBER_CONFIG_H
#define EMBER_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "props.h"

typedef struct em_config {
    int64_t block_interval_ms;
    int64_t batch_interval_ms;
    int concurrent_jobs;
    double max_rate; /* 0: unlimited */
    int stop_gracefully;
    int spare_workers;            /* streaming.spareWorkers */
    int64_t stop_timeout_ms;      /* streaming.stopTimeout */
    int64_t job_memory;           /* streaming.job.memory, bytes; 0: no cap */
    int64_t job_batch_timeout_ms; /* streaming.job.batchTimeout; -1: unset; 0: none */
    int retained_batches;
    int pool_size;
    int batch_max_retries;
    int64_t batch_max_backoff_ms;
    int64_t state_max; /* bytes; 0: no cap */
    int state_snapshot_interval;
    int wal_enabled;
    char wal_fsync[16];
    int64_t wal_fsync_interval_ms;
    int backpressure;
    double initial_rate; /* 0: unset */
    double pid_p, pid_i, pid_d, pid_min_rate;
    int max_waiting_batches;
    int catch_up;              /* streaming.catchUp.enabled */
    int64_t catch_up_slice_ms; /* streaming.catchUp.slice */
    int64_t memory_max; /* bytes; 0: no cap */
    char checkpoint_dir[1024];
    char ember_id[80]; /* ember.id, or the default em_identity_default() makes */
    char log_level[16];
    char log_file[1024]; /* empty: stderr */
    char log_rolling_strategy[16];
    char log_rolling_interval[16];
    int log_rolling_max_retained;
    int64_t log_batch_summary_ms; /* one info line per job this often; 0: off */
    int ui_enabled;
    char ui_host[256];
    int ui_port;
    char ui_token[256]; /* empty: control calls need no token */
    int64_t health_receiver_failing_ms;
    int health_late_batches;
    char pid_file[1100]; /* default <checkpoint.dir>/ember.pid */
    int supervise;       /* restart a job stopped by on_error = fail */
    em_props props;  /* every key, validated, defaults filled */
    em_props origin; /* where each key given came from: "ember.conf:3", "--conf" */
} em_config;

void em_config_init(em_config *c);
/* Reads key = value lines; # starts a comment. Errors name file:line. */
int em_config_load_file(em_config *c, const char *path, char *err, size_t errlen);
/* One --conf key=value. */
int em_config_set(em_config *c, const char *key_value, char *err, size_t errlen);
/* Fills defaults, checks enumerations and ranges, fills the struct. */
int em_config_finish(em_config *c, char *err, size_t errlen);
void em_config_free(em_config *c);
/* Prints the table of keys with defaults and help, for --help. */
void em_config_print_keys(void);
/* Prints every key's effective value and where it came from (ember config). */
void em_config_print_effective(const em_config *c);
/* Whether a key takes effect on a SIGHUP without a restart. */
int em_config_live_key(const char *key);
/* Calls fn for each key whose value differs between a and b. */
void em_config_diff(const em_config *a, const em_config *b,
                    void (*fn)(const char *key, const char *old, const char *now, void *arg),
                    void *arg);

#endif

/* config.c — see config.h. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "identity.h"
#include "log.h"

static const em_option keys[] = {
    {"streaming.blockInterval", EM_OPT_DURATION, "200ms",
     "how often each receiver's records are sealed into a block"},
    {"streaming.batchInterval", EM_OPT_DURATION, "1s",
     "default batch interval (a job may set its own batch_interval)"},
    {"streaming.concurrentJobs", EM_OPT_INT, NULL,
     "worker threads running batches (default: number of cores)"},
    {"streaming.receiver.maxRate", EM_OPT_DOUBLE, "0",
     "records/s cap per receiver, 0 for none (a source's max_rate wins)"},
    {"streaming.receiver.writeAheadLog.enable", EM_OPT_BOOL, "false",
     "write blocks of sources that cannot replay (socket, file, generator) to a log first"},
    {"streaming.receiver.writeAheadLog.fsync", EM_OPT_STRING, "batch",
     "always (every read), batch (every block, before it joins a batch) or interval"},
    {"streaming.receiver.writeAheadLog.fsyncInterval", EM_OPT_DURATION, "1s",
     "how often the interval policy syncs"},
    {"streaming.backpressure.enabled", EM_OPT_BOOL, "false",
     "adapt each job's ingest rate to what it processes (PID estimator)"},
    {"streaming.backpressure.initialRate", EM_OPT_DOUBLE, NULL,
     "records/s per receiver at start and during recovery, until the estimator has a rate"},
    {"streaming.backpressure.pid.proportional", EM_OPT_DOUBLE, "1.0", "PID proportional gain"},
    {"streaming.backpressure.pid.integral", EM_OPT_DOUBLE, "0.2", "PID integral gain"},
    {"streaming.backpressure.pid.derived", EM_OPT_DOUBLE, "0.0", "PID derivative gain"},
    {"streaming.backpressure.pid.minRate", EM_OPT_DOUBLE, "100", "lowest rate the estimator sets"},
    {"streaming.maxWaitingBatches", EM_OPT_INT, "10",
     "a job's receivers pause while more of its batches than this wait to run"},
    {"memory.max", EM_OPT_SIZE, "256m",
     "every receiver pauses while received-but-unprocessed records hold more than this"},
    {"streaming.stopGracefullyOnShutdown", EM_OPT_BOOL, "true",
     "on SIGTERM/SIGINT, process every received record before exiting"},
    {"streaming.batch.maxRetries", EM_OPT_INT, "3",
     "retries of a failed batch before its job is reported blocked (it keeps retrying)"},
    {"streaming.batch.maxBackoff", EM_OPT_DURATION, "30s",
     "longest wait between two runs of a failed batch (the backoff doubles from 500ms)"},
    {"state.max", EM_OPT_SIZE, "256m",
     "default cap on a job's keyed state (job option state_max); over it the job stops"},
    {"state.snapshotInterval", EM_OPT_INT, "10",
     "batches between two full snapshots of an operator's state (deltas between)"},
    {"streaming.ui.retainedBatches", EM_OPT_INT, "1000",
     "completed batches kept in memory per job for the metrics"},
    {"checkpoint.dir", EM_OPT_STRING, "./checkpoint",
     "per-job folders: checkpoints, dead letters, write-ahead logs; one driver each (locked)"},
    {"ember.id", EM_OPT_STRING, NULL,
     "this driver's name among drivers sharing groups (default: host name + hash of checkpoint.dir)"},
    {"connector.pool.size", EM_OPT_INT, "4",
     "connections per endpoint in each sink pool, shared by every job"},
    {"log.level", EM_OPT_STRING, "info", "debug, info, warn or error"},
    {"log.file", EM_OPT_STRING, "", "log to this file instead of stderr"},
    {"log.rolling.strategy", EM_OPT_STRING, "off", "off, or time: start a new log file every interval"},
    {"log.rolling.time.interval", EM_OPT_STRING, "daily", "minutely, hourly or daily"},
    {"log.rolling.maxRetainedFiles", EM_OPT_INT, "10", "rolled log files kept"},
    {NULL, 0, NULL, NULL},
};

void em_config_init(em_config *c)
{
    memset(c, 0, sizeof *c);
    em_props_init(&c->props);
}

void em_config_free(em_config *c) { em_props_clear(&c->props); }

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* Checks one key and value against the table and stores it; what names
 * where it came from ("ember.conf:3", "--conf"). */
static int set_checked(em_config *c, const char *key, const char *value, const char *what,
                       char *err, size_t errlen)
{
    if (strncmp(key, "spark.", 6) == 0)
        key += 6;
    em_props one;
    em_props_init(&one);
    int rc = em_props_set(&one, key, value);
    if (rc == 0)
        rc = em_props_validate(&one, keys, NULL, what, err, errlen);
    em_props_clear(&one);
    if (rc == 0)
        rc = em_props_set(&c->props, key, value);
    return rc;
}

int em_config_load_file(em_config *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    char line[4096], what[1200];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *s = trim(line);
        if (!*s)
            continue;
        snprintf(what, sizeof what, "%s:%d", path, lineno);
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errlen, "%s: expected 'key = value', got '%s'", what, s);
            rc = -1;
            break;
        }
        *eq = '\0';
        rc = set_checked(c, trim(s), trim(eq + 1), what, err, errlen);
    }
    fclose(f);
    return rc;
}

int em_config_set(em_config *c, const char *key_value, char *err, size_t errlen)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", key_value);
    char *eq = strchr(buf, '=');
    if (!eq) {
        snprintf(err, errlen, "--conf %s: expected key=value", key_value);
        return -1;
    }
    *eq = '\0';
    return set_checked(c, trim(buf), trim(eq + 1), "--conf", err, errlen);
}

static int one_of(const char *v, const char *const *allowed)
{
    for (; *allowed; allowed++)
        if (strcmp(v, *allowed) == 0)
            return 1;
    return 0;
}

int em_config_finish(em_config *c, char *err, size_t errlen)
{
    if (em_props_validate(&c->props, keys, NULL, "configuration", err, errlen) != 0)
        return -1;
    const em_props *p = &c->props;
    c->block_interval_ms = em_props_ms(p, "streaming.blockInterval", 200);
    c->batch_interval_ms = em_props_ms(p, "streaming.batchInterval", 1000);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    c->concurrent_jobs = (int)em_props_int(p, "streaming.concurrentJobs", cores > 0 ? cores : 1);
    c->max_rate = em_props_double(p, "streaming.receiver.maxRate", 0);
    c->stop_gracefully = em_props_bool(p, "streaming.stopGracefullyOnShutdown", 1);
    c->retained_batches = (int)em_props_int(p, "streaming.ui.retainedBatches", 1000);
    c->pool_size = (int)em_props_int(p, "connector.pool.size", 4);
    c->batch_max_retries = (int)em_props_int(p, "streaming.batch.maxRetries", 3);
    c->batch_max_backoff_ms = em_props_ms(p, "streaming.batch.maxBackoff", 30000);
    c->state_max = em_props_size(p, "state.max", 256 << 20);
    c->state_snapshot_interval = (int)em_props_int(p, "state.snapshotInterval", 10);
    c->wal_enabled = em_props_bool(p, "streaming.receiver.writeAheadLog.enable", 0);
    snprintf(c->wal_fsync, sizeof c->wal_fsync, "%s",
             em_props_str(p, "streaming.receiver.writeAheadLog.fsync", "batch"));
    c->wal_fsync_interval_ms = em_props_ms(p, "streaming.receiver.writeAheadLog.fsyncInterval", 1000);
    c->backpressure = em_props_bool(p, "streaming.backpressure.enabled", 0);
    c->initial_rate = em_props_double(p, "streaming.backpressure.initialRate", 0);
    c->pid_p = em_props_double(p, "streaming.backpressure.pid.proportional", 1.0);
    c->pid_i = em_props_double(p, "streaming.backpressure.pid.integral", 0.2);
    c->pid_d = em_props_double(p, "streaming.backpressure.pid.derived", 0.0);
    c->pid_min_rate = em_props_double(p, "streaming.backpressure.pid.minRate", 100);
    c->max_waiting_batches = (int)em_props_int(p, "streaming.maxWaitingBatches", 10);
    c->memory_max = em_props_size(p, "memory.max", 256 << 20);
    snprintf(c->checkpoint_dir, sizeof c->checkpoint_dir, "%s", em_props_str(p, "checkpoint.dir", ""));
    const char *id = em_props_get(p, "ember.id");
    if (id && *id)
        snprintf(c->ember_id, sizeof c->ember_id, "%s", id);
    else if (c->checkpoint_dir[0])
        em_identity_default(c->checkpoint_dir, c->ember_id, sizeof c->ember_id);
    snprintf(c->log_level, sizeof c->log_level, "%s", em_props_str(p, "log.level", "info"));
    snprintf(c->log_file, sizeof c->log_file, "%s", em_props_str(p, "log.file", ""));
    snprintf(c->log_rolling_strategy, sizeof c->log_rolling_strategy, "%s",
             em_props_str(p, "log.rolling.strategy", "off"));
    snprintf(c->log_rolling_interval, sizeof c->log_rolling_interval, "%s",
             em_props_str(p, "log.rolling.time.interval", "daily"));
    c->log_rolling_max_retained = (int)em_props_int(p, "log.rolling.maxRetainedFiles", 10);

    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    static const char *const strategies[] = {"off", "time", NULL};
    static const char *const intervals[] = {"minutely", "hourly", "daily", NULL};
    static const char *const fsyncs[] = {"always", "batch", "interval", NULL};
    const char *bad = NULL, *hint = NULL, *value = NULL;
    if (c->block_interval_ms < 1)
        bad = "streaming.blockInterval", hint = "at least 1ms";
    else if (c->batch_interval_ms < c->block_interval_ms)
        bad = "streaming.batchInterval", hint = "at least streaming.blockInterval";
    else if (c->concurrent_jobs < 1 || c->concurrent_jobs > 256)
        bad = "streaming.concurrentJobs", hint = "between 1 and 256";
    else if (c->pool_size < 1 || c->pool_size > 1024)
        bad = "connector.pool.size", hint = "between 1 and 1024";
    else if (c->retained_batches < 1)
        bad = "streaming.ui.retainedBatches", hint = "at least 1";
    else if (!c->checkpoint_dir[0])
        bad = "checkpoint.dir", hint = "a folder";
    else if (em_identity_valid(c->ember_id) != 0)
        bad = "ember.id", hint = "1-64 letters, digits, '.', '_' or '-'";
    else if (!one_of(c->wal_fsync, fsyncs))
        bad = "streaming.receiver.writeAheadLog.fsync", hint = "always, batch or interval";
    else if (c->batch_max_retries < 0)
        bad = "streaming.batch.maxRetries", hint = "at least 0";
    else if (c->batch_max_backoff_ms < 1)
        bad = "streaming.batch.maxBackoff", hint = "at least 1ms";
    else if (c->state_snapshot_interval < 1)
        bad = "state.snapshotInterval", hint = "at least 1";
    else if (c->max_waiting_batches < 1)
        bad = "streaming.maxWaitingBatches", hint = "at least 1";
    else if (c->pid_min_rate <= 0)
        bad = "streaming.backpressure.pid.minRate", hint = "more than 0";
    else if (!one_of(c->log_level, levels))
        bad = "log.level", hint = "debug, info, warn or error";
    else if (!one_of(c->log_rolling_strategy, strategies))
        bad = "log.rolling.strategy", hint = "off or time";
    else if (!one_of(c->log_rolling_interval, intervals))
        bad = "log.rolling.time.interval", hint = "minutely, hourly or daily";
    else if (strcmp(c->log_rolling_strategy, "time") == 0 && !c->log_file[0])
        bad = "log.rolling.strategy", hint = "off unless log.file is set";
    if (bad) {
        value = em_props_get(p, bad);
        snprintf(err, errlen, "configuration: %s = '%s' must be %s", bad, value ? value : "",
                 hint);
        return -1;
    }
    return 0;
}

static const char *type_name(em_opt_type t)
{
    static const char *const names[] = {"string", "int", "number", "bool", "duration", "size"};
    return names[t];
}

void em_config_print_keys(void)
{
    for (const em_option *o = keys; o->name; o++)
        printf("  %-38s %-8s %-14s %s\n", o->name, type_name(o->type),
               o->def ? (*o->def ? o->def : "\"\"") : "(see help)", o->help);
}

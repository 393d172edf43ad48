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
    {"streaming.catchUp.enabled", EM_OPT_BOOL, "true",
     "a job behind its sources runs its next batch as soon as the last one ends, with what its "
     "receivers hold, instead of waiting for the batch interval (a job's catch_up option wins)"},
    {"streaming.catchUp.slice", EM_OPT_DURATION, "50ms",
     "while catching up, each receiver holds about twice this much of the job's processing time "
     "in records (the backlog stays at the source)"},
    {"streaming.maxWaitingBatches", EM_OPT_INT, "10",
     "a job's receivers pause while more of its batches than this wait to run"},
    {"memory.max", EM_OPT_SIZE, "256m",
     "every receiver pauses while received-but-unprocessed records hold more than this"},
    {"streaming.stopGracefullyOnShutdown", EM_OPT_BOOL, "true",
     "on SIGTERM/SIGINT, process every received record before exiting"},
    {"streaming.spareWorkers", EM_OPT_INT, "4",
     "extra workers started while every worker has been busy on one batch for 100 ms and another "
     "job's batch waits (a runaway job, an output blocked on a server); 0: never"},
    {"streaming.stopTimeout", EM_OPT_DURATION, "60s",
     "a graceful stop exits after this even if a batch is still running (its records stay unacked)"},
    {"streaming.job.memory", EM_OPT_SIZE, "1g",
     "cap on each job's Lua state (a job's memory option wins), 0 for none"},
    {"streaming.job.batchTimeout", EM_OPT_DURATION, NULL,
     "a batch running longer is aborted and its job stopped (default: 10 batch intervals, at "
     "least 30s; a job's batch_timeout wins), 0 for none"},
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
    {"log.batchSummaryInterval", EM_OPT_DURATION, "10s",
     "one info line per job this often with its batches' figures; 0 for none"},
    {"ui.enabled", EM_OPT_BOOL, "true", "serve the HTTP API, /metrics and the web UI"},
    {"ui.host", EM_OPT_STRING, "127.0.0.1", "address the HTTP server listens on"},
    {"ui.port", EM_OPT_INT, "4040", "port of the HTTP server (0: any free port, logged)"},
    {"ui.token", EM_OPT_STRING, "",
     "a POST needs 'Authorization: Bearer <token>' (required off loopback)"},
    {"ui.health.receiverFailingFor", EM_OPT_DURATION, "30s",
     "/readyz fails while a receiver has been failing this long"},
    {"ui.health.lateBatches", EM_OPT_INT, "10",
     "/readyz fails after this many batches in a row took longer than their interval"},
    {"run.pidFile", EM_OPT_STRING, NULL, "the PID file ember run writes (default: <checkpoint.dir>/ember.pid)"},
    {"run.supervise", EM_OPT_BOOL, "false",
     "start the driver again after a crash, and restart a job stopped by on_error = \"fail\" "
     "from its file (--supervise; read at start)"},
    {NULL, 0, NULL, NULL},
};

/* Spark keys with a counterpart under another name here. */
static const struct {
    const char *spark, *ember;
} renamed[] = {
    /* There are no executors: the driver is the process whose log rolls. */
    {"executor.logs.rolling.strategy", "log.rolling.strategy"},
    {"executor.logs.rolling.time.interval", "log.rolling.time.interval"},
    {"executor.logs.rolling.maxRetainedFiles", "log.rolling.maxRetainedFiles"},
    {"executor.memory", "memory.max"},
    {"cores.max", "streaming.concurrentJobs"},
    {"driver.supervise", "run.supervise"},
    {NULL, NULL},
};

/* Spark keys that mean nothing here, and why: accepted with an info line. */
static const struct {
    const char *key, *why;
} meaningless[] = {
    {"cleaner.ttl", "ember bounds memory by construction: a block is freed when the last batch "
     "or window holding it is done, so there is no metadata for a TTL to clean"},
    {"streaming.unpersist", "blocks are freed as soon as their last batch is done"},
    {"streaming.receiver.blockStoreTimeout", "blocks live in the driver's memory, not a block "
     "store"},
    {"serializer", "records stay bytes in the driver's memory; nothing is serialized between "
     "processes"},
    {"executor.instances", "one driver process runs every job; streaming.concurrentJobs sets "
     "its worker threads"},
    {"driver.memory", "memory.max bounds what receivers hold"},
    {NULL, NULL},
};

static const char *const live_keys[] = {
    "log.level", "log.batchSummaryInterval", "streaming.batch.maxRetries",
    "ui.health.receiverFailingFor", "ui.health.lateBatches", "ui.token", "run.supervise",
    "streaming.job.memory", "streaming.job.batchTimeout",
    NULL,
};

int em_config_live_key(const char *key)
{
    for (const char *const *k = live_keys; *k; k++)
        if (strcmp(*k, key) == 0)
            return 1;
    return 0;
}

void em_config_init(em_config *c)
{
    memset(c, 0, sizeof *c);
    em_props_init(&c->props);
    em_props_init(&c->origin);
}

void em_config_free(em_config *c)
{
    em_props_clear(&c->props);
    em_props_clear(&c->origin);
}

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
    int spark = strncmp(key, "spark.", 6) == 0;
    if (spark)
        key += 6;
    for (int i = 0; meaningless[i].key; i++)
        if (strcmp(key, meaningless[i].key) == 0) {
            em_log(EM_LOG_INFO, NULL, "%s: %s%s = %s accepted and ignored: %s", what,
                   spark ? "spark." : "", key, value, meaningless[i].why);
            return 0;
        }
    for (int i = 0; renamed[i].spark; i++)
        if (strcmp(key, renamed[i].spark) == 0) {
            em_log(EM_LOG_INFO, NULL, "%s: %s%s is %s here", what, spark ? "spark." : "", key,
                   renamed[i].ember);
            key = renamed[i].ember;
            break;
        }
    em_props one;
    em_props_init(&one);
    int rc = em_props_set(&one, key, value);
    if (rc == 0)
        rc = em_props_validate(&one, keys, NULL, what, err, errlen);
    em_props_clear(&one);
    if (rc == 0)
        rc = em_props_set(&c->props, key, value);
    if (rc == 0)
        rc = em_props_set(&c->origin, key, what);
    return rc;
}

int em_config_load_file(em_config *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL, what[1200];
    size_t cap = 0;
    ssize_t got;
    int lineno = 0, rc = 0;
    while (rc == 0 && (got = getline(&line, &cap, f)) >= 0) {
        lineno++;
        snprintf(what, sizeof what, "%s:%d", path, lineno);
        if (memchr(line, '\0', (size_t)got)) { /* a binary file, or a line cut short */
            snprintf(err, errlen, "%s: a NUL byte; the configuration is text", what);
            rc = -1;
            break;
        }
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errlen, "%s: expected 'key = value', got '%s'", what, s);
            rc = -1;
            break;
        }
        *eq = '\0';
        rc = set_checked(c, trim(s), trim(eq + 1), what, err, errlen);
    }
    free(line);
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
    c->catch_up = em_props_bool(p, "streaming.catchUp.enabled", 1);
    c->catch_up_slice_ms = em_props_ms(p, "streaming.catchUp.slice", 50);
    c->stop_gracefully = em_props_bool(p, "streaming.stopGracefullyOnShutdown", 1);
    c->spare_workers = (int)em_props_int(p, "streaming.spareWorkers", 4);
    c->stop_timeout_ms = em_props_ms(p, "streaming.stopTimeout", 60000);
    c->job_memory = em_props_size(p, "streaming.job.memory", (int64_t)1 << 30);
    c->job_batch_timeout_ms = em_props_get(p, "streaming.job.batchTimeout")
                                  ? em_props_ms(p, "streaming.job.batchTimeout", 0) : -1;
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
    c->log_batch_summary_ms = em_props_ms(p, "log.batchSummaryInterval", 10000);
    c->ui_enabled = em_props_bool(p, "ui.enabled", 1);
    snprintf(c->ui_host, sizeof c->ui_host, "%s", em_props_str(p, "ui.host", "127.0.0.1"));
    c->ui_port = (int)em_props_int(p, "ui.port", 4040);
    snprintf(c->ui_token, sizeof c->ui_token, "%s", em_props_str(p, "ui.token", ""));
    c->health_receiver_failing_ms = em_props_ms(p, "ui.health.receiverFailingFor", 30000);
    c->health_late_batches = (int)em_props_int(p, "ui.health.lateBatches", 10);
    const char *pid = em_props_str(p, "run.pidFile", NULL);
    if (pid)
        snprintf(c->pid_file, sizeof c->pid_file, "%s", pid);
    else
        snprintf(c->pid_file, sizeof c->pid_file, "%.1000s/ember.pid", c->checkpoint_dir);
    c->supervise = em_props_bool(p, "run.supervise", 0);

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
    else if (c->spare_workers > 256)
        bad = "streaming.spareWorkers", hint = "between 0 and 256";
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
    else if (c->ui_port < 0 || c->ui_port > 65535)
        bad = "ui.port", hint = "between 0 and 65535";
    else if (c->health_late_batches < 1)
        bad = "ui.health.lateBatches", hint = "at least 1";
    else if (!c->pid_file[0])
        bad = "run.pidFile", hint = "a file name";
    if (!bad && strcmp(c->log_rolling_strategy, "time") == 0 && !c->log_file[0])
        em_log(EM_LOG_INFO, NULL, "log.rolling.strategy = time: the log goes to stderr, where "
               "nothing rolls; set log.file to write rolling files");
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

/* The keys with their effective values, sources and, for unset keys, their
 * defaults: what `ember config` prints. */
void em_config_print_effective(const em_config *c)
{
    for (const em_option *o = keys; o->name; o++) {
        const char *v = em_props_get(&c->props, o->name);
        const char *from = em_props_get(&c->origin, o->name);
        if (!v && strcmp(o->name, "streaming.concurrentJobs") == 0) {
            printf("%-48s %-24d (default: number of cores)\n", o->name, c->concurrent_jobs);
            continue;
        }
        if (!v && strcmp(o->name, "run.pidFile") == 0) {
            printf("%-48s %-24s (default: in checkpoint.dir)\n", o->name, c->pid_file);
            continue;
        }
        char masked[300];
        em_mask_secret(v ? v : "", masked, sizeof masked);
        if (strcmp(o->name, "ui.token") == 0 && *masked)
            snprintf(masked, sizeof masked, "***");
        printf("%-48s %-24s (%s)\n", o->name, *masked ? masked : "\"\"",
               from ? from : v ? "default" : "unset");
    }
}

void em_config_diff(const em_config *a, const em_config *b,
                    void (*fn)(const char *key, const char *old, const char *now, void *arg),
                    void *arg)
{
    for (const em_option *o = keys; o->name; o++) {
        const char *x = em_props_get(&a->props, o->name), *y = em_props_get(&b->props, o->name);
        if ((x == NULL) != (y == NULL) || (x && strcmp(x, y) != 0))
            fn(o->name, x ? x : "(unset)", y ? y : "(unset)", arg);
    }
}

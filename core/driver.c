/* driver.c — see driver.h. */
#include "driver.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "block_pool.h"
#include "clock.h"
#include "job.h"
#include "log.h"
#include "read_ahead.h"
#include "scheduler.h"
#include "snapshot.h"

typedef struct broken_file { /* a script that failed to load, until it changes */
    char *path;
    char *script;
    char *error; /* why, for the API */
    int disabled;
} broken_file;

struct em_driver {
    const em_config *cfg;
    em_runtime rt; /* handed to every job */
    char jobs_dir[1024];
    pthread_mutex_t lock; /* guards jobs[] and every job's state/version/next */
    em_job **jobs;
    size_t njobs, capjobs;
    broken_file *broken;
    size_t nbroken;
    em_scheduler *sched;
    em_clock *clock;
    em_snapshot_slot *snap; /* what the HTTP API reads */
    int64_t published_ms, start_ms;
    int stopping;
    char last_error[512]; /* under lock, for the API */
    int64_t last_error_ms;
};

static void batch_ended(em_job *j, void *arg);
static void receiver_ready(em_receiver *r, void *arg);

/* Logs a driver-level error and keeps it for the API. */
static void driver_error(em_driver *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void driver_error(em_driver *d, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    em_log(EM_LOG_ERROR, NULL, "%s", msg);
    pthread_mutex_lock(&d->lock);
    snprintf(d->last_error, sizeof d->last_error, "%s", msg);
    d->last_error_ms = em_clock_now_ms();
    pthread_mutex_unlock(&d->lock);
}

em_driver *em_driver_create(const em_config *cfg, const char *jobs_dir)
{
    em_driver *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->cfg = cfg;
    d->rt.cfg = cfg;
    d->rt.batch_ended = batch_ended;
    d->rt.batch_ended_arg = d;
    snprintf(d->jobs_dir, sizeof d->jobs_dir, "%s", jobs_dir);
    size_t n = strlen(d->jobs_dir);
    while (n > 1 && d->jobs_dir[n - 1] == '/') /* "jobs/" names files "jobs/x.lua" */
        d->jobs_dir[--n] = '\0';
    pthread_mutex_init(&d->lock, NULL);
    d->snap = em_snapshot_slot_create();
    d->start_ms = em_clock_now_ms();
    if (!d->snap) {
        free(d);
        return NULL;
    }
    return d;
}

static int64_t next_boundary(int64_t now, int64_t interval) { return (now / interval + 1) * interval; }

/* Starts a version's receivers; with backpressure, at the initial rate
 * until the estimator has one; with the unmeasured read-ahead bound. */
static void start_version(em_driver *d, em_version *v)
{
    for (size_t i = 0; d->cfg->backpressure && d->cfg->initial_rate > 0 && i < v->nreceivers; i++)
        em_receiver_set_rate(v->receivers[i], d->cfg->initial_rate);
    em_read_ahead_start(d->cfg, v);
    for (size_t i = 0; i < v->nreceivers; i++)
        em_receiver_on_ready(v->receivers[i], receiver_ready, d);
    em_version_start(v);
}

/* Records a recovery batch may hold: the rate a restart is allowed
 * (initialRate, else the sources' max_rate) times the interval; 0: any. */
static uint64_t recovery_batch_limit(em_driver *d, em_job *j)
{
    double rate = d->cfg->backpressure ? d->cfg->initial_rate : 0;
    for (size_t i = 0; rate <= 0 && i < j->version->nreceivers; i++)
        rate += em_receiver_max_rate(j->version->receivers[i]);
    return rate > 0 ? (uint64_t)(rate * (double)j->version->batch_interval_ms / 1000.0) : 0;
}

/* Holds a job's receivers while too many of its batches wait
 * (streaming.maxWaitingBatches), so a slow job pushes back on its sources
 * instead of growing the queue, and while records recovered from the
 * write-ahead log are still being cut, so new input cannot pile up into
 * one large batch behind them. */
static void hold_receivers(em_driver *d, em_job *j)
{
    int waiting = (int)em_scheduler_pending(d->sched, j);
    int too_many = waiting > d->cfg->max_waiting_batches;
    int hold = too_many || j->nrecovered > 0 || j->paused;
    if (hold == j->held)
        return;
    j->held = hold;
    for (size_t i = 0; i < j->version->nreceivers; i++)
        em_receiver_hold(j->version->receivers[i], hold);
    if (j->paused) /* the pause was logged by the command */
        return;
    /* A catch-up pauses and resumes once a batch: info once a minute, the
     * rest at debug (the API and /metrics show the state all along). */
    int64_t now = em_clock_mono_ms();
    em_log_level level = !j->held_logged_ms || now - j->held_logged_ms >= 60000 ? EM_LOG_INFO
                                                                                 : EM_LOG_DEBUG;
    if (level == EM_LOG_INFO && !hold)
        j->held_logged_ms = now;
    if (too_many || !hold)
        em_log(level, j->name, hold
               ? "%d batches waiting (streaming.maxWaitingBatches = %d): receivers paused"
               : "%d batches waiting (streaming.maxWaitingBatches = %d): receivers resumed",
               waiting, d->cfg->max_waiting_batches);
}

static void submit(em_driver *d, em_batch *b)
{
    if (b)
        em_scheduler_submit(d->sched, &b->task);
}

/* A worker saw on_error = fail fire: stop the job's receivers and leave
 * what they hold unacknowledged. Driver lock held. */
static void settle_failure(em_job *j, int64_t now)
{
    if (j->state != EM_JOB_RUNNING || !atomic_load(&j->failed))
        return;
    em_job_stop_receivers(j);
    em_batch *b = em_batch_cut(j, now);
    if (b)
        em_batch_drop(b);
    em_version_unref(j->next); /* a reload waiting for a boundary: load it again instead */
    j->next = NULL;
    j->state = EM_JOB_FAILED;
}

/* Builds and swaps in the snapshot the HTTP API reads. Driver lock held. */
static void publish(em_driver *d)
{
    em_snapshot *s = em_snapshot_build(d->jobs, d->njobs, d->sched, d->nbroken);
    if (!s)
        return;
    s->start_ms = d->start_ms;
    s->block_interval_ms = d->cfg->block_interval_ms;
    s->batch_interval_ms = d->cfg->batch_interval_ms;
    s->workers = d->cfg->concurrent_jobs;
    s->max_waiting_batches = d->cfg->max_waiting_batches;
    s->memory_max = (size_t)d->cfg->memory_max;
    for (size_t i = 0; i < d->nbroken; i++) {
        snprintf(s->broken[i].path, sizeof s->broken[i].path, "%s", d->broken[i].path);
        snprintf(s->broken[i].error, sizeof s->broken[i].error, "%s",
                 d->broken[i].error ? d->broken[i].error : "");
        s->broken[i].disabled = d->broken[i].disabled;
    }
    s->state = d->stopping ? "stopping" : "running";
    snprintf(s->last_error, sizeof s->last_error, "%s", d->last_error);
    s->last_error_ms = d->last_error_ms;
    d->published_ms = s->taken_ms;
    em_snapshot_slot_put(d->snap, s);
}

/* The end of one of j's batches, on its worker: a job catching up cuts
 * its next batch now instead of at the next tick. */
static void batch_ended(em_job *j, void *arg)
{
    em_driver *d = arg;
    pthread_mutex_lock(&d->lock);
    int due = em_catch_up_due(d->cfg, d->sched, j, 1);
    if (due) {
        int64_t now = em_clock_now_ms();
        em_job_seal(j, now);
        submit(d, em_batch_cut(j, em_job_cut_time(j, now)));
    }
    pthread_mutex_unlock(&d->lock);
    if (due)
        em_scheduler_poke(d->sched);
}

/* A receiver has a batch's worth ready, on its own thread: the job it
 * feeds may cut a catch-up batch now rather than at the next tick. The
 * driver's lock is only tried: it is held while receivers are stopped
 * (joined), and the next poll tells again. */
static void receiver_ready(em_receiver *r, void *arg)
{
    em_driver *d = arg;
    if (pthread_mutex_trylock(&d->lock) != 0) {
        em_receiver_tell_again(r);
        return;
    }
    int due = 0;
    for (size_t i = 0; i < d->njobs && !due; i++) {
        em_job *j = d->jobs[i];
        for (size_t k = 0; j->version && k < j->version->nreceivers; k++)
            if (j->version->receivers[k] == r) {
                if ((due = em_catch_up_due(d->cfg, d->sched, j, 0))) {
                    int64_t now = em_clock_now_ms();
                    em_job_seal(j, now);
                    submit(d, em_batch_cut(j, em_job_cut_time(j, now)));
                }
                break;
            }
    }
    pthread_mutex_unlock(&d->lock);
    if (due)
        em_scheduler_poke(d->sched);
}

/* The clock's work, every blockInterval. */
static void tick(int64_t now, void *arg)
{
    em_driver *d = arg;
    em_block_pool_limit((size_t)d->cfg->memory_max);
    em_block_pool_trim(0); /* blocks no receiver took again go back to malloc */
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < d->njobs; i++) {
        em_job *j = d->jobs[i];
        settle_failure(j, now);
        if (j->state == EM_JOB_FAILED || j->state == EM_JOB_STOPPED)
            continue;
        if (j->state == EM_JOB_REMOVING || j->state == EM_JOB_STOPPING) {
            em_job_stop_receivers(j); /* seals their last records */
            submit(d, em_batch_cut(j, em_job_cut_time(j, now)));
            if (j->state == EM_JOB_STOPPING)
                em_log(EM_LOG_INFO, j->name, "stopped through the API; its last batch is queued");
            else
                em_log(EM_LOG_INFO, j->name, "stopped: %s was removed", j->path);
            j->state = j->state == EM_JOB_STOPPING ? EM_JOB_STOPPED : EM_JOB_RETIRED;
            continue;
        }
        if (j->state != EM_JOB_RUNNING)
            continue;
        em_job_seal(j, now);
        hold_receivers(d, j);
        em_read_ahead_bound(d->cfg, j);
        if (now < j->next_batch_ms) {
            if (em_catch_up_due(d->cfg, d->sched, j, 0))
                submit(d, em_batch_cut(j, em_job_cut_time(j, now)));
            continue;
        }
        if (atomic_load(&j->blocked) && j->held) {
            /* A batch that keeps failing holds the job: its receivers are
             * paused, and cutting more (empty) batches behind it would only
             * grow the queue for as long as the outage lasts. */
            j->next_batch_ms = next_boundary(now, j->version->batch_interval_ms);
            continue;
        }
        if (j->nrecovered) {
            /* Recovered records first, throttled: new input waits its turn. */
            submit(d, em_batch_cut_recovered(j, em_job_cut_time(j, j->next_batch_ms), recovery_batch_limit(d, j)));
            if (!j->nrecovered)
                em_log(EM_LOG_INFO, j->name, "write-ahead log recovery handed over; new input next");
        } else if (j->next) {
            em_job_stop_unmatched(j);
            submit(d, em_batch_cut(j, em_job_cut_time(j, j->next_batch_ms)));
            em_job_swap(j);
        } else {
            submit(d, em_batch_cut(j, em_job_cut_time(j, j->next_batch_ms)));
        }
        j->next_batch_ms = next_boundary(now, j->version->batch_interval_ms);
    }
    if (now - d->published_ms >= EM_SNAPSHOT_PERIOD_MS)
        publish(d);
    pthread_mutex_unlock(&d->lock);
    em_scheduler_poke(d->sched);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The *.lua files of the folder, sorted, as "dir/name". */
static char **scan(const char *dir, size_t *count)
{
    DIR *dp = opendir(dir);
    *count = 0;
    if (!dp)
        return NULL;
    char **names = NULL;
    size_t cap = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        if (e->d_name[0] == '.' || !ends_with(e->d_name, ".lua"))
            continue;
        if (*count == cap) {
            cap = cap ? cap * 2 : 16;
            char **n = realloc(names, cap * sizeof *n);
            if (!n)
                break;
            names = n;
        }
        if (asprintf(&names[*count], "%s/%s", dir, e->d_name) >= 0)
            (*count)++;
    }
    closedir(dp);
    if (names)
        qsort(names, *count, sizeof *names, cmp_str);
    return names;
}

static em_job *find_job_by_path(em_driver *d, const char *path)
{
    for (size_t i = 0; i < d->njobs; i++)
        if (d->jobs[i]->state != EM_JOB_RETIRED && strcmp(d->jobs[i]->path, path) == 0)
            return d->jobs[i];
    return NULL;
}

static em_job *find_job_by_name(em_driver *d, const char *name)
{
    for (size_t i = 0; i < d->njobs; i++)
        if (d->jobs[i]->state != EM_JOB_RETIRED && strcmp(d->jobs[i]->name, name) == 0)
            return d->jobs[i];
    return NULL;
}

static broken_file *find_broken(em_driver *d, const char *path)
{
    for (size_t i = 0; i < d->nbroken; i++)
        if (strcmp(d->broken[i].path, path) == 0)
            return &d->broken[i];
    return NULL;
}

static void forget_broken(em_driver *d, const char *path)
{
    broken_file *b = find_broken(d, path);
    if (!b)
        return;
    free(b->path);
    free(b->script);
    free(b->error);
    *b = d->broken[--d->nbroken];
}

static void remember_broken(em_driver *d, const char *path, const char *script,
                            const char *error, int disabled)
{
    pthread_mutex_lock(&d->lock); /* the clock publishes the list */
    forget_broken(d, path);
    broken_file *nb = realloc(d->broken, (d->nbroken + 1) * sizeof *nb);
    if (nb) {
        d->broken = nb;
        d->broken[d->nbroken].path = strdup(path);
        d->broken[d->nbroken].script = strdup(script);
        d->broken[d->nbroken].error = strdup(error);
        d->broken[d->nbroken].disabled = disabled;
        d->nbroken++;
    }
    pthread_mutex_unlock(&d->lock);
}

static em_version *load_version(em_driver *d, const char *path, int64_t reload_ms,
                                const char *script)
{
    char err[2048];
    int disabled;
    em_version *v = em_version_load(path, d->cfg, &disabled, err, sizeof err);
    if (!v) {
        if (disabled)
            em_log(EM_LOG_INFO, NULL, "%s: not started: %s", path, err);
        else
            em_log(EM_LOG_ERROR, NULL, "%s", err);
        remember_broken(d, path, script, err, disabled);
        return NULL;
    }
    v->reload_ms = reload_ms;
    pthread_mutex_lock(&d->lock);
    forget_broken(d, path);
    pthread_mutex_unlock(&d->lock);
    return v;
}

static void add_job(em_driver *d, const char *path, char *script, em_version *v)
{
    pthread_mutex_lock(&d->lock); /* the clock thread writes job states */
    em_job *other = find_job_by_name(d, v->desc->name);
    pthread_mutex_unlock(&d->lock);
    if (other) {
        char why[2200];
        snprintf(why, sizeof why, "%s: job name '%s' is already used by %s; not started", path,
                 v->desc->name, other->path);
        em_log(EM_LOG_ERROR, NULL, "%s", why);
        remember_broken(d, path, script, why, 0);
        free(script);
        em_version_unref(v);
        return;
    }
    em_job *j = em_job_create(path, script, v, &d->rt);
    if (d->njobs == d->capjobs) {
        size_t cap = d->capjobs ? d->capjobs * 2 : 8;
        em_job **jobs = realloc(d->jobs, cap * sizeof *jobs);
        if (!jobs || !j) {
            em_log(EM_LOG_ERROR, NULL, "%s: out of memory", path);
            em_job_free(j);
            return;
        }
        d->jobs = jobs;
        d->capjobs = cap;
    }
    j->next_batch_ms = next_boundary(em_clock_now_ms(), v->batch_interval_ms);
    em_pid_init(&j->pid, v->batch_interval_ms, d->cfg->pid_p, d->cfg->pid_i, d->cfg->pid_d,
                d->cfg->pid_min_rate);
    em_job_recover(j);
    if (j->nrecovered) { /* new input waits until the recovered records are cut */
        j->held = 1;
        for (size_t i = 0; i < v->nreceivers; i++)
            em_receiver_hold(v->receivers[i], 1);
    }
    start_version(d, v);
    pthread_mutex_lock(&d->lock);
    d->jobs[d->njobs++] = j;
    pthread_mutex_unlock(&d->lock);
    em_log(EM_LOG_INFO, j->name, "started from %s: %zu sources, %zu outputs, batch interval %lld ms",
           path, v->desc->nsources, v->desc->noutputs, (long long)v->batch_interval_ms);
}

/* A changed file: load it beside the running version; on success queue the
 * swap (or restart a job that had failed). */
static void change_job(em_driver *d, em_job *j, char *script, int64_t reload_ms)
{
    em_version *v = load_version(d, j->path, reload_ms, script);
    if (!v) {
        em_log(EM_LOG_WARN, j->name, "reload failed; the running version keeps running");
        free(script);
        return;
    }
    char why[2048];
    if (strcmp(v->desc->name, j->name) == 0 && v->desc->stateful &&
        em_luahost_check_migrate(v->host, j->cp.batch_id, j->cp.state_version, why,
                                 sizeof why) != 0) {
        /* A migrate that raises on the state as it is now would stop the
         * job at its first batch: keep the running version instead. */
        em_log(EM_LOG_ERROR, j->name, "%s", why);
        em_log(EM_LOG_WARN, j->name, "reload failed; the running version keeps running");
        remember_broken(d, j->path, script, why, 0);
        free(script);
        em_version_unref(v);
        return;
    }
    if (strcmp(v->desc->name, j->name) != 0) {
        /* A rename is a new job: stop the old one, start the new one. */
        pthread_mutex_lock(&d->lock);
        j->state = j->state == EM_JOB_FAILED || j->state == EM_JOB_STOPPED ? EM_JOB_RETIRED
                                                                            : EM_JOB_REMOVING;
        pthread_mutex_unlock(&d->lock);
        add_job(d, j->path, script, v);
        return;
    }
    pthread_mutex_lock(&d->lock);
    free(j->script);
    j->script = script;
    settle_failure(j, em_clock_now_ms()); /* failed since the last tick: restart, not swap */
    if (j->state == EM_JOB_FAILED) {
        em_version_unref(j->version);
        j->version = v;
        atomic_store(&j->failed, 0);
        j->state = EM_JOB_RUNNING;
        j->next_batch_ms = next_boundary(em_clock_now_ms(), v->batch_interval_ms);
        start_version(d, v);
        em_log(EM_LOG_INFO, j->name, "restarted from its changed file");
    } else if (j->state == EM_JOB_STOPPED || j->state == EM_JOB_STOPPING) {
        /* Stopped through the API: the new version waits for a start. */
        em_version_unref(j->next);
        j->next = v;
        em_log(EM_LOG_INFO, j->name, "new version loaded; the job stays stopped until started");
    } else {
        em_version_unref(j->next); /* a swap still pending is superseded */
        j->next = v;
        em_log(EM_LOG_INFO, j->name, "new version loaded; it takes over at the next batch");
    }
    pthread_mutex_unlock(&d->lock);
}

/* Frees retired jobs whose last batch has run. Main thread only. */
static void reap(em_driver *d)
{
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < d->njobs;) {
        em_job *j = d->jobs[i];
        if (j->state == EM_JOB_RETIRED && em_scheduler_pending(d->sched, j) == 0) {
            d->jobs[i] = d->jobs[--d->njobs];
            em_job_free(j);
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&d->lock);
}

void em_driver_reload(em_driver *d)
{
    int64_t started = em_clock_now_ms();
    size_t nfiles;
    errno = 0;
    char **files = scan(d->jobs_dir, &nfiles);
    if (!files && errno) {
        driver_error(d, "cannot read the jobs folder %s: %s", d->jobs_dir,
               strerror(errno));
        return;
    }
    reap(d);
    /* Removed files. */
    for (size_t i = 0; i < d->njobs; i++) {
        em_job *j = d->jobs[i];
        int present = 0;
        for (size_t k = 0; k < nfiles && !present; k++)
            present = strcmp(files[k], j->path) == 0;
        if (present)
            continue;
        pthread_mutex_lock(&d->lock);
        if (j->state == EM_JOB_RUNNING || j->state == EM_JOB_STOPPING)
            j->state = EM_JOB_REMOVING;
        else if (j->state == EM_JOB_FAILED || j->state == EM_JOB_STOPPED)
            j->state = EM_JOB_RETIRED;
        pthread_mutex_unlock(&d->lock);
    }
    for (size_t i = 0; i < d->nbroken;) {
        int present = 0;
        for (size_t k = 0; k < nfiles && !present; k++)
            present = strcmp(files[k], d->broken[i].path) == 0;
        if (present) {
            i++;
        } else {
            pthread_mutex_lock(&d->lock);
            forget_broken(d, d->broken[i].path);
            pthread_mutex_unlock(&d->lock);
        }
    }
    /* New and changed files. */
    for (size_t k = 0; k < nfiles; k++) {
        char why[1400];
        char *script = em_read_file(files[k], EM_JOB_FILE_MAX, why, sizeof why);
        if (!script) { /* that file alone: the others load as usual */
            em_log(EM_LOG_ERROR, NULL, "%s", why);
            continue;
        }
        pthread_mutex_lock(&d->lock); /* the clock thread writes job states */
        em_job *j = find_job_by_path(d, files[k]);
        pthread_mutex_unlock(&d->lock);
        broken_file *b = find_broken(d, files[k]);
        if ((j && strcmp(j->script, script) == 0) || (!j && b && strcmp(b->script, script) == 0)) {
            free(script); /* unchanged: not touched */
        } else if (j) {
            change_job(d, j, script, started);
        } else {
            em_version *v = load_version(d, files[k], started, script);
            if (v)
                add_job(d, files[k], script, v);
            else
                free(script);
        }
    }
    for (size_t k = 0; k < nfiles; k++)
        free(files[k]);
    free(files);
    pthread_mutex_lock(&d->lock);
    publish(d);
    pthread_mutex_unlock(&d->lock);
}

int em_driver_start(em_driver *d)
{
    DIR *dp = opendir(d->jobs_dir);
    if (!dp) {
        em_log(EM_LOG_ERROR, NULL, "cannot read the jobs folder %s: %s", d->jobs_dir,
               strerror(errno));
        return -1;
    }
    closedir(dp);
    em_clock_set_block_interval_ms(d->cfg->block_interval_ms);
    d->sched = em_scheduler_create(d->cfg->concurrent_jobs, d->cfg->spare_workers);
    if (!d->sched)
        return -1;
    d->rt.sched = d->sched;
    em_driver_reload(d);
    /* Versions loaded at start-up are not reloads. */
    for (size_t i = 0; i < d->njobs; i++)
        d->jobs[i]->version->reload_ms = 0;
    d->clock = em_clock_start(d->cfg->block_interval_ms, tick, d);
    em_log(EM_LOG_INFO, NULL, "running %zu jobs from %s with %d workers, block interval %lld ms",
           d->njobs, d->jobs_dir, d->cfg->concurrent_jobs, (long long)d->cfg->block_interval_ms);
    return d->clock ? 0 : -1;
}

/* Names the jobs whose batches still run when streaming.stopTimeout has
 * passed. */
static void log_stuck(em_driver *d)
{
    const void *owners[64];
    int n = em_scheduler_running(d->sched, owners, 64);
    for (int i = 0; i < n; i++) {
        const em_job *j = owners[i];
        em_log(EM_LOG_ERROR, j->name, "still running a batch after streaming.stopTimeout (%lld ms): "
               "exiting anyway; its records stay unacknowledged", (long long)d->cfg->stop_timeout_ms);
    }
}

int em_driver_stop(em_driver *d, int graceful)
{
    em_clock_stop(d->clock);
    d->clock = NULL;
    pthread_mutex_lock(&d->lock);
    d->stopping = 1;
    publish(d); /* the last snapshot: the API says the driver is stopping */
    pthread_mutex_unlock(&d->lock);
    em_log(EM_LOG_INFO, NULL, "stopping: receivers stop, %s", graceful
           ? "every received record is processed first" : "unprocessed records are not acknowledged");
    int64_t now = em_clock_now_ms();
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < d->njobs; i++) {
        em_job *j = d->jobs[i];
        if (j->state != EM_JOB_RUNNING && j->state != EM_JOB_REMOVING &&
            j->state != EM_JOB_STOPPING)
            continue;
        em_job_stop_receivers(j);
        if (graceful && j->nrecovered) /* recovered records are older than the rest */
            submit(d, em_batch_cut_recovered(j, em_job_cut_time(j, now - 1), 0));
        em_batch *b = em_batch_cut(j, em_job_cut_time(j, now));
        if (b && graceful)
            submit(d, b);
        else if (b)
            em_batch_drop(b);
        j->state = EM_JOB_RETIRED;
    }
    pthread_mutex_unlock(&d->lock);
    if (graceful && d->cfg->stop_timeout_ms > 0 &&
        em_scheduler_wait_idle_for(d->sched, d->cfg->stop_timeout_ms) != 0) {
        log_stuck(d);
        return -1;
    }
    if (graceful && d->cfg->stop_timeout_ms <= 0)
        em_scheduler_wait_idle(d->sched);
    em_log(EM_LOG_INFO, NULL, "stopped");
    return 0;
}

void em_driver_free(em_driver *d)
{
    if (!d)
        return;
    em_clock_stop(d->clock);
    em_scheduler_free(d->sched);
    for (size_t i = 0; i < d->njobs; i++)
        em_job_free(d->jobs[i]);
    free(d->jobs);
    while (d->nbroken)
        forget_broken(d, d->broken[0].path);
    free(d->broken);
    em_snapshot_slot_free(d->snap);
    pthread_mutex_destroy(&d->lock);
    free(d);
    em_block_pool_trim(1);
}

em_snapshot *em_driver_snapshot(em_driver *d) { return em_snapshot_slot_get(d->snap); }

/* A job taking commands: not retired, not being removed. */
static em_job *find_controllable(em_driver *d, const char *name)
{
    em_job *j = find_job_by_name(d, name);
    return j && j->state != EM_JOB_REMOVING ? j : NULL;
}

/* Starts a stopped or failed job again from its file's latest text: the
 * version a reload loaded meanwhile, else a fresh load. Driver lock held;
 * loading a script runs outside it. */
static int start_job(em_driver *d, em_job *j, char *msg, size_t len)
{
    if (j->state == EM_JOB_RUNNING || j->state == EM_JOB_STOPPING) {
        snprintf(msg, len, "job '%s' is %s", j->name,
                 j->state == EM_JOB_RUNNING ? "already running" : "stopping");
        return 1;
    }
    em_version *v = j->next;
    j->next = NULL;
    if (!v) {
        pthread_mutex_unlock(&d->lock);
        char why[1400];
        char *script = em_read_file(j->path, EM_JOB_FILE_MAX, why, sizeof why);
        if (!script)
            em_log(EM_LOG_ERROR, j->name, "%s", why);
        v = script ? load_version(d, j->path, em_clock_now_ms(), script) : NULL;
        pthread_mutex_lock(&d->lock);
        if (v && script) {
            free(j->script);
            j->script = script;
        } else {
            free(script);
        }
        if (!v) {
            snprintf(msg, len, "job '%s': %s does not load; see the log", j->name, j->path);
            return 1;
        }
    }
    em_version_unref(j->version);
    j->version = v;
    atomic_store(&j->failed, 0);
    j->state = EM_JOB_RUNNING;
    j->next_batch_ms = next_boundary(em_clock_now_ms(), v->batch_interval_ms);
    start_version(d, v);
    em_log(EM_LOG_INFO, j->name, "started through the API");
    snprintf(msg, len, "job '%s' started", j->name);
    return 0;
}

int em_driver_control(em_driver *d, em_driver_command cmd, const char *name, char *msg,
                      size_t len)
{
    if (cmd == EM_DRIVER_RELOAD) {
        em_driver_reload(d);
        snprintf(msg, len, "reloaded %s", d->jobs_dir);
        return 0;
    }
    pthread_mutex_lock(&d->lock);
    em_job *j = find_controllable(d, name);
    int rc = 0;
    if (!j) {
        snprintf(msg, len, "no job named '%s'", name);
        rc = -1;
    } else if (cmd == EM_DRIVER_STOP_JOB) {
        settle_failure(j, em_clock_now_ms());
        if (j->state == EM_JOB_RUNNING) {
            j->state = EM_JOB_STOPPING; /* the clock cuts its last batch */
            j->paused = 0;
            snprintf(msg, len, "job '%s' stops after its last batch", j->name);
        } else {
            snprintf(msg, len, "job '%s' is not running", j->name);
            rc = 1;
        }
    } else if (cmd == EM_DRIVER_START_JOB) {
        settle_failure(j, em_clock_now_ms());
        rc = start_job(d, j, msg, len);
    } else if (j->state != EM_JOB_RUNNING) {
        snprintf(msg, len, "job '%s' is not running", j->name);
        rc = 1;
    } else {
        int on = cmd == EM_DRIVER_PAUSE_JOB;
        if (j->paused != on)
            em_log(EM_LOG_INFO, j->name, on ? "paused through the API: receivers stop reading, "
                   "batches keep their times" : "resumed through the API");
        j->paused = on;
        snprintf(msg, len, "job '%s' %s", j->name, on ? "paused" : "resumed");
    }
    publish(d);
    pthread_mutex_unlock(&d->lock);
    return rc;
}

const char *em_driver_id(const em_driver *d) { return d->cfg->ember_id; }

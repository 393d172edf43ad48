/* driver.c — see driver.h. */
#include "driver.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "clock.h"
#include "job.h"
#include "log.h"
#include "scheduler.h"

typedef struct broken_file { /* a script that failed to load, until it changes */
    char *path;
    char *script;
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
};

em_driver *em_driver_create(const em_config *cfg, const char *jobs_dir)
{
    em_driver *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->cfg = cfg;
    d->rt.cfg = cfg;
    snprintf(d->jobs_dir, sizeof d->jobs_dir, "%s", jobs_dir);
    size_t n = strlen(d->jobs_dir);
    while (n > 1 && d->jobs_dir[n - 1] == '/') /* "jobs/" names files "jobs/x.lua" */
        d->jobs_dir[--n] = '\0';
    pthread_mutex_init(&d->lock, NULL);
    return d;
}

static int64_t next_boundary(int64_t now, int64_t interval) { return (now / interval + 1) * interval; }

/* Starts a version's receivers; with backpressure, at the initial rate
 * until the estimator has one. */
static void start_version(em_driver *d, em_version *v)
{
    for (size_t i = 0; d->cfg->backpressure && d->cfg->initial_rate > 0 && i < v->nreceivers; i++)
        em_receiver_set_rate(v->receivers[i], d->cfg->initial_rate);
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
    int hold = too_many || j->nrecovered > 0;
    if (hold == j->held)
        return;
    j->held = hold;
    for (size_t i = 0; i < j->version->nreceivers; i++)
        em_receiver_hold(j->version->receivers[i], hold);
    if (too_many || !hold)
        em_log(hold ? EM_LOG_WARN : EM_LOG_INFO, j->name, hold
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

/* The clock's work, every blockInterval. */
static void tick(int64_t now, void *arg)
{
    em_driver *d = arg;
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < d->njobs; i++) {
        em_job *j = d->jobs[i];
        settle_failure(j, now);
        if (j->state == EM_JOB_FAILED)
            continue;
        if (j->state == EM_JOB_REMOVING) {
            em_job_stop_receivers(j); /* seals their last records */
            submit(d, em_batch_cut(j, now));
            j->state = EM_JOB_RETIRED;
            em_log(EM_LOG_INFO, j->name, "stopped: %s was removed", j->path);
            continue;
        }
        if (j->state != EM_JOB_RUNNING)
            continue;
        em_job_seal(j, now);
        hold_receivers(d, j);
        if (now < j->next_batch_ms)
            continue;
        if (atomic_load(&j->blocked) && j->held) {
            /* A batch that keeps failing holds the job: its receivers are
             * paused, and cutting more (empty) batches behind it would only
             * grow the queue for as long as the outage lasts. */
            j->next_batch_ms = next_boundary(now, j->version->batch_interval_ms);
            continue;
        }
        if (j->nrecovered) {
            /* Recovered records first, throttled: new input waits its turn. */
            submit(d, em_batch_cut_recovered(j, j->next_batch_ms, recovery_batch_limit(d, j)));
            if (!j->nrecovered)
                em_log(EM_LOG_INFO, j->name, "write-ahead log recovery handed over; new input next");
        } else if (j->next) {
            em_job_stop_unmatched(j);
            submit(d, em_batch_cut(j, j->next_batch_ms));
            em_job_swap(j);
        } else {
            submit(d, em_batch_cut(j, j->next_batch_ms));
        }
        j->next_batch_ms = next_boundary(now, j->version->batch_interval_ms);
    }
    pthread_mutex_unlock(&d->lock);
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
    *b = d->broken[--d->nbroken];
}

static void remember_broken(em_driver *d, const char *path, const char *script)
{
    forget_broken(d, path);
    broken_file *nb = realloc(d->broken, (d->nbroken + 1) * sizeof *nb);
    if (!nb)
        return;
    d->broken = nb;
    d->broken[d->nbroken].path = strdup(path);
    d->broken[d->nbroken].script = strdup(script);
    d->nbroken++;
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
        remember_broken(d, path, script);
        return NULL;
    }
    v->reload_ms = reload_ms;
    forget_broken(d, path);
    return v;
}

static void add_job(em_driver *d, const char *path, char *script, em_version *v)
{
    em_job *other = find_job_by_name(d, v->desc->name);
    if (other) {
        em_log(EM_LOG_ERROR, NULL, "%s: job name '%s' is already used by %s; not started", path,
               v->desc->name, other->path);
        remember_broken(d, path, script);
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
        remember_broken(d, j->path, script);
        free(script);
        em_version_unref(v);
        return;
    }
    if (strcmp(v->desc->name, j->name) != 0) {
        /* A rename is a new job: stop the old one, start the new one. */
        pthread_mutex_lock(&d->lock);
        j->state = j->state == EM_JOB_FAILED ? EM_JOB_RETIRED : EM_JOB_REMOVING;
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
        em_log(EM_LOG_ERROR, NULL, "cannot read the jobs folder %s: %s", d->jobs_dir,
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
        if (j->state == EM_JOB_RUNNING)
            j->state = EM_JOB_REMOVING;
        else if (j->state == EM_JOB_FAILED)
            j->state = EM_JOB_RETIRED;
        pthread_mutex_unlock(&d->lock);
    }
    for (size_t i = 0; i < d->nbroken;) {
        int present = 0;
        for (size_t k = 0; k < nfiles && !present; k++)
            present = strcmp(files[k], d->broken[i].path) == 0;
        if (present)
            i++;
        else
            forget_broken(d, d->broken[i].path);
    }
    /* New and changed files. */
    for (size_t k = 0; k < nfiles; k++) {
        char *script = em_read_file(files[k]);
        if (!script) {
            em_log(EM_LOG_ERROR, NULL, "%s: %s", files[k], strerror(errno));
            continue;
        }
        em_job *j = find_job_by_path(d, files[k]);
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
    d->sched = em_scheduler_create(d->cfg->concurrent_jobs);
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

void em_driver_stop(em_driver *d, int graceful)
{
    em_clock_stop(d->clock);
    d->clock = NULL;
    em_log(EM_LOG_INFO, NULL, "stopping: receivers stop, %s", graceful
           ? "every received record is processed first" : "unprocessed records are not acknowledged");
    int64_t now = em_clock_now_ms();
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < d->njobs; i++) {
        em_job *j = d->jobs[i];
        if (j->state != EM_JOB_RUNNING && j->state != EM_JOB_REMOVING)
            continue;
        em_job_stop_receivers(j);
        if (graceful && j->nrecovered) /* recovered records are older than the rest */
            submit(d, em_batch_cut_recovered(j, now - 1, 0));
        em_batch *b = em_batch_cut(j, now);
        if (b && graceful)
            submit(d, b);
        else if (b)
            em_batch_drop(b);
        j->state = EM_JOB_RETIRED;
    }
    pthread_mutex_unlock(&d->lock);
    if (graceful)
        em_scheduler_wait_idle(d->sched);
    em_log(EM_LOG_INFO, NULL, "stopped");
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
    pthread_mutex_destroy(&d->lock);
    free(d);
}

const char *em_driver_id(const em_driver *d) { return d->cfg->ember_id; }

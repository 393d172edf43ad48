/* main.c — the ember command line: run, check, version, help. */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "budget.h"
#include "cli.h"
#include "clock.h"
#include "control.h"
#include "http.h"
#include "metrics.h"
#include "snapshot.h"
#include "supervise.h"
#include "config.h"
#include "deadletters.h"
#include "driver.h"
#include "identity.h"
#include "job.h"
#include "log.h"
#include "pool.h"
#include "luahost.h"
#include "receiver.h"
#include "wal.h"

#ifndef EMBER_VERSION
#define EMBER_VERSION "0.1.0"
#endif

static void usage(FILE *out)
{
    fprintf(out,
            "usage: ember run [--config FILE] [--conf key=value]... [--log-level LEVEL] [JOBS_DIR]\n"
            "       ember status [--watch]\n"
            "       ember reload\n"
            "       ember stop [JOB]\n"
            "       ember config\n"
            "       ember check JOB.lua\n"
            "       ember dead-letters [--config FILE] [--conf key=value]... JOB [--json | --replay-to FILE]\n"
            "       ember version\n"
            "       ember --help\n"
            "\n"
            "run     runs every job script in JOBS_DIR (default: jobs/). SIGHUP reloads changed\n"
            "        scripts; SIGTERM or SIGINT stops after every received record is processed.\n"
            "status  the jobs, receivers and latest batches of the running driver (its HTTP API);\n"
            "        --watch refreshes every 2 s.\n"
            "reload  makes the running driver re-read ember.conf and its jobs folder.\n"
            "stop    stops one job of the running driver, or the driver itself (SIGTERM to the\n"
            "        pid in run.pidFile) when no job is named.\n"
            "config  prints the effective configuration and where each value came from.\n"
            "check   loads a job script, validates its graph and prints its sources, outputs and tables.\n"
            "        (status, reload, stop and config read ember.conf and --conf like run)\n"
            "dead-letters  lists a job's dead letters (--json: as written), or appends their\n"
            "        records to FILE, a line each, and moves the dead-letter files aside.\n"
            "\n"
            "--config FILE  key = value lines (default: ./ember.conf when it exists)\n"
            "--conf k=v     one configuration key, overriding the file\n"
            "--log-level    debug, info, warn or error (overrides log.level)\n"
            "--supervise, --executor-memory SIZE, --total-executor-cores N: spark-submit's,\n"
            "               as run.supervise, memory.max and streaming.concurrentJobs\n"
            "\n"
            "configuration keys:\n");
    em_config_print_keys();
}

/* lua/ beside the binary wins, so a built tree runs from anywhere. */
static void find_lua_dir(void)
{
    const char *env = getenv("EMBER_LUA_DIR");
    if (env && *env) {
        em_luahost_set_lua_dir(env);
        return;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return;
    exe[n] = '\0';
    char probe[PATH_MAX + 32];
    snprintf(probe, sizeof probe, "%s/lua/ember/runtime.lua", dirname(exe));
    if (access(probe, R_OK) == 0) {
        snprintf(probe, sizeof probe, "%s/lua", exe);
        em_luahost_set_lua_dir(probe);
    }
}

static int check(const char *path)
{
    char err[2048];
    int disabled, rc = 0;
    em_config cfg; /* the defaults: check reads no ember.conf */
    em_config_init(&cfg);
    if (em_config_finish(&cfg, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        em_config_free(&cfg);
        return 1;
    }
    em_version *v = em_version_load(path, &cfg, &disabled, err, sizeof err);
    if (!v && disabled) {
        printf("%s: disabled: %s\n", path, err);
    } else if (!v) {
        fprintf(stderr, "%s\n", err);
        rc = 1;
    } else {
        em_job_desc *d = v->desc;
        printf("%s: job '%s', batch interval %lld ms, on_error %s\n", path, d->name,
               (long long)v->batch_interval_ms, d->on_error);
        printf("sources:\n");
        for (size_t i = 0; i < v->nreceivers; i++)
            printf("  %zu. %s  (%s)\n", i + 1, em_receiver_describe(v->receivers[i]),
                   d->sources[i].where);
        printf("outputs:\n");
        for (size_t i = 0; i < d->noutputs; i++)
            printf("  %zu. %s  (%s)\n", i + 1, d->outputs[i].kind, d->outputs[i].where);
        if (d->ntables)
            printf("tables:\n");
        for (size_t i = 0; i < d->ntables; i++)
            printf("  %zu. '%s': %s  (%s)\n", i + 1, d->tables[i].name, d->tables[i].source,
                   d->tables[i].where);
        em_version_unref(v);
    }
    em_config_free(&cfg);
    return rc;
}

/* What `ember run` holds while it runs: the main thread owns it. */
typedef struct runtime {
    int argc;
    char **argv;
    const char *config_file, *jobs_dir;
    em_config cfg;
    em_driver *driver;
    em_control *control;
    em_http *http;
    em_summary *summary;
    int stopping;
} runtime;

static runtime rt;

/* Reads the configuration: ember.conf (or --config), then the flags in
 * order. Spark's submit flags are taken where they have a meaning here. */
static int load_config(em_config *cfg, int argc, char **argv, const char **config_file,
                       const char **positional, char *err, size_t errlen)
{
    const char *level = NULL;
    *config_file = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            *config_file = argv[++i];
        } else if ((strcmp(argv[i], "--conf") == 0 || strcmp(argv[i], "--executor-memory") == 0 ||
                    strcmp(argv[i], "--total-executor-cores") == 0) && i + 1 < argc) {
            i++; /* applied after the file, below */
        } else if (strcmp(argv[i], "--log-level") == 0 && i + 1 < argc) {
            level = argv[++i];
        } else if (strcmp(argv[i], "--supervise") == 0 || strcmp(argv[i], "--watch") == 0) {
            continue;
        } else if (argv[i][0] == '-') {
            snprintf(err, errlen, "unknown option '%s' (see ember --help)", argv[i]);
            return 2;
        } else if (positional) {
            *positional = argv[i];
        } else {
            snprintf(err, errlen, "unexpected argument '%s' (see ember --help)", argv[i]);
            return 2;
        }
    }
    if (!*config_file && access("ember.conf", R_OK) == 0)
        *config_file = "ember.conf";
    if (*config_file && em_config_load_file(cfg, *config_file, err, errlen) != 0)
        return -1;
    char kv[1200];
    for (int i = 0; i < argc; i++) {
        const char *flag = argv[i], *key = NULL;
        if (strcmp(flag, "--conf") == 0 && i + 1 < argc) {
            if (em_config_set(cfg, argv[++i], err, errlen) != 0)
                return -1;
            continue;
        }
        if (strcmp(flag, "--supervise") == 0) {
            em_log(EM_LOG_INFO, NULL, "--supervise: run.supervise = true (a driver that crashes "
                   "is started again, and a job stopped by on_error = \"fail\" is restarted "
                   "from its file)");
            if (em_config_set(cfg, "run.supervise=true", err, errlen) != 0)
                return -1;
            continue;
        }
        if (strcmp(flag, "--executor-memory") == 0)
            key = "memory.max";
        else if (strcmp(flag, "--total-executor-cores") == 0)
            key = "streaming.concurrentJobs";
        if (!key || i + 1 >= argc)
            continue;
        em_log(EM_LOG_INFO, NULL, "%s %s: %s = %s here (the driver runs the jobs itself)", flag,
               argv[i + 1], key, argv[i + 1]);
        snprintf(kv, sizeof kv, "%s=%.1000s", key, argv[++i]);
        if (em_config_set(cfg, kv, err, errlen) != 0)
            return -1;
    }
    if (level) {
        snprintf(kv, sizeof kv, "log.level=%.1000s", level);
        if (em_config_set(cfg, kv, err, errlen) != 0)
            return -1;
    }
    return em_config_finish(cfg, err, errlen);
}

static void health_limits(const em_config *c, em_health_limits *lim)
{
    lim->receiver_failing_ms = c->health_receiver_failing_ms;
    lim->late_batches = c->health_late_batches;
}

typedef struct diff_ctx {
    em_config *now;
    int changed, restart;
} diff_ctx;

static void changed_key(const char *key, const char *old, const char *now, void *arg)
{
    diff_ctx *x = arg;
    int live = em_config_live_key(key);
    x->changed++;
    x->restart += !live;
    int secret = strcmp(key, "ui.token") == 0;
    em_log(live ? EM_LOG_INFO : EM_LOG_WARN, NULL, "configuration: %s changed from '%s' to '%s'%s",
           key, secret ? "***" : old, secret ? "***" : now,
           live ? ": in effect now" : ": needs a restart, the running value stays");
    if (live)
        em_props_set(&rt.cfg.props, key, now);
}

/* SIGHUP and POST /api/v1/reload: read ember.conf and the flags again,
 * apply the keys that can change at run time, name the others. */
static void reload_config(void)
{
    em_config fresh;
    em_config_init(&fresh);
    char err[2048];
    const char *file, *pos = NULL;
    if (load_config(&fresh, rt.argc, rt.argv, &file, &pos, err, sizeof err) != 0) {
        em_log(EM_LOG_ERROR, NULL, "configuration not reloaded: %s", err);
        em_config_free(&fresh);
        return;
    }
    diff_ctx x = {&fresh, 0, 0};
    em_config_diff(&rt.cfg, &fresh, changed_key, &x);
    if (!x.changed)
        em_log(EM_LOG_INFO, NULL, "configuration: no key changed");
    em_config *c = &rt.cfg;
    snprintf(c->log_level, sizeof c->log_level, "%s", fresh.log_level);
    em_log_set_level((em_log_level)em_log_parse_level(c->log_level));
    c->batch_max_retries = fresh.batch_max_retries; /* lifecycle.c reads it per batch */
    c->log_batch_summary_ms = fresh.log_batch_summary_ms;
    c->health_receiver_failing_ms = fresh.health_receiver_failing_ms;
    c->health_late_batches = fresh.health_late_batches;
    c->supervise = fresh.supervise;
    /* Jobs without options of their own read these at each batch, on
     * their workers (luahost.c, apply_budgets). */
    __atomic_store_n(&c->job_memory, fresh.job_memory, __ATOMIC_RELAXED);
    __atomic_store_n(&c->job_batch_timeout_ms, fresh.job_batch_timeout_ms, __ATOMIC_RELAXED);
    if (rt.http && (!fresh.ui_token[0] && !em_http_host_is_loopback(c->ui_host))) {
        em_log(EM_LOG_ERROR, NULL, "configuration: ui.token cannot be removed while ui.host is "
               "not loopback; the old token stays");
    } else {
        snprintf(c->ui_token, sizeof c->ui_token, "%s", fresh.ui_token);
    }
    if (rt.http) {
        em_health_limits lim;
        health_limits(c, &lim);
        em_http_configure(rt.http, c->ui_token, &lim);
    }
    em_config_free(&fresh);
}

static void *stopper(void *arg)
{
    int graceful = *(int *)arg;
    int stuck = em_driver_stop(rt.driver, graceful) != 0;
    em_pidfile_remove(rt.cfg.pid_file);
    if (stuck) { /* streaming.stopTimeout passed: a batch still runs, unacknowledged */
        em_log_close();
        _exit(1);
    }
    if (!graceful) /* a batch may still run; its records stay unacknowledged */
        _exit(0);
    em_http_stop(rt.http);
    em_driver_free(rt.driver);
    em_log_close();
    exit(0);
}

static void begin_stop(const char *why)
{
    static int graceful;
    if (rt.stopping) {
        em_log(EM_LOG_WARN, NULL, "second signal: exiting now; unprocessed records stay unacknowledged");
        em_pidfile_remove(rt.cfg.pid_file);
        _exit(1);
    }
    rt.stopping = 1;
    graceful = rt.cfg.stop_gracefully;
    em_log(EM_LOG_INFO, NULL, "%s: stopping%s", why,
           graceful ? " gracefully (a second signal stops at once)" : "");
    pthread_t t;
    pthread_create(&t, NULL, stopper, &graceful);
}

/* A command the HTTP thread posted, run on the main thread. */
static int exec_command(em_driver_command cmd, const char *job, char *msg, size_t len, void *arg)
{
    (void)arg;
    if (rt.stopping) {
        snprintf(msg, len, "the driver is stopping");
        return 1;
    }
    if (cmd == EM_DRIVER_RELOAD) {
        em_log(EM_LOG_INFO, NULL, "reload requested through the API: reloading %s", rt.jobs_dir);
        reload_config();
    }
    return em_driver_control(rt.driver, cmd, job, msg, len);
}

/* Every second: the per-job summary line when due, and with run.supervise
 * a restart of jobs that on_error = "fail" stopped. */
static void housekeeping(int64_t now, int64_t *next_summary, int64_t *next_supervise)
{
    if (rt.stopping)
        return;
    int summary = rt.cfg.log_batch_summary_ms > 0 && now >= *next_summary;
    int supervise = rt.cfg.supervise && now >= *next_supervise;
    if (!summary && !supervise)
        return;
    em_snapshot *s = em_driver_snapshot(rt.driver);
    if (summary) {
        if (s)
            em_summary_log(rt.summary, s);
        *next_summary = now + rt.cfg.log_batch_summary_ms;
    }
    for (size_t i = 0; supervise && s && i < s->njobs; i++) {
        if (strcmp(s->jobs[i].state, "failed") != 0)
            continue;
        char msg[512];
        em_log(EM_LOG_INFO, s->jobs[i].name, "run.supervise: restarting the job stopped by "
               "on_error = \"fail\"");
        em_driver_control(rt.driver, EM_DRIVER_START_JOB, s->jobs[i].name, msg, sizeof msg);
    }
    if (supervise)
        *next_supervise = now + 5000;
    em_snapshot_unref(s);
}

static int run(int argc, char **argv)
{
    rt.argc = argc;
    rt.argv = argv;
    rt.jobs_dir = "jobs";
    em_config_init(&rt.cfg);
    char err[2048];
    int rc = load_config(&rt.cfg, argc, argv, &rt.config_file, &rt.jobs_dir, err, sizeof err);
    if (rc != 0)
        goto bad;
    em_config *cfg = &rt.cfg;
    em_log_set_level((em_log_level)em_log_parse_level(cfg->log_level));
    em_identity_set(cfg->ember_id);
    em_log_set_id(cfg->ember_id);
    if (cfg->supervise) /* the parent stays there for good (logging to stderr); the driver goes on */
        em_supervise();
    if (cfg->log_file[0] && em_log_open_file(cfg->log_file, cfg->log_rolling_strategy,
                                             cfg->log_rolling_interval,
                                             cfg->log_rolling_max_retained) != 0) {
        snprintf(err, sizeof err, "configuration: log.file = '%s': %s", cfg->log_file,
                 strerror(errno));
        goto bad;
    }
    if (cfg->ui_enabled && !cfg->ui_token[0] && !em_http_host_is_loopback(cfg->ui_host)) {
        snprintf(err, sizeof err, "configuration: ui.host = '%s' is not a loopback address: set "
                 "ui.token, or anyone who reaches the port can reload and stop jobs",
                 cfg->ui_host);
        goto bad;
    }
    /* One driver per checkpoint.dir: its dead letters, write-ahead logs and
     * checkpoints are this process's alone. The lock comes first: it is the
     * check that holds across a kill -9, and the PID file lives there. */
    if (em_identity_lock(cfg->checkpoint_dir, err, sizeof err) != 0)
        goto bad;
    em_log(EM_LOG_INFO, NULL, "driver %s (pid %ld) holds checkpoint.dir %s", cfg->ember_id,
           (long)getpid(), cfg->checkpoint_dir);
    if (em_pidfile_write(cfg->pid_file, 0, err, sizeof err) != 0)
        goto bad;

    /* Signals arrive on a signalfd, never in a handler, so every thread
     * started after this inherits the mask; commands from the HTTP thread
     * arrive on the control eventfd. One loop handles both. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    rt.control = em_control_create();
    rt.summary = em_summary_create();
    if (sfd < 0 || !rt.control || !rt.summary) {
        snprintf(err, sizeof err, "cannot set up the main loop: %s", strerror(errno));
        goto bad_pid;
    }

    rt.driver = em_driver_create(cfg, rt.jobs_dir);
    if (!rt.driver || em_driver_start(rt.driver) != 0) {
        em_pidfile_remove(cfg->pid_file);
        return 1;
    }
    if (cfg->ui_enabled) {
        rt.http = em_http_start(cfg->ui_host, cfg->ui_port, rt.driver, rt.control, err,
                                sizeof err);
        if (!rt.http) {
            em_log(EM_LOG_ERROR, NULL, "HTTP: %s", err);
            em_driver_stop(rt.driver, 1);
            em_pidfile_remove(cfg->pid_file);
            return 1;
        }
        em_health_limits lim;
        health_limits(cfg, &lim);
        em_http_configure(rt.http, cfg->ui_token, &lim);
        em_log(EM_LOG_INFO, NULL, "HTTP API and web UI on http://%s:%d/%s", cfg->ui_host,
               em_http_port(rt.http), cfg->ui_token[0] ? " (control calls need ui.token)" : "");
        if (em_pidfile_write(cfg->pid_file, em_http_port(rt.http), err, sizeof err) != 0)
            em_log(EM_LOG_WARN, NULL, "%s", err);
    }
    int64_t next_summary = em_clock_mono_ms() + cfg->log_batch_summary_ms, next_supervise = 0;
    for (;;) {
        struct pollfd fds[2] = {{.fd = sfd, .events = POLLIN},
                                {.fd = em_control_fd(rt.control), .events = POLLIN}};
        int n = poll(fds, 2, 1000);
        if (n < 0 && errno != EINTR)
            em_log(EM_LOG_ERROR, NULL, "main loop: %s", strerror(errno));
        if (n > 0 && (fds[0].revents & POLLIN)) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                if (si.ssi_signo == SIGHUP && !rt.stopping) {
                    em_log(EM_LOG_INFO, NULL, "SIGHUP: reloading ember.conf and %s", rt.jobs_dir);
                    reload_config();
                    em_driver_reload(rt.driver);
                } else if (si.ssi_signo != SIGHUP) {
                    begin_stop(strsignal((int)si.ssi_signo));
                }
            }
        }
        if (n > 0 && (fds[1].revents & POLLIN))
            em_control_run(rt.control, exec_command, NULL);
        housekeeping(em_clock_mono_ms(), &next_summary, &next_supervise);
    }
bad_pid:
    em_pidfile_remove(rt.cfg.pid_file);
bad:
    fprintf(stderr, "ember: %s\n", err);
    em_config_free(&rt.cfg);
    return 2;
}

/* status, reload, stop, config: read the same configuration as run. */
static int client(const char *cmd, int argc, char **argv)
{
    em_config cfg;
    em_config_init(&cfg);
    char err[2048];
    const char *file, *job = NULL;
    int watch = 0;
    for (int i = 0; i < argc; i++)
        watch |= strcmp(argv[i], "--watch") == 0;
    int takes_arg = strcmp(cmd, "stop") == 0;
    int rc = load_config(&cfg, argc, argv, &file, takes_arg ? &job : NULL, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "ember %s: %s\n", cmd, err);
        em_config_free(&cfg);
        return 2;
    }
    if (strcmp(cmd, "config") == 0) {
        if (file)
            printf("# from %s and the command line\n", file);
        em_config_print_effective(&cfg);
        rc = 0;
    } else if (strcmp(cmd, "status") == 0) {
        rc = em_cli_status(&cfg, watch);
    } else if (strcmp(cmd, "reload") == 0) {
        rc = em_cli_reload(&cfg);
    } else {
        rc = em_cli_stop(&cfg, job);
    }
    em_config_free(&cfg);
    return rc;
}

int main(int argc, char **argv)
{
    /* Keep freed memory for reuse instead of returning it to the kernel and
     * faulting it in again: blocks and Kafka fetch buffers are freed and
     * allocated again every batch, and fresh pages cost more than the work
     * on them. Allocations up to 32 MiB come from the heap, and up to 64 MiB
     * of free heap is kept. */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    find_lua_dir();
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("ember %s (LuaJIT, lua dir %s)\n", EMBER_VERSION, em_luahost_lua_dir());
        return 0;
    }
    if (strcmp(argv[1], "check") == 0) {
        if (argc != 3) {
            fprintf(stderr, "usage: ember check JOB.lua\n");
            return 2;
        }
        return check(argv[2]);
    }
    if (strcmp(argv[1], "run") == 0)
        return run(argc - 2, argv + 2);
    if (strcmp(argv[1], "dead-letters") == 0)
        return em_dead_letters_main(argc - 2, argv + 2);
    if (strcmp(argv[1], "status") == 0 || strcmp(argv[1], "reload") == 0 ||
        strcmp(argv[1], "stop") == 0 || strcmp(argv[1], "config") == 0)
        return client(argv[1], argc - 2, argv + 2);
    fprintf(stderr, "ember: unknown command '%s' (see ember --help)\n", argv[1]);
    return 2;
}

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
#include <unistd.h>

#include "config.h"
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
            "       ember check JOB.lua\n"
            "       ember version\n"
            "       ember --help\n"
            "\n"
            "run     runs every job script in JOBS_DIR (default: jobs/). SIGHUP reloads changed\n"
            "        scripts; SIGTERM or SIGINT stops after every received record is processed.\n"
            "check   loads a job script, validates its graph and prints its sources and outputs.\n"
            "\n"
            "--config FILE  key = value lines (default: ./ember.conf when it exists)\n"
            "--conf k=v     one configuration key, overriding the file\n"
            "--log-level    debug, info, warn or error (overrides log.level)\n"
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
    int disabled;
    em_config cfg; /* the defaults: check reads no ember.conf */
    em_config_init(&cfg);
    if (em_config_finish(&cfg, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    em_version *v = em_version_load(path, &cfg, &disabled, err, sizeof err);
    if (!v && disabled) {
        printf("%s: disabled: %s\n", path, err);
        return 0;
    }
    if (!v) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
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
    em_version_unref(v);
    return 0;
}

typedef struct stop_args {
    em_driver *driver;
    int graceful;
} stop_args;

static void *stopper(void *arg)
{
    stop_args *a = arg;
    em_driver_stop(a->driver, a->graceful);
    if (!a->graceful) /* a batch may still run; its records stay unacknowledged */
        _exit(0);
    em_driver_free(a->driver);
    em_log_close();
    exit(0);
}

static int run(int argc, char **argv)
{
    em_config cfg;
    em_config_init(&cfg);
    char err[2048];
    const char *config_file = NULL, *jobs_dir = "jobs", *level = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config_file = argv[++i];
        } else if (strcmp(argv[i], "--conf") == 0 && i + 1 < argc) {
            i++; /* applied after the file, below */
        } else if (strcmp(argv[i], "--log-level") == 0 && i + 1 < argc) {
            level = argv[++i];
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "ember run: unknown option '%s' (see ember --help)\n", argv[i]);
            return 2;
        } else {
            jobs_dir = argv[i];
        }
    }
    if (!config_file && access("ember.conf", R_OK) == 0)
        config_file = "ember.conf";
    if (config_file && em_config_load_file(&cfg, config_file, err, sizeof err) != 0)
        goto bad;
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--conf") == 0 && i + 1 < argc &&
            em_config_set(&cfg, argv[++i], err, sizeof err) != 0)
            goto bad;
    if (level && em_config_set(&cfg, (snprintf(err, sizeof err, "log.level=%s", level), err),
                               err, sizeof err) != 0)
        goto bad;
    if (em_config_finish(&cfg, err, sizeof err) != 0)
        goto bad;
    em_log_set_level((em_log_level)em_log_parse_level(cfg.log_level));
    em_identity_set(cfg.ember_id);
    em_log_set_id(cfg.ember_id);
    em_pool_set_default_size(cfg.pool_size);
    if (cfg.log_file[0] && em_log_open_file(cfg.log_file, cfg.log_rolling_strategy,
                                            cfg.log_rolling_interval,
                                            cfg.log_rolling_max_retained) != 0) {
        snprintf(err, sizeof err, "configuration: log.file = '%s': %s", cfg.log_file,
                 strerror(errno));
        goto bad;
    }

    /* Signals are taken by sigwait below, never by a handler, so every
     * thread started after this inherits the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* One driver per checkpoint.dir: its dead letters, write-ahead logs and
     * checkpoints are this process's alone. */
    if (em_identity_lock(cfg.checkpoint_dir, err, sizeof err) != 0)
        goto bad;
    em_log(EM_LOG_INFO, NULL, "driver %s (pid %ld) holds checkpoint.dir %s", cfg.ember_id,
           (long)getpid(), cfg.checkpoint_dir);

    em_driver *d = em_driver_create(&cfg, jobs_dir);
    if (!d || em_driver_start(d) != 0)
        return 1;
    int stopping = 0;
    for (;;) {
        int sig;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP && !stopping) {
            em_log(EM_LOG_INFO, NULL, "SIGHUP: reloading %s", jobs_dir);
            em_driver_reload(d);
        } else if (sig != SIGHUP && !stopping) {
            stopping = 1;
            em_log(EM_LOG_INFO, NULL, "%s: stopping%s", strsignal(sig),
                   cfg.stop_gracefully ? " gracefully (a second signal stops at once)" : "");
            static stop_args args;
            args.driver = d;
            args.graceful = cfg.stop_gracefully;
            pthread_t t;
            pthread_create(&t, NULL, stopper, &args);
        } else if (sig != SIGHUP) {
            em_log(EM_LOG_WARN, NULL, "second signal: exiting now; unprocessed records stay unacknowledged");
            _exit(1);
        }
    }
bad:
    fprintf(stderr, "ember: %s\n", err);
    em_config_free(&cfg);
    return 2;
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
    fprintf(stderr, "ember: unknown command '%s' (see ember --help)\n", argv[1]);
    return 2;
}

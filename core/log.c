/* log.c — see log.h. */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static em_log_level min_level = EM_LOG_INFO;
static pthread_mutex_t file_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = 2;
static char *log_path;       /* NULL: stderr */
static long roll_seconds;    /* 0: no time rolling */
static long current_period;  /* period index of the open file */
static int max_retained = 10;

static const char *const names[] = {"debug", "info", "warn", "error"};
static char driver_id[80]; /* empty: not shown */

void em_log_set_id(const char *id) { snprintf(driver_id, sizeof driver_id, "%s", id ? id : ""); }

void em_log_set_level(em_log_level level) { min_level = level; }

int em_log_parse_level(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

/* Removes rolled files beyond max_retained: they are named path.<period>,
 * so the oldest are the smallest periods. */
static void prune_rolled(void)
{
    long keep_from = current_period - (long)max_retained - 1;
    char name[4096];
    for (long p = keep_from; p > keep_from - 64 && p > 0; p--) {
        snprintf(name, sizeof name, "%s.%ld", log_path, p);
        unlink(name);
    }
}

/* Called with file_lock held: moves to a new file when the period changed. */
static void roll_if_due(time_t now)
{
    if (!log_path || roll_seconds == 0)
        return;
    long period = (long)(now / roll_seconds);
    if (period == current_period)
        return;
    char rolled[4096];
    snprintf(rolled, sizeof rolled, "%s.%ld", log_path, current_period);
    close(log_fd);
    rename(log_path, rolled);
    current_period = period;
    log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0)
        log_fd = 2;
    prune_rolled();
}

int em_log_open_file(const char *path, const char *strategy, const char *interval,
                     int retained)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    pthread_mutex_lock(&file_lock);
    free(log_path);
    log_path = strdup(path);
    log_fd = fd;
    roll_seconds = 0;
    if (strcmp(strategy, "time") == 0)
        roll_seconds = strcmp(interval, "minutely") == 0 ? 60
                       : strcmp(interval, "hourly") == 0 ? 3600
                                                         : 86400;
    current_period = roll_seconds ? (long)(time(NULL) / roll_seconds) : 0;
    max_retained = retained;
    pthread_mutex_unlock(&file_lock);
    return 0;
}

void em_log_close(void)
{
    pthread_mutex_lock(&file_lock);
    if (log_fd != 2)
        close(log_fd);
    log_fd = 2;
    free(log_path);
    log_path = NULL;
    pthread_mutex_unlock(&file_lock);
}

static _Thread_local char thread_last[256];

const char *em_log_thread_last(void) { return thread_last; }

void em_log(em_log_level level, const char *job, const char *fmt, ...)
{
    if (level >= EM_LOG_WARN) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(thread_last, sizeof thread_last, fmt, ap);
        va_end(ap);
    }
    if (level < min_level)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[4096];
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s%s%-5s [%s] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, driver_id, driver_id[0] ? " " : "",
                     names[level], job ? job : "ember");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    pthread_mutex_lock(&file_lock);
    roll_if_due(ts.tv_sec);
    ssize_t w = write(log_fd, line, len);
    (void)w;
    pthread_mutex_unlock(&file_lock);
}

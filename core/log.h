/* log.h — one line per event on stderr (or a rolling file): time, driver id, level, job.
 *
 * Safe from any thread; a line is written with one write(2) so lines from
 * receivers, workers and the clock never interleave.
 */
#ifndef EMBER_LOG_H
#define EMBER_LOG_H

typedef enum { EM_LOG_DEBUG, EM_LOG_INFO, EM_LOG_WARN, EM_LOG_ERROR } em_log_level;

void em_log(em_log_level level, const char *job, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The text of the last warn or error line this thread logged (even below
 * log.level), without time and level; "" if none. A receiver keeps it as its
 * last error when its connector's poll() fails. */
const char *em_log_thread_last(void);
void em_log_set_level(em_log_level level);
/* Names the driver on every line, after the time (ember.id); set once at
 * start, before other threads log. NULL or "" leaves it out. */
void em_log_set_id(const char *id);
/* "debug", "info", "warn", "error" → level; -1 if unknown. */
int em_log_parse_level(const char *name);
/* Log to files under path instead of stderr. strategy "off" keeps one file;
 * "time" starts a new one every interval ("minutely", "hourly", "daily") and
 * keeps at most max_retained old ones. Returns 0 or -1 with errno set. */
int em_log_open_file(const char *path, const char *strategy, const char *interval,
                     int max_retained);
void em_log_close(void);

#endif

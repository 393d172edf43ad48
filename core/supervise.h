/* supervise.h — `ember run --supervise`: a parent that starts the driver
 * again after a crash.
 *
 * Spark's --supervise restarts a driver that failed. Here the process that
 * `ember run --supervise` starts stays a small parent: it forks the driver,
 * passes SIGTERM, SIGINT and SIGHUP on to it, and when the driver dies of a
 * signal that was not passed on (SIGKILL from the OOM killer, SIGSEGV,
 * SIGABRT) or exits 1 without having been asked to stop, forks it again
 * after a backoff; the new driver resumes every job from its checkpoint and
 * write-ahead logs, as after any restart. A clean stop (0), a bad
 * configuration or a second driver on the checkpoint.dir (2), or any exit
 * after a stop was passed on ends the parent with the driver's status. The
 * driver gets SIGTERM if the parent dies.
 */
#ifndef EMBER_SUPERVISE_H
#define EMBER_SUPERVISE_H

/* Returns in the child, which goes on to run the driver; the parent never
 * returns: it exits with the driver's final status. Call before the
 * checkpoint.dir lock is taken and before any thread starts. */
void em_supervise(void);

#endif

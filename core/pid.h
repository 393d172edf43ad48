/* pid.h — Spark's PID rate estimator, one per job.
 *
 * After every batch it turns (records, processing time, scheduling delay)
 * into the ingest rate the job can sustain: the proportional term chases the
 * rate the last batch was processed at, the integral term drains the backlog
 * that scheduling delay reveals. Same formula and defaults as Spark's
 * PIDRateEstimator (P 1.0, I 0.2, D 0.0, minRate 100), so a Spark user's
 * tuning carries over.
 */
#ifndef EMBER_PID_H
#define EMBER_PID_H

#include <stdint.h>

typedef struct em_pid {
    double p, i, d, min_rate;
    int64_t batch_interval_ms;
    int first_run;
    int64_t latest_time_ms;
    double latest_rate, latest_error;
} em_pid;

void em_pid_init(em_pid *pid, int64_t batch_interval_ms, double p, double i, double d,
                 double min_rate);
/* Feeds one completed batch; returns the new rate (records/s), or -1 when
 * there is nothing to say yet (first batch, empty batch, no time spent). */
double em_pid_compute(em_pid *pid, int64_t time_ms, uint64_t records, int64_t processing_ms,
                      int64_t scheduling_delay_ms);

#endif

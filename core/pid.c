/* pid.c — see pid.h; a line-by-line port of Spark's PIDRateEstimator. */
#include "pid.h"

void em_pid_init(em_pid *pid, int64_t batch_interval_ms, double p, double i, double d,
                 double min_rate)
{
    pid->p = p;
    pid->i = i;
    pid->d = d;
    pid->min_rate = min_rate;
    pid->batch_interval_ms = batch_interval_ms;
    pid->first_run = 1;
    pid->latest_time_ms = -1;
    pid->latest_rate = -1;
    pid->latest_error = -1;
}

double em_pid_compute(em_pid *pid, int64_t time_ms, uint64_t records, int64_t processing_ms,
                      int64_t scheduling_delay_ms)
{
    if (time_ms <= pid->latest_time_ms || records == 0 || processing_ms <= 0)
        return -1;
    double since_update = (double)(time_ms - pid->latest_time_ms) / 1000.0;
    double processing_rate = (double)records / (double)processing_ms * 1000.0;
    /* error: how far the rate we let in is above what we can process. */
    double error = pid->latest_rate - processing_rate;
    /* The backlog, as the records/s it would take to clear the scheduling
     * delay within one batch interval. */
    double historical_error =
        (double)scheduling_delay_ms * processing_rate / (double)pid->batch_interval_ms;
    double d_error = (error - pid->latest_error) / since_update;
    double rate = pid->latest_rate - pid->p * error - pid->i * historical_error - pid->d * d_error;
    if (rate < pid->min_rate)
        rate = pid->min_rate;
    pid->latest_time_ms = time_ms;
    if (pid->first_run) {
        pid->latest_rate = processing_rate;
        pid->latest_error = 0;
        pid->first_run = 0;
        return -1;
    }
    pid->latest_rate = rate;
    pid->latest_error = error;
    return rate;
}

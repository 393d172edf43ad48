/* metrics.h — /metrics in Prometheus' text exposition format, and the
 * compact per-job summary line the log gets every log.batchSummaryInterval.
 *
 * Both read a published snapshot only. Counters end in _total, times are
 * seconds, sizes bytes; the two histograms per job (batch processing time,
 * total delay) count every batch since start (history.h keeps the buckets).
 */
#ifndef EMBER_METRICS_H
#define EMBER_METRICS_H

#include "buf.h"
#include "snapshot.h"

void em_metrics_write(const em_snapshot *s, em_buf *out);

/* Remembers each job's totals at its last line, to log what changed. */
typedef struct em_summary em_summary;
em_summary *em_summary_create(void);
/* Logs one info line per job that ran batches since the last call. */
void em_summary_log(em_summary *m, const em_snapshot *s);
void em_summary_free(em_summary *m); /* accepts NULL */

#endif

/* api.h — the JSON of the HTTP API, written from a published snapshot.
 *
 * Field names follow Spark's streaming REST API (/api/v1/applications/.../
 * streaming/...) where Spark has one; docs/http.md lists them. Every
 * function only reads the snapshot (and the shared batch histories).
 */
#ifndef EMBER_API_H
#define EMBER_API_H

#include <stdint.h>

#include "buf.h"
#include "snapshot.h"

typedef struct em_health_limits {
    int64_t receiver_failing_ms; /* ui.health.receiverFailingFor */
    int late_batches;            /* ui.health.lateBatches */
} em_health_limits;

void em_api_jobs(const em_snapshot *s, em_buf *out);
/* -1 when there is no such job (404). */
int em_api_job(const em_snapshot *s, const char *name, em_buf *out);
/* The retained batches, newest first; time_ms >= 0: only that batch (-1
 * when it is not retained). */
int em_api_batches(const em_snapshot *s, const char *name, int64_t time_ms, em_buf *out);
void em_api_receivers(const em_snapshot *s, em_buf *out);
void em_api_statistics(const em_snapshot *s, em_buf *out);
/* The sink connection pools, with their connections and last error. */
void em_api_pools(const em_snapshot *s, em_buf *out);
/* /healthz (ready = 0) and /readyz (ready = 1): returns 1 when OK; out holds
 * {"status": ..., "reasons": [...]} either way. s may be NULL (starting). */
int em_api_health(const em_snapshot *s, const em_health_limits *lim, int ready, int64_t now_ms,
                  em_buf *out);
/* The terminal view `ember status` prints. */
void em_api_status_text(const em_snapshot *s, em_buf *out);

#endif

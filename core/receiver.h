/* receiver.h — one source of one job, running its connector on its own thread.
 *
 * The receiver thread only does I/O: it asks the rate limiter for tokens,
 * calls the connector's poll(), and copies records into its current block.
 * It never touches Lua. The clock seals the current block every
 * blockInterval; sealed blocks wait in the receiver until a batch takes them.
 */
#ifndef EMBER_RECEIVER_H
#define EMBER_RECEIVER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "block.h"
#include "config.h"
#include "connector.h"
#include "props.h"

typedef struct em_receiver em_receiver;

/* Validates props against the connector (plus the core's max_rate) and
 * builds the receiver; does not start it. cfg gives the defaults and caps
 * (streaming.receiver.maxRate, memory.max, the WAL's fsync policy). NULL
 * and err on a bad setting. */
em_receiver *em_receiver_create(const em_connector *c, em_props *props, const char *job,
                                const em_config *cfg, int64_t batch_interval_ms, char *err,
                                size_t errlen);
int em_receiver_start(em_receiver *r);
/* Stops reading and joins the thread; the records it had are sealed into
 * a last block that em_receiver_take() still returns. Idempotent. */
void em_receiver_stop(em_receiver *r);
em_receiver *em_receiver_ref(em_receiver *r);
void em_receiver_unref(em_receiver *r); /* accepts NULL */

/* Called by connectors inside poll(): one record, copied (see em_push in
 * block.h: meta is what a run of records shares, extra a record's own). */
int em_receiver_push(em_receiver *r, const em_push *rec);
/* The records of one read, in order, under one lock (a mutex per record
 * costs more than the copy for short lines). Returns how many were taken:
 * n, or fewer when out of memory — the rest were not, and must come again. */
size_t em_receiver_push_many(em_receiver *r, const em_push *recs, size_t n);
#define EM_PUSH_RUN 256 /* records a line source gathers for one em_receiver_push_many() */

/* Clock side: seal the current block (if it holds records) into the
 * sealed list. */
void em_receiver_seal(em_receiver *r, int64_t now_ms);
/* Takes every sealed block (the caller owns the references); returns the
 * count and fills *out with a malloc'd array, or 0 and NULL. */
size_t em_receiver_take(em_receiver *r, em_block ***out);
/* Hands the connector the news that blocks of this receiver were processed.
 * Every block em_receiver_take() handed out is reported here exactly once
 * (its batch succeeded, failed for good, or was dropped). */
void em_receiver_batch_done(em_receiver *r, em_block *const *blocks, size_t n, int ok);
/* Waits until every block taken from this receiver so far has been
 * reported through em_receiver_batch_done() — the batches in flight are
 * done, and the connector's batch_done for them has returned — or until
 * timeout_ms passes. 0 when they are all done, -1 on timeout. For a
 * connector about to give up its input (Kafka: inside a revoke, while its
 * commits still count); from the receiver thread, never from a worker. */
int em_receiver_wait_done(em_receiver *r, int64_t timeout_ms);

/* The connector's positions() for these blocks, or nothing. */
void em_receiver_positions(em_receiver *r, em_block *const *blocks, size_t n, FILE *out);
/* The connector's resume_from(), before start; 0 when it has none. */
int em_receiver_resume_from(em_receiver *r, const char *positions);
/* The rate backpressure asks for (records/s; <= 0: none). The receiver
 * takes the lower of it and its configured max_rate. */
void em_receiver_set_rate(em_receiver *r, double per_sec);
/* The rate in force: the lower of max_rate and the backpressure rate; 0 for
 * unlimited. */
double em_receiver_rate(const em_receiver *r);
double em_receiver_max_rate(const em_receiver *r);
/* The batch interval of the job it feeds (for a prefetch window, say). */
int64_t em_receiver_batch_interval_ms(const em_receiver *r);
/* Drops the records of one partition that no batch holds yet (Kafka: a
 * revoked partition; RabbitMQ: deliveries of a dead connection, which the
 * broker redelivers). For connectors, from their own thread. Returns how
 * many were dropped. Not for WAL'd sources. */
size_t em_receiver_discard(em_receiver *r, int32_t partition);
/* For connectors, from their thread: partition is assigned to this source
 * (on = 1) or no longer (on = 0); counted, so a number assigned under two
 * topics stays until both are gone. Batches carry the assignment of their
 * cut, for the job's watermark: a partition assigned but not yet seen holds
 * it back (lua/ember/event_time.lua). */
void em_receiver_assign(em_receiver *r, int32_t partition, int on);
/* The partitions assigned now, distinct and ascending, into a malloc'd
 * *out (NULL when none); returns the count. */
size_t em_receiver_assigned(em_receiver *r, int32_t **out);
/* Holds the receiver (no reading) while on, e.g. too many batches wait. */
void em_receiver_hold(em_receiver *r, int on);
/* The read-ahead bound: the receiver stops reading while its blocks not
 * yet freed (read, waiting, or in a running batch) hold this many records;
 * 0: no bound. The driver sets it from what the job's batches process. */
void em_receiver_set_read_ahead(em_receiver *r, uint64_t records);
uint64_t em_receiver_read_ahead(const em_receiver *r);
/* Whether the receiver has a batch's worth ready: the records it holds not
 * yet in a batch reach half its read-ahead bound (the other half is for
 * the batch running). */
int em_receiver_ready(em_receiver *r);
/* fn(r, arg) is called on the receiver's thread, once per take, when it
 * becomes ready; fn must not wait for anything that waits for a receiver
 * (try-locks only). Set before the receiver starts. */
void em_receiver_on_ready(em_receiver *r, void (*fn)(em_receiver *r, void *arg), void *arg);
/* fn could not act (a lock was busy): tell it again after the next poll. */
void em_receiver_tell_again(em_receiver *r);
/* Called by em_block_unref(): a block of this receiver with that many
 * records was freed. Accepts NULL. */
void em_receiver_block_freed(em_receiver *r, uint32_t records);
/* memory.max (0: no cap), for a connector's own buffers (Kafka's prefetch). */
size_t em_receiver_memory_max(const em_receiver *r);

/* Writes every block to a write-ahead log under dir before it can join a
 * batch, unless the source acknowledges by itself. Call before start. */
int em_receiver_enable_wal(em_receiver *r, const char *dir, char *err, size_t errlen);
int em_receiver_acknowledges(const em_receiver *r);

/* What the API shows of a receiver (status and last error, hiredis'
 * err/errstr habit). Taken under the receiver's lock, a copy. */
typedef struct em_receiver_stats {
    uint64_t records, bytes;  /* taken in since it started */
    double rate, max_rate;    /* in force / configured, records/s; 0: unlimited */
    int active;               /* its thread runs */
    int held;                 /* the driver holds it (waiting batches, recovery, a paused job) */
    int throttled;            /* out of tokens (max_rate or backpressure) */
    int over_memory;          /* paused by memory.max */
    int64_t failing_since_ms; /* first fault of the current streak; 0: not failing */
    int64_t last_error_ms;    /* 0: never failed */
    char last_error[256];
    int64_t lag;              /* records the broker holds beyond what was acknowledged; -1: unknown */
    char lag_detail[1024];    /* JSON the connector wrote (per partition, ...); "" when none */
} em_receiver_stats;

/* For connectors, from their thread: the lag the broker tells (Kafka:
 * high watermark minus committed offset, per partition), total records and
 * a JSON value with the detail; total -1 when it cannot be told. */
void em_receiver_set_lag(em_receiver *r, int64_t total, const char *json);

void em_receiver_get_stats(em_receiver *r, em_receiver_stats *out);
/* For connectors: the fault is over (reconnected) before any record came. */
void em_receiver_recovered(em_receiver *r);
const char *em_receiver_connector(const em_receiver *r);

const char *em_receiver_signature(const em_receiver *r); /* connector + props */
const char *em_receiver_describe(const em_receiver *r);  /* "socket localhost:9999" */
const char *em_receiver_job(const em_receiver *r);

#endif

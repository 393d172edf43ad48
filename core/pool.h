/* pool.h — one pool of connections per endpoint, shared by every job.
 *
 * "Use pooling everywhere": sinks and ember.redis() borrow a connection for
 * one batch and give it back, so a dozen jobs writing to one Redis share a
 * handful of sockets. A pool is found by (kind, endpoint) and made on first
 * use; its size is connector.pool.size, which the caller hands in from its
 * runtime (core/runtime.h: the job's configuration), not a module global. Borrowing waits up to a
 * deadline when every connection is out; waits are counted for the metrics.
 */
#ifndef EMBER_POOL_H
#define EMBER_POOL_H

#include <stddef.h>
#include <stdint.h>

typedef struct em_pool_ops {
    /* Opens one connection; NULL and err on failure (may block up to a
     * connect timeout). */
    void *(*connect)(const char *endpoint, char *err, size_t errlen);
    void (*close)(void *conn);
} em_pool_ops;

typedef struct em_pool em_pool;

/* What the calling thread borrowed since it last asked: a worker reads it
 * after each batch, so pool use and waits are recorded with the batch. */
typedef struct em_pool_usage {
    uint64_t borrows, waits;
    int64_t wait_ms;
} em_pool_usage;

void em_pool_usage_take(em_pool_usage *out);

/* The pool for this endpoint, made on first call; ops must be static.
 * size: connector.pool.size of the caller's runtime, used when the pool
 * is made. ops NULL registers a client that is not pooled (Kafka's
 * producer: one per brokers string, shared by every batch) so that its
 * status and its errors show beside the pools; it has nothing to borrow
 * (size is then ignored). NULL when out of memory. */
em_pool *em_pool_get(const char *kind, const char *endpoint, const em_pool_ops *ops, int size);
/* A connection, connecting if the pool has room; NULL and err after
 * timeout_ms or when connecting fails. */
void *em_pool_borrow(em_pool *p, int timeout_ms, char *err, size_t errlen);
/* Gives it back; broken = 1 closes it instead (after an I/O error). */
void em_pool_return(em_pool *p, void *conn, int broken);

/* An I/O error met on a borrowed connection (a socket broken mid-batch, a
 * delivery the broker failed): kept as the pool's last I/O error and as its
 * last error, with the time, so the API says why `broken` went up even
 * after the reconnects that follow fail for another reason. Accepts p NULL. */
void em_pool_note_error(em_pool *p, const char *err);

/* A pool's status for the API: its connections, counts, and its last
 * error (a failed connect, every connection busy past the deadline, or an
 * I/O error on a connection in use). */
typedef struct em_pool_stats {
    char kind[32];
    char endpoint[512]; /* password masked */
    int open, idle, max;
    uint64_t borrows, waits, connect_failures, broken;
    uint64_t io_errors;    /* I/O errors noted on connections in use */
    int64_t last_error_ms; /* 0: none */
    char last_error[256];
    int64_t last_io_error_ms; /* 0: none */
    char last_io_error[256];
} em_pool_stats;

/* Copies the stats of up to max pools into out; returns how many exist. */
size_t em_pool_list(em_pool_stats *out, size_t max);

#endif

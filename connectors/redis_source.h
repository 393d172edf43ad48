/* redis_source.h — inside the Redis source (the connector "redis"): what
 * redis.c (options, connecting, pushing, the lag, the connector table), its
 * modes (redis_list.c, redis_stream.c, redis_pubsub.c), their
 * acknowledgements (redis_ack.c) and the in-flight multiset
 * (redis_inflight.c) share. Nothing outside these files includes it. */
#ifndef EMBER_REDIS_SOURCE_H
#define EMBER_REDIS_SOURCE_H

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../core/block.h"
#include "../core/receiver.h"
#include "redis_conn.h"

#define FIRST_DELAY_MS 1000 /* the first retry after a failed connection */

/* The in-flight multiset (redis_inflight.c).
 *
 * Keys are two 64-bit words (a value's hash and length, or an entry id's
 * milliseconds and sequence), each with a count. Open addressing with linear
 * probing and backward-shift deletion, so there are no tombstones. */

typedef struct ikey {
    uint64_t a, b;
} ikey;

typedef struct islot {
    uint64_t a, b;
    uint32_t n; /* 0: empty */
} islot;

typedef struct iset {
    islot *s;
    size_t cap, used; /* cap is 0 or a power of two */
} iset;

int em_redis_iset_add(iset *t, ikey k); /* one more count of k; -1 out of memory */
uint32_t em_redis_iset_count(const iset *t, ikey k);
void em_redis_iset_del(iset *t, ikey k);
int em_redis_iset_copy(iset *dst, const iset *src); /* dst is overwritten; -1 out of memory */
void em_redis_iset_free(iset *t);

/* A list item's key (a hash of its bytes and its length). */
ikey em_redis_value_key(const char *p, size_t n);
/* "1700000000000-7" → {1700000000000, 7}; -1 when malformed. */
int em_redis_parse_id(const char *s, size_t n, ikey *k);

/* What is in flight for one processing list or one stream consumer, shared
 * by every receiver of this process that reads it: during a reload the new
 * receiver starts while the old one's batches finish, and must not take
 * their items, still in the processing list or pending, for lost ones. */
typedef struct track {
    struct track *next;
    char *id;
    int refs;
    pthread_mutex_t lock; /* guards set */
    iset set;
} track;

/* The track of id (made on first use), one more reference; NULL when out
 * of memory. em_redis_track_put drops a reference; NULL-safe. */
track *em_redis_track_get(const char *id);
void em_redis_track_put(track *t);

/* The source (redis.c). sbuf: the JSON of a stream entry without a `value`
 * field (redis_stream.c). */

typedef enum { LIST, STREAM, PUBSUB } rmode;

typedef struct ackitem {
    char *s; /* list: the item's bytes; stream: the entry id */
    size_t len;
} ackitem;

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

typedef struct redis_src {
    rmode mode;
    em_redis_url url;
    char name[400]; /* "redis source redis://host:port (job x)" */
    char *job, *key, *processing, *group, *consumer;
    char **channels;
    int nchannels, pattern;
    int64_t block_ms, claim_idle_ms;
    uint32_t count;

    /* receiver thread only */
    redisContext *c;
    int down, connected_once;
    int64_t retry_at, delay_ms, down_since;
    int64_t seq;
    uint32_t hint;       /* list: LMOVEs to pipeline in the next read */
    redisReply *recov;   /* list: the processing list as found at (re)connect */
    size_t recov_left;   /* its elements not yet looked at (taken from the end) */
    iset skip;           /* list: what was in flight when recov was read */
    int pending;         /* stream: still reading this consumer's pending entries */
    char pending_from[48];
    int has_resume;      /* stream: the job's checkpoint names resume (resume_from) */
    ikey resume;         /* ... the last entry its committed state holds */
    int64_t claim_at;    /* stream: when the next XAUTOCLAIM scan starts */
    char claim_from[48]; /* its cursor; "0-0" at the start of a scan */
    int64_t lag_at;      /* when the lag was last told (monotonic ms; 0: never) */
    int lag_warned;      /* the server refused the lag's command on this connection (logged) */
    sbuf json;

    track *track; /* what is in flight (list and stream modes), shared */

    pthread_mutex_t ack_lock; /* guards the fields below */
    redisContext *ack;
    ackitem *backlog;
    size_t nbacklog, capbacklog;
    int64_t ack_retry_at;
    int ack_down;
} redis_src;

/* The connection failed or broke: drops it, schedules the next attempt and
 * returns -1. */
int em_redis_src_outage(redis_src *s, const char *why);
/* argv on the receiver's connection; NULL on an I/O failure. */
redisReply *em_redis_src_command(redis_src *s, int argc, const char **argv);
/* em_redis_src_outage() with "CMD failed: text" (rep: NULL or the reply, freed). */
int em_redis_src_fault(redis_src *s, const char *cmd, redisReply *rep);
/* Pushes one record (list and stream: in flight under k until acknowledged);
 * -1 when the receiver refused it (logged). */
int em_redis_src_push(redis_src *s, em_receiver *r, const char *v, size_t vlen, int64_t ts,
                      const char *meta, size_t mlen, ikey k);
/* "30s" or "250ms". */
void em_redis_fmt_delay(int64_t ms, char *out, size_t n);

/* The modes (redis_list.c, redis_stream.c, redis_pubsub.c). *_setup runs
 * once a connection is made: 0, or -1 after em_redis_src_outage. *_poll
 * reads once, at most `want` records: the count pushed, *fault set when the
 * connection failed. */
int em_redis_list_setup(redis_src *s);
int em_redis_list_poll(redis_src *s, em_receiver *r, uint32_t want, int *fault);
int em_redis_stream_setup(redis_src *s);
int em_redis_stream_poll(redis_src *s, em_receiver *r, uint32_t want, int *fault);
int em_redis_pubsub_setup(redis_src *s);
int em_redis_pubsub_poll(redis_src *s, em_receiver *r, uint32_t want, int *fault);

/* Connector callbacks of one mode (em_connector's positions, resume_from
 * and flush); each does nothing in the other modes. */
void em_redis_stream_positions(void *self, em_block *const *blocks, size_t n, FILE *out);
void em_redis_stream_resume_from(void *self, const char *positions);
void em_redis_pubsub_flush(void *self, em_receiver *r);

/* Acknowledgements (redis_ack.c); *_locked: under s->ack_lock. */
void em_redis_backlog_add_locked(redis_src *s, const char *p, size_t n);
int em_redis_acks_flush_locked(redis_src *s); /* 0 when no acknowledgement waits */
void em_redis_batch_done(void *self, em_block *const *blocks, size_t n, int ok);

#endif

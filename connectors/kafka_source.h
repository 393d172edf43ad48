/* kafka_source.h — what the Kafka source's files share: the source's
 * state (kafka_src), its table of partitions (part, topic), and the calls
 * between kafka.c (create, poll, pause, free), kafka_rebalance.c (the
 * partition table; assign and revoke) and kafka_commit.c (commits, seeks,
 * positions). Not a public interface: core/ sees only em_kafka_connector.
 * Locking and threads are as the top of kafka.c says. */
#ifndef EMBER_KAFKA_SOURCE_H
#define EMBER_KAFKA_SOURCE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include <librdkafka/rdkafka.h>

#include "../core/block.h"
#include "../core/receiver.h"
#include "kafka_changelog.h"

#define CONSUME_BATCH 1024    /* messages asked of librdkafka per call */

typedef struct part {
    struct topic *topic;
    int32_t partition;
    /* guarded by kafka_src.lock; written by the receiver thread except
     * live and seek_to, which batch_done(ok = 0) may also set */
    uint32_t epoch;    /* tag of the records read now */
    uint32_t live;     /* epoch whose records may be committed; 0: none */
    int assigned;
    int revoking;      /* being revoked: its records still unbatched are dropped */
    int64_t committed; /* highest offset committed in this assignment; -1: none yet */
    int64_t done;      /* processed up to here (live epoch), committed or not; -1: nothing */
    int64_t seek_to;   /* >= 0: read again from here (a failed batch, a refused push) */
    unsigned long assigned_at, revoked_at; /* k->rebalances at the last assign / revoke */
    /* batch_done scratch, under lock and commit_lock */
    int64_t upto;
    int touched;
    /* receiver thread only */
    double tokens;
    int rate_paused, kpaused, rewinding;
} part;

typedef struct topic {
    char *name;
    size_t len;
    part **parts; /* by partition number; NULL until first assigned */
    int32_t nparts;
} topic;

typedef struct kafka_src {
    em_receiver *r;   /* the receiver this source feeds (not a counted reference) */
    int closing;      /* in kafka_free: the receiver is going away */
    char *job, *name; /* name: "kafka brokers=... topic=... group=...", for messages */
    char *brokers, *topics_opt, *group;
    rd_kafka_t *rk;
    rd_kafka_queue_t *queue;
    int subscribed, subscribe_failed;
    rd_kafka_message_t *msgs[CONSUME_BATCH];

    pthread_mutex_t lock;        /* guards the part fields marked so, and the tables' growth */
    pthread_mutex_t commit_lock; /* one commit at a time; a revoke waits for it */
    topic **topics;
    size_t ntopics;
    part **touched;
    size_t ntouched, cap_touched, nparts_total;
    atomic_int seeks_pending;

    /* receiver thread only */
    unsigned long rebalances;
    int64_t revoke_wait_ms; /* how long a revoke waits for the batches in flight */
    double rate, burst, resume_at; /* max_rate_per_partition, bucket size, un-pause level */
    int64_t refilled_ms;
    int core_paused, core_pause_applied; /* the core's pause, and whether it reached librdkafka */
    int64_t core_paused_at;
    const rd_kafka_topic_t *last_rkt;
    topic *last_topic;
    char *meta;
    size_t meta_cap;
    int header_warned;
    int headers;        /* format = "record": records carry their headers */
    size_t queued_bytes; /* queued.max.messages.kbytes, counted under memory.max */

    /* Positions of the job's checkpoint (resume_from), each applied at the
     * first assignment of its partition; receiver thread only after start. */
    struct resume_pos {
        char *topic;
        int32_t partition;
        int64_t offset;
    } *resume;
    size_t nresume;

    int64_t lag_at; /* when the lag was last reported (receiver thread) */

    em_changelog *cl; /* the job's keyed state, kept in Kafka; NULL: local files */

    /* logging an outage once: the error code logged, cleared when data flows */
    atomic_int outage;
    atomic_int last_consumer_err;
} kafka_src;

/* Calls fn for every assigned part (receiver thread). */
#define EACH_ASSIGNED(k, p)                                                  \
    for (size_t ti_ = 0; ti_ < (k)->ntopics; ti_++)                           \
        for (int32_t pi_ = 0; pi_ < (k)->topics[ti_]->nparts; pi_++)          \
            for (part *p = (k)->topics[ti_]->parts[pi_]; p && p->assigned; p = NULL)

/* kafka_rebalance.c: the partition table. */
part *em_kafka_find_part(kafka_src *k, const char *name, size_t len, int32_t partition);
/* The part a consumed message came from (a one-entry cache of its topic). */
part *em_kafka_message_part(kafka_src *k, const rd_kafka_message_t *m);
/* The part a record in a block came from, from its meta; *epoch its tag. */
part *em_kafka_record_part(kafka_src *k, const em_push *rec, uint32_t *epoch, topic **cache);

/* kafka_rebalance.c: librdkafka's rebalance callback (assign, revoke). */
void em_kafka_on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                           rd_kafka_topic_partition_list_t *parts, void *opaque);

/* kafka.c: librdkafka's pause state brought in line with ember's. */
void em_kafka_sync_pauses(kafka_src *k);

/* kafka_commit.c: offsets, commits and seeks. */
int em_kafka_commit_list(kafka_src *k, rd_kafka_topic_partition_list_t *l, const char *when);
rd_kafka_topic_partition_list_t *em_kafka_build_pending(kafka_src *k,
                                                       const rd_kafka_topic_partition_list_t *only);
void em_kafka_apply_seeks(kafka_src *k);
void em_kafka_rewind_locked(kafka_src *k, part *p, int64_t offset);
void em_kafka_changelog_rewind(void *arg, int32_t partition, int64_t offset);
void em_kafka_batch_done(void *self, em_block *const *blocks, size_t n, int ok);
void em_kafka_positions(void *self, em_block *const *blocks, size_t n, FILE *out);
void em_kafka_resume_from(void *self, const char *positions);
/* The consumer lag of every assigned partition, told to r once a second. */
void em_kafka_report_lag(kafka_src *k, em_receiver *r);

#endif

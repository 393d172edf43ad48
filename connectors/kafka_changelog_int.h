/* kafka_changelog_int.h — what the changelog's two files share:
 * kafka_changelog.c (the registry, its clients and topic, the commit, the
 * events queued for Lua) and kafka_changelog_restore.c (reading a
 * partition, repairing its tail, restores and reloads). Not an interface:
 * everyone else uses kafka_changelog.h. */
#ifndef EMBER_KAFKA_CHANGELOG_INT_H
#define EMBER_KAFKA_CHANGELOG_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "kafka_changelog.h"

#define META_TIMEOUT_MS 10000
#define FLUSH_TIMEOUT_MS 30000
#define READ_TIMEOUT_MS 60000 /* a restore that reads nothing for this long fails */

typedef struct event {
    int kind; /* 1 load, 2 drop, 3 failure */
    int32_t partition;
    char *data;
    size_t len;
    struct event *next;
} event;

typedef struct staged {
    int32_t partition;
    char *k, *v; /* v NULL: removed */
    size_t klen, vlen;
} staged;

typedef struct pinfo {
    int owned;
    int stale;      /* the batch being committed holds records of an older assignment */
    int touched;    /* commit scratch */
    int64_t offset; /* the input offset of the last marker; -1: none */
    int64_t pos;    /* commit scratch: the batch's position, -1: none */
    int loads;      /* load events queued and not yet taken */
} pinfo;

struct em_changelog {
    struct em_changelog *next; /* registry */
    int refs;
    char *job, *brokers, *input, *topic;
    rd_kafka_t *producer;
    rd_kafka_t *reader;            /* made on first restore */
    pthread_mutex_t read_lock;     /* one restore at a time */
    pthread_mutex_t lock;          /* parts, events */
    pinfo *parts;
    int32_t nparts;
    event *head, *tail;
    staged *staged;                /* worker of the commit only */
    size_t nstaged, cap;
    rd_kafka_resp_err_t dr_err;    /* first delivery error of the commit */
    em_changelog_rewind_fn rewind; /* under lock */
    void *rewind_arg;
    char *version;                 /* the state_version commits write; worker of the commit */
};

/* kafka_changelog.c */
/* A producer (acks=all, ordered) or a reader (assigned, never joined). */
rd_kafka_t *em_changelog_client(em_changelog *cl, rd_kafka_type_t type, char *err, size_t errlen);
/* The info of partition p, grown on demand. Caller holds lock. */
pinfo *em_changelog_part_of(em_changelog *cl, int32_t p);
/* Queues an event for Lua; data is taken. Caller holds lock. */
void em_changelog_queue(em_changelog *cl, int kind, int32_t p, char *data, size_t len);
/* Writes one record to changelog partition p (not waiting). 0, or -1 and err. */
int em_changelog_produce(em_changelog *cl, int32_t p, const void *k, size_t klen, const void *v,
                         size_t vlen, char *err, size_t errlen);

/* kafka_changelog_restore.c */
/* Reads partition p, repairs its tail, queues its load (reload: only if it
 * is still owned and no load is queued). *offset: the marker's input
 * offset, if any. Caller holds read_lock. 0, or -1 (a failure queued). */
int em_changelog_restore(em_changelog *cl, int32_t p, int64_t *offset, int reload);

#endif

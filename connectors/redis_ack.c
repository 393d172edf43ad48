/* redis_ack.c — the Redis source's acknowledgements. batch_done runs on
 * worker threads, so acknowledgements go through a second connection under
 * ack_lock; what could not be acknowledged waits in a backlog, retried by the
 * next batch_done or poll(). A list's items leave the processing list
 * (LREM), a stream's entries are acknowledged (XACK); pub/sub has nothing to
 * acknowledge. */
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/block.h"
#include "../core/clock.h"
#include "../core/connector.h"
#include "../core/log.h"
#include "redis_source.h"

#define ACK_TIMEOUT_MS 10000
#define XACK_CHUNK 1000       /* ids per XACK command */

void em_redis_backlog_add_locked(redis_src *s, const char *p, size_t n)
{
    if (s->nbacklog == s->capbacklog) {
        size_t cap = s->capbacklog ? s->capbacklog * 2 : 1024;
        ackitem *b = realloc(s->backlog, cap * sizeof *b);
        if (!b)
            goto oom;
        s->backlog = b;
        s->capbacklog = cap;
    }
    char *c = malloc(n + 1);
    if (!c)
        goto oom;
    memcpy(c, p, n);
    c[n] = '\0';
    s->backlog[s->nbacklog++] = (ackitem){c, n};
    return;
oom:
    em_log(EM_LOG_ERROR, s->job, "%s: out of memory keeping an acknowledgement; that record "
           "will be delivered again", s->name);
}

static ikey item_key(const redis_src *s, const char *p, size_t n)
{
    ikey k = {0, 0};
    if (s->mode == LIST)
        return em_redis_value_key(p, n);
    em_redis_parse_id(p, n, &k);
    return k;
}

/* The acknowledging connection, (re)made when missing or closed by the
 * server while idle (a restart); NULL while waiting to retry. */
static redisContext *ack_conn_locked(redis_src *s, size_t waiting)
{
    if (s->ack) {
        struct pollfd p = {.fd = s->ack->fd, .events = POLLIN};
        if (!s->ack->err && poll(&p, 1, 0) == 0)
            return s->ack;
        redisFree(s->ack); /* EOF or stray bytes: start afresh */
        s->ack = NULL;
    }
    if (em_clock_mono_ms() < s->ack_retry_at)
        return NULL;
    char why[256];
    s->ack = em_redis_connect(&s->url, ACK_TIMEOUT_MS, why, sizeof why);
    if (!s->ack) {
        s->ack_retry_at = em_clock_mono_ms() + FIRST_DELAY_MS;
        if (!s->ack_down)
            em_log(EM_LOG_WARN, s->job, "%s: cannot acknowledge %zu records yet: %s; retrying",
                   s->name, waiting, why);
        s->ack_down = 1;
    }
    return s->ack;
}

/* Acknowledges items[0, n) (not owned): LREM processing -1 item for a list
 * (-1 scans from the tail, where the oldest items are, so an in-order batch
 * finds each at once), XACK in chunks for a stream. Returns how many, from
 * the start, the server confirmed; those leave the in-flight set. On a
 * connection failure the rest is for the caller to keep. An error reply
 * (the key changed type, the group was deleted) is logged and counts as
 * done: retrying cannot help. */
static size_t send_acks_locked(redis_src *s, const ackitem *items, size_t n)
{
    redisContext *c = n ? ack_conn_locked(s, n) : NULL;
    if (!c)
        return 0;
    size_t ncmd = 0;
    if (s->mode == LIST) {
        const char *argv[4] = {"LREM", s->processing, "-1", NULL};
        size_t lens[4] = {4, strlen(s->processing), 2, 0};
        for (size_t i = 0; i < n; i++, ncmd++) {
            argv[3] = items[i].s;
            lens[3] = items[i].len;
            redisAppendCommandArgv(c, 4, argv, lens);
        }
    } else {
        const char *argv[XACK_CHUNK + 3] = {"XACK", s->key, s->group};
        size_t lens[XACK_CHUNK + 3] = {4, strlen(s->key), strlen(s->group)};
        for (size_t i = 0; i < n; i += XACK_CHUNK, ncmd++) {
            size_t m = n - i < XACK_CHUNK ? n - i : XACK_CHUNK;
            for (size_t k = 0; k < m; k++) {
                argv[3 + k] = items[i + k].s;
                lens[3 + k] = items[i + k].len;
            }
            redisAppendCommandArgv(c, (int)m + 3, argv, lens);
        }
    }
    const char *verb = s->mode == LIST ? "LREM" : "XACK";
    size_t done = 0, missing = 0;
    char why[300] = "";
    for (size_t k = 0; k < ncmd; k++) {
        size_t m = s->mode == LIST ? 1 : (n - done < XACK_CHUNK ? n - done : XACK_CHUNK);
        redisReply *rep;
        if (redisGetReply(c, (void **)&rep) != REDIS_OK) {
            em_redis_io_error(c, verb, why, sizeof why);
            break;
        }
        if (rep->type == REDIS_REPLY_ERROR)
            em_log(EM_LOG_ERROR, s->job, "%s: %s failed: %s; %zu records cannot be acknowledged",
                   s->name, verb, rep->str, m);
        else if (rep->type == REDIS_REPLY_INTEGER && (size_t)rep->integer < m)
            missing += m - (size_t)rep->integer;
        freeReplyObject(rep);
        done += m;
    }
    if (missing)
        em_log(EM_LOG_DEBUG, s->job, "%s: %zu acknowledged records were no longer there", s->name,
               missing);
    pthread_mutex_lock(&s->track->lock);
    for (size_t i = 0; i < done; i++)
        em_redis_iset_del(&s->track->set, item_key(s, items[i].s, items[i].len));
    pthread_mutex_unlock(&s->track->lock);
    if (why[0]) {
        redisFree(s->ack);
        s->ack = NULL;
        s->ack_retry_at = em_clock_mono_ms() + FIRST_DELAY_MS;
        if (!s->ack_down)
            em_log(EM_LOG_WARN, s->job, "%s: %s; %zu records wait to be acknowledged, retrying",
                   s->name, why, n - done);
        s->ack_down = 1;
    } else {
        if (s->ack_down)
            em_log(EM_LOG_INFO, s->job, "%s: acknowledging again", s->name);
        s->ack_down = 0;
    }
    return done;
}

/* Sends the acknowledgements that failed before. Returns 0 when none is
 * left. */
int em_redis_acks_flush_locked(redis_src *s)
{
    size_t done = send_acks_locked(s, s->backlog, s->nbacklog);
    if (!done)
        return s->nbacklog ? -1 : 0;
    for (size_t i = 0; i < done; i++)
        free(s->backlog[i].s);
    memmove(s->backlog, s->backlog + done, (s->nbacklog - done) * sizeof *s->backlog);
    s->nbacklog -= done;
    return s->nbacklog ? -1 : 0;
}

/* Runs on a worker thread once every output of a batch finished. ok: the
 * records' items leave the processing list (LREM) or their entries are
 * acknowledged (XACK), through the acknowledging connection, straight from
 * the blocks; only what could not be sent is copied into the backlog. Not
 * ok: they stay where they are and leave the in-flight set, so that they
 * come again — a list's after the next reconnect or restart, a stream's
 * through XAUTOCLAIM once idle for claim_idle. */
void em_redis_batch_done(void *self, em_block *const *blocks, size_t n, int ok)
{
    redis_src *s = self;
    if (s->mode == PUBSUB)
        return;
    size_t total = 0;
    for (size_t b = 0; b < n; b++)
        total += blocks[b]->count;
    ackitem *items = malloc((total ? total : 1) * sizeof *items);
    size_t k = 0;
    for (size_t b = 0; b < n && items; b++) {
        uint32_t run = 0;
        for (uint32_t i = 0; i < blocks[b]->count; i++, k++) {
            em_push rec;
            em_block_read(blocks[b], i, &run, &rec);
            int list = s->mode == LIST;
            items[k].s = (char *)(list ? rec.value : rec.extra); /* into the block's arena */
            items[k].len = list ? rec.value_len : rec.extra_len;
        }
    }
    if (!items) {
        em_log(EM_LOG_ERROR, s->job, "%s: out of memory: %zu records are not acknowledged and "
               "will be delivered again", s->name, total);
        return;
    }
    if (!ok) {
        pthread_mutex_lock(&s->track->lock);
        for (size_t i = 0; i < total; i++)
            em_redis_iset_del(&s->track->set, item_key(s, items[i].s, items[i].len));
        pthread_mutex_unlock(&s->track->lock);
        free(items);
        char d[32];
        em_redis_fmt_delay(s->claim_idle_ms, d, sizeof d);
        if (s->mode == LIST)
            em_log(EM_LOG_WARN, s->job, "%s: a failed batch left %zu items in processing list "
                   "'%s'; they are read again after the next reconnect or restart", s->name, total,
                   s->processing);
        else
            em_log(EM_LOG_WARN, s->job, "%s: a failed batch left %zu entries pending in group "
                   "'%s'; they are read again once idle for claim_idle (%s)", s->name, total,
                   s->group, d);
        return;
    }
    pthread_mutex_lock(&s->ack_lock);
    s->ack_retry_at = 0; /* a new batch is worth a new attempt */
    size_t done = 0;
    if (em_redis_acks_flush_locked(s) == 0) /* older ones first; if they fail, so would these */
        done = send_acks_locked(s, items, total);
    for (size_t i = done; i < total; i++)
        em_redis_backlog_add_locked(s, items[i].s, items[i].len);
    pthread_mutex_unlock(&s->ack_lock);
    free(items);
}

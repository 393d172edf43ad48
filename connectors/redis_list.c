/* redis_list.c — the Redis source's list mode: a reliable queue. LMOVE
 * key → processing list (pipelined, then BLMOVE to wait); the
 * acknowledgement (redis_ack.c) removes exactly those items with LREM. Items
 * found in the processing list when the connection is (re)made and not in
 * flight here are pushed first: left by a crash, by a failed batch, or
 * moved while a reply was lost. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/clock.h"
#include "../core/log.h"
#include "redis_source.h"

/* list: reads the processing list and remembers what is in flight now, so
 * that em_redis_list_poll() pushes the rest first. */
int em_redis_list_setup(redis_src *s)
{
    pthread_mutex_lock(&s->track->lock);
    int bad = em_redis_iset_copy(&s->skip, &s->track->set);
    pthread_mutex_unlock(&s->track->lock);
    if (bad)
        return em_redis_src_outage(s, "out of memory");
    const char *argv[] = {"LRANGE", s->processing, "0", "-1"};
    redisReply *rep = em_redis_src_command(s, 4, argv);
    if (!rep || rep->type != REDIS_REPLY_ARRAY)
        return em_redis_src_fault(s, "LRANGE", rep);
    size_t fresh = 0; /* for the log line (an identical item in flight hides one) */
    for (size_t i = 0; i < rep->elements; i++)
        fresh += rep->element[i]->type == REDIS_REPLY_STRING &&
                 !em_redis_iset_count(&s->skip, em_redis_value_key(rep->element[i]->str,
                                                                   rep->element[i]->len));
    if (fresh)
        em_log(EM_LOG_INFO, s->job,
               "%s: %zu items in processing list '%s'%s; processing them first", s->name, fresh,
               s->processing,
               s->connected_once ? " not in flight here" : " left by an earlier run");
    s->recov = rep;
    s->recov_left = rep->elements;
    return 0;
}

/* list mode, one poll: items recovered from the processing list first, then
 * up to `want` pipelined LMOVEs (their number adapts to what the list
 * held last time, so an idle queue costs one LMOVE and one BLMOVE a read);
 * when none brought an item, one BLMOVE waits up to `block`. */
int em_redis_list_poll(redis_src *s, em_receiver *r, uint32_t want, int *fault)
{
    uint32_t pushed = 0;
    int64_t now = em_clock_now_ms();
    if (s->recov) {
        while (pushed < want && s->recov_left > 0) {
            redisReply *e = s->recov->element[--s->recov_left]; /* the tail is the oldest */
            if (e->type != REDIS_REPLY_STRING)
                continue;
            ikey k = em_redis_value_key(e->str, e->len);
            if (em_redis_iset_count(&s->skip, k) > 0) { /* in flight here: its batch removes it */
                em_redis_iset_del(&s->skip, k);
                continue;
            }
            if (em_redis_src_push(s, r, e->str, e->len, now, NULL, 0, k) != 0)
                break;
            pushed++;
        }
        if (s->recov_left == 0) {
            freeReplyObject(s->recov);
            s->recov = NULL;
            em_redis_iset_free(&s->skip);
        }
        if (pushed || s->recov)
            return (int)pushed;
    }

    uint32_t n = want < s->hint ? want : s->hint;
    const char *argv[] = {"LMOVE", s->key, s->processing, "RIGHT", "LEFT", NULL};
    for (uint32_t i = 0; i < n; i++)
        redisAppendCommandArgv(s->c, 5, argv, NULL);
    uint32_t got = 0;
    char errtext[256] = "";
    for (uint32_t i = 0; i < n; i++) {
        redisReply *rep;
        if (redisGetReply(s->c, (void **)&rep) != REDIS_OK) {
            *fault = 1;
            em_redis_src_fault(s, "LMOVE", NULL);
            return (int)pushed;
        }
        if (rep->type == REDIS_REPLY_STRING) {
            got++;
            if (em_redis_src_push(s, r, rep->str, rep->len, now, NULL, 0,
                                  em_redis_value_key(rep->str, rep->len)) == 0)
                pushed++;
        } else if (rep->type == REDIS_REPLY_ERROR && !errtext[0]) {
            snprintf(errtext, sizeof errtext, "LMOVE %s failed: %s", s->key, rep->str);
        }
        freeReplyObject(rep);
    }
    if (errtext[0]) {
        *fault = 1;
        em_redis_src_outage(s, errtext);
        return (int)pushed;
    }
    s->hint = got == n ? (n * 2 < s->count ? n * 2 : s->count) : (got * 2 > 1 ? got * 2 : 1);
    if (got > 0 || pushed >= want)
        return (int)pushed;

    char secs[32];
    snprintf(secs, sizeof secs, "%.3f", (double)s->block_ms / 1000.0);
    argv[5] = secs;
    argv[0] = "BLMOVE";
    redisReply *rep = em_redis_src_command(s, 6, argv);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        *fault = 1;
        em_redis_src_fault(s, "BLMOVE", rep);
        return (int)pushed;
    }
    if (rep->type == REDIS_REPLY_STRING &&
        em_redis_src_push(s, r, rep->str, rep->len, em_clock_now_ms(), NULL, 0,
                          em_redis_value_key(rep->str, rep->len)) == 0)
        pushed++;
    freeReplyObject(rep);
    return (int)pushed;
}

/* redis_pubsub.c — the Redis source's pub/sub mode: SUBSCRIBE or
 * PSUBSCRIBE, fire-and-forget: nothing to acknowledge (what was received is
 * kept by the write-ahead log when the job turns it on). */
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../core/clock.h"
#include "../core/log.h"
#include "redis_source.h"

int em_redis_pubsub_setup(redis_src *s)
{
    const char *verb = s->pattern ? "PSUBSCRIBE" : "SUBSCRIBE";
    const char **argv = calloc((size_t)s->nchannels + 1, sizeof *argv);
    if (!argv)
        return em_redis_src_outage(s, "out of memory");
    argv[0] = verb;
    for (int i = 0; i < s->nchannels; i++)
        argv[i + 1] = s->channels[i];
    redisAppendCommandArgv(s->c, s->nchannels + 1, argv, NULL);
    free(argv);
    for (int i = 0; i < s->nchannels; i++) { /* one confirmation per channel */
        redisReply *rep;
        if (redisGetReply(s->c, (void **)&rep) != REDIS_OK)
            return em_redis_src_fault(s, verb, NULL);
        if (rep->type != REDIS_REPLY_ARRAY)
            return em_redis_src_fault(s, verb, rep);
        freeReplyObject(rep);
    }
    return 0;
}

/* Pushes a pub/sub reply when it is a message: ["message", channel,
 * payload] or ["pmessage", pattern, channel, payload]. Returns 1 when it
 * pushed one, else 0 (a subscription confirmation, a refused record). */
static int push_message(redis_src *s, em_receiver *r, const redisReply *rep)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING)
        return 0;
    const redisReply *kind = rep->element[0];
    int pm = kind->len == 8 && memcmp(kind->str, "pmessage", 8) == 0;
    int m = kind->len == 7 && memcmp(kind->str, "message", 7) == 0;
    if (!(m || (pm && rep->elements >= 4)))
        return 0;
    const redisReply *ch = rep->element[pm ? 2 : 1], *pl = rep->element[pm ? 3 : 2];
    return em_redis_src_push(s, r, pl->str ? pl->str : "", pl->len, em_clock_now_ms(), ch->str,
                             ch->len, (ikey){0, 0}) == 0;
}

/* pubsub mode, one poll: messages already buffered first; waits up to
 * `block` only while none was pushed. */
int em_redis_pubsub_poll(redis_src *s, em_receiver *r, uint32_t want, int *fault)
{
    uint32_t pushed = 0;
    int64_t deadline = em_clock_mono_ms() + s->block_ms;
    while (pushed < want) {
        redisReply *rep = NULL;
        if (redisGetReplyFromReader(s->c, (void **)&rep) != REDIS_OK) {
            *fault = 1;
            em_redis_src_fault(s, "reading messages", NULL);
            return (int)pushed;
        }
        if (rep) {
            pushed += (uint32_t)push_message(s, r, rep);
            freeReplyObject(rep);
            continue;
        }
        int64_t left = deadline - em_clock_mono_ms();
        struct pollfd p = {.fd = s->c->fd, .events = POLLIN};
        int rc = poll(&p, 1, pushed || left <= 0 ? 0 : (int)left);
        if (rc <= 0)
            break;
        if (redisBufferRead(s->c) != REDIS_OK) {
            *fault = 1;
            em_redis_src_fault(s, "reading messages", NULL);
            break;
        }
    }
    return (int)pushed;
}

/* The receiver is stopping. pubsub: the messages hiredis already holds are
 * pushed, nothing more is read (a list's or stream's unread records are
 * safe in Redis). */
void em_redis_pubsub_flush(void *self, em_receiver *r)
{
    redis_src *s = self;
    if (s->mode != PUBSUB || !s->c)
        return;
    int pushed = 0;
    for (;;) {
        redisReply *rep = NULL;
        if (redisGetReplyFromReader(s->c, (void **)&rep) != REDIS_OK || !rep)
            break;
        pushed += push_message(s, r, rep);
        freeReplyObject(rep);
    }
    if (pushed)
        em_log(EM_LOG_DEBUG, s->job, "%s: %d buffered messages pushed at stop", s->name, pushed);
}

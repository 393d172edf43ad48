/* redis_stream.c — the Redis source's stream mode: XREADGROUP in a consumer
 * group; this consumer's pending entries first (after a crash or a lost
 * reply), then new ones ('>'); XAUTOCLAIM takes over entries idle longer
 * than claim_idle (a dead consumer's, or a failed batch's). The
 * acknowledgement (XACK, redis_ack.c) takes exactly the ids of a batch. The
 * positions the job's checkpoint keeps, and the resume from them, are here
 * too: only a stream can tell which entries a committed state holds. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/block.h"
#include "../core/clock.h"
#include "../core/connector.h"
#include "../core/log.h"
#include "redis_source.h"

static int sb_reserve(sbuf *b, size_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int sb_put(sbuf *b, const char *s, size_t n)
{
    if (sb_reserve(b, n) != 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

/* Appends s as a JSON string. */
static int sb_json_str(sbuf *b, const char *s, size_t n)
{
    if (sb_reserve(b, n * 6 + 2) != 0)
        return -1;
    char *w = b->p + b->len;
    *w++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *w++ = '\\';
            *w++ = (char)c;
        } else if (c == '\n') {
            *w++ = '\\';
            *w++ = 'n';
        } else if (c == '\t') {
            *w++ = '\\';
            *w++ = 't';
        } else if (c == '\r') {
            *w++ = '\\';
            *w++ = 'r';
        } else if (c < 0x20) {
            w += sprintf(w, "\\u%04x", c);
        } else {
            *w++ = (char)c;
        }
    }
    *w++ = '"';
    b->len = (size_t)(w - b->p);
    return 0;
}

/* The record value of a stream entry: its field `value` when present, else
 * all fields as a JSON object. Points into the reply or into s->json. */
static int entry_value(redis_src *s, const redisReply *f, const char **v, size_t *n)
{
    for (size_t i = 0; i + 1 < f->elements; i += 2)
        if (f->element[i]->len == 5 && memcmp(f->element[i]->str, "value", 5) == 0) {
            *v = f->element[i + 1]->str;
            *n = f->element[i + 1]->len;
            return 0;
        }
    s->json.len = 0;
    if (sb_put(&s->json, "{", 1) != 0)
        return -1;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        if ((i && sb_put(&s->json, ",", 1) != 0) ||
            sb_json_str(&s->json, f->element[i]->str, f->element[i]->len) != 0 ||
            sb_put(&s->json, ":", 1) != 0 ||
            sb_json_str(&s->json, f->element[i + 1]->str, f->element[i + 1]->len) != 0)
            return -1;
    }
    if (sb_put(&s->json, "}", 1) != 0)
        return -1;
    *v = s->json.p;
    *n = s->json.len;
    return 0;
}

/* Pushes the entries of one XREADGROUP / XAUTOCLAIM reply (an array of
 * [id, [field, value, ...]]), skipping those in flight here unless `fresh`
 * (read with '>'). An entry deleted while pending comes as [id, nil]: it is
 * acknowledged, not pushed. last_id gets the id of the last entry handled.
 * Returns the count pushed. */
static uint32_t push_entries(redis_src *s, em_receiver *r, const redisReply *entries,
                             int fresh, char *last_id, size_t last_len)
{
    uint32_t pushed = 0;
    for (size_t i = 0; i < entries->elements; i++) {
        const redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
            e->element[0]->type != REDIS_REPLY_STRING)
            continue;
        const redisReply *id = e->element[0], *fields = e->element[1];
        ikey k;
        if (em_redis_parse_id(id->str, id->len, &k) != 0)
            continue;
        if (fields->type != REDIS_REPLY_ARRAY) {
            em_log(EM_LOG_WARN, s->job, "%s: pending entry %.*s was deleted from '%s'; "
                   "acknowledging it", s->name, (int)id->len, id->str, s->key);
            pthread_mutex_lock(&s->ack_lock);
            em_redis_backlog_add_locked(s, id->str, id->len);
            pthread_mutex_unlock(&s->ack_lock);
        } else {
            uint32_t busy = 0;
            if (!fresh) { /* entries read with '>' are new: none can be in flight */
                pthread_mutex_lock(&s->track->lock);
                busy = em_redis_iset_count(&s->track->set, k);
                pthread_mutex_unlock(&s->track->lock);
            }
            if (!busy && s->pending && s->has_resume &&
                (k.a < s->resume.a || (k.a == s->resume.a && k.b <= s->resume.b))) {
                /* Ours, pending, and in the job's committed state already: a
                 * crash came between the commit and the XACK. Acknowledge,
                 * do not count it again. */
                pthread_mutex_lock(&s->ack_lock);
                em_redis_backlog_add_locked(s, id->str, id->len);
                pthread_mutex_unlock(&s->ack_lock);
                busy = 1;
            }
            if (!busy) {
                const char *v;
                size_t n;
                if (entry_value(s, fields, &v, &n) != 0) {
                    em_log(EM_LOG_ERROR, s->job, "%s: out of memory", s->name);
                    break;
                }
                if (em_redis_src_push(s, r, v, n, (int64_t)k.a, id->str, id->len, k) != 0)
                    break;
                pushed++;
            }
        }
        if (last_id) /* only past what was handled: a refused entry is read again */
            snprintf(last_id, last_len, "%.*s", (int)id->len, id->str);
    }
    return pushed;
}

/* The entries of the one stream in an XREADGROUP reply; NULL for none. */
static const redisReply *stream_entries(const redisReply *rep)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1)
        return NULL;
    const redisReply *st = rep->element[0];
    if (st->type != REDIS_REPLY_ARRAY || st->elements < 2 ||
        st->element[1]->type != REDIS_REPLY_ARRAY)
        return NULL;
    return st->element[1];
}

/* stream: makes the group if missing (from the start of the stream, so
 * entries written before the first run are read) and starts with this
 * consumer's pending entries. */
int em_redis_stream_setup(redis_src *s)
{
    const char *argv[] = {"XGROUP", "CREATE", s->key, s->group, "0", "MKSTREAM"};
    redisReply *rep = em_redis_src_command(s, 6, argv);
    if (!rep)
        return em_redis_src_fault(s, "XGROUP CREATE", rep);
    if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "BUSYGROUP", 9) != 0)
        return em_redis_src_fault(s, "XGROUP CREATE", rep);
    if (rep->type != REDIS_REPLY_ERROR)
        em_log(EM_LOG_INFO, s->job, "%s: created consumer group '%s' on stream '%s'", s->name,
               s->group, s->key);
    freeReplyObject(rep);
    s->pending = 1;
    strcpy(s->pending_from, "0");
    strcpy(s->claim_from, "0-0");
    s->claim_at = em_clock_mono_ms();
    return 0;
}

/* stream mode, one poll: this consumer's pending entries (after a start or
 * reconnect), then an XAUTOCLAIM step when one is due, then new entries,
 * waiting up to `block`. */
int em_redis_stream_poll(redis_src *s, em_receiver *r, uint32_t want, int *fault)
{
    char cnt[16], blk[24], idle[24];
    snprintf(cnt, sizeof cnt, "%u", want);
    if (s->pending) {
        const char *argv[] = {"XREADGROUP", "GROUP", s->group, s->consumer, "COUNT", cnt,
                              "STREAMS", s->key, s->pending_from};
        redisReply *rep = em_redis_src_command(s, 9, argv);
        if (!rep || rep->type == REDIS_REPLY_ERROR) {
            *fault = 1;
            return em_redis_src_fault(s, "XREADGROUP", rep), 0;
        }
        const redisReply *entries = stream_entries(rep);
        uint32_t pushed = 0;
        if (!entries || entries->elements == 0)
            s->pending = 0; /* all caught up */
        else
            pushed = push_entries(s, r, entries, 0, s->pending_from, sizeof s->pending_from);
        freeReplyObject(rep);
        return (int)pushed;
    }
    if (em_clock_mono_ms() >= s->claim_at) {
        snprintf(idle, sizeof idle, "%lld", (long long)s->claim_idle_ms);
        const char *argv[] = {"XAUTOCLAIM", s->key, s->group, s->consumer, idle, s->claim_from,
                              "COUNT", cnt};
        redisReply *rep = em_redis_src_command(s, 8, argv);
        if (!rep || rep->type == REDIS_REPLY_ERROR || rep->type != REDIS_REPLY_ARRAY ||
            rep->elements < 2 || rep->element[0]->type != REDIS_REPLY_STRING) {
            *fault = 1;
            return em_redis_src_fault(s, "XAUTOCLAIM", rep), 0;
        }
        const redisReply *cur = rep->element[0];
        uint32_t pushed = 0;
        if (rep->element[1]->type == REDIS_REPLY_ARRAY)
            pushed = push_entries(s, r, rep->element[1], 0, NULL, 0);
        if (pushed)
            em_log(EM_LOG_INFO, s->job, "%s: took over %u entries pending longer than "
                   "claim_idle in group '%s'", s->name, pushed, s->group);
        if (cur->len == 3 && memcmp(cur->str, "0-0", 3) == 0) { /* the scan is complete */
            int64_t every = s->claim_idle_ms / 2 < 1000 ? 1000 : s->claim_idle_ms / 2;
            s->claim_at = em_clock_mono_ms() + every;
            strcpy(s->claim_from, "0-0");
        } else {
            snprintf(s->claim_from, sizeof s->claim_from, "%.*s", (int)cur->len, cur->str);
        }
        freeReplyObject(rep);
        if (pushed)
            return (int)pushed;
    }
    snprintf(blk, sizeof blk, "%lld", (long long)s->block_ms);
    const char *argv[] = {"XREADGROUP", "GROUP", s->group, s->consumer, "COUNT", cnt,
                          "BLOCK", blk, "STREAMS", s->key, ">"};
    redisReply *rep = em_redis_src_command(s, 11, argv);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        *fault = 1;
        return em_redis_src_fault(s, "XREADGROUP", rep), 0;
    }
    uint32_t pushed = 0;
    const redisReply *entries = stream_entries(rep);
    if (entries)
        pushed = push_entries(s, r, entries, 1, NULL, 0);
    freeReplyObject(rep);
    return (int)pushed;
}

/* Stream mode: the highest entry id these blocks hold (the records' extra bytes),
 * as "<key> <id>". Lists and pub/sub cannot be rewound: nothing. */
void em_redis_stream_positions(void *self, em_block *const *blocks, size_t n, FILE *out)
{
    redis_src *s = self;
    if (s->mode != STREAM)
        return;
    ikey max = {0, 0};
    int any = 0;
    for (size_t b = 0; b < n; b++)
        for (uint32_t i = 0, run = 0; i < blocks[b]->count; i++) {
            em_push rec;
            em_block_read(blocks[b], i, &run, &rec);
            ikey k;
            if (!rec.extra || em_redis_parse_id(rec.extra, rec.extra_len, &k) != 0)
                continue;
            if (!any || k.a > max.a || (k.a == max.a && k.b > max.b))
                max = k;
            any = 1;
        }
    if (any)
        fprintf(out, "%s %" PRIu64 "-%" PRIu64 "\n", s->key, max.a, max.b);
}

/* A line "<key> <id>" for this stream: its own pending entries up to id
 * are acknowledged at start instead of read again. */
void em_redis_stream_resume_from(void *self, const char *positions)
{
    redis_src *s = self;
    size_t kl = strlen(s->key);
    for (const char *p = positions; p && *p;) {
        size_t l = strcspn(p, "\n");
        if (s->mode == STREAM && l > kl + 1 && strncmp(p, s->key, kl) == 0 && p[kl] == ' ' &&
            em_redis_parse_id(p + kl + 1, l - kl - 1, &s->resume) == 0) {
            s->has_resume = 1;
            em_log(EM_LOG_INFO, s->job, "%s: entries up to %.*s are in the job's committed "
                   "state", s->name, (int)(l - kl - 1), p + kl + 1);
        }
        p += l + (p[l] == '\n');
    }
}

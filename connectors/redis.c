/* redis.c — Redis as a source (list, stream, pub/sub), over hiredis 0.14.
 *
 * Source modes, each read only inside poll(), at most `max` records a call,
 * so the rate cap is the size of the next read and a backlog stays in Redis:
 *
 *   list    a reliable queue. LMOVE key → processing list (pipelined, then
 *           BLMOVE to wait); batch_done(ok) removes exactly those items with
 *           LREM. Items found in the processing list when the connection is
 *           (re)made and not in flight here are pushed first: left by a crash,
 *           by a failed batch, or moved while a reply was lost.
 *   stream  XREADGROUP in a consumer group; this consumer's pending entries
 *           first (after a crash or a lost reply), then new ones ('>');
 *           batch_done(ok) XACKs exactly those ids; XAUTOCLAIM takes over
 *           entries idle longer than claim_idle (a dead consumer's, or a
 *           failed batch's).
 *   pubsub  SUBSCRIBE / PSUBSCRIBE: fire-and-forget, nothing to acknowledge.
 *
 * The receiver thread owns its connection. batch_done runs on worker
 * threads, so acknowledgements go through a second connection under
 * ack_lock; what could not be acknowledged waits in a backlog, retried by the
 * next batch_done or poll(). A multiset of what was pushed and is not yet
 * acknowledged (value hashes for a list, entry ids for a stream; shared by
 * the receivers of one processing list or consumer, see `track`) lets a
 * re-read after a reconnect, or a new receiver after a reload, skip it.
 *
 * This file holds the options, connecting, pushing, the lag and the
 * connector table; the modes are redis_list.c, redis_stream.c and
 * redis_pubsub.c, the acknowledgements redis_ack.c, the in-flight multiset
 * redis_inflight.c, and what they share redis_source.h. The sink is
 * redis_sink.c; what source and sink both use (the URL, connecting) is
 * redis_conn.c.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/connector.h"
#include "../core/identity.h"
#include "../core/log.h"
#include "../core/receiver.h"
#include "redis_source.h"

#define IO_MARGIN_MS 10000    /* a blocking read may take `block` plus this before it hangs */
#define MAX_DELAY_MS 30000
#define LAG_PERIOD_MS 1000    /* how often the backlog is asked and told to the receiver */
#define LAG_RETRY_MS 60000    /* after the server refused the lag's command */

static const em_option redis_options[] = {
    {"url", EM_OPT_STRING, NULL, "redis://[:password@]host[:port][/db] (required)"},
    {"mode", EM_OPT_STRING, NULL, "list, stream or pubsub (required)"},
    {"key", EM_OPT_STRING, NULL, "the list or stream key (list and stream modes)"},
    {"channel", EM_OPT_STRING, NULL, "channels to subscribe to, comma-separated (pubsub)"},
    {"pattern", EM_OPT_BOOL, "false", "channel names are glob patterns: PSUBSCRIBE (pubsub)"},
    {"group", EM_OPT_STRING, NULL, "consumer group (stream; default ember-<job>)"},
    {"consumer", EM_OPT_STRING, NULL, "consumer name (stream; default ember-<ember.id>-<job>)"},
    {"processing_key", EM_OPT_STRING, NULL,
     "list of the items being processed (list; default <key>:processing:<job>)"},
    {"block", EM_OPT_DURATION, "100ms", "how long one read may wait for data"},
    {"count", EM_OPT_INT, "1000", "most records one read takes"},
    {"claim_idle", EM_OPT_DURATION, "30s",
     "stream: take over pending entries idle this long (XAUTOCLAIM)"},
    {NULL, 0, NULL, NULL},
};

void em_redis_fmt_delay(int64_t ms, char *out, size_t n)
{
    if (ms % 1000 == 0)
        snprintf(out, n, "%llds", (long long)(ms / 1000));
    else
        snprintf(out, n, "%lldms", (long long)ms);
}

static char *dup_or_default(const char *v, const char *fmt, const char *a, const char *b)
{
    if (v)
        return strdup(v);
    size_t n = strlen(fmt) + strlen(a) + (b ? strlen(b) : 0) + 1;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, fmt, a, b);
    return s;
}

/* Splits "a, b,c" into channel names. */
static int split_channels(redis_src *s, const char *list)
{
    for (const char *p = list; *p;) {
        p += strspn(p, ", ");
        size_t n = strcspn(p, ", ");
        if (!n)
            break;
        char **ch = realloc(s->channels, (size_t)(s->nchannels + 1) * sizeof *ch);
        if (!ch)
            return -1;
        s->channels = ch;
        if (!(ch[s->nchannels] = strndup(p, n)))
            return -1;
        s->nchannels++;
        p += n;
    }
    return 0;
}

static void redis_free(void *self);

/* Checks the options against the mode (an option of another mode is an
 * error, so a typo'd setup fails at load, not in production) and builds an
 * unconnected source. */
static void *redis_create(const em_props *props, em_receiver *r, char *err, size_t errlen)
{
    const char *url = em_props_get(props, "url"), *mode = em_props_get(props, "mode");
    const char *key = em_props_get(props, "key"), *channel = em_props_get(props, "channel");
    const char *job = em_receiver_job(r);
    if (!url) {
        snprintf(err, errlen, "redis source: option 'url' is required "
                              "(redis://[:password@]host[:port][/db])");
        return NULL;
    }
    char why[200];
    em_redis_url u;
    if (em_redis_url_parse(url, &u, why, sizeof why) != 0) {
        snprintf(err, errlen, "redis source: option 'url': %s", why);
        return NULL;
    }
    rmode m;
    if (!mode) {
        snprintf(err, errlen, "redis source: option 'mode' is required (list, stream or pubsub)");
        goto bad;
    } else if (strcmp(mode, "list") == 0) {
        m = LIST;
    } else if (strcmp(mode, "stream") == 0) {
        m = STREAM;
    } else if (strcmp(mode, "pubsub") == 0) {
        m = PUBSUB;
    } else {
        snprintf(err, errlen, "redis source: option 'mode' = '%s' is not list, stream or pubsub",
                 mode);
        goto bad;
    }
    /* Options of one mode only (those with a default cannot be told from unset). */
    static const char *const only_list[] = {"processing_key", NULL};
    static const char *const only_stream[] = {"group", "consumer", NULL};
    static const char *const only_pubsub[] = {"channel", NULL};
    const char *const *others[3][2] = {{only_stream, only_pubsub},
                                       {only_list, only_pubsub},
                                       {only_list, only_stream}};
    static const char *mode_of[3] = {"list", "stream", "pubsub"};
    for (int g = 0; g < 2; g++)
        for (const char *const *o = others[m][g]; *o; o++)
            if (em_props_get(props, *o)) {
                snprintf(err, errlen, "redis source: option '%s' does not apply to mode = %s",
                         *o, mode_of[m]);
                goto bad;
            }
    if (m != PUBSUB && (!key || !*key)) {
        snprintf(err, errlen, "redis source: option 'key' is required in mode = %s", mode);
        goto bad;
    }
    if (m == PUBSUB && key) {
        snprintf(err, errlen, "redis source: option 'key' does not apply to mode = pubsub "
                              "(use 'channel')");
        goto bad;
    }
    if (m == PUBSUB && (!channel || !channel[strspn(channel, ", ")])) {
        snprintf(err, errlen, "redis source: option 'channel' is required in mode = pubsub");
        goto bad;
    }
    int64_t count = em_props_int(props, "count", 1000);
    int64_t block = em_props_ms(props, "block", 100);
    if (count < 1 || count > 1000000) {
        snprintf(err, errlen, "redis source: option 'count' must be 1-1000000, got %lld",
                 (long long)count);
        goto bad;
    }
    if (block < 1) {
        snprintf(err, errlen, "redis source: option 'block' must be at least 1ms "
                              "(0 would mean waiting forever)");
        goto bad;
    }

    redis_src *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "redis source: out of memory");
        goto bad;
    }
    s->url = u;
    s->mode = m;
    s->count = (uint32_t)count;
    s->hint = s->count;
    s->block_ms = block;
    s->claim_idle_ms = em_props_ms(props, "claim_idle", 30000);
    s->pattern = em_props_bool(props, "pattern", 0);
    s->delay_ms = FIRST_DELAY_MS;
    pthread_mutex_init(&s->ack_lock, NULL);
    snprintf(s->name, sizeof s->name, "redis source %s (job %s)", u.safe, job);
    int oom = !(s->job = strdup(job));
    if (m == LIST) {
        oom |= !(s->key = strdup(key));
        oom |= !(s->processing = dup_or_default(em_props_get(props, "processing_key"),
                                                "%s:processing:%s", key, job));
    } else if (m == STREAM) {
        oom |= !(s->key = strdup(key));
        oom |= !(s->group = dup_or_default(em_props_get(props, "group"), "ember-%s", job, NULL));
        /* One consumer per driver: drivers sharing the group read apart,
         * and a restart on the same checkpoint.dir finds its own pending
         * entries again. */
        oom |= !(s->consumer = dup_or_default(em_props_get(props, "consumer"), "ember-%s-%s",
                                              em_identity_id(), job));
    } else {
        oom |= split_channels(s, channel) != 0;
    }
    if (!oom && m != PUBSUB) {
        size_t n = strlen(u.safe) + strlen(s->key) + 3 * 2 + 64 +
                   (m == LIST ? strlen(s->processing)
                              : strlen(s->group) + strlen(s->consumer));
        char *id = malloc(n);
        if (id) {
            if (m == LIST)
                snprintf(id, n, "list\n%s\n%s", u.safe, s->processing);
            else
                snprintf(id, n, "stream\n%s\n%s\n%s\n%s", u.safe, s->key, s->group,
                         s->consumer);
            s->track = em_redis_track_get(id);
        }
        free(id);
        oom |= !s->track;
    }
    if (oom) {
        snprintf(err, errlen, "redis source: out of memory");
        redis_free(s);
        return NULL;
    }
    return s;
bad:
    em_redis_url_free(&u);
    return NULL;
}

/* Forgets the connection and what was read through it but not pushed. */
static void drop_conn(redis_src *s)
{
    if (s->c)
        redisFree(s->c);
    s->c = NULL;
    s->lag_warned = 0;
    if (s->recov)
        freeReplyObject(s->recov);
    s->recov = NULL;
    s->recov_left = 0;
    em_redis_iset_free(&s->skip);
}

/* The connection failed or broke: drop it and schedule the next attempt.
 * One warning per outage; later attempts of the same outage log at debug
 * level. Returns -1 for poll() to hand to the core. */
int em_redis_src_outage(redis_src *s, const char *why)
{
    char d[32];
    drop_conn(s);
    em_redis_fmt_delay(s->delay_ms, d, sizeof d);
    if (!s->down) {
        em_log(EM_LOG_WARN, s->job, "%s: %s, retrying in %s", s->name, why, d);
        s->down = 1;
        s->down_since = em_clock_mono_ms();
    } else {
        em_log(EM_LOG_DEBUG, s->job, "%s: %s, retrying in %s", s->name, why, d);
    }
    s->retry_at = em_clock_mono_ms() + s->delay_ms;
    s->delay_ms = s->delay_ms * 2 > MAX_DELAY_MS ? MAX_DELAY_MS : s->delay_ms * 2;
    return -1;
}

/* Sends argv and returns the reply, NULL on an I/O failure (the caller
 * calls em_redis_src_outage()). */
redisReply *em_redis_src_command(redis_src *s, int argc, const char **argv)
{
    return redisCommandArgv(s->c, argc, argv, NULL);
}

/* A reply that is an error: returns em_redis_src_outage() with "CMD failed: text". */
int em_redis_src_fault(redis_src *s, const char *cmd, redisReply *rep)
{
    char why[320];
    if (!rep)
        em_redis_io_error(s->c, cmd, why, sizeof why);
    else
        snprintf(why, sizeof why, "%s failed: %s", cmd, rep->type == REDIS_REPLY_ERROR
                                                            ? rep->str : "unexpected reply");
    if (rep)
        freeReplyObject(rep);
    return em_redis_src_outage(s, why);
}

/* Connects when due. Returns 1 when connected, 0 while waiting out the
 * backoff (having slept up to the deadline), -1 when this attempt failed. */
static int ensure_conn(redis_src *s, int64_t deadline)
{
    if (s->c)
        return 1;
    int64_t now = em_clock_mono_ms();
    if (now < s->retry_at) {
        int64_t until = s->retry_at < deadline ? s->retry_at : deadline;
        if (until > now)
            em_clock_sleep_ms(until - now);
        if (em_clock_mono_ms() < s->retry_at)
            return 0;
    }
    char why[256];
    s->c = em_redis_connect(&s->url, s->block_ms + IO_MARGIN_MS, why, sizeof why);
    if (!s->c) {
        if (strncmp(why, "authentication", 14) == 0 || strncmp(why, "SELECT", 6) == 0) {
            char w2[300];
            snprintf(w2, sizeof w2, "option 'url': %s", why);
            return em_redis_src_outage(s, w2);
        }
        return em_redis_src_outage(s, why);
    }
    int rc = s->mode == LIST     ? em_redis_list_setup(s)
             : s->mode == STREAM ? em_redis_stream_setup(s)
                                 : em_redis_pubsub_setup(s);
    if (rc != 0)
        return -1; /* setup called em_redis_src_outage() */
    if (s->down)
        em_log(EM_LOG_INFO, s->job, "%s: connected again after %.1fs", s->name,
               (double)(em_clock_mono_ms() - s->down_since) / 1000.0);
    else if (!s->connected_once)
        em_log(EM_LOG_INFO, s->job, "%s: connected", s->name);
    s->down = 0;
    s->connected_once = 1;
    s->delay_ms = FIRST_DELAY_MS;
    return 1;
}

/* Pushes one record; list and stream records are in flight until acked.
 * Returns 0, or -1 when the receiver refused it (logged): such an item is
 * read again after the next reconnect or restart. */
int em_redis_src_push(redis_src *s, em_receiver *r, const char *v, size_t vlen, int64_t ts,
                      const char *meta, size_t mlen, ikey k)
{
    int tracked = s->mode != PUBSUB;
    if (tracked) {
        pthread_mutex_lock(&s->track->lock);
        int bad = em_redis_iset_add(&s->track->set, k);
        pthread_mutex_unlock(&s->track->lock);
        if (bad) {
            em_log(EM_LOG_ERROR, s->job, "%s: out of memory", s->name);
            return -1;
        }
    }
    /* a stream entry's id is its own (extra); a channel is shared by a run (meta) */
    em_push rec = {.value = v, .value_len = vlen, .ts_ms = ts, .partition = -1,
                   .offset = s->seq + 1};
    if (s->mode == STREAM) {
        rec.extra = meta;
        rec.extra_len = mlen;
    } else {
        rec.meta = meta;
        rec.meta_len = mlen;
    }
    if (em_receiver_push(r, &rec) != 0) {
        if (tracked) {
            pthread_mutex_lock(&s->track->lock);
            em_redis_iset_del(&s->track->set, k);
            pthread_mutex_unlock(&s->track->lock);
        }
        em_log(EM_LOG_ERROR, s->job, "%s: the receiver refused a record of %zu bytes", s->name,
               vlen);
        return -1;
    }
    s->seq++;
    return 0;
}

/* A reply's integer field of a flat map reply (XINFO GROUPS): 1 and *v, 0
 * when absent or nil. */
static int map_int(const redisReply *m, const char *name, long long *v)
{
    for (size_t i = 0; m->type == REDIS_REPLY_ARRAY && i + 1 < m->elements; i += 2) {
        const redisReply *k = m->element[i], *x = m->element[i + 1];
        if (k->type != REDIS_REPLY_STRING && k->type != REDIS_REPLY_STATUS)
            continue;
        if (strcmp(k->str, name) != 0)
            continue;
        if (x->type != REDIS_REPLY_INTEGER)
            return 0;
        *v = x->integer;
        return 1;
    }
    return 0;
}

/* The server refused the lag's command (an ACL without LLEN or XINFO, say):
 * the source reads on, the lag is unknown, asked again in a minute; one
 * warning per connection. */
static void lag_refused(redis_src *s, em_receiver *r, const char *cmd, const redisReply *rep)
{
    if (!s->lag_warned)
        em_log(EM_LOG_WARN, s->job, "%s: lag not reported: %s failed: %s", s->name, cmd,
               rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
    s->lag_warned = 1;
    s->lag_at = em_clock_mono_ms() + LAG_RETRY_MS;
    em_receiver_set_lag(r, -1, NULL);
}

/* Tells the receiver what Redis holds beyond what was acknowledged, at most
 * once a LAG_PERIOD_MS, on the receiver's own connection between reads (so
 * never once per record). list: the list's length plus its processing
 * list's (LLEN both). stream: the group's pending entries plus its lag, the
 * entries not yet delivered to it (XINFO GROUPS, Redis 7; without a lag,
 * or when Redis cannot tell it, the total is unknown and the detail has
 * the pending count only). pubsub holds nothing. While the connection is
 * down the lag is unknown. -1 after em_redis_src_outage(). */
static int report_lag(redis_src *s, em_receiver *r)
{
    int64_t now = em_clock_mono_ms();
    if (!s->c && s->lag_at) { /* down: Redis cannot tell, and the last figure grows stale */
        em_receiver_set_lag(r, -1, NULL);
        s->lag_at = 0;
    }
    if (s->mode == PUBSUB || !s->c || (s->lag_at && now - s->lag_at < LAG_PERIOD_MS))
        return 0;
    s->lag_at = now;
    em_buf b;
    em_buf_init(&b);
    int64_t total = -1;
    if (s->mode == LIST) {
        const char *a1[] = {"LLEN", s->key}, *a2[] = {"LLEN", s->processing};
        redisAppendCommandArgv(s->c, 2, a1, NULL);
        redisAppendCommandArgv(s->c, 2, a2, NULL);
        redisReply *rep[2] = {NULL, NULL};
        for (int i = 0; i < 2; i++) /* both replies, so the connection stays in step */
            if (redisGetReply(s->c, (void **)&rep[i]) != REDIS_OK || !rep[i]) {
                if (i == 1)
                    freeReplyObject(rep[0]);
                em_buf_free(&b);
                return em_redis_src_fault(s, "LLEN", NULL);
            }
        for (int i = 0; i < 2; i++)
            if (rep[i]->type != REDIS_REPLY_INTEGER) {
                lag_refused(s, r, "LLEN", rep[i]);
                freeReplyObject(rep[0]);
                freeReplyObject(rep[1]);
                em_buf_free(&b);
                return 0;
            }
        total = rep[0]->integer + rep[1]->integer;
        em_buf_printf(&b, "[{\"key\":");
        em_buf_json_str(&b, s->key);
        em_buf_printf(&b, ",\"length\":%lld,\"processingKey\":", rep[0]->integer);
        em_buf_json_str(&b, s->processing);
        em_buf_printf(&b, ",\"processingLength\":%lld}]", rep[1]->integer);
        freeReplyObject(rep[0]);
        freeReplyObject(rep[1]);
    } else {
        const char *argv[] = {"XINFO", "GROUPS", s->key};
        redisReply *rep = em_redis_src_command(s, 3, argv);
        if (!rep) {
            em_buf_free(&b);
            return em_redis_src_fault(s, "XINFO GROUPS", NULL);
        }
        if (rep->type != REDIS_REPLY_ARRAY) {
            lag_refused(s, r, "XINFO GROUPS", rep);
            freeReplyObject(rep);
            em_buf_free(&b);
            return 0;
        }
        for (size_t i = 0; i < rep->elements; i++) {
            const redisReply *g = rep->element[i];
            const redisReply *name = g->type == REDIS_REPLY_ARRAY && g->elements >= 2
                                         ? g->element[1] : NULL;
            if (!name || name->type != REDIS_REPLY_STRING || strcmp(name->str, s->group) != 0)
                continue;
            long long pending = 0, lag = 0;
            int has_pending = map_int(g, "pending", &pending), has_lag = map_int(g, "lag", &lag);
            if (has_pending && has_lag)
                total = pending + lag;
            em_buf_printf(&b, "[{\"stream\":");
            em_buf_json_str(&b, s->key);
            em_buf_printf(&b, ",\"group\":");
            em_buf_json_str(&b, s->group);
            if (has_pending)
                em_buf_printf(&b, ",\"pending\":%lld", pending);
            else
                em_buf_printf(&b, ",\"pending\":null");
            if (has_lag)
                em_buf_printf(&b, ",\"lag\":%lld}]", lag);
            else
                em_buf_printf(&b, ",\"lag\":null}]");
            break;
        }
        freeReplyObject(rep);
    }
    em_buf_add(&b, "", 1);
    em_receiver_set_lag(r, total, b.oom || b.len <= 1 ? NULL : b.data);
    em_buf_free(&b);
    return 0;
}

/* Reads at most max records (and at most `count`), waiting up to `block`
 * for the first. Returns the count pushed, 0 while waiting out a reconnect
 * delay, -1 when the connection failed (logged once per outage). */
static int redis_poll(void *self, em_receiver *r, uint32_t max, int timeout_ms)
{
    redis_src *s = self;
    if (pthread_mutex_trylock(&s->ack_lock) == 0) { /* acks that failed earlier */
        if (s->nbacklog)
            em_redis_acks_flush_locked(s);
        pthread_mutex_unlock(&s->ack_lock);
    }
    if (report_lag(s, r) != 0)
        return -1;
    if (max == 0) /* held: read nothing */
        return 0;
    int c = ensure_conn(s, em_clock_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0));
    if (c <= 0)
        return c;
    uint32_t want = max < s->count ? max : s->count;
    int fault = 0, n;
    if (s->mode == LIST)
        n = em_redis_list_poll(s, r, want, &fault);
    else if (s->mode == STREAM)
        n = em_redis_stream_poll(s, r, want, &fault);
    else
        n = em_redis_pubsub_poll(s, r, want, &fault);
    return n > 0 || !fault ? n : -1;
}

/* Accepts NULL. Acknowledgements still waiting get one last try. */
static void redis_free(void *self)
{
    redis_src *s = self;
    if (!s)
        return;
    pthread_mutex_lock(&s->ack_lock);
    if (s->nbacklog) {
        s->ack_retry_at = 0;
        if (em_redis_acks_flush_locked(s) != 0)
            em_log(EM_LOG_WARN, s->job, "%s: %zu records could not be acknowledged; they will "
                   "be delivered again", s->name, s->nbacklog);
    }
    for (size_t i = 0; i < s->nbacklog; i++)
        free(s->backlog[i].s);
    free(s->backlog);
    if (s->ack)
        redisFree(s->ack);
    pthread_mutex_unlock(&s->ack_lock);
    drop_conn(s);
    em_redis_track_put(s->track);
    for (int i = 0; i < s->nchannels; i++)
        free(s->channels[i]);
    free(s->channels);
    free(s->json.p);
    free(s->job);
    free(s->key);
    free(s->processing);
    free(s->group);
    free(s->consumer);
    em_redis_url_free(&s->url);
    pthread_mutex_destroy(&s->ack_lock);
    free(s);
}

/* Lists and streams keep what was not acknowledged; pub/sub needs the WAL. */
static int redis_acknowledges(void *self)
{
    return ((redis_src *)self)->mode != PUBSUB;
}

const em_connector em_redis_connector = {
    .name = "redis",
    .options = redis_options,
    .create = redis_create,
    .poll = redis_poll,
    .batch_done = em_redis_batch_done,
    .positions = em_redis_stream_positions,
    .resume_from = em_redis_stream_resume_from,
    .flush = em_redis_pubsub_flush,
    .acknowledges = redis_acknowledges,
    .free = redis_free,
};

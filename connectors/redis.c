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
 * The sink is redis_sink.c; what both use (the URL, connecting) is
 * redis_conn.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/block.h"
#include "../core/buf.h"
#include "../core/clock.h"
#include "../core/connector.h"
#include "../core/identity.h"
#include "../core/log.h"
#include "../core/pool.h"
#include "../core/receiver.h"
#include "redis_conn.h"

#define IO_MARGIN_MS 10000    /* a blocking read may take `block` plus this before it hangs */
#define ACK_TIMEOUT_MS 10000
#define FIRST_DELAY_MS 1000
#define MAX_DELAY_MS 30000
#define XACK_CHUNK 1000       /* ids per XACK command */
#define LAG_PERIOD_MS 1000    /* how often the backlog is asked and told to the receiver */
#define LAG_RETRY_MS 60000    /* after the server refused the lag's command */

/* --------------------------------------------------- the in-flight multiset
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

static size_t ihome(const iset *t, ikey k)
{
    uint64_t h = (k.a ^ (k.b * 0x9E3779B97F4A7C15ull)) * 0xBF58476D1CE4E5B9ull;
    return (size_t)(h ^ (h >> 31)) & (t->cap - 1);
}

static islot *ifind(const iset *t, ikey k)
{
    if (!t->cap)
        return NULL;
    for (size_t i = ihome(t, k);; i = (i + 1) & (t->cap - 1)) {
        islot *s = &t->s[i];
        if (!s->n)
            return NULL;
        if (s->a == k.a && s->b == k.b)
            return s;
    }
}

static int iset_add(iset *t, ikey k)
{
    islot *f = ifind(t, k);
    if (f) {
        f->n++;
        return 0;
    }
    if ((t->used + 1) * 2 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        islot *s = calloc(cap, sizeof *s);
        if (!s)
            return -1;
        iset old = *t;
        t->s = s;
        t->cap = cap;
        for (size_t i = 0; i < old.cap; i++)
            if (old.s[i].n) {
                size_t j = ihome(t, (ikey){old.s[i].a, old.s[i].b});
                while (s[j].n)
                    j = (j + 1) & (cap - 1);
                s[j] = old.s[i];
            }
        free(old.s);
    }
    size_t i = ihome(t, k);
    while (t->s[i].n)
        i = (i + 1) & (t->cap - 1);
    t->s[i] = (islot){k.a, k.b, 1};
    t->used++;
    return 0;
}

static uint32_t iset_count(const iset *t, ikey k)
{
    islot *f = ifind(t, k);
    return f ? f->n : 0;
}

/* Takes one count of k away; the key goes when its count reaches zero. */
static void iset_del(iset *t, ikey k)
{
    islot *f = ifind(t, k);
    if (!f || --f->n > 0)
        return;
    size_t mask = t->cap - 1, i = (size_t)(f - t->s), j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!t->s[j].n)
            break;
        size_t h = ihome(t, (ikey){t->s[j].a, t->s[j].b});
        /* move s[j] back into the hole unless its home lies cyclically in (i, j] */
        if (i <= j ? (h <= i || h > j) : (h <= i && h > j)) {
            t->s[i] = t->s[j];
            i = j;
        }
    }
    t->s[i].n = 0;
    t->used--;
}

static int iset_copy(iset *dst, const iset *src)
{
    dst->s = NULL;
    dst->cap = dst->used = 0;
    if (!src->cap)
        return 0;
    if (!(dst->s = malloc(src->cap * sizeof *dst->s)))
        return -1;
    memcpy(dst->s, src->s, src->cap * sizeof *dst->s);
    dst->cap = src->cap;
    dst->used = src->used;
    return 0;
}

static void iset_free(iset *t)
{
    free(t->s);
    t->s = NULL;
    t->cap = t->used = 0;
}

/* A list item's key: a 64-bit hash of its bytes and its length. Two
 * different items with one key would make a re-read after a reconnect skip
 * one of them until the next start: with 64 bits, not a practical worry. */
static ikey value_key(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    h ^= h >> 32;
    return (ikey){h * 0xD6E8FEB86659FD93ull, n};
}

/* "1700000000000-7" → {1700000000000, 7}; -1 when malformed. */
static int parse_id(const char *s, size_t n, ikey *k)
{
    uint64_t a = 0, b = 0;
    size_t i = 0;
    for (; i < n && s[i] != '-'; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        a = a * 10 + (uint64_t)(s[i] - '0');
    }
    if (i == 0 || i + 1 >= n)
        return -1;
    for (i++; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        b = b * 10 + (uint64_t)(s[i] - '0');
    }
    k->a = a;
    k->b = b;
    return 0;
}

/* ------------------------------------------------------------- the source */

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

static pthread_mutex_t tracks_lock = PTHREAD_MUTEX_INITIALIZER;
static track *tracks;

static track *track_get(const char *id)
{
    pthread_mutex_lock(&tracks_lock);
    track *t = tracks;
    while (t && strcmp(t->id, id) != 0)
        t = t->next;
    if (t) {
        t->refs++;
    } else if ((t = calloc(1, sizeof *t)) && (t->id = strdup(id))) {
        t->refs = 1;
        pthread_mutex_init(&t->lock, NULL);
        t->next = tracks;
        tracks = t;
    } else {
        free(t);
        t = NULL;
    }
    pthread_mutex_unlock(&tracks_lock);
    return t;
}

static void track_put(track *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&tracks_lock);
    if (--t->refs == 0) {
        track **p = &tracks;
        while (*p != t)
            p = &(*p)->next;
        *p = t->next;
        pthread_mutex_destroy(&t->lock);
        iset_free(&t->set);
        free(t->id);
        free(t);
    }
    pthread_mutex_unlock(&tracks_lock);
}

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

static void fmt_delay(int64_t ms, char *out, size_t n)
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
            s->track = track_get(id);
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
    iset_free(&s->skip);
}

/* The connection failed or broke: drop it and schedule the next attempt.
 * One warning per outage; later attempts of the same outage log at debug
 * level. Returns -1 for poll() to hand to the core. */
static int outage(redis_src *s, const char *why)
{
    char d[32];
    drop_conn(s);
    fmt_delay(s->delay_ms, d, sizeof d);
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
 * calls outage()). */
static redisReply *command(redis_src *s, int argc, const char **argv)
{
    return redisCommandArgv(s->c, argc, argv, NULL);
}

/* A reply that is an error: returns outage() with "CMD failed: text". */
static int reply_fault(redis_src *s, const char *cmd, redisReply *rep)
{
    char why[320];
    if (!rep)
        em_redis_io_error(s->c, cmd, why, sizeof why);
    else
        snprintf(why, sizeof why, "%s failed: %s", cmd, rep->type == REDIS_REPLY_ERROR
                                                            ? rep->str : "unexpected reply");
    if (rep)
        freeReplyObject(rep);
    return outage(s, why);
}

/* list: reads the processing list and remembers what is in flight now, so
 * that list_poll() pushes the rest first. */
static int list_setup(redis_src *s)
{
    pthread_mutex_lock(&s->track->lock);
    int bad = iset_copy(&s->skip, &s->track->set);
    pthread_mutex_unlock(&s->track->lock);
    if (bad)
        return outage(s, "out of memory");
    const char *argv[] = {"LRANGE", s->processing, "0", "-1"};
    redisReply *rep = command(s, 4, argv);
    if (!rep || rep->type != REDIS_REPLY_ARRAY)
        return reply_fault(s, "LRANGE", rep);
    size_t fresh = 0; /* for the log line (an identical item in flight hides one) */
    for (size_t i = 0; i < rep->elements; i++)
        fresh += rep->element[i]->type == REDIS_REPLY_STRING &&
                 !iset_count(&s->skip, value_key(rep->element[i]->str, rep->element[i]->len));
    if (fresh)
        em_log(EM_LOG_INFO, s->job,
               "%s: %zu items in processing list '%s'%s; processing them first", s->name, fresh,
               s->processing,
               s->connected_once ? " not in flight here" : " left by an earlier run");
    s->recov = rep;
    s->recov_left = rep->elements;
    return 0;
}

/* stream: makes the group if missing (from the start of the stream, so
 * entries written before the first run are read) and starts with this
 * consumer's pending entries. */
static int stream_setup(redis_src *s)
{
    const char *argv[] = {"XGROUP", "CREATE", s->key, s->group, "0", "MKSTREAM"};
    redisReply *rep = command(s, 6, argv);
    if (!rep)
        return reply_fault(s, "XGROUP CREATE", rep);
    if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "BUSYGROUP", 9) != 0)
        return reply_fault(s, "XGROUP CREATE", rep);
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

static int pubsub_setup(redis_src *s)
{
    const char *verb = s->pattern ? "PSUBSCRIBE" : "SUBSCRIBE";
    const char **argv = calloc((size_t)s->nchannels + 1, sizeof *argv);
    if (!argv)
        return outage(s, "out of memory");
    argv[0] = verb;
    for (int i = 0; i < s->nchannels; i++)
        argv[i + 1] = s->channels[i];
    redisAppendCommandArgv(s->c, s->nchannels + 1, argv, NULL);
    free(argv);
    for (int i = 0; i < s->nchannels; i++) { /* one confirmation per channel */
        redisReply *rep;
        if (redisGetReply(s->c, (void **)&rep) != REDIS_OK)
            return reply_fault(s, verb, NULL);
        if (rep->type != REDIS_REPLY_ARRAY)
            return reply_fault(s, verb, rep);
        freeReplyObject(rep);
    }
    return 0;
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
            return outage(s, w2);
        }
        return outage(s, why);
    }
    int rc = s->mode == LIST ? list_setup(s) : s->mode == STREAM ? stream_setup(s)
                                                                 : pubsub_setup(s);
    if (rc != 0)
        return -1; /* setup called outage() */
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
static int push(redis_src *s, em_receiver *r, const char *v, size_t vlen, int64_t ts,
                const char *meta, size_t mlen, ikey k)
{
    int tracked = s->mode != PUBSUB;
    if (tracked) {
        pthread_mutex_lock(&s->track->lock);
        int bad = iset_add(&s->track->set, k);
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
            iset_del(&s->track->set, k);
            pthread_mutex_unlock(&s->track->lock);
        }
        em_log(EM_LOG_ERROR, s->job, "%s: the receiver refused a record of %zu bytes", s->name,
               vlen);
        return -1;
    }
    s->seq++;
    return 0;
}

/* list mode, one poll: items recovered from the processing list first, then
 * up to `want` pipelined LMOVEs (their number adapts to what the list
 * held last time, so an idle queue costs one LMOVE and one BLMOVE a read);
 * when none brought an item, one BLMOVE waits up to `block`. */
static int list_poll(redis_src *s, em_receiver *r, uint32_t want, int *fault)
{
    uint32_t pushed = 0;
    int64_t now = em_clock_now_ms();
    if (s->recov) {
        while (pushed < want && s->recov_left > 0) {
            redisReply *e = s->recov->element[--s->recov_left]; /* the tail is the oldest */
            if (e->type != REDIS_REPLY_STRING)
                continue;
            ikey k = value_key(e->str, e->len);
            if (iset_count(&s->skip, k) > 0) { /* in flight here: its batch will remove it */
                iset_del(&s->skip, k);
                continue;
            }
            if (push(s, r, e->str, e->len, now, NULL, 0, k) != 0)
                break;
            pushed++;
        }
        if (s->recov_left == 0) {
            freeReplyObject(s->recov);
            s->recov = NULL;
            iset_free(&s->skip);
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
            reply_fault(s, "LMOVE", NULL);
            return (int)pushed;
        }
        if (rep->type == REDIS_REPLY_STRING) {
            got++;
            if (push(s, r, rep->str, rep->len, now, NULL, 0, value_key(rep->str, rep->len)) == 0)
                pushed++;
        } else if (rep->type == REDIS_REPLY_ERROR && !errtext[0]) {
            snprintf(errtext, sizeof errtext, "LMOVE %s failed: %s", s->key, rep->str);
        }
        freeReplyObject(rep);
    }
    if (errtext[0]) {
        *fault = 1;
        outage(s, errtext);
        return (int)pushed;
    }
    s->hint = got == n ? (n * 2 < s->count ? n * 2 : s->count) : (got * 2 > 1 ? got * 2 : 1);
    if (got > 0 || pushed >= want)
        return (int)pushed;

    char secs[32];
    snprintf(secs, sizeof secs, "%.3f", (double)s->block_ms / 1000.0);
    argv[5] = secs;
    argv[0] = "BLMOVE";
    redisReply *rep = command(s, 6, argv);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        *fault = 1;
        reply_fault(s, "BLMOVE", rep);
        return (int)pushed;
    }
    if (rep->type == REDIS_REPLY_STRING &&
        push(s, r, rep->str, rep->len, em_clock_now_ms(), NULL, 0, value_key(rep->str, rep->len)) ==
            0)
        pushed++;
    freeReplyObject(rep);
    return (int)pushed;
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

static void backlog_add_locked(redis_src *s, const char *p, size_t n);

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
        if (parse_id(id->str, id->len, &k) != 0)
            continue;
        if (fields->type != REDIS_REPLY_ARRAY) {
            em_log(EM_LOG_WARN, s->job, "%s: pending entry %.*s was deleted from '%s'; "
                   "acknowledging it", s->name, (int)id->len, id->str, s->key);
            pthread_mutex_lock(&s->ack_lock);
            backlog_add_locked(s, id->str, id->len);
            pthread_mutex_unlock(&s->ack_lock);
        } else {
            uint32_t busy = 0;
            if (!fresh) { /* entries read with '>' are new: none can be in flight */
                pthread_mutex_lock(&s->track->lock);
                busy = iset_count(&s->track->set, k);
                pthread_mutex_unlock(&s->track->lock);
            }
            if (!busy && s->pending && s->has_resume &&
                (k.a < s->resume.a || (k.a == s->resume.a && k.b <= s->resume.b))) {
                /* Ours, pending, and in the job's committed state already: a
                 * crash came between the commit and the XACK. Acknowledge,
                 * do not count it again. */
                pthread_mutex_lock(&s->ack_lock);
                backlog_add_locked(s, id->str, id->len);
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
                if (push(s, r, v, n, (int64_t)k.a, id->str, id->len, k) != 0)
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

/* stream mode, one poll: this consumer's pending entries (after a start or
 * reconnect), then an XAUTOCLAIM step when one is due, then new entries,
 * waiting up to `block`. */
static int stream_poll(redis_src *s, em_receiver *r, uint32_t want, int *fault)
{
    char cnt[16], blk[24], idle[24];
    snprintf(cnt, sizeof cnt, "%u", want);
    if (s->pending) {
        const char *argv[] = {"XREADGROUP", "GROUP", s->group, s->consumer, "COUNT", cnt,
                              "STREAMS", s->key, s->pending_from};
        redisReply *rep = command(s, 9, argv);
        if (!rep || rep->type == REDIS_REPLY_ERROR) {
            *fault = 1;
            return reply_fault(s, "XREADGROUP", rep), 0;
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
        redisReply *rep = command(s, 8, argv);
        if (!rep || rep->type == REDIS_REPLY_ERROR || rep->type != REDIS_REPLY_ARRAY ||
            rep->elements < 2 || rep->element[0]->type != REDIS_REPLY_STRING) {
            *fault = 1;
            return reply_fault(s, "XAUTOCLAIM", rep), 0;
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
    redisReply *rep = command(s, 11, argv);
    if (!rep || rep->type == REDIS_REPLY_ERROR) {
        *fault = 1;
        return reply_fault(s, "XREADGROUP", rep), 0;
    }
    uint32_t pushed = 0;
    const redisReply *entries = stream_entries(rep);
    if (entries)
        pushed = push_entries(s, r, entries, 1, NULL, 0);
    freeReplyObject(rep);
    return (int)pushed;
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
    return push(s, r, pl->str ? pl->str : "", pl->len, em_clock_now_ms(), ch->str, ch->len,
                (ikey){0, 0}) == 0;
}

/* pubsub mode, one poll: messages already buffered first; waits up to
 * `block` only while none was pushed. */
static int pubsub_poll(redis_src *s, em_receiver *r, uint32_t want, int *fault)
{
    uint32_t pushed = 0;
    int64_t deadline = em_clock_mono_ms() + s->block_ms;
    while (pushed < want) {
        redisReply *rep = NULL;
        if (redisGetReplyFromReader(s->c, (void **)&rep) != REDIS_OK) {
            *fault = 1;
            reply_fault(s, "reading messages", NULL);
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
            reply_fault(s, "reading messages", NULL);
            break;
        }
    }
    return (int)pushed;
}

static int flush_acks_locked(redis_src *s);

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
 * down the lag is unknown. -1 after outage(). */
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
                return reply_fault(s, "LLEN", NULL);
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
        redisReply *rep = command(s, 3, argv);
        if (!rep) {
            em_buf_free(&b);
            return reply_fault(s, "XINFO GROUPS", NULL);
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
            flush_acks_locked(s);
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
        n = list_poll(s, r, want, &fault);
    else if (s->mode == STREAM)
        n = stream_poll(s, r, want, &fault);
    else
        n = pubsub_poll(s, r, want, &fault);
    return n > 0 || !fault ? n : -1;
}

/* ---------------------------------------------------- acknowledgements */

static void backlog_add_locked(redis_src *s, const char *p, size_t n)
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
        return value_key(p, n);
    parse_id(p, n, &k);
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
        iset_del(&s->track->set, item_key(s, items[i].s, items[i].len));
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
static int flush_acks_locked(redis_src *s)
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
/* Stream mode: the highest entry id these blocks hold (the records' extra bytes),
 * as "<key> <id>". Lists and pub/sub cannot be rewound: nothing. */
static void redis_positions(void *self, em_block *const *blocks, size_t n, FILE *out)
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
            if (!rec.extra || parse_id(rec.extra, rec.extra_len, &k) != 0)
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
static void redis_resume_from(void *self, const char *positions)
{
    redis_src *s = self;
    size_t kl = strlen(s->key);
    for (const char *p = positions; p && *p;) {
        size_t l = strcspn(p, "\n");
        if (s->mode == STREAM && l > kl + 1 && strncmp(p, s->key, kl) == 0 && p[kl] == ' ' &&
            parse_id(p + kl + 1, l - kl - 1, &s->resume) == 0) {
            s->has_resume = 1;
            em_log(EM_LOG_INFO, s->job, "%s: entries up to %.*s are in the job's committed "
                   "state", s->name, (int)(l - kl - 1), p + kl + 1);
        }
        p += l + (p[l] == '\n');
    }
}

static void redis_batch_done(void *self, em_block *const *blocks, size_t n, int ok)
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
            iset_del(&s->track->set, item_key(s, items[i].s, items[i].len));
        pthread_mutex_unlock(&s->track->lock);
        free(items);
        char d[32];
        fmt_delay(s->claim_idle_ms, d, sizeof d);
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
    if (flush_acks_locked(s) == 0) /* older ones first; if they fail, so would these */
        done = send_acks_locked(s, items, total);
    for (size_t i = done; i < total; i++)
        backlog_add_locked(s, items[i].s, items[i].len);
    pthread_mutex_unlock(&s->ack_lock);
    free(items);
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
        if (flush_acks_locked(s) != 0)
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
    track_put(s->track);
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

/* The receiver is stopping. pubsub: the messages hiredis already holds are
 * pushed, nothing more is read (a list's or stream's unread records are
 * safe in Redis). */
static void redis_flush(void *self, em_receiver *r)
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
    .batch_done = redis_batch_done,
    .positions = redis_positions,
    .resume_from = redis_resume_from,
    .flush = redis_flush,
    .acknowledges = redis_acknowledges,
    .free = redis_free,
};

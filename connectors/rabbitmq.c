/* rabbitmq.c — a RabbitMQ queue as a source, through librabbitmq
 * (rabbitmq-c 0.11).
 *
 * Source. One connection and one channel per receiver, opened in poll() and
 * never in create(), consuming with manual acks under basic.qos(prefetch).
 * The prefetch is how the rate cap reaches the broker: while the core has no
 * tokens it does not call poll(), the unacked window stays full and the
 * broker stops sending. A message is acked only after every output of the
 * batch holding it succeeded. batch_done() runs on a worker thread but a
 * librabbitmq connection is not thread-safe, so batch_done() only queues
 * "settle these tags" under a mutex; the receiver thread sends the acks at
 * its next poll(), or free() does after a graceful stop.
 *
 * A delivery tag means something only on the channel that delivered it, the
 * way an offset means something only in its partition. Each connection is a
 * new generation, kept in the record's partition field; settlements of an
 * older generation are dropped, because the broker requeued those messages
 * when that connection died and delivers them again (at-least-once).
 *
 * The sink is rabbitmq_sink.c; URLs and connections, rabbitmq_conn.c.
 */
#include <amqp.h>
#include <amqp_framing.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "../core/buf.h"
#include "../core/budget.h"
#include "../core/clock.h"
#include "../core/connector.h"
#include "../core/identity.h"
#include "../core/log.h"
#include "../core/pool.h"
#include "../core/receiver.h"
#include "rabbitmq_conn.h"

#define MAX_DELAY_MS 30000
#define HEARTBEAT_S 60       /* source only: pooled sink connections idle between batches */
#define WAIT_SLICE_MS 20     /* longest a waiting poll() goes without sending queued acks */
#define HEALTHY_MS 5000      /* up this long (or a delivery): the next outage backs off from the start */
#define DEFAULT_PREFETCH 1000
#define RATE_WINDOW_BATCHES 2.0 /* derived prefetch: two batch intervals at max_rate, see rmq_create() */
#define LAG_PERIOD_MS 1000   /* how often the queue's depth is asked and told to the receiver */

typedef struct settle_op {
    int32_t gen; /* connection generation the tags belong to */
    int ok;      /* 1: ack, 0: nack with requeue */
    uint64_t lo, hi;
} settle_op;

typedef struct tag_range {
    uint64_t lo, hi;
} tag_range;

typedef struct rmq_src {
    em_receiver *r;
    em_rabbitmq_url url;
    char *queue, *exchange, *routing_key;
    int declare;
    int prefetch;
    char prefetch_from[64]; /* how the prefetch was chosen, for the log */
    char name[640];         /* "rabbitmq queue 'q' at amqp://user@host:port/", for messages */
    char conn_name[320];    /* shown by rabbitmqctl list_connections */

    int64_t delay0_ms, delay_ms; /* first and next reconnect wait */
    int64_t retry_at;            /* monotonic ms before which no attempt is made */
    int64_t down_since;          /* start of the current outage, 0 when none */
    int64_t connected_at;
    int healthy; /* this connection delivered or lived HEALTHY_MS: backoff starts over */
    int ever_connected;

    /* receiver thread only (and free()) */
    amqp_connection_state_t conn; /* NULL when not connected */
    int32_t gen;                  /* generation of conn; 1 for the first */
    uint64_t settled;             /* every tag <= settled of gen is acked or nacked */
    uint64_t last_tag;            /* the highest delivery tag taken on conn */
    int64_t lag_at;               /* when the lag was last told (monotonic ms) */
    tag_range *ahead;             /* settled ranges past a gap, folded in when it closes */
    size_t nahead, capahead;

    pthread_mutex_t lock; /* guards ops: workers append, the receiver thread sends */
    settle_op *ops;
    size_t nops, capops;
    atomic_int resync; /* a batch_done() could not queue its acks: reconnect to get them back */
} rmq_src;

static const em_option rmq_options[] = {
    {"url", EM_OPT_STRING, NULL, "amqp://user:password@host:port/vhost (required)"},
    {"queue", EM_OPT_STRING, NULL, "queue to consume (required)"},
    {"declare", EM_OPT_BOOL, "true", "declare the queue, durable, if it does not exist"},
    {"exchange", EM_OPT_STRING, NULL, "bind the queue to this exchange"},
    {"routing_key", EM_OPT_STRING, NULL, "binding key for 'exchange' (default: empty)"},
    {"prefetch", EM_OPT_INT, NULL,
     "unacknowledged messages the broker may send ahead (basic.qos), 1-65535; default: "
     "2 s worth of max_rate when a rate cap is set, else 1000"},
    {"reconnect_delay", EM_OPT_DURATION, "1s",
     "wait before reconnecting; doubles after each failure, up to 30s"},
    {NULL, 0, NULL, NULL},
};

static const char *job_of(const rmq_src *s) { return em_receiver_job(s->r); }

static void fmt_delay(int64_t ms, char *out, size_t n)
{
    if (ms % 1000 == 0)
        snprintf(out, n, "%llds", (long long)(ms / 1000));
    else
        snprintf(out, n, "%lldms", (long long)ms);
}

/* Forgets the connection (the broker requeues what it had not been acked)
 * and schedules the next attempt. The first failure of an outage is logged
 * as a warning, the following ones only at debug level, so a broker down
 * for an hour leaves one line, not a thousand. Returns -1. */
static int fail(rmq_src *s, const char *why, int alive)
{
    char d[32];
    int64_t now = em_clock_mono_ms();
    if (s->conn) {
        em_rabbitmq_close(s->conn, alive);
        s->conn = NULL;
    }
    em_receiver_set_lag(s->r, -1, NULL); /* unknown until the next connection tells it */
    if (s->healthy)
        s->delay_ms = s->delay0_ms;
    s->healthy = 0;
    fmt_delay(s->delay_ms, d, sizeof d);
    if (!s->down_since) {
        s->down_since = now;
        em_log(EM_LOG_WARN, job_of(s),
               "%s: %s; retrying in %s, then backing off up to 30s (logged once per outage)%s",
               s->name, why, d,
               s->ever_connected ? "; unacknowledged messages go back to the queue and are "
                                   "delivered again"
                                 : "");
    } else {
        em_log(EM_LOG_DEBUG, job_of(s), "%s: still down: %s; retrying in %s", s->name, why, d);
    }
    s->retry_at = now + s->delay_ms;
    int64_t cap = s->delay0_ms > MAX_DELAY_MS ? s->delay0_ms : MAX_DELAY_MS;
    s->delay_ms = s->delay_ms * 2 > cap ? cap : s->delay_ms * 2;
    return -1;
}

/* Declares, binds, sets the prefetch and starts consuming on a fresh
 * connection. 0, or -1 with why naming the option at fault. */
static int start_consuming(rmq_src *s, amqp_connection_state_t c, char *why, size_t n)
{
    char doing[512];
    amqp_bytes_t queue = amqp_cstring_bytes(s->queue);
    if (s->declare) {
        amqp_queue_declare(c, EM_RABBITMQ_CHANNEL, queue, 0, 1, 0, 0, amqp_empty_table);
        snprintf(doing, sizeof doing, "cannot declare durable queue '%s' (options 'queue', "
                 "'declare'; set declare = false to use an existing queue as it is)", s->queue);
        if (em_rabbitmq_rpc_failed(c, doing, why, n))
            return -1;
    }
    if (s->exchange) {
        amqp_queue_bind(c, EM_RABBITMQ_CHANNEL, queue, amqp_cstring_bytes(s->exchange),
                        amqp_cstring_bytes(s->routing_key ? s->routing_key : ""),
                        amqp_empty_table);
        snprintf(doing, sizeof doing,
                 "cannot bind queue '%s' to exchange '%s' (options 'exchange', 'routing_key')",
                 s->queue, s->exchange);
        if (em_rabbitmq_rpc_failed(c, doing, why, n))
            return -1;
    }
    amqp_basic_qos(c, EM_RABBITMQ_CHANNEL, 0, (uint16_t)s->prefetch, 0);
    if (em_rabbitmq_rpc_failed(c, "cannot set the prefetch (option 'prefetch')", why, n))
        return -1;
    /* The consumer tag names the driver, so rabbitmqctl list_consumers
     * tells competing drivers apart. */
    char tag[200];
    snprintf(tag, sizeof tag, "ember-%s-%s", em_identity_id(), job_of(s));
    amqp_basic_consume(c, EM_RABBITMQ_CHANNEL, queue, amqp_cstring_bytes(tag), 0, 0, 0,
                       amqp_empty_table);
    snprintf(doing, sizeof doing, "cannot consume queue '%s' (option 'queue')", s->queue);
    return em_rabbitmq_rpc_failed(c, doing, why, n);
}

/* Connects when the retry time has come, waiting for it at most until
 * deadline. Returns 1 when connected, 0 when still waiting, -1 when the
 * attempt failed (logged, next one scheduled). A new connection is a new
 * generation: acks of the old one are dropped from here on. */
static int connect_src(rmq_src *s, int64_t deadline)
{
    int64_t now = em_clock_mono_ms();
    if (now < s->retry_at) {
        em_clock_sleep_ms((s->retry_at < deadline ? s->retry_at : deadline) - now);
        if (em_clock_mono_ms() < s->retry_at)
            return 0;
    }
    char why[1024];
    amqp_connection_state_t c = em_rabbitmq_open(&s->url, HEARTBEAT_S, s->conn_name, why,
                                                sizeof why);
    if (!c)
        return fail(s, why, 0);
    s->conn = c;
    if (start_consuming(s, c, why, sizeof why) != 0)
        return fail(s, why, 1);
    /* What the dead connection delivered and no batch holds yet is dropped:
     * the broker requeued it and delivers it again on this one. */
    size_t dropped = s->gen ? em_receiver_discard(s->r, s->gen) : 0;
    if (dropped)
        em_log(EM_LOG_INFO, job_of(s), "%s: dropped %zu deliveries of the lost connection that "
               "no batch held yet; the broker redelivers them", s->name, dropped);
    s->gen++;
    s->settled = 0;
    s->last_tag = 0;
    s->lag_at = 0;
    s->nahead = 0;
    s->connected_at = em_clock_mono_ms();
    if (s->down_since && s->ever_connected)
        em_log(EM_LOG_INFO, job_of(s), "%s: reconnected after %.1f s; consuming again, prefetch %d",
               s->name, (double)(s->connected_at - s->down_since) / 1000.0, s->prefetch);
    else
        em_log(EM_LOG_INFO, job_of(s), "%s: connected; consuming with manual acks, prefetch %d (%s)",
               s->name, s->prefetch, s->prefetch_from);
    s->down_since = 0;
    s->ever_connected = 1;
    return 1;
}

/* Keeps the settled ranges past the watermark sorted by lo. */
static int add_ahead(rmq_src *s, uint64_t lo, uint64_t hi)
{
    if (s->nahead == s->capahead) {
        size_t cap = s->capahead ? s->capahead * 2 : 8;
        tag_range *a = realloc(s->ahead, cap * sizeof *a);
        if (!a)
            return -1;
        s->ahead = a;
        s->capahead = cap;
    }
    size_t i = s->nahead;
    while (i > 0 && s->ahead[i - 1].lo > lo) {
        s->ahead[i] = s->ahead[i - 1];
        i--;
    }
    s->ahead[i].lo = lo;
    s->ahead[i].hi = hi;
    s->nahead++;
    return 0;
}

/* Moves the watermark over ranges settled ahead of a gap that has closed. */
static void fold_ahead(rmq_src *s)
{
    size_t k = 0;
    while (k < s->nahead && s->ahead[k].lo <= s->settled + 1) {
        if (s->ahead[k].hi > s->settled)
            s->settled = s->ahead[k].hi;
        k++;
    }
    if (k) {
        memmove(s->ahead, s->ahead + k, (s->nahead - k) * sizeof *s->ahead);
        s->nahead -= k;
    }
}

/* Acks (ok) or nacks with requeue the tags lo..hi of the current
 * connection. One frame with multiple = 1 when lo follows the watermark
 * (every tag below is settled, so "up to hi" means exactly lo..hi); else
 * one frame per tag, since a tag before lo is still out and multiple would
 * settle it too. Settling a tag twice would make the broker close the
 * channel, so tags at or below the watermark are skipped. 0, or -1 with
 * why on a connection error. */
static int settle(rmq_src *s, uint64_t lo, uint64_t hi, int ok, char *why, size_t n)
{
    if (hi <= s->settled)
        return 0;
    if (lo <= s->settled)
        lo = s->settled + 1;
    int rc = 0;
    if (lo == s->settled + 1) {
        rc = ok ? amqp_basic_ack(s->conn, EM_RABBITMQ_CHANNEL, hi, 1)
                : amqp_basic_nack(s->conn, EM_RABBITMQ_CHANNEL, hi, 1, 1);
        s->settled = hi;
        fold_ahead(s);
    } else {
        for (uint64_t t = lo; t <= hi && rc == AMQP_STATUS_OK; t++)
            rc = ok ? amqp_basic_ack(s->conn, EM_RABBITMQ_CHANNEL, t, 0)
                    : amqp_basic_nack(s->conn, EM_RABBITMQ_CHANNEL, t, 0, 1);
        if (add_ahead(s, lo, hi) != 0) {
            /* Without the range the watermark could later ack multiple over
             * it again: start a clean generation instead. */
            snprintf(why, n, "out of memory tracking acknowledgements");
            return -1;
        }
    }
    if (rc != AMQP_STATUS_OK) {
        snprintf(why, n, "cannot send %s: %s", ok ? "ack" : "nack", amqp_error_string2(rc));
        return -1;
    }
    return 0;
}

/* Sends the acks and nacks batch_done() queued. Those of an older
 * connection are dropped: their messages are back in the queue. 0, -1
 * with why when the connection failed, -2 with why when the connection
 * works but must be replaced (acks were lost to an out-of-memory). */
static int send_settles(rmq_src *s, char *why, size_t n)
{
    pthread_mutex_lock(&s->lock);
    settle_op *ops = s->ops;
    size_t nops = s->nops;
    s->ops = NULL;
    s->nops = s->capops = 0;
    pthread_mutex_unlock(&s->lock);
    if (atomic_exchange(&s->resync, 0)) {
        free(ops);
        snprintf(why, n, "out of memory queueing acknowledgements; reconnecting so the broker "
                         "delivers the unacknowledged messages again");
        return -2;
    }
    uint64_t stale = 0;
    int rc = 0;
    for (size_t i = 0; i < nops && rc == 0; i++) {
        if (ops[i].gen != s->gen) {
            stale += ops[i].hi - ops[i].lo + 1;
            continue;
        }
        rc = settle(s, ops[i].lo, ops[i].hi, ops[i].ok, why, n);
    }
    free(ops);
    if (stale)
        em_log(EM_LOG_DEBUG, job_of(s),
               "%s: %llu acknowledgements belong to an earlier connection; the broker delivers "
               "those messages again", s->name, (unsigned long long)stale);
    return rc;
}

/* Reads the frame amqp_consume_message() put back (not a delivery).
 * Returns 0 when it can be ignored, -1 with why when the channel or the
 * connection is gone (answered, so the broker is not kept waiting). */
static int other_frame(rmq_src *s, char *why, size_t n, int *alive)
{
    amqp_frame_t f;
    struct timeval tv = {0, 0};
    int rc = amqp_simple_wait_frame_noblock(s->conn, &f, &tv);
    if (rc == AMQP_STATUS_TIMEOUT)
        return 0;
    if (rc != AMQP_STATUS_OK) {
        snprintf(why, n, "connection lost: %s", amqp_error_string2(rc));
        *alive = 0;
        return -1;
    }
    if (f.frame_type != AMQP_FRAME_METHOD)
        return 0;
    if (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD) {
        em_rabbitmq_close_text(&f.payload.method, why, n);
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(s->conn, f.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        *alive = 1; /* the connection itself still works: close it politely */
        return -1;
    }
    if (f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
        em_rabbitmq_close_text(&f.payload.method, why, n);
        amqp_connection_close_ok_t ok = {0};
        amqp_send_method(s->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        *alive = 0;
        return -1;
    }
    if (f.payload.method.id == AMQP_BASIC_CANCEL_METHOD) {
        snprintf(why, n, "the broker cancelled the consumer (queue '%s' deleted?)", s->queue);
        *alive = 1;
        return -1;
    }
    return 0;
}

/* One delivery into the current block. A record the receiver refuses (out
 * of memory) goes back to the queue at once. Returns 1 when pushed, 0 when
 * not, -1 with why when even the nack failed. */
static int take(rmq_src *s, em_receiver *r, const amqp_envelope_t *e, char *why, size_t n)
{
    const amqp_basic_properties_t *p = &e->message.properties;
    int64_t ts = (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) ? (int64_t)p->timestamp * 1000
                                                           : em_clock_now_ms();
    em_push rec = {.value = e->message.body.bytes, .value_len = e->message.body.len,
                   .key = e->routing_key.bytes,
                   .key_len = e->routing_key.len, .ts_ms = ts, .partition = s->gen,
                   .offset = (int64_t)e->delivery_tag, .meta = e->exchange.bytes,
                   .meta_len = e->exchange.len};
    if (e->delivery_tag > s->last_tag)
        s->last_tag = e->delivery_tag;
    if (em_receiver_push(r, &rec) == 0)
        return 1;
    em_log(EM_LOG_ERROR, job_of(s), "%s: the receiver refused a %zu-byte message; requeued it",
           s->name, e->message.body.len);
    return settle(s, e->delivery_tag, e->delivery_tag, 0, why, n) == 0 ? 0 : -1;
}

/* Tells the receiver what the broker holds for this source, at most once a
 * LAG_PERIOD_MS, from the receiver thread (so never once per record): the
 * queue's ready messages (queue.declare passive on the consuming channel;
 * deliveries that arrive meanwhile are queued by librabbitmq for the next
 * consume) plus the deliveries this consumer took and has not acked yet.
 * Deliveries still in the socket, not yet taken, are in neither count.
 * 0, or -1 with why when the channel or the connection failed. */
static int report_lag(rmq_src *s, char *why, size_t n, int *alive)
{
    int64_t now = em_clock_mono_ms();
    if (s->lag_at && now - s->lag_at < LAG_PERIOD_MS)
        return 0;
    s->lag_at = now;
    amqp_queue_declare_ok_t *q = amqp_queue_declare(s->conn, EM_RABBITMQ_CHANNEL,
                                                    amqp_cstring_bytes(s->queue), 1, 0, 0, 0,
                                                    amqp_empty_table);
    if (!q) {
        char text[256];
        amqp_rpc_reply_t res = amqp_get_rpc_reply(s->conn);
        *alive = res.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION;
        em_rabbitmq_reply_text(res, text, sizeof text);
        snprintf(why, n, "cannot read the depth of queue '%.100s' (queue.declare passive): %s",
                 s->queue, text);
        return -1;
    }
    uint64_t settled = s->settled;
    for (size_t i = 0; i < s->nahead; i++)
        settled += s->ahead[i].hi - s->ahead[i].lo + 1;
    uint64_t unacked = s->last_tag > settled ? s->last_tag - settled : 0;
    em_buf b;
    em_buf_init(&b);
    em_buf_printf(&b, "[{\"queue\":");
    em_buf_json_str(&b, s->queue);
    em_buf_printf(&b, ",\"messages\":%u,\"consumers\":%u,\"unacked\":%llu}]",
                  (unsigned)q->message_count, (unsigned)q->consumer_count,
                  (unsigned long long)unacked);
    em_buf_add(&b, "", 1);
    em_receiver_set_lag(s->r, (int64_t)q->message_count + (int64_t)unacked,
                        b.oom ? NULL : b.data);
    em_buf_free(&b);
    return 0;
}

/* Validates the options; never touches the network. The prefetch, unless
 * given, is derived from the rate cap: unacked messages are those of the
 * batch being filled plus those being processed, so about two batch
 * intervals' worth at max_rate keeps the cap, not the window, the limit.
 * The connector cannot see the job's batch interval, so 1 s (the default
 * streaming.batchInterval) is assumed: 2 s at max_rate. */
static void *rmq_create(const em_props *p, em_receiver *r, char *err, size_t errlen)
{
    const char *url = em_props_get(p, "url"), *queue = em_props_get(p, "queue");
    const char *exchange = em_props_get(p, "exchange"), *rk = em_props_get(p, "routing_key");
    if (!url) {
        snprintf(err, errlen, "rabbitmq source: option 'url' is required "
                              "(amqp://user:password@host:port/vhost)");
        return NULL;
    }
    if (!queue || !*queue || strlen(queue) > 255) {
        snprintf(err, errlen, "rabbitmq source: option 'queue' is required: a queue name of 1 "
                              "to 255 bytes");
        return NULL;
    }
    if (rk && !exchange) {
        snprintf(err, errlen, "rabbitmq source: option 'routing_key' binds the queue to an "
                              "exchange: set 'exchange' too");
        return NULL;
    }
    if ((exchange && strlen(exchange) > 255) || (rk && strlen(rk) > 255)) {
        snprintf(err, errlen, "rabbitmq source: options 'exchange' and 'routing_key' are at most "
                              "255 bytes");
        return NULL;
    }
    int prefetch;
    char from[64];
    if (em_props_get(p, "prefetch")) {
        int64_t v = em_props_int(p, "prefetch", DEFAULT_PREFETCH);
        if (v < 1 || v > 65535) {
            snprintf(err, errlen, "rabbitmq source: option 'prefetch' must be 1-65535, got %lld",
                     (long long)v);
            return NULL;
        }
        prefetch = (int)v;
        snprintf(from, sizeof from, "option 'prefetch'");
    } else if (em_receiver_max_rate(r) > 0) {
        double window = RATE_WINDOW_BATCHES * (double)em_receiver_batch_interval_ms(r) / 1000.0;
        double v = ceil(em_receiver_max_rate(r) * window);
        prefetch = v < 1 ? 1 : v > 65535 ? 65535 : (int)v;
        snprintf(from, sizeof from, "%g s at max_rate %g/s", window, em_receiver_max_rate(r));
    } else {
        prefetch = DEFAULT_PREFETCH;
        snprintf(from, sizeof from, "default");
    }
    rmq_src *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "rabbitmq source: out of memory");
        return NULL;
    }
    if (em_rabbitmq_url_parse(&s->url, url, "rabbitmq source", err, errlen) != 0) {
        free(s);
        return NULL;
    }
    s->r = r;
    s->queue = strdup(queue);
    s->exchange = exchange ? strdup(exchange) : NULL;
    s->routing_key = rk ? strdup(rk) : NULL;
    if (!s->queue || (exchange && !s->exchange) || (rk && !s->routing_key)) {
        free(s->queue);
        free(s->exchange);
        free(s->routing_key);
        em_rabbitmq_url_free(&s->url);
        free(s);
        snprintf(err, errlen, "rabbitmq source: out of memory");
        return NULL;
    }
    s->declare = em_props_bool(p, "declare", 1);
    s->prefetch = prefetch;
    snprintf(s->prefetch_from, sizeof s->prefetch_from, "%s", from);
    snprintf(s->name, sizeof s->name, "rabbitmq queue '%s' at %s", s->queue, s->url.shown);
    snprintf(s->conn_name, sizeof s->conn_name, "ember %s job %s, queue %s", em_identity_id(),
             em_receiver_job(r),
             s->queue);
    s->delay0_ms = s->delay_ms = em_props_ms(p, "reconnect_delay", 1000);
    if (s->delay0_ms < 1)
        s->delay0_ms = s->delay_ms = 1;
    pthread_mutex_init(&s->lock, NULL);
    atomic_init(&s->resync, 0);
    return s;
}

/* Sends queued acks, then pushes at most max deliveries, waiting at most
 * timeout_ms for the first (in slices, so acks queued meanwhile go out) and
 * not at all for the rest. Connects first when needed. Returns the count
 * pushed, or -1 when the connection failed (logged once per outage; the
 * next call reconnects after the backoff). */
static int rmq_poll(void *self, em_receiver *r, uint32_t max, int timeout_ms)
{
    rmq_src *s = self;
    int64_t deadline = em_clock_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    if (!s->conn) {
        int c = connect_src(s, deadline);
        if (c <= 0)
            return c;
    }
    char why[512];
    int alive = 1, rc = send_settles(s, why, sizeof why);
    if (rc != 0)
        return fail(s, why, rc == -2);
    if (report_lag(s, why, sizeof why, &alive) != 0)
        return fail(s, why, alive);
    uint32_t pushed = 0;
    while (pushed < max) {
        amqp_maybe_release_buffers(s->conn);
        int64_t now = em_clock_mono_ms();
        if (!s->healthy && now - s->connected_at >= HEALTHY_MS)
            s->healthy = 1;
        int64_t wait = pushed ? 0 : deadline - now;
        struct timeval tv;
        em_rabbitmq_timeval(&tv, wait > WAIT_SLICE_MS ? WAIT_SLICE_MS : wait);
        amqp_envelope_t env;
        amqp_rpc_reply_t res = amqp_consume_message(s->conn, &env, &tv, 0);
        if (res.reply_type == AMQP_RESPONSE_NORMAL) {
            int t = take(s, r, &env, why, sizeof why);
            amqp_destroy_envelope(&env);
            if (t < 0) {
                alive = 0;
                break;
            }
            pushed += (uint32_t)t;
            s->healthy = 1;
            continue;
        }
        if (res.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            res.library_error == AMQP_STATUS_TIMEOUT) {
            if (pushed || em_clock_mono_ms() >= deadline)
                return (int)pushed;
            rc = send_settles(s, why, sizeof why);
            if (rc != 0) {
                alive = rc == -2;
                break;
            }
            continue;
        }
        if (res.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            res.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            if (other_frame(s, why, sizeof why, &alive) == 0)
                continue;
        } else {
            char text[384];
            em_rabbitmq_reply_text(res, text, sizeof text);
            snprintf(why, sizeof why, "connection lost: %s", text);
            alive = 0;
        }
        break;
    }
    if (pushed >= max)
        return (int)pushed;
    fail(s, why, alive); /* what was pushed stays in its block; its acks will be stale */
    return pushed ? (int)pushed : -1;
}

/* Worker thread: queues "ack (ok) or nack these tags" for the receiver
 * thread, one op per run of consecutive tags of one connection. Blocks of a
 * receiver come in the order they were filled, so a batch is usually one
 * run: one ack frame with multiple = 1. */
static void rmq_batch_done(void *self, em_block *const *blocks, size_t n, int ok)
{
    rmq_src *s = self;
    settle_op *ops = NULL;
    size_t nops = 0, cap = 0;
    int oom = 0;
    for (size_t b = 0; b < n && !oom; b++) {
        const em_block *blk = blocks[b];
        uint32_t run = 0;
        for (uint32_t i = 0; i < blk->count; i++) {
            em_push one, *rec = &one;
            em_block_read(blk, i, &run, rec);
            uint64_t tag = (uint64_t)rec->offset;
            if (nops && ops[nops - 1].gen == rec->partition && ops[nops - 1].hi + 1 == tag) {
                ops[nops - 1].hi = tag;
                continue;
            }
            if (nops == cap) {
                cap = cap ? cap * 2 : 4;
                settle_op *g = realloc(ops, cap * sizeof *g);
                if (!g) {
                    oom = 1;
                    break;
                }
                ops = g;
            }
            ops[nops++] = (settle_op){rec->partition, ok ? 1 : 0, tag, tag};
        }
    }
    pthread_mutex_lock(&s->lock);
    if (!oom && s->nops + nops > s->capops) {
        size_t c = s->capops ? s->capops : 16;
        while (c < s->nops + nops)
            c *= 2;
        settle_op *g = realloc(s->ops, c * sizeof *g);
        if (g) {
            s->ops = g;
            s->capops = c;
        } else {
            oom = 1;
        }
    }
    if (!oom) {
        if (nops)
            memcpy(s->ops + s->nops, ops, nops * sizeof *ops);
        s->nops += nops;
    }
    pthread_mutex_unlock(&s->lock);
    free(ops);
    if (oom) {
        /* Unacked messages would hold the prefetch window for ever: make the
         * receiver reconnect, and the broker deliver them again. */
        atomic_store(&s->resync, 1);
        em_log(EM_LOG_ERROR, job_of(s), "%s: out of memory queueing acknowledgements", s->name);
    }
}

/* Accepts NULL. Runs once the receiver thread has stopped and every batch
 * holding its blocks is done, so the last acks (a graceful stop's final
 * batch) are sent here before the connection closes; whatever was
 * delivered but not acked goes back to the queue. */
static void rmq_free(void *self)
{
    rmq_src *s = self;
    if (!s)
        return;
    if (s->conn) {
        char why[512];
        if (send_settles(s, why, sizeof why) != 0)
            em_log(EM_LOG_WARN, job_of(s), "%s: acknowledging the last batches failed: %s; the "
                   "broker delivers them again", s->name, why);
        em_rabbitmq_close(s->conn, 1);
        s->conn = NULL;
    }
    em_rabbitmq_url_free(&s->url);
    free(s->queue);
    free(s->exchange);
    free(s->routing_key);
    free(s->ahead);
    free(s->ops);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* The broker keeps what was not acked and delivers it again: no write-ahead
 * log needed. */
static int rmq_acknowledges(void *self)
{
    (void)self;
    return 1;
}

const em_connector em_rabbitmq_connector = {
    .name = "rabbitmq",
    .options = rmq_options,
    .create = rmq_create,
    .poll = rmq_poll,
    .batch_done = rmq_batch_done,
    .free = rmq_free,
    .acknowledges = rmq_acknowledges,
};

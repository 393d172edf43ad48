/* rabbitmq.c — RabbitMQ through librabbitmq (rabbitmq-c 0.11): a queue as a
 * source, and the to_rabbitmq sink.
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
 * Sink. Functions exported for the FFI of lua/ember/sinks/rabbitmq.lua:
 * borrow a pooled connection whose channel is in confirm mode, publish every
 * record persistent, wait for every publisher confirm. A nack, a returned
 * message (mandatory) or a connection error fails the batch and closes the
 * connection.
 */
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

#define CHANNEL 1
#define MAX_DELAY_MS 30000
#define CONNECT_TIMEOUT_MS 5000
#define RPC_TIMEOUT_MS 10000 /* a broker that stops answering must not hang a thread for ever */
#define HEARTBEAT_S 60       /* source only: pooled sink connections idle between batches */
#define WAIT_SLICE_MS 20     /* longest a waiting poll() goes without sending queued acks */
#define HEALTHY_MS 5000      /* up this long (or a delivery): the next outage backs off from the start */
#define DEFAULT_PREFETCH 1000
#define RATE_WINDOW_BATCHES 2.0 /* derived prefetch: two batch intervals at max_rate, see rmq_create() */
#define CONFIRM_DRAIN_EVERY 1024
#define LAG_PERIOD_MS 1000   /* how often the queue's depth is asked and told to the receiver */

/* ---- shared: URLs, connections, broker replies ---------------------------------------- */

typedef struct rmq_url {
    char *buf; /* amqp_parse_url() cuts this copy up; info's strings point into it */
    struct amqp_connection_info info;
    char shown[512]; /* amqp://user@host:port/vhost: the URL without its password */
} rmq_url;

static char default_vhost[] = "/";

static void url_free(rmq_url *u)
{
    free(u->buf);
    u->buf = NULL;
}

/* Parses url with amqp_parse_url into u. what names the component for the
 * error ("rabbitmq source"). An empty vhost ("amqp://host/") means "/", as
 * most clients read it. TLS (amqps://) is refused: not supported yet. */
static int url_parse(rmq_url *u, const char *url, const char *what, char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    if (!(u->buf = strdup(url))) {
        snprintf(err, errlen, "%s: out of memory", what);
        return -1;
    }
    amqp_default_connection_info(&u->info);
    if (amqp_parse_url(u->buf, &u->info) != AMQP_STATUS_OK) {
        snprintf(err, errlen,
                 "%s: option 'url' is not an AMQP URL; expected "
                 "amqp://user:password@host:port/vhost",
                 what);
        url_free(u);
        return -1;
    }
    if (u->info.ssl) {
        snprintf(err, errlen, "%s: option 'url': amqps:// (TLS) is not supported yet; use amqp://",
                 what);
        url_free(u);
        return -1;
    }
    if (!*u->info.vhost)
        u->info.vhost = default_vhost;
    snprintf(u->shown, sizeof u->shown, "amqp://%s@%s:%d/%s", u->info.user, u->info.host,
             u->info.port, strcmp(u->info.vhost, "/") == 0 ? "" : u->info.vhost);
    return 0;
}

static void set_timeval(struct timeval *tv, int64_t ms)
{
    if (ms < 0)
        ms = 0;
    tv->tv_sec = (time_t)(ms / 1000);
    tv->tv_usec = (suseconds_t)(ms % 1000) * 1000;
}

/* Fills buf with the text of a method that closes a channel or a
 * connection and returns 1; 0 for any other method. */
static int close_text(const amqp_method_t *m, char *buf, size_t n)
{
    if (m->id == AMQP_CONNECTION_CLOSE_METHOD) {
        const amqp_connection_close_t *c = m->decoded;
        snprintf(buf, n, "broker closed the connection: %u %.*s", c->reply_code,
                 (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return 1;
    }
    if (m->id == AMQP_CHANNEL_CLOSE_METHOD) {
        const amqp_channel_close_t *c = m->decoded;
        snprintf(buf, n, "broker closed the channel: %u %.*s", c->reply_code,
                 (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return 1;
    }
    return 0;
}

static void reply_text(amqp_rpc_reply_t r, char *buf, size_t n)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        snprintf(buf, n, "ok");
        break;
    case AMQP_RESPONSE_NONE:
        snprintf(buf, n, "no reply from the broker");
        break;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(buf, n, "%s", amqp_error_string2(r.library_error));
        break;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (!close_text(&r.reply, buf, n))
            snprintf(buf, n, "unexpected broker reply 0x%08x", (unsigned)r.reply.id);
        break;
    }
}

/* Checks the reply of the last RPC on c; fills why ("<doing>: <reply>") and
 * returns -1 when it failed. */
static int rpc_failed(amqp_connection_state_t c, const char *doing, char *why, size_t n)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    char text[384];
    reply_text(r, text, sizeof text);
    snprintf(why, n, "%s: %s", doing, text);
    return -1;
}

/* librabbitmq reports any failed TCP connect as "a socket error
 * occurred"; one plain connect() finds out which (refused, unreachable,
 * timed out) for the log line. Fills buf and returns it. */
static const char *connect_error(const char *host, int port, char *buf, size_t n)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai, *a;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int rc = getaddrinfo(host, service, &hints, &ai);
    if (rc != 0) {
        snprintf(buf, n, "cannot resolve host '%s': %s", host, gai_strerror(rc));
        return buf;
    }
    int err = ECONNREFUSED;
    for (a = ai; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        struct timeval tv = {1, 0}; /* bounds a blocking connect() on Linux */
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        err = connect(fd, a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
        close(fd);
        if (err == 0)
            break;
    }
    freeaddrinfo(ai);
    if (err == EINPROGRESS || err == EAGAIN)
        err = ETIMEDOUT;
    char text[128];
    snprintf(buf, n, "cannot connect to %s:%d: %s", host, port,
             err ? strerror_r(err, text, sizeof text) : "a socket error occurred");
    return buf;
}

/* Opens a connection to u, logs in, opens channel CHANNEL. name shows in
 * the broker's connection list. Returns NULL and fills why on failure.
 * Blocks at most about CONNECT_TIMEOUT_MS + RPC_TIMEOUT_MS per step. */
static amqp_connection_state_t open_connection(const rmq_url *u, int heartbeat_s,
                                               const char *name, char *why, size_t n)
{
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *sock = c ? amqp_tcp_socket_new(c) : NULL;
    if (!sock) {
        snprintf(why, n, "out of memory");
        if (c)
            amqp_destroy_connection(c);
        return NULL;
    }
    struct timeval tv;
    set_timeval(&tv, CONNECT_TIMEOUT_MS);
    int rc = amqp_socket_open_noblock(sock, u->info.host, u->info.port, &tv);
    if (rc != AMQP_STATUS_OK) {
        if (rc == AMQP_STATUS_SOCKET_ERROR)
            connect_error(u->info.host, u->info.port, why, n);
        else
            snprintf(why, n, "cannot connect to %s:%d: %s", u->info.host, u->info.port,
                     amqp_error_string2(rc));
        amqp_destroy_connection(c);
        return NULL;
    }
    set_timeval(&tv, RPC_TIMEOUT_MS);
    amqp_set_handshake_timeout(c, &tv);
    amqp_set_rpc_timeout(c, &tv);

    /* consumer_cancel_notify: told when the queue is deleted, instead of a
     * consumer that silently gets nothing more. */
    amqp_table_entry_t caps[1], props[2];
    caps[0].key = amqp_cstring_bytes("consumer_cancel_notify");
    caps[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    caps[0].value.value.boolean = 1;
    props[0].key = amqp_cstring_bytes("capabilities");
    props[0].value.kind = AMQP_FIELD_KIND_TABLE;
    props[0].value.value.table.num_entries = 1;
    props[0].value.value.table.entries = caps;
    props[1].key = amqp_cstring_bytes("connection_name");
    props[1].value.kind = AMQP_FIELD_KIND_UTF8;
    props[1].value.value.bytes = amqp_cstring_bytes(name);
    amqp_table_t table = {2, props};
    amqp_rpc_reply_t r =
        amqp_login_with_properties(c, u->info.vhost, 0, AMQP_DEFAULT_FRAME_SIZE, heartbeat_s,
                                   &table, AMQP_SASL_METHOD_PLAIN, u->info.user, u->info.password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        char text[384];
        reply_text(r, text, sizeof text);
        snprintf(why, n, "login as '%s' to vhost '%s' failed (option 'url'): %s", u->info.user,
                 u->info.vhost, text);
        amqp_destroy_connection(c);
        return NULL;
    }
    amqp_channel_open(c, CHANNEL);
    if (rpc_failed(c, "cannot open a channel", why, n)) {
        amqp_destroy_connection(c);
        return NULL;
    }
    return c;
}

/* Closes c: politely when the peer is believed alive (so the broker logs
 * no "unexpectedly closed" warning), else just the socket. */
static void close_connection(amqp_connection_state_t c, int alive)
{
    if (!c)
        return;
    if (alive) {
        struct timeval tv;
        set_timeval(&tv, 2000); /* at exit or after an error: do not wait long */
        amqp_set_rpc_timeout(c, &tv);
        amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(c);
}

/* ---- source ------------------------------------------------------------------------- */

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
    rmq_url url;
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
        close_connection(s->conn, alive);
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
        amqp_queue_declare(c, CHANNEL, queue, 0, 1, 0, 0, amqp_empty_table);
        snprintf(doing, sizeof doing, "cannot declare durable queue '%s' (options 'queue', "
                 "'declare'; set declare = false to use an existing queue as it is)", s->queue);
        if (rpc_failed(c, doing, why, n))
            return -1;
    }
    if (s->exchange) {
        amqp_queue_bind(c, CHANNEL, queue, amqp_cstring_bytes(s->exchange),
                        amqp_cstring_bytes(s->routing_key ? s->routing_key : ""),
                        amqp_empty_table);
        snprintf(doing, sizeof doing,
                 "cannot bind queue '%s' to exchange '%s' (options 'exchange', 'routing_key')",
                 s->queue, s->exchange);
        if (rpc_failed(c, doing, why, n))
            return -1;
    }
    amqp_basic_qos(c, CHANNEL, 0, (uint16_t)s->prefetch, 0);
    if (rpc_failed(c, "cannot set the prefetch (option 'prefetch')", why, n))
        return -1;
    /* The consumer tag names the driver, so rabbitmqctl list_consumers
     * tells competing drivers apart. */
    char tag[200];
    snprintf(tag, sizeof tag, "ember-%s-%s", em_identity_id(), job_of(s));
    amqp_basic_consume(c, CHANNEL, queue, amqp_cstring_bytes(tag), 0, 0, 0, amqp_empty_table);
    snprintf(doing, sizeof doing, "cannot consume queue '%s' (option 'queue')", s->queue);
    return rpc_failed(c, doing, why, n);
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
    amqp_connection_state_t c = open_connection(&s->url, HEARTBEAT_S, s->conn_name, why,
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
        rc = ok ? amqp_basic_ack(s->conn, CHANNEL, hi, 1)
                : amqp_basic_nack(s->conn, CHANNEL, hi, 1, 1);
        s->settled = hi;
        fold_ahead(s);
    } else {
        for (uint64_t t = lo; t <= hi && rc == AMQP_STATUS_OK; t++)
            rc = ok ? amqp_basic_ack(s->conn, CHANNEL, t, 0)
                    : amqp_basic_nack(s->conn, CHANNEL, t, 0, 1);
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
        close_text(&f.payload.method, why, n);
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(s->conn, f.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        *alive = 1; /* the connection itself still works: close it politely */
        return -1;
    }
    if (f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
        close_text(&f.payload.method, why, n);
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
    amqp_queue_declare_ok_t *q = amqp_queue_declare(s->conn, CHANNEL,
                                                    amqp_cstring_bytes(s->queue), 1, 0, 0, 0,
                                                    amqp_empty_table);
    if (!q) {
        char text[256];
        amqp_rpc_reply_t res = amqp_get_rpc_reply(s->conn);
        *alive = res.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION;
        reply_text(res, text, sizeof text);
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
    if (url_parse(&s->url, url, "rabbitmq source", err, errlen) != 0) {
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
        url_free(&s->url);
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
        set_timeval(&tv, wait > WAIT_SLICE_MS ? WAIT_SLICE_MS : wait);
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
            reply_text(res, text, sizeof text);
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
        close_connection(s->conn, 1);
        s->conn = NULL;
    }
    url_free(&s->url);
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

/* ---- sink (called from Lua through the FFI) ------------------------------------------ */

typedef struct sink_conn {
    amqp_connection_state_t c;
    uint64_t published; /* publish sequence number of the channel's last message */
    int dead;           /* the socket failed: close without the closing handshake */
} sink_conn;

typedef struct em_rabbitmq_batch {
    em_pool *pool;
    sink_conn *sc;
    char *exchange;
    int mandatory;
    int64_t deadline; /* monotonic ms: when waiting for confirms gives up */
    int timeout_ms;
    uint64_t base;             /* sequence number before the batch's first message */
    uint64_t count, confirmed; /* published and confirmed messages of this batch */
    uint64_t low;              /* every message <= low (1-based) is confirmed */
    uint8_t *done;             /* per message: confirmed */
    size_t cap;
    int failed;
    char where[600]; /* "amqp://user@host:port/ exchange 'x'" */
    char err[1536];
} em_rabbitmq_batch;

/* Pool op: one connection with channel CHANNEL in confirm mode. */
static void *sink_connect(const char *endpoint, char *err, size_t errlen)
{
    rmq_url u;
    if (url_parse(&u, endpoint, "to_rabbitmq", err, errlen) != 0)
        return NULL;
    char why[1024];
    amqp_connection_state_t c = open_connection(&u, 0, "ember to_rabbitmq", why, sizeof why);
    if (c) {
        amqp_confirm_select(c, CHANNEL);
        if (rpc_failed(c, "cannot enable publisher confirms", why, sizeof why)) {
            close_connection(c, 1);
            c = NULL;
        }
    }
    sink_conn *sc = c ? calloc(1, sizeof *sc) : NULL;
    if (c && !sc) {
        close_connection(c, 1);
        snprintf(why, sizeof why, "out of memory");
    }
    if (!sc)
        snprintf(err, errlen, "%s: %s", u.shown, why);
    else
        sc->c = c;
    url_free(&u);
    return sc;
}

static void sink_close(void *p)
{
    sink_conn *sc = p;
    if (!sc)
        return;
    close_connection(sc->c, !sc->dead);
    free(sc);
}

static const em_pool_ops sink_ops = {sink_connect, sink_close};

/* Records the batch's first error (later ones are consequences). dead:
 * the socket failed. Returns -1. */
static int batch_fail(em_rabbitmq_batch *b, int dead, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int batch_fail(em_rabbitmq_batch *b, int dead, const char *fmt, ...)
{
    if (!b->failed) {
        char text[768];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof text, fmt, ap);
        va_end(ap);
        snprintf(b->err, sizeof b->err, "%s: %s", b->where, text);
        b->failed = 1;
    }
    if (dead)
        b->sc->dead = 1;
    return -1;
}

/* A basic.ack from the broker: message tag (or every one up to it, with
 * multiple) of the channel is stored. Tags before the batch are ignored. */
static void confirm(em_rabbitmq_batch *b, uint64_t tag, int multiple)
{
    if (tag <= b->base || b->count == 0)
        return;
    uint64_t i = tag - b->base; /* 1-based index in the batch */
    if (i > b->count)
        i = b->count;
    if (multiple) {
        for (uint64_t k = b->low + 1; k <= i; k++)
            if (!b->done[k - 1]) {
                b->done[k - 1] = 1;
                b->confirmed++;
            }
    } else if (!b->done[i - 1]) {
        b->done[i - 1] = 1;
        b->confirmed++;
    }
    while (b->low < b->count && b->done[b->low])
        b->low++;
}

/* Reads what the broker sent on the sink connection: confirms, returned
 * messages, closes. block = 0: only frames already there (keeps the socket
 * drained while a large batch is still being published); block = 1: until
 * every message of the batch is confirmed or the deadline passes. 0, or
 * -1 with the batch failed. */
static int read_confirms(em_rabbitmq_batch *b, int block)
{
    amqp_connection_state_t c = b->sc->c;
    while (b->confirmed < b->count) {
        struct timeval tv = {0, 0};
        if (block) {
            int64_t left = b->deadline - em_clock_mono_ms();
            if (left <= 0)
                return batch_fail(b, 1, "no publisher confirm for %llu of %llu messages within %d ms",
                                  (unsigned long long)(b->count - b->confirmed),
                                  (unsigned long long)b->count, b->timeout_ms);
            set_timeval(&tv, left);
        }
        amqp_maybe_release_buffers(c);
        amqp_frame_t f;
        int rc = amqp_simple_wait_frame_noblock(c, &f, &tv);
        if (rc == AMQP_STATUS_TIMEOUT) {
            if (!block)
                return 0;
            continue;
        }
        if (rc != AMQP_STATUS_OK)
            return batch_fail(b, 1, "connection lost waiting for publisher confirms: %s",
                              amqp_error_string2(rc));
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        amqp_method_t *m = &f.payload.method;
        char text[512];
        switch (m->id) {
        case AMQP_BASIC_ACK_METHOD: {
            const amqp_basic_ack_t *a = m->decoded;
            confirm(b, a->delivery_tag, a->multiple);
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            const amqp_basic_nack_t *a = m->decoded;
            return batch_fail(b, 0, "the broker refused message %llu of the batch (basic.nack%s)",
                              (unsigned long long)(a->delivery_tag > b->base
                                                       ? a->delivery_tag - b->base : 0),
                              a->multiple ? ", and those before it" : "");
        }
        case AMQP_BASIC_RETURN_METHOD: {
            const amqp_basic_return_t *a = m->decoded;
            snprintf(text, sizeof text, "%u %.*s (routing key '%.*s')", a->reply_code,
                     (int)a->reply_text.len, (const char *)a->reply_text.bytes,
                     (int)a->routing_key.len, (const char *)a->routing_key.bytes);
            amqp_message_t msg; /* the returned message follows: read it off the wire */
            amqp_rpc_reply_t r = amqp_read_message(c, f.channel, &msg, 0);
            if (r.reply_type == AMQP_RESPONSE_NORMAL)
                amqp_destroy_message(&msg);
            return batch_fail(b, r.reply_type != AMQP_RESPONSE_NORMAL,
                              "the broker returned a message: %s: no queue is bound for it "
                              "(mandatory = true)", text);
        }
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD:
            close_text(m, text, sizeof text);
            return batch_fail(b, 1, "%s", text);
        default: /* connection.blocked and the like: keep waiting, the deadline holds */
            break;
        }
    }
    return 0;
}

/* Starts a batch for the sink: borrows a connection of the pool for url
 * (connecting if the pool has room), waiting at most timeout_ms for it; the
 * same timeout bounds the wait for confirms in em_rabbitmq_batch_finish().
 * exchange "" is the default exchange. NULL and err on failure. The caller
 * must end it with em_rabbitmq_batch_finish(). */
em_rabbitmq_batch *em_rabbitmq_batch_begin(const char *url, const char *exchange, int mandatory,
                                           int pool_size, int timeout_ms, char *err,
                                           size_t errlen)
{
    if (strlen(exchange) > 255) {
        snprintf(err, errlen, "exchange name longer than 255 bytes");
        return NULL;
    }
    em_rabbitmq_batch *b = calloc(1, sizeof *b);
    if (!b || !(b->exchange = strdup(exchange))) {
        free(b);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    b->pool = em_pool_get("rabbitmq", url, &sink_ops, pool_size);
    b->sc = b->pool ? em_pool_borrow(b->pool, timeout_ms, err, errlen) : NULL;
    if (!b->sc) {
        if (!b->pool)
            snprintf(err, errlen, "out of memory");
        free(b->exchange);
        free(b);
        return NULL;
    }
    rmq_url u;
    char ignore[8];
    if (url_parse(&u, url, "", ignore, sizeof ignore) == 0) {
        snprintf(b->where, sizeof b->where, "%s exchange '%s'", u.shown, exchange);
        url_free(&u);
    }
    b->mandatory = mandatory ? 1 : 0;
    b->timeout_ms = timeout_ms;
    b->base = b->sc->published;
    return b;
}

/* Publishes one persistent message (delivery_mode 2) with this routing
 * key. Returns 0, or -1 once the batch has failed (finish reports why). */
int em_rabbitmq_batch_publish(em_rabbitmq_batch *b, const char *rk, size_t rklen,
                              const char *body, size_t len)
{
    if (b->failed)
        return -1;
    if (rklen > 255)
        return batch_fail(b, 0, "routing key of message %llu is %zu bytes; AMQP allows 255",
                          (unsigned long long)b->count + 1, rklen);
    if (b->count == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        uint8_t *d = realloc(b->done, cap);
        if (!d)
            return batch_fail(b, 0, "out of memory");
        memset(d + b->cap, 0, cap - b->cap);
        b->done = d;
        b->cap = cap;
    }
    amqp_basic_properties_t props;
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    amqp_bytes_t key = {rklen, (void *)rk}, payload = {len, (void *)body};
    int rc = amqp_basic_publish(b->sc->c, CHANNEL, amqp_cstring_bytes(b->exchange), key,
                                b->mandatory, 0, &props, payload);
    if (rc != AMQP_STATUS_OK)
        return batch_fail(b, 1, "cannot publish: %s", amqp_error_string2(rc));
    b->sc->published++;
    b->count++;
    if (b->count % CONFIRM_DRAIN_EVERY == 0)
        return read_confirms(b, 0);
    return 0;
}

/* Ends a batch: unless abort, waits until the broker confirmed every
 * message. Gives the connection back to the pool (closed after any error
 * or an abort) and frees b. Returns 0, or -1 with err. Accepts NULL. */
static int rabbitmq_batch_finish_now(em_rabbitmq_batch *b, int abort, char *err, size_t errlen);

int em_rabbitmq_batch_finish(em_rabbitmq_batch *b, int abort, char *err, size_t errlen)
{
    em_budget_wait_begin(); /* a wait on the server is not the batch's own time */
    int r = rabbitmq_batch_finish_now(b, abort, err, errlen);
    em_budget_wait_end();
    return r;
}

static int rabbitmq_batch_finish_now(em_rabbitmq_batch *b, int abort, char *err, size_t errlen)
{
    if (!b)
        return -1;
    if (!b->failed && !abort) {
        b->deadline = em_clock_mono_ms() + b->timeout_ms;
        read_confirms(b, 1);
    }
    int rc = 0;
    if (b->failed) {
        snprintf(err, errlen, "%s", b->err);
        rc = -1;
    } else if (abort) {
        snprintf(err, errlen, "%s: publishing stopped after %llu messages", b->where,
                 (unsigned long long)b->count);
        rc = -1;
    }
    /* After a failure or an abort, confirms may still be on their way:
     * a fresh connection is simpler than telling them apart. A dead socket
     * is the pool's last error (a nack or a return is the batch's only). */
    if (b->failed && b->sc->dead)
        em_pool_note_error(b->pool, b->err);
    em_pool_return(b->pool, b->sc, rc != 0);
    free(b->done);
    free(b->exchange);
    free(b);
    return rc;
}

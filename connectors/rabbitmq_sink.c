/* rabbitmq_sink.c — the to_rabbitmq sink, called from
 * lua/ember/sinks/rabbitmq.lua through the FFI: borrow a pooled connection
 * whose channel is in confirm mode, publish every record persistent, wait
 * for every publisher confirm. A nack, a returned message (mandatory) or a
 * connection error fails the batch and closes the connection.
 */
#include <amqp.h>
#include <amqp_framing.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/budget.h"
#include "../core/clock.h"
#include "../core/pool.h"
#include "rabbitmq_conn.h"

#define CONFIRM_DRAIN_EVERY 1024

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

/* Pool op: one connection with channel EM_RABBITMQ_CHANNEL in confirm mode. */
static void *sink_connect(const char *endpoint, char *err, size_t errlen)
{
    em_rabbitmq_url u;
    if (em_rabbitmq_url_parse(&u, endpoint, "to_rabbitmq", err, errlen) != 0)
        return NULL;
    char why[1024];
    amqp_connection_state_t c = em_rabbitmq_open(&u, 0, "ember to_rabbitmq", why, sizeof why);
    if (c) {
        amqp_confirm_select(c, EM_RABBITMQ_CHANNEL);
        if (em_rabbitmq_rpc_failed(c, "cannot enable publisher confirms", why, sizeof why)) {
            em_rabbitmq_close(c, 1);
            c = NULL;
        }
    }
    sink_conn *sc = c ? calloc(1, sizeof *sc) : NULL;
    if (c && !sc) {
        em_rabbitmq_close(c, 1);
        snprintf(why, sizeof why, "out of memory");
    }
    if (!sc)
        snprintf(err, errlen, "%s: %s", u.shown, why);
    else
        sc->c = c;
    em_rabbitmq_url_free(&u);
    return sc;
}

static void sink_close(void *p)
{
    sink_conn *sc = p;
    if (!sc)
        return;
    em_rabbitmq_close(sc->c, !sc->dead);
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
            em_rabbitmq_timeval(&tv, left);
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
            em_rabbitmq_close_text(m, text, sizeof text);
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
    em_rabbitmq_url u;
    char ignore[8];
    if (em_rabbitmq_url_parse(&u, url, "", ignore, sizeof ignore) == 0) {
        snprintf(b->where, sizeof b->where, "%s exchange '%s'", u.shown, exchange);
        em_rabbitmq_url_free(&u);
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
    int rc = amqp_basic_publish(b->sc->c, EM_RABBITMQ_CHANNEL, amqp_cstring_bytes(b->exchange), key,
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

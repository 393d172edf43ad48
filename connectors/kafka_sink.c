/* kafka_sink.c — Kafka as a sink: em_kafka_send() and
 * em_kafka_delivery_wait(), called from lua/ember/sinks/kafka.lua through
 * the FFI. One producer per `brokers` string, shared by every job, made on
 * first use and kept for the life of the process, its delivery reports
 * served by a thread of its own. A batch sends its chunks as it is computed
 * and waits once, at its end, for every delivery report; the first delivery
 * error fails it.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "../core/budget.h"
#include "../core/log.h"
#include "../core/pool.h"
#include "kafka_errors.h"

#define SINK_TIMEOUT_MS "30000" /* a record the cluster did not take by then fails its batch */

typedef struct producer {
    char *brokers;
    rd_kafka_t *rk;
    pthread_t poller;
    atomic_int last_err; /* error code last logged (an outage once); 0 after a delivery */
    em_pool *entry;      /* its entry beside the sink pools (core/pool.h): status, last error */
    struct producer *next;
} producer;

/* The delivery reports of one batch of a sink: em_kafka_send() adds to
 * it, em_kafka_delivery_wait() waits for all of them and frees it. */
typedef struct em_kafka_delivery {
    pthread_mutex_t lock;
    pthread_cond_t done;
    size_t pending;
    rd_kafka_resp_err_t err;
    char why[256];
} em_kafka_delivery;

static pthread_mutex_t producers_lock = PTHREAD_MUTEX_INITIALIZER;
static producer *producers;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    producer *p = opaque;
    if (!m->err && atomic_load(&p->last_err) && em_kafka_is_outage(atomic_exchange(&p->last_err, 0)))
        em_log(EM_LOG_INFO, NULL, "kafka sink %s: the brokers answer again", p->brokers);
    em_kafka_delivery *d = m->_private;
    pthread_mutex_lock(&d->lock);
    if (m->err && !d->err) {
        d->err = m->err;
        snprintf(d->why, sizeof d->why, "delivery to %s[%" PRId32 "] failed: %s",
                 rd_kafka_topic_name(m->rkt), m->partition, rd_kafka_err2str(m->err));
        em_pool_note_error(p->entry, d->why); /* once per batch */
    }
    if (--d->pending == 0)
        pthread_cond_signal(&d->done);
    pthread_mutex_unlock(&d->lock);
}

static void on_sink_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    producer *p = opaque;
    int before = atomic_exchange(&p->last_err, err);
    if (before != err && !(em_kafka_is_outage(before) && em_kafka_is_outage(err))) /* once per outage */
        em_log(EM_LOG_WARN, NULL, "kafka sink %s: %s", p->brokers, reason);
}

static void on_sink_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    em_log(level <= 2 ? EM_LOG_ERROR : EM_LOG_DEBUG, NULL, "kafka sink: librdkafka %s: %s", fac,
           buf);
}

/* Serves delivery reports for the life of the process. */
static void *poller(void *arg)
{
    producer *p = arg;
    for (;;)
        rd_kafka_poll(p->rk, 200);
    return NULL;
}

/* A new producer for brokers, its poller thread started. NULL and why. */
static producer *new_producer(const char *brokers, char *why, size_t len)
{
    static const char *const settings[][2] = {
        {"acks", "all"},
        {"linger.ms", "5"},
        {"message.timeout.ms", SINK_TIMEOUT_MS},
        {"queue.buffering.max.kbytes", "65536"}, /* produce() blocks past it: memory bounded */
        {"client.id", "ember"},
        {"log.connection.close", "false"},
    };
    producer *p = calloc(1, sizeof *p);
    if (!p || !(p->brokers = strdup(brokers))) {
        free(p);
        snprintf(why, len, "out of memory");
        return NULL;
    }
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    int ok = rd_kafka_conf_set(conf, "bootstrap.servers", brokers, why, len) == RD_KAFKA_CONF_OK;
    for (size_t i = 0; ok && i < sizeof settings / sizeof settings[0]; i++)
        ok = rd_kafka_conf_set(conf, settings[i][0], settings[i][1], why, len) == RD_KAFKA_CONF_OK;
    if (ok) {
        rd_kafka_conf_set_opaque(conf, p);
        rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
        rd_kafka_conf_set_error_cb(conf, on_sink_error);
        rd_kafka_conf_set_log_cb(conf, on_sink_log);
        p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, len); /* owns conf on success */
    }
    if (!p->rk) {
        rd_kafka_conf_destroy(conf);
        free(p->brokers);
        free(p);
        return NULL;
    }
    if (pthread_create(&p->poller, NULL, poller, p) != 0) {
        snprintf(why, len, "cannot start its thread");
        rd_kafka_destroy(p->rk);
        free(p->brokers);
        free(p);
        return NULL;
    }
    pthread_setname_np(p->poller, "kafka-sink");
    p->entry = em_pool_get("kafka", brokers, NULL, 1);
    return p;
}

/* The producer for brokers, made on first use and kept. NULL and err. */
static producer *get_producer(const char *brokers, char *err, size_t errlen)
{
    pthread_mutex_lock(&producers_lock);
    producer *p = producers;
    while (p && strcmp(p->brokers, brokers) != 0)
        p = p->next;
    if (!p) {
        char why[512];
        p = new_producer(brokers, why, sizeof why);
        if (p) {
            p->next = producers;
            producers = p;
            em_log(EM_LOG_INFO, NULL, "kafka sink %s: producer ready", brokers);
        } else {
            snprintf(err, errlen, "kafka sink %s: %s", brokers, why);
        }
    }
    pthread_mutex_unlock(&producers_lock);
    return p;
}

/* Exported for lua/ember/sinks/kafka.lua (through the FFI). */
em_kafka_delivery *em_kafka_delivery_new(void);
int em_kafka_send(em_kafka_delivery *d, const char *brokers, const char *topic_name, uint32_t n,
                  const char *const *keys, const uint32_t *key_lens, const char *const *values,
                  const uint32_t *value_lens);
int em_kafka_delivery_wait(em_kafka_delivery *d, char *err, size_t errlen);

em_kafka_delivery *em_kafka_delivery_new(void)
{
    em_kafka_delivery *d = calloc(1, sizeof *d);
    if (d) {
        pthread_mutex_init(&d->lock, NULL);
        pthread_cond_init(&d->done, NULL);
    }
    return d;
}

/* Records the first failure of d. */
static void delivery_fail(em_kafka_delivery *d, rd_kafka_resp_err_t e, const char *why)
{
    pthread_mutex_lock(&d->lock);
    if (!d->err) {
        d->err = e;
        snprintf(d->why, sizeof d->why, "%.250s", why);
    }
    pthread_mutex_unlock(&d->lock);
}

/* Produces n records (keys may be NULL, as may each key) to topic without
 * waiting: their delivery reports come into d. Returns 0, or -1 when one
 * could not be produced (d holds why; the rest are not produced). Safe
 * from any thread; callers share the producer of their brokers string. */
static int kafka_send_now(em_kafka_delivery *d, const char *brokers, const char *topic_name, uint32_t n,
                  const char *const *keys, const uint32_t *key_lens, const char *const *values,
                  const uint32_t *value_lens);

int em_kafka_send(em_kafka_delivery *d, const char *brokers, const char *topic_name, uint32_t n,
                  const char *const *keys, const uint32_t *key_lens, const char *const *values,
                  const uint32_t *value_lens)
{
    em_budget_wait_begin(); /* a full producer queue blocks: the broker's time */
    int r = kafka_send_now(d, brokers, topic_name, n, keys, key_lens, values, value_lens);
    em_budget_wait_end();
    return r;
}

static int kafka_send_now(em_kafka_delivery *d, const char *brokers, const char *topic_name, uint32_t n,
                  const char *const *keys, const uint32_t *key_lens, const char *const *values,
                  const uint32_t *value_lens)
{
    char why[1024];
    producer *p = get_producer(brokers, why, sizeof why);
    if (!p) {
        delivery_fail(d, RD_KAFKA_RESP_ERR__FAIL, why);
        return -1;
    }
    if (n == 0)
        return 0;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(p->rk, topic_name, NULL);
    if (!rkt) {
        rd_kafka_resp_err_t e = rd_kafka_last_error();
        snprintf(why, sizeof why, "topic %s: %s", topic_name, rd_kafka_err2str(e));
        delivery_fail(d, e, why);
        return -1;
    }
    int rc = 0;
    for (uint32_t i = 0; i < n; i++) {
        const char *key = keys ? keys[i] : NULL;
        pthread_mutex_lock(&d->lock);
        d->pending++; /* before produce: its report may come before produce returns */
        pthread_mutex_unlock(&d->lock);
        /* F_BLOCK waits for room in the producer queue; our poller thread frees it */
        if (rd_kafka_produce(rkt, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY | RD_KAFKA_MSG_F_BLOCK,
                             (void *)values[i], value_lens[i], key, key ? key_lens[i] : 0,
                             d) != 0) {
            rd_kafka_resp_err_t e = rd_kafka_last_error();
            pthread_mutex_lock(&d->lock);
            d->pending--;
            pthread_mutex_unlock(&d->lock);
            snprintf(why, sizeof why, "cannot produce to %s: %s", topic_name, rd_kafka_err2str(e));
            em_pool_note_error(p->entry, why);
            delivery_fail(d, e, why);
            rc = -1;
            break; /* the rest would fail the batch anyway */
        }
    }
    rd_kafka_topic_destroy(rkt);
    return rc;
}

/* Waits for every delivery report d expects, then frees d. Returns 0, or
 * -1 with err holding the first failure. */
static int kafka_delivery_wait_now(em_kafka_delivery *d, char *err, size_t errlen);

int em_kafka_delivery_wait(em_kafka_delivery *d, char *err, size_t errlen)
{
    em_budget_wait_begin(); /* a wait on the server is not the batch's own time */
    int r = kafka_delivery_wait_now(d, err, errlen);
    em_budget_wait_end();
    return r;
}

static int kafka_delivery_wait_now(em_kafka_delivery *d, char *err, size_t errlen)
{
    pthread_mutex_lock(&d->lock);
    while (d->pending > 0)
        pthread_cond_wait(&d->done, &d->lock);
    pthread_mutex_unlock(&d->lock);
    int rc = 0;
    if (d->err) {
        snprintf(err, errlen, "%s", d->why);
        rc = -1;
    }
    pthread_cond_destroy(&d->done);
    pthread_mutex_destroy(&d->lock);
    free(d);
    return rc;
}

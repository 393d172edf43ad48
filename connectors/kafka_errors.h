/* kafka_errors.h — what the Kafka source (kafka.c) and sink (kafka_sink.c)
 * both need to tell of librdkafka's errors. */
#ifndef EMBER_KAFKA_ERRORS_H
#define EMBER_KAFKA_ERRORS_H

#include <librdkafka/rdkafka.h>

/* Errors that mean the brokers cannot be reached (librdkafka retries them). */
static inline int em_kafka_is_outage(rd_kafka_resp_err_t err)
{
    return err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || err == RD_KAFKA_RESP_ERR__TRANSPORT ||
           err == RD_KAFKA_RESP_ERR__RESOLVE || err == RD_KAFKA_RESP_ERR__TIMED_OUT ||
           err == RD_KAFKA_RESP_ERR__AUTHENTICATION;
}

#endif

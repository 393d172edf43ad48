/* rabbitmq_conn.h — what the RabbitMQ source (rabbitmq.c) and sink
 * (rabbitmq_sink.c) share: URLs, connections and the broker's replies. */
#ifndef EMBER_RABBITMQ_CONN_H
#define EMBER_RABBITMQ_CONN_H

#include <amqp.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>

#define EM_RABBITMQ_CHANNEL 1

typedef struct em_rabbitmq_url {
    char *buf; /* amqp_parse_url() cuts this copy up; info's strings point into it */
    struct amqp_connection_info info;
    char shown[512]; /* amqp://user@host:port/vhost: the URL without its password */
} em_rabbitmq_url;

/* Parses url with amqp_parse_url into u. what names the component for the
 * error ("rabbitmq source"). An empty vhost ("amqp://host/") means "/", as
 * most clients read it. TLS (amqps://) is refused: not supported yet. */
int em_rabbitmq_url_parse(em_rabbitmq_url *u, const char *url, const char *what, char *err,
                          size_t errlen);
void em_rabbitmq_url_free(em_rabbitmq_url *u);

/* ms as a timeval, for librabbitmq's timeouts. */
void em_rabbitmq_timeval(struct timeval *tv, int64_t ms);

/* Fills buf with the text of a method that closes a channel or a
 * connection and returns 1; 0 for any other method. */
int em_rabbitmq_close_text(const amqp_method_t *m, char *buf, size_t n);

/* The text of an RPC reply that failed, for a log line. */
void em_rabbitmq_reply_text(amqp_rpc_reply_t r, char *buf, size_t n);

/* Checks the reply of the last RPC on c; fills why ("<doing>: <reply>") and
 * returns -1 when it failed. */
int em_rabbitmq_rpc_failed(amqp_connection_state_t c, const char *doing, char *why, size_t n);

/* Opens a connection to u, logs in, opens channel EM_RABBITMQ_CHANNEL.
 * name shows in the broker's connection list. Returns NULL and fills why on
 * failure. Blocks at most a few seconds per step (connect, each RPC). */
amqp_connection_state_t em_rabbitmq_open(const em_rabbitmq_url *u, int heartbeat_s,
                                         const char *name, char *why, size_t n);

/* Closes c: politely when the peer is believed alive (so the broker logs
 * no "unexpectedly closed" warning), else just the socket. */
void em_rabbitmq_close(amqp_connection_state_t c, int alive);

#endif

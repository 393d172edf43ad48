/* redis_conn.h — what the Redis source (redis.c) and the Redis sink
 * (redis_sink.c) share: the URL and a connection made from it. */
#ifndef EMBER_REDIS_CONN_H
#define EMBER_REDIS_CONN_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

/* A parsed redis://[[user]:password@]host[:port][/db]. */
typedef struct em_redis_url {
    char host[256];
    int port, db;
    char *user, *pass; /* NULL when absent */
    char safe[320];    /* the URL without its password, for messages */
} em_redis_url;

/* Parses url into u. The error text never repeats the URL, which may hold
 * a password. 0, or -1 and err. Free with em_redis_url_free. */
int em_redis_url_parse(const char *url, em_redis_url *u, char *err, size_t errlen);
void em_redis_url_free(em_redis_url *u);

/* Connects, authenticates and selects the database; io_timeout_ms bounds
 * every later read and write. NULL with err in words a log line can carry.
 * May block up to a few seconds. */
redisContext *em_redis_connect(const em_redis_url *u, int64_t io_timeout_ms, char *err,
                               size_t errlen);

/* "what: <the I/O failure on c>", for a log line. */
void em_redis_io_error(redisContext *c, const char *what, char *out, size_t n);

#endif

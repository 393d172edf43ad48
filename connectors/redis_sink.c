/* redis_sink.c — Redis as a sink: the em_redis_* calls of
 * lua/ember/redis.lua and lua/ember/sinks/redis.lua, on pooled connections
 * (core/pool.h, kind "redis"). A pooled connection takes a whole batch of
 * commands, already in RESP form, and every reply is checked. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/budget.h"
#include "../core/pool.h"
#include "redis_conn.h"

#define SINK_TIMEOUT_MS 30000

/* Exported for lua/ember/redis.lua and lua/ember/sinks/redis.lua (the FFI
 * declarations there mirror these). Lua encodes commands in RESP itself and
 * hands over whole pipelines, so a batch costs one FFI call and one round
 * trip per chunk, not one per record.
 *
 * The pool's endpoint is the URL itself (the core masks its password when
 * it shows it). */

typedef struct em_redis_conn {
    redisContext *c;
    em_pool *pool;
    char name[320]; /* the URL without password */
    char io_err[256]; /* the I/O failure that broke it, for the pool's last error */
} em_redis_conn;

static void *pool_connect(const char *url, char *err, size_t errlen)
{
    em_redis_url u;
    char why[256];
    if (em_redis_url_parse(url, &u, why, sizeof why) != 0) {
        snprintf(err, errlen, "redis: %s", why);
        return NULL;
    }
    em_redis_conn *c = calloc(1, sizeof *c);
    if (c)
        c->c = em_redis_connect(&u, SINK_TIMEOUT_MS, why, sizeof why);
    else
        snprintf(why, sizeof why, "out of memory");
    if (!c || !c->c) {
        snprintf(err, errlen, "%s: %s", u.safe, why);
        free(c);
        em_redis_url_free(&u);
        return NULL;
    }
    snprintf(c->name, sizeof c->name, "%s", u.safe);
    em_redis_url_free(&u);
    return c;
}

static void pool_close(void *conn)
{
    em_redis_conn *c = conn;
    if (!c)
        return;
    redisFree(c->c);
    free(c);
}

static const em_pool_ops pool_ops = {pool_connect, pool_close};

/* Checks a URL as the sink and ember.redis() take it: 0, or -1 and err
 * (which never repeats the password). */
int em_redis_url_check(const char *url, char *err, size_t errlen)
{
    em_redis_url u;
    if (em_redis_url_parse(url, &u, err, errlen) != 0)
        return -1;
    em_redis_url_free(&u);
    return 0;
}

/* An idle pooled connection the server closed (a restart, a timeout) reads
 * as EOF: it is readable while nothing was asked. */
static int looks_dead(const em_redis_conn *c)
{
    struct pollfd p = {.fd = c->c->fd, .events = POLLIN};
    return c->c->err || poll(&p, 1, 0) != 0;
}

/* A connection from the pool of url's endpoint (pool_size connections, the
 * caller's connector.pool.size), made on demand; NULL and err when the pool
 * stays exhausted for timeout_ms or connecting fails. Give it back with
 * em_redis_release(). */
em_redis_conn *em_redis_borrow(const char *url, int pool_size, int timeout_ms, char *err,
                               size_t errlen)
{
    if (em_redis_url_check(url, err, errlen) != 0)
        return NULL;
    em_pool *p = em_pool_get("redis", url, &pool_ops, pool_size);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (int tries = 0;; tries++) {
        em_redis_conn *c = em_pool_borrow(p, timeout_ms, err, errlen);
        if (!c)
            return NULL;
        c->pool = p;
        if (tries < 8 && looks_dead(c)) {
            em_pool_return(p, c, 1);
            continue;
        }
        return c;
    }
}

/* broken = 1 after an I/O error: the connection is closed, not reused,
 * and the failure's text becomes the pool's last error. */
void em_redis_release(em_redis_conn *c, int broken)
{
    if (!c)
        return;
    if (c->io_err[0])
        em_pool_note_error(c->pool, c->io_err);
    else if (c->c->err)
        em_pool_note_error(c->pool, c->c->errstr);
    em_pool_return(c->pool, c, broken || c->c->err);
}

const char *em_redis_conn_name(const em_redis_conn *c) { return c->name; }

/* Sends n commands encoded in RESP (cmds, len) and reads all n replies.
 * Returns 0 when none was an error; -1 when one was, with *failed the
 * 0-based index of the first and err its text (every reply was still read,
 * so the connection stays usable); -2 on an I/O failure, err saying what
 * (release the connection broken). */
static int redis_pipeline_now(em_redis_conn *c, const char *cmds, size_t len, int n, int *failed,
                      char *err, size_t errlen);

int em_redis_pipeline(em_redis_conn *c, const char *cmds, size_t len, int n, int *failed,
                      char *err, size_t errlen)
{
    em_budget_wait_begin(); /* a wait on the server is not the batch's own time */
    int r = redis_pipeline_now(c, cmds, len, n, failed, err, errlen);
    em_budget_wait_end();
    return r;
}

static int redis_pipeline_now(em_redis_conn *c, const char *cmds, size_t len, int n, int *failed,
                      char *err, size_t errlen)
{
    *failed = -1;
    if (redisAppendFormattedCommand(c->c, cmds, len) != REDIS_OK) {
        snprintf(err, errlen, "%s: out of memory", c->name);
        return -2;
    }
    for (int i = 0; i < n; i++) {
        redisReply *rep;
        if (redisGetReply(c->c, (void **)&rep) != REDIS_OK) {
            char why[200];
            em_redis_io_error(c->c, c->name, why, sizeof why);
            snprintf(err, errlen, "%s (after %d of %d replies)", why, i, n);
            snprintf(c->io_err, sizeof c->io_err, "%s", err);
            return -2;
        }
        if (rep->type == REDIS_REPLY_ERROR && *failed < 0) {
            *failed = i;
            snprintf(err, errlen, "%s", rep->str);
        }
        freeReplyObject(rep);
    }
    return *failed < 0 ? 0 : -1;
}

/* Sends one command in RESP and returns its reply in *reply (to walk with
 * em_redis_reply_* and free with em_redis_reply_free; an error reply is a
 * reply). Returns 0, or -2 and err on an I/O failure. */
static int redis_call_now(em_redis_conn *c, const char *cmd, size_t len, void **reply, char *err,
                  size_t errlen);

int em_redis_call(em_redis_conn *c, const char *cmd, size_t len, void **reply, char *err,
                  size_t errlen)
{
    em_budget_wait_begin(); /* a wait on the server is not the batch's own time */
    int r = redis_call_now(c, cmd, len, reply, err, errlen);
    em_budget_wait_end();
    return r;
}

static int redis_call_now(em_redis_conn *c, const char *cmd, size_t len, void **reply, char *err,
                  size_t errlen)
{
    *reply = NULL;
    if (redisAppendFormattedCommand(c->c, cmd, len) != REDIS_OK) {
        snprintf(err, errlen, "%s: out of memory", c->name);
        return -2;
    }
    if (redisGetReply(c->c, reply) != REDIS_OK) {
        em_redis_io_error(c->c, c->name, err, errlen);
        snprintf(c->io_err, sizeof c->io_err, "%s", err);
        *reply = NULL;
        return -2;
    }
    return 0;
}

/* Sends n commands encoded in RESP (cmds, len) in one write and reads the n
 * replies into replies[0..n-1] (each to free with em_redis_reply_free; an
 * error reply is a reply): ember.redis's pipeline, one round trip for n
 * commands. Returns 0, or -2 and err on an I/O failure (the replies read
 * so far are freed and every slot is NULL; release the connection broken). */
int em_redis_exec(em_redis_conn *c, const char *cmds, size_t len, int n, void **replies,
                  char *err, size_t errlen)
{
    for (int i = 0; i < n; i++)
        replies[i] = NULL;
    if (redisAppendFormattedCommand(c->c, cmds, len) != REDIS_OK) {
        snprintf(err, errlen, "%s: out of memory", c->name);
        return -2;
    }
    for (int i = 0; i < n; i++) {
        if (redisGetReply(c->c, &replies[i]) != REDIS_OK) {
            char why[200];
            em_redis_io_error(c->c, c->name, why, sizeof why);
            snprintf(err, errlen, "%s (after %d of %d replies)", why, i, n);
            for (int k = 0; k <= i; k++) {
                if (replies[k])
                    freeReplyObject(replies[k]);
                replies[k] = NULL;
            }
            return -2;
        }
    }
    return 0;
}

/* Reply accessors, so Lua need not mirror hiredis's struct (it changed in 1.0). */
int em_redis_reply_type(const void *r) { return ((const redisReply *)r)->type; }
long long em_redis_reply_integer(const void *r) { return ((const redisReply *)r)->integer; }

const char *em_redis_reply_str(const void *r, size_t *len)
{
    *len = ((const redisReply *)r)->len;
    return ((const redisReply *)r)->str;
}

size_t em_redis_reply_count(const void *r) { return ((const redisReply *)r)->elements; }

const void *em_redis_reply_elem(const void *r, size_t i)
{
    const redisReply *rep = r;
    return i < rep->elements ? rep->element[i] : NULL;
}

void em_redis_reply_free(void *r)
{
    if (r)
        freeReplyObject(r);
}

/* redis_conn.c — see redis_conn.h. */
#include "redis_conn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define CONNECT_TIMEOUT_MS 3000

void em_redis_url_free(em_redis_url *u)
{
    free(u->user);
    free(u->pass);
    memset(u, 0, sizeof *u);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A malloc'd copy of s[0, n) with %XX escapes decoded; NULL on a bad escape. */
static char *pct_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1), *w = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            *w++ = s[i];
            continue;
        }
        int hi = i + 2 < n ? hexval(s[i + 1]) : -1, lo = i + 2 < n ? hexval(s[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            free(out);
            return NULL;
        }
        *w++ = (char)(hi * 16 + lo);
        i += 2;
    }
    *w = '\0';
    return out;
}

static int parse_uint(const char *s, size_t n, long max, long *out)
{
    long v = 0;
    if (n == 0 || n > 9)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

/* Parses redis://[[user]:password@]host[:port][/db]. The error text never
 * repeats the URL, which may hold a password. */
int em_redis_url_parse(const char *url, em_redis_url *u, char *err, size_t errlen)
{
    static const char form[] = "expected redis://[:password@]host[:port][/db]";
    memset(u, 0, sizeof *u);
    if (strncmp(url, "rediss://", 9) == 0) {
        snprintf(err, errlen, "TLS (rediss://) is not supported; %s", form);
        return -1;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "%s", form);
        return -1;
    }
    const char *p = url + 8;
    const char *end = p + strcspn(p, "/?#");
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@')
            at = q;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon) {
            snprintf(err, errlen, "a password goes after ':' (redis://:password@host or "
                                  "redis://user:password@host)");
            return -1;
        }
        if (colon > p && !(u->user = pct_decode(p, (size_t)(colon - p))))
            goto bad_escape;
        if (!(u->pass = pct_decode(colon + 1, (size_t)(at - colon - 1))))
            goto bad_escape;
        p = at + 1;
    }
    const char *hend, *q;
    if (*p == '[') { /* [::1]:6379 */
        const char *close = memchr(p, ']', (size_t)(end - p));
        if (!close) {
            snprintf(err, errlen, "unclosed '[' in the host; %s", form);
            goto fail;
        }
        hend = close;
        q = close + 1;
        p++;
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        hend = colon ? colon : end;
        q = hend;
    }
    if (hend == p || (size_t)(hend - p) >= sizeof u->host) {
        snprintf(err, errlen, "no host; %s", form);
        goto fail;
    }
    memcpy(u->host, p, (size_t)(hend - p));
    u->host[hend - p] = '\0';
    u->port = 6379;
    if (q < end) {
        long port;
        if (*q != ':' || parse_uint(q + 1, (size_t)(end - q - 1), 65535, &port) != 0 || port < 1) {
            snprintf(err, errlen, "the port must be a number 1-65535; %s", form);
            goto fail;
        }
        u->port = (int)port;
    }
    if (*end == '/') {
        const char *db = end + 1;
        size_t n = strcspn(db, "?#");
        long v = 0;
        if (n > 0 && parse_uint(db, n, 1000000, &v) != 0) {
            snprintf(err, errlen, "the database after '/' must be a number; %s", form);
            goto fail;
        }
        u->db = (int)v;
        end = db + n;
    }
    if (*end) {
        snprintf(err, errlen, "query parameters are not supported; %s", form);
        goto fail;
    }
    int v6 = strchr(u->host, ':') != NULL;
    char db[16] = "";
    if (u->db)
        snprintf(db, sizeof db, "/%d", u->db);
    snprintf(u->safe, sizeof u->safe, "redis://%s%s%s%s%s:%d%s", u->user ? u->user : "",
             u->pass ? ":***@" : "", v6 ? "[" : "", u->host, v6 ? "]" : "", u->port, db);
    return 0;
bad_escape:
    snprintf(err, errlen, "a bad %%XX escape in the user or password");
fail:
    em_redis_url_free(u);
    return -1;
}

/* ------------------------------------------------------------ connecting */

static void lower_first(const char *in, char *out, size_t n)
{
    snprintf(out, n, "%s", in);
    if (out[0] >= 'A' && out[0] <= 'Z' && !(out[1] >= 'A' && out[1] <= 'Z'))
        out[0] = (char)(out[0] - 'A' + 'a');
}

static struct timeval tv_ms(int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* Connects, authenticates and selects the database. Returns the context,
 * or NULL with err saying why in words a log line can carry ("connection
 * refused", "authentication failed: WRONGPASS ..."). io_timeout_ms bounds
 * every later read and write. May block up to CONNECT_TIMEOUT_MS. */
redisContext *em_redis_connect(const em_redis_url *u, int64_t io_timeout_ms, char *err,
                               size_t errlen)
{
    redisContext *c = redisConnectWithTimeout(u->host, u->port, tv_ms(CONNECT_TIMEOUT_MS));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (c->err) {
        lower_first(c->errstr, err, errlen);
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv_ms(io_timeout_ms));
    redisEnableKeepAlive(c);
    if (u->pass || u->db) {
        char db[16];
        snprintf(db, sizeof db, "%d", u->db);
        const char *auth[3] = {"AUTH", u->user ? u->user : u->pass, u->pass};
        const char *sel[2] = {"SELECT", db};
        if (u->pass)
            redisAppendCommandArgv(c, u->user ? 3 : 2, auth, NULL);
        if (u->db)
            redisAppendCommandArgv(c, 2, sel, NULL);
        for (int i = 0; i < (u->pass != NULL) + (u->db != 0); i++) {
            redisReply *r;
            if (redisGetReply(c, (void **)&r) != REDIS_OK) {
                lower_first(c->errstr, err, errlen);
                redisFree(c);
                return NULL;
            }
            int bad = r->type == REDIS_REPLY_ERROR;
            if (bad)
                snprintf(err, errlen, "%s failed: %s",
                         i == 0 && u->pass ? "authentication" : "SELECT", r->str);
            freeReplyObject(r);
            if (bad) {
                redisFree(c);
                return NULL;
            }
        }
    }
    return c;
}

/* The text of an I/O failure on c, for a log line. */
void em_redis_io_error(redisContext *c, const char *what, char *out, size_t n)
{
    char e[160];
    if (c->err == REDIS_ERR_EOF)
        snprintf(e, sizeof e, "connection closed by the server");
    else if (c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK))
        snprintf(e, sizeof e, "no reply within the timeout");
    else
        lower_first(c->errstr[0] ? c->errstr : "connection lost", e, sizeof e);
    snprintf(out, n, "%s: %s", what, e);
}

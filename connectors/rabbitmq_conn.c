/* rabbitmq_conn.c — see rabbitmq_conn.h. */
#include "rabbitmq_conn.h"

#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../core/clock.h"

#define CONNECT_TIMEOUT_MS 5000
#define RPC_TIMEOUT_MS 10000 /* a broker that stops answering must not hang a thread for ever */

static char default_vhost[] = "/";

void em_rabbitmq_url_free(em_rabbitmq_url *u)
{
    free(u->buf);
    u->buf = NULL;
}

/* Parses url with amqp_parse_url into u. what names the component for the
 * error ("rabbitmq source"). An empty vhost ("amqp://host/") means "/", as
 * most clients read it. TLS (amqps://) is refused: not supported yet. */
int em_rabbitmq_url_parse(em_rabbitmq_url *u, const char *url, const char *what, char *err,
                          size_t errlen)
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
        em_rabbitmq_url_free(u);
        return -1;
    }
    if (u->info.ssl) {
        snprintf(err, errlen, "%s: option 'url': amqps:// (TLS) is not supported yet; use amqp://",
                 what);
        em_rabbitmq_url_free(u);
        return -1;
    }
    if (!*u->info.vhost)
        u->info.vhost = default_vhost;
    snprintf(u->shown, sizeof u->shown, "amqp://%s@%s:%d/%s", u->info.user, u->info.host,
             u->info.port, strcmp(u->info.vhost, "/") == 0 ? "" : u->info.vhost);
    return 0;
}

void em_rabbitmq_timeval(struct timeval *tv, int64_t ms)
{
    if (ms < 0)
        ms = 0;
    tv->tv_sec = (time_t)(ms / 1000);
    tv->tv_usec = (suseconds_t)(ms % 1000) * 1000;
}

/* Fills buf with the text of a method that closes a channel or a
 * connection and returns 1; 0 for any other method. */
int em_rabbitmq_close_text(const amqp_method_t *m, char *buf, size_t n)
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

void em_rabbitmq_reply_text(amqp_rpc_reply_t r, char *buf, size_t n)
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
        if (!em_rabbitmq_close_text(&r.reply, buf, n))
            snprintf(buf, n, "unexpected broker reply 0x%08x", (unsigned)r.reply.id);
        break;
    }
}

/* Checks the reply of the last RPC on c; fills why ("<doing>: <reply>") and
 * returns -1 when it failed. */
int em_rabbitmq_rpc_failed(amqp_connection_state_t c, const char *doing, char *why, size_t n)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    char text[384];
    em_rabbitmq_reply_text(r, text, sizeof text);
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

/* Opens a connection to u, logs in, opens channel EM_RABBITMQ_CHANNEL.
 * name shows in the broker's connection list. Returns NULL and fills why on failure.
 * Blocks at most about CONNECT_TIMEOUT_MS + RPC_TIMEOUT_MS per step. */
amqp_connection_state_t em_rabbitmq_open(const em_rabbitmq_url *u, int heartbeat_s,
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
    em_rabbitmq_timeval(&tv, CONNECT_TIMEOUT_MS);
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
    em_rabbitmq_timeval(&tv, RPC_TIMEOUT_MS);
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
        em_rabbitmq_reply_text(r, text, sizeof text);
        snprintf(why, n, "login as '%s' to vhost '%s' failed (option 'url'): %s", u->info.user,
                 u->info.vhost, text);
        amqp_destroy_connection(c);
        return NULL;
    }
    amqp_channel_open(c, EM_RABBITMQ_CHANNEL);
    if (em_rabbitmq_rpc_failed(c, "cannot open a channel", why, n)) {
        amqp_destroy_connection(c);
        return NULL;
    }
    return c;
}

/* Closes c: politely when the peer is believed alive (so the broker logs
 * no "unexpectedly closed" warning), else just the socket. */
void em_rabbitmq_close(amqp_connection_state_t c, int alive)
{
    if (!c)
        return;
    if (alive) {
        struct timeval tv;
        em_rabbitmq_timeval(&tv, 2000); /* at exit or after an error: do not wait long */
        amqp_set_rpc_timeout(c, &tv);
        amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(c);
}

/* socket.c — text lines read from a TCP server, as Spark's socketTextStream.
 *
 * ember is the client. poll() first hands over complete lines already in its
 * buffer and calls recv() only when none is left, so while the core has no
 * tokens the socket is not read and TCP pushes back on the sender. Connecting
 * happens in poll() only, without blocking past its timeout; a lost
 * connection is retried after a delay that doubles up to 30s.
 */
#ifndef _GNU_SOURCE /* the core defines it per file; some builds pass -D_GNU_SOURCE */
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "../core/clock.h"
#include "../core/connector.h"
#include "../core/log.h"
#include "../core/receiver.h"
#include "linebuf.h"

#define MAX_DELAY_MS 30000
#define CONNECT_TIMEOUT_MS 10000 /* a SYN into a black hole would otherwise hang for minutes */

typedef struct sock_src {
    char *host;
    char port[16];
    char name[320];              /* "socket host:port", for messages */
    int64_t delay0_ms, delay_ms; /* first and next reconnect wait */
    int64_t retry_at;            /* monotonic ms before which no attempt is made */

    int fd;                         /* -1 when not connected */
    int connecting;                 /* a non-blocking connect() is in flight on fd */
    int64_t connect_deadline;
    struct addrinfo *ai, *ai_cur;   /* addresses of the attempt under way */
    int last_err;

    int peer_closed;  /* EOF or error seen: flush the buffer, then reconnect */
    char reason[128]; /* why it closed */

    em_linebuf lines;
    int64_t line_no;
} sock_src;

static const em_option socket_options[] = {
    {"host", EM_OPT_STRING, "localhost", "server to connect to"},
    {"port", EM_OPT_INT, NULL, "TCP port of the server (required)"},
    {"reconnect_delay", EM_OPT_DURATION, "1s",
     "wait before reconnecting; doubles after each failure, up to 30s"},
    {NULL, 0, NULL, NULL},
};


/* Milliseconds from now until t, clamped for poll(2). */
static int until(int64_t t)
{
    int64_t d = t - em_clock_mono_ms();
    return d <= 0 ? 0 : d > 60000 ? 60000 : (int)d;
}

static void fmt_delay(int64_t ms, char *out, size_t n)
{
    if (ms % 1000 == 0)
        snprintf(out, n, "%llds", (long long)(ms / 1000));
    else
        snprintf(out, n, "%lldms", (long long)ms);
}

static void close_fd(sock_src *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    s->connecting = 0;
}

static void drop_addrs(sock_src *s)
{
    if (s->ai)
        freeaddrinfo(s->ai);
    s->ai = s->ai_cur = NULL;
}

/* Gives up on this attempt: logs why, schedules the next one after the
 * current delay and doubles the delay. Always returns -1, for the caller
 * to hand to the core, which backs off too. */
static int fail(sock_src *s, em_receiver *r, const char *why)
{
    char d[32];
    fmt_delay(s->delay_ms, d, sizeof d);
    em_log(EM_LOG_WARN, em_receiver_job(r), "%s: %s, retrying in %s", s->name, why, d);
    close_fd(s);
    drop_addrs(s);
    s->retry_at = em_clock_mono_ms() + s->delay_ms;
    int64_t cap = s->delay0_ms > MAX_DELAY_MS ? s->delay0_ms : MAX_DELAY_MS;
    s->delay_ms = s->delay_ms * 2 > cap ? cap : s->delay_ms * 2;
    return -1;
}

/* Pushes complete lines from the buffer until max is reached or none is
 * left; after the peer closed, a last line without "\n" counts as complete.
 * Returns 0, or -1 when the receiver refused a record (logged). */
static int drain(sock_src *s, em_receiver *r, uint32_t max, uint32_t *pushed)
{
    em_push recs[EM_PUSH_RUN];
    const char *line;
    size_t n;
    int cut;
    int64_t now = em_clock_now_ms(); /* one arrival time per read, not a clock read per line */
    while (*pushed < max) {
        /* As the file source: a run of lines under one lock, the buffer put
         * back before the lines a refused push did not take. */
        em_linebuf before = s->lines;
        size_t k = 0;
        while (k < EM_PUSH_RUN && *pushed + k < max &&
               em_linebuf_next(&s->lines, s->peer_closed, &line, &n, &cut)) {
            recs[k] = (em_push){.value = line, .value_len = n, .ts_ms = now, .partition = -1,
                                .offset = s->line_no + 1 + (int64_t)k};
            k++;
            em_linebuf_consume(&s->lines);
            if (cut)
                em_log(EM_LOG_WARN, em_receiver_job(r),
                       "%s: line %lld is longer than 1 MiB; delivered its first 1 MiB, dropped "
                       "the rest", s->name, (long long)(s->line_no + (int64_t)k));
        }
        if (k == 0)
            break;
        size_t took = em_receiver_push_many(r, recs, k);
        s->line_no += (int64_t)took;
        *pushed += (uint32_t)took;
        if (took < k) {
            s->lines = before;
            for (size_t i = 0; i < took && em_linebuf_next(&s->lines, s->peer_closed, &line, &n,
                                                           &cut); i++)
                em_linebuf_consume(&s->lines);
            em_log(EM_LOG_ERROR, em_receiver_job(r), "%s: receiver refused line %lld", s->name,
                   (long long)(s->line_no + 1));
            return -1;
        }
    }
    return 0;
}

/* Starts a non-blocking connect to the current address, moving on to the
 * next one while they fail at once. Returns 0 when one is in flight or
 * connected, -1 when no address is left (s->last_err says why). */
static int start_connect(sock_src *s)
{
    for (; s->ai_cur; s->ai_cur = s->ai_cur->ai_next) {
        struct addrinfo *a = s->ai_cur;
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        a->ai_protocol);
        if (fd < 0) {
            s->last_err = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 || errno == EINPROGRESS) {
            s->fd = fd;
            s->connecting = 1; /* settled by poll(2) either way */
            s->connect_deadline = em_clock_mono_ms() + CONNECT_TIMEOUT_MS;
            return 0;
        }
        s->last_err = errno;
        close(fd);
    }
    return -1;
}

static const char *err_text(int err, char *buf, size_t n)
{
    if (err == ECONNREFUSED)
        return "connection refused";
    snprintf(buf, n, "cannot connect: %s", strerror(err));
    return buf;
}

/* Moves the connection forward without waiting past deadline. Returns 1
 * when connected, 0 when still connecting or waiting out the reconnect
 * delay, -1 when the attempt failed (logged, next one scheduled).
 * Name resolution uses getaddrinfo(), which may block on a slow DNS. */
static int step_connect(sock_src *s, em_receiver *r, int64_t deadline)
{
    char buf[160];
    for (;;) {
        if (s->fd >= 0 && !s->connecting)
            return 1;
        if (s->fd < 0) {
            if (!s->ai) {
                if (em_clock_mono_ms() < s->retry_at) {
                    int64_t t = s->retry_at < deadline ? s->retry_at : deadline;
                    poll(NULL, 0, until(t));
                    if (em_clock_mono_ms() < s->retry_at)
                        return 0;
                }
                struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
                int rc = getaddrinfo(s->host, s->port, &hints, &s->ai);
                if (rc != 0) {
                    s->ai = NULL;
                    snprintf(buf, sizeof buf, "cannot resolve host: %s",
                             rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
                    return fail(s, r, buf);
                }
                s->ai_cur = s->ai;
                s->last_err = ECONNREFUSED;
            }
            if (start_connect(s) != 0)
                return fail(s, r, err_text(s->last_err, buf, sizeof buf));
        }
        int64_t t = s->connect_deadline < deadline ? s->connect_deadline : deadline;
        struct pollfd p = {.fd = s->fd, .events = POLLOUT};
        int rc = poll(&p, 1, until(t));
        if (rc < 0 && errno != EINTR)
            return fail(s, r, strerror(errno));
        int err = 0;
        if (rc <= 0) {
            if (em_clock_mono_ms() < s->connect_deadline)
                return 0;
            err = ETIMEDOUT;
        } else {
            socklen_t len = sizeof err;
            if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                err = errno;
        }
        if (err == 0) {
            s->connecting = 0;
            drop_addrs(s);
            em_log(EM_LOG_INFO, em_receiver_job(r), "%s: connected", s->name);
            em_receiver_recovered(r);
            return 1;
        }
        /* this address failed: try the next one (localhost may be ::1 then 127.0.0.1) */
        s->last_err = err;
        close_fd(s);
        s->ai_cur = s->ai_cur->ai_next;
        if (!s->ai_cur)
            return fail(s, r, err_text(err, buf, sizeof buf));
    }
}

/* One recv() into the buffer's free room. Returns bytes read, 0 on EOF,
 * -1 on error (errno), -2 when nothing was there after all. */
static ssize_t fill(sock_src *s)
{
    size_t room;
    char *at = em_linebuf_room(&s->lines, &room);
    if (!at) {
        errno = ENOMEM;
        return -1;
    }
    ssize_t n;
    do
        n = recv(s->fd, at, room, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return -2;
    if (n > 0)
        em_linebuf_added(&s->lines, (size_t)n);
    return n;
}

/* Validates the options and sets up an unconnected source; never touches
 * the network. */
static void *socket_create(const em_props *props, em_receiver *r, char *err, size_t errlen)
{
    (void)r;
    if (!em_props_get(props, "port")) {
        snprintf(err, errlen, "socket source: option 'port' is required");
        return NULL;
    }
    int64_t port = em_props_int(props, "port", 0);
    if (port < 1 || port > 65535) {
        snprintf(err, errlen, "socket source: option 'port' must be 1-65535, got %lld",
                 (long long)port);
        return NULL;
    }
    const char *host = em_props_str(props, "host", "localhost");
    if (!*host || strlen(host) > 255) {
        snprintf(err, errlen, "socket source: option 'host' must be a host name or address");
        return NULL;
    }
    sock_src *s = calloc(1, sizeof *s);
    if (!s || !(s->host = strdup(host))) {
        free(s);
        snprintf(err, errlen, "socket source: out of memory");
        return NULL;
    }
    snprintf(s->port, sizeof s->port, "%lld", (long long)port);
    snprintf(s->name, sizeof s->name, "socket %s:%s", s->host, s->port);
    s->delay0_ms = s->delay_ms = em_props_ms(props, "reconnect_delay", 1000);
    s->fd = -1;
    return s;
}

/* Pushes at most max lines, waiting at most timeout_ms for the connection
 * or for data. Buffered complete lines go first; the socket is read only
 * when none is left. Returns the count pushed, or -1 when the connection
 * failed or closed (logged; the next call reconnects after the delay). */
static int socket_poll(void *self, em_receiver *r, uint32_t max, int timeout_ms)
{
    sock_src *s = self;
    int64_t deadline = em_clock_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    uint32_t pushed = 0;
    if (max == 0)
        return 0;
    for (;;) {
        if (drain(s, r, max, &pushed) != 0)
            return pushed ? (int)pushed : -1;
        if (pushed >= max)
            return (int)pushed;
        if (s->peer_closed) { /* drain() flushed everything, the partial last line too */
            if (pushed)
                return (int)pushed; /* report the closing on the next call */
            s->peer_closed = 0;
            return fail(s, r, s->reason);
        }
        if (pushed && em_clock_mono_ms() >= deadline)
            return (int)pushed;
        int c = step_connect(s, r, pushed ? 0 : deadline);
        if (c <= 0)
            return pushed ? (int)pushed : c;
        /* with lines in hand, only take what is already there */
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        int rc = poll(&p, 1, pushed ? 0 : until(deadline));
        if (rc <= 0)
            return (int)pushed; /* timeout, or EINTR: the core calls again */
        ssize_t n = fill(s);
        if (n > 0) {
            s->delay_ms = s->delay0_ms; /* data flowed: the next outage starts over */
            continue;
        }
        if (n == -2)
            return (int)pushed;
        if (n == 0)
            snprintf(s->reason, sizeof s->reason, "connection closed by peer");
        else
            snprintf(s->reason, sizeof s->reason, "connection lost: %s", strerror(errno));
        close_fd(s);
        s->peer_closed = 1;
    }
}

/* Stopping: hand over every complete line already read. */
static void socket_flush(void *self, em_receiver *r)
{
    uint32_t pushed = 0;
    drain(self, r, UINT32_MAX, &pushed);
}

/* Accepts NULL. */
static void socket_free(void *self)
{
    sock_src *s = self;
    if (!s)
        return;
    close_fd(s);
    drop_addrs(s);
    em_linebuf_free(&s->lines);
    free(s->host);
    free(s);
}

const em_connector em_socket_connector = {
    .name = "socket",
    .options = socket_options,
    .create = socket_create,
    .poll = socket_poll,
    .flush = socket_flush,
    .free = socket_free,
};

/* http.c — see http.h.
 *
 * One libmicrohttpd daemon with its own polling thread. A request handler
 * takes a reference to the driver's current snapshot and writes its answer
 * from it, so it never waits on a lock a receiver or worker holds. Limits
 * keep a bad client from costing more than its connection: a small memory
 * budget per connection (long headers get 431), a body cap for POSTs, a
 * connection limit and an idle timeout for slow clients.
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "metrics.h"

#define MAX_BODY 4096           /* control calls carry no body: more is refused */
#define CONN_MEMORY (32 * 1024) /* per connection: request line and headers */
#define MAX_CONNECTIONS 64
#define IDLE_TIMEOUT_S 10
#define CONTROL_WAIT_MS 10000
#define PORT_RETRIES 16

struct em_http {
    struct MHD_Daemon *mhd;
    int fd, port;
    em_driver *driver;
    em_control *control;
    pthread_mutex_t lock; /* guards token and limits */
    char token[256];
    em_health_limits limits;
};

typedef struct request { /* per connection, across the handler's calls */
    size_t body;
} request;

static const char JSON[] = "application/json; charset=utf-8";

static enum MHD_Result send_buf(struct MHD_Connection *c, unsigned code, const char *type,
                                em_buf *b)
{
    size_t len = 0;
    char *data = em_buf_take(b, &len);
    if (!data) {
        code = MHD_HTTP_INTERNAL_SERVER_ERROR;
        data = strdup("{\"error\":\"out of memory\"}");
        len = data ? strlen(data) : 0;
        type = JSON;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(data);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (code == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD, POST");
    enum MHD_Result rc = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    em_buf b;
    em_buf_init(&b);
    em_buf_printf(&b, "{\"error\":");
    em_buf_json_str(&b, msg);
    em_buf_printf(&b, ",\"status\":%u}", code);
    return send_buf(c, code, JSON, &b);
}

/* Compares in time that does not depend on where they differ. */
static int same_secret(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char d = (unsigned char)(la != lb);
    for (size_t i = 0; i < la && i < lb; i++)
        d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0;
}

static int authorized(em_http *h, struct MHD_Connection *c)
{
    pthread_mutex_lock(&h->lock);
    char token[256];
    snprintf(token, sizeof token, "%s", h->token);
    pthread_mutex_unlock(&h->lock);
    if (!token[0])
        return 1;
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    return auth && strncmp(auth, "Bearer ", 7) == 0 && same_secret(auth + 7, token);
}

/* POST /api/v1/reload, /api/v1/jobs/{name}/{stop,start,pause,resume}. */
static enum MHD_Result control(em_http *h, struct MHD_Connection *c, const char *url)
{
    if (!authorized(h, c))
        return send_error(c, MHD_HTTP_UNAUTHORIZED,
                          "this call needs 'Authorization: Bearer <ui.token>'");
    em_driver_command cmd;
    char job[128] = "";
    if (strcmp(url, "/api/v1/reload") == 0) {
        cmd = EM_DRIVER_RELOAD;
    } else if (strncmp(url, "/api/v1/jobs/", 13) == 0) {
        const char *name = url + 13, *slash = strchr(name, '/');
        if (!slash || slash == name || (size_t)(slash - name) >= sizeof job)
            return send_error(c, MHD_HTTP_NOT_FOUND, "no such control call: %.200s", url);
        memcpy(job, name, (size_t)(slash - name));
        job[slash - name] = '\0';
        const char *verb = slash + 1;
        if (strcmp(verb, "stop") == 0)
            cmd = EM_DRIVER_STOP_JOB;
        else if (strcmp(verb, "start") == 0)
            cmd = EM_DRIVER_START_JOB;
        else if (strcmp(verb, "pause") == 0)
            cmd = EM_DRIVER_PAUSE_JOB;
        else if (strcmp(verb, "resume") == 0)
            cmd = EM_DRIVER_RESUME_JOB;
        else
            return send_error(c, MHD_HTTP_NOT_FOUND, "no such control call: %.200s (stop, "
                              "start, pause or resume)", url);
    } else {
        return send_error(c, MHD_HTTP_NOT_FOUND, "no such control call: %.200s", url);
    }
    char msg[512];
    int rc = em_control_call(h->control, cmd, job, CONTROL_WAIT_MS, msg, sizeof msg);
    unsigned code = rc == 0 ? MHD_HTTP_OK : rc == -1 ? MHD_HTTP_NOT_FOUND
                  : rc == 1 ? MHD_HTTP_CONFLICT : MHD_HTTP_ACCEPTED;
    em_buf b;
    em_buf_init(&b);
    em_buf_printf(&b, "{\"ok\":%s,\"message\":", rc == 0 ? "true" : "false");
    em_buf_json_str(&b, msg);
    em_buf_add(&b, "}", 1);
    return send_buf(c, code, JSON, &b);
}

static int all_digits(const char *s)
{
    if (!*s || strlen(s) > 18)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/* GET /api/v1/jobs/{name}[/batches[/{time}]]. */
static enum MHD_Result job_route(const em_snapshot *s, struct MHD_Connection *c,
                                 const char *rest)
{
    char name[128];
    const char *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    if (n == 0 || n >= sizeof name)
        return send_error(c, MHD_HTTP_NOT_FOUND, "no such job");
    memcpy(name, rest, n);
    name[n] = '\0';
    em_buf b;
    em_buf_init(&b);
    int rc;
    if (!slash) {
        rc = em_api_job(s, name, &b);
    } else if (strcmp(slash, "/batches") == 0) {
        rc = em_api_batches(s, name, -1, &b);
    } else if (strncmp(slash, "/batches/", 9) == 0) {
        if (!all_digits(slash + 9)) {
            em_buf_free(&b);
            return send_error(c, MHD_HTTP_BAD_REQUEST, "a batch time is milliseconds since the "
                              "epoch, as batchId gives it");
        }
        rc = em_api_batches(s, name, strtoll(slash + 9, NULL, 10), &b);
        if (rc != 0 && em_snapshot_job(s, name)) {
            em_buf_free(&b);
            return send_error(c, MHD_HTTP_NOT_FOUND, "job '%s' retains no batch %s", name,
                              slash + 9);
        }
    } else {
        em_buf_free(&b);
        return send_error(c, MHD_HTTP_NOT_FOUND, "no such resource under job '%s'", name);
    }
    if (rc != 0) {
        em_buf_free(&b);
        return send_error(c, MHD_HTTP_NOT_FOUND, "no job named '%s'", name);
    }
    return send_buf(c, MHD_HTTP_OK, JSON, &b);
}

static enum MHD_Result get(em_http *h, struct MHD_Connection *c, const char *url)
{
    if (strcmp(url, "/") == 0 || strcmp(url, "/index.html") == 0) {
        struct MHD_Response *r = MHD_create_response_from_buffer(
            em_ui_html_len, (void *)em_ui_html, MHD_RESPMEM_PERSISTENT);
        if (!r)
            return MHD_NO;
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
        enum MHD_Result rc = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return rc;
    }
    em_snapshot *s = em_driver_snapshot(h->driver);
    em_buf b;
    em_buf_init(&b);
    enum MHD_Result rc;
    int healthz = strcmp(url, "/healthz") == 0, readyz = strcmp(url, "/readyz") == 0;
    if (healthz || readyz) {
        pthread_mutex_lock(&h->lock);
        em_health_limits lim = h->limits;
        pthread_mutex_unlock(&h->lock);
        int ok = em_api_health(s, &lim, readyz, em_clock_now_ms(), &b);
        rc = send_buf(c, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, JSON, &b);
    } else if (!s) {
        rc = send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "starting");
    } else if (strcmp(url, "/metrics") == 0) {
        em_metrics_write(s, &b);
        rc = send_buf(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", &b);
    } else if (strcmp(url, "/api/v1/jobs") == 0) {
        em_api_jobs(s, &b);
        rc = send_buf(c, MHD_HTTP_OK, JSON, &b);
    } else if (strncmp(url, "/api/v1/jobs/", 13) == 0) {
        rc = job_route(s, c, url + 13);
    } else if (strcmp(url, "/api/v1/receivers") == 0) {
        em_api_receivers(s, &b);
        rc = send_buf(c, MHD_HTTP_OK, JSON, &b);
    } else if (strcmp(url, "/api/v1/pools") == 0) {
        em_api_pools(s, &b);
        rc = send_buf(c, MHD_HTTP_OK, JSON, &b);
    } else if (strcmp(url, "/api/v1/statistics") == 0) {
        em_api_statistics(s, &b);
        rc = send_buf(c, MHD_HTTP_OK, JSON, &b);
    } else if (strcmp(url, "/api/v1/status") == 0) {
        em_api_status_text(s, &b);
        rc = send_buf(c, MHD_HTTP_OK, "text/plain; charset=utf-8", &b);
    } else {
        rc = send_error(c, MHD_HTTP_NOT_FOUND, "no such resource: %.200s (see docs/http.md)",
                        url);
    }
    em_buf_free(&b);
    em_snapshot_unref(s);
    return rc;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *data,
                              size_t *data_size, void **con_cls)
{
    (void)version;
    (void)data;
    em_http *h = cls;
    request *rq = *con_cls;
    if (!rq) { /* first call: headers only */
        rq = calloc(1, sizeof *rq);
        if (!rq)
            return MHD_NO;
        *con_cls = rq;
        return MHD_YES;
    }
    if (*data_size) { /* a body: counted and dropped; control calls take none */
        rq->body += *data_size;
        *data_size = 0;
        return MHD_YES;
    }
    if (rq->body > MAX_BODY)
        return send_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "request body of %zu bytes; at most "
                          "%d", rq->body, MAX_BODY);
    if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)
        return get(h, c, url);
    if (strcmp(method, "POST") == 0)
        return control(h, c, url);
    return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method %.32s not allowed", method);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode why)
{
    (void)cls;
    (void)c;
    (void)why;
    free(*con_cls);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n')
        msg[--n] = '\0';
    em_log(EM_LOG_DEBUG, NULL, "http: %s", msg);
}

int em_http_host_is_loopback(const char *host)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(host, NULL, &hints, &ai) != 0)
        return 0;
    int loop = 1;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
            uint32_t ip = ntohl(((struct sockaddr_in *)a->ai_addr)->sin_addr.s_addr);
            loop &= (ip >> 24) == 127;
        } else if (a->ai_family == AF_INET6) {
            loop &= IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr);
        } else {
            loop = 0;
        }
    }
    freeaddrinfo(ai);
    return loop;
}

/* Binds and listens ourselves, so an error names the address and the port
 * chosen for port 0 is known. */
static int listen_on(const char *host, int port, int *bound, char *err, size_t errlen)
{
    char ports[16];
    snprintf(ports, sizeof ports, "%d", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
    int rc = getaddrinfo(host, ports, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "ui.host = '%s': %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, e = 0;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 64) != 0) {
            e = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        snprintf(err, errlen, "ui.host:ui.port = %s:%d: %s", host, port, strerror(e));
        errno = e;
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    *bound = port;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
        *bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

em_http *em_http_start(const char *host, int port, em_driver *d, em_control *ctl, char *err,
                       size_t errlen)
{
    em_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->driver = d;
    h->control = ctl;
    pthread_mutex_init(&h->lock, NULL);
    /* As Spark's UI: a port in use (another driver on the host) moves on
     * to the next one, up to PORT_RETRIES times; the log names the port. */
    h->fd = listen_on(host, port, &h->port, err, errlen);
    for (int i = 1; h->fd < 0 && errno == EADDRINUSE && port && i <= PORT_RETRIES; i++) {
        em_log(EM_LOG_INFO, NULL, "HTTP: port %d is in use; trying %d", port + i - 1, port + i);
        h->fd = listen_on(host, port + i, &h->port, err, errlen);
    }
    if (h->fd < 0) {
        em_http_stop(h);
        return NULL;
    }
    h->mhd = MHD_start_daemon(
        MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL, handle, h,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, /* first, so every message comes to it */
        MHD_OPTION_LISTEN_SOCKET, h->fd, MHD_OPTION_CONNECTION_LIMIT, (unsigned)MAX_CONNECTIONS,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY,
        MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_END);
    if (!h->mhd) {
        snprintf(err, errlen, "ui.host:ui.port = %s:%d: the HTTP server did not start", host,
                 port);
        em_http_stop(h);
        return NULL;
    }
    return h;
}

int em_http_port(const em_http *h) { return h->port; }

void em_http_configure(em_http *h, const char *token, const em_health_limits *lim)
{
    pthread_mutex_lock(&h->lock);
    snprintf(h->token, sizeof h->token, "%s", token);
    h->limits = *lim;
    pthread_mutex_unlock(&h->lock);
}

void em_http_stop(em_http *h)
{
    if (!h)
        return;
    if (h->mhd)
        MHD_stop_daemon(h->mhd);
    if (h->fd >= 0)
        close(h->fd);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

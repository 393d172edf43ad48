/* cli.c — see cli.h. */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "clock.h"

#define CLI_TIMEOUT_MS 15000

static int is_ember(pid_t pid);
static pid_t read_pidfile(const char *path, int *port);

/* The port to reach: the one the running driver of this checkpoint.dir
 * wrote in its PID file, else ui.port. */
static int api_port(const em_config *c)
{
    int port;
    pid_t pid = read_pidfile(c->pid_file, &port);
    return port && is_ember(pid) ? port : c->ui_port;
}

/* A wildcard listening address is reached on loopback. */
static const char *connect_host(const char *host)
{
    if (strcmp(host, "0.0.0.0") == 0 || !*host)
        return "127.0.0.1";
    if (strcmp(host, "::") == 0)
        return "::1";
    return host;
}

static int dial(const em_config *c, char *err, size_t errlen)
{
    char port[16];
    snprintf(port, sizeof port, "%d", api_port(c));
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    const char *host = connect_host(c->ui_host);
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, e = ECONNREFUSED;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            e = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (fd < 0)
        snprintf(err, errlen, "http://%s:%d: %s", host, api_port(c), strerror(e));
    return fd;
}

/* One HTTP/1.0 request; the body of the answer in out. Returns the status
 * code, or -1 and err when the driver cannot be reached. */
static int request(const em_config *c, const char *method, const char *path, em_buf *out,
                   char *err, size_t errlen)
{
    int fd = dial(c, err, errlen);
    if (fd < 0)
        return -1;
    char req[2048];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.0\r\nHost: %s\r\nContent-Length: 0\r\n%s%s%s"
                     "\r\n", method, path, connect_host(c->ui_host),
                     c->ui_token[0] ? "Authorization: Bearer " : "", c->ui_token,
                     c->ui_token[0] ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof req || write(fd, req, (size_t)n) != n) {
        snprintf(err, errlen, "cannot send the request: %s", strerror(errno));
        close(fd);
        return -1;
    }
    em_buf raw;
    em_buf_init(&raw);
    int64_t deadline = em_clock_mono_ms() + CLI_TIMEOUT_MS;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int64_t left = deadline - em_clock_mono_ms();
        if (left <= 0 || poll(&p, 1, (int)left) <= 0) {
            snprintf(err, errlen, "no answer within %d s", CLI_TIMEOUT_MS / 1000);
            close(fd);
            em_buf_free(&raw);
            return -1;
        }
        char chunk[8192];
        ssize_t got = read(fd, chunk, sizeof chunk);
        if (got <= 0)
            break;
        em_buf_add(&raw, chunk, (size_t)got);
    }
    close(fd);
    int code = -1;
    const char *body = raw.data ? strstr(raw.data, "\r\n\r\n") : NULL;
    if (!raw.data || sscanf(raw.data, "HTTP/%*s %d", &code) != 1 || !body) {
        snprintf(err, errlen, "not an HTTP answer");
        em_buf_free(&raw);
        return -1;
    }
    em_buf_add(out, body + 4, raw.len - (size_t)(body + 4 - raw.data));
    em_buf_free(&raw);
    return code;
}

int em_cli_status(const em_config *c, int watch)
{
    for (;;) {
        em_buf b;
        em_buf_init(&b);
        char err[512];
        int code = request(c, "GET", "/api/v1/status", &b, err, sizeof err);
        if (code < 0) {
            fprintf(stderr, "ember status: %s (is ember running with ui.enabled = true?)\n", err);
            em_buf_free(&b);
            return 1;
        }
        if (watch)
            fputs("\033[H\033[2J", stdout);
        fwrite(b.data ? b.data : "", 1, b.len, code == 200 ? stdout : stderr);
        fflush(stdout);
        em_buf_free(&b);
        if (!watch)
            return code == 200 ? 0 : 1;
        em_clock_sleep_ms(2000);
    }
}

static pid_t read_pidfile(const char *path, int *port)
{
    FILE *f = fopen(path, "r");
    long pid = 0, p = 0;
    if (port)
        *port = 0;
    if (!f)
        return 0;
    int n = fscanf(f, "%ld %ld", &pid, &p);
    if (n < 1)
        pid = 0;
    if (n == 2 && port && p > 0 && p < 65536)
        *port = (int)p;
    fclose(f);
    return (pid_t)pid;
}

static pid_t read_pid(const char *path) { return read_pidfile(path, NULL); }

/* Whether pid is a live process named ember. */
static int is_ember(pid_t pid)
{
    if (pid <= 0 || kill(pid, 0) != 0)
        return 0;
    char path[64], comm[64] = "";
    snprintf(path, sizeof path, "/proc/%ld/comm", (long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1;
    if (!fgets(comm, sizeof comm, f))
        comm[0] = '\0';
    fclose(f);
    return strncmp(comm, "ember", 5) == 0;
}

static int signal_driver(const em_config *c, int sig, const char *why)
{
    pid_t pid = read_pid(c->pid_file);
    if (!is_ember(pid)) {
        fprintf(stderr, "ember: %s, and %s names no running ember\n", why, c->pid_file);
        return 1;
    }
    if (kill(pid, sig) != 0) {
        fprintf(stderr, "ember: cannot signal pid %ld: %s\n", (long)pid, strerror(errno));
        return 1;
    }
    printf("sent %s to ember (pid %ld, from %s)\n", strsignal(sig), (long)pid, c->pid_file);
    return 0;
}

static int post(const em_config *c, const char *path, int *reached)
{
    em_buf b;
    em_buf_init(&b);
    char err[512];
    int code = request(c, "POST", path, &b, err, sizeof err);
    *reached = code >= 0;
    if (code < 0) {
        em_buf_free(&b);
        return 1;
    }
    fprintf(code < 300 ? stdout : stderr, "%.*s\n", (int)b.len, b.data ? b.data : "");
    em_buf_free(&b);
    return code < 300 ? 0 : 1;
}

int em_cli_reload(const em_config *c)
{
    int reached = 0;
    int rc = c->ui_enabled ? post(c, "/api/v1/reload", &reached) : 1;
    return reached ? rc : signal_driver(c, SIGHUP, "the HTTP API does not answer");
}

int em_cli_stop(const em_config *c, const char *job)
{
    if (!job)
        return signal_driver(c, SIGTERM, "no pid to stop");
    char path[512];
    snprintf(path, sizeof path, "/api/v1/jobs/%.400s/stop", job);
    int reached = 0;
    int rc = post(c, path, &reached);
    if (!reached)
        fprintf(stderr, "ember stop %s: the HTTP API does not answer at %s:%d\n", job,
                connect_host(c->ui_host), api_port(c));
    return rc;
}

int em_pidfile_write(const char *path, int port, char *err, size_t errlen)
{
    pid_t other = read_pid(path);
    if (other && other != getpid() && is_ember(other)) {
        snprintf(err, errlen, "run.pidFile %s: another ember runs (pid %ld); stop it first or "
                 "give this one its own checkpoint.dir", path, (long)other);
        return -1;
    }
    char dir[1100];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        mkdir(dir, 0755); /* checkpoint.dir on a first run */
    }
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%ld\n%d\n", (long)getpid(), port) < 0 || fclose(f) != 0 ||
        rename(tmp, path)) {
        snprintf(err, errlen, "run.pidFile %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

void em_pidfile_remove(const char *path)
{
    if (read_pid(path) == getpid())
        unlink(path);
}

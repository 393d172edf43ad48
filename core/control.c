/* control.c — see control.h. */
#include "control.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "clock.h"

typedef struct command {
    struct command *next;
    int refs; /* the caller and the queue; under the control lock */
    em_driver_command cmd;
    char job[128];
    int done, rc;
    char msg[512];
} command;

struct em_control {
    pthread_mutex_t lock;
    pthread_cond_t done;
    command *head, *tail;
    int fd;
};

em_control *em_control_create(void)
{
    em_control *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->fd < 0) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->done, NULL);
    return c;
}

int em_control_fd(const em_control *c) { return c->fd; }

static void unref_locked(command *m)
{
    if (--m->refs == 0)
        free(m);
}

int em_control_call(em_control *c, em_driver_command cmd, const char *job, int timeout_ms,
                    char *msg, size_t len)
{
    command *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(msg, len, "out of memory");
        return -2;
    }
    m->refs = 2;
    m->cmd = cmd;
    snprintf(m->job, sizeof m->job, "%s", job ? job : "");
    pthread_mutex_lock(&c->lock);
    if (c->tail)
        c->tail->next = m;
    else
        c->head = m;
    c->tail = m;
    uint64_t one = 1;
    ssize_t w = write(c->fd, &one, sizeof one);
    (void)w;
    struct timespec deadline;
    em_clock_deadline(&deadline, timeout_ms);
    while (!m->done)
        if (pthread_cond_timedwait(&c->done, &c->lock, &deadline) == ETIMEDOUT)
            break;
    int rc = m->done ? m->rc : -2;
    if (m->done)
        snprintf(msg, len, "%s", m->msg);
    else
        snprintf(msg, len, "accepted; still running after %d ms", timeout_ms);
    unref_locked(m);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

void em_control_run(em_control *c, em_control_exec exec, void *arg)
{
    uint64_t n;
    ssize_t r = read(c->fd, &n, sizeof n);
    (void)r;
    for (;;) {
        pthread_mutex_lock(&c->lock);
        command *m = c->head;
        if (m) {
            c->head = m->next;
            if (!c->head)
                c->tail = NULL;
        }
        pthread_mutex_unlock(&c->lock);
        if (!m)
            return;
        char msg[512];
        int rc = exec(m->cmd, m->job, msg, sizeof msg, arg);
        pthread_mutex_lock(&c->lock);
        m->rc = rc;
        snprintf(m->msg, sizeof m->msg, "%s", msg);
        m->done = 1;
        pthread_cond_broadcast(&c->done);
        unref_locked(m);
        pthread_mutex_unlock(&c->lock);
    }
}

void em_control_free(em_control *c)
{
    if (!c)
        return;
    while (c->head) {
        command *m = c->head;
        c->head = m->next;
        unref_locked(m); /* a caller still waiting times out and frees its part */
    }
    close(c->fd);
    pthread_cond_destroy(&c->done);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

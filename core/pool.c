/* pool.c — see pool.h. */
#include "pool.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "budget.h"
#include "clock.h"
#include "props.h"

struct em_pool {
    struct em_pool *next;
    char *kind, *endpoint;
    const em_pool_ops *ops;
    pthread_mutex_t lock;
    pthread_cond_t freed;
    void **idle;
    int nidle, size, max;
    uint64_t borrows, waits, connect_failures, broken, io_errors; /* under lock */
    int64_t last_error_ms, last_io_error_ms;
    char last_error[256], last_io_error[256];
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static em_pool *pools;

static _Thread_local em_pool_usage usage;

void em_pool_usage_take(em_pool_usage *out)
{
    *out = usage;
    memset(&usage, 0, sizeof usage);
}

/* The pool is shared by every job, but its size is a setting of the
 * runtime that asks (connector.pool.size, handed down through the job's
 * context, not a module global): the first caller makes it with that size.
 * The key needs a restart, so every caller of a driver asks the same. */
em_pool *em_pool_get(const char *kind, const char *endpoint, const em_pool_ops *ops, int size)
{
    if (size < 1)
        size = 1;
    pthread_mutex_lock(&registry_lock);
    em_pool *p = pools;
    while (p && (strcmp(p->kind, kind) != 0 || strcmp(p->endpoint, endpoint) != 0))
        p = p->next;
    if (!p && (p = calloc(1, sizeof *p))) {
        p->kind = strdup(kind);
        p->endpoint = strdup(endpoint);
        p->ops = ops;
        p->max = ops ? size : 1;
        p->size = ops ? 0 : 1; /* a shared client: one, always open */
        p->idle = calloc((size_t)p->max, sizeof *p->idle);
        if (!p->kind || !p->endpoint || !p->idle) {
            free(p->kind);
            free(p->endpoint);
            free(p->idle);
            free(p);
            pthread_mutex_unlock(&registry_lock);
            return NULL;
        }
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->freed, NULL);
        p->next = pools;
        pools = p;
    }
    pthread_mutex_unlock(&registry_lock);
    return p;
}

/* Adds the time a borrow waited to the thread's total. */
static void note_wait(int waited, int64_t started)
{
    if (!waited)
        return;
    int64_t ms = em_clock_mono_ms() - started;
    usage.wait_ms += ms;
}

static void *pool_borrow_now(em_pool *p, int timeout_ms, char *err, size_t errlen);

void *em_pool_borrow(em_pool *p, int timeout_ms, char *err, size_t errlen)
{
    em_budget_wait_begin(); /* a wait for a connection is not the batch's own time */
    void *r = pool_borrow_now(p, timeout_ms, err, errlen);
    em_budget_wait_end();
    return r;
}

static void *pool_borrow_now(em_pool *p, int timeout_ms, char *err, size_t errlen)
{
    struct timespec until;
    em_clock_deadline(&until, timeout_ms);
    int64_t started = em_clock_mono_ms();
    int waited = 0;
    if (!p->ops) {
        snprintf(err, errlen, "%s: a shared client, not a pool", p->kind);
        return NULL;
    }
    usage.borrows++;
    pthread_mutex_lock(&p->lock);
    p->borrows++;
    for (;;) {
        if (p->nidle > 0) {
            void *c = p->idle[--p->nidle];
            note_wait(waited, started);
            pthread_mutex_unlock(&p->lock);
            return c;
        }
        if (p->size < p->max) {
            p->size++; /* reserve the slot, connect without the lock */
            note_wait(waited, started);
            pthread_mutex_unlock(&p->lock);
            void *c = p->ops->connect(p->endpoint, err, errlen);
            if (!c) {
                pthread_mutex_lock(&p->lock);
                p->connect_failures++;
                p->last_error_ms = em_clock_now_ms();
                snprintf(p->last_error, sizeof p->last_error, "%s", err);
                p->size--;
                pthread_cond_signal(&p->freed);
                pthread_mutex_unlock(&p->lock);
            }
            return c;
        }
        if (!waited) {
            waited = 1;
            usage.waits++;
            p->waits++;
        }
        if (pthread_cond_timedwait(&p->freed, &p->lock, &until) != 0) {
            note_wait(waited, started);
            char masked[1024];
            em_mask_secret(p->endpoint, masked, sizeof masked);
            snprintf(err, errlen, "%s %s: all %d pooled connections busy for %d ms", p->kind,
                     masked, p->max, timeout_ms);
            p->last_error_ms = em_clock_now_ms();
            snprintf(p->last_error, sizeof p->last_error, "%s", err);
            pthread_mutex_unlock(&p->lock);
            return NULL;
        }
    }
}

void em_pool_return(em_pool *p, void *conn, int broken)
{
    if (!conn || !p->ops)
        return;
    pthread_mutex_lock(&p->lock);
    if (broken || p->nidle >= p->max) {
        p->broken += broken != 0;
        p->size--;
        pthread_mutex_unlock(&p->lock);
        p->ops->close(conn);
        pthread_mutex_lock(&p->lock);
    } else {
        p->idle[p->nidle++] = conn;
    }
    pthread_cond_signal(&p->freed);
    pthread_mutex_unlock(&p->lock);
}

void em_pool_note_error(em_pool *p, const char *err)
{
    if (!p || !err || !*err)
        return;
    pthread_mutex_lock(&p->lock);
    p->io_errors++;
    p->last_error_ms = p->last_io_error_ms = em_clock_now_ms();
    snprintf(p->last_error, sizeof p->last_error, "%s", err);
    snprintf(p->last_io_error, sizeof p->last_io_error, "%s", err);
    pthread_mutex_unlock(&p->lock);
}

size_t em_pool_list(em_pool_stats *out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&registry_lock);
    for (em_pool *p = pools; p; p = p->next, n++) {
        if (n >= max)
            continue;
        em_pool_stats *o = &out[n];
        snprintf(o->kind, sizeof o->kind, "%s", p->kind);
        em_mask_secret(p->endpoint, o->endpoint, sizeof o->endpoint);
        pthread_mutex_lock(&p->lock);
        o->open = p->size;
        o->idle = p->nidle;
        o->max = p->max;
        o->borrows = p->borrows;
        o->waits = p->waits;
        o->connect_failures = p->connect_failures;
        o->broken = p->broken;
        o->io_errors = p->io_errors;
        o->last_error_ms = p->last_error_ms;
        snprintf(o->last_error, sizeof o->last_error, "%s", p->last_error);
        o->last_io_error_ms = p->last_io_error_ms;
        snprintf(o->last_io_error, sizeof o->last_io_error, "%s", p->last_io_error);
        pthread_mutex_unlock(&p->lock);
    }
    pthread_mutex_unlock(&registry_lock);
    return n;
}

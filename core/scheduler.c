/* scheduler.c — see scheduler.h. */
#include "scheduler.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "clock.h"
#include "log.h"

/* A worker busy this long counts as stuck when deciding on a spare. */
#define STUCK_MS 100
/* How long a spare waits for work before it leaves. */
#define SPARE_LINGER_MS 5000

typedef struct slot {
    em_scheduler *s;
    int index;
    int alive, joinable;
    pthread_t thread;
    const void *busy;  /* owner of the running task, or NULL */
    int64_t since_ms;  /* when it took that task (monotonic) */
} slot;

struct em_scheduler {
    pthread_mutex_t lock;
    pthread_cond_t work, idle;
    em_task *head, *tail;
    slot *slots;
    int nworkers, nslots, live, running, stop;
};

static int owner_busy(em_scheduler *s, const void *owner)
{
    for (int i = 0; i < s->nslots; i++)
        if (s->slots[i].busy == owner)
            return 1;
    return 0;
}

/* 1 when a task before t in the queue has the same owner: t must wait
 * for it, to keep the owner's order. */
static int owner_queued_before(const em_scheduler *s, const em_task *t)
{
    for (const em_task *q = s->head; q != t; q = q->next)
        if (q->owner == t->owner)
            return 1;
    return 0;
}

/* The oldest task whose owner is idle and whose time has come (unlinked
 * when take), or NULL; *wake_ms (when not NULL) is set to the earliest
 * time a waiting task becomes ready (0: none waits for time). */
static em_task *runnable(em_scheduler *s, int take, int64_t *wake_ms)
{
    int64_t now = 0;
    if (wake_ms)
        *wake_ms = 0;
    for (em_task **p = &s->head, *prev = NULL; *p; prev = *p, p = &(*p)->next) {
        em_task *t = *p;
        if (owner_busy(s, t->owner) || owner_queued_before(s, t))
            continue;
        if (t->not_before_ms) {
            if (!now)
                now = em_clock_now_ms();
            if (t->not_before_ms > now) {
                if (wake_ms && (!*wake_ms || t->not_before_ms < *wake_ms))
                    *wake_ms = t->not_before_ms;
                continue;
            }
        }
        if (take) {
            *p = t->next;
            if (s->tail == t)
                s->tail = prev;
            t->next = NULL;
        }
        return t;
    }
    return NULL;
}

static void *worker(void *arg);

static int start_slot(em_scheduler *s, int i)
{
    slot *w = &s->slots[i];
    if (w->joinable) /* a spare that exited: reap its thread first */
        pthread_join(w->thread, NULL);
    w->joinable = 0;
    w->s = s;
    w->index = i;
    w->alive = 1;
    if (pthread_create(&w->thread, NULL, worker, w) != 0) {
        w->alive = 0;
        return -1;
    }
    w->joinable = 1;
    s->live++;
    char name[16];
    snprintf(name, sizeof name, i < s->nworkers ? "worker-%d" : "spare-%d", i % 1000);
    pthread_setname_np(w->thread, name);
    return 0;
}

/* When every worker has been busy for STUCK_MS (a runaway batch, an output
 * blocked on a server) and a task of another job could run, starts a spare
 * worker, so the budgets of a stuck job are its own problem and healthy
 * jobs stay on time. Spares leave once they find nothing to do. Lock held. */
static void maybe_spare(em_scheduler *s)
{
    if (s->stop || s->running < s->live || !runnable(s, 0, NULL))
        return;
    int64_t now = em_clock_mono_ms();
    for (int i = 0; i < s->nslots; i++)
        if (s->slots[i].alive && (!s->slots[i].busy || now - s->slots[i].since_ms < STUCK_MS))
            return;
    for (int i = s->nworkers; i < s->nslots; i++) {
        if (!s->slots[i].alive) {
            if (start_slot(s, i) == 0)
                em_log(EM_LOG_WARN, NULL, "every worker has been busy for %d ms or more: "
                       "a spare worker starts (%d running)", STUCK_MS, s->live);
            return;
        }
    }
}

static void *worker(void *arg)
{
    slot *w = arg;
    em_scheduler *s = w->s;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        int64_t wake_ms;
        em_task *t = runnable(s, 1, &wake_ms);
        if (!t) {
            if (s->stop && !s->head)
                break;
            int spare = w->index >= s->nworkers;
            if (spare) { /* a spare lingers a while, then leaves */
                int64_t leave = em_clock_now_ms() + SPARE_LINGER_MS;
                if (!wake_ms || leave < wake_ms)
                    wake_ms = leave;
            }
            if (wake_ms) { /* a retry's time: the clock is CLOCK_REALTIME, as the cond's */
                struct timespec ts = {.tv_sec = wake_ms / 1000,
                                      .tv_nsec = (long)(wake_ms % 1000) * 1000000L};
                if (pthread_cond_timedwait(&s->work, &s->lock, &ts) == ETIMEDOUT && spare &&
                    !runnable(s, 0, NULL) && em_clock_now_ms() >= wake_ms)
                    break;
            } else {
                pthread_cond_wait(&s->work, &s->lock);
            }
            continue;
        }
        w->busy = t->owner;
        w->since_ms = em_clock_mono_ms();
        s->running++;
        pthread_mutex_unlock(&s->lock);
        t->run(t);
        pthread_mutex_lock(&s->lock);
        w->busy = NULL;
        s->running--;
        /* The owner is idle again: a task of it may be waiting. */
        pthread_cond_broadcast(&s->work);
        if (!s->head && s->running == 0)
            pthread_cond_broadcast(&s->idle);
    }
    w->alive = 0;
    s->live--;
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

em_scheduler *em_scheduler_create(int workers, int spares)
{
    em_scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->nworkers = workers;
    s->nslots = workers + (spares > 0 ? spares : 0);
    s->slots = calloc((size_t)s->nslots, sizeof *s->slots);
    if (!s->slots) {
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->idle, NULL);
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < workers; i++)
        start_slot(s, i);
    pthread_mutex_unlock(&s->lock);
    return s;
}

void em_scheduler_submit(em_scheduler *s, em_task *t)
{
    t->next = NULL;
    pthread_mutex_lock(&s->lock);
    if (s->tail)
        s->tail->next = t;
    else
        s->head = t;
    s->tail = t;
    pthread_cond_signal(&s->work);
    maybe_spare(s);
    pthread_mutex_unlock(&s->lock);
}

void em_scheduler_retry(em_scheduler *s, em_task *t)
{
    pthread_mutex_lock(&s->lock);
    t->next = s->head; /* at the head: the oldest of its owner again */
    s->head = t;
    if (!s->tail)
        s->tail = t;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->lock);
}

void em_scheduler_poke(em_scheduler *s)
{
    pthread_mutex_lock(&s->lock);
    maybe_spare(s);
    pthread_mutex_unlock(&s->lock);
}

size_t em_scheduler_pending(em_scheduler *s, const void *owner)
{
    size_t n = 0;
    pthread_mutex_lock(&s->lock);
    for (em_task *t = s->head; t; t = t->next)
        n += t->owner == owner;
    n += (size_t)owner_busy(s, owner);
    pthread_mutex_unlock(&s->lock);
    return n;
}

void em_scheduler_wait_idle(em_scheduler *s)
{
    pthread_mutex_lock(&s->lock);
    while (s->head || s->running)
        pthread_cond_wait(&s->idle, &s->lock);
    pthread_mutex_unlock(&s->lock);
}

int em_scheduler_wait_idle_for(em_scheduler *s, int64_t ms)
{
    struct timespec ts;
    em_clock_deadline(&ts, ms);
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    while ((s->head || s->running) && rc != ETIMEDOUT) {
        struct timespec step;
        em_clock_deadline(&step, 200);
        if (step.tv_sec > ts.tv_sec || (step.tv_sec == ts.tv_sec && step.tv_nsec > ts.tv_nsec))
            step = ts;
        rc = pthread_cond_timedwait(&s->idle, &s->lock, &step);
        if (rc == ETIMEDOUT && (step.tv_sec != ts.tv_sec || step.tv_nsec != ts.tv_nsec))
            rc = 0;
        maybe_spare(s); /* what is queued behind a stuck batch still runs */
    }
    int busy = s->head || s->running;
    pthread_mutex_unlock(&s->lock);
    return busy ? -1 : 0;
}

int em_scheduler_running(em_scheduler *s, const void **owners, int max)
{
    int n = 0;
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->nslots && n < max; i++)
        if (s->slots[i].busy)
            owners[n++] = s->slots[i].busy;
    pthread_mutex_unlock(&s->lock);
    return n;
}

void em_scheduler_free(em_scheduler *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stop = 1;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < s->nslots; i++)
        if (s->slots[i].joinable)
            pthread_join(s->slots[i].thread, NULL);
    pthread_cond_destroy(&s->work);
    pthread_cond_destroy(&s->idle);
    pthread_mutex_destroy(&s->lock);
    free(s->slots);
    free(s);
}

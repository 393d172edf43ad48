/* scheduler.c — see scheduler.h. */
#include "scheduler.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "clock.h"

struct em_scheduler {
    pthread_mutex_t lock;
    pthread_cond_t work, idle;
    em_task *head, *tail;
    const void **busy; /* owners of running tasks, one slot per worker */
    int nworkers, running, stop;
    pthread_t *threads;
};

static int owner_busy(em_scheduler *s, const void *owner)
{
    for (int i = 0; i < s->nworkers; i++)
        if (s->busy[i] == owner)
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

/* Unlinks and returns the oldest task whose owner is idle and whose time
 * has come, or NULL; *wake_ms is set to the earliest time a waiting task
 * becomes ready (0: none waits for time). */
static em_task *take(em_scheduler *s, int64_t *wake_ms)
{
    int64_t now = 0;
    *wake_ms = 0;
    for (em_task **p = &s->head, *prev = NULL; *p; prev = *p, p = &(*p)->next) {
        em_task *t = *p;
        if (owner_busy(s, t->owner) || owner_queued_before(s, t))
            continue;
        if (t->not_before_ms) {
            if (!now)
                now = em_clock_now_ms();
            if (t->not_before_ms > now) {
                if (!*wake_ms || t->not_before_ms < *wake_ms)
                    *wake_ms = t->not_before_ms;
                continue;
            }
        }
        *p = t->next;
        if (s->tail == t)
            s->tail = prev;
        t->next = NULL;
        return t;
    }
    return NULL;
}

static void *worker(void *arg)
{
    em_scheduler *s = arg;
    pthread_mutex_lock(&s->lock);
    int slot = -1;
    for (;;) {
        int64_t wake_ms;
        em_task *t = take(s, &wake_ms);
        if (!t) {
            if (s->stop && !s->head)
                break;
            if (wake_ms) { /* a retry's time: the clock is CLOCK_REALTIME, as the cond's */
                struct timespec ts = {.tv_sec = wake_ms / 1000,
                                      .tv_nsec = (long)(wake_ms % 1000) * 1000000L};
                pthread_cond_timedwait(&s->work, &s->lock, &ts);
            } else {
                pthread_cond_wait(&s->work, &s->lock);
            }
            continue;
        }
        for (slot = 0; s->busy[slot]; slot++)
            ;
        s->busy[slot] = t->owner;
        s->running++;
        pthread_mutex_unlock(&s->lock);
        t->run(t);
        pthread_mutex_lock(&s->lock);
        s->busy[slot] = NULL;
        s->running--;
        /* The owner is idle again: a task of it may be waiting. */
        pthread_cond_broadcast(&s->work);
        if (!s->head && s->running == 0)
            pthread_cond_broadcast(&s->idle);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

em_scheduler *em_scheduler_create(int workers)
{
    em_scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->nworkers = workers;
    s->busy = calloc((size_t)workers, sizeof *s->busy);
    s->threads = calloc((size_t)workers, sizeof *s->threads);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->idle, NULL);
    for (int i = 0; i < workers; i++) {
        pthread_create(&s->threads[i], NULL, worker, s);
        char name[16];
        snprintf(name, sizeof name, "worker-%d", i % 1000);
        pthread_setname_np(s->threads[i], name);
    }
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

void em_scheduler_free(em_scheduler *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stop = 1;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < s->nworkers; i++)
        pthread_join(s->threads[i], NULL);
    pthread_cond_destroy(&s->work);
    pthread_cond_destroy(&s->idle);
    pthread_mutex_destroy(&s->lock);
    free(s->busy);
    free(s->threads);
    free(s);
}

/* clock.c — see clock.h. */
#include "clock.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

static atomic_llong block_interval_ms = 200;

int64_t em_clock_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t em_clock_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void em_clock_sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

void em_clock_deadline(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

void em_clock_set_block_interval_ms(int64_t ms) { atomic_store(&block_interval_ms, ms); }
int64_t em_clock_block_interval_ms(void) { return atomic_load(&block_interval_ms); }

struct em_clock {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stop;
    int64_t period;
    em_tick_fn fn;
    void *arg;
};

static void *run(void *arg)
{
    em_clock *c = arg;
    int64_t next = (em_clock_now_ms() / c->period + 1) * c->period;
    pthread_mutex_lock(&c->lock);
    while (!c->stop) {
        int64_t now = em_clock_now_ms();
        if (now < next) {
            /* The condition variable lets stop() wake us at once. */
            struct timespec until;
            em_clock_deadline(&until, next - now);
            pthread_cond_timedwait(&c->cond, &c->lock, &until);
            continue;
        }
        pthread_mutex_unlock(&c->lock);
        c->fn(next, c->arg);
        pthread_mutex_lock(&c->lock);
        next += c->period;
        if (next <= em_clock_now_ms()) /* fell behind: skip missed ticks, don't burst */
            next = (em_clock_now_ms() / c->period + 1) * c->period;
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

em_clock *em_clock_start(int64_t period_ms, em_tick_fn fn, void *arg)
{
    em_clock *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->period = period_ms > 0 ? period_ms : 1;
    c->fn = fn;
    c->arg = arg;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    if (pthread_create(&c->thread, NULL, run, c) != 0) {
        free(c);
        return NULL;
    }
    pthread_setname_np(c->thread, "clock");
    return c;
}

void em_clock_stop(em_clock *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    c->stop = 1;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->thread, NULL);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* ratelimit.c — see ratelimit.h. */
#include "ratelimit.h"

#include <time.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void em_ratelimit_init(em_ratelimit *rl, double rate, int64_t burst_ms)
{
    rl->burst_ms = burst_ms > 0 ? burst_ms : 200;
    rl->last_ns = now_ns();
    rl->tokens = 0; /* start empty: a restart must not begin with a burst */
    em_ratelimit_set(rl, rate);
}

void em_ratelimit_set(em_ratelimit *rl, double rate)
{
    rl->rate = rate;
    rl->burst = rate > 0 ? rate * (double)rl->burst_ms / 1000.0 : 0;
    if (rl->burst < 1 && rate > 0)
        rl->burst = 1;
    if (rl->tokens > rl->burst)
        rl->tokens = rl->burst;
}

static void refill(em_ratelimit *rl)
{
    int64_t t = now_ns();
    rl->tokens += rl->rate * (double)(t - rl->last_ns) / 1e9;
    if (rl->tokens > rl->burst)
        rl->tokens = rl->burst;
    rl->last_ns = t;
}

uint32_t em_ratelimit_available(em_ratelimit *rl, uint32_t cap)
{
    if (rl->rate <= 0)
        return cap;
    refill(rl);
    double t = rl->tokens;
    return t >= cap ? cap : (uint32_t)t;
}

void em_ratelimit_consume(em_ratelimit *rl, uint32_t n)
{
    if (rl->rate > 0)
        rl->tokens -= n;
}

int em_ratelimit_wait_ms(const em_ratelimit *rl)
{
    if (rl->rate <= 0 || rl->tokens >= 1)
        return 0;
    double ms = (1 - rl->tokens) * 1000.0 / rl->rate;
    return ms < 1 ? 1 : ms > 50 ? 50 : (int)ms;
}

/* ratelimit.h — a token bucket: the records/s cap of one receiver.
 *
 * The bucket holds at most one blockInterval's worth of tokens, so a batch of
 * interval T never holds more than rate × T plus one block's worth. Not
 * thread-safe except em_ratelimit_set, which the owner reads atomically.
 */
#ifndef EMBER_RATELIMIT_H
#define EMBER_RATELIMIT_H

#include <stdint.h>

typedef struct em_ratelimit {
    double rate;      /* tokens per second; <= 0: unlimited */
    double burst;     /* bucket size */
    double tokens;
    int64_t last_ns;
    int64_t burst_ms; /* the bucket holds burst_ms worth of rate */
} em_ratelimit;

void em_ratelimit_init(em_ratelimit *rl, double rate, int64_t burst_ms);
void em_ratelimit_set(em_ratelimit *rl, double rate);
/* Whole tokens available now, at most cap (cap when unlimited). */
uint32_t em_ratelimit_available(em_ratelimit *rl, uint32_t cap);
void em_ratelimit_consume(em_ratelimit *rl, uint32_t n);
/* Milliseconds until at least one token is available (0 if now). */
int em_ratelimit_wait_ms(const em_ratelimit *rl);

#endif

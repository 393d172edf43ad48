/* clock.h — time, and the thread that ticks every blockInterval.
 *
 * Ticks fall on multiples of blockInterval of the wall clock, like Spark's
 * RecurringTimer, so batch times are round numbers a person can read.
 */
#ifndef EMBER_CLOCK_H
#define EMBER_CLOCK_H

#include <stdint.h>
#include <time.h>

int64_t em_clock_now_ms(void);  /* wall clock, for batch times and record timestamps */
int64_t em_clock_mono_ms(void); /* monotonic, for durations */
void em_clock_sleep_ms(int64_t ms);
/* The CLOCK_REALTIME moment ms from now, for pthread_cond_timedwait. */
void em_clock_deadline(struct timespec *ts, int64_t ms);

/* The block interval every receiver's rate limiter sizes its bucket by. */
void em_clock_set_block_interval_ms(int64_t ms);
int64_t em_clock_block_interval_ms(void);

typedef void (*em_tick_fn)(int64_t tick_ms, void *arg);
typedef struct em_clock em_clock;

/* Starts a thread calling fn(tick_time, arg) at every multiple of period_ms. */
em_clock *em_clock_start(int64_t period_ms, em_tick_fn fn, void *arg);
/* Stops and joins the thread; no tick runs after it returns. Accepts NULL. */
void em_clock_stop(em_clock *c);

#endif

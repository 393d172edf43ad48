/* block_pool.c — see block_pool.h. */
#include "block_pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "clock.h"

#define POOL_SLOTS 64

typedef struct pooled {
    em_block *b;
    size_t bytes;
    int64_t since_ms; /* when it was given */
} pooled;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pooled slots[POOL_SLOTS]; /* oldest first */
static size_t nslots, held;
static atomic_size_t limit; /* memory.max; 0: none */

void em_block_pool_limit(size_t bytes) { atomic_store(&limit, bytes); }

em_block *em_block_pool_take(uint32_t bytes)
{
    pthread_mutex_lock(&lock);
    em_block *b = NULL;
    if (nslots) {
        /* Newest first: its pages are the likeliest still in cache. */
        size_t k = nslots - 1;
        for (size_t i = nslots; i-- > 0;)
            if (slots[i].b->arena_cap >= bytes) {
                k = i;
                break;
            }
        b = slots[k].b;
        held -= slots[k].bytes;
        for (size_t i = k + 1; i < nslots; i++)
            slots[i - 1] = slots[i];
        nslots--;
    }
    pthread_mutex_unlock(&lock);
    return b;
}

int em_block_pool_give(em_block *b, size_t bytes)
{
    int64_t now = em_clock_mono_ms();
    size_t cap = atomic_load(&limit), live = em_block_total_bytes();
    pthread_mutex_lock(&lock);
    int kept = nslots < POOL_SLOTS && held + bytes <= EM_BLOCK_POOL_BYTES &&
               (cap == 0 || live + held + bytes <= cap);
    if (kept) {
        slots[nslots++] = (pooled){.b = b, .bytes = bytes, .since_ms = now};
        held += bytes;
    }
    pthread_mutex_unlock(&lock);
    return kept;
}

void em_block_pool_trim(int all)
{
    int64_t now = em_clock_mono_ms();
    em_block *gone[POOL_SLOTS];
    size_t ngone = 0;
    pthread_mutex_lock(&lock);
    while (ngone < nslots && (all ||
                              now - slots[ngone].since_ms > EM_BLOCK_POOL_IDLE_MS)) {
        held -= slots[ngone].bytes;
        gone[ngone] = slots[ngone].b;
        ngone++;
    }
    for (size_t i = ngone; i < nslots; i++)
        slots[i - ngone] = slots[i];
    nslots -= ngone;
    pthread_mutex_unlock(&lock);
    for (size_t i = 0; i < ngone; i++) /* outside the lock: free() of MiBs takes a while */
        em_block_destroy(gone[i]);
}

size_t em_block_pool_bytes(void)
{
    pthread_mutex_lock(&lock);
    size_t n = held;
    pthread_mutex_unlock(&lock);
    return n;
}

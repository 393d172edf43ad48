/* history.c — see history.h. */
#include "history.h"

#include <pthread.h>
#include <stdlib.h>

struct em_history {
    pthread_mutex_t lock;
    em_batch_info *ring;
    size_t cap, next, count;
    uint64_t batches, records, failed;
};

em_history *em_history_create(size_t capacity)
{
    em_history *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->cap = capacity ? capacity : 1;
    h->ring = calloc(h->cap, sizeof *h->ring);
    if (!h->ring) {
        free(h);
        return NULL;
    }
    pthread_mutex_init(&h->lock, NULL);
    return h;
}

void em_history_add(em_history *h, const em_batch_info *info)
{
    pthread_mutex_lock(&h->lock);
    h->ring[h->next] = *info;
    h->next = (h->next + 1) % h->cap;
    if (h->count < h->cap)
        h->count++;
    h->batches++;
    h->records += info->records;
    h->failed += (uint64_t)info->failed;
    pthread_mutex_unlock(&h->lock);
}

size_t em_history_recent(em_history *h, em_batch_info *out, size_t max)
{
    pthread_mutex_lock(&h->lock);
    size_t n = max < h->count ? max : h->count;
    for (size_t i = 0; i < n; i++)
        out[i] = h->ring[(h->next + h->cap - 1 - i) % h->cap];
    pthread_mutex_unlock(&h->lock);
    return n;
}

void em_history_totals(em_history *h, uint64_t *batches, uint64_t *records, uint64_t *failed)
{
    pthread_mutex_lock(&h->lock);
    *batches = h->batches;
    *records = h->records;
    *failed = h->failed;
    pthread_mutex_unlock(&h->lock);
}

void em_history_free(em_history *h)
{
    if (!h)
        return;
    pthread_mutex_destroy(&h->lock);
    free(h->ring);
    free(h);
}

/* history.c — see history.h. */
#include "history.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double em_history_bucket_le[EM_HISTORY_BUCKETS] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
};

struct em_history {
    atomic_int refs;
    pthread_mutex_t lock;
    em_batch_info *ring;
    size_t cap, next, count;
    em_history_sum t;
    em_table_status *tables; /* ntables of them, malloc'd */
    size_t ntables;
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
    atomic_init(&h->refs, 1);
    pthread_mutex_init(&h->lock, NULL);
    h->t.late_records = h->t.state_bytes = -1;
    return h;
}

em_history *em_history_ref(em_history *h)
{
    if (h)
        atomic_fetch_add(&h->refs, 1);
    return h;
}

static void observe(uint64_t *buckets, double *sum, int64_t ms)
{
    double s = (double)ms / 1000.0;
    *sum += s;
    for (int i = 0; i < EM_HISTORY_BUCKETS; i++)
        if (s <= em_history_bucket_le[i])
            buckets[i]++;
    buckets[EM_HISTORY_BUCKETS]++;
}

void em_history_add(em_history *h, const em_batch_info *info)
{
    pthread_mutex_lock(&h->lock);
    h->ring[h->next] = *info;
    h->next = (h->next + 1) % h->cap;
    if (h->count < h->cap)
        h->count++;
    h->t.batches++;
    h->t.records += info->records;
    h->t.failed += (uint64_t)info->failed;
    h->t.failed_batches += !info->ok;
    observe(h->t.processing, &h->t.processing_sum_s, info->processing_ms);
    observe(h->t.total_delay, &h->t.total_delay_sum_s, info->total_delay_ms);
    if (info->interval_ms > 0 && info->processing_ms > info->interval_ms)
        h->t.late_in_a_row++;
    else
        h->t.late_in_a_row = 0;
    pthread_mutex_unlock(&h->lock);
}

void em_history_set_error(em_history *h, int64_t when_ms, const char *err)
{
    if (!err || !*err)
        return;
    pthread_mutex_lock(&h->lock);
    snprintf(h->t.last_error, sizeof h->t.last_error, "%s", err);
    h->t.last_error_ms = when_ms;
    pthread_mutex_unlock(&h->lock);
}

void em_history_set_state(em_history *h, int64_t late_records, int64_t state_bytes)
{
    pthread_mutex_lock(&h->lock);
    h->t.late_records = late_records;
    h->t.state_bytes = state_bytes;
    pthread_mutex_unlock(&h->lock);
}

void em_history_set_tables(em_history *h, const em_table_status *t, size_t n)
{
    pthread_mutex_lock(&h->lock);
    if (n == h->ntables) { /* the usual case: the same tables, new figures */
        if (n)
            memcpy(h->tables, t, n * sizeof *t);
        pthread_mutex_unlock(&h->lock);
        return;
    }
    pthread_mutex_unlock(&h->lock);
    em_table_status *copy = n ? malloc(n * sizeof *copy) : NULL;
    if (n && !copy)
        return; /* the older figures stay */
    if (n)
        memcpy(copy, t, n * sizeof *copy);
    pthread_mutex_lock(&h->lock);
    em_table_status *old = h->tables;
    h->tables = copy;
    h->ntables = n;
    pthread_mutex_unlock(&h->lock);
    free(old);
}

size_t em_history_tables(em_history *h, em_table_status *out, size_t max)
{
    pthread_mutex_lock(&h->lock);
    size_t n = max < h->ntables ? max : h->ntables;
    if (n)
        memcpy(out, h->tables, n * sizeof *out);
    pthread_mutex_unlock(&h->lock);
    return n;
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

size_t em_history_capacity(const em_history *h) { return h->cap; }

void em_history_totals(em_history *h, uint64_t *batches, uint64_t *records, uint64_t *failed)
{
    pthread_mutex_lock(&h->lock);
    *batches = h->t.batches;
    *records = h->t.records;
    *failed = h->t.failed;
    pthread_mutex_unlock(&h->lock);
}

void em_history_summary(em_history *h, em_history_sum *out)
{
    pthread_mutex_lock(&h->lock);
    *out = h->t;
    pthread_mutex_unlock(&h->lock);
}

void em_history_free(em_history *h)
{
    if (!h || atomic_fetch_sub(&h->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&h->lock);
    free(h->tables);
    free(h->ring);
    free(h);
}

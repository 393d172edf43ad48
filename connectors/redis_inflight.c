/* redis_inflight.c — the Redis source's in-flight multiset: what was pushed
 * and is not yet acknowledged (a list item's value hash, a stream entry's
 * id), and the tracks that share one such set among the receivers of one
 * processing list or stream consumer (see redis_source.h). */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "redis_source.h"

static size_t ihome(const iset *t, ikey k)
{
    uint64_t h = (k.a ^ (k.b * 0x9E3779B97F4A7C15ull)) * 0xBF58476D1CE4E5B9ull;
    return (size_t)(h ^ (h >> 31)) & (t->cap - 1);
}

static islot *ifind(const iset *t, ikey k)
{
    if (!t->cap)
        return NULL;
    for (size_t i = ihome(t, k);; i = (i + 1) & (t->cap - 1)) {
        islot *s = &t->s[i];
        if (!s->n)
            return NULL;
        if (s->a == k.a && s->b == k.b)
            return s;
    }
}

int em_redis_iset_add(iset *t, ikey k)
{
    islot *f = ifind(t, k);
    if (f) {
        f->n++;
        return 0;
    }
    if ((t->used + 1) * 2 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        islot *s = calloc(cap, sizeof *s);
        if (!s)
            return -1;
        iset old = *t;
        t->s = s;
        t->cap = cap;
        for (size_t i = 0; i < old.cap; i++)
            if (old.s[i].n) {
                size_t j = ihome(t, (ikey){old.s[i].a, old.s[i].b});
                while (s[j].n)
                    j = (j + 1) & (cap - 1);
                s[j] = old.s[i];
            }
        free(old.s);
    }
    size_t i = ihome(t, k);
    while (t->s[i].n)
        i = (i + 1) & (t->cap - 1);
    t->s[i] = (islot){k.a, k.b, 1};
    t->used++;
    return 0;
}

uint32_t em_redis_iset_count(const iset *t, ikey k)
{
    islot *f = ifind(t, k);
    return f ? f->n : 0;
}

/* Takes one count of k away; the key goes when its count reaches zero. */
void em_redis_iset_del(iset *t, ikey k)
{
    islot *f = ifind(t, k);
    if (!f || --f->n > 0)
        return;
    size_t mask = t->cap - 1, i = (size_t)(f - t->s), j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!t->s[j].n)
            break;
        size_t h = ihome(t, (ikey){t->s[j].a, t->s[j].b});
        /* move s[j] back into the hole unless its home lies cyclically in (i, j] */
        if (i <= j ? (h <= i || h > j) : (h <= i && h > j)) {
            t->s[i] = t->s[j];
            i = j;
        }
    }
    t->s[i].n = 0;
    t->used--;
}

int em_redis_iset_copy(iset *dst, const iset *src)
{
    dst->s = NULL;
    dst->cap = dst->used = 0;
    if (!src->cap)
        return 0;
    if (!(dst->s = malloc(src->cap * sizeof *dst->s)))
        return -1;
    memcpy(dst->s, src->s, src->cap * sizeof *dst->s);
    dst->cap = src->cap;
    dst->used = src->used;
    return 0;
}

void em_redis_iset_free(iset *t)
{
    free(t->s);
    t->s = NULL;
    t->cap = t->used = 0;
}

/* A list item's key: a 64-bit hash of its bytes and its length. Two
 * different items with one key would make a re-read after a reconnect skip
 * one of them until the next start: with 64 bits, not a practical worry. */
ikey em_redis_value_key(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    h ^= h >> 32;
    return (ikey){h * 0xD6E8FEB86659FD93ull, n};
}

/* "1700000000000-7" → {1700000000000, 7}; -1 when malformed. */
int em_redis_parse_id(const char *s, size_t n, ikey *k)
{
    uint64_t a = 0, b = 0;
    size_t i = 0;
    for (; i < n && s[i] != '-'; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        a = a * 10 + (uint64_t)(s[i] - '0');
    }
    if (i == 0 || i + 1 >= n)
        return -1;
    for (i++; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        b = b * 10 + (uint64_t)(s[i] - '0');
    }
    k->a = a;
    k->b = b;
    return 0;
}

static pthread_mutex_t tracks_lock = PTHREAD_MUTEX_INITIALIZER;
static track *tracks;

track *em_redis_track_get(const char *id)
{
    pthread_mutex_lock(&tracks_lock);
    track *t = tracks;
    while (t && strcmp(t->id, id) != 0)
        t = t->next;
    if (t) {
        t->refs++;
    } else if ((t = calloc(1, sizeof *t)) && (t->id = strdup(id))) {
        t->refs = 1;
        pthread_mutex_init(&t->lock, NULL);
        t->next = tracks;
        tracks = t;
    } else {
        free(t);
        t = NULL;
    }
    pthread_mutex_unlock(&tracks_lock);
    return t;
}

void em_redis_track_put(track *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&tracks_lock);
    if (--t->refs == 0) {
        track **p = &tracks;
        while (*p != t)
            p = &(*p)->next;
        *p = t->next;
        pthread_mutex_destroy(&t->lock);
        em_redis_iset_free(&t->set);
        free(t->id);
        free(t);
    }
    pthread_mutex_unlock(&tracks_lock);
}

/* block.c — see block.h. */
#include "block.h"

#include <stdlib.h>
#include <string.h>

#include "block_pool.h"
#include "receiver.h"

static atomic_size_t total_bytes;

size_t em_block_total_bytes(void) { return atomic_load(&total_bytes); }

void em_block_reserve(ptrdiff_t bytes)
{
    if (bytes >= 0)
        atomic_fetch_add(&total_bytes, (size_t)bytes);
    else
        atomic_fetch_sub(&total_bytes, (size_t)-bytes);
}

static int reserve_arena(em_block *b, size_t more);
static int reserve_records(em_block *b, uint32_t cap);

/* What a block's buffers take, for memory.max. */
static size_t block_bytes(const em_block *b)
{
    return (size_t)b->cap * sizeof(em_record) + b->arena_cap + (size_t)b->runs_cap * sizeof(em_run);
}

/* A recycled block (see block_pool.h) emptied for new records, its buffers
 * counted again as held for records. */
static em_block *recycled(uint32_t bytes)
{
    em_block *b = em_block_pool_take(bytes);
    if (!b)
        return NULL;
    b->count = b->arena_len = b->nruns = 0;
    b->sealed_ms = 0;
    b->receiver = NULL;
    b->wal_path = NULL;
    atomic_store(&b->refs, 1);
    atomic_fetch_add(&total_bytes, block_bytes(b));
    return b;
}

em_block *em_block_create(uint32_t records, uint32_t bytes)
{
    em_block *b = recycled(bytes);
    if (!b) {
        if (!(b = calloc(1, sizeof *b)))
            return NULL;
        atomic_init(&b->refs, 1);
    }
    b->first_offset = -1;
    b->last_offset = -1;
    /* Hints only: when they cannot be had, the block grows as it fills. */
    if (records)
        (void)reserve_records(b, records);
    if (bytes)
        (void)reserve_arena(b, bytes);
    return b;
}

/* Grows the arena geometrically; offsets stay valid across realloc. */
static int reserve_arena(em_block *b, size_t more)
{
    size_t need = (size_t)b->arena_len + more;
    if (need > UINT32_MAX)
        return -1;
    if (need <= b->arena_cap)
        return 0;
    size_t cap = b->arena_cap ? b->arena_cap : 64 * 1024;
    while (cap < need)
        cap *= 2;
    if (cap > UINT32_MAX)
        cap = UINT32_MAX;
    char *a;
    if (b->arena_len == 0) { /* nothing to keep (a recycled block): no copy */
        a = malloc(cap);
        if (a)
            free(b->arena);
    } else {
        a = realloc(b->arena, cap);
    }
    if (!a)
        return -1;
    atomic_fetch_add(&total_bytes, cap - b->arena_cap);
    b->arena = a;
    b->arena_cap = (uint32_t)cap;
    return 0;
}

static int reserve_records(em_block *b, uint32_t cap)
{
    if (cap <= b->cap)
        return 0;
    em_record *r = realloc(b->records, cap * sizeof *r);
    if (!r)
        return -1;
    atomic_fetch_add(&total_bytes, (size_t)(cap - b->cap) * sizeof *r);
    b->records = r;
    b->cap = cap;
    return 0;
}

static int reserve_runs(em_block *b)
{
    if (b->nruns < b->runs_cap)
        return 0;
    uint32_t cap = b->runs_cap ? b->runs_cap * 2 : 4;
    em_run *r = realloc(b->runs, cap * sizeof *r);
    if (!r)
        return -1;
    atomic_fetch_add(&total_bytes, (size_t)(cap - b->runs_cap) * sizeof *r);
    b->runs = r;
    b->runs_cap = cap;
    return 0;
}

static void copy_in(em_block *b, const char *bytes, size_t len)
{
    if (len)
        memcpy(b->arena + b->arena_len, bytes, len);
    b->arena_len += (uint32_t)len;
}

static void put_len(em_block *b, uint32_t len)
{
    unsigned char w[4] = {(unsigned char)len, (unsigned char)(len >> 8),
                          (unsigned char)(len >> 16), (unsigned char)(len >> 24)};
    copy_in(b, (const char *)w, 4);
}

static uint32_t get_len(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

static uint32_t flags_of(const em_push *p)
{
    return (p->key ? EM_RUN_KEYS : 0) | (p->extra ? EM_RUN_EXTRA : 0);
}

size_t em_block_record_bytes(const em_push *p)
{
    return p->value_len + (p->key ? p->key_len + 4 : 0) + (p->extra ? p->extra_len + 4 : 0);
}

/* Whether p continues the block's last run: same partition and meta, no
 * key or extra bytes the run has no room for, deltas that fit. */
static int continues(const em_block *b, const em_push *p)
{
    if (b->nruns == 0)
        return 0;
    const em_run *run = &b->runs[b->nruns - 1];
    if (run->partition != p->partition || (flags_of(p) & ~run->flags) != 0)
        return 0;
    if (p->offset < run->base_offset || p->offset - run->base_offset > (int64_t)UINT32_MAX)
        return 0;
    int64_t dt = p->ts_ms - run->base_ts;
    if (dt < INT32_MIN || dt > INT32_MAX)
        return 0;
    size_t mlen = p->meta ? p->meta_len : 0;
    return run->meta_len == mlen &&
           (mlen == 0 || memcmp(b->arena + run->meta_off, p->meta, mlen) == 0);
}

int em_block_append(em_block *b, const em_push *p)
{
    if (b->count == b->cap && reserve_records(b, b->cap ? b->cap * 2 : 1024) != 0)
        return -1;
    int fresh = !continues(b, p);
    size_t mlen = p->meta ? p->meta_len : 0;
    if (reserve_arena(b, em_block_record_bytes(p) + (fresh ? mlen : 0)) != 0)
        return -1;
    if (fresh) {
        if (reserve_runs(b) != 0)
            return -1;
        em_run *run = &b->runs[b->nruns++];
        *run = (em_run){.base_offset = p->offset, .base_ts = p->ts_ms, .first = b->count,
                        .partition = p->partition, .meta_off = b->arena_len,
                        .meta_len = (uint32_t)mlen, .flags = flags_of(p)};
        copy_in(b, p->meta, mlen);
    }
    const em_run *run = &b->runs[b->nruns - 1];
    if (run->flags & EM_RUN_EXTRA) {
        size_t elen = p->extra ? p->extra_len : 0;
        copy_in(b, p->extra, elen);
        put_len(b, (uint32_t)elen);
    }
    if (run->flags & EM_RUN_KEYS) {
        copy_in(b, p->key, p->key ? p->key_len : 0);
        put_len(b, p->key ? (uint32_t)p->key_len : EM_NO_KEY);
    }
    em_record *r = &b->records[b->count++];
    r->value_off = b->arena_len;
    r->value_len = (uint32_t)p->value_len;
    r->offset_delta = (uint32_t)(p->offset - run->base_offset);
    r->ts_delta = (int32_t)(p->ts_ms - run->base_ts);
    copy_in(b, p->value, p->value_len);
    if (b->first_offset < 0)
        b->first_offset = p->offset;
    b->last_offset = p->offset;
    return 0;
}

void em_block_read(const em_block *b, uint32_t i, uint32_t *run, em_push *out)
{
    uint32_t k = *run < b->nruns ? *run : 0;
    if (b->runs[k].first > i)
        k = 0;
    while (k + 1 < b->nruns && b->runs[k + 1].first <= i)
        k++;
    *run = k;
    const em_run *rn = &b->runs[k];
    const em_record *r = &b->records[i];
    *out = (em_push){.value = b->arena + r->value_off, .value_len = r->value_len,
                     .offset = rn->base_offset + r->offset_delta,
                     .ts_ms = rn->base_ts + r->ts_delta, .partition = rn->partition,
                     .meta = rn->meta_len ? b->arena + rn->meta_off : NULL,
                     .meta_len = rn->meta_len};
    const char *at = b->arena + r->value_off;
    if (rn->flags & EM_RUN_KEYS) {
        uint32_t klen = get_len(at - 4);
        at -= 4;
        if (klen != EM_NO_KEY) {
            at -= klen;
            out->key = at;
            out->key_len = klen;
        }
    }
    if (rn->flags & EM_RUN_EXTRA) {
        uint32_t elen = get_len(at - 4);
        at -= 4 + elen;
        out->extra = at;
        out->extra_len = elen;
    }
}

void em_block_destroy(em_block *b)
{
    if (!b)
        return;
    free(b->runs);
    free(b->records);
    free(b->arena);
    free(b);
}

void em_block_unref(em_block *b)
{
    if (!b || atomic_fetch_sub(&b->refs, 1) != 1)
        return;
    size_t bytes = block_bytes(b);
    atomic_fetch_sub(&total_bytes, bytes);
    em_receiver_block_freed(b->receiver, b->count);
    em_receiver_unref(b->receiver);
    free(b->wal_path);
    b->receiver = NULL;
    b->wal_path = NULL;
    if (!em_block_pool_give(b, bytes))
        em_block_destroy(b);
}

/* block.c — see block.h. */
#include "block.h"

#include <stdlib.h>
#include <string.h>

#include "receiver.h"

static atomic_size_t total_bytes;

size_t em_block_total_bytes(void) { return atomic_load(&total_bytes); }

static int reserve_arena(em_block *b, size_t more);
static int reserve_records(em_block *b, uint32_t cap);

em_block *em_block_create(uint32_t records, uint32_t bytes)
{
    em_block *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    atomic_init(&b->refs, 1);
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
    char *a = realloc(b->arena, cap);
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

static uint32_t copy_in(em_block *b, const char *bytes, size_t len)
{
    uint32_t off = b->arena_len;
    if (len)
        memcpy(b->arena + off, bytes, len);
    b->arena_len += (uint32_t)len;
    return off;
}

int em_block_append(em_block *b, const char *value, size_t value_len, const char *key,
                    size_t key_len, int64_t ts_ms, int32_t partition, int64_t offset,
                    const char *meta, size_t meta_len)
{
    if (b->count == b->cap && reserve_records(b, b->cap ? b->cap * 2 : 1024) != 0)
        return -1;
    size_t klen = key ? key_len : 0;
    if (reserve_arena(b, value_len + klen + meta_len) != 0)
        return -1;
    em_record *r = &b->records[b->count++];
    r->value_len = (uint32_t)value_len;
    r->value_off = copy_in(b, value, value_len);
    r->key_len = (uint32_t)klen;
    r->key_off = key ? copy_in(b, key, klen) : EM_NO_KEY;
    r->meta_len = (uint32_t)meta_len;
    r->meta_off = copy_in(b, meta, meta_len);
    r->ts_ms = ts_ms;
    r->partition = partition;
    r->offset = offset;
    if (b->first_offset < 0)
        b->first_offset = offset;
    b->last_offset = offset;
    return 0;
}

void em_block_unref(em_block *b)
{
    if (!b || atomic_fetch_sub(&b->refs, 1) != 1)
        return;
    atomic_fetch_sub(&total_bytes, (size_t)b->cap * sizeof(em_record) + b->arena_cap);
    em_receiver_unref(b->receiver);
    free(b->wal_path);
    free(b->records);
    free(b->arena);
    free(b);
}


/* block.h — records, blocks and the batch view that Lua reads through the FFI.
 *
 * A block is the arena of records one receiver took in during one
 * blockInterval. Records point into the arena by offset (not by pointer) so
 * the arena can grow with realloc while the receiver fills it. Once sealed a
 * block is immutable and reference counted: it is freed when the last batch
 * holding it is done.
 *
 * The first fields of em_record, em_block and em_batch_view are mirrored by
 * ffi.cdef in lua/ember/ffi.lua: change both together.
 */
#ifndef EMBER_BLOCK_H
#define EMBER_BLOCK_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define EM_NO_KEY UINT32_MAX /* key_off of a record without a key */

/* A receiver seals its block early once the arena would pass this size.
 * Blocks of a few MiB come from malloc's heap and are reused from one
 * batch to the next; a block of a whole busy interval (hundreds of MiB)
 * would be fresh pages every time, and the page faults cost more than
 * the copy. */
#define EM_BLOCK_BYTES_MAX (4u << 20)

typedef struct em_record {
    uint32_t value_off, value_len;
    uint32_t key_off, key_len; /* key_off == EM_NO_KEY: no key */
    int64_t ts_ms;             /* event time if the source knows it, else arrival */
    int64_t offset;            /* source position: Kafka offset, line number, sequence */
    int32_t partition;         /* Kafka partition, -1 when the source has none */
    uint32_t meta_off, meta_len; /* source-specific extra bytes (topic, headers), may be 0 */
} em_record;

typedef struct em_block {
    /* --- read by Lua through the FFI --- */
    em_record *records;
    char *arena;
    uint32_t count;
    uint32_t arena_len;
    /* --- C only --- */
    uint32_t cap, arena_cap;
    atomic_int refs;
    int64_t sealed_ms;
    int64_t first_offset, last_offset; /* positions the block covers, for acks */
    struct em_receiver *receiver;       /* counted reference, released with the block; NULL
                                           for a block recovered from the write-ahead log */
    char *wal_path;                     /* its write-ahead log segment, deleted once the
                                           batch holding it succeeded; NULL without WAL */
} em_block;

/* What a task hands to Lua: the blocks of one batch and, for each block, the
 * index of the job source it came from (1-based, as Lua counts). */
typedef struct em_batch_view {
    int64_t time_ms;
    uint32_t nblocks;
    em_block **blocks;
    int32_t *sources;
} em_batch_view;

/* A block with room for about records records of bytes bytes in all
 * (hints: it grows past them as needed; 0, 0 for the defaults). */
em_block *em_block_create(uint32_t records, uint32_t bytes);
/* Appends one record, copying the bytes; key == NULL means no key. Returns 0, or -1 when out of memory
 * or when the record would not fit in a 32-bit arena. */
int em_block_append(em_block *b, const char *value, size_t value_len, const char *key,
                    size_t key_len, int64_t ts_ms, int32_t partition, int64_t offset,
                    const char *meta, size_t meta_len);
void em_block_unref(em_block *b); /* accepts NULL */
/* Bytes held by every live block of the process, for memory.max. */
size_t em_block_total_bytes(void);

#endif

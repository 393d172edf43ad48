/* block.h — records, blocks and the batch view that Lua reads through the FFI.
 *
 * A block is the arena of records one receiver took in during one
 * blockInterval. Records point into the arena by offset (not by pointer) so
 * the arena can grow with realloc while the receiver fills it. Once sealed a
 * block is immutable and reference counted: it is freed when the last batch
 * holding it is done.
 *
 * Compact layout: a record costs 16 bytes (em_record) plus its value, and
 * its key where it has one. What a whole run of records shares — the
 * partition, the meta bytes (a topic and epoch tag, a file name, an
 * exchange), whether records have keys or extra bytes, and the bases of
 * their offsets and timestamps — is stored once per run (em_run). A run is
 * a range of consecutive records; a block holds one run per change of
 * partition or meta (a file: one per file; Kafka: one per stretch of a
 * partition in a fetch). In the arena, in front of a record's value, come
 * its key (in a run with EM_RUN_KEYS) and its extra bytes (EM_RUN_EXTRA),
 * each followed by its length as a 32-bit little-endian word:
 *
 *     [extra][u32 extra_len][key][u32 key_len][value]
 *                                             ^ value_off
 *
 * key_len EM_NO_KEY: this record of a keyed run has no key.
 *
 * The first fields of em_record, em_run, em_block and em_batch_view are
 * mirrored by ffi.cdef in lua/ember/ffi.lua: change both together.
 */
#ifndef EMBER_BLOCK_H
#define EMBER_BLOCK_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define EM_NO_KEY UINT32_MAX /* key length of a record without a key */

#define EM_RUN_KEYS 1u  /* records carry a key length word (and a key) */
#define EM_RUN_EXTRA 2u /* records carry their own extra bytes (headers, an entry id) */

/* A receiver seals its block early once the arena would pass this size.
 * Blocks of a few MiB come from malloc's heap and are reused from one
 * batch to the next; a block of a whole busy interval (hundreds of MiB)
 * would be fresh pages every time, and the page faults cost more than
 * the copy. */
#define EM_BLOCK_BYTES_MAX (4u << 20)

typedef struct em_record {
    uint32_t value_off, value_len;
    uint32_t offset_delta; /* source position minus its run's base_offset */
    int32_t ts_delta;      /* timestamp (ms) minus its run's base_ts */
} em_record;

typedef struct em_run {
    int64_t base_offset, base_ts;
    uint32_t first;        /* index of its first record; it lasts until the next run's */
    int32_t partition;     /* Kafka partition, RabbitMQ connection; -1 when none */
    uint32_t meta_off, meta_len; /* bytes shared by the run, may be 0 */
    uint32_t flags;        /* EM_RUN_KEYS, EM_RUN_EXTRA */
    uint32_t reserved;
} em_run;

typedef struct em_block {
    /* --- read by Lua through the FFI --- */
    em_record *records;
    char *arena;
    em_run *runs;
    uint32_t count;
    uint32_t arena_len;
    uint32_t nruns;
    /* --- C only --- */
    uint32_t cap, arena_cap, runs_cap;
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
    /* The Kafka partitions assigned to the job's sources when the batch
     * was cut: pairs (source index, 1-based; partition). */
    uint32_t nassigned;
    int32_t *assigned;
} em_batch_view;

/* One record as a connector hands it over, and as C code reads it back. */
typedef struct em_push {
    const char *value;
    size_t value_len;
    const char *key; /* NULL: no key */
    size_t key_len;
    int64_t ts_ms;   /* event time if the source knows it, else arrival */
    int64_t offset;  /* source position: Kafka offset, byte offset, sequence */
    int32_t partition;
    const char *meta; /* the same for a run of records (topic, file name); may be NULL */
    size_t meta_len;
    const char *extra; /* this record's own extra bytes (Kafka headers, a stream id); may be NULL */
    size_t extra_len;
} em_push;

/* A block with room for about records records of bytes bytes in all
 * (hints: it grows past them as needed; 0, 0 for the defaults). */
em_block *em_block_create(uint32_t records, uint32_t bytes);
/* Appends one record, copying its bytes; a record whose partition, meta or
 * kind differs from the last one's starts a new run. Returns 0, or -1 when
 * out of memory or when the record would not fit in a 32-bit arena. */
int em_block_append(em_block *b, const em_push *p);
/* Record i (< count) of a sealed or filling block, read back. *run is a
 * cursor: start it at 0 and pass it again for the next record (reading in
 * order costs nothing; any order works). Pointers are into the arena. */
void em_block_read(const em_block *b, uint32_t i, uint32_t *run, em_push *out);
/* The arena bytes a record of this shape takes (value, key, extra, their
 * length words), for the receiver's sizing. */
size_t em_block_record_bytes(const em_push *p);
void em_block_unref(em_block *b); /* accepts NULL */
/* Bytes held by every live block of the process, plus what connectors
 * reserved, for memory.max. */
size_t em_block_total_bytes(void);
/* Counts (or, negative, gives back) bytes a connector holds for records
 * outside blocks: librdkafka's prefetch queue bound. */
void em_block_reserve(ptrdiff_t bytes);

#endif

/* fuzz/wal.c — libFuzzer target for the write-ahead log reader
 * (core/wal.c): a segment of any bytes replays its intact records and sets
 * the rest aside, never a crash. */
#include "files.h"

#include "../core/block.h"
#include "../core/log.h"
#include "../core/wal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    if (!quiet++)
        em_log_set_level((em_log_level)(EM_LOG_ERROR + 1));
    const char *base = fuzz_scratch();
    char dir[400], qdir[400], path[500];
    snprintf(dir, sizeof dir, "%s/wal", base);
    snprintf(qdir, sizeof qdir, "%s/quarantine", base);
    if (mkdir(dir, 0755) != 0)
        abort();
    snprintf(path, sizeof path, "%s/00000000000000000001.wal", dir);
    fuzz_write(path, data, size);
    em_block **blocks = NULL;
    uint64_t bad = 0;
    long n = em_wal_recover(dir, qdir, "fuzz", &blocks, &bad);
    for (long i = 0; i < n; i++) {
        em_block *b = blocks[i];
        for (uint32_t k = 0; k < b->count; k++) /* every record inside its arena */
            if ((uint64_t)b->records[k].value_off + b->records[k].value_len > b->arena_len)
                abort();
        em_block_unref(b);
    }
    free(blocks);
    return 0;
}

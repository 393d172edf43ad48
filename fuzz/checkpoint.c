/* fuzz/checkpoint.c — libFuzzer target for the checkpoint reader
 * (core/checkpoint.c): a damaged file falls back or reads as none. */
#include "files.h"

#include "../core/checkpoint.h"
#include "../core/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    if (!quiet++)
        em_log_set_level((em_log_level)(EM_LOG_ERROR + 1));
    const char *dir = fuzz_scratch();
    char path[400];
    snprintf(path, sizeof path, "%s/checkpoint", dir);
    fuzz_write(path, data, size);
    em_checkpoint cp;
    memset(&cp, 0, sizeof cp);
    em_checkpoint_read(dir, &cp);
    char *p = em_checkpoint_source_positions(&cp, 1);
    free(p);
    em_checkpoint_covers_wal(&cp, "1-socket/00000000000000000001.wal");
    em_checkpoint_clear(&cp);
    return 0;
}

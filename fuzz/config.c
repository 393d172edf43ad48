/* fuzz/config.c — libFuzzer target for the configuration parser
 * (core/config.c, core/props.c): any file is read or refused with an
 * error, never a crash. */
#include "files.h"

#include "../core/config.h"
#include "../core/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int quiet;
    if (!quiet++)
        em_log_set_level((em_log_level)(EM_LOG_ERROR + 1));
    char path[400];
    snprintf(path, sizeof path, "%s/ember.conf", fuzz_scratch());
    fuzz_write(path, data, size);
    em_config c;
    em_config_init(&c);
    char err[2048];
    if (em_config_load_file(&c, path, err, sizeof err) == 0)
        em_config_finish(&c, err, sizeof err);
    em_config_free(&c);
    return 0;
}

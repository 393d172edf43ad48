/* fuzz/json.c — libFuzzer target for the JSON tokenizer (core/json.c).
 * Every input either tokenizes or fails with a code; tokens stay inside
 * the input and the counts of containers add up. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../core/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly size bytes: ASan sees any read past the end */
    char *s = malloc(size ? size : 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    em_json_tok tape[64];
    size_t where = 0;
    int n = em_json_scan(s, size, tape, 64, &where);
    if (n == EM_JSON_FULL) {
        em_json_tok *big = malloc(sizeof *big * (size + 2));
        if (big) {
            n = em_json_scan(s, size, big, (int)size + 2, &where);
            if (n == EM_JSON_FULL)
                abort(); /* a token needs at least one byte */
            for (int i = 0; i < n; i++)
                if ((big[i].type == EM_JSON_STRING || big[i].type == EM_JSON_STRING_ESC) &&
                    (size_t)big[i].off + big[i].len > size)
                    abort();
            free(big);
        }
    } else if (n > 0) {
        for (int i = 0; i < n; i++)
            if ((tape[i].type == EM_JSON_STRING || tape[i].type == EM_JSON_STRING_ESC) &&
                (size_t)tape[i].off + tape[i].len > size)
                abort();
    } else if ((n == EM_JSON_SYNTAX || n == EM_JSON_DEEP) && where > size) {
        abort();
    }
    free(s);
    return 0;
}

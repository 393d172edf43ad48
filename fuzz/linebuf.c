/* fuzz/linebuf.c — libFuzzer target for the line splitter
 * (connectors/linebuf.c). The input is fed in reads of sizes taken from its
 * first bytes; the lines that come out, joined with "\n", must be the input
 * minus "\r" before each "\n" (no line here is longer than EM_LINE_MAX). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../connectors/linebuf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t step = (size_t)data[0] % 64 + 1;
    data++, size--;
    em_linebuf lb;
    memset(&lb, 0, sizeof lb);
    char *out = malloc(size + 1);
    size_t outlen = 0, fed = 0;
    if (!out)
        return 0;
    while (fed < size) {
        size_t room = step;
        char *p = em_linebuf_room(&lb, &room);
        if (!p)
            break;
        size_t n = size - fed < room ? size - fed : room;
        if (n > step)
            n = step;
        memcpy(p, data + fed, n);
        em_linebuf_added(&lb, n);
        fed += n;
        const char *line;
        size_t len;
        int cut;
        while (em_linebuf_next(&lb, 0, &line, &len, &cut)) {
            if (outlen + len + 1 > size + 1)
                abort(); /* more out than in */
            memcpy(out + outlen, line, len);
            outlen += len;
            out[outlen++] = '\n';
            em_linebuf_consume(&lb);
        }
    }
    const char *line;
    size_t len;
    int cut;
    if (em_linebuf_next(&lb, 1, &line, &len, &cut)) {
        if (outlen + len > size + 1)
            abort();
        memcpy(out + outlen, line, len);
        outlen += len;
        em_linebuf_consume(&lb);
    }
    /* the expected text: every "\r\n" as "\n", a final "\r" kept or dropped */
    size_t k = 0;
    for (size_t i = 0; i < size; i++) {
        if (data[i] == '\r' && i + 1 < size && data[i + 1] == '\n')
            continue;
        if (data[i] == '\r' && i + 1 == size)
            continue;
        if (k >= outlen || out[k] != (char)data[i])
            abort();
        k++;
    }
    if (k != outlen && !(k + 1 == outlen && out[k] == '\n'))
        abort();
    em_linebuf_free(&lb);
    free(out);
    return 0;
}

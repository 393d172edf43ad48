/* buf.h — a growing text buffer for HTTP responses: printf, JSON strings.
 *
 * Out of memory sticks (oom = 1) and later appends are dropped, so callers
 * write a whole response and check once.
 */
#ifndef EMBER_BUF_H
#define EMBER_BUF_H

#include <stddef.h>

typedef struct em_buf {
    char *data;
    size_t len, cap;
    int oom;
} em_buf;

void em_buf_init(em_buf *b);
void em_buf_printf(em_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void em_buf_add(em_buf *b, const char *s, size_t n);
/* s as a JSON string, quotes included. */
void em_buf_json_str(em_buf *b, const char *s);
/* A number, or null when it is not finite. */
void em_buf_json_num(em_buf *b, double v);
/* The ISO 8601 UTC text of a wall-clock time in ms, quoted; null for 0. */
void em_buf_json_time(em_buf *b, long long ms);
/* Gives the data away (the caller frees it) and resets the buffer. */
char *em_buf_take(em_buf *b, size_t *len);
void em_buf_free(em_buf *b);

#endif

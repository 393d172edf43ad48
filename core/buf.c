/* buf.c — see buf.h. */
#include "buf.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void em_buf_init(em_buf *b) { memset(b, 0, sizeof *b); }

static int reserve(em_buf *b, size_t more)
{
    if (b->oom)
        return -1;
    if (b->len + more + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) {
        b->oom = 1;
        return -1;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

void em_buf_add(em_buf *b, const char *s, size_t n)
{
    if (reserve(b, n) != 0)
        return;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void em_buf_printf(em_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[512];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        em_buf_add(b, small, (size_t)n);
        return;
    }
    if (reserve(b, (size_t)n) != 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void em_buf_json_str(em_buf *b, const char *s)
{
    em_buf_add(b, "\"", 1);
    const char *run = s;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        em_buf_add(b, run, (size_t)(s - run));
        char esc[8];
        if (c == '"' || c == '\\')
            snprintf(esc, sizeof esc, "\\%c", c);
        else if (c == '\n')
            snprintf(esc, sizeof esc, "\\n");
        else
            snprintf(esc, sizeof esc, "\\u%04x", c);
        em_buf_add(b, esc, strlen(esc));
        run = s + 1;
    }
    em_buf_add(b, run, (size_t)(s - run));
    em_buf_add(b, "\"", 1);
}

void em_buf_json_num(em_buf *b, double v)
{
    if (!isfinite(v))
        em_buf_add(b, "null", 4);
    else if (v == (double)(long long)v && fabs(v) < 1e15)
        em_buf_printf(b, "%lld", (long long)v);
    else
        em_buf_printf(b, "%.6g", v);
}

void em_buf_json_time(em_buf *b, long long ms)
{
    if (ms <= 0) {
        em_buf_add(b, "null", 4);
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    em_buf_printf(b, "\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\"", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

char *em_buf_take(em_buf *b, size_t *len)
{
    if (b->oom || reserve(b, 0) != 0) {
        em_buf_free(b);
        return NULL;
    }
    char *d = b->data;
    *len = b->len;
    em_buf_init(b);
    return d;
}

void em_buf_free(em_buf *b)
{
    free(b->data);
    em_buf_init(b);
}

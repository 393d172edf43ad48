/* json.c — see json.h. */
#include "json.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const double POW10[] = { 1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22 };

typedef const unsigned char *cursor;

static cursor skip_ws(cursor p, cursor end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

static int is_digit(cursor p, cursor end) { return p < end && *p >= '0' && *p <= '9'; }

/* A number at p (JSON's grammar, strictly). Returns the byte after it, or
 * NULL with *bad at the byte that does not fit. */
static cursor number(cursor p, cursor end, double *out, cursor *bad)
{
    cursor start = p;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    uint64_t m = 0;
    int sig = 0, scale = 0; /* value = m * 10^scale while sig <= 19 */
    if (p < end && *p == '0') {
        p++;
    } else if (is_digit(p, end)) {
        for (; is_digit(p, end); p++) {
            if (sig < 19)
                m = m * 10 + (uint64_t)(*p - '0'), sig++;
            else
                scale++, sig++;
        }
    } else {
        *bad = p;
        return NULL;
    }
    if (p < end && *p == '.') {
        p++;
        if (!is_digit(p, end)) {
            *bad = p;
            return NULL;
        }
        for (; is_digit(p, end); p++) {
            if (m == 0 && *p == '0') {
                scale--; /* a leading zero of the fraction is not significant */
            } else if (sig < 19) {
                m = m * 10 + (uint64_t)(*p - '0'), sig++, scale--;
            } else {
                sig++;
            }
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int eneg = 0;
        if (p < end && (*p == '+' || *p == '-'))
            eneg = *p++ == '-';
        if (!is_digit(p, end)) {
            *bad = p;
            return NULL;
        }
        int e = 0;
        for (; is_digit(p, end); p++)
            if (e < 100000)
                e = e * 10 + (*p - '0');
        scale += eneg ? -e : e;
    }
    if (m == 0) {
        *out = neg ? -0.0 : 0.0;
    } else if (sig <= 15 && scale >= -22 && scale <= 22) {
        /* Clinger's fast path: m and 10^|scale| are exact doubles, so one
         * IEEE multiplication or division rounds correctly. */
        double v = scale < 0 ? (double)m / POW10[-scale] : (double)m * POW10[scale];
        *out = neg ? -v : v;
    } else { /* strtod rounds every other case correctly; it needs a NUL */
        size_t len = (size_t)(p - start);
        char local[64];
        char *buf = len < sizeof local ? local : malloc(len + 1);
        if (!buf) {
            *bad = start;
            return NULL;
        }
        memcpy(buf, start, len);
        buf[len] = '\0';
        *out = strtod(buf, NULL);
        if (buf != local)
            free(buf);
    }
    return p;
}

/* A string whose opening quote is at p. Fills t; returns the byte after the
 * closing quote, or NULL when it does not end. The first quote or backslash
 * is found eight bytes a step (a word compared with every byte at once), so
 * neither a short key nor a 36-byte id costs a library call; only a string
 * with a backslash is walked byte by byte, for its escaped quotes. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* The high bit of each byte of w equal to c's, exact up to the first one
 * (the lowest set bit, which is all the caller reads). */
static uint64_t bytes_equal(uint64_t w, uint64_t c)
{
    uint64_t x = w ^ c;
    return (x - ONES) & ~x & HIGHS;
}

static cursor quote_or_backslash(cursor q, cursor end)
{
    while (end - q >= 8) {
        uint64_t w;
        memcpy(&w, q, 8);
        uint64_t m = bytes_equal(w, ONES * '"') | bytes_equal(w, ONES * '\\');
        if (m)
            return q + (__builtin_ctzll(m) >> 3);
        q += 8;
    }
    while (q < end && *q != '"' && *q != '\\')
        q++;
    return q;
}
#else
static cursor quote_or_backslash(cursor q, cursor end)
{
    while (q < end && *q != '"' && *q != '\\')
        q++;
    return q;
}
#endif

static cursor string(cursor s, cursor p, cursor end, em_json_tok *t)
{
    cursor from = p + 1, q = quote_or_backslash(from, end);
    if (q >= end)
        return NULL;
    t->type = EM_JSON_STRING;
    if (*q == '\\') {
        /* A quote may be escaped: walk to the real end. */
        t->type = EM_JSON_STRING_ESC;
        for (; q < end && *q != '"'; q++)
            if (*q == '\\')
                q++;
        if (q >= end)
            return NULL;
    }
    t->off = (uint32_t)(from - s);
    t->len = (uint32_t)(q - from);
    return q + 1;
}

static int literal(cursor p, cursor end, const char *word, size_t len)
{
    return (size_t)(end - p) >= len && memcmp(p, word, len) == 0;
}

int em_json_scan(const char *text, size_t len, em_json_tok *tape, int cap, size_t *where)
{
    cursor s = (cursor)text, end = s + len, p = skip_ws(s, end), bad = end;
    int open[EM_JSON_MAX_DEPTH]; /* tape indexes of the containers not yet closed */
    int depth = 0, n = 0;

value:
    if (p >= end)
        goto syntax;
    if (n == cap)
        return EM_JSON_FULL;
    em_json_tok *t = &tape[n++];
    switch (*p) {
    case '{':
    case '[':
        if (depth == EM_JSON_MAX_DEPTH) {
            *where = (size_t)(p - s);
            return EM_JSON_DEEP;
        }
        t->type = *p == '{' ? EM_JSON_OBJECT : EM_JSON_ARRAY;
        t->len = 0;
        t->skip = (uint32_t)n;
        open[depth++] = n - 1;
        p = skip_ws(p + 1, end);
        if (p < end && *p == (t->type == EM_JSON_OBJECT ? '}' : ']')) {
            p++;
            depth--;
            goto after_value;
        }
        if (t->type == EM_JSON_OBJECT)
            goto key;
        goto value;
    case '"':
        if (!(p = string(s, p, end, t)))
            goto syntax;
        goto after_value;
    case 't':
        if (!literal(p, end, "true", 4))
            goto syntax_at_p;
        t->type = EM_JSON_TRUE;
        p += 4;
        goto after_value;
    case 'f':
        if (!literal(p, end, "false", 5))
            goto syntax_at_p;
        t->type = EM_JSON_FALSE;
        p += 5;
        goto after_value;
    case 'n':
        if (!literal(p, end, "null", 4))
            goto syntax_at_p;
        t->type = EM_JSON_NULL;
        p += 4;
        goto after_value;
    default:
        t->type = EM_JSON_NUMBER;
        if (!(p = number(p, end, &t->num, &bad)))
            goto syntax;
        goto after_value;
    }

key:
    if (p >= end || *p != '"')
        goto syntax_at_p;
    if (n == cap)
        return EM_JSON_FULL;
    if (!(p = string(s, p, end, &tape[n++])))
        goto syntax;
    tape[open[depth - 1]].len++;
    p = skip_ws(p, end);
    if (p >= end || *p != ':')
        goto syntax_at_p;
    p = skip_ws(p + 1, end);
    goto value;

after_value:
    p = skip_ws(p, end);
    if (depth == 0) {
        if (p != end)
            goto syntax_at_p;
        return n;
    }
    em_json_tok *c = &tape[open[depth - 1]];
    if (c->type == EM_JSON_ARRAY)
        c->len++;
    if (p >= end)
        goto syntax;
    if (*p == ',') {
        p = skip_ws(p + 1, end);
        if (c->type == EM_JSON_OBJECT)
            goto key;
        goto value;
    }
    if (*p == (c->type == EM_JSON_OBJECT ? '}' : ']')) {
        c->skip = (uint32_t)n;
        p++;
        depth--;
        goto after_value;
    }
    goto syntax_at_p;

syntax_at_p:
    bad = p;
syntax:
    *where = (size_t)(bad - s);
    return EM_JSON_SYNTAX;
}

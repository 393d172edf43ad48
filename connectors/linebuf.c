/* linebuf.c — see linebuf.h. */
#include "linebuf.h"

#include <stdlib.h>
#include <string.h>

#define READ_CHUNK 65536
#define BUF_LIMIT (EM_LINE_MAX + 1) /* room for a longest line and its "\n" */

char *em_linebuf_room(em_linebuf *lb, size_t *room)
{
    if (lb->len == 0 && lb->cap > READ_CHUNK) { /* a long line passed: give the memory back */
        free(lb->buf);
        lb->buf = NULL;
        lb->cap = lb->start = 0;
    }
    if (lb->start > 0) {
        memmove(lb->buf, lb->buf + lb->start, lb->len);
        lb->start = 0;
    }
    if (lb->cap - lb->len < READ_CHUNK && lb->cap < BUF_LIMIT) {
        size_t cap = lb->cap ? lb->cap * 2 : READ_CHUNK;
        if (cap > BUF_LIMIT)
            cap = BUF_LIMIT;
        char *b = realloc(lb->buf, cap);
        if (!b)
            return NULL;
        lb->buf = b;
        lb->cap = cap;
    }
    *room = lb->cap - lb->len;
    return lb->buf + lb->len;
}

void em_linebuf_added(em_linebuf *lb, size_t n) { lb->len += n; }

static void drop(em_linebuf *lb, size_t n)
{
    lb->start += n;
    lb->len -= n;
    lb->scanned = 0;
    /* The buffer stays (start and all) until the next em_linebuf_room():
     * lines taken since then still point into it. */
}

int em_linebuf_next(em_linebuf *lb, int last, const char **line, size_t *len, int *cut)
{
    while (lb->skipping && lb->len > 0) {
        char *p = lb->buf + lb->start, *nl = memchr(p, '\n', lb->len);
        drop(lb, nl ? (size_t)(nl - p) + 1 : lb->len);
        lb->skipping = !nl;
    }
    if (lb->len == 0)
        return 0;
    char *p = lb->buf + lb->start;
    char *nl = memchr(p + lb->scanned, '\n', lb->len - lb->scanned);
    size_t n;
    *cut = 0;
    if (nl) {
        n = (size_t)(nl - p);
        lb->used = n + 1;
    } else if (lb->len > EM_LINE_MAX) {
        n = lb->used = EM_LINE_MAX;
        *cut = 1;
    } else if (last) {
        n = lb->used = lb->len;
    } else {
        lb->scanned = lb->len; /* wait for the rest of the line */
        return 0;
    }
    lb->cut = *cut;
    if (!*cut && n > 0 && p[n - 1] == '\r')
        n--;
    *line = p;
    *len = n;
    return 1;
}

void em_linebuf_consume(em_linebuf *lb)
{
    drop(lb, lb->used);
    lb->used = 0;
    lb->skipping = lb->cut; /* the rest of a cut line goes, up to its "\n" */
    lb->cut = 0;
}

size_t em_linebuf_pending(const em_linebuf *lb) { return lb->len; }

void em_linebuf_reset(em_linebuf *lb)
{
    lb->start = lb->len = lb->scanned = lb->used = 0;
    lb->skipping = lb->cut = 0;
}

void em_linebuf_free(em_linebuf *lb)
{
    free(lb->buf);
    lb->buf = NULL;
    lb->cap = 0;
    em_linebuf_reset(lb);
}

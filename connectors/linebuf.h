/* linebuf.h — splitting a byte stream into text lines, for the socket and
 * file sources.
 *
 * Bytes are read into the buffer's free room; complete lines are taken one
 * at a time and consumed only after the receiver took them, so a refused
 * push loses nothing. The bytes of the lines next() returned stay where
 * they are until the next em_linebuf_room(), consumed or not, so a source
 * can gather a read's lines and push them at once. A line longer than EM_LINE_MAX is cut there (its rest
 * dropped up to the next "\n"), which keeps the buffer bounded. A trailing
 * "\r" is removed, so CRLF text reads like LF text.
 */
#ifndef EMBER_LINEBUF_H
#define EMBER_LINEBUF_H

#include <stddef.h>
#include <sys/types.h>

#define EM_LINE_MAX (1u << 20)

typedef struct em_linebuf {
    char *buf;
    size_t start, len, cap; /* pending bytes are buf[start, start + len) */
    size_t scanned;         /* pending bytes already searched for "\n" */
    size_t used;            /* bytes the line last returned by next() takes */
    int cut;                /* that line was cut at EM_LINE_MAX */
    int skipping;           /* dropping the rest of an over-long line */
} em_linebuf;

/* Free room at the end (compacting and growing as needed), for a read of
 * up to *room bytes; then em_linebuf_added(). NULL when out of memory. */
char *em_linebuf_room(em_linebuf *lb, size_t *room);
void em_linebuf_added(em_linebuf *lb, size_t n);
/* The next complete line, without its "\n": 1 with line, len (and cut when
 * it was longer than EM_LINE_MAX), or 0 when none is complete yet. With
 * last = 1 the bytes left without "\n" count as a line (the peer closed,
 * the file was rotated away). */
int em_linebuf_next(em_linebuf *lb, int last, const char **line, size_t *len, int *cut);
/* Takes the line next() returned off the buffer. */
void em_linebuf_consume(em_linebuf *lb);
size_t em_linebuf_pending(const em_linebuf *lb); /* bytes not yet taken */
void em_linebuf_reset(em_linebuf *lb);           /* drops every pending byte */
void em_linebuf_free(em_linebuf *lb);

#endif

/* json.h — the JSON tokenizer under lua/ember/json.lua.
 *
 * One pass over a JSON text writes a flat tape of tokens in document order:
 * a container token carries its member (object) or element (array) count
 * and the index of the token past its contents (so a reader can skip it),
 * then come its contents, an object's as key, value, key, value. Lua walks
 * the tape to build tables, sized exactly from the counts, without calling
 * back into C per value. Strings are not copied: a token gives their offset
 * and length in the input, and says when they hold escapes (Lua unescapes
 * those). Numbers are parsed here, correctly rounded.
 *
 * The input need not end in NUL: it may be a record inside a block's arena.
 */
#ifndef EMBER_JSON_H
#define EMBER_JSON_H

#include <stddef.h>
#include <stdint.h>

enum {
    EM_JSON_OBJECT = 1, /* len = members */
    EM_JSON_ARRAY,      /* len = elements */
    EM_JSON_STRING,     /* off, len: the bytes between the quotes */
    EM_JSON_STRING_ESC, /* the same, holding backslash escapes */
    EM_JSON_NUMBER,     /* num */
    EM_JSON_TRUE,
    EM_JSON_FALSE,
    EM_JSON_NULL,
};

/* Mirrored in lua/ember/json.lua: change both together. */
typedef struct em_json_tok {
    uint32_t type, off, len;
    uint32_t skip; /* a container: the tape index past its contents */
    double num;
} em_json_tok;

enum {
    EM_JSON_SYNTAX = -1, /* *where: the offset of the byte that does not fit (len: the end) */
    EM_JSON_FULL = -2,   /* more than cap tokens: call again with a larger tape */
    EM_JSON_DEEP = -3,   /* nested deeper than EM_JSON_MAX_DEPTH; *where: its offset */
};

#define EM_JSON_MAX_DEPTH 1000

/* Tokenizes len bytes of s into tape[0..cap). Returns the token count, or
 * one of the negative codes above. */
int em_json_scan(const char *s, size_t len, em_json_tok *tape, int cap, size_t *where);

#endif

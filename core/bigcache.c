/* bigcache.c — see bigcache.h. */
#include "bigcache.h"

#include <stdlib.h>
#include <string.h>

/* A kept chunk of exactly size bytes (LuaJIT's large vectors are powers
 * of two, so the sizes repeat), else a new one. */
static void *take(em_bigcache *c, size_t size)
{
    for (size_t i = c->n; i-- > 0;)
        if (c->size[i] == size) {
            void *p = c->p[i];
            c->bytes -= size;
            c->n--;
            c->p[i] = c->p[c->n];
            c->size[i] = c->size[c->n];
            return p;
        }
    return malloc(size);
}

/* Keeps a freed chunk, making room by freeing the oldest kept ones. */
static void give(em_bigcache *c, void *p, size_t size)
{
    if (size > EM_BIGCACHE_BYTES) {
        free(p);
        return;
    }
    while (c->n && (c->n == EM_BIGCACHE_SLOTS || c->bytes + size > EM_BIGCACHE_BYTES)) {
        free(c->p[0]);
        c->bytes -= c->size[0];
        c->n--;
        memmove(c->p, c->p + 1, c->n * sizeof *c->p);
        memmove(c->size, c->size + 1, c->n * sizeof *c->size);
    }
    c->p[c->n] = p;
    c->size[c->n++] = size;
    c->bytes += size;
}

void *em_bigcache_realloc(em_bigcache *c, lua_Alloc inner, void *inner_ud, void *ptr, size_t osize,
                          size_t nsize)
{
    int was_big = ptr && osize >= EM_BIGCACHE_MIN, big = nsize >= EM_BIGCACHE_MIN;
    if (!was_big && !big)
        return inner(inner_ud, ptr, osize, nsize);
    if (nsize == 0) { /* a big one freed */
        give(c, ptr, osize);
        return NULL;
    }
    void *p = big ? take(c, nsize) : inner(inner_ud, NULL, 0, nsize);
    if (!p)
        return NULL; /* the old block stays, as realloc leaves it */
    if (ptr) {
        memcpy(p, ptr, osize < nsize ? osize : nsize);
        if (was_big)
            give(c, ptr, osize);
        else
            inner(inner_ud, ptr, osize, 0);
    }
    return p;
}

void em_bigcache_clear(em_bigcache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        free(c->p[i]);
    c->n = c->bytes = 0;
}

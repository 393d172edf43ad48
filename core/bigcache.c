/* bigcache.c — see bigcache.h. */
#include "bigcache.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Its own mappings, not malloc's: glibc serves a large block from a
 * thread's arena once its mmap threshold has risen past that size (it
 * rises with every large block freed, up to 32 MiB), and a large block
 * freed in the middle of an arena stays in the process. A keyed state's
 * tables leave tens of MiB of such blocks behind as they grow; unmapped,
 * they go back to the kernel as soon as LuaJIT frees them. */
static void *map(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void unmap(void *p, size_t size) { munmap(p, size); }

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
    return map(size);
}

/* Keeps a freed chunk, making room by freeing the oldest kept ones. */
static void give(em_bigcache *c, void *p, size_t size)
{
    if (size > EM_BIGCACHE_BYTES) {
        unmap(p, size);
        return;
    }
    while (c->n && (c->n == EM_BIGCACHE_SLOTS || c->bytes + size > EM_BIGCACHE_BYTES)) {
        unmap(c->p[0], c->size[0]);
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
        unmap(c->p[i], c->size[i]);
    c->n = c->bytes = 0;
}

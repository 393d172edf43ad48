/* bigcache.h — the large allocations of a Lua state, kept for reuse.
 *
 * LuaJIT's allocator maps every allocation of 128 KiB or more with mmap
 * and unmaps it when freed. Its string table is one: it doubles as a GC
 * cycle's fresh strings pile up and halves after the sweep, so a job
 * that makes a string per record (most do) maps, zeroes (page faults)
 * and unmaps a new table several times a second. Measured on the file
 * source, that was half of the process's page faults. This cache maps
 * those allocations itself (mmap, not malloc: see bigcache.c) and keeps
 * the last few freed ones, so the table's two or three sizes come back
 * without a fault; what it does not keep is unmapped at once.
 *
 * One cache per Lua state, used only on the thread running that state
 * (as the allocator itself): no lock.
 */
#ifndef EMBER_BIGCACHE_H
#define EMBER_BIGCACHE_H

#include <lua.h>
#include <stddef.h>

#define EM_BIGCACHE_MIN (128u << 10) /* from this size on, allocations go through the cache */
#define EM_BIGCACHE_SLOTS 4
#define EM_BIGCACHE_BYTES (16u << 20) /* at most this much kept unused */

typedef struct em_bigcache {
    void *p[EM_BIGCACHE_SLOTS];
    size_t size[EM_BIGCACHE_SLOTS];
    size_t n, bytes;
} em_bigcache;

/* A lua_Alloc step: sizes below EM_BIGCACHE_MIN go to inner (LuaJIT's
 * own allocator), larger ones to the cache's own mappings; a realloc
 * across the line moves the bytes. */
void *em_bigcache_realloc(em_bigcache *c, lua_Alloc inner, void *inner_ud, void *ptr, size_t osize,
                          size_t nsize);
/* Frees what the cache keeps (after lua_close). Accepts NULL. */
void em_bigcache_clear(em_bigcache *c);

#endif

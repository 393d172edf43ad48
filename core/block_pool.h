/* block_pool.h — freed blocks kept for the next ones, buffers and all.
 *
 * A busy receiver fills a block of a few MiB every blockInterval and a
 * batch frees a second's worth of them at once. Handing those buffers back
 * to malloc (which gives large ones back to the kernel) and asking again a
 * moment later costs a page fault per 4 KiB of every block; measured on the
 * file source, about a tenth of the process's CPU. The pool keeps what was
 * freed, bounded in bytes and in time: a block that waited longer than
 * EM_BLOCK_POOL_IDLE_MS is freed, so an idle driver gives its memory back.
 *
 * Pooled bytes are not records: em_block_total_bytes() does not count
 * them. A block is kept only while the live blocks and the pool together
 * stay within memory.max (em_block_pool_limit) and the pool within
 * EM_BLOCK_POOL_BYTES, so the pool never lifts what ember holds past the cap.
 */
#ifndef EMBER_BLOCK_POOL_H
#define EMBER_BLOCK_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "block.h"

#define EM_BLOCK_POOL_BYTES (64u << 20) /* at most this much kept */
#define EM_BLOCK_POOL_IDLE_MS 2000      /* a block not taken again within this is freed */

/* A pooled block whose arena holds at least bytes (or the newest one when
 * none does), its buffers kept and its other fields as they were; NULL
 * when the pool is empty. */
em_block *em_block_pool_take(uint32_t bytes);
/* Keeps a freed block (its bytes: what its buffers take); returns 1 when
 * kept, 0 when the pool is full (the caller frees it). */
int em_block_pool_give(em_block *b, size_t bytes);
/* The cap on live blocks plus the pool: memory.max (0: none). */
void em_block_pool_limit(size_t bytes);
/* Frees the blocks that waited longer than EM_BLOCK_POOL_IDLE_MS, or all
 * of them. Called by the driver's clock, and with all = 1 at exit. */
void em_block_pool_trim(int all);
/* Bytes the pool holds now. */
size_t em_block_pool_bytes(void);
/* Frees a block's buffers and the block itself (what the pool and
 * em_block_unref do with a block nobody keeps). */
void em_block_destroy(em_block *b);

#endif

/* batch.c — see batch.h. */
#include "batch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lifecycle.h"
#include "log.h"

static em_batch *new_batch(em_job *j, int64_t time_ms)
{
    em_batch *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    em_version *v = j->version;
    b->job = j;
    b->version = em_version_ref(v);
    b->time_ms = time_ms;
    b->id = j->next_batch_id++;
    b->task.owner = j;
    b->task.run = em_lifecycle_run;
    b->first_of_reload = v->reload_ms && v->batches_cut == 0;
    v->batches_cut++;
    return b;
}

em_batch *em_batch_cut_recovered(em_job *j, int64_t time_ms, uint64_t max_records)
{
    size_t from = j->recovered_pos, to = from;
    uint64_t records = 0;
    /* Whole blocks while under the limit: at most the limit plus one block,
     * the same bound live batches keep. */
    while (to < j->nrecovered && (!max_records || records < max_records))
        records += j->recovered[to++]->count;
    if (to == from)
        return NULL;
    em_batch *b = new_batch(j, time_ms);
    if (!b)
        return NULL;
    b->blocks = malloc((to - from) * sizeof *b->blocks);
    b->sources = malloc((to - from) * sizeof *b->sources);
    if (!b->blocks || !b->sources) {
        em_batch_drop(b);
        return NULL;
    }
    memcpy(b->blocks, j->recovered + from, (to - from) * sizeof *b->blocks);
    memcpy(b->sources, j->recovered_src + from, (to - from) * sizeof *b->sources);
    b->nblocks = (uint32_t)(to - from);
    b->records = records;
    j->recovered_pos = to;
    if (to == j->nrecovered) { /* all handed over: the batches own the blocks now */
        free(j->recovered);
        free(j->recovered_src);
        j->recovered = NULL;
        j->recovered_src = NULL;
        j->nrecovered = j->recovered_pos = 0;
    }
    return b;
}

/* The partitions each receiver is assigned at the cut, for the watermark
 * (out of memory: none, and partitions count from their first record). */
static void note_assignment(em_batch *b, const em_version *v)
{
    for (size_t i = 0; i < v->nreceivers; i++) {
        int32_t *parts;
        size_t n = em_receiver_assigned(v->receivers[i], &parts);
        if (!n)
            continue;
        int32_t *a = realloc(b->assigned, (b->nassigned + n) * 2 * sizeof *a);
        if (a) {
            b->assigned = a;
            for (size_t k = 0; k < n; k++) {
                a[2 * (b->nassigned + k)] = (int32_t)i + 1;
                a[2 * (b->nassigned + k) + 1] = parts[k];
            }
            b->nassigned += (uint32_t)n;
        }
        free(parts);
    }
}

em_batch *em_batch_cut(em_job *j, int64_t time_ms)
{
    em_version *v = j->version;
    em_batch *b = new_batch(j, time_ms);
    if (!b)
        return NULL;
    size_t cap = 0;
    for (size_t i = 0; i < v->nreceivers; i++) {
        em_block **got;
        size_t n = em_receiver_take(v->receivers[i], &got);
        if (!n)
            continue;
        em_block **blocks = realloc(b->blocks, (cap + n) * sizeof *blocks);
        int32_t *sources = realloc(b->sources, (cap + n) * sizeof *sources);
        if (blocks)
            b->blocks = blocks;
        if (sources)
            b->sources = sources;
        if (!blocks || !sources) { /* out of memory: report the blocks failed */
            em_receiver_batch_done(v->receivers[i], got, n, 0);
            for (size_t k = 0; k < n; k++)
                em_block_unref(got[k]);
            free(got);
            em_log(EM_LOG_ERROR, j->name, "out of memory cutting batch %lld", (long long)time_ms);
            continue;
        }
        for (size_t k = 0; k < n; k++) {
            b->blocks[cap + k] = got[k];
            b->sources[cap + k] = (int32_t)i + 1;
            b->records += got[k]->count;
        }
        cap += n;
        free(got);
    }
    b->nblocks = (uint32_t)cap;
    note_assignment(b, v);
    return b;
}

/* Groups the blocks by receiver for batch_done. */
void em_batch_release(em_batch *b, int ok)
{
    for (uint32_t i = 0; ok && i < b->nblocks; i++)
        if (b->blocks[i]->wal_path && unlink(b->blocks[i]->wal_path) != 0 && errno != ENOENT)
            em_log(EM_LOG_WARN, b->job->name, "write-ahead log %s: cannot delete: %s",
                   b->blocks[i]->wal_path, strerror(errno));
    for (uint32_t i = 0; i < b->nblocks; i++) {
        em_receiver *r = b->blocks[i]->receiver;
        if (!r) /* recovered from the write-ahead log */
            continue;
        int first = 1;
        for (uint32_t k = 0; k < i; k++)
            first &= b->blocks[k]->receiver != r;
        if (!first)
            continue;
        em_block *mine[b->nblocks];
        size_t n = 0;
        for (uint32_t k = i; k < b->nblocks; k++)
            if (b->blocks[k]->receiver == r)
                mine[n++] = b->blocks[k];
        em_receiver_batch_done(r, mine, n, ok);
    }
}

void em_batch_free(em_batch *b)
{
    for (uint32_t i = 0; i < b->nblocks; i++)
        em_block_unref(b->blocks[i]);
    free(b->blocks);
    free(b->sources);
    free(b->assigned);
    em_version_unref(b->version);
    free(b);
}

void em_batch_drop(em_batch *b)
{
    em_batch_release(b, 0);
    em_batch_free(b);
}

/* checkpoint.h — the per-job checkpoint file.
 *
 * `<checkpoint.dir>/<job>/checkpoint` records the last committed batch: its
 * id and time, the job's state_version, the input positions the batch ended
 * at (Kafka offsets per partition) and the write-ahead log segments it
 * covered (docs/checkpoints.md has the format). Operator state lives beside
 * it in state/, in files named by batch id: the rename of this file is the
 * commit point of a batch, state and positions together. It is written by
 * writing a temp file, fsyncing it (stateful jobs) and renaming it over the
 * old one, whose previous content is kept as `checkpoint.1`: a torn or
 * corrupt file falls back to the one before, never to a crash loop.
 */
#ifndef EMBER_CHECKPOINT_H
#define EMBER_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#define EM_CHECKPOINT_FORMAT 2

typedef struct em_checkpoint {
    char job[128];
    char state_version[64]; /* "" when the job declares none */
    int64_t last_batch_ms;  /* 0: none completed */
    uint64_t batches;       /* completed since the checkpoint began */
    uint64_t batch_id;      /* id of the last committed batch; 0: none */
    /* Input positions the last committed batch ended at: lines
     * "<source number> <connector's position text>", malloc'd; NULL: none. */
    char *positions;
    /* Write-ahead log segments (base names) the last committed batch
     * covered, one per line, malloc'd; NULL: none. Recovery skips them: their
     * records are in the committed state already. */
    char *wal_covered;
} em_checkpoint;

/* Writes dir/checkpoint atomically, keeping the previous as checkpoint.1.
 * durable: fsync the file and the folder (a stateful job's commit point);
 * without it the rename still survives a crash of the process. */
int em_checkpoint_write(const char *dir, const em_checkpoint *cp, int durable, char *err,
                        size_t errlen);
/* Reads dir/checkpoint, falling back to checkpoint.1 when it is missing,
 * torn or corrupt (logged). 0: read; 1: none found; never fails hard.
 * Format 1 files (no batch id, no positions) are read as batch id 0. */
int em_checkpoint_read(const char *dir, em_checkpoint *cp);
/* The positions of one source (its lines without the number), malloc'd,
 * or NULL when the checkpoint has none for it. */
char *em_checkpoint_source_positions(const em_checkpoint *cp, int source);
/* A segment's name in wal_covered: its path below the job's wal/ folder
 * ("1-socket/00000000000000000007.wal"), a pointer into segment_path. */
const char *em_checkpoint_wal_name(const char *segment_path);
/* 1 when the segment is in wal_covered. */
int em_checkpoint_covers_wal(const em_checkpoint *cp, const char *segment_path);
/* Frees positions and wal_covered. Accepts a zeroed struct. */
void em_checkpoint_clear(em_checkpoint *cp);
/* Moves the checkpoint files into dir/archive-<unix time>/ for a new
 * state_version (the write-ahead log stays: it holds records, not state). */
int em_checkpoint_archive(const char *dir, char *moved_to, size_t len);
/* Makes dir and its parents. */
int em_mkdirs(const char *dir);

#endif

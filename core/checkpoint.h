/* checkpoint.h — the per-job checkpoint file.
 *
 * `<checkpoint.dir>/<job>/checkpoint` records the last completed batch and
 * the job's state_version, with room for operator state (docs/checkpoints.md
 * has the format). It is written after every completed batch by writing a
 * temp file, fsyncing it and renaming it over the old one, whose previous
 * content is kept as `checkpoint.1`: a torn or corrupt file falls back to
 * the one before, never to a crash loop. Positions of batches not yet
 * completed live where they are safe: in the write-ahead log folder (WAL
 * sources) and in the broker (Kafka offsets, RabbitMQ and Redis acks).
 */
#ifndef EMBER_CHECKPOINT_H
#define EMBER_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#define EM_CHECKPOINT_FORMAT 1

typedef struct em_checkpoint {
    char job[128];
    char state_version[64]; /* "" when the job declares none */
    int64_t last_batch_ms;  /* 0: none completed */
    uint64_t batches;       /* completed since the checkpoint began */
} em_checkpoint;

/* Writes dir/checkpoint atomically, keeping the previous as checkpoint.1. */
int em_checkpoint_write(const char *dir, const em_checkpoint *cp, char *err, size_t errlen);
/* Reads dir/checkpoint, falling back to checkpoint.1 when it is missing,
 * torn or corrupt (logged). 0: read; 1: none found; never fails hard. */
int em_checkpoint_read(const char *dir, em_checkpoint *cp);
/* Moves the checkpoint files into dir/archive-<unix time>/ for a new
 * state_version (the write-ahead log stays: it holds records, not state). */
int em_checkpoint_archive(const char *dir, char *moved_to, size_t len);
/* Makes dir and its parents. */
int em_mkdirs(const char *dir);

#endif

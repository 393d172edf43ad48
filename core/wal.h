/* wal.h — the write-ahead log of sources that cannot replay.
 *
 * With streaming.receiver.writeAheadLog.enable, each block of a socket,
 * file or generator source is also written, record by record, to its own
 * segment file `<checkpoint.dir>/<job>/wal/<n>-<connector>/<seq>.wal` while the
 * receiver fills it. The receiver flushes after every poll, so a killed
 * process loses at most what a connector had read but not yet handed over;
 * fsync (policy always | batch | interval) guards against a machine crash.
 * A segment is deleted when the batch holding its block succeeded; whatever
 * is left at start-up is recovered and processed before new input.
 *
 * Record framing: magic "EMW1", u32 length, u32 crc32 of the payload, then
 * the payload: i64 ts, i64 offset, i32 partition, u32 value, key and meta
 * lengths (key length 0xFFFFFFFF: no key), the bytes. Little-endian.
 */
#ifndef EMBER_WAL_H
#define EMBER_WAL_H

#include <stddef.h>
#include <stdint.h>

#include "block.h"

typedef enum { EM_WAL_FSYNC_ALWAYS, EM_WAL_FSYNC_BATCH, EM_WAL_FSYNC_INTERVAL } em_wal_fsync;

typedef struct em_wal em_wal; /* the writer of one receiver */

/* Parses "always", "batch", "interval"; -1 if none. */
int em_wal_parse_fsync(const char *s);

/* A writer for one source's folder (made on first write), syncing by
 * policy (interval_ms for the interval policy). Segment numbers continue
 * after the highest already there. NULL + err. */
em_wal *em_wal_open(const char *dir, em_wal_fsync policy, int64_t interval_ms, char *err,
                    size_t errlen);
/* Starts the segment of a new block; the block keeps its path. */
int em_wal_begin(em_wal *w, em_block *b);
/* Appends one record. Its extra bytes are not logged: only sources that
 * the broker redelivers have any (Kafka headers, Redis stream ids), and
 * those need no write-ahead log. */
int em_wal_append(em_wal *w, const em_push *r);
/* After a poll: hands buffered bytes to the kernel (and fsyncs under the
 * always and interval policies). */
int em_wal_flush(em_wal *w);
/* The block is sealed: fsync (batch policy) and close its segment. */
int em_wal_seal(em_wal *w);
/* 1 from the first failed write until data has reached the file for 5 s
 * without a failure: one outage of a full disk is one failure, not one per
 * record. */
int em_wal_failing(const em_wal *w);
void em_wal_close(em_wal *w); /* accepts NULL */

/* Reads every segment of a source's folder into blocks, oldest first. A
 * corrupt record or torn tail is set aside: its bytes, up to the next intact
 * record, are appended to `quarantine_dir/<name>.bad`, counted in
 * *bad_bytes and logged; every intact record is replayed. A
 * block's wal_path is its segment. Returns the number of blocks (*out
 * malloc'd), or -1 if the folder cannot be read. */
long em_wal_recover(const char *dir, const char *quarantine_dir, const char *job,
                    em_block ***out, uint64_t *bad_bytes);

/* The folder of a job's source: `<job dir>/wal/<n>-<connector>`, n counting
 * the job's sources from 1. By position, not by options, so a user who
 * changes a source's options (a max_rate, say) still gets its records back. */
void em_wal_source_dir(const char *job_dir, size_t index, const char *connector, char *out,
                       size_t len);

#endif

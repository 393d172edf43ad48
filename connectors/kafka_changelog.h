/* kafka_changelog.h — keyed state kept in a compacted Kafka topic, one
 * partition per input partition, so that it follows its partition from
 * member to member of a consumer group (docs/scaling.md, "State that
 * follows its partitions").
 *
 * One changelog per job, shared by the job's versions (reloads), found by
 * the job's name. Threads:
 *   - the Kafka source's receiver thread: open/close, assigned, revoked;
 *   - a worker, in the commit of a batch: begin, put (from Lua, through the
 *     FFI), commit;
 *   - a worker, at the start of a batch: take / taken (from Lua), the loads
 *     and drops the rebalances queued, applied to the Lua state in order.
 *
 * A changelog record is keyed "s<key bytes>" (Lua encodes the operator and
 * the key) with the encoded value, or no value for a removed key; after a
 * batch's records of a partition comes a marker "m" whose value is
 * "<next input offset> <batch id> v=<state_version>": the state up to that
 * marker covers the input up to that offset, in that version's form. A
 * restore applies the records up to the last marker and resumes the input
 * partition at the marker's offset; records after it (a commit cut short)
 * are ignored, and the covered values of their keys are written again
 * after them, so compaction never keeps an uncovered value.
 */
#ifndef EM_KAFKA_CHANGELOG_H
#define EM_KAFKA_CHANGELOG_H

#include <stddef.h>
#include <stdint.h>

typedef struct em_changelog em_changelog;

/* Opens (or takes another reference to) the changelog of job, for the input
 * topic (one name) read from brokers. topic: the changelog's name; it is
 * created, compacted, with the input's partition count if it is absent.
 * NULL and err on failure. */
em_changelog *em_changelog_open(const char *job, const char *brokers, const char *input,
                                const char *topic, char *err, size_t errlen);
void em_changelog_close(em_changelog *cl); /* drops a reference; NULL-safe */

/* The job's changelog, or NULL (not a borrowed reference past the job's
 * receivers: the caller runs inside one of the job's batches). */
em_changelog *em_changelog_find(const char *job);

/* Receiver thread, in the rebalance callback, before the partition is
 * fetched: reads its changelog partition to the high watermark, queues the
 * state up to the last marker for the job, and sets *offset to the marker's
 * input offset (untouched without a marker). 0, or -1 (logged; a failure
 * event is queued so the job stops rather than run on missing state). */
int em_changelog_assigned(em_changelog *cl, int32_t partition, int64_t *offset);
/* Worker, before a reloaded job's new version runs its first batch: reads
 * again every partition this member owns whose load is not queued already,
 * and queues its load (the new version's Lua state starts empty; the
 * receiver, kept across the reload, sees no new assignment). 0, or -1 (a
 * failure event is queued, as for an assignment). */
int em_changelog_reload(em_changelog *cl);
/* A reload's dry run of migrate (driver thread): the partitions this
 * member owns (at most max, into out; their count), and what a load of one
 * would hold (*data: the load event's format, freed with
 * em_changelog_free). Nothing is queued nor written. 0, or -1 and err. */
int em_changelog_owned(em_changelog *cl, int32_t *out, int max);
int em_changelog_peek(em_changelog *cl, int32_t partition, char **data, size_t *len, char *err,
                      size_t errlen);
void em_changelog_free(char *data); /* NULL-safe */
/* Worker, in the commit: the state_version the markers name from now on. */
void em_changelog_set_version(em_changelog *cl, const char *version);
/* After the revoke committed: the partition's state is dropped. */
void em_changelog_revoked(em_changelog *cl, int32_t partition);
/* Worker, while the batch's positions are taken: the batch holds records
 * of partition from an assignment that ended, so this commit must not
 * write its state. */
void em_changelog_stale(em_changelog *cl, int32_t partition);

/* How the changelog asks the Kafka source to read a partition again from
 * offset (the marker a skipped partition's state was read again at); arg
 * is the source. One per changelog: the source that opened it last. */
typedef void (*em_changelog_rewind_fn)(void *arg, int32_t partition, int64_t offset);
void em_changelog_set_rewind(em_changelog *cl, em_changelog_rewind_fn fn, void *arg);
void em_changelog_unset_rewind(em_changelog *cl, void *arg);

/* The commit of a batch, worker thread: begin clears what an earlier,
 * failed prepare left; put stages one changed key of a partition (v NULL:
 * removed); commit writes the staged records and a marker per partition the
 * batch read (positions: the batch's own "<src> <topic> <partition>
 * <offset>" lines) or changed, and waits for the cluster to have them all.
 * A partition not owned, or whose records in the batch are of an
 * assignment that ended (em_changelog_stale), is not written: its state is
 * read again (or dropped) before the next batch instead, and the
 * partition is read again from that state's marker. 0, or -1 and err: the batch is not committed. */
void em_changelog_begin(em_changelog *cl);
int em_changelog_put(em_changelog *cl, int32_t partition, const char *k, size_t klen,
                     const char *v, size_t vlen);
int em_changelog_commit(em_changelog *cl, const char *positions, uint64_t batch_id, char *err,
                        size_t errlen);

/* At the start of a batch, from Lua: the next queued event. kind 1: load
 * (data, len: "u32 length, the state_version of the state" (length
 * 0xffffffff: a marker that names none), then records "u32 klen, key,
 * i32 vlen (-1: removed), value"), 2:
 * drop, 3: failure (data: the message). 0 when none. The event stays
 * valid until em_changelog_taken. */
int em_changelog_take(em_changelog *cl, int32_t *partition, const char **data, size_t *len);
void em_changelog_taken(em_changelog *cl);

#endif

/* receiver.c — see receiver.h. */
#include "receiver.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "failpoint.h"
#include "log.h"
#include "ratelimit.h"
#include "wal.h"

#define POLL_MAX 8192   /* records asked of one poll(): bounds the time between token checks */
#define POLL_WAIT_MS 50 /* how long poll() may wait for input; also how fast stop is noticed */

struct em_receiver {
    atomic_int refs;
    const em_connector *conn;
    void *self;
    em_props props;
    char *signature, *describe, *job;
    pthread_t thread;
    int started;
    atomic_int stopping, exhausted;
    uint64_t records, bytes; /* taken in so far; under lock, read by the receiver thread */
    uint32_t last_count, last_bytes; /* of the last sealed block, to size the next */

    pthread_mutex_t lock; /* guards current, sealed, rates, wal */
    em_block *current;
    em_block **sealed;
    size_t nsealed, capsealed;
    double max_rate, bp_rate, applied_rate;
    atomic_int held;
    /* Records of its blocks not yet freed (read, or in a batch) are pushed -
     * freed: pushed grows under lock (a relaxed store, no locked add per
     * record), freed when a worker frees a block. */
    atomic_uint_fast64_t pushed, freed;
    atomic_uint_fast64_t read_ahead; /* records it may hold so (0: no bound); set by the driver */
    /* Told once per take when a batch's worth is ready (the driver's
     * catch-up); set before the thread starts. */
    void (*ready_fn)(em_receiver *r, void *arg);
    void *ready_arg;
    atomic_int ready_told;
    int memory_warned;           /* memory.max changes logged: the first pause and resume
                                    at warn and info, later ones at debug */
    int64_t batch_interval_ms;
    size_t memory_max;      /* memory.max (0: no cap) */
    em_wal_fsync wal_fsync; /* streaming.receiver.writeAheadLog.fsync ... */
    int64_t wal_fsync_interval_ms;
    em_wal *wal;
    int wal_failed; /* logged once per failure streak */
    uint64_t taken, done; /* blocks handed to batches, and reported done; under lock */
    pthread_cond_t done_cond; /* signalled when done grows */

    em_ratelimit rl; /* receiver thread only */

    /* Status for the API: flags written by the receiver thread, the error
     * under lock. */
    atomic_int throttled, over_memory;
    atomic_llong failing_since_ms;
    int64_t last_error_ms;
    char last_error[256];
    int64_t lag;          /* under lock; -1: unknown */
    char *lag_detail;
    /* Partitions the connector said it was assigned, ascending, each with
     * the number of its assignments; under lock. */
    int32_t *assigned;
    uint32_t *assigned_refs;
    size_t nassigned, capassigned;
};

static const em_option core_options[] = {
    {"max_rate", EM_OPT_DOUBLE, NULL, "records/s cap of this source (0: unlimited)"},
    /* checked by lua/ember/job.lua; a connector may read less when it is not "record" */
    {"format", EM_OPT_STRING, "value", "what an element is: value, record, json or bytes"},
    {NULL, 0, NULL, NULL},
};

/* The connector's table plus the core's own options, for validation. */
static em_option *merged_options(const em_connector *c)
{
    size_t n = 0, m = 0;
    while (c->options[n].name)
        n++;
    while (core_options[m].name)
        m++;
    em_option *all = calloc(n + m + 1, sizeof *all);
    if (all) {
        memcpy(all, c->options, n * sizeof *all);
        memcpy(all + n, core_options, m * sizeof *all);
    }
    return all;
}

static char *make_describe(const em_connector *c, const em_props *p)
{
    size_t len = strlen(c->name) + 3;
    for (size_t i = 0; i < p->n; i++) /* a masked value is at most 1023 bytes */
        len += strlen(p->items[i].key) + 1024 + 2;
    char *s = malloc(len), *w = s;
    if (!s)
        return NULL;
    w += sprintf(w, "%s{", c->name);
    for (size_t i = 0; i < p->n; i++) {
        char masked[1024];
        em_mask_secret(p->items[i].value, masked, sizeof masked);
        w += sprintf(w, "%s%s=%s", i ? "," : "", p->items[i].key, masked);
    }
    strcpy(w, "}");
    return s;
}

em_receiver *em_receiver_create(const em_connector *c, em_props *props, const char *job,
                                const em_config *cfg, int64_t batch_interval_ms, char *err,
                                size_t errlen)
{
    char what[128];
    snprintf(what, sizeof what, "%s source", c->name);
    em_option *opts = merged_options(c);
    if (!opts) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int bad = em_props_validate(props, opts, c->prefixes, what, err, errlen);
    free(opts);
    if (bad)
        return NULL;
    em_receiver *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_init(&r->refs, 1);
    r->conn = c;
    r->props = *props;
    em_props_init(props); /* the receiver owns them now */
    r->signature = em_props_signature(&r->props);
    r->describe = make_describe(c, &r->props);
    r->job = strdup(job);
    r->max_rate = em_props_double(&r->props, "max_rate", cfg->max_rate);
    r->batch_interval_ms = batch_interval_ms;
    r->memory_max = (size_t)cfg->memory_max;
    r->wal_fsync = (em_wal_fsync)em_wal_parse_fsync(cfg->wal_fsync);
    r->wal_fsync_interval_ms = cfg->wal_fsync_interval_ms;
    r->applied_rate = -1;
    r->lag = -1;
    pthread_mutex_init(&r->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->done_cond, &ca);
    pthread_condattr_destroy(&ca);
    char *sig = r->signature;
    if (sig) { /* the connector name is part of the identity */
        r->signature = malloc(strlen(c->name) + strlen(sig) + 2);
        if (r->signature)
            sprintf(r->signature, "%s\n%s", c->name, sig);
        free(sig);
    }
    if (!r->signature || !r->describe || !r->job) {
        snprintf(err, errlen, "out of memory");
        em_receiver_unref(r);
        return NULL;
    }
    r->self = c->create(&r->props, r, err, errlen);
    if (!r->self) {
        em_receiver_unref(r);
        return NULL;
    }
    return r;
}


static double effective_rate(double max_rate, double bp_rate)
{
    if (max_rate > 0 && bp_rate > 0)
        return max_rate < bp_rate ? max_rate : bp_rate;
    return max_rate > 0 ? max_rate : bp_rate > 0 ? bp_rate : 0;
}

/* Takes a rate change made by another thread into the bucket. */
static void apply_rate(em_receiver *r)
{
    pthread_mutex_lock(&r->lock);
    double rate = effective_rate(r->max_rate, r->bp_rate);
    pthread_mutex_unlock(&r->lock);
    if (rate != r->applied_rate) {
        em_ratelimit_set(&r->rl, rate);
        r->applied_rate = rate;
    }
}

/* Called with the lock held after a WAL write; logs the first failure of a
 * streak (a full disk would otherwise log on every record). */
static void wal_result(em_receiver *r, int rc)
{
    if (rc == 0 && em_wal_failing(r->wal)) /* only buffered: not over yet */
        rc = -1;
    if (rc != 0 && !r->wal_failed)
        em_log(EM_LOG_ERROR, r->job, "%s: write-ahead log: %s; records are not protected until it "
               "works again", r->describe, strerror(errno));
    else if (rc == 0 && r->wal_failed)
        em_log(EM_LOG_INFO, r->job, "%s: write-ahead log works again", r->describe);
    r->wal_failed = rc != 0;
}

/* Caps one poll so the records it may bring (at this receiver's average
 * size so far) fit in the room left under memory.max: one poll of 8192
 * large records must not overshoot the cap by hundreds of megabytes. */
static uint32_t within_memory(em_receiver *r, uint32_t allow, size_t room)
{
    uint64_t n = r->records, bytes = r->bytes; /* written by this thread only */
    if (n == 0)
        return 1; /* the first record tells how large they are */
    size_t avg = (size_t)(bytes / n) + sizeof(em_record);
    size_t fit = room / avg;
    return fit < 1 ? 1 : fit < allow ? (uint32_t)fit : allow;
}

/* poll() reported a fault: the connector logged why on this thread. */
static void failed(em_receiver *r)
{
    int64_t now = em_clock_now_ms();
    long long zero = 0;
    atomic_compare_exchange_strong(&r->failing_since_ms, &zero, (long long)now);
    pthread_mutex_lock(&r->lock);
    r->last_error_ms = now;
    snprintf(r->last_error, sizeof r->last_error, "%s", em_log_thread_last());
    pthread_mutex_unlock(&r->lock);
}

void em_receiver_recovered(em_receiver *r) { atomic_store(&r->failing_since_ms, 0); }

void em_receiver_set_lag(em_receiver *r, int64_t total, const char *json)
{
    char *copy = json && strlen(json) < 1024 ? strdup(json) : NULL; /* longer: no detail */
    pthread_mutex_lock(&r->lock);
    free(r->lag_detail);
    r->lag_detail = copy;
    r->lag = total;
    pthread_mutex_unlock(&r->lock);
}

/* A sorted array with a count per partition: assignments are few (tens)
 * and change only on a rebalance. */
void em_receiver_assign(em_receiver *r, int32_t partition, int on)
{
    pthread_mutex_lock(&r->lock);
    size_t i = 0;
    while (i < r->nassigned && r->assigned[i] < partition)
        i++;
    int found = i < r->nassigned && r->assigned[i] == partition;
    if (on && found) {
        r->assigned_refs[i]++;
    } else if (on) {
        if (r->nassigned == r->capassigned) {
            size_t cap = r->capassigned ? 2 * r->capassigned : 16;
            int32_t *a = realloc(r->assigned, cap * sizeof *a);
            if (a)
                r->assigned = a;
            uint32_t *c = a ? realloc(r->assigned_refs, cap * sizeof *c) : NULL;
            if (c)
                r->assigned_refs = c;
            if (!a || !c) { /* out of memory: the partition counts from its first record */
                pthread_mutex_unlock(&r->lock);
                return;
            }
            r->capassigned = cap;
        }
        memmove(r->assigned + i + 1, r->assigned + i, (r->nassigned - i) * sizeof *r->assigned);
        memmove(r->assigned_refs + i + 1, r->assigned_refs + i,
                (r->nassigned - i) * sizeof *r->assigned_refs);
        r->assigned[i] = partition;
        r->assigned_refs[i] = 1;
        r->nassigned++;
    } else if (found && --r->assigned_refs[i] == 0) {
        memmove(r->assigned + i, r->assigned + i + 1, (r->nassigned - i - 1) * sizeof *r->assigned);
        memmove(r->assigned_refs + i, r->assigned_refs + i + 1,
                (r->nassigned - i - 1) * sizeof *r->assigned_refs);
        r->nassigned--;
    }
    pthread_mutex_unlock(&r->lock);
}

size_t em_receiver_assigned(em_receiver *r, int32_t **out)
{
    *out = NULL;
    pthread_mutex_lock(&r->lock);
    size_t n = r->nassigned;
    if (n) {
        *out = malloc(n * sizeof **out);
        if (*out)
            memcpy(*out, r->assigned, n * sizeof **out);
        else
            n = 0;
    }
    pthread_mutex_unlock(&r->lock);
    return n;
}

void em_receiver_get_stats(em_receiver *r, em_receiver_stats *out)
{
    pthread_mutex_lock(&r->lock);
    out->records = r->records;
    out->bytes = r->bytes;
    out->rate = effective_rate(r->max_rate, r->bp_rate);
    out->max_rate = r->max_rate;
    out->last_error_ms = r->last_error_ms;
    snprintf(out->last_error, sizeof out->last_error, "%s", r->last_error);
    out->lag = r->lag;
    snprintf(out->lag_detail, sizeof out->lag_detail, "%s", r->lag_detail ? r->lag_detail : "");
    pthread_mutex_unlock(&r->lock);
    out->active = r->started && !atomic_load(&r->stopping) && !atomic_load(&r->exhausted);
    out->held = atomic_load(&r->held);
    out->throttled = atomic_load(&r->throttled);
    out->over_memory = atomic_load(&r->over_memory);
    out->failing_since_ms = atomic_load(&r->failing_since_ms);
}

/* Freed first: a block is freed only after its records were pushed, so
 * pushed read after it is never the smaller one. */
static uint64_t live_records(em_receiver *r)
{
    uint64_t freed = atomic_load(&r->freed);
    uint64_t pushed = atomic_load(&r->pushed);
    return pushed > freed ? pushed - freed : 0;
}

/* Whether the read-ahead bound holds this receiver: it has as many
 * records in blocks not yet freed as the driver allows (about what the job
 * processes in two batch intervals). */
static int ahead_of_workers(em_receiver *r)
{
    uint64_t bound = atomic_load(&r->read_ahead);
    return bound && live_records(r) >= bound;
}

static void *run(void *arg)
{
    em_receiver *r = arg;
    int paused = 0, over_memory = 0, ahead = 0;
    em_ratelimit_init(&r->rl, 0, em_clock_block_interval_ms());
    while (!atomic_load(&r->stopping)) {
        apply_rate(r);
        uint32_t allow = em_ratelimit_available(&r->rl, POLL_MAX);
        size_t used = em_block_total_bytes();
        size_t memory_max = r->memory_max;
        int full = memory_max && used > memory_max;
        if (!full && memory_max && allow > 0)
            allow = within_memory(r, allow, memory_max - used);
        if (full != over_memory) {
            /* A backlog read faster than it is processed meets the cap as a
             * matter of course: warn once, not once per batch. */
            int level = r->memory_warned > 1 ? EM_LOG_DEBUG : full ? EM_LOG_WARN : EM_LOG_INFO;
            em_log(level, r->job, "%s: %s", r->describe,
                   full ? "memory.max reached: reading paused until batches free blocks"
                        : "below memory.max again: reading resumed");
            r->memory_warned++;
        }
        over_memory = full;
        atomic_store(&r->over_memory, full);
        atomic_store(&r->throttled, allow == 0 && !full);
        int is_ahead = ahead_of_workers(r);
        if (is_ahead != ahead)
            em_log(EM_LOG_DEBUG, r->job, "%s: %s", r->describe,
                   is_ahead ? "read ahead of the workers: the backlog stays at the source"
                            : "reading again");
        ahead = is_ahead;
        if (!full && !ahead && allow > 0) { /* one poll does not overshoot the bound by much */
            uint64_t bound = atomic_load(&r->read_ahead), live = live_records(r);
            if (bound && bound - live < allow)
                allow = (uint32_t)(bound - live);
        }
        if (full || ahead || atomic_load(&r->held))
            allow = 0;
        if (allow == 0) {
            /* Out of tokens: stop reading so the sender feels it. */
            if (!paused && r->conn->pause)
                r->conn->pause(r->self);
            paused = 1;
            /* max = 0: read nothing, but let the connector send the acks of
             * finished batches and keep its connection alive. */
            r->conn->poll(r->self, r, 0, 0);
            int wait = em_ratelimit_wait_ms(&r->rl);
            em_clock_sleep_ms(wait > 0 ? wait : ahead ? 2 : 10);
            continue;
        }
        if (paused && r->conn->resume)
            r->conn->resume(r->self);
        paused = 0;
        int n = r->conn->poll(r->self, r, allow, POLL_WAIT_MS);
        if (n > 0 && atomic_load(&r->failing_since_ms))
            em_receiver_recovered(r);
        if (n > 0 && r->ready_fn && !atomic_load(&r->ready_told) && em_receiver_ready(r)) {
            atomic_store(&r->ready_told, 1);
            r->ready_fn(r, r->ready_arg);
        }
        if (n > 0) {
            em_ratelimit_consume(&r->rl, (uint32_t)n);
            if (r->wal) { /* hand what this poll read to the kernel: a kill -9 keeps it */
                pthread_mutex_lock(&r->lock);
                wal_result(r, em_wal_flush(r->wal));
                pthread_mutex_unlock(&r->lock);
            }
        } else if (n == -2) {
            em_log(EM_LOG_INFO, r->job, "%s: source exhausted", r->describe);
            atomic_store(&r->exhausted, 1);
            break;
        } else if (n < 0) {
            failed(r);
            em_clock_sleep_ms(100); /* the connector logged the fault and reconnects next call */
        }
    }
    if (r->conn->flush) {
        r->conn->flush(r->self, r);
        if (r->wal) {
            pthread_mutex_lock(&r->lock);
            wal_result(r, em_wal_flush(r->wal));
            pthread_mutex_unlock(&r->lock);
        }
    }
    return NULL;
}

int em_receiver_start(em_receiver *r)
{
    if (pthread_create(&r->thread, NULL, run, r) != 0)
        return -1;
    char name[16];
    snprintf(name, sizeof name, "rx-%s", r->conn->name);
    pthread_setname_np(r->thread, name);
    r->started = 1;
    return 0;
}

void em_receiver_stop(em_receiver *r)
{
    if (!r->started)
        return;
    atomic_store(&r->stopping, 1);
    pthread_join(r->thread, NULL);
    r->started = 0;
    em_receiver_seal(r, em_clock_now_ms());
}

em_receiver *em_receiver_ref(em_receiver *r)
{
    atomic_fetch_add(&r->refs, 1);
    return r;
}

void em_receiver_unref(em_receiver *r)
{
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    if (r->started)
        em_receiver_stop(r);
    if (r->self)
        r->conn->free(r->self);
    /* Blocks hold a reference, so none is left here but an unsealed one. */
    em_block_unref(r->current);
    for (size_t i = 0; i < r->nsealed; i++)
        em_block_unref(r->sealed[i]);
    free(r->sealed);
    em_wal_close(r->wal);
    free(r->lag_detail);
    free(r->assigned);
    free(r->assigned_refs);
    em_props_clear(&r->props);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->done_cond);
    free(r->signature);
    free(r->describe);
    free(r->job);
    free(r);
}

static void seal_locked(em_receiver *r, int64_t now_ms);

/* Appends one record to the current block (a new one when there is none
 * or it is full); the lock is held. */
static int push_locked(em_receiver *r, const em_push *rec, size_t len, int64_t *now_ms)
{
    if (r->current && r->current->arena_len + len > EM_BLOCK_BYTES_MAX) {
        if (*now_ms < 0)
            *now_ms = em_clock_now_ms();
        seal_locked(r, *now_ms);
    }
    if (!r->current) {
        /* Sized like the last block: it grows without copies in steady state. */
        r->current = em_block_create(r->last_count, r->last_bytes);
        if (!r->current)
            return -1;
        /* The block keeps its receiver alive until the batch holding it is done. */
        atomic_fetch_add(&r->refs, 1);
        r->current->receiver = r;
        if (r->wal)
            wal_result(r, em_wal_begin(r->wal, r->current));
    }
    int rc = em_block_append(r->current, rec);
    if (rc == 0 && r->wal)
        wal_result(r, em_wal_append(r->wal, rec));
    return rc;
}

size_t em_receiver_push_many(em_receiver *r, const em_push *recs, size_t n)
{
    int64_t now_ms = -1; /* read once, and only when a full block is sealed */
    size_t k = 0, bytes = 0;
    if (em_failpoint_fails("receiver_refuses")) /* a spec's out of memory */
        return 0;
    pthread_mutex_lock(&r->lock);
    for (; k < n; k++) {
        size_t len = em_block_record_bytes(&recs[k]);
        if (push_locked(r, &recs[k], len, &now_ms) != 0)
            break;
        bytes += len;
    }
    r->records += k;
    r->bytes += bytes;
    /* a relaxed store: only this thread writes pushed outside discard's lock */
    atomic_store_explicit(&r->pushed,
                          atomic_load_explicit(&r->pushed, memory_order_relaxed) + k,
                          memory_order_relaxed);
    pthread_mutex_unlock(&r->lock);
    return k;
}

int em_receiver_push(em_receiver *r, const em_push *rec)
{
    return em_receiver_push_many(r, rec, 1) == 1 ? 0 : -1;
}

/* Moves the current block to the sealed list; the lock is held. */
static void seal_locked(em_receiver *r, int64_t now_ms)
{
    em_block *b = r->current;
    if (!b || b->count == 0)
        return;
    if (r->nsealed == r->capsealed) {
        size_t cap = r->capsealed ? r->capsealed * 2 : 16;
        em_block **s = realloc(r->sealed, cap * sizeof *s);
        if (!s) /* keep filling the current block; try again next tick */
            return;
        r->sealed = s;
        r->capsealed = cap;
    }
    b->sealed_ms = now_ms;
    if (r->wal) /* the segment is complete (and synced) before the block can join a batch */
        wal_result(r, em_wal_seal(r->wal));
    r->sealed[r->nsealed++] = b;
    r->current = NULL;
    r->last_count = b->count;
    r->last_bytes = b->arena_len;
}

void em_receiver_seal(em_receiver *r, int64_t now_ms)
{
    pthread_mutex_lock(&r->lock);
    seal_locked(r, now_ms);
    pthread_mutex_unlock(&r->lock);
}

size_t em_receiver_take(em_receiver *r, em_block ***out)
{
    pthread_mutex_lock(&r->lock);
    size_t n = r->nsealed;
    *out = n ? r->sealed : NULL;
    if (n) {
        r->sealed = NULL;
        r->nsealed = r->capsealed = 0;
    }
    r->taken += n;
    atomic_store(&r->ready_told, 0);
    pthread_mutex_unlock(&r->lock);
    return n;
}

void em_receiver_on_ready(em_receiver *r, void (*fn)(em_receiver *r, void *arg), void *arg)
{
    if (r->started) /* a receiver a new version took over keeps its hook */
        return;
    r->ready_fn = fn;
    r->ready_arg = arg;
}

void em_receiver_tell_again(em_receiver *r) { atomic_store(&r->ready_told, 0); }

int em_receiver_ready(em_receiver *r)
{
    uint64_t bound = atomic_load(&r->read_ahead);
    if (!bound)
        return 0;
    pthread_mutex_lock(&r->lock);
    uint64_t untaken = r->current ? r->current->count : 0;
    for (size_t i = 0; i < r->nsealed; i++)
        untaken += r->sealed[i]->count;
    pthread_mutex_unlock(&r->lock);
    return untaken > 0 && untaken >= bound / 2;
}

void em_receiver_positions(em_receiver *r, em_block *const *blocks, size_t n, FILE *out)
{
    if (r->conn->positions)
        r->conn->positions(r->self, blocks, n, out);
}

int em_receiver_resume_from(em_receiver *r, const char *positions)
{
    if (!r->conn->resume_from)
        return 0;
    r->conn->resume_from(r->self, positions);
    return 1;
}

/* The connector hears first, so what it releases (a Kafka commit) is done
 * before em_receiver_wait_done() returns. */
void em_receiver_batch_done(em_receiver *r, em_block *const *blocks, size_t n, int ok)
{
    if (r->conn->batch_done)
        r->conn->batch_done(r->self, blocks, n, ok);
    pthread_mutex_lock(&r->lock);
    r->done += n;
    pthread_cond_broadcast(&r->done_cond);
    pthread_mutex_unlock(&r->lock);
}

int em_receiver_wait_done(em_receiver *r, int64_t timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&r->lock);
    uint64_t want = r->taken;
    int rc = 0;
    while (r->done < want && rc == 0)
        rc = pthread_cond_timedwait(&r->done_cond, &r->lock, &until);
    int all = r->done >= want;
    pthread_mutex_unlock(&r->lock);
    return all ? 0 : -1;
}

void em_receiver_set_rate(em_receiver *r, double per_sec)
{
    pthread_mutex_lock(&r->lock);
    r->bp_rate = per_sec;
    pthread_mutex_unlock(&r->lock);
}

double em_receiver_rate(const em_receiver *r) { return effective_rate(r->max_rate, r->bp_rate); }
double em_receiver_max_rate(const em_receiver *r) { return r->max_rate; }
int64_t em_receiver_batch_interval_ms(const em_receiver *r) { return r->batch_interval_ms; }

/* A copy of b without the records of partition p; NULL when none is left
 * or out of memory (then b is kept whole: a duplicate, never a loss). */
static em_block *without_partition(em_block *b, int32_t p, int *changed)
{
    uint32_t keep = 0;
    for (uint32_t k = 0; k < b->nruns; k++) {
        uint32_t end = k + 1 < b->nruns ? b->runs[k + 1].first : b->count;
        if (b->runs[k].partition != p)
            keep += end - b->runs[k].first;
    }
    *changed = keep != b->count;
    if (!*changed)
        return b;
    em_block *nb = keep ? em_block_create(0, 0) : NULL;
    uint32_t run = 0;
    for (uint32_t i = 0; nb && i < b->count; i++) {
        em_push rec;
        em_block_read(b, i, &run, &rec);
        if (rec.partition == p)
            continue;
        if (em_block_append(nb, &rec) != 0) {
            em_block_unref(nb);
            *changed = 0;
            return b;
        }
    }
    if (nb) {
        nb->sealed_ms = b->sealed_ms;
        nb->receiver = b->receiver ? em_receiver_ref(b->receiver) : NULL;
        if (nb->receiver) /* b's records leave the count when b is freed */
            atomic_fetch_add(&nb->receiver->pushed, nb->count); /* under its lock too */
    }
    em_block_unref(b);
    return nb;
}

/* Filters one slot (a sealed block or the current one) in place. */
static size_t discard_in(em_block **slot, int32_t partition)
{
    if (!*slot)
        return 0;
    uint32_t before = (*slot)->count;
    int changed;
    em_block *nb = without_partition(*slot, partition, &changed);
    if (!changed)
        return 0;
    *slot = nb;
    return before - (nb ? nb->count : 0);
}

size_t em_receiver_discard(em_receiver *r, int32_t partition)
{
    pthread_mutex_lock(&r->lock);
    size_t dropped = discard_in(&r->current, partition), kept = 0;
    for (size_t i = 0; i < r->nsealed; i++) {
        dropped += discard_in(&r->sealed[i], partition);
        if (r->sealed[i]) /* compact the blocks that became empty */
            r->sealed[kept++] = r->sealed[i];
    }
    r->nsealed = kept;
    pthread_mutex_unlock(&r->lock);
    return dropped;
}

void em_receiver_hold(em_receiver *r, int on) { atomic_store(&r->held, on); }

size_t em_receiver_memory_max(const em_receiver *r) { return r->memory_max; }

void em_receiver_set_read_ahead(em_receiver *r, uint64_t records)
{
    atomic_store(&r->read_ahead, records);
}

uint64_t em_receiver_read_ahead(const em_receiver *r) { return atomic_load(&r->read_ahead); }

void em_receiver_block_freed(em_receiver *r, uint32_t records)
{
    if (r)
        atomic_fetch_add(&r->freed, records);
}

int em_receiver_acknowledges(const em_receiver *r)
{
    return r->conn->acknowledges && r->conn->acknowledges(r->self);
}

int em_receiver_enable_wal(em_receiver *r, const char *dir, char *err, size_t errlen)
{
    if (em_receiver_acknowledges(r))
        return 0;
    r->wal = em_wal_open(dir, r->wal_fsync, r->wal_fsync_interval_ms, err, errlen);
    return r->wal ? 0 : -1;
}
const char *em_receiver_connector(const em_receiver *r) { return r->conn->name; }
const char *em_receiver_signature(const em_receiver *r) { return r->signature; }
const char *em_receiver_describe(const em_receiver *r) { return r->describe; }
const char *em_receiver_job(const em_receiver *r) { return r->job; }

/* job.c — see job.h. */
#include "job.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "wal.h"

static const char *kind_of(mode_t m)
{
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISDIR(m)) return "a folder";
    if (S_ISSOCK(m)) return "a socket";
    return "not a regular file";
}

/* Opens without blocking (a FIFO with no writer would hang the reload)
 * and follows symlinks, then reads only a regular file, and at most max
 * bytes of it: a symlink to /dev/zero or a huge file is an error, not a
 * driver that grows without bound. */
char *em_read_file(const char *path, size_t max, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not read: %s, not a regular file", path, kind_of(st.st_mode));
        close(fd);
        return NULL;
    }
    if ((uint64_t)st.st_size > max) {
        snprintf(err, errlen, "%s: not read: %lld bytes, more than the %zu a job file may have",
                 path, (long long)st.st_size, max);
        close(fd);
        return NULL;
    }
    char *buf = malloc(max + 2);
    size_t len = 0;
    ssize_t n = 0;
    while (buf && len <= max && (n = read(fd, buf + len, max + 1 - len)) > 0)
        len += (size_t)n;
    int e = errno;
    close(fd);
    if (!buf || n < 0) {
        snprintf(err, errlen, "%s: %s", path, buf ? strerror(e) : "out of memory");
        free(buf);
        return NULL;
    }
    if (len > max) { /* it grew while being read */
        snprintf(err, errlen, "%s: not read: more than the %zu bytes a job file may have", path, max);
        free(buf);
        return NULL;
    }
    buf[len] = '\0';
    return buf;
}

em_version *em_version_load(const char *path, const em_config *cfg, int *disabled, char *err,
                            size_t errlen)
{
    *disabled = 0;
    const char *checkpoint_dir = cfg->checkpoint_dir;
    em_luahost *host = em_luahost_load(path, cfg, err, errlen);
    if (!host)
        return NULL;
    em_job_desc *d = em_luahost_desc(host);
    if (d->disabled[0]) {
        *disabled = 1;
        snprintf(err, errlen, "%s", d->disabled);
        em_luahost_free(host);
        return NULL;
    }
    em_version *v = calloc(1, sizeof *v);
    if (v)
        v->receivers = calloc(d->nsources ? d->nsources : 1, sizeof *v->receivers);
    if (!v || !v->receivers) {
        snprintf(err, errlen, "%s: out of memory", path);
        free(v);
        em_luahost_free(host);
        return NULL;
    }
    atomic_init(&v->refs, 1);
    v->host = host;
    v->desc = d;
    v->batch_interval_ms = d->batch_interval_ms ? d->batch_interval_ms : cfg->batch_interval_ms;
    int64_t block = em_clock_block_interval_ms();
    if (v->batch_interval_ms < block) {
        /* Batches are cut on block ticks: a shorter interval cannot be kept. */
        snprintf(err, errlen, "%s: job '%s': batch_interval %lld ms is shorter than "
                 "streaming.blockInterval (%lld ms)", path, d->name,
                 (long long)v->batch_interval_ms, (long long)block);
        em_luahost_free(host);
        free(v->receivers);
        free(v);
        return NULL;
    }
    if (v->batch_interval_ms % block)
        em_log(EM_LOG_WARN, d->name, "batch_interval %lld ms is not a multiple of "
               "streaming.blockInterval (%lld ms): batches are cut at the first block tick after "
               "their time", (long long)v->batch_interval_ms, (long long)block);
    for (size_t i = 0; i < d->nsources; i++) {
        em_source_desc *s = &d->sources[i];
        char why[1024];
        v->receivers[i] = em_receiver_create(s->conn, &s->props, d->name, cfg,
                                             v->batch_interval_ms, why, sizeof why);
        if (!v->receivers[i]) {
            snprintf(err, errlen, "%s: %s", s->where, why);
            em_version_unref(v);
            return NULL;
        }
        v->nreceivers++;
        if (cfg->wal_enabled) {
            char dir[2048], job_dir[1200];
            snprintf(job_dir, sizeof job_dir, "%s/%s", checkpoint_dir, d->name);
            em_wal_source_dir(job_dir, i + 1, s->conn->name, dir, sizeof dir);
            if (em_receiver_enable_wal(v->receivers[i], dir, why, sizeof why) != 0) {
                snprintf(err, errlen, "%s: %s", s->where, why);
                em_version_unref(v);
                return NULL;
            }
        }
    }
    return v;
}

void em_version_start(em_version *v)
{
    for (size_t i = 0; i < v->nreceivers; i++)
        if (em_receiver_start(v->receivers[i]) != 0)
            em_log(EM_LOG_ERROR, v->desc->name, "%s: cannot start its thread",
                   em_receiver_describe(v->receivers[i]));
}

em_version *em_version_ref(em_version *v)
{
    atomic_fetch_add(&v->refs, 1);
    return v;
}

void em_version_unref(em_version *v)
{
    if (!v || atomic_fetch_sub(&v->refs, 1) != 1)
        return;
    for (size_t i = 0; i < v->nreceivers; i++)
        em_receiver_unref(v->receivers[i]);
    free(v->receivers);
    em_luahost_free(v->host);
    free(v);
}

/* A version's reference tables as declared, none loaded yet: what the API
 * shows until the worker reads their figures after a first attempt. */
static void declare_tables(em_job *j, const em_version *v)
{
    if (!j->history)
        return;
    size_t n = v->desc->ntables < EM_TABLES_MAX ? v->desc->ntables : EM_TABLES_MAX;
    em_table_status *t = n ? calloc(n, sizeof *t) : NULL;
    if (n && !t)
        return;
    for (size_t i = 0; i < n; i++) {
        const em_table_desc *d = &v->desc->tables[i];
        snprintf(t[i].name, sizeof t[i].name, "%s", d->name);
        snprintf(t[i].kind, sizeof t[i].kind, "%s", d->kind);
        snprintf(t[i].source, sizeof t[i].source, "%s", d->source);
        snprintf(t[i].where, sizeof t[i].where, "%s", d->where);
    }
    em_history_set_tables(j->history, t, n);
    free(t);
}

em_job *em_job_create(const char *path, char *script, em_version *v, const em_runtime *rt)
{
    em_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    snprintf(j->name, sizeof j->name, "%s", v->desc->name);
    snprintf(j->path, sizeof j->path, "%s", path);
    j->script = script;
    j->version = v;
    j->rt = rt;
    j->history = em_history_create((size_t)rt->cfg->retained_batches);
    declare_tables(j, v);
    atomic_init(&j->failed, 0);
    atomic_init(&j->blocked, 0);
    snprintf(j->dir, sizeof j->dir, "%.960s/%.127s", rt->cfg->checkpoint_dir, j->name);
    return j;
}

/* Appends a source's recovered blocks to the job's recovery list. */
static void add_recovered(em_job *j, em_block **blocks, long n, int32_t source)
{
    em_block **b = realloc(j->recovered, (j->nrecovered + (size_t)n) * sizeof *b);
    int32_t *s = b ? realloc(j->recovered_src, (j->nrecovered + (size_t)n) * sizeof *s) : NULL;
    if (b)
        j->recovered = b;
    if (!b || !s) {
        em_log(EM_LOG_ERROR, j->name, "out of memory recovering the write-ahead log; its "
               "segments stay on disk for the next start");
        for (long i = 0; i < n; i++)
            em_block_unref(blocks[i]);
        return;
    }
    j->recovered_src = s;
    for (long i = 0; i < n; i++) {
        j->recovered[j->nrecovered] = blocks[i];
        j->recovered_src[j->nrecovered++] = source;
    }
}

/* Keeps the recovered blocks whose segments the checkpoint does not cover;
 * a covered segment's records are in the committed state (a crash came
 * between the commit and the deletion): it is deleted, not replayed. */
static long drop_covered(em_job *j, em_block **blocks, long n, uint64_t *skipped)
{
    long kept = 0;
    for (long i = 0; i < n; i++) {
        if (blocks[i]->wal_path && em_checkpoint_covers_wal(&j->cp, blocks[i]->wal_path)) {
            *skipped += blocks[i]->count;
            unlink(blocks[i]->wal_path);
            em_block_unref(blocks[i]);
        } else {
            blocks[kept++] = blocks[i];
        }
    }
    return kept;
}

void em_job_recover(em_job *j)
{
    if (em_checkpoint_read(j->dir, &j->cp) == 0)
        em_log(EM_LOG_INFO, j->name, "checkpoint: last completed batch %lld (%llu batches)",
               (long long)j->cp.last_batch_ms, (unsigned long long)j->cp.batches);
    snprintf(j->cp.job, sizeof j->cp.job, "%s", j->name);
    j->next_batch_id = j->cp.batch_id + 1;
    em_version *v = j->version;
    for (size_t i = 0; i < v->nreceivers; i++) {
        char *pos = em_checkpoint_source_positions(&j->cp, (int)i + 1);
        if (pos)
            em_receiver_resume_from(v->receivers[i], pos);
        free(pos);
    }
    uint64_t skipped = 0;
    char quarantine[1200];
    snprintf(quarantine, sizeof quarantine, "%s/wal/quarantine", j->dir);
    uint64_t records = 0, bad = 0;
    for (size_t i = 0; i < v->nreceivers; i++) {
        char dir[1400];
        em_wal_source_dir(j->dir, i + 1, v->desc->sources[i].conn->name, dir, sizeof dir);
        em_block **blocks;
        long n = em_wal_recover(dir, quarantine, j->name, &blocks, &bad);
        if (n < 0)
            em_log(EM_LOG_ERROR, j->name, "write-ahead log %s: %s", dir, strerror(errno));
        else
            n = drop_covered(j, blocks, n, &skipped);
        for (long k = 0; k < n; k++)
            records += blocks[k]->count;
        if (n > 0)
            add_recovered(j, blocks, n, (int32_t)i + 1);
        free(blocks);
    }
    if (skipped)
        em_log(EM_LOG_INFO, j->name, "write-ahead log: %llu records of the last committed batch "
               "were already in its state; not replayed", (unsigned long long)skipped);
    if (j->nrecovered || bad)
        em_log(EM_LOG_INFO, j->name, "recovered %llu records in %zu blocks from the write-ahead "
               "log (%llu damaged bytes set aside); they run before new input",
               (unsigned long long)records, j->nrecovered, (unsigned long long)bad);
}

void em_job_seal(em_job *j, int64_t now_ms)
{
    em_version *v = j->version;
    for (size_t i = 0; v && i < v->nreceivers; i++)
        em_receiver_seal(v->receivers[i], now_ms);
}

static int claimed(em_version *next, em_receiver *r)
{
    for (size_t i = 0; i < next->nreceivers; i++)
        if (next->receivers[i] == r)
            return 1;
    return 0;
}

void em_job_stop_unmatched(em_job *j)
{
    em_version *old = j->version, *next = j->next;
    /* Claim: each source of the new version takes an old receiver with
     * the same connector and options, if one is left. */
    for (size_t i = 0; i < next->nreceivers; i++) {
        const char *sig = em_receiver_signature(next->receivers[i]);
        for (size_t k = 0; k < old->nreceivers; k++) {
            em_receiver *r = old->receivers[k];
            if (strcmp(em_receiver_signature(r), sig) == 0 && !claimed(next, r)) {
                em_receiver_unref(next->receivers[i]); /* never started */
                next->receivers[i] = em_receiver_ref(r);
                break;
            }
        }
    }
    for (size_t k = 0; k < old->nreceivers; k++)
        if (!claimed(next, old->receivers[k]))
            em_receiver_stop(old->receivers[k]);
}

void em_job_swap(em_job *j)
{
    em_version *old = j->version, *next = j->next;
    size_t kept = 0;
    for (size_t i = 0; i < next->nreceivers; i++) {
        int reused = 0;
        for (size_t k = 0; k < old->nreceivers; k++)
            reused |= old->receivers[k] == next->receivers[i];
        if (reused)
            kept++;
        else if (em_receiver_start(next->receivers[i]) != 0)
            em_log(EM_LOG_ERROR, j->name, "%s: cannot start its thread",
                   em_receiver_describe(next->receivers[i]));
    }
    em_log(EM_LOG_INFO, j->name, "now running the new version (%zu of %zu sources kept running)",
           kept, next->nreceivers);
    j->version = next;
    j->next = NULL;
    em_version_unref(old);
    declare_tables(j, next); /* its own Lua state: loaded again from their sources */
}

void em_job_stop_receivers(em_job *j)
{
    em_version *v = j->version;
    for (size_t i = 0; v && i < v->nreceivers; i++)
        em_receiver_stop(v->receivers[i]);
}

void em_job_free(em_job *j)
{
    if (!j)
        return;
    em_version_unref(j->version);
    em_version_unref(j->next);
    em_history_free(j->history);
    for (size_t i = j->recovered_pos; i < j->nrecovered; i++)
        em_block_unref(j->recovered[i]);
    free(j->recovered);
    free(j->recovered_src);
    free(j->script);
    em_checkpoint_clear(&j->cp);
    free(j);
}

/* Batch times only go up: outputs name their files by them. */
int64_t em_job_cut_time(em_job *j, int64_t t)
{
    if (t <= j->last_cut_ms)
        t = j->last_cut_ms + 1;
    j->last_cut_ms = t;
    return t;
}

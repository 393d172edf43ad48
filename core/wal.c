/* wal.c — see wal.h. */
#include "wal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "checkpoint.h"
#include "clock.h"
#include "log.h"

#define MAGIC "EMW1"
#define HEADER 12  /* magic, length, crc */
#define FIXED 32   /* ts, offset, partition, three lengths */
#define NO_KEY 0xFFFFFFFFu

int em_wal_parse_fsync(const char *s)
{
    if (strcmp(s, "always") == 0)
        return EM_WAL_FSYNC_ALWAYS;
    if (strcmp(s, "batch") == 0)
        return EM_WAL_FSYNC_BATCH;
    if (strcmp(s, "interval") == 0)
        return EM_WAL_FSYNC_INTERVAL;
    return -1;
}

struct em_wal {
    char dir[1024];
    em_wal_fsync policy;
    int64_t interval_ms;
    uint64_t next_seq;
    FILE *f;
    int64_t last_sync_ms;
    char *buf; /* one record's frame */
    size_t cap;
    /* A write failed and no data has reached the file since (a full disk):
     * buffered appends alone do not end it, a flush of new data does. */
    int failing;
    int64_t failed_ms; /* the last failure (monotonic) */
    size_t unflushed;  /* bytes appended since the last flush */
};

/* An outage is over once data has been written for this long without a
 * failure: a disk that is nearly full lets some writes through (a batch
 * deleted a segment) and refuses the next, and that is still one outage. */
#define RECOVERED_MS 5000

/* Records the outcome of one call for em_wal_failing. */
static int outcome(em_wal *w, int rc)
{
    if (rc != 0) {
        w->failing = 1;
        w->failed_ms = em_clock_mono_ms();
    }
    return rc;
}

/* A flush or a seal that succeeded: new data written, long enough after
 * the last failure, ends the outage. */
static int flushed(em_wal *w, int rc)
{
    if (rc == 0 && w->unflushed > 0 && em_clock_mono_ms() - w->failed_ms >= RECOVERED_MS)
        w->failing = 0;
    if (rc == 0)
        w->unflushed = 0;
    return outcome(w, rc);
}

int em_wal_failing(const em_wal *w) { return w->failing; }

void em_wal_source_dir(const char *job_dir, size_t index, const char *connector, char *out,
                       size_t len)
{
    snprintf(out, len, "%s/wal/%zu-%s", job_dir, index, connector);
}

static int is_segment(const char *name, uint64_t *seq)
{
    char *end;
    unsigned long long v = strtoull(name, &end, 10);
    if (end == name || strcmp(end, ".wal") != 0)
        return 0;
    *seq = v;
    return 1;
}

em_wal *em_wal_open(const char *dir, em_wal_fsync policy, int64_t interval_ms, char *err,
                    size_t errlen)
{
    em_wal *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    w->policy = policy;
    w->interval_ms = interval_ms > 0 ? interval_ms : 1000;
    snprintf(w->dir, sizeof w->dir, "%s", dir);
    DIR *dp = opendir(dir);
    struct dirent *e;
    uint64_t seq;
    while (dp && (e = readdir(dp)))
        if (is_segment(e->d_name, &seq) && seq >= w->next_seq)
            w->next_seq = seq + 1;
    if (dp)
        closedir(dp);
    return w;
}

int em_wal_begin(em_wal *w, em_block *b)
{
    char path[1100];
    if (w->f)
        em_wal_seal(w);
    /* Never reuse a name: another writer of the same source (the receiver a
     * reload replaces) may have taken it, and its segment is still needed. */
    int fd = -1;
    for (int tries = 0; fd < 0 && tries < 1000; tries++) {
        snprintf(path, sizeof path, "%s/%020llu.wal", w->dir, (unsigned long long)w->next_seq++);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0 && errno == ENOENT && em_mkdirs(w->dir) != 0) /* made on first use */
            return outcome(w, -1);
        if (fd < 0 && errno != EEXIST && errno != ENOENT)
            return outcome(w, -1);
    }
    if (fd < 0 || !(w->f = fdopen(fd, "wb"))) {
        if (fd >= 0)
            close(fd);
        return outcome(w, -1);
    }
    b->wal_path = strdup(path);
    return outcome(w, b->wal_path ? 0 : -1);
}

static void put32(char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(char *p, int64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static int64_t get64(const unsigned char *p) { int64_t v; memcpy(&v, p, 8); return v; }

int em_wal_append(em_wal *w, const em_push *r)
{
    if (!w->f)
        return outcome(w, -1);
    size_t klen = r->key ? r->key_len : 0, mlen = r->meta ? r->meta_len : 0;
    size_t payload = FIXED + r->value_len + klen + mlen;
    if (HEADER + payload > w->cap) {
        size_t cap = (HEADER + payload) * 2;
        char *buf = realloc(w->buf, cap);
        if (!buf)
            return outcome(w, -1);
        w->buf = buf;
        w->cap = cap;
    }
    char *p = w->buf + HEADER;
    put64(p, r->ts_ms);
    put64(p + 8, r->offset);
    put32(p + 16, (uint32_t)r->partition);
    put32(p + 20, (uint32_t)r->value_len);
    put32(p + 24, r->key ? (uint32_t)r->key_len : NO_KEY);
    put32(p + 28, (uint32_t)mlen);
    char *q = p + FIXED;
    memcpy(q, r->value, r->value_len);
    q += r->value_len;
    if (klen)
        memcpy(q, r->key, klen);
    q += klen;
    if (mlen)
        memcpy(q, r->meta, mlen);
    memcpy(w->buf, MAGIC, 4);
    put32(w->buf + 4, (uint32_t)payload);
    put32(w->buf + 8, (uint32_t)crc32(0, (const Bytef *)p, (uInt)payload));
    if (fwrite(w->buf, 1, HEADER + payload, w->f) != HEADER + payload)
        return outcome(w, -1);
    w->unflushed += HEADER + payload;
    return 0;
}

int em_wal_flush(em_wal *w)
{
    if (!w->f)
        return 0;
    if (fflush(w->f) != 0)
        return flushed(w, -1);
    int64_t now = em_clock_mono_ms();
    if (w->policy == EM_WAL_FSYNC_ALWAYS ||
        (w->policy == EM_WAL_FSYNC_INTERVAL && now - w->last_sync_ms >= w->interval_ms)) {
        w->last_sync_ms = now;
        return flushed(w, fdatasync(fileno(w->f)));
    }
    return flushed(w, 0);
}

int em_wal_seal(em_wal *w)
{
    if (!w->f)
        return 0;
    int rc = fflush(w->f);
    if (w->policy != EM_WAL_FSYNC_INTERVAL && fdatasync(fileno(w->f)) != 0)
        rc = -1;
    if (fclose(w->f) != 0)
        rc = -1;
    w->f = NULL;
    return flushed(w, rc);
}

void em_wal_close(em_wal *w)
{
    if (!w)
        return;
    em_wal_seal(w);
    free(w->buf);
    free(w);
}

/* Sets bytes [from, to) of a damaged segment aside in the quarantine file. */
static void quarantine(const char *path, const char *name, const unsigned char *data, size_t from,
                       size_t to, const char *qdir, const char *job, uint64_t *bad_bytes)
{
    char qpath[2200];
    em_mkdirs(qdir);
    snprintf(qpath, sizeof qpath, "%s/%s.bad", qdir, name);
    FILE *q = fopen(qpath, "ab");
    if (q) {
        fwrite(data + from, 1, to - from, q);
        fclose(q);
    }
    *bad_bytes += to - from;
    em_log(EM_LOG_WARN, job, "write-ahead log %s: %zu damaged bytes at offset %zu moved to %s",
           path, to - from, from, qpath);
}

/* Length of the intact frame at pos (magic, length and checksum hold, the
 * lengths inside add up), or 0. */
static size_t frame_at(const unsigned char *data, size_t len, size_t pos)
{
    if (len - pos < HEADER || memcmp(data + pos, MAGIC, 4) != 0)
        return 0;
    uint32_t plen = get32(data + pos + 4), crc = get32(data + pos + 8);
    const unsigned char *p = data + pos + HEADER;
    if (plen < FIXED || plen > len - pos - HEADER || crc32(0, p, plen) != crc)
        return 0;
    uint32_t vlen = get32(p + 20), klen = get32(p + 24), mlen = get32(p + 28);
    size_t k = klen == NO_KEY ? 0 : klen;
    if ((size_t)FIXED + vlen + k + mlen != plen)
        return 0;
    return HEADER + plen;
}

static unsigned char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    unsigned char *data = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (data && got < (size_t)st.st_size) {
        ssize_t n = read(fd, data + got, (size_t)st.st_size - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    *len = got;
    return data;
}

/* Parses one segment into a block; damaged bytes are quarantined. */
static em_block *read_segment(const char *dir, const char *name, const char *qdir,
                              const char *job, uint64_t *bad_bytes)
{
    char path[2200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    size_t len;
    unsigned char *data = slurp(path, &len);
    if (!data)
        return NULL;
    em_block *b = em_block_create(0, 0);
    size_t pos = 0;
    while (b && pos < len) {
        size_t flen = frame_at(data, len, pos);
        if (!flen) { /* damaged: set it aside up to the next intact frame */
            size_t next = pos + 1;
            while (next < len && !frame_at(data, len, next))
                next++;
            quarantine(path, name, data, pos, next, qdir, job, bad_bytes);
            pos = next;
            continue;
        }
        const unsigned char *p = data + pos + HEADER;
        uint32_t vlen = get32(p + 20), klen = get32(p + 24), mlen = get32(p + 28);
        size_t k = klen == NO_KEY ? 0 : klen;
        const char *v = (const char *)p + FIXED;
        em_push rec = {.value = v, .value_len = vlen, .key = klen == NO_KEY ? NULL : v + vlen,
                       .key_len = k, .ts_ms = get64(p), .partition = (int32_t)get32(p + 16),
                       .offset = get64(p + 8), .meta = mlen ? v + vlen + k : NULL,
                       .meta_len = mlen};
        em_block_append(b, &rec);
        pos += flen;
    }
    free(data);
    if (b)
        b->wal_path = strdup(path);
    return b;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

long em_wal_recover(const char *dir, const char *qdir, const char *job, em_block ***out,
                    uint64_t *bad_bytes)
{
    *out = NULL;
    DIR *dp = opendir(dir);
    if (!dp)
        return errno == ENOENT ? 0 : -1;
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    uint64_t seq;
    while ((e = readdir(dp)))
        if (is_segment(e->d_name, &seq)) {
            char **nn = realloc(names, (n + 1) * sizeof *nn);
            if (!nn)
                break;
            names = nn;
            names[n++] = strdup(e->d_name);
        }
    closedir(dp);
    if (n > 1) /* zero-padded: name order is age order (qsort takes no NULL, even for 0) */
        qsort(names, n, sizeof *names, cmp_name);
    em_block **blocks = calloc(n ? n : 1, sizeof *blocks);
    long got = 0;
    for (size_t i = 0; i < n; i++) {
        em_block *b = blocks ? read_segment(dir, names[i], qdir, job, bad_bytes) : NULL;
        if (b && b->count > 0) {
            blocks[got++] = b;
        } else if (b) { /* empty (or wholly damaged): nothing to replay */
            unlink(b->wal_path);
            em_block_unref(b);
        }
        free(names[i]);
    }
    free(names);
    *out = blocks;
    return got;
}

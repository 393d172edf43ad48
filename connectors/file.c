/* file.c — lines appended to the files of a folder, like `tail -F` on a glob.
 *
 * Files are tracked by (dev, inode) with an open fd, not by name, so a
 * rotation (rename away, new file under the old name) loses nothing: the old
 * inode is read to its end through the fd we hold, the new one from its
 * beginning. Holding the fd also keeps the inode number from being reused
 * while we track it. As with the socket source, bytes are read only when a
 * file's buffer has no complete line left, so a paused receiver reads nothing.
 */
#ifndef _GNU_SOURCE /* the core defines it per file; some builds pass -D_GNU_SOURCE */
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "../core/clock.h"
#include "../core/connector.h"
#include "../core/log.h"
#include "../core/receiver.h"
#include "linebuf.h"

/* A renamed-away file is closed only once it has been at its end this long:
 * a writer that has not reopened its log yet may still append to it. */
#define ROTATE_WAIT_MS 1000

typedef struct tailed {
    dev_t dev;
    ino_t ino;
    int fd;             /* -1: could not be opened; tried again each scan */
    char *name;         /* its latest matching name in the folder, handed as meta */
    size_t name_len;
    int64_t read_off;   /* next byte to read; the buffer ends there */
    em_linebuf lines;
    int seen;               /* found by the current scan */
    int64_t gone_at;        /* 0 while under a matching name, else when it left */
    int at_eof;             /* the last read found nothing new */
    int closing;            /* gone and drained: a last line without "\n" counts */
} tailed;

typedef struct file_src {
    char *path, *pattern;
    int start_end;       /* files present at the first scan start at their end */
    int scanned_once;
    int64_t interval_ms;
    int64_t next_scan;   /* monotonic ms */
    int dir_err;         /* errno of the failing opendir(), to log a change once */
    tailed **files;
    size_t n, cap;
    size_t next;         /* first file to read, rotating so none starves */
    char name[64 + 4096]; /* "file <path>", for messages */
} file_src;

static const em_option file_options[] = {
    {"path", EM_OPT_STRING, NULL, "folder whose files are tailed (required)"},
    {"pattern", EM_OPT_STRING, "*", "glob the file names must match"},
    {"start", EM_OPT_STRING, "beginning",
     "where to start in files present at start-up: beginning or end"},
    {"poll_interval", EM_OPT_DURATION, "100ms", "how often the folder is scanned and read"},
    {NULL, 0, NULL, NULL},
};


static void untrack(tailed *t)
{
    if (t->fd >= 0)
        close(t->fd);
    em_linebuf_free(&t->lines);
    free(t->name);
    free(t);
}

static tailed *find(file_src *s, dev_t dev, ino_t ino)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->files[i]->dev == dev && s->files[i]->ino == ino)
            return s->files[i];
    return NULL;
}

/* Opens a newly seen file and starts tracking it at offset off (or at its
 * end when at_end). An open that fails is tracked with fd -1 so that it is
 * logged once and retried on the next scans. */
static void track(file_src *s, em_receiver *r, int dfd, const char *name,
                  const struct stat *st, int at_end)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        tailed **f = realloc(s->files, cap * sizeof *f);
        if (!f)
            return; /* retried on the next scan */
        s->files = f;
        s->cap = cap;
    }
    tailed *t = calloc(1, sizeof *t);
    if (!t || !(t->name = strdup(name))) {
        free(t);
        return;
    }
    t->name_len = strlen(name);
    t->dev = st->st_dev;
    t->ino = st->st_ino;
    t->fd = -1;
    t->seen = 1;
    s->files[s->n++] = t;
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    struct stat fst;
    if (fd < 0 || fstat(fd, &fst) != 0 || fst.st_dev != t->dev || fst.st_ino != t->ino) {
        /* replaced between readdir and open: the next scan sees the new one */
        if (fd < 0)
            em_log(EM_LOG_WARN, em_receiver_job(r), "file %s/%s: cannot open: %s", s->path, name,
                   strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    t->fd = fd;
    t->read_off = at_end ? (int64_t)fst.st_size : 0;
    em_log(EM_LOG_INFO, em_receiver_job(r), "file %s/%s: tailing from offset %lld", s->path, name,
           (long long)t->read_off);
}

/* Reads the folder: starts tracking new matching inodes, follows renames
 * between matching names, and marks the tracked files no longer under a
 * matching name as gone. A folder that cannot be read is logged once per
 * change and is not an error: it may appear later. */
static void scan(file_src *s, em_receiver *r)
{
    int first = !s->scanned_once;
    s->scanned_once = 1;
    DIR *d = opendir(s->path);
    if (!d) {
        int e = errno;
        if (e != s->dir_err)
            em_log(EM_LOG_WARN, em_receiver_job(r), "%s: cannot open folder: %s; checking again",
                   s->name, strerror(e));
        s->dir_err = e;
        if (e != ENOENT)
            return;
        /* the folder is gone, and its files with it */
        for (size_t i = 0; i < s->n; i++)
            if (!s->files[i]->gone_at)
                s->files[i]->gone_at = em_clock_mono_ms();
        return;
    }
    if (s->dir_err)
        em_log(EM_LOG_INFO, em_receiver_job(r), "%s: folder is readable again", s->name);
    s->dir_err = 0;
    for (size_t i = 0; i < s->n; i++)
        s->files[i]->seen = 0;
    int dfd = dirfd(d);
    struct dirent *de;
    while ((de = readdir(d))) {
        /* FNM_PERIOD: "*" skips hidden files (editor swap files), as in a shell */
        if (fnmatch(s->pattern, de->d_name, FNM_PERIOD) != 0)
            continue;
        struct stat st;
        if (fstatat(dfd, de->d_name, &st, 0) != 0 || !S_ISREG(st.st_mode))
            continue;
        tailed *t = find(s, st.st_dev, st.st_ino);
        if (!t) {
            track(s, r, dfd, de->d_name, &st, first && s->start_end);
            continue;
        }
        t->seen = 1;
        if (strcmp(t->name, de->d_name) != 0) {
            char *n = strdup(de->d_name);
            if (n) {
                free(t->name);
                t->name = n;
                t->name_len = strlen(n);
            }
        }
        if (t->fd < 0) { /* failed to open before: try again, quietly */
            int fd = openat(dfd, de->d_name, O_RDONLY | O_CLOEXEC | O_NOCTTY);
            struct stat fst;
            if (fd >= 0 && fstat(fd, &fst) == 0 && fst.st_dev == t->dev && fst.st_ino == t->ino)
                t->fd = fd;
            else if (fd >= 0)
                close(fd);
        }
    }
    closedir(d);
    int64_t now = em_clock_mono_ms();
    for (size_t i = 0; i < s->n; i++) {
        tailed *t = s->files[i];
        if (t->seen)
            t->gone_at = 0; /* renamed back, or still there */
        else if (!t->gone_at) {
            t->gone_at = now;
            em_log(EM_LOG_INFO, em_receiver_job(r),
                   "file %s/%s: renamed away or removed; reading it to its end",
                   s->path, t->name);
        }
    }
}

/* Pushes complete lines of one file until max is reached or none is left;
 * once the file is closing, a last line without "\n" counts as complete.
 * Returns 0, or -1 when the receiver refused a record (logged). */
static int drain(file_src *s, tailed *t, em_receiver *r, uint32_t max, uint32_t *pushed)
{
    em_push recs[EM_PUSH_RUN];
    const char *line;
    size_t n;
    int cut;
    int64_t now = em_clock_now_ms(); /* one arrival time per read, not a clock read per line */
    while (*pushed < max) {
        /* Gather up to EM_PUSH_RUN lines (they stay in the buffer until the
         * next read), push them under one lock; a refused push puts the
         * buffer back as it was before the lines not taken. */
        em_linebuf before = t->lines;
        size_t k = 0;
        while (k < EM_PUSH_RUN && *pushed + k < max &&
               em_linebuf_next(&t->lines, t->closing, &line, &n, &cut)) {
            int64_t off = t->read_off - (int64_t)em_linebuf_pending(&t->lines);
            recs[k++] = (em_push){.value = line, .value_len = n, .ts_ms = now, .partition = -1,
                                  .offset = off, .meta = t->name, .meta_len = t->name_len};
            em_linebuf_consume(&t->lines);
            if (cut)
                em_log(EM_LOG_WARN, em_receiver_job(r),
                       "file %s/%s: line at offset %lld is longer than 1 MiB; "
                       "delivered its first 1 MiB, dropped the rest",
                       s->path, t->name, (long long)off);
        }
        if (k == 0)
            break;
        size_t took = em_receiver_push_many(r, recs, k);
        *pushed += (uint32_t)took;
        if (took < k) {
            t->lines = before;
            for (size_t i = 0; i < took && em_linebuf_next(&t->lines, t->closing, &line, &n, &cut);
                 i++)
                em_linebuf_consume(&t->lines);
            em_log(EM_LOG_ERROR, em_receiver_job(r),
                   "file %s/%s: receiver refused the line at offset %lld",
                   s->path, t->name, (long long)recs[took].offset);
            return -1;
        }
    }
    return 0;
}

/* Reads what was appended to one file, pushing lines until max. Reads only
 * when the buffer holds no complete line. A file shorter than our offset
 * was truncated in place (copytruncate): it restarts from 0. Returns 0, or
 * -1 on a read error or a refused record (logged). */
static int tail(file_src *s, tailed *t, em_receiver *r, uint32_t max, uint32_t *pushed)
{
    for (;;) {
        if (drain(s, t, r, max, pushed) != 0)
            return -1;
        if (*pushed >= max || t->fd < 0 || t->closing)
            return 0;
        size_t room;
        char *at = em_linebuf_room(&t->lines, &room);
        if (!at) {
            em_log(EM_LOG_ERROR, em_receiver_job(r), "file %s/%s: out of memory", s->path,
                   t->name);
            return -1;
        }
        ssize_t n = pread(t->fd, at, room, t->read_off);
        if (n > 0) {
            em_linebuf_added(&t->lines, (size_t)n);
            t->read_off += n;
            t->at_eof = 0;
            continue;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            em_log(EM_LOG_ERROR, em_receiver_job(r), "file %s/%s: read failed: %s", s->path,
                   t->name, strerror(errno));
            return -1;
        }
        struct stat st;
        if (!t->gone_at && fstat(t->fd, &st) == 0 && st.st_size < t->read_off) {
            em_log(EM_LOG_WARN, em_receiver_job(r),
                   "file %s/%s: truncated from %lld to %lld bytes; reading it again from the start",
                   s->path, t->name, (long long)t->read_off, (long long)st.st_size);
            t->read_off = 0;
            em_linebuf_reset(&t->lines);
            continue;
        }
        t->at_eof = 1;
        return 0;
    }
}

/* Validates the options and sets up the source; the folder is first read
 * by poll(), so it need not exist yet. */
static void *file_create(const em_props *props, em_receiver *r, char *err, size_t errlen)
{
    (void)r;
    const char *path = em_props_str(props, "path", NULL);
    if (!path || !*path) {
        snprintf(err, errlen, "file source: option 'path' is required");
        return NULL;
    }
    if (strlen(path) >= 4096) {
        snprintf(err, errlen, "file source: option 'path' is too long");
        return NULL;
    }
    const char *start = em_props_str(props, "start", "beginning");
    if (strcmp(start, "beginning") != 0 && strcmp(start, "end") != 0) {
        snprintf(err, errlen, "file source: option 'start' must be 'beginning' or 'end', got '%s'",
                 start);
        return NULL;
    }
    int64_t interval = em_props_ms(props, "poll_interval", 100);
    if (interval < 1) {
        snprintf(err, errlen, "file source: option 'poll_interval' must be at least 1ms");
        return NULL;
    }
    file_src *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path)) ||
        !(s->pattern = strdup(em_props_str(props, "pattern", "*")))) {
        if (s)
            free(s->path);
        free(s);
        snprintf(err, errlen, "file source: out of memory");
        return NULL;
    }
    s->start_end = strcmp(start, "end") == 0;
    s->interval_ms = interval;
    snprintf(s->name, sizeof s->name, "file %s/%s", s->path, s->pattern);
    return s;
}

/* Pushes at most max lines from the tracked files, rescanning the folder
 * at most every poll_interval and waiting at most timeout_ms for new lines.
 * Returns the count pushed, or -1 on a read fault (logged). */
static int file_poll(void *self, em_receiver *r, uint32_t max, int timeout_ms)
{
    file_src *s = self;
    int64_t deadline = em_clock_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    uint32_t pushed = 0;
    if (max == 0)
        return 0;
    for (;;) {
        int64_t now = em_clock_mono_ms();
        if (now >= s->next_scan) {
            scan(s, r);
            s->next_scan = now + s->interval_ms;
        }
        size_t n = s->n;
        for (size_t k = 0; k < n && pushed < max; k++) {
            tailed *t = s->files[(s->next + k) % n];
            if (tail(s, t, r, max, &pushed) != 0)
                return pushed ? (int)pushed : -1;
            /* gone and read to its end for a while: the writer has moved on */
            if (pushed < max && t->gone_at && (t->at_eof || t->fd < 0) && !t->closing &&
                em_clock_mono_ms() - t->gone_at >= ROTATE_WAIT_MS) {
                t->closing = 1;
                if (drain(s, t, r, max, &pushed) != 0)
                    return pushed ? (int)pushed : -1;
            }
        }
        if (n)
            s->next = (s->next + 1) % n;
        /* closing files whose last line went out are dropped */
        for (size_t i = 0; i < s->n;) {
            tailed *t = s->files[i];
            if (t->closing && em_linebuf_pending(&t->lines) == 0) {
                untrack(t);
                s->files[i] = s->files[--s->n];
            } else {
                i++;
            }
        }
        now = em_clock_mono_ms();
        if (pushed > 0 || now >= deadline)
            return (int)pushed;
        int64_t t = s->next_scan < deadline ? s->next_scan : deadline;
        poll(NULL, 0, (int)(t - now));
    }
}

/* Accepts NULL. */
/* Stopping: hand over every complete line already read, from every file. */
static void file_flush(void *self, em_receiver *r)
{
    file_src *s = self;
    uint32_t pushed = 0;
    for (size_t k = 0; k < s->n; k++)
        drain(s, s->files[k], r, UINT32_MAX, &pushed);
}

static void file_free(void *self)
{
    file_src *s = self;
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        untrack(s->files[i]);
    free(s->files);
    free(s->path);
    free(s->pattern);
    free(s);
}

const em_connector em_file_connector = {
    .name = "file",
    .options = file_options,
    .create = file_create,
    .poll = file_poll,
    .flush = file_flush,
    .free = file_free,
};

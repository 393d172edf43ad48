/* checkpoint.c — see checkpoint.h. */
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "log.h"

int em_mkdirs(const char *dir)
{
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(tmp, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* The file's text, malloc'd, with its crc32 line; NULL when out of memory. */
static char *render(const em_checkpoint *cp, size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f)
        return NULL;
    fprintf(f, "ember-checkpoint %d\njob %s\nstate_version %s\nlast_batch %" PRId64
               "\nbatches %" PRIu64 "\nbatch_id %" PRIu64 "\n",
            EM_CHECKPOINT_FORMAT, cp->job, cp->state_version[0] ? cp->state_version : "-",
            cp->last_batch_ms, cp->batches, cp->batch_id);
    for (const char *p = cp->positions; p && *p;) {
        size_t l = strcspn(p, "\n");
        fprintf(f, "pos %.*s\n", (int)l, p);
        p += l + (p[l] == '\n');
    }
    for (const char *p = cp->wal_covered; p && *p;) {
        size_t l = strcspn(p, "\n");
        fprintf(f, "wal %.*s\n", (int)l, p);
        p += l + (p[l] == '\n');
    }
    fflush(f);
    uint32_t crc = (uint32_t)crc32(0, (const Bytef *)buf, (uInt)n);
    fprintf(f, "crc32 %08x\n", crc);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t w = write(fd, buf, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

int em_checkpoint_write(const char *dir, const em_checkpoint *cp, int durable, char *err,
                        size_t errlen)
{
    char path[1200], tmp[1200], prev[1200];
    size_t n = 0;
    char *buf = render(cp, &n);
    snprintf(path, sizeof path, "%s/checkpoint", dir);
    snprintf(tmp, sizeof tmp, "%s/checkpoint.tmp", dir);
    snprintf(prev, sizeof prev, "%s/checkpoint.1", dir);
    if (!buf || em_mkdirs(dir) != 0) {
        snprintf(err, errlen, "checkpoint %s: %s", path, buf ? strerror(errno) : "out of memory");
        free(buf);
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write_all(fd, buf, n) != 0 || (durable && fsync(fd) != 0)) {
        snprintf(err, errlen, "checkpoint %s: %s", tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        free(buf);
        return -1;
    }
    free(buf);
    close(fd);
    /* Keep the last good one: if the rename below is torn by a crash, the
     * reader still finds checkpoint.1. A link, so checkpoint never vanishes. */
    unlink(prev);
    if (link(path, prev) != 0 && errno != ENOENT)
        em_log(EM_LOG_WARN, cp->job, "checkpoint %s: cannot keep the previous one: %s", path,
               strerror(errno));
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "checkpoint %s: %s", path, strerror(errno));
        return -1;
    }
    int dfd = durable ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (dfd >= 0) { /* make the rename itself durable */
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* A checkpoint holds a few lines per Kafka partition: a file past this is
 * not one of ours. */
#define CHECKPOINT_MAX_BYTES (16u << 20)

static char *read_small_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (n + 1 == cap) {
            char *b = cap < CHECKPOINT_MAX_BYTES ? realloc(buf, cap *= 2) : NULL;
            if (!b)
                free(buf);
            buf = b;
        }
    }
    fclose(f);
    if (buf)
        buf[n] = '\0';
    *len = n;
    return buf;
}

/* Appends line (without its newline) to *list. */
static int append_line(char **list, const char *line, size_t len)
{
    size_t have = *list ? strlen(*list) : 0;
    char *l = realloc(*list, have + len + 2);
    if (!l)
        return -1;
    memcpy(l + have, line, len);
    l[have + len] = '\n';
    l[have + len + 1] = '\0';
    *list = l;
    return 0;
}

/* Parses one file; 0 ok, -1 missing, -2 damaged (why in why). */
static int parse(const char *path, em_checkpoint *cp, char *why, size_t whylen)
{
    size_t n;
    char *buf = read_small_file(path, &n);
    if (!buf)
        return -1;
    memset(cp, 0, sizeof *cp);
    char *crc_line = strstr(buf, "crc32 ");
    while (crc_line && crc_line != buf && crc_line[-1] != '\n')
        crc_line = strstr(crc_line + 1, "crc32 ");
    unsigned int want;
    int rc = -2;
    if (!crc_line || sscanf(crc_line, "crc32 %8x", &want) != 1) {
        snprintf(why, whylen, "no checksum (torn write?)");
    } else if ((uint32_t)crc32(0, (const Bytef *)buf, (uInt)(crc_line - buf)) != want) {
        snprintf(why, whylen, "checksum mismatch");
    } else {
        int format, used = 0;
        char state[64];
        *crc_line = '\0';
        if (sscanf(buf, "ember-checkpoint %d\njob %127s\nstate_version %63s\nlast_batch %" SCNd64
                        "\nbatches %" SCNu64 "\n%n",
                   &format, cp->job, state, &cp->last_batch_ms, &cp->batches, &used) != 5 || !used) {
            snprintf(why, whylen, "unreadable fields");
        } else if (format != 1 && format != EM_CHECKPOINT_FORMAT) {
            snprintf(why, whylen, "format %d, this ember reads 1 and %d", format,
                     EM_CHECKPOINT_FORMAT);
        } else {
            snprintf(cp->state_version, sizeof cp->state_version, "%s",
                     strcmp(state, "-") ? state : "");
            rc = 0;
            for (char *line = buf + used; rc == 0 && *line;) {
                size_t l = strcspn(line, "\n");
                if (l > 4 && strncmp(line, "pos ", 4) == 0)
                    rc = append_line(&cp->positions, line + 4, l - 4);
                else if (l > 4 && strncmp(line, "wal ", 4) == 0)
                    rc = append_line(&cp->wal_covered, line + 4, l - 4);
                else if (sscanf(line, "batch_id %" SCNu64, &cp->batch_id) != 1 &&
                         strncmp(line, "state ", 6) != 0) /* format 1's placeholder */
                    rc = -2;
                line += l + (line[l] == '\n');
            }
            if (rc != 0) {
                snprintf(why, whylen, "unreadable fields");
                em_checkpoint_clear(cp);
                rc = -2;
            }
        }
    }
    free(buf);
    return rc;
}

int em_checkpoint_read(const char *dir, em_checkpoint *cp)
{
    char path[1200], prev[1200], why[128];
    snprintf(path, sizeof path, "%s/checkpoint", dir);
    snprintf(prev, sizeof prev, "%s/checkpoint.1", dir);
    int rc = parse(path, cp, why, sizeof why);
    if (rc == 0)
        return 0;
    if (rc == -2)
        em_log(EM_LOG_WARN, NULL, "checkpoint %s is damaged (%s); using the previous one", path, why);
    int rc1 = parse(prev, cp, why, sizeof why);
    if (rc1 == 0)
        return 0;
    if (rc1 == -2)
        em_log(EM_LOG_WARN, NULL, "checkpoint %s is damaged too (%s); starting without one", prev, why);
    memset(cp, 0, sizeof *cp);
    return 1;
}

char *em_checkpoint_source_positions(const em_checkpoint *cp, int source)
{
    char *out = NULL;
    char prefix[32];
    int pl = snprintf(prefix, sizeof prefix, "%d ", source);
    for (const char *p = cp->positions; p && *p;) {
        size_t l = strcspn(p, "\n");
        if (l > (size_t)pl && strncmp(p, prefix, (size_t)pl) == 0 &&
            append_line(&out, p + pl, l - (size_t)pl) != 0)
            break;
        p += l + (p[l] == '\n');
    }
    return out;
}

const char *em_checkpoint_wal_name(const char *segment_path)
{
    const char *name = segment_path;
    for (const char *p = strstr(segment_path, "/wal/"); p; p = strstr(p + 1, "/wal/"))
        name = p + 5;
    return name;
}

int em_checkpoint_covers_wal(const em_checkpoint *cp, const char *segment_path)
{
    const char *base = em_checkpoint_wal_name(segment_path);
    size_t bl = strlen(base);
    for (const char *p = cp->wal_covered; p && *p;) {
        size_t l = strcspn(p, "\n");
        if (l == bl && strncmp(p, base, l) == 0)
            return 1;
        p += l + (p[l] == '\n');
    }
    return 0;
}

void em_checkpoint_clear(em_checkpoint *cp)
{
    free(cp->positions);
    free(cp->wal_covered);
    cp->positions = cp->wal_covered = NULL;
}

int em_checkpoint_archive(const char *dir, char *moved_to, size_t len)
{
    /* A unique folder: two state_version changes in one second keep both. */
    long long now = (long long)time(NULL);
    int made = -1;
    for (int n = 0; made != 0 && n < 1000; n++) {
        if (n)
            snprintf(moved_to, len, "%s/archive-%lld.%d", dir, now, n);
        else
            snprintf(moved_to, len, "%s/archive-%lld", dir, now);
        em_mkdirs(dir);
        made = mkdir(moved_to, 0755);
        if (made != 0 && errno != EEXIST)
            return -1;
    }
    if (made != 0)
        return -1;
    static const char *const files[] = {"checkpoint", "checkpoint.1"};
    for (int i = 0; i < 2; i++) {
        char from[1200], to[1400];
        snprintf(from, sizeof from, "%s/%s", dir, files[i]);
        snprintf(to, sizeof to, "%s/%s", moved_to, files[i]);
        if (rename(from, to) != 0 && errno != ENOENT)
            return -1;
    }
    return 0;
}

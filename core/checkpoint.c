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

static int render(const em_checkpoint *cp, char *buf, size_t len)
{
    int n = snprintf(buf, len,
                     "ember-checkpoint %d\njob %s\nstate_version %s\nlast_batch %" PRId64
                     "\nbatches %" PRIu64 "\nstate 0\n",
                     EM_CHECKPOINT_FORMAT, cp->job, cp->state_version[0] ? cp->state_version : "-",
                     cp->last_batch_ms, cp->batches);
    if (n < 0 || (size_t)n >= len)
        return -1;
    uint32_t crc = (uint32_t)crc32(0, (const Bytef *)buf, (uInt)n);
    int m = snprintf(buf + n, len - (size_t)n, "crc32 %08x\n", crc);
    return m < 0 || (size_t)(n + m) >= len ? -1 : n + m;
}

int em_checkpoint_write(const char *dir, const em_checkpoint *cp, char *err, size_t errlen)
{
    char buf[1024], path[1200], tmp[1200], prev[1200];
    int n = render(cp, buf, sizeof buf);
    snprintf(path, sizeof path, "%s/checkpoint", dir);
    snprintf(tmp, sizeof tmp, "%s/checkpoint.tmp", dir);
    snprintf(prev, sizeof prev, "%s/checkpoint.1", dir);
    if (n < 0 || em_mkdirs(dir) != 0) {
        snprintf(err, errlen, "checkpoint %s: %s", path, n < 0 ? "too long" : strerror(errno));
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, buf, (size_t)n) != n || fsync(fd) != 0) {
        snprintf(err, errlen, "checkpoint %s: %s", tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
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
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { /* make the rename itself durable */
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* Parses one file; 0 ok, -1 missing, -2 damaged (why in why). */
static int parse(const char *path, em_checkpoint *cp, char *why, size_t whylen)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char buf[2048];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *crc_line = strstr(buf, "crc32 ");
    unsigned int want;
    if (!crc_line || sscanf(crc_line, "crc32 %8x", &want) != 1) {
        snprintf(why, whylen, "no checksum (torn write?)");
        return -2;
    }
    if ((uint32_t)crc32(0, (const Bytef *)buf, (uInt)(crc_line - buf)) != want) {
        snprintf(why, whylen, "checksum mismatch");
        return -2;
    }
    int format;
    char state[64];
    memset(cp, 0, sizeof *cp);
    if (sscanf(buf, "ember-checkpoint %d\njob %127s\nstate_version %63s\nlast_batch %" SCNd64
                    "\nbatches %" SCNu64,
               &format, cp->job, state, &cp->last_batch_ms, &cp->batches) != 5) {
        snprintf(why, whylen, "unreadable fields");
        return -2;
    }
    if (format != EM_CHECKPOINT_FORMAT) {
        snprintf(why, whylen, "format %d, this ember reads %d", format, EM_CHECKPOINT_FORMAT);
        return -2;
    }
    snprintf(cp->state_version, sizeof cp->state_version, "%s", strcmp(state, "-") ? state : "");
    return 0;
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

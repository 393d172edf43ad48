/* identity.c — see identity.h. */
#include "identity.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "checkpoint.h"

static char current[65] = "ember";

/* FNV-1a, 32 bits: a stable short hash, not a secure one. */
static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

void em_identity_default(const char *checkpoint_dir, char *out, size_t len)
{
    char host[65] = "localhost";
    if (gethostname(host, sizeof host - 1) != 0 || !host[0])
        strcpy(host, "localhost");
    host[sizeof host - 1] = '\0';
    char *dot = strchr(host, '.'); /* the short name: ids go into logs */
    if (dot && dot != host)
        *dot = '\0';
    for (char *c = host; *c; c++) /* keep what a group.instance.id accepts */
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '_'))
            *c = '-';
    host[40] = '\0';
    /* The folder may not exist yet: its absolute path is cwd + dir. */
    char abs[PATH_MAX + 1100];
    char *real = realpath(checkpoint_dir, NULL);
    if (real) {
        snprintf(abs, sizeof abs, "%s", real);
        free(real);
    } else if (checkpoint_dir[0] == '/') {
        snprintf(abs, sizeof abs, "%s", checkpoint_dir);
    } else {
        char cwd[PATH_MAX];
        snprintf(abs, sizeof abs, "%s/%s", getcwd(cwd, sizeof cwd) ? cwd : ".", checkpoint_dir);
    }
    snprintf(out, len, "%s-%08x", host, fnv1a(abs));
}

int em_identity_valid(const char *id)
{
    size_t n = strlen(id);
    if (n < 1 || n > 64)
        return -1;
    for (const char *c = id; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '_' || *c == '.'))
            return -1;
    return 0;
}

void em_identity_set(const char *id) { snprintf(current, sizeof current, "%s", id); }

const char *em_identity_id(void) { return current; }

/* The fd stays open (and locked) until the process exits; never closed. */
static int lock_fd = -1;

int em_identity_lock(const char *checkpoint_dir, char *err, size_t errlen)
{
    if (em_mkdirs(checkpoint_dir) != 0) {
        snprintf(err, errlen, "checkpoint.dir = '%s': cannot create it: %s", checkpoint_dir,
                 strerror(errno));
        return -1;
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/.lock", checkpoint_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "checkpoint.dir = '%s': cannot open %s: %s", checkpoint_dir, path,
                 strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int why = errno;
        char holder[256] = "";
        ssize_t n = pread(fd, holder, sizeof holder - 1, 0);
        holder[n > 0 ? n : 0] = '\0';
        holder[strcspn(holder, "\n")] = '\0';
        close(fd);
        if (why == EWOULDBLOCK)
            snprintf(err, errlen, "checkpoint.dir = '%s' is in use by another driver (%s); each "
                     "driver needs its own checkpoint.dir", checkpoint_dir,
                     holder[0] ? holder : "it has not written its pid yet");
        else
            snprintf(err, errlen, "checkpoint.dir = '%s': cannot lock %s: %s", checkpoint_dir,
                     path, strerror(why));
        return -1;
    }
    char line[160];
    int len = snprintf(line, sizeof line, "pid %ld, ember.id %s\n", (long)getpid(), current);
    if (ftruncate(fd, 0) != 0 || pwrite(fd, line, (size_t)len, 0) != len) {
        /* the lock holds all the same; only the message for a second driver is poorer */
    }
    lock_fd = fd;
    return 0;
}

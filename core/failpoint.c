/* failpoint.c — see failpoint.h. */
#include "failpoint.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static atomic_int armed = -1; /* -1: env not read yet; 0: none; 1: armed */
static char point[64];
static atomic_long remaining;

/* Reads EMBER_FAILPOINT on the first pass. Whether a point is armed. */
static int arm(void)
{
    int a = atomic_load_explicit(&armed, memory_order_relaxed);
    if (a >= 0)
        return a;
    const char *env = getenv("EMBER_FAILPOINT");
    const char *colon = env ? strrchr(env, ':') : NULL;
    long n = colon ? strtol(colon + 1, NULL, 10) : 0;
    if (colon && n > 0 && (size_t)(colon - env) < sizeof point) {
        memcpy(point, env, (size_t)(colon - env));
        point[colon - env] = '\0';
        atomic_store(&remaining, n);
        atomic_store(&armed, 1);
        return 1;
    }
    atomic_store(&armed, 0);
    return 0;
}

void em_failpoint(const char *name)
{
    if (!arm())
        return;
    if (strcmp(point, name) == 0 && atomic_fetch_sub(&remaining, 1) == 1) {
        em_log(EM_LOG_WARN, NULL, "failpoint %s reached: killing the process", name);
        raise(SIGKILL);
    }
}

int em_failpoint_fails(const char *name)
{
    if (!arm() || strcmp(point, name) != 0 || atomic_fetch_sub(&remaining, 1) != 1)
        return 0;
    em_log(EM_LOG_WARN, NULL, "failpoint %s reached: failing it once", name);
    return 1;
}

int em_failpoint_armed(const char *name)
{
    return arm() && strcmp(point, name) == 0 && atomic_load(&remaining) > 0;
}

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

void em_failpoint(const char *name)
{
    if (atomic_load_explicit(&armed, memory_order_relaxed) == 0)
        return;
    if (atomic_load(&armed) < 0) { /* first pass: read the setting once */
        const char *env = getenv("EMBER_FAILPOINT");
        const char *colon = env ? strrchr(env, ':') : NULL;
        long n = colon ? strtol(colon + 1, NULL, 10) : 0;
        if (colon && n > 0 && (size_t)(colon - env) < sizeof point) {
            memcpy(point, env, (size_t)(colon - env));
            point[colon - env] = '\0';
            atomic_store(&remaining, n);
            atomic_store(&armed, 1);
        } else {
            atomic_store(&armed, 0);
            return;
        }
    }
    if (strcmp(point, name) == 0 && atomic_fetch_sub(&remaining, 1) == 1) {
        em_log(EM_LOG_WARN, NULL, "failpoint %s reached: killing the process", name);
        raise(SIGKILL);
    }
}

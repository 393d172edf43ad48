/* connectors.c — the registry of connectors.
 *
 * The generator, socket and file connectors are built in. Each broker's
 * lives in a module of its own (modules/ember-kafka.so, -redis, -rabbitmq),
 * linked against its client library and loaded the first time a job names
 * it: a driver whose jobs use no broker maps neither librdkafka nor the
 * OpenSSL, zstd and SASL libraries it pulls in (docs/internals.md, "Idle
 * memory"). A module is loaded RTLD_GLOBAL, so the Lua side reaches its
 * functions (and the client library's) through ffi.C once it is in; it is
 * never unloaded.
 */
#include <dlfcn.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "connector.h"

extern const em_connector em_generator_connector;
extern const em_connector em_socket_connector;
extern const em_connector em_file_connector;

static const em_connector *const builtin[] = {
    &em_generator_connector,
    &em_socket_connector,
    &em_file_connector,
    NULL,
};

typedef struct module {
    const char *name;   /* the source type */
    const char *symbol; /* its em_connector in the module */
    const em_connector *conn;
    char err[1400];     /* why it would not load; loading is tried once */
} module;

static module modules[] = {
    {"kafka", "em_kafka_connector", NULL, ""},
    {"redis", "em_redis_connector", NULL, ""},
    {"rabbitmq", "em_rabbitmq_connector", NULL, ""},
};
#define NMODULES (sizeof modules / sizeof modules[0])

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* The folder of the modules: $EMBER_MODULE_DIR, else modules/ beside the
 * binary (an installed or a sanitizer build), else build/modules/ beside it
 * (the source tree's ./ember), else where this build put them. */
static void module_dir(char *out, size_t len)
{
    const char *env = getenv("EMBER_MODULE_DIR");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return;
    }
    char exe[900];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        const char *dir = dirname(exe);
        static const char *const under[] = {"modules", "build/modules"};
        for (size_t i = 0; i < sizeof under / sizeof under[0]; i++) {
            char probe[1024];
            snprintf(probe, sizeof probe, "%s/%s/ember-kafka.so", dir, under[i]);
            if (access(probe, R_OK) == 0) {
                snprintf(out, len, "%s/%s", dir, under[i]);
                return;
            }
        }
    }
    snprintf(out, len, "%s", EMBER_MODULE_DIR);
}

/* Loads m once. Caller holds lock. */
static void load(module *m)
{
    if (m->conn || m->err[0])
        return;
    char dir[1024], path[1100];
    module_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/ember-%s.so", dir, m->name);
    void *h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        snprintf(m->err, sizeof m->err, "the %s connector's module would not load: %.1100s "
                 "(set EMBER_MODULE_DIR to the folder of ember-%s.so)", m->name, dlerror(),
                 m->name);
        return;
    }
    m->conn = dlsym(h, m->symbol);
    if (!m->conn)
        snprintf(m->err, sizeof m->err, "%.1100s has no %s: a module of another ember build?",
                 path, m->symbol);
}

static const char *names(void)
{
    static char all[256];
    pthread_mutex_lock(&lock);
    if (!all[0]) {
        for (const em_connector *const *c = builtin; *c; c++)
            snprintf(all + strlen(all), sizeof all - strlen(all), "%s%s", all[0] ? ", " : "",
                     (*c)->name);
        for (size_t i = 0; i < NMODULES; i++)
            snprintf(all + strlen(all), sizeof all - strlen(all), ", %s", modules[i].name);
    }
    pthread_mutex_unlock(&lock);
    return all;
}

const em_connector *em_connector_get(const char *name, char *err, size_t errlen)
{
    for (const em_connector *const *c = builtin; *c; c++)
        if (strcmp((*c)->name, name) == 0)
            return *c;
    for (size_t i = 0; i < NMODULES; i++) {
        module *m = &modules[i];
        if (strcmp(m->name, name) != 0)
            continue;
        pthread_mutex_lock(&lock);
        load(m);
        const em_connector *c = m->conn;
        if (!c)
            snprintf(err, errlen, "%s", m->err);
        pthread_mutex_unlock(&lock);
        return c;
    }
    snprintf(err, errlen, "unknown source type '%s' (this ember has: %s)", name, names());
    return NULL;
}

int em_connector_load(const char *name, char *err, size_t errlen)
{
    return em_connector_get(name, err, errlen) ? 0 : -1;
}

/* generator.c — synthetic records, for the default job, demos and benchmarks.
 *
 * kind = "air_quality": JSON readings of PM2.5, CO2 and temperature from
 *   `devices` sensors, with a `malformed` fraction of broken messages, the way
 *   real sensor fleets send them.
 * kind = "sequence": 1, 2, 3, ... — exact, checkable records for tests.
 * kind = "text": "key-NNNN " padded to `size` bytes over `keys` keys — the
 *   benchmark's records.
 * rate paces production (records/s, 0: as fast as the receiver takes them);
 * count ends the source after that many records (0: never).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/clock.h"
#include "../core/connector.h"
#include "../core/receiver.h"

typedef enum { AIR_QUALITY, SEQUENCE, TEXT } kind_t;

typedef struct generator {
    kind_t kind;
    double rate;
    uint64_t count, produced, start_seq;
    uint32_t size, keys, devices;
    double malformed;
    uint64_t rng;
    int64_t started_ms;
    char *buf;
} generator;

static const em_option options[] = {
    {"kind", EM_OPT_STRING, "air_quality", "air_quality, sequence or text"},
    {"rate", EM_OPT_DOUBLE, "1000", "records/s to produce; 0 for as fast as possible"},
    {"count", EM_OPT_INT, "0", "stop after this many records; 0 for never"},
    {"start", EM_OPT_INT, "1", "first number of a sequence"},
    {"size", EM_OPT_INT, "100", "bytes per text record"},
    {"keys", EM_OPT_INT, "1000", "distinct keys of text records"},
    {"devices", EM_OPT_INT, "20", "sensors sending air_quality readings"},
    {"malformed", EM_OPT_DOUBLE, "0.02", "fraction of air_quality readings that are broken"},
    {"seed", EM_OPT_INT, "42", "random seed, for repeatable data"},
    {NULL, 0, NULL, NULL},
};

static uint64_t next_random(generator *g) /* xorshift64 */
{
    g->rng ^= g->rng << 13;
    g->rng ^= g->rng >> 7;
    g->rng ^= g->rng << 17;
    return g->rng;
}

static double uniform(generator *g) { return (double)(next_random(g) >> 11) / 9007199254740992.0; }

static void *create(const em_props *p, struct em_receiver *r, char *err, size_t errlen)
{
    (void)r;
    const char *kind = em_props_str(p, "kind", "air_quality");
    generator *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "generator source: out of memory");
        return NULL;
    }
    if (strcmp(kind, "air_quality") == 0)
        g->kind = AIR_QUALITY;
    else if (strcmp(kind, "sequence") == 0)
        g->kind = SEQUENCE;
    else if (strcmp(kind, "text") == 0)
        g->kind = TEXT;
    else {
        snprintf(err, errlen, "generator source: option 'kind' = '%s' is not air_quality, sequence or text", kind);
        free(g);
        return NULL;
    }
    g->rate = em_props_double(p, "rate", 1000);
    g->count = (uint64_t)em_props_int(p, "count", 0);
    g->start_seq = (uint64_t)em_props_int(p, "start", 1);
    g->size = (uint32_t)em_props_int(p, "size", 100);
    g->keys = (uint32_t)em_props_int(p, "keys", 1000);
    g->devices = (uint32_t)em_props_int(p, "devices", 20);
    g->malformed = em_props_double(p, "malformed", 0.02);
    g->rng = (uint64_t)em_props_int(p, "seed", 42) * 2654435761u + 1;
    if (g->size < 16 || g->size > 1 << 20 || !g->keys || !g->devices || g->malformed > 1) {
        snprintf(err, errlen, "generator source: size must be 16..1048576, keys and devices "
                              "at least 1, malformed at most 1");
        free(g);
        return NULL;
    }
    g->buf = malloc(g->size > 512 ? g->size + 1 : 513);
    if (!g->buf) {
        free(g);
        snprintf(err, errlen, "generator source: out of memory");
        return NULL;
    }
    return g;
}

/* One reading as JSON, or, now and then, the kind of garbage a flaky
 * sensor or network sends: truncated JSON, a missing field, plain text. */
static int air_quality(generator *g, int64_t now)
{
    unsigned device = (unsigned)(next_random(g) % g->devices);
    double pm25 = 5 + uniform(g) * 60 + (device % 5 == 0 ? uniform(g) * 80 : 0);
    int co2 = 400 + (int)(uniform(g) * 900);
    double temp = 15 + uniform(g) * 15;
    if (uniform(g) < g->malformed) {
        switch (next_random(g) % 3) {
        case 0: return snprintf(g->buf, 512, "{\"device\":\"sensor-%02u\",\"pm25\":", device);
        case 1: return snprintf(g->buf, 512, "{\"device\":\"sensor-%02u\",\"co2\":%d}", device, co2);
        default: return snprintf(g->buf, 512, "sensor-%02u pm25=%.1f", device, pm25);
        }
    }
    return snprintf(g->buf, 512,
                    "{\"device\":\"sensor-%02u\",\"pm25\":%.1f,\"co2\":%d,\"temperature\":%.1f,"
                    "\"ts\":%lld}",
                    device, pm25, co2, temp, (long long)now);
}

static int text(generator *g)
{
    int n = snprintf(g->buf, g->size + 1, "key-%04u ", (unsigned)(next_random(g) % g->keys));
    memset(g->buf + n, 'x', g->size - (uint32_t)n);
    return (int)g->size;
}

static int poll_gen(void *self, struct em_receiver *r, uint32_t max, int timeout_ms)
{
    generator *g = self;
    if (max == 0)
        return 0;
    int64_t now = em_clock_now_ms();
    if (!g->started_ms)
        g->started_ms = now;
    if (g->count && g->produced >= g->count)
        return -2;
    uint64_t want = max;
    if (g->rate > 0) {
        uint64_t due = (uint64_t)((double)(now - g->started_ms) * g->rate / 1000.0) + 1;
        want = due > g->produced ? due - g->produced : 0;
        if (want == 0) { /* nothing due yet: wait for the next record's time */
            int64_t next = g->started_ms + (int64_t)((double)g->produced * 1000.0 / g->rate);
            int64_t wait = next - now;
            em_clock_sleep_ms(wait < 1 ? 1 : wait > timeout_ms ? timeout_ms : wait);
            return 0;
        }
        if (want > max)
            want = max;
    }
    if (g->count && want > g->count - g->produced)
        want = g->count - g->produced;
    for (uint64_t i = 0; i < want; i++) {
        int len;
        uint64_t seq = g->start_seq + g->produced;
        if (g->kind == SEQUENCE)
            len = snprintf(g->buf, 32, "%llu", (unsigned long long)seq);
        else if (g->kind == TEXT)
            len = text(g);
        else
            len = air_quality(g, now);
        em_push rec = {.value = g->buf, .value_len = (size_t)len, .ts_ms = now, .partition = -1,
                       .offset = (int64_t)seq};
        if (em_receiver_push(r, &rec) != 0)
            return (int)i;
        g->produced++;
    }
    return (int)want;
}

static void free_gen(void *self)
{
    generator *g = self;
    if (g)
        free(g->buf);
    free(g);
}

const em_connector em_generator_connector = {
    .name = "generator",
    .options = options,
    .create = create,
    .poll = poll_gen,
    .free = free_gen,
};

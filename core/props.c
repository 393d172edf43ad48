/* props.c — see props.h. */
#include "props.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void em_props_init(em_props *p) { memset(p, 0, sizeof *p); }

void em_props_clear(em_props *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->items[i].key);
        free(p->items[i].value);
    }
    free(p->items);
    em_props_init(p);
}

static em_prop *find(const em_props *p, const char *key)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->items[i].key, key) == 0)
            return &p->items[i];
    return NULL;
}

int em_props_set(em_props *p, const char *key, const char *value)
{
    char *v = strdup(value);
    if (!v)
        return -1;
    em_prop *it = find(p, key);
    if (it) {
        free(it->value);
        it->value = v;
        return 0;
    }
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 8;
        em_prop *items = realloc(p->items, cap * sizeof *items);
        if (!items) {
            free(v);
            return -1;
        }
        p->items = items;
        p->cap = cap;
    }
    p->items[p->n].key = strdup(key);
    p->items[p->n].value = v;
    if (!p->items[p->n].key) {
        free(v);
        return -1;
    }
    p->n++;
    return 0;
}

const char *em_props_get(const em_props *p, const char *key)
{
    em_prop *it = find(p, key);
    return it ? it->value : NULL;
}

int em_parse_duration_ms(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0 || !isfinite(v))
        return -1;
    double scale;
    if (*end == '\0' || strcmp(end, "ms") == 0)
        scale = 1;
    else if (strcmp(end, "s") == 0)
        scale = 1000;
    else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
        scale = 60000;
    else if (strcmp(end, "h") == 0)
        scale = 3600000;
    else
        return -1;
    if (v * scale > EM_DURATION_MAX_MS)
        return -2;
    *out = (int64_t)(v * scale + 0.5);
    return 0;
}

int em_parse_size(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0 || !isfinite(v))
        return -1;
    double scale;
    switch (tolower((unsigned char)*end)) {
    case '\0': scale = 1; break;
    case 'k': scale = 1024.0; break;
    case 'm': scale = 1024.0 * 1024; break;
    case 'g': scale = 1024.0 * 1024 * 1024; break;
    default: return -1;
    }
    if (*end && end[1] && !(tolower((unsigned char)end[1]) == 'b' && !end[2]))
        return -1;
    if (v * scale > EM_SIZE_MAX)
        return -2;
    *out = (int64_t)(v * scale);
    return 0;
}

int em_parse_bool(const char *s, int *out)
{
    if (strcmp(s, "true") == 0 || strcmp(s, "1") == 0 || strcmp(s, "yes") == 0)
        *out = 1;
    else if (strcmp(s, "false") == 0 || strcmp(s, "0") == 0 || strcmp(s, "no") == 0)
        *out = 0;
    else
        return -1;
    return 0;
}

int em_parse_int(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end != s && !*end && errno == ERANGE && v > 0)
        return -2;
    if (end == s || *end || errno || v < 0)
        return -1;
    *out = v;
    return 0;
}

int em_parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || v < 0 || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

static const char *type_hint(em_opt_type t)
{
    switch (t) {
    case EM_OPT_INT: return "a whole number >= 0";
    case EM_OPT_DOUBLE: return "a number >= 0";
    case EM_OPT_BOOL: return "true or false";
    case EM_OPT_DURATION: return "a duration such as 200ms, 2s or 1m";
    case EM_OPT_SIZE: return "a size such as 512k, 256m or 1g";
    default: return "a string";
    }
}

static int check_value(em_opt_type t, const char *v)
{
    int64_t i;
    double d;
    int b;
    switch (t) {
    case EM_OPT_INT: return em_parse_int(v, &i);
    case EM_OPT_DOUBLE: return em_parse_double(v, &d);
    case EM_OPT_BOOL: return em_parse_bool(v, &b);
    case EM_OPT_DURATION: return em_parse_duration_ms(v, &i);
    case EM_OPT_SIZE: return em_parse_size(v, &i);
    default: return 0;
    }
}

static int has_prefix(const char *key, const char *const *prefixes)
{
    for (; prefixes && *prefixes; prefixes++)
        if (strncmp(key, *prefixes, strlen(*prefixes)) == 0)
            return 1;
    return 0;
}

int em_props_validate(em_props *p, const em_option *opts, const char *const *prefixes,
                      const char *what, char *err, size_t errlen)
{
    for (size_t i = 0; i < p->n; i++) {
        const char *key = p->items[i].key, *value = p->items[i].value;
        const em_option *o = opts;
        while (o->name && strcmp(o->name, key) != 0)
            o++;
        if (!o->name) {
            if (has_prefix(key, prefixes))
                continue;
            snprintf(err, errlen, "%s: unknown option '%s'", what, key);
            return -1;
        }
        int rc = check_value(o->type, value);
        if (rc == -2) {
            snprintf(err, errlen, "%s: option '%s' = '%s' is too large (at most %s)", what, key,
                     value, o->type == EM_OPT_DURATION ? "1000000000s, about 31 years"
                     : o->type == EM_OPT_SIZE ? "4 exabytes" : "9223372036854775807");
            return -1;
        }
        if (rc != 0) {
            snprintf(err, errlen, "%s: option '%s' = '%s' is not %s", what, key, value,
                     type_hint(o->type));
            return -1;
        }
    }
    for (const em_option *o = opts; o->name; o++)
        if (o->def && !find(p, o->name) && em_props_set(p, o->name, o->def) != 0) {
            snprintf(err, errlen, "%s: out of memory", what);
            return -1;
        }
    return 0;
}

static int cmp_prop(const void *a, const void *b)
{
    return strcmp(((const em_prop *)a)->key, ((const em_prop *)b)->key);
}

char *em_props_signature(const em_props *p)
{
    em_prop *sorted = malloc((p->n ? p->n : 1) * sizeof *sorted);
    if (!sorted)
        return NULL;
    memcpy(sorted, p->items, p->n * sizeof *sorted);
    qsort(sorted, p->n, sizeof *sorted, cmp_prop);
    size_t len = 1;
    for (size_t i = 0; i < p->n; i++)
        len += strlen(sorted[i].key) + strlen(sorted[i].value) + 2;
    char *s = malloc(len), *w = s;
    if (s) {
        *w = '\0';
        for (size_t i = 0; i < p->n; i++)
            w += sprintf(w, "%s=%s\n", sorted[i].key, sorted[i].value);
    }
    free(sorted);
    return s;
}

const char *em_props_str(const em_props *p, const char *key, const char *fallback)
{
    const char *v = em_props_get(p, key);
    return v ? v : fallback;
}

int64_t em_props_int(const em_props *p, const char *key, int64_t fallback)
{
    const char *v = em_props_get(p, key);
    int64_t out;
    return v && em_parse_int(v, &out) == 0 ? out : fallback;
}

double em_props_double(const em_props *p, const char *key, double fallback)
{
    const char *v = em_props_get(p, key);
    double out;
    return v && em_parse_double(v, &out) == 0 ? out : fallback;
}

int em_props_bool(const em_props *p, const char *key, int fallback)
{
    const char *v = em_props_get(p, key);
    int out;
    return v && em_parse_bool(v, &out) == 0 ? out : fallback;
}

int64_t em_props_ms(const em_props *p, const char *key, int64_t fallback)
{
    const char *v = em_props_get(p, key);
    int64_t out;
    return v && em_parse_duration_ms(v, &out) == 0 ? out : fallback;
}

int64_t em_props_size(const em_props *p, const char *key, int64_t fallback)
{
    const char *v = em_props_get(p, key);
    int64_t out;
    return v && em_parse_size(v, &out) == 0 ? out : fallback;
}

void em_mask_secret(const char *s, char *out, size_t len)
{
    snprintf(out, len, "%s", s);
    char *scheme = strstr(out, "://");
    if (!scheme)
        return;
    char *user = scheme + 3, *at = strchr(user, '@'), *colon = strchr(user, ':');
    if (!at || !colon || colon > at)
        return;
    char rest[1024];
    snprintf(rest, sizeof rest, "%s", at);
    snprintf(colon, len - (size_t)(colon - out), ":***%s", rest);
}

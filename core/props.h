/* props.h — typed options declared as data, and the key/value sets they check.
 *
 * One table per component (the driver configuration, each connector) names
 * every key with its type, default and help, so parsing, defaults,
 * validation and --help come from one place, as in Fluent Bit's config maps.
 */
#ifndef EMBER_PROPS_H
#define EMBER_PROPS_H

#include <stddef.h>
#include <stdint.h>

typedef enum em_opt_type {
    EM_OPT_STRING,
    EM_OPT_INT,      /* a whole number >= 0 */
    EM_OPT_DOUBLE,   /* a number >= 0 */
    EM_OPT_BOOL,     /* true/false */
    EM_OPT_DURATION, /* 200ms, 2s, 1m; a bare number means milliseconds */
    EM_OPT_SIZE,     /* bytes: 512k, 256m, 1g; a bare number means bytes */
} em_opt_type;

typedef struct em_option {
    const char *name;
    em_opt_type type;
    const char *def; /* NULL: unset unless given */
    const char *help;
} em_option;

typedef struct em_prop {
    char *key;
    char *value;
} em_prop;

typedef struct em_props {
    em_prop *items;
    size_t n, cap;
} em_props;

void em_props_init(em_props *p);
void em_props_clear(em_props *p);
int em_props_set(em_props *p, const char *key, const char *value); /* replaces */
const char *em_props_get(const em_props *p, const char *key);      /* NULL if unset */
/* Fills defaults and checks every key and value against the table. Unknown
 * keys are an error unless they start with one of the pass-through prefixes
 * (NULL-terminated list, may be NULL). The error names the key and value. */
int em_props_validate(em_props *p, const em_option *opts, const char *const *prefixes,
                      const char *what, char *err, size_t errlen);
/* A stable text of the whole set (sorted), to tell whether two differ. */
char *em_props_signature(const em_props *p);

/* Typed getters for validated props (the value parsed as its type). */
const char *em_props_str(const em_props *p, const char *key, const char *fallback);
int64_t em_props_int(const em_props *p, const char *key, int64_t fallback);
double em_props_double(const em_props *p, const char *key, double fallback);
int em_props_bool(const em_props *p, const char *key, int fallback);
int64_t em_props_ms(const em_props *p, const char *key, int64_t fallback);
int64_t em_props_size(const em_props *p, const char *key, int64_t fallback);

/* Copies s with the password of a URL ("scheme://user:secret@host")
 * replaced by "***", for logs and descriptions. */
void em_mask_secret(const char *s, char *out, size_t len);

/* Parsers shared with the configuration; return 0, -1 (not a value of the
 * type) or -2 (too large: durations over EM_DURATION_MAX_MS, sizes over
 * EM_SIZE_MAX, whole numbers past int64). */
#define EM_DURATION_MAX_MS 1e12
#define EM_SIZE_MAX 4611686018427387904.0
int em_parse_duration_ms(const char *s, int64_t *out);
int em_parse_bool(const char *s, int *out);
int em_parse_int(const char *s, int64_t *out);
int em_parse_double(const char *s, double *out);
int em_parse_size(const char *s, int64_t *out);

#endif

/* luahost.c — see luahost.h. */
#include "luahost.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "log.h"

struct em_luahost {
    lua_State *L;
    em_budget *budget;
    int run_ref;
    int desc_ref; /* the runtime's job description: prepare, apply, ... */
    em_job_desc desc;
    char stopped_by[32]; /* set by host.stopped_by during a batch */
    const em_config *cfg; /* the driver's: its budget defaults change on SIGHUP */
};

static char lua_dir[1024] = EMBER_LUA_DIR;

void em_luahost_set_lua_dir(const char *dir) { snprintf(lua_dir, sizeof lua_dir, "%s", dir); }
const char *em_luahost_lua_dir(void) { return lua_dir; }

/* host.log(level, job, message) for the Lua side. */
static int host_log(lua_State *L)
{
    int level = em_log_parse_level(luaL_checkstring(L, 1));
    const char *job = luaL_optstring(L, 2, NULL);
    const char *msg = luaL_checkstring(L, 3);
    em_log(level < 0 ? EM_LOG_INFO : (em_log_level)level, job, "%s", msg);
    return 0;
}

/* host.stopped_by(reason) for the Lua side: why the batch it returns as
 * fatal stops the job, when that is not on_error = fail. */
static int host_stopped_by(lua_State *L)
{
    em_luahost *h = lua_touserdata(L, lua_upvalueindex(1));
    snprintf(h->stopped_by, sizeof h->stopped_by, "%s", luaL_checkstring(L, 1));
    return 0;
}

static void prepend_path(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", lua_dir, lua_dir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
}

/* Reads one option value as text: strings as they are, whole numbers
 * without a decimal point, booleans as true/false. */
static const char *option_text(lua_State *L, int idx, char *buf, size_t len)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: return lua_tostring(L, idx);
    case LUA_TBOOLEAN: return lua_toboolean(L, idx) ? "true" : "false";
    case LUA_TNUMBER: {
        double d = lua_tonumber(L, idx);
        if (d == (double)(long long)d)
            snprintf(buf, len, "%lld", (long long)d);
        else
            snprintf(buf, len, "%.15g", d);
        return buf;
    }
    default: return NULL;
    }
}

static const char *field_string(lua_State *L, int t, const char *key, char *out, size_t len)
{
    lua_getfield(L, t, key);
    const char *s = lua_isstring(L, -1) ? lua_tostring(L, -1) : NULL;
    snprintf(out, len, "%s", s ? s : "");
    lua_pop(L, 1);
    return s ? out : NULL;
}

static int read_sources(lua_State *L, int desc, em_job_desc *d, char *err, size_t errlen)
{
    lua_getfield(L, desc, "sources");
    int t = lua_gettop(L);
    d->nsources = lua_objlen(L, t);
    d->sources = calloc(d->nsources ? d->nsources : 1, sizeof *d->sources);
    for (size_t i = 0; i < d->nsources; i++) {
        em_source_desc *s = &d->sources[i];
        em_props_init(&s->props);
        lua_rawgeti(L, t, (int)i + 1);
        int st = lua_gettop(L);
        char type[64];
        field_string(L, st, "type", type, sizeof type);
        field_string(L, st, "where", s->where, sizeof s->where);
        char why[700];
        s->conn = em_connector_get(type, why, sizeof why);
        if (!s->conn) {
            snprintf(err, errlen, "%s: %s", s->where, why);
            return -1;
        }
        lua_getfield(L, st, "options");
        int ot = lua_gettop(L);
        if (lua_istable(L, ot)) {
            lua_pushnil(L);
            while (lua_next(L, ot)) {
                char buf[64];
                const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
                const char *value = option_text(L, -1, buf, sizeof buf);
                if (!key || !value) {
                    snprintf(err, errlen, "%s: %s source: option %s%s%s must be a string, number or boolean",
                             s->where, type, key ? "'" : "", key ? key : "keys must be strings", key ? "'" : "");
                    return -1;
                }
                em_props_set(&s->props, key, value);
                lua_pop(L, 1);
            }
        }
        lua_settop(L, t);
    }
    lua_pop(L, 1);
    return 0;
}

static void read_outputs(lua_State *L, int desc, em_job_desc *d)
{
    lua_getfield(L, desc, "outputs");
    int t = lua_gettop(L);
    d->noutputs = lua_istable(L, t) ? lua_objlen(L, t) : 0;
    d->outputs = calloc(d->noutputs ? d->noutputs : 1, sizeof *d->outputs);
    for (size_t i = 0; i < d->noutputs; i++) {
        lua_rawgeti(L, t, (int)i + 1);
        int ot = lua_gettop(L);
        field_string(L, ot, "kind", d->outputs[i].kind, sizeof d->outputs[i].kind);
        field_string(L, ot, "where", d->outputs[i].where, sizeof d->outputs[i].where);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void read_tables(lua_State *L, int desc, em_job_desc *d)
{
    lua_getfield(L, desc, "tables");
    int t = lua_gettop(L);
    d->ntables = lua_istable(L, t) ? lua_objlen(L, t) : 0;
    d->tables = calloc(d->ntables ? d->ntables : 1, sizeof *d->tables);
    if (!d->tables)
        d->ntables = 0;
    for (size_t i = 0; i < d->ntables; i++) {
        lua_rawgeti(L, t, (int)i + 1);
        int tt = lua_gettop(L);
        em_table_desc *e = &d->tables[i];
        field_string(L, tt, "name", e->name, sizeof e->name);
        field_string(L, tt, "kind", e->kind, sizeof e->kind);
        field_string(L, tt, "source", e->source, sizeof e->source);
        field_string(L, tt, "where", e->where, sizeof e->where);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static int read_interval(lua_State *L, int desc, em_job_desc *d, const char *path, char *err,
                         size_t errlen)
{
    lua_getfield(L, desc, "batch_interval");
    int rc = 0;
    if (lua_type(L, -1) == LUA_TNUMBER) {
        d->batch_interval_ms = (int64_t)(lua_tonumber(L, -1) * 1000 + 0.5);
    } else if (lua_type(L, -1) == LUA_TSTRING) {
        if (em_parse_duration_ms(lua_tostring(L, -1), &d->batch_interval_ms) != 0) {
            snprintf(err, errlen, "%s: job '%s': batch_interval '%s' is not a duration such as 500ms, 2s or 1m",
                     path, d->name, lua_tostring(L, -1));
            rc = -1;
        }
    } else if (!lua_isnil(L, -1)) {
        snprintf(err, errlen, "%s: job '%s': batch_interval must be a duration string or seconds",
                 path, d->name);
        rc = -1;
    }
    if (rc == 0 && lua_type(L, -1) != LUA_TNIL && d->batch_interval_ms <= 0) {
        snprintf(err, errlen, "%s: job '%s': batch_interval must be more than 0", path, d->name);
        rc = -1;
    }
    lua_pop(L, 1);
    return rc;
}

/* The job's `memory` (bytes or "64m") and `batch_timeout` (seconds or
 * "30s") options; ember.job has checked their form already. */
static int read_budgets(lua_State *L, int desc, em_job_desc *d, const char *path, char *err,
                        size_t errlen)
{
    d->memory = d->batch_timeout_ms = -1;
    lua_getfield(L, desc, "memory");
    if (lua_type(L, -1) == LUA_TNUMBER)
        d->memory = (int64_t)lua_tonumber(L, -1);
    else if (lua_type(L, -1) == LUA_TSTRING && em_parse_size(lua_tostring(L, -1), &d->memory) != 0)
        d->memory = -2;
    lua_getfield(L, desc, "batch_timeout");
    if (lua_type(L, -1) == LUA_TNUMBER)
        d->batch_timeout_ms = (int64_t)(lua_tonumber(L, -1) * 1000 + 0.5);
    else if (lua_type(L, -1) == LUA_TSTRING &&
             em_parse_duration_ms(lua_tostring(L, -1), &d->batch_timeout_ms) != 0)
        d->batch_timeout_ms = -2;
    lua_pop(L, 2);
    if (d->memory < -1 || d->batch_timeout_ms < -1) {
        snprintf(err, errlen, "%s: job '%s': %s is not a %s", path, d->name,
                 d->memory < -1 ? "memory" : "batch_timeout",
                 d->memory < -1 ? "size such as 64m" : "duration such as 30s");
        return -1;
    }
    return 0;
}

static void free_desc(em_job_desc *d)
{
    for (size_t i = 0; d->sources && i < d->nsources; i++)
        em_props_clear(&d->sources[i].props);
    free(d->sources);
    free(d->outputs);
    free(d->tables);
}

/* The job's own `memory` and `batch_timeout`, else the driver's defaults
 * as they are now: run before every batch, so a SIGHUP that changes
 * streaming.job.memory or streaming.job.batchTimeout reaches the next batch
 * of every job that sets no option of its own. */
static void apply_budgets(em_luahost *h)
{
    const em_job_desc *d = &h->desc;
    /* the main thread stores them on SIGHUP (main.c, reload_config) */
    int64_t memory = __atomic_load_n(&h->cfg->job_memory, __ATOMIC_RELAXED);
    int64_t timeout = __atomic_load_n(&h->cfg->job_batch_timeout_ms, __ATOMIC_RELAXED);
    em_budget_set_memory(h->budget, d->memory >= 0 ? d->memory : memory);
    em_budget_set_timeout(h->budget, em_budget_timeout_for(d->batch_timeout_ms, d->batch_interval_ms,
                                                           timeout, h->cfg->batch_interval_ms));
}

em_luahost *em_luahost_load(const char *path, const em_config *cfg, char *err, size_t errlen)
{
    em_luahost *h = calloc(1, sizeof *h);
    if (!h || !(h->L = em_budget_newstate(&h->budget))) {
        snprintf(err, errlen, "%s: cannot create a Lua state", path);
        free(h);
        return NULL;
    }
    lua_State *L = h->L;
    h->cfg = cfg;
    /* The script runs under the driver's default budgets (desc.memory and
     * desc.batch_timeout_ms -1: none of its own yet); the job's own
     * options apply from its first batch. */
    em_budget_set_job_file(h->budget, path);
    h->desc.memory = h->desc.batch_timeout_ms = -1;
    apply_budgets(h);
    luaL_openlibs(L);
    prepend_path(L);
    lua_getglobal(L, "require");
    lua_pushstring(L, "ember.runtime");
    if (lua_pcall(L, 1, 1, 0) != 0) {
        snprintf(err, errlen, "%s: cannot load the ember Lua runtime from %s: %s", path, lua_dir,
                 lua_tostring(L, -1));
        em_luahost_free(h);
        return NULL;
    }
    lua_getfield(L, -1, "load");
    lua_pushstring(L, path);
    lua_createtable(L, 0, 8);
    lua_pushlightuserdata(L, h);
    lua_pushcclosure(L, host_stopped_by, 1);
    lua_setfield(L, -2, "stopped_by");
    lua_pushcfunction(L, host_log);
    lua_setfield(L, -2, "log");
    lua_pushstring(L, cfg->checkpoint_dir);
    lua_setfield(L, -2, "checkpoint_dir");
    lua_pushnumber(L, (lua_Number)cfg->state_max);
    lua_setfield(L, -2, "state_max");
    lua_pushinteger(L, cfg->state_snapshot_interval);
    lua_setfield(L, -2, "snapshot_interval");
    lua_pushinteger(L, cfg->pool_size);
    lua_setfield(L, -2, "pool_size");
    lua_pushnumber(L, (lua_Number)cfg->batch_interval_ms);
    lua_setfield(L, -2, "batch_interval_ms");
    lua_pushstring(L, path);
    lua_setfield(L, -2, "file");
    em_budget_begin(h->budget);
    int rc = lua_pcall(L, 2, 2, 0);
    char where[512];
    em_budget_breach breach = em_budget_end(h->budget, where, sizeof where);
    if (breach) {
        snprintf(err, errlen, "%s: loading the script %s (at %s)", path, breach == EM_BUDGET_TIMEOUT
                 ? "took longer than the batch timeout" : "reached the memory cap",
                 where[0] ? where : "an unknown line");
        em_luahost_free(h);
        return NULL;
    }
    if (rc != 0 || !lua_istable(L, -2)) {
        snprintf(err, errlen, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "unknown error");
        em_luahost_free(h);
        return NULL;
    }
    lua_pop(L, 1);
    int desc = lua_gettop(L);
    em_job_desc *d = &h->desc;
    field_string(L, desc, "name", d->name, sizeof d->name);
    field_string(L, desc, "on_error", d->on_error, sizeof d->on_error);
    field_string(L, desc, "disabled", d->disabled, sizeof d->disabled);
    field_string(L, desc, "state_version", d->state_version, sizeof d->state_version);
    lua_getfield(L, desc, "stateful");
    d->stateful = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, desc, "catch_up");
    d->catch_up = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (read_interval(L, desc, d, path, err, errlen) != 0 ||
        read_budgets(L, desc, d, path, err, errlen) != 0 ||
        read_sources(L, desc, d, err, errlen) != 0) {
        em_luahost_free(h);
        return NULL;
    }
    read_outputs(L, desc, d);
    read_tables(L, desc, d);
    lua_getfield(L, desc, "run_batch");
    if (!lua_isfunction(L, -1)) {
        snprintf(err, errlen, "%s: the runtime returned no run_batch", path);
        em_luahost_free(h);
        return NULL;
    }
    h->run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, desc);
    h->desc_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, 0);
    apply_budgets(h);
    return h;
}

static double mib(size_t bytes) { return (double)bytes / (1024.0 * 1024.0); }

/* A batch that broke a budget: say which, where, and by how much. */
static void breached(em_luahost *h, const em_batch_view *view, em_budget_breach why,
                     const char *where, em_batch_result *res)
{
    res->ok = 0;
    res->fatal = 1;
    const char *at = where[0] ? where : "a line the hook could not see";
    if (why == EM_BUDGET_TIMEOUT) {
        snprintf(res->stopped_by, sizeof res->stopped_by, "batch_timeout");
        snprintf(res->err, sizeof res->err,
                 "job '%s': batch %lld ran past its batch_timeout of %lld ms at %s (aborted %lld ms "
                 "after the deadline); the job is stopped until its file changes, and the "
                 "batch's records are not acknowledged",
                 h->desc.name, (long long)view->time_ms, (long long)em_budget_timeout(h->budget), at,
                 (long long)em_budget_overrun_ms(h->budget));
    } else {
        size_t wanted = em_budget_refused(h->budget);
        lua_gc(h->L, LUA_GCCOLLECT, 0);
        snprintf(res->stopped_by, sizeof res->stopped_by, "memory cap");
        snprintf(res->err, sizeof res->err,
                 "job '%s': batch %lld: its Lua state reached %.1f MiB, over its "
                 "memory cap of %.1f MiB, crossing it at %s (%.1f MiB still held after a full collection); the "
                 "job is stopped until its file changes, and the batch's records are not acknowledged",
                 h->desc.name, (long long)view->time_ms, mib(wanted),
                 mib((size_t)em_budget_memory(h->budget)), at, mib(em_budget_used(h->budget)));
    }
    em_log(EM_LOG_ERROR, h->desc.name, "%s", res->err);
}

em_job_desc *em_luahost_desc(em_luahost *h) { return &h->desc; }

void em_luahost_run_batch(em_luahost *h, const em_batch_view *view, uint64_t batch_id,
                          em_batch_result *res)
{
    lua_State *L = h->L;
    memset(res, 0, sizeof *res);
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->run_ref);
    lua_pushlightuserdata(L, (void *)view);
    lua_pushnumber(L, (lua_Number)batch_id);
    h->stopped_by[0] = '\0';
    apply_budgets(h);
    em_budget_begin(h->budget);
    int rc = lua_pcall(L, 2, 4, 0);
    char where[512];
    em_budget_breach why = em_budget_end(h->budget, where, sizeof where);
    if (why) {
        lua_settop(L, 0);
        breached(h, view, why, where, res);
        return;
    }
    if (rc != 0) {
        /* The runtime catches user errors; reaching here is a bug or out of memory. */
        snprintf(res->err, sizeof res->err, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "error");
        res->fatal = 1;
        lua_settop(L, 0);
        return;
    }
    res->ok = lua_toboolean(L, -4);
    res->failed = (int64_t)lua_tonumber(L, -3);
    if (lua_isstring(L, -2))
        snprintf(res->err, sizeof res->err, "%s", lua_tostring(L, -2));
    res->fatal = lua_toboolean(L, -1);
    if (res->fatal)
        snprintf(res->stopped_by, sizeof res->stopped_by, "%s", h->stopped_by);
    lua_settop(L, 0);
}

size_t em_luahost_memory_used(const em_luahost *h) { return em_budget_used(h->budget); }
int64_t em_luahost_memory_cap(const em_luahost *h) { return em_budget_memory(h->budget); }

/* Pushes desc[name] when it is a function; 0 (nothing pushed) otherwise.
 * A version without state has only restore: it archives what an older
 * version left. */
static int push_state_fn(em_luahost *h, const char *name)
{
    lua_State *L = h->L;
    if (!h->desc.stateful && strcmp(name, "restore") != 0)
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->desc_ref);
    lua_getfield(L, -1, name);
    lua_remove(L, -2);
    if (lua_isfunction(L, -1))
        return 1;
    lua_pop(L, 1);
    return 0;
}

/* Calls a state function pushed with nargs arguments that returns ok, err:
 * 0, or -1 and err. */
static int call_ok_err(em_luahost *h, const char *name, int nargs, int nres, char *err,
                       size_t errlen)
{
    lua_State *L = h->L;
    if (lua_pcall(L, nargs, nres, 0) != 0) {
        snprintf(err, errlen, "job '%s': %s: %s", h->desc.name, name,
                 lua_isstring(L, -1) ? lua_tostring(L, -1) : "error");
        lua_settop(L, 0);
        return -1;
    }
    if (!lua_toboolean(L, -nres)) {
        snprintf(err, errlen, "%s", lua_isstring(L, -nres + 1) ? lua_tostring(L, -nres + 1)
                                                               : "failed");
        lua_settop(L, 0);
        return -1;
    }
    return 0;
}

int em_luahost_prepare(em_luahost *h, uint64_t batch_id, uint64_t *bytes, char *err,
                       size_t errlen)
{
    *bytes = 0;
    if (!push_state_fn(h, "prepare"))
        return 0;
    lua_pushnumber(h->L, (lua_Number)batch_id);
    if (call_ok_err(h, "prepare", 1, 3, err, errlen) != 0)
        return -1;
    *bytes = (uint64_t)lua_tonumber(h->L, -1);
    lua_settop(h->L, 0);
    return 0;
}

void em_luahost_apply(em_luahost *h, uint64_t batch_id)
{
    if (!push_state_fn(h, "apply"))
        return;
    lua_pushnumber(h->L, (lua_Number)batch_id);
    lua_pushboolean(h->L, 1); /* later: em_luahost_maintain comes after the acks */
    if (lua_pcall(h->L, 2, 0, 0) != 0)
        em_log(EM_LOG_ERROR, h->desc.name, "state apply: %s", lua_tostring(h->L, -1));
    lua_settop(h->L, 0);
}

uint64_t em_luahost_maintain(em_luahost *h)
{
    if (!push_state_fn(h, "maintain"))
        return 0;
    uint64_t bytes = 0;
    if (lua_pcall(h->L, 0, 3, 0) != 0)
        em_log(EM_LOG_ERROR, h->desc.name, "state snapshot: %s", lua_tostring(h->L, -1));
    else {
        if (!lua_toboolean(h->L, -3))
            em_log(EM_LOG_ERROR, h->desc.name, "%s (the deltas still hold the state; a later "
                   "snapshot replaces this one)",
                   lua_isstring(h->L, -2) ? lua_tostring(h->L, -2) : "state snapshot failed");
        bytes = (uint64_t)lua_tonumber(h->L, -1);
    }
    lua_settop(h->L, 0);
    return bytes;
}

void em_luahost_abort(em_luahost *h)
{
    if (!push_state_fn(h, "abort"))
        return;
    if (lua_pcall(h->L, 0, 0, 0) != 0)
        em_log(EM_LOG_ERROR, h->desc.name, "state abort: %s", lua_tostring(h->L, -1));
    lua_settop(h->L, 0);
}

static int restore_like(em_luahost *h, const char *fn, uint64_t committed_id,
                        const char *old_state_version, char *err, size_t errlen)
{
    if (!push_state_fn(h, fn))
        return 0;
    lua_pushnumber(h->L, (lua_Number)committed_id);
    lua_pushstring(h->L, old_state_version);
    if (call_ok_err(h, fn, 2, 2, err, errlen) != 0)
        return -1;
    lua_settop(h->L, 0);
    return 0;
}

int em_luahost_restore(em_luahost *h, uint64_t committed_id, const char *old_state_version,
                       char *err, size_t errlen)
{
    return restore_like(h, "restore", committed_id, old_state_version, err, errlen);
}

int em_luahost_check_migrate(em_luahost *h, uint64_t committed_id,
                             const char *old_state_version, char *err, size_t errlen)
{
    return restore_like(h, "check_migrate", committed_id, old_state_version, err, errlen);
}

uint64_t em_luahost_state_bytes(em_luahost *h)
{
    if (!push_state_fn(h, "state_bytes"))
        return 0;
    uint64_t total = 0;
    if (lua_pcall(h->L, 0, 1, 0) == 0 && lua_istable(h->L, -1)) {
        lua_pushnil(h->L);
        while (lua_next(h->L, -2)) {
            total += (uint64_t)lua_tonumber(h->L, -1);
            lua_pop(h->L, 1);
        }
    }
    lua_settop(h->L, 0);
    return total;
}

int64_t em_luahost_late_records(em_luahost *h)
{
    if (!push_state_fn(h, "late_records"))
        return -1;
    int64_t n = -1;
    if (lua_pcall(h->L, 0, 1, 0) == 0 && lua_isnumber(h->L, -1))
        n = (int64_t)lua_tonumber(h->L, -1);
    lua_settop(h->L, 0);
    return n;
}

static int64_t field_int(lua_State *L, int t, const char *key)
{
    lua_getfield(L, t, key);
    int64_t v = lua_isnumber(L, -1) ? (int64_t)lua_tonumber(L, -1) : 0;
    lua_pop(L, 1);
    return v;
}

static int field_bool(lua_State *L, int t, const char *key)
{
    lua_getfield(L, t, key);
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* desc.table_status() gives one table per reference table; a job without
 * any never enters Lua here. */
size_t em_luahost_tables(em_luahost *h, em_table_status *out, size_t max)
{
    if (!h->desc.ntables)
        return 0;
    lua_State *L = h->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->desc_ref);
    lua_getfield(L, -1, "table_status");
    size_t n = 0;
    if (lua_isfunction(L, -1) && lua_pcall(L, 0, 1, 0) == 0 && lua_istable(L, -1)) {
        int t = lua_gettop(L);
        size_t len = lua_objlen(L, t);
        for (size_t i = 0; i < len && n < max; i++) {
            lua_rawgeti(L, t, (int)i + 1);
            int st = lua_gettop(L);
            em_table_status *e = &out[n++];
            memset(e, 0, sizeof *e);
            field_string(L, st, "name", e->name, sizeof e->name);
            field_string(L, st, "kind", e->kind, sizeof e->kind);
            field_string(L, st, "source", e->source, sizeof e->source);
            field_string(L, st, "where", e->where, sizeof e->where);
            field_string(L, st, "last_error", e->last_error, sizeof e->last_error);
            e->loaded = field_bool(L, st, "loaded");
            e->stale = field_bool(L, st, "stale");
            e->entries = field_int(L, st, "entries");
            e->last_load_ms = field_int(L, st, "last_load_ms");
            e->load_errors = field_int(L, st, "load_errors");
            lua_pop(L, 1);
        }
    } else if (lua_isstring(L, -1)) {
        em_log(EM_LOG_ERROR, h->desc.name, "table status: %s", lua_tostring(L, -1));
    }
    lua_settop(L, 0);
    return n;
}

void em_luahost_free(em_luahost *h)
{
    if (!h)
        return;
    if (h->L)
        lua_close(h->L);
    em_budget_free(h->budget); /* after lua_close, which frees through it */
    free_desc(&h->desc);
    free(h);
}

/* luahost.c — see luahost.h. */
#include "luahost.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

struct em_luahost {
    lua_State *L;
    int run_ref;
    int desc_ref; /* the runtime's job description: prepare, apply, ... */
    em_job_desc desc;
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
        s->conn = em_connector_find(type);
        if (!s->conn) {
            snprintf(err, errlen, "%s: unknown source type '%s' (this ember has: %s)", s->where,
                     type, em_connector_names());
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

static void free_desc(em_job_desc *d)
{
    for (size_t i = 0; d->sources && i < d->nsources; i++)
        em_props_clear(&d->sources[i].props);
    free(d->sources);
    free(d->outputs);
}

em_luahost *em_luahost_load(const char *path, const em_config *cfg, char *err, size_t errlen)
{
    em_luahost *h = calloc(1, sizeof *h);
    if (!h || !(h->L = luaL_newstate())) {
        snprintf(err, errlen, "%s: cannot create a Lua state", path);
        free(h);
        return NULL;
    }
    lua_State *L = h->L;
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
    lua_createtable(L, 0, 7);
    lua_pushcfunction(L, host_log);
    lua_setfield(L, -2, "log");
    lua_pushstring(L, cfg->checkpoint_dir);
    lua_setfield(L, -2, "checkpoint_dir");
    lua_pushnumber(L, (lua_Number)cfg->state_max);
    lua_setfield(L, -2, "state_max");
    lua_pushinteger(L, cfg->state_snapshot_interval);
    lua_setfield(L, -2, "snapshot_interval");
    lua_pushnumber(L, (lua_Number)cfg->batch_interval_ms);
    lua_setfield(L, -2, "batch_interval_ms");
    lua_pushstring(L, path);
    lua_setfield(L, -2, "file");
    if (lua_pcall(L, 2, 2, 0) != 0 || !lua_istable(L, -2)) {
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
    if (read_interval(L, desc, d, path, err, errlen) != 0 ||
        read_sources(L, desc, d, err, errlen) != 0) {
        em_luahost_free(h);
        return NULL;
    }
    read_outputs(L, desc, d);
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
    return h;
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
    if (lua_pcall(L, 2, 4, 0) != 0) {
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
    lua_settop(L, 0);
}

/* Pushes desc[name] when it is a function; 0 (nothing pushed) otherwise. */
static int push_state_fn(em_luahost *h, const char *name)
{
    lua_State *L = h->L;
    if (!h->desc.stateful)
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
    if (lua_pcall(h->L, 1, 0, 0) != 0)
        em_log(EM_LOG_ERROR, h->desc.name, "state apply: %s", lua_tostring(h->L, -1));
    lua_settop(h->L, 0);
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

void em_luahost_free(em_luahost *h)
{
    if (!h)
        return;
    if (h->L)
        lua_close(h->L);
    free_desc(&h->desc);
    free(h);
}

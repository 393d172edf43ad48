/* budget.c — see budget.h. */
#include "budget.h"

#include "bigcache.h"

#include <lauxlib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Least room a state over its cap still gets (see counting_alloc). */
#define SLACK (1u << 20)
/* Instructions a memory breach waits for the job's own code (see hook). */
#define WAIT_FOR_JOB 100000

struct em_budget {
    lua_State *L;
    lua_Alloc inner; /* LuaJIT's own allocator, which does the work */
    void *inner_ud;
    em_bigcache big; /* its large allocations, through malloc (bigcache.h) */
    size_t used, memory, refused;
    int64_t timeout_ms;
    int64_t deadline;       /* monotonic ms; 0: none; guarded by lock */
    int64_t due, overrun;   /* this batch's deadline; how late the last one unwound */
    atomic_int breach;      /* em_budget_breach */
    int running;            /* between begin and end (the state's own thread) */
    int job_wait;           /* hook calls left to find the job's own frame */
    int past_slack;         /* an allocation was refused this batch */
    char job_file[1024];
    char where[512];
    em_budget *prev, *next; /* the watched list, guarded by lock */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static em_budget *watched;
/* The registry key of a state's budget (a light userdata), for the hook. */
static const char budget_key;
/* The registry key of the metatable of a state's GC sentinel (gc_sentinel). */
static const char sentinel_key;
/* The batch this thread runs, for em_budget_wait_begin/end. */
static _Thread_local em_budget *current;
static _Thread_local int waits;
static _Thread_local int64_t wait_left, wait_since;

int64_t em_budget_timeout_for(int64_t timeout_ms, int64_t interval_ms, int64_t default_timeout_ms,
                              int64_t default_interval_ms)
{
    if (timeout_ms < 0)
        timeout_ms = default_timeout_ms;
    if (timeout_ms >= 0)
        return timeout_ms;
    if (interval_ms <= 0)
        interval_ms = default_interval_ms > 0 ? default_interval_ms : 1000;
    int64_t t = interval_ms * EM_BUDGET_INTERVALS;
    return t < EM_BUDGET_MIN_TIMEOUT_MS ? EM_BUDGET_MIN_TIMEOUT_MS : t;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The job's line the state is running: the innermost frame of the job's
 * own file (into b->where; 1), or 0 when no frame of it is on the stack. */
static int job_line(lua_State *L, em_budget *b)
{
    lua_Debug ar;
    for (int level = 0; b->job_file[0] && lua_getstack(L, level, &ar); level++) {
        if (!lua_getinfo(L, "Sl", &ar) || ar.currentline <= 0 || ar.source[0] != '@')
            continue;
        if (strcmp(ar.source + 1, b->job_file) == 0) {
            snprintf(b->where, sizeof b->where, "%s:%d", ar.source + 1, ar.currentline);
            return 1;
        }
    }
    return 0;
}

/* Else the innermost Lua frame with a line (the runtime's), said to be. */
static void any_line(lua_State *L, em_budget *b)
{
    lua_Debug ar;
    for (int level = 0; lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0 && ar.source[0] == '@') {
            snprintf(b->where, sizeof b->where, "%s:%d (ember's runtime, not the job's code)",
                     ar.source + 1, ar.currentline);
            return;
        }
    }
}

/* Raised at every instruction once a budget is breached, until the batch
 * has unwound to the host: a pcall in the job or the runtime catches one
 * error, and the next instruction raises the next.
 * A memory breach is often seen first in the runtime: a compiled trace
 * holding the job's function inlined allocates past the cap and runs on to
 * its loop's hook check, in the runtime's record loop, after the job's
 * function has returned. So the error waits, instruction by instruction,
 * for a frame of the job's own (the next record's call, in that loop), up
 * to WAIT_FOR_JOB instructions and never past the slack; then it names the
 * runtime's line. A timeout is raised where it is seen. */
static void hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_pushlightuserdata(L, (void *)&budget_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    em_budget *b = lua_touserdata(L, -1);
    lua_pop(L, 1);
    int why = atomic_load(&b->breach);
    if (!why || !b->running) { /* set for a batch that already ended */
        lua_sethook(L, NULL, 0, 0);
        return;
    }
    if (!b->where[0] && !job_line(L, b)) {
        if (why == EM_BUDGET_MEMORY && !b->past_slack && b->job_wait > 0) {
            b->job_wait--;
            return;
        }
        any_line(L, b);
    }
    lua_pushstring(L, why == EM_BUDGET_TIMEOUT ? "ember: the batch ran past its batch_timeout"
                                               : "ember: the job's memory cap was reached");
    lua_error(L);
}

/* Past the cap, an allocation is still granted within the slack (a
 * sixteenth of the cap, at least 1 MiB) and the hook is set: it fires at
 * the next instruction, in the job's own code, so the error names the
 * job's line and unwinds the batch. Past the slack, the allocation fails
 * (Lua's "not enough memory"), and the hook still unwinds the batch. */
static void *counting_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    em_budget *b = ud;
    if (nsize > osize && b->memory && b->used + (nsize - osize) > b->memory) {
        size_t want = b->used + (nsize - osize);
        size_t slack = b->memory / 16 > SLACK ? b->memory / 16 : SLACK;
        if (want > b->refused)
            b->refused = want;
        int none = EM_BUDGET_OK;
        if (atomic_compare_exchange_strong(&b->breach, &none, EM_BUDGET_MEMORY) && b->running)
            lua_sethook(b->L, hook, LUA_MASKCOUNT, 1);
        if (want > b->memory + slack) {
            b->past_slack = 1;
            return NULL;
        }
    }
    void *p = em_bigcache_realloc(&b->big, b->inner, b->inner_ud, ptr, osize, nsize);
    if (p || nsize == 0)
        b->used += nsize - osize; /* wraps correctly when shrinking */
    return p;
}

/* The watchdog: sleeps until the nearest deadline, then hooks every state
 * past its own. */
static void *watch(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&lock);
    for (;;) {
        int64_t now = mono_ms(), nearest = 0;
        for (em_budget *b = watched; b; b = b->next) {
            if (!b->deadline)
                continue;
            if (now >= b->deadline) {
                int none = EM_BUDGET_OK;
                if (atomic_compare_exchange_strong(&b->breach, &none, EM_BUDGET_TIMEOUT))
                    lua_sethook(b->L, hook, LUA_MASKCOUNT, 1);
                b->deadline = 0;
            } else if (!nearest || b->deadline < nearest) {
                nearest = b->deadline;
            }
        }
        if (!nearest) {
            pthread_cond_wait(&wake, &lock);
        } else {
            struct timespec ts = {(time_t)(nearest / 1000), (long)(nearest % 1000) * 1000000};
            pthread_cond_timedwait(&wake, &lock, &ts);
        }
    }
    return NULL;
}

static void start_watchdog(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&wake, &ca);
    pthread_condattr_destroy(&ca);
    pthread_t t;
    if (pthread_create(&t, NULL, watch, NULL) == 0) {
        pthread_setname_np(t, "budget");
        pthread_detach(t);
    }
}

static size_t gc_bytes(lua_State *L)
{
    return (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
}

int em_budget_gc_pause(size_t live)
{
    if (live < EM_BUDGET_GC_MARGIN)
        return 200; /* LuaJIT's default: a small heap may double */
    size_t margin = live / 5 > EM_BUDGET_GC_MARGIN ? live / 5 : EM_BUDGET_GC_MARGIN;
    return (int)(100 + (margin * 100 + live - 1) / live);
}

int em_budget_gc_stepmul(size_t live)
{
    size_t margin = live / 5 > EM_BUDGET_GC_MARGIN ? live / 5 : EM_BUDGET_GC_MARGIN;
    size_t m = live / margin * 100;
    return m < 200 ? 200 : m > 1000 ? 1000 : (int)m;
}

static void new_sentinel(lua_State *L)
{
    lua_newuserdata(L, 1);
    lua_pushlightuserdata(L, (void *)&sentinel_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_setmetatable(L, -2);
    lua_pop(L, 1);
}

/* The finalizer of an unreferenced userdata, so it runs once at the end of
 * every GC cycle, after the sweep: what the state holds then is about what
 * is live (plus what was allocated during the cycle). It sets the pause
 * that LuaJIT applies to that figure for the next cycle's threshold, then
 * makes the next sentinel. At lua_close, LuaJIT runs the finalizers a
 * bounded number of rounds and frees the last sentinel unfinalized. */
static int gc_sentinel(lua_State *L)
{
    lua_gc(L, LUA_GCSETPAUSE, em_budget_gc_pause(gc_bytes(L)));
    lua_gc(L, LUA_GCSETSTEPMUL, em_budget_gc_stepmul(gc_bytes(L)));
    new_sentinel(L);
    return 0;
}

lua_State *em_budget_newstate(em_budget **out)
{
    *out = NULL;
    em_budget *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    lua_State *L = luaL_newstate();
    if (!L) {
        free(b);
        return NULL;
    }
    b->L = L;
    b->inner = lua_getallocf(L, &b->inner_ud);
    lua_pushlightuserdata(L, (void *)&budget_key);
    lua_pushlightuserdata(L, b);
    lua_rawset(L, LUA_REGISTRYINDEX);
    lua_pushlightuserdata(L, (void *)&sentinel_key);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, gc_sentinel);
    lua_setfield(L, -2, "__gc");
    lua_rawset(L, LUA_REGISTRYINDEX);
    new_sentinel(L);
    /* From here on, for the state's whole life: what the big cache
     * allocated must go back through it. The count starts from LuaJIT's
     * own, which counts the same allocations. */
    b->used = gc_bytes(L);
    lua_setallocf(L, counting_alloc, b);
    *out = b;
    return L;
}

void em_budget_set_memory(em_budget *b, int64_t bytes) { b->memory = bytes > 0 ? (size_t)bytes : 0; }
void em_budget_set_timeout(em_budget *b, int64_t ms) { b->timeout_ms = ms > 0 ? ms : 0; }
int64_t em_budget_memory(const em_budget *b) { return (int64_t)b->memory; }
int64_t em_budget_timeout(const em_budget *b) { return b->timeout_ms; }
size_t em_budget_used(const em_budget *b) { return b->used; }
size_t em_budget_refused(const em_budget *b) { return b->refused; }
int64_t em_budget_overrun_ms(const em_budget *b) { return b->overrun; }

void em_budget_set_job_file(em_budget *b, const char *path)
{
    snprintf(b->job_file, sizeof b->job_file, "%s", path);
}

void em_budget_begin(em_budget *b)
{
    atomic_store(&b->breach, EM_BUDGET_OK);
    b->where[0] = '\0';
    b->refused = 0;
    b->past_slack = 0;
    b->job_wait = WAIT_FOR_JOB;
    b->running = 1;
    current = b;
    waits = 0;
    if (!b->timeout_ms)
        return;
    pthread_once(&once, start_watchdog);
    pthread_mutex_lock(&lock);
    b->deadline = b->due = mono_ms() + b->timeout_ms;
    b->prev = NULL;
    b->next = watched;
    if (watched)
        watched->prev = b;
    watched = b;
    pthread_cond_signal(&wake);
    pthread_mutex_unlock(&lock);
}

em_budget_breach em_budget_end(em_budget *b, char *where, size_t wherelen)
{
    if (b->timeout_ms) {
        pthread_mutex_lock(&lock);
        if (b->prev)
            b->prev->next = b->next;
        else
            watched = b->next;
        if (b->next)
            b->next->prev = b->prev;
        b->prev = b->next = NULL;
        b->deadline = 0;
        pthread_mutex_unlock(&lock);
    }
    /* No watchdog sets the hook after this point. */
    b->running = 0;
    current = NULL;
    em_budget_breach why = (em_budget_breach)atomic_load(&b->breach);
    if (why)
        lua_sethook(b->L, NULL, 0, 0);
    if (why == EM_BUDGET_TIMEOUT)
        b->overrun = mono_ms() - b->due;
    if (where)
        snprintf(where, wherelen, "%s", why ? b->where : "");
    return why;
}

void em_budget_wait_begin(void)
{
    em_budget *b = current;
    if (!b || waits++ || !b->timeout_ms)
        return;
    pthread_mutex_lock(&lock);
    wait_since = mono_ms();
    wait_left = b->deadline ? b->deadline - wait_since : 0; /* 0: already past */
    if (b->deadline)
        b->deadline = 0;
    pthread_mutex_unlock(&lock);
}

void em_budget_wait_end(void)
{
    em_budget *b = current;
    if (!b || !waits || --waits || !b->timeout_ms || !wait_left)
        return;
    pthread_mutex_lock(&lock);
    int64_t now = mono_ms();
    b->due += now - wait_since;
    b->deadline = now + wait_left;
    pthread_cond_signal(&wake);
    pthread_mutex_unlock(&lock);
}

void em_budget_free(em_budget *b)
{
    if (!b)
        return;
    em_bigcache_clear(&b->big);
    free(b);
}

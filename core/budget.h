/* budget.h — the memory cap and the batch deadline of one job's Lua state.
 *
 * Every job's state counts what it allocates (a wrapper around LuaJIT's own
 * allocator) and refuses to grow past its cap. Every batch runs against a
 * deadline watched by one thread; past it, the watchdog sets a count hook on
 * the state. LuaJIT is built with LUAJIT_ENABLE_CHECKHOOK (the Makefile), so
 * compiled loops see the hook too. The hook raises an error at every
 * instruction until the batch has unwound to the host, so no pcall in the
 * job or the runtime can swallow it. docs/internals.md, "Budgets".
 */
#ifndef EMBER_BUDGET_H
#define EMBER_BUDGET_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

typedef enum em_budget_breach {
    EM_BUDGET_OK = 0,
    EM_BUDGET_TIMEOUT, /* the batch ran past its deadline */
    EM_BUDGET_MEMORY,  /* the state would have grown past its cap */
} em_budget_breach;

typedef struct em_budget em_budget;

/* Defaults for jobs that set no `memory` / `batch_timeout` option come from
 * the runtime's configuration (core/luahost.c reads them there):
 * streaming.job.memory (bytes, 0: no cap) and streaming.job.batchTimeout
 * (ms; 0: no deadline; -1: the job's batch interval times
 * EM_BUDGET_INTERVALS, at least EM_BUDGET_MIN_TIMEOUT_MS), read there
 * before every batch, so a SIGHUP that changes them reaches running jobs. */
#define EM_BUDGET_INTERVALS 10
#define EM_BUDGET_MIN_TIMEOUT_MS 30000
/* The deadline of a job whose option is timeout_ms (-1: not set) and
 * whose batch interval is interval_ms (0: not set); the defaults are the
 * runtime's streaming.job.batchTimeout (-1: none set) and
 * streaming.batchInterval. 0: none. */
int64_t em_budget_timeout_for(int64_t timeout_ms, int64_t interval_ms, int64_t default_timeout_ms,
                              int64_t default_interval_ms);

/* A fresh Lua state (luaL_newstate) whose allocations are counted in a new
 * budget; NULL when out of memory. The cap starts at 0 (none). */
lua_State *em_budget_newstate(em_budget **out);
void em_budget_set_memory(em_budget *b, int64_t bytes); /* 0: no cap */
void em_budget_set_timeout(em_budget *b, int64_t ms);   /* 0: no deadline */
int64_t em_budget_memory(const em_budget *b);
int64_t em_budget_timeout(const em_budget *b);
size_t em_budget_used(const em_budget *b); /* bytes the state holds now */
/* Where the scripts of lua/ live: frames there are not "the job's line". */
void em_budget_set_job_file(em_budget *b, const char *path);

/* Around one batch (or one load): arms the deadline and the cap. end
 * returns what was breached, with the job's source line that was running
 * (file:line, or "") in where. */
void em_budget_begin(em_budget *b);
em_budget_breach em_budget_end(em_budget *b, char *where, size_t wherelen);
/* Around a wait on a sink's server (a pooled connection, replies,
 * confirms, delivery reports) on the thread running a batch: the deadline
 * stops meanwhile. Those waits have timeouts of their own, and a batch
 * that waits out a broker's outage must be retried, not stopped as a
 * runaway. They nest; outside a batch they do nothing. */
void em_budget_wait_begin(void);
void em_budget_wait_end(void);
/* The most the state would have held when the cap was hit. */
size_t em_budget_refused(const em_budget *b);
/* How long after its deadline the last timed-out batch had unwound (ms). */
int64_t em_budget_overrun_ms(const em_budget *b);

/* The GC policy of a job's state: after every cycle, the pause (percent
 * of the live bytes the heap may reach before the next cycle) for a heap
 * holding live bytes. LuaJIT's 200 for a small heap; from
 * EM_BUDGET_GC_MARGIN of live data on, the heap may grow past live by
 * that margin or a fifth of live, whichever is more, so garbage does not
 * double a large keyed state. The step multiplier grows with live over
 * that margin (200 to 1000), so a cycle over a large heap ends before it
 * has allocated much more than the margin. A finalizer run at the end of
 * every cycle applies both. docs/internals.md, "Memory". */
#define EM_BUDGET_GC_MARGIN (16u << 20)
int em_budget_gc_pause(size_t live);
int em_budget_gc_stepmul(size_t live);

/* After lua_close of its state. Accepts NULL. */
void em_budget_free(em_budget *b);

#endif

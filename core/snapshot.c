/* snapshot.c — see snapshot.h. */
#include "snapshot.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"
#include "clock.h"

struct em_snapshot_slot {
    pthread_mutex_t lock; /* held for a pointer swap only */
    em_snapshot *cur;
};

em_snapshot *em_snapshot_new(size_t njobs, size_t nbroken)
{
    em_snapshot *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    atomic_init(&s->refs, 1);
    s->jobs = calloc(njobs ? njobs : 1, sizeof *s->jobs);
    s->broken = calloc(nbroken ? nbroken : 1, sizeof *s->broken);
    if (!s->jobs || !s->broken) {
        free(s->jobs);
        free(s->broken);
        free(s);
        return NULL;
    }
    return s;
}

em_snapshot *em_snapshot_ref(em_snapshot *s)
{
    if (s)
        atomic_fetch_add(&s->refs, 1);
    return s;
}

void em_snapshot_unref(em_snapshot *s)
{
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    for (size_t i = 0; i < s->njobs; i++) {
        free(s->jobs[i].receivers);
        free(s->jobs[i].outputs);
        em_history_free(s->jobs[i].history);
    }
    free(s->jobs);
    free(s->broken);
    free(s->pools);
    free(s);
}

const em_snap_job *em_snapshot_job(const em_snapshot *s, const char *name)
{
    for (size_t i = 0; s && i < s->njobs; i++)
        if (strcmp(s->jobs[i].name, name) == 0)
            return &s->jobs[i];
    return NULL;
}

em_snapshot_slot *em_snapshot_slot_create(void)
{
    em_snapshot_slot *slot = calloc(1, sizeof *slot);
    if (slot)
        pthread_mutex_init(&slot->lock, NULL);
    return slot;
}

void em_snapshot_slot_put(em_snapshot_slot *slot, em_snapshot *s)
{
    pthread_mutex_lock(&slot->lock);
    em_snapshot *old = slot->cur;
    slot->cur = s;
    pthread_mutex_unlock(&slot->lock);
    em_snapshot_unref(old);
}

em_snapshot *em_snapshot_slot_get(em_snapshot_slot *slot)
{
    pthread_mutex_lock(&slot->lock);
    em_snapshot *s = em_snapshot_ref(slot->cur);
    pthread_mutex_unlock(&slot->lock);
    return s;
}

void em_snapshot_slot_free(em_snapshot_slot *slot)
{
    if (!slot)
        return;
    em_snapshot_unref(slot->cur);
    pthread_mutex_destroy(&slot->lock);
    free(slot);
}

static const char *state_name(const em_job *j)
{
    switch (j->state) {
    case EM_JOB_RUNNING:
        return j->paused ? "paused" : "running";
    case EM_JOB_REMOVING:
        return "removing";
    case EM_JOB_RETIRED:
        return "retired";
    case EM_JOB_FAILED:
        return "failed";
    case EM_JOB_STOPPING:
        return "stopping";
    case EM_JOB_STOPPED:
        return "stopped";
    }
    return "unknown";
}

/* FNV-1a of the script text: a version a person can compare. */
static void script_hash(const char *s, char out[17])
{
    uint64_t h = 1469598103934665603ULL;
    for (; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

static int fill_job(em_snap_job *o, em_job *j, em_scheduler *sched)
{
    em_version *v = j->version;
    snprintf(o->name, sizeof o->name, "%s", j->name);
    snprintf(o->path, sizeof o->path, "%s", j->path);
    o->state = state_name(j);
    script_hash(j->script, o->version);
    o->loaded_ms = v->reload_ms;
    o->batch_interval_ms = v->batch_interval_ms;
    snprintf(o->on_error, sizeof o->on_error, "%s", v->desc->on_error);
    snprintf(o->state_version, sizeof o->state_version, "%s", v->desc->state_version);
    o->waiting = em_scheduler_pending(sched, j);
    o->held = j->held;
    o->paused = j->paused;
    o->reload_pending = j->next != NULL;
    o->blocked = j->blocked;
    o->nrecovered = j->nrecovered - j->recovered_pos;
    o->receivers = calloc(v->nreceivers ? v->nreceivers : 1, sizeof *o->receivers);
    o->outputs = calloc(v->desc->noutputs ? v->desc->noutputs : 1, sizeof *o->outputs);
    if (!o->receivers || !o->outputs)
        return -1;
    for (size_t i = 0; i < v->nreceivers; i++) {
        em_snap_receiver *r = &o->receivers[i];
        r->id = (int)i + 1;
        snprintf(r->kind, sizeof r->kind, "%s", em_receiver_connector(v->receivers[i]));
        snprintf(r->describe, sizeof r->describe, "%s", em_receiver_describe(v->receivers[i]));
        snprintf(r->where, sizeof r->where, "%s", v->desc->sources[i].where);
        r->acknowledges = em_receiver_acknowledges(v->receivers[i]);
        em_receiver_get_stats(v->receivers[i], &r->st);
        o->rate += r->st.rate;
        if (i > 0 && (o->max_rate <= 0 || r->st.max_rate <= 0))
            o->max_rate = 0; /* one source without a cap: the job has none */
        else
            o->max_rate += r->st.max_rate;
    }
    o->nreceivers = v->nreceivers;
    for (size_t i = 0; i < v->desc->noutputs; i++) {
        snprintf(o->outputs[i].kind, sizeof o->outputs[i].kind, "%s", v->desc->outputs[i].kind);
        snprintf(o->outputs[i].where, sizeof o->outputs[i].where, "%s", v->desc->outputs[i].where);
    }
    o->noutputs = v->desc->noutputs;
    o->history = em_history_ref(j->history);
    if (j->history)
        em_history_summary(j->history, &o->sum);
    return 0;
}

em_snapshot *em_snapshot_build(em_job *const *jobs, size_t njobs, em_scheduler *sched,
                               size_t nbroken)
{
    em_snapshot *s = em_snapshot_new(njobs, nbroken);
    if (!s)
        return NULL;
    s->taken_ms = em_clock_now_ms();
    s->memory_used = em_block_total_bytes();
    for (size_t i = 0; i < njobs; i++) {
        if (jobs[i]->state == EM_JOB_RETIRED)
            continue;
        if (fill_job(&s->jobs[s->njobs++], jobs[i], sched) != 0) {
            em_snapshot_unref(s);
            return NULL;
        }
    }
    s->nbroken = nbroken;
    size_t npools = em_pool_list(NULL, 0);
    s->pools = calloc(npools ? npools : 1, sizeof *s->pools);
    if (s->pools) {
        size_t n = em_pool_list(s->pools, npools);
        s->npools = n < npools ? n : npools;
    }
    s->state = "running";
    return s;
}

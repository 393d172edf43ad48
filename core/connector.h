/* connector.h — the one shape every source shares.
 *
 * In the spirit of Fluent Bit's input plugins: a connector is a struct of
 * callbacks plus its options declared as data. The core never knows which
 * system it talks to. A receiver thread calls poll() only while its rate
 * limiter has tokens, so a connector that reads only inside poll() gets
 * backpressure for free: the sender feels it through TCP or the broker.
 */
#ifndef EMBER_CONNECTOR_H
#define EMBER_CONNECTOR_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "props.h"

struct em_receiver;
struct em_block;

typedef struct em_connector {
    const char *name;            /* as the Lua source is called: "generator", "socket", ... */
    const em_option *options;    /* terminated by {NULL}; max_rate is handled by the core */
    const char *const *prefixes; /* pass-through key prefixes ("kafka."), NULL-terminated; may be NULL */

    /* Builds the connector's state from validated props. Must not block on
     * the network: connecting happens in poll(), which may retry. Returns
     * NULL and fills err on a bad setting. */
    void *(*create)(const em_props *props, struct em_receiver *r, char *err, size_t errlen);

    /* Reads at most max records, waiting at most timeout_ms, handing each to
     * em_receiver_push(). Returns the number pushed, or -1 on a fault the core
     * should log and back off from (the connector reconnects on its next call).
     * Returns -2 when the source is exhausted for good (a generator's count). */
    int (*poll)(void *self, struct em_receiver *r, uint32_t max, int timeout_ms);

    /* Optional. Every output of a batch holding these blocks of this receiver
     * finished (ok = 1) or failed (ok = 0). Where acks and offsets are released. */
    void (*batch_done)(void *self, struct em_block *const *blocks, size_t n, int ok);

    /* Optional. Called from the receiver thread when it starts and stops
     * waiting for tokens, for sources whose broker needs telling. */
    void (*pause)(void *self);
    void (*resume)(void *self);

    /* Optional. The receiver is stopping: push every record the connector
     * has already read into its own buffers, without reading more, so a
     * graceful stop or a reload loses none of them. */
    void (*flush)(void *self, struct em_receiver *r);

    void (*free)(void *self); /* accepts NULL */

    /* Optional, for exactly-once state: writes to out, one line each, the
     * positions these blocks of one batch end at, in the form resume_from()
     * reads back (Kafka: "<topic> <partition> <next offset>"). They go into
     * the job's checkpoint with the batch's state, before any ack. Called
     * from a worker. */
    void (*positions)(void *self, struct em_block *const *blocks, size_t n, FILE *out);

    /* Optional. Before the receiver starts: resume from the positions of
     * the job's checkpoint (lines positions() wrote) rather than from what
     * the broker last heard, so records whose state is committed are not
     * applied again. */
    void (*resume_from)(void *self, const char *positions);

    /* Optional. 1 when the source itself redelivers what was not
     * acknowledged (Kafka, RabbitMQ, Redis lists and streams), so the
     * write-ahead log is not needed; absent or 0: the WAL covers it. */
    int (*acknowledges)(void *self);

    /* Optional, for a connector that keeps a job's keyed state in its
     * broker (Kafka's changelog): called in the commit of each batch of a
     * stateful job of one of its sources, after the state's files are
     * prepared and before the checkpoint and the acks. positions: what
     * positions() wrote for the batch. 0, or -1 and err: the batch is not
     * committed and runs again. */
    int (*commit_state)(const char *job, const char *positions, uint64_t batch_id, char *err,
                        size_t errlen);
} em_connector;

/* A connector by name, or NULL with the reason in err (unknown, or its
 * module would not load). The broker connectors live in modules loaded on
 * first use (core/connectors.c). */
const em_connector *em_connector_get(const char *name, char *err, size_t errlen);
/* The connector's module is loaded (or it is built in): 0, or -1 and err.
 * Lua calls it before it reaches a module's functions through ffi.C. */
int em_connector_load(const char *name, char *err, size_t errlen);

#endif

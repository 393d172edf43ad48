/* identity.h — who this driver is among the drivers sharing a job's groups.
 *
 * Several drivers may run the same jobs against the same brokers (a Kafka
 * consumer group, a Redis stream group, RabbitMQ competing consumers). Each
 * one needs a name the brokers and the logs can tell apart (ember.id), and
 * its own checkpoint.dir: the dead letters, write-ahead logs and
 * checkpoints there belong to one process. The id is set once at start,
 * before any thread, and read from anywhere after.
 */
#ifndef EMBER_IDENTITY_H
#define EMBER_IDENTITY_H

#include <stddef.h>

/* A default id: the host name and a short hash of the checkpoint folder's
 * absolute path ("web1-3f2a9c1b"), so two drivers on one host with their
 * own folders differ, and a restart on the same folder keeps its id. */
void em_identity_default(const char *checkpoint_dir, char *out, size_t len);
/* 0 when id is 1-64 of [A-Za-z0-9._-] (what Kafka accepts in a
 * group.instance.id); -1 otherwise. */
int em_identity_valid(const char *id);
/* Sets the id every module reads (log lines, connectors). */
void em_identity_set(const char *id);
/* The id set; "ember" before em_identity_set. */
const char *em_identity_id(void);

/* Takes checkpoint.dir for this process: creates the folder, then holds an
 * exclusive flock on <dir>/.lock for the life of the process (the kernel
 * drops it when the process dies, kill -9 included), and writes this pid
 * and id into it. -1 and err naming the driver that holds it when another
 * process does. */
int em_identity_lock(const char *checkpoint_dir, char *err, size_t errlen);

#endif

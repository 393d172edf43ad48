/* control.h — commands for the main thread, posted from any thread.
 *
 * The HTTP thread never reloads or stops a job itself: it posts a command
 * here and waits (with a deadline) for the main thread's answer. The main
 * thread polls control_fd() (an eventfd) beside its signalfd, so a command
 * and a signal are handled the same way, one at a time.
 */
#ifndef EMBER_CONTROL_H
#define EMBER_CONTROL_H

#include <stddef.h>

#include "driver.h"

typedef struct em_control em_control;

/* What the main thread does with a command: 0 done, -1 no such job, 1 not
 * allowed in the job's state; msg says what happened. */
typedef int (*em_control_exec)(em_driver_command cmd, const char *job, char *msg, size_t len,
                               void *arg);

em_control *em_control_create(void);
int em_control_fd(const em_control *c);
/* Posts a command and waits up to timeout_ms for its result. Returns the
 * exec result, or -2 on timeout (the command still runs) or out of memory. */
int em_control_call(em_control *c, em_driver_command cmd, const char *job, int timeout_ms,
                    char *msg, size_t len);
/* Main thread: runs every queued command through exec. */
void em_control_run(em_control *c, em_control_exec exec, void *arg);
void em_control_free(em_control *c); /* accepts NULL */

#endif

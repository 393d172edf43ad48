/* failpoint.h — named points where a test may make the driver die.
 *
 * EMBER_FAILPOINT=<name>:<n> kills the process with SIGKILL the n-th time
 * it passes em_failpoint("<name>"), so a spec can crash it at an exact
 * place no timing could hit reliably (between a batch's commit and its
 * acknowledgements, say). Unset, a pass costs one branch on a cached flag.
 * Points: "after_commit" (a batch with records: its checkpoint renamed,
 * nothing released yet); "changelog_before_marker" (a stateful job's
 * changelog records of a batch acknowledged by the cluster, its markers not
 * written: connectors/kafka_changelog.c).
 *
 * A point may instead fail an operation once, the n-th time it is passed
 * (em_failpoint_fails): "receiver_refuses" (em_receiver_push_many takes
 * nothing, as when out of memory, so a spec can check what each source
 * does with a refused record).
 */
#ifndef EMBER_FAILPOINT_H
#define EMBER_FAILPOINT_H

void em_failpoint(const char *name);

/* Whether EMBER_FAILPOINT names this point (and has passes left): for a
 * point that needs work done before it to mean anything (a flush). */
int em_failpoint_armed(const char *name);

/* 1 the n-th time this point is passed (logged), else 0. */
int em_failpoint_fails(const char *name);

#endif

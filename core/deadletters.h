/* deadletters.h — `ember dead-letters JOB`: lists a job's dead letters or
 * replays them (lua/ember/dead_letters.lua does the work). */
#ifndef EMBER_DEADLETTERS_H
#define EMBER_DEADLETTERS_H

/* argv after "dead-letters": [--config FILE] [--conf k=v]... JOB
 * [--json | --replay-to FILE]. Returns the exit code. */
int em_dead_letters_main(int argc, char **argv);

#endif

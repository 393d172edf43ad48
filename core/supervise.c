/* supervise.c — see supervise.h. */
#include "supervise.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"

#define FIRST_DELAY_MS 1000
#define MAX_DELAY_MS 30000
#define HEALTHY_MS 60000 /* a driver up this long: the next crash backs off from the start */

/* Forks the driver. In the child: its parent's death sends SIGTERM, the
 * signal mask is the one the parent had, and it returns 0. The parent gets
 * the child's pid, or -1. */
static pid_t start(const sigset_t *old, pid_t parent)
{
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) /* the parent died before prctl */
            _exit(0);
        sigprocmask(SIG_SETMASK, old, NULL);
        return 0;
    }
    return pid;
}

/* Waits for a signal up to ms (or without end when ms < 0); 0 when none. */
static int next_signal(const sigset_t *set, int64_t ms)
{
    siginfo_t si;
    int sig;
    if (ms < 0) {
        sig = sigwaitinfo(set, &si);
    } else {
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
        sig = sigtimedwait(set, &si, &ts);
    }
    return sig < 0 ? 0 : sig;
}

void em_supervise(void)
{
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, &old);
    pid_t self = getpid();
    int64_t delay = FIRST_DELAY_MS;
    int stopping = 0;
    for (;;) {
        int64_t started = em_clock_mono_ms();
        pid_t child = start(&old, self);
        if (child == 0)
            return;
        if (child < 0) {
            em_log(EM_LOG_ERROR, NULL, "--supervise: cannot start the driver: %s",
                   strerror(errno));
            exit(1);
        }
        em_log(EM_LOG_INFO, NULL, "--supervise: driver started (pid %ld; this supervisor is pid "
               "%ld)", (long)child, (long)self);
        int status = 0;
        for (;;) { /* pass signals on until the driver is gone */
            int sig = next_signal(&set, -1);
            if (sig && sig != SIGCHLD) {
                stopping |= sig != SIGHUP;
                kill(child, sig);
            }
            pid_t r = waitpid(child, &status, WNOHANG);
            if (r == child || (r < 0 && errno == ECHILD))
                break;
        }
        int code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
        int crashed = WIFSIGNALED(status) || code == 1;
        if (stopping || !crashed) {
            if (WIFSIGNALED(status))
                em_log(EM_LOG_INFO, NULL, "--supervise: the driver ended by %s",
                       strsignal(WTERMSIG(status)));
            exit(code);
        }
        if (em_clock_mono_ms() - started >= HEALTHY_MS)
            delay = FIRST_DELAY_MS;
        char why[64];
        if (WIFSIGNALED(status))
            snprintf(why, sizeof why, "died of %s", strsignal(WTERMSIG(status)));
        else
            snprintf(why, sizeof why, "exited with status %d", code);
        em_log(EM_LOG_WARN, NULL, "--supervise: the driver (pid %ld) %s; starting it again in "
               "%lld ms, its jobs resume from their checkpoints", (long)child, why,
               (long long)delay);
        /* the backoff, during which a stop still ends the supervisor */
        int64_t until = em_clock_mono_ms() + delay;
        for (int64_t left = delay; left > 0; left = until - em_clock_mono_ms()) {
            int sig = next_signal(&set, left);
            if (sig == SIGTERM || sig == SIGINT) {
                em_log(EM_LOG_INFO, NULL, "--supervise: %s while the driver was down: stopping",
                       strsignal(sig));
                exit(0);
            }
        }
        delay = delay * 2 > MAX_DELAY_MS ? MAX_DELAY_MS : delay * 2;
    }
}

/* cli.h — the commands that talk to a running driver: status, reload, stop.
 *
 * They reach it through its HTTP API (ui.host:ui.port, with ui.token), read
 * from the same ember.conf and --conf flags as `ember run`; where the API
 * cannot be reached, reload and stop fall back to a signal to the process
 * named in the PID file (run.pidFile), so nobody needs pgrep.
 */
#ifndef EMBER_CLI_H
#define EMBER_CLI_H

#include "config.h"

/* `ember status [--watch]`: the driver's text view, every 2 s with --watch. */
int em_cli_status(const em_config *c, int watch);
/* `ember reload`. */
int em_cli_reload(const em_config *c);
/* `ember stop [JOB]`: one job through the API, or the driver (SIGTERM). */
int em_cli_stop(const em_config *c, const char *job);

/* The PID file `ember run` writes: its pid, and on a second line the port
 * its HTTP server took (0 until known), so the commands above find a driver
 * whose ui.port moved on from a port in use. 0, or -1 and err when another
 * live ember holds it. */
int em_pidfile_write(const char *path, int port, char *err, size_t errlen);
void em_pidfile_remove(const char *path);

#endif

/* http.h — the embedded HTTP server (libmicrohttpd) on its own thread.
 *
 * Serves the API (api.h), /metrics (metrics.h), /healthz, /readyz and the
 * web page at / from the snapshots the driver publishes; control calls
 * (POST) are posted to the main thread (control.h) and need the token when
 * ui.token is set. docs/http.md is the reference.
 */
#ifndef EMBER_HTTP_H
#define EMBER_HTTP_H

#include <stddef.h>

#include "api.h"
#include "control.h"
#include "driver.h"

typedef struct em_http em_http;

/* Listens on host:port (port 0: any free port) and starts the thread. NULL
 * and err when the address cannot be used. */
em_http *em_http_start(const char *host, int port, em_driver *d, em_control *ctl, char *err,
                       size_t errlen);
int em_http_port(const em_http *h);
/* Run-time settings (a SIGHUP may change them). */
void em_http_configure(em_http *h, const char *token, const em_health_limits *lim);
void em_http_stop(em_http *h); /* accepts NULL */

/* Whether host names only loopback addresses (127.0.0.0/8, ::1). */
int em_http_host_is_loopback(const char *host);

/* The web page (ui/index.html, built into the binary by core/ui.c). */
extern const char em_ui_html[];
extern const unsigned int em_ui_html_len;

#endif

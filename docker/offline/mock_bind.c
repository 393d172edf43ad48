/* mock_bind.c — makes librdkafka's mock cluster (tools/kafka-mock)
 * reachable from other containers.
 *
 * The mock binds each broker to 127.0.0.1 on a port the kernel picks and
 * advertises that address in its metadata, so only clients in its own
 * network namespace could follow it. Preloaded into tools/kafka-mock
 * (LD_PRELOAD), this turns the first such bind into one on
 * EMBER_MOCK_LISTEN ("ip:port", the container's own address), the next
 * into ip:port+1 and so on: the mock then advertises an address every
 * container on the network reaches, and clients bootstrap from a fixed
 * port. Every other bind goes through unchanged.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

static int next_port;

/* "ip:port" into sin; 0, or -1 when the variable is unset or bad. */
static int listen_addr(struct sockaddr_in *sin)
{
    const char *spec = getenv("EMBER_MOCK_LISTEN");
    char ip[64];
    int port;
    if (!spec || sscanf(spec, "%63[^:]:%d", ip, &port) != 2 || port < 1 || port > 65535)
        return -1;
    memset(sin, 0, sizeof *sin);
    sin->sin_family = AF_INET;
    if (inet_pton(AF_INET, ip, &sin->sin_addr) != 1)
        return -1;
    if (!next_port)
        next_port = port;
    sin->sin_port = htons((unsigned short)next_port);
    return 0;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    static bind_fn real;
    if (!real)
        real = (bind_fn)dlsym(RTLD_NEXT, "bind");
    const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
    struct sockaddr_in to;
    if (addr && addr->sa_family == AF_INET && len >= sizeof *in &&
        in->sin_addr.s_addr == htonl(INADDR_LOOPBACK) && in->sin_port == 0 &&
        listen_addr(&to) == 0) {
        int rc = real(fd, (const struct sockaddr *)&to, sizeof to);
        if (rc == 0)
            next_port++;
        return rc;
    }
    return real(fd, addr, len);
}

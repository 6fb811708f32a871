/*
 * router_notify: sd_notify messages from the router to its service manager.
 *
 * A message is a few "KEY=value" lines sent as one datagram to the unix
 * socket named by $NOTIFY_SOCKET, which libsystemd's sd_notify handles
 * (abstract socket names, credentials). Sending is synchronous, from the
 * loop: it is a single datagram to a local socket, sent a handful of times
 * in the process's life (start, ready, stopping), never per request. A
 * datagram to a socket nobody reads fails at once; one to a manager whose
 * queue is full waits for it, which only a wedged PID 1 could cause.
 *
 * STATUS= text is one line: newlines in it are turned into spaces, since
 * each line of a message is a separate assignment. A failed send is logged
 * once (a wrong $NOTIFY_SOCKET would otherwise leave systemd waiting for
 * READY=1 until its start timeout, with no hint why).
 */
#include "router_notify.h"

#include "kvs_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

static int notify_failed; /* reported once */

/* Sends `head` followed by "STATUS=" and the formatted text. */
static void send_message(const char *head, const char *fmt, va_list ap)
{
    char msg[512];
    int n = snprintf(msg, sizeof(msg), "%sSTATUS=", head);
    if (n < 0 || (size_t)n >= sizeof(msg))
        return;
    vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    for (char *p = msg + n; *p != '\0'; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    int rc = sd_notify(0, msg);
    if (rc < 0 && !notify_failed) {
        notify_failed = 1;
        const char *where = getenv("NOTIFY_SOCKET");
        kvs_warn("cannot notify the service manager at NOTIFY_SOCKET=%s: %s (it does not learn "
                 "whether the node is ready)",
                 where ? where : "", strerror(-rc));
    }
}

void router_notify_status(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    send_message("", fmt, ap);
    va_end(ap);
}

void router_notify_ready(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    send_message("READY=1\n", fmt, ap);
    va_end(ap);
}

void router_notify_reloading(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    send_message("RELOADING=1\n", fmt, ap);
    va_end(ap);
}

void router_notify_stopping(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    send_message("STOPPING=1\n", fmt, ap);
    va_end(ap);
}

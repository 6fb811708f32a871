/*
 * router_notify: what the router tells a service manager about the node,
 * through the sd_notify protocol (systemd's Type=notify; the only file that
 * includes sd-daemon.h):
 *
 *   STATUS=...  a line `systemctl status` shows (start-up, serving, draining)
 *   READY=1     every local worker answers and clients are accepted
 *   RELOADING=1 a configuration reload began (READY=1 again when it ended)
 *   STOPPING=1  the node began its shutdown (draining clients)
 *
 * Without $NOTIFY_SOCKET (not started by systemd) every call does nothing.
 * Messages are sent in order by a thread of their own, so the caller's
 * loop never waits for a manager that does not read them.
 */
#ifndef ROUTER_NOTIFY_H
#define ROUTER_NOTIFY_H

/* STATUS=<text> alone. */
void router_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* READY=1 with STATUS=<text>, in one message. */
void router_notify_ready(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* RELOADING=1 with STATUS=<text>: a reload began; router_notify_ready
 * says it ended. */
void router_notify_reloading(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* STOPPING=1 with STATUS=<text>, in one message. */
void router_notify_stopping(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Waits until the messages queued so far are sent, at most wait_ms (the
 * manager may take none: see router_notify.c). */
void router_notify_flush(unsigned wait_ms);

#endif

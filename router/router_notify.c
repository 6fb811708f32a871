/*
 * router_notify: sd_notify messages from the router to its service manager.
 *
 * A message is a few "KEY=value" lines sent as one datagram to the unix
 * socket named by $NOTIFY_SOCKET, which libsystemd's sd_notify handles
 * (abstract socket names, credentials). A handful are sent in the
 * process's life (start, ready, reloads, stopping), never per request.
 *
 * sd_notify sends with a blocking sendmsg: to a manager whose queue is
 * full (net.unix.max_dgram_qlen datagrams, 10 by default, that it does
 * not read: a wedged PID 1, or any process a $NOTIFY_SOCKET names) it
 * waits for good. The master's loop must never wait on that: it restarts
 * workers, answers scrapes and takes SIGTERM. So messages go through a
 * queue of QUEUE_LEN to a thread of their own, which sends them in order;
 * the loop only takes a lock to queue one. Past a full queue the oldest
 * waiting message is dropped (logged once): the manager reads none of
 * them anyway. At exit the master waits a moment (router_notify_flush) for
 * the last ones, STOPPING=1 among them.
 *
 * STATUS= text is one line: newlines in it are turned into spaces, since
 * each line of a message is a separate assignment. A failed send is logged
 * once (a wrong $NOTIFY_SOCKET would otherwise leave systemd waiting for
 * READY=1 until its start timeout, with no hint why).
 */
#include "router_notify.h"

#include "kvs_log.h"

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#define QUEUE_LEN 16
#define MSG_MAX 512

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static char queue[QUEUE_LEN][MSG_MAX];
static unsigned q_head, q_len; /* under lock */
static int sending;            /* the thread is in sd_notify (under lock) */
static int started;            /* the thread runs (under lock) */
static int dropped_said;       /* a drop was logged (under lock) */
static int notify_failed;      /* a failed send was logged (the thread's) */

static void send_now(const char *msg)
{
    int rc = sd_notify(0, msg);
    if (rc < 0 && !notify_failed) {
        notify_failed = 1;
        const char *where = getenv("NOTIFY_SOCKET");
        kvs_warn("cannot notify the service manager at NOTIFY_SOCKET=%s: %s (it does not learn "
                 "whether the node is ready)",
                 where ? where : "", strerror(-rc));
    }
}

static void *sender(void *arg)
{
    char msg[MSG_MAX];
    (void)arg;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (q_len == 0)
            pthread_cond_wait(&changed, &lock);
        memcpy(msg, queue[q_head], sizeof(msg));
        q_head = (q_head + 1) % QUEUE_LEN;
        q_len--;
        sending = 1;
        pthread_mutex_unlock(&lock);
        send_now(msg); /* may wait for the manager: nobody waits for us */
        pthread_mutex_lock(&lock);
        sending = 0;
        pthread_cond_broadcast(&changed);
    }
    return NULL;
}

/* Starts the thread, with every signal blocked in it (they are the
 * loop's). Under lock. Returns 0, or -1 (then messages go out in line). */
static int start_sender(void)
{
    pthread_t t;
    pthread_attr_t at;
    sigset_t all, old;
    sigfillset(&all);
    if (pthread_attr_init(&at) != 0)
        return -1;
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&t, &at, sender, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&at);
    if (rc != 0)
        return -1;
    started = 1;
    return 0;
}

/* Queues `head` followed by "STATUS=" and the formatted text. */
static void send_message(const char *head, const char *fmt, va_list ap)
{
    char msg[MSG_MAX];
    if (getenv("NOTIFY_SOCKET") == NULL)
        return; /* not started by a service manager: sd_notify would do nothing */
    int n = snprintf(msg, sizeof(msg), "%sSTATUS=", head);
    if (n < 0 || (size_t)n >= sizeof(msg))
        return;
    vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
    for (char *p = msg + n; *p != '\0'; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    pthread_mutex_lock(&lock);
    if (!started && start_sender() != 0) {
        pthread_mutex_unlock(&lock);
        send_now(msg); /* no thread to be had: as sd_notify alone would */
        return;
    }
    if (q_len == QUEUE_LEN) { /* the manager takes none: the oldest goes */
        q_head = (q_head + 1) % QUEUE_LEN;
        q_len--;
        if (!dropped_said) {
            dropped_said = 1;
            kvs_warn("the service manager at NOTIFY_SOCKET=%s takes no notifications (%d are "
                     "waiting): dropping the oldest from now on",
                     getenv("NOTIFY_SOCKET"), QUEUE_LEN);
        }
    }
    memcpy(queue[(q_head + q_len) % QUEUE_LEN], msg, sizeof(msg));
    q_len++;
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
}

void router_notify_flush(unsigned wait_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += wait_ms / 1000;
    until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&lock);
    while (started && (q_len > 0 || sending))
        if (pthread_cond_timedwait(&changed, &lock, &until) != 0)
            break;
    pthread_mutex_unlock(&lock);
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

/*
 * router_liveness: the heartbeat a router process sends and what the
 * master reads of a silent one (router_liveness.h).
 *
 * The heartbeat is a send with MSG_DONTWAIT on the notify socket, never a
 * write that may block: the pipe's buffer holds tens of thousands of
 * beats, but a master stopped for long enough would otherwise freeze
 * every router process it supervises (the master copes with a stall of
 * its own: router_master_live.c restarts every clock after one).
 *
 * The kernel's view of a process comes from /proc/PID/status, whose
 * "State:" and "TracerPid:" lines say whether it is stopped and whether a
 * debugger holds it; one read of a small in-memory file, made only for a
 * child already past its timeout.
 */
#include "router_liveness.h"

#include "kvs_err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

uint64_t router_liveness_interval_ms(uint64_t timeout_ms)
{
    if (timeout_ms == 0)
        return 0;
    return timeout_ms / 4 > 0 ? timeout_ms / 4 : 1;
}

static int send_line(int fd, const char *line, size_t len)
{
    ssize_t n;
    do
        n = send(fd, line, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    /* A unix stream socket takes a line this short whole (one buffer) or
     * not at all: a part cannot happen. */
    return n == (ssize_t)len ? 0 : -EAGAIN;
}

int router_liveness_beat(int fd)
{
    static const char line[] = ROUTER_LIVENESS_LINE "\n";
    return send_line(fd, line, sizeof(line) - 1);
}

int router_liveness_reloading(int fd)
{
    static const char line[] = ROUTER_LIVENESS_RELOADING "\n";
    return send_line(fd, line, sizeof(line) - 1);
}

/* The value of the line "<key>:" of `text` (after its blanks), or NULL. */
static const char *status_field(const char *text, const char *key)
{
    size_t klen = strlen(key);
    for (const char *p = text; p != NULL && *p != '\0';) {
        if (strncmp(p, key, klen) == 0 && p[klen] == ':') {
            p += klen + 1;
            while (*p == ' ' || *p == '\t')
                p++;
            return p;
        }
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return NULL;
}

int router_liveness_parse_status(const char *text, router_proc_state_t *out)
{
    const char *state = status_field(text, "State");
    const char *tracer = status_field(text, "TracerPid");
    if (state == NULL || tracer == NULL || *state == '\0' || *state == '\n' || *tracer < '0' ||
        *tracer > '9')
        return KVS_EINVAL;
    char *end;
    errno = 0;
    long pid = strtol(tracer, &end, 10);
    if (errno != 0 || pid < 0 || (pid_t)pid != pid || (*end != '\n' && *end != '\0'))
        return KVS_EINVAL;
    out->state = *state;
    out->tracer = (pid_t)pid;
    out->ppid = 0;
    const char *ppid = status_field(text, "PPid");
    if (ppid != NULL && *ppid >= '0' && *ppid <= '9') {
        errno = 0;
        pid = strtol(ppid, &end, 10);
        if (errno == 0 && pid > 0 && (pid_t)pid == pid && (*end == '\n' || *end == '\0'))
            out->ppid = (pid_t)pid;
    }
    return 0;
}

int router_liveness_inspect(pid_t pid, router_proc_state_t *out)
{
    char path[48], text[4096];
    snprintf(path, sizeof(path), "/proc/%ld/status", (long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t len = 0;
    while (len < sizeof(text) - 1) {
        ssize_t n = read(fd, text + len, sizeof(text) - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int rc = -errno; /* ESRCH: it was reaped meanwhile */
            close(fd);
            return rc == -ESRCH ? -ENOENT : rc;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    text[len] = '\0'; /* TracerPid comes early: a cut tail does not matter */
    return router_liveness_parse_status(text, out);
}

router_live_verdict_t router_liveness_judge(router_live_t *l, pid_t pid, uint64_t now,
                                            uint64_t timeout_ms, router_inspect_fn inspect,
                                            router_proc_state_t *st)
{
    *st = (router_proc_state_t){.state = '?'};
    if (pid == l->killed || now < l->beat_ms || now - l->beat_ms < timeout_ms ||
        now < l->grace_until)
        return ROUTER_LIVE_OK;
    int rc = inspect(pid, st);
    if (rc != 0)
        *st = (router_proc_state_t){.state = '?'};
    if (rc == -ENOENT || st->state == 'Z' || st->state == 'X')
        return ROUTER_LIVE_EXITING;
    if (st->tracer > 0) {
        int said = l->traced == pid;
        l->traced = pid;
        return said ? ROUTER_LIVE_TRACED : ROUTER_LIVE_TRACED_NEW;
    }
    if (l->traced == pid) {
        l->traced = 0;
        l->beat_ms = now;
        return ROUTER_LIVE_RELEASED;
    }
    /* Unreadable (rc < 0 but not gone): its silence decides. */
    l->killed = pid;
    return ROUTER_LIVE_HUNG;
}

const char *router_liveness_state_name(char state, char *buf, size_t len)
{
    switch (state) {
    case 'R':
        return "running";
    case 'S':
        return "sleeping";
    case 'D':
        return "in uninterruptible sleep";
    case 'T':
        return "stopped by a signal";
    case 't':
        return "stopped by a debugger";
    case 'Z':
        return "exited";
    case '?':
        return "in a state unknown";
    default:
        snprintf(buf, len, "in state %c", state >= 0x21 && state < 0x7f ? state : '?');
        return buf;
    }
}

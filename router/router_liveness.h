/*
 * router_liveness: how the master tells a router process that hangs from
 * one that serves (router.liveness_timeout).
 *
 * A router process that hangs (stopped, looping, deadlocked) keeps its
 * listening sockets, so the kernel keeps handing it its share of new
 * connections (SO_REUSEPORT), and those clients wait for as long as it
 * hangs. So every router process that serves sends the master a heartbeat,
 * the line ROUTER_LIVENESS_LINE on its notify pipe (router_procs.h), from
 * a timer of its event loop every router_liveness_interval_ms: a loop that
 * stops turning stops the heartbeat. The master kills (SIGKILL) a serving
 * one that sent nothing for router.liveness_timeout and restarts it as it
 * restarts one that crashed (router_master_live.c), except while a debugger
 * traces it (router_liveness_inspect says so).
 *
 * Pure functions, besides router_liveness_beat (one send) and
 * router_liveness_inspect (one read of /proc).
 */
#ifndef ROUTER_LIVENESS_H
#define ROUTER_LIVENESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The heartbeat line, without its newline. */
#define ROUTER_LIVENESS_LINE "alive"

/* The line a router process sends before it reads a reloaded config
 * (SIGHUP), which may keep its loop busy for a while (a config file may
 * hold up to 64 MiB): the master judges it again once it beats after the
 * reload, or ROUTER_LIVENESS_RELOAD_GRACE_MS later, whichever is first. */
#define ROUTER_LIVENESS_RELOADING "reloading"
#define ROUTER_LIVENESS_RELOAD_GRACE_MS 60000

/* How often a router process sends its heartbeat for a liveness timeout
 * of `timeout_ms`: a quarter of it (at least 1 ms), so three beats may be
 * late or lost before the master gives up on it; 0 (no heartbeat) when
 * the timeout is 0 (off). */
uint64_t router_liveness_interval_ms(uint64_t timeout_ms);

/* Sends one heartbeat line on `fd` (the router process's notify pipe, a
 * socket) without ever blocking: a master too busy to read its pipe must
 * not stop the loop that beats. Returns 0, or a negative errno: -EAGAIN
 * when the pipe is full (the beat is lost: the master, which is not
 * reading, checks nobody meanwhile), -EPIPE once the master is gone. */
int router_liveness_beat(int fd);

/* Sends ROUTER_LIVENESS_RELOADING on `fd` the same way. */
int router_liveness_reloading(int fd);

/* What the kernel says of a process: its state letter (R running, S
 * sleeping, D uninterruptible sleep, T stopped by a signal, t stopped by
 * a debugger, Z zombie, ...), the pid of the process that traces it (0:
 * none) and its parent's (0: not said). */
typedef struct router_proc_state_s {
    char state;
    pid_t tracer;
    pid_t ppid;
} router_proc_state_t;

/* Parses the text of /proc/PID/status (its "State:" and "TracerPid:"
 * lines, and "PPid:" when it is there). Returns 0 and *out, or KVS_EINVAL
 * when either of the first two is missing or malformed. */
int router_liveness_parse_status(const char *text, router_proc_state_t *out);

/* Reads /proc/<pid>/status and parses it. Returns 0 and *out, or a
 * negative errno (-ENOENT: no such process any more) or KVS_EINVAL. The
 * master reads it only for a child that is past its timeout: an unreaped
 * child keeps its pid, so this is that child. */
int router_liveness_inspect(pid_t pid, router_proc_state_t *out);

/* Reads a process's state: router_liveness_inspect, or a test's stand-in. */
typedef int (*router_inspect_fn)(pid_t pid, router_proc_state_t *out);

/* What the master knows of one router process's liveness. Zeroed when
 * the process starts; beat_ms set to the loop time whenever it is heard
 * from (a heartbeat, its "listening" line). */
typedef struct router_live_s {
    uint64_t beat_ms;     /* loop time of its last sign of life */
    uint64_t grace_until; /* it reloads: not judged before this loop time (0: none) */
    pid_t traced;         /* its pid once found traced past its timeout (warned once) */
    pid_t killed;         /* its pid once judged hung (until it exits and restarts) */
} router_live_t;

typedef enum {
    ROUTER_LIVE_OK,         /* heard from within the timeout, or judged already */
    ROUTER_LIVE_EXITING,    /* silent, but exited: its exit is due */
    ROUTER_LIVE_TRACED_NEW, /* silent, and a debugger traces it: say so (once) */
    ROUTER_LIVE_TRACED,     /* silent, still traced: said already */
    ROUTER_LIVE_RELEASED,   /* the debugger let it go: its clock starts again */
    ROUTER_LIVE_HUNG,       /* kill it: l->killed is now its pid */
} router_live_verdict_t;

/* Judges router process `pid` (running, serving) at loop time `now`
 * against `timeout_ms` (> 0). Only a process silent for the timeout is
 * inspected: *st is then what `inspect` said of it (state '?' when it
 * could not say). A traced one is never HUNG; once its tracer is gone it
 * gets a whole timeout from `now` (RELEASED) before it may be. A process
 * judged HUNG is not judged again (OK) until *l is reset at its restart;
 * one within its reload grace (l->grace_until) is not judged either.
 * Updates *l. */
router_live_verdict_t router_liveness_judge(router_live_t *l, pid_t pid, uint64_t now,
                                            uint64_t timeout_ms, router_inspect_fn inspect,
                                            router_proc_state_t *st);

/* Words for a state letter in a log line: "stopped by a signal", ...;
 * "in state ?" style text for letters it does not know, written to buf. */
const char *router_liveness_state_name(char state, char *buf, size_t len);

#endif

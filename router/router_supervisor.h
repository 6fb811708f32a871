/*
 * router_supervisor: spawns and supervises child processes of the
 * kvs-router master, the way an nginx master keeps its workers: the local
 * kvs-node workers (one per local shard) and the router processes (one per
 * index, router.processes of them). The supervisor calls each child's id
 * its "shard"; for router processes it is the router index, and `what`
 * names the kind in log lines ("shard 2", "router 1").
 *
 * Each id gets one child, started with uv_spawn (fork+exec) as
 *
 *     exe args... [gen_flag G] --shard N        (id_flag, default "--shard")
 *
 * where G, with gen_flag set, counts the id's spawns from gen_base (gen_base
 * for the first, gen_base + 1 after its first restart, ...), so a child can
 * tell its generation apart from those before it (a supervisor that
 * replaces another starts where the other's count ended). stdin is
 * ignored and stdout/stderr inherited, so children log to the master's
 * stderr. Descriptors listed in
 * `inherit` are passed at the child fds they name (the lock file, a config
 * snapshot); with notify_fd set, each child gets a pipe there whose lines
 * reach on_line while it runs (a router process says "listening" on it). A worker that exits is
 * logged, reported through on_event and restarted after an exponential backoff (backoff_min_ms
 * doubling up to backoff_max_ms). A worker that stayed up stable_ms resets its backoff. A shard
 * that restarts crash_loop_limit times without one stable run is reported as crash-looping at ERROR
 * level on every further restart, and is retried every backoff_max_ms for as long as the router
 * runs.
 *
 * A worker that exits with fatal_status (kvs-node uses EX_CONFIG, 78: its
 * configuration can never work) is not restarted: restarting it would only
 * fail again. With report_fd set, each worker gets a pipe on that fd; what
 * it wrote there before exiting (kvs-node: the reason for a fatal exit) is
 * logged with the exit and kept for router_sup_report.
 *
 * With `detach`, every worker runs in its own session and process group
 * (UV_PROCESS_DETACHED), so a signal to the router's process group (a
 * terminal's Ctrl-C) reaches only the router, which then stops the workers
 * in order; workers must then die with their parent by themselves
 * (kvs-node --exit-with-parent sets PR_SET_PDEATHSIG).
 *
 * router_sup_hold starts a shutdown without stopping anyone yet: workers
 * that exit from then on are not restarted. router_sup_stop is the graceful
 * quit: no more restarts, SIGTERM to every worker, SIGKILL to stragglers
 * after stop_grace_ms, and `done` once every worker has been reaped and
 * every handle closed.
 *
 * The supervisor installs no signal handler (libuv's own SIGCHLD handling
 * aside); the router's main turns SIGTERM/SIGINT into router_sup_stop.
 * Single-threaded: every function runs on the loop's thread.
 */
#ifndef ROUTER_SUPERVISOR_H
#define ROUTER_SUPERVISOR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

typedef struct router_sup_s router_sup_t;

/* A worker changed state. Either it started (running = 1, exit_status =
 * term_signal = 0; router_sup_pid gives its pid), or it exited (running = 0;
 * exit_status and term_signal as libuv reports them: term_signal is the
 * signal that killed it, or 0 after a normal exit with exit_status).
 * Workers spawned by router_sup_start itself are not announced: they are
 * running when it returns 0. Every later restart and every exit, including
 * those caused by router_sup_stop, is. Never called from inside
 * router_sup_start or router_sup_stop, never after `done`. The callback may
 * call router_sup_pid and router_sup_stop. */
typedef void (*router_sup_event_cb)(void *arg, uint32_t shard, int running, int64_t exit_status,
                                    int term_signal);

/* router_sup_stop has finished: every worker has exited and every handle of
 * the supervisor is closed. router_sup_free may be called from here. */
typedef void (*router_sup_done_cb)(void *arg);

/* A running child of `shard` wrote `line` (NUL-terminated, without its
 * newline, at most 255 bytes: the rest of a longer line is dropped) on its
 * notify pipe. Only while the child runs: never after the exit event that
 * ends it. May call router_sup_pid and router_sup_stop. */
typedef void (*router_sup_line_cb)(void *arg, uint32_t shard, const char *line);

/* A descriptor every child gets: the master's parent_fd appears in the
 * child as child_fd (3..9). */
typedef struct router_sup_fd_s {
    int child_fd;
    int parent_fd;
} router_sup_fd_t;

typedef struct router_sup_opts_s {
    uv_loop_t *loop;
    /* Path of the worker binary (kvs-node): argv[0]. Copied. */
    const char *exe;
    /* What is executed, when not exe: a path to the same binary that stays
     * that binary if exe's file is replaced (the master's
     * /proc/self/fd/N of it, a descriptor the child keeps until its exec).
     * Copied. NULL: exe. */
    const char *file;
    /* NULL-terminated extra argv after the exe, before "--shard N", e.g.
     * {"--config", "/abs/config.yaml", NULL}; NULL for none. Copied. */
    const char *const *args;
    /* Local shard ids to run, no duplicates. Copied. May be empty. */
    const uint32_t *shards;
    size_t n_shards;
    uint64_t backoff_min_ms;   /* first restart delay (> 0, e.g. 100) */
    uint64_t backoff_max_ms;   /* cap (>= backoff_min_ms, e.g. 10000) */
    uint64_t stable_ms;        /* a worker up this long resets its backoff (e.g. 30000) */
    uint32_t crash_loop_limit; /* restarts without a stable run that make it a crash loop; 0: never
                                  reported */
    uint64_t stop_grace_ms; /* after router_sup_stop: SIGKILL stragglers after this (e.g. 10000) */
    int detach;             /* 1: each worker in its own session and process group */
    int report_fd;          /* 0, or 3..9: the child's fd of a pipe it may report on */
    int fatal_status;       /* 0, or an exit status (1..255) that is never restarted */
    router_sup_event_cb on_event;   /* may be NULL */
    void *arg;                      /* passed to on_event and on_line */
    const char *what;               /* a child's kind in log lines; NULL: "shard". Not copied */
    const char *id_flag;            /* the argv flag before a child's id; NULL: "--shard" */
    const char *gen_flag;           /* NULL, or the flag before a child's generation */
    int notify_fd;                  /* 0, or 3..9: the child's fd of its notify pipe */
    router_sup_line_cb on_line;     /* lines of the notify pipes; may be NULL */
    size_t max_shards;              /* ids router_sup_add may bring to; <= n_shards: none */
    uint32_t gen_base;              /* the generation of each id's first spawn */
    /* The generation of the first spawn of an id router_sup_add brings,
     * when larger than gen_base: kvs-node workers use 1 (--spawn 1), as
     * a shard a running node takes over was served before, by the node
     * it came from. */
    uint32_t gen_added;
    const router_sup_fd_t *inherit; /* n_inherit descriptors every child gets. Copied */
    size_t n_inherit;
} router_sup_opts_t;

/* Validates `o`, copies what it needs (o and everything it points to may be
 * released on return) and spawns every worker now. On success returns 0 and
 * sets *out to a supervisor owned by the caller, to be stopped with
 * router_sup_stop and released with router_sup_free.
 *
 * Errors (*out is set to NULL):
 *   UV_EINVAL  missing loop or exe, backoff_min_ms == 0,
 *              backoff_max_ms < backoff_min_ms, duplicate shard ids,
 *              report_fd or notify_fd not 0 or 3..9, an inherited child fd
 *              not in 3..9, two uses of one child fd, a negative
 *              parent fd, fatal_status not 0..255;
 *   UV_ENOMEM  out of memory;
 *   any uv_spawn error for the first failing worker, e.g. UV_ENOENT (no such
 *              exe) or UV_EACCES (not executable).
 * The error itself is not logged: the caller decides what it means. When a
 * spawn fails after others succeeded, those workers are killed (SIGKILL,
 * logged) and reaped, and the partial supervisor releases itself while the
 * loop runs; so run the loop (uv_run) before uv_loop_close, as after any
 * failed uv_spawn. on_event is never called for that partial supervisor. */
int router_sup_start(const router_sup_opts_t *o, router_sup_t **out);

/* The pid of the worker of `shard`, or 0 when it is not running (waiting
 * for a restart, stopped, or not a shard of this supervisor). */
pid_t router_sup_pid(const router_sup_t *s, uint32_t shard);

/* What the last worker of `shard` wrote to report_fd before it exited, as
 * one line of printable text ("" if nothing, or while it runs). Owned by
 * the supervisor, valid until the shard's next restart; call it from
 * on_event to explain an exit. */
const char *router_sup_report(const router_sup_t *s, uint32_t shard);

/* The router is shutting down but its workers must keep serving what is in
 * flight: pending restarts are cancelled and a worker that exits from now
 * on is not restarted (logged). router_sup_stop may follow. Idempotent. */
void router_sup_hold(router_sup_t *s);

/* Restarts wait: a pending one is cancelled, and a child that exits from
 * now on is not restarted (logged) until router_sup_resume, which
 * schedules a restart (with its backoff) for each that waits. The master
 * pauses the serving router processes while a membership change's new
 * ones start: an old one restarted then would take a generation number a
 * new one has. Both idempotent; the stop still works while paused. */
void router_sup_pause(router_sup_t *s);
void router_sup_resume(router_sup_t *s);

/* Starts the graceful stop: cancels pending restarts, sends SIGTERM to every
 * running worker and, stop_grace_ms later, SIGKILL to those still running
 * (logged as a warning naming them). Exits keep being reported through
 * on_event. `done(arg)` runs exactly once, from the loop, after the last
 * worker exited and all the supervisor's handles are closed; even when
 * nothing is running it runs asynchronously, never inside this call.
 * Must be called at most once per supervisor. */
void router_sup_stop(router_sup_t *s, router_sup_done_cb done, void *arg);

/* Sends `sig` to every running child (SIGHUP passed on, a second SIGTERM).
 * Returns how many were signalled. SIGHUP and SIGUSR2 reach a child
 * younger than 1 s only when it is 1 s old: until its main() ignores
 * them or installs its handler, their default action would kill it. */
size_t router_sup_signal(router_sup_t *s, int sig);

/* Sends `sig` to `shard`'s child if it runs and is not retired (held as
 * router_sup_signal holds it). Returns 0 or UV_ESRCH. */
int router_sup_signal_one(router_sup_t *s, uint32_t shard, int sig);

/* Supervises one more id (up to max_shards in all) and spawns its child
 * now (generation gen_added, when larger than gen_base); a failed spawn
 * is logged and retried with backoff, as a restart would be. An id that
 * was retired and has exited is taken up again, its count going on.
 * Returns 0, UV_EEXIST (supervised and not retired), UV_EBUSY (retired,
 * its child not yet exited), UV_ENOSPC (max_shards reached) or
 * UV_ECANCELED (holding or stopping). The first start is not announced
 * through on_event, as with router_sup_start. */
int router_sup_add(router_sup_t *s, uint32_t shard);

/* Stops supervising `shard`: a pending restart is cancelled, its child
 * gets SIGTERM (SIGKILL stop_grace_ms later if still running) and is never
 * restarted; its exit is reported through on_event as any other. Not
 * signalled by router_sup_signal any more. Returns 0 or UV_ENOENT (not
 * supervised, or retired already). */
int router_sup_retire(router_sup_t *s, uint32_t shard);

/* True while `shard` is supervised and not retired (its child may be
 * waiting for a restart). */
int router_sup_wanted(const router_sup_t *s, uint32_t shard);

/* The generation `shard`'s next spawn would get (its first's, gen_base or
 * gen_added, + spawns so far): where a supervisor that replaces this one
 * starts its count. */
uint32_t router_sup_generation(const router_sup_t *s, uint32_t shard);

/* Replaces the args (router_sup_opts_t.args; copied) of the spawns from
 * now on: the restarts of every id and router_sup_add's. The children
 * running keep theirs. Returns 0, or UV_ENOMEM (nothing changed). */
int router_sup_set_args(router_sup_t *s, const char *const *args);

/* Releases the supervisor. Only after `done` ran (from inside done is fine).
 * NULL is ignored. */
void router_sup_free(router_sup_t *s);

#endif

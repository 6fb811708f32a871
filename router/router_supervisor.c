/*
 * router_supervisor: spawn, reap, restart with backoff, drain.
 *
 * Each shard has one sup_worker_t with an embedded restart timer; a running
 * worker also has a heap uv_process_t. A process handle lives exactly as
 * long as one child: it is closed in its exit callback and freed in its
 * close callback, so a respawn never reuses a handle libuv may still hold.
 *
 * Invariants:
 *  - w->proc != NULL  <=>  w->pid != 0  <=>  the child is not yet reaped;
 *    n_running counts those workers.
 *  - A worker is in exactly one of: running, waiting on its restart timer,
 *    or idle (stopping, holding, exited with fatal_status, or `waiting`
 *    for the end of a pause). Restarts are never scheduled once
 *    `stopping` or `holding`, nor while `paused`.
 *  - w->report != NULL only while the child runs (with report_fd set): the
 *    pipe is read once, without waiting, in the exit callback, and closed
 *    there; the text stays in w->report_text until the next spawn.
 *  - n_open counts initialised handles whose close callback has not run
 *    (every restart timer, the grace timer, live and closing process
 *    handles and report pipes). Once `closing` is set no handle is opened any more, so the
 *    close callback that brings n_open to 0 is the last one, and it alone
 *    calls `done`. Nothing touches the supervisor after `done`, which may
 *    free it.
 *  - Backoff state per worker: backoff_ms is the delay of the next restart;
 *    restarts counts restarts (and failed respawns) since the last run that
 *    lasted stable_ms. Both reset after such a run.
 *
 * argv is built at the start, and again by router_sup_set_args (exe,
 * args..., [gen_flag, <gen slot>], id_flag, <id slot>, NULL); the slots
 * are pointed at the worker's own strings right before each uv_spawn,
 * which has finished with argv when it returns.
 *
 * A notify pipe (notify_fd set) is read while its child runs, split into
 * lines for on_line, and closed in the exit callback, so no line of a
 * child is delivered after its exit event.
 *
 * A failed router_sup_start that already spawned workers cannot free them
 * synchronously (children must be reaped, handles closed): it goes through
 * the stop path with SIGKILL and an internal `done` that frees the
 * supervisor.
 *
 * Single-threaded: everything runs on the loop thread.
 */
#include "router_supervisor.h"
#include "kvs_log.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SUP_MAX_REPORT_FD 9 /* highest child fd the supervisor sets up */
/* A child younger than this gets SIGHUP and SIGUSR2 only when it reaches
 * this age: between exec and the line of main() that ignores or blocks them (or
 * installs a handler) their default action would kill it. */
#define SUP_SIGNAL_AGE_MS 1000
#define SUP_LINE_MAX 256

typedef struct sup_worker_s {
    router_sup_t *sup;
    uint32_t shard;
    char shard_arg[12];      /* decimal shard id, the argv slot value */
    char gen_arg[12];        /* decimal spawn count, the gen_flag slot value */
    uint32_t gen_first;      /* the generation of its first spawn */
    uint32_t spawns;         /* successful spawns so far */
    uv_process_t *proc;      /* live child's handle, NULL when not running */
    uv_pipe_t *report;       /* our end of the child's report_fd, NULL when none */
    char report_text[512];   /* what the last child wrote there before exiting */
    uv_pipe_t *notify;       /* our end of the child's notify_fd, NULL when none */
    char line[SUP_LINE_MAX]; /* notify: the line being read */
    size_t line_len;
    pid_t pid;           /* 0 when not running */
    uv_timer_t restart;  /* pending restart */
    uint64_t started_ms; /* loop time of the last successful spawn */
    uint64_t backoff_ms; /* delay of the next restart */
    uint32_t restarts;   /* since the last stable run */
    int retired;         /* router_sup_retire: never restarted; restart is its kill timer */
    int waiting;         /* to be restarted once router_sup_resume ends a pause */
    unsigned held;       /* bit i: held_signals[i] waits for the young child */
} sup_worker_t;

struct router_sup_s {
    uv_loop_t *loop;
    char **argv; /* exe, args..., [gen_flag, slot], id_flag, slot, NULL; slots not owned */
    size_t argc;
    char *file;      /* what is executed (opts.file), or NULL: argv[0] */
    size_t gen_slot; /* argv index of the generation slot, 0 when none */
    const char *what;
    int notify_fd;
    router_sup_line_cb on_line;
    router_sup_fd_t inherit[SUP_MAX_REPORT_FD + 1];
    size_t n_inherit;
    uint64_t backoff_min_ms, backoff_max_ms, stable_ms, stop_grace_ms;
    uint32_t crash_loop_limit;
    int detach, report_fd, fatal_status;
    router_sup_event_cb on_event;
    void *arg;
    sup_worker_t *w;
    size_t n, cap; /* ids in use, ids room was made for (router_sup_add) */
    uint32_t gen_base, gen_added;
    uv_timer_t grace;
    uv_timer_t held; /* delivers the signals held for young children */
    size_t n_running;
    size_t n_open;
    unsigned stopping : 1, closing : 1, done_called : 1, holding : 1, paused : 1;
    router_sup_done_cb done;
    void *done_arg;
};

static void worker_on_exit(uv_process_t *proc, int64_t exit_status, int term_signal);

/* The loop's time, refreshed: the cached time can lag by a whole loop turn,
 * and a timer armed from it would fire that much early (a grace period or a
 * backoff must never be shorter than configured). */
static uint64_t sup_now(router_sup_t *s)
{
    uv_update_time(s->loop);
    return uv_now(s->loop);
}

/* "SIGKILL" rather than strsignal's "Killed": the name operators grep for. */
static const char *sig_name(int sig, char *buf, size_t len)
{
    static const struct {
        int sig;
        const char *name;
    } names[] = {
        {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},
        {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},
        {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
        {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"}, {SIGXCPU, "SIGXCPU"},
        {SIGXFSZ, "SIGXFSZ"}, {SIGSYS, "SIGSYS"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (names[i].sig == sig)
            return names[i].name;
    snprintf(buf, len, "%d", sig);
    return buf;
}

/* Marks child fd `fd` used in `used`; 0, or UV_EINVAL when it is out of
 * 3..9 or already used. */
static int sup_claim_fd(unsigned *used, int fd)
{
    if (fd < 3 || fd > SUP_MAX_REPORT_FD || (*used & (1u << fd)))
        return UV_EINVAL;
    *used |= 1u << fd;
    return 0;
}

static int sup_check_fds(const router_sup_opts_t *o)
{
    unsigned used = 0;
    if (o->report_fd != 0 && sup_claim_fd(&used, o->report_fd) != 0)
        return UV_EINVAL;
    if (o->notify_fd != 0 && sup_claim_fd(&used, o->notify_fd) != 0)
        return UV_EINVAL;
    if (o->n_inherit > 0 && o->inherit == NULL)
        return UV_EINVAL;
    for (size_t i = 0; i < o->n_inherit; i++)
        if (o->inherit[i].parent_fd < 0 || sup_claim_fd(&used, o->inherit[i].child_fd) != 0)
            return UV_EINVAL;
    return 0;
}

static int sup_check_opts(const router_sup_opts_t *o)
{
    if (o->loop == NULL || o->exe == NULL || o->backoff_min_ms == 0 ||
        o->backoff_max_ms < o->backoff_min_ms || (o->n_shards > 0 && o->shards == NULL) ||
        sup_check_fds(o) != 0 || o->fatal_status < 0 || o->fatal_status > 255)
        return UV_EINVAL;
    for (size_t i = 0; i < o->n_shards; i++)
        for (size_t j = i + 1; j < o->n_shards; j++)
            if (o->shards[i] == o->shards[j])
                return UV_EINVAL;
    return 0;
}

/* argv's entries a router_sup_t owns: all but the slots. */
static void argv_free(char **argv, size_t argc, size_t gen_slot)
{
    if (argv != NULL)
        for (size_t i = 0; i < argc - 1; i++) /* the slots are not owned */
            if (i != gen_slot || gen_slot == 0)
                free(argv[i]);
    free(argv);
}

/* Builds an argv: exe, args..., [gen_flag, <slot>], id_flag, <slot>.
 * Returns 0 and *out, *argc, *gen_slot (0 without gen_flag), or
 * UV_ENOMEM (nothing left allocated). */
static int argv_build(const char *exe, const char *const *args, const char *gen_flag,
                      const char *id_flag, char ***out, size_t *argc, size_t *gen_slot)
{
    size_t n_args = 0, i = 0, slot = 0;
    while (args != NULL && args[n_args] != NULL)
        n_args++;
    size_t n = n_args + 3 + (gen_flag != NULL ? 2 : 0);
    char **argv = calloc(n + 1, sizeof(*argv));
    if (argv == NULL)
        return UV_ENOMEM;
    argv[i++] = strdup(exe);
    for (size_t a = 0; a < n_args; a++)
        argv[i++] = strdup(args[a]);
    if (gen_flag != NULL) {
        argv[i++] = strdup(gen_flag);
        slot = i++;
    }
    argv[i] = strdup(id_flag);
    for (i = 0; i < n - 1; i++) {
        if (argv[i] == NULL && (slot == 0 || i != slot)) {
            argv_free(argv, n, slot);
            return UV_ENOMEM;
        }
    }
    *out = argv;
    *argc = n;
    *gen_slot = slot;
    return 0;
}

static int sup_copy_argv(router_sup_t *s, const router_sup_opts_t *o)
{
    return argv_build(o->exe, o->args, o->gen_flag, o->id_flag != NULL ? o->id_flag : "--shard",
                      &s->argv, &s->argc, &s->gen_slot);
}

int router_sup_set_args(router_sup_t *s, const char *const *args)
{
    char **argv;
    size_t argc, slot;
    /* The flags are what the old argv holds before each slot. */
    const char *gen_flag = s->gen_slot != 0 ? s->argv[s->gen_slot - 1] : NULL;
    int rc = argv_build(s->argv[0], args, gen_flag, s->argv[s->argc - 2], &argv, &argc, &slot);
    if (rc != 0)
        return rc;
    argv_free(s->argv, s->argc, s->gen_slot);
    s->argv = argv;
    s->argc = argc;
    s->gen_slot = slot;
    return 0;
}

static void sup_release(router_sup_t *s)
{
    if (s->argv != NULL)
        argv_free(s->argv, s->argc, s->gen_slot);
    free(s->file);
    free(s->w);
    free(s);
}

static void worker_init(router_sup_t *s, sup_worker_t *w, uint32_t shard)
{
    w->sup = s;
    w->shard = shard;
    w->backoff_ms = s->backoff_min_ms;
    w->gen_first = s->gen_base;
    snprintf(w->shard_arg, sizeof(w->shard_arg), "%" PRIu32, w->shard);
}

static router_sup_t *sup_new(const router_sup_opts_t *o)
{
    router_sup_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->loop = o->loop;
    s->backoff_min_ms = o->backoff_min_ms;
    s->backoff_max_ms = o->backoff_max_ms;
    s->stable_ms = o->stable_ms;
    s->stop_grace_ms = o->stop_grace_ms;
    s->crash_loop_limit = o->crash_loop_limit;
    s->detach = o->detach;
    s->report_fd = o->report_fd;
    s->fatal_status = o->fatal_status;
    s->on_event = o->on_event;
    s->arg = o->arg;
    s->what = o->what != NULL ? o->what : "shard";
    s->notify_fd = o->notify_fd;
    s->on_line = o->on_line;
    s->n_inherit = o->n_inherit;
    if (o->n_inherit > 0)
        memcpy(s->inherit, o->inherit, o->n_inherit * sizeof(*o->inherit));
    s->n = o->n_shards;
    s->cap = o->max_shards > o->n_shards ? o->max_shards : o->n_shards;
    s->gen_base = o->gen_base;
    s->gen_added = o->gen_added;
    s->w = calloc(s->cap > 0 ? s->cap : 1, sizeof(*s->w));
    if (s->w == NULL || sup_copy_argv(s, o) != 0 ||
        (o->file != NULL && (s->file = strdup(o->file)) == NULL)) {
        sup_release(s);
        return NULL;
    }
    for (size_t i = 0; i < s->n; i++)
        worker_init(s, &s->w[i], o->shards[i]);
    return s;
}

/* One of the supervisor's handles finished closing; the last one calls done. */
static void sup_handle_closed(router_sup_t *s)
{
    assert(s->n_open > 0);
    if (--s->n_open > 0 || !s->closing)
        return;
    s->done_called = 1;
    s->done(s->done_arg); /* may free s: nothing after this */
}

static void sup_on_grace_close(uv_handle_t *h)
{
    sup_handle_closed(h->data);
}

static void worker_on_timer_close(uv_handle_t *h)
{
    sup_worker_t *w = h->data;
    sup_handle_closed(w->sup);
}

static void worker_on_proc_close(uv_handle_t *h)
{
    sup_worker_t *w = h->data;
    free(h);
    sup_handle_closed(w->sup);
}

/* The report and notify pipes share the process handle's close path:
 * freed, counted. */
#define worker_on_report_close worker_on_proc_close

/* Once stopping and the last worker is reaped: close every timer. */
static void sup_maybe_finish(router_sup_t *s)
{
    if (!s->stopping || s->closing || s->n_running > 0)
        return;
    s->closing = 1;
    for (size_t i = 0; i < s->n; i++)
        uv_close((uv_handle_t *)&s->w[i].restart, worker_on_timer_close);
    uv_close((uv_handle_t *)&s->grace, sup_on_grace_close);
    uv_close((uv_handle_t *)&s->held, sup_on_grace_close);
}

/* Our end of a pipe the child writes on (its report_fd or notify_fd): a
 * socketpair libuv creates at spawn, non-blocking on our side, stored in
 * *pp. Returns 0 or UV_ENOMEM. */
static int pipe_open(sup_worker_t *w, uv_pipe_t **pp, uv_stdio_container_t *slot)
{
    router_sup_t *s = w->sup;
    uv_pipe_t *p = malloc(sizeof(*p));
    if (p == NULL)
        return UV_ENOMEM;
    uv_pipe_init(s->loop, p, 0); /* cannot fail without IPC */
    p->data = w;
    s->n_open++;
    *pp = p;
    slot->flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    slot->data.stream = (uv_stream_t *)p;
    return 0;
}

static void pipe_close(uv_pipe_t **pp)
{
    if (*pp == NULL)
        return;
    uv_close((uv_handle_t *)*pp, worker_on_report_close);
    *pp = NULL;
}

/* Nothing reads the report pipe while the child runs; what the child wrote
 * is taken when it exits (worker_take_report). */
static void report_close(sup_worker_t *w)
{
    pipe_close(&w->report);
}

static void notify_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char chunk[SUP_LINE_MAX]; /* consumed in notify_read before the next alloc */
    (void)h, (void)suggested;
    *buf = uv_buf_init(chunk, sizeof(chunk));
}

/* Splits what the child wrote into lines for on_line; a line too long for
 * w->line is cut, the rest of it dropped. */
static void notify_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    sup_worker_t *w = st->data;
    router_sup_t *s = w->sup;
    if (nread < 0) { /* EOF or an error: the child closed it (or is exiting) */
        pipe_close(&w->notify);
        return;
    }
    for (ssize_t i = 0; i < nread && w->notify != NULL; i++) {
        char c = buf->base[i];
        if (c != '\n') {
            if (w->line_len < sizeof(w->line) - 1)
                w->line[w->line_len++] = c;
            continue;
        }
        w->line[w->line_len] = '\0';
        w->line_len = 0;
        if (s->on_line != NULL)
            s->on_line(s->arg, w->shard, w->line); /* may stop: w->notify then NULL */
    }
}

/* Fills the stdio slots of a spawn: stdin ignored, stdout and stderr
 * inherited, the report and notify pipes, the inherited descriptors.
 * Returns the slot count, or a negative uv error (no pipe left open). */
static int worker_stdio(sup_worker_t *w, uv_stdio_container_t *stdio)
{
    router_sup_t *s = w->sup;
    int count = 3;
    stdio[0].flags = UV_IGNORE;
    stdio[1] = (uv_stdio_container_t){.flags = UV_INHERIT_FD, .data.fd = 1};
    stdio[2] = (uv_stdio_container_t){.flags = UV_INHERIT_FD, .data.fd = 2};
    for (size_t i = 0; i < s->n_inherit; i++) {
        int fd = s->inherit[i].child_fd;
        stdio[fd] =
            (uv_stdio_container_t){.flags = UV_INHERIT_FD, .data.fd = s->inherit[i].parent_fd};
        count = fd + 1 > count ? fd + 1 : count;
    }
    if (s->report_fd > 0 && pipe_open(w, &w->report, &stdio[s->report_fd]) != 0)
        return UV_ENOMEM;
    if (s->notify_fd > 0 && pipe_open(w, &w->notify, &stdio[s->notify_fd]) != 0) {
        report_close(w);
        return UV_ENOMEM;
    }
    count = s->report_fd + 1 > count ? s->report_fd + 1 : count;
    count = s->notify_fd + 1 > count ? s->notify_fd + 1 : count;
    return count; /* slots in between stay zero: UV_IGNORE */
}

/* Spawns w's child. On failure the handles are closed and nothing changes. */
static int worker_spawn(sup_worker_t *w)
{
    router_sup_t *s = w->sup;
    uv_stdio_container_t stdio[SUP_MAX_REPORT_FD + 1];
    memset(stdio, 0, sizeof(stdio));
    int count = worker_stdio(w, stdio);
    if (count < 0)
        return count;
    uv_process_t *proc = malloc(sizeof(*proc));
    if (proc == NULL) {
        report_close(w);
        pipe_close(&w->notify);
        return UV_ENOMEM;
    }
    uv_process_options_t po = {
        .exit_cb = worker_on_exit,
        .file = s->file != NULL ? s->file : s->argv[0],
        .args = s->argv,
        .stdio_count = count,
        .stdio = stdio,
        .flags = s->detach ? UV_PROCESS_DETACHED : 0,
    };
    snprintf(w->gen_arg, sizeof(w->gen_arg), "%" PRIu32, w->gen_first + w->spawns);
    if (s->gen_slot != 0)
        s->argv[s->gen_slot] = w->gen_arg;
    s->argv[s->argc - 1] = w->shard_arg;
    int rc = uv_spawn(s->loop, proc, &po);
    proc->data = w;
    s->n_open++; /* a failed uv_spawn still initialised the handle */
    if (rc != 0) {
        uv_close((uv_handle_t *)proc, worker_on_proc_close);
        report_close(w);
        pipe_close(&w->notify);
        return rc;
    }
    w->proc = proc;
    w->pid = proc->pid;
    w->spawns++;
    w->started_ms = sup_now(s);
    w->report_text[0] = '\0';
    w->line_len = 0;
    if (w->notify != NULL &&
        uv_read_start((uv_stream_t *)w->notify, notify_alloc, notify_read) != 0)
        pipe_close(&w->notify); /* cannot happen on a fresh pipe; lines are then lost */
    s->n_running++;
    return 0;
}

static void worker_on_restart(uv_timer_t *t);

/* Arms the restart timer with the current backoff and advances the backoff;
 * at or over the crash-loop limit the delay is backoff_max_ms, said loudly. */
static void worker_schedule_restart(sup_worker_t *w)
{
    router_sup_t *s = w->sup;
    uint64_t delay = w->backoff_ms;
    w->backoff_ms = delay > s->backoff_max_ms / 2 ? s->backoff_max_ms : delay * 2;
    w->restarts++;
    if (s->crash_loop_limit > 0 && w->restarts >= s->crash_loop_limit) {
        delay = s->backoff_max_ms;
        kvs_error("%s %" PRIu32 " is crash-looping: %" PRIu32
                  " restarts without staying up %" PRIu64 " ms; restarting it in %" PRIu64 " ms",
                  s->what, w->shard, w->restarts, s->stable_ms, delay);
    } else {
        kvs_info("restarting %s %" PRIu32 " in %" PRIu64 " ms", s->what, w->shard, delay);
    }
    sup_now(s);
    uv_timer_start(&w->restart, worker_on_restart, delay, 0);
}

static void worker_on_restart(uv_timer_t *t)
{
    sup_worker_t *w = t->data;
    router_sup_t *s = w->sup;
    assert(!s->stopping && !s->holding && !s->paused && w->proc == NULL);
    int rc = worker_spawn(w);
    if (rc == UV_EMFILE || rc == UV_ENFILE) {
        /* Out of descriptors is the process's condition, not the worker's:
         * no crash loop, no growing backoff; try again soon. */
        kvs_error("cannot start %s %" PRIu32 ": %s; retrying in %" PRIu64 " ms", s->what, w->shard,
                  uv_strerror(rc), s->backoff_min_ms);
        sup_now(s);
        uv_timer_start(&w->restart, worker_on_restart, s->backoff_min_ms, 0);
        return;
    }
    if (rc != 0) {
        kvs_error("cannot start %s %" PRIu32 " (%s): %s", s->what, w->shard, s->argv[0],
                  uv_strerror(rc));
        worker_schedule_restart(w);
        return;
    }
    kvs_info("started %s %" PRIu32 " (pid %d)", s->what, w->shard, (int)w->pid);
    if (s->on_event != NULL)
        s->on_event(s->arg, w->shard, 1, 0, 0);
}

/* Takes what the exited child wrote to its report pipe: it wrote before
 * exiting, so it is all in the socket buffer by now (no waiting for EOF).
 * Kept as one line of printable text; the pipe is closed. */
static void worker_take_report(sup_worker_t *w)
{
    char *t = w->report_text;
    size_t n = 0, cap = sizeof(w->report_text) - 1;
    uv_os_fd_t fd;
    if (w->report != NULL && uv_fileno((uv_handle_t *)w->report, &fd) == 0) {
        while (n < cap) {
            ssize_t r = read(fd, t + n, cap - n);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break; /* EAGAIN: nothing more was written */
            n += (size_t)r;
        }
    }
    report_close(w);
    while (n > 0 && (t[n - 1] == '\n' || t[n - 1] == '\r' || t[n - 1] == ' '))
        n--;
    t[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)t[i] < 0x20 || t[i] == 0x7f)
            t[i] = ' ';
}

static int worker_fatal(const router_sup_t *s, int64_t status, int sig)
{
    return s->fatal_status != 0 && sig == 0 && status == s->fatal_status;
}

static void worker_log_exit(const sup_worker_t *w, pid_t pid, int64_t status, int sig)
{
    /* While stopping, a clean exit or death by our own signals is expected;
     * anything else (a crash during drain) still deserves a warning, and an
     * exit that forbids restarts an error. */
    const router_sup_t *s = w->sup;
    int expected = (s->stopping || s->holding || w->retired) &&
                   (sig == SIGTERM || sig == SIGKILL || (sig == 0 && status == 0));
    int fatal = worker_fatal(s, status, sig);
    kvs_log_level_t level = fatal ? KVS_LOG_ERROR : expected ? KVS_LOG_INFO : KVS_LOG_WARN;
    char buf[16];
    if (sig != 0)
        kvs_log(level, "%s %" PRIu32 " (pid %d) killed by signal %s", s->what, w->shard, (int)pid,
                sig_name(sig, buf, sizeof(buf)));
    else if (fatal)
        kvs_log(level,
                "%s %" PRIu32 " (pid %d) exited with status %" PRId64
                " (a fatal error: not restarting it)%s%s",
                s->what, w->shard, (int)pid, status, w->report_text[0] ? ": " : "", w->report_text);
    else
        kvs_log(level, "%s %" PRIu32 " (pid %d) exited with status %" PRId64, s->what, w->shard,
                (int)pid, status);
}

static void worker_on_exit(uv_process_t *proc, int64_t exit_status, int term_signal)
{
    sup_worker_t *w = proc->data;
    router_sup_t *s = w->sup;
    pid_t pid = w->pid;
    uint64_t uptime = sup_now(s) - w->started_ms;
    w->proc = NULL;
    w->pid = 0;
    w->held = 0;
    s->n_running--;
    uv_close((uv_handle_t *)proc, worker_on_proc_close);
    pipe_close(&w->notify); /* no line of this child after its exit event */
    worker_take_report(w);
    worker_log_exit(w, pid, exit_status, term_signal);
    if (s->on_event != NULL)
        s->on_event(s->arg, w->shard, 0, exit_status, term_signal); /* may call stop */
    if (s->stopping) {
        sup_maybe_finish(s);
        return;
    }
    if (w->retired) {
        uv_timer_stop(&w->restart); /* its kill timer */
        return;
    }
    if (worker_fatal(s, exit_status, term_signal))
        return; /* idle until router_sup_stop */
    if (s->holding) {
        kvs_info("not restarting %s %" PRIu32 ": shutting down", s->what, w->shard);
        return;
    }
    if (s->paused) {
        kvs_info("%s %" PRIu32 " is restarted once restarts resume", s->what, w->shard);
        w->waiting = 1;
        return;
    }
    if (uptime >= s->stable_ms) {
        w->backoff_ms = s->backoff_min_ms;
        w->restarts = 0;
    }
    worker_schedule_restart(w);
}

/* Sends sig to w's child. SIGTERM comes right after a SIGCONT: a child
 * that is stopped (SIGSTOP, a job-control stop of its group) takes a
 * signal only once it runs, so it would otherwise sit out the grace period
 * and be killed rather than drain. SIGCONT first, not after (systemd's
 * order): a SIGCONT that reaches a child already exiting on the SIGTERM
 * discards the stop signals pending for it, and LeakSanitizer's exit check
 * (the ASan build's) stops the child's threads with those and waits for
 * them (twice in CI a router process logged "stopped" and then sat there
 * until SIGKILL at the grace period, when the master had been slow to
 * send the SIGCONT). */
static int worker_kill(sup_worker_t *w, int sig)
{
    if (sig == SIGTERM)
        uv_process_kill(w->proc, SIGCONT); /* its error is the SIGTERM's too */
    return uv_process_kill(w->proc, sig);
}

static void sup_on_grace(uv_timer_t *t)
{
    router_sup_t *s = t->data;
    for (size_t i = 0; i < s->n; i++) {
        sup_worker_t *w = &s->w[i];
        if (w->proc == NULL)
            continue;
        kvs_warn("%s %" PRIu32 " (pid %d) still running %" PRIu64
                 " ms after SIGTERM; sending SIGKILL",
                 s->what, w->shard, (int)w->pid, s->stop_grace_ms);
        uv_process_kill(w->proc, SIGKILL); /* ESRCH: already gone, its exit_cb is due */
    }
}

/* Sends `sig` to every running worker and arms the grace timer, if any. */
static void sup_signal_all(router_sup_t *s, int sig)
{
    char buf[16];
    for (size_t i = 0; i < s->n; i++) {
        sup_worker_t *w = &s->w[i];
        uv_timer_stop(&w->restart);
        if (w->proc == NULL)
            continue;
        kvs_info("stopping %s %" PRIu32 " (pid %d) with %s", s->what, w->shard, (int)w->pid,
                 sig_name(sig, buf, sizeof(buf)));
        worker_kill(w, sig);
    }
    if (s->n_running > 0 && sig != SIGKILL) {
        sup_now(s);
        uv_timer_start(&s->grace, sup_on_grace, s->stop_grace_ms, 0);
    }
}

static void sup_free_cb(void *arg)
{
    router_sup_free(arg);
}

/* A spawn failed in router_sup_start: kill what did start, free on done. */
static void sup_abort_start(router_sup_t *s)
{
    s->stopping = 1;
    s->on_event = NULL;
    s->done = sup_free_cb;
    s->done_arg = s;
    sup_signal_all(s, SIGKILL);
    sup_maybe_finish(s);
}

int router_sup_start(const router_sup_opts_t *o, router_sup_t **out)
{
    *out = NULL;
    int rc = sup_check_opts(o);
    if (rc != 0)
        return rc;
    router_sup_t *s = sup_new(o);
    if (s == NULL)
        return UV_ENOMEM;
    uv_timer_init(s->loop, &s->grace);
    s->grace.data = s;
    s->n_open++;
    uv_timer_init(s->loop, &s->held);
    s->held.data = s;
    s->n_open++;
    for (size_t i = 0; i < s->n; i++) {
        uv_timer_init(s->loop, &s->w[i].restart);
        s->w[i].restart.data = &s->w[i];
        s->n_open++;
    }
    for (size_t i = 0; i < s->n; i++) {
        rc = worker_spawn(&s->w[i]);
        if (rc != 0) {
            sup_abort_start(s);
            return rc;
        }
    }
    *out = s;
    return 0;
}

pid_t router_sup_pid(const router_sup_t *s, uint32_t shard)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->w[i].shard == shard)
            return s->w[i].pid;
    return 0;
}

const char *router_sup_report(const router_sup_t *s, uint32_t shard)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->w[i].shard == shard)
            return s->w[i].report_text;
    return "";
}

void router_sup_hold(router_sup_t *s)
{
    s->holding = 1;
    for (size_t i = 0; i < s->n; i++)
        uv_timer_stop(&s->w[i].restart);
}

void router_sup_pause(router_sup_t *s)
{
    s->paused = 1;
    for (size_t i = 0; i < s->n; i++) {
        sup_worker_t *w = &s->w[i];
        if (!w->retired && uv_is_active((uv_handle_t *)&w->restart)) {
            uv_timer_stop(&w->restart);
            w->waiting = 1;
        }
    }
}

void router_sup_resume(router_sup_t *s)
{
    if (!s->paused)
        return;
    s->paused = 0;
    for (size_t i = 0; i < s->n; i++) {
        sup_worker_t *w = &s->w[i];
        int restart = w->waiting && !w->retired && w->proc == NULL;
        w->waiting = 0;
        if (restart && !s->stopping && !s->holding)
            worker_schedule_restart(w);
    }
}

void router_sup_stop(router_sup_t *s, router_sup_done_cb done, void *arg)
{
    assert(!s->stopping && done != NULL);
    s->stopping = 1;
    s->done = done;
    s->done_arg = arg;
    sup_signal_all(s, SIGTERM);
    sup_maybe_finish(s);
}

/* The signals held for young children (SIGTERM and SIGKILL are not: a
 * child killed by those young was meant to stop). */
static const int held_signals[] = {SIGHUP, SIGUSR2};
#define N_HELD (sizeof(held_signals) / sizeof(held_signals[0]))

static unsigned held_bit(int sig)
{
    for (size_t i = 0; i < N_HELD; i++)
        if (held_signals[i] == sig)
            return 1u << i;
    return 0;
}

static void sup_on_held(uv_timer_t *t);

/* Sends sig to w's child now, or holds it until the child is
 * SUP_SIGNAL_AGE_MS old. Returns 0 or a uv error. */
static int worker_signal(sup_worker_t *w, int sig)
{
    router_sup_t *s = w->sup;
    uint64_t age = sup_now(s) - w->started_ms;
    if (held_bit(sig) == 0 || age >= SUP_SIGNAL_AGE_MS)
        return worker_kill(w, sig);
    w->held |= held_bit(sig);
    uint64_t due = SUP_SIGNAL_AGE_MS - age;
    if (!uv_is_active((uv_handle_t *)&s->held) || uv_timer_get_due_in(&s->held) > due)
        uv_timer_start(&s->held, sup_on_held, due, 0);
    return 0;
}

/* Delivers what is held for children now old enough; waits again for the
 * others. A child that exited meanwhile lost its held signals (exit). */
static void sup_on_held(uv_timer_t *t)
{
    router_sup_t *s = t->data;
    for (size_t i = 0; i < s->n; i++) {
        sup_worker_t *w = &s->w[i];
        if (w->held == 0 || w->proc == NULL || w->retired)
            continue;
        unsigned held = w->held;
        w->held = 0;
        for (size_t k = 0; k < N_HELD; k++)
            if (held & (1u << k))
                worker_signal(w, held_signals[k]);
    }
}

size_t router_sup_signal(router_sup_t *s, int sig)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->w[i].proc != NULL && !s->w[i].retired && worker_signal(&s->w[i], sig) == 0)
            n++;
    return n;
}

static sup_worker_t *sup_find(router_sup_t *s, uint32_t shard)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->w[i].shard == shard)
            return &s->w[i];
    return NULL;
}

int router_sup_signal_one(router_sup_t *s, uint32_t shard, int sig)
{
    sup_worker_t *w = sup_find(s, shard);
    if (w == NULL || w->proc == NULL || w->retired || worker_signal(w, sig) != 0)
        return UV_ESRCH;
    return 0;
}

int router_sup_add(router_sup_t *s, uint32_t shard)
{
    if (s->stopping || s->holding)
        return UV_ECANCELED;
    sup_worker_t *w = sup_find(s, shard);
    if (w != NULL && !w->retired)
        return UV_EEXIST;
    if (w != NULL && w->proc != NULL)
        return UV_EBUSY; /* its retired child has not exited yet */
    if (w == NULL) {
        if (s->n == s->cap)
            return UV_ENOSPC;
        w = &s->w[s->n++];
        worker_init(s, w, shard);
        if (s->gen_added > s->gen_base)
            w->gen_first = s->gen_added;
        uv_timer_init(s->loop, &w->restart);
        w->restart.data = w;
        s->n_open++;
    }
    w->retired = 0;
    w->backoff_ms = s->backoff_min_ms;
    w->restarts = 0;
    int rc = worker_spawn(w);
    if (rc != 0) {
        kvs_error("cannot start %s %" PRIu32 " (%s): %s", s->what, w->shard, s->argv[0],
                  uv_strerror(rc));
        worker_schedule_restart(w);
        return 0;
    }
    kvs_info("started %s %" PRIu32 " (pid %d)", s->what, w->shard, (int)w->pid);
    return 0;
}

/* A retired child still running stop_grace_ms after its SIGTERM. */
static void worker_on_kill(uv_timer_t *t)
{
    sup_worker_t *w = t->data;
    if (w->proc == NULL)
        return;
    kvs_warn("%s %" PRIu32 " (pid %d) still running %" PRIu64 " ms after SIGTERM; sending SIGKILL",
             w->sup->what, w->shard, (int)w->pid, w->sup->stop_grace_ms);
    uv_process_kill(w->proc, SIGKILL);
}

int router_sup_retire(router_sup_t *s, uint32_t shard)
{
    sup_worker_t *w = sup_find(s, shard);
    if (w == NULL || w->retired)
        return UV_ENOENT;
    w->retired = 1;
    uv_timer_stop(&w->restart);
    if (w->proc == NULL || s->stopping)
        return 0; /* waiting for a restart: now it never comes; stopping: signalled already */
    kvs_info("stopping %s %" PRIu32 " (pid %d) with SIGTERM: no longer wanted", s->what, w->shard,
             (int)w->pid);
    worker_kill(w, SIGTERM);
    sup_now(s);
    uv_timer_start(&w->restart, worker_on_kill, s->stop_grace_ms, 0);
    return 0;
}

int router_sup_wanted(const router_sup_t *s, uint32_t shard)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->w[i].shard == shard)
            return !s->w[i].retired;
    return 0;
}

uint32_t router_sup_generation(const router_sup_t *s, uint32_t shard)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->w[i].shard == shard)
            return s->w[i].gen_first + s->w[i].spawns;
    return s->gen_base;
}

void router_sup_free(router_sup_t *s)
{
    if (s == NULL)
        return;
    assert(s->done_called && s->n_open == 0);
    sup_release(s);
}

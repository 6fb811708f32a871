/*
 * router_master_children: the master's children, the kvs-node workers
 * (one supervisor) and the generations of router processes (one
 * supervisor each): starting them, what they say, their exits, and the
 * node's readiness.
 *
 * Start-up: once the checks passed (router_master_config.c), the kvs-node
 * workers are spawned (one per local shard) and the router processes too
 * (router.processes of them, each `kvs-router --router I`, fork+exec
 * through router_supervisor: a fresh image per process, no loop state or
 * LMDB environment crossing a fork, the same restart and backoff code as
 * the workers).
 *
 * Readiness: a router process connects to every shard and, once every
 * local one answers, listens and says "listening <inodes>" on its notify
 * pipe. When all of them did, the master checks that nothing but its
 * routers listens on the client ports (router_ports_foreign), then sends
 * READY=1 (router_notify; NotifyAccess=main: only the master speaks to
 * systemd, the router processes never do). router.ready_timeout bounds
 * the whole start; a router process that exits before the node is ready
 * fails the start (exit 1, or 78 with its reason), one killed by a signal
 * is restarted as it would be once serving, unless it was killed each of
 * ROUTER_START_KILLS times it started (it crashes as it starts: the start
 * fails then, saying so, rather than at router.ready_timeout).
 *
 * While serving: a router process that dies is restarted with backoff
 * (its clients lose their connections; the kernel gives its share of new
 * connections to the other routers meanwhile); one that exits 78 stops the
 * node with 78, like a worker that does.
 */
#include "router_master_int.h"

#include "kvs_log.h"
#include "router_notify.h"
#include "router_ports.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

/* ---- router generations -------------------------------------------------------------- */

/* The args of a router process (before --generation and --router), in
 * args[0..ROUTER_ARGS) with the numbers in n_arg and pid_arg; `next` for
 * a membership change's new generation (router_main.c). */
void router_master_router_args(const master_t *m, int next, const char *args[ROUTER_ARGS],
                               char n_arg[12], char pid_arg[24])
{
    snprintf(n_arg, 12, "%u", m->n_procs);
    snprintf(pid_arg, 24, "%ld", (long)getpid());
    const char *a[ROUTER_ARGS] = {
        "--config",      m->config_path, "--processes",          n_arg, "--master", pid_arg,
        "--reload-from", m->reload_arg,  next ? "--next" : NULL, NULL};
    memcpy(args, a, sizeof(a));
}

static rgen_t *gen_new(master_t *m)
{
    rgen_t *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->m = m;
    g->inodes = calloc(m->n_procs, sizeof(*g->inodes));
    g->listening = calloc(m->n_procs, 1);
    g->live = calloc(m->n_procs, sizeof(*g->live));
    if (g->inodes == NULL || g->listening == NULL || g->live == NULL) {
        free(g->inodes);
        free(g->listening);
        free(g->live);
        free(g);
        return NULL;
    }
    return g;
}

void router_master_gen_free(rgen_t *g)
{
    if (g == NULL)
        return;
    router_sup_free(g->sup);
    free(g->inodes);
    free(g->listening);
    free(g->live);
    free(g);
}

/* How many of g's processes run (a pid), or 0 for NULL. */
uint32_t router_master_gen_running(const master_t *m, const rgen_t *g)
{
    uint32_t n = 0;
    for (uint32_t i = 0; g != NULL && g->sup != NULL && i < m->n_procs; i++)
        n += router_sup_pid(g->sup, i) > 0;
    return n;
}

size_t router_master_gen_signal(rgen_t *g, int sig)
{
    return g != NULL && g->sup != NULL ? router_sup_signal(g->sup, sig) : 0;
}

/* Drains g's processes (SIGTERM; SIGKILL after ROUTER_GRACE_MS); the
 * generation is freed once all are gone (router_master_on_gen_stopped). */
void router_master_gen_stop(rgen_t *g)
{
    if (g == NULL || g->stopping)
        return;
    g->stopping = 1;
    router_sup_stop(g->sup, router_master_on_gen_stopped, g);
}

/* ---- readiness ------------------------------------------------------------------------- */

/* Adds the listening sockets of g's processes on port l to ours[*n..]. */
static void gen_inodes(const master_t *m, const rgen_t *g, size_t l, uint64_t *ours, size_t *n)
{
    for (uint32_t i = 0; g != NULL && i < m->n_procs; i++)
        if (g->listening[i])
            ours[(*n)++] = g->inodes[i][l];
}

/* Is anything but our routers (of every generation) listening on a
 * client port? Returns 0 when not (or when the kernel cannot say: warned
 * once), else 1 + the index of the port (m->listen_name) after logging
 * what is there. Before any router process was started (none listens),
 * any socket there is another's: the node stops before its routers join
 * the port and take some of that process's clients (a second kvs node
 * given a serving node's port answered them, then stopped). */
int router_master_foreign_listener(master_t *m)
{
    uint64_t ours[3 * KVS_ROUTER_PROCESSES_MAX];
    for (size_t l = 0; l < m->n_listen; l++) {
        size_t n = 0;
        gen_inodes(m, m->routers, l, ours, &n);
        gen_inodes(m, m->next, l, ours, &n);
        gen_inodes(m, m->old, l, ours, &n);
        router_port_sock_t who;
        int rc = router_ports_foreign((struct sockaddr *)&m->listen_addr[l], ours, n, &who);
        if (rc < 0 && !m->census_failed) {
            m->census_failed = 1;
            kvs_warn("cannot check that only this node listens on %s (sock_diag: %s); a process "
                     "of this user sharing the port with SO_REUSEPORT would go unnoticed",
                     m->listen_name[l], strerror(-rc));
        }
        if (rc != 1)
            continue;
        const char *spec = l == 0 ? m->cfg->router_listen : m->cfg->resp_listen;
        int before = m->routers == NULL; /* no router process started yet */
        kvs_error("%s %s is %s a process that is not one of this node's routers (a socket of "
                  "uid %u, inode %llu%s); %sstop it or choose another port",
                  m->listen_name[l], spec, before ? "already listened on by" : "shared with",
                  who.uid, (unsigned long long)who.inode,
                  before ? ": another kvs node, or another server, given the same port?"
                         : ", listens on the same port with SO_REUSEPORT and would take part "
                           "of the clients: another kvs node given the same port?",
                  before ? "this node does not start: " : "");
        return (int)l + 1;
    }
    return 0;
}

static void become_ready(master_t *m)
{
    int shared = router_master_foreign_listener(m);
    if (shared > 0) {
        snprintf(m->final_msg, sizeof(m->final_msg),
                 "stopped: %s is shared with another process (see above)",
                 m->listen_name[shared - 1]);
        router_master_shutdown_begin(m, 1);
        return;
    }
    m->ready = 1;
    uv_timer_stop(&m->timer);
    if (router_scrape_connect(m->scrape) != 0)
        kvs_warn("metrics: the master cannot reach the node's processes; /metrics shows its own "
                 "families only");
    kvs_info("node ready: %u shards (%u local), %u router process%s", m->cfg->shards, m->n_local,
             m->n_procs, m->n_procs == 1 ? "" : "es");
    router_notify_ready("serving clients on %s: %u shards (%u local)", m->cfg->router_listen,
                        m->cfg->shards, m->n_local);
}

/* A router process said something on its notify pipe. */
static void on_router_line(void *arg, uint32_t index, const char *line)
{
    rgen_t *g = arg;
    master_t *m = g->m;
    uint64_t inodes[ROUTER_LISTEN_MAX] = {0};
    size_t n = 0;
    int beat = strcmp(line, ROUTER_LIVENESS_LINE) == 0;
    if (index < m->n_procs && strcmp(line, ROUTER_LIVENESS_RELOADING) == 0) {
        router_master_live_reloading(m, g, index);
        return;
    }
    if (index >= m->n_procs || (!beat && router_procs_parse_listening(line, inodes, &n) != 0)) {
        kvs_warn("router %u said something unexpected: %.100s", index, line);
        return;
    }
    /* A heartbeat, or it became ready: its clock starts again. */
    router_master_live_heard(m, g, index);
    if (beat || g->listening[index] || m->shutting_down || g->stopping)
        return;
    memcpy(g->inodes[index], inodes, sizeof(inodes));
    g->listening[index] = 1;
    g->n_listening++;
    if (g == m->next) {
        if (g->n_listening == m->n_procs)
            router_master_change_switch(m);
    } else if (m->ready) {
        kvs_info("router %u accepts clients again", index);
        /* Not while a membership change's new processes start: one may
         * listen already and not have said so yet (its socket would look
         * foreign); the switch checks once they all have. */
        if (g->n_listening == m->n_procs && m->next == NULL)
            router_master_foreign_listener(m); /* logged: nothing to stop any more */
    } else if (g->n_listening == m->n_procs) {
        become_ready(m);
    }
}

/* A child that crashed, or exited with an error, while the node stopped
 * (`what` and `n` name it). Its data is safe (LMDB commits are whole; a
 * router process holds none), but a stop that was not clean must not look
 * like one to whoever runs the node (systemd, a script): kvs-router then
 * exits 1, its last line naming the child. The stop's own signals are not
 * that: SIGTERM, and the SIGKILL of the grace period (logged). EX_CONFIG
 * has its own message (on_worker_event). */
static void stopped_unclean(master_t *m, const char *what, uint32_t n, int64_t status, int sig)
{
    if (sig == SIGTERM || sig == SIGKILL || (sig == 0 && (status == 0 || status == EX_CONFIG)))
        return;
    if (m->final_msg[0] == '\0' && sig != 0)
        snprintf(m->final_msg, sizeof(m->final_msg),
                 "stopped, but %s %u was killed by signal %d (%s) while the node stopped; its "
                 "data is safe, see its errors above",
                 what, n, sig, strsignal(sig));
    else if (m->final_msg[0] == '\0')
        snprintf(m->final_msg, sizeof(m->final_msg),
                 "stopped, but %s %u exited with status %lld while the node stopped; its data is "
                 "safe, see its errors above",
                 what, n, (long long)status);
    router_master_shutdown_begin(m, 1); /* only raises the exit status now */
}

/* A router process started or exited (router_supervisor logged it). */
static void on_router_event(void *arg, uint32_t index, int running, int64_t status, int sig)
{
    rgen_t *g = arg;
    master_t *m = g->m;
    if (running && m->router_restarts != NULL && index < m->n_procs)
        m->router_restarts[index]++; /* the supervisor reports starts after the first only */
    if (running) {
        g->live[index] = (router_live_t){.beat_ms = uv_now(m->loop)};
        return;
    }
    if (g->listening[index]) {
        g->listening[index] = 0;
        g->n_listening--;
    }
    if (m->shutting_down)
        stopped_unclean(m, "router", index, status, sig);
    if (m->shutting_down || g->stopping)
        return;
    const char *why = router_sup_report(g->sup, index);
    char msg[700];
    if (g == m->next) { /* a new generation is all up, or none of it */
        snprintf(msg, sizeof(msg), "router %u of the new map exited (%s)", index,
                 why[0] ? why : "see its errors above");
        router_master_change_failed(m, msg);
    } else if (sig == 0 && status == EX_CONFIG) {
        snprintf(m->final_msg, sizeof(m->final_msg),
                 "stopped: router %u cannot run with this configuration: %s (it exited with "
                 "status %d, EX_CONFIG; fix the config and start again)",
                 index, why[0] ? why : "see its error above", EX_CONFIG);
        kvs_error("router %u cannot run with this configuration; stopping the node", index);
        router_master_shutdown_begin(m, EX_CONFIG);
    } else if (!m->ready && sig == 0) {
        snprintf(m->final_msg, sizeof(m->final_msg), "stopped: router %u could not start: %s",
                 index, why[0] ? why : "see its errors above");
        router_master_shutdown_begin(m, 1);
    } else if (!m->ready && m->router_restarts != NULL &&
               m->router_restarts[index] + 1 >= ROUTER_START_KILLS) {
        /* Killed every time it started: it crashes as it starts (or
         * something kills it each time), and waiting out ready_timeout
         * would only end with a message blaming the workers. */
        snprintf(m->final_msg, sizeof(m->final_msg),
                 "stopped: router %u was killed by a signal each of the %llu times it started "
                 "before the node was ready (the last time: %s); see its errors above",
                 index, (unsigned long long)m->router_restarts[index] + 1, strsignal(sig));
        router_master_shutdown_begin(m, 1);
    } else if (!m->ready) { /* killed (kill -9, the OOM killer, a crash): as once serving */
        kvs_warn("router %u was killed before the node was ready; the supervisor restarts it "
                 "(router.ready_timeout still bounds the start)",
                 index);
    }
}

/* ---- children ------------------------------------------------------------------------ */

/* A worker exited with EX_CONFIG: its configuration can never work (a
 * binding's partition count differs from the topic's, its data directory
 * belongs to another shard, its data files are damaged, ...). The
 * supervisor does not restart it, and a node missing a shard for good is
 * not a node: stop, saying why. One that a membership change started,
 * before the new map serves, fails the change instead (the node serves on
 * with the previous map), and one of a shard the map no longer has here (a
 * failed change's, or one leaving) only waits for retire_workers. A
 * worker retired by a membership change only ends the change. */
static void on_worker_event(void *arg, uint32_t shard, int running, int64_t status, int sig)
{
    master_t *m = arg;
    if (running && m->worker_restarts != NULL && shard < m->cfg->shards)
        m->worker_restarts[shard]++; /* the supervisor reports starts after the first only */
    if (running)
        return;
    if (m->shutting_down)
        stopped_unclean(m, "shard", shard, status, sig);
    if (!router_sup_wanted(m->workers, shard)) {
        if (!kvs_config_local(m->cfg, shard) && router_master_retires_data(m, shard))
            router_master_retire_data(m, shard);
        if (m->n_retiring > 0 && --m->n_retiring == 0 && !m->shutting_down)
            router_master_change_maybe_done(m);
        return;
    }
    if (sig != 0 || status != EX_CONFIG || !kvs_config_local(m->cfg, shard))
        return; /* the last: a change's leftover (failed, or done), retire_workers takes it */
    const char *why = router_sup_report(m->workers, shard);
    if (m->changing && m->prev_cfg != NULL && !kvs_config_local(m->prev_cfg, shard)) {
        char msg[700]; /* a worker the change started: the change fails, the node serves on */
        snprintf(msg, sizeof(msg), "shard %u's new worker cannot run with this configuration: %s",
                 shard, why[0] ? why : "see its error above");
        router_master_change_failed(m, msg);
        return;
    }
    snprintf(m->final_msg, sizeof(m->final_msg),
             "stopped: shard %u cannot run with this configuration: %s (kvs-node exited with "
             "status %d, EX_CONFIG; fix what it names and start again)",
             shard, why[0] ? why : "see its error above", EX_CONFIG);
    kvs_error("shard %u cannot run with this configuration; stopping the node", shard);
    router_master_shutdown_begin(m, EX_CONFIG);
}

int router_master_start_workers(master_t *m)
{
    const kvs_config_t *cfg = m->cfg;
    char exe[4200];
    snprintf(exe, sizeof(exe), "%s/kvs-node", m->exe_dir);
    uint32_t *local = calloc(cfg->shards, sizeof(*local));
    if (local == NULL)
        return UV_ENOMEM;
    for (uint32_t s = 0; s < cfg->shards; s++)
        if (kvs_config_local(cfg, s))
            local[m->n_local++] = s;
    char parent_arg[48];
    snprintf(parent_arg, sizeof(parent_arg), "--exit-with-parent=%ld", (long)getpid());
    const char *args[] = {
        "--config",    m->config_path,       parent_arg,      "--report-fd", REPORT_FD_ARG,
        "--config-fd", WORKER_CONFIG_FD_ARG, "--reload-from", m->reload_arg, NULL};
    const router_sup_fd_t fds[] = {{WORKER_CONFIG_FD, m->worker_config_fd}};
    router_sup_opts_t o = {
        .loop = m->loop,
        .exe = exe,
        .file = m->node_file[0] ? m->node_file : NULL,
        .args = args,
        .shards = local,
        .n_shards = m->n_local,
        .max_shards = cfg->shards, /* a membership change may bring any shard here */
        .backoff_min_ms = 100,
        .backoff_max_ms = 10000,
        .stable_ms = 30000,
        .crash_loop_limit = 5,
        .stop_grace_ms = WORKER_GRACE_MS,
        .detach = 1,
        .report_fd = REPORT_FD,
        .inherit = fds,
        .n_inherit = 1,
        .fatal_status = EX_CONFIG,
        .on_event = on_worker_event,
        .arg = m,
        .gen_flag = "--spawn", /* 0 for a shard's first worker, 1.. for its restarts */
        .gen_added = 1,        /* a shard taken over was served before (kvs-node --spawn) */
    };
    int rc = router_sup_start(&o, &m->workers);
    free(local);
    if (rc != 0)
        kvs_error("cannot start workers (%s): %s", exe, uv_strerror(rc));
    return rc;
}

/* Starts a generation of router processes with the snapshot in
 * config_fd (which must stay open while it may spawn), numbered from
 * gen_base; with `next`, a membership change's (they listen on
 * routerI.next until router_master_change_switch). Returns 0 and *out, or a uv error
 * (logged; *out is then set if it was allocated, with no supervisor). */
int router_master_start_routers(master_t *m, rgen_t **out, uint32_t gen_base, int config_fd,
                                int next)
{
    char exe[4200], n_arg[12], pid_arg[24];
    const char *args[ROUTER_ARGS];
    snprintf(exe, sizeof(exe), "%s/kvs-router", m->exe_dir);
    router_master_router_args(m, next, args, n_arg, pid_arg);
    rgen_t *g = *out = gen_new(m);
    uint32_t *ids = calloc(m->n_procs, sizeof(*ids));
    if (g == NULL || ids == NULL) {
        free(ids);
        return UV_ENOMEM;
    }
    for (uint32_t i = 0; i < m->n_procs; i++)
        ids[i] = i;
    const router_sup_fd_t fds[] = {{ROUTER_FD_LOCK, m->lock_fd}, {ROUTER_FD_CONFIG, config_fd}};
    router_sup_opts_t o = {
        .loop = m->loop,
        .exe = exe,
        .file = m->router_file[0] ? m->router_file : NULL,
        .args = args,
        .shards = ids,
        .n_shards = m->n_procs,
        .backoff_min_ms = 100,
        .backoff_max_ms = 10000,
        .stable_ms = 30000,
        .crash_loop_limit = ROUTER_START_KILLS,
        .stop_grace_ms = ROUTER_GRACE_MS,
        .detach = 1,
        .report_fd = ROUTER_FD_REPORT,
        .fatal_status = EX_CONFIG,
        .on_event = on_router_event,
        .arg = g,
        .what = "router",
        .id_flag = "--router",
        .gen_flag = "--generation",
        .gen_base = gen_base,
        .notify_fd = ROUTER_FD_NOTIFY,
        .on_line = on_router_line,
        .inherit = fds,
        .n_inherit = 2,
    };
    int rc = router_sup_start(&o, &g->sup);
    free(ids);
    if (rc != 0)
        kvs_error("cannot start router processes (%s): %s", exe, uv_strerror(rc));
    return rc;
}

/*
 * router_master: the node's supervisor process (nginx's master).
 *
 * Start-up: once the checks passed (router_master_config.c), the
 * kvs-node workers are spawned
 * (one per local shard) and the router processes too (router.processes of
 * them, each `kvs-router --router I`, fork+exec through router_supervisor:
 * a fresh image per process, no loop state or LMDB environment crossing a
 * fork, the same restart and backoff code as the workers).
 *
 * Readiness: a router process connects to every shard and, once every
 * local one answers, listens and says "listening <inodes>" on its notify
 * pipe. When all of them did, the master checks that nothing but its
 * routers listens on the client ports (router_ports_foreign), then sends
 * READY=1 (router_notify; NotifyAccess=main: only the master speaks to
 * systemd, the router processes never do). router.ready_timeout bounds
 * the whole start; a router process that exits before the node is ready
 * fails the start (exit 1, or 78 with its reason).
 *
 * While serving: a router process that dies is restarted with backoff
 * (its clients lose their connections; the kernel gives its share of new
 * connections to the other routers meanwhile); one that exits 78 stops the
 * node with 78, like a worker that does.
 *
 * Live reload (SIGHUP, systemctl reload): router_master_config.c.
 *
 * Liveness: router_master_live.c.
 *
 * Membership change (a reload whose cluster.nodes differs):
 * router_master_change.c.
 *
 * Metrics (router.metrics_listen): the master serves GET /metrics for the
 * whole node (router_scrape.c), from every router process, every local
 * worker and itself.
 *
 * Shutdown (SIGTERM/SIGINT, a fatal exit, the readiness timeout), one entry
 * (shutdown_begin), steps in order: worker restarts are held; every router
 * process gets SIGTERM and drains its clients (SIGKILL after
 * ROUTER_GRACE_MS); once all are gone, the workers get SIGTERM (SIGKILL
 * after WORKER_GRACE_MS); then the master exits. Every SIGTERM comes with
 * a SIGCONT (router_supervisor), so a stopped child drains as well. The sum stays within
 * deploy/kvs.service's TimeoutStopSec. A second signal is passed on to the
 * routers, which then close their clients at once.
 *
 * The children die with the master: workers and routers set
 * PR_SET_PDEATHSIG (SIGTERM: they drain and exit), so a kill -9 of the
 * master leaves nothing behind for long. They run in their own process
 * groups, so a terminal's Ctrl-C reaches only the master, which stops them
 * in order.
 */
#include "router_master.h"
#include "router_master_int.h"

#include "kvs_addr.h"
#include "kvs_log.h"
#include "kvs_signals.h"
#include "router_liveness.h"
#include "router_notify.h"
#include "router_ports.h"
#include "router_probe.h"
#include "router_procs.h"
#include "router_scrape.h"
#include "router_supervisor.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
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
static uint32_t gen_running(const master_t *m, const rgen_t *g)
{
    uint32_t n = 0;
    for (uint32_t i = 0; g != NULL && g->sup != NULL && i < m->n_procs; i++)
        n += router_sup_pid(g->sup, i) > 0;
    return n;
}

static size_t gen_signal(rgen_t *g, int sig)
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

/* ---- shutdown ------------------------------------------------------------------------ */

static void on_workers_stopped(void *arg)
{
    master_t *m = arg;
    kvs_loop_close_all(m->loop);
}

/* Every router process is gone, so no client is left: stop the workers. */
void router_master_on_routers_stopped(master_t *m)
{
    m->workers_stopping = 1;
    kvs_info("clients drained; stopping workers");
    router_notify_status("clients drained; stopping workers");
    if (m->workers != NULL)
        router_sup_stop(m->workers, on_workers_stopped, m);
    else
        on_workers_stopped(m);
}

/* The one way into the shutdown: no more worker restarts, routers drain
 * (every generation, during a membership change), then workers stop.
 * Later calls only raise the exit code. */
static void shutdown_begin(master_t *m, int exit_code)
{
    if (m->exit_code == 0)
        m->exit_code = exit_code;
    if (m->shutting_down)
        return;
    m->shutting_down = 1;
    kvs_signals_ignore(&m->sighup, SIGHUP); /* ignored from now on, never fatal */
    kvs_signals_ignore(NULL, SIGUSR2);
    uv_timer_stop(&m->timer);
    uv_timer_stop(&m->live_timer); /* nobody is killed for a slow drain */
    if (exit_code == 0)
        router_notify_stopping("draining clients");
    else
        router_notify_stopping("stopping: %s", m->final_msg[0] ? m->final_msg : "see the log");
    router_scrape_stop(m->scrape);
    router_probe_stop(m->probe);
    m->changing = 0;
    if (m->workers != NULL)
        router_sup_hold(m->workers);
    if (m->routers == NULL && m->next == NULL && m->old == NULL) {
        router_master_on_routers_stopped(m);
        return;
    }
    router_master_gen_stop(m->routers);
    router_master_gen_stop(m->next);
    router_master_gen_stop(m->old);
}

static void on_ready_timeout(uv_timer_t *t)
{
    master_t *m = t->data;
    kvs_error("local shards did not come up within router.ready_timeout (%llu ms; see the worker "
              "errors above); giving up (%u of %u router processes accept clients)",
              (unsigned long long)m->start_timeout_ms,
              m->routers != NULL ? m->routers->n_listening : 0, m->n_procs);
    shutdown_begin(m, 1);
}

static void on_signal(uv_signal_t *h, int signum)
{
    master_t *m = h->data;
    const char *name = signum == SIGTERM ? "SIGTERM" : "SIGINT";
    if (m->signals++ > 0 || m->shutting_down) {
        kvs_warn("%s while shutting down: closing clients now", name);
        if (!m->workers_stopping) { /* a router's second signal */
            gen_signal(m->routers, SIGTERM);
            gen_signal(m->next, SIGTERM);
            gen_signal(m->old, SIGTERM);
        }
        return;
    }
    kvs_info("received %s: draining", name);
    shutdown_begin(m, 0);
}

/* ---- live reload ------------------------------------------------------------------ */

/* SIGHUP: a live reload; the children apply it too once the master
 * accepted the file. A new map then replaces the router processes
 * (router_master_change_begin), and the node is READY again once the new ones serve;
 * the workers get the SIGHUP then (router_master_change_switch), so after a change that
 * failed they still run the map the router processes route by. A SIGHUP
 * during a change is refused (reload_busy) without a word to systemd: the
 * change's RELOADING=1 holds until its READY=1. */
static void on_sighup(uv_signal_t *h, int signum)
{
    master_t *m = h->data;
    int map = 0;
    (void)signum;
    if (m->shutting_down)
        return;
    int notify = m->ready && !m->changing;
    if (notify)
        router_notify_reloading("reloading %s", m->config_path);
    if (router_master_reload_config(m, &map) != 0) {
        /* logged: nothing changed, nobody is told */
    } else if (map) {
        /* The serving router processes keep their config: the new
         * generation starts with the new one, the workers get the SIGHUP
         * once it serves (router_master_change_switch). */
        kvs_info("SIGHUP: the router processes of the new map start with it; the workers get "
                 "it once they serve");
    } else {
        router_master_live_configure(m); /* before the router processes take the new interval */
        size_t r = gen_signal(m->routers, SIGHUP) + gen_signal(m->next, SIGHUP) +
                   gen_signal(m->old, SIGHUP);
        size_t w = m->workers != NULL ? router_sup_signal(m->workers, SIGHUP) : 0;
        kvs_info("SIGHUP: passed on to %zu router process(es) and %zu worker(s)", r, w);
    }
    if (map) {
        router_master_change_begin(m);
        return; /* READY=1 once the new router processes serve, or the change failed */
    }
    if (notify)
        router_notify_ready("serving clients on %s: %u shards (%u local)", m->cfg->router_listen,
                            m->cfg->shards, m->n_local);
}

/* ---- metrics ------------------------------------------------------------------------ */

/* The master's own families for /metrics: its children and reloads, and
 * the master process. */
static void master_metrics(void *arg, kvs_mb_t *b)
{
    master_t *m = arg;
    static const char *const labels[] = {"role", "master"};
    Kvs__MetricFamily *restarts =
        kvs_mb_family(b, "kvs_worker_restarts_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                      "Times the master started the shard's worker again after it exited.");
    Kvs__MetricFamily *up = kvs_mb_family(b, "kvs_worker_up", KVS__METRIC_FAMILY__TYPE__GAUGE,
                                          "1 while the shard's worker process runs.");
    for (uint32_t s = 0; s < m->cfg->shards && m->worker_restarts != NULL; s++) {
        pid_t pid = m->workers != NULL ? router_sup_pid(m->workers, s) : 0;
        if (!kvs_config_local(m->cfg, s) && pid == 0)
            continue;
        const char *shard = kvs_mb_printf(b, "%u", s);
        kvs_mb_sample(b, restarts, (double)m->worker_restarts[s], 1, "shard", shard);
        kvs_mb_sample(b, up, pid > 0, 1, "shard", shard);
    }
    restarts = kvs_mb_family(b, "kvs_router_restarts_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                             "Times the master started a router process again after it exited.");
    up = kvs_mb_family(b, "kvs_router_up", KVS__METRIC_FAMILY__TYPE__GAUGE,
                       "1 while the router process accepts clients.");
    Kvs__MetricFamily *hung = kvs_mb_family(
        b, "kvs_router_liveness_kills_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
        "Times the master killed a router process that sent no heartbeat within "
        "router.liveness_timeout (restarted then, as after a crash: kvs_router_restarts_total).");
    Kvs__MetricFamily *age = kvs_mb_family(
        b, "kvs_router_heartbeat_age_seconds", KVS__METRIC_FAMILY__TYPE__GAUGE,
        "Time since the serving router process's last heartbeat (while it accepts clients and "
        "router.liveness_timeout is on).");
    uint64_t now = uv_now(m->loop);
    for (uint32_t i = 0; i < m->n_procs && m->router_restarts != NULL; i++) {
        const char *index = kvs_mb_printf(b, "%u", i);
        int serving = m->routers != NULL && m->routers->listening[i];
        kvs_mb_sample(b, restarts, (double)m->router_restarts[i], 1, "router", index);
        kvs_mb_sample(b, up, serving, 1, "router", index);
        kvs_mb_sample(b, hung, (double)m->router_hung[i], 1, "router", index);
        if (serving && m->live_timeout_ms > 0)
            kvs_mb_sample(b, age, (double)(now - m->routers->live[i].beat_ms) / 1000.0, 1, "router",
                          index);
    }
    Kvs__MetricFamily *f = kvs_mb_family(
        b, "kvs_router_processes", KVS__METRIC_FAMILY__TYPE__GAUGE,
        "Router processes running, by state: serving, starting (a membership change's new "
        "map), draining (the previous map's, closing their clients).");
    kvs_mb_sample(b, f, gen_running(m, m->routers), 1, "state", "serving");
    kvs_mb_sample(b, f, gen_running(m, m->next), 1, "state", "starting");
    kvs_mb_sample(b, f, gen_running(m, m->old), 1, "state", "draining");
    f = kvs_mb_family(b, "kvs_membership_changes_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                      "Changes of cluster.nodes taken live (SIGHUP) by result: done (the new "
                      "router processes serve), failed (they could not start; the previous map "
                      "stays).");
    kvs_mb_sample(b, f, (double)m->changes[0], 1, "result", "done");
    kvs_mb_sample(b, f, (double)m->changes[1], 1, "result", "failed");
    f = kvs_mb_family(b, "kvs_config_reloads_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                      "Configuration reloads (SIGHUP) by result: ok (the file was taken; a "
                      "membership change's outcome is kvs_membership_changes_total), error (the "
                      "file did not load), refused (a key that cannot change live changed, or a "
                      "membership change was under way).");
    static const char *const results[] = {"ok", "error", "refused"};
    for (int i = 0; i < 3; i++)
        kvs_mb_sample(b, f, (double)m->reloads[i], 2, "role", "master", "result", results[i]);
    kvs_mb_process(b, m->start_time, 1, labels);
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
 * what is there. */
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
        kvs_error("%s %s is shared with a process that is not one of this node's routers (a "
                  "socket of uid %u, inode %llu, listens on the same port with SO_REUSEPORT and "
                  "would take part of the clients: another kvs node given the same port?); stop "
                  "it or choose another port",
                  m->listen_name[l], spec, who.uid, (unsigned long long)who.inode);
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
        shutdown_begin(m, 1);
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
        if (g->n_listening == m->n_procs)
            router_master_foreign_listener(m); /* logged: nothing to stop any more */
    } else if (g->n_listening == m->n_procs) {
        become_ready(m);
    }
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
        shutdown_begin(m, EX_CONFIG);
    } else if (!m->ready) {
        snprintf(m->final_msg, sizeof(m->final_msg), "stopped: router %u could not start: %s",
                 index, why[0] ? why : "see its errors above");
        shutdown_begin(m, 1);
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
    if (!router_sup_wanted(m->workers, shard)) {
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
    shutdown_begin(m, EX_CONFIG);
}

static int start_workers(master_t *m)
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
        .args = args,
        .shards = ids,
        .n_shards = m->n_procs,
        .backoff_min_ms = 100,
        .backoff_max_ms = 10000,
        .stable_ms = 30000,
        .crash_loop_limit = 5,
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

/* ---- main ------------------------------------------------------------------------------ */

static void master_signals(master_t *m)
{
    uv_signal_init(m->loop, &m->sigterm);
    uv_signal_init(m->loop, &m->sigint);
    uv_signal_init(m->loop, &m->sighup);
    m->sigterm.data = m->sigint.data = m->sighup.data = m;
    uv_signal_start(&m->sigterm, on_signal, SIGTERM);
    uv_signal_start(&m->sigint, on_signal, SIGINT);
    uv_signal_start(&m->sighup, on_sighup, SIGHUP);
    /* a SIGHUP that came while the master started now reloads */
    kvs_signals_hold(0, SIGHUP, SIGUSR2);
    uv_timer_init(m->loop, &m->timer);
    m->timer.data = m;
    uv_timer_init(m->loop, &m->live_timer);
    m->live_timer.data = m;
}

int router_master_run(const char *config_path, const char *argv0)
{
    static master_t m; /* zeroed; lives for the whole process */
    m.config_path = config_path;
    m.lock_fd = m.config_fd = m.next_config_fd = m.worker_config_fd = m.reload_fd = -1;
    int rc = router_master_prepare(&m, argv0);
    if (rc != 0) {
        kvs_config_free(m.cfg);
        return rc;
    }
    m.loop = uv_default_loop();
    m.start_time = kvs_metrics_unix_now();
    master_signals(&m);
    m.worker_restarts = calloc(m.cfg->shards, sizeof(*m.worker_restarts));
    m.router_restarts = calloc(m.n_procs, sizeof(*m.router_restarts));
    m.router_hung = calloc(m.n_procs, sizeof(*m.router_hung));
    if (m.worker_restarts == NULL || m.router_restarts == NULL || m.router_hung == NULL ||
        start_workers(&m) != 0 ||
        router_master_start_routers(&m, &m.routers, 0, m.config_fd, 0) != 0 ||
        (m.cfg->metrics_listen[0] != '\0' &&
         router_scrape_start(m.loop, m.cfg, m.n_procs, master_metrics, &m, &m.scrape) != 0)) {
        if (m.routers != NULL && m.routers->sup == NULL) {
            router_master_gen_free(m.routers); /* none of it started */
            m.routers = NULL;
        }
        shutdown_begin(&m, 1);
    } else {
        router_notify_status("starting: waiting for %u local shard(s)", m.n_local);
        m.start_timeout_ms = m.cfg->router_ready_timeout_ms;
        uv_timer_start(&m.timer, on_ready_timeout, m.start_timeout_ms, 0);
        router_master_live_configure(&m);
    }
    uv_run(m.loop, UV_RUN_DEFAULT);
    router_sup_free(m.workers); /* every generation freed itself once stopped */
    router_scrape_free(m.scrape);
    router_probe_free(m.probe);
    uv_loop_close(m.loop);
    kvs_config_free(m.prev_cfg);
    if (m.next_config_fd >= 0)
        close(m.next_config_fd);
    free(m.worker_restarts);
    free(m.router_restarts);
    free(m.router_hung);
    kvs_config_free(m.cfg);
    if (m.final_msg[0] != '\0')
        kvs_error("%s", m.final_msg);
    else
        kvs_info("stopped");
    return m.exit_code;
}

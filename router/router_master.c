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
 * Membership change (a reload whose cluster.nodes differs; the map must
 * still load, name this node at the same address, and everything else of
 * the reload must be live, or it is refused whole as above), nginx's
 * binary-less upgrade of its workers, taken whole or not at all: the
 * master takes the new map (the file's other live keys wait in prev_cfg
 * until the switch; the serving router processes are not told, the new
 * ones start with the new snapshot), starts
 * a worker for each shard that became local (a new replica copies a
 * peer's snapshot, as at start) and a new generation of router processes
 * with the new snapshot (their generation numbers continue the old ones',
 * so client ids and cursors stay unique). Each joins the client ports
 * (SO_REUSEPORT: the ports never close) and listens on its own unix
 * socket under a name of its own, routerI.next (--next). Once every new
 * one listens (change_switch) the master renames each of those over
 * routerI.sock (kvs-cli and the scrape reach the new process from then
 * on), the master takes the file's live keys and the workers get the
 * SIGHUP (they take the new map only now: after a change that failed they
 * run the map and config the routers run), and the
 * old generation gets SIGTERM: it stops accepting, answers what it
 * received, closes its clients (they reconnect, as after any router
 * restart, and reach the new map). Once it is gone, workers of shards no
 * longer local stop (retire_workers; their data stays on disk). If the
 * new generation does not all listen within router.ready_timeout, or one
 * of it exits first, it is stopped, the master goes back to the previous
 * map and snapshot, and the old generation never stopped serving, its
 * sockets never moved (change_failed). A worker the change started that
 * exits 78 before then fails the change too, where any other stops the
 * node. While the new generation starts, the serving one's restarts wait
 * (router_sup_pause): one that exits then is restarted once the new one
 * is gone after a failure, or replaced by it. Each generation runs its
 * own snapshot (m->config_fd,
 * m->next_config_fd), so a reload while a change is in progress is
 * refused (reload again once it is over; systemd hears nothing of the
 * refused one). During a change, the shutdown drains every generation;
 * the port census counts them all; RELOADING=1 lasts until the new
 * generation serves; /metrics shows the router processes by state
 * (kvs_router_processes).
 *
 * Liveness: router_master_live.c.
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
#define ROUTER_ARGS 10
static void router_args(const master_t *m, int next, const char *args[ROUTER_ARGS], char n_arg[12],
                        char pid_arg[24])
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

static void gen_free(rgen_t *g)
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

static void on_gen_stopped(void *arg);

/* Drains g's processes (SIGTERM; SIGKILL after ROUTER_GRACE_MS); the
 * generation is freed once all are gone (on_gen_stopped). */
static void gen_stop(rgen_t *g)
{
    if (g == NULL || g->stopping)
        return;
    g->stopping = 1;
    router_sup_stop(g->sup, on_gen_stopped, g);
}

/* ---- shutdown ------------------------------------------------------------------------ */

static void on_workers_stopped(void *arg)
{
    master_t *m = arg;
    kvs_loop_close_all(m->loop);
}

/* Every router process is gone, so no client is left: stop the workers. */
static void on_routers_stopped(master_t *m)
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
        on_routers_stopped(m);
        return;
    }
    gen_stop(m->routers);
    gen_stop(m->next);
    gen_stop(m->old);
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

/* ---- membership change -------------------------------------------------------------- */

static int start_routers(master_t *m, rgen_t **out, uint32_t gen_base, int config_fd, int next);

static uint32_t count_local(const kvs_config_t *cfg)
{
    uint32_t n = 0;
    for (uint32_t s = 0; s < cfg->shards; s++)
        n += (uint32_t)kvs_config_local(cfg, s);
    return n;
}

/* The change is over (no generation starting or draining, no worker
 * retiring): the previous map and snapshot are no longer needed. */
static void change_maybe_done(master_t *m)
{
    if (m->changing || m->next != NULL || m->old != NULL || m->n_retiring > 0 ||
        m->prev_cfg == NULL)
        return;
    kvs_config_free(m->prev_cfg);
    m->prev_cfg = NULL;
    if (m->abandoned)
        kvs_info("membership change abandoned: the previous map serves, %u shards (%u local), "
                 "%u router process%s; a reload may try again",
                 m->cfg->shards, m->n_local, m->n_procs, m->n_procs == 1 ? "" : "es");
    else
        kvs_info("membership change complete: %u shards (%u local), %u router process%s",
                 m->cfg->shards, m->n_local, m->n_procs, m->n_procs == 1 ? "" : "es");
}

/* No router process uses a worker the map no longer wants any more: stop
 * those (their shard's data directory stays). */
static void retire_workers(master_t *m)
{
    for (uint32_t s = 0; s < m->cfg->shards && m->workers != NULL; s++) {
        if (kvs_config_local(m->cfg, s) || !router_sup_wanted(m->workers, s))
            continue;
        int running = router_sup_pid(m->workers, s) > 0;
        if (router_sup_retire(m->workers, s) == 0 && running)
            m->n_retiring++;
        kvs_info("membership change: shard %u is no longer served here; its worker stops", s);
    }
}

/* Removes every routerI.next: once a failed change's processes are gone,
 * and at start (the lock is held: no process of an earlier run lives),
 * nothing listens there; a process killed -9 left its file. */
void router_master_remove_next_paths(const kvs_config_t *cfg)
{
    for (uint32_t i = 0; i < KVS_ROUTER_PROCESSES_MAX; i++) {
        kvs_addr_t next;
        if (router_procs_admin_addr(cfg, i, 1, &next) == 0 && unlink(next.path) != 0 &&
            errno != ENOENT)
            kvs_warn("cannot remove %s (left by an earlier router process): %s", next.path,
                     strerror(errno));
    }
}

/* Whether a process listens on the unix socket at `path` (a connect is
 * taken at once, or waits in its backlog). */
static int path_serves(const char *path)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sun.sun_path))
        return 0;
    memcpy(sun.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return 1; /* cannot tell: leave it */
    int ok = connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0 || errno == EAGAIN;
    close(fd);
    return ok;
}

/* The previous generation is gone. One of its processes that became ready
 * only after the switch took routerI.sock over from the new process (it
 * was started to serve under that name) and removed it, or left it dead,
 * when it drained: ask the new process to take its path again. */
static void gen_reclaim_paths(master_t *m, rgen_t *g)
{
    for (uint32_t i = 0; i < m->n_procs; i++) {
        kvs_addr_t path;
        if (!g->listening[i] || router_procs_admin_addr(m->cfg, i, 0, &path) != 0 ||
            path_serves(path.path))
            continue;
        if (router_sup_signal_one(g->sup, i, SIGUSR2) == 0)
            kvs_warn("router %u's socket %s was taken by a process of the previous map that "
                     "started late; router %u takes it again",
                     i, path.path, i);
    }
}

/* A generation finished draining (shutdown, the old one after a change,
 * or a new one that could not start). */
static void on_gen_stopped(void *arg)
{
    rgen_t *g = arg;
    master_t *m = g->m;
    int was_next = m->next == g; /* a change's new generation that failed */
    int was_old = m->old == g;   /* the generation a change replaced */
    if (m->routers == g)
        m->routers = NULL;
    if (m->next == g)
        m->next = NULL;
    if (was_next && m->routers != NULL && !m->shutting_down)
        router_sup_resume(m->routers->sup); /* its generation numbers are free again */
    if (m->old == g)
        m->old = NULL;
    gen_free(g);
    if (m->shutting_down) {
        if (m->routers == NULL && m->next == NULL && m->old == NULL)
            on_routers_stopped(m);
        return;
    }
    if (was_old && m->routers != NULL)
        gen_reclaim_paths(m, m->routers);
    if (was_next)
        router_master_remove_next_paths(m->cfg);
    retire_workers(m);
    change_maybe_done(m);
}

/* The new generation cannot start: it stops, the serving one goes on with
 * the map it has, and the master goes back to the previous map and
 * snapshot, so reloading again retries. */
static void change_failed(master_t *m, const char *why)
{
    if (!m->changing)
        return;
    m->changing = 0;
    m->abandoned = 1;
    router_probe_stop(m->probe);
    uv_timer_stop(&m->timer);
    m->changes[1]++;
    kvs_error("membership change failed: %s; the router processes and workers keep serving the "
              "previous map and configuration, nothing of that reload applies (fix the cause and "
              "reload again; %s still holds the new map)",
              why, m->config_path);
    if (m->prev_cfg != NULL)
        kvs_config_apply_map(m->cfg, m->prev_cfg);
    if (m->next_config_fd >= 0)
        close(m->next_config_fd); /* `next` stops: it spawns nothing any more */
    m->next_config_fd = -1;
    m->n_local = count_local(m->cfg);
    if (m->next != NULL) {
        gen_stop(m->next); /* then on_gen_stopped stops workers the map does not want */
    } else {
        retire_workers(m);
        change_maybe_done(m);
    }
    if (m->ready)
        router_notify_ready("serving clients on %s: %u shards (%u local); membership change "
                            "failed",
                            m->cfg->router_listen, m->cfg->shards, m->n_local);
}

/* A change's bound: router.ready_timeout of the file that brought it (its
 * live keys wait in prev_cfg until the switch). */
static uint64_t change_timeout_ms(const master_t *m)
{
    return m->prev_cfg != NULL ? m->prev_cfg->router_ready_timeout_ms
                               : m->cfg->router_ready_timeout_ms;
}

static void on_change_timeout(uv_timer_t *t)
{
    master_t *m = t->data;
    char why[200];
    snprintf(why, sizeof(why),
             "the new workers did not all serve and the new router processes did not all accept "
             "clients within router.ready_timeout (%llu ms; a new local shard still copying its "
             "snapshot?)",
             (unsigned long long)change_timeout_ms(m));
    change_failed(m, why);
}

static int foreign_listener(master_t *m);

/* The new generation serves: each process's socket takes its path
 * (routerI.next renamed over routerI.sock, atomically: kvs-cli and the
 * scrape reach the old process or the new one), and its restarts from
 * now on take that path themselves. */
static void gen_take_paths(master_t *m, rgen_t *g)
{
    char n_arg[12], pid_arg[24];
    const char *args[ROUTER_ARGS];
    for (uint32_t i = 0; i < m->n_procs; i++) {
        kvs_addr_t from, to; /* both fit: the config was checked (kvs_config) */
        if (router_procs_admin_addr(m->cfg, i, 1, &from) == 0 &&
            router_procs_admin_addr(m->cfg, i, 0, &to) == 0 && rename(from.path, to.path) != 0)
            kvs_warn("membership change: router %u's socket %s: cannot move it to %s: %s; "
                     "/metrics and kvs-cli do not reach that router process",
                     i, from.path, to.path, strerror(errno));
    }
    router_args(m, 0, args, n_arg, pid_arg);
    if (router_sup_set_args(g->sup, args) != 0)
        kvs_warn("membership change: out of memory; a router process restarted from now on "
                 "listens on routerI.next, out of /metrics' and kvs-cli's reach");
}

/* Every process of the new generation listens: it serves, the old one
 * drains (stops accepting, answers what it has, closes its clients). The
 * workers now take the new map too (on_sighup held their SIGHUP back). */
static void change_switch(master_t *m)
{
    uv_timer_stop(&m->timer);
    foreign_listener(m); /* logged; nothing to stop while serving */
    m->changing = 0;
    m->old = m->routers;
    m->routers = m->next;
    m->next = NULL;
    if (m->prev_cfg != NULL) { /* the reload's live keys, held back until now */
        kvs_config_apply_live(m->cfg, m->prev_cfg);
        kvs_log_level_t level = KVS_LOG_INFO;
        kvs_log_level_parse(m->cfg->log_level, &level);
        kvs_log_set_level(level);
        kvs_log_set_format(m->cfg->log_format);
        router_master_live_configure(m);
    }
    gen_take_paths(m, m->routers);
    close(m->config_fd); /* the old generation's: it spawns nothing any more */
    m->config_fd = m->next_config_fd;
    m->next_config_fd = -1;
    router_master_set_worker_snapshot(m, m->config_fd);
    router_master_pass_reload_text(m); /* before the workers' SIGHUP */
    size_t w = m->workers != NULL ? router_sup_signal(m->workers, SIGHUP) : 0;
    kvs_info("membership change: SIGHUP passed on to %zu worker(s)", w);
    m->changes[0]++;
    kvs_info("membership change: the router processes of the new map accept clients; draining "
             "the previous ones (their clients are closed after their answers)");
    if (router_scrape_remap(m->scrape) != 0)
        kvs_warn("metrics: cannot reach the new local workers; /metrics leaves them out");
    router_notify_ready("serving clients on %s: %u shards (%u local)", m->cfg->router_listen,
                        m->cfg->shards, m->n_local);
    gen_stop(m->old); /* then on_gen_stopped retires the workers no longer wanted */
}

/* Every worker the new map added serves: start the router processes of
 * the new map. */
static void start_next(void *arg)
{
    master_t *m = arg;
    uint32_t base = 0;
    for (uint32_t i = 0; i < m->n_procs; i++) {
        uint32_t g = router_sup_generation(m->routers->sup, i);
        base = g > base ? g : base;
    }
    router_notify_status("membership change: starting router processes with the new map");
    /* Until the new generation serves (then the old one stops) or is gone
     * (on_gen_stopped): an old process restarted meanwhile would get a
     * generation number a new one has, and could take routerI.sock back
     * after change_switch renamed the new one over it. */
    router_sup_pause(m->routers->sup);
    if (start_routers(m, &m->next, base, m->next_config_fd, 1) != 0) {
        rgen_t *g = m->next;
        m->next = NULL;
        gen_free(g); /* nothing of it started */
        router_sup_resume(m->routers->sup);
        change_failed(m, "cannot start router processes");
    }
}

/* The reload took a new map (m->cfg holds it, m->prev_cfg the old one):
 * workers for shards that became local, and once they serve a new
 * generation of router processes with the new snapshot, all within
 * router.ready_timeout. */
static void change_begin(master_t *m)
{
    uint32_t added[KVS_SHARDS_MAX];
    size_t n = 0;
    int rc = 0;
    m->n_local = count_local(m->cfg);
    m->changing = 1;
    m->abandoned = 0;
    uv_timer_start(&m->timer, on_change_timeout, change_timeout_ms(m), 0);
    for (uint32_t s = 0; s < m->cfg->shards && rc == 0; s++) {
        if (!kvs_config_local(m->cfg, s) || router_sup_wanted(m->workers, s))
            continue;
        kvs_info("membership change: shard %u is now served here too; starting its worker", s);
        rc = router_sup_add(m->workers, s); /* a failed spawn is retried, not an error */
        if (rc == 0)
            added[n++] = s;
    }
    if (rc != 0) {
        char why[100];
        snprintf(why, sizeof(why), "cannot start a new worker: %s", uv_strerror(rc));
        change_failed(m, why); /* retires those already added */
        return;
    }
    if (n == 0) {
        start_next(m);
        return;
    }
    router_notify_status("membership change: waiting for %zu new worker(s) to serve", n);
    router_probe_free(m->probe); /* the previous change's: it frees itself once closed */
    m->probe = NULL;
    if (router_probe_start(m->loop, m->cfg, added, n, start_next, m, &m->probe) != 0)
        change_failed(m, "cannot reach the new workers");
}

/* ---- live reload ------------------------------------------------------------------ */

/* SIGHUP: a live reload; the children apply it too once the master
 * accepted the file. A new map then replaces the router processes
 * (change_begin), and the node is READY again once the new ones serve;
 * the workers get the SIGHUP then (change_switch), so after a change that
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
         * once it serves (change_switch). */
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
        change_begin(m);
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
static int foreign_listener(master_t *m)
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
    int shared = foreign_listener(m);
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
    router_master_live_heard(m, g,
                             index); /* a heartbeat, or it became ready: its clock starts again */
    if (beat || g->listening[index] || m->shutting_down || g->stopping)
        return;
    memcpy(g->inodes[index], inodes, sizeof(inodes));
    g->listening[index] = 1;
    g->n_listening++;
    if (g == m->next) {
        if (g->n_listening == m->n_procs)
            change_switch(m);
    } else if (m->ready) {
        kvs_info("router %u accepts clients again", index);
        if (g->n_listening == m->n_procs)
            foreign_listener(m); /* logged: nothing to stop any more */
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
        change_failed(m, msg);
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
            change_maybe_done(m);
        return;
    }
    if (sig != 0 || status != EX_CONFIG || !kvs_config_local(m->cfg, shard))
        return; /* the last: a change's leftover (failed, or done), retire_workers takes it */
    const char *why = router_sup_report(m->workers, shard);
    if (m->changing && m->prev_cfg != NULL && !kvs_config_local(m->prev_cfg, shard)) {
        char msg[700]; /* a worker the change started: the change fails, the node serves on */
        snprintf(msg, sizeof(msg), "shard %u's new worker cannot run with this configuration: %s",
                 shard, why[0] ? why : "see its error above");
        change_failed(m, msg);
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
 * routerI.next until change_switch). Returns 0 and *out, or a uv error
 * (logged; *out is then set if it was allocated, with no supervisor). */
static int start_routers(master_t *m, rgen_t **out, uint32_t gen_base, int config_fd, int next)
{
    char exe[4200], n_arg[12], pid_arg[24];
    const char *args[ROUTER_ARGS];
    snprintf(exe, sizeof(exe), "%s/kvs-router", m->exe_dir);
    router_args(m, next, args, n_arg, pid_arg);
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
        start_workers(&m) != 0 || start_routers(&m, &m.routers, 0, m.config_fd, 0) != 0 ||
        (m.cfg->metrics_listen[0] != '\0' &&
         router_scrape_start(m.loop, m.cfg, m.n_procs, master_metrics, &m, &m.scrape) != 0)) {
        if (m.routers != NULL && m.routers->sup == NULL) {
            gen_free(m.routers); /* none of it started */
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

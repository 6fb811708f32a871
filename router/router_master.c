/*
 * router_master: the node's supervisor process (nginx's master): its
 * main loop, its signals and its shutdown.
 *
 * The master's other files share its state, one master_t
 * (router_master_int.h), each with a concern of its own:
 * router_master_config.c (the start-up checks, the config snapshot and a
 * live reload's check), router_master_children.c (the workers and the
 * generations of router processes: their start, readiness and exits),
 * router_master_change.c (a membership change: a reload whose
 * cluster.nodes differs) and router_master_live.c (the router processes'
 * liveness check). This file runs them: router_master_run checks, starts
 * the children and runs the loop; SIGHUP reloads (passed on to the
 * children, or starting a membership change); SIGTERM and SIGINT stop the
 * node in order.
 *
 * Metrics (router.metrics_listen): the master serves GET /metrics for the
 * whole node (router_scrape.c), from every router process, every local
 * worker and itself.
 *
 * Shutdown (SIGTERM/SIGINT, a fatal exit, the readiness timeout), one entry
 * (router_master_shutdown_begin), steps in order: worker restarts are
 * held; every router process gets SIGTERM and drains its clients (SIGKILL after
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
#include "router_ports.h"
#include "router_master.h"
#include "router_master_int.h"

#include "kvs_conn.h"
#include "kvs_err.h"
#include "kvs_log.h"
#include "kvs_signals.h"
#include "router_notify.h"
#include "router_probe.h"
#include "router_scrape.h"
#include "router_supervisor.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

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
void router_master_shutdown_begin(master_t *m, int exit_code)
{
    if (m->exit_code == 0)
        m->exit_code = exit_code;
    if (m->shutting_down)
        return;
    m->shutting_down = 1;
    kvs_reload_sig_stop(&m->sighup, SIGHUP); /* ignored from now on, never fatal */
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
    router_master_shutdown_begin(m, 1);
}

static void on_signal(uv_signal_t *h, int signum)
{
    master_t *m = h->data;
    const char *name = signum == SIGTERM ? "SIGTERM" : "SIGINT";
    if (m->signals++ > 0 || m->shutting_down) {
        kvs_warn("%s while shutting down: closing clients now", name);
        if (!m->workers_stopping) { /* a router's second signal */
            router_master_gen_signal(m->routers, SIGTERM);
            router_master_gen_signal(m->next, SIGTERM);
            router_master_gen_signal(m->old, SIGTERM);
        }
        return;
    }
    kvs_info("received %s: draining", name);
    router_master_shutdown_begin(m, 0);
}

/* ---- live reload ------------------------------------------------------------------ */

/* SIGHUP: a live reload; the children apply it too once the master
 * accepted the file. A new map then replaces the router processes
 * (router_master_change_begin), and the node is READY again once the new ones serve;
 * the workers get the SIGHUP then (router_master_change_switch), so after a change that
 * failed they still run the map the router processes route by. A SIGHUP
 * during a change is refused (reload_busy) without a word to systemd: the
 * change's RELOADING=1 holds until its READY=1. */
static void on_sighup(void *arg)
{
    master_t *m = arg;
    int map = 0;
    if (m->shutting_down)
        return;
    int notify = m->ready && !m->changing;
    if (notify)
        router_notify_reloading("reloading %s", m->config_path);
    if (router_master_reload_config(m, &map) == 0) { /* else logged: nobody is told */
        kvs_conn_tls_reload(m->metrics_tls);         /* the metrics port is the master's */
        if (map) {
            /* The serving router processes keep their config: the new
             * generation starts with the new one, the workers get the
             * SIGHUP once it serves (router_master_change_switch). */
            kvs_info("SIGHUP: the router processes of the new map start with it; the workers "
                     "get it once they serve");
        } else {
            router_master_live_configure(m); /* before the routers take the new interval */
            size_t r = router_master_gen_signal(m->routers, SIGHUP) +
                       router_master_gen_signal(m->next, SIGHUP) +
                       router_master_gen_signal(m->old, SIGHUP);
            size_t w = m->workers != NULL ? router_sup_signal(m->workers, SIGHUP) : 0;
            kvs_info("SIGHUP: passed on to %zu router process(es) and %zu worker(s)", r, w);
        }
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
    kvs_mb_sample(b, f, router_master_gen_running(m, m->routers), 1, "state", "serving");
    kvs_mb_sample(b, f, router_master_gen_running(m, m->next), 1, "state", "starting");
    kvs_mb_sample(b, f, router_master_gen_running(m, m->old), 1, "state", "draining");
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
    kvs_tls_ctx_t *const tls[] = {m->metrics_tls};
    kvs_mb_tls_reloads(b, tls, 1, "master", NULL, NULL);
    kvs_mb_process(b, m->start_time, 1, labels);
}

/* The metrics port's TLS material and users (router.metrics_auth), when
 * it has them. Returns 0, or 1 after logging why. */
static int metrics_start(master_t *m)
{
    char err[600];
    kvs_tls_ctx_t *tls, *link_tls;
    if (router_tls_load(m->cfg, &tls, &link_tls, &m->metrics_tls, err, sizeof(err)) != 0) {
        kvs_error("%s", err);
        return 1;
    }
    kvs_tls_ctx_free(tls);
    kvs_tls_ctx_free(link_tls);
    int rc = m->cfg->metrics_auth ? kvs_auth_new(m->cfg, m->loop, &m->metrics_auth) : 0;
    if (rc != 0)
        kvs_error("users: cannot set up authentication for the metrics port: %s", kvs_strerror(rc));
    return rc != 0;
}

/* ---- main ------------------------------------------------------------------------------ */

static void master_signals(master_t *m)
{
    uv_signal_init(m->loop, &m->sigterm);
    uv_signal_init(m->loop, &m->sigint);
    m->sigterm.data = m->sigint.data = m;
    uv_signal_start(&m->sigterm, on_signal, SIGTERM);
    uv_signal_start(&m->sigint, on_signal, SIGINT);
    kvs_reload_sig_start(m->loop, &m->sighup, SIGHUP, on_sighup, m);
    kvs_signals_ignore_stray(1); /* SIGUSR2 is for router processes */
    /* a SIGHUP that came while the master started now reloads */
    kvs_signals_release(m->loop, SIGHUP, SIGUSR2);
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
    router_ports_warn_ephemeral(m.cfg);
    master_signals(&m);
    m.worker_restarts = calloc(m.cfg->shards, sizeof(*m.worker_restarts));
    m.router_restarts = calloc(m.n_procs, sizeof(*m.router_restarts));
    m.router_hung = calloc(m.n_procs, sizeof(*m.router_hung));
    /* The metrics port's users cost a hash at the dearest token's price
     * (kvs_auth's decoy): paid before the children start, so that the
     * port listens as soon as they do. */
    int metrics = m.cfg->metrics_listen[0] != '\0';
    if (m.worker_restarts == NULL || m.router_restarts == NULL || m.router_hung == NULL ||
        (metrics && metrics_start(&m) != 0) || router_master_start_workers(&m) != 0 ||
        router_master_start_routers(&m, &m.routers, 0, m.config_fd, 0) != 0 ||
        (metrics && router_scrape_start(m.loop, m.cfg, m.n_procs, m.metrics_tls, m.metrics_auth,
                                        master_metrics, &m, &m.scrape) != 0)) {
        if (m.routers != NULL && m.routers->sup == NULL) {
            router_master_gen_free(m.routers); /* none of it started */
            m.routers = NULL;
        }
        router_master_shutdown_begin(&m, 1);
    } else {
        router_notify_status("starting: waiting for %u local shard(s)", m.n_local);
        m.start_timeout_ms = m.cfg->router_ready_timeout_ms;
        uv_timer_start(&m.timer, on_ready_timeout, m.start_timeout_ms, 0);
        router_master_live_configure(&m);
    }
    uv_run(m.loop, UV_RUN_DEFAULT);
    router_sup_free(m.workers); /* every generation freed itself once stopped */
    router_scrape_free(m.scrape);
    kvs_auth_free(m.metrics_auth); /* no check in flight: the loop ran to its end */
    kvs_tls_ctx_free(m.metrics_tls);
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
    router_notify_flush(1000); /* STOPPING=1 and the last status, if the manager takes them */
    return m.exit_code;
}

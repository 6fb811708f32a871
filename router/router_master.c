/*
 * router_master: the node's supervisor process (nginx's master).
 *
 * Start-up: the config file is read once into a snapshot (a sealed memfd)
 * and loaded from it, so the master and every router process run
 * exactly the same text, even a router restarted after the file was
 * edited (the edit takes effect at the next start, as with nginx). Then
 * <data_dir>/router.lock is taken (a second node on the same data
 * refuses), the TLS material is checked, the kvs-node workers are spawned
 * (one per local shard) and the router processes too (router.processes of
 * them, each `kvs-router --router I`, fork+exec through router_supervisor:
 * a fresh image per process, no loop state or LMDB environment crossing a
 * fork, the same restart and backoff code as the workers). Each router
 * process holds the lock descriptor too, so the lock is free only once
 * the master and every router are gone.
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
 * node with 78, like a worker that does. SIGHUP is passed on to every
 * router process (TLS material reload) and worker.
 *
 * Shutdown (SIGTERM/SIGINT, a fatal exit, the readiness timeout), one entry
 * (shutdown_begin), steps in order: worker restarts are held; every router
 * process gets SIGTERM and drains its clients (SIGKILL after
 * ROUTER_GRACE_MS); once all are gone, the workers get SIGTERM (SIGKILL
 * after WORKER_GRACE_MS); then the master exits. The sum stays within
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

#include "kvs_addr.h"
#include "kvs_conn.h"
#include "kvs_err.h"
#include "kvs_fs.h"
#include "kvs_log.h"
#include "router_notify.h"
#include "router_ports.h"
#include "router_procs.h"
#include "router_supervisor.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sysexits.h>
#include <unistd.h>

#define ROUTER_DRAIN_MS 10000 /* a router process's own drain deadline (router_main.c) */
#define ROUTER_GRACE_MS (ROUTER_DRAIN_MS + 5000)
#define WORKER_GRACE_MS 10000
#define REPORT_FD 3 /* kvs-node --report-fd: why a worker exited with EX_CONFIG */
#define REPORT_FD_ARG "3"

typedef struct master_s {
    uv_loop_t *loop;
    kvs_config_t *cfg;
    const char *config_path;
    char exe_dir[4096];
    int lock_fd, config_fd;
    uint32_t n_procs, n_local;
    router_sup_t *workers, *routers;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t timer; /* readiness deadline */
    struct sockaddr_storage listen_addr[ROUTER_LISTEN_MAX];
    const char *listen_name[ROUTER_LISTEN_MAX];
    size_t n_listen;
    uint64_t (*inodes)[ROUTER_LISTEN_MAX]; /* per router process, while it listens */
    uint8_t *listening;
    uint32_t n_listening;
    int census_failed; /* sock_diag unavailable: said once */
    int signals, ready, shutting_down, workers_stopping, exit_code;
    char final_msg[800]; /* the last log line, when a child's exit stopped the node */
} master_t;

/* ---- start-up checks --------------------------------------------------------------- */

/* Reads the config file into a memfd (the snapshot every router process
 * loads) and loads the master's config from it. Returns 0, or EX_CONFIG
 * after logging why. */
static int load_snapshot(master_t *m)
{
    char err[1024];
    int in = open(m->config_path, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        kvs_error("%s: cannot open: %s", m->config_path, strerror(errno));
        return EX_CONFIG;
    }
    m->config_fd = memfd_create("kvs-config", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    int rc = m->config_fd < 0 ? -errno : 0;
    char buf[65536];
    for (ssize_t n; rc == 0 && (n = read(in, buf, sizeof(buf))) != 0;) {
        if (n < 0 && errno == EINTR)
            continue;
        ssize_t w = n < 0 ? -1 : write(m->config_fd, buf, (size_t)n);
        if (w != n) /* a memfd takes it whole, short of memory */
            rc = w < 0 ? -errno : -ENOSPC;
    }
    close(in);
    /* Nobody may change the snapshot: every router process reads this text. */
    if (rc == 0 && fcntl(m->config_fd, F_ADD_SEALS,
                         F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) != 0)
        rc = -errno;
    if (rc != 0) {
        kvs_error("%s: cannot read: %s", m->config_path, kvs_strerror(rc));
        return EX_CONFIG;
    }
    if (kvs_config_load_fd(m->config_path, m->config_fd, &m->cfg, err, sizeof(err)) != 0) {
        kvs_error("%s", err);
        return EX_CONFIG;
    }
    return 0;
}

/* One node per data directory: an flock held for the life of the master
 * and of every router process (they inherit the descriptor). Returns 0, 1,
 * or EX_CONFIG for a data directory others may write to. */
static int take_lock(master_t *m)
{
    const kvs_config_t *cfg = m->cfg;
    char path[4200], why[4400];
    int rc = kvs_mkdir_p(cfg->data_dir);
    if (rc != 0) {
        kvs_error("data_dir %s: cannot create: %s", cfg->data_dir, kvs_strerror(rc));
        return 1;
    }
    if (kvs_fs_check_private(cfg->data_dir, why, sizeof(why)) != 0) {
        kvs_error("%s", why);
        return EX_CONFIG;
    }
    snprintf(path, sizeof(path), "%s/router.lock", cfg->data_dir);
    m->lock_fd = kvs_lock_file(path);
    if (m->lock_fd == -EBUSY)
        kvs_error("another kvs-router is already running on data_dir %s (it, or one of its router "
                  "processes, holds %s); stop it first or use another data_dir",
                  cfg->data_dir, path);
    else if (m->lock_fd < 0)
        kvs_error("%s: cannot open: %s", path, kvs_strerror(m->lock_fd));
    return m->lock_fd < 0 ? 1 : 0;
}

int router_tls_load(const kvs_config_t *cfg, kvs_tls_ctx_t **tls, kvs_tls_ctx_t **link_tls,
                    char *err, size_t errlen)
{
    int rc = 0;
    *tls = *link_tls = NULL;
    if (cfg->tls_router.enabled)
        rc = kvs_conn_tls_from_config(cfg, &cfg->tls_router, "tls.router", 1, tls, err, errlen);
    if (rc == 0 && cfg->tls_link.enabled && cfg->n_remote > 0)
        rc = kvs_conn_tls_from_config(cfg, &cfg->tls_link, "tls.link", 0, link_tls, err, errlen);
    if (rc != 0) {
        if (rc != KVS_ECONFIG)
            snprintf(err, errlen, "%s", kvs_strerror(rc));
        kvs_tls_ctx_free(*tls);
        *tls = NULL;
        return KVS_ECONFIG;
    }
    return 0;
}

/* The TLS material must load before anything starts. Returns 0 or
 * EX_CONFIG after logging why. */
static int check_tls(const kvs_config_t *cfg)
{
    kvs_tls_ctx_t *tls, *link_tls;
    char err[600];
    if (router_tls_load(cfg, &tls, &link_tls, err, sizeof(err)) != 0) {
        kvs_error("%s", err);
        return EX_CONFIG;
    }
    kvs_tls_ctx_free(tls);
    kvs_tls_ctx_free(link_tls);
    return 0;
}

/* Resolves the client ports for the check that nobody else listens there.
 * Returns 0 or 1 after logging why. */
static int resolve_listeners(master_t *m)
{
    const char *names[] = {"router.listen", "router.resp_listen"};
    const char *specs[] = {m->cfg->router_listen, m->cfg->resp_listen};
    for (size_t i = 0; i < ROUTER_LISTEN_MAX; i++) {
        kvs_addr_t addr;
        char err[256];
        if (specs[i][0] == '\0')
            continue;
        int rc = kvs_addr_parse(specs[i], 0, &addr, err, sizeof(err));
        if (rc == 0)
            rc = kvs_resolve(uv_default_loop(), &addr, &m->listen_addr[m->n_listen]);
        if (rc != 0) {
            kvs_error("%s %s: %s", names[i], specs[i], rc == KVS_EINVAL ? err : uv_strerror(rc));
            return 1;
        }
        m->listen_name[m->n_listen++] = names[i];
    }
    return 0;
}

/* ---- shutdown ------------------------------------------------------------------------ */

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void on_workers_stopped(void *arg)
{
    master_t *m = arg;
    uv_walk(m->loop, close_any, NULL);
}

/* Every router process is gone, so no client is left: stop the workers. */
static void on_routers_stopped(void *arg)
{
    master_t *m = arg;
    m->workers_stopping = 1;
    kvs_info("clients drained; stopping workers");
    router_notify_status("clients drained; stopping workers");
    if (m->workers != NULL)
        router_sup_stop(m->workers, on_workers_stopped, m);
    else
        on_workers_stopped(m);
}

/* The one way into the shutdown: no more worker restarts, routers drain,
 * then workers stop. Later calls only raise the exit code. */
static void shutdown_begin(master_t *m, int exit_code)
{
    if (m->exit_code == 0)
        m->exit_code = exit_code;
    if (m->shutting_down)
        return;
    m->shutting_down = 1;
    uv_timer_stop(&m->timer);
    if (exit_code == 0)
        router_notify_stopping("draining clients");
    else
        router_notify_stopping("stopping: %s", m->final_msg[0] ? m->final_msg : "see the log");
    if (m->workers != NULL)
        router_sup_hold(m->workers);
    if (m->routers != NULL)
        router_sup_stop(m->routers, on_routers_stopped, m);
    else
        on_routers_stopped(m);
}

static void on_ready_timeout(uv_timer_t *t)
{
    master_t *m = t->data;
    kvs_error("local shards did not come up within router.ready_timeout (%llu ms; see the worker "
              "errors above); giving up (%u of %u router processes accept clients)",
              (unsigned long long)m->cfg->router_ready_timeout_ms, m->n_listening, m->n_procs);
    shutdown_begin(m, 1);
}

static void on_signal(uv_signal_t *h, int signum)
{
    master_t *m = h->data;
    const char *name = signum == SIGTERM ? "SIGTERM" : "SIGINT";
    if (m->signals++ > 0 || m->shutting_down) {
        kvs_warn("%s while shutting down: closing clients now", name);
        if (m->routers != NULL && !m->workers_stopping)
            router_sup_signal(m->routers, SIGTERM); /* a router's second signal */
        return;
    }
    kvs_info("received %s: draining", name);
    shutdown_begin(m, 0);
}

/* SIGHUP: what can change live is reloaded by each child itself. */
static void on_sighup(uv_signal_t *h, int signum)
{
    master_t *m = h->data;
    (void)signum;
    size_t r = m->routers != NULL ? router_sup_signal(m->routers, SIGHUP) : 0;
    size_t w = m->workers != NULL ? router_sup_signal(m->workers, SIGHUP) : 0;
    kvs_info("SIGHUP: passed on to %zu router process(es) and %zu worker(s)", r, w);
}

/* ---- readiness ------------------------------------------------------------------------- */

/* Is anything but our routers listening on a client port? Returns 0 when
 * not (or when the kernel cannot say: warned once), else 1 + the index of
 * the port (m->listen_name) after logging what is there. */
static int foreign_listener(master_t *m)
{
    uint64_t ours[KVS_ROUTER_PROCESSES_MAX * ROUTER_LISTEN_MAX];
    for (size_t l = 0; l < m->n_listen; l++) {
        size_t n = 0;
        for (uint32_t i = 0; i < m->n_procs; i++)
            if (m->listening[i])
                ours[n++] = m->inodes[i][l];
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
    kvs_info("node ready: %u shards (%u local), %u router process%s", m->cfg->shards, m->n_local,
             m->n_procs, m->n_procs == 1 ? "" : "es");
    router_notify_ready("serving clients on %s: %u shards (%u local)", m->cfg->router_listen,
                        m->cfg->shards, m->n_local);
}

/* A router process said something on its notify pipe. */
static void on_router_line(void *arg, uint32_t index, const char *line)
{
    master_t *m = arg;
    uint64_t inodes[ROUTER_LISTEN_MAX] = {0};
    size_t n = 0;
    if (index >= m->n_procs || router_procs_parse_listening(line, inodes, &n) != 0) {
        kvs_warn("router %u said something unexpected: %.100s", index, line);
        return;
    }
    if (m->listening[index] || m->shutting_down)
        return;
    memcpy(m->inodes[index], inodes, sizeof(inodes));
    m->listening[index] = 1;
    m->n_listening++;
    if (m->ready) {
        kvs_info("router %u accepts clients again", index);
        if (m->n_listening == m->n_procs)
            foreign_listener(m); /* logged: nothing to stop any more */
    } else if (m->n_listening == m->n_procs) {
        become_ready(m);
    }
}

/* A router process started or exited (router_supervisor logged it). */
static void on_router_event(void *arg, uint32_t index, int running, int64_t status, int sig)
{
    master_t *m = arg;
    if (running)
        return;
    if (m->listening[index]) {
        m->listening[index] = 0;
        m->n_listening--;
    }
    if (m->shutting_down)
        return;
    const char *why = router_sup_report(m->routers, index);
    if (sig == 0 && status == EX_CONFIG) {
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
 * belongs to another shard, ...). The supervisor does not restart it, and
 * a node missing a shard for good is not a node: stop, saying why. */
static void on_worker_event(void *arg, uint32_t shard, int running, int64_t status, int sig)
{
    master_t *m = arg;
    if (running || sig != 0 || status != EX_CONFIG)
        return;
    const char *why = router_sup_report(m->workers, shard);
    snprintf(m->final_msg, sizeof(m->final_msg),
             "stopped: shard %u cannot run with this configuration: %s (kvs-node exited with "
             "status %d, EX_CONFIG; fix the config and start again)",
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
    const char *args[] = {"--config",    m->config_path, parent_arg,
                          "--report-fd", REPORT_FD_ARG,  NULL};
    router_sup_opts_t o = {
        .loop = m->loop,
        .exe = exe,
        .args = args,
        .shards = local,
        .n_shards = m->n_local,
        .backoff_min_ms = 100,
        .backoff_max_ms = 10000,
        .stable_ms = 30000,
        .crash_loop_limit = 5,
        .stop_grace_ms = WORKER_GRACE_MS,
        .detach = 1,
        .report_fd = REPORT_FD,
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

static int start_routers(master_t *m)
{
    char exe[4200], n_arg[12];
    snprintf(exe, sizeof(exe), "%s/kvs-router", m->exe_dir);
    snprintf(n_arg, sizeof(n_arg), "%u", m->n_procs);
    m->inodes = calloc(m->n_procs, sizeof(*m->inodes));
    m->listening = calloc(m->n_procs, 1);
    uint32_t *ids = calloc(m->n_procs, sizeof(*ids));
    if (m->inodes == NULL || m->listening == NULL || ids == NULL) {
        free(ids);
        return UV_ENOMEM;
    }
    for (uint32_t i = 0; i < m->n_procs; i++)
        ids[i] = i;
    char pid_arg[24];
    snprintf(pid_arg, sizeof(pid_arg), "%ld", (long)getpid());
    const char *args[] = {"--config", m->config_path, "--processes", n_arg,
                          "--master", pid_arg,          NULL};
    const router_sup_fd_t fds[] = {{ROUTER_FD_LOCK, m->lock_fd}, {ROUTER_FD_CONFIG, m->config_fd}};
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
        .arg = m,
        .what = "router",
        .id_flag = "--router",
        .gen_flag = "--generation",
        .notify_fd = ROUTER_FD_NOTIFY,
        .on_line = on_router_line,
        .inherit = fds,
        .n_inherit = 2,
    };
    int rc = router_sup_start(&o, &m->routers);
    free(ids);
    if (rc != 0)
        kvs_error("cannot start router processes (%s): %s", exe, uv_strerror(rc));
    return rc;
}

/* ---- main ------------------------------------------------------------------------------ */

/* Checks, then starts everything. Returns 0 (running: the loop decides),
 * or the exit status when nothing could start. */
static int master_prepare(master_t *m, const char *argv0)
{
    int rc = load_snapshot(m);
    if (rc != 0)
        return rc;
    kvs_log_level_t level = KVS_LOG_INFO;
    kvs_log_level_parse(m->cfg->log_level, &level);
    kvs_log_set_level(level);
    kvs_log_set_format(m->cfg->log_format);
    if ((rc = take_lock(m)) != 0 || (rc = check_tls(m->cfg)) != 0 ||
        (rc = resolve_listeners(m)) != 0)
        return rc;
    m->n_procs = router_procs_count(m->cfg->router_processes);
    char exe[4200];
    size_t len = sizeof(exe);
    if (uv_exepath(exe, &len) != 0)
        snprintf(exe, sizeof(exe), "%s", argv0);
    snprintf(m->exe_dir, sizeof(m->exe_dir), "%s", dirname(exe));
    return 0;
}

static void master_signals(master_t *m)
{
    uv_signal_init(m->loop, &m->sigterm);
    uv_signal_init(m->loop, &m->sigint);
    uv_signal_init(m->loop, &m->sighup);
    m->sigterm.data = m->sigint.data = m->sighup.data = m;
    uv_signal_start(&m->sigterm, on_signal, SIGTERM);
    uv_signal_start(&m->sigint, on_signal, SIGINT);
    uv_signal_start(&m->sighup, on_sighup, SIGHUP);
    uv_timer_init(m->loop, &m->timer);
    m->timer.data = m;
}

int router_master_run(const char *config_path, const char *argv0)
{
    static master_t m; /* zeroed; lives for the whole process */
    m.config_path = config_path;
    m.lock_fd = m.config_fd = -1;
    int rc = master_prepare(&m, argv0);
    if (rc != 0) {
        kvs_config_free(m.cfg);
        return rc;
    }
    m.loop = uv_default_loop();
    master_signals(&m);
    if (start_workers(&m) != 0 || start_routers(&m) != 0) {
        shutdown_begin(&m, 1);
    } else {
        router_notify_status("starting: waiting for %u local shard(s)", m.n_local);
        uv_timer_start(&m.timer, on_ready_timeout, m.cfg->router_ready_timeout_ms, 0);
    }
    uv_run(m.loop, UV_RUN_DEFAULT);
    router_sup_free(m.routers);
    router_sup_free(m.workers);
    uv_loop_close(m.loop);
    free(m.inodes);
    free(m.listening);
    kvs_config_free(m.cfg);
    if (m.final_msg[0] != '\0')
        kvs_error("%s", m.final_msg);
    else
        kvs_info("stopped");
    return m.exit_code;
}

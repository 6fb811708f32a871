/*
 * kvs-router: one per node.
 *
 *   kvs-router --config FILE
 *
 * Start-up: load and validate the config, take <data_dir>/router.lock (a
 * second router on the same data refuses), spawn a kvs-node for every local
 * shard (those this node's entry in cluster.nodes lists, or every shard not
 * in cluster.remote), connect a link to every replica of every shard
 * (kvs_cluster: unix socket for this node's own, TCP for the others;
 * router_replica chooses among them per request), and start accepting
 * clients once every local worker answers. Remote replicas are not waited
 * for: requests go to the replicas that are up, and get 503 while none is.
 *
 * Under systemd (Type=notify) the router sends READY=1 once it accepts
 * clients, STOPPING=1 when the shutdown begins, and STATUS= lines
 * (router_notify). SIGHUP, systemd's reload, is logged and changes
 * nothing until live reload exists.
 *
 * Shutdown (SIGTERM/SIGINT): stop accepting, answer every request already
 * received, close clients, stop the workers (SIGTERM, SIGKILL after a grace
 * period), exit 0. A second signal closes clients at once. Workers run in
 * their own process group (and die with the router through
 * PR_SET_PDEATHSIG), so a terminal's Ctrl-C, which signals the whole
 * foreground group, reaches only the router and drains exactly like
 * SIGTERM; no worker is restarted once the shutdown began.
 *
 * SIGHUP reloads the TLS certificates, keys and CAs of the client listener
 * and the links from their files (rotation: connections already open keep
 * theirs, new ones use the new material; a file that does not load leaves
 * the old material in use, logged) and is passed on to every local worker,
 * which does the same for its TCP listener.
 *
 * The shutdown has one entry, shutdown_begin, whatever the cause (a signal,
 * the readiness timeout, a worker's fatal exit, a failed start), and each
 * step runs once: draining, then stopping links and workers. Exit status:
 * 0 after a signal, 1 when the node could not start (or listen), 2 for a
 * bad command line, 78 (EX_CONFIG) for a config file that does not load
 * (TLS material that does not load included), a data directory other
 * users may write to, or when a worker reported that its configuration can
 * never work (its message is the router's last log line).
 */
#include "kvs_cluster.h"
#include "kvs_config.h"
#include "kvs_err.h"
#include "kvs_fs.h"
#include "kvs_log.h"
#include "router.h"
#include "router_redis.h"
#include "router_notify.h"
#include "router_supervisor.h"

#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#define DRAIN_TIMEOUT_MS 10000
#define WORKER_GRACE_MS 10000
#define REPORT_FD 3 /* kvs-node --report-fd: why a worker exited with EX_CONFIG */
#define REPORT_FD_ARG "3"

typedef struct router_main_s {
    router_t r;
    const char *config_path;
    router_sup_t *sup;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t timer; /* readiness deadline, then drain deadline */
    int signals;
    int ready;
    int shutting_down;    /* shutdown_begin ran: draining clients */
    int workers_stopping; /* links and workers are being stopped */
    int exit_code;
    char final_msg[800]; /* the last log line, when a worker's exit stopped the node */
    uint32_t local_up;
    uint32_t n_local;
} router_main_t;

static void usage(FILE *f)
{
    fprintf(f, "usage: kvs-router --config FILE\n"
               "\n"
               "Starts a kvs node: spawns the local shard workers (kvs-node) and serves\n"
               "clients on router.listen, routing every table/key to its shard.\n");
}

static int parse_args(int argc, char **argv, router_main_t *m)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (ch == 'c') {
            m->config_path = optarg;
        } else if (ch == 'h') {
            usage(stdout);
            exit(0);
        } else {
            usage(stderr);
            return -1;
        }
    }
    if (m->config_path == NULL || optind != argc) {
        usage(stderr);
        return -1;
    }
    return 0;
}

/* One router per data directory: an flock held for the process's life.
 * Returns 0, 1, or EX_CONFIG for a data directory others may write to. */
static int take_lock(const kvs_config_t *cfg)
{
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
    int fd = kvs_lock_file(path);
    if (fd == -EBUSY)
        kvs_error("another kvs-router is already running on data_dir %s (it holds %s); stop it "
                  "first or use another data_dir",
                  cfg->data_dir, path);
    else if (fd < 0)
        kvs_error("%s: cannot open: %s", path, kvs_strerror(fd));
    return fd < 0 ? 1 : 0; /* fd stays open (and locked) until exit */
}

static void shutdown_begin(router_main_t *m, int exit_code);

/* Every local shard answers (or there is none): accept clients and say so.
 * Returns 0 or a uv error. */
static int become_ready(router_main_t *m)
{
    m->ready = 1;
    int rc = router_clients_listen(&m->r);
    if (rc != 0)
        return rc;
    kvs_info("node ready: %u shards (%u local)", m->r.shards, m->n_local);
    router_notify_ready("serving clients on %s: %u shards (%u local)", m->r.cfg->router_listen,
                        m->r.shards, m->n_local);
    return 0;
}

/* ---- links ----------------------------------------------------------------- */

static void on_link_state(router_link_t *l, int up)
{
    router_main_t *m = l->data;
    if (up && l->addr.is_unix && m->r.local != NULL)
        router_local_link_up(m->r.local, l->shard);
    if (!l->addr.is_unix || m->ready || m->shutting_down || !up || l->seen_up)
        return;     /* only this node's own workers (their unix sockets) are waited for */
    l->seen_up = 1; /* a link that drops and returns during start-up counts once */
    if (++m->local_up < m->n_local)
        return;
    uv_timer_stop(&m->timer);
    if (become_ready(m) != 0)
        shutdown_begin(m, 1);
}

/* One link per replica of every shard (kvs_cluster: the local one over
 * its unix socket, the others over TCP), grouped per shard in r->sets. */
static int start_links(router_main_t *m)
{
    const kvs_config_t *cfg = m->r.cfg;
    kvs_replica_t reps[KVS_MAX_REPLICAS];
    char err[256];
    uint32_t total = 0;
    for (uint32_t s = 0; s < cfg->shards; s++)
        total += kvs_config_replica_count(cfg, s);
    m->r.links = calloc(total, sizeof(router_link_t));
    m->r.sets = calloc(cfg->shards, sizeof(router_set_t));
    if (m->r.links == NULL || m->r.sets == NULL)
        return -ENOMEM;
    router_budget_init(&m->r.budget, cfg->retry_percent, cfg->retry_burst);
    for (uint32_t s = 0; s < cfg->shards; s++) {
        int n = kvs_cluster_replicas(cfg, s, reps, KVS_MAX_REPLICAS, err, sizeof(err));
        if (n <= 0 || m->r.n_links + (uint32_t)n > total) {
            kvs_error("shard %u: %s", s, n < 0 ? err : "no replica"); /* the config load checked */
            return KVS_EINVAL;
        }
        m->r.sets[s] = (router_set_t){.first = m->r.n_links, .n = (uint32_t)n};
        for (int i = 0; i < n; i++) {
            router_link_t *l = &m->r.links[m->r.n_links++];
            int rc = router_link_start(l, m->r.loop, s, &reps[i].addr, cfg->router_timeout_ms,
                                       (uint32_t)cfg->max_frame, &m->r.flusher,
                                       reps[i].addr.is_unix ? NULL : m->r.link_tls,
                                       router_route_reply, on_link_state);
            if (rc != 0)
                return rc;
            l->data = m;
            l->node = reps[i].node;
            l->max_queue = (size_t)cfg->client_output;
        }
    }
    return 0;
}

/* ---- workers --------------------------------------------------------------------- */

/* A worker exited with EX_CONFIG: its configuration can never work (a
 * binding's partition count differs from the topic's, its data directory
 * belongs to another shard, ...). The supervisor does not restart it, and
 * a node missing a shard for good is not a node: stop, saying why. */
static void on_worker_event(void *arg, uint32_t shard, int running, int64_t status, int sig)
{
    router_main_t *m = arg;
    if (running || sig != 0 || status != EX_CONFIG)
        return;
    const char *why = router_sup_report(m->sup, shard);
    snprintf(m->final_msg, sizeof(m->final_msg),
             "stopped: shard %u cannot run with this configuration: %s (kvs-node exited with "
             "status %d, EX_CONFIG; fix the config and start again)",
             shard, why[0] ? why : "see its error above", EX_CONFIG);
    kvs_error("shard %u cannot run with this configuration; stopping the node", shard);
    shutdown_begin(m, EX_CONFIG);
}

static int start_workers(router_main_t *m, const char *argv0)
{
    const kvs_config_t *cfg = m->r.cfg;
    char exe[4200], dir[4096];
    size_t len = sizeof(exe);
    if (uv_exepath(exe, &len) != 0)
        snprintf(exe, sizeof(exe), "%s", argv0);
    snprintf(dir, sizeof(dir), "%s", dirname(exe));
    snprintf(exe, sizeof(exe), "%s/kvs-node", dir);
    uint32_t *local = calloc(cfg->shards, sizeof(*local));
    if (local == NULL)
        return -ENOMEM;
    for (uint32_t s = 0; s < cfg->shards; s++)
        if (kvs_config_local(cfg, s))
            local[m->n_local++] = s;
    const char *args[] = {"--config",    m->config_path, "--exit-with-parent",
                          "--report-fd", REPORT_FD_ARG,  NULL};
    router_sup_opts_t o = {
        .loop = m->r.loop,
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
    int rc = router_sup_start(&o, &m->sup);
    free(local);
    if (rc != 0)
        kvs_error("cannot start workers (%s): %s", exe, uv_strerror(rc));
    return rc;
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
    router_main_t *m = arg;
    uv_walk(m->r.loop, close_any, NULL);
}

/* Every client is gone: stop the links and the workers, once. */
static void on_drained(router_t *r)
{
    router_main_t *m = (router_main_t *)r; /* r is the first member */
    if (m->workers_stopping)
        return;
    m->workers_stopping = 1;
    uv_timer_stop(&m->timer);
    kvs_info("clients drained; stopping workers");
    router_notify_status("clients drained; stopping workers");
    for (uint32_t i = 0; i < m->r.n_links; i++)
        router_link_stop(&m->r.links[i]);
    router_local_stop(m->r.local);
    if (m->sup != NULL)
        router_sup_stop(m->sup, on_workers_stopped, m);
    else
        on_workers_stopped(m);
}

static void on_drain_timeout(uv_timer_t *t)
{
    router_main_t *m = t->data;
    kvs_warn("clients did not drain within %d ms; closing them", DRAIN_TIMEOUT_MS);
    router_clients_abort(&m->r);
}

/* The one way into the shutdown: stop accepting, hold worker restarts,
 * answer what was received, then stop everything (on_drained). Later calls
 * only raise the exit code. */
static void shutdown_begin(router_main_t *m, int exit_code)
{
    if (m->exit_code == 0)
        m->exit_code = exit_code;
    if (m->shutting_down)
        return;
    m->shutting_down = 1;
    if (exit_code == 0)
        router_notify_stopping("draining clients");
    else
        router_notify_stopping("stopping: %s", m->final_msg[0] ? m->final_msg : "see the log");
    if (m->sup != NULL)
        router_sup_hold(m->sup);
    uv_timer_start(&m->timer, on_drain_timeout, DRAIN_TIMEOUT_MS, 0);
    m->r.on_drained = on_drained;
    router_clients_drain(&m->r); /* may call on_drained at once */
}

static void on_ready_timeout(uv_timer_t *t)
{
    router_main_t *m = t->data;
    kvs_error("local shards did not come up within router.ready_timeout (%llu ms; see the worker "
              "errors above); giving up",
              (unsigned long long)m->r.cfg->router_ready_timeout_ms);
    shutdown_begin(m, 1);
}

static void on_signal(uv_signal_t *h, int signum)
{
    router_main_t *m = h->data;
    const char *name = signum == SIGTERM ? "SIGTERM" : "SIGINT";
    if (m->signals++ > 0 || m->shutting_down) {
        kvs_warn("%s while shutting down: closing clients now", name);
        router_clients_abort(&m->r);
        return;
    }
    kvs_info("received %s: draining", name);
    shutdown_begin(m, 0);
}

/* ---- TLS -------------------------------------------------------------------------- */

/* Builds the TLS contexts the config asks for. Returns 0, or EX_CONFIG
 * after logging why (a file that does not load can never start). */
static int tls_start(router_main_t *m)
{
    const kvs_config_t *cfg = m->r.cfg;
    char err[600];
    int rc = 0;
    if (cfg->tls_router.enabled)
        rc = kvs_conn_tls_from_config(cfg, &cfg->tls_router, "tls.router", 1, &m->r.tls, err,
                                      sizeof(err));
    if (rc == 0 && cfg->tls_link.enabled && cfg->n_remote > 0)
        rc = kvs_conn_tls_from_config(cfg, &cfg->tls_link, "tls.link", 0, &m->r.link_tls, err,
                                      sizeof(err));
    if (rc == 0)
        return 0;
    kvs_error("%s", rc == KVS_ECONFIG ? err : kvs_strerror(rc));
    return EX_CONFIG;
}

/* Reloads one context; the old material stays in use if the new does not load. */
static void tls_reload(kvs_tls_ctx_t *c)
{
    char err[600];
    if (c == NULL)
        return;
    if (kvs_tls_ctx_reload(c, err, sizeof(err)) == 0)
        kvs_info("%s: certificate, key and CA reloaded; new connections use them",
                 kvs_tls_ctx_what(c));
    else
        kvs_error("%s: reload failed, still using the previous material: %s", kvs_tls_ctx_what(c),
                  err);
}

/* SIGHUP: what can change live. Today: TLS material, here and in every
 * local worker. */
static void on_sighup(uv_signal_t *h, int signum)
{
    router_main_t *m = h->data;
    (void)signum;
    kvs_info("received SIGHUP: reloading TLS material");
    tls_reload(m->r.tls);
    tls_reload(m->r.link_tls);
    for (uint32_t s = 0; m->sup != NULL && s < m->r.shards; s++) {
        pid_t pid = router_sup_pid(m->sup, s);
        if (pid > 0)
            uv_kill(pid, SIGHUP);
    }
}

/* ---- main --------------------------------------------------------------------------- */

/* Each loop turn, before the answers and requests queued in it are
 * written: requests held behind a connection's writes that may go now. */
static void on_flush(kvs_flusher_t *f)
{
    router_route_release(f->data);
}

static int router_start(router_main_t *m, const char *argv0)
{
    router_t *r = &m->r;
    r->loop = uv_default_loop();
    r->shards = r->cfg->shards;
    kvs_arena_init(&r->arena);
    kvs_arena_init(&r->merge_arena);
    kvs_arena_init(&r->redis_arena);
    kvs_arena_init(&r->reply_arena);
    kvs_buf_init(&r->redis_pack);
    int rc = kvs_flusher_init(&r->flusher, r->loop, on_flush, r);
    uv_signal_init(r->loop, &m->sigterm);
    uv_signal_init(r->loop, &m->sigint);
    uv_signal_init(r->loop, &m->sighup);
    m->sigterm.data = m->sigint.data = m->sighup.data = m;
    uv_signal_start(&m->sigterm, on_signal, SIGTERM);
    uv_signal_start(&m->sigint, on_signal, SIGINT);
    uv_signal_start(&m->sighup, on_sighup, SIGHUP);
    uv_timer_init(r->loop, &m->timer);
    m->timer.data = m;
    if (rc == 0)
        rc = start_workers(m, argv0);
    if (rc == 0)
        rc = start_links(m);
    if (rc == 0 && r->cfg->router_local_reads && m->n_local > 0)
        rc = router_local_new(r->loop, r->cfg, r->links, r->n_links, &r->local);
    if (rc != 0)
        return rc;
    if (m->n_local == 0) /* a pure routing node: nothing local to wait for */
        return become_ready(m);
    router_notify_status("starting: waiting for %u local shard(s)", m->n_local);
    uv_timer_start(&m->timer, on_ready_timeout, r->cfg->router_ready_timeout_ms, 0);
    return 0;
}

int main(int argc, char **argv)
{
    static router_main_t m; /* zeroed; lives for the whole process */
    char err[1024];
    kvs_config_t *cfg = NULL;

    signal(SIGPIPE, SIG_IGN);
    kvs_log_init("router", -1, KVS_LOG_INFO);
    /* Buffers above this size get their own mapping, so freeing one after
     * a burst gives the memory back to the system at once (glibc would
     * otherwise raise the threshold and keep it in the heap). */
    mallopt(M_MMAP_THRESHOLD, KVS_CONN_KEEP_BUFFER);
    if (parse_args(argc, argv, &m) != 0)
        return 2;
    if (kvs_config_load(m.config_path, &cfg, err, sizeof(err)) != 0) {
        kvs_error("%s", err);
        return EX_CONFIG;
    }
    kvs_log_level_t level = KVS_LOG_INFO;
    kvs_log_level_parse(cfg->log_level, &level);
    kvs_log_set_level(level);
    kvs_log_set_format(cfg->log_format);
    m.r.cfg = cfg;
    int rc = take_lock(cfg);
    if (rc != 0) {
        kvs_config_free(cfg);
        return rc;
    }
    rc = tls_start(&m);
    if (rc == 0 && (rc = kvs_auth_new(cfg, uv_default_loop(), &m.r.auth)) != 0) {
        kvs_error("users: cannot set up authentication: %s", kvs_strerror(rc));
        rc = 1;
    }
    if (rc != 0) {
        kvs_config_free(cfg);
        return rc;
    }
    if (router_start(&m, argv[0]) != 0)
        shutdown_begin(&m, 1);
    uv_run(m.r.loop, UV_RUN_DEFAULT);
    if (m.sup != NULL)
        router_sup_free(m.sup);
    free(m.r.links);
    free(m.r.sets);
    router_reqs_release(&m.r);
    kvs_arena_close(&m.r.arena);
    kvs_arena_close(&m.r.merge_arena);
    kvs_arena_close(&m.r.redis_arena);
    kvs_arena_close(&m.r.reply_arena);
    kvs_buf_free(&m.r.redis_pack);
    router_redis_cursors_free(&m.r);
    kvs_buf_free(&m.r.scratch);
    router_local_free(m.r.local);
    kvs_buf_free(&m.r.local_out);
    uv_loop_close(m.r.loop);
    kvs_tls_ctx_free(m.r.tls);
    kvs_tls_ctx_free(m.r.link_tls);
    kvs_auth_free(m.r.auth);
    kvs_config_free(cfg);
    if (m.final_msg[0] != '\0')
        kvs_error("%s", m.final_msg);
    else
        kvs_info("stopped");
    return m.exit_code;
}

/*
 * kvs-router: one per node.
 *
 *   kvs-router --config FILE
 *
 * Start-up: load and validate the config, take <data_dir>/router.lock (a
 * second router on the same data refuses), spawn a kvs-node for every local
 * shard (every shard not listed in cluster.remote), connect a link to every
 * shard (unix socket for local ones, TCP for remote ones), and start
 * accepting clients once every local shard answers. Remote shards are not
 * waited for: their requests get 503 until their node is reachable.
 *
 * Shutdown (SIGTERM/SIGINT): stop accepting, answer every request already
 * received, close clients, stop the workers (SIGTERM, SIGKILL after a grace
 * period), exit 0. A second signal closes clients at once.
 */
#include "kvs_config.h"
#include "kvs_err.h"
#include "kvs_fs.h"
#include "kvs_log.h"
#include "router.h"
#include "router_supervisor.h"

#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define READY_TIMEOUT_MS 30000
#define DRAIN_TIMEOUT_MS 10000
#define WORKER_GRACE_MS 10000

typedef struct router_main_s {
    router_t r;
    const char *config_path;
    router_sup_t *sup;
    uv_signal_t sigterm, sigint;
    uv_timer_t timer; /* readiness deadline, then drain deadline */
    int signals;
    int ready;
    int exit_code;
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

/* One router per data directory: an flock held for the process's life. */
static int take_lock(const kvs_config_t *cfg)
{
    char path[4200];
    int rc = kvs_mkdir_p(cfg->data_dir);
    if (rc != 0) {
        kvs_error("data_dir %s: cannot create: %s", cfg->data_dir, kvs_strerror(rc));
        return rc;
    }
    snprintf(path, sizeof(path), "%s/router.lock", cfg->data_dir);
    int fd = kvs_lock_file(path);
    if (fd == -EBUSY)
        kvs_error("another kvs-router is already running on data_dir %s (it holds %s); stop it "
                  "first or use another data_dir",
                  cfg->data_dir, path);
    else if (fd < 0)
        kvs_error("%s: cannot open: %s", path, kvs_strerror(fd));
    return fd < 0 ? fd : 0; /* fd stays open (and locked) until exit */
}

/* ---- links ----------------------------------------------------------------- */

static void on_link_state(router_link_t *l, int up)
{
    router_main_t *m = l->data;
    if (kvs_config_remote(m->r.cfg, l->shard) != NULL || m->ready || !up || l->seen_up)
        return;
    l->seen_up = 1; /* a link that drops and returns during start-up counts once */
    if (++m->local_up < m->n_local)
        return;
    m->ready = 1;
    uv_timer_stop(&m->timer);
    if (router_clients_listen(&m->r) != 0) {
        m->exit_code = 1;
        uv_kill(getpid(), SIGTERM); /* unwind through the normal shutdown */
        return;
    }
    kvs_info("node ready: %u shards (%u local)", m->r.shards, m->n_local);
}

static int start_links(router_main_t *m)
{
    const kvs_config_t *cfg = m->r.cfg;
    m->r.links = calloc(cfg->shards, sizeof(router_link_t));
    if (m->r.links == NULL)
        return -ENOMEM;
    for (uint32_t s = 0; s < cfg->shards; s++) {
        const kvs_remote_t *rem = kvs_config_remote(cfg, s);
        char text[4200], err[256];
        kvs_addr_t addr;
        if (rem != NULL)
            snprintf(text, sizeof(text), "%s", rem->address);
        else
            snprintf(text, sizeof(text), "unix:%s/shard-%u.sock", cfg->data_dir, s);
        if (kvs_addr_parse(text, 0, &addr, err, sizeof(err)) != 0) {
            kvs_error("shard %u address: %s", s, err);
            return KVS_EINVAL;
        }
        int rc = router_link_start(&m->r.links[s], m->r.loop, s, &addr, cfg->router_timeout_ms,
                                   (uint32_t)cfg->max_frame, &m->r.flusher, router_route_reply,
                                   on_link_state);
        if (rc != 0)
            return rc;
        m->r.links[s].data = m;
        m->r.links[s].max_queue = (size_t)cfg->client_output;
    }
    return 0;
}

/* ---- workers --------------------------------------------------------------------- */

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
        if (kvs_config_remote(cfg, s) == NULL)
            local[m->n_local++] = s;
    const char *args[] = {"--config", m->config_path, "--exit-with-parent", NULL};
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

static void stop_workers(router_main_t *m)
{
    for (uint32_t s = 0; s < m->r.shards && m->r.links != NULL; s++)
        router_link_stop(&m->r.links[s]);
    if (m->sup != NULL)
        router_sup_stop(m->sup, on_workers_stopped, m);
    else
        on_workers_stopped(m);
}

static void on_drained(router_t *r)
{
    router_main_t *m = (router_main_t *)r; /* r is the first member */
    uv_timer_stop(&m->timer);
    kvs_info("clients drained; stopping workers");
    stop_workers(m);
}

static void on_timer(uv_timer_t *t)
{
    router_main_t *m = t->data;
    if (!m->ready && !m->r.draining) {
        kvs_error("local shards did not come up within %d s (see the worker errors above); "
                  "giving up",
                  READY_TIMEOUT_MS / 1000);
        m->exit_code = 1;
        m->r.on_drained = on_drained;
        router_clients_drain(&m->r);
        return;
    }
    kvs_warn("clients did not drain within %d ms; closing them", DRAIN_TIMEOUT_MS);
    router_clients_abort(&m->r);
}

static void on_signal(uv_signal_t *h, int signum)
{
    router_main_t *m = h->data;
    if (m->signals++ > 0) {
        kvs_warn("second signal: closing clients now");
        router_clients_abort(&m->r);
        return;
    }
    kvs_info("received %s: draining", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    uv_timer_start(&m->timer, on_timer, DRAIN_TIMEOUT_MS, 0);
    m->r.on_drained = on_drained;
    router_clients_drain(&m->r);
}

/* ---- main --------------------------------------------------------------------------- */

static int router_start(router_main_t *m, const char *argv0)
{
    router_t *r = &m->r;
    r->loop = uv_default_loop();
    r->shards = r->cfg->shards;
    kvs_arena_init(&r->arena);
    kvs_arena_init(&r->merge_arena);
    int rc = kvs_flusher_init(&r->flusher, r->loop, NULL, r);
    uv_signal_init(r->loop, &m->sigterm);
    uv_signal_init(r->loop, &m->sigint);
    m->sigterm.data = m->sigint.data = m;
    uv_signal_start(&m->sigterm, on_signal, SIGTERM);
    uv_signal_start(&m->sigint, on_signal, SIGINT);
    uv_timer_init(r->loop, &m->timer);
    m->timer.data = m;
    if (rc == 0)
        rc = start_workers(m, argv0);
    if (rc == 0)
        rc = start_links(m);
    if (rc != 0)
        return rc;
    if (m->n_local == 0) { /* a pure routing node: nothing local to wait for */
        m->ready = 1;
        return router_clients_listen(r);
    }
    uv_timer_start(&m->timer, on_timer, READY_TIMEOUT_MS, 0);
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
        return 1;
    }
    kvs_log_level_t level = KVS_LOG_INFO;
    kvs_log_level_parse(cfg->log_level, &level);
    kvs_log_set_level(level);
    m.r.cfg = cfg;
    if (take_lock(cfg) != 0) {
        kvs_config_free(cfg);
        return 1;
    }
    if (router_start(&m, argv[0]) != 0) {
        m.exit_code = 1;
        m.signals = 1;
        m.r.on_drained = on_drained;
        router_clients_drain(&m.r);
    }
    uv_run(m.r.loop, UV_RUN_DEFAULT);
    if (m.sup != NULL)
        router_sup_free(m.sup);
    free(m.r.links);
    router_reqs_release(&m.r);
    kvs_arena_close(&m.r.arena);
    kvs_arena_close(&m.r.merge_arena);
    uv_loop_close(m.r.loop);
    kvs_config_free(cfg);
    kvs_info("stopped");
    return m.exit_code;
}

/*
 * kvs-router: one per node.
 *
 *   kvs-router --config FILE
 *
 * runs the node's master (router_master.c): it loads the config, takes
 * <data_dir>/router.lock, spawns a kvs-node for every local shard (those this node's entry in
 * cluster.nodes lists, or every shard not in cluster.remote) and
 * router.processes router processes, supervises them all, tells systemd
 * when the node is ready, and stops everything in order.
 *
 *   kvs-router --config FILE --print data_dir
 *
 * loads the config as the master would, prints the value of the key
 * (data_dir, as written: relative to the directory the node runs in) and
 * exits: 0, or EX_CONFIG with the loader's error (deploy/start.sh asks it
 * where the node keeps its lock).
 *
 *   kvs-router --config FILE --check
 *
 * loads the config, the TLS material and plugins it names, and checks its
 * data_dir's permissions, as a start would, and exits: 0, or EX_CONFIG
 * with the error (as `nginx -t`; the
 * systemd unit runs it before it sends SIGHUP, so that `systemctl reload`
 * fails on a file with errors).
 *
 * This file is also the router process the master starts:
 *
 *   kvs-router --config FILE --processes N --master PID [--next] --generation G --router I
 *
 * with the descriptors router_procs.h lists (never started by hand);
 * --next for a membership change's new generation, which listens on
 * routerI.next until the master renames it into place (router_master_change.c). A
 * router process loads the master's config snapshot, takes its share of
 * the node-wide limits, connects a link to every shard (unix socket for
 * local ones, TCP for remote ones), and once every local shard answers
 * binds its own socket on the client ports (SO_REUSEPORT: all router
 * processes share them, the kernel spreads connections) and tells the
 * master. Remote shards are not waited for: their requests get 503 until
 * their node is reachable. Everything a client sees lives in one router
 * process: its connection, session, requests, HSCAN cursors; nothing is
 * shared between router processes but the ports.
 *
 * Shutdown of a router process (SIGTERM/SIGINT from the master, or the
 * master's death through PR_SET_PDEATHSIG): stop accepting, answer every
 * request already received, close clients, stop the links, exit 0. A
 * second signal closes clients at once; clients still there after
 * DRAIN_TIMEOUT_MS are closed too. The master stops the workers once every
 * router process is gone.
 *
 * SIGHUP (passed on by the master once its own check accepted the file,
 * see router_master_config.c) is a live reload: the router process loads the
 * text the master accepted (--reload-from; the file itself if that cannot
 * be opened, or without a master), takes its share of it, and checks it against
 * its running config with the same rules (kvs_config_reload_check: a file
 * that does not load, or that changes a key that cannot change live,
 * changes nothing, logged). Otherwise the live keys move into the running
 * config (kvs_config_apply_live: r->cfg keeps its address, so every module
 * reads the new values in place), the values modules copied are pushed to
 * them (apply_reload), and the TLS certificates, keys and CAs of the
 * client listener and the links are read again from their files
 * (rotation: connections already open keep theirs, new ones use the new
 * material; a file that does not load leaves the old material in use,
 * logged). A changed cluster.nodes is not applied here: its links were
 * built from the map it started with, and the master replaces the whole
 * process by one started with the new map (router_master_change.c), which then
 * drains this one.
 *
 * Heartbeat: from the moment it listens until it exits (its drain
 * included), a router process sends the master a heartbeat line on its
 * notify pipe from a timer of its loop, every quarter of
 * router.liveness_timeout (router_liveness.h): a loop that stops turning
 * (stopped, looping, deadlocked) goes silent, and the master kills and
 * restarts the process rather than leave it its share of new connections.
 * A reload that changes the timeout takes effect at once: one beat then,
 * the next ones at the new interval.
 *
 * Operations: the request hooks, metrics and slow log (router_ops.c) of
 * this process, its plugins (loaded at start; a plugin that does not load
 * is a fatal configuration error, 78), and its own unix socket
 * <data_dir>/routerI.sock (router_client.c), which the master's metrics
 * listener asks for this process's metrics.
 *
 * Exit status (the master's, which is the node's): 0 after a signal, 1
 * when the node could not start (or listen), 2 for a bad command line, 78
 * (EX_CONFIG) for a config file that does not load (TLS material that does
 * not load included), a data directory other users may write to, or when
 * a worker or router process reported that its configuration can never
 * work (its message is the master's last log line). A router process
 * exits 0 after its drain, 1 when it cannot listen, 78 when its TLS
 * material does not load; the reason goes to the master on its report
 * descriptor too.
 */
#include "kvs_cluster.h"
#include "kvs_config.h"
#include "kvs_conn.h"
#include "kvs_err.h"
#include "kvs_fs.h"
#include "kvs_log.h"
#include "kvs_mem.h"
#include "kvs_plugins.h"
#include "kvs_record.h"
#include "kvs_signals.h"
#include "kvs_testhook.h"
#include "router.h"
#include "router_liveness.h"
#include "router_master.h"
#include "router_procs.h"
#include "router_redis.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#define DRAIN_TIMEOUT_MS 10000 /* router_master_int.h allows this plus a margin */

typedef struct router_main_s {
    router_t r;
    kvs_config_t *cfg; /* r.cfg, writable: a reload changes its live keys in place */
    kvs_plugins_t *plugins;
    uint64_t reloads[3]; /* ok, error, refused */
    double start_time;
    const char *config_path;
    long index; /* --router: this router process's index; -1: the master */
    long gen;   /* --generation */
    long n_procs;
    long master;             /* --master: the pid of the master that started this router process */
    const char *reload_from; /* --reload-from: the text a reload reads (the master's), or NULL */
    const char *print;       /* --print: the config key to print, or NULL */
    int check;               /* --check: load the config and its TLS material, exit */
    int next; /* --next: a membership change's new generation (router_t.admin_next) */
    uv_signal_t sigterm, sigint, sigusr2;
    kvs_reload_sig_t sighup;
    uv_timer_t timer;       /* drain deadline */
    uv_timer_t beat;        /* the heartbeat to the master, once listening */
    uint64_t beat_every_ms; /* its interval now; 0: not beating */
    int beat_failed;        /* a failed heartbeat was logged */
    int signals;
    int ready;
    int listening;      /* told the master so: the heartbeat runs */
    int shutting_down;  /* shutdown_begin ran: draining clients */
    int links_stopping; /* clients are gone: links are being stopped */
    int exit_code;
    uint32_t local_up;
    uint32_t n_local;
} router_main_t;

static void usage(FILE *f)
{
    fprintf(f, "usage: kvs-router --config FILE\n"
               "       kvs-router --version\n"
               "       kvs-router --config FILE --print data_dir\n"
               "       kvs-router --config FILE --check\n"
               "\n"
               "Starts a kvs node: spawns the local shard workers (kvs-node) and\n"
               "router.processes router processes, which serve clients on router.listen,\n"
               "routing every table/key to its shard.\n"
               "\n"
               "--print data_dir: load FILE as the node would, print its data_dir (as\n"
               "written: relative to the directory the node runs in) and exit; a config\n"
               "error is printed instead, with exit status 78.\n"
               "--check: load FILE, the TLS certificates, keys and CAs and the plugins it\n"
               "names, and check data_dir's permissions, as a start would; exit 0, or print\n"
               "the error and exit 78.\n"
               "A running node also refuses a reload that changes a key that cannot change\n"
               "live (README, \"Live reload\"): --check cannot know the running config.\n");
}

/* A decimal number of --router, --generation, --processes or --master in [0, max];
 * -1 for anything else. */
static long number_arg(const char *s, long max)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    return errno == 0 && end != s && *end == '\0' && v >= 0 && v <= max ? v : -1;
}

static int parse_args(int argc, char **argv, router_main_t *m)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"version", no_argument, NULL, 'V'},
                                         {"router", required_argument, NULL, 'r'},
                                         {"generation", required_argument, NULL, 'g'},
                                         {"processes", required_argument, NULL, 'p'},
                                         {"master", required_argument, NULL, 'm'},
                                         {"next", no_argument, NULL, 'n'},
                                         {"reload-from", required_argument, NULL, 'R'},
                                         {"print", required_argument, NULL, 'P'},
                                         {"check", no_argument, NULL, 'C'},
                                         {NULL, 0, NULL, 0}};
    int ch, bad = 0;
    m->index = m->gen = m->n_procs = m->master = -1;
    while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (ch == 'c') {
            m->config_path = optarg;
        } else if (ch == 'h') {
            usage(stdout);
            exit(kvs_fs_stdout_done("kvs-router"));
        } else if (ch == 'V') {
            printf("kvs-router %s\n", KVS_VERSION);
            exit(kvs_fs_stdout_done("kvs-router"));
        } else if (ch == 'r') {
            bad |= (m->index = number_arg(optarg, KVS_ROUTER_PROCESSES_MAX - 1)) < 0;
        } else if (ch == 'g') {
            bad |= (m->gen = number_arg(optarg, UINT32_MAX)) < 0;
        } else if (ch == 'p') {
            bad |= (m->n_procs = number_arg(optarg, KVS_ROUTER_PROCESSES_MAX)) < 1;
        } else if (ch == 'm') {
            bad |= (m->master = number_arg(optarg, INT32_MAX)) < 1;
        } else if (ch == 'n') {
            m->next = 1;
        } else if (ch == 'R') {
            m->reload_from = optarg;
        } else if (ch == 'P') {
            m->print = optarg;
            if (strcmp(optarg, "data_dir") != 0) { /* the one key asked for so far */
                fprintf(stderr, "kvs-router: --print %s: only data_dir can be printed\n", optarg);
                bad = 1;
            }
        } else if (ch == 'C') {
            m->check = 1;
        } else {
            bad = 1;
        }
    }
    /* --router needs the other three; the master takes none of them. */
    if (m->index >= 0 && (m->gen < 0 || m->n_procs < 1 || m->index >= m->n_procs || m->master < 1))
        bad = 1;
    if (m->index < 0 &&
        (m->gen >= 0 || m->n_procs >= 0 || m->master >= 0 || m->next || m->reload_from))
        bad = 1;
    if ((m->print != NULL || m->check) && m->index >= 0)
        bad = 1;
    if (m->print != NULL && m->check)
        bad = 1;
    if (bad || m->config_path == NULL || optind != argc) {
        usage(stderr);
        return -1;
    }
    return 0;
}

/* Tells the master why this router process is about to exit (one line on
 * the report descriptor, see router_procs.h), after logging it. */
__attribute__((format(printf, 1, 2))) static void report_exit(const char *fmt, ...)
{
    char line[700];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t len = (size_t)n < sizeof(line) - 1 ? (size_t)n : sizeof(line) - 2;
    kvs_error("%.*s", (int)len, line);
    line[len++] = '\n';
    for (size_t off = 0; off < len;) {
        ssize_t w = write(ROUTER_FD_REPORT, line + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += (size_t)w;
    }
}

static void shutdown_begin(router_main_t *m, int exit_code);

/* Tells the master this router process accepts clients, naming its
 * listeners' sockets (the master checks nobody else's share the port). */
static void tell_listening(router_main_t *m)
{
    char line[96];
    size_t len = router_procs_listening_line(line, sizeof(line), m->r.listen_inodes, m->r.n_listen);
    ssize_t w;
    do
        w = write(ROUTER_FD_NOTIFY, line, len);
    while (w < 0 && errno == EINTR);
    if (w != (ssize_t)len)
        kvs_warn("cannot tell the master this router listens: %s", strerror(errno));
}

static void on_beat(uv_timer_t *t)
{
    router_main_t *m = t->data;
    int rc = router_liveness_beat(ROUTER_FD_NOTIFY);
    /* EAGAIN: the master does not read (it does not check anyone
     * meanwhile); EPIPE: it is gone (its death signal drains this one). */
    if (rc == 0 || rc == -EAGAIN || rc == -EPIPE || m->beat_failed)
        return;
    m->beat_failed = 1;
    kvs_warn("cannot send the master a heartbeat: %s; it will take this router process for hung "
             "after router.liveness_timeout",
             strerror(-rc));
}

/* Runs the heartbeat at the interval the config says now (once this
 * process listens; at a reload): a changed interval beats at once, so a
 * master whose timeout just got shorter hears from it before it waits
 * the new interval. */
static void beat_configure(router_main_t *m)
{
    uint64_t every = router_liveness_interval_ms(m->cfg->router_liveness_timeout_ms);
    if (!m->listening || every == m->beat_every_ms)
        return;
    m->beat_every_ms = every;
    if (every == 0) {
        uv_timer_stop(&m->beat);
        return;
    }
    on_beat(&m->beat);
    uv_timer_start(&m->beat, on_beat, every, every);
}

/* Test builds only, never config keys: the loop stops for the hook's
 * milliseconds, as slow work would. KVS_TEST_ROUTER_READY_DELAY_MS: a
 * router process of the serving generation (not --next) waits, its signals
 * held, before it takes its sockets (a membership change can switch to a
 * new generation meanwhile); KVS_TEST_ROUTER_RELOAD_DELAY_MS: a reload
 * reads its file this much longer (a config of many MiB). */
static void test_delay(const char *hook, const char *doing)
{
    uint64_t ms = 0;
    if (!kvs_test_hook_u64(hook, &ms) || ms == 0)
        return;
    kvs_warn("test hook: %s in %llu ms (%s)", doing, (unsigned long long)ms, hook);
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Every local shard answers (or there is none): accept clients and say so.
 * Returns 0 or a uv error. */
static int become_ready(router_main_t *m)
{
    m->ready = 1;
    if (!m->next)
        test_delay("KVS_TEST_ROUTER_READY_DELAY_MS", "taking the sockets");
    int rc = router_clients_listen(&m->r);
    if (rc != 0) {
        report_exit("cannot listen for clients: %s (see above)", uv_strerror(rc));
        return rc;
    }
    kvs_info("router %u of %u ready: %u shards (%u local)", m->r.proc_index, m->r.n_procs,
             m->r.shards, m->n_local);
    tell_listening(m);
    m->listening = 1;
    beat_configure(m);
    return 0;
}

/* ---- links ----------------------------------------------------------------- */

static void on_link_state(router_link_t *l, int up)
{
    router_main_t *m = l->data;
    if (up && l->addr.is_unix && m->r.local != NULL)
        router_local_link_up(m->r.local, l->shard);
    router_route_cap_changed(&m->r, l->shard); /* the replicas a read may go to changed */
    if (!l->addr.is_unix || m->ready || m->shutting_down || !up || l->seen_up)
        return;     /* only this node's own workers (their unix sockets) are waited for */
    l->seen_up = 1; /* a link that drops and returns during start-up counts once */
    if (++m->local_up < m->n_local)
        return;
    if (become_ready(m) != 0)
        shutdown_begin(m, 1);
}

/* The links a router process keeps: one per replica of every shard. */
static uint32_t link_count(const kvs_config_t *cfg)
{
    uint32_t total = 0;
    for (uint32_t s = 0; s < cfg->shards; s++)
        total += kvs_config_replica_count(cfg, s);
    return total;
}

/* One link per replica of every shard (kvs_cluster: the local one over
 * its unix socket, the others over TCP), grouped per shard in r->sets. */
static int start_links(router_main_t *m)
{
    const kvs_config_t *cfg = m->r.cfg;
    kvs_replica_t reps[KVS_MAX_REPLICAS];
    char err[256];
    uint32_t total = link_count(cfg);
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
        kvs_list_init(&m->r.sets[s].cap_wait);
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
            if (cfg->has_map_digest && !reps[i].addr.is_unix) /* another node's worker */
                l->map_digest = cfg->map_digest;
            if (reps[i].addr.is_unix) /* this node's own worker, a child of the master */
                l->peer_parent = (pid_t)m->master;
            l->max_queue = (size_t)cfg->client_output;
        }
    }
    return 0;
}

/* ---- shutdown ------------------------------------------------------------------------ */

/* Every client is gone: stop the links, once, and let the loop end. */
static void on_drained(router_t *r)
{
    router_main_t *m = (router_main_t *)r; /* r is the first member */
    if (m->links_stopping)
        return;
    m->links_stopping = 1;
    uv_timer_stop(&m->timer);
    kvs_info("clients drained");
    for (uint32_t i = 0; i < m->r.n_links; i++)
        router_link_stop(&m->r.links[i]);
    router_local_stop(m->r.local);
    kvs_loop_close_all(m->r.loop);
}

static void on_drain_timeout(uv_timer_t *t)
{
    router_main_t *m = t->data;
    kvs_warn("clients did not drain within %d ms; closing them", DRAIN_TIMEOUT_MS);
    router_clients_abort(&m->r);
}

/* The one way into the shutdown: stop accepting, answer what was
 * received, then stop the links (on_drained). Later calls only raise the
 * exit code. */
static void shutdown_begin(router_main_t *m, int exit_code)
{
    if (m->exit_code == 0)
        m->exit_code = exit_code;
    if (m->shutting_down)
        return;
    m->shutting_down = 1;
    kvs_reload_sig_stop(&m->sighup, SIGHUP); /* ignored, never fatal */
    kvs_signals_ignore(&m->sigusr2, SIGUSR2);
    uv_timer_start(&m->timer, on_drain_timeout, DRAIN_TIMEOUT_MS, 0);
    m->r.on_drained = on_drained;
    router_clients_drain(&m->r); /* may call on_drained at once */
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
 * after reporting why (a file that does not load can never start). */
static int tls_start(router_main_t *m)
{
    char err[600];
    if (router_tls_load(m->r.cfg, &m->r.tls, &m->r.link_tls, NULL, err, sizeof(err)) == 0)
        return 0;
    report_exit("%s", err);
    return EX_CONFIG;
}

/* Pushes the reloaded live keys to what copied them: the slow log and hook
 * chain were rebuilt already; client limits (to connected clients too,
 * see kvs_conn_group_set_limits), links' router.timeout (for requests
 * sent from now on) and request queue bound, the retry budget, the
 * heartbeat's interval. */
static void apply_reload(router_main_t *m)
{
    router_t *r = &m->r;
    const kvs_config_t *cfg = m->cfg;
    router_clients_reload(r, cfg);
    for (uint32_t i = 0; i < r->n_links && r->links != NULL; i++) {
        r->links[i].timeout_ms = cfg->router_timeout_ms;
        r->links[i].max_queue = (size_t)cfg->client_output;
    }
    router_budget_configure(&r->budget, cfg->retry_percent, cfg->retry_burst);
    beat_configure(m);
    kvs_log_level_t level = KVS_LOG_INFO;
    kvs_log_level_parse(cfg->log_level, &level);
    kvs_log_set_level(level);
    kvs_log_set_format(cfg->log_format);
}

/* The config file, reloaded (see the file comment). Returns 0 when it
 * applied, nonzero (logged) when nothing changed. */
static int reload_config(router_main_t *m)
{
    char err[1024], changed[512], fixed[512];
    kvs_config_t *next = NULL;
    int fell_back = 0;
    int loaded =
        kvs_config_load_from(m->config_path, m->reload_from, &next, err, sizeof(err), &fell_back);
    test_delay("KVS_TEST_ROUTER_RELOAD_DELAY_MS", "reloading");
    if (fell_back != 0)
        kvs_warn("reload: cannot read the master's snapshot %s (%s); reading %s itself",
                 m->reload_from, strerror(fell_back), m->config_path);
    if (loaded != 0) {
        kvs_error("reload: %s; the running configuration is unchanged", err);
        m->reloads[1]++;
        return -1;
    }
    router_procs_share(next, m->r.proc_index, m->r.n_procs); /* as the running one was */
    int rc = kvs_config_reload_check(m->cfg, next, changed, sizeof(changed), fixed, sizeof(fixed));
    if (rc != 0) {
        kvs_config_reload_refusal(m->cfg, next, m->config_path, err, sizeof(err));
        kvs_error("reload refused: %s; the running configuration is unchanged", err);
        m->reloads[2]++;
    } else if ((rc = router_ops_reload(&m->r, next)) != 0) {
        kvs_error("reload: out of memory; the running configuration is unchanged");
        m->reloads[1]++;
    } else {
        kvs_config_apply_live(m->cfg, next); /* next now holds the old values */
        apply_reload(m);
        m->reloads[0]++;
        kvs_info("configuration reloaded from %s (%s)", m->config_path,
                 changed[0] ? changed : "nothing changed");
        if (!kvs_config_map_eq(m->cfg, next))
            kvs_info("cluster.nodes changed: this router process keeps routing by the map it "
                     "started with until the master replaces it");
    }
    kvs_config_free(next);
    kvs_mem_trim(); /* what reading the file took (kvs_mem.h) */
    return rc;
}

/* SIGHUP: the config's live keys, then the TLS material. A refused
 * reload changes neither. */
static void on_sighup(void *arg)
{
    router_main_t *m = arg;
    if (m->shutting_down)
        return;
    /* Reading the file may take a while (up to 64 MiB): the master is told,
     * so that it does not take this busy loop for a hung one, and hears a
     * beat once it is done (router_master_live.c). */
    int beats = m->beat_every_ms != 0;
    if (beats)
        (void)router_liveness_reloading(ROUTER_FD_NOTIFY); /* lost: judged as before */
    if (reload_config(m) == 0) {
        kvs_conn_tls_reload(m->r.tls);
        kvs_conn_tls_reload(m->r.link_tls);
    }
    if (beats || m->beat_every_ms != 0)
        on_beat(&m->beat);
}

/* The master: this process's own socket was taken from it (see
 * router_clients_retake_admin). */
static void on_sigusr2(uv_signal_t *h, int signum)
{
    router_main_t *m = h->data;
    (void)signum;
    if (!m->shutting_down)
        router_clients_retake_admin(&m->r);
}

/* More Metrics families: what only main knows (reloads, the process). */
static void main_metrics(router_t *r, kvs_mb_t *b)
{
    router_main_t *m = (router_main_t *)r; /* r is the first member */
    static const char *const labels[] = {"role", "router"};
    Kvs__MetricFamily *f =
        kvs_mb_family(b, "kvs_config_reloads_total", KVS__METRIC_FAMILY__TYPE__COUNTER,
                      "Configuration reloads (SIGHUP) by result: ok, error (the file did not "
                      "load), refused (a key that cannot change live changed).");
    static const char *const results[] = {"ok", "error", "refused"};
    for (int i = 0; i < 3; i++)
        kvs_mb_sample(b, f, (double)m->reloads[i], 2, "role", "router", "result", results[i]);
    kvs_tls_ctx_t *const tls[] = {r->tls, r->link_tls};
    kvs_mb_tls_reloads(b, tls, 2, "router", NULL, NULL);
    kvs_mb_process(b, m->start_time, 1, labels);
}

/* ---- main --------------------------------------------------------------------------- */

/* Each loop turn, before the answers and requests queued in it are
 * written: requests held behind a connection's writes that may go now. */
static void on_flush(kvs_flusher_t *f)
{
    router_route_release(f->data);
}

static int router_start(router_main_t *m)
{
    router_t *r = &m->r;
    r->loop = uv_default_loop();
    r->shards = r->cfg->shards;
    kvs_list_init(&r->clients);
    kvs_list_init(&r->release);
    kvs_unproven_init(&r->unproven[0]);
    kvs_unproven_init(&r->unproven[1]);
    kvs_arena_init(&r->arena);
    kvs_arena_init(&r->merge_arena);
    kvs_arena_init(&r->redis_arena);
    kvs_arena_init(&r->reply_arena);
    kvs_buf_init(&r->redis_pack);
    int rc = kvs_flusher_init(&r->flusher, r->loop, on_flush, r);
    uv_signal_init(r->loop, &m->sigterm);
    uv_signal_init(r->loop, &m->sigint);
    uv_signal_init(r->loop, &m->sigusr2);
    m->sigterm.data = m->sigint.data = m->sigusr2.data = m;
    uv_signal_start(&m->sigterm, on_signal, SIGTERM);
    uv_signal_start(&m->sigint, on_signal, SIGINT);
    kvs_reload_sig_start(r->loop, &m->sighup, SIGHUP, on_sighup, m);
    uv_signal_start(&m->sigusr2, on_sigusr2, SIGUSR2);
    kvs_signals_release(r->loop, SIGHUP, SIGUSR2); /* a SIGHUP that came meanwhile now reloads */
    uv_timer_init(r->loop, &m->timer);
    m->timer.data = m;
    uv_timer_init(r->loop, &m->beat);
    m->beat.data = m;
    uv_unref((uv_handle_t *)&m->beat); /* beats while the loop runs, never keeps it running */
    for (uint32_t s = 0; s < r->shards; s++)
        if (kvs_config_local(r->cfg, s))
            m->n_local++;
    r->add_metrics = main_metrics;
    if (rc == 0)
        rc = router_route_start(r);
    if (rc == 0)
        rc = router_ops_init(r, r->cfg, m->plugins);
    if (rc == 0)
        rc = start_links(m);
    if (rc == 0 && r->cfg->router_local_reads && m->n_local > 0)
        rc = router_local_new(r->loop, r->cfg, r->links, r->n_links, &r->local);
    if (rc != 0)
        return rc;
    if (m->n_local == 0) /* a pure routing node: nothing local to wait for */
        return become_ready(m);
    return 0; /* the master bounds the wait (router.ready_timeout) */
}

/* The descriptors the master passes (router_procs.h) must be there: a
 * router process is never started by hand. Returns 0 or -1 after saying so. */
static int check_descriptors(void)
{
    static const int fds[] = {ROUTER_FD_REPORT, ROUTER_FD_NOTIFY, ROUTER_FD_LOCK, ROUTER_FD_CONFIG};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        if (fcntl(fds[i], F_GETFD) < 0) {
            kvs_error("kvs-router --router is started by the kvs-router master with descriptors "
                      "3 to 6; start the node with kvs-router --config FILE");
            return -1;
        }
        if (fds[i] != ROUTER_FD_CONFIG)
            fcntl(fds[i], F_SETFD, FD_CLOEXEC); /* nothing this process starts needs them */
    }
    return 0;
}

/* Loads the master's config snapshot and takes this process's part of it.
 * Returns 0, or EX_CONFIG after reporting why. */
static int load_config(router_main_t *m, kvs_config_t **cfg)
{
    char err[1024];
    int rc = kvs_config_load_fd(m->config_path, ROUTER_FD_CONFIG, cfg, err, sizeof(err));
    close(ROUTER_FD_CONFIG);
    if (rc == -ENOMEM) { /* not the config's fault: the master restarts this process */
        kvs_error("%s; exiting", err);
        return EXIT_FAILURE;
    }
    if (rc != 0) {
        report_exit("%s", err);
        return EX_CONFIG;
    }
    if (m->n_procs > 1)
        kvs_log_set_index("router", (int)m->index);
    kvs_log_level_t level = KVS_LOG_INFO;
    kvs_log_level_parse((*cfg)->log_level, &level);
    kvs_log_set_level(level);
    kvs_log_set_format((*cfg)->log_format);
    router_procs_share(*cfg, (uint32_t)m->index, (uint32_t)m->n_procs);
    m->r.cfg = m->cfg = *cfg;
    m->r.record_max = kvs_record_max(*cfg); /* kafka.properties never change live */
    m->start_time = kvs_metrics_unix_now();
    m->r.proc_index = (uint32_t)m->index;
    m->r.admin_next = m->next;
    m->r.n_procs = (uint32_t)m->n_procs;
    m->r.id_base = router_procs_id_base((uint32_t)m->index, (uint32_t)m->gen);
    return 0;
}

static void router_free(router_main_t *m)
{
    free(m->r.links);
    free(m->r.sets);
    router_reqs_release(&m->r);
    kvs_arena_close(&m->r.arena);
    kvs_arena_close(&m->r.merge_arena);
    kvs_arena_close(&m->r.redis_arena);
    kvs_arena_close(&m->r.reply_arena);
    kvs_buf_free(&m->r.redis_pack);
    router_redis_cursors_free(&m->r);
    kvs_buf_free(&m->r.scratch);
    router_local_free(m->r.local);
    kvs_buf_free(&m->r.local_out);
    uv_loop_close(m->r.loop);
    kvs_tls_ctx_free(m->r.tls);
    kvs_tls_ctx_free(m->r.link_tls);
    kvs_auth_free(m->r.auth);
    router_ops_close(&m->r);
    kvs_plugins_free(m->plugins); /* no hook runs any more */
}

/* Loads the plugins config.yaml names. Returns 0, or EX_CONFIG after
 * reporting why (a plugin that does not load can never start). */
static int plugins_start(router_main_t *m)
{
    char err[4600];
    if (kvs_plugins_load(m->cfg, "router", -1, &m->plugins, err, sizeof(err)) == 0)
        return 0;
    report_exit("%s", err);
    return EX_CONFIG;
}

/* Whether the descriptor limit holds what this process keeps for itself
 * (router_fd_reserve: a link to every replica of every shard above all)
 * and one client per listener. A cluster map with more links than that
 * could never hold them: links would fail with EMFILE and retry without
 * end, and the process's own sockets would fail at random. Returns 0, or
 * EX_CONFIG after saying what to raise (retrying cannot help). */
static int descriptors_fit(const kvs_config_t *cfg)
{
    uint32_t links = link_count(cfg);
    int local_reads = 0; /* as router_start decides: local_reads and a local shard */
    for (uint32_t s = 0; s < cfg->shards && cfg->router_local_reads && !local_reads; s++)
        local_reads = kvs_config_local(cfg, s);
    unsigned listeners = cfg->resp_listen[0] ? 2 : 1;
    uint64_t need = router_fd_reserve(cfg, links, local_reads) + listeners;
    uint64_t limit = kvs_conn_fd_limit();
    if (limit >= need)
        return 0;
    report_exit("this router process needs %llu descriptors for itself (a link to each of the %u "
                "replicas of the %u shards in the cluster map%s, %u for clients of its own socket, "
                "64 more) and a client per listener, but its descriptor limit (RLIMIT_NOFILE) is "
                "%llu: raise it (ulimit -n, LimitNOFILE=) to at least %llu plus the clients it "
                "should serve",
                (unsigned long long)need, links, cfg->shards,
                local_reads ? ", two files per shard for local reads" : "",
                (unsigned)ROUTER_ADMIN_MAX_CLIENTS, (unsigned long long)limit,
                (unsigned long long)need);
    return EX_CONFIG;
}

/* A router process, from its descriptors to its exit status. */
static int router_process_run(router_main_t *m)
{
    kvs_config_t *cfg = NULL;
    /* SIGTERM (a drain) when the master dies, even by SIGKILL; the
     * getppid check covers a master that died before prctl took effect
     * (even before this process began: then its parent is already init or
     * a subreaper, never the pid --master names). */
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != (pid_t)m->master) {
        kvs_error("the kvs-router master is gone; not starting");
        return 1;
    }
    if (check_descriptors() != 0)
        return 2;
    unsetenv("NOTIFY_SOCKET"); /* only the master speaks to systemd (NotifyAccess=main) */
    int rc = load_config(m, &cfg);
    if (rc == 0)
        rc = descriptors_fit(cfg);
    if (rc == 0)
        rc = plugins_start(m);
    if (rc == 0)
        rc = tls_start(m);
    if (rc == 0 && (rc = kvs_auth_new(cfg, uv_default_loop(), &m->r.auth)) != 0) {
        report_exit("users: cannot set up authentication: %s", kvs_strerror(rc));
        rc = 1;
    }
    if (rc != 0) {
        kvs_tls_ctx_free(m->r.tls);
        kvs_tls_ctx_free(m->r.link_tls);
        kvs_plugins_free(m->plugins);
        kvs_config_free(cfg);
        return rc;
    }
    if (router_start(m) != 0)
        shutdown_begin(m, 1);
    uv_run(m->r.loop, UV_RUN_DEFAULT);
    router_free(m);
    kvs_config_free(cfg);
    kvs_info("stopped");
    return m->exit_code;
}

/* --print data_dir (the one key parse_args takes): data_dir of the config
 * at `path`, loaded as the master loads it. Returns the exit status. */
static int print_data_dir(const char *path)
{
    char err[1024];
    kvs_config_t *cfg = NULL;
    if (kvs_config_load(path, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "kvs-router: %s\n", err);
        return EX_CONFIG;
    }
    int ok = printf("%s\n", cfg->data_dir) >= 0 && fflush(stdout) == 0;
    kvs_config_free(cfg);
    if (!ok) {
        fprintf(stderr, "kvs-router: writing data_dir: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}

/* --check: the config at `path`, the TLS material and plugins it names,
 * loaded as a start loads them, and its data_dir's permissions when it
 * exists (a start creates it). Returns the exit status. */
static int check_config(const char *path)
{
    char err[4400];
    kvs_config_t *cfg = NULL;
    kvs_tls_ctx_t *tls = NULL, *link_tls = NULL, *metrics_tls = NULL;
    kvs_plugins_t *plugins = NULL;
    struct stat st;
    char where[4200] = "";
    int rc = kvs_config_load(path, &cfg, err, sizeof(err)) != 0;
    if (!rc && (router_tls_load(cfg, &tls, &link_tls, &metrics_tls, err, sizeof(err)) != 0 ||
                kvs_plugins_load(cfg, "router", -1, &plugins, err, sizeof(err)) != 0 ||
                (stat(cfg->data_dir, &st) == 0 &&
                 kvs_fs_check_private(cfg->data_dir, err, sizeof(err)) != 0))) {
        rc = 1;
        /* checked after the load: the key the message begins with says where */
        if (kvs_config_where(cfg, err, where, sizeof(where) - 2))
            strcat(where, ": ");
    }
    kvs_plugins_free(plugins);
    kvs_tls_ctx_free(tls);
    kvs_tls_ctx_free(link_tls);
    kvs_tls_ctx_free(metrics_tls);
    kvs_config_free(cfg);
    if (rc) {
        fprintf(stderr, "kvs-router: %s%s\n", where, err);
        return EX_CONFIG;
    }
    printf("kvs-router: %s: the configuration loads\n", path);
    return kvs_fs_stdout_done("kvs-router");
}

int main(int argc, char **argv)
{
    static router_main_t m; /* zeroed; lives for the whole process */

    if (kvs_fs_std_fds() != 0)
        return EX_OSERR;
    kvs_fs_name_process(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    kvs_signals_ignore_stray(0); /* SIGUSR2: the master ignores it, router processes handle it */
    /* A reload (SIGHUP) that comes while this process starts must neither
     * kill it nor be lost (the master reads the file before it takes the
     * signal over; a router process may be past the supervisor's hold):
     * blocked until the loop's handler takes over (kvs_signals;
     * libuv resets the disposition and the mask in the processes it
     * spawns). */
    kvs_signals_hold(1, SIGHUP, SIGUSR2);
    kvs_log_init("router", -1, KVS_LOG_INFO);
    /* Buffers above this size get their own mapping, so freeing one after
     * a burst gives the memory back to the system at once (glibc would
     * otherwise raise the threshold and keep it in the heap). */
    mallopt(M_MMAP_THRESHOLD, KVS_CONN_KEEP_BUFFER);
    if (parse_args(argc, argv, &m) != 0)
        return 2;
    if (m.print != NULL)
        return print_data_dir(m.config_path);
    if (m.check)
        return check_config(m.config_path);
    if (m.index < 0)
        return router_master_run(m.config_path, argv[0]);
    return router_process_run(&m);
}

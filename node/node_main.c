/*
 * kvs-node: one shard worker.
 *
 *   kvs-node --config FILE --shard N [--listen HOST:PORT] [--socket PATH]
 *
 * Opens <data_dir>/shard-N/ (one LMDB environment), listens on a unix
 * socket (default <data_dir>/shard-N.sock) and, if asked, on TCP, and serves
 * the kvs protocol until SIGTERM/SIGINT. On the first signal it stops
 * accepting, answers what it received, commits, closes the environment and
 * exits 0; a second signal (or a 10 s drain timeout) closes clients at once.
 *
 * With tls.node enabled the TCP listener speaks TLS (mutual TLS by
 * default).
 *
 * Normally started by kvs-router; runs stand-alone just as well.
 *
 * SIGHUP (the kvs-router master passes its own on once it accepted the
 * file) reads the config again: the text the master accepted
 * (--reload-from, its snapshot through /proc; the file itself if that
 * cannot be opened, or when kvs-node runs alone). A file that does not load, or that
 * changes a key that cannot change live (kvs_config_reload_check), leaves
 * everything as it was, saying why. Otherwise the live keys apply
 * (kvs_config_apply_live moves them into the running config, which every
 * module reads in place: log level and format, the slow log, limits for
 * the clients, storage.sync_interval, kafka.max_lag, ...), and so does a
 * changed cluster.nodes (kvs_config_apply_map: the shard's replica count,
 * which decides whether unbound tables may be written), then tls.node's
 * certificate, key and CA are read again from their files (connections
 * already open keep theirs). A SIGHUP that comes while the process starts
 * (a snapshot copy included) waits, blocked, for the handler, which then
 * reloads: a worker kvs-router started before a reload began from the
 * master's snapshot of the time (--config-fd), so it must not miss it.
 *
 * Exit status: 0 after a signal, 2 for a bad command line, 78 (EX_CONFIG,
 * sysexits.h) when the configuration can never work for this shard, so a
 * supervisor must not restart it: the config file is invalid, the shard or
 * a derived address or path does not fit, the data directory belongs to
 * another shard or placement (a table's too: node_store_open) or every user
 * may write to it, or is missing in a data_dir that holds shards other
 * nodes run (foreign_data_dir), its files are
 * damaged or not files (node_store_open's KVS_EDAMAGED), TLS material
 * does not load, librdkafka refuses a kafka.properties entry, or a bound
 * topic's partition count differs from the configured one. 1
 * for anything that may pass by itself (a port in use, a data directory
 * locked by a worker still stopping, brokers, disks). With --report-fd N
 * the reason for an EX_CONFIG exit is also written to fd N (one line), so
 * kvs-router can say why it stopped.
 */
#include "kvs_addr.h"
#include "kvs_config.h"
#include "kvs_conn.h"
#include "kvs_err.h"
#include "kvs_fs.h"
#include "kvs_lmdb.h"
#include "kvs_log.h"
#include "kvs_mem.h"
#include "kvs_schema.h"
#include "kvs_shardstate.h"
#include "kvs_signals.h"
#include "kvs_testhook.h"
#include "node_ack.h"
#include "node_bootstrap.h"
#include "kvs_plugins.h"
#include "node_ingest.h"
#include "node_kafka.h"
#include "node_produce.h"
#include "node_server.h"
#include "node_slot.h"
#include "node_store.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <unistd.h>

#define DRAIN_TIMEOUT_MS 10000
#define FILES_WATCH_MS 1000 /* how often the worker checks its data.mdb is still in place */

typedef struct node_args_s {
    const char *config;
    long shard;
    const char *listen;
    const char *socket;
    int exit_with_parent;
    long parent_pid; /* --exit-with-parent=PID: the parent it must have; 0: the one it has */
    int report_fd;   /* -1: none */
    int config_fd;   /* --config-fd: the text to start from, or -1 (read --config) */
    const char *reload_from; /* --reload-from: the text a reload reads, or NULL (--config) */
    long spawn;              /* --spawn: this shard's workers started before this one */
} node_args_t;

typedef struct node_main_s {
    uv_loop_t *loop;
    node_server_t *srv;
    node_ingest_t *ingest;
    node_reads_t *reads;         /* NULL when no table is bound */
    node_writes_t *writes;       /* NULL when no table is bound or Kafka is off */
    uint64_t produce_timeout_ms; /* its producer's message.timeout.ms, set at start */
    kvs_shardstate_t *state;     /* the state page routers read; NULL if it cannot be had */
    kvs_lmdb_ident_t last;       /* the files the last worker had, as its page says */
    int had_last;                /* ... if it said */
    uv_signal_t sigterm, sigint;
    kvs_reload_sig_t sighup;
    node_bootstrap_t *boot; /* the snapshot copy while it runs, else NULL */
    kvs_tls_ctx_t *tls;     /* tls.node, for the TCP listener; or NULL */
    kvs_auth_t *auth;       /* users, or NULL */
    node_digest_t *digest;
    node_snapshot_t *snapshot;
    node_handoff_t *handoff; /* the fence a snapshot sent raises */
    node_ack_t *ack;         /* an installed copy's acknowledgement, owed; or NULL */
    const char *config_path;
    const char *reload_from; /* --reload-from, or NULL */
    kvs_config_t *cfg;       /* the running config (live reload changes its live keys in place) */
    uv_timer_t drain;
    uint64_t drain_ms;              /* how long clients get to drain at a stop */
    uv_timer_t files_watch;         /* watch_files */
    char shard_dir[4200];           /* <data_dir>/shard-N */
    const kvs_lmdb_ident_t *opened; /* the files the store has open */
    node_store_t *store;
    int watching;     /* files_watch runs */
    int store_broken; /* LMDB gave up on the environment: stop (on_files_watch) */
    int signals;
    int exit_code;
    int report_fd;    /* --report-fd, or -1 */
    char fatal[1024]; /* why the exit status is EX_CONFIG */
} node_main_t;

static void usage(FILE *f)
{
    fprintf(f, "usage: kvs-node --config FILE --shard N [--listen HOST:PORT] [--socket PATH]\n"
               "\n"
               "Serves shard N of the cluster described by FILE from <data_dir>/shard-N/.\n"
               "  --config FILE       config.yaml (required)\n"
               "  --version           print the version and exit\n"
               "  --check-data FILE   read every page of the LMDB data file FILE (a stopped\n"
               "                      shard's data.mdb, or a copy) and say whether it is sound\n"
               "                      (exit 0) or damaged (exit 1), then exit\n"
               "  --shard N           shard id, 0 <= N < cluster.shards (required)\n"
               "  --listen HOST:PORT  also serve TCP here (default: node.listen + N, if set)\n"
               "  --socket PATH       unix socket path (default <data_dir>/shard-N.sock)\n"
               "  --exit-with-parent[=PID]\n"
               "                      drain and exit when the parent process dies (used by\n"
               "                      kvs-router, so workers never outlive their router);\n"
               "                      with PID, refuse to start unless PID is the parent\n"
               "  --report-fd N       on a configuration error (exit status 78), also write\n"
               "                      the reason to fd N (used by kvs-router)\n"
               "  --config-fd N       start from the config text open on fd N (kvs-router's\n"
               "                      snapshot of FILE, so an edit not reloaded yet is not\n"
               "                      picked up by a restart)\n"
               "  --reload-from PATH  a reload (SIGHUP) reads the text at PATH (kvs-router's\n"
               "                      snapshot of what it accepted, /proc/PID/fd/N), or FILE\n"
               "                      if PATH cannot be opened; without it, FILE\n"
               "  --spawn N           this shard's workers the node started before this one\n"
               "                      (kvs-router: 0, then 1.. for restarts; from 1 for a\n"
               "                      shard a membership change brings, served before on\n"
               "                      the node it came from); with N > 0 a bound topic's\n"
               "                      changed partition count is not fatal\n");
}

/* --check-data FILE: the whole-file walk (kvs_lmdb_walk_file), its verdict
 * on stdout in one line. A new replica runs it on a snapshot copy before
 * installing it (node_bootstrap), in this process of its own, where a
 * fault in a damaged page ends the check, not the worker. */
static const char *check_path;

/* A read of a damaged page faulted (a node or length pointing off the
 * map), or LMDB stopped on one it found inconsistent (its assertions call
 * abort(), after saying which on stderr): that is the verdict. */
static void on_check_fault(int sig)
{
    static const char bus[] = ": damaged: a read of its pages faulted (SIGBUS)\n";
    static const char segv[] = ": damaged: a read of its pages faulted (SIGSEGV)\n";
    static const char abrt[] = ": damaged: LMDB stopped on a page it found inconsistent (its "
                               "assertion is above)\n";
    ssize_t w = write(STDOUT_FILENO, check_path, strlen(check_path));
    if (sig == SIGBUS)
        w = write(STDOUT_FILENO, bus, sizeof(bus) - 1);
    else if (sig == SIGABRT)
        w = write(STDOUT_FILENO, abrt, sizeof(abrt) - 1);
    else
        w = write(STDOUT_FILENO, segv, sizeof(segv) - 1);
    (void)w;
    _exit(1);
}

static int check_data(const char *path)
{
    kvs_lmdb_walk_t w;
    char err[600] = "";
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_check_fault;
    sigemptyset(&sa.sa_mask);
    check_path = path;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGABRT, &sa, NULL);
    fflush(stdout); /* the verdict line is written by hand from the handler */
    int rc = kvs_lmdb_walk_file(path, &w, err, sizeof(err));
    if (rc == 0)
        printf("%s: sound: %llu tables, %llu pairs, %llu bytes of keys and values, %llu free "
               "pages\n",
               path, (unsigned long long)w.tables, (unsigned long long)w.pairs,
               (unsigned long long)w.bytes, (unsigned long long)w.free_ids);
    else
        printf("%s: %s: %s\n", path, rc == KVS_EDAMAGED ? "damaged" : "unreadable",
               err[0] != '\0' ? err : kvs_strerror(rc));
    int out = kvs_fs_stdout_done("kvs-node");
    return out != 0 ? out : rc == 0 ? 0 : 1;
}

/* --NAME's value, a non-negative decimal, into *out: 0, or -1 (said). */
static int count_arg(const char *name, const char *text, long *out)
{
    char *end;
    *out = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || *out < 0) {
        fprintf(stderr, "kvs-node: --%s must be a non-negative integer\n", name);
        return -1;
    }
    return 0;
}

static int parse_args(int argc, char **argv, node_args_t *a)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"shard", required_argument, NULL, 's'},
                                         {"listen", required_argument, NULL, 'l'},
                                         {"socket", required_argument, NULL, 'u'},
                                         {"exit-with-parent", optional_argument, NULL, 'p'},
                                         {"report-fd", required_argument, NULL, 'r'},
                                         {"config-fd", required_argument, NULL, 'f'},
                                         {"reload-from", required_argument, NULL, 'R'},
                                         {"spawn", required_argument, NULL, 'S'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"version", no_argument, NULL, 'V'},
                                         {"check-data", required_argument, NULL, 'D'},
                                         {NULL, 0, NULL, 0}};
    memset(a, 0, sizeof(*a));
    a->shard = -1;
    a->report_fd = a->config_fd = -1;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:s:l:u:h", opts, NULL)) != -1) {
        char *end;
        switch (ch) {
        case 'c':
            a->config = optarg;
            break;
        case 's':
            if (count_arg("shard", optarg, &a->shard) != 0)
                return -1;
            break;
        case 'l':
            a->listen = optarg;
            break;
        case 'R':
            a->reload_from = optarg;
            break;
        case 'S':
            if (count_arg("spawn", optarg, &a->spawn) != 0)
                return -1;
            break;
        case 'u':
            a->socket = optarg;
            break;
        case 'p':
            a->exit_with_parent = 1;
            if (optarg != NULL) {
                a->parent_pid = strtol(optarg, &end, 10);
                if (*optarg == '\0' || *end != '\0' || a->parent_pid < 1 ||
                    a->parent_pid > INT32_MAX) {
                    fprintf(stderr, "kvs-node: --exit-with-parent=PID needs a process id\n");
                    return -1;
                }
            }
            break;
        case 'r':
        case 'f': {
            long fd = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || fd < 3 || fd > 1024) {
                fprintf(stderr, "kvs-node: --%s must be a file descriptor from 3 to 1024\n",
                        ch == 'r' ? "report-fd" : "config-fd");
                return -1;
            }
            *(ch == 'r' ? &a->report_fd : &a->config_fd) = (int)fd;
            break;
        }
        case 'h':
            usage(stdout);
            exit(kvs_fs_stdout_done("kvs-node"));
        case 'V':
            printf("kvs-node %s\n", KVS_VERSION);
            exit(kvs_fs_stdout_done("kvs-node"));
        case 'D':
            exit(check_data(optarg));
        default:
            usage(stderr);
            return -1;
        }
    }
    if (a->config == NULL || a->shard < 0 || optind != argc) {
        usage(stderr);
        return -1;
    }
    if (a->config_fd >= 0 && a->config_fd == a->report_fd) {
        fprintf(stderr, "kvs-node: --config-fd and --report-fd must be different descriptors\n");
        return -1;
    }
    return 0;
}

/* Works out the addresses to listen on. Returns the count, or -1 with the
 * reason in err. */
static int listen_addrs(const kvs_config_t *cfg, const node_args_t *a, kvs_addr_t addrs[2],
                        char *err, size_t errlen)
{
    char why[256], text[4200];
    int n = 0;
    if (a->socket != NULL)
        snprintf(text, sizeof(text), "unix:%s", a->socket);
    else
        snprintf(text, sizeof(text), "unix:%s/shard-%ld.sock", cfg->data_dir, a->shard);
    if (kvs_addr_parse(text, 0, &addrs[n], why, sizeof(why)) != 0) {
        snprintf(err, errlen, "socket path: %s; pass a shorter one with --socket", why);
        return -1;
    }
    n++;
    if (a->listen != NULL) {
        if (kvs_addr_parse(a->listen, 1, &addrs[n], why, sizeof(why)) != 0) {
            snprintf(err, errlen, "--listen: %s", why);
            return -1;
        }
        n++;
    } else if (cfg->node_listen[0] != '\0' || cfg->self != NULL) {
        /* With a cluster map and no node.listen: where the map says peers
         * find this node's workers. */
        const char *base = cfg->node_listen[0] != '\0' ? cfg->node_listen : cfg->self->address;
        if (kvs_addr_parse(base, 0, &addrs[n], why, sizeof(why)) != 0 ||
            addrs[n].port + a->shard > 65535) {
            snprintf(err, errlen, "node.listen \"%s\": cannot derive shard %ld's port", base,
                     a->shard);
            return -1;
        }
        addrs[n].port = (uint16_t)(addrs[n].port + a->shard);
        n++;
    }
    return n;
}

/* ---- exit status -------------------------------------------------------------- */

/* The configuration can never work for this shard: logs why, keeps it for
 * the report fd, and sets the exit status to EX_CONFIG. Returns EX_CONFIG. */
__attribute__((format(printf, 2, 3))) static int config_fatal(node_main_t *m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->fatal, sizeof(m->fatal), fmt, ap);
    va_end(ap);
    kvs_error("%s", m->fatal);
    m->exit_code = EX_CONFIG;
    return EX_CONFIG;
}

/* Writes the EX_CONFIG reason to the report fd (one line), if asked to. */
static int finish(const node_main_t *m, int code)
{
    if (code != EX_CONFIG || m->report_fd < 0 || m->fatal[0] == '\0')
        return code;
    char line[sizeof(m->fatal) + 1];
    int n = snprintf(line, sizeof(line), "%s\n", m->fatal);
    for (size_t off = 0; n > 0 && off < (size_t)n;) {
        ssize_t w = write(m->report_fd, line + off, (size_t)n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* nobody listens: the log has it */
        off += (size_t)w;
    }
    return code;
}

/* ---- signals and shutdown --------------------------------------------------- */

/* Every client is gone, so no write waits any more: Kafka can stop. */
static void on_stopped(void *arg)
{
    node_main_t *m = arg;
    node_writes_stop(m->writes);
    if (m->ingest != NULL)
        node_ingest_stop(m->ingest);
    kvs_loop_close_all(m->loop); /* signals, drain timer */
}

static void on_drain_timeout(uv_timer_t *t)
{
    node_main_t *m = t->data;
    kvs_warn("clients did not drain within %llu ms; closing them", (unsigned long long)m->drain_ms);
    node_server_abort_clients(m->srv);
}

/* Stops taking requests; answers what was received. Writes in flight
 * still complete (ingestion runs on until the clients are gone), waiting
 * reads are answered at once. */
static void begin_shutdown(node_main_t *m)
{
    kvs_reload_sig_stop(&m->sighup, SIGHUP); /* changes nothing now, never kills */
    node_ack_stop(m->ack);
    node_digest_stop(m->digest);
    node_reads_stop(m->reads);
    node_writes_drain(m->writes);
    m->drain_ms = DRAIN_TIMEOUT_MS;
    if (kvs_test_hook_u64("KVS_TEST_DRAIN_MS", &m->drain_ms))
        kvs_warn("test hook: clients get %llu ms to drain (KVS_TEST_DRAIN_MS)",
                 (unsigned long long)m->drain_ms);
    uv_timer_init(m->loop, &m->drain);
    m->drain.data = m;
    uv_timer_start(&m->drain, on_drain_timeout, m->drain_ms, 0);
    uv_unref((uv_handle_t *)&m->drain);
    node_server_stop(m->srv, on_stopped, m);
}

/* The disk became too full to keep the room for deletes, or has it again:
 * the state page says so, and routers read here or at the worker
 * (kvs_shardstate_set_tight). */
static void on_store_tight(void *arg, int tight)
{
    node_main_t *m = arg;
    if (m->state != NULL)
        kvs_shardstate_set_tight(m->state, tight);
}

/* Every FILES_WATCH_MS: the counts of log lines about failed writes left
 * out, and whether <data_dir>/shard-N/data.mdb is still the file the store
 * has open. Removed, moved or replaced under the running
 * worker, its writes would go on being acknowledged into a file no later
 * worker opens (and routers would read a file it no longer writes): the
 * worker says so and stops, answering what it took, so that the
 * supervisor's next worker opens what is there now. Only data.mdb: with
 * lock.mdb removed the worker still writes the file every later worker
 * opens (routers, which check both, send their reads to it until it
 * restarts). */
static void on_files_watch(uv_timer_t *t)
{
    node_main_t *m = t->data;
    char path[sizeof(m->shard_dir) + 16];
    /* within a second of their window's end, not at the next failure */
    node_store_flush_logs(m->store);
    node_server_flush_logs(m->srv);
    struct stat st;
    if (m->signals > 0)
        return;
    if (m->store_broken) {
        kvs_error("stopping: this worker can neither read nor write its environment any more "
                  "(see above); the supervisor's next worker opens it afresh");
        m->exit_code = 1;
        m->signals++;
        begin_shutdown(m);
        return;
    }
    snprintf(path, sizeof(path), "%s/data.mdb", m->shard_dir);
    int rc = stat(path, &st) == 0 ? 0 : -errno;
    if (rc != 0 && rc != -ENOENT)
        return; /* cannot tell (a fault the next look may not meet) */
    if (rc == 0 && (uint64_t)st.st_dev == m->opened->data_dev &&
        (uint64_t)st.st_ino == m->opened->data_ino)
        return;
    kvs_error("%s/data.mdb is %s under this worker: writes since then went to a file no "
              "worker will open again; stopping so that the next worker opens what is there "
              "(replace a shard's files only while its worker is stopped)",
              m->shard_dir, rc == -ENOENT ? "gone (removed or moved)" : "another file (replaced)");
    m->exit_code = 1;
    m->signals++;
    begin_shutdown(m);
}

static void watch_files(node_main_t *m, const kvs_config_t *cfg, long shard, node_store_t *store)
{
    snprintf(m->shard_dir, sizeof(m->shard_dir), "%s/shard-%ld", cfg->data_dir, shard);
    m->opened = node_store_ident(store);
    m->store = store;
    uv_timer_init(m->loop, &m->files_watch);
    m->files_watch.data = m;
    uv_timer_start(&m->files_watch, on_files_watch, m->store_broken ? 0 : FILES_WATCH_MS,
                   FILES_WATCH_MS);
    uv_unref((uv_handle_t *)&m->files_watch);
    m->watching = 1;
}

/* node_store's broken_cb: LMDB gave up on the environment after a failed
 * write (an I/O error on the meta page). Every request would be an error
 * from now on, so the worker stops, answering what it took, and the
 * supervisor starts a new one: opening the environment afresh is the only
 * way back. Not from inside the commit that failed: files_watch's next
 * run (at once) begins the shutdown. */
static void on_store_broken(void *arg)
{
    node_main_t *m = arg;
    m->store_broken = 1;
    if (m->watching)
        uv_timer_start(&m->files_watch, on_files_watch, 0, FILES_WATCH_MS);
}

static void on_signal(uv_signal_t *h, int signum)
{
    node_main_t *m = h->data;
    if (m->srv == NULL) { /* before the server: the copy stops, or the start does */
        m->signals++;
        if (m->boot != NULL)
            node_bootstrap_stop(m->boot);
        return;
    }
    if (m->signals++ > 0) {
        kvs_warn("second signal: closing clients now");
        node_server_abort_clients(m->srv);
        return;
    }
    kvs_info("received %s: draining", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    begin_shutdown(m);
}

/* A bound topic does not match the config (its partition count): running
 * on would misplace keys, and restarting cannot help. */
static void on_ingest_fatal(void *arg, const char *msg)
{
    node_main_t *m = arg;
    config_fatal(m, "%s", msg);
    if (m->signals++ == 0)
        begin_shutdown(m);
}

static void on_turn(void *arg, int rc)
{
    node_main_t *m = arg;
    if (m->ingest != NULL)
        node_ingest_turn_done(m->ingest, rc);
    if (m->writes != NULL)
        node_writes_turn(m->writes);
    if (m->reads != NULL)
        node_reads_turn(m->reads);
}

/* The brokers told where partitions end: reads past the end this worker
 * had heard of decide now. */
static void on_end_answer(void *arg)
{
    node_main_t *m = arg;
    if (m->reads != NULL)
        node_reads_turn(m->reads);
}

/* The producer failed for good: stop (exit 1) so the router restarts the
 * worker with a new one. */
static void on_writes_fatal(void *arg, const char *msg)
{
    node_main_t *m = arg;
    (void)msg; /* logged by node_writes */
    if (m->exit_code == 0)
        m->exit_code = 1;
    if (m->signals++ == 0)
        begin_shutdown(m);
}

/* Log-first writes of bound tables (with Kafka on). */
static int start_writes(node_main_t *m, const kvs_config_t *cfg, long shard, node_store_t *store)
{
    char err[512];
    if (m->ingest == NULL)
        return 0;
    node_writes_opts_t o = {
        .loop = m->loop,
        .cfg = cfg,
        .shard = (uint32_t)shard,
        .max_frame = (size_t)cfg->max_frame,
        .store = store,
        .ingest = m->ingest,
        .on_fatal = on_writes_fatal,
        .arg = m,
    };
    int rc = node_writes_start(&o, &m->writes, err, sizeof(err));
    if (rc == KVS_ECONFIG)
        config_fatal(m, "%s", err);
    else if (rc != 0)
        kvs_error("%s", err);
    if (rc == 0) {
        node_server_set_writes(m->srv, m->writes);
        m->produce_timeout_ms = node_produce_timeout_ms(cfg);
    }
    return rc;
}

/* The freshness rules for reads of bound tables (after start_ingest: with
 * Kafka off they still answer reads that demand a position). */
static int start_reads(node_main_t *m, const kvs_config_t *cfg, long shard)
{
    if (cfg->n_bindings == 0)
        return 0;
    node_reads_opts_t o = {
        .loop = m->loop,
        .cfg = cfg,
        .shard = (uint32_t)shard,
        .ingest = m->ingest,
        .exec = node_server_execute,
        .exec_arg = m->srv,
    };
    int rc = node_reads_new(&o, &m->reads);
    if (rc != 0)
        return rc;
    node_server_set_reads(m->srv, m->reads);
    node_server_set_ingest(m->srv, m->ingest, on_turn, m);
    return 0;
}

/* How long a query of the brokers for where partitions end (or start) may
 * take: a read waiting on one waits node_wait_ms at most, and 2 s is
 * plenty for one round trip to each leader. Follows reloads. */
static int ask_timeout_ms(const kvs_config_t *cfg)
{
    uint64_t wait = node_wait_ms(cfg);
    return wait < 2000 ? (int)wait : 2000;
}

/* Starts Kafka ingestion when brokers and bindings are configured. */
static int start_ingest(node_main_t *m, const kvs_config_t *cfg, const node_args_t *args,
                        node_store_t *store)
{
    char err[512];
    if (cfg->kafka_brokers[0] == '\0' || cfg->n_bindings == 0)
        return 0;
    node_ingest_opts_t o = {
        .loop = m->loop,
        .cfg = cfg,
        .shard = (uint32_t)args->shard,
        .store = store,
        .state = m->state,
        .on_fatal = on_ingest_fatal,
        .on_answer = on_end_answer,
        .ask_timeout_ms = ask_timeout_ms(cfg),
        .restarted = args->spawn > 0,
        .arg = m,
    };
    int rc = node_ingest_start(&o, &m->ingest, err, sizeof(err));
    if (rc == KVS_ECONFIG)
        config_fatal(m, "%s", err);
    else if (rc != 0)
        kvs_error("%s", err);
    if (rc != 0)
        return rc;
    node_server_set_ingest(m->srv, m->ingest, on_turn, m);
    return 0;
}

/* A reload that changed router.timeout: the producer of log-first writes
 * keeps the message.timeout.ms derived from it at start (librdkafka takes
 * it only when a producer is created), so say so when the two differ.
 * `old` holds the values before the reload. */
static void warn_producer_timeout(const node_main_t *m, const kvs_config_t *old)
{
    uint64_t kept = m->produce_timeout_ms, now = node_produce_timeout_ms(m->cfg);
    if (m->writes == NULL || now == node_produce_timeout_ms(old) || kept == now)
        return; /* (a reload back to the start's value: nothing kept) */
    if (kvs_config_kafka_property(m->cfg, "message.timeout.ms") != NULL ||
        kvs_config_kafka_property(m->cfg, "delivery.timeout.ms") != NULL)
        return; /* kafka.properties sets it, not router.timeout */
    kvs_warn("reload: router.timeout changed, but the Kafka producer of log-first writes keeps "
             "message.timeout.ms %llu ms (not %llu) until this worker restarts: a write answered "
             "503 \"may or may not have happened\" can still be written that long after it was "
             "sent, and one a broker acknowledges later than that is given up",
             (unsigned long long)kept, (unsigned long long)now);
}

/* SIGHUP, step 1: the config file (see the file comment). Returns 0 when
 * it was applied (or nothing changed), else nonzero after logging why. */
static int reload_config(node_main_t *m)
{
    char err[1024], changed[512], fixed[512];
    kvs_config_t *next = NULL;
    int fell_back = 0;
    int loaded =
        kvs_config_load_from(m->config_path, m->reload_from, &next, err, sizeof(err), &fell_back);
    if (fell_back != 0)
        kvs_warn("reload: cannot read kvs-router's snapshot %s (%s); reading %s itself",
                 m->reload_from, strerror(fell_back), m->config_path);
    if (loaded != 0) {
        kvs_error("reload: %s; the running configuration is unchanged", err);
        node_server_count_reload(m->srv, "error");
        return -1;
    }
    int rc = kvs_config_reload_check(m->cfg, next, changed, sizeof(changed), fixed, sizeof(fixed));
    if (rc != 0) {
        kvs_config_reload_refusal(m->cfg, next, m->config_path, err, sizeof(err));
        kvs_error("reload refused: %s; the running configuration is unchanged", err);
        node_server_count_reload(m->srv, "refused");
    } else if ((rc = node_server_reload(m->srv, next)) != 0) {
        kvs_error("reload: out of memory; the running configuration is unchanged");
        node_server_count_reload(m->srv, "error");
    } else {
        kvs_config_apply_live(m->cfg, next); /* next now holds the old values */
        kvs_config_apply_map(m->cfg, next);  /* the replica count (node_server_reload) */
        kvs_log_level_t level = KVS_LOG_INFO;
        kvs_log_level_parse(m->cfg->log_level, &level);
        kvs_log_set_level(level);
        kvs_log_set_format(m->cfg->log_format);
        node_server_count_reload(m->srv, "ok");
        kvs_info("configuration reloaded from %s (%s)", m->config_path,
                 changed[0] ? changed : "nothing changed");
        warn_producer_timeout(m, next);
        node_ingest_set_ask_timeout(m->ingest, ask_timeout_ms(m->cfg));
    }
    kvs_config_free(next);
    kvs_mem_trim(); /* what reading the file took (kvs_mem.h) */
    return rc;
}

/* SIGHUP (the master passes it on once its own check accepted the file):
 * the config file's live keys, then the TLS material of tls.node. A
 * refused reload changes neither. */
static void on_sighup(void *arg)
{
    node_main_t *m = arg;
    char err[600];
    if (m->signals > 0)
        return; /* shutting down */
    if (reload_config(m) != 0 || m->tls == NULL)
        return;
    if (kvs_tls_ctx_reload(m->tls, err, sizeof(err)) == 0)
        kvs_info("received SIGHUP: tls.node certificate, key and CA reloaded; new connections use "
                 "them");
    else
        kvs_error("received SIGHUP: tls.node reload failed, still using the previous material: %s",
                  err);
}

/* SIGTERM and SIGINT, from before the snapshot copy to the exit: one
 * pair of handles, never stopped in between (node_bootstrap_stop says
 * why). Unreferenced until the server runs: the copy's loop run ends when
 * the copy does. */
static void watch_stop_signals(node_main_t *m)
{
    uv_signal_init(m->loop, &m->sigterm);
    uv_signal_init(m->loop, &m->sigint);
    m->sigterm.data = m->sigint.data = m;
    uv_signal_start(&m->sigterm, on_signal, SIGTERM);
    uv_signal_start(&m->sigint, on_signal, SIGINT);
    uv_unref((uv_handle_t *)&m->sigterm);
    uv_unref((uv_handle_t *)&m->sigint);
}

static void watch_sighup(node_main_t *m)
{
    kvs_reload_sig_start(m->loop, &m->sighup, SIGHUP, on_sighup, m);
}

/* ---- main --------------------------------------------------------------------- */

/* Creates data_dir if needed and checks it is private. Returns 0, or an
 * error with err set. */
static int make_data_dir(const kvs_config_t *cfg, char *err, size_t errlen)
{
    int rc = kvs_mkdir_p(cfg->data_dir);
    if (rc != 0) {
        snprintf(err, errlen, "data_dir %s: cannot create: %s", cfg->data_dir, kvs_strerror(rc));
        return rc;
    }
    if (kvs_fs_check_private(cfg->data_dir, err, errlen) != 0)
        return KVS_ECONFIG; /* world-writable: never safe, restarting cannot help */
    return 0;
}

/* A node of a cluster.remote cluster whose shard directory does not exist
 * while data_dir holds the environment of a shard another node runs: the
 * data_dir is another node's (two nodes' data_dir swapped, a config copied
 * from another node, a shard moved without its directory). Started empty,
 * the shard would answer every key it held elsewhere as missing, with no
 * word said. Returns 0, or KVS_ECONFIG with err set. A node with a cluster
 * map (cluster.nodes) copies a new replica from a peer instead. */
static int foreign_data_dir(const kvs_config_t *cfg, long shard, char *err, size_t errlen)
{
    char dir[4200], path[4300], list[200] = "";
    struct stat st;
    size_t n = 0;
    if (cfg->n_nodes > 0 || cfg->n_remote == 0 ||
        kvs_schema_shard_dir(dir, sizeof(dir), cfg->data_dir, (uint32_t)shard) != 0 ||
        stat(dir, &st) == 0 || errno != ENOENT)
        return 0;
    for (size_t i = 0; i < cfg->n_remote; i++) {
        snprintf(path, sizeof(path), "%s/shard-%" PRIu32 "/data.mdb", cfg->data_dir,
                 cfg->remote[i].shard);
        if (stat(path, &st) != 0 || st.st_size == 0)
            continue;
        size_t at = strlen(list);
        if (at + 16 < sizeof(list))
            snprintf(list + at, sizeof(list) - at, "%sshard-%" PRIu32, n > 0 ? ", " : "",
                     cfg->remote[i].shard);
        n++;
    }
    if (n == 0)
        return 0;
    /* Paths cut to fit the message (a data_dir of up to 4 KiB is allowed);
     * a message cut at errlen still says what and where. */
    int w = snprintf(
        err, errlen,
        "%.300s does not exist, but data_dir %.300s holds %s, which this node does not run "
        "(cluster.remote names the node that does): data_dir looks like another node's, and "
        "shard %ld started empty would answer every key it holds elsewhere as missing. "
        "Point data_dir at this node's data, or move shard %ld's directory here from the "
        "node that ran it; to start shard %ld empty, create the directory %.300s",
        dir, cfg->data_dir, list, shard, shard, shard, dir);
    if (w < 0)
        snprintf(err, errlen, "%.300s: data_dir holds shards this node does not run", dir);
    return KVS_ECONFIG;
}

/* Takes the state page (kvs_shardstate) and marks it not live, before
 * anything may change the shard's files (a snapshot bootstrap, the store's
 * opening): a router reading them stops until this worker publishes what
 * it opened. Remembers which files the last worker had. */
static void take_state(node_main_t *m, const kvs_config_t *cfg, long shard)
{
    char path[4200];
    int rc = kvs_schema_state_path(path, sizeof(path), cfg->data_dir, (uint32_t)shard);
    if (rc == 0)
        rc = kvs_shardstate_open_writer(path, cfg, (uint32_t)shard, &m->state, &m->last,
                                        &m->had_last);
    if (rc == -EBUSY)
        return; /* another worker of this shard runs: the store's lock refuses this one */
    if (rc != 0)
        kvs_warn("%s: %s; the router forwards every read of this shard to it", path,
                 kvs_strerror(rc));
}

/* Whether the data.mdb in `dir` is not the one the last worker had (a
 * snapshot bootstrap wrote it, or it was replaced or removed): then the
 * lock file must be started anew (node_store's reset_lock). */
static int files_changed(const node_main_t *m, const char *dir)
{
    kvs_lmdb_ident_t now;
    if (!m->had_last)
        return 0;
    int rc = kvs_lmdb_ident_of(dir, &now);
    return rc == -ENOENT ||
           (rc == 0 && (now.data_dev != m->last.data_dev || now.data_ino != m->last.data_ino));
}

/* Opens the shard's environment. Returns 0, or an error with err set. */
static int open_store(node_main_t *m, const kvs_config_t *cfg, long shard, node_store_t **out,
                      char *err, size_t errlen)
{
    char dir[4096], placement[64];
    snprintf(dir, sizeof(dir), "%s/shard-%ld", cfg->data_dir, shard);
    kvs_schema_placement(placement, sizeof(placement), cfg->shards, cfg->partitions);
    int reset_lock = files_changed(m, dir);
    /* Tables Kafka writes to exist from the start, so clients creating
     * tables can never leave ingestion without room for them. */
    int ingest = cfg->kafka_brokers[0] != '\0' && cfg->n_bindings > 0;
    const char **bound = calloc(2 * (cfg->n_bindings + 1), sizeof(*bound));
    if (bound == NULL)
        return -ENOMEM;
    const char **topics = bound + cfg->n_bindings + 1;
    for (size_t i = 0; ingest && i < cfg->n_bindings; i++) {
        bound[i] = cfg->bindings[i].table;
        topics[i] = cfg->bindings[i].topic;
    }
    node_store_opts_t so = {
        .dir = dir,
        .shard = (uint32_t)shard,
        .placement = placement,
        .map_size = cfg->map_size,
        .max_tables = cfg->max_tables,
        .tables = bound,
        .topics = topics,
        .n_tables = ingest ? cfg->n_bindings : 0,
        .sync = cfg->sync,
        .cfg = cfg,
        .reset_lock = reset_lock,
        .last = m->had_last ? &m->last : NULL,
        .fail_cb = node_server_fail_cb,
        .fail_arg = NULL, /* node_store_set_fail_arg, once the server exists */
        .broken_cb = on_store_broken,
        .broken_arg = m,
        .tight_cb = on_store_tight,
        .tight_arg = m,
    };
    int rc = node_store_open(&so, out, err, errlen);
    free(bound);
    return rc;
}

/* Everything before the loop: config, addresses, store. Returns 0, or the
 * exit status (the reason logged). */
static int prepare(node_main_t *m, const node_args_t *args, kvs_config_t **cfg, kvs_addr_t addrs[2],
                   int *n_addrs, node_store_t **store)
{
    char err[1024];
    int loaded = args->config_fd >= 0
                     ? kvs_config_load_fd(args->config, args->config_fd, cfg, err, sizeof(err))
                     : kvs_config_load(args->config, cfg, err, sizeof(err));
    if (args->config_fd >= 0)
        close(args->config_fd); /* read whole: a reload reads --reload-from */
    if (loaded == -ENOMEM) {    /* not the config's fault: the router restarts this worker */
        kvs_error("%s; exiting", err);
        return EXIT_FAILURE;
    }
    if (loaded != 0)
        return config_fatal(m, "%s", err);
    kvs_log_level_t level = KVS_LOG_INFO;
    kvs_log_level_parse((*cfg)->log_level, &level);
    kvs_log_init("node", (int)args->shard, level);
    kvs_log_set_format((*cfg)->log_format);
    /* Run alone (a router's workers start from its snapshot: it warns). */
    if (args->config_fd < 0 && kvs_config_file_warning(*cfg, args->config, err, sizeof(err)))
        kvs_warn("%s", err);
    if ((uint32_t)args->shard >= (*cfg)->shards)
        return config_fatal(m,
                            "--shard %ld is out of range: %s has cluster.shards = %u (shards "
                            "0..%u)",
                            args->shard, args->config, (*cfg)->shards, (*cfg)->shards - 1);
    *n_addrs = listen_addrs(*cfg, args, addrs, err, sizeof(err));
    if (*n_addrs < 0)
        return config_fatal(m, "%s", err);
    if ((*cfg)->tls_node.enabled && *n_addrs > 1) {
        int rc = kvs_conn_tls_from_config(*cfg, &(*cfg)->tls_node, "tls.node", 1, &m->tls, err,
                                          sizeof(err));
        if (rc != 0)
            return config_fatal(m, "%s", rc == KVS_ECONFIG ? err : kvs_strerror(rc));
    }
    int rc = make_data_dir(*cfg, err, sizeof(err));
    if (rc == KVS_ECONFIG)
        return config_fatal(m, "%s", err);
    if (rc != 0) {
        kvs_error("%s", err);
        return 1;
    }
    if (foreign_data_dir(*cfg, args->shard, err, sizeof(err)) != 0)
        return config_fatal(m, "%s", err);
    take_state(m, *cfg, args->shard);
    /* A new replica copies a peer's environment before opening its own. */
    m->loop = uv_default_loop();
    watch_stop_signals(m);
    rc = node_bootstrap_run(m->loop, *cfg, (uint32_t)args->shard, addrs, (size_t)*n_addrs, m->tls,
                            &m->boot, err, sizeof(err));
    if (rc == -ECANCELED)
        return 0;
    if (rc == KVS_EDAMAGED)
        return config_fatal(m, "%s", err);
    if (rc != 0)
        kvs_warn("snapshot copy not attempted (%s): starting empty", kvs_strerror(rc));
    rc = open_store(m, *cfg, args->shard, store, err, sizeof(err));
    if (rc == KVS_EMISMATCH || rc == KVS_ECONFIG || rc == KVS_EDAMAGED)
        return config_fatal(m, "%s", err);
    if (rc != 0) {
        kvs_error("%s", err);
        return 1;
    }
    return 0;
}

/* The start failed after the configuration and the store were taken:
 * releases what main holds (m->cfg included); returns the exit status, 1. */
static int start_failed(node_main_t *m, node_store_t *store, kvs_plugins_t *plugins)
{
    node_handoff_free(m->handoff);
    kvs_shardstate_close(m->state);
    node_store_close(store);
    kvs_plugins_free(plugins);
    kvs_auth_free(m->auth);
    kvs_tls_ctx_free(m->tls);
    kvs_config_free(m->cfg);
    return 1;
}

int main(int argc, char **argv)
{
    node_args_t args;
    kvs_config_t *cfg = NULL;
    node_store_t *store = NULL;
    node_main_t m = {.exit_code = 0, .report_fd = -1};
    kvs_addr_t addrs[2];
    int n_addrs = 0;

    if (kvs_fs_std_fds() != 0)
        return EX_OSERR;
    kvs_fs_name_process(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    /* A reload (SIGHUP) that comes while this process starts must neither
     * kill it nor be lost: blocked until the loop's handler takes over
     * (libuv resets the disposition and the mask in the processes it
     * spawns). */
    kvs_signals_hold(1, SIGHUP, 0);
    signal(SIGXFSZ, SIG_IGN); /* past a file size limit a write fails (507), it does not kill */
    kvs_signals_ignore_stray(1);
    kvs_log_init("node", -1, KVS_LOG_INFO);
    /* Buffers above this size get their own mapping, so freeing one after
     * a burst gives the memory back to the system at once (glibc would
     * otherwise raise the threshold and keep it in the heap). */
    mallopt(M_MMAP_THRESHOLD, KVS_CONN_KEEP_BUFFER);
    pid_t parent = getppid();
    if (parse_args(argc, argv, &args) != 0)
        return 2;
    m.report_fd = args.report_fd;
    /* SIGTERM (a graceful drain) when the router dies, even by SIGKILL; the
     * getppid check covers a parent that died before prctl took effect
     * (with a PID, also one that died before this process began). */
    if (args.parent_pid > 0)
        parent = (pid_t)args.parent_pid;
    if (args.exit_with_parent && (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent)) {
        kvs_error("parent process is gone; not starting");
        return 1;
    }
    kvs_plugins_t *plugins = NULL;
    int rc = prepare(&m, &args, &cfg, addrs, &n_addrs, &store);
    if (rc == 0 && store != NULL) {
        char err[4600];
        if (kvs_plugins_load(cfg, "node", (int)args.shard, &plugins, err, sizeof(err)) != 0)
            rc = config_fatal(&m, "%s", err);
    }
    if (rc != 0 || store == NULL) { /* store NULL: stopped during the snapshot copy */
        kvs_shardstate_close(m.state);
        node_store_close(store);
        kvs_tls_ctx_free(m.tls);
        kvs_config_free(cfg);
        if (m.loop != NULL) { /* the signal handles */
            kvs_loop_close_all(m.loop);
            uv_run(m.loop, UV_RUN_DEFAULT);
            uv_loop_close(m.loop);
        }
        return finish(&m, rc);
    }
    m.config_path = args.config;
    m.reload_from = args.reload_from;
    m.cfg = cfg;

    m.loop = uv_default_loop();
    /* Before the listeners: a client may reload as soon as it can connect
     * (the handlers run once the loop does, when everything exists). */
    watch_sighup(&m);
    uv_ref((uv_handle_t *)&m.sigterm); /* the loop runs until the shutdown closes them */
    uv_ref((uv_handle_t *)&m.sigint);
    kvs_signals_release(m.loop, SIGHUP, 0); /* one that came meanwhile now reloads */
    if ((rc = kvs_auth_new(cfg, m.loop, &m.auth)) != 0) {
        kvs_error("users: cannot set up authentication: %s", kvs_strerror(rc));
        return start_failed(&m, store, plugins);
    }
    char shard_dir[sizeof(m.shard_dir)];
    snprintf(shard_dir, sizeof(shard_dir), "%s/shard-%ld", cfg->data_dir, args.shard);
    if (node_handoff_open(shard_dir, (uint32_t)args.shard, cfg, node_store_unbound_at_open(store),
                          &m.handoff) != 0) {
        kvs_error("out of memory");
        return start_failed(&m, store, plugins);
    }
    node_server_opts_t so = {
        .loop = m.loop,
        .store = store,
        .max_frame = (uint32_t)cfg->max_frame,
        .max_tables = cfg->max_tables,
        .limits = cfg,
        .addrs = addrs,
        .n_addrs = (size_t)n_addrs,
        .tls = m.tls,
        .auth = m.auth,
        .sync_interval_ms = cfg->sync == KVS_SYNC_BATCH ? cfg->sync_interval_ms : 0,
        .shard = (uint32_t)args.shard,
        .plugins = plugins,
    };
    if (node_server_start(&so, &m.srv) != 0)
        return start_failed(&m, store, plugins);
    node_store_set_fail_arg(store, m.srv);
    m.digest = node_digest_new(m.loop, store, cfg, (uint32_t)args.shard);
    node_server_set_digest(m.srv, m.digest);
    m.snapshot = node_snapshot_new(m.loop, store, (uint32_t)args.shard, (size_t)cfg->max_frame,
                                   cfg->frame_timeout_ms);
    node_server_set_snapshot(m.srv, m.snapshot, m.handoff);
    /* Before anything that may begin the shutdown, which stops it. */
    if (node_ack_start(m.loop, cfg, (uint32_t)args.shard, &m.ack) != 0)
        kvs_error("out of memory: an acknowledgement this shard's copy owes is sent at the next "
                  "start");
    if (start_ingest(&m, cfg, &args, store) != 0 || start_writes(&m, cfg, args.shard, store) != 0 ||
        start_reads(&m, cfg, args.shard) != 0) {
        if (m.exit_code == 0)
            m.exit_code = 1;
        m.signals = 1;
        begin_shutdown(&m);
    }
    watch_files(&m, cfg, args.shard, store);
    if (m.state != NULL)
        kvs_shardstate_publish(m.state, node_store_ident(store)); /* routers may read it now */
    kvs_info("shard %ld ready (data %s/shard-%ld, %u tables, sync %s)", args.shard, cfg->data_dir,
             args.shard, node_store_table_count(store),
             cfg->sync == KVS_SYNC_FULL    ? "full"
             : cfg->sync == KVS_SYNC_BATCH ? "batch"
                                           : "none");

    uv_run(m.loop, UV_RUN_DEFAULT);

    node_reads_free(m.reads);
    node_writes_free(m.writes);
    node_digest_free(m.digest);
    node_ack_free(m.ack);
    node_snapshot_free(m.snapshot);
    node_handoff_free(m.handoff);
    node_ingest_free(m.ingest);    /* before the store: it may still hold a read */
    kvs_shardstate_close(m.state); /* not live: routers stop reading the environment */
    rc = node_store_close(store);
    if (rc != 0) {
        kvs_error("closing the store: %s", kvs_strerror(rc));
        if (m.exit_code == 0)
            m.exit_code = 1;
    }
    node_server_free(m.srv);
    kvs_plugins_free(plugins); /* no hook runs any more; fini runs at exit, _exit too */
    if (node_kafka_left_running()) {
        /* Its threads may still call back into what the rest would free;
         * everything of this worker's own is closed. */
        kvs_info("stopped (a Kafka client was left closing)");
        _exit(finish(&m, m.exit_code));
    }
    uv_loop_close(m.loop);
    kvs_auth_free(m.auth);
    kvs_tls_ctx_free(m.tls);
    kvs_config_free(cfg);
    kvs_info("stopped");
    return finish(&m, m.exit_code);
}

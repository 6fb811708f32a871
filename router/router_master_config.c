/*
 * router_master_config: the master's start-up checks and its config
 * snapshot, read at start and replaced by a live reload.
 *
 * Start-up: the config file is read once into a snapshot (a sealed memfd)
 * and loaded from it, so the master, every router process and every
 * worker start from exactly the same text, even one restarted after the
 * file was edited (the edit takes effect at the next reload or start, as
 * with nginx; kvs-node --config-fd). A reload replaces the snapshot
 * (workers: once a new map serves, so after a failed membership change a
 * restarted worker runs the map the routers route by). Then
 * <data_dir>/router.lock is taken (a second node on the same data
 * refuses) and the TLS material is checked. Each router process holds
 * the lock descriptor too, so the lock is free only once the master and
 * every router are gone.
 *
 * Live reload (SIGHUP, systemctl reload), between RELOADING=1 and READY=1:
 * the master reads the file into a new snapshot and loads it, built whole
 * before anything uses it (nginx style), and checks it against its running
 * config (kvs_config_reload_check). A file that does not load, or that
 * changes a key that cannot change live, is refused whole: logged, naming
 * the keys, nothing changes anywhere, the children are not told. Otherwise
 * the master takes the live keys (kvs_config_apply_live), the new snapshot
 * replaces the old one (a router process restarted from now on runs it),
 * and SIGHUP is passed on to every router process and worker. Each of them
 * loads the text the master accepted (reload_fd, through /proc/PID/fd/N:
 * --reload-from; the file itself only if that cannot be opened), so an
 * edit made after the master read the file reaches no process, and checks
 * it against its own running config with the same rules before it applies
 * the live keys, then reloads its TLS material (router_main.c,
 * node_main.c): so no process ever applies a change that is not live.
 */
#include "router_master.h"
#include "router_master_int.h"

#include "kvs_addr.h"
#include "kvs_cluster.h"
#include "kvs_conn.h"
#include "kvs_copied.h"
#include "kvs_err.h"
#include "kvs_fs.h"
#include "kvs_log.h"
#include "kvs_mem.h"
#include "kvs_schema.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <unistd.h>

/* ---- start-up checks --------------------------------------------------------------- */

/* Reads the config file at `path` into a sealed memfd (a snapshot every
 * router process may load). Returns 0 and *fd, or a negative errno with
 * err[0..errlen) saying why. For a `reload` the loop runs, so a FIFO (or a
 * pipe: --config <(...)) is refused rather than waited for
 * (kvs_config_open): its open would block, every signal and child unheard. */
static int read_snapshot(const char *path, int *fd, char *err, size_t errlen, int reload)
{
    *fd = -1;
    int in = kvs_config_open(path, reload, err, errlen);
    if (in < 0)
        return in;
    int out = memfd_create("kvs-config", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    int rc = out < 0 ? -errno : 0;
    char buf[65536];
    size_t total = 0;
    for (ssize_t n; rc == 0 && (n = read(in, buf, sizeof(buf))) != 0;) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) { /* EISDIR (a directory), EIO: the same again at every try */
            rc = -errno;
            break;
        }
        if ((total += (size_t)n) > KVS_CONFIG_MAX_FILE) {
            rc = -EFBIG; /* the loader would refuse it: copy no more */
            break;
        }
        ssize_t w = write(out, buf, (size_t)n);
        if (w != n) /* a memfd takes it whole, short of memory */
            rc = w < 0 ? -errno : -ENOSPC;
    }
    close(in);
    /* Nobody may change the snapshot: every router process reads this text. */
    if (rc == 0 &&
        fcntl(out, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) != 0)
        rc = -errno;
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot read: %s", path, kvs_strerror(rc));
        if (out >= 0)
            close(out);
        return rc;
    }
    *fd = out;
    return 0;
}

/* Reads the config file into a memfd (the snapshot every router process
 * loads) and loads the master's config from it. Returns 0, or EX_CONFIG
 * after logging why. */
static int load_snapshot(master_t *m)
{
    char err[1024];
    if (read_snapshot(m->config_path, &m->config_fd, err, sizeof(err), 0) != 0) {
        kvs_error("%s", err);
        return EX_CONFIG;
    }
    if (kvs_config_load_fd(m->config_path, m->config_fd, &m->cfg, err, sizeof(err)) != 0) {
        kvs_error("%s", err);
        return EX_CONFIG;
    }
    if ((m->worker_config_fd = fcntl(m->config_fd, F_DUPFD_CLOEXEC, 0)) < 0 ||
        (m->reload_fd = fcntl(m->config_fd, F_DUPFD_CLOEXEC, 0)) < 0) {
        kvs_error("%s: cannot keep a snapshot for the workers: %s", m->config_path,
                  strerror(errno));
        return EX_CONFIG;
    }
    snprintf(m->reload_arg, sizeof(m->reload_arg), "/proc/%ld/fd/%d", (long)getpid(), m->reload_fd);
    kvs_mem_trim(); /* what reading the file took: the master runs no sweep */
    return 0;
}

/* The workers start from `fd`'s text from now on. */
void router_master_set_worker_snapshot(master_t *m, int fd)
{
    if (dup3(fd, m->worker_config_fd, O_CLOEXEC) < 0) /* onto an open descriptor */
        kvs_warn("cannot pass the new config snapshot to the workers: %s; a worker that "
                 "restarts runs the previous one",
                 strerror(errno));
}

/* Every child's reload reads the serving snapshot from now on. */
void router_master_pass_reload_text(master_t *m)
{
    if (dup3(m->config_fd, m->reload_fd, O_CLOEXEC) < 0)
        kvs_warn("reload: cannot pass the new snapshot on: %s; the other processes read %s itself",
                 strerror(errno), m->config_path);
}

/* Holds the binary at `path` open for the node's life and writes into
 * `file` the path children are executed from (/proc/self/fd/N): a worker
 * or router process the master starts later, after a crash or for a
 * membership change, runs the build the node started with, even once the
 * files were replaced (a package upgrade, a rebuild). The child resolves
 * the path after the fork, before its exec closes N: N is above every
 * descriptor a child is given (PIN_FD_MIN), so its setup never replaces
 * it. A script ("#!": a wrapper, a test's stand-in) is started by path:
 * its interpreter opens it after the exec, when the descriptor is closed.
 * So is a file that cannot be opened, or that /proc does not show (no
 * /proc): `file` is then "" (a spawn by path says why it fails), with a
 * warning naming `name` unless the file is missing or a script. */
#define PIN_FD_MIN 100

static void pin_binary(const char *path, const char *name, char *file, size_t len)
{
    struct stat held, shown;
    char head[2];
    int fd = open(path, O_RDONLY | O_CLOEXEC), high = -1;
    file[0] = '\0';
    if (fd >= 0 && pread(fd, head, sizeof(head), 0) == 2 && head[0] == '#' && head[1] == '!') {
        close(fd);
        return;
    }
    if (fd < 0) /* not readable: executable only, so no script either */
        fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0)
        return; /* not there: starting it by path says why */
    high = fcntl(fd, F_DUPFD_CLOEXEC, PIN_FD_MIN);
    int err = high < 0 ? errno : 0;
    close(fd);
    if (high >= 0) {
        snprintf(file, len, "/proc/self/fd/%d", high);
        if (fstat(high, &held) != 0 || stat(file, &shown) != 0 || held.st_dev != shown.st_dev ||
            held.st_ino != shown.st_ino) {
            err = errno != 0 ? errno : ENOENT;
            file[0] = '\0';
            close(high);
        }
    }
    if (file[0] == '\0')
        kvs_warn("cannot hold %s open for its processes (%s; descriptors from %d and /proc are "
                 "needed): they are started by its path, so replacing the file under the running "
                 "node changes what a restart runs",
                 name, strerror(err), PIN_FD_MIN);
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
                    kvs_tls_ctx_t **metrics_tls, char *err, size_t errlen)
{
    int rc = 0;
    *tls = *link_tls = NULL;
    if (metrics_tls != NULL)
        *metrics_tls = NULL;
    if (cfg->tls_router.enabled)
        rc = kvs_conn_tls_from_config(cfg, &cfg->tls_router, "tls.router", 1, tls, err, errlen);
    if (rc == 0 && cfg->tls_link.enabled && (cfg->n_remote > 0 || cfg->n_nodes > 0))
        rc = kvs_conn_tls_from_config(cfg, &cfg->tls_link, "tls.link", 0, link_tls, err, errlen);
    if (rc == 0 && metrics_tls != NULL && cfg->tls_metrics.enabled && cfg->metrics_listen[0])
        rc = kvs_conn_tls_from_config(cfg, &cfg->tls_metrics, "tls.metrics", 1, metrics_tls, err,
                                      errlen);
    if (rc != 0) {
        if (rc != KVS_ECONFIG)
            snprintf(err, errlen, "%s", kvs_strerror(rc));
        kvs_tls_ctx_free(*tls);
        kvs_tls_ctx_free(*link_tls);
        *tls = *link_tls = NULL;
        return KVS_ECONFIG;
    }
    return 0;
}

/* The TLS material must load before anything starts. Returns 0 or
 * EX_CONFIG after logging why. */
static int check_tls(const kvs_config_t *cfg)
{
    kvs_tls_ctx_t *tls, *link_tls, *metrics_tls;
    char err[600];
    if (router_tls_load(cfg, &tls, &link_tls, &metrics_tls, err, sizeof(err)) != 0) {
        kvs_error("%s", err);
        return EX_CONFIG;
    }
    kvs_tls_ctx_free(tls);
    kvs_tls_ctx_free(link_tls);
    kvs_tls_ctx_free(metrics_tls);
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

int router_master_shard_file(const kvs_config_t *cfg, uint32_t shard, const char *name)
{
    char dir[4200], file[4400];
    struct stat st;
    if (kvs_schema_shard_dir(dir, sizeof(dir), cfg->data_dir, shard) != 0)
        return -ENAMETOOLONG;
    snprintf(file, sizeof(file), "%s/%s", dir, name);
    if (stat(file, &st) == 0)
        return 1;
    return errno == ENOENT ? 0 : -errno;
}

/* A shard the map does not give this node whose data directory is here
 * (dropped from the map while the node was down: a live change moves it
 * aside, router_master_retire_data). Not moved at start (a map mistyped
 * for one start would take a single replica's only copy out of use), but
 * said: if a map gives the shard back, that worker serves the rows as
 * they were when the shard left, missing every write since. */
static void warn_unserved_data(const kvs_config_t *cfg)
{
    for (uint32_t s = 0; s < cfg->shards; s++) {
        char dir[4200];
        if (!kvs_config_local(cfg, s) && router_master_shard_file(cfg, s, "data.mdb") == 1 &&
            kvs_schema_shard_dir(dir, sizeof(dir), cfg->data_dir, s) == 0)
            kvs_warn("%s holds shard %u's data, but the map does not give this node shard %u: "
                     "move it aside or remove it before a map gives the shard back here (that "
                     "worker would serve it as it was when the shard left, not copy it afresh)",
                     dir, s, s);
    }
}

/* A shard of this node with no data here and no other replica in the
 * map, on a node that holds another shard's data: a new shard of a node
 * that ran before, so most likely one a map changed while the nodes were
 * down moved here (a live change copies it, router_master_change). Its
 * worker starts it empty, which is right for a new shard and for tables
 * bound to a topic (they replay it), but rows of tables bound to no topic
 * stay where the shard was: said once, at start. */
static void warn_empty_moved_shards(const kvs_config_t *cfg)
{
    int ran_before = 0;
    for (uint32_t s = 0; s < cfg->shards && !ran_before; s++)
        ran_before = router_master_shard_file(cfg, s, "data.mdb") == 1;
    if (!ran_before || cfg->n_nodes == 0)
        return;
    for (uint32_t s = 0; s < cfg->shards; s++) {
        kvs_replica_t r[KVS_MAX_REPLICAS];
        if (!kvs_config_local(cfg, s) || router_master_shard_file(cfg, s, "data.mdb") != 0 ||
            router_master_shard_file(cfg, s, "moving-in") != 0 ||
            kvs_cluster_replicas(cfg, s, r, KVS_MAX_REPLICAS, NULL, 0) != 1)
            continue;
        kvs_warn("shard %u has no data here and the map names no other replica of it: its worker "
                 "starts it empty (tables bound to a topic replay it). If another node held it "
                 "before this map, rows of its tables bound to no topic are still in that node's "
                 "shard-%u directory: only a live reload moves a shard's only copy (README, "
                 "Moving a shard)",
                 s, s);
    }
}

/* What take_records does. */
enum {
    RECORDS_HOLDERS = 1, /* holders says `next`; the nodes it withdraws are noted withdrawn */
    RECORDS_DROP = 2,    /* the nodes noted withdrawn are dropped from the records of copies */
    RECORDS_RESTORE = 4, /* holders says `next` again: the map that stays (a refused reload) */
};

static int take_records(const kvs_config_t *cur, const kvs_config_t *next, int mode, char *err,
                        size_t len);

/* Checks, then starts everything. Returns 0 (running: the loop decides),
 * or the exit status when nothing could start. */
int router_master_prepare(master_t *m, const char *argv0)
{
    int rc = load_snapshot(m);
    if (rc != 0)
        return rc;
    kvs_log_level_t level = KVS_LOG_INFO;
    kvs_log_level_parse(m->cfg->log_level, &level);
    kvs_log_set_level(level);
    kvs_log_set_format(m->cfg->log_format);
    char warning[1024]; /* in the file's own log format */
    if (kvs_config_file_warning(m->cfg, m->config_path, warning, sizeof(warning)))
        kvs_warn("%s", warning);
    if ((rc = take_lock(m)) != 0 || (rc = check_tls(m->cfg)) != 0 ||
        (rc = resolve_listeners(m)) != 0)
        return rc;
    if (router_master_foreign_listener(m) != 0)
        return 1; /* logged; becoming ready checks again, once the routers listen */
    char err[1024];
    if (take_records(NULL, m->cfg, RECORDS_HOLDERS | RECORDS_DROP, err, sizeof(err)) != 0) {
        kvs_error("%s; not started", err);
        return 1;
    }
    router_master_remove_next_paths(m->cfg);
    warn_unserved_data(m->cfg);
    warn_empty_moved_shards(m->cfg);
    m->n_procs = router_procs_count(m->cfg->router_processes);
    char exe[4200];
    size_t len = sizeof(exe);
    if (uv_exepath(exe, &len) != 0)
        snprintf(exe, sizeof(exe), "%s", argv0);
    snprintf(m->exe_dir, sizeof(m->exe_dir), "%s", dirname(exe));
    char node[4200];
    snprintf(node, sizeof(node), "%s/kvs-node", m->exe_dir);
    pin_binary(node, node, m->node_file, sizeof(m->node_file));
    snprintf(node, sizeof(node), "%s/kvs-router", m->exe_dir); /* its name, for the log */
    pin_binary("/proc/self/exe", node, m->router_file, sizeof(m->router_file));
    return 0;
}

/* ---- live reload ------------------------------------------------------------------ */

/* Why this reload cannot be taken now (NULL when it can). During a
 * membership change nothing is: each generation of router processes runs
 * its own snapshot, and a reload would have to replace both. */
static const char *reload_busy(const master_t *m, int map)
{
    /* From router_master_change_begin until router_master_change_maybe_done. */
    if (m->prev_cfg != NULL)
        return "a membership change is in progress";
    if (map && !m->ready)
        return "cluster.nodes changed while the node is still starting";
    return NULL;
}

/* Whether some node that holds shard s in `cur` still holds it in `next`. */
static int kept_by_a_holder(const kvs_config_t *cur, const kvs_config_t *next, uint32_t s)
{
    for (size_t i = 0; i < cur->n_nodes; i++) {
        const kvs_node_t *n = kvs_config_node(next, cur->nodes[i].name);
        if (kvs_node_serves(&cur->nodes[i], s) && n != NULL && kvs_node_serves(n, s))
            return 1;
    }
    return 0;
}

/* Shard s's copied-out file (`name` KVS_COPIED_FILE) or unbound-rows
 * (KVS_UNBOUND_FILE) in this node's directory (node_handoff, kvs_copied):
 * whether one of the nodes it names as having installed a copy holds the
 * shard in `next`. Returns 1, 0 (none of them, it names none, or it
 * cannot be read), or -1 when there is no file. `named` gets the names it
 * lists, for the refusal. */
static int copied_to_a_holder(const kvs_config_t *cur, const kvs_config_t *next, uint32_t s,
                              const char *name, char *named, size_t len)
{
    char dir[4200], file[4400];
    kvs_copied_t c;
    named[0] = '\0';
    if (kvs_schema_shard_dir(dir, sizeof(dir), cur->data_dir, s) != 0)
        return 0;
    snprintf(file, sizeof(file), "%s/%s", dir, name);
    int rc = strcmp(name, KVS_COPIED_FILE) == 0 ? kvs_copied_read(file, &c)
                                                : kvs_copied_read_names(file, &c);
    if (rc != 0)
        return rc == -ENOENT ? -1 : 0;
    int kept = 0;
    size_t used = 0;
    for (size_t i = 0; i < c.n_names; i++) {
        const kvs_node_t *n = kvs_config_node(next, c.names[i]);
        if (n != NULL && kvs_node_serves(n, s))
            kept = 1;
        int w = snprintf(named + used, len - used, "%s%s", used > 0 ? ", " : "", c.names[i]);
        if (w > 0 && (size_t)w < len - used)
            used += (size_t)w;
    }
    return kept;
}

/* A shard the new map takes from this node before a node that keeps it
 * holds the rows of its tables bound to no topic (they exist in the
 * directories that took their writes, and in copies of those). Refused:
 *   - a map that takes it from every node that holds it now at once;
 *   - one that takes it from this node, its only holder, unless a node
 *     that keeps it installed a copy: copied-out (node_handoff raises it,
 *     and fences the copy, when a snapshot is sent) names the nodes that
 *     did, or unbound-rows does;
 *   - one that takes it from this node while others keep it, when this
 *     directory may hold such rows no other copy holds (unbound-rows
 *     exists) and names none of the nodes that keep it: the map says they
 *     hold the shard, not what their copies hold (they may not have
 *     reloaded yet, or hold a copy older than a write taken here).
 * A new holder copies first when it reloads first (node_bootstrap), and
 * a node named that was withdrawn since holds nothing. Returns 1 with
 * why[] said, or 0. */
/* The advice both refusals give about reloading the new owner first. */
#define NEW_OWNER_COPIES                                                                           \
    "(it copies it from here, unless it still has a directory of the shard, which it serves as "   \
    "it is: move that aside first)"

static int last_copy_leaving(const kvs_config_t *cur, const kvs_config_t *next, char *why,
                             size_t len)
{
    for (uint32_t s = 0; s < cur->shards; s++) {
        char dir[4200];
        if (!kvs_config_local(cur, s) || kvs_config_local(next, s) ||
            kvs_schema_shard_dir(dir, sizeof(dir), cur->data_dir, s) != 0 ||
            router_master_shard_file(cur, s, "data.mdb") != 1)
            continue; /* kept, or no data here to lose */
        uint32_t holders = kvs_config_replica_count(cur, s);
        int kept = kept_by_a_holder(cur, next, s);
        if (holders > 1 && !kept) {
            snprintf(why, len,
                     "cluster.nodes takes shard %u from every node that holds it now (%u, this one "
                     "included) at once: give its new holders the shard beside them first (they "
                     "copy it), then take it from the old ones (README, Moving a shard)",
                     s, holders);
            return 1;
        }
        char named[600], rows_named[600];
        int copied = copied_to_a_holder(cur, next, s, KVS_COPIED_FILE, named, sizeof(named));
        int rows =
            copied_to_a_holder(cur, next, s, KVS_UNBOUND_FILE, rows_named, sizeof(rows_named));
        /* A copy holds every unbound row: fenced since, or (with several
         * holders now: until the worker stops, no such write is taken) none
         * written since. Alone and unfenced, the worker could take one
         * before it stops. */
        if (copied == 1 || (holders > 1 && rows == 1))
            continue;
        if (holders > 1 && rows == -1)
            continue; /* kept, and no unbound rows here that its keepers lack */
        if (holders > 1) {
            snprintf(
                why, len,
                "cluster.nodes takes shard %u from this node, and no node that keeps it "
                "installed a copy of this one taken since its last write to a table bound "
                "to no topic (%.300s/" KVS_UNBOUND_FILE
                " names %.200s): such rows may exist only here, whatever the map says the "
                "others hold (they may not have reloaded yet, or hold an older copy). "
                "Reload a node that keeps the shard first " NEW_OWNER_COPIES
                ", then this one; if its copy holds every such row (no such write was taken "
                "here since it copied, and it never gave the shard up), remove " KVS_UNBOUND_FILE
                " from the directory above and reload again (README, Moving a shard)",
                s, dir, rows_named[0] != '\0' ? rows_named : "no node");
            return 1;
        }
        if (copied == 0) {
            snprintf(
                why, len,
                "cluster.nodes takes shard %u from this node, which holds its only copy, and "
                "gives it to no node that copied it (%.300s/copied-out names %.200s): the rows "
                "of its tables bound to no topic would exist nowhere. Give the shard to a "
                "node that copied it, or reload the node that takes it over first " NEW_OWNER_COPIES
                ", then this one; if that node holds its copy "
                "already (this node never heard it was installed), give the shard to both "
                "first, then take it from this one (README, Moving a shard)",
                s, dir, named[0] != '\0' ? named : "no node: none acknowledged an installed copy");
            return 1;
        }
        snprintf(why, len,
                 "cluster.nodes takes shard %u from this node, which holds its only copy, before "
                 "any node copied it (%.300s has no copied-out): the rows of its tables bound to "
                 "no topic exist nowhere else. Reload the node that takes the shard over "
                 "first " NEW_OWNER_COPIES
                 ", then this one; to exchange shards between nodes, first give "
                 "each its new shards beside its old ones (README, Moving a shard)",
                 s, dir);
        return 1;
    }
    return 0;
}

/* The nodes `map` gives shard s, into names[] (pointers into `map`):
 * how many. */
static size_t holders_of(const kvs_config_t *map, uint32_t s, const char **names)
{
    size_t n = 0;
    for (size_t i = 0; map != NULL && i < map->n_nodes; i++)
        if (kvs_node_serves(&map->nodes[i], s) && n < KVS_COPIED_NAMES)
            names[n++] = map->nodes[i].name;
    return n;
}

/* from[0..n) less the names in less[0..n_less), each once, into out[]
 * (at most cap): how many. */
static size_t names_minus(const char *const *from, size_t n, const char *const *less, size_t n_less,
                          const char **out, size_t cap)
{
    size_t n_out = 0;
    for (size_t i = 0; i < n && n_out < cap; i++) {
        int skip = 0;
        for (size_t j = 0; j < n_less && !skip; j++)
            skip = strcmp(from[i], less[j]) == 0;
        for (size_t j = 0; j < n_out && !skip; j++)
            skip = strcmp(from[i], out[j]) == 0;
        if (!skip)
            out[n_out++] = from[i];
    }
    return n_out;
}

/* Names dir's holders file notes withdrawn ("withdrawn NAME"), into
 * names[] (pointers into c): how many. */
static size_t noted(const kvs_copied_t *c, int read, const char **names)
{
    size_t n = 0;
    for (size_t i = 0; read == 0 && i < c->n_gone; i++)
        names[n++] = c->gone[i];
    return n;
}

/* Records of a shard's copies that a map changes, for every shard `next`
 * or `cur` gives this node whose directory exists; under the directory's
 * lock, which the worker takes for each change of those files:
 *   - RECORDS_HOLDERS (at a reload, before the check that may refuse it;
 *     at the master's start: `cur` NULL): the holders file says `next`
 *     (the worker refuses to begin writing unbound rows while it lists
 *     other nodes or not this one: its own map may still be the previous
 *     one); the nodes that held the shard before (the holders file: the
 *     map last taken, also before a restart; and `cur`) and not in `next`
 *     are noted withdrawn there, and its count of withdrawals moves: a
 *     copy a withdrawn node asks for, or one acknowledged after the count
 *     moved, is recorded by no one. A start without a holders file (a
 *     directory from before it, or added by a reload before it had data)
 *     or with one it cannot read drops every name;
 *   - RECORDS_DROP (once the map is taken): the nodes noted withdrawn
 *     count no more in copied-out and unbound-rows (a node that copied
 *     and was withdrawn again may have retired its copy): dropped
 *     (kvs_copied_drop). After the check, so that a refused reload keeps
 *     every name (the check counts no node `next` does not give the
 *     shard, withdrawn or not);
 *   - RECORDS_RESTORE (a reload refused: `next` is the map that stays):
 *     holders says `next` again; a node it gives the shard is withdrawn
 *     no more.
 * Returns 0, or nonzero with err[] said: nothing of the map may be taken. */
static int take_records(const kvs_config_t *cur, const kvs_config_t *next, int mode, char *err,
                        size_t len)
{
    for (uint32_t s = 0; next->n_nodes > 0 && s < next->shards; s++) { /* (no map: no moves) */
        char dir[4200], file[4400];
        struct stat st;
        if ((!kvs_config_local(next, s) && (cur == NULL || !kvs_config_local(cur, s))) ||
            kvs_schema_shard_dir(dir, sizeof(dir), next->data_dir, s) != 0 ||
            lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        const char *before[2 * KVS_COPIED_NAMES], *after[KVS_COPIED_NAMES];
        const char *gone[3 * KVS_COPIED_NAMES], *out[KVS_COPIED_NAMES];
        size_t n_after = holders_of(next, s, after), n_before = holders_of(cur, s, before);
        size_t n_gone = 0, n_out = 0, dropped = 0;
        int lock = kvs_copied_lock(dir, KVS_COPIED_LOCK_MS), rc = lock < 0 ? lock : 0;
        kvs_copied_t *c = calloc(1, sizeof(*c));
        snprintf(file, sizeof(file), "%s/" KVS_HOLDERS_FILE, dir);
        int read = rc != 0 ? rc : c == NULL ? -ENOMEM : kvs_copied_read_names(file, c);
        int all = (mode & RECORDS_HOLDERS) && (read == -ENOENT ? cur == NULL : read != 0);
        if (mode & RECORDS_HOLDERS) {
            for (size_t i = 0; read == 0 && i < c->n_names; i++)
                before[n_before++] = c->names[i];
            n_gone = names_minus(before, n_before, after, n_after, gone, 2 * KVS_COPIED_NAMES);
        }
        if (rc == 0 && all)
            rc = kvs_copied_drop(dir, NULL, 0, 1, &dropped);
        if (rc == 0 && (mode & (RECORDS_HOLDERS | RECORDS_RESTORE))) {
            /* Noted withdrawn: the file's and this map's, less the nodes it
             * gives the shard. */
            size_t n_all = noted(c, read, gone + n_gone) + n_gone;
            n_out = names_minus(gone, n_all, after, n_after, out, KVS_COPIED_NAMES);
            uint64_t count = (read == 0 ? c->withdrawals : 0) + (n_gone > 0 || all);
            rc = kvs_copied_write_holders(dir, after, n_after, count, out, n_out);
        }
        if (rc == 0 && (mode & RECORDS_DROP)) {
            read = kvs_copied_read_names(file, c);
            size_t n = noted(c, read, gone);
            rc = read != 0 ? read : n > 0 ? kvs_copied_drop(dir, gone, n, 0, &dropped) : 0;
            n_gone = n;
        }
        if (rc == 0 && dropped > 0 && all)
            kvs_info("shard %u: %s %s: copied-out and unbound-rows name no node any more (%zu "
                     "lines dropped)",
                     s, file, read == -ENOENT ? "is missing" : "cannot be read", dropped);
        else if (rc == 0 && dropped > 0)
            kvs_info("shard %u: copied-out and unbound-rows no longer name node %s%s, which a map "
                     "withdrew from the shard: its copy may be gone (%zu lines dropped)",
                     s, gone[0], n_gone > 1 ? " and the others withdrawn" : "", dropped);
        free(c);
        kvs_copied_unlock(lock);
        if (rc != 0) {
            snprintf(err, len,
                     "cannot update the records of shard %u's copies in %.300s (copied-out, "
                     "unbound-rows, holders), which a move of the shard trusts: %s",
                     s, dir,
                     rc == -ETIMEDOUT ? "its lock (" KVS_COPIED_LOCK ") is held"
                                      : kvs_strerror(rc));
            return rc;
        }
    }
    return 0;
}

/* The file, read and checked (see the file comment). Returns 0 when its
 * live keys were taken (the children may be told), nonzero (logged) when
 * nothing changed. *map is set when cluster.nodes changed: m->cfg then
 * holds the new map, m->prev_cfg the previous one, m->next_config_fd the
 * new snapshot (for the new generation; the serving one keeps its own). */
int router_master_reload_config(master_t *m, int *map)
{
    char err[2048], changed[512], fixed[512];
    kvs_config_t *next = NULL;
    const char *busy = NULL;
    int fd = -1;
    *map = 0;
    int rc = read_snapshot(m->config_path, &fd, err, sizeof(err), 1);
    if (rc == 0)
        rc = kvs_config_load_fd(m->config_path, fd, &next, err, sizeof(err));
    if (rc == 0)
        *map = !kvs_config_map_eq(m->cfg, next);
    if (rc != 0) {
        kvs_error("reload: %s; the running configuration is unchanged", err);
        m->reloads[1]++;
    } else if ((rc = kvs_config_reload_check(m->cfg, next, changed, sizeof(changed), fixed,
                                             sizeof(fixed))) != 0) {
        kvs_config_reload_refusal(m->cfg, next, m->config_path, err, sizeof(err));
        kvs_error("reload refused: %s; the running configuration is unchanged", err);
        m->reloads[2]++;
    } else if ((busy = reload_busy(m, *map)) != NULL) {
        rc = KVS_ECONFIG;
        kvs_error("reload refused: %s; the running configuration is unchanged (reload again once "
                  "it is over)",
                  busy);
        m->reloads[2]++;
    } else if (*map && take_records(m->cfg, next, RECORDS_HOLDERS, err, sizeof(err)) != 0) {
        rc = KVS_ECONFIG;
        kvs_error("reload refused: %s; the running configuration is unchanged", err);
        m->reloads[2]++;
    } else if (*map && (last_copy_leaving(m->cfg, next, err, sizeof(err)) ||
                        take_records(m->cfg, next, RECORDS_DROP, err, sizeof(err)) != 0)) {
        /* After RECORDS_HOLDERS: a write its worker takes from now on sees
         * the new holders (and refuses), one taken before left its record. */
        char undo[1024];
        if (take_records(next, m->cfg, RECORDS_RESTORE, undo, sizeof(undo)) != 0)
            kvs_error("%s", undo);
        rc = KVS_ECONFIG;
        kvs_error("reload refused: %s; the running configuration is unchanged", err);
        m->reloads[2]++;
    } else if (!*map && dup2(fd, m->config_fd) < 0) { /* same number: the supervisor passes it */
        rc = -errno;
        kvs_error("reload: cannot replace the config snapshot: %s; the running configuration is "
                  "unchanged",
                  strerror(-rc));
        m->reloads[1]++;
    } else {
        fcntl(m->config_fd, F_SETFD, FD_CLOEXEC);
        if (!*map) {
            router_master_set_worker_snapshot(m, m->config_fd);
            kvs_config_apply_live(m->cfg, next); /* next now holds the old values */
        } else {
            /* A new map is taken whole once its router processes serve
             * (router_master_change_switch: the live keys of the same file then, the
             * workers' snapshot too), or not at all if the change fails:
             * prev_cfg holds the previous map and the new live keys until
             * the change is over. */
            kvs_config_apply_map(m->cfg, next);
            m->prev_cfg = next;
            next = NULL;
            m->next_config_fd = fd;
            fd = -1;
        }
        /* What every child's reload reads from now on (before they are
         * told); a new map's text at the switch. */
        if (!*map)
            router_master_pass_reload_text(m);
        kvs_log_level_t level = KVS_LOG_INFO;
        kvs_log_level_parse(m->cfg->log_level, &level);
        kvs_log_set_level(level);
        kvs_log_set_format(m->cfg->log_format);
        m->reloads[0]++;
        if (kvs_config_file_warning(m->cfg, m->config_path, err, sizeof(err)))
            kvs_warn("%s", err);
        if (*map)
            kvs_info("configuration accepted from %s (%s): a membership change, taken whole "
                     "once the router processes of the new map serve",
                     m->config_path, changed);
        else
            kvs_info("configuration reloaded from %s (%s)", m->config_path,
                     changed[0] ? changed : "nothing changed");
    }
    if (fd >= 0)
        close(fd);
    kvs_config_free(next);
    kvs_mem_trim(); /* what reading the file took (kvs_mem.h) */
    if (rc != 0)
        *map = 0;
    return rc;
}

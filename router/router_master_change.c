/*
 * router_master_change: a change of cluster.nodes taken live, by the
 * master (router_master.c), and the life of a generation of router
 * processes once it stops.
 *
 * Membership change (a reload whose cluster.nodes differs; the map must
 * still load, name this node at the same address, and everything else of
 * the reload must be live, or it is refused whole as any reload,
 * router_master_config.c), nginx's
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
 * one listens (router_master_change_switch) the master renames each of those over
 * routerI.sock (kvs-cli and the scrape reach the new process from then
 * on), the master takes the file's live keys and the workers get the
 * SIGHUP (they take the new map only now: after a change that failed they
 * run the map and config the routers run), and the
 * old generation gets SIGTERM: it stops accepting, answers what it
 * received, closes its clients (they reconnect, as after any router
 * restart, and reach the new map). Once it is gone, workers of shards no
 * longer local stop (retire_workers; their data directories are moved
 * aside, shard-N.retired-<time>, so a later map giving the shard back
 * copies it afresh rather than serving what it missed). If the
 * new generation does not all listen within router.ready_timeout, or one
 * of it exits first, it is stopped, the master goes back to the previous
 * map and snapshot, and the old generation never stopped serving, its
 * sockets never moved (router_master_change_failed). A worker the change started that
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
 */
#include "router_master_int.h"

#include "kvs_addr.h"
#include "kvs_log.h"
#include "kvs_schema.h"
#include "router_notify.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static uint32_t count_local(const kvs_config_t *cfg)
{
    uint32_t n = 0;
    for (uint32_t s = 0; s < cfg->shards; s++)
        n += (uint32_t)kvs_config_local(cfg, s);
    return n;
}

/* The change is over (no generation starting or draining, no worker
 * retiring): the previous map and snapshot are no longer needed. */
void router_master_change_maybe_done(master_t *m)
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

void router_master_retire_data(const master_t *m, uint32_t shard)
{
    char dir[4200], to[4300], stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    if (kvs_schema_shard_dir(dir, sizeof(dir), m->cfg->data_dir, shard) != 0 ||
        gmtime_r(&now, &tm) == NULL || strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm) == 0)
        return;
    for (int i = 0; i < 100; i++) {
        snprintf(to, sizeof(to), i == 0 ? "%s.retired-%s" : "%s.retired-%s-%d", dir, stamp, i);
        if (rename(dir, to) == 0) {
            kvs_info("membership change: shard %u's data moved to %s (a map that gives the shard "
                     "back copies it afresh from a peer; remove it when no longer wanted)",
                     shard, to);
            return;
        }
        if (errno == ENOENT)
            return; /* no data here */
        if (errno != EEXIST && errno != ENOTEMPTY)
            break;
    }
    kvs_warn("membership change: cannot move shard %u's data %s aside: %s; remove it before a map "
             "gives the shard back here, or that map's worker serves the data as it was when it "
             "left",
             shard, dir, strerror(errno));
}

/* Whether shard s's directory is moved aside once its worker is gone: its
 * data misses every write from now on, and a later map that gives the
 * shard back must copy it afresh, not serve it (router_master_retire_data).
 * After a change that took, always. After one abandoned, only a copy the
 * change made (its worker started without data): a retry must copy again,
 * or it would serve the rows as they were then, and its peer, whose
 * snapshot fence (node_handoff) the operator lifted, took writes since.
 * Any other directory of an abandoned change's worker stays: it may be
 * one the operator must look at, such as another shard's data that made
 * the worker exit 78. */
int router_master_retires_data(const master_t *m, uint32_t s)
{
    return !m->abandoned || (s < KVS_SHARDS_MAX && m->copied[s]);
}

/* No router process uses a worker the map no longer wants any more: stop
 * those, and move their data aside (router_master_retires_data). */
static void retire_workers(master_t *m)
{
    for (uint32_t s = 0; s < m->cfg->shards && m->workers != NULL; s++) {
        if (kvs_config_local(m->cfg, s) || !router_sup_wanted(m->workers, s))
            continue;
        int running = router_sup_pid(m->workers, s) > 0;
        kvs_info("membership change: shard %u is no longer served here; its worker stops", s);
        if (router_sup_retire(m->workers, s) == 0 && running)
            m->n_retiring++; /* its exit moves the data (on_worker_event) */
        else if (router_master_retires_data(m, s))
            router_master_retire_data(m, s);
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
void router_master_on_gen_stopped(void *arg)
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
    router_master_gen_free(g);
    if (m->shutting_down) {
        if (m->routers == NULL && m->next == NULL && m->old == NULL)
            router_master_on_routers_stopped(m);
        return;
    }
    if (was_old && m->routers != NULL)
        gen_reclaim_paths(m, m->routers);
    if (was_next)
        router_master_remove_next_paths(m->cfg);
    retire_workers(m);
    router_master_change_maybe_done(m);
}

/* The new generation cannot start: it stops, the serving one goes on with
 * the map it has, and the master goes back to the previous map and
 * snapshot, so reloading again retries. */
void router_master_change_failed(master_t *m, const char *why)
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
        /* Then router_master_on_gen_stopped stops workers the map does not want. */
        router_master_gen_stop(m->next);
    } else {
        retire_workers(m);
        router_master_change_maybe_done(m);
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
    router_master_change_failed(m, why);
}

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
    router_master_router_args(m, 0, args, n_arg, pid_arg);
    if (router_sup_set_args(g->sup, args) != 0)
        kvs_warn("membership change: out of memory; a router process restarted from now on "
                 "listens on routerI.next, out of /metrics' and kvs-cli's reach");
}

/* Every process of the new generation listens: it serves, the old one
 * drains (stops accepting, answers what it has, closes its clients). The
 * workers now take the new map too (on_sighup held their SIGHUP back). */
void router_master_change_switch(master_t *m)
{
    uv_timer_stop(&m->timer);
    router_master_foreign_listener(m); /* logged; nothing to stop while serving */
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
    /* Then router_master_on_gen_stopped retires the workers no longer wanted. */
    router_master_gen_stop(m->old);
}

/* Every worker the new map added serves: start the router processes of
 * the new map. */
static void start_next(void *arg)
{
    master_t *m = arg;
    uint32_t next[KVS_ROUTER_PROCESSES_MAX];
    for (uint32_t i = 0; i < m->n_procs; i++)
        next[i] = router_sup_generation(m->routers->sup, i);
    uint32_t base = router_procs_next_gen_base(next, m->n_procs);
    router_notify_status("membership change: starting router processes with the new map");
    /* Until the new generation serves (then the old one stops) or is gone
     * (router_master_on_gen_stopped): an old process restarted meanwhile would get a
     * generation number a new one has, and could take routerI.sock back
     * after router_master_change_switch renamed the new one over it. */
    router_sup_pause(m->routers->sup);
    if (router_master_start_routers(m, &m->next, base, m->next_config_fd, 1) != 0) {
        rgen_t *g = m->next;
        m->next = NULL;
        router_master_gen_free(g); /* nothing of it started */
        router_sup_resume(m->routers->sup);
        router_master_change_failed(m, "cannot start router processes");
    }
}

/* The reload took a new map (m->cfg holds it, m->prev_cfg the old one):
 * workers for shards that became local, and once they serve a new
 * generation of router processes with the new snapshot, all within
 * router.ready_timeout. */
void router_master_change_begin(master_t *m)
{
    uint32_t added[KVS_SHARDS_MAX];
    size_t n = 0;
    int rc = 0;
    m->n_local = count_local(m->cfg);
    m->changing = 1;
    m->abandoned = 0;
    memset(m->copied, 0, sizeof(m->copied));
    uv_timer_start(&m->timer, on_change_timeout, change_timeout_ms(m), 0);
    for (uint32_t s = 0; s < m->cfg->shards && rc == 0; s++) {
        if (!kvs_config_local(m->cfg, s) || router_sup_wanted(m->workers, s))
            continue;
        kvs_info("membership change: shard %u is now served here too; starting its worker", s);
        m->copied[s] = router_master_shard_file(m->cfg, s, "data.mdb") == 0; /* it will copy */
        rc = router_sup_add(m->workers, s); /* a failed spawn is retried, not an error */
        if (rc == 0)
            added[n++] = s;
    }
    if (rc != 0) {
        char why[100];
        snprintf(why, sizeof(why), "cannot start a new worker: %s", uv_strerror(rc));
        router_master_change_failed(m, why); /* retires those already added */
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
        router_master_change_failed(m, "cannot reach the new workers");
}

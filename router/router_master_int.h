/*
 * router_master_int: the master's state, shared by the files of the
 * master (router_master.c and the router_master_*.c it is split into)
 * and by nothing else. One master_t lives for the whole process
 * (router_master_run); every callback of the master gets it, or an rgen_t
 * that points to it. Single-threaded: everything runs on the master's loop.
 * Each function declared here has its full contract above its definition.
 */
#ifndef ROUTER_MASTER_INT_H
#define ROUTER_MASTER_INT_H

#include "kvs_config.h"
#include "kvs_signals.h"
#include "router_liveness.h"
#include "router_probe.h"
#include "router_procs.h"
#include "router_scrape.h"
#include "router_supervisor.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define ROUTER_DRAIN_MS 10000 /* a router process's own drain deadline (router_main.c) */
#define ROUTER_GRACE_MS (ROUTER_DRAIN_MS + 5000)
#define WORKER_GRACE_MS 10000
/* A router process killed this many times before the node is ready fails
 * the start (router_master_children.c); also the supervisor's crash-loop
 * limit for router processes. */
#define ROUTER_START_KILLS 5
#define REPORT_FD 3 /* kvs-node --report-fd: why a worker exited with EX_CONFIG */
#define REPORT_FD_ARG "3"
#define WORKER_CONFIG_FD 4 /* kvs-node --config-fd: the serving snapshot */
#define WORKER_CONFIG_FD_ARG "4"

typedef struct master_s master_t;

/* One generation of router processes: the n_procs of them one supervisor
 * runs, all started with the same snapshot. */
typedef struct rgen_s {
    master_t *m;
    router_sup_t *sup;
    uint64_t (*inodes)[ROUTER_LISTEN_MAX]; /* per router process, while it listens */
    uint8_t *listening;
    uint32_t n_listening;
    router_live_t *live; /* per router process (router_master_live.c) */
    int stopping;        /* router_sup_stop called */
} rgen_t;

struct master_s {
    uv_loop_t *loop;
    kvs_config_t *cfg;
    const char *config_path;
    char exe_dir[4096];
    /* The binaries children are started from, held open since the start
     * (/proc/self/fd/N; "" when they could not be opened: by path). */
    char node_file[48], router_file[48];
    int lock_fd, config_fd;
    /* The snapshot workers start from: the serving map's (a copy of
     * config_fd, at one number for the workers' supervisor, which passes
     * whatever it holds to each worker it starts). */
    int worker_config_fd;
    /* The text of the last reload the master applied (a copy of the
     * serving snapshot: a new map's only from router_master_change_switch on), which
     * every child's reload reads through /proc (reload_arg:
     * --reload-from), not the file: an edit made after the master read it
     * reaches no process, nor does a map before it serves (a SIGHUP a
     * starting worker handles late). */
    int reload_fd;
    char reload_arg[64];
    uint32_t n_procs, n_local;
    router_sup_t *workers;
    rgen_t *routers; /* the generation serving clients */
    /* A membership change (see the file comment): `next` starts with
     * the new map, then serves while `old` drains;
     * next_config_fd is `next`'s snapshot (m->config_fd the serving
     * generation's), prev_cfg keeps the map it replaced
     * until it is over, to go back if the new generation cannot start. */
    rgen_t *next, *old;
    int changing;  /* new workers probed, or `next` starting */
    int abandoned; /* the change in progress failed (router_master_change_maybe_done says so) */
    /* Per shard: the change's new worker started without data here, so
     * what its directory holds now is the change's own copy of a peer. */
    uint8_t copied[KVS_SHARDS_MAX];
    router_probe_t *probe; /* waits for the new workers to serve */
    kvs_config_t *prev_cfg;
    int next_config_fd;
    uint32_t n_retiring; /* workers of shards no longer local, not yet exited */
    uint64_t changes[2]; /* membership changes: done, failed */
    uv_signal_t sigterm, sigint;
    kvs_reload_sig_t sighup;
    uv_timer_t timer;          /* readiness deadline, at start and for a membership change */
    uv_timer_t live_timer;     /* checks the serving router processes' heartbeats */
    uint64_t live_timeout_ms;  /* the router.liveness_timeout it checks with; 0: off */
    uint64_t live_tick_ms;     /* loop time of its last run */
    uint64_t live_quiet_until; /* loop time before which it kills nobody (a new timeout) */
    uint64_t start_timeout_ms; /* the start's deadline (a reload meanwhile does not move it) */
    struct sockaddr_storage listen_addr[ROUTER_LISTEN_MAX];
    const char *listen_name[ROUTER_LISTEN_MAX];
    size_t n_listen;
    int census_failed;          /* sock_diag unavailable: said once */
    router_scrape_t *scrape;    /* router.metrics_listen, when set ... */
    kvs_tls_ctx_t *metrics_tls; /* ... over HTTPS (tls.metrics), or NULL */
    kvs_auth_t *metrics_auth;   /* ... to these users (router.metrics_auth), or NULL */
    uint64_t *worker_restarts;  /* per shard: times its worker was started again */
    uint64_t *router_restarts;  /* per router process */
    uint64_t *router_hung;      /* per router process: killed for sending no heartbeat */
    uint64_t reloads[3];        /* ok, error, refused */
    double start_time;
    int signals, ready, shutting_down, workers_stopping, exit_code;
    char final_msg[800]; /* the last log line, when a child's exit stopped the node */
};

/* ---- router_master_live.c: the liveness check ---- */

/* Router process `i` of g said something or started: its clock starts again. */
void router_master_live_heard(master_t *m, rgen_t *g, uint32_t i);
/* Router process `i` of g said it reads a reloaded config: it is not
 * judged until it beats again (ROUTER_LIVENESS_RELOAD_GRACE_MS at most). */
void router_master_live_reloading(master_t *m, rgen_t *g, uint32_t i);
/* Runs the check with the router.liveness_timeout m->cfg holds now. */
void router_master_live_configure(master_t *m);

/* ---- router_master_config.c: start-up checks, the config snapshot ---- */

/* Checks, then prepares the start; 0, or the exit status (logged). */
int router_master_prepare(master_t *m, const char *argv0);
/* The workers start from `fd`'s text from now on. */
void router_master_set_worker_snapshot(master_t *m, int fd);
/* Every child's reload reads the serving snapshot from now on. */
void router_master_pass_reload_text(master_t *m);
/* Reads and checks the file for a reload: 0 when its live keys were taken. */
int router_master_reload_config(master_t *m, int *map);

/* ---- router_master_change.c: the membership change ---- */

/* Removes every routerI.next (at start, and after a failed change). */
void router_master_remove_next_paths(const kvs_config_t *cfg);
/* A generation finished draining (router_sup_stop's callback; arg: the rgen_t). */
void router_master_on_gen_stopped(void *arg);
/* The new generation cannot start (`why`, logged): back to the previous map. */
void router_master_change_failed(master_t *m, const char *why);
/* Moves the data directory of `shard`, whose worker the map no longer
 * wants and which is gone, to shard-N.retired-<UTC time> (logged). */
void router_master_retire_data(const master_t *m, uint32_t shard);
/* Whether <data_dir>/shard-N/`name` exists: 1, 0 (it does not), or a
 * negative errno when that cannot be told. */
int router_master_shard_file(const kvs_config_t *cfg, uint32_t shard, const char *name);
/* Whether a worker of `shard` leaving now has its data moved aside. */
int router_master_retires_data(const master_t *m, uint32_t shard);
/* The change is over: the previous map and snapshot are freed. */
void router_master_change_maybe_done(master_t *m);
/* Every process of the new generation listens: it serves, the old one drains. */
void router_master_change_switch(master_t *m);
/* The reload took a new map: new workers, then a new generation. */
void router_master_change_begin(master_t *m);

/* ---- router_master_children.c: workers, router generations, readiness ---- */

/* The args of a router process (before --generation and --router). */
#define ROUTER_ARGS 10
void router_master_router_args(const master_t *m, int next, const char *args[ROUTER_ARGS],
                               char n_arg[12], char pid_arg[24]);
void router_master_gen_free(rgen_t *g);
/* How many of g's processes run (a pid), or 0 for NULL. */
uint32_t router_master_gen_running(const master_t *m, const rgen_t *g);
/* Sends `sig` to g's processes; how many got it (0 for NULL). */
size_t router_master_gen_signal(rgen_t *g, int sig);
/* Drains g's processes; the generation is freed once all are gone. */
void router_master_gen_stop(rgen_t *g);
/* Starts the workers of the local shards: 0, or a uv error (logged). */
int router_master_start_workers(master_t *m);
/* Starts a generation of router processes: 0 and *out, or a uv error (logged). */
int router_master_start_routers(master_t *m, rgen_t **out, uint32_t gen_base, int config_fd,
                                int next);
/* Is anything but our routers listening on a client port? 0, or 1 + its index. */
int router_master_foreign_listener(master_t *m);

/* ---- router_master.c: shutdown ---- */

/* The one way into the shutdown; later calls only raise the exit code. */
void router_master_shutdown_begin(master_t *m, int exit_code);
/* Every router process is gone: stop the workers. */
void router_master_on_routers_stopped(master_t *m);

#endif

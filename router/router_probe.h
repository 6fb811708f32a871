/*
 * router_probe: waits until some of this node's workers serve, for the
 * master's membership change (router_master_change.c). A worker started for a
 * shard that became local may first copy a peer's snapshot, and answers
 * 503 to everything meanwhile (node_bootstrap); router processes of the
 * new map must not take clients before it serves, or writes to its shard
 * would be refused during the copy, where the old router processes sent
 * them to another replica.
 *
 * One router_link per worker, to its unix socket; every PROBE_EVERY_MS a
 * Ping goes on each link that is up and has not answered 200 yet. Once
 * every worker answered 200, `done` runs (from a timer callback, never
 * inside router_probe_start). There is no deadline of its own: the
 * master's router.ready_timeout bounds the whole change and stops the
 * probe.
 *
 * Threads: the master's loop only.
 */
#ifndef ROUTER_PROBE_H
#define ROUTER_PROBE_H

#include "kvs_config.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct router_probe_s router_probe_t;

typedef void (*router_probe_done_cb)(void *arg);

/* Starts probing the local workers of shards[0..n) (local in cfg's map).
 * Returns 0 and *out, or a uv error (logged; *out may then still be set,
 * to a stopped probe: router_probe_free it later, like any). */
int router_probe_start(uv_loop_t *loop, const kvs_config_t *cfg, const uint32_t *shards, size_t n,
                       router_probe_done_cb done, void *arg, router_probe_t **out);

/* Stops probing (no `done` after this); idempotent, NULL allowed. The
 * probe's memory stays until router_probe_free. */
void router_probe_stop(router_probe_t *p);

/* Stops the probe if it runs, and frees it: now, or once the last of its
 * handles closed (any time is safe, even right after router_probe_stop
 * in the same callback). NULL allowed. */
void router_probe_free(router_probe_t *p);

#endif

/*
 * node_bootstrap: a new replica's first start. When this shard has no
 * environment yet, copy a live peer's (the Snapshot command) instead of
 * replaying the bound topics from their beginning.
 */
#ifndef NODE_BOOTSTRAP_H
#define NODE_BOOTSTRAP_H

#include "kvs_addr.h"
#include "kvs_config.h"
#include "kvs_tls.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Before the store is opened (`tls`: tls.node's server context for the
 * TCP address, as the server will use it, or NULL; *running is the copy
 * while `loop` runs it, else NULL). When <data_dir>/shard-N/ holds no
 * data.mdb, cluster.bootstrap is snapshot and the map names other replicas
 * of the shard, asks them in turn for a snapshot and writes it to
 * data.mdb (verified: its length and XXH3-128), meanwhile answering every
 * request on `addrs` (the worker's own addresses) with 503, so that the
 * router retries elsewhere. Runs `loop` until it is done and leaves no
 * handle open. Returns 0 when the caller may open the store (a snapshot is
 * in place, none was needed, or no peer could send one: the topics are
 * then replayed from their beginning, as for any empty replica),
 * -ECANCELED when node_bootstrap_stop was called meanwhile (exit), or
 * KVS_EDAMAGED with err[0..errlen) said when the shard's move-in marker
 * (node_bootstrap.c, "moving-in") cannot be read: the shard must not start
 * empty, and nothing was done. */
typedef struct node_bootstrap_s node_bootstrap_t;

int node_bootstrap_run(uv_loop_t *loop, const kvs_config_t *cfg, uint32_t shard,
                       const kvs_addr_t *addrs, size_t n_addrs, kvs_tls_ctx_t *tls,
                       node_bootstrap_t **running, char *err, size_t errlen);

/* SIGTERM or SIGINT came while the copy in *running runs: it stops
 * (node_bootstrap_run returns -ECANCELED). The caller's signal handles
 * are the worker's for its whole life: a handle stopped between the copy
 * and the server would drop a signal libuv had caught but not dispatched
 * (seen: a worker whose router was killed -9 as its copy ended never
 * took the SIGTERM its parent's death sent, and lived on). */
void node_bootstrap_stop(node_bootstrap_t *b);

#endif

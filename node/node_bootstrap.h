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
 * TCP address, as the server will use it, or NULL). When <data_dir>/shard-N/ holds no
 * data.mdb, cluster.bootstrap is snapshot and the map names other replicas
 * of the shard, asks them in turn for a snapshot and writes it to
 * data.mdb (verified: its length and XXH3-128), meanwhile answering every
 * request on `addrs` (the worker's own addresses) with 503, so that the
 * router retries elsewhere. Runs `loop` until it is done and leaves no
 * handle open. Returns 0 when the caller may open the store (a snapshot is
 * in place, none was needed, or no peer could send one: the topics are
 * then replayed from their beginning, as for any empty replica), or
 * -ECANCELED when SIGTERM/SIGINT arrived meanwhile (exit). */
int node_bootstrap_run(uv_loop_t *loop, const kvs_config_t *cfg, uint32_t shard,
                       const kvs_addr_t *addrs, size_t n_addrs, kvs_tls_ctx_t *tls);

#endif

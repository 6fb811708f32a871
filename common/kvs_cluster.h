/*
 * kvs_cluster: where the copies of a shard are. The one place that turns
 * the config's cluster map into addresses, so the router (its links), a
 * worker (the peers it may copy a snapshot from) and kvs-cli (the replicas
 * it asks for a digest) agree.
 *
 * Two forms of the map (kvs_config.h):
 *  - cluster.nodes: every node named with the shards it serves and its
 *    workers' base TCP address; shard N of node X listens on X's PORT+N.
 *    The replicas of a shard are the nodes serving it, in file order, so
 *    every router with the same map sees the same list.
 *  - cluster.remote (one copy per shard): a shard named there is served at
 *    that address, any other by this node.
 * A replica this node serves itself is reached over its unix socket
 * (<data_dir>/shard-N.sock), every other over TCP.
 *
 * Pure functions of the config: no I/O, no state.
 */
#ifndef KVS_CLUSTER_H
#define KVS_CLUSTER_H

#include "kvs_addr.h"
#include "kvs_config.h"

#include <stddef.h>
#include <stdint.h>

typedef struct kvs_replica_s {
    const char *node; /* its node's name; "" for a cluster.remote entry or without a map */
    int local;        /* served by this node's own worker */
    kvs_addr_t addr;  /* where to connect: the unix socket when local, TCP otherwise */
} kvs_replica_t;

/* Fills out[0..cap) with the replicas of `shard`, in map order, and
 * returns how many there are (at most KVS_MAX_REPLICAS; more than cap are
 * counted, not written). Returns KVS_EINVAL with err set when an address
 * cannot be derived (a validated config never does that). */
int kvs_cluster_replicas(const kvs_config_t *cfg, uint32_t shard, kvs_replica_t *out, size_t cap,
                         char *err, size_t errlen);

/* Where this node's own worker of `shard` listens (its unix socket).
 * Returns 0, or KVS_EINVAL when this node does not serve `shard`. */
int kvs_cluster_local_addr(const kvs_config_t *cfg, uint32_t shard, kvs_addr_t *out);

/* The TCP address of `node`'s worker for `shard`: its address with the
 * port raised by the shard id. Returns 0 or KVS_EINVAL. */
int kvs_cluster_node_addr(const kvs_node_t *node, uint32_t shard, kvs_addr_t *out);

#endif

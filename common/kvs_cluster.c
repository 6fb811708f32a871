/*
 * kvs_cluster: the cluster map as addresses (see kvs_cluster.h). Ports are
 * derived as the workers bind them (node_main: node.listen, or the node's
 * map address, plus the shard id); kvs_config checked at load that every
 * derived port exists, so the errors here are for configs built by hand.
 */
#include "kvs_cluster.h"
#include "kvs_err.h"

#include <stdio.h>
#include <string.h>

int kvs_cluster_node_addr(const kvs_node_t *node, uint32_t shard, kvs_addr_t *out)
{
    if (kvs_addr_parse(node->address, 0, out, NULL, 0) != 0 || out->is_unix ||
        (uint32_t)out->port + shard > 65535)
        return KVS_EINVAL;
    out->port = (uint16_t)(out->port + shard);
    return 0;
}

static int local_addr(const kvs_config_t *cfg, uint32_t shard, kvs_addr_t *out, char *err,
                      size_t errlen)
{
    char text[4200];
    snprintf(text, sizeof(text), "unix:%s/shard-%u.sock", cfg->data_dir, shard);
    return kvs_addr_parse(text, 0, out, err, errlen);
}

/* The cluster.remote form: one replica, here or at its address. */
static int legacy_replica(const kvs_config_t *cfg, uint32_t shard, kvs_replica_t *out, size_t cap,
                          char *err, size_t errlen)
{
    const kvs_remote_t *rem = kvs_config_remote(cfg, shard);
    if (cap == 0)
        return 1;
    out->node = "";
    out->local = rem == NULL;
    int rc = rem == NULL ? local_addr(cfg, shard, &out->addr, err, errlen)
                         : kvs_addr_parse(rem->address, 0, &out->addr, err, errlen);
    return rc != 0 ? KVS_EINVAL : 1;
}

int kvs_cluster_replicas(const kvs_config_t *cfg, uint32_t shard, kvs_replica_t *out, size_t cap,
                         char *err, size_t errlen)
{
    if (cfg->n_nodes == 0)
        return legacy_replica(cfg, shard, out, cap, err, errlen);
    int n = 0;
    for (size_t i = 0; i < cfg->n_nodes && n < KVS_MAX_REPLICAS; i++) {
        const kvs_node_t *node = &cfg->nodes[i];
        if (!kvs_node_serves(node, shard))
            continue;
        if ((size_t)n < cap) {
            kvs_replica_t *r = &out[n];
            r->node = node->name;
            r->local = node == cfg->self;
            int rc = r->local ? local_addr(cfg, shard, &r->addr, err, errlen)
                              : kvs_cluster_node_addr(node, shard, &r->addr);
            if (rc != 0) {
                if (!r->local && err != NULL && errlen > 0)
                    snprintf(err, errlen, "node %s: address %s cannot serve shard %u", node->name,
                             node->address, shard);
                return KVS_EINVAL;
            }
        }
        n++;
    }
    return n;
}

int kvs_cluster_local_addr(const kvs_config_t *cfg, uint32_t shard, kvs_addr_t *out)
{
    kvs_replica_t reps[KVS_MAX_REPLICAS];
    int n = kvs_cluster_replicas(cfg, shard, reps, KVS_MAX_REPLICAS, NULL, 0);
    for (int i = 0; i < n && i < KVS_MAX_REPLICAS; i++) {
        if (reps[i].local) {
            *out = reps[i].addr;
            return 0;
        }
    }
    return KVS_EINVAL;
}

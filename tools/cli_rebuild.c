/*
 * cli_rebuild: Rebuild {table} to every replica (see cli_rebuild.h).
 *
 * Each replica is one copy of one shard with its own LMDB environment and
 * its own stored offsets, so each is asked on its own (a worker command:
 * the router refuses it), through cli_ask. A replica that cannot be reached
 * is reported and the others are still asked: running the command again
 * is harmless (it starts that copy over once more). A node that let a
 * question time out is not asked again in the same command (cli_walk_ask).
 */
#include "cli_rebuild.h"
#include "cli_ask.h"
#include "cli_text.h"
#include "kvs_cluster.h"

#include <stdio.h>
#include <string.h>

/* One replica: returns 0 when it rebuilt. */
static int rebuild_one(cli_walk_t *w, const kvs_replica_t *rep, kvs_tls_ctx_t *tls, uint32_t shard,
                       const char *table, double timeout)
{
    char why[500];
    const char *name = rep->node[0] ? rep->node : "(this node)";
    Kvs__Rebuild m = KVS__REBUILD__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    m.table = (char *)table;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_REBUILD;
    q.rebuild = &m;
    Kvs__CommandResponse *r = cli_walk_ask(w, rep, tls, &q, timeout, 0, why, sizeof(why), NULL);
    int ok = r != NULL && r->status == 200;
    if (ok)
        printf("shard %u %s: ", shard, name);
    else if (r != NULL)
        fprintf(stderr, "kvs-cli: shard %u %s: %u ", shard, name, r->status);
    else
        fprintf(stderr, "kvs-cli: shard %u %s: ", shard, name);
    cli_text_put(ok ? stdout : stderr, r != NULL ? r->message : why);
    putc('\n', ok ? stdout : stderr);
    if (r != NULL)
        kvs__command_response__free_unpacked(r, NULL);
    return ok ? 0 : 1;
}

int cli_rebuild_run(const kvs_config_t *cfg, kvs_tls_ctx_t *tls, const char *table,
                    const kvs_node_t *only, double timeout)
{
    int rc = 0;
    cli_walk_t walk = {0};
    for (uint32_t s = 0; s < cfg->shards; s++) {
        if (only != NULL && !kvs_node_serves(only, s))
            continue;
        kvs_replica_t reps[KVS_MAX_REPLICAS];
        int n = kvs_cluster_replicas(cfg, s, reps, KVS_MAX_REPLICAS, NULL, 0);
        cli_replicas_reach(cfg, s, reps, n);
        if (n <= 0) {
            fprintf(stderr, "kvs-cli: shard %u: no replica address\n", s);
            rc = 1;
        }
        for (int i = 0; i < n; i++)
            if (only == NULL || strcmp(reps[i].node, only->name) == 0)
                rc |= rebuild_one(&walk, &reps[i], tls, s, table, timeout);
    }
    cli_walk_free(&walk);
    return rc;
}

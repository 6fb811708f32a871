/*
 * cli_rebuild: `kvs-cli --config FILE rebuild TABLE [--node NAME]`: sends
 * Rebuild {TABLE} to every replica of every shard (or of the shards node
 * NAME serves), so each copy empties the bound table and reads its topic
 * again from the start (README, "When a topic's log diverges").
 */
#ifndef CLI_REBUILD_H
#define CLI_REBUILD_H

#include "kvs_config.h"
#include "kvs_tls.h"

/* Asks every replica in turn (only node `only`'s copies when it is not
 * NULL); prints one line per replica to stdout (failures to stderr).
 * `timeout` (seconds, > 0) bounds each request. Replicas over TCP are
 * asked over TLS with `tls` when it is not NULL. Returns 0 when every
 * replica rebuilt, 1 when some did not. */
int cli_rebuild_run(const kvs_config_t *cfg, kvs_tls_ctx_t *tls, const char *table,
                    const kvs_node_t *only, double timeout);

#endif

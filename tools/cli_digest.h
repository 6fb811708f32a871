/*
 * cli_digest: `kvs-cli --config FILE digest TABLE [--node NAME]`: asks
 * every replica of every shard (or of the shards node NAME serves) for the
 * Digest of TABLE and compares the replicas of each shard at one position.
 */
#ifndef CLI_DIGEST_H
#define CLI_DIGEST_H

#include "kvs_config.h"
#include "kvs_msg.h"
#include "kvs_tls.h"

/* Whether `r` is a Digest answer: 200, values [digest, keys]. Each
 * value's kind is checked before its member is read: the members share a
 * union, so an integer 16 would read as a 16-byte binary_value whose data
 * pointer is NULL. */
int cli_digest_is_answer(const Kvs__CommandResponse *r);

/* Runs the comparison; prints one line per shard to stdout (problems to
 * stderr). `only`: the node whose shards are compared, NULL for every
 * shard. `timeout` (seconds, > 0) bounds each request and how long
 * replicas may take to reach the same position. Replicas over TCP are
 * asked over TLS with `tls` when it is not NULL (their workers' tls.node).
 * Returns 0 when every shard's replicas agree, 1 when some differ or could
 * not be compared. */
int cli_digest_run(const kvs_config_t *cfg, kvs_tls_ctx_t *tls, const char *table,
                   const kvs_node_t *only, double timeout, int raw);

#endif

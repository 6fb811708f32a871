/*
 * node_digest: the Digest command (kvs.proto): a digest of one table on
 * this copy of the shard, and the position it reflects, so replicas can be
 * compared (kvs-cli digest).
 */
#ifndef NODE_DIGEST_H
#define NODE_DIGEST_H

#include "kvs_buf.h"
#include "kvs_config.h"
#include "kvs_msg.h"
#include "node_slot.h"
#include "node_store.h"

#include <uv.h>

typedef struct node_digest_s node_digest_t;

/* Returns NULL when out of memory. */
node_digest_t *node_digest_new(uv_loop_t *loop, node_store_t *store, const kvs_config_t *cfg,
                               uint32_t shard);

/* Runs a validated Digest request: appends an error answer to `out` at
 * once (another digest is running; the table is being created; no way to
 * wait), or takes a slot through `defer` and answers from a thread's
 * result. Returns 0 or -ENOMEM. */
int node_digest_request(node_digest_t *d, const Kvs__CommandRequest *req, node_defer_fn defer,
                        void *defer_arg, kvs_buf_t *out);

/* Shutdown: a digest still running stops early and is answered 503. */
void node_digest_stop(node_digest_t *d);

/* After the loop ran (no digest in flight then). NULL is allowed. */
void node_digest_free(node_digest_t *d);

#endif

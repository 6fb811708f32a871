/*
 * node_cmd: executes kvs commands against a node_store. One table maps each
 * command of the CommandRequest oneof to its handler; every handler appends
 * exactly one response frame, so responses stay in request order.
 */
#ifndef NODE_CMD_H
#define NODE_CMD_H

#include "kvs_buf.h"
#include "kvs_hook.h"
#include "kvs_metrics.h"
#include "kvs_msg.h"
#include "kvs_slowlog.h"
#include "node_ingest.h"
#include "node_store.h"

#include <stddef.h>
#include <stdint.h>

#define NODE_SCAN_DEFAULT 100
#define NODE_SCAN_MAX 10000

typedef struct node_cmd_ctx_s {
    node_store_t *store;
    size_t max_frame;    /* largest response allowed */
    uint32_t max_tables; /* for the message when the limit is hit */
    uint32_t shard;
    node_ingest_t *ingest; /* NULL when Kafka is off */
    kvs_arena_t arena;     /* per-request scratch; reset by node_cmd_frame */
    /* Operations (all optional). With `hooks`, node_cmd_frame runs the
     * RECEIVED and EXECUTED events of every request, filling `info` (the
     * caller sets its peer, identity and conn_id beforehand, and may set
     * received_ns, else it is now; it is 0 again afterwards); `slowlog`
     * answers Slowlog; `metrics` adds the process's families for Metrics. */
    const kvs_hook_chain_t *hooks;
    kvs_request_info_t info;
    kvs_slowlog_t *slowlog;
    void (*metrics)(void *arg, kvs_mb_t *b);
    void *metrics_arg;
} node_cmd_ctx_t;

/* Decodes, validates and executes the request in `payload`, appending one
 * response frame to `out`. Bad input yields a 400 response and changes
 * nothing. With ctx->hooks, a RECEIVED hook may stop a valid request (it
 * is answered with the hook's status, not executed) and an EXECUTED hook
 * may replace its answer; ctx->info then describes the request, its status
 * and times. Returns 0, or -ENOMEM when not even an error response fits
 * (the connection should then be closed). */
int node_cmd_frame(node_cmd_ctx_t *ctx, const uint8_t *payload, size_t len, kvs_buf_t *out);

/* Executes a decoded, validated request (same contract). */
int node_cmd_execute(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_buf_t *out);

#endif

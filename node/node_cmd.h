/*
 * node_cmd: executes kvs commands against a node_store. One table maps each
 * command of the CommandRequest oneof to its handler; every handler appends
 * exactly one response frame, so responses stay in request order.
 */
#ifndef NODE_CMD_H
#define NODE_CMD_H

#include "kvs_auth.h"
#include "kvs_buf.h"
#include "kvs_config.h"
#include "kvs_hook.h"
#include "kvs_metrics.h"
#include "kvs_msg.h"
#include "kvs_reads.h"
#include "node_digest.h"
#include "node_handoff.h"
#include "kvs_slowlog.h"
#include "node_ingest.h"
#include "node_reads.h"
#include "node_slot.h"
#include "node_store.h"
#include "node_writes.h"

#include <stddef.h>
#include <stdint.h>

#define NODE_SCAN_DEFAULT KVS_SCAN_DEFAULT /* kvs_reads answers Hscan */
#define NODE_SCAN_MAX KVS_SCAN_MAX
/* An Auth request (validated): append its answer to `out`, or take a slot
 * (ctx->defer) and answer through it later; return 0, or -ENOMEM. */
typedef int (*node_cmd_auth_fn)(void *arg, const Kvs__Auth *m, kvs_buf_t *out);

typedef struct node_cmd_ctx_s {
    node_store_t *store;
    size_t max_frame;    /* largest response allowed */
    uint32_t max_tables; /* for the message when the limit is hit */
    uint32_t max_keys;   /* limits.max_keys; 0 = no limit */
    uint32_t shard;
    node_ingest_t *ingest;    /* NULL when Kafka is off */
    kvs_arena_t arena;        /* per-request scratch; reset by node_cmd_frame */
    kvs_auth_conn_t *who;     /* the requester's identity when users are configured, else NULL */
    node_cmd_auth_fn on_auth; /* NULL: no users, Auth is answered 400 */
    void *auth_arg;
    /* Tables bound to Kafka topics (all NULL/0 when the config binds none,
     * or in unit tests: then every table is served directly). */
    const kvs_config_t *cfg; /* the bindings */
    node_reads_t *reads;     /* freshness rules for their reads */
    node_writes_t *writes;   /* their writes, log-first; NULL: Kafka is off */
    node_defer_fn defer;     /* a request's answer comes later (node_slot.h) */
    node_wanted_fn wanted;   /* NULL, or whether its sender still waits (node_slot.h) */
    void *defer_arg;         /* both's */
    int ungated;             /* executing a read node_reads let through: no second check */
    /* The shard has several replicas (cluster.nodes): writes to tables
     * bound to no topic are refused, as they would reach this copy only. */
    uint32_t replicas;
    /* The shard's snapshot went to another node (node_handoff): writes to
     * tables bound to no topic are refused with 503 (NULL: none). */
    node_handoff_t *handoff;
    node_digest_t *digest; /* the Digest command (NULL: not available) */
    /* The Snapshot command: hands the connection that asked over to the
     * snapshot sender (NULL: not available). Returns 0 when it took it, or
     * appends an error answer to `out`. */
    int (*snapshot)(void *arg, const Kvs__Snapshot *req, kvs_buf_t *out);
    void *snapshot_arg;
    /* Operations (all optional). With `hooks`, node_cmd_frame runs the
     * RECEIVED and EXECUTED events of every request, filling `info` (the
     * caller sets its peer, identity and conn_id, and received_ns, 0
     * meaning now, before each frame); info.table stays readable until
     * the next frame (a decoded request's name is copied to table_copy,
     * a peeked one's points into the payload). A request whose answer comes later
     * (a slot) leaves `info` as it was at RECEIVED, for the caller to keep
     * and to run EXECUTED with node_cmd_executed when the answer is known.
     * `slowlog` answers Slowlog; `metrics` adds the process's families for
     * Metrics. */
    const kvs_hook_chain_t *hooks;
    kvs_request_info_t info;
    char table_copy[KVS_MAX_TABLE + 1]; /* info.table of a decoded request */
    kvs_slowlog_t *slowlog;
    void (*metrics)(void *arg, kvs_mb_t *b);
    void *metrics_arg;
} node_cmd_ctx_t;

/* Decodes, validates and executes the request in `payload`, appending one
 * response frame to `out`. Bad input yields a 400 response and changes
 * nothing; with ctx->who set, a request its user may not make gets 401 or
 * 403 and changes nothing. With ctx->hooks, a RECEIVED hook may stop a
 * valid, allowed request (it is answered with the hook's status, not
 * executed) and an EXECUTED hook may replace its answer; ctx->info then
 * describes the request, its status and times. Returns 0 (the answer
 * appended, or to come through a slot: see node_slot.h), or -ENOMEM when
 * not even an error response fits (the connection should then be closed). */
int node_cmd_frame(node_cmd_ctx_t *ctx, const uint8_t *payload, size_t len, kvs_buf_t *out);

/* Executes a decoded, validated request (same contract), as if no table
 * were bound. */
int node_cmd_execute(node_cmd_ctx_t *ctx, const Kvs__CommandRequest *req, kvs_buf_t *out);

/* node_cmd_frame without the freshness checks of bound tables' reads (for
 * node_reads, once a read may be served), and without hooks (the request
 * had its RECEIVED when it arrived). Same contract. */
int node_cmd_frame_ungated(node_cmd_ctx_t *ctx, const uint8_t *payload, size_t len, kvs_buf_t *out);

/* EXECUTED for a request described by `in` whose answer is the frame at
 * out[start..): sets in->status and in->now_ns and runs the hooks; one
 * that stops the request replaces the answer with its status and message.
 * Returns 0, or -ENOMEM when the replacement does not fit. */
int node_cmd_executed(const kvs_hook_chain_t *hooks, kvs_request_info_t *in, kvs_buf_t *out,
                      size_t start);

#endif

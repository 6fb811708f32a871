/*
 * node_snapshot: the Snapshot command's sender: streams a compacted hot
 * copy of the shard's environment to a new replica over the connection
 * that asked (kvs.proto has the stream's format).
 */
#ifndef NODE_SNAPSHOT_H
#define NODE_SNAPSHOT_H

#include "kvs_buf.h"
#include "kvs_conn.h"
#include "node_store.h"

#include <uv.h>

typedef struct node_snapshot_s node_snapshot_t;

/* In the 503 answer to a Snapshot while another is being sent: a peer
 * that has the data and will send it later (node_bootstrap asks again). */
#define NODE_SNAPSHOT_BUSY "is already sending a snapshot"

/* `max_frame`: limits.max_frame (chunks stay below it); `stall_ms`: a
 * receiver that takes nothing for this long is given up (0: never).
 * Returns NULL when out of memory. */
node_snapshot_t *node_snapshot_new(uv_loop_t *loop, node_store_t *store, uint32_t shard,
                                   size_t max_frame, uint64_t stall_ms);

/* Starts streaming to `conn`, which from now on serves nothing else: the
 * caller pauses its delivery and tells node_snapshot_gone when it closes.
 * `keep`: the receiver acknowledges the copy (kvs.proto,
 * Snapshot.installed), so a stream that ends well leaves the connection
 * open, handed back through the done callback. Returns 0, or appends an
 * error answer to `out` (a snapshot is already being sent: one at a time)
 * and returns 1, or a negative error. */
int node_snapshot_start(node_snapshot_t *sn, kvs_conn_t *conn, int keep, kvs_buf_t *out);

/* The end of a loop turn, after its commit (node_server's flusher): a
 * snapshot started in the turn begins its copy now, so the copy holds
 * every write the turn acknowledges. */
void node_snapshot_turn_end(node_snapshot_t *sn);

/* The connection given to node_snapshot_start is closing: stop sending
 * (the copy thread is told through its pipe and ends). */
void node_snapshot_gone(node_snapshot_t *sn, kvs_conn_t *conn);

/* Told when each snapshot ends: `delivered` is the checksum its final
 * frame carried (XXH3-128, KVS_HASH_LEN bytes) once that frame went on
 * the receiver's connection, NULL when the receiver cannot have a copy
 * (it left first, or the copy failed).
 * `kept`: for a delivered snapshot started with `keep`, the receiver's
 * connection, left open (the callee owns it from now on: the stream no
 * longer knows it); else NULL, and the stream closes it. */
typedef void (*node_snapshot_done_cb)(void *arg, kvs_conn_t *kept, const uint8_t *delivered);
void node_snapshot_set_done(node_snapshot_t *sn, node_snapshot_done_cb cb, void *arg);

/* True while a snapshot is being sent (the copy thread runs). */
int node_snapshot_busy(const node_snapshot_t *sn);

/* After the loop ran (no snapshot in flight then). NULL is allowed. */
void node_snapshot_free(node_snapshot_t *sn);

#endif

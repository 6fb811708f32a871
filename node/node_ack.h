/*
 * node_ack: a copy's acknowledgement, owed until its sender heard it.
 *
 * A node that installs a snapshot copy says so on the stream's connection
 * (kvs.proto, Snapshot.installed); a sender holding the shard alone then
 * records it as holding a copy (node_handoff), which a reload taking the
 * shard from the sender's node needs. That one frame is lost when the
 * sender's worker restarts, or the connection fails, before it is read:
 * the move would then stay refused on the sender's node for good. So
 * before a copy is put in place, node_bootstrap writes
 * <shard_dir>/ack-owed (node_ack_owe), and once the worker serves it sends
 * the acknowledgement again on a connection of its own (node_ack_start)
 * until the sender answers:
 *
 *  - 200 (recorded now, or before) or any 4xx ends it, and the file is
 *    removed: 404 says the sender has nothing to record (no fence stands
 *    there, as when the shard has other replicas, or the copy was
 *    another fence's), 400 is an older kvs that takes the
 *    acknowledgement on the stream only;
 *  - a failure to resolve or connect, a 5xx, 401 or 403 (the sender's
 *    users or certificates may be mended), or no answer within
 *    ATTEMPT_MS (10 s) is tried again after a pause that starts at 1 s and
 *    doubles up to 60 s, for as long as the worker runs, and at its next
 *    start.
 *
 * The connection is the snapshot request's: the sender's worker address
 * the copy came from, with tls.link's certificate when tls.link is on. The
 * file says "to NODE PORT HOST" and "installed HEX" (the copy's XXH3-128):
 * the sender takes it only for a copy it recorded as sent to that node
 * with that checksum under the fence that still stands.
 */
#ifndef NODE_ACK_H
#define NODE_ACK_H

#include "kvs_cluster.h"
#include "kvs_config.h"
#include "kvs_buf.h"
#include "kvs_hash.h"

#include <stdint.h>
#include <uv.h>

#define NODE_ACK_FILE "ack-owed"

typedef struct node_ack_s node_ack_t;

/* Records, synced, that the copy of `shard` ending with `digest` came
 * from `peer`: before the copy is put in place (a stop in between leaves
 * no copy, and node_ack_void). Returns 0 or a negative errno. */
int node_ack_owe(const char *shard_dir, uint32_t shard, const kvs_replica_t *peer,
                 const uint8_t digest[KVS_HASH_LEN]);

/* The shard has no copy in place (it copies again, or starts empty): an
 * acknowledgement owed for an earlier copy is void, and removed. */
void node_ack_void(const char *shard_dir);

/* Parses the line "<key> NODE PORT HOST" (HOST numeric or a name, an IPv6
 * address without brackets) into *p, whose node is set to `name`: 1, or 0
 * when it is not one. node_bootstrap's moving-in marker has such lines. */
int node_ack_peer_line(const char *line, const char *key, kvs_replica_t *p,
                       char name[KVS_NODE_NAME_MAX + 1]);

/* Appends a Snapshot request from node `node` to `out`: the request for
 * a copy (installed NULL), or the acknowledgement that the copy ending
 * with `installed` is in place. Returns 0 or -ENOMEM. */
int node_ack_append_snapshot(kvs_buf_t *out, const char *node, const uint8_t *installed);

/* Sends the acknowledgement <data_dir>/shard-N owes, if any, from now on
 * (see above): *out is NULL when it owes none, or the node has no name.
 * Returns 0, or -ENOMEM. */
int node_ack_start(uv_loop_t *loop, const kvs_config_t *cfg, uint32_t shard, node_ack_t **out);

/* The deadline of the attempts started from now on (10 s; the unit
 * tests' shorter clock). */
void node_ack_set_attempt_ms(uint32_t ms);

/* Stops sending: closes its handles (the loop can end); NULL is a no-op. */
void node_ack_stop(node_ack_t *a);

/* Frees `a` once the loop has returned (after node_ack_stop). */
void node_ack_free(node_ack_t *a);

#endif

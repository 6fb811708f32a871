/*
 * node_handoff: a shard whose snapshot was sent to another node takes no
 * more writes to tables bound to no topic.
 *
 * A table bound to a topic is its topic: a copy of the shard replays what
 * it missed. A table bound to none lives only in the LMDB environments
 * that took its writes, so once a peer copied this shard (a new replica,
 * or the shard moving wholly to another node), a write this copy takes
 * reaches this copy only: when the shard then leaves this node the write
 * is retired with it, although it was acknowledged. So from the snapshot
 * on ("the fence") such writes are refused here with 503 (nothing
 * written; the client sends it again, and once this node's map moves the
 * shard its router sends it to the new owner).
 *
 * The fence is kept in <shard_dir>/copied-out (written and synced before
 * the copy starts), so a restarted worker keeps it. It lifts when this
 * worker takes a map (at start or reload) in which the shard's replicas
 * are not those it had when the snapshot was sent, and this node is one
 * of them: the map moved on (with several replicas, such writes are
 * refused anyway, node_cmd). A map that no longer gives the shard to this
 * node keeps it: the worker is about to stop, and the writes its last
 * requests carry must not land in a directory that retires. When the
 * move the snapshot was for is abandoned, the map stays as it was: the
 * operator removes the file and reloads (README, "Moving a shard"); a
 * reload that finds the file gone lifts the fence whatever the map.
 */
#ifndef NODE_HANDOFF_H
#define NODE_HANDOFF_H

#include "kvs_config.h"

#include <stdint.h>

typedef struct node_handoff_s node_handoff_t;

/* Reads <shard_dir>/copied-out if it exists and applies `cfg`
 * (node_handoff_update). A file that cannot be read or understood keeps
 * the fence up (logged): refusing writes is the safe side. Returns 0 and
 * *out, or -ENOMEM. */
int node_handoff_open(const char *shard_dir, uint32_t shard, const kvs_config_t *cfg,
                      node_handoff_t **out);

/* A snapshot is about to be sent to `peer`: writes the file (synced, as
 * is its directory) and raises the fence. Returns 0, or a negative errno
 * (logged; the fence is up in memory all the same, and the caller must
 * not send the snapshot). */
int node_handoff_fence(node_handoff_t *h, const char *peer, const kvs_config_t *cfg);

/* The worker took `cfg` (a reload): lifts the fence if the map moved on,
 * or if the file was removed (see above). */
void node_handoff_update(node_handoff_t *h, const kvs_config_t *cfg);

/* NULL when writes are taken; else why not, for the refusal's message. */
const char *node_handoff_why(const node_handoff_t *h);

void node_handoff_free(node_handoff_t *h);

#endif

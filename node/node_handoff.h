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
 * The fence is raised only while the shard has one replica in this
 * worker's map (with several, node_cmd refuses such writes anyway) and
 * is kept in <shard_dir>/copied-out (written and synced before the copy
 * starts; kvs_copied has its format), so a restarted worker keeps it. The
 * file also names each node of the map that acknowledged it installed a
 * copy taken under the fence: the master gives the shard away only to
 * one of those. It lifts:
 *   - when the snapshot it was raised for is not delivered (the receiver
 *     left, or the copy failed: node_handoff_unfence), since no copy
 *     exists then;
 *   - when this worker takes a map (a reload, or a start) that gives the
 *     shard several replicas, this node one of them and none of the nodes
 *     the file names: node_cmd's refusal takes over, and once the map is
 *     down to this node alone again the other copy is out of use (a node
 *     named installed a copy from here and may have held the shard alone
 *     since, taking writes this copy lacks: the fence stays);
 *   - when the file is gone at a reload (the operator's way out, for a
 *     move that was abandoned: README, "Moving a shard").
 * A map that takes the shard from this node keeps it: the worker is about
 * to stop, and the writes its last requests carry must not land in a
 * directory that retires.
 *
 * The fence covers a shard held alone. A shard held by several nodes in
 * one node's map may be held by fewer in another's (maps are reloaded
 * node by node), so the map alone cannot say whether another node's copy
 * holds this one's rows. <shard_dir>/unbound-rows (kvs_copied's form)
 * says: it exists while this directory may hold rows of unbound tables
 * that no other copy holds, written (synced) before the first such write
 * this worker takes, and at a start that finds rows of unbound tables in
 * the shard (a copy installed from another node's, or a directory older
 * than the file; a start that finds none removes it). Its node lines
 * name the nodes that acknowledged a copy taken since the last such
 * write: a copy is taken only while this worker takes no such writes
 * (fenced, or a map of several replicas), and recorded only if none was
 * taken since (node_handoff_mark); the next write empties the list
 * first, as does the start of a time when such writes are taken (this
 * node alone, unfenced: the copies named are of a move abandoned, or of
 * nodes withdrawn). A node that a map withdraws from the shard is
 * dropped from both files by the master as it takes that map
 * (kvs_copied_drop; each change here is made under the directory's lock,
 * kvs_copied_lock). The master gives the shard up only to a node named
 * there or in copied-out, whatever its map says of other holders.
 */
#ifndef NODE_HANDOFF_H
#define NODE_HANDOFF_H

#include "kvs_config.h"
#include "kvs_hash.h"

#include <stdint.h>

typedef struct node_handoff_s node_handoff_t;

/* Reads <shard_dir>/copied-out if it exists and applies `cfg`
 * (node_handoff_update). A file that cannot be read or understood keeps
 * the fence up (logged): refusing writes is the safe side. `unbound`: how
 * many tables bound to no topic hold rows (node_store_unbound_at_open);
 * unbound-rows is written if there are some and it is missing, removed
 * if there are none. Returns 0 and *out, or -ENOMEM. */
int node_handoff_open(const char *shard_dir, uint32_t shard, const kvs_config_t *cfg,
                      uint32_t unbound, node_handoff_t **out);

/* A snapshot is about to be sent to `peer`. With one replica in `cfg`,
 * writes the file (synced, as is its directory) and raises the fence;
 * *raised says whether this call raised it (0: it was up already, or the
 * map has several replicas). Returns 0, or a negative errno (logged; a
 * file this call wrote is removed, the fence stays as it was, and the
 * caller must not send the snapshot). */
int node_handoff_fence(node_handoff_t *h, const char *peer, const kvs_config_t *cfg, int *raised);

/* When a copy was taken: `fence` changes whenever the fence is raised or
 * lifted (a copy taken at fence F holds every unbound row this shard
 * acknowledged only while the fence is still F); `writes` changes
 * whenever writes to unbound tables begin to be taken (a copy taken while
 * none were, at W, holds every such row while it is still W). */
typedef struct {
    uint64_t fence, writes;
    uint64_t withdrawals; /* the master's count when the copy was taken (kvs_copied.h: holders):
                             a map that withdrew nodes since may have withdrawn its receiver */
} node_handoff_mark_t;

node_handoff_mark_t node_handoff_mark(const node_handoff_t *h);

/* A write to a table bound to no topic is about to be taken (the shard is
 * this node's alone, unfenced): makes sure unbound-rows exists and names
 * no node (synced), writing it only while the master's holders file
 * gives the shard to this node alone. Cheap once it does: one fstat(2) per
 * write batch `batch` (node_store_batch_gen; 0, no batch open: each
 * time) sees whether it was removed or replaced since. Returns 0,
 * -EAGAIN (the map the master takes gives the shard to others), or
 * another negative errno (logged once until it succeeds): the write must
 * be refused. NULL: 0. */
int node_handoff_writing(node_handoff_t *h, uint64_t batch);

/* Node `node` of the map acknowledged that it installed a copy taken at
 * `mark` (synced, in place: kvs.proto's Snapshot.installed). While that
 * fence stands, adds "node NAME" to copied-out, once (synced): a reload
 * of this node may then give the shard to that node alone. While no write
 * to an unbound table was taken since the copy, adds it to unbound-rows
 * too. Nothing when neither holds or the name is not a node name.
 * Returns 0, or a negative errno (logged: the node is not recorded in
 * copied-out, and such a reload stays refused). */
int node_handoff_copied(node_handoff_t *h, const char *node, node_handoff_mark_t mark);

/* A copy taken at `mark` was sent whole to node `node`, ending with
 * checksum `digest`. While that fence stands, adds "sent NAME HEX" to the
 * file (synced), so that the node's acknowledgement is still taken if it
 * comes later on another connection (node_handoff_reack): after this
 * worker restarted, or the stream's connection failed. Returns 0 (also
 * when nothing is written: another fence's copy, or no node name), or a
 * negative errno (logged). */
int node_handoff_sent(node_handoff_t *h, const char *node, const uint8_t digest[KVS_HASH_LEN],
                      node_handoff_mark_t mark);

/* Node `node` says again, on a connection of its own, that it installed
 * the copy ending with `digest`. Returns 0 once the file records the node
 * (now or before; unbound-rows too, as no write was taken under the
 * fence), -ENOENT when the standing fence sent it no such copy
 * (no fence, another fence's copy, or no copy at all: nothing to record),
 * or another negative errno (logged). */
int node_handoff_reack(node_handoff_t *h, const char *node, const uint8_t digest[KVS_HASH_LEN]);

/* The snapshot a node_handoff_fence call raised the fence for was not
 * delivered: lowers it again. */
void node_handoff_unfence(node_handoff_t *h);

/* The worker took `cfg` (a reload): lifts the fence if the map gives the
 * shard several replicas, none of them a node the file names, or if the
 * file was removed (see above). */
void node_handoff_update(node_handoff_t *h, const kvs_config_t *cfg);

/* NULL when writes are taken; else why not, for the refusal's message. */
const char *node_handoff_why(const node_handoff_t *h);

void node_handoff_free(node_handoff_t *h);

#endif

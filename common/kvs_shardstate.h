/*
 * kvs_shardstate: a worker's state page, <data_dir>/shard-N.state
 * (kvs_schema_state_path). What a router reading the shard's environment
 * itself (router_local) must know from the worker beyond what LMDB holds:
 *
 *  - live: the worker serves from the environment the page names. Cleared
 *    first thing when a worker starts (before it may replace, copy in or
 *    recreate its files) and when it stops; set once it has them open.
 *  - ident: the files (data.mdb, lock.mdb by device and inode) of that
 *    environment. Kept when `live` is cleared, so the next worker can tell
 *    that data.mdb was replaced meanwhile (node_store's reset_lock), and a
 *    router that the environment it has open is no longer the worker's.
 *  - Kafka: for every partition the shard owns of every bound topic, the
 *    end offset as the worker knows it and where ingestion starts a
 *    partition with no stored offset (-1: not known); until when, after
 *    the worker started, an unknown end means "settling" (kvs_fresh); and a
 *    heartbeat, so a router does not trust the end offsets of a worker that
 *    stopped ticking; and whether the partition diverged from the topic
 *    (kvs_fresh), so a router refuses its reads as the worker does; and
 *    the topic's partition count when it is no longer the one the table is
 *    placed by (kvs_fresh: partitions were added while kvs ran), likewise.
 *    The applied offsets are not here: they are in the environment, read
 *    in the same snapshot as the data.
 *
 * Times are uv_now() milliseconds (libuv's monotonic clock, the same in
 * every process of the machine).
 *
 * Concurrency: one writer, the worker, which holds an flock on the file for
 * its life (a second worker for the same shard leaves the page alone); any
 * number of readers, mapping it read-only. Every field is a 64-bit atomic;
 * `live` and `ident` are written under a sequence counter (odd while being
 * written), and a reader that sees it odd or changed takes the page as not
 * live for that read. The file never shrinks: a reader's mapping must never
 * reach past its end. A page another version of kvs left is replaced by a
 * new file, not rewritten: a reader of that version keeps its mapping of
 * the old one until it notices the new inode, and then refuses the new
 * page by its version.
 *
 * Layout: a header, then a slot (end, start, diverged, topic_partitions) per (binding, owned
 * partition), in config order. The header records a fingerprint of that layout (shard,
 * shards, bindings' topics and partition counts): a reader whose config
 * differs reads nothing.
 */
#ifndef KVS_SHARDSTATE_H
#define KVS_SHARDSTATE_H

#include "kvs_config.h"
#include "kvs_lmdb.h"

#include <stdint.h>

typedef struct kvs_shardstate_s kvs_shardstate_t;

/* What a reader sees of the header, consistent (one sequence number). */
typedef struct kvs_shardstate_head_s {
    int live;
    kvs_lmdb_ident_t ident;
    int64_t settle_until_ms; /* an unknown end before this: settling */
    int64_t heartbeat_ms;    /* the worker's last tick (0: none yet) */
    int tight;               /* its disk is full: reads go to the worker (router_local) */
} kvs_shardstate_head_t;

/* ---- the worker ---------------------------------------------------------------- */

/* Opens (creating, 0600) the page at `path` for shard `shard` of `cfg`,
 * takes its lock and clears `live` (every Kafka slot unknown). *last gets
 * the files the previous worker had open and *had_last says whether there
 * were any. Returns 0 and *out; -EBUSY when another worker holds the page;
 * or -errno. */
int kvs_shardstate_open_writer(const char *path, const kvs_config_t *cfg, uint32_t shard,
                               kvs_shardstate_t **out, kvs_lmdb_ident_t *last, int *had_last);

/* The worker has `ident` open and serves from it: sets ident and live. */
void kvs_shardstate_publish(kvs_shardstate_t *s, const kvs_lmdb_ident_t *ident);

/* The worker's disk is full, or no longer (node_store's "tight"): a
 * router's snapshots would pin the pages deletes free, and deletes would
 * take new ones from the little room a full disk leaves, so routers send
 * reads to the worker meanwhile (its own snapshots end with each turn). */
void kvs_shardstate_set_tight(kvs_shardstate_t *s, int tight);

/* Kafka knowledge of partition p of cfg->bindings[binding] (a partition
 * this shard owns; others are ignored). */
void kvs_shardstate_set_part(kvs_shardstate_t *s, uint32_t binding, uint32_t p, int64_t end,
                             int64_t start);
/* Whether partition p of cfg->bindings[binding] diverged (kvs_fresh); 0
 * when the page is opened. */
void kvs_shardstate_set_diverged(kvs_shardstate_t *s, uint32_t binding, uint32_t p, int diverged);
/* The partition count cfg->bindings[binding]'s topic has now, when it is
 * not the one the table is placed by (0: the same, or not known), for
 * every partition of it this shard owns; 0 when the page is opened. */
void kvs_shardstate_set_resized(kvs_shardstate_t *s, uint32_t binding, uint32_t n);
void kvs_shardstate_set_settle(kvs_shardstate_t *s, int64_t until_ms);
void kvs_shardstate_heartbeat(kvs_shardstate_t *s, int64_t now_ms);

/* ---- readers ----------------------------------------------------------------------- */

/* Maps the page at `path` read-only. Returns 0 and *out; KVS_EMISMATCH when
 * it is not a state page of this config's layout for `shard` (yet: a
 * worker that has not started since the config changed); or -errno. */
int kvs_shardstate_open_reader(const char *path, const kvs_config_t *cfg, uint32_t shard,
                               kvs_shardstate_t **out);

/* Reads the header. Returns 0, or -EAGAIN when the worker was writing it
 * (then take the page as not live). */
int kvs_shardstate_head(const kvs_shardstate_t *s, kvs_shardstate_head_t *h);

/* The Kafka knowledge of partition p of cfg->bindings[binding]: -1 each
 * when not known (or not a partition of this shard). */
void kvs_shardstate_part(const kvs_shardstate_t *s, uint32_t binding, uint32_t p, int64_t *end,
                         int64_t *start);

/* What kvs_shardstate_set_diverged said of the partition (0 for one not
 * of this shard). */
int kvs_shardstate_diverged(const kvs_shardstate_t *s, uint32_t binding, uint32_t p);

/* What kvs_shardstate_set_resized said of the topic of partition p (0
 * for a partition not of this shard). */
uint32_t kvs_shardstate_resized(const kvs_shardstate_t *s, uint32_t binding, uint32_t p);

/* The page's file as opened (device, inode): a reader compares it with the
 * path's now to notice a page that was removed and created anew. */
void kvs_shardstate_file(const kvs_shardstate_t *s, uint64_t *dev, uint64_t *ino);

/* True when `addr` lies in the page's mapping (a fault's address: was it
 * this file's?). */
int kvs_shardstate_maps(const kvs_shardstate_t *s, const void *addr);

/* Writer: clears `live` and releases the lock. Both: unmaps and closes.
 * NULL is allowed. */
void kvs_shardstate_close(kvs_shardstate_t *s);

#endif

/*
 * node_store: a shard's LMDB environment, as its one writer sees it. With
 * common/kvs_lmdb.c (reading, shared with routers), the only file that
 * includes lmdb.h; LMDB error codes are translated to KVS_E* codes here.
 *
 * Transactions follow the worker's loop turns:
 *  - reads use one read snapshot per turn (a reused read txn, renewed on
 *    the turn's first read, reset at node_store_end_turn);
 *  - writes join the turn's write batch (one write txn, opened on the first
 *    write); once a batch is open, reads use it too, so a client that
 *    pipelines a write and then a read of the same key sees its write;
 *  - node_store_end_turn commits the batch; the caller acknowledges writes
 *    only after it returned 0.
 * Each batch has a generation number (node_store_batch_gen). If a batch
 * fails to commit (a full disk fails a commit, never an earlier step), or
 * is aborted by a failed write, fail_cb is told its generation so the caller
 * can turn every answer it prepared inside that batch into an error.
 * With err KVS_EBROKEN the commit failed while LMDB wrote its meta page:
 * whether the batch is on disk is not known (LMDB writes the old page back,
 * but the new one may have reached the disk), and the environment is
 * unusable from then on (broken_cb).
 *
 * Memory: values returned by get/scan point into LMDB pages and are valid
 * only until the next call on the store. Copy before calling again.
 *
 * Threads: one thread only (the worker's loop thread). One writer only:
 * open takes an exclusive lock on the directory. Other processes may read
 * the environment meanwhile (routers, through kvs_lmdb's reader): LMDB
 * readers take no lock, and a commit is visible to every read snapshot
 * begun after it.
 */
#ifndef NODE_STORE_H
#define NODE_STORE_H

#include "kvs_config.h"
#include "kvs_lmdb.h"
#include "kvs_metrics.h"

#include <stddef.h>
#include <stdint.h>

typedef struct node_store_s node_store_t;

/* Stored bytes (kvs_lmdb's slice: the read side is shared with routers). */
typedef kvs_slice_t node_slice_t;

/* A batch of generation `gen` failed to commit with `err`; nothing it wrote
 * is stored. */
typedef void (*node_store_fail_cb)(void *arg, uint64_t gen, int err);

/* LMDB gave up on the environment (a write of its meta page failed: every
 * later transaction fails with MDB_PANIC); called once, after the fail_cb
 * of the batch whose commit it was (that batch's err is KVS_EBROKEN). Only
 * a new process, opening the environment afresh, can write or read it. */
typedef void (*node_store_broken_cb)(void *arg);

typedef struct node_store_opts_s {
    const char *dir;       /* the shard's directory; created if missing */
    uint32_t shard;        /* recorded at creation, checked at every open */
    const char *placement; /* placement fingerprint, likewise */
    uint64_t map_size;     /* initial map size in bytes; grows on demand */
    uint32_t max_tables;
    const char *const *tables; /* created at open if missing (Kafka-bound tables) */
    const char *const *topics; /* the topic bound to each of them, or NULL */
    size_t n_tables;
    kvs_sync_t sync;
    /* The config the tables are looked up by (kafka.bindings, cluster): a
     * table holding keys that were placed otherwise than the config now
     * looks them up (bound to a topic then, to none now, or the reverse,
     * with another partitioner or count) is refused, and each table's
     * layout recorded (kvs_schema_table_layout_key). NULL: not checked. */
    const kvs_config_t *cfg;
    /* The lock file belongs to another data file than the one now in
     * `dir` (the directory was replaced: kvs_shardstate says which files the
     * last worker had): remove it before opening, so that LMDB builds a new
     * one from this data file rather than trust a reader table and
     * transaction id kept alive by routers still reading the old files. */
    int reset_lock;
    /* The data.mdb the last worker of this shard served from (kvs_shardstate),
     * or NULL: that file found empty was emptied, not left new by a crash. */
    const kvs_lmdb_ident_t *last;
    node_store_fail_cb fail_cb;
    void *fail_arg;
    node_store_broken_cb broken_cb; /* or NULL */
    void *broken_arg;
    /* Told when the disk becomes too full to keep the room for deletes
     * ("tight", node_store.c) and when it has room again; or NULL. */
    void (*tight_cb)(void *arg, int tight);
    void *tight_arg;
} node_store_opts_t;

/* Opens (creating if needed) the environment in o->dir, and creates the
 * tables in o->tables that do not exist yet, so that they never meet the
 * table limit later. A topic in o->topics whose stored partition records
 * were applied to another table than the one it is now bound to (a
 * binding whose table was renamed) has them reset to "from the log's
 * start", in the same transaction: the new table gets every record of the
 * topic, not only those after the old table's progress (logged). Refuses,
 * with KVS_EMISMATCH and a message in err, an environment created for
 * another shard or placement or by an unknown format version, or (with
 * o->cfg) one holding a table whose stored keys the config would look up
 * on other shards; with KVS_ELIMIT, one whose tables (plus those
 * o->tables still needs) exceed o->max_tables, naming some and the value
 * to set; with -EBUSY, a directory another process has open; with
 * KVS_EDAMAGED, data files that are not LMDB's (overwritten, not a regular
 * file, a symbolic link to nothing, emptied: see o->last), or a data.mdb
 * cut short (missing pages that are in use, which would fault at their
 * first read). Returns 0 and *out, or an error with err[0..errlen) saying
 * what is wrong and what to do. */
int node_store_open(const node_store_opts_t *o, node_store_t **out, char *err, size_t errlen);

/* kvs's error for an LMDB or system error code (positive): KVS_EFULL for
 * a full disk or a size limit (ENOSPC, EDQUOT, EFBIG), KVS_ENOTFOUND,
 * KVS_ELIMIT (MDB_DBS_FULL), else KVS_ESTORE; 0 for 0. */
int node_store_err_code(int rc);

/* Sets the argument passed to fail_cb (for owners created after the store). */
void node_store_set_fail_arg(node_store_t *s, void *arg);

/* Calls wake(arg) whenever a batch opens: whoever commits at the turn's
 * end (node_server's flusher) must run even when the batch opened outside
 * the poll phase, in a timer callback (kvs_flusher_wake). NULL: none. */
void node_store_set_wake(node_store_t *s, void (*wake)(void *arg), void *arg);

/* Commits any open batch, syncs to disk, and closes. NULL is allowed.
 * Returns 0 or the commit error. */
int node_store_close(node_store_t *s);

/* Looks up `key` in `table`. Returns 0 and *val, KVS_ENOTFOUND (also for a
 * table that does not exist), or KVS_ESTORE. */
int node_store_get(node_store_t *s, const char *table, const void *key, size_t klen,
                   node_slice_t *val);

/* Stores `val` under `key` in `table` (created on first write) within the
 * turn's batch. Returns 0; KVS_ELIMIT (storage.max_tables reached; nothing
 * written); or the error (KVS_EFULL, KVS_ESTORE) of a batch that failed
 * with this write, or of the early commit before it (fail_cb has run). A
 * full disk usually shows at the commit, in node_store_end_turn. */
int node_store_put(node_store_t *s, const char *table, const void *key, size_t klen,
                   const void *val, size_t vlen);

/* Deletes `key` within the turn's batch. Returns 0, KVS_ENOTFOUND (the key
 * or table does not exist; then no batch is opened and nothing written), or
 * an error as for put. */
int node_store_del(node_store_t *s, const char *table, const void *key, size_t klen);

/* Called for each pair in key order; return nonzero to stop. */
typedef kvs_lmdb_scan_cb node_store_scan_cb;

/* Walks `table` in key order starting at the first key >= `from` (flen 0:
 * from the start). A missing table walks nothing. Returns 0 or KVS_ESTORE. */
int node_store_scan(node_store_t *s, const char *table, const void *from, size_t flen,
                    node_store_scan_cb cb, void *arg);

/* Number of keys in `table` as of the read snapshot (the open batch when
 * one is open); 0 for a table that does not exist. Returns 0 or KVS_ESTORE. */
int node_store_count(node_store_t *s, const char *table, uint64_t *n);

/* Pages `table` takes (branch, leaf and overflow) as of the read snapshot;
 * 0 for a table that does not exist. Returns 0 or an error. */
int node_store_table_pages(node_store_t *s, const char *table, uint64_t *pages);

/* Empties `table` within the turn's batch (the table itself stays; one
 * bound to no topic is then dropped, as any emptied table), and sets
 * *removed (may be NULL) to the keys it held. Returns 0 (also for a
 * missing or empty table: then nothing is written) or an error as for
 * put. It prices itself, 8 bytes per page of node_store_table_pages (the
 * free list it writes); within a reservation, price it there. On a tight
 * disk a large table outside a reservation is emptied in pieces, each
 * committed (node_store.c, clear_in_pieces), and the rest with it: on an
 * error *removed is then the keys those pieces deleted (0: none, nothing
 * was written). */
int node_store_clear(node_store_t *s, const char *table, uint64_t *removed);

/* Reads/writes kvs's own metadata (the reserved __kvs database) in the same
 * way as get/put: meta writes join the turn's batch, so data and the
 * metadata describing it (e.g. Kafka offsets) commit atomically. */
int node_store_meta_get(node_store_t *s, const char *key, node_slice_t *val);
int node_store_meta_put(node_store_t *s, const char *key, const void *val, size_t vlen);

/* The brokers confirmed that `topic` has the partition count its binding
 * says: the layouts of its tables whose binding changed since they were
 * stored are recorded now, in the turn's batch (they were not when the
 * store opened, so that a start refused for a wrong count changes
 * nothing). Returns 0 or an error as for put. */
int node_store_layouts_confirmed(node_store_t *s, const char *topic);

/* The partition count a table bound to `topic` was recorded with, when
 * its binding now names another and the brokers have not confirmed it
 * yet (node_store_layouts_confirmed); else 0. Until they do, the keys
 * the router places by the new count may not be where it looks. */
uint32_t node_store_layout_unconfirmed(const node_store_t *s, const char *topic);

/* What the last storage error (KVS_ESTORE) of a write was, as LMDB or
 * the system said it ("mdb_txn_commit: Input/output error"), for the
 * answers of the requests it failed; "storage error" before any. */
const char *node_store_cause(const node_store_t *s);

/* Reserves room in the turn's batch for `ops` writes totalling `bytes` of
 * keys and values, so that they all land in the same LMDB txn (no early
 * commit between them): what makes a multi-key write atomic. Price only
 * writes that will happen (a delete of an absent key writes nothing).
 * `adds`: some of them add data (puts); on a disk too full to keep room
 * for deletes such a reservation may be refused (KVS_EFULL), one of only
 * deletes and metadata is not. On success the caller must call
 * node_store_reserve_end after the writes; on failure nothing was
 * reserved. Returns 0 or an error as for put. */
int node_store_reserve(node_store_t *s, size_t ops, size_t bytes, int adds);

/* Ends a reservation; `rc` is the caller's result for its writes. If rc is
 * an error and some of the reservation's writes were made, the whole batch
 * is aborted (fail_cb runs for it): LMDB cannot undo part of a txn, and a
 * prefix of a multi-key write (or of Kafka records without their offsets)
 * must never commit. Returns rc. */
int node_store_reserve_end(node_store_t *s, int rc);

/* Generation of the open write batch; 0 when none is open. */
uint64_t node_store_batch_gen(const node_store_t *s);

/* Generation of the most recent batch that failed to commit (0 = none).
 * Generations only grow, so "did any batch since G fail" is a comparison. */
uint64_t node_store_last_failed_gen(const node_store_t *s);

/* Whether batch `gen` (one that has ended) failed. Exact for the last 16
 * failures; a batch older than those the store still remembers is taken
 * for failed (never a committed batch said failed otherwise, never a
 * failed one said committed). */
int node_store_gen_failed(const node_store_t *s, uint64_t gen);

/* Ends the turn: commits the open batch (if any) and releases the read
 * snapshot. Returns 0 or the commit error (fail_cb has run for it). */
int node_store_end_turn(node_store_t *s);

/* Forces committed data and metadata to disk (for storage.sync: batch,
 * whose commits leave the last meta page unsynced). Returns 0 or an error. */
int node_store_sync(node_store_t *s);

/* Prints the count of failed-commit lines left out of the log (a full disk
 * fails every batch) once their window is over; a timer calls it, so the
 * count comes when the failures stop too, not only at the next one. */
void node_store_flush_logs(node_store_t *s);

/* The files the environment is (data.mdb and lock.mdb, as opened). */
const kvs_lmdb_ident_t *node_store_ident(const node_store_t *s);

/* ---- views: a read snapshot for another thread ----------------------------
 *
 * For work too long for the loop (a digest of a whole table, a copy of the
 * environment): opened and closed on the loop thread, used (begin .. end)
 * from one other thread. While any view is open the map does not grow: a
 * write batch that would need it fails with -EAGAIN (a 503 to clients;
 * ingestion retries with backoff), so views must not live long. */
typedef struct node_store_view_s node_store_view_t;

/* Loop thread. Opens a view of `table` (NULL: no table, for a copy).
 * Returns 0 and *out; -EAGAIN when the table was created in the open
 * batch (not in any snapshot yet: retry), -ENOMEM. A table that does not
 * exist scans empty. */
int node_store_view_open(node_store_t *s, const char *table, node_store_view_t **out);

/* The view's thread: starts its read snapshot. Returns 0 or KVS_ESTORE. */
int node_store_view_begin(node_store_view_t *v);

/* The view's thread: metadata (as node_store_meta_get) and the table's
 * pairs in key order (as node_store_scan from the start), as of the
 * snapshot begun. Slices are valid until node_store_view_end. */
int node_store_view_meta(node_store_view_t *v, const char *key, node_slice_t *val);
int node_store_view_scan(node_store_view_t *v, node_store_scan_cb cb, void *arg);

/* The view's thread: ends the snapshot. */
void node_store_view_end(node_store_view_t *v);

/* Any thread, between open and close, without begin: writes a compacted
 * hot copy of the whole environment (LMDB's mdb_env_copyfd2 with
 * MDB_CP_COMPACT: its own consistent read snapshot, free pages left out)
 * to `fd`, which may be a pipe. Returns 0, -EPIPE when the reader went
 * away, or KVS_ESTORE. */
int node_store_view_copy(node_store_view_t *v, int fd);

/* Loop thread: closes a view (ending its snapshot if still begun). */
void node_store_view_close(node_store_view_t *v);

/* What node_store_stats reports: the environment (LMDB's own figures) and
 * the group commits so far. Histograms point into the store. */
#define NODE_BATCH_BUCKETS 15
extern const uint64_t node_store_batch_bounds[NODE_BATCH_BUCKETS]; /* writes: 1 .. 16384 */

typedef struct node_store_stats_s {
    uint64_t map_size;    /* bytes */
    uint64_t page_size;   /* bytes */
    uint64_t pages_used;  /* the data file's pages in use (last page number + 1) */
    uint64_t readers;     /* reader slots in use (this worker and other processes) */
    uint64_t max_readers; /* reader slots */
    uint32_t tables;
    const kvs_hist_t *batch_writes; /* writes per committed batch (node_store_batch_bounds) */
    const kvs_hist_t *commit_ns;    /* time each commit took, ns (kvs_latency_bounds_ns) */
    uint64_t failed_batches;        /* batches that failed to commit or were aborted */
    uint64_t recommits;             /* commits anew after a failure (node_store_sync) */
} node_store_stats_t;

/* Fills *out. Cheap (two LMDB calls that take no lock). */
void node_store_stats(const node_store_t *s, node_store_stats_t *out);

/* Number of tables, and the current map size in bytes. */
uint32_t node_store_table_count(const node_store_t *s);
/* Of those, the tables emptied but not dropped yet (a digest or snapshot
 * reads the shard: they go with the first commit after it). Walks every
 * table: for messages, not for each request. */
uint32_t node_store_tables_emptied(node_store_t *s);
uint64_t node_store_map_size(const node_store_t *s);

/* How many tables bound to no topic (by the config the store was opened
 * with) held rows when it was opened: node_handoff's unbound-rows. */
uint32_t node_store_unbound_at_open(const node_store_t *s);

#endif

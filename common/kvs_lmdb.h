/*
 * kvs_lmdb: reading kvs's LMDB environments (the layout is kvs_schema's).
 * With node/node_store.c, the writer, the only file that includes lmdb.h;
 * LMDB's error codes are translated to KVS_E* here.
 *
 * Two layers, so that every process reads in one way:
 *
 *  - Primitives on a read transaction the caller holds: a key's value, a
 *    walk in key order from a key, a table's size. The worker's store uses
 *    them inside its own transactions (its turn's snapshot, or its write
 *    batch once one is open).
 *
 *  - kvs_lmdb_reader_t: an environment opened read-only (MDB_RDONLY) by a
 *    process that is not its writer: a router reading a local shard. LMDB
 *    lets any number of processes read an environment while one writes:
 *    readers take no lock, and a new read transaction sees every commit
 *    made before it began. The reader:
 *      - holds one reusable read transaction and at most one reader slot
 *        (MDB_NOTLS: the slot belongs to the transaction, not the thread);
 *        kvs_lmdb_reader_begin/end bracket each use, so a snapshot never
 *        outlives the caller's request (a long-lived reader would pin old
 *        pages and make the writer grow the file);
 *      - follows the writer's map growth: a begin that meets MDB_MAP_RESIZED
 *        adopts the new size (mdb_env_set_mapsize(env, 0)) and retries;
 *      - learns the handle (DBI) of a table the first time it is read, in
 *        that read transaction, which then commits instead of resetting
 *        (LMDB keeps a handle opened in a read transaction only if it
 *        commits);
 *      - refuses an environment of another shard, placement or format
 *        version, as the worker does;
 *      - clears reader slots left by dead processes (kvs_lmdb_reader_check;
 *        a slot that held a snapshot pins pages until cleared).
 *
 * Memory: values returned point into the map and are valid only until the
 * snapshot ends (kvs_lmdb_reader_end, or the end of the caller's txn).
 *
 * Threads: a reader is used by one thread at a time.
 */
#ifndef KVS_LMDB_H
#define KVS_LMDB_H

#include <stddef.h>
#include <stdint.h>

struct MDB_txn;

typedef struct kvs_slice_s {
    const uint8_t *p;
    size_t len;
} kvs_slice_t;

/* Called for each pair of a walk in key order; return nonzero to stop. */
typedef int (*kvs_lmdb_scan_cb)(void *arg, kvs_slice_t key, kvs_slice_t val);

/* ---- primitives on a transaction ----------------------------------------- */

/* Translates an LMDB read error: 0, KVS_ENOTFOUND for MDB_NOTFOUND, else
 * KVS_ESTORE (logged with `what`). */
int kvs_lmdb_err(const char *what, int rc);

/* The value of `key` in database `dbi`. Returns 0 and *val (valid for the
 * txn), KVS_ENOTFOUND, or KVS_ESTORE. */
int kvs_lmdb_get(struct MDB_txn *txn, unsigned int dbi, const void *key, size_t klen,
                 kvs_slice_t *val);

/* Walks `dbi` in key order from the first key >= from[0..flen) (flen 0:
 * from the start) until `cb` returns nonzero or the keys end. Returns 0 or
 * KVS_ESTORE. */
int kvs_lmdb_scan(struct MDB_txn *txn, unsigned int dbi, const void *from, size_t flen,
                  kvs_lmdb_scan_cb cb, void *arg);

/* Number of keys in `dbi`. Returns 0 or KVS_ESTORE. */
int kvs_lmdb_count(struct MDB_txn *txn, unsigned int dbi, uint64_t *n);

/* ---- a read-only environment ---------------------------------------------- */

typedef struct kvs_lmdb_reader_s kvs_lmdb_reader_t;

typedef struct kvs_lmdb_reader_opts_s {
    const char *dir;       /* the environment's directory (kvs_schema_shard_dir) */
    uint32_t shard;        /* the shard id it must have been created for */
    const char *placement; /* and the placement (kvs_schema_placement) */
    uint32_t max_tables;   /* storage.max_tables: table handles to allow for */
} kvs_lmdb_reader_opts_t;

/* Which files an environment is: data.mdb and lock.mdb, by device and
 * inode. Equal identities are the same environment; a replaced directory
 * or a recreated lock file has another. */
typedef struct kvs_lmdb_ident_s {
    uint64_t data_dev, data_ino;
    uint64_t lock_dev, lock_ino;
} kvs_lmdb_ident_t;

/* Opens the environment in o->dir read-only, after checking (in a first
 * snapshot) that it holds the current format version, o->shard and
 * o->placement, and clears stale reader slots. Never creates data.mdb.
 * Returns 0 and *out; KVS_EMISMATCH (another shard, placement or format;
 * or not initialized yet), KVS_ESTORE (cannot open: err says why), or
 * -ENOMEM (*out is NULL then). err[0..errlen) then says what is wrong.
 * *out is set as soon as the reader exists (and set to NULL again if the
 * open fails), so a caller that jumps out of a fault in the middle of the
 * open (router_local) holds what to close. */
int kvs_lmdb_reader_open(const kvs_lmdb_reader_opts_t *o, kvs_lmdb_reader_t **out, char *err,
                         size_t errlen);

/* Whether the file `path`, an environment's data file that no process has
 * open (a copy not yet in place), holds an environment this kvs reads as
 * shard `shard` of `placement` in the current format: what
 * kvs_lmdb_reader_open checks. Opens it read-only without a lock file and
 * closes it. The file must be a compacted copy (MDB_CP_COMPACT, as a
 * Snapshot sends), which holds exactly the pages it names. Returns 0;
 * KVS_EMISMATCH (another shard, placement or format, or never set up by a
 * worker), KVS_ESTORE (not an LMDB environment, unreadable, or shorter
 * than its pages: cut short) or -ENOMEM; err[0..errlen) then says what is
 * wrong. */
int kvs_lmdb_check_file(const char *path, uint32_t shard, const char *placement, char *err,
                        size_t errlen);

/* What kvs_lmdb_walk_file read. */
typedef struct kvs_lmdb_walk_s {
    uint64_t tables;   /* named databases (tables and __kvs) */
    uint64_t pairs;    /* their pairs, all together */
    uint64_t bytes;    /* their keys' and values' bytes */
    uint64_t free_ids; /* page numbers on the freelist */
} kvs_lmdb_walk_t;

/* Reads every page of the environment data file `path`, which no process
 * writes while it runs (a copy not yet in place, a stopped shard's file):
 * the freelist (every page number in range), and every named database's
 * pairs in order (each key after the one before, each key and value read
 * to its last byte, as many pairs as the database's header counts).
 * kvs_lmdb_check_file reads the meta pages and __kvs only; a file whose
 * table pages are damaged (bytes changed on a disk, or by a peer) passes
 * it, and the first read of a damaged page may fault: run this where a
 * fault costs nothing but the walk (a child process, kvs-node
 * --check-data). Returns 0 with *out filled; KVS_EDAMAGED with err saying
 * where (LMDB's error, pairs out of order, a count that does not match, a
 * page number past the file); KVS_ESTORE when it cannot be opened. */
int kvs_lmdb_walk_file(const char *path, kvs_lmdb_walk_t *out, char *err, size_t errlen);

/* Ends any snapshot, releases the reader slot and closes. NULL is allowed. */
void kvs_lmdb_reader_close(kvs_lmdb_reader_t *r);

/* The files this reader has open. */
const kvs_lmdb_ident_t *kvs_lmdb_reader_ident(const kvs_lmdb_reader_t *r);

/* Begins a snapshot: every commit made before this call is visible.
 * Adopts a map the writer grew (counted in kvs_lmdb_reader_remaps).
 * Returns 0, or KVS_ESTORE (no snapshot is open; not logged, so a caller
 * that meets it on every request can log it as seldom as it likes:
 * kvs_lmdb_reader_why says why, e.g. every reader slot is taken).
 *
 * Pages are read through the map: a data.mdb cut short under the reader
 * (truncated, a damaged disk) faults (SIGBUS) at the first read of a
 * missing page. The caller decides what a fault does (router_local). */
int kvs_lmdb_reader_begin(kvs_lmdb_reader_t *r);

/* Why the last kvs_lmdb_reader_begin that returned KVS_ESTORE failed:
 * static text, valid for the process's life. */
const char *kvs_lmdb_reader_why(const kvs_lmdb_reader_t *r);

/* Whether a begin failed to adopt the writer's grown map (this process
 * is out of address space): LMDB had unmapped the old map already, so
 * the reader cannot begin again and may only be closed (then opened
 * again, mapped anew). */
int kvs_lmdb_reader_unmapped(const kvs_lmdb_reader_t *r);

/* Ends the snapshot begun (slices read in it become invalid). */
void kvs_lmdb_reader_end(kvs_lmdb_reader_t *r);

/* Inside a snapshot: `key` of `table` (a table that does not exist holds
 * no key); a walk of `table` from a key; its number of keys; a __kvs
 * record. Same returns as the primitives, and KVS_ELIMIT for a table that
 * exists when every handle storage.max_tables allows is taken (a table
 * that does not exist is never that: it holds no key). */
int kvs_lmdb_reader_get(kvs_lmdb_reader_t *r, const char *table, const void *key, size_t klen,
                        kvs_slice_t *val);
int kvs_lmdb_reader_scan(kvs_lmdb_reader_t *r, const char *table, const void *from, size_t flen,
                         kvs_lmdb_scan_cb cb, void *arg);
int kvs_lmdb_reader_count(kvs_lmdb_reader_t *r, const char *table, uint64_t *n);
int kvs_lmdb_reader_meta(kvs_lmdb_reader_t *r, const char *key, kvs_slice_t *val);

/* Outside a snapshot: clears the reader slots of processes that died
 * (mdb_reader_check); *cleared gets their number. Returns 0 or KVS_ESTORE. */
int kvs_lmdb_reader_check(kvs_lmdb_reader_t *r, int *cleared);

/* Times the map was grown to follow the writer; the map size in bytes. */
uint64_t kvs_lmdb_reader_remaps(const kvs_lmdb_reader_t *r);
uint64_t kvs_lmdb_reader_map_size(const kvs_lmdb_reader_t *r);

/* The identity of the environment in `dir` as the files are now (data.mdb
 * and lock.mdb by stat). Returns 0 or -errno (e.g. -ENOENT: no data.mdb). */
int kvs_lmdb_ident_of(const char *dir, kvs_lmdb_ident_t *out);

#endif

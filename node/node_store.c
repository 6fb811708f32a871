/*
 * node_store: one shard's LMDB environment, one named database per table,
 * and the reserved __kvs database for metadata (format version, shard id,
 * placement fingerprint, Kafka offsets).
 *
 * Group commit. All writes of a loop turn go into one write txn (the
 * "batch"), committed by node_store_end_turn before any of them is
 * acknowledged. A commit is atomic: after kill -9 a batch is wholly there
 * or wholly absent. What reaches the disk when is storage.sync, mapped onto
 * the LMDB flags whose guarantees lmdb.h documents:
 *  - full: no flag. Each commit syncs the data pages, then writes the meta
 *    page synchronously; a committed batch survives power loss.
 *  - batch: MDB_NOMETASYNC. Each commit syncs the data pages before it
 *    writes the meta page, but does not sync the meta page; the next commit
 *    or node_store_sync (every storage.sync_interval) does. lmdb.h: "This
 *    optimization maintains database integrity, but a system crash may undo
 *    the last committed transaction."
 *  - none: MDB_NOSYNC. Nothing is synced; lmdb.h: "a system crash can
 *    corrupt the database or lose the last transactions", integrity being
 *    kept only on a filesystem that preserves write order.
 * No mode uses MDB_WRITEMAP: with it, MDB_NOSYNC keeps no integrity on a
 * system crash even there, and pages written through a map into a sparse
 * file on a full disk are a SIGBUS, not an error. Without it LMDB keeps a
 * batch's dirty pages in memory and writes them at commit.
 *
 * Disk. LMDB grows the data file as it writes, and reuses pages freed by
 * earlier commits first (pages a commit frees become reusable two commits
 * later: LMDB keeps the previous snapshot whole). A commit that cannot get
 * space fails whole, before LMDB writes the meta page, so the previous state
 * stands, and fail_cb turns every answer of the batch into an error. Even a
 * delete needs free pages (LMDB copies the pages it changes, and writes a
 * freelist record of those it frees), so on a full disk with too few freed
 * pages every delete would fail, for good, and space could never be freed
 * through kvs. The worker therefore keeps the room: disk blocks for the
 * DELETE_ROOM_PAGES past the last page in use, allocated past the end of
 * the file (fallocate, FALLOC_FL_KEEP_SIZE: the file stays as LMDB wrote
 * it) after each commit that grew the file into them. When the disk cannot
 * give them (`tight`, also at once after a commit failed for room): writes
 * that add data are taken only into the room above its half and the pages
 * earlier commits freed (room_refuses), refused (KVS_EFULL) otherwise;
 * every batch is priced at a quarter of the room at most (a larger request
 * is a batch of its own), so deletes keep a quarter of it whatever the
 * writes did; and the room is asked for again after each commit, and by a
 * refused write at most once a ROOM_RETRY_MS, so writes go on as before
 * once the disk has room. Pages a
 * live snapshot may read are never reused, so a reader killed holding one
 * would make the file grow for good: dead readers' slots are cleared at
 * open and whenever the pages in use grew by an eighth (watch_dead_readers).
 *
 * Map growth. The map is address space, not disk. LMDB fails a write with
 * MDB_MAP_FULL when the map is full, and a failed write poisons its whole
 * txn. So before every write we check the batch's worst-case page use
 * (batch_pages) against the room left; when it would not fit we commit the
 * batch early, grow the map (which LMDB allows only with no txn active in
 * the process, hence the read snapshot is released first) and open a new
 * batch. The worst case is priced from real sizes: a delete of an absent
 * key costs nothing, and many small writes cost about their bytes, not a
 * path per key (see batch_pages).
 *
 * Table handles. Every existing table is opened once at start (refusing to
 * start if they exceed storage.max_tables, rather than hiding some);
 * tables are only created by this process (single writer, enforced by a
 * lock file), so a name not in the cache does not exist. A table created
 * inside a batch is "pending" until the commit: if the batch fails LMDB
 * closes its handle and we forget it.
 *
 * Dropping emptied tables. A table no key is left in reads exactly as a
 * missing one (nothing), so one that is not bound to a topic is dropped
 * (mdb_drop) in the batch that emptied it, just before its commit, or
 * when a new table would not fit under storage.max_tables: its room is
 * given back. Otherwise every name a client ever wrote would keep a place
 * for good, and a Redis client, whose every key is a table, would use up
 * the shard's limit. Tables bound to topics stay (they were made at open
 * so that ingestion never meets the limit). Dropping closes the table's
 * handle at once, also for other threads, so no table is dropped while
 * another thread reads the environment (a digest, a snapshot: pins); its
 * mark waits for a later commit. A batch that dropped tables and did not
 * commit leaves them as they were before it, and without handles:
 * restore_dropped opens them again.
 */
#include "node_store.h"
#include "kvs_dbimap.h"
#include "kvs_err.h"
#include "kvs_fs.h"
#include "kvs_log.h"
#include "kvs_place.h"
#include "kvs_schema.h"
#include "kvs_testhook.h"
#include "kvs_time.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <lmdb.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* What the stored bytes mean (kvs_schema). Stored values are encoded
 * Values served as they are, so a format-1 environment would answer wrong
 * integers: format_check refuses it. */
#define FORMAT_VERSION KVS_SCHEMA_FORMAT_VERSION
#define META_DB KVS_SCHEMA_META_DB
#define MIN_FREE_PAGES 16384 /* keep at least 64 MiB (4 KiB pages) of map free */
/* A batch may dirty at most this much (by its worst-case price, 256 MiB)
 * before an early commit. Every commit writes and syncs each page it
 * dirtied, so the bound sets how often a busy stream rewrites a table's
 * leaves: 16,384 (64 MiB) committed Kafka ingestion every ~1,500 records and
 * cost 4x its rate (tests/bench/README.md). LMDB's own limit is 131,071
 * dirty pages (MDB_IDL_UM_MAX). */
#define MAX_BATCH_PAGES 65536
#define NAMES_SHOWN 5 /* table names an error message lists */
#define NAME_CAP 256  /* longest table name read back, plus NUL (kvs allows 200) */
/* A table's marks (kvs_dbimap_entry_t.mark) */
#define T_BOUND 1u     /* named at open (bound to a topic): never dropped */
#define T_EMPTIED 2u   /* unbound, and a delete left it with no key: drop_emptied looks */
#define T_DROPPED 4u   /* dropped in the open batch: its entry is taken out */
#define FAILED_GENS 16 /* failed batches node_store_gen_failed remembers */

struct node_store_s {
    MDB_env *env;
    MDB_dbi meta;
    MDB_txn *rtxn; /* reused read txn; reset between turns */
    int rtxn_live;
    MDB_txn *wtxn;           /* the open batch, or NULL */
    void (*wake)(void *arg); /* node_store_set_wake: a batch opened */
    void *wake_arg;
    uint64_t gen; /* generation of the open batch (0 = none) */
    uint64_t next_gen;
    uint64_t failed_gens[FAILED_GENS]; /* the latest batches that failed, a ring */
    size_t n_failed;                   /* failures ever (the ring's next place mod its size) */
    size_t op_pages;                   /* sum of the batch's writes' worst cases */
    size_t bytes;                      /* keys and values the batch wrote */
    size_t used;                       /* pages in use when the batch began */
    size_t txn_budget;                 /* pages the batch may use before an early commit */
    int reserved;      /* inside node_store_reserve .. reserve_end: no early commit */
    int reserve_wrote; /* the reservation has written something */
    int reserve_err;   /* why the reserved batch is gone, if it failed */
    int grow;          /* MDB_MAP_FULL happened: grow the map before the next batch */
    unsigned depth;    /* deepest tree seen (B-tree levels) */
    size_t psize;
    uint64_t map_size;
    kvs_dbimap_t tables;         /* pending: created in the open batch */
    int emptied;                 /* some table may be marked T_EMPTIED */
    uint32_t unbound_at_open;    /* tables bound to no topic that held rows at open */
    kvs_dbimap_entry_t *dropped; /* the tables from before the open batch it dropped */
    uint32_t n_dropped;          /* ... room for storage.max_tables */
    kvs_dbimap_entry_t *taken;   /* drop_emptied's: room for storage.max_tables */
    uint64_t emptied_gen;        /* node_store_tables_emptied counted in batch gen-1 ... */
    uint32_t emptied_seen;       /* ... these */
    int lock_fd;
    int env_open; /* mdb_env_open succeeded: there is something to sync at close */
    node_store_fail_cb fail_cb;
    void *fail_arg;
    node_store_broken_cb broken_cb;
    void *broken_arg;
    void (*tight_cb)(void *arg, int tight); /* node_store_opts_t's */
    void *tight_arg;
    int broken;             /* LMDB gave up on the environment (MDB_PANIC) */
    int meta_unsynced;      /* storage.sync batch: the last meta page is synced by the next sync */
    int resync;             /* ... and a sync failed since: node_store_sync commits anew first */
    int recommit_said;      /* ... which was announced since the last sync that succeeded */
    uint64_t batch_writes;  /* writes in the open batch */
    kvs_hist_t hist_writes; /* per committed batch */
    kvs_hist_t hist_commit; /* commit time, ns */
    uint64_t failed_batches;
    uint64_t recommits;          /* node_store_sync's commits anew that succeeded */
    kvs_lmdb_ident_t ident;      /* data.mdb and lock.mdb as opened */
    unsigned pins;               /* views and copies other threads run: the map must not move */
    size_t check_at;             /* pages in use past which stale reader slots are looked for */
    kvs_log_budget_t write_errs; /* lines about failed commits and syncs (write_err) */
    size_t room_end;             /* pages of data.mdb allocated for certain (the room's end) */
    uint64_t free_known;         /* bytes the disk had free at the last look (keep_growth) */
    uint64_t free_at_ms;         /* ... when it looked */
    int tight_low;               /* tight for a disk nearly full (keep_growth) */
    int tight;                   /* the disk could not give the room (Disk, above) */
    size_t tight_free;           /* ... and the reusable free pages after the last commit */
    size_t tight_run;            /* ... the longest run of them in a row (in one record) */
    size_t tight_later;          /* ... and those the last commit freed (reusable after one more) */
    uint64_t later_ms;           /* when room_refuses last committed for them */
    char cause[160]; /* the last storage error, as write_err met it (node_store_cause) */
    struct pending_layout_s *pending; /* layouts_check's, for node_store_layouts_confirmed */
    size_t n_pending;
    uint64_t room_asked_ms; /* when the room was last asked for */
    size_t tight_room;      /* ... and the pages of the room left then */
    int alone;              /* the open batch takes no other write (tight, too large) */
};

struct node_store_view_s {
    node_store_t *s;
    MDB_txn *txn;
    MDB_dbi dbi;
    int has_table; /* the table existed (committed) when the view was opened */
};

const uint64_t node_store_batch_bounds[NODE_BATCH_BUCKETS] = {
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384};

static size_t batch_pages(const node_store_t *s, size_t op_pages, size_t bytes);
static size_t pages_of(const node_store_t *s, size_t bytes);
static size_t write_pages(const node_store_t *s, size_t bytes);
static int drop_emptied(node_store_t *s);

/* ---- errors --------------------------------------------------------- */

int node_store_err_code(int rc)
{
    switch (rc) {
    case 0:
        return 0;
    case MDB_NOTFOUND:
        return KVS_ENOTFOUND;
    case ENOSPC:
    case EDQUOT:
    case EFBIG: /* the file may not grow (RLIMIT_FSIZE): as good as full */
        return KVS_EFULL;
    case MDB_DBS_FULL:
        return KVS_ELIMIT;
    default:
        return KVS_ESTORE;
    }
}

/* node_store_err_code, logging the failures that are the storage's (full, broken). */
static int map_err(const char *what, int rc)
{
    int code = node_store_err_code(rc);
    if (code == KVS_EFULL || code == KVS_ESTORE)
        kvs_error("%s: %s", what, mdb_strerror(rc));
    return code;
}

/* The room a recommit waits for (node_store_sync): far more than its few
 * pages, so that it never takes the reusable pages of a full disk. */
#define RECOMMIT_ROOM_PAGES 64

#define DELETE_ROOM_PAGES 128 /* the room kept for deletes (Disk, above) */
/* Free space (past the room) below which the disk is taken for full: the
 * worker goes tight, and comes back once it has this much again. */
#define GROWTH_MIN_FREE_PAGES (4 * DELETE_ROOM_PAGES)

/* Bytes the data file may still grow by: its file system's free space, or
 * what its size limit (RLIMIT_FSIZE) leaves, whichever is less; UINT64_MAX
 * when unknown. */
static uint64_t disk_free(node_store_t *s)
{
    int fd;
    struct stat st;
    struct statvfs vfs;
    struct rlimit rl;
    uint64_t room = UINT64_MAX;
    if (mdb_env_get_fd(s->env, &fd) != 0 || fstat(fd, &st) != 0)
        return room;
    /* Under a size limit the room past the file's end is blocks the file
     * may not grow into (fallocate keeps the size): it comes off too. */
    uint64_t keep = (uint64_t)DELETE_ROOM_PAGES * s->psize;
    if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        room = (uint64_t)rl.rlim_cur > (uint64_t)st.st_size + keep
                   ? (uint64_t)rl.rlim_cur - (uint64_t)st.st_size - keep
                   : 0;
    if (fstatvfs(fd, &vfs) != 0 || vfs.f_blocks == 0)
        return room; /* (no blocks: a file system that does not say, a tmpfs without a size) */
    /* root may use the blocks reserved for it, others may not */
    uint64_t blocks = geteuid() == 0 ? vfs.f_bfree : vfs.f_bavail;
    uint64_t fs = blocks * vfs.f_frsize;
    return fs < room ? fs : room;
}

/* True when the data file cannot take `need` more bytes: its file system
 * has less than that free, or the file is at its size limit (RLIMIT_FSIZE). */
static int out_of_room(node_store_t *s, uint64_t need)
{
    return disk_free(s) < need;
}

/* An error from a call that writes to the data file (a commit, or a write
 * that made LMDB spill dirty pages early). LMDB reports a write cut short
 * by a full disk or a file size limit as EIO ("short write"); this tells
 * that apart from a real I/O error, so a full disk is always KVS_EFULL. */
static int write_err(node_store_t *s, const char *what, int rc)
{
    /* A full disk fails every batch until room is made, each with the same
     * line: at most KVS_LOG_PEER_LINES of them per 10 s, then a count. */
    int log = kvs_log_budget_take(&s->write_errs, kvs_now_ns() / 1000000);
    if (rc == MDB_MAP_FULL) {
        /* batch_pages was too low: a bug, but only this batch pays for it */
        if (log)
            kvs_error("%s: LMDB map full (%llu MiB); growing it before the next batch", what,
                      (unsigned long long)(s->map_size >> 20));
        s->grow = 1;
        return KVS_ESTORE;
    }
    if (rc == EIO && out_of_room(s, (uint64_t)batch_pages(s, 0, 0) * s->psize)) {
        if (log)
            kvs_error("%s: write cut short: the file system is full or the data file reached "
                      "its size limit",
                      what);
        return KVS_EFULL;
    }
    if (node_store_err_code(rc) == KVS_ESTORE)
        snprintf(s->cause, sizeof(s->cause), "%s: %s", what, mdb_strerror(rc));
    return log ? map_err(what, rc) : node_store_err_code(rc);
}

const char *node_store_cause(const node_store_t *s)
{
    return s->cause[0] != '\0' ? s->cause : "storage error";
}

/* ---- room for deletes (Disk, above) --------------------------------------- */

#define ROOM_RETRY_MS 1000
/* While tight: the most a batch is priced at (a larger request is a batch
 * of its own), and the room writes that add data must leave whole. */
#define TIGHT_BATCH_PAGES (DELETE_ROOM_PAGES / 4)
#define TIGHT_KEEP_PAGES (DELETE_ROOM_PAGES / 2)

/* Counts the free pages numbered `from` and above, walking LMDB's freelist
 * with cursor `c` (one record per transaction that freed pages, keyed by
 * its id, its value a sorted list of page numbers that starts with its
 * length, as mdb_stat reads it), of the transactions before `before` only;
 * *run: the longest run of pages in a row within one record; *later (if
 * not NULL): the pages of the transactions from `before` on, which the
 * walk then counts too (else it stops there). Returns the count, or -1
 * (LMDB's error). */
static int64_t count_free(MDB_cursor *c, size_t from, size_t before, size_t *run, size_t *later)
{
    MDB_val k, v;
    int64_t n = 0;
    int rc;
    *run = 0;
    if (later != NULL)
        *later = 0;
    while ((rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0) {
        size_t txnid;
        if (k.mv_size != sizeof(txnid))
            return -1;
        memcpy(&txnid, k.mv_data, sizeof(txnid));
        const size_t *ids = v.mv_data; /* LMDB's pgno_t, sorted */
        size_t len = v.mv_size / sizeof(size_t), r = 0;
        if (txnid >= before) { /* keyed by id: the rest are later */
            if (later == NULL)
                break;
            for (size_t i = 1; i < len && i <= ids[0]; i++)
                *later += ids[i] >= from;
            continue;
        }
        for (size_t i = 1; i < len && i <= ids[0]; i++) {
            n += ids[i] >= from;
            r = i > 1 && (ids[i] + 1 == ids[i - 1] || ids[i] == ids[i - 1] + 1) ? r + 1 : 1;
            if (r > *run)
                *run = r;
        }
    }
    return rc == MDB_NOTFOUND || rc == 0 ? n : -1;
}

/* Asks the disk for the room past the last page in use. Returns 1 when the
 * file has it (or the file system keeps none), 0 when the disk is full. */
static int ask_room(node_store_t *s)
{
    MDB_envinfo info;
    int fd;
    if (mdb_env_info(s->env, &info) != 0 || mdb_env_get_fd(s->env, &fd) != 0)
        return !s->tight;
    size_t used = (size_t)info.me_last_pgno + 1;
    uint64_t now = kvs_now_ns() / 1000000;
    s->room_asked_ms = now;
    /* Blocks past the end of the file, which stays as LMDB wrote it:
     * LMDB's writes there then need no new blocks. */
    int rc = fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)used * (off_t)s->psize,
                       (off_t)DELETE_ROOM_PAGES * (off_t)s->psize) == 0
                 ? 0
                 : errno;
    uint64_t no_room;
    if (kvs_test_hook_u64("KVS_TEST_NO_ROOM", &no_room) && no_room != 0) {
        static int said;
        if (!said++)
            kvs_warn("test hook: the disk is taken to give no room for deletes "
                     "(KVS_TEST_NO_ROOM)");
        rc = ENOSPC; /* what tight decides, seen on a disk with space */
    }
    if (rc == 0) {
        s->room_end = used + DELETE_ROOM_PAGES;
        return 1;
    }
    if (node_store_err_code(rc) == KVS_EFULL)
        return 0;
    if (rc == EOPNOTSUPP || rc == ENOSYS) { /* a file system without fallocate: no room kept */
        s->room_end = SIZE_MAX;
        kvs_warn("cannot allocate room for deletes past the data file's end (%s): on a full "
                 "disk, deletes may fail too",
                 strerror(rc));
        return 1;
    }
    /* Anything else (EINTR, EIO): no change now, asked again after the
     * next commit that grows the file. */
    if (kvs_log_budget_take(&s->write_errs, now))
        kvs_warn("cannot allocate room for deletes past the data file's end: %s; asked again "
                 "at the next commit",
                 strerror(rc));
    return !s->tight;
}

/* While tight: asks for the room again; returns 1 (and says so) when the
 * disk has it now. */
static int room_again(node_store_t *s)
{
    if (!ask_room(s))
        return 0;
    /* tight for a disk nearly full (keep_growth): once it has twice the
     * free space that made it so (a disk whose free space swings around
     * the mark, another writer's, flapped 100 times a minute) */
    if (s->tight_low && out_of_room(s, (uint64_t)2 * GROWTH_MIN_FREE_PAGES * s->psize))
        return 0;
    kvs_info("the disk has room again: writes are taken again");
    s->tight = 0;
    if (s->tight_cb != NULL)
        s->tight_cb(s->tight_arg, 0);
    s->tight_low = 0;
    s->free_at_ms = 0;
    return 1;
}

/* One line of mdb_reader_list: "pid thread txnid", the txnid "-" for a
 * reader slot that holds no snapshot now; keeps the least txnid held. */
static int reader_line(const char *msg, void *ctx)
{
    size_t *oldest = ctx;
    long long pid;
    char thread[64];
    unsigned long long txnid;
    if (sscanf(msg, "%lld %63s %llu", &pid, thread, &txnid) == 3 && txnid < *oldest)
        *oldest = (size_t)txnid;
    return 0;
}

/* The freed pages LMDB may reuse now are those of transactions before the
 * last one and before every snapshot a reader holds (a router's local
 * reads, a digest, a snapshot copy): the id they must come before. */
static size_t reusable_before(node_store_t *s, size_t last_txnid)
{
    size_t oldest = last_txnid;
    if (mdb_reader_list(s->env, reader_line, &oldest) < 0)
        return last_txnid;
    return oldest;
}

/* Notes that the disk cannot give the room, what is left of it and the
 * pages earlier commits freed, for room_refuses. No txn may be open. */
static void go_tight(node_store_t *s)
{
    MDB_envinfo info;
    MDB_txn *txn;
    MDB_cursor *c;
    int64_t n = -1;
    if (!s->tight && s->tight_low)
        kvs_warn("the disk has %llu KiB free past the %zu KiB kept for deletes, less than "
                 "%zu KiB: writes that add data are refused (507) until it has, or taken into "
                 "space deletes freed; deletes go on",
                 (unsigned long long)(s->free_known / 1024),
                 (size_t)DELETE_ROOM_PAGES * s->psize / 1024,
                 (size_t)GROWTH_MIN_FREE_PAGES * s->psize / 1024);
    else if (!s->tight)
        kvs_warn("the disk has no room for the %zu KiB kept past the data for deletes: writes "
                 "that add data are refused (507) until it has, deletes go on",
                 (size_t)DELETE_ROOM_PAGES * s->psize / 1024);
    if (!s->tight && s->tight_cb != NULL)
        s->tight_cb(s->tight_arg, 1);
    s->tight = 1;
    s->tight_room = 0;
    s->tight_free = 0;
    s->tight_run = 0;
    s->tight_later = 0;
    if (mdb_env_info(s->env, &info) != 0)
        return;
    size_t used = (size_t)info.me_last_pgno + 1;
    s->tight_room = s->room_end > used ? s->room_end - used : 0;
    /* Pages the last commit freed are not reusable before the next one
     * (LMDB keeps the previous snapshot whole), nor are those a reader's
     * snapshot may read: not counted. */
    size_t before = reusable_before(s, (size_t)info.me_last_txnid);
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) == 0) {
        if (mdb_cursor_open(txn, 0, &c) == 0) { /* 0: the freelist */
            n = count_free(c, 0, before, &s->tight_run, &s->tight_later);
            mdb_cursor_close(c);
        }
        if (n < 0)
            s->tight_later = 0;
        mdb_txn_abort(txn);
    }
    s->tight_free = n > 0 ? (size_t)n : 0;
}

/* After a commit (and at open, no txn open): keeps the room, or goes tight
 * when the disk cannot give it. `failed`: the commit failed for want of
 * room, so the room is asked for whatever is left of it. */
static void keep_room(node_store_t *s, int failed)
{
    MDB_envinfo info;
    if (!s->tight && !failed && mdb_env_info(s->env, &info) == 0 &&
        s->room_end >= (size_t)info.me_last_pgno + 1 + DELETE_ROOM_PAGES)
        return; /* the file did not grow into the room: no system call */
    if (s->tight ? !room_again(s) : !ask_room(s))
        go_tight(s);
}

/* Whether writes that add data, priced `pages` (at their worst) for
 * `bytes` of keys and values, must be refused: the disk is tight, and they
 * and the open batch's writes do not fit what may be used: the room above
 * TIGHT_KEEP_PAGES, and the pages earlier commits freed (reusable now),
 * except for `bytes` that may hold a value of several pages (which needs
 * them in a row: freed pages seldom are, so it takes new ones). LMDB takes
 * freed pages first; should it not, a batch takes TIGHT_BATCH_PAGES of the
 * room at most: deletes keep TIGHT_KEEP_PAGES - TIGHT_BATCH_PAGES of it at
 * least. A write priced over TIGHT_BATCH_PAGES (a value of 128 KiB and
 * more) is a batch of its own, taken only on freed pages: all it may
 * take, its value's in one run. A disk that filled up once stays tight
 * while the data file holds what deletes freed (it never shrinks), and
 * such values were refused for good, whatever the deletes had freed. */
static int room_short(const node_store_t *s, size_t pages, size_t bytes)
{
    /* with the open batch, or in a batch of its own after it commits */
    size_t batch =
        s->wtxn != NULL && !s->alone && s->op_pages + pages <= s->txn_budget ? s->op_pages : 0;
    if (pages > TIGHT_BATCH_PAGES) /* alone, on freed pages only: its value's in a row */
        return pages_of(s, bytes) > s->tight_run || pages > s->tight_free;
    size_t usable = s->tight_room > TIGHT_KEEP_PAGES ? s->tight_room - TIGHT_KEEP_PAGES : 0;
    if (bytes < s->psize / 2 || pages_of(s, bytes) <= s->tight_run)
        usable += s->tight_free;
    return pages > TIGHT_BATCH_PAGES || batch + pages > usable;
}

static int recommit(node_store_t *s, const char *what);
static int batch_commit(node_store_t *s);

/* Pages the last commit freed become reusable only after one more commit;
 * while every write that adds data is refused, none comes (one Hclear on a
 * full disk freed megabytes, and writes got 507 until the worker
 * restarted). So a write refused for want of room, with no batch open and
 * more than TIGHT_LATER_MIN pages waiting so, first commits once with
 * nothing in it and counts again; that commit frees a few pages of its
 * own, fewer than TIGHT_LATER_MIN, so it does not repeat (and should it
 * free more, a flood of refused writes still costs at most one such
 * commit per ROOM_RETRY_MS). */
#define TIGHT_LATER_MIN 8

/* How long a look at the disk's free space is taken as still true (other
 * writers, other shards, share the disk). */
#define FREE_LOOK_MS 100

/* What a batch of `bytes` of keys and values grows the data file by, to
 * weigh against the disk's free space: the pages its bytes fill, and a
 * path. Not the worst case (every write's path copied and split): right
 * for the map, but it is ten times and more what a batch grows the file
 * by, and a disk with room refused writes (an Hmset of 60,000 pairs of a
 * byte with 58 MiB free) and stopped Kafka records with 5 MiB free. Nor a
 * leaf copied for each write of a batch of small ones spread over a
 * table: LMDB hands out pages earlier commits freed first, the room takes
 * what this misses, and a disk with less than GROWTH_MIN_FREE_PAGES free
 * is taken for full anyway. What the estimate must not miss is the large
 * value (a probe's 1 MiB one with 768 KiB free), and that is its bytes. */
static size_t growth_of(const node_store_t *s, size_t bytes)
{
    return pages_of(s, bytes) + 2 * (size_t)s->depth + 16;
}

/* The disk's free space, looked at again when the last look is older than
 * FREE_LOOK_MS or says less than `want` bytes. */
static uint64_t free_now(node_store_t *s, uint64_t want)
{
    uint64_t now = kvs_now_ns() / 1000000;
    if (want > s->free_known || now - s->free_at_ms >= FREE_LOOK_MS) {
        s->free_known = disk_free(s);
        s->free_at_ms = now;
    }
    return s->free_known;
}

/* A write that adds data, priced `pages` for `bytes`, is about to join or
 * open a batch while the worker is not tight. A batch grows the data file
 * into the room kept for deletes first, and the room is then taken again
 * from the free space: a batch that grew the file by more than that took
 * the room for good (a probe: a single 1 MiB value on a disk with 768 KiB
 * free was taken, and once the rest filled up every delete and Hclear got
 * 507). So the batch's growth (growth_of) must fit the disk's free space:
 * when it would not with the open batch, that batch commits first; a
 * write that does not fit alone is refused (KVS_EFULL); and a disk with
 * less than GROWTH_MIN_FREE_PAGES free makes the worker tight, with its
 * room whole, for the tight rules to decide. Returns 0 (go on, tight or
 * not), KVS_EFULL, or the open batch's commit error. */
static int keep_growth(node_store_t *s, size_t pages, size_t bytes)
{
    if (s->tight || s->room_end == SIZE_MAX)
        return 0; /* (SIZE_MAX: no room is kept, no fallocate) */
    int joins = s->wtxn != NULL && !s->alone && batch_pages(s, pages, bytes) <= s->txn_budget;
    size_t batch = growth_of(s, (joins ? s->bytes : 0) + bytes);
    uint64_t free = free_now(s, (uint64_t)batch * s->psize);
    if ((uint64_t)batch * s->psize <= free && free >= (uint64_t)GROWTH_MIN_FREE_PAGES * s->psize)
        return 0;
    if (joins && (uint64_t)growth_of(s, bytes) * s->psize <= free) {
        int rc = batch_commit(s); /* the write opens a batch of its own */
        if (rc != 0 || s->tight)
            return rc;
        free = free_now(s, (uint64_t)growth_of(s, bytes) * s->psize);
    }
    if (free < (uint64_t)GROWTH_MIN_FREE_PAGES * s->psize) {
        int rc = s->wtxn != NULL ? batch_commit(s) : 0; /* go_tight counts with no txn open */
        if (rc == 0 && !s->tight) {
            s->tight_low = 1;
            go_tight(s);
        }
        return rc;
    }
    return (uint64_t)growth_of(s, bytes) * s->psize <= free ? 0 : KVS_EFULL;
}

static int room_refuses(node_store_t *s, size_t pages, size_t bytes)
{
    if (!s->tight)
        return 0;
    uint64_t now = kvs_now_ns() / 1000000;
    if (now - s->room_asked_ms >= ROOM_RETRY_MS && room_again(s))
        return 0;
    /* A write priced over TIGHT_BATCH_PAGES is a batch of its own on freed
     * pages, so it is weighed against them once the open batch (a large
     * write just before it, say) committed and took its share: counted
     * before, two such writes in one turn both passed, and the second took
     * the deletes' room. */
    if (pages > TIGHT_BATCH_PAGES && s->wtxn != NULL) {
        if (batch_commit(s) != 0)
            return 1;
        if (!s->tight)
            return 0;
    }
    if (!room_short(s, pages, bytes))
        return 0;
    if (s->wtxn != NULL || s->broken || s->tight_later <= TIGHT_LATER_MIN ||
        (s->later_ms != 0 && now - s->later_ms < ROOM_RETRY_MS))
        return 1;
    s->tight_later = 0;
    s->later_ms = now;
    if (recommit(s, "commit to reuse the pages the last commit freed") != 0)
        return 1;
    go_tight(s);
    return room_short(s, pages, bytes);
}

/* Whether a write that adds data, priced `pages` for `bytes`, is refused
 * for want of room (KVS_EFULL), or its open batch failed to commit first
 * (keep_growth); 0 to go on. Not inside a reservation: it was weighed as
 * a whole when made. */
static int adding_refused(node_store_t *s, size_t pages, size_t bytes)
{
    if (s->reserved)
        return 0;
    int rc = keep_growth(s, pages, bytes);
    return rc != 0 ? rc : room_refuses(s, pages, bytes) ? KVS_EFULL : 0;
}

/* ---- batches ----------------------------------------------------------- */

static void read_release(node_store_t *s)
{
    if (s->rtxn_live) {
        mdb_txn_reset(s->rtxn);
        s->rtxn_live = 0;
    }
}

static MDB_txn *read_txn(node_store_t *s)
{
    if (s->wtxn != NULL)
        return s->wtxn;
    if (s->broken)
        return NULL; /* every txn would be MDB_PANIC */
    if (!s->rtxn_live) {
        int rc = mdb_txn_renew(s->rtxn);
        if (rc != 0) {
            map_err("mdb_txn_renew", rc);
            return NULL;
        }
        s->rtxn_live = 1;
    }
    return s->rtxn;
}

static size_t pages_of(const node_store_t *s, size_t bytes)
{
    return (bytes + s->psize - 1) / s->psize;
}

/* Worst case of one write of `bytes` (key and value): a copy of every page
 * on its path and a split on every level (two pages per level, and a new
 * root), plus the overflow pages of a large value. */
static size_t write_pages(const node_store_t *s, size_t bytes)
{
    return 2 * (size_t)s->depth + 3 + pages_of(s, bytes);
}

/* Worst-case pages the open batch dirties if it takes writes priced
 * `op_pages` (write_pages each) and `bytes` more. The smaller of two
 * bounds: the sum of the writes' worst cases, and a bound by size, since a
 * txn copies no page twice: every page in use copied once and split once,
 * plus four pages per page of bytes written. Many small writes thus cost
 * about their bytes, not a path each. On top, what the commit writes
 * itself: the freelist record (8 bytes per page freed) and table records. */
static size_t batch_pages(const node_store_t *s, size_t op_pages, size_t bytes)
{
    size_t by_ops = s->op_pages + op_pages;
    size_t by_size = 2 * s->used + 4 * pages_of(s, s->bytes + bytes) + 2 * (size_t)s->depth + 16;
    size_t pages = by_ops < by_size ? by_ops : by_size;
    return pages + pages / 128 + 16;
}

/* After a failed commit or write (no txn open): whether LMDB gave up on the
 * environment. It does when writing a meta page failed (MDB_FATAL_ERROR, a
 * flag it does not show: from then on every txn, read or write, begins
 * with MDB_PANIC), and only then: a failed page write or fdatasync before
 * the meta page fails the commit and leaves the environment as it was. */
static int gave_up(node_store_t *s)
{
    if (s->broken)
        return 1;
    MDB_txn *t = NULL;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t);
    if (rc == 0) {
        mdb_txn_abort(t);
        return 0;
    }
    if (rc != MDB_PANIC)
        return 0; /* (no reader slot: not a sign of anything) */
    s->broken = 1;
    kvs_error("LMDB gave up on the environment after writing a commit's meta page failed (%s): "
              "whether that commit is on disk is not known, and nothing can be read or written "
              "until the environment is opened afresh",
              mdb_strerror(rc));
    return 1;
}

/* Tells the owner, once, that the environment is unusable (gave_up). */
static void say_broken(node_store_t *s)
{
    if (s->broken == 1 && s->broken_cb != NULL) {
        s->broken = 2;
        s->broken_cb(s->broken_arg);
    }
}

/* ---- dropping emptied tables (see the top of this file) ------------------- */

static void forget_dropped(node_store_t *s)
{
    for (uint32_t i = 0; i < s->n_dropped; i++)
        free(s->dropped[i].name);
    s->n_dropped = 0;
}

/* The batch that dropped s->dropped did not commit (no txn is open): the
 * tables from before it are there as they were, and LMDB closed their
 * handles; open them again (in a write txn that writes nothing: it needs
 * no reader slot, and its commit makes the handles the environment's),
 * marked to be looked at by the next commit. Should that fail (out of
 * memory), the environment counts as broken, so that the worker exits and
 * the next one opens every table: a table left without a handle would read
 * as missing. Returns 0, or -1 when it counted the environment broken
 * (nothing to do when LMDB gave up on it already: gave_up first). */
static int restore_dropped(node_store_t *s)
{
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    if (s->n_dropped == 0 || s->broken) {
        forget_dropped(s);
        return 0;
    }
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    for (uint32_t i = 0; rc == 0 && i < s->n_dropped; i++) {
        rc = mdb_dbi_open(txn, s->dropped[i].name, 0, &dbi);
        if (rc == 0 && kvs_dbimap_add(&s->tables, s->dropped[i].name, dbi, 1) != 0)
            rc = ENOMEM;
        if (rc == 0) {
            kvs_dbimap_lookup(&s->tables, s->dropped[i].name)->mark = T_EMPTIED;
            s->emptied = 1;
        }
    }
    if (txn != NULL)
        rc = rc == 0 ? mdb_txn_commit(txn) : (mdb_txn_abort(txn), rc);
    kvs_dbimap_settle(&s->tables, rc != 0); /* pending until that commit */
    if (rc != 0) {
        s->broken = 1;
        kvs_error("cannot open again %u table(s) a failed batch had dropped (%s): the "
                  "environment counts as broken, and the worker restarts to open them afresh",
                  s->n_dropped, mdb_strerror(rc));
    }
    forget_dropped(s);
    return rc != 0 ? -1 : 0;
}

/* Batch `gen` failed: the latest, and one of those node_store_gen_failed
 * remembers. */
static void note_failed(node_store_t *s, uint64_t gen)
{
    s->failed_gens[s->n_failed++ % FAILED_GENS] = gen;
}

/* Fails the open batch with `err` (a KVS_E* code): LMDB cannot undo part
 * of a txn, so the whole batch is aborted and its generation reported. */
static int batch_abort(node_store_t *s, int err)
{
    s->reserve_err = err; /* the rest of a reservation must not start anew */
    uint64_t gen = s->gen;
    note_failed(s, gen);
    s->failed_batches++;
    s->batch_writes = 0;
    mdb_txn_abort(s->wtxn);
    read_release(s);
    s->wtxn = NULL;
    s->gen = 0;
    kvs_dbimap_settle(&s->tables, 1);
    if (gave_up(s) || restore_dropped(s) != 0)
        err = KVS_EBROKEN;
    if (err == KVS_EFULL)
        keep_room(s, 1);
    if (s->fail_cb != NULL)
        s->fail_cb(s->fail_arg, gen, err);
    say_broken(s);
    return err;
}

/* A write failed inside the batch: LMDB has poisoned the txn. */
static int batch_fail(node_store_t *s, const char *what, int rc)
{
    return batch_abort(s, write_err(s, what, rc));
}

/* Whether the commit of txn `txnid`, which succeeded, wrote a meta page:
 * LMDB writes none for a txn that changed nothing (a batch whose only
 * request was refused before it wrote), and then the environment's last
 * txn is still the one before. */
static int wrote_meta(node_store_t *s, size_t txnid)
{
    MDB_envinfo info;
    return mdb_env_info(s->env, &info) == 0 && info.me_last_txnid == txnid;
}

static int batch_commit(node_store_t *s)
{
    if (s->wtxn == NULL)
        return 0;
    int drc = drop_emptied(s);
    if (drc != 0)
        return drc; /* the batch failed */
    uint64_t t0 = kvs_now_ns();
    size_t txnid = mdb_txn_id(s->wtxn);
    int rc = mdb_txn_commit(s->wtxn); /* frees the txn, also when it fails */
    uint64_t gen = s->gen, writes = s->batch_writes;
    s->wtxn = NULL;
    s->gen = 0;
    s->batch_writes = 0;
    if (rc == 0) {
        kvs_hist_observe(&s->hist_commit, kvs_latency_bounds_ns, KVS_LATENCY_BUCKETS,
                         kvs_now_ns() - t0);
        kvs_hist_observe(&s->hist_writes, node_store_batch_bounds, NODE_BATCH_BUCKETS, writes);
    } else {
        s->failed_batches++;
    }
    if (rc != 0) {
        /* LMDB writes the meta page last: a commit that failed before it
         * left the previous state whole, and nothing of the batch is
         * stored; say so. One that failed writing it may be stored or not
         * (KVS_EBROKEN, gave_up). */
        int err = write_err(s, "commit", rc);
        kvs_dbimap_settle(&s->tables, 1);
        note_failed(s, gen);
        s->resync = s->meta_unsynced; /* its fdatasync may be what failed (ENOSPC too) */
        read_release(s);
        if (gave_up(s) || restore_dropped(s) != 0)
            err = KVS_EBROKEN;
        if (err == KVS_EFULL)
            keep_room(s, 1); /* tight at once, not at the next commit that grows the file */
        if (s->fail_cb != NULL)
            s->fail_cb(s->fail_arg, gen, err);
        say_broken(s);
        return err;
    }
    kvs_dbimap_settle(&s->tables, 0);
    forget_dropped(s);
    read_release(s); /* a snapshot from before this commit must not be read again */
    MDB_envinfo info;
    if (mdb_env_info(s->env, &info) == 0 && (size_t)info.me_last_pgno + 1 > s->used) {
        /* the room is taken again from the free space: by what the file grew */
        uint64_t grew = (uint64_t)((size_t)info.me_last_pgno + 1 - s->used) * s->psize;
        s->free_known = s->free_known > grew ? s->free_known - grew : 0;
    }
    keep_room(s, 0);
    if (s->resync && wrote_meta(s, txnid))
        s->resync = 0; /* a new meta page, for the next sync to write: no recommit needed */
    return 0;
}

/* Whether `bytes` more of address space can be mapped now. */
static int map_fits(uint64_t bytes)
{
    if (bytes == 0)
        return 1;
    void *p =
        mmap(NULL, (size_t)bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return 0;
    munmap(p, (size_t)bytes);
    return 1;
}

/* Grows the map when less than a quarter (or MIN_FREE_PAGES) is free, when
 * `need` pages would not fit twice, or after an MDB_MAP_FULL. No txn may be
 * active. Returns 0, or -ENOMEM when it should grow and cannot (logged). */
static int map_grow(node_store_t *s, size_t need)
{
    size_t total = s->map_size / s->psize;
    size_t free_pages = total > s->used ? total - s->used : 0;
    size_t want = need * 2;
    if (want < MIN_FREE_PAGES)
        want = MIN_FREE_PAGES;
    if (want < total / 4)
        want = total / 4;
    if (free_pages >= want && !s->grow)
        return 0;
    if (s->pins > 0)
        return 0; /* another thread reads the map: it must not move (batch_begin says so) */
    uint64_t size = s->grow ? s->map_size * 2 : s->map_size;
    while (size / s->psize < s->used + want)
        size *= 2;
    /* A map that cannot be had (RLIMIT_AS, overcommit) is better refused
     * than failed: mdb_env_set_mapsize unmaps first and leaves nothing
     * mapped if the new map fails. So the growth is tried out first (an
     * unused mapping of what it adds), and when it does not fit, the
     * least growth that holds the batch twice. */
    uint64_t least =
        ((uint64_t)(s->used + need * 2) * s->psize + (1u << 20) - 1) & ~(uint64_t)((1u << 20) - 1);
    if (!map_fits(size - s->map_size))
        size = least > s->map_size && map_fits(least - s->map_size) ? least : 0;
    if (size == 0) {
        if (kvs_log_budget_take(&s->write_errs, kvs_now_ns() / 1000000))
            kvs_error("the LMDB map cannot grow from %llu MiB: no address space for the larger "
                      "map (%s: RLIMIT_AS, ulimit -v, or the kernel's overcommit rules); writes "
                      "that need more room are refused until it can, reads go on",
                      (unsigned long long)(s->map_size >> 20), strerror(ENOMEM));
        return -ENOMEM;
    }
    s->grow = 0;
    read_release(s);
    /* Without a write map this only remaps: it costs address space, not
     * disk. mdb_env_set_mapsize unmaps before it remaps, so if it fails the
     * env is unusable. */
    int rc = mdb_env_set_mapsize(s->env, (size_t)size);
    if (rc != 0) {
        kvs_error("mdb_env_set_mapsize to %llu bytes failed: %s; the environment is unusable, "
                  "exiting (the router restarts this worker; committed data is safe)",
                  (unsigned long long)size, mdb_strerror(rc));
        abort();
    }
    kvs_info("map size grown from %llu to %llu MiB", (unsigned long long)(s->map_size >> 20),
             (unsigned long long)(size >> 20));
    s->map_size = size;
    return 0;
}

/* Frees the reader slots of processes that died: a slot that held a
 * snapshot keeps every page freed after it from being reused, and the file
 * grows instead for as long as it stays. `dir` names the environment in
 * the log line (NULL: the shard's log prefix says it). */
static void clear_dead_readers(node_store_t *s, const char *dir)
{
    int dead = 0;
    mdb_reader_check(s->env, &dead);
    if (dead > 0)
        kvs_info("%s%scleared %d reader slot(s) left by processes that died", dir ? dir : "",
                 dir ? ": " : "", dead);
}

/* Pages in use grew past what they were at the last look for dead
 * readers' slots (by an eighth): look again. Routers reading the
 * environment look every second, but none may be running (local reads
 * off, every router process restarting) while the slot of a reader killed
 * holding a snapshot (a router process, a backup tool) makes every write
 * grow the file; the growth is what calls for the look, so it costs
 * nothing while the file keeps its size. */
static void watch_dead_readers(node_store_t *s)
{
    if (s->used <= s->check_at)
        return;
    if (s->check_at > 0)
        clear_dead_readers(s, NULL);
    s->check_at = s->used + s->used / 8 + 64;
}

/* Opens a batch that starts with writes priced `op_pages` and `bytes`,
 * growing the map first if their worst case would not fit. */
static int batch_begin(node_store_t *s, size_t op_pages, size_t bytes)
{
    if (s->broken)
        return KVS_EBROKEN; /* every txn would be MDB_PANIC (gave_up said why) */
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    s->used = (size_t)info.me_last_pgno + 1;
    watch_dead_readers(s);
    s->op_pages = 0;
    s->bytes = 0;
    size_t need = batch_pages(s, op_pages, bytes);
    int grown = map_grow(s, need);
    size_t total = s->map_size / s->psize;
    if (grown != 0 && (total < s->used || total - s->used < need))
        return grown; /* the map cannot hold the batch and cannot grow */
    if (s->pins > 0 && (total < s->used || total - s->used < 2 * need))
        return -EAGAIN; /* the map would have to grow under a snapshot or digest */
    size_t budget = (total - s->used) / 2;
    if (budget > MAX_BATCH_PAGES)
        budget = MAX_BATCH_PAGES;
    s->alone = 0;
    if (s->tight && budget > TIGHT_BATCH_PAGES)
        budget = TIGHT_BATCH_PAGES; /* each commit fits what is left of the room */
    if (budget < need) {
        s->alone = s->tight; /* one request larger than that: no other joins its fate */
        budget = need;
    }
    int rc = mdb_txn_begin(s->env, NULL, 0, &s->wtxn);
    if (rc != 0) {
        s->wtxn = NULL;
        return map_err("mdb_txn_begin", rc);
    }
    s->gen = ++s->next_gen;
    if (s->wake != NULL)
        s->wake(s->wake_arg);
    s->op_pages = op_pages;
    s->bytes = bytes;
    s->txn_budget = budget;
    return 0;
}

/* Makes sure a write of `bytes` can join the batch without MDB_MAP_FULL:
 * opens the batch, or commits it early and opens a new one when the
 * worst-case estimate would exceed its budget. */
static int batch_room(node_store_t *s, size_t bytes)
{
    if (s->reserved) /* paid for by node_store_reserve; never split a reservation */
        return s->wtxn != NULL ? 0 : s->reserve_err;
    size_t pages = write_pages(s, bytes);
    if (s->wtxn != NULL && !s->alone && batch_pages(s, pages, bytes) <= s->txn_budget) {
        s->op_pages += pages;
        s->bytes += bytes;
        return 0;
    }
    int rc = batch_commit(s);
    return rc != 0 ? rc : batch_begin(s, pages, bytes);
}

/* After a write to `dbi` succeeded: the reservation (if any) now holds a
 * write, and the tree may have grown a level. Returns the keys `dbi` now
 * holds (SIZE_MAX when unknown). */
static size_t wrote(node_store_t *s, MDB_dbi dbi)
{
    MDB_stat st;
    s->batch_writes++;
    s->reserve_wrote |= s->reserved;
    if (mdb_stat(s->wtxn, dbi, &st) != 0)
        return SIZE_MAX;
    if (st.ms_depth > s->depth)
        s->depth = st.ms_depth;
    return st.ms_entries;
}

/* A delete (or clear) in the open batch left table `e` with no key: marked
 * for drop_emptied, unless bound; the drop's path in the main database is
 * priced in the batch now. */
static void note_emptied(node_store_t *s, kvs_dbimap_entry_t *e)
{
    if ((e->mark & (T_BOUND | T_EMPTIED)) != 0)
        return;
    e->mark |= T_EMPTIED;
    s->emptied = 1;
    s->op_pages += write_pages(s, 0);
}

/* Drops, in the open batch, the tables marked T_EMPTIED that still hold no
 * key (a later write of the batch may have filled one again), and takes
 * them out of the handle cache: their names wait in s->dropped until the
 * batch ends. Not while other threads read the environment (pins): the
 * marks stay for a later commit. Returns 0, or the error that failed the
 * batch. */
static int drop_emptied(node_store_t *s)
{
    int rc = 0;
    if (!s->emptied || s->pins > 0 || s->wtxn == NULL)
        return 0;
    for (uint32_t i = 0; rc == 0 && i < s->tables.cap; i++) {
        kvs_dbimap_entry_t *e = &s->tables.slots[i];
        MDB_stat st;
        if (e->name == NULL || (e->mark & T_EMPTIED) == 0)
            continue;
        if ((rc = mdb_stat(s->wtxn, e->dbi, &st)) != 0)
            break; /* the mark stays: looked at again by a later commit */
        if (st.ms_entries == 0 && (rc = mdb_drop(s->wtxn, e->dbi, 1)) != 0)
            break;
        e->mark = (e->mark & ~T_EMPTIED) | (st.ms_entries == 0 ? T_DROPPED : 0);
    }
    s->emptied = rc != 0;
    /* A table made in this batch (pending) is gone with it whatever
     * happens: only those from before it are kept to be opened again, each
     * at most once however often its name is made and dropped in the
     * batch (made again, it is pending), so s->dropped holds at most
     * max_tables. */
    uint32_t n = kvs_dbimap_take(&s->tables, T_DROPPED, s->taken);
    for (uint32_t i = 0; i < n; i++) {
        if (s->taken[i].pending)
            free(s->taken[i].name);
        else
            s->dropped[s->n_dropped++] = s->taken[i];
    }
    return rc != 0 ? batch_fail(s, "mdb_drop", rc) : 0;
}

int node_store_reserve(node_store_t *s, size_t ops, size_t bytes, int adds)
{
    /* each write's worst case, and each value's rounding to whole pages */
    size_t pages = ops * (write_pages(s, 0) + 1) + pages_of(s, bytes);
    int refused = adds ? adding_refused(s, pages, bytes) : 0;
    if (refused != 0)
        return refused;
    if (s->wtxn == NULL || s->alone || batch_pages(s, pages, bytes) > s->txn_budget) {
        int rc = batch_commit(s);
        if (rc == 0)
            rc = batch_begin(s, pages, bytes);
        if (rc != 0)
            return rc;
    } else {
        s->op_pages += pages;
        s->bytes += bytes;
    }
    s->reserved = 1;
    s->reserve_wrote = 0;
    s->reserve_err = KVS_ESTORE;
    return 0;
}

int node_store_reserve_end(node_store_t *s, int rc)
{
    int wrote_some = s->reserve_wrote;
    s->reserved = 0;
    s->reserve_wrote = 0;
    if (rc != 0 && wrote_some && s->wtxn != NULL)
        return batch_abort(s, rc); /* no prefix of the reservation may commit */
    return rc;
}

uint64_t node_store_batch_gen(const node_store_t *s)
{
    return s->gen;
}

uint64_t node_store_last_failed_gen(const node_store_t *s)
{
    return s->n_failed > 0 ? s->failed_gens[(s->n_failed - 1) % FAILED_GENS] : 0;
}

int node_store_gen_failed(const node_store_t *s, uint64_t gen)
{
    size_t kept = s->n_failed < FAILED_GENS ? s->n_failed : FAILED_GENS;
    uint64_t oldest = UINT64_MAX;
    for (size_t i = 0; i < kept; i++) {
        if (s->failed_gens[i] == gen)
            return 1;
        oldest = s->failed_gens[i] < oldest ? s->failed_gens[i] : oldest;
    }
    /* Older than the failures the ring still holds, once it has let some
     * go: not known, so taken for failed. */
    return s->n_failed > FAILED_GENS && gen < oldest;
}

int node_store_end_turn(node_store_t *s)
{
    int rc = batch_commit(s);
    read_release(s);
    return rc;
}

/* ---- data ---------------------------------------------------------------- */

static int table_dbi(node_store_t *s, const char *table, int create, MDB_dbi *dbi)
{
    const kvs_dbimap_entry_t *t = kvs_dbimap_find(&s->tables, table);
    if (t != NULL) {
        *dbi = t->dbi;
        return 0;
    }
    if (!create)
        return KVS_ENOTFOUND;
    if (s->tables.n >= s->tables.max_entries) {
        int rc = drop_emptied(s); /* room an emptied table holds */
        if (rc != 0)
            return rc;
        if (s->tables.n >= s->tables.max_entries)
            return KVS_ELIMIT;
    }
    int rc = mdb_dbi_open(s->wtxn, table, MDB_CREATE, dbi);
    if (rc == MDB_DBS_FULL)
        return KVS_ELIMIT; /* refused before anything was written */
    if (rc != 0)
        return batch_fail(s, "mdb_dbi_open", rc);
    return kvs_dbimap_add(&s->tables, table, *dbi, 1);
}

int node_store_get(node_store_t *s, const char *table, const void *key, size_t klen,
                   node_slice_t *val)
{
    MDB_dbi dbi;
    int rc = table_dbi(s, table, 0, &dbi);
    if (rc != 0)
        return rc;
    MDB_txn *txn = read_txn(s);
    if (txn == NULL)
        return KVS_ESTORE;
    return kvs_lmdb_get(txn, dbi, key, klen, val);
}

int node_store_put(node_store_t *s, const char *table, const void *key, size_t klen,
                   const void *val, size_t vlen)
{
    int rc = adding_refused(s, write_pages(s, klen + vlen), klen + vlen);
    if (rc != 0)
        return rc;
    rc = batch_room(s, klen + vlen);
    if (rc != 0)
        return rc;
    MDB_dbi dbi;
    rc = table_dbi(s, table, 1, &dbi);
    if (rc != 0)
        return rc;
    MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
    rc = mdb_put(s->wtxn, dbi, &k, &v, 0);
    if (rc != 0)
        return batch_fail(s, "mdb_put", rc);
    wrote(s, dbi);
    return 0;
}

int node_store_del(node_store_t *s, const char *table, const void *key, size_t klen)
{
    node_slice_t old;
    int rc = node_store_get(s, table, key, klen, &old);
    if (rc != 0)
        return rc;            /* absent: nothing to write, no batch to open */
    rc = batch_room(s, klen); /* may commit early: the entry is looked up after */
    kvs_dbimap_entry_t *e = rc == 0 ? kvs_dbimap_lookup(&s->tables, table) : NULL;
    if (rc != 0 || e == NULL)
        return rc != 0 ? rc : KVS_ENOTFOUND;
    MDB_val k = {klen, (void *)key};
    rc = mdb_del(s->wtxn, e->dbi, &k, NULL);
    if (rc == MDB_NOTFOUND)
        return KVS_ENOTFOUND;
    if (rc != 0)
        return batch_fail(s, "mdb_del", rc);
    if (wrote(s, e->dbi) == 0)
        note_emptied(s, e);
    return 0;
}

/* `table`'s statistics as of the read snapshot (the open batch when one is
 * open); all 0 for a table that does not exist. Returns 0 or an error. */
static int table_stat(node_store_t *s, const char *table, MDB_stat *st)
{
    MDB_dbi dbi;
    memset(st, 0, sizeof(*st));
    if (table_dbi(s, table, 0, &dbi) != 0)
        return 0;
    MDB_txn *txn = read_txn(s);
    if (txn == NULL)
        return KVS_ESTORE;
    int rc = mdb_stat(txn, dbi, st);
    return rc != 0 ? map_err("mdb_stat", rc) : 0;
}

static uint64_t stat_pages(const MDB_stat *st)
{
    return (uint64_t)st->ms_branch_pages + st->ms_leaf_pages + st->ms_overflow_pages;
}

int node_store_table_pages(node_store_t *s, const char *table, uint64_t *pages)
{
    MDB_stat st;
    int rc = table_stat(s, table, &st);
    *pages = stat_pages(&st);
    return rc;
}

/* On a tight disk (Disk, above) a drop's free list, a page number per page
 * of the table, is written whole by its commit: a table of more than
 * clear_drop_pages needs more of the room than a batch may take (a
 * probe's DEL of a 200 MB table got 507 on every try, whatever the room).
 * So its keys are deleted first, in key order, in commits that each free
 * about as many pages (a value's overflow pages and the leaves
 * emptied; the pages a piece copies are its path, reused as it goes), and
 * the rest is dropped. Each piece's commit is for good: a clear that
 * fails midway (the room ran out after all) leaves the keys deleted so
 * far deleted, as a split delete would. */
static size_t clear_drop_pages(const node_store_t *s)
{
    return (size_t)TIGHT_BATCH_PAGES / 2 * s->psize / sizeof(uint64_t); /* a record of 16 pages */
}

static int clear_in_pieces(node_store_t *s, const char *table, uint64_t *deleted)
{
    for (;;) {
        MDB_stat st;
        MDB_cursor *c;
        MDB_val k, v;
        kvs_dbimap_entry_t *e = kvs_dbimap_lookup(&s->tables, table);
        if (e == NULL)
            return KVS_ENOTFOUND;
        int rc = mdb_stat(s->wtxn, e->dbi, &st);
        if (rc != 0)
            return batch_fail(s, "mdb_stat", rc);
        if (s->reserved || !s->tight || stat_pages(&st) <= clear_drop_pages(s))
            return 0; /* a reservation (a Rebuild's clear and offsets) commits whole or not */
        if ((rc = mdb_cursor_open(s->wtxn, e->dbi, &c)) != 0)
            return batch_fail(s, "mdb_cursor_open", rc);
        uint64_t n = 0;
        for (size_t freed = 0; rc == 0 && freed < clear_drop_pages(s);) {
            rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
            if (rc == 0) {
                freed += 1 + (v.mv_size > s->psize / 2 ? pages_of(s, v.mv_size) : 0);
                rc = mdb_cursor_del(c, 0);
                n += rc == 0;
            }
        }
        mdb_cursor_close(c);
        if (rc != 0 && rc != MDB_NOTFOUND)
            return batch_fail(s, "mdb_cursor_del", rc);
        wrote(s, e->dbi);
        size_t next = clear_drop_pages(s) * sizeof(uint64_t); /* the next piece, or the drop */
        if ((rc = batch_commit(s)) != 0)
            return rc;
        *deleted += n;
        /* The batches after the first piece hold this clear alone, and its
         * own answer says what a failure of theirs left (node_store.h): the
         * owner's fail_cb would put "nothing was stored" in its place. */
        s->fail_cb = NULL;
        if ((rc = batch_begin(s, write_pages(s, next), next)) != 0)
            return rc;
    }
}

int node_store_clear(node_store_t *s, const char *table, uint64_t *removed)
{
    MDB_stat st;
    uint64_t deleted = 0, ignored;
    int rc = table_stat(s, table, &st);
    uint64_t pages = stat_pages(&st);
    if (removed == NULL)
        removed = &ignored;
    *removed = rc == 0 ? st.ms_entries : 0;
    if (rc != 0 || pages == 0)
        return rc; /* missing or empty: nothing to write */
    /* What the drop writes is the free list: a page number per page. */
    size_t drop = s->tight && pages > clear_drop_pages(s) ? clear_drop_pages(s) : (size_t)pages;
    node_store_fail_cb fail_cb = s->fail_cb; /* clear_in_pieces may silence it (and it is back) */
    rc = batch_room(s, drop * sizeof(uint64_t));
    if (rc == 0)
        rc = clear_in_pieces(s, table, &deleted);
    kvs_dbimap_entry_t *e = rc == 0 ? kvs_dbimap_lookup(&s->tables, table) : NULL;
    if (rc == 0 && e == NULL)
        rc = KVS_ENOTFOUND;
    if (rc == 0 && (rc = mdb_drop(s->wtxn, e->dbi, 0)) != 0)
        rc = batch_fail(s, "mdb_drop", rc);
    if (rc == 0) {
        wrote(s, e->dbi);
        note_emptied(s, e);
    }
    /* Cleared in pieces: the rest is committed here too, so that what
     * happened is known to the answer (a failure of the turn's commit
     * would say nothing of this request was stored). */
    if (rc == 0 && deleted > 0)
        rc = batch_commit(s);
    s->fail_cb = fail_cb;
    if (rc != 0)
        *removed = deleted; /* committed in pieces before the failure */
    return rc;
}

int node_store_scan(node_store_t *s, const char *table, const void *from, size_t flen,
                    node_store_scan_cb cb, void *arg)
{
    MDB_dbi dbi;
    if (table_dbi(s, table, 0, &dbi) != 0)
        return 0;
    MDB_txn *txn = read_txn(s);
    if (txn == NULL)
        return KVS_ESTORE;
    return kvs_lmdb_scan(txn, dbi, from, flen, cb, arg);
}

int node_store_count(node_store_t *s, const char *table, uint64_t *n)
{
    MDB_dbi dbi;
    *n = 0;
    if (table_dbi(s, table, 0, &dbi) != 0)
        return 0;
    MDB_txn *txn = read_txn(s);
    if (txn == NULL)
        return KVS_ESTORE;
    return kvs_lmdb_count(txn, dbi, n);
}

int node_store_meta_get(node_store_t *s, const char *key, node_slice_t *val)
{
    MDB_txn *txn = read_txn(s);
    if (txn == NULL)
        return KVS_ESTORE;
    return kvs_lmdb_get(txn, s->meta, key, strlen(key), val);
}

int node_store_meta_put(node_store_t *s, const char *key, const void *val, size_t vlen)
{
    int rc = batch_room(s, strlen(key) + vlen);
    if (rc != 0)
        return rc;
    MDB_val k = {strlen(key), (void *)key}, v = {vlen, (void *)val};
    rc = mdb_put(s->wtxn, s->meta, &k, &v, 0);
    if (rc != 0)
        return batch_fail(s, "mdb_put meta", rc);
    wrote(s, s->meta);
    return 0;
}

/* Commits a txn that rewrites the format record as it is, so that LMDB
 * writes a meta page again (the other one of its two), naming everything
 * committed. A commit that writes nothing writes no meta page. */
static int recommit(node_store_t *s, const char *what)
{
    MDB_txn *t = NULL;
    MDB_val k = {sizeof(KVS_SCHEMA_KEY_FORMAT) - 1, (void *)KVS_SCHEMA_KEY_FORMAT}, v;
    char val[64];
    read_release(s);
    int rc = mdb_txn_begin(s->env, NULL, 0, &t);
    if (rc == 0)
        rc = mdb_get(t, s->meta, &k, &v);
    if (rc == 0 && v.mv_size > sizeof(val))
        rc = EINVAL; /* (format_check read it at open: a few digits) */
    if (rc == 0) {
        memcpy(val, v.mv_data, v.mv_size);
        v.mv_data = val;
        rc = mdb_put(t, s->meta, &k, &v, 0);
    }
    if (rc == 0) {
        rc = mdb_txn_commit(t); /* frees it, also when it fails */
        t = NULL;
    }
    if (t != NULL)
        mdb_txn_abort(t);
    read_release(s); /* a snapshot from before this commit must not be read again */
    if (rc != 0 && gave_up(s))
        say_broken(s);
    return rc == 0 ? 0 : write_err(s, what, rc);
}

/* With storage.sync batch a commit leaves its meta page unsynced, for this
 * (or the next commit) to sync. If a sync fails (a commit's own fdatasync
 * too: a failed commit cannot tell which of its calls failed), the kernel
 * may have dropped that page's write-back for good: it stays in memory,
 * marked written, and a later sync that succeeds does not write it. The
 * last commit would then stay undone by power loss however old it grows.
 * So after a failure the next sync first commits anew (recommit): a new
 * meta page, in the other slot, that the sync then writes; unless a commit
 * since wrote one (batch_commit), or the file system has no room for it
 * (RECOMMIT_ROOM_PAGES): then it waits. */
int node_store_sync(node_store_t *s)
{
    int pending = s->resync;
    if (pending && s->wtxn == NULL && !s->broken &&
        out_of_room(s, (uint64_t)RECOMMIT_ROOM_PAGES * s->psize)) {
        /* A full disk: the commit would take the few reusable pages left,
         * which the deletes that make room need. It waits for room; a
         * commit that succeeds meanwhile writes a new meta page instead. */
        if (!s->recommit_said)
            kvs_info("a commit or sync failed since the last sync; the commit anew that writes a "
                     "new meta page waits for room on the file system (or for the next write)");
        s->recommit_said = 1;
    } else if (pending && s->wtxn == NULL && !s->broken) {
        /* once per run of failures: a full disk fails the retry, or the
         * sync after it, every interval */
        if (!s->recommit_said)
            kvs_info("a commit or sync failed since the last sync: committing anew so that a "
                     "meta page naming every commit is written and synced");
        s->recommit_said = 1;
        int rc = recommit(s, "commit after a failed sync");
        if (rc != 0)
            return rc;
        s->recommits++;
        pending = 0;
    }
    int rc = mdb_env_sync(s->env, 1);
    if (rc != 0) {
        s->resync = s->meta_unsynced;
        return write_err(s, "mdb_env_sync", rc);
    }
    s->resync = pending;
    if (!pending)
        s->recommit_said = 0; /* the next failure is announced again */
    return 0;
}

void node_store_stats(const node_store_t *s, node_store_stats_t *out)
{
    MDB_envinfo info;
    memset(out, 0, sizeof(*out));
    if (mdb_env_info(s->env, &info) == 0) {
        out->pages_used = (uint64_t)info.me_last_pgno + 1;
        out->readers = info.me_numreaders;
        out->max_readers = info.me_maxreaders;
    }
    out->map_size = s->map_size;
    out->page_size = s->psize;
    out->tables = s->tables.n;
    out->batch_writes = &s->hist_writes;
    out->commit_ns = &s->hist_commit;
    out->failed_batches = s->failed_batches;
    out->recommits = s->recommits;
}

void node_store_flush_logs(node_store_t *s)
{
    kvs_log_budget_flush(&s->write_errs, kvs_now_ns() / 1000000);
}

const kvs_lmdb_ident_t *node_store_ident(const node_store_t *s)
{
    return &s->ident;
}

uint32_t node_store_tables_emptied(node_store_t *s)
{
    /* Counted once per batch: a client sending refused requests by the
     * thousand costs one walk of up to storage.max_tables per batch. */
    if (s->emptied_gen == s->next_gen + 1)
        return s->emptied_seen;
    uint32_t n = 0;
    MDB_txn *txn = s->emptied ? read_txn(s) : NULL;
    for (uint32_t i = 0; txn != NULL && i < s->tables.cap; i++) {
        const kvs_dbimap_entry_t *e = &s->tables.slots[i];
        MDB_stat st;
        n += e->name != NULL && (e->mark & T_EMPTIED) != 0 && mdb_stat(txn, e->dbi, &st) == 0 &&
             st.ms_entries == 0;
    }
    s->emptied_gen = s->next_gen + 1; /* 0: never counted */
    s->emptied_seen = n;
    return n;
}

uint32_t node_store_unbound_at_open(const node_store_t *s)
{
    return s->unbound_at_open;
}

uint32_t node_store_table_count(const node_store_t *s)
{
    return s->tables.n;
}

uint64_t node_store_map_size(const node_store_t *s)
{
    return s->map_size;
}

/* ---- views and copies for other threads ------------------------------------ */

/* Reads and copies from other threads: MDB_NOTLS lets a read txn live in
 * any thread, and LMDB's readers never block the writer. What must not
 * happen meanwhile is a remap (mdb_env_set_mapsize with a txn of another
 * thread reading the old mapping): pins hold map growth off. */

int node_store_view_open(node_store_t *s, const char *table, node_store_view_t **out)
{
    node_store_view_t *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return -ENOMEM;
    const kvs_dbimap_entry_t *t = table != NULL ? kvs_dbimap_find(&s->tables, table) : NULL;
    if (t != NULL && t->pending) {
        free(v);
        return -EAGAIN; /* created in the open batch: not in any snapshot yet */
    }
    for (uint32_t i = 0; table != NULL && i < s->n_dropped; i++) {
        if (strcmp(s->dropped[i].name, table) == 0) {
            free(v);
            return -EAGAIN; /* dropped in the open batch: still in the last snapshot */
        }
    }
    v->s = s;
    v->has_table = t != NULL;
    v->dbi = v->has_table ? t->dbi : 0;
    s->pins++;
    *out = v;
    return 0;
}

int node_store_view_begin(node_store_view_t *v)
{
    int rc = mdb_txn_begin(v->s->env, NULL, MDB_RDONLY, &v->txn);
    if (rc != 0) {
        v->txn = NULL;
        return map_err("mdb_txn_begin (view)", rc);
    }
    return 0;
}

int node_store_view_meta(node_store_view_t *v, const char *key, node_slice_t *val)
{
    MDB_val k = {strlen(key), (void *)key}, d;
    int rc = mdb_get(v->txn, v->s->meta, &k, &d);
    if (rc != 0)
        return rc == MDB_NOTFOUND ? KVS_ENOTFOUND : map_err("mdb_get meta (view)", rc);
    val->p = d.mv_data;
    val->len = d.mv_size;
    return 0;
}

int node_store_view_scan(node_store_view_t *v, node_store_scan_cb cb, void *arg)
{
    if (!v->has_table)
        return 0;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(v->txn, v->dbi, &cur);
    if (rc != 0)
        return map_err("mdb_cursor_open (view)", rc);
    MDB_val k, d;
    rc = mdb_cursor_get(cur, &k, &d, MDB_FIRST);
    while (rc == 0) {
        node_slice_t ks = {k.mv_data, k.mv_size}, vs = {d.mv_data, d.mv_size};
        if (cb(arg, ks, vs) != 0)
            break;
        rc = mdb_cursor_get(cur, &k, &d, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : map_err("mdb_cursor_get (view)", rc);
}

void node_store_view_end(node_store_view_t *v)
{
    if (v->txn != NULL)
        mdb_txn_abort(v->txn);
    v->txn = NULL;
}

void node_store_view_close(node_store_view_t *v)
{
    if (v == NULL)
        return;
    node_store_view_end(v);
    v->s->pins--;
    free(v);
}

int node_store_view_copy(node_store_view_t *v, int fd)
{
    int rc = mdb_env_copyfd2(v->s->env, fd, MDB_CP_COMPACT);
    if (rc == 0)
        return 0;
    return rc == EPIPE ? -EPIPE : map_err("mdb_env_copyfd2", rc);
}

/* ---- open / close ---------------------------------------------------------- */

static int lock_dir(node_store_t *s, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/kvs.lock", dir);
    s->lock_fd = kvs_lock_file(path);
    if (s->lock_fd == -EBUSY)
        snprintf(err, errlen,
                 "%s is in use by another kvs-node process (lock %s held); stop it first", dir,
                 path);
    else if (s->lock_fd < 0)
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(-s->lock_fd));
    return s->lock_fd < 0 ? s->lock_fd : 0;
}

/* Under kvs.lock: a snapshot copy (node_bootstrap) that a crash cut off
 * left data.mdb.part behind. Once the store opens, no copy runs here any
 * more (the bootstrap holds the same lock, and a worker copies only before
 * it opens its store), so the file is never used: remove it, however the
 * store came to open (a later copy succeeded, cluster.bootstrap: replay,
 * no peer left in the map), rather than leave up to a whole environment's
 * size on the disk. */
static void drop_stale_copy(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/data.mdb.part", dir);
    if (unlink(path) == 0)
        kvs_warn("%s: removed a snapshot copy that a crash interrupted", path);
    else if (errno != ENOENT)
        kvs_warn("%s: cannot remove a snapshot copy that a crash interrupted: %s", path,
                 strerror(errno));
}

/* Checks (or, in a fresh env, records) one identity field in __kvs. */
static int meta_check(MDB_txn *txn, MDB_dbi meta, const char *key, const char *want,
                      const char *dir, char *err, size_t errlen)
{
    MDB_val k = {strlen(key), (void *)key}, v;
    int rc = mdb_get(txn, meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
        v.mv_size = strlen(want);
        v.mv_data = (void *)want;
        rc = mdb_put(txn, meta, &k, &v, 0);
        if (rc != 0)
            snprintf(err, errlen, "%s: cannot write metadata: %s", dir, mdb_strerror(rc));
        return rc == 0 ? 0 : KVS_ESTORE;
    }
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot read metadata: %s", dir, mdb_strerror(rc));
        return KVS_ESTORE;
    }
    if (v.mv_size != strlen(want) || memcmp(v.mv_data, want, v.mv_size) != 0) {
        snprintf(err, errlen,
                 "%s was created with %s \"%.*s\" but this worker has %s \"%s\"; refusing to "
                 "open it (point data_dir elsewhere or start the matching shard/config)",
                 dir, key, (int)v.mv_size, (const char *)v.mv_data, key, want);
        return KVS_EMISMATCH;
    }
    return 0;
}

static void note_depth(node_store_t *s, MDB_txn *txn, MDB_dbi dbi)
{
    MDB_stat st;
    if (mdb_stat(txn, dbi, &st) == 0 && st.ms_depth > s->depth)
        s->depth = st.ms_depth;
}

/* What open_tables found: how many tables are stored, the first few names. */
typedef struct table_census_s {
    uint32_t stored;
    uint32_t missing; /* of the tables the caller needs, not stored yet */
    char names[NAMES_SHOWN][NAME_CAP];
} table_census_t;

/* printf to the end of the string in buf[0..len). */
static void appendf(char *buf, size_t len, const char *fmt, ...)
{
    size_t at = strlen(buf);
    va_list ap;
    va_start(ap, fmt);
    if (at + 1 < len)
        vsnprintf(buf + at, len - at, fmt, ap);
    va_end(ap);
}

/* Refuses more tables than storage.max_tables: LMDB would not open the
 * rest, and their data would silently vanish from every answer. */
static int tables_fit(const node_store_opts_t *o, const table_census_t *c, char *err, size_t errlen)
{
    uint32_t need = c->stored + c->missing;
    uint32_t shown = c->stored < NAMES_SHOWN ? c->stored : NAMES_SHOWN;
    if (need <= o->max_tables)
        return 0;
    snprintf(err, errlen, "%s holds %u table(s)", o->dir, c->stored);
    for (uint32_t i = 0; i < shown; i++)
        appendf(err, errlen, "%s\"%s\"", i == 0 ? " (" : ", ", c->names[i]);
    if (c->stored > shown)
        appendf(err, errlen, " and %u more", c->stored - shown);
    if (shown > 0)
        appendf(err, errlen, ")");
    if (c->missing > 0)
        appendf(err, errlen, " and kafka.bindings need %u more not created yet", c->missing);
    appendf(err, errlen,
            ", but storage.max_tables is %u; set storage.max_tables to at least %u (with a "
            "lower limit some tables would be unreachable)",
            o->max_tables, need);
    return KVS_ELIMIT;
}

/* Opens a handle for every existing table (the keys of the main DB), and
 * creates the tables o->tables names that do not exist yet. */
static int open_tables(node_store_t *s, MDB_txn *txn, const node_store_opts_t *o, char *err,
                       size_t errlen)
{
    MDB_dbi main;
    MDB_cursor *cur;
    table_census_t c = {0};
    int rc = mdb_dbi_open(txn, NULL, 0, &main);
    if (rc == 0)
        rc = mdb_cursor_open(txn, main, &cur);
    if (rc != 0) {
        snprintf(err, errlen, "cannot list tables: %s", mdb_strerror(rc));
        return KVS_ESTORE;
    }
    note_depth(s, txn, main);
    note_depth(s, txn, 0); /* the freelist */
    note_depth(s, txn, s->meta);
    MDB_val k, v;
    char name[NAME_CAP];
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        if (k.mv_size == 0 || k.mv_size >= sizeof(name))
            continue;
        memcpy(name, k.mv_data, k.mv_size);
        name[k.mv_size] = '\0';
        if (strcmp(name, META_DB) == 0)
            continue;
        if (c.stored < NAMES_SHOWN)
            memcpy(c.names[c.stored], name, k.mv_size + 1);
        MDB_dbi dbi;
        if (++c.stored > o->max_tables || mdb_dbi_open(txn, name, 0, &dbi) != 0)
            continue; /* refused below */
        if ((rc = kvs_dbimap_add(&s->tables, name, dbi, 0)) != 0)
            return rc;
        note_depth(s, txn, dbi);
        MDB_stat st;
        kvs_dbimap_entry_t *e = kvs_dbimap_lookup(&s->tables, name);
        if (o->cfg != NULL && kvs_config_binding_n(o->cfg, name, k.mv_size) != NULL) {
            e->mark = T_BOUND; /* a binding names it, Kafka on or off */
        } else if (mdb_stat(txn, dbi, &st) == 0 && st.ms_entries == 0) {
            /* emptied while pinned, or by a kvs that kept emptied tables:
             * the first commit drops it */
            e->mark = T_EMPTIED;
            s->emptied = 1;
        } else {
            s->unbound_at_open++; /* (a table mdb_stat cannot read counts too) */
        }
    }
    mdb_cursor_close(cur);
    for (size_t i = 0; i < o->n_tables; i++) {
        MDB_val key = {strlen(o->tables[i]), (void *)o->tables[i]}, val;
        int dup = 0;
        for (size_t j = 0; j < i; j++)
            dup |= strcmp(o->tables[i], o->tables[j]) == 0;
        c.missing += !dup && mdb_get(txn, main, &key, &val) == MDB_NOTFOUND;
    }
    rc = tables_fit(o, &c, err, errlen);
    for (size_t i = 0; rc == 0 && i < o->n_tables; i++) {
        MDB_dbi dbi;
        if (kvs_dbimap_find(&s->tables, o->tables[i]) != NULL)
            continue;
        rc = mdb_dbi_open(txn, o->tables[i], MDB_CREATE, &dbi);
        if (rc != 0) {
            snprintf(err, errlen, "cannot create table \"%s\": %s", o->tables[i], mdb_strerror(rc));
            return KVS_ESTORE;
        }
        rc = kvs_dbimap_add(&s->tables, o->tables[i], dbi, 0);
    }
    for (size_t i = 0; rc == 0 && i < o->n_tables; i++) {
        kvs_dbimap_entry_t *e = kvs_dbimap_lookup(&s->tables, o->tables[i]);
        if (e != NULL)
            e->mark = T_BOUND;
    }
    return rc;
}

/* Resets every partition record of `topic` in __kvs to "from the log's
 * start", nothing applied (as Rebuild stores it). Returns the number reset
 * (>= 0), or KVS_ESTORE with err set. */
static int offsets_from_start(node_store_t *s, MDB_txn *txn, const char *topic, const char *dir,
                              char *err, size_t errlen)
{
    char prefix[KVS_SCHEMA_OFFSETS_KEY_MAX];
    uint8_t enc[KVS_SCHEMA_OFFSETS_LEN];
    kvs_schema_offsets_t o = {KVS_SCHEMA_NEXT_FROM_START, 0, 0, 0};
    MDB_cursor *cur = NULL;
    int n = 0, plen = kvs_schema_offsets_prefix(prefix, sizeof(prefix), topic);
    kvs_schema_offsets_encode(enc, &o);
    int rc = plen < 0 ? EINVAL : mdb_cursor_open(txn, s->meta, &cur);
    MDB_val k = {(size_t)(plen < 0 ? 0 : plen), prefix}, v;
    if (rc == 0)
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size > (size_t)plen && memcmp(k.mv_data, prefix, (size_t)plen) == 0) {
        MDB_val nv = {sizeof(enc), enc};
        rc = mdb_cursor_put(cur, &k, &nv, MDB_CURRENT);
        if (rc == 0) {
            n++;
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
    }
    if (cur != NULL)
        mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND) {
        snprintf(err, errlen, "%s: cannot reset the offsets of topic %s: %s", dir, topic,
                 mdb_strerror(rc));
        return KVS_ESTORE;
    }
    return n;
}

/* The partition records of a bound topic are the progress of the table
 * they were applied to (kvs_schema_topic_table_key says which). A binding
 * that now gives the topic another table (its `table:` renamed) must not
 * let that table resume at them: it would hold only the records after the
 * old table's progress, and miss every key written before, silently. So
 * the topic is read again from its start for the new table (the old table
 * keeps what it holds). With no record (an environment of an earlier kvs),
 * a topic whose table does not exist yet has offsets of another table too.
 * Runs before open_tables creates the missing tables. Returns 0, or
 * KVS_ESTORE with err set. */
static int topics_follow_tables(node_store_t *s, MDB_txn *txn, const node_store_opts_t *o,
                                kvs_buf_t *said, char *err, size_t errlen)
{
    MDB_dbi main;
    if (o->topics == NULL || o->n_tables == 0)
        return 0;
    int rc = mdb_dbi_open(txn, NULL, 0, &main);
    for (size_t i = 0; rc == 0 && i < o->n_tables; i++) {
        char key[KVS_SCHEMA_OFFSETS_KEY_MAX];
        const char *table = o->tables[i];
        size_t tlen = strlen(table);
        int klen = kvs_schema_topic_table_key(key, sizeof(key), o->topics[i]);
        if (klen < 0)
            continue; /* no topic name kvs accepts is that long */
        MDB_val k = {(size_t)klen, key}, v, t = {tlen, (void *)table};
        int had = mdb_get(txn, s->meta, &k, &v);
        if (had != 0 && had != MDB_NOTFOUND) {
            rc = had;
            break;
        }
        if (had == 0 && v.mv_size == tlen && memcmp(v.mv_data, table, tlen) == 0)
            continue;
        char was[NAME_CAP] = "";
        if (had == 0)
            snprintf(was, sizeof(was), "%.*s", (int)(v.mv_size < 200 ? v.mv_size : 200),
                     (const char *)v.mv_data);
        MDB_val tv;
        int exists = mdb_get(txn, main, &t, &tv) == 0;
        if (had == 0 || !exists) {
            int n = offsets_from_start(s, txn, o->topics[i], o->dir, err, errlen);
            if (n < 0)
                return n;
            char line[1200];
            int k = n <= 0
                        ? 0
                        : snprintf(line, sizeof(line),
                                   "kafka %s: the %d partition offset(s) stored in %s are those "
                                   "of table %s, but kafka.bindings now binds the topic to table "
                                   "%s: %s reads them again from their first record (table %s "
                                   "keeps what it holds)",
                                   o->topics[i], n, o->dir, was[0] ? was : "(another)", table,
                                   table, was[0] ? was : "(another)");
            /* said once the checks after it passed and this commits: a
             * start refused for another reason reads nothing again */
            if (k > 0 && kvs_buf_append(said, line, strlen(line) + 1) != 0)
                kvs_warn("%s", line); /* no memory to hold it: said now */
        }
        rc = mdb_put(txn, s->meta, &k, &t, 0);
    }
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot record the tables of the bound topics: %s", o->dir,
                 mdb_strerror(rc));
        return KVS_ESTORE;
    }
    return 0;
}

/* A bound table's new layout, recorded once the brokers confirm its
 * topic's partition count (node_store_layouts_confirmed). */
struct pending_layout_s {
    char key[NAME_CAP + 16];
    char text[512];
    char topic[256];
    uint32_t was_partitions; /* the recorded count when the new one differs, else 0 */
};

/* How a table's keys are placed: by a binding (topic, partitioner,
 * partitions), or, bound to none, by murmur2 over cluster.partitions. */
typedef struct layout_s {
    int bound;
    char topic[256];
    char partitioner[16];
    uint32_t partitions;
} layout_t;

/* The layout the config gives table[0..tlen). */
static layout_t layout_wanted(const kvs_config_t *cfg, const void *table, size_t tlen)
{
    layout_t l = {.partitions = cfg->partitions};
    const kvs_binding_t *b = kvs_config_binding_n(cfg, table, tlen);
    snprintf(l.partitioner, sizeof(l.partitioner), "%s",
             kvs_place_partitioner_name(b != NULL ? b->partitioner : KVS_PARTITIONER_MURMUR2));
    if (b != NULL) {
        l.bound = 1;
        snprintf(l.topic, sizeof(l.topic), "%s", b->topic);
        l.partitions = b->partitions > 0 ? b->partitions : cfg->partitions;
    }
    return l;
}

/* Whether keys stored under layout `was` are all found when looked up
 * under `now`: the same function, or one shard only, or partitioner none
 * (reads ask every shard owning a partition) asking every shard that may
 * hold one. */
static int layout_finds(const layout_t *was, const layout_t *now, uint32_t shards)
{
    if (shards == 1 ||
        (strcmp(was->partitioner, now->partitioner) == 0 && was->partitions == now->partitions))
        return 1;
    if (strcmp(now->partitioner, "none") == 0)
        return kvs_place_owning_shards(now->partitions, shards) >=
               kvs_place_owning_shards(was->partitions, shards);
    return 0;
}

#define LAYOUT_SAMPLE 64 /* keys of a table a partitioner change is checked on */

/* Of the first LAYOUT_SAMPLE keys of table `dbi` (*sampled), how many
 * partitioner pt[0] over parts0 and pt[1] over parts1 place on shard
 * `shard` of `shards`: fit[0], fit[1]. Returns 0 or an LMDB error. */
static int sample_fits(MDB_txn *txn, MDB_dbi dbi, const kvs_partitioner_t pt[2], uint32_t parts0,
                       uint32_t parts1, uint32_t shards, uint32_t shard, uint32_t *sampled,
                       uint32_t fit[2])
{
    const uint32_t parts[2] = {parts0, parts1};
    MDB_cursor *cur;
    MDB_val k, v;
    *sampled = fit[0] = fit[1] = 0;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc != 0)
        return rc;
    for (MDB_cursor_op op = MDB_FIRST;
         *sampled < LAYOUT_SAMPLE && (rc = mdb_cursor_get(cur, &k, &v, op)) == 0; op = MDB_NEXT) {
        (*sampled)++;
        for (int i = 0; i < 2; i++) {
            uint32_t p = kvs_place_partition_by(pt[i], k.mv_data, k.mv_size, parts[i]);
            fit[i] += kvs_place_shard(p, shards) == shard;
        }
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Whether a new placement that finds `fit` of the `sampled` keys stored
 * here (the rest looked up on other shards) is taken: when it finds them
 * all, or, in a sample of 8 or more, misses fewer than a quarter (said in
 * a WARN, `was` telling what placed them). In a shard of fewer than 8
 * keys any miss counts. */
static int misses_taken(const node_store_opts_t *o, const char *table, const layout_t *now,
                        const char *was, uint32_t sampled, uint32_t fit)
{
    if (fit == sampled)
        return 1;
    if (sampled < 8 || (sampled - fit) * 4 >= sampled)
        return 0;
    kvs_warn("%s: table \"%s\" is now placed by partitioner %s over %" PRIu32
             " partitions%s: %" PRIu32 " of the %" PRIu32
             " keys sampled on this shard are looked up on other shards from now on",
             o->dir, table, now->partitioner, now->partitions, was, sampled - fit, sampled);
    return 1;
}

/* A table bound with partitioner none (its keys on whatever shard their
 * records' partitions gave) whose binding now names a hash: reads then
 * ask only the shard the hash names. Fine when the stored keys fit it
 * (the producers used that hash all along); refused (KVS_EMISMATCH) when
 * a quarter or more of the sample, or in a shard of fewer than 8 keys any
 * of them, would be looked up elsewhere; a few misses are warned of. */
static int from_none_check(MDB_txn *txn, MDB_dbi dbi, const node_store_opts_t *o, const char *table,
                           kvs_partitioner_t to, const layout_t *now, char *err, size_t errlen)
{
    const kvs_partitioner_t pt[2] = {to, to};
    uint32_t sampled, fit[2];
    int rc = sample_fits(txn, dbi, pt, now->partitions, now->partitions, o->cfg->shards, o->shard,
                         &sampled, fit);
    if (rc != 0 || sampled == 0 ||
        misses_taken(o, table, now, " (none when its keys were stored)", sampled, fit[1]))
        return 0;
    snprintf(err, errlen,
             "%s: table \"%s\" is now placed by partitioner %s over %" PRIu32
             " partitions, but of the %" PRIu32 " keys sampled on this shard that places %" PRIu32
             " on other shards; they were stored under partitioner none (on the shard of their "
             "record's partition): reads would miss the keys stored here. Set partitioner: none "
             "again in the binding of table %s, or rebuild the table from its topic",
             o->dir, table, now->partitioner, now->partitions, sampled, sampled - fit[1], table);
    return KVS_EMISMATCH;
}

/* A bound table whose binding now names another partitioner, or (while
 * kafka.brokers is empty, so that no check against the topic runs) another
 * partition count: fine when the binding was wrong (the stored keys fit the
 * new one: a binding fixed to the producers' partitioner, as README's
 * "Misplaced records" says to do), but a binding set wrong would make reads
 * miss the keys stored here. So a sample of them decides: refused
 * (KVS_EMISMATCH, err set) when the old binding places nearly all of them
 * (7/8) on this shard and the new one a quarter or more elsewhere (with 2
 * shards, a wrong hash still places half of them here by chance). With
 * Kafka on, a new count is the brokers' to check (node_ingest), and a
 * topic grown in place keeps its keys where they are ("Growing a bound
 * topic"): a warning says how many of the sampled keys reads now miss. */
static int binding_check(MDB_txn *txn, MDB_dbi dbi, const node_store_opts_t *o, const char *table,
                         const layout_t *was, const layout_t *now, char *err, size_t errlen)
{
    kvs_partitioner_t pt[2];
    uint32_t sampled, fit[2];
    int grown = was->partitions != now->partitions && o->cfg->kafka_brokers[0] != '\0';
    if (o->cfg->shards < 2 || kvs_place_partitioner_parse(was->partitioner, &pt[0], NULL) != 0 ||
        kvs_place_partitioner_parse(now->partitioner, &pt[1], NULL) != 0 ||
        (pt[0] == pt[1] && was->partitions == now->partitions) || pt[1] == KVS_PARTITIONER_NONE)
        return 0; /* to none: reads ask every shard that may hold a key */
    if (pt[0] == KVS_PARTITIONER_NONE)
        return from_none_check(txn, dbi, o, table, pt[1], now, err, errlen);
    int rc = sample_fits(txn, dbi, pt, was->partitions, now->partitions, o->cfg->shards, o->shard,
                         &sampled, fit);
    /* Keys the old binding did not place here (7 of 8 at least; all of
     * them in a sample of fewer than 8) were placed by another function,
     * the producers': the binding is being fixed. */
    if (rc != 0 || sampled == 0 || fit[0] * 8 < sampled * 7)
        return 0;
    if (grown) { /* the brokers' count: taken; what it costs is said */
        if (fit[1] < sampled)
            kvs_warn("%s: table \"%s\" is now placed over %" PRIu32 " partitions (%" PRIu32
                     " when its keys were stored): %" PRIu32 " of the %" PRIu32
                     " keys sampled on this shard are looked up on other shards from now on, "
                     "and answer as missing until they are written again (README, \"Growing a "
                     "bound topic\")",
                     o->dir, table, now->partitions, was->partitions, sampled - fit[1], sampled);
        return 0;
    }
    /* A wrong hash places some of them here by chance (half, with 2
     * shards): refused when a quarter or more miss, or, in a shard of
     * fewer than 8 keys, which the old binding placed all here, any. */
    if (misses_taken(o, table, now, "", sampled, fit[1]))
        return 0;
    snprintf(err, errlen,
             "%s: table \"%s\" is now placed by partitioner %s over %" PRIu32
             " partitions, but of the %" PRIu32 " keys sampled on this shard that places %" PRIu32
             " on other shards, while %s over %" PRIu32 " partitions, its binding when they were "
             "stored, places %" PRIu32 " here: reads would miss the keys stored here. Set "
             "partitioner: %s, partitions: %" PRIu32 " again in the binding of table %s",
             o->dir, table, now->partitioner, now->partitions, sampled, sampled - fit[1],
             was->partitioner, was->partitions, fit[0], was->partitioner, was->partitions, table);
    return KVS_EMISMATCH;
}

/* The refusal of a table whose layout changed between bound and unbound
 * so that its stored keys would be looked up on other shards, in err. */
static void layout_refusal(const node_store_opts_t *o, const char *table, uint64_t keys,
                           const layout_t *was, const layout_t *now, char *err, size_t errlen)
{
    const kvs_binding_t *moved = NULL; /* the topic's binding now, to another table */
    for (size_t i = 0; was->bound && i < o->cfg->n_bindings; i++)
        if (strcmp(o->cfg->bindings[i].topic, was->topic) == 0)
            moved = &o->cfg->bindings[i];
    if (was->bound)
        snprintf(err, errlen,
                 "%s: table \"%s\" holds %" PRIu64 " key(s) placed by its binding to topic %s "
                 "(partitioner %s, %" PRIu32 " partitions), but kafka.bindings no longer binds "
                 "it, and a table bound to no topic is looked up by murmur2 over "
                 "cluster.partitions (%" PRIu32 "): reads would miss keys stored here. Bind "
                 "it again as it was ({topic: %s, table: %s, partitions: %" PRIu32
                 ", partitioner: %s}%s%s%s); kvs cannot move stored keys to another placement",
                 o->dir, table, keys, was->topic, was->partitioner, was->partitions,
                 now->partitions, was->topic, table, was->partitions, was->partitioner,
                 moved != NULL ? ", in place of the binding of the topic to table \"" : "",
                 moved != NULL ? moved->table : "", moved != NULL ? "\"" : "");
    else
        snprintf(err, errlen,
                 "%s: table \"%s\" holds %" PRIu64 " key(s) written while it was bound to no "
                 "topic, placed by murmur2 over cluster.partitions (%" PRIu32 "), but "
                 "kafka.bindings now binds it to topic %s, whose keys are placed by %s over "
                 "%" PRIu32 " partitions: reads would miss keys stored here. Bind the topic to "
                 "a table of another name, or bind none to \"%s\"; kvs cannot move stored keys "
                 "to another placement",
                 o->dir, table, keys, was->partitions, now->topic, now->partitioner,
                 now->partitions, table);
}

/* A bound table's binding changed (another topic, partitioner or
 * partition count): the worker checks the topic's partition count with
 * the brokers only after the store opened, and refuses to start when it
 * is not the binding's. So the new layout is recorded once that check
 * passed, not now: a start refused for a wrong count must leave the old
 * layout, or the next start would take the wrong count for the one the
 * keys were stored by. Returns 0 or an LMDB-style error (ENOMEM). */
static int layout_defer(node_store_t *s, const char *key, const char *text, const char *topic,
                        uint32_t was_partitions)
{
    struct pending_layout_s *p = realloc(s->pending, (s->n_pending + 1) * sizeof(*p));
    if (p == NULL)
        return ENOMEM;
    s->pending = p;
    p += s->n_pending++;
    snprintf(p->key, sizeof(p->key), "%s", key);
    snprintf(p->text, sizeof(p->text), "%s", text);
    snprintf(p->topic, sizeof(p->topic), "%s", topic);
    p->was_partitions = was_partitions;
    return 0;
}

uint32_t node_store_layout_unconfirmed(const node_store_t *s, const char *topic)
{
    for (size_t i = 0; i < s->n_pending; i++)
        if (s->pending[i].was_partitions != 0 && strcmp(s->pending[i].topic, topic) == 0)
            return s->pending[i].was_partitions;
    return 0;
}

int node_store_layouts_confirmed(node_store_t *s, const char *topic)
{
    size_t n = 0, bytes = 0;
    for (size_t i = 0; i < s->n_pending; i++)
        if (strcmp(s->pending[i].topic, topic) == 0) {
            n++;
            bytes += strlen(s->pending[i].key) + strlen(s->pending[i].text);
        }
    if (n == 0)
        return 0;
    int rc = node_store_reserve(s, n, bytes, 0);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < s->n_pending && rc == 0; i++)
        if (strcmp(s->pending[i].topic, topic) == 0)
            rc = node_store_meta_put(s, s->pending[i].key, s->pending[i].text,
                                     strlen(s->pending[i].text));
    if ((rc = node_store_reserve_end(s, rc)) != 0)
        return rc;
    size_t kept = 0; /* a batch that fails is not retried: the next start defers again */
    for (size_t i = 0; i < s->n_pending; i++)
        if (strcmp(s->pending[i].topic, topic) != 0)
            s->pending[kept++] = s->pending[i];
    s->n_pending = kept;
    return 0;
}

/* Checks every table against the layout the config now gives it, and
 * records that layout (o->cfg; a bound table's changed binding once the
 * brokers confirm it, layout_defer). A table that holds keys and went from
 * bound to unbound, or the reverse, is refused unless its keys stay where
 * reads look for them; a bound table whose binding changed otherwise
 * (partitioner, partitions, topic: the documented ways to fix or grow a
 * binding) is taken, a change of topic with a warning, since its records
 * of the old topic stay until it is rebuilt. An environment of an earlier
 * kvs (no layouts recorded) is taken as the config binds it. Runs after
 * open_tables. Returns 0, KVS_EMISMATCH or KVS_ESTORE with err set. */
static int layouts_check(node_store_t *s, MDB_txn *txn, const node_store_opts_t *o, char *err,
                         size_t errlen)
{
    const kvs_config_t *cfg = o->cfg;
    MDB_dbi main;
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    if (cfg == NULL)
        return 0;
    MDB_val mk = {sizeof(KVS_SCHEMA_KEY_LAYOUTS) - 1, (void *)KVS_SCHEMA_KEY_LAYOUTS};
    int rc = mdb_get(txn, s->meta, &mk, &v);
    int recorded = rc == 0;
    if (rc == MDB_NOTFOUND)
        rc = 0;
    if (rc == 0)
        rc = mdb_dbi_open(txn, NULL, 0, &main);
    if (rc == 0)
        rc = mdb_cursor_open(txn, main, &cur);
    while (rc == 0 && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        char name[NAME_CAP], key[NAME_CAP + 16], text[512];
        if (k.mv_size == 0 || k.mv_size >= sizeof(name))
            continue;
        memcpy(name, k.mv_data, k.mv_size);
        name[k.mv_size] = '\0';
        const kvs_dbimap_entry_t *t = kvs_dbimap_find(&s->tables, name);
        int klen = kvs_schema_table_layout_key(key, sizeof(key), name, k.mv_size);
        if (strcmp(name, META_DB) == 0 || t == NULL || klen < 0)
            continue;
        layout_t now = layout_wanted(cfg, name, k.mv_size), was = now;
        MDB_val lk = {(size_t)klen, key}, lv;
        int had = mdb_get(txn, s->meta, &lk, &lv);
        if (had != 0 && had != MDB_NOTFOUND) {
            rc = had;
            break;
        }
        was.bound = had == 0;
        if (had == 0 &&
            kvs_schema_layout_parse(lv.mv_data, lv.mv_size, was.topic, sizeof(was.topic),
                                    was.partitioner, sizeof(was.partitioner), &was.partitions) != 0)
            was = now; /* not of a form this kvs wrote: take the config's */
        else if (had != 0) {
            snprintf(was.partitioner, sizeof(was.partitioner), "murmur2");
            was.partitions = cfg->partitions;
            was.topic[0] = '\0';
        }
        MDB_stat st;
        uint64_t keys = mdb_stat(txn, t->dbi, &st) == 0 ? st.ms_entries : 0;
        if (recorded && keys > 0 && was.bound != now.bound &&
            !layout_finds(&was, &now, cfg->shards)) {
            layout_refusal(o, name, keys, &was, &now, err, errlen);
            mdb_cursor_close(cur);
            return KVS_EMISMATCH;
        }
        if (recorded && keys > 0 && was.bound && now.bound &&
            (rc = binding_check(txn, t->dbi, o, name, &was, &now, err, errlen)) != 0) {
            mdb_cursor_close(cur);
            return rc;
        }
        if (recorded && keys > 0 && was.bound && now.bound && strcmp(was.topic, now.topic) != 0)
            kvs_warn("%s: table \"%s\" holds %" PRIu64 " key(s) from topic %s, and is now "
                     "bound to topic %s: they stay until the table is rebuilt from it (kvs-cli "
                     "--config FILE rebuild %s)",
                     o->dir, name, keys, was.topic, now.topic, name);
        if (now.bound) {
            kvs_schema_layout(text, sizeof(text), now.topic, now.partitioner, now.partitions);
            MDB_val nv = {strlen(text), text};
            int changed =
                had != 0 || lv.mv_size != nv.mv_size || memcmp(lv.mv_data, text, nv.mv_size) != 0;
            if (changed && had == 0 && cfg->kafka_brokers[0] != '\0')
                rc = layout_defer(s, key, text, now.topic,
                                  was.partitions != now.partitions ? was.partitions : 0);
            else if (changed)
                rc = mdb_put(txn, s->meta, &lk, &nv, 0);
        } else if (had == 0) {
            rc = mdb_del(txn, s->meta, &lk, NULL);
        }
    }
    if (cur != NULL)
        mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        rc = 0;
    if (rc == 0 && !recorded) {
        MDB_val one = {1, (void *)"1"};
        rc = mdb_put(txn, s->meta, &mk, &one, 0);
    }
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot record the tables' layouts: %s", o->dir,
                 mdb_strerror(rc));
        return KVS_ESTORE;
    }
    return 0;
}

/* Removes the lock file of a replaced environment (see
 * node_store_opts_t.reset_lock). Under kvs.lock: no other writer runs. */
static int reset_lock(const char *dir, char *err, size_t errlen)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/lock.mdb", dir);
    if (unlink(path) != 0 && errno != ENOENT) {
        snprintf(err, errlen, "%s: cannot remove the lock file of the data it replaced: %s", path,
                 strerror(errno));
        return -errno;
    }
    kvs_info("%s: its data.mdb is not the one the last worker had open: started a new lock file",
             dir);
    return 0;
}

/* LMDB sizes lock.mdb with ftruncate, which leaves a hole, and writes its
 * header and reader slots through a shared map: on a full disk the first
 * such write would be a SIGBUS, in this worker or in a router reading the
 * shard (its reader slot). Its blocks are allocated here first, so a full
 * disk is an error with a message instead. LMDB takes a larger file as it
 * is (room for more readers). (data.mdb is written with pwrite, whose
 * ENOSPC LMDB reports.) */
#define LOCK_FILE_BYTES ((KVS_SCHEMA_MAX_READERS + 8) * 64 + 4096)

static int allocate_lock(const char *dir, char *err, size_t errlen)
{
    char path[4200];
    struct stat st;
    snprintf(path, sizeof(path), "%s/lock.mdb", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    int rc = fd < 0 || fstat(fd, &st) != 0 ? errno : 0;
    if (rc == 0) {
        off_t len = st.st_size > LOCK_FILE_BYTES ? st.st_size : LOCK_FILE_BYTES;
        rc = posix_fallocate(fd, 0, len);
    }
    if (fd >= 0)
        close(fd);
    if (rc == 0)
        return 0;
    snprintf(err, errlen, "%s: cannot allocate the lock file's %d bytes: %s%s", path,
             LOCK_FILE_BYTES, strerror(rc),
             rc == ENOSPC ? " (free disk space on the data directory; the worker is started "
                            "again)"
                          : "");
    return -rc;
}

/* Records which files the environment is: data.mdb through LMDB's own
 * descriptor, lock.mdb by its path (this process just opened it, holding
 * kvs.lock). Returns 0 or -errno. */
static int ident_of(node_store_t *s, const char *dir)
{
    char path[4200];
    struct stat st;
    int fd;
    if (mdb_env_get_fd(s->env, &fd) != 0 || fstat(fd, &st) != 0)
        return -EIO;
    s->ident.data_dev = (uint64_t)st.st_dev;
    s->ident.data_ino = (uint64_t)st.st_ino;
    snprintf(path, sizeof(path), "%s/lock.mdb", dir);
    if (stat(path, &st) != 0)
        return -errno;
    s->ident.lock_dev = (uint64_t)st.st_dev;
    s->ident.lock_ino = (uint64_t)st.st_ino;
    return 0;
}

/* ---- damaged files ------------------------------------------------------------ */

/* What to do about data files kvs cannot use: said after every refusal. */
#define DAMAGED_HINT                                                                               \
    "restore the shard's files (a backup, or a replica's copy) or move %s away to start the "      \
    "shard empty"

/* Whether `name` in o->dir can be a file of the environment: absent (LMDB
 * creates it), or a regular file, also through a symbolic link. A
 * directory, FIFO, socket or device would fail (or, for a FIFO, block)
 * the open on every restart; a link to nothing would have LMDB create a new
 * empty file at its target; a data.mdb emptied under the last worker (the
 * one kvs_shardstate names) would have LMDB start a new empty environment
 * in it, as if the shard never held anything. Returns 0, or KVS_EDAMAGED
 * with err set. */
static int file_usable(const node_store_opts_t *o, const char *name, char *err, size_t errlen)
{
    char path[4200], target[4096];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", o->dir, name);
    if (lstat(path, &st) != 0)
        return 0; /* absent, or a fault the open reports */
    if (S_ISLNK(st.st_mode) && stat(path, &st) != 0) {
        ssize_t n = readlink(path, target, sizeof(target) - 1);
        target[n > 0 ? n : 0] = '\0';
        snprintf(err, errlen,
                 "%s is a symbolic link to %s, which cannot be reached (%s); " DAMAGED_HINT, path,
                 target, strerror(errno), o->dir);
        return KVS_EDAMAGED;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s is %s, not a file; " DAMAGED_HINT, path, kvs_fs_kind(st.st_mode),
                 o->dir);
        return KVS_EDAMAGED;
    }
    if (strcmp(name, "data.mdb") == 0 && st.st_size == 0 && o->last != NULL &&
        (uint64_t)st.st_dev == o->last->data_dev && (uint64_t)st.st_ino == o->last->data_ino) {
        snprintf(err, errlen,
                 "%s is empty, but it is the file the last worker of this shard served from: its "
                 "data was cut away; " DAMAGED_HINT,
                 path, o->dir);
        return KVS_EDAMAGED;
    }
    return 0;
}

static sigjmp_buf fault_jump;

static void on_fault(int sig)
{
    (void)sig;
    siglongjmp(fault_jump, 1);
}

/* count_free at open, on a file that may be cut short: a read of a page
 * past the end of the file faults (SIGBUS), caught here for the walk only
 * (its txn and cursor are kept where a fault leaves them). Returns the
 * count, or -1 (a fault, or LMDB's error). */
static int64_t free_pages_from(MDB_env *env, size_t from)
{
    struct sigaction sa, prev;
    MDB_txn *volatile txn = NULL;
    MDB_cursor *volatile cur = NULL;
    volatile int64_t n = 0;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_fault;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &prev) != 0)
        return -1;
    if (sigsetjmp(fault_jump, 1) == 0) {
        MDB_txn *t;
        MDB_cursor *c;
        size_t run;
        int rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &t);
        if (rc == 0)
            txn = t;
        if (rc == 0 && (rc = mdb_cursor_open(t, 0, &c)) == 0) /* 0: the freelist */
            cur = c;
        n = rc == 0 ? count_free(c, from, SIZE_MAX, &run, NULL) : -1;
    } else {
        n = -1; /* the walk faulted */
    }
    sigaction(SIGBUS, &prev, NULL);
    if (cur != NULL)
        mdb_cursor_close(cur);
    if (txn != NULL)
        mdb_txn_abort(txn);
    return n;
}

/* data.mdb may end before the last page the environment uses only where
 * those missing pages are free: LMDB does not write a page a commit
 * allocated and freed again, so a batch that stored and then deleted a
 * large value at the end leaves the file short of its last pages. A
 * missing page that is not free holds data (or a tree): the file was cut
 * short, and the first read of that page would kill the worker (SIGBUS),
 * again at each restart. Found at open, it is refused. Returns 0, or
 * KVS_EDAMAGED with err set. */
static int pages_present(node_store_t *s, const char *dir, char *err, size_t errlen)
{
    MDB_envinfo info;
    MDB_stat ms;
    struct stat st;
    int fd;
    if (mdb_env_info(s->env, &info) != 0 || mdb_env_stat(s->env, &ms) != 0 ||
        mdb_env_get_fd(s->env, &fd) != 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s/data.mdb: cannot read its size or meta page", dir);
        return KVS_ESTORE;
    }
    uint64_t need = ((uint64_t)info.me_last_pgno + 1) * ms.ms_psize;
    if ((uint64_t)st.st_size >= need)
        return 0;
    size_t whole = (size_t)((uint64_t)st.st_size / ms.ms_psize); /* pages wholly in the file */
    int64_t missing = (int64_t)(info.me_last_pgno + 1 - whole);
    int64_t free_missing = free_pages_from(s->env, whole);
    if (free_missing >= missing) {
        kvs_info("%s/data.mdb ends %" PRId64 " page(s) before its last one, all of them free", dir,
                 missing);
        return 0;
    }
    snprintf(err, errlen,
             "%s/data.mdb is %llu bytes, but the pages its environment uses take %llu bytes: the "
             "file was cut short (pages in use are missing); " DAMAGED_HINT,
             dir, (unsigned long long)st.st_size, (unsigned long long)need, dir);
    return KVS_EDAMAGED;
}

/* Puts the names of the environment's files on disk: its directory and the
 * one above (data_dir, which holds shard-N). A data.mdb LMDB has just
 * created, or a snapshot copy renamed into place before this open, would
 * otherwise be a name only in memory: the commits acknowledged in it would
 * be lost with it on power loss, however well each was synced. A file
 * system that cannot sync a directory (EINVAL) is taken as it is, and a
 * directory that cannot be opened is left to the open that follows.
 * Returns 0, or KVS_ESTORE with err set (the worker stops and is started
 * again, and syncs again). */
static int sync_dirs(const char *dir, char *err, size_t errlen)
{
    char parent[4200];
    snprintf(parent, sizeof(parent), "%s/..", dir);
    const char *paths[2] = {dir, parent};
    for (int i = 0; i < 2; i++) {
        int fd = open(paths[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            continue;
        int rc = fsync(fd) == 0 || errno == EINVAL ? 0 : errno;
        close(fd);
        if (rc != 0) {
            snprintf(err, errlen,
                     "cannot sync the directory %s (%s): the files created or renamed in it "
                     "might not survive a power loss, nor the writes acknowledged in them",
                     paths[i], strerror(rc));
            return KVS_ESTORE;
        }
    }
    return 0;
}

static int env_open(node_store_t *s, const node_store_opts_t *o, char *err, size_t errlen)
{
    unsigned flags = MDB_NOTLS; /* see the file comment for what each mode keeps */
    if (o->sync == KVS_SYNC_BATCH)
        flags |= MDB_NOMETASYNC;
    else if (o->sync == KVS_SYNC_NONE)
        flags |= MDB_NOSYNC;
    int rc = file_usable(o, "data.mdb", err, errlen);
    if (rc == 0)
        rc = file_usable(o, "lock.mdb", err, errlen);
    if (rc != 0)
        return rc;
    if (o->reset_lock && reset_lock(o->dir, err, errlen) != 0)
        return KVS_ESTORE;
    if (allocate_lock(o->dir, err, errlen) != 0)
        return KVS_ESTORE;
    rc = mdb_env_create(&s->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(s->env, o->max_tables + 1);
    if (rc == 0)
        rc = mdb_env_set_maxreaders(s->env, KVS_SCHEMA_MAX_READERS); /* room for routers */
    if (rc == 0)
        rc = mdb_env_set_mapsize(s->env, (size_t)o->map_size);
    if (rc == 0)
        rc = mdb_env_open(s->env, o->dir, flags, 0600); /* the node's user only */
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH) {
        /* Its first pages are not an LMDB meta page: no restart changes that. */
        snprintf(err, errlen,
                 "%s/data.mdb cannot be opened as an LMDB environment (%s): it was overwritten "
                 "or damaged; " DAMAGED_HINT,
                 o->dir, mdb_strerror(rc), o->dir);
        return KVS_EDAMAGED;
    }
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot open LMDB environment: %s", o->dir, mdb_strerror(rc));
        return KVS_ESTORE;
    }
    s->env_open = 1;
    clear_dead_readers(s, o->dir);
    if ((rc = pages_present(s, o->dir, err, errlen)) != 0)
        return rc;
    if ((rc = sync_dirs(o->dir, err, errlen)) != 0)
        return rc;
    if ((rc = ident_of(s, o->dir)) != 0) {
        snprintf(err, errlen, "%s: cannot stat its files: %s", o->dir, strerror(-rc));
        return KVS_ESTORE;
    }
    MDB_envinfo info;
    MDB_stat st;
    mdb_env_info(s->env, &info);
    mdb_env_stat(s->env, &st);
    s->psize = st.ms_psize;
    s->map_size = info.me_mapsize; /* an existing env may be larger */
    return 0;
}

/* Refuses an environment whose stored values this build would misread,
 * saying what to do; a new environment gets FORMAT_VERSION. */
static int format_check(MDB_txn *txn, MDB_dbi meta, const char *dir, char *err, size_t errlen)
{
    MDB_val k = {sizeof(KVS_SCHEMA_KEY_FORMAT) - 1, (void *)KVS_SCHEMA_KEY_FORMAT}, v;
    int rc = mdb_get(txn, meta, &k, &v);
    if (kvs_schema_format(rc == 0 ? v.mv_data : NULL, rc == 0 ? v.mv_size : 0) !=
        KVS_SCHEMA_FORMAT_OLD) /* new, current, newer */
        return meta_check(txn, meta, KVS_SCHEMA_KEY_FORMAT, FORMAT_VERSION, dir, err, errlen);
    snprintf(err, errlen,
             "%s was written by an older kvs wire format (format_version 1: integers "
             "encoded as sint64); this kvs stores format_version %s (int64, as in the original KV "
             "protocol) and would misread its integers, so it refuses to open it. Move the "
             "directory away and load the data again (tables bound to Kafka topics re-ingest "
             "from the topic by themselves)",
             dir, FORMAT_VERSION);
    return KVS_EMISMATCH;
}

static int identity_check(node_store_t *s, const node_store_opts_t *o, char *err, size_t errlen)
{
    MDB_txn *txn = NULL;
    char shard[16];
    snprintf(shard, sizeof(shard), "%u", o->shard);
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc == 0)
        rc = mdb_dbi_open(txn, META_DB, MDB_CREATE, &s->meta);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", o->dir, mdb_strerror(rc));
        if (txn != NULL)
            mdb_txn_abort(txn);
        return KVS_ESTORE;
    }
    rc = format_check(txn, s->meta, o->dir, err, errlen);
    if (rc == 0)
        rc = meta_check(txn, s->meta, KVS_SCHEMA_KEY_SHARD, shard, o->dir, err, errlen);
    if (rc == 0)
        rc = meta_check(txn, s->meta, KVS_SCHEMA_KEY_PLACEMENT, o->placement, o->dir, err, errlen);
    kvs_buf_t said; /* warnings true only once this commits: NUL-separated */
    kvs_buf_init(&said);
    if (rc == 0)
        rc = topics_follow_tables(s, txn, o, &said, err, errlen);
    if (rc == 0)
        rc = open_tables(s, txn, o, err, errlen);
    if (rc == 0)
        rc = layouts_check(s, txn, o, err, errlen);
    if (rc != 0) {
        mdb_txn_abort(txn);
        kvs_buf_free(&said);
        return rc;
    }
    rc = mdb_txn_commit(txn);
    if (rc != 0) {
        snprintf(err, errlen, "%s: commit: %s", o->dir, mdb_strerror(rc));
        kvs_buf_free(&said);
        return KVS_ESTORE;
    }
    for (size_t at = 0; at < said.len; at += strlen((const char *)said.data + at) + 1)
        kvs_warn("%s", (const char *)said.data + at);
    kvs_buf_free(&said);
    return 0;
}

int node_store_open(const node_store_opts_t *o, node_store_t **out, char *err, size_t errlen)
{
    node_store_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->lock_fd = -1;
    s->fail_cb = o->fail_cb;
    s->fail_arg = o->fail_arg;
    s->broken_cb = o->broken_cb;
    s->broken_arg = o->broken_arg;
    s->tight_cb = o->tight_cb;
    s->tight_arg = o->tight_arg;
    s->meta_unsynced = o->sync == KVS_SYNC_BATCH;
    kvs_log_budget_init(&s->write_errs, "lines about failed commits and syncs", KVS_LOG_PEER_LINES,
                        KVS_LOG_PEER_WINDOW_MS);
    int rc = kvs_dbimap_init(&s->tables, o->max_tables);
    if (rc == 0 && ((s->dropped = calloc((size_t)o->max_tables + 1, sizeof(*s->dropped))) == NULL ||
                    (s->taken = calloc((size_t)o->max_tables + 1, sizeof(*s->taken))) == NULL))
        rc = -ENOMEM;
    if (rc == 0 && mkdir(o->dir, 0700) != 0 && errno != EEXIST) {
        rc = -errno;
        snprintf(err, errlen, "%s: cannot create directory: %s", o->dir, strerror(errno));
    }
    if (rc == 0)
        rc = lock_dir(s, o->dir, err, errlen);
    if (rc == 0)
        drop_stale_copy(o->dir);
    if (rc == 0)
        rc = env_open(s, o, err, errlen);
    if (rc == 0)
        rc = identity_check(s, o, err, errlen);
    if (rc == 0 && (rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &s->rtxn)) != 0) {
        snprintf(err, errlen, "%s: %s", o->dir, mdb_strerror(rc));
        rc = KVS_ESTORE;
    }
    if (rc != 0) {
        node_store_close(s);
        return rc;
    }
    mdb_txn_reset(s->rtxn);
    keep_room(s, 0);
    *out = s;
    return 0;
}

void node_store_set_wake(node_store_t *s, void (*wake)(void *arg), void *arg)
{
    s->wake = wake;
    s->wake_arg = arg;
}

void node_store_set_fail_arg(node_store_t *s, void *arg)
{
    s->fail_arg = arg;
}

int node_store_close(node_store_t *s)
{
    if (s == NULL)
        return 0;
    int rc = 0;
    if (s->env != NULL) {
        rc = batch_commit(s);
        if (s->rtxn != NULL)
            mdb_txn_abort(s->rtxn);
        /* storage.sync batch: the last meta page (none when it never opened) */
        int src = s->env_open ? mdb_env_sync(s->env, 1) : 0;
        if (src != 0) {
            kvs_error("closing: the last sync failed (%s): the last commit may be undone by "
                      "power loss",
                      mdb_strerror(src));
            if (rc == 0)
                rc = KVS_ESTORE;
        }
        mdb_env_close(s->env);
    }
    kvs_dbimap_free(&s->tables);
    if (s->dropped != NULL)
        forget_dropped(s);
    free(s->dropped);
    free(s->taken);
    free(s->pending);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    free(s);
    return rc;
}

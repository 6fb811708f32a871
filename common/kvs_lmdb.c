/*
 * kvs_lmdb: reading kvs's LMDB environments (see kvs_lmdb.h).
 *
 * The reader's transaction. One MDB_txn per reader, created by the first
 * begin and then reused: kvs_lmdb_reader_end resets it (mdb_txn_reset:
 * the snapshot is released, the reader slot kept) and the next begin
 * renews it. Two events end it for good instead (the next begin creates a
 * new one):
 *  - a table handle was opened in it: the txn commits, which makes the
 *    handle the environment's (a reset or abort would close it);
 *  - opening it failed.
 * With MDB_NOTLS a read txn owns its reader slot, so the reader never uses
 * more than one slot, and none while no txn exists.
 *
 * Map growth. The writer grows its map when it fills (node_store); when
 * it has written past the end of this process's map, LMDB's begin says
 * MDB_MAP_RESIZED. With no snapshot open, mdb_env_set_mapsize(env, 0)
 * adopts the size the writer recorded, and the begin is retried.
 *
 * Table handles. A table's DBI is looked up by name (the table's name is
 * the database's, kvs_schema) on first use and cached; a name not found
 * is looked up again next time (tables are created by the writer at any
 * time, and never dropped). A handle opened in the current txn is
 * "pending" until that txn commits: if it cannot commit, LMDB closes the
 * handle and the cache forgets it.
 */
#include "kvs_lmdb.h"
#include "kvs_dbimap.h"
#include "kvs_err.h"
#include "kvs_log.h"
#include "kvs_schema.h"
#include "kvs_time.h"

#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- primitives ------------------------------------------------------------ */

int kvs_lmdb_err(const char *what, int rc)
{
    if (rc == 0)
        return 0;
    if (rc == MDB_NOTFOUND)
        return KVS_ENOTFOUND;
    kvs_error("%s: %s", what, mdb_strerror(rc));
    return KVS_ESTORE;
}

int kvs_lmdb_get(MDB_txn *txn, unsigned int dbi, const void *key, size_t klen, kvs_slice_t *val)
{
    MDB_val k = {klen, (void *)key}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc != 0)
        return rc == MDB_NOTFOUND ? KVS_ENOTFOUND : kvs_lmdb_err("mdb_get", rc);
    val->p = v.mv_data;
    val->len = v.mv_size;
    return 0;
}

/* Walks `cur` from `from` (the first key if flen is 0) until cb says stop. */
static int scan_cursor(MDB_cursor *cur, const void *from, size_t flen, kvs_lmdb_scan_cb cb,
                       void *arg)
{
    MDB_val k = {flen, (void *)from}, v;
    int rc = mdb_cursor_get(cur, &k, &v, flen > 0 ? MDB_SET_RANGE : MDB_FIRST);
    while (rc == 0) {
        kvs_slice_t ks = {k.mv_data, k.mv_size}, vs = {v.mv_data, v.mv_size};
        if (cb(arg, ks, vs) != 0)
            break;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : kvs_lmdb_err("mdb_cursor_get", rc);
}

int kvs_lmdb_scan(MDB_txn *txn, unsigned int dbi, const void *from, size_t flen,
                  kvs_lmdb_scan_cb cb, void *arg)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc != 0)
        return kvs_lmdb_err("mdb_cursor_open", rc);
    rc = scan_cursor(cur, from, flen, cb, arg);
    mdb_cursor_close(cur);
    return rc;
}

int kvs_lmdb_count(MDB_txn *txn, unsigned int dbi, uint64_t *n)
{
    MDB_stat st;
    int rc = mdb_stat(txn, dbi, &st);
    if (rc != 0)
        return kvs_lmdb_err("mdb_stat", rc);
    *n = st.ms_entries;
    return 0;
}

int kvs_lmdb_ident_of(const char *dir, kvs_lmdb_ident_t *out)
{
    char path[4200];
    struct stat d, l;
    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    if (stat(path, &d) != 0)
        return -errno;
    snprintf(path, sizeof(path), "%s/lock.mdb", dir);
    if (stat(path, &l) != 0)
        return -errno;
    out->data_dev = (uint64_t)d.st_dev;
    out->data_ino = (uint64_t)d.st_ino;
    out->lock_dev = (uint64_t)l.st_dev;
    out->lock_ino = (uint64_t)l.st_ino;
    return 0;
}

/* ---- the reader ------------------------------------------------------------ */

struct kvs_lmdb_reader_s {
    MDB_env *env;
    MDB_txn *txn; /* NULL until the next begin */
    int live;     /* a snapshot is open */
    int commit;   /* a handle was opened in it: commit, do not reset */
    MDB_dbi meta;
    kvs_dbimap_t tables; /* up to storage.max_tables */
    uint64_t remaps;
    kvs_lmdb_ident_t ident;
    const char *why; /* why the last begin failed (LMDB's static text) */
    int unmapped;    /* adopting a grown map failed: no page may be touched (begin) */
    /* The cursor of a scan under way: a caller that jumps out of one (the
     * router's SIGBUS guard, router_local) leaves it here for the close. */
    MDB_cursor *cursor;
    kvs_dbimap_entry_t *gone; /* recycle_handles: room for max_tables */
    uint64_t recycle_at;      /* kvs_now_ns before which no handle is looked for */
};

/* Whether `table` exists in the open snapshot, looked up in the main
 * database, which names every table: 0, KVS_ENOTFOUND or KVS_ESTORE. */
static int table_listed(kvs_lmdb_reader_t *r, const char *table)
{
    MDB_dbi main_dbi;
    MDB_val k = {strlen(table), (void *)table}, v;
    int rc = mdb_dbi_open(r->txn, NULL, 0, &main_dbi); /* needs no handle slot */
    if (rc == 0)
        rc = mdb_get(r->txn, main_dbi, &k, &v);
    return rc == 0 ? 0
                   : kvs_lmdb_err("looking up a table name", rc); /* MDB_NOTFOUND: KVS_ENOTFOUND */
}

#define MARK_GONE 1u                  /* recycle_handles: the table is not in the snapshot */
#define RECYCLE_IDLE_NS 1000000000ull /* after a look that freed nothing */
#define RECYCLE_SHARE 10              /* a look costs one lookup per handle: pause 10x its time */

/* Closes the handles of tables the open snapshot does not hold (the
 * writer dropped them: it drops the tables it empties), so that their
 * places serve tables that exist; without this, a reader of a shard whose
 * clients keep making and emptying tables would soon hold only handles of
 * tables long gone. Safe with the snapshot open: only this thread uses the
 * reader, a handle is forgotten before it is closed, so nothing reads it
 * again, and one opened in this snapshot (pending) is never closed. A look
 * costs a lookup per handle (up to storage.max_tables, 32,000), so the
 * next one waits RECYCLE_SHARE times the CPU time it took (the looks take
 * at most a tenth of the thread however a client makes and empties
 * tables; CPU time, not wall time, so that a look on a loaded machine,
 * paused while other processes ran, does not pause the next one for
 * that too), and a second after one that freed nothing (the writer holds
 * more tables than this reader has room for); reads meanwhile go to the
 * worker (KVS_ELIMIT). Returns how many were closed. */
static uint32_t recycle_handles(kvs_lmdb_reader_t *r)
{
    if (kvs_now_ns() < r->recycle_at)
        return 0;
    uint64_t start = kvs_thread_cpu_ns();
    for (uint32_t i = 0; i < r->tables.cap; i++) {
        kvs_dbimap_entry_t *e = &r->tables.slots[i];
        if (e->name != NULL && !e->pending && table_listed(r, e->name) == KVS_ENOTFOUND)
            e->mark = MARK_GONE;
    }
    uint32_t n = kvs_dbimap_take(&r->tables, MARK_GONE, r->gone);
    for (uint32_t i = 0; i < n; i++) {
        mdb_dbi_close(r->env, r->gone[i].dbi);
        free(r->gone[i].name);
    }
    uint64_t cost = kvs_thread_cpu_ns() - start;
    r->recycle_at = kvs_now_ns() + (n == 0 ? RECYCLE_IDLE_NS : RECYCLE_SHARE * cost);
    return n;
}

/* Every handle is taken: room for `table`'s if it exists and a handle of
 * a table that does not can be closed. Returns 0 (room made),
 * KVS_ENOTFOUND (a table nobody created, as always: on a shard at its
 * limit any client can ask for one, which is no storage error),
 * KVS_ELIMIT (it exists, no room: its read goes to the worker) or
 * KVS_ESTORE. */
static int make_room(kvs_lmdb_reader_t *r, const char *table)
{
    int rc = table_listed(r, table);
    if (rc != 0)
        return rc;
    return recycle_handles(r) > 0 ? 0 : KVS_ELIMIT;
}

/* The cache entry of `table` in the open snapshot, its handle opened if
 * need be. Returns 0, KVS_ENOTFOUND (no such table), KVS_ELIMIT (it
 * exists, but no handle is left for it), or KVS_ESTORE. */
static int table_entry(kvs_lmdb_reader_t *r, const char *table, kvs_dbimap_entry_t **out)
{
    MDB_dbi dbi;
    if ((*out = kvs_dbimap_lookup(&r->tables, table)) != NULL)
        return 0;
    int rc;
    if (r->tables.n >= r->tables.max_entries && (rc = make_room(r, table)) != 0)
        return rc;
    rc = mdb_dbi_open(r->txn, table, 0, &dbi);
    if (rc == MDB_DBS_FULL) { /* LMDB holds handles this map forgot (-ENOMEM below) */
        if ((rc = make_room(r, table)) != 0)
            return rc;
        rc = mdb_dbi_open(r->txn, table, 0, &dbi);
        if (rc == MDB_DBS_FULL)
            return KVS_ELIMIT; /* make_room found the table */
    }
    if (rc != 0)
        return rc == MDB_NOTFOUND ? KVS_ENOTFOUND : kvs_lmdb_err("mdb_dbi_open", rc);
    rc = kvs_dbimap_add(&r->tables, table, dbi, 1);
    if (rc != 0)
        return rc; /* the handle stays LMDB's; found again next time */
    r->commit = 1;
    *out = kvs_dbimap_lookup(&r->tables, table);
    return 0;
}

int kvs_lmdb_reader_begin(kvs_lmdb_reader_t *r)
{
    int rc = 0;
    if (r->live)
        return 0;
    if (r->unmapped) {
        r->why = "its grown map could not be mapped here: the environment must be opened again";
        return KVS_ESTORE;
    }
    for (int attempt = 0; attempt < 3; attempt++) {
        if (r->txn != NULL) {
            rc = mdb_txn_renew(r->txn);
        } else if ((rc = mdb_txn_begin(r->env, NULL, MDB_RDONLY, &r->txn)) != 0) {
            r->txn = NULL;
        }
        if (rc != MDB_MAP_RESIZED)
            break;
        /* The writer grew its map past ours: adopt its size (no snapshot is
         * open in this process) and try again. */
        int grc = mdb_env_set_mapsize(r->env, 0);
        if (grc != 0) {
            /* LMDB unmapped the old map before it failed to map the new
             * one (out of address space: ENOMEM): a begin now would read
             * through a map that is gone. Nothing of it is touched again. */
            r->unmapped = 1;
            rc = grc;
            break;
        }
        r->remaps++;
    }
    if (rc != 0) {
        r->why = mdb_strerror(rc); /* the caller logs, as often as it sees fit */
        return KVS_ESTORE;
    }
    r->live = 1;
    return 0;
}

int kvs_lmdb_reader_unmapped(const kvs_lmdb_reader_t *r)
{
    return r->unmapped;
}

void kvs_lmdb_reader_end(kvs_lmdb_reader_t *r)
{
    if (!r->live)
        return;
    r->live = 0;
    if (!r->commit) {
        mdb_txn_reset(r->txn);
        return;
    }
    /* Handles opened in this txn become the environment's only if it
     * commits (a read-only commit ends and frees the txn). */
    r->commit = 0;
    int rc = mdb_txn_commit(r->txn);
    r->txn = NULL;
    kvs_dbimap_settle(&r->tables, rc != 0); /* not committed: LMDB closed them */
}

int kvs_lmdb_reader_get(kvs_lmdb_reader_t *r, const char *table, const void *key, size_t klen,
                        kvs_slice_t *val)
{
    kvs_dbimap_entry_t *e;
    int rc = table_entry(r, table, &e);
    return rc != 0 ? rc : kvs_lmdb_get(r->txn, e->dbi, key, klen, val);
}

int kvs_lmdb_reader_scan(kvs_lmdb_reader_t *r, const char *table, const void *from, size_t flen,
                         kvs_lmdb_scan_cb cb, void *arg)
{
    kvs_dbimap_entry_t *e;
    int rc = table_entry(r, table, &e);
    if (rc == KVS_ENOTFOUND)
        return 0; /* a missing table walks nothing */
    if (rc != 0)
        return rc;
    if ((rc = mdb_cursor_open(r->txn, e->dbi, &r->cursor)) != 0) {
        r->cursor = NULL;
        return kvs_lmdb_err("mdb_cursor_open", rc);
    }
    rc = scan_cursor(r->cursor, from, flen, cb, arg);
    mdb_cursor_close(r->cursor);
    r->cursor = NULL;
    return rc;
}

int kvs_lmdb_reader_count(kvs_lmdb_reader_t *r, const char *table, uint64_t *n)
{
    kvs_dbimap_entry_t *e;
    *n = 0;
    int rc = table_entry(r, table, &e);
    /* A handle names its table, looked up again in each snapshot; but
     * mdb_stat of a table the writer dropped since (it emptied it) gives
     * what the handle saw last: ask whether it still exists first, once
     * per commit of the writer (the snapshot's txn id: the entry's stamp;
     * one opened in this snapshot was just found). */
    uint64_t txnid = rc == 0 ? (uint64_t)mdb_txn_id(r->txn) : 0;
    if (rc == 0 && !e->pending && e->stamp != txnid && (rc = table_listed(r, table)) == 0)
        e->stamp = txnid;
    if (rc == KVS_ENOTFOUND)
        return 0;
    return rc != 0 ? rc : kvs_lmdb_count(r->txn, e->dbi, n);
}

int kvs_lmdb_reader_meta(kvs_lmdb_reader_t *r, const char *key, kvs_slice_t *val)
{
    return kvs_lmdb_get(r->txn, r->meta, key, strlen(key), val);
}

const char *kvs_lmdb_reader_why(const kvs_lmdb_reader_t *r)
{
    return r->why != NULL ? r->why : "no error";
}

int kvs_lmdb_reader_check(kvs_lmdb_reader_t *r, int *cleared)
{
    int dead = 0;
    int rc = mdb_reader_check(r->env, &dead);
    *cleared = dead;
    return rc == 0 ? 0 : kvs_lmdb_err("mdb_reader_check", rc);
}

const kvs_lmdb_ident_t *kvs_lmdb_reader_ident(const kvs_lmdb_reader_t *r)
{
    return &r->ident;
}

uint64_t kvs_lmdb_reader_remaps(const kvs_lmdb_reader_t *r)
{
    return r->remaps;
}

uint64_t kvs_lmdb_reader_map_size(const kvs_lmdb_reader_t *r)
{
    MDB_envinfo info;
    if (mdb_env_info(r->env, &info) != 0)
        return 0;
    return info.me_mapsize;
}

/* ---- opening ------------------------------------------------------------------ */

/* Whether __kvs `key` holds `want`. Returns 0, or KVS_EMISMATCH with err
 * saying what differs. */
static int expect(kvs_lmdb_reader_t *r, const char *dir, const char *key, const char *want,
                  char *err, size_t errlen)
{
    kvs_slice_t v;
    int rc = kvs_lmdb_reader_meta(r, key, &v);
    if (rc == KVS_ENOTFOUND) {
        snprintf(err, errlen, "%s records no %s (its worker has not set it up yet)", dir, key);
        return KVS_EMISMATCH;
    }
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot read its %s", dir, key);
        return rc;
    }
    if (v.len != strlen(want) || memcmp(v.p, want, v.len) != 0) {
        snprintf(err, errlen, "%s was created with %s \"%.*s\", not \"%s\"", dir, key, (int)v.len,
                 (const char *)v.p, want);
        return KVS_EMISMATCH;
    }
    return 0;
}

/* The first snapshot: the environment must be one this kvs reads as its
 * worker does (format, shard, placement). */
static int check_identity(kvs_lmdb_reader_t *r, const kvs_lmdb_reader_opts_t *o, char *err,
                          size_t errlen)
{
    char shard[16], version[] = KVS_SCHEMA_FORMAT_VERSION;
    kvs_slice_t v;
    if (kvs_lmdb_reader_begin(r) != 0) {
        snprintf(err, errlen, "%s: cannot begin a read snapshot: %s", o->dir,
                 kvs_lmdb_reader_why(r));
        return KVS_ESTORE;
    }
    int rc = mdb_dbi_open(r->txn, KVS_SCHEMA_META_DB, 0, &r->meta);
    if (rc != 0)
        snprintf(err, errlen, "%s: no %s database (its worker has not set it up yet)", o->dir,
                 KVS_SCHEMA_META_DB);
    r->commit = 1; /* keeps the __kvs handle */
    if (rc == 0) {
        rc = kvs_lmdb_reader_meta(r, KVS_SCHEMA_KEY_FORMAT, &v);
        if (kvs_schema_format(rc == 0 ? v.p : NULL, rc == 0 ? v.len : 0) !=
            KVS_SCHEMA_FORMAT_CURRENT)
            rc = expect(r, o->dir, KVS_SCHEMA_KEY_FORMAT, version, err, errlen);
        else
            rc = 0;
    } else {
        rc = KVS_EMISMATCH;
    }
    snprintf(shard, sizeof(shard), "%u", o->shard);
    if (rc == 0)
        rc = expect(r, o->dir, KVS_SCHEMA_KEY_SHARD, shard, err, errlen);
    if (rc == 0)
        rc = expect(r, o->dir, KVS_SCHEMA_KEY_PLACEMENT, o->placement, err, errlen);
    kvs_lmdb_reader_end(r);
    return rc;
}

static int env_open(kvs_lmdb_reader_t *r, const kvs_lmdb_reader_opts_t *o, char *err, size_t errlen)
{
    char path[4200];
    struct stat st;
    /* LMDB would create data.mdb; a reader must never be the one to. */
    snprintf(path, sizeof(path), "%s/data.mdb", o->dir);
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return KVS_ESTORE;
    }
    int rc = mdb_env_create(&r->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(r->env, o->max_tables + 1);
    if (rc == 0)
        rc = mdb_env_set_maxreaders(r->env, KVS_SCHEMA_MAX_READERS);
    if (rc == 0)
        rc = mdb_env_open(r->env, o->dir, MDB_RDONLY | MDB_NOTLS, 0600);
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot open the LMDB environment read-only: %s", o->dir,
                 mdb_strerror(rc));
        return KVS_ESTORE;
    }
    int fd;
    snprintf(path, sizeof(path), "%s/lock.mdb", o->dir);
    if (mdb_env_get_fd(r->env, &fd) != 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: cannot stat data.mdb", o->dir);
        return KVS_ESTORE;
    }
    r->ident.data_dev = (uint64_t)st.st_dev;
    r->ident.data_ino = (uint64_t)st.st_ino;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return KVS_ESTORE;
    }
    r->ident.lock_dev = (uint64_t)st.st_dev;
    r->ident.lock_ino = (uint64_t)st.st_ino;
    return 0;
}

/* A compacted copy (MDB_CP_COMPACT, as a Snapshot sends) holds exactly
 * the pages its meta page names, none past them, none missing: one that
 * is shorter was cut short, and a read of its missing pages would fault
 * (SIGBUS) once it is in place. (A live environment may legitimately end
 * before its last page: LMDB leaves free pages at the end unwritten.)
 * Returns 0, or KVS_ESTORE with err saying why. */
static int copy_is_whole(kvs_lmdb_reader_t *r, const char *path, char *err, size_t errlen)
{
    MDB_envinfo info;
    MDB_stat ms;
    struct stat st;
    int fd;
    if (mdb_env_info(r->env, &info) != 0 || mdb_env_stat(r->env, &ms) != 0 ||
        mdb_env_get_fd(r->env, &fd) != 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: cannot read its size or meta page", path);
        return KVS_ESTORE;
    }
    uint64_t need = ((uint64_t)info.me_last_pgno + 1) * ms.ms_psize;
    if ((uint64_t)st.st_size >= need)
        return 0;
    snprintf(err, errlen,
             "%s is %llu bytes, less than the %llu bytes its pages take: the copy was cut short",
             path, (unsigned long long)st.st_size, (unsigned long long)need);
    return KVS_ESTORE;
}

int kvs_lmdb_reader_open(const kvs_lmdb_reader_opts_t *o, kvs_lmdb_reader_t **out, char *err,
                         size_t errlen)
{
    kvs_lmdb_reader_t *r = calloc(1, sizeof(*r));
    *out = r; /* already: a caller that jumps out of a fault here can close it */
    if (r == NULL)
        return -ENOMEM;
    int rc = kvs_dbimap_init(&r->tables, o->max_tables);
    if (rc == 0 && (r->gone = calloc((size_t)o->max_tables + 1, sizeof(*r->gone))) == NULL)
        rc = -ENOMEM;
    if (rc == 0)
        rc = env_open(r, o, err, errlen);
    if (rc == 0)
        rc = check_identity(r, o, err, errlen);
    int cleared;
    if (rc == 0)
        kvs_lmdb_reader_check(r, &cleared);
    if (rc != 0) {
        *out = NULL;
        kvs_lmdb_reader_close(r);
        return rc;
    }
    return 0;
}

int kvs_lmdb_check_file(const char *path, uint32_t shard, const char *placement, char *err,
                        size_t errlen)
{
    kvs_lmdb_reader_opts_t o = {.dir = path, .shard = shard, .placement = placement};
    kvs_lmdb_reader_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    /* MDB_NOLOCK: no lock file beside it, and none needed, nobody else
     * has it open; one database handle, for __kvs. */
    int rc = mdb_env_create(&r->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(r->env, 1);
    if (rc == 0)
        rc = mdb_env_open(r->env, path, MDB_RDONLY | MDB_NOSUBDIR | MDB_NOLOCK | MDB_NOTLS, 0600);
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot open it as an LMDB environment: %s", path,
                 mdb_strerror(rc));
        rc = KVS_ESTORE;
    }
    if (rc == 0)
        rc = copy_is_whole(r, path, err, errlen);
    if (rc == 0)
        rc = check_identity(r, &o, err, errlen);
    kvs_lmdb_reader_close(r);
    return rc;
}

/* ---- walking a whole file ---------------------------------------------------------- */

#define WALK_MAX_DBS 32001 /* storage.max_tables' largest value, plus __kvs */

/* Reads every byte of v (into *sum, so that the reads happen). */
static void walk_touch(const MDB_val *v, uint64_t *sum)
{
    const uint8_t *p = v->mv_data;
    uint64_t x = *sum;
    for (size_t i = 0; i < v->mv_size; i++)
        x = x * 31 + p[i];
    *sum = x;
}

/* The freelist: each record a list of page numbers that starts with its
 * length (as mdb_stat reads it); every number must name a page of the file. */
static int walk_freelist(MDB_txn *txn, size_t last_pgno, kvs_lmdb_walk_t *out, char *err,
                         size_t errlen)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_cursor_open(txn, 0, &c);
    if (rc != 0) {
        snprintf(err, errlen, "the freelist: %s", mdb_strerror(rc));
        return KVS_EDAMAGED;
    }
    while ((rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0) {
        const size_t *ids = v.mv_data; /* LMDB's pgno_t */
        size_t len = v.mv_size / sizeof(size_t);
        if (len == 0 || v.mv_size % sizeof(size_t) != 0 || ids[0] > len - 1) {
            snprintf(err, errlen, "a freelist record of %zu bytes is not a list of pages",
                     v.mv_size);
            mdb_cursor_close(c);
            return KVS_EDAMAGED;
        }
        for (size_t i = 1; i <= ids[0]; i++)
            if (ids[i] < 2 || ids[i] > last_pgno) {
                snprintf(err, errlen, "the freelist names page %zu; the file's pages are 2..%zu",
                         ids[i], last_pgno);
                mdb_cursor_close(c);
                return KVS_EDAMAGED;
            }
        out->free_ids += ids[0];
    }
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND)
        return 0;
    snprintf(err, errlen, "reading the freelist: %s", mdb_strerror(rc));
    return KVS_EDAMAGED;
}

/* One database's pairs, in order, each read to its last byte, as many as
 * its header counts (and no more: a damaged tree may lead a walk through
 * the same pages again and again). */
static int walk_db(MDB_txn *txn, MDB_dbi dbi, const char *name, kvs_lmdb_walk_t *out, uint64_t *sum,
                   char *err, size_t errlen)
{
    MDB_stat st;
    MDB_cursor *c;
    MDB_val k, v, prev = {0, NULL}, prev_v = {0, NULL};
    uint64_t n = 0;
    unsigned flags = 0;
    int rc = mdb_stat(txn, dbi, &st);
    if (rc == 0)
        rc = mdb_dbi_flags(txn, dbi, &flags);
    int dupsort = (flags & MDB_DUPSORT) != 0;
    if (rc == 0)
        rc = mdb_cursor_open(txn, dbi, &c);
    if (rc != 0) {
        snprintf(err, errlen, "database \"%.200s\": %s", name, mdb_strerror(rc));
        return KVS_EDAMAGED;
    }
    while ((rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0) {
        if (++n > st.ms_entries) {
            snprintf(err, errlen, "database \"%.200s\" holds more pairs than its header's %zu",
                     name, st.ms_entries);
            mdb_cursor_close(c);
            return KVS_EDAMAGED;
        }
        int order = prev.mv_data != NULL ? mdb_cmp(txn, dbi, &prev, &k) : -1;
        if (order == 0 && dupsort) /* a key's values, each after the one before */
            order = mdb_dcmp(txn, dbi, &prev_v, &v);
        if (order >= 0) {
            snprintf(err, errlen, "database \"%.200s\": pair %llu is out of order", name,
                     (unsigned long long)n);
            mdb_cursor_close(c);
            return KVS_EDAMAGED;
        }
        walk_touch(&k, sum);
        walk_touch(&v, sum);
        out->bytes += k.mv_size + v.mv_size;
        prev = k;
        prev_v = v;
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND) {
        snprintf(err, errlen, "database \"%.200s\", after pair %llu: %s", name,
                 (unsigned long long)n, mdb_strerror(rc));
        return KVS_EDAMAGED;
    }
    if (n != st.ms_entries) {
        snprintf(err, errlen, "database \"%.200s\" holds %llu pairs; its header counts %zu", name,
                 (unsigned long long)n, st.ms_entries);
        return KVS_EDAMAGED;
    }
    out->pairs += n;
    return 0;
}

/* The main database: every record names a database, each walked. */
static int walk_tables(MDB_txn *txn, kvs_lmdb_walk_t *out, uint64_t *sum, char *err, size_t errlen)
{
    MDB_dbi main_dbi, dbi;
    MDB_cursor *c;
    MDB_val k, v;
    char name[512];
    int rc = mdb_dbi_open(txn, NULL, 0, &main_dbi);
    if (rc == 0)
        rc = mdb_cursor_open(txn, main_dbi, &c);
    if (rc != 0) {
        snprintf(err, errlen, "the main database: %s", mdb_strerror(rc));
        return KVS_EDAMAGED;
    }
    while ((rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0) {
        if (k.mv_size == 0 || k.mv_size >= sizeof(name) || memchr(k.mv_data, 0, k.mv_size)) {
            snprintf(err, errlen, "the main database holds a record of a %zu-byte name", k.mv_size);
            mdb_cursor_close(c);
            return KVS_EDAMAGED;
        }
        memcpy(name, k.mv_data, k.mv_size);
        name[k.mv_size] = '\0';
        if ((rc = mdb_dbi_open(txn, name, 0, &dbi)) != 0) {
            snprintf(err, errlen, "the main database's record \"%.200s\" is not a database: %s",
                     name, mdb_strerror(rc));
            mdb_cursor_close(c);
            return KVS_EDAMAGED;
        }
        out->tables++;
        if ((rc = walk_db(txn, dbi, name, out, sum, err, errlen)) != 0) {
            mdb_cursor_close(c);
            return rc;
        }
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND) {
        snprintf(err, errlen, "the main database: %s", mdb_strerror(rc));
        return KVS_EDAMAGED;
    }
    return 0;
}

int kvs_lmdb_walk_file(const char *path, kvs_lmdb_walk_t *out, char *err, size_t errlen)
{
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_envinfo info;
    uint64_t sum = 0;
    struct stat fst;
    memset(out, 0, sizeof(*out));
    if (stat(path, &fst) == 0 && S_ISREG(fst.st_mode) && fst.st_size == 0) {
        snprintf(err, errlen, "the file is empty (0 bytes)");
        return KVS_EDAMAGED;
    }
    int rc = mdb_env_create(&env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(env, WALK_MAX_DBS);
    if (rc == 0)
        rc = mdb_env_open(env, path, MDB_RDONLY | MDB_NOSUBDIR | MDB_NOLOCK | MDB_NOTLS, 0600);
    if (rc == 0)
        rc = mdb_env_info(env, &info);
    if (rc == 0)
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    if (rc != 0) {
        snprintf(err, errlen, "cannot open it as an LMDB environment: %s", mdb_strerror(rc));
        mdb_env_close(env);
        return KVS_ESTORE;
    }
    rc = walk_freelist(txn, info.me_last_pgno, out, err, errlen);
    if (rc == 0)
        rc = walk_tables(txn, out, &sum, err, errlen);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    volatile uint64_t keep = sum; /* the bytes were read */
    (void)keep;
    return rc;
}

void kvs_lmdb_reader_close(kvs_lmdb_reader_t *r)
{
    if (r == NULL)
        return;
    if (r->cursor != NULL) /* a read-only txn's cursor: closing it only frees it */
        mdb_cursor_close(r->cursor);
    if (r->txn != NULL)
        mdb_txn_abort(r->txn); /* also after a reset: frees the txn and its slot */
    if (r->env != NULL)
        mdb_env_close(r->env);
    kvs_dbimap_free(&r->tables);
    free(r->gone);
    free(r);
}

/*
 * node_store: one shard's LMDB environment, one named database per table,
 * and the reserved __kvs database for metadata (format version, shard id,
 * placement fingerprint, later Kafka offsets).
 *
 * Group commit. All writes of a loop turn go into one write txn (the
 * "batch"), committed by node_store_end_turn before any of them is
 * acknowledged. With sync: full the commit fsyncs; with batch/none the env
 * runs MDB_NOSYNC and node_store_sync is called on a timer (batch) or never.
 * Either way a commit is atomic: after kill -9 a batch is wholly there or
 * wholly absent.
 *
 * Write map. With sync: batch or none the env runs MDB_WRITEMAP: writes go
 * straight into the shared mapping instead of through a pwrite per dirty
 * page at commit (measured: HSET throughput x1.5, worker CPU halved). sync:
 * full keeps ordinary writes (a write map would msync the whole map on
 * every commit). In both modes the data file is preallocated
 * (posix_fallocate) past every page a batch may touch before the batch
 * starts, so a full disk fails there, as KVS_EFULL, before anything is
 * written (a write map would otherwise SIGBUS on a hole).
 *
 * Map growth. LMDB fails a write with MDB_MAP_FULL when the map is full, and
 * a failed write poisons its whole txn. So before every write we check the
 * batch's worst-case page use against the room left; when it would not fit
 * we commit the batch early, grow the map (which LMDB allows only with no
 * txn active in the process, hence the read snapshot is released first) and
 * open a new batch. The estimate is deliberately pessimistic: growing the
 * map costs address space, not disk.
 *
 * Table handles. Every existing table is opened once at start; tables are
 * only created by this process (single writer, enforced by a lock file), so
 * a name not in the cache does not exist. A table created inside a batch is
 * "pending" until the commit: if the batch fails LMDB closes its handle and
 * we forget it.
 */
#include "node_store.h"
#include "kvs_err.h"
#include "kvs_fs.h"
#include "kvs_log.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* What the stored bytes mean. 1: kvs 0.1, Value.integer_value as sint64.
 * 2: the original KV protocol's int64 (kvs.proto says why). Stored values
 * are encoded Values served as they are, so a format-1 environment would
 * answer wrong integers: format_check refuses it. */
#define FORMAT_VERSION "2"
#define META_DB "__kvs"
#define OP_PAGES_BASE 6            /* pages a write may dirty: path copy + split */
#define MIN_FREE_PAGES 16384       /* keep at least 64 MiB (4 KiB pages) free */
#define MAX_BATCH_PAGES 16384      /* a batch may touch at most this much before an early commit */
#define PREALLOC_CHUNK (64u << 20) /* write map: allocate ahead in steps of this */

typedef struct table_s {
    char *name; /* NULL = empty slot */
    MDB_dbi dbi;
    int pending; /* created in the open batch */
} table_t;

struct node_store_s {
    MDB_env *env;
    MDB_dbi meta;
    MDB_txn *rtxn; /* reused read txn; reset between turns */
    int rtxn_live;
    MDB_txn *wtxn; /* the open batch, or NULL */
    uint64_t gen;  /* generation of the open batch (0 = none) */
    uint64_t next_gen;
    uint64_t last_failed_gen; /* most recent batch that failed (0 = none) */
    size_t txn_pages;         /* worst-case pages the batch may have dirtied */
    size_t txn_budget;        /* pages the batch may use before an early commit */
    int reserved;             /* inside node_store_reserve .. reserve_end: no early commit */
    int reserve_err;          /* why the reserved batch is gone, if it failed */
    size_t psize;
    uint64_t map_size;
    table_t *tables;
    uint32_t tables_cap; /* power of two */
    uint32_t n_tables;
    uint32_t n_pending; /* tables created in the open batch */
    uint32_t max_tables;
    int lock_fd;
    int writemap;       /* env runs MDB_WRITEMAP */
    uint64_t alloc_end; /* bytes of the data file known to be allocated */
    node_store_fail_cb fail_cb;
    void *fail_arg;
};

/* ---- errors --------------------------------------------------------- */

static int map_err(const char *what, int rc)
{
    switch (rc) {
    case 0:
        return 0;
    case MDB_NOTFOUND:
        return KVS_ENOTFOUND;
    case MDB_MAP_FULL:
    case ENOSPC:
    case EDQUOT:
    case EFBIG: /* the file may not grow (RLIMIT_FSIZE): as good as full */
        kvs_error("%s: %s", what, mdb_strerror(rc));
        return KVS_EFULL;
    case MDB_DBS_FULL:
        return KVS_ELIMIT;
    default:
        kvs_error("%s: %s", what, mdb_strerror(rc));
        return KVS_ESTORE;
    }
}

/* ---- table cache ------------------------------------------------------ */

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static table_t *table_slot(node_store_t *s, const char *name)
{
    uint32_t mask = s->tables_cap - 1;
    for (uint32_t i = name_hash(name) & mask;; i = (i + 1) & mask) {
        table_t *t = &s->tables[i];
        if (t->name == NULL || strcmp(t->name, name) == 0)
            return t;
    }
}

static int table_add(node_store_t *s, const char *name, MDB_dbi dbi, int pending)
{
    table_t *t = table_slot(s, name);
    t->name = strdup(name);
    if (t->name == NULL)
        return -ENOMEM;
    t->dbi = dbi;
    t->pending = pending;
    s->n_tables++;
    s->n_pending += pending ? 1 : 0;
    return 0;
}

/* After a batch ends: pending tables become permanent (commit) or are
 * forgotten (abort). Rebuilds the open-addressing table only when the batch
 * created tables, which is rare. */
static void tables_settle(node_store_t *s, int drop_pending)
{
    if (s->n_pending == 0)
        return;
    s->n_pending = 0;
    table_t *old = s->tables;
    table_t *fresh = calloc(s->tables_cap, sizeof(*fresh));
    if (fresh == NULL)
        abort(); /* cannot happen at this size after start; no safe recovery */
    s->tables = fresh;
    s->n_tables = 0;
    for (uint32_t i = 0; i < s->tables_cap; i++) {
        if (old[i].name == NULL)
            continue;
        if (drop_pending && old[i].pending) {
            free(old[i].name);
            continue;
        }
        table_t *t = table_slot(s, old[i].name);
        *t = old[i];
        t->pending = 0;
        s->n_tables++;
    }
    free(old);
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

static int batch_commit(node_store_t *s)
{
    if (s->wtxn == NULL)
        return 0;
    int rc = mdb_txn_commit(s->wtxn);
    uint64_t gen = s->gen;
    s->wtxn = NULL;
    s->gen = 0;
    if (rc != 0) {
        tables_settle(s, 1);
        s->last_failed_gen = gen;
        int err = map_err("commit", rc);
        if (s->fail_cb != NULL)
            s->fail_cb(s->fail_arg, gen, err);
        return err;
    }
    tables_settle(s, 0);
    read_release(s); /* a snapshot from before this commit must not be read again */
    return 0;
}

/* A write failed inside the batch: LMDB has poisoned the txn, so the whole
 * batch is lost. Aborts it and reports the generation as failed. */
static int batch_fail(node_store_t *s, const char *what, int rc)
{
    int err = map_err(what, rc);
    s->reserve_err = err; /* the rest of a reservation must not start anew */
    uint64_t gen = s->gen;
    s->last_failed_gen = gen;
    mdb_txn_abort(s->wtxn);
    read_release(s);
    s->wtxn = NULL;
    s->gen = 0;
    tables_settle(s, 1);
    if (s->fail_cb != NULL)
        s->fail_cb(s->fail_arg, gen, err);
    return err;
}

/* Grows the map when less than a quarter (or MIN_FREE_PAGES) is free, or
 * when `need` pages would not fit. No txn may be active. */
static int map_grow(node_store_t *s, size_t need)
{
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    size_t total = s->map_size / s->psize;
    size_t used = (size_t)info.me_last_pgno + 1;
    size_t free_pages = total > used ? total - used : 0;
    size_t want = need * 2;
    if (want < MIN_FREE_PAGES)
        want = MIN_FREE_PAGES;
    if (want < total / 4)
        want = total / 4;
    if (free_pages >= want)
        return 0;
    uint64_t size = s->map_size;
    while (size / s->psize < used + want)
        size *= 2;
    read_release(s);
    /* mdb_env_set_mapsize unmaps before it remaps, so if it fails the env
     * is unusable. With a write map it grows the file (ftruncate), which
     * can fail (file size limit): grow the file first, where a failure is
     * just a full disk. */
    int fd;
    struct stat st;
    if (s->writemap && mdb_env_get_fd(s->env, &fd) == 0 && fstat(fd, &st) == 0 &&
        (uint64_t)st.st_size < size && ftruncate(fd, (off_t)size) != 0)
        return map_err("growing the data file", errno);
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

/* Makes sure the data file's blocks exist up to `end` bytes, so no write
 * of the batch needs new disk space: through a write map a hole on a full
 * disk would be SIGBUS, and through pwrite a short write that LMDB reports
 * as EIO. Here a full disk is ENOSPC, before anything is written. */
static int preallocate(node_store_t *s, uint64_t end)
{
    if (end <= s->alloc_end)
        return 0;
    int fd;
    if (mdb_env_get_fd(s->env, &fd) != 0)
        return KVS_ESTORE;
    uint64_t want = end + PREALLOC_CHUNK < s->map_size ? end + PREALLOC_CHUNK : s->map_size;
    if (want < end)
        want = end;
    int rc = posix_fallocate(fd, (off_t)s->alloc_end, (off_t)(want - s->alloc_end));
    if (rc != 0 && want > end) { /* short of room for the chunk: try what is needed */
        want = end;
        rc = posix_fallocate(fd, (off_t)s->alloc_end, (off_t)(end - s->alloc_end));
    }
    if (rc != 0) {
        kvs_error("cannot allocate disk space for the next write batch: %s", strerror(rc));
        return rc == ENOSPC || rc == EDQUOT || rc == EFBIG ? KVS_EFULL : KVS_ESTORE;
    }
    s->alloc_end = want; /* exactly what the successful call allocated */
    return 0;
}

static int batch_begin(node_store_t *s, size_t need)
{
    int rc = map_grow(s, need);
    if (rc != 0)
        return rc;
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    size_t total = s->map_size / s->psize;
    size_t used = (size_t)info.me_last_pgno + 1;
    size_t budget = (total - used) / 2;
    if (budget > MAX_BATCH_PAGES)
        budget = MAX_BATCH_PAGES;
    if (budget < need)
        budget = need;
    rc = preallocate(s, (uint64_t)(used + budget) * s->psize);
    if (rc != 0)
        return rc;
    rc = mdb_txn_begin(s->env, NULL, 0, &s->wtxn);
    if (rc != 0) {
        s->wtxn = NULL;
        return map_err("mdb_txn_begin", rc);
    }
    s->gen = ++s->next_gen;
    s->txn_pages = 0;
    s->txn_budget = budget;
    return 0;
}

/* Makes sure a write of `bytes` can join the batch without MDB_MAP_FULL:
 * opens the batch, or commits it early and opens a new one when the
 * worst-case estimate would exceed its budget. */
static size_t op_pages(node_store_t *s, size_t ops, size_t bytes)
{
    return ops * (OP_PAGES_BASE + 2) + 2 * ((bytes + s->psize - 1) / s->psize);
}

static int batch_room(node_store_t *s, size_t bytes)
{
    size_t pages = op_pages(s, 1, bytes);
    if (s->reserved) /* paid for by node_store_reserve; never split a reservation */
        return s->wtxn != NULL ? 0 : s->reserve_err;
    if (s->wtxn != NULL && s->txn_pages + pages <= s->txn_budget) {
        s->txn_pages += pages;
        return 0;
    }
    int rc = batch_commit(s);
    if (rc != 0)
        return rc;
    rc = batch_begin(s, pages);
    if (rc != 0)
        return rc;
    s->txn_pages = pages;
    return 0;
}

int node_store_reserve(node_store_t *s, size_t ops, size_t bytes)
{
    size_t pages = op_pages(s, ops, bytes) + 2 * ops; /* + each op's own rounding */
    if (s->wtxn == NULL || s->txn_pages + pages > s->txn_budget) {
        int rc = batch_commit(s);
        if (rc == 0)
            rc = batch_begin(s, pages);
        if (rc != 0)
            return rc;
    }
    s->txn_pages += pages;
    s->reserved = 1;
    s->reserve_err = KVS_ESTORE;
    return 0;
}

void node_store_reserve_end(node_store_t *s)
{
    s->reserved = 0;
}

uint64_t node_store_batch_gen(const node_store_t *s)
{
    return s->gen;
}

uint64_t node_store_last_failed_gen(const node_store_t *s)
{
    return s->last_failed_gen;
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
    table_t *t = table_slot(s, table);
    if (t->name != NULL) {
        *dbi = t->dbi;
        return 0;
    }
    if (!create)
        return KVS_ENOTFOUND;
    if (s->n_tables >= s->max_tables)
        return KVS_ELIMIT;
    int rc = mdb_dbi_open(s->wtxn, table, MDB_CREATE, dbi);
    if (rc != 0)
        return map_err("mdb_dbi_open", rc);
    return table_add(s, table, *dbi, 1);
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
    MDB_val k = {klen, (void *)key}, v;
    rc = mdb_get(txn, dbi, &k, &v);
    if (rc != 0)
        return rc == MDB_NOTFOUND ? KVS_ENOTFOUND : map_err("mdb_get", rc);
    val->p = v.mv_data;
    val->len = v.mv_size;
    return 0;
}

int node_store_put(node_store_t *s, const char *table, const void *key, size_t klen,
                   const void *val, size_t vlen)
{
    int rc = batch_room(s, klen + vlen);
    if (rc != 0)
        return rc;
    MDB_dbi dbi;
    rc = table_dbi(s, table, 1, &dbi);
    if (rc != 0)
        return rc;
    MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
    rc = mdb_put(s->wtxn, dbi, &k, &v, 0);
    return rc == 0 ? 0 : batch_fail(s, "mdb_put", rc);
}

int node_store_del(node_store_t *s, const char *table, const void *key, size_t klen)
{
    MDB_dbi dbi;
    int rc = table_dbi(s, table, 0, &dbi);
    if (rc != 0)
        return rc;
    rc = batch_room(s, klen);
    if (rc != 0)
        return rc;
    MDB_val k = {klen, (void *)key};
    rc = mdb_del(s->wtxn, dbi, &k, NULL);
    if (rc == MDB_NOTFOUND)
        return KVS_ENOTFOUND;
    return rc == 0 ? 0 : batch_fail(s, "mdb_del", rc);
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
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc != 0)
        return map_err("mdb_cursor_open", rc);
    MDB_val k = {flen, (void *)from}, v;
    rc = mdb_cursor_get(cur, &k, &v, flen > 0 ? MDB_SET_RANGE : MDB_FIRST);
    while (rc == 0) {
        node_slice_t ks = {k.mv_data, k.mv_size}, vs = {v.mv_data, v.mv_size};
        if (cb(arg, ks, vs) != 0)
            break;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : map_err("mdb_cursor_get", rc);
}

int node_store_meta_get(node_store_t *s, const char *key, node_slice_t *val)
{
    MDB_txn *txn = read_txn(s);
    if (txn == NULL)
        return KVS_ESTORE;
    MDB_val k = {strlen(key), (void *)key}, v;
    int rc = mdb_get(txn, s->meta, &k, &v);
    if (rc != 0)
        return rc == MDB_NOTFOUND ? KVS_ENOTFOUND : map_err("mdb_get meta", rc);
    val->p = v.mv_data;
    val->len = v.mv_size;
    return 0;
}

int node_store_meta_put(node_store_t *s, const char *key, const void *val, size_t vlen)
{
    int rc = batch_room(s, strlen(key) + vlen);
    if (rc != 0)
        return rc;
    MDB_val k = {strlen(key), (void *)key}, v = {vlen, (void *)val};
    rc = mdb_put(s->wtxn, s->meta, &k, &v, 0);
    return rc == 0 ? 0 : batch_fail(s, "mdb_put meta", rc);
}

int node_store_sync(node_store_t *s)
{
    return map_err("mdb_env_sync", mdb_env_sync(s->env, 1));
}

uint32_t node_store_table_count(const node_store_t *s)
{
    return s->n_tables;
}

uint64_t node_store_map_size(const node_store_t *s)
{
    return s->map_size;
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

/* Opens a handle for every existing table (the keys of the main DB). */
static int open_tables(node_store_t *s, MDB_txn *txn, char *err, size_t errlen)
{
    MDB_dbi main;
    MDB_cursor *cur;
    int rc = mdb_dbi_open(txn, NULL, 0, &main);
    if (rc == 0)
        rc = mdb_cursor_open(txn, main, &cur);
    if (rc != 0) {
        snprintf(err, errlen, "cannot list tables: %s", mdb_strerror(rc));
        return KVS_ESTORE;
    }
    MDB_val k, v;
    char name[256];
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        if (k.mv_size == 0 || k.mv_size >= sizeof(name))
            continue;
        memcpy(name, k.mv_data, k.mv_size);
        name[k.mv_size] = '\0';
        if (strcmp(name, META_DB) == 0)
            continue;
        MDB_dbi dbi;
        if (mdb_dbi_open(txn, name, 0, &dbi) != 0 || table_add(s, name, dbi, 0) != 0)
            continue;
    }
    mdb_cursor_close(cur);
    return 0;
}

static int env_open(node_store_t *s, const node_store_opts_t *o, char *err, size_t errlen)
{
    unsigned flags = MDB_NOTLS;
    if (o->sync != KVS_SYNC_FULL) {
        flags |= MDB_NOSYNC | MDB_WRITEMAP;
        s->writemap = 1;
    }
    int rc = mdb_env_create(&s->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(s->env, o->max_tables + 1);
    if (rc == 0)
        rc = mdb_env_set_mapsize(s->env, (size_t)o->map_size);
    if (rc == 0)
        rc = mdb_env_open(s->env, o->dir, flags, 0600); /* the node's user only */
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot open LMDB environment: %s", o->dir, mdb_strerror(rc));
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
    MDB_val k = {sizeof("format_version") - 1, (void *)"format_version"}, v;
    int rc = mdb_get(txn, meta, &k, &v);
    if (rc != 0 || v.mv_size != 1 || *(const char *)v.mv_data != '1') /* new, current, newer */
        return meta_check(txn, meta, "format_version", FORMAT_VERSION, dir, err, errlen);
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
        rc = meta_check(txn, s->meta, "shard", shard, o->dir, err, errlen);
    if (rc == 0)
        rc = meta_check(txn, s->meta, "placement", o->placement, o->dir, err, errlen);
    if (rc == 0)
        rc = open_tables(s, txn, err, errlen);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return rc;
    }
    rc = mdb_txn_commit(txn);
    if (rc != 0) {
        snprintf(err, errlen, "%s: commit: %s", o->dir, mdb_strerror(rc));
        return KVS_ESTORE;
    }
    return 0;
}

int node_store_open(const node_store_opts_t *o, node_store_t **out, char *err, size_t errlen)
{
    node_store_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    s->lock_fd = -1;
    s->max_tables = o->max_tables;
    s->fail_cb = o->fail_cb;
    s->fail_arg = o->fail_arg;
    s->tables_cap = 16;
    while (s->tables_cap < 2 * (o->max_tables + 1))
        s->tables_cap *= 2;
    s->tables = calloc(s->tables_cap, sizeof(*s->tables));
    int rc = s->tables == NULL ? -ENOMEM : 0;
    if (rc == 0 && mkdir(o->dir, 0700) != 0 && errno != EEXIST) {
        rc = -errno;
        snprintf(err, errlen, "%s: cannot create directory: %s", o->dir, strerror(errno));
    }
    if (rc == 0)
        rc = lock_dir(s, o->dir, err, errlen);
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
    *out = s;
    return 0;
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
        mdb_env_sync(s->env, 1);
        mdb_env_close(s->env);
    }
    for (uint32_t i = 0; s->tables != NULL && i < s->tables_cap; i++)
        free(s->tables[i].name);
    free(s->tables);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    free(s);
    return rc;
}

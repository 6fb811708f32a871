/*
 * Unit tests for node_store: identity checks, locking, per-turn batches,
 * map growth, multi-write reservations, table limits, scans, and disk use:
 * full disks, failed commits, and what a write costs in disk and map. Each
 * case uses a fresh temporary directory.
 *
 * A full disk is simulated without privileges with RLIMIT_FSIZE: the data
 * file may not grow past the limit (writes past it fail with EFBIG, or are
 * cut short, which LMDB reports as EIO; SIGXFSZ is ignored).
 *
 * Damaged files (data.mdb cut short, overwritten, not a file, emptied) are
 * made by hand between a close and an open; lmdb.h is included only to read
 * an environment's last page, which the store does not expose.
 */
#include "kvs_err.h"
#include "kvs_schema.h"
#include "kvs_test.h"
#include "node_store.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char envdir[300];

static void fresh_dir(void)
{
    KVS_TEST_FRESH_DIR("store");
    snprintf(envdir, sizeof(envdir), "%s/shard-0", kvs_test_dir());
}

static node_store_opts_t opts(uint32_t shard, const char *placement)
{
    node_store_opts_t o = {
        .dir = envdir,
        .shard = shard,
        .placement = placement,
        .map_size = 1u << 20,
        .max_tables = 8,
        .sync = KVS_SYNC_NONE,
    };
    return o;
}

static node_store_t *open_ok(node_store_opts_t o)
{
    node_store_t *s = NULL;
    char err[512] = "";
    int rc = node_store_open(&o, &s, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "open: %s\n", err);
    CHECK_EQ(rc, 0);
    return s;
}

static void put_str(node_store_t *s, const char *t, const char *k, const char *v)
{
    CHECK_EQ(node_store_put(s, t, k, strlen(k), v, strlen(v)), 0);
}

static int get_is(node_store_t *s, const char *t, const char *k, const char *want)
{
    node_slice_t v;
    int rc = node_store_get(s, t, k, strlen(k), &v);
    if (want == NULL)
        return rc == KVS_ENOTFOUND;
    return rc == 0 && v.len == strlen(want) && memcmp(v.p, want, v.len) == 0;
}

KVS_TEST(reopen_keeps_data)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p1"));
    put_str(s, "users", "42", "alice");
    put_str(s, "orders", "1", "book");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_close(s), 0);
    s = open_ok(opts(0, "p1"));
    CHECK_EQ(node_store_table_count(s), 2);
    CHECK(get_is(s, "users", "42", "alice"));
    CHECK(get_is(s, "orders", "1", "book"));
    CHECK(get_is(s, "users", "43", NULL));
    CHECK(get_is(s, "nosuch", "1", NULL));
    node_store_close(s);
}

/* A replaced data.mdb gets a new lock file (reset_lock): LMDB then builds
 * the reader table and transaction id from this data file, and the files
 * the store says it opened are the ones in the directory. */
KVS_TEST(reset_lock_starts_a_new_lock_file)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p1"));
    put_str(s, "users", "42", "alice");
    CHECK_EQ(node_store_end_turn(s), 0);
    kvs_lmdb_ident_t first = *node_store_ident(s), now;
    CHECK_EQ(kvs_lmdb_ident_of(envdir, &now), 0);
    CHECK(memcmp(&first, &now, sizeof(now)) == 0);
    CHECK_EQ(node_store_close(s), 0);
    s = open_ok(opts(0, "p1")); /* an ordinary restart keeps the lock file */
    CHECK_EQ(node_store_ident(s)->lock_ino, first.lock_ino);
    CHECK_EQ(node_store_close(s), 0);
    /* keep the old lock file's inode alive, as a reader still using it would */
    char lock[400];
    snprintf(lock, sizeof(lock), "%s/lock.mdb", envdir);
    FILE *held = fopen(lock, "r");
    CHECK(held != NULL);
    node_store_opts_t o = opts(0, "p1");
    o.reset_lock = 1;
    s = open_ok(o);
    CHECK(node_store_ident(s)->lock_ino != first.lock_ino);
    CHECK_EQ(node_store_ident(s)->data_ino, first.data_ino);
    CHECK(get_is(s, "users", "42", "alice"));
    CHECK_EQ(node_store_close(s), 0);
    fclose(held);
}

KVS_TEST(refuses_other_shard)
{
    fresh_dir();
    node_store_close(open_ok(opts(0, "p1")));
    node_store_opts_t o = opts(1, "p1");
    node_store_t *s = NULL;
    char err[512] = "";
    CHECK_EQ(node_store_open(&o, &s, err, sizeof(err)), KVS_EMISMATCH);
    CHECK(s == NULL);
    CHECK_CONTAINS(err, "shard \"0\"");
    CHECK_CONTAINS(err, "shard \"1\"");
}

KVS_TEST(refuses_other_placement)
{
    fresh_dir();
    node_store_close(open_ok(opts(0, "shards=4 partitions=64")));
    node_store_opts_t o = opts(0, "shards=8 partitions=64");
    node_store_t *s = NULL;
    char err[512] = "";
    CHECK_EQ(node_store_open(&o, &s, err, sizeof(err)), KVS_EMISMATCH);
    CHECK_CONTAINS(err, "placement");
    CHECK_CONTAINS(err, "shards=4 partitions=64");
}

KVS_TEST(refuses_older_wire_format)
{
    /* An environment of kvs 0.1 (format_version 1: sint64 integers) would
     * be served with every integer misread: refused, saying why and what
     * to do; nothing in it is changed. */
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p1"));
    node_slice_t v;
    CHECK_EQ(node_store_meta_get(s, "format_version", &v), 0);
    CHECK(v.len == 1 && v.p[0] == '2'); /* what a new environment gets */
    put_str(s, "users", "42", "alice");
    CHECK_EQ(node_store_meta_put(s, "format_version", "1", 1), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_close(s), 0);
    node_store_opts_t o = opts(0, "p1");
    char err[512] = "";
    for (int i = 0; i < 2; i++) { /* refused every time: the marker stays */
        s = NULL;
        CHECK_EQ(node_store_open(&o, &s, err, sizeof(err)), KVS_EMISMATCH);
        CHECK(s == NULL);
        CHECK_CONTAINS(err, envdir);
        CHECK_CONTAINS(err, "older kvs wire format");
        CHECK_CONTAINS(err, "sint64");
        CHECK_CONTAINS(err, "Move the directory away");
    }
}

KVS_TEST(second_open_is_refused)
{
    fresh_dir();
    node_store_t *a = open_ok(opts(0, "p"));
    node_store_opts_t o = opts(0, "p");
    node_store_t *b = NULL;
    char err[512] = "";
    CHECK_EQ(node_store_open(&o, &b, err, sizeof(err)), -EBUSY);
    CHECK_CONTAINS(err, "in use by another kvs-node");
    node_store_close(a);
    node_store_close(open_ok(opts(0, "p"))); /* free again once closed */
}

KVS_TEST(batch_reads_its_own_writes)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p"));
    CHECK_EQ(node_store_batch_gen(s), 0);
    put_str(s, "t", "k", "v1");
    uint64_t gen = node_store_batch_gen(s);
    CHECK(gen != 0);
    CHECK(get_is(s, "t", "k", "v1"));
    put_str(s, "t", "k", "v2");
    CHECK_EQ(node_store_batch_gen(s), gen);
    CHECK(get_is(s, "t", "k", "v2"));
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_batch_gen(s), 0);
    CHECK(get_is(s, "t", "k", "v2"));
    CHECK_EQ(node_store_del(s, "t", "k", 1), 0);
    CHECK_EQ(node_store_del(s, "t", "k", 1), KVS_ENOTFOUND);
    CHECK_EQ(node_store_del(s, "nosuch", "k", 1), KVS_ENOTFOUND);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK(get_is(s, "t", "k", NULL));
    node_store_close(s);
}

static void count_wake(void *arg)
{
    (*(int *)arg)++;
}

/* Whoever commits at the turn's end is woken once per batch opened
 * (node_server's flusher: a batch a timer opens commits at once). */
KVS_TEST(opening_a_batch_wakes_its_committer)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p"));
    int wakes = 0;
    node_store_set_wake(s, count_wake, &wakes);
    put_str(s, "t", "k", "v1");
    put_str(s, "t", "k2", "v2"); /* the same batch */
    CHECK_EQ(wakes, 1);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(wakes, 1); /* a commit opens nothing */
    put_str(s, "t", "k", "v3");
    CHECK_EQ(wakes, 2);
    CHECK_EQ(node_store_end_turn(s), 0);
    node_store_close(s);
}

KVS_TEST(uncommitted_batch_is_lost_on_crash)
{
    /* A child process writes without ending its turn and dies: nothing of
     * the batch may be visible afterwards. */
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p"));
    put_str(s, "t", "committed", "yes");
    CHECK_EQ(node_store_end_turn(s), 0);
    node_store_close(s);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        node_store_t *c = open_ok(opts(0, "p"));
        put_str(c, "t", "pending", "no");
        _exit(0); /* no end_turn, no close */
    }
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    s = open_ok(opts(0, "p"));
    CHECK(get_is(s, "t", "committed", "yes"));
    CHECK(get_is(s, "t", "pending", NULL));
    node_store_close(s);
}

KVS_TEST(map_grows_before_it_is_full)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p")); /* 1 MiB map */
    char key[32], val[1000];
    memset(val, 'x', sizeof(val));
    for (int turn = 0; turn < 40; turn++) {
        for (int i = 0; i < 500; i++) {
            snprintf(key, sizeof(key), "k%06d", turn * 500 + i);
            CHECK_EQ(node_store_put(s, "big", key, strlen(key), val, sizeof(val)), 0);
        }
        CHECK_EQ(node_store_end_turn(s), 0);
    }
    CHECK(node_store_map_size(s) > 20u << 20); /* 20,000 values of 1 KB */
    snprintf(key, sizeof(key), "k%06d", 19999);
    node_slice_t v;
    CHECK_EQ(node_store_get(s, "big", key, strlen(key), &v), 0);
    CHECK_EQ(v.len, sizeof(val));
    node_store_close(s);
}

KVS_TEST(one_huge_turn_commits_early_and_keeps_everything)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p"));
    char key[32], val[1000];
    memset(val, 'y', sizeof(val));
    uint64_t first = 0;
    int gens = 0;
    for (int i = 0; i < 50000; i++) {
        snprintf(key, sizeof(key), "k%06d", i);
        CHECK_EQ(node_store_put(s, "t", key, strlen(key), val, sizeof(val)), 0);
        if (node_store_batch_gen(s) != first) {
            first = node_store_batch_gen(s);
            gens++;
        }
    }
    CHECK(gens > 1); /* 50 MB is more than one batch may dirty */
    CHECK_EQ(node_store_end_turn(s), 0);
    int n = 0;
    for (int i = 0; i < 50000; i += 997) {
        snprintf(key, sizeof(key), "k%06d", i);
        node_slice_t v;
        CHECK_EQ(node_store_get(s, "t", key, strlen(key), &v), 0);
        n++;
    }
    CHECK(n > 50);
    node_store_close(s);
}

KVS_TEST(reserve_keeps_writes_in_one_batch)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p"));
    char key[32], val[200];
    memset(val, 'z', sizeof(val));
    CHECK_EQ(node_store_reserve(s, 3000, 3000 * (sizeof(val) + 8), 1), 0);
    uint64_t gen = node_store_batch_gen(s);
    CHECK(gen != 0);
    for (int i = 0; i < 3000; i++) {
        snprintf(key, sizeof(key), "r%06d", i);
        CHECK_EQ(node_store_put(s, "t", key, strlen(key), val, sizeof(val)), 0);
        CHECK_EQ(node_store_batch_gen(s), gen);
    }
    CHECK_EQ(node_store_reserve_end(s, 0), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    node_store_close(s);
}

KVS_TEST(table_limit_is_enforced)
{
    fresh_dir();
    node_store_opts_t o = opts(0, "p");
    o.max_tables = 2;
    node_store_t *s = open_ok(o);
    put_str(s, "a", "k", "v");
    put_str(s, "b", "k", "v");
    CHECK_EQ(node_store_put(s, "c", "k", 1, "v", 1), KVS_ELIMIT);
    put_str(s, "a", "k2", "v2"); /* existing tables still work */
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_table_count(s), 2);
    node_store_close(s);
}

typedef struct {
    char keys[16][16];
    int n;
    int stop_at;
} scan_seen_t;

static int collect(void *arg, node_slice_t k, node_slice_t v)
{
    scan_seen_t *seen = arg;
    (void)v;
    if (seen->n == seen->stop_at)
        return 1;
    memcpy(seen->keys[seen->n], k.p, k.len);
    seen->keys[seen->n][k.len] = '\0';
    seen->n++;
    return 0;
}

KVS_TEST(scan_in_key_order_from_a_start_key)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p"));
    const char *keys[] = {"d", "a", "c", "e", "b"};
    for (int i = 0; i < 5; i++)
        put_str(s, "t", keys[i], "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    scan_seen_t seen = {.stop_at = 16};
    CHECK_EQ(node_store_scan(s, "t", NULL, 0, collect, &seen), 0);
    CHECK_EQ(seen.n, 5);
    CHECK_STR(seen.keys[0], "a");
    CHECK_STR(seen.keys[4], "e");
    scan_seen_t from = {.stop_at = 2};
    CHECK_EQ(node_store_scan(s, "t", "bb", 2, collect, &from), 0);
    CHECK_EQ(from.n, 2);
    CHECK_STR(from.keys[0], "c");
    CHECK_STR(from.keys[1], "d");
    scan_seen_t none = {.stop_at = 16};
    CHECK_EQ(node_store_scan(s, "missing", NULL, 0, collect, &none), 0);
    CHECK_EQ(none.n, 0);
    node_store_close(s);
}

KVS_TEST(meta_commits_with_data)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p"));
    put_str(s, "t", "k", "v");
    CHECK_EQ(node_store_meta_put(s, "offset/topic/0", "17", 2), 0);
    node_slice_t v;
    CHECK_EQ(node_store_meta_get(s, "offset/topic/0", &v), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    node_store_close(s);
    s = open_ok(opts(0, "p"));
    CHECK_EQ(node_store_meta_get(s, "offset/topic/0", &v), 0);
    CHECK(v.len == 2 && memcmp(v.p, "17", 2) == 0);
    CHECK_EQ(node_store_meta_get(s, "shard", &v), 0);
    CHECK(v.len == 1 && v.p[0] == '0');
    node_store_close(s);
}

/* ---- disk ------------------------------------------------------------- */

typedef struct {
    int calls;
    uint64_t gen;
    int err;
} failed_t;

static void on_fail(void *arg, uint64_t gen, int err)
{
    failed_t *f = arg;
    f->calls++;
    f->gen = gen;
    f->err = err;
}

static struct rlimit saved_fsize;

static uint64_t data_size(struct stat *st)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/data.mdb", envdir);
    CHECK_EQ(stat(path, st), 0);
    return (uint64_t)st->st_size;
}

/* Lets data.mdb grow by `room` bytes at most from now on. */
/* Opens with fail_cb counting into *f. */
static node_store_t *open_watched(node_store_opts_t o, failed_t *f)
{
    o.fail_cb = on_fail;
    o.fail_arg = f;
    return open_ok(o);
}

static void limit_growth(uint64_t room)
{
    struct stat st;
    struct rlimit rl;
    signal(SIGXFSZ, SIG_IGN);
    CHECK_EQ(getrlimit(RLIMIT_FSIZE, &saved_fsize), 0);
    rl = saved_fsize;
    rl.rlim_cur = (rlim_t)(data_size(&st) + room);
    CHECK_EQ(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

static void unlimit_growth(void)
{
    CHECK_EQ(setrlimit(RLIMIT_FSIZE, &saved_fsize), 0);
}

/* Writes 4 KB values under k<i> until a commit fails; returns how many
 * were stored (committed). */
static int fill(node_store_t *s, failed_t *f)
{
    char key[32], val[4000];
    memset(val, 'v', sizeof(val));
    int stored = 0;
    for (int i = 0; i < 100000; i++) {
        snprintf(key, sizeof(key), "k%07d", i);
        CHECK_EQ(node_store_put(s, "t", key, strlen(key), val, sizeof(val)), 0);
        int rc = node_store_end_turn(s);
        if (rc != 0) {
            CHECK_EQ(rc, KVS_EFULL);
            CHECK_EQ(f->calls, 1);
            return stored;
        }
        stored++;
    }
    CHECK(!"the disk never filled up");
    return 0;
}

/* A disk that fills up between a batch's writes and its commit (another
 * writer took the space) fails the commit: the commit fails with
 * KVS_EFULL, fail_cb is told that batch's generation, nothing of it is
 * stored, earlier data is intact, and once there is room again writes
 * work. (The limit comes after the writes: a write looks at the free space
 * at most FREE_LOOK_MS after the last look, so on a slow machine one made
 * after the limit was refused as it should be, not accepted.) */
static void commit_fails_on_full_disk(kvs_sync_t sync)
{
    fresh_dir();
    failed_t f = {0};
    node_store_opts_t o = opts(0, "p");
    o.sync = sync;
    node_store_t *s = open_watched(o, &f);
    put_str(s, "t", "before", "kept");
    uint64_t kept_gen = node_store_batch_gen(s);
    CHECK_EQ(node_store_end_turn(s), 0);
    char key[32], val[1000];
    memset(val, 'x', sizeof(val));
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "new%04d", i);
        CHECK_EQ(node_store_put(s, "t", key, strlen(key), val, sizeof(val)), 0);
    }
    put_str(s, "t", "before", "overwritten");
    uint64_t gen = node_store_batch_gen(s);
    CHECK(gen != 0);
    CHECK(get_is(s, "t", "new0299", NULL) == 0); /* the batch reads its own writes */
    limit_growth(0);
    CHECK_EQ(node_store_end_turn(s), KVS_EFULL);
    CHECK_EQ(f.calls, 1);
    CHECK_EQ(f.gen, gen);
    CHECK_EQ(f.err, KVS_EFULL);
    CHECK_EQ(node_store_last_failed_gen(s), gen);
    CHECK(node_store_gen_failed(s, gen));
    CHECK(!node_store_gen_failed(s, kept_gen)); /* before it, committed */
    CHECK(get_is(s, "t", "new0000", NULL));
    CHECK(get_is(s, "t", "new0299", NULL));
    CHECK(get_is(s, "t", "before", "kept"));
    unlimit_growth();
    put_str(s, "t", "after", "works");
    uint64_t after_gen = node_store_batch_gen(s);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK(!node_store_gen_failed(s, after_gen)); /* after it, committed: the failure */
    CHECK(node_store_gen_failed(s, gen));        /* before is still known */
    CHECK(get_is(s, "t", "after", "works"));
    CHECK(get_is(s, "t", "before", "kept"));
    CHECK_EQ(f.calls, 1);
    node_store_close(s);
    s = open_ok(opts(0, "p"));
    CHECK(get_is(s, "t", "before", "kept"));
    CHECK(get_is(s, "t", "new0000", NULL));
    node_store_close(s);
}

KVS_TEST(full_disk_fails_the_commit_sync_none)
{
    commit_fails_on_full_disk(KVS_SYNC_NONE);
}

KVS_TEST(full_disk_fails_the_commit_sync_batch)
{
    commit_fails_on_full_disk(KVS_SYNC_BATCH);
}

KVS_TEST(full_disk_fails_the_commit_sync_full)
{
    commit_fails_on_full_disk(KVS_SYNC_FULL);
}

/* A node with little room left still takes small writes: nothing is
 * reserved ahead of what a batch writes. */
KVS_TEST(small_room_takes_small_writes)
{
    fresh_dir();
    failed_t f = {0};
    node_store_opts_t o = opts(0, "p");
    o.map_size = 64u << 20;
    node_store_t *s = open_watched(o, &f);
    put_str(s, "t", "first", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    limit_growth(512u << 10); /* 512 KiB left */
    char key[32], val[100];
    memset(val, 's', sizeof(val));
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "s%05d", i);
        CHECK_EQ(node_store_put(s, "t", key, strlen(key), val, sizeof(val)), 0);
        CHECK_EQ(node_store_end_turn(s), 0);
    }
    CHECK_EQ(f.calls, 0);
    unlimit_growth();
    CHECK(get_is(s, "t", "first", "v"));
    node_store_close(s);
}

/* On a full disk a delete still commits (LMDB takes the pages it dirties
 * from those earlier commits freed), and the space it frees is reusable
 * from the second commit after it (LMDB keeps the previous snapshot whole):
 * after deleting two 16 KB values and one more commit, a 16 KB value (its
 * pages plus a copy of its tree path) fits again. */
KVS_TEST(deletes_work_on_a_full_disk)
{
    fresh_dir();
    failed_t f = {0};
    node_store_t *s = open_watched(opts(0, "p"), &f);
    char big[16000];
    memset(big, 'b', sizeof(big));
    CHECK_EQ(node_store_put(s, "t", "big1", 4, big, sizeof(big)), 0);
    CHECK_EQ(node_store_put(s, "t", "big2", 4, big, sizeof(big)), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    limit_growth(256u << 10);
    CHECK(fill(s, &f) > 10);
    CHECK_EQ(node_store_put(s, "t", "big3", 4, big, sizeof(big)), 0);
    CHECK_EQ(node_store_end_turn(s), KVS_EFULL); /* really full */
    CHECK_EQ(node_store_del(s, "t", "big1", 4), 0);
    CHECK_EQ(node_store_del(s, "t", "big2", 4), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK(get_is(s, "t", "big1", NULL));
    CHECK_EQ(node_store_del(s, "t", "k0000000", 8), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_put(s, "t", "big3", 4, big, sizeof(big)), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    node_slice_t v;
    CHECK_EQ(node_store_get(s, "t", "big3", 4, &v), 0);
    CHECK_EQ(v.len, sizeof(big));
    CHECK_EQ(f.calls, 2); /* the fill and the first big3 */
    unlimit_growth();
    node_store_close(s);
}

/* Clear empties a table and keeps it; with the meta deletes of the same
 * reservation it commits as one txn (a rebuild's "table and offsets"). */
KVS_TEST(clear_empties_a_table_with_its_offsets)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p"));
    char key[32], val[100];
    memset(val, 'v', sizeof(val));
    for (int i = 0; i < 3000; i++) {
        snprintf(key, sizeof(key), "k%05d", i);
        CHECK_EQ(node_store_put(s, "t", key, strlen(key), val, sizeof(val)), 0);
    }
    put_str(s, "u", "other", "kept");
    CHECK_EQ(node_store_meta_put(s, "kafka/x/0", "17", 2), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    uint64_t pages = 0, n = 0;
    CHECK_EQ(node_store_table_pages(s, "t", &pages), 0);
    CHECK(pages > 50); /* 300 KB of pairs */
    CHECK_EQ(node_store_table_pages(s, "missing", &n), 0);
    CHECK_EQ(n, 0);
    CHECK_EQ(node_store_reserve(s, 3, (size_t)pages * 8 + 64, 1), 0);
    CHECK_EQ(node_store_clear(s, "t", NULL), 0);
    CHECK_EQ(node_store_clear(s, "missing", NULL), 0); /* nothing to write */
    CHECK_EQ(node_store_meta_put(s, "kafka/x/0", "-2", 2), 0);
    CHECK_EQ(node_store_reserve_end(s, 0), 0);
    CHECK_EQ(node_store_count(s, "t", &n), 0); /* the batch reads its own writes */
    CHECK_EQ(n, 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    node_store_close(s);
    s = open_ok(opts(0, "p"));
    node_slice_t v;
    CHECK_EQ(node_store_count(s, "t", &n), 0);
    CHECK_EQ(n, 0);
    CHECK_EQ(node_store_table_pages(s, "t", &pages), 0);
    CHECK_EQ(pages, 0);
    CHECK(get_is(s, "u", "other", "kept"));
    CHECK_EQ(node_store_meta_get(s, "kafka/x/0", &v), 0);
    CHECK(v.len == 2 && memcmp(v.p, "-2", 2) == 0);
    put_str(s, "t", "again", "yes"); /* the table is still there */
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK(get_is(s, "t", "again", "yes"));
    node_store_close(s);
}

/* Emptying a table is how space comes back: it works on a full disk. */
KVS_TEST(clear_works_on_a_full_disk)
{
    fresh_dir();
    failed_t f = {0};
    node_store_t *s = open_watched(opts(0, "p"), &f);
    limit_growth(256u << 10);
    CHECK(fill(s, &f) > 10);
    uint64_t pages = 0, n = 1;
    CHECK_EQ(node_store_table_pages(s, "t", &pages), 0);
    CHECK_EQ(node_store_reserve(s, 1, (size_t)pages * 8, 1), 0);
    CHECK_EQ(node_store_clear(s, "t", NULL), 0);
    CHECK_EQ(node_store_reserve_end(s, 0), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_count(s, "t", &n), 0);
    CHECK_EQ(n, 0);
    put_str(s, "t", "after", "room again");
    CHECK_EQ(node_store_end_turn(s), 0);
    unlimit_growth();
    node_store_close(s);
}

/* KVS_TEST_NO_ROOM: from the next look for room on, the disk is taken to
 * give none (the store goes tight while the disk has space), so what a
 * tight store decides is seen without a full disk. `grow` is a write that
 * makes the data file grow into the room, so the store looks. */
static void go_tight(node_store_t *s)
{
    static char big[600000];
    memset(big, 'g', sizeof(big));
    setenv("KVS_TEST_NO_ROOM", "1", 1);
    CHECK_EQ(node_store_put(s, "grow", "g", 1, big, sizeof(big)), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_put(s, "grow", "h", 1, big, sizeof(big)), KVS_EFULL); /* tight now */
}

/* On a tight disk a client's Hclear of a large table commits in pieces;
 * a Rebuild's clear runs in a reservation with the offsets it resets,
 * which must commit whole or not at all: split, a failure (or a crash)
 * after the first pieces left the table partly emptied under its old
 * offsets, and ingestion never wrote the deleted keys again. */
KVS_TEST(a_large_clear_in_a_reservation_is_never_split)
{
    fresh_dir();
    node_store_opts_t o = opts(0, "p");
    o.map_size = 256u << 20;
    node_store_t *s = open_ok(o);
    char key[32], val[3000];
    memset(val, 'v', sizeof(val));
    CHECK_EQ(node_store_meta_put(s, "kafka/x/0", "17", 2), 0);
    for (int i = 0; i < 9000; i++) {
        snprintf(key, sizeof(key), "k%06d", i);
        CHECK_EQ(node_store_put(s, "t", key, strlen(key), val, sizeof(val)), 0);
        if (i % 500 == 499)
            CHECK_EQ(node_store_end_turn(s), 0);
    }
    CHECK_EQ(node_store_end_turn(s), 0);
    uint64_t pages = 0, n = 0;
    CHECK_EQ(node_store_table_pages(s, "t", &pages), 0);
    CHECK(pages > 8192); /* a free list of more than 16 pages: split when it may be */
    go_tight(s);
    CHECK_EQ(node_store_reserve(s, 3, (size_t)pages * 8 + 64, 0), 0);
    (void)node_store_clear(s, "t", NULL);
    CHECK_EQ(node_store_reserve_end(s, KVS_ESTORE), KVS_ESTORE); /* a later part failed */
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_count(s, "t", &n), 0);
    CHECK_EQ(n, 9000);
    /* a client's Hclear alone: in pieces, and whole */
    CHECK_EQ(node_store_clear(s, "t", &n), 0);
    CHECK_EQ(n, 9000);
    CHECK_EQ(node_store_end_turn(s), 0);
    node_store_close(s);
    unsetenv("KVS_TEST_NO_ROOM");
    s = open_ok(o);
    CHECK_EQ(node_store_count(s, "t", &n), 0);
    CHECK_EQ(n, 0);
    node_slice_t v;
    CHECK_EQ(node_store_meta_get(s, "kafka/x/0", &v), 0);
    CHECK(v.len == 2 && memcmp(v.p, "17", 2) == 0);
    node_store_close(s);
}

/* Writes `turns` turns of `per_turn` values v[0..len) into table "t", at
 * keys "<prefix>000000" on, each turn committed. Returns the bytes of keys
 * and values written. */
static uint64_t put_turns(node_store_t *s, const char *prefix, int turns, int per_turn,
                          const char *v, size_t len)
{
    char key[32];
    uint64_t written = 0;
    for (int turn = 0; turn < turns; turn++) {
        for (int i = 0; i < per_turn; i++) {
            snprintf(key, sizeof(key), "%s%06d", prefix, turn * per_turn + i);
            CHECK_EQ(node_store_put(s, "t", key, strlen(key), v, len), 0);
            written += strlen(key) + len;
        }
        CHECK_EQ(node_store_end_turn(s), 0);
    }
    return written;
}

/* On a tight disk a large write goes alone on freed pages. Two in one turn
 * were both weighed against the pages freed before the turn, so the second
 * took new pages: the room kept for deletes. The second is weighed once
 * the first committed. */
KVS_TEST(two_large_writes_in_a_turn_are_weighed_one_after_the_other)
{
    fresh_dir();
    node_store_opts_t o = opts(0, "p");
    o.map_size = 64u << 20;
    node_store_t *s = open_ok(o);
    static char val[200000];
    memset(val, 'v', sizeof(val));
    put_turns(s, "v", 8, 1, val, sizeof(val));
    go_tight(s);
    CHECK_EQ(node_store_del(s, "t", "v000000", 7), 0); /* some 49 pages in a row, freed */
    CHECK_EQ(node_store_end_turn(s), 0);
    for (int i = 0; i < 2; i++) { /* two commits: they are reusable */
        put_str(s, "u", "tiny", "x");
        CHECK_EQ(node_store_end_turn(s), 0);
    }
    CHECK_EQ(node_store_put(s, "t", "a", 1, val, 120000), 0); /* 30 pages of them */
    CHECK_EQ(node_store_put(s, "t", "b", 1, val, 120000), KVS_EFULL);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK(get_is(s, "t", "b", NULL));
    node_slice_t v;
    CHECK_EQ(node_store_get(s, "t", "a", 1, &v), 0);
    CHECK_EQ(v.len, 120000);
    unsetenv("KVS_TEST_NO_ROOM");
    node_store_close(s);
}

static uint64_t allocated(void)
{
    struct stat st;
    data_size(&st);
    return (uint64_t)st.st_blocks * 512;
}

/* Disk allocated follows the bytes written, within a small factor (B-tree
 * pages are half full after splits, and a commit's freed pages wait two
 * commits for reuse); nothing is allocated ahead. */
KVS_TEST(disk_use_follows_bytes_written)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p"));
    char val[100];
    memset(val, 'd', sizeof(val));
    uint64_t written = put_turns(s, "d", 40, 500, val, sizeof(val));
    uint64_t disk = allocated();
    fprintf(stderr, "%llu bytes written, %llu allocated\n", (unsigned long long)written,
            (unsigned long long)disk);
    CHECK(disk <= 3 * written + (256u << 10));
    node_store_close(s);
}

/* A delete of an absent key writes nothing: no batch, no disk, no map. */
KVS_TEST(deleting_absent_keys_costs_nothing)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p"));
    put_str(s, "t", "k", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    uint64_t disk = allocated(), map = node_store_map_size(s);
    char key[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof(key), "absent%06d", i);
        CHECK_EQ(node_store_del(s, "t", key, strlen(key)), KVS_ENOTFOUND);
    }
    CHECK_EQ(node_store_batch_gen(s), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(allocated(), disk);
    CHECK_EQ(node_store_map_size(s), map);
    node_store_close(s);
}

/* A reservation of many small writes is priced by their bytes, not by a
 * tree path per key: 100,000 writes of 10 bytes into a small environment
 * cannot dirty more than a few MiB, so the map must not grow to GiBs. */
KVS_TEST(many_small_writes_do_not_balloon_the_map)
{
    fresh_dir();
    node_store_opts_t o = opts(0, "p");
    o.map_size = 64u << 20;
    node_store_t *s = open_ok(o);
    put_str(s, "t", "k", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_reserve(s, 100000, 1000000, 1), 0);
    CHECK_EQ(node_store_reserve_end(s, 0), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK(node_store_map_size(s) <= 128u << 20);
    node_store_close(s);
}

/* An error after some of a reservation's writes (say, Kafka records whose
 * offsets cannot be saved) aborts the whole batch: no prefix commits. */
KVS_TEST(error_mid_reservation_aborts_the_batch)
{
    fresh_dir();
    failed_t f = {0};
    node_store_t *s = open_watched(opts(0, "p"), &f);
    put_str(s, "t", "other", "client");
    uint64_t gen = node_store_batch_gen(s);
    CHECK_EQ(node_store_reserve(s, 3, 30, 1), 0);
    put_str(s, "t", "a", "1");
    put_str(s, "t", "b", "2");
    CHECK_EQ(node_store_reserve_end(s, KVS_ESTORE), KVS_ESTORE);
    CHECK_EQ(f.calls, 1);
    CHECK_EQ(f.gen, gen);
    CHECK_EQ(node_store_last_failed_gen(s), gen);
    CHECK_EQ(node_store_batch_gen(s), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK(get_is(s, "t", "a", NULL));
    CHECK(get_is(s, "t", "other", NULL));
    /* An error before any write changes nothing. */
    put_str(s, "t", "other", "again");
    CHECK_EQ(node_store_reserve(s, 1, 10, 1), 0);
    CHECK_EQ(node_store_reserve_end(s, KVS_ELIMIT), KVS_ELIMIT);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK(get_is(s, "t", "other", "again"));
    CHECK_EQ(f.calls, 1);
    node_store_close(s);
}

/* ---- emptied tables are dropped ----------------------------------------- */

static uint64_t count_of(node_store_t *s, const char *t)
{
    uint64_t n = 99;
    CHECK_EQ(node_store_count(s, t, &n), 0);
    return n;
}

static void del_str(node_store_t *s, const char *t, const char *k)
{
    CHECK_EQ(node_store_del(s, t, k, strlen(k)), 0);
}

/* A table a delete leaves with no key is dropped at the commit and gives
 * its room under max_tables back, unless it is bound to a topic; one
 * refilled before the commit stays; one that would stand in the way of a
 * new table in the same batch goes before the new one is made. */
KVS_TEST(emptied_unbound_tables_give_their_room_back)
{
    fresh_dir();
    const char *bound[] = {"bound"};
    node_store_opts_t o = opts(0, "p");
    o.max_tables = 3;
    o.tables = bound;
    o.n_tables = 1;
    node_store_t *s = open_ok(o);
    put_str(s, "bound", "k", "v");
    put_str(s, "a", "k", "v");
    put_str(s, "b", "k", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_put(s, "c", "k", 1, "v", 1), KVS_ELIMIT);
    del_str(s, "a", "k");
    del_str(s, "bound", "k");
    CHECK_EQ(node_store_table_count(s), 3); /* until the commit */
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_table_count(s), 2); /* "a" went, "bound" stays */
    CHECK(get_is(s, "a", "k", NULL));
    CHECK_EQ(count_of(s, "a"), 0);
    scan_seen_t seen = {.stop_at = -1};
    CHECK_EQ(node_store_scan(s, "a", NULL, 0, collect, &seen), 0);
    CHECK_EQ(seen.n, 0);
    put_str(s, "c", "k", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_table_count(s), 3);
    /* emptied and refilled in one batch: stays */
    del_str(s, "b", "k");
    put_str(s, "b", "k2", "v2");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_table_count(s), 3);
    CHECK(get_is(s, "b", "k2", "v2"));
    /* emptied, then a new table at the limit, in one batch */
    del_str(s, "c", "k");
    put_str(s, "d", "k", "v");
    CHECK_EQ(node_store_put(s, "a", "k", 1, "v", 1), KVS_ELIMIT); /* full again */
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK(get_is(s, "c", "k", NULL));
    CHECK(get_is(s, "d", "k", "v"));
    CHECK_EQ(node_store_table_count(s), 3);
    node_store_close(s);
    s = open_ok(o);
    CHECK_EQ(node_store_table_count(s), 3);
    CHECK(get_is(s, "b", "k2", "v2"));
    CHECK(get_is(s, "d", "k", "v"));
    CHECK(get_is(s, "bound", "k", NULL));
    node_store_close(s);
}

/* While another thread reads the environment (a view: a digest, a
 * snapshot) no table is dropped, since dropping closes its handle; the
 * next commit after it ends does it, and so does the first after a
 * restart for a table the store was closed with empty. */
KVS_TEST(a_table_emptied_under_a_view_is_dropped_later)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p"));
    put_str(s, "a", "k", "v");
    put_str(s, "b", "k", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    node_store_view_t *v = NULL;
    CHECK_EQ(node_store_view_open(s, "a", &v), 0);
    del_str(s, "a", "k");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_table_count(s), 2);
    node_store_view_close(v);
    put_str(s, "b", "k2", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_table_count(s), 1);
    CHECK_EQ(node_store_view_open(s, NULL, &v), 0);
    del_str(s, "b", "k");
    del_str(s, "b", "k2");
    CHECK_EQ(node_store_end_turn(s), 0);
    node_store_view_close(v);
    CHECK_EQ(node_store_close(s), 0);
    s = open_ok(opts(0, "p"));
    CHECK_EQ(node_store_table_count(s), 1); /* "b", empty */
    put_str(s, "c", "k", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_table_count(s), 1); /* "c" */
    CHECK(get_is(s, "c", "k", "v"));
    node_store_close(s);
}

/* A batch that dropped a table and then failed leaves it as it was,
 * readable under a handle opened again, and the table it made is gone. */
KVS_TEST(a_failed_batch_keeps_the_tables_it_dropped)
{
    fresh_dir();
    failed_t f = {0};
    node_store_opts_t o = opts(0, "p");
    o.max_tables = 2;
    node_store_t *s = open_watched(o, &f);
    put_str(s, "a", "k", "v");
    put_str(s, "b", "k", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_reserve(s, 3, 30, 1), 0);
    del_str(s, "a", "k");
    put_str(s, "c", "k", "v"); /* drops "a" for room */
    CHECK_EQ(node_store_table_count(s), 2);
    CHECK_EQ(node_store_reserve_end(s, KVS_ESTORE), KVS_ESTORE);
    CHECK_EQ(f.calls, 1);
    CHECK_EQ(node_store_table_count(s), 2);
    CHECK(get_is(s, "a", "k", "v"));
    CHECK(get_is(s, "c", "k", NULL));
    CHECK_EQ(count_of(s, "a"), 1);
    CHECK_EQ(node_store_put(s, "c", "k", 1, "v", 1), KVS_ELIMIT);
    put_str(s, "a", "k2", "v2"); /* its handle writes */
    CHECK_EQ(node_store_end_turn(s), 0);
    del_str(s, "a", "k");
    del_str(s, "a", "k2");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_table_count(s), 1);
    node_store_close(s);
}

/* One batch that makes and empties many tables at the limit: each new one
 * takes the room of the one emptied before it, the same names come and
 * go, and a view asked for a table dropped in the open batch waits for
 * the commit (its snapshot still holds it). Then the batch fails: every
 * table from before it is there again, once, and what it made is gone. */
KVS_TEST(a_batch_that_churns_tables_at_the_limit_and_fails)
{
    fresh_dir();
    failed_t f = {0};
    node_store_opts_t o = opts(0, "p");
    o.max_tables = 4;
    node_store_t *s = open_watched(o, &f);
    const char *before[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++)
        put_str(s, before[i], "k", before[i]);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_reserve(s, 100, 1000, 1), 0);
    del_str(s, "a", "k");
    char name[16];
    for (int i = 0; i < 20; i++) { /* 20 tables made and emptied: more than max_tables */
        snprintf(name, sizeof(name), "u%d", i);
        put_str(s, name, "k", "v");
        del_str(s, name, "k");
    }
    node_store_view_t *v = NULL;
    CHECK_EQ(node_store_view_open(s, "a", &v), -EAGAIN);
    del_str(s, "b", "k");
    put_str(s, "a", "k", "new"); /* "a" made anew, in the place "b" left */
    del_str(s, "a", "k");        /* and emptied again */
    put_str(s, "b", "k", "new");
    CHECK_EQ(node_store_table_count(s), 4);
    CHECK_EQ(node_store_reserve_end(s, KVS_ESTORE), KVS_ESTORE);
    CHECK_EQ(f.calls, 1);
    CHECK_EQ(node_store_table_count(s), 4);
    for (int i = 0; i < 4; i++)
        CHECK(get_is(s, before[i], "k", before[i]));
    CHECK(get_is(s, "u19", "k", NULL));
    CHECK_EQ(node_store_put(s, "e", "k", 1, "v", 1), KVS_ELIMIT);
    /* the same in a batch that commits */
    del_str(s, "a", "k");
    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof(name), "u%d", i);
        put_str(s, name, "k", "v");
        del_str(s, name, "k");
    }
    put_str(s, "e", "k", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_table_count(s), 4);
    CHECK(get_is(s, "a", "k", NULL));
    CHECK(get_is(s, "e", "k", "v"));
    CHECK_EQ(node_store_view_open(s, "a", &v), 0); /* gone: an empty view */
    node_store_view_close(v);
    node_store_close(s);
}

/* A table a binding names is never dropped, also when Kafka is off (the
 * worker then names no tables to create): found empty at open it stays,
 * while an unbound one found empty goes with the first commit. Only
 * unbound tables that hold rows count as such at open. */
KVS_TEST(an_empty_table_a_binding_names_stays_with_kafka_off)
{
    fresh_dir();
    static const char yaml[] = "data_dir: /nonexistent\n"
                               "cluster: {shards: 1, partitions: 16}\n"
                               "kafka:\n"
                               "  bindings: [{topic: events, table: kb}]\n";
    kvs_config_t *cfg = NULL;
    char err[512] = "";
    int rc = kvs_config_parse("t.yaml", yaml, sizeof(yaml) - 1, &cfg, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "config: %s\n", err);
    CHECK_EQ(rc, 0);
    const char *bound[] = {"kb"};
    node_store_opts_t o = opts(0, "p");
    o.tables = bound; /* Kafka on: made at open */
    o.n_tables = 1;
    o.cfg = cfg;
    node_store_t *s = open_ok(o);
    node_store_view_t *v = NULL;
    put_str(s, "u", "k", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_view_open(s, NULL, &v), 0); /* "u" emptied stays, for now */
    del_str(s, "u", "k");
    CHECK_EQ(node_store_end_turn(s), 0);
    node_store_view_close(v);
    CHECK_EQ(node_store_close(s), 0);
    o.tables = NULL; /* Kafka off */
    o.n_tables = 0;
    s = open_ok(o);
    CHECK_EQ(node_store_table_count(s), 2); /* kb and u, both empty */
    CHECK_EQ(node_store_unbound_at_open(s), 0);
    put_str(s, "w", "k", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_table_count(s), 2); /* kb and w */
    node_store_view_t *kb = NULL;
    CHECK_EQ(node_store_view_open(s, "kb", &kb), 0);
    node_store_view_close(kb);
    put_str(s, "kb", "k", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_close(s), 0);
    s = open_ok(o);
    CHECK_EQ(node_store_unbound_at_open(s), 1); /* w holds rows; kb is its topic's */
    node_store_close(s);
    kvs_config_free(cfg);
}

/* ---- table limit at open ---------------------------------------------- */

/* Lowering storage.max_tables below the tables stored is refused at open,
 * naming tables and the value to set, instead of hiding tables. */
KVS_TEST(refuses_more_tables_than_max_tables)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p"));
    const char *names[] = {"t1", "t2", "t3", "t4", "t5", "t6", "t7"};
    for (int i = 0; i < 7; i++)
        put_str(s, names[i], "k", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    node_store_close(s);
    node_store_opts_t o = opts(0, "p");
    o.max_tables = 3;
    char err[1024] = "";
    CHECK_EQ(node_store_open(&o, &s, err, sizeof(err)), KVS_ELIMIT);
    CHECK_CONTAINS(err, "holds 7 table(s) (\"t1\", \"t2\", \"t3\", \"t4\", \"t5\" and 2 more)");
    CHECK_CONTAINS(err, "storage.max_tables is 3");
    CHECK_CONTAINS(err, "at least 7");
    o.max_tables = 7;
    s = open_ok(o);
    CHECK_EQ(node_store_table_count(s), 7);
    CHECK(get_is(s, "t7", "k", "v"));
    node_store_close(s);
}

/* Tables named at open (Kafka-bound ones) exist from the start, so clients
 * creating tables cannot take their room; and they count against the
 * limit at open. */
KVS_TEST(tables_named_at_open_are_created)
{
    fresh_dir();
    const char *bound[] = {"bound", "bound2", "bound"};
    node_store_opts_t o = opts(0, "p");
    o.max_tables = 3;
    o.tables = bound;
    o.n_tables = 3;
    node_store_t *s = open_ok(o);
    CHECK_EQ(node_store_table_count(s), 2);
    put_str(s, "client", "k", "v");
    CHECK_EQ(node_store_put(s, "client2", "k", 1, "v", 1), KVS_ELIMIT);
    put_str(s, "bound", "k", "v");
    put_str(s, "bound2", "k", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    node_store_close(s);
    const char *more[] = {"bound", "new1", "new2"};
    o.tables = more;
    o.max_tables = 4;
    char err[1024] = "";
    CHECK_EQ(node_store_open(&o, &s, err, sizeof(err)), KVS_ELIMIT);
    CHECK_CONTAINS(err, "kafka.bindings need 2 more");
    CHECK_CONTAINS(err, "at least 5");
}

/* The offsets of (topic, partition) as stored: next, applied. */
static void offsets_of(node_store_t *s, const char *topic, int32_t p, int64_t *next,
                       uint64_t *applied)
{
    char key[KVS_SCHEMA_OFFSETS_KEY_MAX];
    kvs_schema_offsets_t o = {0};
    node_slice_t v;
    kvs_schema_offsets_key(key, sizeof(key), topic, p);
    CHECK_EQ(node_store_meta_get(s, key, &v), 0);
    CHECK_EQ(kvs_schema_offsets_decode(v.p, v.len, &o), 0);
    *next = o.next;
    *applied = o.applied;
}

static void put_offsets(node_store_t *s, const char *topic, int32_t p, int64_t next)
{
    char key[KVS_SCHEMA_OFFSETS_KEY_MAX];
    uint8_t v[KVS_SCHEMA_OFFSETS_LEN];
    kvs_schema_offsets_t o = {next, (uint64_t)next, 0, 0};
    kvs_schema_offsets_key(key, sizeof(key), topic, p);
    kvs_schema_offsets_encode(v, &o);
    CHECK_EQ(node_store_meta_put(s, key, v, sizeof(v)), 0);
}

/* A topic's stored offsets are the progress of the table they were
 * applied to. A binding that gives the topic another table (renamed) used
 * to let the new table resume there: it never got the records below them.
 * The new table now reads the topic from its start; the same binding
 * again changes nothing, and other topics' offsets are not touched. */
KVS_TEST(a_topic_bound_to_another_table_is_read_again_from_its_start)
{
    fresh_dir();
    const char *tables[] = {"users", "orders"}, *topics[] = {"users", "users-x"};
    node_store_opts_t o = opts(0, "p");
    o.tables = tables;
    o.topics = topics;
    o.n_tables = 2;
    node_store_t *s = open_ok(o);
    put_str(s, "users", "k", "v");
    put_offsets(s, "users", 0, 40);
    put_offsets(s, "users", 2, 7);
    put_offsets(s, "users-x", 0, 5);
    CHECK_EQ(node_store_end_turn(s), 0);
    node_store_close(s);

    int64_t next;
    uint64_t applied;
    s = open_ok(o); /* the same bindings: every offset stays */
    offsets_of(s, "users", 0, &next, &applied);
    CHECK_EQ(next, 40);
    node_store_close(s);

    const char *renamed[] = {"members", "orders"};
    o.tables = renamed;
    s = open_ok(o);
    offsets_of(s, "users", 0, &next, &applied);
    CHECK_EQ(next, KVS_SCHEMA_NEXT_FROM_START);
    CHECK_EQ(applied, 0);
    offsets_of(s, "users", 2, &next, &applied);
    CHECK_EQ(next, KVS_SCHEMA_NEXT_FROM_START);
    offsets_of(s, "users-x", 0, &next, &applied);
    CHECK_EQ(next, 5);
    CHECK(get_is(s, "users", "k", "v")); /* the old table keeps what it holds */
    put_offsets(s, "users", 0, 3);       /* members' own progress */
    CHECK_EQ(node_store_end_turn(s), 0);
    node_store_close(s);

    s = open_ok(o); /* members again: its own progress stays */
    offsets_of(s, "users", 0, &next, &applied);
    CHECK_EQ(next, 3);
    node_store_close(s);
}

/* ---- damaged files ------------------------------------------------------------ */

static void data_path(char *buf, size_t len)
{
    snprintf(buf, len, "%s/data.mdb", envdir);
}

/* A store holding `n` values of 8 KB in table "t", closed. */
static void store_with_values(int n)
{
    node_store_t *s = open_ok(opts(0, "p1"));
    static char v[8192];
    memset(v, 'v', sizeof(v));
    for (int i = 0; i < n; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%04d", i);
        CHECK_EQ(node_store_put(s, "t", k, strlen(k), v, sizeof(v)), 0);
        if (i % 20 == 19)
            CHECK_EQ(node_store_end_turn(s), 0);
    }
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_close(s), 0);
}

static int open_fails(node_store_opts_t o, char *err, size_t errlen)
{
    node_store_t *s = NULL;
    err[0] = '\0';
    int rc = node_store_open(&o, &s, err, errlen);
    CHECK(s == NULL || rc == 0);
    if (rc == 0)
        node_store_close(s);
    return rc;
}

/* data.mdb cut short (truncate while stopped): the pages its trees use
 * are missing. Opening it used to succeed or fault (SIGBUS) at the first
 * read of a missing page, at every restart; it is refused at open, naming
 * the file and both sizes. */
KVS_TEST(data_file_cut_short_is_refused)
{
    fresh_dir();
    store_with_values(200);
    char path[400], err[1024];
    data_path(path, sizeof(path));
    CHECK_EQ(truncate(path, 16384), 0);
    CHECK_EQ(open_fails(opts(0, "p1"), err, sizeof(err)), KVS_EDAMAGED);
    CHECK_CONTAINS(err, path);
    CHECK_CONTAINS(err, "is 16384 bytes, but the pages its environment uses take ");
    CHECK_CONTAINS(err, "cut short");
}

/* The last pages of an environment may legitimately be missing: LMDB does
 * not write pages a commit allocated and freed again (a large value stored
 * and deleted in one batch, at the end of the file). Such a store opens,
 * with its data. */
KVS_TEST(data_file_short_of_free_pages_opens)
{
    fresh_dir();
    node_store_opts_t o = opts(0, "p1");
    o.map_size = 64u << 20; /* no early commit to grow the map */
    node_store_t *s = open_ok(o);
    static char big[300000];
    memset(big, 'b', sizeof(big));
    /* free pages first, so that LMDB has a free list to give pages back to */
    CHECK_EQ(node_store_put(s, "t", "big0", 4, big, 100000), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_del(s, "t", "big0", 4), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    for (int i = 0; i < 3; i++) {
        put_str(s, "t", "keep", "kept");
        CHECK_EQ(node_store_end_turn(s), 0);
    }
    CHECK_EQ(node_store_put(s, "t", "big1", 4, big, sizeof(big)), 0);
    CHECK_EQ(node_store_put(s, "t", "big2", 4, big, sizeof(big)), 0);
    CHECK_EQ(node_store_del(s, "t", "big2", 4), 0);
    CHECK_EQ(node_store_del(s, "t", "big1", 4), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_close(s), 0);
    /* the precondition: the file ends before the environment's last page */
    MDB_env *env;
    MDB_envinfo info;
    MDB_stat ms;
    struct stat st;
    char path[400];
    data_path(path, sizeof(path));
    CHECK_EQ(mdb_env_create(&env), 0);
    CHECK_EQ(mdb_env_open(env, envdir, MDB_RDONLY, 0600), 0);
    CHECK_EQ(mdb_env_info(env, &info), 0);
    CHECK_EQ(mdb_env_stat(env, &ms), 0);
    mdb_env_close(env);
    CHECK_EQ(stat(path, &st), 0);
    CHECK((uint64_t)st.st_size < ((uint64_t)info.me_last_pgno + 1) * ms.ms_psize);
    s = open_ok(o);
    CHECK(get_is(s, "t", "keep", "kept"));
    CHECK(get_is(s, "t", "big1", NULL));
    put_str(s, "t", "after", "reopen");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_close(s), 0);
}

/* data.mdb overwritten (its meta pages are not LMDB's): no restart helps,
 * so it is KVS_EDAMAGED (a worker exits EX_CONFIG), not a storage error
 * that may pass (exit 1, restarted forever). */
KVS_TEST(data_file_overwritten_is_damaged)
{
    fresh_dir();
    store_with_values(5);
    char path[400], err[1024], junk[8192];
    data_path(path, sizeof(path));
    memset(junk, 0x5a, sizeof(junk));
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    CHECK_EQ(fwrite(junk, 1, sizeof(junk), f), sizeof(junk));
    CHECK_EQ(fclose(f), 0);
    CHECK_EQ(open_fails(opts(0, "p1"), err, sizeof(err)), KVS_EDAMAGED);
    CHECK_CONTAINS(err, "data.mdb cannot be opened as an LMDB environment");
    CHECK_CONTAINS(err, "move ");
}

/* data.mdb or lock.mdb that is not a file, or a link to nothing. */
KVS_TEST(data_files_that_are_not_files_are_damaged)
{
    char path[400], err[1024];
    const char *names[] = {"data.mdb", "lock.mdb"};
    for (int i = 0; i < 2; i++) {
        fresh_dir();
        store_with_values(1);
        snprintf(path, sizeof(path), "%s/%s", envdir, names[i]);
        CHECK_EQ(unlink(path), 0);
        CHECK_EQ(mkfifo(path, 0600), 0);
        CHECK_EQ(open_fails(opts(0, "p1"), err, sizeof(err)), KVS_EDAMAGED);
        CHECK_CONTAINS(err, "is a FIFO, not a file");
        CHECK_EQ(unlink(path), 0);
        CHECK_EQ(mkdir(path, 0700), 0);
        CHECK_EQ(open_fails(opts(0, "p1"), err, sizeof(err)), KVS_EDAMAGED);
        CHECK_CONTAINS(err, "is a directory, not a file");
        CHECK_EQ(rmdir(path), 0);
    }
    data_path(path, sizeof(path));
    CHECK_EQ(unlink(path), 0);
    CHECK_EQ(symlink("/nonexistent-kvs-dir/data.mdb", path), 0);
    CHECK_EQ(open_fails(opts(0, "p1"), err, sizeof(err)), KVS_EDAMAGED);
    CHECK_CONTAINS(err, "is a symbolic link to /nonexistent-kvs-dir/data.mdb, which cannot be "
                        "reached");
}

/* A data.mdb emptied under the last worker (same file, now 0 bytes) would
 * open as a new, empty environment; one nobody served from (a first start
 * cut off before LMDB wrote it) still does. */
KVS_TEST(emptied_data_file_of_the_last_worker_is_damaged)
{
    fresh_dir();
    node_store_t *s = open_ok(opts(0, "p1"));
    put_str(s, "t", "k", "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    kvs_lmdb_ident_t last = *node_store_ident(s);
    CHECK_EQ(node_store_close(s), 0);
    char path[400], err[1024];
    data_path(path, sizeof(path));
    CHECK_EQ(truncate(path, 0), 0);
    node_store_opts_t o = opts(0, "p1");
    o.last = &last;
    CHECK_EQ(open_fails(o, err, sizeof(err)), KVS_EDAMAGED);
    CHECK_CONTAINS(err, "is empty, but it is the file the last worker of this shard served from");
    o.last = NULL;
    s = open_ok(o);
    CHECK(get_is(s, "t", "k", NULL));
    CHECK_EQ(node_store_close(s), 0);
}

KVS_TEST_MAIN(
    KVS_CASE(opening_a_batch_wakes_its_committer), KVS_CASE(full_disk_fails_the_commit_sync_none),
    KVS_CASE(full_disk_fails_the_commit_sync_batch), KVS_CASE(full_disk_fails_the_commit_sync_full),
    KVS_CASE(small_room_takes_small_writes), KVS_CASE(deletes_work_on_a_full_disk),
    KVS_CASE(disk_use_follows_bytes_written), KVS_CASE(deleting_absent_keys_costs_nothing),
    KVS_CASE(many_small_writes_do_not_balloon_the_map),
    KVS_CASE(error_mid_reservation_aborts_the_batch), KVS_CASE(refuses_more_tables_than_max_tables),
    KVS_CASE(tables_named_at_open_are_created),
    KVS_CASE(emptied_unbound_tables_give_their_room_back),
    KVS_CASE(a_table_emptied_under_a_view_is_dropped_later),
    KVS_CASE(a_failed_batch_keeps_the_tables_it_dropped),
    KVS_CASE(a_batch_that_churns_tables_at_the_limit_and_fails),
    KVS_CASE(an_empty_table_a_binding_names_stays_with_kafka_off),
    KVS_CASE(a_topic_bound_to_another_table_is_read_again_from_its_start),
    KVS_CASE(reopen_keeps_data), KVS_CASE(reset_lock_starts_a_new_lock_file),
    KVS_CASE(refuses_other_shard), KVS_CASE(refuses_other_placement),
    KVS_CASE(refuses_older_wire_format), KVS_CASE(second_open_is_refused),
    KVS_CASE(batch_reads_its_own_writes), KVS_CASE(uncommitted_batch_is_lost_on_crash),
    KVS_CASE(map_grows_before_it_is_full),
    KVS_CASE(one_huge_turn_commits_early_and_keeps_everything),
    KVS_CASE(reserve_keeps_writes_in_one_batch), KVS_CASE(table_limit_is_enforced),
    KVS_CASE(scan_in_key_order_from_a_start_key), KVS_CASE(meta_commits_with_data),
    KVS_CASE(clear_empties_a_table_with_its_offsets), KVS_CASE(clear_works_on_a_full_disk),
    KVS_CASE(data_file_cut_short_is_refused), KVS_CASE(data_file_short_of_free_pages_opens),
    KVS_CASE(data_file_overwritten_is_damaged), KVS_CASE(data_files_that_are_not_files_are_damaged),
    KVS_CASE(emptied_data_file_of_the_last_worker_is_damaged),
    KVS_CASE(a_large_clear_in_a_reservation_is_never_split),
    KVS_CASE(two_large_writes_in_a_turn_are_weighed_one_after_the_other))

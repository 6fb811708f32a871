/*
 * Unit tests for kvs_lmdb's reader: an environment read by one process
 * while another (node_store, the worker's store) writes it, as a router
 * reads a local shard.
 *
 * LMDB must not have one environment open twice in one process (its
 * fcntl locks are per process), so the writer runs in a child process
 * (peer_t) driven step by step over two pipes: the child stops at each
 * peer_pause and goes on when the test calls peer_go. The reader stays in
 * the test's own process across the steps.
 */
#include "kvs_err.h"
#include "kvs_lmdb.h"
#include "kvs_test.h"
#include "kvs_time.h"
#include "node_store.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <lmdb.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char envdir[300];

static void fresh_dir(void)
{
    KVS_TEST_FRESH_DIR("lmdb");
    snprintf(envdir, sizeof(envdir), "%s/shard-0", kvs_test_dir());
}

/* ---- the writer, in a child process ------------------------------------------ */

typedef struct peer_s {
    pid_t pid;
    int go[2];     /* test -> child */
    int paused[2]; /* child -> test */
} peer_t;

static peer_t *self; /* in the child */

/* Child: says it reached a step, waits to be let on. */
static void peer_pause(void)
{
    char c = 'p';
    CHECK(write(self->paused[1], &c, 1) == 1);
    CHECK(read(self->go[0], &c, 1) == 1);
}

static void peer_start(peer_t *p, void (*fn)(void))
{
    CHECK(pipe(p->go) == 0 && pipe(p->paused) == 0);
    fflush(NULL);
    p->pid = fork();
    CHECK(p->pid >= 0);
    if (p->pid == 0) {
        /* The test's ends closed here: should the test die (a failed
         * check), the child's read of `go` ends instead of waiting on. */
        close(p->go[1]);
        close(p->paused[0]);
        self = p;
        fn();
        _exit(0);
    }
    close(p->go[0]);
    close(p->paused[1]);
}

/* Test: waits until the child paused (or ended: 0). */
static int peer_wait(peer_t *p)
{
    char c;
    return read(p->paused[0], &c, 1) == 1;
}

static void peer_go(peer_t *p)
{
    char c = 'g';
    CHECK(write(p->go[1], &c, 1) == 1);
}

static void peer_join(peer_t *p)
{
    int st;
    CHECK(waitpid(p->pid, &st, 0) == p->pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static node_store_t *store_open(uint64_t map_size)
{
    node_store_opts_t o = {.dir = envdir,
                           .shard = 0,
                           .placement = "p",
                           .map_size = map_size,
                           .max_tables = 8,
                           .sync = KVS_SYNC_NONE};
    node_store_t *s = NULL;
    char err[512] = "";
    int rc = node_store_open(&o, &s, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "store: %s\n", err);
    CHECK_EQ(rc, 0);
    return s;
}

static void put(node_store_t *s, const char *t, const char *k, const char *v)
{
    CHECK_EQ(node_store_put(s, t, k, strlen(k), v, strlen(v)), 0);
}

/* A writer that only creates the environment. */
static void create_env(void)
{
    node_store_t *s = store_open(1u << 20);
    put(s, "t", "a", "1");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_close(s), 0);
}

/* ---- the reader ----------------------------------------------------------------- */

static kvs_lmdb_reader_t *reader_open(void)
{
    kvs_lmdb_reader_opts_t o = {.dir = envdir, .shard = 0, .placement = "p", .max_tables = 8};
    kvs_lmdb_reader_t *r = NULL;
    char err[512] = "";
    int rc = kvs_lmdb_reader_open(&o, &r, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "reader: %s\n", err);
    CHECK_EQ(rc, 0);
    return r;
}

/* `key` of `table` in a new snapshot: its value as a string, or NULL. */
static const char *read_now(kvs_lmdb_reader_t *r, const char *table, const char *key, char *buf)
{
    kvs_slice_t v;
    CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
    int rc = kvs_lmdb_reader_get(r, table, key, strlen(key), &v);
    if (rc == 0) {
        memcpy(buf, v.p, v.len);
        buf[v.len] = '\0';
    }
    kvs_lmdb_reader_end(r);
    CHECK(rc == 0 || rc == KVS_ENOTFOUND);
    return rc == 0 ? buf : NULL;
}

static void writer_steps(void)
{
    node_store_t *s = store_open(1u << 20);
    put(s, "t", "a", "1");
    CHECK_EQ(node_store_end_turn(s), 0);
    peer_pause(); /* 1: a committed */
    put(s, "t2", "b", "2");
    peer_pause(); /* 2: b written, its batch (and table t2) not committed */
    CHECK_EQ(node_store_end_turn(s), 0);
    peer_pause(); /* 3: b committed */
    put(s, "t2", "c", "3");
    CHECK_EQ(node_store_end_turn(s), 0);
    peer_pause(); /* 4: c committed */
    CHECK_EQ(node_store_close(s), 0);
}

KVS_TEST(reader_sees_every_commit_and_nothing_else)
{
    char buf[64];
    peer_t w;
    fresh_dir();
    peer_start(&w, writer_steps);
    CHECK(peer_wait(&w));
    kvs_lmdb_reader_t *r = reader_open();
    CHECK_STR(read_now(r, "t", "a", buf), "1");
    CHECK(read_now(r, "t2", "b", buf) == NULL); /* no such table yet */
    peer_go(&w);
    CHECK(peer_wait(&w));
    CHECK(read_now(r, "t2", "b", buf) == NULL); /* written, not committed */
    /* A snapshot begun before a commit does not see it, the next one does. */
    CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
    peer_go(&w);
    CHECK(peer_wait(&w));
    kvs_slice_t v;
    CHECK_EQ(kvs_lmdb_reader_get(r, "t2", "b", 1, &v), KVS_ENOTFOUND);
    kvs_lmdb_reader_end(r);
    CHECK_STR(read_now(r, "t2", "b", buf), "2"); /* the table found since */
    peer_go(&w);
    CHECK(peer_wait(&w));
    CHECK_STR(read_now(r, "t2", "c", buf), "3"); /* its handle kept */
    uint64_t n = 0;
    CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
    CHECK_EQ(kvs_lmdb_reader_count(r, "t2", &n), 0);
    CHECK_EQ(n, 2);
    CHECK_EQ(kvs_lmdb_reader_count(r, "none", &n), 0);
    CHECK_EQ(n, 0);
    kvs_lmdb_reader_end(r);
    peer_go(&w);
    peer_join(&w);
    kvs_lmdb_reader_close(r);
}

static int collect(void *arg, kvs_slice_t k, kvs_slice_t v)
{
    char *out = arg;
    (void)v;
    strncat(out, (const char *)k.p, k.len);
    strcat(out, ",");
    return strlen(out) > 12; /* stop after a few */
}

static void writer_keys(void)
{
    node_store_t *s = store_open(1u << 20);
    const char *keys[] = {"k1", "k3", "k5", "k7", "k9", "k11"};
    for (size_t i = 0; i < 6; i++)
        put(s, "t", keys[i], "v");
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_close(s), 0);
}

/* A reader, its snapshot begun, of an environment writer_keys wrote. */
static kvs_lmdb_reader_t *reader_of_keys(void)
{
    peer_t w;
    fresh_dir();
    peer_start(&w, writer_keys);
    peer_join(&w);
    kvs_lmdb_reader_t *r = reader_open();
    CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
    return r;
}

KVS_TEST(walks_in_key_order_from_a_key)
{
    char got[64] = "";
    kvs_lmdb_reader_t *r = reader_of_keys();
    CHECK_EQ(kvs_lmdb_reader_scan(r, "t", "k4", 2, collect, got), 0);
    CHECK_STR(got, "k5,k7,k9,"); /* k11 sorts before k3 */
    got[0] = '\0';
    CHECK_EQ(kvs_lmdb_reader_scan(r, "missing", NULL, 0, collect, got), 0);
    CHECK_STR(got, "");
    kvs_lmdb_reader_end(r);
    kvs_lmdb_reader_close(r);
}

static sigjmp_buf jump_out;

static int jump(void *arg, kvs_slice_t k, kvs_slice_t v)
{
    (void)arg, (void)k, (void)v;
    siglongjmp(jump_out, 1);
}

/* The router's SIGBUS guard jumps out of a scan that met a damaged page
 * (router_local): the reader's close frees the cursor the jump left open
 * (in the sanitizer build, LeakSanitizer fails this test otherwise). */
KVS_TEST(a_scan_jumped_out_of_leaves_nothing_after_close)
{
    kvs_lmdb_reader_t *r = reader_of_keys();
    volatile int jumped = 0;
    if (sigsetjmp(jump_out, 0) == 0)
        kvs_lmdb_reader_scan(r, "t", NULL, 0, jump, NULL);
    else
        jumped = 1;
    CHECK(jumped);
    kvs_lmdb_reader_close(r);
}

/* Tables a, b and c, one key each, committed. */
static node_store_t *store_of_three_tables(void)
{
    node_store_t *s = store_open(1u << 20);
    put(s, "a", "k", "1");
    put(s, "b", "k", "2");
    put(s, "c", "k", "3");
    CHECK_EQ(node_store_end_turn(s), 0);
    return s;
}

static void writer_three_tables(void)
{
    CHECK_EQ(node_store_close(store_of_three_tables()), 0);
}

static kvs_lmdb_reader_t *reader_open_max(uint32_t max_tables)
{
    kvs_lmdb_reader_opts_t o = {
        .dir = envdir, .shard = 0, .placement = "p", .max_tables = max_tables};
    kvs_lmdb_reader_t *r = NULL;
    char err[512] = "";
    CHECK_EQ(kvs_lmdb_reader_open(&o, &r, err, sizeof(err)), 0);
    return r;
}

/* A shard at storage.max_tables, every table's handle open: a table nobody
 * created is still simply not there (a client may name any), not a
 * storage error; a table that exists past the handles a reader has room
 * for is KVS_ELIMIT, so its read goes to the worker. */
KVS_TEST(missing_table_is_not_found_when_every_handle_is_taken)
{
    peer_t w;
    kvs_slice_t v;
    uint64_t n = 1;
    char got[64] = "";
    fresh_dir();
    peer_start(&w, writer_three_tables);
    peer_join(&w);
    kvs_lmdb_reader_t *r = reader_open_max(3);
    for (int round = 0; round < 2; round++) { /* handles opened, then kept */
        CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
        static const char *const tables[] = {"a", "b", "c"};
        for (size_t i = 0; i < 3; i++)
            CHECK_EQ(kvs_lmdb_reader_get(r, tables[i], "k", 1, &v), 0);
        CHECK_EQ(kvs_lmdb_reader_get(r, "nosuch", "k", 1, &v), KVS_ENOTFOUND);
        CHECK_EQ(kvs_lmdb_reader_count(r, "nosuch", &n), 0);
        CHECK_EQ(n, 0);
        CHECK_EQ(kvs_lmdb_reader_scan(r, "nosuch", NULL, 0, collect, got), 0);
        CHECK_STR(got, "");
        kvs_lmdb_reader_end(r);
    }
    kvs_lmdb_reader_close(r);
    r = reader_open_max(2);
    CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
    CHECK_EQ(kvs_lmdb_reader_get(r, "a", "k", 1, &v), 0);
    CHECK_EQ(kvs_lmdb_reader_get(r, "b", "k", 1, &v), 0);
    CHECK_EQ(kvs_lmdb_reader_get(r, "c", "k", 1, &v), KVS_ELIMIT);
    CHECK_EQ(kvs_lmdb_reader_count(r, "c", &n), KVS_ELIMIT);
    CHECK_EQ(kvs_lmdb_reader_get(r, "nosuch", "k", 1, &v), KVS_ENOTFOUND);
    kvs_lmdb_reader_end(r);
    kvs_lmdb_reader_close(r);
}

static void writer_empties_a_table(void)
{
    node_store_t *s = store_open(1u << 20);
    put(s, "t", "a", "1");
    put(s, "t", "b", "2");
    CHECK_EQ(node_store_end_turn(s), 0);
    peer_pause(); /* 1: t holds two keys */
    CHECK_EQ(node_store_del(s, "t", "a", 1), 0);
    CHECK_EQ(node_store_del(s, "t", "b", 1), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_table_count(s), 0);
    peer_pause(); /* 2: t emptied, so dropped */
    put(s, "t", "c", "3");
    CHECK_EQ(node_store_end_turn(s), 0);
    peer_pause(); /* 3: t made anew */
    CHECK_EQ(node_store_close(s), 0);
}

/* A reader keeps its handle of a table the writer dropped (emptied) and
 * made anew: each snapshot finds the table by name, so it counts and reads
 * what is there then, never what the handle saw before. */
KVS_TEST(a_table_dropped_by_the_writer_reads_as_missing)
{
    peer_t w;
    kvs_slice_t v;
    uint64_t n = 0;
    char got[64] = "", buf[64];
    fresh_dir();
    peer_start(&w, writer_empties_a_table);
    CHECK(peer_wait(&w));
    kvs_lmdb_reader_t *r = reader_open();
    for (int round = 0; round < 2; round++) { /* the handle opened, then kept */
        CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
        CHECK_EQ(kvs_lmdb_reader_count(r, "t", &n), 0);
        CHECK_EQ(n, 2);
        kvs_lmdb_reader_end(r);
    }
    peer_go(&w);
    CHECK(peer_wait(&w));
    CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
    CHECK_EQ(kvs_lmdb_reader_count(r, "t", &n), 0);
    CHECK_EQ(n, 0);
    CHECK_EQ(kvs_lmdb_reader_get(r, "t", "a", 1, &v), KVS_ENOTFOUND);
    CHECK_EQ(kvs_lmdb_reader_scan(r, "t", NULL, 0, collect, got), 0);
    CHECK_STR(got, "");
    kvs_lmdb_reader_end(r);
    peer_go(&w);
    CHECK(peer_wait(&w));
    CHECK_STR(read_now(r, "t", "c", buf), "3");
    CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
    CHECK_EQ(kvs_lmdb_reader_count(r, "t", &n), 0);
    CHECK_EQ(n, 1);
    kvs_lmdb_reader_end(r);
    peer_go(&w);
    peer_join(&w);
    kvs_lmdb_reader_close(r);
}

static void writer_swaps_a_table(void)
{
    node_store_t *s = store_of_three_tables();
    peer_pause(); /* 1: a, b, c */
    CHECK_EQ(node_store_del(s, "a", "k", 1), 0);
    put(s, "d", "k", "4");
    CHECK_EQ(node_store_end_turn(s), 0);
    peer_pause(); /* 2: b, c, d (a emptied: dropped) */
    CHECK_EQ(node_store_close(s), 0);
}

/* A reader with a handle for each of the max_tables tables it has room
 * for: when the writer drops one and makes another, the dropped one's
 * handle is closed to make room for the new one's, whose reads stay local
 * (not KVS_ELIMIT, which sends them to the worker). */
KVS_TEST(a_dropped_tables_handle_makes_room_for_a_new_one)
{
    peer_t w;
    kvs_slice_t v;
    uint64_t n = 9;
    fresh_dir();
    peer_start(&w, writer_swaps_a_table);
    CHECK(peer_wait(&w));
    kvs_lmdb_reader_t *r = reader_open_max(3);
    static const char *const tables[] = {"a", "b", "c"};
    CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
    for (size_t i = 0; i < 3; i++)
        CHECK_EQ(kvs_lmdb_reader_get(r, tables[i], "k", 1, &v), 0);
    kvs_lmdb_reader_end(r);
    peer_go(&w);
    CHECK(peer_wait(&w));
    for (int round = 0; round < 2; round++) {
        CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
        CHECK_EQ(kvs_lmdb_reader_get(r, "d", "k", 1, &v), 0);
        CHECK(v.len == 1 && memcmp(v.p, "4", 1) == 0);
        CHECK_EQ(kvs_lmdb_reader_get(r, "b", "k", 1, &v), 0);
        CHECK_EQ(kvs_lmdb_reader_get(r, "c", "k", 1, &v), 0);
        CHECK_EQ(kvs_lmdb_reader_get(r, "a", "k", 1, &v), KVS_ENOTFOUND);
        CHECK_EQ(kvs_lmdb_reader_count(r, "a", &n), 0);
        CHECK_EQ(n, 0);
        kvs_lmdb_reader_end(r);
    }
    peer_go(&w);
    peer_join(&w);
    kvs_lmdb_reader_close(r);
}

static void writer_drops_a(void)
{
    node_store_t *s = store_of_three_tables();
    peer_pause(); /* 1: a, b, c */
    CHECK_EQ(node_store_del(s, "a", "k", 1), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    peer_pause(); /* 2: b, c (a emptied: dropped) */
    CHECK_EQ(node_store_close(s), 0);
}

/* The pace of the look for dead handles: one that freed nothing is not
 * made again for a second (a reader of a shard holding more tables than
 * it has room for would otherwise look up every handle at each read of
 * another table), so a handle freed meanwhile serves only after it. */
KVS_TEST(a_fruitless_look_for_dead_handles_waits_a_second)
{
    peer_t w;
    kvs_slice_t v;
    fresh_dir();
    peer_start(&w, writer_drops_a);
    CHECK(peer_wait(&w));
    kvs_lmdb_reader_t *r = reader_open_max(2);
    CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
    CHECK_EQ(kvs_lmdb_reader_get(r, "a", "k", 1, &v), 0);
    CHECK_EQ(kvs_lmdb_reader_get(r, "b", "k", 1, &v), 0);
    CHECK_EQ(kvs_lmdb_reader_get(r, "c", "k", 1, &v), KVS_ELIMIT); /* looked: nothing dead */
    kvs_lmdb_reader_end(r);
    uint64_t looked = kvs_now_ns();
    peer_go(&w);
    CHECK(peer_wait(&w)); /* "a" dropped */
    CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
    int got = kvs_lmdb_reader_get(r, "c", "k", 1, &v);
    kvs_lmdb_reader_end(r);
    if (kvs_now_ns() - looked < 900000000ull) /* within the pause: not looked again */
        CHECK_EQ(got, KVS_ELIMIT);
    while (kvs_now_ns() - looked < 1100000000ull)
        usleep(20000);
    CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
    CHECK_EQ(kvs_lmdb_reader_get(r, "c", "k", 1, &v), 0); /* a's handle made room */
    CHECK(v.len == 1 && memcmp(v.p, "3", 1) == 0);
    CHECK_EQ(kvs_lmdb_reader_get(r, "a", "k", 1, &v), KVS_ENOTFOUND);
    kvs_lmdb_reader_end(r);
    peer_go(&w);
    peer_join(&w);
    kvs_lmdb_reader_close(r);
}

static void writer_grows(void)
{
    node_store_t *s = store_open(1u << 20); /* 1 MiB map, grown at the first write */
    peer_pause();                           /* the reader maps 1 MiB */
    char key[32], val[1000];
    memset(val, 'x', sizeof(val));
    for (int turn = 0; turn < 20; turn++) {
        for (int i = 0; i < 500; i++) {
            snprintf(key, sizeof(key), "k%06d", turn * 500 + i);
            CHECK_EQ(node_store_put(s, "big", key, strlen(key), val, sizeof(val)), 0);
        }
        CHECK_EQ(node_store_end_turn(s), 0);
    }
    CHECK(node_store_map_size(s) > 10u << 20);
    CHECK_EQ(node_store_close(s), 0);
}

KVS_TEST(follows_the_writers_map_growth)
{
    char buf[2000];
    peer_t w;
    fresh_dir();
    peer_start(&w, writer_grows);
    CHECK(peer_wait(&w));
    kvs_lmdb_reader_t *r = reader_open();
    uint64_t before = kvs_lmdb_reader_map_size(r);
    CHECK_EQ(before, 1u << 20);
    CHECK(read_now(r, "big", "k000000", buf) == NULL);
    peer_go(&w);
    peer_join(&w); /* 10 MB written since: far past the reader's map */
    CHECK(read_now(r, "big", "k009999", buf) != NULL);
    CHECK_EQ(strlen(buf), 1000);
    CHECK(kvs_lmdb_reader_remaps(r) >= 1);
    CHECK(kvs_lmdb_reader_map_size(r) > before);
    kvs_lmdb_reader_close(r);
}

KVS_TEST(refuses_what_its_worker_would)
{
    peer_t w;
    char err[512];
    kvs_lmdb_reader_t *r = NULL;
    fresh_dir();
    kvs_lmdb_reader_opts_t o = {.dir = envdir, .shard = 0, .placement = "p", .max_tables = 8};
    /* no environment yet: refused, and none created */
    CHECK_EQ(mkdir(envdir, 0700), 0);
    CHECK_EQ(kvs_lmdb_reader_open(&o, &r, err, sizeof(err)), KVS_ESTORE);
    CHECK_CONTAINS(err, "data.mdb");
    char path[400];
    snprintf(path, sizeof(path), "%s/data.mdb", envdir);
    CHECK(access(path, F_OK) != 0);
    peer_start(&w, create_env);
    peer_join(&w);
    o.shard = 1;
    CHECK_EQ(kvs_lmdb_reader_open(&o, &r, err, sizeof(err)), KVS_EMISMATCH);
    CHECK_CONTAINS(err, "shard \"0\", not \"1\"");
    o.shard = 0;
    o.placement = "q";
    CHECK_EQ(kvs_lmdb_reader_open(&o, &r, err, sizeof(err)), KVS_EMISMATCH);
    CHECK_CONTAINS(err, "placement \"p\", not \"q\"");
    CHECK(r == NULL);
}

/* Copies file `from` to `to`, as a snapshot copy arrives. */
static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[4096];
    size_t n;
    CHECK(in != NULL && out != NULL);
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        CHECK_EQ(fwrite(buf, 1, n, out), n);
    CHECK_EQ(fclose(in), 0);
    CHECK_EQ(fclose(out), 0);
}

/* A data file not in place yet (a snapshot copy's .part) is checked as a
 * reader checks an environment, without a lock file beside it; a file
 * that is no LMDB environment at all is KVS_ESTORE. */
KVS_TEST(a_lone_data_file_is_checked_as_the_worker_would)
{
    peer_t w;
    char err[512], from[400], part[400], lock[420];
    fresh_dir();
    peer_start(&w, create_env);
    peer_join(&w);
    snprintf(from, sizeof(from), "%s/data.mdb", envdir);
    snprintf(part, sizeof(part), "%s/copy.part", kvs_test_dir());
    snprintf(lock, sizeof(lock), "%s-lock", part);
    copy_file(from, part);
    CHECK_EQ(kvs_lmdb_check_file(part, 0, "p", err, sizeof(err)), 0);
    CHECK_EQ(kvs_lmdb_check_file(part, 1, "p", err, sizeof(err)), KVS_EMISMATCH);
    CHECK_CONTAINS(err, "shard \"0\", not \"1\"");
    CHECK_EQ(kvs_lmdb_check_file(part, 0, "q", err, sizeof(err)), KVS_EMISMATCH);
    CHECK_CONTAINS(err, "placement \"p\", not \"q\"");
    CHECK(access(lock, F_OK) != 0);
    FILE *f = fopen(part, "wb");
    CHECK(f != NULL);
    for (int i = 0; i < 4096; i++)
        fputc('x', f);
    CHECK_EQ(fclose(f), 0);
    CHECK_EQ(kvs_lmdb_check_file(part, 0, "p", err, sizeof(err)), KVS_ESTORE);
    CHECK_CONTAINS(err, "cannot open it as an LMDB environment");
}

typedef struct slots_s {
    char pid[32];
    int n;
} slots_t;

static int count_slots(const char *msg, void *ctx)
{
    slots_t *c = ctx;
    /* mdb_reader_list: a header line, then "pid thread txnid" per slot */
    while (*msg == ' ')
        msg++;
    c->n += strncmp(msg, c->pid, strlen(c->pid)) == 0 && msg[strlen(c->pid)] == ' ';
    return 0;
}

/* Reader slots `pid` holds in the environment's lock file, listed from a
 * child process (one env per file per process: the caller may have its
 * reader open). */
static int slots_of(pid_t pid)
{
    int st;
    fflush(NULL);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        MDB_env *env;
        slots_t c = {.n = 0};
        snprintf(c.pid, sizeof(c.pid), "%d", (int)pid);
        if (mdb_env_create(&env) != 0 || mdb_env_open(env, envdir, MDB_RDONLY, 0600) != 0 ||
            mdb_reader_list(env, count_slots, &c) != 0)
            _exit(100);
        _exit(c.n);
    }
    CHECK(waitpid(child, &st, 0) == child);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) != 100);
    return WEXITSTATUS(st);
}

static void hold_a_snapshot_and_die(void)
{
    kvs_lmdb_reader_t *r = reader_open();
    CHECK_EQ(kvs_lmdb_reader_begin(r), 0);
    _exit(0); /* killed, as it were: its slot stays taken, pinning its snapshot */
}

KVS_TEST(one_slot_and_stale_slots_cleared)
{
    char buf[64];
    peer_t w, dead;
    fresh_dir();
    peer_start(&w, create_env);
    peer_join(&w);
    kvs_lmdb_reader_t *r = reader_open();
    for (int i = 0; i < 50; i++) {
        char table[8];
        snprintf(table, sizeof(table), "x%d", i % 5); /* lookups of absent tables too */
        read_now(r, table, "a", buf);
        CHECK_STR(read_now(r, "t", "a", buf), "1");
    }
    peer_start(&dead, hold_a_snapshot_and_die);
    peer_join(&dead);
    int cleared = -1;
    CHECK_EQ(kvs_lmdb_reader_check(r, &cleared), 0);
    CHECK_EQ(cleared, 1);
    CHECK_EQ(kvs_lmdb_reader_check(r, &cleared), 0);
    CHECK_EQ(cleared, 0);
    /* One slot, kept between snapshots (MDB_NOTLS: the txn owns it). */
    CHECK_EQ(slots_of(getpid()), 1);
    kvs_lmdb_reader_close(r);
    CHECK_EQ(slots_of(getpid()), 0); /* released on close */
}

/* A writer whose last batch wrote a large value and deleted it again:
 * LMDB leaves the pages it took from the end of the file, free again by
 * the commit, unwritten, so data.mdb ends before the last page its meta
 * page names. Then a compacted copy of it, as a Snapshot sends. */
static void writer_leaves_a_free_tail(void)
{
    static char big[400000];
    char copy[400];
    node_store_stats_t st;
    struct stat fs;
    node_store_t *s = store_open(16u << 20);
    put(s, "t", "a", "1");
    CHECK_EQ(node_store_end_turn(s), 0);
    for (int i = 0; i < 4; i++) { /* pages freed, for LMDB to reuse below */
        char k[8];
        snprintf(k, sizeof(k), "b%d", i);
        CHECK_EQ(node_store_put(s, "t", k, strlen(k), big, sizeof(big)), 0);
        put(s, "t", k, "small");
        if (i < 3)
            CHECK_EQ(node_store_end_turn(s), 0);
    }
    CHECK_EQ(node_store_put(s, "t", "huge", 4, big, sizeof(big)), 0);
    CHECK_EQ(node_store_del(s, "t", "huge", 4), 0);
    CHECK_EQ(node_store_end_turn(s), 0);
    node_store_stats(s, &st);
    snprintf(copy, sizeof(copy), "%s/data.mdb", envdir);
    CHECK_EQ(stat(copy, &fs), 0);
    CHECK((uint64_t)fs.st_size < st.pages_used * 4096); /* the tail is not in the file */
    snprintf(copy, sizeof(copy), "%s/copy.part", kvs_test_dir());
    int fd = open(copy, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    node_store_view_t *v;
    CHECK_EQ(node_store_view_open(s, NULL, &v), 0);
    CHECK_EQ(node_store_view_copy(v, fd), 0);
    node_store_view_close(v);
    CHECK_EQ(close(fd), 0);
    CHECK_EQ(node_store_close(s), 0);
}

/* A live data.mdb may end before the last page its meta page names (free
 * pages LMDB never wrote): it is read as any other. A compacted copy holds
 * exactly its pages, so one shorter than that was cut short, and is
 * refused before it takes data.mdb's place: once in place, a read of its
 * missing pages would fault (SIGBUS). */
KVS_TEST(a_free_tail_is_read_and_a_copy_cut_short_refused)
{
    peer_t w;
    struct stat st;
    char err[512], part[400], buf[16];
    fresh_dir();
    peer_start(&w, writer_leaves_a_free_tail);
    peer_join(&w);
    kvs_lmdb_reader_t *r = reader_open();
    CHECK_STR(read_now(r, "t", "a", buf), "1");
    CHECK(read_now(r, "t", "huge", buf) == NULL);
    kvs_lmdb_reader_close(r);
    snprintf(part, sizeof(part), "%s/copy.part", kvs_test_dir());
    CHECK_EQ(kvs_lmdb_check_file(part, 0, "p", err, sizeof(err)), 0);
    CHECK_EQ(stat(part, &st), 0);
    CHECK_EQ(truncate(part, st.st_size - 4096), 0);
    CHECK_EQ(kvs_lmdb_check_file(part, 0, "p", err, sizeof(err)), KVS_ESTORE);
    CHECK_CONTAINS(err, "the copy was cut short");
}

/* A writer of two tables: 300 small pairs over several leaf pages, and a
 * value on overflow pages; written over several turns, so that pages
 * were freed too. */
static void create_tables(void)
{
    node_store_t *s = store_open(4u << 20);
    char k[32], v[64], big[20000];
    for (int i = 0; i < 300; i++) {
        snprintf(k, sizeof(k), "key%04d", i);
        snprintf(v, sizeof(v), "value-%04d-of-the-table", i);
        put(s, "t", k, v);
        if (i % 100 == 99)
            CHECK_EQ(node_store_end_turn(s), 0);
    }
    memset(big, 'b', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    put(s, "u", "big", big);
    CHECK_EQ(node_store_end_turn(s), 0);
    CHECK_EQ(node_store_close(s), 0);
}

/* Calls fix(page, size) on every leaf page of `path` whose first key
 * starts with "key" (table t's leaves, current or freed); returns how
 * many. */
static int edit_leaves(const char *path, void (*fix)(uint8_t *page, size_t size))
{
    size_t ps = (size_t)sysconf(_SC_PAGESIZE), n = 0;
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    uint8_t *page = malloc(ps);
    CHECK(page != NULL);
    for (long i = 2;; i++) {
        CHECK_EQ(fseek(f, i * (long)ps, SEEK_SET), 0);
        if (fread(page, 1, ps, f) != ps)
            break;
        uint16_t flags, lower;
        memcpy(&flags, page + 10, 2); /* LMDB's page header: pgno, pad, flags, lower, upper */
        memcpy(&lower, page + 12, 2);
        if ((flags & 0x7f) != 0x02 || lower < 16 + 4)
            continue;
        uint16_t first; /* a node: sizes and flags (8 bytes), then its key */
        memcpy(&first, page + 16, 2);
        if ((size_t)first + 8 + 3 > ps || memcmp(page + first + 8, "key", 3) != 0)
            continue;
        fix(page, ps);
        CHECK_EQ(fseek(f, i * (long)ps, SEEK_SET), 0);
        CHECK_EQ(fwrite(page, 1, ps, f), ps);
        n++;
    }
    free(page);
    CHECK_EQ(fclose(f), 0);
    return (int)n;
}

static void swap_first_two(uint8_t *page, size_t size)
{
    uint8_t t[2];
    (void)size;
    memcpy(t, page + 16, 2);
    memcpy(page + 16, page + 18, 2);
    memcpy(page + 18, t, 2);
}

static void nodes_off_the_page(uint8_t *page, size_t size)
{
    uint16_t lower, past = (uint16_t)(size - 16);
    memcpy(&lower, page + 12, 2);
    for (size_t off = 16; off + 2 <= lower; off += 2)
        memcpy(page + off, &past, 2);
}

static char walk_part[400];

static void walk_fault(int sig)
{
    (void)sig;
    _exit(4);
}

/* Child: walks walk_part; exits 0 only when it is found sound (a fault
 * ends it with 4, as kvs-node --check-data reports one). */
static void walk_child(void)
{
    kvs_lmdb_walk_t w;
    char err[512];
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = walk_fault;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    _exit(kvs_lmdb_walk_file(walk_part, &w, err, sizeof(err)) == 0 ? 0 : 3);
}

/* The whole-file walk reads every table's pages: a sound file is counted;
 * pairs out of order (bytes changed on a disk: the meta pages and __kvs,
 * all kvs_lmdb_check_file reads, are untouched) are found; and a leaf
 * whose nodes point off the page, which faults or fails the first read of
 * it, never passes (walked in a child: a fault costs the walk only). */
KVS_TEST(a_whole_file_walk_finds_damaged_table_pages)
{
    peer_t w;
    kvs_lmdb_walk_t got;
    char err[512] = "", from[400];
    fresh_dir();
    peer_start(&w, create_tables);
    peer_join(&w);
    snprintf(from, sizeof(from), "%s/data.mdb", envdir);
    snprintf(walk_part, sizeof(walk_part), "%s/copy.part", kvs_test_dir());
    copy_file(from, walk_part);
    CHECK_EQ(kvs_lmdb_walk_file(walk_part, &got, err, sizeof(err)), 0);
    CHECK_EQ(got.tables, 3); /* t, u and __kvs */
    CHECK(got.pairs >= 301);
    CHECK(got.bytes >= 20000 + 300 * 30);
    CHECK(got.free_ids > 0);

    CHECK(edit_leaves(walk_part, swap_first_two) >= 2);
    CHECK_EQ(kvs_lmdb_check_file(walk_part, 0, "p", err, sizeof(err)), 0); /* passes that */
    CHECK_EQ(kvs_lmdb_walk_file(walk_part, &got, err, sizeof(err)), KVS_EDAMAGED);
    CHECK_CONTAINS(err, "database \"t\": pair");
    CHECK_CONTAINS(err, "is out of order");

    copy_file(from, walk_part);
    CHECK(edit_leaves(walk_part, nodes_off_the_page) >= 2);
    CHECK_EQ(kvs_lmdb_check_file(walk_part, 0, "p", err, sizeof(err)), 0);
    peer_start(&w, walk_child);
    int st;
    CHECK(waitpid(w.pid, &st, 0) == w.pid);
    CHECK(!(WIFEXITED(st) && WEXITSTATUS(st) == 0));

    FILE *f = fopen(walk_part, "wb");
    CHECK(f != NULL);
    CHECK_EQ(fclose(f), 0);
    CHECK_EQ(kvs_lmdb_walk_file(walk_part, &got, err, sizeof(err)), KVS_EDAMAGED);
    CHECK_CONTAINS(err, "the file is empty");
    f = fopen(walk_part, "wb");
    CHECK(f != NULL);
    for (int i = 0; i < 8192; i++)
        fputc('x', f);
    CHECK_EQ(fclose(f), 0);
    CHECK_EQ(kvs_lmdb_walk_file(walk_part, &got, err, sizeof(err)), KVS_ESTORE);
    CHECK_CONTAINS(err, "cannot open it as an LMDB environment");
}

/* A database of sorted duplicates (MDB_DUPSORT: kvs makes none, other
 * LMDB files may hold them) holds equal keys in a row, each value after
 * the one before: sound. */
KVS_TEST(a_whole_file_walk_reads_sorted_duplicates)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    char path[400], err[512] = "";
    kvs_lmdb_walk_t got;
    KVS_TEST_FRESH_DIR("lmdbdup");
    snprintf(path, sizeof(path), "%s/dup.mdb", kvs_test_dir());
    CHECK_EQ(mdb_env_create(&env), 0);
    CHECK_EQ(mdb_env_set_maxdbs(env, 2), 0);
    CHECK_EQ(mdb_env_open(env, path, MDB_NOSUBDIR, 0600), 0);
    CHECK_EQ(mdb_txn_begin(env, NULL, 0, &txn), 0);
    CHECK_EQ(mdb_dbi_open(txn, "dup", MDB_CREATE | MDB_DUPSORT, &dbi), 0);
    for (int i = 0; i < 10; i++) {
        char v[8];
        snprintf(v, sizeof(v), "v%d", i);
        MDB_val k = {3, "key"}, d = {strlen(v), v};
        CHECK_EQ(mdb_put(txn, dbi, &k, &d, 0), 0);
    }
    CHECK_EQ(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    CHECK_EQ(kvs_lmdb_walk_file(path, &got, err, sizeof(err)), 0);
    CHECK_EQ(got.tables, 1);
    CHECK_EQ(got.pairs, 10);
}

KVS_TEST(identity_names_the_files)
{
    peer_t w;
    kvs_lmdb_ident_t now;
    char from[400], to[400], buf_cmd[900];
    fresh_dir();
    peer_start(&w, create_env);
    peer_join(&w);
    kvs_lmdb_reader_t *r = reader_open();
    CHECK_EQ(kvs_lmdb_ident_of(envdir, &now), 0);
    CHECK(memcmp(&now, kvs_lmdb_reader_ident(r), sizeof(now)) == 0);
    /* a replaced data.mdb is another environment */
    snprintf(from, sizeof(from), "%s/data.mdb", envdir);
    snprintf(to, sizeof(to), "%s/copy.mdb", envdir);
    snprintf(buf_cmd, sizeof(buf_cmd), "cp '%s' '%s'", from, to);
    CHECK_EQ(system(buf_cmd), 0);
    CHECK_EQ(rename(to, from), 0);
    CHECK_EQ(kvs_lmdb_ident_of(envdir, &now), 0);
    CHECK(now.data_ino != kvs_lmdb_reader_ident(r)->data_ino);
    CHECK(now.lock_ino == kvs_lmdb_reader_ident(r)->lock_ino);
    kvs_lmdb_reader_close(r);
    CHECK_EQ(kvs_lmdb_ident_of(kvs_test_dir(), &now), -ENOENT);
}

KVS_TEST_MAIN(KVS_CASE(reader_sees_every_commit_and_nothing_else),
              KVS_CASE(walks_in_key_order_from_a_key),
              KVS_CASE(a_scan_jumped_out_of_leaves_nothing_after_close),
              KVS_CASE(missing_table_is_not_found_when_every_handle_is_taken),
              KVS_CASE(a_table_dropped_by_the_writer_reads_as_missing),
              KVS_CASE(a_dropped_tables_handle_makes_room_for_a_new_one),
              KVS_CASE(a_fruitless_look_for_dead_handles_waits_a_second),
              KVS_CASE(follows_the_writers_map_growth), KVS_CASE(refuses_what_its_worker_would),
              KVS_CASE(one_slot_and_stale_slots_cleared), KVS_CASE(identity_names_the_files),
              KVS_CASE(a_lone_data_file_is_checked_as_the_worker_would),
              KVS_CASE(a_free_tail_is_read_and_a_copy_cut_short_refused),
              KVS_CASE(a_whole_file_walk_finds_damaged_table_pages),
              KVS_CASE(a_whole_file_walk_reads_sorted_duplicates))

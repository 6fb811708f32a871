/*
 * Unit tests for node_handoff: the fence a snapshot sent raises on writes
 * to tables bound to no topic, kept on disk, and when a map lifts it.
 */
#include "kvs_test.h"
#include "node_handoff.h"
#include "kvs_copied.h"
#include "kvs_err.h"

#include <fcntl.h>
#include <sys/stat.h>

static char dir[64], file[96], rows[96], text_of_rows[4096];

static void remove_dir(void)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/handoff.lock", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/holders", dir);
    unlink(path);
    unlink(file);
    unlink(rows);
    rmdir(dir);
}

static void fresh_dir(void)
{
    snprintf(dir, sizeof(dir), "/tmp/kvs-test-handoff-%d", (int)getpid());
    snprintf(file, sizeof(file), "%s/copied-out", dir);
    snprintf(rows, sizeof(rows), "%s/unbound-rows", dir);
    remove_dir();
    CHECK_EQ(mkdir(dir, 0700), 0);
    atexit(remove_dir);
}

/* This node is "a"; shard 1's replicas are `nodes` (a YAML list of
 * {name, shards} entries). */
static kvs_config_t *config(const char *nodes)
{
    char text[1024], err[256];
    kvs_config_t *cfg = NULL;
    snprintf(text, sizeof(text), "node: {name: a}\ncluster:\n  shards: 2\n  nodes:\n%s", nodes);
    int rc = kvs_config_parse("test", text, strlen(text), &cfg, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "%s\n", err);
    CHECK_EQ(rc, 0);
    return cfg;
}

#define A_ALONE "    - {name: a, address: \"127.0.0.1:1000\", shards: [0, 1]}\n"
#define B_NONE "    - {name: b, address: \"127.0.0.1:2000\", shards: [0]}\n"
#define B_TOO "    - {name: b, address: \"127.0.0.1:2000\", shards: [0, 1]}\n"
#define A_GONE "    - {name: a, address: \"127.0.0.1:1000\", shards: [0]}\n"

static node_handoff_t *open_at(const kvs_config_t *cfg)
{
    node_handoff_t *h = NULL;
    CHECK_EQ(node_handoff_open(dir, 1, cfg, 0, &h), 0);
    return h;
}

static void fence(node_handoff_t *h, const char *peer, const kvs_config_t *cfg, int want_raised)
{
    int raised = -1;
    CHECK_EQ(node_handoff_fence(h, peer, cfg, &raised), 0);
    CHECK_EQ(raised, want_raised);
}

KVS_TEST(no_file_no_fence)
{
    fresh_dir();
    kvs_config_t *cfg = config(A_ALONE B_NONE);
    node_handoff_t *h = open_at(cfg);
    CHECK(node_handoff_why(h) == NULL);
    CHECK(node_handoff_why(NULL) == NULL);
    node_handoff_free(h);
    kvs_config_free(cfg);
}

KVS_TEST(a_snapshot_fences_and_a_restart_keeps_it)
{
    fresh_dir();
    kvs_config_t *cfg = config(A_ALONE B_NONE);
    node_handoff_t *h = open_at(cfg);
    fence(h, "127.0.0.1:5555", cfg, 1);
    const char *why = node_handoff_why(h);
    CHECK(why != NULL && strstr(why, "shard 1 was copied to 127.0.0.1:5555 at ") != NULL);
    CHECK(access(file, F_OK) == 0);
    fence(h, "127.0.0.1:6666", cfg, 0); /* up already: the first one's record stands */
    CHECK(strstr(node_handoff_why(h), "127.0.0.1:5555") != NULL);
    node_handoff_free(h);
    h = open_at(cfg); /* a restart: the map is the same */
    why = node_handoff_why(h);
    CHECK(why != NULL && strstr(why, "127.0.0.1:5555") != NULL);
    node_handoff_update(h, cfg); /* a reload that left the map alone */
    CHECK(node_handoff_why(h) != NULL);
    node_handoff_free(h);
    kvs_config_free(cfg);
}

KVS_TEST(a_snapshot_not_delivered_lowers_it)
{
    fresh_dir();
    kvs_config_t *cfg = config(A_ALONE B_NONE);
    node_handoff_t *h = open_at(cfg);
    fence(h, "peer", cfg, 1);
    node_handoff_unfence(h);
    CHECK(node_handoff_why(h) == NULL);
    CHECK(access(file, F_OK) != 0);
    node_handoff_free(h);
    kvs_config_free(cfg);
}

KVS_TEST(several_replicas_need_no_fence)
{
    fresh_dir();
    kvs_config_t *both = config(A_ALONE B_TOO);
    node_handoff_t *h = open_at(both);
    fence(h, "peer", both, 0); /* node_cmd refuses such writes (400) */
    CHECK(node_handoff_why(h) == NULL);
    CHECK(access(file, F_OK) != 0);
    node_handoff_free(h);
    kvs_config_free(both);
}

KVS_TEST(a_map_without_this_node_keeps_it)
{
    fresh_dir();
    kvs_config_t *cfg = config(A_ALONE B_NONE), *moved = config(A_GONE B_TOO);
    node_handoff_t *h = open_at(cfg);
    fence(h, "peer", cfg, 1);
    node_handoff_update(h, moved); /* the worker is about to stop */
    CHECK(node_handoff_why(h) != NULL);
    CHECK(access(file, F_OK) == 0);
    node_handoff_free(h);
    kvs_config_free(cfg);
    kvs_config_free(moved);
}

KVS_TEST(a_map_with_several_replicas_lifts_it)
{
    fresh_dir();
    kvs_config_t *alone = config(A_ALONE B_NONE), *both = config(A_ALONE B_TOO);
    node_handoff_t *h = open_at(alone);
    fence(h, "peer", alone, 1);
    node_handoff_update(h, both); /* a replica was added: node_cmd refuses with 400 now */
    CHECK(node_handoff_why(h) == NULL);
    CHECK(access(file, F_OK) != 0);
    node_handoff_update(h, alone); /* and removed again */
    CHECK(node_handoff_why(h) == NULL);
    fence(h, "peer", alone, 1);
    node_handoff_free(h);
    h = open_at(both); /* a start with several replicas lifts it too */
    CHECK(node_handoff_why(h) == NULL);
    CHECK(access(file, F_OK) != 0);
    node_handoff_free(h);
    kvs_config_free(alone);
    kvs_config_free(both);
}

/* A map of several replicas, one of them a node that installed a copy
 * from here: that node may have held the shard alone since and taken
 * writes this copy lacks, so the fence stays. One that names other
 * nodes lifts it. */
KVS_TEST(a_map_with_a_node_that_copied_keeps_it)
{
    fresh_dir();
    kvs_config_t *alone = config(A_ALONE B_NONE), *both = config(A_ALONE B_TOO);
    kvs_config_t *c_too =
        config(A_ALONE B_NONE "    - {name: c, address: \"127.0.0.1:3000\", shards: [1]}\n");
    node_handoff_t *h = open_at(alone);
    fence(h, "peer", alone, 1);
    CHECK_EQ(node_handoff_copied(h, "b", node_handoff_mark(h)), 0);
    node_handoff_update(h, both);
    CHECK(node_handoff_why(h) != NULL);
    CHECK(access(file, F_OK) == 0);
    node_handoff_free(h);
    h = open_at(both); /* at a start too */
    CHECK(node_handoff_why(h) != NULL);
    node_handoff_update(h, c_too); /* b is not among them */
    CHECK(node_handoff_why(h) == NULL);
    CHECK(access(file, F_OK) != 0);
    node_handoff_free(h);
    kvs_config_free(alone);
    kvs_config_free(both);
    kvs_config_free(c_too);
}

KVS_TEST(a_damaged_file_keeps_the_fence_until_removed)
{
    fresh_dir();
    kvs_config_t *alone = config(A_ALONE B_NONE);
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    CHECK_EQ(write(fd, "garbage\n", 8), 8);
    close(fd);
    node_handoff_t *h = open_at(alone);
    const char *why = node_handoff_why(h);
    CHECK(why != NULL && strstr(why, "cannot be understood") != NULL);
    node_handoff_update(h, alone);
    CHECK(node_handoff_why(h) != NULL);
    CHECK_EQ(unlink(file), 0); /* the operator's way out, then a reload */
    node_handoff_update(h, alone);
    CHECK(node_handoff_why(h) == NULL);
    node_handoff_free(h);
    h = open_at(alone); /* and a restart */
    CHECK(node_handoff_why(h) == NULL);
    node_handoff_free(h);
    kvs_config_free(alone);
}

KVS_TEST(a_file_that_cannot_be_written_refuses_the_snapshot)
{
    fresh_dir();
    kvs_config_t *cfg = config(A_ALONE B_NONE);
    node_handoff_t *h = open_at(cfg);
    CHECK_EQ(mkdir(file, 0700), 0); /* a directory where the file goes */
    int raised = -1;
    CHECK(node_handoff_fence(h, "peer", cfg, &raised) < 0);
    CHECK_EQ(raised, 0);
    CHECK(node_handoff_why(h) == NULL); /* the caller does not send the snapshot */
    CHECK_EQ(rmdir(file), 0);
    node_handoff_free(h);
    kvs_config_free(cfg);
}

static void read_path(const char *path, char *text, size_t cap)
{
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    size_t n = fread(text, 1, cap - 1, f);
    fclose(f);
    text[n] = '\0';
}

static void read_file(char *text, size_t cap)
{
    read_path(file, text, cap);
}

/* The nodes unbound-rows names, "" when none; "-" when there is no file. */
static const char *rows_names(void)
{
    static char names[512];
    kvs_copied_t c;
    int rc = kvs_copied_read_names(rows, &c);
    if (rc == -ENOENT)
        return "-";
    CHECK_EQ(rc, 0);
    names[0] = '\0';
    for (size_t i = 0; i < c.n_names; i++)
        snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", i ? " " : "",
                 c.names[i]);
    return names;
}

#define CHECK_ROWS(want) CHECK_EQ(strcmp(rows_names(), want), 0)

/* unbound-rows: written (naming no node) before the first write to an
 * unbound table, and only then; a copy taken while no such write is
 * taken (fenced, or a map of several replicas) and acknowledged while
 * none was taken since names its node; one acknowledged after writes
 * could be taken again does not; the next write names nobody again. */
KVS_TEST(unbound_rows_names_the_copies_taken_since_the_last_write)
{
    fresh_dir();
    kvs_config_t *alone = config(A_ALONE B_NONE), *both = config(A_ALONE B_TOO);
    node_handoff_t *h = open_at(alone);
    CHECK_ROWS("-"); /* no rows of unbound tables: no file */
    CHECK_EQ(node_handoff_writing(h, 0), 0);
    CHECK_ROWS("");
    char text[4096];
    read_path(rows, text, sizeof(text));
    CHECK(strstr(text, "# kvs: shard 1 may hold rows") == text);
    struct stat st1, st2;
    CHECK_EQ(lstat(rows, &st1), 0);
    CHECK_EQ(node_handoff_writing(h, 0), 0); /* written once: the next write only looks */
    CHECK_EQ(lstat(rows, &st2), 0);
    CHECK(st1.st_ino == st2.st_ino && st1.st_mtime == st2.st_mtime);
    CHECK_EQ(unlink(rows), 0);
    CHECK_EQ(node_handoff_writing(h, 0), 0); /* removed (no reload since): written again */
    CHECK_ROWS("");
    CHECK_EQ(node_handoff_writing(h, 7), 0);
    CHECK_EQ(unlink(rows), 0);
    CHECK_EQ(node_handoff_writing(h, 7), 0); /* looked at once per write batch */
    CHECK_ROWS("-");
    CHECK_EQ(node_handoff_writing(h, 8), 0);
    CHECK_ROWS("");
    CHECK_EQ(node_handoff_writing(NULL, 0), 0);

    node_handoff_free(h);
    h = open_at(alone);
    CHECK_EQ(node_handoff_writing(h, 0), 0);
    fence(h, "peer", alone, 1); /* a copy under the fence: both files name x */
    node_handoff_mark_t m = node_handoff_mark(h);
    CHECK_EQ(node_handoff_copied(h, "x", m), 0);
    CHECK_ROWS("x");
    read_file(text, sizeof(text));
    CHECK_CONTAINS(text, "\nnode x\n");
    node_handoff_update(h, both); /* lifted (x keeps nothing), writes still not taken */
    CHECK(access(file, F_OK) != 0);
    CHECK_EQ(node_handoff_copied(h, "c", m), 0); /* a late one of the fence's: rows still hold */
    node_handoff_mark_t m2 = node_handoff_mark(h);
    CHECK_EQ(node_handoff_copied(h, "d", m2), 0); /* a copy with no fence, several replicas */
    CHECK_ROWS("x c d");
    node_handoff_update(h, both); /* the same map again: nothing changes */
    CHECK_EQ(node_handoff_copied(h, "e", m2), 0);
    CHECK_ROWS("x c d e");
    node_handoff_update(h, alone); /* writes may be taken again: the copies are forgotten */
    CHECK_ROWS("");
    CHECK_EQ(node_handoff_copied(h, "f", m2), 0);
    node_handoff_update(h, both);
    CHECK_EQ(node_handoff_copied(h, "g", m2), 0);
    CHECK_ROWS(""); /* f and g: copies taken before writes could be taken again */
    CHECK_EQ(node_handoff_copied(h, "h", node_handoff_mark(h)), 0);
    CHECK_ROWS("h");
    node_handoff_free(h);
    CHECK_EQ(node_handoff_open(dir, 1, both, 1, &h), 0); /* a restart with rows: kept */
    CHECK_ROWS("h");
    node_handoff_update(h, alone);
    CHECK_EQ(node_handoff_writing(h, 0), 0);
    CHECK_ROWS("");
    node_handoff_free(h);
    kvs_config_free(alone);
    kvs_config_free(both);
}

/* A copy taken while writes are taken (a snapshot asked for with the
 * fence failing, or none raised) is never recorded, and a fence lowered
 * for a copy not delivered lets writes in again. */
KVS_TEST(unbound_rows_take_no_copy_of_a_time_writes_were_taken)
{
    fresh_dir();
    kvs_config_t *alone = config(A_ALONE B_NONE);
    node_handoff_t *h = open_at(alone);
    CHECK_EQ(node_handoff_writing(h, 0), 0);
    node_handoff_mark_t open = node_handoff_mark(h);
    CHECK_EQ(node_handoff_copied(h, "b", open), 0);
    CHECK_ROWS("");
    fence(h, "peer", alone, 1);
    node_handoff_mark_t m = node_handoff_mark(h);
    node_handoff_unfence(h); /* not delivered: writes are taken again */
    CHECK(node_handoff_why(h) == NULL);
    CHECK_EQ(node_handoff_copied(h, "c", m), 0);
    fence(h, "peer", alone, 1);
    CHECK_EQ(node_handoff_copied(h, "d", m), 0); /* another fence since */
    CHECK_ROWS("");
    node_handoff_free(h);
    kvs_config_free(alone);
}

/* The master drops a withdrawn node from both files (kvs_copied_drop,
 * under the directory's lock) while the worker runs: the worker's records
 * go on from what the files say then. While the master holds the lock,
 * the worker's changes wait, and fail when it is held too long. */
KVS_TEST(the_masters_drop_and_the_workers_records_take_turns)
{
    fresh_dir();
    kvs_config_t *alone = config(A_ALONE B_NONE), *both = config(A_ALONE B_TOO);
    node_handoff_t *h = NULL;
    CHECK_EQ(node_handoff_open(dir, 1, both, 1, &h), 0);
    CHECK_EQ(node_handoff_copied(h, "b", node_handoff_mark(h)), 0);
    CHECK_EQ(node_handoff_copied(h, "c", node_handoff_mark(h)), 0);
    CHECK_ROWS("b c");
    int fd = kvs_copied_lock(dir, 100);
    CHECK(fd >= 0);
    const char *gone[] = {"c"};
    size_t dropped = 0;
    CHECK_EQ(kvs_copied_drop(dir, gone, 1, 0, &dropped), 0);
    CHECK_EQ(dropped, 1);
    CHECK_EQ(node_handoff_copied(h, "d", node_handoff_mark(h)), 0); /* waited 2 s: not recorded */
    CHECK_ROWS("b");
    kvs_copied_unlock(fd);
    CHECK_EQ(node_handoff_copied(h, "d", node_handoff_mark(h)), 0);
    CHECK_ROWS("b d");
    node_handoff_update(h, alone);
    uint8_t d[KVS_HASH_LEN];
    memset(d, 0xa5, sizeof(d));
    fence(h, "peer", alone, 1);
    node_handoff_mark_t m = node_handoff_mark(h);
    CHECK_EQ(node_handoff_sent(h, "b", d, m), 0);
    CHECK_EQ(node_handoff_copied(h, "b", m), 0);
    const char *b[] = {"b"};
    CHECK_EQ(kvs_copied_drop(dir, b, 1, 0, NULL), 0);
    char text[4096];
    read_file(text, sizeof(text));
    CHECK(strstr(text, "node b") == NULL && strstr(text, "sent b") == NULL);
    CHECK(strstr(text, "# kvs: shard 1 was copied") == text);
    CHECK(strstr(text, "\npeer peer\n") != NULL);
    CHECK(node_handoff_why(h) != NULL);               /* still fenced */
    CHECK_EQ(node_handoff_reack(h, "b", d), -ENOENT); /* its copy counts no more */
    CHECK_ROWS("");
    node_handoff_free(h);
    kvs_config_free(alone);
    kvs_config_free(both);
}

/* The master's holders file is the map it takes, which this worker may
 * not have taken yet: while it gives the shard to other nodes too, or not
 * to this one, no write to an unbound table begins here (-EAGAIN); and a
 * copy acknowledged after the master counted a withdrawal is recorded by
 * no one (its receiver may be the node withdrawn). */
KVS_TEST(the_map_the_master_takes_holds_the_worker_back)
{
    fresh_dir();
    kvs_config_t *alone = config(A_ALONE B_NONE), *both = config(A_ALONE B_TOO);
    node_handoff_t *h = open_at(alone);
    const char *a[] = {"a"}, *ab[] = {"a", "b"}, *b[] = {"b"};
    CHECK_EQ(kvs_copied_write_holders(dir, ab, 2, 0, NULL, 0), 0);
    CHECK_EQ(node_handoff_writing(h, 0), -EAGAIN);
    CHECK_ROWS("-");
    CHECK_EQ(kvs_copied_write_holders(dir, b, 1, 0, NULL, 0), 0);
    CHECK_EQ(node_handoff_writing(h, 0), -EAGAIN);
    CHECK_EQ(kvs_copied_write_holders(dir, a, 1, 0, NULL, 0), 0);
    CHECK_EQ(node_handoff_writing(h, 0), 0);
    CHECK_ROWS("");
    node_handoff_update(h, both);
    CHECK_EQ(kvs_copied_write_holders(dir, ab, 2, 0, NULL, 0), 0);
    node_handoff_mark_t m = node_handoff_mark(h);
    CHECK_EQ(node_handoff_copied(h, "b", m), 0);
    CHECK_ROWS("b");
    node_handoff_mark_t m2 = node_handoff_mark(h);
    const char *gone[] = {"b"};
    CHECK_EQ(kvs_copied_write_holders(dir, a, 1, 1, gone, 1), 0); /* a map withdrew b */
    CHECK_EQ(node_handoff_copied(h, "c", m2), 0);                 /* began before: not recorded */
    CHECK_ROWS("b");
    CHECK_EQ(node_handoff_copied(h, "c", node_handoff_mark(h)), 0);
    CHECK_ROWS("b c");
    CHECK_EQ(kvs_copied_drop(dir, gone, 1, 0, NULL), 0);
    CHECK_EQ(node_handoff_copied(h, "b", node_handoff_mark(h)), 0); /* began after: b is gone */
    CHECK_ROWS("c");
    node_handoff_free(h);
    kvs_config_free(alone);
    kvs_config_free(both);
}

/* Writes may be taken again (the fence removed, the map down to this
 * node): the copies named are of an abandoned move, or withdrawn, and are
 * forgotten at once, before any write. */
KVS_TEST(unbound_rows_forget_copies_when_writes_may_be_taken_again)
{
    fresh_dir();
    kvs_config_t *alone = config(A_ALONE B_NONE), *both = config(A_ALONE B_TOO);
    node_handoff_t *h = NULL;
    CHECK_EQ(node_handoff_open(dir, 1, alone, 1, &h), 0);
    fence(h, "peer", alone, 1);
    CHECK_EQ(node_handoff_copied(h, "b", node_handoff_mark(h)), 0);
    CHECK_ROWS("b");
    node_handoff_update(h, alone);
    CHECK_ROWS("b");           /* fenced: writes are refused, the copy holds every row */
    CHECK_EQ(unlink(file), 0); /* the move is abandoned */
    node_handoff_update(h, alone);
    CHECK(node_handoff_why(h) == NULL);
    CHECK_ROWS("");
    node_handoff_update(h, both);
    CHECK_EQ(node_handoff_copied(h, "c", node_handoff_mark(h)), 0);
    CHECK_ROWS("c");
    node_handoff_free(h);
    CHECK_EQ(node_handoff_open(dir, 1, alone, 1, &h), 0); /* a start alone, unfenced */
    CHECK_ROWS("");
    node_handoff_free(h);
    kvs_config_free(alone);
    kvs_config_free(both);
}

/* unbound-rows removed (the refusal's way out) and the map reloaded: the
 * next write writes it again. */
KVS_TEST(unbound_rows_removed_is_written_again_by_the_next_write)
{
    fresh_dir();
    kvs_config_t *alone = config(A_ALONE B_NONE);
    node_handoff_t *h = open_at(alone);
    CHECK_EQ(node_handoff_writing(h, 0), 0);
    CHECK_EQ(unlink(rows), 0);
    node_handoff_update(h, alone);
    CHECK_ROWS("-");
    CHECK_EQ(node_handoff_writing(h, 0), 0);
    CHECK_ROWS("");
    node_handoff_free(h);
    kvs_config_free(alone);
}

/* A FIFO in unbound-rows' place: never waited for; writes are refused
 * and no copy is recorded. */
KVS_TEST(a_fifo_for_unbound_rows_holds_nothing_up)
{
    fresh_dir();
    kvs_config_t *alone = config(A_ALONE B_NONE), *both = config(A_ALONE B_TOO);
    CHECK_EQ(mkfifo(rows, 0600), 0);
    node_handoff_t *h = NULL;
    CHECK_EQ(node_handoff_open(dir, 1, alone, 1, &h), 0);
    CHECK(node_handoff_writing(h, 0) < 0);
    node_handoff_update(h, both);
    CHECK_EQ(node_handoff_copied(h, "b", node_handoff_mark(h)), 0);
    struct stat st;
    CHECK_EQ(lstat(rows, &st), 0);
    CHECK(S_ISFIFO(st.st_mode));
    node_handoff_free(h);
    kvs_config_free(alone);
    kvs_config_free(both);
}

/* A start writes unbound-rows when the shard holds rows of unbound tables
 * and it is missing (a copy installed, or a directory older than the
 * file), keeps the names it has, and removes it when there are none. */
KVS_TEST(a_start_writes_or_removes_unbound_rows_by_what_the_shard_holds)
{
    fresh_dir();
    kvs_config_t *alone = config(A_ALONE B_NONE), *both = config(A_ALONE B_TOO);
    node_handoff_t *h = NULL;
    CHECK_EQ(node_handoff_open(dir, 1, both, 2, &h), 0);
    CHECK_ROWS("");
    node_handoff_mark_t m = node_handoff_mark(h);
    CHECK_EQ(node_handoff_copied(h, "b", m), 0);
    CHECK_ROWS("b");
    node_handoff_free(h);
    CHECK_EQ(node_handoff_open(dir, 1, both, 2, &h), 0);
    CHECK_ROWS("b"); /* kept */
    node_handoff_free(h);
    CHECK_EQ(node_handoff_open(dir, 1, alone, 2, &h), 0);
    CHECK_ROWS(""); /* alone and unfenced: forgotten */
    node_handoff_free(h);
    CHECK_EQ(node_handoff_open(dir, 1, alone, 0, &h), 0);
    CHECK_ROWS("-"); /* no rows of unbound tables left */
    node_handoff_free(h);
    int fd = open(rows, O_WRONLY | O_CREAT | O_TRUNC, 0600); /* one cut short */
    CHECK(fd >= 0);
    CHECK_EQ(write(fd, "# kvs\nnode b", 12), 12);
    close(fd);
    CHECK_EQ(node_handoff_open(dir, 1, alone, 1, &h), 0);
    CHECK_ROWS(""); /* "node b" was cut short: no name */
    node_handoff_update(h, both);
    CHECK_EQ(node_handoff_copied(h, "c", node_handoff_mark(h)), 0);
    CHECK_ROWS("c"); /* on a line of its own */
    read_path(rows, text_of_rows, sizeof(text_of_rows));
    CHECK_CONTAINS(text_of_rows, "\nnode b (cut off)\nnode c\n");
    node_handoff_free(h);
    kvs_config_free(alone);
    kvs_config_free(both);
}

/* The file names each node of the map that acknowledged it installed a
 * copy taken under the fence (the master gives the shard only to one of
 * those), once; not a node whose copy was merely sent, nor one whose copy
 * is from another fence's time, nor a name that is not a node's. */
KVS_TEST(the_file_names_each_node_that_installed_a_copy)
{
    fresh_dir();
    kvs_config_t *cfg = config(A_ALONE B_NONE);
    node_handoff_t *h = open_at(cfg);
    fence(h, "127.0.0.1:5555", cfg, 1);
    node_handoff_mark_t epoch = node_handoff_mark(h);
    char text[4096];
    read_file(text, sizeof(text));
    CHECK(strstr(text, "node ") == NULL); /* sent, not yet installed */
    CHECK_EQ(node_handoff_copied(h, "d", epoch), 0);
    fence(h, "127.0.0.1:6666", cfg, 0); /* a second copy, for e */
    CHECK_EQ(node_handoff_mark(h).fence, epoch.fence);
    CHECK_EQ(node_handoff_copied(h, "e", epoch), 0);
    CHECK_EQ(node_handoff_copied(h, "d", epoch), 0); /* d again: named once */
    CHECK_EQ(node_handoff_copied(h, "x y\nnode z", epoch), 0);
    read_file(text, sizeof(text));
    CHECK_CONTAINS(text, "\nnode d\nnode e\n");
    CHECK(strstr(strstr(text, "node d") + 1, "node d") == NULL);
    CHECK(strstr(text, "node z") == NULL && strstr(text, "node x") == NULL);
    node_handoff_free(h);
    h = open_at(cfg); /* a restart keeps the names, and the fence's time goes on */
    CHECK(node_handoff_why(h) != NULL);
    node_handoff_free(h);
    kvs_config_free(cfg);
}

KVS_TEST(a_copy_from_another_fences_time_is_not_recorded)
{
    fresh_dir();
    kvs_config_t *alone = config(A_ALONE B_NONE), *both = config(A_ALONE B_TOO);
    node_handoff_t *h = open_at(alone);
    fence(h, "peer", alone, 1);
    node_handoff_mark_t first = node_handoff_mark(h);
    node_handoff_update(h, both); /* lifted: writes taken since are in no copy of then */
    CHECK(node_handoff_mark(h).fence != first.fence);
    node_handoff_update(h, alone);
    fence(h, "peer", alone, 1);
    CHECK(node_handoff_mark(h).fence != first.fence);
    CHECK_EQ(node_handoff_copied(h, "d", first), 0); /* its acknowledgement comes late */
    char text[4096];
    read_file(text, sizeof(text));
    CHECK(strstr(text, "node d") == NULL);
    node_handoff_unfence(h);
    CHECK_EQ(node_handoff_copied(h, "d", node_handoff_mark(h)), 0); /* no fence, no file */
    CHECK(access(file, F_OK) != 0);
    node_handoff_free(h);
    kvs_config_free(alone);
    kvs_config_free(both);
}

/* A line a crash cut short names nobody, and the next name goes on a line
 * of its own rather than gluing onto it. */
KVS_TEST(a_torn_line_names_nobody_and_the_next_starts_afresh)
{
    fresh_dir();
    kvs_config_t *cfg = config(A_ALONE B_NONE);
    const char *torn = "# kvs\npeer 127.0.0.1:5555\ntime 2026-12-03T15:05:35Z\nnode ab";
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    CHECK_EQ(write(fd, torn, strlen(torn)), (ssize_t)strlen(torn));
    close(fd);
    node_handoff_t *h = open_at(cfg);
    CHECK(node_handoff_why(h) != NULL && strstr(node_handoff_why(h), "5555") != NULL);
    CHECK_EQ(node_handoff_copied(h, "c", node_handoff_mark(h)), 0);
    char text[4096];
    read_file(text, sizeof(text));
    CHECK_CONTAINS(text, "\nnode ab (cut off)\nnode c\n");
    kvs_copied_t c;
    CHECK_EQ(kvs_copied_read(file, &c), 0);
    CHECK_EQ(c.n_names, 1);
    CHECK_EQ(strcmp(c.names[0], "c"), 0);
    node_handoff_free(h);
    kvs_config_free(cfg);
}

/* A copy sent whole is recorded with its checksum, so that its node's
 * acknowledgement is taken later on a connection of its own, after a
 * restart too: for that copy only (that node, that checksum, this fence),
 * and only while the fence stands. */
KVS_TEST(a_sent_copy_is_acknowledged_later_on_its_checksum)
{
    fresh_dir();
    kvs_config_t *alone = config(A_ALONE B_NONE), *both = config(A_ALONE B_TOO);
    node_handoff_t *h = open_at(alone);
    uint8_t d1[KVS_HASH_LEN], d2[KVS_HASH_LEN];
    memset(d1, 0xa5, sizeof(d1));
    memset(d2, 0x5a, sizeof(d2));
    CHECK_EQ(node_handoff_reack(h, "d", d1), -ENOENT); /* no fence: nothing was sent */
    fence(h, "peer", alone, 1);
    node_handoff_mark_t epoch = node_handoff_mark(h);
    CHECK_EQ(node_handoff_reack(h, "d", d1), -ENOENT); /* fenced, nothing sent to d */
    CHECK_EQ(node_handoff_sent(h, "d", d1, epoch), 0);
    CHECK_EQ(node_handoff_sent(h, "d", d1, epoch), 0); /* once */
    CHECK_EQ(node_handoff_sent(h, "x y", d1, epoch), 0);
    node_handoff_mark_t other_fence = {epoch.fence + 1, epoch.writes, epoch.withdrawals};
    CHECK_EQ(node_handoff_sent(h, "e", d2, other_fence), 0); /* another fence's copy */
    char text[4096];
    read_file(text, sizeof(text));
    CHECK_CONTAINS(text, "\nsent d a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5\n");
    CHECK(strstr(strstr(text, "sent d") + 1, "sent d") == NULL);
    CHECK(strstr(text, "sent e") == NULL && strstr(text, "sent x") == NULL);
    CHECK(strstr(text, "node d") == NULL);             /* sent is not installed */
    CHECK_EQ(node_handoff_reack(h, "d", d2), -ENOENT); /* another checksum */
    CHECK_EQ(node_handoff_reack(h, "e", d1), -ENOENT); /* another node */
    node_handoff_free(h);
    h = open_at(alone); /* the worker restarted: the record holds */
    CHECK_EQ(node_handoff_reack(h, "d", d1), 0);
    CHECK_EQ(node_handoff_reack(h, "d", d1), 0); /* said again: recorded once */
    CHECK_EQ(node_handoff_reack(h, "d", d2), 0); /* d is recorded: nothing more to do */
    read_file(text, sizeof(text));
    CHECK_CONTAINS(text, "\nnode d\n");
    CHECK(strstr(strstr(text, "node d") + 1, "node d") == NULL);
    node_handoff_update(h, both); /* lifted: the file goes, and with it what was sent */
    CHECK_EQ(node_handoff_reack(h, "d", d1), -ENOENT);
    node_handoff_free(h);
    kvs_config_free(alone);
    kvs_config_free(both);
}

static size_t count(const char *text, const char *what)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, what)) != NULL; p++)
        n++;
    return n;
}

/* A node that copies again and again under one fence (each install
 * failed, and the bound tables changed the checksum meanwhile) never
 * fills the file: once it holds KVS_COPIED_SENT sent lines, it is written
 * afresh with each node's latest copy, the names kept. The latest copy's
 * acknowledgement is taken; an earlier one's is not (the node has none of
 * those installed). A KVS_COPIED_SENT+1th node is still refused. */
KVS_TEST(a_node_that_copies_again_and_again_never_fills_the_file)
{
    fresh_dir();
    kvs_config_t *alone = config(A_ALONE B_NONE);
    node_handoff_t *h = open_at(alone);
    fence(h, "peer", alone, 1);
    node_handoff_mark_t epoch = node_handoff_mark(h);
    uint8_t d[KVS_HASH_LEN], first[KVS_HASH_LEN], other[KVS_HASH_LEN];
    memset(other, 0x77, sizeof(other));
    CHECK_EQ(node_handoff_sent(h, "c", other, epoch), 0);
    CHECK_EQ(node_handoff_copied(h, "c", epoch), 0);
    CHECK_EQ(node_handoff_sent(h, "e", other, epoch), 0);
    for (int i = 0; i < 3 * KVS_COPIED_SENT; i++) {
        memset(d, 0, sizeof(d));
        memcpy(d, &i, sizeof(i));
        if (i == 0)
            memcpy(first, d, sizeof(d));
        CHECK_EQ(node_handoff_sent(h, "d", d, epoch), 0);
    }
    char text[16384];
    read_file(text, sizeof(text));
    CHECK(count(text, "\nsent ") <= KVS_COPIED_SENT);
    char line[128], hex[2 * KVS_HASH_LEN + 1];
    kvs_hash_hex(d, hex);
    snprintf(line, sizeof(line), "\nsent d %s\n", hex);
    CHECK_CONTAINS(text, line);
    CHECK_EQ(count(text, "\nsent e 7777"), 1); /* the others' kept, once */
    CHECK_EQ(count(text, "\nsent c 7777"), 1);
    CHECK_EQ(count(text, "\nnode c\n"), 1);
    CHECK_CONTAINS(text, "\npeer peer\n");
    CHECK(strstr(text, "# kvs: shard 1 was copied") == text);
    struct stat st;
    char tmp[128];
    snprintf(tmp, sizeof(tmp), "%s.new", file);
    CHECK(lstat(tmp, &st) != 0); /* renamed into place */
    node_handoff_free(h);
    h = open_at(alone); /* still the fence, after a restart */
    CHECK(node_handoff_why(h) != NULL);
    CHECK_EQ(node_handoff_reack(h, "d", first), -ENOENT); /* superseded */
    CHECK_EQ(node_handoff_reack(h, "e", other), 0);
    CHECK_EQ(node_handoff_reack(h, "d", d), 0); /* the latest */
    read_file(text, sizeof(text));
    CHECK_CONTAINS(text, "\nnode d\n");
    epoch = node_handoff_mark(h);
    char name[16];
    for (int i = 3; i < KVS_COPIED_SENT; i++) { /* c, d, e and 61 more: as many as it keeps */
        snprintf(name, sizeof(name), "n%d", i);
        CHECK_EQ(node_handoff_sent(h, name, other, epoch), 0);
    }
    CHECK_EQ(node_handoff_sent(h, "late", other, epoch), KVS_EINVAL); /* one node too many */
    CHECK_EQ(node_handoff_sent(h, "d", first, epoch), 0);             /* a known node's next copy */
    CHECK_EQ(node_handoff_reack(h, "n63", other), 0);
    node_handoff_free(h);
    kvs_config_free(alone);
}

KVS_TEST_MAIN(KVS_CASE(no_file_no_fence),
              KVS_CASE(unbound_rows_names_the_copies_taken_since_the_last_write),
              KVS_CASE(unbound_rows_take_no_copy_of_a_time_writes_were_taken),
              KVS_CASE(a_start_writes_or_removes_unbound_rows_by_what_the_shard_holds),
              KVS_CASE(the_masters_drop_and_the_workers_records_take_turns),
              KVS_CASE(unbound_rows_removed_is_written_again_by_the_next_write),
              KVS_CASE(a_fifo_for_unbound_rows_holds_nothing_up),
              KVS_CASE(the_map_the_master_takes_holds_the_worker_back),
              KVS_CASE(unbound_rows_forget_copies_when_writes_may_be_taken_again),
              KVS_CASE(the_file_names_each_node_that_installed_a_copy),
              KVS_CASE(a_sent_copy_is_acknowledged_later_on_its_checksum),
              KVS_CASE(a_node_that_copies_again_and_again_never_fills_the_file),
              KVS_CASE(a_copy_from_another_fences_time_is_not_recorded),
              KVS_CASE(a_torn_line_names_nobody_and_the_next_starts_afresh),
              KVS_CASE(a_snapshot_fences_and_a_restart_keeps_it),
              KVS_CASE(a_snapshot_not_delivered_lowers_it),
              KVS_CASE(several_replicas_need_no_fence), KVS_CASE(a_map_without_this_node_keeps_it),
              KVS_CASE(a_map_with_several_replicas_lifts_it),
              KVS_CASE(a_map_with_a_node_that_copied_keeps_it),
              KVS_CASE(a_damaged_file_keeps_the_fence_until_removed),
              KVS_CASE(a_file_that_cannot_be_written_refuses_the_snapshot))

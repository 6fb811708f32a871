/*
 * Unit tests for kvs_copied: the copied-out file's format, read whole,
 * names counted once, a line cut short by a crash ignored.
 */
#include "kvs_copied.h"
#include "kvs_err.h"
#include "kvs_test.h"

#include <fcntl.h>
#include <sys/stat.h>

#define HEAD "# kvs: shard 2 was copied\npeer 127.0.0.1:5555\ntime 2026-12-03T15:05:35Z\n"

static kvs_copied_t c;

static int parse(const char *text)
{
    return kvs_copied_parse(text, strlen(text), &c);
}

KVS_TEST(a_file_without_names)
{
    CHECK_EQ(parse(HEAD), 0);
    CHECK_EQ(strcmp(c.peer, "127.0.0.1:5555"), 0);
    CHECK_EQ(strcmp(c.time, "2026-12-03T15:05:35Z"), 0);
    CHECK_EQ(c.n_names, 0);
    CHECK(c.whole);
    CHECK(!kvs_copied_names(&c, "a"));
}

KVS_TEST(names_count_once_and_odd_lines_are_skipped)
{
    CHECK_EQ(
        parse(HEAD "node a\nnode b\nnode a\nnode x y\nnode \nnodea\npeer 10.0.0.1:1\nnode c\n"), 0);
    CHECK_EQ(c.n_names, 3);
    CHECK(kvs_copied_names(&c, "a") && kvs_copied_names(&c, "b") && kvs_copied_names(&c, "c"));
    CHECK(!kvs_copied_names(&c, "x y") && !kvs_copied_names(&c, "x"));
    CHECK_EQ(strcmp(c.peer, "127.0.0.1:5555"), 0); /* the first one */
}

KVS_TEST(a_line_cut_short_is_no_name)
{
    CHECK_EQ(parse(HEAD "node a\nnode bc"), 0);
    CHECK_EQ(c.n_names, 1);
    CHECK(!kvs_copied_names(&c, "bc") && !kvs_copied_names(&c, "b"));
    CHECK(!c.whole);
    CHECK_EQ(parse(HEAD "node ab (cut off)\nnode c\n"), 0); /* as node_handoff ends it */
    CHECK_EQ(c.n_names, 1);
    CHECK(kvs_copied_names(&c, "c"));
}

KVS_TEST(what_kvs_did_not_write_is_refused)
{
    CHECK_EQ(parse("node a\n"), KVS_EINVAL); /* no peer, no time */
    CHECK_EQ(parse("peer x\nnode a\n"), KVS_EINVAL);
    CHECK_EQ(kvs_copied_parse(HEAD "node a\0\n", sizeof(HEAD "node a\0\n") - 1, &c), KVS_EINVAL);
    char text[8192];
    size_t n = (size_t)snprintf(text, sizeof(text), HEAD);
    for (int i = 0; i <= KVS_COPIED_NAMES; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "node n%d\n", i);
    CHECK_EQ(kvs_copied_parse(text, n, &c), KVS_EINVAL); /* more than it records */
}

#define HEX_A "000102030405060708090a0b0c0d0e0f"

/* "sent NAME HEX" lines: each node's latest counts, odd ones are
 * skipped (but counted as lines), and nodes past KVS_COPIED_SENT are not
 * kept (the file stays readable: they are not what keeps the fence). */
KVS_TEST(sent_copies_are_read_with_their_checksums)
{
    uint8_t a[KVS_HASH_LEN], b[KVS_HASH_LEN];
    for (int i = 0; i < KVS_HASH_LEN; i++)
        a[i] = (uint8_t)i, b[i] = (uint8_t)(0xf0 + i);
    CHECK_EQ(parse(HEAD "sent d " HEX_A "\nsent d " HEX_A "\nsent e " HEX_A
                        "\nsent x\nsent f 0001\nsent g " HEX_A
                        "ff\nsent h 000102030405060708090A0B0C0D0E0F"
                        "\nsent i 0g0102030405060708090a0b0c0d0e0f\nsent " HEX_A "\nsent d " HEX_A),
             0);
    CHECK_EQ(c.n_sent, 2);
    CHECK(kvs_copied_was_sent(&c, "d", a) && kvs_copied_was_sent(&c, "e", a));
    CHECK(!kvs_copied_was_sent(&c, "d", b) && !kvs_copied_was_sent(&c, "h", a));
    CHECK_EQ(c.n_names, 0);    /* sent is no name */
    CHECK_EQ(c.sent_lines, 9); /* the last has no newline yet */
    CHECK_EQ(
        parse(HEAD "sent d " HEX_A "\nsent e " HEX_A "\nsent d f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff\n"),
        0);
    CHECK_EQ(c.n_sent, 2);
    CHECK(kvs_copied_was_sent(&c, "d", b) && !kvs_copied_was_sent(&c, "d", a)); /* the later */
    CHECK(kvs_copied_was_sent(&c, "e", a) && kvs_copied_sent_any(&c, "d"));
    CHECK(!kvs_copied_sent_any(&c, "f"));
    char text[16384];
    size_t n = (size_t)snprintf(text, sizeof(text), HEAD);
    for (int i = 0; i <= KVS_COPIED_SENT; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "sent n%d " HEX_A "\n", i);
    n += (size_t)snprintf(text + n, sizeof(text) - n, "node a\n");
    CHECK_EQ(kvs_copied_parse(text, n, &c), 0);
    CHECK_EQ(c.n_sent, KVS_COPIED_SENT);
    CHECK(kvs_copied_names(&c, "a"));
}

/* The file is read whole: a name past its first 4 KiB counts, and a file
 * larger than KVS_COPIED_MAX is not one kvs wrote. */
KVS_TEST(the_file_is_read_whole)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/kvs-test-copied-%d", (int)getpid());
    unlink(path);
    CHECK_EQ(kvs_copied_read(path, &c), -ENOENT);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fputs(HEAD, f);
    for (int i = 0; i < 1000; i++) /* one node that copied a thousand times */
        fputs("node a\n", f);
    fputs("node late\n", f);
    fclose(f);
    CHECK_EQ(kvs_copied_read(path, &c), 0);
    CHECK_EQ(c.n_names, 2);
    CHECK(kvs_copied_names(&c, "late"));
    f = fopen(path, "a");
    CHECK(f != NULL);
    for (size_t i = 0; i < KVS_COPIED_MAX / 7; i++)
        fputs("node a\n", f);
    fclose(f);
    CHECK_EQ(kvs_copied_read(path, &c), KVS_EINVAL);
    unlink(path);
    CHECK_EQ(mkfifo(path, 0600), 0); /* never blocks on a FIFO */
    CHECK_EQ(kvs_copied_read(path, &c), KVS_EINVAL);
    unlink(path);
}

/* unbound-rows has no peer or time line: kvs_copied_read_names takes it,
 * kvs_copied_read does not; a NUL byte or too many names are still
 * refused, and a symlink is not followed. */
KVS_TEST(an_unbound_rows_file_needs_no_head)
{
    char path[64], link[80];
    snprintf(path, sizeof(path), "/tmp/kvs-test-copied-rows-%d", (int)getpid());
    snprintf(link, sizeof(link), "%s.link", path);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fputs("# kvs: shard 1 may hold rows\nnode b\nnode c\nnode d", f); /* d cut short */
    fclose(f);
    CHECK_EQ(kvs_copied_read(path, &c), KVS_EINVAL);
    CHECK_EQ(kvs_copied_read_names(path, &c), 0);
    CHECK_EQ(c.n_names, 2);
    CHECK(kvs_copied_names(&c, "b") && kvs_copied_names(&c, "c") && !kvs_copied_names(&c, "d"));
    CHECK_EQ(symlink(path, link), 0);
    CHECK(kvs_copied_read_names(link, &c) < 0);
    unlink(link);
    f = fopen(path, "w");
    CHECK(f != NULL);
    fputs("node b\n", f);
    fputc('\0', f);
    fclose(f);
    CHECK_EQ(kvs_copied_read_names(path, &c), KVS_EINVAL);
    f = fopen(path, "w");
    CHECK(f != NULL);
    for (int i = 0; i <= KVS_COPIED_NAMES; i++)
        fprintf(f, "node n%d\n", i);
    fclose(f);
    CHECK_EQ(kvs_copied_read_names(path, &c), KVS_EINVAL);
    unlink(path);
    CHECK_EQ(kvs_copied_read_names(path, &c), -ENOENT);
}

static void put(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fputs(text, f);
    fclose(f);
}

static void get(const char *path, char *text, size_t cap)
{
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    size_t n = fread(text, 1, cap - 1, f);
    fclose(f);
    text[n] = '\0';
}

/* kvs_copied_drop: the lines naming the nodes dropped (node and sent),
 * every other line kept as it was, a line cut short dropped; with `all`
 * every name; a file that is not a regular one refuses (the caller must
 * not take the names as dropped). The holders file names the nodes given.
 * The lock is held by one descriptor at a time, and waited for. */
KVS_TEST(names_are_dropped_under_the_lock)
{
    char dir[64], out[96], rows[96], holders[96], text[2048];
    snprintf(dir, sizeof(dir), "/tmp/kvs-test-drop-%d", (int)getpid());
    snprintf(out, sizeof(out), "%s/copied-out", dir);
    snprintf(rows, sizeof(rows), "%s/unbound-rows", dir);
    snprintf(holders, sizeof(holders), "%s/holders", dir);
    mkdir(dir, 0700);
    put(out, HEAD "node a\nnode b\nsent b 00112233445566778899aabbccddeeff\nsent bb "
                  "00112233445566778899aabbccddeeff\nnode c");
    put(rows, "# kvs: rows\ntime T\nnode b\nnode a\n");
    const char *gone[] = {"b", "x"};
    size_t dropped = 0;
    CHECK_EQ(kvs_copied_drop(dir, gone, 2, 0, &dropped), 0);
    CHECK_EQ(dropped, 4); /* node b, sent b, node c cut short; node b in rows */
    get(out, text, sizeof(text));
    CHECK_EQ(strcmp(text, HEAD "node a\nsent bb 00112233445566778899aabbccddeeff\n"), 0);
    CHECK_EQ(kvs_copied_read(out, &c), 0);
    CHECK(kvs_copied_names(&c, "a") && !kvs_copied_names(&c, "b"));
    get(rows, text, sizeof(text));
    CHECK_EQ(strcmp(text, "# kvs: rows\ntime T\nnode a\n"), 0);
    dropped = 0;
    CHECK_EQ(kvs_copied_drop(dir, gone, 2, 0, &dropped), 0); /* nothing left to drop */
    CHECK_EQ(dropped, 0);
    CHECK_EQ(kvs_copied_drop(dir, NULL, 0, 1, &dropped), 0);
    get(rows, text, sizeof(text));
    CHECK_EQ(strcmp(text, "# kvs: rows\ntime T\n"), 0);
    get(out, text, sizeof(text));
    CHECK_EQ(strcmp(text, HEAD), 0);
    unlink(rows);
    CHECK_EQ(mkfifo(rows, 0600), 0);
    CHECK_EQ(kvs_copied_drop(dir, gone, 2, 0, NULL), KVS_EINVAL);
    unlink(rows);
    CHECK_EQ(symlink(out, rows), 0);
    CHECK(kvs_copied_drop(dir, gone, 2, 0, NULL) < 0);
    unlink(rows);
    CHECK_EQ(kvs_copied_drop(dir, gone, 2, 0, NULL), 0); /* no file: nothing to drop */
    const char *names[] = {"a", "b"};
    const char *away[] = {"x"};
    CHECK_EQ(kvs_copied_write_holders(dir, names, 2, 7, away, 1), 0);
    CHECK_EQ(kvs_copied_read_names(holders, &c), 0);
    CHECK_EQ(c.n_names, 2);
    CHECK_EQ(c.withdrawals, 7);
    CHECK(kvs_copied_gone(&c, "x") && !kvs_copied_gone(&c, "a") && !kvs_copied_names(&c, "x"));
    int fd = kvs_copied_lock(dir, 0);
    CHECK(fd >= 0);
    CHECK_EQ(kvs_copied_lock(dir, 20), -ETIMEDOUT);
    kvs_copied_unlock(fd);
    fd = kvs_copied_lock(dir, 0);
    CHECK(fd >= 0);
    kvs_copied_unlock(fd);
    char lockfile[96];
    snprintf(lockfile, sizeof(lockfile), "%s/handoff.lock", dir);
    unlink(lockfile);
    CHECK_EQ(mkfifo(lockfile, 0600), 0);
    CHECK_EQ(kvs_copied_lock(dir, 0), -EINVAL);
    unlink(lockfile);
    unlink(out);
    unlink(holders);
    rmdir(dir);
}

KVS_TEST_MAIN(KVS_CASE(sent_copies_are_read_with_their_checksums), KVS_CASE(a_file_without_names),
              KVS_CASE(names_are_dropped_under_the_lock),
              KVS_CASE(an_unbound_rows_file_needs_no_head),
              KVS_CASE(names_count_once_and_odd_lines_are_skipped),
              KVS_CASE(a_line_cut_short_is_no_name), KVS_CASE(what_kvs_did_not_write_is_refused),
              KVS_CASE(the_file_is_read_whole))

/*
 * Unit tests for kvs_shardstate: the worker's state page, written by one
 * worker and read by routers (here both in one process: the page is plain
 * shared memory, its lock an flock per open file).
 */
#include "kvs_err.h"
#include "kvs_shardstate.h"
#include "kvs_test.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static char path[256];

static void remove_page(void)
{
    unlink(path);
}

static void fresh_path(void)
{
    snprintf(path, sizeof(path), "/tmp/kvs-test-state-%d.state", (int)getpid());
    unlink(path);
    atexit(remove_page);
}

/* Two shards; topic a has 8 partitions (shard 1 owns 1 3 5 7), topic b 3
 * (shard 1 owns 1). */
static kvs_config_t *config(const char *extra)
{
    char text[1024], err[256];
    kvs_config_t *cfg = NULL;
    snprintf(text, sizeof(text),
             "cluster: {shards: 2, partitions: 4}\n"
             "kafka:\n  bindings:\n"
             "    - {topic: a, table: ta, partitions: 8}\n"
             "    - {topic: b, table: tb, partitions: 3}\n%s",
             extra);
    int rc = kvs_config_parse("test", text, strlen(text), &cfg, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "%s\n", err);
    CHECK_EQ(rc, 0);
    return cfg;
}

static kvs_shardstate_t *writer(const kvs_config_t *cfg, kvs_lmdb_ident_t *last, int *had)
{
    kvs_shardstate_t *w = NULL;
    CHECK_EQ(kvs_shardstate_open_writer(path, cfg, 1, &w, last, had), 0);
    return w;
}

KVS_TEST(published_state_is_read_back)
{
    kvs_lmdb_ident_t last, id = {1, 2, 3, 4};
    int had = -1;
    kvs_shardstate_head_t h;
    int64_t end, start;
    fresh_path();
    kvs_config_t *cfg = config("");
    kvs_shardstate_t *w = writer(cfg, &last, &had), *r = NULL;
    CHECK_EQ(had, 0);
    CHECK_EQ(kvs_shardstate_open_reader(path, cfg, 1, &r), 0);
    CHECK_EQ(kvs_shardstate_head(r, &h), 0);
    CHECK_EQ(h.live, 0);
    /* a fault's address: in this page's map or not (the router's guard) */
    CHECK(kvs_shardstate_maps(r, &h) == 0);
    CHECK(kvs_shardstate_maps(w, &h) == 0);
    const char *p = NULL;
    CHECK_EQ(kvs_shardstate_maps(r, p), 0);
    kvs_shardstate_publish(w, &id);
    kvs_shardstate_set_settle(w, 12345);
    kvs_shardstate_heartbeat(w, 999);
    kvs_shardstate_set_part(w, 0, 5, 100, 7);
    kvs_shardstate_set_part(w, 1, 1, 50, 0);
    kvs_shardstate_set_part(w, 0, 4, 66, 66); /* not shard 1's: ignored */
    CHECK_EQ(kvs_shardstate_head(r, &h), 0);
    CHECK_EQ(h.live, 1);
    CHECK(memcmp(&h.ident, &id, sizeof(id)) == 0);
    CHECK_EQ(h.settle_until_ms, 12345);
    CHECK_EQ(h.heartbeat_ms, 999);
    CHECK_EQ(h.tight, 0);
    kvs_shardstate_set_tight(w, 1); /* the disk is full: reads go to the worker */
    CHECK_EQ(kvs_shardstate_head(r, &h), 0);
    CHECK_EQ(h.tight, 1);
    kvs_shardstate_set_tight(w, 0);
    CHECK_EQ(kvs_shardstate_head(r, &h), 0);
    CHECK_EQ(h.tight, 0);
    kvs_shardstate_part(r, 0, 5, &end, &start);
    CHECK_EQ(end, 100);
    CHECK_EQ(start, 7);
    kvs_shardstate_part(r, 1, 1, &end, &start);
    CHECK_EQ(end, 50);
    kvs_shardstate_part(r, 0, 3, &end, &start); /* owned, not heard of */
    CHECK_EQ(end, -1);
    CHECK_EQ(start, -1);
    kvs_shardstate_part(r, 0, 4, &end, &start);
    CHECK_EQ(end, -1);
    kvs_shardstate_part(r, 2, 1, &end, &start); /* no such binding */
    CHECK_EQ(end, -1);
    CHECK_EQ(kvs_shardstate_diverged(r, 0, 5), 0);
    kvs_shardstate_set_diverged(w, 0, 5, 1);
    kvs_shardstate_set_diverged(w, 0, 4, 1); /* not shard 1's: ignored */
    CHECK_EQ(kvs_shardstate_diverged(r, 0, 5), 1);
    CHECK_EQ(kvs_shardstate_diverged(r, 1, 1), 0);
    CHECK_EQ(kvs_shardstate_diverged(r, 0, 4), 0);
    CHECK_EQ(kvs_shardstate_diverged(r, 2, 1), 0);
    /* binding 0's topic grew to 20: every partition of it shard 1 owns */
    CHECK_EQ(kvs_shardstate_resized(r, 0, 5), 0);
    kvs_shardstate_set_resized(w, 0, 20);
    kvs_shardstate_set_resized(w, 7, 20); /* no such binding: ignored */
    CHECK_EQ(kvs_shardstate_resized(r, 0, 1), 20);
    CHECK_EQ(kvs_shardstate_resized(r, 0, 5), 20);
    CHECK_EQ(kvs_shardstate_resized(r, 0, 4), 0); /* not shard 1's */
    CHECK_EQ(kvs_shardstate_resized(r, 1, 1), 0); /* another topic */
    kvs_shardstate_set_resized(w, 0, 0);
    CHECK_EQ(kvs_shardstate_resized(r, 0, 5), 0);
    kvs_shardstate_set_resized(w, 0, 20);
    kvs_shardstate_close(w); /* a worker that stops is not live */
    CHECK_EQ(kvs_shardstate_head(r, &h), 0);
    CHECK_EQ(h.live, 0);
    kvs_shardstate_close(r);
    kvs_config_free(cfg);
}

KVS_TEST(one_writer_at_a_time)
{
    kvs_lmdb_ident_t last, id = {1, 2, 3, 4};
    int had;
    kvs_shardstate_head_t h;
    fresh_path();
    kvs_config_t *cfg = config("");
    kvs_shardstate_t *w = writer(cfg, &last, &had), *w2 = NULL, *r = NULL;
    kvs_shardstate_publish(w, &id);
    CHECK_EQ(kvs_shardstate_open_writer(path, cfg, 1, &w2, &last, &had), -EBUSY);
    CHECK(w2 == NULL);
    CHECK_EQ(kvs_shardstate_open_reader(path, cfg, 1, &r), 0);
    CHECK_EQ(kvs_shardstate_head(r, &h), 0);
    CHECK_EQ(h.live, 1); /* the refused one changed nothing */
    kvs_shardstate_close(r);
    kvs_shardstate_close(w);
    kvs_config_free(cfg);
}

KVS_TEST(next_worker_learns_the_last_files)
{
    kvs_lmdb_ident_t last, id = {10, 20, 30, 40};
    int had;
    kvs_shardstate_head_t h;
    int64_t end, start;
    fresh_path();
    kvs_config_t *cfg = config("");
    kvs_shardstate_t *w = writer(cfg, &last, &had), *r = NULL;
    kvs_shardstate_publish(w, &id);
    kvs_shardstate_set_part(w, 0, 1, 5, 5);
    kvs_shardstate_set_diverged(w, 0, 1, 1);
    kvs_shardstate_set_resized(w, 0, 9);
    kvs_shardstate_set_tight(w, 1);
    kvs_shardstate_close(w);
    w = writer(cfg, &last, &had);
    CHECK_EQ(had, 1);
    CHECK(memcmp(&last, &id, sizeof(id)) == 0);
    CHECK_EQ(kvs_shardstate_open_reader(path, cfg, 1, &r), 0);
    CHECK_EQ(kvs_shardstate_head(r, &h), 0);
    CHECK_EQ(h.live, 0); /* starting: not live until it publishes */
    kvs_shardstate_part(r, 0, 1, &end, &start);
    CHECK_EQ(end, -1);                             /* and nothing known of Kafka yet */
    CHECK_EQ(kvs_shardstate_diverged(r, 0, 1), 0); /* the new worker finds out again */
    CHECK_EQ(kvs_shardstate_resized(r, 0, 1), 0);
    CHECK_EQ(h.tight, 0); /* its store says so again if its disk is full */
    kvs_shardstate_close(r);
    kvs_shardstate_close(w);
    kvs_config_free(cfg);
}

KVS_TEST(another_layout_is_not_read_and_the_file_never_shrinks)
{
    kvs_lmdb_ident_t last;
    int had;
    struct stat st;
    fresh_path();
    kvs_config_t *big = config("    - {topic: c, table: tc, partitions: 20000}\n");
    kvs_config_t *small = config("");
    kvs_shardstate_t *w = writer(big, &last, &had), *r = NULL;
    CHECK_EQ(stat(path, &st), 0);
    off_t size = st.st_size;
    CHECK(size > 20000 / 2 * 16);
    CHECK_EQ(kvs_shardstate_open_reader(path, small, 1, &r), KVS_EMISMATCH);
    CHECK(r == NULL);
    kvs_shardstate_close(w);
    w = writer(small, &last, &had);
    CHECK_EQ(stat(path, &st), 0);
    CHECK_EQ(st.st_size, size);
    CHECK_EQ(kvs_shardstate_open_reader(path, small, 1, &r), 0);
    kvs_shardstate_close(r);
    CHECK_EQ(kvs_shardstate_open_reader(path, small, 0, &r), KVS_EMISMATCH); /* other shard */
    kvs_shardstate_close(w);
    CHECK_EQ(kvs_shardstate_open_reader("/nonexistent/x.state", small, 1, &r), -ENOENT);
    kvs_config_free(big);
    kvs_config_free(small);
}

/* A page another version of kvs left (version 1: smaller slots) is
 * replaced by a new file, not rewritten in place: a router of that version
 * with the page mapped would read this version's slots as its own (end
 * and start from the wrong partitions); a new file it notices, reopens and
 * refuses by its version. The files the old page named are still learnt. */
KVS_TEST(another_version_is_replaced_not_rewritten)
{
    kvs_lmdb_ident_t last, id = {10, 20, 30, 40};
    int had;
    struct stat before, after;
    fresh_path();
    kvs_config_t *cfg = config("");
    kvs_shardstate_t *w = writer(cfg, &last, &had), *r = NULL;
    kvs_shardstate_publish(w, &id);
    kvs_shardstate_close(w);
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    uint32_t v1 = 1;
    CHECK_EQ(pwrite(fd, &v1, sizeof(v1), 8), (ssize_t)sizeof(v1));       /* the version field */
    const uint8_t *old = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0); /* that router's map */
    CHECK(old != MAP_FAILED);
    CHECK_EQ(fstat(fd, &before), 0);
    uint8_t copy[4096];
    memcpy(copy, old, sizeof(copy));
    w = writer(cfg, &last, &had);
    CHECK_EQ(had, 1);
    CHECK(memcmp(&last, &id, sizeof(id)) == 0);
    kvs_shardstate_set_part(w, 0, 1, 77, 77);
    CHECK(memcmp(copy, old, sizeof(copy)) == 0); /* not written under that router */
    CHECK_EQ(stat(path, &after), 0);
    CHECK(after.st_ino != before.st_ino);
    CHECK_EQ(kvs_shardstate_open_reader(path, cfg, 1, &r), 0);
    kvs_shardstate_close(r);
    kvs_shardstate_close(w);
    munmap((void *)old, 4096);
    close(fd);
    kvs_config_free(cfg);
}

KVS_TEST_MAIN(KVS_CASE(published_state_is_read_back), KVS_CASE(one_writer_at_a_time),
              KVS_CASE(next_worker_learns_the_last_files),
              KVS_CASE(another_layout_is_not_read_and_the_file_never_shrinks),
              KVS_CASE(another_version_is_replaced_not_rewritten))

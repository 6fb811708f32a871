/*
 * test_dbimap: names map to their handles through collisions and a full
 * map; pending entries survive a commit and are forgotten after a failed
 * transaction without cutting the probe runs of the entries that stay.
 */
#include "kvs_dbimap.h"
#include "kvs_test.h"

#include <errno.h>
#include <stdio.h>

static unsigned dbi_of(const kvs_dbimap_t *m, const char *name)
{
    const kvs_dbimap_entry_t *e = kvs_dbimap_find(m, name);
    return e != NULL ? e->dbi : 0;
}

KVS_TEST(names_find_their_handles_up_to_the_limit)
{
    kvs_dbimap_t m;
    char name[32];
    CHECK_EQ(kvs_dbimap_init(&m, 100), 0);
    CHECK(m.cap >= 202 && (m.cap & (m.cap - 1)) == 0);
    CHECK(kvs_dbimap_find(&m, "users") == NULL);
    for (unsigned i = 0; i < 100; i++) {
        snprintf(name, sizeof(name), "t%u", i);
        CHECK_EQ(kvs_dbimap_add(&m, name, i + 2, 0), 0);
    }
    CHECK_EQ(kvs_dbimap_add(&m, "one-too-many", 500, 0), -ENOSPC);
    CHECK(kvs_dbimap_find(&m, "one-too-many") == NULL);
    for (unsigned i = 0; i < 100; i++) {
        snprintf(name, sizeof(name), "t%u", i);
        CHECK_EQ(dbi_of(&m, name), i + 2);
    }
    CHECK_EQ(m.n, 100);
    kvs_dbimap_free(&m);
}

KVS_TEST(pending_entries_stay_on_commit_and_go_on_failure)
{
    kvs_dbimap_t m;
    char name[32];
    CHECK_EQ(kvs_dbimap_init(&m, 40), 0);
    /* Interleaved, so pending and kept entries share probe runs. */
    for (unsigned i = 0; i < 40; i++) {
        snprintf(name, sizeof(name), "t%u", i);
        CHECK_EQ(kvs_dbimap_add(&m, name, i + 1, i % 2), 0);
    }
    CHECK_EQ(m.n_pending, 20);
    kvs_dbimap_settle(&m, 1); /* the txn failed */
    CHECK_EQ(m.n, 20);
    CHECK_EQ(m.n_pending, 0);
    for (unsigned i = 0; i < 40; i++) {
        snprintf(name, sizeof(name), "t%u", i);
        CHECK_EQ(dbi_of(&m, name), i % 2 ? 0 : i + 1);
    }
    /* Opened again in a txn that commits: kept, no longer pending. */
    CHECK_EQ(kvs_dbimap_add(&m, "t1", 77, 1), 0);
    CHECK(kvs_dbimap_find(&m, "t1")->pending);
    kvs_dbimap_settle(&m, 0);
    CHECK(!kvs_dbimap_find(&m, "t1")->pending);
    kvs_dbimap_settle(&m, 1); /* nothing pending: nothing goes */
    CHECK_EQ(dbi_of(&m, "t1"), 77);
    CHECK_EQ(m.n, 21);
    kvs_dbimap_free(&m);
}

/* A full map (half its slots used) with most entries pending, forgotten
 * in every pattern of every probe run: what stays is still found. */
KVS_TEST(forgetting_keeps_every_probe_run_whole)
{
    char name[32];
    for (unsigned pattern = 1; pattern < 8; pattern++) {
        kvs_dbimap_t m;
        CHECK_EQ(kvs_dbimap_init(&m, 300), 0);
        for (unsigned i = 0; i < 300; i++) {
            snprintf(name, sizeof(name), "table-%u", i * 7919u);
            CHECK_EQ(kvs_dbimap_add(&m, name, i + 1, (i % 8 & pattern) != 0), 0);
        }
        kvs_dbimap_settle(&m, 1);
        unsigned kept = 0;
        for (unsigned i = 0; i < 300; i++) {
            snprintf(name, sizeof(name), "table-%u", i * 7919u);
            int stays = (i % 8 & pattern) == 0;
            kept += stays;
            CHECK_EQ(dbi_of(&m, name), stays ? i + 1 : 0);
        }
        CHECK_EQ(m.n, kept);
        kvs_dbimap_free(&m);
    }
}

KVS_TEST_MAIN(KVS_CASE(names_find_their_handles_up_to_the_limit),
              KVS_CASE(forgetting_keeps_every_probe_run_whole),
              KVS_CASE(pending_entries_stay_on_commit_and_go_on_failure))

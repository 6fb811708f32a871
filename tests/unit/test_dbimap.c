/*
 * test_dbimap: names map to their handles through collisions and a full
 * map; pending entries survive a commit and are forgotten after a failed
 * transaction without cutting the probe runs of the entries that stay;
 * names chosen to collide under a fixed hash do not share a probe run.
 */
#include "kvs_dbimap.h"
#include "kvs_test.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    CHECK_EQ(kvs_dbimap_add(&m, "t7", 600, 1), -EEXIST); /* kept as it was */
    CHECK_EQ(dbi_of(&m, "t7"), 9);
    CHECK_EQ(m.n_pending, 0);
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

/* Entries taken by their mark (the worker's dropped tables), pending or
 * not, in every pattern over many maps (each with its own key, so some
 * probe runs wrap past the array's end): each marked name is handed over
 * once, and every other is still found under its handle. */
KVS_TEST(taking_marked_entries_hands_each_name_over_once)
{
    char name[32];
    kvs_dbimap_entry_t taken[300];
    for (unsigned trial = 0; trial < 64; trial++) {
        unsigned pattern = 1 + trial % 7;
        kvs_dbimap_t m;
        CHECK_EQ(kvs_dbimap_init(&m, 300), 0);
        unsigned marked = 0;
        for (unsigned i = 0; i < 300; i++) {
            snprintf(name, sizeof(name), "t-%u-%u", trial, i);
            CHECK_EQ(kvs_dbimap_add(&m, name, i + 1, i % 3 == 0), 0);
            if ((i % 8 & pattern) != 0) {
                kvs_dbimap_lookup(&m, name)->mark = i % 2 ? 2u : 6u;
                marked++;
            }
        }
        CHECK_EQ(kvs_dbimap_take(&m, 2u, taken), marked);
        CHECK_EQ(m.n, 300 - marked);
        unsigned pending = 0;
        for (unsigned i = 0; i < 300; i++) {
            snprintf(name, sizeof(name), "t-%u-%u", trial, i);
            int stays = (i % 8 & pattern) == 0;
            pending += stays && i % 3 == 0;
            CHECK_EQ(dbi_of(&m, name), stays ? i + 1 : 0);
        }
        CHECK_EQ(m.n_pending, pending);
        for (unsigned k = 0; k < marked; k++) {
            unsigned trial_of, i;
            CHECK_EQ(sscanf(taken[k].name, "t-%u-%u", &trial_of, &i), 2);
            CHECK_EQ(trial_of, trial);
            CHECK((i % 8 & pattern) != 0);
            CHECK_EQ(taken[k].dbi, i + 1);
            CHECK_EQ(taken[k].pending, i % 3 == 0);
            for (unsigned j = 0; j < k; j++)
                CHECK(strcmp(taken[j].name, taken[k].name) != 0);
        }
        for (unsigned k = 0; k < marked; k++)
            free(taken[k].name);
        CHECK_EQ(kvs_dbimap_take(&m, 2u, taken), 0); /* nothing marked is left */
        kvs_dbimap_settle(&m, 1);
        CHECK_EQ(m.n, 300 - marked - pending);
        kvs_dbimap_free(&m);
    }
}

/* 32-bit FNV-1a: an unkeyed hash anyone can search for collisions. */
static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* The longest run of occupied slots (wrapping around): what a lookup that
 * lands at its start compares its name against. */
static uint32_t longest_run(const kvs_dbimap_t *m)
{
    uint32_t best = 0, run = 0;
    for (uint32_t i = 0; i < 2 * m->cap; i++) {
        run = m->slots[i & (m->cap - 1)].name != NULL ? run + 1 : 0;
        best = run > best ? run : best;
    }
    return best > m->cap ? m->cap : best;
}

/* 250 names a client could pick because an unkeyed hash (FNV-1a, which the
 * map once used) sends them all to one slot: with that hash they formed one
 * probe run of 250, and every lookup of them, or of any name hashing near
 * them, compared up to 250 long names. Keyed, they spread like any names. */
KVS_TEST(names_chosen_to_collide_do_not_pile_up)
{
    kvs_dbimap_t m;
    char name[64];
    CHECK_EQ(kvs_dbimap_init(&m, 256), 0);
    uint32_t mask = m.cap - 1, added = 0;
    for (uint32_t i = 0; added < 250; i++) {
        snprintf(name, sizeof(name), "pppppppppppppppppppppppppppppp%09u", i);
        if ((fnv1a(name) & mask) != 5)
            continue;
        CHECK_EQ(kvs_dbimap_add(&m, name, added + 2, 0), 0);
        added++;
    }
    CHECK_EQ(m.n, 250);
    CHECK(longest_run(&m) < 40);
    kvs_dbimap_free(&m);
}

KVS_TEST_MAIN(KVS_CASE(names_find_their_handles_up_to_the_limit),
              KVS_CASE(forgetting_keeps_every_probe_run_whole),
              KVS_CASE(taking_marked_entries_hands_each_name_over_once),
              KVS_CASE(names_chosen_to_collide_do_not_pile_up),
              KVS_CASE(pending_entries_stay_on_commit_and_go_on_failure))

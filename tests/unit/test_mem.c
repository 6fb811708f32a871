/*
 * Unit tests for kvs_mem: freed memory held below blocks still in use
 * goes back to the system (resident memory falls), not more than once a
 * second, and not while little is free.
 */
#include "kvs_mem.h"
#include "kvs_test.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { BLOCKS = 800, BLOCK = 100 * 1024 };

static void *big[BLOCKS], *small[BLOCKS];

/* As a crowd of clients leaves it: BLOCKS buffers of 100 KB (below the
 * mmap threshold the router sets, so on the heap), each followed by a
 * small block that stays; then the buffers are freed. */
static void fragment(void)
{
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    for (int i = 0; i < BLOCKS; i++) {
        big[i] = malloc(BLOCK);
        CHECK(big[i] != NULL);
        memset(big[i], 0x5a, BLOCK); /* resident */
        small[i] = malloc(64);
        CHECK(small[i] != NULL);
    }
    for (int i = 0; i < BLOCKS; i++)
        free(big[i]);
}

#if defined(__SANITIZE_ADDRESS__)
/* The sanitizer's allocator is not glibc's: nothing to give back, and
 * nothing breaks. */
KVS_TEST(gives_back_free_memory_below_blocks_in_use)
{
    fragment();
    CHECK_EQ(kvs_mem_give_back(5000), 0);
}

KVS_TEST(at_most_once_a_second)
{
    CHECK_EQ(kvs_mem_give_back(5000), 0);
}

KVS_TEST(not_while_little_is_free)
{
    CHECK_EQ(kvs_mem_give_back(5000), 0);
}

KVS_TEST(trim_now_whenever_the_last_one_ran)
{
    fragment();
    CHECK_EQ(kvs_mem_trim(), 0);
}
#else
/* The process's resident anonymous memory, in KiB (/proc/self/status). */
static long rss_anon_kib(void)
{
    char line[256];
    long kib = -1;
    FILE *f = fopen("/proc/self/status", "r");
    CHECK(f != NULL);
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "RssAnon: %ld kB", &kib) == 1)
            break;
    fclose(f);
    CHECK(kib >= 0);
    return kib;
}

KVS_TEST(gives_back_free_memory_below_blocks_in_use)
{
    fragment();
    long before = rss_anon_kib();
    size_t found = kvs_mem_give_back(5000);
    long after = rss_anon_kib();
    CHECK(found >= (size_t)(BLOCKS - 1) * BLOCK);
    /* ~78 MiB were free and resident; most of it goes */
    CHECK(before - after >= 60 * 1024);
}

KVS_TEST(at_most_once_a_second)
{
    fragment();
    CHECK(kvs_mem_give_back(5000) > 0);
    fragment(); /* as much free again */
    CHECK_EQ(kvs_mem_give_back(5000 + KVS_MEM_EVERY_MS - 1), 0);
    CHECK(kvs_mem_give_back(5000 + KVS_MEM_EVERY_MS) > 0);
}

/* kvs_mem_trim: at once, whenever kvs_mem_give_back last ran (after a
 * configuration file was loaded), on the same conditions. */
KVS_TEST(trim_now_whenever_the_last_one_ran)
{
    fragment();
    CHECK(kvs_mem_give_back(5000) > 0);
    fragment();
    long before = rss_anon_kib();
    CHECK(kvs_mem_trim() >= (size_t)(BLOCKS - 1) * BLOCK); /* within the second */
    CHECK(before - rss_anon_kib() >= 60 * 1024);
}

KVS_TEST(not_while_little_is_free)
{
    /* 8 MiB free: under KVS_MEM_FREE_MIN */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    for (int i = 0; i < 80; i++) {
        big[i] = malloc(BLOCK);
        CHECK(big[i] != NULL);
        small[i] = malloc(64);
    }
    for (int i = 0; i < 80; i++)
        free(big[i]);
    CHECK_EQ(kvs_mem_give_back(5000), 0);
    /* looked at: not again within the second, even with much free */
    fragment();
    CHECK_EQ(kvs_mem_give_back(5000 + KVS_MEM_EVERY_MS - 1), 0);
    /* much free, but less than in use: memory a busy process reuses */
    static void *used[2 * BLOCKS];
    for (int i = 0; i < 2 * BLOCKS; i++) {
        used[i] = malloc(BLOCK);
        CHECK(used[i] != NULL);
    }
    fragment();
    CHECK_EQ(kvs_mem_give_back(5000 + 2 * KVS_MEM_EVERY_MS), 0);
    for (int i = 0; i < 2 * BLOCKS; i++)
        free(used[i]);
}
#endif

KVS_TEST_MAIN(KVS_CASE(gives_back_free_memory_below_blocks_in_use), KVS_CASE(at_most_once_a_second),
              KVS_CASE(trim_now_whenever_the_last_one_ran), KVS_CASE(not_while_little_is_free))

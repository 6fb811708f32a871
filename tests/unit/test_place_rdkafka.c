/*
 * test_place_rdkafka: kvs_place against a second, independent murmur2.
 *
 * librdkafka's rd_kafka_msg_partitioner_murmur2 is the Java-compatible
 * partitioner that C/C++ (and Python, Go, .NET) producers use. If kvs and
 * librdkafka disagree on any key, a producer built on librdkafka would put
 * records where the router does not look. This file only runs the real
 * library: it is linked with -lrdkafka, unlike test_place.
 *
 * The partitioner ignores its topic handle for a key: librdkafka 2.0.2 is
 *     return (rd_murmur2(key, keylen) & 0x7fffffff) % partition_cnt;
 * (seen in its source and in the disassembly of the installed library), so
 * we pass NULL for rkt and the opaques and need no producer.
 *
 * With partition_cnt = INT32_MAX the partition is the hash with its top bit
 * cleared (except the one hash 0x7fffffff, which maps to 0 on both sides),
 * which compares 31 of the 32 hash bits directly.
 */
#include "kvs_place.h"
#include "kvs_test.h"

#include <librdkafka/rdkafka.h>

#define KEYS 10000
#define MAX_KEY 64

/* splitmix64: a fixed, reproducible stream of test keys. */
static uint64_t next_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static uint32_t rdkafka_partition(const void *key, size_t len, int32_t partitions)
{
    int32_t p = rd_kafka_msg_partitioner_murmur2(NULL, key, len, partitions, NULL, NULL);
    CHECK(p >= 0 && p < partitions);
    return (uint32_t)p;
}

/* Compares kvs and librdkafka on KEYS random keys of length 0..MAX_KEY with
 * bytes 0..255, each starting at a random offset 0..7 (both the aligned and
 * unaligned paths of librdkafka, and any alignment for kvs). */
static void compare_random_keys(int32_t partitions, uint64_t seed)
{
    unsigned char buf[MAX_KEY + 8];
    uint64_t rng = seed;
    for (int i = 0; i < KEYS; i++) {
        size_t len = (size_t)(next_rand(&rng) % (MAX_KEY + 1));
        size_t off = (size_t)(next_rand(&rng) % 8);
        for (size_t b = 0; b < len; b++)
            buf[off + b] = (unsigned char)next_rand(&rng);
        uint32_t ours = kvs_place_partition(buf + off, len, (uint32_t)partitions);
        uint32_t theirs = rdkafka_partition(buf + off, len, partitions);
        if (ours != theirs)
            fprintf(stderr,
                    "key %d (len %zu, %" PRId32 " partitions): kvs %" PRIu32 ", librdkafka %" PRIu32
                    "\n",
                    i, len, partitions, ours, theirs);
        CHECK_EQ(ours, theirs);
    }
}

KVS_TEST(rdkafka_agrees_on_kafka_vectors)
{
    static const char *const keys[] = {"21",
                                       "foobar",
                                       "a-little-bit-long-string",
                                       "a-little-bit-longer-string",
                                       "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                                       "abc",
                                       "kafka",
                                       "1",
                                       "12",
                                       "123",
                                       "1234",
                                       "12345",
                                       "\x80",
                                       "\xff",
                                       "\xff\xfe",
                                       "\x80\x81\x82",
                                       "\xde\xad\xbe\xef\xff"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        size_t len = strlen(keys[i]);
        CHECK_EQ(kvs_murmur2(keys[i], len) & 0x7fffffffu,
                 rdkafka_partition(keys[i], len, INT32_MAX));
    }
}

KVS_TEST(rdkafka_agrees_on_empty_key)
{
    CHECK_EQ(kvs_place_partition("", 0, INT32_MAX), rdkafka_partition("", 0, INT32_MAX));
    CHECK_EQ(kvs_place_partition(NULL, 0, INT32_MAX), rdkafka_partition(NULL, 0, INT32_MAX));
    CHECK_EQ(kvs_place_partition("", 0, 100), rdkafka_partition("", 0, 100));
}

KVS_TEST(rdkafka_agrees_on_hash_bits)
{
    compare_random_keys(INT32_MAX, 0x6b76735f706c6163u);
}

KVS_TEST(rdkafka_agrees_on_partitions)
{
    static const int32_t counts[] = {1, 2, 3, 7, 8, 16, 64, 100, 16384};
    for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++)
        compare_random_keys(counts[c], 0x1234567u + c);
}

KVS_TEST(rdkafka_agrees_on_every_single_byte)
{
    /* Each of the 256 one-byte keys: the tail path with and without the
     * high bit, where a sign-extension bug would show. */
    for (int b = 0; b < 256; b++) {
        unsigned char key = (unsigned char)b;
        CHECK_EQ(kvs_murmur2(&key, 1) & 0x7fffffffu, rdkafka_partition(&key, 1, INT32_MAX));
    }
}

KVS_TEST_MAIN(KVS_CASE(rdkafka_agrees_on_kafka_vectors), KVS_CASE(rdkafka_agrees_on_empty_key),
              KVS_CASE(rdkafka_agrees_on_hash_bits), KVS_CASE(rdkafka_agrees_on_partitions),
              KVS_CASE(rdkafka_agrees_on_every_single_byte))

/*
 * test_place_rdkafka: kvs_place against librdkafka's own partitioners.
 *
 * librdkafka's rd_kafka_msg_partitioner_* functions are what every
 * librdkafka-based producer (kcat, confluent-kafka for Python, Go, .NET,
 * node-rdkafka) runs for `partitioner=...`: murmur2 / murmur2_random (Java
 * compatible), consistent / consistent_random (CRC-32, librdkafka's
 * default) and fnv1a / fnv1a_random (Sarama compatible). If kvs and
 * librdkafka disagree on any key, such a producer would put records where
 * the router does not look. This file only runs the real library: it is
 * linked with -lrdkafka, unlike test_place.
 *
 * For a key, these partitioners ignore their topic handle (librdkafka 2.0.2:
 *     return (rd_murmur2(key, keylen) & 0x7fffffff) % partition_cnt;
 *     return rd_crc32(key, keylen) % partition_cnt;
 *     return rd_fnv1a(key, keylen) % partition_cnt;
 * seen in its source and in the disassembly of the installed library), so
 * we pass NULL for rkt and the opaques and need no producer. The _random
 * variants use the topic handle only for keys they place at random (NULL
 * keys; for consistent_random also empty ones), so they are called with
 * keyed records only.
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

typedef int32_t (*rdk_partitioner_fn)(const rd_kafka_topic_t *rkt, const void *key, size_t keylen,
                                      int32_t partition_cnt, void *rkt_opaque, void *msg_opaque);

/* Each librdkafka partitioner with the kvs partitioner it must equal. */
typedef struct {
    const char *name;
    rdk_partitioner_fn fn;
    kvs_partitioner_t kvs;
    int random_if_empty; /* places an empty key at random: call only with keys */
} rdk_partitioner_t;

static const rdk_partitioner_t partitioners[] = {
    {"murmur2", rd_kafka_msg_partitioner_murmur2, KVS_PARTITIONER_MURMUR2, 0},
    {"murmur2_random", rd_kafka_msg_partitioner_murmur2_random, KVS_PARTITIONER_MURMUR2, 0},
    {"consistent", rd_kafka_msg_partitioner_consistent, KVS_PARTITIONER_CRC32, 0},
    {"consistent_random", rd_kafka_msg_partitioner_consistent_random, KVS_PARTITIONER_CRC32, 1},
    {"fnv1a", rd_kafka_msg_partitioner_fnv1a, KVS_PARTITIONER_FNV1A, 0},
    {"fnv1a_random", rd_kafka_msg_partitioner_fnv1a_random, KVS_PARTITIONER_FNV1A, 0},
};

#define N_PARTITIONERS (sizeof(partitioners) / sizeof(partitioners[0]))

static uint32_t rdk_partition(const rdk_partitioner_t *rp, const void *key, size_t len,
                              int32_t partitions)
{
    CHECK(key != NULL && (len > 0 || !rp->random_if_empty)); /* else librdkafka picks at random */
    int32_t p = rp->fn(NULL, key, len, partitions, NULL, NULL);
    CHECK(p >= 0 && p < partitions);
    return (uint32_t)p;
}

static uint32_t rdkafka_partition(const void *key, size_t len, int32_t partitions)
{
    int32_t p = rd_kafka_msg_partitioner_murmur2(NULL, key, len, partitions, NULL, NULL);
    CHECK(p >= 0 && p < partitions);
    return (uint32_t)p;
}

/* Compares one partitioner pair on `n` random keys of length 1..MAX_KEY
 * (0..MAX_KEY where librdkafka hashes empty keys) with bytes 0..255, most
 * of them not UTF-8, each at a random offset 0..7. */
static void compare_partitioner(const rdk_partitioner_t *rp, int32_t partitions, uint64_t seed,
                                int n)
{
    unsigned char buf[MAX_KEY + 8];
    uint64_t rng = seed;
    for (int i = 0; i < n; i++) {
        size_t len = (size_t)(next_rand(&rng) % (MAX_KEY + 1));
        size_t off = (size_t)(next_rand(&rng) % 8);
        if (len == 0 && rp->random_if_empty)
            len = 1;
        for (size_t b = 0; b < len; b++)
            buf[off + b] = (unsigned char)next_rand(&rng);
        uint32_t ours = kvs_place_partition_by(rp->kvs, buf + off, len, (uint32_t)partitions);
        uint32_t theirs = rdk_partition(rp, buf + off, len, partitions);
        if (ours != theirs)
            fprintf(stderr,
                    "%s, key %d (len %zu, %" PRId32 " partitions): kvs %" PRIu32
                    ", librdkafka %" PRIu32 "\n",
                    rp->name, i, len, partitions, ours, theirs);
        CHECK_EQ(ours, theirs);
    }
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

KVS_TEST(rdkafka_partitioners_agree_on_random_keys)
{
    /* Every partitioner, many partition counts (INT32_MAX compares 31 hash
     * bits for murmur2 and all but the top one for crc32 and fnv1a). */
    static const int32_t counts[] = {1,  2,  3,   4,    7,     8,      12,
                                     16, 64, 100, 1000, 16384, 100000, INT32_MAX};
    for (size_t p = 0; p < N_PARTITIONERS; p++)
        for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++)
            compare_partitioner(&partitioners[p], counts[c], 0x9e37u * (p + 1) + c, 3000);
}

KVS_TEST(rdkafka_partitioners_agree_on_empty_key)
{
    /* An empty key is hashed by the non-random variants (kvs skips keyless
     * and empty-keyed records, but the functions must still agree). */
    static const int32_t counts[] = {1, 3, 8, 100, INT32_MAX};
    for (size_t p = 0; p < N_PARTITIONERS; p++) {
        if (partitioners[p].random_if_empty)
            continue;
        for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
            CHECK_EQ(kvs_place_partition_by(partitioners[p].kvs, "", 0, (uint32_t)counts[c]),
                     rdk_partition(&partitioners[p], "", 0, counts[c]));
        }
    }
}

KVS_TEST(rdkafka_partitioners_agree_on_chosen_keys)
{
    /* Text, non-UTF-8 bytes, a NUL inside, every single byte, and
     * "hp4gi_", whose FNV-1a is 0x80000000 (INT32_MIN, where librdkafka
     * negates a value that has no positive counterpart). */
    static const struct {
        const char *k;
        size_t len;
    } keys[] = {{"hp4gi_", 6}, {"user-42", 7},          {"\xff\xfe\xfd", 3},
                {"a\0b", 3},   {"\xc3\x28", 2},         {"\xed\xa0\x80", 3},
                {"kafka", 5},  {"\x80\x81\x82\x83", 4}, {"1234567890abcdef", 16}};
    static const int32_t counts[] = {1, 2, 3, 7, 8, 16, 64, 100, 1000, 16384, INT32_MAX};
    for (size_t p = 0; p < N_PARTITIONERS; p++)
        for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
            for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
                CHECK_EQ(kvs_place_partition_by(partitioners[p].kvs, keys[i].k, keys[i].len,
                                                (uint32_t)counts[c]),
                         rdk_partition(&partitioners[p], keys[i].k, keys[i].len, counts[c]));
            for (int b = 0; b < 256; b++) {
                unsigned char key = (unsigned char)b;
                CHECK_EQ(kvs_place_partition_by(partitioners[p].kvs, &key, 1, (uint32_t)counts[c]),
                         rdk_partition(&partitioners[p], &key, 1, counts[c]));
            }
        }
}

KVS_TEST_MAIN(KVS_CASE(rdkafka_agrees_on_kafka_vectors), KVS_CASE(rdkafka_agrees_on_empty_key),
              KVS_CASE(rdkafka_agrees_on_hash_bits), KVS_CASE(rdkafka_agrees_on_partitions),
              KVS_CASE(rdkafka_agrees_on_every_single_byte),
              KVS_CASE(rdkafka_partitioners_agree_on_random_keys),
              KVS_CASE(rdkafka_partitioners_agree_on_empty_key),
              KVS_CASE(rdkafka_partitioners_agree_on_chosen_keys))

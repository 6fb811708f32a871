/*
 * kvs_place: where a key lives.
 *
 * The router and every worker must agree, without talking, on which shard
 * owns a key. They also have to agree with something outside kvs: a table
 * bound to a Kafka topic is filled by workers that each consume only the
 * partitions they own, and those records were placed by whatever Kafka
 * producer wrote them. kvs has no say in that placement; it can only compute
 * the same function as the producer. If our hash differed from the
 * producer's in a single bit, a record would be ingested by one shard while
 * the router looked for its key on another: a read would miss a value that
 * is stored. That is why this file implements each producer family's
 * partitioner to the bit, quirks included, rather than a "better" hash, and
 * why the tests pin each one to published vectors and cross-check it against
 * librdkafka's own partitioner functions.
 *
 * murmur2 (the Java client, librdkafka's murmur2/murmur2_random) is
 *
 *     (Utils.murmur2(keyBytes) & 0x7fffffff) % numPartitions
 *
 * MurmurHash2 (Austin Appleby) with seed 0x9747b28c: 4-byte blocks read
 * little-endian, a 1..3-byte tail that falls through the switch, and a final
 * avalanche. Java reads every byte as `b & 0xff`, so bytes 0x80..0xff are
 * never sign-extended; we read `unsigned char` to get the same. Java's int
 * arithmetic wraps; we use uint32_t throughout, which wraps by definition
 * (signed overflow would be undefined in C), and `>>` on uint32_t is Java's
 * `>>>`. Blocks are assembled byte by byte, so a key may start at any
 * address and the result does not depend on host endianness.
 *
 * crc32 (librdkafka's consistent/consistent_random, the default of every
 * librdkafka-based producer: kcat, confluent-kafka for Python, Go, .NET) is
 * `rd_crc32(key) % partition_cnt`, the zlib CRC-32, taken as unsigned. We
 * compute it with a 16-entry table, a nibble at a time: 64 bytes of table
 * instead of 1 KiB, and still a few ns for a typical key.
 *
 * fnv1a (librdkafka's fnv1a/fnv1a_random, Sarama's NewHashPartitioner) is
 * 32-bit FNV-1a whose value, read as a signed int, is made non-negative by
 * negation (not by masking the sign bit as Java does), then taken modulo the
 * partition count. For INT32_MIN the negation wraps back to 0x80000000 in
 * both librdkafka and Go; unsigned negation gives the same pattern here
 * without undefined behaviour.
 *
 * Everything here is a pure function of its arguments: no state, no
 * allocation, safe from any thread.
 */
#include "kvs_place.h"

#include <assert.h>
#include <strings.h>

#define KVS_MURMUR2_SEED 0x9747b28cu
#define KVS_MURMUR2_M 0x5bd1e995u
#define KVS_MURMUR2_R 24

/* Kafka's tail switch falls through on purpose; tell the compiler too, so
 * -Wimplicit-fallthrough (gcc at any level, clang) stays quiet. */
#if defined(__has_attribute)
#if __has_attribute(fallthrough)
#define KVS_PLACE_FALLTHROUGH __attribute__((fallthrough))
#endif
#endif
#ifndef KVS_PLACE_FALLTHROUGH
#define KVS_PLACE_FALLTHROUGH ((void)0)
#endif

/* Kafka's partitioner clears the sign bit of the Java int (toPositive). */
#define KVS_PLACE_POSITIVE 0x7fffffffu

/* The little-endian 32-bit word at p, read byte-wise (no alignment needed). */
static uint32_t load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint32_t kvs_murmur2(const void *data, size_t len)
{
    const unsigned char *p = data;
    const uint32_t m = KVS_MURMUR2_M;
    /* Java hashes an int length; keys are far below 4 GiB (max_frame), and
     * librdkafka truncates the same way. */
    uint32_t h = KVS_MURMUR2_SEED ^ (uint32_t)len;

    assert(p != NULL || len == 0);
    for (size_t n = len / 4; n > 0; n--, p += 4) {
        uint32_t k = load_le32(p);
        k *= m;
        k ^= k >> KVS_MURMUR2_R;
        k *= m;
        h *= m;
        h ^= k;
    }

    switch (len % 4) {
    case 3:
        h ^= (uint32_t)p[2] << 16;
        KVS_PLACE_FALLTHROUGH;
    case 2:
        h ^= (uint32_t)p[1] << 8;
        KVS_PLACE_FALLTHROUGH;
    case 1:
        h ^= (uint32_t)p[0];
        h *= m;
        break;
    default:
        break;
    }

    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

/* CRC-32 of each nibble value, for the reflected polynomial 0xedb88320. */
static const uint32_t crc32_nibble[16] = {
    0x00000000u, 0x1db71064u, 0x3b6e20c8u, 0x26d930acu, 0x76dc4190u, 0x6b6b51f4u,
    0x4db26158u, 0x5005713cu, 0xedb88320u, 0xf00f9344u, 0xd6d6a3e8u, 0xcb61b38cu,
    0x9b64c2b0u, 0x86d3d2d4u, 0xa00ae278u, 0xbdbdf21cu,
};

uint32_t kvs_crc32(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint32_t c = 0xffffffffu;
    assert(p != NULL || len == 0);
    for (size_t i = 0; i < len; i++) {
        c ^= p[i];
        c = (c >> 4) ^ crc32_nibble[c & 15u];
        c = (c >> 4) ^ crc32_nibble[c & 15u];
    }
    return c ^ 0xffffffffu;
}

#define KVS_FNV1A_BASIS 0x811c9dc5u
#define KVS_FNV1A_PRIME 0x01000193u

uint32_t kvs_fnv1a(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint32_t h = KVS_FNV1A_BASIS;
    assert(p != NULL || len == 0);
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= KVS_FNV1A_PRIME;
    }
    return h;
}

uint32_t kvs_place_partition(const void *key, size_t len, uint32_t partitions)
{
    assert(partitions > 0);
    return (kvs_murmur2(key, len) & KVS_PLACE_POSITIVE) % partitions;
}

uint32_t kvs_place_partition_by(kvs_partitioner_t p, const void *key, size_t len,
                                uint32_t partitions)
{
    assert(partitions > 0);
    switch (p) {
    case KVS_PARTITIONER_MURMUR2:
        return (kvs_murmur2(key, len) & KVS_PLACE_POSITIVE) % partitions;
    case KVS_PARTITIONER_CRC32:
        return kvs_crc32(key, len) % partitions;
    case KVS_PARTITIONER_FNV1A: {
        uint32_t h = kvs_fnv1a(key, len);
        if (h & 0x80000000u) /* negative as an int32: negate, as librdkafka and Sarama do */
            h = 0u - h;
        return h % partitions;
    }
    default:
        assert(!"kvs_place_partition_by: partitioner none places no key");
        return 0;
    }
}

uint32_t kvs_place_shard(uint32_t partition, uint32_t shards)
{
    assert(shards > 0);
    return partition % shards;
}

uint32_t kvs_place_key_shard(const void *key, size_t len, uint32_t partitions, uint32_t shards)
{
    return kvs_place_shard(kvs_place_partition(key, len, partitions), shards);
}

uint32_t kvs_place_owning_shards(uint32_t partitions, uint32_t shards)
{
    assert(partitions > 0 && shards > 0);
    return partitions < shards ? partitions : shards;
}

static const char *const partitioner_names[] = {"murmur2", "crc32", "fnv1a", "none"};

_Static_assert(KVS_PARTITIONER_MURMUR2 == 0 && KVS_PARTITIONER_CRC32 == 1 &&
                   KVS_PARTITIONER_FNV1A == 2 && KVS_PARTITIONER_NONE == 3 &&
                   KVS_PARTITIONER_HASHES == 3,
               "partitioner_names order must match kvs_partitioner_t");

const char *kvs_place_partitioner_name(kvs_partitioner_t p)
{
    return (unsigned)p < sizeof(partitioner_names) / sizeof(partitioner_names[0])
               ? partitioner_names[p]
               : "?";
}

int kvs_place_partitioner_parse(const char *name, kvs_partitioner_t *out, const char **hint)
{
    /* librdkafka's names for the same functions, which users copy from
     * their producer's config: each hints at the kvs name. */
    static const struct {
        const char *alias, *kvs;
    } aliases[] = {
        {"murmur2_random", "murmur2"}, {"consistent", "crc32"}, {"consistent_random", "crc32"},
        {"fnv1a_random", "fnv1a"},     {"random", "none"},
    };
    if (hint != NULL)
        *hint = NULL;
    for (size_t i = 0; i < sizeof(partitioner_names) / sizeof(partitioner_names[0]); i++)
        if (strcasecmp(name, partitioner_names[i]) == 0) {
            *out = (kvs_partitioner_t)i;
            return 0;
        }
    for (size_t i = 0; hint != NULL && i < sizeof(aliases) / sizeof(aliases[0]); i++)
        if (strcasecmp(name, aliases[i].alias) == 0)
            *hint = aliases[i].kvs;
    return -1;
}

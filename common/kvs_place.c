/*
 * kvs_place: where a key lives.
 *
 * The router and every worker must agree, without talking, on which shard
 * owns a key. They also have to agree with something outside kvs: a table
 * bound to a Kafka topic is filled by workers that each consume only the
 * partitions they own, and those records were placed by whatever Kafka
 * producer wrote them. With default settings that producer is the Java
 * client's partitioner (or librdkafka's "murmur2_random", which copies it),
 * so a key's partition is fixed by
 *
 *     (Utils.murmur2(keyBytes) & 0x7fffffff) % numPartitions
 *
 * and kvs has no say in it. If our hash differed from Kafka's in a single
 * bit, a record would be ingested by one shard while the router looked for
 * its key on another: a read would miss a value that is stored. That is why
 * this file implements Kafka's murmur2 to the bit, quirks included, rather
 * than a "better" hash, and why the tests pin it to values published by
 * Kafka and cross-check it against librdkafka.
 *
 * Kafka's murmur2 is MurmurHash2 (Austin Appleby) with seed 0x9747b28c:
 * 4-byte blocks read little-endian, a 1..3-byte tail that falls through the
 * switch, and a final avalanche. Java reads every byte as `b & 0xff`, so
 * bytes 0x80..0xff are never sign-extended; we read `unsigned char` to get
 * the same. Java's int arithmetic wraps; we use uint32_t throughout, which
 * wraps by definition (signed overflow would be undefined in C), and `>>`
 * on uint32_t is Java's `>>>`. Blocks are assembled byte by byte, so a key
 * may start at any address and the result does not depend on host
 * endianness.
 *
 * Everything here is a pure function of its arguments: no state, no
 * allocation, safe from any thread.
 */
#include "kvs_place.h"

#include <assert.h>

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

uint32_t kvs_place_partition(const void *key, size_t len, uint32_t partitions)
{
    assert(partitions > 0);
    return (kvs_murmur2(key, len) & KVS_PLACE_POSITIVE) % partitions;
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

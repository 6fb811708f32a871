/*
 * kvs_place: where a key lives. Pure functions, no state.
 *
 *   partition(key) = partitioner(key) % partitions
 *   shard(partition) = partition % shards
 *
 * A table bound to a Kafka topic is placed by the partitioner its producers
 * use, bit-exact, so the router and Kafka agree on the partition of every
 * key, and therefore on the shard worker that ingested it:
 *
 *   murmur2  (murmur2(key) & 0x7fffffff) % n   Java client default (seed
 *            0x9747b28c); librdkafka "murmur2" / "murmur2_random"
 *   crc32    crc32(key) % n                   librdkafka "consistent" /
 *            "consistent_random" (its default, so kcat's and confluent-kafka's)
 *   fnv1a    |fnv1a(key)| % n                 librdkafka "fnv1a" / "fnv1a_random";
 *            Sarama's default NewHashPartitioner
 *   none     the producers choose partitions some other way; no function of
 *            the key gives its partition
 *
 * Tables bound to no topic use murmur2 over cluster.partitions.
 */
#ifndef KVS_PLACE_H
#define KVS_PLACE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    KVS_PARTITIONER_MURMUR2 = 0, /* the default */
    KVS_PARTITIONER_CRC32 = 1,
    KVS_PARTITIONER_FNV1A = 2,
    KVS_PARTITIONER_NONE = 3, /* no key -> partition function */
} kvs_partitioner_t;

/* The partitioners that are functions of the key: 0 .. KVS_PARTITIONER_HASHES-1. */
#define KVS_PARTITIONER_HASHES 3

/* Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2) over
 * `len` bytes. The result is the same 32-bit pattern Java computes as a
 * signed int. */
uint32_t kvs_murmur2(const void *data, size_t len);

/* CRC-32 (IEEE 802.3, reflected polynomial 0xedb88320, the one of zlib's
 * crc32() and librdkafka's rd_crc32) over `len` bytes. */
uint32_t kvs_crc32(const void *data, size_t len);

/* 32-bit FNV-1a (offset basis 0x811c9dc5, prime 0x01000193) over `len`
 * bytes: the plain hash, before any partitioner's sign handling. */
uint32_t kvs_fnv1a(const void *data, size_t len);

/* The partition Kafka's default partitioner picks for a non-null key:
 * (murmur2 & 0x7fffffff) % partitions. `partitions` must be > 0. */
uint32_t kvs_place_partition(const void *key, size_t len, uint32_t partitions);

/* The partition partitioner `p` picks for key[0..len) among `partitions`
 * (> 0), exactly as the producer family it names does for a keyed record.
 * `p` must not be KVS_PARTITIONER_NONE (asserted; 0 in release builds). */
uint32_t kvs_place_partition_by(kvs_partitioner_t p, const void *key, size_t len,
                                uint32_t partitions);

/* The shard that owns `partition` when `shards` shards split the partitions
 * round-robin: partition % shards. `shards` must be > 0. */
uint32_t kvs_place_shard(uint32_t partition, uint32_t shards);

/* shard(partition(key)) in one call (murmur2). */
uint32_t kvs_place_key_shard(const void *key, size_t len, uint32_t partitions, uint32_t shards);

/* How many shards own at least one of `partitions` partitions: shards
 * 0 .. n-1, where n = min(partitions, shards). Both must be > 0. */
uint32_t kvs_place_owning_shards(uint32_t partitions, uint32_t shards);

/* The config name of `p` ("murmur2", "crc32", "fnv1a", "none"); "?" for a
 * value outside the enum. Static storage. */
const char *kvs_place_partitioner_name(kvs_partitioner_t p);

/* Parses a config name (case-insensitive) into *out. Returns 0, or -1 for
 * anything else (then *hint, when not NULL, is set to the kvs name a known
 * producer-side name stands for, e.g. "crc32" for librdkafka's
 * "consistent_random", or NULL). */
int kvs_place_partitioner_parse(const char *name, kvs_partitioner_t *out, const char **hint);

#endif

/*
 * kvs_place: where a key lives. Pure functions, no state.
 *
 *   partition(key) = (murmur2(key) & 0x7fffffff) % partitions
 *   shard(partition) = partition % shards
 *
 * murmur2 is exactly the Kafka Java client's default partitioner hash (seed
 * 0x9747b28c; librdkafka calls the partitioner "murmur2_random"), so a Kafka
 * producer with default settings and the kvs router agree on the partition
 * of every key, and therefore on the shard worker that ingested it.
 */
#ifndef KVS_PLACE_H
#define KVS_PLACE_H

#include <stddef.h>
#include <stdint.h>

/* Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2) over
 * `len` bytes. The result is the same 32-bit pattern Java computes as a
 * signed int. */
uint32_t kvs_murmur2(const void *data, size_t len);

/* The partition Kafka's default partitioner picks for a non-null key:
 * (murmur2 & 0x7fffffff) % partitions. `partitions` must be > 0. */
uint32_t kvs_place_partition(const void *key, size_t len, uint32_t partitions);

/* The shard that owns `partition` when `shards` shards split the partitions
 * round-robin: partition % shards. `shards` must be > 0. */
uint32_t kvs_place_shard(uint32_t partition, uint32_t shards);

/* shard(partition(key)) in one call. */
uint32_t kvs_place_key_shard(const void *key, size_t len, uint32_t partitions, uint32_t shards);

#endif

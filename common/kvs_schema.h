/*
 * kvs_schema: how kvs lays its data out on disk, in one place for every
 * process that reads it: the worker that writes a shard's environment, and
 * a router reading a local shard's environment directly (router_local).
 * Pure: names and byte layouts, no I/O.
 *
 * A node's data_dir holds, for every local shard N:
 *
 *   shard-N/        the shard's LMDB environment (data.mdb, lock.mdb) and
 *                   kvs.lock, the worker's exclusive lock
 *   shard-N.sock    the worker's unix socket
 *   shard-N.state   the worker's state page (kvs_shardstate): which
 *                   environment it has open, what it knows of Kafka
 *
 * Inside an environment:
 *
 *  - one named LMDB database per table, named as the table (names that
 *    start with "__" belong to kvs and are refused from clients);
 *  - a value is stored as the encoded kvs.Value (protobuf bytes), exactly
 *    as answers carry it: reads copy stored bytes into answers;
 *  - the reserved database __kvs holds the format version (what the stored
 *    bytes mean), the shard id and the placement fingerprint the
 *    environment was created for, and one record per Kafka partition the
 *    shard ingests (KVS_SCHEMA_OFFSETS_*), written in the same transaction
 *    as the records it counts, and per bound topic the table those records
 *    went to (kvs_schema_topic_table_key);
 *  - an Hscan cursor, as a worker answers it, is the key of the first pair
 *    not returned; a walk continues at the first key >= the cursor, so a
 *    cursor stays valid across writes and across processes (a page served
 *    by a router and the next by the worker continue each other).
 */
#ifndef KVS_SCHEMA_H
#define KVS_SCHEMA_H

#include <stddef.h>
#include <stdint.h>

#define KVS_SCHEMA_META_DB "__kvs"

/* What the stored bytes mean. 1: kvs 0.1, Value.integer_value as sint64.
 * 2: the original KV protocol's int64 (kvs.proto says why). */
#define KVS_SCHEMA_FORMAT_VERSION "2"

/* __kvs keys of the environment's identity. */
#define KVS_SCHEMA_KEY_FORMAT "format_version"
#define KVS_SCHEMA_KEY_SHARD "shard"
#define KVS_SCHEMA_KEY_PLACEMENT "placement"

/* __kvs key present once the environment records its tables' layouts
 * (kvs_schema_table_layout_key); an environment of an earlier kvs has
 * none, and its tables are taken as the config binds them. */
#define KVS_SCHEMA_KEY_LAYOUTS "table_layouts"

/* Reader slots of an environment's lock file. Every process reading the
 * environment takes one per open read transaction: the worker one (its
 * per-turn snapshot) plus short ones for snapshots and digests; each router
 * process one per local shard it reads. Set alike by every process that
 * opens an environment (the first to open the lock file sizes it). */
#define KVS_SCHEMA_MAX_READERS 256

/* What a stored format_version says. */
typedef enum {
    KVS_SCHEMA_FORMAT_ABSENT = 0, /* none stored: a new environment */
    KVS_SCHEMA_FORMAT_CURRENT,    /* KVS_SCHEMA_FORMAT_VERSION */
    KVS_SCHEMA_FORMAT_OLD,        /* "1": integers as sint64; must not be served */
    KVS_SCHEMA_FORMAT_OTHER,      /* anything else (a newer kvs wrote it) */
} kvs_schema_format_t;

/* Classifies a stored format_version (p NULL: none stored). */
kvs_schema_format_t kvs_schema_format(const void *p, size_t len);

/* The placement fingerprint an environment records: what decides which
 * keys it holds. Writes a NUL-terminated string into buf[0..len). */
void kvs_schema_placement(char *buf, size_t len, uint32_t shards, uint32_t partitions);

/* Paths of shard `shard` under data_dir: its environment's directory, its
 * state page. Return 0, or -ENAMETOOLONG when buf[0..len) cannot hold it. */
int kvs_schema_shard_dir(char *buf, size_t len, const char *data_dir, uint32_t shard);
int kvs_schema_state_path(char *buf, size_t len, const char *data_dir, uint32_t shard);

/* ---- Kafka offsets in __kvs ----------------------------------------------- */

/* One partition's record: little-endian u64s next, applied, skipped,
 * misplaced. Records written before `misplaced` existed hold the first
 * three only (KVS_SCHEMA_OFFSETS_V1_LEN bytes) and read with misplaced = 0;
 * a longer record (a later version adding fields) reads the fields known
 * here. A negative `next` (KVS_SCHEMA_NEXT_FROM_START, what Rebuild
 * stores) means nothing is applied and ingestion starts at the first
 * record of the partition's log, whatever auto.offset.reset says. */
#define KVS_SCHEMA_OFFSETS_V1_LEN 24
#define KVS_SCHEMA_OFFSETS_LEN 32
#define KVS_SCHEMA_OFFSETS_KEY_MAX 320 /* a key for any topic name kvs accepts */
#define KVS_SCHEMA_NEXT_FROM_START (-2)

typedef struct kvs_schema_offsets_s {
    int64_t next;       /* offset of the next record to apply (all below are applied);
                           KVS_SCHEMA_NEXT_FROM_START: none, read from the log's start */
    uint64_t applied;   /* records applied, ever */
    uint64_t skipped;   /* records skipped (no key, bad payload), ever */
    uint64_t misplaced; /* of the applied ones, those on another partition than their key's */
} kvs_schema_offsets_t;

/* The __kvs key of (topic, partition): "kafka/<topic>/<partition>".
 * Returns its length, or -ENAMETOOLONG when buf[0..len) cannot hold it. */
int kvs_schema_offsets_key(char *buf, size_t len, const char *topic, int32_t partition);

/* The __kvs key prefix of every partition record of `topic`:
 * "kafka/<topic>/" (topic names hold no '/', so it is only that topic's).
 * Returns its length, or -ENAMETOOLONG when buf[0..len) cannot hold it. */
int kvs_schema_offsets_prefix(char *buf, size_t len, const char *topic);

/* The __kvs key naming the table a topic's partition records were applied
 * to: "topic/<topic>", whose value is the table's name. The offsets are
 * the progress of that table: a binding that gives the topic another table
 * (kafka.bindings renamed) must not let that table resume there, or it
 * would never get the records below them (node_store_open reads the topic
 * again from its start for it). Returns its length, or -ENAMETOOLONG. */
int kvs_schema_topic_table_key(char *buf, size_t len, const char *topic);

/* The __kvs key naming the Kafka cluster a topic's partition records came
 * from: "cluster/<topic>", whose value is the cluster's id as its brokers
 * report it (empty: none known yet, as after a Rebuild). Offsets are
 * positions in one cluster's log; in another cluster's (a disaster-recovery
 * copy, brokers replaced by a new cluster at the same address) they mean
 * nothing. Returns its length, or -ENAMETOOLONG. */
#define KVS_SCHEMA_CLUSTER_ID_MAX 255 /* longest cluster id kept; a longer one is not compared */
int kvs_schema_cluster_key(char *buf, size_t len, const char *topic);

/* The __kvs key of a table's layout: "table/<table>" (table[0..tlen)),
 * present for a table bound to a topic, whose keys are placed by its
 * binding, absent for one bound to none (placed by murmur2 over
 * cluster.partitions, which the placement fingerprint covers). Its value
 * is kvs_schema_layout's text. Returns the key's length, or -ENAMETOOLONG. */
int kvs_schema_table_layout_key(char *buf, size_t len, const void *table, size_t tlen);

/* A bound table's layout, as stored: "topic=T partitioner=P partitions=N". */
void kvs_schema_layout(char *buf, size_t len, const char *topic, const char *partitioner,
                       uint32_t partitions);

/* Parses a stored layout (p[0..n)) into topic[0..tlen), partitioner[0..plen)
 * and *partitions. Returns 0, or -EINVAL for text of another form. */
int kvs_schema_layout_parse(const void *p, size_t n, char *topic, size_t tlen, char *partitioner,
                            size_t plen, uint32_t *partitions);

/* Encodes `o` into out[0..KVS_SCHEMA_OFFSETS_LEN). */
void kvs_schema_offsets_encode(uint8_t *out, const kvs_schema_offsets_t *o);

/* Decodes a stored record. Returns 0, or -EINVAL for one too short to
 * hold `next` and the counters (then *o is untouched). */
int kvs_schema_offsets_decode(const void *p, size_t len, kvs_schema_offsets_t *o);

#endif

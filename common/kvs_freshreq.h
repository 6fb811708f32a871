/*
 * kvs_freshreq: the freshness rules (kvs_fresh) applied to one read of a
 * table bound to a Kafka topic: which partitions the read touches, the
 * minimum position it demands on each (CommandRequest.min_position), and
 * the worst verdict over them. One walk for every copy of a shard that
 * serves reads: the worker (node_reads) and a router reading the shard's
 * environment itself (router_local); each says what it knows of a
 * partition through a lookup function.
 *
 * Partitions touched: a key's partition by the binding's partitioner; with
 * `partitioner: none`, and for Hgetall, Hscan and Hlen, every partition
 * the shard owns (p % shards == shard).
 *
 * The verdict kept is the worst (catching up > ahead > starting > behind
 * > serve), with the partition that gave it, so an answer can name it.
 * Positions are looked up by binary search in the request's token (its
 * entries of the binding's topic, already in partition order: tokens are
 * canonical), so a read of many keys costs n log m, never n * m. Only
 * entries of partitions the topic has are collected: the memory a read
 * takes is bounded by the topic's partition count, whatever the token.
 */
#ifndef KVS_FRESHREQ_H
#define KVS_FRESHREQ_H

#include "kvs_config.h"
#include "kvs_fresh.h"
#include "kvs_msg.h"
#include "kvs_pos.h"

#include <stddef.h>
#include <stdint.h>

/* What this copy knows of partition `p` of b's topic: fills *out and
 * returns 0, or returns nonzero when the copy does not own `p` (then
 * nothing about it holds a read back). */
typedef int (*kvs_freshreq_lookup_fn)(void *arg, const kvs_binding_t *b, uint32_t p,
                                      kvs_fresh_part_t *out);

typedef struct kvs_freshreq_s {
    /* the read's setting (kvs_freshreq_init, and the request's options) */
    const kvs_binding_t *b;
    uint32_t partitions; /* of b's topic */
    uint32_t shard, shards;
    uint64_t max_lag;
    kvs_freshreq_lookup_fn lookup;
    void *arg;
    /* Optional (NULL after init): told of every partition the walk finds
     * ahead of its end, not only the worst one, so a copy can ask about
     * them all at once. */
    void (*ahead)(void *arg, const kvs_binding_t *b, uint32_t p);
    const kvs_pos_entry_t *pos; /* min_position entries of b's topic, by partition */
    size_t npos;
    int stale; /* accept_stale */
    /* the outcome: the worst verdict so far, and on which partition */
    kvs_fresh_verdict_t verdict;
    uint32_t partition;
    uint64_t count;         /* lag, or records missing */
    int64_t need;           /* the offset the read needs there (-1: none) */
    kvs_fresh_part_t state; /* the partition's state as looked up */
} kvs_freshreq_t;

/* Whether the rules hold back a read `cmd`: every read kvs_reads answers,
 * Hlen too (a count of a table still catching up is as stale as its
 * rows; it touches every partition the shard owns). The worker and the
 * router's local reads ask the same. */
int kvs_freshreq_applies(Kvs__CommandRequest__CommandCase cmd);

/* Starts a check of a read of b's table on `shard` (verdict: serve). */
void kvs_freshreq_init(kvs_freshreq_t *c, const kvs_config_t *cfg, uint32_t shard,
                       const kvs_binding_t *b, kvs_freshreq_lookup_fn lookup, void *arg);

/* Checks every partition a decoded, valid read (Hget Hexist Hmget Hmexist
 * Hgetall Hscan Hlen) touches, with its min_position and accept_stale.
 * Returns 0 or -ENOMEM (`arena` holds the positions collected). */
int kvs_freshreq_request(kvs_freshreq_t *c, const Kvs__CommandRequest *req, kvs_arena_t *arena);

/* Checks the partition(s) of one key (c->pos and c->stale as set). */
void kvs_freshreq_key(kvs_freshreq_t *c, const void *key, size_t len);

/* Checks one partition. */
void kvs_freshreq_partition(kvs_freshreq_t *c, uint32_t p);

#endif

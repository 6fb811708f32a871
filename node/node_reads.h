/*
 * node_reads: reads of tables bound to a Kafka topic, under the freshness
 * rules (kvs_fresh): the catch-up gate and minimum positions.
 *
 * For each partition a read touches (its keys' partitions; every partition
 * this shard owns for Hgetall and Hscan, and for a table whose
 * partitioner is none) the worker decides with kvs_fresh_decide:
 *
 *  - catching up (lag > kafka.max_lag, stale data not accepted): 503
 *    "catching up: lag N" at once;
 *  - behind the read's min_position: the read waits (a node_slot) until
 *    ingestion has applied that far, at most node_wait_ms, then 503
 *    "behind by N records";
 *  - past the end of the partition as this worker knows it: the brokers
 *    are asked where it ends (node_ingest_ask_end; a record another writer
 *    just had acknowledged may not have reached a fetch yet), and the read
 *    waits for their answer: behind the new end, it waits as above; still
 *    past it, 503 "position ahead of the topic";
 *  - otherwise it is served at once, by the ordinary command handler.
 *
 * A waiting read is re-checked after every commit of ingested records and
 * every answer from the brokers, and served (in full, the gate included)
 * once nothing holds it back.
 * Its request bytes are kept until then, counted against the client's
 * output limits through the slot.
 */
#ifndef NODE_READS_H
#define NODE_READS_H

#include "kvs_config.h"
#include "kvs_msg.h"
#include "node_ingest.h"
#include "node_slot.h"

#include <uv.h>

typedef struct node_reads_s node_reads_t;

/* Executes a request now, without the freshness checks, appending one
 * answer frame to `out`. Returns 0 or -ENOMEM. */
typedef int (*node_reads_exec_cb)(void *arg, const uint8_t *payload, size_t len, kvs_buf_t *out);

typedef struct node_reads_opts_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg;
    uint32_t shard;
    node_ingest_t *ingest; /* NULL when Kafka is off */
    node_reads_exec_cb exec;
    void *exec_arg;
} node_reads_opts_t;

/* Returns 0 and *out, or -ENOMEM. */
int node_reads_new(const node_reads_opts_t *o, node_reads_t **out);

/* A decoded, valid read (Hget Hexist Hmget Hmexist Hgetall Hscan) of the
 * table bound by `b`, whose wire bytes are payload[0..len). Returns 0 when
 * it may be served now (the caller executes it), 1 when it was answered
 * here (503 appended to `out`) or taken to wait (through `defer`; nothing
 * appended), or -ENOMEM. `arena` is the caller's per-request scratch. */
int node_reads_admit(node_reads_t *rd, const kvs_binding_t *b, const Kvs__CommandRequest *req,
                     const uint8_t *payload, size_t len, node_defer_fn defer, void *defer_arg,
                     kvs_arena_t *arena, kvs_buf_t *out);

/* The fast path's check of a read of one key with no request options:
 * returns 0 when it may be served now, -EAGAIN when not (the caller then
 * takes node_reads_admit, which answers or waits). */
int node_reads_admit_key(node_reads_t *rd, const kvs_binding_t *b, const void *key, size_t klen);

/* After each turn's commit: serves (or refuses) the waiting reads that no
 * longer wait. */
void node_reads_turn(node_reads_t *rd);

/* Answers every waiting read 503 (the worker is stopping) and closes the
 * timer. Free with node_reads_free after the loop ran. */
void node_reads_stop(node_reads_t *rd);
void node_reads_free(node_reads_t *rd);

#endif

/*
 * node_writes: log-first writes. A write to a table bound to a Kafka topic
 * (Hset, Hmset, Hdel, Hmdel) is not applied to LMDB here: the worker
 * produces one record per key to the topic, on the partition placement
 * gives the key (the binding's partitioner), and answers only once Kafka
 * acknowledged every record (acks=all) AND the worker's own ingestion
 * applied them and committed the LMDB transaction holding them. The
 * answer is what a direct write answers (the previous value of each key,
 * as the apply saw it) plus the write's position (for each partition, the
 * offset of its record). So the topic is the table's only writer, every
 * copy of it applies the same records in the same order, and a record's
 * effect reaches LMDB only through ingestion, exactly once.
 *
 * Payloads follow the binding's format: `string` takes only text values,
 * `raw` only binary ones, `value` any Value (the encoded Value is the
 * payload); anything else is refused with 400 naming the format. A delete
 * is a tombstone. Records carry a header naming this worker incarnation
 * and request, which is how ingestion recognizes them (node_ingest_own_t).
 *
 * Failure answers say what is known: a record Kafka did not acknowledge
 * (broker down, message timeout) gets 503 "may or may not have happened",
 * as any Kafka producer would say; one acknowledged but not yet applied
 * when the wait ends gets 503 with its position (it will be applied; a
 * read with that position sees it).
 */
#ifndef NODE_WRITES_H
#define NODE_WRITES_H

#include "kvs_config.h"
#include "kvs_msg.h"
#include "node_ingest.h"
#include "node_slot.h"
#include "node_store.h"

#include <uv.h>

typedef struct node_writes_s node_writes_t;

typedef void (*node_writes_fatal_cb)(void *arg, const char *msg);

typedef struct node_writes_opts_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg;
    uint32_t shard;
    size_t max_frame;
    node_store_t *store;
    node_ingest_t *ingest;
    node_writes_fatal_cb on_fatal; /* the producer failed for good: restart */
    void *arg;
} node_writes_opts_t;

/* Creates the producer and hooks into ingestion. Returns 0 and *out, or
 * KVS_ECONFIG (err says which kafka.properties entry librdkafka refused)
 * or another error; *out is then set too and must be freed. */
int node_writes_start(const node_writes_opts_t *o, node_writes_t **out, char *err, size_t errlen);

/* A decoded, valid Hset, Hmset, Hdel or Hmdel of the table bound by `b`.
 * Always answers: a 400/413/503 appended to `out` at once, or later
 * through a slot taken with `defer`. Nothing is sent to Kafka when
 * `wanted` (NULL: always) says its sender no longer waits. Returns 0 or
 * -ENOMEM. */
int node_writes_request(node_writes_t *wr, const kvs_binding_t *b, const Kvs__CommandRequest *req,
                        node_defer_fn defer, node_wanted_fn wanted, void *defer_arg,
                        kvs_arena_t *arena, kvs_buf_t *out);

/* After each turn's commit (and node_ingest_turn_done): writes whose
 * records are now committed are answered. */
void node_writes_turn(node_writes_t *wr);

/* Refuses new writes (503) from now on; writes in flight still complete. */
void node_writes_drain(node_writes_t *wr);

/* Answers every waiting write 503, stops the producer and closes handles.
 * Free after the loop ran. */
void node_writes_stop(node_writes_t *wr);
void node_writes_free(node_writes_t *wr);

#endif

/*
 * node_produce: the worker's Kafka producer, for writes to bound tables.
 * With node_ingest.c and node_kafka.c, the only files that include rdkafka.h; librdkafka's
 * types and error codes stay inside, callers see plain C and KVS_E* codes.
 *
 * One idempotent producer per worker (acks=all, so a record is
 * acknowledged once every in-sync replica has it, and retries never write
 * it twice), writing each record to the partition the caller chose (kvs
 * places keys itself, exactly as the binding's partitioner does). Every
 * record carries a header "kvs.writer" = 16 bytes the caller gives (which
 * worker incarnation and request wrote it), so the worker can recognize its
 * own records when ingestion reads them back.
 *
 * Delivery reports arrive on the loop thread (the producer's event queue
 * wakes a uv_poll), exactly one per record sent: acknowledged with its
 * partition and offset, or failed with librdkafka's reason (a timeout
 * after message.timeout.ms, a fatal producer error, a purge at stop). A
 * failed report does not mean the record is absent from the topic: the
 * broker may have written it and the acknowledgement been lost.
 */
#ifndef NODE_PRODUCE_H
#define NODE_PRODUCE_H

#include "kvs_config.h"
#include "kvs_record.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct node_produce_s node_produce_t;

/* The delivery report of one record. */
typedef struct node_delivery_s {
    void *opaque;    /* as given to node_produce_send */
    int ok;          /* acknowledged by Kafka (acks=all) */
    const char *why; /* !ok: what librdkafka said */
    int not_written; /* !ok: Kafka certainly does not have the record (librdkafka's
                      * RD_KAFKA_MSG_STATUS_NOT_PERSISTED: never sent, or refused) */
    int too_large;   /* !ok: refused for its size (the broker's message.max.bytes) */
    int32_t partition;
    int64_t offset;  /* ok: the record's offset; -1 if the broker did not say */
    const void *key; /* the record as produced (valid during the callback) */
    size_t key_len;
    const void *payload; /* NULL: a tombstone */
    size_t len;
    const void *record; /* librdkafka's message, for node_ingest_apply_delivered only */
} node_delivery_t;

typedef void (*node_delivery_cb)(void *arg, const node_delivery_t *d);

/* The producer hit an error it cannot recover from (librdkafka's fatal
 * errors of the idempotent producer): every later send fails, so the
 * worker should stop and be restarted. `msg` says what happened. */
typedef void (*node_produce_fatal_cb)(void *arg, const char *msg);

typedef struct node_produce_opts_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg;
    uint32_t shard;
    node_delivery_cb on_delivery;
    node_produce_fatal_cb on_fatal;
    void *arg;
} node_produce_opts_t;

/* The message.timeout.ms kvs gives the producer under `cfg` (unless
 * kafka.properties sets its own): just under node_wait_ms, so a record is
 * acknowledged or given up by the time the worker answers. */
uint64_t node_produce_timeout_ms(const kvs_config_t *cfg);

/* Creates the producer: kvs's defaults (enable.idempotence, acks=all,
 * linger.ms=0, message.timeout.ms node_produce_timeout_ms, a 64 MiB queue),
 * then kafka.properties, which win. Returns 0, or KVS_ECONFIG with err
 * saying which property librdkafka refused. */
int node_produce_start(const node_produce_opts_t *o, node_produce_t **out, char *err,
                       size_t errlen);

/* Sends one record (key and payload are copied; payload NULL: a
 * tombstone) to partition `partition` of `b`'s topic, with `id` in its
 * header. Returns 0: exactly one delivery report will follow. Otherwise
 * nothing was sent and none follows: KVS_ELIMIT (the producer's queue is
 * full), KVS_ETOOBIG (larger than message.max.bytes), KVS_ECLOSED
 * (stopping, or the producer failed for good), KVS_EINVAL (topic or
 * partition unknown to the brokers); `why` says it in words. */
int node_produce_send(node_produce_t *pr, const kvs_binding_t *b, int32_t partition,
                      const void *key, size_t klen, const void *payload, size_t len,
                      const uint8_t id[KVS_RECORD_ID_LEN], void *opaque, char *why, size_t whylen);

/* Whether a record of a `klen`-byte key and a `len`-byte payload (with
 * kvs's header) fits the producer's message.max.bytes as librdkafka counts
 * it: node_produce_send refuses a larger one with KVS_ETOOBIG. *size gets
 * the record's size so counted, *max the limit. */
int node_produce_fits(const node_produce_t *pr, size_t klen, size_t len, size_t *size, size_t *max);

struct rd_kafka_s;

/* The producer's librdkafka handle, lent for requests to the brokers that
 * must not queue behind the consumer's parked fetch (node_ingest_set_asker).
 * Valid until node_produce_free. */
struct rd_kafka_s *node_produce_kafka(node_produce_t *pr);

/* Records sent whose delivery report has not come yet. */
size_t node_produce_outstanding(const node_produce_t *pr);

/* Stops: records still queued or in flight are purged (their reports say
 * so, from this call) and the poll handle closes. Free after the loop ran. */
void node_produce_stop(node_produce_t *pr);
void node_produce_free(node_produce_t *pr);

#endif

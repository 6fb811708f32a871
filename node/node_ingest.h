/*
 * node_ingest: materializes the Kafka partitions a shard owns into its LMDB
 * environment. With node_produce.c (the producer of log-first writes) and
 * node_kafka.c (their client configuration), the only file that includes
 * rdkafka.h.
 *
 * Exactly once: a batch of records and, per partition touched, the next
 * offset plus applied/skipped/misplaced counters are written in the same LMDB txn (the
 * worker's turn batch). On start the worker resumes from those offsets. A
 * batch that fails to commit is re-read from Kafka. Offsets are also
 * committed to the consumer group, after LMDB, for standard lag tooling.
 *
 * Writes to bound tables reach LMDB only through here too: node_writes
 * produces them and recognizes them when they are applied (claims), and
 * one acknowledged while it is its partition's next record is applied on
 * the spot (node_ingest_apply_delivered), in the same way, offsets and all.
 */
#ifndef NODE_INGEST_H
#define NODE_INGEST_H

#include "kvs_config.h"
#include "kvs_fresh.h"
#include "kvs_metrics.h"
#include "kvs_record.h"
#include "kvs_resp.h"
#include "kvs_shardstate.h"
#include "node_store.h"

#include <uv.h>

typedef struct node_ingest_s node_ingest_t;

/* A start-up check failed (e.g. a topic's partition count differs from the
 * configured one): the worker must not run. `msg` says what to change. */
typedef void (*node_ingest_fatal_cb)(void *arg, const char *msg);

typedef struct node_ingest_opts_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg;
    uint32_t shard;
    node_store_t *store;
    /* The state page routers read (NULL: none): kept up to date with the
     * end and start offsets of every owned partition (after turns, at most
     * every 50 ms; at once for this worker's own records), the settling
     * deadline, and a heartbeat every second. */
    kvs_shardstate_t *state;
    node_ingest_fatal_cb on_fatal;
    /* The brokers answered (or failed) a node_ingest_ask_end query: reads
     * that waited for it may decide now. NULL: nobody listens. */
    void (*on_answer)(void *arg);
    int ask_timeout_ms; /* how long one such query may take (0: 1000) */
    /* This worker replaces one that exited while the node ran (kvs-node
     * --spawn N, N > 0): a bound topic whose partition count no longer
     * matches its binding is then refused as when it grows while a worker
     * runs, not fatal (the node serves on; see node_ingest.c). */
    int restarted;
    void *arg;
} node_ingest_opts_t;

/* Creates the consumer and starts, in the background, the metadata check
 * and assignment of every partition this shard owns. Returns 0, or
 * KVS_ECONFIG with err saying which property librdkafka refused. */
int node_ingest_start(const node_ingest_opts_t *o, node_ingest_t **out, char *err, size_t errlen);

/* Called after each turn's commit attempt (rc = node_store_end_turn's). */
void node_ingest_turn_done(node_ingest_t *in, int rc);

/* Appends Info pairs (sorted by key) describing every owned partition:
 * kafka.<topic>.<partition>.{applied,end_offset,ingested,lag,misplaced,next_offset,serving,
 * skipped}. ingested: records this process took from Kafka (applied counts
 * every record the environment ever applied, a snapshot's included).
 * serving is 1 when the partition serves reads (lag unknown or within
 * kafka.max_lag; kvs_fresh), 0 while it catches up.
 * next_offset is the offset of the next record to apply; before the
 * partition gave any, where ingestion starts (its first offset, or its end
 * with auto.offset.reset latest). end_offset, lag and a next_offset not
 * stored yet are -1 while the brokers have not told them. */
void node_ingest_info(node_ingest_t *in, kvs_resp_t *r);

/* How long after start a partition whose end offset was not heard yet
 * counts as settling (kvs_fresh: no reads until the lag is known). Long
 * enough for reachable brokers to answer; a worker whose brokers stay
 * unreachable serves what it has after it. */
#define NODE_INGEST_SETTLE_MS 2000

/* The freshness of partition `p` of binding `b`'s topic as this worker
 * sees it: next = the offset of the next record to apply (see Info's
 * next_offset), end = the end offset as last heard (-1 either when not
 * known; at least past this worker's own acknowledged records), settling
 * while the end was not heard in the first NODE_INGEST_SETTLE_MS. Returns 0, or KVS_ENOTFOUND when
 * this shard does not own it. */
int node_ingest_fresh(node_ingest_t *in, const kvs_binding_t *b, uint32_t p, kvs_fresh_part_t *out);

/* A record this worker produced was acknowledged at `offset` of
 * partition `p`: the partition reaches at least past it (a read may wait
 * for it before a fetch reports the new end). */
void node_ingest_note_produced(node_ingest_t *in, const kvs_binding_t *b, uint32_t p,
                               int64_t offset);

/* Asks the brokers, in the background, where partition `p` of `b`'s
 * topic ends (its high watermark, ListOffsets): for a read whose position
 * is past the end this worker has heard of. The fetches tell the end only
 * as often as they return, so a record another writer just appended can be
 * in the topic, acknowledged, and still unknown here. One query runs at a
 * time, for every partition asked since the previous one started; the
 * answer raises the end node_ingest_fresh reports, and on_answer is called.
 * Returns a ticket for node_ingest_answered, or 0 when it cannot ask (the
 * shard does not own the partition, ingestion stops, or a question went
 * unanswered less than 5 s ago: the brokers are unreachable, and the read
 * is refused at once rather than held for another whole timeout). */
uint64_t node_ingest_ask_end(node_ingest_t *in, const kvs_binding_t *b, uint32_t p);

/* Puts partition `p` into the next node_ingest_ask_end query without
 * starting one: a read ahead on several partitions marks them all, then
 * asks once. Returns 1 when marked, 0 when it cannot ask (as above). */
int node_ingest_want_end(node_ingest_t *in, const kvs_binding_t *b, uint32_t p);

struct rd_kafka_s;

/* How long each later request to the brokers about where partitions end
 * or start may take, as node_ingest_opts_t's ask_timeout_ms: a reload of
 * router.timeout. A request already sent keeps the bound it was sent with. */
void node_ingest_set_ask_timeout(node_ingest_t *in, int ms);

/* The handle node_ingest_ask_end queries through (NULL: the consumer's
 * own). On the consumer's handle a query waits on the broker connection
 * behind the fetch the broker holds (up to fetch.wait.max.ms); the
 * producer's (node_produce_kafka) answers in a round trip. It must stay
 * valid while the loop runs (queries run only then). */
void node_ingest_set_asker(node_ingest_t *in, struct rd_kafka_s *rk);

/* Whether the query that answers `ticket` (one started after the ask) has
 * come back, answered or failed. */
int node_ingest_answered(const node_ingest_t *in, uint64_t ticket);

/* The committed next offset of partition `p` of `b`'s topic (every record
 * below it is in LMDB), or -1 when none is stored or the shard does not
 * own it. Up to date after node_ingest_turn_done. */
int64_t node_ingest_committed(node_ingest_t *in, const kvs_binding_t *b, uint32_t p);

/* Compares the Kafka cluster the brokers are now with the one each
 * topic's records came from (as every batch applied does): a write checks
 * before it produces. */
void node_ingest_check_cluster(node_ingest_t *in);

/* Why binding b's table is refused as a whole: its brokers are another
 * Kafka cluster than the one its records came from (every partition of it
 * this worker owns diverged); NULL when they are not. The text starts with
 * NODE_INGEST_DIVERGED. */
#define NODE_INGEST_DIVERGED "diverged: "
const char *node_ingest_moved(node_ingest_t *in, const kvs_binding_t *b);

/* Why partition `p` of `b`'s topic is halted (no longer ingested: its
 * log diverged from this shard's data, or records were deleted before they
 * were applied and auto.offset.reset is error), or may be (the brokers say
 * its log ends below what this shard applied, and the check whether it
 * diverged has not decided yet), as words for an answer; NULL when
 * neither. Writes to it are refused: they would never be applied. */
const char *node_ingest_halted(node_ingest_t *in, const kvs_binding_t *b, uint32_t p);

/* Whether this shard moved partition p of b's topic past `offset` without
 * applying it: records deleted before it read them, where
 * auto.offset.reset (earliest, latest) resumed past them (logged as DATA
 * LOST). Such a record is never applied here (until a rebuild). */
int node_ingest_passed(node_ingest_t *in, const kvs_binding_t *b, uint32_t p, int64_t offset);

/* 1 while the brokers say partition `p`'s log ends below what this shard
 * applied and the check whether it diverged has not decided: its reads
 * are refused as a diverged partition's (kvs_fresh_part_t.diverged), with
 * other words. */
int node_ingest_log_short(node_ingest_t *in, const kvs_binding_t *b, uint32_t p);

/* Rebuilds `b`'s table from its topic (the Rebuild command): in the turn's
 * batch, empties the table and stores "from the log's start"
 * (KVS_SCHEMA_NEXT_FROM_START) as the offsets of every partition of the
 * topic this shard owns (one reservation: all or none),
 * then reads them again from their logs' first records, diverged ones
 * included. *restarted gets the number of partitions. Returns 0,
 * -ESHUTDOWN while stopping, or a store error (nothing changed). */
int node_ingest_rebuild(node_ingest_t *in, const kvs_binding_t *b, uint32_t *restarted);

/* The partition count `b`'s topic has now, when a check while running
 * found it is no longer the one the table is placed by (partitions were
 * added), else 0. Reads (kvs_fresh) and writes of the table are refused
 * then: nothing kvs could answer is right. */
uint32_t node_ingest_resized(node_ingest_t *in, const kvs_binding_t *b);

/* The words of that refusal, for an answer or the log: the topic, both
 * counts and what to do. Writes them into buf[0..len) (NUL-terminated)
 * and returns buf. */
const char *node_ingest_resized_message(const kvs_binding_t *b, uint32_t now, uint32_t placed,
                                        char *buf, size_t len);

/* True when this worker ingests partition `p` of `b`'s topic (it owns it,
 * and ingestion is not stopping), so it will apply its own writes to it.
 * Ingestion need not have started yet: records written before it starts
 * are read like any others (from the stored offsets, or from the start
 * with auto.offset.reset earliest; with latest and nothing stored, a
 * partition is read from where it ends when ingestion starts, as for any
 * producer's records). */
int node_ingest_writable(node_ingest_t *in, const kvs_binding_t *b, uint32_t p);

/* ---- this worker's own records (log-first writes, node_writes) ---------- */

typedef struct node_ingest_own_s {
    /* A record carrying header `id`, key and payload (NULL: a tombstone)
     * is about to be applied at (partition, offset) in batch `gen`:
     * returns the buffer that receives the value it replaces (an encoded
     * Value, left empty when the key had none), or NULL when no write
     * waits for it (any producer can send any header: a record is a
     * write's only if it is the record the write sent). Sets *lengths
     * (KVS_VALUES_*) when the write answers previous values as lengths
     * (value_lengths) or presence (presence_only): the buffer then
     * receives only that (kvs_reads_stored_length), never a value however
     * large. */
    kvs_buf_t *(*claim)(void *arg, const uint8_t *id, int32_t partition, int64_t offset,
                        uint64_t gen, const void *key, size_t klen, const void *payload, size_t len,
                        int *lengths);
    const size_t *outstanding; /* records produced and not settled: 0 = skip headers */
    /* A partition stopped being applied (node_ingest_halted now names it),
     * or resumed past records deleted unread (node_ingest_passed): the
     * records waiting to be applied there may never be. Called from
     * inside node_ingest's calls (the owner's own included): defer the
     * work. May be NULL. */
    void (*halted)(void *arg);
    void *arg;
} node_ingest_own_t;

void node_ingest_set_own(node_ingest_t *in, const node_ingest_own_t *own);

/* A record this worker produced was acknowledged; `record` is librdkafka's
 * delivered message (node_delivery_t.record, opaque here). If it is the
 * next record of its partition, applies it now, in the turn's batch, as
 * ingestion would (claim included): returns 1. Returns 0 when ingestion
 * will apply it when it reads it (records before it are not applied yet,
 * or ingestion is not running), or a store error. */
int node_ingest_apply_delivered(node_ingest_t *in, const void *record);

/* The consumer group this node commits offsets to (malloc'd, NULL when
 * out of memory): kafka.group_id, or "<group_id>.<node.name>" when the
 * node has a name, so that every replica of a shard has its own group and
 * lag tools show each one. */
char *node_ingest_group(const kvs_config_t *cfg);

/* Adds the per-partition families (kvs_partition_*, labelled shard, topic
 * and partition: applied, skipped and misplaced records, next and end
 * offsets, lag, serving) to `b`. */
void node_ingest_metrics(node_ingest_t *in, kvs_mb_t *b, const char *shard);

/* Stops consuming and closes the loop handles; the consumer is destroyed by
 * node_ingest_free after the loop ran. */
void node_ingest_stop(node_ingest_t *in);
void node_ingest_free(node_ingest_t *in);

#endif

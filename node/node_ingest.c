/*
 * node_ingest: Kafka -> LMDB, partition-aligned and exactly once.
 *
 * Ownership is placement: this shard consumes partition p of a bound topic
 * iff p % shards == shard, assigned explicitly (rd_kafka_assign; no group
 * rebalancing). At start a background metadata query (in libuv's thread
 * pool, so reads are served meanwhile) checks every bound topic's partition
 * count against the configured one: a mismatch would silently misroute
 * keys, so it is fatal with a message saying what to set, when the node
 * is starting: this is the shard's first worker (kvs-node --spawn 0) and
 * the brokers answered the first query. A worker that replaces one that
 * exited while the node ran, or whose brokers answered only later (the
 * node served meanwhile), treats a mismatch as below: the node serves on.
 *
 * While running, the same query (for the bound topics only) runs every
 * topic.metadata.refresh.interval.ms (kvs sets 30 s; -1 turns it off): a
 * topic that got more partitions meanwhile (an admin's CreatePartitions)
 * now has its producers put keys on other partitions than kvs looks them
 * up on, and the new partitions are consumed by no one. Not fatal (the
 * other tables are fine): every read and write of that table is refused
 * with 503 naming both counts (kvs_fresh RESIZED, node_ingest_resized),
 * on this worker and on routers reading its environment (the state page),
 * with one ERROR line, until kvs restarts with the new layout (later
 * answers with the old count do not lift it: see recheck_done). The owned
 * partitions are still ingested: their records are the topic's all the
 * same.
 *
 * Flow: librdkafka's threads fetch into the consumer queue; the queue's IO
 * event wakes a uv_poll on the loop thread, which drains up to
 * MAX_PER_TURN records per loop turn into the worker's write batch (the
 * same LMDB txn client writes use). For each partition touched, the record
 * after the last applied one ("next") and the applied/skipped counters go
 * into __kvs in that same txn, reserved up front so no early commit can
 * split data from its offsets. So after a crash a record is either applied
 * with its offset or neither: nothing lost, nothing applied twice.
 *
 * A batch whose commit fails (or any write of which fails: the store then
 * aborts the whole batch, so no record commits without its offset) is
 * re-read: offsets are reloaded from LMDB (the source of truth) and the
 * partitions re-assigned there after a pause that doubles while losses
 * repeat; messages fetched under the old assignment are dropped, and
 * records below a partition's next offset are ignored in any case. Every
 * bound table exists from the start (node_store_open creates it), so the
 * table limit never stops ingestion.
 *
 * After LMDB commits, a 1 s timer commits the same offsets to the consumer
 * group (asynchronously) so standard lag tools work.
 *
 * Records with no key, or a payload the binding's format rejects, are
 * skipped and counted (and logged, rate-limited): never a crash or a stall.
 * So is a record whose key and value could never be read back: every
 * answer is at most limits.max_frame, so such a pair would only make every
 * read of its key (and every Hscan over it) fail; the same bound refuses
 * it from clients (kvs_msg_pair_max).
 *
 * Every applied keyed record is also checked against the binding's
 * partitioner (node_placecheck): one that came on another partition than
 * its key's is misplaced. It is still stored, since the topic is the
 * source of truth and dropping data would be worse than not finding it by
 * key: Hscan and Hgetall show it, point reads through the router look on
 * the expected shard and miss it, and once the binding names the
 * partitioner the producers really use, it is found where it is. It is
 * counted per partition (`misplaced`, a subset of `applied`, persisted with
 * the other counters) and reported within a batch, at most every 10 s.
 *
 * This worker's own writes (node_writes, log-first) are records like any
 * others, applied here exactly once with their offsets. While some are
 * outstanding, each record's "kvs.writer" header is read as it is applied,
 * so the write waiting for it gets the value it replaced (the claim). One
 * whose acknowledgement says it is the next record of its partition is
 * applied at once through apply_batch (node_ingest_apply_delivered),
 * instead of after the consumer fetched it back; the consumer then skips
 * it as already applied.
 *
 * Freshness (node_ingest_fresh, for kvs_fresh): next, the end offset
 * (the brokers' high watermark, or past the worker's own acknowledged
 * records), and whether the partition still settles after start.
 *
 * Threads: librdkafka runs its own; everything here runs on the loop thread
 * except metadata_work, which touches only the rdkafka handle.
 */
#include "node_ingest.h"
#include "kvs_err.h"
#include "kvs_fresh.h"
#include "kvs_log.h"
#include "kvs_msg.h"
#include "kvs_reads.h"
#include "kvs_schema.h"
#include "kvs_testhook.h"
#include "node_kafka.h"
#include "node_placecheck.h"

#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BATCH 1024
#define MAX_PER_TURN 16384
#define METADATA_TIMEOUT_MS 2000
#define CHECK_DEFAULT_MS "30000" /* topic.metadata.refresh.interval.ms kvs sets */
#define TICK_MS 1000
#define REPORT_EVERY_TICKS 30
#define LOG_EVERY_MS 10000
#define RESERVE_BYTES (8u << 20) /* records applied in one reservation, at most */
#define RETRY_MIN_MS 100 /* after a lost batch, re-read after this, doubling per loss in a row */
#define RETRY_MAX_MS 10000
#define PUBLISH_EVERY_MS 50 /* Kafka knowledge to the state page, at most this often per turn */
#define RANGE_RETRY_MS 1000 /* a partition out of range is assigned again after this */
#define ASK_BACKOFF_MS 5000 /* after a question the brokers left unanswered, none for this long */

/* Why a record is skipped, for the log's rate limit (log_skip). */
typedef enum {
    SKIP_NO_KEY,
    SKIP_LONG_KEY,
    SKIP_PAYLOAD,   /* the binding's format refuses it */
    SKIP_TOO_LARGE, /* could not be read back under limits.max_frame */
    SKIP_KINDS
} skip_kind_t;

typedef struct part_s {
    int owned;
    int dirty;
    int gap_logged;
    int64_t next;       /* offset of the next record to apply */
    uint64_t applied;   /* records applied, ever */
    uint64_t skipped;   /* records skipped (no key, bad payload), ever */
    uint64_t misplaced; /* of the applied ones, those on another partition than their key's */
    uint64_t ingested;  /* records this process took from Kafka (not stored: a replica
                           bootstrapped from a snapshot shows only the tail it read) */
    uint64_t committed_ingested; /* `ingested` as of the last commit: a lost batch's records,
                                    read again, count once */
    uint64_t saved_ingested;     /* `ingested` when `next` was last saved (part_save) ... */
    uint64_t saved_gen;          /* ... in this batch, not known to be committed yet (0: none) */
    uint64_t lost;          /* records this process moved `next` over, never applied: deleted before
                               they were read (retention), or passed by auto.offset.reset latest */
    int64_t lost_to;        /* `lost` counts those below this offset: a skip made again after the
                               batch that stored it was lost counts nothing twice */
    int64_t committed_next; /* `next` as last committed to LMDB */
    int64_t group_next;     /* `next` as last committed to the consumer group */
    int64_t produced_end;   /* past this worker's own last acknowledged record; -1 none */
    int64_t asked_end;      /* the end as the brokers last answered node_ingest_ask_end; -1 */
    int64_t pass_to;        /* where the consumer reached the end (see "passed over"); -1 */
    int want_end;           /* a read asked for the end: in the next query */
    int probe_end;          /* end_probe asks: in the next query that carries no read's */
    /* uv_now when the brokers last told where it ends (a fetch delivered
     * its records, or they answered a question; see "end age"); 0 never. */
    uint64_t end_heard_ms;
    /* Its fetch position is not in the log (see "out of range" below). */
    int out_of_range; /* fetching stopped; a range check is due */
    int diverged;     /* the log ends below `next`: halted, reads refused */
    int halted;       /* records before the log's start are gone, auto.offset.reset error */
    int restart;      /* next assignment at auto.offset.reset, not at `next` */
    int64_t fetch_at; /* none stored: the offset the consumer was fetching when it went out of
                         range, so records deleted before this shard read them count (-1) */
    int from_start;   /* rebuilt: with no stored offset, start at the log's first record */
    /* Rebuilt in a batch not known to have committed yet, and what it
     * was before (restored should that batch be lost). */
    int rebuilding, was_diverged, was_halted;
    int suspect;         /* one answer said the log ends below `next`: the next one decides
                            (the next one of the same round: an assignment ends a round) */
    uint64_t suspect_ms; /* when that answer's question was asked: the next goes a second later */
} part_t;

/* One partition asked about in a ListOffsets query (list_offsets): the
 * first member of each query's own entries. */
typedef struct offq_s {
    const char *topic;
    int32_t p;
    int64_t off; /* the answer; -1 none */
} offq_t;

typedef struct topic_s {
    const kvs_binding_t *b;
    uint32_t partitions; /* expected (configured) */
    int32_t actual;      /* from the brokers; -1 = not known yet */
    int32_t seen;        /* what the metadata query in flight found (-1: not there) */
    uint32_t resized;    /* the largest count seen once not `partitions` after start, or
                          * KVS_FRESH_UNCONFIRMED until the first check; 0 */
    rd_kafka_topic_t *rkt;
    part_t *parts;           /* indexed by partition */
    node_placecheck_t check; /* are records on their keys' partitions? */
    /* uv_now of the last skip logged, per kind: a flood of one kind, or on
     * one topic, hides no other */
    uint64_t last_skip_log[SKIP_KINDS];
    /* The Kafka cluster its offsets are positions in (see "cluster"). */
    char cluster[KVS_SCHEMA_CLUSTER_ID_MAX + 1]; /* as stored; "" none known */
    int cluster_save;                            /* learned: stored with the next records */
    char *moved_why; /* the brokers are another cluster: why its reads and writes are refused */
} topic_t;

struct node_ingest_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg;
    uint32_t shard;
    node_store_t *store;
    node_ingest_fatal_cb on_fatal;
    void (*on_answer)(void *arg);
    void *arg;
    rd_kafka_t *rk;
    rd_kafka_queue_t *q;
    int pipefd[2];
    uv_poll_t poll;
    uv_idle_t idle;
    uv_timer_t timer;
    uv_timer_t retry;         /* re-assigns after a lost batch (backoff) */
    uv_timer_t range_timer;   /* re-assigns partitions found out of range */
    uv_timer_t suspect_timer; /* asks about suspects again a second after the first time */
    uint64_t range_asked_ms;  /* loop time the question in flight (range_busy) was asked */
    int range_missed;         /* a partition went out of range while it was in flight */
    uv_work_t work;
    int work_busy;
    /* The cluster ids librdkafka last took from the brokers' metadata, of
     * the consumer and of the log-first producer ("" unknown): read in the
     * thread pool (rd_kafka_clusterid allocates, and librdkafka aborts on
     * a failed allocation: never on this loop's thread), compared here. */
    char cid[2][KVS_SCHEMA_CLUSTER_ID_MAX + 1];
    char cid_meta[2][KVS_SCHEMA_CLUSTER_ID_MAX + 1]; /* metadata_work's reading */
    char cid_next[2][KVS_SCHEMA_CLUSTER_ID_MAX + 1]; /* cid_work's reading */
    rd_kafka_t *cid_rk[2];                           /* the handles cid_work reads */
    uv_work_t cid_work;
    int cid_busy;
    int cid_stale;          /* a reading or a topic's stored id changed: compare again */
    int checked;            /* the start-up check passed: later ones are rechecks */
    int serving;            /* the node served before the start-up check's answer (this
                             * worker restarted, or the check waited for the brokers): a
                             * mismatch is then refused as a resize, not fatal */
    uint64_t check_ms;      /* check partition counts this often once running; 0: never */
    uint64_t last_check_ms; /* uv_now when the last check started */
    uint64_t last_probe_ms; /* uv_now when end_probe last ran (see "end age") */
    /* Test hook (KVS_TEST_TOPIC_PARTITIONS_FILE, test builds only): lines
     * "TOPIC N" in this file stand for what the brokers say of TOPIC's
     * partition count. NULL = off. */
    const char *counts_file;
    topic_t *topics; /* sorted by topic name */
    size_t n_topics;
    int assigned;
    int stopping;
    /* A group offset commit awaits on_commit. */
    int commit_unanswered;
    int64_t reset_offset;   /* where a partition with no stored offset starts */
    int reset_error;        /* the user's auto.offset.reset is "error" */
    uint64_t pending_gen;   /* first batch generation holding unconfirmed records */
    int stored_some;        /* settle_counts found saved offsets committed, this turn */
    size_t n_owned;         /* partitions this shard owns, over all topics */
    int rewind;             /* a batch was lost: reload offsets, re-assign */
    int passes;             /* some part_t's pass_to is set (see "passed over") */
    int rewind_err;         /* why */
    unsigned losses;        /* batches lost in a row */
    unsigned long unlogged; /* batches lost since the last line saying so */
    unsigned ticks;
    uint64_t last_err_log, last_loss_log;
    kvs_buf_t scratch; /* encoded Value of the record being applied */
    kvs_arena_t arena;
    /* Test hook (KVS_TEST_INGEST_DELAY_MS, test builds only): apply one
     * record at a time, each no sooner than throttle_ms after it was taken
     * from the queue and after the one before. 0 = off. */
    uint64_t throttle_ms;
    rd_kafka_message_t *throttled; /* taken from the queue, not applied yet */
    uint64_t throttled_at, last_apply;
    uv_timer_t throttle_timer;
    /* Test hook (KVS_TEST_RANGE_SHORT_ANSWERS, test builds only): this
     * many of the next answers to range questions say the log ends where
     * it starts, as a broker that lags behind may. 0 = off. */
    unsigned long short_answers;
    /* Test hook (KVS_TEST_LOSE_SKIPS, test builds only): the batches of
     * this many of the next skips (records gone before they were read)
     * fail, as a full or failing disk would make them. 0 = off. */
    unsigned long lose_skips;
    /* Test hook (KVS_TEST_ASKS_UNANSWERED, test builds only): this many of
     * the next end questions go unanswered, as the brokers' would when out
     * of reach, without asking them. 0 = off. */
    unsigned long unanswered;
    /* Test hook (KVS_TEST_REFUSE_RESERVATION, test builds only): the
     * reservation of records with this ordinal (1 = the first) is refused
     * as a disk without room refuses it, once. 0 = off. */
    uint64_t refuse_at, reservations;
    /* Test hook (KVS_TEST_FAIL_RECORD, test builds only): the record with
     * this ordinal (1 = the first applied) fails once, before it writes
     * anything, as a failed allocation would. 0 = off. */
    uint64_t fail_record, records;
    node_ingest_own_t own;    /* this worker's own records (log-first writes) */
    char *group;              /* the consumer group offsets are committed to */
    uint64_t started_ms;      /* uv_now at start: partitions settle for NODE_INGEST_SETTLE_MS */
    kvs_shardstate_t *state;  /* the state page routers read, or NULL */
    uint64_t published_ms;    /* when the state page was last brought up to date */
    uv_timer_t publish_timer; /* a commit's publish PUBLISH_EVERY_MS put off: it comes then */
    /* Asking the brokers for end offsets (node_ingest_ask_end): one query
     * at a time in the thread pool, for every partition asked since the
     * last one started. */
    uv_work_t ask_work;
    int ask_busy;
    uint64_t ask_started, ask_done; /* queries started, and answered or failed */
    uint64_t ask_failed_ms;         /* uv_now when a query last went unanswered; 0 never */
    rd_kafka_t *asker;              /* the handle they go through (NULL: rk) */
    int one_cluster; /* test hook: cluster ids not compared (each mock has its own) */
    /* How long a query may take (node_ingest_set_ask_timeout): read by the
     * thread pool as each query starts, set by a reload on the loop. */
    _Atomic int ask_timeout_ms;
    struct ask_s {
        offq_t q; /* q.off: the end */
        part_t *part;
    } * asks;
    size_t n_asks;      /* of the query in flight */
    int ask_unanswered; /* ... which the test hook leaves unanswered */
    int ask_probe;      /* ... which is end_probe's alone (see "end age") */
    /* Asking where the logs of partitions out of range start and end: one
     * query at a time, in the thread pool. */
    uv_work_t range_work;
    int range_busy;
    struct range_s {
        offq_t q;
        topic_t *t;
        int64_t lo, hi; /* the answer; -1 none */
    } * ranges;
    size_t n_ranges; /* of the query in flight */
};

static void ingest_assign(node_ingest_t *in);
static void on_idle(uv_idle_t *h);
static void publish(node_ingest_t *in);

/* A commit published nothing, the page having been brought up to date
 * less than PUBLISH_EVERY_MS before: it is now, so the page is never more
 * than that behind what was committed, even when that commit was the
 * last of a burst. */
static void on_publish_timer(uv_timer_t *h)
{
    publish(h->data);
}
static int part_short(node_ingest_t *in, const topic_t *t, int32_t p);

/* ---- metadata keys ------------------------------------------------------ */

/* The per-partition record in __kvs (kvs_schema: next, applied, skipped,
 * misplaced; routers reading the environment decode it too). */
static void meta_key(char *buf, size_t len, const topic_t *t, int32_t p)
{
    kvs_schema_offsets_key(buf, len, t->b->topic, p);
}

/* Loads next/applied/skipped/misplaced of a partition from LMDB (committed
 * state), and whether it was rebuilt and has applied nothing since. */
static void part_load(node_ingest_t *in, topic_t *t, int32_t p)
{
    char key[KVS_SCHEMA_OFFSETS_KEY_MAX];
    node_slice_t v;
    kvs_schema_offsets_t o;
    part_t *pt = &t->parts[p];
    meta_key(key, sizeof(key), t, p);
    if (node_store_meta_get(in->store, key, &v) == 0 &&
        kvs_schema_offsets_decode(v.p, v.len, &o) == 0) {
        pt->from_start = o.next < 0; /* KVS_SCHEMA_NEXT_FROM_START */
        pt->next = o.next < 0 ? -1 : o.next;
        pt->applied = o.applied;
        pt->skipped = o.skipped;
        pt->misplaced = o.misplaced;
    } else {
        pt->from_start = 0;
        pt->next = -1; /* none stored: start at auto.offset.reset */
        pt->applied = pt->skipped = pt->misplaced = 0;
    }
    pt->fetch_at = -1;
    pt->committed_next = pt->next;
    pt->dirty = 0;
}

static int part_save(node_ingest_t *in, topic_t *t, int32_t p)
{
    char key[KVS_SCHEMA_OFFSETS_KEY_MAX];
    uint8_t v[KVS_SCHEMA_OFFSETS_LEN];
    part_t *pt = &t->parts[p];
    kvs_schema_offsets_t o = {pt->next, pt->applied, pt->skipped, pt->misplaced};
    meta_key(key, sizeof(key), t, p);
    kvs_schema_offsets_encode(v, &o);
    pt->dirty = 0;
    int rc = node_store_meta_put(in->store, key, v, sizeof(v));
    if (rc == 0) { /* what the offsets count, once their batch commits (settle_counts) */
        pt->saved_ingested = pt->ingested;
        pt->saved_gen = node_store_batch_gen(in->store);
    }
    return rc;
}

/* ---- cluster: the Kafka cluster a topic's offsets belong to ------------------------- *
 *
 * Offsets are positions in one cluster's log. Brokers that become another
 * cluster (kafka.brokers pointed at a disaster-recovery copy, whose
 * offsets are its own; a broker replaced by a new cluster at the same
 * address) hold other records at the same offsets: a partition whose new
 * log is at least as long as what was applied would resume at the stored
 * offset and mix two logs, found by no range check. So each topic stores
 * the id of the cluster its records came from ("cluster/<topic>", with
 * the first records applied under it), and every batch first compares it
 * with the cluster the consumer (and, for log-first writes, the producer)
 * was last read (every tick, in the thread pool) to be connected to, as
 * does every log-first write before it produces. librdkafka keeps the id the brokers' metadata last
 * reported; it may fetch from a new cluster's broker before it reads that cluster's metadata (a
 * consumer learns its group coordinator's address without any), so records of the new cluster can
 * be applied before the check sees the change: the verdict then covers them too (the table is never
 * served as current again until rebuilt). Another id makes the topic's partitions diverged, as a
 * log that ends below what was applied does: not ingested, reads and writes refused, until a
 * Rebuild reads the topic from the new cluster's start. Brokers too old to report an id are not
 * compared; a topic stored by an earlier kvs takes the id of the cluster it finds at its first
 * records. */

static void cluster_load(node_ingest_t *in, topic_t *t)
{
    char key[KVS_SCHEMA_OFFSETS_KEY_MAX];
    node_slice_t v;
    t->cluster[0] = '\0';
    t->cluster_save = 0;
    in->cid_stale = 1;
    if (kvs_schema_cluster_key(key, sizeof(key), t->b->topic) >= 0 &&
        node_store_meta_get(in->store, key, &v) == 0 && v.len <= KVS_SCHEMA_CLUSTER_ID_MAX) {
        memcpy(t->cluster, v.p, v.len);
        t->cluster[v.len] = '\0';
    }
}

static int cluster_save(node_ingest_t *in, topic_t *t)
{
    char key[KVS_SCHEMA_OFFSETS_KEY_MAX];
    if (kvs_schema_cluster_key(key, sizeof(key), t->b->topic) < 0)
        return 0; /* cannot be: the topic's offsets keys are longer */
    t->cluster_save = 0;
    return node_store_meta_put(in->store, key, t->cluster, strlen(t->cluster));
}

static void on_range_timer(uv_timer_t *h);

/* A partition of this shard's stopped being applied: tells the owner of
 * the writes that wait for it. */
static void own_halted(node_ingest_t *in)
{
    if (in->own.halted != NULL)
        in->own.halted(in->own.arg);
}

/* Topic t's records came from cluster t->cluster, and the brokers are now
 * cluster `now`: every partition it owns diverged. */
static void cluster_moved(node_ingest_t *in, topic_t *t, const char *now)
{
    char was[2 * KVS_SCHEMA_CLUSTER_ID_MAX + 8], is[2 * KVS_SCHEMA_CLUSTER_ID_MAX + 8], why[2048];
    kvs_msg_quote(was, sizeof(was), t->cluster, strlen(t->cluster));
    kvs_msg_quote(is, sizeof(is), now, strlen(now));
    snprintf(why, sizeof(why),
             NODE_INGEST_DIVERGED "the topic was applied from Kafka cluster \"%s\", and the "
                                  "brokers are now cluster \"%s\", whose offsets are other "
                                  "records; it is not ingested until its table is rebuilt from "
                                  "the topic (kvs-cli rebuild TABLE), or kafka.brokers names the "
                                  "first cluster again (then restart)",
             was, is);
    free(t->moved_why);
    t->moved_why = strdup(why); /* without memory, the partitions' own reason is given */
    for (uint32_t p = 0; p < t->partitions; p++) {
        if (!t->parts[p].owned)
            continue;
        t->parts[p].diverged = 1;
        t->parts[p].produced_end = t->parts[p].asked_end = -1; /* ends in the other log */
        if (in->state != NULL)
            kvs_shardstate_set_diverged(in->state, (uint32_t)(t->b - in->cfg->bindings), p, 1);
    }
    kvs_error("kafka %s: DIVERGED: the brokers are Kafka cluster \"%s\", but this shard applied "
              "the topic from cluster \"%s\": its offsets are not positions in this cluster's "
              "log. The topic is no longer ingested and its reads and writes are refused (503) "
              "until its table is rebuilt from the topic, or kafka.brokers names the first "
              "cluster again and the node restarts; see the README, \"When a topic's log "
              "diverges\"",
              t->b->topic, is, was);
    own_halted(in);
    /* Fetching its partitions stops with the next assignment (not from
     * inside a batch: the assignment pumps the queue itself). */
    if (!in->stopping)
        uv_timer_start(&in->range_timer, on_range_timer, 0, 0);
}

/* In the thread pool: the cluster id each of rks[0..2) holds now. */
static void cluster_read(rd_kafka_t *const rks[2], char out[2][KVS_SCHEMA_CLUSTER_ID_MAX + 1])
{
    for (int k = 0; k < 2; k++) {
        char *id = rks[k] != NULL ? rd_kafka_clusterid(rks[k], 0) : NULL;
        out[k][0] = '\0';
        if (id == NULL)
            continue; /* no metadata yet, or brokers that report none */
        if (strlen(id) <= KVS_SCHEMA_CLUSTER_ID_MAX)
            memcpy(out[k], id, strlen(id) + 1);
        rd_kafka_mem_free(rks[k], id);
    }
}

/* Compares the cluster each handle was last read to be connected to with
 * each topic's: before a batch is applied, so no record of another
 * cluster is once the change was read. */
static void cluster_check(node_ingest_t *in)
{
    if (in->one_cluster || !in->cid_stale)
        return; /* nothing compared changed since the last time */
    in->cid_stale = 0;
    for (int k = 0; k < 2; k++) {
        const char *id = in->cid[k];
        if (id[0] == '\0')
            continue;
        for (size_t i = 0; i < in->n_topics; i++) {
            topic_t *t = &in->topics[i];
            if (t->moved_why != NULL)
                continue;
            if (t->cluster[0] == '\0') {
                memcpy(t->cluster, id, strlen(id) + 1);
                t->cluster_save = 1;
            } else if (strcmp(t->cluster, id) != 0) {
                cluster_moved(in, t, id);
            }
        }
    }
}

/* Takes a reading of the ids (a thread's) for the comparisons. */
static void cluster_take(node_ingest_t *in, char ids[2][KVS_SCHEMA_CLUSTER_ID_MAX + 1])
{
    for (int k = 0; k < 2; k++)
        if (ids[k][0] != '\0' && strcmp(in->cid[k], ids[k]) != 0) {
            /* an id once read is not forgotten for a moment without */
            memcpy(in->cid[k], ids[k], sizeof(in->cid[k]));
            in->cid_stale = 1;
        }
    cluster_check(in);
}

static void cid_work(uv_work_t *w)
{
    node_ingest_t *in = w->data;
    cluster_read(in->cid_rk, in->cid_next);
}

static void cid_done(uv_work_t *w, int status)
{
    node_ingest_t *in = w->data;
    in->cid_busy = 0;
    if (status == 0 && !in->stopping)
        cluster_take(in, in->cid_next);
}

/* Reads the ids again, unless a reading is under way (every tick). */
static void cluster_refresh(node_ingest_t *in)
{
    if (in->cid_busy || in->stopping || in->one_cluster)
        return;
    in->cid_rk[0] = in->rk;
    in->cid_rk[1] = in->asker;
    in->cid_work.data = in;
    in->cid_busy = uv_queue_work(in->loop, &in->cid_work, cid_work, cid_done) == 0;
}

/* Where a partition with no stored offset starts: auto.offset.reset, or
 * the log's first record for a rebuilt one. */
static int64_t start_of(const node_ingest_t *in, const part_t *pt)
{
    return pt->from_start ? RD_KAFKA_OFFSET_BEGINNING : in->reset_offset;
}

/* ---- applying records ----------------------------------------------------- */

static topic_t *topic_of(node_ingest_t *in, const rd_kafka_message_t *m)
{
    for (size_t i = 0; i < in->n_topics; i++)
        if (in->topics[i].rkt == m->rkt ||
            strcmp(in->topics[i].b->topic, rd_kafka_topic_name(m->rkt)) == 0)
            return &in->topics[i];
    return NULL;
}

/* Encodes a payload as the Value the binding's format says, into *out and
 * *len. Returns 0; 0 with *out NULL and *why set when the format rejects
 * it (the record is skipped); or -ENOMEM, which is no verdict on the
 * record: the batch fails and is read again, so that memory running short
 * never skips a record. */
static int encode_payload(node_ingest_t *in, const topic_t *t, const rd_kafka_message_t *m,
                          const uint8_t **out, size_t *len, const char **why)
{
    const uint8_t *p = m->payload;
    int ok;
    *out = NULL;
    switch (t->b->format) {
    case KVS_FORMAT_VALUE:
        if ((ok = kvs_msg_value_valid(&in->arena, p, m->len)) < 0)
            return ok;
        if (!ok) {
            /* An empty Value is zero bytes: valid protobuf, but no value
             * (Hset refuses it too); a delete is a null payload. */
            *why = m->len == 0 ? "payload is an empty kvs.Value (no kind set; a delete is a "
                                 "tombstone: a null payload)"
                               : "payload is not an encoded kvs.Value (with valid UTF-8 strings, "
                                 "each field of its own wire type)";
            return 0;
        }
        *len = m->len;
        *out = p;
        return 0;
    case KVS_FORMAT_STRING:
        if (!kvs_utf8_valid(p, m->len)) {
            *why = "payload is not valid UTF-8";
            return 0;
        }
        /* fall through */
    default:
        in->scratch.len = 0;
        if (kvs_buf_reserve(&in->scratch, m->len + 16) != 0)
            return -ENOMEM;
        *len =
            kvs_value_encode_bytes(in->scratch.data, t->b->format == KVS_FORMAT_STRING, p, m->len);
        *out = in->scratch.data;
        return 0;
    }
}

static void log_skip(node_ingest_t *in, topic_t *t, const rd_kafka_message_t *m, skip_kind_t kind,
                     const char *why)
{
    uint64_t now = uv_now(in->loop);
    if (now - t->last_skip_log[kind] < LOG_EVERY_MS && t->last_skip_log[kind] != 0)
        return;
    t->last_skip_log[kind] = now;
    kvs_warn("kafka %s [%d] offset %lld skipped: %s (further skips of this topic for this "
             "reason are counted, logged at most every %d s)",
             t->b->topic, m->partition, (long long)m->offset, why, LOG_EVERY_MS / 1000);
}

/* A record this worker produced, that a write waits for: hands the value
 * the record replaces (as stored now, before it is applied) to the write.
 * Only while writes are outstanding is a record's header looked at. */
static int capture_own(node_ingest_t *in, topic_t *t, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *hdrs;
    const void *id;
    size_t n;
    node_slice_t v;
    if (in->own.claim == NULL || *in->own.outstanding == 0 ||
        rd_kafka_message_headers(m, &hdrs) != 0 ||
        rd_kafka_header_get_last(hdrs, KVS_RECORD_HEADER, &id, &n) != 0 || n != KVS_RECORD_ID_LEN)
        return 0;
    int lengths = 0;
    kvs_buf_t *prev =
        in->own.claim(in->own.arg, id, m->partition, m->offset, node_store_batch_gen(in->store),
                      m->key, m->key_len, m->payload, m->len, &lengths);
    if (prev == NULL)
        return 0;
    prev->len = 0;
    int rc = node_store_get(in->store, t->b->table, m->key, m->key_len, &v);
    if (rc != 0)
        return rc == KVS_ENOTFOUND ? 0 : rc;
    uint8_t buf[16];
    const void *p = v.p;
    size_t len = lengths ? kvs_reads_stored_length(lengths, v.p, v.len, buf, &p) : v.len;
    return kvs_buf_append(prev, p, len) != 0 ? -ENOMEM : 0;
}

/* Applies one record to the batch. Returns 0 or a store error. */
static int apply_one(node_ingest_t *in, topic_t *t, part_t *pt, const rd_kafka_message_t *m)
{
    char big[224];
    const char *why = NULL;
    skip_kind_t kind = SKIP_PAYLOAD;
    int rc = 0;
    if (in->fail_record != 0 && ++in->records == in->fail_record)
        return -ENOMEM;
    if (m->key == NULL || m->key_len == 0) {
        why = "record has no key";
        kind = SKIP_NO_KEY;
    } else if (m->key_len > KVS_MAX_KEY) {
        why = "key longer than 511 bytes";
        kind = SKIP_LONG_KEY;
    } else if (m->payload == NULL) {
        rc = capture_own(in, t, m);
        if (rc == 0)
            rc = node_store_del(in->store, t->b->table, m->key, m->key_len); /* tombstone */
        if (rc == KVS_ENOTFOUND)
            rc = 0;
    } else {
        size_t len = 0, max = kvs_msg_pair_max(in->cfg->max_frame);
        const uint8_t *v = NULL;
        rc = encode_payload(in, t, m, &v, &len, &why);
        if (v != NULL && m->key_len + len > max) {
            snprintf(big, sizeof(big),
                     "value too large to be read back: key and value take %zu bytes, more than "
                     "the %zu an answer may hold under limits.max_frame (%llu bytes); raise "
                     "limits.max_frame to store such records",
                     m->key_len + len, max, (unsigned long long)in->cfg->max_frame);
            why = big;
            kind = SKIP_TOO_LARGE;
        } else if (v != NULL && (rc = capture_own(in, t, m)) == 0)
            rc = node_store_put(in->store, t->b->table, m->key, m->key_len, v, len);
    }
    if (rc != 0)
        return rc;
    if (why != NULL) {
        pt->skipped++;
        log_skip(in, t, m, kind, why);
    } else {
        pt->applied++;
        pt->misplaced +=
            (uint64_t)node_placecheck_record(&t->check, m->key, m->key_len, m->partition);
    }
    pt->next = m->offset + 1;
    pt->ingested++;
    pt->dirty = 1;
    return 0;
}

static void log_group_error(node_ingest_t *in, const char *what)
{
    uint64_t now = uv_now(in->loop);
    if (now - in->last_err_log < LOG_EVERY_MS && in->last_err_log != 0)
        return;
    in->last_err_log = now;
    kvs_warn("kafka: committing offsets to consumer group %s failed: %s (retried every second; "
             "the offsets in LMDB are what ingestion resumes from)",
             in->group, what);
}

static void log_consumer_error(node_ingest_t *in, const rd_kafka_message_t *m)
{
    uint64_t now = uv_now(in->loop);
    if (now - in->last_err_log < LOG_EVERY_MS && in->last_err_log != 0)
        return;
    in->last_err_log = now;
    if (m->rkt != NULL)
        kvs_warn("kafka: %s [%d]: %s (reads keep being served; ingestion resumes when Kafka is "
                 "back)",
                 rd_kafka_topic_name(m->rkt), m->partition, rd_kafka_message_errstr(m));
    else
        kvs_warn("kafka: %s (reads keep being served; ingestion resumes when Kafka is back)",
                 rd_kafka_message_errstr(m));
}

static void out_of_range(node_ingest_t *in, const rd_kafka_message_t *m);
static void note_end(node_ingest_t *in, const rd_kafka_message_t *m);
static void pass_over(node_ingest_t *in, int failed);

/* An event from the consumer queue (a message with err set). */
static void consumer_event(node_ingest_t *in, const rd_kafka_message_t *m)
{
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        note_end(in, m);
        return;
    }
    if (m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET && m->rkt != NULL)
        out_of_range(in, m);
    else
        log_consumer_error(in, m);
}

/* Logs what node_placecheck reports for `t` (`tick`: the periodic flush;
 * else the end of a batch). */
static void report_misplaced(node_ingest_t *in, topic_t *t, int tick)
{
    char line[1536];
    uint64_t now = uv_now(in->loop);
    int level = tick ? node_placecheck_tick(&t->check, t->b->topic, now, line, sizeof(line))
                     : node_placecheck_batch_end(&t->check, t->b->topic, now, line, sizeof(line));
    if (level >= 0)
        kvs_log((kvs_log_level_t)level, "%s", line);
}

/* Takes note of record `m` fetched at loop time `now`: the fetch that
 * brought it also told where its partition ends (end_heard_ms). Returns
 * whether it is a record of ours at or past its partition's next offset:
 * one apply_batch would apply. */
static int note_record(node_ingest_t *in, const rd_kafka_message_t *m, uint64_t now)
{
    topic_t *t = m->err == 0 ? topic_of(in, m) : NULL;
    if (t == NULL || m->partition < 0 || (uint32_t)m->partition >= t->partitions ||
        !t->parts[m->partition].owned)
        return 0;
    part_t *pt = &t->parts[m->partition];
    pt->end_heard_ms = now;
    return m->offset >= pt->next;
}

static size_t record_bytes(const rd_kafka_message_t *m)
{
    return m->key_len + m->len + 16; /* + the encoded Value's header */
}

/* Records count in `ingested` for good once the offsets saved after them
 * are committed: a rewind then keeps them counted (it re-reads only what
 * the stored offsets say is not stored). Whether a batch that ended
 * committed is asked of the store (node_store_gen_failed), after each
 * reservation and at the turn's end, so a batch committed early (a
 * turn's records take several) settles before later ones end. Records
 * applied and not followed by saved offsets (a reservation that stopped
 * before them) are counted again when read again, once. */
static void settle_counts(node_ingest_t *in)
{
    uint64_t open = node_store_batch_gen(in->store);
    for (size_t i = 0; i < in->n_topics; i++)
        for (uint32_t p = 0; p < in->topics[i].partitions; p++) {
            part_t *pt = &in->topics[i].parts[p];
            if (pt->saved_gen == 0 || pt->saved_gen == open)
                continue; /* none, or its batch is still open */
            if (!node_store_gen_failed(in->store, pt->saved_gen)) {
                pt->committed_ingested = pt->saved_ingested;
                in->stored_some = 1;
            }
            pt->saved_gen = 0;
        }
}

/* Applies `n` records (`bytes` of record_bytes) in one reservation, then
 * saves every touched partition's offsets in the same txn. Returns 0 or a
 * store error; then the whole write batch is aborted
 * (node_store_reserve_end), so no record commits without its offset. */
static int apply_some(node_ingest_t *in, rd_kafka_message_t **msgs, size_t n, size_t bytes)
{
    /* One write per record, plus one offsets record per partition touched
     * (at most the partitions this shard owns). Records applied already
     * (this worker's own writes, applied when Kafka acknowledged them, come
     * back through the consumer) need no room: a batch of only those opens
     * no transaction. */
    size_t todo = 0, parts = in->n_owned < n ? in->n_owned : n;
    uint64_t now = uv_now(in->loop);
    for (size_t i = 0; i < n; i++)
        todo += (size_t)note_record(in, msgs[i], now);
    for (size_t i = 0; todo == 0 && i < n; i++)
        if (msgs[i]->err != 0)
            consumer_event(in, msgs[i]);
    if (todo == 0)
        return 0;
    int rc = in->refuse_at != 0 && ++in->reservations == in->refuse_at
                 ? KVS_EFULL
                 : node_store_reserve(
                       in->store, n + parts + in->n_topics,
                       bytes + parts * 64 + in->n_topics * (KVS_SCHEMA_CLUSTER_ID_MAX + 64), 1);
    settle_counts(in); /* a reservation may commit the batch before it, refused or not */
    if (rc != 0)
        return rc;
    if (in->pending_gen == 0)
        in->pending_gen = node_store_batch_gen(in->store);
    for (size_t i = 0; i < n && rc == 0; i++) {
        rd_kafka_message_t *m = msgs[i];
        topic_t *t = m->err == 0 || m->rkt != NULL ? topic_of(in, m) : NULL;
        if (m->err != 0) {
            consumer_event(in, m);
            continue;
        }
        if (t == NULL || m->partition < 0 || (uint32_t)m->partition >= t->partitions ||
            !t->parts[m->partition].owned)
            continue; /* not ours: cannot happen with explicit assignment */
        part_t *pt = &t->parts[m->partition];
        if (m->offset < pt->next || pt->diverged)
            continue; /* already applied (re-delivered after a re-assign), or not this log's */
        if (pt->next >= 0 && m->offset > pt->next && pt->applied + pt->skipped > 0 &&
            !pt->gap_logged) {
            /* Compaction and transaction markers leave gaps too, so this is
             * a note, once per partition and run, not an error. */
            pt->gap_logged = 1;
            kvs_warn("kafka %s [%d]: resumed at offset %lld but offsets %lld..%lld are gone: "
                     "removed by retention (auto.offset.reset chose where to resume) or by "
                     "compaction, or taken by transaction markers; none of them is applied",
                     t->b->topic, m->partition, (long long)m->offset, (long long)pt->next,
                     (long long)m->offset - 1);
        }
        rc = apply_one(in, t, pt, m);
    }
    for (size_t i = 0; i < in->n_topics && rc == 0; i++)
        for (uint32_t p = 0; p < in->topics[i].partitions && rc == 0; p++)
            if (in->topics[i].parts[p].dirty) {
                if (in->topics[i].cluster_save)
                    rc = cluster_save(in, &in->topics[i]);
                if (rc == 0)
                    rc = part_save(in, &in->topics[i], (int32_t)p);
            }
    return node_store_reserve_end(in->store, rc);
}

/* Applies `n` records in reservations of at most RESERVE_BYTES each (a
 * reservation is one txn's share, held in memory until the commit).
 * Returns 0 or the first store error. */
static int apply_batch(node_ingest_t *in, rd_kafka_message_t **msgs, size_t n)
{
    int rc = 0;
    cluster_check(in);
    for (size_t i = 0; i < n && rc == 0;) {
        size_t j = i + 1, bytes = record_bytes(msgs[i]);
        while (j < n && bytes + record_bytes(msgs[j]) <= RESERVE_BYTES)
            bytes += record_bytes(msgs[j++]);
        rc = apply_some(in, msgs + i, j - i, bytes);
        i = j;
    }
    for (size_t i = 0; i < in->n_topics && rc == 0; i++)
        report_misplaced(in, &in->topics[i], 0);
    pass_over(in, rc); /* after a failure too: what it noted is forgotten */
    return rc;
}

/* True once a batch holding records not yet confirmed has failed: applying
 * more would store offsets past records that are lost, so everything waits
 * for the rewind at the end of the turn. */
static int batch_lost(node_ingest_t *in)
{
    if (in->pending_gen != 0 && node_store_last_failed_gen(in->store) >= in->pending_gen)
        in->rewind = 1;
    return in->rewind;
}

/* Before assignment the queue holds only events (errors while brokers are
 * unreachable); serve them so they do not pile up. */
static void drain_events(node_ingest_t *in)
{
    rd_kafka_message_t *msgs[64];
    ssize_t n;
    while ((n = rd_kafka_consume_batch_queue(in->q, 0, msgs, 64)) > 0)
        for (ssize_t i = 0; i < n; i++) {
            if (msgs[i]->err != 0)
                consumer_event(in, msgs[i]);
            rd_kafka_message_destroy(msgs[i]);
        }
}

static void pump_throttled(node_ingest_t *in);

static void pump(node_ingest_t *in)
{
    rd_kafka_message_t *msgs[BATCH];
    size_t total = 0;
    ssize_t n = 0;
    if (!in->stopping && !in->assigned) {
        drain_events(in);
        return;
    }
    if (in->throttle_ms > 0) {
        pump_throttled(in);
        return;
    }
    while (!in->stopping && in->assigned && !batch_lost(in) && total < MAX_PER_TURN) {
        n = rd_kafka_consume_batch_queue(in->q, 0, msgs, BATCH);
        if (n <= 0)
            break;
        int rc = apply_batch(in, msgs, (size_t)n);
        for (ssize_t i = 0; i < n; i++)
            rd_kafka_message_destroy(msgs[i]);
        if (rc != 0) {
            in->rewind = 1; /* logged by rewind_all */
            in->rewind_err = rc;
            break;
        }
        total += (size_t)n;
        if (n < BATCH)
            break;
    }
    /* The queue wakes us only when it goes from empty to non-empty, so while
     * it may hold more, keep pumping on the following turns. */
    if (!in->stopping && in->assigned && !in->rewind && (n == BATCH || total >= MAX_PER_TURN))
        uv_idle_start(&in->idle, on_idle);
    else
        uv_idle_stop(&in->idle);
}

static void on_idle(uv_idle_t *h)
{
    pump(h->data);
}

static void on_throttle(uv_timer_t *h)
{
    pump(h->data);
}

/* The test throttle: one record per throttle_ms (see node_ingest_s). */
static void pump_throttled(node_ingest_t *in)
{
    while (!in->stopping && in->assigned && !batch_lost(in)) {
        uint64_t now = uv_now(in->loop);
        if (in->throttled == NULL) {
            if (rd_kafka_consume_batch_queue(in->q, 0, &in->throttled, 1) <= 0) {
                in->throttled = NULL;
                return; /* the queue's IO event wakes us */
            }
            in->throttled_at = now;
        }
        uint64_t due = in->throttled_at > in->last_apply ? in->throttled_at : in->last_apply;
        due += in->throttle_ms;
        if (now < due) {
            uv_timer_start(&in->throttle_timer, on_throttle, due - now, 0);
            return;
        }
        int rc = apply_batch(in, &in->throttled, 1);
        rd_kafka_message_destroy(in->throttled);
        in->throttled = NULL;
        in->last_apply = now;
        if (rc != 0) {
            kvs_error("applying Kafka records failed (%s); they will be re-read", kvs_strerror(rc));
            in->rewind = 1;
            return;
        }
    }
}

static void on_readable(uv_poll_t *h, int status, int events)
{
    node_ingest_t *in = h->data;
    char buf[256];
    (void)events;
    if (status < 0)
        return;
    while (read(in->pipefd[0], buf, sizeof(buf)) > 0) {
    }
    pump(in);
}

/* ---- after each turn ---------------------------------------------------------- */

static void on_reassign(uv_timer_t *h)
{
    node_ingest_t *in = h->data;
    if (!in->stopping)
        ingest_assign(in);
}

/* After part_load: a partition rebuilt in a batch that was lost (LMDB
 * holds no "from the log's start") is halted again as it was. */
static void rebuilds_undo(node_ingest_t *in)
{
    for (size_t i = 0; i < in->n_topics; i++)
        for (uint32_t p = 0; p < in->topics[i].partitions; p++) {
            part_t *pt = &in->topics[i].parts[p];
            if (pt->rebuilding && !pt->from_start) {
                pt->diverged = pt->was_diverged;
                pt->halted = pt->was_halted;
                if (in->state != NULL)
                    kvs_shardstate_set_diverged(in->state,
                                                (uint32_t)(in->topics[i].b - in->cfg->bindings), p,
                                                pt->diverged);
            }
            pt->rebuilding = 0;
        }
}

/* A batch holding records was lost: reloads every owned partition's
 * offsets from LMDB and re-reads from there. Consuming pauses first, for
 * RETRY_MIN_MS doubling with every loss in a row (up to RETRY_MAX_MS), so
 * a lasting cause (a full disk) neither spins nor floods the log. */
static void rewind_all(node_ingest_t *in)
{
    if (in->throttled != NULL) {
        rd_kafka_message_destroy(in->throttled);
        in->throttled = NULL;
    }
    for (size_t i = 0; i < in->n_topics; i++)
        for (uint32_t p = 0; p < in->topics[i].partitions; p++)
            if (in->topics[i].parts[p].owned) {
                part_load(in, &in->topics[i], (int32_t)p);
                in->topics[i].parts[p].ingested = in->topics[i].parts[p].committed_ingested;
            }
    for (size_t i = 0; i < in->n_topics; i++)
        cluster_load(in, &in->topics[i]); /* a learned id not stored is learned again */
    rebuilds_undo(in);
    node_store_end_turn(in->store); /* release the read snapshot part_load used */
    in->rewind = 0;
    unsigned shift = in->losses < 7 ? in->losses : 7;
    uint64_t delay = (uint64_t)RETRY_MIN_MS << shift;
    delay = delay < RETRY_MAX_MS ? delay : RETRY_MAX_MS;
    in->losses++;
    in->unlogged++;
    uint64_t now = uv_now(in->loop);
    /* Whether or not batches were stored in between: losses alternating
     * with stored batches (a disk failing now and then) are a flood too. */
    if (in->last_loss_log == 0 || now - in->last_loss_log >= LOG_EVERY_MS) {
        in->last_loss_log = now;
        kvs_warn("kafka: a write batch holding records was not stored (%s); re-reading from the "
                 "last committed offsets in %llu ms (%u not stored in a row, %lu since the last "
                 "such line; logged at most every %d s)",
                 kvs_strerror(in->rewind_err), (unsigned long long)delay, in->losses, in->unlogged,
                 LOG_EVERY_MS / 1000);
        in->unlogged = 0;
    }
    in->rewind_err = 0;
    in->assigned = 0; /* pump drops what the old assignment fetched */
    rd_kafka_assign(in->rk, NULL);
    uv_timer_start(&in->retry, on_reassign, delay, 0);
}

void node_ingest_turn_done(node_ingest_t *in, int rc)
{
    if (in->pending_gen != 0 && node_store_last_failed_gen(in->store) >= in->pending_gen)
        in->rewind = 1;
    settle_counts(in); /* the turn's batches have all ended */
    if (in->stored_some)
        in->losses = 0; /* records (or offsets moved over them) were stored */
    in->stored_some = 0;
    if (in->rewind && in->rewind_err == 0)
        in->rewind_err = rc != 0 ? rc : KVS_ESTORE;
    in->pending_gen = 0;
    if (in->rewind) {
        rewind_all(in);
        return;
    }
    for (size_t i = 0; i < in->n_topics; i++)
        for (uint32_t p = 0; p < in->topics[i].partitions; p++) {
            part_t *pt = &in->topics[i].parts[p];
            pt->committed_next = pt->next;
            if (pt->rebuilding && in->state != NULL) /* committed: routers may read it now */
                kvs_shardstate_set_diverged(
                    in->state, (uint32_t)(in->topics[i].b - in->cfg->bindings), p, pt->diverged);
            pt->rebuilding = 0;
        }
    if (in->state == NULL)
        return;
    uint64_t since = uv_now(in->loop) - in->published_ms;
    if (since >= PUBLISH_EVERY_MS)
        publish(in);
    else if (!uv_is_active((uv_handle_t *)&in->publish_timer)) /* the last turn's too */
        uv_timer_start(&in->publish_timer, on_publish_timer, PUBLISH_EVERY_MS - since, 0);
}

/* ---- out of range: a partition's log moved away under it ------------------------------ *
 *
 * The consumer runs with auto.offset.reset=error, so a fetch position that
 * is not in the log stops the partition and comes here as an event instead
 * of silently jumping: with "earliest", a topic deleted and created again
 * (or a log truncated by an unclean leader election) would restart at its
 * new beginning, every record below the stored offset would be skipped as
 * "already applied", and reads would go on serving the old data as
 * current. The brokers are asked where the log starts and ends, then:
 *
 *   next > end      diverged: the log no longer holds what was applied.
 *                   The partition is halted (not assigned again) and its
 *                   reads are refused (kvs_fresh) until it is rebuilt
 *                   from the topic (README); nothing is thrown away.
 *   next < start    the records in between were deleted (retention)
 *                   before this shard read them: the user's
 *                   auto.offset.reset decides, as before (earliest: the
 *                   first record left, the gap logged; latest: the end;
 *                   `next` moves there and is stored at once: skip_to;
 *                   error: the partition is halted).
 *   otherwise       the brokers disagreed for a moment (a leader change):
 *                   consuming resumes where it was.
 *
 * A question the brokers leave unanswered is asked again every tick. */

static void range_start(node_ingest_t *in);
static topic_t *topic_of_binding(node_ingest_t *in, const kvs_binding_t *b);

static void out_of_range(node_ingest_t *in, const rd_kafka_message_t *m)
{
    topic_t *t = topic_of(in, m);
    if (t == NULL || m->partition < 0 || (uint32_t)m->partition >= t->partitions)
        return;
    part_t *pt = &t->parts[m->partition];
    if (!pt->owned || pt->diverged || pt->halted || pt->out_of_range)
        return;
    pt->out_of_range = 1;
    /* With no offset stored yet, where the consumer was is where this
     * shard's records start: those below the log's new start are lost. */
    pt->fetch_at = pt->next < 0 && m->offset >= 0 ? m->offset : -1;
    kvs_warn("kafka %s [%d]: offset %lld is not in the partition's log (%s); asking the "
             "brokers where the log starts and ends",
             t->b->topic, m->partition, (long long)m->offset, rd_kafka_message_errstr(m));
    publish(in); /* a short log (part_short) is on the page at once, not at the next tick */
    range_start(in);
}

static void list_offsets(node_ingest_t *in, int64_t want, void *items, size_t stride, size_t n);

/* In the thread pool: where every partition asked about starts and ends. */
static void range_work(uv_work_t *w)
{
    node_ingest_t *in = w->data;
    list_offsets(in, RD_KAFKA_OFFSET_BEGINNING, in->ranges, sizeof(*in->ranges), in->n_ranges);
    for (size_t i = 0; i < in->n_ranges; i++)
        in->ranges[i].lo = in->ranges[i].q.off;
    list_offsets(in, RD_KAFKA_OFFSET_END, in->ranges, sizeof(*in->ranges), in->n_ranges);
    for (size_t i = 0; i < in->n_ranges; i++)
        in->ranges[i].hi = in->ranges[i].q.off;
}

/* Moves `next` over records the log no longer has, to `to`, and stores
 * it in the turn's batch: lag counts from there (and the router's reads
 * of the environment agree) whether or not a record comes soon, and a
 * restart resumes there. Should the batch be lost, the rewind reloads the
 * old offset and the next fetch finds it out of range again. */
static void skip_to(node_ingest_t *in, topic_t *t, int32_t p, int64_t to)
{
    part_t *pt = &t->parts[p];
    pt->next = to;
    int rc =
        node_store_reserve(in->store, 1, KVS_SCHEMA_OFFSETS_KEY_MAX + KVS_SCHEMA_OFFSETS_LEN, 0);
    settle_counts(in);
    if (rc == 0) {
        rc = part_save(in, t, p);
        if (rc == 0 && in->lose_skips > 0) {
            in->lose_skips--;
            rc = -EIO; /* the test hook: the whole batch is aborted */
        }
        rc = node_store_reserve_end(in->store, rc);
    }
    if (rc == 0 && in->pending_gen == 0)
        in->pending_gen = node_store_batch_gen(in->store);
    if (rc != 0 && !in->rewind) {
        in->rewind = 1;
        in->rewind_err = rc;
    }
}

/* ---- passed over: offsets the consumer does not hand over ------------------------------ *
 *
 * Not every offset of a log is a record the consumer hands over: a
 * transaction's end (its commit or abort marker) takes an offset of its
 * own, and with isolation.level read_committed (librdkafka's default) the
 * records of aborted transactions are dropped too. `next` moves past them
 * only when a later record is applied, so a log that ends with one (every
 * transactional producer's log does, after each commit) would leave the
 * partition lagging for good, and behind kafka.max_lag (a large aborted
 * transaction) its reads refused. The consumer says where it reached the
 * end (enable.partition.eof, which kvs sets): after the records before
 * it, in queue order, so once they are applied, every offset below the
 * end that did not move `next` was one of those; `next` moves to the end
 * and is stored in the turn's batch (skip_to), so a restart resumes there
 * too. Events of an earlier assignment never arrive (librdkafka drops
 * them). A partition with nothing applied yet (no `next`: new, or
 * rebuilt) was assigned at auto.offset.reset, and every record handed
 * over since would have set `next`: if it started at the log's start
 * (earliest, or rebuilt), the offsets from there to the end are all
 * passed over too (a log of aborted transactions only, or a retained
 * log that starts with a marker); one that started at the end (latest)
 * counts from the end already (reset_start), and an empty one is left
 * as it is. */

static int64_t reset_start(node_ingest_t *in, const topic_t *t, int32_t p);

/* The offset from which every offset below the consumer's position was
 * handed over no record of: `next`, or, with nothing applied yet, the
 * log's first offset where the partition started at it; -1 none. */
static int64_t passed_from(node_ingest_t *in, const topic_t *t, int32_t p)
{
    const part_t *pt = &t->parts[p];
    if (pt->next >= 0)
        return pt->next;
    return start_of(in, pt) == RD_KAFKA_OFFSET_BEGINNING ? reset_start(in, t, p) : -1;
}

static void note_end(node_ingest_t *in, const rd_kafka_message_t *m)
{
    topic_t *t = m->rkt != NULL ? topic_of(in, m) : NULL;
    if (t == NULL || m->partition < 0 || (uint32_t)m->partition >= t->partitions)
        return;
    part_t *pt = &t->parts[m->partition];
    if (!in->assigned || !pt->owned)
        return;
    pt->end_heard_ms = uv_now(in->loop); /* the fetch said where the log ends */
    int64_t from = passed_from(in, t, m->partition);
    if (from >= 0 && m->offset > from && m->offset > pt->pass_to) {
        pt->pass_to = m->offset;
        in->passes = 1;
    }
}

/* After a batch was applied: moves `next` of each partition whose end the
 * consumer reached past the records applied. */
static void pass_over(node_ingest_t *in, int failed)
{
    if (!in->passes)
        return;
    in->passes = 0;
    int keep = !in->rewind && !in->stopping && in->assigned && failed == 0;
    for (size_t i = 0; i < in->n_topics; i++)
        for (uint32_t p = 0; p < in->topics[i].partitions; p++) {
            topic_t *t = &in->topics[i];
            part_t *pt = &t->parts[p];
            int64_t to = pt->pass_to;
            pt->pass_to = -1;
            if (!keep || to < 0 || to <= pt->next || pt->diverged || pt->halted ||
                pt->out_of_range || pt->suspect)
                continue;
            skip_to(in, t, (int32_t)p, to);
        }
}

/* A second after a suspect's first question: the next (the tick would
 * ask too, but up to a tick later). */
static void on_suspect_timer(uv_timer_t *h)
{
    node_ingest_t *in = h->data;
    if (!in->stopping)
        range_start(in); /* busy: range_done arms this again */
}

/* Arms the suspect timer for the earliest suspect's second question. */
static void arm_suspects(node_ingest_t *in)
{
    uint64_t now = uv_now(in->loop), first = UINT64_MAX;
    for (size_t i = 0; i < in->n_topics; i++)
        for (uint32_t p = 0; p < in->topics[i].partitions; p++) {
            const part_t *pt = &in->topics[i].parts[p];
            if (pt->suspect && pt->out_of_range && pt->suspect_ms + RANGE_RETRY_MS < first)
                first = pt->suspect_ms + RANGE_RETRY_MS;
        }
    if (first == UINT64_MAX)
        uv_timer_stop(&in->suspect_timer);
    else
        uv_timer_start(&in->suspect_timer, on_suspect_timer, first > now ? first - now : 0, 0);
}

/* Decides what becomes of a partition whose log was found to span
 * [lo, hi). Returns 1 when it is to be assigned again. */
static int range_decide(node_ingest_t *in, topic_t *t, int32_t p, int64_t lo, int64_t hi)
{
    part_t *pt = &t->parts[p];
    const char *topic = t->b->topic;
    pt->out_of_range = 0;
    if (pt->next >= 0 && pt->next > hi && !pt->suspect) {
        /* A broker may lag a moment (a leader change): halting takes a
         * second answer, at the next tick, that says the same. */
        pt->suspect = 1;
        pt->suspect_ms = in->range_asked_ms;
        pt->out_of_range = 1;
        kvs_warn("kafka %s [%d]: the brokers say the log ends at offset %lld, below offset %lld "
                 "this shard applied; asking again to be sure",
                 topic, p, (long long)hi, (long long)pt->next - 1);
        return 0;
    }
    int suspected = pt->suspect;
    pt->suspect = 0;
    /* Where this shard's records start: the next to apply, or with none
     * stored the offset the consumer was fetching (fetch_at) */
    int64_t at = pt->next >= 0 ? pt->next : pt->fetch_at;
    pt->fetch_at = -1;
    if (pt->next >= 0 && pt->next > hi) {
        pt->diverged = 1;
        /* The brokers' word now, after any of this worker's own records
         * they acknowledged: those are in a log that is gone, and an end
         * past them would say the partition ends above what was applied. */
        pt->produced_end = -1;
        pt->asked_end = hi;
        if (in->state != NULL)
            kvs_shardstate_set_diverged(in->state, (uint32_t)(t->b - in->cfg->bindings),
                                        (uint32_t)p, 1);
        kvs_error("kafka %s [%d]: DIVERGED: the partition's log now ends at offset %lld, but "
                  "this shard has applied it up to offset %lld: the topic was deleted and "
                  "created again, or its log was truncated. The partition is no longer ingested "
                  "and its reads and writes are refused (503) until its table is rebuilt from "
                  "the topic; see the README, \"When a topic's log diverges\"",
                  topic, p, (long long)hi, (long long)pt->next - 1);
        own_halted(in);
        return 0;
    }
    if (at >= 0 && at < lo && in->reset_error) {
        pt->halted = 1;
        /* The brokers just said where its log ends: Info's age counts from
         * now (only the end probe asks again: nothing fetches it). */
        if (hi > pt->asked_end)
            pt->asked_end = hi;
        pt->end_heard_ms = uv_now(in->loop);
        kvs_error("kafka %s [%d]: records %lld..%lld were deleted before this shard applied "
                  "them, and auto.offset.reset is \"error\": the partition is no longer "
                  "ingested; set kafka.properties auto.offset.reset to earliest or latest and "
                  "restart to skip them",
                  topic, p, (long long)at, (long long)lo - 1);
        own_halted(in);
        return 0;
    }
    if (at < 0 || (pt->next < 0 && at >= lo)) {
        pt->restart = 1; /* nothing stored: wherever auto.offset.reset says */
        kvs_warn("kafka %s [%d]: the log now starts at offset %lld; resuming at auto.offset.reset",
                 topic, p, (long long)lo);
    } else if (at < lo) {
        /* where this partition starts without a record of it: a rebuilt
         * one at the log's start, whatever auto.offset.reset says */
        int end = start_of(in, pt) == RD_KAFKA_OFFSET_END;
        int64_t to = end ? hi : lo;
        int64_t from = at > pt->lost_to ? at : pt->lost_to;
        if (to > from) {
            pt->lost += (uint64_t)(to - from);
            pt->lost_to = to;
        }
        kvs_error("kafka %s [%d]: DATA LOST: %lld records, offsets %lld..%lld are gone (deleted "
                  "before this shard applied them)%s; resuming at offset %lld, the log's %s "
                  "(auto.offset.reset); Info counts them as lost%s",
                  topic, p, (long long)(to - at), (long long)at, (long long)lo - 1,
                  to > lo ? ", and the records left before the log's end are passed over" : "",
                  (long long)to, end ? "end" : "start",
                  to > from ? ""
                            : " (counted once already: the batch that stored the skip was lost)");
        skip_to(in, t, p, to);
        own_halted(in); /* writes acknowledged in the gap are never applied here */
    } else {
        if (hi > pt->asked_end)
            pt->asked_end = hi; /* the end as they said: part_short no longer holds */
        kvs_info("kafka %s [%d]: offset %lld is in the log (%lld..%lld)%s; resuming there", topic,
                 p, (long long)pt->next, (long long)lo, (long long)hi,
                 suspected ? " when asked again" : " after all");
    }
    return 1;
}

/* Assigns every partition again (those halted left out): what was
 * fetched under the old assignment is dropped, nothing applied is lost
 * (`next` is where each partition resumes). */
static void reassign(node_ingest_t *in)
{
    if (in->throttled != NULL) {
        rd_kafka_message_destroy(in->throttled);
        in->throttled = NULL;
    }
    in->assigned = 0;
    rd_kafka_assign(in->rk, NULL);
    ingest_assign(in);
}

static void on_range_timer(uv_timer_t *h)
{
    node_ingest_t *in = h->data;
    if (!in->stopping && in->assigned)
        reassign(in);
}

static void range_done(uv_work_t *w, int status)
{
    node_ingest_t *in = w->data;
    int again = 0;
    (void)status;
    in->range_busy = 0;
    for (size_t i = 0; i < in->n_ranges && !in->stopping; i++) {
        struct range_s *r = &in->ranges[i];
        if (!r->t->parts[r->q.p].out_of_range)
            continue; /* assigned again meanwhile (a rewind, a Rebuild): a stale answer */
        if (r->lo < 0 || r->hi < 0)
            continue; /* unanswered: still out_of_range, asked again at the next tick */
        if (in->short_answers > 0) {
            in->short_answers--;
            r->hi = r->lo;
        }
        again |= range_decide(in, r->t, r->q.p, r->lo, r->hi);
    }
    in->n_ranges = 0;
    if (in->stopping)
        return;
    arm_suspects(in);
    publish(in);
    if (in->range_missed) /* its partitions: now, not at the next tick */
        range_start(in);
    /* Not at once: should the fetch keep failing while the brokers say the
     * offset is there, this is one round a second, not a spin. */
    if (again)
        uv_timer_start(&in->range_timer, on_range_timer, RANGE_RETRY_MS, 0);
}

/* Asks about every partition out of range, unless a question runs. */
static void range_start(node_ingest_t *in)
{
    if (in->range_busy)
        in->range_missed = 1; /* asked as soon as this round is done */
    if (in->range_busy || in->stopping || in->ranges == NULL)
        return;
    in->range_missed = 0;
    uint64_t now = uv_now(in->loop);
    for (size_t i = 0; i < in->n_topics; i++)
        for (uint32_t p = 0; p < in->topics[i].partitions; p++) {
            const part_t *pt = &in->topics[i].parts[p];
            /* A suspect's second answer comes a second after its first,
             * not with a round another partition started sooner: a
             * broker that lags a moment gets that second. */
            if (pt->out_of_range && !(pt->suspect && now - pt->suspect_ms < RANGE_RETRY_MS))
                in->ranges[in->n_ranges++] = (struct range_s){
                    {in->topics[i].b->topic, (int32_t)p, -1}, &in->topics[i], -1, -1};
        }
    if (in->n_ranges == 0)
        return;
    in->range_asked_ms = now;
    in->range_busy = 1;
    in->range_work.data = in;
    uv_queue_work(in->loop, &in->range_work, range_work, range_done);
}

void node_ingest_check_cluster(node_ingest_t *in)
{
    if (in != NULL && !in->stopping)
        cluster_check(in); /* the tick's reading: no thread-pool job per write */
}

const char *node_ingest_moved(node_ingest_t *in, const kvs_binding_t *b)
{
    topic_t *t = in != NULL ? topic_of_binding(in, b) : NULL;
    return t != NULL ? t->moved_why : NULL;
}

const char *node_ingest_halted(node_ingest_t *in, const kvs_binding_t *b, uint32_t p)
{
    topic_t *t = topic_of_binding(in, b);
    if (t == NULL || p >= t->partitions || !t->parts[p].owned)
        return NULL;
    if (t->parts[p].diverged && t->moved_why != NULL)
        return t->moved_why;
    if (t->parts[p].diverged)
        return "diverged: the partition no longer holds what this shard applied (the topic was "
               "created again, or its log truncated); rebuild the table from the topic (kvs-cli "
               "rebuild TABLE)";
    if (t->parts[p].halted)
        return "records were deleted from the partition before this shard applied them, and "
               "auto.offset.reset is \"error\"";
    if (part_short(in, t, (int32_t)p))
        return "the brokers say the partition's log ends below what this shard applied, and "
               "whether it diverged is being checked; retry shortly";
    return NULL;
}

int node_ingest_passed(node_ingest_t *in, const kvs_binding_t *b, uint32_t p, int64_t offset)
{
    topic_t *t = topic_of_binding(in, b);
    return t != NULL && p < t->partitions && t->parts[p].owned && offset >= 0 &&
           offset < t->parts[p].lost_to;
}

int node_ingest_log_short(node_ingest_t *in, const kvs_binding_t *b, uint32_t p)
{
    topic_t *t = topic_of_binding(in, b);
    return t != NULL && p < t->partitions && t->parts[p].owned && !t->parts[p].diverged &&
           part_short(in, t, (int32_t)p);
}

/* A partition rebuilt: nothing applied, nothing known of its log. */
static void part_forget(topic_t *t, uint32_t p)
{
    part_t *pt = &t->parts[p];
    int owned = pt->owned;
    /* Counters of this process: they never go down. */
    uint64_t lost = pt->lost, ingested = pt->ingested, committed = pt->committed_ingested;
    memset(pt, 0, sizeof(*pt));
    pt->owned = owned;
    pt->lost = lost;
    pt->ingested = ingested;
    pt->committed_ingested = committed;
    pt->from_start = 1;
    pt->next = pt->committed_next = pt->group_next = -1;
    pt->produced_end = pt->asked_end = pt->pass_to = -1;
}

int node_ingest_rebuild(node_ingest_t *in, const kvs_binding_t *b, uint32_t *restarted)
{
    char key[KVS_SCHEMA_OFFSETS_KEY_MAX];
    topic_t *t = topic_of_binding(in, b);
    uint64_t pages = 0;
    size_t parts = 0;
    *restarted = 0;
    if (t == NULL)
        return KVS_EINVAL;
    if (in->stopping)
        return -ESHUTDOWN;
    for (uint32_t p = 0; p < t->partitions; p++)
        parts += (size_t)t->parts[p].owned;
    /* The emptied table and the offsets in one txn. Each offsets record
     * says "from the log's start" (not deleted: with none stored, a restart
     * would start at auto.offset.reset). */
    kvs_schema_offsets_t o = {KVS_SCHEMA_NEXT_FROM_START, 0, 0, 0};
    uint8_t v[KVS_SCHEMA_OFFSETS_LEN];
    kvs_schema_offsets_encode(v, &o);
    int rc = node_store_table_pages(in->store, b->table, &pages);
    if (rc == 0)
        rc = node_store_reserve(
            in->store, 2 + parts,
            (size_t)pages * sizeof(uint64_t) + (parts + 1) * (sizeof(key) + sizeof(v)), 0);
    settle_counts(in);
    if (rc != 0)
        return rc;
    rc = node_store_clear(in->store, b->table, NULL);
    /* Read again from whichever cluster the brokers are: its id is
     * stored with the first records (an empty one: none known). */
    t->cluster[0] = '\0';
    in->cid_stale = 1;
    if (rc == 0)
        rc = cluster_save(in, t);
    for (uint32_t p = 0; p < t->partitions && rc == 0; p++) {
        if (!t->parts[p].owned)
            continue;
        meta_key(key, sizeof(key), t, (int32_t)p);
        rc = node_store_meta_put(in->store, key, v, sizeof(v));
    }
    if ((rc = node_store_reserve_end(in->store, rc)) != 0)
        return rc;
    /* Should the txn not commit, the turn's end re-reads the offsets
     * LMDB still holds, like after any lost batch, and halts again what
     * was halted (rebuilds_undo). */
    if (in->pending_gen == 0)
        in->pending_gen = node_store_batch_gen(in->store);
    for (uint32_t p = 0; p < t->partitions; p++)
        if (t->parts[p].owned) {
            int diverged = t->parts[p].diverged, halted = t->parts[p].halted;
            part_forget(t, p);
            t->parts[p].rebuilding = 1;
            t->parts[p].was_diverged = diverged;
            t->parts[p].was_halted = halted;
            (*restarted)++;
        }
    node_placecheck_init(&t->check, t->b->partitioner, t->partitions);
    free(t->moved_why); /* should the txn be lost, the next batch finds it out again */
    t->moved_why = NULL;
    kvs_warn("kafka %s: table %s emptied on request (Rebuild); reading the %u partition(s) this "
             "shard owns again from the start",
             t->b->topic, t->b->table, *restarted);
    if (in->assigned)
        reassign(in);
    publish(in);
    return 0;
}

/* ---- consumer group commit and periodic report ---------------------------------- */

/* One commit at a time: while the coordinator is away librdkafka holds a
 * commit up to session.timeout.ms, and one per tick would pile up there,
 * each also holding up the consumer's close. */
static void commit_group(node_ingest_t *in)
{
    if (in->commit_unanswered)
        return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(16);
    for (size_t i = 0; i < in->n_topics; i++) {
        topic_t *t = &in->topics[i];
        for (uint32_t p = 0; p < t->partitions; p++) {
            part_t *pt = &t->parts[p];
            if (!pt->owned || pt->committed_next < 0 || pt->committed_next == pt->group_next)
                continue;
            rd_kafka_topic_partition_list_add(l, t->b->topic, (int32_t)p)->offset =
                pt->committed_next;
        }
    }
    /* Async; on_commit records what the group really stored. LMDB stays the
     * source of truth, so a failed commit only delays lag tools. */
    if (l->cnt > 0 && rd_kafka_commit(in->rk, l, 1) == RD_KAFKA_RESP_ERR_NO_ERROR)
        in->commit_unanswered = 1;
    rd_kafka_topic_partition_list_destroy(l);
}

/* Offset commit result, served on the loop thread from the consumer queue. */
static void on_commit(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    node_ingest_t *in = opaque;
    (void)rk;
    in->commit_unanswered = 0;
    for (int i = 0; offsets != NULL && i < offsets->cnt; i++) {
        const rd_kafka_topic_partition_t *o = &offsets->elems[i];
        for (size_t k = 0; k < in->n_topics; k++) {
            topic_t *t = &in->topics[k];
            if (strcmp(t->b->topic, o->topic) != 0 || o->partition < 0 ||
                (uint32_t)o->partition >= t->partitions)
                continue;
            if (err == 0 && o->err == 0)
                t->parts[o->partition].group_next = o->offset;
        }
    }
    if (err == RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID || err == RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION ||
        err == RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS) {
        /* A group with members refuses commits from outside it: another
         * application's consumers subscribed under the same group id. */
        char why[512];
        snprintf(why, sizeof(why),
                 "%s: another consumer is a member of this group (an application that "
                 "subscribes under the same group id); kvs reads its partitions without "
                 "joining, so set a kafka.group_id no other application uses",
                 rd_kafka_err2str(err));
        log_group_error(in, why);
    } else if (err != 0 && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        log_group_error(in, rd_kafka_err2str(err));
}

static int64_t end_offset(node_ingest_t *in, const topic_t *t, int32_t p)
{
    int64_t lo, hi;
    if (rd_kafka_get_watermark_offsets(in->rk, t->b->topic, p, &lo, &hi) != 0 || hi < 0)
        return -1;
    return hi;
}

/* The offset of the next record of partition p that ingestion applies:
 * the stored one, or, before any record of it was applied, where
 * auto.offset.reset starts it: the partition's first offset (earliest, the
 * default) or its end (latest), as the brokers last told; -1 while they
 * have not. So an empty partition shows 0, not "-1 = nothing read". */
static int64_t reset_start(node_ingest_t *in, const topic_t *t, int32_t p)
{
    int64_t lo, hi;
    if (rd_kafka_get_watermark_offsets(in->rk, t->b->topic, p, &lo, &hi) != 0)
        return -1;
    int64_t next = start_of(in, &t->parts[p]) == RD_KAFKA_OFFSET_END ? hi : lo;
    return next < 0 ? -1 : next;
}

static int64_t next_offset(node_ingest_t *in, const topic_t *t, int32_t p)
{
    int64_t next = t->parts[p].next;
    return next >= 0 ? next : reset_start(in, t, p);
}

static int64_t known_end(node_ingest_t *in, const topic_t *t, int32_t p);

/* Records between next and end; -1 when either is not known. */
static int64_t part_lag(int64_t next, int64_t end)
{
    if (next < 0 || end < 0)
        return -1;
    return end > next ? end - next : 0;
}

static void report(node_ingest_t *in)
{
    for (size_t i = 0; i < in->n_topics; i++) {
        topic_t *t = &in->topics[i];
        uint64_t applied = 0, skipped = 0, misplaced = 0, lag = 0;
        int unknown = 0;
        for (uint32_t p = 0; p < t->partitions; p++) {
            part_t *pt = &t->parts[p];
            if (!pt->owned)
                continue;
            int64_t l = part_lag(next_offset(in, t, (int32_t)p), known_end(in, t, (int32_t)p));
            applied += pt->applied;
            skipped += pt->skipped;
            misplaced += pt->misplaced;
            if (l < 0)
                unknown = 1;
            else
                lag += (uint64_t)l;
        }
        kvs_info("kafka %s -> %s: applied %llu (misplaced %llu), skipped %llu, lag %llu%s",
                 t->b->topic, t->b->table, (unsigned long long)applied,
                 (unsigned long long)misplaced, (unsigned long long)skipped,
                 (unsigned long long)lag, unknown ? " (end offsets not known yet)" : "");
    }
}

static void metadata_work(uv_work_t *w);
static void metadata_done(uv_work_t *w, int status);

/* Starts a check of the bound topics' partition counts when one is due. */
static void check_start(node_ingest_t *in)
{
    uint64_t now = uv_now(in->loop);
    if (!in->checked || in->check_ms == 0 || in->work_busy || in->stopping ||
        now - in->last_check_ms < in->check_ms)
        return;
    in->last_check_ms = now;
    in->work_busy = 1;
    in->work.data = in;
    if (uv_queue_work(in->loop, &in->work, metadata_work, metadata_done) != 0)
        in->work_busy = 0;
}

static void end_probe(node_ingest_t *in);

static void on_tick(uv_timer_t *h)
{
    node_ingest_t *in = h->data;
    if (in->state != NULL) {
        kvs_shardstate_heartbeat(in->state, (int64_t)uv_now(in->loop));
        publish(in);
    }
    if (!in->assigned)
        return;
    cluster_refresh(in); /* compared when read, also while no record comes */
    commit_group(in);
    range_start(in); /* partitions out of range the brokers did not answer for */
    check_start(in);
    end_probe(in);
    for (size_t i = 0; i < in->n_topics; i++)
        report_misplaced(in, &in->topics[i], 1);
    if (++in->ticks % REPORT_EVERY_TICKS == 0)
        report(in);
}

/* ---- freshness -------------------------------------------------------------------- */

/* The end offset as this worker knows it: the brokers' high watermark, or
 * past its own records acknowledged before a fetch told. */
static int64_t known_end(node_ingest_t *in, const topic_t *t, int32_t p)
{
    int64_t end = end_offset(in, t, p);
    if (t->parts[p].asked_end > end)
        end = t->parts[p].asked_end;
    return t->parts[p].produced_end > end ? t->parts[p].produced_end : end;
}

/* Whether the brokers say the partition's log ends below what this shard
 * applied, before the range check (see "out of range") decided: librdkafka's
 * high watermark (from any fetch) is below `next`, above the worker's own
 * acknowledged records and any end it was told, or one answer to a range
 * question was short. The log may have diverged (a topic created again
 * under a worker that was down: its first fetch learns the short end at
 * once, the DIVERGED verdict takes a second answer a second later), so the
 * partition's reads are refused meanwhile, as a diverged one's: serving
 * the old table as current is what the check is there to prevent. A
 * broker that lags a moment costs a moment of refused reads. */
static int part_short(node_ingest_t *in, const topic_t *t, int32_t p)
{
    const part_t *pt = &t->parts[p];
    if (pt->next < 0)
        return 0;
    if (pt->suspect)
        return 1;
    int64_t hi = end_offset(in, t, p);
    return hi >= 0 && pt->next > hi && pt->next > pt->produced_end && pt->next > pt->asked_end;
}

/* The page's diverged flag: a Rebuild clears it only once its txn
 * committed, so routers never read the old table as current meanwhile;
 * it is also set while the log looks short (part_short), so routers send
 * those reads to the worker, which refuses them. */
static int page_diverged(node_ingest_t *in, const topic_t *t, int32_t p)
{
    const part_t *pt = &t->parts[p];
    return pt->diverged || (pt->rebuilding && pt->was_diverged) || part_short(in, t, p);
}

/* Brings the state page up to date: what a router reading this shard's
 * environment needs to apply the freshness rules as this worker does (the
 * applied offsets it reads from the environment itself). */
static void publish(node_ingest_t *in)
{
    if (in->state == NULL)
        return;
    if (in->publish_timer.loop != NULL)
        uv_timer_stop(&in->publish_timer); /* what it would bring is brought now */
    in->published_ms = uv_now(in->loop);
    for (size_t i = 0; i < in->n_topics; i++) {
        topic_t *t = &in->topics[i];
        uint32_t b = (uint32_t)(t->b - in->cfg->bindings);
        for (uint32_t p = 0; p < t->partitions; p++)
            if (t->parts[p].owned) {
                kvs_shardstate_set_part(in->state, b, p, known_end(in, t, (int32_t)p),
                                        reset_start(in, t, (int32_t)p));
                kvs_shardstate_set_diverged(in->state, b, p, page_diverged(in, t, (int32_t)p));
            }
    }
}

static topic_t *topic_of_binding(node_ingest_t *in, const kvs_binding_t *b)
{
    for (size_t i = 0; i < in->n_topics; i++)
        if (in->topics[i].b == b)
            return &in->topics[i];
    return NULL;
}

/* ---- asking the brokers where a partition ends -------------------------------------- */

/* In the thread pool: where logical position `want` (RD_KAFKA_OFFSET_END,
 * _BEGINNING) of each of the n partitions at items, stride bytes apart
 * (each starting with its offq_t), is: one ListOffsets round trip per
 * leader, at most ask_timeout_ms in all, through the asker handle (the
 * consumer's would wait behind the fetch its broker holds). A partition not
 * answered gets -1. rd_kafka_offsets_for_times, not
 * rd_kafka_query_watermark_offsets, because the latter (librdkafka before
 * 2.3) ignores its timeout while the leader is down: it would wait for the
 * brokers to come back, every later question behind it, and the loop
 * (uv_run waits for the work) would never let the worker stop. */
static void list_offsets(node_ingest_t *in, int64_t want, void *items, size_t stride, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ((offq_t *)((char *)items + i * stride))->off = -1;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(16);
    if (l == NULL)
        return;
    for (size_t i = 0; i < n; i++) { /* one entry each: topics differ per binding */
        const offq_t *q = (const offq_t *)((const char *)items + i * stride);
        rd_kafka_topic_partition_list_add(l, q->topic, q->p)->offset = want;
    }
    rd_kafka_t *rk = in->asker != NULL ? in->asker : in->rk;
    if (rd_kafka_offsets_for_times(rk, l, atomic_load(&in->ask_timeout_ms)) ==
        RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (size_t i = 0; i < n; i++) {
            offq_t *q = (offq_t *)((char *)items + i * stride);
            rd_kafka_topic_partition_t *e = rd_kafka_topic_partition_list_find(l, q->topic, q->p);
            if (e != NULL && e->err == RD_KAFKA_RESP_ERR_NO_ERROR && e->offset >= 0)
                q->off = e->offset;
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* In the thread pool: where every partition asked about ends. */
static void ask_work(uv_work_t *w)
{
    node_ingest_t *in = w->data;
    if (in->ask_unanswered) {
        for (size_t i = 0; i < in->n_asks; i++)
            in->asks[i].q.off = -1; /* the test hook: nobody answered */
        return;
    }
    list_offsets(in, RD_KAFKA_OFFSET_END, in->asks, sizeof(*in->asks), in->n_asks);
}

static void ask_start(node_ingest_t *in);

static void ask_done(uv_work_t *w, int status)
{
    node_ingest_t *in = w->data;
    (void)status;
    in->ask_busy = 0;
    in->ask_done = in->ask_started;
    for (size_t i = 0; i < in->n_asks; i++) {
        if (in->asks[i].q.off >= 0)
            in->asks[i].part->end_heard_ms = uv_now(in->loop);
        else if (!in->ask_probe)
            in->ask_failed_ms = uv_now(in->loop); /* reads stop asking for a while */
        if (in->asks[i].q.off > in->asks[i].part->asked_end)
            in->asks[i].part->asked_end = in->asks[i].q.off;
    }
    in->n_asks = 0;
    if (in->stopping)
        return;
    publish(in);
    ask_start(in); /* for partitions asked while this query ran */
    if (in->on_answer != NULL)
        in->on_answer(in->arg);
}

/* Adds to the next query every partition a read asked about (want_end),
 * or with `probe` every one end_probe did (probe_end), clearing both
 * flags of each. */
static void ask_collect(node_ingest_t *in, int probe)
{
    for (size_t i = 0; i < in->n_topics; i++) {
        topic_t *t = &in->topics[i];
        for (uint32_t p = 0; p < t->partitions; p++) {
            part_t *pt = &t->parts[p];
            if (!(probe ? pt->probe_end : pt->want_end))
                continue;
            pt->want_end = pt->probe_end = 0;
            in->asks[in->n_asks++] = (struct ask_s){{t->b->topic, (int32_t)p, -1}, pt};
        }
    }
}

/* Starts a query for every partition reads asked about since the last one
 * started; when none did, for those end_probe asks about. None when
 * nothing was asked. */
static void ask_start(node_ingest_t *in)
{
    if (in->ask_busy || in->stopping)
        return;
    ask_collect(in, 0);
    in->ask_probe = in->n_asks == 0;
    if (in->ask_probe)
        ask_collect(in, 1);
    if (in->n_asks == 0)
        return;
    in->ask_busy = 1;
    in->ask_started++;
    in->ask_unanswered = in->unanswered > 0;
    if (in->ask_unanswered) {
        in->unanswered--;
        kvs_warn("test hook: end question %llu goes unanswered (KVS_TEST_ASKS_UNANSWERED)",
                 (unsigned long long)in->ask_started);
    }
    in->ask_work.data = in;
    uv_queue_work(in->loop, &in->ask_work, ask_work, ask_done);
}

/* ---- end age ------------------------------------------------------------------------ */

/* Info's end_offset and lag are only as current as the brokers' last word
 * on the partition: the high watermark of the last fetch that delivered
 * its records, or an answer to a question. A worker cut off from the
 * brokers while they work for everyone else would go on showing the last
 * of them (lag 0, serving) with nothing to tell the stall. So once per
 * check interval (the partition-count check's: topic.metadata.refresh.
 * interval.ms, 30 s unless set; 0: never) the worker asks where every
 * owned partition ends that nothing spoke of for half of it, and Info and
 * /metrics show each partition's end_offset_age_ms: how long ago the
 * brokers last told. An idle partition of a healthy cluster stays below
 * about 1.5 intervals; one cut off grows without bound.
 *
 * A halted partition (auto.offset.reset "error") is asked too: nothing
 * fetches it, so only the probe tells how far its log runs ahead, and its
 * reads are served only while that lag is within kafka.max_lag. A
 * diverged one's reads are refused whatever its end.
 *
 * The probe is the worker's own business and must not change what reads
 * get: its partitions go in a query of their own, only when no read's
 * question waits (an idle partition whose leader is slow or gone cannot
 * fail a read's question about another), and its going unanswered does
 * not stop reads from asking (ASK_BACKOFF_MS is for reads' questions). A
 * read that asks while a probe's query runs waits for it to end (at most
 * ask_timeout_ms, once per interval), as behind any other query. */
static void end_probe(node_ingest_t *in)
{
    uint64_t now = uv_now(in->loop);
    if (in->check_ms == 0 || in->stopping || in->asks == NULL)
        return;
    if (in->last_probe_ms == 0)
        in->last_probe_ms = now; /* the first interval from the first tick */
    if (now - in->last_probe_ms < in->check_ms)
        return;
    in->last_probe_ms = now;
    for (size_t i = 0; i < in->n_topics; i++) {
        topic_t *t = &in->topics[i];
        for (uint32_t p = 0; p < t->partitions; p++) {
            part_t *pt = &t->parts[p];
            if (pt->owned && !pt->diverged && now - pt->end_heard_ms >= in->check_ms / 2)
                pt->probe_end = 1;
        }
    }
    ask_start(in);
}

/* How long ago the brokers last told where partition p ends, in ms; -1
 * when they never did. */
static int64_t end_age_ms(node_ingest_t *in, const part_t *pt)
{
    return pt->end_heard_ms == 0 ? -1 : (int64_t)(uv_now(in->loop) - pt->end_heard_ms);
}

/* end_age_ms in seconds, for /metrics (-1 still means never). */
static double end_age_seconds(node_ingest_t *in, const part_t *pt)
{
    int64_t ms = end_age_ms(in, pt);
    return ms < 0 ? -1.0 : (double)ms / 1000.0;
}

int node_ingest_want_end(node_ingest_t *in, const kvs_binding_t *b, uint32_t p)
{
    topic_t *t = topic_of_binding(in, b);
    if (t == NULL || p >= t->partitions || !t->parts[p].owned || in->stopping || in->asks == NULL)
        return 0;
    /* The brokers did not answer a moment ago: asking again would hold
     * the read (and its connection) for another whole timeout. */
    if (in->ask_failed_ms != 0 && uv_now(in->loop) - in->ask_failed_ms < ASK_BACKOFF_MS)
        return 0;
    t->parts[p].want_end = 1;
    return 1;
}

uint64_t node_ingest_ask_end(node_ingest_t *in, const kvs_binding_t *b, uint32_t p)
{
    if (!node_ingest_want_end(in, b, p))
        return 0;
    /* A query already running may have been answered before the record the
     * read is about was written: the answer that counts is the next one's. */
    uint64_t ticket = in->ask_started + 1;
    ask_start(in);
    return ticket;
}

void node_ingest_set_ask_timeout(node_ingest_t *in, int ms)
{
    if (in != NULL)
        atomic_store(&in->ask_timeout_ms, ms > 0 ? ms : 1000); /* the next query's */
}

void node_ingest_set_asker(node_ingest_t *in, rd_kafka_t *rk)
{
    in->asker = rk;
}

int node_ingest_answered(const node_ingest_t *in, uint64_t ticket)
{
    return in->ask_done >= ticket;
}

int node_ingest_fresh(node_ingest_t *in, const kvs_binding_t *b, uint32_t p, kvs_fresh_part_t *out)
{
    topic_t *t = topic_of_binding(in, b);
    if (t == NULL || p >= t->partitions || !t->parts[p].owned)
        return KVS_ENOTFOUND;
    out->next = next_offset(in, t, (int32_t)p);
    out->end = known_end(in, t, (int32_t)p);
    out->diverged = t->parts[p].diverged || part_short(in, t, (int32_t)p);
    out->settling = out->end < 0 && uv_now(in->loop) - in->started_ms < NODE_INGEST_SETTLE_MS;
    out->topic_partitions = t->resized;
    return 0;
}

uint32_t node_ingest_resized(node_ingest_t *in, const kvs_binding_t *b)
{
    topic_t *t = topic_of_binding(in, b);
    return t != NULL ? t->resized : 0;
}

const char *node_ingest_resized_message(const kvs_binding_t *b, uint32_t now, uint32_t placed,
                                        char *buf, size_t len)
{
    if (now == KVS_FRESH_UNCONFIRMED) {
        snprintf(buf, len,
                 "kafka.bindings places table %s by %u partitions of topic %s, not by the count "
                 "its data was stored by, and the brokers have not confirmed the topic's count yet "
                 "(unreachable?): its reads and writes are refused until they do, as a wrong "
                 "count would look keys up, and produce them, on the wrong partitions",
                 b->table, placed, b->topic);
        return buf;
    }
    snprintf(buf, len,
             "topic %s has %u partitions, but kvs placed table %s on %u: its producers now put "
             "keys on other partitions than kvs looks them up on, so the table's reads and "
             "writes are refused; restart kvs with the new layout (partitions: %u in the "
             "table's kafka.bindings entry; README: \"Growing a bound topic\")",
             b->topic, now, b->table, placed, now);
    return buf;
}

void node_ingest_note_produced(node_ingest_t *in, const kvs_binding_t *b, uint32_t p,
                               int64_t offset)
{
    topic_t *t = topic_of_binding(in, b);
    if (t == NULL || p >= t->partitions || offset + 1 <= t->parts[p].produced_end)
        return;
    t->parts[p].produced_end = offset + 1;
    if (in->state != NULL && t->parts[p].owned)
        kvs_shardstate_set_part(in->state, (uint32_t)(b - in->cfg->bindings), p,
                                known_end(in, t, (int32_t)p), reset_start(in, t, (int32_t)p));
}

int64_t node_ingest_committed(node_ingest_t *in, const kvs_binding_t *b, uint32_t p)
{
    topic_t *t = topic_of_binding(in, b);
    if (t == NULL || p >= t->partitions || !t->parts[p].owned)
        return -1;
    return t->parts[p].committed_next;
}

int node_ingest_writable(node_ingest_t *in, const kvs_binding_t *b, uint32_t p)
{
    topic_t *t = topic_of_binding(in, b);
    return !in->stopping && t != NULL && p < t->partitions && t->parts[p].owned;
}

/* ---- this worker's own records ------------------------------------------------------ */

void node_ingest_set_own(node_ingest_t *in, const node_ingest_own_t *own)
{
    in->own = *own;
}

int node_ingest_apply_delivered(node_ingest_t *in, const void *record)
{
    rd_kafka_message_t *m = (rd_kafka_message_t *)record;
    topic_t *t = topic_of(in, m);
    /* An acknowledgement without an offset (a duplicate, as the broker
     * says) places the record nowhere: a partition that never gave a
     * record has next -1 too, and must not take it as its next one. */
    if (!in->assigned || in->stopping || in->rewind || in->throttle_ms > 0 || t == NULL ||
        m->offset < 0 || m->partition < 0 || (uint32_t)m->partition >= t->partitions ||
        !t->parts[m->partition].owned || t->parts[m->partition].next != m->offset ||
        t->parts[m->partition].diverged || t->parts[m->partition].halted || batch_lost(in))
        return 0; /* not next in its partition: ingestion applies it when it reads it */
    int rc = apply_batch(in, &m, 1);
    if (rc != 0) {
        kvs_error("applying an acknowledged record failed (%s); it will be re-read",
                  kvs_strerror(rc));
        in->rewind = 1;
        return rc;
    }
    return 1;
}

/* ---- Info ------------------------------------------------------------------------ */

static void info_int(kvs_resp_t *r, const char *key, int64_t v)
{
    uint8_t enc[16];
    kvs_resp_pair(r, key, strlen(key), enc, kvs_value_encode_int(enc, v));
}

void node_ingest_info(node_ingest_t *in, kvs_resp_t *r)
{
    char key[400];
    for (size_t i = 0; i < in->n_topics; i++) {
        topic_t *t = &in->topics[i];
        for (uint32_t p = 0; p < t->partitions; p++) {
            part_t *pt = &t->parts[p];
            if (!pt->owned)
                continue;
            int64_t end = known_end(in, t, (int32_t)p), next = next_offset(in, t, (int32_t)p);
            int n = snprintf(key, sizeof(key), "kafka.%s.%05u.", t->b->topic, p);
            snprintf(key + n, sizeof(key) - (size_t)n, "applied");
            info_int(r, key, (int64_t)pt->applied);
            snprintf(key + n, sizeof(key) - (size_t)n, "cluster_id");
            uint8_t id[KVS_SCHEMA_CLUSTER_ID_MAX + 11];
            kvs_resp_pair(r, key, strlen(key), id,
                          kvs_value_encode_bytes(id, 1, t->cluster, strlen(t->cluster)));
            snprintf(key + n, sizeof(key) - (size_t)n, "diverged");
            info_int(r, key, pt->diverged);
            snprintf(key + n, sizeof(key) - (size_t)n, "end_offset");
            info_int(r, key, end);
            snprintf(key + n, sizeof(key) - (size_t)n, "end_offset_age_ms");
            info_int(r, key, end_age_ms(in, pt));
            snprintf(key + n, sizeof(key) - (size_t)n, "halted");
            info_int(r, key, pt->diverged || pt->halted);
            snprintf(key + n, sizeof(key) - (size_t)n, "ingested");
            info_int(r, key, (int64_t)pt->ingested);
            snprintf(key + n, sizeof(key) - (size_t)n, "lag");
            info_int(r, key, part_lag(next, end));
            snprintf(key + n, sizeof(key) - (size_t)n, "lost");
            info_int(r, key, (int64_t)pt->lost);
            snprintf(key + n, sizeof(key) - (size_t)n, "misplaced");
            info_int(r, key, (int64_t)pt->misplaced);
            snprintf(key + n, sizeof(key) - (size_t)n, "next_offset");
            info_int(r, key, next);
            snprintf(key + n, sizeof(key) - (size_t)n, "serving");
            kvs_fresh_part_t fp;
            node_ingest_fresh(in, t->b, p, &fp);
            info_int(r, key, kvs_fresh_serving(&fp, in->cfg->kafka_max_lag));
            snprintf(key + n, sizeof(key) - (size_t)n, "skipped");
            info_int(r, key, (int64_t)pt->skipped);
            snprintf(key + n, sizeof(key) - (size_t)n, "topic_partitions");
            info_int(r, key, t->actual);
        }
    }
}

/* ---- metrics ---------------------------------------------------------------------- */

/* The families of one column of every owned partition. */
static void metric_column(node_ingest_t *in, kvs_mb_t *b, const char *shard, const char *name,
                          Kvs__MetricFamily__Type type, const char *help, int col)
{
    Kvs__MetricFamily *f = kvs_mb_family(b, name, type, help);
    int serving = in->assigned && !in->rewind && !in->stopping;
    for (size_t i = 0; i < in->n_topics; i++) {
        topic_t *t = &in->topics[i];
        for (uint32_t p = 0; p < t->partitions; p++) {
            part_t *pt = &t->parts[p];
            if (!pt->owned)
                continue;
            int64_t end = known_end(in, t, (int32_t)p), next = next_offset(in, t, (int32_t)p);
            double v = col == 0   ? (double)pt->applied
                       : col == 1 ? (double)pt->skipped
                       : col == 2 ? (double)pt->misplaced
                       : col == 3 ? (double)next
                       : col == 4 ? (double)end
                       : col == 5 ? (double)part_lag(next, end)
                       : col == 7 ? (double)pt->lost
                       : col == 8
                           ? end_age_seconds(in, pt)
                           : (double)(serving && !pt->diverged && !pt->halted && t->resized == 0);
            kvs_mb_sample(b, f, v, 3, "shard", shard, "topic", t->b->topic, "partition",
                          kvs_mb_printf(b, "%u", p));
        }
    }
}

void node_ingest_metrics(node_ingest_t *in, kvs_mb_t *b, const char *shard)
{
    static const struct {
        const char *name, *help;
        Kvs__MetricFamily__Type type;
    } cols[] = {
        {"kvs_partition_applied_records_total", "Kafka records applied to the store.",
         KVS__METRIC_FAMILY__TYPE__COUNTER},
        {"kvs_partition_skipped_records_total",
         "Kafka records skipped (no key, a payload the binding's format refuses, too large).",
         KVS__METRIC_FAMILY__TYPE__COUNTER},
        {"kvs_partition_misplaced_records_total",
         "Applied Kafka records that came on another partition than their key's.",
         KVS__METRIC_FAMILY__TYPE__COUNTER},
        {"kvs_partition_next_offset", "Offset of the next record to apply (-1: not known yet).",
         KVS__METRIC_FAMILY__TYPE__GAUGE},
        {"kvs_partition_end_offset", "The partition's end offset as last seen (-1: not known yet).",
         KVS__METRIC_FAMILY__TYPE__GAUGE},
        {"kvs_partition_lag_records", "Records behind the end of the partition (-1: not known).",
         KVS__METRIC_FAMILY__TYPE__GAUGE},
        {"kvs_partition_serving",
         "1 while the partition is assigned and ingesting, 0 while its worker waits (start-up "
         "checks, re-reading a lost batch, stopping), it is halted (diverged from the topic), "
         "or its topic has another partition count than the binding's.",
         KVS__METRIC_FAMILY__TYPE__GAUGE},
        {"kvs_partition_lost_records_total",
         "Kafka records this worker process passed over without applying them: deleted before "
         "they were read (retention), or passed by auto.offset.reset latest.",
         KVS__METRIC_FAMILY__TYPE__COUNTER},
        {"kvs_partition_end_offset_age_seconds",
         "How long ago the brokers last told where the partition ends (a fetch that delivered "
         "its records, or an answer to a question; asked once per "
         "topic.metadata.refresh.interval.ms when idle); -1: never.",
         KVS__METRIC_FAMILY__TYPE__GAUGE},
    };
    for (int i = 0; i < (int)(sizeof(cols) / sizeof(cols[0])); i++)
        metric_column(in, b, shard, cols[i].name, cols[i].type, cols[i].help, i);
    Kvs__MetricFamily *fp = kvs_mb_family(
        b, "kvs_topic_partitions", KVS__METRIC_FAMILY__TYPE__GAUGE,
        "The bound topic's partition count as the brokers last said (-1: not known yet).");
    for (size_t i = 0; i < in->n_topics; i++)
        kvs_mb_sample(b, fp, (double)in->topics[i].actual, 2, "shard", shard, "topic",
                      in->topics[i].b->topic);
    Kvs__MetricFamily *fr =
        kvs_mb_family(b, "kvs_topic_resized", KVS__METRIC_FAMILY__TYPE__GAUGE,
                      "1 while the bound topic has another partition count than kvs places its "
                      "table by (partitions were added): the table's reads and writes are "
                      "refused until kvs restarts with the new layout.");
    for (size_t i = 0; i < in->n_topics; i++)
        kvs_mb_sample(
            b, fr,
            (double)(in->topics[i].resized != 0 && in->topics[i].resized != KVS_FRESH_UNCONFIRMED),
            2, "shard", shard, "topic", in->topics[i].b->topic);
}

/* ---- metadata check and assignment ------------------------------------------------ */

/* KVS_TEST_TOPIC_PARTITIONS_FILE: what the file says overrides the
 * brokers' answer (in the thread pool: file I/O stays off the loop). */
static void read_counts_file(node_ingest_t *in)
{
    char line[400], name[300];
    int n;
    FILE *f = in->counts_file != NULL ? fopen(in->counts_file, "re") : NULL;
    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "%299s %d", name, &n) != 2 || n <= 0)
            continue;
        for (size_t i = 0; i < in->n_topics; i++)
            if (strcmp(name, in->topics[i].b->topic) == 0)
                in->topics[i].seen = n;
    }
    fclose(f);
}

/* In the thread pool: writes only each topic's `seen`, which the loop
 * thread reads in metadata_done, after this returned.
 *
 * The start-up check asks for every topic (not just ours): a metadata
 * request naming a topic makes brokers with auto-creation on (and the mock
 * cluster) create it, so a misspelled binding would silently become a new
 * topic. Once running, the bound topics exist: a check names only them
 * (the topics this handle knows), which costs the brokers far less on a
 * cluster of many topics, and a consumer's request never creates a topic
 * (allow.auto.create.topics is false for consumers). */
static void metadata_work(uv_work_t *w)
{
    node_ingest_t *in = w->data;
    const struct rd_kafka_metadata *md = NULL;
    in->cid_meta[0][0] = in->cid_meta[1][0] = '\0';
    for (size_t i = 0; i < in->n_topics; i++)
        in->topics[i].seen = -1;
    if (rd_kafka_metadata(in->rk, !in->checked, NULL, &md, METADATA_TIMEOUT_MS) != 0)
        return;
    for (int k = 0; k < md->topic_cnt; k++) {
        if (md->topics[k].err != 0)
            continue;
        for (size_t i = 0; i < in->n_topics; i++)
            if (strcmp(md->topics[k].topic, in->topics[i].b->topic) == 0)
                in->topics[i].seen = md->topics[k].partition_cnt;
    }
    rd_kafka_metadata_destroy(md);
    read_counts_file(in);
    /* The metadata just read carried the cluster's id: compared before the
     * first assignment, so a start under another cluster applies nothing. */
    rd_kafka_t *rks[2] = {in->rk, NULL};
    cluster_read(rks, in->cid_meta);
}

/* A check while running: a topic whose count is no longer the placed one
 * turns its table's reads and writes away, with one ERROR line, until
 * the worker restarts. It stays so whatever later answers say: brokers
 * learn of new partitions one after the other, so one that has not yet
 * may still say the old count, and Kafka never takes partitions away (a
 * topic deleted and created again diverges, see "out of range"). A larger
 * count yet is logged again. A topic missing from the answer (brokers
 * unreachable, the topic deleted) changes nothing: other checks deal
 * with that. */
/* Topic t has t->actual partitions, not the binding's count: its table is
 * refused from now on (logged once per new count). */
static void set_resized(node_ingest_t *in, topic_t *t, uint32_t n)
{
    t->resized = n;
    if (in->state != NULL)
        kvs_shardstate_set_resized(in->state, (uint32_t)(t->b - in->cfg->bindings), n);
}

static void mark_resized(node_ingest_t *in, topic_t *t)
{
    char msg[1024];
    if (t->resized == (uint32_t)t->actual)
        return;
    set_resized(in, t, (uint32_t)t->actual);
    kvs_error("kafka: %s",
              node_ingest_resized_message(t->b, t->resized, t->partitions, msg, sizeof(msg)));
}

static void recheck_done(node_ingest_t *in)
{
    for (size_t i = 0; i < in->n_topics; i++) {
        topic_t *t = &in->topics[i];
        if (t->seen <= 0)
            continue;
        kvs_debug("kafka: topic %s has %d partitions (checked)", t->b->topic, t->seen);
        if (t->resized != 0 && (uint32_t)t->seen <= t->resized)
            continue; /* known, or an answer from before the change */
        t->actual = t->seen;
        if ((uint32_t)t->actual != t->partitions)
            mark_resized(in, t);
    }
}

static void start_metadata(node_ingest_t *in);

static void metadata_done(uv_work_t *w, int status)
{
    node_ingest_t *in = w->data;
    char msg[600];
    int rc;
    in->work_busy = 0;
    if (in->stopping || status != 0)
        return;
    cluster_take(in, in->cid_meta);
    if (in->checked) {
        recheck_done(in);
        return;
    }
    for (size_t i = 0; i < in->n_topics; i++) {
        topic_t *t = &in->topics[i];
        t->actual = t->seen;
        if (t->actual < 0) {
            in->serving = 1;
            uint64_t now = uv_now(in->loop);
            if (in->last_err_log == 0 || now - in->last_err_log >= LOG_EVERY_MS) {
                in->last_err_log = now;
                kvs_warn("kafka: no metadata for topic %s yet (brokers %s unreachable, or the "
                         "topic does not exist); reads are served, ingestion waits",
                         t->b->topic, in->cfg->kafka_brokers);
            }
            start_metadata(in);
            return;
        }
        if ((uint32_t)t->actual != t->partitions && in->serving) {
            mark_resized(in, t); /* the node was serving: it serves on (start-up check) */
        } else if ((uint32_t)t->actual != t->partitions) {
            snprintf(msg, sizeof(msg),
                     "kafka topic %s has %d partitions but kvs places table %s by %u (%s); set "
                     "partitions: %d in its kafka.bindings entry, or the keys would be looked up "
                     "on the wrong shard",
                     t->b->topic, t->actual, t->b->table, t->partitions,
                     t->b->partitions ? "kafka.bindings[].partitions" : "cluster.partitions",
                     t->actual);
            in->on_fatal(in->arg, msg);
            return;
        }
        if ((uint32_t)t->actual == t->partitions &&
            (rc = node_store_layouts_confirmed(in->store, t->b->topic)) != 0)
            kvs_warn("kafka: the layout of table %s (topic %s) is not recorded yet: %s; the "
                     "next start checks the binding again",
                     t->b->table, t->b->topic, kvs_strerror(rc));
        if ((uint32_t)t->actual == t->partitions && t->resized == KVS_FRESH_UNCONFIRMED) {
            set_resized(in, t, 0);
            kvs_info("kafka: topic %s has %u partitions, as kafka.bindings places table %s by: "
                     "its reads and writes are served",
                     t->b->topic, t->partitions, t->b->table);
        }
    }
    in->checked = 1;
    in->last_check_ms = uv_now(in->loop);
    ingest_assign(in);
}

static void on_retry(uv_timer_t *h)
{
    node_ingest_t *in = h->data;
    if (in->stopping || in->work_busy)
        return;
    in->work_busy = 1;
    in->work.data = in;
    uv_queue_work(in->loop, &in->work, metadata_work, metadata_done);
}

static void start_metadata(node_ingest_t *in)
{
    /* First attempt at once, retries every 2 s (the query itself waits up
     * to METADATA_TIMEOUT_MS in the thread pool). */
    uv_timer_start(&in->timer, on_retry, in->ticks++ == 0 ? 0 : 2000, 0);
}

static void ingest_assign(node_ingest_t *in)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(16);
    for (size_t i = 0; i < in->n_topics; i++) {
        topic_t *t = &in->topics[i];
        for (uint32_t p = 0; p < t->partitions; p++) {
            part_t *pt = &t->parts[p];
            if (!pt->owned || pt->diverged || pt->halted)
                continue;
            rd_kafka_topic_partition_list_add(l, t->b->topic, (int32_t)p)->offset =
                pt->next >= 0 && !pt->restart ? pt->next : start_of(in, pt);
            pt->restart = 0;
            pt->pass_to = -1;     /* an end reached under the old assignment */
            pt->out_of_range = 0; /* fetching again */
            pt->suspect = 0;      /* a short answer was about the round this one ends */
        }
    }
    rd_kafka_resp_err_t err = rd_kafka_assign(in->rk, l);
    if (err != 0)
        kvs_error("kafka: assign failed: %s", rd_kafka_err2str(err));
    else
        kvs_info("kafka: consuming %d partition(s) owned by shard %u", l->cnt, in->shard);
    rd_kafka_topic_partition_list_destroy(l);
    in->assigned = 1;
    in->ticks = 0;
    uv_timer_start(&in->timer, on_tick, TICK_MS, TICK_MS);
    pump(in);
}

/* ---- start / stop ------------------------------------------------------------------ */

/* Called from librdkafka's threads (node_kafka_log). */
static void on_rdkafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    static _Atomic long last_warn;
    const node_ingest_t *in = rd_kafka_opaque(rk);
    node_kafka_log(&last_warn, in != NULL ? in->cfg : NULL, "", level, fac, buf);
}

/* Sets one property. A refused secret (kvs_config_secret_key) is named
 * but neither its value nor librdkafka's words (which quote it) appear in
 * the message. */
/* Settings kvs ships with (measured in tests/bench/ingest.sh), then the
 * user's kafka.properties, which win. */
static rd_kafka_conf_t *make_conf(node_ingest_t *in, char *err, size_t errlen)
{
    char client_id[64 + KVS_NODE_NAME_MAX];
    node_kafka_client_id(in->cfg, in->shard, "", client_id, sizeof(client_id));
    const node_kafka_prop_t defaults[] = {
        {"bootstrap.servers", in->cfg->kafka_brokers},
        {"group.id", in->group},
        {"client.id", client_id},
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"auto.offset.reset", "earliest"},
        {"fetch.wait.max.ms", "50"},
        {"queued.min.messages", "1000000"},
        {"log.connection.close", "false"},
        {"topic.metadata.refresh.interval.ms", CHECK_DEFAULT_MS},
    };
    rd_kafka_conf_t *conf = node_kafka_conf(defaults, sizeof(defaults) / sizeof(defaults[0]),
                                            in->cfg, "the consumer", err, errlen);
    if (conf == NULL)
        return NULL;
    char reset[32] = "earliest";
    size_t n = sizeof(reset);
    rd_kafka_conf_get(conf, "auto.offset.reset", reset, &n);
    in->reset_offset =
        strcmp(reset, "latest") == 0 || strcmp(reset, "largest") == 0 || strcmp(reset, "end") == 0
            ? RD_KAFKA_OFFSET_END
            : RD_KAFKA_OFFSET_BEGINNING;
    in->reset_error = strcmp(reset, "error") == 0;
    /* kvs checks the bound topics' partition counts as often as librdkafka
     * refreshes their metadata: the user's setting, or kvs's 30 s. */
    char every[32] = CHECK_DEFAULT_MS;
    n = sizeof(every);
    rd_kafka_conf_get(conf, "topic.metadata.refresh.interval.ms", every, &n);
    long long ms = strtoll(every, NULL, 10);
    in->check_ms = ms > 0 ? (uint64_t)ms : 0;
    /* kvs applies the user's choice itself (see "out of range"), and learns
     * where the consumer reached each partition's end (see "passed over"). */
    if (rd_kafka_conf_set(conf, "auto.offset.reset", "error", err, errlen) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, errlen) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, on_rdkafka_log);
    rd_kafka_conf_set_offset_commit_cb(conf, on_commit);
    rd_kafka_conf_set_opaque(conf, in);
    return conf;
}

/* In the order of their Info keys, "kafka.<topic>.": a plain strcmp of
 * the names would put "a" before "a-b", whose keys sort first ('-' < '.'). */
static int cmp_topic(const void *a, const void *b)
{
    char x[300], y[300];
    snprintf(x, sizeof(x), "%s.", ((const topic_t *)a)->b->topic);
    snprintf(y, sizeof(y), "%s.", ((const topic_t *)b)->b->topic);
    return strcmp(x, y);
}

/* One topic_t per binding, sorted by name; parts owned by this shard. */
static int make_topics(node_ingest_t *in)
{
    const kvs_config_t *cfg = in->cfg;
    in->topics = calloc(cfg->n_bindings, sizeof(*in->topics));
    if (in->topics == NULL)
        return -ENOMEM;
    in->n_topics = cfg->n_bindings;
    for (size_t i = 0; i < cfg->n_bindings; i++) {
        topic_t *t = &in->topics[i];
        t->b = &cfg->bindings[i];
        t->partitions = kvs_config_table_partitions(cfg, t->b->table);
        t->actual = -1;
        node_placecheck_init(&t->check, t->b->partitioner, t->partitions);
        t->parts = calloc(t->partitions, sizeof(*t->parts));
        if (t->parts == NULL)
            return -ENOMEM;
        for (uint32_t p = 0; p < t->partitions; p++) {
            t->parts[p].owned = p % cfg->shards == in->shard;
            in->n_owned += t->parts[p].owned;
            t->parts[p].next = t->parts[p].committed_next = t->parts[p].group_next = -1;
            t->parts[p].produced_end = t->parts[p].asked_end = t->parts[p].pass_to = -1;
        }
    }
    in->asks = calloc(in->n_owned > 0 ? in->n_owned : 1, sizeof(*in->asks));
    in->ranges = calloc(in->n_owned > 0 ? in->n_owned : 1, sizeof(*in->ranges));
    if (in->asks == NULL || in->ranges == NULL)
        return -ENOMEM;
    qsort(in->topics, in->n_topics, sizeof(*in->topics), cmp_topic);
    for (size_t i = 0; i < in->n_topics; i++)
        in->topics[i].rkt = rd_kafka_topic_new(in->rk, in->topics[i].b->topic, NULL);
    return 0;
}

static int start_queue(node_ingest_t *in)
{
    if (pipe2(in->pipefd, O_NONBLOCK | O_CLOEXEC) != 0)
        return -errno;
    rd_kafka_poll_set_consumer(in->rk);
    in->q = rd_kafka_queue_get_consumer(in->rk);
    int rc = node_kafka_queue_pipe(in->q, in->pipefd[1]);
    if (rc == 0)
        rc = uv_poll_init(in->loop, &in->poll, in->pipefd[0]);
    if (rc != 0)
        return rc;
    in->poll.data = in;
    uv_idle_init(in->loop, &in->idle);
    in->idle.data = in;
    uv_timer_init(in->loop, &in->timer);
    in->timer.data = in;
    uv_timer_init(in->loop, &in->retry);
    uv_timer_init(in->loop, &in->range_timer);
    in->range_timer.data = in;
    uv_timer_init(in->loop, &in->suspect_timer);
    in->suspect_timer.data = in;
    in->retry.data = in;
    uv_timer_init(in->loop, &in->throttle_timer);
    in->throttle_timer.data = in;
    uv_timer_init(in->loop, &in->publish_timer);
    in->publish_timer.data = in;
    return uv_poll_start(&in->poll, UV_READABLE, on_readable);
}

/* KVS_TEST_INGEST_DELAY_MS: slows ingestion down for tests that must act
 * while a worker lags. KVS_TEST_RANGE_SHORT_ANSWERS: the next N answers
 * to range questions are short, for tests of what one lagging broker's
 * answer does (there is no such broker in the mock cluster).
 * KVS_TEST_LOSE_SKIPS: the batches of the next N skips fail.
 * KVS_TEST_ASKS_UNANSWERED: the next N end questions go unanswered.
 * KVS_TEST_REFUSE_RESERVATION: the Nth reservation of records is refused
 * (a disk without room for it), once. KVS_TEST_FAIL_RECORD: the Nth
 * record fails before it writes, once. Test builds
 * only (kvs_testhook); never config keys. */
static void read_test_hooks(node_ingest_t *in)
{
    uint64_t n;
    if (kvs_test_hook_u64("KVS_TEST_INGEST_DELAY_MS", &in->throttle_ms))
        kvs_warn("test hook: applying one Kafka record every %llu ms (KVS_TEST_INGEST_DELAY_MS)",
                 (unsigned long long)in->throttle_ms);
    in->counts_file = kvs_test_hook_str("KVS_TEST_TOPIC_PARTITIONS_FILE");
    if (in->counts_file != NULL)
        kvs_warn("test hook: \"TOPIC N\" lines in %s stand for the brokers' partition counts "
                 "(KVS_TEST_TOPIC_PARTITIONS_FILE)",
                 in->counts_file);
    if (kvs_test_hook_u64("KVS_TEST_RANGE_SHORT_ANSWERS", &n)) {
        in->short_answers = (unsigned long)n;
        kvs_warn("test hook: the next %lu answers to range questions say the log ends where it "
                 "starts (KVS_TEST_RANGE_SHORT_ANSWERS)",
                 in->short_answers);
    }
    if (kvs_test_hook_u64("KVS_TEST_ASKS_UNANSWERED", &n)) {
        in->unanswered = (unsigned long)n;
        kvs_warn("test hook: the next %lu end questions go unanswered (KVS_TEST_ASKS_UNANSWERED)",
                 in->unanswered);
    }
    if (kvs_test_hook_u64("KVS_TEST_ONE_CLUSTER", &n) && n != 0) {
        in->one_cluster = 1;
        kvs_warn("test hook: the brokers' cluster id is not compared with the one a topic's "
                 "records came from (KVS_TEST_ONE_CLUSTER)");
    }
    if (kvs_test_hook_u64("KVS_TEST_FAIL_RECORD", &in->fail_record))
        kvs_warn("test hook: record %llu fails as if out of memory (KVS_TEST_FAIL_RECORD)",
                 (unsigned long long)in->fail_record);
    if (kvs_test_hook_u64("KVS_TEST_REFUSE_RESERVATION", &in->refuse_at))
        kvs_warn("test hook: reservation %llu of records is refused as on a full disk "
                 "(KVS_TEST_REFUSE_RESERVATION)",
                 (unsigned long long)in->refuse_at);
    if (kvs_test_hook_u64("KVS_TEST_LOSE_SKIPS", &n)) {
        in->lose_skips = (unsigned long)n;
        kvs_warn("test hook: the batches of the next %lu skips fail (KVS_TEST_LOSE_SKIPS)",
                 in->lose_skips);
    }
}

/* The first metadata answer, asked synchronously by node_ingest_start. */
static void on_first_check(uv_timer_t *h)
{
    node_ingest_t *in = h->data;
    metadata_done(&in->work, 0);
}

int node_ingest_start(const node_ingest_opts_t *o, node_ingest_t **out, char *err, size_t errlen)
{
    char why[512];
    node_ingest_t *in = calloc(1, sizeof(*in));
    if (in == NULL)
        return -ENOMEM;
    in->loop = o->loop;
    in->cfg = o->cfg;
    in->shard = o->shard;
    in->store = o->store;
    in->on_fatal = o->on_fatal;
    in->serving = o->restarted;
    in->on_answer = o->on_answer;
    in->arg = o->arg;
    node_ingest_set_ask_timeout(in, o->ask_timeout_ms);
    in->pipefd[0] = in->pipefd[1] = -1;
    in->started_ms = uv_now(in->loop);
    in->group = node_ingest_group(in->cfg);
    if (in->group == NULL) {
        free(in);
        return -ENOMEM;
    }
    in->state = o->state;
    if (in->state != NULL)
        kvs_shardstate_set_settle(in->state, (int64_t)(in->started_ms + NODE_INGEST_SETTLE_MS));
    read_test_hooks(in);
    kvs_buf_init(&in->scratch);
    kvs_arena_init(&in->arena);
    rd_kafka_conf_t *conf = make_conf(in, err, errlen);
    if (conf == NULL) {
        free(in->group);
        free(in);
        return KVS_ECONFIG;
    }
    in->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, why, sizeof(why));
    if (in->rk == NULL) {
        node_kafka_scrub(in->cfg, why);
        snprintf(err, errlen, "cannot create the Kafka consumer: %s", why);
        rd_kafka_conf_destroy(conf);
        free(in->group);
        free(in);
        return KVS_ECONFIG;
    }
    int rc = make_topics(in);
    if (rc == 0)
        rc = start_queue(in);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start Kafka ingestion: %s", kvs_strerror(rc));
        node_ingest_stop(in);
        *out = in; /* the caller frees it after the loop ran */
        return rc;
    }
    /* Info shows the stored state even before Kafka answers. */
    size_t unconfirmed = 0;
    for (size_t i = 0; i < in->n_topics; i++) {
        for (uint32_t p = 0; p < in->topics[i].partitions; p++)
            if (in->topics[i].parts[p].owned)
                part_load(in, &in->topics[i], (int32_t)p);
        cluster_load(in, &in->topics[i]);
        topic_t *t = &in->topics[i];
        uint32_t was = node_store_layout_unconfirmed(in->store, t->b->topic);
        if (was != 0) {
            set_resized(in, t, KVS_FRESH_UNCONFIRMED);
            unconfirmed++;
            kvs_warn("kafka: kafka.bindings places table %s by %u partitions of topic %s, its "
                     "data here was stored by %u: its reads and writes wait for the brokers to "
                     "confirm the count",
                     t->b->table, t->partitions, t->b->topic, was);
        }
    }
    kvs_info("kafka: ingesting %zu topic(s) from %s (consumer group %s)", in->n_topics,
             in->cfg->kafka_brokers, in->group);
    *out = in;
    if (unconfirmed == 0) {
        start_metadata(in);
        return 0;
    }
    /* A changed count is asked of the brokers before the worker serves (at
     * most METADATA_TIMEOUT_MS), and their answer is taken at the start of
     * the loop's first turn, before any request is read: the table is
     * served at once, or a wrong count stops the start (exit 78) as any
     * start-up mismatch does; unanswered, it stays refused until the
     * brokers answer (the retries metadata_done starts). Asked in the
     * thread pool instead, it was refused for the few milliseconds a
     * reachable broker takes. */
    in->work_busy = 1;
    in->work.data = in;
    metadata_work(&in->work);
    uv_timer_start(&in->timer, on_first_check, 0, 0);
    return 0;
}

void node_ingest_stop(node_ingest_t *in)
{
    if (in->stopping)
        return;
    in->stopping = 1;
    if (in->assigned && in->commit_unanswered)
        kvs_info("kafka: not committing offsets to consumer group %s at stop: its last commit "
                 "is still unanswered (the offsets in LMDB are what ingestion resumes from)",
                 in->group);
    else if (in->assigned)
        commit_group(in);
    if (uv_is_active((uv_handle_t *)&in->poll) || in->poll.loop != NULL)
        uv_close((uv_handle_t *)&in->poll, NULL);
    if (in->idle.loop != NULL)
        uv_close((uv_handle_t *)&in->idle, NULL);
    if (in->timer.loop != NULL)
        uv_close((uv_handle_t *)&in->timer, NULL);
    if (in->retry.loop != NULL)
        uv_close((uv_handle_t *)&in->retry, NULL);
    if (in->range_timer.loop != NULL)
        uv_close((uv_handle_t *)&in->range_timer, NULL);
    if (in->suspect_timer.loop != NULL)
        uv_close((uv_handle_t *)&in->suspect_timer, NULL);
    if (in->throttle_timer.loop != NULL)
        uv_close((uv_handle_t *)&in->throttle_timer, NULL);
    if (in->publish_timer.loop != NULL)
        uv_close((uv_handle_t *)&in->publish_timer, NULL);
}

void node_ingest_free(node_ingest_t *in)
{
    if (in == NULL)
        return;
    if (in->throttled != NULL)
        rd_kafka_message_destroy(in->throttled);
    if (in->q != NULL) {
        rd_kafka_queue_io_event_enable(in->q, -1, NULL, 0);
        rd_kafka_queue_destroy(in->q);
    }
    for (size_t i = 0; i < in->n_topics; i++) {
        if (in->topics[i].rkt != NULL)
            rd_kafka_topic_destroy(in->topics[i].rkt);
        free(in->topics[i].parts);
        free(in->topics[i].moved_why);
    }
    free(in->topics);
    free(in->asks);
    free(in->ranges);
    /* On a timeout in stays: the client's log callback still reads it. */
    if (in->rk != NULL && node_kafka_destroy(in->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE,
                                             NODE_KAFKA_CLOSE_MS, "consumer") != 0)
        return;
    if (in->pipefd[0] >= 0)
        close(in->pipefd[0]);
    if (in->pipefd[1] >= 0)
        close(in->pipefd[1]);
    kvs_buf_free(&in->scratch);
    kvs_arena_close(&in->arena);
    free(in->group);
    free(in);
}

char *node_ingest_group(const kvs_config_t *cfg)
{
    size_t n = strlen(cfg->kafka_group_id) + strlen(cfg->node_name) + 2;
    char *g = malloc(n);
    if (g != NULL)
        snprintf(g, n, "%s%s%s", cfg->kafka_group_id, cfg->node_name[0] ? "." : "", cfg->node_name);
    return g;
}

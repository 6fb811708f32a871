/*
 * kvs_fresh: may this copy of a partition serve a read? The one place that
 * decides, so every reader (a worker today; the router reading LMDB
 * directly, or choosing among replicas, later) applies the same rules.
 *
 * Two rules, checked in this order, for each partition a read touches:
 *
 *  1. Catch-up gate. A copy whose lag (records in the topic it has not
 *     applied yet) exceeds kafka.max_lag serves no reads of that
 *     partition, unless the read accepts stale data: a worker that was
 *     down for hours, or a new one filling up, must not answer with an old
 *     table as if it were current. Right after a copy starts its lag is
 *     not known until the brokers answer; while it "settles" (the caller
 *     decides for how long) it serves no reads either. A lag still unknown
 *     after that (the brokers are unreachable) does not close the gate: a
 *     worker keeps serving what it has while Kafka is away.
 *  2. Minimum position. A read that must see the record at offset o of
 *     the partition (its own earlier write, say) is served only once the
 *     copy has applied it (next > o). Until then, if the record is in the
 *     topic (o < end) the read is "behind" by o + 1 - next records and the
 *     caller waits (bounded) or answers 503; if it is past the end the copy
 *     knows, the read is "ahead": a copy that can ask the brokers where the
 *     partition ends (a worker) asks once and decides again; otherwise it
 *     is refused, since nothing says the record will ever come.
 *
 * Before all: a topic whose partition count is no longer the one kvs
 * places its table by (partitions were added while kvs ran) serves no
 * reads at all, stale or not. Its producers now put keys on other
 * partitions than the one kvs looks a key up on, so an answer could come
 * from the wrong partition, or the wrong shard: no setting makes it right,
 * only a restart with the new layout.
 *
 * Before both: a copy whose partition diverged from the topic (the log
 * now ends below what the copy applied: the topic was deleted and created
 * anew, or its log was truncated) serves no reads of it unless the read
 * accepts stale data. What it holds is the partition as it was, and
 * nothing it applies from the new log could be trusted to fit with it.
 *
 * Pure functions of their arguments: no clock, no I/O.
 */
#ifndef KVS_FRESH_H
#define KVS_FRESH_H

#include <stdint.h>

#define KVS_FRESH_DEFAULT_MAX_LAG 10000

/* topic_partitions while the binding's partition count changed since the
 * table's data was stored and the brokers have not confirmed the new one:
 * refused as RESIZED is (the keys may not be where the count places
 * them), until they answer. */
#define KVS_FRESH_UNCONFIRMED UINT32_MAX

/* What a copy knows about one partition. */
typedef struct kvs_fresh_part_s {
    int64_t next; /* offset of the next record to apply (all below are applied); -1 unknown */
    int64_t end;  /* the partition's end offset as last heard (the brokers' high watermark,
                     or past the copy's own acknowledged writes); -1 unknown */
    int settling; /* just started, end not heard yet: its lag is not known yet */
    int diverged; /* the log ends below `next`: see above */
    uint32_t topic_partitions; /* the topic's partition count when it is no longer the one
                                  kvs places the table by (see above); 0: the same, or not
                                  known */
} kvs_fresh_part_t;

/* Verdicts, from best to worst (a read touching several partitions gets
 * the worst). */
typedef enum {
    KVS_FRESH_SERVE = 0,       /* serve the read */
    KVS_FRESH_BEHIND = 1,      /* the read's position is in the topic, not applied yet: wait */
    KVS_FRESH_STARTING = 2,    /* settling: wait for the end offset to be known */
    KVS_FRESH_AHEAD = 3,       /* the position is past the end the copy knows: ask, or 503 */
    KVS_FRESH_CATCHING_UP = 4, /* lag above max_lag: 503 now (unless stale is accepted) */
    KVS_FRESH_DIVERGED = 5,    /* the log no longer holds what was applied: 503 (ditto) */
    KVS_FRESH_RESIZED = 6,     /* the topic's partition count changed: 503, stale or not */
} kvs_fresh_verdict_t;

/* Verdicts from here on refuse the read at once, whatever else it touches. */
#define KVS_FRESH_REFUSED KVS_FRESH_CATCHING_UP

/* Records not applied yet (end - next, never negative), or -1 when either
 * is unknown. */
int64_t kvs_fresh_lag(const kvs_fresh_part_t *p);

/* The verdict for a read of partition `p`. `min_offset` is the offset of
 * the record the read must see (-1: none); `accept_stale` lifts the
 * catch-up gate, settling included (not the minimum position). *count, when not NULL, gets
 * the lag (CATCHING_UP) or the records still missing (BEHIND), else 0. */
kvs_fresh_verdict_t kvs_fresh_decide(const kvs_fresh_part_t *p, uint64_t max_lag,
                                     int64_t min_offset, int accept_stale, uint64_t *count);

/* Whether the partition serves ordinary reads (no position, stale not
 * accepted): what Info shows as `serving`. */
int kvs_fresh_serving(const kvs_fresh_part_t *p, uint64_t max_lag);

#endif

/*
 * node_placecheck: are the records of a bound topic on the partitions their
 * keys belong to?
 *
 * The router finds a key on the shard that owns the partition the binding's
 * partitioner gives it. A record that a producer put on another partition
 * (another partitioner, explicit partitions) is ingested by a shard the
 * router does not ask for that key: stored, but invisible to point reads.
 * The ingest module runs every keyed record it applies through this check,
 * counts the misplaced ones per partition, and logs the report this module
 * writes: rate-limited, with an example and what to do (the partitioner that
 * would have matched, when the records tell it), at ERROR when the first
 * batch of some size looks like a wrong partitioner.
 *
 * Pure bookkeeping: no I/O, no clock (the caller passes the time), so it is
 * unit-tested on its own. One node_placecheck_t per bound topic, embedded
 * by the caller, used on the loop thread only.
 */
#ifndef NODE_PLACECHECK_H
#define NODE_PLACECHECK_H

#include "kvs_place.h"

#include <stddef.h>
#include <stdint.h>

#define NODE_PLACECHECK_EVERY_MS 10000 /* at most one report per topic this often */
#define NODE_PLACECHECK_KEY_SHOWN 64   /* bytes of the example key shown */
#define NODE_PLACECHECK_JUDGE_MIN 16   /* keyed records a batch needs to be judged */
/* Records of evidence before a partitioner that misses too many is tried
 * no more: a few strays first (a record sent to a partition of its
 * producer's choosing) must not rule out the producers' partitioner for
 * good. */
#define NODE_PLACECHECK_TRY_MIN 64

typedef struct node_placecheck_s {
    kvs_partitioner_t partitioner; /* the binding's; none = nothing is checked */
    uint32_t partitions;
    uint64_t pending;                /* misplaced since the last report */
    uint64_t checked;                /* keyed records checked since the last report */
    uint64_t total, total_misplaced; /* ... and since the start, never reset */
    /* The evidence, from the first misplaced record on (never reset: it
     * only grows): records checked, and for each other partitioner still
     * tried, how many it would not have placed where they came. */
    uint64_t seen;
    uint64_t miss[KVS_PARTITIONER_HASHES];
    int tried[KVS_PARTITIONER_HASHES]; /* 0 once it missed too many to be the producers' */
    char example[NODE_PLACECHECK_KEY_SHOWN * 4 + 8]; /* the first one's key, escaped */
    int32_t example_came;                            /* ... the partition it came on */
    uint32_t example_want;                           /* ... the one kvs expected */
    int example_matches[KVS_PARTITIONER_HASHES];     /* ... partitioners that place it right */
    uint64_t batch_checked, batch_misplaced;         /* in the batch being applied */
    int judged;   /* the first batch of NODE_PLACECHECK_JUDGE_MIN records was judged */
    int reported; /* a report was written */
    uint64_t last_report_ms;
} node_placecheck_t;

/* Starts checking records placed by `partitioner` among `partitions` (> 0). */
void node_placecheck_init(node_placecheck_t *c, kvs_partitioner_t partitioner, uint32_t partitions);

/* Checks one applied record with a non-empty key that came on `partition`.
 * Returns 1 when it is misplaced (the caller counts it per partition), 0
 * when it is where its key belongs or the partitioner is none. */
int node_placecheck_record(node_placecheck_t *c, const void *key, size_t len, int32_t partition);

/* After each batch of records: judges the first batch that held at least
 * NODE_PLACECHECK_JUDGE_MIN keyed records of this topic, and writes a report of the misplaced
 * records not yet reported into buf[0..len) when one is due (the first at once, then at most every
 * NODE_PLACECHECK_EVERY_MS; at once anyway when the first batch judged looks like a wrong
 * partitioner). Returns the kvs_log_level_t to log it at (KVS_LOG_ERROR when the first batch is
 * nearly all misplaced, else KVS_LOG_WARN), or -1 when nothing is to be logged. */
int node_placecheck_batch_end(node_placecheck_t *c, const char *topic, uint64_t now_ms, char *buf,
                              size_t len);

/* Periodically: the report of misplaced records still pending once the
 * rate limit allows it (so the last ones of a burst are reported too).
 * Returns KVS_LOG_WARN with the report in buf, or -1. */
int node_placecheck_tick(node_placecheck_t *c, const char *topic, uint64_t now_ms, char *buf,
                         size_t len);

/* Writes key[0..n) into out[0..len) printable: bytes 0x20..0x7e other than
 * '"' and '\\' as they are, others as \xHH, at most `shown` bytes of the
 * key followed by "..." when it is longer. Always NUL-terminates (len > 0). */
void node_placecheck_escape(const void *key, size_t n, size_t shown, char *out, size_t len);

#endif

/*
 * router_merge: the one answer of a request whose parts went to several
 * shards (router_route sends them; see its comment for what each command
 * promises). Each part's raw answer, or why it has none, is kept in the
 * request's router_merge_t as it arrives; once all are in,
 * router_merge_finish decodes them once and answers the client: a split
 * write's 200, 207 or 503 saying what was applied where, the key-ordered
 * pairs of Hgetall, the merged values of Hmget and Hmexist (copied from
 * the raw answers where they can be), the sums of Hlen and Info, the
 * answer of a `partitioner: none` table's shard that has the key, the
 * families of Metrics. No merged answer is larger than limits.max_frame.
 * An Hscan page is router_route's (it walks shards one after another).
 */
#ifndef KVS_ROUTER_MERGE_H
#define KVS_ROUTER_MERGE_H

#include "router.h"
#include "router_replica.h"

typedef struct router_merge_s {
    Kvs__CommandRequest__CommandCase cmd;
    router_t *router;
    uint32_t nparts;
    uint32_t *part_shard; /* shard of each part */
    kvs_buf_t *answers;   /* raw answer payload of each part */
    uint32_t *failed;     /* part got no answer: the status to report (answers holds why) */
    size_t nkeys;
    ProtobufCBinaryData *keys; /* split write: the request's keys (copies), for a 207 */
    uint32_t *key_part;        /* multi-key: the part each key went to */
    uint32_t *key_index;       /* ... and its index inside that part */
    int anywhere;              /* every part got the whole request: the key may be on any */
    router_try_t *tries;       /* each part's replicas */
    /* Hscan: a shard's part ended before `count` pairs, so the page goes on
     * with the next shard (scan_next). The earlier shards' answers, each
     * [u32 length][CommandResponse]; the request for the next one (packed
     * frame, cursor empty); pairs and shards so far. */
    kvs_buf_t scan_pages;
    kvs_buf_t scan_req;
    uint32_t scan_count; /* the page's count, default and cap applied */
    uint32_t scan_pairs;
    uint32_t scan_hops;
    uint64_t scan_until; /* kvs_now_ns() past which the page takes no more shards */
    /* The bytes of answers kept in `answers` that count as the client's
     * held output (router_client_hold) until the merge ends: parts that
     * wait for a slow shard's are output the client will be sent. */
    size_t held;
    int presence; /* Hclear with presence_only: whether keys were removed, not how many */
} router_merge_t;

/* A merge of `nparts` parts (and `nkeys` keys: multi-key commands), for
 * `cmd`; NULL when out of memory. */
router_merge_t *router_merge_new(router_t *r, Kvs__CommandRequest__CommandCase cmd, uint32_t nparts,
                                 size_t nkeys);

/* Frees `m` (NULL: nothing), which router_merge_new may have left half
 * built. */
void router_merge_free(router_merge_t *m);

/* Every part of req->merge is in (an answer, or failed[] says why not):
 * answers `req`. Not an Hscan page (router_route's). */
void router_merge_finish(router_req_t *req);

/* The failure text of failed part `i`: what router_route_reply was told,
 * or, when even that could not be kept, the reason. */
const char *router_merge_part_failure(const router_merge_t *m, uint32_t i);

/* Whether `m` is an Hmset or Hmdel split over shards. */
int router_merge_is_split_write(const router_merge_t *m);

/* The parts' answers decoded in `arena`, in part order; NULL when `req`
 * was answered instead (a part failed, or one did not decode). */
Kvs__CommandResponse **router_merge_decode_parts(router_req_t *req, kvs_arena_t *arena);

/* Answers `req` with `resp` packed, or 413 when it does not fit
 * limits.max_frame (`cmd` names the command, `hint` what to do). */
void router_merge_finish_packed(router_req_t *req, Kvs__CommandResponse *resp, const char *cmd,
                                const char *hint);

#endif

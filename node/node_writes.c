/*
 * node_writes: log-first writes (see node_writes.h for what they promise).
 *
 * A write request becomes a wreq_t holding one rec_t per key, in request
 * order. A record settles once both halves of its acknowledgement are in:
 *
 *   acked      Kafka's delivery report said ok (node_produce);
 *   committed  ingestion applied it (the claim: node_ingest hands over the
 *              value it replaced) and the LMDB transaction holding it
 *              committed (node_writes_turn, after each turn's commit).
 *
 * The two race freely: a delivery report may come first (the usual case;
 * if the record is then the next one of its partition, it is applied on
 * the spot, node_ingest_apply_delivered, instead of waiting for the
 * consumer to fetch it back), or the consumer may read the record before
 * its report arrives, or the report may carry no offset at all (a retry
 * the broker recognized as already written). Matching never depends on
 * that order: records are claimed by the id in their "kvs.writer" header
 * (this incarnation's random prefix + a sequence number), found in a hash
 * table while they are outstanding. Anyone who reads the topic can read
 * those ids, guess the next ones and produce records carrying them, so a
 * claim also checks that the record is the one sent: same partition, and
 * the same key and payload (by a SHA-256 digest kept with the record).
 * Another record carrying a write's id is applied like any other.
 *
 * A claim in a batch that then fails to commit is forgotten (applied = 0):
 * ingestion re-reads the records from the last committed offsets, and the
 * record is claimed again, with the value it replaces then. A record is
 * committed iff the partition's committed next offset passed it.
 *
 * Lifetimes: a wreq lives until it is answered (all settled, a failure, or
 * its deadline, node_wait_ms after it came). Its records may outlive it:
 * each stays (detached, w = NULL) until its delivery report came, since
 * librdkafka hands the record's pointer back then, and until the turn
 * that decides its claim is over. Exactly one delivery report comes for
 * every record sent (node_produce_stop purges the rest).
 *
 * A restart loses the in-memory state, never a record: after kill -9 the
 * new incarnation applies the old one's records like any others, through
 * ingestion, exactly once (the offsets are in LMDB with the data).
 */
#include "node_writes.h"
#include "kvs_crypto.h"
#include "kvs_err.h"
#include "kvs_list.h"
#include "kvs_log.h"
#include "kvs_place.h"
#include "kvs_pos.h"
#include "kvs_reads.h"
#include "kvs_record.h"
#include "kvs_resp.h"
#include "node_produce.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct rec_s rec_t;
typedef struct wreq_s wreq_t;

struct rec_s {
    rec_t *hnext;       /* hash chain */
    rec_t *settle_next; /* claimed, waiting for the turn's commit verdict */
    wreq_t *w;          /* NULL once its request was answered */
    const kvs_binding_t *b;
    uint64_t seq;
    int32_t partition;
    int64_t offset; /* -1 until known */
    uint64_t gen;   /* batch the claim happened in */
    unsigned delivered : 1, acked : 1, applied : 1, committed : 1, on_settle : 1;
    uint8_t digest[KVS_CRYPTO_SHA256]; /* of its key and payload (record_digest) */
    kvs_buf_t prev;                    /* the value the record replaced, as an encoded Value */
};

struct wreq_s {
    kvs_list_t link; /* on the writes waiting, in deadline order (all wait the same time) */
    node_slot_t *slot;
    Kvs__CommandRequest__CommandCase cmd;
    const kvs_binding_t *b;
    uint64_t deadline;
    int value_lengths; /* KVS_VALUES_*: previous values whole, as lengths or as presence */
    size_t n, left;    /* records, records not settled */
    rec_t *recs[];     /* in request order */
};

struct node_writes_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg;
    uint32_t shard;
    size_t max_frame;
    node_store_t *store;
    node_ingest_t *ingest;
    node_produce_t *producer;
    node_writes_fatal_cb on_fatal;
    void *arg;
    uint8_t incarnation[8]; /* random: ids of an earlier run never match */
    uint64_t next_seq;
    rec_t **buckets; /* outstanding records by seq */
    size_t nbuckets, nrecs;
    size_t outstanding; /* records in the table: ingestion looks at headers while > 0 */
    rec_t *settle;      /* claimed records awaiting the commit verdict */
    kvs_list_t waiting; /* wreq_t, soonest deadline first */
    uv_timer_t timer;
    uv_timer_t halt_timer; /* a partition halted: answers the writes it strands */
    int draining, stopping;
};

/* ---- records by id ------------------------------------------------------------- */

static size_t bucket_of(const node_writes_t *wr, uint64_t seq)
{
    return (size_t)(seq * 0x9e3779b97f4a7c15ull >> 20) & (wr->nbuckets - 1);
}

static int table_grow(node_writes_t *wr)
{
    size_t n = wr->nbuckets ? wr->nbuckets * 2 : 1024;
    rec_t **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return -ENOMEM;
    rec_t **old = wr->buckets;
    size_t oldn = wr->nbuckets;
    wr->buckets = b;
    wr->nbuckets = n;
    for (size_t i = 0; i < oldn; i++)
        for (rec_t *r = old[i], *next; r != NULL; r = next) {
            next = r->hnext;
            size_t k = bucket_of(wr, r->seq);
            r->hnext = b[k];
            b[k] = r;
        }
    free(old);
    return 0;
}

static rec_t *rec_find(node_writes_t *wr, uint64_t seq)
{
    if (wr->nbuckets == 0)
        return NULL;
    for (rec_t *r = wr->buckets[bucket_of(wr, seq)]; r != NULL; r = r->hnext)
        if (r->seq == seq)
            return r;
    return NULL;
}

static rec_t *rec_new(node_writes_t *wr)
{
    if (wr->nrecs >= wr->nbuckets && table_grow(wr) != 0)
        return NULL;
    rec_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->seq = wr->next_seq++;
    r->offset = -1;
    size_t k = bucket_of(wr, r->seq);
    r->hnext = wr->buckets[k];
    wr->buckets[k] = r;
    wr->nrecs++;
    wr->outstanding++;
    return r;
}

/* Frees a record nobody needs any more: answered (or never sent), its
 * delivery report in, and no claim verdict pending. */
static void rec_release(node_writes_t *wr, rec_t *r)
{
    if (r->w != NULL || !r->delivered || r->on_settle)
        return;
    for (rec_t **p = &wr->buckets[bucket_of(wr, r->seq)]; *p != NULL; p = &(*p)->hnext)
        if (*p == r) {
            *p = r->hnext;
            break;
        }
    wr->nrecs--;
    wr->outstanding--;
    kvs_buf_free(&r->prev);
    free(r);
}

/* What a claim compares: the key's length, the key, whether there is a
 * payload (a tombstone has none) and the payload. */
static int record_digest(const void *key, size_t klen, const void *payload, size_t len,
                         uint8_t out[KVS_CRYPTO_SHA256])
{
    uint8_t head[9];
    for (int i = 0; i < 8; i++)
        head[i] = (uint8_t)((uint64_t)klen >> (56 - 8 * i));
    head[8] = payload != NULL;
    const void *p[] = {head, key, payload};
    const size_t n[] = {sizeof(head), klen, payload != NULL ? len : 0};
    return kvs_crypto_sha256(p, n, 3, out);
}

static void make_id(const node_writes_t *wr, uint64_t seq, uint8_t id[KVS_RECORD_ID_LEN])
{
    memcpy(id, wr->incarnation, 8);
    for (int i = 0; i < 8; i++)
        id[8 + i] = (uint8_t)(seq >> (56 - 8 * i));
}

/* ---- answers ---------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t);

/* The write whose deadline is the soonest, or NULL. */
static wreq_t *first_waiting(const node_writes_t *wr)
{
    kvs_list_t *l = kvs_list_first(&wr->waiting);
    return l != NULL ? KVS_LIST_ENTRY(l, wreq_t, link) : NULL;
}

static void arm_timer(node_writes_t *wr)
{
    if (kvs_list_empty(&wr->waiting) || wr->stopping) {
        uv_timer_stop(&wr->timer);
        return;
    }
    uint64_t now = uv_now(wr->loop), dl = first_waiting(wr)->deadline;
    uv_timer_start(&wr->timer, on_timer, dl > now ? dl - now : 0, 0);
}

/* The write's position so far: every record whose offset is known. */
static int position_of(const wreq_t *w, kvs_buf_t *tok)
{
    kvs_pos_set_t set;
    kvs_pos_set_init(&set);
    int rc = 0;
    for (size_t i = 0; i < w->n && rc == 0; i++)
        if (w->recs[i]->offset >= 0)
            rc = kvs_pos_set_add(&set, w->b->topic, strlen(w->b->topic),
                                 (uint32_t)w->recs[i]->partition, w->recs[i]->offset);
    if (rc == 0)
        rc = kvs_pos_set_encode(&set, tok);
    kvs_pos_set_free(&set);
    return rc;
}

/* Whether an error answer says the write may or may not have happened
 * (CommandResponse.outcome_unknown); else its message and position say
 * what was written. */
enum { OUTCOME_KNOWN = 0, OUTCOME_UNKNOWN = 1 };

/* Answers `w` (the answer is in its slot already, or `status` != 0 writes
 * one with `msg`, `unknown` and the position so far) and frees it; its
 * records stay until their reports come. */
static void wreq_end(node_writes_t *wr, wreq_t *w, uint32_t status, int unknown, const char *msg)
{
    kvs_buf_t *out = node_slot_buf(w->slot);
    if (status != 0 && node_slot_wanted(w->slot)) {
        kvs_buf_t tok;
        kvs_resp_t r;
        kvs_buf_init(&tok);
        out->len = 0;
        kvs_resp_begin(&r, out);
        kvs_resp_status(&r, status);
        kvs_resp_message(&r, "%s", msg);
        if (unknown)
            kvs_resp_outcome_unknown(&r);
        if (position_of(w, &tok) == 0)
            kvs_resp_position(&r, tok.data, tok.len);
        if (kvs_resp_end(&r) != 0)
            kvs_msg_append_status(out, KVS_STATUS_INTERNAL, "server out of memory");
        kvs_buf_free(&tok);
    }
    node_slot_done(w->slot);
    kvs_list_remove(&w->link); /* (on no list yet when its sending failed) */
    for (size_t i = 0; i < w->n; i++) {
        w->recs[i]->w = NULL;
        rec_release(wr, w->recs[i]);
    }
    free(w);
}

/* Every record settled: the answer a direct write gives, plus the position. */
static void wreq_succeed(node_writes_t *wr, wreq_t *w)
{
    char msg[256];
    kvs_buf_t *out = node_slot_buf(w->slot);
    kvs_buf_t tok;
    kvs_resp_t r;
    kvs_buf_init(&tok);
    out->len = 0;
    kvs_resp_begin(&r, out);
    kvs_resp_status(&r, KVS_STATUS_OK);
    /* Each previous value as it is answered: with value_lengths its
     * length was kept, not the value (node_ingest's claim). */
    for (size_t i = 0; i < w->n; i++)
        kvs_resp_value(&r, w->recs[i]->prev.data, w->recs[i]->prev.len);
    int rc = position_of(w, &tok);
    if (rc == 0)
        kvs_resp_position(&r, tok.data, tok.len);
    size_t size = kvs_resp_size(&r);
    rc = rc != 0 ? rc : kvs_resp_end(&r);
    kvs_buf_free(&tok);
    if (rc == 0 && size <= wr->max_frame) {
        wreq_end(wr, w, 0, OUTCOME_KNOWN, NULL);
        return;
    }
    /* Applied, but its answer cannot be sent: not 413, which says nothing
     * was written. A previous value this large was stored while max_frame
     * was larger (the check before producing priced it otherwise). */
    if (rc == 0)
        snprintf(msg, sizeof(msg),
                 "%s was applied (see its position), but the previous value%s it replaced do%s "
                 "not fit in an answer of limits.max_frame (%zu bytes)%s",
                 kvs_msg_command_name(w->cmd), w->n > 1 ? "s" : "", w->n > 1 ? "" : "es",
                 wr->max_frame, w->n > 1 ? "; send fewer keys per request" : "");
    else
        snprintf(msg, sizeof(msg),
                 "%s was applied (see its position), but the worker ran out of memory for its "
                 "answer",
                 kvs_msg_command_name(w->cmd));
    wreq_end(wr, w, KVS_STATUS_INTERNAL, OUTCOME_KNOWN, msg);
}

/* A record is acked and committed. */
static void rec_settled(node_writes_t *wr, rec_t *r)
{
    wreq_t *w = r->w;
    if (w != NULL && --w->left == 0)
        wreq_succeed(wr, w);
}

/* A record this shard passed over (node_ingest_passed): rec_halted's
 * answer for it, which end_halted words as its own. */
static const char PASSED[] = "passed over";

/* Why record r of w, acknowledged and not applied yet, may never be (its
 * partition is no longer ingested: node_ingest_halted; or ingestion went
 * on past it: PASSED), or NULL. A log found shorter than what was applied
 * is still being checked, and may resume: it counts only when
 * `checked_too` (the write's deadline). */
static const char *rec_halted(node_writes_t *wr, const wreq_t *w, const rec_t *r, int checked_too)
{
    if (!r->acked || r->applied || r->committed)
        return NULL;
    if (node_ingest_passed(wr->ingest, w->b, (uint32_t)r->partition, r->offset))
        return PASSED;
    if (!checked_too && node_ingest_log_short(wr->ingest, w->b, (uint32_t)r->partition))
        return NULL;
    return node_ingest_halted(wr->ingest, w->b, (uint32_t)r->partition);
}

/* The first record of w that rec_halted names: why, *rec that record. */
static const char *acked_halted(node_writes_t *wr, const wreq_t *w, int checked_too,
                                const rec_t **rec)
{
    for (size_t i = 0; i < w->n; i++) {
        const char *why = rec_halted(wr, w, w->recs[i], checked_too);
        if (why != NULL) {
            *rec = w->recs[i];
            return why;
        }
    }
    return NULL;
}

/* Answers w, whose acknowledged record r waits in a partition that is no
 * longer ingested, or was passed over: at once, since waiting cannot
 * settle it (the topic diverged, or its records were deleted unread: the
 * record takes effect only if the partition is applied from that log
 * again, by a rebuild or the first cluster back; deleted, it never takes
 * effect here, though a replica that read it before may have applied it). */
static void end_halted(node_writes_t *wr, wreq_t *w, const rec_t *r, const char *why)
{
    char msg[3072];
    const char *more = w->n > 1 ? ", and other keys of this request may have been written; read "
                                  "the keys to find out"
                                : "";
    if (why == PASSED)
        snprintf(msg, sizeof(msg),
                 "%s: Kafka acknowledged the write (topic %s partition %d offset %lld), but the "
                 "record was deleted from the partition before this shard applied it, and "
                 "auto.offset.reset resumed past it (logged as DATA LOST): it was not applied "
                 "here, and a replica that read it before may have: the write may or may not "
                 "have taken effect%s",
                 kvs_msg_command_name(w->cmd), w->b->topic, r->partition, (long long)r->offset,
                 more);
    else
        snprintf(msg, sizeof(msg),
                 "%s: Kafka acknowledged the write, but topic %s partition %d is not ingested by "
                 "this shard (%s); the record is in the log the brokers keep and takes effect "
                 "only if the partition is applied from it: the write may or may not take "
                 "effect%s",
                 kvs_msg_command_name(w->cmd), w->b->topic, r->partition, why, more);
    wreq_end(wr, w, KVS_STATUS_UNAVAILABLE, OUTCOME_UNKNOWN, msg);
}

/* ---- the two halves ------------------------------------------------------------------ */

static void on_delivery(void *arg, const node_delivery_t *d)
{
    node_writes_t *wr = arg;
    rec_t *r = d->opaque;
    char msg[700];
    r->delivered = 1;
    if (d->ok && d->offset >= 0 && !wr->stopping)
        node_ingest_note_produced(wr->ingest, r->b, (uint32_t)r->partition, d->offset);
    if (r->w == NULL) {
        rec_release(wr, r);
        return;
    }
    wreq_t *w = r->w;
    if (!d->ok && d->not_written) {
        /* librdkafka knows the log does not have it (never sent, or refused):
         * retrying cannot write it twice. */
        snprintf(
            msg, sizeof(msg), "%s: Kafka %s the record of a key on topic %s partition %d (%s): %s",
            kvs_msg_command_name(w->cmd), d->too_large ? "refused as too large" : "did not take",
            w->b->topic, r->partition, d->why,
            w->n > 1 ? "that key was not written; other keys of this request may have been "
                       "written, read them to find out"
                     : "the write did not happen");
        wreq_end(wr, w, d->too_large ? KVS_STATUS_TOO_LARGE : KVS_STATUS_UNAVAILABLE,
                 w->n > 1 ? OUTCOME_UNKNOWN : OUTCOME_KNOWN, msg);
        return;
    }
    if (!d->ok) {
        snprintf(msg, sizeof(msg),
                 "%s: Kafka did not acknowledge the record of a key on topic %s partition %d (%s): "
                 "the write may or may not have happened%s; read the key%s to find out",
                 kvs_msg_command_name(w->cmd), w->b->topic, r->partition, d->why,
                 w->n > 1 ? ", and other keys of this request may have been written" : "",
                 w->n > 1 ? "s" : "");
        wreq_end(wr, w, KVS_STATUS_UNAVAILABLE, OUTCOME_UNKNOWN, msg);
        return;
    }
    r->acked = 1;
    if (r->offset < 0)
        r->offset = d->offset;
    /* Without an offset (d->offset, not the record's own: see
     * node_produce's acked_offset) the record is nowhere known. */
    if (!r->applied && !wr->stopping && d->offset >= 0) {
        int rc = node_ingest_apply_delivered(wr->ingest, d->record);
        if (rc < 0)
            kvs_warn("applying an acknowledged write failed: %s", kvs_strerror(rc));
    }
    /* Acknowledged after its partition halted: the halt's own walk
     * (on_halt_timer) came before, so only this record is new. One
     * lookup per report, not a walk of the request's records each time
     * (a thousand keys' reports made a million lookups). */
    const char *why;
    if (r->committed)
        rec_settled(wr, r);
    else if ((why = rec_halted(wr, w, r, 0)) != NULL)
        end_halted(wr, w, r, why);
}

static kvs_buf_t *on_claim(void *arg, const uint8_t *id, int32_t partition, int64_t offset,
                           uint64_t gen, const void *key, size_t klen, const void *payload,
                           size_t len, int *lengths)
{
    node_writes_t *wr = arg;
    uint8_t digest[KVS_CRYPTO_SHA256];
    uint64_t seq = 0;
    if (memcmp(id, wr->incarnation, 8) != 0)
        return NULL; /* an earlier run's record: applied like any other */
    for (int i = 0; i < 8; i++)
        seq = seq << 8 | id[8 + i];
    rec_t *r = rec_find(wr, seq);
    if (r == NULL || r->w == NULL || r->partition != partition)
        return NULL;
    /* Another producer's record with this write's id (read from the topic
     * and guessed) is not this write. */
    if (record_digest(key, klen, payload, len, digest) != 0 ||
        !kvs_crypto_equal(digest, r->digest, sizeof(digest)))
        return NULL;
    /* Claimed before at another offset: the same record twice in the log
     * (a broker without idempotence); the second copy is not this write.
     * At the same offset it is being re-applied after its batch failed. */
    if (r->applied && r->offset != offset)
        return NULL;
    r->applied = 1;
    r->offset = offset;
    r->gen = gen;
    *lengths = r->w->value_lengths;
    if (!r->on_settle) {
        r->on_settle = 1;
        r->settle_next = wr->settle;
        wr->settle = r;
    }
    return &r->prev;
}

void node_writes_turn(node_writes_t *wr)
{
    uint64_t open = node_store_batch_gen(wr->store);
    rec_t **p = &wr->settle;
    while (*p != NULL) {
        rec_t *r = *p;
        if (open != 0 && r->gen == open && r->w != NULL) {
            p = &r->settle_next; /* claimed in a batch opened after the commit */
            continue;
        }
        *p = r->settle_next;
        int settle = 0;
        if (r->w != NULL &&
            node_ingest_committed(wr->ingest, r->w->b, (uint32_t)r->partition) > r->offset) {
            r->committed = 1;
            settle = r->acked;
        } else {
            r->applied = 0; /* its batch failed: claimed again when re-read */
        }
        r->on_settle = 0;
        if (settle)
            rec_settled(wr, r); /* may free r */
        else
            rec_release(wr, r);
    }
}

/* A partition halted (node_ingest's call, deferred to here): the writes
 * whose acknowledged records wait in it are answered now, not at their
 * deadline. */
static void on_halt_timer(uv_timer_t *t)
{
    node_writes_t *wr = t->data;
    kvs_list_t *pos, *tmp;
    KVS_LIST_EACH_SAFE(pos, tmp, &wr->waiting)
    {
        wreq_t *w = KVS_LIST_ENTRY(pos, wreq_t, link);
        const rec_t *r;
        const char *why = acked_halted(wr, w, 0, &r);
        if (why != NULL)
            end_halted(wr, w, r, why);
    }
}

static void on_halted(void *arg)
{
    node_writes_t *wr = arg;
    if (!wr->stopping)
        uv_timer_start(&wr->halt_timer, on_halt_timer, 0, 0);
}

static void on_timer(uv_timer_t *t)
{
    node_writes_t *wr = t->data;
    uint64_t now = uv_now(wr->loop);
    char msg[512];
    wreq_t *w;
    while ((w = first_waiting(wr)) != NULL && w->deadline <= now) {
        int acked = 1, placed = 1;
        for (size_t i = 0; i < w->n; i++) {
            acked &= w->recs[i]->acked;
            placed &= w->recs[i]->offset >= 0;
        }
        const rec_t *r;
        const char *halted = acked_halted(wr, w, 1, &r);
        if (halted != NULL) {
            end_halted(wr, w, r, halted);
            continue;
        }
        /* Acknowledged without an offset (a broker saying "duplicate" of a
         * record it has, or one that says so wrongly) and not seen since:
         * no position can name it, and whether it is in the log is not
         * known. */
        if (acked && !placed)
            snprintf(msg, sizeof(msg),
                     "%s: Kafka acknowledged the write without saying at which offset, and this "
                     "worker did not find it in topic %s within %llu ms: the write may or may not "
                     "have happened; read the key%s to find out",
                     kvs_msg_command_name(w->cmd), w->b->topic,
                     (unsigned long long)node_wait_ms(wr->cfg), w->n > 1 ? "s" : "");
        else if (acked)
            snprintf(msg, sizeof(msg),
                     "%s: Kafka acknowledged the write (see its position), but this worker did "
                     "not apply it within %llu ms; it will be applied: read with this position "
                     "as min_position to see it",
                     kvs_msg_command_name(w->cmd), (unsigned long long)node_wait_ms(wr->cfg));
        else
            snprintf(msg, sizeof(msg),
                     "%s: no acknowledgement from Kafka within %llu ms (topic %s): the write may "
                     "or may not have happened; read the key%s to find out",
                     kvs_msg_command_name(w->cmd), (unsigned long long)node_wait_ms(wr->cfg),
                     w->b->topic, w->n > 1 ? "s" : "");
        wreq_end(wr, w, KVS_STATUS_UNAVAILABLE, acked && placed ? OUTCOME_KNOWN : OUTCOME_UNKNOWN,
                 msg);
    }
    arm_timer(wr);
}

/* ---- requests ---------------------------------------------------------------------- */

/* One key of a write: its partition and the record's payload. */
typedef struct item_s {
    const ProtobufCBinaryData *key;
    const uint8_t *payload; /* NULL: a tombstone */
    size_t len;
    size_t vlen; /* the Value as stored (for size checks) */
    int32_t partition;
} item_t;

/* The payload the binding's format makes of `v`, or 400 into msg. */
static int encode_item(const kvs_binding_t *b, const Kvs__Value *v, kvs_arena_t *arena, item_t *it,
                       char *msg, size_t mlen, const char *where)
{
    it->vlen = kvs__value__get_packed_size(v);
    if (!kvs_record_payload(b, v, &it->payload, &it->len)) {
        kvs_record_format_refusal(b, v, where, msg, mlen);
        return KVS_EINVAL;
    }
    if (it->payload != NULL)
        return 0;
    uint8_t *p = kvs_arena_alloc(arena, it->len ? it->len : 1); /* format value */
    if (p == NULL)
        return -ENOMEM;
    kvs__value__pack(v, p);
    it->payload = p;
    return 0;
}

/* The keys of `req` as items, or a 400 into msg (returns KVS_EINVAL). */
static int collect_items(node_writes_t *wr, const kvs_binding_t *b, const Kvs__CommandRequest *req,
                         kvs_arena_t *arena, item_t **out, size_t *n, char *msg, size_t mlen)
{
    const ProtobufCBinaryData *keys = NULL;
    const Kvs__Kvpair *const *pairs = NULL;
    const Kvs__Kvpair *one = NULL;
    switch (req->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HSET:
        one = req->hset->pair;
        pairs = &one, *n = 1;
        break;
    case KVS__COMMAND_REQUEST__COMMAND_HMSET:
        pairs = (const Kvs__Kvpair *const *)req->hmset->pairs, *n = req->hmset->n_pairs;
        break;
    case KVS__COMMAND_REQUEST__COMMAND_HDEL:
        keys = &req->hdel->key, *n = 1;
        break;
    default:
        keys = req->hmdel->keys, *n = req->hmdel->n_keys;
        break;
    }
    item_t *items = kvs_arena_alloc(arena, *n * sizeof(*items));
    if (items == NULL)
        return -ENOMEM;
    memset(items, 0, *n * sizeof(*items));
    for (size_t i = 0; i < *n; i++) {
        char where[64];
        items[i].key = pairs != NULL ? &pairs[i]->key : &keys[i];
        if (pairs == NULL)
            continue; /* a tombstone */
        if (*n > 1)
            snprintf(where, sizeof(where), "Hmset.pairs[%zu].value", i);
        else
            snprintf(where, sizeof(where), "Hset.pair.value");
        int rc = encode_item(b, pairs[i]->value, arena, &items[i], msg, mlen, where);
        if (rc != 0)
            return rc;
    }
    (void)wr;
    *out = items;
    return 0;
}

/* Places every item; refuses keys this worker does not own. */
static int place_items(node_writes_t *wr, const kvs_binding_t *b, item_t *items, size_t n,
                       char *msg, size_t mlen, uint32_t *status)
{
    uint32_t partitions = b->partitions > 0 ? b->partitions : wr->cfg->partitions;
    uint32_t now = node_ingest_resized(wr->ingest, b);
    if (now != 0) { /* a key's partition is no longer the one kvs computes */
        *status = KVS_STATUS_UNAVAILABLE;
        node_ingest_resized_message(b, now, partitions, msg, mlen);
        return KVS_EINVAL;
    }
    *status = KVS_STATUS_BAD_REQUEST;
    if (b->partitioner == KVS_PARTITIONER_NONE) {
        snprintf(msg, mlen,
                 "table \"%s\" is bound to Kafka topic \"%s\" with partitioner: none, so its "
                 "producers choose each key's partition and kvs cannot place a write; produce it "
                 "to topic \"%s\" instead (or bind the table with the partitioner its producers "
                 "use)",
                 b->table, b->topic, b->topic);
        return KVS_EINVAL;
    }
    /* Brokers that became another cluster take no write meant for this
     * table's log (node_ingest_halted says so below). */
    node_ingest_check_cluster(wr->ingest);
    for (size_t i = 0; i < n; i++) {
        uint32_t p = kvs_place_partition_by(b->partitioner, items[i].key->data, items[i].key->len,
                                            partitions);
        items[i].partition = (int32_t)p;
        if (kvs_place_shard(p, wr->cfg->shards) != wr->shard) {
            snprintf(msg, mlen,
                     "a key of this write belongs to partition %u of topic %s, owned by shard %u, "
                     "not this shard (%u): send writes through kvs-router",
                     p, b->topic, kvs_place_shard(p, wr->cfg->shards), wr->shard);
            return KVS_EINVAL;
        }
        const char *halted = node_ingest_halted(wr->ingest, b, p);
        if (halted != NULL) {
            *status = KVS_STATUS_UNAVAILABLE;
            snprintf(msg, mlen,
                     "topic %s partition %u is not ingested by this shard: %s; nothing was "
                     "written",
                     b->topic, p, halted);
            return KVS_EINVAL;
        }
        if (!node_ingest_writable(wr->ingest, b, p)) {
            *status = KVS_STATUS_UNAVAILABLE;
            snprintf(msg, mlen,
                     "this worker is stopping and no longer ingests topic %s partition %u; "
                     "nothing was written, retry shortly",
                     b->topic, p);
            return KVS_EINVAL;
        }
    }
    return 0;
}

/* The answer budget a split write's part carries (0: none). */
static size_t answer_budget(const Kvs__CommandRequest *req)
{
    if (req->command_case == KVS__COMMAND_REQUEST__COMMAND_HMSET)
        return req->hmset->answer_budget;
    if (req->command_case == KVS__COMMAND_REQUEST__COMMAND_HMDEL)
        return req->hmdel->answer_budget;
    return 0;
}

/* Every pair must be readable back, and the answer must fit: checked
 * before anything is produced (the rules of direct writes, node_cmd).
 * With value_lengths the previous values are answered as lengths
 * (kvs_reads_stored_bound): however large they are now, or become before
 * the records apply (a write of the same keys still on its way through
 * the topic), the answer stays within this bound. */
static int check_sizes(node_writes_t *wr, const kvs_binding_t *b, const char *cmd,
                       const item_t *items, size_t n, size_t budget, int value_lengths, char *msg,
                       size_t mlen)
{
    size_t olds = 0, news = 0, largest = 0, tok = 64 + strlen(b->topic); /* the position */
    const ProtobufCBinaryData *largest_key = NULL;
    for (size_t i = 0; i < n; i++) {
        node_slice_t v;
        size_t vlen = items[i].vlen;
        if (items[i].key->len + vlen > kvs_msg_pair_max(wr->max_frame)) {
            snprintf(msg, mlen, KVS_MSG_PAIR_TOO_LARGE,
                     KVS_MSG_PAIR_TOO_LARGE_ARGS(wr->max_frame, items[i].key->len, vlen));
            return KVS_ETOOBIG;
        }
        news += kvs_reads_stored_bound(value_lengths, vlen);
        int rc = node_store_get(wr->store, b->table, items[i].key->data, items[i].key->len, &v);
        if (rc == 0) {
            size_t one = kvs_reads_stored_bound(value_lengths, v.len);
            olds += one;
            if (largest_key == NULL || one > largest)
                largest = one, largest_key = items[i].key;
        } else if (rc != KVS_ENOTFOUND) {
            return rc;
        }
    }
    /* One previous value no answer can hold (stored under a larger
     * max_frame): the write would be applied and its answer fail. */
    size_t alone =
        largest_key != NULL ? kvs_reads_write_bound(value_lengths, 1, largest) + 24 + tok : 0;
    if (alone > wr->max_frame) {
        kvs_reads_value_too_large_text(msg, mlen, wr->max_frame, cmd, largest_key, alone, 1);
        return KVS_ETOOBIG;
    }
    /* The answer: the previous values (each stored now, or an earlier
     * pair's new value) and the position token. A split write's part may
     * carry a smaller budget (Hmset/Hmdel.answer_budget, set by the router). */
    size_t limit = budget > 0 && budget < wr->max_frame ? budget : wr->max_frame;
    if (n > 1 && kvs_reads_write_bound(value_lengths, n, olds + news) + 24 * n + tok > limit) {
        snprintf(msg, mlen,
                 "answer would exceed %s (%zu bytes); nothing was written; send fewer keys per "
                 "request",
                 limit < wr->max_frame ? "this part's answer budget" : "limits.max_frame", limit);
        return KVS_ETOOBIG;
    }
    return 0;
}

/* Every record must fit the producer's message.max.bytes: checked before
 * anything is produced, so a request with one record too large writes
 * nothing (librdkafka would refuse that record only, after the ones
 * before it were sent). */
static int check_records(node_writes_t *wr, const item_t *items, size_t n, char *msg, size_t mlen)
{
    for (size_t i = 0; i < n; i++) {
        size_t size, max;
        if (node_produce_fits(wr->producer, items[i].key->len, items[i].len, &size, &max))
            continue;
        kvs_record_too_large(size, max, msg, mlen);
        return KVS_ETOOBIG;
    }
    return 0;
}

/* Sends every record of `w`. On a refusal after some were sent, the
 * request fails with a message saying so. Returns 0, or the error of the
 * first record (nothing sent; `w` untouched). */
static int send_all(node_writes_t *wr, wreq_t *w, const item_t *items, char *why, size_t wlen)
{
    uint8_t id[KVS_RECORD_ID_LEN];
    char msg[700];
    for (size_t i = 0; i < w->n; i++) {
        rec_t *r = w->recs[i];
        make_id(wr, r->seq, id);
        int rc = record_digest(items[i].key->data, items[i].key->len, items[i].payload,
                               items[i].len, r->digest);
        if (rc != 0)
            snprintf(why, wlen, "cannot compute the record's digest");
        else
            rc = node_produce_send(wr->producer, w->b, items[i].partition, items[i].key->data,
                                   items[i].key->len, items[i].payload, items[i].len, id, r, why,
                                   wlen);
        if (rc == 0)
            continue;
        for (size_t k = i; k < w->n; k++)
            w->recs[k]->delivered = 1; /* never sent: no report will come */
        if (i == 0)
            return rc;
        snprintf(msg, sizeof(msg),
                 "%s: Kafka took %zu of its %zu records, then refused one (%s): the keys sent "
                 "may or may not be written, the rest were not; read the keys to find out",
                 kvs_msg_command_name(w->cmd), i, w->n, why);
        wreq_end(wr, w, KVS_STATUS_UNAVAILABLE, OUTCOME_UNKNOWN, msg);
        return 0;
    }
    return 0;
}

static wreq_t *wreq_new(node_writes_t *wr, const kvs_binding_t *b, const Kvs__CommandRequest *req,
                        const item_t *items, size_t n)
{
    wreq_t *w = calloc(1, sizeof(*w) + n * sizeof(rec_t *));
    if (w == NULL)
        return NULL;
    w->cmd = req->command_case;
    w->value_lengths =
        kvs_msg_values_mode(req->command_case, req->value_lengths, req->presence_only);
    w->b = b;
    w->n = w->left = n;
    for (size_t i = 0; i < n; i++) {
        if ((w->recs[i] = rec_new(wr)) == NULL) {
            for (size_t k = 0; k < i; k++) {
                w->recs[k]->delivered = 1;
                w->recs[k]->w = NULL;
                rec_release(wr, w->recs[k]);
            }
            free(w);
            return NULL;
        }
        w->recs[i]->w = w;
        w->recs[i]->b = b;
        w->recs[i]->partition = items[i].partition;
    }
    return w;
}

static int refuse(kvs_buf_t *out, uint32_t status, const char *msg)
{
    return kvs_msg_append_status(out, status, "%s", msg);
}

/* Answers the refusal of a send that sent nothing. */
static int refuse_send(node_writes_t *wr, const kvs_binding_t *b, int rc, const char *why,
                       kvs_buf_t *out)
{
    char msg[700];
    uint32_t st = rc == KVS_ETOOBIG ? KVS_STATUS_TOO_LARGE : KVS_STATUS_UNAVAILABLE;
    snprintf(msg, sizeof(msg), "cannot produce to Kafka topic %s: %s; nothing was written%s",
             b->topic, why,
             rc == KVS_ETOOBIG  ? " (raise message.max.bytes in kafka.properties and on the "
                                  "brokers, or write a smaller value)"
             : rc == KVS_ELIMIT ? ", retry shortly"
                                : "");
    (void)wr;
    return refuse(out, st, msg);
}

int node_writes_request(node_writes_t *wr, const kvs_binding_t *b, const Kvs__CommandRequest *req,
                        node_defer_fn defer, node_wanted_fn wanted, void *defer_arg,
                        kvs_arena_t *arena, kvs_buf_t *out)
{
    char msg[700], why[256];
    item_t *items;
    size_t n, cost = 0;
    uint32_t status = KVS_STATUS_BAD_REQUEST;
    if (wr->draining || defer == NULL)
        return refuse(out, KVS_STATUS_UNAVAILABLE,
                      wr->draining ? "the worker is shutting down; nothing was written, retry"
                                   : "writes to tables bound to a Kafka topic cannot wait for "
                                     "Kafka here; nothing was written");
    int rc = collect_items(wr, b, req, arena, &items, &n, msg, sizeof(msg));
    if (rc == 0)
        rc = place_items(wr, b, items, n, msg, sizeof(msg), &status);
    if (rc == 0 &&
        (rc = check_sizes(
             wr, b, kvs_msg_command_name(req->command_case), items, n, answer_budget(req),
             kvs_msg_values_mode(req->command_case, req->value_lengths, req->presence_only), msg,
             sizeof(msg))) == KVS_ETOOBIG)
        status = KVS_STATUS_TOO_LARGE;
    if (rc == 0 && (rc = check_records(wr, items, n, msg, sizeof(msg))) == KVS_ETOOBIG)
        status = KVS_STATUS_TOO_LARGE;
    if (rc == -ENOMEM)
        return rc;
    if (rc == KVS_EINVAL || rc == KVS_ETOOBIG)
        return refuse(out, status, msg);
    if (rc != 0)
        return kvs_msg_append_status(out, KVS_STATUS_INTERNAL,
                                     "storage error (%s); nothing was written", kvs_strerror(rc));
    /* The last moment to stop: once sent, the records reach the topic
     * whether anyone waits or not. A write its sender gave up on while
     * this worker ran it (a hook, a slow disk, the process stopped) and
     * answered as of unknown outcome would otherwise land after writes
     * the sender made since through another replica, undoing them. */
    if (wanted != NULL && !wanted(defer_arg))
        return refuse(out, KVS_STATUS_UNAVAILABLE,
                      "its sender gave up on this write while this worker ran it; nothing was "
                      "written");
    wreq_t *w = wreq_new(wr, b, req, items, n);
    if (w == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        cost += sizeof(rec_t) + items[i].key->len + items[i].len;
    if ((w->slot = defer(defer_arg, sizeof(*w) + cost, 0)) == NULL) {
        for (size_t i = 0; i < n; i++)
            w->recs[i]->delivered = 1, w->recs[i]->w = NULL, rec_release(wr, w->recs[i]);
        free(w);
        return -ENOMEM;
    }
    w->deadline = uv_now(wr->loop) + node_wait_ms(wr->cfg);
    kvs_list_push_back(&wr->waiting, &w->link);
    if (first_waiting(wr) == w)
        arm_timer(wr);
    rc = send_all(wr, w, items, why, sizeof(why));
    if (rc != 0) {
        kvs_buf_t *s = node_slot_buf(w->slot);
        refuse_send(wr, b, rc, why, s);
        wreq_end(wr, w, 0, OUTCOME_KNOWN, NULL);
    }
    return 0;
}

/* ---- life cycle ---------------------------------------------------------------------- */

static void on_producer_fatal(void *arg, const char *msg)
{
    node_writes_t *wr = arg;
    kvs_error("%s", msg);
    if (wr->on_fatal != NULL)
        wr->on_fatal(wr->arg, msg);
}

int node_writes_start(const node_writes_opts_t *o, node_writes_t **out, char *err, size_t errlen)
{
    node_writes_t *wr = calloc(1, sizeof(*wr));
    if (wr == NULL)
        return -ENOMEM;
    kvs_list_init(&wr->waiting);
    *out = wr;
    wr->loop = o->loop;
    wr->cfg = o->cfg;
    wr->shard = o->shard;
    wr->max_frame = o->max_frame;
    wr->store = o->store;
    wr->ingest = o->ingest;
    wr->on_fatal = o->on_fatal;
    wr->arg = o->arg;
    if (uv_random(NULL, NULL, wr->incarnation, sizeof(wr->incarnation), 0, NULL) != 0) {
        uint64_t t = uv_hrtime() ^ ((uint64_t)getpid() << 32);
        memcpy(wr->incarnation, &t, sizeof(t));
    }
    uv_timer_init(wr->loop, &wr->timer);
    wr->timer.data = wr;
    uv_timer_init(wr->loop, &wr->halt_timer);
    wr->halt_timer.data = wr;
    node_produce_opts_t po = {
        .loop = o->loop,
        .cfg = o->cfg,
        .shard = o->shard,
        .on_delivery = on_delivery,
        .on_fatal = on_producer_fatal,
        .arg = wr,
    };
    int rc = node_produce_start(&po, &wr->producer, err, errlen);
    if (rc != 0)
        return rc;
    node_ingest_own_t own = {
        .claim = on_claim, .outstanding = &wr->outstanding, .halted = on_halted, .arg = wr};
    node_ingest_set_own(o->ingest, &own);
    node_ingest_set_asker(o->ingest, node_produce_kafka(wr->producer));
    return 0;
}

void node_writes_drain(node_writes_t *wr)
{
    if (wr != NULL)
        wr->draining = 1;
}

void node_writes_stop(node_writes_t *wr)
{
    if (wr == NULL || wr->stopping)
        return;
    wr->draining = 1;
    wr->stopping = 1;
    while (!kvs_list_empty(&wr->waiting))
        wreq_end(wr, first_waiting(wr), KVS_STATUS_UNAVAILABLE, OUTCOME_UNKNOWN,
                 "the worker is shutting down: the write may or may not have happened; read the "
                 "key to find out");
    node_produce_stop(wr->producer); /* every report left, from here */
    uv_close((uv_handle_t *)&wr->timer, NULL);
    uv_close((uv_handle_t *)&wr->halt_timer, NULL);
}

void node_writes_free(node_writes_t *wr)
{
    if (wr == NULL)
        return;
    node_produce_free(wr->producer);
    for (size_t i = 0; i < wr->nbuckets; i++)
        for (rec_t *r = wr->buckets[i], *next; r != NULL; r = next) {
            next = r->hnext;
            kvs_buf_free(&r->prev);
            free(r);
        }
    free(wr->buckets);
    free(wr);
}

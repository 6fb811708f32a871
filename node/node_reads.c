/*
 * node_reads: the freshness rules applied to reads of bound tables (see
 * node_reads.h).
 *
 * A check (kvs_freshreq, the walk a router reading a local shard makes
 * too) goes over the partitions a read touches and keeps the worst verdict
 * with the partition that caused it, so the answer can name it; what this
 * worker knows of each partition comes from node_ingest_fresh.
 *
 * Waiting reads sit in one FIFO; all wait the same node_wait_ms, so the
 * FIFO is also deadline order and one timer serves them all. Each remembers
 * the one condition that held it back last; after a commit only reads whose
 * condition is now met are checked in full again (another partition may
 * hold them back next, or the gate may have closed meanwhile).
 *
 * Threads: the loop thread only.
 */
#include "node_reads.h"
#include "kvs_err.h"
#include "kvs_freshreq.h"
#include "kvs_log.h"
#include "kvs_resp.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct waiter_s waiter_t;

struct waiter_s {
    waiter_t *next;
    node_slot_t *slot;
    const kvs_binding_t *b;
    uint32_t partition; /* the condition that held it back last: */
    int64_t need;       /* ... the record at this offset must be applied (-1: settling) */
    uint64_t ticket;    /* need is past the known end: the brokers were asked (0: not) */
    uint64_t deadline;  /* uv_now-based */
    size_t len;
    uint8_t payload[]; /* the request */
};

struct node_reads_s {
    uv_loop_t *loop;
    const kvs_config_t *cfg;
    uint32_t shard;
    node_ingest_t *ingest;
    node_reads_exec_cb exec;
    void *exec_arg;
    uv_timer_t timer;
    uv_timer_t poll; /* while reads wait for a partition to settle: nothing else wakes them */
    int stopping;
    waiter_t *head, *tail; /* deadline order */
    size_t waiting;
    kvs_arena_t arena; /* decoding waiting reads again */
    char msg[1024];    /* an answer's words */
};

typedef kvs_freshreq_t check_t;

/* ---- checking ------------------------------------------------------------------ */

/* What this worker knows of partition p of b's topic: with Kafka off,
 * nothing (no offsets, no end). */
static int lookup(void *arg, const kvs_binding_t *b, uint32_t p, kvs_fresh_part_t *out)
{
    node_reads_t *rd = arg;
    return rd->ingest != NULL ? node_ingest_fresh(rd->ingest, b, p, out) : 0;
}

static node_reads_t *rd_of(const check_t *c)
{
    return c->arg;
}

static void check_init(check_t *c, node_reads_t *rd, const kvs_binding_t *b)
{
    kvs_freshreq_init(c, rd->cfg, rd->shard, b, lookup, rd);
}

/* Checks every partition `req` touches. Returns 0 or -ENOMEM. */
static int check_request(check_t *c, const Kvs__CommandRequest *req, kvs_arena_t *arena)
{
    return kvs_freshreq_request(c, req, arena);
}

/* kvs_freshreq's `ahead`: every partition a read is ahead on goes into the
 * next question to the brokers, so one round trip answers them all. */
static void want_end(void *arg, const kvs_binding_t *b, uint32_t p)
{
    node_reads_t *rd = arg;
    if (rd->ingest != NULL && !rd->stopping)
        node_ingest_want_end(rd->ingest, b, p);
}

/* ---- answers ------------------------------------------------------------------- */

/* The last offset of the partition this worker applied; -1 for none. */
static long long applied_to(const check_t *c)
{
    return c->state.next < 0 ? -1 : (long long)c->state.next - 1;
}

static int answer_catching_up(const check_t *c, kvs_buf_t *out)
{
    return kvs_msg_append_status(
        out, KVS_STATUS_UNAVAILABLE,
        "catching up: lag %llu records on topic %s partition %u (kafka.max_lag is %u); this "
        "worker serves the partition again once it is within kafka.max_lag: retry shortly, or "
        "set accept_stale to read what it has",
        (unsigned long long)c->count, c->b->topic, c->partition, rd_of(c)->cfg->kafka_max_lag);
}

static int answer_diverged(const check_t *c, kvs_buf_t *out)
{
    node_ingest_t *in = rd_of(c)->ingest;
    const char *moved = in != NULL ? node_ingest_moved(in, c->b) : NULL;
    if (moved != NULL)
        return kvs_msg_append_status(
            out, KVS_STATUS_UNAVAILABLE,
            NODE_INGEST_DIVERGED "topic %s partition %u: %s; set accept_stale to read what it has",
            c->b->topic, c->partition, moved + strlen(NODE_INGEST_DIVERGED));
    if (in != NULL && node_ingest_log_short(in, c->b, c->partition))
        return kvs_msg_append_status(
            out, KVS_STATUS_UNAVAILABLE,
            "the brokers say topic %s partition %u's end offset (the next record's) is %lld, "
            "below offset %lld this worker applied: checking whether its log diverged (the topic "
            "deleted and created "
            "again, or its log truncated; README: \"When a topic's log diverges\"); retry "
            "shortly, or set accept_stale to read what it has",
            c->b->topic, c->partition, (long long)c->state.end, applied_to(c));
    return kvs_msg_append_status(
        out, KVS_STATUS_UNAVAILABLE,
        "diverged: topic %s partition %u's end offset (the next record's) is now %lld, but this "
        "worker had applied it up to offset %lld (the topic was deleted and created again, or its "
        "log was truncated); "
        "the partition is not ingested until its table is rebuilt from the topic (README: "
        "\"When a topic's log diverges\"); set accept_stale to read what it has",
        c->b->topic, c->partition, (long long)c->state.end, applied_to(c));
}

static int answer_resized(const check_t *c, kvs_buf_t *out)
{
    return kvs_msg_append_status(out, KVS_STATUS_UNAVAILABLE, "%s",
                                 node_ingest_resized_message(c->b, c->state.topic_partitions,
                                                             c->partitions, rd_of(c)->msg,
                                                             sizeof(rd_of(c)->msg)));
}

static int answer_ahead(const check_t *c, kvs_buf_t *out)
{
    if (rd_of(c)->ingest == NULL)
        return kvs_msg_append_status(
            out, KVS_STATUS_UNAVAILABLE,
            "behind by %llu records: the read needs offset %lld of topic %s partition %u, but "
            "this node ingests no Kafka records (kafka.brokers is empty)",
            (unsigned long long)c->count, (long long)c->need, c->b->topic, c->partition);
    if (c->state.end < 0)
        return kvs_msg_append_status(
            out, KVS_STATUS_UNAVAILABLE,
            "behind by %llu records: the read needs offset %lld of topic %s partition %u, and "
            "this worker cannot reach the brokers to catch up (it has applied up to offset %lld); "
            "retry later",
            (unsigned long long)c->count, (long long)c->need, c->b->topic, c->partition,
            applied_to(c));
    return kvs_msg_append_status(
        out, KVS_STATUS_UNAVAILABLE,
        "position ahead of the topic: the read needs offset %lld of topic %s partition %u, but "
        "the partition's end offset (the next record's) is %lld as far as this worker knows; "
        "pass a position kvs returned, or retry shortly if it was just written",
        (long long)c->need, c->b->topic, c->partition, (long long)c->state.end);
}

static int answer_starting(const check_t *c, kvs_buf_t *out)
{
    return kvs_msg_append_status(
        out, KVS_STATUS_UNAVAILABLE,
        "starting: this worker has not heard from the brokers yet how far behind it is on topic "
        "%s partition %u; retry shortly, or set accept_stale to read what it has",
        c->b->topic, c->partition);
}

static int answer_behind(const check_t *c, kvs_buf_t *out)
{
    return kvs_msg_append_status(
        out, KVS_STATUS_UNAVAILABLE,
        "behind by %llu records: the read needs offset %lld of topic %s partition %u, and this "
        "worker has applied the partition up to offset %lld; waited %llu ms; retry shortly",
        (unsigned long long)c->count, (long long)c->need, c->b->topic, c->partition, applied_to(c),
        (unsigned long long)node_wait_ms(rd_of(c)->cfg));
}

/* The answer of a read refused now (any verdict but SERVE). */
static int answer_refused(const check_t *c, kvs_buf_t *out)
{
    switch (c->verdict) {
    case KVS_FRESH_RESIZED:
        return answer_resized(c, out);
    case KVS_FRESH_DIVERGED:
        return answer_diverged(c, out);
    case KVS_FRESH_CATCHING_UP:
        return answer_catching_up(c, out);
    case KVS_FRESH_AHEAD:
        return answer_ahead(c, out);
    case KVS_FRESH_STARTING:
        return answer_starting(c, out);
    default:
        return answer_behind(c, out);
    }
}

/* ---- waiting ---------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t);
static void on_poll(uv_timer_t *t);

static void arm_timer(node_reads_t *rd)
{
    if (rd->head == NULL || rd->stopping) {
        uv_timer_stop(&rd->timer);
        return;
    }
    uint64_t now = uv_now(rd->loop), dl = rd->head->deadline;
    uv_timer_start(&rd->timer, on_timer, dl > now ? dl - now : 0, 0);
}

static int wait_for(node_reads_t *rd, const check_t *c, uint64_t ticket, const uint8_t *payload,
                    size_t len, node_defer_fn defer, void *defer_arg)
{
    waiter_t *w = malloc(sizeof(*w) + len);
    if (w == NULL)
        return -ENOMEM;
    w->slot = defer(defer_arg, sizeof(*w) + len, 1);
    if (w->slot == NULL) {
        free(w);
        return -ENOMEM;
    }
    w->next = NULL;
    w->b = c->b;
    w->partition = c->partition;
    w->need = c->verdict == KVS_FRESH_STARTING ? -1 : c->need;
    w->ticket = ticket;
    w->deadline = uv_now(rd->loop) + node_wait_ms(rd->cfg);
    w->len = len;
    memcpy(w->payload, payload, len);
    if (rd->tail != NULL)
        rd->tail->next = w;
    else
        rd->head = w;
    rd->tail = w;
    rd->waiting++;
    if (rd->head == w)
        arm_timer(rd);
    if (w->need < 0 && !uv_is_active((uv_handle_t *)&rd->poll))
        uv_timer_start(&rd->poll, on_poll, 20, 20);
    return 0;
}

/* Answers a waiting read (or drops it when its client is gone). */
static void finish(node_reads_t *rd, waiter_t *w, const check_t *c)
{
    kvs_buf_t *out = node_slot_buf(w->slot);
    int rc = 0;
    if (node_slot_wanted(w->slot)) {
        if (c == NULL)
            rc = kvs_msg_append_status(out, KVS_STATUS_UNAVAILABLE,
                                       "the worker is shutting down; retry the read");
        else if (c->verdict != KVS_FRESH_SERVE)
            rc = answer_refused(c, out);
        else
            rc = rd->exec(rd->exec_arg, w->payload, w->len, out);
        if (rc != 0) {
            out->len = 0;
            kvs_msg_append_status(out, KVS_STATUS_INTERNAL, "server out of memory");
        }
    }
    node_slot_done(w->slot);
    rd->waiting--;
    free(w);
}

/* Unlinks w (whose predecessor is *prev). */
static void unlink_waiter(node_reads_t *rd, waiter_t **prev, waiter_t *w, waiter_t *before)
{
    *prev = w->next;
    if (rd->tail == w)
        rd->tail = before;
}

/* A read whose position is past the end this worker has heard of: the
 * brokers are asked where the partition ends before the read is refused
 * (the fetches report the end only as often as they return, so a record
 * another writer had acknowledged may not be known here yet). Returns the
 * ticket to wait for, or 0 when the read is refused at once: Kafka is off,
 * the brokers were never heard from, or no wait is possible. */
static uint64_t ask_end(node_reads_t *rd, const check_t *c)
{
    if (c->verdict != KVS_FRESH_AHEAD || rd->ingest == NULL || rd->stopping || c->state.end < 0)
        return 0;
    return node_ingest_ask_end(rd->ingest, c->b, c->partition);
}

/* Checks a waiting read again in full. Returns 1 when it no longer waits
 * (c says how it ends), 0 when it still does (its condition updated).
 * A read still ahead of the end after the brokers answered is refused; one
 * ahead on a partition not asked about yet asks, when `may_ask`. */
static int recheck(node_reads_t *rd, waiter_t *w, check_t *c, int may_ask)
{
    check_init(c, rd, w->b);
    if (may_ask)
        c->ahead = want_end;
    Kvs__CommandRequest *req = kvs_msg_decode_request(&rd->arena, w->payload, w->len, NULL);
    if (req == NULL || check_request(c, req, &rd->arena) != 0) {
        c->verdict = KVS_FRESH_SERVE; /* let the handler say what is wrong */
        return 1;
    }
    uint64_t ticket = 0;
    if (c->verdict == KVS_FRESH_AHEAD) {
        int asked = w->ticket != 0 && w->partition == c->partition;
        if (asked || !may_ask || (ticket = ask_end(rd, c)) == 0)
            return 1;
    } else if (c->verdict != KVS_FRESH_BEHIND && c->verdict != KVS_FRESH_STARTING) {
        return 1;
    }
    w->partition = c->partition;
    w->need = c->verdict == KVS_FRESH_STARTING ? -1 : c->need;
    w->ticket = ticket;
    return 0;
}

/* Whether the condition that held `w` back last is met now. */
static int condition_met(node_reads_t *rd, const waiter_t *w)
{
    kvs_fresh_part_t st;
    if (rd->ingest == NULL || node_ingest_fresh(rd->ingest, w->b, w->partition, &st) != 0)
        return 0;
    if (st.topic_partitions != 0)
        return 1; /* the topic grew: refused at once */
    if (w->need < 0)
        return !st.settling;
    return st.next > w->need || (w->ticket != 0 && node_ingest_answered(rd->ingest, w->ticket));
}

void node_reads_turn(node_reads_t *rd)
{
    waiter_t **prev = &rd->head, *before = NULL;
    int settling = 0;
    while (*prev != NULL) {
        waiter_t *w = *prev;
        int met = !node_slot_wanted(w->slot) || condition_met(rd, w);
        check_t c;
        if (met && (!node_slot_wanted(w->slot) || recheck(rd, w, &c, 1))) {
            unlink_waiter(rd, prev, w, before);
            finish(rd, w, node_slot_wanted(w->slot) ? &c : NULL);
            kvs_arena_reset(&rd->arena);
            continue;
        }
        kvs_arena_reset(&rd->arena);
        settling |= w->need < 0;
        before = w;
        prev = &w->next;
    }
    arm_timer(rd);
    if (!settling)
        uv_timer_stop(&rd->poll);
}

static void on_poll(uv_timer_t *t)
{
    node_reads_turn(t->data);
}

static void on_timer(uv_timer_t *t)
{
    node_reads_t *rd = t->data;
    uint64_t now = uv_now(rd->loop);
    while (rd->head != NULL && rd->head->deadline <= now) {
        waiter_t *w = rd->head;
        check_t c;
        rd->head = w->next;
        if (rd->head == NULL)
            rd->tail = NULL;
        if (node_slot_wanted(w->slot))
            recheck(rd, w, &c, 0); /* the verdict now: served if it just got there */
        finish(rd, w, node_slot_wanted(w->slot) ? &c : NULL);
        kvs_arena_reset(&rd->arena);
    }
    arm_timer(rd);
}

/* ---- admission -------------------------------------------------------------------- */

int node_reads_admit(node_reads_t *rd, const kvs_binding_t *b, const Kvs__CommandRequest *req,
                     const uint8_t *payload, size_t len, node_defer_fn defer, void *defer_arg,
                     kvs_arena_t *arena, kvs_buf_t *out)
{
    check_t c;
    check_init(&c, rd, b);
    if (defer != NULL)
        c.ahead = want_end; /* a read that may wait may ask */
    int rc = check_request(&c, req, arena);
    if (rc != 0)
        return rc;
    if (c.verdict == KVS_FRESH_SERVE)
        return 0;
    if (defer != NULL && rd->ingest != NULL && !rd->stopping) {
        uint64_t ticket = c.verdict == KVS_FRESH_AHEAD ? ask_end(rd, &c) : 0;
        int waits = c.verdict == KVS_FRESH_BEHIND || c.verdict == KVS_FRESH_STARTING || ticket != 0;
        if (waits && wait_for(rd, &c, ticket, payload, len, defer, defer_arg) == 0)
            return 1;
    }
    rc = answer_refused(&c, out);
    return rc == 0 ? 1 : rc;
}

int node_reads_admit_key(node_reads_t *rd, const kvs_binding_t *b, const void *key, size_t klen)
{
    check_t c;
    check_init(&c, rd, b);
    kvs_freshreq_key(&c, key, klen);
    return c.verdict == KVS_FRESH_SERVE ? 0 : -EAGAIN;
}

/* ---- life cycle --------------------------------------------------------------------- */

int node_reads_new(const node_reads_opts_t *o, node_reads_t **out)
{
    node_reads_t *rd = calloc(1, sizeof(*rd));
    if (rd == NULL)
        return -ENOMEM;
    rd->loop = o->loop;
    rd->cfg = o->cfg;
    rd->shard = o->shard;
    rd->ingest = o->ingest;
    rd->exec = o->exec;
    rd->exec_arg = o->exec_arg;
    kvs_arena_init(&rd->arena);
    uv_timer_init(rd->loop, &rd->timer);
    rd->timer.data = rd;
    uv_timer_init(rd->loop, &rd->poll);
    rd->poll.data = rd;
    *out = rd;
    return 0;
}

void node_reads_stop(node_reads_t *rd)
{
    if (rd == NULL || rd->stopping)
        return;
    rd->stopping = 1;
    while (rd->head != NULL) {
        waiter_t *w = rd->head;
        rd->head = w->next;
        finish(rd, w, NULL);
    }
    rd->tail = NULL;
    uv_close((uv_handle_t *)&rd->timer, NULL);
    uv_close((uv_handle_t *)&rd->poll, NULL);
}

void node_reads_free(node_reads_t *rd)
{
    if (rd == NULL)
        return;
    kvs_arena_close(&rd->arena);
    free(rd);
}

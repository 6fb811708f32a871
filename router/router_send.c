/*
 * router_send: a part's way to a replica (see router_send.h).
 *
 * A part remembers, in its router_try_t, the replicas it was sent to (a
 * bit each) and the link it is on; a retryable read also keeps the bytes
 * it sent (for a single-key read that is a copy of the client's frame,
 * made only on shards with more than one replica), since the client's
 * buffer is gone by the time an answer comes back. A retry goes out as
 * the same bytes, positions included, so the other replica serves it under
 * the same freshness rules.
 *
 * Recursion is bounded: a failed send reports through router_route_reply,
 * which may come back here to retry, but every attempt marks a replica
 * tried, and a shard has at most KVS_MAX_REPLICAS (64) of them.
 */
#include "router_send.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_log.h"
#include "kvs_msg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t router_send_status(const uint8_t *p, size_t len)
{
    if (len < 2 || p[0] != 0x08) /* field 1, varint: protobuf-c writes it first */
        return 0;
    uint32_t v = 0;
    for (size_t i = 1, shift = 0; i < len && shift < 32; i++, shift += 7) {
        v |= (uint32_t)(p[i] & 0x7f) << shift;
        if (p[i] < 0x80)
            return v;
    }
    return 0;
}

void router_send_refused(uint32_t shard, int rc, const router_link_t *l, const char *who, char *why,
                         size_t n)
{
    if (rc == KVS_ELIMIT)
        snprintf(why, n,
                 "shard %u is overloaded: %zu bytes of requests are waiting for it "
                 "(limits.client_output)%s; nothing was sent, retry shortly",
                 shard, l->max_queue, who);
    else if (rc == KVS_ETOOBIG)
        snprintf(why, n,
                 "the request for shard %u would take more than limits.max_frame (%u bytes) "
                 "once the router added what the shard needs; nothing was sent, send fewer "
                 "keys per request",
                 shard, l != NULL ? l->max_frame : 0);
    else if (rc == KVS_ECLOSED || l == NULL)
        snprintf(why, n, "shard %u is unavailable: %s%s; retry shortly", shard,
                 l != NULL && l->last_error[0] ? l->last_error : "its connection is closing", who);
    else
        snprintf(why, n, "shard %u: cannot forward: %s", shard, kvs_strerror(rc));
}

/* Why a write of a connection keeps to one replica of its shard
 * (router_send_part): its writes in flight are there, or one there ended
 * with no clear outcome (`wpin`) until `until`. */
enum { KEPT_NOT, KEPT_IN_FLIGHT, KEPT_PINNED };

/* Words for a part no replica took; `hangs`: it was kept to a replica
 * whose link is asking (router_send_part), and not sent. */
static void unavailable(const router_t *r, uint32_t shard, int rc, const router_link_t *l, int kept,
                        int hangs, uint64_t until, char *why, size_t n)
{
    const char *node = l != NULL && l->node != NULL && l->node[0] ? l->node : NULL;
    uint32_t reps = r->sets[shard].n;
    char who[300] = "";
    if (kept == KEPT_IN_FLIGHT)
        snprintf(who, sizeof(who),
                 " (at its replica on node %s, where this connection's earlier writes to it are "
                 "in flight: another replica could put this one in the topic before them)",
                 node ? node : "?");
    else if (kept == KEPT_PINNED)
        snprintf(who, sizeof(who),
                 " (at its replica on node %s, whose producer may still put an earlier write of "
                 "this connection in the topic, its outcome unknown: for %llu ms more this "
                 "connection's writes to it go there or nowhere, so that none lands before it)",
                 node ? node : "?",
                 (unsigned long long)(until > router_now_ms(r) ? until - router_now_ms(r) : 0));
    else if (reps > 1)
        snprintf(who, sizeof(who), " (none of its %u replicas took the request; last tried: %s)",
                 reps, node ? node : "?");
    if (hangs)
        snprintf(why, n,
                 "shard %u is unavailable: its worker on node %s has not answered since its link "
                 "was reset after a request got no answer within router.timeout%s; nothing was "
                 "sent, retry shortly",
                 shard, node ? node : "?", who);
    else
        router_send_refused(shard, rc, l, who, why, n);
}

/* Part `t` went out on links[t->link]: its units count there until it is
 * answered or sent elsewhere (the shard cap, router_session.h). */
static void charge(router_t *r, router_try_t *t)
{
    if (t->cost == 0 || t->charged)
        return;
    router_link_t *l = &r->links[t->link];
    int was = l->units >= ROUTER_SHARD_CAP;
    l->units += t->cost;
    t->charged = 1;
    if (!was && l->units >= ROUTER_SHARD_CAP)
        r->n_capped++;
}

void router_send_discharge(router_t *r, router_try_t *t)
{
    if (!t->charged)
        return;
    t->charged = 0;
    router_link_t *l = &r->links[t->link];
    int was = l->units >= ROUTER_SHARD_CAP;
    l->units -= t->cost < l->units ? t->cost : l->units;
    if (was && l->units < ROUTER_SHARD_CAP) {
        r->n_capped--;
        router_route_cap_changed(r, t->shard);
    }
}

#define WSHARD_MASK ((1u << ROUTER_WSHARD_COUNT) - 1)

/* The count of the write parts of `req`'s session to `shard` in flight
 * (router_session_t.wshard), made on its first; NULL without a session,
 * or out of memory (the write goes uncounted: logged). */
static uint32_t *wshard_of(router_t *r, router_req_t *req, uint32_t shard)
{
    if (req->client == NULL)
        return NULL;
    router_session_t *s = router_client_session(req->client);
    if (s->wshard == NULL && (s->wshard = calloc(r->shards, sizeof(*s->wshard))) == NULL) {
        kvs_warn("out of memory keeping a connection's writes to shard %u in order: a later "
                 "write of it may reach the topic through another replica first",
                 shard);
        return NULL;
    }
    return &s->wshard[shard];
}

/* Until when (router_now_ms) `s`'s writes to `shard` keep to the replica
 * in its wshard with none in flight (router_session_t.wpin); 0: not. */
static uint64_t pinned_until(const router_t *r, const router_session_t *s, uint32_t shard)
{
    return s->wpin != NULL && s->wpin[shard] > router_now_ms(r) ? s->wpin[shard] : 0;
}

/* Write part `t` of `req` ended with no clear outcome at links[t->link]:
 * its session's writes to the shard keep to that replica for
 * router.timeout, the bound of what its producer may still hold
 * (message.timeout.ms, node_produce). */
static void pin(router_t *r, router_req_t *req, const router_try_t *t)
{
    uint32_t *ws = wshard_of(r, req, t->shard);
    if (ws == NULL)
        return;
    router_session_t *s = router_client_session(req->client);
    uint32_t at = t->link - r->sets[t->shard].first;
    if ((*ws & WSHARD_MASK) > 0 && *ws >> ROUTER_WSHARD_COUNT != at)
        return; /* not possible: writes in flight keep to one replica (router_send_part) */
    if (s->wpin == NULL && (s->wpin = calloc(r->shards, sizeof(*s->wpin))) == NULL) {
        kvs_warn("out of memory keeping a connection's writes to shard %u at the replica where "
                 "one may still reach the topic: a later write of it may land first",
                 t->shard);
        return;
    }
    *ws = (*ws & WSHARD_MASK) | at << ROUTER_WSHARD_COUNT;
    s->wpin[t->shard] = router_now_ms(r) + r->cfg->router_timeout_ms;
}

void router_send_wshard_done(router_req_t *req, router_try_t *t)
{
    if (!t->in_wshard)
        return;
    t->in_wshard = 0;
    router_session_t *s = req->client != NULL ? router_client_session(req->client) : NULL;
    if (s != NULL && s->wshard != NULL && (s->wshard[t->shard] & WSHARD_MASK) > 0)
        s->wshard[t->shard]--; /* (the replica's bits stay: the count is what counts) */
}

int router_send_wshard_other(const router_t *r, const router_req_t *req, uint32_t shard, int link)
{
    const router_session_t *s = req->client != NULL ? router_client_session(req->client) : NULL;
    if (s == NULL || s->wshard == NULL || (s->wshard[shard] & WSHARD_MASK) == 0)
        return 0;
    return link < 0 ||
           (uint32_t)link - r->sets[shard].first != s->wshard[shard] >> ROUTER_WSHARD_COUNT;
}

int64_t router_send_start(const router_req_t *req, int retryable)
{
    if (retryable || req->client == NULL)
        return -1;
    return router_client_session(req->client)->replica_pref;
}

/* Sends to the next replica that takes it. Returns 0, or the last error
 * (no replica took it) with *last the link that refused last. */
static int send_some(router_t *r, router_req_t *req, router_try_t *t, uint32_t part,
                     const ProtobufCMessage *msg, const uint8_t *raw, size_t rawlen, int64_t start,
                     router_link_t **last)
{
    router_set_t *set = &r->sets[t->shard];
    int rc = KVS_ECLOSED;
    *last = NULL;
    for (;;) {
        int i =
            router_replica_pick(r->links, set, t->tried, router_now_ms(r), start, ROUTER_SHARD_CAP);
        if (i < 0)
            return rc;
        t->tried |= 1ull << ((uint32_t)i - set->first);
        t->link = (uint32_t)i;
        *last = &r->links[i];
        rc = msg != NULL ? router_link_send_msg(*last, msg, req, part)
                         : router_link_send(*last, raw, rawlen, req, part);
        if (rc == 0)
            charge(r, t);
        if (rc == 0 || (rc != KVS_ECLOSED && rc != KVS_ELIMIT))
            return rc;
    }
}

void router_send_part(router_t *r, router_req_t *req, router_try_t *t, uint32_t part,
                      uint32_t shard, const ProtobufCMessage *msg, const uint8_t *raw,
                      size_t rawlen, int retryable)
{
    t->tried = 0;
    t->shard = shard;
    t->unsent = 0;
    t->charged = 0;
    t->in_wshard = 0;
    t->bytes.len = 0;
    if (r->sets[shard].n > 1 && retryable) {
        int rc = msg != NULL ? kvs_msg_append(&t->bytes, msg, SIZE_MAX)
                             : kvs_buf_append(&t->bytes, raw, rawlen);
        if (rc == 0 && msg != NULL) { /* the frame's payload, without its header */
            memmove(t->bytes.data, t->bytes.data + KVS_FRAME_HEADER,
                    t->bytes.len - KVS_FRAME_HEADER);
            t->bytes.len -= KVS_FRAME_HEADER;
        }
        if (rc == 0) {
            msg = NULL;
            raw = t->bytes.data;
            rawlen = t->bytes.len;
            router_budget_deposit(&r->budget);
        } else {
            t->bytes.len = 0; /* out of memory: sent once, not retried */
        }
    }
    router_link_t *last;
    int64_t start = router_send_start(req, retryable);
    uint32_t *ws = start >= 0 && r->sets[shard].n > 1 ? wshard_of(r, req, shard) : NULL;
    uint64_t until = ws != NULL ? pinned_until(r, router_client_session(req->client), shard) : 0;
    int kept = ws == NULL                ? KEPT_NOT
               : (*ws & WSHARD_MASK) > 0 ? KEPT_IN_FLIGHT
               : until > 0               ? KEPT_PINNED
                                         : KEPT_NOT;
    int rc, hangs = 0;
    if (kept == KEPT_NOT) {
        rc = send_some(r, req, t, part, msg, raw, rawlen, start, &last);
    } else { /* only where its writes in flight are, or may yet land */
        uint32_t at = *ws >> ROUTER_WSHARD_COUNT;
        t->tried = ~(1ull << at);
        last = &r->links[r->sets[shard].first + at];
        /* ... and not while its worker may hang (its link's own Ping is
         * unanswered): a write sent behind the Ping would wait it out and
         * end of unknown outcome too, pinning the connection there again,
         * so that a client retrying sooner than router.timeout would never
         * get past a hung replica while another one serves. */
        hangs = router_link_asking(last);
        rc = hangs ? KVS_ECLOSED : send_some(r, req, t, part, msg, raw, rawlen, start, &last);
    }
    if (rc == 0 && ws != NULL) {
        *ws = ((*ws & WSHARD_MASK) + 1) | (t->link - r->sets[shard].first) << ROUTER_WSHARD_COUNT;
        t->in_wshard = 1;
    }
    if (rc == 0)
        return;
    char why[600];
    unavailable(r, shard, rc, last, kept, hangs, until, why, sizeof(why));
    t->bytes.len = 0; /* every replica refused: nothing to retry */
    t->unsent = 1;    /* so a split write's answer can say it wrote nothing */
    /* A frame too large to send fails as one too large to take: a length
     * (its own) with the failure makes it 413 for a read. */
    size_t len = rc != KVS_ETOOBIG ? 0
                 : msg != NULL     ? protobuf_c_message_get_packed_size(msg)
                                   : rawlen;
    router_route_reply(req, part, NULL, len, why);
}

/* Whether a request the client sent after `req` writes `req`'s table and
 * has gone out (to the topic's writer; answered or not): a retry of `req` on another
 * replica could then see that later write, a read answered with the
 * future of its own connection. Its failure stands instead. */
static int later_write_of_table(const router_req_t *req)
{
    const kvs_request_info_t *in = &req->info;
    if (req->client == NULL || router_client_session(req->client)->queued == 0)
        return 0; /* none queued: no walk of its FIFO (up to limits.max_inflight) */
    for (const router_req_t *x = req->next; x != NULL; x = x->next)
        if (x->wrote_bound && x->info.table_len == in->table_len &&
            (in->table_len == 0 || memcmp(x->info.table, in->table, in->table_len) == 0))
            return 1;
    return 0;
}

/* What a worker's answer of a status other than 200 says of a write: the
 * outcome may or may not be applied (OUTCOME_UNKNOWN: Kafka did not
 * acknowledge all of it), and whether a record of it was placed
 * (OUTCOME_PLACED: the answer has a position). */
enum { OUTCOME_UNKNOWN = 1, OUTCOME_PLACED = 2 };

static int write_outcome(const uint8_t *payload, size_t len)
{
    Kvs__CommandResponse *resp = kvs_msg_decode_response(NULL, payload, len, NULL);
    int o = resp == NULL ? 0
                         : (resp->outcome_unknown ? OUTCOME_UNKNOWN : 0) |
                               (resp->position.len > 0 ? OUTCOME_PLACED : 0);
    kvs__command_response__free_unpacked(resp, NULL);
    return o;
}

int router_send_answered(router_t *r, router_req_t *req, router_try_t *t, uint32_t part,
                         const uint8_t *payload, size_t len, const char *failure)
{
    if (r->sets == NULL || t->link >= r->n_links)
        return 0;
    router_link_t *l = &r->links[t->link];
    uint32_t status = failure == NULL ? router_send_status(payload, len) : 0;
    /* A write with no clear outcome (sent and not answered, or answered
     * outcome_unknown): the replica's producer may still put its records
     * in the topic, so the connection's writes to the shard keep to it
     * (pin). One that Kafka did not acknowledge (no position: no record
     * of it placed) does not avoid the replica either: the worker did its
     * part, and every replica produces to the same brokers. A record
     * placed and not applied there (its partition diverged on that
     * replica) is the replica's failure, avoided as any. */
    int outcome = 0;
    if (kvs_msg_is_write(req->cmd) && r->sets[t->shard].n > 1) {
        if (failure == NULL && status != KVS_STATUS_OK && status != 0)
            outcome = write_outcome(payload, len);
        else if (failure != NULL && len == 0 && !t->unsent)
            outcome = OUTCOME_UNKNOWN;
        if (outcome & OUTCOME_UNKNOWN)
            pin(r, req, t);
    }
    /* Any failure of the replica: the link's (len 0), or an answer dropped
     * for its size (len, what it announced; only reads are retried, a
     * write may have been applied). Not a request too large to send
     * (unsent, with its own length): the replica was sent nothing. */
    int failed = failure != NULL ? len == 0 || !t->unsent : status == KVS_STATUS_UNAVAILABLE;
    if (!failed) {
        if (l->avoid_ms != 0)
            router_link_trust(l);
        return 0;
    }
    if (failure == NULL && outcome == OUTCOME_UNKNOWN)
        return 0; /* Kafka's doubt, not the replica's failure */
    if (r->sets[t->shard].n > 1)
        router_link_avoid(l, router_now_ms(r));
    if (t->bytes.len == 0 || !router_replica_any_up(r->links, &r->sets[t->shard], t->tried) ||
        later_write_of_table(req) || !router_budget_take(&r->budget))
        return 0;
    router_send_discharge(r, t); /* its units go where it goes */
    router_link_t *last;
    int rc = send_some(r, req, t, part, NULL, t->bytes.data, t->bytes.len, -1, &last);
    if (rc == 0)
        return 1;
    t->bytes.len = 0;
    return 0; /* no other replica took it: this answer stands */
}

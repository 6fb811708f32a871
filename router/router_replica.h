/*
 * router_replica: choosing among the copies of a shard, and how many
 * second tries the router may make.
 *
 * Every shard has a set of replicas (kvs_cluster): one link each in
 * router_t.links, shard s's at links[sets[s].first .. first + n). A read
 * goes to one replica; if it fails there (the link breaks or times out, or
 * the worker answers 503: catching up, starting, behind a position it must
 * see, overloaded) it is sent again to a replica it has not tried, while
 * the retry budget allows, and answered 503 once none is left. A write is
 * never sent twice (it may have been applied): it goes to the first
 * replica that takes it, which is only "another" when a link is down and
 * nothing was sent.
 *
 * Choice (router_replica_pick): among the replicas not tried yet, one that
 * is up and not avoided, this node's own first (no network hop), else the
 * others in turn (a connection's writes: from one that connection keeps);
 * then one that is avoided, the one whose avoidance ends soonest among
 * those not waiting for the answer to their link's own Ping, else among
 * those that are; then one that is down (a send to it fails at once, and
 * the caller moves on). A read takes a replica below the shard's cap
 * (router_session.h: the units of the parts in flight on its link) before
 * any at it: the healthy ones, then the avoided ones; a write keeps to
 * its connection's replica, cap or not (router_replica_capped). A replica
 * is avoided for a while after it failed a
 * request (router_link_avoid: 500 ms, doubling with each failure after the
 * last avoidance ran out, up to 30 s; the requests that fail together, in
 * flight when a link broke, count once; an answer that is not 503 ends
 * it, and so does a 200 to the Ping a link sends its worker when it
 * connects again: router_link; while that Ping is unanswered the link
 * counts as avoided), so a catching-up replica costs a retry now and
 * then, not on every request, a hung one a timeout once (its links'
 * Pings go unanswered after that), and one that accepts connections and
 * fails every request costs none.
 *
 * Retry budget (Finagle's RetryBudget): a token bucket per router. Every
 * read sent to a shard with replicas deposits retry_percent/100 of a token,
 * the bucket holds at most retry_burst tokens (and starts full), every
 * retry takes one. So retries add at most retry_percent of the reads plus
 * retry_burst: a sick cluster is not sent more load than it had.
 */
#ifndef ROUTER_REPLICA_H
#define ROUTER_REPLICA_H

#include "kvs_buf.h"
#include "kvs_list.h"
#include "router_link.h"

#include <stdint.h>

typedef struct router_set_s {
    uint32_t first; /* its first link in router_t.links */
    uint32_t n;     /* replicas (1..KVS_MAX_REPLICAS) */
    uint32_t rr;    /* where the next choice among equals starts */
    /* The sessions whose next request waits for the shard to come below
     * its cap (router_replica_capped; router_route; a head kvs_list_init
     * made, in order), and its healthy replicas (router_replica_healthy)
     * when the last of them was held. */
    kvs_list_t cap_wait;
    uint64_t cap_healthy;
} router_set_t;

/* One part of a request on its way to a shard: which replicas it was
 * sent to, and the bytes sent, kept for a retry (reads of replicated
 * shards only: `bytes.len` is 0 otherwise). */
typedef struct router_try_s {
    uint64_t tried; /* bit i: replica i of the set */
    uint32_t link;  /* index in router_t.links it was sent on last */
    uint32_t shard;
    uint32_t cost;       /* its units of the fair share (router_route) */
    int charged;         /* ... counted in links[link].units (router_send) */
    int in_wshard;       /* a write counted in its session's wshard[shard] (router_send) */
    int unsent;          /* no replica took it: it failed without being sent */
    uint32_t value_keys; /* the keys it reads values of (Hget, Hmget; 1 for a part of Hgetall or
                            Hscan) */
    kvs_buf_t bytes;
} router_try_t;

typedef struct router_budget_s {
    uint64_t milli;   /* tokens x 1000 */
    uint64_t cap;     /* retry_burst x 1000 */
    uint64_t deposit; /* retry_percent x 10: milli-tokens per read */
    uint64_t reads;   /* reads sent to replicated shards */
    uint64_t retries; /* retries made */
    uint64_t refused; /* retries the budget refused */
} router_budget_t;

void router_budget_init(router_budget_t *b, uint32_t percent, uint32_t burst);

/* New percent and burst for a running budget (a live reload): the tokens
 * it holds stay, down to the new burst; the counters stay. */
void router_budget_configure(router_budget_t *b, uint32_t percent, uint32_t burst);

/* A read was sent to a replicated shard. */
void router_budget_deposit(router_budget_t *b);

/* Takes a token for a retry: 1, or 0 when the budget is spent. */
int router_budget_take(router_budget_t *b);

/* The replica of `set` to send to next (an index into `links`), skipping
 * those in `tried`; -1 when every one was tried. `now` is uv_now. Among
 * equals, `start` < 0 takes the next in turn (reads: spread over the
 * replicas, those with fewer than `cap` units first, unless cap is 0);
 * otherwise the first from replica start % n (a connection's writes: one
 * replica while it stays healthy, so they reach the topic in the order
 * sent; `cap` is not looked at). */
int router_replica_pick(router_link_t *links, router_set_t *set, uint64_t tried, uint64_t now,
                        int64_t start, uint64_t cap);

/* Whether a part for `set` sent now, with `start` as for
 * router_replica_pick, would go to a replica with `cap` units or more in
 * flight: a read (start < 0) when every replica that is up has; a write
 * when the one it keeps to has. */
int router_replica_capped(const router_link_t *links, const router_set_t *set, uint64_t now,
                          int64_t start, uint64_t cap);

/* The replica of `set` a write with `start` (>= 0, as for
 * router_replica_pick) goes to now, nothing moved; -1 when none. */
int router_replica_write_choice(const router_link_t *links, const router_set_t *set, uint64_t now,
                                int64_t start);

/* The replicas of `set` that are up and neither avoided nor asking their
 * worker whether it serves (bit i: replica i) at `now`: those among which
 * a write's replica is chosen first. */
uint64_t router_replica_healthy(const router_link_t *links, const router_set_t *set, uint64_t now);

/* True when some replica of `set` outside `tried` is up. */
int router_replica_any_up(const router_link_t *links, const router_set_t *set, uint64_t tried);

#endif

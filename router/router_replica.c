/*
 * router_replica: replica choice and the retry budget (see
 * router_replica.h). Pure bookkeeping on the links' state and a clock the
 * caller passes in: no I/O here, so the unit tests drive it directly.
 */
#include "router_replica.h"

void router_budget_init(router_budget_t *b, uint32_t percent, uint32_t burst)
{
    b->cap = (uint64_t)burst * 1000;
    b->milli = b->cap;
    b->deposit = (uint64_t)percent * 10;
    b->reads = b->retries = b->refused = 0;
}

void router_budget_configure(router_budget_t *b, uint32_t percent, uint32_t burst)
{
    b->cap = (uint64_t)burst * 1000;
    if (b->milli > b->cap)
        b->milli = b->cap;
    b->deposit = (uint64_t)percent * 10;
}

void router_budget_deposit(router_budget_t *b)
{
    b->reads++;
    b->milli = b->milli + b->deposit > b->cap ? b->cap : b->milli + b->deposit;
}

int router_budget_take(router_budget_t *b)
{
    if (b->milli < 1000) {
        b->refused++;
        return 0;
    }
    b->milli -= 1000;
    b->retries++;
    return 1;
}

static int usable(const router_link_t *l)
{
    return l->up; /* a link is up only while connected */
}

int router_replica_any_up(const router_link_t *links, const router_set_t *set, uint64_t tried)
{
    for (uint32_t i = 0; i < set->n; i++)
        if (!(tried & (1ull << i)) && usable(&links[set->first + i]))
            return 1;
    return 0;
}

static int capped(const router_link_t *l, uint64_t cap)
{
    return cap > 0 && l->units >= cap;
}

static int healthy(const router_link_t *l, uint64_t now)
{
    return usable(l) && l->avoid_until <= now && !router_link_asking(l);
}

uint64_t router_replica_healthy(const router_link_t *links, const router_set_t *set, uint64_t now)
{
    uint64_t mask = 0;
    for (uint32_t i = 0; i < set->n; i++)
        if (healthy(&links[set->first + i], now))
            mask |= 1ull << i;
    return mask;
}

/* The best untried replica that is up, not avoided and below `cap` (0:
 * any): the local one, else the next in turn from set->rr (start < 0) or
 * from replica start % n. -1 when none; *turn is where the next choice
 * in turn starts (start < 0 and a replica in turn chosen), else left. */
static int pick_healthy(const router_link_t *links, const router_set_t *set, uint64_t tried,
                        uint64_t now, int64_t start, uint64_t cap, uint32_t *turn)
{
    int found = -1;
    uint32_t from = start < 0 ? set->rr : (uint32_t)((uint64_t)start % set->n);
    for (uint32_t k = 0; k < set->n; k++) {
        uint32_t i = (from + k) % set->n;
        const router_link_t *l = &links[set->first + i];
        if ((tried & (1ull << i)) || !healthy(l, now) || capped(l, cap))
            continue;
        if (l->addr.is_unix)
            return (int)(set->first + i); /* this node's own worker: no hop */
        if (found < 0)
            found = (int)i;
    }
    if (found < 0)
        return -1;
    if (start < 0)
        *turn = ((uint32_t)found + 1) % set->n;
    return (int)(set->first + (uint32_t)found);
}

/* Among avoided replicas, whether `b` is a better last resort than `a`:
 * one not waiting for its Ping's answer, then the one whose avoidance
 * ends soonest. */
static int later_choice(const router_link_t *a, const router_link_t *b)
{
    int qa = router_link_asking(a), qb = router_link_asking(b);
    return qb != qa ? qb < qa : b->avoid_until < a->avoid_until;
}

/* The best untried replica that is up (after pick_healthy: an avoided
 * one) and below `cap` (0: any), else -1; *down the first untried one
 * that is down, or -1. */
static int pick_avoided(const router_link_t *links, const router_set_t *set, uint64_t tried,
                        uint64_t cap, int *down)
{
    int avoided = -1;
    *down = -1;
    for (uint32_t k = 0; k < set->n; k++) {
        const router_link_t *l = &links[set->first + k];
        if (tried & (1ull << k))
            continue;
        if (!usable(l)) {
            if (*down < 0)
                *down = (int)(set->first + k);
        } else if (!capped(l, cap) && (avoided < 0 || later_choice(&links[avoided], l))) {
            avoided = (int)(set->first + k);
        }
    }
    return avoided;
}

/* router_replica_pick without moving set->rr (*turn says where to). */
static int choose(const router_link_t *links, const router_set_t *set, uint64_t tried, uint64_t now,
                  int64_t start, uint64_t cap, uint32_t *turn)
{
    int down, i;
    if (start < 0 && cap > 0) { /* a read: a replica below the cap first */
        if ((i = pick_healthy(links, set, tried, now, start, cap, turn)) >= 0 ||
            (i = pick_avoided(links, set, tried, cap, &down)) >= 0)
            return i;
    }
    if ((i = pick_healthy(links, set, tried, now, start, 0, turn)) >= 0)
        return i;
    i = pick_avoided(links, set, tried, 0, &down);
    return i >= 0 ? i : down;
}

int router_replica_pick(router_link_t *links, router_set_t *set, uint64_t tried, uint64_t now,
                        int64_t start, uint64_t cap)
{
    return choose(links, set, tried, now, start, cap, &set->rr);
}

int router_replica_write_choice(const router_link_t *links, const router_set_t *set, uint64_t now,
                                int64_t start)
{
    uint32_t turn;
    return choose(links, set, 0, now, start, 0, &turn);
}

int router_replica_capped(const router_link_t *links, const router_set_t *set, uint64_t now,
                          int64_t start, uint64_t cap)
{
    if (start >= 0) { /* a write: the replica it keeps to */
        int i = router_replica_write_choice(links, set, now, start);
        return i >= 0 && usable(&links[i]) && capped(&links[i], cap);
    }
    int up = 0;
    for (uint32_t k = 0; k < set->n; k++) {
        const router_link_t *l = &links[set->first + k];
        if (usable(l)) {
            if (!capped(l, cap))
                return 0;
            up = 1;
        }
    }
    return up;
}

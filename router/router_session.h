/*
 * router_session: what the router remembers about one client connection
 * so that the client reads its own writes, without asking (session
 * consistency).
 *
 *  - Positions: for each partition of a bound topic, the highest position
 *    (record offset) of a write the router answered on this connection.
 *    Later reads of the same table carry them as min_position, so a worker
 *    (any copy of the shard, once there are several) serves the read only
 *    once it has applied those writes.
 *  - Order: reads of bound tables that arrive while the connection's
 *    writes to bound tables are still in flight are held back (not sent)
 *    until those writes are answered, and so is everything after a held
 *    request. A pipelined write-then-read therefore reads the write, as it
 *    would on a single server, and the read carries the write's position.
 *  - Writes: a connection's writes to a shard with replicas go to one
 *    replica while it stays up and is not avoided (`replica_pref`, from a
 *    counter, spreads connections over the replicas), so two pipelined
 *    writes of one key are applied in the order sent, not raced through
 *    two replicas into the topic. A write that would go to another
 *    replica of a shard than the connection's writes to it still in
 *    flight (its own avoided or down, or back to it after a failover:
 *    `wshard`) is held like a read until the connection's writes in
 *    flight are answered (router_route: write_switches). A write that
 *    ended with no clear outcome (sent and not answered, or answered
 *    outcome_unknown: Kafka did not acknowledge all of it) may still be
 *    put in the topic by that replica's producer, until its
 *    message.timeout.ms, within router.timeout: for router.timeout after
 *    it the connection's writes to that shard go to that replica or
 *    nowhere (`wpin`: 503 while it is down), never through another
 *    replica's producer ahead of it.
 *  - Local reads (router_local): while any request of the connection is
 *    with a local worker (`forwarded`), its reads of local shards go to the
 *    workers too, behind it on the same links, instead of being answered
 *    from the environment at once: a pipelined write then read of any
 *    table reads the write, and reads are never answered out of order
 *    with the requests before them.
 *  - Fair share: workers run what they are sent in the order it came, so
 *    the work clients have at the workers is what a newcomer's request
 *    waits behind. It is counted in units of about one small request's
 *    work: a part sent to a worker costs one unit, one more per
 *    ROUTER_FAIR_KEYS keys it names past the first (an Hmset's pairs, an
 *    Hmget's keys: a key of a large request costs a worker about an
 *    eighth of a request of its own), and one more per ROUTER_FAIR_BYTES
 *    of its encoding (large values). A connection with
 *    work at workers (`at_workers`) is busy; past an even share of
 *    ROUTER_FAIR_TOTAL units among the busy connections (at least
 *    ROUTER_FAIR_MIN) its further requests are held like those behind a
 *    write, and go as its answers come back (a request alone may cost
 *    more than the share: one goes whenever its connection has less than
 *    ROUTER_FAIR_MIN at workers). One connection alone keeps the whole
 *    share; many that flood a node each get their part, and what anyone
 *    waits behind at a worker settles at about ROUTER_FAIR_TOTAL units
 *    (ROUTER_FAIR_MIN each past 64 busy connections) plus a request
 *    each. The share is checked as requests are sent, so connections that
 *    started one after another keep for a while what they sent while it
 *    was larger (up to ROUTER_FAIR_TOTAL times the n-th harmonic number
 *    in all). Work a closed client left at workers keeps counting, off
 *    the ROUTER_FAIR_TOTAL every busy connection shares, until done
 *    (router_route_orphan). And past ROUTER_SHARD_CAP units on a link
 *    to a worker (orphans' included) nobody sends it a request, not even
 *    below the least share: a read goes to another replica of the shard
 *    below its cap (router_replica_pick); a connection whose next
 *    request has a part for a shard with none (router_replica_capped; a
 *    write: the replica its connection keeps to) waits (and its later
 *    requests behind it, in order), in the order they were held, and
 *    goes as the worker's units come down. Otherwise
 *    each new connection's least share adds to the work ahead of
 *    everyone, and clients that connect, pipeline and close at once,
 *    again and again, made it grow without bound (minutes). The cap is
 *    each replica's own, decided before any part is sent: a stopped or
 *    hung worker, whose requests keep their units until router.timeout,
 *    holds the requests that would wait for it anyway, not those of
 *    every other shard (a cap on the total did), nor the reads another
 *    replica can serve (a cap per shard did).
 *  - What a value read costs: a worker's time goes mostly into the bytes
 *    of its answers, which the request does not show. A key an Hget or
 *    Hmget reads costs one unit more per ROUTER_FAIR_BYTES of the answer
 *    the connection's value reads got per key (`answer_per_key`): the
 *    largest answer so far, coming down a quarter of the way to each
 *    smaller one; ROUTER_READ_GUESS until the first answer. So a
 *    connection that pipelines reads of values of megabytes has a few of
 *    them at a worker at a time, not a thousand (gigabytes that every
 *    client of the shard would wait behind), while reads of small values
 *    cost one unit each after their first few answers. A whole-table
 *    read (Hgetall, Hscan) costs so per part, from its own kind's answers
 *    (ROUTER_TABLE_GUESS at first); one refused as too large counts as
 *    max_frame, what the worker read before it gave up.
 *
 * Memory: one entry per partition the connection wrote to (at most the
 * bound topics' partitions), plus held requests, which count against the
 * connection's output limits (kvs_conn_hold) like answers it is owed.
 */
#ifndef ROUTER_SESSION_H
#define ROUTER_SESSION_H

#include "kvs_config.h"
#include "kvs_list.h"
#include "kvs_pos.h"

#include <stddef.h>
#include <stdint.h>

typedef struct router_req_s router_req_t;

/* Fair share (above): units of work at workers shared by the busy
 * connections, the least a connection's share may be, and the keys and
 * the bytes of a request's encoding that cost a unit more. */
#define ROUTER_FAIR_TOTAL 1024
#define ROUTER_FAIR_MIN 16
#define ROUTER_FAIR_BYTES 4096
#define ROUTER_FAIR_KEYS 8
#define ROUTER_SHARD_CAP (4 * ROUTER_FAIR_TOTAL) /* units on a link past which nobody sends it */
#define ROUTER_WSHARD_COUNT 26          /* wshard: bits of the count; the replica's index above */
#define ROUTER_READ_GUESS (64u << 10)   /* bytes per key a first value read is taken to answer */
#define ROUTER_TABLE_GUESS (256u << 10) /* ... and a whole-table read's part (Hgetall, Hscan) */

typedef struct router_pos_s {
    uint32_t binding; /* index in cfg->bindings */
    uint32_t partition;
    int64_t offset;
} router_pos_t;

typedef struct router_session_s {
    router_pos_t *pos; /* sorted by (binding, partition) */
    size_t n, cap;
    uint32_t writes; /* writes to bound tables sent and not answered */
    /* Per shard with replicas, its write parts sent and not answered:
     * how many (ROUTER_WSHARD_COUNT bits), all on one replica (the bits
     * above: its index in the shard's set). NULL until its first such
     * write; router_t.shards entries. */
    uint32_t *wshard;
    /* Per shard with replicas, until when (router_now_ms) its writes keep
     * to the replica in wshard with none in flight: a write there ended
     * with no clear outcome, and that replica's producer may still put its
     * records in the topic. NULL until the first such write. */
    uint64_t *wpin;
    uint32_t queued;     /* writes to bound tables sent and still in the FIFO, answered or not */
    uint32_t forwarded;  /* requests with a part at a local worker, not answered */
    uint32_t at_workers; /* units of work of its requests at workers (fair share) */
    uint32_t answer_per_key;  /* bytes per key of its value reads' answers (0: none yet) */
    uint32_t answer_per_part; /* bytes per part of its whole-table reads' answers (0: none yet) */
    uint32_t replica_pref;    /* where its writes' choice of replica starts (router_replica) */
    router_req_t *held, *held_tail; /* requests waiting for them, in arrival order */
    size_t held_bytes;              /* what they count as the client's output (hold) */
    kvs_list_t release_link;        /* on the router's release list */
    kvs_list_t cap_link;            /* on a shard's list of sessions held at its cap */
} router_session_t;

void router_session_init(router_session_t *s);

/* The units a part reading `keys` values costs beyond part_cost's, from
 * the answers the session's value reads got (above); with `whole`, a part
 * of a whole-table read (keys 1), from those of its whole-table reads. */
uint32_t router_session_read_cost(const router_session_t *s, uint32_t keys, int whole);

/* A value read of `keys` keys (`whole`: a whole-table read's part) was
 * answered with `len` bytes. */
void router_session_note_read(router_session_t *s, size_t len, uint32_t keys, int whole);
void router_session_free(router_session_t *s);

/* Notes the positions of a write answer's token (entries naming no bound
 * topic are ignored; a malformed token is ignored whole). Returns 0 or
 * -ENOMEM. */
int router_session_note(router_session_t *s, const kvs_config_t *cfg, const uint8_t *tok,
                        size_t len);

/* Adds to `set` the session's positions in `b`'s topic: of partition
 * `partition`, or of every partition when it is negative. Returns 0 or
 * -ENOMEM. The topic names stay valid as long as the config. */
int router_session_add(const router_session_t *s, const kvs_config_t *cfg, const kvs_binding_t *b,
                       int64_t partition, kvs_pos_set_t *set);

/* The position noted for (b, partition), or -1. */
int64_t router_session_get(const router_session_t *s, const kvs_config_t *cfg,
                           const kvs_binding_t *b, uint32_t partition);

#endif

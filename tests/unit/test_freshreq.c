/*
 * Unit tests for kvs_freshreq: which partitions of a read are checked, and
 * how often. A lookup counts its calls per partition; every partition
 * looked up is caught up unless the case says otherwise.
 */
#include "kvs_freshreq.h"
#include "kvs_place.h"
#include "kvs_pos.h"
#include "kvs_test.h"

#define PARTS 16
#define SHARDS 2
#define SHARD 1

typedef struct {
    unsigned calls[PARTS];
    unsigned total;
    int behind; /* this partition is far behind (-1: none) */
} lookups_t;

static int lookup(void *arg, const kvs_binding_t *b, uint32_t p, kvs_fresh_part_t *out)
{
    lookups_t *l = arg;
    (void)b;
    CHECK(p < PARTS);
    if (p % SHARDS != SHARD)
        return 1; /* not this copy's */
    l->calls[p]++;
    l->total++;
    out->next = (int)p == l->behind ? 0 : 100;
    out->end = 100;
    return 0;
}

typedef struct {
    kvs_config_t cfg;
    kvs_binding_t b;
    lookups_t l;
    kvs_arena_t arena;
    ProtobufCBinaryData keys[3000];
    char names[3000][16];
} fixture_t;

static fixture_t fx;

static void setup(kvs_partitioner_t partitioner)
{
    memset(&fx, 0, sizeof(fx));
    fx.cfg.partitions = PARTS;
    fx.cfg.shards = SHARDS;
    fx.cfg.kafka_max_lag = 10;
    fx.b.topic = "t";
    fx.b.partitions = PARTS;
    fx.b.partitioner = partitioner;
    fx.l.behind = -1;
    kvs_arena_init(&fx.arena);
}

/* An Hmget of n distinct keys; returns the check's verdict. */
static kvs_fresh_verdict_t hmget(size_t n, kvs_freshreq_t *c)
{
    Kvs__CommandRequest req = KVS__COMMAND_REQUEST__INIT;
    Kvs__Hmget m = KVS__HMGET__INIT;
    CHECK(n <= sizeof(fx.keys) / sizeof(fx.keys[0]));
    for (size_t i = 0; i < n; i++) {
        int len = snprintf(fx.names[i], sizeof(fx.names[i]), "key-%zu", i);
        fx.keys[i].data = (uint8_t *)fx.names[i];
        fx.keys[i].len = (size_t)len;
    }
    m.keys = fx.keys;
    m.n_keys = n;
    req.command_case = KVS__COMMAND_REQUEST__COMMAND_HMGET;
    req.hmget = &m;
    kvs_freshreq_init(c, &fx.cfg, SHARD, &fx.b, lookup, &fx.l);
    CHECK_EQ(kvs_freshreq_request(c, &req, &fx.arena), 0);
    kvs_arena_close(&fx.arena);
    return c->verdict;
}

/* Thousands of keys: each of this shard's partitions they fall in is looked
 * up once, not once per key. */
KVS_TEST(many_keys_look_up_each_partition_once)
{
    kvs_freshreq_t c;
    setup(KVS_PARTITIONER_MURMUR2);
    CHECK_EQ(hmget(3000, &c), KVS_FRESH_SERVE);
    unsigned hit = 0;
    for (uint32_t p = 0; p < PARTS; p++) {
        CHECK(fx.l.calls[p] <= 1);
        hit += fx.l.calls[p];
    }
    CHECK_EQ(hit, fx.l.total);
    CHECK_EQ(hit, PARTS / SHARDS); /* 3000 keys reach every partition */
}

/* With no partitioner every key may be in any owned partition: they are
 * walked once for the whole request. */
KVS_TEST(no_partitioner_walks_the_owned_partitions_once)
{
    kvs_freshreq_t c;
    setup(KVS_PARTITIONER_NONE);
    CHECK_EQ(hmget(3000, &c), KVS_FRESH_SERVE);
    CHECK_EQ(fx.l.total, PARTS / SHARDS);
    for (uint32_t p = SHARD; p < PARTS; p += SHARDS)
        CHECK_EQ(fx.l.calls[p], 1);
}

/* Checking each partition once changes no verdict: a key in a partition
 * far behind still holds the read back, and names that partition. */
KVS_TEST(a_partition_behind_still_holds_the_read_back)
{
    kvs_freshreq_t c;
    setup(KVS_PARTITIONER_MURMUR2);
    uint32_t p = kvs_place_partition_by(KVS_PARTITIONER_MURMUR2, "key-7", 5, PARTS);
    if (p % SHARDS != SHARD)
        p = kvs_place_partition_by(KVS_PARTITIONER_MURMUR2, "key-8", 5, PARTS);
    CHECK_EQ(p % SHARDS, SHARD);
    fx.l.behind = (int)p;
    CHECK_EQ(hmget(20, &c), KVS_FRESH_CATCHING_UP);
    CHECK_EQ(c.partition, p);
}

static void note_ahead(void *arg, const kvs_binding_t *b, uint32_t p)
{
    (void)arg;
    CHECK(b == &fx.b);
    CHECK(p < PARTS);
    fx.l.calls[p] += 100; /* told: counted apart from the lookup */
}

/* A read ahead of the end on several partitions: the walk tells of each
 * one (a worker asks the brokers about them all in one question), and the
 * verdict names one of them. */
KVS_TEST(every_partition_ahead_is_told)
{
    kvs_freshreq_t c;
    kvs_pos_set_t set;
    kvs_buf_t tok;
    setup(KVS_PARTITIONER_MURMUR2);
    kvs_pos_set_init(&set);
    kvs_buf_init(&tok);
    /* ends are 100: 3, 7 and 11 are ahead, 5 is not; 4 is another shard's */
    static const uint32_t parts[] = {3, 4, 5, 7, 11};
    static const int64_t offsets[] = {200, 300, 50, 101, 150};
    for (size_t i = 0; i < 5; i++)
        CHECK_EQ(kvs_pos_set_add(&set, "t", 1, parts[i], offsets[i]), 0);
    kvs_pos_set_normalize(&set);
    CHECK_EQ(kvs_pos_set_encode(&set, &tok), 0);
    Kvs__CommandRequest req = KVS__COMMAND_REQUEST__INIT;
    Kvs__Hgetall m = KVS__HGETALL__INIT;
    req.command_case = KVS__COMMAND_REQUEST__COMMAND_HGETALL;
    req.hgetall = &m;
    req.min_position.data = tok.data;
    req.min_position.len = tok.len;
    kvs_freshreq_init(&c, &fx.cfg, SHARD, &fx.b, lookup, &fx.l);
    c.ahead = note_ahead;
    CHECK_EQ(kvs_freshreq_request(&c, &req, &fx.arena), 0);
    CHECK_EQ(c.verdict, KVS_FRESH_AHEAD);
    CHECK(c.partition == 3 || c.partition == 7 || c.partition == 11);
    for (uint32_t p = 0; p < PARTS; p++) {
        unsigned told = fx.l.calls[p] / 100, looked = fx.l.calls[p] % 100;
        CHECK_EQ(told, (unsigned)(p == 3 || p == 7 || p == 11));
        CHECK_EQ(looked, (unsigned)(p % SHARDS == SHARD));
    }
    /* Without the callback nothing is told (the router's local reads). */
    memset(fx.l.calls, 0, sizeof(fx.l.calls));
    kvs_freshreq_init(&c, &fx.cfg, SHARD, &fx.b, lookup, &fx.l);
    CHECK(c.ahead == NULL);
    CHECK_EQ(kvs_freshreq_request(&c, &req, &fx.arena), 0);
    CHECK_EQ(c.verdict, KVS_FRESH_AHEAD);
    for (uint32_t p = 0; p < PARTS; p++)
        CHECK(fx.l.calls[p] < 100);
    kvs_arena_close(&fx.arena);
    kvs_buf_free(&tok);
    kvs_pos_set_free(&set);
}

/* A token a client made up, with a million-odd entries of the binding's
 * topic (the partitions past the topic's count included): the walk keeps
 * only the partitions the topic has, so a read costs memory in proportion
 * to the topic, never to the token. */
KVS_TEST(positions_past_the_topic_take_no_memory)
{
    kvs_freshreq_t c;
    kvs_pos_set_t set;
    kvs_buf_t tok;
    setup(KVS_PARTITIONER_MURMUR2);
    kvs_pos_set_init(&set);
    kvs_buf_init(&tok);
    for (uint32_t p = 0; p < 200000; p++)
        CHECK_EQ(kvs_pos_set_add(&set, "t", 1, p, 1), 0);
    CHECK_EQ(kvs_pos_set_encode(&set, &tok), 0);
    Kvs__CommandRequest req = KVS__COMMAND_REQUEST__INIT;
    Kvs__Hgetall m = KVS__HGETALL__INIT;
    req.command_case = KVS__COMMAND_REQUEST__COMMAND_HGETALL;
    req.hgetall = &m;
    req.min_position.data = tok.data;
    req.min_position.len = tok.len;
    kvs_freshreq_init(&c, &fx.cfg, SHARD, &fx.b, lookup, &fx.l);
    CHECK_EQ(kvs_freshreq_request(&c, &req, &fx.arena), 0);
    CHECK_EQ(c.verdict, KVS_FRESH_SERVE); /* every owned partition is at 100 > 1 */
    CHECK(c.npos <= PARTS);
    CHECK(fx.arena.big <= 16384);
    kvs_arena_close(&fx.arena);
    kvs_buf_free(&tok);
    kvs_pos_set_free(&set);
}

/* The worker and the router's local reads ask this one question: every
 * read, Hlen too (a count of a table catching up is as stale as its rows). */
KVS_TEST(every_read_is_held_to_the_rules)
{
    CHECK(kvs_freshreq_applies(KVS__COMMAND_REQUEST__COMMAND_HGET));
    CHECK(kvs_freshreq_applies(KVS__COMMAND_REQUEST__COMMAND_HEXIST));
    CHECK(kvs_freshreq_applies(KVS__COMMAND_REQUEST__COMMAND_HMGET));
    CHECK(kvs_freshreq_applies(KVS__COMMAND_REQUEST__COMMAND_HGETALL));
    CHECK(kvs_freshreq_applies(KVS__COMMAND_REQUEST__COMMAND_HSCAN));
    CHECK(kvs_freshreq_applies(KVS__COMMAND_REQUEST__COMMAND_HLEN));
    CHECK(!kvs_freshreq_applies(KVS__COMMAND_REQUEST__COMMAND_HSET));
    CHECK(!kvs_freshreq_applies(KVS__COMMAND_REQUEST__COMMAND_PING));
}

/* Hlen counts the whole table: every partition the shard owns, and one
 * far behind holds it back. */
KVS_TEST(hlen_walks_the_owned_partitions)
{
    kvs_freshreq_t c;
    Kvs__CommandRequest req = KVS__COMMAND_REQUEST__INIT;
    Kvs__Hlen m = KVS__HLEN__INIT;
    m.table = "t";
    req.command_case = KVS__COMMAND_REQUEST__COMMAND_HLEN;
    req.hlen = &m;
    setup(KVS_PARTITIONER_MURMUR2);
    kvs_freshreq_init(&c, &fx.cfg, SHARD, &fx.b, lookup, &fx.l);
    CHECK_EQ(kvs_freshreq_request(&c, &req, &fx.arena), 0);
    CHECK_EQ(c.verdict, KVS_FRESH_SERVE);
    CHECK_EQ(fx.l.total, PARTS / SHARDS);
    setup(KVS_PARTITIONER_MURMUR2);
    fx.l.behind = SHARD + SHARDS;
    kvs_freshreq_init(&c, &fx.cfg, SHARD, &fx.b, lookup, &fx.l);
    CHECK_EQ(kvs_freshreq_request(&c, &req, &fx.arena), 0);
    CHECK_EQ(c.verdict, KVS_FRESH_CATCHING_UP);
    CHECK_EQ(c.partition, SHARD + SHARDS);
    kvs_arena_close(&fx.arena);
}

KVS_TEST_MAIN(KVS_CASE(every_read_is_held_to_the_rules), KVS_CASE(hlen_walks_the_owned_partitions),
              KVS_CASE(many_keys_look_up_each_partition_once),
              KVS_CASE(no_partitioner_walks_the_owned_partitions_once),
              KVS_CASE(a_partition_behind_still_holds_the_read_back),
              KVS_CASE(every_partition_ahead_is_told),
              KVS_CASE(positions_past_the_topic_take_no_memory))

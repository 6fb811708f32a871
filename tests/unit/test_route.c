/*
 * Unit tests for router_route: placement, forwarding, split/merge, fan-out
 * and Hscan cursors, without sockets or a loop.
 *
 * This binary links router_route.c alone and defines the functions it
 * calls outside itself (router_local's too: local reads are off here):
 *  - router_link_send and router_link_send_msg record every part sent (the
 *    shard, found from the link's index in r.links, and ctx, part and the
 *    packed payload) and fail with KVS_ECLOSED, as a real link does, when
 *    the case has marked the link down (link->up == 0);
 *  - router_client_req_done counts completions: it must run exactly once
 *    per request that completes after router_route returned, and never
 *    while router_route runs (the client checks req->done itself then).
 * Cases then play the workers: they answer recorded parts through
 * router_route_reply, in whatever order the case wants, and read the
 * client's answer (one complete frame) from req->resp.
 *
 * Placement is taken from kvs_place_key_shard, the function the router is
 * meant to use (tested on its own in test_place).
 */
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_place.h"
#include "kvs_pos.h"
#include "kvs_reads.h"
#include "kvs_test.h"
#include "router.h"

#define SHARDS 4
#define PARTITIONS 64
#define MAX_SENT 256
#define KEYS_PER_SHARD 8
#define TABLE "users"

typedef struct {
    uint32_t shard;
    uint32_t link; /* index in r.links: which replica */
    void *ctx;
    uint32_t part;
    int raw; /* router_link_send (bytes as given) rather than _send_msg */
    uint8_t *bytes;
    size_t len;
} sent_t;

typedef struct {
    router_t r;
    kvs_config_t *cfg;
    router_req_t *req;
    uint8_t *payload; /* the request last routed */
    size_t payload_len;
    int routing; /* inside router_route */
    int done_calls;
    int done_calls_in_route;
    sent_t sent[MAX_SENT];
    size_t n_sent;
    kvs_arena_t arena; /* decoded messages, for the whole case */
    char keys[SHARDS][KEYS_PER_SHARD][16];
    router_session_t session; /* the fake client's */
    ptrdiff_t held;           /* bytes router_client_hold was told of */
    ptrdiff_t reserved;       /* bytes router_client_reserve was told of */
    int output_full;          /* router_client_output_full's answer */
    int many;                 /* several requests at once: any may complete */
    router_req_t *completed[8];
    size_t n_completed;
    int value_lengths; /* route_cmd asks for CommandRequest.value_lengths */
    size_t full_link;  /* index + 1 of a link that refuses with KVS_ELIMIT (0: none) */
} fixture_t;

static fixture_t fx;
static char fake_client; /* router_client_t is opaque: any unique address */
#define CLIENT ((router_client_t *)&fake_client)

/* ---- stubs for what router_route.c calls ---------------------------------------- */

static int record(router_link_t *l, const uint8_t *p, size_t n, void *ctx, uint32_t part, int raw)
{
    size_t idx = (size_t)(l - fx.r.links), shard = l->shard;
    CHECK(idx < fx.r.n_links);
    CHECK(shard < fx.r.shards);
    if (!l->up)
        return KVS_ECLOSED;
    if (fx.full_link == idx + 1)
        return KVS_ELIMIT; /* limits.client_output bytes of requests queued there */
    if (l->max_frame > 0 && n > l->max_frame)
        return KVS_ETOOBIG; /* as router_link does: nothing is sent */
    CHECK(fx.n_sent < MAX_SENT);
    sent_t *s = &fx.sent[fx.n_sent++];
    *s = (sent_t){.shard = (uint32_t)shard,
                  .link = (uint32_t)idx,
                  .ctx = ctx,
                  .part = part,
                  .raw = raw,
                  .len = n};
    s->bytes = malloc(n ? n : 1);
    CHECK(s->bytes != NULL);
    memcpy(s->bytes, p, n);
    return 0;
}

int router_link_send(router_link_t *l, const uint8_t *payload, size_t len, void *ctx, uint32_t part)
{
    return record(l, payload, len, ctx, part, 1);
}

int router_link_send_msg(router_link_t *l, const ProtobufCMessage *m, void *ctx, uint32_t part)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *p = malloc(n ? n : 1);
    CHECK(p != NULL);
    protobuf_c_message_pack(m, p);
    int rc = record(l, p, n, ctx, part, 0);
    free(p);
    return rc;
}

/* Local reads are off in these cases (r.local is NULL): never called. */
int router_local_read(router_local_t *lc, uint32_t shard, const Kvs__CommandRequest *q,
                      const kvs_binding_t *b, kvs_buf_t *out)
{
    (void)lc, (void)shard, (void)q, (void)b, (void)out;
    CHECK(!"router_local_read called with local reads off");
    return 0;
}

int router_local_read_key(router_local_t *lc, uint32_t shard, const kvs_peek_t *pk,
                          const kvs_binding_t *b, int64_t min_offset, kvs_buf_t *out)
{
    (void)lc, (void)shard, (void)pk, (void)b, (void)min_offset, (void)out;
    CHECK(!"router_local_read_key called with local reads off");
    return 0;
}

int router_local_is_local(const router_local_t *lc, uint32_t shard)
{
    (void)lc, (void)shard;
    CHECK(!"router_local_is_local called with local reads off");
    return 0;
}

/* Answers stay in req->resp, where the cases read them: never deliver. */
int router_client_deliver(router_client_t *cl, router_req_t *req, const uint8_t *payload,
                          size_t len)
{
    (void)cl;
    (void)req;
    (void)payload;
    (void)len;
    return 0;
}

router_session_t *router_client_session(router_client_t *cl)
{
    CHECK(cl == CLIENT);
    return &fx.session;
}

/* The test client's latest request naming a table (router_client_note_table). */
static uint64_t table_seq;

void router_client_note_table(router_client_t *cl, const router_req_t *req)
{
    CHECK(cl == CLIENT);
    if (req->seq > table_seq)
        table_seq = req->seq;
}

int router_client_table_after(const router_client_t *cl, const router_req_t *req)
{
    CHECK(cl == CLIENT);
    return table_seq > req->seq;
}

void router_client_hold(router_client_t *cl, ptrdiff_t delta)
{
    CHECK(cl == CLIENT);
    fx.held += delta;
    CHECK(fx.held >= 0);
}

void router_client_reserve(router_client_t *cl, ptrdiff_t delta)
{
    CHECK(cl == CLIENT);
    fx.reserved += delta;
    CHECK(fx.reserved >= 0);
}

int router_client_output_full(router_client_t *cl, size_t not_output)
{
    CHECK(cl == CLIENT);
    /* its held requests are held output, their reservations reserved */
    CHECK((ptrdiff_t)not_output <= fx.held + fx.reserved);
    return fx.output_full;
}

/* The test client answers its requests as they complete: each is its
 * FIFO's head (a Slowlog runs at once). */
size_t router_client_held_output(const router_client_t *cl)
{
    CHECK(cl == CLIENT);
    return fx.held + fx.reserved > 0 ? (size_t)(fx.held + fx.reserved) : 0;
}

int router_client_is_head(const router_client_t *cl, const router_req_t *req)
{
    CHECK(cl == CLIENT);
    (void)req;
    return 1;
}

void router_client_auth(router_client_t *cl, router_req_t *req, const Kvs__Auth *m)
{
    (void)cl;
    (void)m;
    router_req_finish_status(req, 599, "test: no Auth here");
}

void router_client_req_done(router_client_t *cl, router_req_t *req)
{
    CHECK(cl == CLIENT);
    if (fx.many) { /* the session cases keep their requests themselves */
        CHECK(req->done && fx.n_completed < 8);
        fx.completed[fx.n_completed++] = req;
        return;
    }
    CHECK(req == fx.req);
    CHECK(fx.req != NULL && fx.req->done);
    fx.done_calls++;
    if (fx.routing)
        fx.done_calls_in_route++;
}

/* ---- fixture ------------------------------------------------------------------------ */

static void clear_sent(void)
{
    for (size_t i = 0; i < fx.n_sent; i++)
        free(fx.sent[i].bytes);
    fx.n_sent = 0;
}

static void drop_req(void);

/* Idempotent: runs from atexit once per case set up in this process. */
static void teardown(void)
{
    drop_req();
    clear_sent();
    free(fx.payload);
    fx.payload = NULL;
    free(fx.r.links);
    fx.r.links = NULL;
    free(fx.r.sets);
    fx.r.sets = NULL;
    fx.r.n_links = 0;
    router_reqs_release(&fx.r);
    kvs_arena_close(&fx.r.arena);
    kvs_arena_close(&fx.r.merge_arena);
    kvs_arena_close(&fx.arena);
    kvs_config_free(fx.cfg);
    router_session_free(&fx.session);
    router_session_init(&fx.session);
    kvs_buf_free(&fx.r.scratch);
    fx.held = 0;
    fx.reserved = 0;
    fx.cfg = NULL;
}

/* Fills fx.keys[s] with the first keys "key<N>" placed on shard s. */
static void find_keys(void)
{
    int have[SHARDS] = {0}, total = 0;
    for (int n = 0; total < SHARDS * KEYS_PER_SHARD; n++) {
        char k[16];
        snprintf(k, sizeof(k), "key%d", n);
        uint32_t s = kvs_place_key_shard(k, strlen(k), PARTITIONS, SHARDS);
        if (have[s] < KEYS_PER_SHARD) {
            memcpy(fx.keys[s][have[s]++], k, sizeof(k));
            total++;
        }
    }
}

/* A router with SHARDS links, all up, limits.max_frame = `max_frame`, and
 * `extra` appended to its config (e.g. a kafka section). */
static void setup_yaml(const char *yaml)
{
    char err[256] = "";
    int rc = kvs_config_parse("test.yaml", yaml, strlen(yaml), &fx.cfg, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "config: %s\n", err);
    CHECK_EQ(rc, 0);
    fx.r.cfg = fx.cfg;
    fx.r.shards = fx.cfg->shards;
    kvs_list_init(&fx.r.release);
    uint32_t reps = fx.cfg->n_nodes > 0 ? kvs_config_replica_count(fx.cfg, 0) : 1;
    fx.r.n_links = fx.r.shards * reps; /* replicas of shard s: links[s * reps ..] */
    fx.r.links = calloc(fx.r.n_links, sizeof(*fx.r.links));
    fx.r.sets = calloc(fx.r.shards, sizeof(*fx.r.sets));
    CHECK(fx.r.links != NULL && fx.r.sets != NULL);
    router_budget_init(&fx.r.budget, fx.cfg->retry_percent, fx.cfg->retry_burst);
    for (uint32_t i = 0; i < fx.r.n_links; i++) {
        fx.r.links[i].shard = i / reps;
        fx.r.links[i].up = 1;
        fx.r.links[i].max_frame = (uint32_t)fx.cfg->max_frame;
        fx.r.links[i].node = "";
    }
    for (uint32_t s = 0; s < fx.r.shards; s++) {
        fx.r.sets[s] = (router_set_t){.first = s * reps, .n = reps};
        kvs_list_init(&fx.r.sets[s].cap_wait);
    }
    kvs_arena_init(&fx.r.arena);
    kvs_arena_init(&fx.r.merge_arena);
    kvs_arena_init(&fx.arena);
    find_keys();
    atexit(teardown);
}

static void setup_config(const char *max_frame, const char *extra)
{
    char yaml[1024];
    snprintf(yaml, sizeof(yaml),
             "cluster:\n  shards: %d\n  partitions: %d\nlimits:\n  max_frame: %s\n%s", SHARDS,
             PARTITIONS, max_frame, extra);
    setup_yaml(yaml);
}

static void setup_frame(const char *max_frame)
{
    setup_config(max_frame, "");
}

static void setup(void)
{
    setup_frame("4MiB");
}

static void set_down(uint32_t shard)
{
    fx.r.links[shard].up = 0;
    snprintf(fx.r.links[shard].last_error, sizeof(fx.r.links[shard].last_error),
             "connect: connection refused");
}

/* ---- requests in ----------------------------------------------------------------------- */

/* Routes `payload` as a new request of the fake client (freeing the last). */
/* Frees the last request, answered or not. The real router never drops an
 * unanswered request of a live client, so what it left in the client's
 * session (a write in flight, a held request) is undone here. */
static void drop_req(void)
{
    if (fx.req == NULL)
        return;
    if (fx.req->bound_write && fx.session.writes > 0)
        fx.session.writes--;
    if (!fx.many && fx.session.wshard != NULL) /* ... and its writes are in flight no more */
        memset(fx.session.wshard, 0, fx.r.shards * sizeof(*fx.session.wshard));
    /* as if answered: its parts' units leave their shards (the only
     * request out, but in the session cases, which answer theirs) */
    for (uint32_t i = 0; !fx.many && fx.r.links != NULL && i < fx.r.n_links; i++)
        fx.r.links[i].units = 0;
    fx.r.n_capped = fx.many ? fx.r.n_capped : 0;
    if (fx.req->at_worker > 0 && fx.session.at_workers >= fx.req->at_worker) {
        /* as if answered: its cost leaves the fair share */
        fx.session.at_workers -= fx.req->at_worker;
        if (fx.session.at_workers == 0 && fx.r.busy_sessions > 0)
            fx.r.busy_sessions--;
    }
    if (fx.req->held) {
        fx.held -= (ptrdiff_t)fx.req->held_payload.len;
        fx.reserved -= (ptrdiff_t)fx.req->held_reserve;
        router_route_forget(&fx.r, &fx.session);
    }
    router_req_free(fx.req);
    fx.req = NULL;
}

static void route_raw(const uint8_t *payload, size_t len)
{
    drop_req();
    clear_sent();
    uint8_t *copy = malloc(len ? len : 1); /* `payload` may be the old fx.payload */
    CHECK(copy != NULL);
    memcpy(copy, payload, len);
    free(fx.payload);
    fx.payload = copy;
    fx.payload_len = len;
    fx.req = router_req_new(&fx.r, CLIENT);
    CHECK(fx.req != NULL);
    fx.done_calls = fx.done_calls_in_route = 0;
    fx.routing = 1;
    router_route(&fx.r, fx.req, fx.payload, len);
    fx.routing = 0;
}

static void route(const Kvs__CommandRequest *q)
{
    size_t n = kvs__command_request__get_packed_size(q);
    uint8_t *p = malloc(n ? n : 1);
    CHECK(p != NULL);
    kvs__command_request__pack(q, p);
    route_raw(p, n);
    free(p);
}

/* Routes a request whose command is `c` with body `body`. */
static void route_cmd(Kvs__CommandRequest__CommandCase c, void *body)
{
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    q.command_case = c;
    q.hget = body; /* the oneof members share storage */
    q.value_lengths = fx.value_lengths;
    route(&q);
}

static ProtobufCBinaryData bin(const char *s)
{
    return (ProtobufCBinaryData){strlen(s), (uint8_t *)s};
}

static Kvs__Value vtext(const char *s, size_t n)
{
    Kvs__Value v = KVS__VALUE__INIT;
    v.kind_case = KVS__VALUE__KIND_STRING_VALUE;
    v.string_value = (ProtobufCBinaryData){n, (uint8_t *)s};
    return v;
}

static Kvs__Value vstr(const char *s)
{
    return vtext(s, strlen(s));
}

/* The text values of split/merge cases: `tag`, U+0000, then the key's
 * bytes, into buf (at least klen + 8 bytes). The NUL is valid text that
 * protobuf-c would cut if the router ever packed a Value as a C string. */
static size_t text_of(char *buf, const char *tag, const void *key, size_t klen)
{
    size_t n = strlen(tag);
    memcpy(buf, tag, n);
    buf[n++] = '\0';
    memcpy(buf + n, key, klen);
    return n + klen;
}

/* Routes a single-key command (Hget, Hset, Hdel, Hexist) on `key`. */
static void route_single(Kvs__CommandRequest__CommandCase c, const char *key)
{
    if (c == KVS__COMMAND_REQUEST__COMMAND_HSET) {
        Kvs__Value v = vstr("value");
        Kvs__Kvpair pair = KVS__KVPAIR__INIT;
        Kvs__Hset m = KVS__HSET__INIT;
        m.table = TABLE;
        m.pair = &pair;
        pair.key = bin(key);
        pair.value = &v;
        route_cmd(c, &m);
        return;
    }
    /* Hget, Hdel and Hexist have the same layout: one struct serves all
     * three, initialized by the right descriptor. */
    Kvs__Hget m;
    protobuf_c_message_init(c == KVS__COMMAND_REQUEST__COMMAND_HDEL     ? &kvs__hdel__descriptor
                            : c == KVS__COMMAND_REQUEST__COMMAND_HEXIST ? &kvs__hexist__descriptor
                                                                        : &kvs__hget__descriptor,
                            &m);
    m.table = TABLE;
    m.key = bin(key);
    route_cmd(c, &m);
}

/* Routes a multi-key command (Hmget, Hmset, Hmdel, Hmexist) on keys[0..n).
 * Hmset stores the text text_of("set", key) under each key. */
static void route_multi(Kvs__CommandRequest__CommandCase c, size_t n, const char *const *keys)
{
    ProtobufCBinaryData kb[16];
    Kvs__Kvpair pairs[16], *pp[16];
    Kvs__Value vals[16];
    char text[16][32];
    CHECK(n <= 16);
    for (size_t i = 0; i < n; i++) {
        kb[i] = bin(keys[i]);
        CHECK(kb[i].len + 8 <= sizeof(text[i]));
        vals[i] = vtext(text[i], text_of(text[i], "set", kb[i].data, kb[i].len));
        kvs__kvpair__init(&pairs[i]);
        pairs[i].key = kb[i];
        pairs[i].value = &vals[i];
        pp[i] = &pairs[i];
    }
    if (c == KVS__COMMAND_REQUEST__COMMAND_HMSET) {
        Kvs__Hmset m = KVS__HMSET__INIT;
        m.table = TABLE;
        m.n_pairs = n;
        m.pairs = pp;
        route_cmd(c, &m);
        return;
    }
    Kvs__Hmdel m; /* Hmget and Hmexist begin alike; Hmdel has answer_budget after */
    protobuf_c_message_init(c == KVS__COMMAND_REQUEST__COMMAND_HMDEL     ? &kvs__hmdel__descriptor
                            : c == KVS__COMMAND_REQUEST__COMMAND_HMEXIST ? &kvs__hmexist__descriptor
                                                                         : &kvs__hmget__descriptor,
                            &m);
    m.table = TABLE;
    m.n_keys = n;
    m.keys = kb;
    route_cmd(c, &m);
}

static void route_hscan(const void *cursor, size_t len, uint32_t count)
{
    Kvs__Hscan m = KVS__HSCAN__INIT;
    m.table = TABLE;
    m.cursor = (ProtobufCBinaryData){len, (uint8_t *)cursor};
    m.count = count;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_HSCAN, &m);
}

/* ---- what was sent ------------------------------------------------------------------------ */

/* Index of the one part sent to `shard`. */
static size_t sent_to(uint32_t shard)
{
    size_t found = MAX_SENT;
    for (size_t i = 0; i < fx.n_sent; i++) {
        if (fx.sent[i].shard == shard) {
            CHECK_EQ(found, MAX_SENT); /* one part per shard */
            found = i;
        }
    }
    CHECK(found != MAX_SENT);
    return found;
}

static int sent_is_client_payload(size_t i)
{
    const sent_t *s = &fx.sent[i];
    return s->len == fx.payload_len && memcmp(s->bytes, fx.payload, s->len) == 0;
}

static Kvs__CommandRequest *sent_request(size_t i)
{
    Kvs__CommandRequest *q =
        kvs__command_request__unpack(&fx.arena.pb, fx.sent[i].len, fx.sent[i].bytes);
    CHECK(q != NULL);
    CHECK_EQ(q->base.n_unknown_fields, 0);
    return q;
}

/* Key `i` of a decoded multi-key request, whatever its type. */
static ProtobufCBinaryData nth_key(const Kvs__CommandRequest *q, size_t i, size_t *n)
{
    switch (q->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HMSET:
        *n = q->hmset->n_pairs;
        return i < *n ? q->hmset->pairs[i]->key : (ProtobufCBinaryData){0, NULL};
    case KVS__COMMAND_REQUEST__COMMAND_HMGET:
    case KVS__COMMAND_REQUEST__COMMAND_HMDEL:
    case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
        *n = q->hmget->n_keys; /* same layout for all three */
        return i < *n ? q->hmget->keys[i] : (ProtobufCBinaryData){0, NULL};
    default:
        CHECK(0);
        return (ProtobufCBinaryData){0, NULL};
    }
}

static int bin_is(ProtobufCBinaryData b, const void *s, size_t len)
{
    return b.len == len && (len == 0 || memcmp(b.data, s, len) == 0);
}

/* ---- answers out ---------------------------------------------------------------------------- */

static void reply_bytes(size_t i, const uint8_t *p, size_t n)
{
    router_route_reply(fx.sent[i].ctx, fx.sent[i].part, p, n, NULL);
}

static void reply(size_t i, const Kvs__CommandResponse *resp)
{
    size_t n = kvs__command_response__get_packed_size(resp);
    uint8_t *p = malloc(n ? n : 1);
    CHECK(p != NULL);
    kvs__command_response__pack(resp, p);
    reply_bytes(i, p, n);
    free(p);
}

static void reply_failure(size_t i, const char *why)
{
    router_route_reply(fx.sent[i].ctx, fx.sent[i].part, NULL, 0, why);
}

static void reply_status(size_t i, uint32_t status, const char *msg)
{
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    r.status = status;
    r.message = (char *)msg;
    reply(i, &r);
}

/* Answers part `i` as a worker that cannot tell whether the write happened
 * (CommandResponse.outcome_unknown). */
static void reply_unknown(size_t i, uint32_t status, const char *msg)
{
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    r.status = status;
    r.message = (char *)msg;
    r.outcome_unknown = 1;
    reply(i, &r);
}

/* Answers part `i` with 200 and one string value text_of("v", key) per
 * key of that part's request. */
static void reply_values_from_keys(size_t i)
{
    Kvs__CommandRequest *q = sent_request(i);
    size_t n;
    nth_key(q, 0, &n);
    Kvs__Value vals[16], *vp[16];
    char text[16][32];
    CHECK(n <= 16);
    for (size_t k = 0; k < n; k++) {
        ProtobufCBinaryData key = nth_key(q, k, &n);
        CHECK(key.len + 8 <= sizeof(text[k]));
        vals[k] = vtext(text[k], text_of(text[k], "v", key.data, key.len));
        vp[k] = &vals[k];
    }
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    r.status = 200;
    r.n_values = n;
    r.values = vp;
    reply(i, &r);
}

/* A 200 response of pairs keys[k] = vals[k] (text values) and `cursor`,
 * built in the caller's pairs, pp and v (n of each). */
static Kvs__CommandResponse pairs_resp(size_t n, Kvs__Kvpair *pairs, Kvs__Kvpair **pp,
                                       Kvs__Value *v, const ProtobufCBinaryData *keys,
                                       const ProtobufCBinaryData *vals, ProtobufCBinaryData cursor)
{
    for (size_t k = 0; k < n; k++) {
        kvs__kvpair__init(&pairs[k]);
        pairs[k].key = keys[k];
        v[k] = vtext((const char *)vals[k].data, vals[k].len);
        pairs[k].value = &v[k];
        pp[k] = &pairs[k];
    }
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    r.status = 200;
    r.n_pairs = n;
    r.pairs = pp;
    r.cursor = cursor;
    return r;
}

/* Answers part `i` with 200 and pairs keys[0..n) (values text_of("v", key)). */
static void reply_pairs(size_t i, size_t n, const ProtobufCBinaryData *keys, const void *cursor,
                        size_t clen)
{
    Kvs__Kvpair pairs[16], *pp[16];
    Kvs__Value v[16];
    ProtobufCBinaryData vals[16];
    char text[16][600];
    CHECK(n <= 16);
    for (size_t k = 0; k < n; k++) {
        CHECK(keys[k].len + 8 <= sizeof(text[k]));
        vals[k] = (ProtobufCBinaryData){text_of(text[k], "v", keys[k].data, keys[k].len),
                                        (uint8_t *)text[k]};
    }
    Kvs__CommandResponse r =
        pairs_resp(n, pairs, pp, v, keys, vals, (ProtobufCBinaryData){clen, (uint8_t *)cursor});
    reply(i, &r);
}

/* ---- the client's answer ------------------------------------------------------------------------
 */

static void check_pending(void)
{
    CHECK(!fx.req->done);
    CHECK_EQ(fx.done_calls, 0);
}

static Kvs__CommandResponse *decode_resp(void)
{
    const kvs_buf_t *b = &fx.req->resp;
    int compressed = 1;
    CHECK(b->len >= KVS_FRAME_HEADER);
    uint32_t len = kvs_frame_get_header(b->data, &compressed);
    CHECK_EQ(compressed, 0);
    CHECK_EQ(b->len, KVS_FRAME_HEADER + len);
    Kvs__CommandResponse *r =
        kvs__command_response__unpack(&fx.arena.pb, len, b->data + KVS_FRAME_HEADER);
    CHECK(r != NULL);
    return r;
}

/* The request completed inside router_route: the client was not called. */
static Kvs__CommandResponse *answer_sync(void)
{
    CHECK(fx.req->done);
    CHECK_EQ(fx.done_calls, 0);
    return decode_resp();
}

/* The request completed later: the client was told exactly once. */
static Kvs__CommandResponse *answer_async(void)
{
    CHECK(fx.req->done);
    CHECK_EQ(fx.done_calls, 1);
    CHECK_EQ(fx.done_calls_in_route, 0);
    return decode_resp();
}

static void check_status(const Kvs__CommandResponse *r, uint32_t status)
{
    if (r->status != status)
        fprintf(stderr, "status %u: %s\n", r->status, r->message);
    CHECK_EQ(r->status, status);
}

static void check_text(const Kvs__Value *v, const void *s, size_t n)
{
    CHECK_EQ(v->kind_case, KVS__VALUE__KIND_STRING_VALUE);
    CHECK_EQ(v->string_value.len, n);
    CHECK(n == 0 || memcmp(v->string_value.data, s, n) == 0);
}

static void check_str(const Kvs__Value *v, const char *s)
{
    check_text(v, s, strlen(s));
}

/* `v` is text_of(tag, key). */
static void check_text_of(const Kvs__Value *v, const char *tag, const void *key, size_t klen)
{
    char want[600];
    CHECK(klen + 8 <= sizeof(want));
    check_text(v, want, text_of(want, tag, key, klen));
}

/* ---- single-key
 * ------------------------------------------------------------------------------------ */

/* The client's bytes go to the key's shard unchanged; the worker's bytes
 * come back unchanged (with a frame header). */
static void check_single_passthrough(Kvs__CommandRequest__CommandCase c, const char *key)
{
    route_single(c, key);
    check_pending();
    CHECK_EQ(fx.n_sent, 1);
    CHECK(fx.sent[0].raw);
    CHECK_EQ(fx.sent[0].shard, kvs_place_key_shard(key, strlen(key), PARTITIONS, SHARDS));
    CHECK_EQ(fx.sent[0].part, 0);
    CHECK(fx.sent[0].ctx == fx.req);
    CHECK(sent_is_client_payload(0));
    /* Fields in an unusual order: a re-encoding router would reorder them. */
    static const uint8_t answer[] = {0x12, 0x02, 'o', 'k', 0x08, 0xc8, 0x01, 0x1a, 0x00};
    reply_bytes(0, answer, sizeof(answer));
    CHECK(fx.req->done);
    CHECK_EQ(fx.done_calls, 1);
    CHECK_EQ(fx.req->resp.len, KVS_FRAME_HEADER + sizeof(answer));
    CHECK_EQ(kvs_frame_get_header(fx.req->resp.data, NULL), sizeof(answer));
    CHECK(memcmp(fx.req->resp.data + KVS_FRAME_HEADER, answer, sizeof(answer)) == 0);
}

KVS_TEST(single_key_forwarded_raw)
{
    setup();
    static const Kvs__CommandRequest__CommandCase cmds[] = {
        KVS__COMMAND_REQUEST__COMMAND_HGET, KVS__COMMAND_REQUEST__COMMAND_HSET,
        KVS__COMMAND_REQUEST__COMMAND_HDEL, KVS__COMMAND_REQUEST__COMMAND_HEXIST};
    for (size_t c = 0; c < 4; c++)
        for (uint32_t s = 0; s < SHARDS; s++)
            check_single_passthrough(cmds[c], fx.keys[s][c]);
}

/* ---- multi-key split and merge
 * ------------------------------------------------------------------------ */

/* Keys on shards 2, 0, 2, 3, 0, 2 (the first one twice). */
static void split_merge(Kvs__CommandRequest__CommandCase c)
{
    setup();
    const char *keys[] = {fx.keys[2][0], fx.keys[0][0], fx.keys[2][1],
                          fx.keys[3][0], fx.keys[0][1], fx.keys[2][0]};
    const size_t n = 6;
    route_multi(c, n, keys);
    check_pending();
    CHECK_EQ(fx.n_sent, 3);
    for (uint32_t s = 0; s < SHARDS; s++) {
        if (s == 1)
            continue; /* no key there: nothing sent (sent_to checks one each) */
        size_t i = sent_to(s);
        CHECK(!fx.sent[i].raw);
        CHECK(fx.sent[i].ctx == fx.req);
        Kvs__CommandRequest *q = sent_request(i);
        CHECK_EQ(q->command_case, c);
        CHECK_STR(kvs_msg_request_table(q), TABLE);
        size_t want = 0, got;
        for (size_t k = 0; k < n; k++) {
            if (kvs_place_key_shard(keys[k], strlen(keys[k]), PARTITIONS, SHARDS) != s)
                continue;
            CHECK(bin_is(nth_key(q, want, &got), keys[k], strlen(keys[k])));
            if (c == KVS__COMMAND_REQUEST__COMMAND_HMSET) /* the text, NUL and all */
                check_text_of(q->hmset->pairs[want]->value, "set", keys[k], strlen(keys[k]));
            want++;
        }
        CHECK_EQ(got, want);
    }
    int part_used[3] = {0}; /* parts are numbered 0..2, one per shard */
    for (size_t i = 0; i < fx.n_sent; i++) {
        CHECK(fx.sent[i].part < 3 && !part_used[fx.sent[i].part]);
        part_used[fx.sent[i].part] = 1;
    }
    reply_values_from_keys(sent_to(3)); /* out of order */
    check_pending();
    reply_values_from_keys(sent_to(0));
    check_pending();
    reply_values_from_keys(sent_to(2));
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 200);
    CHECK_EQ(r->n_values, n);
    for (size_t k = 0; k < n; k++)
        check_text_of(r->values[k], "v", keys[k], strlen(keys[k]));
}

/* The parts of a split read that answered wait for the others in the
 * router: they count as the client's output (paused at the high-water
 * mark, closed past the limit) until the merge ends. A stopped shard made
 * a client's pipelined Hmgets keep hundreds of megabytes uncounted. */
KVS_TEST(split_parts_waiting_count_as_held_output)
{
    setup();
    const char *keys[] = {fx.keys[0][0], fx.keys[2][0], fx.keys[3][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, 3, keys);
    CHECK_EQ(fx.held, 0);
    reply_values_from_keys(sent_to(2));
    ptrdiff_t one = fx.held;
    CHECK(one > 0);
    reply_values_from_keys(sent_to(0));
    CHECK(fx.held > one);
    reply_values_from_keys(sent_to(3)); /* the last: merged, nothing kept */
    CHECK_EQ(fx.held, 0);
    check_status(answer_async(), 200);
}

KVS_TEST(hmget_split_merge)
{
    split_merge(KVS__COMMAND_REQUEST__COMMAND_HMGET);
}

KVS_TEST(hmset_split_merge)
{
    split_merge(KVS__COMMAND_REQUEST__COMMAND_HMSET);
}

KVS_TEST(hmdel_split_merge)
{
    split_merge(KVS__COMMAND_REQUEST__COMMAND_HMDEL);
}

KVS_TEST(hmexist_split_merge)
{
    split_merge(KVS__COMMAND_REQUEST__COMMAND_HMEXIST);
}

KVS_TEST(multi_key_on_one_shard_forwarded_raw)
{
    setup();
    static const Kvs__CommandRequest__CommandCase cmds[] = {
        KVS__COMMAND_REQUEST__COMMAND_HMGET, KVS__COMMAND_REQUEST__COMMAND_HMSET,
        KVS__COMMAND_REQUEST__COMMAND_HMDEL, KVS__COMMAND_REQUEST__COMMAND_HMEXIST};
    static const uint8_t answer[] = {0x08, 0xc8, 0x01, 0x1a, 0x02, 0x28, 0x01, 0x1a, 0x00};
    for (size_t c = 0; c < 4; c++) {
        const char *keys[] = {fx.keys[1][2], fx.keys[1][0], fx.keys[1][1]};
        route_multi(cmds[c], 3, keys);
        check_pending();
        CHECK_EQ(fx.n_sent, 1);
        CHECK_EQ(fx.sent[0].shard, 1);
        CHECK(fx.sent[0].raw);
        CHECK(sent_is_client_payload(0));
        reply_bytes(0, answer, sizeof(answer));
        CHECK(fx.req->done);
        CHECK_EQ(fx.done_calls, 1);
        CHECK_EQ(fx.req->resp.len, KVS_FRAME_HEADER + sizeof(answer));
        CHECK(memcmp(fx.req->resp.data + KVS_FRAME_HEADER, answer, sizeof(answer)) == 0);
    }
}

/* A read's part that answers an error: that status, that message. */
KVS_TEST(part_error_status_reaches_client)
{
    setup();
    const char *keys[] = {fx.keys[0][0], fx.keys[1][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, 2, keys);
    reply_values_from_keys(sent_to(0));
    reply_status(sent_to(1), 507, "storage is full; free disk space");
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 507);
    CHECK_STR(r->message, "storage is full; free disk space");
    CHECK_EQ(r->n_values, 0);
}

/* ---- split writes: answer budgets and what was applied where
 * -------------------------------------------------------------------------- */

/* Routes an Hmset of keys[i] => a binary value of sizes[i] bytes, with the
 * client's answer_budget `budget` (0: none). */
static void route_hmset_sized(size_t n, const char *const *keys, const size_t *sizes,
                              uint32_t budget)
{
    static uint8_t bytes[8192];
    Kvs__Kvpair pairs[16], *pp[16];
    Kvs__Value vals[16];
    CHECK(n <= 16);
    for (size_t i = 0; i < n; i++) {
        CHECK(sizes[i] <= sizeof(bytes));
        kvs__value__init(&vals[i]);
        vals[i].kind_case = KVS__VALUE__KIND_BINARY_VALUE;
        vals[i].binary_value = (ProtobufCBinaryData){sizes[i], bytes};
        kvs__kvpair__init(&pairs[i]);
        pairs[i].key = bin(keys[i]);
        pairs[i].value = &vals[i];
        pp[i] = &pairs[i];
    }
    Kvs__Hmset m = KVS__HMSET__INIT;
    m.table = TABLE;
    m.n_pairs = n;
    m.pairs = pp;
    m.answer_budget = budget;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_HMSET, &m);
}

static void route_hmdel_budget(size_t n, const char *const *keys, uint32_t budget)
{
    ProtobufCBinaryData kb[16];
    CHECK(n <= 16);
    for (size_t i = 0; i < n; i++)
        kb[i] = bin(keys[i]);
    Kvs__Hmdel m = KVS__HMDEL__INIT;
    m.table = TABLE;
    m.n_keys = n;
    m.keys = kb;
    m.answer_budget = budget;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_HMDEL, &m);
}

/* The answer_budget of the part sent to `shard`. */
static uint32_t budget_of(uint32_t shard)
{
    Kvs__CommandRequest *q = sent_request(sent_to(shard));
    return q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMSET ? q->hmset->answer_budget
                                                                  : q->hmdel->answer_budget;
}

/* The encoded size of a binary Value of n bytes (n < 16384). */
static uint64_t bin_value_size(size_t n)
{
    return 1 + (n < 128 ? 1 : 2) + n;
}

/* Each part of a split Hmset gets its own answer bound (new values and
 * framing) plus a share of the rest of max_frame in proportion to its new
 * value bytes; the budgets add up to max_frame exactly, so answers within
 * them always fit one merged answer. */
KVS_TEST(split_hmset_budgets_fill_max_frame_by_value_bytes)
{
    setup_frame("64KiB");
    const uint64_t total = 65536;
    const char *keys[] = {fx.keys[0][0], fx.keys[1][0], fx.keys[0][1], fx.keys[3][0]};
    const size_t sizes[] = {1000, 3000, 1000, 10};
    route_hmset_sized(4, keys, sizes, 0);
    check_pending();
    CHECK_EQ(fx.n_sent, 3);
    uint64_t w0 = 2 * bin_value_size(1000), w1 = bin_value_size(3000), w3 = bin_value_size(10);
    uint64_t k0 = kvs_msg_answer_bound(2, w0), k1 = kvs_msg_answer_bound(1, w1),
             k3 = kvs_msg_answer_bound(1, w3);
    uint64_t rest = total - k0 - k1 - k3, w = w0 + w1 + w3;
    uint64_t b0 = budget_of(0), b1 = budget_of(1), b3 = budget_of(3);
    CHECK_EQ(b0 + b1 + b3, total);
    /* Floors, the last part (shard 3's, in key order) taking what is left. */
    CHECK_EQ(b0, k0 + rest * w0 / w);
    CHECK_EQ(b1, k1 + rest * w1 / w);
    CHECK(b3 >= k3 + rest * w3 / w && b3 <= k3 + rest * w3 / w + 2);
    CHECK(b1 > b0 && b0 > b3);

    /* A client's own answer_budget, below max_frame, is what is split. */
    const size_t small[] = {10, 10, 10, 10};
    route_hmset_sized(4, keys, small, 5000);
    CHECK_EQ(fx.n_sent, 3);
    CHECK_EQ((uint64_t)budget_of(0) + budget_of(1) + budget_of(3), 5000);
    /* ... and one above max_frame is max_frame. */
    route_hmset_sized(4, keys, small, 1u << 30);
    CHECK_EQ((uint64_t)budget_of(0) + budget_of(1) + budget_of(3), total);

    /* All keys on one shard: forwarded as the client sent it (its budget
     * as it gave it: the worker applies it). */
    const char *one[] = {fx.keys[2][0], fx.keys[2][1]};
    route_hmset_sized(2, one, small, 777);
    CHECK_EQ(fx.n_sent, 1);
    CHECK(sent_is_client_payload(0));
    CHECK_EQ(budget_of(2), 777);
}

/* Hmdel knows nothing of the previous values: the rest is shared by keys. */
KVS_TEST(split_hmdel_budgets_fill_max_frame_by_keys)
{
    setup_frame("64KiB");
    const uint64_t total = 65536;
    const char *keys[] = {fx.keys[0][0], fx.keys[2][0], fx.keys[0][1], fx.keys[0][2]};
    route_hmdel_budget(4, keys, 0);
    CHECK_EQ(fx.n_sent, 2);
    uint64_t k0 = kvs_msg_answer_bound(3, 0), k2 = kvs_msg_answer_bound(1, 0);
    uint64_t rest = total - k0 - k2;
    CHECK_EQ((uint64_t)budget_of(0), k0 + rest * 3 / 4);
    CHECK_EQ((uint64_t)budget_of(0) + budget_of(2), total);
    for (size_t i = 0; i < fx.n_sent; i++) { /* the keys went as ever */
        Kvs__CommandRequest *q = sent_request(i);
        CHECK_EQ(q->command_case, KVS__COMMAND_REQUEST__COMMAND_HMDEL);
        CHECK_EQ(q->hmdel->n_keys, fx.sent[i].shard == 0 ? 3 : 1);
    }
}

/* With value_lengths (the Redis door's writes) a previous value is
 * answered as a length: each part gets its whole bound (lengths for its
 * keys, at most KVS_READS_LENGTH_MAX bytes each), so no worker refuses its
 * part for previous values; what is left is shared as without it. New
 * values too large for the frame together are no reason to refuse: the
 * answer holds their lengths only. The parts ask for lengths too. */
KVS_TEST(split_write_asking_for_lengths_gives_each_part_its_whole_bound)
{
    setup_frame("4KiB");
    const uint64_t total = 4096;
    const char *keys[] = {fx.keys[0][0], fx.keys[1][0], fx.keys[0][1], fx.keys[3][0]};
    const size_t sizes[] = {1500, 1500, 1500, 10}; /* 4,500 bytes of new values */
    fx.value_lengths = 1;
    route_hmset_sized(4, keys, sizes, 0);
    check_pending();
    CHECK_EQ(fx.n_sent, 3);
    uint64_t w0 = kvs_msg_answer_bound(2, 2 * KVS_READS_LENGTH_MAX),
             w1 = kvs_msg_answer_bound(1, KVS_READS_LENGTH_MAX),
             w3 = kvs_msg_answer_bound(1, KVS_READS_LENGTH_MAX);
    CHECK(budget_of(0) >= w0 && budget_of(1) >= w1 && budget_of(3) >= w3);
    CHECK_EQ((uint64_t)budget_of(0) + budget_of(1) + budget_of(3), total);
    for (size_t i = 0; i < fx.n_sent; i++)
        CHECK(sent_request(i)->value_lengths);
    const char *dkeys[] = {fx.keys[0][0], fx.keys[2][0]};
    route_hmdel_budget(2, dkeys, 0);
    CHECK_EQ(fx.n_sent, 2);
    CHECK(budget_of(0) >= kvs_msg_answer_bound(1, KVS_READS_LENGTH_MAX));
    CHECK(budget_of(2) >= kvs_msg_answer_bound(1, KVS_READS_LENGTH_MAX));
    CHECK(sent_request(0)->value_lengths && sent_request(1)->value_lengths);
    /* A budget that cannot hold every length: the parts share it as
     * without value_lengths (each may refuse its part if its previous
     * values do not fit). */
    const size_t small[] = {1, 1, 1, 1};
    route_hmset_sized(4, keys, small, 250);
    CHECK_EQ(fx.n_sent, 3);
    CHECK_EQ((uint64_t)budget_of(0) + budget_of(1) + budget_of(3), 250);
    CHECK(budget_of(0) < w0);
    /* Without value_lengths, as before: the new values fill the frame. */
    fx.value_lengths = 0;
    route_hmset_sized(4, keys, sizes, 0);
    Kvs__CommandResponse *r = answer_sync();
    check_status(r, 413);
    CHECK_EQ(fx.n_sent, 0);
}

/* What no shard could accept is refused before anything is sent: 413
 * then means nothing was written anywhere. */
KVS_TEST(split_write_refused_before_sending)
{
    setup_frame("4KiB");
    const char *keys[] = {fx.keys[0][0], fx.keys[1][0]};
    /* The new values alone (the worker's bound counts them) pass the frame. */
    const size_t two[] = {2000, 2100};
    route_hmset_sized(2, keys, two, 0);
    Kvs__CommandResponse *r = answer_sync();
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "nothing was written");
    CHECK_CONTAINS(r->message, "limits.max_frame");
    CHECK_EQ(fx.n_sent, 0);
    /* A pair that could never be read back, as a worker would find. */
    const size_t one_big[] = {10, 3600};
    route_hmset_sized(2, keys, one_big, 0);
    r = answer_sync();
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "Hmset.pairs[1]");
    CHECK_CONTAINS(r->message, "nothing was written");
    CHECK_EQ(fx.n_sent, 0);
    /* An Hmdel whose client budget cannot even hold the framing. */
    route_hmdel_budget(2, keys, 100);
    r = answer_sync();
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "answer_budget");
    CHECK_EQ(fx.n_sent, 0);
}

/* Every shard refused its part (each over its budget): nothing was
 * written, and the client gets 413 saying so. */
KVS_TEST(split_write_refused_everywhere_is_413)
{
    setup();
    const char *keys[] = {fx.keys[0][0], fx.keys[1][0], fx.keys[3][0]};
    static const Kvs__CommandRequest__CommandCase cmds[] = {KVS__COMMAND_REQUEST__COMMAND_HMSET,
                                                            KVS__COMMAND_REQUEST__COMMAND_HMDEL};
    for (int c = 0; c < 2; c++) {
        route_multi(cmds[c], 3, keys);
        reply_status(sent_to(3), 413, "answer over its answer_budget; nothing was written");
        reply_status(sent_to(0), 413, "answer over its answer_budget; nothing was written");
        check_pending();
        reply_status(sent_to(1), 413, "answer over its answer_budget; nothing was written");
        Kvs__CommandResponse *r = answer_async();
        check_status(r, 413);
        CHECK_CONTAINS(r->message, "answer over its answer_budget");
        CHECK_CONTAINS(r->message, "every one of the 3 shards");
        CHECK_EQ(r->n_values, 0);
    }
}

/* Some shards applied their keys, another refused its part: not 413 (that
 * would deny the writes that happened) but 207, saying exactly which keys
 * were written: previous values for them, the others listed in pairs. */
KVS_TEST(split_write_partly_applied_is_207)
{
    setup();
    const char *keys[] = {fx.keys[0][0], fx.keys[1][0], fx.keys[2][0], fx.keys[0][1],
                          fx.keys[1][1]};
    static const Kvs__CommandRequest__CommandCase cmds[] = {KVS__COMMAND_REQUEST__COMMAND_HMSET,
                                                            KVS__COMMAND_REQUEST__COMMAND_HMDEL};
    for (int c = 0; c < 2; c++) {
        route_multi(cmds[c], 5, keys);
        reply_values_from_keys(sent_to(0));
        reply_status(sent_to(1), 413, "answer over its answer_budget; send fewer keys");
        reply_values_from_keys(sent_to(2));
        Kvs__CommandResponse *r = answer_async();
        check_status(r, 207);
        CHECK_CONTAINS(r->message, kvs_msg_command_name(cmds[c]));
        CHECK_CONTAINS(r->message, "partly applied");
        CHECK_CONTAINS(r->message, "the keys on shards 0, 2 were written");
        CHECK_CONTAINS(r->message, "the 2 keys on shard 1 were not");
        CHECK_CONTAINS(r->message, "answer over its answer_budget; send fewer keys");
        CHECK_EQ(r->n_values, 5);
        for (size_t k = 0; k < 5; k++) {
            if (k == 1 || k == 4)
                CHECK_EQ(r->values[k]->kind_case, KVS__VALUE__KIND__NOT_SET);
            else
                check_text_of(r->values[k], "v", keys[k], strlen(keys[k]));
        }
        CHECK_EQ(r->n_pairs, 2);
        CHECK(bin_is(r->pairs[0]->key, keys[1], strlen(keys[1])));
        CHECK(bin_is(r->pairs[1]->key, keys[4], strlen(keys[4])));
        CHECK(r->pairs[0]->value == NULL && r->pairs[1]->value == NULL);
    }
    /* A storage error is a refusal too (the shard wrote nothing). */
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 2, keys);
    reply_values_from_keys(sent_to(0));
    reply_status(sent_to(1), 507, "storage is full; free disk space");
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 207);
    CHECK_CONTAINS(r->message, "storage is full");
}

/* A part answered with an error that says its keys may have been written
 * (a worker whose records Kafka did not acknowledge in time, or took in
 * part; one whose records Kafka acknowledged but it did not apply in time,
 * which gives their position) did not write nothing: the answer is not a
 * 207 listing its keys as not written, nor "nothing was written", but 503
 * saying it may or may not have. */
KVS_TEST(split_write_part_that_may_have_written_is_not_said_unwritten)
{
    setup();
    const char *keys[] = {fx.keys[0][0], fx.keys[1][0]};
    static const char *const maybe[] = {
        "Hmset: no acknowledgement from Kafka within 4000 ms (topic t): the write may or may "
        "not have happened; read the keys to find out",
        "Hmset: Kafka did not take the record of a key on topic t partition 1 (Broker: "
        "Invalid record): that key was not written; other keys of this request may have been "
        "written, read them to find out"};
    for (int i = 0; i < 2; i++) {
        route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 2, keys);
        reply_values_from_keys(sent_to(0));
        reply_unknown(sent_to(1), 503, maybe[i]);
        Kvs__CommandResponse *r = answer_async();
        check_status(r, 503);
        CHECK(r->outcome_unknown);
        CHECK_CONTAINS(r->message, "shard 0 applied their keys");
        CHECK_CONTAINS(r->message, "shard 1 may or may not have written");
        CHECK_EQ(r->n_pairs, 0);
        /* Every part so: not "nothing was written". */
        route_multi(KVS__COMMAND_REQUEST__COMMAND_HMDEL, 2, keys);
        reply_unknown(sent_to(0), 503, maybe[i]);
        reply_unknown(sent_to(1), 503, maybe[i]);
        r = answer_async();
        check_status(r, 503);
        CHECK(r->outcome_unknown);
        CHECK(strstr(r->message, "nothing was written") == NULL);
        CHECK_CONTAINS(r->message, "shards 0, 1 may or may not have written");
    }
    /* The field decides, not the words: the same text without it is a
     * refusal (207), and any text with it is not. */
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 2, keys);
    reply_values_from_keys(sent_to(0));
    reply_status(sent_to(1), 503, maybe[0]);
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 207);
    CHECK(!r->outcome_unknown);
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 2, keys);
    reply_values_from_keys(sent_to(0));
    reply_unknown(sent_to(1), 503, "busy");
    r = answer_async();
    check_status(r, 503);
    CHECK(r->outcome_unknown);
    CHECK_CONTAINS(r->message, "shard 1 may or may not have written");
    /* Acknowledged, not applied in time: the answer's position says so. */
    uint8_t tok[KVS_POS_ONE_MAX];
    Kvs__CommandResponse late = KVS__COMMAND_RESPONSE__INIT;
    late.status = 503;
    late.message = "Hmset: Kafka acknowledged the write (see its position), but this worker did "
                   "not apply it within 4000 ms; it will be applied";
    late.position = (ProtobufCBinaryData){kvs_pos_encode_one(tok, "t", 1, 1, 7), tok};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 2, keys);
    reply_values_from_keys(sent_to(0));
    reply(sent_to(1), &late);
    r = answer_async();
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shard 0 applied their keys, shard 1 wrote their keys to Kafka, "
                               "which acknowledged them (they will be applied)");
    CHECK(!r->outcome_unknown); /* every key written: the position says where */
    CHECK(r->position.len > 0);
    CHECK_EQ(r->n_pairs, 0);
    /* ... and with another shard that wrote nothing, written in part. */
    const char *three[] = {fx.keys[0][0], fx.keys[1][0], fx.keys[2][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 3, three);
    reply_values_from_keys(sent_to(0));
    reply(sent_to(1), &late);
    reply_status(sent_to(2), 507, "storage is full; nothing from this request was stored");
    r = answer_async();
    check_status(r, 503);
    CHECK(r->outcome_unknown);
    CHECK_CONTAINS(r->message, "shard 1 wrote their keys to Kafka");
    CHECK_CONTAINS(r->message, "shard 2 wrote nothing");
    /* A refusal that says nothing of the kind is still one (207). */
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 2, keys);
    reply_values_from_keys(sent_to(0));
    reply_status(sent_to(1), 503, "the worker is shutting down; nothing was written, retry");
    r = answer_async();
    check_status(r, 207);
    CHECK_CONTAINS(r->message, "the 1 key on shard 1 was not");
}

/* A 207 that does not fit max_frame leaves out the previous values first
 * (the keys not written are what a client must act on), and says so. */
KVS_TEST(partial_answer_leaves_out_what_does_not_fit)
{
    setup_frame("1KiB");
    const char *keys[] = {fx.keys[0][0], fx.keys[1][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMDEL, 2, keys);
    char big[901];
    memset(big, 'p', 900);
    big[900] = '\0';
    Kvs__Value v = vstr(big), *vp[1] = {&v};
    Kvs__CommandResponse part = KVS__COMMAND_RESPONSE__INIT;
    part.status = 200;
    part.n_values = 1;
    part.values = vp;
    reply(sent_to(0), &part);
    reply_status(sent_to(1), 507, "storage is full; free disk space");
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 207);
    CHECK(fx.req->resp.len <= KVS_FRAME_HEADER + 1024);
    CHECK_CONTAINS(r->message, "previous values left out");
    CHECK_EQ(r->n_values, 0);
    CHECK_EQ(r->n_pairs, 1);
    CHECK(bin_is(r->pairs[0]->key, keys[1], strlen(keys[1])));

    /* A refusal whose message alone nearly fills the frame: the answer's
     * message is cut to fit, at a whole character (valid UTF-8). */
    char why[1001];
    for (size_t i = 0; i + 2 < sizeof(why); i += 2)
        memcpy(why + i, "\xc3\xa9", 2); /* U+00E9, two bytes */
    why[sizeof(why) - 1] = '\0';
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMDEL, 2, keys);
    reply_values_from_keys(sent_to(0));
    reply_status(sent_to(1), 507, why);
    r = answer_async();
    check_status(r, 207);
    CHECK(fx.req->resp.len <= KVS_FRAME_HEADER + 1024);
    CHECK(kvs_utf8_valid(r->message, strlen(r->message)));
    CHECK_CONTAINS(r->message, "\xc3\xa9\xc3\xa9");
}

/* The 503 of a split write with a part unknown fits max_frame however
 * long the failure's text: its message is cut, the field and the
 * position stay. */
KVS_TEST(unknown_split_write_answer_fits_max_frame)
{
    setup_frame("1KiB");
    const char *keys[] = {fx.keys[0][0], fx.keys[1][0]};
    char why[901];
    memset(why, 'w', 900);
    why[900] = '\0';
    uint8_t tok[KVS_POS_ONE_MAX];
    Kvs__CommandResponse part = KVS__COMMAND_RESPONSE__INIT;
    part.status = 503;
    part.message = why;
    part.outcome_unknown = 1;
    part.position = (ProtobufCBinaryData){kvs_pos_encode_one(tok, "t", 1, 1, 7), tok};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 2, keys);
    reply_values_from_keys(sent_to(0));
    reply(sent_to(1), &part);
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 503);
    CHECK(fx.req->resp.len <= KVS_FRAME_HEADER + 1024);
    CHECK(r->outcome_unknown);
    CHECK(r->position.len > 0);
    CHECK_CONTAINS(r->message, "wwww");
}

/* A part with no answer may or may not have been applied: the client is
 * told what is known of every shard. */
KVS_TEST(split_write_with_unknown_part_says_what_is_known)
{
    setup();
    const char *keys[] = {fx.keys[0][0], fx.keys[1][0], fx.keys[3][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 3, keys);
    reply_values_from_keys(sent_to(0));
    reply_status(sent_to(1), 507, "storage is full; free disk space");
    reply_failure(sent_to(3), "shard 3 is unavailable: worker closed the connection");
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shard 3 is unavailable: worker closed the connection");
    CHECK_CONTAINS(r->message, "shard 0 applied their keys");
    CHECK_CONTAINS(r->message, "shard 1 wrote nothing");
    CHECK_CONTAINS(r->message, "shard 3 may or may not have written");
    CHECK(r->outcome_unknown);
}

/* A part no link took (its shard down) was never sent: the client is told
 * that shard wrote nothing, not that it may have. With other shards
 * applied, that is a 207 listing the keys not written: a 503 without
 * outcome_unknown (and, on an unbound table, without a position) would
 * say that nothing was written (kvs.proto, CommandResponse.status). */
KVS_TEST(split_write_with_a_down_shard_says_it_wrote_nothing)
{
    setup();
    set_down(3);
    const char *keys[] = {fx.keys[0][0], fx.keys[1][0], fx.keys[3][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 3, keys);
    CHECK_EQ(fx.n_sent, 2);
    reply_values_from_keys(sent_to(0));
    reply_values_from_keys(sent_to(1));
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 207);
    CHECK_CONTAINS(r->message, "the keys on shards 0, 1 were written");
    CHECK_CONTAINS(r->message, "the 1 key on shard 3 was not");
    CHECK_CONTAINS(r->message, "shard 3 is unavailable: connect: connection refused");
    CHECK(strstr(r->message, "may or may not") == NULL);
    CHECK(!r->outcome_unknown); /* what happened is known */
    CHECK_EQ(r->n_values, 3);
    check_text_of(r->values[0], "v", keys[0], strlen(keys[0]));
    check_text_of(r->values[1], "v", keys[1], strlen(keys[1]));
    CHECK_EQ(r->values[2]->kind_case, KVS__VALUE__KIND__NOT_SET);
    CHECK_EQ(r->n_pairs, 1);
    CHECK(bin_is(r->pairs[0]->key, keys[2], strlen(keys[2])));
    /* A refusal and a part not sent, nothing applied: nothing was written. */
    const char *two[] = {fx.keys[0][0], fx.keys[3][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 2, two);
    reply_status(sent_to(0), 507, "storage is full; free disk space");
    r = answer_async();
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shards 0, 3 wrote nothing)");
    CHECK(!r->outcome_unknown);
    CHECK_EQ(r->n_pairs, 0);

    /* With a part lost after it was sent as well: each is named for what
     * is known of it. */
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMDEL, 3, keys);
    reply_values_from_keys(sent_to(0));
    reply_failure(sent_to(1), "shard 1 is unavailable: worker closed the connection");
    r = answer_async();
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shard 1 is unavailable: worker closed the connection");
    CHECK_CONTAINS(r->message, "shard 0 applied their keys, shard 3 wrote nothing, "
                               "shard 1 may or may not have written)");
    CHECK(r->outcome_unknown);

    for (uint32_t s = 0; s < SHARDS; s++) /* nothing sent anywhere */
        set_down(s);
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 3, keys);
    r = answer_sync();
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shards 0, 1, 3 wrote nothing)");
    CHECK(!r->outcome_unknown);
}

/* A write no link took because its frame would pass max_frame (what the
 * router adds to a request it forwards may take it past) was never sent:
 * 413 like a read so refused, not 500, which may mean it was applied. */
KVS_TEST(write_too_large_to_send_is_413)
{
    static char big[2048];
    setup_frame("1KiB");
    memset(big, 'x', sizeof(big) - 1);
    Kvs__Value v = vstr(big);
    Kvs__Kvpair pair = KVS__KVPAIR__INIT;
    Kvs__Hset m = KVS__HSET__INIT;
    m.table = TABLE;
    m.pair = &pair;
    pair.key = bin(fx.keys[2][0]);
    pair.value = &v;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_HSET, &m);
    Kvs__CommandResponse *r = answer_sync();
    check_status(r, 413);
    CHECK_EQ(fx.n_sent, 0);
    CHECK_CONTAINS(r->message, "nothing was sent");
    CHECK(!r->outcome_unknown);
    CHECK(strstr(r->message, "may have been applied") == NULL);
}

/* An answer the link dropped for its size (a node with a larger
 * max_frame): that request fails, 413 for a read (nothing changed), 500
 * for a write (it may have been applied: 413 would deny it). */
KVS_TEST(oversized_part_answer_fails_that_request_only)
{
    setup();
    const char *why = "shard 2 answered with 70000 bytes, more than limits.max_frame";
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[2][0]);
    router_route_reply(fx.sent[0].ctx, fx.sent[0].part, NULL, 70000, why);
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 413);
    CHECK_CONTAINS(r->message, why);

    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[2][0]);
    router_route_reply(fx.sent[0].ctx, fx.sent[0].part, NULL, 70000, why);
    r = answer_async();
    check_status(r, 500);
    CHECK_CONTAINS(r->message, why);
    CHECK_CONTAINS(r->message, "may have been applied");
    CHECK(r->outcome_unknown);

    const char *keys[] = {fx.keys[0][0], fx.keys[2][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, 2, keys);
    reply_values_from_keys(sent_to(0));
    router_route_reply(fx.sent[sent_to(2)].ctx, fx.sent[sent_to(2)].part, NULL, 70000, why);
    r = answer_async();
    check_status(r, 413);

    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 2, keys);
    reply_values_from_keys(sent_to(0));
    router_route_reply(fx.sent[sent_to(2)].ctx, fx.sent[sent_to(2)].part, NULL, 70000, why);
    r = answer_async();
    check_status(r, 500);
    CHECK_CONTAINS(r->message, "shard 0 applied their keys");
    CHECK_CONTAINS(r->message, "shard 2 may or may not have written");
    CHECK(r->outcome_unknown);
}

/* A part whose answer does not match its request is the shard's fault: 500. */
KVS_TEST(malformed_part_answer_is_500)
{
    setup();
    const char *keys[] = {fx.keys[0][0], fx.keys[0][1], fx.keys[3][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, 3, keys);
    reply_values_from_keys(sent_to(3));
    Kvs__CommandResponse one = KVS__COMMAND_RESPONSE__INIT; /* 200, but no values */
    one.status = 200;
    reply(sent_to(0), &one);
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 500);
    CHECK_CONTAINS(r->message, "shard 0");

    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, 3, keys);
    static const uint8_t junk[] = {0xff, 0xff, 0xff};
    reply_bytes(sent_to(3), junk, sizeof(junk));
    reply_values_from_keys(sent_to(0));
    r = answer_async();
    check_status(r, 500);
    CHECK_CONTAINS(r->message, "shard 3");

    /* A split write's part whose answer has a status and then does not
     * decode: it may have written (500, outcome unknown), and its bytes
     * are never quoted as text. */
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 3, keys);
    static const uint8_t half[] = {0x08, 0xc8, 0x01, 0x12, 0x7f, 'x'}; /* 200, then a cut field */
    reply_bytes(sent_to(3), half, sizeof(half));
    reply_values_from_keys(sent_to(0));
    r = answer_async();
    CHECK(r->outcome_unknown);
    CHECK_CONTAINS(r->message, "shard 3 sent an answer that is not a CommandResponse");
    CHECK(kvs_utf8_valid(r->message, strlen(r->message)));
}

/* ---- unavailable shards
 * -------------------------------------------------------------------------------- */

KVS_TEST(down_shard_is_503_at_once)
{
    setup();
    set_down(2);
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[2][0]);
    Kvs__CommandResponse *r = answer_sync();
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shard 2");
    CHECK_CONTAINS(r->message, "connection refused");
    CHECK_EQ(fx.n_sent, 0);
    /* A write never sent certainly did not happen. */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[2][0]);
    r = answer_sync();
    check_status(r, 503);
    CHECK(!r->outcome_unknown);
    CHECK(strstr(r->message, "may have been applied") == NULL);

    const char *keys[] = {fx.keys[2][0], fx.keys[2][1]}; /* one part, down */
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 2, keys);
    check_status(answer_sync(), 503);

    for (uint32_t s = 0; s < SHARDS; s++)
        set_down(s);
    const char *split[] = {fx.keys[0][0], fx.keys[1][0], fx.keys[3][0]}; /* every part, down */
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, 3, split);
    check_status(answer_sync(), 503);
    Kvs__Hgetall all = KVS__HGETALL__INIT;
    all.table = TABLE;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_HGETALL, &all);
    r = answer_sync();
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shard 0");
    route_hscan(NULL, 0, 0);
    check_status(answer_sync(), 503);
}

/* With other parts in flight the router waits for them (their links still
 * hold the request), then answers 503 naming the shard that was down. */
KVS_TEST(down_shard_among_parts_is_503)
{
    setup();
    set_down(1);
    const char *keys[] = {fx.keys[0][0], fx.keys[1][0], fx.keys[3][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, 3, keys);
    CHECK_EQ(fx.n_sent, 2);
    check_pending();
    reply_values_from_keys(sent_to(3));
    reply_values_from_keys(sent_to(0));
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shard 1");

    set_down(2);
    Kvs__Hgetall all = KVS__HGETALL__INIT;
    all.table = TABLE;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_HGETALL, &all);
    CHECK_EQ(fx.n_sent, 2);
    reply_pairs(sent_to(0), 0, NULL, NULL, 0);
    reply_pairs(sent_to(3), 0, NULL, NULL, 0);
    r = answer_async();
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shard 1");
}

/* A link that fails a pending part later (timeout, broken connection). */
KVS_TEST(link_failure_after_send_is_503)
{
    setup();
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[3][0]);
    reply_failure(0, "shard 3 is unavailable: worker closed the connection");
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 503);
    /* Said in words too: a Redis client sees nothing else. */
    CHECK_STR(r->message, "shard 3 is unavailable: worker closed the connection; the write may "
                          "or may not have been applied");
    CHECK(r->outcome_unknown); /* it was sent: it may have been applied */
    /* A link that timed out says so already (router_link): not twice. */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[3][0]);
    reply_failure(0, "shard 3 is unavailable: no answer within router.timeout (5000 ms); the "
                     "request may or may not have been applied");
    r = answer_async();
    CHECK_STR(r->message, "shard 3 is unavailable: no answer within router.timeout (5000 ms); the "
                          "request may or may not have been applied");
    CHECK(r->outcome_unknown);
    /* A read that fails so says nothing of the kind. */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[3][0]);
    reply_failure(0, "shard 3 did not answer within router.timeout (5000 ms)");
    r = answer_async();
    check_status(r, 503);
    CHECK(!r->outcome_unknown);

    const char *keys[] = {fx.keys[0][0], fx.keys[3][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMDEL, 2, keys);
    reply_failure(sent_to(3), "shard 3: connection reset");
    check_pending();
    reply_values_from_keys(sent_to(0));
    r = answer_async();
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shard 3: connection reset");
    CHECK_CONTAINS(r->message, "Hmdel spans 2 shards and is not atomic");
    CHECK(r->outcome_unknown);
}

/* ---- fan-out
 * ------------------------------------------------------------------------------------------------
 */

static void route_hgetall(void)
{
    Kvs__Hgetall all = KVS__HGETALL__INIT;
    all.table = TABLE;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_HGETALL, &all);
}

/* Every shard gets the client's bytes, once, as part == shard. */
static void check_fanout_sent(void)
{
    check_pending();
    CHECK_EQ(fx.n_sent, SHARDS);
    for (uint32_t s = 0; s < SHARDS; s++) {
        size_t i = sent_to(s);
        CHECK(fx.sent[i].raw);
        CHECK_EQ(fx.sent[i].part, s);
        CHECK(sent_is_client_payload(i));
    }
}

KVS_TEST(hgetall_merges_in_byte_order)
{
    setup();
    route_hgetall();
    check_fanout_sent();
    /* "a" (shard 3) is a prefix of "a\0" (shard 0): the shorter sorts first
     * even when it comes from a later part. */
    const ProtobufCBinaryData s0[] = {
        {1, (uint8_t *)"\x00"}, {2, (uint8_t *)"a\x00"}, {1, (uint8_t *)"d"}};
    const ProtobufCBinaryData s2[] = {
        {2, (uint8_t *)"ab"}, {1, (uint8_t *)"b"}, {1, (uint8_t *)"\xff"}};
    const ProtobufCBinaryData s3[] = {{1, (uint8_t *)"a"}, {1, (uint8_t *)"c"}};
    reply_pairs(sent_to(2), 3, s2, NULL, 0);
    reply_pairs(sent_to(0), 3, s0, NULL, 0);
    reply_pairs(sent_to(3), 2, s3, NULL, 0);
    check_pending();
    reply_pairs(sent_to(1), 0, NULL, NULL, 0);
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 200);
    const ProtobufCBinaryData want[] = {s0[0], s3[0], s0[1], s2[0], s2[1], s3[1], s0[2], s2[2]};
    CHECK_EQ(r->n_pairs, 8);
    for (size_t i = 0; i < 8; i++) {
        CHECK(bin_is(r->pairs[i]->key, want[i].data, want[i].len));
        check_text_of(r->pairs[i]->value, "v", want[i].data, want[i].len);
    }
}

KVS_TEST(merged_answer_over_max_frame_is_413)
{
    setup_frame("1KiB");
    char keys[SHARDS][3][64];
    ProtobufCBinaryData kb[SHARDS][3];
    route_hgetall();
    for (uint32_t s = 0; s < SHARDS; s++) {
        for (int k = 0; k < 3; k++) { /* ~3 * 2 * 60 bytes per shard: each fits */
            memset(keys[s][k], 'a' + s * 3 + k, 60);
            kb[s][k] = (ProtobufCBinaryData){60, (uint8_t *)keys[s][k]};
        }
        reply_pairs(sent_to(s), 3, kb[s], NULL, 0);
    }
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "Hscan");
    CHECK_CONTAINS(r->message, "max_frame");

    const char *mk[] = {fx.keys[0][0], fx.keys[1][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, 2, mk);
    char big[600];
    memset(big, 'v', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    Kvs__Value v = vstr(big), *vp[1] = {&v};
    Kvs__CommandResponse part = KVS__COMMAND_RESPONSE__INIT;
    part.status = 200;
    part.n_values = 1;
    part.values = vp;
    reply(sent_to(0), &part);
    reply(sent_to(1), &part);
    r = answer_async();
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "fewer keys");
}

KVS_TEST(info_fans_out_and_merges)
{
    setup();
    Kvs__Info info = KVS__INFO__INIT;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_INFO, &info);
    check_fanout_sent();
    char names[SHARDS][2][32];
    ProtobufCBinaryData kb[SHARDS][2];
    for (uint32_t s = SHARDS; s-- > 0;) {
        snprintf(names[s][0], sizeof(names[s][0]), "shard.%03u.map_size", s);
        snprintf(names[s][1], sizeof(names[s][1]), "shard.%03u.tables", s);
        kb[s][0] = bin(names[s][0]);
        kb[s][1] = bin(names[s][1]);
        reply_pairs(sent_to(s), 2, kb[s], NULL, 0);
    }
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 200);
    CHECK_EQ(r->n_pairs, 2 * SHARDS);
    for (size_t i = 0; i < 2 * SHARDS; i++)
        CHECK(bin_is(r->pairs[i]->key, names[i / 2][i % 2], strlen(names[i / 2][i % 2])));
}

/* With several router processes, Info also says which one answered, how
 * many there are and its clients, merged in key order between the
 * shards' "kafka." and "shard." pairs. */
KVS_TEST(info_names_the_router_process_when_several)
{
    setup();
    fx.r.n_procs = 3;
    fx.r.proc_index = 2;
    fx.r.n_clients = 5;
    Kvs__Info info = KVS__INFO__INIT;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_INFO, &info);
    check_fanout_sent();
    char names[SHARDS][2][32];
    ProtobufCBinaryData kb[SHARDS][2];
    for (uint32_t s = 0; s < SHARDS; s++) {
        snprintf(names[s][0], sizeof(names[s][0]), "kafka.t.%05u.lag", s);
        snprintf(names[s][1], sizeof(names[s][1]), "shard.%03u.tables", s);
        kb[s][0] = bin(names[s][0]);
        kb[s][1] = bin(names[s][1]);
        reply_pairs(sent_to(s), 2, kb[s], NULL, 0);
    }
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 200);
    CHECK_EQ(r->n_pairs, 2 * SHARDS + 3);
    static const char *const mine[] = {"router.clients", "router.process", "router.processes"};
    static const int64_t vals[] = {5, 2, 3};
    for (size_t i = 0; i < 3; i++) {
        Kvs__Kvpair *p = r->pairs[SHARDS + i];
        CHECK(bin_is(p->key, mine[i], strlen(mine[i])));
        CHECK_EQ(p->value->kind_case, KVS__VALUE__KIND_INTEGER_VALUE);
        CHECK_EQ(p->value->integer_value, vals[i]);
    }
    CHECK(bin_is(r->pairs[SHARDS - 1]->key, names[SHARDS - 1][0], strlen(names[SHARDS - 1][0])));
    CHECK(bin_is(r->pairs[SHARDS + 3]->key, names[0][1], strlen(names[0][1])));
}

/* Hlen asks every shard and adds the counts up; a shard that cannot answer
 * makes it 503 (a count without it would be wrong). */
KVS_TEST(hlen_sums_every_shard)
{
    setup();
    Kvs__Hlen m = KVS__HLEN__INIT;
    m.table = TABLE;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_HLEN, &m);
    check_fanout_sent();
    for (uint32_t s = 0; s < SHARDS; s++) {
        Kvs__Value v = KVS__VALUE__INIT, *vp[1] = {&v};
        v.kind_case = KVS__VALUE__KIND_INTEGER_VALUE;
        v.integer_value = 10 * (int64_t)s + 1;
        Kvs__CommandResponse part = KVS__COMMAND_RESPONSE__INIT;
        part.status = 200;
        part.n_values = 1;
        part.values = vp;
        reply(sent_to(s), &part);
    }
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 200);
    CHECK_EQ(r->n_values, 1);
    CHECK_EQ(r->values[0]->integer_value, 1 + 11 + 21 + 31);

    route_cmd(KVS__COMMAND_REQUEST__COMMAND_HLEN, &m);
    reply_failure(sent_to(1), "shard 1 is unavailable: test");
    for (uint32_t s = 0; s < SHARDS; s++)
        if (s != 1)
            reply_status(sent_to(s), 200, "");
    r = answer_async();
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shard 1");
}

/* Answers part `i` with 200 and the count `n` (Hlen, Hclear). */
static void reply_count(size_t i, int64_t n)
{
    Kvs__Value v = KVS__VALUE__INIT, *vp[1] = {&v};
    v.kind_case = KVS__VALUE__KIND_INTEGER_VALUE;
    v.integer_value = n;
    Kvs__CommandResponse part = KVS__COMMAND_RESPONSE__INIT;
    part.status = 200;
    part.n_values = 1;
    part.values = vp;
    reply(i, &part);
}

static void route_hclear(const char *table)
{
    Kvs__Hclear m = KVS__HCLEAR__INIT;
    m.table = (char *)table;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_HCLEAR, &m);
}

/* Hclear empties every shard's part and adds up the keys removed. */
KVS_TEST(hclear_sums_every_shard)
{
    setup();
    route_hclear(TABLE);
    check_fanout_sent();
    for (uint32_t s = 0; s < SHARDS; s++)
        reply_count(sent_to(s), 10 * (int64_t)s);
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 200);
    CHECK_EQ(r->n_values, 1);
    CHECK_EQ(r->values[0]->integer_value, 0 + 10 + 20 + 30);
    CHECK(!r->outcome_unknown);
}

/* A part that failed leaves the table partly emptied: the answer says
 * which shards emptied theirs, which did not, and which may have (its
 * answer lost after it was sent: outcome_unknown). */
KVS_TEST(hclear_partly_done_says_which_shards)
{
    setup();
    route_hclear(TABLE);
    reply_count(sent_to(0), 5);
    reply_failure(sent_to(1), "shard 1 is unavailable: link reset");
    reply_status(sent_to(2), 507, "storage full on shard 2");
    reply_count(sent_to(3), 7);
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 503); /* the first failure's */
    CHECK(r->outcome_unknown);
    CHECK_CONTAINS(r->message, "Hclear emptied the table on 2 of 4 shards (12 keys removed");
    CHECK_CONTAINS(r->message, "shard 1 may or may not have emptied its part: shard 1 is "
                               "unavailable: link reset");
    CHECK_CONTAINS(r->message, "shard 2 did not empty its part (nothing done there): storage "
                               "full on shard 2");
    CHECK_CONTAINS(r->message, "send it again");
    CHECK(strstr(r->message, "shard 0") == NULL && strstr(r->message, "shard 3") == NULL);

    /* A shard that is down is not asked: it certainly did nothing. */
    set_down(2);
    route_hclear(TABLE);
    CHECK_EQ(fx.n_sent, SHARDS - 1);
    for (uint32_t s = 0; s < SHARDS; s++)
        if (s != 2)
            reply_count(sent_to(s), 1);
    r = answer_async();
    check_status(r, 207); /* partly done, and exactly known */
    CHECK(!r->outcome_unknown);
    CHECK_CONTAINS(r->message, "on 3 of 4 shards (3 keys removed");
    CHECK_CONTAINS(r->message, "shard 2 did not empty its part (nothing done there)");

    /* A shard's words are cut at a whole character: the answer is UTF-8. */
    fx.r.links[2].up = 1;
    char words[400];
    memset(words, 'a', 299);
    strcpy(words + 299, "\xc3\xa9\xc3\xa9\xc3\xa9 and more");
    route_hclear(TABLE);
    for (uint32_t s = 0; s < SHARDS; s++)
        if (s == 2)
            reply_status(sent_to(s), 503, words);
        else
            reply_count(sent_to(s), 1);
    r = answer_async();
    check_status(r, 207);
    CHECK(kvs_utf8_valid(r->message, strlen(r->message)));
    CHECK_CONTAINS(r->message, "send it again");
}

/* Refused everywhere alike: nothing was done, and the refusal is the
 * answer, as for any request. */
KVS_TEST(hclear_refused_everywhere_is_the_refusal)
{
    setup();
    route_hclear(TABLE);
    for (uint32_t s = 0; s < SHARDS; s++)
        reply_status(sent_to(s), 507, "cannot write: storage full");
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 507);
    CHECK(!r->outcome_unknown);
    CHECK_EQ(strcmp(r->message, "cannot write: storage full"), 0);
    /* A worker's 200 without a count is not an answer it gives. */
    route_hclear(TABLE);
    for (uint32_t s = 0; s < SHARDS; s++)
        reply_status(sent_to(s), 200, "");
    r = answer_async();
    check_status(r, 500);
    CHECK(r->outcome_unknown);
}

/* A shard that cannot answer does not hide the others from Info: it shows
 * as shard.<id>.unavailable, in key order. */
KVS_TEST(info_reports_an_unavailable_shard)
{
    setup();
    Kvs__Info info = KVS__INFO__INIT;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_INFO, &info);
    check_fanout_sent();
    char names[SHARDS][32];
    ProtobufCBinaryData kb[SHARDS][1];
    for (uint32_t s = SHARDS; s-- > 0;) {
        snprintf(names[s], sizeof(names[s]), "shard.%03u.tables", s);
        kb[s][0] = bin(names[s]);
        if (s == 2)
            reply_failure(sent_to(s), "shard 2 is unavailable: worker closed the connection");
        else
            reply_pairs(sent_to(s), 1, kb[s], NULL, 0);
    }
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 200);
    CHECK_EQ(r->n_pairs, SHARDS);
    static const char *const want[] = {"shard.000.tables", "shard.001.tables",
                                       "shard.002.unavailable", "shard.003.tables"};
    for (size_t i = 0; i < SHARDS; i++)
        CHECK(bin_is(r->pairs[i]->key, want[i], strlen(want[i])));
    CHECK_EQ(r->pairs[2]->value->integer_value, 1);
}

/* A shard whose Info does not fit a frame makes Info 413 (naming it), not
 * "unavailable": the shard is up, and the merged answer could only be
 * larger. Whether the worker said so or its answer was dropped. */
KVS_TEST(info_too_large_on_a_shard_is_413)
{
    setup();
    for (int how = 0; how < 2; how++) {
        Kvs__Info info = KVS__INFO__INIT;
        route_cmd(KVS__COMMAND_REQUEST__COMMAND_INFO, &info);
        check_fanout_sent();
        for (uint32_t s = 0; s < SHARDS; s++) {
            if (s != 1)
                reply_pairs(sent_to(s), 0, NULL, NULL, 0);
            else if (how == 0)
                reply_status(sent_to(s), 413, "Info answer would exceed limits.max_frame");
            else
                router_route_reply(fx.sent[sent_to(s)].ctx, fx.sent[sent_to(s)].part, NULL, 9000000,
                                   "shard 1 answered with 9000000 bytes");
        }
        Kvs__CommandResponse *r = answer_async();
        check_status(r, 413);
        CHECK_CONTAINS(r->message, "shard 1");
        CHECK_EQ(r->n_pairs, 0);
    }
}

/* Every shard's Info fits, all of them together do not: 413 saying what
 * to do about Info (not about Hgetall's pages). */
KVS_TEST(merged_info_over_max_frame_is_413)
{
    setup_frame("1KiB");
    Kvs__Info info = KVS__INFO__INIT;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_INFO, &info);
    char names[SHARDS][3][100];
    ProtobufCBinaryData kb[SHARDS][3];
    for (uint32_t s = 0; s < SHARDS; s++) {
        for (int k = 0; k < 3; k++) {
            snprintf(names[s][k], sizeof(names[s][k]), "kafka.%080u.%u.applied", s, k);
            kb[s][k] = bin(names[s][k]);
        }
        reply_pairs(sent_to(s), 3, kb[s], NULL, 0);
    }
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "Kafka partition");
    CHECK_CONTAINS(r->message, "raise limits.max_frame");
}

/* ---- Hscan cursors
 * --------------------------------------------------------------------------------------------- */

/* Checks the one part of an Hscan (its shard, count and the worker cursor
 * it carries) and returns its index in fx.sent. */
static size_t check_hscan_sent(uint32_t shard, const char *inner, uint32_t count)
{
    check_pending();
    CHECK(fx.n_sent > 0);
    size_t i = fx.n_sent - 1; /* the page's latest part: one shard at a time */
    CHECK_EQ(fx.sent[i].shard, shard);
    Kvs__CommandRequest *q = sent_request(i);
    CHECK_EQ(q->command_case, KVS__COMMAND_REQUEST__COMMAND_HSCAN);
    CHECK_STR(q->hscan->table, TABLE);
    CHECK_EQ(q->hscan->count, count);
    CHECK(bin_is(q->hscan->cursor, inner, strlen(inner)));
    return i;
}

static void check_cursor(const Kvs__CommandResponse *r, const void *want, size_t len)
{
    check_status(r, 200);
    CHECK(bin_is(r->cursor, want, len));
}

KVS_TEST(hscan_walks_shards_in_turn)
{
    setup();
    const ProtobufCBinaryData page[] = {{2, (uint8_t *)"k1"}};
    route_hscan(NULL, 0, 7);
    reply_pairs(check_hscan_sent(0, "", 7), 1, page, "k2", 2);
    Kvs__CommandResponse *r = answer_async();
    CHECK_EQ(r->n_pairs, 1);
    CHECK(bin_is(r->pairs[0]->key, "k1", 2));
    check_cursor(r, "S\x00\x00k2", 5);

    route_hscan("S\x00\x00k2", 5, 2); /* shard 0 from k2: exhausted at count */
    const ProtobufCBinaryData two[] = {{2, (uint8_t *)"k2"}, {2, (uint8_t *)"k3"}};
    reply_pairs(check_hscan_sent(0, "k2", 2), 2, two, NULL, 0);
    check_cursor(answer_async(), "S\x00\x01", 3);

    /* A shard that ends before `count` pairs: the page goes on with the
     * next shards, each asked for what is left of the count and from its
     * start, and holds their pairs in shard order. */
    route_hscan("S\x00\x00k2", 5, 7);
    reply_pairs(check_hscan_sent(0, "k2", 7), 1, page, NULL, 0);
    reply_pairs(check_hscan_sent(1, "", 6), 0, NULL, NULL, 0); /* shard 1: empty */
    const ProtobufCBinaryData more[] = {{1, (uint8_t *)"a"}, {1, (uint8_t *)"b"}};
    reply_pairs(check_hscan_sent(2, "", 6), 2, more, "c", 1); /* shard 2: not done */
    CHECK_EQ(fx.n_sent, 3);
    r = answer_async();
    CHECK_EQ(r->n_pairs, 3);
    CHECK(bin_is(r->pairs[0]->key, "k1", 2));
    CHECK(bin_is(r->pairs[1]->key, "a", 1));
    CHECK(bin_is(r->pairs[2]->key, "b", 1));
    check_cursor(r,
                 "S\x00\x02"
                 "c",
                 4);

    route_hscan("S\x00\x01", 3, 0); /* from shard 1, default count: all empty */
    reply_pairs(check_hscan_sent(1, "", 0), 0, NULL, NULL, 0);
    reply_pairs(check_hscan_sent(2, "", KVS_SCAN_DEFAULT), 0, NULL, NULL, 0);
    reply_pairs(check_hscan_sent(3, "", KVS_SCAN_DEFAULT), 0, NULL, NULL, 0);
    r = answer_async();
    CHECK_EQ(r->n_pairs, 0);
    check_cursor(r, "", 0);

    route_hscan("S\x00\x02", 3, 99999); /* a count past the cap asks for the rest of it */
    reply_pairs(check_hscan_sent(2, "", 99999), 1, page, NULL, 0);
    reply_pairs(check_hscan_sent(3, "", KVS_SCAN_MAX - 1), 0, NULL, NULL, 0);
    check_cursor(answer_async(), "", 0);

    route_hscan("S\x00\x03", 3, 5); /* the last shard */
    reply_pairs(check_hscan_sent(3, "", 5), 1, page, "zz", 2);
    check_cursor(answer_async(), "S\x00\x03zz", 5);
    route_hscan("S\x00\x03zz", 5, 5);
    reply_pairs(check_hscan_sent(3, "zz", 5), 1, page, NULL, 0);
    check_cursor(answer_async(), "", 0); /* the walk is complete */
}

/* A page that goes on to a shard that does not answer it ends with the
 * earlier shards' pairs; the next page starts that shard and gets its
 * error. */
KVS_TEST(hscan_page_ends_before_a_shard_that_fails)
{
    setup();
    const ProtobufCBinaryData page[] = {{2, (uint8_t *)"k1"}};
    for (int how = 0; how < 2; how++) {
        route_hscan(NULL, 0, 7);
        reply_pairs(check_hscan_sent(0, "", 7), 1, page, NULL, 0);
        if (how == 0)
            reply_failure(check_hscan_sent(1, "", 6), "link to shard 1 down");
        else
            reply_status(check_hscan_sent(1, "", 6), 503, "catching up: lag 9");
        Kvs__CommandResponse *r = answer_async();
        CHECK_EQ(r->n_pairs, 1);
        CHECK(bin_is(r->pairs[0]->key, "k1", 2));
        check_cursor(r, "S\x00\x01", 3);
        route_hscan("S\x00\x01", 3, 7);
        reply_status(check_hscan_sent(1, "", 7), 503, "catching up: lag 9");
        r = answer_async();
        check_status(r, 503);
        CHECK_STR(r->message, "catching up: lag 9");
    }
}

/* A page does not go on into a shard at its cap: it ends at the boundary
 * before it, whose cursor the next page's hold looks at (capped_for). */
KVS_TEST(hscan_page_ends_before_a_shard_at_its_cap)
{
    setup();
    const ProtobufCBinaryData page[] = {{2, (uint8_t *)"k1"}};
    route_hscan(NULL, 0, 7);
    fx.r.links[1].units = ROUTER_SHARD_CAP; /* other clients' requests */
    fx.r.n_capped = 1;
    reply_pairs(check_hscan_sent(0, "", 7), 1, page, NULL, 0);
    CHECK_EQ(fx.n_sent, 1); /* shard 1 was not asked */
    Kvs__CommandResponse *r = answer_async();
    CHECK_EQ(r->n_pairs, 1);
    check_cursor(r, "S\x00\x01", 3);
    fx.r.links[1].units = ROUTER_SHARD_CAP - 1; /* below it: the page goes on */
    fx.r.n_capped = 0;
    route_hscan(NULL, 0, 7);
    reply_pairs(check_hscan_sent(0, "", 7), 1, page, NULL, 0);
    reply_pairs(check_hscan_sent(1, "", 6), 0, NULL, "c", 1);
    check_cursor(answer_async(),
                 "S\x00\x01"
                 "c",
                 4);
}

/* A page that went on to a shard whose part ends there, and ends with that
 * shard's pairs: the router's cursor (the next shard's start, 5 bytes with
 * its field tag and length) is on top of the pairs, where the worker's had
 * none. Pairs that fit max_frame beside the earlier shard's only without
 * that cursor start the next page, never make a 413 the walk cannot get
 * past (asking for the same page again gets the same answer). */
KVS_TEST(hscan_page_fits_the_routers_cursor_where_the_worker_had_none)
{
    setup_frame("64KiB");
    static char big[65536];
    memset(big, 'x', sizeof(big));
    const ProtobufCBinaryData k0[] = {{1, (uint8_t *)"a"}}, k1[] = {{1, (uint8_t *)"b"}},
                              both[] = {{1, (uint8_t *)"a"}, {1, (uint8_t *)"b"}};
    ProtobufCBinaryData v0 = {700, (uint8_t *)big}, v1 = {0, (uint8_t *)big}, vv[2];
    Kvs__Kvpair pairs[2], *pp[2];
    Kvs__Value v[2];
    /* shard 1's value so that both pairs, without a cursor, take
     * max_frame - 4 bytes: the most that the router's check lets by */
    for (v1.len = 60000;; v1.len++) {
        vv[0] = v0;
        vv[1] = v1;
        Kvs__CommandResponse j = pairs_resp(2, pairs, pp, v, both, vv, bin(""));
        size_t n = protobuf_c_message_get_packed_size(&j.base);
        if (n >= fx.cfg->max_frame - 4)
            break;
    }
    vv[0] = v0;
    vv[1] = v1;
    Kvs__CommandResponse j = pairs_resp(2, pairs, pp, v, both, vv, bin(""));
    CHECK_EQ(protobuf_c_message_get_packed_size(&j.base), fx.cfg->max_frame - 4);
    CHECK(v1.len <= kvs_msg_pair_max(fx.cfg->max_frame)); /* a worker would answer it */

    route_hscan(NULL, 0, 100);
    Kvs__CommandResponse r0 = pairs_resp(1, pairs, pp, v, k0, &v0, bin(""));
    reply(check_hscan_sent(0, "", 100), &r0);
    Kvs__CommandResponse r1 = pairs_resp(1, pairs, pp, v, k1, &v1, bin(""));
    reply(check_hscan_sent(1, "", 99), &r1); /* over max_frame / 4: the page ends */
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 200);
    CHECK(fx.req->resp.len - KVS_FRAME_HEADER <= fx.cfg->max_frame);
    if (r->n_pairs == 2) { /* both, and shard 2 next */
        CHECK(bin_is(r->pairs[1]->key, "b", 1));
        check_cursor(r, "S\x00\x02", 3);
    } else { /* shard 1's pair starts the next page */
        CHECK_EQ(r->n_pairs, 1);
        CHECK(bin_is(r->pairs[0]->key, "a", 1));
        check_cursor(r, "S\x00\x01", 3);
        route_hscan("S\x00\x01", 3, 100);
        reply(check_hscan_sent(1, "", 100), &r1);
        r = decode_resp();
        CHECK_EQ(r->n_pairs, 1);
        CHECK(bin_is(r->pairs[0]->key, "b", 1));
        check_cursor(r, "S\x00\x02", 3);
    }
}

KVS_TEST(hscan_forged_cursor_is_400)
{
    setup();
    static const struct {
        const char *c;
        size_t len;
    } bad[] = {{"X\x00\x00", 3}, {"S\x00", 2}, {"S", 1}, {"S\x00\x04", 3}, {"S\x01\x00k", 4}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        route_hscan(bad[i].c, bad[i].len, 0);
        Kvs__CommandResponse *r = answer_sync();
        check_status(r, 400);
        CHECK_CONTAINS(r->message, "Hscan.cursor");
        CHECK_EQ(fx.n_sent, 0);
    }
}

/* ---- answered by the router itself
 * ------------------------------------------------------------------------------- */

/* Digest and Snapshot are about one copy of one shard: refused, each with
 * what to do instead. */
KVS_TEST(worker_commands_are_refused_saying_where_to_send_them)
{
    setup();
    Kvs__Digest digest = KVS__DIGEST__INIT;
    digest.table = TABLE;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_DIGEST, &digest);
    Kvs__CommandResponse *r = answer_sync();
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "Digest is a worker command");
    CHECK_CONTAINS(r->message, "digest TABLE and rebuild TABLE do");
    Kvs__Snapshot snap = KVS__SNAPSHOT__INIT;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_SNAPSHOT, &snap);
    r = answer_sync();
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "Snapshot is a worker command");
    CHECK_CONTAINS(r->message, "a new replica's worker asks its peers for one by itself");
    CHECK(strstr(r->message, "digest") == NULL);
    CHECK_EQ(fx.n_sent, 0);
}

KVS_TEST(ping_answered_locally)
{
    setup();
    Kvs__Ping ping = KVS__PING__INIT;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_PING, &ping);
    Kvs__CommandResponse *r = answer_sync();
    check_status(r, 200);
    CHECK_STR(r->message, "PONG");
    CHECK_EQ(fx.n_sent, 0);
}

/* Routes `q` and checks the 400 reads exactly as kvs_msg_validate says. */
static void check_bad_like_validate(const Kvs__CommandRequest *q)
{
    char msg[512];
    CHECK_EQ(kvs_msg_validate(q, msg, sizeof(msg)), 400);
    route(q);
    Kvs__CommandResponse *r = answer_sync();
    check_status(r, 400);
    CHECK_STR(r->message, msg);
    CHECK_EQ(fx.n_sent, 0);
}

KVS_TEST(bad_input_is_400_like_a_worker)
{
    setup();
    Kvs__Value v = vstr("x"), none = KVS__VALUE__INIT;
    Kvs__Hset hs = KVS__HSET__INIT;
    Kvs__Kvpair hp = KVS__KVPAIR__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    check_bad_like_validate(&q); /* no command */
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HSET;
    q.hset = &hs;
    hs.table = "";
    check_bad_like_validate(&q); /* empty table, no pair */
    hs.table = TABLE;
    check_bad_like_validate(&q); /* no pair */
    hs.pair = &hp;
    hp.key = bin("k");
    hp.value = &v;
    hs.table = "__kvs";
    check_bad_like_validate(&q); /* reserved table */
    hs.table = TABLE;
    hp.key = bin("");
    check_bad_like_validate(&q); /* empty key */
    hp.key = bin("k");
    hp.value = &none;
    check_bad_like_validate(&q); /* no value */
    Kvs__Hmget mg = KVS__HMGET__INIT;
    mg.table = TABLE;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HMGET;
    q.hmget = &mg;
    check_bad_like_validate(&q); /* no keys */

    static const uint8_t junk[] = {0xff, 0xff, 0xff};
    route_raw(junk, sizeof(junk));
    Kvs__CommandResponse *r = answer_sync();
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "not a valid kvs.CommandRequest");

    char msg[512];
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, "k");
    fx.payload[4] = 0xff; /* Hget{table: "users"} -> "\xffsers": not UTF-8 */
    CHECK_EQ(kvs_msg_check_wire(fx.payload, fx.payload_len, msg, sizeof(msg)), 400);
    route_raw(fx.payload, fx.payload_len);
    r = answer_sync();
    check_status(r, 400);
    CHECK_STR(r->message, msg);
}

/* ---- orphaned requests
 * ------------------------------------------------------------------------------------------ */

/* The client went away: the request must free itself on its last answer
 * without telling anyone (LSan checks the freeing in sanitizer builds). */
static router_req_t *orphan(void)
{
    router_req_t *req = fx.req;
    req->client = NULL;
    fx.req = NULL;
    return req;
}

KVS_TEST(orphaned_request_frees_itself)
{
    setup();
    const char *keys[] = {fx.keys[0][0], fx.keys[2][0], fx.keys[3][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, 3, keys);
    orphan();
    reply_values_from_keys(sent_to(2));
    reply_values_from_keys(sent_to(0));
    reply_values_from_keys(sent_to(3));

    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[1][0]);
    orphan();
    reply_status(0, 404, "key not found");

    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 3, keys);
    orphan();
    reply_failure(sent_to(0), "shard 0: connection reset");
    reply_values_from_keys(sent_to(3));
    reply_status(sent_to(2), 507, "full");

    route_hgetall();
    orphan();
    for (uint32_t s = 0; s < SHARDS; s++)
        reply_pairs(sent_to(s), 0, NULL, NULL, 0);
    CHECK_EQ(fx.done_calls, 0);
}

static uint32_t executed_status; /* the last EXECUTED event's status */

static uint32_t note_executed(void *state, kvs_hook_event_t ev, const kvs_request_info_t *req,
                              char *msg, size_t msglen)
{
    (void)state;
    (void)msg;
    (void)msglen;
    if (ev == KVS_HOOK_EXECUTED)
        executed_status = req->status;
    return 0;
}

/* An orphan keeps no part's answer, but what it records (hooks, the audit
 * log, metrics) counts every part: one applied before its client left and
 * two refused after make a split write's 207, not the refusal. */
KVS_TEST(orphaned_split_write_records_every_parts_outcome)
{
    setup();
    CHECK_EQ(kvs_hook_add(&fx.r.chain, KVS_HOOK_MASK(KVS_HOOK_EXECUTED), note_executed, NULL, 0),
             0);
    const char *keys[] = {fx.keys[0][0], fx.keys[2][0], fx.keys[3][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 3, keys);
    reply_values_from_keys(sent_to(0));
    orphan();
    executed_status = 0;
    reply_status(sent_to(2), 507, "full");
    CHECK_EQ(executed_status, 0);
    reply_status(sent_to(3), 507, "full");
    CHECK_EQ(executed_status, KVS_STATUS_PARTIAL);
    CHECK_EQ(fx.done_calls, 0);
}

/* An Hscan page whose client went away, before it was sent or between two
 * of its shards, ends where it is: it does not go on to read the next
 * shards for nobody (and frees itself). */
KVS_TEST(orphaned_hscan_page_does_not_go_on)
{
    setup();
    const ProtobufCBinaryData page[] = {{2, (uint8_t *)"k1"}};
    route_hscan(NULL, 0, 7);
    orphan();
    reply_pairs(0, 1, page, NULL, 0);
    CHECK_EQ(fx.n_sent, 1);

    route_hscan(NULL, 0, 7);
    reply_pairs(check_hscan_sent(0, "", 7), 1, page, NULL, 0);
    check_hscan_sent(1, "", 6);
    orphan();
    reply_pairs(1, 0, NULL, NULL, 0);
    CHECK_EQ(fx.n_sent, 2);
    CHECK_EQ(fx.done_calls, 0);
}

/* A page takes more shards only for half a router.timeout from its start
 * (a hung replica retried past must not make it wait out more): with a
 * timeout of 0, none. */
KVS_TEST(hscan_page_goes_on_for_half_a_timeout_only)
{
    setup();
    fx.cfg->router_timeout_ms = 0;
    const ProtobufCBinaryData page[] = {{2, (uint8_t *)"k1"}};
    route_hscan(NULL, 0, 7);
    reply_pairs(check_hscan_sent(0, "", 7), 1, page, NULL, 0);
    CHECK_EQ(fx.n_sent, 1);
    Kvs__CommandResponse *r = answer_async();
    CHECK_EQ(r->n_pairs, 1);
    check_cursor(r, "S\x00\x01", 3);
}

/* ---- placement by the binding's partitioner
 * ----------------------------------------------------------------------- */

/* TABLE bound to a topic of `partitions` partitions with `partitioner`. */
static void setup_bound(const char *partitioner, int partitions)
{
    char extra[256];
    snprintf(extra, sizeof(extra),
             "kafka:\n  bindings:\n    - {topic: t-users, table: %s, partitions: %d, "
             "partitioner: %s}\n    - {topic: other, table: %sx, partitioner: none}\n",
             TABLE, partitions, partitioner, TABLE);
    teardown(); /* a case may set up several routers in turn */
    setup_config("4MiB", extra);
}

/* A single-key request that kvs_msg_peek refuses (its key field comes
 * twice; protobuf keeps the last), so it takes the decoding path: the
 * decoy key is forgotten and `key` is the one placed. */
static void route_hget_decoded(const char *decoy, const char *key)
{
    uint8_t body[256], req[260];
    size_t n = 0, tl = strlen(TABLE), dl = strlen(decoy), kl = strlen(key);
    CHECK(tl < 100 && dl < 100 && kl < 40);
    body[n++] = 0x0a; /* table = 1 */
    body[n++] = (uint8_t)tl;
    memcpy(body + n, TABLE, tl), n += tl;
    body[n++] = 0x12; /* key = 2 */
    body[n++] = (uint8_t)dl;
    memcpy(body + n, decoy, dl), n += dl;
    body[n++] = 0x12;
    body[n++] = (uint8_t)kl;
    memcpy(body + n, key, kl), n += kl;
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(&kvs__command_request__descriptor, "hget");
    CHECK(f != NULL && f->id < 16 && n < 128);
    req[0] = (uint8_t)(f->id << 3 | 2);
    req[1] = (uint8_t)n;
    memcpy(req + 2, body, n);
    kvs_peek_t pk;
    CHECK(!kvs_msg_peek(req, n + 2, &pk));
    route_raw(req, n + 2);
}

KVS_TEST(bound_table_placed_by_its_partitioner)
{
    static const struct {
        const char *name;
        kvs_partitioner_t p;
    } ps[] = {{"murmur2", KVS_PARTITIONER_MURMUR2},
              {"crc32", KVS_PARTITIONER_CRC32},
              {"fnv1a", KVS_PARTITIONER_FNV1A}};
    const uint32_t parts = 12;
    for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++) {
        setup_bound(ps[i].name, (int)parts);
        int differs = 0;
        for (int k = 0; k < 64; k++) {
            char key[16];
            snprintf(key, sizeof(key), "user-%d", k);
            uint32_t want =
                kvs_place_shard(kvs_place_partition_by(ps[i].p, key, strlen(key), parts), SHARDS);
            differs += want != kvs_place_key_shard(key, strlen(key), parts, SHARDS);
            route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, key); /* the peek path */
            CHECK_EQ(fx.n_sent, 1);
            CHECK_EQ(fx.sent[0].shard, want);
            CHECK(sent_is_client_payload(0));
            route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, key);
            CHECK_EQ(fx.n_sent, 1);
            CHECK_EQ(fx.sent[0].shard, want);
            route_hget_decoded("decoy", key); /* the decoding path */
            CHECK_EQ(fx.n_sent, 1);
            CHECK_EQ(fx.sent[0].shard, want);
        }
        /* otherwise this case could not tell the partitioners apart */
        CHECK(ps[i].p == KVS_PARTITIONER_MURMUR2 ? differs == 0 : differs > 16);

        /* multi-key: each part holds exactly the keys of its shard */
        const char *keys[] = {"a-1", "b-22", "c-333", "d-4444", "e-55555", "f-666666", "g-7"};
        const size_t n = sizeof(keys) / sizeof(keys[0]);
        route_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, n, keys);
        size_t seen = 0;
        for (size_t j = 0; j < fx.n_sent; j++) {
            size_t got;
            if (fx.sent[j].raw) { /* all keys on one shard */
                CHECK_EQ(fx.n_sent, 1);
                seen = n;
                break;
            }
            Kvs__CommandRequest *q = sent_request(j);
            nth_key(q, 0, &got);
            for (size_t k = 0; k < got; k++) {
                ProtobufCBinaryData key = nth_key(q, k, &got);
                CHECK_EQ(kvs_place_shard(kvs_place_partition_by(ps[i].p, key.data, key.len, parts),
                                         SHARDS),
                         fx.sent[j].shard);
            }
            seen += got;
        }
        CHECK_EQ(seen, n);
    }
}

KVS_TEST(unbound_table_beside_bindings_is_murmur2)
{
    char extra[256];
    snprintf(extra, sizeof(extra),
             "kafka:\n  bindings:\n    - {topic: t, table: %s2, partitions: 8, partitioner: "
             "crc32}\n    - {topic: u, table: %.4s, partitioner: none}\n",
             TABLE, TABLE);
    setup_config("4MiB", extra);
    for (uint32_t s = 0; s < SHARDS; s++)
        for (int k = 0; k < KEYS_PER_SHARD; k++) {
            route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[s][k]);
            CHECK_EQ(fx.n_sent, 1);
            CHECK_EQ(fx.sent[0].shard, s);
        }
}

/* ---- partitioner: none
 * ---------------------------------------------------------------------------------------- */

/* Answers part `i` (a whole Hget) with 200 and the value "on-<shard>". */
static void reply_found(size_t i)
{
    char text[16];
    snprintf(text, sizeof(text), "on-%u", fx.sent[i].shard);
    Kvs__Value v = vstr(text), *vp = &v;
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    r.status = 200;
    r.n_values = 1;
    r.values = &vp;
    reply(i, &r);
}

static void reply_bool(size_t i, int b)
{
    Kvs__Value v = KVS__VALUE__INIT, *vp = &v;
    v.kind_case = KVS__VALUE__KIND_BOOL_VALUE;
    v.bool_value = b;
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    r.status = 200;
    r.n_values = 1;
    r.values = &vp;
    reply(i, &r);
}

/* The client's request went, unchanged, to shards 0..n-1 (part = shard). */
static void check_asked_owners(uint32_t n)
{
    check_pending();
    CHECK_EQ(fx.n_sent, n);
    for (uint32_t s = 0; s < n; s++) {
        size_t i = sent_to(s);
        CHECK(fx.sent[i].raw);
        CHECK_EQ(fx.sent[i].part, s);
        CHECK(sent_is_client_payload(i));
    }
}

KVS_TEST(none_hget_answered_by_the_shard_that_has_it)
{
    setup_bound("none", 8);
    for (uint32_t has = 0; has < SHARDS; has++) {
        route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, "k");
        check_asked_owners(SHARDS);
        for (uint32_t s = SHARDS; s-- > 0;) { /* answers in any order */
            if (s == has)
                reply_found(sent_to(s));
            else
                reply_status(sent_to(s), 404, "key not found in table \"users\"");
        }
        Kvs__CommandResponse *r = answer_async();
        check_status(r, 200);
        CHECK_EQ(r->n_values, 1);
        char want[16];
        snprintf(want, sizeof(want), "on-%u", has);
        check_str(r->values[0], want);
    }
    /* nowhere: the workers' own 404 */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, "k");
    for (uint32_t s = 0; s < SHARDS; s++)
        reply_status(sent_to(s), 404, "key not found in table \"users\"");
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 404);
    CHECK_STR(r->message, "key not found in table \"users\"");
}

KVS_TEST(none_hget_failures)
{
    setup_bound("none", 8);
    /* A shard that cannot answer might hold the key: 503, not 404. */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, "k");
    reply_failure(sent_to(2), "shard 2 did not answer within router.timeout (5000 ms)");
    for (uint32_t s = 0; s < SHARDS; s++)
        if (s != 2)
            reply_status(sent_to(s), 404, "key not found");
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shard 2 did not answer");
    CHECK_CONTAINS(r->message, "partitioner: none");
    /* ...but when another shard has it, that is the answer */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, "k");
    reply_failure(sent_to(2), "shard 2: connection reset");
    reply_found(sent_to(3));
    reply_status(sent_to(0), 404, "key not found");
    reply_status(sent_to(1), 404, "key not found");
    r = answer_async();
    check_status(r, 200);
    check_str(r->values[0], "on-3");
    /* a shard's error other than 404 is reported */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, "k");
    reply_status(sent_to(1), 500, "storage: Input/output error");
    for (uint32_t s = 0; s < SHARDS; s++)
        if (s != 1)
            reply_status(sent_to(s), 404, "key not found");
    r = answer_async();
    check_status(r, 500);
    CHECK_STR(r->message, "storage: Input/output error");
    /* a down link fails its part at once; the others are still waited for */
    set_down(0);
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, "k");
    CHECK_EQ(fx.n_sent, SHARDS - 1);
    check_pending();
    for (uint32_t s = 1; s < SHARDS; s++)
        reply_status(sent_to(s), 404, "key not found");
    r = answer_async();
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shard 0 is unavailable");
    fx.r.links[0].up = 1;
    /* an answer dropped for its size (the key's, most likely): 413 */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, "k");
    router_route_reply(fx.sent[sent_to(2)].ctx, fx.sent[sent_to(2)].part, NULL, 9000000,
                       "shard 2 answered with 9000000 bytes");
    for (uint32_t s = 0; s < SHARDS; s++)
        if (s != 2)
            reply_status(sent_to(s), 404, "key not found");
    r = answer_async();
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "9000000 bytes");
}

KVS_TEST(none_asks_only_shards_that_own_partitions)
{
    setup_bound("none", 2); /* partitions 0 and 1: shards 0 and 1 */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HEXIST, "k");
    check_asked_owners(2);
    reply_bool(sent_to(1), 1);
    reply_bool(sent_to(0), 0);
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 200);
    CHECK_EQ(r->values[0]->kind_case, KVS__VALUE__KIND_BOOL_VALUE);
    CHECK_EQ(r->values[0]->bool_value, 1);
    route_single(KVS__COMMAND_REQUEST__COMMAND_HEXIST, "k");
    reply_bool(sent_to(1), 0);
    reply_bool(sent_to(0), 0);
    r = answer_async();
    check_status(r, 200);
    CHECK_EQ(r->values[0]->kind_case, KVS__VALUE__KIND_BOOL_VALUE);
    CHECK_EQ(r->values[0]->bool_value, 0);

    setup_bound("none", 1); /* one shard owns everything: forwarded as is */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, "k");
    CHECK_EQ(fx.n_sent, 1);
    CHECK_EQ(fx.sent[0].shard, 0);
    CHECK(sent_is_client_payload(0));
    reply_found(0);
    r = answer_async();
    check_status(r, 200);
    check_str(r->values[0], "on-0");
}

/* Answers part `i` (a whole Hmget or Hmexist of `n` keys): key k is found
 * there when has[k] == the part's shard. */
static void reply_multi_found(size_t i, size_t n, const uint32_t *has, int exist)
{
    Kvs__Value vals[8], *vp[8];
    char text[8][16];
    CHECK(n <= 8);
    for (size_t k = 0; k < n; k++) {
        kvs__value__init(&vals[k]);
        if (exist) {
            vals[k].kind_case = KVS__VALUE__KIND_BOOL_VALUE;
            vals[k].bool_value = has[k] == fx.sent[i].shard;
        } else if (has[k] == fx.sent[i].shard) {
            snprintf(text[k], sizeof(text[k]), "k%zu-on-%u", k, fx.sent[i].shard);
            vals[k] = vstr(text[k]);
        }
        vp[k] = &vals[k];
    }
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    r.status = 200;
    r.n_values = n;
    r.values = vp;
    reply(i, &r);
}

KVS_TEST(none_hmget_and_hmexist_merge_per_key)
{
    setup_bound("none", 16);
    const char *keys[] = {"a", "b", "c", "d", "e"};
    const uint32_t has[] = {2, 0, 99, 3, 2}; /* "c" is nowhere */
    for (int exist = 0; exist < 2; exist++) {
        route_multi(exist ? KVS__COMMAND_REQUEST__COMMAND_HMEXIST
                          : KVS__COMMAND_REQUEST__COMMAND_HMGET,
                    5, keys);
        check_asked_owners(SHARDS);
        for (uint32_t s = 0; s < SHARDS; s++)
            reply_multi_found(sent_to(s), 5, has, exist);
        Kvs__CommandResponse *r = answer_async();
        check_status(r, 200);
        CHECK_EQ(r->n_values, 5);
        for (size_t k = 0; k < 5; k++) {
            if (exist) {
                CHECK_EQ(r->values[k]->kind_case, KVS__VALUE__KIND_BOOL_VALUE);
                CHECK_EQ(r->values[k]->bool_value, has[k] < SHARDS);
            } else if (has[k] < SHARDS) {
                char want[16];
                snprintf(want, sizeof(want), "k%zu-on-%u", k, has[k]);
                check_str(r->values[k], want);
            } else {
                CHECK_EQ(r->values[k]->kind_case, KVS__VALUE__KIND__NOT_SET);
            }
        }
    }
    /* a shard that cannot answer: the keys may be there, so 503 */
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, 5, keys);
    reply_failure(sent_to(1), "shard 1: connection reset");
    for (uint32_t s = 0; s < SHARDS; s++)
        if (s != 1)
            reply_multi_found(sent_to(s), 5, has, 0);
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shard 1: connection reset");
    /* an answer with the wrong number of values is the shard's fault */
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, 5, keys);
    for (uint32_t s = 0; s < SHARDS; s++)
        reply_multi_found(sent_to(s), s == 3 ? 4 : 5, has, 0);
    r = answer_async();
    check_status(r, 500);
    CHECK_CONTAINS(r->message, "shard 3 answered 4 values for 5 keys");
}

KVS_TEST(none_writes_are_refused)
{
    setup_bound("none", 8);
    static const Kvs__CommandRequest__CommandCase singles[] = {KVS__COMMAND_REQUEST__COMMAND_HSET,
                                                               KVS__COMMAND_REQUEST__COMMAND_HDEL};
    static const Kvs__CommandRequest__CommandCase multis[] = {KVS__COMMAND_REQUEST__COMMAND_HMSET,
                                                              KVS__COMMAND_REQUEST__COMMAND_HMDEL};
    const char *keys[] = {"a", "b", "c"};
    for (int i = 0; i < 4; i++) {
        if (i < 2)
            route_single(singles[i], "k");
        else
            route_multi(multis[i - 2], 3, keys);
        Kvs__CommandResponse *r = answer_sync();
        check_status(r, 400);
        CHECK_EQ(fx.n_sent, 0);
        CHECK_CONTAINS(r->message, "table \"users\" is bound to Kafka topic \"t-users\" with "
                                   "partitioner: none");
        CHECK_CONTAINS(r->message, "produce it to topic \"t-users\" instead");
    }
    /* whole-table reads need no placement: unchanged */
    Kvs__Hgetall all = KVS__HGETALL__INIT;
    all.table = TABLE;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_HGETALL, &all);
    CHECK_EQ(fx.n_sent, SHARDS);
    route_hscan(NULL, 0, 0);
    CHECK_EQ(fx.n_sent, 1);
    CHECK_EQ(fx.sent[0].shard, 0);
}

/* ---- sessions: read-your-writes ---------------------------------------------------------- */

/* A request of the fake client routed by hand (the session cases keep
 * several alive), from a packed CommandRequest. */
static router_req_t *route_req(const Kvs__CommandRequest *q)
{
    size_t n = kvs__command_request__get_packed_size(q);
    uint8_t *p = malloc(n ? n : 1);
    CHECK(p != NULL);
    kvs__command_request__pack(q, p);
    router_req_t *req = router_req_new(&fx.r, CLIENT);
    CHECK(req != NULL);
    router_route(&fx.r, req, p, n);
    free(p); /* the router copied what it keeps */
    return req;
}

static router_req_t *route_key_req(Kvs__CommandRequest__CommandCase c, const char *table,
                                   const char *key)
{
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    Kvs__Value v = vstr("x");
    Kvs__Kvpair pair = KVS__KVPAIR__INIT;
    Kvs__Hset hs = KVS__HSET__INIT;
    Kvs__Hget hg = KVS__HGET__INIT;
    q.command_case = c;
    if (c == KVS__COMMAND_REQUEST__COMMAND_HSET) {
        pair.key = bin(key);
        pair.value = &v;
        hs.table = (char *)table;
        hs.pair = &pair;
        q.hset = &hs;
    } else {
        hg.table = (char *)table;
        hg.key = bin(key);
        q.hget = &hg;
    }
    return route_req(&q);
}

/* Answers sent part `i` with 200, one empty value and `pos` as position. */
static void reply_with_position(size_t i, const uint8_t *pos, size_t len)
{
    Kvs__Value v = KVS__VALUE__INIT, *vp = &v;
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    r.status = 200;
    r.n_values = 1;
    r.values = &vp;
    r.position = (ProtobufCBinaryData){len, (uint8_t *)pos};
    reply(i, &r);
}

static uint32_t users_partition(const char *key)
{
    return kvs_place_partition_by(KVS_PARTITIONER_MURMUR2, key, strlen(key), 12);
}

KVS_TEST(session_read_carries_its_writes_position)
{
    setup_bound("murmur2", 12);
    fx.many = 1;
    const char *key = "user-7";
    uint32_t p = users_partition(key);
    router_req_t *w = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, key);
    CHECK_EQ(fx.n_sent, 1);
    CHECK_EQ(fx.session.writes, 1);
    uint8_t tok[KVS_POS_ONE_MAX];
    size_t n = kvs_pos_encode_one(tok, "t-users", 7, p, 41);
    reply_with_position(0, tok, n);
    CHECK_EQ(fx.n_completed, 1);
    CHECK(fx.completed[0] == w);
    CHECK_EQ(fx.session.writes, 0);
    CHECK_EQ(router_session_get(&fx.session, fx.cfg, &fx.cfg->bindings[0], p), 41);
    /* the answer passes through with its position */
    Kvs__CommandResponse *a =
        kvs__command_response__unpack(&fx.arena.pb, w->resp.len - 4, w->resp.data + 4);
    CHECK(a != NULL && a->position.len == n && memcmp(a->position.data, tok, n) == 0);
    router_req_free(w);

    /* a read of that key (the fast path) carries the position */
    clear_sent();
    router_req_t *rd = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, TABLE, key);
    CHECK_EQ(fx.n_sent, 1);
    CHECK(!rd->held);
    Kvs__CommandRequest *q = sent_request(0);
    CHECK_EQ(q->command_case, KVS__COMMAND_REQUEST__COMMAND_HGET);
    CHECK(q->hget->key.len == strlen(key) && memcmp(q->hget->key.data, key, strlen(key)) == 0);
    CHECK(q->min_position.len == n && memcmp(q->min_position.data, tok, n) == 0);
    router_req_free(rd);

    /* ... a key of another partition does not (its bytes go as they came) */
    const char *other = "user-8";
    for (int i = 9; users_partition(other) == p; i++) {
        static char buf[16];
        snprintf(buf, sizeof(buf), "user-%d", i);
        other = buf;
    }
    clear_sent();
    rd = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, TABLE, other);
    CHECK_EQ(sent_request(0)->min_position.len, 0);
    router_req_free(rd);

    /* multi-key reads: every part carries the client's position merged
     * with the session's; accept_stale goes along */
    Kvs__CommandRequest mq = KVS__COMMAND_REQUEST__INIT;
    Kvs__Hmget hm = KVS__HMGET__INIT;
    ProtobufCBinaryData keys[8];
    char names[8][16];
    for (int i = 0; i < 8; i++) {
        snprintf(names[i], sizeof(names[i]), "k-%d", i);
        keys[i] = bin(names[i]);
    }
    uint8_t client_tok[KVS_POS_ONE_MAX];
    size_t cn = kvs_pos_encode_one(client_tok, "t-users", 7, (p + 1) % 12, 5);
    hm.table = TABLE;
    hm.n_keys = 8;
    hm.keys = keys;
    mq.command_case = KVS__COMMAND_REQUEST__COMMAND_HMGET;
    mq.hmget = &hm;
    mq.min_position = (ProtobufCBinaryData){cn, client_tok};
    mq.accept_stale = 1;
    clear_sent();
    rd = route_req(&mq);
    CHECK(fx.n_sent > 1);
    for (size_t i = 0; i < fx.n_sent; i++) {
        q = sent_request(i);
        CHECK(q->accept_stale);
        CHECK_EQ(kvs_pos_find(q->min_position.data, q->min_position.len, "t-users", 7, p), 41);
        CHECK_EQ(
            kvs_pos_find(q->min_position.data, q->min_position.len, "t-users", 7, (p + 1) % 12), 5);
    }
    router_req_free(rd);

    /* whole-table reads too; tables bound to no topic never */
    Kvs__Hgetall ga = KVS__HGETALL__INIT;
    Kvs__CommandRequest gq = KVS__COMMAND_REQUEST__INIT;
    ga.table = TABLE;
    gq.command_case = KVS__COMMAND_REQUEST__COMMAND_HGETALL;
    gq.hgetall = &ga;
    clear_sent();
    rd = route_req(&gq);
    CHECK_EQ(fx.n_sent, SHARDS);
    for (size_t i = 0; i < fx.n_sent; i++)
        CHECK_EQ(kvs_pos_find(sent_request(i)->min_position.data, sent_request(i)->min_position.len,
                              "t-users", 7, p),
                 41);
    router_req_free(rd);
    clear_sent();
    rd = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, "plain", key);
    CHECK(fx.sent[0].raw);
    CHECK_EQ(sent_request(0)->min_position.len, 0);
    router_req_free(rd);
}

KVS_TEST(session_holds_reads_behind_its_writes)
{
    setup_bound("murmur2", 12);
    fx.many = 1;
    const char *key = "user-7";
    uint32_t p = users_partition(key);
    router_req_t *w = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, key);
    CHECK_EQ(fx.n_sent, 1);
    size_t wpart = 0;
    /* a read of the table while the write is in flight is held, and so is
     * everything after it, bound or not */
    router_req_t *r1 = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, TABLE, key);
    router_req_t *r2 = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, "plain", key);
    CHECK_EQ(fx.n_sent, 1);
    CHECK(r1->held && r1->held_read && r2->held && !r2->held_read);
    CHECK(fx.held > 0);
    router_route_release(&fx.r); /* nothing may go yet */
    CHECK_EQ(fx.n_sent, 1);
    /* a read of an unbound table with nothing held goes at once: tested by
     * the other cases; here the write is answered, then the held go, in
     * order, the first with the write's position */
    uint8_t tok[KVS_POS_ONE_MAX];
    size_t n = kvs_pos_encode_one(tok, "t-users", 7, p, 3);
    reply_with_position(wpart, tok, n);
    CHECK_EQ(fx.n_sent, 1);
    CHECK(kvs_list_linked(&fx.session.release_link));
    router_route_release(&fx.r);
    CHECK_EQ(fx.n_sent, 3);
    CHECK(!r1->held && !r2->held);
    CHECK_EQ(fx.held, 0);
    Kvs__CommandRequest *q = sent_request(1);
    CHECK_EQ(q->hget->key.len, strlen(key));
    CHECK_EQ(kvs_pos_find(q->min_position.data, q->min_position.len, "t-users", 7, p), 3);
    q = sent_request(2);
    CHECK_STR(q->hget->table, "plain");
    CHECK_EQ(q->min_position.len, 0);
    router_req_free(w);
    router_req_free(r1);
    router_req_free(r2);
}

KVS_TEST(session_release_stops_at_the_next_write)
{
    setup_bound("murmur2", 12);
    fx.many = 1;
    router_req_t *w1 = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, "a");
    router_req_t *r1 = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, TABLE, "a");
    router_req_t *w2 = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, "b");
    router_req_t *r2 = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, TABLE, "b");
    CHECK_EQ(fx.n_sent, 1);
    CHECK(r1->held && w2->held && r2->held);
    reply_with_position(0, NULL, 0); /* answered without a position: still released */
    router_route_release(&fx.r);
    /* r1 and w2 go; r2 waits for w2 */
    CHECK_EQ(fx.n_sent, 3);
    CHECK(!r1->held && !w2->held && r2->held);
    CHECK_EQ(fx.session.writes, 1);
    reply_failure(2, "shard 1 is unavailable"); /* w2 fails: the read goes anyway */
    router_route_release(&fx.r);
    CHECK_EQ(fx.n_sent, 4);
    CHECK(!r2->held);
    CHECK_EQ(fx.session.writes, 0);
    router_req_free(w1);
    router_req_free(r1);
    router_req_free(w2);
    router_req_free(r2);
}

/* Held requests wait while the client's answers are at its high-water
 * mark, as its frames do: the fair share bounds the work at the workers,
 * not the answers' bytes, and a client pipelining large answers without
 * reading them was sent all of them (and closed past the limit). */
KVS_TEST(session_release_waits_for_the_clients_output)
{
    setup_bound("murmur2", 12);
    fx.many = 1;
    router_req_t *w = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, "a");
    router_req_t *r1 = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, TABLE, "a");
    router_req_t *r2 = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, "plain", "b");
    CHECK(r1->held && r2->held);
    reply_with_position(0, NULL, 0);
    fx.output_full = 1;
    router_route_release(&fx.r);
    CHECK_EQ(fx.n_sent, 1); /* nothing goes while the output is full */
    CHECK(r1->held && r2->held);
    fx.output_full = 0;
    router_route_resume(&fx.r, &fx.session); /* its output drained */
    router_route_release(&fx.r);
    CHECK_EQ(fx.n_sent, 3);
    CHECK(!r1->held && !r2->held);
    CHECK_EQ(fx.held, 0);
    router_req_free(w);
    router_req_free(r1);
    router_req_free(r2);
}

/* Answers sent part `i` with 200 and one binary value of `len` bytes. */
static void reply_value_of(size_t i, size_t len)
{
    static uint8_t big[4u << 20];
    CHECK(len <= sizeof(big));
    Kvs__Value v = KVS__VALUE__INIT, *vp = &v;
    v.kind_case = KVS__VALUE__KIND_BINARY_VALUE;
    v.binary_value = (ProtobufCBinaryData){len, big};
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    r.status = 200;
    r.n_values = 1;
    r.values = &vp;
    fx.n_completed = 0; /* the case keeps its requests in reqs[] */
    reply(i, &r);
    router_route_release(&fx.r);
}

/* A connection that pipelines reads of values of megabytes (a few bytes
 * of request each) had a thousand of them at a worker, gigabytes of
 * answers that every client of the shard waited behind. A value read
 * costs what its answers turned out to be: 64 KiB a key until the first
 * answer, then one at a time at 4 MiB, then back to one unit once the
 * answers are small again. */
KVS_TEST(fair_share_prices_value_reads_by_their_answers)
{
    setup_bound("murmur2", 12);
    fx.many = 1;
    enum { N = 150 };
    router_req_t *reqs[N];
    char key[16];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        reqs[i] = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, "plain", key);
    }
    /* 1 + 16 units each until an answer says more: 61 go, below 1,024 */
    CHECK_EQ(fx.n_sent, 61);
    for (size_t i = 0; i < 61; i++)
        reply_value_of(i, 4u << 20);
    /* the held go one at a time now (1,025 units: alone below the least share) */
    CHECK_EQ(fx.n_sent, 62);
    reply_value_of(61, 4u << 20);
    CHECK_EQ(fx.n_sent, 63);
    /* small answers bring the price down a quarter of the way each time:
     * 4 MiB to below 64 KiB (16 at once) takes about fifteen */
    size_t answered = 62, rounds = 0;
    while (fx.n_sent - answered < 16 && rounds < 40) {
        reply_value_of(answered++, 10);
        rounds++;
    }
    CHECK(rounds >= 10 && rounds <= 20);
    size_t before = fx.n_sent;
    while (answered < fx.n_sent)
        reply_value_of(answered++, 10);
    CHECK_EQ(fx.n_sent, (size_t)N); /* the rest went as one-unit reads */
    CHECK(fx.n_sent > before);
    for (int i = 0; i < N; i++)
        router_req_free(reqs[i]);
    fx.session.at_workers = 0;
    fx.r.busy_sessions = 0;
}

/* Whole-table reads are priced by their answers too, per part: 256 KiB
 * until an answer says more, and one refused as too large counts as
 * max_frame (the worker read that far before it gave up). 8 clients
 * pipelining Hgetalls of tables past max_frame held others for seconds
 * at one unit each. */
KVS_TEST(fair_share_prices_whole_table_reads_by_their_answers)
{
    setup_bound("murmur2", 12);
    fx.many = 1;
    enum { N = 10 };
    router_req_t *reqs[N];
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    Kvs__Hgetall g = KVS__HGETALL__INIT;
    g.table = "plain";
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HGETALL;
    q.hgetall = &g;
    for (int i = 0; i < N; i++)
        reqs[i] = route_req(&q);
    /* (1 + 64) units a part, SHARDS parts: 4 requests go below 1,024 */
    CHECK_EQ(fx.n_sent, 4u * SHARDS);
    size_t answered = 0;
    while (answered < 4u * SHARDS) {
        fx.n_completed = 0;
        reply_status(answered++, KVS_STATUS_TOO_LARGE, "too large");
        router_route_release(&fx.r);
    }
    /* now 1 + 1,024 units a part: one request at a time */
    CHECK_EQ(fx.n_sent, 5u * SHARDS);
    while (answered < 5u * SHARDS) {
        fx.n_completed = 0;
        reply_status(answered++, KVS_STATUS_TOO_LARGE, "too large");
        router_route_release(&fx.r);
    }
    CHECK_EQ(fx.n_sent, 6u * SHARDS);
    while (answered < fx.n_sent) {
        fx.n_completed = 0;
        reply_status(answered++, KVS_STATUS_TOO_LARGE, "too large");
        router_route_release(&fx.r);
    }
    CHECK_EQ(fx.n_sent, (size_t)N * SHARDS); /* every one answered in the end */
    for (int i = 0; i < N; i++)
        router_req_free(reqs[i]);
    fx.session.at_workers = 0;
    fx.r.busy_sessions = 0;
}

/* A client that pipelines and closes at once left its work at the worker
 * uncounted: each new connection then had a share of its own, and the
 * work ahead of everyone grew with the connections (probe SS: 152 s).
 * Orphaned work keeps counting until done: meanwhile a newcomer sends
 * only its floor's worth. */
KVS_TEST(fair_share_counts_work_of_clients_gone)
{
    setup_bound("murmur2", 12);
    fx.many = 1;
    enum { N = 61, M = 20 };
    router_req_t *gone[N], *next[M];
    char key[16];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "g%d", i);
        gone[i] = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, "plain", key);
    }
    CHECK_EQ(fx.n_sent, (size_t)N);          /* 17 units each: 1,037 */
    router_route_forget(&fx.r, &fx.session); /* its client closed */
    for (int i = 0; i < N; i++)
        router_route_orphan(&fx.r, gone[i]);
    CHECK_EQ(fx.r.orphan_units, 17u * N);
    CHECK_EQ(fx.session.at_workers, 0u);
    for (int i = 0; i < M; i++) { /* a new client (the same session, emptied) */
        snprintf(key, sizeof(key), "n%d", i);
        next[i] = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, "plain", key);
    }
    CHECK_EQ(fx.n_sent, (size_t)N + 1); /* the floor: one, the rest held */
    for (size_t i = 0; i < N; i++)      /* the orphans are answered and free themselves */
        reply_value_of(i, 10);
    CHECK_EQ(fx.r.orphan_units, 0u);
    reply_value_of(N, 10); /* the newcomer's first: the share is whole again */
    CHECK(fx.n_sent > (size_t)N + 2);
    for (size_t answered = N + 1; answered < fx.n_sent;)
        reply_value_of(answered++, 10);
    CHECK_EQ(fx.n_sent, (size_t)N + M); /* every one went, and was answered */
    for (int i = 0; i < M; i++)
        router_req_free(next[i]);
    fx.session.at_workers = 0;
    fx.r.busy_sessions = 0;
}

/* K keys of "plain" placed on `shard`, named into `names`. */
static void keys_on(uint32_t shard, char (*names)[16], ProtobufCBinaryData *kb, int k)
{
    for (int i = 0, n = 0; i < k; n++) {
        snprintf(names[i], sizeof(names[i]), "m%d", n);
        if (kvs_place_key_shard(names[i], strlen(names[i]), PARTITIONS, SHARDS) == shard) {
            kb[i] = bin(names[i]);
            i++;
        }
    }
}

/* An Hmget of `k` keys of "plain" on `shard` (one part): 16 units a key
 * on the first read's guess. */
static router_req_t *route_hmget_on(uint32_t shard, int k)
{
    static char names[512][16];
    static ProtobufCBinaryData kb[512];
    CHECK(k <= 512);
    keys_on(shard, names, kb, k);
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    Kvs__Hmget m = KVS__HMGET__INIT;
    m.table = "plain";
    m.n_keys = (size_t)k;
    m.keys = kb;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HMGET;
    q.hmget = &m;
    return route_req(&q);
}

/* The units of the parts in flight to shard s's replicas. */
static uint64_t shard_units(uint32_t s)
{
    uint64_t sum = 0;
    for (uint32_t i = 0; i < fx.r.sets[s].n; i++)
        sum += fx.r.links[fx.r.sets[s].first + i].units;
    return sum;
}

/* Answers the parts sent from `first` on (200): no shard has units left. */
static void answer_all_from(size_t first)
{
    for (size_t i = first; i < fx.n_sent; i++)
        reply_status(i, 200, "");
    for (uint32_t s = 0; s < SHARDS; s++)
        CHECK_EQ(shard_units(s), 0u);
}

/* Past ROUTER_SHARD_CAP units at a shard nobody sends it anything, not
 * even a connection with nothing at the workers (the least share of each
 * new connection added up without bound): the connection waits, with its
 * later requests behind it, until the shard's units come down. The cap
 * is the shard's own: the other shards' requests go meanwhile (a cap on
 * the total held every shard's behind one stopped worker until
 * router.timeout). */
static void cap_case(int client_closes)
{
    setup_bound("murmur2", 12);
    fx.many = 1;
    router_req_t *big = route_hmget_on(0, 300); /* past the cap alone */
    CHECK_EQ(fx.n_sent, 1u);
    CHECK(shard_units(0) >= ROUTER_SHARD_CAP);
    CHECK_EQ(fx.r.n_capped, 1u);
    router_route_forget(&fx.r, &fx.session); /* its client closed: the work stays */
    router_route_orphan(&fx.r, big);
    /* A new client (the same session, emptied); writes cost a unit each,
     * below the least share. */
    router_req_t *other = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, "plain", fx.keys[1][0]);
    CHECK(!other->held);
    CHECK_EQ(fx.n_sent, 2u); /* another shard's: it goes */
    router_req_t *at_cap =
        route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, "plain", fx.keys[0][0]);
    CHECK(at_cap->held);
    CHECK(kvs_list_first(&fx.r.sets[0].cap_wait) == &fx.session.cap_link &&
          kvs_list_last(&fx.r.sets[0].cap_wait) == &fx.session.cap_link);
    router_req_t *after = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, "plain", fx.keys[1][1]);
    CHECK(after->held); /* behind it, in order */
    CHECK_EQ(fx.n_sent, 2u);
    reply_status(1, 200, ""); /* shard 1's answer: shard 0 is still at its cap */
    router_route_release(&fx.r);
    CHECK(at_cap->held && after->held);
    CHECK_EQ(fx.n_sent, 2u);
    if (client_closes) { /* its client closes while held */
        router_route_forget(&fx.r, &fx.session);
        CHECK(!kvs_list_linked(&fx.session.cap_link));
        CHECK(kvs_list_empty(&fx.r.sets[0].cap_wait));
        router_req_free(at_cap); /* held: freed with its client */
        router_req_free(after);
        reply_status(0, 200, ""); /* the orphan frees itself once answered */
        CHECK_EQ(shard_units(0), 0u);
        CHECK_EQ(fx.r.n_capped, 0u);
        CHECK_EQ(fx.r.orphan_units, 0u);
        CHECK_EQ(fx.n_sent, 2u);
        router_req_free(other);
        return;
    }
    reply_status(0, 200, ""); /* the orphan is answered: shard 0 comes down */
    CHECK_EQ(fx.r.n_capped, 0u);
    CHECK(!kvs_list_linked(&fx.session.cap_link));
    router_route_release(&fx.r);
    CHECK(!at_cap->held && !after->held);
    CHECK_EQ(fx.n_sent, 4u);
    CHECK_EQ(fx.held, 0);
    answer_all_from(2);
    router_req_free(other);
    router_req_free(at_cap);
    router_req_free(after);
    fx.session.at_workers = 0;
    fx.r.busy_sessions = 0;
}

KVS_TEST(shard_cap_holds_its_shard_until_its_work_comes_down)
{
    cap_case(0);
}

/* A client held at the cap closes: it leaves the shard's list, and its
 * work at the worker counts until answered, then nothing is left. */
KVS_TEST(shard_cap_forgets_a_client_that_closes)
{
    cap_case(1);
}

/* A request held for another reason (here its session's share) whose
 * shard reached its cap meanwhile is held again when released, first in
 * its session's order and counted as before, and goes once the shard
 * comes down. */
KVS_TEST(shard_cap_holds_again_a_request_released_into_it)
{
    setup_bound("murmur2", 12);
    fx.many = 1;
    router_req_t *first = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, "plain", fx.keys[0][0]);
    router_req_t *big = route_hmget_on(1, 70); /* past the share alone (1,024) */
    CHECK_EQ(fx.n_sent, 2u);
    CHECK(fx.session.at_workers >= ROUTER_FAIR_TOTAL);
    router_req_t *held = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, "plain", fx.keys[0][1]);
    CHECK(held->held);
    CHECK(!kvs_list_linked(&fx.session.cap_link)); /* held for its share */
    ptrdiff_t kept = fx.held;
    CHECK(kept > 0);
    /* Other clients' requests bring shard 0 to its cap meanwhile: counted
     * here as part of `first`'s, so that its answer brings it down. */
    first->try0.cost += ROUTER_SHARD_CAP;
    fx.r.links[0].units += ROUTER_SHARD_CAP;
    fx.r.n_capped = 1;
    reply_status(1, 200, ""); /* the share is free: `held` is released, into the cap */
    router_route_release(&fx.r);
    CHECK(held->held);
    CHECK_EQ(fx.n_sent, 2u);
    CHECK(kvs_list_first(&fx.r.sets[0].cap_wait) == &fx.session.cap_link);
    CHECK_EQ(fx.held, kept); /* counted once, as before */
    CHECK(fx.session.held == held);
    router_req_t *behind =
        route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, "plain", fx.keys[1][0]);
    CHECK(behind->held);
    CHECK(fx.session.held == held && held->held_next == behind);
    reply_status(0, 200, ""); /* shard 0 comes down */
    CHECK_EQ(fx.r.n_capped, 0u);
    router_route_release(&fx.r);
    CHECK(!held->held && !behind->held);
    CHECK_EQ(fx.n_sent, 4u);
    CHECK_EQ(fx.held, 0);
    CHECK(fx.sent[2].shard == 0 && fx.sent[3].shard == 1); /* in order */
    answer_all_from(2);
    router_req_free(first);
    router_req_free(big);
    router_req_free(held);
    router_req_free(behind);
    fx.session.at_workers = 0;
    fx.r.busy_sessions = 0;
}

KVS_TEST(split_write_answer_merges_positions)
{
    setup_bound("murmur2", 12);
    fx.many = 1;
    const char *keys[] = {"a-1", "b-22", "c-333", "d-4444", "e-55555", "f-666666", "g-7"};
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    Kvs__Hmdel m = KVS__HMDEL__INIT;
    ProtobufCBinaryData kb[7];
    for (int i = 0; i < 7; i++)
        kb[i] = bin(keys[i]);
    m.table = TABLE;
    m.n_keys = 7;
    m.keys = kb;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HMDEL;
    q.hmdel = &m;
    router_req_t *req = route_req(&q);
    CHECK(fx.n_sent > 1);
    CHECK_EQ(fx.session.writes, 1);
    /* each part answers its keys with a position of its own partition */
    for (size_t i = 0; i < fx.n_sent; i++) {
        Kvs__CommandRequest *sq = sent_request(i);
        Kvs__Value empty = KVS__VALUE__INIT, *vp[7];
        for (int k = 0; k < 7; k++)
            vp[k] = &empty;
        uint8_t tok[KVS_POS_ONE_MAX];
        size_t n = kvs_pos_encode_one(tok, "t-users", 7, fx.sent[i].shard, 100 + i);
        Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
        r.status = 200;
        r.n_values = sq->hmdel->n_keys;
        r.values = vp;
        r.position = (ProtobufCBinaryData){n, tok};
        reply(i, &r);
    }
    CHECK(req->done);
    Kvs__CommandResponse *a =
        kvs__command_response__unpack(&fx.arena.pb, req->resp.len - 4, req->resp.data + 4);
    CHECK(a != NULL && a->status == 200 && a->n_values == 7);
    for (size_t i = 0; i < fx.n_sent; i++) {
        CHECK_EQ(kvs_pos_find(a->position.data, a->position.len, "t-users", 7, fx.sent[i].shard),
                 (int64_t)(100 + i));
        CHECK_EQ(router_session_get(&fx.session, fx.cfg, &fx.cfg->bindings[0], fx.sent[i].shard),
                 (int64_t)(100 + i));
    }
    CHECK_EQ(fx.session.writes, 0);
    router_req_free(req);
}

/* ---- replicas: choice, retries, the budget ----------------------------------------- */

/* Nodes a (this one) and b both serve every shard: shard s's replicas are
 * links 2s (a, local: its unix socket) and 2s + 1 (b). TABLE is bound to
 * a topic (placed by murmur2 over PARTITIONS, as unbound tables are);
 * "plain" is bound to none. */
static void setup_replicas(int percent, int burst)
{
    char yaml[1024];
    snprintf(yaml, sizeof(yaml),
             "node: {name: a}\ncluster:\n  shards: %d\n  partitions: %d\n  nodes:\n"
             "    - {name: a, address: \"127.0.0.1:9700\", shards: [0, 1, 2, 3]}\n"
             "    - {name: b, address: \"127.0.0.1:9800\", shards: [0, 1, 2, 3]}\n"
             "router: {retry_percent: %d, retry_burst: %d}\n"
             "kafka:\n  bindings:\n    - {topic: t-users, table: %s, partitions: %d}\n",
             SHARDS, PARTITIONS, percent, burst, TABLE, PARTITIONS);
    setup_yaml(yaml);
    CHECK_EQ(fx.r.n_links, 2 * SHARDS);
    for (uint32_t s = 0; s < SHARDS; s++) {
        fx.r.links[2 * s].addr.is_unix = 1;
        fx.r.links[2 * s].node = "a";
        fx.r.links[2 * s + 1].node = "b";
    }
}

static void route_key_in(const char *table, Kvs__CommandRequest__CommandCase c, const char *key)
{
    Kvs__Value v = vstr("value");
    Kvs__Kvpair pair = KVS__KVPAIR__INIT;
    Kvs__Hset hs = KVS__HSET__INIT;
    Kvs__Hget hg = KVS__HGET__INIT;
    if (c == KVS__COMMAND_REQUEST__COMMAND_HSET) {
        hs.table = (char *)table;
        hs.pair = &pair;
        pair.key = bin(key);
        pair.value = &v;
        route_cmd(c, &hs);
    } else {
        hg.table = (char *)table;
        hg.key = bin(key);
        route_cmd(c, &hg);
    }
}

KVS_TEST(replica_read_prefers_local_and_retries_elsewhere)
{
    setup_replicas(10, 100);
    const char *k = fx.keys[2][0];
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, k);
    CHECK_EQ(fx.n_sent, 1);
    CHECK_EQ(fx.sent[0].link, 4); /* shard 2, this node's own replica */
    CHECK(sent_is_client_payload(0));
    reply_status(0, 503, "catching up: lag 20000 records on topic t-users partition 3");
    check_pending();
    CHECK_EQ(fx.n_sent, 2); /* the same bytes, to node b */
    CHECK_EQ(fx.sent[1].link, 5);
    CHECK(sent_is_client_payload(1));
    Kvs__Value v = vstr("there");
    Kvs__Value *vp = &v;
    Kvs__CommandResponse ok = KVS__COMMAND_RESPONSE__INIT;
    ok.status = 200;
    ok.n_values = 1;
    ok.values = &vp;
    reply(1, &ok);
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 200);
    check_str(r->values[0], "there");
    CHECK_EQ(fx.r.budget.retries, 1);
    CHECK_EQ(fx.r.budget.reads, 1);
    /* The local replica failed a request: it is avoided for a while. */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[2][1]);
    CHECK_EQ(fx.sent[0].link, 5);
}

KVS_TEST(replica_read_fails_once_every_replica_failed)
{
    setup_replicas(10, 100);
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[1][0]);
    CHECK_EQ(fx.sent[0].link, 2);
    reply_failure(0, "shard 1 is unavailable: no answer within router.timeout");
    CHECK_EQ(fx.n_sent, 2);
    CHECK_EQ(fx.sent[1].link, 3);
    reply_failure(1, "shard 1 is unavailable: worker closed the connection");
    CHECK_EQ(fx.n_sent, 2); /* nobody left to ask */
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 503);
    CHECK(strstr(r->message, "worker closed the connection") != NULL);
    /* A replica whose link is down is skipped at once, at no cost. */
    router_link_trust(&fx.r.links[2]);
    router_link_trust(&fx.r.links[3]);
    fx.r.links[2].up = 0;
    uint64_t retries = fx.r.budget.retries;
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[1][1]);
    CHECK_EQ(fx.n_sent, 1);
    CHECK_EQ(fx.sent[0].link, 3);
    CHECK_EQ(fx.r.budget.retries, retries);
}

/* A read whose connection sent a write of its table after it is not
 * retried on another replica: that replica may have applied the later
 * write, and the read would answer with its connection's future. Its
 * failure stands. */
KVS_TEST(replica_read_before_a_write_of_its_table_is_not_retried)
{
    setup_replicas(10, 100);
    fx.many = 1;
    router_req_t *rd = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, TABLE, fx.keys[2][0]);
    router_req_t *w = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, fx.keys[2][0]);
    CHECK_EQ(fx.n_sent, 2);
    CHECK(w->bound_write);
    rd->next = w; /* the client's FIFO: the write came after the read */
    size_t i = fx.sent[0].len < fx.sent[1].len ? 0 : 1; /* the read is the shorter */
    uint64_t retries = fx.r.budget.retries;
    reply_status(i, 503, "catching up: lag 20000 records on topic t-users partition 3");
    CHECK_EQ(fx.n_sent, 2); /* not sent again */
    CHECK_EQ(fx.r.budget.retries, retries);
    CHECK(rd->done);
    Kvs__CommandResponse *a =
        kvs__command_response__unpack(&fx.arena.pb, rd->resp.len - 4, rd->resp.data + 4);
    CHECK(a != NULL && a->status == 503);
    reply_status(1 - i, 200, ""); /* the write's answer: the session holds no more reads */
    rd->next = NULL;
    router_req_free(rd);
    router_req_free(w);
    /* So too when the write was answered first (applied: the other replica
     * may well have it), while the read waits in the FIFO before it. */
    clear_sent();
    rd = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, TABLE, fx.keys[2][1]);
    w = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, fx.keys[2][1]);
    CHECK_EQ(fx.n_sent, 2);
    rd->next = w;
    i = fx.sent[0].len < fx.sent[1].len ? 0 : 1;
    reply_status(1 - i, 200, "");
    CHECK(!w->bound_write); /* answered: no longer in flight */
    reply_status(i, 503, "catching up: lag 20000 records on topic t-users partition 3");
    CHECK_EQ(fx.n_sent, 2);
    CHECK(rd->done);
    rd->next = NULL;
    router_req_free(rd);
    CHECK_EQ(fx.session.queued, 1); /* the write is still in the FIFO */
    router_req_free(w);
    CHECK_EQ(fx.session.queued, 0); /* none left: a failed read walks nothing */
}

KVS_TEST(replica_split_read_retries_its_part)
{
    setup_replicas(10, 100);
    const char *keys[] = {fx.keys[0][0], fx.keys[3][0]};
    route_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, 2, keys);
    CHECK_EQ(fx.n_sent, 2);
    size_t p3 = fx.sent[0].shard == 3 ? 0 : 1, p0 = 1 - p3;
    CHECK_EQ(fx.sent[p3].link, 6);
    reply_values_from_keys(p0);
    reply_status(p3, 503, "behind by 3 records");
    CHECK_EQ(fx.n_sent, 3);
    CHECK_EQ(fx.sent[2].link, 7);
    CHECK_EQ(fx.sent[2].len, fx.sent[p3].len);
    CHECK(memcmp(fx.sent[2].bytes, fx.sent[p3].bytes, fx.sent[2].len) == 0);
    reply_values_from_keys(2);
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 200);
    CHECK_EQ(r->n_values, 2);
    check_text_of(r->values[1], "v", keys[1], strlen(keys[1]));
}

KVS_TEST(replica_writes_go_to_one_live_replica_and_are_never_resent)
{
    setup_replicas(10, 100);
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][0]);
    CHECK_EQ(fx.n_sent, 1);
    CHECK_EQ(fx.sent[0].link, 0); /* local first */
    reply_failure(0, "shard 0 is unavailable: worker closed the connection");
    CHECK_EQ(fx.n_sent, 1); /* it may have been applied: not sent again */
    check_status(answer_async(), 503);
    /* With the local link down, the write goes to the other replica once
     * the first one's producer can no longer hold it (router.timeout). */
    fx.r.links[0].up = 0;
    CHECK(fx.session.wpin != NULL);
    fx.session.wpin[0] = 0;
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][1]);
    CHECK_EQ(fx.n_sent, 1);
    CHECK_EQ(fx.sent[0].link, 1);
    /* Every replica down: 503 at once, naming the shard. */
    fx.r.links[1].up = 0;
    snprintf(fx.r.links[1].last_error, sizeof(fx.r.links[1].last_error), "connection refused");
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][2]);
    CHECK_EQ(fx.n_sent, 0);
    Kvs__CommandResponse *r = answer_sync();
    check_status(r, 503);
    CHECK(strstr(r->message, "shard 0 is unavailable: connection refused (none of its 2 "
                             "replicas took the request") != NULL);
}

/* Two replicas, neither this node's (a routing node): a connection's
 * writes to a shard all go to one of them, so pipelined writes of a key
 * reach the topic in the order sent (taken in turn, they raced through
 * two producers and the first could land last); reads take turns. */
KVS_TEST(replica_writes_of_a_connection_keep_to_one_replica)
{
    setup_replicas(10, 100);
    fx.r.links[0].addr.is_unix = 0;
    for (uint32_t pref = 0; pref < 2; pref++) {
        fx.session.replica_pref = pref;
        for (int i = 0; i < 3; i++) {
            route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][i]);
            CHECK_EQ(fx.n_sent, 1);
            CHECK_EQ(fx.sent[0].link, pref);
            reply_status(0, 200, "");
            check_status(answer_async(), 200);
        }
    }
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[0][0]);
    uint32_t read0 = fx.sent[0].link;
    reply_status(0, 404, "");
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[0][1]);
    CHECK_EQ(fx.sent[0].link, 1 - read0);
    reply_status(0, 404, "");
    /* Its replica down: the other takes its writes. */
    fx.r.links[1].up = 0;
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][3]);
    CHECK_EQ(fx.sent[0].link, 0);
}

KVS_TEST(replica_unbound_writes_refused)
{
    setup_replicas(10, 100);
    route_key_in("plain", KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[1][0]);
    CHECK_EQ(fx.n_sent, 0);
    Kvs__CommandResponse *r = answer_sync();
    check_status(r, 400);
    CHECK(strstr(r->message, "Hset: table \"plain\" is bound to no Kafka topic, and shard 1 has "
                             "2 replicas") != NULL);
    CHECK(strstr(r->message, "Bind the table to a topic (kafka.bindings)") != NULL);
    const char *keys[] = {fx.keys[0][0], fx.keys[2][0]};
    Kvs__Hmdel m = KVS__HMDEL__INIT;
    ProtobufCBinaryData kb[2] = {bin(keys[0]), bin(keys[1])};
    m.table = "plain";
    m.n_keys = 2;
    m.keys = kb;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_HMDEL, &m);
    CHECK_EQ(fx.n_sent, 0);
    check_status(answer_sync(), 400);
    /* Reads of unbound tables are served as ever. */
    route_key_in("plain", KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[1][0]);
    CHECK_EQ(fx.n_sent, 1);
}

/* A bound table is its topic's: Hclear is refused before any shard is
 * asked, and so is one of an unbound table on shards with replicas. */
KVS_TEST(hclear_refused_on_bound_and_replicated_tables)
{
    setup_bound("murmur2", (int)PARTITIONS);
    route_hclear(TABLE);
    CHECK_EQ(fx.n_sent, 0);
    Kvs__CommandResponse *r = answer_sync();
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "is bound to Kafka topic t-users");
    CHECK_CONTAINS(r->message, "Hdel or Hmdel");
    teardown();
    setup_replicas(10, 100);
    route_hclear("plain");
    CHECK_EQ(fx.n_sent, 0);
    r = answer_sync();
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "Hclear: table \"plain\" is bound to no Kafka topic, and shard 0 "
                               "has 2 replicas");
}

KVS_TEST(replica_info_shows_retries)
{
    setup_replicas(10, 100);
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[0][0]);
    reply_status(0, 503, "starting");
    reply_status(1, 404, "not found");
    Kvs__Info info = KVS__INFO__INIT;
    route_cmd(KVS__COMMAND_REQUEST__COMMAND_INFO, &info);
    CHECK_EQ(fx.n_sent, SHARDS);
    ProtobufCBinaryData kb[1];
    char name[SHARDS][32];
    for (size_t i = 0; i < SHARDS; i++) {
        snprintf(name[i], sizeof(name[i]), "shard.%03u.tables", fx.sent[i].shard);
        kb[0] = bin(name[i]);
        reply_pairs(i, 1, kb, NULL, 0);
    }
    Kvs__CommandResponse *r = answer_async();
    check_status(r, 200);
    CHECK_EQ(r->n_pairs, SHARDS + 3);
    CHECK(bin_is(r->pairs[0]->key, "router.replica_reads", 20));
    CHECK_EQ(r->pairs[0]->value->integer_value, 1 + SHARDS); /* the Hget, and the Info's parts */
    CHECK(bin_is(r->pairs[1]->key, "router.replica_retries", 22));
    CHECK_EQ(r->pairs[1]->value->integer_value, 1);
    CHECK(bin_is(r->pairs[2]->key, "router.replica_retries_refused", 30));
    CHECK_EQ(r->pairs[2]->value->integer_value, 0);
    CHECK(bin_is(r->pairs[3]->key, "shard.000.tables", 16));
}

KVS_TEST(replica_retry_budget)
{
    setup_replicas(0, 1); /* one retry in the bucket, no deposits */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[0][0]);
    reply_status(0, 503, "starting");
    CHECK_EQ(fx.n_sent, 2);
    reply_status(1, 404, "not found");
    check_status(answer_async(), 404);
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[1][0]);
    reply_status(0, 503, "starting");
    CHECK_EQ(fx.n_sent, 1); /* the budget is spent */
    check_status(answer_async(), 503);
    CHECK_EQ(fx.r.budget.retries, 1);
    CHECK_EQ(fx.r.budget.refused, 1);
    /* Deposits: 50% of reads, so two reads buy one retry. */
    router_budget_t b;
    router_budget_init(&b, 50, 2);
    CHECK(router_budget_take(&b) && router_budget_take(&b) && !router_budget_take(&b));
    router_budget_deposit(&b);
    CHECK(!router_budget_take(&b));
    router_budget_deposit(&b);
    CHECK(router_budget_take(&b));
    for (int i = 0; i < 100; i++)
        router_budget_deposit(&b);
    CHECK(router_budget_take(&b) && router_budget_take(&b) && !router_budget_take(&b)); /* cap */
}

/* A link whose own Ping to its new worker is unanswered (router_link: a
 * reconnect's hello) counts as avoided, even once its avoidance ran out:
 * what a client sent behind the Ping would fail with it. */
/* The cap is each replica's own (its link's units): a read goes to a
 * replica below it, avoided or not, before one at it, and finds the shard
 * capped only when every replica that is up is; a write keeps to its
 * connection's replica, and finds the shard capped when that one is. */
KVS_TEST(replica_pick_prefers_a_replica_below_its_cap)
{
    router_link_t links[2];
    memset(links, 0, sizeof(links));
    router_set_t set = {.first = 0, .n = 2, .rr = 0};
    links[0].up = links[1].up = 1;
    links[0].addr.is_unix = 1; /* this node's own worker */
    links[0].units = ROUTER_SHARD_CAP;
    CHECK_EQ(router_replica_pick(links, &set, 0, 1000, -1, ROUTER_SHARD_CAP), 1);
    CHECK_EQ(router_replica_pick(links, &set, 0, 1000, -1, 0), 0); /* no cap: local first */
    CHECK_EQ(router_replica_pick(links, &set, 0, 1000, 0, ROUTER_SHARD_CAP), 0); /* a write */
    CHECK(!router_replica_capped(links, &set, 1000, -1, ROUTER_SHARD_CAP));
    CHECK(router_replica_capped(links, &set, 1000, 0, ROUTER_SHARD_CAP));
    CHECK(router_replica_capped(links, &set, 1000, 1, ROUTER_SHARD_CAP)); /* own first too */
    links[0].addr.is_unix = 0; /* a routing node: a write from replica 1 keeps to it */
    CHECK(!router_replica_capped(links, &set, 1000, 1, ROUTER_SHARD_CAP));
    CHECK_EQ(router_replica_pick(links, &set, 0, 1000, 1, ROUTER_SHARD_CAP), 1);
    links[0].addr.is_unix = 1;
    links[1].avoid_ms = 500; /* avoided, below its cap: still before one at it */
    links[1].avoid_until = 1500;
    CHECK_EQ(router_replica_pick(links, &set, 0, 1000, -1, ROUTER_SHARD_CAP), 1);
    CHECK(!router_replica_capped(links, &set, 1000, -1, ROUTER_SHARD_CAP));
    /* The write's replica is avoided: it goes to the healthy one, at its
     * cap or not. */
    links[0].units = ROUTER_SHARD_CAP - 1;
    links[1].avoid_until = 0;
    links[1].units = ROUTER_SHARD_CAP;
    links[0].avoid_ms = 500;
    links[0].avoid_until = 1500;
    CHECK_EQ(router_replica_pick(links, &set, 0, 1000, 0, ROUTER_SHARD_CAP), 1);
    CHECK(router_replica_capped(links, &set, 1000, 0, ROUTER_SHARD_CAP));
    CHECK_EQ(router_replica_pick(links, &set, 0, 1000, -1, ROUTER_SHARD_CAP), 0);
    /* Every replica that is up at its cap: capped; a read not held (a
     * retry, a request over the cap) takes the healthy one at its cap
     * before one that is down. */
    links[0].avoid_until = 0;
    links[0].units = ROUTER_SHARD_CAP;
    CHECK(router_replica_capped(links, &set, 1000, -1, ROUTER_SHARD_CAP));
    links[0].up = 0;
    CHECK(router_replica_capped(links, &set, 1000, -1, ROUTER_SHARD_CAP));
    CHECK_EQ(router_replica_pick(links, &set, 0, 1000, -1, ROUTER_SHARD_CAP), 1);
    links[1].up = 0; /* none up: not capped (a send fails at once) */
    CHECK(!router_replica_capped(links, &set, 1000, -1, ROUTER_SHARD_CAP));
    CHECK(!router_replica_capped(links, &set, 1000, 0, ROUTER_SHARD_CAP));
}

/* A replica past its cap (a hung worker's requests keep their units until
 * router.timeout) takes no more reads while another is below it: they go
 * there, not held. Reads wait only once every replica is at its cap, and
 * go as soon as one comes down; a write waits for its own replica. */
KVS_TEST(replica_cap_holds_reads_only_when_every_replica_is_at_it)
{
    setup_replicas(10, 100);
    fx.many = 1;
    router_req_t *big[2];
    for (int i = 0; i < 2; i++) { /* each a client that sent it and closed */
        big[i] = route_hmget_on(0, 300);
        CHECK_EQ(fx.n_sent, (size_t)i + 1);
        CHECK_EQ(fx.sent[i].link, (uint32_t)i); /* the local one, then the one below its cap */
        CHECK(fx.r.links[i].units >= ROUTER_SHARD_CAP);
        CHECK_EQ(fx.r.n_capped, (uint32_t)i + 1);
        router_route_forget(&fx.r, &fx.session);
        router_route_orphan(&fx.r, big[i]);
    }
    router_req_t *read = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HGET, TABLE, fx.keys[0][0]);
    CHECK(read->held);
    CHECK(kvs_list_first(&fx.r.sets[0].cap_wait) == &fx.session.cap_link);
    reply_status(1, 200, ""); /* node b's replica comes down: the read goes there */
    CHECK(!fx.r.links[1].units && fx.r.n_capped == 1);
    router_route_release(&fx.r);
    CHECK(!read->held);
    CHECK_EQ(fx.n_sent, 3u);
    CHECK_EQ(fx.sent[2].link, 1u);
    reply_status(2, 404, "");
    /* A write keeps to its connection's replica (the local one, at its
     * cap): held, though node b's is below it. */
    fx.session.replica_pref = 0;
    router_req_t *write = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, fx.keys[0][1]);
    CHECK(write->held);
    CHECK_EQ(fx.n_sent, 3u);
    reply_status(0, 200, ""); /* the local replica comes down */
    CHECK_EQ(fx.r.n_capped, 0u);
    router_route_release(&fx.r);
    CHECK(!write->held);
    CHECK_EQ(fx.n_sent, 4u);
    CHECK_EQ(fx.sent[3].link, 0u);
    reply_status(3, 200, "");
    for (uint32_t i = 0; i < fx.r.n_links; i++)
        CHECK_EQ(fx.r.links[i].units, 0u);
    router_req_free(read);
    router_req_free(write);
    fx.session.at_workers = 0;
    fx.r.busy_sessions = 0;
}

/* Three writes of shard 0 pipelined: none held, all sent on `link`. */
static void pipeline_writes_to(uint32_t link)
{
    router_req_t *w[3];
    fx.n_completed = 0;
    clear_sent();
    for (int i = 0; i < 3; i++) {
        w[i] = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, fx.keys[0][i]);
        CHECK(!w[i]->held);
    }
    CHECK_EQ(fx.n_sent, 3u);
    for (size_t i = 0; i < 3; i++) {
        CHECK_EQ(fx.sent[i].link, link);
        reply_status(i, 200, "");
        router_req_free(w[i]);
    }
}

/* A connection's writes to a shard keep to one replica, so that they
 * reach the topic in the order sent. When that replica is avoided with a
 * write still in flight there, the next write waits for it rather than go
 * to the other replica, which could produce it first (both answered 200,
 * the older value kept); and a write that went to the other replica holds
 * the next until it is answered, once the connection's own replica is
 * back. Writes that all go to one replica, the connection's own or not,
 * never wait for each other. */
KVS_TEST(replica_writes_wait_rather_than_switch_replica_mid_flight)
{
    setup_replicas(10, 100);
    fx.many = 1;
    router_req_t *w[3];
    w[0] = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, fx.keys[0][0]);
    CHECK_EQ(fx.n_sent, 1u);
    CHECK_EQ(fx.sent[0].link, 0u); /* this node's own replica */
    fx.r.links[0].avoid_ms = 500;  /* it failed another request: avoided (the fixture's now is 0) */
    fx.r.links[0].avoid_until = 1000;
    w[1] = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, fx.keys[0][1]);
    CHECK(w[1]->held);
    CHECK_EQ(fx.n_sent, 1u);
    reply_status(0, 200, ""); /* the first is answered (which trusts the replica again) */
    fx.r.links[0].up = 0;     /* ... and its link goes down: the second goes to node b's */
    router_route_release(&fx.r);
    CHECK(!w[1]->held);
    CHECK_EQ(fx.n_sent, 2u);
    CHECK_EQ(fx.sent[1].link, 1u);
    CHECK_EQ(fx.session.wshard[0], 1u | 1u << ROUTER_WSHARD_COUNT); /* one, at replica 1 */
    fx.r.links[0].up = 1; /* up again: the third would go there */
    w[2] = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, fx.keys[0][2]);
    CHECK(w[2]->held);
    CHECK_EQ(fx.n_sent, 2u);
    reply_status(1, 200, "");
    CHECK_EQ(fx.session.wshard[0] & ((1u << ROUTER_WSHARD_COUNT) - 1), 0u);
    router_route_release(&fx.r);
    CHECK(!w[2]->held);
    CHECK_EQ(fx.n_sent, 3u);
    CHECK_EQ(fx.sent[2].link, 0u);
    reply_status(2, 200, "");
    CHECK_EQ(fx.session.writes, 0u);
    CHECK_EQ(fx.held, 0);
    for (int i = 0; i < 3; i++)
        router_req_free(w[i]);
    pipeline_writes_to(0); /* pipelined while its own replica is healthy: none waits */
    fx.r.links[0].up = 0;  /* ... nor while it is down (a node lost for hours) */
    pipeline_writes_to(1);
    fx.session.at_workers = 0;
    fx.r.busy_sessions = 0;
}

/* A write whose connection has writes to the shard in flight at a
 * replica goes there or nowhere: when that link is full (ELIMIT) it fails
 * unsent, saying why, rather than reach the topic through another replica
 * before them. A connection with none in flight goes on to the next. */
KVS_TEST(replica_write_behind_its_own_is_not_moved_off_a_full_link)
{
    setup_replicas(10, 100);
    fx.many = 1;
    router_req_t *w1 = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, fx.keys[0][0]);
    CHECK_EQ(fx.n_sent, 1u);
    CHECK_EQ(fx.sent[0].link, 0u);
    fx.full_link = 1; /* link 0 */
    router_req_t *w2 = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, fx.keys[0][1]);
    CHECK(w2->done);
    CHECK_EQ(fx.n_sent, 1u); /* not to node b's */
    CHECK(w2->resp.len > KVS_FRAME_HEADER);
    Kvs__CommandResponse *r = kvs__command_response__unpack(NULL, w2->resp.len - KVS_FRAME_HEADER,
                                                            w2->resp.data + KVS_FRAME_HEADER);
    CHECK(r != NULL);
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "shard 0 is overloaded");
    CHECK_CONTAINS(r->message, "at its replica on node a, where this connection's earlier "
                               "writes to it are in flight");
    kvs__command_response__free_unpacked(r, NULL);
    reply_status(0, 200, "");
    router_req_free(w1);
    router_req_free(w2);
    router_route_forget(&fx.r, &fx.session); /* a new connection: none in flight */
    router_req_t *w3 = route_key_req(KVS__COMMAND_REQUEST__COMMAND_HSET, TABLE, fx.keys[0][2]);
    CHECK(!w3->done);
    CHECK_EQ(fx.n_sent, 2u);
    CHECK_EQ(fx.sent[1].link, 1u);
    reply_status(1, 200, "");
    router_req_free(w3);
    fx.full_link = 0;
    fx.session.at_workers = 0;
    fx.r.busy_sessions = 0;
}

/* A worker's 503 to a write because Kafka did not acknowledge it (the
 * outcome unknown, no position: its producer may still put the record in
 * the topic) is not the replica's failure: it is not avoided, so the
 * connection's next write goes through the same producer, behind that
 * record, and not through another replica's, which could put it in the
 * topic first. A 503 that says nothing happened (a worker starting), or
 * one with a position (placed, not applied there), is avoided as before. */
KVS_TEST(replica_write_unacknowledged_by_kafka_keeps_its_replica)
{
    setup_replicas(10, 100);
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][0]);
    CHECK_EQ(fx.sent[0].link, 0u);
    reply_unknown(0, 503, "Hset: no acknowledgement from Kafka within 1600 ms (topic t-users)");
    check_status(answer_async(), 503);
    CHECK_EQ(fx.r.links[0].avoid_until, 0u);
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][1]);
    CHECK_EQ(fx.sent[0].link, 0u); /* the same replica */
    reply_status(0, 503, "starting: opening its environment");
    check_status(answer_async(), 503);
    CHECK(fx.r.links[0].avoid_until > 0);
    /* Avoided, but the first write's record may still land for
     * router.timeout: the next goes there all the same, and after that to
     * the other replica. */
    CHECK_EQ(fx.session.wpin[0], (uint64_t)fx.cfg->router_timeout_ms);
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][2]);
    CHECK_EQ(fx.sent[0].link, 0u);
    reply_status(0, 200, "");
    check_status(answer_async(), 200);
    fx.r.links[0].avoid_until = 1000; /* (the 200 trusted it again) */
    fx.r.links[0].avoid_ms = 500;
    fx.session.wpin[0] = 0;
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][2]);
    CHECK_EQ(fx.sent[0].link, 1u);
    /* Placed (a position) but not applied on that replica (its partition
     * diverged there): its failure, avoided. */
    fx.r.links[0].avoid_ms = 0;
    fx.r.links[0].avoid_until = 0;
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][3]);
    CHECK_EQ(fx.sent[0].link, 0u);
    Kvs__CommandResponse placed = KVS__COMMAND_RESPONSE__INIT;
    placed.status = 503;
    placed.message = "Hset: Kafka acknowledged the write, but topic t-users partition 3 is not "
                     "ingested by this shard (diverged)";
    placed.outcome_unknown = 1;
    placed.position = bin("\x01pos"); /* any token: only whether there is one counts */
    reply(0, &placed);
    check_status(answer_async(), 503);
    CHECK(fx.r.links[0].avoid_until > 0);
}

/* A write that ended with no clear outcome (the link lost with it in
 * flight, or an answer saying it may or may not be applied) may still be
 * put in the topic by that replica's producer, for up to router.timeout:
 * until then the connection's writes to the shard go there or nowhere
 * (503, saying why and for how long), so that none lands before it
 * through another replica. A write refused unsent, or answered, ends
 * nothing of the kind; nor does a new connection keep to it. */
KVS_TEST(replica_write_of_unknown_outcome_keeps_its_connection_there)
{
    setup_replicas(10, 100);
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][0]);
    CHECK_EQ(fx.sent[0].link, 0u);
    reply_status(0, 200, "");
    check_status(answer_async(), 200);
    CHECK(fx.session.wpin == NULL); /* answered: nothing to keep to */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][1]);
    reply_status(0, 400, "Hset: value too large");
    check_status(answer_async(), 400);
    CHECK(fx.session.wpin == NULL);
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][2]);
    reply_failure(0, "shard 0 is unavailable: router.timeout (5000 ms) passed");
    check_status(answer_async(), 503);
    CHECK(fx.session.wpin != NULL);
    CHECK_EQ(fx.session.wpin[0], (uint64_t)fx.cfg->router_timeout_ms); /* the fixture's now: 0 */
    CHECK_EQ(fx.session.wpin[3], 0u);
    CHECK(fx.r.links[0].avoid_until > 0);
    fx.r.links[0].up = 0;
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][3]);
    CHECK_EQ(fx.n_sent, 0u); /* not to node b's */
    Kvs__CommandResponse *r = answer_sync();
    check_status(r, 503);
    char want[200];
    snprintf(want, sizeof(want),
             "for %u ms more this connection's writes to it go there or nowhere",
             (unsigned)fx.cfg->router_timeout_ms);
    CHECK_CONTAINS(r->message, "at its replica on node a, whose producer may still put an "
                               "earlier write of this connection in the topic");
    CHECK_CONTAINS(r->message, want);
    /* Reads and other shards are not held to it. */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[0][0]);
    CHECK_EQ(fx.sent[0].link, 1u);
    reply_status(0, 200, "");
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[3][0]);
    CHECK_EQ(fx.sent[0].link, 6u);
    reply_status(0, 200, "");
    /* Up again, though avoided: the write goes there. */
    fx.r.links[0].up = 1;
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][4]);
    CHECK_EQ(fx.sent[0].link, 0u);
    reply_status(0, 200, "");
    check_status(answer_async(), 200);
    /* A new connection has no such write: it goes where writes go. */
    fx.r.links[0].avoid_ms = 500;
    fx.r.links[0].avoid_until = 1000;
    router_route_forget(&fx.r, &fx.session);
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][5]);
    CHECK_EQ(fx.sent[0].link, 1u);
    reply_status(0, 200, "");
    /* A write refused unsent (its link full) was never with a producer. */
    fx.r.links[0].avoid_ms = 0;
    fx.r.links[0].avoid_until = 0;
    fx.full_link = 1; /* link 0 */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][6]);
    fx.full_link = 0;
    CHECK_EQ(fx.sent[0].link, 1u); /* went on to node b's */
    reply_failure(0, "shard 0 is unavailable: worker closed the connection");
    CHECK_EQ(fx.session.wpin[0], (uint64_t)fx.cfg->router_timeout_ms);
    CHECK_EQ(fx.session.wshard[0] >> ROUTER_WSHARD_COUNT, 1u); /* kept to node b's now */
    fx.session.at_workers = 0;
    fx.r.busy_sessions = 0;
}

/* A write kept to a replica whose worker may hang (its link's own Ping
 * unanswered since a reconnect) is not sent behind the Ping: it would wait
 * it out, end of unknown outcome and pin its connection there again, so a
 * client retrying sooner than router.timeout would never get through. */
KVS_TEST(replica_write_kept_to_a_hung_worker_is_not_sent_there)
{
    setup_replicas(10, 100);
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][0]);
    CHECK_EQ(fx.sent[0].link, 0u);
    reply_failure(0, "shard 0 is unavailable: router.timeout (5000 ms) passed");
    check_status(answer_async(), 503);
    uint64_t pinned = fx.session.wpin[0];
    CHECK_EQ(pinned, (uint64_t)fx.cfg->router_timeout_ms);
    /* Its link reset and came up again, asking its worker with a Ping. */
    router_link_t *l = &fx.r.links[0];
    router_link_pending_t ping = {.ctx = l}, *fifo = l->fifo;
    uint32_t head = l->head, count = l->count;
    l->fifo = &ping;
    l->head = 0;
    l->count = 1;
    CHECK(router_link_asking(l));
    for (int i = 0; i < 3; i++) { /* retries: refused at once, the pin not renewed */
        route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][1]);
        CHECK_EQ(fx.n_sent, 0u);
        Kvs__CommandResponse *r = answer_sync();
        check_status(r, 503);
        CHECK(!r->outcome_unknown);
        CHECK_CONTAINS(r->message, "shard 0 is unavailable: its worker on node a has not "
                                   "answered since its link was reset");
        CHECK_CONTAINS(r->message, "go there or nowhere");
        CHECK_CONTAINS(r->message, "nothing was sent, retry shortly");
        CHECK_EQ(fx.session.wpin[0], pinned);
    }
    /* Reads go to node b's meanwhile; once the pin ran out, writes too. */
    route_single(KVS__COMMAND_REQUEST__COMMAND_HGET, fx.keys[0][0]);
    CHECK_EQ(fx.sent[0].link, 1u);
    reply_status(0, 200, "");
    fx.session.wpin[0] = 0;
    route_single(KVS__COMMAND_REQUEST__COMMAND_HSET, fx.keys[0][1]);
    CHECK_EQ(fx.sent[0].link, 1u);
    reply_status(0, 200, "");
    check_status(answer_async(), 200);
    l->fifo = fifo;
    l->head = head;
    l->count = count;
    fx.session.at_workers = 0;
    fx.r.busy_sessions = 0;
}

KVS_TEST(replica_pick_passes_over_a_link_asking_its_new_worker)
{
    router_link_t links[3];
    router_link_pending_t fifo[3];
    memset(links, 0, sizeof(links));
    memset(fifo, 0, sizeof(fifo));
    router_set_t set = {.first = 0, .n = 3, .rr = 0};
    for (int i = 0; i < 3; i++) {
        links[i].up = 1;
        links[i].fifo = &fifo[i];
        links[i].cap = 1;
        fifo[i].ctx = &links[i]; /* the link's own Ping, pending while count is 1 */
    }
    links[0].addr.is_unix = 1; /* this node's own worker */
    CHECK_EQ(router_replica_pick(links, &set, 0, 1000, -1, 0), 0);
    links[0].avoid_ms = 500;
    links[0].avoid_until = 900; /* ran out, but its Ping is unanswered */
    links[0].count = 1;
    CHECK(router_link_asking(&links[0]));
    fifo[2].ctx = &set; /* a client's request first: not asking */
    links[2].count = 1;
    CHECK(!router_link_asking(&links[2]));
    links[2].count = 0;
    int i = router_replica_pick(links, &set, 0, 1000, -1, 0);
    CHECK(i == 1 || i == 2);
    /* Nothing else healthy: an avoided replica is the last resort (before
     * one that is down), one not behind its Ping first, then the soonest. */
    links[1].avoid_ms = 8000;
    links[1].avoid_until = 9000;
    links[2].up = 0;
    CHECK_EQ(router_replica_pick(links, &set, 0, 1000, -1, 0), 1);
    links[1].count = 1;
    CHECK_EQ(router_replica_pick(links, &set, 0, 1000, -1, 0), 0);
    CHECK_EQ(router_replica_pick(links, &set, 1, 1000, -1, 0), 1);
    CHECK_EQ(router_replica_pick(links, &set, 3, 1000, -1, 0), 2);
    links[0].count = 0; /* answered, not 200: its avoidance ran out */
    CHECK_EQ(router_replica_pick(links, &set, 0, 1000, -1, 0), 0);
}

KVS_TEST_MAIN(KVS_CASE(replica_read_prefers_local_and_retries_elsewhere),
              KVS_CASE(replica_pick_passes_over_a_link_asking_its_new_worker),
              KVS_CASE(replica_pick_prefers_a_replica_below_its_cap),
              KVS_CASE(replica_writes_wait_rather_than_switch_replica_mid_flight),
              KVS_CASE(replica_write_behind_its_own_is_not_moved_off_a_full_link),
              KVS_CASE(replica_write_unacknowledged_by_kafka_keeps_its_replica),
              KVS_CASE(replica_write_of_unknown_outcome_keeps_its_connection_there),
              KVS_CASE(replica_write_kept_to_a_hung_worker_is_not_sent_there),
              KVS_CASE(replica_cap_holds_reads_only_when_every_replica_is_at_it),
              KVS_CASE(replica_read_fails_once_every_replica_failed),
              KVS_CASE(replica_read_before_a_write_of_its_table_is_not_retried),
              KVS_CASE(replica_split_read_retries_its_part),
              KVS_CASE(replica_writes_go_to_one_live_replica_and_are_never_resent),
              KVS_CASE(replica_writes_of_a_connection_keep_to_one_replica),
              KVS_CASE(replica_unbound_writes_refused), KVS_CASE(replica_retry_budget),
              KVS_CASE(replica_info_shows_retries),
              KVS_CASE(info_names_the_router_process_when_several), KVS_CASE(hlen_sums_every_shard),
              KVS_CASE(hclear_sums_every_shard), KVS_CASE(hclear_partly_done_says_which_shards),
              KVS_CASE(hclear_refused_everywhere_is_the_refusal),
              KVS_CASE(hclear_refused_on_bound_and_replicated_tables),
              KVS_CASE(single_key_forwarded_raw),
              KVS_CASE(split_parts_waiting_count_as_held_output), KVS_CASE(hmget_split_merge),
              KVS_CASE(hmset_split_merge), KVS_CASE(hmdel_split_merge),
              KVS_CASE(hmexist_split_merge), KVS_CASE(multi_key_on_one_shard_forwarded_raw),
              KVS_CASE(part_error_status_reaches_client), KVS_CASE(malformed_part_answer_is_500),
              KVS_CASE(split_hmset_budgets_fill_max_frame_by_value_bytes),
              KVS_CASE(split_hmdel_budgets_fill_max_frame_by_keys),
              KVS_CASE(split_write_asking_for_lengths_gives_each_part_its_whole_bound),
              KVS_CASE(split_write_refused_before_sending),
              KVS_CASE(split_write_refused_everywhere_is_413),
              KVS_CASE(split_write_partly_applied_is_207),
              KVS_CASE(split_write_part_that_may_have_written_is_not_said_unwritten),
              KVS_CASE(partial_answer_leaves_out_what_does_not_fit),
              KVS_CASE(unknown_split_write_answer_fits_max_frame),
              KVS_CASE(split_write_with_unknown_part_says_what_is_known),
              KVS_CASE(split_write_with_a_down_shard_says_it_wrote_nothing),
              KVS_CASE(write_too_large_to_send_is_413),
              KVS_CASE(oversized_part_answer_fails_that_request_only),
              KVS_CASE(info_too_large_on_a_shard_is_413),
              KVS_CASE(merged_info_over_max_frame_is_413), KVS_CASE(down_shard_is_503_at_once),
              KVS_CASE(down_shard_among_parts_is_503), KVS_CASE(link_failure_after_send_is_503),
              KVS_CASE(hgetall_merges_in_byte_order), KVS_CASE(merged_answer_over_max_frame_is_413),
              KVS_CASE(info_fans_out_and_merges), KVS_CASE(info_reports_an_unavailable_shard),
              KVS_CASE(hscan_walks_shards_in_turn),
              KVS_CASE(hscan_page_ends_before_a_shard_that_fails),
              KVS_CASE(hscan_page_ends_before_a_shard_at_its_cap),
              KVS_CASE(hscan_page_fits_the_routers_cursor_where_the_worker_had_none),
              KVS_CASE(hscan_forged_cursor_is_400),
              KVS_CASE(worker_commands_are_refused_saying_where_to_send_them),
              KVS_CASE(ping_answered_locally), KVS_CASE(bad_input_is_400_like_a_worker),
              KVS_CASE(orphaned_request_frees_itself),
              KVS_CASE(orphaned_split_write_records_every_parts_outcome),
              KVS_CASE(orphaned_hscan_page_does_not_go_on),
              KVS_CASE(hscan_page_goes_on_for_half_a_timeout_only),
              KVS_CASE(bound_table_placed_by_its_partitioner),
              KVS_CASE(unbound_table_beside_bindings_is_murmur2),
              KVS_CASE(none_hget_answered_by_the_shard_that_has_it), KVS_CASE(none_hget_failures),
              KVS_CASE(none_asks_only_shards_that_own_partitions),
              KVS_CASE(none_hmget_and_hmexist_merge_per_key), KVS_CASE(none_writes_are_refused),
              KVS_CASE(session_read_carries_its_writes_position),
              KVS_CASE(session_holds_reads_behind_its_writes),
              KVS_CASE(session_release_stops_at_the_next_write),
              KVS_CASE(session_release_waits_for_the_clients_output),
              KVS_CASE(fair_share_prices_value_reads_by_their_answers),
              KVS_CASE(fair_share_prices_whole_table_reads_by_their_answers),
              KVS_CASE(fair_share_counts_work_of_clients_gone),
              KVS_CASE(shard_cap_holds_its_shard_until_its_work_comes_down),
              KVS_CASE(shard_cap_forgets_a_client_that_closes),
              KVS_CASE(shard_cap_holds_again_a_request_released_into_it),
              KVS_CASE(split_write_answer_merges_positions))

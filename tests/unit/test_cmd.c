/*
 * Unit tests for node_cmd: every command's semantics, driven the way
 * node_server drives it. Each case opens a real node_store in a fresh
 * mkdtemp directory, packs a CommandRequest with protobuf-c, hands the
 * payload to node_cmd_frame and decodes the one response frame it appends.
 * The directory is removed as soon as the store is open: LMDB keeps working
 * on its open descriptors, and nothing is left behind even when a failed
 * CHECK aborts the process (atexit handlers do not run then).
 *
 * Turns: the server calls node_store_end_turn after each batch of requests
 * read in one loop turn. Cases call end_turn() where a turn would end, and
 * leave it out on purpose where they test read-your-writes inside a turn.
 *
 * Memory: decoded responses live in an arena that is closed at exit, so a
 * case may keep several responses at once; sanitizer builds see no leak.
 */
#include "kvs_copied.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_resp.h"
#include "kvs_test.h"
#include "node_cmd.h"

#include <unistd.h>

#define TABLE "users"

typedef struct {
    char dir[64];
    node_store_t *store;
    node_cmd_ctx_t ctx;
    kvs_arena_t resp_arena; /* decoded responses, for the whole case */
    size_t last_len;        /* payload bytes of the last response frame */
} fixture_t;

static fixture_t fx;

/* ---- fixture ---------------------------------------------------------------- */

static void remove_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx.dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", fx.dir);
}

/* Idempotent: also runs before the next case when all run in one process. */
static void teardown(void)
{
    if (fx.store == NULL)
        return;
    CHECK_EQ(node_store_close(fx.store), 0);
    fx.store = NULL;
    kvs_arena_close(&fx.ctx.arena);
    kvs_arena_close(&fx.resp_arena);
}

/* Opens a store for shard 3 and a command context with these limits. */
static void setup(size_t max_frame, uint32_t max_tables)
{
    char envdir[96], err[512] = "";
    static int registered;
    teardown();
    if (!registered++)
        atexit(teardown);
    snprintf(fx.dir, sizeof(fx.dir), "/tmp/kvs-test-cmd-XXXXXX");
    CHECK(mkdtemp(fx.dir) != NULL);
    snprintf(envdir, sizeof(envdir), "%s/shard-3", fx.dir);
    node_store_opts_t o = {
        .dir = envdir,
        .shard = 3,
        .placement = "test",
        .map_size = 8u << 20,
        .max_tables = max_tables,
        .sync = KVS_SYNC_NONE,
    };
    int rc = node_store_open(&o, &fx.store, err, sizeof(err));
    remove_dir(); /* LMDB goes on through its open descriptors */
    if (rc != 0)
        fprintf(stderr, "node_store_open: %s\n", err);
    CHECK_EQ(rc, 0);
    fx.ctx.store = fx.store;
    fx.ctx.max_frame = max_frame;
    fx.ctx.max_tables = max_tables;
    fx.ctx.shard = 3;
    fx.ctx.ingest = NULL;
    kvs_arena_init(&fx.ctx.arena);
    kvs_arena_init(&fx.resp_arena);
}

static void setup_default(void)
{
    setup(KVS_FRAME_DEFAULT_MAX, 16);
}

static void end_turn(void)
{
    CHECK_EQ(node_store_end_turn(fx.store), 0);
}

/* ---- running requests -------------------------------------------------------- */

/* Decodes the one frame `out` must hold (header + CommandResponse). */
static Kvs__CommandResponse *decode_one(const kvs_buf_t *out)
{
    int compressed = 1;
    CHECK(out->len >= KVS_FRAME_HEADER);
    uint32_t len = kvs_frame_get_header(out->data, &compressed);
    CHECK_EQ(compressed, 0);
    CHECK_EQ(out->len, KVS_FRAME_HEADER + len);
    fx.last_len = len;
    Kvs__CommandResponse *r =
        kvs__command_response__unpack(&fx.resp_arena.pb, len, out->data + KVS_FRAME_HEADER);
    CHECK(r != NULL);
    return r;
}

/* Runs raw payload bytes through node_cmd_frame. */
static Kvs__CommandResponse *run_raw(const uint8_t *p, size_t n)
{
    kvs_buf_t out;
    kvs_buf_init(&out);
    CHECK_EQ(node_cmd_frame(&fx.ctx, p, n, &out), 0);
    Kvs__CommandResponse *r = decode_one(&out);
    kvs_buf_free(&out);
    return r;
}

/* Packs `q` into malloc'd bytes (*n set); free the result. */
static uint8_t *pack_request(const Kvs__CommandRequest *q, size_t *n)
{
    *n = kvs__command_request__get_packed_size(q);
    uint8_t *p = malloc(*n ? *n : 1);
    CHECK(p != NULL);
    kvs__command_request__pack(q, p);
    return p;
}

static Kvs__CommandResponse *run(const Kvs__CommandRequest *q)
{
    size_t n;
    uint8_t *p = pack_request(q, &n);
    Kvs__CommandResponse *r = run_raw(p, n);
    free(p);
    return r;
}

/* Runs a request whose command is `c` with body `body`. */
static Kvs__CommandResponse *run_cmd(Kvs__CommandRequest__CommandCase c, void *body)
{
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    q.command_case = c;
    q.hget = body; /* the oneof members share storage */
    return run(&q);
}

/* ---- values and keys ---------------------------------------------------------- */

static ProtobufCBinaryData bin(const char *s)
{
    return (ProtobufCBinaryData){strlen(s), (uint8_t *)s};
}

/* Text of n bytes (it may hold U+0000). */
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

static Kvs__Value vbinary(const char *s)
{
    Kvs__Value v = KVS__VALUE__INIT;
    v.kind_case = KVS__VALUE__KIND_BINARY_VALUE;
    v.binary_value = (ProtobufCBinaryData){strlen(s), (uint8_t *)s};
    return v;
}

static Kvs__Value vint(int64_t i)
{
    Kvs__Value v = KVS__VALUE__INIT;
    v.kind_case = KVS__VALUE__KIND_INTEGER_VALUE;
    v.integer_value = i;
    return v;
}

static Kvs__Value vfloat(double d)
{
    Kvs__Value v = KVS__VALUE__INIT;
    v.kind_case = KVS__VALUE__KIND_FLOAT_VALUE;
    v.float_value = d;
    return v;
}

static Kvs__Value vbool(int b)
{
    Kvs__Value v = KVS__VALUE__INIT;
    v.kind_case = KVS__VALUE__KIND_BOOL_VALUE;
    v.bool_value = b;
    return v;
}

static void check_status(const Kvs__CommandResponse *r, uint32_t status)
{
    if (r->status != status)
        fprintf(stderr, "status %u: %s\n", r->status, r->message);
    CHECK_EQ(r->status, status);
}

/* The one value of a 200 answer (Hget, Hset, Hdel, Hexist). */
static const Kvs__Value *value0(const Kvs__CommandResponse *r)
{
    check_status(r, 200);
    CHECK_EQ(r->n_values, 1);
    return r->values[0];
}

static void check_text(const Kvs__Value *v, const char *s, size_t n)
{
    CHECK_EQ(v->kind_case, KVS__VALUE__KIND_STRING_VALUE);
    CHECK_EQ(v->string_value.len, n);
    CHECK(n == 0 || memcmp(v->string_value.data, s, n) == 0);
}

static void check_str(const Kvs__Value *v, const char *s)
{
    check_text(v, s, strlen(s));
}

static void check_empty(const Kvs__Value *v)
{
    CHECK_EQ(v->kind_case, KVS__VALUE__KIND__NOT_SET);
}

static void check_bool(const Kvs__Value *v, int b)
{
    CHECK_EQ(v->kind_case, KVS__VALUE__KIND_BOOL_VALUE);
    CHECK_EQ(v->bool_value, b);
}

static void check_key(ProtobufCBinaryData k, const void *want, size_t len)
{
    CHECK_EQ(k.len, len);
    CHECK(len == 0 || memcmp(k.data, want, len) == 0);
}

/* Byte order, shorter first on a common prefix (LMDB's default order). */
static int key_cmp(ProtobufCBinaryData a, ProtobufCBinaryData b)
{
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n > 0 ? memcmp(a.data, b.data, n) : 0;
    return c != 0 ? c : (a.len > b.len) - (a.len < b.len);
}

/* ---- commands ------------------------------------------------------------------ */

static Kvs__CommandResponse *hget(const char *t, const char *k)
{
    Kvs__Hget m = KVS__HGET__INIT;
    m.table = (char *)t;
    m.key = bin(k);
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HGET, &m);
}

static Kvs__CommandResponse *hset_key(const char *t, ProtobufCBinaryData k, Kvs__Value v)
{
    Kvs__Hset m = KVS__HSET__INIT;
    Kvs__Kvpair pair = KVS__KVPAIR__INIT;
    m.table = (char *)t;
    m.pair = &pair;
    pair.key = k;
    pair.value = &v;
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HSET, &m);
}

static Kvs__CommandResponse *hset(const char *t, const char *k, Kvs__Value v)
{
    return hset_key(t, bin(k), v);
}

/* Stores a string value and checks the write was accepted. */
static void put(const char *t, const char *k, const char *v)
{
    check_status(hset(t, k, vstr(v)), 200);
}

static Kvs__CommandResponse *hdel(const char *t, const char *k)
{
    Kvs__Hdel m = KVS__HDEL__INIT;
    m.table = (char *)t;
    m.key = bin(k);
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HDEL, &m);
}

static Kvs__CommandResponse *hexist(const char *t, const char *k)
{
    Kvs__Hexist m = KVS__HEXIST__INIT;
    m.table = (char *)t;
    m.key = bin(k);
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HEXIST, &m);
}

/* Hmget, Hmdel and Hmexist begin alike: {table, repeated keys}; Hmdel,
 * the largest (answer_budget follows), holds any of them. */
static Kvs__CommandResponse *multi(Kvs__CommandRequest__CommandCase c, const char *t, size_t n,
                                   const char *const *keys)
{
    ProtobufCBinaryData kb[16];
    CHECK(n <= 16);
    for (size_t i = 0; i < n; i++)
        kb[i] = bin(keys[i]);
    Kvs__Hmdel m;
    protobuf_c_message_init(c == KVS__COMMAND_REQUEST__COMMAND_HMDEL     ? &kvs__hmdel__descriptor
                            : c == KVS__COMMAND_REQUEST__COMMAND_HMEXIST ? &kvs__hmexist__descriptor
                                                                         : &kvs__hmget__descriptor,
                            &m);
    m.table = (char *)t;
    m.n_keys = n;
    m.keys = kb;
    return run_cmd(c, &m);
}

/* Hmset of keys[i] => values[i]. */
static Kvs__CommandResponse *hmset_values(const char *t, size_t n, const char *const *keys,
                                          Kvs__Value *values)
{
    Kvs__Kvpair pairs[16], *pp[16];
    CHECK(n <= 16);
    for (size_t i = 0; i < n; i++) {
        kvs__kvpair__init(&pairs[i]);
        pairs[i].key = bin(keys[i]);
        pairs[i].value = &values[i];
        pp[i] = &pairs[i];
    }
    Kvs__Hmset m = KVS__HMSET__INIT;
    m.table = (char *)t;
    m.n_pairs = n;
    m.pairs = pp;
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HMSET, &m);
}

static Kvs__CommandResponse *hmset(const char *t, size_t n, const char *const *keys,
                                   const char *const *vals)
{
    Kvs__Value values[16];
    CHECK(n <= 16);
    for (size_t i = 0; i < n; i++)
        values[i] = vstr(vals[i]);
    return hmset_values(t, n, keys, values);
}

static Kvs__CommandResponse *hgetall(const char *t)
{
    Kvs__Hgetall m = KVS__HGETALL__INIT;
    m.table = (char *)t;
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HGETALL, &m);
}

static Kvs__CommandResponse *hscan(const char *t, ProtobufCBinaryData cursor, uint32_t count)
{
    Kvs__Hscan m = KVS__HSCAN__INIT;
    m.table = (char *)t;
    m.cursor = cursor;
    m.count = count;
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HSCAN, &m);
}

/* Stores keys "k00000".."k<n-1>" with small integer values. */
static void fill_numbered(const char *t, int n)
{
    char key[16];
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "k%05d", i);
        check_status(hset(t, key, vint(i)), 200);
    }
    end_turn();
}

/* A string of `n` copies of `c` (malloc'd). */
static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    CHECK(s != NULL);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* ---- single-key commands ------------------------------------------------------------ */

KVS_TEST(hget_missing_is_404_naming_table)
{
    setup_default();
    Kvs__CommandResponse *r = hget(TABLE, "nobody");
    check_status(r, 404);
    CHECK_CONTAINS(r->message, "key \"nobody\" not found in table \"" TABLE "\"");
    CHECK_EQ(r->n_values, 0);
    put(TABLE, "alice", "x");
    end_turn();
    r = hget(TABLE, "bob"); /* table exists, key does not */
    check_status(r, 404);
    CHECK_CONTAINS(r->message, "key \"bob\" not found in table \"" TABLE "\"");
    /* A binary key is shown escaped (the message is UTF-8 text); the full
     * decoder's path (a request peek leaves alone) says the same. */
    Kvs__Hget m = KVS__HGET__INIT;
    m.table = TABLE;
    m.key = (ProtobufCBinaryData){4, (uint8_t *)"b\0\xff\""};
    r = run_cmd(KVS__COMMAND_REQUEST__COMMAND_HGET, &m);
    check_status(r, 404);
    CHECK_CONTAINS(r->message, "key \"b\\x00\\xff\\\"\" not found in table \"" TABLE "\"");
    /* Hget{table "x", key "b", table "users"}: table given twice, so only
     * the full decoder reads it (the last one counts). */
    static const uint8_t twice[] = {0x0a, 0x0d, 0x0a, 0x01, 'x', 0x12, 0x01, 'b',
                                    0x0a, 0x05, 'u',  's',  'e', 'r',  's'};
    kvs_peek_t pk;
    CHECK(kvs_msg_peek(twice, sizeof(twice), &pk) == 0);
    r = run_raw(twice, sizeof(twice));
    check_status(r, 404);
    CHECK_CONTAINS(r->message, "key \"b\" not found in table \"" TABLE "\"");
}

KVS_TEST(hset_returns_previous_value)
{
    setup_default();
    Kvs__CommandResponse *r = hset(TABLE, "alice", vstr("one"));
    check_status(r, 200);
    CHECK_EQ(r->n_values, 1);
    check_empty(r->values[0]);
    end_turn();
    r = hset(TABLE, "alice", vint(-7));
    CHECK_EQ(r->n_values, 1);
    check_str(r->values[0], "one");
    end_turn();
    r = hget(TABLE, "alice");
    check_status(r, 200);
    CHECK_EQ(r->n_values, 1);
    CHECK_EQ(r->values[0]->kind_case, KVS__VALUE__KIND_INTEGER_VALUE);
    CHECK_EQ(r->values[0]->integer_value, -7);
}

/* Hset of key => v with the table given twice ("x", then `t`): valid
 * protobuf (the last one counts) that kvs_msg_peek leaves to the full
 * decoder, so node_cmd packs the decoded Value again before storing it. */
static Kvs__CommandResponse *hset_full_path(const char *t, const char *key, Kvs__Value v)
{
    Kvs__Hset m = KVS__HSET__INIT;
    Kvs__Kvpair pair = KVS__KVPAIR__INIT;
    m.table = (char *)t;
    m.pair = &pair;
    pair.key = bin(key);
    pair.value = &v;
    uint8_t buf[256] = {0x22, 0, 0x0a, 0x01, 'x'};
    size_t n = kvs__hset__get_packed_size(&m);
    CHECK(n + 3 < 128);
    kvs__hset__pack(&m, buf + 5);
    buf[1] = (uint8_t)(n + 3);
    kvs_peek_t pk;
    CHECK(kvs_msg_peek(buf, n + 5, &pk) == 0);
    return run_raw(buf, n + 5);
}

KVS_TEST(text_with_nul_reads_back_whole)
{
    /* U+0000 inside string_value is valid UTF-8 and valid protobuf: the fast
     * path (Hset as sent), the full decoder (which packs decoded Values
     * again: Hset it cannot peek, Hmset) and every read keep it whole. */
    static const char a[] = "a\0b", b[] = "\0\0tail", c[] = "x\0", a2[] = "\0";
    setup_default();
    check_empty(value0(hset(TABLE, "a", vtext(a, 3))));
    check_empty(value0(hset_full_path(TABLE, "b", vtext(b, 6))));
    const char *keys[] = {"c", "d"};
    Kvs__Value vals[] = {vtext(c, 2), vint(INT64_MIN)};
    check_status(hmset_values(TABLE, 2, keys, vals), 200);
    end_turn();
    check_text(value0(hget(TABLE, "a")), a, 3);
    check_text(value0(hget(TABLE, "b")), b, 6);
    check_text(value0(hget(TABLE, "c")), c, 2);
    CHECK(value0(hget(TABLE, "d"))->integer_value == INT64_MIN);
    const char *all[] = {"d", "c", "b", "a"};
    Kvs__CommandResponse *r = multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, TABLE, 4, all);
    check_status(r, 200);
    CHECK_EQ(r->n_values, 4);
    CHECK(r->values[0]->integer_value == INT64_MIN);
    check_text(r->values[1], c, 2);
    check_text(r->values[2], b, 6);
    check_text(r->values[3], a, 3);
    r = hgetall(TABLE);
    check_status(r, 200);
    CHECK_EQ(r->n_pairs, 4);
    check_text(r->pairs[0]->value, a, 3);
    check_text(r->pairs[1]->value, b, 6);
    check_text(r->pairs[2]->value, c, 2);
    r = hscan(TABLE, (ProtobufCBinaryData){0, NULL}, 2);
    check_status(r, 200);
    CHECK_EQ(r->n_pairs, 2);
    check_text(r->pairs[1]->value, b, 6);
    r = hscan(TABLE, r->cursor, 2);
    CHECK_EQ(r->n_pairs, 2);
    check_text(r->pairs[0]->value, c, 2);
    /* Previous values come back whole too. */
    check_text(value0(hset_full_path(TABLE, "a", vtext(a2, 1))), a, 3);
    check_text(value0(hdel(TABLE, "a")), a2, 1);
}

KVS_TEST(integers_are_int64_on_every_path)
{
    /* Stored Values are the request's int64 bytes (fast path) or protobuf-c's
     * int64 packing (full path); either reads back the same number, and the
     * stored bytes are the original protocol's encoding of it. */
    static const int64_t ints[] = {0, 5, -1, -3, INT64_MIN, INT64_MAX};
    setup_default();
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        char k[16];
        snprintf(k, sizeof(k), "f%zu", i);
        check_status(hset(TABLE, k, vint(ints[i])), 200);
        k[0] = 's';
        check_status(hset_full_path(TABLE, k, vint(ints[i])), 200);
    }
    end_turn();
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        char k[16];
        uint8_t enc[16];
        size_t n = kvs_value_encode_int(enc, ints[i]);
        for (int path = 0; path < 2; path++) {
            snprintf(k, sizeof(k), "%c%zu", path ? 's' : 'f', i);
            node_slice_t v;
            CHECK_EQ(node_store_get(fx.store, TABLE, k, strlen(k), &v), 0);
            CHECK(v.len == n && memcmp(v.p, enc, n) == 0);
            const Kvs__Value *got = value0(hget(TABLE, k));
            CHECK_EQ(got->kind_case, KVS__VALUE__KIND_INTEGER_VALUE);
            CHECK(got->integer_value == ints[i]);
        }
    }
}

KVS_TEST(hdel_returns_previous_or_empty)
{
    setup_default();
    put(TABLE, "alice", "one");
    end_turn();
    Kvs__CommandResponse *r = hdel(TABLE, "alice");
    check_status(r, 200);
    CHECK_EQ(r->n_values, 1);
    check_str(r->values[0], "one");
    end_turn();
    check_status(hget(TABLE, "alice"), 404);
    r = hdel(TABLE, "alice");
    check_status(r, 200);
    CHECK_EQ(r->n_values, 1);
    check_empty(r->values[0]);
    check_empty(value0(hdel("no_such_table", "alice")));
}

KVS_TEST(hexist_and_hmexist)
{
    setup_default();
    put(TABLE, "a", "1");
    put(TABLE, "c", "3");
    end_turn();
    Kvs__CommandResponse *r = hexist(TABLE, "a");
    check_status(r, 200);
    CHECK_EQ(r->n_values, 1);
    check_bool(r->values[0], 1);
    check_bool(value0(hexist(TABLE, "b")), 0);
    check_bool(value0(hexist("no_such_table", "a")), 0);
    const char *keys[] = {"c", "b", "a", "a"};
    r = multi(KVS__COMMAND_REQUEST__COMMAND_HMEXIST, TABLE, 4, keys);
    check_status(r, 200);
    CHECK_EQ(r->n_values, 4);
    check_bool(r->values[0], 1);
    check_bool(r->values[1], 0);
    check_bool(r->values[2], 1);
    check_bool(r->values[3], 1);
}

/* ---- multi-key commands ----------------------------------------------------------------- */

KVS_TEST(hmget_keeps_request_order_with_missing)
{
    setup_default();
    put(TABLE, "a", "va");
    put(TABLE, "b", "vb");
    end_turn();
    const char *keys[] = {"b", "missing", "a", "b"};
    Kvs__CommandResponse *r = multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, TABLE, 4, keys);
    check_status(r, 200);
    CHECK_EQ(r->n_values, 4);
    check_str(r->values[0], "vb");
    check_empty(r->values[1]);
    check_str(r->values[2], "va");
    check_str(r->values[3], "vb");
    r = multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, "no_such_table", 2, keys);
    check_status(r, 200);
    CHECK_EQ(r->n_values, 2);
    check_empty(r->values[0]);
    check_empty(r->values[1]);
}

KVS_TEST(hmset_returns_previous_values)
{
    setup_default();
    put(TABLE, "a", "old-a");
    end_turn();
    const char *keys[] = {"a", "c", "c"};
    const char *vals[] = {"new-a", "c1", "c2"};
    Kvs__CommandResponse *r = hmset(TABLE, 3, keys, vals);
    check_status(r, 200);
    CHECK_EQ(r->n_values, 3);
    check_str(r->values[0], "old-a");
    check_empty(r->values[1]);
    check_str(r->values[2], "c1"); /* the same key twice: applied in order */
    end_turn();
    r = multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, TABLE, 2, keys);
    check_status(r, 200);
    CHECK_EQ(r->n_values, 2);
    check_str(r->values[0], "new-a");
    check_str(r->values[1], "c2");
}

KVS_TEST(hmdel_same_key_twice)
{
    setup_default();
    put(TABLE, "a", "va");
    put(TABLE, "b", "vb");
    end_turn();
    const char *keys[] = {"a", "missing", "a", "b"};
    Kvs__CommandResponse *r = multi(KVS__COMMAND_REQUEST__COMMAND_HMDEL, TABLE, 4, keys);
    check_status(r, 200);
    CHECK_EQ(r->n_values, 4);
    check_str(r->values[0], "va");
    check_empty(r->values[1]);
    check_empty(r->values[2]); /* already deleted by keys[0] */
    check_str(r->values[3], "vb");
    end_turn();
    check_status(hget(TABLE, "a"), 404);
    check_status(hget(TABLE, "b"), 404);
}

/* ---- whole-table commands ---------------------------------------------------------------- */

KVS_TEST(hgetall_returns_pairs_in_key_order)
{
    setup_default();
    static const uint8_t k_ff[] = {0xff}, k_a0[] = {'a', 0x00}, k_nul[] = {0x00};
    check_status(hset(TABLE, "b", vstr("2")), 200);
    check_status(hset_key(TABLE, (ProtobufCBinaryData){1, (uint8_t *)k_ff}, vstr("ff")), 200);
    check_status(hset(TABLE, "ab", vstr("3")), 200);
    check_status(hset_key(TABLE, (ProtobufCBinaryData){2, (uint8_t *)k_a0}, vstr("a0")), 200);
    check_status(hset(TABLE, "a", vstr("1")), 200);
    check_status(hset_key(TABLE, (ProtobufCBinaryData){1, (uint8_t *)k_nul}, vstr("nul")), 200);
    put("other", "zz", "elsewhere");
    end_turn();
    Kvs__CommandResponse *r = hgetall(TABLE);
    check_status(r, 200);
    CHECK_EQ(r->n_pairs, 6);
    check_key(r->pairs[0]->key, k_nul, 1);
    check_key(r->pairs[1]->key, "a", 1);
    check_key(r->pairs[2]->key, k_a0, 2);
    check_key(r->pairs[3]->key, "ab", 2);
    check_key(r->pairs[4]->key, "b", 1);
    check_key(r->pairs[5]->key, k_ff, 1);
    check_str(r->pairs[0]->value, "nul");
    check_str(r->pairs[3]->value, "3");
    check_status(hgetall("no_such_table"), 200);
    CHECK_EQ(hgetall("no_such_table")->n_pairs, 0);
}

KVS_TEST(hscan_pages_with_count_and_cursor)
{
    setup_default();
    fill_numbered(TABLE, 25);
    ProtobufCBinaryData cursor = {0, NULL};
    int seen = 0, pages = 0;
    do {
        Kvs__CommandResponse *r = hscan(TABLE, cursor, 10);
        check_status(r, 200);
        CHECK_EQ(r->n_pairs, pages < 2 ? 10 : 5);
        for (size_t i = 0; i < r->n_pairs; i++, seen++) {
            char key[16];
            snprintf(key, sizeof(key), "k%05d", seen);
            check_key(r->pairs[i]->key, key, strlen(key));
            CHECK_EQ(r->pairs[i]->value->integer_value, seen);
        }
        cursor = r->cursor;
        pages++;
        end_turn();
    } while (cursor.len > 0);
    CHECK_EQ(seen, 25);
    CHECK_EQ(pages, 3);
}

KVS_TEST(hscan_exact_multiple_ends_with_empty_cursor)
{
    setup_default();
    fill_numbered(TABLE, 20);
    Kvs__CommandResponse *r = hscan(TABLE, (ProtobufCBinaryData){0, NULL}, 10);
    CHECK_EQ(r->n_pairs, 10);
    check_key(r->cursor, "k00010", 6);
    r = hscan(TABLE, r->cursor, 10);
    CHECK_EQ(r->n_pairs, 10);
    CHECK_EQ(r->cursor.len, 0);
    r = hscan("no_such_table", (ProtobufCBinaryData){0, NULL}, 10);
    check_status(r, 200);
    CHECK_EQ(r->n_pairs, 0);
    CHECK_EQ(r->cursor.len, 0);
}

KVS_TEST(hscan_default_count)
{
    setup_default();
    fill_numbered(TABLE, NODE_SCAN_DEFAULT + 50);
    Kvs__CommandResponse *r = hscan(TABLE, (ProtobufCBinaryData){0, NULL}, 0);
    check_status(r, 200);
    CHECK_EQ(r->n_pairs, NODE_SCAN_DEFAULT);
    CHECK(r->cursor.len > 0);
}

KVS_TEST(hscan_count_is_capped)
{
    setup_default();
    fill_numbered(TABLE, NODE_SCAN_MAX + 5);
    Kvs__CommandResponse *r = hscan(TABLE, (ProtobufCBinaryData){0, NULL}, 3 * NODE_SCAN_MAX);
    check_status(r, 200);
    CHECK_EQ(r->n_pairs, NODE_SCAN_MAX);
    char key[16];
    snprintf(key, sizeof(key), "k%05d", NODE_SCAN_MAX);
    check_key(r->cursor, key, strlen(key));
    r = hscan(TABLE, r->cursor, 3 * NODE_SCAN_MAX);
    CHECK_EQ(r->n_pairs, 5);
    CHECK_EQ(r->cursor.len, 0);
}

/* A cursor is just "the first key not returned yet"; one longer than any
 * key (validation allows KVS_MAX_KEY + 16 bytes) must not be a storage
 * error. */
KVS_TEST(hscan_cursor_longer_than_a_key)
{
    setup_default();
    put(TABLE, "a", "1");
    end_turn();
    char *c = repeat('0', KVS_MAX_KEY + 10);
    Kvs__CommandResponse *r = hscan(TABLE, bin(c), 10);
    free(c);
    check_status(r, 200);
    CHECK_EQ(r->n_pairs, 1); /* "a" sorts after "000..." */
    CHECK_EQ(r->cursor.len, 0);
}

KVS_TEST(ping_and_info)
{
    setup_default();
    Kvs__Ping ping = KVS__PING__INIT;
    Kvs__CommandResponse *r = run_cmd(KVS__COMMAND_REQUEST__COMMAND_PING, &ping);
    check_status(r, 200);
    CHECK_STR(r->message, "PONG");
    put("t1", "k", "v");
    put("t2", "k", "v");
    end_turn();
    Kvs__Info info = KVS__INFO__INIT;
    r = run_cmd(KVS__COMMAND_REQUEST__COMMAND_INFO, &info);
    check_status(r, 200);
    int found = 0;
    for (size_t i = 0; i < r->n_pairs; i++) {
        if (i > 0) /* sorted by key */
            CHECK(key_cmp(r->pairs[i - 1]->key, r->pairs[i]->key) < 0);
        if (r->pairs[i]->key.len == strlen("shard.003.tables") &&
            memcmp(r->pairs[i]->key.data, "shard.003.tables", r->pairs[i]->key.len) == 0) {
            CHECK_EQ(r->pairs[i]->value->kind_case, KVS__VALUE__KIND_INTEGER_VALUE);
            CHECK_EQ(r->pairs[i]->value->integer_value, 2);
            found = 1;
        }
    }
    CHECK(found);
}

/* ---- bad input ------------------------------------------------------------------------------ */

KVS_TEST(garbage_payload_is_400_and_stores_nothing)
{
    setup_default();
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    Kvs__CommandResponse *r = run_raw(junk, sizeof(junk));
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "not a valid kvs.CommandRequest");
    /* A valid Hset cut short: the write must not happen. */
    Kvs__Value v = vstr("value");
    Kvs__Hset m = KVS__HSET__INIT;
    Kvs__Kvpair pair = KVS__KVPAIR__INIT;
    m.table = TABLE;
    m.pair = &pair;
    pair.key = bin("alice");
    pair.value = &v;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HSET;
    q.hset = &m;
    size_t n;
    uint8_t *p = pack_request(&q, &n);
    check_status(run_raw(p, n - 3), 400);
    free(p);
    end_turn();
    check_status(hget(TABLE, "alice"), 404);
    CHECK_EQ(node_store_table_count(fx.store), 0);
}

KVS_TEST(validation_errors_are_400)
{
    setup_default();
    Kvs__CommandResponse *r = hset("", "k", vstr("v"));
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "Hset.table is empty");
    r = hset(TABLE, "", vstr("v"));
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "Hset.pair.key is empty");
    r = hset("__kvs", "k", vstr("v"));
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "reserved");
    r = hset(TABLE, "k", (Kvs__Value)KVS__VALUE__INIT);
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "Hset.pair.value is missing");
    r = multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, TABLE, 0, NULL);
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "Hmget.keys is empty");
    r = hset("bad\xff", "k", vstr("v"));
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "not valid UTF-8");
    Kvs__CommandRequest none = KVS__COMMAND_REQUEST__INIT;
    r = run(&none);
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "no command");
    end_turn();
    CHECK_EQ(node_store_table_count(fx.store), 0);
}

/* ---- sizes -------------------------------------------------------------------------------------
 */

KVS_TEST(hgetall_over_max_frame_is_413)
{
    setup(4096, 16);
    char *v = repeat('v', 500);
    char key[16];
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        put(TABLE, key, v);
    }
    free(v);
    end_turn();
    Kvs__CommandResponse *r = hgetall(TABLE);
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "Hscan");
    CHECK_EQ(r->n_pairs, 0);
    const char *keys[] = {"k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"};
    r = multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, TABLE, 10, keys);
    check_status(r, 413);
    CHECK_EQ(r->n_values, 0);
    check_status(multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, TABLE, 5, keys), 200);
}

/* Hmset and Hmdel answer with the previous values, which can be much
 * larger than the request: three 1,500-byte values stored one by one (each
 * fine) come back together past a 4 KiB max_frame. The answer must then be
 * 413, like Hmget's, and the write must not happen: a frame larger than
 * max_frame breaks the router's link to this worker (KVS_ETOOBIG, every
 * pending request on it 503) after the write was applied. */
static const char *const big_keys[] = {"a", "b", "c"};

/* Stores the three keys with 1,500-byte values; returns the value. */
static char *put_big_values(void)
{
    setup(4096, 16);
    char *v = repeat('v', 1500);
    for (int i = 0; i < 3; i++)
        put(TABLE, big_keys[i], v);
    end_turn();
    return v;
}

static void check_big_values_kept(const char *v)
{
    end_turn();
    for (int i = 0; i < 3; i++)
        check_str(value0(hget(TABLE, big_keys[i])), v);
}

KVS_TEST(hmset_answer_over_max_frame_is_413)
{
    char *v = put_big_values();
    const char *small[] = {"1", "2", "3"};
    Kvs__CommandResponse *r = hmset(TABLE, 3, big_keys, small);
    CHECK(fx.last_len <= fx.ctx.max_frame);
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "max_frame");
    check_big_values_kept(v);
    free(v);
}

KVS_TEST(hmdel_answer_over_max_frame_is_413)
{
    char *v = put_big_values();
    Kvs__CommandResponse *r = multi(KVS__COMMAND_REQUEST__COMMAND_HMDEL, TABLE, 3, big_keys);
    CHECK(fx.last_len <= fx.ctx.max_frame);
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "max_frame");
    check_big_values_kept(v);
    free(v);
}

/* Hmexist answers 4 bytes per key (a bool Value) for 3 bytes of request per
 * 1-byte key: a request that fits max_frame can ask for an answer that
 * does not. */
KVS_TEST(hmexist_answer_over_max_frame_is_413)
{
    const size_t max_frame = 4096, n = 1300;
    setup(max_frame, 16);
    put(TABLE, "a", "1");
    end_turn();
    ProtobufCBinaryData *kb = calloc(n, sizeof(*kb));
    CHECK(kb != NULL);
    for (size_t i = 0; i < n; i++)
        kb[i] = bin("a");
    Kvs__Hmexist m = KVS__HMEXIST__INIT;
    m.table = TABLE;
    m.n_keys = n;
    m.keys = kb;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HMEXIST;
    q.hmexist = &m;
    CHECK(kvs__command_request__get_packed_size(&q) <= max_frame); /* a valid request */
    Kvs__CommandResponse *r = run(&q);
    free(kb);
    CHECK(fx.last_len <= max_frame);
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "max_frame");
}

/* need = key + encoded value + KVS_MAX_KEY + 64 must fit max_frame. */
KVS_TEST(value_too_large_to_read_back_is_413)
{
    setup(4096, 16);
    char *v = repeat('v', 4000);
    Kvs__CommandResponse *r = hset(TABLE, "big", vstr(v));
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "max_frame");
    const char *keys[] = {"small", "big"};
    const char *vals[] = {"ok", v};
    r = hmset(TABLE, 2, keys, vals);
    check_status(r, 413);
    free(v);
    end_turn();
    check_status(hget(TABLE, "big"), 404);
    check_status(hget(TABLE, "small"), 404); /* the whole Hmset was refused */
    CHECK_EQ(node_store_table_count(fx.store), 0);
}

/* A shard directory made from template `dir` and its node_handoff_t, this
 * node "a" holding every shard of a four-shard map (*cfg, to free). */
static node_handoff_t *handoff_fixture(char *dir, kvs_config_t **cfg)
{
    char text[512], err[256];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(text, sizeof(text),
             "node: {name: a}\ncluster:\n  shards: 4\n  nodes:\n"
             "    - {name: a, address: \"127.0.0.1:1000\", shards: [0, 1, 2, 3]}\n");
    *cfg = NULL;
    CHECK_EQ(kvs_config_parse("test", text, strlen(text), cfg, err, sizeof(err)), 0);
    node_handoff_t *h = NULL;
    CHECK_EQ(node_handoff_open(dir, 3, *cfg, 0, &h), 0);
    return h;
}

/* Frees handoff_fixture's pair and removes its directory, which holds
 * exactly files[0..n). */
static void handoff_fixture_free(node_handoff_t *h, kvs_config_t *cfg, const char *dir,
                                 const char *const *files, size_t n)
{
    char path[128];
    node_handoff_free(h);
    kvs_config_free(cfg);
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        CHECK_EQ(unlink(path), 0);
    }
    CHECK_EQ(rmdir(dir), 0);
}

/* A write refused because of the shard's state (its snapshot went to
 * another node, so writes to unbound tables wait for the move: 503; or it
 * has several replicas: 400) is first checked for a pair too large to
 * store: that is 413, as at any other time, so the client is not told to
 * send it again once the move is over. Fast path (Hset) and full path
 * (Hmset) alike; nothing is written. */
/* While the map the master takes (its holders file) gives the shard to
 * other nodes too, a worker that may still run the previous map begins no
 * write to an unbound table: 503 naming the change, nothing written. */
KVS_TEST(an_unbound_write_waits_for_the_map_the_master_takes)
{
    setup(4096, 16);
    char dir[] = "/tmp/kvs-test-cmd-holders-XXXXXX";
    kvs_config_t *cfg;
    node_handoff_t *h = handoff_fixture(dir, &cfg);
    fx.ctx.handoff = h;
    fx.ctx.replicas = 1;
    const char *both[] = {"a", "b"}, *alone[] = {"a"};
    CHECK_EQ(kvs_copied_write_holders(dir, both, 2, 0, NULL, 0), 0);
    Kvs__CommandResponse *r = hset(TABLE, "k", vstr("v"));
    check_status(r, 503);
    CHECK_CONTAINS(r->message, "the cluster.nodes being taken gives shard");
    end_turn();
    check_status(hget(TABLE, "k"), 404);
    CHECK_EQ(kvs_copied_write_holders(dir, alone, 1, 0, NULL, 0), 0);
    check_status(hset(TABLE, "k", vstr("v")), 200);
    end_turn();
    fx.ctx.handoff = NULL;
    fx.ctx.replicas = 0;
    const char *files[] = {"unbound-rows", "holders", "handoff.lock"};
    handoff_fixture_free(h, cfg, dir, files, 3);
}

KVS_TEST(a_refused_write_with_a_pair_too_large_is_413_first)
{
    setup(4096, 16);
    char dir[] = "/tmp/kvs-test-cmd-fence-XXXXXX";
    kvs_config_t *cfg;
    node_handoff_t *h = handoff_fixture(dir, &cfg);
    int raised = 0;
    CHECK_EQ(node_handoff_fence(h, "127.0.0.1:2000", cfg, &raised), 0);
    CHECK_EQ(raised, 1);
    fx.ctx.handoff = h;
    char *v = repeat('v', 4000);
    const char *keys[] = {"small", "big"};
    const char *vals[] = {"ok", v};
    for (int replicas = 1; replicas <= 2; replicas++) {
        fx.ctx.replicas = (uint32_t)replicas;
        Kvs__CommandResponse *r = hset(TABLE, "big", vstr(v));
        check_status(r, 413);
        CHECK_CONTAINS(r->message, "value is too large");
        r = hmset(TABLE, 2, keys, vals);
        check_status(r, 413);
        CHECK_CONTAINS(r->message, "value is too large");
        /* The same writes that fit get the refusal. */
        r = hset(TABLE, "small", vstr("ok"));
        check_status(r, replicas == 1 ? 503 : 400);
        CHECK_CONTAINS(r->message, replicas == 1 ? "move is over" : "replicas");
        check_status(hmset(TABLE, 1, keys, vals), replicas == 1 ? 503 : 400);
    }
    free(v);
    end_turn();
    fx.ctx.handoff = NULL;
    fx.ctx.replicas = 0;
    check_status(hget(TABLE, "big"), 404);
    check_status(hget(TABLE, "small"), 404);
    node_handoff_unfence(h);
    const char *files[] = {"handoff.lock"}; /* taken to raise the fence */
    handoff_fixture_free(h, cfg, dir, files, 1);
}

/* The largest pair allowed (511-byte key, value at the limit) is larger
 * than Hscan's soft page limit: it must still be returned, alone, with a
 * 511-byte cursor, and the frame must fit max_frame. */
KVS_TEST(hscan_oversized_pair_makes_progress)
{
    const size_t max_frame = 4096;
    setup(max_frame, 16);
    char *kb = repeat('b', KVS_MAX_KEY), *kc = repeat('c', KVS_MAX_KEY);
    size_t vlen = max_frame - KVS_MAX_KEY - KVS_MAX_KEY - 64 - 3; /* string tag + 2-byte len */
    char *v = repeat('v', vlen + 1);
    put(TABLE, "a", "small");
    check_status(hset(TABLE, kb, vstr(v)), 413); /* one byte over the limit */
    v[vlen] = '\0';
    check_status(hset(TABLE, kb, vstr(v)), 200);
    check_status(hset(TABLE, kc, vstr("small")), 200);
    end_turn();
    Kvs__CommandResponse *r = hscan(TABLE, (ProtobufCBinaryData){0, NULL}, 10);
    check_status(r, 200);
    CHECK_EQ(r->n_pairs, 1);
    check_key(r->cursor, kb, KVS_MAX_KEY);
    r = hscan(TABLE, r->cursor, 10);
    check_status(r, 200);
    CHECK_EQ(r->n_pairs, 1);
    check_key(r->pairs[0]->key, kb, KVS_MAX_KEY);
    check_str(r->pairs[0]->value, v);
    check_key(r->cursor, kc, KVS_MAX_KEY);
    CHECK(fx.last_len <= max_frame);
    r = hscan(TABLE, r->cursor, 10);
    CHECK_EQ(r->n_pairs, 1);
    CHECK_EQ(r->cursor.len, 0);
    check_status(hget(TABLE, kb), 200);
    CHECK(fx.last_len <= max_frame);
    free(kb);
    free(kc);
    free(v);
}

/* ---- answer budgets and answers over max_frame ----------------------------- */

/* Hmset of keys[i] => vals[i] with answer_budget `budget`. */
static Kvs__CommandResponse *hmset_budget(const char *t, size_t n, const char *const *keys,
                                          const char *const *vals, uint32_t budget)
{
    Kvs__Kvpair pairs[16], *pp[16];
    Kvs__Value values[16];
    CHECK(n <= 16);
    for (size_t i = 0; i < n; i++) {
        values[i] = vstr(vals[i]);
        kvs__kvpair__init(&pairs[i]);
        pairs[i].key = bin(keys[i]);
        pairs[i].value = &values[i];
        pp[i] = &pairs[i];
    }
    Kvs__Hmset m = KVS__HMSET__INIT;
    m.table = (char *)t;
    m.n_pairs = n;
    m.pairs = pp;
    m.answer_budget = budget;
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HMSET, &m);
}

static Kvs__CommandResponse *hmdel_budget(const char *t, size_t n, const char *const *keys,
                                          uint32_t budget)
{
    ProtobufCBinaryData kb[16];
    CHECK(n <= 16);
    for (size_t i = 0; i < n; i++)
        kb[i] = bin(keys[i]);
    Kvs__Hmdel m = KVS__HMDEL__INIT;
    m.table = (char *)t;
    m.n_keys = n;
    m.keys = kb;
    m.answer_budget = budget;
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HMDEL, &m);
}

/* answer_budget (the router's share of the merged answer for this part)
 * bounds the answer like a smaller max_frame: over it, 413 and nothing is
 * written; 0, or more than max_frame, leaves max_frame the limit. */
KVS_TEST(answer_budget_refuses_before_writing)
{
    setup(KVS_FRAME_DEFAULT_MAX, 16);
    char *v = repeat('v', 1000);
    for (int i = 0; i < 3; i++)
        put(TABLE, big_keys[i], v);
    end_turn();
    const char *small[] = {"1", "2", "3"};
    /* Previous values ~3 x 1003 bytes: over a 2,000-byte budget. */
    Kvs__CommandResponse *r = hmset_budget(TABLE, 3, big_keys, small, 2000);
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "answer_budget of 2000 bytes");
    CHECK_CONTAINS(r->message, "nothing was written");
    r = hmdel_budget(TABLE, 3, big_keys, 2000);
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "answer_budget");
    end_turn();
    for (int i = 0; i < 3; i++)
        check_str(value0(hget(TABLE, big_keys[i])), v);
    /* Within the budget: applied. */
    r = hmset_budget(TABLE, 3, big_keys, small, 4000);
    check_status(r, 200);
    for (int i = 0; i < 3; i++)
        check_str(r->values[i], v);
    r = hmdel_budget(TABLE, 3, big_keys, 0);
    check_status(r, 200);
    for (int i = 0; i < 3; i++)
        check_str(r->values[i], small[i]);
    end_turn();
    check_status(hget(TABLE, "a"), 404);
    free(v);

    /* A budget above max_frame does not lift max_frame. */
    v = put_big_values(); /* 3 x 1,500 bytes under a 4 KiB max_frame */
    r = hmset_budget(TABLE, 3, big_keys, small, 1u << 30);
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "limits.max_frame");
    check_big_values_kept(v);
    free(v);
}

/* Runs a request whose command is `c` with body `body`, asking for
 * value_lengths. */
static Kvs__CommandResponse *run_lengths(Kvs__CommandRequest__CommandCase c, void *body)
{
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    q.command_case = c;
    q.hget = body;
    q.value_lengths = 1;
    return run(&q);
}

/* With value_lengths (the Redis door's HSET, HMSET, HDEL) a write answers
 * each previous value as its length, and is priced so: previous values
 * that would not fit an answer (3 x 1,500 bytes, a 4 KiB max_frame; or a
 * small answer_budget) do not make it 413. Without it, nothing changed
 * (hmset_answer_over_max_frame_is_413). */
KVS_TEST(value_lengths_writes_are_priced_by_lengths)
{
    char *v = put_big_values();
    const char *small[] = {"1", "2", "3"};
    Kvs__Kvpair pairs[3], *pp[3];
    Kvs__Value values[3];
    for (size_t i = 0; i < 3; i++) {
        values[i] = vstr(small[i]);
        kvs__kvpair__init(&pairs[i]);
        pairs[i].key = bin(big_keys[i]);
        pairs[i].value = &values[i];
        pp[i] = &pairs[i];
    }
    Kvs__Hmset m = KVS__HMSET__INIT;
    m.table = TABLE;
    m.n_pairs = 3;
    m.pairs = pp;
    m.answer_budget = 200; /* room for three lengths only */
    Kvs__CommandResponse *r = run_lengths(KVS__COMMAND_REQUEST__COMMAND_HMSET, &m);
    check_status(r, 200);
    CHECK_EQ(r->n_values, 3);
    for (size_t i = 0; i < 3; i++) {
        CHECK_EQ(r->values[i]->kind_case, KVS__VALUE__KIND_INTEGER_VALUE);
        CHECK_EQ(r->values[i]->integer_value, 1500);
    }
    end_turn();
    check_str(value0(hget(TABLE, "b")), "2");
    for (int i = 0; i < 3; i++)
        put(TABLE, big_keys[i], v);
    end_turn();
    ProtobufCBinaryData kb[4] = {bin("a"), bin("b"), bin("c"), bin("none")};
    Kvs__Hmdel d = KVS__HMDEL__INIT;
    d.table = TABLE;
    d.n_keys = 4;
    d.keys = kb;
    r = run_lengths(KVS__COMMAND_REQUEST__COMMAND_HMDEL, &d);
    check_status(r, 200);
    CHECK_EQ(r->n_values, 4);
    CHECK_EQ(r->values[0]->integer_value, 1500);
    CHECK_EQ(r->values[3]->kind_case, KVS__VALUE__KIND__NOT_SET);
    end_turn();
    check_status(hget(TABLE, "a"), 404);
    /* The same with lengths a budget cannot hold: 413, nothing written. */
    put(TABLE, "a", v);
    end_turn();
    m.answer_budget = 50;
    r = run_lengths(KVS__COMMAND_REQUEST__COMMAND_HMSET, &m);
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "nothing was written");
    end_turn();
    check_str(value0(hget(TABLE, "a")), v);
    free(v);
}

/* Runs `q` through node_cmd_execute, the handlers behind the decoder (the
 * path every request the fast path does not take goes). */
static Kvs__CommandResponse *run_execute(Kvs__CommandRequest__CommandCase c, void *body)
{
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    q.command_case = c;
    q.hget = body;
    kvs_buf_t out;
    kvs_buf_init(&out);
    CHECK_EQ(node_cmd_execute(&fx.ctx, &q, &out), 0);
    Kvs__CommandResponse *r = decode_one(&out);
    kvs_buf_free(&out);
    return r;
}

/* A 413 for a value stored under a larger max_frame: the frame fits the
 * limit, and the message says what to raise it to. */
static void check_unreadable(const Kvs__CommandResponse *r, const char *key)
{
    check_status(r, 413);
    CHECK(fx.last_len <= fx.ctx.max_frame);
    CHECK_CONTAINS(r->message, "raise limits.max_frame to at least");
    if (key != NULL)
        CHECK_CONTAINS(r->message, key);
    CHECK_EQ(r->n_values, 0);
    CHECK_EQ(r->n_pairs, 0);
}

/* A value stored while limits.max_frame was larger, read after it was
 * lowered: every answer that would hold it is that request's 413, within
 * the limit (a larger frame would break the router's link to the worker,
 * shared by every client of the shard); writes that would return it as
 * their previous value change nothing. */
KVS_TEST(value_stored_under_a_larger_max_frame)
{
    setup(64 * 1024, 16);
    char *v = repeat('v', 10000);
    put(TABLE, "a", "small");
    put(TABLE, "big", v);
    put(TABLE, "small", "small");
    end_turn();
    fx.ctx.max_frame = 4096; /* the node restarted with a smaller limit */

    check_unreadable(hget(TABLE, "big"), NULL); /* the fast path */
    Kvs__Hget g = KVS__HGET__INIT;
    g.table = TABLE;
    g.key = bin("big");
    check_unreadable(run_execute(KVS__COMMAND_REQUEST__COMMAND_HGET, &g), NULL);
    check_bool(value0(hexist(TABLE, "big")), 1); /* what fits is answered */
    check_str(value0(hget(TABLE, "small")), "small");
    const char *mk[] = {"small", "big"};
    check_unreadable(multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, TABLE, 2, mk), "\"big\"");
    check_unreadable(hgetall(TABLE), "\"big\"");
    /* Hscan: the page before it ends there; the page that would start
     * with it is 413 naming it. */
    Kvs__CommandResponse *r = hscan(TABLE, (ProtobufCBinaryData){0, NULL}, 10);
    check_status(r, 200);
    CHECK_EQ(r->n_pairs, 1);
    check_key(r->pairs[0]->key, "a", 1);
    check_key(r->cursor, "big", 3);
    check_unreadable(hscan(TABLE, r->cursor, 10), "\"big\"");

    /* Writes that would answer with it: 413, nothing written. */
    check_unreadable(hset(TABLE, "big", vstr("x")), "\"big\"");
    check_unreadable(hset_full_path(TABLE, "big", vstr("x")), "\"big\"");
    check_unreadable(hdel(TABLE, "big"), "\"big\"");
    Kvs__Hdel d = KVS__HDEL__INIT;
    d.table = TABLE;
    d.key = bin("big");
    check_unreadable(run_execute(KVS__COMMAND_REQUEST__COMMAND_HDEL, &d), "\"big\"");
    const char *x[] = {"x", "x"};
    r = hmset(TABLE, 2, mk, x);
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "nothing was written");
    r = multi(KVS__COMMAND_REQUEST__COMMAND_HMDEL, TABLE, 2, mk);
    check_status(r, 413);
    CHECK_CONTAINS(r->message, "nothing was written");
    end_turn();
    fx.ctx.max_frame = 64 * 1024;
    check_str(value0(hget(TABLE, "big")), v);
    check_str(value0(hget(TABLE, "small")), "small");
    /* Asking for lengths (the Redis door's HSET and HDEL), the same writes
     * answer the value's length and are applied. */
    fx.ctx.max_frame = 4096;
    Kvs__Value x1 = vstr("x");
    Kvs__Kvpair pair = KVS__KVPAIR__INIT;
    Kvs__Hset hs = KVS__HSET__INIT;
    hs.table = TABLE;
    hs.pair = &pair;
    pair.key = bin("big");
    pair.value = &x1;
    r = run_lengths(KVS__COMMAND_REQUEST__COMMAND_HSET, &hs);
    check_status(r, 200);
    CHECK_EQ(value0(r)->integer_value, 10000);
    end_turn();
    check_str(value0(hget(TABLE, "big")), "x");
    fx.ctx.max_frame = 64 * 1024;
    put(TABLE, "big", v); /* stored under the larger limit again */
    end_turn();
    fx.ctx.max_frame = 4096;
    r = run_lengths(KVS__COMMAND_REQUEST__COMMAND_HDEL, &d);
    check_status(r, 200);
    CHECK_EQ(value0(r)->integer_value, 10000);
    end_turn();
    check_status(hget(TABLE, "big"), 404);
    fx.ctx.max_frame = 64 * 1024;
    free(v);
}

/* ---- storage limits and turns ------------------------------------------------------------------
 */

KVS_TEST(table_limit_is_507_naming_the_setting)
{
    setup(KVS_FRAME_DEFAULT_MAX, 2);
    put("t1", "k", "v1");
    put("t2", "k", "v2");
    Kvs__CommandResponse *r = hset("t3", "k", vstr("v3"));
    check_status(r, 507);
    CHECK_CONTAINS(r->message, "storage.max_tables");
    CHECK_CONTAINS(r->message, "\"t3\"");
    CHECK_EQ(r->n_values, 0);
    const char *keys[] = {"a", "b"};
    r = hmset("t3", 2, keys, keys);
    check_status(r, 507);
    CHECK_CONTAINS(r->message, "storage.max_tables");
    put("t1", "k2", "still writable"); /* the turn's batch is intact */
    end_turn();
    check_str(value0(hget("t1", "k")), "v1");
    check_str(value0(hget("t2", "k")), "v2");
    check_str(value0(hget("t1", "k2")), "still writable");
    check_status(hget("t3", "k"), 404);
    CHECK_EQ(node_store_table_count(fx.store), 2);
}

/* An emptied table frees its place at the commit; while a digest or a
 * snapshot reads the shard it waits, and the refusal says so. */
KVS_TEST(table_limit_counts_an_emptied_table_only_while_the_shard_is_read)
{
    setup(KVS_FRAME_DEFAULT_MAX, 2);
    put("t1", "k", "v1");
    put("t2", "k", "v2");
    end_turn();
    node_store_view_t *v = NULL;
    CHECK_EQ(node_store_view_open(fx.store, NULL, &v), 0); /* as a digest does */
    check_status(hdel("t1", "k"), 200);
    end_turn();
    Kvs__CommandResponse *r = hset("t3", "k", vstr("v3"));
    check_status(r, 507);
    CHECK_CONTAINS(r->message, "storage.max_tables (2) tables, 1 of them emptied and dropped once "
                               "the digest or snapshot reading the shard ends");
    end_turn();
    node_store_view_close(v);
    check_status(hset("t3", "k", vstr("v3")), 200);
    end_turn();
    CHECK_EQ(node_store_table_count(fx.store), 2);
    check_status(hdel("t2", "k"), 200);
    end_turn();
    CHECK_EQ(node_store_table_count(fx.store), 1);
    check_str(value0(hget("t3", "k")), "v3");
    r = hset("t4", "k", vstr("v4"));
    check_status(r, 200);
    r = hset("t5", "k", vstr("v5"));
    check_status(r, 507);
    CHECK_CONTAINS(r->message, "storage.max_tables (2) tables; raise the limit");
}

KVS_TEST(read_your_writes_within_a_turn)
{
    setup_default();
    put(TABLE, "alice", "v1");
    check_str(value0(hget(TABLE, "alice")), "v1"); /* no end_turn in between */
    check_str(value0(hset(TABLE, "alice", vstr("v2"))), "v1");
    check_str(value0(hget(TABLE, "alice")), "v2");
    check_bool(value0(hexist(TABLE, "alice")), 1);
    CHECK_EQ(hgetall(TABLE)->n_pairs, 1);
    check_str(value0(hdel(TABLE, "alice")), "v2");
    check_status(hget(TABLE, "alice"), 404);
    put(TABLE, "bob", "b");
    end_turn();
    check_status(hget(TABLE, "alice"), 404);
    check_str(value0(hget(TABLE, "bob")), "b");
}

/* node_cmd_frame appends: pipelined requests leave their frames in order. */
KVS_TEST(frames_append_in_request_order)
{
    setup_default();
    Kvs__Ping ping = KVS__PING__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_PING;
    q.ping = &ping;
    size_t n;
    uint8_t *p = pack_request(&q, &n);
    static const uint8_t junk[] = {0xff};
    kvs_buf_t out;
    kvs_buf_init(&out);
    CHECK_EQ(node_cmd_frame(&fx.ctx, p, n, &out), 0);
    size_t first = out.len;
    CHECK_EQ(node_cmd_frame(&fx.ctx, junk, sizeof(junk), &out), 0);
    free(p);
    kvs_buf_t second = {out.data + first, out.len - first, out.len - first};
    check_status(decode_one(&second), 400);
    out.len = first;
    check_status(decode_one(&out), 200);
    kvs_buf_free(&out);
}

/* ---- Hset if_absent, Hincr, Hlen (the Redis front door's commands) ---------- */

static Kvs__CommandResponse *hset_if_absent(const char *t, const char *key, Kvs__Value v)
{
    Kvs__Hset m = KVS__HSET__INIT;
    Kvs__Kvpair pair = KVS__KVPAIR__INIT;
    m.table = (char *)t;
    m.pair = &pair;
    m.if_absent = 1;
    pair.key = bin(key);
    pair.value = &v;
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HSET, &m);
}

KVS_TEST(hset_if_absent_stores_only_new_keys)
{
    setup_default();
    check_empty(value0(hset_if_absent(TABLE, "k", vstr("first"))));
    end_turn();
    check_str(value0(hset_if_absent(TABLE, "k", vstr("second"))), "first");
    end_turn();
    check_str(value0(hget(TABLE, "k")), "first"); /* unchanged */
}

static Kvs__CommandResponse *hincr_int(const char *t, const char *key, int64_t by)
{
    Kvs__Hincr m = KVS__HINCR__INIT;
    m.table = (char *)t;
    m.key = bin(key);
    m.by_case = KVS__HINCR__BY_BY_INT;
    m.by_int = by;
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HINCR, &m);
}

static Kvs__CommandResponse *hincr_float(const char *t, const char *key, double by)
{
    Kvs__Hincr m = KVS__HINCR__INIT;
    m.table = (char *)t;
    m.key = bin(key);
    m.by_case = KVS__HINCR__BY_BY_FLOAT;
    m.by_float = by;
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HINCR, &m);
}

KVS_TEST(hincr_adds_to_integers_and_numeric_text)
{
    setup_default();
    const Kvs__Value *v = value0(hincr_int(TABLE, "n", 5)); /* absent counts as 0 */
    CHECK_EQ(v->kind_case, KVS__VALUE__KIND_INTEGER_VALUE);
    CHECK_EQ(v->integer_value, 5);
    CHECK_EQ(value0(hincr_int(TABLE, "n", -8))->integer_value, -3);
    hset(TABLE, "t", vstr("-40"));
    CHECK_EQ(value0(hincr_int(TABLE, "t", 2))->integer_value, -38);
    end_turn();
    v = value0(hget(TABLE, "t")); /* the result is stored as an integer */
    CHECK_EQ(v->kind_case, KVS__VALUE__KIND_INTEGER_VALUE);
    CHECK_EQ(v->integer_value, -38);
    v = value0(hincr_float(TABLE, "t", 0.5));
    CHECK_EQ(v->kind_case, KVS__VALUE__KIND_FLOAT_VALUE);
    CHECK(v->float_value == -37.5);
    hset(TABLE, "f", vstr("1.25e1"));
    CHECK(value0(hincr_float(TABLE, "f", 1))->float_value == 13.5);
}

static Kvs__CommandResponse *hincr_decimal(const char *t, const char *key, const char *by)
{
    Kvs__Hincr m = KVS__HINCR__INIT;
    m.table = (char *)t;
    m.key = bin(key);
    m.by_case = KVS__HINCR__BY_BY_DECIMAL;
    m.by_decimal = (char *)by;
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HINCR, &m);
}

/* by_decimal is Redis's HINCRBYFLOAT: long doubles, the sum stored as
 * Redis's text, a float_value read as the text it is shown as. */
KVS_TEST(hincr_by_decimal_adds_as_redis_does)
{
    setup_default();
    check_str(value0(hincr_decimal(TABLE, "n", "0.1")), "0.1");
    check_str(value0(hincr_decimal(TABLE, "n", "0.2")), "0.3");
    end_turn();
    check_str(value0(hget(TABLE, "n")), "0.3"); /* stored as text */
    hset(TABLE, "f", vfloat(0.1));
    hset(TABLE, "i", vint(-7));
    hset(TABLE, "b", vbool(1));
    check_str(value0(hincr_decimal(TABLE, "f", "0.2")), "0.3");
    check_str(value0(hincr_decimal(TABLE, "i", "0.5")), "-6.5");
    check_str(value0(hincr_decimal(TABLE, "b", "1e-20")), "1");
    check_str(value0(hincr_decimal(TABLE, "x", "1e-20")), "0");
    hset(TABLE, "big", vstr("1e308"));
    const Kvs__Value *v = value0(hincr_decimal(TABLE, "big", "1e308"));
    CHECK_EQ(v->kind_case, KVS__VALUE__KIND_STRING_VALUE);
    CHECK(v->string_value.len > 300 &&
          memcmp(v->string_value.data, "19999999999999999999", 20) == 0);
    Kvs__CommandResponse *r = hincr_decimal(TABLE, "n", "1e5000");
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "value is not a valid float");
    r = hincr_decimal(TABLE, "n", "inf");
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "value is NaN or Infinity");
    check_status(hincr_decimal(TABLE, "n", ""), 400);
    hset(TABLE, "s", vstr("abc"));
    r = hincr_decimal(TABLE, "s", "1");
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "hash value is not a float");
    hset(TABLE, "huge", vstr("1e4932"));
    r = hincr_decimal(TABLE, "huge", "1e4932");
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "increment would produce NaN or Infinity");
    end_turn();
    check_str(value0(hget(TABLE, "n")), "0.3"); /* the refusals changed nothing */
    check_str(value0(hget(TABLE, "huge")), "1e4932");
}

/* A binary_value's bytes are what a Redis client is shown for it (HGET),
 * so Hincr reads them as Redis reads that text, as it reads string_value:
 * numeric bytes (a protobuf client may store "7" as bytes) are a number. */
KVS_TEST(hincr_reads_binary_value_as_its_text)
{
    setup_default();
    hset(TABLE, "d", vbinary("1.5"));
    hset(TABLE, "i", vbinary("7"));
    hset(TABLE, "f", vbinary("2.5"));
    hset(TABLE, "x", vbinary("1\xff"));
    end_turn();
    check_str(value0(hincr_decimal(TABLE, "d", "0.1")), "1.6");
    CHECK_EQ(value0(hincr_int(TABLE, "i", 1))->integer_value, 8);
    CHECK(value0(hincr_float(TABLE, "f", 1))->float_value == 3.5);
    Kvs__CommandResponse *r = hincr_decimal(TABLE, "x", "1");
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "hash value is not a float");
    check_status(hincr_int(TABLE, "x", 1), 400);
    hset(TABLE, "f2", vbinary("2.5"));
    end_turn();
    r = hincr_int(TABLE, "f2", 1); /* "2.5" is not an integer to HINCRBY */
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "hash value is not an integer");
}

KVS_TEST(hincr_refuses_and_changes_nothing)
{
    setup_default();
    hset(TABLE, "s", vstr("12x"));
    hset(TABLE, "lead", vstr("012"));
    hset(TABLE, "f", vstr("1.5"));
    hset(TABLE, "max", vint(INT64_MAX));
    hset(TABLE, "min", vint(INT64_MIN));
    end_turn();
    Kvs__CommandResponse *r = hincr_int(TABLE, "s", 1);
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "hash value is not an integer");
    check_status(hincr_int(TABLE, "lead", 1), 400);
    check_status(hincr_int(TABLE, "f", 1), 400);
    r = hincr_int(TABLE, "max", 1);
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "increment or decrement would overflow");
    check_status(hincr_int(TABLE, "min", -1), 400);
    r = hincr_float(TABLE, "s", 1);
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "hash value is not a float");
    hset(TABLE, "big", vstr("1e308"));
    r = hincr_float(TABLE, "big", 1e308);
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "NaN or Infinity");
    end_turn();
    CHECK_EQ(value0(hget(TABLE, "max"))->integer_value, INT64_MAX);
    check_str(value0(hget(TABLE, "s")), "12x");
    /* An increment is needed. */
    Kvs__Hincr m = KVS__HINCR__INIT;
    m.table = (char *)TABLE;
    m.key = bin("n");
    check_status(run_cmd(KVS__COMMAND_REQUEST__COMMAND_HINCR, &m), 400);
}

static Kvs__CommandResponse *hlen(const char *t)
{
    Kvs__Hlen m = KVS__HLEN__INIT;
    m.table = (char *)t;
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HLEN, &m);
}

KVS_TEST(hlen_counts_keys)
{
    setup_default();
    CHECK_EQ(value0(hlen("nosuch"))->integer_value, 0);
    for (int i = 0; i < 37; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        hset(TABLE, k, vint(i));
    }
    CHECK_EQ(value0(hlen(TABLE))->integer_value, 37); /* the open batch counts */
    end_turn();
    hdel(TABLE, "k3");
    end_turn();
    CHECK_EQ(value0(hlen(TABLE))->integer_value, 36);
}

static Kvs__CommandResponse *hclear(const char *t)
{
    Kvs__Hclear m = KVS__HCLEAR__INIT;
    m.table = (char *)t;
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_HCLEAR, &m);
}

/* Hclear removes every key of the table in the turn's batch and answers
 * how many; the emptied table is dropped with the commit, so its place
 * under max_tables is free again. A missing table is 0 keys. */
KVS_TEST(hclear_empties_and_drops_the_table)
{
    setup(KVS_FRAME_DEFAULT_MAX, 2);
    Kvs__CommandResponse *r = hclear("nosuch");
    check_status(r, 200);
    CHECK_EQ(value0(r)->integer_value, 0);
    fill_numbered(TABLE, 300);
    put("other", "k", "v");
    end_turn();
    CHECK_EQ(node_store_table_count(fx.store), 2);
    r = hclear(TABLE);
    check_status(r, 200);
    CHECK_EQ(value0(r)->integer_value, 300);
    CHECK_EQ(value0(hlen(TABLE))->integer_value, 0); /* the open batch shows it */
    check_status(hget(TABLE, "k00007"), 404);
    end_turn();
    CHECK_EQ(node_store_table_count(fx.store), 1);
    check_status(hget(TABLE, "k00007"), 404);
    check_str(value0(hget("other", "k")), "v");
    check_status(hset("third", "k", vstr("x")), 200); /* its place is free */
    end_turn();
    r = hclear(TABLE);
    check_status(r, 200);
    CHECK_EQ(value0(r)->integer_value, 0);
    /* A table refilled after its Hclear in the same batch keeps the new key. */
    r = hclear("third");
    CHECK_EQ(value0(r)->integer_value, 1);
    put("third", "again", "1");
    end_turn();
    CHECK_EQ(value0(hlen("third"))->integer_value, 1);
    check_status(hget("third", "k"), 404);
    check_str(value0(hget("third", "again")), "1");
}

/* Hclear is refused, changing nothing, on a table bound to a topic (its
 * keys are the topic's records) and on a shard with several replicas or
 * whose snapshot went elsewhere (as every write to an unbound table). */
KVS_TEST(hclear_refused_on_bound_and_replicated_tables)
{
    setup_default();
    char text[256], err[256];
    snprintf(text, sizeof(text), "kafka:\n  bindings:\n    - {topic: t-users, table: orders}\n");
    kvs_config_t *cfg = NULL;
    CHECK_EQ(kvs_config_parse("test", text, strlen(text), &cfg, err, sizeof(err)), 0);
    put("orders", "k", "v");
    put(TABLE, "k", "v");
    end_turn();
    fx.ctx.cfg = cfg;
    Kvs__CommandResponse *r = hclear("orders");
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "Hclear: table \"orders\" is bound to Kafka topic t-users");
    CHECK_CONTAINS(r->message, "nothing was written");
    fx.ctx.cfg = NULL;
    fx.ctx.replicas = 2;
    r = hclear(TABLE);
    check_status(r, 400);
    CHECK_CONTAINS(r->message, "Hclear: table \"" TABLE "\" is bound to no Kafka topic, and "
                               "shard 3 has 2 replicas");
    fx.ctx.replicas = 0;
    end_turn();
    check_str(value0(hget("orders", "k")), "v");
    check_str(value0(hget(TABLE, "k")), "v");
    kvs_config_free(cfg);
}

/* ---- hooks, Metrics, Slowlog ----------------------------------------------------- */

typedef struct seen_s {
    kvs_hook_event_t ev;
    uint32_t command, keys, write, status;
    char table[32];
    const char *peer;
    uint64_t received_ns, now_ns;
} seen_t;

static seen_t seen[16];
static int n_seen;

/* Notes every event; stops an Hset on table "locked" at RECEIVED (403)
 * and replaces the answer of any request on table "replaced" at EXECUTED
 * (503). */
static uint32_t note_hook(void *state, kvs_hook_event_t ev, const kvs_request_info_t *req,
                          char *msg, size_t msglen)
{
    (void)state;
    CHECK(n_seen < 16);
    CHECK_EQ(req->struct_size, sizeof(*req));
    seen_t *x = &seen[n_seen++];
    *x = (seen_t){ev, req->command, req->keys,        req->write, req->status,
                  "", req->peer,    req->received_ns, req->now_ns};
    if (req->table != NULL)
        snprintf(x->table, sizeof(x->table), "%.*s", (int)req->table_len, req->table);
    if (ev == KVS_HOOK_RECEIVED && strcmp(x->table, "locked") == 0) {
        snprintf(msg, msglen, "table locked is read-only");
        return 403;
    }
    if (ev == KVS_HOOK_EXECUTED && strcmp(x->table, "replaced") == 0) {
        snprintf(msg, msglen, "answer replaced by a hook");
        return 503;
    }
    return 0;
}

KVS_TEST(hooks_see_every_request_and_may_stop_it)
{
    setup_default();
    kvs_hook_chain_t chain;
    kvs_hook_chain_init(&chain);
    CHECK_EQ(kvs_hook_add(&chain,
                          KVS_HOOK_MASK(KVS_HOOK_RECEIVED) | KVS_HOOK_MASK(KVS_HOOK_EXECUTED),
                          note_hook, NULL, 0),
             0);
    fx.ctx.hooks = &chain;
    fx.ctx.info.peer = "10.0.0.1:5";
    fx.ctx.info.identity = "";
    put(TABLE, "a", "1"); /* single-key: the fast path */
    CHECK_EQ(n_seen, 2);
    CHECK_EQ(seen[0].ev, KVS_HOOK_RECEIVED);
    CHECK_EQ(seen[0].command, KVS__COMMAND_REQUEST__COMMAND_HSET);
    CHECK_STR(seen[0].table, TABLE);
    CHECK_EQ(seen[0].keys, 1);
    CHECK_EQ(seen[0].write, 1);
    CHECK_EQ(seen[0].status, 0);
    CHECK_STR(seen[0].peer, "10.0.0.1:5");
    CHECK_EQ(seen[1].ev, KVS_HOOK_EXECUTED);
    CHECK_EQ(seen[1].status, 200);
    CHECK(seen[1].now_ns >= seen[1].received_ns && seen[1].received_ns > 0);
    /* A decoded multi-key request. */
    static const char *const keys[] = {"a", "b", "c"};
    check_status(multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, TABLE, 3, keys), 200);
    CHECK_EQ(seen[2].command, KVS__COMMAND_REQUEST__COMMAND_HMGET);
    CHECK_EQ(seen[2].keys, 3);
    CHECK_EQ(seen[2].write, 0);
    /* Stopped at RECEIVED: answered with the hook's status, nothing written. */
    n_seen = 0;
    Kvs__CommandResponse *r = hset("locked", "k", vstr("v"));
    check_status(r, 403);
    CHECK_STR(r->message, "table locked is read-only");
    CHECK_EQ(n_seen, 2);
    CHECK_EQ(seen[1].ev, KVS_HOOK_EXECUTED);
    CHECK_EQ(seen[1].status, 403);
    fx.ctx.hooks = NULL;
    check_status(hget("locked", "k"), 404);
    fx.ctx.hooks = &chain;
    /* Replaced at EXECUTED: the write happened, the answer says what the hook said. */
    r = hset("replaced", "k", vstr("v"));
    check_status(r, 503);
    CHECK_STR(r->message, "answer replaced by a hook");
    fx.ctx.hooks = NULL;
    check_str(value0(hget("replaced", "k")), "v");
    fx.ctx.hooks = &chain;
    /* A request that does not decode skips RECEIVED. */
    n_seen = 0;
    static const uint8_t junk[] = {0xff};
    check_status(run_raw(junk, sizeof(junk)), 400);
    CHECK_EQ(n_seen, 1);
    CHECK_EQ(seen[0].ev, KVS_HOOK_EXECUTED);
    CHECK_EQ(seen[0].status, 400);
    CHECK_EQ(seen[0].command, 0);
    fx.ctx.hooks = NULL;
}

static void one_family(void *arg, kvs_mb_t *b)
{
    kvs_mb_sample(b, kvs_mb_family(b, "kvs_test_total", KVS__METRIC_FAMILY__TYPE__COUNTER, "T."),
                  *(int *)arg, 1, "shard", "3");
}

static Kvs__CommandResponse *slowlog_cmd(uint32_t count, int reset)
{
    Kvs__Slowlog m = KVS__SLOWLOG__INIT;
    m.count = count;
    m.reset = reset;
    return run_cmd(KVS__COMMAND_REQUEST__COMMAND_SLOWLOG, &m);
}

KVS_TEST(metrics_and_slowlog_answers)
{
    setup_default();
    int value = 42;
    kvs_slowlog_t log;
    kvs_hook_chain_t chain;
    kvs_slowlog_init(&log);
    CHECK_EQ(kvs_slowlog_configure(&log, 0, 8), 0); /* every request */
    kvs_hook_chain_init(&chain);
    CHECK_EQ(kvs_hook_add(&chain, KVS_HOOK_MASK(KVS_HOOK_EXECUTED), kvs_slowlog_hook, &log, 0), 0);
    fx.ctx.hooks = &chain;
    fx.ctx.info.peer = "unix";
    fx.ctx.slowlog = &log;
    fx.ctx.metrics = one_family;
    fx.ctx.metrics_arg = &value;
    put(TABLE, "a", "1");
    put(TABLE, "b", "2");
    Kvs__Metrics mm = KVS__METRICS__INIT;
    Kvs__CommandResponse *r = run_cmd(KVS__COMMAND_REQUEST__COMMAND_METRICS, &mm);
    check_status(r, 200);
    CHECK(r->ops != NULL);
    CHECK_EQ(r->ops->n_metrics, 1);
    CHECK_STR(r->ops->metrics[0]->name, "kvs_test_total");
    CHECK_EQ(r->ops->metrics[0]->samples[0]->value, 42);
    r = slowlog_cmd(2, 0); /* sees the two Hsets and the Metrics, not itself yet */
    check_status(r, 200);
    CHECK_EQ(r->ops->slowlog_len, 3);
    CHECK_EQ(r->ops->n_slowlog, 2);
    CHECK_STR(r->ops->slowlog[0]->command, "Metrics");
    CHECK_STR(r->ops->slowlog[1]->command, "Hset");
    CHECK_STR(r->ops->slowlog[1]->table, TABLE);
    CHECK_STR(r->ops->slowlog[1]->client, "unix");
    CHECK_EQ(r->ops->slowlog[1]->keys, 1);
    CHECK_EQ(r->ops->slowlog[1]->status, 200);
    CHECK_EQ(r->ops->slowlog[1]->id, 2);
    r = slowlog_cmd(0, 1); /* all (up to 10), then empty the log */
    CHECK_EQ(r->ops->n_slowlog, 4);
    r = slowlog_cmd(0, 0);
    CHECK_EQ(r->ops->slowlog_len, 1); /* the resetting Slowlog itself, logged after it ran */
    CHECK_STR(r->ops->slowlog[0]->command, "Slowlog");
    fx.ctx.hooks = NULL;
    fx.ctx.slowlog = NULL;
    fx.ctx.metrics = NULL;
    kvs_slowlog_free(&log);
}

/* A request's table is logged as it came, but the answer's table is a
 * protobuf string, which strict runtimes refuse unless it is UTF-8: a
 * table that is not (a request refused for it) or that ran past the ring's
 * room is logged escaped, as text that is. */
KVS_TEST(slowlog_tables_are_utf8)
{
    kvs_slowlog_t log;
    kvs_arena_t arena;
    char longname[KVS_MAX_TABLE + 2];
    longname[0] = 'a'; /* "a" then "é" (2 bytes) to 201 bytes: cut inside an "é" */
    for (size_t i = 1; i + 1 < sizeof(longname); i += 2)
        memcpy(longname + i, "\xc3\xa9", 2);
    longname[sizeof(longname) - 1] = '\0';
    const struct {
        const char *table;
        size_t len;
        const char *logged;
    } cases[] = {
        {"users", 5, "users"},
        {"t \"q\" \\ \xc3\xa9", 10, "t \"q\" \\ \xc3\xa9"}, /* valid UTF-8 stays as it is */
        {"\xff\xfe", 2, "\\xff\\xfe"},
        {"a\xc3", 2, "a\\xc3"},
        {"a\0b", 3, "a\\x00b"},
        {longname, KVS_MAX_TABLE + 1, NULL},
    };
    size_t n = sizeof(cases) / sizeof(cases[0]);
    kvs_slowlog_init(&log);
    kvs_arena_init(&arena);
    CHECK_EQ(kvs_slowlog_configure(&log, 0, 8), 0);
    for (size_t i = 0; i < n; i++) {
        kvs_request_info_t req = {.struct_size = sizeof(req),
                                  .command = KVS__COMMAND_REQUEST__COMMAND_HSET,
                                  .table = cases[i].table,
                                  .table_len = (uint32_t)cases[i].len,
                                  .peer = "unix",
                                  .received_ns = 1,
                                  .now_ns = 2};
        kvs_slowlog_hook(&log, KVS_HOOK_EXECUTED, &req, NULL, 0);
    }
    Kvs__OpsAnswer ops = KVS__OPS_ANSWER__INIT;
    CHECK_EQ(kvs_slowlog_answer(&log, 8, &arena, &ops), 0);
    CHECK_EQ(ops.n_slowlog, n);
    for (size_t i = 0; i < n; i++) {
        const char *t = ops.slowlog[n - 1 - i]->table; /* newest first */
        CHECK(kvs_utf8_valid(t, strlen(t)));
        CHECK(strlen(t) <= KVS_MAX_TABLE);
        if (cases[i].logged != NULL)
            CHECK_STR(t, cases[i].logged);
    }
    kvs_arena_close(&arena);
    kvs_slowlog_free(&log);
}

KVS_TEST_MAIN(
    KVS_CASE(a_refused_write_with_a_pair_too_large_is_413_first),
    KVS_CASE(an_unbound_write_waits_for_the_map_the_master_takes),
    KVS_CASE(hooks_see_every_request_and_may_stop_it), KVS_CASE(metrics_and_slowlog_answers),
    KVS_CASE(slowlog_tables_are_utf8), KVS_CASE(answer_budget_refuses_before_writing),
    KVS_CASE(value_lengths_writes_are_priced_by_lengths),
    KVS_CASE(value_stored_under_a_larger_max_frame), KVS_CASE(hget_missing_is_404_naming_table),
    KVS_CASE(hset_returns_previous_value), KVS_CASE(text_with_nul_reads_back_whole),
    KVS_CASE(integers_are_int64_on_every_path), KVS_CASE(hdel_returns_previous_or_empty),
    KVS_CASE(hexist_and_hmexist), KVS_CASE(hmget_keeps_request_order_with_missing),
    KVS_CASE(hmset_returns_previous_values), KVS_CASE(hmdel_same_key_twice),
    KVS_CASE(hgetall_returns_pairs_in_key_order), KVS_CASE(hscan_pages_with_count_and_cursor),
    KVS_CASE(hscan_exact_multiple_ends_with_empty_cursor), KVS_CASE(hscan_default_count),
    KVS_CASE(hscan_count_is_capped), KVS_CASE(hscan_cursor_longer_than_a_key),
    KVS_CASE(ping_and_info), KVS_CASE(garbage_payload_is_400_and_stores_nothing),
    KVS_CASE(validation_errors_are_400), KVS_CASE(hgetall_over_max_frame_is_413),
    KVS_CASE(hmset_answer_over_max_frame_is_413), KVS_CASE(hmdel_answer_over_max_frame_is_413),
    KVS_CASE(hmexist_answer_over_max_frame_is_413), KVS_CASE(value_too_large_to_read_back_is_413),
    KVS_CASE(hscan_oversized_pair_makes_progress), KVS_CASE(table_limit_is_507_naming_the_setting),
    KVS_CASE(table_limit_counts_an_emptied_table_only_while_the_shard_is_read),
    KVS_CASE(read_your_writes_within_a_turn), KVS_CASE(frames_append_in_request_order),
    KVS_CASE(hset_if_absent_stores_only_new_keys),
    KVS_CASE(hincr_adds_to_integers_and_numeric_text), KVS_CASE(hincr_refuses_and_changes_nothing),
    KVS_CASE(hincr_by_decimal_adds_as_redis_does), KVS_CASE(hincr_reads_binary_value_as_its_text),
    KVS_CASE(hlen_counts_keys), KVS_CASE(hclear_empties_and_drops_the_table),
    KVS_CASE(hclear_refused_on_bound_and_replicated_tables))

/*
 * test_msg: request validation, the protobuf-c arena, the hand-rolled
 * response encoder (kvs_resp) and response framing (kvs_msg_append).
 *
 * Requests are built as protobuf-c structs, packed, and decoded again with
 * kvs_msg_decode_request, so validation always sees what a real peer's bytes
 * turn into (for example, proto3 drops an empty key on the wire). Inputs no
 * well-behaved encoder produces (unknown fields) are written as raw bytes.
 *
 * kvs_resp writes protobuf wire format by hand; every case here decodes its
 * output with protobuf-c, and where protobuf-c can build the same message,
 * the bytes are compared too, so a drift from proto/kvs.proto shows up.
 *
 * Run under ASan, the arena cases double as leak and overflow checks.
 */
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_msg.h"
#include "kvs_resp.h"
#include "kvs_test.h"
#include "kvs_varint.h"

#include <math.h>

#define NCMD 11 /* commands, numbered 1..NCMD like the oneof cases */
#define CMD(i) ((Kvs__CommandRequest__CommandCase)(i))

/* ---- building requests ---------------------------------------------------- */

static ProtobufCBinaryData bin(const char *s)
{
    ProtobufCBinaryData b = {strlen(s), (uint8_t *)s};
    return b;
}

/* Storage for one request of any command, valid as built by req_make. */
typedef struct {
    Kvs__CommandRequest r;
    Kvs__Hget hget;
    Kvs__Hgetall hgetall;
    Kvs__Hmget hmget;
    Kvs__Hset hset;
    Kvs__Kvpair hpair; /* hset.pair */
    Kvs__Hmset hmset;
    Kvs__Hdel hdel;
    Kvs__Hmdel hmdel;
    Kvs__Hexist hexist;
    Kvs__Hmexist hmexist;
    Kvs__Hscan hscan;
    Kvs__Ping ping;
    Kvs__Value value;
    ProtobufCBinaryData keys[3];
    Kvs__Kvpair pair[3];
    Kvs__Kvpair *pairs[3];
    Kvs__Value pvalue[3];
} req_t;

static void req_init_parts(req_t *q, char *table, ProtobufCBinaryData key)
{
    Kvs__Hget hget = KVS__HGET__INIT;
    Kvs__Hgetall hgetall = KVS__HGETALL__INIT;
    Kvs__Hmget hmget = KVS__HMGET__INIT;
    Kvs__Hset hset = KVS__HSET__INIT;
    Kvs__Hmset hmset = KVS__HMSET__INIT;
    Kvs__Hdel hdel = KVS__HDEL__INIT;
    Kvs__Hmdel hmdel = KVS__HMDEL__INIT;
    Kvs__Hexist hexist = KVS__HEXIST__INIT;
    Kvs__Hmexist hmexist = KVS__HMEXIST__INIT;
    Kvs__Hscan hscan = KVS__HSCAN__INIT;
    Kvs__Ping ping = KVS__PING__INIT;
    q->hget = hget, q->hgetall = hgetall, q->hmget = hmget, q->hset = hset;
    q->hmset = hmset, q->hdel = hdel, q->hmdel = hmdel, q->hexist = hexist;
    q->hmexist = hmexist, q->hscan = hscan, q->ping = ping;
    q->hget.table = q->hgetall.table = q->hmget.table = q->hset.table = table;
    q->hmset.table = q->hdel.table = q->hmdel.table = q->hexist.table = table;
    q->hmexist.table = q->hscan.table = table;
    q->hget.key = q->hdel.key = q->hexist.key = key;
    Kvs__Kvpair hpair = KVS__KVPAIR__INIT;
    q->hpair = hpair;
    q->hpair.key = key;
    q->hset.pair = &q->hpair;
}

static void req_init_lists(req_t *q)
{
    static const char *const names[] = {"a", "b", "c"};
    Kvs__Value v = KVS__VALUE__INIT;
    Kvs__Kvpair p = KVS__KVPAIR__INIT;
    v.kind_case = KVS__VALUE__KIND_STRING_VALUE;
    v.string_value = bin("v");
    q->value = v;
    q->hpair.value = &q->value;
    for (int i = 0; i < 3; i++) {
        q->keys[i] = bin(names[i]);
        q->pvalue[i] = v;
        q->pair[i] = p;
        q->pair[i].key = bin(names[i]);
        q->pair[i].value = &q->pvalue[i];
        q->pairs[i] = &q->pair[i];
    }
    q->hmget.n_keys = q->hmdel.n_keys = q->hmexist.n_keys = 3;
    q->hmget.keys = q->hmdel.keys = q->hmexist.keys = q->keys;
    q->hmset.n_pairs = 3;
    q->hmset.pairs = q->pairs;
    q->hscan.count = 10;
}

/* Builds a valid request for command `cc` on `table`; single-key commands
 * use `key`. Tests then break one thing at a time. */
static void req_make(req_t *q, Kvs__CommandRequest__CommandCase cc, char *table,
                     ProtobufCBinaryData key)
{
    Kvs__CommandRequest r = KVS__COMMAND_REQUEST__INIT;
    req_init_parts(q, table, key);
    req_init_lists(q);
    q->r = r;
    q->r.command_case = cc;
    CHECK(cc >= 1 && cc <= NCMD);
    void *const bodies[NCMD + 1] = {NULL,       &q->hget,    &q->hgetall, &q->hmget,
                                    &q->hset,   &q->hmset,   &q->hdel,    &q->hmdel,
                                    &q->hexist, &q->hmexist, &q->hscan,   &q->ping};
    /* The oneof is a union of pointers: setting one member sets the body. */
    q->r.hget = bodies[cc];
}

/* ---- validating ------------------------------------------------------------- */

static char msg[1024];

/* Decodes `p` as a peer's request (with an arena) and checks it: with
 * kvs_msg_validate alone, or (`wire`) with kvs_msg_check_request. */
static uint32_t check_bytes(const uint8_t *p, size_t len, int wire)
{
    kvs_arena_t a;
    kvs_arena_init(&a);
    Kvs__CommandRequest *req = kvs_msg_decode_request(&a, p, len, NULL);
    CHECK(req != NULL);
    msg[0] = '\0';
    uint32_t st = wire ? kvs_msg_check_request(req, p, len, msg, sizeof(msg))
                       : kvs_msg_validate(req, msg, sizeof(msg));
    kvs_arena_close(&a);
    return st;
}

static uint32_t validate_bytes(const uint8_t *p, size_t len)
{
    return check_bytes(p, len, 0);
}

static uint32_t validate(const Kvs__CommandRequest *r)
{
    size_t n = protobuf_c_message_get_packed_size(&r->base);
    uint8_t *p = malloc(n + 1);
    CHECK(p != NULL);
    CHECK_EQ(protobuf_c_message_pack(&r->base, p), n);
    uint32_t st = validate_bytes(p, n);
    free(p);
    return st;
}

static void expect_ok(const Kvs__CommandRequest *r)
{
    uint32_t st = validate(r);
    if (st != KVS_STATUS_OK)
        fprintf(stderr, "unexpected %u: %s\n", st, msg);
    CHECK_EQ(st, KVS_STATUS_OK);
}

static void expect_bad(const Kvs__CommandRequest *r, const char *text)
{
    CHECK_EQ(validate(r), KVS_STATUS_BAD_REQUEST);
    CHECK_CONTAINS(msg, text);
}

static void expect_bad_bytes(const uint8_t *p, size_t len, const char *text)
{
    CHECK_EQ(validate_bytes(p, len), KVS_STATUS_BAD_REQUEST);
    CHECK_CONTAINS(msg, text);
}

static int has_table(Kvs__CommandRequest__CommandCase cc)
{
    return cc != KVS__COMMAND_REQUEST__COMMAND_PING && cc != KVS__COMMAND_REQUEST__COMMAND_INFO;
}

static int single_key(Kvs__CommandRequest__CommandCase cc)
{
    return cc == KVS__COMMAND_REQUEST__COMMAND_HGET || cc == KVS__COMMAND_REQUEST__COMMAND_HSET ||
           cc == KVS__COMMAND_REQUEST__COMMAND_HDEL || cc == KVS__COMMAND_REQUEST__COMMAND_HEXIST;
}

KVS_TEST(validate_every_command_ok)
{
    for (int i = 1; i <= NCMD; i++) {
        req_t q;
        req_make(&q, CMD(i), "users", bin("k"));
        expect_ok(&q.r);
    }
}

KVS_TEST(validate_no_command)
{
    expect_bad_bytes((const uint8_t *)"", 0, "request has no command set");
    Kvs__CommandRequest r = KVS__COMMAND_REQUEST__INIT;
    CHECK_EQ(kvs_msg_validate(&r, msg, sizeof(msg)), KVS_STATUS_BAD_REQUEST);
    CHECK_CONTAINS(msg, "no command");
}

KVS_TEST(validate_unknown_command_field)
{
    /* Field 60, wire type 2, empty: a command from a newer client. */
    static const uint8_t f60[] = {0xe2, 0x03, 0x00};
    expect_bad_bytes(f60, sizeof(f60), "unsupported command");
    CHECK_CONTAINS(msg, "field 60");
    /* Field 63, the last number reserved for later commands. */
    static const uint8_t f63[] = {0xfa, 0x03, 0x00};
    expect_bad_bytes(f63, sizeof(f63), "unsupported command");
    CHECK_CONTAINS(msg, "field 63");
    /* The answer lists every command the server has (Rebuild was once
     * left out of a list written by hand). */
    for (int c = 1; c < 64; c++) {
        const char *name = kvs_msg_command_name((Kvs__CommandRequest__CommandCase)c);
        if (strcmp(name, "none") != 0) {
            char word[32];
            snprintf(word, sizeof(word), " %s", name);
            CHECK_CONTAINS(msg, word);
        }
    }
    CHECK_CONTAINS(msg, "supports Hget Hgetall Hmget Hset");
    CHECK_CONTAINS(msg, " Rebuild");
    /* Field 13 is Auth: an empty one names its missing user; its user is
     * not a table. */
    static const uint8_t auth[] = {0x6a, 0x00};
    expect_bad_bytes(auth, sizeof(auth), "Auth.user is empty");
    static const uint8_t auth_u[] = {0x6a, 0x03, 0x0a, 0x01, 'u'};
    CHECK_EQ(validate_bytes(auth_u, sizeof(auth_u)), KVS_STATUS_OK);
    Kvs__CommandRequest *r = kvs_msg_decode_request(NULL, auth_u, sizeof(auth_u), NULL);
    CHECK(r != NULL);
    CHECK(kvs_msg_request_table(r) == NULL);
    CHECK_STR(kvs_msg_command_name(r->command_case), "Auth");
    kvs__command_request__free_unpacked(r, NULL);
    /* An unknown field beside a known command. */
    static const uint8_t ping60[] = {0x5a, 0x00, 0xe2, 0x03, 0x00};
    expect_bad_bytes(ping60, sizeof(ping60), "unknown field 60");
    CHECK_CONTAINS(msg, "Ping");
}

KVS_TEST(validate_unknown_field_inside_command)
{
    /* CommandRequest.hget = Hget{table "t", key "k", field 9 = 1}. */
    static const uint8_t hget9[] = {0x0a, 0x08, 0x0a, 0x01, 't', 0x12, 0x01, 'k', 0x48, 0x01};
    expect_bad_bytes(hget9, sizeof(hget9), "Hget has unknown field 9");
    /* The same message without field 9 is fine. */
    static const uint8_t hget[] = {0x0a, 0x06, 0x0a, 0x01, 't', 0x12, 0x01, 'k'};
    CHECK_EQ(validate_bytes(hget, sizeof(hget)), KVS_STATUS_OK);
}

KVS_TEST(validate_table_rules)
{
    char t200[201], t201[202];
    memset(t200, 't', 200), t200[200] = '\0';
    memset(t201, 't', 201), t201[201] = '\0';
    for (int i = 1; i <= NCMD; i++) {
        if (!has_table(CMD(i)))
            continue;
        const char *name = kvs_msg_command_name(CMD(i));
        char want[128];
        req_t q;
        req_make(&q, CMD(i), "", bin("k"));
        snprintf(want, sizeof(want), "%s.table is empty", name);
        expect_bad(&q.r, want);
        req_make(&q, CMD(i), t201, bin("k"));
        snprintf(want, sizeof(want), "%s.table is 201 bytes; the maximum is 200", name);
        expect_bad(&q.r, want);
        req_make(&q, CMD(i), "__x", bin("k"));
        snprintf(want, sizeof(want), "%s.table \"__x\" is reserved", name);
        expect_bad(&q.r, want);
        req_make(&q, CMD(i), t200, bin("k"));
        expect_ok(&q.r);
        req_make(&q, CMD(i), "_x", bin("k"));
        expect_ok(&q.r);
        req_make(&q, CMD(i), "x__", bin("k"));
        expect_ok(&q.r);
    }
}

/* A table name that is not UTF-8 is never quoted: the answer's message
 * is a protobuf string, which a client's decoder refuses (and with it the
 * whole answer) when it is not UTF-8. A reserved-looking name is checked
 * as text first. */
KVS_TEST(validate_table_not_utf8_is_not_quoted)
{
    for (int i = 1; i <= NCMD; i++) {
        if (!has_table(CMD(i)))
            continue;
        const char *name = kvs_msg_command_name(CMD(i));
        char want[128];
        req_t q;
        req_make(&q, CMD(i), "__k\xffs", bin("k"));
        snprintf(want, sizeof(want), "%s.table is not valid UTF-8 text", name);
        expect_bad(&q.r, want);
        CHECK(kvs_utf8_valid(msg, strlen(msg)));
        req_make(&q, CMD(i), "t\xc3", bin("k"));
        expect_bad(&q.r, want);
        CHECK(kvs_utf8_valid(msg, strlen(msg)));
    }
}

KVS_TEST(validate_key_rules)
{
    static uint8_t k512[512];
    memset(k512, 0, sizeof(k512)); /* binary keys: zero bytes are fine */
    ProtobufCBinaryData empty = {0, NULL}, long512 = {512, k512}, long511 = {511, k512};
    for (int i = 1; i <= NCMD; i++) {
        if (!single_key(CMD(i)))
            continue;
        const char *name = kvs_msg_command_name(CMD(i));
        char want[128];
        req_t q;
        const char *key = CMD(i) == KVS__COMMAND_REQUEST__COMMAND_HSET ? "pair.key" : "key";
        req_make(&q, CMD(i), "t", empty);
        snprintf(want, sizeof(want), "%s.%s is empty", name, key);
        expect_bad(&q.r, want);
        req_make(&q, CMD(i), "t", long512);
        snprintf(want, sizeof(want), "%s.%s is 512 bytes; the maximum is 511", name, key);
        expect_bad(&q.r, want);
        req_make(&q, CMD(i), "t", long511);
        expect_ok(&q.r);
    }
}

KVS_TEST(validate_keys_lists)
{
    static const Kvs__CommandRequest__CommandCase multi[] = {KVS__COMMAND_REQUEST__COMMAND_HMGET,
                                                             KVS__COMMAND_REQUEST__COMMAND_HMDEL,
                                                             KVS__COMMAND_REQUEST__COMMAND_HMEXIST};
    static uint8_t k512[512];
    for (size_t i = 0; i < 3; i++) {
        const char *name = kvs_msg_command_name(multi[i]);
        char want[128];
        req_t q;
        req_make(&q, multi[i], "t", bin("k"));
        q.hmget.n_keys = q.hmdel.n_keys = q.hmexist.n_keys = 0;
        snprintf(want, sizeof(want), "%s.keys is empty", name);
        expect_bad(&q.r, want);
        req_make(&q, multi[i], "t", bin("k"));
        q.keys[1].len = 0;
        snprintf(want, sizeof(want), "%s.keys[1] is empty", name);
        expect_bad(&q.r, want);
        req_make(&q, multi[i], "t", bin("k"));
        q.keys[2].len = 512, q.keys[2].data = k512;
        snprintf(want, sizeof(want), "%s.keys[2] is 512 bytes; the maximum is 511", name);
        expect_bad(&q.r, want);
        q.keys[2].len = 511;
        expect_ok(&q.r);
    }
}

KVS_TEST(validate_hset_value)
{
    req_t q;
    req_make(&q, KVS__COMMAND_REQUEST__COMMAND_HSET, "t", bin("k"));
    q.hset.pair = NULL;
    expect_bad(&q.r, "Hset.pair is missing");
    q.hset.pair = &q.hpair;
    q.hpair.value = NULL;
    expect_bad(&q.r, "Hset.pair.value is missing");
    /* An empty Value (no kind set) is no value either. */
    Kvs__Value none = KVS__VALUE__INIT;
    q.hpair.value = &none;
    expect_bad(&q.r, "Hset.pair.value is missing");
    /* Every kind is a value, including the zero ones. */
    Kvs__Value v = KVS__VALUE__INIT;
    q.hpair.value = &v;
    v.kind_case = KVS__VALUE__KIND_INTEGER_VALUE, v.integer_value = 0;
    expect_ok(&q.r);
    v.kind_case = KVS__VALUE__KIND_INTEGER_VALUE, v.integer_value = INT64_MIN;
    expect_ok(&q.r);
    v.kind_case = KVS__VALUE__KIND_BOOL_VALUE, v.bool_value = 0;
    expect_ok(&q.r);
    v.kind_case = KVS__VALUE__KIND_STRING_VALUE, v.string_value = bin("");
    expect_ok(&q.r);
    v.kind_case = KVS__VALUE__KIND_STRING_VALUE;
    v.string_value = (ProtobufCBinaryData){3, (uint8_t *)"a\0b"};
    expect_ok(&q.r);
    v.kind_case = KVS__VALUE__KIND_BINARY_VALUE, v.binary_value.len = 0;
    expect_ok(&q.r);
    v.kind_case = KVS__VALUE__KIND_FLOAT_VALUE, v.float_value = 0.0;
    expect_ok(&q.r);
}

KVS_TEST(validate_hset_value_unknown_kind)
{
    /* Hset{table "t", pair {key "k", value = Value{field 9 = 1}}}: a kind
     * from a newer client. */
    static const uint8_t kind9[] = {0x22, 0x0c, 0x0a, 0x01, 't',  0x12, 0x07,
                                    0x0a, 0x01, 'k',  0x12, 0x02, 0x48, 0x01};
    expect_bad_bytes(kind9, sizeof(kind9),
                     "Hset.pair.value holds an unsupported Value kind (field 9)");
    /* Value{string "v", field 9 = 1}. */
    static const uint8_t extra9[] = {0x22, 0x0f, 0x0a, 0x01, 't',  0x12, 0x0a, 0x0a, 0x01,
                                     'k',  0x12, 0x05, 0x0a, 0x01, 'v',  0x48, 0x01};
    expect_bad_bytes(extra9, sizeof(extra9), "Hset.pair.value has an unsupported field 9");
    /* Kvpair{key "k", value {string "v"}, field 9 = 1}. */
    static const uint8_t pair9[] = {0x22, 0x0f, 0x0a, 0x01, 't',  0x12, 0x0a, 0x0a, 0x01,
                                    'k',  0x12, 0x03, 0x0a, 0x01, 'v',  0x48, 0x01};
    expect_bad_bytes(pair9, sizeof(pair9), "Hset.pair has an unsupported field 9");
    /* The same in an Hmset's pair. */
    static const uint8_t hmset9[] = {0x2a, 0x0f, 0x0a, 0x01, 't',  0x12, 0x0a, 0x0a, 0x01,
                                     'k',  0x12, 0x03, 0x0a, 0x01, 'v',  0x48, 0x01};
    expect_bad_bytes(hmset9, sizeof(hmset9), "Hmset.pairs[0] has an unsupported field 9");
}

KVS_TEST(validate_hset_old_shape)
{
    /* kvs 0.1's Hset{table "t", value = 3: Value{string "v"}}: the message
     * says what the shape is now. */
    static const uint8_t old[] = {0x22, 0x08, 0x0a, 0x01, 't', 0x1a, 0x03, 0x0a, 0x01, 'v'};
    expect_bad_bytes(old, sizeof(old), "Hset has field 3");
    CHECK_CONTAINS(msg, "Kvpair pair = 2");
    /* The original protocol's Hset{table "t", pair {key "k", value {int
     * 5}}} byte for byte, as a client generated from its schema sends it. */
    static const uint8_t orig[] = {0x22, 0x0c, 0x0a, 0x01, 't',  0x12, 0x07,
                                   0x0a, 0x01, 'k',  0x12, 0x02, 0x18, 0x05};
    CHECK_EQ(validate_bytes(orig, sizeof(orig)), KVS_STATUS_OK);
    kvs_peek_t pk;
    CHECK(kvs_msg_peek(orig, sizeof(orig), &pk) == 1);
    CHECK_EQ(pk.cmd, KVS__COMMAND_REQUEST__COMMAND_HSET);
    CHECK(pk.key_len == 1 && pk.key[0] == 'k');
    CHECK(pk.value_len == 2 && pk.value == orig + 12);
}

/* kvs_msg_check_wire on a packed request: the status, message in msg. */
static uint32_t check_wire_of(const Kvs__CommandRequest *r)
{
    uint8_t buf[1024];
    size_t n = protobuf_c_message_get_packed_size(&r->base);
    CHECK(n <= sizeof(buf));
    protobuf_c_message_pack(&r->base, buf);
    msg[0] = '\0';
    return kvs_msg_check_wire(buf, n, msg, sizeof(msg));
}

KVS_TEST(check_wire_nul_rules)
{
    /* U+0000 is a code point like any other in string_value (Hset and
     * Hmset alike); table names may not hold it; invalid UTF-8 is refused
     * in both, naming the field. */
    req_t q;
    req_make(&q, KVS__COMMAND_REQUEST__COMMAND_HSET, "t", bin("k"));
    q.value.string_value = (ProtobufCBinaryData){5, (uint8_t *)"\0a\0b\0"};
    CHECK_EQ(check_wire_of(&q.r), KVS_STATUS_OK);
    q.value.string_value = (ProtobufCBinaryData){4, (uint8_t *)"a\0\xc3"};
    CHECK_EQ(check_wire_of(&q.r), KVS_STATUS_BAD_REQUEST);
    CHECK_CONTAINS(msg, "Hset.pair.value.string_value is not valid UTF-8");
    req_make(&q, KVS__COMMAND_REQUEST__COMMAND_HMSET, "t", bin("k"));
    q.pvalue[1].string_value = (ProtobufCBinaryData){3, (uint8_t *)"x\0y"};
    CHECK_EQ(check_wire_of(&q.r), KVS_STATUS_OK);
    q.pvalue[2].string_value = (ProtobufCBinaryData){2, (uint8_t *)"\xed\xa0"};
    CHECK_EQ(check_wire_of(&q.r), KVS_STATUS_BAD_REQUEST);
    CHECK_CONTAINS(msg, "Hmset.pairs[2].value.string_value is not valid UTF-8");
    /* A binary value is not text at all. */
    req_make(&q, KVS__COMMAND_REQUEST__COMMAND_HSET, "t", bin("k"));
    q.value.kind_case = KVS__VALUE__KIND_BINARY_VALUE;
    q.value.binary_value = (ProtobufCBinaryData){2, (uint8_t *)"\xff\0"};
    CHECK_EQ(check_wire_of(&q.r), KVS_STATUS_OK);
    /* Tables: "a\0b" would alias "a" in C. */
    static const uint8_t nul_table[] = {0x0a, 0x08, 0x0a, 0x03, 'a', 0x00, 'b', 0x12, 0x01, 'k'};
    CHECK_EQ(kvs_msg_check_wire(nul_table, sizeof(nul_table), msg, sizeof(msg)),
             KVS_STATUS_BAD_REQUEST);
    CHECK_CONTAINS(msg, "Hget.table holds a NUL byte (U+0000), which table names may not contain");
    /* Any other string field says it of itself, not of table names. */
    static const uint8_t nul_decimal[] = {0x72, 0x0a, 0x0a, 0x01, 't', 0x12,
                                          0x01, 'k',  0x2a, 0x02, '1', 0x00};
    CHECK_EQ(kvs_msg_check_wire(nul_decimal, sizeof(nul_decimal), msg, sizeof(msg)),
             KVS_STATUS_BAD_REQUEST);
    CHECK_CONTAINS(msg, "Hincr.by_decimal holds a NUL byte (U+0000), which no text field but "
                        "Value.string_value may hold");
    kvs_peek_t pk;
    CHECK(kvs_msg_peek(nul_table, sizeof(nul_table), &pk) == 0);
}

KVS_TEST(quote_for_messages)
{
    char out[64];
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "user:42", 7), "user:42");
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "caf\xc3\xa9", 5), "caf\xc3\xa9"); /* UTF-8 kept */
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "a\0\xff\n\"\\", 6), "a\\x00\\xff\\x0a\\\"\\\\");
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "\xc2\x85", 2), "\\xc2\\x85"); /* C1 control */
    /* Text that moves or hides what is around it: a right-to-left
     * override, a zero-width space, a line separator, a BOM, an isolate. */
    CHECK_STR(kvs_msg_quote(out, sizeof(out),
                            "a\xe2\x80\xae"
                            "b",
                            5),
              "a\\xe2\\x80\\xaeb");
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "\xe2\x80\x8b", 3), "\\xe2\\x80\\x8b");
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "\xe2\x80\xa8", 3), "\\xe2\\x80\\xa8");
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "\xef\xbb\xbf", 3), "\\xef\\xbb\\xbf");
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "\xe2\x81\xa6", 3), "\\xe2\\x81\\xa6");
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "\xd8\x9c", 2), "\\xd8\\x9c"); /* U+061C */
    /* A tag character (ASCII smuggling), a soft hyphen, a noncharacter. */
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "\xf3\xa0\x81\x81", 4), "\\xf3\\xa0\\x81\\x81");
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "\xc2\xad", 2), "\\xc2\\xad");
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "\xef\xbf\xbf", 3), "\\xef\\xbf\\xbf");
    /* The joiners stay (an emoji family, a Persian word), and so do the
     * neighbours: an en dash, a dagger, U+2065, U+2070. */
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9", 11),
              "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9");
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "\xd9\x85\xe2\x80\x8c\xd9\x85", 7),
              "\xd9\x85\xe2\x80\x8c\xd9\x85");
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "\xe2\x80\x93\xe2\x80\xa0", 6),
              "\xe2\x80\x93\xe2\x80\xa0");
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "\xe2\x81\xa5\xe2\x81\xb0", 6),
              "\xe2\x81\xa5\xe2\x81\xb0");
    CHECK_STR(kvs_msg_quote(out, sizeof(out), "", 0), "");
    /* Exactly fitting text is whole; longer text ends in "..." after a
     * whole character, never inside an escape or a UTF-8 sequence. */
    char eight[8];
    CHECK_STR(kvs_msg_quote(eight, sizeof(eight), "abcdefg", 7), "abcdefg");
    CHECK_STR(kvs_msg_quote(eight, sizeof(eight), "abcdefgh", 8), "abcd...");
    CHECK_STR(kvs_msg_quote(eight, sizeof(eight),
                            "ab\x01"
                            "cdefgh",
                            9),
              "ab...");
    CHECK_STR(kvs_msg_quote(eight, sizeof(eight), "abc\xe2\x82\xacxyz", 9), "abc...");
    static uint8_t k511[511];
    memset(k511, 0xff, sizeof(k511));
    char big[256];
    kvs_msg_quote(big, sizeof(big), k511, sizeof(k511));
    CHECK(strlen(big) < sizeof(big));
    CHECK(kvs_utf8_valid(big, strlen(big)));
    CHECK_CONTAINS(big, "\\xff...");
}

KVS_TEST(validate_hmset_pairs)
{
    req_t q;
    req_make(&q, KVS__COMMAND_REQUEST__COMMAND_HMSET, "t", bin("k"));
    q.hmset.n_pairs = 0;
    expect_bad(&q.r, "Hmset.pairs is empty");
    req_make(&q, KVS__COMMAND_REQUEST__COMMAND_HMSET, "t", bin("k"));
    q.pair[1].value = NULL;
    expect_bad(&q.r, "Hmset.pairs[1].value is missing");
    req_make(&q, KVS__COMMAND_REQUEST__COMMAND_HMSET, "t", bin("k"));
    q.pvalue[2].kind_case = KVS__VALUE__KIND__NOT_SET;
    expect_bad(&q.r, "Hmset.pairs[2].value is missing");
}

KVS_TEST(validate_hmset_pair_keys)
{
    /* The path names the element the way the value check does:
     * "Hmset.pairs[i].key", not a nonexistent "pairs.key" list. */
    static uint8_t k512[512];
    req_t q;
    req_make(&q, KVS__COMMAND_REQUEST__COMMAND_HMSET, "t", bin("k"));
    q.pair[0].key.len = 0;
    expect_bad(&q.r, "Hmset.pairs[0].key is empty");
    req_make(&q, KVS__COMMAND_REQUEST__COMMAND_HMSET, "t", bin("k"));
    q.pair[1].key.len = 512, q.pair[1].key.data = k512;
    expect_bad(&q.r, "Hmset.pairs[1].key is 512 bytes; the maximum is 511");
}

/* The largest pair of a write, as a store would hold it: the key's bytes
 * and the value's encoded size; the same for a decoded Hset and the peek
 * of its bytes; 0s for writes that carry no value. */
KVS_TEST(largest_pair_of_a_write)
{
    req_t q;
    size_t klen, vlen;
    req_make(&q, KVS__COMMAND_REQUEST__COMMAND_HMSET, "t", bin("k"));
    q.pvalue[1].string_value = bin("a much longer value than that key");
    q.pair[2].key = bin("a long key, short value");
    kvs_msg_largest_pair(&q.r, NULL, &klen, &vlen);
    CHECK_EQ(klen, 1);
    CHECK_EQ(vlen, kvs__value__get_packed_size(&q.pvalue[1]));
    CHECK_EQ(vlen, 2 + strlen("a much longer value than that key"));
    req_make(&q, KVS__COMMAND_REQUEST__COMMAND_HSET, "t", bin("key"));
    q.value.string_value = bin("value");
    kvs_msg_largest_pair(&q.r, NULL, &klen, &vlen);
    CHECK_EQ(klen, 3);
    CHECK_EQ(vlen, 7);
    uint8_t buf[256];
    kvs_peek_t pk;
    size_t n = kvs__command_request__pack(&q.r, buf);
    CHECK(kvs_msg_peek(buf, n, &pk) == 1);
    kvs_msg_largest_pair(NULL, &pk, &klen, &vlen);
    CHECK_EQ(klen, 3);
    CHECK_EQ(vlen, 7);
    req_make(&q, KVS__COMMAND_REQUEST__COMMAND_HDEL, "t", bin("key"));
    kvs_msg_largest_pair(&q.r, NULL, &klen, &vlen);
    CHECK_EQ(klen + vlen, 0);
    n = kvs__command_request__pack(&q.r, buf);
    CHECK(kvs_msg_peek(buf, n, &pk) == 1);
    kvs_msg_largest_pair(NULL, &pk, &klen, &vlen);
    CHECK_EQ(klen + vlen, 0);
}

KVS_TEST(validate_hscan_cursor)
{
    static uint8_t cur[4096];
    req_t q;
    req_make(&q, KVS__COMMAND_REQUEST__COMMAND_HSCAN, "t", bin("k"));
    q.hscan.cursor.len = 100, q.hscan.cursor.data = cur;
    expect_ok(&q.r);
    q.hscan.cursor.len = sizeof(cur);
    expect_bad(&q.r, "Hscan.cursor is not a cursor this server returned; start with an empty "
                     "cursor");
}

KVS_TEST(decode_garbage_is_null)
{
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff};
    static const uint8_t truncated[] = {0x0a, 0x08, 0x0a, 0x01}; /* length past the end */
    kvs_arena_t a;
    kvs_arena_init(&a);
    CHECK(kvs_msg_decode_request(&a, junk, sizeof(junk), NULL) == NULL);
    CHECK(kvs_msg_decode_request(&a, truncated, sizeof(truncated), NULL) == NULL);
    CHECK(kvs_msg_decode_request(NULL, junk, sizeof(junk), NULL) == NULL);
    kvs_arena_close(&a);
}

KVS_TEST(request_table_and_command_names)
{
    static const char *const names[NCMD + 1] = {"none",   "Hget",    "Hgetall", "Hmget",
                                                "Hset",   "Hmset",   "Hdel",    "Hmdel",
                                                "Hexist", "Hmexist", "Hscan",   "Ping"};
    for (int i = 0; i <= NCMD; i++)
        CHECK_STR(kvs_msg_command_name(CMD(i)), names[i]);
    CHECK_STR(kvs_msg_command_name(CMD(60)), "none");
    CHECK_STR(kvs_msg_command_name(CMD(-1)), "none");

    for (int i = 1; i <= NCMD; i++) {
        char table[32];
        snprintf(table, sizeof(table), "table-%d", i);
        req_t q;
        req_make(&q, CMD(i), table, bin("k"));
        const char *t = kvs_msg_request_table(&q.r);
        if (has_table(CMD(i))) {
            CHECK(t != NULL);
            CHECK_STR(t, table);
        } else {
            CHECK(t == NULL);
        }
    }
    Kvs__CommandRequest none = KVS__COMMAND_REQUEST__INIT;
    CHECK(kvs_msg_request_table(&none) == NULL);
}

/* ---- arena ------------------------------------------------------------------ */

static int aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

KVS_TEST(arena_many_allocations)
{
    enum { N = 20000 };
    static uint8_t *ptr[N];
    static size_t len[N];
    kvs_arena_t a;
    kvs_arena_init(&a);
    for (size_t i = 0; i < N; i++) {
        len[i] = 1 + (i * 13) % 300;
        ptr[i] = kvs_arena_alloc(&a, len[i]);
        CHECK(ptr[i] != NULL);
        CHECK(aligned16(ptr[i]));
        memset(ptr[i], (int)(i & 0xff), len[i]);
    }
    /* Nothing overlapped: every block still holds its own pattern. */
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < len[i]; j++)
            CHECK_EQ(ptr[i][j], i & 0xff);
    kvs_arena_close(&a);
}

KVS_TEST(arena_alignment_16)
{
    kvs_arena_t a;
    kvs_arena_init(&a);
    for (size_t n = 0; n <= 100; n++) {
        void *p = kvs_arena_alloc(&a, n);
        CHECK(p != NULL);
        CHECK(aligned16(p));
    }
    void *big = kvs_arena_alloc(&a, 100000 + 3);
    CHECK(big != NULL);
    CHECK(aligned16(big));
    for (size_t n = 1; n < 40; n += 3) {
        void *p = kvs_arena_alloc(&a, n);
        CHECK(aligned16(p));
        /* Holds any type: long double and max_align_t stores are fine. */
        *(long double *)p = 1.0L;
    }
    kvs_arena_close(&a);
}

KVS_TEST(arena_reset_reuses_memory)
{
    kvs_arena_t a;
    kvs_arena_init(&a);
    uint8_t *first = kvs_arena_alloc(&a, 64);
    CHECK(first != NULL);
    for (int i = 0; i < 1000; i++)
        memset(kvs_arena_alloc(&a, 200), 0xab, 200);
    CHECK(kvs_arena_alloc(&a, 1 << 20) != NULL);
    kvs_arena_reset(&a);
    CHECK_EQ(a.used, 0);
    /* The chunk kept for reuse hands out the same memory again. */
    uint8_t *again = kvs_arena_alloc(&a, 64);
    CHECK(again == first);
    /* Many reset cycles: steady state, no growth (ASan reports leaks). */
    for (int round = 0; round < 500; round++) {
        for (int i = 0; i < 50; i++)
            memset(kvs_arena_alloc(&a, 1000), round & 0xff, 1000);
        kvs_arena_reset(&a);
    }
    CHECK(kvs_arena_alloc(&a, 64) == first);
    kvs_arena_close(&a);
}

KVS_TEST(arena_large_allocations)
{
    kvs_arena_t a;
    kvs_arena_init(&a);
    uint8_t *small = kvs_arena_alloc(&a, 10);
    uint8_t *big = kvs_arena_alloc(&a, 4u << 20);
    uint8_t *mid = kvs_arena_alloc(&a, 16385);
    uint8_t *small2 = kvs_arena_alloc(&a, 10);
    CHECK(small && big && mid && small2);
    CHECK(aligned16(big) && aligned16(mid) && aligned16(small2));
    memset(small, 1, 10);
    memset(big, 2, 4u << 20);
    memset(mid, 3, 16385);
    memset(small2, 4, 10);
    CHECK(small[9] == 1 && big[0] == 2 && big[(4u << 20) - 1] == 2);
    CHECK(mid[16384] == 3 && small2[0] == 4 && small[0] == 1);
    kvs_arena_reset(&a);
    kvs_arena_close(&a);

    /* A large allocation as the very first one, then reset. */
    kvs_arena_init(&a);
    big = kvs_arena_alloc(&a, 1u << 20);
    CHECK(big != NULL);
    memset(big, 5, 1u << 20);
    kvs_arena_reset(&a);
    CHECK(kvs_arena_alloc(&a, 16) != NULL);
    kvs_arena_close(&a);
}

KVS_TEST(arena_impossible_size_is_null)
{
    /* Sizes whose rounding or chunk header would wrap around size_t must
     * fail, not return a block smaller than asked for. */
    kvs_arena_t a;
    kvs_arena_init(&a);
    CHECK(kvs_arena_alloc(&a, SIZE_MAX) == NULL);
    CHECK(kvs_arena_alloc(&a, SIZE_MAX - 7) == NULL);
    CHECK(kvs_arena_alloc(&a, SIZE_MAX - 20) == NULL);
    kvs_arena_close(&a);
}

/* Packs an Hmset of `n` pairs with values of every kind. */
static uint8_t *pack_hmset(size_t n, size_t *len)
{
    Kvs__Hmset m = KVS__HMSET__INIT;
    Kvs__Kvpair *pairs[8], pair[8];
    Kvs__Value val[8];
    char keys[8][32];
    CHECK(n <= 8);
    m.table = "events";
    m.n_pairs = n;
    m.pairs = pairs;
    for (size_t i = 0; i < n; i++) {
        Kvs__Kvpair p = KVS__KVPAIR__INIT;
        Kvs__Value v = KVS__VALUE__INIT;
        snprintf(keys[i], sizeof(keys[i]), "key-%zu", i);
        v.kind_case = KVS__VALUE__KIND_INTEGER_VALUE;
        v.integer_value = -(int64_t)i * 1000;
        val[i] = v, pair[i] = p;
        pair[i].key = bin(keys[i]);
        pair[i].value = &val[i];
        pairs[i] = &pair[i];
    }
    Kvs__CommandRequest r = KVS__COMMAND_REQUEST__INIT;
    r.command_case = KVS__COMMAND_REQUEST__COMMAND_HMSET;
    r.hmset = &m;
    *len = protobuf_c_message_get_packed_size(&r.base);
    uint8_t *p = malloc(*len);
    CHECK(p != NULL);
    protobuf_c_message_pack(&r.base, p);
    return p;
}

static void check_hmset(const Kvs__CommandRequest *r, size_t n)
{
    CHECK(r != NULL);
    CHECK_EQ(r->command_case, KVS__COMMAND_REQUEST__COMMAND_HMSET);
    CHECK_STR(r->hmset->table, "events");
    CHECK_EQ(r->hmset->n_pairs, n);
    for (size_t i = 0; i < n; i++) {
        char key[32];
        snprintf(key, sizeof(key), "key-%zu", i);
        CHECK_EQ(r->hmset->pairs[i]->key.len, strlen(key));
        CHECK(memcmp(r->hmset->pairs[i]->key.data, key, strlen(key)) == 0);
        CHECK_EQ(r->hmset->pairs[i]->value->integer_value, -(int64_t)i * 1000);
    }
}

KVS_TEST(decode_with_arena_then_reset)
{
    kvs_arena_t a;
    kvs_arena_init(&a);
    for (int round = 0; round < 300; round++) {
        size_t n = 1 + (size_t)round % 8, len;
        uint8_t *p = pack_hmset(n, &len);
        Kvs__CommandRequest *r = kvs_msg_decode_request(&a, p, len, NULL);
        check_hmset(r, n); /* its keys and values are read where they are in p */
        CHECK_EQ(kvs_msg_validate(r, msg, sizeof(msg)), KVS_STATUS_OK);
        free(p);
        if (round % 10 == 9)
            kvs_arena_reset(&a);
    }
    kvs_arena_close(&a);

    /* Without an arena: malloc, freed by the caller. */
    size_t len;
    uint8_t *p = pack_hmset(3, &len);
    Kvs__CommandRequest *r = kvs_msg_decode_request(NULL, p, len, NULL);
    check_hmset(r, 3);
    kvs__command_request__free_unpacked(r, NULL);
    free(p);
}

/* ---- memory per request ------------------------------------------------------ */

/* Appends varint v at p[*n]. */
static void put_varint(uint8_t *p, size_t *n, uint64_t v)
{
    *n += kvs_varint_put(p + *n, v);
}

/* Encodes, by hand (protobuf-c would take the same memory to build it as
 * to decode it), a request of command `cmd` (Hmget, Hmdel, Hmexist: n keys;
 * Hmset: n pairs with integer value 1) on table "t" whose i-th key is the
 * klen low bytes of i, so keys are distinct while n <= 256^klen. */
static uint8_t *raw_multi(Kvs__CommandRequest__CommandCase cmd, size_t n, size_t klen, size_t *len)
{
    size_t elem = cmd == KVS__COMMAND_REQUEST__COMMAND_HMSET ? 2 + 2 + klen + 4 : 2 + klen;
    size_t inner = 3 + n * elem, at = 0;
    uint8_t *p = malloc(inner + 16);
    CHECK(p != NULL && klen < 100);
    put_varint(p, &at, (uint64_t)cmd << 3 | 2);
    put_varint(p, &at, inner);
    p[at++] = 0x0a, p[at++] = 1, p[at++] = 't';
    for (size_t i = 0; i < n; i++) {
        p[at++] = 0x12;
        if (cmd == KVS__COMMAND_REQUEST__COMMAND_HMSET) {
            p[at++] = (uint8_t)(2 + klen + 4);
            p[at++] = 0x0a;
        }
        p[at++] = (uint8_t)klen;
        for (size_t b = 0; b < klen; b++)
            p[at++] = (uint8_t)(i >> (8 * b));
        if (cmd == KVS__COMMAND_REQUEST__COMMAND_HMSET)
            p[at++] = 0x12, p[at++] = 2, p[at++] = 0x18, p[at++] = 1;
    }
    *len = at;
    return p;
}

/* Decodes p[0..len) into a fresh arena and checks the outcome: `want` is
 * 200 (decoded) or 413/400 (refused); the arena never held more than
 * `most` bytes (0: the decode budget) and a chunk. */
static void decode_costs_at_most(const uint8_t *p, size_t len, uint32_t want, size_t most)
{
    kvs_arena_t a;
    uint32_t st = 0;
    kvs_arena_init(&a);
    Kvs__CommandRequest *r = kvs_msg_decode_request(&a, p, len, &st);
    CHECK_EQ(r != NULL ? KVS_STATUS_OK : st, want);
    CHECK(a.big <= (most != 0 ? most : kvs_msg_decode_budget(len)) + 16384);
    kvs_arena_close(&a);
    if (want != KVS_STATUS_OK) { /* malloc'ed decoding is held to the same budget */
        st = 0;
        CHECK(kvs_msg_decode_request(NULL, p, len, &st) == NULL);
        CHECK_EQ(st, want);
    }
}

static void decode_costs(const uint8_t *p, size_t len, uint32_t want)
{
    decode_costs_at_most(p, len, want, 0);
}

KVS_TEST(decode_budget_refuses_floods_of_tiny_keys)
{
    static const Kvs__CommandRequest__CommandCase cmds[] = {
        KVS__COMMAND_REQUEST__COMMAND_HMGET, KVS__COMMAND_REQUEST__COMMAND_HMDEL,
        KVS__COMMAND_REQUEST__COMMAND_HMEXIST, KVS__COMMAND_REQUEST__COMMAND_HMSET};
    char text[400];
    for (size_t c = 0; c + 1 < sizeof(cmds) / sizeof(cmds[0]); c++)
        for (size_t klen = 0; klen <= 1; klen++) {
            size_t len;
            uint8_t *p = raw_multi(cmds[c], 1000000, klen, &len);
            /* Left in place: 16 bytes a key, at most 8 times the request. */
            decode_costs_at_most(p, len, KVS_STATUS_OK, 8 * len);
            /* With a field protobuf-c keeps as unknown, protobuf-c decodes
             * it, within the budget. */
            uint8_t *last = p + len - (2 + klen); /* the last key becomes field 15: 0 */
            last[0] = 15 << 3;
            if (klen == 1)
                last[1] = 0x80, last[2] = 0; /* 0 in two bytes */
            else
                last[1] = 0;
            decode_costs(p, len, KVS_STATUS_TOO_LARGE);
            free(p);
        }
    /* Empty pairs (Hmset), and a flood of unknown fields (a varint of
     * field 15 inside Hmget), 2 bytes each. */
    static const uint8_t flood[][2] = {{0x12, 0}, {15 << 3, 0}};
    for (size_t f = 0; f < 2; f++) {
        size_t n = 2 << 20, at = 0;
        uint8_t *p = malloc(n + 16);
        CHECK(p != NULL);
        put_varint(p, &at, (f == 0 ? cmds[3] : cmds[0]) << 3 | 2);
        put_varint(p, &at, n);
        for (size_t i = 0; i < n; i += 2)
            p[at++] = flood[f][0], p[at++] = flood[f][1];
        if (f == 0)
            decode_costs(p, at, KVS_STATUS_TOO_LARGE);
        else /* walked before protobuf-c spends an allocation on each: untouched */
            decode_costs_at_most(p, at, KVS_STATUS_BAD_REQUEST, 1);
        free(p);
    }
    CHECK_EQ(kvs_msg_decode_refusal(KVS_STATUS_TOO_LARGE, NULL, 3000000, text, sizeof(text)), 413);
    CHECK_CONTAINS(text, "request of 3000000 bytes would take more than 62097152 bytes of memory "
                         "to decode (20 times its size and 2 MiB)");
    CHECK_CONTAINS(text, "nothing was done; send fewer keys per request");
    CHECK_EQ(kvs_msg_decode_refusal(KVS_STATUS_BAD_REQUEST, NULL, 7, text, sizeof(text)), 400);
    CHECK_STR(text, "frame payload (7 bytes) is not a valid kvs.CommandRequest");
    CHECK(kvs_msg_decode_budget(SIZE_MAX / 2) == SIZE_MAX);
}

/* A request of KVS_MSG_WIRE_FIRST bytes or more with more than
 * KVS_MSG_UNKNOWN_MOST fields protobuf-c would keep as unknown is refused
 * before it is decoded (protobuf-c spent 150-300 ms on a 4 MiB frame of
 * them); with that many, or in a smaller request, protobuf-c decodes it
 * (kvs_msg_validate then refuses it in the words a small one gets). */
KVS_TEST(a_large_request_with_many_unknown_fields_is_not_decoded)
{
    for (size_t big = 0; big <= 1; big++)
        for (size_t extra = 0; extra <= 1; extra++) {
            size_t n = KVS_MSG_UNKNOWN_MOST + extra, pad = big ? KVS_MSG_WIRE_FIRST : 100;
            size_t body = 3 + 4 + pad + 2 * n, at = 0; /* table, a key, the unknown fields */
            uint8_t *p = malloc(body + 16);
            CHECK(p != NULL);
            put_varint(p, &at, KVS__COMMAND_REQUEST__COMMAND_HMGET << 3 | 2);
            put_varint(p, &at, body);
            size_t start = at;
            p[at++] = 0x0a, p[at++] = 1, p[at++] = 't';
            p[at++] = 0x12;
            put_varint(p, &at, pad);
            memset(p + at, 'k', pad);
            at += pad;
            for (size_t i = 0; i < n; i++) /* field 15 (a varint, 0): unknown in an Hmget */
                p[at++] = 15 << 3, p[at++] = 0;
            CHECK(at - start <= body); /* the key's length took fewer bytes than allowed for */
            size_t fix = 0;            /* write the body's true length */
            put_varint(p, &fix, KVS__COMMAND_REQUEST__COMMAND_HMGET << 3 | 2);
            uint8_t lenbuf[8];
            size_t ll = 0;
            put_varint(lenbuf, &ll, at - start);
            CHECK(fix + ll == start);
            memcpy(p + fix, lenbuf, ll);
            kvs_arena_t a;
            kvs_arena_init(&a);
            uint32_t st = 0;
            Kvs__CommandRequest *r = kvs_msg_decode_request(&a, p, at, &st);
            if (big && extra) {
                CHECK(r == NULL);
                CHECK_EQ(st, KVS_STATUS_BAD_REQUEST);
                CHECK(a.big <= 16384);
                char text[300];
                kvs_msg_decode_refusal(st, p, at, text, sizeof(text));
                CHECK_CONTAINS(text, "Hmget has unknown field 15 (varint)");
            } else {
                CHECK(r != NULL);
                CHECK_EQ(r->hmget->base.n_unknown_fields, n);
                char text[300];
                CHECK_EQ(kvs_msg_validate(r, text, sizeof(text)), KVS_STATUS_BAD_REQUEST);
                CHECK_CONTAINS(text, "unsupported command: Hmget has unknown field 15");
            }
            kvs_arena_close(&a);
            free(p);
        }
}

/* An answer is held to the same budget: a flood of empty pairs (2 bytes
 * each on the wire) is refused as too large to decode, bytes that are not
 * an answer as such, and an answer of real pairs decodes, in an arena or
 * with malloc. */
KVS_TEST(decode_response_is_held_to_the_budget)
{
    size_t n = 4 << 20, at = 0;
    uint8_t *p = malloc(n + 16);
    CHECK(p != NULL);
    p[at++] = 0x08, p[at++] = 0xc8, p[at++] = 0x01; /* status 200 */
    for (size_t i = 0; i < n; i += 2)
        p[at++] = 0x22, p[at++] = 0; /* an empty pair */
    uint32_t st = 0;
    CHECK(kvs_msg_decode_response(NULL, p, at, &st) == NULL);
    CHECK_EQ(st, KVS_STATUS_TOO_LARGE);
    CHECK(kvs_msg_decode_response(NULL, (const uint8_t *)"\xff\xff", 2, &st) == NULL);
    CHECK_EQ(st, KVS_STATUS_BAD_REQUEST);
    free(p);
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    Kvs__Kvpair pairs[1000], *pp[1000];
    Kvs__Value vals[1000];
    char keys[1000][8];
    for (int i = 0; i < 1000; i++) {
        kvs__kvpair__init(&pairs[i]);
        kvs__value__init(&vals[i]);
        snprintf(keys[i], sizeof(keys[i]), "k%d", i);
        pairs[i].key.data = (uint8_t *)keys[i];
        pairs[i].key.len = strlen(keys[i]);
        vals[i].kind_case = KVS__VALUE__KIND_STRING_VALUE;
        vals[i].string_value.data = (uint8_t *)"v";
        vals[i].string_value.len = 1;
        pairs[i].value = &vals[i];
        pp[i] = &pairs[i];
    }
    r.status = 200;
    r.n_pairs = 1000;
    r.pairs = pp;
    size_t len = kvs__command_response__get_packed_size(&r);
    p = malloc(len);
    CHECK(p != NULL);
    kvs__command_response__pack(&r, p);
    Kvs__CommandResponse *d = kvs_msg_decode_response(NULL, p, len, &st);
    CHECK(d != NULL && d->n_pairs == 1000 && d->status == 200);
    kvs__command_response__free_unpacked(d, NULL);
    kvs_arena_t a;
    kvs_arena_init(&a);
    d = kvs_msg_decode_response(&a, p, len, NULL);
    CHECK(d != NULL && d->n_pairs == 1000 && d->pairs[999]->value->string_value.len == 1 &&
          d->pairs[999]->value->string_value.data[0] == 'v');
    kvs_arena_close(&a);
    free(p);
}

/* An Hmset the in-place decoder gives up on only at its last pair (a field
 * protobuf-c keeps as unknown) costs no more than the budget all the
 * same: what the in-place attempt took is not added to protobuf-c's. */
KVS_TEST(decode_budget_holds_when_in_place_gives_up_late)
{
    for (size_t klen = 3; klen <= 8; klen += 5) {
        size_t len;
        uint8_t *p = raw_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 300000, klen, &len);
        p[len - 2] = 7 << 3; /* the last value: {field 7: 1}, unknown */
        kvs_arena_t a;
        kvs_arena_init(&a);
        Kvs__CommandRequest *r = kvs_msg_decode_request(&a, p, len, NULL);
        CHECK(r != NULL && r->hmset->n_pairs == 300000); /* by protobuf-c: */
        CHECK_EQ(r->hmset->pairs[299999]->value->base.n_unknown_fields, 1);
        CHECK(a.big <= kvs_msg_decode_budget(len) + 16384);
        kvs_arena_close(&a);
        free(p);
    }
}

KVS_TEST(decode_budget_takes_every_request_of_distinct_keys)
{
    /* Keys of 2 bytes or fewer: at most 65,536 distinct, within the slack;
     * keys of 3 bytes or more cost less than 16 times their bytes. */
    static const struct {
        Kvs__CommandRequest__CommandCase cmd;
        size_t n, klen;
    } ok[] = {
        {KVS__COMMAND_REQUEST__COMMAND_HMGET, 65536, 2},
        {KVS__COMMAND_REQUEST__COMMAND_HMSET, 65536, 2},
        {KVS__COMMAND_REQUEST__COMMAND_HMGET, 1000000, 3},
        {KVS__COMMAND_REQUEST__COMMAND_HMSET, 1000000, 3},
        {KVS__COMMAND_REQUEST__COMMAND_HMDEL, 300000, 8},
        {KVS__COMMAND_REQUEST__COMMAND_HMSET, 1000, 1},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        size_t len;
        uint8_t *p = raw_multi(ok[i].cmd, ok[i].n, ok[i].klen, &len);
        decode_costs(p, len, KVS_STATUS_OK);
        free(p);
    }
    size_t len; /* garbage is still 400 */
    uint8_t *p = raw_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, 10, 3, &len);
    decode_costs(p, len - 1, KVS_STATUS_BAD_REQUEST);
    free(p);
}

/* Checks that kvs_msg_decode_request (into an arena) reads p[0..len)
 * exactly as protobuf-c reads ref[0..ref_len); returns 1 when it left the
 * keys in p (the keys request decoder took it). */
static int decodes_as(const uint8_t *p, size_t len, const uint8_t *ref, size_t ref_len)
{
    char m1[300] = "", m2[300] = ""; /* a valid request leaves them as they are */
    kvs_arena_t a;
    kvs_arena_init(&a);
    Kvs__CommandRequest *q = kvs_msg_decode_request(&a, p, len, NULL);
    Kvs__CommandRequest *r = kvs__command_request__unpack(NULL, ref_len, ref);
    CHECK((q == NULL) == (r == NULL));
    int in_place = 0;
    if (q != NULL) {
        CHECK_EQ(q->command_case, r->command_case);
        CHECK_EQ(q->accept_stale, r->accept_stale);
        CHECK_EQ(q->min_position.len, r->min_position.len);
        CHECK(q->min_position.len == 0 ||
              memcmp(q->min_position.data, r->min_position.data, r->min_position.len) == 0);
        CHECK_EQ(kvs_msg_validate(q, m1, sizeof(m1)), kvs_msg_validate(r, m2, sizeof(m2)));
        CHECK_STR(m1, m2);
        /* Packed again, the two are the same bytes: every field alike. */
        size_t n1 = protobuf_c_message_get_packed_size(&q->base);
        CHECK_EQ(n1, protobuf_c_message_get_packed_size(&r->base));
        uint8_t *b1 = malloc(n1 + 1), *b2 = malloc(n1 + 1);
        CHECK(b1 != NULL && b2 != NULL);
        protobuf_c_message_pack(&q->base, b1);
        protobuf_c_message_pack(&r->base, b2);
        CHECK(memcmp(b1, b2, n1) == 0);
        free(b1);
        free(b2);
        if (q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMSET && q->hmset->n_pairs > 0)
            in_place = q->hmset->pairs[0]->key.len > 0 && q->hmset->pairs[0]->key.data >= p &&
                       q->hmset->pairs[0]->key.data < p + len;
        const char *t1 = kvs_msg_request_table(q), *t2 = kvs_msg_request_table(r);
        CHECK((t1 == NULL) == (t2 == NULL));
        if (t1 != NULL)
            CHECK_STR(t1, t2);
        if (q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMGET ||
            q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMDEL ||
            q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMEXIST) {
            const Kvs__Hmdel *x = q->hmdel, *y = r->hmdel; /* {table, n_keys, keys} alike */
            CHECK_EQ(x->n_keys, y->n_keys);
            for (size_t i = 0; i < x->n_keys; i++) {
                CHECK_EQ(x->keys[i].len, y->keys[i].len);
                CHECK(x->keys[i].len == 0 ||
                      memcmp(x->keys[i].data, y->keys[i].data, x->keys[i].len) == 0);
                in_place |= x->keys[i].data >= p && x->keys[i].data < p + len;
            }
            if (q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMDEL)
                CHECK_EQ(x->answer_budget, y->answer_budget);
        }
        kvs__command_request__free_unpacked(r, NULL);
    }
    kvs_arena_close(&a);
    return in_place;
}

/* decodes_as for a request with its command member once: protobuf-c reads
 * it as protobuf does. */
static int decodes_as_protobuf_c(const uint8_t *p, size_t len)
{
    return decodes_as(p, len, p, len);
}

KVS_TEST(hmset_decodes_in_place_as_protobuf_c_reads_it)
{
    size_t len;
    uint8_t *p = raw_multi(KVS__COMMAND_REQUEST__COMMAND_HMSET, 40, 3, &len);
    CHECK(decodes_as_protobuf_c(p, len));
    free(p);
    p = pack_hmset(8, &len); /* integers, as protobuf-c packs them */
    CHECK(decodes_as_protobuf_c(p, len));
    free(p);
    /* Hmset{table "t", pairs: every kind of value, no value, an empty one,
     * the key twice; budget, twice}, then with the options. */
    static const uint8_t kinds[] = {
        0x2a, 86,   0x0a, 1,    't',  0x18, 9,                            /* table, budget 9 */
        0x12, 7,    0x0a, 1,    'a',  0x12, 2,    0x0a, 0,                /* string "" */
        0x12, 9,    0x0a, 1,    'b',  0x12, 4,    0x12, 2,    0,    0xff, /* binary */
        0x12, 14,   0x0a, 1,    'c',  0x12, 9,    0x21, 1,    2,    3,
        4,    5,    6,    7,    0xbf, /* float */
        0x12, 16,   0x0a, 1,    'd',  0x12, 11,   0x18, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,          /* integer -1 */
        0x12, 7,    0x0a, 1,    'e',  0x12, 2,    0x28, 2, /* bool */
        0x12, 3,    0x0a, 1,    'f',                       /* no value */
        0x12, 5,    0x0a, 1,    'g',  0x12, 0,             /* an empty Value */
        0x18, 0x87, 0x80, 0x80, 0x80, 0x10,                /* budget 2^32 + 7 */
        0xa2, 0x06, 1,    9,    0xa8, 0x06, 1};
    CHECK(decodes_as_protobuf_c(kinds, sizeof(kinds) - 7));
    CHECK(decodes_as_protobuf_c(kinds, sizeof(kinds)));
    /* What protobuf-c reads in its own ways: a value twice (merged), a
     * Value of two fields (the last kind), an unknown field in a pair, a
     * string as a varint, a key cut short. */
    static const uint8_t odd[][24] = {
        {0x2a, 13, 0x12, 11, 0x0a, 1, 'a', 0x12, 2, 0x18, 1, 0x12, 2, 0x28, 1},
        {0x2a, 11, 0x12, 9, 0x0a, 1, 'a', 0x12, 4, 0x18, 1, 0x28, 1},
        {0x2a, 7, 0x12, 5, 0x0a, 1, 'a', 0x20, 1},
        {0x2a, 9, 0x12, 7, 0x0a, 1, 'a', 0x12, 2, 0x08, 1},
        {0x2a, 5, 0x12, 3, 0x0a, 2, 'a'},
    };
    static const size_t odd_len[] = {15, 13, 9, 11, 7};
    for (size_t i = 0; i < 5; i++)
        CHECK(!decodes_as_protobuf_c(odd[i], odd_len[i]));
}

KVS_TEST(keys_requests_decode_in_place_as_protobuf_c_reads_them)
{
    static const Kvs__CommandRequest__CommandCase cmds[] = {KVS__COMMAND_REQUEST__COMMAND_HMGET,
                                                            KVS__COMMAND_REQUEST__COMMAND_HMDEL,
                                                            KVS__COMMAND_REQUEST__COMMAND_HMEXIST};
    uint8_t buf[512];
    for (size_t c = 0; c < 3; c++) {
        size_t len;
        uint8_t *p = raw_multi(cmds[c], 50, 3, &len);
        CHECK(decodes_as_protobuf_c(p, len)); /* the plain shape: keys left in place */
        /* Request options, a table given twice, Hmdel's budget (twice,
         * and past 32 bits), empty keys, no table: all read alike. */
        static const uint8_t extra[][16] = {
            {0xa2, 0x06, 3, 1, 2, 3, 0xa8, 0x06, 1}, /* min_position, accept_stale */
            {0xa8, 0x06, 0x80, 0x01, 0xa2, 0x06, 0}, /* stale 128, empty position */
            {0xa2, 0x06, 1, 9, 0xa2, 0x06, 2, 7, 7}, /* position twice */
        };
        static const size_t extra_len[] = {9, 7, 9};
        for (size_t e = 0; e < 3; e++) {
            CHECK(len + extra_len[e] <= sizeof(buf));
            memcpy(buf, p, len);
            memcpy(buf + len, extra[e], extra_len[e]);
            CHECK(decodes_as_protobuf_c(buf, len + extra_len[e]));
        }
        free(p);
    }
    static const uint8_t odd[][40] = {
        /* Hmget{table "t", table "uv", keys "a", ""} */
        {0x1a, 12, 0x0a, 1, 't', 0x0a, 2, 'u', 'v', 0x12, 1, 'a', 0x12, 0},
        /* Hmdel{keys "a", budget 5, budget 2^32 + 7} */
        {0x3a, 14, 0x12, 1, 'a', 0x18, 5, 0x18, 0x87, 0x80, 0x80, 0x80, 0x10, 0x0a, 1, 'x'},
        /* Hmexist with no table */
        {0x4a, 3, 0x12, 1, 'k'},
        /* Hmget with an unknown field inside; with a table as a varint */
        {0x1a, 5, 0x12, 1, 'k', 0x20, 1},
        {0x1a, 5, 0x12, 1, 'k', 0x08, 1},
        /* Hmget twice; Hmget then Hget */
        {0x1a, 3, 0x12, 1, 'a', 0x1a, 3, 0x12, 1, 'b'},
        {0x1a, 3, 0x12, 1, 'a', 0x0a, 3, 0x12, 1, 'b'},
        /* a fixed32 field at the top; a key cut short */
        {0x1a, 3, 0x12, 1, 'a', 0xfd, 0x06, 1, 2, 3, 4},
        {0x1a, 3, 0x12, 2, 'a'},
    };
    static const size_t odd_len[] = {14, 16, 5, 7, 7, 10, 10, 11, 5};
    for (size_t i = 0; i < sizeof(odd_len) / sizeof(odd_len[0]); i++)
        if (i != 5) /* Hmget twice: merged (concatenated_requests_merge) */
            decodes_as_protobuf_c(odd[i], odd_len[i]);
    CHECK(decodes_as_protobuf_c(odd[0], odd_len[0]));
    CHECK(decodes_as_protobuf_c(odd[1], odd_len[1]));
    CHECK(!decodes_as_protobuf_c(odd[3], odd_len[3])); /* protobuf-c's: keys copied */
}

/* Appends field `num` (length-delimited) holding b[0..n) to out at *len. */
static void put_ld(uint8_t *out, size_t *len, uint32_t num, const void *b, size_t n)
{
    *len += kvs_varint_put(out + *len, (uint64_t)num << 3 | 2);
    *len += kvs_varint_put(out + *len, n);
    memcpy(out + *len, b, n);
    *len += n;
}

/* A command member given several times in a row is merged, as protobuf
 * reads it (MergeFrom; the conformance suite's ValidDataOneof.MESSAGE.Merge):
 * what concatenated encoded requests mean. protobuf-c keeps the last one
 * alone, so an Hmset of two concatenated requests wrote the last one's
 * pairs only, answering 200. The reference is protobuf-c reading the one
 * merged member (where it is right: repeated fields concatenated, the last
 * scalar winning, messages merged). */
/* What a router forwards: the merged bytes themselves, so that a worker
 * that keeps only the last member (an older release) reads the same. */
KVS_TEST(merge_request_gives_the_bytes_protobuf_reads)
{
    static const uint8_t keys_a[] = {0x0a, 1, 't', 0x12, 1, 'a'}, keys_b[] = {0x12, 1, 'b'};
    static const uint8_t key[] = {0x0a, 1, 't', 0x12, 1, 'k'};
    static const uint8_t pos[] = {1, 2, 3};
    uint8_t p[128], ref[128], body[64];
    size_t n = 0, rn = 0;
    enum { HGET = 1, HMGET = 3 };
    put_ld(p, &n, HGET, key, sizeof(key)); /* dropped: another member before the run */
    put_ld(p, &n, HMGET, keys_a, sizeof(keys_a));
    put_ld(p, &n, 100, pos, sizeof(pos));
    put_ld(p, &n, HMGET, keys_b, sizeof(keys_b));
    put_ld(ref, &rn, 100, pos, sizeof(pos));
    memcpy(body, keys_a, sizeof(keys_a));
    memcpy(body + sizeof(keys_a), keys_b, sizeof(keys_b));
    put_ld(ref, &rn, HMGET, body, sizeof(keys_a) + sizeof(keys_b));
    kvs_arena_t a;
    kvs_arena_init(&a);
    const uint8_t *q = p;
    size_t len = n;
    CHECK_EQ(kvs_msg_merge_request(&a, &q, &len), 0);
    CHECK(q != p);
    CHECK_EQ(len, rn);
    CHECK(memcmp(q, ref, rn) == 0);
    const uint8_t *again = q; /* merged once: nothing left to merge */
    CHECK_EQ(kvs_msg_merge_request(&a, &again, &len), 0);
    CHECK(again == q);
    size_t off = 2 + 1 + sizeof(pos); /* past field 100: the Hmget member alone */
    const uint8_t *single = ref + off;
    size_t slen = rn - off;
    CHECK(kvs_msg_decode_request(&a, single, slen, NULL) != NULL); /* a request indeed */
    CHECK_EQ(kvs_msg_merge_request(&a, &single, &slen), 0);
    CHECK(single == ref + off && slen == rn - off);
    kvs_arena_close(&a);
}

/* A singular message field given twice inside the command (Hset's pair,
 * a Kvpair's value) is one field holding both bodies, as protobuf parses
 * it: a later key "" replaces "k1", and a Value holding string_value ""
 * then nothing is that empty string. protobuf-c merged the decoded copies,
 * where a later copy's empty bytes counted as not set: the Hset wrote k1
 * (protobuf: 400, the key is empty), and the empty string was lost (400,
 * the value is missing). */
KVS_TEST(nested_messages_given_twice_read_as_protobuf_reads_them)
{
    static const uint8_t table[] = {0x0a, 2, 't', 'm'};
    /* pair{key "k1", value{string_value "v1"}}, then pair{key ""} */
    static const uint8_t pair1[] = {0x0a, 2, 'k', '1', 0x12, 4, 0x0a, 2, 'v', '1'};
    static const uint8_t pair2[] = {0x0a, 0};
    /* pair{key "k2", value{string_value ""}, value{}} */
    static const uint8_t pair3[] = {0x0a, 2, 'k', '2', 0x12, 2, 0x0a, 0, 0x12, 0};
    uint8_t p[128], body[64];
    size_t n = 0, bn = 0;
    char msg[200];
    enum { HSET = 4, HMSET = 5 };
    put_ld(body, &bn, 1, "tm", 2);
    put_ld(body, &bn, 2, pair1, sizeof(pair1));
    put_ld(p, &n, HSET, body, bn);
    bn = 0;
    put_ld(body, &bn, 2, pair2, sizeof(pair2));
    put_ld(p, &n, HSET, body, bn);
    kvs_arena_t a;
    kvs_arena_init(&a);
    Kvs__CommandRequest *q = kvs_msg_decode_request(&a, p, n, NULL);
    CHECK(q != NULL && q->command_case == KVS__COMMAND_REQUEST__COMMAND_HSET);
    CHECK_EQ(q->hset->pair->key.len, 0u);
    CHECK_EQ(kvs_msg_validate(q, msg, sizeof(msg)), KVS_STATUS_BAD_REQUEST);
    CHECK_STR(msg, "Hset.pair.key is empty");
    /* What a router forwards is what it read: the same bytes. */
    const uint8_t *fw = p;
    size_t fwlen = n;
    CHECK_EQ(kvs_msg_merge_request(&a, &fw, &fwlen), 0);
    q = kvs_msg_decode_merged(&a, fw, fwlen, NULL);
    CHECK(q != NULL && q->hset->pair->key.len == 0u);
    kvs_arena_close(&a);

    for (int multi = 0; multi < 2; multi++) {
        n = bn = 0;
        put_ld(body, &bn, 1, table + 2, 2);
        put_ld(body, &bn, 2, pair3, sizeof(pair3));
        put_ld(p, &n, multi ? HMSET : HSET, body, bn);
        kvs_arena_init(&a);
        q = kvs_msg_decode_request(&a, p, n, NULL);
        CHECK(q != NULL);
        const Kvs__Kvpair *kp = multi ? q->hmset->pairs[0] : q->hset->pair;
        CHECK(kp->value != NULL);
        CHECK_EQ(kp->value->kind_case, KVS__VALUE__KIND_STRING_VALUE);
        CHECK_EQ(kp->value->string_value.len, 0u);
        CHECK_EQ(kvs_msg_validate(q, msg, sizeof(msg)), KVS_STATUS_OK);
        kvs_arena_close(&a);
        q = kvs_msg_decode_request(NULL, p, n, NULL); /* malloc'd: the same */
        CHECK(q != NULL);
        kp = multi ? q->hmset->pairs[0] : q->hset->pair;
        CHECK(kp->value != NULL && kp->value->kind_case == KVS__VALUE__KIND_STRING_VALUE);
        kvs__command_request__free_unpacked(q, NULL);
    }
}

/* Joining reads bytes protobuf-c may refuse: every prefix of a request
 * whose nested fields repeat, and every byte of it changed, is decoded or
 * refused, and rewritten within its length (ASan watches the reads). */
KVS_TEST(joining_nested_copies_survives_cut_and_changed_bytes)
{
    static const uint8_t pair1[] = {0x0a, 2, 'k', '1', 0x12, 4, 0x0a, 2, 'v', '1'};
    static const uint8_t pair2[] = {0x0a, 0, 0x12, 2, 0x0a, 0, 0x12, 0};
    uint8_t p[128], body[64], cut[128];
    size_t n = 0, bn = 0;
    put_ld(body, &bn, 1, "tm", 2);
    put_ld(body, &bn, 2, pair1, sizeof(pair1));
    put_ld(body, &bn, 2, pair2, sizeof(pair2));
    put_ld(p, &n, 4, body, bn);
    put_ld(p, &n, 4, body, bn);
    for (size_t len = 0; len <= n; len++) {
        for (size_t at = 0; at <= len; at++) {
            for (int x = 0; x < (at < len ? 3 : 1); x++) {
                memcpy(cut, p, len);
                if (at < len)
                    cut[at] ^= (uint8_t)(x == 0 ? 0x80 : x == 1 ? 0x07 : 0xff);
                kvs_arena_t a;
                kvs_arena_init(&a);
                (void)kvs_msg_decode_request(&a, cut, len, NULL);
                const uint8_t *fw = cut;
                size_t fwlen = len;
                CHECK_EQ(kvs_msg_merge_request(&a, &fw, &fwlen), 0);
                CHECK(fwlen <= len);
                kvs_arena_close(&a);
                Kvs__CommandRequest *q = kvs_msg_decode_request(NULL, cut, len, NULL);
                if (q != NULL)
                    kvs__command_request__free_unpacked(q, NULL);
            }
        }
    }
}

/* A kvs 0.1 Hset {table, key, Value value = 3}: its key, read as the
 * pair, seldom decodes as a Kvpair, so the request was refused naming a
 * field of the key's bytes ("Hset.pair has unknown field 14 (32-bit)"
 * for "user42"), not the schema change. Any key says it now. */
KVS_TEST(a_kvs_0_1_hset_is_named_whatever_its_key)
{
    static const char *const keys[] = {"user42", "k1", "a", "42", "alice@example.com"};
    static const uint8_t value[] = {0x0a, 5, 'a', 'l', 'i', 'c', 'e'};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        uint8_t p[128], body[64];
        size_t n = 0, bn = 0;
        put_ld(body, &bn, 1, "users", 5);
        put_ld(body, &bn, 2, keys[i], strlen(keys[i]));
        put_ld(body, &bn, 3, value, sizeof(value));
        put_ld(p, &n, 4, body, bn);
        kvs_arena_t a;
        kvs_arena_init(&a);
        uint32_t status = KVS_STATUS_OK;
        char msg[512];
        Kvs__CommandRequest *q = kvs_msg_decode_request(&a, p, n, &status);
        if (q == NULL) {
            CHECK_EQ(kvs_msg_decode_refusal(status, p, n, msg, sizeof(msg)), 400);
        } else {
            CHECK_EQ(kvs_msg_validate(q, msg, sizeof(msg)), KVS_STATUS_BAD_REQUEST);
        }
        CHECK(strstr(msg, "Hset has field 3, kvs 0.1's separate value") != NULL);
        kvs_arena_close(&a);
    }
}

/* Commands overridden by a later one are dropped before decoding, as the
 * parser drops them: a frame of 100,000 Hget+Hset followed by one Ping
 * decoded them all first, and past the memory budget answered 413 (the
 * same ending in two Pings was merged, and answered). */
KVS_TEST(commands_overridden_by_a_later_one_are_not_decoded)
{
    static const uint8_t key[] = {0x0a, 1, 't', 0x12, 1, 'k'};
    enum { HGET = 1, HSET = 4, PING = 11 };
    size_t cap = 100000 * 12 + 16, n = 0;
    uint8_t *p = malloc(cap);
    CHECK(p != NULL);
    for (int i = 0; i < 100000; i++) {
        put_ld(p, &n, HGET, key, sizeof(key));
        put_ld(p, &n, HSET, "", 0);
    }
    size_t ping_at = n;
    put_ld(p, &n, PING, "", 0);
    kvs_arena_t a;
    kvs_arena_init(&a);
    uint32_t status = 0;
    Kvs__CommandRequest *q = kvs_msg_decode_request(&a, p, n, &status);
    CHECK(q != NULL);
    CHECK_EQ(q->command_case, KVS__COMMAND_REQUEST__COMMAND_PING);
    const uint8_t *fw = p;
    size_t fwlen = n;
    CHECK_EQ(kvs_msg_merge_request(&a, &fw, &fwlen), 0);
    CHECK_EQ(fwlen, n - ping_at); /* the Ping alone */
    kvs_arena_close(&a);
    free(p);
}

KVS_TEST(concatenated_requests_merge_as_protobuf_reads_them)
{
    static const uint8_t hmset_a[] = {0x0a, 1, 't', 0x12, 7, 0x0a, 1, 'a', 0x12, 2, 0x18, 1};
    static const uint8_t hmset_b[] = {0x0a, 1, 't', 0x12, 7, 0x0a, 1, 'b', 0x12, 2, 0x18, 2};
    static const uint8_t keys_a[] = {0x0a, 1, 't', 0x12, 1, 'a'}, keys_b[] = {0x12, 1, 'b'};
    static const uint8_t keys_c[] = {0x12, 1, 'c', 0x18, 5}; /* Hmdel: budget 5 */
    static const uint8_t table[] = {0x0a, 1, 't'}, key[] = {0x12, 1, 'k'};
    static const uint8_t pair[] = {0x12, 7, 0x0a, 1, 'k', 0x12, 2, 0x18, 9};
    static const uint8_t pos[] = {1, 2, 3}; /* min_position, outside the command */
    uint8_t p[128], ref[128], body[64];
    size_t n, rn, bn;
    enum { HGET = 1, HMGET = 3, HSET = 4, HMSET = 5, HMDEL = 7 };

    /* Hmset{t, [a]} + Hmset{t, [b]} = Hmset{t, t, [a], [b]}. */
    n = rn = bn = 0;
    put_ld(p, &n, HMSET, hmset_a, sizeof(hmset_a));
    put_ld(p, &n, HMSET, hmset_b, sizeof(hmset_b));
    memcpy(body, hmset_a, sizeof(hmset_a));
    memcpy(body + sizeof(hmset_a), hmset_b, sizeof(hmset_b));
    put_ld(ref, &rn, HMSET, body, sizeof(hmset_a) + sizeof(hmset_b));
    decodes_as(p, n, ref, rn);
    kvs_arena_t a;
    kvs_arena_init(&a);
    Kvs__CommandRequest *q = kvs_msg_decode_request(&a, p, n, NULL);
    CHECK(q != NULL && q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMSET);
    CHECK_EQ(q->hmset->n_pairs, 2u);
    CHECK_EQ(q->hmset->pairs[0]->key.data[0], 'a');
    CHECK_EQ(q->hmset->pairs[1]->value->integer_value, 2);
    kvs_arena_close(&a);
    q = kvs_msg_decode_request(NULL, p, n, NULL); /* malloc'd: the same */
    CHECK(q != NULL && q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMSET);
    CHECK_EQ(q->hmset->n_pairs, 2u);
    kvs__command_request__free_unpacked(q, NULL);

    /* Hmget{t, [a]}, min_position, Hmget{[b]}: the option stays. An
     * earlier other member (Hget) is dropped, as a parser clears it. */
    for (int hget_first = 0; hget_first < 2; hget_first++) {
        n = rn = 0;
        if (hget_first)
            put_ld(p, &n, HGET, key, sizeof(key));
        put_ld(p, &n, HMGET, keys_a, sizeof(keys_a));
        put_ld(p, &n, 100, pos, sizeof(pos));
        put_ld(p, &n, HMGET, keys_b, sizeof(keys_b));
        put_ld(ref, &rn, 100, pos, sizeof(pos));
        memcpy(body, keys_a, sizeof(keys_a));
        memcpy(body + sizeof(keys_a), keys_b, sizeof(keys_b));
        put_ld(ref, &rn, HMGET, body, sizeof(keys_a) + sizeof(keys_b));
        decodes_as(p, n, ref, rn);
    }

    /* Three Hmdel in a row: every key, the last budget. */
    n = rn = bn = 0;
    put_ld(p, &n, HMDEL, keys_a, sizeof(keys_a));
    put_ld(p, &n, HMDEL, keys_b, sizeof(keys_b));
    put_ld(p, &n, HMDEL, keys_c, sizeof(keys_c));
    memcpy(body, keys_a, sizeof(keys_a));
    memcpy(body + sizeof(keys_a), keys_b, sizeof(keys_b));
    memcpy(body + sizeof(keys_a) + sizeof(keys_b), keys_c, sizeof(keys_c));
    put_ld(ref, &rn, HMDEL, body, sizeof(keys_a) + sizeof(keys_b) + sizeof(keys_c));
    decodes_as(p, n, ref, rn);
    kvs_arena_init(&a);
    q = kvs_msg_decode_request(&a, p, n, NULL);
    CHECK(q != NULL && q->hmdel->n_keys == 3u && q->hmdel->answer_budget == 5u);
    kvs_arena_close(&a);

    /* Hget{t} + Hget{k} = Hget{t, k}; Hset{t} + Hset{pair} = Hset{t, pair}. */
    n = rn = 0;
    put_ld(p, &n, HGET, table, sizeof(table));
    put_ld(p, &n, HGET, key, sizeof(key));
    memcpy(body, table, sizeof(table));
    memcpy(body + sizeof(table), key, sizeof(key));
    put_ld(ref, &rn, HGET, body, sizeof(table) + sizeof(key));
    decodes_as(p, n, ref, rn);
    n = rn = 0;
    put_ld(p, &n, HSET, table, sizeof(table));
    put_ld(p, &n, HSET, pair, sizeof(pair));
    memcpy(body, table, sizeof(table));
    memcpy(body + sizeof(table), pair, sizeof(pair));
    put_ld(ref, &rn, HSET, body, sizeof(table) + sizeof(pair));
    decodes_as(p, n, ref, rn);
    char msg[200];
    kvs_arena_init(&a);
    q = kvs_msg_decode_request(&a, p, n, NULL);
    CHECK(q != NULL && q->command_case == KVS__COMMAND_REQUEST__COMMAND_HSET);
    CHECK_EQ(kvs_msg_validate(q, msg, sizeof(msg)), KVS_STATUS_OK);
    kvs_arena_close(&a);

    /* Another member between: no merge, the last alone (Hmget{t, [b]}). */
    n = 0;
    put_ld(p, &n, HMGET, keys_a, sizeof(keys_a));
    put_ld(p, &n, HGET, key, sizeof(key));
    memcpy(body, table, sizeof(table));
    memcpy(body + sizeof(table), keys_b, sizeof(keys_b));
    put_ld(p, &n, HMGET, body, sizeof(table) + sizeof(keys_b));
    decodes_as_protobuf_c(p, n);
}

/* A bool sent as a 10-byte varint whose last byte holds bits past 64:
 * protobuf-c reads it true (any payload bit set), C++ and Java false (the
 * bits are dropped), Go refuses it. kvs refuses it too: the in-place
 * decoders leave it to protobuf-c, and kvs_msg_check_wire says why. */
KVS_TEST(long_bools_are_refused)
{
    char msg[200];
    /* Hmget{table "t", keys "k"}, accept_stale = 1 << 63 << 1 (only a bit
     * past 64 set). */
    static const uint8_t stale[] = {0x1a, 6,    0x0a, 1,    't',  0x12, 1,    'k',  0xa8, 0x06,
                                    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02};
    CHECK(!decodes_as_protobuf_c(stale, sizeof(stale))); /* the same, not in place */
    CHECK_EQ(kvs_msg_check_wire(stale, sizeof(stale), msg, sizeof(msg)), 400);
    CHECK_STR(msg, "CommandRequest.accept_stale is a varint past 64 bits");
    /* The same with the 10th byte 1 (bit 63: true everywhere) passes. */
    uint8_t ok[sizeof(stale)];
    memcpy(ok, stale, sizeof(ok));
    ok[sizeof(ok) - 1] = 0x01;
    CHECK_EQ(kvs_msg_check_wire(ok, sizeof(ok), msg, sizeof(msg)), 200);
    /* Hmset{table "t", pairs [{key "a", value {bool_value: the same}}]} */
    static const uint8_t hmset[] = {0x2a, 21,   0x0a, 1,    't',  0x12, 16,   0x0a,
                                    1,    'a',  0x12, 11,   0x28, 0x80, 0x80, 0x80,
                                    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02};
    CHECK(!decodes_as_protobuf_c(hmset, sizeof(hmset)));
    CHECK_EQ(kvs_msg_check_wire(hmset, sizeof(hmset), msg, sizeof(msg)), 400);
    CHECK_STR(msg, "Hmset.pairs[0].value.bool_value is a varint past 64 bits");
    kvs_value_peek_t v;
    CHECK_EQ(kvs_msg_value_peek(hmset + 12, 11, &v), 0);
    kvs_arena_t a;
    kvs_arena_init(&a);
    CHECK_EQ(kvs_msg_value_valid(&a, hmset + 12, 11), 0); /* a Kafka record's value alike */
    kvs_arena_close(&a);
}

/* Bytes protobuf-c reads and Google's parsers read otherwise (found by a
 * differential fuzz against python3-protobuf): each is refused, with the
 * field named. */
KVS_TEST(check_wire_refuses_what_protobuf_reads_otherwise)
{
    static const struct {
        const char *hex, *msg;
    } cases[] = {
        /* Hset.if_absent as 4 fixed bytes: protobuf-c true, Google an unknown field */
        {"22150a027072120a0a016112050a036e65772501000000",
         "Hset.if_absent is sent as 32-bit, not as its type's varint: protobuf reads it as an "
         "unknown field"},
        /* Value.bool_value length-delimited */
        {"220e0a02707212080a016112032a0101",
         "Hset.pair.value.bool_value is sent as length-delimited, not as its type's varint: "
         "protobuf reads it as an unknown field"},
        /* accept_stale as an empty length-delimited field */
        {"aa0600", "CommandRequest.accept_stale is sent as length-delimited, not as its type's "
                   "varint: protobuf reads it as an unknown field"},
        /* Hset{p, pair{a, "new", field 7}, pair{value "x"}}: the first pair's
         * unknown field, which protobuf-c drops when the second merges in */
        {"22180a0170120c0a016112050a036e65773801120512030a0178",
         "Hset.pair has unknown field 7 (varint)"},
        /* the same in an Hmset pair's value */
        {"2a160a017012110a016112070a036e6577480112030a0178",
         "Hmset.pairs[0].value has unknown field 9 (varint)"},
        /* a 6-byte length */
        {"228f80808080000a0170120a0a016112050a036e6577",
         "CommandRequest.hset has a length that is not a varint of at most 5 bytes"},
        /* field 0, and a 6-byte tag */
        {"0001", "CommandRequest holds bytes that are not a field tag (a varint of at most 5 "
                 "bytes naming a field from 1 to 536870911)"},
        {"2206f8ffffffff0100", "Hset holds bytes that are not a field tag (a varint of at most 5 "
                               "bytes naming a field from 1 to 536870911)"},
        /* cut short, and a group */
        {"220a0a0170", "CommandRequest.hset runs past the end of its message"},
        {"23", "CommandRequest.hset is sent as start-group, not as its type's length-delimited: "
               "protobuf reads it as an unknown field"},
        /* an unknown top-level field */
        {"c00601", "CommandRequest has unknown field 104 (varint)"},
    };
    char msg[300];
    uint8_t buf[64];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = strlen(cases[i].hex) / 2;
        for (size_t j = 0; j < n; j++)
            CHECK(sscanf(cases[i].hex + 2 * j, "%2hhx", &buf[j]) == 1);
        msg[0] = '\0';
        CHECK_EQ(kvs_msg_check_wire(buf, n, msg, sizeof(msg)), 400);
        CHECK_STR(msg, cases[i].msg);
    }
}

KVS_TEST(value_decoding_is_held_to_the_budget)
{
    /* A Kafka record's value (format: value) is checked with
     * kvs_msg_value_valid: a flood of unknown fields must not cost 30 times
     * its size on the way to being refused; a large valid value decodes. */
    size_t n = 4 << 20, at = 0;
    uint8_t *p = malloc(n + 16);
    Kvs__Value *v;
    kvs_arena_t a;
    CHECK(p != NULL);
    kvs_arena_init(&a);
    while (at < n)
        p[at++] = 15 << 3, p[at++] = 0;
    CHECK(!kvs_msg_value_valid(&a, p, at));
    CHECK_EQ(kvs_msg_decode_value(&a, p, at, &v), KVS_EPROTO);
    CHECK(a.big <= kvs_msg_decode_budget(at) + 16384);
    kvs_arena_reset(&a);
    at = 0;
    p[at++] = 2 << 3 | 2;
    put_varint(p, &at, n - 8);
    memset(p + at, 0xee, n - 8);
    at += n - 8;
    CHECK(kvs_msg_value_valid(&a, p, at));
    CHECK_EQ(kvs_msg_decode_value(&a, p, at, &v), 0);
    CHECK(v->kind_case == KVS__VALUE__KIND_BINARY_VALUE && v->binary_value.len == n - 8);
    kvs_arena_close(&a);
    free(p);
}

KVS_TEST(count_keys_on_the_wire)
{
    Kvs__CommandRequest__CommandCase cmd;
    char text[300];
    size_t len;
    uint8_t *p = raw_multi(KVS__COMMAND_REQUEST__COMMAND_HMEXIST, 7, 2, &len);
    CHECK_EQ(kvs_msg_count_keys(p, len, &cmd), 7);
    CHECK_EQ(cmd, KVS__COMMAND_REQUEST__COMMAND_HMEXIST);
    free(p);
    p = pack_hmset(5, &len);
    CHECK_EQ(kvs_msg_count_keys(p, len, &cmd), 5);
    CHECK_EQ(cmd, KVS__COMMAND_REQUEST__COMMAND_HMSET);
    CHECK_EQ(kvs_msg_check_keys(p, len, 5, NULL, text, sizeof(text)), KVS_STATUS_OK);
    CHECK_EQ(kvs_msg_check_keys(p, len, 0, NULL, text, sizeof(text)), KVS_STATUS_OK); /* no limit */
    kvs_msg_refused_t refused = {0, 0, NULL, 0};
    CHECK_EQ(kvs_msg_check_keys(p, len, 4, &refused, text, sizeof(text)), KVS_STATUS_TOO_LARGE);
    CHECK_STR(text, "Hmset names 5 pairs, more than limits.max_keys (4); nothing was done; "
                    "send fewer keys per request");
    CHECK_EQ(refused.cmd, KVS__COMMAND_REQUEST__COMMAND_HMSET); /* for the hooks */
    CHECK_EQ(refused.keys, 5);
    CHECK(refused.table_len == 6 && memcmp(refused.table, "events", 6) == 0); /* and its table */
    free(p);
    /* A table name kvs would refuse (a NUL in it) is not handed on. */
    Kvs__Hmget bad = KVS__HMGET__INIT;
    Kvs__CommandRequest badq = KVS__COMMAND_REQUEST__INIT;
    ProtobufCBinaryData bkeys[3] = {{1, (uint8_t *)"a"}, {1, (uint8_t *)"b"}, {1, (uint8_t *)"c"}};
    bad.table = "ev";
    bad.n_keys = 3;
    bad.keys = bkeys;
    badq.command_case = KVS__COMMAND_REQUEST__COMMAND_HMGET;
    badq.hmget = &bad;
    uint8_t wire[64];
    len = kvs__command_request__pack(&badq, wire);
    uint8_t *t = memchr(wire, 'e', len);
    CHECK(t != NULL && t[1] == 'v');
    CHECK_EQ(kvs_msg_check_keys(wire, len, 2, &refused, text, sizeof(text)), KVS_STATUS_TOO_LARGE);
    CHECK(refused.table_len == 2 && memcmp(refused.table, "ev", 2) == 0);
    t[1] = '\0';
    CHECK_EQ(kvs_msg_check_keys(wire, len, 2, &refused, text, sizeof(text)), KVS_STATUS_TOO_LARGE);
    CHECK(refused.table == NULL && refused.table_len == 0);

    /* A command field sent twice in a row: both count (the decoder
     * merges them, as protobuf does); an unknown fixed32 or fixed64 field
     * before them is stepped over. */
    uint8_t *a = raw_multi(KVS__COMMAND_REQUEST__COMMAND_HMGET, 3, 4, &len);
    uint8_t twice[200];
    size_t n = 0;
    static const uint8_t odd[] = {0xfd, 0x06, 1, 2, 3, 4, 0xf9, 0x06, 1, 2, 3, 4, 5, 6, 7, 8};
    memcpy(twice, odd, sizeof(odd));
    n += sizeof(odd);
    memcpy(twice + n, a, len), n += len;
    memcpy(twice + n, a, len), n += len;
    CHECK_EQ(kvs_msg_count_keys(twice, n, &cmd), 6);
    kvs_arena_t ar;
    kvs_arena_init(&ar);
    Kvs__CommandRequest *r =
        kvs_msg_decode_request(&ar, twice + sizeof(odd), n - sizeof(odd), NULL);
    CHECK(r != NULL && r->hmget->n_keys == 6);
    kvs_arena_close(&ar);
    CHECK_EQ(kvs_msg_check_keys(twice, n, 5, NULL, text, sizeof(text)), KVS_STATUS_TOO_LARGE);
    CHECK_STR(text, "Hmget names 6 keys, more than limits.max_keys (5); nothing was done; "
                    "send fewer keys per request");
    /* Cut short: counts what it saw (the decoder refuses the rest). */
    CHECK_EQ(kvs_msg_count_keys(twice, n - 1, &cmd), 3);
    /* Keys after a varint past 64 bits (which protobuf-c decodes, and
     * kvs_msg_check_wire refuses only after the decode) are counted: an
     * Hmdel{answer_budget = 18 ff x9 7f, 20 keys}. */
    uint8_t past[200];
    size_t m = 0;
    past[m++] = 0x3a; /* Hmdel = 7, length below */
    past[m++] = 0;
    past[m++] = 0x18;
    for (int i = 0; i < 9; i++)
        past[m++] = 0xff;
    past[m++] = 0x7f;
    for (int i = 0; i < 20; i++)
        past[m++] = 0x12, past[m++] = 1, past[m++] = (uint8_t)('a' + i);
    past[1] = (uint8_t)(m - 2);
    CHECK_EQ(kvs_msg_count_keys(past, m, &cmd), 20);
    CHECK_EQ(kvs_msg_check_keys(past, m, 10, NULL, text, sizeof(text)), KVS_STATUS_TOO_LARGE);

    /* Another member before the last run is dropped by the decoder: its
     * keys do not count (Hmexist{4} + Hmget{3} decodes as Hmget{3}). */
    size_t alen = len, elen;
    uint8_t *e = raw_multi(KVS__COMMAND_REQUEST__COMMAND_HMEXIST, 4, 2, &elen);
    uint8_t mixed[400];
    n = 0;
    memcpy(mixed + n, e, elen), n += elen;
    memcpy(mixed + n, a, alen), n += alen;
    CHECK_EQ(kvs_msg_count_keys(mixed, n, &cmd), 3);
    CHECK_EQ(cmd, KVS__COMMAND_REQUEST__COMMAND_HMGET);
    CHECK_EQ(kvs_msg_check_keys(mixed, n, 3, NULL, text, sizeof(text)), KVS_STATUS_OK);
    kvs_arena_init(&ar);
    r = kvs_msg_decode_request(&ar, mixed, n, NULL);
    CHECK(r != NULL && r->command_case == KVS__COMMAND_REQUEST__COMMAND_HMGET &&
          r->hmget->n_keys == 3);
    kvs_arena_close(&ar);
    /* Hmget{3} + Hmexist{4} + Hmget{3}: only the last run counts. */
    n = 0;
    memcpy(mixed + n, a, alen), n += alen;
    memcpy(mixed + n, e, elen), n += elen;
    memcpy(mixed + n, a, alen), n += alen;
    CHECK_EQ(kvs_msg_count_keys(mixed, n, &cmd), 3);
    /* ... and when the last member names no key list, nothing counts. */
    static const uint8_t hgetall[] = {0x12, 0x03, 0x0a, 0x01, 't'};
    memcpy(mixed + n, hgetall, sizeof(hgetall)), n += sizeof(hgetall);
    CHECK_EQ(kvs_msg_count_keys(mixed, n, &cmd), 0);
    CHECK_EQ(cmd, KVS__COMMAND_REQUEST__COMMAND__NOT_SET);
    free(e);
    free(a);

    /* Single-key commands and others name no key list. */
    Kvs__Hget g = KVS__HGET__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    uint8_t buf[64];
    g.table = "t";
    g.key = bin("k");
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HGET;
    q.hget = &g;
    len = kvs__command_request__pack(&q, buf);
    CHECK_EQ(kvs_msg_count_keys(buf, len, &cmd), 0);
    CHECK_EQ(cmd, KVS__COMMAND_REQUEST__COMMAND__NOT_SET);
    CHECK_EQ(kvs_msg_check_keys(buf, len, 1, NULL, text, sizeof(text)), KVS_STATUS_OK);
}

KVS_TEST(decode_value_with_arena)
{
    kvs_arena_t a;
    kvs_arena_init(&a);
    uint8_t buf[64];
    Kvs__Value *v = NULL;
    size_t n = kvs_value_encode_bytes(buf, 1, "hello", 5);
    CHECK_EQ(kvs_msg_decode_value(&a, buf, n, &v), 0);
    CHECK_EQ(v->kind_case, KVS__VALUE__KIND_STRING_VALUE);
    CHECK(v->string_value.len == 5 && memcmp(v->string_value.data, "hello", 5) == 0);
    n = kvs_value_encode_int(buf, -42);
    CHECK_EQ(kvs_msg_decode_value(&a, buf, n, &v), 0);
    CHECK_EQ(v->integer_value, -42);
    CHECK_EQ(kvs_msg_decode_value(&a, buf, 0, &v), 0); /* the empty Value */
    CHECK_EQ(v->kind_case, KVS__VALUE__KIND__NOT_SET);
    static const uint8_t junk[] = {0x0a, 0x7f, 'x'};
    CHECK_EQ(kvs_msg_decode_value(&a, junk, sizeof(junk), &v), KVS_EPROTO);
    kvs_arena_close(&a);
}

/* ---- kvs_resp against protobuf-c ------------------------------------------------ */

/* Checks that `out` holds exactly one frame whose header matches its payload,
 * and decodes the payload with protobuf-c. Free with free_unpacked. */
static Kvs__CommandResponse *unpack_frame(const kvs_buf_t *out, size_t off)
{
    CHECK(out->len >= off + KVS_FRAME_HEADER);
    int compressed = -1;
    uint32_t n = kvs_frame_get_header(out->data + off, &compressed);
    CHECK_EQ(compressed, 0);
    CHECK_EQ(n, out->len - off - KVS_FRAME_HEADER);
    Kvs__CommandResponse *r =
        kvs__command_response__unpack(NULL, n, out->data + off + KVS_FRAME_HEADER);
    CHECK(r != NULL);
    return r;
}

static void check_bin(ProtobufCBinaryData b, const void *p, size_t n)
{
    CHECK_EQ(b.len, n);
    if (n > 0)
        CHECK(memcmp(b.data, p, n) == 0);
}

KVS_TEST(resp_every_field_decodes)
{
    kvs_buf_t out;
    kvs_buf_init(&out);
    kvs_resp_t r;
    uint8_t v[64];
    kvs_resp_begin(&r, &out);
    kvs_resp_status(&r, 404);
    kvs_resp_message(&r, "no table %s (%d)", "users", 7);
    kvs_resp_value(&r, v, kvs_value_encode_int(v, -7));
    kvs_resp_value(&r, NULL, 0); /* empty Value: "no value" */
    kvs_resp_value(&r, v, kvs_value_encode_bytes(v, 1, "txt", 3));
    kvs_resp_bool(&r, 1);
    kvs_resp_bool(&r, 0);
    kvs_resp_pair(&r, "k1", 2, v, kvs_value_encode_float(v, 2.5));
    kvs_resp_pair(&r, "k2", 2, NULL, 0);
    kvs_resp_cursor(&r, "next\0key", 8);
    CHECK_EQ(kvs_resp_size(&r), out.len - KVS_FRAME_HEADER);
    CHECK_EQ(kvs_resp_end(&r), 0);

    Kvs__CommandResponse *m = unpack_frame(&out, 0);
    CHECK_EQ(m->status, 404);
    CHECK_STR(m->message, "no table users (7)");
    CHECK_EQ(m->n_values, 5);
    CHECK_EQ(m->values[0]->kind_case, KVS__VALUE__KIND_INTEGER_VALUE);
    CHECK_EQ(m->values[0]->integer_value, -7);
    CHECK_EQ(m->values[1]->kind_case, KVS__VALUE__KIND__NOT_SET);
    CHECK_EQ(m->values[2]->kind_case, KVS__VALUE__KIND_STRING_VALUE);
    check_bin(m->values[2]->string_value, "txt", 3);
    CHECK_EQ(m->values[3]->kind_case, KVS__VALUE__KIND_BOOL_VALUE);
    CHECK_EQ(m->values[3]->bool_value, 1);
    CHECK_EQ(m->values[4]->kind_case, KVS__VALUE__KIND_BOOL_VALUE);
    CHECK_EQ(m->values[4]->bool_value, 0);
    CHECK_EQ(m->n_pairs, 2);
    check_bin(m->pairs[0]->key, "k1", 2);
    CHECK(m->pairs[0]->value != NULL);
    CHECK_EQ(m->pairs[0]->value->kind_case, KVS__VALUE__KIND_FLOAT_VALUE);
    CHECK(m->pairs[0]->value->float_value == 2.5);
    check_bin(m->pairs[1]->key, "k2", 2);
    CHECK(m->pairs[1]->value != NULL);
    CHECK_EQ(m->pairs[1]->value->kind_case, KVS__VALUE__KIND__NOT_SET);
    check_bin(m->cursor, "next\0key", 8);
    kvs__command_response__free_unpacked(m, NULL);
    kvs_buf_free(&out);
}

/* Packs `m` with protobuf-c and compares with the payload of the frame at
 * the start of `out`. */
static void check_same_bytes(const kvs_buf_t *out, const Kvs__CommandResponse *m)
{
    size_t n = kvs__command_response__get_packed_size(m);
    uint8_t *p = malloc(n + 1);
    CHECK(p != NULL);
    CHECK_EQ(kvs__command_response__pack(m, p), n);
    CHECK_EQ(out->len, KVS_FRAME_HEADER + n);
    CHECK(memcmp(out->data + KVS_FRAME_HEADER, p, n) == 0);
    free(p);
}

KVS_TEST(resp_bytes_match_protobuf_c)
{
    /* Lengths past one varint byte everywhere: a 300-byte value, a 70,000
     * byte value, a 200-byte key with a 20,000-byte value, a long cursor. */
    static uint8_t big[70000], key[200];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 31);
    memset(key, 'k', sizeof(key));
    static uint8_t enc[3][70016];
    size_t n0 = kvs_value_encode_bytes(enc[0], 0, big, 300);
    size_t n1 = kvs_value_encode_bytes(enc[1], 0, big, sizeof(big));
    size_t n2 = kvs_value_encode_bytes(enc[2], 0, big + 1, 20000);

    kvs_buf_t out;
    kvs_buf_init(&out);
    kvs_resp_t r;
    kvs_resp_begin(&r, &out);
    kvs_resp_status(&r, 200);
    kvs_resp_message(&r, "ok");
    kvs_resp_value(&r, enc[0], n0);
    kvs_resp_value(&r, enc[1], n1);
    kvs_resp_pair(&r, key, sizeof(key), enc[2], n2);
    kvs_resp_cursor(&r, big, 527);
    CHECK_EQ(kvs_resp_end(&r), 0);

    Kvs__Value v[3] = {KVS__VALUE__INIT, KVS__VALUE__INIT, KVS__VALUE__INIT};
    Kvs__Value *vals[2] = {&v[0], &v[1]};
    Kvs__Kvpair pair = KVS__KVPAIR__INIT, *pairs[1] = {&pair};
    ProtobufCBinaryData b0 = {300, big}, b1 = {sizeof(big), big}, b2 = {20000, big + 1};
    v[0].kind_case = v[1].kind_case = v[2].kind_case = KVS__VALUE__KIND_BINARY_VALUE;
    v[0].binary_value = b0, v[1].binary_value = b1, v[2].binary_value = b2;
    pair.key.len = sizeof(key), pair.key.data = key, pair.value = &v[2];
    Kvs__CommandResponse m = KVS__COMMAND_RESPONSE__INIT;
    m.status = 200, m.message = "ok";
    m.n_values = 2, m.values = vals;
    m.n_pairs = 1, m.pairs = pairs;
    m.cursor.len = 527, m.cursor.data = big;
    check_same_bytes(&out, &m);

    Kvs__CommandResponse *d = unpack_frame(&out, 0);
    check_bin(d->values[1]->binary_value, big, sizeof(big));
    check_bin(d->pairs[0]->key, key, sizeof(key));
    check_bin(d->pairs[0]->value->binary_value, big + 1, 20000);
    check_bin(d->cursor, big, 527);
    kvs__command_response__free_unpacked(d, NULL);
    kvs_buf_free(&out);
}

KVS_TEST(resp_status_only_matches_protobuf_c)
{
    kvs_buf_t out;
    kvs_buf_init(&out);
    kvs_resp_t r;
    kvs_resp_begin(&r, &out);
    kvs_resp_status(&r, 503);
    kvs_resp_cursor(&r, NULL, 0); /* empty cursor: nothing on the wire */
    CHECK_EQ(kvs_resp_end(&r), 0);
    Kvs__CommandResponse m = KVS__COMMAND_RESPONSE__INIT;
    m.status = 503;
    check_same_bytes(&out, &m);
    kvs_buf_free(&out);
}

KVS_TEST(resp_message_truncated_at_1k)
{
    char text[3000];
    memset(text, 'm', sizeof(text) - 1);
    text[sizeof(text) - 1] = '\0';
    kvs_buf_t out;
    kvs_buf_init(&out);
    kvs_resp_t r;
    kvs_resp_begin(&r, &out);
    kvs_resp_status(&r, 400);
    kvs_resp_message(&r, "%s", text);
    CHECK_EQ(kvs_resp_end(&r), 0);
    Kvs__CommandResponse *m = unpack_frame(&out, 0);
    CHECK_EQ(m->status, 400);
    CHECK(strlen(m->message) >= 1000 && strlen(m->message) <= 1024);
    CHECK(strspn(m->message, "m") == strlen(m->message));
    kvs__command_response__free_unpacked(m, NULL);
    kvs_buf_free(&out);
}

KVS_TEST(resp_message_parts_joined_and_truncated_like_formatted)
{
    char big[3000];
    memset(big, 'm', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    const char *parts[] = {"key \"", "k\\x00", "\" not found in table \"", "users", "\""};
    const char *huge[] = {"a", big, "z"};
    const char *none[] = {""};
    const char *expect[] = {"key \"k\\x00\" not found in table \"users\"", NULL, ""};
    const char *const *cases[] = {parts, huge, none};
    size_t counts[] = {5, 3, 1};
    for (int i = 0; i < 3; i++) {
        kvs_buf_t out;
        kvs_buf_init(&out);
        kvs_resp_t r;
        kvs_resp_begin(&r, &out);
        kvs_resp_status(&r, 404);
        kvs_resp_message_parts(&r, cases[i], counts[i]);
        CHECK_EQ(kvs_resp_end(&r), 0);
        Kvs__CommandResponse *m = unpack_frame(&out, 0);
        CHECK_EQ(m->status, 404);
        if (expect[i] != NULL) {
            CHECK_STR(m->message, expect[i]);
        } else { /* as kvs_resp_message: the first 1023 bytes */
            CHECK_EQ(strlen(m->message), 1023);
            CHECK(m->message[0] == 'a');
            CHECK(strspn(m->message + 1, "m") == 1022);
        }
        kvs__command_response__free_unpacked(m, NULL);
        kvs_buf_free(&out);
    }
}

KVS_TEST(resp_frames_back_to_back_and_abort)
{
    kvs_buf_t out;
    kvs_buf_init(&out);
    kvs_resp_t r;
    kvs_resp_begin(&r, &out);
    kvs_resp_status(&r, 200);
    kvs_resp_message(&r, "first");
    CHECK_EQ(kvs_resp_end(&r), 0);
    size_t first = out.len;

    /* A second response abandoned half-way leaves the first untouched. */
    kvs_resp_begin(&r, &out);
    CHECK_EQ(r.start, first);
    kvs_resp_status(&r, 200);
    kvs_resp_value(&r, "\x18\x02", 2);
    kvs_resp_abort(&r);
    CHECK_EQ(out.len, first);

    kvs_resp_begin(&r, &out);
    kvs_resp_status(&r, 500);
    kvs_resp_message(&r, "second");
    CHECK_EQ(kvs_resp_end(&r), 0);

    kvs_frame_dec_t d;
    kvs_frame_dec_init(&d, 1024);
    CHECK_EQ(kvs_frame_dec_feed(&d, out.data, out.len), 0);
    static const char *const texts[] = {"first", "second"};
    for (int i = 0; i < 2; i++) {
        const uint8_t *p;
        size_t n;
        CHECK_EQ(kvs_frame_dec_next(&d, &p, &n), 1);
        Kvs__CommandResponse *m = kvs__command_response__unpack(NULL, n, p);
        CHECK(m != NULL);
        CHECK_EQ(m->status, i == 0 ? 200 : 500);
        CHECK_STR(m->message, texts[i]);
        CHECK_EQ(m->n_values, 0);
        kvs__command_response__free_unpacked(m, NULL);
    }
    CHECK_EQ(kvs_frame_dec_pending(&d), 0);
    kvs_frame_dec_close(&d);
    kvs_buf_free(&out);
}

/* ---- value encoders ------------------------------------------------------------ */

/* Decodes `enc` with protobuf-c, checks the kind, and checks that
 * protobuf-c packs the decoded Value to the same bytes. */
static Kvs__Value *decode_value(const uint8_t *enc, size_t n, Kvs__Value__KindCase kind)
{
    Kvs__Value *v = kvs__value__unpack(NULL, n, enc);
    CHECK(v != NULL);
    CHECK_EQ(v->kind_case, kind);
    uint8_t again[1024];
    CHECK(kvs__value__get_packed_size(v) <= sizeof(again));
    CHECK_EQ(kvs__value__pack(v, again), n);
    CHECK(memcmp(again, enc, n) == 0);
    return v;
}

KVS_TEST(value_encode_int_is_plain_int64)
{
    /* The original protocol's int64, byte for byte: the two's complement
     * bits as a varint (a negative number takes ten bytes), not sint64's
     * zigzag (where 5 would read back as -3). */
    static const struct {
        int64_t v;
        size_t n;
        uint8_t enc[11];
    } golden[] = {
        {0, 2, {0x18, 0x00}},
        {5, 2, {0x18, 0x05}},
        {300, 3, {0x18, 0xac, 0x02}},
        {-1, 11, {0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
        {-3, 11, {0x18, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
        {INT64_MAX, 10, {0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}},
        {INT64_MIN, 11, {0x18, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}},
    };
    for (size_t i = 0; i < sizeof(golden) / sizeof(golden[0]); i++) {
        uint8_t enc[16];
        CHECK_EQ(kvs_value_encode_int(enc, golden[i].v), golden[i].n);
        CHECK(memcmp(enc, golden[i].enc, golden[i].n) == 0);
    }
}

KVS_TEST(value_encode_int)
{
    static const int64_t ints[] = {0,         1,         -1,           63,
                                   -64,       64,        -65,          1000000,
                                   -1000000,  INT32_MAX, INT32_MIN,    (int64_t)1 << 40,
                                   INT64_MAX, INT64_MIN, INT64_MIN + 1};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        uint8_t enc[16];
        size_t n = kvs_value_encode_int(enc, ints[i]);
        CHECK(n >= 2 && n <= 11);
        Kvs__Value *v = decode_value(enc, n, KVS__VALUE__KIND_INTEGER_VALUE);
        CHECK(v->integer_value == ints[i]);
        kvs__value__free_unpacked(v, NULL);
    }
}

KVS_TEST(value_encode_float)
{
    const double dbls[] = {0.0,     -0.0,     1.5,      -2.25,     1e300,
                           -1e-300, 4.9e-324, INFINITY, -INFINITY, NAN};
    for (size_t i = 0; i < sizeof(dbls) / sizeof(dbls[0]); i++) {
        uint8_t enc[16];
        size_t n = kvs_value_encode_float(enc, dbls[i]);
        CHECK_EQ(n, 9);
        Kvs__Value *v = decode_value(enc, n, KVS__VALUE__KIND_FLOAT_VALUE);
        CHECK(memcmp(&v->float_value, &dbls[i], sizeof(double)) == 0); /* bit for bit */
        kvs__value__free_unpacked(v, NULL);
    }
}

KVS_TEST(value_encode_bool)
{
    static const int in[] = {0, 1, 42, -1};
    for (size_t i = 0; i < 4; i++) {
        uint8_t enc[16];
        size_t n = kvs_value_encode_bool(enc, in[i]);
        Kvs__Value *v = decode_value(enc, n, KVS__VALUE__KIND_BOOL_VALUE);
        CHECK_EQ(v->bool_value, in[i] != 0);
        kvs__value__free_unpacked(v, NULL);
    }
}

KVS_TEST(value_encode_bytes_and_string)
{
    static uint8_t data[600];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)i; /* includes zero bytes */
    static const size_t lens[] = {0, 1, 127, 128, 300, 600};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        uint8_t enc[700];
        size_t n = kvs_value_encode_bytes(enc, 0, data, lens[i]);
        CHECK(n <= lens[i] + 11);
        Kvs__Value *v = decode_value(enc, n, KVS__VALUE__KIND_BINARY_VALUE);
        check_bin(v->binary_value, data, lens[i]);
        kvs__value__free_unpacked(v, NULL);
    }
    /* Text with U+0000 inside decodes and packs again whole (decode_value
     * compares the repacked bytes). */
    static const struct {
        const char *s;
        size_t n;
    } strs[] = {{"", 0}, {"hello", 5}, {"h\xc3\xa9llo w\xc3\xb6rld", 13}, {"a\0b\0", 4}};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        uint8_t enc[64];
        size_t n = kvs_value_encode_bytes(enc, 1, strs[i].s, strs[i].n);
        Kvs__Value *v = decode_value(enc, n, KVS__VALUE__KIND_STRING_VALUE);
        check_bin(v->string_value, strs[i].s, strs[i].n);
        kvs__value__free_unpacked(v, NULL);
    }
}

/* ---- kvs_msg_append ---------------------------------------------------------------- */

KVS_TEST(msg_append_writes_one_frame)
{
    kvs_buf_t out;
    kvs_buf_init(&out);
    CHECK_EQ(kvs_buf_append(&out, "\x00\x00\x00\x00", 4), 0); /* an earlier empty frame */
    Kvs__Value v = KVS__VALUE__INIT, *vals[1] = {&v};
    v.kind_case = KVS__VALUE__KIND_INTEGER_VALUE, v.integer_value = 99;
    Kvs__CommandResponse m = KVS__COMMAND_RESPONSE__INIT;
    m.status = 200, m.message = "fine", m.n_values = 1, m.values = vals;
    CHECK_EQ(kvs_msg_append(&out, &m.base, KVS_FRAME_DEFAULT_MAX), 0);
    CHECK_EQ(kvs_frame_get_header(out.data + 4, NULL), out.len - 8);
    CHECK_EQ(out.len - 8, kvs__command_response__get_packed_size(&m));

    Kvs__CommandResponse *d = unpack_frame(&out, 4);
    CHECK_EQ(d->status, 200);
    CHECK_STR(d->message, "fine");
    CHECK_EQ(d->n_values, 1);
    CHECK_EQ(d->values[0]->integer_value, 99);
    kvs__command_response__free_unpacked(d, NULL);
    kvs_buf_free(&out);
}

KVS_TEST(msg_append_status)
{
    kvs_buf_t out;
    kvs_buf_init(&out);
    CHECK_EQ(kvs_msg_append_status(&out, 413, "value is %d bytes; the maximum is %d", 9000, 4096),
             0);
    size_t first = out.len;
    CHECK_EQ(kvs_msg_append_status(&out, 200, "PONG"), 0);
    CHECK_EQ(kvs_frame_get_header(out.data, NULL), first - KVS_FRAME_HEADER);

    kvs_buf_t second = {out.data + first, out.len - first, out.len - first};
    out.len = first;
    Kvs__CommandResponse *m = unpack_frame(&out, 0);
    CHECK_EQ(m->status, 413);
    CHECK_STR(m->message, "value is 9000 bytes; the maximum is 4096");
    kvs__command_response__free_unpacked(m, NULL);
    m = unpack_frame(&second, 0);
    CHECK_EQ(m->status, 200);
    CHECK_STR(m->message, "PONG");
    kvs__command_response__free_unpacked(m, NULL);
    kvs_buf_free(&out);
}

KVS_TEST(msg_append_too_big)
{
    char text[200];
    memset(text, 'z', sizeof(text) - 1);
    text[sizeof(text) - 1] = '\0';
    Kvs__CommandResponse m = KVS__COMMAND_RESPONSE__INIT;
    m.status = 200, m.message = text;
    size_t n = kvs__command_response__get_packed_size(&m);

    kvs_buf_t out;
    kvs_buf_init(&out);
    CHECK_EQ(kvs_buf_append(&out, "abc", 3), 0);
    CHECK_EQ(kvs_msg_append(&out, &m.base, n - 1), KVS_ETOOBIG);
    CHECK_EQ(kvs_msg_append(&out, &m.base, 0), KVS_ETOOBIG);
    CHECK_EQ(out.len, 3); /* nothing written */
    CHECK(memcmp(out.data, "abc", 3) == 0);
    CHECK_EQ(kvs_msg_append(&out, &m.base, n), 0); /* exactly the limit fits */
    CHECK_EQ(out.len, 3 + KVS_FRAME_HEADER + n);
    kvs_buf_free(&out);
}

/* kvs_msg_peek must never accept what the full path refuses, and must
 * accept the plain valid single-key requests (the router's hot path). */
static int peek_agrees(const Kvs__CommandRequest *q)
{
    uint8_t buf[2048];
    char m[512];
    size_t n = kvs__command_request__pack(q, buf);
    kvs_peek_t pk;
    int fast = kvs_msg_peek(buf, n, &pk);
    kvs_arena_t a;
    kvs_arena_init(&a);
    Kvs__CommandRequest *d = kvs_msg_decode_request(&a, buf, n, NULL);
    uint32_t st = d == NULL ? 400 : kvs_msg_validate(d, m, sizeof(m));
    if (st == 200)
        st = kvs_msg_check_wire(buf, n, m, sizeof(m));
    if (fast) {
        CHECK_EQ(st, 200);
        const char *table = kvs_msg_request_table(d);
        CHECK_EQ(pk.table_len, strlen(table));
        CHECK(memcmp(pk.table, table, pk.table_len) == 0);
        CHECK_EQ(pk.cmd, d->command_case);
        CHECK_EQ(pk.value_lengths, d->value_lengths);
        CHECK_EQ(pk.presence_only, d->presence_only);
        const ProtobufCBinaryData *key = pk.cmd == KVS__COMMAND_REQUEST__COMMAND_HSET
                                             ? &d->hset->pair->key
                                             : &d->hget->key; /* Hget, Hdel, Hexist alike */
        check_bin(*key, pk.key, pk.key_len);
        if (pk.cmd == KVS__COMMAND_REQUEST__COMMAND_HSET) { /* the Value, byte for byte */
            uint8_t again[1024];
            size_t vn = kvs__value__pack(d->hset->pair->value, again);
            CHECK_EQ(vn, pk.value_len);
            CHECK(memcmp(again, pk.value, vn) == 0);
        }
    }
    kvs_arena_close(&a);
    return fast;
}

KVS_TEST(peek_agrees_with_full_validation)
{
    Kvs__Value v = KVS__VALUE__INIT;
    Kvs__Hset hs = KVS__HSET__INIT;
    Kvs__Kvpair hp = KVS__KVPAIR__INIT;
    Kvs__Hget hg = KVS__HGET__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    uint8_t key[600];
    memset(key, 'k', sizeof(key));
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HGET;
    q.hget = &hg;
    hg.table = "users";
    hg.key = (ProtobufCBinaryData){2, key};
    CHECK(peek_agrees(&q) == 1);
    hg.key.len = 511;
    CHECK(peek_agrees(&q) == 1);
    hg.key.len = 512; /* too long */
    CHECK(peek_agrees(&q) == 0);
    hg.key.len = 0;
    CHECK(peek_agrees(&q) == 0);
    hg.key.len = 3;
    hg.table = "__kvs";
    CHECK(peek_agrees(&q) == 0);
    hg.table = "";
    CHECK(peek_agrees(&q) == 0);
    hg.table = "_ok";
    CHECK(peek_agrees(&q) == 1);
    hg.table = "\xff\xfe";
    CHECK(peek_agrees(&q) == 0);
    hg.table = "t";
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HSET;
    q.hset = &hs;
    hs.table = "t";
    CHECK(peek_agrees(&q) == 0); /* no pair */
    hs.pair = &hp;
    hp.key = (ProtobufCBinaryData){1, key};
    CHECK(peek_agrees(&q) == 0); /* no value */
    hp.value = &v;
    CHECK(peek_agrees(&q) == 0); /* empty value */
    v.kind_case = KVS__VALUE__KIND_INTEGER_VALUE;
    static const int64_t ints[] = {-5, 0, INT64_MIN, INT64_MAX, -1};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        v.integer_value = ints[i];
        CHECK(peek_agrees(&q) == 1);
    }
    v.kind_case = KVS__VALUE__KIND_FLOAT_VALUE;
    v.float_value = 2.5;
    CHECK(peek_agrees(&q) == 1);
    v.kind_case = KVS__VALUE__KIND_STRING_VALUE;
    v.string_value = bin("caf\xc3\xa9");
    CHECK(peek_agrees(&q) == 1);
    v.string_value = (ProtobufCBinaryData){3, (uint8_t *)"a\0b"}; /* U+0000 is text */
    CHECK(peek_agrees(&q) == 1);
    v.string_value = bin("");
    CHECK(peek_agrees(&q) == 1);
    v.string_value = bin("bad\xc3");
    CHECK(peek_agrees(&q) == 0);
    v.kind_case = KVS__VALUE__KIND_BINARY_VALUE;
    v.binary_value = (ProtobufCBinaryData){3, (uint8_t *)"\0\1\2"};
    CHECK(peek_agrees(&q) == 1);
    /* An Hset or Hdel asking for value_lengths (the Redis door's HSET and
     * HDEL) stays on the fast path; any other option, or a read asking
     * for lengths, takes the full one. */
    q.value_lengths = 1;
    CHECK(peek_agrees(&q) == 1);
    q.presence_only = 1; /* what a router sets for a user without read */
    CHECK(peek_agrees(&q) == 1);
    q.value_lengths = 0;
    CHECK(peek_agrees(&q) == 1);
    q.value_lengths = 1;
    q.presence_only = 0;
    q.accept_stale = 1;
    CHECK(peek_agrees(&q) == 0);
    q.accept_stale = 0;
    Kvs__Hdel hd = KVS__HDEL__INIT;
    hd.table = "t";
    hd.key = (ProtobufCBinaryData){1, key};
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HDEL;
    q.hdel = &hd;
    CHECK(peek_agrees(&q) == 1);
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HGET;
    q.hget = &hg;
    CHECK(peek_agrees(&q) == 0);
    q.value_lengths = 0;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HSET;
    q.hset = &hs;
    hp.key.len = 0;
    CHECK(peek_agrees(&q) == 0); /* empty key */
    hp.key.len = 512;
    CHECK(peek_agrees(&q) == 0);
    /* Other commands and odd encodings always take the full path. */
    static const uint8_t twice[] = {0x0a, 0x05, 0x0a, 0x01, 't', 0x12, 0x00,
                                    0x0a, 0x05, 0x0a, 0x01, 't', 0x12, 0x00};
    kvs_peek_t pk;
    CHECK(kvs_msg_peek(twice, sizeof(twice), &pk) == 0);
    static const uint8_t unknown[] = {0x0a, 0x08, 0x0a, 0x01, 't', 0x12, 0x01, 'k', 0x20, 0x01};
    CHECK(kvs_msg_peek(unknown, sizeof(unknown), &pk) == 0);
    static const uint8_t ping[] = {0x5a, 0x00};
    CHECK(kvs_msg_peek(ping, sizeof(ping), &pk) == 0);
    /* value_lengths before the command, twice, or with another wire type. */
    static const uint8_t lengths_first[] = {0xb0, 0x06, 0x01, 0x32, 0x06, 0x0a,
                                            0x01, 't',  0x12, 0x01, 'k'};
    static const uint8_t lengths_twice[] = {0x32, 0x06, 0x0a, 0x01, 't',  0x12, 0x01,
                                            'k',  0xb0, 0x06, 0x01, 0xb0, 0x06, 0x00};
    static const uint8_t lengths_bytes[] = {0x32, 0x06, 0x0a, 0x01, 't',  0x12,
                                            0x01, 'k',  0xb2, 0x06, 0x01, 0x01};
    static const uint8_t lengths_ok[] = {
        0x32, 0x06, 0x0a, 0x01, 't',  0x12,
        0x01, 'k',  0xb0, 0x06, 0x80, 0x01}; /* 128: true, as protobuf-c reads it */
    CHECK(kvs_msg_peek(lengths_first, sizeof(lengths_first), &pk) == 0);
    CHECK(kvs_msg_peek(lengths_twice, sizeof(lengths_twice), &pk) == 0);
    CHECK(kvs_msg_peek(lengths_bytes, sizeof(lengths_bytes), &pk) == 0);
    CHECK(kvs_msg_peek(lengths_ok, sizeof(lengths_ok), &pk) == 1);
    CHECK_EQ(pk.cmd, KVS__COMMAND_REQUEST__COMMAND_HDEL);
    CHECK_EQ(pk.value_lengths, 1);
    CHECK_EQ(pk.presence_only, 0);
    /* presence_only (field 103) after value_lengths, or alone; not before
     * it, twice, or with another wire type. */
    static const uint8_t both[] = {0x32, 0x06, 0x0a, 0x01, 't',  0x12, 0x01,
                                   'k',  0xb0, 0x06, 0x01, 0xb8, 0x06, 0x01};
    static const uint8_t presence[] = {0x32, 0x06, 0x0a, 0x01, 't', 0x12,
                                       0x01, 'k',  0xb8, 0x06, 0x01};
    static const uint8_t presence_first[] = {0x32, 0x06, 0x0a, 0x01, 't',  0x12, 0x01,
                                             'k',  0xb8, 0x06, 0x01, 0xb0, 0x06, 0x01};
    static const uint8_t presence_twice[] = {0x32, 0x06, 0x0a, 0x01, 't',  0x12, 0x01,
                                             'k',  0xb8, 0x06, 0x01, 0xb8, 0x06, 0x01};
    static const uint8_t presence_bytes[] = {0x32, 0x06, 0x0a, 0x01, 't',  0x12,
                                             0x01, 'k',  0xba, 0x06, 0x01, 0x01};
    CHECK(kvs_msg_peek(both, sizeof(both), &pk) == 1);
    CHECK_EQ(pk.value_lengths + pk.presence_only, 2);
    CHECK(kvs_msg_peek(presence, sizeof(presence), &pk) == 1);
    CHECK_EQ(pk.value_lengths, 0);
    CHECK_EQ(pk.presence_only, 1);
    CHECK(kvs_msg_peek(presence_first, sizeof(presence_first), &pk) == 0);
    CHECK(kvs_msg_peek(presence_twice, sizeof(presence_twice), &pk) == 0);
    CHECK(kvs_msg_peek(presence_bytes, sizeof(presence_bytes), &pk) == 0);
    CHECK_EQ(kvs_msg_values_mode(KVS__COMMAND_REQUEST__COMMAND_HDEL, 1, 1), KVS_VALUES_PRESENCE);
    CHECK_EQ(kvs_msg_values_mode(KVS__COMMAND_REQUEST__COMMAND_HMSET, 0, 1), KVS_VALUES_PRESENCE);
    CHECK_EQ(kvs_msg_values_mode(KVS__COMMAND_REQUEST__COMMAND_HMGET, 1, 1), KVS_VALUES_LENGTHS);
    CHECK_EQ(kvs_msg_values_mode(KVS__COMMAND_REQUEST__COMMAND_HGET, 0, 1), KVS_VALUES_WHOLE);
    /* Hset with two pairs (protobuf merges them), a pair with an unknown
     * field, a pair with its key twice: valid protobuf, full path only. */
    static const uint8_t two_pairs[] = {0x22, 0x11, 0x0a, 0x01, 't',  0x12, 0x07, 0x0a, 0x01, 'k',
                                        0x12, 0x02, 0x18, 0x05, 0x12, 0x04, 0x12, 0x02, 0x18, 0x06};
    CHECK(kvs_msg_peek(two_pairs, sizeof(two_pairs), &pk) == 0);
    static const uint8_t pair_extra[] = {0x22, 0x0e, 0x0a, 0x01, 't',  0x12, 0x09, 0x0a,
                                         0x01, 'k',  0x12, 0x02, 0x18, 0x05, 0x48, 0x01};
    CHECK(kvs_msg_peek(pair_extra, sizeof(pair_extra), &pk) == 0);
    static const uint8_t key_twice[] = {0x22, 0x0f, 0x0a, 0x01, 't',  0x12, 0x0a, 0x0a, 0x01,
                                        'k',  0x0a, 0x01, 'j',  0x12, 0x02, 0x18, 0x05};
    CHECK(kvs_msg_peek(key_twice, sizeof(key_twice), &pk) == 0);
    /* Varints protobuf-c refuses: a 6-byte tag, a 6-byte length, a field
     * number past 2^29 that would truncate to Hset's. */
    static const uint8_t long_tag[] = {0x8a, 0x80, 0x80, 0x80, 0x80, 0x00, 0x06,
                                       0x0a, 0x01, 't',  0x12, 0x01, 'k'};
    static const uint8_t long_len[] = {0x0a, 0x86, 0x80, 0x80, 0x80, 0x80, 0x00,
                                       0x0a, 0x01, 't',  0x12, 0x01, 'k'};
    static const uint8_t huge_field[] = {0xa2, 0x80, 0x80, 0x80, 0x10, 0x06,
                                         0x0a, 0x01, 't',  0x12, 0x01, 'k'};
    /* A Value whose tag takes 6 bytes: stored as-is it would be unreadable. */
    static const uint8_t long_value_tag[] = {0x22, 0x11, 0x0a, 0x01, 't',  0x12, 0x0c,
                                             0x0a, 0x01, 'k',  0x12, 0x07, 0x98, 0x80,
                                             0x80, 0x80, 0x80, 0x00, 0x02};
    const uint8_t *odd[] = {long_tag, long_len, huge_field, long_value_tag};
    size_t odd_len[] = {sizeof(long_tag), sizeof(long_len), sizeof(huge_field),
                        sizeof(long_value_tag)};
    for (size_t i = 0; i < 4; i++) {
        kvs_arena_t a;
        kvs_arena_init(&a);
        Kvs__CommandRequest *d = kvs_msg_decode_request(&a, odd[i], odd_len[i], NULL);
        Kvs__Value *v = NULL;
        /* The full path refuses each: protobuf-c cannot decode it, sees no
         * known command in it, or (the Value) cannot decode it once stored. */
        int refused = d == NULL || d->command_case == KVS__COMMAND_REQUEST__COMMAND__NOT_SET ||
                      (d->command_case == KVS__COMMAND_REQUEST__COMMAND_HSET &&
                       kvs_msg_decode_value(&a, odd[i] + 12, 7, &v) != 0);
        CHECK(refused);
        CHECK(kvs_msg_peek(odd[i], odd_len[i], &pk) == 0);
        kvs_arena_close(&a);
    }
}

/* ---- encoding key requests, peeking at answers --------------------------------- */

KVS_TEST(encode_key_request_is_what_protobuf_c_packs)
{
    const char *tables[] = {"t", "",
                            "a-long-table-name-of-some-length-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"};
    static uint8_t bigkey[300];
    memset(bigkey, 0xfe, sizeof(bigkey));
    const ProtobufCBinaryData keys[] = {
        {1, (uint8_t *)"k"}, {0, NULL}, {3, (uint8_t *)"a\0b"}, {sizeof(bigkey), bigkey}};
    const Kvs__CommandRequest__CommandCase cmds[] = {KVS__COMMAND_REQUEST__COMMAND_HGET,
                                                     KVS__COMMAND_REQUEST__COMMAND_HDEL,
                                                     KVS__COMMAND_REQUEST__COMMAND_HEXIST};
    for (size_t c = 0; c < 3; c++)
        for (size_t t = 0; t < 3; t++)
            for (size_t k = 0; k < 4; k++) {
                Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
                Kvs__Hget m = KVS__HGET__INIT; /* Hdel and Hexist have the same layout */
                m.table = (char *)tables[t];
                m.key = keys[k];
                q.command_case = cmds[c];
                q.hget = &m;
                uint8_t want[1024];
                size_t n = kvs__command_request__pack(&q, want);
                kvs_buf_t b;
                kvs_buf_init(&b);
                CHECK_EQ(kvs_msg_encode_key_request(&b, cmds[c], tables[t], strlen(tables[t]),
                                                    keys[k].data, keys[k].len),
                         0);
                CHECK_EQ(b.len, n);
                CHECK(memcmp(b.data, want, n) == 0);
                kvs_buf_free(&b);
            }
}

static size_t pack_answer(uint8_t *buf, uint32_t status, const char *msg, Kvs__Value **vals,
                          size_t nv, int with_pair)
{
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    Kvs__Kvpair p = KVS__KVPAIR__INIT, *pp = &p;
    r.status = status;
    r.message = (char *)msg;
    r.values = vals;
    r.n_values = nv;
    if (with_pair) {
        p.key = (ProtobufCBinaryData){1, (uint8_t *)"k"};
        r.pairs = &pp;
        r.n_pairs = 1;
    }
    return kvs__command_response__pack(&r, buf);
}

KVS_TEST(answer_and_value_peek_agree_with_the_decoder)
{
    Kvs__Value vs[6];
    for (int i = 0; i < 6; i++)
        kvs__value__init(&vs[i]);
    vs[1].kind_case = KVS__VALUE__KIND_STRING_VALUE;
    vs[1].string_value = (ProtobufCBinaryData){3, (uint8_t *)"x\0y"};
    vs[2].kind_case = KVS__VALUE__KIND_BINARY_VALUE;
    vs[2].binary_value = (ProtobufCBinaryData){2, (uint8_t *)"\xff\x00"};
    vs[3].kind_case = KVS__VALUE__KIND_INTEGER_VALUE;
    vs[3].integer_value = INT64_MIN;
    vs[4].kind_case = KVS__VALUE__KIND_FLOAT_VALUE;
    vs[4].float_value = -0.1;
    vs[5].kind_case = KVS__VALUE__KIND_BOOL_VALUE;
    vs[5].bool_value = 1;
    uint8_t buf[512];
    for (int i = 0; i < 6; i++) {
        Kvs__Value *vp[2] = {&vs[i], &vs[(i + 1) % 6]};
        size_t n = pack_answer(buf, 200, i == 3 ? "note" : NULL, vp, 2, 0);
        kvs_answer_peek_t a;
        CHECK_EQ(kvs_msg_answer_peek(buf, n, &a), 1);
        CHECK_EQ(a.status, 200);
        CHECK_EQ(a.n_values, 2);
        CHECK_EQ(a.message_len, i == 3 ? 4 : 0);
        kvs_value_peek_t v;
        CHECK_EQ(kvs_msg_value_peek(a.value, a.value_len, &v), 1);
        CHECK_EQ(v.kind, vs[i].kind_case);
        switch (v.kind) {
        case KVS__VALUE__KIND_STRING_VALUE:
            CHECK(v.len == 3 && memcmp(v.bytes, "x\0y", 3) == 0);
            break;
        case KVS__VALUE__KIND_BINARY_VALUE:
            CHECK(v.len == 2 && memcmp(v.bytes, "\xff\x00", 2) == 0);
            break;
        case KVS__VALUE__KIND_INTEGER_VALUE:
            CHECK(v.integer == INT64_MIN);
            break;
        case KVS__VALUE__KIND_FLOAT_VALUE:
            CHECK(v.real == -0.1);
            break;
        case KVS__VALUE__KIND_BOOL_VALUE:
            CHECK(v.boolean == 1);
            break;
        default:
            break;
        }
    }
    /* Anything beyond status, message and values: decode in full. */
    size_t n = pack_answer(buf, 200, NULL, NULL, 0, 1);
    kvs_answer_peek_t a;
    CHECK_EQ(kvs_msg_answer_peek(buf, n, &a), 0);
    n = pack_answer(buf, 404, "key not found", NULL, 0, 0);
    CHECK_EQ(kvs_msg_answer_peek(buf, n, &a), 1);
    CHECK_EQ(a.status, 404);
    CHECK_EQ(a.n_values, 0);
    CHECK(a.message_len == 13 && memcmp(a.message, "key not found", 13) == 0);
    CHECK_EQ(kvs_msg_answer_peek(buf, n - 1, &a), 0); /* cut short */
    kvs_value_peek_t v;
    const uint8_t two[] = {0x08, 0x01, 0x08, 0x02}; /* integer twice: not one member */
    CHECK_EQ(kvs_msg_value_peek(two, sizeof(two), &v), 0);
}

/* kvs_msg_find_bytes reads CommandResponse.position out of packed bytes as
 * protobuf-c would, and kvs_resp writes it where protobuf-c reads it. */
KVS_TEST(find_bytes_and_resp_position)
{
    static const uint8_t tok[] = {0x01, 0x01, 't', 0x01, 0x03, 0x11};
    kvs_buf_t b;
    kvs_resp_t r;
    kvs_buf_init(&b);
    kvs_resp_begin(&r, &b);
    kvs_resp_status(&r, 200);
    kvs_resp_value(&r, NULL, 0);
    kvs_resp_position(&r, tok, sizeof(tok));
    CHECK_EQ(kvs_resp_end(&r), 0);
    const uint8_t *p = b.data + KVS_FRAME_HEADER;
    size_t n = b.len - KVS_FRAME_HEADER, len = 0;
    const uint8_t *v = NULL;
    Kvs__CommandResponse *resp = kvs__command_response__unpack(NULL, n, p);
    CHECK(resp != NULL && resp->position.len == sizeof(tok));
    CHECK(memcmp(resp->position.data, tok, sizeof(tok)) == 0);
    kvs__command_response__free_unpacked(resp, NULL);
    CHECK_EQ(kvs_msg_find_bytes(p, n, 6, &v, &len), 1);
    CHECK(len == sizeof(tok) && memcmp(v, tok, len) == 0);
    CHECK_EQ(kvs_msg_find_bytes(p, n, 5, &v, &len), 0);      /* no cursor */
    CHECK_EQ(kvs_msg_find_bytes(p, n - 1, 6, &v, &len), -1); /* cut short */
    /* the last occurrence wins, as protobuf reads a repeated scalar field */
    static const uint8_t twice[] = {0x32, 0x01, 'a', 0x08, 0x96, 0x01, 0x32, 0x02, 'b', 'c'};
    CHECK_EQ(kvs_msg_find_bytes(twice, sizeof(twice), 6, &v, &len), 1);
    CHECK(len == 2 && memcmp(v, "bc", 2) == 0);
    kvs_buf_free(&b);
}

/* What a hook's replacement keeps of the answer to a write it replaces:
 * the position as it was; outcome_unknown when the answer set it, said the
 * write was applied with no position, or cannot be read; nothing for a
 * refusal that wrote nothing. */
static void replaced(uint32_t status, int unknown, const uint8_t *tok, size_t toklen,
                     int want_unknown)
{
    Kvs__CommandResponse m = KVS__COMMAND_RESPONSE__INIT;
    uint8_t buf[128];
    m.status = status;
    m.message = "m";
    m.outcome_unknown = unknown != 0;
    m.position.data = (uint8_t *)tok;
    m.position.len = toklen;
    size_t n = kvs__command_response__pack(&m, buf);
    kvs_answer_outcome_t o;
    kvs_msg_replaced_outcome(buf, n, &o);
    CHECK_EQ(o.unknown, want_unknown);
    CHECK_EQ(o.position_len, toklen);
    CHECK(toklen == 0 ? o.position == NULL : memcmp(o.position, tok, toklen) == 0);
}

KVS_TEST(replaced_outcome_keeps_what_the_write_did)
{
    static const uint8_t tok[] = {0x01, 0x01, 't', 0x01, 0x03, 0x11};
    replaced(200, 0, NULL, 0, 1);          /* applied, nothing names it */
    replaced(200, 0, tok, sizeof(tok), 0); /* applied: its records are named */
    replaced(207, 0, NULL, 0, 1);          /* partly applied */
    replaced(207, 0, tok, sizeof(tok), 0);
    replaced(503, 1, NULL, 0, 1); /* may or may not */
    replaced(503, 1, tok, sizeof(tok), 1);
    replaced(503, 0, tok, sizeof(tok), 0); /* acknowledged, not applied yet */
    replaced(403, 0, NULL, 0, 0);          /* refused: nothing written */
    replaced(400, 0, NULL, 0, 0);
    kvs_answer_outcome_t o;
    static const uint8_t cut[] = {0x08, 0xc8, 0x01, 0x32, 0x05, 'a'}; /* 200, position cut short */
    kvs_msg_replaced_outcome(cut, sizeof(cut), &o);
    CHECK(o.unknown && o.position == NULL && o.position_len == 0);
    kvs_msg_replaced_outcome(NULL, 0, &o); /* no answer */
    CHECK(o.unknown && o.position == NULL);
}

/* kvs_msg_replaced_keep: the same verdict, the position copied (the answer
 * it lay in may be overwritten), the copy emptied first. */
KVS_TEST(replaced_keep_copies_the_position)
{
    static const uint8_t tok[] = {0x01, 0x01, 't', 0x01, 0x03, 0x11};
    Kvs__CommandResponse m = KVS__COMMAND_RESPONSE__INIT;
    uint8_t buf[128];
    m.status = 200;
    m.position.data = (uint8_t *)tok;
    m.position.len = sizeof(tok);
    size_t n = kvs__command_response__pack(&m, buf);
    kvs_buf_t pos;
    kvs_buf_init(&pos);
    CHECK(kvs_buf_append(&pos, "stale", 5) == 0);
    CHECK_EQ(kvs_msg_replaced_keep(buf, n, &pos), 0);
    memset(buf, 0, sizeof(buf)); /* the answer is overwritten */
    CHECK_EQ(pos.len, sizeof(tok));
    CHECK(memcmp(pos.data, tok, sizeof(tok)) == 0);
    m.position.len = 0; /* applied, nothing names it */
    n = kvs__command_response__pack(&m, buf);
    CHECK_EQ(kvs_msg_replaced_keep(buf, n, &pos), 1);
    CHECK_EQ(pos.len, 0);
    CHECK_EQ(kvs_msg_replaced_keep(NULL, 0, &pos), 1);
    kvs_buf_free(&pos);
}

/* kvs_resp_outcome_unknown writes CommandResponse.outcome_unknown where
 * protobuf-c reads it; an answer without it reads false. */
KVS_TEST(resp_outcome_unknown)
{
    kvs_buf_t b;
    kvs_resp_t r;
    kvs_buf_init(&b);
    for (int unknown = 0; unknown < 2; unknown++) {
        b.len = 0;
        kvs_resp_begin(&r, &b);
        kvs_resp_status(&r, 503);
        kvs_resp_message(&r, "no acknowledgement");
        if (unknown)
            kvs_resp_outcome_unknown(&r);
        CHECK_EQ(kvs_resp_end(&r), 0);
        Kvs__CommandResponse *resp = kvs__command_response__unpack(NULL, b.len - KVS_FRAME_HEADER,
                                                                   b.data + KVS_FRAME_HEADER);
        CHECK(resp != NULL);
        CHECK_EQ(resp->status, 503);
        CHECK_EQ(resp->outcome_unknown, unknown);
        CHECK_STR(resp->message, "no acknowledgement");
        kvs__command_response__free_unpacked(resp, NULL);
    }
    kvs_buf_free(&b);
}

/* kvs_msg_frame_writes finds the command's case on the wire, wherever the
 * other top-level fields are (a router appends min_position after it; a
 * client may put it first), and takes bytes that do not parse for none. */
KVS_TEST(frame_writes_finds_writes_only)
{
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    Kvs__Hset hs = KVS__HSET__INIT;
    Kvs__Kvpair hp = KVS__KVPAIR__INIT;
    Kvs__Value v = KVS__VALUE__INIT;
    Kvs__Hget hg = KVS__HGET__INIT;
    Kvs__Hincr hi = KVS__HINCR__INIT;
    Kvs__Hmdel hd = KVS__HMDEL__INIT;
    uint8_t buf[256], pos[4] = {1, 2, 3, 4};
    v.kind_case = KVS__VALUE__KIND_STRING_VALUE;
    v.string_value = bin("v");
    hp.key = (ProtobufCBinaryData){1, (uint8_t *)"k"};
    hp.value = &v;
    hs.table = "t";
    hs.pair = &hp;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HSET;
    q.hset = &hs;
    size_t n = kvs__command_request__pack(&q, buf);
    CHECK_EQ(kvs_msg_frame_writes(buf, n), 1);
    CHECK_EQ(kvs_msg_frame_writes(buf, n - 1), 0); /* cut short: no write */
    q.min_position = (ProtobufCBinaryData){sizeof(pos), pos};
    n = kvs__command_request__pack(&q, buf);
    CHECK_EQ(kvs_msg_frame_writes(buf, n), 1);
    /* min_position first, then the command */
    Kvs__CommandRequest only = KVS__COMMAND_REQUEST__INIT;
    uint8_t cmd[256], moved[256];
    only.command_case = KVS__COMMAND_REQUEST__COMMAND_HSET;
    only.hset = &hs;
    size_t cmd_len = kvs__command_request__pack(&only, cmd);
    CHECK(cmd_len < n);
    memcpy(moved, buf + cmd_len, n - cmd_len); /* field 100, packed after the command */
    memcpy(moved + (n - cmd_len), cmd, cmd_len);
    CHECK_EQ(kvs_msg_frame_writes(moved, n), 1);
    /* accept_stale before the command as a fixed32 (protobuf-c reads a
     * bool of any wire type) or a fixed64: a valid Hset all the same. */
    static const uint8_t stale32[] = {0xad, 0x06, 1, 0, 0, 0},
                         stale64[] = {0xa9, 0x06, 1, 0, 0, 0, 0, 0, 0, 0};
    const uint8_t *stale[] = {stale32, stale64};
    size_t stale_len[] = {sizeof(stale32), sizeof(stale64)};
    for (int i = 0; i < 2; i++) {
        char m[200];
        memcpy(moved, stale[i], stale_len[i]);
        memcpy(moved + stale_len[i], cmd, cmd_len);
        Kvs__CommandRequest *r = kvs__command_request__unpack(NULL, stale_len[i] + cmd_len, moved);
        CHECK(r != NULL && r->command_case == KVS__COMMAND_REQUEST__COMMAND_HSET &&
              r->accept_stale);
        CHECK_EQ(kvs_msg_validate(r, m, sizeof(m)), KVS_STATUS_OK);
        kvs__command_request__free_unpacked(r, NULL);
        CHECK_EQ(kvs_msg_frame_writes(moved, stale_len[i] + cmd_len), 1);
    }
    hi.table = "t";
    hi.key = hp.key;
    hi.by_case = KVS__HINCR__BY_BY_INT;
    hi.by_int = 1;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HINCR;
    q.hincr = &hi;
    CHECK_EQ(kvs_msg_frame_writes(buf, kvs__command_request__pack(&q, buf)), 1);
    hd.table = "t";
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HMDEL;
    q.hmdel = &hd;
    CHECK_EQ(kvs_msg_frame_writes(buf, kvs__command_request__pack(&q, buf)), 1);
    hg.table = "t";
    hg.key = hp.key;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HGET;
    q.hget = &hg;
    CHECK_EQ(kvs_msg_frame_writes(buf, kvs__command_request__pack(&q, buf)), 0);
    CHECK_EQ(kvs_msg_frame_writes(buf, 0), 0);
    CHECK_EQ(kvs_msg_frame_writes((const uint8_t *)"\xff\xff\xff", 3), 0);
}

/* A table name as sent: past a NUL byte in it (refused, but hooks and
 * the slow log show it whole), the last of several copies, and none for a
 * command without one. */
KVS_TEST(request_table_sent_is_the_name_on_the_wire)
{
    /* CommandRequest { hset (field KVS__COMMAND_REQUEST__COMMAND_HSET) {
     * table = "a", table = "nul\0x" } } */
    uint8_t wire[64];
    size_t n = 0;
    const uint8_t body[] = {0x0a, 1, 'a', 0x0a, 5, 'n', 'u', 'l', 0, 'x'};
    wire[n++] = (uint8_t)(KVS__COMMAND_REQUEST__COMMAND_HSET << 3 | 2);
    wire[n++] = (uint8_t)sizeof(body);
    memcpy(wire + n, body, sizeof(body));
    n += sizeof(body);
    Kvs__CommandRequest *q = kvs__command_request__unpack(NULL, n, wire);
    CHECK(q != NULL);
    size_t len = 99;
    const char *t = kvs_msg_request_table_sent(q, wire, n, &len);
    CHECK_EQ(len, 5);
    CHECK(memcmp(t, "nul\0x", 5) == 0);
    CHECK_EQ(strlen(kvs_msg_request_table(q)), 3);    /* where the decoded name stops */
    t = kvs_msg_request_table_sent(q, wire, 3, &len); /* bytes that cannot say: strlen's */
    CHECK_EQ(len, 3);
    CHECK(strcmp(t, "nul") == 0);
    kvs__command_request__free_unpacked(q, NULL);
    Kvs__CommandRequest ping = KVS__COMMAND_REQUEST__INIT;
    Kvs__Ping p = KVS__PING__INIT;
    ping.command_case = KVS__COMMAND_REQUEST__COMMAND_PING;
    ping.ping = &p;
    CHECK(kvs_msg_request_table_sent(&ping, wire, 0, &len) == NULL);
    CHECK_EQ(len, 0);
}

/* A cut text ends at a whole UTF-8 character: a character cut in its
 * middle is dropped whole, complete ones stay. */
/* One rule for table names at every door: each fault named, in the
 * order the doors word them (an ASCII run first, then what follows it). */
KVS_TEST(table_check_names_each_fault)
{
    char longest[KVS_MAX_TABLE + 2];
    memset(longest, 't', sizeof(longest));
    CHECK_EQ(kvs_table_check("users", 5), KVS_TABLE_OK);
    CHECK_EQ(kvs_table_check("_users", 6), KVS_TABLE_OK);
    CHECK_EQ(kvs_table_check("a__", 3), KVS_TABLE_OK);
    CHECK_EQ(kvs_table_check("caf\xc3\xa9", 5), KVS_TABLE_OK);
    CHECK_EQ(kvs_table_check(longest, KVS_MAX_TABLE), KVS_TABLE_OK);
    CHECK_EQ(kvs_table_check(longest, KVS_MAX_TABLE + 1), KVS_TABLE_LONG);
    CHECK_EQ(kvs_table_check("", 0), KVS_TABLE_EMPTY);
    CHECK_EQ(kvs_table_check("a\0b", 3), KVS_TABLE_NUL);
    CHECK_EQ(kvs_table_check("caf\xc3\xa9\0", 6), KVS_TABLE_NUL); /* NUL after the ASCII run */
    CHECK_EQ(kvs_table_check("caf\xe9", 4), KVS_TABLE_NOT_UTF8);
    CHECK_EQ(kvs_table_check("\xc3\xa9\xff", 3), KVS_TABLE_NOT_UTF8);
    CHECK_EQ(kvs_table_check("__", 2), KVS_TABLE_RESERVED);
    CHECK_EQ(kvs_table_check("__kvs", 5), KVS_TABLE_RESERVED);
    CHECK_EQ(kvs_table_check("__\xc3\xa9", 4), KVS_TABLE_RESERVED);
}

/* kvs_msg_check_request: validate, then the wire walk, whose verdict says
 * what a refused request really held. */
static uint32_t check_request_bytes(const uint8_t *p, size_t len)
{
    return check_bytes(p, len, 1);
}

KVS_TEST(check_request_tells_what_was_sent)
{
    /* A table of one NUL byte decodes as an empty name: the wire says NUL. */
    static const uint8_t nul[] = {0x0a, 0x06, 0x0a, 0x01, 0x00, 0x12, 0x01, 'k'};
    CHECK_EQ(check_request_bytes(nul, sizeof(nul)), KVS_STATUS_BAD_REQUEST);
    CHECK_CONTAINS(msg, "Hget.table holds a NUL byte (U+0000)");
    /* A table truly empty, or a key missing: validate's own words. */
    static const uint8_t empty[] = {0x0a, 0x03, 0x12, 0x01, 'k'};
    CHECK_EQ(check_request_bytes(empty, sizeof(empty)), KVS_STATUS_BAD_REQUEST);
    CHECK_CONTAINS(msg, "Hget.table is empty");
    static const uint8_t nokey[] = {0x0a, 0x03, 0x0a, 0x01, 't'};
    CHECK_EQ(check_request_bytes(nokey, sizeof(nokey)), KVS_STATUS_BAD_REQUEST);
    CHECK_CONTAINS(msg, "Hget.key");
    /* Valid by both: 200. */
    static const uint8_t ok[] = {0x0a, 0x06, 0x0a, 0x01, 't', 0x12, 0x01, 'k'};
    CHECK_EQ(check_request_bytes(ok, sizeof(ok)), KVS_STATUS_OK);
}

KVS_TEST(utf8_cut_never_ends_inside_a_character)
{
    const char *s = "ab\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"; /* a b é € 😀 */
    static const size_t want[] = {0, 1, 2, 2, 4, 4, 4, 7, 7, 7, 7, 11};
    for (size_t n = 0; n <= 11; n++)
        CHECK_EQ(kvs_utf8_cut(s, n), want[n]);
    CHECK_EQ(kvs_utf8_cut("\x80\x80", 2), 2); /* not UTF-8 to begin with: left as it is */
}

/* A status message longer than kvs_msg_append_status's 1 KiB is cut at a
 * character: the answer stays a valid protobuf string, and decodes. */
KVS_TEST(long_status_message_is_cut_at_a_character)
{
    char big[2000];
    size_t n = 0;
    while (n + 2 < sizeof(big) - 1) { /* "é" repeated, after one ASCII byte */
        if (n == 0)
            big[n++] = 'x';
        big[n++] = (char)0xc3;
        big[n++] = (char)0xa9;
    }
    big[n] = '\0';
    kvs_buf_t out;
    kvs_buf_init(&out);
    CHECK_EQ(kvs_msg_append_status(&out, 503, "%s", big), 0);
    int compressed = 1;
    uint32_t len = kvs_frame_get_header(out.data, &compressed);
    Kvs__CommandResponse *r = kvs__command_response__unpack(NULL, len, out.data + KVS_FRAME_HEADER);
    CHECK(r != NULL);
    CHECK_EQ(r->status, 503);
    size_t m = strlen(r->message);
    CHECK(m >= 1020 && m <= 1023);
    CHECK(kvs_utf8_valid(r->message, m));
    CHECK(memcmp(r->message, big, m) == 0);
    kvs__command_response__free_unpacked(r, NULL);
    kvs_buf_free(&out);
}

KVS_TEST_MAIN(
    KVS_CASE(largest_pair_of_a_write), KVS_CASE(utf8_cut_never_ends_inside_a_character),
    KVS_CASE(table_check_names_each_fault), KVS_CASE(check_request_tells_what_was_sent),
    KVS_CASE(long_status_message_is_cut_at_a_character),
    KVS_CASE(request_table_sent_is_the_name_on_the_wire),
    KVS_CASE(decode_response_is_held_to_the_budget),
    KVS_CASE(encode_key_request_is_what_protobuf_c_packs),
    KVS_CASE(answer_and_value_peek_agree_with_the_decoder), KVS_CASE(find_bytes_and_resp_position),
    KVS_CASE(resp_outcome_unknown), KVS_CASE(peek_agrees_with_full_validation),
    KVS_CASE(frame_writes_finds_writes_only), KVS_CASE(validate_every_command_ok),
    KVS_CASE(validate_no_command), KVS_CASE(validate_unknown_command_field),
    KVS_CASE(validate_unknown_field_inside_command), KVS_CASE(validate_table_rules),
    KVS_CASE(validate_table_not_utf8_is_not_quoted), KVS_CASE(validate_key_rules),
    KVS_CASE(validate_keys_lists), KVS_CASE(validate_hset_value),
    KVS_CASE(validate_hset_value_unknown_kind), KVS_CASE(validate_hset_old_shape),
    KVS_CASE(check_wire_nul_rules), KVS_CASE(quote_for_messages),
    KVS_CASE(value_encode_int_is_plain_int64), KVS_CASE(validate_hmset_pairs),
    KVS_CASE(validate_hmset_pair_keys), KVS_CASE(validate_hscan_cursor),
    KVS_CASE(decode_garbage_is_null), KVS_CASE(request_table_and_command_names),
    KVS_CASE(arena_many_allocations), KVS_CASE(arena_alignment_16),
    KVS_CASE(arena_reset_reuses_memory), KVS_CASE(arena_large_allocations),
    KVS_CASE(arena_impossible_size_is_null), KVS_CASE(decode_with_arena_then_reset),
    KVS_CASE(decode_value_with_arena), KVS_CASE(decode_budget_refuses_floods_of_tiny_keys),
    KVS_CASE(a_large_request_with_many_unknown_fields_is_not_decoded),
    KVS_CASE(decode_budget_takes_every_request_of_distinct_keys), KVS_CASE(count_keys_on_the_wire),
    KVS_CASE(decode_budget_holds_when_in_place_gives_up_late),
    KVS_CASE(value_decoding_is_held_to_the_budget),
    KVS_CASE(keys_requests_decode_in_place_as_protobuf_c_reads_them),
    KVS_CASE(hmset_decodes_in_place_as_protobuf_c_reads_it),
    KVS_CASE(nested_messages_given_twice_read_as_protobuf_reads_them),
    KVS_CASE(commands_overridden_by_a_later_one_are_not_decoded),
    KVS_CASE(joining_nested_copies_survives_cut_and_changed_bytes),
    KVS_CASE(a_kvs_0_1_hset_is_named_whatever_its_key),
    KVS_CASE(concatenated_requests_merge_as_protobuf_reads_them),
    KVS_CASE(merge_request_gives_the_bytes_protobuf_reads), KVS_CASE(long_bools_are_refused),
    KVS_CASE(check_wire_refuses_what_protobuf_reads_otherwise), KVS_CASE(resp_every_field_decodes),
    KVS_CASE(resp_bytes_match_protobuf_c), KVS_CASE(resp_status_only_matches_protobuf_c),
    KVS_CASE(resp_message_truncated_at_1k),
    KVS_CASE(resp_message_parts_joined_and_truncated_like_formatted),
    KVS_CASE(resp_frames_back_to_back_and_abort), KVS_CASE(value_encode_int),
    KVS_CASE(value_encode_float), KVS_CASE(value_encode_bool),
    KVS_CASE(value_encode_bytes_and_string), KVS_CASE(msg_append_writes_one_frame),
    KVS_CASE(msg_append_status), KVS_CASE(msg_append_too_big),
    KVS_CASE(replaced_outcome_keeps_what_the_write_did),
    KVS_CASE(replaced_keep_copies_the_position))

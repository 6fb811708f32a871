/*
 * Unit tests for kvs_record: which values each format carries and what
 * their payload is, the record's size as librdkafka counts it, and
 * message.max.bytes as kafka.properties sets it.
 */
#include "kvs_record.h"
#include "kvs_test.h"

#include <string.h>

static kvs_binding_t binding(kvs_format_t f)
{
    kvs_binding_t b = {.topic = "orders", .table = "t", .table_len = 1, .format = f};
    return b;
}

KVS_TEST(each_format_carries_its_kinds)
{
    Kvs__Value s = KVS__VALUE__INIT, bin = KVS__VALUE__INIT, n = KVS__VALUE__INIT;
    s.kind_case = KVS__VALUE__KIND_STRING_VALUE;
    s.string_value.data = (uint8_t *)"text";
    s.string_value.len = 4;
    bin.kind_case = KVS__VALUE__KIND_BINARY_VALUE;
    bin.binary_value.data = (uint8_t *)"\x00\x01\x02";
    bin.binary_value.len = 3;
    n.kind_case = KVS__VALUE__KIND_INTEGER_VALUE;
    n.integer_value = 300;
    const uint8_t *p;
    size_t len;
    kvs_binding_t str = binding(KVS_FORMAT_STRING), raw = binding(KVS_FORMAT_RAW),
                  val = binding(KVS_FORMAT_VALUE);
    CHECK(kvs_record_payload(&str, &s, &p, &len) == 1 && len == 4 && memcmp(p, "text", 4) == 0);
    CHECK(kvs_record_payload(&str, &bin, &p, &len) == 0);
    CHECK(kvs_record_payload(&str, &n, &p, &len) == 0);
    CHECK(kvs_record_payload(&raw, &bin, &p, &len) == 1 && len == 3 && p[2] == 2);
    CHECK(kvs_record_payload(&raw, &s, &p, &len) == 0);
    /* format value: the encoded Value, packed by the caller (tag + varint 300) */
    CHECK(kvs_record_payload(&val, &n, &p, &len) == 1 && p == NULL && len == 3);
    CHECK(kvs_record_payload(&val, &s, &p, &len) == 1 && p == NULL && len == 6);
    /* an empty string or binary value is an empty payload, not a tombstone */
    Kvs__Value e = KVS__VALUE__INIT;
    e.kind_case = KVS__VALUE__KIND_STRING_VALUE;
    CHECK(kvs_record_payload(&str, &e, &p, &len) == 1 && p != NULL && len == 0);

    char msg[512];
    kvs_record_format_refusal(&str, &n, "Hmset.pairs[2].value", msg, sizeof(msg));
    CHECK(strstr(msg, "Hmset.pairs[2].value is integer_value, but table \"t\" is bound to topic "
                      "orders with format: string, which carries only text values") == msg);
    kvs_record_format_refusal(&raw, &s, "Hset.pair.value", msg, sizeof(msg));
    CHECK(strstr(msg, "format: raw, which carries only binary values; send a binary_value") !=
          NULL);
}

KVS_TEST(record_size_counts_header_and_framing)
{
    /* 36 bytes of framing, the header: 1 + "kvs.writer" + 1 + a 16-byte id */
    CHECK(kvs_record_size(0, 0) == 64);
    CHECK(kvs_record_size(511, 1000) == 64 + 511 + 1000);
    char msg[512];
    kvs_record_too_large(1000001, 1000000, msg, sizeof(msg));
    CHECK(strstr(msg, "takes 1000001 bytes") != NULL);
    CHECK(strstr(msg, "message.max.bytes (1000000)") != NULL);
}

KVS_TEST(max_follows_the_properties)
{
    kvs_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    CHECK(kvs_record_max(&cfg) == 1000000);
    kvs_kv_t props[] = {{"acks", "all"}, {"message.max.bytes", "2000000"}};
    cfg.kafka_properties = props;
    cfg.n_kafka_properties = 2;
    CHECK(kvs_record_max(&cfg) == 2000000);
    cfg.n_kafka_properties = 1;
    CHECK(kvs_record_max(&cfg) == 1000000);
    /* read as librdkafka reads it: any base, trailing text ignored */
    cfg.n_kafka_properties = 2;
    props[1].value = "0x7d0";
    CHECK(kvs_record_max(&cfg) == 2000);
    props[1].value = "010000";
    CHECK(kvs_record_max(&cfg) == 4096);
    props[1].value = "5000.5";
    CHECK(kvs_record_max(&cfg) == 5000);
}

KVS_TEST_MAIN(KVS_CASE(each_format_carries_its_kinds),
              KVS_CASE(record_size_counts_header_and_framing), KVS_CASE(max_follows_the_properties))

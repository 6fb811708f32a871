/*
 * Unit tests for kvs_schema: the names and byte layouts every process that
 * reads kvs's environments shares (format versions, offsets records and
 * their keys, paths).
 */
#include "kvs_schema.h"
#include "kvs_test.h"

#include <errno.h>

KVS_TEST(format_versions_are_classified)
{
    CHECK_EQ(kvs_schema_format(NULL, 0), KVS_SCHEMA_FORMAT_ABSENT);
    CHECK_EQ(kvs_schema_format("2", 1), KVS_SCHEMA_FORMAT_CURRENT);
    CHECK_EQ(kvs_schema_format("1", 1), KVS_SCHEMA_FORMAT_OLD);
    CHECK_EQ(kvs_schema_format("3", 1), KVS_SCHEMA_FORMAT_OTHER);
    CHECK_EQ(kvs_schema_format("22", 2), KVS_SCHEMA_FORMAT_OTHER);
    CHECK_EQ(kvs_schema_format("", 0), KVS_SCHEMA_FORMAT_OTHER);
}

KVS_TEST(offsets_round_trip)
{
    uint8_t b[KVS_SCHEMA_OFFSETS_LEN];
    kvs_schema_offsets_t in = {.next = 1234567890123, .applied = 7, .skipped = 3, .misplaced = 2};
    kvs_schema_offsets_t out;
    kvs_schema_offsets_encode(b, &in);
    CHECK_EQ(b[0], 1234567890123 & 0xff); /* little-endian */
    CHECK_EQ(kvs_schema_offsets_decode(b, sizeof(b), &out), 0);
    CHECK_EQ(out.next, in.next);
    CHECK_EQ(out.applied, 7);
    CHECK_EQ(out.skipped, 3);
    CHECK_EQ(out.misplaced, 2);
}

KVS_TEST(offsets_of_older_and_newer_layouts_decode)
{
    uint8_t b[48] = {0};
    kvs_schema_offsets_t in = {.next = 42, .applied = 5, .skipped = 1, .misplaced = 9};
    kvs_schema_offsets_t out = {.misplaced = 77};
    kvs_schema_offsets_encode(b, &in);
    /* a record written before `misplaced` existed: 24 bytes */
    CHECK_EQ(kvs_schema_offsets_decode(b, KVS_SCHEMA_OFFSETS_V1_LEN, &out), 0);
    CHECK_EQ(out.next, 42);
    CHECK_EQ(out.misplaced, 0);
    /* a longer record of a later version: the known fields */
    CHECK_EQ(kvs_schema_offsets_decode(b, sizeof(b), &out), 0);
    CHECK_EQ(out.misplaced, 9);
    /* too short: refused, *out untouched */
    out.next = -5;
    CHECK_EQ(kvs_schema_offsets_decode(b, KVS_SCHEMA_OFFSETS_V1_LEN - 1, &out), -EINVAL);
    CHECK_EQ(out.next, -5);
    CHECK_EQ(kvs_schema_offsets_decode(NULL, 0, &out), -EINVAL);
}

KVS_TEST(keys_and_paths)
{
    char buf[64];
    CHECK_EQ(kvs_schema_offsets_key(buf, sizeof(buf), "users", 12), (int)strlen("kafka/users/12"));
    CHECK_STR(buf, "kafka/users/12");
    CHECK_EQ(kvs_schema_offsets_key(buf, 8, "users", 12), -ENAMETOOLONG);
    CHECK_EQ(kvs_schema_shard_dir(buf, sizeof(buf), "/d", 3), 0);
    CHECK_STR(buf, "/d/shard-3");
    CHECK_EQ(kvs_schema_state_path(buf, sizeof(buf), "/d", 3), 0);
    CHECK_STR(buf, "/d/shard-3.state");
    CHECK_EQ(kvs_schema_state_path(buf, 10, "/d", 3), -ENAMETOOLONG);
    kvs_schema_placement(buf, sizeof(buf), 4, 64);
    CHECK_STR(buf, "shards=4 partitions=64");
}

/* The keys a worker records its bindings under, and a table's layout
 * text: written and read back; text of any other form is refused. */
KVS_TEST(binding_records_round_trip)
{
    char buf[64], topic[32], part[16];
    uint32_t n = 0;
    CHECK_EQ(kvs_schema_offsets_prefix(buf, sizeof(buf), "users"), (int)strlen("kafka/users/"));
    CHECK_STR(buf, "kafka/users/");
    CHECK_EQ(kvs_schema_topic_table_key(buf, sizeof(buf), "users"), (int)strlen("topic/users"));
    CHECK_STR(buf, "topic/users");
    CHECK_EQ(kvs_schema_table_layout_key(buf, sizeof(buf), "t\0x", 3), 9);
    CHECK(memcmp(buf, "table/t\0x", 10) == 0);
    CHECK_EQ(kvs_schema_topic_table_key(buf, 8, "users"), -ENAMETOOLONG);
    CHECK_EQ(kvs_schema_cluster_key(buf, sizeof(buf), "users"), (int)strlen("cluster/users"));
    CHECK_STR(buf, "cluster/users");
    CHECK_EQ(kvs_schema_cluster_key(buf, 13, "users"), -ENAMETOOLONG);
    kvs_schema_layout(buf, sizeof(buf), "users.v2", "crc32", 12);
    CHECK_STR(buf, "topic=users.v2 partitioner=crc32 partitions=12");
    CHECK_EQ(
        kvs_schema_layout_parse(buf, strlen(buf), topic, sizeof(topic), part, sizeof(part), &n), 0);
    CHECK_STR(topic, "users.v2");
    CHECK_STR(part, "crc32");
    CHECK_EQ(n, 12);
    const char *bad[] = {"",
                         "topic=",
                         "topic=u partitioner=crc32",
                         "topic=u partitions=3",
                         "topic= partitioner=crc32 partitions=3",
                         "topic=u partitioner=crc32 partitions=0",
                         "topic=u partitioner=crc32 partitions=3x",
                         "topic=u partitioner= partitions=3",
                         "topic=u partitioner=crc32 partitions=99999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK_EQ(kvs_schema_layout_parse(bad[i], strlen(bad[i]), topic, sizeof(topic), part,
                                         sizeof(part), &n),
                 -EINVAL);
    /* A topic or partitioner longer than the caller's buffers is refused. */
    const char *long_part = "topic=u partitioner=aaaaaaaaaaaaaaaaaaaa partitions=3";
    CHECK_EQ(kvs_schema_layout_parse(long_part, strlen(long_part), topic, sizeof(topic), part,
                                     sizeof(part), &n),
             -EINVAL);
}

KVS_TEST_MAIN(KVS_CASE(format_versions_are_classified), KVS_CASE(offsets_round_trip),
              KVS_CASE(offsets_of_older_and_newer_layouts_decode), KVS_CASE(keys_and_paths),
              KVS_CASE(binding_records_round_trip))

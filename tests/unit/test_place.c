/*
 * test_place: kvs_murmur2 and the partition/shard map.
 *
 * Every expected hash here comes from outside kvs, never from kvs_murmur2:
 *
 *  - Kafka's own UtilsTest.testMurmur2 vectors (signed Java ints).
 *  - librdkafka's rdmurmur2.c unit test, whose values it documents as the
 *    Java client's results ("kafka", "1234" and its suffixes, the unaligned
 *    "PreAmble..." string and its suffixes, the empty key).
 *  - For high-bit bytes and lengths 1..5, values printed by Kafka's
 *    Utils.murmur2, copied verbatim into a Java class and run on OpenJDK 17;
 *    that copy reproduces every vector above, so it is the reference.
 *
 * crc32 and fnv1a likewise take their vectors from outside kvs:
 *
 *  - CRC-32: the standard check value (crc32("123456789") = 0xcbf43926) and
 *    values printed by zlib's crc32() (Python's zlib.crc32).
 *  - FNV-1a: the reference FNV test suite (fnv1a_32 of "", "a", "foobar"),
 *    and librdkafka's rdfnv1a.c unit test, whose partitioner-ready values
 *    (after the sign handling) it took from Go's hash/fnv, i.e. Sarama.
 *
 * test_place_rdkafka.c cross-checks many random keys against librdkafka's
 * own partitioner functions.
 */
#include "kvs_place.h"
#include "kvs_test.h"

typedef struct {
    const char *key;
    size_t len;
    uint32_t want; /* the 32-bit pattern of Java's Utils.murmur2(key) */
} vector_t;

/* The bit pattern of a Java int literal (int -> unsigned is well defined). */
#define J(n) ((uint32_t)(int32_t)(n))
#define STR_VEC(s, h)                                                                              \
    {                                                                                              \
        s, sizeof(s) - 1, h                                                                        \
    }

static void check_vectors(const vector_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t got = kvs_murmur2(v[i].key, v[i].len);
        if (got != v[i].want)
            fprintf(stderr, "vector %zu (len %zu): got 0x%08" PRIx32 ", want 0x%08" PRIx32 "\n", i,
                    v[i].len, got, v[i].want);
        CHECK_EQ(got, v[i].want);
    }
}

KVS_TEST(murmur2_kafka_vectors)
{
    /* org.apache.kafka.common.utils.UtilsTest.testMurmur2 */
    static const char abc[] = {'a', 'b', 'c'};
    const vector_t v[] = {
        STR_VEC("21", J(-973932308)),
        STR_VEC("foobar", J(-790332482)),
        STR_VEC("a-little-bit-long-string", J(-985981536)),
        STR_VEC("a-little-bit-longer-string", J(-1486304829)),
        STR_VEC("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", J(-58897971)),
        {abc, 3, J(479470107)},
    };
    check_vectors(v, sizeof(v) / sizeof(v[0]));
}

KVS_TEST(murmur2_librdkafka_vectors)
{
    /* librdkafka src/rdmurmur2.c unittest_murmur2 (Java-compatible values). */
    static const vector_t v[] = {
        STR_VEC("kafka", 0xd067cf64u),
        STR_VEC("giberish123456789", 0x8f552b0cu),
        STR_VEC("1234", 0x9fc97b14u),
        STR_VEC("234", 0xe7c009cau),
        STR_VEC("34", 0x873930dau),
        STR_VEC("4", 0x5a4b5ca1u),
        STR_VEC("PreAmbleWillBeRemoved,ThePrePartThatIs", 0x78424f1cu),
        STR_VEC("reAmbleWillBeRemoved,ThePrePartThatIs", 0x4a62b377u),
        STR_VEC("eAmbleWillBeRemoved,ThePrePartThatIs", 0xe0e4e09eu),
        STR_VEC("AmbleWillBeRemoved,ThePrePartThatIs", 0x62b8b43fu),
        STR_VEC("", 0x106e08d9u),
    };
    check_vectors(v, sizeof(v) / sizeof(v[0]));
}

KVS_TEST(murmur2_empty_key)
{
    /* Java: murmur2(new byte[0]) == 275646681 (0x106e08d9). A NULL pointer
     * with length 0 is the same empty key and must not be dereferenced. */
    const char one = 'x';
    CHECK_EQ(kvs_murmur2("", 0), 275646681u);
    CHECK_EQ(kvs_murmur2(NULL, 0), 275646681u);
    CHECK_EQ(kvs_murmur2(&one, 0), 275646681u);
}

KVS_TEST(murmur2_lengths_1_to_5)
{
    /* One vector per tail shape: 1, 2, 3 tail bytes, one whole block, and a
     * block plus a 1-byte tail. Values from Kafka's Utils.murmur2 on a JVM. */
    static const vector_t v[] = {
        STR_VEC("1", J(-1993445489)),     STR_VEC("12", J(126087238)),
        STR_VEC("123", J(-267702483)),    STR_VEC("1234", J(-1614185708)),
        STR_VEC("12345", J(-1188365604)), STR_VEC("user:42", J(-1493546323)),
    };
    check_vectors(v, sizeof(v) / sizeof(v[0]));
}

KVS_TEST(murmur2_high_bit_bytes)
{
    /* Java reads every byte as `data[i] & 0xff`: 0x80..0xff count as
     * 128..255, in blocks and in the tail. A C version that let `char` sign-
     * extend (in the tail in particular) would fail these. Values from
     * Kafka's Utils.murmur2 on a JVM. */
    static const vector_t v[] = {
        {"\x80", 1, J(857690492)},
        {"\xff", 1, J(-311467685)},
        {"\xff\xfe", 2, J(1717632651)},
        {"\x80\x81\x82", 3, J(-1975640061)},
        {"ab\xe9", 3, J(-525142683)},
        {"\xff\xff\xff\xff", 4, J(644171429)},
        {"\xde\xad\xbe\xef\xff", 5, J(-1493115066)},
        {"\xc3\xa9\x80\xff\x7f\xfe\x90", 7, J(-612033847)},
        {"\x00", 1, J(375494588)},
        {"\x00\x00\x00\x00", 4, J(850957120)},
    };
    check_vectors(v, sizeof(v) / sizeof(v[0]));
}

KVS_TEST(murmur2_any_alignment)
{
    /* Keys arrive at whatever offset a frame puts them; the hash must not
     * depend on it (and must not do unaligned loads: UBSan watches). */
    static const char key[] = "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8";
    unsigned char buf[sizeof(key) + 8];
    for (size_t off = 0; off < 8; off++) {
        memcpy(buf + off, key, sizeof(key) - 1);
        CHECK_EQ(kvs_murmur2(buf + off, sizeof(key) - 1), J(-58897971));
    }
}

KVS_TEST(partition_masks_sign_bit_then_mods)
{
    /* Java: Utils.toPositive(h) % n. "21" hashes to 0xc5f2f8ec, whose top
     * bit is set: 0x45f2f8ec = 1173551340. Without the mask, % 100 would
     * give 88 instead of 40. */
    CHECK_EQ(kvs_place_partition("21", 2, 100), 40);
    CHECK_EQ(kvs_place_partition("21", 2, 3), 0);
    CHECK_EQ(kvs_place_partition("21", 2, 16384), 14572);
    /* "foobar" -> 0xd0e47bbe -> 1357151166 */
    CHECK_EQ(kvs_place_partition("foobar", 6, 100), 66);
    CHECK_EQ(kvs_place_partition("foobar", 6, 64), 62);
    CHECK_EQ(kvs_place_partition("foobar", 6, 16384), 15294);
    /* "abc" -> 479470107, top bit clear: the mask changes nothing. */
    CHECK_EQ(kvs_place_partition("abc", 3, 100), 7);
    CHECK_EQ(kvs_place_partition("abc", 3, 16384), 8731);
    /* The empty key is a key like any other (275646681). */
    CHECK_EQ(kvs_place_partition("", 0, 100), 81);
    CHECK_EQ(kvs_place_partition("\xff", 1, 100), 63);
}

KVS_TEST(partition_matches_formula_on_kafka_vectors)
{
    static const vector_t v[] = {
        STR_VEC("21", J(-973932308)),
        STR_VEC("foobar", J(-790332482)),
        STR_VEC("a-little-bit-long-string", J(-985981536)),
        STR_VEC("a-little-bit-longer-string", J(-1486304829)),
        STR_VEC("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", J(-58897971)),
        STR_VEC("abc", J(479470107)),
    };
    static const uint32_t counts[] = {1, 2, 3, 7, 8, 16, 64, 100, 16384, 0x7fffffffu};
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        uint32_t positive = v[i].want & 0x7fffffffu;
        for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++)
            CHECK_EQ(kvs_place_partition(v[i].key, v[i].len, counts[c]), positive % counts[c]);
    }
}

KVS_TEST(partition_single_partition_is_zero)
{
    CHECK_EQ(kvs_place_partition("21", 2, 1), 0);
    CHECK_EQ(kvs_place_partition("", 0, 1), 0);
    CHECK_EQ(kvs_place_partition("\xff\xff\xff\xff", 4, 1), 0);
}

KVS_TEST(partition_in_range)
{
    static const uint32_t counts[] = {1, 2, 3, 7, 64, 100, 16384};
    unsigned char key[8];
    for (uint32_t i = 0; i < 4096; i++) {
        for (size_t b = 0; b < sizeof(key); b++)
            key[b] = (unsigned char)(i * 37u + b * 101u);
        for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++)
            CHECK(kvs_place_partition(key, i % sizeof(key), counts[c]) < counts[c]);
    }
}

KVS_TEST(shard_is_partition_mod_shards)
{
    CHECK_EQ(kvs_place_shard(0, 4), 0);
    CHECK_EQ(kvs_place_shard(5, 4), 1);
    CHECK_EQ(kvs_place_shard(63, 4), 3);
    CHECK_EQ(kvs_place_shard(63, 64), 63);
    CHECK_EQ(kvs_place_shard(64, 64), 0);
    CHECK_EQ(kvs_place_shard(16383, 4), 3);
    CHECK_EQ(kvs_place_shard(16383, 3), 0);
    CHECK_EQ(kvs_place_shard(16384, 3), 1);
    CHECK_EQ(kvs_place_shard(12345, 1), 0);
    CHECK_EQ(kvs_place_shard(0x7ffffffeu, 7), 0x7ffffffeu % 7u);
}

KVS_TEST(shard_round_robin_is_balanced)
{
    /* 64 partitions over 4 shards: 16 each, partitions p, p+4, p+8, ... */
    unsigned count[4] = {0};
    for (uint32_t p = 0; p < 64; p++)
        count[kvs_place_shard(p, 4)]++;
    for (int s = 0; s < 4; s++)
        CHECK_EQ(count[s], 16);
}

KVS_TEST(key_shard_composes_partition_and_shard)
{
    /* "21" -> partition 14572 of 16384 -> shard 0 of 4, shard 1 of 3. */
    CHECK_EQ(kvs_place_key_shard("21", 2, 16384, 4), 0);
    CHECK_EQ(kvs_place_key_shard("21", 2, 16384, 3), 1);
    /* "foobar" -> partition 62 of 64 -> shard 2 of 4, shard 62 of 64. */
    CHECK_EQ(kvs_place_key_shard("foobar", 6, 64, 4), 2);
    CHECK_EQ(kvs_place_key_shard("foobar", 6, 64, 64), 62);

    unsigned char key[16];
    for (uint32_t i = 0; i < 2048; i++) {
        for (size_t b = 0; b < sizeof(key); b++)
            key[b] = (unsigned char)(i * 131u + b * 7u);
        size_t len = i % (sizeof(key) + 1);
        uint32_t parts = 1 + i % 97, shards = 1 + i % 13;
        CHECK_EQ(kvs_place_key_shard(key, len, parts, shards),
                 kvs_place_shard(kvs_place_partition(key, len, parts), shards));
    }
}

KVS_TEST(crc32_vectors)
{
    static const unsigned char all[256] = {
#define B4(n) n, n + 1, n + 2, n + 3
#define B16(n) B4(n), B4(n + 4), B4(n + 8), B4(n + 12)
#define B64(n) B16(n), B16(n + 16), B16(n + 32), B16(n + 48)
        B64(0), B64(64), B64(128), B64(192)};
    const vector_t v[] = {
        STR_VEC("", 0x00000000u),
        STR_VEC("a", 0xe8b7be43u),
        STR_VEC("abc", 0x352441c2u),
        STR_VEC("123456789", 0xcbf43926u),
        STR_VEC("kafka", 0x5bbc7517u),
        STR_VEC("\xff", 0xff000000u),
        {"\0", 1, 0xd202ef8du},
        STR_VEC("The quick brown fox jumps over the lazy dog", 0x414fa339u),
        {(const char *)all, sizeof(all), 0x29058c73u},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        CHECK_EQ(kvs_crc32(v[i].key, v[i].len), v[i].want);
        /* consistent: the CRC taken as unsigned, modulo the count */
        CHECK_EQ(kvs_place_partition_by(KVS_PARTITIONER_CRC32, v[i].key, v[i].len, 1000),
                 v[i].want % 1000u);
    }
    CHECK_EQ(kvs_crc32(NULL, 0), 0);
}

KVS_TEST(fnv1a_vectors)
{
    CHECK_EQ(kvs_fnv1a("", 0), 0x811c9dc5u);
    CHECK_EQ(kvs_fnv1a(NULL, 0), 0x811c9dc5u);
    CHECK_EQ(kvs_fnv1a("a", 1), 0xe40c292cu);
    CHECK_EQ(kvs_fnv1a("foobar", 6), 0xbf9cf968u);

    /* librdkafka unittest_fnv1a: |fnv1a| as Sarama computes it. With
     * UINT32_MAX partitions the partition is that value itself. */
    static const char unaligned[] = "PreAmbleWillBeRemoved,ThePrePartThatIs";
    const vector_t v[] = {
        STR_VEC("kafka", 0x0d33c4e1u),
        STR_VEC("giberish123456789", 0x77a58295u),
        STR_VEC("1234", 0x023bdd03u),
        STR_VEC("234", 0x2dea3cd2u),
        STR_VEC("34", 0x740fa83eu),
        STR_VEC("4", 0x310ca263u),
        {unaligned, sizeof(unaligned) - 1, 0x65cbd69cu},
        {unaligned + 1, sizeof(unaligned) - 2, 0x6e49c79au},
        {unaligned + 2, sizeof(unaligned) - 3, 0x69eed356u},
        {unaligned + 3, sizeof(unaligned) - 4, 0x6abcc023u},
        STR_VEC("", 0x7ee3623bu),
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        CHECK_EQ(kvs_place_partition_by(KVS_PARTITIONER_FNV1A, v[i].key, v[i].len, UINT32_MAX),
                 v[i].want);
}

KVS_TEST(fnv1a_negates_rather_than_masks)
{
    /* "foobar" hashes to 0xbf9cf968, negative as an int32: librdkafka and
     * Sarama negate it (0x40630698), Java-style masking would give
     * 0x3f9cf968. */
    CHECK_EQ(kvs_place_partition_by(KVS_PARTITIONER_FNV1A, "foobar", 6, UINT32_MAX), 0x40630698u);
    CHECK_EQ(kvs_place_partition_by(KVS_PARTITIONER_FNV1A, "foobar", 6, 1000), 0x40630698u % 1000);
    /* "hp4gi_" hashes to 0x80000000 (INT32_MIN, found by search): negation
     * wraps to itself, and the unsigned value is taken modulo the count. */
    CHECK_EQ(kvs_fnv1a("hp4gi_", 6), 0x80000000u);
    CHECK_EQ(kvs_place_partition_by(KVS_PARTITIONER_FNV1A, "hp4gi_", 6, 1000), 0x80000000u % 1000u);
    CHECK_EQ(kvs_place_partition_by(KVS_PARTITIONER_FNV1A, "hp4gi_", 6, 7), 0x80000000u % 7u);
}

KVS_TEST(partition_by_dispatches)
{
    static const uint32_t counts[] = {1, 2, 3, 7, 8, 64, 100, 16384, 100000};
    unsigned char key[24];
    for (uint32_t i = 0; i < 2048; i++) {
        for (size_t b = 0; b < sizeof(key); b++)
            key[b] = (unsigned char)(i * 59u + b * 13u);
        size_t len = i % (sizeof(key) + 1);
        for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
            uint32_t n = counts[c], h = kvs_fnv1a(key, len);
            CHECK_EQ(kvs_place_partition_by(KVS_PARTITIONER_MURMUR2, key, len, n),
                     kvs_place_partition(key, len, n));
            CHECK_EQ(kvs_place_partition_by(KVS_PARTITIONER_CRC32, key, len, n),
                     kvs_crc32(key, len) % n);
            CHECK_EQ(kvs_place_partition_by(KVS_PARTITIONER_FNV1A, key, len, n),
                     (h & 0x80000000u ? 0u - h : h) % n);
            for (int p = 0; p < KVS_PARTITIONER_HASHES; p++)
                CHECK(kvs_place_partition_by((kvs_partitioner_t)p, key, len, n) < n);
        }
    }
}

KVS_TEST(partitioner_names)
{
    kvs_partitioner_t p = KVS_PARTITIONER_NONE;
    const char *hint = "unset";
    static const char *const names[] = {"murmur2", "crc32", "fnv1a", "none"};
    for (int i = 0; i < 4; i++) {
        CHECK_STR(kvs_place_partitioner_name((kvs_partitioner_t)i), names[i]);
        CHECK_EQ(kvs_place_partitioner_parse(names[i], &p, &hint), 0);
        CHECK_EQ(p, i);
        CHECK(hint == NULL);
    }
    CHECK_EQ(kvs_place_partitioner_parse("CRC32", &p, NULL), 0);
    CHECK_EQ(p, KVS_PARTITIONER_CRC32);
    CHECK_STR(kvs_place_partitioner_name((kvs_partitioner_t)17), "?");
    /* librdkafka's names are refused, with the kvs name as a hint */
    static const char *const alias[][2] = {{"consistent_random", "crc32"},
                                           {"consistent", "crc32"},
                                           {"murmur2_random", "murmur2"},
                                           {"fnv1a_random", "fnv1a"},
                                           {"random", "none"}};
    for (size_t i = 0; i < sizeof(alias) / sizeof(alias[0]); i++) {
        p = KVS_PARTITIONER_FNV1A;
        CHECK_EQ(kvs_place_partitioner_parse(alias[i][0], &p, &hint), -1);
        CHECK_EQ(p, KVS_PARTITIONER_FNV1A);
        CHECK(hint != NULL);
        CHECK_STR(hint, alias[i][1]);
    }
    CHECK_EQ(kvs_place_partitioner_parse("", &p, &hint), -1);
    CHECK(hint == NULL);
    CHECK_EQ(kvs_place_partitioner_parse("murmur3", &p, &hint), -1);
    CHECK(hint == NULL);
}

KVS_TEST(owning_shards)
{
    CHECK_EQ(kvs_place_owning_shards(64, 4), 4);
    CHECK_EQ(kvs_place_owning_shards(4, 4), 4);
    CHECK_EQ(kvs_place_owning_shards(2, 4), 2);
    CHECK_EQ(kvs_place_owning_shards(1, 4), 1);
    CHECK_EQ(kvs_place_owning_shards(5, 1), 1);
    /* exactly the shards some partition maps to */
    for (uint32_t parts = 1; parts <= 12; parts++)
        for (uint32_t shards = 1; shards <= 12; shards++) {
            uint32_t seen = 0;
            for (uint32_t p = 0; p < parts; p++)
                if (kvs_place_shard(p, shards) + 1 > seen)
                    seen = kvs_place_shard(p, shards) + 1;
            CHECK_EQ(kvs_place_owning_shards(parts, shards), seen);
        }
}

KVS_TEST_MAIN(KVS_CASE(murmur2_kafka_vectors), KVS_CASE(murmur2_librdkafka_vectors),
              KVS_CASE(murmur2_empty_key), KVS_CASE(murmur2_lengths_1_to_5),
              KVS_CASE(murmur2_high_bit_bytes), KVS_CASE(murmur2_any_alignment),
              KVS_CASE(partition_masks_sign_bit_then_mods),
              KVS_CASE(partition_matches_formula_on_kafka_vectors),
              KVS_CASE(partition_single_partition_is_zero), KVS_CASE(partition_in_range),
              KVS_CASE(shard_is_partition_mod_shards), KVS_CASE(shard_round_robin_is_balanced),
              KVS_CASE(key_shard_composes_partition_and_shard), KVS_CASE(crc32_vectors),
              KVS_CASE(fnv1a_vectors), KVS_CASE(fnv1a_negates_rather_than_masks),
              KVS_CASE(partition_by_dispatches), KVS_CASE(partitioner_names),
              KVS_CASE(owning_shards))

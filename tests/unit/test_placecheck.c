/*
 * test_placecheck: node_placecheck counts records that came on another
 * partition than their key's, words the report (example key, partitions,
 * which partitioner would have matched, only when the records tell it),
 * judges the first batch of some size and keeps the rate limit. Records are "produced" here by
 * computing their partition with kvs_place (tested against librdkafka in test_place_rdkafka).
 */
#include "kvs_log.h"
#include "kvs_test.h"
#include "node_placecheck.h"

#define P 8

static char line[2048];

/* Feeds keys "key-<i>" for i in [from, to), each on the partition `by`
 * places it (or on i % P when `by` is none: explicit partitions). Returns
 * how many the check said were misplaced. */
static uint64_t feed(node_placecheck_t *c, kvs_partitioner_t by, int from, int to)
{
    uint64_t mis = 0;
    for (int i = from; i < to; i++) {
        char key[32];
        snprintf(key, sizeof(key), "key-%d", i);
        uint32_t p = by == KVS_PARTITIONER_NONE ? (uint32_t)i % P
                                                : kvs_place_partition_by(by, key, strlen(key), P);
        mis += (uint64_t)node_placecheck_record(c, key, strlen(key), (int32_t)p);
    }
    return mis;
}

/* How many of keys [from, to) `a` and `b` place differently. */
static uint64_t differ(kvs_partitioner_t a, kvs_partitioner_t b, int from, int to)
{
    uint64_t n = 0;
    for (int i = from; i < to; i++) {
        char key[32];
        snprintf(key, sizeof(key), "key-%d", i);
        n += kvs_place_partition_by(a, key, strlen(key), P) !=
             kvs_place_partition_by(b, key, strlen(key), P);
    }
    return n;
}

KVS_TEST(matching_partitioner_is_silent)
{
    for (int p = 0; p < KVS_PARTITIONER_HASHES; p++) {
        node_placecheck_t c;
        node_placecheck_init(&c, (kvs_partitioner_t)p, P);
        CHECK_EQ(feed(&c, (kvs_partitioner_t)p, 0, 2000), 0);
        CHECK_EQ(node_placecheck_batch_end(&c, "t", 1000, line, sizeof(line)), -1);
        CHECK_EQ(node_placecheck_tick(&c, "t", 100000, line, sizeof(line)), -1);
    }
}

KVS_TEST(none_checks_nothing)
{
    node_placecheck_t c;
    node_placecheck_init(&c, KVS_PARTITIONER_NONE, P);
    CHECK_EQ(feed(&c, KVS_PARTITIONER_CRC32, 0, 500), 0);
    CHECK_EQ(feed(&c, KVS_PARTITIONER_NONE, 0, 500), 0);
    CHECK_EQ(node_placecheck_batch_end(&c, "t", 1000, line, sizeof(line)), -1);
}

/* kcat's default (crc32) into a murmur2 binding: counted exactly, an ERROR
 * at the end of the first batch naming crc32, then rate-limited. */
KVS_TEST(wrong_partitioner_named_at_error)
{
    static const struct {
        kvs_partitioner_t binding, producer;
        const char *advice;
    } cases[] = {
        {KVS_PARTITIONER_MURMUR2, KVS_PARTITIONER_CRC32, "set partitioner: crc32 in"},
        {KVS_PARTITIONER_MURMUR2, KVS_PARTITIONER_FNV1A, "set partitioner: fnv1a in"},
        {KVS_PARTITIONER_CRC32, KVS_PARTITIONER_MURMUR2, "set partitioner: murmur2 in"},
        {KVS_PARTITIONER_FNV1A, KVS_PARTITIONER_CRC32, "set partitioner: crc32 in"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        node_placecheck_t c;
        node_placecheck_init(&c, cases[i].binding, P);
        uint64_t want = differ(cases[i].binding, cases[i].producer, 0, 1000);
        CHECK(want > 800); /* about 7 in 8 */
        CHECK_EQ(feed(&c, cases[i].producer, 0, 1000), want);
        CHECK_EQ(node_placecheck_batch_end(&c, "users", 5000, line, sizeof(line)), KVS_LOG_ERROR);
        char lead[400];
        snprintf(lead, sizeof(lead),
                 "kafka users: nearly all records of the first batch (%llu of 1000) are "
                 "misplaced, so the binding's partitioner is not the producers': %llu record(s) "
                 "came on another partition than partitioner: %s gives their key, e.g. key \"key-",
                 (unsigned long long)want, (unsigned long long)want,
                 kvs_place_partitioner_name(cases[i].binding));
        CHECK_CONTAINS(line, lead);
        CHECK_CONTAINS(line, cases[i].advice);
        CHECK_CONTAINS(line, "topic users");
        CHECK_CONTAINS(line, "Info kafka.users.<partition>.misplaced");

        /* more within 10 s: counted, not logged; then one WARN for them */
        uint64_t more = differ(cases[i].binding, cases[i].producer, 1000, 1100);
        CHECK_EQ(feed(&c, cases[i].producer, 1000, 1100), more);
        CHECK_EQ(node_placecheck_batch_end(&c, "users", 9000, line, sizeof(line)), -1);
        CHECK_EQ(node_placecheck_tick(&c, "users", 14999, line, sizeof(line)), -1);
        CHECK_EQ(node_placecheck_tick(&c, "users", 15000, line, sizeof(line)), KVS_LOG_WARN);
        char count[64];
        snprintf(count, sizeof(count), "kafka users: %llu record(s) came",
                 (unsigned long long)more);
        CHECK_CONTAINS(line, count);
        CHECK_CONTAINS(line, cases[i].advice);
        CHECK_EQ(node_placecheck_tick(&c, "users", 30000, line, sizeof(line)), -1); /* none left */
    }
}

/* The example is the first misplaced record, with both partitions. */
KVS_TEST(report_shows_the_example)
{
    node_placecheck_t c;
    node_placecheck_init(&c, KVS_PARTITIONER_MURMUR2, P);
    const char key[] = "we\"ird\\\x01\xff";
    uint32_t want = kvs_place_partition(key, sizeof(key) - 1, P);
    int32_t came = (int32_t)((want + 3) % P);
    CHECK_EQ(node_placecheck_record(&c, key, sizeof(key) - 1, came), 1);
    CHECK_EQ(node_placecheck_record(&c, "other", 5, (int32_t)((want + 1) % P)), 1);
    CHECK_EQ(node_placecheck_batch_end(&c, "t", 1, line, sizeof(line)), KVS_LOG_WARN);
    char ex[200];
    snprintf(ex, sizeof(ex),
             "2 record(s) came on another partition than partitioner: murmur2 gives their key, "
             "e.g. key \"we\\x22ird\\x5c\\x01\\xff\" came on partition %d where kvs expected %u; ",
             came, want);
    CHECK_CONTAINS(line, ex);
}

/* Explicit partitions fit no hash: the advice is partitioner: none. */
KVS_TEST(explicit_partitions_advise_none)
{
    node_placecheck_t c;
    node_placecheck_init(&c, KVS_PARTITIONER_CRC32, P);
    uint64_t mis = feed(&c, KVS_PARTITIONER_NONE, 0, 400);
    CHECK(mis > 300);
    CHECK_EQ(node_placecheck_batch_end(&c, "ev", 1, line, sizeof(line)), KVS_LOG_ERROR);
    CHECK_CONTAINS(line, "no partitioner kvs knows");
    CHECK_CONTAINS(line, "set partitioner: none in the kafka.bindings entry of topic ev");
    CHECK(strstr(line, "set partitioner: murmur2") == NULL);
    CHECK(strstr(line, "set partitioner: fnv1a") == NULL);
}

/* A few misplaced records among many: reported at once, as a WARN. */
KVS_TEST(few_misplaced_is_a_warning)
{
    node_placecheck_t c;
    node_placecheck_init(&c, KVS_PARTITIONER_MURMUR2, P);
    CHECK_EQ(feed(&c, KVS_PARTITIONER_MURMUR2, 0, 100), 0);
    CHECK_EQ(
        node_placecheck_record(&c, "x", 1, (int32_t)((kvs_place_partition("x", 1, P) + 1) % P)), 1);
    CHECK_EQ(node_placecheck_batch_end(&c, "t", 7, line, sizeof(line)), KVS_LOG_WARN);
    CHECK_CONTAINS(line, "kafka t: 1 record(s) came on another partition");
    CHECK(strstr(line, "first batch") == NULL);
    /* only the first batch is judged: a later all-misplaced batch is a WARN */
    CHECK_EQ(feed(&c, KVS_PARTITIONER_CRC32, 0, 200) > 0, 1);
    CHECK_EQ(node_placecheck_batch_end(&c, "t", 20000, line, sizeof(line)), KVS_LOG_WARN);
}

/* "Nearly all" is relative to the (P-1)/P a wrong hash misplaces. */
KVS_TEST(nearly_all_threshold)
{
    static const struct {
        uint32_t partitions;
        int misplaced, checked, error;
    } cases[] = {{2, 6, 16, 1},  {2, 5, 16, 0},  {8, 21, 32, 1},
                 {8, 20, 32, 0}, {8, 15, 15, 0}, /* too few to judge: all or not */
                 {8, 1, 1, 0},   {2, 1, 1, 0}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        node_placecheck_t c;
        node_placecheck_init(&c, KVS_PARTITIONER_MURMUR2, cases[i].partitions);
        for (int k = 0; k < cases[i].checked; k++) {
            char key[16];
            snprintf(key, sizeof(key), "k%d", k);
            uint32_t want = kvs_place_partition(key, strlen(key), cases[i].partitions);
            uint32_t p = k < cases[i].misplaced ? (want + 1) % cases[i].partitions : want;
            CHECK_EQ(node_placecheck_record(&c, key, strlen(key), (int32_t)p),
                     k < cases[i].misplaced);
        }
        CHECK_EQ(node_placecheck_batch_end(&c, "t", 1, line, sizeof(line)),
                 cases[i].error ? KVS_LOG_ERROR : KVS_LOG_WARN);
    }
}

/* A key `by` places on another partition than murmur2 does (P
 * partitions), and that partition; the search starts at key-<from>. */
static void stray_of(kvs_partitioner_t by, int from, char *key, size_t len, int32_t *came)
{
    for (int i = from;; i++) {
        snprintf(key, len, "stray-%d", i);
        uint32_t p = kvs_place_partition_by(by, key, strlen(key), P);
        if (p != kvs_place_partition(key, strlen(key), P)) {
            *came = (int32_t)p;
            return;
        }
    }
}

/* One record sent to another partition among many placed right fits some
 * other hash about one time in four (8 partitions): that hash is never
 * advised, before or after the records placed right. */
KVS_TEST(a_stray_record_advises_no_partitioner)
{
    for (int before = 0; before < 2; before++) {
        node_placecheck_t c;
        node_placecheck_init(&c, KVS_PARTITIONER_MURMUR2, P);
        char key[32];
        int32_t came;
        stray_of(KVS_PARTITIONER_CRC32, 0, key, sizeof(key), &came); /* crc32 fits it */
        if (before)
            CHECK_EQ(node_placecheck_record(&c, key, strlen(key), came), 1);
        CHECK_EQ(feed(&c, KVS_PARTITIONER_MURMUR2, 0, 500), 0);
        if (!before)
            CHECK_EQ(node_placecheck_record(&c, key, strlen(key), came), 1);
        CHECK_EQ(node_placecheck_batch_end(&c, "t", 1, line, sizeof(line)), KVS_LOG_WARN);
        CHECK_CONTAINS(line, "kafka t: 1 record(s) came on another partition");
        CHECK_CONTAINS(
            line, "the other 500 of 501 record(s) came where partitioner: murmur2 puts "
                  "them: the misplaced ones were sent to partitions of their producers' choosing");
        CHECK(strstr(line, "set partitioner: crc32") == NULL);
        CHECK(strstr(line, "first batch") == NULL);
        if (before) /* the 500 records after it refuted every other hash */
            for (int q = 0; q < KVS_PARTITIONER_HASHES; q++)
                CHECK_EQ(c.tried[q], 0);
    }
}

/* ... but a record or two placed right are too few to tell a stray: a
 * wrong partitioner places one right 1 time in P. */
KVS_TEST(few_records_placed_right_tell_no_stray)
{
    node_placecheck_t c;
    node_placecheck_init(&c, KVS_PARTITIONER_MURMUR2, P);
    char key[32];
    int32_t came;
    CHECK_EQ(feed(&c, KVS_PARTITIONER_MURMUR2, 0, 2), 0);
    stray_of(KVS_PARTITIONER_CRC32, 0, key, sizeof(key), &came);
    CHECK_EQ(node_placecheck_record(&c, key, strlen(key), came), 1);
    CHECK_EQ(node_placecheck_batch_end(&c, "t", 1, line, sizeof(line)), KVS_LOG_WARN);
    CHECK(strstr(line, "the other 2 of 3") == NULL);
    CHECK_CONTAINS(line, "are too few to tell a partitioner from chance");
}

/* A stray that comes a fetch after the report of another, in a period of
 * a few records, is judged on every record the worker took: it was "too
 * few to tell" in a topic of hundreds placed right. A large period is
 * still judged alone. */
KVS_TEST(a_later_stray_in_a_small_period_is_judged_on_all_records)
{
    node_placecheck_t c;
    node_placecheck_init(&c, KVS_PARTITIONER_MURMUR2, P);
    char key[32];
    int32_t came;
    CHECK_EQ(feed(&c, KVS_PARTITIONER_MURMUR2, 0, 500), 0);
    stray_of(KVS_PARTITIONER_CRC32, 0, key, sizeof(key), &came);
    CHECK_EQ(node_placecheck_record(&c, key, strlen(key), came), 1);
    CHECK_EQ(node_placecheck_batch_end(&c, "t", 1, line, sizeof(line)), KVS_LOG_WARN);
    CHECK_CONTAINS(line, "the other 500 of 501 record(s) came where partitioner: murmur2");
    CHECK_EQ(feed(&c, KVS_PARTITIONER_MURMUR2, 500, 502), 0);
    stray_of(KVS_PARTITIONER_CRC32, 1, key, sizeof(key), &came);
    CHECK_EQ(node_placecheck_record(&c, key, strlen(key), came), 1);
    CHECK_EQ(node_placecheck_batch_end(&c, "t", 2, line, sizeof(line)), -1); /* rate-limited */
    CHECK_EQ(node_placecheck_tick(&c, "t", 1 + NODE_PLACECHECK_EVERY_MS, line, sizeof(line)),
             KVS_LOG_WARN);
    CHECK_CONTAINS(line, "kafka t: 1 record(s) came on another partition");
    CHECK_CONTAINS(line, "the other 502 of 504 record(s) this worker has taken came where "
                         "partitioner: murmur2 puts them: the misplaced ones were sent to "
                         "partitions of their producers' choosing");
    CHECK(strstr(line, "too few") == NULL && strstr(line, "set partitioner: crc32") == NULL);
    /* A period of its own size: nearly all misplaced there is not strays,
     * whatever came before. */
    for (int i = 0; i < 40; i++) {
        stray_of(KVS_PARTITIONER_CRC32, 2 + i, key, sizeof(key), &came);
        CHECK_EQ(node_placecheck_record(&c, key, strlen(key), came), 1);
    }
    CHECK_EQ(node_placecheck_tick(&c, "t", 2 + 2 * NODE_PLACECHECK_EVERY_MS, line, sizeof(line)),
             KVS_LOG_WARN);
    CHECK(strstr(line, "came where partitioner: murmur2 puts them") == NULL);
}

/* Records placed right after a stray refute the other hashes: from then on
 * no more are computed (a stray costs a few hashes, not three per record). */
KVS_TEST(refuted_partitioners_are_not_tried_again)
{
    node_placecheck_t c;
    node_placecheck_init(&c, KVS_PARTITIONER_MURMUR2, P);
    char key[32];
    int32_t came;
    stray_of(KVS_PARTITIONER_CRC32, 0, key, sizeof(key), &came);
    CHECK_EQ(node_placecheck_record(&c, key, strlen(key), came), 1);
    CHECK_EQ(c.tried[KVS_PARTITIONER_CRC32], 1);
    CHECK_EQ(c.miss[KVS_PARTITIONER_CRC32], 0);
    CHECK_EQ(feed(&c, KVS_PARTITIONER_MURMUR2, 0, 200), 0);
    CHECK_EQ(c.seen, 201);
    for (int q = 0; q < KVS_PARTITIONER_HASHES; q++)
        CHECK_EQ(c.tried[q], 0);
    uint64_t miss = c.miss[KVS_PARTITIONER_CRC32];
    CHECK(miss < NODE_PLACECHECK_TRY_MIN + 8); /* refuted at NODE_PLACECHECK_TRY_MIN records */
    CHECK_EQ(feed(&c, KVS_PARTITIONER_MURMUR2, 200, 400), 0);
    CHECK_EQ(c.miss[KVS_PARTITIONER_CRC32], miss); /* not hashed again */
}

/* A wrong binding whose first misplaced records were strays (sent to
 * partitions that fit no hash): the producers' partitioner is still
 * named. Five strays first used to rule it out for good, and every
 * report then advised partitioner: none. */
KVS_TEST(strays_first_do_not_rule_out_the_producers_partitioner)
{
    node_placecheck_t c;
    node_placecheck_init(&c, KVS_PARTITIONER_MURMUR2, P);
    for (int i = 0; i < 8; i++) {
        char key[32];
        snprintf(key, sizeof(key), "first-%d", i);
        int32_t off = 0; /* a partition no hash puts it on */
        while (
            kvs_place_partition_by(KVS_PARTITIONER_MURMUR2, key, strlen(key), P) == (uint32_t)off ||
            kvs_place_partition_by(KVS_PARTITIONER_CRC32, key, strlen(key), P) == (uint32_t)off ||
            kvs_place_partition_by(KVS_PARTITIONER_FNV1A, key, strlen(key), P) == (uint32_t)off)
            off++;
        CHECK_EQ(node_placecheck_record(&c, key, strlen(key), off), 1);
    }
    CHECK(feed(&c, KVS_PARTITIONER_CRC32, 0, 300) > 200);
    CHECK_EQ(node_placecheck_batch_end(&c, "t", 1, line, sizeof(line)), KVS_LOG_ERROR);
    CHECK_CONTAINS(line, "set partitioner: crc32 in the kafka.bindings entry of topic t");
    CHECK_CONTAINS(line, "(the other 8 were sent to partitions of their producers' choosing)");
    CHECK_EQ(c.tried[KVS_PARTITIONER_CRC32], 1);
    CHECK_EQ(c.tried[KVS_PARTITIONER_FNV1A], 0); /* refuted once the records were enough */
}

/* A wrong partitioner seen through few records: the chance that another
 * one does as well ((1/P)^n, for both candidates, against 1/10,000)
 * decides whether the fit tells the producers' partitioner. */
KVS_TEST(few_records_are_too_few_to_name_a_partitioner)
{
    static const struct {
        int records;
        const char *want;
    } cases[] = {
        {2, "are too few to tell a partitioner from chance"},                 /* 2/8^2 */
        {4, "are too few to tell a partitioner from chance"},                 /* 2/4,096 */
        {5, "set partitioner: crc32 in the kafka.bindings entry of topic t"}, /* 2/32,768 */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        node_placecheck_t c;
        node_placecheck_init(&c, KVS_PARTITIONER_MURMUR2, P);
        char key[32];
        int32_t came;
        for (int k = 0, from = 0; k < cases[i].records; k++) {
            stray_of(KVS_PARTITIONER_CRC32, from, key, sizeof(key), &came);
            from = atoi(key + 6) + 1;
            CHECK_EQ(node_placecheck_record(&c, key, strlen(key), came), 1);
        }
        CHECK(c.tried[KVS_PARTITIONER_CRC32]);
        CHECK_EQ(node_placecheck_batch_end(&c, "t", 1, line, sizeof(line)), KVS_LOG_WARN);
        CHECK_CONTAINS(line, cases[i].want);
        if (cases[i].records < 5) {
            CHECK(strstr(line, "set partitioner: crc32") == NULL);
            CHECK_CONTAINS(line, "crc32");
        } else {
            CHECK_CONTAINS(line, "partitioner: crc32 places 5 of the 5 record(s) since the "
                                 "first misplaced one where they came: set");
        }
    }
}

/* Records a producer sent to partitions of its own choosing among a
 * wrong binding's: the partitioner that places nearly all is still named
 * (a stray used to refute it, and the advice became "none"). */
KVS_TEST(strays_among_a_wrong_bindings_records_still_name_the_partitioner)
{
    node_placecheck_t c;
    node_placecheck_init(&c, KVS_PARTITIONER_MURMUR2, P);
    char key[32];
    int32_t came;
    for (int round = 0; round < 10; round++) {
        CHECK(feed(&c, KVS_PARTITIONER_CRC32, round * 100, round * 100 + 100) > 70);
        stray_of(KVS_PARTITIONER_FNV1A, round * 50, key, sizeof(key), &came);
        int32_t off = (came + 1) % P; /* fits neither crc32 nor (maybe) another */
        while ((uint32_t)off == kvs_place_partition_by(KVS_PARTITIONER_CRC32, key, strlen(key), P))
            off = (off + 1) % P;
        node_placecheck_record(&c, key, strlen(key), off);
        int level =
            node_placecheck_batch_end(&c, "t", 1 + (uint64_t)round * 20000, line, sizeof(line));
        CHECK(level == KVS_LOG_WARN || level == KVS_LOG_ERROR);
        CHECK_CONTAINS(line, "set partitioner: crc32 in the kafka.bindings entry of topic t");
        CHECK(strstr(line, "set partitioner: none") == NULL);
    }
    CHECK_CONTAINS(line, "of their producers' choosing)");
    CHECK_EQ(c.tried[KVS_PARTITIONER_CRC32], 1);
}

/* Producers that choose partitions themselves, records trickling one or
 * two per report for a simulated day: no report ever names a partitioner
 * (a per-report test, repeated, named a wrong one several times a day). */
KVS_TEST(a_trickle_of_explicit_partitions_never_names_a_partitioner)
{
    static const uint32_t parts[] = {2, 3, 4, 8};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        node_placecheck_t c;
        node_placecheck_init(&c, KVS_PARTITIONER_MURMUR2, parts[i]);
        uint64_t x = 88172645463325252ull; /* xorshift: the producers' own choice */
        for (int r = 0; r < 8640; r++) {
            for (int k = 0; k < 1 + r % 2; k++) {
                char key[32];
                snprintf(key, sizeof(key), "e-%d-%d", r, k);
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                node_placecheck_record(&c, key, strlen(key), (int32_t)(x % parts[i]));
            }
            if (node_placecheck_batch_end(&c, "t", 1 + (uint64_t)r * 10000, line, sizeof(line)) >=
                0)
                CHECK(strstr(line, "set partitioner: murmur2") == NULL &&
                      strstr(line, "set partitioner: crc32") == NULL &&
                      strstr(line, "set partitioner: fnv1a") == NULL);
        }
        for (int q = 0; q < KVS_PARTITIONER_HASHES; q++)
            CHECK_EQ(c.tried[q], 0);
    }
}

/* A slow topic on 2 partitions, one record a report: the evidence adds up
 * across reports until the partitioner is named. */
KVS_TEST(a_slow_topics_evidence_adds_up_across_reports)
{
    node_placecheck_t c;
    node_placecheck_init(&c, KVS_PARTITIONER_MURMUR2, 2);
    int named = -1;
    for (int r = 0; r < 200 && named < 0; r++) {
        char key[32];
        snprintf(key, sizeof(key), "slow-%d", r);
        node_placecheck_record(
            &c, key, strlen(key),
            (int32_t)kvs_place_partition_by(KVS_PARTITIONER_CRC32, key, strlen(key), 2));
        if (node_placecheck_batch_end(&c, "t", 1 + (uint64_t)r * 10000, line, sizeof(line)) >= 0 &&
            strstr(line, "set partitioner: crc32 in") != NULL)
            named = r;
    }
    CHECK(named > 0 && named < 60); /* 2 * 2^-n < 1/10,000: n >= 15 records */
}

KVS_TEST(escape)
{
    char out[300];
    node_placecheck_escape("plain-key_1", 11, 64, out, sizeof(out));
    CHECK_STR(out, "plain-key_1");
    node_placecheck_escape("a\"b\\c\n\0\x7f\x80", 9, 64, out, sizeof(out));
    CHECK_STR(out, "a\\x22b\\x5cc\\x0a\\x00\\x7f\\x80");
    node_placecheck_escape("abcdefgh", 8, 4, out, sizeof(out));
    CHECK_STR(out, "abcd...");
    node_placecheck_escape("", 0, 4, out, sizeof(out));
    CHECK_STR(out, "");
    char small[8]; /* bounded: never past the buffer, always terminated */
    node_placecheck_escape("\xff\xff\xff\xff", 4, 64, small, sizeof(small));
    CHECK(strlen(small) < sizeof(small));
    CHECK_STR(small, "\\xff");
}

KVS_TEST_MAIN(KVS_CASE(matching_partitioner_is_silent), KVS_CASE(none_checks_nothing),
              KVS_CASE(wrong_partitioner_named_at_error), KVS_CASE(report_shows_the_example),
              KVS_CASE(explicit_partitions_advise_none), KVS_CASE(few_misplaced_is_a_warning),
              KVS_CASE(nearly_all_threshold), KVS_CASE(a_stray_record_advises_no_partitioner),
              KVS_CASE(few_records_placed_right_tell_no_stray),
              KVS_CASE(a_later_stray_in_a_small_period_is_judged_on_all_records),
              KVS_CASE(refuted_partitioners_are_not_tried_again),
              KVS_CASE(strays_first_do_not_rule_out_the_producers_partitioner),
              KVS_CASE(few_records_are_too_few_to_name_a_partitioner),
              KVS_CASE(strays_among_a_wrong_bindings_records_still_name_the_partitioner),
              KVS_CASE(a_trickle_of_explicit_partitions_never_names_a_partitioner),
              KVS_CASE(a_slow_topics_evidence_adds_up_across_reports), KVS_CASE(escape))

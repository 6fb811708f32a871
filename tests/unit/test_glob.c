/*
 * Unit tests for kvs_glob: grants' table patterns. A typo in a set (a
 * class there is none of, a reversed range) negated took every table; it
 * now matches none, and the config refuses it.
 */
#include "kvs_glob.h"
#include "kvs_test.h"

static int match(const char *p, const char *t)
{
    return kvs_glob_match(p, t, strlen(t));
}

KVS_TEST(sets_classes_and_ranges)
{
    CHECK(match("[![:alpha:]]*", "1x"));
    CHECK(!match("[![:alpha:]]*", "secret"));
    CHECK(match("[[:alnum:]_]*", "_x"));
    CHECK(match("[a-c]?", "bz") && !match("[a-c]?", "dz"));
    CHECK(match("[!a-c]*", "dz") && !match("[!a-c]*", "az"));
    CHECK(match("t[", "t[")); /* no "]": a character of its own */
    CHECK(match("\\[x]", "[x]"));
}

KVS_TEST(a_set_with_a_typo_matches_nothing)
{
    /* "alphanum" for "alnum": negated, the set took every character. */
    CHECK(!match("[![:alphanum:]]*", "secret"));
    CHECK(!match("[[:alphanum:]]*", "secret"));
    CHECK(!match("[!z-a]*", "secret")); /* reversed: no range at all */
    CHECK(!match("x[!z-a]", "xq"));
    CHECK(match("*", "secret"));
}

KVS_TEST(problems_are_named)
{
    CHECK(kvs_glob_problem("*") == NULL);
    CHECK(kvs_glob_problem("[![:alpha:]]*") == NULL);
    CHECK(kvs_glob_problem("t[") == NULL);
    CHECK(kvs_glob_problem("\\[:nope:]") == NULL); /* escaped: no set */
    CHECK(kvs_glob_problem("[a-a]") == NULL);
    const char *why = kvs_glob_problem("[![:alphanum:]]*");
    CHECK(why != NULL);
    CHECK_CONTAINS(why, "names a character class there is none of");
    CHECK(kvs_glob_problem("x[z-a]") != NULL);
    CHECK(kvs_glob_problem("a*[![:Alpha:]]") != NULL);
}

KVS_TEST_MAIN(KVS_CASE(sets_classes_and_ranges), KVS_CASE(a_set_with_a_typo_matches_nothing),
              KVS_CASE(problems_are_named))

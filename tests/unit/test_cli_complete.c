/*
 * test_cli_complete: kvs-cli's command-name completion and argument hints
 * (tools/cli_complete), on lines as a user types them, with the argument
 * specs kvs-cli's help prints.
 */
#include "cli_complete.h"
#include "kvs_test.h"

static const cli_word_t words[] = {
    {"ping", ""},
    {"hget", "TABLE KEY"},
    {"hset", "TABLE KEY VALUE"},
    {"hmget", "TABLE KEY [KEY ...]"},
    {"hmset", "TABLE KEY VALUE [KEY VALUE ...]"},
    {"hgetall", "TABLE"},
    {"hscan", "TABLE [CURSOR [COUNT]]"},
    {"hscanall", "TABLE [COUNT]"},
    {"help", ""},
};
#define N_WORDS (sizeof(words) / sizeof(words[0]))

static void check_hint(const char *line, const char *want)
{
    char out[128];
    memset(out, 'x', sizeof(out));
    cli_complete_hint(words, N_WORDS, line, strlen(line), out, sizeof(out));
    if (strcmp(out, want) != 0)
        fprintf(stderr, "hint of \"%s\": \"%s\", want \"%s\"\n", line, out, want);
    CHECK_STR(out, want);
}

KVS_TEST(hints_follow_the_arguments)
{
    check_hint("", "");
    check_hint("hge", "");
    check_hint("hget", "TABLE KEY");
    check_hint("hget ", "TABLE KEY");
    check_hint("HGET ", "TABLE KEY");
    check_hint("hget t", "TABLE KEY");
    check_hint("hget t ", "KEY");
    check_hint("hget t k", "KEY");
    check_hint("hget t k ", "");
    check_hint("hget t k extra ", "");
    check_hint("  hget   t\t ", "KEY");
    check_hint("hgetall", "TABLE");
    check_hint("hgetall users ", "");
    check_hint("ping ", "");
    check_hint("nosuch ", "");
    check_hint("hgetx ", "");
}

KVS_TEST(hints_of_optional_and_repeated_groups)
{
    check_hint("hmget t ", "KEY [KEY ...]");
    check_hint("hmget t k ", "[KEY ...]");
    check_hint("hmget t k k2 k3 ", "[KEY ...]");
    check_hint("hmset t ", "KEY VALUE [KEY VALUE ...]");
    check_hint("hmset t k v ", "[KEY VALUE ...]");
    check_hint("hmset t k v k2 ", "VALUE [KEY VALUE ...]");
    check_hint("hmset t k v k2 v2 ", "[KEY VALUE ...]");
    check_hint("hscan ", "TABLE [CURSOR [COUNT]]");
    check_hint("hscan t ", "[CURSOR [COUNT]]");
    check_hint("hscan t c ", "[COUNT]");
    check_hint("hscan t c 10 ", "");
    check_hint("hscan t c 10 x ", "");
    check_hint("hscanall t ", "[COUNT]");
    check_hint("hscanall t 5 ", "");
}

KVS_TEST(hints_count_quoted_tokens_and_skip_options)
{
    check_hint("hget \"my table\" ", "KEY");
    check_hint("hget 'it\\'s' ", "KEY");
    check_hint("hget \"a \\\" b\" ", "KEY");
    check_hint("hget \"open table ", "TABLE KEY"); /* still typing the table */
    check_hint("hget t 'open key", "KEY");
    check_hint("--int hset t k ", "VALUE");
    check_hint("--int --raw hset ", "TABLE KEY VALUE");
    check_hint("--int ", "");
    check_hint("--int", "");
}

KVS_TEST(hint_is_cut_to_the_buffer)
{
    char out[6];
    cli_complete_hint(words, N_WORDS, "hmset t ", 8, out, sizeof(out));
    CHECK_STR(out, "KEY V");
    char one[1] = {'x'};
    cli_complete_hint(words, N_WORDS, "hget ", 5, one, sizeof(one));
    CHECK_EQ(one[0], '\0');
}

KVS_TEST(completion_span_is_the_command_token)
{
    size_t start = 99;
    CHECK_EQ(cli_complete_span("", 0, &start), 1);
    CHECK_EQ(start, 0);
    CHECK_EQ(cli_complete_span("hg", 2, &start), 1);
    CHECK_EQ(start, 0);
    CHECK_EQ(cli_complete_span("  hg", 4, &start), 1);
    CHECK_EQ(start, 2);
    CHECK_EQ(cli_complete_span("--int hm", 8, &start), 1);
    CHECK_EQ(start, 6);
    CHECK_EQ(cli_complete_span("--int ", 6, &start), 1);
    CHECK_EQ(start, 6);
    /* The cursor inside the command, with arguments after it. */
    CHECK_EQ(cli_complete_span("hg t k", 2, &start), 1);
    CHECK_EQ(start, 0);
    /* Not the command: arguments, options, quotes. */
    CHECK_EQ(cli_complete_span("hget ", 5, &start), 0);
    CHECK_EQ(cli_complete_span("hget t", 6, &start), 0);
    CHECK_EQ(cli_complete_span("--in", 4, &start), 0);
    CHECK_EQ(cli_complete_span("\"hg", 3, &start), 0);
}

KVS_TEST(matches_and_common_prefix)
{
    size_t idx[N_WORDS];
    size_t m = cli_complete_matches(words, N_WORDS, "hm", 2, idx);
    CHECK_EQ(m, 2);
    CHECK_STR(words[idx[0]].name, "hmget");
    CHECK_STR(words[idx[1]].name, "hmset");
    CHECK_EQ(cli_complete_common(words, idx, m), 2);

    m = cli_complete_matches(words, N_WORDS, "HSC", 3, idx);
    CHECK_EQ(m, 2);
    CHECK_EQ(cli_complete_common(words, idx, m), 5); /* "hscan" */

    m = cli_complete_matches(words, N_WORDS, "hget", 4, idx);
    CHECK_EQ(m, 2); /* hget, hgetall */
    CHECK_EQ(cli_complete_common(words, idx, m), 4);

    m = cli_complete_matches(words, N_WORDS, "pi", 2, idx);
    CHECK_EQ(m, 1);
    CHECK_EQ(cli_complete_common(words, idx, m), 4);

    CHECK_EQ(cli_complete_matches(words, N_WORDS, "x", 1, idx), 0);
    CHECK_EQ(cli_complete_matches(words, N_WORDS, "", 0, idx), N_WORDS);
}

KVS_TEST_MAIN(KVS_CASE(hints_follow_the_arguments), KVS_CASE(hints_of_optional_and_repeated_groups),
              KVS_CASE(hints_count_quoted_tokens_and_skip_options),
              KVS_CASE(hint_is_cut_to_the_buffer), KVS_CASE(completion_span_is_the_command_token),
              KVS_CASE(matches_and_common_prefix))

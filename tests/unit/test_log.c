/*
 * test_log: kvs_log's level parsing, threshold and line format.
 *
 * kvs_log writes straight to file descriptor 2, so each case points fd 2 at
 * a temporary file with dup2, logs, puts stderr back, and reads what was
 * written. Lines are matched against the documented format
 *
 *   2026-11-22T02:43:41.123Z node[2] INFO  opened shard-2 (3 tables)
 *
 * with a POSIX regex, and the timestamp is checked against the clock.
 */
#include "kvs_err.h"
#include "kvs_log.h"
#include "kvs_test.h"

#include <regex.h>
#include <time.h>
#include <unistd.h>

/* ---- capturing stderr ---------------------------------------------------- */

typedef struct {
    FILE *file;
    int saved_fd;
} capture_t;

static void capture_start(capture_t *c)
{
    fflush(stderr);
    c->file = tmpfile();
    CHECK(c->file != NULL);
    c->saved_fd = dup(STDERR_FILENO);
    CHECK(c->saved_fd >= 0);
    CHECK(dup2(fileno(c->file), STDERR_FILENO) == STDERR_FILENO);
}

/* Restores stderr and returns what was written (malloc'd, NUL-terminated). */
static char *capture_end(capture_t *c, size_t *len)
{
    CHECK(dup2(c->saved_fd, STDERR_FILENO) == STDERR_FILENO);
    close(c->saved_fd);
    CHECK(fseek(c->file, 0, SEEK_END) == 0);
    long n = ftell(c->file);
    CHECK(n >= 0);
    rewind(c->file);
    char *text = malloc((size_t)n + 1);
    CHECK(text != NULL);
    CHECK_EQ(fread(text, 1, (size_t)n, c->file), n);
    text[n] = '\0';
    fclose(c->file);
    if (len != NULL)
        *len = (size_t)n;
    return text;
}

/* Checks `text` against an extended regex anchored at both ends. */
static void check_matches(const char *text, const char *pattern)
{
    regex_t re;
    CHECK_EQ(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
    int rc = regexec(&re, text, 0, NULL, 0);
    if (rc != 0)
        fprintf(stderr, "\"%s\" does not match /%s/\n", text, pattern);
    CHECK_EQ(rc, 0);
    regfree(&re);
}

#define STAMP "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z"

/* ---- level parsing --------------------------------------------------------- */

KVS_TEST(level_parse_names)
{
    static const struct {
        const char *s;
        kvs_log_level_t want;
    } ok[] = {
        {"debug", KVS_LOG_DEBUG},  {"info", KVS_LOG_INFO},    {"warn", KVS_LOG_WARN},
        {"warning", KVS_LOG_WARN}, {"error", KVS_LOG_ERROR},  {"DEBUG", KVS_LOG_DEBUG},
        {"Info", KVS_LOG_INFO},    {"WARNING", KVS_LOG_WARN}, {"wArN", KVS_LOG_WARN},
        {"ERROR", KVS_LOG_ERROR},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        kvs_log_level_t got = (kvs_log_level_t)-1;
        CHECK_EQ(kvs_log_level_parse(ok[i].s, &got), 0);
        CHECK_EQ(got, ok[i].want);
    }
}

KVS_TEST(level_parse_rejects_other_strings)
{
    static const char *const bad[] = {"",      "inf",      "infos", "info ", " info", "fatal",
                                      "trace", "warnings", "err",   "0",     "1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        kvs_log_level_t got = KVS_LOG_INFO;
        CHECK_EQ(kvs_log_level_parse(bad[i], &got), KVS_EINVAL);
    }
}

/* ---- output ------------------------------------------------------------------ */

KVS_TEST(line_format_with_shard)
{
    kvs_log_init("node", 2, KVS_LOG_INFO);
    capture_t c;
    time_t before = time(NULL);
    capture_start(&c);
    kvs_info("opened shard-%d (%d tables)", 2, 3);
    char *text = capture_end(&c, NULL);
    time_t after = time(NULL);
    check_matches(text, "^" STAMP " node\\[2\\] INFO  opened shard-2 \\(3 tables\\)\n$");

    /* The stamp is now, in UTC. */
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    CHECK(strptime(text, "%Y-%m-%dT%H:%M:%S", &tm) != NULL);
    time_t stamp = timegm(&tm);
    CHECK(stamp >= before - 1 && stamp <= after + 1);
    free(text);
}

KVS_TEST(line_format_without_shard)
{
    kvs_log_init("router", -1, KVS_LOG_DEBUG);
    capture_t c;
    capture_start(&c);
    kvs_debug("d %s", "one");
    kvs_info("i");
    kvs_warn("w %d", -5);
    kvs_error("e%%");
    char *text = capture_end(&c, NULL);
    check_matches(text, "^" STAMP " router DEBUG d one\n" STAMP " router INFO  i\n" STAMP
                        " router WARN  w -5\n" STAMP " router ERROR e%\n$");
    CHECK(strchr(text, '[') == NULL);
    free(text);
}

KVS_TEST(shard_zero_is_shown)
{
    kvs_log_init("node", 0, KVS_LOG_INFO);
    capture_t c;
    capture_start(&c);
    kvs_error("x");
    char *text = capture_end(&c, NULL);
    check_matches(text, "^" STAMP " node\\[0\\] ERROR x\n$");
    free(text);
}

KVS_TEST(role_truncated_to_15_bytes)
{
    kvs_log_init("abcdefghijklmnopqrstuvwxyz", 7, KVS_LOG_INFO);
    capture_t c;
    capture_start(&c);
    kvs_info("m");
    char *text = capture_end(&c, NULL);
    check_matches(text, "^" STAMP " abcdefghijklmno\\[7\\] INFO  m\n$");
    free(text);
}

KVS_TEST(levels_below_threshold_print_nothing)
{
    kvs_log_init("cli", -1, KVS_LOG_WARN);
    CHECK(!kvs_log_enabled(KVS_LOG_DEBUG));
    CHECK(!kvs_log_enabled(KVS_LOG_INFO));
    CHECK(kvs_log_enabled(KVS_LOG_WARN));
    CHECK(kvs_log_enabled(KVS_LOG_ERROR));
    capture_t c;
    size_t len;
    capture_start(&c);
    kvs_debug("hidden debug");
    kvs_info("hidden info");
    char *text = capture_end(&c, &len);
    CHECK_EQ(len, 0);
    free(text);

    capture_start(&c);
    kvs_info("hidden");
    kvs_warn("shown");
    text = capture_end(&c, NULL);
    check_matches(text, "^" STAMP " cli WARN  shown\n$");
    free(text);

    /* set_level moves the threshold both ways. */
    kvs_log_set_level(KVS_LOG_ERROR);
    CHECK(!kvs_log_enabled(KVS_LOG_WARN));
    kvs_log_set_level(KVS_LOG_DEBUG);
    CHECK(kvs_log_enabled(KVS_LOG_DEBUG));
    capture_start(&c);
    kvs_debug("now shown");
    text = capture_end(&c, NULL);
    check_matches(text, "^" STAMP " cli DEBUG now shown\n$");
    free(text);
}

KVS_TEST(long_message_truncated_with_newline)
{
    kvs_log_init("node", 3, KVS_LOG_INFO);
    size_t n = 10000;
    char *big = malloc(n + 1);
    CHECK(big != NULL);
    memset(big, 'x', n);
    big[n] = '\0';
    capture_t c;
    size_t len;
    capture_start(&c);
    kvs_info("%s", big);
    kvs_info("after");
    char *text = capture_end(&c, &len);

    /* Two lines: the first cut short but whole, then the next intact. */
    char *nl = strchr(text, '\n');
    CHECK(nl != NULL);
    size_t first = (size_t)(nl - text) + 1;
    CHECK(first < n);
    CHECK(first > 1000);
    *nl = '\0';
    check_matches(text, "^" STAMP " node\\[3\\] INFO  x+$");
    check_matches(nl + 1, "^" STAMP " node\\[3\\] INFO  after\n$");
    CHECK_EQ(len, first + strlen(nl + 1));
    free(text);
    free(big);
}

KVS_TEST(message_of_exactly_the_line_size)
{
    /* Messages around the internal line size (2 KiB): always exactly one
     * line, always terminated. */
    kvs_log_init("n", -1, KVS_LOG_INFO);
    char msg[2100];
    for (size_t n = 2000; n < sizeof(msg); n++) {
        memset(msg, 'y', n);
        msg[n] = '\0';
        capture_t c;
        size_t len;
        capture_start(&c);
        kvs_info("%s", msg);
        char *text = capture_end(&c, &len);
        CHECK(len > 0);
        CHECK_EQ(text[len - 1], '\n');
        CHECK(strchr(text, '\n') == text + len - 1);
        CHECK(strlen(text) == len); /* no NUL bytes written */
        free(text);
    }
}

KVS_TEST_MAIN(KVS_CASE(level_parse_names), KVS_CASE(level_parse_rejects_other_strings),
              KVS_CASE(line_format_with_shard), KVS_CASE(line_format_without_shard),
              KVS_CASE(shard_zero_is_shown), KVS_CASE(role_truncated_to_15_bytes),
              KVS_CASE(levels_below_threshold_print_nothing),
              KVS_CASE(long_message_truncated_with_newline),
              KVS_CASE(message_of_exactly_the_line_size))

/*
 * test_redis: the RESP codec (kvs_redis) without sockets.
 *
 * Parsing cases feed whole requests, byte-at-a-time requests (progress kept
 * across calls), pipelines, and every protocol error Redis itself reports,
 * with Redis's words. Reply cases compare bytes. Glob cases follow Redis's
 * stringmatchlen, plus a pattern that would be exponential for a naive
 * backtracking matcher.
 */
#include "kvs_redis.h"
#include "kvs_test.h"

#include <errno.h>
#include <float.h>
#include <math.h>

#define MAXREQ (1u << 20)

static kvs_redis_parser_t ps;

static void setup(void)
{
    kvs_redis_parser_init(&ps);
}

static void teardown(void)
{
    kvs_redis_parser_close(&ps);
}

/* Parses `s` as one request; checks it used exactly all of it. */
static void parse_whole(const char *s, size_t n)
{
    size_t used;
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)s, n, MAXREQ, &used), 1);
    CHECK_EQ(used, n);
}

static void check_arg(size_t i, const char *want, size_t n)
{
    CHECK(i < ps.argc);
    CHECK_EQ(ps.argv[i].len, n);
    CHECK(n == 0 || memcmp(ps.argv[i].p, want, n) == 0);
}

#define ARG(i, lit) check_arg((i), (lit), sizeof(lit) - 1)

static void parse_error(const char *s, size_t n, const char *msg)
{
    size_t used;
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)s, n, MAXREQ, &used), -1);
    CHECK(ps.error != NULL);
    CHECK_STR(ps.error, msg);
}

KVS_TEST(multibulk_whole)
{
    setup();
    const char r[] = "*3\r\n$4\r\nHGET\r\n$1\r\nt\r\n$3\r\na\0b\r\n";
    parse_whole(r, sizeof(r) - 1);
    CHECK_EQ(ps.argc, 3);
    ARG(0, "HGET");
    ARG(1, "t");
    ARG(2, "a\0b");
    teardown();
}

KVS_TEST(multibulk_byte_by_byte_keeps_progress)
{
    setup();
    const char r[] = "*2\r\n$4\r\nPING\r\n$11\r\nhello world\r\n";
    size_t n = sizeof(r) - 1, used = 0;
    for (size_t k = 1; k < n; k++) {
        CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)r, k, MAXREQ, &used), 0);
        CHECK_EQ(used, 0);
    }
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)r, n, MAXREQ, &used), 1);
    CHECK_EQ(used, n);
    ARG(0, "PING");
    ARG(1, "hello world");
    teardown();
}

/* The caller may move the bytes between calls (a compacted buffer). */
KVS_TEST(multibulk_survives_a_moved_buffer)
{
    setup();
    const char r[] = "*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
    char a[64], b[64];
    size_t used;
    memcpy(a, r, 15);
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)a, 15, MAXREQ, &used), 0);
    memset(a, 'x', sizeof(a));
    memcpy(b, r, sizeof(r) - 1);
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)b, sizeof(r) - 1, MAXREQ, &used), 1);
    ARG(0, "GET");
    ARG(1, "key");
    teardown();
}

KVS_TEST(pipeline_of_mixed_requests)
{
    setup();
    const char r[] = "*1\r\n$4\r\nPING\r\nPING\r\n\r\n*0\r\n*-1\r\nECHO \"a b\"\n";
    const uint8_t *p = (const uint8_t *)r;
    size_t n = sizeof(r) - 1, used;
    size_t want_argc[] = {1, 1, 0, 0, 0, 2};
    for (size_t i = 0; i < sizeof(want_argc) / sizeof(want_argc[0]); i++) {
        CHECK_EQ(kvs_redis_parse(&ps, p, n, MAXREQ, &used), 1);
        CHECK_EQ(ps.argc, want_argc[i]);
        p += used;
        n -= used;
    }
    ARG(1, "a b");
    CHECK_EQ(n, 0);
    teardown();
}

KVS_TEST(inline_quoting_like_redis)
{
    setup();
    const char r[] = "hset  t \"a\\x00\\n\\\"q\" 'it\\'s' mid\"dle word\"\r\n";
    parse_whole(r, sizeof(r) - 1);
    CHECK_EQ(ps.argc, 5);
    ARG(0, "hset");
    ARG(1, "t");
    ARG(2, "a\0\n\"q");
    ARG(3, "it's");
    ARG(4, "middle word");
    /* Blanks are isspace() between words and after a closing quote (\v,
     * \f too), but a bare word ends only at space, tab, CR, LF, NUL. */
    const char v[] = "\v\fECHO \"a\"\vb\fc\x0bd\r\n";
    parse_whole(v, sizeof(v) - 1);
    CHECK_EQ(ps.argc, 3);
    ARG(0, "ECHO");
    ARG(1, "a");
    ARG(2, "b\fc\x0bd");
    teardown();
}

KVS_TEST(inline_errors)
{
    setup();
    parse_error("set \"abc\n", 9, "Protocol error: unbalanced quotes in request");
    parse_error("set \"a\"b\n", 9, "Protocol error: unbalanced quotes in request");
    parse_error("set 'a\n", 7, "Protocol error: unbalanced quotes in request");
    size_t big = KVS_REDIS_MAX_INLINE + 10, used;
    char *s = malloc(big);
    CHECK(s != NULL);
    memset(s, 'a', big);
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)s, big, MAXREQ, &used), -1);
    CHECK_STR(ps.error, "Protocol error: too big inline request");
    /* The bound is the line's without its end: CRLF as LF (the CR was
     * counted, and a line of exactly the bound ended by CRLF refused). */
    s[KVS_REDIS_MAX_INLINE] = '\r';
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)s, KVS_REDIS_MAX_INLINE + 1, MAXREQ, &used),
             0); /* its LF may come */
    s[KVS_REDIS_MAX_INLINE + 1] = '\n';
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)s, KVS_REDIS_MAX_INLINE + 2, MAXREQ, &used), 1);
    CHECK_EQ(used, KVS_REDIS_MAX_INLINE + 2);
    s[KVS_REDIS_MAX_INLINE] = 'a';
    s[KVS_REDIS_MAX_INLINE + 1] = '\r';
    s[KVS_REDIS_MAX_INLINE + 2] = '\n';
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)s, KVS_REDIS_MAX_INLINE + 3, MAXREQ, &used), -1);
    CHECK_STR(ps.error, "Protocol error: too big inline request");
    memset(s, 'a', big);
    /* Below the inline bound, a smaller request bound (a client that has
     * not authenticated) holds for inline requests, ended or not, and for
     * a multibulk count line that never ends. */
    s[20000] = '\n';
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)s, 20001, 16384, &used), -1);
    CHECK_STR(ps.error, "Protocol error: request larger than limits.max_frame (16384 bytes)");
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)s, 20000, 16384, &used), -1);
    CHECK_STR(ps.error, "Protocol error: request larger than limits.max_frame (16384 bytes)");
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)s, 16384, 16384, &used), 0); /* may end */
    s[100] = '\n';
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)s, 20001, 16384, &used), 1);
    CHECK_EQ(used, 101);
    s[0] = '*';
    memset(s + 1, '1', 19999);
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)s, 20000, 16384, &used), -1);
    CHECK_STR(ps.error, "Protocol error: request larger than limits.max_frame (16384 bytes)");
    free(s);
    teardown();
}

KVS_TEST(multibulk_errors_with_redis_words)
{
    setup();
    parse_error("*20000000\r\n", 11, "Protocol error: invalid multibulk length");
    parse_error("*x\r\n", 4, "Protocol error: invalid multibulk length");
    parse_error("*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n", 26,
                "Protocol error: expected '$', got 'f'");
    /* a NUL would end the words (Redis waits for a CR past it instead) */
    parse_error("*1\r\n\0$4\r\nPING\r\n", 15, "Protocol error: expected '$', got '\\x00'");
    parse_error("*1\r\n$-1\r\n", 9, "Protocol error: invalid bulk length");
    parse_error("*1\r\n$01\r\n", 9, "Protocol error: invalid bulk length");
    parse_error("*1\r\n$-0\r\n", 9, "Protocol error: invalid bulk length");
    parse_error("*-0\r\n", 5, "Protocol error: invalid multibulk length");
    parse_error("*1\r\n$99999999999999999999999\r\n", 30, "Protocol error: invalid bulk length");
    teardown();
}

/* Lengths are checked against the limit before anything waits for them. */
KVS_TEST(request_larger_than_the_limit_is_refused_early)
{
    setup();
    size_t used;
    const char a[] = "*1\r\n$2000\r\n";
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)a, sizeof(a) - 1, 1000, &used), -1);
    CHECK_STR(ps.error,
              "Protocol error: invalid bulk length (larger than limits.max_frame, 1000 bytes)");
    CHECK(ps.too_large);
    kvs_redis_parser_reset(&ps);
    const char huge[] = "*1\r\n$600000000\r\n"; /* past Redis's own limit: its words */
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)huge, sizeof(huge) - 1, 1000, &used), -1);
    CHECK_STR(ps.error, "Protocol error: invalid bulk length");
    CHECK(ps.too_large); /* Redis's words, said of a malformed length too: */
    kvs_redis_parser_reset(&ps);
    const char bad[] = "*1\r\n$2x\r\n";
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)bad, sizeof(bad) - 1, 1000, &used), -1);
    CHECK_STR(ps.error, "Protocol error: invalid bulk length");
    CHECK(!ps.too_large);
    kvs_redis_parser_reset(&ps);
    const char b[] = "*2\r\n$600\r\n";
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)b, sizeof(b) - 1, 1000, &used), 0);
    char c[700] = "*2\r\n$600\r\n";
    memset(c + 10, 'x', 600);
    memcpy(c + 610, "\r\n$600\r\n", 8);
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)c, 618, 1000, &used), -1);
    CHECK_STR(ps.error, "Protocol error: request larger than limits.max_frame (1000 bytes)");
    CHECK(ps.too_large);
    teardown();
}

/* An announced count costs nothing until its bytes arrive; a large
 * request's arrays are given back before the next one. */
KVS_TEST(memory_follows_the_bytes_not_the_counts)
{
    setup();
    size_t used;
    const char head[] = "*1000000\r\n$1\r\na\r\n";
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)head, sizeof(head) - 1, MAXREQ, &used), 0);
    CHECK_EQ(ps.cap, 0); /* one argument arrived, not a million slots */
    kvs_redis_parser_reset(&ps);
    kvs_buf_t big;
    kvs_buf_init(&big);
    char hdr[32];
    int n = snprintf(hdr, sizeof(hdr), "*%d\r\n", 5000);
    CHECK_EQ(kvs_buf_append(&big, hdr, (size_t)n), 0);
    for (int i = 0; i < 5000; i++)
        CHECK_EQ(kvs_buf_append(&big, "$1\r\nx\r\n", 7), 0);
    CHECK_EQ(kvs_redis_parse(&ps, big.data, big.len, MAXREQ, &used), 1);
    CHECK_EQ(ps.argc, 5000);
    CHECK(ps.cap >= 5000);
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)"PING\r\n", 6, MAXREQ, &used), 1);
    CHECK(ps.cap <= KVS_REDIS_KEEP_ARGS);
    kvs_buf_free(&big);
    teardown();
}

/* Appends a multibulk of n arguments: `first`, then n - 1 of `each`
 * (each a whole bulk, "$1\r\nk\r\n"). */
static void multibulk(kvs_buf_t *b, int n, const char *first, const char *each)
{
    char hdr[48];
    int k = snprintf(hdr, sizeof(hdr), "*%d\r\n$%zu\r\n%s\r\n", n, strlen(first), first);
    CHECK_EQ(kvs_buf_append(b, hdr, (size_t)k), 0);
    for (int i = 1; i < n; i++)
        CHECK_EQ(kvs_buf_append(b, each, strlen(each)), 0);
}

/* kvs_redis_complete measures a whole request without building its
 * arguments (a connection asks so at every read while its requests wait):
 * a multibulk of 100,000 arguments takes no argument array, asking again
 * does not scan it again, and kvs_redis_parse then takes it from there.
 * An error and an inline request are told the same way. */
KVS_TEST(complete_builds_nothing_and_parse_goes_on)
{
    setup();
    enum { N = 100000 };
    kvs_buf_t big;
    kvs_buf_init(&big);
    multibulk(&big, N, "PING", "$0\r\n\r\n");
    size_t used;
    CHECK_EQ(kvs_redis_complete(&ps, big.data, big.len - 1, MAXREQ, &used), 0); /* LF missing */
    CHECK_EQ(kvs_redis_complete(&ps, big.data, big.len, MAXREQ, &used), 1);
    CHECK_EQ(used, big.len);
    CHECK_EQ(ps.cap, 0); /* no argument array */
    CHECK_EQ(ps.argc, 0);
    CHECK_EQ(ps.got, N);
    /* Asked again (more bytes behind it): the progress answers, nothing
     * is scanned. Spoiling the bytes already measured shows it. */
    big.data[big.len - 6] = 'X';
    CHECK_EQ(kvs_buf_append(&big, "*1\r\n", 5), 0);
    CHECK_EQ(kvs_redis_complete(&ps, big.data, big.len, MAXREQ, &used), 1);
    CHECK_EQ(used, big.len - 5);
    big.data[big.len - 11] = '$';
    CHECK_EQ(kvs_redis_parse(&ps, big.data, big.len, MAXREQ, &used), 1);
    CHECK_EQ(used, big.len - 5);
    CHECK_EQ(ps.argc, N);
    ARG(0, "PING");
    CHECK_EQ(ps.argv[N - 1].len, 0);
    kvs_buf_free(&big);

    const char in[] = "PING \"a\r\n"; /* unbalanced: found when taken */
    CHECK_EQ(kvs_redis_complete(&ps, (const uint8_t *)in, sizeof(in) - 1, MAXREQ, &used), 1);
    CHECK_EQ(used, sizeof(in) - 1);
    CHECK_EQ(ps.scratch.cap, 0);
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)in, sizeof(in) - 1, MAXREQ, &used), -1);
    const char bad[] = "*2\r\n$4\r\nPING\r\n+x\r\n";
    CHECK_EQ(kvs_redis_complete(&ps, (const uint8_t *)bad, sizeof(bad) - 1, MAXREQ, &used), -1);
    CHECK_STR(ps.error, "Protocol error: expected '$', got '+'");
    teardown();
}

/* A peek while the request kvs_redis_parse returned last still runs (a
 * connection asks about the next one from inside its handler) leaves that
 * request's argc and argv alone, even an argument array large enough
 * that the next kvs_redis_parse gives it back. */
KVS_TEST(complete_leaves_the_running_request_alone)
{
    setup();
    enum { N = 2000 };
    kvs_buf_t first;
    kvs_buf_init(&first);
    multibulk(&first, N, "HMGET", "$1\r\nk\r\n");
    size_t used;
    CHECK_EQ(kvs_redis_parse(&ps, first.data, first.len, MAXREQ, &used), 1);
    CHECK(ps.cap > KVS_REDIS_KEEP_ARGS);
    const kvs_redis_arg_t *argv = ps.argv;
    const char next[] = "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\nb\r\nPING\r\n";
    CHECK_EQ(kvs_redis_complete(&ps, (const uint8_t *)next, 12, MAXREQ, &used), 0);
    CHECK_EQ(kvs_redis_complete(&ps, (const uint8_t *)next, sizeof(next) - 1, MAXREQ, &used), 1);
    kvs_redis_parser_reset(&ps); /* (other bytes below: no progress to go on from) */
    CHECK_EQ(kvs_redis_complete(&ps, (const uint8_t *)"PING\r\n", 6, MAXREQ, &used), 1);
    CHECK_EQ(kvs_redis_complete(&ps, (const uint8_t *)"*0\r\n", 4, MAXREQ, &used), 1);
    CHECK(kvs_redis_complete(&ps, (const uint8_t *)"*1\r\n+x\r\n", 8, MAXREQ, &used) == -1);
    CHECK(ps.argv == argv);
    CHECK_EQ(ps.argc, N);
    ARG(0, "HMGET");
    ARG(N - 1, "k");
    /* Once it is done, the next request, peeked at in pieces before it is
     * taken, gives the large array back (a peek's progress kept it). */
    kvs_redis_parser_reset(&ps);
    CHECK_EQ(kvs_redis_complete(&ps, (const uint8_t *)next, 6, MAXREQ, &used), 0);
    CHECK_EQ(kvs_redis_parse(&ps, (const uint8_t *)next, sizeof(next) - 1, MAXREQ, &used), 1);
    CHECK(ps.cap <= KVS_REDIS_KEEP_ARGS);
    CHECK_EQ(ps.argc, 3);
    ARG(0, "SET");
    kvs_buf_free(&first);
    teardown();
}

/* A request that has not all arrived holds nothing but its bytes, however
 * many arguments have: the caller's input budget counts those bytes, and
 * nothing else may grow with them. Complete, it has every argument, in
 * place, whatever their lengths. */
KVS_TEST(incomplete_request_holds_no_argument_memory)
{
    setup();
    enum { N = 100000 };
    kvs_buf_t big;
    kvs_buf_init(&big);
    char hdr[32];
    int n = snprintf(hdr, sizeof(hdr), "*%d\r\n", N);
    CHECK_EQ(kvs_buf_append(&big, hdr, (size_t)n), 0);
    for (int i = 0; i < N - 1; i++) {
        if (i % 1000 == 7) {
            n = snprintf(hdr, sizeof(hdr), "$%d\r\n", 10 + i % 90);
            CHECK_EQ(kvs_buf_append(&big, hdr, (size_t)n), 0);
            for (int k = 0; k < 10 + i % 90; k++)
                CHECK_EQ(kvs_buf_append(&big, k % 2 ? "\r" : "\n", 1), 0);
            CHECK_EQ(kvs_buf_append(&big, "\r\n", 2), 0);
        } else {
            CHECK_EQ(kvs_buf_append(&big, "$0\r\n\r\n", 6), 0);
        }
    }
    size_t used, part = big.len;
    for (size_t k = 1000; k < part; k += 65536) /* arriving in reads */
        CHECK_EQ(kvs_redis_parse(&ps, big.data, k, 1u << 30, &used), 0);
    CHECK_EQ(kvs_redis_parse(&ps, big.data, part, 1u << 30, &used), 0);
    CHECK_EQ(ps.cap, 0);
    CHECK_EQ(kvs_buf_append(&big, "$3\r\nend\r\n", 9), 0);
    CHECK_EQ(kvs_redis_parse(&ps, big.data, big.len, 1u << 30, &used), 1);
    CHECK_EQ(used, big.len);
    CHECK_EQ(ps.argc, N);
    for (int i = 0; i < N - 1; i++) {
        size_t want = i % 1000 == 7 ? (size_t)(10 + i % 90) : 0;
        CHECK_EQ(ps.argv[i].len, want);
        if (want > 0)
            CHECK(ps.argv[i].p[0] == '\n' && ps.argv[i].p[want - 1] == (want % 2 ? '\n' : '\r'));
    }
    ARG(N - 1, "end");
    kvs_buf_free(&big);
    teardown();
}

KVS_TEST(arguments_as_numbers)
{
    kvs_redis_arg_t a;
    int64_t v;
    double d;
#define SETA(lit) (a.p = (const uint8_t *)(lit), a.len = sizeof(lit) - 1)
    SETA("-9223372036854775808");
    CHECK_EQ(kvs_redis_arg_int(&a, &v), 0);
    CHECK(v == INT64_MIN);
    SETA("9223372036854775807");
    CHECK_EQ(kvs_redis_arg_int(&a, &v), 0);
    CHECK(v == INT64_MAX);
    SETA("9223372036854775808");
    CHECK_EQ(kvs_redis_arg_int(&a, &v), -1);
    SETA("+1");
    CHECK_EQ(kvs_redis_arg_int(&a, &v), -1);
    SETA("01");
    CHECK_EQ(kvs_redis_arg_int(&a, &v), -1);
    SETA("-0"); /* Redis's string2ll refuses it too */
    CHECK_EQ(kvs_redis_arg_int(&a, &v), -1);
    SETA("-");
    CHECK_EQ(kvs_redis_arg_int(&a, &v), -1);
    SETA("0");
    CHECK_EQ(kvs_redis_arg_int(&a, &v), 0);
    CHECK_EQ(v, 0);
    SETA(" 1");
    CHECK_EQ(kvs_redis_arg_int(&a, &v), -1);
    SETA("1.5e3");
    CHECK_EQ(kvs_redis_arg_double(&a, &d), 0);
    CHECK(d == 1500.0);
    SETA("inf"); /* a float to Redis's parser; HINCRBYFLOAT refuses it itself */
    CHECK_EQ(kvs_redis_arg_double(&a, &d), 0);
    CHECK(isinf(d) && d > 0);
    SETA("-inf");
    CHECK_EQ(kvs_redis_arg_double(&a, &d), 0);
    CHECK(isinf(d) && d < 0);
    SETA("nan");
    CHECK_EQ(kvs_redis_arg_double(&a, &d), -1);
    SETA("1x");
    CHECK_EQ(kvs_redis_arg_double(&a, &d), -1);
    SETA("\v1"); /* isspace, as Redis's string2ld */
    CHECK_EQ(kvs_redis_arg_double(&a, &d), -1);
    SETA("0x10");
    CHECK_EQ(kvs_redis_arg_double(&a, &d), 0);
    CHECK(d == 16.0);
    SETA("1e400"); /* beyond a double: Redis's long double takes it, kvs cannot */
    CHECK_EQ(kvs_redis_arg_double(&a, &d), -1);
    SETA("1e-400"); /* underflows to 0 */
    CHECK_EQ(kvs_redis_arg_double(&a, &d), -1);
    SETA("1e-310"); /* subnormal: a number */
    CHECK_EQ(kvs_redis_arg_double(&a, &d), 0);
    CHECK(d > 0 && d < 1e-300);
    char longf[KVS_REDIS_MAX_FLOAT_TEXT + 1];
    memset(longf, '0', sizeof(longf));
    longf[0] = '1';
    longf[1] = '.';
    a.p = (const uint8_t *)longf;
    a.len = KVS_REDIS_MAX_FLOAT_TEXT - 1; /* Redis takes up to 5119 bytes */
    CHECK_EQ(kvs_redis_arg_double(&a, &d), 0);
    CHECK(d == 1.0);
    a.len = KVS_REDIS_MAX_FLOAT_TEXT;
    CHECK_EQ(kvs_redis_arg_double(&a, &d), -1);
    CHECK(kvs_redis_arg_is(&(kvs_redis_arg_t){(const uint8_t *)"hGeT", 4}, "HGET"));
    CHECK(!kvs_redis_arg_is(&(kvs_redis_arg_t){(const uint8_t *)"HGETX", 5}, "HGET"));
#undef SETA
}

static void check_buf(kvs_buf_t *b, const char *want, size_t n)
{
    if (b->len != n || memcmp(b->data, want, n) != 0)
        fprintf(stderr, "got \"%.*s\"\n", (int)b->len, (const char *)b->data);
    CHECK_EQ(b->len, n);
    CHECK(memcmp(b->data, want, n) == 0);
    b->len = 0;
}

#define BUF(b, lit) check_buf((b), (lit), sizeof(lit) - 1)

KVS_TEST(replies_resp2_and_resp3)
{
    kvs_buf_t b;
    kvs_buf_init(&b);
    kvs_redis_simple(&b, "OK");
    BUF(&b, "+OK\r\n");
    kvs_redis_error(&b, "ERR bad\r\nthing %d", 7);
    BUF(&b, "-ERR bad  thing 7\r\n");
    /* A long error is cut at a whole UTF-8 character (511 bytes at most):
     * "ERR " and 505 x, then a 3-byte character that would straddle 511. */
    char xs[506];
    memset(xs, 'x', 505);
    xs[505] = '\0';
    kvs_redis_error(&b, "ERR %s\xe2\x82\xac\xe2\x82\xac", xs);
    CHECK_EQ(b.len, 1 + 4 + 505 + 2); /* the euro signs do not fit whole: both left out */
    CHECK(b.data[b.len - 3] == 'x');
    b.len = 0;
    kvs_redis_integer(&b, -42);
    BUF(&b, ":-42\r\n");
    kvs_redis_bulk(&b, "a\0b", 3);
    BUF(&b, "$3\r\na\0b\r\n");
    kvs_redis_bulk(&b, "", 0);
    BUF(&b, "$0\r\n\r\n");
    kvs_redis_null(&b, 0);
    BUF(&b, "$-1\r\n");
    kvs_redis_null(&b, 1);
    BUF(&b, "_\r\n");
    kvs_redis_map(&b, 2, 0);
    BUF(&b, "*4\r\n");
    kvs_redis_map(&b, 2, 1);
    BUF(&b, "%2\r\n");
    kvs_redis_set(&b, 3, 0);
    BUF(&b, "*3\r\n");
    kvs_redis_set(&b, 0, 1);
    BUF(&b, "~0\r\n");
    kvs_redis_double(&b, 0.1, 1);
    BUF(&b, ",0.1\r\n");
    kvs_redis_double(&b, 2.5, 0);
    BUF(&b, "$3\r\n2.5\r\n");
    kvs_redis_bool(&b, 1, 1);
    BUF(&b, "#t\r\n");
    kvs_redis_bool(&b, 0, 0);
    BUF(&b, ":0\r\n");
    kvs_redis_verbatim(&b, "x", 1, 1);
    BUF(&b, "=5\r\ntxt:x\r\n");
    kvs_buf_free(&b);
}

/* HINCRBYFLOAT's numbers as Redis reads and writes them (string2ld,
 * ld2string's LD_STR_HUMAN), on x86-64's 80-bit long double. */
KVS_TEST(long_doubles_as_redis_reads_and_writes_them)
{
    kvs_redis_arg_t a;
    long double v;
#define SETA(s) (a.p = (const uint8_t *)(s), a.len = strlen(s))
    static char s[KVS_REDIS_LDOUBLE_MAX];
    SETA("0.1");
    CHECK_EQ(kvs_redis_arg_ldouble(&a, &v), 0);
    long double sum = v;
    SETA("0.2");
    CHECK_EQ(kvs_redis_arg_ldouble(&a, &v), 0);
    kvs_redis_format_ldouble(s, sum + v);
    CHECK_STR(s, "0.3"); /* a double sum would be 0.30000000000000004 */
    SETA("1e400");       /* beyond a double, within a long double */
    CHECK_EQ(kvs_redis_arg_ldouble(&a, &v), 0);
    CHECK_EQ(kvs_redis_format_ldouble(s, v), 401);
    CHECK(strncmp(s, "1000000000000000000", 19) == 0 && strchr(s, '.') == NULL);
    SETA("1e5000"); /* overflows */
    CHECK_EQ(kvs_redis_arg_ldouble(&a, &v), -1);
    SETA("1e-5000"); /* underflows to 0 */
    CHECK_EQ(kvs_redis_arg_ldouble(&a, &v), -1);
    SETA("nan");
    CHECK_EQ(kvs_redis_arg_ldouble(&a, &v), -1);
    SETA(" 1");
    CHECK_EQ(kvs_redis_arg_ldouble(&a, &v), -1);
    SETA("1 ");
    CHECK_EQ(kvs_redis_arg_ldouble(&a, &v), -1);
    a.p = (const uint8_t *)"1\0";
    a.len = 2; /* a NUL inside: not all of it is a number */
    CHECK_EQ(kvs_redis_arg_ldouble(&a, &v), -1);
    SETA("-inf"); /* a number: HINCRBYFLOAT refuses it itself */
    CHECK_EQ(kvs_redis_arg_ldouble(&a, &v), 0);
    CHECK(isinf(v) && v < 0);
    kvs_redis_format_ldouble(s, 1e-20L);
    CHECK_STR(s, "0"); /* 17 decimals */
    kvs_redis_format_ldouble(s, -1e-20L);
    CHECK_STR(s, "0"); /* "-0" is written "0" */
    SETA("1234.5678"); /* Redis shows this one with all its 17 decimals */
    CHECK_EQ(kvs_redis_arg_ldouble(&a, &v), 0);
    kvs_redis_format_ldouble(s, v);
    CHECK_STR(s, "1234.56779999999999997");
    kvs_redis_format_ldouble(s, (long double)1234.5678); /* the double's value */
    CHECK_STR(s, "1234.56780000000003383");
    kvs_redis_format_ldouble(s, 5200.0L);
    CHECK_STR(s, "5200");
    kvs_redis_format_ldouble(s, -2.5L);
    CHECK_STR(s, "-2.5");
    size_t n = kvs_redis_format_ldouble(s, LDBL_MAX); /* the longest there is */
    CHECK_EQ(n, strlen(s));
    CHECK_EQ(n, 4933);
#undef SETA
}

KVS_TEST(doubles_are_shortest_exact)
{
    char s[KVS_REDIS_DOUBLE_MAX];
    double vals[] = {0.1,
                     1.0 / 3,
                     1e300,
                     -2.5,
                     10.0,
                     5e-324,
                     123456789.125,
                     DBL_MAX,
                     -DBL_MAX,
                     1e-320,
                     -2.2e-308,
                     1e22,
                     0.30000000000000004};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        size_t n = kvs_redis_format_double(s, vals[i]);
        CHECK_EQ(n, strlen(s));
        CHECK(n < KVS_REDIS_DOUBLE_MAX);
        CHECK(strchr(s, 'e') == NULL); /* plain decimal, as Redis writes floats */
        CHECK(strtod(s, NULL) == vals[i]);
    }
    kvs_redis_format_double(s, 1e20);
    CHECK_STR(s, "100000000000000000000");
    kvs_redis_format_double(s, 0.00001);
    CHECK_STR(s, "0.00001");
    kvs_redis_format_double(s, -1.5e-7);
    CHECK_STR(s, "-0.00000015");
    kvs_redis_format_double(s, 1234.5);
    CHECK_STR(s, "1234.5");
    /* Subnormals have fewer digits than 15 that read back as them. */
    kvs_redis_format_double(s, 1e-320);
    CHECK(strncmp(s, "0.0000", 6) == 0 && strlen(s) == 322 && s[321] == '1');
    kvs_redis_format_double(s, -5e-324);
    CHECK(strncmp(s, "-0.0000", 7) == 0 && strlen(s) == 327 && s[326] == '5');
    kvs_redis_format_double(s, 2.5e-315);
    CHECK(strlen(s) == 318 && strcmp(s + 316, "25") == 0);
    kvs_redis_format_double(s, -0.0);
    CHECK_STR(s, "0");
    kvs_redis_format_double(s, -INFINITY);
    CHECK_STR(s, "-inf");
    kvs_redis_format_double(s, 0.1);
    CHECK_STR(s, "0.1");
    kvs_redis_format_double(s, 10.0);
    CHECK_STR(s, "10");
    kvs_redis_format_double(s, INFINITY);
    CHECK_STR(s, "inf");
}

static int glob(const char *p, const char *s)
{
    return kvs_redis_glob((const uint8_t *)p, strlen(p), (const uint8_t *)s, strlen(s), 0, NULL);
}

KVS_TEST(glob_like_redis)
{
    CHECK(glob("*", ""));
    CHECK(glob("*", "abc"));
    CHECK(glob("a*c", "abbbc"));
    CHECK(!glob("a*c", "abbbd"));
    CHECK(glob("h?llo", "hello"));
    CHECK(!glob("h?llo", "hllo"));
    CHECK(glob("h[ae]llo", "hallo"));
    CHECK(!glob("h[ae]llo", "hillo"));
    CHECK(glob("h[^e]llo", "hallo"));
    CHECK(!glob("h[^e]llo", "hello"));
    CHECK(glob("h[a-b]llo", "hbllo"));
    CHECK(glob("h[b-a]llo", "hallo")); /* reversed range, as Redis */
    CHECK(glob("[a-]", "_"));          /* "a-]" is a range to ']' in Redis... */
    CHECK(glob("[a-]", "]"));
    CHECK(!glob("[a-]", "-")); /* ...so '-' is not in it */
    CHECK(glob("[-a]", "-"));
    CHECK(glob("h\\*llo", "h*llo"));
    CHECK(!glob("h\\*llo", "hello"));
    CHECK(glob("user:*:name", "user:42:name"));
    CHECK(!glob("user:*:name", "user:42:nam"));
    CHECK(kvs_redis_glob((const uint8_t *)"A*", 2, (const uint8_t *)"abc", 3, 1, NULL));
    /* A range's bytes compare as C chars, as Redis's do: where char is
     * signed (x86-64), \xc3 is -61, so A to \xc3 is \xc3 to A. */
    int signed_char = (char)0xc3 < 0;
    CHECK_EQ(glob("[A-\xc3]", "c"), !signed_char);
    CHECK_EQ(glob("[A-\xc3]", "-"), signed_char);
    CHECK(glob("[A-\xc3]", "A"));
    CHECK(glob("[A-\xc3]", "\xc3"));
    CHECK(glob("[\x80-\xff]", "\xc3"));
    /* Folded after the bounds are put in order: nocase Z to a is z to a. */
    CHECK(!kvs_redis_glob((const uint8_t *)"[Z-a]", 5, (const uint8_t *)"s", 1, 1, NULL));
    CHECK(!kvs_redis_glob((const uint8_t *)"[a-Z]", 5, (const uint8_t *)"s", 1, 1, NULL));
    CHECK(kvs_redis_glob((const uint8_t *)"[z-A]", 5, (const uint8_t *)"s", 1, 1, NULL));
    CHECK(glob("[Z-a]", "_"));
    /* An escaped byte is folded outside a class, not in one (as Redis). */
    CHECK(kvs_redis_glob((const uint8_t *)"\\S", 2, (const uint8_t *)"s", 1, 1, NULL));
    CHECK(!kvs_redis_glob((const uint8_t *)"[\\S]", 4, (const uint8_t *)"s", 1, 1, NULL));
    CHECK(kvs_redis_glob((const uint8_t *)"[\\S]", 4, (const uint8_t *)"S", 1, 1, NULL));
    /* Exponential for naive backtracking; linear-ish here. */
    char s[201], p[64];
    memset(s, 'a', 200);
    s[200] = '\0';
    snprintf(p, sizeof(p), "a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b");
    CHECK(!glob(p, s));
}

/* A pattern's cost grows with its length times the string's: a long class
 * tried at every position of a long key would hold the event loop for
 * seconds. The budget bounds it, across calls; ordinary patterns spend a
 * few steps per byte of the string. */
KVS_TEST(glob_work_is_bounded_by_a_budget)
{
    size_t plen = 100002;
    uint8_t *pat = malloc(plen);
    CHECK(pat != NULL);
    pat[0] = '*';
    pat[1] = '[';
    memset(pat + 2, 'b', plen - 3);
    pat[plen - 1] = ']';
    uint8_t key[500];
    memset(key, 'a', sizeof(key));
    uint64_t budget = 1000000; /* 50 million steps unbounded */
    CHECK_EQ(kvs_redis_glob(pat, plen, key, sizeof(key), 0, &budget), -1);
    CHECK_EQ(budget, 0);
    key[499] = 'b';
    budget = 200000000;
    CHECK_EQ(kvs_redis_glob(pat, plen, key, sizeof(key), 0, &budget), 1);
    free(pat);
    budget = 100;
    const char *p = "user:*:name", *k = "user:42:name";
    CHECK_EQ(
        kvs_redis_glob((const uint8_t *)p, strlen(p), (const uint8_t *)k, strlen(k), 0, &budget),
        1);
    CHECK(budget >= 100 - 3 * strlen(k));
    int rc;
    size_t calls = 0;
    while ((rc = kvs_redis_glob((const uint8_t *)p, strlen(p), (const uint8_t *)k, strlen(k), 0,
                                &budget)) == 1)
        calls++;
    CHECK_EQ(rc, -1);
    CHECK(calls >= 2);
}

/* A run of stars, however long, is matched like one star, but reading
 * it is work: a pattern of four million stars tried against each field of
 * a page once cost seconds of the router's loop within a budget meant for
 * milliseconds, since the run was charged as one step (and the stars
 * ending a pattern as none). */
KVS_TEST(glob_runs_of_stars_cost_their_length)
{
    size_t plen = 4000000;
    uint8_t *pat = malloc(plen + 1);
    CHECK(pat != NULL);
    memset(pat, '*', plen);
    pat[plen] = 'z'; /* stars then a byte: the run is read for every try */
    const uint8_t key[] = "field";
    uint64_t budget = 1000000;
    CHECK_EQ(kvs_redis_glob(pat, plen + 1, key, sizeof(key) - 1, 0, &budget), -1);
    CHECK_EQ(budget, 0);
    budget = 1000000;
    CHECK_EQ(kvs_redis_glob(pat, plen, key, sizeof(key) - 1, 0, &budget), -1); /* all stars */
    budget = 1000000;
    CHECK_EQ(kvs_redis_glob(pat, plen, key, 0, 0, &budget), -1); /* the end's stars */
    budget = 3 * plen;
    CHECK_EQ(kvs_redis_glob(pat, plen, key, sizeof(key) - 1, 0, &budget), 1);
    budget = 3 * plen;
    CHECK_EQ(kvs_redis_glob(pat, plen + 1, key, sizeof(key) - 1, 0, &budget), 0);
    CHECK_EQ(kvs_redis_glob(pat, plen, key, 0, 0, NULL), 1); /* unbounded: same answers */
    free(pat);
    CHECK(glob("a***c", "abc"));
    CHECK(glob("***", ""));
    CHECK(!glob("a**d", "abc"));
}

KVS_TEST_MAIN(KVS_CASE(multibulk_whole), KVS_CASE(memory_follows_the_bytes_not_the_counts),
              KVS_CASE(incomplete_request_holds_no_argument_memory),
              KVS_CASE(complete_builds_nothing_and_parse_goes_on),
              KVS_CASE(complete_leaves_the_running_request_alone),
              KVS_CASE(multibulk_byte_by_byte_keeps_progress),
              KVS_CASE(multibulk_survives_a_moved_buffer), KVS_CASE(pipeline_of_mixed_requests),
              KVS_CASE(inline_quoting_like_redis), KVS_CASE(inline_errors),
              KVS_CASE(multibulk_errors_with_redis_words),
              KVS_CASE(request_larger_than_the_limit_is_refused_early),
              KVS_CASE(arguments_as_numbers), KVS_CASE(replies_resp2_and_resp3),
              KVS_CASE(doubles_are_shortest_exact),
              KVS_CASE(long_doubles_as_redis_reads_and_writes_them), KVS_CASE(glob_like_redis),
              KVS_CASE(glob_work_is_bounded_by_a_budget),
              KVS_CASE(glob_runs_of_stars_cost_their_length))

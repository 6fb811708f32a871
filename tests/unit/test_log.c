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
 *
 * JSON lines (log.format: json) are read back by a strict RFC 8259 parser
 * written here, independent of kvs_log's encoder: it refuses raw control
 * characters, bad escapes, unpaired surrogates, bytes that are not UTF-8,
 * duplicate keys and anything after the object, and decodes every string,
 * so each case compares the decoded fields with what was logged.
 */
#include "kvs_err.h"
#include "kvs_log.h"
#include "kvs_test.h"

#include <regex.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

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

/* ---- a strict JSON reader ---------------------------------------------------- */

#define JSON_MAX_MEMBERS 16

typedef struct {
    char key[32];
    char type; /* 's' string, 'n' number, 'o' anything else */
    char *str; /* 's': decoded UTF-8 (malloc'd), NUL-terminated; len excludes it */
    size_t len;
    double num; /* 'n' */
} jmember_t;

typedef struct {
    const unsigned char *p, *end;
    jmember_t m[JSON_MAX_MEMBERS];
    size_t n;
} jdoc_t;

static void jws(jdoc_t *d)
{
    while (d->p < d->end && (*d->p == ' ' || *d->p == '\t' || *d->p == '\n' || *d->p == '\r'))
        d->p++;
}

/* Decodes one UTF-8 sequence (strictly: shortest form, no surrogates, at
 * most U+10FFFF). Returns its length, or 0. */
static size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp)
{
    size_t len = p[0] < 0x80             ? 1
                 : (p[0] & 0xe0) == 0xc0 ? 2
                 : (p[0] & 0xf0) == 0xe0 ? 3
                 : (p[0] & 0xf8) == 0xf0 ? 4
                                         : 0;
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (len == 0 || len > n)
        return 0;
    uint32_t v = len == 1 ? p[0] : (uint32_t)(p[0] & (0x7f >> len));
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (p[i] & 0x3f);
    }
    if (v < min[len] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return len;
}

static size_t utf8_encode(uint32_t v, char *out)
{
    if (v < 0x80) {
        out[0] = (char)v;
        return 1;
    }
    if (v < 0x800) {
        out[0] = (char)(0xc0 | (v >> 6));
        out[1] = (char)(0x80 | (v & 0x3f));
        return 2;
    }
    if (v < 0x10000) {
        out[0] = (char)(0xe0 | (v >> 12));
        out[1] = (char)(0x80 | ((v >> 6) & 0x3f));
        out[2] = (char)(0x80 | (v & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (v >> 18));
    out[1] = (char)(0x80 | ((v >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((v >> 6) & 0x3f));
    out[3] = (char)(0x80 | (v & 0x3f));
    return 4;
}

static int jhex4(jdoc_t *d, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++, d->p++) {
        if (d->p >= d->end)
            return -1;
        int c = *d->p;
        int x = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (x < 0)
            return -1;
        v = v * 16 + (uint32_t)x;
    }
    *out = v;
    return 0;
}

/* One escape after the backslash; appends the decoded bytes. */
static int jescape(jdoc_t *d, char *out, size_t *w)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    if (d->p >= d->end)
        return -1;
    const char *e = memchr(from, *d->p, sizeof(from) - 1);
    if (e != NULL) {
        out[(*w)++] = to[e - from];
        d->p++;
        return 0;
    }
    if (*d->p++ != 'u')
        return -1;
    uint32_t v, lo;
    if (jhex4(d, &v) != 0 || (v >= 0xdc00 && v <= 0xdfff))
        return -1;
    if (v >= 0xd800 && v <= 0xdbff) { /* must be followed by its low half */
        if (d->end - d->p < 2 || d->p[0] != '\\' || d->p[1] != 'u')
            return -1;
        d->p += 2;
        if (jhex4(d, &lo) != 0 || lo < 0xdc00 || lo > 0xdfff)
            return -1;
        v = 0x10000 + ((v - 0xd800) << 10) + (lo - 0xdc00);
    }
    *w += utf8_encode(v, out + *w);
    return 0;
}

/* A string at d->p (the opening quote); *out is malloc'd. */
static int jstring(jdoc_t *d, char **out, size_t *len)
{
    if (d->p >= d->end || *d->p != '"')
        return -1;
    d->p++;
    char *buf = malloc((size_t)(d->end - d->p) * 2 + 1);
    CHECK(buf != NULL);
    size_t w = 0;
    while (d->p < d->end && *d->p != '"') {
        uint32_t cp;
        size_t n;
        if (*d->p < 0x20 || (n = utf8_decode(d->p, (size_t)(d->end - d->p), &cp)) == 0) {
            free(buf);
            return -1;
        }
        if (*d->p == '\\') {
            d->p++;
            if (jescape(d, buf, &w) != 0) {
                free(buf);
                return -1;
            }
            continue;
        }
        memcpy(buf + w, d->p, n);
        w += n;
        d->p += n;
    }
    if (d->p >= d->end) {
        free(buf);
        return -1;
    }
    d->p++;
    buf[w] = '\0';
    *out = buf;
    *len = w;
    return 0;
}

static int jdigits(jdoc_t *d)
{
    const unsigned char *s = d->p;
    while (d->p < d->end && *d->p >= '0' && *d->p <= '9')
        d->p++;
    return d->p > s ? 0 : -1;
}

static int jnumber(jdoc_t *d, double *out)
{
    const unsigned char *s = d->p;
    if (d->p < d->end && *d->p == '-')
        d->p++;
    if (d->p < d->end && *d->p == '0')
        d->p++;
    else if (jdigits(d) != 0)
        return -1;
    if (d->p < d->end && *d->p == '.' && (d->p++, jdigits(d) != 0))
        return -1;
    if (d->p < d->end && (*d->p == 'e' || *d->p == 'E')) {
        d->p++;
        if (d->p < d->end && (*d->p == '+' || *d->p == '-'))
            d->p++;
        if (jdigits(d) != 0)
            return -1;
    }
    char tmp[64];
    CHECK((size_t)(d->p - s) < sizeof(tmp));
    memcpy(tmp, s, (size_t)(d->p - s));
    tmp[d->p - s] = '\0';
    *out = strtod(tmp, NULL);
    return 0;
}

static int jvalue(jdoc_t *d, int depth);

static int jcontainer(jdoc_t *d, int depth, char close)
{
    d->p++;
    jws(d);
    if (d->p < d->end && *d->p == close) {
        d->p++;
        return 0;
    }
    for (;;) {
        jws(d);
        if (close == '}') {
            char *k;
            size_t kl;
            if (jstring(d, &k, &kl) != 0)
                return -1;
            free(k);
            jws(d);
            if (d->p >= d->end || *d->p++ != ':')
                return -1;
        }
        if (jvalue(d, depth + 1) != 0)
            return -1;
        jws(d);
        if (d->p < d->end && *d->p == ',') {
            d->p++;
            continue;
        }
        if (d->p < d->end && *d->p == close) {
            d->p++;
            return 0;
        }
        return -1;
    }
}

static int jliteral(jdoc_t *d, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0)
        return -1;
    d->p += n;
    return 0;
}

/* Any value, checked and skipped. */
static int jvalue(jdoc_t *d, int depth)
{
    jws(d);
    if (d->p >= d->end || depth > 32)
        return -1;
    double num;
    char *s;
    size_t n;
    switch (*d->p) {
    case '{':
        return jcontainer(d, depth, '}');
    case '[':
        return jcontainer(d, depth, ']');
    case '"':
        if (jstring(d, &s, &n) != 0)
            return -1;
        free(s);
        return 0;
    case 't':
        return jliteral(d, "true");
    case 'f':
        return jliteral(d, "false");
    case 'n':
        return jliteral(d, "null");
    default:
        return jnumber(d, &num);
    }
}

/* Parses text[0..len) as exactly one JSON object; records its members.
 * Returns 0, or -1 when it is not (strictly) valid JSON. */
static int json_parse_object(const char *text, size_t len, jdoc_t *d)
{
    memset(d, 0, sizeof(*d));
    d->p = (const unsigned char *)text;
    d->end = d->p + len;
    jws(d);
    if (d->p >= d->end || *d->p != '{')
        return -1;
    d->p++;
    jws(d);
    int first = 1;
    while (d->p < d->end && *d->p != '}') {
        if (!first && *d->p++ != ',')
            return -1;
        first = 0;
        jws(d);
        char *key;
        size_t kl;
        if (jstring(d, &key, &kl) != 0)
            return -1;
        CHECK(d->n < JSON_MAX_MEMBERS && kl < sizeof(d->m[0].key));
        for (size_t i = 0; i < d->n; i++)
            CHECK(strcmp(d->m[i].key, key) != 0); /* duplicate key */
        jmember_t *m = &d->m[d->n++];
        memcpy(m->key, key, kl + 1);
        free(key);
        jws(d);
        if (d->p >= d->end || *d->p++ != ':')
            return -1;
        jws(d);
        int rc;
        if (d->p < d->end && *d->p == '"') {
            m->type = 's';
            rc = jstring(d, &m->str, &m->len);
        } else if (d->p < d->end && (*d->p == '-' || (*d->p >= '0' && *d->p <= '9'))) {
            m->type = 'n';
            rc = jnumber(d, &m->num);
        } else {
            m->type = 'o';
            rc = jvalue(d, 1);
        }
        if (rc != 0)
            return -1;
        jws(d);
    }
    if (d->p >= d->end)
        return -1;
    d->p++;
    jws(d);
    return d->p == d->end ? 0 : -1;
}

static void json_free(jdoc_t *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->m[i].str);
}

static const jmember_t *jget(const jdoc_t *d, const char *key)
{
    for (size_t i = 0; i < d->n; i++)
        if (strcmp(d->m[i].key, key) == 0)
            return &d->m[i];
    return NULL;
}

/* Parses one captured line (with its newline) into d, which must hold the
 * four fields kvs_log writes (and "shard" when `shard` >= 0) and nothing
 * else, with the given level, role and shard. */
static void check_json_line(const char *line, size_t len, jdoc_t *d, const char *level,
                            const char *role, int shard)
{
    CHECK(len > 0 && line[len - 1] == '\n');
    CHECK(memchr(line, '\n', len) == line + len - 1);
    CHECK(len <= 4096);
    if (json_parse_object(line, len - 1, d) != 0) {
        fprintf(stderr, "not strict JSON: %.*s\n", (int)len, line);
        CHECK(0);
    }
    CHECK_EQ(d->n, shard >= 0 ? 5 : 4);
    const jmember_t *t = jget(d, "time"), *l = jget(d, "level"), *r = jget(d, "role"),
                    *m = jget(d, "message"), *s = jget(d, "shard");
    CHECK(t != NULL && t->type == 's');
    check_matches(t->str, "^" STAMP "$");
    CHECK(l != NULL && l->type == 's');
    CHECK_STR(l->str, level);
    CHECK(r != NULL && r->type == 's');
    CHECK_STR(r->str, role);
    CHECK(m != NULL && m->type == 's');
    if (shard >= 0) {
        CHECK(s != NULL && s->type == 'n');
        CHECK(s->num == shard);
    } else {
        CHECK(s == NULL);
    }
}

/* Logs the NUL-terminated `msg` as one JSON line of shard 1 of "node", checks
 * the line, and returns the decoded message (malloc'd) and its length. */
static char *json_roundtrip(const char *msg, size_t *len)
{
    kvs_log_init("node", 1, KVS_LOG_INFO);
    kvs_log_set_format(KVS_LOG_JSON);
    kvs_capture_t c;
    size_t n;
    kvs_capture_start(&c);
    kvs_info("%s", msg);
    char *text = kvs_capture_end(&c, &n);
    jdoc_t d;
    check_json_line(text, n, &d, "info", "node", 1);
    jmember_t *m = (jmember_t *)jget(&d, "message");
    char *out = m->str;
    *len = m->len;
    m->str = NULL;
    json_free(&d);
    free(text);
    kvs_log_set_format(KVS_LOG_TEXT);
    return out;
}

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
    kvs_capture_t c;
    time_t before = time(NULL);
    kvs_capture_start(&c);
    kvs_info("opened shard-%d (%d tables)", 2, 3);
    char *text = kvs_capture_end(&c, NULL);
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
    kvs_capture_t c;
    kvs_capture_start(&c);
    kvs_debug("d %s", "one");
    kvs_info("i");
    kvs_warn("w %d", -5);
    kvs_error("e%%");
    char *text = kvs_capture_end(&c, NULL);
    check_matches(text, "^" STAMP " router DEBUG d one\n" STAMP " router INFO  i\n" STAMP
                        " router WARN  w -5\n" STAMP " router ERROR e%\n$");
    CHECK(strchr(text, '[') == NULL);
    free(text);
}

KVS_TEST(shard_zero_is_shown)
{
    kvs_log_init("node", 0, KVS_LOG_INFO);
    kvs_capture_t c;
    kvs_capture_start(&c);
    kvs_error("x");
    char *text = kvs_capture_end(&c, NULL);
    check_matches(text, "^" STAMP " node\\[0\\] ERROR x\n$");
    free(text);
}

KVS_TEST(role_truncated_to_15_bytes)
{
    kvs_log_init("abcdefghijklmnopqrstuvwxyz", 7, KVS_LOG_INFO);
    kvs_capture_t c;
    kvs_capture_start(&c);
    kvs_info("m");
    char *text = kvs_capture_end(&c, NULL);
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
    kvs_capture_t c;
    size_t len;
    kvs_capture_start(&c);
    kvs_debug("hidden debug");
    kvs_info("hidden info");
    char *text = kvs_capture_end(&c, &len);
    CHECK_EQ(len, 0);
    free(text);

    kvs_capture_start(&c);
    kvs_info("hidden");
    kvs_warn("shown");
    text = kvs_capture_end(&c, NULL);
    check_matches(text, "^" STAMP " cli WARN  shown\n$");
    free(text);

    /* set_level moves the threshold both ways. */
    kvs_log_set_level(KVS_LOG_ERROR);
    CHECK(!kvs_log_enabled(KVS_LOG_WARN));
    kvs_log_set_level(KVS_LOG_DEBUG);
    CHECK(kvs_log_enabled(KVS_LOG_DEBUG));
    kvs_capture_start(&c);
    kvs_debug("now shown");
    text = kvs_capture_end(&c, NULL);
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
    kvs_capture_t c;
    size_t len;
    kvs_capture_start(&c);
    kvs_info("%s", big);
    kvs_info("after");
    char *text = kvs_capture_end(&c, &len);

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

/* A message quoting what a peer sent (an Auth user name) stays one line:
 * control characters are escaped, so nothing can forge a second line or
 * reach the terminal as an escape sequence. */
KVS_TEST(text_escapes_control_characters)
{
    kvs_log_init("router", -1, KVS_LOG_INFO);
    kvs_capture_t c;
    size_t len;
    kvs_capture_start(&c);
    kvs_warn("user \"%s\" end", "x\n2026-01-01T00:00:00.000Z router ERROR  forged\r\t\x1b[31m\x7f");
    char *text = kvs_capture_end(&c, &len);
    CHECK(strchr(text, '\n') == text + len - 1);
    check_matches(text, "^" STAMP " router WARN  user \"x\\\\n2026-01-01T00:00:00\\.000Z router "
                        "ERROR  forged\\\\r\\\\t\\\\x1b\\[31m\\\\x7f\" end\n$");
    free(text);
    /* Escapes near the end of a long line are cut whole, never in half. */
    char msg[2100];
    for (size_t n = 2020; n < 2060; n++) {
        memset(msg, '\x01', n);
        msg[n] = '\0';
        kvs_capture_start(&c);
        kvs_info("%s", msg);
        text = kvs_capture_end(&c, &len);
        CHECK(strchr(text, '\n') == text + len - 1);
        CHECK(len <= 2048);
        CHECK(strlen(text) == len);
        CHECK(memcmp(text + len - 5, "\\x01\n", 5) == 0);
        free(text);
    }
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
        kvs_capture_t c;
        size_t len;
        kvs_capture_start(&c);
        kvs_info("%s", msg);
        char *text = kvs_capture_end(&c, &len);
        CHECK(len > 0);
        CHECK_EQ(text[len - 1], '\n');
        CHECK(strchr(text, '\n') == text + len - 1);
        CHECK(strlen(text) == len); /* no NUL bytes written */
        free(text);
    }
}

/* ---- JSON lines ------------------------------------------------------------------ */

KVS_TEST(json_line_fields)
{
    kvs_log_init("node", 2, KVS_LOG_DEBUG);
    kvs_log_set_format(KVS_LOG_JSON);
    kvs_capture_t c;
    size_t len;
    time_t before = time(NULL);
    kvs_capture_start(&c);
    kvs_info("opened shard-%d (%d tables)", 2, 3);
    char *text = kvs_capture_end(&c, &len);
    time_t after = time(NULL);
    jdoc_t d;
    check_json_line(text, len, &d, "info", "node", 2);
    CHECK_STR(jget(&d, "message")->str, "opened shard-2 (3 tables)");
    /* Field order is fixed, for people reading the raw lines too. */
    CHECK(strncmp(text, "{\"time\":\"", 9) == 0);
    CHECK(strstr(text, "\"level\":\"info\",\"role\":\"node\",\"shard\":2,\"message\":") != NULL);

    /* The time is now, in UTC, RFC 3339 with milliseconds. */
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    CHECK(strptime(jget(&d, "time")->str, "%Y-%m-%dT%H:%M:%S", &tm) != NULL);
    time_t stamp = timegm(&tm);
    CHECK(stamp >= before - 1 && stamp <= after + 1);
    json_free(&d);
    free(text);
    kvs_log_set_format(KVS_LOG_TEXT);
}

KVS_TEST(json_levels_and_no_shard)
{
    kvs_log_init("router", -1, KVS_LOG_DEBUG);
    kvs_log_set_format(KVS_LOG_JSON);
    kvs_capture_t c;
    size_t len;
    kvs_capture_start(&c);
    kvs_debug("d");
    kvs_info("i");
    kvs_warn("w %d", -5);
    kvs_error("e%%");
    char *text = kvs_capture_end(&c, &len);
    static const char *const want[][2] = {
        {"debug", "d"}, {"info", "i"}, {"warn", "w -5"}, {"error", "e%"}};
    char *line = text;
    for (size_t i = 0; i < 4; i++) {
        char *nl = strchr(line, '\n');
        CHECK(nl != NULL);
        jdoc_t d;
        check_json_line(line, (size_t)(nl - line) + 1, &d, want[i][0], "router", -1);
        CHECK_STR(jget(&d, "message")->str, want[i][1]);
        json_free(&d);
        line = nl + 1;
    }
    CHECK_EQ(*line, '\0');
    free(text);

    /* Shard 0 is a shard; back to text, the text format is back. */
    kvs_log_init("node", 0, KVS_LOG_INFO);
    kvs_capture_start(&c);
    kvs_info("x");
    text = kvs_capture_end(&c, &len);
    jdoc_t d;
    check_json_line(text, len, &d, "info", "node", 0);
    json_free(&d);
    free(text);
    kvs_log_set_format(KVS_LOG_TEXT);
    kvs_capture_start(&c);
    kvs_info("x");
    text = kvs_capture_end(&c, NULL);
    check_matches(text, "^" STAMP " node\\[0\\] INFO  x\n$");
    free(text);
}

KVS_TEST(router_index_in_text_and_json)
{
    kvs_log_init("router", -1, KVS_LOG_INFO);
    kvs_log_set_index("router", 1);
    kvs_capture_t c;
    size_t len;
    kvs_capture_start(&c);
    kvs_info("accepting");
    char *text = kvs_capture_end(&c, NULL);
    check_matches(text, "^" STAMP " router\\[1\\] INFO  accepting\n$");
    free(text);
    kvs_log_set_format(KVS_LOG_JSON);
    kvs_capture_start(&c);
    kvs_info("accepting");
    text = kvs_capture_end(&c, &len);
    CHECK(strstr(text, "\"role\":\"router\",\"router\":1,\"message\":\"accepting\"}") != NULL);
    CHECK(strstr(text, "shard") == NULL);
    free(text);
    /* kvs_log_init starts over: a shard again. */
    kvs_log_init("node", 3, KVS_LOG_INFO);
    kvs_capture_start(&c);
    kvs_info("x");
    text = kvs_capture_end(&c, &len);
    jdoc_t d;
    check_json_line(text, len, &d, "info", "node", 3);
    json_free(&d);
    free(text);
    kvs_log_set_format(KVS_LOG_TEXT);
}

KVS_TEST(json_escapes_quotes_backslashes_and_controls)
{
    /* Every control character, DEL, quotes and backslashes, as a key
     * quoted in a message might hold them: decoded, the message is the
     * same bytes. */
    char msg[128];
    size_t n = 0;
    n += (size_t)snprintf(msg, sizeof(msg), "key \"a\\b\" ");
    for (int ch = 1; ch < 0x20; ch++)
        msg[n++] = (char)ch;
    msg[n++] = 0x7f;
    memcpy(msg + n, " end/", 6);
    n += 5;
    size_t len;
    char *got = json_roundtrip(msg, &len);
    CHECK_EQ(len, n);
    CHECK(memcmp(got, msg, n) == 0);
    free(got);

    /* A NUL printed with %c is a character of the message too. */
    kvs_log_init("cli", -1, KVS_LOG_INFO);
    kvs_log_set_format(KVS_LOG_JSON);
    kvs_capture_t c;
    kvs_capture_start(&c);
    kvs_info("a%cb", 0);
    char *text = kvs_capture_end(&c, &len);
    CHECK(strstr(text, "\"message\":\"a\\u0000b\"}") != NULL);
    jdoc_t d;
    check_json_line(text, len, &d, "info", "cli", -1);
    CHECK_EQ(jget(&d, "message")->len, 3);
    CHECK(memcmp(jget(&d, "message")->str, "a\0b", 3) == 0);
    json_free(&d);
    free(text);
    kvs_log_set_format(KVS_LOG_TEXT);
}

KVS_TEST(json_replaces_invalid_utf8)
{
    /* Input bytes -> the message a strict reader decodes: well-formed
     * UTF-8 passes through, each maximal invalid sequence becomes one
     * U+FFFD ("\xef\xbf\xbd"). */
#define R "\xef\xbf\xbd"
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"},
        {"\xef\xbf\xbf\xf4\x8f\xbf\xbf", "\xef\xbf\xbf\xf4\x8f\xbf\xbf"}, /* U+FFFF, U+10FFFF */
        {"\xe2\x80\xa8|\xe2\x80\xa9", "\xe2\x80\xa8|\xe2\x80\xa9"},       /* escaped, same text */
        {"a\x80z", "a" R "z"},                  /* lone continuation byte */
        {"\xc0\x80", R R},                      /* overlong NUL */
        {"\xc1\xbf", R R},                      /* overlong */
        {"\xe0\x80\x80", R R R},                /* overlong 3-byte */
        {"\xed\xa0\x80", R R R},                /* surrogate D800 */
        {"\xf4\x90\x80\x80", R R R R},          /* past U+10FFFF */
        {"\xf5\xff\xfe", R R R},                /* never-valid bytes */
        {"k=\xe2\x82", "k=" R},                 /* cut 3-byte sequence at the end */
        {"\xe2\x82z", R "z"},                   /* ...and before an ASCII byte */
        {"\xf0\x9f\x98", R},                    /* cut 4-byte sequence */
        {"\xf0\x9f\x98\xc3\xa9", R "\xc3\xa9"}, /* cut, then a valid character */
        {"\xc3\"", R "\""},                     /* cut before a quote */
    };
#undef R
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len;
        char *got = json_roundtrip(cases[i].in, &len);
        if (len != strlen(cases[i].want) || memcmp(got, cases[i].want, len) != 0)
            fprintf(stderr, "case %zu: got \"%.*s\"\n", i, (int)len, got);
        CHECK_EQ(len, strlen(cases[i].want));
        CHECK(memcmp(got, cases[i].want, len) == 0);
        free(got);
    }
}

KVS_TEST(json_long_messages_stay_one_valid_line)
{
    /* Messages that grow when escaped (control characters take 6 bytes,
     * U+FFFD 3) and plain long ones: each is one line of at most 4 KiB,
     * strictly valid, its message a prefix of what was logged. */
    static const char *const units[] = {"x", "\x01", "\xc3\xa9", "\xff", "\"", "\xe2\x82\xac"};
    for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
        size_t ul = strlen(units[u]);
        char *msg = malloc(3000 * ul + 1);
        CHECK(msg != NULL);
        for (size_t i = 0; i < 3000; i++)
            memcpy(msg + i * ul, units[u], ul);
        msg[3000 * ul] = '\0';
        size_t len;
        char *got = json_roundtrip(msg, &len);
        CHECK(len > 500);
        if (units[u][0] != '\xff') {
            CHECK(len <= 2047);
            CHECK(memcmp(got, msg, len) == 0);
        }
        free(got);
        free(msg);
    }
}

KVS_TEST(json_role_is_escaped_too)
{
    kvs_log_init("a\"b\\c", 4, KVS_LOG_INFO);
    kvs_log_set_format(KVS_LOG_JSON);
    kvs_capture_t c;
    size_t len;
    kvs_capture_start(&c);
    kvs_warn("m");
    char *text = kvs_capture_end(&c, &len);
    jdoc_t d;
    check_json_line(text, len, &d, "warn", "a\"b\\c", 4);
    json_free(&d);
    free(text);
    kvs_log_set_format(KVS_LOG_TEXT);
}

KVS_TEST(json_checker_is_strict)
{
    /* The reader above must refuse what is not JSON, or the cases prove
     * nothing. */
    static const char *const bad[] = {
        "{\"a\":\"x\ny\"}",
        "{\"a\":\"\\x41\"}",
        "{\"a\":\"\\ud800\"}",
        "{\"a\":\"\\udc00\\ud800\"}",
        "{\"a\":\"\xff\"}",
        "{\"a\":\"\xc0\x80\"}",
        "{\"a\":\"\xed\xa0\x80\"}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":\"x\"} x",
        "{\"a\":\"x\",}",
        "{\"a\" \"x\"}",
        "{\"a\":\"x\"",
        "[\"a\"]",
        "{\"a\":tru}",
        "{'a':1}",
        "{\"a\":\"\\u12\"}",
        "{\"a\":-}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        jdoc_t d;
        int rc = json_parse_object(bad[i], strlen(bad[i]), &d);
        json_free(&d);
        if (rc == 0)
            fprintf(stderr, "accepted: %s\n", bad[i]);
        CHECK(rc != 0);
    }
    jdoc_t d;
    const char *ok = " {\"a\" : \"\\ud83d\\ude00\\/\", \"b\":-1.5e3,\"c\":[true,{\"d\":null}]} ";
    CHECK_EQ(json_parse_object(ok, strlen(ok), &d), 0);
    CHECK_STR(jget(&d, "a")->str, "\xf0\x9f\x98\x80/");
    CHECK(jget(&d, "b")->num == -1500);
    CHECK_EQ(jget(&d, "c")->type, 'o');
    json_free(&d);
}

/* Counts the lines of `text` that contain `needle`. */
static int count_lines_with(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

KVS_TEST(budget_lets_a_burst_through_then_counts_and_says_how_many)
{
    kvs_log_init("router", -1, KVS_LOG_INFO);
    kvs_log_budget_t b;
    kvs_log_budget_init(&b, "lines about clients", KVS_LOG_PEER_LINES, KVS_LOG_PEER_WINDOW_MS);
    uint64_t t0 = 5000000; /* a loop's clock: any start */
    kvs_capture_t c;
    kvs_capture_start(&c);
    int printed = 0;
    for (int i = 0; i < 1000; i++) {
        if (kvs_log_budget_take(&b, t0 + (uint64_t)i)) {
            kvs_warn("closing peer %d", i);
            printed++;
        }
    }
    /* Within the window nothing more, and no summary yet. */
    kvs_log_budget_flush(&b, t0 + KVS_LOG_PEER_WINDOW_MS - 1);
    char *text = kvs_capture_end(&c, NULL);
    CHECK_EQ(printed, KVS_LOG_PEER_LINES);
    CHECK_EQ(count_lines_with(text, "closing peer"), KVS_LOG_PEER_LINES);
    CHECK(strstr(text, "not logged") == NULL);
    free(text);

    /* The window is over: the flush (a timer's) says how many were left
     * out, once, and a new window lets a burst through again. */
    kvs_capture_start(&c);
    kvs_log_budget_flush(&b, t0 + KVS_LOG_PEER_WINDOW_MS + 5);
    kvs_log_budget_flush(&b, t0 + KVS_LOG_PEER_WINDOW_MS + 6);
    CHECK(kvs_log_budget_take(&b, t0 + KVS_LOG_PEER_WINDOW_MS + 7));
    text = kvs_capture_end(&c, NULL);
    CHECK_EQ(count_lines_with(text, "WARN  980 more lines about clients were not logged in the "
                                    "last 10 s (at most 20 are per 10 s)\n"),
             1);
    CHECK_EQ(count_lines_with(text, "\n"), 1);
    free(text);
}

KVS_TEST(budget_summary_comes_with_the_next_line_without_a_flush)
{
    kvs_log_init("node", 0, KVS_LOG_INFO);
    kvs_log_budget_t b;
    kvs_log_budget_init(&b, "failed Auth attempts", 5, 1000);
    uint64_t t0 = 42;
    for (int i = 0; i < 5 + 3; i++)
        CHECK_EQ(kvs_log_budget_take(&b, t0), i < 5);
    kvs_capture_t c;
    kvs_capture_start(&c);
    /* Long after: the summary names the time since the window began. */
    CHECK(kvs_log_budget_take(&b, t0 + 65000));
    char *text = kvs_capture_end(&c, NULL);
    CHECK(strstr(text, "3 more failed Auth attempts were not logged in the last 65 s (at most 5 "
                       "are per 1 s)\n") != NULL);
    free(text);
    /* A quiet window says nothing. */
    kvs_capture_start(&c);
    kvs_log_budget_flush(&b, t0 + 65000 + 2000);
    text = kvs_capture_end(&c, NULL);
    CHECK_EQ(strlen(text), 0);
    free(text);
}

/* kvs_log_budget_end: the window ends now, over or not (a link came up):
 * its summary if lines were left out, nothing otherwise, and a new window
 * lets lines through again at once. */
KVS_TEST(budget_ended_early_says_how_many_and_starts_again)
{
    kvs_log_init("router", 0, KVS_LOG_INFO);
    kvs_log_budget_t b;
    kvs_log_budget_init(&b, "lines about the link", 3, 60000);
    uint64_t t0 = 0; /* the window begins with the budget */
    for (int i = 0; i < 3 + 12; i++)
        CHECK_EQ(kvs_log_budget_take(&b, t0 + (uint64_t)i * 1000), i < 3);
    kvs_capture_t c;
    kvs_capture_start(&c);
    kvs_log_budget_end(&b, t0 + 20000); /* 20 s into a 60 s window */
    kvs_log_budget_end(&b, t0 + 20001); /* nothing more left out: silent */
    char *text = kvs_capture_end(&c, NULL);
    CHECK_EQ(count_lines_with(text, "WARN  12 more lines about the link were not logged in the "
                                    "last 20 s (at most 3 are per 60 s)\n"),
             1);
    CHECK_EQ(count_lines_with(text, "\n"), 1);
    free(text);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(kvs_log_budget_take(&b, t0 + 20002), i < 3);
}

KVS_TEST_MAIN(KVS_CASE(budget_lets_a_burst_through_then_counts_and_says_how_many),
              KVS_CASE(budget_summary_comes_with_the_next_line_without_a_flush),
              KVS_CASE(budget_ended_early_says_how_many_and_starts_again),
              KVS_CASE(router_index_in_text_and_json), KVS_CASE(level_parse_names),
              KVS_CASE(level_parse_rejects_other_strings), KVS_CASE(line_format_with_shard),
              KVS_CASE(line_format_without_shard), KVS_CASE(shard_zero_is_shown),
              KVS_CASE(role_truncated_to_15_bytes), KVS_CASE(levels_below_threshold_print_nothing),
              KVS_CASE(long_message_truncated_with_newline),
              KVS_CASE(message_of_exactly_the_line_size), KVS_CASE(text_escapes_control_characters),
              KVS_CASE(json_line_fields), KVS_CASE(json_levels_and_no_shard),
              KVS_CASE(json_escapes_quotes_backslashes_and_controls),
              KVS_CASE(json_replaces_invalid_utf8),
              KVS_CASE(json_long_messages_stay_one_valid_line), KVS_CASE(json_role_is_escaped_too),
              KVS_CASE(json_checker_is_strict))

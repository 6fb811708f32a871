/*
 * kvs_log: one formatted line per call, written with a single write(2) so
 * lines from several processes sharing a terminal or journal never
 * interleave mid-line. Timestamps are UTC with milliseconds.
 *
 * Both formats first print the message with vsnprintf into a buffer of
 * KVS_LOG_MSG_MAX bytes (a longer message is cut there). Text lines then
 * carry it with its control characters escaped (\n, \xNN: a message may
 * quote what a peer sent, and must not become two lines or a terminal
 * escape); JSON lines carry it through json_string, which escapes
 * what JSON requires and replaces what is not UTF-8, and which stops at a
 * character boundary when the 4 KiB line would overflow, so the object is
 * always closed.
 */
#include "kvs_log.h"
#include "kvs_err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define KVS_LOG_MSG_MAX 2048  /* a text line, and a message in a JSON line */
#define KVS_LOG_JSON_MAX 4096 /* a JSON line: PIPE_BUF, so a pipe gets it whole */

static char log_role[16] = "kvs";
static int log_shard = -1;         /* the process's index in its role, -1 = none */
static char log_key[16] = "shard"; /* what the index is called in JSON lines */
static kvs_log_level_t log_level = KVS_LOG_INFO;
static kvs_log_format_t log_format = KVS_LOG_TEXT;

static const char *const level_names[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
static const char *const json_levels[] = {"debug", "info", "warn", "error"};

void kvs_log_init(const char *role, int shard, kvs_log_level_t level)
{
    snprintf(log_role, sizeof(log_role), "%s", role);
    snprintf(log_key, sizeof(log_key), "shard");
    log_shard = shard;
    log_level = level;
}

void kvs_log_set_index(const char *key, int index)
{
    snprintf(log_key, sizeof(log_key), "%s", key);
    log_shard = index;
}

void kvs_log_set_level(kvs_log_level_t level)
{
    log_level = level;
}

void kvs_log_set_format(kvs_log_format_t format)
{
    log_format = format;
}

int kvs_log_level_parse(const char *s, kvs_log_level_t *out)
{
    if (strcasecmp(s, "debug") == 0)
        *out = KVS_LOG_DEBUG;
    else if (strcasecmp(s, "info") == 0)
        *out = KVS_LOG_INFO;
    else if (strcasecmp(s, "warn") == 0 || strcasecmp(s, "warning") == 0)
        *out = KVS_LOG_WARN;
    else if (strcasecmp(s, "error") == 0)
        *out = KVS_LOG_ERROR;
    else
        return KVS_EINVAL;
    return 0;
}

int kvs_log_enabled(kvs_log_level_t level)
{
    return level >= log_level;
}

/* ---- JSON strings -------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at p[0..n) (RFC 3629: no
 * overlong forms, no surrogates, nothing past U+10FFFF), or 0 when it is
 * not one; then *bad is the length of its maximal invalid prefix (at least
 * 1), which becomes one U+FFFD. */
static size_t utf8_seq(const unsigned char *p, size_t n, size_t *bad)
{
    unsigned char c = p[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4;
    else
        len = 0;
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    size_t i = 1;
    for (; len > 0 && i < len && i < n; i++) {
        if (p[i] < (i == 1 ? lo : 0x80) || p[i] > (i == 1 ? hi : 0xbf))
            break;
    }
    if (len > 0 && i == len)
        return len;
    *bad = i;
    return 0;
}

/* The length of s[0..n) without a UTF-8 sequence cut short at its end (by
 * the message buffer's limit), so a cut message does not end in U+FFFD. */
static size_t utf8_uncut(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned char c = p[n - back];
        if ((c & 0xc0) == 0x80)
            continue; /* a continuation byte: look further back for the lead */
        size_t want = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        return want > back ? n - back : n;
    }
    return n;
}

/* The JSON form of the character at p[0..n): writes it to esc (room for
 * 6 bytes), sets *used to the input bytes it stands for and returns its
 * length. */
static size_t json_char(const unsigned char *p, size_t n, char esc[6], size_t *used)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char c = p[0];
    size_t bad = 1;
    *used = 1;
    if (c == '"' || c == '\\') {
        esc[0] = '\\';
        esc[1] = (char)c;
        return 2;
    }
    if (c < 0x20 || c == 0x7f) {
        const char *short_form = c == '\n'   ? "\\n"
                                 : c == '\t' ? "\\t"
                                 : c == '\r' ? "\\r"
                                 : c == '\b' ? "\\b"
                                 : c == '\f' ? "\\f"
                                             : NULL;
        if (short_form != NULL) {
            memcpy(esc, short_form, 2);
            return 2;
        }
        memcpy(esc, "\\u00", 4);
        esc[4] = hex[c >> 4];
        esc[5] = hex[c & 15];
        return 6;
    }
    size_t len = utf8_seq(p, n, &bad);
    if (len == 0) {
        *used = bad;
        memcpy(esc, "\xef\xbf\xbd", 3); /* U+FFFD */
        return 3;
    }
    *used = len;
    if (len == 3 && c == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9)) {
        /* U+2028, U+2029: valid JSON, but line breaks to JavaScript and to
         * some log viewers. */
        memcpy(esc, p[2] == 0xa8 ? "\\u2028" : "\\u2029", 6);
        return 6;
    }
    memcpy(esc, p, len);
    return len;
}

/* Appends s[0..n) as a JSON string (quotes included) to out[*w..cap),
 * keeping `reserve` bytes free after it. A string that does not fit is cut
 * before the first character that does not, and still closed. */
static void json_string(char *out, size_t *w, size_t cap, size_t reserve, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t room = cap - reserve - 1; /* the closing quote */
    out[(*w)++] = '"';
    for (size_t i = 0; i < n;) {
        char esc[6];
        size_t used;
        size_t len = json_char(p + i, n - i, esc, &used);
        if (*w + len > room)
            break;
        memcpy(out + *w, esc, len);
        *w += len;
        i += used;
    }
    out[(*w)++] = '"';
}

/* ---- lines --------------------------------------------------------------- */

/* "2026-11-22T02:43:41.123Z", now, into out. */
static void stamp(char out[32])
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* The text form of byte c into esc (room for 4 bytes): itself, or for a
 * control character \n, \r, \t or \xNN. Returns the length. */
static size_t text_char(unsigned char c, char esc[4])
{
    static const char hex[] = "0123456789abcdef";
    if (c >= 0x20 && c != 0x7f) {
        esc[0] = (char)c;
        return 1;
    }
    esc[0] = '\\';
    if (c == '\n' || c == '\r' || c == '\t') {
        esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
        return 2;
    }
    esc[1] = 'x';
    esc[2] = hex[c >> 4];
    esc[3] = hex[c & 15];
    return 4;
}

/* A text line: the prefix, then the message with its control characters
 * escaped (text_char), so that one event stays one line whatever a peer
 * put in it (a user name with a newline cannot forge a second line, an
 * ESC cannot drive the terminal that shows the log). Cut to cap - 1 bytes,
 * the newline included. */
static size_t text_line(char *line, size_t cap, kvs_log_level_t level, const char *when,
                        const char *msg)
{
    int k;
    if (log_shard >= 0)
        k = snprintf(line, cap, "%s %s[%d] %s ", when, log_role, log_shard, level_names[level]);
    else
        k = snprintf(line, cap, "%s %s %s ", when, log_role, level_names[level]);
    size_t n = k < 0 ? 0 : (size_t)k;
    if (n > cap - 2)
        n = cap - 2;
    for (const unsigned char *p = (const unsigned char *)msg; *p != '\0'; p++) {
        char esc[4];
        size_t len = text_char(*p, esc);
        if (n + len > cap - 2)
            break; /* truncated: keep the newline */
        memcpy(line + n, esc, len);
        n += len;
    }
    line[n++] = '\n';
    return n;
}

static size_t json_line(char *line, size_t cap, kvs_log_level_t level, const char *when,
                        const char *msg, size_t msg_len)
{
    size_t w = 0;
    int k = snprintf(line, cap, "{\"time\":\"%s\",\"level\":\"%s\",\"role\":", when,
                     json_levels[level]);
    w = (size_t)k;
    json_string(line, &w, cap, 96, log_role, strlen(log_role));
    if (log_shard >= 0) {
        k = snprintf(line + w, cap - w, ",\"%s\":%d", log_key, log_shard);
        w += (size_t)k;
    }
    memcpy(line + w, ",\"message\":", 11);
    w += 11;
    json_string(line, &w, cap, 2, msg, msg_len);
    line[w++] = '}';
    line[w++] = '\n';
    return w;
}

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

void kvs_log(kvs_log_level_t level, const char *fmt, ...)
{
    if (level < log_level)
        return;
    char msg[KVS_LOG_MSG_MAX], when[32], line[KVS_LOG_JSON_MAX];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    size_t msg_len = k < 0 ? 0 : (size_t)k;
    if (msg_len >= sizeof(msg)) /* cut: not inside a character */
        msg_len = utf8_uncut(msg, sizeof(msg) - 1);
    msg[msg_len] = '\0';
    stamp(when);
    size_t n;
    if (log_format == KVS_LOG_JSON)
        n = json_line(line, sizeof(line), level, when, msg, msg_len);
    else
        n = text_line(line, KVS_LOG_MSG_MAX, level, when, msg);
    write_all(line, n);
}

void kvs_log_budget_init(kvs_log_budget_t *b, const char *what, uint32_t max_lines,
                         uint32_t window_ms)
{
    memset(b, 0, sizeof(*b));
    b->what = what;
    b->max_lines = max_lines;
    b->window_ms = window_ms;
}

void kvs_log_budget_flush(kvs_log_budget_t *b, uint64_t now_ms)
{
    if (now_ms - b->start_ms < b->window_ms)
        return;
    kvs_log_budget_end(b, now_ms);
}

void kvs_log_budget_end(kvs_log_budget_t *b, uint64_t now_ms)
{
    if (b->dropped > 0)
        kvs_warn("%llu more %s were not logged in the last %llu s (at most %u are per %u s)",
                 (unsigned long long)b->dropped, b->what,
                 (unsigned long long)((now_ms - b->start_ms + 500) / 1000), b->max_lines,
                 b->window_ms / 1000);
    b->start_ms = now_ms;
    b->lines = 0;
    b->dropped = 0;
}

int kvs_log_budget_take(kvs_log_budget_t *b, uint64_t now_ms)
{
    kvs_log_budget_flush(b, now_ms);
    if (b->lines < b->max_lines) {
        b->lines++;
        return 1;
    }
    b->dropped++;
    return 0;
}

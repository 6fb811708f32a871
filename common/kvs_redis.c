/*
 * kvs_redis: RESP request parsing and reply writing.
 *
 * Parsing follows what Redis's own server accepts (networking.c), so a
 * client that works against Redis works here, byte for byte the same
 * errors included:
 *  - a request starting with '*' is a multibulk: "*<n>\r\n" then n times
 *    "$<len>\r\n<len bytes>\r\n"; n <= 0 is an empty request; n above
 *    KVS_REDIS_MAX_ARGS, a length that is not a number, or a bulk not
 *    starting with '$' are protocol errors;
 *  - anything else is an inline request: one line, split into words with
 *    Redis's quoting rules (sdssplitargs).
 * Multibulk progress survives across calls as an offset from the request's
 * first byte (the caller's buffer may be compacted in between) and a count:
 * each call resumes at `pos` with `got` arguments read so far. Nothing is
 * kept per argument until the request is complete (then one pass over its
 * headers fills argv), so an incomplete request costs its bytes, which the
 * caller's input budget counts, and nothing more: a million empty
 * arguments would otherwise take 16 bytes of arrays for each 6 of input.
 *
 * Every length is checked against the bytes actually present before it is
 * used, and no request may pass `max_request` bytes, so a hostile length
 * cannot make the parser read or allocate beyond what arrived.
 */
#include "kvs_redis.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void kvs_redis_parser_init(kvs_redis_parser_t *ps)
{
    memset(ps, 0, sizeof(*ps));
    kvs_buf_init(&ps->scratch);
}

void kvs_redis_parser_close(kvs_redis_parser_t *ps)
{
    free(ps->argv);
    kvs_buf_free(&ps->scratch);
    memset(ps, 0, sizeof(*ps));
}

void kvs_redis_parser_reset(kvs_redis_parser_t *ps)
{
    ps->want = 0;
    ps->pos = 0;
    ps->got = 0;
}

static int fail(kvs_redis_parser_t *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(kvs_redis_parser_t *ps, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->errbuf, sizeof(ps->errbuf), fmt, ap);
    va_end(ap);
    ps->error = ps->errbuf;
    ps->too_large = 0;
    kvs_redis_parser_reset(ps);
    return -1;
}

/* Redis's default proto-max-bulk-len: a bulk length it refuses too. */
#define REDIS_MAX_BULK (512ull << 20)

/* A request past max_request: an error that says so (ps->too_large), in
 * kvs's words, or in Redis's for a bulk length past it (`bulk`, its
 * length): Redis's own where Redis refuses it too, else naming the limit
 * that only kvs has. */
static int too_large(kvs_redis_parser_t *ps, size_t max_request, unsigned long long bulk)
{
    if (bulk > REDIS_MAX_BULK)
        fail(ps, "Protocol error: invalid bulk length");
    else if (bulk != 0)
        fail(ps, "Protocol error: invalid bulk length (larger than limits.max_frame, %zu bytes)",
             max_request);
    else
        fail(ps, "Protocol error: request larger than limits.max_frame (%zu bytes)", max_request);
    ps->too_large = 1;
    return -1;
}

/* Room for n arguments. */
static int grow(kvs_redis_parser_t *ps, size_t n)
{
    if (n <= ps->cap)
        return 0;
    size_t cap = ps->cap ? ps->cap : 16;
    while (cap < n)
        cap *= 2;
    kvs_redis_arg_t *a = realloc(ps->argv, cap * sizeof(*a));
    if (a == NULL)
        return -ENOMEM;
    ps->argv = a;
    ps->cap = cap;
    return 0;
}

/* A decimal integer filling p[0..n) exactly, Redis's string2ll rules. */
static int parse_ll(const uint8_t *p, size_t n, long long *out)
{
    if (n == 0 || n > 20)
        return -1;
    size_t i = 0;
    int neg = 0;
    if (p[0] == '-') {
        neg = 1;
        if (++i == n || p[i] == '0')
            return -1; /* "-" alone, "-0", "-01": as Redis's string2ll */
    }
    if (p[i] == '0' && n - i > 1)
        return -1; /* no leading zeros */
    unsigned long long v = 0;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        unsigned d = (unsigned)(p[i] - '0');
        if (v > (ULLONG_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (neg) {
        if (v > (unsigned long long)LLONG_MAX + 1)
            return -1;
        *out = v == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(long long)v;
    } else {
        if (v > (unsigned long long)LLONG_MAX)
            return -1;
        *out = (long long)v;
    }
    return 0;
}

/* The line starting at p[pos]: its end (the '\r'), or NULL with *more when
 * the CRLF has not arrived. */
static const uint8_t *line_end(const uint8_t *p, size_t len, size_t pos)
{
    if (pos >= len)
        return NULL;
    /* These lines are a few bytes ("$13"): a plain loop finds their CR for
     * less than a call to memchr costs, which looks further. */
    size_t i = pos, near = len - pos > 32 ? pos + 32 : len;
    while (i < near && p[i] != '\r')
        i++;
    const uint8_t *cr = i < near ? p + i : memchr(p + near, '\r', len - near);
    if (cr == NULL || cr + 1 >= p + len)
        return NULL; /* CR not here, or LF not yet */
    return cr;
}

/* ---- multibulk ---------------------------------------------------------------- */

static int parse_count(kvs_redis_parser_t *ps, const uint8_t *p, size_t len, size_t *used, int peek)
{
    const uint8_t *cr = line_end(p, len, 0);
    if (cr == NULL) {
        if (len > KVS_REDIS_MAX_INLINE)
            return fail(ps, "Protocol error: too big mbulk count string");
        return 0;
    }
    long long n;
    if (parse_ll(p + 1, (size_t)(cr - p - 1), &n) != 0 || n > KVS_REDIS_MAX_ARGS)
        return fail(ps, "Protocol error: invalid multibulk length");
    size_t at = (size_t)(cr - p) + 2;
    if (n <= 0) { /* an empty request: nothing to run */
        if (!peek)
            ps->argc = 0;
        *used = at;
        return 1;
    }
    /* Room for the arguments grows as they arrive: a count costs nothing
     * until the bytes it announces are here. */
    ps->want = (size_t)n;
    ps->got = 0;
    ps->pos = at;
    return 2; /* go on with the bulks */
}

/* A complete multibulk at p: argv[0..argc) from its headers, which
 * parse_bulks has checked. */
static void fill_args(kvs_redis_parser_t *ps, const uint8_t *p)
{
    const uint8_t *at = line_end(p, ps->pos, 0) + 2;
    for (size_t i = 0; i < ps->argc; i++) {
        size_t n = 0; /* "$<digits>\r\n": checked, 0 <= n <= max_request */
        for (at++; *at != '\r'; at++)
            n = n * 10 + (size_t)(*at - '0');
        ps->argv[i].p = at + 2;
        ps->argv[i].len = n;
        at += 2 + n + 2;
    }
}

/* `peek` (kvs_redis_complete): a complete request is only measured, and
 * stays where parsing resumes, its arguments not built. */
static int parse_bulks(kvs_redis_parser_t *ps, const uint8_t *p, size_t len, size_t max_request,
                       size_t *used, int peek)
{
    while (ps->got < ps->want) {
        size_t pos = ps->pos;
        const uint8_t *cr = line_end(p, len, pos);
        if (cr == NULL) {
            if (len - pos > KVS_REDIS_MAX_INLINE)
                return fail(ps, "Protocol error: too big bulk count string");
            return 0;
        }
        if (p[pos] == '\0') /* Redis's words would end at it: the byte is shown */
            return fail(ps, "Protocol error: expected '$', got '\\x00'");
        if (p[pos] != '$')
            return fail(ps, "Protocol error: expected '$', got '%c'", p[pos]);
        long long n;
        if (parse_ll(p + pos + 1, (size_t)(cr - p) - pos - 1, &n) != 0 || n < 0)
            return fail(ps, "Protocol error: invalid bulk length");
        if ((unsigned long long)n > max_request)
            return too_large(ps, max_request, (unsigned long long)n);
        size_t start = (size_t)(cr - p) + 2;
        if (start + (size_t)n + 2 > max_request)
            return too_large(ps, max_request, 0);
        if (len < start + (size_t)n + 2)
            return 0; /* the bulk has not all arrived */
        ps->got++;
        ps->pos = start + (size_t)n + 2; /* the CRLF after the data is skipped, as Redis does */
    }
    if (peek) {
        *used = ps->pos;
        return 1;
    }
    if (grow(ps, ps->got) != 0)
        return -ENOMEM;
    ps->argc = ps->got;
    fill_args(ps, p);
    *used = ps->pos;
    kvs_redis_parser_reset(ps);
    return 1;
}

/* ---- inline ----------------------------------------------------------------------- */

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Where a word of an inline request ends, as sdssplitargs ends one. */
static int is_space(uint8_t c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\0';
}

/* Blanks between words and after a closing quote: isspace() as
 * sdssplitargs uses there (so \v and \f too), and NUL, which Redis's C
 * strings could not hold (it ends the words there; kvs reads on). */
static int is_blank(uint8_t c)
{
    return is_space(c) || c == '\v' || c == '\f';
}

/* One word of an inline request starting at s[*i], unescaped into `out`,
 * with sdssplitargs's rules: quotes may open anywhere in a word, a closing
 * quote must be followed by a space or the end. Returns 0 or -1 for
 * unbalanced quotes. */
static int inline_word(const uint8_t *s, size_t n, size_t *i, kvs_buf_t *out)
{
    uint8_t q = 0; /* the open quote, or 0 */
    size_t k = *i;
    for (;;) {
        if (k >= n) {
            if (q != 0)
                return -1;
            break;
        }
        uint8_t c = s[k], b;
        if (q == '"' && c == '\\' && k + 3 < n && s[k + 1] == 'x' && hexval(s[k + 2]) >= 0 &&
            hexval(s[k + 3]) >= 0) {
            b = (uint8_t)(hexval(s[k + 2]) * 16 + hexval(s[k + 3]));
            k += 4;
        } else if (q == '"' && c == '\\' && k + 1 < n) {
            uint8_t e = s[k + 1];
            b = e == 'n'   ? '\n'
                : e == 'r' ? '\r'
                : e == 't' ? '\t'
                : e == 'b' ? '\b'
                : e == 'a' ? '\a'
                           : e;
            k += 2;
        } else if (q == '\'' && c == '\\' && k + 1 < n && s[k + 1] == '\'') {
            b = '\'';
            k += 2;
        } else if (q != 0 && c == q) {
            if (k + 1 < n && !is_blank(s[k + 1]))
                return -1; /* closing quote must be followed by a space */
            k++;
            break;
        } else if (q == 0 && is_space(c)) {
            break;
        } else if (q == 0 && (c == '"' || c == '\'')) {
            q = c;
            k++;
            continue;
        } else {
            b = c;
            k++;
        }
        kvs_buf_put(out, &b, 1); /* split_inline reserved n + 1 bytes */
    }
    *i = k;
    return 0;
}

/* Splits s[0..n) like sdssplitargs into ps->scratch / argv. */
static int split_inline(kvs_redis_parser_t *ps, const uint8_t *s, size_t n)
{
    kvs_buf_t *sc = &ps->scratch;
    sc->len = 0;
    if (kvs_buf_reserve(sc, n + 1) != 0)
        return -ENOMEM;
    size_t argc = 0, i = 0;
    for (;;) {
        while (i < n && is_blank(s[i]))
            i++;
        if (i >= n)
            break;
        if (grow(ps, argc + 1) != 0)
            return -ENOMEM;
        size_t start = sc->len;
        if (inline_word(s, n, &i, sc) != 0)
            return fail(ps, "Protocol error: unbalanced quotes in request");
        /* scratch never grows past the n + 1 bytes reserved: pointers are stable. */
        ps->argv[argc].p = sc->data + start;
        ps->argv[argc].len = sc->len - start;
        argc++;
    }
    ps->argc = argc;
    return 1;
}

/* An inline request: one line of at most KVS_REDIS_MAX_INLINE bytes (as
 * Redis) and at most max_request (a client that has not authenticated may
 * send less). */
static int parse_inline(kvs_redis_parser_t *ps, const uint8_t *p, size_t len, size_t max_request,
                        size_t *used, int peek)
{
    size_t lim = max_request < KVS_REDIS_MAX_INLINE ? max_request : KVS_REDIS_MAX_INLINE;
    const uint8_t *nl = memchr(p, '\n', len < lim + 2 ? len : lim + 2);
    size_t n = nl != NULL ? (size_t)(nl - p) : len;
    /* The bound is the line's, without its end: a CR before the LF (or
     * last, its LF still to come) does not count, as with LF alone. */
    size_t content = n > 0 && p[n - 1] == '\r' && (nl != NULL || n == lim + 1) ? n - 1 : n;
    if (content > lim && lim < KVS_REDIS_MAX_INLINE)
        return too_large(ps, max_request, 0);
    if (content > lim)
        return fail(ps, "Protocol error: too big inline request");
    if (nl == NULL)
        return 0;
    if (peek) { /* (unbalanced quotes are found when it is taken) */
        *used = n + 1;
        return 1;
    }
    size_t line = n > 0 && p[n - 1] == '\r' ? n - 1 : n;
    int rc = split_inline(ps, p, line);
    if (rc == 1)
        *used = n + 1;
    return rc;
}

/* Gives back argument arrays and scratch that one large request left, once
 * it is done (the arguments it returned are dead by the next call). */
static void shrink(kvs_redis_parser_t *ps)
{
    if (ps->cap > KVS_REDIS_KEEP_ARGS) {
        free(ps->argv);
        ps->argv = NULL;
        ps->cap = 0;
    }
    if (ps->scratch.cap > 4096)
        kvs_buf_free(&ps->scratch);
}

static int parse(kvs_redis_parser_t *ps, const uint8_t *p, size_t len, size_t max_request,
                 size_t *used, int peek)
{
    *used = 0;
    ps->error = NULL;
    if (!peek)
        shrink(ps); /* (a peek leaves argv to the request it holds; progress needs none) */
    if (ps->want == 0 && len == 0)
        return 0;
    if (ps->want == 0 && p[0] != '*') {
        if (!peek)
            ps->argc = 0;
        return parse_inline(ps, p, len, max_request, used, peek);
    }
    int rc = ps->want == 0 ? parse_count(ps, p, len, used, peek) : 2;
    if (rc == 2)
        rc = parse_bulks(ps, p, len, max_request, used, peek);
    /* incomplete past the bound, in any part (a count line that never
     * ends, too) */
    if (rc == 0 && len > max_request)
        return too_large(ps, max_request, 0);
    return rc;
}

int kvs_redis_parse(kvs_redis_parser_t *ps, const uint8_t *p, size_t len, size_t max_request,
                    size_t *used)
{
    return parse(ps, p, len, max_request, used, 0);
}

int kvs_redis_complete(kvs_redis_parser_t *ps, const uint8_t *p, size_t len, size_t max_request,
                       size_t *used)
{
    return parse(ps, p, len, max_request, used, 1);
}

/* ---- arguments --------------------------------------------------------------------- */

int kvs_redis_arg_is(const kvs_redis_arg_t *a, const char *w)
{
    size_t n = strlen(w);
    return a->len == n && strncasecmp((const char *)a->p, w, n) == 0;
}

int kvs_redis_arg_int(const kvs_redis_arg_t *a, int64_t *out)
{
    long long v;
    if (parse_ll(a->p, a->len, &v) != 0)
        return -1;
    *out = v;
    return 0;
}

/* Copies a float argument into buf (KVS_REDIS_MAX_FLOAT_TEXT bytes) as a
 * C string; -1 for what string2ld refuses before it parses: empty, too
 * long, or starting with a space. */
static int float_text(const kvs_redis_arg_t *a, char *buf)
{
    if (a->len == 0 || a->len >= KVS_REDIS_MAX_FLOAT_TEXT || isspace(a->p[0]))
        return -1;
    memcpy(buf, a->p, a->len);
    buf[a->len] = '\0';
    return 0;
}

/* Whether a parse of a->len bytes of text that stopped at `end` (with
 * errno as the parse left it) and read a value that `is_nan`, or `huge`
 * (infinite) or zero, gave a number: out of range only when it overflowed
 * or underflowed to zero (a subnormal result is a number), as Redis's
 * string2ld. */
static int float_ok(const kvs_redis_arg_t *a, const char *buf, const char *end, int is_nan,
                    int huge_or_zero)
{
    return end == buf + a->len && !is_nan && !(errno == ERANGE && huge_or_zero);
}

int kvs_redis_arg_double(const kvs_redis_arg_t *a, double *out)
{
    char buf[KVS_REDIS_MAX_FLOAT_TEXT], *end;
    if (float_text(a, buf) != 0)
        return -1;
    errno = 0;
    double v = strtod(buf, &end);
    if (!float_ok(a, buf, end, isnan(v), isinf(v) || v == 0))
        return -1;
    *out = v;
    return 0;
}

int kvs_redis_arg_ldouble(const kvs_redis_arg_t *a, long double *out)
{
    char buf[KVS_REDIS_MAX_FLOAT_TEXT], *end;
    if (float_text(a, buf) != 0)
        return -1;
    errno = 0;
    long double v = strtold(buf, &end);
    if (!float_ok(a, buf, end, isnan(v), isinf(v) || v == 0))
        return -1;
    *out = v;
    return 0;
}

/* ---- replies ------------------------------------------------------------------------ */

/* Replies this thread could not append (see kvs_redis_reply_failures). */
static _Thread_local unsigned long reply_failures;

unsigned long kvs_redis_reply_failures(void)
{
    return reply_failures;
}

static int reply_failed(void)
{
    reply_failures++;
    return -ENOMEM;
}

static int append(kvs_buf_t *b, const char *s, size_t n)
{
    return kvs_buf_append(b, s, n) != 0 ? reply_failed() : 0;
}

static int put_line(kvs_buf_t *b, char type, const char *s, size_t n)
{
    if (kvs_buf_reserve(b, n + 3) != 0)
        return reply_failed();
    b->data[b->len++] = (uint8_t)type;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len++] = '\r';
    b->data[b->len++] = '\n';
    return 0;
}

static int put_num(kvs_buf_t *b, char type, long long v)
{
    char num[24], *e = num + sizeof(num), *s = e;
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do { /* no snprintf: this runs for every reply */
        *--s = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        *--s = '-';
    return put_line(b, type, s, (size_t)(e - s));
}

int kvs_redis_simple(kvs_buf_t *b, const char *s)
{
    return put_line(b, '+', s, strlen(s));
}

int kvs_redis_error(kvs_buf_t *b, const char *fmt, ...)
{
    enum { MAX = 511 };
    char text[MAX + 2]; /* one byte past MAX shows whether the cut falls in a character */
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if (n > MAX) { /* cut at a whole UTF-8 character, not in one */
        n = MAX;
        while (n > 0 && ((unsigned char)text[n] & 0xc0) == 0x80)
            n--; /* text[n]: the first byte of the character the cut falls in */
    }
    for (int i = 0; i < n; i++) /* an error is one line */
        if (text[i] == '\r' || text[i] == '\n')
            text[i] = ' ';
    return put_line(b, '-', text, (size_t)n);
}

int kvs_redis_integer(kvs_buf_t *b, int64_t v)
{
    return put_num(b, ':', v);
}

int kvs_redis_bulk(kvs_buf_t *b, const void *p, size_t len)
{
    /* Room for the whole reply first (a header is at most 24 bytes): a
     * header without its body would make the client read whatever is
     * written next as the bulk's bytes. */
    if (len > SIZE_MAX - 32 || kvs_buf_reserve(b, 24 + len + 2) != 0)
        return reply_failed();
    if (put_num(b, '$', (long long)len) != 0)
        return -ENOMEM; /* not reached: the room is there */
    if (len > 0)
        memcpy(b->data + b->len, p, len);
    b->len += len;
    b->data[b->len++] = '\r';
    b->data[b->len++] = '\n';
    return 0;
}

int kvs_redis_null(kvs_buf_t *b, int resp3)
{
    return resp3 ? append(b, "_\r\n", 3) : append(b, "$-1\r\n", 5);
}

int kvs_redis_array(kvs_buf_t *b, size_t n)
{
    return put_num(b, '*', (long long)n);
}

int kvs_redis_map(kvs_buf_t *b, size_t n, int resp3)
{
    return resp3 ? put_num(b, '%', (long long)n) : put_num(b, '*', 2 * (long long)n);
}

int kvs_redis_set(kvs_buf_t *b, size_t n, int resp3)
{
    return put_num(b, resp3 ? '~' : '*', (long long)n);
}

/* The shortest decimal digits that read back as `v` (finite, not 0): up to
 * 17 digits in digits[], *nd of them, the point after *point of them
 * (negative: zeros before them). A normal double's 15 digits, trailing
 * zeros dropped, are its shortest when it has 15 or fewer (its 53 bits
 * tell 15-digit decimals apart); a subnormal has fewer bits, so 1e-320's
 * 15 digits are 9.99988867182683e-321: its digits are searched from one. */
static void shortest_digits(double v, char *digits, int *nd, int *point)
{
    char e[40];
    if (fabs(v) < DBL_MIN) {
        /* More digits read back closer, so the digit counts that read
         * back as v are all those from the shortest up: a binary search
         * (5 tries, not up to 17). prec is the digits after the first. */
        int lo = 0, hi = 16;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            snprintf(e, sizeof(e), "%.*e", mid, v);
            if (strtod(e, NULL) == v)
                hi = mid;
            else
                lo = mid + 1;
        }
        snprintf(e, sizeof(e), "%.*e", lo, v);
    } else {
        for (int prec = 14; prec <= 16; prec++) { /* 15, 16, then 17 significant digits */
            snprintf(e, sizeof(e), "%.*e", prec, v);
            if (prec == 16 || strtod(e, NULL) == v)
                break;
        }
    }
    const char *p = e + (e[0] == '-');
    int n = 0;
    for (; *p != 'e'; p++)
        if (*p != '.')
            digits[n++] = *p;
    while (n > 1 && digits[n - 1] == '0')
        n--;
    *nd = n;
    *point = atoi(p + 1) + 1;
}

size_t kvs_redis_format_double(char *buf, double v)
{
    if (isinf(v))
        return (size_t)snprintf(buf, KVS_REDIS_DOUBLE_MAX, "%s", v > 0 ? "inf" : "-inf");
    if (isnan(v))
        return (size_t)snprintf(buf, KVS_REDIS_DOUBLE_MAX, "nan");
    if (v == 0) /* -0 too, as Redis writes it */
        return (size_t)snprintf(buf, KVS_REDIS_DOUBLE_MAX, "0");
    char digits[24];
    int nd, point;
    shortest_digits(v, digits, &nd, &point);
    size_t n = 0;
    if (v < 0)
        buf[n++] = '-';
    if (point <= 0) { /* 0.000ddd */
        buf[n++] = '0';
        buf[n++] = '.';
        for (int i = point; i < 0; i++)
            buf[n++] = '0';
        memcpy(buf + n, digits, (size_t)nd);
        n += (size_t)nd;
    } else if (point >= nd) { /* ddd000 */
        memcpy(buf + n, digits, (size_t)nd);
        n += (size_t)nd;
        for (int i = nd; i < point; i++)
            buf[n++] = '0';
    } else { /* dd.ddd */
        memcpy(buf + n, digits, (size_t)point);
        n += (size_t)point;
        buf[n++] = '.';
        memcpy(buf + n, digits + point, (size_t)(nd - point));
        n += (size_t)(nd - point);
    }
    buf[n] = '\0';
    return n;
}

size_t kvs_redis_format_ldouble(char *buf, long double v)
{
    if (!isfinite(v))
        return (size_t)snprintf(buf, KVS_REDIS_LDOUBLE_MAX, "%s",
                                isnan(v) ? "nan"
                                : v > 0  ? "inf"
                                         : "-inf");
    /* A sign, the integer digits (LDBL_MAX_10_EXP + 1 at most), '.', 17
     * decimals and the NUL always fit: */
    _Static_assert(LDBL_MAX_10_EXP + 21 <= KVS_REDIS_LDOUBLE_MAX, "room for any long double");
    size_t len = (size_t)snprintf(buf, KVS_REDIS_LDOUBLE_MAX, "%.17Lf", v);
    while (buf[len - 1] == '0') /* "%.17Lf" always writes a '.' */
        len--;
    if (buf[len - 1] == '.')
        len--;
    if (len == 2 && buf[0] == '-' && buf[1] == '0')
        buf[0] = '0', len = 1;
    buf[len] = '\0';
    return len;
}

int kvs_redis_double(kvs_buf_t *b, double v, int resp3)
{
    char num[KVS_REDIS_DOUBLE_MAX];
    size_t n = kvs_redis_format_double(num, v);
    return resp3 ? put_line(b, ',', num, n) : kvs_redis_bulk(b, num, n);
}

int kvs_redis_bool(kvs_buf_t *b, int v, int resp3)
{
    if (resp3)
        return append(b, v ? "#t\r\n" : "#f\r\n", 4);
    return append(b, v ? ":1\r\n" : ":0\r\n", 4);
}

int kvs_redis_verbatim(kvs_buf_t *b, const void *p, size_t len, int resp3)
{
    if (!resp3)
        return kvs_redis_bulk(b, p, len);
    if (len > SIZE_MAX - 32 || kvs_buf_reserve(b, 24 + len + 6) != 0)
        return reply_failed(); /* all or nothing, as kvs_redis_bulk */
    if (put_num(b, '=', (long long)len + 4) != 0)
        return -ENOMEM;
    memcpy(b->data + b->len, "txt:", 4);
    b->len += 4;
    if (len > 0)
        memcpy(b->data + b->len, p, len);
    b->len += len;
    b->data[b->len++] = '\r';
    b->data[b->len++] = '\n';
    return 0;
}

/* ---- glob --------------------------------------------------------------------------- */

/* tolower in the C locale, as Redis folds (on a byte or a char). */
static int fold_int(int c)
{
    return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

static uint8_t fold(uint8_t c, int nocase)
{
    return nocase ? (uint8_t)fold_int(c) : c;
}

/* One step of matching work spent from *budget (NULL: unbounded); 0 once
 * it is gone. */
static int spend(uint64_t *budget)
{
    if (budget == NULL)
        return 1;
    if (*budget == 0)
        return 0;
    (*budget)--;
    return 1;
}

/* Does the class starting at pat[*pi] ('[' already consumed) contain c?
 * Advances *pi past the closing ']' (or to the end). Returns 1, 0, or -1
 * when the budget ran out (a class costs a step per byte). */
static int class_match(const uint8_t *pat, size_t plen, size_t *pi, uint8_t c, int nocase,
                       uint64_t *budget)
{
    size_t i = *pi;
    int neg = 0, match = 0;
    if (i < plen && pat[i] == '^') {
        neg = 1;
        i++;
    }
    for (; i < plen && pat[i] != ']'; i++) {
        if (!spend(budget))
            return -1;
        if (pat[i] == '\\' && i + 1 < plen) {
            i++;
            match |= pat[i] == c; /* as Redis: an escaped byte in a class is not folded */
        } else if (i + 2 < plen && pat[i + 1] == '-') { /* "[a-]": a to ']', as Redis */
            /* As Redis: the bytes compared as C chars, signed where char
             * is (x86-64: "[A-\xc3]" is \xc3, -61, to A, no a-z), unsigned
             * where it is not (ARM), so the same cast gives Redis's answer
             * on the platform kvs is built for; the bounds put in order
             * before they are folded (nocase "[Z-a]" is z to a: nothing). */
            int lo = (char)pat[i], hi = (char)pat[i + 2], x = (char)c;
            if (lo > hi) {
                int t = lo;
                lo = hi;
                hi = t;
            }
            if (nocase) {
                lo = fold_int(lo);
                hi = fold_int(hi);
                x = fold_int(x);
            }
            match |= x >= lo && x <= hi;
            i += 2;
        } else {
            match |= fold(pat[i], nocase) == fold(c, nocase);
        }
    }
    *pi = i < plen ? i + 1 : i;
    return neg ? !match : match;
}

int kvs_redis_glob(const uint8_t *pat, size_t plen, const uint8_t *s, size_t slen, int nocase,
                   uint64_t *budget)
{
    size_t pi = 0, si = 0, star_p = (size_t)-1, star_s = 0;
    while (si < slen) {
        if (!spend(budget))
            return -1;
        if (pi < plen && pat[pi] == '*') {
            /* Each star is a step: a run of millions costs what it reads. */
            while (pi < plen && pat[pi] == '*') {
                if (!spend(budget))
                    return -1;
                pi++;
            }
            if (pi == plen)
                return 1;
            star_p = pi; /* retry from here, one more byte of s eaten by the star */
            star_s = si;
            continue;
        }
        if (pi < plen) {
            size_t next = pi + 1;
            int ok;
            if (pat[pi] == '?') {
                ok = 1;
            } else if (pat[pi] == '[') {
                next = pi + 1;
                if ((ok = class_match(pat, plen, &next, s[si], nocase, budget)) < 0)
                    return -1;
            } else if (pat[pi] == '\\' && pi + 1 < plen) {
                ok = fold(pat[pi + 1], nocase) == fold(s[si], nocase);
                next = pi + 2;
            } else {
                ok = fold(pat[pi], nocase) == fold(s[si], nocase);
            }
            if (ok) {
                pi = next;
                si++;
                continue;
            }
        }
        if (star_p == (size_t)-1)
            return 0;
        pi = star_p; /* backtrack: the last star takes one more byte */
        si = ++star_s;
    }
    while (pi < plen && pat[pi] == '*') {
        if (!spend(budget))
            return -1;
        pi++;
    }
    return pi == plen;
}

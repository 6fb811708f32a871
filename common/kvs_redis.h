/*
 * kvs_redis: the Redis protocol (RESP2 and RESP3), pure codec, no I/O.
 *
 * Requests: a client sends either a multibulk array of bulk strings
 * ("*2\r\n$4\r\nHGET\r\n...") or an inline command (a text line, words
 * split on spaces, "double" and 'single' quotes with Redis's escapes).
 * kvs_redis_parse takes one request from the front of a byte range and
 * yields its arguments; it keeps its progress between calls, so a large
 * request arriving in many reads is scanned once, not once per read.
 * Protocol errors carry the text Redis itself sends ("Protocol error: ...")
 * so clients and tests see what they know.
 *
 * Bounds: a request may be at most `max_request` bytes in all (kvs passes
 * limits.max_frame), a multibulk at most KVS_REDIS_MAX_ARGS arguments, an
 * inline request at most KVS_REDIS_MAX_INLINE bytes. Memory follows the
 * bytes that arrived, never a count announced ahead of them: an incomplete
 * request holds no memory but its bytes (the caller's), a complete one an
 * argument array, and what one large request needed is given back before
 * the next.
 *
 * Replies: small writers that append RESP to a kvs_buf; with `resp3` set
 * they use RESP3's null, map, double and boolean types, else RESP2's
 * equivalents (what Redis does after HELLO 2 / HELLO 3).
 *
 * Not named kvs_resp: that is the protobuf response encoder.
 */
#ifndef KVS_REDIS_H
#define KVS_REDIS_H

#include "kvs_buf.h"

#include <stddef.h>
#include <stdint.h>

#define KVS_REDIS_MAX_ARGS (1024 * 1024)
#define KVS_REDIS_MAX_INLINE (64 * 1024)
#define KVS_REDIS_KEEP_ARGS 1024 /* argument arrays kept between requests */

typedef struct kvs_redis_arg_s {
    const uint8_t *p;
    size_t len;
} kvs_redis_arg_t;

typedef struct kvs_redis_parser_s {
    /* The request last parsed: argv[0..argc). Multibulk arguments point into
     * the bytes given to kvs_redis_parse, inline ones into `scratch`; both
     * stay valid until the next kvs_redis_parse (kvs_redis_complete leaves
     * them). */
    size_t argc;
    kvs_redis_arg_t *argv;
    const char *error; /* after -1: the message, e.g. "Protocol error: ..." */
    int too_large;     /* ... and it is about max_request (a well-formed length beyond it) */

    /* Progress through a multibulk not yet complete (an offset from the
     * start of the request, so the caller may move the bytes between calls;
     * got counts the arguments read so far, and nothing else is kept per
     * argument until the request is complete). */
    size_t want; /* arguments announced, 0 = no multibulk in progress */
    size_t got;  /* arguments read so far */
    size_t pos;  /* where parsing resumes */
    size_t cap;  /* capacity of argv */
    kvs_buf_t scratch;
    char errbuf[96];
} kvs_redis_parser_t;

void kvs_redis_parser_init(kvs_redis_parser_t *ps);
void kvs_redis_parser_close(kvs_redis_parser_t *ps);

/* Parses one request from p[0..len). Returns:
 *   1   a request: ps->argc/argv are set, *used is its length in bytes;
 *       argc may be 0 for an empty line or an empty multibulk (skip it);
 *   0   more bytes are needed (*used is 0; call again with the same bytes
 *       plus more: progress is kept);
 *  -1   a protocol error: ps->error says which; the stream cannot go on.
 * Returns -ENOMEM when memory for the arguments is short. */
int kvs_redis_parse(kvs_redis_parser_t *ps, const uint8_t *p, size_t len, size_t max_request,
                    size_t *used);

/* Whether p[0..len) starts with a whole request: what kvs_redis_parse
 * would return (1 with *used, 0, -1 or -ENOMEM), but a request is only
 * measured, its arguments not built (a multibulk of a million arguments
 * takes no argument array), and the progress is kept: asking again, or
 * kvs_redis_parse with the same bytes, goes on from there. argc, argv and
 * the scratch (the request kvs_redis_parse returned last, which may still
 * be running) are left as they are. An inline request's quotes are
 * checked by kvs_redis_parse only. */
int kvs_redis_complete(kvs_redis_parser_t *ps, const uint8_t *p, size_t len, size_t max_request,
                       size_t *used);

/* Forgets a request in progress (the bytes it was reading went away). */
void kvs_redis_parser_reset(kvs_redis_parser_t *ps);

/* True when `a` equals the ASCII word `w`, ignoring case. */
int kvs_redis_arg_is(const kvs_redis_arg_t *a, const char *w);

/* Parses a whole argument as a signed 64-bit decimal integer the way Redis
 * does (no spaces, no leading '+' or zeros). Returns 0 or -1. */
int kvs_redis_arg_int(const kvs_redis_arg_t *a, int64_t *out);

/* Parses a whole argument as a double the way Redis parses a float
 * (string2ld: strtod's grammar, hex included; no leading space; at most
 * KVS_REDIS_MAX_FLOAT_TEXT - 1 bytes; "nan" and values out of a double's
 * range refused; "inf" and "-inf" ACCEPTED: the caller says what it thinks
 * of them, as Redis's commands do). Returns 0 or -1. */
#define KVS_REDIS_MAX_FLOAT_TEXT (5 * 1024)
int kvs_redis_arg_double(const kvs_redis_arg_t *a, double *out);

/* The same as a long double, exactly as Redis's string2ld (HINCRBYFLOAT's
 * increment and stored value): "1e400" is a number here. */
int kvs_redis_arg_ldouble(const kvs_redis_arg_t *a, long double *out);

/* ---- replies -------------------------------------------------------------- */

/* Each returns 0 or -ENOMEM; after -ENOMEM `b` is as it was (nothing of
 * that call's bytes was appended). A reply is built of several calls whose
 * results are easy to drop: kvs_redis_reply_failures counts this thread's
 * failed calls, so the builder of a whole reply can tell, by comparing it
 * before and after, that the reply is incomplete (and must not be sent). */
unsigned long kvs_redis_reply_failures(void);
int kvs_redis_simple(kvs_buf_t *b, const char *s);      /* +s */
int kvs_redis_error(kvs_buf_t *b, const char *fmt, ...) /* -... (newlines become spaces) */
    __attribute__((format(printf, 2, 3)));
int kvs_redis_integer(kvs_buf_t *b, int64_t v);                             /* :v */
int kvs_redis_bulk(kvs_buf_t *b, const void *p, size_t len);                /* $len */
int kvs_redis_null(kvs_buf_t *b, int resp3);                                /* $-1 or _ */
int kvs_redis_array(kvs_buf_t *b, size_t n);                                /* *n */
int kvs_redis_map(kvs_buf_t *b, size_t n, int resp3);                       /* %n, or *2n */
int kvs_redis_set(kvs_buf_t *b, size_t n, int resp3);                       /* ~n, or *n */
int kvs_redis_double(kvs_buf_t *b, double v, int resp3);                    /* ,v or a bulk */
int kvs_redis_bool(kvs_buf_t *b, int v, int resp3);                         /* #t/#f or :1/:0 */
int kvs_redis_verbatim(kvs_buf_t *b, const void *p, size_t len, int resp3); /* =txt: or bulk */

/* Writes `v` as Redis writes the floats it stores (HINCRBYFLOAT): in
 * plain decimal, never an exponent, "-0" as "0", inf as "inf", here with
 * the shortest digits that read back as the same double (Redis prints a
 * long double to 17 decimals instead, so 0.1 + 0.2 is "0.3" there and
 * 1e-20 is "0"). Returns the length; `buf` holds KVS_REDIS_DOUBLE_MAX
 * bytes (the longest: "-0." then 323 zeros and the digits of 5e-324). */
#define KVS_REDIS_DOUBLE_MAX 352
size_t kvs_redis_format_double(char *buf, double v);

/* Writes a long double exactly as Redis writes HINCRBYFLOAT's result
 * (ld2string, LD_STR_HUMAN): "%.17Lf", trailing zeros and a trailing '.'
 * removed, "-0" as "0" (so 0.1 + 0.2 is "0.3" and 1e-20 is "0"); inf and
 * nan as "inf", "-inf" and "nan". Returns the length; `buf` holds
 * KVS_REDIS_LDOUBLE_MAX bytes (Redis's MAX_LONG_DOUBLE_CHARS: the largest
 * finite long double takes 4,933 digits and 18 more bytes). */
#define KVS_REDIS_LDOUBLE_MAX (5 * 1024)
size_t kvs_redis_format_ldouble(char *buf, long double v);

/* Redis's glob matching (stringmatchlen): *, ?, [...] with ranges and ^,
 * backslash escapes. Iterative: no pattern can make it exponential, but a
 * pattern's cost still grows with its length times the string's (a long
 * [...] class is scanned at every position a star tries), so a caller on
 * an event loop passes a budget of steps, spent across calls (NULL: no
 * bound). Returns 1 (matches), 0, or -1 when the budget ran out. */
int kvs_redis_glob(const uint8_t *pat, size_t plen, const uint8_t *s, size_t slen, int nocase,
                   uint64_t *budget);

#endif

/*
 * fuzz_redis: the RESP request parser (common/kvs_redis.h) against a byte
 * stream arriving in arbitrary pieces, the way a connection feeds it.
 *
 * Input layout:
 *   byte 0      piece size: (b & 0x3f) + 1 bytes per read (1..64); the
 *               unconsumed bytes move to a fresh buffer at every read (the
 *               parser must keep no pointer into old bytes);
 *   the rest    the stream.
 *
 * The same stream is also parsed in one piece; both runs must produce the
 * same commands (argument for argument, byte for byte) and stop at the same
 * protocol error, if any. Each run checks on every call:
 *   - `used` never exceeds the bytes given, and is 0 unless a command came;
 *   - every argument lies inside the bytes given (multibulk) or the
 *     parser's scratch (inline), and no request is longer than the limit;
 *   - after an error the message names a protocol error.
 * Memory errors, leaks and UB are left to the sanitizers.
 */
#include "kvs_buf.h"
#include "kvs_redis.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define MAX_REQUEST 4096

/* Every command of a run, flattened: argc, then each argument's length and
 * bytes; and how the run ended (0 clean, -1 protocol error). */
typedef struct trace_s {
    kvs_buf_t log;
    int end;
} trace_t;

static void record(trace_t *t, const kvs_redis_parser_t *ps)
{
    uint64_t n = ps->argc;
    int rc = kvs_buf_append(&t->log, &n, sizeof(n));
    for (size_t i = 0; i < ps->argc; i++) {
        uint64_t len = ps->argv[i].len;
        rc |= kvs_buf_append(&t->log, &len, sizeof(len));
        rc |= kvs_buf_append(&t->log, ps->argv[i].p, ps->argv[i].len);
    }
    if (rc != 0)
        abort(); /* a fuzzer without memory has nothing to report */
}

static int inside(const uint8_t *p, size_t n, const uint8_t *base, size_t len)
{
    return n == 0 || (p >= base && p + n <= base + len);
}

/* Feeds s[0..len) in pieces of `piece` bytes (all at once when 0). */
static void run(const uint8_t *s, size_t len, size_t piece, trace_t *t)
{
    kvs_redis_parser_t ps;
    kvs_redis_parser_init(&ps);
    kvs_buf_init(&t->log);
    t->end = 0;
    uint8_t *buf = NULL;
    size_t have = 0, fed = 0;
    for (;;) {
        size_t more = piece == 0 ? len - fed : (len - fed < piece ? len - fed : piece);
        if (more == 0 && fed == len && have == 0)
            break;
        uint8_t *nb = malloc(have + more + 1);
        FUZZ_CHECK(nb != NULL);
        if (have > 0)
            memcpy(nb, buf, have);
        memcpy(nb + have, s + fed, more);
        free(buf);
        buf = nb;
        have += more;
        fed += more;
        for (;;) {
            size_t used = 12345;
            int rc = kvs_redis_parse(&ps, buf, have, MAX_REQUEST, &used);
            FUZZ_CHECK(rc == 1 || rc == 0 || rc == -1);
            if (rc == -1) {
                FUZZ_CHECK(ps.error != NULL && strstr(ps.error, "Protocol error") != NULL);
                t->end = -1;
                goto out;
            }
            if (rc == 0) {
                FUZZ_CHECK(used == 0);
                break;
            }
            FUZZ_CHECK(used > 0 && used <= have);
            for (size_t i = 0; i < ps.argc; i++)
                FUZZ_CHECK(inside(ps.argv[i].p, ps.argv[i].len, buf, used) ||
                           inside(ps.argv[i].p, ps.argv[i].len, ps.scratch.data, ps.scratch.len));
            record(t, &ps);
            memmove(buf, buf + used, have - used);
            have -= used;
            if (have == 0)
                break;
        }
        if (fed == len)
            break; /* what is left is an incomplete request */
    }
out:
    free(buf);
    kvs_redis_parser_close(&ps);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t piece = (size_t)(data[0] & 0x3f) + 1;
    trace_t a, b;
    run(data + 1, size - 1, piece, &a);
    run(data + 1, size - 1, 0, &b);
    FUZZ_CHECK(a.end == b.end);
    FUZZ_CHECK(a.log.len == b.log.len);
    FUZZ_CHECK(a.log.len == 0 || memcmp(a.log.data, b.log.data, a.log.len) == 0);
    kvs_buf_free(&a.log);
    kvs_buf_free(&b.log);
    return 0;
}

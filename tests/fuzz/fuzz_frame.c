/*
 * fuzz_frame: the streaming frame decoder (common/kvs_frame.h) against a
 * byte stream arriving in arbitrary pieces.
 *
 * Input layout:
 *   byte 0      control: bits 0-2 = number of size bytes minus one (1..8);
 *               bits 3-4 = drain cadence (pull frames after every piece,
 *               every 2nd, every 7th, or only at the end); bit 5 = read
 *               through dec_space/dec_commit instead of dec_feed; bits 6-7
 *               pick the decoder's max payload (4096, 64, 1 or 0 bytes);
 *   next n      piece sizes, used round-robin: b < 0x80 means b + 1 bytes,
 *               otherwise (b & 0x7f) * 128 + 1 bytes;
 *   the rest    the stream itself.
 *
 * Every input runs twice: with the decoder as clients get it, and in skip
 * mode (kvs_frame_dec_skip_oversized, as the router's links have it).
 *
 * A reference decoder (a few lines, working on the whole stream) says what
 * every kvs_frame_dec_next call must return, and the harness checks:
 *   - each frame is exactly the reference frame (length and bytes), its
 *     length is at most max, and frames handed out by consecutive next()
 *     calls stay intact until more bytes are added;
 *   - oversized and compressed headers give KVS_ETOOBIG / KVS_EPROTO, and
 *     the error sticks (bad_len holds the announced length); in skip mode
 *     an oversized header gives KVS_FRAME_SKIPPED once, with the announced
 *     length and no payload, and the frames after it follow intact;
 *   - pending() is always the bytes fed and not handed out (or dropped, in
 *     skip mode, as of the last next() call); when frames are pulled after
 *     every read, pending never exceeds max + header + the read size, and
 *     the buffer never grows past what the contract allows;
 *   - the whole space dec_space hands out is writable (ASan checks it).
 * Memory errors, leaks and UB are left to the sanitizers.
 */
#include "kvs_err.h"
#include "kvs_frame.h"

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

#define KEEP 32 /* frames from one drain re-checked at its end */

typedef struct run_s {
    kvs_frame_dec_t dec;
    uint32_t max;
    const uint8_t *s; /* the stream */
    size_t slen;
    size_t fed;      /* stream bytes given to the decoder */
    size_t consumed; /* stream offset of the first byte not handed out (skip mode: may be
                        past `fed`, inside a skipped payload not all fed yet) */
    size_t start;    /* stream offset of the decoder's first byte, as of the last next() */
    int use_space;
    int skip; /* skip mode */
    int err;  /* sticky error seen; nothing more is fed */
} run_t;

typedef struct expect_s {
    int rc;       /* 1, 0, KVS_FRAME_SKIPPED, KVS_ETOOBIG or KVS_EPROTO */
    int alt_rc;   /* also acceptable (both error conditions hold), else rc */
    uint32_t len; /* frame or announced length */
} expect_t;

/* What next() must return given what has been fed so far. */
static expect_t reference_next(const run_t *r)
{
    expect_t e = {0, 0, 0};
    if (r->consumed > r->fed)
        return e; /* a skipped payload is still arriving */
    size_t avail = r->fed - r->consumed;
    if (avail < KVS_FRAME_HEADER)
        return e;
    const uint8_t *h = r->s + r->consumed;
    uint32_t word = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
    int compressed = (word & KVS_FRAME_COMPRESSED) != 0;
    e.len = word & KVS_FRAME_LEN_MASK;
    if (!compressed && e.len > r->max && r->skip) {
        e.rc = e.alt_rc = KVS_FRAME_SKIPPED;
        return e;
    }
    if (compressed || e.len > r->max) {
        e.rc = compressed ? KVS_EPROTO : KVS_ETOOBIG;
        e.alt_rc = compressed && e.len > r->max ? KVS_ETOOBIG : e.rc;
        return e;
    }
    if (avail - KVS_FRAME_HEADER >= e.len)
        e.rc = e.alt_rc = 1;
    return e;
}

static void check_error(run_t *r, int rc, const expect_t *e)
{
    if (rc == KVS_ETOOBIG)
        FUZZ_CHECK(r->dec.bad_len == e->len);
    const uint8_t *p;
    size_t len;
    FUZZ_CHECK(kvs_frame_dec_next(&r->dec, &p, &len) == rc); /* the error sticks */
    FUZZ_CHECK(kvs_frame_dec_pending(&r->dec) == r->fed - r->consumed);
    r->err = rc;
}

/* The decoder's first byte after a next() call: skipped bytes already fed
 * are dropped by then. */
static void note_start(run_t *r)
{
    r->start = r->consumed < r->fed ? r->consumed : r->fed;
    FUZZ_CHECK(kvs_frame_dec_pending(&r->dec) == r->fed - r->start);
}

/* Pulls frames until next() returns 0 or an error, checking each one. */
static void drain(run_t *r)
{
    const uint8_t *kept_p[KEEP];
    size_t kept_off[KEEP], kept_len[KEEP], nkept = 0;
    for (;;) {
        const uint8_t *p = NULL;
        size_t len = 0;
        expect_t e = reference_next(r);
        int rc = kvs_frame_dec_next(&r->dec, &p, &len);
        FUZZ_CHECK(rc == e.rc || rc == e.alt_rc);
        if (rc == 0) {
            note_start(r);
            break;
        }
        if (rc == KVS_FRAME_SKIPPED) {
            FUZZ_CHECK(p == NULL && len == e.len && len > r->max);
            r->consumed += KVS_FRAME_HEADER + len;
            note_start(r);
            continue;
        }
        if (rc != 1) {
            check_error(r, rc, &e);
            break;
        }
        FUZZ_CHECK(len == e.len && len <= r->max);
        FUZZ_CHECK(len == 0 || memcmp(p, r->s + r->consumed + KVS_FRAME_HEADER, len) == 0);
        if (nkept < KEEP) {
            kept_p[nkept] = p;
            kept_off[nkept] = r->consumed + KVS_FRAME_HEADER;
            kept_len[nkept++] = len;
        }
        r->consumed += KVS_FRAME_HEADER + len;
        note_start(r);
    }
    /* Earlier frames must survive later next() calls. */
    for (size_t i = 0; i < nkept; i++)
        FUZZ_CHECK(kept_len[i] == 0 || memcmp(kept_p[i], r->s + kept_off[i], kept_len[i]) == 0);
}

/* Gives the decoder the next `n` stream bytes; returns the read size used. */
static size_t add_piece(run_t *r, size_t n)
{
    size_t want = n;
    if (!r->use_space) {
        FUZZ_CHECK(kvs_frame_dec_feed(&r->dec, r->s + r->fed, n) == 0);
    } else {
        /* Like a socket read: ask for a rounded-up buffer, get fewer bytes. */
        want = (n + 63) / 64 * 64;
        uint8_t *base = NULL;
        size_t room = 0;
        FUZZ_CHECK(kvs_frame_dec_space(&r->dec, want, &base, &room) == 0);
        FUZZ_CHECK(base != NULL && room >= want);
        memset(base, 0xa5, room); /* all of it must be ours to write */
        memcpy(base, r->s + r->fed, n);
        kvs_frame_dec_commit(&r->dec, n);
    }
    r->fed += n;
    return want;
}

static size_t piece_size(uint8_t b)
{
    return b < 0x80 ? (size_t)b + 1 : (size_t)(b & 0x7f) * 128 + 1;
}

static void header_roundtrip(const uint8_t *s, size_t len)
{
    if (len < KVS_FRAME_HEADER)
        return;
    int compressed = -1;
    uint32_t n = kvs_frame_get_header(s, &compressed);
    FUZZ_CHECK(n <= KVS_FRAME_LEN_MASK && (compressed == 0 || compressed == 1));
    FUZZ_CHECK(kvs_frame_get_header(s, NULL) == n);
    uint8_t out[KVS_FRAME_HEADER];
    kvs_frame_put_header(out, n | (compressed ? KVS_FRAME_COMPRESSED : 0));
    FUZZ_CHECK(memcmp(out, s, KVS_FRAME_HEADER) == 0);
}

static void run_one(const uint8_t *data, size_t size, int skip)
{
    static const uint32_t maxes[4] = {4096, 64, 1, 0};
    static const unsigned cadences[4] = {1, 2, 7, 0};
    size_t nsizes = (size_t)(data[0] & 7) + 1;
    const uint8_t *sizes = data + 1;
    unsigned every = cadences[(data[0] >> 3) & 3];
    run_t r = {.max = maxes[data[0] >> 6], .use_space = (data[0] >> 5) & 1, .skip = skip};
    r.s = data + 1 + nsizes;
    r.slen = size - 1 - nsizes;
    kvs_frame_dec_init(&r.dec, r.max);
    if (skip)
        kvs_frame_dec_skip_oversized(&r.dec);

    for (size_t i = 0; r.fed < r.slen && !r.err; i++) {
        size_t n = piece_size(sizes[i % nsizes]);
        if (n > r.slen - r.fed)
            n = r.slen - r.fed;
        size_t before = kvs_frame_dec_pending(&r.dec), cap_before = r.dec.cap;
        size_t want = add_piece(&r, n);
        size_t pending = kvs_frame_dec_pending(&r.dec);
        FUZZ_CHECK(pending == r.fed - r.start && pending == before + n);
        /* The buffer grows only as far as one maximal frame plus the read,
         * or past that (the owner left whole frames buffered) to the
         * bytes buffered plus the read, or by half. */
        size_t bound = (size_t)r.max + KVS_FRAME_HEADER + want;
        if (bound < before + want)
            bound = before + want > cap_before + cap_before / 2 ? before + want
                                                                : cap_before + cap_before / 2;
        FUZZ_CHECK(r.dec.cap <= cap_before || r.dec.cap <= bound);
        if (every == 1) /* frames pulled after every read: bounded */
            FUZZ_CHECK(pending <= (size_t)r.max + KVS_FRAME_HEADER + want);
        if (every != 0 && (i + 1) % every == 0)
            drain(&r);
    }
    if (!r.err)
        drain(&r);
    kvs_frame_dec_close(&r.dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t nsizes = (size_t)(data[0] & 7) + 1;
    if (size < 1 + nsizes)
        return 0;
    header_roundtrip(data + 1 + nsizes, size - 1 - nsizes);
    run_one(data, size, 0);
    run_one(data, size, 1);
    return 0;
}

/*
 * test_frame: the frame header codec, the streaming decoder and the kvs_buf
 * byte buffer underneath output queues.
 *
 * The decoder is the first code that sees a peer's bytes, so besides the
 * happy paths these cases pin down its promises to a hostile peer: the
 * size check happens on the header (nothing of an oversized payload is
 * buffered or allocated for), errors are sticky, and the buffer never grows
 * beyond one maximal frame plus the read size the caller asks for.
 */
#include "kvs_buf.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_test.h"

#include <errno.h>

/* ---- helpers ------------------------------------------------------------ */

/* Fills p[0..n) with a pattern that depends on `seed`, so a frame delivered
 * from the wrong place (or moved wrongly) cannot compare equal. */
static void fill(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(seed * 131u + i * 7u + (i >> 8));
}

static int is_filled(const uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (uint8_t)(seed * 131u + i * 7u + (i >> 8)))
            return 0;
    return 1;
}

/* Appends one frame (header + patterned payload of `len` bytes) to `b`. */
static void add_frame(kvs_buf_t *b, size_t len, unsigned seed)
{
    uint8_t hdr[KVS_FRAME_HEADER];
    kvs_frame_put_header(hdr, (uint32_t)len);
    CHECK_EQ(kvs_buf_append(b, hdr, sizeof(hdr)), 0);
    CHECK_EQ(kvs_buf_reserve(b, len), 0);
    fill(b->data + b->len, len, seed);
    b->len += len;
}

/* Expects the next frame to be `len` patterned bytes with `seed`. */
static void expect_frame(kvs_frame_dec_t *d, size_t len, unsigned seed)
{
    const uint8_t *p = NULL;
    size_t n = (size_t)-1;
    CHECK_EQ(kvs_frame_dec_next(d, &p, &n), 1);
    CHECK_EQ(n, len);
    CHECK(p != NULL);
    CHECK(is_filled(p, n, seed));
}

static void expect_none(kvs_frame_dec_t *d)
{
    const uint8_t *p;
    size_t n;
    CHECK_EQ(kvs_frame_dec_next(d, &p, &n), 0);
}

/* ---- header ------------------------------------------------------------- */

KVS_TEST(header_put_is_big_endian)
{
    uint8_t h[KVS_FRAME_HEADER];
    kvs_frame_put_header(h, 0x12345678u);
    CHECK_EQ(h[0], 0x12);
    CHECK_EQ(h[1], 0x34);
    CHECK_EQ(h[2], 0x56);
    CHECK_EQ(h[3], 0x78);
    kvs_frame_put_header(h, 0);
    CHECK(h[0] == 0 && h[1] == 0 && h[2] == 0 && h[3] == 0);
    kvs_frame_put_header(h, KVS_FRAME_LEN_MASK);
    CHECK(h[0] == 0x7f && h[1] == 0xff && h[2] == 0xff && h[3] == 0xff);
}

KVS_TEST(header_round_trip)
{
    static const uint32_t lens[] = {
        0, 1, 255, 256, 65535, 65536, KVS_FRAME_DEFAULT_MAX, KVS_FRAME_LEN_MASK};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        uint8_t h[KVS_FRAME_HEADER];
        int compressed = -1;
        kvs_frame_put_header(h, lens[i]);
        CHECK_EQ(kvs_frame_get_header(h, &compressed), lens[i]);
        CHECK_EQ(compressed, 0);
        CHECK_EQ(kvs_frame_get_header(h, NULL), lens[i]);
    }
}

KVS_TEST(header_bit31_is_compressed_flag)
{
    const uint8_t h[KVS_FRAME_HEADER] = {0x80, 0x00, 0x01, 0x05};
    int compressed = 0;
    CHECK_EQ(kvs_frame_get_header(h, &compressed), 0x105);
    CHECK_EQ(compressed, 1);
    CHECK_EQ(kvs_frame_get_header(h, NULL), 0x105);
    const uint8_t all[KVS_FRAME_HEADER] = {0xff, 0xff, 0xff, 0xff};
    CHECK_EQ(kvs_frame_get_header(all, &compressed), KVS_FRAME_LEN_MASK);
    CHECK_EQ(compressed, 1);
}

/* ---- decoding ----------------------------------------------------------- */

KVS_TEST(decode_one_byte_at_a_time)
{
    static const size_t lens[] = {5, 0, 1, 300, 17, 0};
    const size_t n = sizeof(lens) / sizeof(lens[0]);
    kvs_buf_t stream;
    kvs_buf_init(&stream);
    for (size_t i = 0; i < n; i++)
        add_frame(&stream, lens[i], (unsigned)i);

    kvs_frame_dec_t d;
    kvs_frame_dec_init(&d, 1024);
    size_t got = 0;
    for (size_t off = 0; off < stream.len; off++) {
        CHECK_EQ(kvs_frame_dec_feed(&d, stream.data + off, 1), 0);
        const uint8_t *p;
        size_t len;
        int rc;
        while ((rc = kvs_frame_dec_next(&d, &p, &len)) == 1) {
            CHECK(got < n);
            CHECK_EQ(len, lens[got]);
            CHECK(is_filled(p, len, (unsigned)got));
            got++;
        }
        CHECK_EQ(rc, 0);
    }
    CHECK_EQ(got, n);
    CHECK_EQ(kvs_frame_dec_pending(&d), 0);
    kvs_frame_dec_close(&d);
    kvs_buf_free(&stream);
}

KVS_TEST(decode_many_frames_in_one_feed)
{
    kvs_buf_t stream;
    kvs_buf_init(&stream);
    for (unsigned i = 0; i < 500; i++)
        add_frame(&stream, (i * 37u) % 700u, i);

    kvs_frame_dec_t d;
    kvs_frame_dec_init(&d, 1024);
    CHECK_EQ(kvs_frame_dec_feed(&d, stream.data, stream.len), 0);
    CHECK_EQ(kvs_frame_dec_pending(&d), stream.len);
    for (unsigned i = 0; i < 500; i++)
        expect_frame(&d, (i * 37u) % 700u, i);
    expect_none(&d);
    CHECK_EQ(kvs_frame_dec_pending(&d), 0);
    kvs_frame_dec_close(&d);
    kvs_buf_free(&stream);
}

KVS_TEST(decode_frame_split_across_feeds)
{
    kvs_buf_t stream;
    kvs_buf_init(&stream);
    add_frame(&stream, 1000, 9);

    kvs_frame_dec_t d;
    kvs_frame_dec_init(&d, 4096);
    /* Half a header, the rest of the header and part of the payload, then
     * the remainder: nothing until the last byte is in. */
    CHECK_EQ(kvs_frame_dec_feed(&d, stream.data, 2), 0);
    expect_none(&d);
    CHECK_EQ(kvs_frame_dec_feed(&d, stream.data + 2, 600), 0);
    expect_none(&d);
    CHECK_EQ(kvs_frame_dec_pending(&d), 602);
    CHECK_EQ(kvs_frame_dec_feed(&d, stream.data + 602, stream.len - 603), 0);
    expect_none(&d);
    CHECK_EQ(kvs_frame_dec_feed(&d, stream.data + stream.len - 1, 1), 0);
    expect_frame(&d, 1000, 9);
    expect_none(&d);
    kvs_frame_dec_close(&d);
    kvs_buf_free(&stream);
}

KVS_TEST(decode_zero_length_payload)
{
    const uint8_t z[KVS_FRAME_HEADER] = {0, 0, 0, 0};
    kvs_frame_dec_t d;
    kvs_frame_dec_init(&d, 16);
    CHECK_EQ(kvs_frame_dec_feed(&d, z, sizeof(z)), 0);
    const uint8_t *p = NULL;
    size_t len = 99;
    CHECK_EQ(kvs_frame_dec_next(&d, &p, &len), 1);
    CHECK_EQ(len, 0);
    CHECK(p != NULL);
    expect_none(&d);
    CHECK_EQ(kvs_frame_dec_pending(&d), 0);
    kvs_frame_dec_close(&d);
}

KVS_TEST(decode_exactly_max_is_accepted)
{
    kvs_buf_t stream;
    kvs_buf_init(&stream);
    add_frame(&stream, 1000, 3);
    kvs_frame_dec_t d;
    kvs_frame_dec_init(&d, 1000);
    CHECK_EQ(kvs_frame_dec_feed(&d, stream.data, stream.len), 0);
    expect_frame(&d, 1000, 3);
    CHECK_EQ(d.bad_len, 0);
    kvs_frame_dec_close(&d);
    kvs_buf_free(&stream);
}

/* A header announcing `len` (> max) is rejected as soon as the header alone
 * is in: bad_len says what was announced, and nothing was buffered or
 * allocated for the payload. */
static void check_too_big(uint32_t max, uint32_t len)
{
    uint8_t h[KVS_FRAME_HEADER];
    kvs_frame_put_header(h, len);
    kvs_frame_dec_t d;
    kvs_frame_dec_init(&d, max);
    CHECK_EQ(kvs_frame_dec_feed(&d, h, sizeof(h)), 0);
    const uint8_t *p;
    size_t n;
    CHECK_EQ(kvs_frame_dec_next(&d, &p, &n), KVS_ETOOBIG);
    CHECK_EQ(d.bad_len, len);
    CHECK_EQ(kvs_frame_dec_pending(&d), KVS_FRAME_HEADER);
    if (len > 65536)
        CHECK(d.cap < len); /* no room was made for the payload */
    /* Sticky: the stream cannot be resynchronized. */
    CHECK_EQ(kvs_frame_dec_next(&d, &p, &n), KVS_ETOOBIG);
    CHECK_EQ(d.bad_len, len);
    kvs_frame_dec_close(&d);
}

KVS_TEST(decode_max_plus_one_is_too_big)
{
    check_too_big(1000, 1001);
    check_too_big(KVS_FRAME_DEFAULT_MAX, KVS_FRAME_DEFAULT_MAX + 1);
    check_too_big(KVS_FRAME_DEFAULT_MAX, KVS_FRAME_LEN_MASK);
    check_too_big(0, 1);
}

KVS_TEST(decode_too_big_after_good_frames)
{
    /* Frames before the bad header are still delivered; the error comes at
     * the bad header and stays, however many bytes follow. */
    kvs_buf_t stream;
    kvs_buf_init(&stream);
    add_frame(&stream, 10, 1);
    add_frame(&stream, 0, 2);
    uint8_t h[KVS_FRAME_HEADER];
    kvs_frame_put_header(h, 65);
    CHECK_EQ(kvs_buf_append(&stream, h, sizeof(h)), 0);

    kvs_frame_dec_t d;
    kvs_frame_dec_init(&d, 64);
    CHECK_EQ(kvs_frame_dec_feed(&d, stream.data, stream.len), 0);
    expect_frame(&d, 10, 1);
    expect_frame(&d, 0, 2);
    const uint8_t *p;
    size_t n;
    CHECK_EQ(kvs_frame_dec_next(&d, &p, &n), KVS_ETOOBIG);
    CHECK_EQ(d.bad_len, 65);
    CHECK_EQ(kvs_frame_dec_pending(&d), KVS_FRAME_HEADER);
    uint8_t junk[64] = {0};
    CHECK_EQ(kvs_frame_dec_feed(&d, junk, sizeof(junk)), 0);
    CHECK_EQ(kvs_frame_dec_next(&d, &p, &n), KVS_ETOOBIG);
    CHECK(kvs_frame_dec_pending(&d) <= KVS_FRAME_HEADER + sizeof(junk));
    kvs_frame_dec_close(&d);
    kvs_buf_free(&stream);
}

KVS_TEST(decode_compressed_bit_is_eproto)
{
    /* Even with the whole (small, in-limit) payload present. */
    const uint8_t f[] = {0x80, 0x00, 0x00, 0x03, 'a', 'b', 'c'};
    kvs_frame_dec_t d;
    kvs_frame_dec_init(&d, 1024);
    CHECK_EQ(kvs_frame_dec_feed(&d, f, sizeof(f)), 0);
    const uint8_t *p;
    size_t n;
    CHECK_EQ(kvs_frame_dec_next(&d, &p, &n), KVS_EPROTO);
    CHECK_EQ(kvs_frame_dec_next(&d, &p, &n), KVS_EPROTO);
    kvs_frame_dec_close(&d);

    /* The header alone is enough to decide. */
    kvs_frame_dec_init(&d, 1024);
    CHECK_EQ(kvs_frame_dec_feed(&d, f, KVS_FRAME_HEADER), 0);
    CHECK_EQ(kvs_frame_dec_next(&d, &p, &n), KVS_EPROTO);
    kvs_frame_dec_close(&d);
}

KVS_TEST(decode_pointers_stay_valid_across_next)
{
    kvs_buf_t stream;
    kvs_buf_init(&stream);
    for (unsigned i = 0; i < 8; i++)
        add_frame(&stream, 100 + i, i);
    add_frame(&stream, 50, 99); /* a partial frame stays behind */
    stream.len -= 20;

    kvs_frame_dec_t d;
    kvs_frame_dec_init(&d, 1024);
    CHECK_EQ(kvs_frame_dec_feed(&d, stream.data, stream.len), 0);
    const uint8_t *ptr[8];
    size_t len[8];
    for (unsigned i = 0; i < 8; i++)
        CHECK_EQ(kvs_frame_dec_next(&d, &ptr[i], &len[i]), 1);
    expect_none(&d);
    for (unsigned i = 0; i < 8; i++) {
        CHECK_EQ(len[i], 100 + i);
        CHECK(is_filled(ptr[i], len[i], i));
    }
    kvs_frame_dec_close(&d);
    kvs_buf_free(&stream);
}

KVS_TEST(space_commit_compacts_partial_frame)
{
    kvs_frame_dec_t d;
    kvs_frame_dec_init(&d, 8192);
    CHECK(d.buf == NULL); /* owns no memory until the first space() */

    /* Three whole frames and the first 2,004 bytes of a fourth, read
     * straight into the decoder's space as a socket read would. */
    kvs_buf_t stream;
    kvs_buf_init(&stream);
    for (unsigned i = 0; i < 4; i++)
        add_frame(&stream, 4000, 10 + i);
    const size_t first = 3 * 4004 + 2004;

    uint8_t *base;
    size_t room;
    CHECK_EQ(kvs_frame_dec_space(&d, first, &base, &room), 0);
    CHECK(room >= first);
    memcpy(base, stream.data, first);
    kvs_frame_dec_commit(&d, first);
    for (unsigned i = 0; i < 3; i++)
        expect_frame(&d, 4000, 10 + i);
    expect_none(&d);
    CHECK_EQ(kvs_frame_dec_pending(&d), 2004);

    /* The tail room is smaller than asked for, so the partial frame moves to
     * the front instead of the buffer growing. */
    size_t cap = d.cap;
    CHECK(cap - first < 8192);
    CHECK_EQ(kvs_frame_dec_space(&d, 8192, &base, &room), 0);
    CHECK_EQ(d.cap, cap);
    CHECK(base == d.buf + 2004);
    CHECK(room >= 8192);
    memcpy(base, stream.data + first, stream.len - first);
    kvs_frame_dec_commit(&d, stream.len - first);
    expect_frame(&d, 4000, 13);
    expect_none(&d);
    CHECK_EQ(kvs_frame_dec_pending(&d), 0);
    kvs_frame_dec_close(&d);
    kvs_buf_free(&stream);
}

/* Streams `stream` through space()/commit() in reads of at most `chunk`
 * bytes, asking for `want` bytes of space each time and draining frames
 * after each read, the way kvs_conn does. Checks the capacity bound after
 * every space() and returns the number of frames decoded (skipped ones, in
 * skip mode, not counted). */
static unsigned stream_through(kvs_frame_dec_t *d, const kvs_buf_t *stream, size_t want,
                               size_t chunk)
{
    const size_t bound = (size_t)d->max + KVS_FRAME_HEADER + want;
    unsigned frames = 0;
    size_t off = 0;
    while (off < stream->len) {
        uint8_t *base;
        size_t room;
        CHECK_EQ(kvs_frame_dec_space(d, want, &base, &room), 0);
        CHECK(room >= want);
        if (d->cap > bound)
            fprintf(stderr, "capacity %zu > max %u + header + want %zu = %zu (at offset %zu)\n",
                    d->cap, d->max, want, bound, off);
        CHECK(d->cap <= bound);
        size_t n = stream->len - off;
        if (n > room)
            n = room;
        if (n > chunk)
            n = chunk;
        memcpy(base, stream->data + off, n);
        kvs_frame_dec_commit(d, n);
        off += n;
        const uint8_t *p;
        size_t len;
        int rc;
        while ((rc = kvs_frame_dec_next(d, &p, &len)) != 0) {
            CHECK(rc == 1 || rc == KVS_FRAME_SKIPPED); /* skipped: counted by the caller */
            frames += rc == 1;
        }
    }
    return frames;
}

KVS_TEST(space_never_grows_beyond_max_frame_plus_want)
{
    /* Maximal frames between small ones, read in socket-sized pieces: the
     * buffer must stay within max + header + want however the reads fall. */
    const uint32_t max = 1u << 20;
    kvs_buf_t stream;
    kvs_buf_init(&stream);
    add_frame(&stream, 10, 1);
    add_frame(&stream, max, 2);
    add_frame(&stream, 3, 3);
    add_frame(&stream, max, 4);
    add_frame(&stream, max - 1, 5);

    static const size_t chunks[] = {65536, 1000, 65536 + 7, 1u << 20};
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        kvs_frame_dec_t d;
        kvs_frame_dec_init(&d, max);
        CHECK_EQ(stream_through(&d, &stream, 65536, chunks[i]), 5);
        CHECK_EQ(kvs_frame_dec_pending(&d), 0);
        kvs_frame_dec_close(&d);
    }
    kvs_buf_free(&stream);
}

KVS_TEST(feed_larger_than_buffer)
{
    /* feed() of more than the current capacity (many small frames at once)
     * must make room for it all. */
    kvs_buf_t stream;
    kvs_buf_init(&stream);
    for (unsigned i = 0; i < 2000; i++)
        add_frame(&stream, 60, i);
    kvs_frame_dec_t d;
    kvs_frame_dec_init(&d, 64);
    CHECK_EQ(kvs_frame_dec_feed(&d, stream.data, stream.len), 0);
    for (unsigned i = 0; i < 2000; i++)
        expect_frame(&d, 60, i);
    expect_none(&d);
    kvs_frame_dec_close(&d);
    kvs_buf_free(&stream);
}

/* ---- skipping oversized frames ------------------------------------------- */

/* Expects the next result to be a skipped frame of `len` bytes. */
static void expect_skipped(kvs_frame_dec_t *d, size_t len)
{
    const uint8_t *p = (const uint8_t *)"not touched";
    size_t n = 0;
    CHECK_EQ(kvs_frame_dec_next(d, &p, &n), KVS_FRAME_SKIPPED);
    CHECK(p == NULL);
    CHECK_EQ(n, len);
}

/* small, oversized, small, oversized (twice max), small: in skip mode the
 * oversized ones are reported and stepped over, and the frames around them
 * arrive intact, whichever way the bytes are cut. */
static void skip_stream(kvs_buf_t *stream, uint32_t max)
{
    kvs_buf_init(stream);
    add_frame(stream, 10, 1);
    add_frame(stream, max + 1, 2);
    add_frame(stream, max, 3);
    add_frame(stream, 2 * max, 4);
    add_frame(stream, 0, 5);
}

static void expect_skip_stream(kvs_frame_dec_t *d, uint32_t max)
{
    expect_frame(d, 10, 1);
    expect_skipped(d, max + 1);
    expect_frame(d, max, 3);
    expect_skipped(d, 2 * max);
    expect_frame(d, 0, 5);
    expect_none(d);
}

KVS_TEST(skip_mode_steps_over_oversized_frames)
{
    const uint32_t max = 100;
    kvs_buf_t stream;
    skip_stream(&stream, max);
    kvs_frame_dec_t d;
    kvs_frame_dec_init(&d, max); /* all at once */
    kvs_frame_dec_skip_oversized(&d);
    CHECK_EQ(kvs_frame_dec_feed(&d, stream.data, stream.len), 0);
    expect_skip_stream(&d, max);
    CHECK_EQ(kvs_frame_dec_pending(&d), 0);
    kvs_frame_dec_close(&d);

    /* One byte at a time, draining after each: the skipped frames are
     * reported once their header is in, before their payload. */
    kvs_frame_dec_init(&d, max);
    kvs_frame_dec_skip_oversized(&d);
    unsigned frames = 0, skipped = 0;
    for (size_t i = 0; i < stream.len; i++) {
        CHECK_EQ(kvs_frame_dec_feed(&d, stream.data + i, 1), 0);
        const uint8_t *p;
        size_t n;
        int rc;
        while ((rc = kvs_frame_dec_next(&d, &p, &n)) != 0) {
            CHECK(rc == 1 || rc == KVS_FRAME_SKIPPED);
            if (rc == 1)
                frames++;
            else
                skipped++;
        }
        CHECK(d.cap <= (size_t)max + KVS_FRAME_HEADER + 1); /* nothing skipped is kept */
    }
    CHECK_EQ(frames, 3);
    CHECK_EQ(skipped, 2);
    CHECK_EQ(kvs_frame_dec_pending(&d), 0);
    kvs_frame_dec_close(&d);
    kvs_buf_free(&stream);
}

KVS_TEST(skip_mode_buffers_nothing_of_a_skipped_payload)
{
    /* A huge frame read in socket-sized pieces: the buffer stays within one
     * maximal frame plus the read size, as for frames it keeps. */
    const uint32_t max = 4096;
    kvs_buf_t stream;
    kvs_buf_init(&stream);
    add_frame(&stream, 7, 1);
    add_frame(&stream, 1u << 20, 2);
    add_frame(&stream, max, 3);
    kvs_frame_dec_t d;
    kvs_frame_dec_init(&d, max);
    kvs_frame_dec_skip_oversized(&d);
    CHECK_EQ(stream_through(&d, &stream, 1024, 65536), 2); /* the two kept frames */
    CHECK_EQ(kvs_frame_dec_pending(&d), 0);
    CHECK_EQ(d.skip, 0);
    kvs_frame_dec_close(&d);
    kvs_buf_free(&stream);
}

KVS_TEST(skip_mode_ready_looks_past_the_skipped_payload)
{
    const uint32_t max = 8;
    kvs_frame_dec_t d;
    uint8_t hdr[KVS_FRAME_HEADER];
    kvs_frame_dec_init(&d, max);
    kvs_frame_dec_skip_oversized(&d);
    kvs_frame_put_header(hdr, 20);
    CHECK_EQ(kvs_frame_dec_feed(&d, hdr, sizeof(hdr)), 0);
    CHECK(kvs_frame_dec_ready(&d)); /* the oversized header is reportable at once */
    expect_skipped(&d, 20);
    CHECK(!kvs_frame_dec_ready(&d));
    CHECK_EQ(kvs_frame_dec_feed(&d, (const uint8_t *)"0123456789", 10), 0);
    expect_none(&d); /* 10 of the 20 bytes dropped */
    CHECK(!kvs_frame_dec_ready(&d));
    CHECK_EQ(kvs_frame_dec_feed(&d, (const uint8_t *)"0123456789", 10), 0);
    kvs_frame_put_header(hdr, 2);
    CHECK_EQ(kvs_frame_dec_feed(&d, hdr, sizeof(hdr)), 0);
    CHECK(!kvs_frame_dec_ready(&d)); /* the next frame's payload is not in yet */
    CHECK_EQ(kvs_frame_dec_feed(&d, (const uint8_t *)"ok", 2), 0);
    CHECK(kvs_frame_dec_ready(&d));
    const uint8_t *p;
    size_t n;
    CHECK_EQ(kvs_frame_dec_next(&d, &p, &n), 1);
    CHECK_EQ(n, 2);
    CHECK(memcmp(p, "ok", 2) == 0);
    kvs_frame_dec_close(&d);

    /* Without skip mode the same header is the stream's end, as before. */
    kvs_frame_dec_init(&d, max);
    kvs_frame_put_header(hdr, 20);
    CHECK_EQ(kvs_frame_dec_feed(&d, hdr, sizeof(hdr)), 0);
    CHECK_EQ(kvs_frame_dec_next(&d, &p, &n), KVS_ETOOBIG);
    CHECK_EQ(kvs_frame_dec_next(&d, &p, &n), KVS_ETOOBIG);
    kvs_frame_dec_close(&d);
}

/* ---- kvs_buf ------------------------------------------------------------ */

KVS_TEST(buf_append_and_consume)
{
    kvs_buf_t b;
    kvs_buf_init(&b);
    CHECK(b.data == NULL);
    CHECK_EQ(b.len, 0);
    CHECK_EQ(b.cap, 0);
    CHECK_EQ(kvs_buf_append(&b, NULL, 0), 0);
    CHECK_EQ(b.len, 0);
    CHECK_EQ(kvs_buf_append(&b, "hello ", 6), 0);
    CHECK_EQ(kvs_buf_append(&b, "world", 5), 0);
    CHECK_EQ(b.len, 11);
    CHECK(b.cap >= 11);
    CHECK(memcmp(b.data, "hello world", 11) == 0);
    kvs_buf_consume(&b, 6);
    CHECK_EQ(b.len, 5);
    CHECK(memcmp(b.data, "world", 5) == 0);
    kvs_buf_consume(&b, 0);
    CHECK_EQ(b.len, 5);
    kvs_buf_consume(&b, 100);
    CHECK_EQ(b.len, 0);
    CHECK_EQ(kvs_buf_append(&b, "x", 1), 0);
    CHECK_EQ(b.len, 1);
    CHECK_EQ(b.data[0], 'x');
    kvs_buf_free(&b);
    CHECK(b.data == NULL);
    CHECK_EQ(b.len, 0);
    CHECK_EQ(b.cap, 0);
    /* Reusable after free. */
    CHECK_EQ(kvs_buf_append(&b, "again", 5), 0);
    CHECK(memcmp(b.data, "again", 5) == 0);
    kvs_buf_free(&b);
}

KVS_TEST(buf_reserve_keeps_content)
{
    kvs_buf_t b;
    kvs_buf_init(&b);
    CHECK_EQ(kvs_buf_reserve(&b, 0), 0);
    CHECK_EQ(kvs_buf_append(&b, "abc", 3), 0);
    CHECK_EQ(kvs_buf_reserve(&b, 100000), 0);
    CHECK(b.cap - b.len >= 100000);
    CHECK_EQ(b.len, 3);
    CHECK(memcmp(b.data, "abc", 3) == 0);
    /* Reserving what is already there does not move the data. */
    uint8_t *before = b.data;
    CHECK_EQ(kvs_buf_reserve(&b, 1000), 0);
    CHECK(b.data == before);
    kvs_buf_free(&b);
}

KVS_TEST(buf_reserve_impossible_is_enomem)
{
    kvs_buf_t b;
    kvs_buf_init(&b);
    CHECK_EQ(kvs_buf_append(&b, "keep", 4), 0);
    uint8_t *data = b.data;
    size_t cap = b.cap;
    CHECK_EQ(kvs_buf_reserve(&b, SIZE_MAX), -ENOMEM);
    CHECK_EQ(kvs_buf_reserve(&b, SIZE_MAX - 3), -ENOMEM);
    /* Unchanged on failure. */
    CHECK(b.data == data);
    CHECK_EQ(b.cap, cap);
    CHECK_EQ(b.len, 4);
    CHECK(memcmp(b.data, "keep", 4) == 0);
    kvs_buf_free(&b);
}

KVS_TEST(buf_many_appends)
{
    kvs_buf_t b;
    kvs_buf_init(&b);
    uint8_t chunk[777];
    size_t total = 0;
    for (unsigned i = 0; i < 2000; i++) {
        size_t n = i % sizeof(chunk);
        fill(chunk, n, i);
        CHECK_EQ(kvs_buf_append(&b, chunk, n), 0);
        total += n;
    }
    CHECK_EQ(b.len, total);
    size_t off = 0;
    for (unsigned i = 0; i < 2000; i++) {
        size_t n = i % sizeof(chunk);
        CHECK(is_filled(b.data + off, n, i));
        off += n;
    }
    /* Consume a prefix and the rest moves to the front intact. */
    size_t first = 0 + 1 + 2; /* frames 0, 1 and 2 */
    kvs_buf_consume(&b, first);
    CHECK_EQ(b.len, total - first);
    CHECK(is_filled(b.data, 3, 3));
    kvs_buf_free(&b);
}

/* ready() says whether next() would hand out something now. */
KVS_TEST(ready_means_next_has_a_frame_or_an_error)
{
    kvs_frame_dec_t d;
    uint8_t hdr[KVS_FRAME_HEADER];
    const uint8_t *p;
    size_t n;
    kvs_frame_dec_init(&d, 100);
    CHECK(!kvs_frame_dec_ready(&d));
    kvs_frame_put_header(hdr, 3);
    CHECK_EQ(kvs_frame_dec_feed(&d, hdr, 2), 0);
    CHECK(!kvs_frame_dec_ready(&d)); /* half a header */
    CHECK_EQ(kvs_frame_dec_feed(&d, hdr + 2, 2), 0);
    CHECK_EQ(kvs_frame_dec_feed(&d, (const uint8_t *)"ab", 2), 0);
    CHECK(!kvs_frame_dec_ready(&d)); /* payload incomplete */
    CHECK_EQ(kvs_frame_dec_feed(&d, (const uint8_t *)"c", 1), 0);
    CHECK(kvs_frame_dec_ready(&d));
    CHECK_EQ(kvs_frame_dec_next(&d, &p, &n), 1);
    CHECK(!kvs_frame_dec_ready(&d));
    kvs_frame_put_header(hdr, 101); /* too big: an error is ready at once */
    CHECK_EQ(kvs_frame_dec_feed(&d, hdr, sizeof(hdr)), 0);
    CHECK(kvs_frame_dec_ready(&d));
    CHECK_EQ(kvs_frame_dec_next(&d, &p, &n), KVS_ETOOBIG);
    kvs_frame_dec_close(&d);
}

/* space_cap() predicts exactly the capacity space() then has. */
KVS_TEST(space_cap_predicts_growth)
{
    kvs_frame_dec_t d;
    uint8_t *base;
    size_t len;
    kvs_frame_dec_init(&d, 1u << 20);
    for (int i = 0; i < 40; i++) {
        size_t want = 1000u + (size_t)i * 7919u;
        size_t cap = kvs_frame_dec_space_cap(&d, want);
        CHECK_EQ(kvs_frame_dec_space(&d, want, &base, &len), 0);
        CHECK_EQ(d.cap, cap);
        CHECK(len >= want);
        kvs_frame_dec_commit(&d, want / 2); /* a partial frame that keeps growing */
    }
    kvs_frame_dec_close(&d);
}

/* Whole frames left unconsumed past what a maximal frame needs (an owner
 * reading ahead of delivery) grow the buffer by half at least: grown by
 * one read's length, 12.5 MiB read 64 KiB at a time reallocated (copied
 * whole, under a sanitizer's realloc) 200 times. Nothing read is lost. */
KVS_TEST(growth_past_a_maximal_frame_is_geometric)
{
    enum { MAX = 65536, READ = 65536, READS = 200, PAYLOAD = 1000 };
    kvs_frame_dec_t d;
    uint8_t *base;
    size_t len;
    kvs_frame_dec_init(&d, MAX);
    size_t grows = 0, prev = 0, frames = 0;
    uint8_t frame[KVS_FRAME_HEADER + PAYLOAD];
    memset(frame, 'x', sizeof(frame));
    kvs_frame_put_header(frame, PAYLOAD);
    for (int i = 0; i < READS; i++) {
        size_t cap = kvs_frame_dec_space_cap(&d, READ);
        size_t least = kvs_frame_dec_space_cap_least(&d, READ); /* by what the read needs */
        CHECK(least == cap || (least == d.end + READ && least < cap));
        CHECK_EQ(kvs_frame_dec_space(&d, READ, &base, &len), 0);
        CHECK_EQ(d.cap, cap);
        CHECK(len >= READ);
        if (d.cap != prev)
            grows++;
        prev = d.cap;
        CHECK(d.cap <= 2 * (d.end + READ)); /* never more than twice what it needs */
        for (size_t off = 0; off + sizeof(frame) <= READ; off += sizeof(frame)) {
            memcpy(base + off, frame, sizeof(frame));
            kvs_frame_dec_commit(&d, sizeof(frame));
            frames++;
        }
    }
    CHECK(grows <= 16);
    const uint8_t *p;
    size_t n, got = 0;
    while (kvs_frame_dec_next(&d, &p, &n) == 1) {
        CHECK_EQ(n, PAYLOAD);
        got++;
    }
    CHECK_EQ(got, frames);
    kvs_frame_dec_close(&d);
}

/* shrink() frees a large, empty buffer, and only that. */
KVS_TEST(shrink_frees_only_an_empty_large_buffer)
{
    kvs_frame_dec_t d;
    uint8_t *base;
    size_t len;
    const uint8_t *p;
    size_t n;
    kvs_frame_dec_init(&d, 1u << 20);
    CHECK_EQ(kvs_frame_dec_space(&d, 500000, &base, &len), 0);
    kvs_frame_put_header(base, 10);
    kvs_frame_dec_commit(&d, KVS_FRAME_HEADER + 5);
    CHECK(!kvs_frame_dec_shrink(&d, 4096)); /* holds a partial frame */
    CHECK_EQ(kvs_frame_dec_feed(&d, (const uint8_t *)"12345", 5), 0);
    CHECK_EQ(kvs_frame_dec_next(&d, &p, &n), 1);
    CHECK(!kvs_frame_dec_shrink(&d, 1u << 30)); /* small enough to keep */
    CHECK(kvs_frame_dec_shrink(&d, 4096));
    CHECK_EQ(d.cap, 0);
    CHECK(d.buf == NULL);
    CHECK_EQ(kvs_frame_dec_space(&d, 10, &base, &len), 0); /* usable again */
    kvs_frame_dec_close(&d);
}

KVS_TEST_MAIN(KVS_CASE(header_put_is_big_endian),
              KVS_CASE(growth_past_a_maximal_frame_is_geometric), KVS_CASE(header_round_trip),
              KVS_CASE(header_bit31_is_compressed_flag), KVS_CASE(decode_one_byte_at_a_time),
              KVS_CASE(decode_many_frames_in_one_feed), KVS_CASE(decode_frame_split_across_feeds),
              KVS_CASE(decode_zero_length_payload), KVS_CASE(decode_exactly_max_is_accepted),
              KVS_CASE(decode_max_plus_one_is_too_big), KVS_CASE(decode_too_big_after_good_frames),
              KVS_CASE(decode_compressed_bit_is_eproto),
              KVS_CASE(decode_pointers_stay_valid_across_next),
              KVS_CASE(space_commit_compacts_partial_frame),
              KVS_CASE(space_never_grows_beyond_max_frame_plus_want),
              KVS_CASE(feed_larger_than_buffer), KVS_CASE(buf_append_and_consume),
              KVS_CASE(buf_reserve_keeps_content), KVS_CASE(buf_reserve_impossible_is_enomem),
              KVS_CASE(buf_many_appends), KVS_CASE(ready_means_next_has_a_frame_or_an_error),
              KVS_CASE(space_cap_predicts_growth),
              KVS_CASE(shrink_frees_only_an_empty_large_buffer),
              KVS_CASE(skip_mode_steps_over_oversized_frames),
              KVS_CASE(skip_mode_buffers_nothing_of_a_skipped_payload),
              KVS_CASE(skip_mode_ready_looks_past_the_skipped_payload))

/*
 * kvs_frame: streaming decoder and header codec for length-prefixed frames.
 *
 * The decoder owns one buffer. Readers ask for space at its end, read into
 * it, commit, then pull complete frames out as pointers into the buffer. The
 * region [start, end) holds unconsumed bytes. Before handing out space the
 * decoder compacts (moves the unconsumed tail to the front) or grows, but
 * never beyond what the largest allowed frame needs, so a peer cannot make
 * it allocate more than max + header + read size.
 *
 * Invariant on errors: once a header announces an oversized or compressed
 * frame, `err` sticks and next() returns it forever; the stream has no way
 * to resynchronize, so the owner must close the connection. Except in skip
 * mode, for oversized frames: the header is consumed, `skip` counts the
 * payload bytes still to come, and next() drops buffered bytes against it
 * before it looks for the following header; the region [start, end) then
 * begins with up to `skip` bytes that belong to no frame.
 */
#include "kvs_frame.h"
#include "kvs_err.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void kvs_frame_put_header(uint8_t out[KVS_FRAME_HEADER], uint32_t len)
{
    out[0] = (uint8_t)(len >> 24);
    out[1] = (uint8_t)(len >> 16);
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
}

uint32_t kvs_frame_get_header(const uint8_t in[KVS_FRAME_HEADER], int *compressed)
{
    uint32_t h = (uint32_t)in[0] << 24 | (uint32_t)in[1] << 16 | (uint32_t)in[2] << 8 | in[3];
    if (compressed != NULL)
        *compressed = (h & KVS_FRAME_COMPRESSED) != 0;
    return h & KVS_FRAME_LEN_MASK;
}

void kvs_frame_dec_init(kvs_frame_dec_t *d, uint32_t max)
{
    memset(d, 0, sizeof(*d));
    d->max = max;
}

void kvs_frame_dec_skip_oversized(kvs_frame_dec_t *d)
{
    d->skip_big = 1;
}

void kvs_frame_dec_close(kvs_frame_dec_t *d)
{
    free(d->buf);
    d->buf = NULL;
    d->cap = d->start = d->end = 0;
}

/* Where the data will start and end once space() has rewound or compacted
 * for `want` more bytes. */
static size_t end_after_compaction(const kvs_frame_dec_t *d, size_t want)
{
    if (d->start == d->end)
        return 0; /* empty: rewind for free */
    if (d->cap - d->end < want && d->start > 0)
        return d->end - d->start; /* the consumed prefix is free space */
    return d->end;
}

/* kvs_frame_dec_space_cap, or with `least` kvs_frame_dec_space_cap_least. */
static size_t grown_cap(const kvs_frame_dec_t *d, size_t want, int least)
{
    size_t end = end_after_compaction(d, want);
    if (d->cap - end >= want)
        return d->cap;
    if (least)
        return end + want;
    /* Grow by doubling, but never past what a maximal frame plus one read
     * needs. */
    size_t limit = (size_t)d->max + KVS_FRAME_HEADER + want;
    if (end + want > limit) {
        /* More only when the owner left whole frames unconsumed (a
         * connection reading ahead of delivery), and then by half at
         * least: grown by one read's length each read, the buffer would be
         * copied whole once a read (quadratic in what is buffered). */
        size_t grown = d->cap + d->cap / 2;
        return grown > end + want ? grown : end + want;
    }
    size_t cap = d->cap ? d->cap : 16384;
    while (cap - end < want)
        cap *= 2;
    return cap > limit ? limit : cap;
}

size_t kvs_frame_dec_space_cap(const kvs_frame_dec_t *d, size_t want)
{
    return grown_cap(d, want, 0);
}

size_t kvs_frame_dec_space_cap_least(const kvs_frame_dec_t *d, size_t want)
{
    return grown_cap(d, want, 1);
}

/* kvs_frame_dec_space, or with `least` kvs_frame_dec_space_least. */
static int space(kvs_frame_dec_t *d, size_t want, int least, uint8_t **base, size_t *len)
{
    size_t cap = grown_cap(d, want, least);
    size_t end = end_after_compaction(d, want);
    if (end != d->end) {
        if (end > 0)
            memmove(d->buf, d->buf + d->start, end);
        d->start = 0;
        d->end = end;
    }
    if (cap != d->cap) {
        uint8_t *p = realloc(d->buf, cap);
        if (p == NULL)
            return -ENOMEM;
        d->buf = p;
        d->cap = cap;
    }
    *base = d->buf + d->end;
    *len = d->cap - d->end;
    return 0;
}

int kvs_frame_dec_space(kvs_frame_dec_t *d, size_t want, uint8_t **base, size_t *len)
{
    return space(d, want, 0, base, len);
}

int kvs_frame_dec_space_least(kvs_frame_dec_t *d, size_t want, uint8_t **base, size_t *len)
{
    return space(d, want, 1, base, len);
}

void kvs_frame_dec_commit(kvs_frame_dec_t *d, size_t n)
{
    d->end += n;
}

int kvs_frame_dec_feed(kvs_frame_dec_t *d, const uint8_t *data, size_t len)
{
    uint8_t *base;
    size_t room;
    int rc = kvs_frame_dec_space(d, len, &base, &room);
    if (rc != 0)
        return rc;
    memcpy(base, data, len);
    kvs_frame_dec_commit(d, len);
    return 0;
}

/* Drops buffered bytes of a skipped frame's payload; returns the bytes of
 * it still to come. */
static size_t discard(kvs_frame_dec_t *d)
{
    size_t n = d->end - d->start;
    if (n > d->skip)
        n = d->skip;
    d->start += n;
    d->skip -= n;
    return d->skip;
}

int kvs_frame_dec_next(kvs_frame_dec_t *d, const uint8_t **payload, size_t *len)
{
    if (d->bad_len != 0)
        return KVS_ETOOBIG;
    if (d->skip > 0 && discard(d) > 0)
        return 0;
    size_t avail = d->end - d->start;
    if (avail < KVS_FRAME_HEADER)
        return 0;
    int compressed;
    uint32_t n = kvs_frame_get_header(d->buf + d->start, &compressed);
    if (compressed)
        return KVS_EPROTO;
    if (n > d->max && d->skip_big) {
        d->start += KVS_FRAME_HEADER;
        d->skip = n;
        discard(d);
        *payload = NULL;
        *len = n;
        return KVS_FRAME_SKIPPED;
    }
    if (n > d->max) {
        d->bad_len = n;
        return KVS_ETOOBIG;
    }
    if (avail - KVS_FRAME_HEADER < n)
        return 0;
    *payload = d->buf + d->start + KVS_FRAME_HEADER;
    *len = n;
    d->start += KVS_FRAME_HEADER + n;
    return 1;
}

size_t kvs_frame_dec_pending(const kvs_frame_dec_t *d)
{
    return d->end - d->start;
}

void kvs_frame_dec_data(const kvs_frame_dec_t *d, const uint8_t **p, size_t *len)
{
    *p = d->buf + d->start;
    *len = d->end - d->start;
}

void kvs_frame_dec_consume(kvs_frame_dec_t *d, size_t n)
{
    d->start += n <= d->end - d->start ? n : d->end - d->start;
}

int kvs_frame_dec_ready(const kvs_frame_dec_t *d)
{
    if (d->bad_len != 0)
        return 1;
    size_t avail = d->end - d->start;
    if (avail < d->skip + KVS_FRAME_HEADER) /* a skipped payload comes first */
        return 0;
    avail -= d->skip;
    int compressed;
    uint32_t n = kvs_frame_get_header(d->buf + d->start + d->skip, &compressed);
    return compressed || n > d->max || avail - KVS_FRAME_HEADER >= n;
}

int kvs_frame_dec_shrink(kvs_frame_dec_t *d, size_t keep)
{
    if (d->start != d->end || d->cap <= keep)
        return 0;
    free(d->buf);
    d->buf = NULL;
    d->cap = d->start = d->end = 0;
    return 1;
}

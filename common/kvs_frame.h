/*
 * kvs_frame: the length-prefixed framing of the kvs wire protocol, pure
 * (no I/O). A frame is a 4-byte big-endian header followed by the payload:
 * bits 0-30 of the header are the payload length, bit 31 says the payload is
 * compressed (reserved: rejected until compression exists).
 *
 * The decoder is streaming: bytes are read straight into its buffer (no
 * copy), then complete frames are handed out as pointers into that buffer.
 * The size check happens on the header, before a byte of an oversized
 * payload is buffered. By default an oversized frame ends the stream; a
 * decoder told to skip them (kvs_frame_dec_skip_oversized) reports each one
 * and discards its payload as it arrives instead, still buffering none of
 * it.
 */
#ifndef KVS_FRAME_H
#define KVS_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define KVS_FRAME_HEADER 4u
#define KVS_FRAME_COMPRESSED 0x80000000u
#define KVS_FRAME_LEN_MASK 0x7fffffffu
#define KVS_FRAME_DEFAULT_MAX (4u * 1024u * 1024u)
#define KVS_FRAME_SKIPPED 2 /* kvs_frame_dec_next: an oversized frame was stepped over */

/* Writes the header for a payload of `len` bytes into out[0..3]. */
void kvs_frame_put_header(uint8_t out[KVS_FRAME_HEADER], uint32_t len);

/* Reads a header: returns the payload length with the flag bit masked off and
 * stores the flag bit in *compressed (may be NULL). */
uint32_t kvs_frame_get_header(const uint8_t in[KVS_FRAME_HEADER], int *compressed);

typedef struct kvs_frame_dec_s {
    uint8_t *buf; /* owned; capacity `cap` */
    size_t cap;
    size_t start;     /* first unconsumed byte */
    size_t end;       /* one past the last byte read */
    uint32_t max;     /* largest payload accepted */
    uint32_t bad_len; /* on KVS_ETOOBIG: the announced length */
    int skip_big;     /* step over oversized frames instead of failing */
    size_t skip;      /* bytes of a skipped frame's payload still to discard */
} kvs_frame_dec_t;

/* Initializes a decoder that accepts payloads up to `max` bytes. Owns no
 * memory until the first kvs_frame_dec_space(). */
void kvs_frame_dec_init(kvs_frame_dec_t *d, uint32_t max);

/* Makes the decoder step over frames whose header announces more than
 * `max`, rather than stop: kvs_frame_dec_next reports each such frame once
 * (KVS_FRAME_SKIPPED) and then discards its payload as the bytes arrive,
 * buffering none of it. Only for a peer that keeps to the framing even
 * when it breaks the size limit (the router's link to a worker): one
 * oversized answer then costs its own request, not the connection. */
void kvs_frame_dec_skip_oversized(kvs_frame_dec_t *d);

/* Frees the decoder's buffer. */
void kvs_frame_dec_close(kvs_frame_dec_t *d);

/* Returns space to read at least `want` more bytes into (the buffer grows or
 * compacts as needed, never beyond what one maximal frame needs plus `want`
 * unless whole frames left unconsumed fill that: then by half at least).
 * Returns 0 and sets *base and *len, or -ENOMEM. The space is valid until the
 * next call on the decoder. */
int kvs_frame_dec_space(kvs_frame_dec_t *d, size_t want, uint8_t **base, size_t *len);

/* Records that `n` bytes were written at the space last returned. */
void kvs_frame_dec_commit(kvs_frame_dec_t *d, size_t n);

/* Appends `len` bytes copied from `data` (for callers that do not read into
 * the decoder's space). Returns 0 or -ENOMEM. */
int kvs_frame_dec_feed(kvs_frame_dec_t *d, const uint8_t *data, size_t len);

/* Takes the next complete frame. Returns:
 *   1             a frame: *payload and *len point into the decoder's buffer
 *                 and stay valid until the next call that adds bytes
 *                 (space or feed); consecutive next() calls keep earlier
 *                 frames valid;
 *   0             no complete frame buffered yet;
 *   KVS_FRAME_SKIPPED  (only after kvs_frame_dec_skip_oversized) the
 *                 header announces more than `max`: *payload is NULL and
 *                 *len the announced length; the payload is discarded as
 *                 it arrives, and the frames after it follow as usual;
 *   KVS_ETOOBIG   the header announces more than `max` (d->bad_len holds
 *                 the length); the stream cannot be resynchronized;
 *   KVS_EPROTO    the compressed bit is set (unsupported).
 * After an error the decoder stays in error; close the connection. */
int kvs_frame_dec_next(kvs_frame_dec_t *d, const uint8_t **payload, size_t *len);

/* Bytes buffered and not yet handed out (a partial frame, if any). */
size_t kvs_frame_dec_pending(const kvs_frame_dec_t *d);

/* The bytes buffered and not yet handed out, for a codec other than
 * frames that splits them itself (valid until the next call that adds
 * bytes), and consuming what it took. */
void kvs_frame_dec_data(const kvs_frame_dec_t *d, const uint8_t **p, size_t *len);
void kvs_frame_dec_consume(kvs_frame_dec_t *d, size_t n);

/* True when next() would return a frame or an error now (rather than 0):
 * a complete frame, or a header that breaks the rules, is buffered. */
int kvs_frame_dec_ready(const kvs_frame_dec_t *d);

/* The capacity the buffer will have after kvs_frame_dec_space(d, want)
 * (today's capacity when no growth is needed). For budgeting before the
 * allocation happens. */
size_t kvs_frame_dec_space_cap(const kvs_frame_dec_t *d, size_t want);

/* As kvs_frame_dec_space and its _cap, but growing by only what the read
 * needs (no doubling): for an owner whose budget refuses the larger
 * growth, before it refuses the read. */
int kvs_frame_dec_space_least(kvs_frame_dec_t *d, size_t want, uint8_t **base, size_t *len);
size_t kvs_frame_dec_space_cap_least(const kvs_frame_dec_t *d, size_t want);

/* Gives the buffer's memory back when it holds nothing and its capacity is
 * above `keep` bytes. Returns 1 if it did. */
int kvs_frame_dec_shrink(kvs_frame_dec_t *d, size_t keep);

#endif

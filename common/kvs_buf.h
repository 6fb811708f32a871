/*
 * kvs_buf: a growable byte buffer. The building block of output queues: a
 * connection appends encoded frames to one, then hands the bytes to the
 * socket in one write per loop turn.
 */
#ifndef KVS_BUF_H
#define KVS_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct kvs_buf_s {
    uint8_t *data; /* owned; NULL until the first reserve */
    size_t len;
    size_t cap;
} kvs_buf_t;

/* Initializes an empty buffer (no allocation). */
void kvs_buf_init(kvs_buf_t *b);

/* Frees the memory; the buffer is empty and reusable afterwards. */
void kvs_buf_free(kvs_buf_t *b);

/* Makes room for `extra` more bytes past len. Returns 0 or -ENOMEM (the
 * buffer is unchanged on failure). */
int kvs_buf_reserve(kvs_buf_t *b, size_t extra);

/* Appends `n` bytes. Returns 0 or -ENOMEM. */
int kvs_buf_append(kvs_buf_t *b, const void *p, size_t n);

/* Drops the first `n` bytes (memmove of the rest). */
void kvs_buf_consume(kvs_buf_t *b, size_t n);

#endif

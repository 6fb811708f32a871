/*
 * kvs_buf: a growable byte buffer. The building block of output queues: a
 * connection appends encoded frames to one, then hands the bytes to the
 * socket in one write per loop turn.
 */
#ifndef KVS_BUF_H
#define KVS_BUF_H

#include <stddef.h>
#include <stdint.h>

/* The smallest allocation a buffer makes (bytes; then it doubles). */
#define KVS_BUF_FIRST 64u

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
 * buffer is unchanged on failure). Both this and kvs_buf_append must have
 * their result checked (warn_unused_result): an append that failed and
 * went unnoticed is an answer with a hole in it. */
int kvs_buf_reserve(kvs_buf_t *b, size_t extra) __attribute__((warn_unused_result));

/* Appends `n` bytes. Returns 0 or -ENOMEM. */
int kvs_buf_append(kvs_buf_t *b, const void *p, size_t n) __attribute__((warn_unused_result));

/* Appends `n` bytes into room a kvs_buf_reserve already made (asserted):
 * never allocates, so it cannot fail. */
void kvs_buf_put(kvs_buf_t *b, const void *p, size_t n);

/* Drops the first `n` bytes (memmove of the rest). */
void kvs_buf_consume(kvs_buf_t *b, size_t n);

#endif

/*
 * kvs_buf: growable byte buffer. Capacity doubles so a stream of appends
 * costs amortized O(1); memory is only returned by kvs_buf_free, which
 * connections call once a buffer that grew past KVS_CONN_KEEP_BUFFER has
 * drained. The first allocation is the smallest power of two that holds
 * what was asked (KVS_BUF_FIRST at least), not a fixed page: a router
 * holds one buffer per answer it owes, thousands for a client that
 * pipelines without reading, and most answers are a few bytes.
 */
#include "kvs_buf.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

void kvs_buf_init(kvs_buf_t *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void kvs_buf_free(kvs_buf_t *b)
{
    free(b->data);
    kvs_buf_init(b);
}

int kvs_buf_reserve(kvs_buf_t *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return 0;
    if (extra > SIZE_MAX / 2 - b->len)
        return -ENOMEM;
    size_t need = b->len + extra;
    size_t cap = b->cap ? b->cap : KVS_BUF_FIRST;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (p == NULL)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int kvs_buf_append(kvs_buf_t *b, const void *p, size_t n)
{
    int rc = kvs_buf_reserve(b, n);
    if (rc != 0)
        return rc;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void kvs_buf_put(kvs_buf_t *b, const void *p, size_t n)
{
    assert(b->cap - b->len >= n);
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
}

void kvs_buf_consume(kvs_buf_t *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

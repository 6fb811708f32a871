/*
 * kvs_resp: hand-rolled protobuf encoding of CommandResponse. The field
 * numbers below must match proto/kvs.proto; test_msg checks the output
 * against protobuf-c's own decoder so a drift cannot go unnoticed.
 */
#include "kvs_resp.h"
#include "kvs_frame.h"
#include "kvs_varint.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Wire types */
#define WT_VARINT 0
#define WT_I64 1
#define WT_LEN 2

/* CommandResponse fields */
#define F_STATUS 1
#define F_MESSAGE 2
#define F_VALUES 3
#define F_PAIRS 4
#define F_CURSOR 5
#define F_POSITION 6
#define F_OPS 7
#define F_OUTCOME_UNKNOWN 8
#define F_CLUSTER_MAP 9
/* Kvpair fields */
#define F_PAIR_KEY 1
#define F_PAIR_VALUE 2
/* Value fields */
#define F_V_STRING 1
#define F_V_BINARY 2
#define F_V_INTEGER 3
#define F_V_FLOAT 4
#define F_V_BOOL 5

static uint8_t *room(kvs_resp_t *r, size_t n)
{
    if (r->err != 0)
        return NULL;
    if (kvs_buf_reserve(r->out, n) != 0) {
        r->err = -ENOMEM;
        return NULL;
    }
    return r->out->data + r->out->len;
}

/* tag + length + bytes */
static void put_len_field(kvs_resp_t *r, unsigned field, const void *p, size_t len)
{
    uint8_t *d = room(r, 1 + 10 + len);
    if (d == NULL)
        return;
    size_t n = kvs_varint_put(d, (uint64_t)field << 3 | WT_LEN);
    n += kvs_varint_put(d + n, len);
    if (len > 0)
        memcpy(d + n, p, len);
    r->out->len += n + len;
}

void kvs_resp_begin(kvs_resp_t *r, kvs_buf_t *out)
{
    r->out = out;
    r->start = out->len;
    r->err = 0;
    r->value_lengths = 0;
    if (room(r, KVS_FRAME_HEADER) != NULL)
        out->len += KVS_FRAME_HEADER;
}

void kvs_resp_status(kvs_resp_t *r, uint32_t status)
{
    uint8_t *d = room(r, 11);
    if (d == NULL || status == 0)
        return;
    size_t n = kvs_varint_put(d, F_STATUS << 3 | WT_VARINT);
    n += kvs_varint_put(d + n, status);
    r->out->len += n;
}

void kvs_resp_message(kvs_resp_t *r, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(text))
        n = sizeof(text) - 1;
    put_len_field(r, F_MESSAGE, text, (size_t)n);
}

void kvs_resp_message_parts(kvs_resp_t *r, const char *const *parts, size_t n)
{
    char text[1024];
    size_t len = 0;
    for (size_t i = 0; i < n && len < sizeof(text) - 1; i++) {
        size_t k = strlen(parts[i]);
        if (k > sizeof(text) - 1 - len)
            k = sizeof(text) - 1 - len;
        memcpy(text + len, parts[i], k);
        len += k;
    }
    put_len_field(r, F_MESSAGE, text, len);
}

void kvs_resp_value(kvs_resp_t *r, const void *enc, size_t len)
{
    put_len_field(r, F_VALUES, enc, len);
}

void kvs_resp_bool(kvs_resp_t *r, int b)
{
    uint8_t v[4];
    put_len_field(r, F_VALUES, v, kvs_value_encode_bool(v, b));
}

/* One element of `pairs`: the key, then the value's field unless `enc` is
 * NULL (keys only). */
static void put_pair(kvs_resp_t *r, const void *key, size_t klen, const void *enc, size_t len)
{
    size_t inner = 1 + kvs_varint_len(klen) + klen;
    if (enc != NULL)
        inner += 1 + kvs_varint_len(len) + len;
    uint8_t *d = room(r, 1 + 10 + inner);
    if (d == NULL)
        return;
    size_t n = kvs_varint_put(d, F_PAIRS << 3 | WT_LEN);
    n += kvs_varint_put(d + n, inner);
    n += kvs_varint_put(d + n, F_PAIR_KEY << 3 | WT_LEN);
    n += kvs_varint_put(d + n, klen);
    if (klen > 0)
        memcpy(d + n, key, klen);
    n += klen;
    if (enc != NULL) {
        n += kvs_varint_put(d + n, F_PAIR_VALUE << 3 | WT_LEN);
        n += kvs_varint_put(d + n, len);
        if (len > 0)
            memcpy(d + n, enc, len);
        n += len;
    }
    r->out->len += n;
}

void kvs_resp_pair(kvs_resp_t *r, const void *key, size_t klen, const void *enc, size_t len)
{
    static const uint8_t none[1];
    put_pair(r, key, klen, enc != NULL ? enc : none, len);
}

void kvs_resp_key(kvs_resp_t *r, const void *key, size_t klen)
{
    put_pair(r, key, klen, NULL, 0);
}

void kvs_resp_cursor(kvs_resp_t *r, const void *cur, size_t len)
{
    if (len > 0)
        put_len_field(r, F_CURSOR, cur, len);
}

void kvs_resp_position(kvs_resp_t *r, const void *tok, size_t len)
{
    if (len > 0)
        put_len_field(r, F_POSITION, tok, len);
}

void kvs_resp_ops(kvs_resp_t *r, const void *packed, size_t len)
{
    put_len_field(r, F_OPS, packed, len);
}

void kvs_resp_cluster_map(kvs_resp_t *r, const void *digest, size_t len)
{
    put_len_field(r, F_CLUSTER_MAP, digest, len);
}

void kvs_resp_outcome_unknown(kvs_resp_t *r)
{
    uint8_t *d = room(r, 2);
    if (d == NULL)
        return;
    d[0] = F_OUTCOME_UNKNOWN << 3 | WT_VARINT;
    d[1] = 1;
    r->out->len += 2;
}

size_t kvs_resp_size(const kvs_resp_t *r)
{
    /* kvs_resp_begin without memory for the header wrote nothing */
    return r->out->len >= r->start + KVS_FRAME_HEADER ? r->out->len - r->start - KVS_FRAME_HEADER
                                                      : 0;
}

int kvs_resp_end(kvs_resp_t *r)
{
    if (r->err != 0) {
        kvs_resp_abort(r);
        return r->err;
    }
    kvs_frame_put_header(r->out->data + r->start, (uint32_t)kvs_resp_size(r));
    return 0;
}

void kvs_resp_abort(kvs_resp_t *r)
{
    if (r->out->len > r->start)
        r->out->len = r->start;
}

size_t kvs_value_encode_int(uint8_t *buf, int64_t v)
{
    /* int64, as the original protocol has it (not sint64): the two's
     * complement bits as a varint, so a negative number takes 10 bytes. */
    size_t n = kvs_varint_put(buf, F_V_INTEGER << 3 | WT_VARINT);
    return n + kvs_varint_put(buf + n, (uint64_t)v);
}

size_t kvs_value_encode_float(uint8_t *buf, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof(bits));
    size_t n = kvs_varint_put(buf, F_V_FLOAT << 3 | WT_I64);
    for (int i = 0; i < 8; i++)
        buf[n++] = (uint8_t)(bits >> (8 * i));
    return n;
}

size_t kvs_value_encode_bool(uint8_t *buf, int v)
{
    buf[0] = F_V_BOOL << 3 | WT_VARINT;
    buf[1] = v ? 1 : 0;
    return 2;
}

size_t kvs_value_encode_bytes(uint8_t *buf, int is_string, const void *p, size_t len)
{
    size_t n = kvs_varint_put(buf, (uint64_t)(is_string ? F_V_STRING : F_V_BINARY) << 3 | WT_LEN);
    n += kvs_varint_put(buf + n, len);
    if (len > 0)
        memcpy(buf + n, p, len);
    return n + len;
}

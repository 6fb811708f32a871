/*
 * kvs_varint: protobuf's base-128 varints, for the code that reads or
 * writes wire bytes without protobuf-c (the request and answer fast paths,
 * answers built in place, position tokens, kvs-bench).
 */
#ifndef KVS_VARINT_H
#define KVS_VARINT_H

#include "kvs_err.h"

#include <stddef.h>
#include <stdint.h>

#define KVS_VARINT_MAX 10 /* bytes of the longest varint (64 bits) */

/* Bytes kvs_varint_put writes for v: 1 to KVS_VARINT_MAX. */
static inline size_t kvs_varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Writes v at p, which has room for kvs_varint_len(v) bytes; returns the
 * number of bytes written. */
static inline size_t kvs_varint_put(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

/* Reads the varint at *p (ending before `end`) into *v and moves *p past
 * it: at most KVS_VARINT_MAX bytes, and no bits past 64 (a 10th byte of 0
 * or 1), as Go's protowire reads them. protobuf-c takes such bits (a bool
 * of 1 << 64 is true there, false in C++ and Java): kvs_msg_check_wire
 * refuses what protobuf-c decodes that this refuses, so the paths that
 * read wire bytes themselves (which give up on what this refuses and leave
 * it to protobuf-c) end at the same answer. Returns 0, or KVS_EPROTO when
 * the varint is cut short, longer or past 64 bits. */
static inline int kvs_varint_get(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    for (unsigned shift = 0; *p < end && shift < 64; shift += 7) {
        uint8_t b = *(*p)++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (b < 0x80) {
            if (shift == 63 && b > 1)
                return KVS_EPROTO;
            *v = x;
            return 0;
        }
    }
    return KVS_EPROTO;
}

#endif

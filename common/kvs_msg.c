/*
 * kvs_msg: arena allocation, validation and framing of kvs protobuf messages.
 *
 * Validation lives here, not in the worker, because the router must give bad
 * input exactly the answer a worker would: one function, two callers. It
 * runs on a decoded request and never looks at storage, so it is cheap and
 * safe to call before any routing decision.
 *
 * The arena is a list of chunks. Small allocations bump a pointer in the
 * head chunk; reset frees all but one chunk, so steady-state decoding does
 * no malloc at all.
 */
#include "kvs_msg.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_pos.h"
#include "kvs_redis.h"
#include "kvs_varint.h"

#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena ------------------------------------------------------------ */

#define ARENA_CHUNK 16384
#define ARENA_ALIGN 16

struct kvs_arena_chunk_s {
    kvs_arena_chunk_t *next;
    size_t size; /* usable bytes after the header */
    _Alignas(ARENA_ALIGN) unsigned char mem[];
};

static void *arena_pb_alloc(void *data, size_t n)
{
    return kvs_arena_alloc(data, n);
}

static void arena_pb_free(void *data, void *p)
{
    (void)data; /* freed in bulk by kvs_arena_reset */
    (void)p;
}

void kvs_arena_init(kvs_arena_t *a)
{
    a->pb.alloc = arena_pb_alloc;
    a->pb.free = arena_pb_free;
    a->pb.allocator_data = a;
    a->head = NULL;
    a->used = 0;
    a->big = 0;
}

void *kvs_arena_alloc(kvs_arena_t *a, size_t n)
{
    if (n > SIZE_MAX / 2)
        return NULL; /* no such request is genuine; rounding would wrap */
    n = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (n > ARENA_CHUNK / 2 && a->head != NULL && a->head->size - a->used < n) {
        /* A chunk of its own, linked behind the head: the room left in
         * the head is still used, so memory follows what was asked for. */
        kvs_arena_chunk_t *c = malloc(sizeof(*c) + n);
        if (c == NULL)
            return NULL;
        c->size = n;
        c->next = a->head->next;
        a->head->next = c;
        a->big += n;
        return c->mem;
    }
    if (a->head == NULL || a->head->size - a->used < n) {
        size_t size = n > ARENA_CHUNK ? n : ARENA_CHUNK;
        kvs_arena_chunk_t *c = malloc(sizeof(*c) + size);
        if (c == NULL)
            return NULL;
        c->size = size;
        c->next = a->head;
        a->head = c;
        a->used = 0;
        a->big += size;
    }
    void *p = a->head->mem + a->used;
    a->used += n;
    return p;
}

void kvs_arena_reset(kvs_arena_t *a)
{
    kvs_arena_chunk_t *keep = NULL;
    /* Keep the oldest standard-size chunk (the last in the list). */
    for (kvs_arena_chunk_t *c = a->head, *next; c != NULL; c = next) {
        next = c->next;
        if (c->size == ARENA_CHUNK) {
            free(keep);
            keep = c;
        } else {
            free(c);
        }
    }
    if (keep != NULL)
        keep->next = NULL;
    a->head = keep;
    a->used = 0;
    a->big = 0;
}

void kvs_arena_close(kvs_arena_t *a)
{
    kvs_arena_reset(a);
    free(a->head);
    a->head = NULL;
}

size_t kvs_utf8_cut(const char *text, size_t n)
{
    size_t i = n;
    while (i > 0 && n - i < 4 && ((unsigned char)text[i - 1] & 0xc0) == 0x80)
        i--; /* back to the last character's first byte */
    if (i == 0)
        return n;
    unsigned char c = (unsigned char)text[i - 1];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    return n - (i - 1) < len ? i - 1 : n; /* that character was cut: drop it */
}

int kvs_utf8_valid(const void *p, size_t n)
{
    const uint8_t *s = p;
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (len == 0 || i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
        if ((len == 2 && c < 0xc2) || (len == 3 && c == 0xe0 && s[i + 1] < 0xa0) ||
            (len == 3 && c == 0xed && s[i + 1] >= 0xa0) ||
            (len == 4 && c == 0xf0 && s[i + 1] < 0x90) || (len == 4 && c > 0xf4) ||
            (len == 4 && c == 0xf4 && s[i + 1] >= 0x90))
            return 0;
        i += len;
    }
    return 1;
}

kvs_table_fault_t kvs_table_check(const void *p, size_t n)
{
    const uint8_t *s = p;
    if (n == 0)
        return KVS_TABLE_EMPTY;
    if (n > KVS_MAX_TABLE)
        return KVS_TABLE_LONG;
    size_t i = 0;
    while (i < n && s[i] != 0 && s[i] < 0x80)
        i++; /* the common case, checked in one pass: plain ASCII */
    if (i < n && memchr(s + i, 0, n - i) != NULL)
        return KVS_TABLE_NUL;
    if (i < n && !kvs_utf8_valid(s + i, n - i))
        return KVS_TABLE_NOT_UTF8;
    if (n >= 2 && s[0] == '_' && s[1] == '_')
        return KVS_TABLE_RESERVED;
    return KVS_TABLE_OK;
}

/* Format characters that move or hide the text around them: bidi marks,
 * embeddings, overrides and isolates (text that reads in another order
 * than it is), the zero-width space and word joiners, the line and
 * paragraph separators (a new line to some viewers: a forged log line)
 * and the BOM. Not the zero-width joiner and non-joiner (U+200C, U+200D):
 * emoji sequences and Persian or Indic words are made of them. */
static int invisible_format(uint32_t cp)
{
    return cp == 0x00ad || cp == 0x034f || cp == 0x061c || cp == 0x115f || cp == 0x180e ||
           cp == 0x200b || cp == 0x200e || cp == 0x200f || (cp >= 0x2028 && cp <= 0x202e) ||
           (cp >= 0x2060 && cp <= 0x2064) || (cp >= 0x2066 && cp <= 0x2069) || cp == 0x3164 ||
           cp == 0xfeff || (cp >= 0xfff9 && cp <= 0xfffb) || cp == 0xfffe || cp == 0xffff ||
           (cp >= 0xe0000 && cp <= 0xe007f); /* the tag characters */
}

size_t kvs_text_printable(const uint8_t *s, size_t n)
{
    if (n == 0)
        return 0;
    if (s[0] >= 0x20 && s[0] < 0x7f)
        return 1;
    size_t len = (s[0] >> 5) == 6 ? 2 : (s[0] >> 4) == 14 ? 3 : (s[0] >> 3) == 30 ? 4 : 0;
    if (len == 0 || len > n || !kvs_utf8_valid(s, len) || (s[0] == 0xc2 && s[1] < 0xa0))
        return 0;
    uint32_t cp = len == 2 ? (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f)
                  : len == 3
                      ? (uint32_t)(s[0] & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f)
                      : (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3f) << 12 |
                            (uint32_t)(s[2] & 0x3f) << 6 | (s[3] & 0x3f);
    return invisible_format(cp) ? 0 : len;
}

/* Bytes of the character at s[0..n) as kvs_msg_quote copies it unescaped:
 * a printable one other than `"` and `\`; 0 when it must be escaped. */
static size_t plain_char(const uint8_t *s, size_t n)
{
    return s[0] == '"' || s[0] == '\\' ? 0 : kvs_text_printable(s, n);
}

/* Width of s[i] escaped, and the bytes it consumes (*step). */
static size_t quoted_width(const uint8_t *s, size_t n, size_t *step)
{
    size_t k = plain_char(s, n);
    *step = k > 0 ? k : 1;
    return k > 0 ? k : s[0] == '"' || s[0] == '\\' ? 2 : 4;
}

const char *kvs_msg_quote(char *out, size_t cap, const void *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *s = p;
    size_t o = 0, i, step, total = 0;
    for (i = 0; i < n; i += step)
        total += quoted_width(s + i, n - i, &step);
    size_t room = total < cap ? total : cap - 4; /* all of it, or some and "..." */
    for (i = 0; i < n; i += step) {
        size_t w = quoted_width(s + i, n - i, &step);
        if (o + w > room)
            break;
        if (w == step) { /* plain: an escape is wider than the byte it stands for */
            memcpy(out + o, s + i, w);
        } else if (w == 2) {
            out[o] = '\\';
            out[o + 1] = (char)s[i];
        } else {
            out[o] = '\\';
            out[o + 1] = 'x';
            out[o + 2] = hex[s[i] >> 4];
            out[o + 3] = hex[s[i] & 15];
        }
        o += w;
    }
    if (i < n) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

/* ---- requests --------------------------------------------------------- */

/* The allocator kvs_msg_decode_request hands protobuf-c: the arena's (or
 * malloc's) memory, counted against what the request may take. */
typedef struct decode_budget_s {
    ProtobufCAllocator pb;
    kvs_arena_t *arena; /* NULL: malloc and free */
    size_t left;        /* bytes that may still be handed out */
    int over;           /* an allocation was refused for the budget */
    int nomem;          /* an allocation within the budget failed: out of memory */
} decode_budget_t;

static void *budget_alloc(void *data, size_t n)
{
    decode_budget_t *b = data;
    /* Counted as the arena rounds it (and as malloc at least spends it). */
    size_t cost = n > SIZE_MAX / 2 ? SIZE_MAX : (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (cost > b->left) {
        b->over = 1;
        return NULL;
    }
    b->left -= cost;
    void *p = b->arena != NULL ? kvs_arena_alloc(b->arena, n) : malloc(n);
    if (p == NULL)
        b->nomem = 1;
    return p;
}

static void budget_free(void *data, void *p)
{
    decode_budget_t *b = data;
    if (b->arena == NULL)
        free(p); /* the budget is not given back: it bounds what a request may ask for */
}

size_t kvs_msg_decode_budget(size_t len)
{
    if (len > (SIZE_MAX - KVS_DECODE_SLACK) / KVS_DECODE_FACTOR)
        return SIZE_MAX;
    return len * KVS_DECODE_FACTOR + KVS_DECODE_SLACK;
}

/* Unpacks a message of type `d` from p[0..len) within the decode budget;
 * when it fails, *why says why: KVS_STATUS_TOO_LARGE for the budget,
 * KVS_STATUS_INTERNAL when memory ran out (protobuf-c returns NULL for
 * both, as for bytes that are not such a message: KVS_STATUS_BAD_REQUEST). */
static ProtobufCMessage *unpack_bounded(const ProtobufCMessageDescriptor *d, kvs_arena_t *arena,
                                        const uint8_t *p, size_t len, uint32_t *why)
{
    decode_budget_t b = {
        {budget_alloc, budget_free, NULL}, arena, kvs_msg_decode_budget(len), 0, 0};
    b.pb.allocator_data = &b;
    ProtobufCMessage *m = protobuf_c_message_unpack(d, &b.pb, len, p);
    *why = b.over ? KVS_STATUS_TOO_LARGE : b.nomem ? KVS_STATUS_INTERNAL : KVS_STATUS_BAD_REQUEST;
    return m;
}

Kvs__CommandResponse *kvs_msg_decode_response(kvs_arena_t *arena, const uint8_t *p, size_t len,
                                              uint32_t *status)
{
    uint32_t why;
    ProtobufCMessage *m = unpack_bounded(&kvs__command_response__descriptor, arena, p, len, &why);
    if (m == NULL && status != NULL)
        *status = why;
    return (Kvs__CommandResponse *)m;
}

static int peek_field(const uint8_t **p, const uint8_t *end, uint64_t *tag, const uint8_t **v,
                      size_t *n);
static int read_varint32(const uint8_t **p, const uint8_t *end, uint64_t *v);
static int skip_field(const uint8_t **p, const uint8_t *end, uint64_t tag);

/* The bool of the varint v[0..n) as protobuf-c reads it: true when any of
 * its bits is set. The varints it is given passed kvs_varint_get, which
 * refuses bits past 64, so this is also how Google's protobuf reads it. */
static int varint_bool(const uint8_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] & 0x7f)
            return 1;
    return 0;
}

/* What keys_body found in an Hmget, Hmdel or Hmexist message. */
typedef struct keys_body_s {
    const uint8_t *table; /* NULL when absent; not terminated */
    size_t table_len;
    size_t n_keys;
    uint64_t budget; /* Hmdel.answer_budget */
} keys_body_t;

/* Reads the message body[0..len) of command `cmd`, listing its keys into
 * keys[0..kb->n_keys) (pointing into body) unless `keys` is NULL (then
 * they are only counted). Returns 0, or -1 when it holds anything else: a
 * field protobuf-c would keep as unknown. Repeated fields other than the
 * keys: the last one counts, as protobuf-c reads them. */
static int keys_body(uint64_t cmd, const uint8_t *body, size_t len, keys_body_t *kb,
                     ProtobufCBinaryData *keys)
{
    const uint8_t *p = body, *end = body + len, *v;
    uint64_t tag;
    size_t n;
    memset(kb, 0, sizeof(*kb));
    while (p < end) {
        if (peek_field(&p, end, &tag, &v, &n) != 0)
            return -1;
        if (tag == (1 << 3 | 2)) {
            kb->table = v, kb->table_len = n;
        } else if (tag == (2 << 3 | 2)) {
            if (keys != NULL)
                keys[kb->n_keys] = (ProtobufCBinaryData){n, (uint8_t *)v};
            kb->n_keys++;
        } else if (tag != (3 << 3 | 0) || cmd != KVS__COMMAND_REQUEST__COMMAND_HMDEL ||
                   kvs_varint_get(&v, v + n, &kb->budget) != 0) {
            return -1;
        }
    }
    return 0;
}

/* Reads the encoded Value p[0..len) into *v as protobuf-c would, its bytes
 * left in place. Returns 0, or -1 when it holds more than one field, or
 * one protobuf-c would keep as unknown. */
static int value_in_place(const uint8_t *p, size_t len, Kvs__Value *v)
{
    const uint8_t *end = p + len, *x;
    uint64_t tag, u = 0;
    size_t n;
    kvs__value__init(v);
    if (len == 0)
        return 0; /* an empty Value: no kind */
    if (peek_field(&p, end, &tag, &x, &n) != 0 || p != end)
        return -1;
    const uint8_t *at = x;
    if ((tag & 7) == 0 && kvs_varint_get(&at, x + n, &u) != 0)
        return -1;
    switch (tag) {
    case 1 << 3 | 2:
        v->kind_case = KVS__VALUE__KIND_STRING_VALUE;
        v->string_value = (ProtobufCBinaryData){n, (uint8_t *)x};
        return 0;
    case 2 << 3 | 2:
        v->kind_case = KVS__VALUE__KIND_BINARY_VALUE;
        v->binary_value = (ProtobufCBinaryData){n, (uint8_t *)x};
        return 0;
    case 3 << 3 | 0:
        v->kind_case = KVS__VALUE__KIND_INTEGER_VALUE;
        v->integer_value = (int64_t)u;
        return 0;
    case 4 << 3 | 1:
        for (int i = 7; i >= 0; i--)
            u = u << 8 | x[i];
        v->kind_case = KVS__VALUE__KIND_FLOAT_VALUE;
        memcpy(&v->float_value, &u, sizeof(u));
        return 0;
    case 5 << 3 | 0:
        v->kind_case = KVS__VALUE__KIND_BOOL_VALUE;
        v->bool_value = varint_bool(x, n);
        return 0;
    default:
        return -1;
    }
}

/* Reads the encoded Kvpair p[0..len) into *kp (and its value, if any, into
 * *v), bytes left in place. Returns 0, or -1 when it holds a value twice
 * (protobuf-c would merge them) or a field it would keep as unknown. */
static int pair_in_place(const uint8_t *p, size_t len, Kvs__Kvpair *kp, Kvs__Value *v)
{
    const uint8_t *end = p + len, *x;
    uint64_t tag;
    size_t n;
    kvs__kvpair__init(kp);
    while (p < end) {
        if (peek_field(&p, end, &tag, &x, &n) != 0)
            return -1;
        if (tag == (1 << 3 | 2)) {
            kp->key = (ProtobufCBinaryData){n, (uint8_t *)x}; /* the last one, as protobuf-c */
        } else if (tag == (2 << 3 | 2) && kp->value == NULL) {
            if (value_in_place(x, n, v) != 0)
                return -1;
            kp->value = v;
        } else {
            return -1;
        }
    }
    return 0;
}

/* Decodes the Hmset message body[0..len) leaving keys and values in place:
 * 104 bytes a pair (a pointer, a Kvpair, a Value), where protobuf-c spends
 * some 180 and copies the bytes. NULL when anything is unusual (see
 * pair_in_place, value_in_place): protobuf-c decodes it. */
static Kvs__Hmset *decode_hmset(kvs_arena_t *arena, const uint8_t *body, size_t len)
{
    const uint8_t *p = body, *end = body + len, *x, *table = NULL;
    uint64_t tag, budget = 0;
    size_t n, tlen = 0, count = 0;
    Kvs__Kvpair kp;
    Kvs__Value kv;
    /* Every pair is checked before anything is allocated: memory taken
     * for a request protobuf-c then decodes would come on top of its
     * budget. */
    while (p < end) {
        if (peek_field(&p, end, &tag, &x, &n) != 0)
            return NULL;
        if (tag == (1 << 3 | 2))
            table = x, tlen = n;
        else if (tag == (2 << 3 | 2) && pair_in_place(x, n, &kp, &kv) == 0)
            count++;
        else if (tag != (3 << 3 | 0) || kvs_varint_get(&x, x + n, &budget) != 0)
            return NULL;
    }
    /* A valid pair takes 7 bytes or more on the wire (15 times that here);
     * a flood of empty ones goes to protobuf-c, and its budget. */
    if ((count + 1) * (sizeof(Kvs__Kvpair *) + sizeof(Kvs__Kvpair) + sizeof(Kvs__Value)) + tlen >
        kvs_msg_decode_budget(len))
        return NULL;
    Kvs__Hmset *m = kvs_arena_alloc(arena, sizeof(*m));
    Kvs__Kvpair **pp = kvs_arena_alloc(arena, (count + 1) * sizeof(*pp));
    Kvs__Kvpair *pairs = kvs_arena_alloc(arena, (count + 1) * sizeof(*pairs));
    Kvs__Value *vals = kvs_arena_alloc(arena, (count + 1) * sizeof(*vals));
    char *t = kvs_arena_alloc(arena, tlen + 1);
    if (m == NULL || pp == NULL || pairs == NULL || vals == NULL || t == NULL)
        return NULL;
    kvs__hmset__init(m);
    for (p = body, count = 0; p < end;) {
        if (peek_field(&p, end, &tag, &x, &n) != 0)
            return NULL;
        if (tag != (2 << 3 | 2))
            continue;
        if (pair_in_place(x, n, &pairs[count], &vals[count]) != 0)
            return NULL;
        pp[count] = &pairs[count];
        count++;
    }
    if (table != NULL) {
        memcpy(t, table, tlen);
        t[tlen] = '\0';
        m->table = t;
    }
    m->n_pairs = count;
    m->pairs = pp;
    m->answer_budget = (uint32_t)budget; /* truncated, as protobuf-c does */
    return m;
}

/* Decodes an Hmget, Hmset, Hmdel or Hmexist request leaving its keys and
 * values where they are in p[0..len): 16 bytes per key (Hmset: 104 per
 * pair), where protobuf-c copies each (some 80 bytes a key with its scan
 * record; 180 a pair). The request is valid only as long as p is. Returns
 * NULL when it is any other request, or unusual in any way (a command
 * field twice, a field unknown or cut short, a Value of two fields):
 * protobuf-c decodes those. */
static Kvs__CommandRequest *decode_keys_request(kvs_arena_t *arena, const uint8_t *p, size_t len)
{
    Kvs__CommandRequest *q;
    const uint8_t *end = p + len, *v, *body = NULL, *pos = NULL;
    uint64_t tag, cmd = 0, stale = 0, lengths = 0;
    size_t n, blen = 0, poslen = 0;
    keys_body_t kb;
    while (p < end) {
        if (peek_field(&p, end, &tag, &v, &n) != 0)
            return NULL;
        if (tag == (KVS__COMMAND_REQUEST__COMMAND_HMGET << 3 | 2) ||
            tag == (KVS__COMMAND_REQUEST__COMMAND_HMSET << 3 | 2) ||
            tag == (KVS__COMMAND_REQUEST__COMMAND_HMDEL << 3 | 2) ||
            tag == (KVS__COMMAND_REQUEST__COMMAND_HMEXIST << 3 | 2)) {
            if (body != NULL)
                return NULL; /* twice: protobuf-c's rules for that apply */
            body = v, blen = n, cmd = tag >> 3;
        } else if (tag == (100 << 3 | 2)) {
            pos = v, poslen = n;
        } else if (tag == (101 << 3 | 0)) {
            stale = varint_bool(v, n); /* peek_field read it: a whole varint */
        } else if (tag == (102 << 3 | 0)) {
            lengths = varint_bool(v, n);
        } else {
            return NULL;
        }
    }
    if (body == NULL)
        return NULL;
    if (cmd == KVS__COMMAND_REQUEST__COMMAND_HMSET) {
        Kvs__Hmset *hm = decode_hmset(arena, body, blen);
        q = hm != NULL ? kvs_arena_alloc(arena, sizeof(*q)) : NULL;
        if (q == NULL)
            return NULL;
        kvs__command_request__init(q);
        q->hmset = hm;
        goto options;
    }
    if (keys_body(cmd, body, blen, &kb, NULL) != 0)
        return NULL;
    const ProtobufCMessageDescriptor *d =
        cmd == KVS__COMMAND_REQUEST__COMMAND_HMGET   ? &kvs__hmget__descriptor
        : cmd == KVS__COMMAND_REQUEST__COMMAND_HMDEL ? &kvs__hmdel__descriptor
                                                     : &kvs__hmexist__descriptor;
    q = kvs_arena_alloc(arena, sizeof(*q));
    Kvs__Hmdel *m = kvs_arena_alloc(arena, d->sizeof_message);
    ProtobufCBinaryData *keys = kvs_arena_alloc(arena, (kb.n_keys + 1) * sizeof(*keys));
    char *table = kvs_arena_alloc(arena, kb.table_len + 1);
    if (q == NULL || m == NULL || keys == NULL || table == NULL ||
        keys_body(cmd, body, blen, &kb, keys) != 0)
        return NULL;
    /* Hmget and Hmexist are {table, n_keys, keys}, as Hmdel begins. */
    protobuf_c_message_init(d, m);
    if (kb.table != NULL) {
        memcpy(table, kb.table, kb.table_len);
        table[kb.table_len] = '\0';
        m->table = table;
    }
    m->n_keys = kb.n_keys;
    m->keys = keys;
    if (cmd == KVS__COMMAND_REQUEST__COMMAND_HMDEL)
        m->answer_budget = (uint32_t)kb.budget; /* truncated, as protobuf-c does */
    kvs__command_request__init(q);
    q->hmdel = m; /* the oneof members share storage */
options:
    q->command_case = (Kvs__CommandRequest__CommandCase)cmd;
    if (pos != NULL)
        q->min_position = (ProtobufCBinaryData){poslen, (uint8_t *)pos};
    q->accept_stale = stale;
    q->value_lengths = lengths;
    return q;
}

/* The field number of the CommandRequest.command member whose tag is
 * `tag`, or 0 when the tag is of any other field. */
static uint32_t command_member(uint64_t tag)
{
    if (tag >> 3 == 0 || tag >> 3 > UINT32_MAX)
        return 0;
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(&kvs__command_request__descriptor, tag >> 3);
    return f != NULL && (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ? (uint32_t)(tag >> 3) : 0;
}

/* The last run of the command member a request ends with: `member`
 * given `count` times in a row (no other member between), the first at
 * `at`, their bodies `body` bytes in all. */
typedef struct command_run_s {
    uint32_t member, count;
    const uint8_t *at;
    size_t body;
    uint32_t before; /* command members before the run: the parser drops them */
} command_run_t;

/* Whether the request must be written again before protobuf-c reads it:
 * its last command given more than once (merge_command), or commands
 * before it, which protobuf-c would decode in full only to drop them (a
 * frame of overridden commands cost 400 ms and its memory budget). */
static int run_rewrites(const command_run_t *run)
{
    return run->count >= 2 || run->before > 0;
}

/* Finds the last run of command members in p[0..len). Returns 0, or -1
 * when the bytes are not a request protobuf-c reads (it judges those). */
static int command_run(const uint8_t *p, size_t len, command_run_t *run)
{
    const uint8_t *q = p, *end = p + len, *at, *v;
    uint64_t tag = 0, vlen = 0;
    uint32_t member;
    memset(run, 0, sizeof(*run));
    while (q < end) {
        at = q;
        if (read_varint32(&q, end, &tag) != 0)
            return -1;
        v = q;
        if (skip_field(&q, end, tag) != 0)
            return -1;
        if ((member = command_member(tag)) == 0)
            continue;
        if ((tag & 7) != 2)
            return -1; /* not a message: protobuf-c refuses it */
        if (member != run->member)
            *run = (command_run_t){member, 0, at, 0, run->before + run->count};
        run->count++;
        (void)kvs_varint_get(&v, end, &vlen);
        run->body += (size_t)vlen;
    }
    return 0;
}

/* When the command member a request ends with appears more than once in
 * a row, protobuf says the parser merges them, as if by MergeFrom: the same
 * as one field holding their bodies one after the other (repeated fields
 * concatenated, the last scalar winning, messages merged). So a client may
 * build a request by concatenating encoded CommandRequests: Hmset{t, [a]}
 * + Hmset{t, [b]} is Hmset{t, [a, b]}. protobuf-c does not merge a oneof
 * member with itself: it keeps the last one alone (it would write [b]
 * only and answer 200). This writes the request protobuf reads, for the
 * request p[0..len) whose last run is `run` (run_rewrites), into buf: one
 * merged member, the members before the run dropped (as a parser clears
 * them), every other field as it is. Returns its length, which is never
 * more than len: one tag and length replace two or more. */
static size_t merge_command(const uint8_t *p, size_t len, const command_run_t *run, uint8_t *buf)
{
    const uint8_t *q, *end = p + len, *at, *v;
    uint64_t tag = 0, vlen = 0;
    size_t n = 0;
    for (q = p; q < end;) { /* command_run read it whole: nothing fails */
        at = q;
        (void)read_varint32(&q, end, &tag);
        (void)skip_field(&q, end, tag);
        if (command_member(tag) == 0) {
            memcpy(buf + n, at, (size_t)(q - at));
            n += (size_t)(q - at);
        }
    }
    n += kvs_varint_put(buf + n, (uint64_t)run->member << 3 | 2);
    n += kvs_varint_put(buf + n, run->body);
    for (q = run->at; q < end;) {
        (void)read_varint32(&q, end, &tag);
        v = q;
        (void)skip_field(&q, end, tag);
        if (command_member(tag) != 0) { /* in the run, every member is run->member */
            (void)kvs_varint_get(&v, end, &vlen);
            memcpy(buf + n, v, (size_t)vlen);
            n += (size_t)vlen;
        }
    }
    return n;
}

/* ---- nested messages given more than once -------------------------------------------
 *
 * A singular message field given more than once inside a message (Hset's
 * pair twice, as two concatenated Hset requests give it; a Kvpair's value
 * twice) is, to protobuf, one field holding their bodies one after the
 * other: parsed so, a later copy's key "" replaces an earlier "k1", and a
 * Value holding string_value "" then nothing is that empty string.
 * protobuf-c decodes each copy and merges the results, and a copy's empty
 * bytes read as "not set" there: the earlier key was kept (an Hset whose
 * key protobuf reads as empty wrote k1), and the empty string was lost
 * (a valid Hset was refused, "value is missing"). So such fields are
 * joined on the wire, at every depth, before protobuf-c reads the bytes. */

#define NESTED_DEPTH_MAX 8 /* deeper than any kvs message nests */

/* The next field of p[*q..end): its tag, and where its value starts (*v).
 * -1 when the bytes are not a field protobuf-c reads. */
static int next_field(const uint8_t **q, const uint8_t *end, uint64_t *tag, const uint8_t **v)
{
    if (read_varint32(q, end, tag) != 0)
        return -1;
    *v = *q;
    return skip_field(q, end, *tag);
}

/* The body of the length-delimited field whose value starts at v: *body
 * and its length (skip_field checked that it fits). */
static size_t field_body(const uint8_t *v, const uint8_t *end, const uint8_t **body)
{
    uint64_t n = 0;
    (void)read_varint32(&v, end, &n);
    *body = v;
    return (size_t)n;
}

/* The field of d that a message field's tag names, when it is a message
 * sent as one (length-delimited), else NULL. */
static const ProtobufCFieldDescriptor *message_field(const ProtobufCMessageDescriptor *d,
                                                     uint64_t tag)
{
    if ((tag & 7) != 2 || tag >> 3 > UINT32_MAX)
        return NULL;
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(d, (unsigned)(tag >> 3));
    return f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE ? f : NULL;
}

/* Whether message d's bytes p[0..len) give a singular message field more
 * than once, here or inside any message field. Bytes protobuf-c refuses
 * answer 0 (it judges them). */
static int nested_repeats(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t len,
                          int depth)
{
    const uint8_t *q = p, *end = p + len, *v = NULL, *body;
    uint64_t tag = 0, seen = 0; /* singular message fields met, by index */
    int holds = 0; /* a message of no message field has nothing to join (Hmget's keys) */
    for (unsigned i = 0; i < d->n_fields && !holds; i++)
        holds = d->fields[i].type == PROTOBUF_C_TYPE_MESSAGE;
    if (depth > NESTED_DEPTH_MAX || !holds)
        return 0;
    while (q < end) {
        if (next_field(&q, end, &tag, &v) != 0)
            return 0;
        const ProtobufCFieldDescriptor *f = message_field(d, tag);
        if (f == NULL)
            continue;
        size_t i = (size_t)(f - d->fields);
        if (f->label != PROTOBUF_C_LABEL_REPEATED && i < 64) {
            if (seen >> i & 1)
                return 1;
            seen |= 1ull << i;
        }
        size_t n = field_body(v, end, &body);
        if (nested_repeats(f->descriptor, body, n, depth + 1))
            return 1;
    }
    return 0;
}

/* Where a message's singular message field is given: its copies, the
 * last one's value, and their bodies' length in all. */
typedef struct copies_s {
    uint32_t count;
    const uint8_t *last;
    size_t total;
} copies_t;

enum { JOIN_OK = 0, JOIN_BAD = 1, JOIN_NOMEM = 2 };

/* Writes message d's bytes p[0..len) into buf as protobuf reads them,
 * with each singular message field given once, where its last copy was,
 * holding the copies' bodies joined, and the same done inside every
 * message field. Returns the length written (at most len: joined copies
 * drop tags and lengths); *rc is JOIN_BAD when the bytes are not a message
 * protobuf-c reads (they are then left for it to refuse), JOIN_NOMEM when
 * memory ran out. One pass to find the copies, one to write, and one more
 * per field joined. */
static size_t nested_join(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t len,
                          uint8_t *buf, int depth, int *rc)
{
    const uint8_t *q, *end = p + len, *at, *v = NULL, *body;
    uint64_t tag = 0;
    size_t n = 0, body_len;
    copies_t copies[64];
    memset(copies, 0, sizeof(copies));
    if (depth > NESTED_DEPTH_MAX) {
        memcpy(buf, p, len);
        return len;
    }
    for (q = p; q < end;) {
        if (next_field(&q, end, &tag, &v) != 0) {
            *rc = JOIN_BAD;
            return 0;
        }
        const ProtobufCFieldDescriptor *f = message_field(d, tag);
        size_t i = f != NULL ? (size_t)(f - d->fields) : 64;
        if (i < 64 && f->label != PROTOBUF_C_LABEL_REPEATED) {
            copies[i].count++;
            copies[i].last = v;
            copies[i].total += field_body(v, end, &body);
        }
    }
    for (q = p; q < end;) {
        at = q;
        (void)next_field(&q, end, &tag, &v); /* the first pass read them all */
        const ProtobufCFieldDescriptor *f = message_field(d, tag);
        if (f == NULL) {
            memcpy(buf + n, at, (size_t)(q - at));
            n += (size_t)(q - at);
            continue;
        }
        size_t i = (size_t)(f - d->fields);
        const copies_t *c = i < 64 && f->label != PROTOBUF_C_LABEL_REPEATED ? &copies[i] : NULL;
        if (c != NULL && c->last != v)
            continue; /* joined into its last copy */
        body_len = field_body(v, end, &body);
        uint8_t *joined = NULL;
        if (c != NULL && c->count > 1) {
            joined = malloc(c->total ? c->total : 1);
            if (joined == NULL) {
                *rc = JOIN_NOMEM;
                return 0;
            }
            size_t j = 0;
            const uint8_t *r, *w = NULL, *wb;
            uint64_t rtag = 0;
            for (r = p; r < end;) {
                (void)next_field(&r, end, &rtag, &w);
                if (rtag == tag) {
                    size_t wn = field_body(w, end, &wb);
                    memcpy(joined + j, wb, wn);
                    j += wn;
                }
            }
            body = joined;
            body_len = c->total;
        }
        uint8_t *inner = malloc(body_len ? body_len : 1);
        if (inner == NULL) {
            free(joined);
            *rc = JOIN_NOMEM;
            return 0;
        }
        size_t m = nested_join(f->descriptor, body, body_len, inner, depth + 1, rc);
        free(joined);
        if (*rc != JOIN_OK) {
            free(inner);
            return 0;
        }
        n += kvs_varint_put(buf + n, tag);
        n += kvs_varint_put(buf + n, m);
        memcpy(buf + n, inner, m);
        n += m;
        free(inner);
    }
    return n;
}

/* The request p[0..len) with its nested message fields joined
 * (nested_join) in `arena` (NULL: malloc, *owned set), or p itself when
 * none repeats or the bytes are not a request protobuf-c reads (it refuses
 * them). NULL when memory ran out. */
static const uint8_t *nested_request(kvs_arena_t *arena, const uint8_t *p, size_t *len,
                                     uint8_t **owned)
{
    *owned = NULL;
    if (!nested_repeats(&kvs__command_request__descriptor, p, *len, 0))
        return p;
    uint8_t *out = arena != NULL ? kvs_arena_alloc(arena, *len) : malloc(*len);
    if (out == NULL)
        return NULL;
    int rc = JOIN_OK;
    size_t n = nested_join(&kvs__command_request__descriptor, p, *len, out, 0, &rc);
    if (rc != JOIN_OK) {
        if (arena == NULL)
            free(out);
        return rc == JOIN_BAD ? p : NULL;
    }
    if (arena == NULL)
        *owned = out;
    *len = n;
    return out;
}

/* The request *p[0..*len) as protobuf reads it: its last command run
 * merged and the commands before it dropped (merge_command), its nested
 * message copies joined (nested_join); *p and *len are replaced when
 * anything was written again. In `arena`, or with malloc when it is NULL
 * (owned[0..1] then hold what to free). Returns 0, or -ENOMEM. */
static int rewrite_request(kvs_arena_t *arena, const uint8_t **p, size_t *len, uint8_t *owned[2])
{
    command_run_t run;
    owned[0] = owned[1] = NULL;
    if (command_run(*p, *len, &run) == 0 && run_rewrites(&run)) {
        uint8_t *merged = arena != NULL ? kvs_arena_alloc(arena, *len) : malloc(*len);
        if (merged == NULL)
            return -ENOMEM;
        if (arena == NULL)
            owned[0] = merged;
        *len = merge_command(*p, *len, &run, merged);
        *p = merged;
    }
    const uint8_t *joined = nested_request(arena, *p, len, &owned[1]);
    if (joined == NULL)
        return -ENOMEM;
    *p = joined;
    return 0;
}

int kvs_msg_merge_request(kvs_arena_t *arena, const uint8_t **p, size_t *len)
{
    uint8_t *owned[2];
    return rewrite_request(arena, p, len, owned); /* an arena: nothing owned */
}

static size_t wire_unknowns(const ProtobufCMessageDescriptor *d, const uint8_t *p,
                            const uint8_t *end, int depth, size_t most);

Kvs__CommandRequest *kvs_msg_decode_merged(kvs_arena_t *arena, const uint8_t *p, size_t len,
                                           uint32_t *status)
{
    Kvs__CommandRequest *fast = arena != NULL ? decode_keys_request(arena, p, len) : NULL;
    if (fast != NULL)
        return fast;
    /* protobuf-c keeps each field it does not know, an allocation apiece:
     * a 4 MiB frame of 3-byte unknown fields cost 150-300 ms of decoding
     * before its decode budget ran out, twice a legitimate frame's. Every
     * request holding such a field is refused anyway (kvs_msg_validate),
     * so a large one is walked first (no allocation): one with more than
     * KVS_MSG_UNKNOWN_MOST of them is 400 naming the first, decoded by
     * nobody (kvs_msg_decode_refusal); with fewer, protobuf-c decodes it
     * and kvs_msg_validate says what is wrong, as for a small one. */
    if (len >= KVS_MSG_WIRE_FIRST && wire_unknowns(&kvs__command_request__descriptor, p, p + len, 0,
                                                   KVS_MSG_UNKNOWN_MOST) > KVS_MSG_UNKNOWN_MOST) {
        if (status != NULL)
            *status = KVS_STATUS_BAD_REQUEST;
        return NULL;
    }
    uint32_t why;
    Kvs__CommandRequest *q = (Kvs__CommandRequest *)unpack_bounded(
        &kvs__command_request__descriptor, arena, p, len, &why);
    if (q == NULL && status != NULL)
        *status = why;
    return q;
}

Kvs__CommandRequest *kvs_msg_decode_request(kvs_arena_t *arena, const uint8_t *p, size_t len,
                                            uint32_t *status)
{
    /* In the arena, the rewritten bytes live as long as the request
     * decoded from them; with malloc, protobuf-c copies what it keeps. */
    uint8_t *owned[2];
    Kvs__CommandRequest *q = NULL;
    if (rewrite_request(arena, &p, &len, owned) == 0)
        q = kvs_msg_decode_merged(arena, p, len, status);
    else if (status != NULL)
        *status = KVS_STATUS_INTERNAL; /* len bytes: within any budget */
    free(owned[0]);
    free(owned[1]);
    return q;
}

#define V01_HSET                                                                                   \
    "Hset has field 3, kvs 0.1's separate value: Hset is now {table = 1, Kvpair pair = 2} as in "  \
    "the original KV protocol; regenerate the client from proto/kvs.proto"

/* Whether the request p[0..len) ends with an Hset holding field 3 as
 * length-delimited bytes: kvs 0.1's Hset {table, key, Value value = 3},
 * whose key (field 2, now the pair) seldom decodes as a Kvpair, so the
 * request fails to decode before its field 3 can be named. */
static int v01_hset(const uint8_t *p, size_t len)
{
    command_run_t run;
    const uint8_t *q, *end = p + len, *v = NULL, *f, *fv, *body;
    uint64_t tag = 0, ftag = 0;
    if (command_run(p, len, &run) != 0 || run.member != KVS__COMMAND_REQUEST__COMMAND_HSET)
        return 0;
    for (q = run.at; q < end;) { /* command_run read it whole: nothing fails */
        (void)next_field(&q, end, &tag, &v);
        if (command_member(tag) == 0)
            continue;
        size_t n = field_body(v, end, &body);
        for (f = body; f < body + n;) {
            if (next_field(&f, body + n, &ftag, &fv) != 0)
                break;
            if (ftag == (3 << 3 | 2))
                return 1;
        }
    }
    return 0;
}

uint32_t kvs_msg_decode_refusal(uint32_t status, const uint8_t *p, size_t len, char *msg,
                                size_t mlen)
{
    char why[256];
    if (status == KVS_STATUS_BAD_REQUEST && p != NULL && v01_hset(p, len))
        snprintf(msg, mlen, "frame payload (%zu bytes) is not a valid kvs.CommandRequest: %s", len,
                 V01_HSET);
    else if (status == KVS_STATUS_TOO_LARGE)
        snprintf(msg, mlen,
                 "request of %zu bytes would take more than %zu bytes of memory to decode (%d "
                 "times its size and %d MiB): it holds too many keys, pairs or fields for its "
                 "size; nothing was done; send fewer keys per request",
                 len, kvs_msg_decode_budget(len), KVS_DECODE_FACTOR,
                 KVS_DECODE_SLACK / (1024 * 1024));
    else if (status == KVS_STATUS_INTERNAL)
        snprintf(msg, mlen,
                 "server out of memory decoding a request of %zu bytes; nothing was done; "
                 "try again",
                 len);
    else if (p != NULL && kvs_msg_check_wire(p, len, why, sizeof(why)) != KVS_STATUS_OK)
        snprintf(msg, mlen, "frame payload (%zu bytes) is not a valid kvs.CommandRequest: %s", len,
                 why);
    else
        snprintf(msg, mlen, "frame payload (%zu bytes) is not a valid kvs.CommandRequest", len);
    return status;
}

const char *kvs_msg_command_name(Kvs__CommandRequest__CommandCase c)
{
    static const char *const names[] = {
        [KVS__COMMAND_REQUEST__COMMAND_HGET] = "Hget",
        [KVS__COMMAND_REQUEST__COMMAND_HGETALL] = "Hgetall",
        [KVS__COMMAND_REQUEST__COMMAND_HMGET] = "Hmget",
        [KVS__COMMAND_REQUEST__COMMAND_HSET] = "Hset",
        [KVS__COMMAND_REQUEST__COMMAND_HMSET] = "Hmset",
        [KVS__COMMAND_REQUEST__COMMAND_HDEL] = "Hdel",
        [KVS__COMMAND_REQUEST__COMMAND_HMDEL] = "Hmdel",
        [KVS__COMMAND_REQUEST__COMMAND_HEXIST] = "Hexist",
        [KVS__COMMAND_REQUEST__COMMAND_HMEXIST] = "Hmexist",
        [KVS__COMMAND_REQUEST__COMMAND_HSCAN] = "Hscan",
        [KVS__COMMAND_REQUEST__COMMAND_PING] = "Ping",
        [KVS__COMMAND_REQUEST__COMMAND_INFO] = "Info",
        [KVS__COMMAND_REQUEST__COMMAND_HINCR] = "Hincr",
        [KVS__COMMAND_REQUEST__COMMAND_HLEN] = "Hlen",
        [KVS__COMMAND_REQUEST__COMMAND_HCLEAR] = "Hclear",
        [KVS__COMMAND_REQUEST__COMMAND_AUTH] = "Auth",
        [KVS__COMMAND_REQUEST__COMMAND_DIGEST] = "Digest",
        [KVS__COMMAND_REQUEST__COMMAND_SNAPSHOT] = "Snapshot",
        [KVS__COMMAND_REQUEST__COMMAND_REBUILD] = "Rebuild",
        [KVS__COMMAND_REQUEST__COMMAND_METRICS] = "Metrics",
        [KVS__COMMAND_REQUEST__COMMAND_SLOWLOG] = "Slowlog",
    };
    if ((size_t)c < sizeof(names) / sizeof(names[0]) && names[c] != NULL)
        return names[c];
    return "none";
}

/* The command's own message, as the generic base, or NULL. */
static const ProtobufCMessage *request_body(const Kvs__CommandRequest *r)
{
    switch (r->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HGET:
        return &r->hget->base;
    case KVS__COMMAND_REQUEST__COMMAND_HGETALL:
        return &r->hgetall->base;
    case KVS__COMMAND_REQUEST__COMMAND_HMGET:
        return &r->hmget->base;
    case KVS__COMMAND_REQUEST__COMMAND_HSET:
        return &r->hset->base;
    case KVS__COMMAND_REQUEST__COMMAND_HMSET:
        return &r->hmset->base;
    case KVS__COMMAND_REQUEST__COMMAND_HDEL:
        return &r->hdel->base;
    case KVS__COMMAND_REQUEST__COMMAND_HMDEL:
        return &r->hmdel->base;
    case KVS__COMMAND_REQUEST__COMMAND_HEXIST:
        return &r->hexist->base;
    case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
        return &r->hmexist->base;
    case KVS__COMMAND_REQUEST__COMMAND_HSCAN:
        return &r->hscan->base;
    case KVS__COMMAND_REQUEST__COMMAND_PING:
        return &r->ping->base;
    case KVS__COMMAND_REQUEST__COMMAND_INFO:
        return &r->info->base;
    case KVS__COMMAND_REQUEST__COMMAND_HINCR:
        return &r->hincr->base;
    case KVS__COMMAND_REQUEST__COMMAND_HLEN:
        return &r->hlen->base;
    case KVS__COMMAND_REQUEST__COMMAND_HCLEAR:
        return &r->hclear->base;
    case KVS__COMMAND_REQUEST__COMMAND_AUTH:
        return &r->auth->base;
    case KVS__COMMAND_REQUEST__COMMAND_DIGEST:
        return &r->digest->base;
    case KVS__COMMAND_REQUEST__COMMAND_SNAPSHOT:
        return &r->snapshot->base;
    case KVS__COMMAND_REQUEST__COMMAND_REBUILD:
        return &r->rebuild->base;
    case KVS__COMMAND_REQUEST__COMMAND_METRICS:
        return &r->metrics->base;
    case KVS__COMMAND_REQUEST__COMMAND_SLOWLOG:
        return &r->slowlog->base;
    default:
        return NULL;
    }
}

const char *kvs_msg_request_table(const Kvs__CommandRequest *req)
{
    const ProtobufCMessage *body = request_body(req);
    if (body == NULL || req->command_case == KVS__COMMAND_REQUEST__COMMAND_AUTH)
        return NULL; /* Auth's field 1 is a user name */
    /* Every table-bearing command has `string table = 1`; the descriptor
     * says where protobuf-c put it. */
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(body->descriptor, 1);
    if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING)
        return NULL;
    return *(char *const *)(const void *)((const char *)body + f->offset);
}

static uint32_t count_keys(size_t n)
{
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

uint32_t kvs_msg_request_keys(const Kvs__CommandRequest *req)
{
    switch (req->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HGET:
    case KVS__COMMAND_REQUEST__COMMAND_HSET:
    case KVS__COMMAND_REQUEST__COMMAND_HDEL:
    case KVS__COMMAND_REQUEST__COMMAND_HEXIST:
    case KVS__COMMAND_REQUEST__COMMAND_HINCR:
        return 1;
    case KVS__COMMAND_REQUEST__COMMAND_HMGET:
        return count_keys(req->hmget->n_keys);
    case KVS__COMMAND_REQUEST__COMMAND_HMSET:
        return count_keys(req->hmset->n_pairs);
    case KVS__COMMAND_REQUEST__COMMAND_HMDEL:
        return count_keys(req->hmdel->n_keys);
    case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
        return count_keys(req->hmexist->n_keys);
    default:
        return 0;
    }
}

uint32_t kvs_msg_answer_status(const uint8_t *p, size_t len)
{
    uint32_t v = 0;
    if (len < 2 || p[0] != 0x08) /* field 1, varint */
        return 0;
    for (size_t i = 1; i < len && i < 6; i++) {
        v |= (uint32_t)(p[i] & 0x7f) << (7 * (i - 1));
        if (p[i] < 0x80)
            return v;
    }
    return 0;
}

void kvs_msg_replaced_outcome(const uint8_t *p, size_t len, kvs_answer_outcome_t *out)
{
    uint64_t tag, status = 0;
    size_t n;
    int unknown = 0;
    memset(out, 0, sizeof(*out));
    if (len == 0) { /* no answer at all: nobody can say what happened */
        out->unknown = 1;
        return;
    }
    const uint8_t *end = p + len, *v;
    while (p < end) {
        if (peek_field(&p, end, &tag, &v, &n) != 0) {
            out->unknown = 1; /* unreadable: nobody can say what happened */
            out->position = NULL;
            out->position_len = 0;
            return;
        }
        if (tag == (1 << 3 | 0)) { /* status */
            const uint8_t *q = v;
            if (kvs_varint_get(&q, v + n, &status) != 0)
                status = 0;
        } else if (tag == (6 << 3 | 2)) { /* position: the last one, as protobuf reads it */
            out->position = n > 0 ? v : NULL;
            out->position_len = n;
        } else if (tag == (8 << 3 | 0)) { /* outcome_unknown */
            unknown = varint_bool(v, n);
        }
    }
    int applied = status == KVS_STATUS_OK || status == KVS_STATUS_PARTIAL;
    out->unknown = unknown || status == 0 || (applied && out->position_len == 0);
}

int kvs_msg_replaced_keep(const uint8_t *p, size_t len, kvs_buf_t *pos)
{
    kvs_answer_outcome_t o;
    kvs_msg_replaced_outcome(p, len, &o);
    pos->len = 0;
    if (o.position_len > 0 && kvs_buf_append(pos, o.position, o.position_len) != 0) {
        pos->len = 0;
        return 1;
    }
    return o.unknown;
}

static uint32_t bad(char *msg, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static uint32_t bad(char *msg, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, len, fmt, ap);
    va_end(ap);
    return KVS_STATUS_BAD_REQUEST;
}

static uint32_t check_table(const char *cmd, const char *table, char *msg, size_t len)
{
    size_t n = strlen(table); /* a protobuf-c string: no NUL within */
    switch (kvs_table_check(table, n)) {
    case KVS_TABLE_OK:
        return KVS_STATUS_OK;
    case KVS_TABLE_EMPTY:
        return bad(msg, len, "%s.table is empty", cmd);
    case KVS_TABLE_LONG:
        return bad(msg, len, "%s.table is %zu bytes; the maximum is %d", cmd, n, KVS_MAX_TABLE);
    case KVS_TABLE_NUL:
    case KVS_TABLE_NOT_UTF8:
        /* Before anything quotes the name: an answer's message is a
         * protobuf string, and a client's decoder refuses the answer when
         * it is not UTF-8 (kvs_msg_check_wire, which would say the same,
         * runs later). */
        return bad(msg, len,
                   "%s.table is not valid UTF-8 text; send arbitrary bytes as binary fields", cmd);
    case KVS_TABLE_RESERVED:
        break;
    }
    return bad(msg, len, "%s.table \"%s\" is reserved (names starting with \"__\" belong to kvs)",
               cmd, table);
}

static uint32_t check_key(const char *cmd, const char *field, long idx,
                          const ProtobufCBinaryData *k, char *msg, size_t len)
{
    char where[64];
    if (k->len > 0 && k->len <= KVS_MAX_KEY)
        return KVS_STATUS_OK; /* the common case: no name to format */
    if (idx >= 0)
        snprintf(where, sizeof(where), "%s.%s[%ld]", cmd, field, idx);
    else
        snprintf(where, sizeof(where), "%s.%s", cmd, field);
    if (k->len == 0)
        return bad(msg, len, "%s is empty", where);
    if (k->len > KVS_MAX_KEY)
        return bad(msg, len, "%s is %zu bytes; the maximum is %d", where, k->len, KVS_MAX_KEY);
    return KVS_STATUS_OK;
}

static uint32_t check_keys(const char *cmd, size_t n, const ProtobufCBinaryData *keys, char *msg,
                           size_t len)
{
    if (n == 0)
        return bad(msg, len, "%s.keys is empty; give at least one key", cmd);
    for (size_t i = 0; i < n; i++) {
        uint32_t st = check_key(cmd, "keys", (long)i, &keys[i], msg, len);
        if (st != KVS_STATUS_OK)
            return st;
    }
    return KVS_STATUS_OK;
}

static uint32_t check_value(const char *where, const Kvs__Value *v, char *msg, size_t len)
{
    if (v == NULL || v->kind_case == KVS__VALUE__KIND__NOT_SET) {
        if (v != NULL && v->base.n_unknown_fields > 0)
            return bad(msg, len, "%s holds an unsupported Value kind (field %u)", where,
                       v->base.unknown_fields[0].tag);
        return bad(msg, len, "%s is missing; set one of string, binary, integer, float, bool",
                   where);
    }
    if (v->base.n_unknown_fields > 0)
        return bad(msg, len, "%s has an unsupported field %u", where,
                   v->base.unknown_fields[0].tag);
    return KVS_STATUS_OK;
}

/* One Kvpair of an Hset or Hmset; `where` names it ("Hset.pair",
 * "Hmset.pairs[3]"), `idx` is its index or -1. */
static uint32_t check_pair(const char *where, long idx, const Kvs__Kvpair *p, char *msg, size_t len)
{
    char name[48];
    if (idx >= 0)
        snprintf(name, sizeof(name), "%s[%ld]", where, idx);
    else
        snprintf(name, sizeof(name), "%s", where);
    if (p == NULL)
        return bad(msg, len, "%s is missing; give a Kvpair {key, value}", name);
    if (p->base.n_unknown_fields > 0)
        return bad(msg, len, "%s has an unsupported field %u", name, p->base.unknown_fields[0].tag);
    uint32_t st = check_key(name, "key", -1, &p->key, msg, len);
    if (st != KVS_STATUS_OK)
        return st;
    strncat(name, ".value", sizeof(name) - strlen(name) - 1);
    return check_value(name, p->value, msg, len);
}

static uint32_t check_hmset(const Kvs__Hmset *m, char *msg, size_t len)
{
    if (m->n_pairs == 0)
        return bad(msg, len, "Hmset.pairs is empty; give at least one pair");
    for (size_t i = 0; i < m->n_pairs; i++) {
        const Kvs__Kvpair *p = m->pairs[i];
        const Kvs__Value *v = p->value;
        int key_ok = p->key.len > 0 && p->key.len <= KVS_MAX_KEY;
        if (key_ok && p->base.n_unknown_fields == 0 && v != NULL &&
            v->kind_case != KVS__VALUE__KIND__NOT_SET && v->base.n_unknown_fields == 0)
            continue; /* the common case: no name to format */
        uint32_t st = check_pair("Hmset.pairs", (long)i, p, msg, len);
        if (st != KVS_STATUS_OK)
            return st;
    }
    return KVS_STATUS_OK;
}

/* Per-command checks beyond the table name. */
static uint32_t check_body(const Kvs__CommandRequest *r, const char *cmd, char *msg, size_t len)
{
    switch (r->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HGET:
        return check_key(cmd, "key", -1, &r->hget->key, msg, len);
    case KVS__COMMAND_REQUEST__COMMAND_HDEL:
        return check_key(cmd, "key", -1, &r->hdel->key, msg, len);
    case KVS__COMMAND_REQUEST__COMMAND_HEXIST:
        return check_key(cmd, "key", -1, &r->hexist->key, msg, len);
    case KVS__COMMAND_REQUEST__COMMAND_HSET:
        return check_pair("Hset.pair", -1, r->hset->pair, msg, len);
    case KVS__COMMAND_REQUEST__COMMAND_HMGET:
        return check_keys(cmd, r->hmget->n_keys, r->hmget->keys, msg, len);
    case KVS__COMMAND_REQUEST__COMMAND_HMDEL:
        return check_keys(cmd, r->hmdel->n_keys, r->hmdel->keys, msg, len);
    case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
        return check_keys(cmd, r->hmexist->n_keys, r->hmexist->keys, msg, len);
    case KVS__COMMAND_REQUEST__COMMAND_HMSET:
        return check_hmset(r->hmset, msg, len);
    case KVS__COMMAND_REQUEST__COMMAND_HSCAN:
        if (r->hscan->cursor.len > KVS_CURSOR_MAX)
            return bad(msg, len,
                       "Hscan.cursor is not a cursor this server returned; start "
                       "with an empty cursor");
        return KVS_STATUS_OK;
    case KVS__COMMAND_REQUEST__COMMAND_HINCR:
        if (r->hincr->by_case == KVS__HINCR__BY__NOT_SET)
            return bad(msg, len, "Hincr needs an increment: set by_int, by_float or by_decimal");
        return check_key(cmd, "key", -1, &r->hincr->key, msg, len);
    default:
        return KVS_STATUS_OK;
    }
}

/* "Hget Hgetall ...": every command of the schema's oneof, in field order,
 * so the list a client is shown cannot fall behind the commands kvs has. */
static void command_names(char *out, size_t len)
{
    const ProtobufCMessageDescriptor *d = &kvs__command_request__descriptor;
    size_t at = 0;
    out[0] = '\0';
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) == 0 ||
            f->quantifier_offset != offsetof(Kvs__CommandRequest, command_case))
            continue;
        int n = snprintf(out + at, len - at, "%s%s", at > 0 ? " " : "",
                         kvs_msg_command_name((Kvs__CommandRequest__CommandCase)f->id));
        if (n < 0 || (size_t)n >= len - at)
            return;
        at += (size_t)n;
    }
}

uint32_t kvs_msg_validate(const Kvs__CommandRequest *req, char *msg, size_t len)
{
    const ProtobufCMessage *body = request_body(req);
    if (body == NULL) {
        if (req->base.n_unknown_fields > 0) {
            char names[256];
            command_names(names, sizeof(names));
            return bad(msg, len,
                       "unsupported command (CommandRequest field %u); this server supports %s",
                       req->base.unknown_fields[0].tag, names);
        }
        return bad(msg, len, "request has no command set");
    }
    const char *cmd = kvs_msg_command_name(req->command_case);
    if (req->base.n_unknown_fields > 0)
        return bad(msg, len, "unsupported command: CommandRequest has unknown field %u beside %s",
                   req->base.unknown_fields[0].tag, cmd);
    if (body->n_unknown_fields > 0 && req->command_case == KVS__COMMAND_REQUEST__COMMAND_HSET &&
        body->unknown_fields[0].tag == 3)
        return bad(msg, len, V01_HSET);
    if (body->n_unknown_fields > 0)
        return bad(msg, len, "unsupported command: %s has unknown field %u", cmd,
                   body->unknown_fields[0].tag);
    if (req->min_position.len > 0 && !kvs_pos_valid(req->min_position.data, req->min_position.len))
        return bad(msg, len,
                   "CommandRequest.min_position is not a position token: pass back a "
                   "CommandResponse.position exactly as kvs returned it");
    if (req->command_case == KVS__COMMAND_REQUEST__COMMAND_AUTH)
        return req->auth->user[0] == '\0' ? bad(msg, len, "Auth.user is empty") : KVS_STATUS_OK;
    const char *table = kvs_msg_request_table(req);
    if (table != NULL) {
        uint32_t st = check_table(cmd, table, msg, len);
        if (st != KVS_STATUS_OK)
            return st;
    }
    return check_body(req, cmd, msg, len);
}

/* ---- raw string check ------------------------------------------------- */

/* Where check_wire is, as a chain of names up to the top; turned into
 * text ("Hset.pair.value.string_value") only when there is an error to
 * report. */
typedef struct wire_path_s {
    const char *name;
    const struct wire_path_s *up;
    int64_t idx; /* the element of a repeated field (Hmset.pairs[3]), or -1 */
} wire_path_t;

static size_t path_text(const wire_path_t *p, char *buf, size_t len)
{
    size_t n = p->up != NULL ? path_text(p->up, buf, len) : 0;
    int k = p->idx >= 0 ? snprintf(buf + n, len - n, "%s%s[%lld]", n > 0 ? "." : "", p->name,
                                   (long long)p->idx)
                        : snprintf(buf + n, len - n, "%s%s", n > 0 ? "." : "", p->name);
    return k < 0 ? n : n + (size_t)k >= len ? len - 1 : n + (size_t)k;
}

/* Value.string_value: text, but `bytes` in the C binding (see
 * proto/kvs_c.cmake), so the descriptor says BYTES. */
static int is_value_text(const ProtobufCMessageDescriptor *d, const ProtobufCFieldDescriptor *f)
{
    return d == &kvs__value__descriptor && f->id == 1;
}

/* The wire type protobuf gives a field of type `t`. */
static unsigned wire_type_of(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
        return 5;
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 1;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_BYTES:
    case PROTOBUF_C_TYPE_MESSAGE:
        return 2;
    default:
        return 0; /* the integers, bool, enum */
    }
}

/* Checks the packed elements p[0..end) of a repeated scalar of wire type
 * `wt`. Returns 0, or -1. */
static int wire_packed(const uint8_t *p, const uint8_t *end, unsigned wt)
{
    uint64_t v;
    if (wt != 0)
        return (size_t)(end - p) % (wt == 1 ? 8 : 4) == 0 ? 0 : -1;
    while (p < end)
        if (kvs_varint_get(&p, end, &v) != 0) /* within 64 bits */
            return -1;
    return 0;
}

static uint32_t wire_bad(char *msg, size_t mlen, const wire_path_t *path, const char *name,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* 400 with "<path>[.name]: <what>" in msg. */
static uint32_t wire_bad(char *msg, size_t mlen, const wire_path_t *path, const char *name,
                         const char *fmt, ...)
{
    char where[160], what[200];
    wire_path_t leaf = {name, path, -1};
    path_text(name != NULL ? &leaf : path, where, sizeof(where));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return bad(msg, mlen, "%s %s", where, what);
}

/* Walks one message's wire bytes against its descriptor; recurses into
 * sub-messages (the schema bounds the depth). protobuf-c reads some bytes
 * that Google's parsers read otherwise, and leaves some unchecked; so
 * every field must be one the message declares (an unknown field in a
 * sub-message, even in an earlier copy that a later one merges into, is
 * refused as at the top), of the wire type its type is sent as (protobuf
 * reads any other as an unknown field; protobuf-c reads a bool of any
 * wire type as true), with varints within 64 bits and tags and lengths
 * within 5 bytes. String fields (table names) must be NUL-free UTF-8;
 * Value.string_value must be UTF-8 and may hold U+0000 like any other
 * code point. */
#define WIRE_DEPTH_MAX 16
/* *nul is set when the fault found is a NUL byte in a string field: the
 * one fault kvs_msg_check_request reports over validate's. */
static uint32_t check_wire(const ProtobufCMessageDescriptor *d, const uint8_t *p,
                           const uint8_t *end, const wire_path_t *path, int depth, char *msg,
                           size_t mlen, int *nul)
{
    static const char *const wire_names[8] = {"varint",      "64-bit",     "length-delimited",
                                              "start-group", "end-group",  "32-bit",
                                              "wire type 6", "wire type 7"};
    uint64_t nth[16] = {0};     /* elements of each repeated message field so far, by field id */
    if (depth > WIRE_DEPTH_MAX) /* no request message nests itself today: a guard */
        return wire_bad(msg, mlen, path, NULL, "nests messages deeper than %d levels",
                        WIRE_DEPTH_MAX);
    while (p < end) {
        uint64_t tag, v, n = 0;
        if (read_varint32(&p, end, &tag) != 0 || tag >> 3 == 0 || tag >> 3 >= 1u << 29)
            return wire_bad(msg, mlen, path, NULL,
                            "holds bytes that are not a field tag (a varint of at most 5 bytes "
                            "naming a field from 1 to 536870911)");
        unsigned wt = (unsigned)(tag & 7), id = (unsigned)(tag >> 3);
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, id);
        if (f == NULL)
            return wire_bad(msg, mlen, path, NULL, "has unknown field %u (%s)", id, wire_names[wt]);
        unsigned want = wire_type_of(f->type);
        int packed = wt == 2 && want != 2 && f->label == PROTOBUF_C_LABEL_REPEATED;
        if (wt != want && !packed)
            return wire_bad(msg, mlen, path, f->name,
                            "is sent as %s, not as its type's %s: protobuf reads it as an "
                            "unknown field",
                            wire_names[wt], wire_names[want]);
        const uint8_t *at = p;
        if (wt == 0 && kvs_varint_get(&p, end, &v) != 0) /* no bits past 64: see kvs_varint.h */
            return wire_bad(msg, mlen, path, f->name, "%s",
                            p - at >= KVS_VARINT_MAX ? "is a varint past 64 bits"
                                                     : "runs past the end of its message");
        if (wt == 2 && read_varint32(&p, end, &n) != 0)
            return wire_bad(msg, mlen, path, f->name,
                            "has a length that is not a varint of at most 5 bytes");
        if ((wt == 1 && end - p < 8) || (wt == 5 && end - p < 4) ||
            (wt == 2 && n > (uint64_t)(end - p)))
            return wire_bad(msg, mlen, path, f->name, "runs past the end of its message");
        if (wt == 1 || wt == 5) {
            p += wt == 1 ? 8 : 4;
            continue;
        }
        if (wt == 0)
            continue;
        if (packed) {
            if (wire_packed(p, p + n, want) != 0)
                return wire_bad(msg, mlen, path, f->name, "is a packed list that is not whole %s",
                                want == 0 ? "varints within 64 bits" : "numbers");
        } else if (f->type == PROTOBUF_C_TYPE_STRING || is_value_text(d, f)) {
            if (!kvs_utf8_valid(p, n))
                return wire_bad(msg, mlen, path, f->name,
                                "is not valid UTF-8 text; send arbitrary bytes as binary fields");
            if (f->type == PROTOBUF_C_TYPE_STRING && memchr(p, 0, n) != NULL) {
                *nul = 1;
                return wire_bad(msg, mlen, path, f->name, "holds a NUL byte (U+0000), which %s",
                                strcmp(f->name, "table") == 0
                                    ? "table names may not contain"
                                    : "no text field but Value.string_value may hold");
            }
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            /* Paths read as users write them: Hset.pair.value.string_value
             * (the command's message name, then field names). */
            const ProtobufCMessageDescriptor *fd = f->descriptor;
            wire_path_t sub = {depth == 0 ? fd->short_name : f->name, depth == 0 ? NULL : path, -1};
            if (depth > 0 && f->label == PROTOBUF_C_LABEL_REPEATED)
                sub.idx = id < 16 ? (int64_t)nth[id]++ : -1;
            uint32_t st = check_wire(fd, p, p + n, &sub, depth + 1, msg, mlen, nul);
            if (st != KVS_STATUS_OK)
                return st;
        }
        p += n;
    }
    return KVS_STATUS_OK;
}

/* The fields of p[0..end), a message of type `d`, that protobuf-c would
 * keep as unknown (at every depth), counted up to `most` + 1 (then it
 * stops): protobuf-c allocates a record and a copy of the bytes for each
 * before the decode budget can stop it. Bytes that are not fields end the
 * count: protobuf-c refuses them before it allocates. */
static size_t wire_unknowns(const ProtobufCMessageDescriptor *d, const uint8_t *p,
                            const uint8_t *end, int depth, size_t most)
{
    const uint8_t *v = NULL, *body;
    uint64_t tag = 0;
    size_t count = 0;
    if (depth > WIRE_DEPTH_MAX)
        return 0;
    while (p < end && count <= most) {
        if (next_field(&p, end, &tag, &v) != 0 || tag >> 3 == 0 || tag >> 3 >= 1u << 29)
            return count;
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field(d, (unsigned)(tag >> 3));
        if (f == NULL)
            count++;
        else if ((tag & 7) == 2 && f->type == PROTOBUF_C_TYPE_MESSAGE) {
            size_t n = field_body(v, end, &body);
            count += wire_unknowns(f->descriptor, body, body + n, depth + 1, most - count);
        }
    }
    return count;
}

static uint32_t check_request_wire(const uint8_t *p, size_t len, char *msg, size_t mlen, int *nul)
{
    wire_path_t top = {"CommandRequest", NULL, -1};
    *nul = 0;
    return check_wire(&kvs__command_request__descriptor, p, p + len, &top, 0, msg, mlen, nul);
}

uint32_t kvs_msg_check_wire(const uint8_t *p, size_t len, char *msg, size_t mlen)
{
    int nul;
    return check_request_wire(p, len, msg, mlen, &nul);
}

uint32_t kvs_msg_check_request(const Kvs__CommandRequest *req, const uint8_t *p, size_t len,
                               char *msg, size_t mlen)
{
    uint32_t st = kvs_msg_validate(req, msg, mlen);
    if (st == KVS_STATUS_OK)
        return kvs_msg_check_wire(p, len, msg, mlen);
    /* The one fault the decoded request hides: a string field cut at a
     * NUL byte (C strings). validate's other words say more than the
     * wire's (an unsupported command, not an unknown field). */
    char wire[512];
    int nul;
    if (st == KVS_STATUS_BAD_REQUEST &&
        check_request_wire(p, len, wire, sizeof(wire), &nul) != KVS_STATUS_OK && nul)
        snprintf(msg, mlen, "%s", wire);
    return st;
}

/* ---- fast path --------------------------------------------------------- */

/* A length-delimited field: tag, then length, then bytes within [p, end). */
/* A tag or a length prefix as protobuf-c reads them: at most 5 bytes and
 * 32 bits. Anything longer the decoder refuses, so peek must refuse it too
 * (an Hset accepted here stores its Value bytes unchecked). */
static int read_varint32(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    const uint8_t *start = *p;
    if (kvs_varint_get(p, end, v) != 0 || *p - start > 5 || *v > UINT32_MAX)
        return -1;
    return 0;
}

static int peek_field(const uint8_t **p, const uint8_t *end, uint64_t *tag, const uint8_t **v,
                      size_t *n)
{
    uint64_t len;
    if (read_varint32(p, end, tag) != 0 || (*tag >> 3) == 0 || (*tag >> 3) >= (1u << 29))
        return -1;
    switch (*tag & 7) {
    case 0:
        *v = *p;
        if (kvs_varint_get(p, end, &len) != 0)
            return -1;
        *n = (size_t)(*p - *v);
        return 0;
    case 1:
        if (end - *p < 8)
            return -1;
        *v = *p;
        *n = 8;
        *p += 8;
        return 0;
    case 2:
        if (read_varint32(p, end, &len) != 0 || len > (uint64_t)(end - *p))
            return -1;
        *v = *p;
        *n = (size_t)len;
        *p += len;
        return 0;
    default:
        return -1;
    }
}

const char *kvs_msg_request_table_sent(const Kvs__CommandRequest *req, const uint8_t *payload,
                                       size_t len, size_t *n)
{
    const char *table = kvs_msg_request_table(req), *sent = NULL;
    const uint8_t *p = payload, *end = payload + len, *v, *body, *bend;
    size_t got = 0, sent_len = 0;
    uint64_t tag;
    *n = table != NULL ? strlen(table) : 0;
    if (table == NULL)
        return NULL;
    /* The last table field of the command's message is the one the
     * decoder kept (across copies of the message too, which it merges). */
    while (p < end && peek_field(&p, end, &tag, &body, &got) == 0) {
        if (tag != ((uint64_t)req->command_case << 3 | 2))
            continue;
        for (bend = body + got; body < bend && peek_field(&body, bend, &tag, &v, &got) == 0;)
            if (tag == (1u << 3 | 2)) {
                sent = (const char *)v;
                sent_len = got;
            }
    }
    if (sent == NULL)
        return table;
    *n = sent_len;
    return sent;
}

int kvs_msg_frame_writes(const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len;
    uint64_t tag;
    /* Every field protobuf-c steps over is stepped over here, a 32-bit
     * one included: it reads a bool (accept_stale) of any wire type. */
    while (p < end && kvs_varint_get(&p, end, &tag) == 0) {
        if (skip_field(&p, end, tag) != 0)
            return 0;
        if ((tag & 7) == 2 && tag >> 3 <= UINT32_MAX &&
            kvs_msg_is_write((Kvs__CommandRequest__CommandCase)(tag >> 3)))
            return 1;
    }
    return 0;
}

/* A table name: NUL-free UTF-8. */
/* A Value with exactly one known member of the right wire type; text is
 * UTF-8 (a NUL is a code point like any other there). */
static int peek_value(const uint8_t *p, size_t len)
{
    static const unsigned wire[6] = {9, 2, 2, 0, 1, 0}; /* by field number; 9 = none */
    const uint8_t *end = p + len, *v;
    uint64_t tag;
    size_t n;
    if (peek_field(&p, end, &tag, &v, &n) != 0 || p != end)
        return 0;
    unsigned f = (unsigned)(tag >> 3);
    if (f < 1 || f > 5 || (tag & 7) != wire[f])
        return 0;
    return f != 1 || kvs_utf8_valid(v, n);
}

/* An Hset's Kvpair: key and value, each exactly once, nothing else. */
static int peek_pair(const uint8_t *p, size_t len, kvs_peek_t *out)
{
    const uint8_t *end = p + len, *v;
    uint64_t tag;
    size_t n;
    out->key = out->value = NULL;
    while (p < end) {
        if (peek_field(&p, end, &tag, &v, &n) != 0 || (tag & 7) != 2)
            return 0;
        if (tag >> 3 == 1 && out->key == NULL) {
            out->key = v;
            out->key_len = n;
        } else if (tag >> 3 == 2 && out->value == NULL) {
            out->value = v;
            out->value_len = n;
        } else {
            return 0; /* unknown or repeated field */
        }
    }
    return out->key != NULL && out->value != NULL && peek_value(out->value, out->value_len);
}

int kvs_msg_peek(const uint8_t *p, size_t len, kvs_peek_t *out)
{
    const uint8_t *end = p + len, *body, *v;
    uint64_t tag;
    size_t blen, n;
    if (peek_field(&p, end, &tag, &body, &blen) != 0 || (tag & 7) != 2)
        return 0;
    out->cmd = (Kvs__CommandRequest__CommandCase)(tag >> 3);
    if (out->cmd != KVS__COMMAND_REQUEST__COMMAND_HGET &&
        out->cmd != KVS__COMMAND_REQUEST__COMMAND_HSET &&
        out->cmd != KVS__COMMAND_REQUEST__COMMAND_HDEL &&
        out->cmd != KVS__COMMAND_REQUEST__COMMAND_HEXIST)
        return 0;
    /* An Hset or Hdel may ask for value_lengths (the Redis door's HSET and
     * HDEL do) and presence_only (a router for a user without read), after
     * its command, in that order, each once, as protobuf packs them. */
    out->value_lengths = out->presence_only = 0;
    for (uint64_t want = 102 << 3 | 0; p != end; want += 1 << 3) {
        if ((out->cmd != KVS__COMMAND_REQUEST__COMMAND_HSET &&
             out->cmd != KVS__COMMAND_REQUEST__COMMAND_HDEL) ||
            peek_field(&p, end, &tag, &v, &n) != 0 || tag < want || tag > (103 << 3 | 0) ||
            (tag & 7) != 0)
            return 0;
        if (tag == (102 << 3 | 0))
            out->value_lengths = varint_bool(v, n);
        else
            out->presence_only = varint_bool(v, n);
        want = tag;
    }
    /* Hget, Hdel, Hexist: {table = 1, key = 2}; Hset: {table = 1,
     * pair = 2 {key = 1, value = 2}}. */
    int hset = out->cmd == KVS__COMMAND_REQUEST__COMMAND_HSET;
    out->table = out->key = out->value = NULL;
    out->value_len = 0;
    for (p = body, end = body + blen; p < end;) {
        if (peek_field(&p, end, &tag, &v, &n) != 0 || (tag & 7) != 2)
            return 0;
        if (tag >> 3 == 1 && out->table == NULL) {
            out->table = v;
            out->table_len = n;
        } else if (tag >> 3 == 2 && out->key == NULL && !hset) {
            out->key = v;
            out->key_len = n;
        } else if (tag >> 3 == 2 && out->key == NULL) {
            if (!peek_pair(v, n, out)) /* anything unusual: the full path decides */
                return 0;
        } else {
            return 0; /* unknown or repeated field */
        }
    }
    if (out->table == NULL || kvs_table_check(out->table, out->table_len) != KVS_TABLE_OK)
        return 0;
    return out->key != NULL && out->key_len > 0 && out->key_len <= KVS_MAX_KEY;
}

int kvs_msg_encode_key_request(kvs_buf_t *out, Kvs__CommandRequest__CommandCase cmd, const void *t,
                               size_t tlen, const void *k, size_t klen)
{
    /* CommandRequest { <cmd> = { table = 1; key = 2 } }: every single-key
     * command has that shape. protobuf-c omits an empty string or bytes. */
    size_t body =
        (tlen ? 1 + kvs_varint_len(tlen) + tlen : 0) + (klen ? 1 + kvs_varint_len(klen) + klen : 0);
    size_t total = kvs_varint_len((uint64_t)cmd << 3 | 2) + kvs_varint_len(body) + body;
    if (kvs_buf_reserve(out, total) != 0)
        return -ENOMEM;
    uint8_t *d = out->data + out->len;
    d += kvs_varint_put(d, (uint64_t)cmd << 3 | 2);
    d += kvs_varint_put(d, body);
    if (tlen) {
        *d++ = 0x0a;
        d += kvs_varint_put(d, tlen);
        memcpy(d, t, tlen);
        d += tlen;
    }
    if (klen) {
        *d++ = 0x12;
        d += kvs_varint_put(d, klen);
        memcpy(d, k, klen);
        d += klen;
    }
    out->len += total;
    return 0;
}

int kvs_msg_answer_peek(const uint8_t *p, size_t len, kvs_answer_peek_t *out)
{
    const uint8_t *end = p + len, *v;
    uint64_t tag;
    size_t n;
    memset(out, 0, sizeof(*out));
    while (p < end) {
        if (peek_field(&p, end, &tag, &v, &n) != 0)
            return 0;
        if (tag == (1 << 3 | 0)) { /* status */
            uint64_t s;
            const uint8_t *q = v;
            if (kvs_varint_get(&q, v + n, &s) != 0 || s > UINT32_MAX)
                return 0;
            out->status = (uint32_t)s;
        } else if (tag == (2 << 3 | 2)) {
            out->message = v;
            out->message_len = n;
        } else if (tag == (3 << 3 | 2)) {
            if (out->n_values++ == 0) {
                out->value = v;
                out->value_len = n;
            }
        } else {
            return 0; /* pairs, a cursor, or anything unexpected */
        }
    }
    return 1;
}

size_t kvs_msg_value_text(const kvs_value_peek_t *v, char *num, const uint8_t **text)
{
    size_t n;
    switch (v->kind) {
    case KVS__VALUE__KIND_STRING_VALUE:
    case KVS__VALUE__KIND_BINARY_VALUE:
        *text = v->bytes;
        return v->len;
    case KVS__VALUE__KIND_INTEGER_VALUE:
        n = (size_t)snprintf(num, KVS_REDIS_DOUBLE_MAX, "%lld", (long long)v->integer);
        break;
    case KVS__VALUE__KIND_FLOAT_VALUE:
        n = kvs_redis_format_double(num, v->real);
        break;
    case KVS__VALUE__KIND_BOOL_VALUE:
        n = (size_t)snprintf(num, KVS_REDIS_DOUBLE_MAX, "%d", v->boolean ? 1 : 0);
        break;
    default:
        n = 0;
        break;
    }
    *text = (const uint8_t *)num;
    return n;
}

/* protobuf-c reads a bool_value (field 5) of any wire type but a group's,
 * as true when any byte it reads (a length prefix included) has one of
 * its low 7 bits set; so a Kafka record's payload (format: value) may be
 * stored holding one of wire type 1, 2 or 5. Returns 1 when p[0..end) is
 * exactly one such field, setting *out; else 0. */
static int odd_bool_peek(const uint8_t *p, const uint8_t *end, kvs_value_peek_t *out)
{
    uint64_t tag, n;
    if (read_varint32(&p, end, &tag) != 0 || tag >> 3 != 5)
        return 0;
    const uint8_t *v = p;
    switch (tag & 7) {
    case 1:
        n = 8;
        break;
    case 5:
        n = 4;
        break;
    case 2:
        if (read_varint32(&p, end, &n) != 0)
            return 0;
        n += (uint64_t)(p - v);
        break;
    default:
        return 0;
    }
    if (n != (uint64_t)(end - v))
        return 0;
    out->kind = KVS__VALUE__KIND_BOOL_VALUE;
    out->boolean = varint_bool(v, (size_t)n);
    out->integer = out->boolean;
    return 1;
}

/* The members as kvs writes them (each of its own wire type). */
static int plain_value_peek(const uint8_t *p, const uint8_t *end, kvs_value_peek_t *out)
{
    const uint8_t *v, *q;
    uint64_t tag, x;
    size_t n;
    if (peek_field(&p, end, &tag, &v, &n) != 0 || p != end)
        return 0;
    switch (tag) {
    case 1 << 3 | 2:
    case 2 << 3 | 2:
        out->kind = tag >> 3 == 1 ? KVS__VALUE__KIND_STRING_VALUE : KVS__VALUE__KIND_BINARY_VALUE;
        out->bytes = v;
        out->len = n;
        return 1;
    case 3 << 3 | 0:
    case 5 << 3 | 0:
        q = v;
        if (kvs_varint_get(&q, v + n, &x) != 0)
            return 0;
        out->kind = tag >> 3 == 3 ? KVS__VALUE__KIND_INTEGER_VALUE : KVS__VALUE__KIND_BOOL_VALUE;
        out->integer = (int64_t)x;
        out->boolean = varint_bool(v, n);
        return 1;
    case 4 << 3 | 1:
        x = 0;
        for (int i = 7; i >= 0; i--)
            x = x << 8 | v[i];
        memcpy(&out->real, &x, sizeof(x));
        out->kind = KVS__VALUE__KIND_FLOAT_VALUE;
        return 1;
    default:
        return 0;
    }
}

int kvs_msg_value_peek(const uint8_t *p, size_t len, kvs_value_peek_t *out)
{
    memset(out, 0, sizeof(*out));
    out->kind = KVS__VALUE__KIND__NOT_SET;
    if (len == 0)
        return 1;
    return plain_value_peek(p, p + len, out) || odd_bool_peek(p, p + len, out);
}

int kvs_msg_find_bytes(const uint8_t *p, size_t len, uint32_t field, const uint8_t **v, size_t *n)
{
    const uint8_t *end = p + len, *val;
    uint64_t tag;
    size_t vlen;
    int found = 0;
    while (p < end) {
        if (peek_field(&p, end, &tag, &val, &vlen) != 0)
            return -1;
        if ((tag >> 3) == field && (tag & 7) == 2) {
            *v = val;
            *n = vlen;
            found = 1; /* the last occurrence wins, as in protobuf */
        }
    }
    return found;
}

int kvs_msg_next_field(const uint8_t **p, const uint8_t *end, uint64_t *tag, const uint8_t **v,
                       size_t *n)
{
    return peek_field(p, end, tag, v, n);
}

int kvs_msg_step_field(const uint8_t **p, const uint8_t *end)
{
    uint64_t tag;
    if (read_varint32(p, end, &tag) != 0 || (tag >> 3) == 0)
        return -1;
    return skip_field(p, end, tag);
}

/* ---- key counts --------------------------------------------------------- */

/* Moves *p past the field whose tag is `tag` (any wire type protobuf-c
 * reads). Returns 0, or -1 when the bytes end first or the type is not one
 * protobuf-c reads. */
static int skip_field(const uint8_t **p, const uint8_t *end, uint64_t tag)
{
    uint64_t v;
    switch (tag & 7) {
    case 0: /* any varint protobuf-c takes, bits past 64 included (which
             * kvs_varint_get refuses): keys after one must be counted */
        for (size_t i = 0; i < KVS_VARINT_MAX && *p < end; i++)
            if (*(*p)++ < 0x80)
                return 0;
        return -1;
    case 1:
    case 5: {
        size_t n = (tag & 7) == 1 ? 8 : 4;
        if ((size_t)(end - *p) < n)
            return -1;
        *p += n;
        return 0;
    }
    case 2: /* lengths: at most 5 bytes, as protobuf-c reads them */
        if (read_varint32(p, end, &v) != 0 || v > (uint64_t)(end - *p))
            return -1;
        *p += v;
        return 0;
    default:
        return -1;
    }
}

/* Field 2 entries (keys, pairs) in the encoded command message p[0..len). */
static size_t count_field2(const uint8_t *p, const uint8_t *end)
{
    size_t n = 0;
    uint64_t tag;
    while (p < end && kvs_varint_get(&p, end, &tag) == 0) {
        if (tag == (2 << 3 | 2))
            n++;
        if (skip_field(&p, end, tag) != 0)
            break;
    }
    return n;
}

static int is_multi_key(uint64_t field)
{
    return field == KVS__COMMAND_REQUEST__COMMAND_HMGET ||
           field == KVS__COMMAND_REQUEST__COMMAND_HMSET ||
           field == KVS__COMMAND_REQUEST__COMMAND_HMDEL ||
           field == KVS__COMMAND_REQUEST__COMMAND_HMEXIST;
}

/* Every command member's keys, for bytes command_run cannot read (the
 * decoder refuses them; the count only has to be no less than theirs). */
static size_t count_every_member(const uint8_t *p, const uint8_t *end,
                                 Kvs__CommandRequest__CommandCase *cmd)
{
    size_t n = 0;
    uint64_t tag;
    while (p < end && kvs_varint_get(&p, end, &tag) == 0) {
        const uint8_t *at = p;
        uint64_t vlen;
        if ((tag & 7) == 2 && is_multi_key(tag >> 3) && kvs_varint_get(&at, end, &vlen) == 0 &&
            vlen <= (uint64_t)(end - at)) {
            n += count_field2(at, at + vlen);
            *cmd = (Kvs__CommandRequest__CommandCase)(tag >> 3);
        }
        if (skip_field(&p, end, tag) != 0)
            break;
    }
    return n;
}

size_t kvs_msg_count_keys(const uint8_t *p, size_t len, Kvs__CommandRequest__CommandCase *cmd)
{
    const uint8_t *end = p + len, *q, *v;
    command_run_t run;
    uint64_t tag = 0, vlen = 0;
    size_t n = 0;
    *cmd = KVS__COMMAND_REQUEST__COMMAND__NOT_SET;
    if (command_run(p, len, &run) != 0)
        return count_every_member(p, end, cmd);
    if (run.count == 0 || !is_multi_key(run.member))
        return 0;
    /* Only the last run is decoded (merged into one member, see
     * merge_command): the members before it are dropped, so their keys
     * cost nothing and are not counted. A run of several is counted member
     * by member: exact only once merged (see kvs_msg.h). */
    *cmd = (Kvs__CommandRequest__CommandCase)run.member;
    for (q = run.at; q < end;) { /* command_run read it whole: nothing fails */
        (void)read_varint32(&q, end, &tag);
        v = q;
        (void)skip_field(&q, end, tag);
        if (command_member(tag) != 0 && kvs_varint_get(&v, end, &vlen) == 0)
            n += count_field2(v, v + vlen);
    }
    return n;
}

/* The table the last run of command members names (its last `table`
 * field, as the decoder keeps), when it is a name kvs accepts (UTF-8, no
 * NUL, at most KVS_MAX_TABLE bytes): *table points into p. Else none. */
static void run_table(const uint8_t *p, size_t len, const uint8_t **table, size_t *table_len)
{
    const uint8_t *end = p + len, *q, *v, *f;
    command_run_t run;
    uint64_t tag = 0, vlen = 0, ftag = 0, flen = 0;
    *table = NULL, *table_len = 0;
    if (command_run(p, len, &run) != 0 || run.count == 0)
        return;
    for (q = run.at; q < end;) { /* command_run read it whole: nothing fails */
        (void)read_varint32(&q, end, &tag);
        v = q;
        (void)skip_field(&q, end, tag);
        if (command_member(tag) == 0 || kvs_varint_get(&v, end, &vlen) != 0)
            continue;
        for (const uint8_t *m = v, *mend = v + vlen; m < mend;) {
            if (kvs_varint_get(&m, mend, &ftag) != 0)
                break;
            f = m;
            if (skip_field(&m, mend, ftag) != 0)
                break;
            if (ftag == (1 << 3 | 2) && kvs_varint_get(&f, mend, &flen) == 0)
                *table = f, *table_len = (size_t)flen;
        }
    }
    if (*table != NULL && (*table_len > KVS_MAX_TABLE || !kvs_utf8_valid(*table, *table_len) ||
                           memchr(*table, '\0', *table_len) != NULL))
        *table = NULL, *table_len = 0;
}

uint32_t kvs_msg_check_keys(const uint8_t *p, size_t len, uint32_t max_keys,
                            kvs_msg_refused_t *refused, char *msg, size_t mlen)
{
    Kvs__CommandRequest__CommandCase cmd;
    if (max_keys == 0)
        return KVS_STATUS_OK;
    size_t n = kvs_msg_count_keys(p, len, &cmd);
    if (n <= max_keys)
        return KVS_STATUS_OK;
    if (refused != NULL) {
        refused->cmd = cmd;
        refused->keys = n < UINT32_MAX ? (uint32_t)n : UINT32_MAX;
        run_table(p, len, &refused->table, &refused->table_len);
    }
    snprintf(msg, mlen,
             "%s names %zu %s, more than limits.max_keys (%u); nothing was done; send fewer "
             "keys per request",
             kvs_msg_command_name(cmd), n,
             cmd == KVS__COMMAND_REQUEST__COMMAND_HMSET ? "pairs" : "keys", max_keys);
    return KVS_STATUS_TOO_LARGE;
}

/* ---- values ----------------------------------------------------------- */

int kvs_msg_decode_value(kvs_arena_t *arena, const uint8_t *p, size_t len, Kvs__Value **out)
{
    uint32_t why;
    *out = (Kvs__Value *)unpack_bounded(&kvs__value__descriptor, arena, p, len, &why);
    return *out != NULL ? 0 : why == KVS_STATUS_INTERNAL ? -ENOMEM : KVS_EPROTO;
}

int kvs_msg_value_valid(kvs_arena_t *arena, const uint8_t *p, size_t len)
{
    char msg[160];
    int nul;
    uint32_t why; /* a valid Value costs about its size: only unknown fields pass the budget */
    Kvs__Value *v = (Kvs__Value *)unpack_bounded(&kvs__value__descriptor, arena, p, len, &why);
    if (v == NULL && why == KVS_STATUS_INTERNAL) {
        kvs_arena_reset(arena);
        return -ENOMEM;
    }
    int ok = v != NULL && v->kind_case != KVS__VALUE__KIND__NOT_SET &&
             v->base.n_unknown_fields == 0 &&
             check_wire(&kvs__value__descriptor, p, p + len, &(wire_path_t){"Value", NULL, -1}, 1,
                        msg, sizeof(msg), &nul) == KVS_STATUS_OK;
    kvs_arena_reset(arena);
    return ok;
}

/* ---- answer sizes ------------------------------------------------------ */

size_t kvs_msg_answer_bound(size_t n, size_t bytes)
{
    return bytes + 8 * n + 64;
}

size_t kvs_msg_pair_max(size_t max_frame)
{
    return max_frame > KVS_MAX_KEY + 64 ? max_frame - KVS_MAX_KEY - 64 : 0;
}

void kvs_msg_largest_pair(const Kvs__CommandRequest *req, const kvs_peek_t *pk, size_t *klen,
                          size_t *vlen)
{
    *klen = 0, *vlen = 0;
    if (req == NULL) {
        if (pk->cmd == KVS__COMMAND_REQUEST__COMMAND_HSET)
            *klen = pk->key_len, *vlen = pk->value_len;
    } else if (req->command_case == KVS__COMMAND_REQUEST__COMMAND_HSET) {
        *klen = req->hset->pair->key.len;
        *vlen = kvs__value__get_packed_size(req->hset->pair->value);
    } else if (req->command_case == KVS__COMMAND_REQUEST__COMMAND_HMSET) {
        for (size_t i = 0; i < req->hmset->n_pairs; i++) {
            const Kvs__Kvpair *p = req->hmset->pairs[i];
            size_t v = kvs__value__get_packed_size(p->value);
            if (p->key.len + v > *klen + *vlen)
                *klen = p->key.len, *vlen = v;
        }
    }
}

/* ---- responses -------------------------------------------------------- */

int kvs_msg_append(kvs_buf_t *out, const ProtobufCMessage *m, size_t max_frame)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > max_frame || n > KVS_FRAME_LEN_MASK)
        return KVS_ETOOBIG;
    int rc = kvs_buf_reserve(out, KVS_FRAME_HEADER + n);
    if (rc != 0)
        return rc;
    uint8_t *p = out->data + out->len;
    kvs_frame_put_header(p, (uint32_t)n);
    protobuf_c_message_pack(m, p + KVS_FRAME_HEADER);
    out->len += KVS_FRAME_HEADER + n;
    return 0;
}

int kvs_msg_append_status(kvs_buf_t *out, uint32_t status, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof(text)) /* cut: not inside a character (protobuf strings are UTF-8) */
        text[kvs_utf8_cut(text, sizeof(text) - 1)] = '\0';
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    r.status = status;
    r.message = text;
    return kvs_msg_append(out, &r.base, SIZE_MAX);
}

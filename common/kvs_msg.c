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

#include <errno.h>
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
    n = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
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
    kvs_arena_chunk_t *c = a->head;
    if (c == NULL)
        return;
    /* Keep the oldest standard-size chunk (the tail of the list). */
    while (c->next != NULL) {
        kvs_arena_chunk_t *next = c->next;
        free(c);
        c = next;
    }
    if (c->size != ARENA_CHUNK) {
        free(c);
        c = NULL;
    }
    a->head = c;
    a->used = 0;
    a->big = 0;
}

void kvs_arena_close(kvs_arena_t *a)
{
    kvs_arena_reset(a);
    free(a->head);
    a->head = NULL;
}

/* ---- requests --------------------------------------------------------- */

Kvs__CommandRequest *kvs_msg_decode_request(kvs_arena_t *arena, const uint8_t *p, size_t len)
{
    return kvs__command_request__unpack(arena ? &arena->pb : NULL, len, p);
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
    default:
        return NULL;
    }
}

const char *kvs_msg_request_table(const Kvs__CommandRequest *req)
{
    const ProtobufCMessage *body = request_body(req);
    if (body == NULL || req->command_case == KVS__COMMAND_REQUEST__COMMAND_PING)
        return NULL;
    /* Every table-bearing command has `string table = 1`; the descriptor
     * says where protobuf-c put it. */
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(body->descriptor, 1);
    if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING)
        return NULL;
    return *(char *const *)(const void *)((const char *)body + f->offset);
}

static uint32_t bad(char *msg, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

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
    size_t n = strlen(table);
    if (n == 0)
        return bad(msg, len, "%s.table is empty", cmd);
    if (n > KVS_MAX_TABLE)
        return bad(msg, len, "%s.table is %zu bytes; the maximum is %d", cmd, n, KVS_MAX_TABLE);
    if (table[0] == '_' && table[1] == '_')
        return bad(msg, len, "%s.table \"%s\" is reserved (names starting with \"__\" belong to kvs)",
                   cmd, table);
    return KVS_STATUS_OK;
}

static uint32_t check_key(const char *cmd, const char *field, long idx, const ProtobufCBinaryData *k,
                          char *msg, size_t len)
{
    char where[64];
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
        return bad(msg, len, "%s has an unsupported field %u", where, v->base.unknown_fields[0].tag);
    return KVS_STATUS_OK;
}

static uint32_t check_hmset(const Kvs__Hmset *m, char *msg, size_t len)
{
    if (m->n_pairs == 0)
        return bad(msg, len, "Hmset.pairs is empty; give at least one pair");
    for (size_t i = 0; i < m->n_pairs; i++) {
        const Kvs__Kvpair *p = m->pairs[i];
        char where[48];
        uint32_t st = check_key("Hmset", "pairs.key", (long)i, &p->key, msg, len);
        if (st != KVS_STATUS_OK)
            return st;
        snprintf(where, sizeof(where), "Hmset.pairs[%zu].value", i);
        st = check_value(where, p->value, msg, len);
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
    case KVS__COMMAND_REQUEST__COMMAND_HSET: {
        uint32_t st = check_key(cmd, "key", -1, &r->hset->key, msg, len);
        return st != KVS_STATUS_OK ? st : check_value("Hset.value", r->hset->value, msg, len);
    }
    case KVS__COMMAND_REQUEST__COMMAND_HMGET:
        return check_keys(cmd, r->hmget->n_keys, r->hmget->keys, msg, len);
    case KVS__COMMAND_REQUEST__COMMAND_HMDEL:
        return check_keys(cmd, r->hmdel->n_keys, r->hmdel->keys, msg, len);
    case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
        return check_keys(cmd, r->hmexist->n_keys, r->hmexist->keys, msg, len);
    case KVS__COMMAND_REQUEST__COMMAND_HMSET:
        return check_hmset(r->hmset, msg, len);
    case KVS__COMMAND_REQUEST__COMMAND_HSCAN:
        if (r->hscan->cursor.len > KVS_MAX_KEY + 16)
            return bad(msg, len, "Hscan.cursor is not a cursor this server returned");
        return KVS_STATUS_OK;
    default:
        return KVS_STATUS_OK;
    }
}

uint32_t kvs_msg_validate(const Kvs__CommandRequest *req, char *msg, size_t len)
{
    const ProtobufCMessage *body = request_body(req);
    if (body == NULL) {
        if (req->base.n_unknown_fields > 0)
            return bad(msg, len,
                       "unsupported command (CommandRequest field %u); this server supports "
                       "Hget Hgetall Hmget Hset Hmset Hdel Hmdel Hexist Hmexist Hscan Ping",
                       req->base.unknown_fields[0].tag);
        return bad(msg, len, "request has no command set");
    }
    const char *cmd = kvs_msg_command_name(req->command_case);
    if (req->base.n_unknown_fields > 0)
        return bad(msg, len, "unsupported command: CommandRequest has unknown field %u beside %s",
                   req->base.unknown_fields[0].tag, cmd);
    if (body->n_unknown_fields > 0)
        return bad(msg, len, "unsupported command: %s has unknown field %u", cmd,
                   body->unknown_fields[0].tag);
    const char *table = kvs_msg_request_table(req);
    if (table != NULL) {
        uint32_t st = check_table(cmd, table, msg, len);
        if (st != KVS_STATUS_OK)
            return st;
    }
    return check_body(req, cmd, msg, len);
}

/* ---- values ----------------------------------------------------------- */

int kvs_msg_decode_value(kvs_arena_t *arena, const uint8_t *p, size_t len, Kvs__Value **out)
{
    *out = kvs__value__unpack(&arena->pb, len, p);
    return *out != NULL ? 0 : KVS_EPROTO;
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
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    Kvs__CommandResponse r = KVS__COMMAND_RESPONSE__INIT;
    r.status = status;
    r.message = text;
    return kvs_msg_append(out, &r.base, SIZE_MAX);
}

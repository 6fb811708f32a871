/*
 * router_redis: RESP commands in, kvs requests through the router, RESP
 * replies out.
 *
 * A command goes through three steps:
 *  1. the connection's codec (kvs_redis_parse) splits the input into
 *     commands; router_redis_command looks the name up in `commands`,
 *     checks the arity as Redis does, and calls the command's handler;
 *  2. the handler either finishes the request itself with a RESP reply
 *     (req->raw: resp already holds the client's bytes), or builds the
 *     kvs CommandRequest (protobuf-c messages in the router's redis_arena,
 *     packed into redis_pack) and hands it to router_route, noting in
 *     req->rcmd how the answer is to be shown;
 *  3. when the answer reaches the head of the client's FIFO,
 *     router_redis_answer decodes it (reply_arena) and writes Redis's
 *     reply shape: bulk or null for HGET, a count for HSET/HDEL, a map in
 *     RESP3 for HGETALL, and so on. kvs statuses other than 200 become
 *     "-ERR <message>".
 *
 * HSCAN cursors: Redis clients treat a cursor as a number ("0" starts and
 * ends a walk); kvs's is bytes (shard and next key). The router keeps the
 * bytes in a ring of ROUTER_REDIS_CURSORS slots and hands out the slot's
 * sequence number; a number whose slot was reused is an invalid cursor.
 * The ring belongs to one router process, so the number carries the
 * process's id base (router_procs.h: its index and generation): a cursor
 * handed out by another router process of the node (a client that
 * reconnected and reached another one) or by this one before it
 * restarted is refused with a message saying so, never resolved to
 * another walk that happens to have the same sequence number.
 *
 * Everything runs on the router's loop thread.
 */
#include "router_redis.h"
#include "kvs_crypto.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_log.h"
#include "kvs_msg.h"
#include "kvs_redis.h"
#include "kvs_varint.h"
#include "router.h"
#include "router_procs.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ROUTER_REDIS_CURSORS 16384
#define ROUTER_REDIS_KEEP_PACK 16384 /* bytes of redis_pack kept between commands */
#define ROUTER_REDIS_MAX_NAME 512    /* bytes in a client name: kept for the connection's life */
#define ROUTER_REDIS_GLOB_STEPS (1u << 24) /* glob work per HSCAN page or CONFIG GET: ~20 ms */
#define REDIS_COMPAT_VERSION "7.0.15"      /* what clients that check redis_version see */
#define SCAN_PAGE_MIN 128                  /* HSCAN's least count (cmd_hscan) */

const char router_redis_too_many_clients[] = "-ERR max number of clients reached\r\n";

/* How a kvs answer is shown (req->rcmd). */
enum {
    RC_NONE = 0,
    RC_HGET,
    RC_HSET,   /* number of fields that were new */
    RC_HSETNX, /* 1 if stored */
    RC_OK,     /* +OK (HMSET) */
    RC_HMGET,
    RC_HDEL, /* number of fields removed */
    RC_HEXISTS,
    RC_HGETALL,
    RC_HKEYS,
    RC_HVALS,
    RC_HLEN,
    RC_HSTRLEN,
    RC_HINCRBY,
    RC_HINCRBYFLOAT,
    RC_HSCAN,
    RC_EXISTS,
    RC_TYPE, /* +hash, or +none for a table without fields */
    RC_DEL,  /* 1 when the table had fields (DEL, UNLINK) */
    RC_INFO,
    RC_AUTH,          /* +OK */
    RC_HELLO,         /* HELLO ... AUTH: the HELLO reply once authenticated */
    RC_SLOWLOG_GET,   /* the entries (rflags: GET 0, none) */
    RC_SLOWLOG_LEN,   /* the number of entries */
    RC_SLOWLOG_RESET, /* +OK */
};

struct router_redis_s {
    router_t *r;
    kvs_redis_parser_t ps;
    kvs_codec_t codec;
    uint64_t id;
    int resp3;
    int quit;            /* QUIT seen: later commands are ignored */
    int multi;           /* MULTI seen, no EXEC or DISCARD yet (transaction_command) */
    int multi_aborted;   /* ... and a command was refused since: EXEC aborts */
    router_name_t *name; /* CLIENT SETNAME (a reference), or NULL */
    /* HELLO ... AUTH being checked (the client reads nothing meanwhile):
     * applied when the check succeeds. */
    int hello_ver;
    int hello_rename; /* SETNAME given: hello_name (NULL = clear) */
    router_name_t *hello_name;
    /* A DEL, UNLINK or EXISTS of several keys (several_keys): the keys
     * still to route once the first key's request is, copied (each a
     * 4-byte length and its bytes: routing a request may have the
     * connection parse the next command into `ps`, so the parser's
     * arguments are not read after it), and, as the parts' answers are
     * delivered in order, what they said so far (router_redis_fold). */
    const struct cmd_s *more_cmd;
    uint32_t more_n; /* keys in more_keys; 0: none to route */
    uint8_t more_resp3;
    kvs_buf_t more_keys;
    int64_t fold_n;      /* keys counted */
    uint32_t fold_parts; /* parts folded */
    kvs_buf_t fold_err;  /* the first part's error reply, or empty */
    kvs_buf_t fold_tmp;  /* a part's own reply */
};

typedef struct cursor_slot_s {
    uint64_t seq; /* 0: empty */
    char *table;
    uint8_t *bytes;
    size_t len;
} cursor_slot_t;

struct router_redis_cursors_s {
    cursor_slot_t slots[ROUTER_REDIS_CURSORS];
    uint64_t next;
};

/* HSCAN's MATCH pattern, kept with the request until its answer. */
typedef struct scan_ctx_s {
    char table[KVS_MAX_TABLE + 1];
    size_t plen;
    uint8_t pat[]; /* plen bytes, or none without MATCH */
} scan_ctx_t;

/* ---- parsing ------------------------------------------------------------------ */

/* The parser's error when it ran out of memory (500, not a protocol error). */
static const char redis_oom[] = "ERR the server is out of memory";

static int codec_next(void *state, const uint8_t *p, size_t len, size_t max, size_t *used, int peek)
{
    router_redis_t *rs = state;
    if (rs->quit) { /* after QUIT every byte is dropped, as one empty command */
        if (!peek)
            rs->ps.argc = 0;
        *used = len;
        return len > 0;
    }
    int rc = peek ? kvs_redis_complete(&rs->ps, p, len, max, used)
                  : kvs_redis_parse(&rs->ps, p, len, max, used);
    if (rc == -ENOMEM) {
        rs->ps.error = redis_oom;
        return -1;
    }
    return rc;
}

router_redis_t *router_redis_new(router_t *r, uint64_t client_id)
{
    router_redis_t *rs = calloc(1, sizeof(*rs));
    if (rs == NULL)
        return NULL;
    rs->r = r;
    rs->id = client_id;
    kvs_redis_parser_init(&rs->ps);
    rs->codec.next = codec_next;
    rs->codec.state = rs;
    return rs;
}

void router_redis_free(router_redis_t *rs)
{
    if (rs == NULL)
        return;
    kvs_redis_parser_close(&rs->ps);
    router_name_unref(rs->name);
    free(rs->hello_name);
    kvs_buf_free(&rs->fold_err);
    kvs_buf_free(&rs->fold_tmp);
    kvs_buf_free(&rs->more_keys);
    free(rs);
}

router_name_t *router_redis_name(const router_redis_t *rs)
{
    return rs->name;
}

const kvs_codec_t *router_redis_codec(router_redis_t *rs)
{
    return &rs->codec;
}

/* ---- replies built here ------------------------------------------------------- */

/* Finishes `req` with the RESP bytes now in req->resp. */
static void finish_raw(router_req_t *req)
{
    req->raw = 1;
    router_req_complete(req);
}

static void oom(router_req_t *req);

static void reply_verror(router_req_t *req, uint16_t status, const char *fmt, va_list ap)
{
    char text[600];
    vsnprintf(text, sizeof(text), fmt, ap);
    req->resp.len = 0;
    req->rstatus = status;
    kvs_redis_error(&req->resp, "%s", text);
    finish_raw(req);
}

/* An error reply; what hooks and metrics see of it is 400 (401 for
 * NOAUTH and WRONGPASS: router_route reads the code). */
static void reply_error(router_req_t *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void reply_error(router_req_t *req, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    reply_verror(req, 0, fmt, ap);
    va_end(ap);
}

/* An error reply that hooks and metrics see as `status`, the one the
 * protobuf door answers for the same refusal. */
static void reply_error_status(router_req_t *req, uint16_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void reply_error_status(router_req_t *req, uint16_t status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    reply_verror(req, status, fmt, ap);
    va_end(ap);
}

/* An error quoting a whole argument as Redis's "%s" does (up to a NUL,
 * newlines made spaces), where other errors cut one at 128 bytes. */
static void reply_error_quoting(router_req_t *req, const char *before, const kvs_redis_arg_t *a,
                                const char *after)
{
    kvs_buf_t *b = &req->resp;
    const uint8_t *nul = memchr(a->p, 0, a->len);
    size_t n = nul != NULL ? (size_t)(nul - a->p) : a->len, nb = strlen(before);
    size_t na = strlen(after);
    b->len = 0;
    if (kvs_buf_reserve(b, 1 + nb + n + na + 2) != 0)
        return oom(req);
    b->data[b->len++] = '-';
    memcpy(b->data + b->len, before, nb);
    b->len += nb;
    for (size_t i = 0; i < n; i++)
        b->data[b->len++] = a->p[i] == '\r' || a->p[i] == '\n' ? ' ' : a->p[i];
    memcpy(b->data + b->len, after, na);
    b->len += na;
    b->data[b->len++] = '\r';
    b->data[b->len++] = '\n';
    finish_raw(req);
}

static void oom(router_req_t *req)
{
    reply_error_status(req, KVS_STATUS_INTERNAL, "ERR the server is out of memory");
}

static void reply_ok(router_req_t *req)
{
    req->resp.len = 0;
    kvs_redis_simple(&req->resp, "OK");
    finish_raw(req);
}

/* An argument shown in an error message: at most 128 bytes, as Redis. */
static int shown(const kvs_redis_arg_t *a)
{
    return a->len > 128 ? 128 : (int)a->len;
}

void router_redis_input_error(router_redis_t *rs, router_req_t *req, int err, size_t unauth_max)
{
    /* A bulk length beyond the client's size limit ("invalid bulk length",
     * Redis's words, which a malformed one gets too) or a request past it:
     * the parser says which (ps.too_large). */
    if (err == KVS_EPROTO && unauth_max > 0 && rs->ps.error != NULL && rs->ps.too_large)
        reply_error(req,
                    "NOAUTH a client that has not authenticated may send requests of at most %zu "
                    "bytes: authenticate first (AUTH, or HELLO with AUTH); the connection is "
                    "closed",
                    unauth_max);
    else if (err == KVS_ELIMIT)
        reply_error_status(req, KVS_STATUS_UNAVAILABLE,
                           "ERR the server is short of memory for incomplete requests "
                           "(limits.input_buffers); the connection is closed");
    else if (rs->ps.error == redis_oom)
        oom(req);
    else if (err == KVS_ENOTLS)
        reply_error(req, "ERR this port requires TLS (tls.router); connect with TLS "
                         "(redis-cli --tls)");
    else if (err == KVS_ETLSHELLO)
        reply_error(req, "ERR this port does not use TLS; connect without TLS");
    else if (rs->ps.error != NULL && strncmp(rs->ps.error, "ERR ", 4) == 0)
        reply_error(req, "%s", rs->ps.error);
    else
        reply_error(req, "ERR %s", rs->ps.error != NULL ? rs->ps.error : "Protocol error");
}

/* ---- kvs requests -------------------------------------------------------------- */

typedef struct cmd_s cmd_t;
typedef void (*cmd_fn)(router_redis_t *rs, router_client_t *cl, router_req_t *req,
                       const cmd_t *cmd);

/* What args_refused checks before a command runs: its key (argument 1)
 * and where its hash fields are, from argument 2. */
enum {
    ARGS_FREE = 0, /* nothing (not a hash command) */
    ARGS_KEY,      /* the key: HGETALL, HKEYS, HVALS, HLEN, HSCAN, EXISTS, DEL */
    ARGS_FIELD,    /* the key and one field: HGET, HSTRLEN, HEXISTS, HSETNX, HINCRBY* */
    ARGS_FIELDS,   /* the key and every other argument: HMGET, HDEL */
    ARGS_PAIRS,    /* the key and field value pairs: HSET, HMSET */
};

struct cmd_s {
    const char *name; /* lower case */
    int arity;        /* Redis's convention: -N means at least N */
    const char *flags;
    int first, last, step; /* key positions, for COMMAND */
    cmd_fn fn;
    int rcmd;
    int args; /* ARGS_* */
};

/* A Redis key must be a kvs table name (kvs_table_check). Answers the
 * error in Redis's terms (kvs's own messages name protobuf fields) and
 * returns 1 if it is not one. */
static int key_refused(router_req_t *req, const kvs_redis_arg_t *a)
{
    switch (kvs_table_check(a->p, a->len)) {
    case KVS_TABLE_OK:
        return 0;
    case KVS_TABLE_EMPTY:
        reply_error(req, "ERR the key is empty: a key names a kvs table, of 1 to %d bytes",
                    KVS_MAX_TABLE);
        break;
    case KVS_TABLE_LONG:
        reply_error(req, "ERR the key is %zu bytes: a key names a kvs table, of at most %d bytes",
                    a->len, KVS_MAX_TABLE);
        break;
    case KVS_TABLE_NUL:
        reply_error(req, "ERR the key (a kvs table name) holds a NUL byte (U+0000), which table "
                         "names may not contain");
        break;
    case KVS_TABLE_NOT_UTF8:
        reply_error(req, "ERR the key is not valid UTF-8: a key names a kvs table, whose name is "
                         "text");
        break;
    case KVS_TABLE_RESERVED:
        reply_error_quoting(req, "ERR the key '", a,
                            "' is reserved: kvs table names starting with \"__\" belong to kvs");
        break;
    }
    return 1;
}

/* A hash field must be a kvs key: 1 to KVS_MAX_KEY bytes (LMDB's limit). */
static int field_refused(router_req_t *req, const kvs_redis_arg_t *a)
{
    if (a->len == 0)
        reply_error(req, "ERR a hash field is empty: a field is a kvs key, of 1 to %d bytes",
                    KVS_MAX_KEY);
    else if (a->len > KVS_MAX_KEY)
        reply_error(req, "ERR a hash field is %zu bytes: a field is a kvs key, of at most %d bytes",
                    a->len, KVS_MAX_KEY);
    else
        return 0;
    return 1;
}

/* A NUL-terminated copy of an argument (a table name, checked by
 * args_refused; HINCRBYFLOAT's increment, by hincr_by) in the router's
 * redis_arena, or NULL once the error is answered. */
static char *text_of(router_redis_t *rs, router_req_t *req, const kvs_redis_arg_t *a)
{
    char *t = kvs_arena_alloc(&rs->r->redis_arena, a->len + 1);
    if (t == NULL) {
        oom(req);
        return NULL;
    }
    memcpy(t, a->p, a->len);
    t[a->len] = '\0';
    return t;
}

static ProtobufCBinaryData bytes_of(const kvs_redis_arg_t *a)
{
    return (ProtobufCBinaryData){a->len, (uint8_t *)a->p};
}

/* A written bulk string as a Value: text when it is valid UTF-8. */
static Kvs__Value *value_of(router_redis_t *rs, const kvs_redis_arg_t *a, const kvs_binding_t *b)
{
    Kvs__Value *v = kvs_arena_alloc(&rs->r->redis_arena, sizeof(*v));
    if (v == NULL)
        return NULL;
    kvs__value__init(v);
    /* A table bound with format: raw carries bytes: a bulk string is
     * bytes, whether or not they happen to be UTF-8. */
    if ((b == NULL || b->format != KVS_FORMAT_RAW) && kvs_utf8_valid(a->p, a->len)) {
        v->kind_case = KVS__VALUE__KIND_STRING_VALUE;
        v->string_value = bytes_of(a);
    } else {
        v->kind_case = KVS__VALUE__KIND_BINARY_VALUE;
        v->binary_value = bytes_of(a);
    }
    return v;
}

/* Packs `q` and routes it; the answer is shown as `rcmd`. `q` and what it
 * points to in redis_arena are gone when it returns. */
static void route_request(router_redis_t *rs, router_client_t *cl, router_req_t *req,
                          const Kvs__CommandRequest *q, int rcmd)
{
    router_t *r = rs->r;
    kvs_buf_t *b = &r->redis_pack;
    size_t n = protobuf_c_message_get_packed_size(&q->base);
    b->len = 0;
    req->rcmd = (uint8_t)rcmd;
    if (kvs_buf_reserve(b, n ? n : 1) != 0)
        return oom(req);
    protobuf_c_message_pack(&q->base, b->data);
    /* The messages `q` was built from are packed: give their memory back
     * before routing decodes the request again (for a command of many
     * fields, each costs some 100 bytes in both). */
    kvs_arena_reset(&r->redis_arena);
    router_route(r, req, b->data, n);
    if (b->cap > ROUTER_REDIS_KEEP_PACK) /* routed (held or sent: copied): not kept for good */
        kvs_buf_free(b);
    (void)cl; /* router_redis_command delivers */
}

/* The single-key reads (HGET, HSTRLEN, HEXISTS), the hot path: the kvs
 * request is written straight from the arguments, no protobuf-c messages. */
static void route_key_request(router_redis_t *rs, router_req_t *req,
                              Kvs__CommandRequest__CommandCase kc, const cmd_t *cmd)
{
    const kvs_redis_arg_t *a = rs->ps.argv;
    kvs_buf_t *b = &rs->r->redis_pack;
    b->len = 0;
    if (kvs_msg_encode_key_request(b, kc, a[1].p, a[1].len, a[2].p, a[2].len) != 0)
        return oom(req);
    if (cmd->rcmd == RC_HSTRLEN) { /* the length, not the value: CommandRequest.value_lengths */
        static const uint8_t lengths[] = {0xb0, 0x06, 0x01}; /* field 102, varint 1 */
        if (kvs_buf_append(b, lengths, sizeof(lengths)) != 0)
            return oom(req);
    }
    req->rcmd = (uint8_t)cmd->rcmd;
    router_route(rs->r, req, b->data, b->len);
}

static void cmd_hget(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    (void)cl;
    route_key_request(rs, req, KVS__COMMAND_REQUEST__COMMAND_HGET, cmd);
}

static void cmd_hexists(router_redis_t *rs, router_client_t *cl, router_req_t *req,
                        const cmd_t *cmd)
{
    (void)cl;
    route_key_request(rs, req, KVS__COMMAND_REQUEST__COMMAND_HEXIST, cmd);
}

/* Refuses, before anything is built for it, a command naming more than
 * limits.max_keys fields (`what`: "fields" or "pairs"), as router_route
 * would refuse the request it became. Returns 1 when it did. */
static int too_many_keys(router_redis_t *rs, router_req_t *req, const cmd_t *cmd, size_t n,
                         const char *what)
{
    uint32_t max = rs->r->cfg->max_keys;
    if (max == 0 || n <= max)
        return 0;
    reply_error_status(req, KVS_STATUS_TOO_LARGE,
                       "ERR %s names %zu %s, more than limits.max_keys (%u); nothing was done; "
                       "send fewer per command",
                       cmd->name, n, what, max);
    return 1;
}

/* Whether the client's user may not run `kc` on table `key`: if so, its
 * -NOAUTH or -NOPERM is answered. For what a command checks before its
 * request is routed (which authorizes too): a refusal that names the
 * table's binding or its other keys must not reach a user who may not
 * touch it. */
static int not_allowed(router_req_t *req, Kvs__CommandRequest__CommandCase kc,
                       const kvs_redis_arg_t *key)
{
    char msg[512];
    if (req->who == NULL)
        return 0;
    uint32_t st = kvs_auth_check(req->who, kc, key->p, key->len, msg, sizeof(msg));
    if (st == KVS_STATUS_OK)
        return 0;
    reply_error_status(req, (uint16_t)st, "%s %s",
                       st == KVS_STATUS_UNAUTHENTICATED ? "NOAUTH" : "NOPERM", msg);
    return 1;
}

/* HSET (several pairs), HMSET, HSETNX: one pair goes as Hset (HSETNX with
 * if_absent), several as one Hmset. Every one asks for value_lengths: its
 * reply (a count of new fields, +OK, 0 or 1) needs only whether each
 * field was there, so no previous value is sent to the router, and none
 * can make the answer too large for limits.max_frame (a worker and the
 * router's split-write budgets price lengths only). */
static void cmd_hset(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    const kvs_redis_arg_t *a = rs->ps.argv;
    size_t n = (rs->ps.argc - 2) / 2;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    kvs_arena_t *ar = &rs->r->redis_arena;
    if ((rs->ps.argc - 2) % 2 != 0)
        return reply_error(req, "ERR wrong number of arguments for '%s' command", cmd->name);
    if (too_many_keys(rs, req, cmd, n, "pairs"))
        return;
    char *table = text_of(rs, req, &a[1]);
    if (table == NULL)
        return;
    const kvs_binding_t *b =
        rs->r->cfg->n_bindings > 0 ? kvs_config_binding_n(rs->r->cfg, a[1].p, a[1].len) : NULL;
    if (b != NULL && b->format == KVS_FORMAT_STRING &&
        not_allowed(
            req, n == 1 ? KVS__COMMAND_REQUEST__COMMAND_HSET : KVS__COMMAND_REQUEST__COMMAND_HMSET,
            &a[1]))
        return; /* before the format's refusal below, which names the topic */
    Kvs__Kvpair *pairs = kvs_arena_alloc(ar, n * sizeof(*pairs));
    Kvs__Kvpair **pp = kvs_arena_alloc(ar, n * sizeof(*pp));
    if (pairs == NULL || pp == NULL)
        return oom(req);
    for (size_t i = 0; i < n; i++) {
        kvs__kvpair__init(&pairs[i]);
        pairs[i].key = bytes_of(&a[2 + 2 * i]);
        if ((pairs[i].value = value_of(rs, &a[3 + 2 * i], b)) == NULL)
            return oom(req);
        if (b != NULL && b->format == KVS_FORMAT_STRING &&
            pairs[i].value->kind_case != KVS__VALUE__KIND_STRING_VALUE)
            return reply_error(req,
                               "ERR value %zu is not UTF-8 text, but table '%s' is bound to topic "
                               "%s with format: string, which carries only text (bind it with "
                               "format: raw or value to store any bytes)",
                               i + 1, b->table, b->topic);
        pp[i] = &pairs[i];
    }
    Kvs__Hset one = KVS__HSET__INIT;
    Kvs__Hmset many = KVS__HMSET__INIT;
    if (n == 1) {
        one.table = table;
        one.pair = pp[0];
        one.if_absent = cmd->rcmd == RC_HSETNX;
        q.command_case = KVS__COMMAND_REQUEST__COMMAND_HSET;
        q.hset = &one;
    } else {
        many.table = table;
        many.pairs = pp;
        many.n_pairs = n;
        q.command_case = KVS__COMMAND_REQUEST__COMMAND_HMSET;
        q.hmset = &many;
    }
    q.value_lengths = 1; /* whether each field was there, not its bytes */
    route_request(rs, cl, req, &q, cmd->rcmd);
}

/* HMGET and HDEL: one field as Hget/Hdel, several as Hmget/Hmdel. HDEL
 * asks for value_lengths, as HSET does: it counts the fields that were
 * there. */
static void cmd_fields(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    const kvs_redis_arg_t *a = rs->ps.argv;
    size_t n = rs->ps.argc - 2;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    if (too_many_keys(rs, req, cmd, n, "fields"))
        return;
    char *table = text_of(rs, req, &a[1]);
    if (table == NULL)
        return;
    ProtobufCBinaryData *keys = kvs_arena_alloc(&rs->r->redis_arena, n * sizeof(*keys));
    if (keys == NULL)
        return oom(req);
    for (size_t i = 0; i < n; i++)
        keys[i] = bytes_of(&a[2 + i]);
    Kvs__Hmget mg = KVS__HMGET__INIT;
    Kvs__Hmdel md = KVS__HMDEL__INIT;
    Kvs__Hdel d1 = KVS__HDEL__INIT;
    if (cmd->rcmd == RC_HMGET) {
        mg.table = table;
        mg.keys = keys;
        mg.n_keys = n;
        q.command_case = KVS__COMMAND_REQUEST__COMMAND_HMGET;
        q.hmget = &mg;
    } else if (n == 1) {
        d1.table = table;
        d1.key = keys[0];
        q.command_case = KVS__COMMAND_REQUEST__COMMAND_HDEL;
        q.hdel = &d1;
    } else {
        md.table = table;
        md.keys = keys;
        md.n_keys = n;
        q.command_case = KVS__COMMAND_REQUEST__COMMAND_HMDEL;
        q.hmdel = &md;
    }
    q.value_lengths = cmd->rcmd == RC_HDEL;
    route_request(rs, cl, req, &q, cmd->rcmd);
}

/* HGETALL, HKEYS, HVALS: Hgetall, shown three ways. */
static void cmd_hgetall(router_redis_t *rs, router_client_t *cl, router_req_t *req,
                        const cmd_t *cmd)
{
    Kvs__Hgetall m = KVS__HGETALL__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    if ((m.table = text_of(rs, req, &rs->ps.argv[1])) == NULL)
        return;
    m.keys_only = cmd->rcmd == RC_HKEYS; /* a table of large values still fits */
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HGETALL;
    q.hgetall = &m;
    route_request(rs, cl, req, &q, cmd->rcmd);
}

/* A command on one key, whole: Hlen (HLEN, EXISTS, TYPE) or Hclear (DEL,
 * UNLINK) of the table `key` names. */
static void route_table_of(router_redis_t *rs, router_client_t *cl, router_req_t *req,
                           const cmd_t *cmd, const kvs_redis_arg_t *key)
{
    int clear = cmd->rcmd == RC_DEL;
    Kvs__Hlen m; /* Hlen and Hclear are alike: {table} */
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    protobuf_c_message_init(clear ? &kvs__hclear__descriptor : &kvs__hlen__descriptor, &m);
    if ((m.table = text_of(rs, req, key)) == NULL)
        return;
    q.command_case =
        clear ? KVS__COMMAND_REQUEST__COMMAND_HCLEAR : KVS__COMMAND_REQUEST__COMMAND_HLEN;
    q.hlen = &m; /* the oneof members share storage */
    route_request(rs, cl, req, &q, cmd->rcmd);
}

static void several_keys(router_redis_t *rs, router_client_t *cl, router_req_t *req,
                         const cmd_t *cmd);

/* HLEN, EXISTS and TYPE (a table exists, as a hash, when it has a key). */
static void cmd_hlen(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    if (cmd->rcmd == RC_EXISTS && rs->ps.argc > 2)
        return several_keys(rs, cl, req, cmd);
    route_table_of(rs, cl, req, cmd, &rs->ps.argv[1]);
}

/* HINCRBY's or HINCRBYFLOAT's increment a[3] into m (NULL: a scratch
 * one): NULL, or Redis's error for it. HINCRBYFLOAT's is only checked
 * here: it goes as its text (by_decimal, which cmd_hincr sets), so the
 * worker adds as Redis does, in long doubles. */
static const char *hincr_by(const cmd_t *cmd, const kvs_redis_arg_t *a, Kvs__Hincr *m)
{
    Kvs__Hincr scratch = KVS__HINCR__INIT;
    if (m == NULL)
        m = &scratch;
    if (cmd->rcmd == RC_HINCRBY) {
        int64_t by;
        if (kvs_redis_arg_int(&a[3], &by) != 0)
            return "ERR value is not an integer or out of range";
        m->by_case = KVS__HINCR__BY_BY_INT;
        m->by_int = by;
    } else {
        long double by;
        if (kvs_redis_arg_ldouble(&a[3], &by) != 0)
            return "ERR value is not a valid float";
        if (isinf(by))
            return "ERR value is NaN or Infinity";
        m->by_case = KVS__HINCR__BY_BY_DECIMAL;
    }
    return NULL;
}

static void cmd_hincr(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    const kvs_redis_arg_t *a = rs->ps.argv;
    Kvs__Hincr m = KVS__HINCR__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    const char *err = hincr_by(cmd, a, &m);
    if (err != NULL)
        return reply_error(req, "%s", err);
    if ((m.table = text_of(rs, req, &a[1])) == NULL ||
        (m.by_case == KVS__HINCR__BY_BY_DECIMAL &&
         (m.by_decimal = text_of(rs, req, &a[3])) == NULL))
        return;
    m.key = bytes_of(&a[2]);
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HINCR;
    q.hincr = &m;
    route_request(rs, cl, req, &q, cmd->rcmd);
}

/* ---- HSCAN ---------------------------------------------------------------------------- */

static struct router_redis_cursors_s *cursors(router_t *r)
{
    if (r->redis_cursors == NULL) {
        r->redis_cursors = calloc(1, sizeof(*r->redis_cursors));
        /* The numbers start at random: id_base repeats when the whole node
         * starts again (the master counts generations from 0), and a
         * cursor a client kept from an earlier run must not name a walk of
         * this one (1 in 2^40 / 16,384 that it does). */
        uint64_t start = 1;
        if (r->redis_cursors != NULL && kvs_crypto_random(&start, sizeof(start)) != 0)
            start = 1;
        if (r->redis_cursors != NULL)
            r->redis_cursors->next = (start & ROUTER_ID_COUNTER_MASK) | 1;
    }
    return r->redis_cursors;
}

void router_redis_cursors_free(router_t *r)
{
    struct router_redis_cursors_s *cs = r->redis_cursors;
    if (cs == NULL)
        return;
    for (size_t i = 0; i < ROUTER_REDIS_CURSORS; i++) {
        free(cs->slots[i].table);
        free(cs->slots[i].bytes);
    }
    free(cs);
    r->redis_cursors = NULL;
}

/* The counter of the number the next cursor_keep hands out (0: out of
 * memory): a reply can say it before the cursor is kept. */
static uint64_t cursor_next(router_t *r)
{
    struct router_redis_cursors_s *cs = cursors(r);
    if (cs == NULL)
        return 0;
    uint64_t seq = cs->next & ROUTER_ID_COUNTER_MASK;
    return seq != 0 ? seq : (cs->next + 1) & ROUTER_ID_COUNTER_MASK; /* 0 ends a walk */
}

/* Keeps `bytes` for `table`; returns the number to give the client
 * (id_base | cursor_next), or 0 when out of memory. */
static uint64_t cursor_keep(router_t *r, const char *table, const uint8_t *bytes, size_t len)
{
    struct router_redis_cursors_s *cs = cursors(r);
    if (cs == NULL)
        return 0;
    uint64_t seq = cs->next++ & ROUTER_ID_COUNTER_MASK;
    if (seq == 0) /* wrapped: 0 ends a walk */
        seq = cs->next++ & ROUTER_ID_COUNTER_MASK;
    cursor_slot_t *s = &cs->slots[seq % ROUTER_REDIS_CURSORS];
    char *t = strdup(table);
    uint8_t *b = malloc(len ? len : 1);
    if (t == NULL || b == NULL) {
        free(t);
        free(b);
        return 0;
    }
    free(s->table);
    free(s->bytes);
    memcpy(b, bytes, len);
    *s = (cursor_slot_t){seq, t, b, len};
    return r->id_base | seq;
}

/* Was cursor number `n` handed out by another router process (or this
 * one's predecessor)? */
static int cursor_foreign(const router_t *r, uint64_t n)
{
    return (n & ~ROUTER_ID_COUNTER_MASK) != r->id_base;
}

/* The kvs cursor a number stands for, or NULL (never given, or forgotten). */
static const cursor_slot_t *cursor_find(router_t *r, uint64_t seq, const char *table)
{
    struct router_redis_cursors_s *cs = cursors(r);
    if (cs == NULL || seq == 0)
        return NULL;
    const cursor_slot_t *s = &cs->slots[seq % ROUTER_REDIS_CURSORS];
    return s->seq == seq && strcmp(s->table, table) == 0 ? s : NULL;
}

/* A cursor argument read as Redis reads one (strtoul, base 10, on the C
 * string: an optional sign, digits, nothing else; "" and "-0" are 0, a
 * negative number wraps). Returns 0, or -1 for "invalid cursor". */
static int scan_cursor(const kvs_redis_arg_t *a, uint64_t *out)
{
    const uint8_t *nul = memchr(a->p, 0, a->len);
    size_t n = nul != NULL ? (size_t)(nul - a->p) : a->len, i = 0;
    uint64_t v = 0;
    if (n > 0 && (a->p[0] == '+' || a->p[0] == '-'))
        i = 1;
    if (n > 0 && i == n)
        return -1; /* a sign alone */
    for (; i < n; i++) {
        unsigned d = (unsigned)(a->p[i] - '0');
        if (d > 9 || v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = n > 0 && a->p[0] == '-' ? 0 - v : v;
    return 0;
}

static void cmd_hscan(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    const kvs_redis_arg_t *a = rs->ps.argv;
    int64_t count = 10;
    uint64_t seq;
    const kvs_redis_arg_t *match = NULL;
    if (scan_cursor(&a[2], &seq) != 0)
        return reply_error(req, "ERR invalid cursor");
    for (size_t i = 3; i < rs->ps.argc; i += 2) {
        if (i + 1 >= rs->ps.argc)
            return reply_error(req, "ERR syntax error");
        if (kvs_redis_arg_is(&a[i], "count")) {
            if (kvs_redis_arg_int(&a[i + 1], &count) != 0 || count < 1)
                return reply_error(req, count < 1 ? "ERR syntax error"
                                                  : "ERR value is not an integer or out of range");
        } else if (kvs_redis_arg_is(&a[i], "match")) {
            match = &a[i + 1];
        } else {
            return reply_error(req, "ERR syntax error");
        }
    }
    /* Rights first: whether a cursor is valid for the table says that
     * someone walks it now (cursor numbers are handed out in turn). */
    if (not_allowed(req, KVS__COMMAND_REQUEST__COMMAND_HSCAN, &a[1]))
        return;
    scan_ctx_t *sc = calloc(1, sizeof(*sc) + (match ? match->len : 0));
    if (sc == NULL)
        return oom(req);
    memcpy(sc->table, a[1].p, a[1].len);
    if (match != NULL) {
        memcpy(sc->pat, match->p, match->len);
        sc->plen = match->len;
    }
    req->rctx = sc;
    req->rflags = match != NULL;
    Kvs__Hscan m = KVS__HSCAN__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    m.table = sc->table;
    /* Redis answers a hash of up to hash-max-listpack-entries (128)
     * fields in one page whatever COUNT says (COUNT is a hint): so does
     * kvs, whose page goes on across the shards (router_route.c). With
     * MATCH, no more than a page of the longest fields the pattern can be
     * matched against within ROUTER_REDIS_GLOB_STEPS (a field costs at
     * most about the pattern's length times its own, answer_scan), so
     * that a smaller COUNT always gets past "pattern too costly", but for
     * a pattern so long (some 32 KB) that even one field of the longest
     * kind costs more: that one says to shorten the pattern. */
    int64_t least = SCAN_PAGE_MIN;
    if (match != NULL) {
        uint64_t fit = ROUTER_REDIS_GLOB_STEPS / (((uint64_t)match->len + 2) * (KVS_MAX_KEY + 1));
        least = fit < (uint64_t)least ? (int64_t)fit : least;
    }
    if (count < least)
        count = least;
    m.count = count > UINT32_MAX ? UINT32_MAX : (uint32_t)count; /* the router caps it */
    if (seq != 0) {
        if (seq >= ROUTER_ID_LIMIT) /* no router process hands out such a number */
            return reply_error(req, "ERR invalid cursor");
        if (cursor_foreign(rs->r, seq))
            return reply_error(req, "ERR invalid cursor: not handed out by this router process "
                                    "(a cursor lives in the kvs router process that returned "
                                    "it: another one of this node's, reached by a new "
                                    "connection, or this one before it restarted); start the "
                                    "scan again with 0");
        const cursor_slot_t *s = cursor_find(rs->r, seq & ROUTER_ID_COUNTER_MASK, sc->table);
        if (s == NULL)
            return reply_error(req, "ERR invalid cursor");
        m.cursor = (ProtobufCBinaryData){s->len, s->bytes};
    }
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_HSCAN;
    q.hscan = &m;
    route_request(rs, cl, req, &q, cmd->rcmd);
}

/* ---- INFO --------------------------------------------------------------------------------- */

/* INFO's sections (req->rflags), in the order they are written. */
enum { INFO_SERVER = 1, INFO_CLIENTS = 2, INFO_KVS = 4, INFO_ALL = 7 };

/* INFO [section ...]: the sections named (server, clients, kvs; default,
 * all and everything are all of them), none for names it does not know,
 * as Redis. */
static void cmd_info(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    static const char *const names[] = {"server", "clients", "kvs"};
    Kvs__Info m = KVS__INFO__INIT;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    const kvs_redis_arg_t *a = rs->ps.argv;
    unsigned want = rs->ps.argc == 1 ? INFO_ALL : 0;
    for (size_t i = 1; i < rs->ps.argc; i++) {
        if (kvs_redis_arg_is(&a[i], "default") || kvs_redis_arg_is(&a[i], "all") ||
            kvs_redis_arg_is(&a[i], "everything"))
            want = INFO_ALL;
        for (unsigned k = 0; k < 3; k++)
            if (kvs_redis_arg_is(&a[i], names[k]))
                want |= 1u << k;
    }
    req->rflags = (uint8_t)want;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_INFO;
    q.info = &m;
    route_request(rs, cl, req, &q, cmd->rcmd);
}

/* "# Server" as Redis writes it, with the version clients check. */
static int info_server(router_redis_t *rs, kvs_buf_t *t, unsigned want)
{
    char line[256];
    int n = 0;
    if (want & INFO_SERVER)
        n += snprintf(line, sizeof(line),
                      "# Server\r\nredis_version:%s\r\nredis_mode:standalone\r\n"
                      "kvs_version:" KVS_VERSION
                      "\r\nos:Linux\r\narch_bits:%zu\r\nprocess_id:%ld\r\n",
                      REDIS_COMPAT_VERSION, sizeof(void *) * 8, (long)getpid());
    if (want & INFO_CLIENTS)
        n +=
            snprintf(line + n, sizeof(line) - (size_t)n, "%s# Clients\r\nconnected_clients:%zu\r\n",
                     n > 0 ? "\r\n" : "", rs->r->n_clients);
    return kvs_buf_append(t, line, (size_t)n);
}

/* ---- commands kvs answers itself --------------------------------------------------------------
 */

static void cmd_ping(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    (void)cl, (void)cmd;
    req->resp.len = 0;
    if (rs->ps.argc > 2)
        return reply_error(req, "ERR wrong number of arguments for 'ping' command");
    if (rs->ps.argc == 2)
        kvs_redis_bulk(&req->resp, rs->ps.argv[1].p, rs->ps.argv[1].len);
    else
        kvs_redis_simple(&req->resp, "PONG");
    finish_raw(req);
}

static void cmd_echo(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    (void)cl, (void)cmd;
    req->resp.len = 0;
    kvs_redis_bulk(&req->resp, rs->ps.argv[1].p, rs->ps.argv[1].len);
    finish_raw(req);
}

static void cmd_select(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    int64_t db;
    (void)cl, (void)cmd;
    if (kvs_redis_arg_int(&rs->ps.argv[1], &db) != 0)
        return reply_error(req, "ERR value is not an integer or out of range");
    if (db < INT32_MIN || db > INT32_MAX) /* Redis's index is an int */
        return reply_error(req, "ERR value is out of range, value must between %d and %d",
                           INT32_MIN, INT32_MAX);
    if (db != 0)
        return reply_error(req, "ERR DB index is out of range");
    reply_ok(req);
}

static void cmd_quit(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    (void)cl, (void)cmd;
    rs->quit = 1;
    reply_ok(req);
}

/* Users configured: AUTH's (or HELLO AUTH's) user and token go to the
 * router's Auth, answered later as `rcmd`. A user or token kvs could not
 * have (not NUL-free UTF-8) fails like a wrong token, without a check. */
static void hello_failed(router_redis_t *rs);

static void start_auth(router_redis_t *rs, router_client_t *cl, router_req_t *req,
                       const kvs_redis_arg_t *user, const kvs_redis_arg_t *token, int rcmd)
{
    static const char default_user[] = "default";
    kvs_arena_t *ar = &rs->r->redis_arena;
    Kvs__Auth m = KVS__AUTH__INIT;
    const kvs_redis_arg_t *parts[2] = {user, token};
    char *copies[2] = {NULL, NULL};
    /* An Auth, as on the kvs protocol (HELLO ... AUTH too): RECEIVED
     * before the check. */
    router_ops_note(rs->r, req, KVS__COMMAND_REQUEST__COMMAND_AUTH, NULL, 0, 0);
    for (int i = 0; i < 2; i++) {
        const kvs_redis_arg_t *a = parts[i];
        if (a == NULL)
            continue;
        if (memchr(a->p, 0, a->len) != NULL || !kvs_utf8_valid(a->p, a->len))
            return reply_error(req, "WRONGPASS invalid username-password pair or user is "
                                    "disabled.");
        if ((copies[i] = kvs_arena_alloc(ar, a->len + 1)) == NULL)
            return oom(req);
        memcpy(copies[i], a->p, a->len);
        copies[i][a->len] = '\0';
    }
    m.user = user != NULL ? copies[0] : (char *)default_user;
    m.token = copies[1];
    if (m.user[0] == '\0')
        return reply_error(req, "WRONGPASS invalid username-password pair or user is disabled.");
    req->rcmd = (uint8_t)rcmd;
    if (router_ops_received(rs->r, req)) { /* a hook stopped it */
        if (rcmd == RC_HELLO)
            hello_failed(rs);
        return;
    }
    router_client_auth(cl, req, &m);
}

/* Is `a` the user "default"? User names are compared as they are, not
 * folded, as Redis's ACL compares them ("DEFAULT" is another user). */
static int is_default_user(const kvs_redis_arg_t *a)
{
    return a->len == 7 && memcmp(a->p, "default", 7) == 0;
}

/* AUTH [user] token. Without users it behaves as a Redis without a
 * password: only the user "default", with any token. */
static void cmd_auth(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    const kvs_redis_arg_t *a = rs->ps.argv;
    (void)cmd;
    if (rs->ps.argc > 3)
        return reply_error(req, "ERR syntax error");
    if (rs->r->auth != NULL)
        return start_auth(rs, cl, req, rs->ps.argc == 3 ? &a[1] : NULL, &a[rs->ps.argc - 1],
                          RC_AUTH);
    if (rs->ps.argc == 2)
        return reply_error(req, "ERR AUTH <password> called without any password configured for "
                                "the default user. Are you sure your configuration is correct?");
    if (!is_default_user(&a[1]))
        return reply_error(req, "WRONGPASS invalid username-password pair or user is disabled.");
    reply_ok(req);
}

/* A client name may not hold spaces, newlines or other special bytes. */
static int name_ok(const kvs_redis_arg_t *a)
{
    for (size_t i = 0; i < a->len; i++)
        if (a->p[i] < '!' || a->p[i] > '~')
            return 0;
    return 1;
}

/* Answers the error for a client name kvs does not take; returns 1 then.
 * A name lives as long as its connection, which nothing else counts: its
 * length is bounded, or one client could pin limits.max_frame bytes. */
static int name_refused(router_req_t *req, const kvs_redis_arg_t *a)
{
    if (a->len > ROUTER_REDIS_MAX_NAME) {
        reply_error(req, "ERR Client names may be at most %d bytes", ROUTER_REDIS_MAX_NAME);
        return 1;
    }
    if (!name_ok(a)) {
        reply_error(req, "ERR Client names cannot contain spaces, newlines or special characters.");
        return 1;
    }
    return 0;
}

/* The client is named `n` (its reference is taken; NULL: no name) from
 * `req` on: the renaming command itself is logged under the new name, as
 * Redis logs a command after it ran; the requests before keep theirs. */
static void rename_to(router_redis_t *rs, router_req_t *req, router_name_t *n)
{
    router_name_unref(rs->name);
    rs->name = n;
    router_req_set_name(req, n);
}

/* A name of a[0] (checked by name_refused), or NULL for "": *n. Returns 0
 * or -ENOMEM. */
static int new_name(const kvs_redis_arg_t *a, router_name_t **n)
{
    *n = a->len > 0 ? router_name_new(a->p, a->len) : NULL;
    return a->len > 0 && *n == NULL ? -ENOMEM : 0;
}

static int set_name(router_redis_t *rs, router_req_t *req, const kvs_redis_arg_t *a)
{
    router_name_t *n;
    if (new_name(a, &n) != 0)
        return -ENOMEM;
    rename_to(rs, req, n);
    return 0;
}

/* ---- container commands (CLIENT, COMMAND, CONFIG, SLOWLOG) ------------------------------- */

/* A subcommand kvs answers, as Redis 7 declares it. */
typedef struct sub_s {
    const char *name;  /* lower case */
    int arity;         /* of the whole request, Redis's convention (-N: at least N) */
    const char *flags; /* Redis 7's, for COMMAND INFO */
    const char *usage; /* its lines in HELP */
    const char *text;
} sub_t;

#define N_SUBS(t) (sizeof(t) / sizeof((t)[0]))

/* <CONTAINER> HELP: Redis's layout, kvs's subcommands. */
static void reply_help(router_req_t *req, const char *upper, const sub_t *subs, size_t n)
{
    char line[96];
    kvs_buf_t *b = &req->resp;
    b->len = 0;
    kvs_redis_array(b, 2 * n + 1);
    snprintf(line, sizeof(line),
             "%s <subcommand> [<arg> [value] [opt] ...]. Subcommands are:", upper);
    kvs_redis_simple(b, line);
    for (size_t i = 0; i < n; i++) {
        kvs_redis_simple(b, subs[i].usage);
        snprintf(line, sizeof(line), "    %s", subs[i].text);
        kvs_redis_simple(b, line);
    }
    finish_raw(req);
}

/* Which of subs[0..n) argv[1] names, its arity checked as Redis 7 checks a
 * subcommand's ("help" is answered here). Returns its index, or -1 once the
 * request is answered: HELP, or the error in Redis's words (a subcommand
 * kvs does not have is unknown, whether Redis has it or not). */
static int subcommand(router_redis_t *rs, router_req_t *req, const char *container,
                      const sub_t *subs, size_t n)
{
    const kvs_redis_arg_t *a1 = &rs->ps.argv[1];
    size_t argc = rs->ps.argc;
    char upper[16];
    size_t k = 0;
    for (; container[k] != '\0' && k + 1 < sizeof(upper); k++)
        upper[k] = (char)(container[k] - 'a' + 'A');
    upper[k] = '\0';
    for (size_t i = 0; i < n; i++) {
        if (!kvs_redis_arg_is(a1, subs[i].name))
            continue;
        int ar = subs[i].arity;
        if ((ar > 0 && argc != (size_t)ar) || (ar < 0 && argc < (size_t)-ar)) {
            reply_error(req, "ERR wrong number of arguments for '%s|%s' command", container,
                        subs[i].name);
            return -1;
        }
        if (strcmp(subs[i].name, "help") == 0) {
            reply_help(req, upper, subs, n);
            return -1;
        }
        return (int)i;
    }
    reply_error(req, "ERR unknown subcommand '%.*s'. Try %s HELP.", shown(a1), (const char *)a1->p,
                upper);
    return -1;
}

static const sub_t client_subs[] = {
    {"id", 2, "noscript loading stale", "ID", "Return the ID of the current connection."},
    {"getname", 2, "noscript loading stale", "GETNAME",
     "Return the name of the current connection."},
    {"setname", 3, "noscript loading stale", "SETNAME <name>",
     "Assign the name <name> to the current connection."},
    {"setinfo", 4, "noscript loading stale", "SETINFO <option> <value>",
     "Checked and ignored (lib-name, lib-ver)."},
    {"help", 2, "loading stale", "HELP", "Prints this help."},
};

static void cmd_client(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    const kvs_redis_arg_t *a = rs->ps.argv;
    (void)cl, (void)cmd;
    int sub = subcommand(rs, req, "client", client_subs, N_SUBS(client_subs));
    if (sub < 0)
        return;
    req->resp.len = 0;
    if (sub == 0) {
        kvs_redis_integer(&req->resp, (int64_t)rs->id);
    } else if (sub == 1) {
        if (rs->name != NULL)
            kvs_redis_bulk(&req->resp, rs->name->text, strlen(rs->name->text));
        else
            kvs_redis_null(&req->resp, rs->resp3);
    } else if (sub == 2) {
        if (name_refused(req, &a[2]))
            return;
        if (set_name(rs, req, &a[2]) != 0)
            return oom(req);
        kvs_redis_simple(&req->resp, "OK");
    } else { /* SETINFO: checked as Redis 7.2 does, then noted by nobody */
        const char *attr = kvs_redis_arg_is(&a[2], "lib-name")  ? "lib-name"
                           : kvs_redis_arg_is(&a[2], "lib-ver") ? "lib-ver"
                                                                : NULL;
        if (attr == NULL)
            return reply_error_quoting(req, "ERR Unrecognized option '", &a[2], "'");
        if (!name_ok(&a[3]))
            return reply_error(req, "ERR %s cannot contain spaces, newlines or special characters.",
                               attr);
        kvs_redis_simple(&req->resp, "OK");
    }
    finish_raw(req);
}

/* HELLO's reply: the server's map, in the protocol now chosen. */
static void hello_reply(router_redis_t *rs, kvs_buf_t *b)
{
    kvs_redis_map(b, 7, rs->resp3);
    kvs_redis_bulk(b, "server", 6);
    kvs_redis_bulk(b, "redis", 5);
    kvs_redis_bulk(b, "version", 7);
    kvs_redis_bulk(b, REDIS_COMPAT_VERSION, strlen(REDIS_COMPAT_VERSION));
    kvs_redis_bulk(b, "proto", 5);
    kvs_redis_integer(b, rs->resp3 ? 3 : 2);
    kvs_redis_bulk(b, "id", 2);
    kvs_redis_integer(b, (int64_t)rs->id);
    kvs_redis_bulk(b, "mode", 4);
    kvs_redis_bulk(b, "standalone", 10);
    kvs_redis_bulk(b, "role", 4);
    kvs_redis_bulk(b, "master", 6);
    kvs_redis_bulk(b, "modules", 7);
    kvs_redis_array(b, 0);
}

/* HELLO [protover [AUTH user pass] [SETNAME name]]. With users configured,
 * AUTH is checked first (in the background) and nothing changes unless it
 * succeeds, as in Redis. */
static void cmd_hello(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    const kvs_redis_arg_t *a = rs->ps.argv;
    const kvs_redis_arg_t *user = NULL, *token = NULL, *name = NULL;
    int64_t ver = rs->resp3 ? 3 : 2;
    (void)cmd;
    if (rs->ps.argc >= 2 && kvs_redis_arg_int(&a[1], &ver) != 0)
        return reply_error(req, "ERR Protocol version is not an integer or out of range");
    if (ver < 2 || ver > 3)
        return reply_error(req, "NOPROTO unsupported protocol version");
    for (size_t i = 2; i < rs->ps.argc; i++) {
        if (kvs_redis_arg_is(&a[i], "auth") && i + 2 < rs->ps.argc) {
            user = &a[i + 1];
            token = &a[i + 2];
            i += 2;
        } else if (kvs_redis_arg_is(&a[i], "setname") && i + 1 < rs->ps.argc) {
            if (name_refused(req, &a[i + 1]))
                return;
            name = &a[++i];
        } else {
            return reply_error_quoting(req, "ERR Syntax error in HELLO option '", &a[i], "'");
        }
    }
    if (rs->r->auth != NULL && user != NULL) {
        router_name_t *n = NULL;
        if (name != NULL && new_name(name, &n) != 0)
            return oom(req);
        router_name_unref(rs->hello_name);
        rs->hello_name = n;
        rs->hello_rename = name != NULL;
        rs->hello_ver = (int)ver;
        return start_auth(rs, cl, req, user, token, RC_HELLO);
    }
    if (user != NULL && !is_default_user(user))
        return reply_error(req, "WRONGPASS invalid username-password pair or user is disabled.");
    if (user == NULL && !router_client_authenticated(cl))
        return reply_error(req, "NOAUTH HELLO must be called with the client already "
                                "authenticated, otherwise the HELLO AUTH <user> <pass> "
                                "option can be used to authenticate the client and select the "
                                "RESP protocol version at the same time");
    if (name != NULL && set_name(rs, req, name) != 0)
        return oom(req);
    rs->resp3 = ver == 3;
    req->resp.len = 0;
    hello_reply(rs, &req->resp);
    finish_raw(req);
}

/* A HELLO ... AUTH that failed or was stopped: nothing of it takes
 * effect, its name is forgotten. */
static void hello_failed(router_redis_t *rs)
{
    router_name_unref(rs->hello_name);
    rs->hello_name = NULL;
    rs->hello_rename = 0;
}

int router_redis_auth_done(router_redis_t *rs, router_req_t *req, uint32_t status)
{
    if (req->rcmd != RC_HELLO)
        return 0;
    if (status != KVS_STATUS_OK) {
        hello_failed(rs);
        return 0;
    }
    /* Now, not when its reply is written (after the replies of the
     * commands before it): the client reads on from here, and a command
     * read after the HELLO must see its protocol and name. */
    rs->resp3 = rs->hello_ver == 3;
    if (rs->hello_rename)
        rename_to(rs, req, rs->hello_name);
    rs->hello_name = NULL;
    rs->hello_rename = 0;
    req->resp.len = 0;
    hello_reply(rs, &req->resp);
    finish_raw(req);
    return 1;
}

static const sub_t config_subs[] = {
    {"get", -3, "admin noscript loading stale", "GET <pattern>",
     "Return parameters matching the glob-like <pattern>."},
    {"set", -4, "admin noscript loading stale", "SET <directive> <value>",
     "Refused: kvs's configuration is config.yaml."},
    {"resetstat", 2, "admin noscript loading stale", "RESETSTAT",
     "Refused: kvs's configuration is config.yaml."},
    {"rewrite", 2, "admin noscript loading stale", "REWRITE",
     "Refused: kvs's configuration is config.yaml."},
    {"help", 2, "loading stale", "HELP", "Prints this help."},
};

/* Does CONFIG GET's argument `a` ask for parameter `name`? A pattern (one
 * of "[*?" in it) is matched without case, anything else is a name
 * compared without case, as Redis does. Redis reads a pattern as a C
 * string: what follows a NUL is not part of it ("sav*\0x" is "sav*").
 * Returns 1, 0, or -1 when the pattern ran out of `budget`. */
static int config_wanted(const kvs_redis_arg_t *a, const char *name, uint64_t *budget)
{
    static const char specials[] = "[*?";
    const uint8_t *nul = memchr(a->p, 0, a->len);
    size_t n = nul != NULL ? (size_t)(nul - a->p) : a->len;
    int pattern = 0;
    for (size_t i = 0; i < n && !pattern; i++)
        pattern = strchr(specials, a->p[i]) != NULL;
    if (!pattern)
        return kvs_redis_arg_is(a, name);
    return kvs_redis_glob(a->p, n, (const uint8_t *)name, strlen(name), 1, budget);
}

/* CONFIG GET: the few parameters clients and redis-benchmark ask for. A
 * parameter asked for by name is answered under the name as given (Redis
 * does so), one matched by a pattern under its own. */
static void cmd_config(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    static const char *const params[][2] = {
        {"save", ""},
        {"appendonly", "no"},
        {"databases", "1"},
        {"maxmemory", "0"},
    };
    const kvs_redis_arg_t *a = rs->ps.argv;
    (void)cl, (void)cmd;
    int sub = subcommand(rs, req, "config", config_subs, N_SUBS(config_subs));
    if (sub < 0)
        return;
    if (sub != 0)
        return reply_error(req, "ERR kvs supports only CONFIG GET (its config is config.yaml)");
    size_t np = sizeof(params) / sizeof(params[0]), hits = 0;
    const kvs_redis_arg_t *hit[sizeof(params) / sizeof(params[0])] = {NULL};
    uint64_t budget = ROUTER_REDIS_GLOB_STEPS;
    for (size_t k = 2; k < rs->ps.argc; k++)
        for (size_t i = 0; i < np; i++) {
            if (hit[i] != NULL)
                continue;
            int m = config_wanted(&a[k], params[i][0], &budget);
            if (m < 0)
                return reply_error(req, "ERR CONFIG GET patterns too costly to match");
            if (m > 0) {
                hit[i] = &a[k];
                hits++;
            }
        }
    kvs_buf_t *b = &req->resp;
    b->len = 0;
    kvs_redis_map(b, hits, rs->resp3);
    for (size_t i = 0; i < np; i++)
        if (hit[i] != NULL) {
            if (kvs_redis_arg_is(hit[i], params[i][0])) /* by name: as given */
                kvs_redis_bulk(b, hit[i]->p, hit[i]->len);
            else
                kvs_redis_bulk(b, params[i][0], strlen(params[i][0]));
            kvs_redis_bulk(b, params[i][1], strlen(params[i][1]));
        }
    finish_raw(req);
}

/* One SLOWLOG GET entry, in Redis's shape: id, Unix time (s), duration
 * (us), the request as arguments (command, table, "N keys"), client
 * address, client name. */
static void slowlog_entry(kvs_buf_t *b, const Kvs__SlowlogEntry *e)
{
    char keys[32];
    int n = snprintf(keys, sizeof(keys), "%u key%s", e->keys, e->keys == 1 ? "" : "s");
    kvs_redis_array(b, 6);
    kvs_redis_integer(b, (int64_t)e->id);
    kvs_redis_integer(b, e->time_us / 1000000);
    kvs_redis_integer(b, (int64_t)e->duration_us);
    kvs_redis_array(b, 3);
    kvs_redis_bulk(b, e->command, strlen(e->command));
    kvs_redis_bulk(b, e->table, strlen(e->table));
    kvs_redis_bulk(b, keys, (size_t)n);
    kvs_redis_bulk(b, e->client, strlen(e->client));
    kvs_redis_bulk(b, e->client_name, strlen(e->client_name));
}

static const sub_t slowlog_subs[] = {
    {"get", -2, "admin loading stale", "GET [<count>]",
     "Return top <count> entries from the slowlog (default: 10, -1 "
     "mean all)."},
    {"len", 2, "admin loading stale", "LEN", "Return the length of the slowlog."},
    {"reset", 2, "admin loading stale", "RESET", "Reset the slowlog."},
    {"help", 2, "loading stale", "HELP", "Prints this help."},
};

/* SLOWLOG GET [count] | LEN | RESET: a kvs Slowlog request, so it goes
 * through access control (admin), the hooks and the metrics like any
 * other; the router process's own log answers it. */
static void cmd_slowlog(router_redis_t *rs, router_client_t *cl, router_req_t *req,
                        const cmd_t *cmd)
{
    const kvs_redis_arg_t *a = rs->ps.argv;
    Kvs__CommandRequest q = KVS__COMMAND_REQUEST__INIT;
    Kvs__Slowlog m = KVS__SLOWLOG__INIT;
    int rcmd;
    (void)cmd;
    int sub = subcommand(rs, req, "slowlog", slowlog_subs, N_SUBS(slowlog_subs));
    if (sub < 0)
        return;
    q.command_case = KVS__COMMAND_REQUEST__COMMAND_SLOWLOG;
    q.slowlog = &m;
    m.count = 1; /* LEN and RESET need no entries: one is the least asked for */
    if (sub == 0 && rs->ps.argc <= 3) {
        int64_t count = KVS_SLOWLOG_DEFAULT_COUNT;
        if (rs->ps.argc == 3 && (kvs_redis_arg_int(&a[2], &count) != 0 || count < -1))
            return reply_error(req, "ERR count should be greater than or equal to -1");
        m.count = count < 0 || count > UINT32_MAX ? UINT32_MAX : count == 0 ? 1 : (uint32_t)count;
        req->rflags = count == 0; /* GET 0: an empty array */
        rcmd = RC_SLOWLOG_GET;
    } else if (sub == 1) {
        rcmd = RC_SLOWLOG_LEN;
    } else if (sub == 2) {
        m.reset = 1;
        rcmd = RC_SLOWLOG_RESET;
    } else { /* GET with more than a count: Redis's own words for it */
        return reply_error(req,
                           "ERR unknown subcommand or wrong number of arguments for '%.*s'. "
                           "Try SLOWLOG HELP.",
                           shown(&a[1]), (const char *)a[1].p);
    }
    route_request(rs, cl, req, &q, rcmd);
}

/* The reply to a SLOWLOG command's Slowlog answer. */
static int answer_slowlog(const router_req_t *req, const Kvs__CommandResponse *a, kvs_buf_t *out)
{
    const Kvs__OpsAnswer *ops = a->ops;
    size_t n = ops != NULL && !req->rflags ? ops->n_slowlog : 0;
    if (req->rcmd == RC_SLOWLOG_LEN)
        return kvs_redis_integer(out, ops != NULL ? (int64_t)ops->slowlog_len : 0);
    if (req->rcmd == RC_SLOWLOG_RESET)
        return kvs_redis_simple(out, "OK");
    kvs_redis_array(out, n);
    for (size_t i = 0; i < n; i++)
        slowlog_entry(out, ops->slowlog[i]);
    return 0;
}

/* DEL and UNLINK: each key's table emptied on every shard (Hclear). */
static void cmd_del(router_redis_t *rs, router_client_t *cl, router_req_t *req, const cmd_t *cmd)
{
    if (rs->ps.argc > 2)
        return several_keys(rs, cl, req, cmd);
    route_table_of(rs, cl, req, cmd, &rs->ps.argv[1]);
}

/* DEL, UNLINK or EXISTS of several keys: one request per key, consecutive
 * in the client's FIFO, whose replies router_redis_fold folds into one.
 * Checked for every key first, so that a refusal of one (a name that is
 * no table's, a right the user lacks, a table bound to a topic for DEL)
 * refuses the whole command with nothing done, as Redis checks a
 * command's keys before it runs; past that, each key's request runs on
 * its own (a failure on one shard of one key leaves the other keys
 * deleted). `req` takes the first key; route_more the others, once `req`
 * was routed. At most limits.max_inflight keys: each is a request the
 * client holds. */
static void several_keys(router_redis_t *rs, router_client_t *cl, router_req_t *req,
                         const cmd_t *cmd)
{
    router_t *r = rs->r;
    const kvs_redis_arg_t *a = rs->ps.argv;
    size_t argc = rs->ps.argc;
    int del = cmd->rcmd == RC_DEL;
    Kvs__CommandRequest__CommandCase kc =
        del ? KVS__COMMAND_REQUEST__COMMAND_HCLEAR : KVS__COMMAND_REQUEST__COMMAND_HLEN;
    if (argc - 1 > r->cfg->max_inflight)
        return reply_error(req,
                           "ERR kvs answers %s for at most %u keys at a time "
                           "(limits.max_inflight): %zu were given",
                           cmd->name, r->cfg->max_inflight, argc - 1);
    for (size_t i = 2; i < argc; i++) /* args_refused checked the first */
        if (key_refused(req, &a[i]))
            return;
    for (size_t i = 1; i < argc; i++)
        if (not_allowed(req, kc, &a[i]))
            return;
    for (size_t i = 1; i < argc && del; i++) {
        const kvs_binding_t *b = kvs_config_binding_n(r->cfg, a[i].p, a[i].len);
        if (b != NULL)
            return reply_error(req, "ERR " KVS_MSG_DEL_BOUND, b->table, b->topic);
    }
    kvs_buf_t *k = &rs->more_keys;
    k->len = 0;
    for (size_t i = 2; i < argc; i++) {
        uint32_t n = (uint32_t)a[i].len; /* a table name: at most KVS_MAX_TABLE */
        if (kvs_buf_append(k, &n, sizeof(n)) != 0 || kvs_buf_append(k, a[i].p, n) != 0)
            return oom(req);
    }
    rs->more_cmd = cmd;
    rs->more_n = (uint32_t)(argc - 2);
    rs->more_resp3 = req->rresp3;
    req->rfold = ROUTER_FOLD_PART;
    route_table_of(rs, cl, req, cmd, &a[1]);
}

/* The keys after the first of several_keys, each its own request, routed
 * as router_redis_command routes one. */
static void route_more(router_redis_t *rs, router_client_t *cl)
{
    const cmd_t *cmd = rs->more_cmd;
    uint32_t n = rs->more_n;
    size_t at = 0;
    rs->more_n = 0;
    for (uint32_t i = 0; i < n && !router_client_closing(cl); i++) {
        router_req_t *req = router_client_enqueue(cl);
        if (req == NULL)
            return; /* the client is being closed for lack of memory */
        uint32_t len;
        memcpy(&len, rs->more_keys.data + at, sizeof(len));
        kvs_redis_arg_t key = {rs->more_keys.data + at + sizeof(len), len};
        at += sizeof(len) + len;
        req->rresp3 = rs->more_resp3;
        req->rfold = i + 1 == n ? ROUTER_FOLD_LAST : ROUTER_FOLD_PART;
        req->in_route = 1;
        unsigned long failures = kvs_redis_reply_failures();
        router_ops_note(rs->r, req,
                        cmd->rcmd == RC_DEL ? KVS__COMMAND_REQUEST__COMMAND_HCLEAR
                                            : KVS__COMMAND_REQUEST__COMMAND_HLEN,
                        key.p, key.len, 0);
        route_table_of(rs, cl, req, cmd, &key);
        if (req->done && req->raw && kvs_redis_reply_failures() != failures)
            req->resp.len = 0; /* a reply missing a piece is not sent: the client is closed */
        req->in_route = 0;
        router_ops_forget(req);
        kvs_arena_reset(&rs->r->redis_arena);
        router_client_routed(cl, req);
    }
    if (rs->more_keys.cap > 64 * 1024)
        kvs_buf_free(&rs->more_keys); /* one large command's keys are not kept for good */
}

static void cmd_command(router_redis_t *rs, router_client_t *cl, router_req_t *req,
                        const cmd_t *cmd);

static const sub_t command_subs[] = {
    {"count", 2, "loading stale", "COUNT", "Return the total number of commands in this server."},
    {"info", -2, "loading stale", "INFO [<command-name> ...]",
     "Return details about the named commands, or all of them without a name."},
    {"docs", -2, "loading stale", "DOCS [<command-name> ...]",
     "Return documentation details about the named commands, or all of them."},
    {"help", 2, "loading stale", "HELP", "Prints this help."},
};

/* Kept in the order clients send them most: the lookup is linear. */
static const cmd_t commands[] = {
    {"hget", 3, "readonly fast", 1, 1, 1, cmd_hget, RC_HGET, ARGS_FIELD},
    {"hset", -4, "write denyoom fast", 1, 1, 1, cmd_hset, RC_HSET, ARGS_PAIRS},
    {"hmget", -3, "readonly fast", 1, 1, 1, cmd_fields, RC_HMGET, ARGS_FIELDS},
    {"hmset", -4, "write denyoom fast", 1, 1, 1, cmd_hset, RC_OK, ARGS_PAIRS},
    {"hdel", -3, "write fast", 1, 1, 1, cmd_fields, RC_HDEL, ARGS_FIELDS},
    {"hexists", 3, "readonly fast", 1, 1, 1, cmd_hexists, RC_HEXISTS, ARGS_FIELD},
    {"hgetall", 2, "readonly", 1, 1, 1, cmd_hgetall, RC_HGETALL, ARGS_KEY},
    {"hsetnx", 4, "write denyoom fast", 1, 1, 1, cmd_hset, RC_HSETNX, ARGS_FIELD},
    {"hincrby", 4, "write denyoom fast", 1, 1, 1, cmd_hincr, RC_HINCRBY, ARGS_FIELD},
    {"hincrbyfloat", 4, "write denyoom fast", 1, 1, 1, cmd_hincr, RC_HINCRBYFLOAT, ARGS_FIELD},
    {"hkeys", 2, "readonly", 1, 1, 1, cmd_hgetall, RC_HKEYS, ARGS_KEY},
    {"hvals", 2, "readonly", 1, 1, 1, cmd_hgetall, RC_HVALS, ARGS_KEY},
    {"hlen", 2, "readonly fast", 1, 1, 1, cmd_hlen, RC_HLEN, ARGS_KEY},
    {"hstrlen", 3, "readonly fast", 1, 1, 1, cmd_hget, RC_HSTRLEN, ARGS_FIELD},
    {"hscan", -3, "readonly", 1, 1, 1, cmd_hscan, RC_HSCAN, ARGS_KEY},
    {"exists", -2, "readonly fast", 1, -1, 1, cmd_hlen, RC_EXISTS, ARGS_KEY},
    {"type", 2, "readonly fast", 1, 1, 1, cmd_hlen, RC_TYPE, ARGS_KEY},
    {"del", -2, "write", 1, -1, 1, cmd_del, RC_DEL, ARGS_KEY},
    {"unlink", -2, "write fast", 1, -1, 1, cmd_del, RC_DEL, ARGS_KEY},
    {"ping", -1, "fast", 0, 0, 0, cmd_ping, RC_NONE, ARGS_FREE},
    {"echo", 2, "loading stale fast", 0, 0, 0, cmd_echo, RC_NONE, ARGS_FREE},
    {"info", -1, "loading stale", 0, 0, 0, cmd_info, RC_INFO, ARGS_FREE},
    {"command", -1, "loading stale", 0, 0, 0, cmd_command, RC_NONE, ARGS_FREE},
    {"client", -2, "", 0, 0, 0, cmd_client, RC_NONE,
     ARGS_FREE}, /* containers: flags per subcommand */
    {"hello", -1, "noscript loading stale fast no_auth allow_busy", 0, 0, 0, cmd_hello, RC_NONE,
     ARGS_FREE},
    {"auth", -2, "noscript loading stale fast no_auth allow_busy", 0, 0, 0, cmd_auth, RC_NONE,
     ARGS_FREE},
    {"select", 2, "loading stale fast", 0, 0, 0, cmd_select, RC_NONE, ARGS_FREE},
    {"config", -2, "", 0, 0, 0, cmd_config, RC_NONE, ARGS_FREE},
    {"slowlog", -2, "", 0, 0, 0, cmd_slowlog, RC_NONE, ARGS_FREE},
    {"quit", -1, "noscript loading stale fast no_auth allow_busy", 0, 0, 0, cmd_quit, RC_NONE,
     ARGS_FREE},
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static const cmd_t *lookup(const kvs_redis_arg_t *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (kvs_redis_arg_is(name, commands[i].name))
            return &commands[i];
    return NULL;
}

static void put_simple_or_bulk(kvs_buf_t *b, const char *s)
{
    kvs_redis_simple(b, s);
}

/* The head of a COMMAND INFO entry, as Redis 7 lays it out: name, arity,
 * flags, first, last and step key, then ACL categories, tips and key specs
 * (kvs gives none); sets in RESP3. The caller writes the tenth element,
 * the subcommands. */
static void entry_head(kvs_buf_t *b, const char *name, int arity, const char *flag_list,
                       const int keys[3], int resp3)
{
    char flags[64];
    size_t nflags = 0;
    kvs_redis_array(b, 10);
    kvs_redis_bulk(b, name, strlen(name));
    kvs_redis_integer(b, arity);
    snprintf(flags, sizeof(flags), "%s", flag_list);
    for (char *s = flags; *s != '\0'; s++)
        nflags += (s == flags || s[-1] == ' ') && *s != ' ';
    kvs_redis_set(b, nflags, resp3);
    for (char *tok = strtok(flags, " "); tok != NULL; tok = strtok(NULL, " "))
        put_simple_or_bulk(b, tok);
    for (int i = 0; i < 3; i++)
        kvs_redis_integer(b, keys[i]);
    kvs_redis_set(b, 0, resp3); /* ACL categories */
    kvs_redis_set(b, 0, resp3); /* tips */
    kvs_redis_set(b, 0, resp3); /* key specs */
}

/* A container's subcommands (CLIENT, COMMAND, CONFIG, SLOWLOG), for
 * COMMAND INFO and DOCS: NULL (*n 0) for any other command. */
static const sub_t *subs_of(const cmd_t *c, size_t *n)
{
    static const struct {
        cmd_fn fn;
        const sub_t *subs;
        size_t n;
    } containers[] = {
        {cmd_client, client_subs, N_SUBS(client_subs)},
        {cmd_command, command_subs, N_SUBS(command_subs)},
        {cmd_config, config_subs, N_SUBS(config_subs)},
        {cmd_slowlog, slowlog_subs, N_SUBS(slowlog_subs)},
    };
    for (size_t i = 0; i < sizeof(containers) / sizeof(containers[0]); i++)
        if (containers[i].fn == c->fn) {
            *n = containers[i].n;
            return containers[i].subs;
        }
    *n = 0;
    return NULL;
}

/* A subcommand's full name, as Redis 7 writes it: "client|id". */
static const char *sub_name(char *buf, size_t size, const cmd_t *c, const sub_t *s)
{
    snprintf(buf, size, "%s|%s", c->name, s->name);
    return buf;
}

/* A subcommand's COMMAND INFO entry ("client|id"): it has no keys and no
 * subcommands of its own. */
static void sub_entry(kvs_buf_t *b, const cmd_t *c, const sub_t *s, int resp3)
{
    static const int no_keys[3] = {0, 0, 0};
    char name[48];
    entry_head(b, sub_name(name, sizeof(name), c, s), s->arity, s->flags, no_keys, resp3);
    kvs_redis_set(b, 0, resp3);
}

/* A command's COMMAND INFO entry; a container's lists its subcommands (an
 * array, as Redis's; none: an empty set). */
static void command_entry(kvs_buf_t *b, const cmd_t *c, int resp3)
{
    const int keys[3] = {c->first, c->last, c->step};
    size_t n;
    const sub_t *subs = subs_of(c, &n);
    entry_head(b, c->name, c->arity, c->flags, keys, resp3);
    if (subs == NULL) {
        kvs_redis_set(b, 0, resp3);
        return;
    }
    kvs_redis_array(b, n);
    for (size_t i = 0; i < n; i++)
        sub_entry(b, c, &subs[i], resp3);
}

/* The command COMMAND INFO or DOCS names with `a`, looked up as Redis 7
 * looks one up: "container|sub" (either part in any case, one '|' only)
 * is a subcommand, *sub set; anything else a command, *sub NULL. NULL
 * when kvs has no such command. */
static const cmd_t *lookup_full(const kvs_redis_arg_t *a, const sub_t **sub)
{
    const uint8_t *bar = memchr(a->p, '|', a->len);
    *sub = NULL;
    if (bar == NULL)
        return lookup(a);
    size_t head = (size_t)(bar - a->p);
    kvs_redis_arg_t base = {a->p, head}, tail = {bar + 1, a->len - head - 1};
    size_t n;
    const cmd_t *c = lookup(&base);
    const sub_t *subs = c != NULL ? subs_of(c, &n) : NULL;
    if (subs == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (kvs_redis_arg_is(&tail, subs[i].name)) {
            *sub = &subs[i];
            return c;
        }
    return NULL;
}

/* COMMAND DOCS's group of a command, Redis's: the hash commands, the
 * keyspace ones (EXISTS, TYPE, DEL), the server's and the connection's. */
static const char *command_group(const cmd_t *c)
{
    static const char *const generic[] = {"exists", "type", "del", "unlink"};
    static const char *const server[] = {"info", "command", "config", "slowlog"};
    for (size_t i = 0; i < sizeof(generic) / sizeof(generic[0]); i++)
        if (strcmp(c->name, generic[i]) == 0)
            return "generic";
    for (size_t i = 0; i < sizeof(server) / sizeof(server[0]); i++)
        if (strcmp(c->name, server[i]) == 0)
            return "server";
    return c->name[0] == 'h' && c->rcmd != RC_NONE ? "hash" : "connection";
}

/* One COMMAND DOCS entry: the name and a map holding its group. */
static void docs_entry(kvs_buf_t *b, const char *name, const char *group, int resp3)
{
    kvs_redis_bulk(b, name, strlen(name));
    kvs_redis_map(b, 1, resp3);
    kvs_redis_bulk(b, "group", 5);
    kvs_redis_bulk(b, group, strlen(group));
}

/* Whether the reply being built in `b` is past limits.max_frame, the most
 * a reply may take: names repeated in one COMMAND INFO or DOCS (a 12-byte
 * "client" gives a 1 KiB entry) would otherwise build a reply a hundred
 * times the request's size. */
static int reply_past_frame(const router_redis_t *rs, const kvs_buf_t *b)
{
    return b->len > rs->r->cfg->max_frame;
}

/* COMMAND DOCS [name...]: every command, or those named, in the order
 * named (a name given twice, twice), as Redis answers; a group for each
 * (a subcommand's is its container's). Stops once past limits.max_frame
 * (reply_past_frame). */
static void command_docs(router_redis_t *rs, kvs_buf_t *b)
{
    const kvs_redis_arg_t *a = rs->ps.argv;
    size_t argc = rs->ps.argc, n = 0;
    char name[48];
    const sub_t *sub;
    if (argc == 2) {
        kvs_redis_map(b, N_COMMANDS, rs->resp3);
        for (size_t i = 0; i < N_COMMANDS; i++)
            docs_entry(b, commands[i].name, command_group(&commands[i]), rs->resp3);
        return;
    }
    for (size_t k = 2; k < argc; k++)
        n += lookup_full(&a[k], &sub) != NULL;
    kvs_redis_map(b, n, rs->resp3);
    for (size_t k = 2; k < argc && !reply_past_frame(rs, b); k++) {
        const cmd_t *c = lookup_full(&a[k], &sub);
        if (c != NULL)
            docs_entry(b, sub != NULL ? sub_name(name, sizeof(name), c, sub) : c->name,
                       command_group(c), rs->resp3);
    }
}

/* COMMAND, COMMAND COUNT, COMMAND INFO [name...], COMMAND DOCS [name...]. */
static void cmd_command(router_redis_t *rs, router_client_t *cl, router_req_t *req,
                        const cmd_t *cmd)
{
    const kvs_redis_arg_t *a = rs->ps.argv;
    size_t argc = rs->ps.argc;
    kvs_buf_t *b = &req->resp;
    (void)cl, (void)cmd;
    int sub = argc == 1 ? -2 : subcommand(rs, req, "command", command_subs, N_SUBS(command_subs));
    if (sub == -1)
        return;
    b->len = 0;
    if (sub == -2 || (sub == 1 && argc == 2)) { /* COMMAND, COMMAND INFO: every command */
        kvs_redis_array(b, N_COMMANDS);
        for (size_t i = 0; i < N_COMMANDS; i++)
            command_entry(b, &commands[i], rs->resp3);
    } else if (sub == 0) {
        kvs_redis_integer(b, N_COMMANDS);
    } else if (sub == 1) {
        kvs_redis_array(b, argc - 2);
        for (size_t i = 2; i < argc && !reply_past_frame(rs, b); i++) {
            const sub_t *s;
            const cmd_t *c = lookup_full(&a[i], &s);
            if (c == NULL)
                kvs_redis_null(b, rs->resp3);
            else if (s != NULL)
                sub_entry(b, c, s, rs->resp3);
            else
                command_entry(b, c, rs->resp3);
        }
    } else {
        command_docs(rs, b);
    }
    if (reply_past_frame(rs, b))
        return reply_error_status(req, KVS_STATUS_TOO_LARGE,
                                  "ERR the reply would exceed limits.max_frame (%llu bytes): name "
                                  "fewer commands",
                                  (unsigned long long)rs->r->cfg->max_frame);
    finish_raw(req);
}

/* Redis's "unknown command" error, word for word. */
static void unknown_command(router_redis_t *rs, router_req_t *req)
{
    char args[200];
    size_t n = 0;
    const kvs_redis_arg_t *a = rs->ps.argv;
    args[0] = '\0';
    for (size_t i = 1; i < rs->ps.argc && n < 128; i++) {
        int k = snprintf(args + n, sizeof(args) - n, "'%.*s' ",
                         (int)(128 - n < a[i].len ? 128 - n : a[i].len), (const char *)a[i].p);
        if (k < 0 || (size_t)k >= sizeof(args) - n)
            break;
        n += (size_t)k;
    }
    reply_error(req, "ERR unknown command '%.*s', with args beginning with: %s", shown(&a[0]),
                (const char *)a[0].p, args);
}

/* ---- MULTI / EXEC ---------------------------------------------------------------------------
 *
 * kvs runs no transactions: the commands of one MULTI may go to several
 * shards' workers, each committing what it is sent. MULTI used to answer
 * "unknown command" and the commands after it ran as any other: a client
 * library's transaction (redis-py's default pipeline) applied them and
 * then raised an error for its EXEC, and a client that retried applied
 * them twice. So MULTI is taken as Redis takes it (+OK), every command
 * after it is refused as not queued, and EXEC answers EXECABORT, as Redis
 * does for a transaction with a command refused while queuing: nothing
 * of it ran. DISCARD ends it; WATCH is refused (there are no optimistic
 * locks either); UNWATCH has nothing to undo. QUIT still quits.
 * Returns 1 when it answered the command. */
/* Whether `cmd`, given argc arguments, has Redis's arity. */
static int arity_ok(const cmd_t *cmd, size_t argc)
{
    return cmd->arity > 0 ? argc == (size_t)cmd->arity : argc >= (size_t)-cmd->arity;
}

enum { T_NONE, T_MULTI, T_EXEC, T_DISCARD, T_WATCH, T_UNWATCH };
static const cmd_t transaction_words[] = {
    [T_MULTI] = {.name = "multi", .arity = 1},     [T_EXEC] = {.name = "exec", .arity = 1},
    [T_DISCARD] = {.name = "discard", .arity = 1}, [T_WATCH] = {.name = "watch", .arity = -2},
    [T_UNWATCH] = {.name = "unwatch", .arity = 1},
};

static int transaction_command(router_redis_t *rs, router_client_t *cl, router_req_t *req,
                               const cmd_t *cmd)
{
    const kvs_redis_arg_t *a = rs->ps.argv;
    size_t argc = rs->ps.argc;
    char first = a[0].len > 0 ? (char)(a[0].p[0] | 0x20) : '\0';
    if (!rs->multi && first != 'm' && first != 'e' && first != 'd' && first != 'w' && first != 'u')
        return 0; /* the hot path (HGET, HSET, ...): one look */
    int w = T_NONE;
    for (int i = T_MULTI; i <= T_UNWATCH && w == T_NONE; i++)
        if (kvs_redis_arg_is(&a[0], transaction_words[i].name))
            w = i;
    if (w == T_NONE && (!rs->multi || (cmd != NULL && cmd->fn == cmd_quit)))
        return 0;
    if (w != T_NONE && !arity_ok(&transaction_words[w], argc)) { /* as Redis: before rights */
        if (w == T_EXEC) { /* Redis's EXEC aborts whatever its error, and so ends a MULTI */
            reply_error(req,
                        "EXECABORT Transaction discarded because of: wrong number of arguments "
                        "for 'exec' command");
            rs->multi = 0;
        } else {
            reply_error(req, "ERR wrong number of arguments for '%s' command",
                        transaction_words[w].name);
            rs->multi_aborted |= rs->multi;
        }
    } else if (!router_client_authenticated(cl)) {
        reply_error(req, "NOAUTH Authentication required.");
    } else if (w == T_MULTI && rs->multi) {
        reply_error(req, "ERR MULTI calls can not be nested"); /* not queued: no abort */
    } else if (w == T_MULTI) {
        rs->multi = 1;
        rs->multi_aborted = 0;
        reply_ok(req);
    } else if ((w == T_EXEC || w == T_DISCARD) && !rs->multi) {
        reply_error(req, "ERR %s without MULTI", w == T_EXEC ? "EXEC" : "DISCARD");
    } else if (w == T_EXEC || w == T_DISCARD) {
        rs->multi = 0;
        if (w == T_DISCARD) {
            reply_ok(req);
        } else if (rs->multi_aborted) {
            reply_error(req, "EXECABORT Transaction discarded because of previous errors.");
        } else { /* nothing was sent between: an empty transaction ran */
            req->resp.len = 0;
            kvs_redis_array(&req->resp, 0);
            finish_raw(req);
        }
    } else if (w == T_WATCH) {
        reply_error(req, rs->multi ? "ERR WATCH inside MULTI is not allowed" /* not queued */
                                   : "ERR kvs has no transactions: WATCH is not supported");
    } else if (w == T_UNWATCH && !rs->multi) {
        reply_ok(req); /* nothing is watched */
    } else { /* a command after MULTI (UNWATCH too): refused, in Redis's words where it has some */
        if (cmd == NULL && w == T_NONE)
            unknown_command(rs, req);
        else if (cmd != NULL && !arity_ok(cmd, argc))
            reply_error(req, "ERR wrong number of arguments for '%s' command", cmd->name);
        else
            reply_error(req,
                        "ERR kvs has no transactions: '%.*s' was not queued and does not run; "
                        "EXEC will discard the transaction (send the commands without MULTI, "
                        "e.g. redis-py's pipeline(transaction=False))",
                        shown(&a[0]), (const char *)a[0].p);
        rs->multi_aborted = 1;
    }
    return 1;
}

/* A hash command's key and fields (cmd->args), checked before it runs, so
 * that what is wrong is said in Redis's terms. Answers and returns 1 if
 * one is refused. */
static int args_refused(router_req_t *req, const cmd_t *cmd, const kvs_redis_arg_t *a, size_t argc)
{
    if (cmd->args == ARGS_FREE)
        return 0;
    if (cmd->args == ARGS_PAIRS && argc % 2 != 0)
        return 0; /* a field without its value: cmd_hset answers the arity, as Redis does first */
    if (cmd->fn == cmd_hincr && hincr_by(cmd, a, NULL) != NULL)
        return 0; /* a bad increment: cmd_hincr answers it, as Redis checks it first */
    if (key_refused(req, &a[1]))
        return 1;
    size_t last = cmd->args == ARGS_KEY ? 1 : cmd->args == ARGS_FIELD ? 2 : argc - 1;
    size_t step = cmd->args == ARGS_PAIRS ? 2 : 1;
    for (size_t i = 2; i <= last && i < argc; i += step)
        if (field_refused(req, &a[i]))
            return 1;
    return 0;
}

/* The kvs command `cmd` (with argc arguments) becomes, or 0 for the front
 * door's own commands (PING, CLIENT, HELLO without AUTH, ...), and how
 * many keys it names. */
static uint32_t kvs_command_of(const cmd_t *cmd, size_t argc, uint32_t *keys)
{
    size_t fields = argc > 2 ? argc - 2 : 0;
    *keys = 0;
    if (cmd->fn == cmd_auth)
        return KVS__COMMAND_REQUEST__COMMAND_AUTH;
    if (cmd->fn == cmd_slowlog)
        return KVS__COMMAND_REQUEST__COMMAND_SLOWLOG;
    switch (cmd->rcmd) {
    case RC_HGET:
    case RC_HSTRLEN:
        *keys = 1;
        return KVS__COMMAND_REQUEST__COMMAND_HGET;
    case RC_HEXISTS:
        *keys = 1;
        return KVS__COMMAND_REQUEST__COMMAND_HEXIST;
    case RC_HINCRBY:
    case RC_HINCRBYFLOAT:
        *keys = 1;
        return KVS__COMMAND_REQUEST__COMMAND_HINCR;
    case RC_HSET:
    case RC_HSETNX:
    case RC_OK:
        *keys = (uint32_t)(fields / 2 < UINT32_MAX ? fields / 2 : UINT32_MAX);
        return *keys <= 1 ? KVS__COMMAND_REQUEST__COMMAND_HSET
                          : KVS__COMMAND_REQUEST__COMMAND_HMSET;
    case RC_HMGET:
    case RC_HDEL:
        *keys = (uint32_t)(fields < UINT32_MAX ? fields : UINT32_MAX);
        if (cmd->rcmd == RC_HMGET)
            return KVS__COMMAND_REQUEST__COMMAND_HMGET;
        return *keys <= 1 ? KVS__COMMAND_REQUEST__COMMAND_HDEL
                          : KVS__COMMAND_REQUEST__COMMAND_HMDEL;
    case RC_HGETALL:
    case RC_HKEYS:
    case RC_HVALS:
        return KVS__COMMAND_REQUEST__COMMAND_HGETALL;
    case RC_HLEN:
    case RC_EXISTS:
    case RC_TYPE:
        return KVS__COMMAND_REQUEST__COMMAND_HLEN;
    case RC_HSCAN:
        return KVS__COMMAND_REQUEST__COMMAND_HSCAN;
    case RC_DEL:
        return KVS__COMMAND_REQUEST__COMMAND_HCLEAR;
    case RC_INFO:
        return KVS__COMMAND_REQUEST__COMMAND_INFO;
    default:
        return 0;
    }
}

/* What hooks see of a command the front door answers itself (NOAUTH, a
 * key that is no table name, a wrong arity): the kvs request it would
 * have become, as a refused kvs protocol request is seen at EXECUTED.
 * Routing notes the request again once it is built. */
static void note_command(router_redis_t *rs, router_req_t *req, const cmd_t *cmd)
{
    uint32_t keys;
    uint32_t kc = kvs_command_of(cmd, rs->ps.argc, &keys);
    const kvs_redis_arg_t *a = rs->ps.argv;
    int table = cmd->args != ARGS_FREE && rs->ps.argc > 1;
    if (kc != 0)
        router_ops_note(rs->r, req, kc, table ? a[1].p : NULL, table ? a[1].len : 0, keys);
}

/* Whether a command named `a` is a line of an HTTP request: `POST` (its
 * request line) or `Host:` (a header every browser sends). A web page can
 * make the browser POST to any address, a loopback kvs included, and the
 * body's lines would run as inline commands; Redis closes the connection
 * at such a line, runs nothing after it and answers nothing
 * (securityWarningCommand), and so does kvs. */
static int cross_protocol(const kvs_redis_arg_t *a)
{
    return kvs_redis_arg_is(a, "post") || kvs_redis_arg_is(a, "host:");
}

void router_redis_command(router_redis_t *rs, router_client_t *cl)
{
    if (rs->quit) {
        router_client_close_after_answers(cl); /* the rest of the input is gone now */
        return;
    }
    if (rs->ps.argc == 0)
        return; /* an empty line or empty multibulk: no reply, as Redis */
    if (cross_protocol(&rs->ps.argv[0])) {
        const char *peer = router_client_peer_to_blame(cl);
        if (peer != NULL)
            kvs_warn("closing RESP client %s: it sent an HTTP request's \"%s\" line, possibly "
                     "a web page's request sent by a browser to run commands here (cross "
                     "protocol scripting); nothing after it runs",
                     peer, rs->ps.argv[0].len == 4 ? "POST" : "Host:");
        rs->quit = 1; /* no answer; the requests before it are answered */
        router_client_close_after_answers(cl);
        return;
    }
    router_req_t *req = router_client_enqueue(cl);
    if (req == NULL)
        return; /* the client is being closed for lack of memory */
    const cmd_t *cmd = lookup(&rs->ps.argv[0]);
    size_t argc = rs->ps.argc;
    /* Its reply is shown in the protocol of this turn, whenever its answer
     * comes: a HELLO pipelined behind it switches the commands after. */
    req->rresp3 = (uint8_t)rs->resp3;
    /* As in router_route: a request finished while its command runs is
     * delivered after, by router_client_routed, never under the handler. */
    req->in_route = 1;
    unsigned long failures = kvs_redis_reply_failures();
    if (cmd != NULL) /* MULTI and its words are none of kvs's commands */
        note_command(rs, req, cmd);
    int answered = transaction_command(rs, cl, req, cmd);
    if (answered) {
        /* MULTI, EXEC, ... or a command after MULTI */
    } else if (cmd == NULL) {
        unknown_command(rs, req);
    } else if (!arity_ok(cmd, argc)) {
        reply_error(req, "ERR wrong number of arguments for '%s' command", cmd->name);
    } else if (!router_client_authenticated(cl) && strstr(cmd->flags, "no_auth") == NULL) {
        reply_error(req, "NOAUTH Authentication required.");
    } else if (!args_refused(req, cmd, rs->ps.argv, argc)) {
        cmd->fn(rs, cl, req, cmd);
    }
    /* A reply written here that misses a piece is not sent: the client
     * is closed instead (client_flush_done, for an empty reply). */
    if (req->done && req->raw && kvs_redis_reply_failures() != failures)
        req->resp.len = 0;
    req->in_route = 0;
    router_ops_forget(req); /* the arguments are going */
    kvs_arena_reset(&rs->r->redis_arena);
    router_client_routed(cl, req);
    if (rs->more_n > 0)
        route_more(rs, cl); /* several_keys: the other keys, now the first was routed */
    if (rs->quit)
        router_client_close_after_answers(cl);
}

/* ---- answers ------------------------------------------------------------------------------- */

/* A stored Value as Redis shows it: bytes for text and binary, decimal text
 * for numbers and bools (`num` holds KVS_REDIS_DOUBLE_MAX bytes). */
static void value_text(const Kvs__Value *v, char *num, const uint8_t **p, size_t *n)
{
    kvs_value_peek_t pv = {.kind = v->kind_case};
    switch (v->kind_case) {
    case KVS__VALUE__KIND_STRING_VALUE:
        pv.bytes = v->string_value.data, pv.len = v->string_value.len;
        break;
    case KVS__VALUE__KIND_BINARY_VALUE:
        pv.bytes = v->binary_value.data, pv.len = v->binary_value.len;
        break;
    case KVS__VALUE__KIND_INTEGER_VALUE:
        pv.integer = v->integer_value;
        break;
    case KVS__VALUE__KIND_FLOAT_VALUE:
        pv.real = v->float_value;
        break;
    default:
        pv.boolean = v->bool_value;
        break;
    }
    *n = kvs_msg_value_text(&pv, num, p);
}

static int bulk_value(kvs_buf_t *out, const Kvs__Value *v, int resp3)
{
    char num[KVS_REDIS_DOUBLE_MAX];
    const uint8_t *p;
    size_t n;
    if (v == NULL || v->kind_case == KVS__VALUE__KIND__NOT_SET)
        return kvs_redis_null(out, resp3);
    value_text(v, num, &p, &n);
    return kvs_redis_bulk(out, p, n);
}

static int is_empty(const Kvs__Value *v)
{
    return v == NULL || v->kind_case == KVS__VALUE__KIND__NOT_SET;
}

/* HINCRBY's errors in Redis's words (the kvs message says more). */
static int incr_error(kvs_buf_t *out, const char *msg)
{
    static const char *const known[] = {
        "hash value is not an integer",
        "hash value is not a float",
        "increment or decrement would overflow",
        "increment would produce NaN or Infinity",
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strstr(msg, known[i]) != NULL)
            return kvs_redis_error(out, "ERR %s", known[i]);
    return kvs_redis_error(out, "ERR %s", msg);
}

/* Whether a reply of many values, written into `out` from `start`, has
 * grown past twice limits.max_frame; then it is replaced by an error
 * saying so (*rc its result). RESP takes more bytes than a kvs answer for
 * the same pairs: about 1.6 times for the smallest (a 1-byte field and
 * value), twice for a 19-digit integer, and up to 40 times for a float
 * (9 bytes in an answer, 330 digits as Redis shows 5e-324). So the reply
 * of any answer within the frame fits twice the frame, except floats',
 * and it is checked as it is written, after each element: it never holds
 * more than that and one value. */
static int reply_too_large(const router_req_t *req, kvs_buf_t *out, size_t start, int *rc)
{
    unsigned long long max = 2ull * req->router->cfg->max_frame;
    if (out->len - start <= max)
        return 0;
    out->len = start;
    if (req->rcmd == RC_HMGET)
        *rc = kvs_redis_error(out,
                              "ERR HMGET reply would exceed twice limits.max_frame (%llu bytes, "
                              "as Redis shows the values); ask for fewer fields per request",
                              max);
    else if (req->rcmd == RC_HSCAN)
        *rc = kvs_redis_error(out,
                              "ERR HSCAN page would exceed twice limits.max_frame (%llu bytes, "
                              "as Redis shows the values); use a smaller COUNT",
                              max);
    else
        *rc = kvs_redis_error(out,
                              "ERR %s reply would exceed twice limits.max_frame (%llu bytes, "
                              "as Redis shows the values); read the hash in pages with HSCAN",
                              req->rcmd == RC_HVALS   ? "HVALS"
                              : req->rcmd == RC_HKEYS ? "HKEYS"
                                                      : "HGETALL",
                              max);
    return 1;
}

static int answer_pairs(router_req_t *req, const Kvs__CommandResponse *a, kvs_buf_t *out)
{
    size_t n = a->n_pairs, start = out->len;
    int rc;
    if (req->rcmd == RC_HGETALL)
        kvs_redis_map(out, n, req->rresp3);
    else
        kvs_redis_array(out, n);
    for (size_t i = 0; i < n; i++) {
        const Kvs__Kvpair *p = a->pairs[i];
        if (req->rcmd != RC_HVALS)
            kvs_redis_bulk(out, p->key.data, p->key.len);
        if (req->rcmd != RC_HKEYS)
            bulk_value(out, p->value, req->rresp3);
        if (reply_too_large(req, out, start, &rc))
            return rc;
    }
    return 0;
}

static int answer_scan(router_redis_t *rs, router_req_t *req, const Kvs__CommandResponse *a,
                       kvs_buf_t *out)
{
    const scan_ctx_t *sc = req->rctx;
    char num[24];
    uint64_t seq = 0, budget = ROUTER_REDIS_GLOB_STEPS;
    uint8_t *hit = kvs_arena_alloc(&rs->r->reply_arena, a->n_pairs + 1);
    if (hit == NULL)
        return kvs_redis_error(out, "ERR the server is out of memory");
    size_t n = 0;
    for (size_t i = 0; i < a->n_pairs; i++) { /* on the loop: within a budget */
        const ProtobufCBinaryData *key = &a->pairs[i]->key;
        int m =
            req->rflags ? kvs_redis_glob(sc->pat, sc->plen, key->data, key->len, 0, &budget) : 1;
        if (m < 0 && i == 0) /* no smaller COUNT helps: one field is the least page */
            return kvs_redis_error(out,
                                   "ERR MATCH pattern too costly to match against a field of %zu "
                                   "bytes: use a shorter pattern (fewer or shorter [...] classes)",
                                   key->len);
        if (m < 0)
            return kvs_redis_error(out,
                                   "ERR MATCH pattern too costly to match against a page of %zu "
                                   "fields: use a shorter pattern (fewer or shorter [...] "
                                   "classes) or a smaller COUNT",
                                   a->n_pairs);
        hit[i] = (uint8_t)m;
        n += (size_t)m;
    }
    /* The cursor is kept once the page is written: a page refused for
     * its size takes no place among the kept ones. */
    if (a->cursor.len > 0 && (seq = cursor_next(rs->r)) == 0)
        return kvs_redis_error(out, "ERR the server is out of memory");
    seq = seq != 0 ? rs->r->id_base | seq : 0;
    size_t start = out->len;
    int rc;
    kvs_redis_array(out, 2);
    int k = snprintf(num, sizeof(num), "%llu", (unsigned long long)seq);
    kvs_redis_bulk(out, num, (size_t)k);
    kvs_redis_array(out, 2 * n);
    for (size_t i = 0; i < a->n_pairs; i++) {
        const Kvs__Kvpair *p = a->pairs[i];
        if (!hit[i])
            continue;
        kvs_redis_bulk(out, p->key.data, p->key.len);
        bulk_value(out, p->value, req->rresp3);
        /* A page of the least count (a COUNT no smaller one can go
         * under) is answered whatever its size: at most SCAN_PAGE_MIN
         * pairs more than the limit, each its key and a float's text
         * (about 900 bytes), so that a table of floats can be walked
         * under a small limits.max_frame; past that, a smaller COUNT
         * always gets through. */
        if (a->n_pairs > SCAN_PAGE_MIN && reply_too_large(req, out, start, &rc))
            return rc;
    }
    if (seq != 0 && cursor_keep(rs->r, sc->table, a->cursor.data, a->cursor.len) != seq) {
        out->len = start; /* the number it said is not kept */
        return kvs_redis_error(out, "ERR the server is out of memory");
    }
    return 0;
}

static int answer_info(router_redis_t *rs, router_req_t *req, const Kvs__CommandResponse *a,
                       kvs_buf_t *out)
{
    kvs_buf_t t;
    kvs_buf_init(&t);
    int rc = info_server(rs, &t, req->rflags);
    if (rc == 0 && (req->rflags & INFO_KVS)) {
        if (t.len > 0)
            rc |= kvs_buf_append(&t, "\r\n", 2);
        rc |= kvs_buf_append(&t, "# Kvs\r\n", 7);
        for (size_t i = 0; rc == 0 && i < a->n_pairs; i++) {
            char num[KVS_REDIS_DOUBLE_MAX];
            const uint8_t *p;
            size_t n;
            value_text(a->pairs[i]->value, num, &p, &n);
            rc |= kvs_buf_append(&t, a->pairs[i]->key.data, a->pairs[i]->key.len);
            rc |= kvs_buf_append(&t, ":", 1);
            rc |= kvs_buf_append(&t, p, n);
            rc |= kvs_buf_append(&t, "\r\n", 2);
        }
    }
    if (rc != 0) {
        kvs_buf_free(&t);
        return -ENOMEM;
    }
    rc = kvs_redis_verbatim(out, t.data, t.len, req->rresp3);
    kvs_buf_free(&t);
    return rc;
}

/* The reply for a 200 answer. */
static int answer_ok(router_redis_t *rs, router_req_t *req, const Kvs__CommandResponse *a,
                     kvs_buf_t *out)
{
    const Kvs__Value *v0 = a->n_values > 0 ? a->values[0] : NULL;
    char num[KVS_REDIS_DOUBLE_MAX];
    const uint8_t *p;
    size_t n, count = 0;
    switch (req->rcmd) {
    case RC_HGET:
        return bulk_value(out, v0, req->rresp3);
    case RC_HSET:
    case RC_HDEL:
        for (size_t i = 0; i < a->n_values; i++)
            count += req->rcmd == RC_HSET ? is_empty(a->values[i]) : !is_empty(a->values[i]);
        return kvs_redis_integer(out, (int64_t)count);
    case RC_HSETNX:
        return kvs_redis_integer(out, is_empty(v0));
    case RC_OK:
        return kvs_redis_simple(out, "OK");
    case RC_HMGET: {
        size_t start = out->len;
        int rc;
        kvs_redis_array(out, a->n_values);
        for (size_t i = 0; i < a->n_values; i++) {
            bulk_value(out, a->values[i], req->rresp3);
            if (reply_too_large(req, out, start, &rc))
                return rc;
        }
        return 0;
    }
    case RC_HEXISTS:
        return kvs_redis_integer(out, v0 != NULL && v0->bool_value);
    case RC_HGETALL:
    case RC_HKEYS:
    case RC_HVALS:
        return answer_pairs(req, a, out);
    case RC_HLEN:
    case RC_EXISTS:
    case RC_TYPE:
        n = v0 != NULL ? (size_t)v0->integer_value : 0;
        if (req->rcmd == RC_TYPE)
            return kvs_redis_simple(out, n > 0 ? "hash" : "none");
        return kvs_redis_integer(out, req->rcmd == RC_EXISTS ? n > 0 : (int64_t)n);
    case RC_DEL:
        return kvs_redis_integer(out, v0 != NULL && v0->integer_value > 0);
    case RC_HSTRLEN: /* asked with value_lengths: values[0] is the length */
        if (is_empty(v0))
            return kvs_redis_integer(out, 0);
        if (v0->kind_case == KVS__VALUE__KIND_INTEGER_VALUE)
            return kvs_redis_integer(out, v0->integer_value);
        value_text(v0, num, &p, &n); /* a worker that ignored value_lengths */
        return kvs_redis_integer(out, (int64_t)n);
    case RC_HINCRBY:
        return kvs_redis_integer(out, v0 != NULL ? v0->integer_value : 0);
    case RC_HINCRBYFLOAT:
        return bulk_value(out, v0, req->rresp3);
    case RC_HSCAN:
        return answer_scan(rs, req, a, out);
    case RC_INFO:
        return answer_info(rs, req, a, out);
    case RC_AUTH:
        return kvs_redis_simple(out, "OK");
    case RC_SLOWLOG_GET:
    case RC_SLOWLOG_LEN:
    case RC_SLOWLOG_RESET:
        return answer_slowlog(req, a, out);
    default:
        return kvs_redis_error(out, "ERR internal error: no reply shape for this command");
    }
}

/* A value read without decoding, as Redis shows it (see value_text). */
static int bulk_peeked(kvs_buf_t *out, const kvs_value_peek_t *v, int resp3)
{
    char num[KVS_REDIS_DOUBLE_MAX];
    const uint8_t *text;
    if (v->kind == KVS__VALUE__KIND__NOT_SET)
        return kvs_redis_null(out, resp3);
    size_t n = kvs_msg_value_text(v, num, &text);
    return kvs_redis_bulk(out, text, n);
}

/* HGET or HSTRLEN of a missing field (or table): nil or 0, as Redis. */
static int missing_field(const router_req_t *req, int rcmd, kvs_buf_t *out)
{
    return rcmd == RC_HGET ? kvs_redis_null(out, req->rresp3) : kvs_redis_integer(out, 0);
}

/* The answers of the single-key commands, read without decoding them (the
 * hot path). Returns 1 when it wrote the reply (*rc its result), 0 when the
 * answer needs the full decoder. */
static int answer_fast(router_req_t *req, const uint8_t *payload, size_t len, kvs_buf_t *out,
                       int *rc)
{
    kvs_answer_peek_t a;
    kvs_value_peek_t v;
    int rcmd = req->rcmd;
    if ((rcmd != RC_HGET && rcmd != RC_HEXISTS && rcmd != RC_HSET && rcmd != RC_HSETNX &&
         rcmd != RC_HSTRLEN) ||
        !kvs_msg_answer_peek(payload, len, &a))
        return 0;
    if (a.status == KVS_STATUS_NOT_FOUND && a.n_values == 0 &&
        (rcmd == RC_HGET || rcmd == RC_HSTRLEN)) {
        *rc = missing_field(req, rcmd, out);
        return 1;
    }
    if (a.status != KVS_STATUS_OK || a.n_values != 1 ||
        !kvs_msg_value_peek(a.value, a.value_len, &v))
        return 0;
    switch (rcmd) {
    case RC_HGET:
        *rc = bulk_peeked(out, &v, req->rresp3);
        return 1;
    case RC_HEXISTS:
        *rc = kvs_redis_integer(out, v.kind == KVS__VALUE__KIND_BOOL_VALUE && v.boolean);
        return 1;
    case RC_HSET:
    case RC_HSETNX:
        *rc = kvs_redis_integer(out, v.kind == KVS__VALUE__KIND__NOT_SET);
        return 1;
    default: /* RC_HSTRLEN: asked with value_lengths, so the length itself */
        if (v.kind == KVS__VALUE__KIND_INTEGER_VALUE || v.kind == KVS__VALUE__KIND__NOT_SET) {
            *rc = kvs_redis_integer(out, v.kind == KVS__VALUE__KIND__NOT_SET ? 0 : v.integer);
            return 1;
        }
        return 0;
    }
}

/* The key and value of an encoded Kvpair p[0..len), without decoding it.
 * Returns 1 when it holds a key and at most one well-formed value (*has
 * says whether it has one) and nothing else, else 0. */
static int pair_peek(const uint8_t *p, size_t len, const uint8_t **key, size_t *klen,
                     kvs_value_peek_t *v, int *has)
{
    const uint8_t *end = p + len, *x;
    uint64_t tag;
    size_t n;
    *key = NULL, *klen = 0, *has = 0;
    while (p < end) {
        if (kvs_msg_next_field(&p, end, &tag, &x, &n) != 0)
            return 0;
        if (tag == (1 << 3 | 2)) {
            *key = x, *klen = n;
        } else if (tag == (2 << 3 | 2) && !*has) {
            if (!kvs_msg_value_peek(x, n, v))
                return 0;
            *has = 1;
        } else {
            return 0; /* a value twice (protobuf would merge them), or anything else */
        }
    }
    return *key != NULL;
}

/* The answers holding many values or pairs (HMGET; HSET and HDEL of
 * several fields; HGETALL, HKEYS, HVALS), read without decoding them: a
 * decoded value or pair costs some 100 to 200 bytes, where the answer may
 * hold millions. Returns 1 when it wrote the reply (*rc its result), 0
 * when the answer needs the full decoder (not 200, or anything unusual). */
static int answer_list(router_req_t *req, const uint8_t *payload, size_t len, kvs_buf_t *out,
                       int *rc)
{
    int rcmd = req->rcmd, has;
    int pairs = rcmd == RC_HGETALL || rcmd == RC_HKEYS || rcmd == RC_HVALS;
    const uint8_t *p = payload, *end = payload + len, *x, *key;
    uint64_t tag, st = 0;
    size_t n, klen, count = 0, empty = 0, start = out->len;
    kvs_value_peek_t v;
    if (!pairs && rcmd != RC_HMGET && rcmd != RC_HSET && rcmd != RC_HDEL)
        return 0;
    for (int pass = 0; pass < 2; pass++) { /* check all of it, then write */
        for (p = payload; p < end;) {
            if (kvs_msg_next_field(&p, end, &tag, &x, &n) != 0)
                return 0;
            if (tag == (1 << 3 | 0)) {
                if (kvs_varint_get(&x, x + n, &st) != 0)
                    return 0;
            } else if (tag == (3 << 3 | 2) && !pairs) {
                if (!kvs_msg_value_peek(x, n, &v))
                    return 0;
                count += pass == 0, empty += pass == 0 && v.kind == KVS__VALUE__KIND__NOT_SET;
                if (pass == 1 && rcmd == RC_HMGET)
                    bulk_peeked(out, &v, req->rresp3);
                if (pass == 1 && reply_too_large(req, out, start, rc))
                    return 1;
            } else if (tag == (4 << 3 | 2) && pairs) {
                if (!pair_peek(x, n, &key, &klen, &v, &has))
                    return 0;
                count += pass == 0;
                if (pass == 1 && rcmd != RC_HVALS)
                    kvs_redis_bulk(out, key, klen);
                if (pass == 1 && rcmd != RC_HKEYS)
                    has ? bulk_peeked(out, &v, req->rresp3) : kvs_redis_null(out, req->rresp3);
                if (pass == 1 && reply_too_large(req, out, start, rc))
                    return 1;
            } else if (tag != (2 << 3 | 2)) { /* the message is all else there may be */
                return 0;
            }
        }
        if (pass == 1)
            break;
        if (st != KVS_STATUS_OK)
            return 0;
        if (rcmd == RC_HSET || rcmd == RC_HDEL) {
            *rc = kvs_redis_integer(out, (int64_t)(rcmd == RC_HSET ? empty : count - empty));
            return 1;
        }
        if (rcmd == RC_HGETALL)
            kvs_redis_map(out, count, req->rresp3);
        else
            kvs_redis_array(out, count);
    }
    *rc = 0;
    return 1;
}

/* The reply of one kvs answer, as router_redis_answer. */
static int answer_one(router_redis_t *rs, router_req_t *req, const uint8_t *payload, size_t len,
                      kvs_buf_t *out)
{
    int fast_rc;
    if (answer_fast(req, payload, len, out, &fast_rc) ||
        answer_list(req, payload, len, out, &fast_rc))
        return fast_rc;
    kvs_arena_t *ar = &rs->r->reply_arena;
    Kvs__CommandResponse *a = kvs__command_response__unpack(&ar->pb, len, payload);
    int rc;
    if (a == NULL)
        rc = kvs_redis_error(out, "ERR internal error: an answer that is not a CommandResponse");
    else if (a->status == KVS_STATUS_OK)
        rc = answer_ok(rs, req, a, out);
    else if (a->status == KVS_STATUS_NOT_FOUND && (req->rcmd == RC_HGET || req->rcmd == RC_HSTRLEN))
        rc = missing_field(req, req->rcmd, out);
    else if (a->status == KVS_STATUS_UNAUTHENTICATED &&
             (req->rcmd == RC_AUTH || req->rcmd == RC_HELLO))
        rc = strncmp(a->message, "invalid user or token", 21) == 0
                 ? kvs_redis_error(out,
                                   "WRONGPASS invalid username-password pair or user is "
                                   "disabled.%s",
                                   a->message + 21)
                 : kvs_redis_error(out, "WRONGPASS %s", a->message);
    else if (a->status == KVS_STATUS_UNAUTHENTICATED)
        rc = kvs_redis_error(out, "NOAUTH %s", a->message);
    else if (a->status == KVS_STATUS_FORBIDDEN)
        rc = kvs_redis_error(out, "NOPERM %s", a->message);
    else if (req->rcmd == RC_HINCRBY || req->rcmd == RC_HINCRBYFLOAT)
        rc = a->status == KVS_STATUS_BAD_REQUEST ? incr_error(out, a->message)
                                                 : kvs_redis_error(out, "ERR %s", a->message);
    else /* the router's own words are a Redis client's already (req->redis) */
        rc = kvs_redis_error(out, "ERR %s", a->message);
    kvs_arena_reset(ar);
    return rc;
}

int router_redis_answer(router_redis_t *rs, router_req_t *req, const uint8_t *payload, size_t len,
                        kvs_buf_t *out)
{
    if (!req->rfold)
        return answer_one(rs, req, payload, len, out);
    kvs_buf_t *part = &rs->fold_tmp;
    part->len = 0;
    unsigned long failures = kvs_redis_reply_failures();
    int rc = answer_one(rs, req, payload, len, part);
    if (rc == 0 && kvs_redis_reply_failures() != failures)
        rc = -ENOMEM; /* a part's reply missing a piece: nothing folded (it is answered again) */
    if (rc == 0)
        rc = router_redis_fold(rs, req, part->data, part->len, out);
    return rc;
}

/* ---- several keys ------------------------------------------------------------------- */

/* The count of an integer reply ":N\r\n", or -1 for any other reply. */
static int64_t reply_count(const uint8_t *p, size_t len)
{
    int64_t n = 0;
    if (len < 4 || p[0] != ':' || p[len - 2] != '\r' || p[len - 1] != '\n')
        return -1;
    for (size_t i = 1; i < len - 2; i++) {
        if (p[i] < '0' || p[i] > '9' || n > INT64_MAX / 10 - 9)
            return -1;
        n = n * 10 + (p[i] - '0');
    }
    return n;
}

/* Keeps `reply` (an error, or anything but a count) as the command's
 * reply, naming its key: the first failure is what a command of several
 * keys answers. Returns 0 or -ENOMEM (nothing kept). */
static int fold_error(router_redis_t *rs, const router_req_t *req, const uint8_t *reply, size_t len)
{
    size_t end = len >= 3 && reply[0] == '-' ? len - 2 : 0; /* its text, without \r\n */
    char tail[160];
    int t = snprintf(
        tail, sizeof(tail), " (key %u of the command%s)\r\n", rs->fold_parts + 1,
        req->rcmd == RC_DEL ? "; each key is deleted on its own: the others' went ahead" : "");
    static const char none[] = "-ERR internal error: a reply that is neither a count nor an error";
    if ((end > 0 ? kvs_buf_append(&rs->fold_err, reply, end)
                 : kvs_buf_append(&rs->fold_err, none, sizeof(none) - 1)) != 0 ||
        kvs_buf_append(&rs->fold_err, tail, (size_t)t) != 0) {
        rs->fold_err.len = 0;
        return -ENOMEM;
    }
    return 0;
}

/* Folds each part's reply into the command's (rs->fold_*); the last part
 * writes it. State changes only once nothing can fail, so a part whose
 * reply could not be written (out of memory) is folded once when it is
 * answered again. */
int router_redis_fold(router_redis_t *rs, router_req_t *req, const uint8_t *reply, size_t len,
                      kvs_buf_t *out)
{
    int64_t n = reply_count(reply, len);
    if (n < 0 && rs->fold_err.len == 0 && fold_error(rs, req, reply, len) != 0)
        return -ENOMEM;
    if (req->rfold != ROUTER_FOLD_LAST) {
        rs->fold_n += n > 0 ? n : 0;
        rs->fold_parts++;
        return 0;
    }
    size_t start = out->len;
    unsigned long failures = kvs_redis_reply_failures();
    int rc = rs->fold_err.len > 0 ? kvs_buf_append(out, rs->fold_err.data, rs->fold_err.len)
                                  : kvs_redis_integer(out, rs->fold_n + n);
    if (rc != 0 || kvs_redis_reply_failures() != failures) {
        out->len = start;
        return -ENOMEM; /* kept: the first error stays the first when answered again */
    }
    rs->fold_n = 0;
    rs->fold_parts = 0;
    rs->fold_err.len = 0;
    if (rs->fold_err.cap > 64 * 1024)
        kvs_buf_free(&rs->fold_err);
    return 0;
}

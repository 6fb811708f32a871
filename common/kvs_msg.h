/*
 * kvs_msg: protobuf glue shared by every process that speaks kvs.
 *
 * - an arena allocator for protobuf-c, so decoding a request costs no
 *   malloc on the hot path (reset once per batch of requests);
 * - request validation with the exact status and message the user sees,
 *   shared by the worker and the router so bad input gets the same answer
 *   wherever it enters;
 * - frame encoding straight into an output buffer (header + packed message).
 */
#ifndef KVS_MSG_H
#define KVS_MSG_H

#include "kvs.pb-c.h"
#include "kvs_buf.h"

#include <stddef.h>
#include <stdint.h>

#define KVS_MAX_TABLE 200                 /* bytes in a table name */
#define KVS_MAX_KEY 511                   /* bytes in a key: LMDB's compiled-in key limit */
#define KVS_CURSOR_MAX (KVS_MAX_KEY + 16) /* bytes in an Hscan cursor (a key, and a little) */

enum {
    KVS_STATUS_OK = 200,
    KVS_STATUS_PARTIAL = 207, /* a split write applied on some shards only (router) */
    KVS_STATUS_BAD_REQUEST = 400,
    KVS_STATUS_UNAUTHENTICATED = 401,
    KVS_STATUS_FORBIDDEN = 403,
    KVS_STATUS_NOT_FOUND = 404,
    KVS_STATUS_TOO_LARGE = 413,
    KVS_STATUS_INTERNAL = 500,
    KVS_STATUS_UNAVAILABLE = 503,
    KVS_STATUS_NO_SPACE = 507,
};

/* ---- arena allocator ------------------------------------------------- */

typedef struct kvs_arena_chunk_s kvs_arena_chunk_t;

typedef struct kvs_arena_s {
    ProtobufCAllocator pb; /* hand &arena->pb to protobuf-c */
    kvs_arena_chunk_t *head;
    size_t used; /* bytes used in head */
    size_t big;  /* bytes in chunks beyond the first, since reset */
} kvs_arena_t;

/* Initializes an arena; no memory is taken until the first allocation. */
void kvs_arena_init(kvs_arena_t *a);

/* Releases everything allocated since the last reset, keeping one chunk for
 * reuse. Every pointer the arena handed out becomes invalid. */
void kvs_arena_reset(kvs_arena_t *a);

/* Frees all memory. */
void kvs_arena_close(kvs_arena_t *a);

/* Allocates `n` bytes aligned for any type, or returns NULL. */
void *kvs_arena_alloc(kvs_arena_t *a, size_t n);

/* ---- requests -------------------------------------------------------- */

/* Decoding a request may take at most KVS_DECODE_FACTOR times its size
 * plus KVS_DECODE_SLACK bytes (kvs_msg_decode_budget). protobuf-c spends
 * 64 to 96 bytes on each element of a repeated field (a 32-byte record
 * per field in slabs that double, the element, its bytes), so a request
 * of tiny keys or pairs (2 or 3 bytes each on the wire) would otherwise
 * cost 20 to 50 times what the client sent. Any request whose keys are
 * distinct fits: keys of 3 bytes or more cost less than 20 times their
 * bytes on the wire, and the 65,536 keys of 2 bytes or fewer fit within
 * the slack. One refused repeats tiny keys, or is not valid anyway (empty
 * keys, floods of unknown fields); README, "Bounds". */
#define KVS_DECODE_FACTOR 20
#define KVS_DECODE_SLACK (2 * 1024 * 1024)

/* The most memory decoding a request of `len` bytes may take. */
size_t kvs_msg_decode_budget(size_t len);

/* Decodes a CommandRequest with memory from `arena` (NULL = malloc; then
 * free with kvs__command_request__free_unpacked), taking no more than
 * kvs_msg_decode_budget(len) bytes. With an arena, the keys and values of
 * an Hmget, Hmset, Hmdel or Hmexist are left in p, not copied (16 bytes a
 * key, 104 a pair, where protobuf-c spends 80 and 180 and copies them):
 * such a request is valid only as long as p is. Returns NULL when the bytes are not a
 * CommandRequest (*status = 400), would take more memory than that
 * (*status = 413), or memory ran out (*status = 500: the request may be
 * fine; kvs_msg_decode_refusal says "server out of memory"); `status` may
 * be NULL. What protobuf-c allocated before
 * it failed stays in the arena until its reset. */
Kvs__CommandRequest *kvs_msg_decode_request(kvs_arena_t *arena, const uint8_t *p, size_t len,
                                            uint32_t *status);

/* Decodes a CommandResponse as kvs_msg_decode_request decodes a request:
 * within kvs_msg_decode_budget(len) bytes, so that a peer's answer of tiny
 * repeated elements (an empty pair is 2 bytes on the wire, 90 decoded)
 * cannot make its reader spend 45 times what it sent. Memory from `arena`
 * (NULL = malloc; then free with kvs__command_response__free_unpacked(r,
 * NULL)). Returns NULL when the bytes are not a CommandResponse (*status
 * = 400), would take more memory than that (413), or memory ran out
 * (500); `status` may be NULL. */
Kvs__CommandResponse *kvs_msg_decode_response(kvs_arena_t *arena, const uint8_t *p, size_t len,
                                              uint32_t *status);

/* When the request at *p (*len bytes) gives its command several times in
 * a row, protobuf reads it as one command holding them all merged (a
 * client may concatenate encoded requests); protobuf-c would keep the last
 * alone. Commands before that last run are dropped (protobuf-c would
 * decode them in full first), and a singular message field given more than
 * once at any depth is joined into one, as protobuf reads it (protobuf-c
 * merges decoded copies, losing a later copy's empty bytes). This writes
 * the bytes so rewritten in `arena` and points *p and *len at them;
 * otherwise it changes nothing. kvs_msg_decode_request does it
 * itself; a router that forwards a request's bytes does it first, so that
 * a worker of any version reads the request the router routed. Returns 0,
 * or -ENOMEM (nothing changed). A command a later one overrides, or a copy
 * joined to another, is decoded by nobody, yet it is part of the request:
 * servers check the bytes as sent too (kvs_msg_check_wire), once the
 * merged request passed its checks. */
int kvs_msg_merge_request(kvs_arena_t *arena, const uint8_t **p, size_t *len);

/* kvs_msg_decode_request of bytes kvs_msg_merge_request already merged
 * (a router that forwards them): the same, without looking for a repeated
 * command again. A request of KVS_MSG_WIRE_FIRST bytes or more holding
 * more than KVS_MSG_UNKNOWN_MOST fields protobuf-c would keep as unknown
 * is refused (400) before it is decoded. */
#define KVS_MSG_WIRE_FIRST (64u * 1024u)
#define KVS_MSG_UNKNOWN_MOST 1000u
Kvs__CommandRequest *kvs_msg_decode_merged(kvs_arena_t *arena, const uint8_t *p, size_t len,
                                           uint32_t *status);

/* Writes to msg[0..mlen) what the request p[0..len) that
 * kvs_msg_decode_request refused with `status` is told (for 400, the field
 * kvs_msg_check_wire finds at fault, when it finds one and p is not NULL),
 * and returns `status`. */
uint32_t kvs_msg_decode_refusal(uint32_t status, const uint8_t *p, size_t len, char *msg,
                                size_t mlen);

/* Counts, without decoding, the keys (Hmset: pairs) the encoded request
 * p[0..len) names in its multi-key command: the key or pair entries of the
 * last run of command fields, the one the decoder keeps (members before it
 * are dropped), when that command is Hmget, Hmset, Hmdel or Hmexist; *cmd
 * is that command (NOT_SET when none). Exact for bytes
 * kvs_msg_merge_request merged (count keys there: a run of several members
 * is decoded as their bodies joined, where a field cut short at the end of
 * one may hide keys of the next from a count member by member). Cost: one
 * pass over the bytes, no memory; bytes the decoder refuses count what
 * could be read. */
size_t kvs_msg_count_keys(const uint8_t *p, size_t len, Kvs__CommandRequest__CommandCase *cmd);

/* Refuses a request naming more than `max_keys` keys (limits.max_keys; 0
 * = no limit): returns 200, or 413 with msg saying the command, the count and the
 * limit, and, when `refused` is not NULL, the command, the count (up to
 * UINT32_MAX) and the table it names (pointing into p; NULL when it names
 * none kvs would accept) in it, for the hooks and metrics. Call before
 * decoding: the count costs no memory, a decode of many keys does. */
typedef struct kvs_msg_refused_s {
    Kvs__CommandRequest__CommandCase cmd;
    uint32_t keys;
    const uint8_t *table;
    size_t table_len;
} kvs_msg_refused_t;
uint32_t kvs_msg_check_keys(const uint8_t *p, size_t len, uint32_t max_keys,
                            kvs_msg_refused_t *refused, char *msg, size_t mlen);

/* Checks the encoded request `p` field by field against the message
 * descriptors, for what protobuf-c would pass on unchecked or read other
 * than Google's protobuf does: every field at every depth is one its
 * message declares (protobuf-c drops the unknown fields of a sub-message
 * that a later copy merges into), of the wire type its type is sent as
 * (protobuf reads any other as an unknown field; protobuf-c reads a bool
 * of any wire type, as true), varints within 64 bits, tags and lengths
 * within 5 bytes; table names are UTF-8 without NUL bytes (protobuf-c
 * would cut "a\0b" to "a", aliasing another table); Value.string_value is
 * UTF-8 and may hold U+0000. Returns 200, or 400 with the field named in
 * msg. Call before executing any request decoded by protobuf-c; on bytes
 * it refused, it says why in words protobuf-c does not. */
uint32_t kvs_msg_check_wire(const uint8_t *p, size_t len, char *msg, size_t mlen);

/* Both checks of a decoded request `req` whose frame is p[0..len): what
 * servers run before executing it. kvs_msg_validate first (cheap); the
 * wire walk when it passes, and also when it refused with 400 and the
 * wire holds a string cut at a NUL byte, which the decoded request hides
 * (a table name of one NUL byte decodes as empty): that message replaces
 * validate's. Returns 200, or the status with the message in msg[0..mlen). */
uint32_t kvs_msg_check_request(const Kvs__CommandRequest *req, const uint8_t *p, size_t len,
                               char *msg, size_t mlen);

/* Whether the encoded CommandRequest `p` carries a write (kvs_msg_is_write)
 * among its top-level fields, found from its wire bytes without decoding.
 * Bytes that do not parse as far as the write are taken for no write (the
 * request is refused when decoded, and changes nothing). */
int kvs_msg_frame_writes(const uint8_t *p, size_t len);

/* What kvs_msg_peek found in a single-key request. */
typedef struct kvs_peek_s {
    Kvs__CommandRequest__CommandCase cmd; /* Hget, Hset, Hdel or Hexist */
    const uint8_t *table;                 /* not NUL-terminated */
    size_t table_len;
    const uint8_t *key; /* Hset: Hset.pair.key */
    size_t key_len;
    const uint8_t *value; /* Hset: the encoded Hset.pair.value, as stored */
    size_t value_len;
    int value_lengths; /* Hset, Hdel: CommandRequest.value_lengths */
    int presence_only; /* Hset, Hdel: CommandRequest.presence_only */
} kvs_peek_t;

/* The router's fast path: finds the table and key of an Hget, Hset, Hdel
 * or Hexist request straight from its wire bytes, without decoding. Returns
 * 1 only when the request is certainly valid (every check kvs_msg_validate
 * and kvs_msg_check_wire make passes); 0 when anything is unusual (an
 * error, another command, unknown or repeated fields, any request-level
 * option but an Hset's or Hdel's value_lengths and presence_only after the
 * command), and the caller must decode and validate in full, which also
 * writes the right message. Whoever answers a peeked Hset or Hdel honours
 * both (kvs_msg_values_mode). */
int kvs_msg_peek(const uint8_t *p, size_t len, kvs_peek_t *out);

/* Appends the encoded CommandRequest of a single-key command (`cmd`: Hget,
 * Hdel or Hexist) on table t[0..tlen) and key k[0..klen), without building
 * protobuf-c messages: the bytes protobuf-c would pack. Returns 0 or
 * -ENOMEM. (Validation happens where the request is routed.) */
int kvs_msg_encode_key_request(kvs_buf_t *out, Kvs__CommandRequest__CommandCase cmd, const void *t,
                               size_t tlen, const void *k, size_t klen);

/* What kvs_msg_answer_peek found in a CommandResponse. */
typedef struct kvs_answer_peek_s {
    uint32_t status;
    const uint8_t *message; /* not NUL-terminated; NULL when absent */
    size_t message_len;
    size_t n_values;
    const uint8_t *value; /* the first of `values`: an encoded Value */
    size_t value_len;
} kvs_answer_peek_t;

/* Reads status, message and the values of an encoded CommandResponse
 * without decoding it: 1 when it holds nothing else (no pairs, no cursor,
 * no unknown field) and is well-formed, else 0 (decode it in full). */
int kvs_msg_answer_peek(const uint8_t *p, size_t len, kvs_answer_peek_t *out);

/* What kvs_msg_value_peek found in an encoded Value. */
typedef struct kvs_value_peek_s {
    Kvs__Value__KindCase kind; /* KVS__VALUE__KIND__NOT_SET for an empty Value */
    const uint8_t *bytes;      /* string_value / binary_value */
    size_t len;
    int64_t integer;
    double real;
    int boolean;
} kvs_value_peek_t;

/* Reads an encoded Value (one member, or none) without decoding it; a
 * bool_value of any wire type protobuf-c reads is read as it reads it.
 * Returns 1, or 0 when it is anything else (decode it in full). */
int kvs_msg_value_peek(const uint8_t *p, size_t len, kvs_value_peek_t *out);

/* A value as Redis clients see it (HGET, HSTRLEN): the bytes of a string
 * or binary value, a number in decimal (a float as
 * kvs_redis_format_double writes it), a bool as "1" or "0". Sets *text
 * (into the value, or into `num` of KVS_REDIS_DOUBLE_MAX bytes) and
 * returns its length; an empty Value is "" (check `kind` for it). */
size_t kvs_msg_value_text(const kvs_value_peek_t *v, char *num, const uint8_t **text);

/* Reads the field at *p (before `end`) of an encoded message: its tag,
 * and its value v[0..n) (a varint's or fixed64's bytes, a length-delimited
 * field's contents), moving *p past it. Returns 0, or -1 when the bytes
 * are not a varint, 64-bit or length-delimited field. */
int kvs_msg_next_field(const uint8_t **p, const uint8_t *end, uint64_t *tag, const uint8_t **v,
                       size_t *n);

/* Moves *p (before `end`) past one field of an encoded message, of any
 * wire type protobuf-c reads (a 32-bit one too, which kvs_msg_next_field
 * refuses). Returns 0, or -1 when the bytes are no such field. */
int kvs_msg_step_field(const uint8_t **p, const uint8_t *end);

/* Finds the length-delimited top-level field `field` of the encoded
 * message p[0..len) without decoding it (the last occurrence, as protobuf
 * reads it). Returns 1 with *v and *n set, 0 when absent, -1 when the bytes
 * are not a well-formed message of varint, 64-bit and length-delimited
 * fields (what CommandResponse holds). */
int kvs_msg_find_bytes(const uint8_t *p, size_t len, uint32_t field, const uint8_t **v, size_t *n);

/* Checks a decoded request before it is executed: a command is set and
 * known, no unknown fields, table and keys are valid, values are present.
 * Returns 200 when valid; otherwise the status (400) with a message saying
 * what to change written into msg[0..len). */
uint32_t kvs_msg_validate(const Kvs__CommandRequest *req, char *msg, size_t len);

/* What is wrong with a table name of n bytes at p: one rule for every
 * door that names a table (protobuf requests, the RESP listener's keys,
 * kvs-cli keyslot), each of which words the error in its own terms. */
typedef enum {
    KVS_TABLE_OK,
    KVS_TABLE_EMPTY,
    KVS_TABLE_LONG,     /* more than KVS_MAX_TABLE bytes */
    KVS_TABLE_NUL,      /* a NUL byte: a C string of it would name another table */
    KVS_TABLE_NOT_UTF8, /* a name is text (a protobuf string field) */
    KVS_TABLE_RESERVED, /* starts with "__": kvs's own tables */
} kvs_table_fault_t;

kvs_table_fault_t kvs_table_check(const void *p, size_t n);

/* True when p[0..n) is well-formed UTF-8 (no overlongs, no surrogates, at
 * most U+10FFFF): what protobuf runtimes demand of string fields. */
int kvs_utf8_valid(const void *p, size_t n);

/* The longest prefix of text[0..n) that does not end inside a UTF-8
 * character (a cut of a longer text; `n` bytes are readable): n, or up to
 * 3 bytes less. */
size_t kvs_utf8_cut(const char *text, size_t n);

/* Bytes of the printable character at s[0..n): 1 for printable ASCII, 2-4
 * for a well-formed UTF-8 character that is not a C1 control
 * (U+0080-U+009F) nor an invisible format character (bidi controls such as
 * U+202E, the zero-width space, U+2028/U+2029, the BOM); 0 for anything a
 * terminal or a log must not get raw (a control character, DEL, a byte
 * that is not UTF-8, those). */
size_t kvs_text_printable(const uint8_t *s, size_t n);

/* Writes p[0..n) into out[0..cap) as text fit for a message (a key in a
 * 404, say): printable ASCII and valid UTF-8 stay as they are, `"` and `\`
 * are escaped, any other byte (control characters, invalid UTF-8) becomes
 * \xHH. Text that does not fit ends with "..." after a whole character.
 * Always NUL-terminated and valid UTF-8; cap must be at least 4. Returns
 * out. */
const char *kvs_msg_quote(char *out, size_t cap, const void *p, size_t n);

/* The command's name as clients know it ("Hget", ...), or "none". */
const char *kvs_msg_command_name(Kvs__CommandRequest__CommandCase c);

/* The table a request names, or NULL (Ping, Info, Auth, no command). */
const char *kvs_msg_request_table(const Kvs__CommandRequest *req);

/* That table's name as `payload` (the bytes `req` was decoded from)
 * sends it, with its length in *n: past a NUL byte in it, where the
 * decoded name's strlen stops (a refused request's name, for the hooks
 * and the slow log). Points into payload; the decoded name, with strlen,
 * when the bytes cannot say; NULL (and 0) when the request names none. */
const char *kvs_msg_request_table_sent(const Kvs__CommandRequest *req, const uint8_t *payload,
                                       size_t len, size_t *n);

/* How many keys a request names: 1 for the single-key commands, the
 * length of the key or pair list for the multi-key ones, 0 otherwise. */
uint32_t kvs_msg_request_keys(const Kvs__CommandRequest *req);

/* True for the commands that write (Hset Hmset Hdel Hmdel Hincr Hclear):
 * the one list, for routers and workers alike (inline: the hot path asks). */
static inline int kvs_msg_is_write(Kvs__CommandRequest__CommandCase c)
{
    return c == KVS__COMMAND_REQUEST__COMMAND_HSET || c == KVS__COMMAND_REQUEST__COMMAND_HDEL ||
           c == KVS__COMMAND_REQUEST__COMMAND_HMSET || c == KVS__COMMAND_REQUEST__COMMAND_HMDEL ||
           c == KVS__COMMAND_REQUEST__COMMAND_HINCR || c == KVS__COMMAND_REQUEST__COMMAND_HCLEAR;
}

/* True for the writes whose answer tells of what was stored: the values
 * Hset Hmset Hdel Hmdel replace, the count of keys Hclear removed. A
 * user without `read` on their table is answered only whether there was
 * any (CommandRequest.presence_only). */
static inline int kvs_msg_shows_stored(Kvs__CommandRequest__CommandCase c)
{
    return c == KVS__COMMAND_REQUEST__COMMAND_HSET || c == KVS__COMMAND_REQUEST__COMMAND_HDEL ||
           c == KVS__COMMAND_REQUEST__COMMAND_HMSET || c == KVS__COMMAND_REQUEST__COMMAND_HMDEL ||
           c == KVS__COMMAND_REQUEST__COMMAND_HCLEAR;
}

/* How an answer shows stored values (kvs_resp_t.value_lengths): whole;
 * as the length of their text (CommandRequest.value_lengths); or, for
 * the writes of kvs_msg_shows_stored with CommandRequest.presence_only,
 * only whether there was one (a length of 0; Hclear: 1 when it removed
 * any key, else 0). */
enum { KVS_VALUES_WHOLE = 0, KVS_VALUES_LENGTHS = 1, KVS_VALUES_PRESENCE = 2 };

static inline int kvs_msg_values_mode(Kvs__CommandRequest__CommandCase c, int value_lengths,
                                      int presence_only)
{
    return presence_only && kvs_msg_shows_stored(c) ? KVS_VALUES_PRESENCE
           : value_lengths                          ? KVS_VALUES_LENGTHS
                                                    : KVS_VALUES_WHOLE;
}

/* The status of an encoded CommandResponse, read from its first field
 * without decoding (encoders write fields in number order, and status is
 * field 1); 0 when the answer does not start with one. */
uint32_t kvs_msg_answer_status(const uint8_t *p, size_t len);

/* What an answer that replaces the answer to a write must keep saying of
 * whether the write happened (see kvs_msg_replaced_outcome). */
typedef struct kvs_answer_outcome_s {
    int unknown;             /* set CommandResponse.outcome_unknown */
    const uint8_t *position; /* the replaced answer's position; NULL when it had none */
    size_t position_len;
} kvs_answer_outcome_t;

/* For a hook that replaces the encoded CommandResponse p[0..len), the
 * answer to a write, with an error of its own: what the replacement must
 * keep so that the client is not told that nothing was written (an error
 * answer to a write without outcome_unknown or a position says so). The
 * position is kept as it was (Kafka has those records: they will be
 * applied), pointing into p. outcome_unknown is set when the replaced
 * answer set it, when it said the write was applied (200, 207) and no
 * position names what was written (a table bound to no topic), and when
 * it cannot be read. An error answer without either stays without. */
void kvs_msg_replaced_outcome(const uint8_t *p, size_t len, kvs_answer_outcome_t *out);

/* kvs_msg_replaced_outcome for a replacement built after p[0..len) is
 * overwritten: the position is copied to `pos` (emptied first). Returns
 * the outcome_unknown the replacement must carry; when the position cannot
 * be copied for lack of memory, `pos` stays empty and the answer is 1
 * (without its position, all that is known is that the outcome is not). */
int kvs_msg_replaced_keep(const uint8_t *p, size_t len, kvs_buf_t *pos);

/* ---- values ----------------------------------------------------------- */

/* Decodes a stored Value (its encoded bytes) into *out using `arena` for
 * any memory (string/bytes point into the arena), within the decode budget
 * (kvs_msg_decode_budget). Returns 0, KVS_EPROTO, or -ENOMEM when memory
 * ran out (the value may be fine). */
int kvs_msg_decode_value(kvs_arena_t *arena, const uint8_t *p, size_t len, Kvs__Value **out);

/* 1 when p[0..len) is an encoded Value a client could read back: it
 * decodes (within the decode budget), has a kind set, no unknown fields,
 * and its strings are UTF-8; 0 when it is not; -ENOMEM when memory ran out
 * before that could be told (the value may be fine). `arena` is scratch
 * (reset before returning). */
int kvs_msg_value_valid(kvs_arena_t *arena, const uint8_t *p, size_t len);

/* ---- answer sizes ------------------------------------------------------ */

/* An upper bound of the payload of an answer holding `n` Values whose
 * encoded bytes sum to `bytes` (plus a status): each Value costs a tag and
 * a length prefix (at most 6 bytes; 8 are counted) and the status less
 * than 64. A worker refuses an Hmset or Hmdel whose bound passes its limit
 * before it writes anything; the router splits answer budgets with the same
 * arithmetic, so the two agree. */
size_t kvs_msg_answer_bound(size_t n, size_t bytes);

/* The most bytes a key plus its encoded Value may take in a store whose
 * answers are at most `max_frame` bytes: an answer holding the pair (an
 * Hget, an Hscan page with a cursor of up to a key) must fit, so that every
 * stored pair can be read back. max_frame - KVS_MAX_KEY - 64 (0 when
 * max_frame is smaller). */
size_t kvs_msg_pair_max(size_t max_frame);

/* The 413 a write gets for a pair larger than kvs_msg_pair_max, and its
 * printf arguments (a key of klen bytes, a value of vlen as stored). */
#define KVS_MSG_PAIR_TOO_LARGE                                                                     \
    "value is too large: key and value take %zu bytes (the value %zu as stored), and an "          \
    "answer holding them must fit in limits.max_frame (%zu bytes), so a key and its value "        \
    "may take at most %zu bytes"
#define KVS_MSG_PAIR_TOO_LARGE_ARGS(max_frame, klen, vlen)                                         \
    (size_t)(klen) + (size_t)(vlen), (size_t)(vlen), (size_t)(max_frame),                          \
        kvs_msg_pair_max(max_frame)

/* The refusal of Hclear on a bound table (router and worker alike);
 * arguments: the table, its topic. */
#define KVS_MSG_HCLEAR_BOUND                                                                       \
    "Hclear: table \"%s\" is bound to Kafka topic %s, whose records are its keys, so it is "       \
    "not emptied here; delete its keys with Hdel or Hmdel (they produce tombstones), or "          \
    "Rebuild it from the topic; nothing was written"
/* ... and of the Redis door's DEL or UNLINK of such a key (its fields). */
#define KVS_MSG_DEL_BOUND                                                                          \
    "key \"%s\" is bound to Kafka topic %s, whose records are its fields, so kvs does not "        \
    "delete it whole; delete its fields with HDEL (they produce tombstones); nothing was deleted"

/* A write's largest pair as a store holds it: its key's bytes (*klen) and
 * its value's encoded size (*vlen), of the decoded request `req` or, when
 * that is NULL, of the peeked request `pk`; 0s for a write that carries no
 * value. For refusals that answer an oversized pair's 413 before their
 * own (the same request would get it at any other time). */
void kvs_msg_largest_pair(const Kvs__CommandRequest *req, const kvs_peek_t *pk, size_t *klen,
                          size_t *vlen);

/* ---- responses -------------------------------------------------------- */

/* Appends one frame holding `m` (header + packed bytes) to `out`. Returns 0,
 * -ENOMEM, or KVS_ETOOBIG when the packed size exceeds `max_frame`. */
int kvs_msg_append(kvs_buf_t *out, const ProtobufCMessage *m, size_t max_frame);

/* Appends a response frame with just a status and a printf-style message
 * (at most 1,023 bytes of it: a longer one is cut at a whole UTF-8
 * character). */
int kvs_msg_append_status(kvs_buf_t *out, uint32_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif

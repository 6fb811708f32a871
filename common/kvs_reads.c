/*
 * kvs_reads: the read commands over a snapshot (see kvs_reads.h).
 *
 * Whole-table reads walk the table in key order (kvs_lmdb_scan semantics:
 * from the first key >= a cursor). The first pair of a page is always
 * taken, however large, so an Hscan walk always makes progress; a pair no
 * answer can hold (stored under a larger max_frame) stops the walk with a
 * 413 that names its key, rather than send what cannot be read back.
 * Hgetall stops at the first pair past max_frame and answers 413 with a
 * hint to page with Hscan. An Hscan page stops at count pairs or where the
 * next pair would pass max_frame less room for the cursor; its cursor is
 * the key of the first pair not returned (kvs_schema).
 *
 * Threads: none of its own; callers keep a source to one thread.
 */
#include "kvs_reads.h"
#include "kvs_err.h"
#include "kvs_redis.h"

#include <stdio.h>
#include <string.h>

int kvs_reads_is_read(Kvs__CommandRequest__CommandCase c)
{
    return c == KVS__COMMAND_REQUEST__COMMAND_HGET || c == KVS__COMMAND_REQUEST__COMMAND_HEXIST ||
           c == KVS__COMMAND_REQUEST__COMMAND_HMGET || c == KVS__COMMAND_REQUEST__COMMAND_HMEXIST ||
           c == KVS__COMMAND_REQUEST__COMMAND_HGETALL || c == KVS__COMMAND_REQUEST__COMMAND_HSCAN ||
           c == KVS__COMMAND_REQUEST__COMMAND_HLEN;
}

/* ---- 404 and 413 ------------------------------------------------------------ */

/* Hget's 404, naming table and key (as the original protocol does); a key
 * that is not printable text is shown escaped. */
static void not_found(kvs_resp_t *r, const char *table, const void *key, size_t klen)
{
    char shown[256];
    const char *parts[] = {"key \"", kvs_msg_quote(shown, sizeof(shown), key, klen),
                           "\" not found in table \"", table, "\""};
    kvs_resp_status(r, KVS_STATUS_NOT_FOUND);
    kvs_resp_message_parts(r, parts, sizeof(parts) / sizeof(parts[0])); /* no printf: often */
}

void kvs_reads_too_large(kvs_resp_t *r, size_t max_frame, const char *cmd, const char *hint)
{
    kvs_resp_abort(r);
    kvs_resp_begin(r, r->out);
    kvs_resp_status(r, KVS_STATUS_TOO_LARGE);
    kvs_resp_message(r, "%s answer would exceed limits.max_frame (%zu bytes); %s", cmd, max_frame,
                     hint);
}

void kvs_reads_value_too_large_text(char *out, size_t cap, size_t max_frame, const char *cmd,
                                    const ProtobufCBinaryData *key, size_t need, int write)
{
    char shown[128];
    snprintf(out, cap,
             "%s answer would take %zu bytes for the %s value of key \"%s\", more than "
             "limits.max_frame (%zu bytes) allows (it was stored under a larger limit); "
             "%sraise limits.max_frame to at least %zu bytes to %s it",
             cmd, need, write ? "previous" : "stored",
             kvs_msg_quote(shown, sizeof(shown), key->data, key->len), max_frame,
             write ? "nothing was written; " : "", need, write ? "change" : "read");
}

void kvs_reads_value_too_large(kvs_resp_t *r, size_t max_frame, const char *cmd,
                               const ProtobufCBinaryData *key, size_t need, int write)
{
    char text[600];
    kvs_reads_value_too_large_text(text, sizeof(text), max_frame, cmd, key, need, write);
    kvs_resp_abort(r);
    kvs_resp_begin(r, r->out);
    kvs_resp_status(r, KVS_STATUS_TOO_LARGE);
    kvs_resp_message(r, "%s", text);
}

/* An answer's room for the pairs or values of a multi-key answer: the
 * bound kvs_msg_answer_bound gives n booleans (Hmexist) against max_frame. */
static int bools_too_large(const kvs_reads_src_t *src, kvs_resp_t *r, size_t n)
{
    if (kvs_msg_answer_bound(n, 0) <= src->max_frame)
        return 0;
    kvs_reads_too_large(r, src->max_frame, "Hmexist",
                        "nothing was written; send fewer keys per request (or raise "
                        "limits.max_frame)");
    return 1;
}

/* ---- keys ----------------------------------------------------------------------- */

/* Peeks a stored Value. One stored from a Kafka record's payload as it
 * came (format: value) may hold several members one after another, which
 * a decoder reads as the last (protobuf's rule for a oneof; ingestion
 * checked that it decodes, with no unknown field): that one is peeked. */
static int stored_peek(const uint8_t *p, size_t len, kvs_value_peek_t *v)
{
    const uint8_t *end = p + len, *last = NULL;
    if (kvs_msg_value_peek(p, len, v))
        return 1;
    for (const uint8_t *q = p; q < end;) {
        last = q;
        if (kvs_msg_step_field(&q, end) != 0)
            return 0;
    }
    return last != NULL && kvs_msg_value_peek(last, (size_t)(end - last), v);
}

size_t kvs_reads_stored_length(int mode, const void *enc, size_t len, uint8_t buf[16],
                               const void **out)
{
    kvs_value_peek_t v;
    char num[KVS_REDIS_DOUBLE_MAX];
    const uint8_t *text;
    *out = enc;
    if (len == 0)
        return 0;                      /* none: an empty Value */
    if (mode == KVS_VALUES_PRESENCE) { /* there is one: nothing of it is shown */
        *out = buf;
        return kvs_value_encode_int(buf, 0);
    }
    /* A stored value always peeks (it was checked); an empty one stays empty. */
    if (!stored_peek(enc, len, &v) || v.kind == KVS__VALUE__KIND__NOT_SET)
        return len;
    size_t n = kvs_msg_value_text(&v, num, &text);
    *out = buf;
    return kvs_value_encode_int(buf, (int64_t)n);
}

void kvs_reads_stored(kvs_resp_t *r, const void *enc, size_t len)
{
    uint8_t buf[16];
    const void *p = enc;
    if (r->value_lengths)
        len = kvs_reads_stored_length(r->value_lengths, enc, len, buf, &p);
    kvs_resp_value(r, p, len);
}

size_t kvs_reads_stored_bound(int value_lengths, size_t len)
{
    if (value_lengths == KVS_VALUES_PRESENCE) /* what it shows: whether there is one */
        return len > 0 ? KVS_READS_PRESENCE_SIZE : 0;
    return value_lengths && len > KVS_READS_LENGTH_MAX ? KVS_READS_LENGTH_MAX : len;
}

size_t kvs_reads_write_bound(int value_lengths, size_t n, size_t bytes)
{
    if (value_lengths == KVS_VALUES_PRESENCE)
        bytes = n * KVS_READS_PRESENCE_SIZE; /* whether each key is there or not */
    else if (value_lengths && bytes > n * KVS_READS_LENGTH_MAX)
        bytes = n * KVS_READS_LENGTH_MAX;
    return kvs_msg_answer_bound(n, bytes);
}

int kvs_reads_key(const kvs_reads_src_t *src, Kvs__CommandRequest__CommandCase cmd,
                  const char *table, const void *key, size_t klen, kvs_resp_t *r)
{
    kvs_slice_t v;
    int rc = src->get(src->arg, table, key, klen, &v);
    if (rc != 0 && rc != KVS_ENOTFOUND)
        return rc;
    if (cmd == KVS__COMMAND_REQUEST__COMMAND_HEXIST) {
        kvs_resp_status(r, KVS_STATUS_OK);
        kvs_resp_bool(r, rc == 0);
    } else if (rc == KVS_ENOTFOUND) {
        not_found(r, table, key, klen);
    } else {
        kvs_resp_status(r, KVS_STATUS_OK);
        kvs_reads_stored(r, v.p, v.len);
    }
    return 0;
}

static int hmget(const kvs_reads_src_t *src, const Kvs__Hmget *m, kvs_resp_t *r)
{
    kvs_resp_status(r, KVS_STATUS_OK);
    for (size_t i = 0; i < m->n_keys; i++) {
        kvs_slice_t v;
        size_t before = kvs_resp_size(r);
        int rc = src->get(src->arg, m->table, m->keys[i].data, m->keys[i].len, &v);
        if (rc != 0 && rc != KVS_ENOTFOUND)
            return rc;
        kvs_reads_stored(r, rc == 0 ? v.p : NULL, rc == 0 ? v.len : 0);
        size_t now = kvs_resp_size(r);
        if (now <= src->max_frame)
            continue;
        if (now - before + 3 > src->max_frame) { /* this value alone: no fewer keys will do */
            kvs_reads_value_too_large(r, src->max_frame, "Hmget", &m->keys[i], now - before + 3, 0);
            return 0;
        }
        kvs_reads_too_large(r, src->max_frame, "Hmget", "ask for fewer keys per request");
        return 0;
    }
    return 0;
}

static int hmexist(const kvs_reads_src_t *src, const Kvs__Hmexist *m, kvs_resp_t *r)
{
    if (bools_too_large(src, r, m->n_keys))
        return 0;
    kvs_resp_status(r, KVS_STATUS_OK);
    for (size_t i = 0; i < m->n_keys; i++) {
        kvs_slice_t v;
        int rc = src->get(src->arg, m->table, m->keys[i].data, m->keys[i].len, &v);
        if (rc != 0 && rc != KVS_ENOTFOUND)
            return rc;
        kvs_resp_bool(r, rc == 0);
    }
    return 0;
}

static int hlen(const kvs_reads_src_t *src, const char *table, kvs_resp_t *r)
{
    uint64_t n = 0;
    uint8_t enc[16];
    int rc = src->count(src->arg, table, &n);
    if (rc != 0)
        return rc;
    kvs_resp_status(r, KVS_STATUS_OK);
    kvs_resp_value(r, enc, kvs_value_encode_int(enc, (int64_t)n));
    return 0;
}

/* ---- whole table ------------------------------------------------------------------ */

typedef struct scan_state_s {
    const kvs_reads_src_t *src;
    kvs_resp_t *r;
    uint32_t left;    /* pairs still wanted (UINT32_MAX: all) */
    uint32_t taken;   /* pairs added so far */
    size_t limit;     /* response bytes allowed */
    int overflow;     /* stopped because of `limit` */
    int whole;        /* Hgetall: any pair no answer can hold stops the walk */
    int keys_only;    /* Hgetall keys_only: pairs without their values */
    int huge;         /* stopped at a pair no answer can hold (`next` is its key) */
    size_t huge_len;  /* ... its key plus value bytes */
    kvs_slice_t next; /* first key not returned, copied */
    uint8_t next_buf[KVS_MAX_KEY];
} scan_state_t;

static int scan_stop(scan_state_t *st, kvs_slice_t key)
{
    size_t n = key.len < sizeof(st->next_buf) ? key.len : sizeof(st->next_buf);
    memcpy(st->next_buf, key.p, n);
    st->next.p = st->next_buf;
    st->next.len = n;
    return 1;
}

static int scan_one(void *arg, kvs_slice_t key, kvs_slice_t val)
{
    scan_state_t *st = arg;
    if (st->keys_only)
        val.len = 0;
    if ((st->taken == 0 || st->whole) && st->left != 0 &&
        key.len + val.len > kvs_msg_pair_max(st->src->max_frame)) {
        st->huge = 1;
        st->huge_len = key.len + val.len;
        return scan_stop(st, key);
    }
    if (st->left == 0 ||
        (st->taken > 0 && kvs_resp_size(st->r) + key.len + val.len + 16 > st->limit)) {
        st->overflow = st->left != 0;
        return scan_stop(st, key);
    }
    if (st->keys_only)
        kvs_resp_key(st->r, key.p, key.len);
    else
        kvs_resp_pair(st->r, key.p, key.len, val.p, val.len);
    st->left--;
    st->taken++;
    return 0;
}

/* A walk stopped at a pair no answer can hold: 413 naming its key. */
static void pair_unreadable(kvs_resp_t *r, size_t max_frame, const char *cmd,
                            const scan_state_t *st)
{
    char shown[128];
    size_t need = st->huge_len + KVS_MAX_KEY + 64;
    kvs_resp_abort(r);
    kvs_resp_begin(r, r->out);
    kvs_resp_status(r, KVS_STATUS_TOO_LARGE);
    kvs_resp_message(r,
                     "%s reached key \"%s\", whose key and value take %zu bytes: more than an "
                     "answer may hold under limits.max_frame (%zu bytes; it was stored under a "
                     "larger limit); raise limits.max_frame to at least %zu bytes to read it",
                     cmd, kvs_msg_quote(shown, sizeof(shown), st->next.p, st->next.len),
                     st->huge_len, max_frame, need);
}

static int hgetall(const kvs_reads_src_t *src, const Kvs__Hgetall *m, kvs_resp_t *r)
{
    scan_state_t st = {.src = src,
                       .r = r,
                       .left = UINT32_MAX,
                       .limit = src->max_frame,
                       .whole = 1,
                       .keys_only = m->keys_only};
    const char *table = m->table;
    kvs_resp_status(r, KVS_STATUS_OK);
    int rc = src->scan(src->arg, table, NULL, 0, scan_one, &st);
    if (rc != 0)
        return rc;
    if (st.huge)
        pair_unreadable(r, src->max_frame, "Hgetall", &st);
    else if (st.overflow || kvs_resp_size(r) > src->max_frame)
        kvs_reads_too_large(r, src->max_frame, "Hgetall", "read the table in pages with Hscan");
    return 0;
}

/* The least frame an asker's answer_budget may name: limits.max_frame's
 * own least. A smaller one made the page's room (the frame less 1024
 * for the cursor) wrap around: a page of count pairs of any size, held
 * in memory before the answer was found too large. */
#define KVS_READS_MIN_FRAME 1024u

static int hscan(const kvs_reads_src_t *own, const Kvs__Hscan *m, kvs_resp_t *r)
{
    /* The asker's smaller frame (a router whose limits.max_frame is
     * smaller than this node's) bounds the page as this node's would. */
    kvs_reads_src_t asked = *own;
    if (m->answer_budget != 0 && m->answer_budget < own->max_frame)
        asked.max_frame =
            m->answer_budget < KVS_READS_MIN_FRAME ? KVS_READS_MIN_FRAME : m->answer_budget;
    const kvs_reads_src_t *src = &asked;
    uint32_t count = m->count == 0 ? KVS_SCAN_DEFAULT : m->count;
    if (count > KVS_SCAN_MAX)
        count = KVS_SCAN_MAX;
    /* Leave room for the cursor and the frame itself. */
    scan_state_t st = {.src = src,
                       .r = r,
                       .left = count,
                       .limit = src->max_frame > 1024 ? src->max_frame - 1024 : 0};
    kvs_resp_status(r, KVS_STATUS_OK);
    int rc = src->scan(src->arg, m->table, m->cursor.data, m->cursor.len, scan_one, &st);
    if (rc != 0)
        return rc;
    if (st.huge)
        pair_unreadable(r, src->max_frame, "Hscan", &st);
    else if (st.next.len > 0)
        kvs_resp_cursor(r, st.next.p, st.next.len);
    return 0;
}

/* ---- dispatch ------------------------------------------------------------------------ */

int kvs_reads_execute(const kvs_reads_src_t *src, const Kvs__CommandRequest *req, kvs_resp_t *r)
{
    r->value_lengths = req->value_lengths;
    switch (req->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HGET:
        return kvs_reads_key(src, req->command_case, req->hget->table, req->hget->key.data,
                             req->hget->key.len, r);
    case KVS__COMMAND_REQUEST__COMMAND_HEXIST:
        return kvs_reads_key(src, req->command_case, req->hexist->table, req->hexist->key.data,
                             req->hexist->key.len, r);
    case KVS__COMMAND_REQUEST__COMMAND_HMGET:
        return hmget(src, req->hmget, r);
    case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
        return hmexist(src, req->hmexist, r);
    case KVS__COMMAND_REQUEST__COMMAND_HGETALL:
        return hgetall(src, req->hgetall, r);
    case KVS__COMMAND_REQUEST__COMMAND_HSCAN:
        return hscan(src, req->hscan, r);
    case KVS__COMMAND_REQUEST__COMMAND_HLEN:
        return hlen(src, req->hlen->table, r);
    default:
        return KVS_EINVAL;
    }
}

int kvs_reads_finish(kvs_resp_t *r, size_t max_frame, Kvs__CommandRequest__CommandCase cmd)
{
    size_t n = kvs_resp_size(r);
    if (n <= max_frame)
        return kvs_resp_end(r);
    char hint[160];
    switch (cmd) {
    case KVS__COMMAND_REQUEST__COMMAND_HGETALL:
        snprintf(hint, sizeof(hint), "read the table in pages with Hscan");
        break;
    case KVS__COMMAND_REQUEST__COMMAND_HMGET:
    case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
        snprintf(hint, sizeof(hint), "ask for fewer keys per request");
        break;
    case KVS__COMMAND_REQUEST__COMMAND_INFO:
        snprintf(hint, sizeof(hint),
                 "it lists thirteen numbers per Kafka partition this shard owns; raise "
                 "limits.max_frame to at least %zu bytes",
                 n);
        break;
    case KVS__COMMAND_REQUEST__COMMAND_METRICS:
        snprintf(hint, sizeof(hint),
                 "it holds this process's metrics, some per Kafka partition; raise "
                 "limits.max_frame to at least %zu bytes",
                 n);
        break;
    case KVS__COMMAND_REQUEST__COMMAND_SLOWLOG:
        snprintf(hint, sizeof(hint), "ask for fewer entries");
        break;
    default: /* Hget of a value stored under a larger limit */
        snprintf(hint, sizeof(hint),
                 "the value was stored under a larger limit: raise limits.max_frame to at "
                 "least %zu bytes to read it",
                 n);
        break;
    }
    kvs_reads_too_large(r, max_frame, kvs_msg_command_name(cmd), hint);
    return kvs_resp_end(r);
}

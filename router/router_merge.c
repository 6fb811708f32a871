/*
 * router_merge: the one answer of a request sent to several shards (see
 * router_merge.h).
 */
#include "router_merge.h"
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_log.h"
#include "kvs_pos.h"
#include "kvs_varint.h"
#include "router_send.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void merge_metrics(router_req_t *req, kvs_arena_t *arena);

void router_merge_free(router_merge_t *m)
{
    if (m == NULL)
        return;
    for (uint32_t i = 0; i < m->nparts; i++) { /* router_merge_new may have failed half way */
        if (m->answers != NULL)
            kvs_buf_free(&m->answers[i]);
        if (m->tries != NULL)
            kvs_buf_free(&m->tries[i].bytes);
    }
    kvs_buf_free(&m->scan_pages);
    kvs_buf_free(&m->scan_req);
    free(m->tries);
    free(m->answers);
    free(m->part_shard);
    free(m->failed);
    free(m->key_part);
    free(m->key_index);
    free(m->keys);
    free(m);
}

router_merge_t *router_merge_new(router_t *r, Kvs__CommandRequest__CommandCase cmd, uint32_t nparts,
                                 size_t nkeys)
{
    router_merge_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->cmd = cmd;
    m->router = r;
    m->nparts = nparts;
    m->nkeys = nkeys;
    m->part_shard = calloc(nparts, sizeof(*m->part_shard));
    m->answers = calloc(nparts, sizeof(*m->answers));
    m->failed = calloc(nparts, sizeof(*m->failed));
    m->key_part = calloc(nkeys ? nkeys : 1, sizeof(*m->key_part));
    m->key_index = calloc(nkeys ? nkeys : 1, sizeof(*m->key_index));
    m->tries = calloc(nparts, sizeof(*m->tries));
    if (!m->part_shard || !m->answers || !m->failed || !m->key_part || !m->key_index || !m->tries) {
        router_merge_free(m);
        return NULL;
    }
    return m;
}

/* The binding of the table named table[0..len), or NULL (unbound). */

/* The failure text of failed part `i`: what router_route_reply was told,
 * or, when even that could not be kept, the reason. */
const char *router_merge_part_failure(const router_merge_t *m, uint32_t i)
{
    return m->answers[i].len > 0 ? (const char *)m->answers[i].data : "router out of memory";
}

int router_merge_is_split_write(const router_merge_t *m)
{
    return m->cmd == KVS__COMMAND_REQUEST__COMMAND_HMSET ||
           m->cmd == KVS__COMMAND_REQUEST__COMMAND_HMDEL;
}

/* The router cannot build the merged answer of `req` (out of memory, or a
 * worker's answer that does not match its part): 500. A split write's
 * parts have answered by then, and some or all of them were applied, so
 * its 500 says the keys may or may not be written (outcome_unknown), never
 * that nothing was. */
static void merge_failed(router_req_t *req, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void merge_failed(router_req_t *req, const char *fmt, ...)
{
    char text[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    int split = req->merge != NULL && router_merge_is_split_write(req->merge);
    size_t n = strlen(text);
    if (split)
        snprintf(text + n, sizeof(text) - n,
                 "; %s may or may not have written its %s (its parts answered, some or all "
                 "of them applied): read them to find out",
                 req->redis ? "the command" : kvs_msg_command_name(req->merge->cmd),
                 req->redis ? "fields" : "keys");
    router_req_status_frame(req, KVS_STATUS_INTERNAL, split, NULL, text, sizeof(text),
                            (int)strlen(text));
    router_req_complete(req);
}

/* The positions the parts of a split write answered (successful or not:
 * a 503 may carry the position of records Kafka has), merged into `tok`
 * and noted in the session. */
static void merge_positions(router_req_t *req, kvs_arena_t *arena, kvs_buf_t *tok)
{
    router_merge_t *m = req->merge;
    kvs_pos_set_t set;
    kvs_pos_set_init(&set);
    for (uint32_t i = 0; i < m->nparts; i++) {
        const uint8_t *p;
        size_t n;
        if (!m->failed[i] &&
            kvs_msg_find_bytes(m->answers[i].data, m->answers[i].len, 6, &p, &n) == 1)
            kvs_pos_set_add_token(&set, p, n);
    }
    (void)arena;
    if (kvs_pos_set_encode(&set, tok) != 0)
        tok->len = 0;
    kvs_pos_set_free(&set);
    router_req_note_position(req, tok->data, tok->len);
}

/* One integer pair of an Info answer, in `arena`; NULL when out of memory. */
static Kvs__Kvpair *info_pair(kvs_arena_t *arena, const char *key, int64_t value)
{
    Kvs__Kvpair *p = kvs_arena_alloc(arena, sizeof(*p));
    Kvs__Value *v = kvs_arena_alloc(arena, sizeof(*v));
    if (p == NULL || v == NULL)
        return NULL;
    kvs__kvpair__init(p);
    kvs__value__init(v);
    v->kind_case = KVS__VALUE__KIND_INTEGER_VALUE;
    v->integer_value = value;
    p->key.data = (uint8_t *)key;
    p->key.len = strlen(key);
    p->value = v;
    return p;
}

/* Info stands in for a shard that could not answer with a single pair,
 * "shard.<id>.unavailable" = 1, so the rest of the cluster is still shown
 * (Info is what an operator asks for when something is down). */
static Kvs__CommandResponse *info_unavailable(kvs_arena_t *arena, uint32_t shard)
{
    Kvs__CommandResponse *r = kvs_arena_alloc(arena, sizeof(*r));
    Kvs__Kvpair *p = kvs_arena_alloc(arena, sizeof(*p));
    Kvs__Kvpair **pp = kvs_arena_alloc(arena, sizeof(*pp));
    Kvs__Value *v = kvs_arena_alloc(arena, sizeof(*v));
    char *key = kvs_arena_alloc(arena, 32);
    if (r == NULL || p == NULL || pp == NULL || v == NULL || key == NULL)
        return NULL;
    kvs__command_response__init(r);
    kvs__kvpair__init(p);
    kvs__value__init(v);
    int n = snprintf(key, 32, "shard.%03u.unavailable", shard);
    v->kind_case = KVS__VALUE__KIND_INTEGER_VALUE;
    v->integer_value = 1;
    p->key.data = (uint8_t *)key;
    p->key.len = (size_t)n;
    p->value = v;
    pp[0] = p;
    r->status = KVS_STATUS_OK;
    r->n_pairs = 1;
    r->pairs = pp;
    return r;
}

/* Info's part `i`: its pairs, or info_unavailable for a shard that could
 * not answer. A shard whose Info is too large for a frame (413, from the
 * worker or for an answer the link dropped) makes the whole Info 413: the
 * merged answer could not be smaller, and "unavailable" would be untrue.
 * Returns NULL once `req` is finished. */
static Kvs__CommandResponse *decode_info_part(router_req_t *req, uint32_t i, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    Kvs__CommandResponse *r = NULL;
    const char *why = router_merge_part_failure(m, i);
    uint32_t st = m->failed[i];
    if (st == 0) {
        r = kvs__command_response__unpack(&arena->pb, m->answers[i].len, m->answers[i].data);
        st = r == NULL ? KVS_STATUS_INTERNAL : r->status;
        why = r != NULL ? r->message : "";
    }
    if (st == KVS_STATUS_TOO_LARGE) {
        router_req_finish_status(req, st, "shard %u: %s", m->part_shard[i], why);
        return NULL;
    }
    if (st != KVS_STATUS_OK && (r = info_unavailable(arena, m->part_shard[i])) == NULL)
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
    return r;
}

/* Decodes every part's answer. If a part failed (or answered non-200),
 * finishes `req` with that status and returns NULL; for Info such a part
 * becomes info_unavailable instead. */
Kvs__CommandResponse **router_merge_decode_parts(router_req_t *req, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    Kvs__CommandResponse **rs = kvs_arena_alloc(arena, m->nparts * sizeof(*rs));
    if (rs == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return NULL;
    }
    for (uint32_t i = 0; i < m->nparts; i++) {
        if (m->cmd == KVS__COMMAND_REQUEST__COMMAND_INFO) {
            if ((rs[i] = decode_info_part(req, i, arena)) == NULL)
                return NULL;
            continue;
        }
        if (m->failed[i]) {
            router_req_finish_status(req, m->failed[i], "%s", router_merge_part_failure(m, i));
            return NULL;
        }
        rs[i] = kvs__command_response__unpack(&arena->pb, m->answers[i].len, m->answers[i].data);
        if (rs[i] == NULL) {
            router_req_finish_status(req, KVS_STATUS_INTERNAL,
                                     "shard %u sent an answer that is not a CommandResponse",
                                     m->part_shard[i]);
            return NULL;
        }
        if (rs[i]->status != KVS_STATUS_OK) {
            router_req_finish_status(req, rs[i]->status, "%s", rs[i]->message);
            return NULL;
        }
    }
    return rs;
}

/* Packs `resp` as the client's answer, or 413 when it is too large. */
void router_merge_finish_packed(router_req_t *req, Kvs__CommandResponse *resp, const char *cmd,
                                const char *hint)
{
    router_t *r = req->merge->router;
    req->resp.len = 0;
    int rc = kvs_msg_append(&req->resp, &resp->base, r->cfg->max_frame);
    if (rc == KVS_ETOOBIG) {
        router_req_finish_status(req, KVS_STATUS_TOO_LARGE,
                                 "%s answer would exceed limits.max_frame (%llu bytes); %s", cmd,
                                 (unsigned long long)r->cfg->max_frame, hint);
        return;
    }
    if (rc != 0) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    router_req_complete(req);
}

/* A split write every part of which was applied, whose merged answer (the
 * previous values) does not fit limits.max_frame (`too_large`) or could
 * not be built: not 413, which says nothing was written. The parts' answer
 * budgets keep the merge within the limit when each part's previous values
 * are known before it writes; a part of a bound table prices the values
 * stored when it is checked, and an earlier write of the same keys still
 * in flight through Kafka may replace them with larger ones by the time
 * it applies. The position names what was written; without one (a table
 * bound to no topic) the outcome is said unknown rather than nothing. */
static void finish_applied_unsent(router_req_t *req, const kvs_buf_t *tok, int too_large)
{
    router_merge_t *m = req->merge;
    char msg[400];
    const char *cmd = kvs_msg_command_name(m->cmd);
    const char *see = tok->len > 0 ? " (see its position)" : "";
    int n = too_large ? snprintf(msg, sizeof(msg),
                                 "%s was applied on every shard%s, but the previous values it "
                                 "replaced do not fit in an answer of limits.max_frame (%llu "
                                 "bytes); send fewer keys per request",
                                 cmd, see, (unsigned long long)m->router->cfg->max_frame)
                      : snprintf(msg, sizeof(msg),
                                 "%s was applied on every shard%s, but the router ran out of "
                                 "memory for its answer",
                                 cmd, see);
    router_req_status_frame(req, KVS_STATUS_INTERNAL, tok->len == 0, tok, msg, sizeof(msg), n);
    router_req_complete(req);
}

/* `out` as a 200 with room for one value per key of the request, in
 * `arena`. Returns 0, or -1 when out of memory (`req` is answered). */
static int values_answer(router_req_t *req, kvs_arena_t *arena, Kvs__CommandResponse *out)
{
    router_merge_t *m = req->merge;
    kvs__command_response__init(out);
    out->status = KVS_STATUS_OK;
    out->n_values = m->nkeys;
    out->values = kvs_arena_alloc(arena, m->nkeys * sizeof(*out->values));
    if (out->values != NULL)
        return 0;
    merge_failed(req, "router out of memory");
    return -1;
}

static void merge_keys(router_req_t *req, Kvs__CommandResponse **rs, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    Kvs__CommandResponse out;
    if (values_answer(req, arena, &out) != 0)
        return;
    for (size_t i = 0; i < m->nkeys; i++) {
        Kvs__CommandResponse *pr = rs[m->key_part[i]];
        if (m->key_index[i] >= pr->n_values) {
            merge_failed(req, "shard %u answered %zu values for more keys",
                         m->part_shard[m->key_part[i]], pr->n_values);
            return;
        }
        out.values[i] = pr->values[m->key_index[i]];
    }
    if (!router_merge_is_split_write(m)) {
        router_merge_finish_packed(req, &out, kvs_msg_command_name(m->cmd),
                                   "ask for fewer keys per request");
        return;
    }
    kvs_buf_t tok;
    kvs_buf_init(&tok);
    merge_positions(req, arena, &tok);
    out.position.data = tok.data;
    out.position.len = tok.len;
    req->resp.len = 0;
    int rc = kvs_msg_append(&req->resp, &out.base, m->router->cfg->max_frame);
    if (rc != 0)
        finish_applied_unsent(req, &tok, rc == KVS_ETOOBIG);
    else
        router_req_complete(req);
    kvs_buf_free(&tok);
}

/* ---- split writes: what was applied where ----------------------------------- */

/* What became of each part of an Hmset or Hmdel split over shards. A
 * worker's error answer means it wrote nothing (node_cmd's contract: a
 * write that fails or is refused changes nothing), and so does a part no
 * link took (its shard down: it was never sent); a part sent with no
 * answer (the link failed, or its answer was dropped) may or may not have
 * been applied. */
enum { PART_APPLIED = 1, PART_ACKED, PART_REFUSED, PART_UNKNOWN };

/* Why part `i` failed: its worker's message, the router's failure (a part
 * not sent, or sent with no answer), or an answer that did not decode
 * (its bytes are no text). */
static const char *part_why(const router_merge_t *m, Kvs__CommandResponse **rs, uint32_t i)
{
    return rs[i] != NULL  ? rs[i]->message
           : m->failed[i] ? router_merge_part_failure(m, i)
                          : "its answer is not a CommandResponse";
}

/* Writes "shard 1" or "shards 0, 2" (those whose part has outcome `o`, in
 * shard order) into buf; returns how many. */
static uint32_t shard_list(const router_merge_t *m, const uint8_t *outcome, uint8_t o, char *buf,
                           size_t len)
{
    uint32_t count = 0;
    size_t n = 0;
    for (uint32_t p = 0; p < m->nparts; p++)
        count += outcome[p] == o;
    int k = snprintf(buf, len, "%s", count == 1 ? "shard" : "shards");
    n = k > 0 ? (size_t)k : 0;
    uint32_t listed = 0;
    for (uint32_t s = 0; s < m->router->shards && listed < count; s++)
        for (uint32_t p = 0; p < m->nparts; p++) {
            if (m->part_shard[p] != s || outcome[p] != o || n >= len)
                continue;
            k = snprintf(buf + n, len - n, "%s %u", listed++ > 0 ? "," : "", s);
            n += k > 0 ? (size_t)k : 0;
        }
    return count;
}

/* A part's error answer `r` says (node_writes): its keys may have been
 * written after all (Kafka acknowledged some of its records, their
 * position in the answer, or the worker cannot tell: outcome_unknown), or
 * they were written, every record acknowledged, and will be applied (a
 * position and outcome_unknown not set: the worker did not apply them in
 * time). */
static int part_may_have_written(const Kvs__CommandResponse *r)
{
    return r->position.len > 0 || r->outcome_unknown;
}

static int part_will_apply(const Kvs__CommandResponse *r)
{
    return r->position.len > 0 && !r->outcome_unknown;
}

/* Some part got no answer, was not sent, may have written, or wrote its
 * keys to Kafka and has not applied them yet (rs[u], its answer, then says
 * so): 503 (or the status its failure or answer gave), naming what is
 * known of every shard. outcome_unknown is set unless every key is known
 * to be written (applied, or acknowledged and to be applied) or known not
 * to be. */
static void write_unknown(router_req_t *req, Kvs__CommandResponse **rs, const uint8_t *outcome,
                          uint32_t u)
{
    router_merge_t *m = req->merge;
    static const char *const says[][2] = {
        [PART_APPLIED] = {"applied their keys", "applied their fields"},
        [PART_ACKED] = {"wrote their keys to Kafka, which acknowledged them (they will be "
                        "applied)",
                        "wrote their fields to Kafka, which acknowledged them (they will be "
                        "applied)"},
        [PART_REFUSED] = {"wrote nothing", "wrote nothing"},
        [PART_UNKNOWN] = {"may or may not have written", "may or may not have written"}};
    const char *cmd = req->redis ? "the command" : kvs_msg_command_name(m->cmd);
    char lists[4][260], why[160];
    const char *msg = part_why(m, rs, u);
    uint32_t status = rs[u] != NULL ? rs[u]->status : m->failed[u], n = 0;
    if (status == 0) {
        snprintf(why, sizeof(why), "shard %u sent an answer that is not a CommandResponse",
                 m->part_shard[u]);
        msg = why;
        status = KVS_STATUS_INTERNAL;
    }
    int has[PART_UNKNOWN + 1] = {0};
    for (uint8_t o = PART_APPLIED; o <= PART_UNKNOWN; o++) {
        char shards[160];
        if (shard_list(m, outcome, o, shards, sizeof(shards)) == 0)
            continue;
        snprintf(lists[n++], sizeof(lists[0]), "%s %s", shards, says[o][req->redis != 0]);
        has[o] = 1;
    }
    /* Known, but only in part: written on some shards, not on others. */
    int unknown =
        has[PART_UNKNOWN] || (has[PART_REFUSED] && (has[PART_APPLIED] || has[PART_ACKED]));
    char text[1400];
    int len = snprintf(
        text, sizeof(text), "%s (%s spans %u shards and is not atomic across them: %s%s%s%s%s%s%s)",
        msg, cmd, m->nparts, lists[0], n > 1 ? ", " : "", n > 1 ? lists[1] : "", n > 2 ? ", " : "",
        n > 2 ? lists[2] : "", n > 3 ? ", " : "", n > 3 ? lists[3] : "");
    kvs_buf_t tok; /* the positions of the parts that did answer */
    kvs_buf_init(&tok);
    merge_positions(req, &m->router->merge_arena, &tok);
    router_req_status_frame(req, status, unknown, &tok, text, sizeof(text), len);
    kvs_buf_free(&tok);
    router_req_complete(req);
}

/* Every part refused: nothing was written anywhere, and the first
 * refusal says why. */
static void write_refused(router_req_t *req, Kvs__CommandResponse **rs, uint32_t first)
{
    router_merge_t *m = req->merge;
    router_req_finish_status(req, rs[first]->status,
                             "%s (shard %u; every one of the %u shards holding the %s refused "
                             "its part: nothing was written)",
                             rs[first]->message, m->part_shard[first], m->nparts,
                             req->redis ? "fields" : "keys");
}

/* Fills a 207's values (previous values of written keys; `empty` for the
 * others) and pairs (the keys not written), in arena memory. Returns 0, or
 * -1 once `req` is finished with an error. */
static int partial_lists(router_req_t *req, Kvs__CommandResponse **rs, const uint8_t *outcome,
                         Kvs__Value *empty, Kvs__CommandResponse *out, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    size_t unwritten = 0;
    for (size_t i = 0; i < m->nkeys; i++)
        unwritten += outcome[m->key_part[i]] != PART_APPLIED;
    out->values = kvs_arena_alloc(arena, m->nkeys * sizeof(*out->values));
    out->pairs = kvs_arena_alloc(arena, unwritten * sizeof(*out->pairs));
    Kvs__Kvpair *kp = kvs_arena_alloc(arena, unwritten * sizeof(*kp));
    if (out->values == NULL || out->pairs == NULL || kp == NULL) {
        merge_failed(req, "router out of memory");
        return -1;
    }
    for (size_t i = 0; i < m->nkeys; i++) {
        const Kvs__CommandResponse *pr = rs[m->key_part[i]];
        out->values[i] = empty;
        if (outcome[m->key_part[i]] != PART_APPLIED) {
            kvs__kvpair__init(&kp[out->n_pairs]);
            kp[out->n_pairs].key = m->keys[i];
            out->pairs[out->n_pairs] = &kp[out->n_pairs];
            out->n_pairs++;
        } else if (m->key_index[i] < pr->n_values) {
            out->values[i] = pr->values[m->key_index[i]];
        } else {
            merge_failed(req, "shard %u answered %zu values for more keys",
                         m->part_shard[m->key_part[i]], pr->n_values);
            return -1;
        }
    }
    out->n_values = m->nkeys;
    return 0;
}

/* A 207's message to a Redis client, who sent HSET or HDEL about fields
 * and sees neither `values` nor `pairs`: which fields were not written,
 * the first few of them named. Returns what snprintf does. */
static int partial_in_fields(const router_req_t *req, const Kvs__CommandResponse *out,
                             const char *wrote, const char *refused, const char *why, char *text,
                             size_t size)
{
    char fields[400] = "", q[80];
    size_t used = 0;
    for (size_t i = 0; i < out->n_pairs && i < 4; i++) { /* a message, not a list */
        kvs_msg_quote(q, sizeof(q), out->pairs[i]->key.data, out->pairs[i]->key.len);
        int k = snprintf(fields + used, sizeof(fields) - used, "%s\"%s\"", i ? ", " : "", q);
        used += k > 0 && (size_t)k < sizeof(fields) - used ? (size_t)k : 0;
    }
    if (out->n_pairs > 4)
        snprintf(fields + used, sizeof(fields) - used, ", ...");
    size_t n = out->n_pairs;
    return snprintf(
        text, size, "partly applied: the fields on %s were %s; %zu field%s on %s %s not (%s): %s",
        wrote, req->merge->cmd == KVS__COMMAND_REQUEST__COMMAND_HMDEL ? "deleted" : "written", n,
        n == 1 ? "" : "s", refused, n == 1 ? "was" : "were", fields, why);
}

/* 207: some shards wrote their keys, the others refused theirs or were
 * not sent theirs (their shard down). The answer says exactly what
 * happened (see kvs.proto, CommandResponse.status): previous values for
 * the written keys, the unwritten keys in `pairs`; what does not fit
 * max_frame is left out, the message saying so. `first` is the first
 * part not written, whose failure the message quotes. */
static void write_partial(router_req_t *req, Kvs__CommandResponse **rs, const uint8_t *outcome,
                          uint32_t first, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    Kvs__Value empty = KVS__VALUE__INIT;
    Kvs__CommandResponse out = KVS__COMMAND_RESPONSE__INIT;
    char wrote[160], refused[160], text[1024];
    if (partial_lists(req, rs, outcome, &empty, &out, arena) != 0)
        return;
    kvs_buf_t tok; /* the positions of the parts written */
    kvs_buf_init(&tok);
    merge_positions(req, arena, &tok);
    out.position.data = tok.data;
    out.position.len = tok.len;
    size_t unwritten = out.n_pairs;
    shard_list(m, outcome, PART_APPLIED, wrote, sizeof(wrote));
    shard_list(m, outcome, PART_REFUSED, refused, sizeof(refused));
    out.status = KVS_STATUS_PARTIAL;
    out.message = text;
    static const char *const left_out[] = {
        "", "; previous values left out: they do not fit limits.max_frame",
        "; previous values and keys left out: they do not fit limits.max_frame"};
    for (int stage = 0; stage < 3; stage++) {
        int n = req->redis
                    ? partial_in_fields(req, &out, wrote, refused, part_why(m, rs, first), text,
                                        sizeof(text))
                    : snprintf(text, sizeof(text),
                               "%s partly applied: the keys on %s were written (their "
                               "previous values are in values); the %zu key%s on %s %s "
                               "not (listed in pairs): %s%s",
                               kvs_msg_command_name(m->cmd), wrote, unwritten,
                               unwritten == 1 ? "" : "s", refused, unwritten == 1 ? "was" : "were",
                               part_why(m, rs, first), left_out[stage]);
        router_req_cut_message(m->router, text, n, sizeof(text));
        out.n_values = stage == 0 ? m->nkeys : 0;
        out.n_pairs = stage == 2 ? 0 : unwritten;
        req->resp.len = 0;
        int rc = kvs_msg_append(&req->resp, &out.base, m->router->cfg->max_frame);
        if (rc == 0) {
            kvs_buf_free(&tok);
            router_req_complete(req);
            return;
        }
        if (rc != KVS_ETOOBIG)
            break;
    }
    kvs_buf_free(&tok);
    merge_failed(req, "router out of memory");
}

/* An Hmset or Hmdel split over shards: the merged previous values when
 * every shard applied its part; otherwise an answer that says exactly
 * which shards wrote and which did not (or may have). */
static int merge_keys_raw(router_req_t *req, kvs_arena_t *arena);

static void merge_write(router_req_t *req, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    uint32_t ok = 0;
    for (uint32_t i = 0; i < m->nparts; i++)
        ok += !m->failed[i] &&
              kvs_msg_answer_status(m->answers[i].data, m->answers[i].len) == KVS_STATUS_OK;
    if (ok == m->nparts && merge_keys_raw(req, arena))
        return; /* every shard applied its part: the previous values, merged */
    Kvs__CommandResponse **rs = kvs_arena_alloc(arena, m->nparts * sizeof(*rs));
    uint8_t *outcome = kvs_arena_alloc(arena, m->nparts);
    if (rs == NULL || outcome == NULL) {
        merge_failed(req, "router out of memory");
        return;
    }
    uint32_t applied = 0, refused = UINT32_MAX, failed = UINT32_MAX, unknown = 0,
             acked = UINT32_MAX;
    for (uint32_t i = 0; i < m->nparts; i++) {
        rs[i] = m->failed[i] ? NULL
                             : kvs__command_response__unpack(&arena->pb, m->answers[i].len,
                                                             m->answers[i].data);
        outcome[i] = rs[i] == NULL
                         ? (m->failed[i] && m->tries[i].unsent ? PART_REFUSED : PART_UNKNOWN)
                     : rs[i]->status == KVS_STATUS_OK ? PART_APPLIED
                     : part_will_apply(rs[i])         ? PART_ACKED
                     : part_may_have_written(rs[i])   ? PART_UNKNOWN
                                                      : PART_REFUSED;
        applied += outcome[i] == PART_APPLIED;
        if (outcome[i] == PART_ACKED && acked == UINT32_MAX)
            acked = i;
        unknown += outcome[i] == PART_UNKNOWN;
        if (outcome[i] == PART_REFUSED && refused == UINT32_MAX)
            refused = i;
        if ((outcome[i] == PART_UNKNOWN || rs[i] == NULL) && failed == UINT32_MAX)
            failed = i; /* sent with no answer, unsure, or not sent: its failure says why */
    }
    /* Some shard silent or unsure, or none applied with one down, or some
     * shard's keys acknowledged by Kafka and not applied yet (its answer
     * has no previous values for a 207): 503 saying what is known of each.
     * Shards down while others applied their keys: a 207 like any refusal,
     * since a 503 without outcome_unknown or a position says nothing was
     * written. */
    if (unknown > 0 || acked != UINT32_MAX || (failed != UINT32_MAX && applied == 0))
        write_unknown(req, rs, outcome, failed != UINT32_MAX ? failed : acked);
    else if (refused == UINT32_MAX)
        merge_keys(req, rs, arena);
    else if (applied == 0)
        write_refused(req, rs, refused);
    else
        write_partial(req, rs, outcome, refused, arena);
}

static int key_cmp(const ProtobufCBinaryData *a, const ProtobufCBinaryData *b)
{
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->data, b->data, n);
    return c != 0 ? c : (a->len > b->len) - (a->len < b->len);
}

/* A pair of a part's Hgetall answer: where its encoded Kvpair and its key
 * lie in the answer (answers <= max_frame <= 1 GiB). */
typedef struct raw_pair_s {
    uint32_t at, len, key, klen;
} raw_pair_t;

/* Counts (pairs == NULL) or lists the pairs of the encoded answer
 * a[0..len), which must hold status, message and pairs only; *status is
 * its status (message: in *msg[0..*mlen)). Returns the number of pairs, or
 * -1 when it holds anything else or a pair has no key. */
static ptrdiff_t answer_pairs(const uint8_t *a, size_t len, raw_pair_t *pairs, uint64_t *status,
                              const uint8_t **msg, size_t *mlen)
{
    const uint8_t *p = a, *end = a + len, *v;
    uint64_t tag;
    size_t n, count = 0;
    *status = 0, *msg = (const uint8_t *)"", *mlen = 0;
    while (p < end) {
        if (kvs_msg_next_field(&p, end, &tag, &v, &n) != 0)
            return -1;
        if (tag == (1 << 3 | 0)) {
            if (kvs_varint_get(&v, v + n, status) != 0)
                return -1;
            continue;
        }
        if (tag == (2 << 3 | 2)) {
            *msg = v, *mlen = n;
            continue;
        }
        if (tag != (4 << 3 | 2))
            return -1;
        if (pairs != NULL) {
            raw_pair_t *x = &pairs[count];
            const uint8_t *q = v, *k;
            uint64_t t;
            size_t kn;
            x->at = (uint32_t)(v - a), x->len = (uint32_t)n, x->key = 0, x->klen = UINT32_MAX;
            while (q < v + n) {
                if (kvs_msg_next_field(&q, v + n, &t, &k, &kn) != 0)
                    return -1;
                if (t == (1 << 3 | 2))
                    x->key = (uint32_t)(k - a), x->klen = (uint32_t)kn; /* the last, as protobuf */
            }
            if (x->klen == UINT32_MAX)
                return -1;
        }
        count++;
    }
    return (ptrdiff_t)count;
}

/* Compares the keys of pair a of answer pa and pair b of answer pb. */
static int raw_key_cmp(const uint8_t *pa, const raw_pair_t *a, const uint8_t *pb,
                       const raw_pair_t *b)
{
    size_t n = a->klen < b->klen ? a->klen : b->klen;
    int c = memcmp(pa + a->key, pb + b->key, n);
    return c != 0 ? c : (a->klen > b->klen) - (a->klen < b->klen);
}

/* Hgetall's merge without decoding: the parts' pairs (each part in key
 * order) are merged by key and copied as the workers encoded them, at 16
 * bytes per pair besides the answers (decoded, a pair costs some 200).
 * Returns 0 when an answer holds more than status, message and pairs (it
 * must be decoded), 1 when `req` was finished. */
static int merge_pairs_raw(router_req_t *req, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    raw_pair_t **parts = kvs_arena_alloc(arena, m->nparts * sizeof(*parts));
    size_t *count = kvs_arena_alloc(arena, 2 * m->nparts * sizeof(*count)), *pos, size = 3;
    if (parts == NULL || count == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return 1;
    }
    pos = count + m->nparts;
    for (uint32_t i = 0; i < m->nparts; i++) {
        const uint8_t *a = m->answers[i].data, *msg;
        size_t alen = m->answers[i].len, mlen;
        uint64_t st;
        if (m->failed[i]) {
            router_req_finish_status(req, m->failed[i], "%s", router_merge_part_failure(m, i));
            return 1;
        }
        ptrdiff_t n = answer_pairs(a, alen, NULL, &st, &msg, &mlen);
        if (n < 0 || st > UINT32_MAX || st == 0) /* no status: merge_pairs judges it */
            return 0;
        if (st != KVS_STATUS_OK) {
            router_req_finish_status(req, (uint32_t)st, "%.*s", (int)mlen, (const char *)msg);
            return 1;
        }
        parts[i] = kvs_arena_alloc(arena, ((size_t)n + 1) * sizeof(**parts));
        if (parts[i] == NULL) {
            router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
            return 1;
        }
        if (answer_pairs(a, alen, parts[i], &st, &msg, &mlen) != n)
            return 0;
        count[i] = (size_t)n;
        pos[i] = 0;
        for (size_t k = 0; k < count[i]; k++)
            size += 1 + kvs_varint_len(parts[i][k].len) + parts[i][k].len;
    }
    router_t *r = m->router;
    if (size > r->cfg->max_frame || size > KVS_FRAME_LEN_MASK) {
        router_req_finish_status(req, KVS_STATUS_TOO_LARGE,
                                 "Hgetall answer would exceed limits.max_frame (%llu bytes); read "
                                 "the table in pages with Hscan",
                                 (unsigned long long)r->cfg->max_frame);
        return 1;
    }
    req->resp.len = 0;
    if (kvs_buf_reserve(&req->resp, KVS_FRAME_HEADER + size) != 0) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return 1;
    }
    uint8_t *o = req->resp.data;
    kvs_frame_put_header(o, (uint32_t)size);
    o += KVS_FRAME_HEADER;
    o += kvs_varint_put(o, 1 << 3 | 0);
    o += kvs_varint_put(o, KVS_STATUS_OK);
    for (;;) {
        uint32_t best = UINT32_MAX;
        for (uint32_t i = 0; i < m->nparts; i++)
            if (pos[i] < count[i] &&
                (best == UINT32_MAX ||
                 raw_key_cmp(m->answers[i].data, &parts[i][pos[i]], m->answers[best].data,
                             &parts[best][pos[best]]) < 0))
                best = i;
        if (best == UINT32_MAX)
            break;
        const raw_pair_t *x = &parts[best][pos[best]++];
        *o++ = 4 << 3 | 2;
        o += kvs_varint_put(o, x->len);
        memcpy(o, m->answers[best].data + x->at, x->len);
        o += x->len;
    }
    req->resp.len = KVS_FRAME_HEADER + size;
    router_req_complete(req);
    return 1;
}

/* k-way merge of the key-ordered pairs of rs[0..nparts). */
static void merge_pairs_of(router_req_t *req, Kvs__CommandResponse **rs, uint32_t nparts,
                           kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    size_t total = 0;
    for (uint32_t i = 0; i < nparts; i++)
        total += rs[i]->n_pairs;
    Kvs__CommandResponse out = KVS__COMMAND_RESPONSE__INIT;
    out.status = KVS_STATUS_OK;
    out.pairs = kvs_arena_alloc(arena, (total ? total : 1) * sizeof(*out.pairs));
    size_t *pos = kvs_arena_alloc(arena, nparts * sizeof(*pos));
    if (out.pairs == NULL || pos == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    memset(pos, 0, nparts * sizeof(*pos));
    for (out.n_pairs = 0; out.n_pairs < total; out.n_pairs++) {
        uint32_t best = UINT32_MAX;
        for (uint32_t i = 0; i < nparts; i++) {
            if (pos[i] == rs[i]->n_pairs)
                continue;
            if (best == UINT32_MAX ||
                key_cmp(&rs[i]->pairs[pos[i]]->key, &rs[best]->pairs[pos[best]]->key) < 0)
                best = i;
        }
        out.pairs[out.n_pairs] = rs[best]->pairs[pos[best]++];
    }
    router_merge_finish_packed(
        req, &out, kvs_msg_command_name(m->cmd),
        m->cmd == KVS__COMMAND_REQUEST__COMMAND_INFO
            ? "it lists thirteen numbers per Kafka partition of every shard; raise "
              "limits.max_frame"
            : "read the table in pages with Hscan");
}

static void merge_pairs(router_req_t *req, Kvs__CommandResponse **rs, kvs_arena_t *arena)
{
    merge_pairs_of(req, rs, req->merge->nparts, arena);
}

/* Info: the shards' pairs and the router's own, merged in key order. The
 * router adds its own only where they say something: which router process
 * answered, how many there are and its clients (both front doors) when the
 * node runs several; its replica reads, retries and refused retries when
 * some shard has replicas. With one router process and no replicas Info is
 * what it always was. */
static void merge_info(router_req_t *req, Kvs__CommandResponse **rs, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    const router_t *r = m->router;
    int replicated = 0;
    for (uint32_t s = 0; r->sets != NULL && s < r->shards; s++)
        replicated |= r->sets[s].n > 1;
    /* In key order: router.clients < router.process < router.processes
     * < router.replica_*. */
    const char *keys[6];
    int64_t vals[6];
    size_t n = 0;
    if (r->n_procs > 1) {
        keys[n] = "router.clients", vals[n++] = (int64_t)r->n_clients;
        keys[n] = "router.process", vals[n++] = r->proc_index;
        keys[n] = "router.processes", vals[n++] = r->n_procs;
    }
    if (replicated) {
        keys[n] = "router.replica_reads", vals[n++] = (int64_t)r->budget.reads;
        keys[n] = "router.replica_retries", vals[n++] = (int64_t)r->budget.retries;
        keys[n] = "router.replica_retries_refused", vals[n++] = (int64_t)r->budget.refused;
    }
    if (n == 0) {
        merge_pairs(req, rs, arena);
        return;
    }
    Kvs__CommandResponse **all = kvs_arena_alloc(arena, (m->nparts + 1) * sizeof(*all));
    Kvs__CommandResponse *own = kvs_arena_alloc(arena, sizeof(*own));
    Kvs__Kvpair **pp = kvs_arena_alloc(arena, n * sizeof(*pp));
    for (size_t i = 0; pp != NULL && i < n; i++)
        if ((pp[i] = info_pair(arena, keys[i], vals[i])) == NULL)
            pp = NULL;
    if (all == NULL || own == NULL || pp == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    kvs__command_response__init(own);
    own->status = KVS_STATUS_OK;
    own->n_pairs = n;
    own->pairs = pp;
    memcpy(all, rs, m->nparts * sizeof(*all));
    all[m->nparts] = own;
    merge_pairs_of(req, all, m->nparts + 1, arena);
}

/* ---- partitioner none: merging "who has it" ----------------------------------- */

/* True when a part's answer to Hget or Hexist says the key is there. */
static int found_one(Kvs__CommandRequest__CommandCase cmd, const Kvs__CommandResponse *r)
{
    if (r->status != KVS_STATUS_OK)
        return 0;
    if (cmd != KVS__COMMAND_REQUEST__COMMAND_HEXIST)
        return 1;
    return r->n_values == 1 && r->values[0]->kind_case == KVS__VALUE__KIND_BOOL_VALUE &&
           r->values[0]->bool_value;
}

/* Hget or Hexist asked of every owning shard: the answer of the shard that
 * has the key, passed through as it came. Otherwise an error a shard gave
 * (other than "not found"), else 503 if a shard could not answer (the key
 * may be there), else one shard's "not found" answer. */
static void merge_found_one(router_req_t *req, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    uint32_t miss = UINT32_MAX, failed = UINT32_MAX;
    Kvs__CommandResponse *error = NULL;
    for (uint32_t i = 0; i < m->nparts; i++) {
        if (m->failed[i] == KVS_STATUS_TOO_LARGE) { /* its answer (the key's?) was dropped */
            router_req_finish_status(req, m->failed[i], "%s", router_merge_part_failure(m, i));
            return;
        }
        if (m->failed[i]) {
            failed = failed == UINT32_MAX ? i : failed;
            continue;
        }
        Kvs__CommandResponse *r =
            kvs__command_response__unpack(&arena->pb, m->answers[i].len, m->answers[i].data);
        if (r == NULL) {
            router_req_finish_status(req, KVS_STATUS_INTERNAL,
                                     "shard %u sent an answer that is not a CommandResponse",
                                     m->part_shard[i]);
            return;
        }
        if (found_one(m->cmd, r)) {
            router_req_set_answer(req, m->answers[i].data, m->answers[i].len);
            router_req_complete(req);
            return;
        }
        if (r->status == KVS_STATUS_NOT_FOUND || r->status == KVS_STATUS_OK)
            miss = miss == UINT32_MAX ? i : miss;
        else if (error == NULL)
            error = r;
    }
    if (error != NULL)
        router_req_finish_status(req, error->status, "%s", error->message);
    else if (failed != UINT32_MAX)
        router_req_finish_status(req, KVS_STATUS_UNAVAILABLE,
                                 "%s (the table has partitioner: none, so its keys may be on any "
                                 "shard that owns one of its partitions; whether this one is "
                                 "stored is unknown until that shard answers)",
                                 router_merge_part_failure(m, failed));
    else {
        router_req_set_answer(req, m->answers[miss].data, m->answers[miss].len);
        router_req_complete(req);
    }
}

/* Hmget or Hmexist asked of every owning shard, each answering for every
 * key: per key, the value of the first shard that has it (Hmget: a Value
 * with a kind; Hmexist: true), else the first shard's "missing". */
static void merge_found_keys(router_req_t *req, Kvs__CommandResponse **rs, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    Kvs__CommandResponse out;
    if (values_answer(req, arena, &out) != 0) /* (a read: merge_failed's plain 500) */
        return;
    for (uint32_t p = 0; p < m->nparts; p++)
        if (rs[p]->n_values != m->nkeys) {
            router_req_finish_status(req, KVS_STATUS_INTERNAL,
                                     "shard %u answered %zu values for %zu keys", m->part_shard[p],
                                     rs[p]->n_values, m->nkeys);
            return;
        }
    for (size_t i = 0; i < m->nkeys; i++) {
        out.values[i] = rs[0]->values[i];
        for (uint32_t p = 0; p < m->nparts; p++) {
            const Kvs__Value *v = rs[p]->values[i];
            if (m->cmd == KVS__COMMAND_REQUEST__COMMAND_HMEXIST
                    ? v->kind_case == KVS__VALUE__KIND_BOOL_VALUE && v->bool_value
                    : v->kind_case != KVS__VALUE__KIND__NOT_SET) {
                out.values[i] = rs[p]->values[i];
                break;
            }
        }
    }
    router_merge_finish_packed(req, &out, kvs_msg_command_name(m->cmd),
                               "ask for fewer keys per request");
}

/* Answers 200 with the count `n` (Hlen, Hclear). */
static void finish_count(router_req_t *req, int64_t n, const char *cmd)
{
    Kvs__Value v = KVS__VALUE__INIT, *vp = &v;
    v.kind_case = KVS__VALUE__KIND_INTEGER_VALUE;
    v.integer_value = n;
    Kvs__CommandResponse out = KVS__COMMAND_RESPONSE__INIT;
    out.status = KVS_STATUS_OK;
    out.values = &vp;
    out.n_values = 1;
    router_merge_finish_packed(req, &out, cmd, "");
}

/* Hlen: the shards' counts added up. */
static void merge_sum(router_req_t *req, Kvs__CommandResponse **rs)
{
    router_merge_t *m = req->merge;
    int64_t sum = 0;
    for (uint32_t i = 0; i < m->nparts; i++) {
        if (rs[i]->n_values != 1 || rs[i]->values[0]->kind_case != KVS__VALUE__KIND_INTEGER_VALUE) {
            router_req_finish_status(req, KVS_STATUS_INTERNAL,
                                     "shard %u sent an Hlen answer without a count",
                                     m->part_shard[i]);
            return;
        }
        sum += rs[i]->values[0]->integer_value;
    }
    finish_count(req, sum, "Hlen");
}

/* Appends text to `out` (a message being built), ignoring what does not
 * fit: the message is cut at a character when it is sent. */
static void text_add(char *out, size_t cap, size_t *at, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void text_add(char *out, size_t cap, size_t *at, const char *fmt, ...)
{
    va_list ap;
    if (*at >= cap - 1)
        return;
    va_start(ap, fmt);
    int n = vsnprintf(out + *at, cap - *at, fmt, ap);
    va_end(ap);
    *at = n < 0 ? *at : *at + (size_t)n < cap ? *at + (size_t)n : cap - 1;
}

/* Hclear: the shards' counts of removed keys added up. Each shard empties
 * its part in one transaction of its own, so when a part failed the table
 * may be partly emptied. When every failed part certainly did nothing
 * (refused, or never sent) and another emptied its part, the answer is
 * 207; when a part may or may not have (sent and its answer lost, or an
 * answer a worker does not give), the first failure's status with
 * outcome_unknown. Either way the message says which shards emptied their
 * part (and how many keys they removed), which did nothing, and which may
 * have. When every part was refused and none may have run, nothing was
 * done anywhere, and the first refusal is the answer, as for any
 * request. */
static void merge_clear(router_req_t *req, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    int64_t sum = 0;
    uint32_t status = 0, emptied = 0, first = 0;
    int unknown = 0;
    Kvs__CommandResponse **rs = kvs_arena_alloc(arena, m->nparts * sizeof(*rs));
    uint8_t *state = kvs_arena_alloc(arena, m->nparts);
    if (rs == NULL || state == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL,
                                 "router out of memory; Hclear may or may not have emptied the "
                                 "table on each shard: read it to find out");
        return;
    }
    for (uint32_t i = 0; i < m->nparts; i++) {
        Kvs__CommandResponse *a = NULL;
        if (!m->failed[i])
            a = kvs__command_response__unpack(&arena->pb, m->answers[i].len, m->answers[i].data);
        rs[i] = a;
        uint32_t st = m->failed[i]                  ? m->failed[i]
                      : a == NULL || a->status == 0 ? KVS_STATUS_INTERNAL
                                                    : a->status;
        if (st == KVS_STATUS_OK &&
            (a->n_values != 1 || a->values[0]->kind_case != KVS__VALUE__KIND_INTEGER_VALUE))
            st = KVS_STATUS_INTERNAL;
        if (st == KVS_STATUS_OK) {
            sum += a->values[0]->integer_value;
            emptied++;
            state[i] = PART_APPLIED;
            continue;
        }
        if (status == 0)
            status = st, first = i;
        /* Sent and its answer lost, or an answer a worker does not give
         * (500 too: a store failure aborts the batch, but a worker's 500
         * does not prove that): it may have run there. */
        if (m->failed[i])
            state[i] = m->tries[i].unsent ? PART_REFUSED : PART_UNKNOWN;
        else
            state[i] = a == NULL || a->outcome_unknown || st == KVS_STATUS_INTERNAL ? PART_UNKNOWN
                                                                                    : PART_REFUSED;
        unknown |= state[i] == PART_UNKNOWN;
    }
    if (m->presence && sum > 0)
        sum = 1; /* (each part answered 1 or 0) */
    if (status == 0) {
        finish_count(req, sum, "Hclear");
        return;
    }
    if (emptied == 0 && !unknown) { /* nothing done anywhere: the first refusal says why */
        router_req_finish_status(req, status, "%s", part_why(m, rs, first));
        return;
    }
    char text[2048], why[304];
    size_t at = 0;
    text_add(text, sizeof(text), &at, "%s emptied the %s on %u of %u shards",
             req->redis ? "DEL" : "Hclear", req->redis ? "hash" : "table", emptied, m->nparts);
    if (!m->presence) /* (presence: not even whether those shards held any) */
        text_add(text, sizeof(text), &at, " (%lld %s removed there)", (long long)sum,
                 req->redis ? "fields" : "keys");
    for (uint32_t i = 0; i < m->nparts; i++) {
        if (state[i] == PART_APPLIED)
            continue;
        const char *text_i = part_why(m, rs, i);
        size_t n = strlen(text_i) < sizeof(why) - 4 ? strlen(text_i) : sizeof(why) - 4;
        memcpy(why, text_i, n); /* cut at a whole character: the answer must be UTF-8 */
        why[kvs_utf8_cut(why, n)] = '\0';
        text_add(text, sizeof(text), &at, "; shard %u %s: %s", m->part_shard[i],
                 state[i] == PART_UNKNOWN ? "may or may not have emptied its part"
                                          : "did not empty its part (nothing done there)",
                 why);
    }
    text_add(text, sizeof(text), &at, "; send it again to empty the rest");
    router_req_status_frame(req, unknown ? status : KVS_STATUS_PARTIAL, unknown, NULL, text,
                            sizeof(text), (int)at);
    router_req_complete(req);
}

/* A value of a part's answer: where its encoded Value lies in the answer. */
typedef struct raw_value_s {
    uint32_t at, len;
} raw_value_t;

/* Lists the values of part `i`'s answer (a CommandResponse holding only
 * status, message, values and, for a split write, its position; answers
 * <= max_frame <= 1 GiB) into v[0..want). Returns 200, its status
 * (finishing `req` with it and its message) when it is not, or 0 when the
 * answer holds anything else (decode it). */
static uint32_t raw_values(router_req_t *req, uint32_t i, raw_value_t *v, size_t want)
{
    router_merge_t *m = req->merge;
    const uint8_t *a = m->answers[i].data, *p = a, *end = a + m->answers[i].len, *x;
    const uint8_t *msg = (const uint8_t *)"";
    uint64_t tag, st = 0;
    size_t n, mlen = 0, count = 0;
    while (p < end) {
        if (kvs_msg_next_field(&p, end, &tag, &x, &n) != 0)
            return 0;
        if (tag == (1 << 3 | 0)) {
            if (kvs_varint_get(&x, x + n, &st) != 0 || st > UINT32_MAX || st == 0)
                return 0;
        } else if (tag == (2 << 3 | 2)) {
            msg = x, mlen = n;
        } else if (tag == (3 << 3 | 2)) {
            if (count < want)
                v[count] = (raw_value_t){(uint32_t)(x - a), (uint32_t)n};
            count++;
        } else if (tag != (6 << 3 | 2) ||
                   !router_merge_is_split_write(m)) { /* position: merged apart */
            return 0;
        }
    }
    if (st == 0)
        return 0; /* no status: merge_keys judges it (a 0 here would mean "decode it") */
    if (st != KVS_STATUS_OK) {
        router_req_finish_status(req, (uint32_t)st, "%.*s", (int)mlen, (const char *)msg);
        return (uint32_t)st;
    }
    if (count < want) {
        merge_failed(req, "shard %u answered %zu values for more keys", m->part_shard[i], count);
        return KVS_STATUS_INTERNAL;
    }
    return KVS_STATUS_OK;
}

/* merge_keys for reads, without decoding: each part's values are copied
 * into the merged answer as the worker encoded them, so a merge costs 8
 * bytes per key besides the answer (decoded, a Value costs some 100).
 * Returns 0 when an answer holds more than status, message and values and
 * must be decoded (merge_keys); 1 when `req` was finished. */
static int merge_keys_raw(router_req_t *req, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    uint32_t *first = kvs_arena_alloc(arena, (m->nparts + 1) * sizeof(*first));
    raw_value_t *v = kvs_arena_alloc(arena, m->nkeys * sizeof(*v));
    if (first == NULL || v == NULL) {
        merge_failed(req, "router out of memory");
        return 1;
    }
    memset(first, 0, (m->nparts + 1) * sizeof(*first));
    for (size_t i = 0; i < m->nkeys; i++)
        first[m->key_part[i] + 1]++;
    for (uint32_t p = 0; p < m->nparts; p++) {
        if (m->failed[p]) {
            router_req_finish_status(req, m->failed[p], "%s", router_merge_part_failure(m, p));
            return 1;
        }
        uint32_t st = raw_values(req, p, v + first[p], first[p + 1]);
        if (st == 0)
            return 0;
        if (st != KVS_STATUS_OK)
            return 1;
        first[p + 1] += first[p];
    }
    uint8_t head[16];
    size_t hl = kvs_varint_put(head, 1 << 3 | 0), size;
    hl += kvs_varint_put(head + hl, KVS_STATUS_OK);
    size = hl;
    for (size_t i = 0; i < m->nkeys; i++) {
        const raw_value_t *x = &v[first[m->key_part[i]] + m->key_index[i]];
        size += 1 + kvs_varint_len(x->len) + x->len;
    }
    kvs_buf_t tok; /* a split write's answer carries every part's position */
    kvs_buf_init(&tok);
    if (router_merge_is_split_write(m))
        merge_positions(req, arena, &tok);
    if (tok.len > 0)
        size += 1 + kvs_varint_len(tok.len) + tok.len;
    router_t *r = m->router;
    req->resp.len = 0;
    if (size > r->cfg->max_frame || size > KVS_FRAME_LEN_MASK ||
        kvs_buf_reserve(&req->resp, KVS_FRAME_HEADER + size) != 0) {
        if (router_merge_is_split_write(m))
            finish_applied_unsent(req, &tok, size > r->cfg->max_frame || size > KVS_FRAME_LEN_MASK);
        else if (size > r->cfg->max_frame || size > KVS_FRAME_LEN_MASK)
            router_req_finish_status(req, KVS_STATUS_TOO_LARGE,
                                     "%s answer would exceed limits.max_frame (%llu bytes); ask "
                                     "for fewer keys per request",
                                     kvs_msg_command_name(m->cmd),
                                     (unsigned long long)r->cfg->max_frame);
        else
            merge_failed(req, "router out of memory");
        kvs_buf_free(&tok);
        return 1;
    }
    uint8_t *o = req->resp.data;
    kvs_frame_put_header(o, (uint32_t)size);
    o += KVS_FRAME_HEADER;
    memcpy(o, head, hl);
    o += hl;
    for (size_t i = 0; i < m->nkeys; i++) {
        uint32_t p = m->key_part[i];
        const raw_value_t *x = &v[first[p] + m->key_index[i]];
        *o++ = 3 << 3 | 2;
        o += kvs_varint_put(o, x->len);
        memcpy(o, m->answers[p].data + x->at, x->len);
        o += x->len;
    }
    if (tok.len > 0) {
        *o++ = 6 << 3 | 2;
        o += kvs_varint_put(o, tok.len);
        memcpy(o, tok.data, tok.len);
    }
    kvs_buf_free(&tok);
    req->resp.len = KVS_FRAME_HEADER + size;
    router_req_complete(req);
    return 1;
}

void router_merge_finish(router_req_t *req)
{
    router_merge_t *m = req->merge;
    kvs_arena_t *arena = &m->router->merge_arena;
    if (m->cmd == KVS__COMMAND_REQUEST__COMMAND_METRICS) {
        merge_metrics(req, arena);
        kvs_arena_reset(arena);
        return;
    }
    if (m->cmd == KVS__COMMAND_REQUEST__COMMAND_HCLEAR) {
        merge_clear(req, arena);
        kvs_arena_reset(arena);
        return;
    }
    if (m->anywhere && (m->cmd == KVS__COMMAND_REQUEST__COMMAND_HGET ||
                        m->cmd == KVS__COMMAND_REQUEST__COMMAND_HEXIST)) {
        merge_found_one(req, arena);
        kvs_arena_reset(arena);
        return;
    }
    if (!m->anywhere && (m->cmd == KVS__COMMAND_REQUEST__COMMAND_HMSET ||
                         m->cmd == KVS__COMMAND_REQUEST__COMMAND_HMDEL)) {
        merge_write(req, arena);
        kvs_arena_reset(arena);
        return;
    }
    if (!m->anywhere &&
        ((m->nkeys > 0 && merge_keys_raw(req, arena)) ||
         (m->cmd == KVS__COMMAND_REQUEST__COMMAND_HGETALL && merge_pairs_raw(req, arena)))) {
        kvs_arena_reset(arena);
        return;
    }
    Kvs__CommandResponse **rs = router_merge_decode_parts(req, arena);
    if (rs != NULL && m->anywhere) {
        merge_found_keys(req, rs, arena);
    } else if (rs != NULL) {
        switch (m->cmd) {
        case KVS__COMMAND_REQUEST__COMMAND_HGETALL:
            merge_pairs(req, rs, arena);
            break;
        case KVS__COMMAND_REQUEST__COMMAND_INFO:
            merge_info(req, rs, arena);
            break;
        case KVS__COMMAND_REQUEST__COMMAND_HLEN:
            merge_sum(req, rs);
            break;
        default:
            merge_keys(req, rs, arena);
            break;
        }
    }
    kvs_arena_reset(arena);
}

/* Every family: the router's, then each worker's that answered. One that
 * did not (no answer within router.timeout, the link down, an error) is
 * left out, as on /metrics: kvs_metrics_source_up{shard} is 0 for it and
 * the answer's message says why. */
static void merge_metrics(router_req_t *req, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    kvs_mb_t b;
    char why[1024], msg[1100];
    size_t wlen = 0;
    why[0] = '\0';
    kvs_mb_init(&b, arena);
    router_ops_metrics(m->router, &b);
    Kvs__MetricFamily *up =
        m->nparts == 0
            ? NULL
            : kvs_mb_family(&b, "kvs_metrics_source_up", KVS__METRIC_FAMILY__TYPE__GAUGE,
                            "1 when the shard's worker answered this Metrics request within "
                            "router.timeout; its metrics are left out when 0.");
    for (uint32_t i = 0; i < m->nparts; i++) {
        Kvs__CommandResponse *a =
            m->failed[i]
                ? NULL
                : kvs__command_response__unpack(&arena->pb, m->answers[i].len, m->answers[i].data);
        int ok = a != NULL && a->status == KVS_STATUS_OK && a->ops != NULL;
        if (up != NULL)
            kvs_mb_sample(&b, up, ok, 1, "shard", kvs_mb_printf(&b, "%u", m->part_shard[i]));
        if (!ok && wlen < sizeof(why)) {
            const char *sep = wlen ? "; " : "";
            char *at = why + wlen;
            size_t room = sizeof(why) - wlen;
            int n;
            if (m->failed[i])
                n = snprintf(at, room, "%s%s", sep, router_merge_part_failure(m, i));
            else if (a == NULL)
                n = snprintf(at, room, "%sshard %u's worker sent an answer that does not decode",
                             sep, m->part_shard[i]);
            else
                n = snprintf(at, room, "%sshard %u's worker answered %u: %s", sep, m->part_shard[i],
                             a->status, a->message != NULL ? a->message : "");
            wlen += n > 0 ? (size_t)n : 0;
        }
        if (!ok)
            continue;
        for (size_t k = 0; k < a->ops->n_metrics; k++)
            kvs_mb_add(&b, a->ops->metrics[k]);
    }
    if (b.failed) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    Kvs__OpsAnswer ops = KVS__OPS_ANSWER__INIT;
    Kvs__CommandResponse out = KVS__COMMAND_RESPONSE__INIT;
    ops.metrics = b.fams;
    ops.n_metrics = b.n;
    out.status = KVS_STATUS_OK;
    if (wlen > 0) {
        snprintf(msg, sizeof(msg), "left out (kvs_metrics_source_up 0): %s", why);
        out.message = msg;
    }
    out.ops = &ops;
    router_merge_finish_packed(req, &out, "Metrics", "raise limits.max_frame");
}

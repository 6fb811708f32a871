/*
 * router_route: where each request goes, and how answers come back.
 *
 *  - Bad input is answered here with kvs_msg_validate, the function the
 *    workers use, so the router's 400s read exactly like a worker's.
 *  - Single-key commands (Hget Hset Hdel Hexist) are forwarded as the
 *    client's raw payload, and the worker's raw answer is passed back: no
 *    re-encoding on the hot path.
 *  - Multi-key commands (Hmget Hmset Hmdel Hmexist) are split per shard
 *    (one sub-request per shard, sent in parallel) and merged back into the
 *    client's key order. Each shard applies its part atomically; there is
 *    no atomicity across shards.
 *  - A split Hmset or Hmdel answers with previous values the router cannot
 *    know in advance, yet 413 must mean nothing was written. So each part
 *    carries an answer budget (plan_write, split_budget), the budgets
 *    adding up to max_frame, and a worker refuses its part, writing
 *    nothing, when its bound of the answer passes the budget: the answers
 *    of the parts that write always fit one merged answer. router_merge
 *    then says what happened: 200; 413 (or the refusal's status) when
 *    every part was refused; 207 listing the keys not written when only
 *    some were; 503 naming what is known of each shard when a part got no
 *    answer.
 *  - Hgetall (and Info) fan out to every shard and k-way merge the pairs
 *    into one key-ordered answer, refused with 413 past limits.max_frame.
 *  - No answer leaves larger than limits.max_frame: merged answers are
 *    packed against it, passed-through ones came over a link whose decoder
 *    stops at it, and an answer the link had to step over for its size
 *    fails that request alone (413 for a read, 500 for a write, which may
 *    have been applied).
 *  - Hscan walks shards one after another. The router's cursor is
 *    'S' + shard (2 bytes, big-endian) + the worker's own cursor.
 *  - A table bound to a topic is placed by its binding's partitioner (the
 *    one its producers use). With `partitioner: none` no function of the
 *    key gives its shard: reads (Hget Hexist Hmget Hmexist) go to every
 *    shard owning one of the table's partitions and the answer is taken
 *    from the shard that has the key; writes are refused (400), since kvs
 *    could not say where a key it wrote belongs, nor find it later beside
 *    the records of the same key the producers place.
 *
 * With users configured, every request is authorized before it is routed
 * (req->who, kvs_auth_check): on the fast path from the peeked table, on
 * the full path after validation, so bad input still gets its 400 and a
 * refused request costs no shard a thing. Auth is the client module's.
 *
 * Replicas: every part goes to one replica of its shard through
 * router_send (router_replica has the policy): a read that fails there is
 * sent again to another replica within the retry budget before its
 * failure is answered (router_route_reply asks router_send_answered
 * first); a write goes to the first live replica and is never resent; a
 * write to a table bound to no topic on a shard with several replicas is
 * refused (400), as there is no single writer. Digest and Snapshot are
 * about one copy and go to workers directly (400 here). Info adds the
 * router's replica counters when some shard has replicas.
 *
 * A request with several parts keeps a router_merge_t; the parts' raw
 * answers are copied in as they arrive, and router_merge answers once all
 * are in (an Hscan page is walked and answered here).
 *
 * Sessions (router_session.h): the positions of a connection's writes to
 * bound tables are noted from their answers (a single part's raw answer is
 * scanned for CommandResponse.position; a split write's parts' positions
 * are merged into its answer) and attached to the connection's later reads
 * of those tables as min_position, merged with any the client gave (a
 * single-key read's bytes get the field appended; other reads are packed
 * again). Reads that come while the connection's bound writes are in
 * flight, and whatever follows them, are held and routed (with positions)
 * from the flusher's `before` step once those writes are answered.
 */
#include "kvs_err.h"
#include "kvs_frame.h"
#include "kvs_log.h"
#include "kvs_place.h"
#include "kvs_pos.h"
#include "kvs_reads.h"
#include "kvs_record.h"
#include "kvs_time.h"
#include "kvs_varint.h"
#include "router.h"
#include "router_merge.h"
#include "router_send.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CURSOR_TAG 'S'

/* ---- request lifecycle ---------------------------------------------------- */

#define REQ_POOL_MAX 4096
#define REQ_KEEP_BUF 16384 /* a recycled request keeps a response buffer this small */

router_req_t *router_req_new(router_t *r, router_client_t *cl)
{
    router_req_t *req = r->free_reqs;
    if (req != NULL) {
        r->free_reqs = req->next;
        r->n_free_reqs--;
        kvs_buf_t keep = req->resp, bytes = req->try0.bytes;
        memset(req, 0, offsetof(router_req_t, table_copy)); /* not the table buffer */
        req->resp = keep;
        req->resp.len = 0;
        req->try0.bytes = bytes;
        req->try0.bytes.len = 0;
    } else if ((req = calloc(1, sizeof(*req))) == NULL) {
        return NULL;
    }
    req->router = r;
    req->client = cl;
    return req;
}

void router_reqs_release(router_t *r)
{
    while (r->free_reqs != NULL) {
        router_req_t *req = r->free_reqs;
        r->free_reqs = req->next;
        kvs_buf_free(&req->resp);
        kvs_buf_free(&req->try0.bytes);
        free(req);
    }
    r->n_free_reqs = 0;
}

router_name_t *router_name_new(const void *p, size_t len)
{
    router_name_t *n = malloc(sizeof(*n) + len + 1);
    if (n == NULL)
        return NULL;
    n->refs = 1;
    memcpy(n->text, p, len);
    n->text[len] = '\0';
    return n;
}

router_name_t *router_name_ref(router_name_t *n)
{
    if (n != NULL)
        n->refs++;
    return n;
}

void router_name_unref(router_name_t *n)
{
    if (n != NULL && --n->refs == 0)
        free(n);
}

void router_req_set_name(router_req_t *req, router_name_t *n)
{
    router_name_t *old = req->name;
    req->name = router_name_ref(n);
    router_name_unref(old);
    req->info.client_name = n != NULL ? n->text : "";
}

/* The merge's kept answers stop counting as its client's output. */
static void merge_unhold(router_req_t *req)
{
    router_merge_t *m = req->merge;
    if (m == NULL || m->held == 0)
        return;
    if (req->client != NULL)
        router_client_hold(req->client, -(ptrdiff_t)m->held);
    m->held = 0;
}

void router_req_free(router_req_t *req)
{
    router_t *r = req->router;
    if (req->wrote_bound && req->client != NULL) /* it leaves its client's FIFO */
        router_client_session(req->client)->queued--;
    merge_unhold(req);
    router_merge_free(req->merge);
    req->merge = NULL;
    free(req->rctx);
    req->rctx = NULL;
    router_name_unref(req->name);
    req->name = NULL;
    kvs_buf_free(&req->held_payload);
    if (req->resp.cap > REQ_KEEP_BUF)
        kvs_buf_free(&req->resp);
    if (req->try0.bytes.cap > REQ_KEEP_BUF)
        kvs_buf_free(&req->try0.bytes);
    if (r->n_free_reqs >= REQ_POOL_MAX) {
        kvs_buf_free(&req->resp);
        kvs_buf_free(&req->try0.bytes);
        free(req);
        return;
    }
    req->next = r->free_reqs;
    r->free_reqs = req;
    r->n_free_reqs++;
}

/* Whether a session with `at` requests at the workers has its fair share
 * of them (router_session.h) and holds further ones. Below the least share
 * no division is needed: the hot path's case. */
static int share_taken(const router_t *r, uint32_t at)
{
    if (at < ROUTER_FAIR_MIN)
        return 0;
    uint32_t busy = r->busy_sessions > 0 ? r->busy_sessions : 1;
    uint64_t total = ROUTER_FAIR_TOTAL > r->orphan_units ? ROUTER_FAIR_TOTAL - r->orphan_units : 0;
    return at >= total / busy;
}

/* Puts `s` on the release list: its held requests may go, as far as
 * release_session finds they may. */
static void release_later(router_t *r, router_session_t *s)
{
    if (s->held == NULL || kvs_list_linked(&s->release_link))
        return;
    kvs_list_push_back(&r->release, &s->release_link);
}

#define NO_SHARD UINT32_MAX

static int is_retryable(Kvs__CommandRequest__CommandCase c);

/* Whether a part of `req` for `shard` would find the shard at its cap
 * (router_replica_capped: a read when every replica that is up is, a
 * write when the one it keeps to is). */
static int shard_capped(const router_t *r, const router_req_t *req, uint32_t shard)
{
    return r->n_capped > 0 &&
           router_replica_capped(r->links, &r->sets[shard], router_now_ms(r),
                                 router_send_start(req, is_retryable(req->cmd)), ROUTER_SHARD_CAP);
}

static int may_read_here(const router_t *r, const router_req_t *req);

/* Whether a part of `req` for `shard` is at its cap and would go to its
 * worker: not when `local`, a read that may be answered from local
 * shards' environments, and `shard` is one (read_here; should that read
 * decline, the part goes all the same: a request over the cap). */
static int capped_part(const router_t *r, const router_req_t *req, uint32_t shard, int local)
{
    return shard_capped(r, req, shard) && !(local && router_local_is_local(r->local, shard));
}

/* How often the shards sessions wait for are looked at (on_cap_recheck). */
#define CAP_RECHECK_MS 100

/* A write held at a cap waits for the replica its connection keeps to,
 * and which one that is changes as replicas are avoided, as their
 * avoidance runs out and as a link's own Ping is answered: no event says
 * the last two. So while sessions wait, their shards' healthy replicas
 * are looked at every CAP_RECHECK_MS, and a shard's waiters released
 * once they changed (those still capped wait again, in order). */
static void on_cap_recheck(uv_timer_t *t)
{
    router_t *r = t->data;
    int waiting = 0;
    for (uint32_t s = 0; s < r->shards; s++) {
        router_set_t *set = &r->sets[s];
        if (kvs_list_empty(&set->cap_wait))
            continue;
        if (router_replica_healthy(r->links, set, router_now_ms(r)) != set->cap_healthy)
            router_route_cap_changed(r, s);
        else
            waiting = 1;
    }
    if (waiting)
        uv_timer_start(t, on_cap_recheck, CAP_RECHECK_MS, 0);
}

int router_route_start(router_t *r)
{
    int rc = uv_timer_init(r->loop, &r->cap_timer);
    if (rc != 0)
        return rc;
    r->cap_timer.data = r;
    r->cap_timer_on = 1;
    uv_unref((uv_handle_t *)&r->cap_timer); /* never keeps the loop running */
    return 0;
}

/* The first request `s` holds waits for `shard` to come below its cap:
 * `s` is released, in turn, once it may have (router_route_cap_changed,
 * on_cap_recheck). A session waits on one shard's list, its first
 * request's. */
static void cap_wait_add(router_t *r, router_session_t *s, uint32_t shard)
{
    router_set_t *set = &r->sets[shard];
    kvs_list_remove(&s->cap_link);
    kvs_list_push_back(&set->cap_wait, &s->cap_link);
    set->cap_healthy = router_replica_healthy(r->links, set, router_now_ms(r));
    if (r->cap_timer_on && !uv_is_active((uv_handle_t *)&r->cap_timer))
        uv_timer_start(&r->cap_timer, on_cap_recheck, CAP_RECHECK_MS, 0);
}

void router_route_cap_changed(router_t *r, uint32_t shard)
{
    if (r->sets == NULL || shard >= r->shards || kvs_list_empty(&r->sets[shard].cap_wait))
        return;
    kvs_list_t *l;
    while ((l = kvs_list_first(&r->sets[shard].cap_wait)) != NULL) {
        router_session_t *s = KVS_LIST_ENTRY(l, router_session_t, cap_link);
        kvs_list_remove(l);
        release_later(r, s);
    }
    kvs_flusher_wake(&r->flusher);
}

/* What a part carrying `q` (NULL: not decoded), `len` bytes encoded,
 * costs a worker in units of the fair share (router_session.h). */
static uint32_t part_cost(const Kvs__CommandRequest *q, size_t len)
{
    size_t keys = 1;
    if (q != NULL) {
        switch (q->command_case) {
        case KVS__COMMAND_REQUEST__COMMAND_HMSET:
            keys = q->hmset->n_pairs;
            break;
        case KVS__COMMAND_REQUEST__COMMAND_HMGET:
            keys = q->hmget->n_keys;
            break;
        case KVS__COMMAND_REQUEST__COMMAND_HMDEL:
            keys = q->hmdel->n_keys;
            break;
        case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
            keys = q->hmexist->n_keys;
            break;
        default:
            break;
        }
    }
    size_t cost = 1 + (keys > 1 ? (keys - 1) / ROUTER_FAIR_KEYS : 0) + len / ROUTER_FAIR_BYTES;
    return cost < ROUTER_FAIR_TOTAL * 64 ? (uint32_t)cost : ROUTER_FAIR_TOTAL * 64;
}

/* Part `t` of `req`, which costs `cost`, goes to a worker: counted in its
 * connection's share until `req` is answered, and on the link it goes out
 * on until the part is (router_send: charge; part_answered). No sum overflows: a
 * request is sent only below the share (1,024), and its parts (at most
 * one per shard, 1,024) cost at most 131,072 each (part_cost and
 * router_session_read_cost, 65,536 each). */
static void count_at_worker(router_t *r, router_req_t *req, router_try_t *t, uint32_t cost)
{
    t->cost = 0;
    if (req->client == NULL)
        return;
    router_session_t *s = router_client_session(req->client);
    if (s->at_workers == 0)
        r->busy_sessions++;
    req->at_worker += cost;
    s->at_workers += cost;
    t->cost = cost;
}

/* Part `t` of `req` is answered (or failed): its units are off its
 * link's, and a write no longer counts among its session's in flight. */
static void part_answered(router_req_t *req, router_try_t *t)
{
    router_send_discharge(req->router, t);
    t->cost = 0;
    router_send_wshard_done(req, t);
}

/* `req` is answered: what it cost is off its connection's share. */
static void at_worker_finished(router_req_t *req)
{
    uint32_t cost = req->at_worker;
    if (cost == 0)
        return;
    req->at_worker = 0;
    router_t *r = req->router;
    if (req->client == NULL) { /* its client went (router_route_orphan): the work was done */
        r->orphan_units -= cost < r->orphan_units ? cost : r->orphan_units;
        return;
    }
    router_session_t *s = router_client_session(req->client);
    if (s->at_workers == 0)
        return;
    s->at_workers -= cost < s->at_workers ? cost : s->at_workers;
    if (s->at_workers == 0 && r->busy_sessions > 0)
        r->busy_sessions--;
    if (s->held != NULL && !kvs_list_linked(&s->cap_link) && !share_taken(r, s->at_workers))
        release_later(r, s); /* (at a shard's cap: released when it comes down) */
}

/* A write to a bound table was answered (or failed): the session's reads
 * held behind it may go once no other is in flight. */
static void write_finished(router_req_t *req)
{
    if (!req->bound_write)
        return;
    req->bound_write = 0;
    if (req->client == NULL)
        return;
    router_session_t *s = router_client_session(req->client);
    if (s->writes > 0)
        s->writes--;
    if (s->writes == 0)
        release_later(req->router, s);
}

void router_req_note_position(router_req_t *req, const uint8_t *tok, size_t len)
{
    if (req->client != NULL && len > 0 &&
        router_session_note(router_client_session(req->client), req->router->cfg, tok, len) != 0)
        kvs_warn("out of memory noting a write's position: a later read on the same connection "
                 "may not see it");
}

static void req_executed(router_req_t *req);

/* `req` is answered: the session's reads of local shards need no longer go
 * to the workers behind it (router_session.h). */
static void forward_finished(router_req_t *req)
{
    if (!req->fwd_local)
        return;
    req->fwd_local = 0;
    if (req->client != NULL) {
        router_session_t *s = router_client_session(req->client);
        if (s->forwarded > 0)
            s->forwarded--;
    }
}

/* `req` is answered (or failed): what its session counted of it while it
 * was out (bound writes, local forwards, the fair share) is given back. */
static void session_answered(router_req_t *req)
{
    /* Every part's answer took its units off its shard (router_route_reply):
     * none is left, unless a request ended with a part still out. */
    part_answered(req, &req->try0);
    for (uint32_t i = 0; req->merge != NULL && i < req->merge->nparts; i++)
        part_answered(req, &req->merge->tries[i]);
    write_finished(req);
    forward_finished(req);
    at_worker_finished(req);
}

void router_req_complete(router_req_t *req)
{
    if (req->merge != NULL) /* merging took time of its own: the hooks' clock must see it */
        req->router->flusher.now_ns = kvs_now_ns();
    req->done = 1;
    session_answered(req);
    merge_unhold(req);
    router_merge_free(req->merge);
    req->merge = NULL;
    req_executed(req);
    if (req->client == NULL) {
        if (req->in_route)
            return; /* the caller (router_route's) checks req->done */
        if (req->on_done != NULL)
            req->on_done(req); /* an internal request: its owner takes the answer */
        else
            router_req_free(req); /* its client left; nobody wants the answer */
        return;
    }
    if (!req->in_route)
        router_client_req_done(req->client, req);
}

/* Ends text[0..n) (n = what snprintf reported) within `cap` bytes and
 * `max` bytes of text, at a whole UTF-8 character: a message cut in the
 * middle of one would not be a valid protobuf string, and one larger than
 * the frame could not be sent. */
static void cut_text(char *text, int n, size_t cap, size_t max)
{
    size_t end = n < 0 ? 0 : (size_t)n;
    if (end >= cap)
        end = cap - 1;
    if (end > max)
        end = max;
    text[kvs_utf8_cut(text, end)] = '\0';
}

/* Room for a message in an answer of at most max_frame bytes that holds
 * little else (a status). */
static size_t message_room(const router_t *r)
{
    return (size_t)r->cfg->max_frame - 64;
}

void router_req_cut_message(const router_t *r, char *text, int n, size_t cap)
{
    cut_text(text, n, cap, message_room(r));
}

void router_req_status_frame(router_req_t *req, uint32_t status, int unknown, const kvs_buf_t *tok,
                             char *text, size_t cap, int n)
{
    size_t room = message_room(req->router), toklen = tok != NULL ? tok->len : 0;
    cut_text(text, n, cap, toklen + 16 < room ? room - toklen - 16 : 0);
    Kvs__CommandResponse resp = KVS__COMMAND_RESPONSE__INIT;
    resp.status = status;
    resp.message = text;
    resp.outcome_unknown = unknown != 0;
    if (toklen > 0) {
        resp.position.data = tok->data;
        resp.position.len = toklen;
    }
    req->resp.len = 0;
    req->raw = 0;
    if (kvs_msg_append(&req->resp, &resp.base, SIZE_MAX) != 0)
        req->resp.len = 0; /* out of memory: the client gets nothing and is closed */
}

void router_req_finish_status(router_req_t *req, uint32_t status, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    router_req_status_frame(req, status, 0, NULL, text, sizeof(text), n);
    router_req_complete(req);
}

/* ---- hooks ------------------------------------------------------------------------ */

/* Does the RESP reply in `b` start with `code`? */
static int raw_error_is(const kvs_buf_t *b, const char *code)
{
    size_t n = strlen(code);
    return b->len >= n && memcmp(b->data, code, n) == 0;
}

/* The status of the answer in req->resp: a frame, or a RESP reply (an
 * error reply counts as the status the front door gave it, else 400;
 * NOAUTH and WRONGPASS as 401). */
static uint32_t resp_status(const router_req_t *req)
{
    const kvs_buf_t *b = &req->resp;
    if (req->raw) {      /* a RESP reply the front door made: its error code says which */
        if (b->len == 0) /* none could be written (out of memory): the client is closed */
            return KVS_STATUS_INTERNAL;
        if (b->data[0] != '-')
            return KVS_STATUS_OK;
        if (req->rstatus != 0)
            return req->rstatus;
        if (raw_error_is(b, "-NOAUTH ") || raw_error_is(b, "-WRONGPASS "))
            return KVS_STATUS_UNAUTHENTICATED;
        return KVS_STATUS_BAD_REQUEST;
    }
    if (b->len <= KVS_FRAME_HEADER)
        return KVS_STATUS_INTERNAL;
    return kvs_msg_answer_status(b->data + KVS_FRAME_HEADER, b->len - KVS_FRAME_HEADER);
}

/* Replaces the answer of `req`, answer[0..len) (it may lie in req->resp),
 * with the status `st` and message msg[0..cap) a hook stopped it with. A
 * write's replacement keeps what the answer said of whether the write
 * happened (kvs_msg_replaced_outcome): the hook runs after the write was
 * applied, or sent, and its error must not tell the client that nothing
 * was written. */
static void hook_replace(router_req_t *req, uint32_t st, char *msg, size_t cap,
                         const uint8_t *answer, size_t len)
{
    /* A RESP reply (raw) is one the router made itself: no write ran. */
    int write = req->info.write && !req->raw;
    kvs_buf_t tok; /* a copy: router_req_status_frame overwrites req->resp */
    kvs_buf_init(&tok);
    int unknown = write ? kvs_msg_replaced_keep(answer, len, &tok) : 0;
    req->info.status = st;
    router_req_status_frame(req, st, unknown, &tok, msg, cap, (int)strlen(msg));
    kvs_buf_free(&tok);
}

/* EXECUTED, once per request, when its answer is complete in req->resp: a
 * hook may replace the answer with its own status. */
static void req_executed(router_req_t *req)
{
    router_t *r = req->router;
    char msg[KVS_HOOK_MSG];
    if (req->internal || req->executed)
        return;
    req->executed = 1;
    req->info.status = resp_status(req);
    if (req->stopped || !kvs_hook_any(&r->chain, KVS_HOOK_EXECUTED))
        return;
    req->info.now_ns = kvs_now_ns();
    uint32_t st = kvs_hook_run(&r->chain, KVS_HOOK_EXECUTED, &req->info, msg, sizeof(msg));
    if (st == 0)
        return;
    const kvs_buf_t *b = &req->resp;
    size_t len = b->len > KVS_FRAME_HEADER ? b->len - KVS_FRAME_HEADER : 0;
    hook_replace(req, st, msg, sizeof(msg), len > 0 ? b->data + KVS_FRAME_HEADER : NULL, len);
}

/* ---- answers ----------------------------------------------------------------- */

void router_req_set_answer(router_req_t *req, const uint8_t *payload, size_t len)
{
    uint8_t hdr[KVS_FRAME_HEADER];
    kvs_frame_put_header(hdr, (uint32_t)len);
    req->resp.len = 0;
    if (kvs_buf_append(&req->resp, hdr, sizeof(hdr)) != 0 ||
        kvs_buf_append(&req->resp, payload, len) != 0)
        req->resp.len = 0;
}

static void merge_finished(router_req_t *req);

/* Hgetall and Hscan: a part's answer is its shard's share of the table. */
static int is_whole_read(Kvs__CommandRequest__CommandCase c)
{
    return c == KVS__COMMAND_REQUEST__COMMAND_HGETALL || c == KVS__COMMAND_REQUEST__COMMAND_HSCAN;
}

/* Reads: sent again to another replica when the first fails them. */
static int is_retryable(Kvs__CommandRequest__CommandCase c)
{
    switch (c) {
    case KVS__COMMAND_REQUEST__COMMAND_HGET:
    case KVS__COMMAND_REQUEST__COMMAND_HEXIST:
    case KVS__COMMAND_REQUEST__COMMAND_HMGET:
    case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
    case KVS__COMMAND_REQUEST__COMMAND_HGETALL:
    case KVS__COMMAND_REQUEST__COMMAND_HSCAN:
    case KVS__COMMAND_REQUEST__COMMAND_HLEN:
    case KVS__COMMAND_REQUEST__COMMAND_INFO:
        return 1;
    default:
        return 0;
    }
}

/* Whether a write to a table bound to no topic would go to a shard with
 * several replicas: there is no single writer (each replica would hold
 * what was written to it alone). */
static int unbound_replicated(const router_t *r, Kvs__CommandRequest__CommandCase cmd,
                              uint32_t shard)
{
    return kvs_msg_is_write(cmd) && r->sets != NULL && r->sets[shard].n >= 2;
}

/* Refuses (400) a write to a table bound to no topic on a shard with
 * several replicas (unbound_replicated), the decoded request `q`. A write
 * with a pair too large to store gets that pair's 413 first, as it would
 * at any other time and from a worker refusing the same write. Returns 1
 * when `req` was refused. */
static int unbound_refused(router_t *r, router_req_t *req, const Kvs__CommandRequest *q,
                           const void *table, size_t tlen, uint32_t shard)
{
    Kvs__CommandRequest__CommandCase cmd = q->command_case;
    if (!unbound_replicated(r, cmd, shard))
        return 0;
    size_t klen, vlen;
    kvs_msg_largest_pair(q, NULL, &klen, &vlen);
    if (klen + vlen > kvs_msg_pair_max(r->cfg->max_frame)) {
        router_req_finish_status(req, KVS_STATUS_TOO_LARGE, KVS_MSG_PAIR_TOO_LARGE,
                                 KVS_MSG_PAIR_TOO_LARGE_ARGS(r->cfg->max_frame, klen, vlen));
        return 1;
    }
    int n = tlen > 200 ? 200 : (int)tlen;
    router_req_finish_status(req, KVS_STATUS_BAD_REQUEST,
                             "%s: table \"%.*s\" is bound to no Kafka topic, and shard %u has %u "
                             "replicas: a write to an unbound table would reach one copy only. "
                             "Bind the table to a topic (kafka.bindings) so every replica applies "
                             "its writes, or serve shard %u from one node; nothing was written",
                             kvs_msg_command_name(cmd), n, (const char *)table, shard,
                             r->sets[shard].n, shard);
    return 1;
}

/* The status of a request that got no answer (see router_link_reply_cb):
 * 503 when the link failed; when the answer came but was dropped for its
 * size, 413 for a read (nothing changed) and 500 for a write (it may have
 * been applied, so 413 would say too much). A request too large to send
 * (`unsent`, with its own length) is 413: nothing ran. */
static uint32_t failure_status(Kvs__CommandRequest__CommandCase cmd, size_t len, int unsent)
{
    if (len == 0)
        return KVS_STATUS_UNAVAILABLE;
    return kvs_msg_is_write(cmd) && !unsent ? KVS_STATUS_INTERNAL : KVS_STATUS_TOO_LARGE;
}

/* EXECUTED for an answer passed through as the worker sent it. Returns 1
 * when a hook replaced it (`req` is then answered). */
static int passthrough_executed(router_req_t *req, uint32_t status, const uint8_t *payload,
                                size_t len)
{
    router_t *r = req->router;
    char msg[KVS_HOOK_MSG];
    if (req->internal || req->executed)
        return 0;
    req->executed = 1;
    req->info.status = status;
    if (req->stopped || !kvs_hook_any(&r->chain, KVS_HOOK_EXECUTED))
        return 0;
    req->info.now_ns = kvs_now_ns();
    uint32_t st = kvs_hook_run(&r->chain, KVS_HOOK_EXECUTED, &req->info, msg, sizeof(msg));
    if (st == 0)
        return 0;
    hook_replace(req, st, msg, sizeof(msg), payload, len);
    router_req_complete(req);
    return 1;
}

/* A worker's answer's status, which every one has: read from its first
 * field (protobuf-c writes it first), or, when that is not one, from the
 * whole answer decoded within kvs_msg_decode_budget (another encoder's
 * order; a peer's flood of tiny fields costs no more than a request's).
 * 0 when it has none. */
static uint32_t answer_status(const uint8_t *payload, size_t len)
{
    uint32_t st = kvs_msg_answer_status(payload, len);
    if (st != 0)
        return st;
    Kvs__CommandResponse *r = kvs_msg_decode_response(NULL, payload, len, NULL);
    st = r != NULL ? r->status : 0;
    kvs__command_response__free_unpacked(r, NULL);
    return st;
}

void router_route_reply(void *ctx, uint32_t part, const uint8_t *payload, size_t len,
                        const char *failure)
{
    router_req_t *req = ctx;
    if (req == NULL)
        return; /* an internal probe */
    router_merge_t *m = req->merge;
    router_try_t *t = m != NULL ? &m->tries[part] : &req->try0;
    if (router_send_answered(req->router, req, t, part, payload, len, failure))
        return; /* sent to another replica: its answer comes later */
    part_answered(req, t);
    /* Not an answer a worker gives: it proves nothing (a write may have
     * run there: its failure says so). */
    char why[160];
    uint32_t bad = 0, status = failure == NULL ? answer_status(payload, len) : 0;
    if (t->value_keys > 0 && status != 0 && req->client != NULL)
        router_session_note_read(router_client_session(req->client),
                                 status == KVS_STATUS_TOO_LARGE
                                     ? req->router->cfg->max_frame /* read that far, then refused */
                                     : len,
                                 t->value_keys, is_whole_read(req->cmd));
    if (failure == NULL && status == 0) {
        snprintf(why, sizeof(why),
                 "shard %u sent an answer that is not a CommandResponse (it has no status)",
                 m != NULL ? m->part_shard[part] : t->shard);
        failure = why;
        bad = KVS_STATUS_INTERNAL;
    }
    if (m == NULL) { /* single part: pass the worker's answer through */
        const uint8_t *tok;
        size_t toklen;
        if (req->bound_write && failure == NULL &&
            kvs_msg_find_bytes(payload, len, 6, &tok, &toklen) == 1) /* position */
            router_req_note_position(req, tok, toklen);
        session_answered(req);
        if (failure != NULL && kvs_msg_is_write(req->cmd) &&
            !t->unsent) { /* sent: it may have run */
            /* Said in words too: a Redis client sees only the message.
             * A link that timed out says it already. */
            const char *tail = len > 0 ? "; the write may have been applied there"
                               : strstr(failure, "may or may not") != NULL
                                   ? ""
                                   : "; the write may or may not have been applied";
            char text[1024];
            int n = snprintf(text, sizeof(text), "%s%s", failure, tail);
            router_req_status_frame(req, bad ? bad : failure_status(req->cmd, len, 0), 1, NULL,
                                    text, sizeof(text), n);
            router_req_complete(req);
        } else if (failure != NULL)
            router_req_finish_status(req, bad ? bad : failure_status(req->cmd, len, t->unsent),
                                     "%s", failure);
        else if (!passthrough_executed(req, status, payload, len) &&
                 (req->client == NULL || req->in_route ||
                  !router_client_deliver(req->client, req, payload, len))) {
            router_req_set_answer(req, payload, len);
            router_req_complete(req);
        }
        return;
    }
    kvs_buf_t *a = &m->answers[part];
    a->len = 0;
    if (req->client == NULL && req->on_done == NULL) {
        /* Its client left: nobody reads the merged answer, so no part's
         * is kept (a slow shard would have the others' wait in memory),
         * only a failure's status. Once all answered, a part with no
         * failure and no answer kept answered 200 after the client left. */
        uint32_t st = bad ? bad : failure != NULL ? failure_status(m->cmd, len, t->unsent) : status;
        if (st != KVS_STATUS_OK)
            m->failed[part] = st;
        if (--req->parts_left > 0)
            return;
        uint32_t first = 0, ok = 0;
        for (uint32_t i = 0; i < m->nparts; i++) {
            uint32_t was = m->failed[i] ? m->failed[i]
                           : m->answers[i].len == 0
                               ? KVS_STATUS_OK
                               : answer_status(m->answers[i].data, m->answers[i].len);
            ok += was == KVS_STATUS_OK;
            if (was != KVS_STATUS_OK && first == 0)
                first = was;
        }
        router_req_finish_status(req,
                                 first == 0                                 ? KVS_STATUS_OK
                                 : ok > 0 && router_merge_is_split_write(m) ? KVS_STATUS_PARTIAL
                                                                            : first,
                                 "the client went away before every shard answered");
        return;
    }
    if (failure != NULL) {
        m->failed[part] = bad ? bad : failure_status(m->cmd, len, t->unsent);
        if (kvs_buf_append(a, failure, strlen(failure) + 1) != 0)
            a->len = 0; /* router_merge_part_failure says "router out of memory" */
    } else if (kvs_buf_append(a, payload, len) != 0) {
        /* The answer is lost: the part failed (a write part was sent, so
         * it may have been applied: the merge says so). */
        a->len = 0;
        m->failed[part] = KVS_STATUS_INTERNAL;
    } else if (req->parts_left > 1 && req->client != NULL) {
        /* Kept for the parts still out: the client's output (it is
         * paused at the high-water mark, closed past the limit). */
        m->held += len;
        router_client_hold(req->client, (ptrdiff_t)len);
    }
    if (--req->parts_left == 0)
        merge_finished(req);
}

/* An Hscan page goes on to the next shard while the shard walked ended
 * before `count` pairs, up to this many shards per page, while the pages
 * kept stay within limits.max_frame / SCAN_KEEP_DIV and for half a
 * router.timeout from the page's start (so a small table is one page, as
 * Redis answers a small hash in one HSCAN, and the request holds little
 * more, and takes little longer, than it did one shard at a time). */
#define SCAN_HOPS_MAX 16
#define SCAN_KEEP_DIV 4

static void send_part(router_t *r, router_req_t *req, uint32_t part, uint32_t shard,
                      const ProtobufCMessage *msg, const uint8_t *raw, size_t rawlen,
                      const Kvs__CommandRequest *q);

/* Keeps the answer of the shard just walked and asks shard `next` for the
 * rest of the page. Returns 0 when sent (its answer may have come, and
 * `req` been answered, before this returns: touch neither after), or -1
 * when it could not be asked (out of memory; the page ends here). */
static int scan_next(router_req_t *req, uint32_t next, uint32_t pairs)
{
    router_merge_t *m = req->merge;
    kvs_buf_t *a = &m->answers[0];
    uint8_t len[4] = {(uint8_t)(a->len >> 24), (uint8_t)(a->len >> 16), (uint8_t)(a->len >> 8),
                      (uint8_t)a->len};
    size_t mark = m->scan_pages.len;
    if (kvs_buf_append(&m->scan_pages, len, sizeof(len)) != 0 ||
        kvs_buf_append(&m->scan_pages, a->data, a->len) != 0) {
        m->scan_pages.len = mark;
        return -1;
    }
    Kvs__CommandRequest *sub = kvs__command_request__unpack(
        NULL, m->scan_req.len - KVS_FRAME_HEADER, m->scan_req.data + KVS_FRAME_HEADER);
    if (sub == NULL) {
        m->scan_pages.len = mark;
        return -1;
    }
    m->scan_pairs += pairs;
    m->scan_hops++;
    sub->hscan->count = m->scan_count - m->scan_pairs;
    m->part_shard[0] = next;
    req->parts_left = 1;
    send_part(m->router, req, 0, next, &sub->base, NULL, 0, NULL);
    kvs__command_request__free_unpacked(sub, NULL);
    return 0;
}

/* The pages kept by scan_next before `w` (the last shard's), decoded, with
 * w's pairs after theirs: 0, or -1 (out of memory, or a kept page that
 * does not decode: not possible, it decoded when kept). */
static int scan_join(router_merge_t *m, Kvs__CommandResponse *w, kvs_arena_t *arena)
{
    size_t n = m->scan_pairs + w->n_pairs, k = 0;
    Kvs__Kvpair **pp = kvs_arena_alloc(arena, (n ? n : 1) * sizeof(*pp));
    if (pp == NULL)
        return -1;
    const uint8_t *p = m->scan_pages.data, *end = p + m->scan_pages.len;
    while (p < end) {
        size_t len = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
        Kvs__CommandResponse *page = kvs__command_response__unpack(&arena->pb, len, p + 4);
        if (page == NULL || k + page->n_pairs > n)
            return -1;
        if (page->n_pairs > 0)
            memcpy(pp + k, page->pairs, page->n_pairs * sizeof(*pp));
        k += page->n_pairs;
        p += 4 + len;
    }
    if (w->n_pairs > 0)
        memcpy(pp + k, w->pairs, w->n_pairs * sizeof(*pp));
    w->pairs = pp;
    w->n_pairs = k + w->n_pairs;
    return 0;
}

/* A page that went on to shard part_shard[0], which did not answer it
 * (down, or an error status): it ends with the earlier shards' pairs, and
 * the next page starts that shard, whose own answer then says what is
 * wrong. Returns 1 when it did so. */
static int scan_cut(router_req_t *req, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    if (m->scan_pages.len == 0)
        return 0;
    /* The status alone (protobuf-c writes it first): decoding the answer
     * here, as router_merge_decode_parts does next, would hold it decoded twice. */
    if (!m->failed[0] && router_send_status(m->answers[0].data, m->answers[0].len) == KVS_STATUS_OK)
        return 0;
    uint32_t shard = m->part_shard[0];
    uint8_t *c = kvs_arena_alloc(arena, 3);
    Kvs__CommandResponse own = KVS__COMMAND_RESPONSE__INIT;
    own.status = KVS_STATUS_OK;
    if (c == NULL || scan_join(m, &own, arena) != 0) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return 1;
    }
    c[0] = CURSOR_TAG;
    c[1] = (uint8_t)(shard >> 8);
    c[2] = (uint8_t)shard;
    own.cursor.data = c;
    own.cursor.len = 3;
    router_merge_finish_packed(req, &own, "Hscan", "ask for a smaller count");
    return 1;
}

/* Rewrites a worker's Hscan cursor into the router's; a page whose shard
 * ended early goes on with the next shard (scan_next). */
static void merge_scan(router_req_t *req, Kvs__CommandResponse **rs, kvs_arena_t *arena)
{
    router_merge_t *m = req->merge;
    Kvs__CommandResponse *w = rs[0];
    uint32_t shard = m->part_shard[0], next = shard;
    ProtobufCBinaryData inner = w->cursor;
    if (inner.len > KVS_CURSOR_MAX - 3) { /* the router's would be refused when sent back */
        router_req_finish_status(req, KVS_STATUS_INTERNAL,
                                 "shard %u answered an Hscan cursor of %zu bytes, longer than any "
                                 "cursor it takes back (%u bytes): the walk cannot go on",
                                 shard, inner.len, KVS_CURSOR_MAX);
        return;
    }
    if (inner.len == 0) {
        next = shard + 1; /* this shard is done */
        inner.data = NULL;
        size_t kept = m->scan_pages.len + 4 + m->answers[0].len;
        /* Not for a client gone (req->client NULL): nobody takes the page.
         * Nor once the client sent a request naming a table after this one
         * (pipelined, router_client_table_after): it may have run at the
         * next shard already, a write the page must not show, or a read
         * that showed that shard older than the page would (pipelined
         * commands run in order: an answer never shows what a later one
         * does not). The page ends at the shard boundary, and its cursor
         * starts the next one. A request after it that was not yet read
         * when the page went on goes behind the page's part on the link
         * (a connection with requests at a worker reads local shards
         * there too), or names a shard the page has not reached yet: the
         * next boundary sees it. A Ping or Info shows no table: the page
         * goes on. Nor into a shard at its cap (unless read here): the
         * next page's hold waits for it (capped_for). */
        if (req->client != NULL && !router_client_table_after(req->client, req) &&
            m->scan_req.len > 0 && next < m->router->shards &&
            !capped_part(m->router, req, next, may_read_here(m->router, req)) &&
            m->scan_pairs + w->n_pairs < m->scan_count && m->scan_hops + 1 < SCAN_HOPS_MAX &&
            kept <= m->router->cfg->max_frame / SCAN_KEEP_DIV && kvs_now_ns() < m->scan_until &&
            scan_next(req, next, (uint32_t)w->n_pairs) == 0)
            return; /* req may be answered already */
    }
    if (m->scan_pages.len > 0) {
        size_t own = w->n_pairs;
        if (scan_join(m, w, arena) != 0) {
            router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
            return;
        }
        /* + 5: the router's cursor is 3 bytes longer and its length may
         * take one more; where the worker's was empty (absent), it is a
         * field of 5 bytes (tag, length, shard) */
        if (protobuf_c_message_get_packed_size(&w->base) + 5 > m->router->cfg->max_frame) {
            /* This shard's pairs do not fit beside the earlier ones': the
             * page ends before them, and the next one starts this shard. */
            w->n_pairs -= own;
            next = shard;
            inner.data = NULL;
            inner.len = 0;
        }
    }
    if (next < m->router->shards) {
        uint8_t *c = kvs_arena_alloc(arena, 3 + inner.len);
        if (c == NULL) {
            router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
            return;
        }
        c[0] = CURSOR_TAG;
        c[1] = (uint8_t)(next >> 8);
        c[2] = (uint8_t)next;
        if (inner.len > 0)
            memcpy(c + 3, inner.data, inner.len);
        w->cursor.data = c;
        w->cursor.len = 3 + inner.len;
    } else {
        w->cursor.len = 0;
        w->cursor.data = NULL;
    }
    router_merge_finish_packed(req, w, "Hscan", "ask for a smaller count");
}

/* Every part of req->merge is in: an Hscan page ends here (or goes on
 * to the next shard), any other merge is router_merge's. */
static void merge_finished(router_req_t *req)
{
    if (req->merge->cmd != KVS__COMMAND_REQUEST__COMMAND_HSCAN) {
        router_merge_finish(req);
        return;
    }
    kvs_arena_t *arena = &req->router->merge_arena; /* req may be answered and freed below */
    if (!scan_cut(req, arena)) {
        Kvs__CommandResponse **rs = router_merge_decode_parts(req, arena);
        if (rs != NULL)
            merge_scan(req, rs, arena);
    }
    kvs_arena_reset(arena);
}

/* ---- sending -------------------------------------------------------------------- */

static const kvs_binding_t *table_binding(const router_t *r, const void *table, size_t len)
{
    return r->cfg->n_bindings > 0 ? kvs_config_binding_n(r->cfg, table, len) : NULL;
}

/* Whether a read of `req` may be answered from a local environment now:
 * not while a request of its connection is with a local worker, which
 * must be answered first (router_session.h). */
static int may_read_here(const router_t *r, const router_req_t *req)
{
    return r->local != NULL && req->client != NULL &&
           router_client_session(req->client)->forwarded == 0;
}

/* Answers part `part` of `req` (the decoded request `q` for `shard`) from
 * the shard's environment, when it is a local read that may be (see
 * router_local.h). Returns 1 when it was. */
static int read_here(router_t *r, router_req_t *req, uint32_t part, uint32_t shard,
                     const Kvs__CommandRequest *q)
{
    if (q == NULL || !may_read_here(r, req) || !kvs_reads_is_read(q->command_case))
        return 0;
    const char *table = kvs_msg_request_table(q);
    const kvs_binding_t *b = table != NULL ? table_binding(r, table, strlen(table)) : NULL;
    if (req->merge == NULL) { /* the answer is the client's: built where it is kept */
        req->resp.len = 0;
        if (!router_local_read(r->local, shard, q, b, &req->resp))
            return 0;
        router_req_complete(req);
        return 1;
    }
    kvs_buf_t *out = &r->local_out;
    out->len = 0;
    int done = router_local_read(r->local, shard, q, b, out);
    if (done)
        router_route_reply(req, part, out->data + KVS_FRAME_HEADER, out->len - KVS_FRAME_HEADER,
                           NULL);
    if (out->cap > REQ_KEEP_BUF) /* copied: one large answer is not kept for good */
        kvs_buf_free(out);
    return done;
}

/* A part goes to a local worker: until `req` is answered, its connection's
 * reads of local shards go to the workers too. */
static void count_forward(router_t *r, router_req_t *req, uint32_t shard)
{
    if (r->local == NULL || req->fwd_local || req->client == NULL ||
        !router_local_is_local(r->local, shard))
        return;
    req->fwd_local = 1;
    router_client_session(req->client)->forwarded++;
}

/* Sends part `part` to a replica of `shard` (`q`: the request it carries,
 * decoded, or NULL), or answers it here when it is a local read; when no
 * replica takes it, the part fails at once. */
static void send_part(router_t *r, router_req_t *req, uint32_t part, uint32_t shard,
                      const ProtobufCMessage *msg, const uint8_t *raw, size_t rawlen,
                      const Kvs__CommandRequest *q)
{
    const Kvs__CommandRequest *m = msg != NULL ? (const Kvs__CommandRequest *)msg : q;
    if (read_here(r, req, part, shard, m))
        return;
    count_forward(r, req, shard);
    router_try_t *t = req->merge != NULL ? &req->merge->tries[part] : &req->try0;
    uint32_t cost =
        msg != NULL ? part_cost(m, protobuf_c_message_get_packed_size(msg)) : part_cost(q, rawlen);
    int whole = is_whole_read(req->cmd);
    t->value_keys = req->cmd == KVS__COMMAND_REQUEST__COMMAND_HMGET && m != NULL &&
                            m->command_case == KVS__COMMAND_REQUEST__COMMAND_HMGET
                        ? (uint32_t)m->hmget->n_keys
                        : req->cmd == KVS__COMMAND_REQUEST__COMMAND_HGET ||
                              req->cmd == KVS__COMMAND_REQUEST__COMMAND_HMGET || whole;
    /* What its answer may cost: a few bytes, or MiB */
    if (t->value_keys > 0 && req->client != NULL)
        cost += router_session_read_cost(router_client_session(req->client), t->value_keys, whole);
    count_at_worker(r, req, t, cost);
    router_send_part(r, req, t, part, shard, msg, raw, rawlen, is_retryable(req->cmd));
}

/* The shard of `key` in a table with binding `b` (NULL: bound to no topic,
 * placed by murmur2 over cluster.partitions). A table bound to a topic is
 * placed by the topic's partition count and its producers' partitioner, so
 * a key lands on the shard that ingests its partition. b->partitioner must
 * not be none. */
static uint32_t place_key(const router_t *r, const kvs_binding_t *b, const void *key, size_t len)
{
    if (b == NULL)
        return kvs_place_key_shard(key, len, r->cfg->partitions, r->shards);
    uint32_t partitions = b->partitions > 0 ? b->partitions : r->cfg->partitions;
    return kvs_place_shard(kvs_place_partition_by(b->partitioner, key, len, partitions), r->shards);
}

/* The keys of a multi-key request, whatever its type. */
static size_t request_keys(const Kvs__CommandRequest *q, const ProtobufCBinaryData **keys)
{
    switch (q->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HMGET:
        *keys = q->hmget->keys;
        return q->hmget->n_keys;
    case KVS__COMMAND_REQUEST__COMMAND_HMDEL:
        *keys = q->hmdel->keys;
        return q->hmdel->n_keys;
    case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
        *keys = q->hmexist->keys;
        return q->hmexist->n_keys;
    default:
        *keys = NULL;
        return 0;
    }
}

static const ProtobufCBinaryData *nth_key(const Kvs__CommandRequest *q, size_t i)
{
    const ProtobufCBinaryData *keys;
    if (q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMSET)
        return &q->hmset->pairs[i]->key;
    request_keys(q, &keys);
    return &keys[i];
}

static size_t nkeys_of(const Kvs__CommandRequest *q)
{
    const ProtobufCBinaryData *keys;
    if (q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMSET)
        return q->hmset->n_pairs;
    return request_keys(q, &keys);
}

/* Builds the sub-request holding keys sel[0..n) of `q`, in arena memory;
 * an Hmset or Hmdel part gets answer_budget `budget`. */
static int build_subrequest(router_t *r, const Kvs__CommandRequest *q, const size_t *sel, size_t n,
                            uint32_t budget, Kvs__CommandRequest *sub)
{
    kvs_arena_t *a = &r->arena;
    kvs__command_request__init(sub);
    sub->command_case = q->command_case;
    sub->min_position = q->min_position; /* every part reads at least as fresh */
    sub->accept_stale = q->accept_stale;
    sub->value_lengths = q->value_lengths;
    sub->presence_only = q->presence_only;
    if (q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMSET) {
        Kvs__Hmset *m = kvs_arena_alloc(a, sizeof(*m));
        Kvs__Kvpair **pairs = kvs_arena_alloc(a, n * sizeof(*pairs));
        if (m == NULL || pairs == NULL)
            return -ENOMEM;
        kvs__hmset__init(m);
        m->table = q->hmset->table;
        for (size_t i = 0; i < n; i++)
            pairs[i] = q->hmset->pairs[sel[i]];
        m->pairs = pairs;
        m->n_pairs = n;
        m->answer_budget = budget;
        sub->hmset = m;
        return 0;
    }
    /* Hmget, Hmdel and Hmexist begin alike: {table, repeated keys} (Hmdel
     * has answer_budget after them). */
    const ProtobufCMessageDescriptor *d =
        q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMGET   ? &kvs__hmget__descriptor
        : q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMDEL ? &kvs__hmdel__descriptor
                                                                 : &kvs__hmexist__descriptor;
    Kvs__Hmget *m = kvs_arena_alloc(a, d->sizeof_message);
    ProtobufCBinaryData *keys = kvs_arena_alloc(a, n * sizeof(*keys));
    if (m == NULL || keys == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        keys[i] = *nth_key(q, sel[i]);
    protobuf_c_message_init(d, m);
    m->table = (char *)kvs_msg_request_table(q);
    m->keys = keys;
    m->n_keys = n;
    if (q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMDEL)
        ((Kvs__Hmdel *)(void *)m)->answer_budget = budget;
    sub->hmget = m; /* the oneof members share storage */
    return 0;
}

/* Gives each part of a split Hmset or Hmdel its answer budget, so that
 * answers within their budgets always fit one merged answer of `total`
 * bytes (a worker refuses its part, writing nothing, when its bound of
 * the answer passes its budget). What the router knows of a part's bound,
 * known[p] (its new values and the framing of its keys), the part gets
 * outright; the rest, room for previous values the router cannot know, is
 * split in proportion to weight[p] (README, "Multi-key commands", says
 * which weights and why). Returns 0, or -1 when the known bounds alone
 * pass `total`: every part would refuse. */
static int split_budget(uint64_t total, uint32_t nparts, const uint64_t *known,
                        const uint64_t *weight, uint32_t *budget)
{
    uint64_t sum = 0, wsum = 0, given = 0;
    for (uint32_t p = 0; p < nparts; p++) {
        sum += known[p];
        wsum += weight[p];
    }
    if (sum > total)
        return -1;
    uint64_t rest = total - sum; /* total <= max_frame <= 1 GiB: no product overflows */
    for (uint32_t p = 0; p < nparts; p++) {
        uint64_t share = p + 1 == nparts ? rest - given : wsum ? rest * weight[p] / wsum : 0;
        given += share;
        budget[p] = (uint32_t)(known[p] + share);
    }
    return 0;
}

/* Keeps a copy of the request's keys with the merge (one allocation), so
 * a 207 can list the keys that were not written. */
static int keep_keys(router_req_t *req, const Kvs__CommandRequest *q, size_t keybytes)
{
    router_merge_t *m = req->merge;
    m->keys = malloc(m->nkeys * sizeof(*m->keys) + keybytes);
    if (m->keys == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return -1;
    }
    uint8_t *p = (uint8_t *)(m->keys + m->nkeys);
    for (size_t i = 0; i < m->nkeys; i++) {
        const ProtobufCBinaryData *k = nth_key(q, i);
        memcpy(p, k->data, k->len);
        m->keys[i].data = p;
        m->keys[i].len = k->len;
        p += k->len;
    }
    return 0;
}

/* A key of a split write to a bound table whose record its worker would
 * refuse (a value the binding's format cannot carry, a record past the
 * producer's message.max.bytes): the whole write is refused here, before
 * any part is sent, so other shards write none of their keys. Returns 1
 * once `req` is finished. */
static int record_refused(router_req_t *req, const kvs_binding_t *b, const Kvs__Kvpair *pair,
                          size_t i)
{
    char msg[700];
    const uint8_t *payload;
    size_t len, max = req->router->record_max ? req->router->record_max : KVS_RECORD_MAX_DEFAULT;
    int carried = kvs_record_payload(b, pair->value, &payload, &len);
    size_t size = carried ? kvs_record_size(pair->key.len, len) : 0;
    if (carried && size <= max)
        return 0;                   /* every key of a large write comes here: nothing formatted */
    char pair_at[48], value_at[64]; /* "Hmset.pairs[i]", or HSET's i-th "value" */
    snprintf(pair_at, sizeof(pair_at), req->redis ? "value %zu" : "Hmset.pairs[%zu]",
             req->redis ? i + 1 : i);
    snprintf(value_at, sizeof(value_at), "%s%s", pair_at, req->redis ? "" : ".value");
    if (!carried) {
        kvs_record_format_refusal(b, pair->value, value_at, msg, sizeof(msg));
        router_req_finish_status(req, KVS_STATUS_BAD_REQUEST, "%s", msg);
    } else {
        kvs_record_too_large(size, max, msg, sizeof(msg));
        router_req_finish_status(req, KVS_STATUS_TOO_LARGE, "%s: %s", pair_at, msg);
    }
    return 1;
}

/* A split Hmset or Hmdel, before its parts go out: refuses at once what no
 * shard could accept (a pair too large to read back; an answer that cannot
 * fit whatever the previous values are), gives each part its budget, and
 * keeps the request's keys for a 207. Returns 0, or -1 when `req` was
 * answered. Weights: Hmset, the part's new value bytes (previous values
 * are most often about as large as the values that replace them); Hmdel,
 * its keys. With value_lengths (the Redis door's writes) each previous
 * value is answered as a length or nothing, so the router knows each
 * part's whole bound (kvs_reads_write_bound) and gives it all of it: no
 * part is refused for previous values, however large. Only when those
 * bounds pass the total (a request of very many keys: some 20 bytes
 * each, 70 on a bound table) are the parts budgeted as without it,
 * sharing the room for what they do not know. */
static int plan_write(router_t *r, router_req_t *req, const Kvs__CommandRequest *q,
                      const kvs_binding_t *b, uint32_t *budget)
{
    router_merge_t *m = req->merge;
    int hmset = q->command_case == KVS__COMMAND_REQUEST__COMMAND_HMSET;
    const char *cmd = kvs_msg_command_name(q->command_case);
    int lengths = kvs_msg_values_mode(q->command_case, q->value_lengths, q->presence_only);
    uint64_t *known = kvs_arena_alloc(&r->arena, 4 * m->nparts * sizeof(*known));
    if (known == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return -1;
    }
    uint64_t *weight = known + m->nparts, *news = weight + m->nparts, *whole = news + m->nparts;
    memset(known, 0, 4 * m->nparts * sizeof(*known));
    size_t pair_max = kvs_msg_pair_max(r->cfg->max_frame), keybytes = 0;
    for (size_t i = 0; i < m->nkeys; i++) {
        const ProtobufCBinaryData *k = nth_key(q, i);
        size_t v = hmset ? kvs__value__get_packed_size(q->hmset->pairs[i]->value) : 0;
        if (b != NULL && hmset && record_refused(req, b, q->hmset->pairs[i], i))
            return -1;
        if (k->len + v > pair_max) {
            router_req_finish_status(req, KVS_STATUS_TOO_LARGE,
                                     "Hmset.pairs[%zu]: value is too large: key and value take "
                                     "%zu bytes (the value %zu as stored), and an answer holding "
                                     "them must fit in limits.max_frame (%llu bytes), so a key "
                                     "and its value may take at most %zu bytes; nothing was "
                                     "written",
                                     i, k->len + v, v, (unsigned long long)r->cfg->max_frame,
                                     pair_max);
            return -1;
        }
        keybytes += k->len;
        known[m->key_part[i]]++; /* the part's keys, for now */
        news[m->key_part[i]] += kvs_reads_stored_bound(lengths, v);
    }
    /* A table bound to a topic is written through it (node_writes): each
     * part's answer also carries its position (what node_writes counts),
     * and the merged answer the positions of every part together. */
    size_t topic = b != NULL ? strlen(b->topic) : 0;
    uint64_t positions = b != NULL ? (uint64_t)m->nkeys * (topic + 24) + 64 : 0;
    for (uint32_t p = 0; p < m->nparts; p++) {
        weight[p] = hmset ? news[p] : known[p];
        uint64_t tok = b != NULL ? 24 * known[p] + 64 + topic : 0;
        whole[p] = kvs_reads_write_bound(1, known[p], known[p] * KVS_READS_LENGTH_MAX) + tok;
        known[p] = kvs_reads_write_bound(lengths, known[p], news[p]) + tok;
    }
    uint32_t asked = hmset ? q->hmset->answer_budget : q->hmdel->answer_budget;
    uint64_t total = asked != 0 && asked < r->cfg->max_frame ? asked : r->cfg->max_frame;
    total = total > positions ? total - positions : 0;
    if (lengths && split_budget(total, m->nparts, whole, weight, budget) == 0)
        return keep_keys(req, q, keybytes);
    if (split_budget(total, m->nparts, known, weight, budget) != 0) {
        router_req_finish_status(
            req, KVS_STATUS_TOO_LARGE,
            "%s answer would exceed %s (%llu bytes); nothing was written; "
            "send fewer keys per request",
            cmd, total < r->cfg->max_frame ? "its answer_budget" : "limits.max_frame",
            (unsigned long long)total);
        return -1;
    }
    return keep_keys(req, q, keybytes);
}

/* Refuses, with 413, a split write whose part for `shard` would take
 * `len` bytes, more than a frame may hold (a link refuses to send such a
 * frame: a worker would close the connection, failing every request on
 * it). A part can be a few bytes larger than the client's request, for
 * the answer budget the router adds, so a request at the limit can meet
 * this; refused before any part is sent, it wrote nothing anywhere.
 * Returns 1 when it did. */
static int part_too_large(router_t *r, router_req_t *req, uint32_t shard, size_t len)
{
    if (len <= r->cfg->max_frame)
        return 0;
    router_req_finish_status(req, KVS_STATUS_TOO_LARGE,
                             "%s: its part for shard %u would take %zu bytes with the answer "
                             "budget the router adds to it, more than limits.max_frame (%llu "
                             "bytes); nothing was sent or written; send fewer keys per request",
                             kvs_msg_command_name(req->cmd), shard, len,
                             (unsigned long long)r->cfg->max_frame);
    return 1;
}

/* Sends each part of a split request: its keys (sel is scratch for n
 * indexes) and answer budget. A write's parts are all checked first
 * (part_too_large: refused whole, nothing sent); a read's part too large
 * for a frame fails alone when it is sent, with 413 (unless it is read
 * here). When the last part is answered at once (a down link, a local
 * read), the request completes and its merge is freed inside the last
 * send_part: nothing of `m` is read after it. */
static void send_parts(router_t *r, router_req_t *req, const Kvs__CommandRequest *q, size_t *sel,
                       const uint32_t *budget)
{
    router_merge_t *m = req->merge;
    uint32_t nparts = m->nparts;
    Kvs__CommandRequest *subs = kvs_arena_alloc(&r->arena, nparts * sizeof(*subs));
    if (subs == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    for (uint32_t p = 0, k = 0; p < nparts; p++, k = 0) {
        for (size_t i = 0; i < m->nkeys; i++)
            if (m->key_part[i] == p)
                sel[k++] = i;
        if (build_subrequest(r, q, sel, k, budget[p], &subs[p]) != 0) {
            router_req_finish_status(req, KVS_STATUS_INTERNAL,
                                     "router out of memory; nothing was sent");
            return;
        }
        if (kvs_msg_is_write(req->cmd) &&
            part_too_large(r, req, m->part_shard[p],
                           protobuf_c_message_get_packed_size(&subs[p].base)))
            return;
    }
    for (uint32_t p = 0; p < nparts; p++)
        send_part(r, req, p, m->part_shard[p], &subs[p].base, NULL, 0, NULL);
}

/* Splits a multi-key request on a table with binding `b` (or NULL) per shard. */
static void route_multi(router_t *r, router_req_t *req, const Kvs__CommandRequest *q,
                        const kvs_binding_t *b, const uint8_t *raw, size_t rawlen)
{
    size_t n = nkeys_of(q);
    uint32_t *shard_of = kvs_arena_alloc(&r->arena, n * sizeof(*shard_of));
    uint32_t *part_of_shard = kvs_arena_alloc(&r->arena, r->shards * sizeof(*part_of_shard));
    if (shard_of == NULL || part_of_shard == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    uint32_t nparts = 0;
    const char *table = kvs_msg_request_table(q);
    size_t tlen = table != NULL ? strlen(table) : 0;
    for (uint32_t s = 0; s < r->shards; s++)
        part_of_shard[s] = UINT32_MAX;
    for (size_t i = 0; i < n; i++) {
        const ProtobufCBinaryData *key = nth_key(q, i);
        shard_of[i] = place_key(r, b, key->data, key->len);
        if (part_of_shard[shard_of[i]] != UINT32_MAX)
            continue; /* this shard's replicas were checked with an earlier key */
        part_of_shard[shard_of[i]] = nparts++;
        if (b == NULL && unbound_refused(r, req, q, table, tlen, shard_of[i]))
            return;
    }
    if (nparts == 1) { /* all keys on one shard: forward as is */
        req->parts_left = 1;
        send_part(r, req, 0, shard_of[0], NULL, raw, rawlen, q);
        return;
    }
    router_merge_t *m = router_merge_new(r, q->command_case, nparts, n);
    size_t *sel = kvs_arena_alloc(&r->arena, n * sizeof(*sel));
    if (m == NULL || sel == NULL) {
        router_merge_free(m);
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    req->merge = m;
    req->parts_left = nparts;
    uint32_t *count = kvs_arena_alloc(&r->arena, nparts * sizeof(*count));
    if (count == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    memset(count, 0, nparts * sizeof(*count));
    for (size_t i = 0; i < n; i++) {
        uint32_t p = part_of_shard[shard_of[i]];
        m->part_shard[p] = shard_of[i];
        m->key_part[i] = p;
        m->key_index[i] = count[p]++;
    }
    memset(count, 0, nparts * sizeof(*count)); /* now: each part's answer budget (0 = none) */
    if (kvs_msg_is_write(q->command_case) && plan_write(r, req, q, b, count) != 0)
        return;
    send_parts(r, req, q, sel, count);
}

/* What routing `cmd` reserves of its client's output for the answer
 * (req->reserve): a frame for the whole-table reads, Info and Metrics. A
 * held request holds it already (hold), so that a client's held requests
 * count against its output bound as they will once sent (released all at
 * once, hundreds of Hgetalls reserved a frame each past
 * limits.client_output). */
static size_t answer_reserve(const router_t *r, Kvs__CommandRequest__CommandCase cmd)
{
    switch (cmd) {
    case KVS__COMMAND_REQUEST__COMMAND_HGETALL:
    case KVS__COMMAND_REQUEST__COMMAND_HSCAN:
    case KVS__COMMAND_REQUEST__COMMAND_INFO:
    case KVS__COMMAND_REQUEST__COMMAND_METRICS:
        return r->cfg->max_frame;
    default:
        return 0;
    }
}

/* Hgetall, Hlen, Hclear and Info: the same request `q` to every shard,
 * answers merged. */
static void route_fanout(router_t *r, router_req_t *req, const Kvs__CommandRequest *q,
                         const uint8_t *raw, size_t rawlen)
{
    Kvs__CommandRequest__CommandCase cmd = q->command_case;
    req->reserve = answer_reserve(r, cmd); /* Hgetall and Info: as large as a frame */
    router_merge_t *m = router_merge_new(r, cmd, r->shards, 0);
    if (m == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    req->merge = m;
    req->parts_left = r->shards;
    m->presence =
        kvs_msg_values_mode(cmd, q->value_lengths, q->presence_only) == KVS_VALUES_PRESENCE;
    for (uint32_t s = 0; s < r->shards; s++) {
        m->part_shard[s] = s;
        send_part(r, req, s, s, NULL, raw, rawlen, q);
    }
}

static void route_hscan(router_t *r, router_req_t *req, const Kvs__CommandRequest *q)
{
    const ProtobufCBinaryData *c = &q->hscan->cursor;
    uint32_t shard = 0;
    req->reserve = answer_reserve(r, q->command_case);
    if (c->len > 0) {
        if (c->len < 3 || c->data[0] != CURSOR_TAG ||
            (shard = (uint32_t)c->data[1] << 8 | c->data[2]) >= r->shards) {
            router_req_finish_status(req, KVS_STATUS_BAD_REQUEST,
                                     "Hscan.cursor is not a cursor this cluster returned; start "
                                     "with an empty cursor");
            return;
        }
    }
    router_merge_t *m = router_merge_new(r, KVS__COMMAND_REQUEST__COMMAND_HSCAN, 1, 0);
    if (m == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    m->part_shard[0] = shard;
    req->merge = m;
    req->parts_left = 1;
    Kvs__Hscan inner = *q->hscan;
    /* Pages of a worker with a larger max_frame (another node's) must fit
     * this router's frames: a page past them could not be carried, and the
     * walk could not go on. */
    if (inner.answer_budget == 0 || inner.answer_budget > r->cfg->max_frame)
        inner.answer_budget = (uint32_t)r->cfg->max_frame;
    Kvs__CommandRequest sub = KVS__COMMAND_REQUEST__INIT;
    sub.command_case = KVS__COMMAND_REQUEST__COMMAND_HSCAN;
    sub.hscan = &inner;
    sub.min_position = q->min_position;
    sub.accept_stale = q->accept_stale;
    /* For the next shards of the page (scan_next): the same request from
     * their start. Without it (the last shard; out of memory) the page is
     * one shard's. */
    m->scan_count = inner.count == 0             ? KVS_SCAN_DEFAULT
                    : inner.count > KVS_SCAN_MAX ? KVS_SCAN_MAX
                                                 : inner.count;
    /* A slow shard (a hung replica the page was retried past) ends the
     * page's walk: it takes more shards only for half a router.timeout,
     * so it costs a client at most that more than one shard's page. */
    m->scan_until = kvs_now_ns() + r->cfg->router_timeout_ms * 500000; /* half, in ns */
    inner.cursor.data = NULL;
    inner.cursor.len = 0;
    if (shard + 1 < r->shards) /* a failure leaves scan_req empty: no hops */
        (void)kvs_msg_append(&m->scan_req, &sub.base, SIZE_MAX);
    inner.cursor.data = c->len > 3 ? c->data + 3 : NULL;
    inner.cursor.len = c->len > 3 ? c->len - 3 : 0;
    send_part(r, req, 0, shard, &sub.base, NULL, 0, NULL);
}

static const ProtobufCBinaryData *single_key(const Kvs__CommandRequest *q)
{
    switch (q->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HGET:
        return &q->hget->key;
    case KVS__COMMAND_REQUEST__COMMAND_HSET:
        return &q->hset->pair->key; /* validated: the pair is there */
    case KVS__COMMAND_REQUEST__COMMAND_HDEL:
        return &q->hdel->key;
    case KVS__COMMAND_REQUEST__COMMAND_HEXIST:
        return &q->hexist->key;
    case KVS__COMMAND_REQUEST__COMMAND_HINCR:
        return &q->hincr->key;
    default:
        return NULL;
    }
}

/* A read of a `partitioner: none` table: the whole request goes to every
 * shard owning one of the table's partitions, and the answers are merged
 * by who has each key. */
static void route_anywhere(router_t *r, router_req_t *req, const Kvs__CommandRequest *q,
                           const kvs_binding_t *b, const uint8_t *raw, size_t rawlen)
{
    uint32_t partitions = b->partitions > 0 ? b->partitions : r->cfg->partitions;
    uint32_t n = kvs_place_owning_shards(partitions, r->shards);
    if (n == 1) { /* one shard owns every partition: forward as is */
        req->parts_left = 1;
        send_part(r, req, 0, 0, NULL, raw, rawlen, q);
        return;
    }
    router_merge_t *m = router_merge_new(r, q->command_case, n, nkeys_of(q));
    if (m == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    m->anywhere = 1;
    req->merge = m;
    req->parts_left = n;
    for (uint32_t s = 0; s < n; s++) {
        m->part_shard[s] = s;
        send_part(r, req, s, s, NULL, raw, rawlen, q);
    }
}

/* Requests on a table bound with `partitioner: none` that need placement:
 * point reads ask every owning shard; writes are refused. Returns 0 when
 * `q` needs no placement (Hgetall, Hscan) and takes the usual path. */
static int route_unplaced(router_t *r, router_req_t *req, const Kvs__CommandRequest *q,
                          const kvs_binding_t *b, const uint8_t *raw, size_t rawlen)
{
    switch (q->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_HGET:
    case KVS__COMMAND_REQUEST__COMMAND_HEXIST:
    case KVS__COMMAND_REQUEST__COMMAND_HMGET:
    case KVS__COMMAND_REQUEST__COMMAND_HMEXIST:
        route_anywhere(r, req, q, b, raw, rawlen);
        return 1;
    case KVS__COMMAND_REQUEST__COMMAND_HSET:
    case KVS__COMMAND_REQUEST__COMMAND_HDEL:
    case KVS__COMMAND_REQUEST__COMMAND_HMSET:
    case KVS__COMMAND_REQUEST__COMMAND_HMDEL:
    case KVS__COMMAND_REQUEST__COMMAND_HINCR:
        router_req_finish_status(
            req, KVS_STATUS_BAD_REQUEST,
            "%s: table \"%s\" is bound to Kafka topic \"%s\" with partitioner: none, so its "
            "producers choose each key's partition and kvs cannot place a write; produce it to "
            "topic \"%s\" instead (or bind the table with the partitioner its producers use)",
            kvs_msg_command_name(q->command_case), b->table, b->topic, b->topic);
        return 1;
    default:
        return 0;
    }
}

/* ---- operations: Metrics and Slowlog ---------------------------------------------- */

/* The link to shard s's worker on this node (its unix socket), or -1. */
static int local_link(const router_t *r, uint32_t s)
{
    const router_set_t *set = &r->sets[s];
    for (uint32_t i = set->first; i < set->first + set->n; i++)
        if (r->links[i].addr.is_unix)
            return (int)i;
    return -1;
}

/* Metrics: this router process's own families and, unless the request
 * asks for its own only (q->own: the master collects workers itself),
 * every local worker's (remote shards report to their own node; replicas
 * of a local shard on other nodes too). Asked of each worker on its own
 * link, never another replica's, and never retried. */
static void route_metrics(router_t *r, router_req_t *req, const Kvs__Metrics *q, const uint8_t *raw,
                          size_t rawlen)
{
    uint32_t n = 0;
    req->reserve = answer_reserve(r, KVS__COMMAND_REQUEST__COMMAND_METRICS);
    for (uint32_t s = 0; s < r->shards && !q->own; s++)
        n += local_link(r, s) >= 0;
    router_merge_t *m = router_merge_new(r, KVS__COMMAND_REQUEST__COMMAND_METRICS, n ? n : 1, 0);
    if (m == NULL) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        return;
    }
    m->nparts = n;
    req->merge = m;
    req->parts_left = n;
    if (n == 0) { /* its own only, or a pure routing node */
        router_merge_finish(req);
        return;
    }
    for (uint32_t s = 0, p = 0; s < r->shards; s++) {
        int li = local_link(r, s);
        if (li < 0)
            continue;
        router_try_t *t = &m->tries[p];
        t->shard = s;
        t->link = (uint32_t)li;
        t->tried = 1ull << ((uint32_t)li - r->sets[s].first);
        m->part_shard[p] = s;
        int rc = router_link_send(&r->links[li], raw, rawlen, req, p);
        if (rc != 0) {
            char why[600];
            router_send_refused(s, rc, &r->links[li], "", why, sizeof(why));
            router_route_reply(req, p, NULL, 0, why);
        }
        p++;
    }
}

/* Whether req's client may run `cmd` on the table (NULL: none); if not,
 * answers 401 or 403. */
static int route_allowed(router_req_t *req, Kvs__CommandRequest__CommandCase cmd, const void *table,
                         size_t tlen)
{
    char msg[512];
    /* A held request being released was judged when it arrived, as the
     * user who sent it: an Auth pipelined after it, which has run since,
     * changes the user of the requests after that Auth only. */
    if (req->releasing)
        return 1;
    uint32_t st = kvs_auth_check(req->who, cmd, table, tlen, msg, sizeof(msg));
    if (st == KVS_STATUS_OK)
        return 1;
    router_req_finish_status(req, st, "%s", msg);
    return 0;
}

static void route_placed(router_t *r, router_req_t *req, const Kvs__CommandRequest *q,
                         const kvs_binding_t *b, const uint8_t *raw, size_t rawlen)
{
    const ProtobufCBinaryData *key = single_key(q);
    if (key != NULL) {
        uint32_t shard = place_key(r, b, key->data, key->len);
        const char *table = kvs_msg_request_table(q);
        if (b == NULL && unbound_refused(r, req, q, table, strlen(table), shard))
            return;
        req->parts_left = 1;
        send_part(r, req, 0, shard, NULL, raw, rawlen, q);
        return;
    }
    switch (q->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_PING:
        router_req_finish_status(req, KVS_STATUS_OK, "PONG");
        break;
    case KVS__COMMAND_REQUEST__COMMAND_HGETALL:
    case KVS__COMMAND_REQUEST__COMMAND_INFO:
    case KVS__COMMAND_REQUEST__COMMAND_HLEN:
        route_fanout(r, req, q, raw, rawlen);
        break;
    case KVS__COMMAND_REQUEST__COMMAND_HCLEAR: {
        const char *table = kvs_msg_request_table(q);
        for (uint32_t sh = 0; sh < r->shards; sh++)
            if (unbound_refused(r, req, q, table, strlen(table), sh))
                return; /* every shard's part is a write to an unbound table */
        route_fanout(r, req, q, raw, rawlen);
        break;
    }
    case KVS__COMMAND_REQUEST__COMMAND_HSCAN:
        route_hscan(r, req, q);
        break;
    case KVS__COMMAND_REQUEST__COMMAND_METRICS:
        route_metrics(r, req, q->metrics, raw, rawlen);
        break;
    case KVS__COMMAND_REQUEST__COMMAND_SLOWLOG:
        router_ops_slowlog(r, req, q->slowlog);
        break;
    default:
        route_multi(r, req, q, b, raw, rawlen);
        break;
    }
}

/* ---- sessions: holding, positions ------------------------------------------------ */

static int is_read_cmd(Kvs__CommandRequest__CommandCase c)
{
    return c == KVS__COMMAND_REQUEST__COMMAND_HGET || c == KVS__COMMAND_REQUEST__COMMAND_HEXIST ||
           c == KVS__COMMAND_REQUEST__COMMAND_HMGET || c == KVS__COMMAND_REQUEST__COMMAND_HMEXIST ||
           c == KVS__COMMAND_REQUEST__COMMAND_HGETALL || c == KVS__COMMAND_REQUEST__COMMAND_HSCAN;
}

/* The reads a session's in-flight writes to their bound table hold back:
 * the keyed and whole-table reads, and Hlen (Redis HLEN and EXISTS), which
 * counts what the writes before it changed. */
static int holds_for_writes(Kvs__CommandRequest__CommandCase c)
{
    return is_read_cmd(c) || c == KVS__COMMAND_REQUEST__COMMAND_HLEN;
}

/* Whether `req` must wait for its session's order: behind requests it
 * holds already, or (a read of a bound table, `bound_read`) behind its
 * writes to bound tables in flight. */
static int held_behind(const router_req_t *req, int bound_read)
{
    if (req->client == NULL || req->releasing)
        return 0;
    const router_session_t *s = router_client_session(req->client);
    return s->held != NULL || (bound_read && s->writes > 0);
}

/* Whether a write of `req` to `shard` must wait for the session's writes
 * in flight to be answered: it would go to another replica of the shard
 * than its writes to it in flight (the one its connection keeps to was
 * avoided or went down, or is back after a failover). Two replicas would
 * each produce one of them to the topic, and the later write could land
 * first: applied out of the order the client sent them, both answered
 * 200. */
static int write_switches(const router_t *r, const router_req_t *req, uint32_t shard)
{
    if (req->client == NULL || r->sets == NULL || r->sets[shard].n < 2)
        return 0;
    const router_session_t *s = router_client_session(req->client);
    if (s->wshard == NULL || s->writes == 0)
        return 0; /* (none in flight: what wakes a held write, so never held without one) */
    int to =
        router_replica_write_choice(r->links, &r->sets[shard], router_now_ms(r), s->replica_pref);
    return router_send_wshard_other(r, req, shard, to);
}

/* Holds `req` back when its session holds earlier requests, when it
 * reads a bound table (`bound_read`) while the session's writes to bound
 * tables are in flight, when the session has its fair share of requests
 * at the workers already, when `capped`, a shard it would send a part
 * to, is at its cap (NO_SHARD: none is), or when it is a write that
 * `switches` replica (write_switches: it waits for the session's writes
 * as a bound read does). A request being released (release_session
 * checked the rest) is held again, first, for the cap or the switch
 * alone. Returns 1 when held (or answered: out of memory). */
static int hold(router_req_t *req, int bound_read, const uint8_t *payload, size_t len,
                size_t reserve, uint32_t capped, int switches)
{
    if (req->client == NULL || (req->releasing && capped == NO_SHARD && !switches))
        return 0;
    router_session_t *s = router_client_session(req->client);
    if (!req->releasing && capped == NO_SHARD && !switches && !held_behind(req, bound_read) &&
        !share_taken(req->router, s->at_workers))
        return 0;
    if (payload == req->held_payload.data) { /* released: kept already */
        req->held_payload.len = len;
    } else {
        req->held_payload.len = 0;
        if (kvs_buf_append(&req->held_payload, payload, len) != 0) {
            router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
            return 1;
        }
    }
    req->held = 1;
    req->held_read = bound_read || switches;
    req->held_reserve = reserve;
    if (req->releasing) { /* back where release_session took it from */
        req->held_next = s->held;
        s->held = req;
        if (s->held_tail == NULL)
            s->held_tail = req;
    } else {
        req->held_next = NULL;
        if (s->held_tail != NULL)
            s->held_tail->held_next = req;
        else
            s->held = req;
        s->held_tail = req;
    }
    s->held_bytes += len + reserve;
    router_client_hold(req->client, (ptrdiff_t)len); /* the request, kept */
    router_client_reserve(req->client, (ptrdiff_t)reserve);
    if (capped != NO_SHARD && s->held == req)
        cap_wait_add(req->router, s, capped); /* released when the shard comes down */
    return 1;
}

/* A write to a bound table is on its way: the session's reads wait for it. */
static void mark_write(router_req_t *req)
{
    if (req->client == NULL || req->bound_write)
        return;
    req->bound_write = req->wrote_bound = 1;
    router_session_t *s = router_client_session(req->client);
    s->writes++;
    s->queued++;
}

/* Adds the session's positions in b's topic (of `partition`, or all when
 * negative) to a read's min_position (of which only b's topic's entries
 * are kept); the merged token goes into `tok` and q->min_position points
 * there. Returns 1 when q changed, 0 when the
 * session knows no position there, or -ENOMEM. */
static int attach_positions(router_t *r, router_req_t *req, Kvs__CommandRequest *q,
                            const kvs_binding_t *b, int64_t partition, kvs_buf_t *tok)
{
    if (req->client == NULL)
        return 0;
    router_session_t *s = router_client_session(req->client);
    kvs_pos_set_t set;
    kvs_pos_set_init(&set);
    int rc = router_session_add(s, r->cfg, b, partition, &set);
    if (rc == 0 && set.n == 0) {
        kvs_pos_set_free(&set);
        return 0;
    }
    /* Of the client's token, only what a read of b's table can use: its
     * topic's partitions (the worker ignores the rest). A token may hold a
     * million entries; expanding them all would cost 32 bytes each. */
    uint32_t parts = b->partitions > 0 ? b->partitions : r->cfg->partitions;
    if (rc == 0)
        rc = kvs_pos_set_add_topic(&set, q->min_position.data, q->min_position.len, b->topic,
                                   strlen(b->topic), parts);
    if (rc == 0)
        rc = kvs_pos_set_encode(&set, tok);
    kvs_pos_set_free(&set);
    if (rc != 0)
        return rc < 0 ? rc : -ENOMEM;
    q->min_position.data = tok->data;
    q->min_position.len = tok->len;
    return 1;
}

/* The single-key fast path's attach: the client's bytes with a
 * min_position field appended (protobuf reads a message's fields in any
 * order), built in r->scratch, for a read of a key whose partition the
 * session wrote to. Returns 1 when `*payload` now points there. */
static int append_position(router_t *r, router_req_t *req, const kvs_binding_t *b,
                           const kvs_peek_t *pk, const uint8_t **payload, size_t *len)
{
    if (req->client == NULL)
        return 0;
    uint32_t parts = b->partitions > 0 ? b->partitions : r->cfg->partitions;
    uint32_t p = kvs_place_partition_by(b->partitioner, pk->key, pk->key_len, parts);
    int64_t off = router_session_get(router_client_session(req->client), r->cfg, b, p);
    if (off < 0)
        return 0;
    uint8_t tok[KVS_POS_ONE_MAX], hdr[4];
    size_t n = kvs_pos_encode_one(tok, b->topic, strlen(b->topic), p, off);
    size_t h = 0;
    hdr[h++] = 0xa2; /* field 100, length-delimited: tag varint 0xa2 0x06 */
    hdr[h++] = 0x06;
    if (n >= 128)
        hdr[h++] = (uint8_t)(n | 0x80), hdr[h++] = (uint8_t)(n >> 7);
    else
        hdr[h++] = (uint8_t)n;
    kvs_buf_t *out = &r->scratch;
    out->len = 0;
    if (n == 0 || kvs_buf_reserve(out, *len + h + n) != 0)
        return 0; /* without it: the worker answers from what it has */
    kvs_buf_put(out, *payload, *len);
    kvs_buf_put(out, hdr, h);
    kvs_buf_put(out, tok, n);
    *payload = out->data;
    *len = out->len;
    return 1;
}

/* A shard at its cap (shard_capped) that `q` (of a table with binding `b`)
 * would send a part of `req` to, decided before any part goes; NO_SHARD
 * when none is. A request placed by its keys looks at their shards, an
 * Hscan at its cursor's (a page ends before a later shard at its cap:
 * merge_scan); Ping, Slowlog and Metrics add no units
 * anywhere; any other (a whole-table read, Info, a read of a
 * `partitioner: none` table) may reach every shard and waits for any
 * capped one (it would wait for its answer anyway). Reads answered from
 * a local shard's environment cost its worker nothing (capped_part). */
static uint32_t capped_for(const router_t *r, const router_req_t *req, const Kvs__CommandRequest *q,
                           const kvs_binding_t *b)
{
    if (r->n_capped == 0)
        return NO_SHARD; /* the common case: no walk */
    int local = may_read_here(r, req) && kvs_reads_is_read(q->command_case);
    switch (q->command_case) {
    case KVS__COMMAND_REQUEST__COMMAND_PING:
    case KVS__COMMAND_REQUEST__COMMAND_SLOWLOG:
        return NO_SHARD; /* answered here */
    case KVS__COMMAND_REQUEST__COMMAND_METRICS:
        /* Costs the workers no units (route_metrics): the master's scrapes
         * of this process's own metrics, and anyone's, go on while a
         * worker is at its cap. */
        return NO_SHARD;
    case KVS__COMMAND_REQUEST__COMMAND_HSCAN: {
        const ProtobufCBinaryData *c = &q->hscan->cursor;
        uint32_t shard = c->len >= 3 ? (uint32_t)c->data[1] << 8 | c->data[2] : 0;
        return shard < r->shards && capped_part(r, req, shard, local) ? shard : NO_SHARD;
    }
    default:
        break;
    }
    const ProtobufCBinaryData *key = single_key(q);
    size_t n = key != NULL ? 1 : nkeys_of(q);
    if (n > 0 && (b == NULL || b->partitioner != KVS_PARTITIONER_NONE)) {
        for (size_t i = 0; i < n; i++) {
            const ProtobufCBinaryData *k = key != NULL ? key : nth_key(q, i);
            uint32_t shard = place_key(r, b, k->data, k->len);
            if (capped_part(r, req, shard, local))
                return shard;
        }
        return NO_SHARD;
    }
    for (uint32_t shard = 0; shard < r->shards; shard++)
        if (capped_part(r, req, shard, local))
            return shard;
    return NO_SHARD;
}

/* Whether write `q` of `req` (to a table with binding `b`, placed by its
 * keys) has a part that switches replica (write_switches). */
static int switches_for(const router_t *r, const router_req_t *req, const Kvs__CommandRequest *q,
                        const kvs_binding_t *b)
{
    if (req->client == NULL || router_client_session(req->client)->wshard == NULL ||
        router_client_session(req->client)->writes == 0 || b->partitioner == KVS_PARTITIONER_NONE)
        return 0; /* the common case: no walk (an unplaced write is refused) */
    const ProtobufCBinaryData *key = single_key(q);
    size_t n = key != NULL ? 1 : nkeys_of(q);
    for (size_t i = 0; i < n; i++) {
        const ProtobufCBinaryData *k = key != NULL ? key : nth_key(q, i);
        if (write_switches(r, req, place_key(r, b, k->data, k->len)))
            return 1;
    }
    return 0;
}

/* A valid request (`received`: the fast path checked it and ran RECEIVED
 * already). */
static void route_decoded(router_t *r, router_req_t *req, Kvs__CommandRequest *q,
                          const uint8_t *raw, size_t rawlen, int received)
{
    if (q->command_case == KVS__COMMAND_REQUEST__COMMAND_DIGEST ||
        q->command_case == KVS__COMMAND_REQUEST__COMMAND_SNAPSHOT ||
        q->command_case == KVS__COMMAND_REQUEST__COMMAND_REBUILD) {
        int snapshot = q->command_case == KVS__COMMAND_REQUEST__COMMAND_SNAPSHOT;
        router_req_finish_status(req, KVS_STATUS_BAD_REQUEST,
                                 "%s is a worker command: it is about one copy of one shard, so "
                                 "send it to %s, not through the router",
                                 kvs_msg_command_name(q->command_case),
                                 snapshot ? "a worker (a new replica's worker asks its peers for "
                                            "one by itself)"
                                          : "each replica's worker (kvs-cli --config FILE digest "
                                            "TABLE and rebuild TABLE do)");
        return;
    }
    const char *table = kvs_msg_request_table(q);
    if (q->command_case == KVS__COMMAND_REQUEST__COMMAND_AUTH) {
        if (router_ops_received(r, req))
            return;
        if (r->auth != NULL && req->client != NULL)
            router_client_auth(req->client, req, q->auth);
        else
            router_req_finish_status(req, KVS_STATUS_BAD_REQUEST,
                                     "Auth: this server has no users configured (users: in "
                                     "config.yaml); every client may do everything");
        return;
    }
    if (!received && ((req->who != NULL && !route_allowed(req, q->command_case, table,
                                                          table != NULL ? strlen(table) : 0)) ||
                      router_ops_received(r, req)))
        return;
    const kvs_binding_t *b = table != NULL ? table_binding(r, table, strlen(table)) : NULL;
    if (hold(req, b != NULL && holds_for_writes(q->command_case), raw, rawlen,
             answer_reserve(r, q->command_case), capped_for(r, req, q, b),
             b != NULL && kvs_msg_is_write(q->command_case) && switches_for(r, req, q, b)))
        return;
    if (b != NULL && q->command_case == KVS__COMMAND_REQUEST__COMMAND_HCLEAR) {
        router_req_finish_status(req, KVS_STATUS_BAD_REQUEST,
                                 req->redis ? KVS_MSG_DEL_BOUND : KVS_MSG_HCLEAR_BOUND, b->table,
                                 b->topic);
        return;
    }
    if (b != NULL && b->partitioner == KVS_PARTITIONER_NONE &&
        route_unplaced(r, req, q, b, raw, rawlen))
        return;
    kvs_buf_t tok, packed;
    kvs_buf_init(&tok);
    kvs_buf_init(&packed);
    if (b != NULL &&
        kvs_msg_is_write(q->command_case)) /* Hincr too: a worker refuses it, in order */
        mark_write(req);
    int repack = 0;
    if (b != NULL && holds_for_writes(q->command_case)) /* the reads, and Hlen */
        repack = attach_positions(r, req, q, b, -1, &tok) > 0;
    if (req->who != NULL && !q->presence_only &&
        kvs_auth_withholds(req->who, q->command_case, table, table != NULL ? strlen(table) : 0))
        repack = q->presence_only = 1; /* a user without read: previous values withheld */
    if (repack && kvs_msg_append(&packed, &q->base, SIZE_MAX) == 0) {
        raw = packed.data + KVS_FRAME_HEADER; /* the raw paths forward q as it is now */
        rawlen = packed.len - KVS_FRAME_HEADER;
    } else if (repack && q->presence_only) {
        router_req_finish_status(req, KVS_STATUS_INTERNAL, "router out of memory");
        kvs_buf_free(&tok);
        kvs_buf_free(&packed);
        return;
    }
    route_placed(r, req, q, b, raw, rawlen);
    kvs_buf_free(&tok);
    kvs_buf_free(&packed);
}

/* The hot path's local read: an Hget or Hexist of a local shard answered
 * from its environment, with the session's position on the key's
 * partition when the table is bound. Returns 1 when it was. */
static int read_key_here(router_t *r, router_req_t *req, uint32_t shard, const kvs_binding_t *b,
                         const kvs_peek_t *pk)
{
    int64_t min = -1;
    if (!may_read_here(r, req))
        return 0;
    if (b != NULL) {
        uint32_t parts = b->partitions > 0 ? b->partitions : r->cfg->partitions;
        uint32_t p = kvs_place_partition_by(b->partitioner, pk->key, pk->key_len, parts);
        min = router_session_get(router_client_session(req->client), r->cfg, b, p);
    }
    req->resp.len = 0;
    if (!router_local_read_key(r->local, shard, pk, b, min, &req->resp))
        return 0;
    router_req_complete(req);
    return 1;
}

/* The hot path: a valid single-key request on a table bound to no topic or
 * placed by a partitioner. Returns 0 when it must take the full path. */
static int route_peeked(router_t *r, router_req_t *req, const kvs_peek_t *pk,
                        const uint8_t *payload, size_t len)
{
    const kvs_binding_t *b = table_binding(r, pk->table, pk->table_len);
    if (b != NULL && b->partitioner == KVS_PARTITIONER_NONE)
        return 0; /* the full path asks every owning shard */
    int read = pk->cmd == KVS__COMMAND_REQUEST__COMMAND_HGET ||
               pk->cmd == KVS__COMMAND_REQUEST__COMMAND_HEXIST;
    uint32_t shard = place_key(r, b, pk->key, pk->key_len);
    /* A read answered here costs the workers nothing: only the session's
     * order holds it back, not the fair share, nor the shard's cap (which
     * the requests of a stopped worker keep reached until router.timeout). */
    if (read && !held_behind(req, b != NULL) && read_key_here(r, req, shard, b, pk))
        return 1;
    uint32_t capped = shard_capped(r, req, shard) ? shard : NO_SHARD;
    if (hold(req, b != NULL && read, payload, len, 0, capped, /* a key's answer: no reserve */
             b != NULL && !read && write_switches(r, req, shard)))
        return 1;
    if (b == NULL && !read && unbound_replicated(r, pk->cmd, shard))
        return 0; /* refused: the full path says why */
    if (b != NULL && !read)
        mark_write(req);
    else if (b != NULL)
        append_position(r, req, b, pk, &payload, &len);
    req->parts_left = 1;
    send_part(r, req, 0, shard, NULL, payload, len, NULL);
    return 1;
}

void router_route(router_t *r, router_req_t *req, const uint8_t *payload, size_t len)
{
    char msg[512];
    kvs_peek_t pk;
    int received = 0;
    req->in_route = 1;
    if (kvs_msg_peek(payload, len, &pk)) { /* hot path: valid single-key request */
        req->cmd = pk.cmd;
        router_ops_note(r, req, pk.cmd, pk.table, pk.table_len, 1);
        /* (A write of a user without read: the full path withholds its
         * previous values.) */
        if ((req->who != NULL && !route_allowed(req, pk.cmd, pk.table, pk.table_len)) ||
            router_ops_received(r, req) ||
            ((req->who == NULL || !kvs_auth_withholds(req->who, pk.cmd, pk.table, pk.table_len)) &&
             route_peeked(r, req, &pk, payload, len))) {
            router_ops_forget(req);
            req->in_route = 0;
            return;
        } /* partitioner none: the full path asks every owning shard */
        received = 1;
    }
    /* A command given several times in a row is merged once, here: it is
     * decoded and forwarded as this router reads it. Keys are counted
     * first: decoding many keys is what costs memory. */
    Kvs__CommandRequest *q = NULL;
    kvs_msg_refused_t refused;
    const uint8_t *sent = payload;
    size_t sent_len = len;
    uint32_t why =
        kvs_msg_merge_request(&r->arena, &payload, &len) != 0
            ? KVS_STATUS_INTERNAL
            : kvs_msg_check_keys(payload, len, r->cfg->max_keys, &refused, msg, sizeof(msg));
    if (why == KVS_STATUS_INTERNAL)
        kvs_msg_decode_refusal(why, payload, len, msg, sizeof(msg));
    else if (why != KVS_STATUS_OK && !received) /* EXECUTED sees the command and its table */
        router_ops_note(r, req, refused.cmd, refused.table, refused.table_len, refused.keys);
    else if (why == KVS_STATUS_OK &&
             (q = kvs_msg_decode_merged(&r->arena, payload, len, &why)) == NULL)
        kvs_msg_decode_refusal(why, payload, len, msg, sizeof(msg));
    if (q == NULL) {
        router_req_finish_status(req, why, "%s", msg);
    } else {
        req->cmd = q->command_case;
        uint32_t st = kvs_msg_check_request(q, payload, len, msg, sizeof(msg));
        if (st == KVS_STATUS_OK && payload != sent) /* what merging dropped or joined, unread */
            st = kvs_msg_check_wire(sent, sent_len, msg, sizeof(msg));
        if (!received) { /* EXECUTED sees what a refused request asked for too, as sent */
            const char *table = kvs_msg_request_table(q);
            size_t tlen = table != NULL ? strlen(table) : 0; /* no NUL in a valid one */
            if (st != KVS_STATUS_OK)
                table = kvs_msg_request_table_sent(q, payload, len, &tlen);
            router_ops_note(r, req, q->command_case, table, tlen, kvs_msg_request_keys(q));
        }
        if (st != KVS_STATUS_OK)
            router_req_finish_status(req, st, "%s", msg);
        else
            route_decoded(r, req, q, payload, len, received);
    }
    router_ops_forget(req);
    kvs_arena_reset(&r->arena);
    req->in_route = 0;
}

/* ---- releasing held requests ------------------------------------------------------ */

/* Routes the session's held requests that may go now, in order: up to
 * the first read of a bound table while a write is (again) in flight, or
 * while the client's answers (its output, less these requests' own bytes)
 * are at its high-water mark, as its frames would wait: the fair share
 * bounds what a session has at the workers, not what their answers
 * weigh, so a client pipelining large answers and not reading them was
 * sent every one (and closed past limits.client_output). The client's
 * output draining resumes it (router_route_resume). */
static void release_session(router_t *r, router_session_t *s)
{
    while (s->held != NULL) {
        router_req_t *req = s->held;
        if (req->held_read && s->writes > 0)
            return; /* a write released just before it is in flight */
        if (share_taken(r, s->at_workers))
            return; /* its share is taken again: its next answer releases more */
        router_client_t *cl = req->client;
        /* What it holds is not output that can drain: the held requests,
         * and, once the first of them is the oldest the client waits for,
         * the answers done behind it too (an answer the router gave at
         * once, a 400, a RESP ECHO), which reach the socket only after it.
         * Counted, they kept the output "full" for ever. */
        size_t stuck =
            router_client_is_head(cl, req) ? router_client_held_output(cl) : s->held_bytes;
        if (router_client_output_full(cl, stuck))
            return; /* its output draining releases more */
        s->held = req->held_next;
        if (s->held == NULL)
            s->held_tail = NULL;
        req->held = 0;
        req->held_next = NULL;
        size_t len = req->held_payload.len;
        s->held_bytes -= len + req->held_reserve;
        router_client_hold(cl, -(ptrdiff_t)len);
        router_client_reserve(cl, -(ptrdiff_t)req->held_reserve);
        req->releasing = 1;
        router_route(r, req, req->held_payload.data, len);
        req->releasing = 0;
        if (req->held)
            return; /* held again, first, for a shard at its cap: released when it comes down */
        router_client_reserve(cl, (ptrdiff_t)req->reserve);
        if (req->done)
            router_client_req_done(cl, req); /* may free it */
    }
}

void router_route_release(router_t *r)
{
    kvs_list_t *l;
    while ((l = kvs_list_first(&r->release)) != NULL) {
        kvs_list_remove(l);
        release_session(r, KVS_LIST_ENTRY(l, router_session_t, release_link));
    }
}

void router_route_resume(router_t *r, router_session_t *s)
{
    if (s->held == NULL)
        return;
    release_later(r, s);
    kvs_flusher_wake(&r->flusher);
}

void router_route_orphan(router_t *r, router_req_t *req)
{
    r->orphan_units += req->at_worker;
    req->client = NULL;
}

void router_route_forget(router_t *r, router_session_t *s)
{
    kvs_list_remove(&s->cap_link); /* no longer held at the cap */
    if (s->at_workers > 0 && r->busy_sessions > 0)
        r->busy_sessions--; /* its requests still out no longer count (req->client is NULL) */
    s->at_workers = 0;
    if (s->wshard != NULL) /* (its writes still out no longer count either) */
        memset(s->wshard, 0, r->shards * sizeof(*s->wshard));
    if (s->wpin != NULL)
        memset(s->wpin, 0, r->shards * sizeof(*s->wpin));
    kvs_list_remove(&s->release_link);
    s->held = s->held_tail = NULL; /* the requests are in the client's FIFO, freed with it */
    s->held_bytes = 0;
}
